/* `loom tokenizer train`: a byte-level BPE or a char vocabulary from a corpus.
 *
 * The corpus is streamed (16 MiB at a time, a piece that may still change carried into the next read, as
 * LOOM_TOKENIZER_PARTIAL encoding does) through the same cutting at special tokens and the same GPT-2
 * pre-tokenization the encoder uses, into counts of distinct words (bpe) or characters (char).
 *
 * BPE: the 256 byte tokens, then merges. Each step merges the most frequent adjacent pair (counted over
 * all words, weighted by word count), ties to the smallest (left id, right id), into the next id; every
 * occurrence in every word is merged left to right, as the encoder does, so encoding the corpus gives the
 * segmentation training ended with. Pair counts are updated incrementally: each pair knows the words it
 * occurs in, and a merge touches only those; a max-heap with lazy deletion finds the best pair. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

#define TRAIN_CHUNK (16u << 20)

static const char *const default_special[] = {"<|endoftext|>"};

loom_tokenizer_train_config loom_tokenizer_train_config_default(void) {
    loom_tokenizer_train_config c;
    memset(&c, 0, sizeof c);
    c.kind = "bpe";
    c.vocab_size = 4096;
    c.special = NULL;
    c.n_special = -1;
    return c;
}

typedef struct {
    int is_char;
    loom_tokenizer *seg; /* holds the special tokens, for loom_tok_find_special */
    size_t margin;
    loom_tok_strmap units; /* word (bpe) or character (char) -> count */
    loom_tokenizer_train_stats stats;
} trainer;

/* Counts the words or characters of s[0..len); with final == 0 stops where more text could change them. */
static loom_status feed(trainer *tr, const uint8_t *s, size_t len, int final, size_t *consumed) {
    size_t pos = 0;
    while (pos < len) {
        int which = -1;
        size_t sp = tr->seg->n_special ? loom_tok_find_special(tr->seg, s, pos, len, &which) : len;
        int hard = sp < len || final;
        while (pos < sp) {
            size_t te;
            if (tr->is_char) {
                uint32_t cp;
                te = pos + loom_tok_utf8_next(s + pos, sp - pos, &cp);
            } else {
                te = loom_tok_pretok(s, pos, sp);
            }
            if (!hard && te + tr->margin > sp) goto done;
            loom_tok_strslot *sl;
            int is_new;
            LOOM_CALL(loom_tok_strmap_upsert(&tr->units, s + pos, te - pos, loom_tok_hash_bytes(s + pos, te - pos), &sl,
                                             &is_new));
            sl->value++;
            tr->stats.words++;
            pos = te;
        }
        if (which >= 0) pos = sp + tr->seg->special[which].len;
    }
done:
    *consumed = pos;
    return LOOM_OK;
}

