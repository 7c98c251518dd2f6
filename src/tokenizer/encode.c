/* Encoding and decoding.
 *
 * BPE (gpt2 and trained files): the text is cut at special tokens, each piece is split into GPT-2
 * pre-tokens (pretok.c), and each pre-token ("word") is merged. The merge of a word follows the
 * JavaScript encoder's loop exactly: find the lowest-ranked adjacent pair, take the pair type of its
 * rightmost occurrence among those with that rank, merge every occurrence of that type left to right,
 * repeat. It runs on a linked list of symbols with a heap of candidate pairs keyed by (rank, position),
 * so a word of n bytes costs O(n log n) (the JavaScript loop is quadratic); pairs made by a round enter
 * the heap only after it, as the JavaScript loop recomputes its pairs only then. A per-call cache maps
 * each distinct word to its tokens: text repeats its words, so most words are merged once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

#define CACHE_MAX_WORD 128          /* longer words are merged every time */
#define CACHE_MAX_BYTES (64u << 20) /* the cache starts over beyond this much key and token data */

typedef struct {
    uint32_t rank;
    int32_t pos;
    int32_t left, right, merged;
} heap_ent;

typedef struct {
    int32_t *ids;
    size_t n, cap;
    /* word cache: word bytes -> offset in cpool of [count, ids...] */
    loom_tok_strmap cache;
    int32_t *cpool;
    size_t cpool_len, cpool_cap;
    /* one word's symbols: id (-1 once merged into its left neighbour), next, previous */
    int32_t *sym, *nxt, *prv, *done;
    size_t scap;
    heap_ent *heap, *batch;
    size_t hn, hcap, bn, bcap;
} enc_state;

static void enc_free(enc_state *e) {
    loom_tok_strmap_free(&e->cache);
    free(e->cpool);
    free(e->sym);
    free(e->nxt);
    free(e->prv);
    free(e->done);
    free(e->heap);
    free(e->batch);
}

static loom_status grow_i32(int32_t **p, size_t *cap, size_t need) {
    if (need <= *cap) return LOOM_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    int32_t *q = realloc(*p, c * sizeof *q);
    LOOM_CHECK(q != NULL, LOOM_ERR_NOMEM, "out of memory for %zu token ids", c);
    *p = q;
    *cap = c;
    return LOOM_OK;
}

static inline loom_status out_push(enc_state *e, int32_t id) {
    if (e->n == e->cap) LOOM_CALL(grow_i32(&e->ids, &e->cap, e->n + 1));
    e->ids[e->n++] = id;
    return LOOM_OK;
}

static loom_status heap_reserve(heap_ent **h, size_t *cap, size_t need) {
    if (need <= *cap) return LOOM_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    heap_ent *q = realloc(*h, c * sizeof *q);
    LOOM_CHECK(q != NULL, LOOM_ERR_NOMEM, "out of memory for %zu merge candidates", c);
    *h = q;
    *cap = c;
    return LOOM_OK;
}

