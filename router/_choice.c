/*
 * router._choice: the C twin of replica choice's request path (an optional accelerator,
 * built by setup.py when a C compiler is there).
 *
 *   choose_affinity(ctx, fleet, settings=DEFAULT_SETTINGS) -> candidates
 *       router/replicas.py's choose_affinity_python, step for step: the placement
 *       lookup, the warm candidates under their allowance, the ring's candidates under
 *       the bound, the best three by cost (names break ties), the session first.
 *   find(memory, hashes, hint=0, session_hash=0) -> (matched, common, holders, sticky)
 *       router/placement.py's PlacementMemory.find.
 *   record(memory, replica, prefix_hashes, session_hash=0) -> None
 *       router/placement.py's PlacementMemory.record (the claim before each publish): the
 *       same reads and writes of the same map; router.placement.record is this.
 *   configure_record(memory_type, generations_type, id_bits)
 *       called once by router/placement.py: the types record mirrors (others: the method).
 *   configure(reference, find_reference, default_settings, spill, block_tokens, id_bits,
 *             least_loaded=None)
 *       called once by router/replicas.py: the Python functions to fall back on, the
 *       constants the Python code computes, and Fleet.least_loaded (its answer, the top of
 *       the fleet's LoadOrder, is read here while the fleet's type still has that method).
 *   LoadCell
 *       router.load.ReplicaLoad's base class: its weight, requests, limit, usable and name
 *       kept where the choice reads them without a pointer chase (see LoadCell below).
 *   LoadOrder
 *       router.registry.Fleet's load order (router/order.py): its usable, unsaturated
 *       loads in an indexed heap by (weight, name); Fleet.least_loaded is its top.
 *   PrefixMap
 *       the placement memory's prefix and session maps in flat arrays
 *       (router/_prefix_map.h), which find and record read and write directly; the dict
 *       generations otherwise.
 *   fallback_count(), fast_fields()
 *       for tests: calls handed to the Python so far; which attributes are read at offsets.
 *
 * Why: in CPython a choice at 64 replicas cost ~5 us at best and ~11 us for the long
 * Mooncake prompts (a binary search of ~7 probes over two dicts, each probe a few
 * bytecodes and two dict lookups, then a dozen candidates' attribute reads). Here a
 * probe is one or two dict lookups and an attribute read of a __slots__ object (Fleet,
 * ReplicaLoad, RoutingContext, the ring, the placement memory) a load at an offset found
 * once. What is left is mostly waiting for memory (README, "Replica choice").
 *
 * It reads the same Python objects the Python code reads (no copy of the state to keep
 * in step), makes the same float operations in the same order (compiled with
 * -ffp-contract=off: no fused multiply-add), and compares ints exactly. Whatever it does
 * not expect (an int past 2**53, a type that is not the plain one, a walk of no replica) sends
 * the call to the Python reference, which then gives the answer or raises as it would
 * have. tests/test_choice_twin.py checks the two agree on random fleets and histories.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_prefix_map.h"

#define FALLBACK 2             /* a helper's answer: "let the Python reference do it" (not 1: true) */
#define MAX_HOLDERS 16         /* fanout this twin handles (router.placement uses 4) */
#define ENTRY_WORDS 8          /* 512 bits: MAX_HOLDERS ids of <= 24 bits + the spread count */
#define EXACT_LIMIT 9007199254740992.0 /* 2**53: ints below it convert to double exactly */

/* ---- attribute reads at a slot's offset --------------------------------------------- */

/* An attribute read: for a type whose attribute is a plain __slots__ member (and that
 * reads attributes the generic way), the value sits at a fixed offset in the object, so
 * the read is one load; anything else goes through PyObject_GetAttr. The offset is found
 * once per type (the field remembers the last type it met, holding a reference to it). */
typedef struct {
    const char *name;
    PyObject *str;
    PyTypeObject *type;
    Py_ssize_t offset; /* -1: not a plain slot of `type` */
} Field;

enum {
    F_PREFIX_HASHES, F_SEEN_DEPTH, F_SESSION_HASH, F_PROMPT_TOKENS, F_MAX_TOKENS,
    F_USABLE, F_OPEN_COUNT, F_PLACEMENTS, F_USABLE_WEIGHT, F_FILL_WEIGHT, F_RING_SLOT, F_RING,
    F_SESSIONS, F_PREFIXES, F_SHARED_SHIFT, F_FULL_SHIFT, F_NAMES, F_NEW, F_OLD,
    F_TABLE, F_SHIFT, F_SIZE,
    F_WEIGHT, F_REQUESTS, F_LIMIT, F_LOAD_USABLE, F_NAME, F_AS_COLD, F_AS_PREFIX_HIT, F_AS_STICKY,
    F_LOAD_EPSILON, F_MOVE_COST, F_FREE_MOVE_TOKENS, F_FLOOR_REQUESTS, F_DECODE_WEIGHT,
    F_LOAD_COST, F_DEFAULT_OUTPUT_TOKENS, F_RING_CHOICES, F_MAX_WALK, F_FALLBACKS,
    F_RETIRING, F_CAPACITY, F_FANOUT, F_IDS, F_BY_LOAD, F_GEN_SIZE, F_RETIRING_AT,
    F_COUNT
};

static Field fields[F_COUNT] = {
    [F_PREFIX_HASHES] = {"prefix_hashes"}, [F_SEEN_DEPTH] = {"prefix_seen_depth"},
    [F_SESSION_HASH] = {"session_hash"}, [F_PROMPT_TOKENS] = {"prompt_tokens"},
    [F_MAX_TOKENS] = {"max_tokens"},
    [F_USABLE] = {"usable"}, [F_OPEN_COUNT] = {"open_count"}, [F_PLACEMENTS] = {"placements"},
    [F_USABLE_WEIGHT] = {"usable_weight"}, [F_FILL_WEIGHT] = {"fill_weight"},
    [F_RING_SLOT] = {"_ring"}, [F_RING] = {"ring"},
    [F_SESSIONS] = {"_sessions"}, [F_PREFIXES] = {"_prefixes"},
    [F_SHARED_SHIFT] = {"_shared_shift"}, [F_FULL_SHIFT] = {"_full_shift"},
    [F_NAMES] = {"_names"}, [F_NEW] = {"new"}, [F_OLD] = {"old"},
    [F_TABLE] = {"_table"}, [F_SHIFT] = {"_shift"}, [F_SIZE] = {"size"},
    [F_WEIGHT] = {"weight"}, [F_REQUESTS] = {"requests"}, [F_LIMIT] = {"limit"},
    [F_LOAD_USABLE] = {"usable"}, [F_NAME] = {"name"}, [F_AS_COLD] = {"as_cold"},
    [F_AS_PREFIX_HIT] = {"as_prefix_hit"}, [F_AS_STICKY] = {"as_sticky"},
    [F_LOAD_EPSILON] = {"load_epsilon"}, [F_MOVE_COST] = {"move_cost"},
    [F_FREE_MOVE_TOKENS] = {"free_move_tokens"}, [F_FLOOR_REQUESTS] = {"floor_requests"},
    [F_DECODE_WEIGHT] = {"decode_weight"}, [F_LOAD_COST] = {"load_cost"},
    [F_DEFAULT_OUTPUT_TOKENS] = {"default_output_tokens"}, [F_RING_CHOICES] = {"ring_choices"},
    [F_MAX_WALK] = {"max_walk"}, [F_FALLBACKS] = {"fallbacks"},
    [F_RETIRING] = {"_retiring"}, [F_CAPACITY] = {"_capacity"}, [F_FANOUT] = {"_fanout"},
    [F_IDS] = {"_ids"}, [F_BY_LOAD] = {"_by_load"},
    [F_GEN_SIZE] = {"_size"}, [F_RETIRING_AT] = {"_retiring_at"},
};

static void field_resolve(Field *f, PyTypeObject *tp) {
    Py_ssize_t offset = -1;
    if (tp->tp_getattro == PyObject_GenericGetAttr) {
        PyObject *descr = _PyType_Lookup(tp, f->str); /* borrowed; sets no error */
        if (descr && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & PY_AUDIT_READ)) offset = m->offset;
        }
    }
    Py_INCREF(tp);
    Py_XSETREF(f->type, tp);
    f->offset = offset;
}

/* obj.<field>: a new reference, or NULL with the AttributeError Python would raise. */
static inline PyObject *get(PyObject *obj, int which) {
    Field *f = &fields[which];
    if (Py_TYPE(obj) != f->type) field_resolve(f, Py_TYPE(obj));
    if (f->offset >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + f->offset);
        if (v) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(obj, f->str);
}

/* obj.<field> = value (a new reference is taken): 0, or -1 with Python's error. */
static inline int set(PyObject *obj, int which, PyObject *value) {
    Field *f = &fields[which];
    if (Py_TYPE(obj) != f->type) field_resolve(f, Py_TYPE(obj));
    if (f->offset >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + f->offset);
        Py_INCREF(value);
        Py_XSETREF(*slot, value);
        return 0;
    }
    return PyObject_SetAttr(obj, f->str, value);
}

/* ---- numbers read exactly ------------------------------------------------------------ */

