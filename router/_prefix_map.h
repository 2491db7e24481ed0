/*
 * PrefixMap: the placement memory's prefix map (and its session map) in flat arrays, the
 * C storage of router/placement.py's _TwoGenerations[int] (router/_choice.c includes this;
 * its find and record read and write the arrays directly, and the module exports the type).
 *
 *   PrefixMap(capacity)
 *     .get(key) -> int or None     .put(key, value)     key in m     len(m)     .clear()
 *     .in_newer(key) -> whether the newer generation holds key (record's "h not in new")
 *     .generations() -> for tests: (newer, older) as dicts
 *
 * Why: a generation of Python dicts holds an int object for every key and every value.
 * In a router whose memory had turned over (bench/decision.py's turned-over rows), a
 * claim of an ~8k-token prompt's 16 prefixes cost ~30 us at p50 in a quiet phase (~47 in
 * a slow one) against ~10-16 in an empty memory: each insert also freed two entries of
 * the retired generation, their cold int objects a cache miss or more each, and every
 * lookup met shards of ~8k entries cold (9-16 us with this map, turned over or not). Here
 * a key is a 64-bit word in an array allocated once (at most half full, so it never
 * grows), a lookup one or two cache lines, and a forgotten generation is zeroed a couple
 * of slots at each insert.
 *
 * The semantics are _TwoGenerations' exactly (tests/test_prefix_map.py drives both with
 * random calls and compares every answer): put writes the newer generation, counting a
 * key new to it; once it holds capacity // 2 keys (capacity at least 2) it becomes the
 * older one and the older one is forgotten. Keys are ints in [0, 2**63), as prefix hashes
 * are (subjects.messages.PrefixHash); values ints in [0, 2**128). put refuses others;
 * get and `in` answer None and False for them, as a dict that never held them would.
 */
#ifndef ROUTER_PREFIX_MAP_H
#define ROUTER_PREFIX_MAP_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAP_GOLDEN 0x9E3779B97F4A7C15ULL /* 2**64 / phi: Fibonacci hashing's multiplier */
#define MAP_MIN_SLOTS 8

typedef struct {
    uint64_t key; /* the key + 1; 0: an empty slot */
    uint64_t lo, hi; /* the value's low and high 64 bits */
} MapSlot;

typedef struct {
    MapSlot *slots;
    uint64_t mask; /* slot count - 1 (a power of two) */
    int shift;     /* 64 - log2(slot count) */
} MapArray;

typedef struct {
    PyObject_HEAD
    MapArray newer, older, spare;
    Py_ssize_t half;        /* the newer generation turns over at this many keys */
    uint64_t clear_step;    /* spare slots zeroed an insert: all of them in `half` inserts */
    Py_ssize_t newer_size;  /* keys in the newer generation */
    Py_ssize_t older_size;  /* keys in the older one (0: not read at all) */
    uint64_t cleared;       /* spare slots [0, cleared) are zero */
} PrefixMap;

static PyTypeObject PrefixMapType;

static inline uint64_t map_first(const MapArray *a, uint64_t key1) { return (key1 * MAP_GOLDEN) >> a->shift; }

/* The slot of key1 in a, or NULL. */
static inline const MapSlot *map_find(const MapArray *a, uint64_t key1) {
    for (uint64_t i = map_first(a, key1);; i = (i + 1) & a->mask) {
        const MapSlot *s = &a->slots[i];
        if (s->key == key1) return s;
        if (!s->key) return NULL;
    }
}

/* The key's slot in the newer generation, else in the older one, else NULL (key1 = key + 1). */
static inline const MapSlot *map_get(const PrefixMap *m, uint64_t key1) {
    const MapSlot *s = map_find(&m->newer, key1);
    if (!s && m->older_size) s = map_find(&m->older, key1);
    return s;
}

static inline void map_prefetch(const PrefixMap *m, uint64_t key1) {
    __builtin_prefetch(&m->newer.slots[map_first(&m->newer, key1)]);
    if (m->older_size) __builtin_prefetch(&m->older.slots[map_first(&m->older, key1)]);
}

