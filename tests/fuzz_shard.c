/* Fuzz test for the data layer's parsers: token shard headers and data (loom_shard_header_decode +
 * loom_shard_check_tokens) and dataset.json (loom_dataset_manifest_parse). (The tokenizer file parser,
 * which also reads a dataset's tokenizer.char, has its own fuzz test.) Property: every input is accepted
 * or refused with LOOM_ERR_FORMAT / LOOM_ERR_CHECKSUM (LOOM_ERR_NOMEM) and a non-empty one-line message;
 * what is accepted is consistent (a header re-encodes to the same bytes and matches the file size, the
 * data matches its checksum; a manifest's shards tile the stream and its counts add up). Overreads and
 * leaks are the sanitizers' to find: each input is copied into an allocation of exactly its size.
 *
 * Standalone (deterministic mutation loop over built-in seeds; exits non-zero on the first failure):
 *   gcc -std=c11 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Iinclude \
 *       src/core/status.c src/core/json.c src/io/crc32c.c src/data/shard.c tests/fuzz_shard.c -lm \
 *       -o fuzz_shard && ./fuzz_shard [iterations=100000] [seed]
 * libFuzzer (the first byte picks the parser):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DLOOM_LIBFUZZER -Iinclude src/core/status.c \
 *       src/core/json.c src/io/crc32c.c src/data/shard.c tests/fuzz_shard.c -lm -o fuzz_shard
 *   ./fuzz_shard -max_total_time=60 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom/crc32c.h"
#include "loom/data.h"

enum { T_SHARD, T_MANIFEST, N_TARGETS };
static const char *const target_name[] = {"shard", "manifest"};

static int message_ok(loom_status st, const char *what) {
    const char *msg = loom_error_message();
    if (st != LOOM_ERR_FORMAT && st != LOOM_ERR_CHECKSUM && st != LOOM_ERR_NOMEM) {
        fprintf(stderr, "fuzz %s: unexpected status %s (%s)\n", what, loom_status_name(st), msg);
        return 0;
    }
    if (!msg[0] || strchr(msg, '\n')) {
        fprintf(stderr, "fuzz %s: message empty or not one line: \"%s\"\n", what, msg);
        return 0;
    }
    return 1;
}

static int check_shard(const uint8_t *data, size_t size) {
    loom_shard_header h;
    loom_status st = loom_shard_header_decode(data, size, "fuzz.bin", &h);
    if (st != LOOM_OK) return message_ok(st, "shard header");
    unsigned char again[LOOM_SHARD_HEADER_BYTES];
    loom_shard_header_encode(&h, again);
    if (memcmp(again, data, sizeof again) != 0) {
        fprintf(stderr, "fuzz shard: an accepted header does not re-encode to the same bytes\n");
        return 0;
    }
    if ((h.token_bytes != 2 && h.token_bytes != 4) || h.n_tokens < 0 ||
        (size_t)h.n_tokens * h.token_bytes != size - LOOM_SHARD_HEADER_BYTES) {
        fprintf(stderr, "fuzz shard: accepted header disagrees with the size\n");
        return 0;
    }
    st = loom_shard_check_tokens(data, &h, "fuzz.bin");
    if (st != LOOM_OK) return message_ok(st, "shard tokens");
    if (loom_crc32c(0, data + LOOM_SHARD_HEADER_BYTES, size - LOOM_SHARD_HEADER_BYTES) != h.data_crc32c) {
        fprintf(stderr, "fuzz shard: accepted with a wrong checksum\n");
        return 0;
    }
    return 1;
}

static int check_manifest(const uint8_t *data, size_t size) {
    loom_dataset_manifest *m = NULL;
    loom_status st = loom_dataset_manifest_parse((const char *)data, size, "dataset.json", &m);
    if (st != LOOM_OK) {
        if (m) {
            fprintf(stderr, "fuzz manifest: failed but *out is set\n");
            return 0;
        }
        return message_ok(st, "manifest");
    }
    int ok = m->vocab_size >= 1 && m->eot >= -1 && m->eot < m->vocab_size &&
             m->token_bytes == (m->vocab_size <= 65536 ? 2u : 4u) && strchr(m->tokenizer_file, '/') == NULL;
    int64_t pos = 0, sum[2] = {0, 0};
    for (int i = 0; i < m->n_shards && ok; i++) {
        const loom_dataset_shard *s = &m->shards[i];
        ok = s->first_token == pos && s->n_tokens >= 0 && s->file[0] && s->file[0] != '.' && !strchr(s->file, '/') &&
             (i == 0 || s->split >= m->shards[i - 1].split);
        pos += s->n_tokens;
        sum[s->split] += s->n_tokens;
    }
    ok = ok && sum[0] == m->tokens[0] && sum[1] == m->tokens[1];
    if (!ok) fprintf(stderr, "fuzz manifest: an accepted manifest is inconsistent\n");
    loom_dataset_manifest_free(&m);
    return ok;
}

static int fuzz_check(int target, const uint8_t *data, size_t size) {
    loom_error_clear();
    /* exact-size copy: any overread is a sanitizer report */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 1;
    if (size) memcpy(copy, data, size);
    int ok = target == T_SHARD ? check_shard(copy, size) : check_manifest(copy, size);
    free(copy);
    return ok;
}