/* An int (bool included) that fits int64: 0, FALLBACK for anything else, -1 on error. */
static int as_int(PyObject *o, long long *out) {
    if (!PyLong_CheckExact(o) && !PyBool_Check(o)) return FALLBACK;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) return FALLBACK;
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* A float, or an int below 2**53 in size (so that C's arithmetic and comparisons on the
 * double give what Python's give on the int): 0, FALLBACK, or -1 on error. */
static int as_number(PyObject *o, double *out) {
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    long long v;
    int r = as_int(o, &v);
    if (r) return r;
    if (v >= (long long)EXACT_LIMIT || v <= -(long long)EXACT_LIMIT) return FALLBACK;
    *out = (double)v;
    return 0;
}

/* An attribute read as an int or a number, the reference released. */
static int get_int(PyObject *obj, int which, long long *out) {
    PyObject *v = get(obj, which);
    if (!v) return -1;
    int r = as_int(v, out);
    Py_DECREF(v);
    return r;
}

static int get_number(PyObject *obj, int which, double *out) {
    PyObject *v = get(obj, which);
    if (!v) return -1;
    int r = as_number(v, out);
    Py_DECREF(v);
    return r;
}

/* ---- LoadCell: a replica's load, its numbers readable without a pointer chase --------- */

/* router.load.ReplicaLoad's base class when this module is built: weight, requests,
 * limit, usable and name live here instead of in __slots__. Python reads back exactly the
 * objects it set (same values, same types: nothing changes for the Python code), and each
 * number is also kept as a double beside it, with a bit saying it is one the choice reads
 * exactly (as_number). Why: the choice reads these for ~4-8 candidates a request, and
 * in slots each number was an int or float object of its own, a cache line apart from the
 * load and from each other; at 64 and 1,024 replicas those lines are cold between
 * requests. Here the doubles, the bits and the two pointers share the load's first line
 * (or two): warming the candidates' lines first made a choice ~1.1-1.4 us faster in a
 * slow phase. */
enum { N_WEIGHT, N_REQUESTS, N_LIMIT, NUMBERS };
#define CELL_EXACT ((1u << NUMBERS) - 1) /* every number exact */
#define CELL_NAME_STR (1u << NUMBERS)    /* name is an exact str: compared without running Python */

typedef struct {
    PyObject_HEAD
    double value[NUMBERS];      /* number k as a double; valid when bit k of flags is set */
    unsigned flags;             /* CELL_EXACT bits, CELL_NAME_STR */
    PyObject *usable;           /* as set (NULL: unset) */
    PyObject *name;             /* as set */
    PyObject *number[NUMBERS];  /* as set: what Python reads back */
    struct LoadOrder *order;    /* the LoadOrder holding it (which holds a reference), or NULL */
    Py_ssize_t order_at;        /* its place in that order's heap */
} LoadCell;

static const char *const number_names[NUMBERS] = {"weight", "requests", "limit"};

static PyObject *cell_unset(PyObject *self, const char *name) {
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'", Py_TYPE(self)->tp_name, name);
    return NULL;
}

static PyObject *cell_get_number(LoadCell *self, void *closure) {
    int k = (int)(intptr_t)closure;
    if (!self->number[k]) return cell_unset((PyObject *)self, number_names[k]);
    Py_INCREF(self->number[k]);
    return self->number[k];
}

static int cell_set_number(LoadCell *self, PyObject *value, void *closure) {
    int k = (int)(intptr_t)closure;
    if (!value) { /* del: as for a slot, an error when unset */
        if (!self->number[k]) {
            cell_unset((PyObject *)self, number_names[k]);
            return -1;
        }
        self->flags &= ~(1u << k);
        Py_CLEAR(self->number[k]);
        return 0;
    }
    double v = 0.0;
    int r = as_number(value, &v);
    if (r < 0) return -1;
    Py_INCREF(value);
    Py_XSETREF(self->number[k], value);
    self->value[k] = v;
    if (r == 0) self->flags |= 1u << k;
    else self->flags &= ~(1u << k); /* a type or size the choice does not mirror: the Python answers */
    return 0;
}

static PyObject *cell_get_name(LoadCell *self, void *closure) {
    (void)closure;
    if (!self->name) return cell_unset((PyObject *)self, "name");
    Py_INCREF(self->name);
    return self->name;
}

static int cell_set_name(LoadCell *self, PyObject *value, void *closure) {
    (void)closure;
    if (!value && !self->name) {
        cell_unset((PyObject *)self, "name");
        return -1;
    }
    Py_XINCREF(value);
    Py_XSETREF(self->name, value);
    if (value && PyUnicode_CheckExact(value)) self->flags |= CELL_NAME_STR;
    else self->flags &= ~CELL_NAME_STR;
    return 0;
}

/* load.open: requests < limit, as ReplicaLoad's Python property computes it (with the
 * C base it is this getter instead: the registry asks it twice per placement and sample,
 * and a property's Python frame cost more than the two reads it makes). */
static PyObject *cell_get_open(LoadCell *self, void *closure) {
    (void)closure;
    if (!self->number[N_REQUESTS]) return cell_unset((PyObject *)self, "requests");
    if (!self->number[N_LIMIT]) return cell_unset((PyObject *)self, "limit");
    const unsigned both = (1u << N_REQUESTS) | (1u << N_LIMIT);
    if ((self->flags & both) == both) return PyBool_FromLong(self->value[N_REQUESTS] < self->value[N_LIMIT]);
    return PyObject_RichCompare(self->number[N_REQUESTS], self->number[N_LIMIT], Py_LT);
}

static PyGetSetDef cell_getset[] = {
    {"weight", (getter)cell_get_number, (setter)cell_set_number, "outstanding token weight", (void *)(intptr_t)N_WEIGHT},
    {"requests", (getter)cell_get_number, (setter)cell_set_number, "outstanding requests", (void *)(intptr_t)N_REQUESTS},
    {"limit", (getter)cell_get_number, (setter)cell_set_number, "requests at which it is saturated",
     (void *)(intptr_t)N_LIMIT},
    {"name", (getter)cell_get_name, (setter)cell_set_name, "the replica's name", NULL},
    {"open", (getter)cell_get_open, NULL, "below its saturation point (requests < limit)", NULL},
    {NULL},
};

static PyMemberDef cell_members[] = {
    {"usable", T_OBJECT_EX, offsetof(LoadCell, usable), 0, "alive and not draining"},
    {NULL},
};

static int cell_traverse(LoadCell *self, visitproc visit, void *arg) {
    Py_VISIT(self->usable);
    Py_VISIT(self->name);
    for (int k = 0; k < NUMBERS; k++) Py_VISIT(self->number[k]);
    return 0;
}

static int cell_clear(LoadCell *self) {
    self->flags = 0;
    Py_CLEAR(self->usable);
    Py_CLEAR(self->name);
    for (int k = 0; k < NUMBERS; k++) Py_CLEAR(self->number[k]);
    return 0;
}

static void cell_dealloc(LoadCell *self) {
    PyObject_GC_UnTrack(self);
    cell_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LoadCellType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._choice.LoadCell",
    .tp_doc = PyDoc_STR("router.load.ReplicaLoad's base: weight, requests, limit, usable and name, "
                        "read by replica choice without a pointer chase (see router/_choice.c)."),
    .tp_basicsize = sizeof(LoadCell),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)cell_dealloc,
    .tp_traverse = (traverseproc)cell_traverse,
    .tp_clear = (inquiry)cell_clear,
    .tp_getset = cell_getset,
    .tp_members = cell_members,
};

/* `load` as a cell whose five attributes are the cell's own (a subclass that redefined
 * one, or a load that is no cell, is read the generic way); NULL otherwise. The answer is
 * kept for the last type asked about, as the Field reads keep their offsets. */
static const int cell_attributes[] = {F_WEIGHT, F_REQUESTS, F_LIMIT, F_NAME, F_LOAD_USABLE};
#define CELL_ATTRIBUTES ((int)(sizeof cell_attributes / sizeof cell_attributes[0]))
static PyTypeObject *cell_type_seen;
static int cell_type_plain;

static const LoadCell *as_cell(PyObject *load) {
    PyTypeObject *tp = Py_TYPE(load);
    if (tp != cell_type_seen) {
        int plain = PyType_IsSubtype(tp, &LoadCellType) && tp->tp_getattro == PyObject_GenericGetAttr;
        for (int i = 0; plain && i < CELL_ATTRIBUTES; i++) {
            PyObject *key = fields[cell_attributes[i]].str;
            plain = _PyType_Lookup(tp, key) == _PyType_Lookup(&LoadCellType, key);
        }
        Py_INCREF(tp);
        Py_XSETREF(cell_type_seen, tp);
        cell_type_plain = plain;
    }
    return cell_type_plain ? (const LoadCell *)load : NULL;
}

/* load.name, a new reference: from the cell when it is one, else by getattr. */
static PyObject *load_name(PyObject *load) {
    const LoadCell *cell = as_cell(load);
    if (cell && cell->name) {
        Py_INCREF(cell->name);
        return cell->name;
    }
    return get(load, F_NAME);
}

/* Python's a == b for replica names (str; None for "no session"). */
static inline int same_name(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b)) {
        if (PyUnicode_GET_LENGTH(a) != PyUnicode_GET_LENGTH(b)) return 0;
        return PyUnicode_Compare(a, b) == 0;
    }
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* ---- LoadOrder: a fleet's usable, open replicas by outstanding weight ----------------- */

/* router.registry.Fleet's load order when this module is built (router/order.py picks it;
 * its HeapOrder is the reference): Fleet.least_loaded is the top of a binary min-heap of
 * the fleet's LoadCells by (weight, name), the same order as the Python's (weight, name)
 * tuples, holding exactly the cells that are usable and below their limit. Each cell
 * keeps its place in the heap, so a change of one replica's load moves its one entry,
 * O(log n) comparisons of doubles, without a Python frame or an allocation.
 *
 * Why: heapq cannot move an entry, so the Python pushes a new (weight, name) at every
 * change and drops stale ones as they surface at the top. They surface in bursts: a
 * replica whose load jumps leaves entries behind it that all surface at once when the
 * least load rises past them, and now and then a claim popped ~80 of them at ~1.5 us each
 * (the claim's p99 at 64 replicas, bench/decision.py: 45-80 us on a p50 of 7-17).
 *
 * Every change of a held cell's weight, requests or limit must be followed by update()
 * (router.registry.Fleet makes them all and calls it), as every change of the Python's
 * must be followed by a push; a cell that leaves the fleet's usable replicas is discard()ed. */
typedef struct LoadOrder {
    PyObject_HEAD
    LoadCell **heap; /* strong references; heap[i]->order_at == i */
    Py_ssize_t size, room;
} LoadOrder;

static PyTypeObject LoadOrderType;

/* A cell's number, or NULL with AttributeError set when it is unset. */
static PyObject *cell_number(const LoadCell *c, int k) {
    if (!c->number[k]) cell_unset((PyObject *)c, number_names[k]);
    return c->number[k];
}

/* (a.weight, a.name) < (b.weight, b.name), as Python compares the tuples: 1, 0, or -1
 * with an exception. Doubles when both weights are exact (all but ints past 2**53). */
static int cell_less(const LoadCell *a, const LoadCell *b) {
    const unsigned weight = 1u << N_WEIGHT;
    if (a->flags & b->flags & weight) {
        if (a->value[N_WEIGHT] != b->value[N_WEIGHT]) return a->value[N_WEIGHT] < b->value[N_WEIGHT];
    } else {
        PyObject *x = cell_number(a, N_WEIGHT), *y = x ? cell_number(b, N_WEIGHT) : NULL;
        if (!y) return -1;
        int same = PyObject_RichCompareBool(x, y, Py_EQ);
        if (same < 0) return -1;
        if (!same) return PyObject_RichCompareBool(x, y, Py_LT);
    }
    if (!a->name || !b->name) {
        cell_unset((PyObject *)(a->name ? b : a), "name");
        return -1;
    }
    if (a->flags & b->flags & CELL_NAME_STR) return PyUnicode_Compare(a->name, b->name) < 0;
    return PyObject_RichCompareBool(a->name, b->name, Py_LT);
}

/* Puts c at place i of the heap (the one write that keeps heap[i]->order_at == i). */
static inline void order_put(LoadOrder *o, Py_ssize_t i, LoadCell *c) {
    o->heap[i] = c;
    c->order_at = i;
}

/* The cell at place i moved towards the top past every entry it is less than. */
static int order_sift_up(LoadOrder *o, Py_ssize_t i) {
    LoadCell *c = o->heap[i];
    int r = 0;
    for (Py_ssize_t parent; i > 0; i = parent) {
        parent = (i - 1) / 2;
        if ((r = cell_less(c, o->heap[parent])) <= 0) break;
        order_put(o, i, o->heap[parent]);
    }
    order_put(o, i, c);
    return r < 0 ? -1 : 0;
}

/* ... and away from the top past every entry less than it. */
static int order_sift_down(LoadOrder *o, Py_ssize_t i) {
    LoadCell *c = o->heap[i];
    int r = 0;
    for (Py_ssize_t child; (child = 2 * i + 1) < o->size; i = child) {
        if (child + 1 < o->size) {
            if ((r = cell_less(o->heap[child + 1], o->heap[child])) < 0) break;
            child += r;
        }
        if ((r = cell_less(o->heap[child], c)) <= 0) break;
        order_put(o, i, o->heap[child]);
    }
    order_put(o, i, c);
    return r < 0 ? -1 : 0;
}