static loom_status feed_file(trainer *tr, const char *path) {
    FILE *f = fopen(path, "rb");
    LOOM_CHECK(f != NULL, LOOM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = TRAIN_CHUNK, have = 0;
    uint8_t *buf = malloc(cap);
    loom_status st = LOOM_OK;
    LOOM_CHECK_GOTO(st, buf != NULL, LOOM_ERR_NOMEM, out, "out of memory for a %zu-byte read buffer", cap);
    for (;;) {
        if (cap - have < TRAIN_CHUNK / 2) { /* a piece longer than the buffer: grow it */
            uint8_t *b = realloc(buf, 2 * cap);
            LOOM_CHECK_GOTO(st, b != NULL, LOOM_ERR_NOMEM, out, "out of memory for a %zu-byte read buffer", 2 * cap);
            buf = b;
            cap *= 2;
        }
        size_t r = fread(buf + have, 1, cap - have, f);
        LOOM_CHECK_GOTO(st, !ferror(f), LOOM_ERR_IO, out, "%s: read error: %s", path, strerror(errno));
        have += r;
        int eof = r == 0 || feof(f);
        tr->stats.bytes += (int64_t)r;
        size_t used;
        LOOM_CALL_GOTO(st, feed(tr, buf, have, eof, &used), out);
        memmove(buf, buf + used, have - used);
        have -= used;
        if (eof) break;
    }
out:
    free(buf);
    fclose(f);
    return st;
}

/* ---- BPE ---- */

typedef struct {
    int32_t *w;
    int32_t n, cap;
} wlist;

typedef struct {
    int64_t count;
    uint64_t key;
} hent;

typedef struct {
    /* words */
    int64_t n_words;
    int32_t *sym;   /* all words' symbols */
    int64_t *woff;  /* word w: sym[woff[w] .. woff[w] + wlen[w]) */
    int32_t *wlen;
    int64_t *wcount;
    int64_t *wstamp;
    /* pairs */
    loom_tok_map64 pmap; /* (left << 32 | right) -> pair index */
    int64_t n_pairs, cap_pairs;
    int64_t *pcount;
    int64_t *pstamp;
    uint64_t *pkey;
    wlist *pwhere;
    /* heap */
    hent *heap;
    int64_t hn, hcap;
    /* pairs whose count rose in this step */
    int64_t *changed;
    int64_t n_changed, cap_changed;
    int64_t stamp;
} bpe_state;

static inline int hent_before(const hent *a, const hent *b) {
    return a->count > b->count || (a->count == b->count && a->key < b->key);
}

static loom_status hpush(bpe_state *b, int64_t count, uint64_t key) {
    if (b->hn == b->hcap) {
        int64_t c = b->hcap ? 2 * b->hcap : 1024;
        hent *h = realloc(b->heap, (size_t)c * sizeof *h);
        LOOM_CHECK(h != NULL, LOOM_ERR_NOMEM, "out of memory for the pair heap");
        b->heap = h;
        b->hcap = c;
    }
    hent x = {count, key};
    int64_t i = b->hn++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!hent_before(&x, &b->heap[p])) break;
        b->heap[i] = b->heap[p];
        i = p;
    }
    b->heap[i] = x;
    return LOOM_OK;
}

static hent hpop(bpe_state *b) {
    hent top = b->heap[0], x = b->heap[--b->hn];
    int64_t i = 0, n = b->hn;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hent_before(&b->heap[c + 1], &b->heap[c])) c++;
        if (!hent_before(&b->heap[c], &x)) break;
        b->heap[i] = b->heap[c];
        i = c;
    }
    if (n) b->heap[i] = x;
    return top;
}

/* The index of pair (a, b), created when new. */
static loom_status pair_index(bpe_state *b, int32_t l, int32_t r, int64_t *idx) {
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r, v;
    if (loom_tok_map64_get(&b->pmap, key, &v)) {
        *idx = (int64_t)v;
        return LOOM_OK;
    }
    if (b->n_pairs == b->cap_pairs) {
        int64_t c = b->cap_pairs ? 2 * b->cap_pairs : 4096;
        int64_t *pc = realloc(b->pcount, (size_t)c * sizeof *pc);
        if (pc) b->pcount = pc;
        int64_t *ps = realloc(b->pstamp, (size_t)c * sizeof *ps);
        if (ps) b->pstamp = ps;
        uint64_t *pk = realloc(b->pkey, (size_t)c * sizeof *pk);
        if (pk) b->pkey = pk;
        wlist *pw = realloc(b->pwhere, (size_t)c * sizeof *pw);
        if (pw) b->pwhere = pw;
        LOOM_CHECK(pc && ps && pk && pw, LOOM_ERR_NOMEM, "out of memory for %lld pairs", (long long)c);
        b->cap_pairs = c;
    }
    int64_t i = b->n_pairs++;
    b->pcount[i] = 0;
    b->pstamp[i] = -1;
    b->pkey[i] = key;
    memset(&b->pwhere[i], 0, sizeof b->pwhere[i]);
    LOOM_CALL(loom_tok_map64_put(&b->pmap, key, (uint64_t)i));
    *idx = i;
    return LOOM_OK;
}

