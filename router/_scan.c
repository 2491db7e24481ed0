/*
 * router._scan: the C twin of the routing context's per-word and per-character work
 * (an optional accelerator, built by setup.py when a C compiler is there).
 *
 * In CPython each word of a prompt's scan window cost ~0.2 us on this project's 2-core
 * box (a bytes object from split(), a set insert, a dict lookup, a big-int add), and a
 * long non-ASCII prompt ~1 ns a character just to be encoded: most of a routing
 * decision. This module does the same work with no Python object per word or block:
 *
 *   ScanTable(translate, entries, lexicon_lanes, class_lanes, bigram_head, bigram_tail)
 *     the word/bigram table, built once from router/context.py's WordTable (a key is a
 *     word, or two words joined by one space; its value (lexicon mask, class weights));
 *     .set_cues(...) adds what router/scorer.py's safety cues read from the words,
 *     .set_markers(...) what router/context.py's code markers look for, .set_signals(...)
 *     the request-level signals, .set_blocks(...) the prefix-block hashing scheme.
 *   read_prompt(parts, table, head, tail) -> a TextView tuple: the window's two ends
 *     encoded from the prompt's strings as stored (never joined), the UTF-8 length and
 *     the prefix-block hashes in one pass over the prompt's memory, the window's scan
 *     and the request-level signals
 *   scan(window, table) -> (lanes, word_count, features, alnum, digits, spaces, cue_facts, code_markers)
 *   utf8_length(text), block_hashes(parts, digest or its C address, block_chars, max_blocks)
 *   script_census(window, codes, e0_next, e1_next, letters, e0_lead, e1_lead)
 *   ClassModel(...), .set_cues(...), class_scores(model, lanes, text_features, signals, cue_sums[, cue_facts])
 *
 * Each must give exactly what the Python code it mirrors gives (router/context.py's
 * read_parts and python_view, utf8_length fallback, python_prefix_hashes, python_script_census;
 * router/scorer.py's cue_facts and python_score); tests/test_scan.py checks every dev
 * prompt and generated inputs both ways. Without this module (no compiler, or
 * SLM_PURE_PYTHON=1) the router runs the Python code: the same decisions, slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The per-character loops over a long prompt (UTF-8 length, a block's widest character,
 * widening or narrowing a block) are compiled twice on x86-64 with GCC and glibc: for AVX2
 * and for the baseline (SSE2), the loader picking one at start (an ifunc). AVX2 does
 * twice the characters an instruction; the results are the same bits either way. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define MAX_LEXICON_LANES 32
#define MAX_CLASS_LANES 6
#define STACK_WORDS 512
#define MAX_WINDOW_LOWERED 4096 /* code markers lowercase a window this long on the stack */

/* One slot of the table: half a cache line, so the ~1 MB table of a cache line a slot
 * is 512 KB and a window's ~80 lookups touch half the memory. The key is kept out of
 * line in ScanTable.keys (all keys back to back: ~50 KB, hot in the cache), compared
 * only when the hash and length match; the class weights are 16-bit (the shipped
 * scorer's span -20,216..15,094; ScanTable refuses wider ones). */
typedef struct {
    uint64_t hash;       /* 0: empty slot */
    uint32_t lexicon;    /* one bit per lexicon lane the word is on */
    uint32_t key_offset; /* the key's first byte in ScanTable.keys */
    uint16_t key_length;
    int16_t classes[MAX_CLASS_LANES];
} Entry;

_Static_assert(sizeof(Entry) == 32, "an Entry is half a cache line");

static inline const char *entry_key(const Entry *e, const char *keys) { return keys + e->key_offset; }

/* XXH3_64bits_withSeed's signature: the xxhash package's own C function, which its
 * xxh3_64_intdigest calls (router.context hands over its address after checking it). */
typedef uint64_t (*SeededHash)(const void *data, size_t length, uint64_t seed);

/* A short list of short byte strings (a marker's texts), back to back in one buffer. */
#define MAX_TEXTS 32
typedef struct {
    Py_ssize_t count;
    Py_ssize_t offset[MAX_TEXTS + 1]; /* text k is bytes[offset[k] .. offset[k + 1]) */
    unsigned char *bytes;
} Texts;

typedef struct {
    PyObject_HEAD
    unsigned char translate[256];
    Entry *slots; /* cache-line aligned, inside slots_memory */
    void *slots_memory;
    size_t mask; /* slots - 1, a power of two minus one */
    char *keys;  /* every key, back to back (Entry.key_offset) */
    int lexicon_lanes;
    int class_lanes;
    Py_ssize_t bigram_head;
    Py_ssize_t bigram_tail;
    /* The safety cues' word facts (set_cues; router/scorer.py owns their definitions). */
    uint32_t alarming;       /* lexicon lanes that make a window alarming; 0: no cues */
    int violent, crime;      /* the verb lanes */
    int group, person;
    int targets[8];          /* the target lanes, in the order of their bits */
    int target_count;
    Py_ssize_t cue_words;    /* verbs and groups are looked for in the first words only */
    Py_ssize_t reach;        /* ... and a verb's target within this many words after it */
    /* The code markers (set_markers; router/context.py's python_code_markers owns them). */
    int markers_set;
    Texts stack_texts, error_texts, suffixes, error_words;
    int error_lane, suffix_lane, keyword_lane, ask_verb_lane, ask_object_lane;
    long marker_bits[6]; /* fence, stack trace, compiler error, file path, keywords, code ask */
    Py_ssize_t ask_words, ask_reach;
    /* The request-level signals read_prompt computes (set_signals; router/context.py's
     * signal_settings and python_view own them): the token estimate's coefficients,
     * script detection's byte codes, and the harm lanes in category order. */
    int signals_set;
    double per_alnum, per_word, per_digit, per_punct, extra_bytes_per_token;
    Py_ssize_t max_chars_per_token;
    unsigned char script_codes[256], e0_next[256], e1_next[256], letters[64];
    Py_ssize_t letter_count;
    int e0_lead, e1_lead;
    PyObject *latin;          /* Script.LATIN */
    PyObject *letter_scripts; /* the Script member of each letters[k] */
    int harm_lanes[MAX_LEXICON_LANES], harm_count;
    PyObject *harm_categories; /* the SafetyCategory of each harm lane, then NONE */
    /* The prefix blocks read_prompt hashes (set_blocks; router/context.py's prefix_hashes
     * owns the scheme): the digest, or the address of its C function, and the sizes. */
    int blocks_set;
    SeededHash block_hash;  /* NULL: call block_digest */
    PyObject *block_digest;
    Py_ssize_t block_chars, max_blocks;
} ScanTable;

/* The table's word hash, 8 bytes a step: a word's bytes loaded as 64-bit words (the last
 * one zero-padded), each mixed in by a multiply and a shift. FNV-1a before it went a
 * byte at a time, a multiply's latency each byte and its loop's exit mispredicted at
 * every word; this is one step for most words. A bigram's hash combines its words'
 * hashes (bigram_hash), so it is found without building "first second"; the table's
 * keys hold bigrams as "first second" and are hashed that way (key_hash). */
#define HASH_SEED 0x9E3779B97F4A7C15ULL

static inline uint64_t hash_mix(uint64_t x) {
    x *= 0xBF58476D1CE4E5B9ULL;
    return x ^ (x >> 31);
}

/* A mask of the first n (0..8) bytes of a word loaded from memory (a table: a shift by a
 * computed count and its n == 0 case cost more where it runs for every word). */
static const uint64_t FIRST_BYTES[9] = {
#if PY_BIG_ENDIAN
    0, 0xFF00000000000000ULL, 0xFFFF000000000000ULL, 0xFFFFFF0000000000ULL, 0xFFFFFFFF00000000ULL,
    0xFFFFFFFFFF000000ULL, 0xFFFFFFFFFFFF0000ULL, 0xFFFFFFFFFFFFFF00ULL, ~0ULL};
#else
    0, 0xFFULL, 0xFFFFULL, 0xFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFFFULL, 0xFFFFFFFFFFFFULL,
    0xFFFFFFFFFFFFFFULL, ~0ULL};
#endif

static inline uint64_t first_bytes_mask(Py_ssize_t n) { return FIRST_BYTES[n]; }

/* p[0, n) as the hash reads it: 8 bytes from p (all readable: see padded_hash), masked. */
static inline uint64_t load_first(const unsigned char *p, Py_ssize_t n) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v & first_bytes_mask(n);
}

/* The hash of p[0, n) where 8 bytes from any byte of it are readable: scan_window's text
 * has WORD_CHUNK bytes of padding after the window, ScanTable.keys 8 after its last key. */
static inline uint64_t padded_hash(const unsigned char *p, Py_ssize_t n) {
    uint64_t h = HASH_SEED ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; n - i > 8; i += 8) h = hash_mix(h ^ load_first(p + i, 8));
    return hash_mix(h ^ load_first(p + i, n - i));
}

static inline uint64_t bigram_hash(uint64_t first, uint64_t second) {
    return hash_mix((first * 0x94D049BB133111EBULL) ^ second);
}

/* A table key's hash, read from its copy in ScanTable.keys (padded, as padded_hash needs):
 * a bigram ("first second": words never hold a space) by bigram_hash, so a lookup's hash
 * and the table's come from the same function. */
static uint64_t key_hash(const unsigned char *key, Py_ssize_t n) {
    const unsigned char *space = memchr(key, ' ', (size_t)n);
    if (!space) return padded_hash(key, n);
    Py_ssize_t first = space - key;
    return bigram_hash(padded_hash(key, first), padded_hash(space + 1, n - first - 1));
}

static inline uint64_t nonzero(uint64_t h) { return h ? h : 1; }

/* memcmp(a, b, n) == 0 where 8 bytes from any byte of both are readable (the window's
 * text and the table's keys are padded), inline (a library call a word was a tenth of a
 * window's scan): whole 8-byte loads, the last masked, so a word's compare has no loop
 * of its length to mispredict. */
static inline int same_padded(const unsigned char *a, const unsigned char *b, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; n - i > 8; i += 8)
        if (load_first(a + i, 8) != load_first(b + i, 8)) return 0;
    return load_first(a + i, n - i) == load_first(b + i, n - i);
}

/* Bytes of w[0..n) equal to a or to b. 8-bit lanes over runs of 255 bytes (a run's count
 * fits), so the compiler vectorises it: a separate pass costs less than a count in the
 * word loop's every iteration. */
VECTOR_CLONES static Py_ssize_t count_either(const unsigned char *w, Py_ssize_t n, unsigned char a, unsigned char b) {
    Py_ssize_t total = 0;
    for (Py_ssize_t at = 0; at < n; at += 255) {
        Py_ssize_t end = n - at < 255 ? n : at + 255;
        uint8_t run = 0;
        for (Py_ssize_t i = at; i < end; i++) run += (uint8_t)((w[i] == a) | (w[i] == b));
        total += run;
    }
    return total;
}

static void ScanTable_dealloc(ScanTable *self) {
    PyMem_Free(self->slots_memory);
    PyMem_Free(self->keys);
    PyMem_Free(self->stack_texts.bytes);
    PyMem_Free(self->error_texts.bytes);
    PyMem_Free(self->suffixes.bytes);
    PyMem_Free(self->error_words.bytes);
    Py_CLEAR(self->latin);
    Py_CLEAR(self->letter_scripts);
    Py_CLEAR(self->harm_categories);
    Py_CLEAR(self->block_digest);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ScanTable_init(ScanTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"translate", "entries", "lexicon_lanes", "class_lanes",
                             "bigram_head", "bigram_tail", NULL};
    Py_buffer translate;
    PyObject *entries;
    int lexicon_lanes, class_lanes;
    Py_ssize_t bigram_head, bigram_tail;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*O!iinn", kwlist, &translate, &PyDict_Type,
                                     &entries, &lexicon_lanes, &class_lanes, &bigram_head,
                                     &bigram_tail))
        return -1;
    if (translate.len != 256) {
        PyBuffer_Release(&translate);
        PyErr_SetString(PyExc_ValueError, "translate: must be 256 bytes");
        return -1;
    }
    memcpy(self->translate, translate.buf, 256);
    PyBuffer_Release(&translate);
    if (lexicon_lanes < 0 || lexicon_lanes > MAX_LEXICON_LANES || class_lanes < 0 ||
        class_lanes > MAX_CLASS_LANES) {
        PyErr_Format(PyExc_ValueError, "lanes: at most %d lexicon and %d class lanes",
                     MAX_LEXICON_LANES, MAX_CLASS_LANES);
        return -1;
    }
    if (bigram_head < 2 || bigram_tail < 2) {
        PyErr_SetString(PyExc_ValueError, "bigram_head and bigram_tail: at least 2 words each");
        return -1;
    }
    self->lexicon_lanes = lexicon_lanes;
    self->class_lanes = class_lanes;
    self->bigram_head = bigram_head;
    self->bigram_tail = bigram_tail;

    Py_ssize_t count = PyDict_Size(entries), key_bytes = 0, pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(entries, &pos, &key, &value)) {
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "entries: every key must be bytes");
            return -1;
        }
        key_bytes += PyBytes_GET_SIZE(key);
        if (PyBytes_GET_SIZE(key) > UINT16_MAX) {
            PyErr_SetString(PyExc_ValueError, "entries: a key is longer than 65535 bytes");
            return -1;
        }
    }
    size_t size = 16;
    while (size < (size_t)count * 2) size <<= 1; /* at most half full: short probes */
    PyMem_Free(self->slots_memory);
    PyMem_Free(self->keys);
    self->slots_memory = PyMem_Calloc(size + 1, sizeof(Entry)); /* + 1: room to align */
    self->keys = PyMem_Calloc(key_bytes + 8, 1); /* + 8: same_padded reads 8 bytes at a time */
    if (!self->slots_memory || !self->keys) {
        PyErr_NoMemory();
        return -1;
    }
    self->slots = (Entry *)(((uintptr_t)self->slots_memory + sizeof(Entry) - 1) & ~(uintptr_t)(sizeof(Entry) - 1));
    self->mask = size - 1;

    Py_ssize_t offset = 0;
    pos = 0;
    while (PyDict_Next(entries, &pos, &key, &value)) {
        PyObject *classes;
        unsigned long long lexicon;
        if (!PyArg_ParseTuple(value, "KO!;entries: a value is (lexicon_mask, (weights...))",
                              &lexicon, &PyTuple_Type, &classes))
            return -1;
        if (PyTuple_GET_SIZE(classes) != class_lanes) {
            PyErr_Format(PyExc_ValueError, "entries: %zd class weights, expected %d",
                         PyTuple_GET_SIZE(classes), class_lanes);
            return -1;
        }
        if (lexicon >> lexicon_lanes) { /* lexicon_lanes <= 32: a defined shift */
            PyErr_SetString(PyExc_ValueError, "entries: lexicon mask has bits above the lanes");
            return -1;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(key);
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(key);
        if (offset + length > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "entries: the keys exceed 4 GB");
            return -1;
        }
        /* Copied first: the copy is followed by readable bytes (the next key's, or the
         * array's 8 bytes of padding), so the key is hashed as a window's word is. */
        memcpy(self->keys + offset, text, length);
        uint64_t hash = nonzero(key_hash((const unsigned char *)self->keys + offset, length));
        size_t slot = hash & self->mask;
        while (self->slots[slot].hash) {
            Entry *seen = &self->slots[slot];
            if (seen->hash == hash && seen->key_length == length &&
                memcmp(entry_key(seen, self->keys), text, length) == 0) {
                PyErr_SetString(PyExc_ValueError, "entries: duplicate key");
                return -1;
            }
            slot = (slot + 1) & self->mask;
        }
        Entry *entry = &self->slots[slot];
        for (int k = 0; k < class_lanes; k++) {
            long weight = PyLong_AsLong(PyTuple_GET_ITEM(classes, k));
            if (weight == -1 && PyErr_Occurred()) return -1;
            if (weight < INT16_MIN || weight > INT16_MAX) {
                PyErr_SetString(PyExc_OverflowError, "entries: a class weight must fit 16 bits");
                return -1;
            }
            entry->classes[k] = (int16_t)weight;
        }
        entry->key_offset = (uint32_t)offset;
        offset += length;
        entry->hash = hash;
        entry->key_length = (uint16_t)length;
        entry->lexicon = (uint32_t)lexicon;
    }
    return 0;
}