/* Takes c out of o (it is in it). */
static int order_remove(LoadOrder *o, LoadCell *c) {
    Py_ssize_t i = c->order_at;
    LoadCell *last = o->heap[--o->size];
    o->heap[o->size] = NULL;
    c->order = NULL;
    c->order_at = 0;
    int r = 0;
    if (last != c) {
        order_put(o, i, last);
        r = order_sift_up(o, i);
        if (r == 0) r = order_sift_down(o, last->order_at);
    }
    Py_DECREF(c);
    return r;
}

/* The plain LoadCell `load` is (its five attributes its own), or NULL with TypeError. */
static LoadCell *order_cell(PyObject *load) {
    const LoadCell *cell = as_cell(load);
    if (!cell) {
        PyErr_Format(PyExc_TypeError, "LoadOrder holds router.load.ReplicaLoad objects (LoadCells whose weight, "
                                      "requests, limit, usable and name are their own), not %.100s",
                     Py_TYPE(load)->tp_name);
        return NULL;
    }
    return (LoadCell *)cell;
}

/* update(load): load's place after a change of its weight, requests or limit — in the
 * order while requests < limit, out of it otherwise (a saturated replica is no answer). */
static PyObject *order_update(LoadOrder *self, PyObject *load) {
    LoadCell *c = order_cell(load);
    if (!c) return NULL;
    if (c->order && c->order != self) {
        PyErr_SetString(PyExc_ValueError, "this load is in another LoadOrder (a replica's load belongs to one fleet)");
        return NULL;
    }
    PyObject *requests = cell_number(c, N_REQUESTS), *limit = requests ? cell_number(c, N_LIMIT) : NULL;
    if (!limit || !cell_number(c, N_WEIGHT)) return NULL;
    if (!c->name) return cell_unset(load, "name");
    const unsigned both = (1u << N_REQUESTS) | (1u << N_LIMIT);
    int open = (c->flags & both) == both ? c->value[N_REQUESTS] < c->value[N_LIMIT]
                                         : PyObject_RichCompareBool(requests, limit, Py_LT);
    if (open < 0) return NULL;
    if (!open) {
        if (c->order && order_remove(self, c) < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (c->order) {
        if (order_sift_up(self, c->order_at) < 0 || order_sift_down(self, c->order_at) < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (self->size == self->room) {
        Py_ssize_t room = self->room ? 2 * self->room : 16;
        LoadCell **heap = PyMem_Realloc(self->heap, sizeof(LoadCell *) * (size_t)room);
        if (!heap) return PyErr_NoMemory();
        self->heap = heap;
        self->room = room;
    }
    Py_INCREF(c);
    c->order = self;
    order_put(self, self->size++, c);
    if (order_sift_up(self, c->order_at) < 0) return NULL;
    Py_RETURN_NONE;
}

/* discard(load): out of the order (the replica left, or drains); nothing if it is not in it. */
static PyObject *order_discard(LoadOrder *self, PyObject *load) {
    LoadCell *c = order_cell(load);
    if (!c) return NULL;
    if (c->order == self && order_remove(self, c) < 0) return NULL;
    Py_RETURN_NONE;
}

/* least() -> the name of the least loaded replica in the order, or None. */
static PyObject *order_least(LoadOrder *self, PyObject *unused) {
    (void)unused;
    if (!self->size) Py_RETURN_NONE;
    LoadCell *top = self->heap[0];
    if (!top->name) return cell_unset((PyObject *)top, "name"); /* deleted since it came in */
    Py_INCREF(top->name);
    return top->name;
}

static Py_ssize_t order_len(LoadOrder *self) { return self->size; }

static int order_contains(LoadOrder *self, PyObject *load) {
    return PyObject_TypeCheck(load, &LoadCellType) && ((LoadCell *)load)->order == self;
}

static int order_traverse(LoadOrder *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->size; i++) Py_VISIT(self->heap[i]);
    return 0;
}

static int order_clear(LoadOrder *self) {
    while (self->size) { /* cells first told they are out, then released */
        LoadCell *c = self->heap[--self->size];
        self->heap[self->size] = NULL;
        c->order = NULL;
        c->order_at = 0;
        Py_DECREF(c);
    }
    return 0;
}

static void order_dealloc(LoadOrder *self) {
    PyObject_GC_UnTrack(self);
    order_clear(self);
    PyMem_Free(self->heap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef order_methods[] = {
    {"update", (PyCFunction)order_update, METH_O,
     "update(load): its place after a change of its weight, requests or limit (out while saturated)"},
    {"discard", (PyCFunction)order_discard, METH_O, "discard(load): out of the order (it left, or drains)"},
    {"least", (PyCFunction)order_least, METH_NOARGS, "least() -> the least loaded replica's name, or None"},
    {NULL},
};

static PySequenceMethods order_sequence = {
    .sq_length = (lenfunc)order_len,
    .sq_contains = (objobjproc)order_contains,
};

static PyTypeObject LoadOrderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._choice.LoadOrder",
    .tp_doc = PyDoc_STR("A fleet's usable, unsaturated replica loads by (weight, name): an indexed heap "
                        "(see router/_choice.c and router/order.py)."),
    .tp_basicsize = sizeof(LoadOrder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)order_dealloc,
    .tp_traverse = (traverseproc)order_traverse,
    .tp_clear = (inquiry)order_clear,
    .tp_methods = order_methods,
    .tp_as_sequence = &order_sequence,
};

/* ---- configuration (router/replicas.py calls configure once) ----------------------- */

static PyObject *reference;        /* router.replicas.choose_affinity_python */
static PyObject *find_reference;   /* router.placement.PlacementMemory.find */
static PyObject *default_settings; /* router.replicas.DEFAULT_SETTINGS */
static PyObject *spill;            /* (ANY_REPLICA, CacheClass.SPILL) */
static long long block_tokens;     /* router.replicas.BLOCK_TOKENS */
static int id_bits;                /* router.placement.ID_BITS */
static PyObject *successors_str, *least_loaded_str;
static PyObject *least_loaded_reference; /* router.registry.Fleet.least_loaded (NULL: always call it) */
static unsigned long long fallbacks; /* calls handed to the Python reference (for tests) */

/* The knobs of one ReplicaSettings, read once: settings are frozen, and a router passes
 * the same object on every call, so the last one read is kept (with a reference). */
typedef struct {
    PyObject *obj;
    int usable; /* 0: knobs this twin does not mirror (the reference is called) */
    double load_epsilon, move_cost, floor_requests, decode_weight, load_cost;
    long long free_move_tokens, default_output_tokens, ring_choices, max_walk, fallbacks;
    PyObject *max_walk_obj;
} Knobs;

static Knobs knobs;

static int read_knobs(PyObject *settings) {
    if (settings == knobs.obj) return 0;
    Knobs k = {0};
    int r = 0;
    if ((r = get_number(settings, F_LOAD_EPSILON, &k.load_epsilon)) ||
        (r = get_number(settings, F_MOVE_COST, &k.move_cost)) ||
        (r = get_number(settings, F_FLOOR_REQUESTS, &k.floor_requests)) ||
        (r = get_number(settings, F_DECODE_WEIGHT, &k.decode_weight)) ||
        (r = get_number(settings, F_LOAD_COST, &k.load_cost)) ||
        (r = get_int(settings, F_FREE_MOVE_TOKENS, &k.free_move_tokens)) ||
        (r = get_int(settings, F_DEFAULT_OUTPUT_TOKENS, &k.default_output_tokens)) ||
        (r = get_int(settings, F_RING_CHOICES, &k.ring_choices)) ||
        (r = get_int(settings, F_MAX_WALK, &k.max_walk)) ||
        (r = get_int(settings, F_FALLBACKS, &k.fallbacks))) {
        if (r < 0) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
            PyErr_Clear(); /* not a ReplicaSettings: the reference reads what it needs */
            return FALLBACK;
        }
    }
    /* A walk of fewer than one replica slices the ring's tuples in ways not mirrored here;
     * huge token counts would leave the exact range of the arithmetic below. */
    k.usable = !r && k.max_walk >= 1 && k.max_walk <= 1 << 20 &&
               k.free_move_tokens > -(1LL << 40) && k.free_move_tokens < (1LL << 40) &&
               k.default_output_tokens > -(1LL << 40) && k.default_output_tokens < (1LL << 40);
    if (k.usable) {
        k.max_walk_obj = PyLong_FromLongLong(k.max_walk);
        if (!k.max_walk_obj) return -1;
    }
    Py_INCREF(settings);
    k.obj = settings;
    Py_XDECREF(knobs.obj);
    Py_XDECREF(knobs.max_walk_obj);
    knobs = k;
    return 0;
}

/* ---- the placement lookup (PlacementMemory.find) ------------------------------------- */

typedef struct {
    Py_ssize_t matched, common;
    int count;                       /* holders of the deepest placed prefix, if not spread */
    PyObject *holders[MAX_HOLDERS];  /* their names (new references) */
    PyObject *sticky;                /* the session's replica (new reference), or NULL */
} Found;

static void found_clear(Found *f) {
    for (int i = 0; i < f->count; i++) Py_CLEAR(f->holders[i]);
    f->count = 0;
    Py_CLEAR(f->sticky);
}

/* `h in new or h in old`: 1 with *entry set to its value (borrowed: `new.get(h)`, else
 * `old[h]`, what the Python reads once the search is over), 0, or -1 on error. Keeping
 * the value of the deepest hit saves that last lookup. */
/* A key is hashed once per probe or put, not once per dict read and write (CPython
 * before 3.13 exports the known-hash dict calls). */
#if PY_VERSION_HEX < 0x030D0000
#define DICT_GET(d, k, hash) _PyDict_GetItem_KnownHash((d), (k), (hash))
#define DICT_SET(d, k, v, hash) _PyDict_SetItem_KnownHash((d), (k), (v), (hash))
#else
#define DICT_GET(d, k, hash) PyDict_GetItemWithError((d), (k))
#define DICT_SET(d, k, v, hash) PyDict_SetItem((d), (k), (v))
#endif

/* A generation of router.placement._TwoGenerations: a tuple of dicts (its shards), a power
 * of two of them, a key in the one shard_index picks. 1 when `shards` is a tuple of that
 * shape (its items are checked where they are used), else 0. */
static inline int is_generation(PyObject *shards) {
    if (!PyTuple_CheckExact(shards)) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(shards);
    return n > 0 && (n & (n - 1)) == 0;
}

/* Two generations of one _TwoGenerations: both of that shape, with the same shard count
 * (a key is in shard shard_index of either). */
static inline int generations_match(PyObject *a, PyObject *b) {
    return is_generation(a) && is_generation(b) && PyTuple_GET_SIZE(a) == PyTuple_GET_SIZE(b);
}

/* The shard of a key of this hash, as router.placement._shard picks it: the top bits of
 * hash x 2**64 / phi (mod 2**64), log2(count) of them. */
static inline Py_ssize_t shard_index(PyObject *shards, Py_hash_t hash) {
    uint64_t n = (uint64_t)PyTuple_GET_SIZE(shards); /* a power of two (is_generation) */
    if (n == 1) return 0;
    return (Py_ssize_t)(((uint64_t)hash * 0x9E3779B97F4A7C15ULL) >> (64 - __builtin_ctzll(n)));
}

/* Shard i of a generation, borrowed; NULL with TypeError when it is not a plain dict (the
 * generations are made by router.placement alone: a shard of another type is a fault). */
static inline PyObject *shard_of(PyObject *shards, Py_ssize_t i) {
    PyObject *d = PyTuple_GET_ITEM(shards, i);
    if (PyDict_CheckExact(d)) return d;
    PyErr_Format(PyExc_TypeError, "a placement generation's shard is a %.100s, not a dict", Py_TYPE(d)->tp_name);
    return NULL;
}

/* `h in new or h in old`, the value when it is: 1 (*entry borrowed), 0, -1 on error,
 * FALLBACK for a shard that is not a plain dict. new and old are generations of the same
 * shard count. */
static inline int placed(PyObject *new, PyObject *old, PyObject *h, PyObject **entry) {
    Py_hash_t hash = PyObject_Hash(h);
    if (hash == -1) return -1;
    Py_ssize_t at = shard_index(new, hash);
    PyObject *in_new = PyTuple_GET_ITEM(new, at), *in_old = PyTuple_GET_ITEM(old, at);
    if (!PyDict_CheckExact(in_new) || !PyDict_CheckExact(in_old)) return FALLBACK;
    PyObject *v = DICT_GET(in_new, h, hash);
    if (!v) {
        if (PyErr_Occurred()) return -1;
        v = DICT_GET(in_old, h, hash);
        if (!v) return PyErr_Occurred() ? -1 : 0;
    }
    *entry = v;
    return 1;
}

/* Where find's probes look: a PrefixMap (the C placement memory), or a _TwoGenerations'
 * newer and older generations of dicts. A probe's hit: the dict value (borrowed), or the
 * map's slot. */
typedef struct {
    const PrefixMap *map;
    PyObject *new, *old;
} Probe;

typedef struct {
    PyObject *obj;
    const MapSlot *slot;
} Hit;

/* `h in prefixes`, the value when it is: 1 (*hit set), 0, -1 on error, FALLBACK. */
static inline int probe(const Probe *p, PyObject *h, Hit *hit) {
    if (p->map) {
        uint64_t key1;
        /* not a key the map can hold: PrefixMap.__contains__'s False */
        const MapSlot *s = map_key(h, &key1) ? map_get(p->map, key1) : NULL;
        if (!s) return 0;
        hit->slot = s;
        hit->obj = NULL;
        return 1;
    }
    PyObject *obj = NULL;
    int r = placed(p->new, p->old, h, &obj);
    if (r == 1) {
        hit->obj = obj;
        hit->slot = NULL;
    }
    return r;
}

/* The bits of a non-negative int, as little-endian 64-bit words: 0, FALLBACK (negative,
 * or wider than the words), -1 on error. */
static int int_words(PyObject *v, uint64_t *words, int count) {
    unsigned char bytes[ENTRY_WORDS * 8];
    if (!PyLong_CheckExact(v)) return FALLBACK;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(v, bytes, count * 8,
                                           Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                               Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (need < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
        PyErr_Clear(); /* negative */
        return FALLBACK;
    }
    if (need > count * 8) return FALLBACK;
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, bytes, (size_t)count * 8, 1, 0) < 0) {
        /* too wide, or negative */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return FALLBACK;
    }
#endif
    for (int w = 0; w < count; w++) {
        uint64_t x = 0;
        for (int b = 7; b >= 0; b--) x = x << 8 | bytes[w * 8 + b];
        words[w] = x;
    }
    return 0;
}

/* `width` (<= 64) bits of the words from bit `at`; bits past the words are 0. */
static inline uint64_t bits(const uint64_t *words, int count, long at, int width) {
    long w = at >> 6;
    int off = (int)(at & 63);
    if (w >= count) return 0;
    uint64_t v = words[w] >> off;
    if (off && off + width > 64 && w + 1 < count) v |= words[w + 1] << (64 - off);
    return width < 64 ? v & ((UINT64_C(1) << width) - 1) : v;
}

/* PlacementMemory.find into `f`: 0, FALLBACK, or -1 on error (f is cleared on both). */
static int find_core(PyObject *memory, PyObject *hashes, PyObject *hint_obj,
                     PyObject *session_obj, Found *f) {
    PyObject *sessions = NULL, *snew = NULL, *sold = NULL, *prefixes = NULL, *new = NULL,
             *old = NULL, *names = NULL;
    int r = FALLBACK;
    f->matched = f->common = 0;
    f->count = 0;
    f->sticky = NULL;
    if (!PyTuple_CheckExact(hashes)) goto done;
    int has_session = PyObject_IsTrue(session_obj);
    if (has_session < 0) goto error;
    if (has_session) { /* PlacementMemory.session: the id of its last turn's replica, its name */
        if (!(sessions = get(memory, F_SESSIONS))) goto error;
        Probe sp = {NULL, NULL, NULL};
        if (Py_TYPE(sessions) == &PrefixMapType) {
            sp.map = (const PrefixMap *)sessions;
            if (!sp.map->newer.slots) goto done;
        } else {
            if (!(snew = get(sessions, F_NEW)) || !(sold = get(sessions, F_OLD))) goto error;
            if (!generations_match(snew, sold)) goto done;
            sp.new = snew;
            sp.old = sold;
        }
        Hit hit = {NULL, NULL};
        int there = probe(&sp, session_obj, &hit);
        if (there < 0) goto error;
        if (there == FALLBACK) goto done;
        if (there) {
            long long rid;
            if (hit.slot) {
                if (hit.slot->hi || hit.slot->lo > (uint64_t)PY_SSIZE_T_MAX) goto done;
                rid = (long long)hit.slot->lo;
            } else if ((r = as_int(hit.obj, &rid))) {
                goto done;
            }
            r = FALLBACK;
            if (!(names = get(memory, F_NAMES))) goto error;
            if (!PyList_CheckExact(names) || rid < 0 || rid >= PyList_GET_SIZE(names)) goto done;
            f->sticky = Py_NewRef(PyList_GET_ITEM(names, (Py_ssize_t)rid));
        }
    }
    Py_ssize_t size = PyTuple_GET_SIZE(hashes);
    if (!size) {
        r = 0;
        goto done;
    }
    long long hint;
    if ((r = as_int(hint_obj, &hint))) goto done;
    r = FALLBACK;
    if (!(prefixes = get(memory, F_PREFIXES))) goto error;
    Probe p = {NULL, NULL, NULL};
    if (Py_TYPE(prefixes) == &PrefixMapType) {
        p.map = (const PrefixMap *)prefixes;
        if (!p.map->newer.slots) goto done; /* not initialised: the Python method raises */
        /* The lines the first probes read (see the search below), asked of memory together:
         * the hint's two, else the first block's and the whole prompt's. */
        PyObject *const *first = &PyTuple_GET_ITEM(hashes, 0);
        Py_ssize_t ask[3] = {0, size - 1, -1};
        if (0 < hint && hint <= size) {
            ask[0] = (Py_ssize_t)hint - 1;
            ask[1] = hint < size ? (Py_ssize_t)hint : -1;
            ask[2] = size - 1;
        }
        for (int k = 0; k < 3; k++) {
            uint64_t key1;
            if (ask[k] >= 0 && map_key(first[ask[k]], &key1)) map_prefetch(p.map, key1);
        }
    } else {
        if (!(new = get(prefixes, F_NEW)) || !(old = get(prefixes, F_OLD))) goto error;
        if (!generations_match(new, old)) goto done;
        p.new = new;
        p.old = old;
    }
    PyObject *const *h = &PyTuple_GET_ITEM(hashes, 0);
    /* The answer lies in [low, high]: depth low is placed (0: trivially), none past high
     * is; the hint's probes narrow it first, right or wrong. depth d is hashes[d - 1]. */
    Py_ssize_t low = 0, high = size;
    int there;
    Hit entry = {NULL, NULL}, probed = {NULL, NULL}; /* the value at depth low; at the last probe */
    if (0 < hint && hint <= size) {
        if ((there = probe(&p, h[hint - 1], &entry)) < 0) goto error;
        if (there == FALLBACK) goto done;
        if (there) {
            low = (Py_ssize_t)hint;
            there = hint < size ? probe(&p, h[hint], &probed) : 0;
            if (there < 0) goto error;
            if (there == FALLBACK) goto done;
            if (there) {
                low = (Py_ssize_t)hint + 1;
                entry = probed;
            } else {
                high = (Py_ssize_t)hint;
            }
        } else {
            high = (Py_ssize_t)hint - 1;
        }
    }
    if (!low && high == size) { /* no hint: the first block first, so a new prompt is one probe */
        if ((there = probe(&p, h[0], &entry)) < 0) goto error;
        if (there == FALLBACK) goto done;
        if (!there) {
            r = 0;
            goto done;
        }
        low = 1;
    }
    if (high == size && low < size) { /* the whole prompt placed before */
        if ((there = probe(&p, h[size - 1], &probed)) < 0) goto error;
        if (there == FALLBACK) goto done;
        if (there) {
            low = size;
            entry = probed;
        } else {
            high = size - 1;
        }
    }
    if (!low && high) {
        if ((there = probe(&p, h[0], &entry)) < 0) goto error;
        if (there == FALLBACK) goto done;
        if (!there) { /* not even the first block: not placed */
            r = 0;
            goto done;
        }
        low = 1;
    }
    while (low < high) {
        Py_ssize_t mid = (low + high + 1) / 2;
        if ((there = probe(&p, h[mid - 1], &probed)) < 0) goto error;
        if (there == FALLBACK) goto done;
        if (there) {
            low = mid;
            entry = probed;
        } else {
            high = mid - 1;
        }
    }
    Py_ssize_t matched = low;
    if (!matched) {
        r = 0;
        goto done;
    }
    /* entry: the value at depth matched, read by the probe that found it placed. */
    if (!entry.obj && !entry.slot) goto done; /* cannot happen: every step that raises low found an entry */
    long long shift, full_shift;
    if ((r = get_int(memory, F_SHARED_SHIFT, &shift)) || (r = get_int(memory, F_FULL_SHIFT, &full_shift)))
        goto done;
    r = FALLBACK;
    if (shift < 1 || full_shift < 0 || shift + 64 > ENTRY_WORDS * 64 || id_bits < 1 ||
        shift > (long long)id_bits * MAX_HOLDERS)
        goto done;
    uint64_t words[ENTRY_WORDS] = {0};
    int words_used = (int)((shift + 64 + 63) / 64);
    if (entry.slot) { /* a map's value: below 2**128, the words above are 0 */
        words[0] = entry.slot->lo;
        words[1] = entry.slot->hi;
    } else {
        Py_INCREF(entry.obj);
        r = int_words(entry.obj, words, words_used);
        Py_DECREF(entry.obj);
        if (r) goto done;
    }
    r = FALLBACK;
    /* entry = holders | shared << shift; holders are ids of id_bits, most recent lowest,
     * and the field at full_shift is set when the list is full (spread fleet-wide). */
    int full = 0;
    for (long at = (long)full_shift; at < shift; at += 64) {
        int width = shift - at < 64 ? (int)(shift - at) : 64;
        if (bits(words, words_used, at, width)) full = 1;
    }
    f->matched = matched;
    if (full) {
        f->common = matched;
        r = 0;
        goto done;
    }
    uint64_t shared = bits(words, words_used, (long)shift, 64);
    if (shared > (uint64_t)PY_SSIZE_T_MAX) goto done;
    f->common = (Py_ssize_t)shared;
    /* Python's decode: `while rest: names[rest & mask]; rest >>= id_bits`, so fields up to
     * the highest non-zero one, zeros below it included. */
    int fields_n = (int)((shift + id_bits - 1) / id_bits), top = -1;
    uint64_t ids[MAX_HOLDERS];
    for (int i = 0; i < fields_n; i++) {
        long at = (long)i * id_bits;
        int width = at + id_bits > shift ? (int)(shift - at) : id_bits;
        ids[i] = bits(words, words_used, at, width);
        if (ids[i]) top = i;
    }
    if (top >= 0) {
        if (!names && !(names = get(memory, F_NAMES))) goto error;
        if (!PyList_CheckExact(names)) goto done;
        for (int i = 0; i <= top; i++) {
            if (ids[i] >= (uint64_t)PyList_GET_SIZE(names)) goto done; /* IndexError in Python */
            PyObject *name = PyList_GET_ITEM(names, (Py_ssize_t)ids[i]);
            Py_INCREF(name);
            f->holders[f->count++] = name;
        }
    }
    r = 0;
    goto done;
error:
    r = -1;
done:
    if (r) found_clear(f);
    Py_XDECREF(sessions);
    Py_XDECREF(snew);
    Py_XDECREF(sold);
    Py_XDECREF(prefixes);
    Py_XDECREF(new);
    Py_XDECREF(old);
    Py_XDECREF(names);
    return r;
}

static int holds(const Found *f, PyObject *name) {
    for (int i = 0; i < f->count; i++) {
        int same = same_name(f->holders[i], name);
        if (same) return same;
    }
    return 0;
}

/* ---- the choice ----------------------------------------------------------------------- */

/* The three cheapest candidates so far: cost, load object (new reference), the name used
 * for ties (the candidate's own, as in the Python). */
typedef struct {
    double cost[3];
    PyObject *load[3];
} Best;

/* Python's `cost < c or (cost == c and name < l.name)`: 1, 0, -1 on error, FALLBACK. */
static int before(double cost, PyObject *name, double c, PyObject *l) {
    if (cost < c) return 1;
    if (cost != c) return 0;
    if (!l) return FALLBACK; /* None.name: the reference raises it */
    PyObject *other = load_name(l);
    if (!other) return -1;
    int lt;
    if (PyUnicode_CheckExact(name) && PyUnicode_CheckExact(other)) {
        lt = PyUnicode_Compare(name, other) < 0;
    } else {
        lt = PyObject_RichCompareBool(name, other, Py_LT);
    }
    Py_DECREF(other);
    return lt;
}

/* Offer a candidate to the best three (the Python's if/elif chain). */
static int offer(Best *b, double cost, PyObject *name, PyObject *load) {
    for (int i = 0; i < 3; i++) {
        int r = before(cost, name, b->cost[i], b->load[i]);
        if (r < 0 || r == FALLBACK) return r;
        if (r) {
            Py_XDECREF(b->load[2]);
            for (int j = 2; j > i; j--) {
                b->cost[j] = b->cost[j - 1];
                b->load[j] = b->load[j - 1];
            }
            b->cost[i] = cost;
            Py_INCREF(load);
            b->load[i] = load;
            return 0;
        }
    }
    return 0;
}

/* A candidate's state: its load (weight, requests), saturation point and whether it is
 * usable; FALLBACK for numbers outside the exact range. */
typedef struct {
    double weight, requests, limit;
} LoadView;

static int read_load(PyObject *load, LoadView *v) {
    const LoadCell *cell = as_cell(load);
    if (cell && (cell->flags & CELL_EXACT) == CELL_EXACT) {
        v->weight = cell->value[N_WEIGHT];
        v->requests = cell->value[N_REQUESTS];
        v->limit = cell->value[N_LIMIT];
        return 0;
    }
    int r;
    if ((r = get_number(load, F_WEIGHT, &v->weight)) || (r = get_number(load, F_REQUESTS, &v->requests)) ||
        (r = get_number(load, F_LIMIT, &v->limit)))
        return r;
    return 0;
}

/* Fleet.least_loaded's answer read without a Python frame when the fleet keeps its load
 * order in a LoadOrder (router/order.py) and its type still has that method: the order's
 * top, checked to be the fleet's usable load of that name (anything else: the method
 * runs). 1 with *name and *load set (new references), 0 when the method must run (an
 * empty order, a fleet type whose least_loaded is another function, anything
 * unexpected), -1 on error. */
static int least_at_top(PyObject *fleet, PyObject *usable, PyObject **name, PyObject **load) {
    if (!least_loaded_reference || _PyType_Lookup(Py_TYPE(fleet), least_loaded_str) != least_loaded_reference)
        return 0;
    PyObject *order = get(fleet, F_BY_LOAD);
    if (!order) return -1;
    int r = 0;
    if (Py_TYPE(order) != &LoadOrderType || !((LoadOrder *)order)->size) goto done;
    LoadCell *top = ((LoadOrder *)order)->heap[0];
    if (!top->name) goto done; /* deleted since: the method raises */
    PyObject *found = PyDict_GetItemWithError(usable, top->name); /* borrowed */
    if (!found) {
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if (found != (PyObject *)top) goto done;
    Py_INCREF(top->name);
    Py_INCREF(found);
    *name = top->name;
    *load = found;
    r = 1;
done:
    Py_DECREF(order);
    return r;
}

/* The ring lookup table's entry for `key` (HashRing: the slice key >> shift), borrowed;
 * NULL past the table's end. */
static inline PyObject *table_entry(PyObject *table, uint64_t key, long long shift) {
    uint64_t slot = shift >= 64 ? 0 : key >> shift;
    return slot < (uint64_t)PyList_GET_SIZE(table) ? PyList_GET_ITEM(table, (Py_ssize_t)slot) : NULL;
}

/* The ring walk a new prompt takes (its first block's key: matched == 0), its load
 * objects asked of memory before the placement lookup, so that their lines arrive while
 * the lookup waits for its own. A hint only: nothing is read that the walk below does
 * not read again, and any surprise (no ring yet, no table, no walk) skips it. */
static void prefetch_walk(PyObject *fleet, PyObject *hashes) {
    if (!PyTuple_CheckExact(hashes) || !PyTuple_GET_SIZE(hashes)) return;
    PyObject *first = PyTuple_GET_ITEM(hashes, 0);
    if (!PyLong_CheckExact(first)) return;
    PyObject *ring = get(fleet, F_RING_SLOT);
    if (!ring) {
        PyErr_Clear();
        return;
    }
    long long shift;
    PyObject *table = ring != Py_None && !get_int(ring, F_SHIFT, &shift) ? get(ring, F_TABLE) : NULL;
    PyErr_Clear();
    if (table && PyList_CheckExact(table) && shift >= 0) {
        uint64_t key = PyLong_AsUnsignedLongLongMask(first);
        PyErr_Clear();
        PyObject *walk = table_entry(table, key, shift);
        if (walk && PyTuple_CheckExact(walk)) {
            Py_ssize_t n = PyTuple_GET_SIZE(walk) < knobs.max_walk ? PyTuple_GET_SIZE(walk) : (Py_ssize_t)knobs.max_walk;
            for (Py_ssize_t i = 0; i < n; i++) { /* what the walk reads: a LoadCell's bytes 8 to 64 */
                __builtin_prefetch((char *)PyTuple_GET_ITEM(walk, i) + 8);
                __builtin_prefetch((char *)PyTuple_GET_ITEM(walk, i) + 63);
            }
        }
    }
    Py_XDECREF(table);
    Py_DECREF(ring);
}

/* The choice itself: 0 with *out set, FALLBACK, or -1 on error. */
static int choose_core(PyObject *ctx, PyObject *fleet, PyObject *settings, PyObject **out) {
    PyObject *usable = NULL, *placements = NULL, *hashes = NULL, *hint = NULL, *session = NULL,
             *ring = NULL, *walk = NULL, *table = NULL, *least = NULL, *first = NULL, *tmp = NULL,
             *key = NULL;
    Found f = {0};
    Best b = {{Py_HUGE_VAL, Py_HUGE_VAL, Py_HUGE_VAL}, {NULL, NULL, NULL}};
    int r;
    *out = NULL;
    if ((r = read_knobs(settings))) return r;
    if (!knobs.usable) return FALLBACK;
    if (!(usable = get(fleet, F_USABLE))) goto error;
    r = FALLBACK;
    if (!PyDict_CheckExact(usable)) goto done;
    Py_ssize_t count = PyDict_GET_SIZE(usable);
    if (!count) {
        *out = PyList_New(0);
        r = *out ? 0 : -1;
        goto done;
    }
    if (!(tmp = get(fleet, F_OPEN_COUNT))) goto error;
    int open = PyObject_IsTrue(tmp);
    Py_CLEAR(tmp);
    if (open < 0) goto error;
    if (!open) {
        *out = PyList_New(1);
        if (!*out) goto error;
        Py_INCREF(spill);
        PyList_SET_ITEM(*out, 0, spill);
        r = 0;
        goto done;
    }
    if (!(placements = get(fleet, F_PLACEMENTS)) || !(hashes = get(ctx, F_PREFIX_HASHES)) ||
        !(hint = get(ctx, F_SEEN_DEPTH)) || !(session = get(ctx, F_SESSION_HASH)))
        goto error;
    prefetch_walk(fleet, hashes);
    if ((r = find_core(placements, hashes, hint, session, &f))) goto done;
    r = FALLBACK;
    long long prompt, max_tokens, usable_weight, fill_weight;
    if ((r = get_int(ctx, F_PROMPT_TOKENS, &prompt)) || (r = get_int(ctx, F_MAX_TOKENS, &max_tokens)) ||
        (r = get_int(fleet, F_USABLE_WEIGHT, &usable_weight)) ||
        (r = get_int(fleet, F_FILL_WEIGHT, &fill_weight)))
        goto done;
    r = FALLBACK;
    const long long big = 1LL << 50; /* every sum below stays exact as a double */
    if (prompt <= -big || prompt >= big || max_tokens <= -big || max_tokens >= big ||
        usable_weight <= -big || usable_weight >= big || fill_weight <= -big || fill_weight >= big ||
        f.matched >= (1 << 20))
        goto done;
    long long uncached = prompt - (long long)f.matched * block_tokens;
    if (uncached < 1) uncached = 1;
    double output = knobs.decode_weight * (double)(max_tokens ? max_tokens : knobs.default_output_tokens);
    /* Python: (1.0 + eps) * (usable_weight + uncached + output) / count, the int sum first. */
    double bound = (1.0 + knobs.load_epsilon) * ((double)(usable_weight + uncached) + output) / (double)count;
    double floor = knobs.floor_requests * (double)fill_weight;
    double above_mean = bound;
    if (bound < floor) bound = floor;
    double load_cost = knobs.load_cost;
    int sticky_fits = 0;
    PyObject *sticky = f.sticky; /* borrowed from f; NULL for None */
    PyObject *sticky_apart = sticky;
    if (sticky) {
        int in = holds(&f, sticky);
        if (in < 0) goto error;
        if (in) sticky_apart = NULL;
    }
    if (f.count || sticky_apart) {
        long long kept = (long long)(f.matched - f.common) * block_tokens - knobs.free_move_tokens;
        double allowance = kept > 0 ? above_mean + knobs.move_cost * (double)kept : above_mean;
        if (allowance < bound) allowance = bound;
        for (int i = sticky_apart ? -1 : 0; i < f.count; i++) {
            PyObject *name = i < 0 ? sticky_apart : f.holders[i];
            PyObject *load = PyDict_GetItemWithError(usable, name); /* borrowed */
            if (!load) {
                if (PyErr_Occurred()) goto error;
                continue;
            }
            if (load == Py_None) continue;
            LoadView v;
            if ((r = read_load(load, &v))) goto done;
            r = FALLBACK;
            if (v.requests >= v.limit || v.weight > allowance) continue;
            if (sticky) {
                int same = same_name(name, sticky);
                if (same < 0) goto error;
                if (same) sticky_fits = 1;
            }
            double cost = (double)uncached + load_cost * v.weight;
            if ((r = offer(&b, cost, name, load))) goto done;
            r = FALLBACK;
        }
    }
    Py_ssize_t size = PyTuple_GET_SIZE(hashes);
    if (size) {
        key = PyTuple_GET_ITEM(hashes, f.matched < size ? f.matched : size - 1);
        Py_INCREF(key);
    } else {
        key = session;
        Py_INCREF(key);
    }
    int has_key = PyObject_IsTrue(key);
    if (has_key < 0) goto error;
    if (has_key) {
        if (!PyLong_CheckExact(key)) goto done;
        long long wanted = knobs.ring_choices;
        long long cold = prompt - (long long)f.common * block_tokens;
        if (!(ring = get(fleet, F_RING_SLOT))) goto error;
        if (ring == Py_None) {
            Py_CLEAR(ring);
            if (!(ring = get(fleet, F_RING))) goto error;
        }
        /* HashRing.successors: the slice's walk from the lookup table when it is there and
         * long enough; otherwise the method itself (it walks the ring and keeps the walk). */
        long long shift, ring_size;
        if ((r = get_int(ring, F_SHIFT, &shift)) || (r = get_int(ring, F_SIZE, &ring_size))) goto done;
        r = FALLBACK;
        if (!(table = get(ring, F_TABLE))) goto error;
        if (!PyList_CheckExact(table) || shift < 0) goto done;
        uint64_t masked = PyLong_AsUnsignedLongLongMask(key);
        if (masked == (uint64_t)-1 && PyErr_Occurred()) goto error;
        PyObject *cached = table_entry(table, masked, shift);
        Py_ssize_t walked;
        if (cached && PyTuple_CheckExact(cached) &&
            (PyTuple_GET_SIZE(cached) >= knobs.max_walk || PyTuple_GET_SIZE(cached) == ring_size)) {
            walk = cached;
            Py_INCREF(walk);
            walked = PyTuple_GET_SIZE(walk) < knobs.max_walk ? PyTuple_GET_SIZE(walk) : (Py_ssize_t)knobs.max_walk;
        } else {
            walk = PyObject_CallMethodObjArgs(ring, successors_str, key, knobs.max_walk_obj, NULL);
            if (!walk) goto error;
            if (!PyTuple_CheckExact(walk)) goto done;
            walked = PyTuple_GET_SIZE(walk);
        }
        for (Py_ssize_t i = 0; i < walked; i++) {
            PyObject *load = PyTuple_GET_ITEM(walk, i);
            LoadView v;
            if ((r = read_load(load, &v))) goto done;
            r = FALLBACK;
            if (v.weight > bound || v.requests >= v.limit) continue;
            /* usable and name from the cell when it has them (True and False are compared,
             * not read; an exact str name is compared without running Python, so it is
             * borrowed, not counted: the walk holds the load, the load its name, and the
             * name's own cache line is touched only if it is compared), else by getattr. */
            const LoadCell *cell = as_cell(load);
            int on;
            if (cell && (cell->usable == Py_True || cell->usable == Py_False)) {
                on = cell->usable == Py_True;
            } else {
                if (!(tmp = get(load, F_LOAD_USABLE))) goto error;
                on = PyObject_IsTrue(tmp);
                Py_CLEAR(tmp);
                if (on < 0) goto error;
            }
            if (!on) continue;
            int borrowed = cell && (cell->flags & CELL_NAME_STR);
            PyObject *name = borrowed ? cell->name : get(load, F_NAME);
            if (!name) goto error;
            int warm = sticky_apart ? same_name(name, sticky_apart) : 0;
            if (!warm) warm = holds(&f, name);
            if (warm) {
                if (!borrowed) Py_DECREF(name);
                if (warm < 0) goto error;
                continue; /* a warm candidate, weighed above */
            }
            double cost = (double)cold + load_cost * v.weight;
            r = offer(&b, cost, name, load);
            if (!borrowed) Py_DECREF(name);
            if (r) goto done;
            r = FALLBACK;
            wanted -= 1;
            if (!wanted) break;
        }
    }
    PyObject *l1 = b.load[0], *l2 = b.load[1], *l3 = b.load[2]; /* owned by b */
    if (!l1) {
        /* No key, or a long run of full replicas on the ring: the least loaded one. */
        PyObject *load = NULL;
        int at_top = least_at_top(fleet, usable, &least, &load);
        if (at_top < 0) goto error;
        if (at_top) {
            b.load[0] = l1 = load;
            goto have_first;
        }
        least = PyObject_CallMethodNoArgs(fleet, least_loaded_str);
        if (!least) goto error;
        if (least == Py_None) {
            *out = PyList_New(1);
            if (!*out) goto error;
            Py_INCREF(spill);
            PyList_SET_ITEM(*out, 0, spill);
            r = 0;
            goto done;
        }
        load = PyObject_GetItem(usable, least);
        if (!load) goto error;
        b.load[0] = l1 = load;
    }
have_first:
    first = l1;
    Py_INCREF(first);
    int sticky_first = 0;
    if (sticky_fits) {
        PyObject *name = load_name(l1);
        if (!name) goto error;
        int same = same_name(name, sticky);
        Py_DECREF(name);
        if (same < 0) goto error;
        sticky_first = !same;
    }
    if (sticky_first) {
        /* Session first: its replica holds the conversation. */
        Py_SETREF(first, PyObject_GetItem(usable, sticky));
        if (!first) goto error;
        PyObject *rest[3] = {l1 != first ? l1 : NULL, l2 != first ? l2 : NULL, l3 != first ? l3 : NULL};
        if (!rest[0]) {
            rest[0] = rest[1];
            rest[1] = rest[2];
            rest[2] = NULL;
        } else if (!rest[1]) {
            rest[1] = rest[2];
            rest[2] = NULL;
        }
        l1 = rest[0], l2 = rest[1], l3 = rest[2];
    } else {
        l1 = l2, l2 = l3, l3 = NULL;
    }
    PyObject *name = load_name(first);
    if (!name) goto error;
    int which = F_AS_COLD;
    int same = sticky ? same_name(name, sticky) : 0;
    if (same > 0) {
        which = F_AS_STICKY;
    } else if (same == 0 && f.common) {
        which = F_AS_PREFIX_HIT;
    } else if (same == 0) {
        int in = holds(&f, name);
        which = in > 0 ? F_AS_PREFIX_HIT : F_AS_COLD;
        if (in < 0) same = -1;
    }
    Py_DECREF(name);
    if (same < 0) goto error;
    PyObject *chosen[5];
    int n = 0;
    if (!(chosen[n++] = get(first, which))) goto error;
    PyObject *rest[3] = {l1, l2, l3};
    for (int i = 0; i < 3 && rest[i] && knobs.fallbacks > i; i++) {
        if (!(chosen[n] = get(rest[i], F_AS_COLD))) {
            while (n) Py_DECREF(chosen[--n]);
            goto error;
        }
        n++;
    }
    Py_INCREF(spill);
    chosen[n++] = spill;
    *out = PyList_New(n);
    if (!*out) {
        while (n) Py_DECREF(chosen[--n]);
        goto error;
    }
    for (int i = 0; i < n; i++) PyList_SET_ITEM(*out, i, chosen[i]);
    r = 0;
    goto done;
error:
    r = -1;
done:
    found_clear(&f);
    for (int i = 0; i < 3; i++) Py_XDECREF(b.load[i]);
    Py_XDECREF(usable);
    Py_XDECREF(placements);
    Py_XDECREF(hashes);
    Py_XDECREF(hint);
    Py_XDECREF(session);
    Py_XDECREF(ring);
    Py_XDECREF(walk);
    Py_XDECREF(table);
    Py_XDECREF(least);
    Py_XDECREF(first);
    Py_XDECREF(tmp);
    Py_XDECREF(key);
    return r;
}

/* ---- the claim's update (PlacementMemory.record) --------------------------------------- */

/* router/placement.py's PlacementMemory.record, for a memory of the exact types
 * configure_record named: the same reads and writes in the same order, so the two
 * memories end up identical (a PrefixMap's generations; the dict generations, their
 * insertion order and the retiring one's popitems; the ids). An entry is an int of at
 * most 128 bits here (fanout x id_bits holder bits below the spread count);
 * tests/test_record_twin.py compares the two after every step. */

/* u128 and u128_to_long: router/_prefix_map.h. */


static PyObject *memory_type;      /* router.placement.PlacementMemory */
static PyObject *generations_type; /* router.placement._TwoGenerations */
static int record_id_bits;         /* router.placement.ID_BITS */
static PyObject *popitem_str, *record_str, *id_str;

/* A non-negative int below 2**128: 0, FALLBACK (anything else), -1 on error. */
static inline int long_to_u128(PyObject *v, u128 *out) {
#if PY_VERSION_HEX < 0x030C0000
    /* CPython 3.11's int: ob_size signed digits of PyLong_SHIFT bits, read directly (the
     * conversion below costs a few hundred instructions per entry). */
    if (PyLong_CheckExact(v)) {
        Py_ssize_t size = Py_SIZE(v);
        if (size >= 0 && (size_t)size * PyLong_SHIFT <= 128 + PyLong_SHIFT) {
            const digit *d = ((PyLongObject *)v)->ob_digit;
            u128 x = 0;
            for (Py_ssize_t i = size - 1; i >= 0; i--) {
                if (x >> (128 - PyLong_SHIFT)) return FALLBACK; /* 2**128 or more */
                x = x << PyLong_SHIFT | d[i];
            }
            *out = x;
            return 0;
        }
        if (size < 0) return FALLBACK;
    }
#endif
    uint64_t words[2];
    int r = int_words(v, words, 2);
    if (r) return r;
    *out = (u128)words[1] << 64 | words[0];
    return 0;
}


/* Writes the counters back (after every call that read them, an error's too: the dicts
 * changed as far as the call got), then clears g; -1 if the write failed. */
static int gens_done(Gens *g) {
    int r = 0;
    if (g->obj && g->changed) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback); /* the call's own error, if any, wins */
        PyObject *size = PyLong_FromSsize_t(g->size), *at = PyLong_FromSsize_t(g->retiring_at);
        if (!size || !at || set(g->obj, F_GEN_SIZE, size) < 0 || set(g->obj, F_RETIRING_AT, at) < 0) r = -1;
        Py_XDECREF(size);
        Py_XDECREF(at);
        if (type) {
            PyErr_Restore(type, value, traceback);
            r = 0;
        }
    }
    gens_clear(g);
    return r;
}

/* 0, FALLBACK (not a _TwoGenerations of plain dicts), -1 on error (g cleared on both). */
static int gens_read(PyObject *obj, Gens *g) {
    long long capacity;
    int r;
    memset(g, 0, sizeof *g);
    if ((PyObject *)Py_TYPE(obj) != generations_type) return FALLBACK;
    Py_INCREF(obj);
    g->obj = obj;
    if (!(g->new = get(obj, F_NEW)) || !(g->old = get(obj, F_OLD)) || !(g->retiring = get(obj, F_RETIRING))) {
        gens_clear(g);
        return -1;
    }
    long long size, at;
    if ((r = get_int(obj, F_CAPACITY, &capacity)) || (r = get_int(obj, F_GEN_SIZE, &size)) ||
        (r = get_int(obj, F_RETIRING_AT, &at))) {
        gens_clear(g);
        return r;
    }
    /* Three generations of one shard count. Their shards are checked as they are used
     * (shard_of): reading every one's type here, 192 cold lines, cost a claim ~2 us. */
    if (!generations_match(g->new, g->old) || !generations_match(g->new, g->retiring) || capacity < 0 ||
        size < 0 || at < 0 || at > PyTuple_GET_SIZE(g->new)) {
        gens_clear(g);
        return FALLBACK;
    }
    g->half = (Py_ssize_t)(capacity / 2);
    g->size = (Py_ssize_t)size;
    g->retiring_at = (Py_ssize_t)at;
    return 0;
}

/* A generation of n empty dicts (the Python's _shards()). */
static PyObject *fresh_generation(Py_ssize_t n) {
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; t && i < n; i++) {
        PyObject *d = PyDict_New();
        if (!d) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, i, d);
    }
    return t;
}

