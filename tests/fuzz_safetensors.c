/* Fuzz test for the safetensors reader and the sharded-model index parser (loom/hf.h). Properties:
 *   - every input either validates or fails with LOOM_ERR_FORMAT (or LOOM_ERR_NOMEM) and a one-line
 *     message that starts with the input's label, leaving *out NULL;
 *   - a file that validates keeps its promises: the tensors tile the data area in ascending order, each
 *     one's bytes = numel * dtype size and lie inside the input, find() returns each by name, and
 *     reading every F32/BF16/F16 tensor touches exactly its bytes (each input is copied into an allocation
 *     of exactly its size, so an overread is an ASan error);
 *   - an index that validates names only plain shard files and maps every tensor to one of them.
 *
 * Mutations work on whole files (bytes, including the length prefix) and on the header text alone with
 * the length prefix recomputed, so that both the framing and the JSON/offset validation are reached.
 *
 * Standalone (deterministic; exits non-zero on the first failure):
 *   gcc -std=gnu11 -O1 -g -fsanitize=address,undefined -Iinclude src/core/status.c src/core/json.c \
 *       src/core/tensor.c src/core/log.c src/io/safetensors.c tests/fuzz_safetensors.c -lm \
 *       -o fuzz_safetensors && ./fuzz_safetensors [iterations=30000] [seed]
 * libFuzzer (first input byte chooses the parser):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DLOOM_LIBFUZZER -Iinclude src/core/status.c \
 *       src/core/json.c src/core/tensor.c src/core/log.c src/io/safetensors.c tests/fuzz_safetensors.c -lm \
 *       -o fuzz_safetensors && ./fuzz_safetensors -max_total_time=60 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom/hf.h"

#define LABEL "fuzz.safetensors"
#define INDEX_LABEL "fuzz.index.json"

static int message_ok(loom_status st, const char *label) {
    const char *msg = loom_error_message();
    if (st != LOOM_ERR_FORMAT && st != LOOM_ERR_NOMEM) {
        fprintf(stderr, "fuzz: unexpected status %s: %s\n", loom_status_name(st), msg);
        return 0;
    }
    if (st == LOOM_ERR_FORMAT && strncmp(msg, label, strlen(label)) != 0) {
        fprintf(stderr, "fuzz: message does not start with the label: %s\n", msg);
        return 0;
    }
    if (strchr(msg, '\n')) {
        fprintf(stderr, "fuzz: message has more than one line: %s\n", msg);
        return 0;
    }
    return 1;
}

static int check_file(const uint8_t *data, size_t size) {
    loom_st_file *f = (loom_st_file *)(uintptr_t)1;
    loom_error_clear();
    loom_status st = loom_st_file_parse(data, size, LABEL, &f);
    if (st != LOOM_OK) {
        if (f != NULL) {
            fprintf(stderr, "fuzz: parse failed but *out is not NULL\n");
            return 0;
        }
        return message_ok(st, LABEL);
    }
    int ok = 1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    const uint8_t *area = data + 8 + hlen, *end = data + size;
    const uint8_t *at = area;
    for (int i = 0; i < loom_st_file_num_tensors(f) && ok; i++) {
        const loom_st_tensor *t = loom_st_file_tensor(f, i);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        const uint8_t *p = t->data;
        if (p != at || numel != t->numel || t->nbytes != (size_t)numel * loom_st_dtype_size(t->dtype) ||
            p + t->nbytes > end || p < area) {
            fprintf(stderr, "fuzz: tensor %d '%s' breaks the tiling/size promise\n", i, t->name);
            ok = 0;
            break;
        }
        at = p + t->nbytes;
        if (loom_st_file_find(f, t->name) != t) {
            fprintf(stderr, "fuzz: find('%s') does not return the tensor\n", t->name);
            ok = 0;
        }
        if ((t->dtype == LOOM_ST_F32 || t->dtype == LOOM_ST_BF16 || t->dtype == LOOM_ST_F16) && t->numel <= (1 << 20)) {
            float *buf = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
            if (buf && loom_st_tensor_read_f32(t, buf, t->numel) != LOOM_OK) {
                fprintf(stderr, "fuzz: reading tensor '%s' failed: %s\n", t->name, loom_error_message());
                ok = 0;
            }
            free(buf);
        }
    }
    if (ok && at != end) {
        fprintf(stderr, "fuzz: the tensors do not cover the data area\n");
        ok = 0;
    }
    (void)loom_st_file_metadata(f, "format");
    loom_st_file_close(&f);
    if (f != NULL) ok = 0;
    return ok;
}

static int check_index(const uint8_t *data, size_t size) {
    loom_st_index *ix = (loom_st_index *)(uintptr_t)1;
    loom_error_clear();
    loom_status st = loom_st_index_parse((const char *)data, size, INDEX_LABEL, &ix);
    if (st != LOOM_OK) {
        if (ix != NULL) {
            fprintf(stderr, "fuzz: index parse failed but *out is not NULL\n");
            return 0;
        }
        return message_ok(st, INDEX_LABEL);
    }
    int ok = 1;
    for (int i = 0; i < ix->n_files && ok; i++) {
        const char *s = ix->files[i];
        if (!s[0] || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) {
            fprintf(stderr, "fuzz: index accepted shard name '%s'\n", s);
            ok = 0;
        }
    }
    for (int i = 0; i < ix->n && ok; i++) {
        int found = 0;
        for (int k = 0; k < ix->n_files; k++) found |= ix->file[i] == ix->files[k];
        if (!found || !ix->tensor[i]) {
            fprintf(stderr, "fuzz: index entry %d maps to no listed file\n", i);
            ok = 0;
        }
    }
    loom_st_index_free(&ix);
    return ok;
}

#ifdef LOOM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int ok = (data[0] & 1) ? check_index(data + 1, size - 1) : check_file(data + 1, size - 1);
    if (!ok) abort();
    return 0;
}
#else

#include "fuzz_mutate.h"

/* A valid file: tensors of the given dtypes and shapes, data filled with pseudo-random bytes. */
static void make_file(fuzz_input *in, uint64_t *rng, int variant) {
    static const char *const dts[] = {"F32", "BF16", "F16", "I64", "U8", "BOOL", "F64", "I32", "F8_E4M3"};
    char hdr[4096];
    size_t h = 0, off = 0;
    int n = variant == 0 ? 0 : 1 + (int)below(rng, 6);
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "{");
    if (variant % 2) h += (size_t)snprintf(hdr + h, sizeof hdr - h, "\"__metadata__\":{\"format\":\"pt\"}%s", n ? "," : "");
    for (int i = 0; i < n; i++) {
        const char *dt = dts[below(rng, sizeof dts / sizeof dts[0])];
        size_t es = !strcmp(dt, "F32") || !strcmp(dt, "I32") ? 4 : !strcmp(dt, "BF16") || !strcmp(dt, "F16") ? 2
                    : !strcmp(dt, "I64") || !strcmp(dt, "F64") ? 8 : 1;
        int nd = (int)below(rng, 4);
        size_t numel = 1;
        char shape[128];
        size_t s = 0;
        s += (size_t)snprintf(shape + s, sizeof shape - s, "[");
        for (int d = 0; d < nd; d++) {
            size_t v = below(rng, 6);
            numel *= v;
            s += (size_t)snprintf(shape + s, sizeof shape - s, "%s%zu", d ? "," : "", v);
        }
        snprintf(shape + s, sizeof shape - s, "]");
        h += (size_t)snprintf(hdr + h, sizeof hdr - h,
                              "%s\"t.%d.weight\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}", i ? "," : "", i,
                              dt, shape, off, off + numel * es);
        off += numel * es;
    }
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
    while (variant % 3 == 0 && h % 8) hdr[h++] = ' ';
    in->len = 0;
    for (int i = 0; i < 8; i++) in->buf[in->len++] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(in->buf + in->len, hdr, h);
    in->len += h;
    for (size_t i = 0; i < off && in->len < FUZZ_MAX; i++) in->buf[in->len++] = (uint8_t)xorshift(rng);
}

