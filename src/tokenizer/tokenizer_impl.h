/* Private to src/tokenizer/: the tokenizer object, the pre-tokenizer, the hash maps, and the pieces each
 * file implements.
 *
 *   unicode_tables.c  generated \p{L} / \p{N} / \s ranges (scripts/gen_unicode_tables.js)
 *   pretok.c          UTF-8 decoding, character classes, GPT-2's pre-tokenizer, special-token search
 *   maps.c            the hash maps (u64 -> u64, bytes -> i64) and the packed 16-bit pair table
 *   encode.c          encoding (BPE merges with a per-call word cache, char and byte kinds), decoding
 *   gpt2.c            encoder.json + vocab.bpe, and where loom looks for them
 *   tokfile.c         the loom tokenizer file (docs/FORMATS-tokenizer.md)
 *   train.c           `loom tokenizer train`: byte-level BPE and char vocabularies
 *   tokenizer.c       the public interface (include/loom/tokenizer.h) */
#ifndef LOOM_TOKENIZER_IMPL_H
#define LOOM_TOKENIZER_IMPL_H
#include <stddef.h>
#include <stdint.h>

#include "loom/tokenizer.h"

#define TOK_ERR(code, ...) loom_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

/* ---- character classes (unicode_tables.c, pretok.c) ---- */

enum { LOOM_TOK_OTHER = 0, LOOM_TOK_LETTER = 1, LOOM_TOK_NUMBER = 2, LOOM_TOK_SPACE = 3 };

typedef struct {
    uint32_t first, last, cls;
} loom_tok_urange;

extern const char loom_tok_unicode_version[];
extern const int32_t loom_tok_n_ranges;
extern const loom_tok_urange loom_tok_ranges[];

/* The class of code point cp (LOOM_TOK_*), as JavaScript's /\p{L}/u, /\p{N}/u, /\s/u see it. */
int loom_tok_cp_class(uint32_t cp);
/* Decodes one UTF-8 character at s[0..avail) (avail >= 1): its length 1..4 and *cp; a byte that does not
 * start a valid, complete, shortest-form sequence of a scalar value is one character of length 1 with
 * *cp = LOOM_TOK_INVALID_CP. */
#define LOOM_TOK_INVALID_CP 0xFFFFFFFFu
size_t loom_tok_utf8_next(const uint8_t *s, size_t avail, uint32_t *cp);
/* The end of GPT-2's pre-token that starts at s[i] (i < end): the regex
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ matched at i in s[0..end),
 * with an invalid UTF-8 byte as a one-byte character of class OTHER. */
size_t loom_tok_pretok(const uint8_t *s, size_t i, size_t end);
/* A pre-token that ends at least this many bytes before the end of the text seen so far is final:
 * more text cannot change it (the regex looks at most one character, 4 bytes, past a whitespace run
 * whose last character it gives back), unless a special token starts among those bytes and ends the
 * piece there: so the margin grows by the longest special token's length where there are any. */
#define LOOM_TOK_PRETOK_MARGIN 8

/* ---- hash maps (maps.c) ---- */

/* u64 -> u64, open addressing; UINT64_MAX is not a valid key. */
typedef struct {
    uint64_t *slots; /* pairs: key, value */
    size_t mask, n;
} loom_tok_map64;

#define LOOM_TOK_NO_KEY UINT64_MAX
LOOM_NODISCARD loom_status loom_tok_map64_init(loom_tok_map64 *m, size_t expected);
void loom_tok_map64_free(loom_tok_map64 *m);
/* Inserts or overwrites. */
LOOM_NODISCARD loom_status loom_tok_map64_put(loom_tok_map64 *m, uint64_t key, uint64_t value);
static inline uint64_t loom_tok_hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}
/* 1 and *value if present, else 0. */
static inline int loom_tok_map64_get(const loom_tok_map64 *m, uint64_t key, uint64_t *value) {
    if (!m->slots) return 0;
    size_t i = (size_t)loom_tok_hash64(key) & m->mask;
    for (;;) {
        uint64_t k = m->slots[2 * i];
        if (k == key) {
            *value = m->slots[2 * i + 1];
            return 1;
        }
        if (k == LOOM_TOK_NO_KEY) return 0;
        i = (i + 1) & m->mask;
    }
}

/* bytes -> i64; keys are copied into an arena owned by the map. */
typedef struct {
    uint64_t hash;
    uint64_t off; /* key bytes at arena + off */
    uint32_t len;
    uint32_t used;
    int64_t value;
} loom_tok_strslot;

typedef struct {
    loom_tok_strslot *slots;
    size_t mask, n;
    uint8_t *arena;
    size_t arena_len, arena_cap;
} loom_tok_strmap;

uint64_t loom_tok_hash_bytes(const uint8_t *s, size_t n);
LOOM_NODISCARD loom_status loom_tok_strmap_init(loom_tok_strmap *m, size_t expected);
void loom_tok_strmap_free(loom_tok_strmap *m);
void loom_tok_strmap_clear(loom_tok_strmap *m); /* keeps the allocations */
/* The slot of key (hash h), or NULL. */
loom_tok_strslot *loom_tok_strmap_find(const loom_tok_strmap *m, const uint8_t *key, size_t len, uint64_t h);
/* Finds or inserts key (value 0 when new; *is_new says which). */
LOOM_NODISCARD loom_status loom_tok_strmap_upsert(loom_tok_strmap *m, const uint8_t *key, size_t len, uint64_t h,
                                                  loom_tok_strslot **slot, int *is_new);