/* _TwoGenerations.put, step for step (popitem is the dict's own: the same entries go);
 * hash is key's. */
static int gens_put(Gens *g, PyObject *key, Py_hash_t hash, PyObject *value) {
    const Py_ssize_t n = PyTuple_GET_SIZE(g->new);
    PyObject *shard = shard_of(g->new, shard_index(g->new, hash));
    if (!shard) return -1;
    Py_ssize_t before = PyDict_GET_SIZE(shard);
    if (DICT_SET(shard, key, value, hash) < 0) return -1;
    g->size += PyDict_GET_SIZE(shard) - before;
    g->changed = 1;
    for (int i = 0; i < 2; i++) { /* free two of the retiring generation's entries */
        PyObject *rest = NULL;
        while (g->retiring_at < n) {
            if (!(rest = shard_of(g->retiring, g->retiring_at))) return -1;
            if (PyDict_GET_SIZE(rest)) break;
            g->retiring_at++;
        }
        if (g->retiring_at == n) break;
        PyObject *item = PyObject_CallMethodNoArgs(rest, popitem_str);
        if (!item) return -1;
        Py_DECREF(item);
    }
    if (g->size >= g->half) {
        for (Py_ssize_t i = 0; i < n; i++) { /* empty by now, as the Python's comment says */
            PyObject *rest = shard_of(g->retiring, i);
            if (!rest) return -1;
            PyDict_Clear(rest);
        }
        PyObject *fresh = fresh_generation(n);
        if (!fresh) return -1;
        /* self._retiring = self.old; self._retiring_at = 0; self.old = self.new;
         * self.new = _shards(); self._size = 0 */
        if (set(g->obj, F_RETIRING, g->old) < 0 || set(g->obj, F_OLD, g->new) < 0 ||
            set(g->obj, F_NEW, fresh) < 0) {
            Py_DECREF(fresh);
            return -1;
        }
        Py_SETREF(g->retiring, g->old);
        g->old = g->new;
        g->new = fresh;
        g->retiring_at = 0;
        g->size = 0;
    }
    return 0;
}