/* _TwoGenerations.put: the value into the newer generation, a few spare slots zeroed,
 * then the turn over when the newer generation is full. Cannot fail. */
static inline void map_put(PrefixMap *m, uint64_t key1, uint64_t lo, uint64_t hi) {
    MapArray *a = &m->newer;
    uint64_t i = map_first(a, key1);
    for (; a->slots[i].key && a->slots[i].key != key1; i = (i + 1) & a->mask) {
    }
    MapSlot *s = &a->slots[i];
    if (!s->key) {
        s->key = key1;
        m->newer_size++;
    }
    s->lo = lo;
    s->hi = hi;
    uint64_t count = m->spare.mask + 1;
    if (m->cleared < count) {
        uint64_t n = count - m->cleared < m->clear_step ? count - m->cleared : m->clear_step;
        memset(&m->spare.slots[m->cleared], 0, n * sizeof(MapSlot));
        m->cleared += n;
    }
    if (m->newer_size >= m->half) {
        if (m->cleared < count) /* cannot happen (clear_step): a guard */
            memset(&m->spare.slots[m->cleared], 0, (count - m->cleared) * sizeof(MapSlot));
        MapArray forgotten = m->older;
        m->older = m->newer;
        m->older_size = m->newer_size;
        m->newer = m->spare;
        m->newer_size = 0;
        m->spare = forgotten;
        m->cleared = 0;
    }
}

/* ---- reading Python ints ---------------------------------------------------------------- */

/* A key as the map holds it (key + 1): 1, or 0 when `key` is not an int in [0, 2**63)
 * (no exception either way). */
static inline int map_key(PyObject *key, uint64_t *key1) {
    if (!PyLong_Check(key)) return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(key, &overflow);
    if (v == -1 && PyErr_Occurred()) { /* an int subclass's failure: not a key */
        PyErr_Clear();
        return 0;
    }
    if (overflow || v < 0) return 0;
    *key1 = (uint64_t)v + 1;
    return 1;
}

/* A value's two words: 0, or -1 with the exception naming what is wrong. */
static int map_value(PyObject *value, uint64_t *lo, uint64_t *hi) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a prefix map value must be an int, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    unsigned char bytes[16];
    if (_PyLong_Sign(value) < 0 || _PyLong_NumBits(value) > 128) {
        PyErr_Format(PyExc_ValueError, "prefix map value %R is outside [0, 2**128)", value);
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (PyLong_AsNativeBytes(value, bytes, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER) < 0)
        return -1;
#else
    if (_PyLong_AsByteArray((PyLongObject *)value, bytes, 16, 1, 0) < 0) return -1;
#endif
    uint64_t w[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int b = 7; b >= 0; b--) w[k] = w[k] << 8 | bytes[k * 8 + b];
    *lo = w[0];
    *hi = w[1];
    return 0;
}

typedef unsigned __int128 u128;