#ifdef LOOM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (!fuzz_check(data[0] % N_TARGETS, data + 1, size - 1)) abort();
    return 0;
}
#else

#include "fuzz_mutate.h"

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

/* seeds */
static void seed_shard(fuzz_input *in, int width, int n, uint64_t vocab) {
    in->len = LOOM_SHARD_HEADER_BYTES + (size_t)(n * width);
    memset(in->buf, 0, in->len);
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)((i * 37u) % vocab);
        memcpy(in->buf + LOOM_SHARD_HEADER_BYTES + i * width, &v, (size_t)width); /* little-endian host */
    }
    loom_shard_header h = {LOOM_SHARD_VERSION, (uint32_t)width, 0, (uint32_t)(n % 2), 3, n, (int64_t)vocab, 12345, 0};
    h.data_crc32c = loom_crc32c(0, in->buf + LOOM_SHARD_HEADER_BYTES, (size_t)(n * width));
    loom_shard_header_encode(&h, in->buf);
}

static const char *const manifests[] = {
    "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"gpt2\", \"tokenizer_file\": null,"
    " \"vocab_size\": 50257, \"eot\": 50256, \"token_bytes\": 2, \"val_fraction\": 0.1,"
    " \"tokens\": {\"train\": 30, \"val\": 10}, \"shards\": ["
    "{\"file\": \"train_000000.bin\", \"split\": \"train\", \"tokens\": 20, \"first_token\": 0, \"crc32c\": 1},"
    "{\"file\": \"train_000001.bin\", \"split\": \"train\", \"tokens\": 10, \"first_token\": 20, \"crc32c\": 4294967295},"
    "{\"file\": \"val_000000.bin\", \"split\": \"val\", \"tokens\": 10, \"first_token\": 30, \"crc32c\": 3}]}",
    "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"char\", \"tokenizer_file\": \"tokenizer.char\","
    " \"vocab_size\": 70000, \"eot\": -1, \"token_bytes\": 4, \"val_fraction\": 0, \"documents\": 2, \"bytes\": 9,"
    " \"tokens\": {\"train\": 9, \"val\": 0}, \"shards\": ["
    "{\"file\": \"train_000000.bin\", \"split\": \"train\", \"tokens\": 9, \"first_token\": 0, \"crc32c\": 77}]}",
    "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"byte\", \"vocab_size\": 256, \"eot\": -1,"
    " \"token_bytes\": 2, \"val_fraction\": 0.5, \"tokens\": {\"train\": 0, \"val\": 0}, \"shards\": []}",
};

static const char *const fragments[] = {
    "\"", "\\", ",", ":", "{", "}", "[", "]", "null", "-1", "0", "1e300", "4294967296", "9007199254740993", "2.5",
    "\"train\"", "\"val\"", "\"../x\"", "\"/etc\"", "\".hidden\"", "\"\"", "\"tokens\": ", "\"first_token\": ",
    "\"file\": ", "\"split\": ", "\n", "\\u0000", "\\n", "\xff", "\x00", "\"crc32c\": ", "\"vocab_size\": ",
};

static void mutate_bytes(fuzz_input *in, uint64_t *rng) {
    int steps = 1 + (int)below(rng, 6);
    for (int k = 0; k < steps; k++) {
        size_t at = below(rng, in->len + 1);
        switch (below(rng, 7)) {
        case 0:
            if (in->len) in->buf[below(rng, in->len)] ^= (uint8_t)(1u << below(rng, 8));
            break;
        case 1:
            if (in->len) in->buf[below(rng, in->len)] = (uint8_t)below(rng, 256);
            break;
        case 2: case 3: {
            const char *f = fragments[below(rng, sizeof fragments / sizeof fragments[0])];
            insert(in, at, f, f[0] ? strlen(f) : 1);
            break;
        }
        case 4: {
            size_t n = below(rng, 1 + (in->len - at < 24 ? in->len - at : 24));
            memmove(in->buf + at, in->buf + at + n, in->len - at - n);
            in->len -= n;
            break;
        }
        case 5:
            if (below(rng, 4) == 0) in->len = at; /* truncate, rarely */
            break;
        default: {
            if (!in->len) break;
            size_t from = below(rng, in->len), n = 1 + below(rng, in->len - from < 48 ? in->len - from : 48);
            uint8_t tmp[48];
            memcpy(tmp, in->buf + from, n);
            insert(in, at, tmp, n);
            break;
        }
        }
    }
}