/* The holder list after `rid` served the prefix: this replica first, then the others in
 * their order, at most fanout (PlacementMemory.record's loop). */
static inline u128 holders_after(u128 holders, u128 rid, u128 id_mask, int bits, long long fanout) {
    if ((holders & id_mask) == rid) return holders;
    u128 rest = holders, out = rid;
    int at = bits;
    long long count = 1;
    while (rest && count < fanout) {
        u128 other = rest & id_mask;
        if (other != rid) {
            out |= other << at;
            at += bits;
            count++;
        }
        rest >>= bits;
    }
    return out;
}

/* One prefix of record_core into a PrefixMap: its entry read from the newer generation or
 * the older, the new one written when it differs or is only in the older (the Python
 * method's `entry != value or not in_newer(h)`). h is a key the map holds (checked). */
static int record_in_map(PrefixMap *map, PyObject *h, u128 rid, u128 id_mask, u128 holder_mask, int bits,
                         long long fanout, long long full_shift, long long shift, Py_ssize_t *shared,
                         int *spreading) {
    uint64_t key1 = 0;
    if (!map_key(h, &key1)) { /* cannot happen: record_core checked every key */
        PyErr_SetString(PyExc_SystemError, "record: a prefix hash the map cannot hold");
        return -1;
    }
    const MapSlot *s = map_find(&map->newer, key1);
    int in_new = s != NULL;
    if (!s && map->older_size) s = map_find(&map->older, key1);
    u128 held = s ? (u128)s->hi << 64 | s->lo : 0;
    u128 holders = s ? holders_after(held & holder_mask, rid, id_mask, bits, fanout) : rid;
    if (*spreading) {
        if (holders >> full_shift)
            (*shared)++;
        else
            *spreading = 0;
    }
    u128 value = holders | (u128)*shared << shift;
    if (!s || held != value || !in_new) map_put(map, key1, (uint64_t)value, (uint64_t)(value >> 64));
    return 0;
}