/* An int from 128 bits (the map's values; record_core's entries). */
static PyObject *u128_to_long(u128 v) {
    if (!(v >> 64)) return PyLong_FromUnsignedLongLong((unsigned long long)v);
#if PY_VERSION_HEX < 0x030C0000
    /* The digits written directly (_PyLong_FromByteArray cost ~1,500 instructions). */
    int size = 0;
    for (u128 t = v; t; t >>= PyLong_SHIFT) size++;
    PyLongObject *out = _PyLong_New(size);
    if (!out) return NULL;
    for (int i = 0; i < size; i++, v >>= PyLong_SHIFT) out->ob_digit[i] = (digit)(v & PyLong_MASK);
    return (PyObject *)out;
#endif
    unsigned char bytes[16];
    for (int i = 0; i < 16; i++) bytes[i] = (unsigned char)(v >> (8 * i));
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(bytes, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray(bytes, 16, 1, 0);
#endif
}

/* A _TwoGenerations read once per call: its generations (tuples of dicts, new references),
 * its size limit, and its two counters, written back by gens_done. */
typedef struct {
    PyObject *obj, *new, *old, *retiring;
    Py_ssize_t half;        /* _capacity // 2: the newer generation is full at this size */
    Py_ssize_t size;        /* _size: keys in the newer generation */
    Py_ssize_t retiring_at; /* _retiring_at: the retiring shard being freed */
    int changed;            /* size or retiring_at moved since gens_read */
} Gens;

static void gens_clear(Gens *g) {
    Py_CLEAR(g->obj);
    Py_CLEAR(g->new);
    Py_CLEAR(g->old);
    Py_CLEAR(g->retiring);
}

/* ---- the type ---------------------------------------------------------------------------- */

/* An array of at least `wanted` slots, zeroed. `resident`: by writing, so its pages are
 * the process's now (the newer generation: a new memory's first inserts, one at a random
 * page each, each faulted in a page, ~16 a claim of an ~8k-token prompt); else by calloc,
 * its pages arriving as they are first written (the older array is not read until it
 * holds keys; the spare is zeroed again, a few slots an insert, before it is the newer
 * one). Not in 2 MB pages: asked for (madvise), their faults stopped claims for 1-12 ms
 * while the kernel found and zeroed one. */
/* memset through a pointer the compiler cannot see through: malloc then memset to zero
 * is otherwise compiled as calloc, whose pages arrive later (the point here is now). */
static void *(*const volatile zero_fill)(void *, int, size_t) = memset;

static int map_allocate(MapArray *a, Py_ssize_t wanted, int resident) {
    uint64_t count = MAP_MIN_SLOTS;
    int bits = 3;
    while (count < (uint64_t)wanted) {
        count <<= 1;
        bits++;
    }
    MapSlot *slots = resident ? malloc(count * sizeof(MapSlot)) : calloc(count, sizeof(MapSlot));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    if (resident) zero_fill(slots, 0, count * sizeof(MapSlot));
    a->slots = slots;
    a->mask = count - 1;
    a->shift = 64 - bits;
    return 0;
}

static void map_release(PrefixMap *m) {
    free(m->newer.slots);
    free(m->older.slots);
    free(m->spare.slots);
    m->newer.slots = m->older.slots = m->spare.slots = NULL;
}

static void PrefixMap_dealloc(PrefixMap *self) {
    map_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PrefixMap(capacity): _TwoGenerations(capacity): generations of max(capacity, 2) // 2 keys. */
static int PrefixMap_init(PrefixMap *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", NULL};
    PyObject *capacity_arg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:PrefixMap", kwlist, &capacity_arg)) return -1;
    if (!PyLong_Check(capacity_arg)) {
        PyErr_Format(PyExc_TypeError, "capacity is a %.100s, not an int", Py_TYPE(capacity_arg)->tp_name);
        return -1;
    }
    int overflow;
    long long capacity = PyLong_AsLongLongAndOverflow(capacity_arg, &overflow);
    if (capacity == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0 || capacity > (1LL << 32)) {
        PyErr_Format(PyExc_ValueError, "capacity %R: at most 2**32 prefixes", capacity_arg);
        return -1;
    }
    if (overflow < 0 || capacity < 2) capacity = 2;
    Py_ssize_t half = (Py_ssize_t)(capacity / 2);
    PrefixMap fresh = {0};
    if (map_allocate(&fresh.newer, 2 * half, 1) < 0 || map_allocate(&fresh.older, 2 * half, 0) < 0 ||
        map_allocate(&fresh.spare, 2 * half, 0) < 0) {
        map_release(&fresh);
        return -1;
    }
    map_release(self); /* __init__ called again: start afresh */
    self->newer = fresh.newer;
    self->older = fresh.older;
    self->spare = fresh.spare;
    self->half = half;
    /* The spare is needed `half` inserts after it is forgotten: zeroed by then, and in as
     * few writes an insert as that allows (2 slots at the default capacity), its pages
     * faulted in one every ~85 inserts rather than in a burst. */
    self->clear_step = ((self->spare.mask + 1) + (uint64_t)half - 1) / (uint64_t)half;
    self->newer_size = self->older_size = 0;
    self->cleared = 0; /* zero already, but written over: its pages arrive before it is needed */
    return 0;
}

static int map_ready(PrefixMap *self) {
    if (self->newer.slots) return 1;
    PyErr_SetString(PyExc_ValueError, "PrefixMap.__init__ was not called");
    return 0;
}

static PyObject *PrefixMap_get(PrefixMap *self, PyObject *key) {
    uint64_t key1;
    if (!map_ready(self)) return NULL;
    const MapSlot *s = map_key(key, &key1) ? map_get(self, key1) : NULL;
    if (!s) Py_RETURN_NONE;
    return u128_to_long((u128)s->hi << 64 | s->lo);
}

static PyObject *PrefixMap_put(PrefixMap *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t key1, lo, hi;
    if (!map_ready(self)) return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value): two arguments");
        return NULL;
    }
    if (!map_key(args[0], &key1)) {
        PyErr_Format(PyExc_ValueError, "prefix map key %R is not an int in [0, 2**63)", args[0]);
        return NULL;
    }
    if (map_value(args[1], &lo, &hi) < 0) return NULL;
    map_put(self, key1, lo, hi);
    Py_RETURN_NONE;
}