static loom_status where_add(wlist *l, int32_t w) {
    if (l->n > 0 && l->w[l->n - 1] == w) return LOOM_OK;
    if (l->n == l->cap) {
        int32_t c = l->cap ? 2 * l->cap : 4;
        LOOM_CHECK(c > 0, LOOM_ERR_NOMEM, "a pair occurs in too many words");
        int32_t *q = realloc(l->w, (size_t)c * sizeof *q);
        LOOM_CHECK(q != NULL, LOOM_ERR_NOMEM, "out of memory for pair occurrences");
        l->w = q;
        l->cap = c;
    }
    l->w[l->n++] = w;
    return LOOM_OK;
}

/* Adds `delta` occurrences of (l, r) in word w. */
static loom_status pair_add(bpe_state *b, int32_t l, int32_t r, int64_t delta, int32_t w) {
    int64_t i = 0;
    LOOM_CALL(pair_index(b, l, r, &i));
    b->pcount[i] += delta;
    if (delta > 0) {
        LOOM_CALL(where_add(&b->pwhere[i], w));
        if (b->pstamp[i] != b->stamp) {
            b->pstamp[i] = b->stamp;
            if (b->n_changed == b->cap_changed) {
                int64_t c = b->cap_changed ? 2 * b->cap_changed : 1024;
                int64_t *q = realloc(b->changed, (size_t)c * sizeof *q);
                LOOM_CHECK(q != NULL, LOOM_ERR_NOMEM, "out of memory");
                b->changed = q;
                b->cap_changed = c;
            }
            b->changed[b->n_changed++] = i;
        }
    }
    return LOOM_OK;
}

static void bpe_state_free(bpe_state *b) {
    free(b->sym);
    free(b->woff);
    free(b->wlen);
    free(b->wcount);
    free(b->wstamp);
    loom_tok_map64_free(&b->pmap);
    for (int64_t i = 0; i < b->n_pairs; i++) free(b->pwhere[i].w);
    free(b->pcount);
    free(b->pstamp);
    free(b->pkey);
    free(b->pwhere);
    free(b->heap);
    free(b->changed);
}