/* PlacementMemory.record: 0, FALLBACK (nothing changed yet), or -1 on error. */
static int record_core(PyObject *memory, PyObject *replica, PyObject *hashes, PyObject *session) {
    Gens g = {0}, sg = {0};
    PyObject *prefixes = NULL, *sessions = NULL, *ids = NULL, *rid_obj = NULL, *mask_obj = NULL,
             *entry = NULL, *value_obj = NULL;
    long long fanout, shift, full_shift, rid;
    int r;
    /* Inputs mirrored here; for anything else the Python method runs (before any change). */
    if (!memory_type || (PyObject *)Py_TYPE(memory) != memory_type) return FALLBACK;
    if (!PyTuple_CheckExact(hashes) && !PyList_CheckExact(hashes)) return FALLBACK;
    if (!PyLong_CheckExact(session)) return FALLBACK;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(hashes);
    for (Py_ssize_t i = 0; i < n; i++) /* keys whose hashing and == run no Python code */
        if (!PyLong_CheckExact(PySequence_Fast_ITEMS(hashes)[i])) return FALLBACK;
    if ((r = get_int(memory, F_FANOUT, &fanout)) || (r = get_int(memory, F_SHARED_SHIFT, &shift)) ||
        (r = get_int(memory, F_FULL_SHIFT, &full_shift)))
        return r;
    const int bits = record_id_bits;
    /* Every value this call writes fits 128 bits: holders of fanout x bits, the spread
     * count (at most n) above bit `shift`. */
    if (fanout < 1 || fanout * bits > 128 || shift < 0 || shift > 127 || full_shift < 0 ||
        full_shift > 127 || (shift > 64 && n >= ((Py_ssize_t)1 << (128 - shift))))
        return FALLBACK;
    int has_session = PyObject_IsTrue(session); /* an exact int: no code runs */
    r = FALLBACK;
    if (!(prefixes = get(memory, F_PREFIXES))) goto error;
    PrefixMap *map = Py_TYPE(prefixes) == &PrefixMapType ? (PrefixMap *)prefixes : NULL;
    if (!map && (PyObject *)Py_TYPE(prefixes) != generations_type) goto done;
    if (map) {
        /* A key the map refuses (the Python method's put raises), or a map not initialised:
         * the Python method's, before any change. Each key's lines are asked of memory as
         * it is read: a request's hashes are unrelated, so their cache misses overlap
         * instead of queueing one after another in the loop below. */
        if (!map->newer.slots) goto done;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t key1;
            if (!map_key(PySequence_Fast_ITEMS(hashes)[i], &key1)) goto done;
            map_prefetch(map, key1);
        }
    }
    /* The session's map: a PrefixMap, whose key is checked now (it refuses others, and
     * the Python method raises before any change); dict generations, read after _id (a
     * reset clears them). */
    PrefixMap *session_map = NULL;
    uint64_t session_key = 0;
    if (has_session) {
        if (!(sessions = get(memory, F_SESSIONS))) goto error;
        if (Py_TYPE(sessions) == &PrefixMapType) {
            session_map = (PrefixMap *)sessions;
            if (!session_map->newer.slots || !map_key(session, &session_key)) goto done;
        } else if ((PyObject *)Py_TYPE(sessions) != generations_type) {
            goto done;
        }
    }
    if (!(ids = get(memory, F_IDS))) goto error;
    if (!PyDict_CheckExact(ids)) goto done;
    /* self._id(replica): a known name is one dict read; a new one (and the reset after a
     * million names) is the Python method's job. */
    rid_obj = PyDict_GetItemWithError(ids, replica);
    if (rid_obj) {
        Py_INCREF(rid_obj);
    } else {
        if (PyErr_Occurred()) goto error;
        if (!(rid_obj = PyObject_CallMethodOneArg(memory, id_str, replica))) goto error;
    }
    /* From here a FALLBACK is still exact: the Python method's own _id finds the same id. */
    if ((r = as_int(rid_obj, &rid))) goto done;
    r = FALLBACK;
    const u128 id_mask = ((u128)1 << bits) - 1;
    if (rid < 1 || (u128)rid > id_mask) goto done;
    /* Read after _id: a reset replaces the generations' dicts. */
    if (!map && (r = gens_read(prefixes, &g))) goto done;
    if (has_session && !session_map && (r = gens_read(sessions, &sg))) goto done;
    r = FALLBACK;
    const u128 holder_mask = ((u128)1 << shift) - 1;
    Py_ssize_t shared = 0;
    int spreading = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PySequence_Fast_ITEMS(hashes)[i];
        if (map) {
            if (record_in_map(map, h, (u128)rid, id_mask, holder_mask, bits, fanout, full_shift, shift,
                              &shared, &spreading) < 0)
                goto error;
            continue;
        }
        /* entry = prefixes.get(h); whether h is in new answers `h not in new` below */
        Py_hash_t hash = PyObject_Hash(h); /* an exact int's: cannot fail */
        int in_new = 1;
        Py_ssize_t at = shard_index(g.new, hash);
        PyObject *in_new_shard = shard_of(g.new, at), *in_old_shard = in_new_shard ? shard_of(g.old, at) : NULL;
        if (!in_old_shard) goto error;
        PyObject *got = DICT_GET(in_new_shard, h, hash);
        if (!got) {
            if (PyErr_Occurred()) goto error;
            in_new = 0;
            got = DICT_GET(in_old_shard, h, hash);
            if (!got && PyErr_Occurred()) goto error;
        }
        u128 holders, held = 0;
        int exact = 0; /* the entry read as `held` */
        if (!got) {
            holders = (u128)rid;
        } else {
            Py_INCREF(got);
            entry = got;
            int c = long_to_u128(entry, &held);
            if (c < 0) goto error;
            if (c == 0) {
                exact = 1;
                holders = held & holder_mask;
            } else {
                /* Wider than 128 bits (a spread count past 2**(128 - shift), written by the
                 * Python method) or not an int: Python's own `entry & holder_mask`. */
                if (!mask_obj && !(mask_obj = u128_to_long(holder_mask))) goto error;
                PyObject *masked = PyNumber_And(entry, mask_obj);
                if (!masked) goto error;
                c = long_to_u128(masked, &holders);
                Py_DECREF(masked);
                if (c) {
                    if (c == FALLBACK)
                        PyErr_SetString(PyExc_TypeError, "placement entry & holder mask is not a non-negative int");
                    goto error;
                }
            }
            holders = holders_after(holders, (u128)rid, id_mask, bits, fanout);
        }
        if (spreading) {
            if (holders >> full_shift)
                shared++;
            else
                spreading = 0;
        }
        u128 value = holders | (u128)shared << shift;
        /* if entry != value or h not in new: prefixes.put(h, value) */
        int put = 1;
        if (entry) {
            if (exact) {
                put = held != value;
            } else {
                if (!(value_obj = u128_to_long(value))) goto error;
                if ((put = PyObject_RichCompareBool(entry, value_obj, Py_NE)) < 0) goto error;
            }
            put = put || !in_new;
            Py_CLEAR(entry);
        }
        if (put) {
            if (!value_obj && !(value_obj = u128_to_long(value))) goto error;
            if (gens_put(&g, h, hash, value_obj) < 0) goto error;
        }
        Py_CLEAR(value_obj);
    }
    if (has_session) { /* self._sessions.put(session_hash, rid) */
        if (session_map)
            map_put(session_map, session_key, (uint64_t)rid, 0);
        else if (gens_put(&sg, session, PyObject_Hash(session), rid_obj) < 0)
            goto error;
    }
    r = 0;
    goto done;