typedef struct {
    Py_ssize_t start;
    Py_ssize_t length;
    uint64_t state; /* padded_hash of the word's bytes, before nonzero() */
    uint32_t mask;  /* its lexicon lanes (a repeated word: those of its first occurrence) */
} Word;

#define WORD_CHUNK 64 /* split_words reads the text in chunks of a 64-bit mask */

/* Bit j set when p[j] is ' ', for j < 64. */
static inline uint64_t space_bits(const unsigned char *p) {
#if defined(__SSE2__)
    const __m128i space = _mm_set1_epi8(' ');
    uint64_t bits = 0;
    for (int k = 0; k < 4; k++) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(p + 16 * k));
        bits |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, space)) << (16 * k);
    }
    return bits;
#else
    uint64_t bits = 0;
    for (int j = 0; j < 64; j++) bits |= (uint64_t)(p[j] == ' ') << j;
    return bits;
#endif
}

/* The words of translated text[0, n) (the runs of bytes other than ' ') into `words`
 * (start and length); returns how many. text must hold WORD_CHUNK bytes of ' ' from n on.
 * Adds the count of ' ' in text[0, n) to *separators. Each chunk's word starts and ends
 * come from its mask of spaces: a start is a non-space after a space (or the text's
 * first byte), an end a space after a non-space. */
static Py_ssize_t split_words(const unsigned char *text, Py_ssize_t n, Word *words, Py_ssize_t *separators) {
    Py_ssize_t started = 0, ended = 0, spaces = 0;
    uint64_t before = 0; /* bit 0: the byte before this chunk is in a word */
    for (Py_ssize_t base = 0; base < n; base += WORD_CHUNK) {
        uint64_t space = space_bits(text + base), in_word = ~space;
        uint64_t previous = (in_word << 1) | before; /* bit j: byte j - 1 is in a word */
        uint64_t starts = in_word & ~previous, ends = space & previous;
        before = in_word >> 63;
        spaces += __builtin_popcountll(n - base < WORD_CHUNK ? space & ((UINT64_C(1) << (n - base)) - 1) : space);
        for (; starts; starts &= starts - 1) words[started++].start = base + __builtin_ctzll(starts);
        for (; ends; ends &= ends - 1, ended++) words[ended].length = base + __builtin_ctzll(ends) - words[ended].start;
    }
    /* n a multiple of the chunk with a word running to its end: the padding ends it */
    if (ended < started) words[ended].length = n - words[ended].start;
    *separators += spaces;
    return started;
}

/* An entry's class weights added to `sums`: all MAX_CLASS_LANES lanes, the unused ones
 * zero in every entry, so the loop has a fixed count and the compiler unrolls it. */
static inline void add_classes(int64_t *sums, const Entry *e) {
    for (int k = 0; k < MAX_CLASS_LANES; k++) sums[k] += e->classes[k];
}

/* The table entry for word `a` (and, when b is not NULL, " " and word `b`), or NULL. */
static inline const Entry *lookup(const ScanTable *t, const unsigned char *text, uint64_t hash,
                                  const Word *a, const Word *b) {
    Py_ssize_t length = a->length + (b ? 1 + b->length : 0);
    size_t slot = hash & t->mask;
    for (;;) {
        const Entry *e = &t->slots[slot];
        if (!e->hash) return NULL;
        if (e->hash == hash && e->key_length == length) {
            const char *key = entry_key(e, t->keys);
            if (same_padded((const unsigned char *)key, text + a->start, a->length) &&
                (!b || (key[a->length] == ' ' &&
                        same_padded((const unsigned char *)key + a->length + 1, text + b->start, b->length))))
                return e;
        }
        slot = (slot + 1) & t->mask;
    }
}

/* Class weights of the bigrams words[first..end), in order; repeats count every time,
 * as in the Python pass. */
static void add_bigrams(const ScanTable *t, const unsigned char *text, const Word *words,
                        Py_ssize_t first, Py_ssize_t end, int64_t *sums) {
    for (Py_ssize_t i = first; i + 1 < end; i++) {
        const Word *a = &words[i], *b = &words[i + 1];
        const Entry *e = lookup(t, text, nonzero(bigram_hash(a->state, b->state)), a, b);
        if (e)
            add_classes(sums, e);
    }
}

/* Ask memory for the table slots of the bigrams words[first..end) (add_bigrams reads them). */
static void prefetch_bigrams(const ScanTable *t, const Word *words, Py_ssize_t first, Py_ssize_t end) {
    for (Py_ssize_t i = first; i + 1 < end; i++) {
        __builtin_prefetch(&t->slots[nonzero(bigram_hash(words[i].state, words[i + 1].state)) & t->mask]);
    }
}

static PyTypeObject ScanTableType;

/* What a verb lane's words are aimed at: router.scorer.harm_targets over the first
 * cue_words words, from the words' lexicon masks (bit t: target lane t; the bit past the
 * last: none of them). 0 when the lane is not in the window. */
static uint32_t harm_found(const ScanTable *t, const Word *words, Py_ssize_t count, int lane, uint32_t present) {
    if (!(present >> lane & 1)) return 0;
    Py_ssize_t head = count < t->cue_words ? count : t->cue_words;
    uint32_t found = 0;
    for (Py_ssize_t i = 0; i < head; i++) {
        if (!(words[i].mask >> lane & 1)) continue;
        uint32_t hit = 0;
        for (Py_ssize_t j = i + 1; j < head && j <= i + t->reach; j++)
            for (int b = 0; b < t->target_count; b++) hit |= (words[j].mask >> t->targets[b] & 1u) << b;
        found |= hit ? hit : 1u << t->target_count;
    }
    return found;
}

/* router.scorer.group_target == "people", from the masks (false when no group word). */
static int group_people(const ScanTable *t, const unsigned char *text, const Word *words, Py_ssize_t count,
                        uint32_t present) {
    if (!(present >> t->group & 1)) return 0;
    Py_ssize_t head = count < t->cue_words ? count : t->cue_words;
    for (Py_ssize_t i = 0; i < head; i++) {
        const Word *w = &words[i];
        if (!(w->mask >> t->group & 1)) continue;
        if ((w->mask >> t->person & 1) || text[w->start + w->length - 1] == 's' || i + 1 == count) return 1;
        for (Py_ssize_t j = i + 1; j < count && j <= i + 2; j++)
            if (words[j].mask >> t->person & 1) return 1;
    }
    return 0;
}

/* (violent targets, crime targets, word 1 or None, word 2 or None, group names people):
 * every fact router.scorer.safety_cues reads from the words. */
static PyObject *cue_facts(const ScanTable *t, const unsigned char *text, const Word *words, Py_ssize_t count,
                           uint32_t present) {
    PyObject *first = count > 1 ? PyBytes_FromStringAndSize((const char *)text + words[1].start, words[1].length)
                                : Py_NewRef(Py_None);
    PyObject *second = count > 2 ? PyBytes_FromStringAndSize((const char *)text + words[2].start, words[2].length)
                                 : Py_NewRef(Py_None);
    PyObject *violent = PyLong_FromUnsignedLong(harm_found(t, words, count, t->violent, present));
    PyObject *crime = PyLong_FromUnsignedLong(harm_found(t, words, count, t->crime, present));
    PyObject *people = PyBool_FromLong(group_people(t, text, words, count, present));
    if (!first || !second || !violent || !crime) {
        Py_XDECREF(first);
        Py_XDECREF(second);
        Py_XDECREF(violent);
        Py_XDECREF(crime);
        Py_DECREF(people);
        return NULL;
    }
    PyObject *facts = PyTuple_New(5);
    if (!facts) {
        Py_DECREF(first);
        Py_DECREF(second);
        Py_DECREF(violent);
        Py_DECREF(crime);
        Py_DECREF(people);
        return NULL;
    }
    PyTuple_SET_ITEM(facts, 0, violent);
    PyTuple_SET_ITEM(facts, 1, crime);
    PyTuple_SET_ITEM(facts, 2, first);
    PyTuple_SET_ITEM(facts, 3, second);
    PyTuple_SET_ITEM(facts, 4, people);
    return facts;
}

/* ScanTable.set_cues(alarming, violent, crime, targets, group, person, cue_words, reach) */
static PyObject *ScanTable_set_cues(ScanTable *self, PyObject *args) {
    unsigned long alarming;
    int violent, crime, group, person;
    PyObject *targets;
    Py_ssize_t cue_words, reach;
    if (!PyArg_ParseTuple(args, "kiiO!iinn", &alarming, &violent, &crime, &PyTuple_Type, &targets, &group,
                          &person, &cue_words, &reach))
        return NULL;
    int lanes[4] = {violent, crime, group, person};
    Py_ssize_t count = PyTuple_GET_SIZE(targets);
    if (count > 8 || cue_words < 0 || reach < 0 || (alarming >> self->lexicon_lanes)) {
        PyErr_SetString(PyExc_ValueError, "set_cues: at most 8 targets, counts >= 0, lanes inside the table's");
        return NULL;
    }
    for (int k = 0; k < 4; k++)
        if (lanes[k] < 0 || lanes[k] >= self->lexicon_lanes) {
            PyErr_Format(PyExc_ValueError, "set_cues: lane %d is not one of the table's %d lexicon lanes",
                         lanes[k], self->lexicon_lanes);
            return NULL;
        }
    for (Py_ssize_t b = 0; b < count; b++) {
        long lane = PyLong_AsLong(PyTuple_GET_ITEM(targets, b));
        if (lane == -1 && PyErr_Occurred()) return NULL;
        if (lane < 0 || lane >= self->lexicon_lanes) {
            PyErr_Format(PyExc_ValueError, "set_cues: lane %ld is not one of the table's %d lexicon lanes",
                         lane, self->lexicon_lanes);
            return NULL;
        }
        self->targets[b] = (int)lane;
    }
    self->target_count = (int)count;
    self->alarming = (uint32_t)alarming;
    self->violent = violent;
    self->crime = crime;
    self->group = group;
    self->person = person;
    self->cue_words = cue_words;
    self->reach = reach;
    Py_RETURN_NONE;
}

/* ---- code markers: router/context.py's python_code_markers, from the words' masks ---- */

/* `tuple` (of bytes) into `out`; 0, or -1 with an exception naming `what`. */
static int read_texts(PyObject *tuple, Texts *out, const char *what) {
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) > MAX_TEXTS) {
        PyErr_Format(PyExc_ValueError, "set_markers: %s must be a tuple of at most %d bytes", what, MAX_TEXTS);
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(tuple), total = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *text = PyTuple_GET_ITEM(tuple, k);
        if (!PyBytes_Check(text) || PyBytes_GET_SIZE(text) == 0) {
            PyErr_Format(PyExc_ValueError, "set_markers: %s must hold non-empty bytes", what);
            return -1;
        }
        total += PyBytes_GET_SIZE(text);
    }
    unsigned char *bytes = PyMem_Malloc(total ? total : 1);
    if (!bytes) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(out->bytes);
    out->bytes = bytes;
    out->count = count;
    out->offset[0] = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *text = PyTuple_GET_ITEM(tuple, k);
        memcpy(bytes + out->offset[k], PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
        out->offset[k + 1] = out->offset[k] + PyBytes_GET_SIZE(text);
    }
    return 0;
}

/* ScanTable.set_markers(stack_texts, error_texts, suffixes, error_words, lanes, bits,
 * ask_words, ask_reach): router.context.marker_settings() names each. */
static PyObject *ScanTable_set_markers(ScanTable *self, PyObject *args) {
    PyObject *stack_texts, *error_texts, *suffixes, *error_words;
    int lanes[5];
    long bits[6];
    Py_ssize_t ask_words, ask_reach;
    if (!PyArg_ParseTuple(args, "OOOO(iiiii)(llllll)nn", &stack_texts, &error_texts, &suffixes, &error_words,
                          &lanes[0], &lanes[1], &lanes[2], &lanes[3], &lanes[4], &bits[0], &bits[1], &bits[2],
                          &bits[3], &bits[4], &bits[5], &ask_words, &ask_reach))
        return NULL;
    for (int k = 0; k < 5; k++)
        if (lanes[k] < 0 || lanes[k] >= self->lexicon_lanes) {
            PyErr_Format(PyExc_ValueError, "set_markers: lane %d is not one of the table's %d lexicon lanes",
                         lanes[k], self->lexicon_lanes);
            return NULL;
        }
    if (ask_words < 0 || ask_reach < 0) {
        PyErr_SetString(PyExc_ValueError, "set_markers: ask_words and ask_reach must be >= 0");
        return NULL;
    }
    if (read_texts(stack_texts, &self->stack_texts, "stack_texts") || read_texts(error_texts, &self->error_texts, "error_texts") ||
        read_texts(suffixes, &self->suffixes, "suffixes") || read_texts(error_words, &self->error_words, "error_words"))
        return NULL;
    self->error_lane = lanes[0];
    self->suffix_lane = lanes[1];
    self->keyword_lane = lanes[2];
    self->ask_verb_lane = lanes[3];
    self->ask_object_lane = lanes[4];
    memcpy(self->marker_bits, bits, sizeof bits);
    self->ask_words = ask_words;
    self->ask_reach = ask_reach;
    self->markers_set = 1;
    Py_RETURN_NONE;
}