static const char *const index_seeds[] = {
    "{\"metadata\": {\"total_size\": 123}, \"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\", "
    "\"b.weight\": \"model-00002-of-00002.safetensors\", \"c\": \"model-00001-of-00002.safetensors\"}}",
    "{\"weight_map\": {}}",
    "{\"metadata\": null, \"weight_map\": {\"x\": \"a.safetensors\"}, \"extra\": [1, 2]}",
};

/* Fragments worth splicing in: structure, numbers at the edges, dtypes, names. */
static const char *const tokens[] = {
    "{", "}", "[", "]", "\"", ",", ":", "\"dtype\":", "\"shape\":", "\"data_offsets\":", "\"__metadata__\":",
    "\"F32\"", "\"BF16\"", "\"F16\"", "\"I64\"", "\"F33\"", "\"\"", "[0,0]", "[]", "[1,2,3]", "-1", "0", "1e400",
    "18446744073709551615", "9007199254740993", "4294967296", "1.5", "null", "true", "\"../x\"", "\"a/b\"", "\".\"",
    "\"..\"", "\"weight_map\":", "\"total_size\":", "\\u0000", "\xff", " ",
};

static void mutate_bytes(fuzz_input *in, size_t from, uint64_t *rng) {
    int steps = 1 + (int)below(rng, 6);
    for (int k = 0; k < steps; k++) {
        size_t span = in->len - from, at = from + below(rng, span + 1);
        switch (below(rng, 8)) {
        case 0:
            if (span) in->buf[from + below(rng, span)] ^= (uint8_t)(1u << below(rng, 8));
            break;
        case 1:
            if (span) in->buf[from + below(rng, span)] = (uint8_t)below(rng, 256);
            break;
        case 2:
        case 3: {
            const char *t = tokens[below(rng, sizeof tokens / sizeof tokens[0])];
            insert(in, at, t, strlen(t));
            break;
        }
        case 4: {
            size_t n = below(rng, 1 + (in->len - at < 16 ? in->len - at : 16));
            memmove(in->buf + at, in->buf + at + n, in->len - at - n);
            in->len -= n;
            break;
        }
        case 5:
            in->len = at;
            break;
        case 6: { /* a digit string */
            char num[32];
            size_t n = 1 + below(rng, 24);
            for (size_t i = 0; i < n; i++) num[i] = (char)('0' + below(rng, 10));
            insert(in, at, num, n);
            break;
        }
        default: {
            if (span < 2) break;
            size_t a = from + below(rng, span), b = from + below(rng, span);
            uint8_t c = in->buf[a];
            in->buf[a] = in->buf[b];
            in->buf[b] = c;
            break;
        }
        }
    }
}

