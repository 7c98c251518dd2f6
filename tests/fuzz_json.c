/* Fuzz test for loom/json.h. Property: every input either parses or fails with LOOM_ERR_FORMAT (or
 * LOOM_ERR_NOMEM) and a "line L col C: expected ..." message, leaving *out NULL; a parsed tree
 * serializes, re-parses, and serializes again to the same bytes. Leaks and overreads are the
 * sanitizers' to find (each input is copied into an allocation of exactly its size).
 *
 * Standalone (deterministic mutation loop over built-in seeds; exits non-zero on the first failure):
 *   gcc -std=c11 -O1 -g -fsanitize=address,undefined -Iinclude src/core/status.c src/core/json.c \
 *       tests/fuzz_json.c -lm -o fuzz_json && ./fuzz_json [iterations=200000] [seed]
 * libFuzzer:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DLOOM_LIBFUZZER -Iinclude src/core/status.c \
 *       src/core/json.c tests/fuzz_json.c -lm -o fuzz_json && ./fuzz_json -max_total_time=60 */
#define _POSIX_C_SOURCE 200809L
#include "loom/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Returns 1 if the property holds for this input, else prints why and returns 0. */
static int fuzz_check(const uint8_t *data, size_t size) {
    loom_json *j = NULL, *j2 = NULL;
    loom_error_clear();
    loom_status st = loom_json_parse((const char *)data, size, &j);
    if (st != LOOM_OK) {
        const char *msg = loom_error_message();
        if (j != NULL) fprintf(stderr, "fuzz: parse failed but *out is not NULL\n");
        else if (st != LOOM_ERR_FORMAT && st != LOOM_ERR_NOMEM) fprintf(stderr, "fuzz: unexpected status %s\n", loom_status_name(st));
        else if (!msg[0]) fprintf(stderr, "fuzz: parse failed with an empty message\n");
        else if (st == LOOM_ERR_FORMAT && (strncmp(msg, "line ", 5) != 0 || !strstr(msg, " col ") || !strstr(msg, "expected")))
            fprintf(stderr, "fuzz: message not in \"line L col C: expected X, found Y\" form: %s\n", msg);
        else return 1;
        return 0;
    }
    int ok = 0;
    loom_strbuf s1, s2;
    loom_strbuf_init(&s1);
    loom_strbuf_init(&s2);
    if (loom_json_serialize(j, &s1) != LOOM_OK) {
        fprintf(stderr, "fuzz: serialize failed: %s\n", loom_error_message());
    } else if (loom_json_parse(s1.buf, s1.len, &j2) != LOOM_OK) {
        fprintf(stderr, "fuzz: re-parse of \"%s\" failed: %s\n", s1.buf, loom_error_message());
    } else if (loom_json_serialize(j2, &s2) != LOOM_OK) {
        fprintf(stderr, "fuzz: second serialize failed: %s\n", loom_error_message());
    } else if (s1.len != s2.len || memcmp(s1.buf, s2.buf, s1.len) != 0) {
        fprintf(stderr, "fuzz: serialize(parse(serialize(x))) differs:\n  %s\n  %s\n", s1.buf, s2.buf);
    } else if (j->type != j2->type || j->n_children != j2->n_children) {
        fprintf(stderr, "fuzz: re-parsed tree differs at the root\n");
    } else {
        ok = 1;
    }
    loom_strbuf_free(&s1);
    loom_strbuf_free(&s2);
    loom_json_free(&j);
    loom_json_free(&j2);
    return ok;
}

#ifdef LOOM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!fuzz_check(data, size)) abort();
    return 0;
}
#else

