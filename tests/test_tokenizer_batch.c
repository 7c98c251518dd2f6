/* Test helper for tests/test_tokenizer.js: encodes many texts in one process.
 *   test_tokenizer_batch TOKENIZER MODE CASES
 * CASES: a sequence of [u32 little-endian length][bytes]. MODE:
 *   encode            one line of space-separated ids per case (special tokens as ids)
 *   encode-nospecial  the same with LOOM_TOKENIZER_NO_SPECIAL
 *   roundtrip         per case: decode(encode(x)) == x byte for byte, and encoding in pieces
 *                     (LOOM_TOKENIZER_PARTIAL, pseudo-random piece sizes) gives the ids of the whole;
 *                     prints "roundtrip ok N" or the first failure, exit 1
 *   test_tokenizer_batch --write-mini DIR
 * writes the miniature encoder.json + vocab.bpe of tests/test_tokenizer_mini.c into DIR (which then works as
 * --tokenizer DIR, and with the JavaScript encoder copied next to it).
 *   test_tokenizer_batch --classes
 * prints the Unicode version of loom's class tables, then one "FIRST LAST CLASS" line (hex, hex, 1 letter,
 * 2 number, 3 space) per range of code points that are not OTHER. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/tokenizer.h"
#include "../src/tokenizer/tokenizer_impl.h" /* loom_tok_ranges */
#include "test_tokenizer_mini.c"

static int fail_msg(const char *what) {
    fprintf(stderr, "test_tokenizer_batch: %s: %s\n", what, loom_error_message());
    return 1;
}

/* Encodes text in pieces of pseudo-random sizes, as a stream would arrive. */
static int encode_pieces(const loom_tokenizer *t, const char *text, size_t len, uint64_t *rng, int32_t **ids,
                         int64_t *n) {
    int32_t *all = NULL;
    int64_t na = 0;
    size_t start = 0, avail = 0;
    while (1) {
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t step = (size_t)(*rng >> 33) % 24 + 1;
        avail = avail + step > len - start ? len - start : avail + step;
        int final = start + avail == len;
        int32_t *p;
        int64_t np;
        size_t used;
        if (loom_tokenizer_encode_ex(t, text + start, avail, final ? 0u : LOOM_TOKENIZER_PARTIAL, &p, &np, &used) !=
            LOOM_OK) {
            free(all);
            return fail_msg("encode (pieces)");
        }
        int32_t *q = realloc(all, (size_t)(na + np + 1) * sizeof *q);
        if (!q) {
            free(p);
            free(all);
            return 1;
        }
        all = q;
        memcpy(all + na, p, (size_t)np * sizeof *p);
        na += np;
        free(p);
        start += used;
        avail -= used;
        if (final) break;
    }
    *ids = all;
    *n = na;
    return 0;
}

static int write_file(const char *dir, const char *name, const char *data, size_t len) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(p);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--write-mini")) {
        size_t ne, nv;
        char *e = mini_encoder_json(&ne), *v = mini_vocab_bpe(&nv);
        int rc = write_file(argv[2], "encoder.json", e, ne) || write_file(argv[2], "vocab.bpe", v, nv);
        free(e);
        free(v);
        return rc;
    }
    if (argc == 2 && !strcmp(argv[1], "--classes")) { /* loom's code-point classes, for the JS test */
        printf("%s\n", loom_tok_unicode_version);
        for (int32_t i = 0; i < loom_tok_n_ranges; i++)
            printf("%X %X %u\n", (unsigned)loom_tok_ranges[i].first, (unsigned)loom_tok_ranges[i].last,
                   (unsigned)loom_tok_ranges[i].cls);
        return 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: test_tokenizer_batch TOKENIZER encode|encode-nospecial|roundtrip CASES\n"
                        "       test_tokenizer_batch --classes | --write-mini DIR\n");
        return 2;
    }
    loom_tokenizer *t;
    if (loom_tokenizer_load(argv[1], &t) != LOOM_OK) return fail_msg("load");
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 1;
    }
    const char *mode = argv[2];
    int rt = !strcmp(mode, "roundtrip");
    unsigned flags = !strcmp(mode, "encode-nospecial") ? LOOM_TOKENIZER_NO_SPECIAL : 0;
    uint64_t rng = 12345;
    int64_t ncase = 0;
    int rc = 0;
    for (;;) {
        unsigned char h[4];
        if (fread(h, 1, 4, f) != 4) break;
        size_t len = (size_t)h[0] | (size_t)h[1] << 8 | (size_t)h[2] << 16 | (size_t)h[3] << 24;
        char *text = malloc(len + 1);
        if (!text || fread(text, 1, len, f) != len) {
            fprintf(stderr, "test_tokenizer_batch: truncated cases file\n");
            free(text);
            rc = 1;
            break;
        }
        int32_t *ids;
        int64_t n;
        if (loom_tokenizer_encode_ex(t, text, len, flags, &ids, &n, NULL) != LOOM_OK) {
            free(text);
            rc = fail_msg("encode");
            break;
        }
        if (!rt) {
            for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
            putchar('\n');
        } else {
            char *back;
            size_t nb;
            int32_t *pids = NULL;
            int64_t pn = 0;
            if (loom_tokenizer_decode(t, ids, n, &back, &nb) != LOOM_OK) rc = fail_msg("decode");
            else {
                if (nb != len || memcmp(back, text, len) != 0) {
                    fprintf(stderr, "test_tokenizer_batch: case %lld: decode(encode(x)) != x (%zu bytes in, %zu out)\n",
                            (long long)ncase, len, nb);
                    rc = 1;
                }
                free(back);
            }
            if (!rc && encode_pieces(t, text, len, &rng, &pids, &pn) != 0) rc = 1;
            if (!rc && (pn != n || memcmp(pids, ids, (size_t)n * sizeof *ids) != 0)) {
                fprintf(stderr, "test_tokenizer_batch: case %lld: encoding in pieces gave %lld ids, the whole %lld%s\n",
                        (long long)ncase, (long long)pn, (long long)n, pn == n ? " (different ids)" : "");
                rc = 1;
            }
            free(pids);
        }
        free(ids);
        free(text);
        ncase++;
        if (rc) break;
    }
    fclose(f);
    loom_tokenizer_free(&t);
    if (rt && !rc) printf("roundtrip ok %lld\n", (long long)ncase);
    return rc;
}
