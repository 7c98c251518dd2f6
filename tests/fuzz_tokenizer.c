/* Fuzz test for the tokenizer's parsers: the loom tokenizer file (loom_tokenizer_load_memory), GPT-2's
 * encoder.json and vocab.bpe (loom_tokenizer_load_gpt2_memory). Property: every input either loads, and
 * then the tokenizer round-trips text exactly (decode(encode(x)) == x; a char tokenizer may instead refuse
 * a character with a clear error), or fails with LOOM_ERR_FORMAT / LOOM_ERR_CHECKSUM (LOOM_ERR_NOMEM), a
 * non-empty one-line message and *out NULL. Mutated loom files get their checksums recomputed most of the
 * time, so that the structure checks behind the CRCs are reached. Leaks and overreads are the sanitizers'
 * to find (each input lives in an allocation of exactly its size).
 *
 * Standalone (deterministic mutation loop over built-in seeds; exits non-zero on the first failure):
 *   gcc -std=gnu11 -O1 -g -fsanitize=address,undefined -Iinclude -Itests src/core/status.c src/core/json.c \
 *       src/io/crc32c.c src/tokenizer/[a-z]*.c tests/fuzz_tokenizer.c -lm -o fuzz_tokenizer \
 *       && ./fuzz_tokenizer [iterations=20000] [seed]
 * libFuzzer (the first byte picks the parser: 0 loom file, 1 encoder.json, 2 vocab.bpe):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DLOOM_LIBFUZZER -Iinclude -Itests src/core/status.c \
 *       src/core/json.c src/io/crc32c.c src/tokenizer/[a-z]*.c tests/fuzz_tokenizer.c -lm -o fuzz_tokenizer \
 *       && ./fuzz_tokenizer -max_total_time=60 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/crc32c.h"
#include "loom/tokenizer.h"
#include "test_tokenizer_mini.c"

static const char sample[] = "Hello, world! It's 2024 \xe2\x80\x94 caf\xc3\xa9 \xf0\x9f\x98\x80 \xff\xfe<|endoftext|>"
                             "  \n\n'll 've x\xc3";

static char *g_enc, *g_bpe; /* the valid miniature files */
static long g_loaded;       /* inputs that loaded */
static size_t g_enc_len, g_bpe_len;

static int msg_ok(loom_status st) {
    const char *m = loom_error_message();
    if (st != LOOM_ERR_FORMAT && st != LOOM_ERR_CHECKSUM && st != LOOM_ERR_NOMEM) {
        fprintf(stderr, "fuzz: unexpected status %s: %s\n", loom_status_name(st), m);
        return 0;
    }
    if (!m[0] || strchr(m, '\n')) {
        fprintf(stderr, "fuzz: message is empty or not one line: \"%s\"\n", m);
        return 0;
    }
    return 1;
}

/* a loaded tokenizer must round-trip (or, for char, refuse a character clearly) */
static int use_ok(const loom_tokenizer *t, const uint8_t *extra, size_t extra_len) {
    const char *texts[2] = {sample, (const char *)extra};
    size_t lens[2] = {sizeof sample - 1, extra_len};
    for (int k = 0; k < 2; k++) {
        int32_t *ids;
        int64_t n;
        loom_status st = loom_tokenizer_encode(t, texts[k], lens[k], &ids, &n);
        if (st != LOOM_OK) {
            if (!strcmp(loom_tokenizer_kind(t), "char") && st == LOOM_ERR_INVALID_ARG &&
                !strchr(loom_error_message(), '\n'))
                continue;
            fprintf(stderr, "fuzz: encode failed on a loaded %s tokenizer: %s\n", loom_tokenizer_kind(t),
                    loom_error_message());
            return 0;
        }
        char *back;
        size_t nb;
        st = loom_tokenizer_decode(t, ids, n, &back, &nb);
        free(ids);
        if (st != LOOM_OK || nb != lens[k] || memcmp(back, texts[k], nb) != 0) {
            fprintf(stderr, "fuzz: round trip failed on a loaded %s tokenizer\n", loom_tokenizer_kind(t));
            if (st == LOOM_OK) free(back);
            return 0;
        }
        free(back);
    }
    return 1;
}