/* The first index >= from where `needle` starts in `hay`, or -1 (bytes.find). */
static Py_ssize_t find_bytes(const unsigned char *hay, Py_ssize_t n, Py_ssize_t from, const unsigned char *needle,
                             Py_ssize_t m) {
    for (Py_ssize_t i = from; i + m <= n; i++) {
        const unsigned char *at = memchr(hay + i, needle[0], (size_t)(n - m - i + 1));
        if (!at) return -1;
        i = at - hay;
        if (memcmp(at, needle, (size_t)m) == 0) return i;
    }
    return -1;
}

static int any_text_in(const Texts *texts, const unsigned char *hay, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < texts->count; k++)
        if (find_bytes(hay, n, 0, texts->bytes + texts->offset[k], texts->offset[k + 1] - texts->offset[k]) >= 0)
            return 1;
    return 0;
}

static inline int ascii_alnum(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* context._has_source_path: a suffix right after a letter or digit and not followed by
 * one. As there, a suffix first found at index 0 ends the search for that suffix. */
static int has_source_path(const Texts *suffixes, const unsigned char *w, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < suffixes->count; k++) {
        const unsigned char *suffix = suffixes->bytes + suffixes->offset[k];
        Py_ssize_t m = suffixes->offset[k + 1] - suffixes->offset[k];
        Py_ssize_t at = find_bytes(w, n, 0, suffix, m);
        while (at > 0) {
            Py_ssize_t end = at + m;
            if (ascii_alnum(w[at - 1]) && (end == n || !ascii_alnum(w[end]))) return 1;
            at = find_bytes(w, n, end, suffix, m);
        }
    }
    return 0;
}

/* The window's CodeMarker bits: `raw` as read, `text` translated (its words), each
 * word's lexicon mask, `present` the lanes that fired. */
static long code_markers(const ScanTable *t, const unsigned char *raw, const unsigned char *text, Py_ssize_t n,
                         const Word *words, Py_ssize_t count, uint32_t present) {
    static const unsigned char fence[3] = {'`', '`', '`'};
    long markers = find_bytes(raw, n, 0, fence, 3) >= 0 ? t->marker_bits[0] : 0;
    int error = present >> t->error_lane & 1, suffix = present >> t->suffix_lane & 1;
    if (error || suffix) {
        unsigned char stack_lowered[MAX_WINDOW_LOWERED];
        unsigned char *lowered = n <= MAX_WINDOW_LOWERED ? stack_lowered : PyMem_Malloc(n ? n : 1);
        if (!lowered) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = raw[i];
            lowered[i] = c >= 'A' && c <= 'Z' ? c + 32 : c; /* bytes.lower(): ASCII only */
        }
        if (error) {
            if (any_text_in(&t->stack_texts, lowered, n)) markers |= t->marker_bits[1];
            int compiler = any_text_in(&t->error_texts, lowered, n);
            for (Py_ssize_t i = 0; i < count && !compiler; i++) {
                if (!(words[i].mask >> t->error_lane & 1)) continue;
                for (Py_ssize_t k = 0; k < t->error_words.count && !compiler; k++)
                    compiler = words[i].length == t->error_words.offset[k + 1] - t->error_words.offset[k] &&
                               memcmp(text + words[i].start, t->error_words.bytes + t->error_words.offset[k],
                                      (size_t)words[i].length) == 0;
            }
            if (compiler) markers |= t->marker_bits[2];
        }
        if (suffix && has_source_path(&t->suffixes, lowered, n)) markers |= t->marker_bits[3];
        if (lowered != stack_lowered) PyMem_Free(lowered);
    }
    if (present >> t->keyword_lane & 1) markers |= t->marker_bits[4];
    if ((present >> t->ask_verb_lane & 1) && (present >> t->ask_object_lane & 1)) {
        Py_ssize_t head = count < t->ask_words ? count : t->ask_words;
        for (Py_ssize_t i = 0; i < head; i++) {
            if (!(words[i].mask >> t->ask_verb_lane & 1)) continue;
            for (Py_ssize_t j = i + 1; j < head && j <= i + t->ask_reach; j++)
                if (words[j].mask >> t->ask_object_lane & 1) {
                    markers |= t->marker_bits[5];
                    i = head;
                    break;
                }
        }
    }
    return markers;
}

/* ---- request-level signals: router/context.py's estimate_from_counts, window_script,
 * safety_category (what python_view adds to a view) ---- */

static int read_lanes(PyObject *row, int *out, int most, int lexicon_lanes, int *count, const char *what);

/* ScanTable.set_signals(coefficients, max_chars_per_token, codes, e0_next, e1_next, letters,
 * e0_lead, e1_lead, latin, letter_scripts, harm_lanes, harm_categories):
 * router.context.signal_settings() names each. */
static PyObject *ScanTable_set_signals(ScanTable *self, PyObject *args) {
    double c[5];
    Py_ssize_t max_chars;
    Py_buffer codes, e0, e1, letters;
    int e0_lead, e1_lead;
    PyObject *latin, *letter_scripts, *harm_lanes, *harm_categories;
    if (!PyArg_ParseTuple(args, "(ddddd)ny*y*y*y*iiOO!OO!", &c[0], &c[1], &c[2], &c[3], &c[4], &max_chars, &codes,
                          &e0, &e1, &letters, &e0_lead, &e1_lead, &latin, &PyTuple_Type, &letter_scripts,
                          &harm_lanes, &PyTuple_Type, &harm_categories))
        return NULL;
    PyObject *result = NULL;
    int count = 0;
    if (codes.len != 256 || e0.len != 256 || e1.len != 256 || letters.len > 64 ||
        PyTuple_GET_SIZE(letter_scripts) != letters.len || max_chars < 1 || c[4] == 0.0) {
        PyErr_SetString(PyExc_ValueError, "set_signals: 256-byte code tables, a Script for each letter code, "
                                          "max_chars_per_token >= 1, extra_bytes_per_token != 0");
        goto done;
    }
    if (read_lanes(harm_lanes, self->harm_lanes, MAX_LEXICON_LANES, self->lexicon_lanes, &count, "set_signals harm_lanes") < 0)
        goto done;
    if (PyTuple_GET_SIZE(harm_categories) != count + 1) {
        PyErr_SetString(PyExc_ValueError, "set_signals: a category for each harm lane, then the one for none");
        goto done;
    }
    self->per_alnum = c[0];
    self->per_word = c[1];
    self->per_digit = c[2];
    self->per_punct = c[3];
    self->extra_bytes_per_token = c[4];
    self->max_chars_per_token = max_chars;
    memcpy(self->script_codes, codes.buf, 256);
    memcpy(self->e0_next, e0.buf, 256);
    memcpy(self->e1_next, e1.buf, 256);
    memcpy(self->letters, letters.buf, (size_t)letters.len);
    self->letter_count = letters.len;
    self->e0_lead = e0_lead;
    self->e1_lead = e1_lead;
    self->harm_count = count;
    Py_XSETREF(self->latin, Py_NewRef(latin));
    Py_XSETREF(self->letter_scripts, Py_NewRef(letter_scripts));
    Py_XSETREF(self->harm_categories, Py_NewRef(harm_categories));
    self->signals_set = 1;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&e0);
    PyBuffer_Release(&e1);
    PyBuffer_Release(&letters);
    return result;
}

/* A digest argument: an int is the address of the C function to call (SeededHash), else
 * a callable digest(bytes, seed) -> int. 0 with *direct set (NULL for a callable), or -1
 * with an exception naming `who`. */
static int read_digest(PyObject *digest, SeededHash *direct, const char *who) {
    *direct = NULL;
    if (PyLong_Check(digest)) {
        *direct = (SeededHash)PyLong_AsVoidPtr(digest);
        if (!*direct) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: digest address is 0", who);
            return -1;
        }
        return 0;
    }
    if (!PyCallable_Check(digest)) {
        PyErr_Format(PyExc_TypeError, "%s: digest must be callable or a C function's address", who);
        return -1;
    }
    return 0;
}

/* ScanTable.set_blocks(digest, block_chars, max_blocks): read_prompt() then hashes the
 * prompt's prefix blocks as block_hashes() does, in the same pass as its UTF-8 count. */
static PyObject *ScanTable_set_blocks(ScanTable *self, PyObject *args) {
    PyObject *digest;
    Py_ssize_t block_chars, max_blocks;
    SeededHash direct;
    if (!PyArg_ParseTuple(args, "Onn", &digest, &block_chars, &max_blocks)) return NULL;
    if (read_digest(digest, &direct, "set_blocks") < 0) return NULL;
    if (block_chars < 1 || max_blocks < 0) {
        PyErr_SetString(PyExc_ValueError, "set_blocks: block_chars >= 1 and max_blocks >= 0");
        return NULL;
    }
    self->block_hash = direct;
    Py_XSETREF(self->block_digest, Py_NewRef(digest));
    self->block_chars = block_chars;
    self->max_blocks = max_blocks;
    self->blocks_set = 1;
    Py_RETURN_NONE;
}

/* Characters of each code in w (per_code[256]) and the continuation bytes, as
 * script_census counts them. */
static Py_ssize_t census(const unsigned char *w, Py_ssize_t n, const unsigned char *codes, const unsigned char *e0_next,
                         const unsigned char *e1_next, int e0_lead, int e1_lead, Py_ssize_t *per_code) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char code = codes[w[i]];
        if (code == e0_lead) code = e0_next[i + 1 < n ? w[i + 1] : 0];
        else if (code == e1_lead) code = e1_next[i + 1 < n ? w[i + 1] : 0];
        per_code[code]++;
    }
    /* The continuation count is of the bytes' own codes: a refined lead never becomes one. */
    Py_ssize_t continuation = 0;
    unsigned char continuation_code = codes[0x80];
    for (Py_ssize_t i = 0; i < n; i++) continuation += codes[w[i]] == continuation_code;
    return continuation;
}

/* context.detect_script: Latin unless other letters make a third of the window's
 * non-space characters; then the first of the most frequent (a new reference). */
static PyObject *window_script(const ScanTable *t, const unsigned char *w, Py_ssize_t n, Py_ssize_t spaces) {
    unsigned char any = 0; /* no early exit: the OR of every byte vectorises */
    for (Py_ssize_t i = 0; i < n; i++) any |= w[i];
    if (any < 0x80) return Py_NewRef(t->latin);
    Py_ssize_t per_code[256] = {0};
    Py_ssize_t continuation = census(w, n, t->script_codes, t->e0_next, t->e1_next, t->e0_lead, t->e1_lead, per_code);
    Py_ssize_t letters = 0, best = 0;
    for (Py_ssize_t k = 0; k < t->letter_count; k++) {
        Py_ssize_t count = per_code[t->letters[k]];
        letters += count;
        if (count > per_code[t->letters[best]]) best = k;
    }
    if (3 * letters < n - continuation - spaces) return Py_NewRef(t->latin);
    return Py_NewRef(PyTuple_GET_ITEM(t->letter_scripts, best));
}

/* context.estimate_view_tokens, the same double operations in the same order. */
static Py_ssize_t estimate_tokens(const ScanTable *t, Py_ssize_t chars, Py_ssize_t utf8, Py_ssize_t size,
                                  Py_ssize_t words, Py_ssize_t alnum, Py_ssize_t digits, Py_ssize_t spaces) {
    Py_ssize_t punct = size - alnum - spaces;
    double in_window = t->per_alnum * (double)alnum + t->per_word * (double)words + t->per_digit * (double)digits +
                       t->per_punct * (double)(punct > 0 ? punct : 0);
    double scale = size ? (double)utf8 / (double)size : 0.0;
    double extra = (double)(utf8 - chars) / t->extra_bytes_per_token;
    Py_ssize_t estimate = (Py_ssize_t)(in_window * scale + extra + 0.5);
    Py_ssize_t floor = chars / t->max_chars_per_token;
    if (estimate < floor) estimate = floor;
    return estimate > 1 ? estimate : 1;
}

static PyMethodDef ScanTable_methods[] = {
    {"set_signals", (PyCFunction)ScanTable_set_signals, METH_VARARGS,
     "set_signals(coefficients, max_chars_per_token, codes, e0_next, e1_next, letters, e0_lead, e1_lead, latin, "
     "letter_scripts, harm_lanes, harm_categories): read_prompt() then adds the request-level signals"},
    {"set_blocks", (PyCFunction)ScanTable_set_blocks, METH_VARARGS,
     "set_blocks(digest, block_chars, max_blocks): read_prompt() then adds the prompt's chained prefix-block "
     "hashes (as block_hashes())"},
    {"set_cues", (PyCFunction)ScanTable_set_cues, METH_VARARGS,
     "set_cues(alarming, violent, crime, targets, group, person, cue_words, reach): scan() then returns "
     "the safety cues' word facts for alarming windows"},
    {"set_markers", (PyCFunction)ScanTable_set_markers, METH_VARARGS,
     "set_markers(stack_texts, error_texts, suffixes, error_words, lanes, bits, ask_words, ask_reach): "
     "what scan() reads the code markers with (router.context.marker_settings)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *scan_window(const ScanTable *t, const unsigned char *raw, Py_ssize_t n);

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan(window, table): two arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan: window must be bytes");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[1], &ScanTableType)) {
        PyErr_SetString(PyExc_TypeError, "scan: table must be a ScanTable");
        return NULL;
    }
    return scan_window((const ScanTable *)args[1], (const unsigned char *)PyBytes_AS_STRING(args[0]),
                       PyBytes_GET_SIZE(args[0]));
}

/* The window's counts, sums, cue facts and code markers: (lanes, word_count, features,
 * alnum, digits, spaces, cue_facts, code_markers); code_markers is None until set_markers. */