/* Header-aware mutations, so that the checks after the header checksum are reached too. */
static void mutate_shard(fuzz_input *in, uint64_t *rng) {
    if (below(rng, 3) == 0) mutate_bytes(in, rng);
    if (in->len < LOOM_SHARD_HEADER_BYTES) return;
    static const uint64_t edges[] = {0, 1, 2, 3, 4, 255, 256, 65535, 65536, 65537, 0x7fffffffu, 0xffffffffu,
                                     0x100000000ull, 0x7fffffffffffffffull, 0xffffffffffffffffull};
    int steps = 1 + (int)below(rng, 3);
    for (int k = 0; k < steps; k++) {
        uint64_t e = edges[below(rng, sizeof edges / sizeof edges[0])];
        switch (below(rng, 8)) {
        case 0: put_u32(in->buf + 16, (uint32_t)(below(rng, 2) ? 2 + 2 * below(rng, 2) : e)); break; /* width */
        case 1: put_u64(in->buf + 24, e); break;                                                       /* count */
        case 2: { /* a count that matches the size */
            uint32_t w = in->buf[16];
            if (w) put_u64(in->buf + 24, (in->len - LOOM_SHARD_HEADER_BYTES) / w);
            break;
        }
        case 3: put_u64(in->buf + 32, e); break;              /* vocab */
        case 4: put_u64(in->buf + 48, e); break;              /* first token */
        case 5: put_u32(in->buf + 40, (uint32_t)e); break;    /* split */
        case 6: /* a data checksum that matches */
            put_u32(in->buf + 20, loom_crc32c(0, in->buf + LOOM_SHARD_HEADER_BYTES, in->len - LOOM_SHARD_HEADER_BYTES));
            break;
        default: { /* append or drop a few tokens */
            uint8_t z[8] = {0};
            if (below(rng, 2)) insert(in, in->len, z, 1 + below(rng, 8));
            else in->len -= below(rng, 1 + (in->len - LOOM_SHARD_HEADER_BYTES < 8 ? in->len - LOOM_SHARD_HEADER_BYTES : 8));
            break;
        }
        }
    }
    if (below(rng, 4) != 0) put_u32(in->buf + 60, loom_crc32c(0, in->buf, 60)); /* usually a valid header CRC */
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    uint64_t rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9E3779B97F4A7C15ull;
    if (iters < 0 || rng == 0) {
        fprintf(stderr, "usage: %s [iterations >= 0] [seed != 0]\n", argv[0]);
        return 2;
    }
    fuzz_input in = {malloc(FUZZ_MAX), 0};
    if (!in.buf) return 2;
    long accepted[N_TARGETS] = {0}, refused[N_TARGETS] = {0};
    const double t0 = now_s();
    for (long it = 0; it < iters; it++) {
        int target = (int)(it % N_TARGETS);
        /* start from a seed, then mutate */
        if (target == T_SHARD) {
            static const int widths[] = {2, 4};
            seed_shard(&in, widths[below(&rng, 2)], (int)below(&rng, 40), below(&rng, 2) ? 65536 : 1 + below(&rng, 300));
        } else {
            const char *s = manifests[below(&rng, sizeof manifests / sizeof manifests[0])];
            in.len = strlen(s);
            memcpy(in.buf, s, in.len);
        }
        if (it >= N_TARGETS) { /* the first round checks the seeds themselves */
            if (target == T_SHARD) mutate_shard(&in, &rng);
            else mutate_bytes(&in, &rng);
        }
        if (!fuzz_check(target, in.buf, in.len)) {
            fprintf(stderr, "fuzz_shard: iteration %ld (%s), %zu bytes; input:\n", it, target_name[target], in.len);
            fwrite(in.buf, 1, in.len, stderr);
            fprintf(stderr, "\n");
            free(in.buf);
            return 1;
        }
        if (it < N_TARGETS && loom_error_message()[0]) {
            fprintf(stderr, "fuzz_shard: the %s seed was refused: %s\n", target_name[target], loom_error_message());
            free(in.buf);
            return 1;
        }
        if (loom_error_message()[0]) refused[target]++;
        else accepted[target]++;
    }
    printf("fuzz_shard: %ld inputs in %.1f s, no failures; accepted/refused: shard %ld/%ld, manifest %ld/%ld\n",
           iters, now_s() - t0, accepted[0], refused[0], accepted[1], refused[1]);
    free(in.buf);
    return 0;
}
#endif