static inline const uint8_t *loom_tok_strmap_key(const loom_tok_strmap *m, const loom_tok_strslot *s) {
    return m->arena + s->off;
}

/* ---- the tokenizer ---- */

typedef enum { LOOM_TOK_KIND_BYTE = 0, LOOM_TOK_KIND_GPT2, LOOM_TOK_KIND_BPE, LOOM_TOK_KIND_CHAR } loom_tok_kind;

typedef struct {
    uint8_t *bytes;
    size_t len;
    int32_t id;
} loom_tok_special;

struct loom_tokenizer {
    loom_tok_kind kind;
    char *name;         /* "gpt2", "byte", a file's path, or "bpe"/"char" before a trained one is saved */
    int64_t vocab_size;
    int32_t eot;        /* id of <|endoftext|>, or -1 */
    /* token bytes: token i is blob[off[i] .. off[i+1]) */
    uint8_t *blob;
    int64_t *off;
    /* BPE (gpt2, bpe): initial token of each byte; (left << 32 | right) -> (rank << 32 | merged id) */
    int32_t byte_id[256];
    loom_tok_map64 pairs;
    /* the same pairs packed in 8-byte slots (left << 16 | right, rank << 16 | merged) when ids and ranks fit
     * in 16 bits (GPT-2's do): half the memory, so more of it stays in cache while encoding; NULL otherwise */
    uint64_t *pairs16;
    uint32_t pairs16_shift;
    /* bpe files: merge i joins merges[2i], merges[2i+1] into 256 + i */
    int64_t n_merges;
    uint32_t *merges;
    /* char: character bytes packed (len << 32 | little-endian bytes) -> id; ids 0..n_chars-1 */
    loom_tok_map64 chars;
    int64_t n_chars;
    /* special tokens, matched in the text before pre-tokenization */
    loom_tok_special *special;
    int n_special;
    size_t special_maxlen;
};

/* A new, empty tokenizer of a kind (name copied). */
LOOM_NODISCARD loom_status loom_tok_alloc(loom_tok_kind kind, const char *name, loom_tokenizer **out);
/* Sets the token table from n tokens' bytes (copied). */
LOOM_NODISCARD loom_status loom_tok_set_tokens(loom_tokenizer *t, int64_t n, const uint8_t *const *bytes,
                                               const size_t *lens);
/* Builds a bpe tokenizer's token table and pair map from its merges (t->merges, t->n_merges) and specials,
 * validating every merge (ids created before it). `what` prefixes messages. */
LOOM_NODISCARD loom_status loom_tok_build_bpe(loom_tokenizer *t, const char *what);
/* Builds a char tokenizer's token table and map from its characters (blob/off for ids < n_chars). */
LOOM_NODISCARD loom_status loom_tok_build_char(loom_tokenizer *t, const char *what);
/* Appends special token (bytes copied) with the given id. */
LOOM_NODISCARD loom_status loom_tok_add_special(loom_tokenizer *t, const uint8_t *bytes, size_t len, int32_t id);
/* Packs a character of 1..4 bytes into a map key. */
static inline uint64_t loom_tok_char_key(const uint8_t *s, size_t len) {
    uint64_t k = (uint64_t)len << 32;
    for (size_t i = 0; i < len; i++) k |= (uint64_t)s[i] << (8 * i);
    return k;
}
/* Builds t->pairs16 from t->pairs where everything fits (else leaves it NULL). */
LOOM_NODISCARD loom_status loom_tok_pack_pairs(loom_tokenizer *t);
/* (rank << 32 | merged id) of the merge of tokens a and b; 0 if they do not merge. */
static inline int loom_tok_pair_get(const loom_tokenizer *t, int32_t a, int32_t b, uint64_t *v) {
    if (t->pairs16) {
        uint32_t key = (uint32_t)a << 16 | (uint32_t)b;
        size_t mask = ((size_t)1 << (32 - t->pairs16_shift)) - 1;
        size_t i = (size_t)((key * 0x9E3779B1u) >> t->pairs16_shift);
        for (;;) {
            uint64_t s = t->pairs16[i];
            uint32_t k = (uint32_t)s;
            if (k == key) {
                uint32_t x = (uint32_t)(s >> 32);
                *v = (uint64_t)(x >> 16) << 32 | (x & 0xFFFFu);
                return 1;
            }
            if (k == 0xFFFFFFFFu) return 0;
            i = (i + 1) & mask;
        }
    }
    return loom_tok_map64_get(&t->pairs, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, v);
}
/* The first special token occurrence in s[i..end) (its start, and which one in *which), or end. */
size_t loom_tok_find_special(const loom_tokenizer *t, const uint8_t *s, size_t i, size_t end, int *which);

/* gpt2.c */
LOOM_NODISCARD loom_status loom_tok_gpt2_from_memory(const char *enc, size_t enc_len, const char *bpe,
                                                     size_t bpe_len, const char *enc_name, const char *bpe_name,
                                                     loom_tokenizer **out);
LOOM_NODISCARD loom_status loom_tok_gpt2_load_dir(const char *dir, loom_tokenizer **out);
LOOM_NODISCARD loom_status loom_tok_gpt2_find(char *dir, size_t dir_size);

/* Reads a whole file (NUL-terminated for convenience; *len excludes it). */
LOOM_NODISCARD loom_status loom_tok_read_file(const char *path, char **data, size_t *len);
#endif
