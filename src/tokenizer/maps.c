/* The tokenizer's two hash maps: u64 -> u64 (merge pairs, characters) and bytes -> i64 (vocabulary
 * look-up while loading, word counts while training, the word cache while encoding). Open addressing
 * with linear probing, at most half full. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

static size_t table_size(size_t expected) {
    size_t n = 16;
    while (n < 2 * expected) n *= 2;
    return n;
}

loom_status loom_tok_map64_init(loom_tok_map64 *m, size_t expected) {
    size_t n = table_size(expected);
    m->slots = malloc(2 * n * sizeof *m->slots);
    LOOM_CHECK(m->slots != NULL, LOOM_ERR_NOMEM, "out of memory for a table of %zu entries", n);
    for (size_t i = 0; i < 2 * n; i += 2) m->slots[i] = LOOM_TOK_NO_KEY;
    m->mask = n - 1;
    m->n = 0;
    return LOOM_OK;
}

void loom_tok_map64_free(loom_tok_map64 *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static void map64_insert(uint64_t *slots, size_t mask, uint64_t key, uint64_t value, int *added) {
    size_t i = (size_t)loom_tok_hash64(key) & mask;
    while (slots[2 * i] != LOOM_TOK_NO_KEY && slots[2 * i] != key) i = (i + 1) & mask;
    *added = slots[2 * i] == LOOM_TOK_NO_KEY;
    slots[2 * i] = key;
    slots[2 * i + 1] = value;
}

loom_status loom_tok_map64_put(loom_tok_map64 *m, uint64_t key, uint64_t value) {
    LOOM_CHECK(key != LOOM_TOK_NO_KEY, LOOM_ERR_INTERNAL, "reserved hash key");
    if (!m->slots) LOOM_CALL(loom_tok_map64_init(m, 16));
    if (2 * (m->n + 1) > m->mask + 1) {
        size_t n = 2 * (m->mask + 1);
        uint64_t *s = malloc(2 * n * sizeof *s);
        LOOM_CHECK(s != NULL, LOOM_ERR_NOMEM, "out of memory growing a table to %zu entries", n);
        for (size_t i = 0; i < 2 * n; i += 2) s[i] = LOOM_TOK_NO_KEY;
        int added;
        for (size_t i = 0; i <= m->mask; i++)
            if (m->slots[2 * i] != LOOM_TOK_NO_KEY)
                map64_insert(s, n - 1, m->slots[2 * i], m->slots[2 * i + 1], &added);
        free(m->slots);
        m->slots = s;
        m->mask = n - 1;
    }
    int added;
    map64_insert(m->slots, m->mask, key, value, &added);
    m->n += (size_t)added;
    return LOOM_OK;
}

/* 64-bit hash of a short byte string: 8 bytes at a time, multiply-xorshift mixing. */
uint64_t loom_tok_hash_bytes(const uint8_t *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)n * 0xC2B2AE3D27D4EB4FULL);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 29;
    return h;
}

loom_status loom_tok_strmap_init(loom_tok_strmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t n = table_size(expected);
    m->slots = calloc(n, sizeof *m->slots);
    LOOM_CHECK(m->slots != NULL, LOOM_ERR_NOMEM, "out of memory for a table of %zu entries", n);
    m->mask = n - 1;
    return LOOM_OK;
}