/* Merges (A, B) -> Z in word w, updating the pair counts. */
static loom_status merge_word(bpe_state *b, int32_t w, int32_t A, int32_t B, int32_t Z) {
    int32_t *s = b->sym + b->woff[w];
    int32_t L = b->wlen[w], i = 0, j = 0;
    int64_t c = b->wcount[w];
    while (i < L) {
        if (i + 1 < L && s[i] == A && s[i + 1] == B) {
            if (j > 0) {
                LOOM_CALL(pair_add(b, s[j - 1], A, -c, w));
                LOOM_CALL(pair_add(b, s[j - 1], Z, c, w));
            }
            if (i + 2 < L) {
                LOOM_CALL(pair_add(b, B, s[i + 2], -c, w));
                LOOM_CALL(pair_add(b, Z, s[i + 2], c, w));
            }
            LOOM_CALL(pair_add(b, A, B, -c, w));
            s[j++] = Z;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    b->wlen[w] = j;
    return LOOM_OK;
}

static loom_status train_bpe(trainer *tr, int64_t n_merges_max, uint32_t **merges_out, int64_t *n_merges_out) {
    bpe_state b;
    memset(&b, 0, sizeof b);
    loom_status st = LOOM_OK;
    uint32_t *merges = NULL;
    wlist list = {0};
    *merges_out = NULL;
    *n_merges_out = 0;
    loom_tok_strmap *u = &tr->units;
    int64_t W = (int64_t)u->n, total = 0;
    LOOM_CHECK_GOTO(st, W < INT32_MAX, LOOM_ERR_UNSUPPORTED, out, "%lld distinct words: too many to train on",
                    (long long)W);
    for (size_t i = 0; i <= u->mask; i++)
        if (u->slots[i].used) total += u->slots[i].len;
    b.n_words = W;
    b.sym = malloc((size_t)(total ? total : 1) * sizeof *b.sym);
    b.woff = malloc((size_t)(W ? W : 1) * sizeof *b.woff);
    b.wlen = malloc((size_t)(W ? W : 1) * sizeof *b.wlen);
    b.wcount = malloc((size_t)(W ? W : 1) * sizeof *b.wcount);
    b.wstamp = malloc((size_t)(W ? W : 1) * sizeof *b.wstamp);
    merges = malloc((size_t)(n_merges_max ? n_merges_max : 1) * 2 * sizeof *merges);
    LOOM_CHECK_GOTO(st, b.sym && b.woff && b.wlen && b.wcount && b.wstamp && merges, LOOM_ERR_NOMEM, out,
                    "out of memory for %lld words", (long long)W);
    LOOM_CALL_GOTO(st, loom_tok_map64_init(&b.pmap, 1 << 16), out);
    {
        int64_t w = 0, o = 0;
        for (size_t i = 0; i <= u->mask; i++) {
            const loom_tok_strslot *sl = &u->slots[i];
            if (!sl->used) continue;
            const uint8_t *k = loom_tok_strmap_key(u, sl);
            LOOM_CHECK_GOTO(st, sl->len < INT32_MAX, LOOM_ERR_UNSUPPORTED, out, "a word of %u bytes", sl->len);
            b.woff[w] = o;
            b.wlen[w] = (int32_t)sl->len;
            b.wcount[w] = sl->value;
            b.wstamp[w] = -1;
            for (uint32_t j = 0; j < sl->len; j++) b.sym[o + j] = k[j];
            o += sl->len;
            w++;
        }
    }
    loom_tok_strmap_free(u); /* the words now live in b */
    b.stamp = 0;
    for (int64_t w = 0; w < W; w++) {
        const int32_t *s = b.sym + b.woff[w];
        for (int32_t i = 0; i + 1 < b.wlen[w]; i++)
            LOOM_CALL_GOTO(st, pair_add(&b, s[i], s[i + 1], b.wcount[w], (int32_t)w), out);
    }
    for (int64_t i = 0; i < b.n_pairs; i++)
        if (b.pcount[i] > 0) LOOM_CALL_GOTO(st, hpush(&b, b.pcount[i], b.pkey[i]), out);
    int64_t nm = 0;
    while (nm < n_merges_max) {
        int64_t idx = -1;
        while (b.hn > 0) {
            hent x = hpop(&b);
            uint64_t v;
            if (!loom_tok_map64_get(&b.pmap, x.key, &v)) continue;
            int64_t cur = b.pcount[v];
            if (cur == x.count && cur > 0) {
                idx = (int64_t)v;
                break;
            }
            if (cur > 0 && cur < x.count) LOOM_CALL_GOTO(st, hpush(&b, cur, x.key), out);
        }
        if (idx < 0) break; /* no pair left: every word is one token */
        int32_t A = (int32_t)(b.pkey[idx] >> 32), B = (int32_t)(uint32_t)b.pkey[idx], Z = (int32_t)(256 + nm);
        merges[2 * nm] = (uint32_t)A;
        merges[2 * nm + 1] = (uint32_t)B;
        nm++;
        b.stamp++;
        b.n_changed = 0;
        list = b.pwhere[idx];
        memset(&b.pwhere[idx], 0, sizeof b.pwhere[idx]);
        for (int32_t k = 0; k < list.n; k++) {
            int32_t w = list.w[k];
            if (b.wstamp[w] == b.stamp) continue;
            b.wstamp[w] = b.stamp;
            LOOM_CALL_GOTO(st, merge_word(&b, w, A, B, Z), out);
        }
        free(list.w);
        list.w = NULL;
        free(b.pwhere[idx].w); /* (A, B) cannot reappear: Z is neither A nor B */
        memset(&b.pwhere[idx], 0, sizeof b.pwhere[idx]);
        for (int64_t k = 0; k < b.n_changed; k++) {
            int64_t i = b.changed[k];
            if (b.pcount[i] > 0) LOOM_CALL_GOTO(st, hpush(&b, b.pcount[i], b.pkey[i]), out);
        }
    }
    *merges_out = merges;
    *n_merges_out = nm;
    merges = NULL;
out:
    free(list.w);
    free(merges);
    bpe_state_free(&b);
    return st;
}

/* ---- char ---- */

typedef struct {
    const uint8_t *s;
    size_t len;
} char_ent;

static int char_ent_cmp(const void *pa, const void *pb) {
    const char_ent *a = pa, *b = pb;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* ---- driver ---- */

static loom_status train_run(const loom_tokenizer_train_config *cfg, const char *const *paths, int n_paths,
                             const char *text, size_t text_len, loom_tokenizer **out,
                             loom_tokenizer_train_stats *stats) {
    LOOM_CHECK(out != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_train: out is NULL");
    *out = NULL;
    loom_tokenizer_train_config def = loom_tokenizer_train_config_default();
    if (!cfg) cfg = &def;
    const char *kind = cfg->kind ? cfg->kind : "bpe";
    LOOM_CHECK(!strcmp(kind, "bpe") || !strcmp(kind, "char"), LOOM_ERR_INVALID_ARG,
               "tokenizer kind '%s': expected bpe or char", kind);
    int is_char = !strcmp(kind, "char");
    const char *const *special = cfg->special;
    int n_special = cfg->n_special;
    if (n_special < 0) {
        special = default_special;
        n_special = is_char ? 0 : 1;
    }
    LOOM_CHECK(n_special == 0 || special != NULL, LOOM_ERR_INVALID_ARG, "%d special tokens but no list", n_special);
    LOOM_CHECK(n_special <= 1000, LOOM_ERR_INVALID_ARG, "%d special tokens: at most 1000", n_special);
    if (!is_char)
        LOOM_CHECK(cfg->vocab_size >= 256 + n_special && cfg->vocab_size <= (1 << 24), LOOM_ERR_INVALID_ARG,
                   "vocabulary size %lld: a byte-level BPE needs 256 + %d (special tokens) <= size <= %d",
                   (long long)cfg->vocab_size, n_special, 1 << 24);
    trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.is_char = is_char;
    loom_status st = LOOM_OK;
    loom_tokenizer *t = NULL;
    char_ent *ce = NULL;
    LOOM_CALL(loom_tok_alloc(LOOM_TOK_KIND_BPE, "special", &tr.seg));
    for (int k = 0; k < n_special; k++) {
        LOOM_CHECK_GOTO(st, special[k] && special[k][0] && strlen(special[k]) <= 4096, LOOM_ERR_INVALID_ARG, out,
                        "special token %d is empty or longer than 4096 bytes", k);
        LOOM_CALL_GOTO(st, loom_tok_add_special(tr.seg, (const uint8_t *)special[k], strlen(special[k]), k), out);
    }
    tr.margin = LOOM_TOK_PRETOK_MARGIN + tr.seg->special_maxlen; /* as in encode.c */
    LOOM_CALL_GOTO(st, loom_tok_strmap_init(&tr.units, 1 << 16), out);
    if (paths) {
        for (int i = 0; i < n_paths; i++) LOOM_CALL_GOTO(st, feed_file(&tr, paths[i]), out);
    } else {
        size_t used;
        tr.stats.bytes = (int64_t)text_len;
        LOOM_CALL_GOTO(st, feed(&tr, (const uint8_t *)(text ? text : ""), text_len, 1, &used), out);
    }
    tr.stats.distinct = (int64_t)tr.units.n;
    LOOM_CHECK_GOTO(st, tr.stats.words > 0, LOOM_ERR_INVALID_ARG, out, "the training text is empty");
    if (!is_char) {
        LOOM_CALL_GOTO(st, loom_tok_alloc(LOOM_TOK_KIND_BPE, "bpe", &t), out);
        LOOM_CALL_GOTO(st, train_bpe(&tr, cfg->vocab_size - 256 - n_special, &t->merges, &t->n_merges), out);
        tr.stats.merges = t->n_merges;
        for (int k = 0; k < n_special; k++)
            LOOM_CALL_GOTO(st, loom_tok_add_special(t, (const uint8_t *)special[k], strlen(special[k]),
                                                    (int32_t)(256 + t->n_merges + k)), out);
        LOOM_CALL_GOTO(st, loom_tok_build_bpe(t, "trained tokenizer"), out);
    } else {
        size_t nc = tr.units.n, k = 0;
        ce = malloc((nc + (size_t)n_special + 1) * sizeof *ce);
        LOOM_CHECK_GOTO(st, ce != NULL, LOOM_ERR_NOMEM, out, "out of memory");
        for (size_t i = 0; i <= tr.units.mask; i++)
            if (tr.units.slots[i].used) {
                ce[k].s = loom_tok_strmap_key(&tr.units, &tr.units.slots[i]);
                ce[k].len = tr.units.slots[i].len;
                k++;
            }
        qsort(ce, nc, sizeof *ce, char_ent_cmp);
        for (int j = 0; j < n_special; j++) {
            ce[nc + (size_t)j].s = (const uint8_t *)special[j];
            ce[nc + (size_t)j].len = strlen(special[j]);
        }
        const uint8_t **p = malloc((nc + (size_t)n_special + 1) * sizeof *p);
        size_t *l = malloc((nc + (size_t)n_special + 1) * sizeof *l);
        if (p && l)
            for (size_t i = 0; i < nc + (size_t)n_special; i++) {
                p[i] = ce[i].s;
                l[i] = ce[i].len;
            }
        st = (p && l) ? loom_tok_alloc(LOOM_TOK_KIND_CHAR, "char", &t) : TOK_ERR(LOOM_ERR_NOMEM, "out of memory");
        if (st == LOOM_OK) st = loom_tok_set_tokens(t, (int64_t)(nc + (size_t)n_special), p, l);
        free(p);
        free(l);
        LOOM_CALL_GOTO(st, st, out);
        t->n_chars = (int64_t)nc;
        for (int j = 0; j < n_special; j++)
            LOOM_CALL_GOTO(st, loom_tok_add_special(t, (const uint8_t *)special[j], strlen(special[j]),
                                                    (int32_t)(nc + (size_t)j)), out);
        LOOM_CALL_GOTO(st, loom_tok_build_char(t, "trained tokenizer"), out);
    }
    if (stats) *stats = tr.stats;
    *out = t;
    t = NULL;
out:
    free(ce);
    loom_tok_strmap_free(&tr.units);
    loom_tokenizer_free(&tr.seg);
    loom_tokenizer_free(&t);
    return st;
}

loom_status loom_tokenizer_train(const loom_tokenizer_train_config *cfg, const char *const *paths, int n_paths,
                                 loom_tokenizer **out, loom_tokenizer_train_stats *stats) {
    LOOM_CHECK(paths != NULL && n_paths > 0, LOOM_ERR_INVALID_ARG, "loom tokenizer train: no input files");
    return train_run(cfg, paths, n_paths, NULL, 0, out, stats);
}

loom_status loom_tokenizer_train_text(const loom_tokenizer_train_config *cfg, const char *text, size_t len,
                                      loom_tokenizer **out, loom_tokenizer_train_stats *stats) {
    LOOM_CHECK(text != NULL || len == 0, LOOM_ERR_INVALID_ARG, "loom_tokenizer_train_text: text is NULL");
    return train_run(cfg, NULL, 0, text, len, out, stats);
}