static inline int ent_less(const heap_ent *a, const heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static loom_status heap_push(enc_state *e, heap_ent x) {
    if (e->hn == e->hcap) LOOM_CALL(heap_reserve(&e->heap, &e->hcap, e->hn + 1));
    size_t i = e->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&x, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = x;
    return LOOM_OK;
}

static heap_ent heap_pop(enc_state *e) {
    heap_ent top = e->heap[0], x = e->heap[--e->hn];
    size_t i = 0, n = e->hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ent_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!ent_less(&e->heap[c], &x)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = x;
    return top;
}

/* Pushes the pair that starts at symbol i, if it is a merge. */
static inline loom_status push_pair(const loom_tokenizer *t, enc_state *e, int32_t i) {
    int32_t j = e->nxt[i];
    uint64_t v;
    if (j < 0 || !loom_tok_pair_get(t, e->sym[i], e->sym[j], &v))
        return LOOM_OK;
    heap_ent x = {(uint32_t)(v >> 32), i, e->sym[i], e->sym[j], (int32_t)(uint32_t)v};
    return heap_push(e, x);
}

static inline int ent_valid(const enc_state *e, const heap_ent *x) {
    if (e->sym[x->pos] != x->left) return 0;
    int32_t j = e->nxt[x->pos];
    return j >= 0 && e->sym[j] == x->right;
}

#define SHORT_WORD 24 /* words up to this long are merged in arrays, longer ones with the heap */

/* The same merge loop for a short word, on arrays: each round scans the pair ranks for the lowest. */
static loom_status bpe_short(const loom_tokenizer *t, enc_state *e, const uint8_t *w, size_t n) {
    int32_t sym[SHORT_WORD];
    uint64_t pv[SHORT_WORD]; /* rank << 32 | merged id of pair (i, i+1), UINT64_MAX if none */
    int m = (int)n;
    for (int i = 0; i < m; i++) sym[i] = t->byte_id[w[i]];
    for (int i = 0; i + 1 < m; i++)
        if (!loom_tok_pair_get(t, sym[i], sym[i + 1], &pv[i]))
            pv[i] = UINT64_MAX;
    while (m > 1) {
        uint64_t best = UINT64_MAX;
        int at = -1;
        for (int i = 0; i + 1 < m; i++)
            if ((pv[i] >> 32) <= (best >> 32) && pv[i] != UINT64_MAX) { /* ties: the rightmost */
                best = pv[i];
                at = i;
            }
        if (at < 0) break;
        int32_t a = sym[at], b = sym[at + 1], z = (int32_t)(uint32_t)best;
        /* merge left to right; a pair between two copied symbols keeps its rank, a pair next to a merged
         * symbol is looked up again */
        int j = 0, nz = 0;
        int zat[SHORT_WORD];
        for (int i = 0; i < m;) {
            if (i + 1 < m && sym[i] == a && sym[i + 1] == b) {
                zat[nz++] = j;
                sym[j++] = z;
                i += 2;
            } else {
                pv[j] = pv[i];
                sym[j++] = sym[i++];
            }
        }
        m = j;
        for (int k = 0; k < nz; k++) {
            int q = zat[k];
            if (q > 0 && !loom_tok_pair_get(t, sym[q - 1], sym[q], &pv[q - 1]))
                pv[q - 1] = UINT64_MAX;
            if (q + 1 < m && !loom_tok_pair_get(t, sym[q], sym[q + 1], &pv[q]))
                pv[q] = UINT64_MAX;
        }
    }
    if (e->n + (size_t)m > e->cap) LOOM_CALL(grow_i32(&e->ids, &e->cap, e->n + (size_t)m));
    memcpy(e->ids + e->n, sym, (size_t)m * sizeof *sym);
    e->n += (size_t)m;
    return LOOM_OK;
}

/* Appends the tokens of one word of n >= 2 bytes. */
static loom_status bpe_word(const loom_tokenizer *t, enc_state *e, const uint8_t *w, size_t n) {
    if (n <= SHORT_WORD) return bpe_short(t, e, w, n);
    LOOM_CHECK(n < INT32_MAX, LOOM_ERR_INVALID_ARG, "a pre-token of %zu bytes is too long", n);
    if (n > e->scap) {
        size_t c = e->scap ? e->scap : 64;
        while (c < n) c *= 2;
        int32_t *a = realloc(e->sym, c * sizeof *a);
        if (a) e->sym = a;
        int32_t *b = realloc(e->nxt, c * sizeof *b);
        if (b) e->nxt = b;
        int32_t *d = realloc(e->prv, c * sizeof *d);
        if (d) e->prv = d;
        int32_t *f = realloc(e->done, c * sizeof *f);
        if (f) e->done = f;
        LOOM_CHECK(a && b && d && f, LOOM_ERR_NOMEM, "out of memory for a word of %zu bytes", n);
        e->scap = c;
    }
    int32_t nn = (int32_t)n;
    for (int32_t i = 0; i < nn; i++) {
        e->sym[i] = t->byte_id[w[i]];
        e->nxt[i] = i + 1 < nn ? i + 1 : -1;
        e->prv[i] = i - 1;
    }
    e->hn = 0;
    for (int32_t i = 0; i + 1 < nn; i++) LOOM_CALL(push_pair(t, e, i));
    while (e->hn > 0) {
        heap_ent top = heap_pop(e);
        if (!ent_valid(e, &top)) continue;
        /* every valid candidate of this rank, in position order */
        e->bn = 0;
        LOOM_CALL(heap_reserve(&e->batch, &e->bcap, 1));
        e->batch[e->bn++] = top;
        while (e->hn > 0 && e->heap[0].rank == top.rank) {
            heap_ent x = heap_pop(e);
            if (!ent_valid(e, &x)) continue;
            LOOM_CALL(heap_reserve(&e->batch, &e->bcap, e->bn + 1));
            e->batch[e->bn++] = x;
        }
        /* the type of the rightmost one (only one type per rank, except JavaScript's comma look-alikes) */
        int32_t left = e->batch[e->bn - 1].left, right = e->batch[e->bn - 1].right;
        size_t nd = 0;
        for (size_t b = 0; b < e->bn; b++) {
            heap_ent *x = &e->batch[b];
            if (x->left != left || x->right != right) {
                LOOM_CALL(heap_push(e, *x)); /* another type of the same rank: a later round */
                continue;
            }
            if (!ent_valid(e, x)) continue; /* overlapped by the previous merge ("aaa") */
            int32_t i = x->pos, j = e->nxt[i], k = e->nxt[j];
            e->sym[i] = x->merged;
            e->sym[j] = -1;
            e->nxt[i] = k;
            if (k >= 0) e->prv[k] = i;
            e->done[nd++] = i;
        }
        for (size_t d = 0; d < nd; d++) {
            int32_t i = e->done[d];
            if (e->prv[i] >= 0) LOOM_CALL(push_pair(t, e, e->prv[i]));
            LOOM_CALL(push_pair(t, e, i));
        }
    }
    for (int32_t i = 0; i >= 0; i = e->nxt[i]) LOOM_CALL(out_push(e, e->sym[i]));
    return LOOM_OK;
}

static loom_status emit_word(const loom_tokenizer *t, enc_state *e, const uint8_t *w, size_t n) {
    if (n == 1) return out_push(e, t->byte_id[w[0]]);
    if (n > CACHE_MAX_WORD) return bpe_word(t, e, w, n);
    uint64_t h = loom_tok_hash_bytes(w, n);
    loom_tok_strslot *s = loom_tok_strmap_find(&e->cache, w, n, h);
    if (s) {
        const int32_t *c = e->cpool + s->value;
        size_t cnt = (size_t)c[0];
        if (e->n + cnt > e->cap) LOOM_CALL(grow_i32(&e->ids, &e->cap, e->n + cnt));
        memcpy(e->ids + e->n, c + 1, cnt * sizeof *c);
        e->n += cnt;
        return LOOM_OK;
    }
    size_t first = e->n;
    LOOM_CALL(bpe_word(t, e, w, n));
    size_t cnt = e->n - first;
    if (e->cache.arena_len + 4 * e->cpool_len > CACHE_MAX_BYTES) {
        loom_tok_strmap_clear(&e->cache);
        e->cpool_len = 0;
    }
    int is_new;
    LOOM_CALL(grow_i32(&e->cpool, &e->cpool_cap, e->cpool_len + cnt + 1));
    LOOM_CALL(loom_tok_strmap_upsert(&e->cache, w, n, h, &s, &is_new));
    s->value = (int64_t)e->cpool_len;
    e->cpool[e->cpool_len] = (int32_t)cnt;
    memcpy(e->cpool + e->cpool_len + 1, e->ids + first, cnt * sizeof(int32_t));
    e->cpool_len += cnt + 1;
    return LOOM_OK;
}

/* Describes the character at s (for "not in the vocabulary" messages). */
static void describe_char(const uint8_t *s, size_t avail, char *buf, size_t size) {
    uint32_t cp;
    size_t l = loom_tok_utf8_next(s, avail, &cp);
    if (cp == LOOM_TOK_INVALID_CP) snprintf(buf, size, "the byte 0x%02X (not UTF-8)", s[0]);
    else if (cp >= 0x20 && cp != 0x7F && !(cp >= 0x80 && cp < 0xA0))
        snprintf(buf, size, "'%.*s' (U+%04X)", (int)l, (const char *)s, (unsigned)cp);
    else snprintf(buf, size, "U+%04X", (unsigned)cp);
}

/* Encodes s[pos..end) without special tokens; `hard`: the text ends at end. Returns how far it got. */
static loom_status encode_piece(const loom_tokenizer *t, enc_state *e, const uint8_t *s, size_t pos, size_t end,
                                int hard, size_t margin, size_t *stop) {
    switch (t->kind) {
    case LOOM_TOK_KIND_BYTE:
        LOOM_CALL(grow_i32(&e->ids, &e->cap, e->n + (end - pos)));
        for (; pos < end; pos++) e->ids[e->n++] = s[pos];
        break;
    case LOOM_TOK_KIND_CHAR:
        while (pos < end) {
            uint32_t cp;
            size_t l = loom_tok_utf8_next(s + pos, end - pos, &cp);
            if (!hard && pos + margin > end) break;
            uint64_t v;
            if (!loom_tok_map64_get(&t->chars, loom_tok_char_key(s + pos, l), &v)) {
                char d[64];
                describe_char(s + pos, end - pos, d, sizeof d);
                return TOK_ERR(LOOM_ERR_INVALID_ARG,
                               "%s at byte %zu is not in the vocabulary of char tokenizer %s (%lld characters)", d,
                               pos, t->name, (long long)t->n_chars);
            }
            LOOM_CALL(out_push(e, (int32_t)v));
            pos += l;
        }
        break;
    default:
        while (pos < end) {
            size_t te = loom_tok_pretok(s, pos, end);
            if (!hard && te + margin > end) break;
            LOOM_CALL(emit_word(t, e, s + pos, te - pos));
            pos = te;
        }
        break;
    }
    *stop = pos;
    return LOOM_OK;
}

loom_status loom_tokenizer_encode_ex(const loom_tokenizer *t, const char *text, size_t len, unsigned flags,
                                     int32_t **ids, int64_t *n, size_t *consumed) {
    LOOM_CHECK(ids && n, LOOM_ERR_INVALID_ARG, "loom_tokenizer_encode: ids and n must not be NULL");
    *ids = NULL;
    *n = 0;
    if (consumed) *consumed = 0;
    LOOM_CHECK(t != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_encode: no tokenizer");
    LOOM_CHECK(text != NULL || len == 0, LOOM_ERR_INVALID_ARG, "loom_tokenizer_encode: text is NULL");
    LOOM_CHECK(!(flags & LOOM_TOKENIZER_PARTIAL) || consumed, LOOM_ERR_INVALID_ARG,
               "loom_tokenizer_encode_ex: LOOM_TOKENIZER_PARTIAL needs `consumed`");
    const uint8_t *s = (const uint8_t *)text;
    int partial = (flags & LOOM_TOKENIZER_PARTIAL) != 0;
    int specials = !(flags & LOOM_TOKENIZER_NO_SPECIAL) && t->n_special > 0;
    /* a pre-token is final when the bytes its match looked at (up to 8 past its end) are there, and any
     * special token starting among them would be seen whole */
    size_t margin = LOOM_TOK_PRETOK_MARGIN + (specials ? t->special_maxlen : 0);
    enc_state e;
    memset(&e, 0, sizeof e);
    loom_status st = LOOM_OK;
    int bpe = t->kind == LOOM_TOK_KIND_GPT2 || t->kind == LOOM_TOK_KIND_BPE;
    LOOM_CALL_GOTO(st, grow_i32(&e.ids, &e.cap, (bpe ? len / 3 : len) + 16), fail); /* ~3.3 bytes a token */
    if (bpe) { /* about one new word per 64 bytes, between 1 Ki and 1 Mi to start with */
        size_t words = len / 64 < 1024 ? 1024 : len / 64 > (1u << 20) ? (1u << 20) : len / 64;
        LOOM_CALL_GOTO(st, loom_tok_strmap_init(&e.cache, words), fail);
    }
    size_t pos = 0;
    while (pos < len) {
        int which = -1;
        size_t sp = specials ? loom_tok_find_special(t, s, pos, len, &which) : len;
        size_t stop = pos;
        LOOM_CALL_GOTO(st, encode_piece(t, &e, s, pos, sp, sp < len || !partial, margin, &stop), fail);
        pos = stop;
        if (pos < sp) break; /* partial: the rest waits for more text */
        if (which >= 0) {
            LOOM_CALL_GOTO(st, out_push(&e, t->special[which].id), fail);
            pos = sp + t->special[which].len;
        }
    }
    enc_free(&e);
    *ids = e.ids;
    *n = (int64_t)e.n;
    if (consumed) *consumed = pos;
    return LOOM_OK;
fail:
    enc_free(&e);
    free(e.ids);
    return st;
}

loom_status loom_tokenizer_encode(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, int64_t *n) {
    return loom_tokenizer_encode_ex(t, text, len, 0, ids, n, NULL);
}

loom_status loom_tokenizer_decode(const loom_tokenizer *t, const int32_t *ids, int64_t n, char **bytes, size_t *len) {
    LOOM_CHECK(bytes && len, LOOM_ERR_INVALID_ARG, "loom_tokenizer_decode: bytes and len must not be NULL");
    *bytes = NULL;
    *len = 0;
    LOOM_CHECK(t != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_decode: no tokenizer");
    LOOM_CHECK(n >= 0 && (ids != NULL || n == 0), LOOM_ERR_INVALID_ARG, "loom_tokenizer_decode: bad ids (%lld)",
               (long long)n);
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        LOOM_CHECK(ids[i] >= 0 && ids[i] < t->vocab_size, LOOM_ERR_INVALID_ARG,
                   "token id %d (position %lld) is outside the vocabulary of %s (ids 0..%lld)", ids[i],
                   (long long)i, t->name, (long long)t->vocab_size - 1);
        total += (size_t)(t->off[ids[i] + 1] - t->off[ids[i]]);
    }
    char *out = malloc(total + 1);
    LOOM_CHECK(out != NULL, LOOM_ERR_NOMEM, "out of memory decoding %lld tokens (%zu bytes)", (long long)n, total);
    size_t p = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t l = (size_t)(t->off[ids[i] + 1] - t->off[ids[i]]);
        memcpy(out + p, t->blob + t->off[ids[i]], l);
        p += l;
    }
    out[p] = '\0';
    *bytes = out;
    *len = p;
    return LOOM_OK;
}

const char *loom_tokenizer_token_bytes(const loom_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->vocab_size) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(t->off[id + 1] - t->off[id]);
    return (const char *)t->blob + t->off[id];
}