static PyObject *scan_window(const ScanTable *t, const unsigned char *raw, Py_ssize_t n) {
    /* Scratch: the translated window, the words, and the per-call set of distinct words
     * (open addressing over word indexes + 1). On the stack for the usual window. */
    unsigned char stack_text[4 * STACK_WORDS];
    Word stack_words[STACK_WORDS];
    uint32_t stack_seen[2 * STACK_WORDS];
    unsigned char *text = stack_text;
    Word *words = stack_words;
    uint32_t *seen = stack_seen;
    Py_ssize_t max_words = n / 2 + 1; /* a word and a separator at least, but the last */
    size_t seen_size = 16;
    while (seen_size < (size_t)max_words * 2) seen_size <<= 1;
    int heap = n + WORD_CHUNK > (Py_ssize_t)sizeof(stack_text) || max_words > STACK_WORDS ||
               seen_size > 2 * STACK_WORDS;
    if (heap) {
        if ((size_t)max_words > UINT32_MAX / 2) {
            PyErr_SetString(PyExc_ValueError, "scan: window too large");
            return NULL;
        }
        text = PyMem_Malloc(n + WORD_CHUNK);
        words = PyMem_Malloc(sizeof(Word) * max_words);
        seen = PyMem_Malloc(sizeof(uint32_t) * seen_size);
        if (!text || !words || !seen) {
            PyMem_Free(text);
            PyMem_Free(words);
            PyMem_Free(seen);
            return PyErr_NoMemory();
        }
    }
    memset(seen, 0, sizeof(uint32_t) * seen_size);

    /* The translation maps separators to ' ' and digits to '0'; the words are the runs
     * between separators, found from bit masks (split_words) rather than by a branch per
     * byte, which the CPU mispredicted at every word's two ends (~200 times a window). */
    for (Py_ssize_t i = 0; i < n; i++) text[i] = t->translate[raw[i]];
    memset(text + n, ' ', WORD_CHUNK); /* whole chunks: the padding ends the last word at n */
    Py_ssize_t separators = 0;
    Py_ssize_t word_count = split_words(text, n, words, &separators);
    Py_ssize_t digits = count_either(text, n, '0', '0'), spaces = count_either(raw, n, ' ', '\n');

    /* Every word's hash first, each slot it will read asked of memory at once: the table
     * is 512 KB, so a lookup misses the CPU caches whenever other work ran since the last
     * request (as in a live router); issued together, the misses overlap instead of
     * queueing one after another in the loop below. The bigrams' slots likewise. */
    for (Py_ssize_t i = 0; i < word_count; i++) {
        Word *word = &words[i];
        word->state = padded_hash(text + word->start, word->length);
        __builtin_prefetch(&t->slots[nonzero(word->state) & t->mask]);
    }
    prefetch_bigrams(t, words, 0, word_count > t->bigram_head ? t->bigram_head : word_count);
    if (word_count > t->bigram_head) prefetch_bigrams(t, words, word_count - t->bigram_tail, word_count);

    Py_ssize_t distinct = 0;
    int lexicon[MAX_LEXICON_LANES] = {0};
    int64_t sums[MAX_CLASS_LANES] = {0};
    size_t seen_mask = seen_size - 1;
    for (Py_ssize_t i = 0; i < word_count; i++) {
        Word *word = &words[i];
        uint64_t hash = nonzero(word->state);
        size_t slot = hash & seen_mask;
        int repeat = 0;
        while (seen[slot]) {
            const Word *other = &words[seen[slot] - 1];
            if (other->length == word->length && other->state == word->state &&
                same_padded(text + other->start, text + word->start, word->length)) {
                repeat = 1;
                break;
            }
            slot = (slot + 1) & seen_mask;
        }
        if (repeat) { /* each distinct word counts once */
            word->mask = words[seen[slot] - 1].mask;
            continue;
        }
        seen[slot] = (uint32_t)(i + 1);
        distinct++;
        const Entry *e = lookup(t, text, hash, word, NULL);
        word->mask = e ? e->lexicon : 0;
        if (!e) continue;
        for (uint32_t bits = e->lexicon; bits; bits &= bits - 1) lexicon[__builtin_ctz(bits)]++;
        add_classes(sums, e);
    }

    PyObject *cues = Py_None;
    Py_INCREF(cues);
    uint32_t present = 0;
    for (int k = 0; k < t->lexicon_lanes; k++) present |= (uint32_t)(lexicon[k] > 0) << k;
    if (present & t->alarming) {
        Py_DECREF(cues);
        cues = cue_facts(t, text, words, word_count, present);
        if (!cues) goto fail_scratch;
    }

    PyObject *markers = Py_None;
    Py_INCREF(markers);
    if (t->markers_set) {
        long bits = code_markers(t, raw, text, n, words, word_count, present);
        Py_DECREF(markers);
        markers = bits < 0 ? PyErr_NoMemory() : PyLong_FromLong(bits);
        if (!markers) {
            Py_DECREF(cues);
            goto fail_scratch;
        }
    }

    Py_ssize_t features;
    if (word_count > t->bigram_head) {
        add_bigrams(t, text, words, 0, t->bigram_head, sums);
        add_bigrams(t, text, words, word_count - t->bigram_tail, word_count, sums);
        features = distinct + (t->bigram_head - 1) + (t->bigram_tail - 1);
    } else {
        add_bigrams(t, text, words, 0, word_count, sums);
        features = word_count ? distinct + word_count - 1 : 0;
    }
    if (heap) {
        PyMem_Free(text);
        PyMem_Free(words);
        PyMem_Free(seen);
    }

    PyObject *lanes = PyTuple_New(t->lexicon_lanes + t->class_lanes);
    if (!lanes) {
        Py_DECREF(cues);
        Py_DECREF(markers);
        return NULL;
    }
    for (int k = 0; k < t->lexicon_lanes; k++) {
        PyObject *v = PyLong_FromLong(lexicon[k]);
        if (!v) goto fail;
        PyTuple_SET_ITEM(lanes, k, v);
    }
    for (int k = 0; k < t->class_lanes; k++) {
        PyObject *v = PyLong_FromLongLong(sums[k]);
        if (!v) goto fail;
        PyTuple_SET_ITEM(lanes, t->lexicon_lanes + k, v);
    }
    /* Built by hand: Py_BuildValue parses its format string on every call. */
    Py_ssize_t counts[5] = {word_count, features, n - separators, digits, spaces};
    PyObject *result = PyTuple_New(8);
    if (!result) goto fail;
    PyTuple_SET_ITEM(result, 0, lanes);
    PyTuple_SET_ITEM(result, 6, cues);
    PyTuple_SET_ITEM(result, 7, markers);
    for (int k = 0; k < 5; k++) {
        PyObject *v = PyLong_FromSsize_t(counts[k]);
        if (!v) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, k + 1, v);
    }
    return result;
fail:
    Py_DECREF(lanes);
    Py_DECREF(cues);
    Py_DECREF(markers);
    return NULL;
fail_scratch:
    if (heap) {
        PyMem_Free(text);
        PyMem_Free(words);
        PyMem_Free(seen);
    }
    return NULL;
}

/* ---- prompt-wide passes over the str itself (no UTF-8 copy of a long prompt) ---- */

/* utf8_length(text) -> the length of text.encode("utf-8", "surrogatepass"), counted
 * (utf8_extra), never encoded. */
VECTOR_CLONES static Py_ssize_t utf8_extra_of(int kind, const void *data, Py_ssize_t length);
#define COUNT_RUN 1024 /* characters counted in 16-bit lanes: at most 2 extra bytes each */
#define CHUNK 65536

static PyObject *utf8_length(PyObject *module, PyObject *text) {
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "utf8_length: text must be a str");
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text)) return PyLong_FromSsize_t(n);
    return PyLong_FromSsize_t(n + utf8_extra_of(PyUnicode_KIND(text), PyUnicode_DATA(text), n));
}

/* A block's canonical bytes: its characters at the narrowest fixed width that holds them
 * all (1 byte each if all are below U+0100, 2 little-endian if below U+10000, else 4),
 * i.e. how CPython would store the block as a str of its own. That depends on the
 * block's characters only, never on how the prompt's strings are stored or cut, and is
 * usually a string's own memory (no copy).
 *
 * The prompt is a sequence of strings (a message's role marker, its text, ...) read as
 * one: a block may span several of them. */
#if PY_BIG_ENDIAN
#define IN_PLACE 0 /* stored big-endian: always copy, little-endian */
#else
#define IN_PLACE 1
#endif

typedef struct {
    int kind;  /* 1, 2 or 4 bytes a character */
    int ascii; /* every character below U+0080 (the str's own flag): no UTF-8 to count */
    const void *data;
    Py_ssize_t length;
} Segment;

#define STACK_SEGMENTS 16

/* The strings of `parts` (a tuple) as segments: in `stack` when they fit, else in memory
 * the caller frees with free_segments. NULL with an exception set when a part is not a
 * str (`who` names the function). */
static Segment *read_segments(PyObject *parts, Segment *stack, const char *who) {
    Py_ssize_t count = PyTuple_GET_SIZE(parts);
    Segment *segments = stack;
    if (count > STACK_SEGMENTS && !(segments = PyMem_Malloc(sizeof(Segment) * count))) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *part = PyTuple_GET_ITEM(parts, k);
        if (!PyUnicode_Check(part)) {
            if (segments != stack) PyMem_Free(segments);
            PyErr_Format(PyExc_TypeError, "%s: every part must be a str", who);
            return NULL;
        }
        segments[k].kind = PyUnicode_KIND(part);
        segments[k].ascii = PyUnicode_IS_ASCII(part);
        segments[k].data = PyUnicode_DATA(part);
        segments[k].length = PyUnicode_GET_LENGTH(part);
    }
    return segments;
}

static void free_segments(Segment *segments, Segment *stack) {
    if (segments != stack) PyMem_Free(segments);
}

/* The OR of characters [start, start + n) of a segment: below 2^k exactly when all are. */
VECTOR_CLONES static Py_UCS4 or_of(const Segment *g, Py_ssize_t start, Py_ssize_t n) {
    Py_UCS4 top = 0;
    if (g->kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)g->data + start;
        Py_UCS1 t = 0;
        for (Py_ssize_t i = 0; i < n; i++) t |= p[i];
        top = t;
    } else if (g->kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *p = (const Py_UCS2 *)g->data + start;
        Py_UCS2 t = 0;
        for (Py_ssize_t i = 0; i < n; i++) t |= p[i];
        top = t;
    } else {
        const Py_UCS4 *p = (const Py_UCS4 *)g->data + start;
        for (Py_ssize_t i = 0; i < n; i++) top |= p[i];
    }
    return top;
}

#define CONVERT(TYPE_IN, TYPE_OUT)                                                             \
    do {                                                                                       \
        const TYPE_IN *p = (const TYPE_IN *)g->data + start;                                   \
        TYPE_OUT *o = (TYPE_OUT *)out;                                                         \
        for (Py_ssize_t i = 0; i < n; i++) o[i] = (TYPE_OUT)p[i];                              \
    } while (0)

/* Characters [start, start + n) of a segment written to `out` at `width` bytes each
 * (native byte order; the caller makes it little-endian). */
VECTOR_CLONES static void write_as(int width, const Segment *g, Py_ssize_t start, Py_ssize_t n, unsigned char *out) {
    if (g->kind == width) {
        memcpy(out, (const char *)g->data + (size_t)start * width, (size_t)n * width);
    } else if (g->kind == PyUnicode_1BYTE_KIND) {
        if (width == 2) CONVERT(Py_UCS1, uint16_t);
        else CONVERT(Py_UCS1, uint32_t);
    } else if (g->kind == PyUnicode_2BYTE_KIND) {
        if (width == 1) CONVERT(Py_UCS2, uint8_t);
        else CONVERT(Py_UCS2, uint32_t);
    } else {
        if (width == 1) CONVERT(Py_UCS4, uint8_t);
        else CONVERT(Py_UCS4, uint16_t);
    }
}

/* A wide block's characters, read once for their OR (the block's width) while they are
 * written one width narrower: more than half the blocks of long wide prompts are all
 * ASCII or Latin-1 (a str is stored wide for one character anywhere in it), and for those
 * the narrowed copy is the block's canonical bytes. A block that really is wide wastes
 * the writes (the copy truncates; it is used only when the OR says every character fits). */
VECTOR_CLONES static Py_UCS4 ucs2_or_narrowed(const Py_UCS2 *p, Py_ssize_t n, uint8_t *narrow) {
    Py_UCS2 top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        top |= p[i];
        narrow[i] = (uint8_t)p[i];
    }
    return top;
}

VECTOR_CLONES static Py_UCS4 ucs4_or_narrowed(const Py_UCS4 *p, Py_ssize_t n, uint16_t *narrow) {
    Py_UCS4 top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        top |= p[i];
        narrow[i] = (uint16_t)p[i];
    }
    return top;
}

/* canonical_block for a block inside one segment, the usual case (a block spans two only
 * where one message ends and the next begins), with `extra` counted on the canonical
 * bytes, the narrowest copy, while they are in the L1 cache, and only when the OR says
 * there is something to count. Little-endian only: the copies are in native order. */
#if IN_PLACE
static const unsigned char *one_segment_block(const Segment *g, Py_ssize_t lo, Py_ssize_t n, unsigned char *out,
                                              Py_ssize_t *size, Py_ssize_t *extra) {
    const unsigned char *bytes;
    Py_UCS4 top;
    int width;
    if (g->kind == PyUnicode_1BYTE_KIND) {
        bytes = (const unsigned char *)g->data + lo;
        width = 1;
        top = g->ascii ? 0 : 0x80; /* not ASCII: count (counting costs what an OR would) */
    } else if (g->kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *p = (const Py_UCS2 *)g->data + lo;
        top = ucs2_or_narrowed(p, n, out);
        width = top < 0x100 ? 1 : 2;
        bytes = width == 1 ? out : (const unsigned char *)p;
    } else {
        const Py_UCS4 *p = (const Py_UCS4 *)g->data + lo;
        top = ucs4_or_narrowed(p, n, (uint16_t *)out);
        width = top < 0x100 ? 1 : top < 0x10000 ? 2 : 4;
        if (width == 1) { /* the 2-byte copy narrowed again, from the L1 cache */
            const Segment copy = {PyUnicode_2BYTE_KIND, 0, out, n};
            write_as(1, &copy, 0, n, out + 2 * n);
        }
        bytes = width == 1 ? out + 2 * n : width == 2 ? out : (const unsigned char *)p;
    }
    if (extra && top >= 0x80) *extra += utf8_extra_of(width, bytes, n);
    *size = n * width;
    return bytes;
}
#endif

/* The canonical bytes of characters [start, start + n) of the segments read as one
 * string: a pointer into a segment's memory when the block lies in one segment stored at
 * its width, else into `out` (room for 4 bytes a character). Sets *size.
 *
 * With `extra`, adds the block's UTF-8 bytes beyond one a character to it, so read_prompt
 * reads a long prompt's memory once for both its hashes and its UTF-8 length (a second
 * pass over ~60 KB cost a few µs). The block's OR, which its width needs anyway, says
 * whether there is anything to count: more than half the blocks of the bench's long
 * non-ASCII prompts are all ASCII (a str is stored wide for one character anywhere in
 * it). The others are counted right after, from the L1 cache. A block inside one string
 * (most are) takes one_segment_block's single pass instead. */