/* Mutates the header text only and rewrites the length prefix to match. */
static void mutate_header(fuzz_input *in, uint64_t *rng) {
    if (in->len < 8) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | in->buf[i];
    if (hlen > in->len - 8) return;
    static uint8_t head[FUZZ_MAX], data[FUZZ_MAX];
    size_t dlen = in->len - 8 - (size_t)hlen;
    memcpy(head, in->buf + 8, (size_t)hlen);
    memcpy(data, in->buf + 8 + hlen, dlen);
    fuzz_input h = {head, (size_t)hlen};
    mutate_bytes(&h, 0, rng);
    if (h.len > FUZZ_MAX - 8) h.len = FUZZ_MAX - 8;
    if (8 + h.len + dlen > FUZZ_MAX) dlen = FUZZ_MAX - 8 - h.len;
    for (int i = 0; i < 8; i++) in->buf[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    memcpy(in->buf + 8, head, h.len);
    memcpy(in->buf + 8 + h.len, data, dlen);
    in->len = 8 + h.len + dlen;
}

/* Replaces one number in the header with a nearby or an extreme one, keeping the JSON valid, so that the
 * shape/offset validation (not the JSON parser) sees the lie; the length prefix is rewritten. */
static void mutate_number(fuzz_input *in, uint64_t *rng) {
    if (in->len < 8) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | in->buf[i];
    if (hlen > in->len - 8 || hlen == 0) return;
    uint8_t *h = in->buf + 8;
    size_t starts[256], n = 0;
    for (size_t i = 0; i < hlen && n < 256; i++)
        if (h[i] >= '0' && h[i] <= '9' && (i == 0 || h[i - 1] < '0' || h[i - 1] > '9')) starts[n++] = i;
    if (n == 0) return;
    size_t a = starts[below(rng, n)], b = a;
    while (b < hlen && h[b] >= '0' && h[b] <= '9') b++;
    unsigned long long v = strtoull((const char *)h + a, NULL, 10), w;
    static const unsigned long long extreme[] = {0, 1, 8, 4294967295ull, 4294967296ull, 9007199254740992ull,
                                                 9007199254740993ull, 18446744073709551615ull};
    switch (below(rng, 3)) {
    case 0: w = v + 1 + below(rng, 8); break;
    case 1: w = v > 8 ? v - 1 - below(rng, 8) : 0; break;
    default: w = extreme[below(rng, sizeof extreme / sizeof extreme[0])]; break;
    }
    char num[32];
    size_t k = (size_t)snprintf(num, sizeof num, "%llu", w);
    size_t old = b - a, tail = in->len - 8 - a - old;
    if (in->len - old + k > FUZZ_MAX) return;
    memmove(h + a + k, h + b, tail);
    memcpy(h + a, num, k);
    in->len = in->len - old + k;
    hlen = hlen - old + k;
    for (int i = 0; i < 8; i++) in->buf[i] = (uint8_t)(hlen >> (8 * i));
}

/* Sets the length prefix to an interesting value. */
static void mutate_length(fuzz_input *in, uint64_t *rng) {
    if (in->len < 8) return;
    static const uint64_t vals[] = {0, 1, 2, 7, 8, UINT64_MAX, (uint64_t)INT64_MAX, 100000001, 1ull << 32};
    uint64_t v = below(rng, 2) ? vals[below(rng, sizeof vals / sizeof vals[0])] : (uint64_t)below(rng, in->len + 16);
    for (int i = 0; i < 8; i++) in->buf[i] = (uint8_t)(v >> (8 * i));
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 30000;
    uint64_t rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9E3779B97F4A7C15ull;
    if (iters < 0 || rng == 0) {
        fprintf(stderr, "usage: %s [iterations >= 0] [seed != 0]\n", argv[0]);
        return 2;
    }
    fuzz_input in = {malloc(FUZZ_MAX), 0};
    if (!in.buf) return 2;
    long valid = 0, rejected = 0, ix_valid = 0, ix_rejected = 0;
    int ok = 1;
    double t0 = now_s();
    for (long it = 0; it < iters && ok; it++) {
        int is_index = below(&rng, 4) == 0;
        if (is_index) {
            const char *s = index_seeds[below(&rng, sizeof index_seeds / sizeof index_seeds[0])];
            in.len = strlen(s);
            memcpy(in.buf, s, in.len);
            if (it >= 8) mutate_bytes(&in, 0, &rng);
        } else {
            make_file(&in, &rng, (int)below(&rng, 6));
            if (it >= 8) {
                size_t r = below(&rng, 10);
                if (r < 3) mutate_header(&in, &rng);
                else if (r < 6) mutate_number(&in, &rng);
                else if (r < 8) mutate_bytes(&in, 0, &rng);
                else mutate_length(&in, &rng);
            }
        }
        uint8_t *exact = malloc(in.len ? in.len : 1);
        if (!exact) return 2;
        memcpy(exact, in.buf, in.len);
        if (is_index) {
            ok = check_index(exact, in.len);
            loom_st_index *ix = NULL;
            if (ok && loom_st_index_parse((const char *)exact, in.len, INDEX_LABEL, &ix) == LOOM_OK) ix_valid++;
            else if (ok) ix_rejected++;
            loom_st_index_free(&ix);
        } else {
            ok = check_file(exact, in.len);
            loom_st_file *f = NULL;
            if (ok && loom_st_file_parse(exact, in.len, LABEL, &f) == LOOM_OK) valid++;
            else if (ok) rejected++;
            loom_st_file_close(&f);
        }
        if (!ok) {
            fprintf(stderr, "fuzz: failed at iteration %ld on %zu bytes (%s):\n  ", it, in.len, is_index ? "index" : "file");
            for (size_t i = 0; i < in.len && i < 600; i++) {
                unsigned c = exact[i];
                if (c >= 0x20 && c < 0x7f && c != '\\') fputc((int)c, stderr);
                else fprintf(stderr, "\\x%02x", c);
            }
            fputc('\n', stderr);
        }
        free(exact);
    }
    free(in.buf);
    printf("fuzz_safetensors: files %ld valid, %ld rejected; indexes %ld valid, %ld rejected; %s; %.1f s\n", valid,
           rejected, ix_valid, ix_rejected, ok ? "no failures" : "FAILED", now_s() - t0);
    return ok ? 0 : 1;
}
#endif