/* target 0: loom file; 1: encoder.json (with the valid vocab.bpe); 2: vocab.bpe (with the valid encoder.json) */
static int fuzz_check(int target, const uint8_t *data, size_t size) {
    loom_tokenizer *t = NULL;
    loom_status st;
    loom_error_clear();
    if (target == 0) st = loom_tokenizer_load_memory(data, size, "fuzz.tok", &t);
    else if (target == 1) st = loom_tokenizer_load_gpt2_memory((const char *)data, size, g_bpe, g_bpe_len, &t);
    else st = loom_tokenizer_load_gpt2_memory(g_enc, g_enc_len, (const char *)data, size, &t);
    if (st != LOOM_OK) {
        if (t != NULL) {
            fprintf(stderr, "fuzz: load failed but *out is not NULL\n");
            return 0;
        }
        return msg_ok(st);
    }
    int ok = use_ok(t, data, size);
    g_loaded++;
    loom_tokenizer_free(&t);
    return ok;
}

static void init_globals(void) {
    if (!g_enc) g_enc = mini_encoder_json(&g_enc_len);
    if (!g_bpe) g_bpe = mini_vocab_bpe(&g_bpe_len);
}

#ifdef LOOM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_globals();
    if (size < 1) return 0;
    uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
    memcpy(copy, data + 1, size - 1);
    int ok = fuzz_check(data[0] % 3, copy, size - 1);
    free(copy);
    if (!ok) abort();
    return 0;
}
#else

static uint64_t rng;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 33);
}

typedef struct {
    uint8_t *d;
    size_t n;
} blob;

static blob seeds[8];
static int seed_target[8], n_seeds;

static void add_seed(int target, const void *d, size_t n) {
    seeds[n_seeds].d = malloc(n);
    memcpy(seeds[n_seeds].d, d, n);
    seeds[n_seeds].n = n;
    seed_target[n_seeds++] = target;
}