static const char *const seeds[] = {
    "{\"model\": {\"family\": \"gpt2\", \"n_layer\": 12, \"n_head\": 12, \"d_model\": 768, \"bias\": true},\n"
    " \"optim\": {\"kind\": \"adamw\", \"lr\": 6e-4, \"betas\": [0.9, 0.95], \"weight_decay\": 0.1},\n"
    " \"train\": {\"steps\": 1000, \"data\": \"data/tiny.bin\", \"seed\": 1337, \"resume\": false}}",
    "{\"step\":12,\"loss\":3.2580001,\"lr\":0.00059999,\"grad_norm\":1.25,\"tokens_per_sec\":51234.125,\"mfu\":0.412}",
    "[0, -0, 1, -1, 0.5, -0.25e-3, 1E+10, 1e-400, 1.7976931348623157e308, 4.9406564584124654e-324, 123456789012345678]",
    "[\"\", \"plain\", \"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t\", \"\\u00e9\\u20ac\\ud83d\\ude00\", \"\\u0000\", \"caf\xC3\xA9 \xF0\x9F\x98\x80\"]",
    "[[[[[]]]], {}, [{}], {\"a\": {\"b\": {\"c\": [null, true, false]}}}]",
    "{\"a\": 1, \"b\": [1, 2, {\"c\": \"d\"}], \"e\": null, \"\": \"empty key\", \"\xC3\xA9\": 2}",
    "\xEF\xBB\xBF {\"bom\": true}",
    "  \t\r\n  \"top-level string\"  \n",
    "-12.5e+3",
    "null",
    "{\"dup\": 1, \"dup\": 2}",
    "[1, 2, 3,]",
};

/* Fragments worth splicing in: structure, escapes, edge numbers, bad UTF-8. */
static const char *const tokens[] = {
    "{", "}", "[", "]", "\"", "\\", ",", ":", "\"k\":", "\\u", "\\uD800", "\\uDC00", "\\uD83D\\uDE00", "\\u0000",
    "true", "false", "null", "0", "-", "01", "1e999", "-0.0e-0", "1.", ".5", "NaN", "Infinity", "\xFF", "\xC3",
    "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xC0\xAF", "\xEF\xBB\xBF", " ", "\n", "\t", "\x00", "\x1f", "//", "/*",
};

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static size_t below(uint64_t *s, size_t n) { return n ? (size_t)(xorshift(s) % n) : 0; }

#define FUZZ_MAX 300000 /* bytes; room for 100000-deep nesting and then some */

typedef struct {
    char *buf;
    size_t len;
} fuzz_input;

/* Inserts n bytes of src at position at (clipped to FUZZ_MAX). */
static void fuzz_insert(fuzz_input *in, size_t at, const char *src, size_t n) {
    if (n > FUZZ_MAX - in->len) n = FUZZ_MAX - in->len;
    memmove(in->buf + at + n, in->buf + at, in->len - at);
    memmove(in->buf + at, src, n);
    in->len += n;
}

static void fuzz_mutate(fuzz_input *in, uint64_t *rng) {
    int steps = 1 + (int)below(rng, 8);
    for (int k = 0; k < steps; k++) {
        size_t at = below(rng, in->len + 1);
        switch (below(rng, 9)) {
        case 0: /* flip a bit */
            if (in->len) in->buf[below(rng, in->len)] ^= (char)(1u << below(rng, 8));
            break;
        case 1: /* set a byte to anything */
            if (in->len) in->buf[below(rng, in->len)] = (char)below(rng, 256);
            break;
        case 2: case 3: { /* insert a token */
            const char *t = tokens[below(rng, sizeof tokens / sizeof tokens[0])];
            fuzz_insert(in, at, t, t[0] ? strlen(t) : 1);
            break;
        }
        case 4: { /* delete a range */
            size_t n = below(rng, 1 + (in->len - at < 16 ? in->len - at : 16));
            memmove(in->buf + at, in->buf + at + n, in->len - at - n);
            in->len -= n;
            break;
        }
        case 5: /* truncate */
            in->len = at;
            break;
        case 6: { /* duplicate a range elsewhere */
            if (!in->len) break;
            size_t from = below(rng, in->len), n = 1 + below(rng, in->len - from < 64 ? in->len - from : 64);
            char tmp[64];
            memcpy(tmp, in->buf + from, n);
            fuzz_insert(in, at, tmp, n);
            break;
        }
        case 7: { /* a digit string, maybe long */
            char num[400];
            size_t n = 1 + below(rng, below(rng, 8) == 0 ? sizeof num : 20);
            for (size_t i = 0; i < n; i++) num[i] = (char)('0' + below(rng, 10));
            fuzz_insert(in, at, num, n);
            break;
        }
        default: { /* swap two bytes */
            if (in->len < 2) break;
            size_t a = below(rng, in->len), b = below(rng, in->len);
            char c = in->buf[a];
            in->buf[a] = in->buf[b];
            in->buf[b] = c;
            break;
        }
        }
    }
}

