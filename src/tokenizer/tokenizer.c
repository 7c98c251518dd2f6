/* The public interface (include/loom/tokenizer.h): loading by name, freeing, accessors, and the helpers
 * that build a tokenizer's tables (shared by the GPT-2 loader, the file reader and the trainer). */
#define _DEFAULT_SOURCE /* strdup */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer_impl.h"

loom_status loom_tok_alloc(loom_tok_kind kind, const char *name, loom_tokenizer **out) {
    *out = NULL;
    loom_tokenizer *t = calloc(1, sizeof *t);
    char *nm = strdup(name ? name : "");
    if (!t || !nm) {
        free(t);
        free(nm);
        return TOK_ERR(LOOM_ERR_NOMEM, "out of memory for a tokenizer");
    }
    t->kind = kind;
    t->name = nm;
    t->eot = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = b;
    *out = t;
    return LOOM_OK;
}

void loom_tokenizer_free(loom_tokenizer **tp) {
    if (!tp || !*tp) return;
    loom_tokenizer *t = *tp;
    free(t->name);
    free(t->blob);
    free(t->off);
    loom_tok_map64_free(&t->pairs);
    free(t->pairs16);
    loom_tok_map64_free(&t->chars);
    free(t->merges);
    for (int i = 0; i < t->n_special; i++) free(t->special[i].bytes);
    free(t->special);
    free(t);
    *tp = NULL;
}

loom_status loom_tok_set_tokens(loom_tokenizer *t, int64_t n, const uint8_t *const *bytes, const size_t *lens) {
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) total += lens[i];
    free(t->blob);
    free(t->off);
    t->blob = malloc(total ? total : 1);
    t->off = malloc((size_t)(n + 1) * sizeof *t->off);
    LOOM_CHECK(t->blob && t->off, LOOM_ERR_NOMEM, "out of memory for %lld tokens", (long long)n);
    size_t p = 0;
    for (int64_t i = 0; i < n; i++) {
        t->off[i] = (int64_t)p;
        if (lens[i]) memcpy(t->blob + p, bytes[i], lens[i]);
        p += lens[i];
    }
    t->off[n] = (int64_t)p;
    t->vocab_size = n;
    return LOOM_OK;
}

loom_status loom_tok_add_special(loom_tokenizer *t, const uint8_t *bytes, size_t len, int32_t id) {
    LOOM_CHECK(len > 0, LOOM_ERR_INVALID_ARG, "a special token must not be empty");
    for (int i = 0; i < t->n_special; i++)
        LOOM_CHECK(t->special[i].len != len || memcmp(t->special[i].bytes, bytes, len) != 0, LOOM_ERR_INVALID_ARG,
                   "special token '%.*s' given twice", (int)(len > 64 ? 64 : len), (const char *)bytes);
    loom_tok_special *s = realloc(t->special, (size_t)(t->n_special + 1) * sizeof *s);
    LOOM_CHECK(s != NULL, LOOM_ERR_NOMEM, "out of memory for special tokens");
    t->special = s;
    uint8_t *b = malloc(len);
    LOOM_CHECK(b != NULL, LOOM_ERR_NOMEM, "out of memory for special tokens");
    memcpy(b, bytes, len);
    s[t->n_special].bytes = b;
    s[t->n_special].len = len;
    s[t->n_special].id = id;
    t->n_special++;
    if (len > t->special_maxlen) t->special_maxlen = len;
    /* end-of-text: <|endoftext|> when there is one, else the first special token */
    if (t->eot < 0 || (len == 13 && memcmp(bytes, "<|endoftext|>", 13) == 0)) t->eot = id;
    return LOOM_OK;
}

/* Token table and pair map of a bpe tokenizer: 256 bytes, then one token per merge, then the specials
 * (t->special must already hold them, with ids 256 + n_merges + k). */
