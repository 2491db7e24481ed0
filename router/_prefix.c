/*
 * router._prefix: the C twin of router/context.py's PythonPrefixMemory, the memory behind
 * the repeatedPrefix signal (an optional accelerator, built by setup.py when a C compiler
 * is there).
 *
 *   PrefixMemory(capacity=65536)
 *     .seen_depth(hashes) -> how many leading hashes either generation holds
 *     .remember(hashes)   -> puts every hash in the current generation, then rolls over
 *     .see(hashes)        -> seen_depth, then remember: the context's step, one call
 *     .generations()      -> for tests: (current, previous) as frozensets of hashes
 *
 * Why: the Python memory is two generations of 64 dicts. For an ~8k-token prompt (16
 * chained hashes) one see() cost ~13.5k instructions and ~5 us, even with its loop in C
 * (router/_scan.c's see_prefixes, now gone): a dict lookup in each generation and a dict insert per
 * hash, each a cache miss or two once the memory holds tens of thousands of hashes, and
 * now and then a dict doubling. Here a generation is one flat array of 64-bit keys (open
 * addressing, linear probing, at most half full at its nominal size), allocated once, so
 * a hash costs a multiply and one cache line per generation, and every line a request
 * needs is prefetched as its hash is read, before the first probe waits for memory:
 * ~1.5k instructions and ~1 us for the 16 hashes (the commit that made this module has
 * the measurement).
 *
 * The semantics are the Python's exactly (tests/test_prefix_memory.py drives both with
 * random calls and compares every answer and both generations): a generation rolls over
 * when it holds half the capacity, checked once after a call's hashes are all in, so one
 * call may overfill it (the array grows then, which a request of at most 64 hashes never
 * makes it do at the default capacity). Bad hashes (not ints in [0, 2**63)) raise the
 * same errors as the Python, before anything changes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MIN_SLOTS 8                     /* the smallest generation array */
#define STACK_KEYS 64                   /* router.context.MAX_PREFIX_BLOCKS: no malloc up to it */
#define MAX_CAPACITY (1LL << 32)        /* router.context.PREFIX_MEMORY_MAX_CAPACITY */
#define DEFAULT_CAPACITY 65536
#define GOLDEN 0x9E3779B97F4A7C15ULL    /* 2**64 / phi: Fibonacci hashing's multiplier */

/* One generation: keys are hash + 1, so a hash of 0 is a key and 0 marks an empty slot. */
typedef struct {
    uint64_t *slots;
    uint64_t mask;   /* slot count - 1 (a power of two) */
    int shift;       /* 64 - log2(slot count) */
    Py_ssize_t size; /* keys held */
} Generation;

typedef struct {
    PyObject_HEAD
    Generation current, previous;
    Py_ssize_t half; /* the current generation rolls over when it holds this many */
} PrefixMemory;

/* A key's first slot: the top bits of key * GOLDEN. The hashes are xxh3 bits already, but
 * wire records carry other routers' hashes and tests use small ints: the multiply spreads
 * any keys, so a run of neighbours never piles up in one stretch of the array. */
static inline uint64_t first_slot(const Generation *g, uint64_t key) {
    return (key * GOLDEN) >> g->shift;
}

static inline int holds(const Generation *g, uint64_t key) {
    for (uint64_t i = first_slot(g, key);; i = (i + 1) & g->mask) {
        uint64_t k = g->slots[i];
        if (k == key) return 1;
        if (k == 0) return 0;
    }
}

/* Puts key in g; returns 1 when it was new there. g has room (see make_room). */
static inline int put(Generation *g, uint64_t key) {
    uint64_t i = first_slot(g, key);
    for (;; i = (i + 1) & g->mask) {
        uint64_t k = g->slots[i];
        if (k == key) return 0;
        if (k == 0) break;
    }
    g->slots[i] = key;
    g->size++;
    return 1;
}