static const unsigned char *canonical_block(const Segment *segments, Py_ssize_t count, Py_ssize_t start,
                                            Py_ssize_t n, unsigned char *out, Py_ssize_t *size,
                                            Py_ssize_t *extra) {
    Py_UCS4 top = 0, latin = 0;
    Py_ssize_t at = 0, first = -1, pieces = 0;
#if IN_PLACE
    for (Py_ssize_t k = 0; k < count; at += segments[k].length, k++) {
        if (start >= at + segments[k].length) continue;
        if (start + n <= at + segments[k].length) return one_segment_block(&segments[k], start - at, n, out, size, extra);
        break;
    }
    at = 0;
#endif
    for (Py_ssize_t k = 0; k < count; at += segments[k].length, k++) {
        Py_ssize_t lo = start > at ? start - at : 0, hi = start + n - at;
        if (hi > segments[k].length) hi = segments[k].length;
        if (hi <= lo) continue;
        if (first < 0) first = k;
        pieces++;
        /* A 1-byte segment's characters are all below U+0100: they never widen a block
         * (their OR only matters for the UTF-8 count). */
        if (segments[k].kind != PyUnicode_1BYTE_KIND) top |= or_of(&segments[k], lo, hi - lo);
        else if (extra && !segments[k].ascii) latin |= or_of(&segments[k], lo, hi - lo);
    }
    if (extra && (top | latin) >= 0x80) {
        at = 0;
        for (Py_ssize_t k = 0; k < count; at += segments[k].length, k++) {
            Py_ssize_t lo = start > at ? start - at : 0, hi = start + n - at;
            if (hi > segments[k].length) hi = segments[k].length;
            if (hi <= lo || segments[k].ascii) continue;
            *extra += utf8_extra_of(segments[k].kind, (const char *)segments[k].data + lo * segments[k].kind, hi - lo);
        }
    }
    int width = top < 0x100 ? 1 : top < 0x10000 ? 2 : 4;
    *size = n * width;
    if (pieces == 1 && segments[first].kind == width && IN_PLACE) {
        Py_ssize_t offset = start;
        for (Py_ssize_t k = 0; k < first; k++) offset -= segments[k].length;
        return (const unsigned char *)segments[first].data + (size_t)offset * width;
    }
    at = 0;
    unsigned char *o = out;
    for (Py_ssize_t k = 0; k < count; at += segments[k].length, k++) {
        Py_ssize_t lo = start > at ? start - at : 0, hi = start + n - at;
        if (hi > segments[k].length) hi = segments[k].length;
        if (hi <= lo) continue;
        write_as(width, &segments[k], lo, hi - lo, o);
        o += (hi - lo) * width;
    }
#if PY_BIG_ENDIAN
    for (Py_ssize_t i = 0; i < n && width > 1; i++) { /* to little-endian */
        unsigned char *c = out + i * width;
        for (int a = 0, b = width - 1; a < b; a++, b--) {
            unsigned char x = c[a];
            c[a] = c[b];
            c[b] = x;
        }
    }
#endif
    return out;
}

/* Chains *seed through one block: the C function when its address was given (no Python
 * call, memoryview or int a block: those cost ~0.5 µs, 8x the hashing of a
 * 2,048-character block itself), else the Python digest. 0, or -1 with an exception. */
static int digest_block(SeededHash direct, PyObject *digest, const unsigned char *bytes, Py_ssize_t size,
                        uint64_t *seed) {
    if (direct) {
        *seed = direct(bytes, (size_t)size, *seed);
        return 0;
    }
    PyObject *view = PyMemoryView_FromMemory((char *)bytes, size, PyBUF_READ);
    PyObject *seed_obj = PyLong_FromUnsignedLongLong(*seed);
    PyObject *call[2] = {view, seed_obj};
    PyObject *h = view && seed_obj ? PyObject_Vectorcall(digest, call, 2, NULL) : NULL;
    if (view && Py_REFCNT(view) > 1) { /* the digest kept the view: cut it off the buffer */
        PyObject *released = PyObject_CallMethod(view, "release", NULL);
        if (!released) Py_CLEAR(h);
        Py_XDECREF(released);
    }
    Py_XDECREF(view);
    Py_XDECREF(seed_obj);
    if (!h) return -1;
    unsigned long long value = PyLong_AsUnsignedLongLong(h);
    Py_DECREF(h);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *seed = value;
    return 0;
}

/* The chained hashes of the first `blocks` blocks of `step` characters, a new tuple of
 * 63-bit ints: h_i = digest(canonical(block_i), h_{i-1}) >> 1, chained on the full 64
 * bits. With `extra`, the blocks' UTF-8 bytes beyond one a character are added to it. */
#define STACK_BLOCK_BYTES (4 * 2048)
static PyObject *chain_blocks(SeededHash direct, PyObject *digest, const Segment *segments, Py_ssize_t count,
                              Py_ssize_t step, Py_ssize_t blocks, Py_ssize_t *extra) {
    PyObject *hashes = PyTuple_New(blocks);
    if (!hashes || !blocks) return hashes;
    _Alignas(16) unsigned char stack_buffer[STACK_BLOCK_BYTES]; /* one_segment_block writes 2-byte units */
    unsigned char *buffer = 4 * step <= STACK_BLOCK_BYTES ? stack_buffer : PyMem_Malloc(4 * (size_t)step);
    if (!buffer) {
        Py_DECREF(hashes);
        return PyErr_NoMemory();
    }
    uint64_t seed = 0;
    for (Py_ssize_t b = 0; b < blocks; b++) {
        Py_ssize_t size;
        const unsigned char *bytes = canonical_block(segments, count, b * step, step, buffer, &size, extra);
        PyObject *shifted = digest_block(direct, digest, bytes, size, &seed) < 0 ? NULL
                                                                                : PyLong_FromUnsignedLongLong(seed >> 1);
        if (!shifted) {
            Py_CLEAR(hashes);
            break;
        }
        PyTuple_SET_ITEM(hashes, b, shifted);
    }
    if (buffer != stack_buffer) PyMem_Free(buffer);
    return hashes;
}

/* block_hashes(parts, digest, block_chars, max_blocks) -> tuple of 63-bit ints.
 * parts: a tuple of str read as one string. Chained over every full block of block_chars
 * characters (at most max_blocks; chain_blocks); digest is xxhash.xxh3_64_intdigest, or
 * (an int) the address of the C function it calls: an address is called as given, so
 * only router.context passes one, after checking it against the digest (xxh3_address). */
static PyObject *block_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    SeededHash direct;
    if (nargs != 4 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "block_hashes(parts: tuple[str, ...], digest, block_chars, max_blocks)");
        return NULL;
    }
    if (read_digest(args[1], &direct, "block_hashes") < 0) return NULL;
    Py_ssize_t step = PyLong_AsSsize_t(args[2]), most = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (step < 1 || most < 0) {
        PyErr_SetString(PyExc_ValueError, "block_hashes: block_chars >= 1 and max_blocks >= 0");
        return NULL;
    }
    PyObject *parts = args[0];
    Py_ssize_t count = PyTuple_GET_SIZE(parts), total = 0;
    Segment stack_segments[STACK_SEGMENTS];
    Segment *segments = read_segments(parts, stack_segments, "block_hashes");
    if (!segments) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) total += segments[k].length;
    Py_ssize_t blocks = total / step < most ? total / step : most;
    PyObject *hashes = chain_blocks(direct, args[1], segments, count, step, blocks, NULL);
    free_segments(segments, stack_segments);
    return hashes;
}

/* ---- the whole read of a prompt: window ends, UTF-8 length, scan ---- */

/* Code point c as UTF-8 (a surrogate in its 3-byte form, as 'surrogatepass' writes it). */
static inline int put_utf8(Py_UCS4 c, unsigned char *o) {
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* UTF-8 of characters [from, to) of the segments read as one string, into `out`, stopping
 * once `limit` bytes are written (the last character may run past it: room for 3 more). */
/* One loop a width (no PyUnicode_READ switch a character), and a run of ASCII
 * characters taken 8 bytes at a time (HIGH: the bits that are 0 in 8 bytes of ASCII
 * characters at this width): most of a window's characters are ASCII even in a str
 * stored wide. A group is taken whole only when each of its characters would have been
 * written one by one (written + G <= limit), so the result is the same bytes. */
#define ENCODE(TYPE, HIGH)                                                                     \
    do {                                                                                       \
        const TYPE *p = (const TYPE *)segments[k].data;                                        \
        enum { G = 8 / sizeof(TYPE) };                                                         \
        Py_ssize_t i = lo;                                                                     \
        while (i < hi && written < limit) {                                                    \
            uint64_t group;                                                                    \
            if (i + G <= hi && written + G <= limit && (memcpy(&group, p + i, 8), !(group & (HIGH)))) { \
                for (int j = 0; j < G; j++) out[written + j] = (unsigned char)p[i + j];        \
                i += G;                                                                        \
                written += G;                                                                  \
            } else {                                                                           \
                written += put_utf8(p[i++], out + written);                                    \
            }                                                                                  \
        }                                                                                      \
    } while (0)

static Py_ssize_t encode_range(const Segment *segments, Py_ssize_t count, Py_ssize_t from, Py_ssize_t to,
                               unsigned char *out, Py_ssize_t limit) {
    Py_ssize_t written = 0, at = 0;
    for (Py_ssize_t k = 0; k < count && written < limit; at += segments[k].length, k++) {
        Py_ssize_t lo = from > at ? from - at : 0, hi = to - at;
        if (hi > segments[k].length) hi = segments[k].length;
        if (segments[k].ascii) { /* its characters are its UTF-8 */
            Py_ssize_t n = hi - lo < limit - written ? hi - lo : limit - written;
            if (n > 0) memcpy(out + written, (const Py_UCS1 *)segments[k].data + lo, (size_t)n);
            written += n > 0 ? n : 0;
        } else if (segments[k].kind == PyUnicode_1BYTE_KIND) ENCODE(Py_UCS1, 0x8080808080808080ULL);
        else if (segments[k].kind == PyUnicode_2BYTE_KIND) ENCODE(Py_UCS2, 0xFF80FF80FF80FF80ULL);
        else ENCODE(Py_UCS4, 0xFFFFFF80FFFFFF80ULL);
    }
    return written;
}
#undef ENCODE

/* Bytes beyond one a character in the UTF-8 of `length` characters stored `kind` bytes
 * each. One loop per width, simple enough for the compiler to vectorise, each counting in
 * lanes as narrow as the characters: 8-bit lanes over runs of 255 bytes, 16-bit over
 * runs of COUNT_RUN (at most 2 a character: a lane cannot overflow). */
VECTOR_CLONES static Py_ssize_t utf8_extra_of(int kind, const void *data, Py_ssize_t length) {
    Py_ssize_t extra = 0;
    if (kind == PyUnicode_1BYTE_KIND) { /* a byte from 0x80 up has its sign bit set */
        const int8_t *p = data;
        for (Py_ssize_t at = 0; at < length; at += 255) {
            Py_ssize_t end = length - at < 255 ? length : at + 255;
            uint8_t run = 0;
            for (Py_ssize_t i = at; i < end; i++) run += (uint8_t)(p[i] < 0);
            extra += run;
        }
    } else if (kind == PyUnicode_2BYTE_KIND) {
        /* Compared as signed numbers with the top bit flipped: the vector units have signed
         * compares only, and the compiler otherwise emulates unsigned ones in 3 steps. */
        const Py_UCS2 *p = data;
        const int16_t above_7f = (int16_t)(0x7F ^ 0x8000), above_7ff = (int16_t)(0x7FF ^ 0x8000);
        for (Py_ssize_t at = 0; at < length; at += COUNT_RUN) {
            Py_ssize_t end = length - at < COUNT_RUN ? length : at + COUNT_RUN;
            uint16_t run = 0;
            for (Py_ssize_t i = at; i < end; i++) {
                int16_t c = (int16_t)(p[i] ^ 0x8000);
                run += (uint16_t)((c > above_7f) + (c > above_7ff));
            }
            extra += run;
        }
    } else { /* code points are below 2^21: signed compares as they are */
        const int32_t *p = data;
        for (Py_ssize_t at = 0; at < length; at += CHUNK) {
            Py_ssize_t end = length - at < CHUNK ? length : at + CHUNK;
            uint32_t chunk = 0;
            for (Py_ssize_t i = at; i < end; i++)
                chunk += (uint32_t)(p[i] > 0x7F) + (uint32_t)(p[i] > 0x7FF) + (uint32_t)(p[i] > 0xFFFF);
            extra += chunk;
        }
    }
    return extra;
}


#define MAX_WINDOW 4096

/* UTF-8 bytes beyond one a character of the segments' characters from `from` on (read
 * as one string). */
static Py_ssize_t extra_from(const Segment *segments, Py_ssize_t count, Py_ssize_t from) {
    Py_ssize_t extra = 0, at = 0;
    for (Py_ssize_t k = 0; k < count; at += segments[k].length, k++) {
        Py_ssize_t lo = from > at ? from - at : 0;
        if (lo >= segments[k].length || segments[k].ascii) continue;
        extra += utf8_extra_of(segments[k].kind, (const char *)segments[k].data + lo * segments[k].kind,
                               segments[k].length - lo);
    }
    return extra;
}

/* read_prompt(parts, table, head, tail) -> the TextView tuple of router/context.py:
 * (parts, chars, utf8_bytes, window, word_count, features, lanes, alnum, digits, spaces,
 * cue_facts, code_markers, prompt_tokens, script, safety, question, prefix_hashes). The
 * window is the prompt's UTF-8 when it is at most head + 1 + tail bytes, else its first
 * `head` bytes, b"\n" and its last `tail` bytes; only those ends are ever encoded, and the
 * parts are never joined. The prefix blocks (set_blocks) are hashed block by block, each
 * block's UTF-8 counted while it is in the cache (canonical_block), so the prompt's memory
 * is read once for both. The Python it mirrors: context.read_parts. */
static PyObject *view_of(const ScanTable *t, const Segment *segments, Py_ssize_t count, PyObject *parts,
                         Py_ssize_t head, Py_ssize_t tail);

static PyObject *read_prompt(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyObject_TypeCheck(args[1], &ScanTableType)) {
        PyErr_SetString(PyExc_TypeError, "read_prompt(parts: tuple[str, ...], table: ScanTable, head, tail)");
        return NULL;
    }
    Py_ssize_t head = PyLong_AsSsize_t(args[2]), tail = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (head < 0 || tail < 0 || head + 1 + tail > MAX_WINDOW) {
        PyErr_Format(PyExc_ValueError, "read_prompt: head and tail >= 0, head + 1 + tail <= %d", MAX_WINDOW);
        return NULL;
    }
    const ScanTable *t = (const ScanTable *)args[1];
    if (!t->signals_set || !t->blocks_set) {
        PyErr_SetString(PyExc_ValueError, "read_prompt: the table has no set_signals or no set_blocks");
        return NULL;
    }
    PyObject *parts = args[0];
    Segment stack_segments[STACK_SEGMENTS];
    Segment *segments = read_segments(parts, stack_segments, "read_prompt");
    if (!segments) return NULL;
    PyObject *view = view_of(t, segments, PyTuple_GET_SIZE(parts), parts, head, tail);
    free_segments(segments, stack_segments);
    return view;
}