static int make_seeds(void) {
    init_globals();
    add_seed(1, g_enc, g_enc_len);
    add_seed(2, g_bpe, g_bpe_len);
    const char *corpus = "the king and the queen, the lord's men; 1,234 caf\xc3\xa9s \xf0\x9f\x98\x80! \xff"
                         " the theatre thereof <|endoftext|> then they thought: there, then.\n\n";
    static const char *const specials[] = {"<|endoftext|>", "<|pad|>", "\xe2\x80\xa0"};
    for (int kind = 0; kind < 3; kind++) {
        loom_tokenizer_train_config cfg = loom_tokenizer_train_config_default();
        cfg.kind = kind == 1 ? "char" : "bpe";
        cfg.vocab_size = 256 + 40 + (kind == 2 ? 3 : 1);
        if (kind == 2) {
            cfg.special = specials;
            cfg.n_special = 3;
        }
        loom_tokenizer *t;
        void *f;
        size_t n;
        if (loom_tokenizer_train_text(&cfg, corpus, strlen(corpus), &t, NULL) != LOOM_OK ||
            loom_tokenizer_serialize(t, &f, &n) != LOOM_OK) {
            fprintf(stderr, "fuzz: cannot make seeds: %s\n", loom_error_message());
            return 0;
        }
        add_seed(0, f, n);
        free(f);
        loom_tokenizer_free(&t);
    }
    /* every seed itself must load */
    for (int s = 0; s < n_seeds; s++) {
        loom_tokenizer *t = NULL;
        loom_status st = seed_target[s] == 0 ? loom_tokenizer_load_memory(seeds[s].d, seeds[s].n, "seed", &t)
                         : seed_target[s] == 1
                             ? loom_tokenizer_load_gpt2_memory((char *)seeds[s].d, seeds[s].n, g_bpe, g_bpe_len, &t)
                             : loom_tokenizer_load_gpt2_memory(g_enc, g_enc_len, (char *)seeds[s].d, seeds[s].n, &t);
        if (st != LOOM_OK) {
            fprintf(stderr, "fuzz: seed %d does not load: %s\n", s, loom_error_message());
            return 0;
        }
        loom_tokenizer_free(&t);
    }
    return 1;
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static const char json_chars[] = "\"{}[]:,\\0123456789-.eE \nnull true false \\u0120 \\ud800";

static void mutate(uint8_t **d, size_t *n, size_t cap, int target) {
    int k = 1 + (int)(rnd() % 4);
    for (int m = 0; m < k; m++) {
        uint8_t *p = *d;
        size_t len = *n;
        switch (rnd() % 9) {
        case 0: /* flip a bit */
            if (len) p[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* random byte */
            if (len) p[rnd() % len] = (uint8_t)rnd();
            break;
        case 2: /* interesting byte */
            if (len) {
                static const uint8_t v[] = {0, 0xff, 0x7f, 0x80, ' ', '\n', ',', '"', 0xc4, 0xa0};
                p[rnd() % len] = v[rnd() % sizeof v];
            }
            break;
        case 3: /* interesting u32 */
            if (len >= 4) {
                static const uint32_t v[] = {0, 1, 2, 255, 256, 257, 0x7fffffff, 0xffffffff, 0x80000000, 48, 4096};
                put32(p + rnd() % (len - 3), v[rnd() % (sizeof v / sizeof v[0])]);
            }
            break;
        case 4: /* delete a range */
            if (len) {
                size_t a = rnd() % len, l = 1 + rnd() % (len - a < 16 ? len - a : 16);
                memmove(p + a, p + a + l, len - a - l);
                *n = len - l;
            }
            break;
        case 5: /* insert bytes (JSON-ish for the text formats) */
            if (len + 16 < cap) {
                size_t a = len ? rnd() % (len + 1) : 0, l = 1 + rnd() % 8;
                memmove(p + a + l, p + a, len - a);
                for (size_t i = 0; i < l; i++)
                    p[a + i] = target ? (uint8_t)json_chars[rnd() % (sizeof json_chars - 1)] : (uint8_t)rnd();
                *n = len + l;
            }
            break;
        case 6: /* duplicate a range */
            if (len && len + 64 < cap) {
                size_t a = rnd() % len, l = 1 + rnd() % (len - a < 64 ? len - a : 64);
                size_t at = rnd() % (len + 1);
                memmove(p + at + l, p + at, len - at);
                memmove(p + at, p + (a >= at ? a + l : a), l);
                *n = len + l;
            }
            break;
        case 7: /* truncate */
            if (len) *n = rnd() % len;
            break;
        default: /* swap two bytes */
            if (len >= 2) {
                size_t a = rnd() % len, b = rnd() % len;
                uint8_t t = p[a];
                p[a] = p[b];
                p[b] = t;
            }
            break;
        }
    }
    /* loom files: usually repair the checksums so the structure checks are reached */
    if (target == 0 && *n >= 48 && rnd() % 4 != 0 && !memcmp(*d, "LOOMTOKN", 8)) {
        uint64_t payload = *n - 48;
        for (int i = 0; i < 8; i++) (*d)[32 + i] = (uint8_t)(payload >> (8 * i));
        put32(*d + 40, loom_crc32c(0, *d + 48, (size_t)payload));
        put32(*d + 44, loom_crc32c(0, *d, 44));
    }
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 20000;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x5eed;
    if (!make_seeds()) return 1;
    size_t cap = 0;
    for (int s = 0; s < n_seeds; s++)
        if (seeds[s].n > cap) cap = seeds[s].n;
    cap = 2 * cap + 4096;
    uint8_t *work = malloc(cap);
    for (long it = 0; it < iters; it++) {
        int s = (int)(rnd() % (uint32_t)n_seeds);
        size_t n = seeds[s].n;
        memcpy(work, seeds[s].d, n);
        mutate(&work, &n, cap, seed_target[s]);
        uint8_t *input = malloc(n ? n : 1); /* exactly its size, for the sanitizers */
        memcpy(input, work, n);
        int ok = fuzz_check(seed_target[s], input, n);
        free(input);
        if (!ok) {
            fprintf(stderr, "fuzz: iteration %ld (seed %d, target %d, %zu bytes) failed\n", it, s, seed_target[s], n);
            return 1;
        }
    }
    printf("fuzz_tokenizer: %ld mutated inputs (%ld loaded and round-tripped), no failures\n", iters, g_loaded);
    free(work);
    for (int s = 0; s < n_seeds; s++) free(seeds[s].d);
    free(g_enc);
    free(g_bpe);
    return 0;
}
#endif