/* A zeroed array of at least `wanted` slots (a power of two, at least MIN_SLOTS). */
static int allocate(Generation *g, Py_ssize_t wanted) {
    uint64_t count = MIN_SLOTS;
    int bits = 3;
    while (count < (uint64_t)wanted) {
        count <<= 1;
        bits++;
    }
    uint64_t *slots = PyMem_Malloc(count * sizeof(uint64_t));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    /* Zeroed by writing, not calloc: a large calloc is fresh pages from the kernel, each
     * faulted in (read, then again on write) the first time a request's hash lands on it,
     * ~100 µs of page faults in each of a new router's first requests. Written here, the
     * pages are the router's before its first request. */
    memset(slots, 0, count * sizeof(uint64_t));
    g->slots = slots;
    g->mask = count - 1;
    g->shift = 64 - bits;
    g->size = 0;
    return 0;
}

/* Makes room in g for `more` keys, keeping it at most three quarters full so every probe
 * meets an empty slot soon. Only a call of more hashes than a request holds (or a tiny
 * capacity) gets here past the first test; the array then keeps its new size. */
static int make_room(Generation *g, Py_ssize_t more) {
    Py_ssize_t needed = g->size + more;
    uint64_t count = g->mask + 1;
    if ((uint64_t)needed <= count - count / 4) return 0;
    Generation bigger;
    if (allocate(&bigger, 2 * needed) < 0) return -1;
    for (uint64_t i = 0; i < count; i++)
        if (g->slots[i]) put(&bigger, g->slots[i]);
    PyMem_Free(g->slots);
    *g = bigger;
    return 0;
}

/* When the current generation holds half the capacity it becomes the previous one and
 * the old previous one is cleared to be the new current: no allocation, one memset (of
 * 512 KB at the default capacity, once every 32,768 new hashes). */
static void roll_over(PrefixMemory *self) {
    if (self->current.size < self->half) return;
    Generation old = self->previous;
    self->previous = self->current;
    memset(old.slots, 0, (old.mask + 1) * sizeof(uint64_t));
    old.size = 0;
    self->current = old;
}

/* ---- the hashes of one call ---------------------------------------------------------- */

/* A call's hashes as keys: `keys` points at `stack` for up to STACK_KEYS of them. */
typedef struct {
    uint64_t stack[STACK_KEYS];
    uint64_t *keys;
    Py_ssize_t count;
} Keys;

static void keys_free(Keys *k) {
    if (k->keys != k->stack) PyMem_Free(k->keys);
}

#if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
/* A hash's value read from the int's digits (CPython 3.11 keeps an int as |ob_size| 30-bit
 * digits, the sign as ob_size's): ~10 instructions where PyLong_AsLongLongAndOverflow takes
 * ~60, for a request's 16 hashes a third of this module's work. 0 when h is not a plain
 * int of at most 63 bits, and the public API decides. */
static inline int read_digits(PyObject *h, uint64_t *value) {
    if (!PyLong_CheckExact(h)) return 0;
    const digit *d = ((PyLongObject *)h)->ob_digit;
    switch (Py_SIZE(h)) {
    case 0: *value = 0; return 1;
    case 1: *value = d[0]; return 1;
    case 2: *value = d[0] | (uint64_t)d[1] << 30; return 1;
    case 3:
        if (d[2] >> 3) return 0; /* 2**63 or more */
        *value = d[0] | (uint64_t)d[1] << 30 | (uint64_t)d[2] << 60;
        return 1;
    default: return 0;
    }
}
#else
static inline int read_digits(PyObject *h, uint64_t *value) {
    (void)h, (void)value;
    return 0;
}
#endif