loom_status loom_tok_build_bpe(loom_tokenizer *t, const char *what) {
    int64_t nm = t->n_merges, base = 256 + nm, n = base + t->n_special;
    LOOM_CHECK(nm >= 0 && n <= INT32_MAX, LOOM_ERR_FORMAT, "%s: %lld merges is too many", what, (long long)nm);
    int64_t *len = malloc((size_t)n * sizeof *len);
    loom_status st = LOOM_OK;
    LOOM_CHECK(len != NULL, LOOM_ERR_NOMEM, "out of memory for %lld tokens", (long long)n);
    size_t total = 0;
    for (int64_t i = 0; i < 256; i++) len[i] = 1;
    total = 256;
    for (int64_t i = 0; i < nm; i++) {
        uint32_t a = t->merges[2 * i], b = t->merges[2 * i + 1];
        LOOM_CHECK_GOTO(st, a < (uint64_t)(256 + i) && b < (uint64_t)(256 + i), LOOM_ERR_FORMAT, out,
                        "%s: merge %lld joins tokens %u and %u, but only ids below %lld exist before it", what,
                        (long long)i, a, b, (long long)(256 + i));
        len[256 + i] = len[a] + len[b];
        LOOM_CHECK_GOTO(st, len[256 + i] <= (1 << 20), LOOM_ERR_FORMAT, out,
                        "%s: merge %lld makes a token of %lld bytes (at most 1 MiB)", what, (long long)i,
                        (long long)len[256 + i]);
        total += (size_t)len[256 + i];
    }
    for (int k = 0; k < t->n_special; k++) {
        LOOM_CHECK_GOTO(st, t->special[k].id == base + k, LOOM_ERR_INTERNAL, out, "special token ids out of order");
        len[base + k] = (int64_t)t->special[k].len;
        total += t->special[k].len;
    }
    free(t->blob);
    free(t->off);
    t->blob = malloc(total);
    t->off = malloc((size_t)(n + 1) * sizeof *t->off);
    LOOM_CHECK_GOTO(st, t->blob && t->off, LOOM_ERR_NOMEM, out, "out of memory for %lld tokens", (long long)n);
    size_t p = 0;
    for (int64_t i = 0; i < n; i++) {
        t->off[i] = (int64_t)p;
        if (i < 256) t->blob[p] = (uint8_t)i;
        else if (i < base) {
            uint32_t a = t->merges[2 * (i - 256)], b = t->merges[2 * (i - 256) + 1];
            memcpy(t->blob + p, t->blob + t->off[a], (size_t)len[a]);
            memcpy(t->blob + p + len[a], t->blob + t->off[b], (size_t)len[b]);
        } else memcpy(t->blob + p, t->special[i - base].bytes, t->special[i - base].len);
        p += (size_t)len[i];
    }
    t->off[n] = (int64_t)p;
    t->vocab_size = n;
    loom_tok_map64_free(&t->pairs);
    LOOM_CALL_GOTO(st, loom_tok_map64_init(&t->pairs, (size_t)nm), out);
    for (int64_t i = 0; i < nm; i++)
        LOOM_CALL_GOTO(st, loom_tok_map64_put(&t->pairs, (uint64_t)t->merges[2 * i] << 32 | t->merges[2 * i + 1],
                                              (uint64_t)i << 32 | (uint64_t)(256 + i)), out);
    for (int b = 0; b < 256; b++) t->byte_id[b] = b;
    LOOM_CALL_GOTO(st, loom_tok_pack_pairs(t), out);
out:
    free(len);
    return st;
}

/* The char map of a char tokenizer whose token table holds its characters (ids 0..n_chars-1) and specials. */
loom_status loom_tok_build_char(loom_tokenizer *t, const char *what) {
    loom_tok_map64_free(&t->chars);
    LOOM_CALL(loom_tok_map64_init(&t->chars, (size_t)t->n_chars));
    for (int64_t i = 0; i < t->n_chars; i++) {
        const uint8_t *c = t->blob + t->off[i];
        size_t l = (size_t)(t->off[i + 1] - t->off[i]);
        uint32_t cp;
        LOOM_CHECK(l >= 1 && l <= 4 && loom_tok_utf8_next(c, l, &cp) == l, LOOM_ERR_FORMAT,
                   "%s: character %lld is not one UTF-8 character or one byte", what, (long long)i);
        LOOM_CHECK(l == 1 || cp != LOOM_TOK_INVALID_CP, LOOM_ERR_FORMAT, "%s: character %lld is not valid UTF-8",
                   what, (long long)i);
        uint64_t key = loom_tok_char_key(c, l), v;
        LOOM_CHECK(!loom_tok_map64_get(&t->chars, key, &v), LOOM_ERR_FORMAT,
                   "%s: character %lld repeats character %lld", what, (long long)i, (long long)v);
        LOOM_CALL(loom_tok_map64_put(&t->chars, key, (uint64_t)i));
    }
    return LOOM_OK;
}