error:
    r = -1;
done:
    if (gens_done(&g) < 0) r = -1;
    if (gens_done(&sg) < 0) r = -1;
    Py_XDECREF(prefixes);
    Py_XDECREF(sessions);
    Py_XDECREF(ids);
    Py_XDECREF(rid_obj);
    Py_XDECREF(mask_obj);
    Py_XDECREF(entry);
    Py_XDECREF(value_obj);
    return r;
}

/* ---- the module's functions ----------------------------------------------------------- */

static int configured(void) {
    if (reference) return 1;
    PyErr_SetString(PyExc_RuntimeError, "router._choice: configure() was not called");
    return 0;
}

static PyObject *py_choose_affinity(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames) {
    PyObject *ctx, *fleet, *settings = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 2 || nargs + nkw > 3 ||
        (nkw && !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)))) {
        PyErr_SetString(PyExc_TypeError, "choose_affinity(ctx, fleet, settings=DEFAULT_SETTINGS)");
        return NULL;
    }
    if (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "settings") != 0) {
        PyErr_Format(PyExc_TypeError, "choose_affinity() got an unexpected keyword argument '%U'",
                     PyTuple_GET_ITEM(kwnames, 0));
        return NULL;
    }
    if (!configured()) return NULL;
    ctx = args[0];
    fleet = args[1];
    settings = nargs + nkw == 3 ? args[2] : default_settings;
    PyObject *out;
    int r = choose_core(ctx, fleet, settings, &out);
    if (r == 0) return out;
    if (r < 0) return NULL;
    fallbacks++;
    return PyObject_CallFunctionObjArgs(reference, ctx, fleet, settings, NULL);
}