static PyObject *PrefixMap_in_newer(PrefixMap *self, PyObject *key) {
    uint64_t key1;
    if (!map_ready(self)) return NULL;
    return PyBool_FromLong(map_key(key, &key1) && map_find(&self->newer, key1) != NULL);
}

static PyObject *PrefixMap_clear(PrefixMap *self, PyObject *unused) {
    (void)unused;
    if (!map_ready(self)) return NULL;
    memset(self->newer.slots, 0, (self->newer.mask + 1) * sizeof(MapSlot));
    self->newer_size = self->older_size = 0; /* the older array's keys are not read again */
    Py_RETURN_NONE;
}

static PyObject *array_dict(const MapArray *a, Py_ssize_t size) {
    PyObject *d = PyDict_New();
    for (uint64_t i = 0; d && size && i <= a->mask; i++) {
        const MapSlot *s = &a->slots[i];
        if (!s->key) continue;
        PyObject *k = PyLong_FromUnsignedLongLong(s->key - 1), *v = u128_to_long((u128)s->hi << 64 | s->lo);
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) Py_CLEAR(d);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *PrefixMap_generations(PrefixMap *self, PyObject *unused) {
    (void)unused;
    if (!map_ready(self)) return NULL;
    PyObject *newer = array_dict(&self->newer, self->newer_size);
    PyObject *older = newer ? array_dict(&self->older, self->older_size) : NULL;
    PyObject *both = older ? PyTuple_Pack(2, newer, older) : NULL;
    Py_XDECREF(newer);
    Py_XDECREF(older);
    return both;
}

static Py_ssize_t PrefixMap_len(PrefixMap *self) { return self->newer_size + self->older_size; }

static int PrefixMap_contains(PrefixMap *self, PyObject *key) {
    uint64_t key1;
    if (!map_ready(self)) return -1;
    return map_key(key, &key1) && map_get(self, key1) != NULL;
}

static PyMethodDef PrefixMap_methods[] = {
    {"get", (PyCFunction)PrefixMap_get, METH_O, "get(key) -> the value, or None"},
    {"put", (PyCFunction)(void (*)(void))PrefixMap_put, METH_FASTCALL,
     "put(key, value): into the newer generation, which turns over when it holds capacity // 2 keys"},
    {"in_newer", (PyCFunction)PrefixMap_in_newer, METH_O, "in_newer(key) -> whether the newer generation holds key"},
    {"clear", (PyCFunction)PrefixMap_clear, METH_NOARGS, "clear(): forget every key"},
    {"generations", (PyCFunction)PrefixMap_generations, METH_NOARGS,
     "generations() -> (newer, older): each generation's keys and values as a dict (for tests)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods PrefixMap_sequence = {
    .sq_length = (lenfunc)PrefixMap_len,
    .sq_contains = (objobjproc)PrefixMap_contains,
};

static PyTypeObject PrefixMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._choice.PrefixMap",
    .tp_basicsize = sizeof(PrefixMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Prefix hash -> int in two generations of flat arrays: router/placement.py's _TwoGenerations in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PrefixMap_init,
    .tp_dealloc = (destructor)PrefixMap_dealloc,
    .tp_methods = PrefixMap_methods,
    .tp_as_sequence = &PrefixMap_sequence,
};

#endif