void loom_tok_strmap_free(loom_tok_strmap *m) {
    free(m->slots);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

void loom_tok_strmap_clear(loom_tok_strmap *m) {
    if (m->slots) memset(m->slots, 0, (m->mask + 1) * sizeof *m->slots);
    m->n = 0;
    m->arena_len = 0;
}

loom_tok_strslot *loom_tok_strmap_find(const loom_tok_strmap *m, const uint8_t *key, size_t len, uint64_t h) {
    size_t i = (size_t)h & m->mask;
    for (;;) {
        loom_tok_strslot *s = &m->slots[i];
        if (!s->used) return NULL;
        if (s->hash == h && s->len == len && memcmp(m->arena + s->off, key, len) == 0) return s;
        i = (i + 1) & m->mask;
    }
}

loom_status loom_tok_strmap_upsert(loom_tok_strmap *m, const uint8_t *key, size_t len, uint64_t h,
                                   loom_tok_strslot **slot, int *is_new) {
    loom_tok_strslot *s = loom_tok_strmap_find(m, key, len, h);
    if (s) {
        *slot = s;
        *is_new = 0;
        return LOOM_OK;
    }
    LOOM_CHECK(len <= UINT32_MAX, LOOM_ERR_INVALID_ARG, "a key of %zu bytes is too long", len);
    if (2 * (m->n + 1) > m->mask + 1) {
        size_t n = 2 * (m->mask + 1);
        loom_tok_strslot *ns = calloc(n, sizeof *ns);
        LOOM_CHECK(ns != NULL, LOOM_ERR_NOMEM, "out of memory growing a table to %zu entries", n);
        for (size_t i = 0; i <= m->mask; i++) {
            if (!m->slots[i].used) continue;
            size_t j = (size_t)m->slots[i].hash & (n - 1);
            while (ns[j].used) j = (j + 1) & (n - 1);
            ns[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = ns;
        m->mask = n - 1;
    }
    if (m->arena_len + len > m->arena_cap) {
        size_t cap = m->arena_cap ? m->arena_cap : 4096;
        while (cap < m->arena_len + len) cap *= 2;
        uint8_t *a = realloc(m->arena, cap);
        LOOM_CHECK(a != NULL, LOOM_ERR_NOMEM, "out of memory for %zu bytes of keys", cap);
        m->arena = a;
        m->arena_cap = cap;
    }
    if (len) memcpy(m->arena + m->arena_len, key, len);
    size_t i = (size_t)h & m->mask;
    while (m->slots[i].used) i = (i + 1) & m->mask;
    s = &m->slots[i];
    s->hash = h;
    s->off = m->arena_len;
    s->len = (uint32_t)len;
    s->used = 1;
    s->value = 0;
    m->arena_len += len;
    m->n++;
    *slot = s;
    *is_new = 1;
    return LOOM_OK;
}

loom_status loom_tok_pack_pairs(loom_tokenizer *t) {
    free(t->pairs16);
    t->pairs16 = NULL;
    if (t->vocab_size > 65535 || !t->pairs.slots) return LOOM_OK;
    for (size_t i = 0; i <= t->pairs.mask; i++) {
        if (t->pairs.slots[2 * i] == LOOM_TOK_NO_KEY) continue;
        if ((t->pairs.slots[2 * i + 1] >> 32) > 0xFFFF) return LOOM_OK; /* a rank past 16 bits */
    }
    uint32_t bits = 4;
    while (((size_t)1 << bits) < 2 * t->pairs.n) bits++;
    size_t n = (size_t)1 << bits;
    uint64_t *p = malloc(n * sizeof *p);
    LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory for a pair table of %zu entries", n);
    for (size_t i = 0; i < n; i++) p[i] = 0xFFFFFFFFu;
    uint32_t shift = 32 - bits;
    for (size_t i = 0; i <= t->pairs.mask; i++) {
        uint64_t k = t->pairs.slots[2 * i], v = t->pairs.slots[2 * i + 1];
        if (k == LOOM_TOK_NO_KEY) continue;
        uint32_t key = (uint32_t)(k >> 32) << 16 | (uint32_t)(k & 0xFFFF);
        uint32_t val = (uint32_t)(v >> 32) << 16 | (uint32_t)(v & 0xFFFF);
        size_t j = (size_t)((key * 0x9E3779B1u) >> shift);
        while ((uint32_t)p[j] != 0xFFFFFFFFu) j = (j + 1) & (n - 1);
        p[j] = (uint64_t)val << 32 | key;
    }
    t->pairs16 = p;
    t->pairs16_shift = shift;
    return LOOM_OK;
}