/* Deep nesting: up to 100000 openers of one kind, sometimes closed, sometimes around a seed. */
static void fuzz_deep(fuzz_input *in, uint64_t *rng) {
    static const char *const open[] = {"[", "{\"a\":", "[{\"k\":", " [ "};
    size_t depth = below(rng, 4) == 0 ? 100000 : 200 + below(rng, 120), kind = below(rng, 4);
    const char *o = open[kind], *c = kind == 0 ? "]" : kind == 1 ? "}" : kind == 2 ? "}]" : " ] ";
    in->len = 0;
    for (size_t i = 0; i < depth && in->len < FUZZ_MAX / 2; i++) fuzz_insert(in, in->len, o, strlen(o));
    size_t opened = in->len / strlen(o);
    if (below(rng, 2)) fuzz_insert(in, in->len, "1", 1);
    if (below(rng, 2))
        for (size_t i = 0; i < opened && in->len < FUZZ_MAX - 4; i++) fuzz_insert(in, in->len, c, strlen(c));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 200000;
    uint64_t rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x2545F4914F6CDD1Dull;
    if (iters < 0 || rng == 0) {
        fprintf(stderr, "usage: %s [iterations >= 0] [seed != 0]\n", argv[0]);
        return 2;
    }
    size_t n_seeds = sizeof seeds / sizeof seeds[0];
    enum { POOL = 64 };
    fuzz_input pool[POOL]; /* inputs that parsed, to mutate further */
    size_t n_pool = 0;
    fuzz_input in = {malloc(FUZZ_MAX), 0};
    for (size_t i = 0; i < POOL; i++) pool[i].buf = NULL;
    if (!in.buf) return 2;
    long parsed = 0, rejected = 0;
    double t0 = now_s(), slowest = 0;
    int ok = 1;
    for (long it = 0; it < iters && ok; it++) {
        if (it < (long)n_seeds) { /* each seed unmutated first */
            in.len = strlen(seeds[it]);
            memcpy(in.buf, seeds[it], in.len);
        } else if (below(&rng, 1000) == 0) {
            fuzz_deep(&in, &rng);
        } else {
            const fuzz_input *src = NULL;
            fuzz_input seed = {(char *)seeds[below(&rng, n_seeds)], 0};
            if (n_pool && below(&rng, 2)) src = &pool[below(&rng, n_pool)];
            else seed.len = strlen(seed.buf), src = &seed;
            memcpy(in.buf, src->buf, src->len);
            in.len = src->len;
            fuzz_mutate(&in, &rng);
        }
        /* exactly-sized copy, so reading one byte past the input is an ASan error */
        char *exact = malloc(in.len ? in.len : 1);
        if (!exact) return 2;
        memcpy(exact, in.buf, in.len);
        double t = now_s();
        ok = fuzz_check((const uint8_t *)exact, in.len);
        t = now_s() - t;
        if (t > slowest) slowest = t;
        if (t > 1.0) {
            fprintf(stderr, "fuzz: one input took %.2f s (%zu bytes)\n", t, in.len);
            ok = 0;
        }
        loom_json *j = NULL;
        if (ok && loom_json_parse(exact, in.len, &j) == LOOM_OK) {
            parsed++;
            if (in.len < 4096) { /* keep it to mutate further */
                size_t slot = n_pool < POOL ? n_pool++ : below(&rng, POOL);
                char *copy = realloc(pool[slot].buf, in.len ? in.len : 1);
                if (copy) {
                    memcpy(copy, exact, in.len);
                    pool[slot].buf = copy;
                    pool[slot].len = in.len;
                }
            }
        } else if (ok) {
            rejected++;
        }
        loom_json_free(&j);
        if (!ok) {
            fprintf(stderr, "fuzz: failed at iteration %ld on %zu bytes:\n  ", it, in.len);
            for (size_t i = 0; i < in.len && i < 400; i++) {
                unsigned char c = (unsigned char)exact[i];
                if (c >= 0x20 && c < 0x7f && c != '\\') fputc(c, stderr);
                else fprintf(stderr, "\\x%02x", c);
            }
            fputc('\n', stderr);
        }
        free(exact);
    }
    for (size_t i = 0; i < POOL; i++) free(pool[i].buf);
    free(in.buf);
    printf("fuzz_json: %ld inputs: %ld parsed, %ld rejected, %d failed; slowest %.1f ms, total %.1f s\n",
           parsed + rejected + (ok ? 0 : 1), parsed, rejected, ok ? 0 : 1, 1e3 * slowest, now_s() - t0);
    return ok ? 0 : 1;
}
#endif