static PyObject *py_find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static PyObject *zero;
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "find(memory, hashes, hint=0, session_hash=0)");
        return NULL;
    }
    if (!configured()) return NULL;
    if (!zero && !(zero = PyLong_FromLong(0))) return NULL;
    PyObject *hint = nargs > 2 ? args[2] : zero, *session = nargs > 3 ? args[3] : zero;
    Found f;
    int r = find_core(args[0], args[1], hint, session, &f);
    if (r < 0) return NULL;
    if (r == FALLBACK) {
        fallbacks++;
        return PyObject_CallFunctionObjArgs(find_reference, args[0], args[1], hint, session, NULL);
    }
    PyObject *holders = PyTuple_New(f.count);
    if (!holders) {
        found_clear(&f);
        return NULL;
    }
    for (int i = 0; i < f.count; i++) {
        PyTuple_SET_ITEM(holders, i, f.holders[i]);
        f.holders[i] = NULL;
    }
    f.count = 0;
    PyObject *out = Py_BuildValue("(nnNO)", f.matched, f.common, holders, f.sticky ? f.sticky : Py_None);
    found_clear(&f);
    return out;
}

static PyObject *py_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static PyObject *zero;
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "record(memory, replica, prefix_hashes, session_hash=0)");
        return NULL;
    }
    if (!zero && !(zero = PyLong_FromLong(0))) return NULL;
    PyObject *session = nargs > 3 ? args[3] : zero;
    int r = record_core(args[0], args[1], args[2], session);
    if (r == 0) Py_RETURN_NONE;
    if (r < 0) return NULL;
    fallbacks++;
    return PyObject_CallMethodObjArgs(args[0], record_str, args[1], args[2], session, NULL);
}

static PyObject *py_configure_record(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"memory_type", "generations_type", "id_bits", NULL};
    PyObject *memory, *generations;
    int bits_per_id;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!i", kwlist, &PyType_Type, &memory, &PyType_Type,
                                     &generations, &bits_per_id))
        return NULL;
    if (bits_per_id < 1 || bits_per_id > 64) {
        PyErr_SetString(PyExc_ValueError, "id_bits must be 1..64");
        return NULL;
    }
    Py_INCREF(memory);
    Py_XSETREF(memory_type, memory);
    Py_INCREF(generations);
    Py_XSETREF(generations_type, generations);
    record_id_bits = bits_per_id;
    Py_RETURN_NONE;
}

static PyObject *py_configure(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"reference", "find_reference", "default_settings", "spill",
                             "block_tokens", "id_bits", "least_loaded", NULL};
    PyObject *ref, *find_ref, *defaults, *spill_entry, *least_ref = NULL;
    long long tokens;
    int bits_per_id;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOLi|O", kwlist, &ref, &find_ref, &defaults,
                                     &spill_entry, &tokens, &bits_per_id, &least_ref))
        return NULL;
    if (!PyCallable_Check(ref) || !PyCallable_Check(find_ref)) {
        PyErr_SetString(PyExc_TypeError, "reference and find_reference must be callable");
        return NULL;
    }
    if (tokens < 1 || tokens > (1 << 20) || bits_per_id < 1 || bits_per_id > 24) {
        PyErr_SetString(PyExc_ValueError, "block_tokens must be 1..2**20 and id_bits 1..24");
        return NULL;
    }
    Py_INCREF(ref);
    Py_XSETREF(reference, ref);
    Py_INCREF(find_ref);
    Py_XSETREF(find_reference, find_ref);
    Py_INCREF(defaults);
    Py_XSETREF(default_settings, defaults);
    Py_INCREF(spill_entry);
    Py_XSETREF(spill, spill_entry);
    Py_XINCREF(least_ref);
    Py_XSETREF(least_loaded_reference, least_ref);
    block_tokens = tokens;
    id_bits = bits_per_id;
    Py_RETURN_NONE;
}

/* Which attribute reads take the offset path for the last type each met (for tests and
 * the benchmark: a read that fell back to getattr would still be right, only slower). */
static PyObject *py_fast_fields(PyObject *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (int i = 0; i < F_COUNT; i++) {
        if (!fields[i].type) continue;
        PyObject *key = PyUnicode_FromFormat("%s.%s", fields[i].type->tp_name, fields[i].name);
        if (!key || PyDict_SetItem(out, key, fields[i].offset >= 0 ? Py_True : Py_False) < 0) {
            Py_XDECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(key);
    }
    /* A load that is a LoadCell: its five attributes are read from the cell, not by slot. */
    for (int i = 0; cell_type_seen && i < CELL_ATTRIBUTES; i++) {
        PyObject *key = PyUnicode_FromFormat("%s.%s", cell_type_seen->tp_name, fields[cell_attributes[i]].name);
        if (!key || PyDict_SetItem(out, key, cell_type_plain ? Py_True : Py_False) < 0) {
            Py_XDECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(key);
    }
    return out;
}

static PyObject *py_fallback_count(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(fallbacks);
}

static PyMethodDef methods[] = {
    {"choose_affinity", (PyCFunction)(void (*)(void))py_choose_affinity, METH_FASTCALL | METH_KEYWORDS,
     "choose_affinity(ctx, fleet, settings=DEFAULT_SETTINGS) -> candidates\n\n"
     "router.replicas.choose_affinity_python in C: the same replicas in the same order."},
    {"find", (PyCFunction)(void (*)(void))py_find, METH_FASTCALL,
     "find(memory, hashes, hint=0, session_hash=0) -> (matched, common, holders, sticky)\n\n"
     "router.placement.PlacementMemory.find in C."},
    {"record", (PyCFunction)(void (*)(void))py_record, METH_FASTCALL,
     "record(memory, replica, prefix_hashes, session_hash=0) -> None\n\n"
     "router.placement.PlacementMemory.record in C: the same changes to the same memory."},
    {"configure_record", (PyCFunction)(void (*)(void))py_configure_record, METH_VARARGS | METH_KEYWORDS,
     "configure_record(memory_type, generations_type, id_bits): the types record mirrors."},
    {"configure", (PyCFunction)(void (*)(void))py_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(reference, find_reference, default_settings, spill, block_tokens, id_bits, least_loaded=None)"},
    {"fast_fields", py_fast_fields, METH_NOARGS,
     "{'Type.attribute': read at its slot's offset, or from a LoadCell} for the attributes read so far."},
    {"fallback_count", py_fallback_count, METH_NOARGS,
     "Calls so far that the Python reference answered (inputs this twin does not mirror)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router._choice",
    "The C twin of router.replicas.choose_affinity (see router/_choice.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__choice(void) {
    for (int i = 0; i < F_COUNT; i++) {
        fields[i].str = PyUnicode_InternFromString(fields[i].name);
        if (!fields[i].str) return NULL;
        fields[i].offset = -1;
    }
    if (!(successors_str = PyUnicode_InternFromString("successors")) ||
        !(least_loaded_str = PyUnicode_InternFromString("least_loaded")) ||
        !(popitem_str = PyUnicode_InternFromString("popitem")) ||
        !(record_str = PyUnicode_InternFromString("record")) || !(id_str = PyUnicode_InternFromString("_id")))
        return NULL;
    if (PyType_Ready(&LoadCellType) < 0 || PyType_Ready(&LoadOrderType) < 0 || PyType_Ready(&PrefixMapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&LoadCellType);
    if (PyModule_AddObject(m, "LoadCell", (PyObject *)&LoadCellType) < 0) {
        Py_DECREF(&LoadCellType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LoadOrderType);
    if (PyModule_AddObject(m, "LoadOrder", (PyObject *)&LoadOrderType) < 0) {
        Py_DECREF(&LoadOrderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "PrefixMap", (PyObject *)&PrefixMapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