/* read_prompt's work on the prompt as segments (the caller owns them and checked the
 * table and the window's sizes); `parts` goes into the view as it is. */
static PyObject *view_of(const ScanTable *t, const Segment *segments, Py_ssize_t count, PyObject *parts,
                         Py_ssize_t head, Py_ssize_t tail) {
    Py_ssize_t chars = 0, extra = 0;
    for (Py_ssize_t k = 0; k < count; k++) chars += segments[k].length;
    Py_ssize_t blocks = chars / t->block_chars < t->max_blocks ? chars / t->block_chars : t->max_blocks;
    PyObject *hashes = chain_blocks(t->block_hash, t->block_digest, segments, count, t->block_chars, blocks, &extra);
    if (!hashes) return NULL;
    Py_ssize_t utf8 = chars + extra + extra_from(segments, count, blocks * t->block_chars);
    unsigned char window[MAX_WINDOW + 8], ends[4 * MAX_WINDOW + 8];
    Py_ssize_t n;
    if (utf8 <= head + 1 + tail) {
        n = encode_range(segments, count, 0, chars, window, utf8);
    } else { /* n characters encode to at least n bytes: the ends come from the end characters */
        encode_range(segments, count, 0, head < chars ? head : chars, window, head);
        window[head] = '\n';
        Py_ssize_t from = chars > tail ? chars - tail : 0;
        Py_ssize_t got = encode_range(segments, count, from, chars, ends, 4 * tail + 4);
        memcpy(window + head + 1, ends + got - tail, (size_t)tail);
        n = head + 1 + tail;
    }
    PyObject *scanned = scan_window(t, window, n);
    if (!scanned) {
        Py_DECREF(hashes);
        return NULL;
    }
    /* scanned: (lanes, word_count, features, alnum, digits, spaces, cue_facts, code_markers) */
    PyObject *lanes = PyTuple_GET_ITEM(scanned, 0);
    Py_ssize_t words = PyLong_AsSsize_t(PyTuple_GET_ITEM(scanned, 1)), alnum = PyLong_AsSsize_t(PyTuple_GET_ITEM(scanned, 3));
    Py_ssize_t digits = PyLong_AsSsize_t(PyTuple_GET_ITEM(scanned, 4)), spaces = PyLong_AsSsize_t(PyTuple_GET_ITEM(scanned, 5));
    PyObject *harm = PyTuple_GET_ITEM(t->harm_categories, t->harm_count); /* none, unless a harm lane fired */
    for (int k = 0; k < t->harm_count; k++)
        if (PyLong_AsLong(PyTuple_GET_ITEM(lanes, t->harm_lanes[k]))) {
            harm = PyTuple_GET_ITEM(t->harm_categories, k);
            break;
        }
    PyObject *result = PyTuple_New(17);
    PyObject *raw = PyBytes_FromStringAndSize((const char *)window, n);
    PyObject *chars_obj = PyLong_FromSsize_t(chars), *utf8_obj = PyLong_FromSsize_t(utf8);
    PyObject *tokens = PyLong_FromSsize_t(estimate_tokens(t, chars, utf8, n, words, alnum, digits, spaces));
    PyObject *script = window_script(t, window, n, spaces);
    if (!result || !raw || !chars_obj || !utf8_obj || !tokens || !script || PyErr_Occurred()) {
        Py_XDECREF(result);
        Py_XDECREF(raw);
        Py_XDECREF(chars_obj);
        Py_XDECREF(utf8_obj);
        Py_XDECREF(tokens);
        Py_XDECREF(script);
        Py_DECREF(scanned);
        Py_DECREF(hashes);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 12, tokens);
    PyTuple_SET_ITEM(result, 13, script);
    PyTuple_SET_ITEM(result, 14, Py_NewRef(harm));
    PyTuple_SET_ITEM(result, 15, PyBool_FromLong(memchr(window, '?', (size_t)n) != NULL));
    PyTuple_SET_ITEM(result, 16, hashes);
    PyTuple_SET_ITEM(result, 0, Py_NewRef(parts));
    PyTuple_SET_ITEM(result, 1, chars_obj);
    PyTuple_SET_ITEM(result, 2, utf8_obj);
    PyTuple_SET_ITEM(result, 3, raw);
    PyTuple_SET_ITEM(result, 4, Py_NewRef(PyTuple_GET_ITEM(scanned, 1)));
    PyTuple_SET_ITEM(result, 5, Py_NewRef(PyTuple_GET_ITEM(scanned, 2)));
    PyTuple_SET_ITEM(result, 6, Py_NewRef(PyTuple_GET_ITEM(scanned, 0)));
    for (int k = 3; k < 8; k++) PyTuple_SET_ITEM(result, k + 4, Py_NewRef(PyTuple_GET_ITEM(scanned, k)));
    Py_DECREF(scanned);
    return result;
}

/* ---- script detection: count UTF-8 lead bytes by script in one pass ---- */

/* script_census(window, codes, e0_next, e1_next, letters) -> (counts, continuation_bytes)
 *
 * codes maps every byte to a code (router/context.py's _SCRIPT_CODES): a script, "not a
 * letter", a continuation byte, or the E0/E1 lead bytes whose script the next byte names
 * (e0_next / e1_next map that next byte to a code; a lead at the window's end counts as
 * e0_next[0] / e1_next[0], bytes that are never a continuation). counts: how many
 * characters of each code in `letters`, in that order. The Python it mirrors:
 * router.context.python_script_census. */
static PyObject *script_census(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7) goto usage;
    for (int i = 0; i < 5; i++)
        if (!PyBytes_Check(args[i])) goto usage;
    if (PyBytes_GET_SIZE(args[1]) != 256 || PyBytes_GET_SIZE(args[2]) != 256 || PyBytes_GET_SIZE(args[3]) != 256)
        goto usage;
    long e0_lead = PyLong_AsLong(args[5]), e1_lead = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    const unsigned char *w = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *codes = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    const unsigned char *e0_next = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    const unsigned char *e1_next = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    const unsigned char *letters = (const unsigned char *)PyBytes_AS_STRING(args[4]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), lettered = PyBytes_GET_SIZE(args[4]);
    Py_ssize_t per_code[256] = {0};
    Py_ssize_t continuation = census(w, n, codes, e0_next, e1_next, (int)e0_lead, (int)e1_lead, per_code);
    PyObject *counts = PyTuple_New(lettered);
    if (!counts) return NULL;
    for (Py_ssize_t k = 0; k < lettered; k++) {
        PyObject *v = PyLong_FromSsize_t(per_code[letters[k]]);
        if (!v) {
            Py_DECREF(counts);
            return NULL;
        }
        PyTuple_SET_ITEM(counts, k, v);
    }
    PyObject *tail = PyLong_FromSsize_t(continuation), *result = tail ? PyTuple_New(2) : NULL;
    if (!result) {
        Py_XDECREF(tail);
        Py_DECREF(counts);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, counts);
    PyTuple_SET_ITEM(result, 1, tail);
    return result;
usage:
    PyErr_SetString(PyExc_TypeError,
                    "script_census(window, codes[256], e0_next[256], e1_next[256], letters, e0_lead, e1_lead)");
    return NULL;
}

/* ---- the scorer's last step: signal weights, the linear sum and the softmax ---- */

#include <math.h>

#define CLASSES 5
#define SIGNAL_GROUPS 6 /* token bucket, structured, script, safety, digits bucket, code markers */

#define MAX_TARGET_BITS 9 /* the target lists and "none" (router.scorer._TARGET_NAMES) */
#define MAX_SETTINGS 16
#define MAX_SAFETY_LANES 16

/* The safety cues' weights (ClassModel.set_cues; router/scorer.py's safety_cues names the
 * keys): each fixed key's class weights, and per-opening weights in dicts keyed by the
 * opening's bytes ("what is"). */
typedef struct {
    int set;
    int violent, crime, group, private_info, my; /* lanes */
    int safety[MAX_SAFETY_LANES], safety_count;
    int settings[MAX_SETTINGS], setting_count;
    int target_bits;
    int32_t violent_base[CLASSES], violent_targets[MAX_TARGET_BITS][CLASSES];
    int32_t crime_base[CLASSES], crime_targets[MAX_TARGET_BITS][CLASSES];
    int32_t setting_weights[MAX_SETTINGS][CLASSES];
    int32_t alarm_definition[CLASSES], definition[CLASSES];
    int32_t group_any[CLASSES], group_people[CLASSES], group_other[CLASSES];
    int32_t private_plain[CLASSES], private_my[CLASSES];
    PyObject *definition_openings; /* a set of bytes */
    PyObject *group_openings, *private_openings, *private_my_openings; /* bytes -> weights */
} CueWeights;

typedef struct {
    PyObject_HEAD
    double bias[CLASSES];
    double inv_scale;
    int lexicon_lanes;
    Py_ssize_t sizes[SIGNAL_GROUPS];
    int32_t *weights[SIGNAL_GROUPS]; /* [size][CLASSES] each */
    int32_t question[CLASSES];
    CueWeights cues;
} ClassModel;

static void ClassModel_dealloc(ClassModel *self) {
    for (int g = 0; g < SIGNAL_GROUPS; g++) PyMem_Free(self->weights[g]);
    Py_CLEAR(self->cues.definition_openings);
    Py_CLEAR(self->cues.group_openings);
    Py_CLEAR(self->cues.private_openings);
    Py_CLEAR(self->cues.private_my_openings);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* CLASSES weights from a sequence of ints into out. */
static int read_weights(PyObject *row, int32_t *out, const char *what) {
    PyObject *seq = PySequence_Fast(row, what);
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != CLASSES) {
        PyErr_Format(PyExc_ValueError, "%s: %d class weights expected", what, CLASSES);
        Py_DECREF(seq);
        return -1;
    }
    for (int k = 0; k < CLASSES; k++) {
        long w = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        if ((w == -1 && PyErr_Occurred()) || w < INT32_MIN || w > INT32_MAX) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_OverflowError, "%s: a weight must fit 32 bits", what);
            Py_DECREF(seq);
            return -1;
        }
        out[k] = (int32_t)w;
    }
    Py_DECREF(seq);
    return 0;
}

/* ClassModel(bias, inv_scale, lexicon_lanes, groups, question): groups are the six signal
 * groups in router.scorer order, each a list of per-value class weights. */
static int ClassModel_init(ClassModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"bias", "inv_scale", "lexicon_lanes", "groups", "question", NULL};
    PyObject *bias, *groups, *question;
    double inv_scale;
    int lexicon_lanes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OdiOO", kwlist, &bias, &inv_scale, &lexicon_lanes,
                                     &groups, &question))
        return -1;
    PyObject *b = PySequence_Fast(bias, "bias: a sequence of floats");
    if (!b) return -1;
    if (PySequence_Fast_GET_SIZE(b) != CLASSES) {
        Py_DECREF(b);
        PyErr_Format(PyExc_ValueError, "bias: %d classes expected", CLASSES);
        return -1;
    }
    for (int k = 0; k < CLASSES; k++) {
        self->bias[k] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(b, k));
        if (PyErr_Occurred()) {
            Py_DECREF(b);
            return -1;
        }
    }
    Py_DECREF(b);
    self->inv_scale = inv_scale;
    self->lexicon_lanes = lexicon_lanes;
    if (read_weights(question, self->question, "question") < 0) return -1;
    PyObject *g = PySequence_Fast(groups, "groups: a sequence of weight lists");
    if (!g) return -1;
    if (PySequence_Fast_GET_SIZE(g) != SIGNAL_GROUPS) {
        Py_DECREF(g);
        PyErr_Format(PyExc_ValueError, "groups: %d signal groups expected", SIGNAL_GROUPS);
        return -1;
    }
    for (int i = 0; i < SIGNAL_GROUPS; i++) {
        PyObject *rows = PySequence_Fast(PySequence_Fast_GET_ITEM(g, i), "groups: each a sequence");
        if (!rows) {
            Py_DECREF(g);
            return -1;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(rows);
        PyMem_Free(self->weights[i]);
        self->weights[i] = PyMem_Calloc(n ? n : 1, sizeof(int32_t) * CLASSES);
        self->sizes[i] = n;
        if (!self->weights[i]) {
            Py_DECREF(rows);
            Py_DECREF(g);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t r = 0; r < n; r++)
            if (read_weights(PySequence_Fast_GET_ITEM(rows, r), self->weights[i] + r * CLASSES, "groups") < 0) {
                Py_DECREF(rows);
                Py_DECREF(g);
                return -1;
            }
        Py_DECREF(rows);
    }
    Py_DECREF(g);
    return 0;
}

/* `count` lane numbers from a sequence into out; -1 with an exception when one is outside
 * the model's lexicon lanes. */
static int read_lanes(PyObject *row, int *out, int most, int lexicon_lanes, int *count, const char *what) {
    PyObject *seq = PySequence_Fast(row, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > most) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d lanes", what, most);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        long lane = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        if (lane < 0 || lane >= lexicon_lanes) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: lane %ld is not a lexicon lane", what, lane);
            Py_DECREF(seq);
            return -1;
        }
        out[k] = (int)lane;
    }
    Py_DECREF(seq);
    if (count) *count = (int)n;
    return 0;
}

/* Rows of CLASSES weights: exactly `n` of them (n < 0: as many as given, at most -n,
 * their count stored in *count). */
static int read_rows(PyObject *rows, int32_t (*out)[CLASSES], int n, int *count, const char *what) {
    PyObject *seq = PySequence_Fast(rows, what);
    if (!seq) return -1;
    Py_ssize_t got = PySequence_Fast_GET_SIZE(seq);
    if (n >= 0 ? got != n : got > -n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd rows of weights, expected %s%d", what, got, n >= 0 ? "" : "at most ",
                     n >= 0 ? n : -n);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t r = 0; r < got; r++)
        if (read_weights(PySequence_Fast_GET_ITEM(seq, r), out[r], what) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    Py_DECREF(seq);
    if (count) *count = (int)got;
    return 0;
}