loom_status loom_tok_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    LOOM_CHECK(f != NULL, LOOM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t c = cap ? 2 * cap : 1 << 20;
            char *b = realloc(buf, c + 1);
            if (!b) {
                free(buf);
                fclose(f);
                return TOK_ERR(LOOM_ERR_NOMEM, "%s: out of memory reading it", path);
            }
            buf = b;
            cap = c;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return TOK_ERR(LOOM_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return LOOM_OK;
}

static loom_status load_byte(loom_tokenizer **out) {
    loom_tokenizer *t;
    LOOM_CALL(loom_tok_alloc(LOOM_TOK_KIND_BYTE, "byte", &t));
    uint8_t bytes[256];
    const uint8_t *p[256];
    size_t l[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (uint8_t)i;
        p[i] = bytes + i;
        l[i] = 1;
    }
    loom_status st = loom_tok_set_tokens(t, 256, p, l);
    if (st != LOOM_OK) {
        loom_tokenizer_free(&t);
        LOOM_CALL(st);
    }
    *out = t;
    return LOOM_OK;
}

loom_status loom_tokenizer_load(const char *name, loom_tokenizer **out) {
    LOOM_CHECK(out != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_load: out is NULL");
    *out = NULL;
    LOOM_CHECK(name != NULL && name[0], LOOM_ERR_INVALID_ARG,
               "no tokenizer named (expected gpt2, byte, or the path of a tokenizer file)");
    if (!strcmp(name, "byte")) return load_byte(out);
    if (!strcmp(name, "gpt2")) {
        char dir[4096];
        LOOM_CALL(loom_tok_gpt2_find(dir, sizeof dir));
        LOOM_CALL(loom_tok_gpt2_load_dir(dir, out));
        free((*out)->name);
        (*out)->name = strdup("gpt2");
        if (!(*out)->name) {
            loom_tokenizer_free(out);
            return TOK_ERR(LOOM_ERR_NOMEM, "out of memory");
        }
        return LOOM_OK;
    }
    struct stat sb;
    LOOM_CHECK(stat(name, &sb) == 0, LOOM_ERR_IO,
               "tokenizer '%s': %s (expected gpt2, byte, or the path of a tokenizer file from `loom tokenizer train`)",
               name, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return loom_tok_gpt2_load_dir(name, out);
    char *data;
    size_t len;
    LOOM_CALL(loom_tok_read_file(name, &data, &len));
    loom_status st = loom_tokenizer_load_memory(data, len, name, out);
    free(data);
    LOOM_CALL(st);
    return LOOM_OK;
}

int64_t loom_tokenizer_vocab_size(const loom_tokenizer *t) { return t ? t->vocab_size : 0; }
int32_t loom_tokenizer_eot(const loom_tokenizer *t) { return t ? t->eot : -1; }
const char *loom_tokenizer_name(const loom_tokenizer *t) { return t ? t->name : ""; }
int loom_tokenizer_n_special(const loom_tokenizer *t) { return t ? t->n_special : 0; }
const char *loom_tokenizer_unicode_version(void) { return loom_tok_unicode_version; }

const char *loom_tokenizer_kind(const loom_tokenizer *t) {
    if (!t) return "";
    switch (t->kind) {
    case LOOM_TOK_KIND_BYTE: return "byte";
    case LOOM_TOK_KIND_GPT2: return "gpt2";
    case LOOM_TOK_KIND_BPE: return "bpe";
    case LOOM_TOK_KIND_CHAR: return "char";
    }
    return "";
}

const char *loom_tokenizer_special(const loom_tokenizer *t, int i, size_t *len, int32_t *id) {
    if (!t || i < 0 || i >= t->n_special) return NULL;
    if (len) *len = t->special[i].len;
    if (id) *id = t->special[i].id;
    return (const char *)t->special[i].bytes;
}

/* ---- the vocabulary (exporters) ---- */

int loom_tokenizer_is_byte_level(const loom_tokenizer *t) { return t->kind != LOOM_TOK_KIND_CHAR; }

int loom_tokenizer_is_special(const loom_tokenizer *t, int32_t id) {
    for (int i = 0; i < t->n_special; i++)
        if (t->special[i].id == id) return 1;
    return 0;
}

static int by_rank(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

loom_status loom_tokenizer_merges(const loom_tokenizer *t, int32_t **pairs, int64_t *n) {
    *pairs = NULL;
    *n = 0;
    if (t->kind == LOOM_TOK_KIND_BPE) { /* merge i joins merges[2i], merges[2i+1] */
        int32_t *p = malloc((size_t)(2 * t->n_merges + 1) * sizeof *p);
        LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory for %lld merges", (long long)t->n_merges);
        for (int64_t i = 0; i < 2 * t->n_merges; i++) p[i] = (int32_t)t->merges[i];
        *pairs = p;
        *n = t->n_merges;
        return LOOM_OK;
    }
    if (t->kind != LOOM_TOK_KIND_GPT2) return LOOM_OK;
    /* the pair map: (left << 32 | right) -> (rank << 32 | merged); sorted by rank */
    const size_t slots = t->pairs.mask + 1;
    uint64_t *ranked = malloc((t->pairs.n + 1) * 2 * sizeof *ranked);
    LOOM_CHECK(ranked != NULL, LOOM_ERR_NOMEM, "out of memory for %zu merges", t->pairs.n);
    size_t k = 0;
    for (size_t i = 0; i < slots && k < t->pairs.n; i++) {
        const uint64_t key = t->pairs.slots[2 * i];
        if (key == LOOM_TOK_NO_KEY) continue;
        ranked[2 * k] = t->pairs.slots[2 * i + 1] >> 32;
        ranked[2 * k + 1] = key;
        k++;
    }
    qsort(ranked, k, 2 * sizeof *ranked, by_rank);
    int32_t *p = malloc((k * 2 + 1) * sizeof *p);
    if (!p) {
        free(ranked);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory for %zu merges", k);
    }
    for (size_t i = 0; i < k; i++) {
        p[2 * i] = (int32_t)(ranked[2 * i + 1] >> 32);
        p[2 * i + 1] = (int32_t)(uint32_t)ranked[2 * i + 1];
    }
    free(ranked);
    *pairs = p;
    *n = (int64_t)k;
    return LOOM_OK;
}