/* A hash's value by the public API, or the error naming what is wrong with hash i. */
static int read_public(PyObject *h, Py_ssize_t i, uint64_t *value) {
    if (!PyLong_Check(h)) {
        PyErr_Format(PyExc_TypeError, "prefix hash %zd is a %.100s, not an int", i, Py_TYPE(h)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(h, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 0) {
        PyErr_Format(PyExc_ValueError, "prefix hash %zd is %R, outside [0, 2**63)", i, h);
        return -1;
    }
    *value = (uint64_t)v;
    return 0;
}

/* Starts loading the cache line a probe of key in g reads first. */
static inline void prefetch(const Generation *g, uint64_t key) {
    __builtin_prefetch(&g->slots[first_slot(g, key)]);
}

/* Reads `hashes` (a tuple or a list) into k. Raises as router/context.py's
 * check_prefix_hashes does, naming the first hash that is not an int in [0, 2**63).
 * Each key's first slot in `first` (and in `second`, unless NULL) is prefetched as soon
 * as the key is known: a request's hashes are unrelated, so their cache misses overlap
 * one another and the reading of the rest, instead of queueing at the probes. */
static int keys_read(Keys *k, PyObject *hashes, const Generation *first, const Generation *second) {
    if (!PyTuple_Check(hashes) && !PyList_Check(hashes)) {
        PyErr_Format(PyExc_TypeError, "prefix hashes must be a tuple or list of ints, not a %.100s",
                     Py_TYPE(hashes)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Fast(hashes, ""); /* the tuple or list itself, not a copy */
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    k->keys = k->stack;
    k->count = n;
    if (n > STACK_KEYS && !(k->keys = PyMem_Malloc(n * sizeof(uint64_t)))) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = items[i];
        uint64_t value;
        if (!read_digits(h, &value) && read_public(h, i, &value) < 0) goto fail;
        k->keys[i] = value + 1;
        prefetch(first, value + 1);
        if (second) prefetch(second, value + 1);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    keys_free(k);
    return -1;
}

static Py_ssize_t depth_seen(const PrefixMemory *self, const Keys *k) {
    Py_ssize_t depth = 0;
    while (depth < k->count && (holds(&self->current, k->keys[depth]) || holds(&self->previous, k->keys[depth])))
        depth++;
    return depth;
}

/* Every key into the current generation, then the roll-over check: PythonPrefixMemory's
 * remember, which checks once per call (an empty call changes nothing). */
static int put_all(PrefixMemory *self, const Keys *k) {
    if (k->count == 0) return 0;
    if (make_room(&self->current, k->count) < 0) return -1;
    for (Py_ssize_t i = 0; i < k->count; i++) put(&self->current, k->keys[i]);
    roll_over(self);
    return 0;
}

/* ---- the type -------------------------------------------------------------------------- */

static void PrefixMemory_dealloc(PrefixMemory *self) {
    PyMem_Free(self->current.slots);
    PyMem_Free(self->previous.slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PrefixMemory(capacity=65536): two generations of max(capacity // 2, 1) hashes, each an
 * array of at least twice that many slots, allocated here once. */
static int PrefixMemory_init(PrefixMemory *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", NULL};
    PyObject *capacity_arg = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:PrefixMemory", kwlist, &capacity_arg)) return -1;
    long long capacity = DEFAULT_CAPACITY;
    if (capacity_arg) {
        if (!PyLong_Check(capacity_arg)) {
            PyErr_Format(PyExc_TypeError, "capacity is a %.100s, not an int", Py_TYPE(capacity_arg)->tp_name);
            return -1;
        }
        int overflow;
        capacity = PyLong_AsLongLongAndOverflow(capacity_arg, &overflow);
        if (capacity == -1 && PyErr_Occurred()) return -1;
        if (overflow > 0) capacity = MAX_CAPACITY + 1;
        if (overflow < 0) capacity = 0;
    }
    if (capacity > MAX_CAPACITY) {
        PyErr_Format(PyExc_ValueError, "capacity %R: at most 2**32 hashes", capacity_arg);
        return -1;
    }
    /* Python's max(capacity // 2, 1): floor division, so any capacity under 4 gives 1. */
    Py_ssize_t half = capacity < 4 ? 1 : (Py_ssize_t)(capacity / 2);
    Generation current, previous;
    if (allocate(&current, 2 * half) < 0) return -1;
    if (allocate(&previous, 2 * half) < 0) {
        PyMem_Free(current.slots);
        return -1;
    }
    PyMem_Free(self->current.slots); /* __init__ called again: start afresh */
    PyMem_Free(self->previous.slots);
    self->current = current;
    self->previous = previous;
    self->half = half;
    return 0;
}

static PyObject *PrefixMemory_seen_depth(PrefixMemory *self, PyObject *hashes) {
    Keys k;
    if (keys_read(&k, hashes, &self->current, &self->previous) < 0) return NULL;
    Py_ssize_t depth = depth_seen(self, &k);
    keys_free(&k);
    return PyLong_FromSsize_t(depth);
}

static PyObject *PrefixMemory_remember(PrefixMemory *self, PyObject *hashes) {
    Keys k;
    if (keys_read(&k, hashes, &self->current, NULL) < 0) return NULL;
    int failed = put_all(self, &k);
    keys_free(&k);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *PrefixMemory_see(PrefixMemory *self, PyObject *hashes) {
    Keys k;
    if (keys_read(&k, hashes, &self->current, &self->previous) < 0) return NULL;
    Py_ssize_t depth = depth_seen(self, &k); /* before any put: a request's repeats are not "seen" */
    int failed = put_all(self, &k);
    keys_free(&k);
    if (failed) return NULL;
    return PyLong_FromSsize_t(depth);
}

static PyObject *frozenset_of(const Generation *g) {
    PyObject *set = PySet_New(NULL);
    if (!set) return NULL;
    for (uint64_t i = 0; i <= g->mask; i++) {
        if (!g->slots[i]) continue;
        PyObject *h = PyLong_FromUnsignedLongLong(g->slots[i] - 1);
        if (!h || PySet_Add(set, h) < 0) {
            Py_XDECREF(h);
            Py_DECREF(set);
            return NULL;
        }
        Py_DECREF(h);
    }
    PyObject *frozen = PyFrozenSet_New(set);
    Py_DECREF(set);
    return frozen;
}

static PyObject *PrefixMemory_generations(PrefixMemory *self, PyObject *unused) {
    (void)unused;
    PyObject *current = frozenset_of(&self->current);
    PyObject *previous = current ? frozenset_of(&self->previous) : NULL;
    PyObject *both = previous ? PyTuple_Pack(2, current, previous) : NULL;
    Py_XDECREF(current);
    Py_XDECREF(previous);
    return both;
}

static PyMethodDef PrefixMemory_methods[] = {
    {"seen_depth", (PyCFunction)PrefixMemory_seen_depth, METH_O,
     "seen_depth(hashes) -> how many leading hashes were seen before (the first miss ends the count)"},
    {"remember", (PyCFunction)PrefixMemory_remember, METH_O,
     "remember(hashes) -> None: puts the hashes in the current generation, then rolls over when it is full"},
    {"see", (PyCFunction)PrefixMemory_see, METH_O,
     "see(hashes) -> seen_depth(hashes), after which the hashes are remembered"},
    {"generations", (PyCFunction)PrefixMemory_generations, METH_NOARGS,
     "generations() -> (current, previous): the hashes each generation holds, as frozensets (for tests)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PrefixMemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._prefix.PrefixMemory",
    .tp_basicsize = sizeof(PrefixMemory),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Recently seen prefix hashes in two generations: router/context.py's PythonPrefixMemory in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PrefixMemory_init,
    .tp_dealloc = (destructor)PrefixMemory_dealloc,
    .tp_methods = PrefixMemory_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router._prefix",
    "The repeatedPrefix memory in C; see router/context.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__prefix(void) {
    if (PyType_Ready(&PrefixMemoryType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "PrefixMemory", (PyObject *)&PrefixMemoryType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