/* ClassModel.set_cues(lanes, safety_lanes, setting_lanes, violent, crime, settings, fixed,
 * definition_openings, group_openings, private_openings, private_my_openings):
 * router.scorer.Scorer._cue_weights builds them. lanes: (violent, crime, group,
 * private, my); violent and crime: (base weights, weights per target bit); settings:
 * weights per setting lane; fixed: (alarm+definition, definition, group, group>people,
 * group>other, private, private+my) weights. */
static PyObject *ClassModel_set_cues(ClassModel *self, PyObject *args) {
    PyObject *lanes, *safety, *settings, *violent_base, *violent_targets, *crime_base, *crime_targets;
    PyObject *setting_weights, *fixed, *definition_openings, *group_openings, *private_openings, *private_my_openings;
    if (!PyArg_ParseTuple(args, "OOO(OO)(OO)OOO!O!O!O!", &lanes, &safety, &settings, &violent_base, &violent_targets,
                          &crime_base, &crime_targets, &setting_weights, &fixed, &PyFrozenSet_Type,
                          &definition_openings, &PyDict_Type, &group_openings, &PyDict_Type, &private_openings,
                          &PyDict_Type, &private_my_openings))
        return NULL;
    CueWeights *c = &self->cues;
    int five[5], count, bits, settings_count, fixed_count;
    int32_t fixed_rows[7][CLASSES];
    if (read_lanes(lanes, five, 5, self->lexicon_lanes, &count, "set_cues lanes") < 0) return NULL;
    if (count != 5) {
        PyErr_SetString(PyExc_ValueError, "set_cues lanes: (violent, crime, group, private, my)");
        return NULL;
    }
    if (read_lanes(safety, c->safety, MAX_SAFETY_LANES, self->lexicon_lanes, &c->safety_count, "set_cues safety") < 0 ||
        read_lanes(settings, c->settings, MAX_SETTINGS, self->lexicon_lanes, &settings_count, "set_cues settings") < 0 ||
        read_weights(violent_base, c->violent_base, "set_cues violent") < 0 ||
        read_rows(violent_targets, c->violent_targets, -MAX_TARGET_BITS, &bits, "set_cues violent targets") < 0 ||
        read_weights(crime_base, c->crime_base, "set_cues crime") < 0 ||
        read_rows(crime_targets, c->crime_targets, bits, NULL, "set_cues crime targets") < 0 ||
        read_rows(setting_weights, c->setting_weights, settings_count, NULL, "set_cues settings weights") < 0 ||
        read_rows(fixed, fixed_rows, 7, &fixed_count, "set_cues fixed") < 0)
        return NULL;
    c->violent = five[0];
    c->crime = five[1];
    c->group = five[2];
    c->private_info = five[3];
    c->my = five[4];
    c->setting_count = settings_count;
    c->target_bits = bits;
    memcpy(c->alarm_definition, fixed_rows[0], sizeof c->alarm_definition);
    memcpy(c->definition, fixed_rows[1], sizeof c->definition);
    memcpy(c->group_any, fixed_rows[2], sizeof c->group_any);
    memcpy(c->group_people, fixed_rows[3], sizeof c->group_people);
    memcpy(c->group_other, fixed_rows[4], sizeof c->group_other);
    memcpy(c->private_plain, fixed_rows[5], sizeof c->private_plain);
    memcpy(c->private_my, fixed_rows[6], sizeof c->private_my);
    Py_XSETREF(c->definition_openings, Py_NewRef(definition_openings));
    Py_XSETREF(c->group_openings, Py_NewRef(group_openings));
    Py_XSETREF(c->private_openings, Py_NewRef(private_openings));
    Py_XSETREF(c->private_my_openings, Py_NewRef(private_my_openings));
    c->set = 1;
    Py_RETURN_NONE;
}

static inline void add_row(int64_t *s, const int32_t *w) {
    for (int k = 0; k < CLASSES; k++) s[k] += w[k];
}

/* Add the weights `openings` holds for `opening` (none when it holds nothing). */
static int add_opening(int64_t *s, PyObject *openings, PyObject *opening) {
    PyObject *w = PyDict_GetItemWithError(openings, opening); /* borrowed */
    if (!w) return PyErr_Occurred() ? -1 : 0;
    int32_t row[CLASSES];
    if (read_weights(w, row, "set_cues openings") < 0) return -1;
    add_row(s, row);
    return 0;
}

static inline long lane_of(PyObject *lanes, int lane) { return PyLong_AsLong(PyTuple_GET_ITEM(lanes, lane)); }

/* router.scorer.safety_cues' keys' summed weights, from the C pass's cue facts
 * (violent targets, crime targets, word 1, word 2, group names people) and the lanes. */
static int cue_sums(const CueWeights *c, PyObject *lanes, PyObject *facts, int64_t *s) {
    if (!PyTuple_Check(facts) || PyTuple_GET_SIZE(facts) != 5) {
        PyErr_SetString(PyExc_TypeError, "class_scores: cue_facts must be the scan's 5-tuple");
        return -1;
    }
    long violent = PyLong_AsLong(PyTuple_GET_ITEM(facts, 0)), crime = PyLong_AsLong(PyTuple_GET_ITEM(facts, 1));
    PyObject *first = PyTuple_GET_ITEM(facts, 2), *second = PyTuple_GET_ITEM(facts, 3);
    int people = PyObject_IsTrue(PyTuple_GET_ITEM(facts, 4));
    if (PyErr_Occurred() || people < 0) return -1;
    if ((first != Py_None && !PyBytes_Check(first)) || (second != Py_None && !PyBytes_Check(second)) ||
        (first == Py_None && second != Py_None)) {
        PyErr_SetString(PyExc_TypeError, "class_scores: cue_facts' words must be bytes or None");
        return -1;
    }
    int any_verb = 0;
    if (lane_of(lanes, c->violent)) {
        any_verb = 1;
        add_row(s, c->violent_base);
        for (int b = 0; b < c->target_bits; b++)
            if (violent >> b & 1) add_row(s, c->violent_targets[b]);
    }
    if (lane_of(lanes, c->crime)) {
        any_verb = 1;
        add_row(s, c->crime_base);
        for (int b = 0; b < c->target_bits; b++)
            if (crime >> b & 1) add_row(s, c->crime_targets[b]);
    }
    int harm = any_verb;
    for (int k = 0; k < c->safety_count && !harm; k++) harm = lane_of(lanes, c->safety[k]) != 0;
    int group = lane_of(lanes, c->group) != 0, private_info = lane_of(lanes, c->private_info) != 0;
    /* The opening: words 1 and 2 ("what is"), word 1 alone, or nothing. */
    PyObject *opening = NULL;
    if (second != Py_None) {
        Py_ssize_t a = PyBytes_GET_SIZE(first), b = PyBytes_GET_SIZE(second);
        opening = PyBytes_FromStringAndSize(NULL, a + 1 + b);
        if (!opening) return -1;
        char *o = PyBytes_AS_STRING(opening);
        memcpy(o, PyBytes_AS_STRING(first), (size_t)a);
        o[a] = ' ';
        memcpy(o + a + 1, PyBytes_AS_STRING(second), (size_t)b);
    } else {
        opening = first == Py_None ? PyBytes_FromStringAndSize("", 0) : Py_NewRef(first);
        if (!opening) return -1;
    }
    int definition = 0;
    if (second != Py_None) {
        definition = PySet_Contains(c->definition_openings, opening);
        if (definition < 0) goto fail;
    }
    if (harm) {
        for (int k = 0; k < c->setting_count; k++)
            if (lane_of(lanes, c->settings[k])) add_row(s, c->setting_weights[k]);
        if (definition) add_row(s, c->alarm_definition);
    }
    if (definition) add_row(s, c->definition);
    if (group) {
        add_row(s, c->group_any);
        if (add_opening(s, c->group_openings, opening) < 0) goto fail;
        add_row(s, people ? c->group_people : c->group_other);
    }
    if (private_info) {
        int my = lane_of(lanes, c->my) != 0;
        add_row(s, my ? c->private_my : c->private_plain);
        if (add_opening(s, my ? c->private_my_openings : c->private_openings, opening) < 0) goto fail;
    }
    Py_DECREF(opening);
    return PyErr_Occurred() ? -1 : 0;
fail:
    Py_DECREF(opening);
    return -1;
}

static PyMethodDef ClassModel_methods[] = {
    {"set_cues", (PyCFunction)ClassModel_set_cues, METH_VARARGS,
     "set_cues(lanes, safety_lanes, setting_lanes, violent, crime, settings, fixed, definition_openings, "
     "group_openings, private_openings, private_my_openings): class_scores() then sums the safety cues "
     "itself from the scan's cue facts"},
    {NULL, NULL, 0, NULL},
};

static inline int bit_length(long v) { return v <= 0 ? 0 : 64 - __builtin_clzll((unsigned long long)v); }

static PyTypeObject ClassModelType;

/* class_scores(model, lanes, text_features, signals, cue_sums[, cue_facts]) -> (best, probabilities)
 *
 * Exactly router.scorer.Scorer.score's arithmetic, in the same order (IEEE doubles, no
 * fused multiply-add: setup.py builds with -ffp-contract=off), so both give the same
 * floats. signals: router.context.Signals; cue_sums: the safety cues' class sums or None;
 * cue_facts (a model given set_cues, cue_sums None): the scan's cue facts, from which the
 * safety cues are summed here. */
static int score(const ClassModel *m, PyObject *lanes, long features, const long *v, PyObject *cues, PyObject *facts,
                 int *best_out, double *probs);

static PyObject *class_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if ((nargs != 5 && nargs != 6) || !PyObject_TypeCheck(args[0], &ClassModelType) || !PyTuple_Check(args[1]) ||
        !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "class_scores(model: ClassModel, lanes: tuple, text_features, "
                                         "signals: tuple, cue_sums[, cue_facts])");
        return NULL;
    }
    const ClassModel *m = (const ClassModel *)args[0];
    PyObject *lanes = args[1], *signals = args[3];
    if (PyTuple_GET_SIZE(lanes) != m->lexicon_lanes + CLASSES || PyTuple_GET_SIZE(signals) != 7) {
        PyErr_SetString(PyExc_ValueError, "class_scores: lanes or signals of the wrong length");
        return NULL;
    }
    long features = PyLong_AsLong(args[2]);
    long v[7];
    for (int i = 0; i < 7; i++) v[i] = PyLong_AsLong(PyTuple_GET_ITEM(signals, i));
    if (PyErr_Occurred()) return NULL;
    int best;
    double probs[CLASSES];
    if (score(m, lanes, features, v, args[4], nargs == 6 ? args[5] : Py_None, &best, probs) < 0) return NULL;
    PyObject *probabilities = PyTuple_New(CLASSES), *result = NULL;
    if (!probabilities) return NULL;
    for (int k = 0; k < CLASSES; k++) {
        PyObject *p = PyFloat_FromDouble(probs[k]);
        if (!p) goto fail;
        PyTuple_SET_ITEM(probabilities, k, p);
    }
    PyObject *chosen = PyLong_FromLong(best);
    if (!chosen || !(result = PyTuple_New(2))) {
        Py_XDECREF(chosen);
        goto fail;
    }
    PyTuple_SET_ITEM(result, 0, chosen);
    PyTuple_SET_ITEM(result, 1, probabilities);
    return result;
fail:
    Py_DECREF(probabilities);
    return NULL;
}

/* class_scores' arithmetic: the best class into *best and the probabilities into probs.
 * v: the signals (prompt_tokens, code_markers, structured, script, safety, question,
 * digits); cues: None or the 5 cue sums; facts: None or the scan's cue facts (summed here
 * when cues is None). 0, or -1 with an exception. */
static int score(const ClassModel *m, PyObject *lanes, long features, const long *v, PyObject *cues, PyObject *facts,
                 int *best_out, double *probs) {
    long tokens = bit_length(v[0]), digits = bit_length(v[6] < 16 ? v[6] : 16);
    Py_ssize_t index[SIGNAL_GROUPS] = {tokens < 16 ? tokens : 16, v[2], v[3], v[4], digits, v[1] & 63};
    int64_t s[CLASSES] = {0};
    for (int g = 0; g < SIGNAL_GROUPS; g++) {
        if (index[g] < 0 || index[g] >= m->sizes[g]) {
            PyErr_Format(PyExc_IndexError, "class_scores: signal group %d has no value %zd", g, index[g]);
            return -1;
        }
        const int32_t *w = m->weights[g] + index[g] * CLASSES;
        for (int k = 0; k < CLASSES; k++) s[k] += w[k];
    }
    if (v[5])
        for (int k = 0; k < CLASSES; k++) s[k] += m->question[k];
    if (cues != Py_None) {
        if (!PyTuple_Check(cues) || PyTuple_GET_SIZE(cues) != CLASSES) {
            PyErr_SetString(PyExc_TypeError, "class_scores: cue_sums must be None or a tuple of 5 ints");
            return -1;
        }
        for (int k = 0; k < CLASSES; k++) s[k] += PyLong_AsLong(PyTuple_GET_ITEM(cues, k));
        if (PyErr_Occurred()) return -1;
    } else if (facts != Py_None) {
        if (!m->cues.set) {
            PyErr_SetString(PyExc_ValueError, "class_scores: cue_facts given to a model without set_cues");
            return -1;
        }
        if (cue_sums(&m->cues, lanes, facts, s) < 0) return -1;
    }
    double inv = m->inv_scale, norm = inv / sqrt((double)(features > 1 ? features : 1));
    double z[CLASSES], e[CLASSES], top;
    for (int k = 0; k < CLASSES; k++) {
        long t = PyLong_AsLong(PyTuple_GET_ITEM(lanes, m->lexicon_lanes + k));
        if (t == -1 && PyErr_Occurred()) return -1;
        z[k] = m->bias[k] + (double)t * norm + (double)s[k] * inv;
    }
    int best = 0;
    top = z[0];
    for (int k = 1; k < CLASSES; k++)
        if (z[k] > top) {
            top = z[k];
            best = k;
        }
    double total = 0.0;
    for (int k = 0; k < CLASSES; k++) {
        e[k] = exp(z[k] - top);
        total += e[k];
    }
    double inv_total = 1.0 / total;
    for (int k = 0; k < CLASSES; k++) probs[k] = e[k] * inv_total;
    *best_out = best;
    return 0;
}

static PyTypeObject ClassModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._scan.ClassModel",
    .tp_basicsize = sizeof(ClassModel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The scorer's bias and signal weights for class_scores(), built once.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ClassModel_init,
    .tp_dealloc = (destructor)ClassModel_dealloc,
    .tp_methods = ClassModel_methods,
};

static PyTypeObject ScanTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router._scan.ScanTable",
    .tp_basicsize = sizeof(ScanTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A word and bigram table for scan(), built once from the Python table.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ScanTable_init,
    .tp_dealloc = (destructor)ScanTable_dealloc,
    .tp_methods = ScanTable_methods,
};

/* ---- the whole context: router/context.py's build_context in one call ---- */

/* Settings of context_of, from router/context.py (_CONTEXT_SETTINGS), in this order. */
enum {
    CTX_TYPE, CTX_TOOLS, CTX_RESPONSE_FORMAT, CTX_JSON_TEXT, CTX_NO_STRUCTURE, CTX_JSON_FORMATS, CTX_JSON_LANE,
    CTX_JSON_ASK_LANE, CTX_CLASSES, CTX_REASONING, CTX_SAFETY, CTX_HEAD, CTX_TAIL, CTX_SETTINGS
};

/* Strings context_of needs on every call, made once at import (PyInit__scan): an
 * attribute read by a C string (PyObject_GetAttrString) makes and hashes a new str each
 * time, ~750 instructions a read, ten reads a request, against ~100 by an interned name. */
static PyObject *see_name, *auto_model;
enum { NAME_TOOLS, NAME_RESPONSE_FORMAT, NAME_TYPE, NAME_MESSAGES, NAME_ROLE, NAME_CONTENT, NAME_SESSION, NAME_MODEL,
       NAME_MAX_TOKENS, NAMES };
static const char *const name_texts[NAMES] = {"tools", "response_format", "type", "messages", "role", "content",
                                              "session", "model", "max_tokens"};
static PyObject *names[NAMES];

/* The markers around a message's text in the prompt (context.prompt_parts). */
static const Py_UCS1 ROLE_END[1] = {0x1f}, MESSAGE_END[1] = {0x1e};

/* stable_hash(text): xxh3 of its UTF-8 ('surrogatepass'), shifted to 63 bits. */
static PyObject *stable_hash_of(const ScanTable *t, PyObject *text) {
    PyObject *data = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (!data) return NULL;
    uint64_t h = 0;
    int failed = digest_block(t->block_hash, t->block_digest, (const unsigned char *)PyBytes_AS_STRING(data),
                              PyBytes_GET_SIZE(data), &h);
    Py_DECREF(data);
    return failed ? NULL : PyLong_FromUnsignedLongLong(h >> 1);
}

/* The request's signals.structured (context.read_signals), a borrowed reference. */
static PyObject *structured_of(PyObject *request, PyObject *lanes, PyObject *settings) {
    PyObject *tools = PyObject_GetAttr(request, names[NAME_TOOLS]);
    if (!tools) return NULL;
    int has_tools = PyObject_IsTrue(tools);
    Py_DECREF(tools);
    if (has_tools < 0) return NULL;
    if (has_tools) return PyTuple_GET_ITEM(settings, CTX_TOOLS);
    PyObject *format = PyObject_GetAttr(request, names[NAME_RESPONSE_FORMAT]);
    if (!format) return NULL;
    int json = 0;
    if (PyDict_Check(format) && PyDict_GET_SIZE(format)) { /* response_format.get("type") in JSON formats */
        PyObject *type = PyDict_GetItemWithError(format, names[NAME_TYPE]); /* borrowed */
        json = !type && PyErr_Occurred() ? -1
                                         : PySet_Contains(PyTuple_GET_ITEM(settings, CTX_JSON_FORMATS), type ? type : Py_None);
    } else if (!PyDict_Check(format) && format != Py_None) {
        PyErr_SetString(PyExc_TypeError, "context_of: response_format must be a dict or None");
        json = -1;
    }
    Py_DECREF(format);
    if (json < 0) return NULL;
    if (json) return PyTuple_GET_ITEM(settings, CTX_RESPONSE_FORMAT);
    long lane = PyLong_AsLong(PyTuple_GET_ITEM(settings, CTX_JSON_LANE));
    long ask = PyLong_AsLong(PyTuple_GET_ITEM(settings, CTX_JSON_ASK_LANE));
    if (PyErr_Occurred()) return NULL;
    if (PyLong_AsLong(PyTuple_GET_ITEM(lanes, lane)) && PyLong_AsLong(PyTuple_GET_ITEM(lanes, ask)))
        return PyTuple_GET_ITEM(settings, CTX_JSON_TEXT);
    return PyTuple_GET_ITEM(settings, CTX_NO_STRUCTURE);
}

/* context_of(request, table, model, memory, settings) -> RoutingContext: build_context's
 * work (the prompt read as read_prompt reads it, the signals, the repeated-prefix step,
 * the session hash, the scores) without a Python frame or tuple between the steps. The
 * Python build_context is the reference; tests/test_scan.py compares the two. */
static PyObject *context_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5 || !PyObject_TypeCheck(args[1], &ScanTableType) || !PyObject_TypeCheck(args[2], &ClassModelType) ||
        !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != CTX_SETTINGS) {
        PyErr_SetString(PyExc_TypeError, "context_of(request, table: ScanTable, model: ClassModel, memory, settings)");
        return NULL;
    }
    PyObject *request = args[0], *memory = args[3], *settings = args[4];
    const ScanTable *t = (const ScanTable *)args[1];
    if (!t->signals_set || !t->blocks_set) {
        PyErr_SetString(PyExc_ValueError, "context_of: the table has no set_signals or no set_blocks");
        return NULL;
    }
    Py_ssize_t head = PyLong_AsSsize_t(PyTuple_GET_ITEM(settings, CTX_HEAD));
    Py_ssize_t tail = PyLong_AsSsize_t(PyTuple_GET_ITEM(settings, CTX_TAIL));
    long reasoning = PyLong_AsLong(PyTuple_GET_ITEM(settings, CTX_REASONING));
    long safety_class = PyLong_AsLong(PyTuple_GET_ITEM(settings, CTX_SAFETY));
    if (PyErr_Occurred()) return NULL;
    if (head < 0 || tail < 0 || head + 1 + tail > MAX_WINDOW) {
        PyErr_Format(PyExc_ValueError, "context_of: head and tail >= 0, head + 1 + tail <= %d", MAX_WINDOW);
        return NULL;
    }
    PyObject *classes = PyTuple_GET_ITEM(settings, CTX_CLASSES);
    if (!PyTuple_Check(classes) || PyTuple_GET_SIZE(classes) != CLASSES || reasoning < 0 || reasoning >= CLASSES ||
        safety_class < 0 || safety_class >= CLASSES) {
        PyErr_Format(PyExc_ValueError, "context_of: settings name %d classes and two indexes among them", CLASSES);
        return NULL;
    }
    PyObject *messages = PyObject_GetAttr(request, names[NAME_MESSAGES]);
    if (!messages) return NULL;
    PyObject *texts = messages && PyList_Check(messages) ? PyTuple_New(2 * PyList_GET_SIZE(messages)) : NULL;
    if (!texts) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "context_of: request.messages must be a list");
        Py_DECREF(messages);
        return NULL;
    }
    /* Each message reads as role, "\x1f", text, "\x1e" (context.prompt_parts); `texts`
     * holds each role and text while the segments point into them. */
    Py_ssize_t count = 4 * PyList_GET_SIZE(messages);
    Segment stack_segments[STACK_SEGMENTS], *segments = stack_segments;
    if (count > STACK_SEGMENTS && !(segments = PyMem_Malloc(sizeof(Segment) * count))) {
        Py_DECREF(messages);
        Py_DECREF(texts);
        return PyErr_NoMemory();
    }
    PyObject *view = NULL, *context = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        PyObject *role = PyObject_GetAttr(message, names[NAME_ROLE]), *text = NULL;
        PyObject *content = role ? PyObject_GetAttr(message, names[NAME_CONTENT]) : NULL;
        if (content) {
            text = PyUnicode_CheckExact(content) ? Py_NewRef(content) : PyObject_CallMethod(message, "text", NULL);
            Py_DECREF(content);
        }
        if (role) PyTuple_SET_ITEM(texts, 2 * i, role);
        if (text) PyTuple_SET_ITEM(texts, 2 * i + 1, text);
        if (!role || !text) goto done;
        if (!PyUnicode_Check(role) || !PyUnicode_Check(text)) {
            PyErr_SetString(PyExc_TypeError, "context_of: a message's role and text must be str");
            goto done;
        }
        PyObject *strings[2] = {role, text};
        for (int j = 0; j < 2; j++) {
            Segment *g = &segments[4 * i + 2 * j];
            g->kind = PyUnicode_KIND(strings[j]);
            g->ascii = PyUnicode_IS_ASCII(strings[j]);
            g->data = PyUnicode_DATA(strings[j]);
            g->length = PyUnicode_GET_LENGTH(strings[j]);
            g[1] = (Segment){PyUnicode_1BYTE_KIND, 1, j ? MESSAGE_END : ROLE_END, 1};
        }
    }
    view = view_of(t, segments, count, Py_None, head, tail);
    if (!view) goto done;
    /* The view: (parts, chars, utf8_bytes, window, word_count, features, lanes, alnum,
     * digits, spaces, cue_facts, code_markers, prompt_tokens, script, safety, question,
     * prefix_hashes). */
    PyObject *lanes = PyTuple_GET_ITEM(view, 6), *hashes = PyTuple_GET_ITEM(view, 16);
    PyObject *structured = structured_of(request, lanes, settings);
    if (!structured) goto done;
    PyObject *signal_objects[7] = {PyTuple_GET_ITEM(view, 12), PyTuple_GET_ITEM(view, 11), structured,
                                   PyTuple_GET_ITEM(view, 13), PyTuple_GET_ITEM(view, 14), PyTuple_GET_ITEM(view, 15),
                                   PyTuple_GET_ITEM(view, 8)};
    long v[7];
    for (int i = 0; i < 7; i++) v[i] = PyLong_AsLong(signal_objects[i]);
    long features = PyLong_AsLong(PyTuple_GET_ITEM(view, 5));
    if (PyErr_Occurred()) goto done;
    PyObject *seen = NULL;
    if (memory != Py_None && PyTuple_GET_SIZE(hashes)) seen = PyObject_CallMethodOneArg(memory, see_name, hashes);
    else seen = PyLong_FromLong(0);
    if (!seen) goto done;
    PyObject *session = PyObject_GetAttr(request, names[NAME_SESSION]), *session_hash = NULL;
    if (session) {
        int named = PyObject_IsTrue(session);
        session_hash = named < 0 ? NULL : named ? stable_hash_of(t, session) : PyLong_FromLong(0);
        Py_DECREF(session);
    }
    int best;
    double probs[CLASSES];
    PyObject *model = NULL, *max_tokens = NULL;
    if (!session_hash || score((const ClassModel *)args[2], lanes, features, v, Py_None, PyTuple_GET_ITEM(view, 10),
                               &best, probs) < 0)
        goto scored;
    model = PyObject_GetAttr(request, names[NAME_MODEL]); /* "" when it is "auto" */
    if (model) {
        int is_auto = PyObject_RichCompareBool(model, auto_model, Py_EQ);
        if (is_auto < 0) Py_CLEAR(model);
        else if (is_auto) Py_SETREF(model, PyUnicode_New(0, 0));
    }
    max_tokens = model ? PyObject_GetAttr(request, names[NAME_MAX_TOKENS]) : NULL;
    if (max_tokens) {
        int given = PyObject_IsTrue(max_tokens);
        if (given < 0) Py_CLEAR(max_tokens);
        else if (!given) Py_SETREF(max_tokens, PyLong_FromLong(0));
    }
    if (max_tokens) {
        PyObject *complexity = PyFloat_FromDouble(probs[reasoning]);
        PyObject *confidence = PyFloat_FromDouble(probs[best]);
        PyObject *safety = PyFloat_FromDouble(probs[safety_class]);
        if (complexity && confidence && safety) {
            PyObject *fields[14] = {signal_objects[0], signal_objects[1], structured, signal_objects[3],
                                    signal_objects[4], session_hash, hashes, seen, complexity, model, max_tokens,
                                    PyTuple_GET_ITEM(classes, best), confidence, safety};
            context = PyObject_Vectorcall(PyTuple_GET_ITEM(settings, CTX_TYPE), fields, 14, NULL);
        }
        Py_XDECREF(complexity);
        Py_XDECREF(confidence);
        Py_XDECREF(safety);
    }
scored:
    Py_XDECREF(model);
    Py_XDECREF(max_tokens);
    Py_XDECREF(session_hash);
    Py_DECREF(seen);
done:
    Py_XDECREF(view);
    if (segments != stack_segments) PyMem_Free(segments);
    Py_DECREF(texts);
    Py_DECREF(messages);
    return context;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(window, table) -> (lanes, word_count, features, alnum, digits, spaces, cue_facts, code_markers)"},
    {"utf8_length", (PyCFunction)utf8_length, METH_O,
     "utf8_length(text) -> len(text.encode('utf-8', 'surrogatepass')), without encoding"},
    {"block_hashes", (PyCFunction)(void (*)(void))block_hashes, METH_FASTCALL,
     "block_hashes(parts, digest, block_chars, max_blocks) -> chained 63-bit block hashes"},
    {"context_of", (PyCFunction)(void (*)(void))context_of, METH_FASTCALL,
     "context_of(request, table, model, memory, settings) -> RoutingContext: router.context.build_context in C"},
    {"read_prompt", (PyCFunction)(void (*)(void))read_prompt, METH_FASTCALL,
     "read_prompt(parts, table, head, tail) -> (parts, chars, utf8_bytes, window, word_count, features, "
     "lanes, alnum, digits, spaces, cue_facts, code_markers, prompt_tokens, script, safety, question, "
     "prefix_hashes)"},
    {"script_census", (PyCFunction)(void (*)(void))script_census, METH_FASTCALL,
     "script_census(window, codes, e0_next, e1_next, letters, e0_lead, e1_lead) -> (counts, continuation)"},
    {"class_scores", (PyCFunction)(void (*)(void))class_scores, METH_FASTCALL,
     "class_scores(model, lanes, text_features, signals, cue_sums[, cue_facts]) -> (best, probabilities)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router._scan",
    "The scan window's word pass in C; see router/context.py.", -1, methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    if (PyType_Ready(&ScanTableType) < 0 || PyType_Ready(&ClassModelType) < 0) return NULL;
    if (!see_name && !(see_name = PyUnicode_InternFromString("see"))) return NULL;
    if (!auto_model && !(auto_model = PyUnicode_InternFromString("auto"))) return NULL;
    for (int k = 0; k < NAMES; k++)
        if (!names[k] && !(names[k] = PyUnicode_InternFromString(name_texts[k]))) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "ScanTable", (PyObject *)&ScanTableType) < 0 ||
        PyModule_AddObjectRef(m, "ClassModel", (PyObject *)&ClassModelType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
