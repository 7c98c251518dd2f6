/* Data layer tests (include/loom/data.h). `test_data unit DIR` runs the in-process checks and exits
 * non-zero on any failure; the other modes are helpers for tests/test_data.sh:
 *
 *   test_data unit TMPDIR               shard header/manifest validation, split point, a hand-written dataset
 *                                       (the documented format, independently of prepare), window bounds,
 *                                       rank shares on synthetic/text/shard sources
 *   test_data ranks SRC N B T STEPS     N ranks' batches, concatenated, equal the single-process batch
 *   test_data same SRC1 SRC2 B T STEPS  two sources draw identical train and val batches
 *   test_data split SRC VF              train tokens == floor(total * (1 - VF))
 *   test_data tokens SRC                every token, train then val, one per line */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/crc32c.h"
#include "loom/data.h"

static int failures;
#define EXPECT(cond, ...)                                                  \
    do {                                                                   \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

/* an error: the expected status, a one-line message containing `frag` */
static void expect_error(loom_status st, loom_status want, const char *frag, const char *what) {
    const char *msg = loom_error_message();
    EXPECT(st == want, "%s: status %s, expected %s (%s)", what, loom_status_name(st), loom_status_name(want), msg);
    EXPECT(strstr(msg, frag) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, frag);
    EXPECT(strchr(msg, '\n') == NULL, "%s: message spans lines: %s", what, msg);
}

static int write_file(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(buf, 1, n, f) == n;
    return (fclose(f) == 0) && ok;
}

/* a shard of n uint16 tokens, value(i) for stream position first+i */
static unsigned char *make_shard(int64_t n, int64_t first, uint32_t split, uint32_t index, int64_t vocab,
                                 uint16_t (*value)(int64_t), size_t *size) {
    *size = LOOM_SHARD_HEADER_BYTES + (size_t)n * 2;
    unsigned char *buf = calloc(1, *size);
    uint16_t *t = (uint16_t *)(void *)(buf + LOOM_SHARD_HEADER_BYTES);
    for (int64_t i = 0; i < n; i++) t[i] = value(first + i);
    loom_shard_header h = {LOOM_SHARD_VERSION, 2, 0, split, index, n, vocab, first, 0};
    h.data_crc32c = loom_crc32c(0, t, (size_t)n * 2);
    loom_shard_header_encode(&h, buf);
    return buf;
}

static uint16_t ramp(int64_t pos) { return (uint16_t)(pos % 100); }

static void test_header(void) {
    size_t size;
    unsigned char *s = make_shard(10, 5, 1, 3, 1000, ramp, &size);
    loom_shard_header h;
    EXPECT(loom_shard_header_decode(s, size, "s", &h) == LOOM_OK, "decode: %s", loom_error_message());
    EXPECT(h.n_tokens == 10 && h.first_token == 5 && h.split == 1 && h.index == 3 && h.vocab_size == 1000 &&
               h.token_bytes == 2,
           "decoded fields");
    unsigned char again[LOOM_SHARD_HEADER_BYTES];
    loom_shard_header_encode(&h, again);
    EXPECT(memcmp(again, s, sizeof again) == 0, "encode(decode(header)) differs");
    EXPECT(loom_shard_check_tokens(s, &h, "s") == LOOM_OK, "check tokens: %s", loom_error_message());

    expect_error(loom_shard_header_decode(s, 63, "s", &h), LOOM_ERR_FORMAT, "shorter than the 64-byte header", "short");
    expect_error(loom_shard_header_decode(s, size - 1, "s", &h), LOOM_ERR_FORMAT, "truncated", "truncated");
    unsigned char *c = malloc(size + 2);
    memcpy(c, s, size);
    c[size] = c[size + 1] = 0;
    expect_error(loom_shard_header_decode(c, size + 2, "s", &h), LOOM_ERR_FORMAT, "header says 10 tokens", "longer");
    memcpy(c, s, size);
    c[0] ^= 1;
    expect_error(loom_shard_header_decode(c, size, "s", &h), LOOM_ERR_FORMAT, "bad magic", "magic");
    memcpy(c, s, size);
    c[8] = 9;
    expect_error(loom_shard_header_decode(c, size, "s", &h), LOOM_ERR_FORMAT, "version 9", "version");
    memcpy(c, s, size);
    c[16] = 3;
    expect_error(loom_shard_header_decode(c, size, "s", &h), LOOM_ERR_FORMAT, "token width 3", "width");
    memcpy(c, s, size);
    c[24] = 9; /* a lying count: the size check names it */
    expect_error(loom_shard_header_decode(c, size, "s", &h), LOOM_ERR_FORMAT, "header says 9 tokens", "count");
    memcpy(c, s, size);
    c[40] ^= 1; /* split flipped: only the header checksum sees it */
    expect_error(loom_shard_header_decode(c, size, "s", &h), LOOM_ERR_CHECKSUM, "header checksum", "header crc");
    memcpy(c, s, size);
    c[LOOM_SHARD_HEADER_BYTES + 3] ^= 0x10;
    EXPECT(loom_shard_header_decode(c, size, "s", &h) == LOOM_OK, "data flip must pass the header");
    expect_error(loom_shard_check_tokens(c, &h, "s"), LOOM_ERR_CHECKSUM, "checksum mismatch", "data crc");
    free(c);
    free(s);
    /* a token outside the header's vocabulary, with a correct checksum */
    s = make_shard(10, 0, 0, 0, 50, ramp, &size);
    EXPECT(loom_shard_header_decode(s, size, "s", &h) == LOOM_OK, "decode v50");
    /* ramp reaches 9 < 50: fine; now vocab 5 */
    free(s);
    s = make_shard(10, 0, 0, 0, 5, ramp, &size);
    EXPECT(loom_shard_header_decode(s, size, "s", &h) == LOOM_OK, "decode v5");
    expect_error(loom_shard_check_tokens(s, &h, "s"), LOOM_ERR_FORMAT, "token 5 at position 5", "vocab");
    free(s);
}

static const char *good_manifest =
    "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"byte\", \"tokenizer_file\": null,"
    " \"vocab_size\": 256, \"eot\": -1, \"token_bytes\": 2, \"val_fraction\": 0.25,"
    " \"tokens\": {\"train\": 30, \"val\": 10}, \"shards\": ["
    "{\"file\": \"train_000000.bin\", \"split\": \"train\", \"tokens\": 20, \"first_token\": 0, \"crc32c\": 1},"
    "{\"file\": \"train_000001.bin\", \"split\": \"train\", \"tokens\": 10, \"first_token\": 20, \"crc32c\": 2},"
    "{\"file\": \"val_000000.bin\", \"split\": \"val\", \"tokens\": 10, \"first_token\": 30, \"crc32c\": 3}]}";

static void manifest_case(const char *from, const char *to, const char *frag) {
    char buf[2048];
    const char *at = strstr(good_manifest, from);
    if (!at) {
        EXPECT(0, "test bug: %s not in the manifest", from);
        return;
    }
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good_manifest), good_manifest, to, at + strlen(from));
    loom_dataset_manifest *m = NULL;
    loom_status st = loom_dataset_manifest_parse(buf, strlen(buf), "ds.json", &m);
    expect_error(st, LOOM_ERR_FORMAT, frag, from);
    EXPECT(m == NULL, "failed parse left a manifest");
}

static void test_manifest(void) {
    loom_dataset_manifest *m = NULL;
    EXPECT(loom_dataset_manifest_parse(good_manifest, strlen(good_manifest), "ds.json", &m) == LOOM_OK, "good: %s",
           loom_error_message());
    if (m) {
        EXPECT(m->n_shards == 3 && m->tokens[0] == 30 && m->tokens[1] == 10 && m->shards[2].split == LOOM_SPLIT_VAL &&
                   m->shards[1].first_token == 20 && m->vocab_size == 256 && m->eot == -1,
               "manifest fields");
        loom_dataset_manifest_free(&m);
        EXPECT(m == NULL, "free clears");
    }
    manifest_case("\"train_000001.bin\"", "\"../etc/passwd\"", "plain file name");
    manifest_case("\"train_000001.bin\"", "\"a/b\"", "plain file name");
    manifest_case("\"train_000001.bin\"", "\"train_000000.bin\"", "listed twice");
    manifest_case("\"first_token\": 20", "\"first_token\": 21", "tile the stream");
    manifest_case("\"train\": 30", "\"train\": 31", "add up");
    manifest_case("\"split\": \"val\"", "\"split\": \"test\"", "expected \"train\" or \"val\"");
    manifest_case("\"token_bytes\": 2", "\"token_bytes\": 4", "does not match vocab_size");
    manifest_case("\"version\": 1", "\"version\": 2", "version 2");
    manifest_case("\"loom.dataset\"", "\"other\"", "not a loom dataset");
    manifest_case("\"tokens\": 10, \"first_token\": 20", "\"tokens\": 1.5, \"first_token\": 20", "integer");
    manifest_case("\"eot\": -1", "\"eot\": 256", "eot");
    manifest_case("{\"file\": \"val_000000.bin\", \"split\": \"val\"", "{\"file\": \"val_000000.bin\", \"split\": \"val\",",
                  "line 1");
    /* a training shard after a validation shard */
    const char *swapped =
        "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"byte\", \"vocab_size\": 256, \"eot\": -1,"
        " \"token_bytes\": 2, \"val_fraction\": 0.5, \"tokens\": {\"train\": 1, \"val\": 1}, \"shards\": ["
        "{\"file\": \"a\", \"split\": \"val\", \"tokens\": 1, \"first_token\": 0, \"crc32c\": 1},"
        "{\"file\": \"b\", \"split\": \"train\", \"tokens\": 1, \"first_token\": 1, \"crc32c\": 2}]}";
    expect_error(loom_dataset_manifest_parse(swapped, strlen(swapped), "ds.json", &m), LOOM_ERR_FORMAT,
                 "training shards come first", "order");
}

static void test_split_point(void) {
    EXPECT(loom_data_split_point(1115394, 0.1) == 1003854, "tinyshakespeare: nanoGPT's int(n*0.9) = 1003854");
    EXPECT(loom_data_split_point(100, 0) == 100, "vf 0");
    EXPECT(loom_data_split_point(0, 0.1) == 0, "empty");
    EXPECT(loom_data_split_point(10, 0.5) == 5, "half");
    EXPECT(loom_data_split_point(7, 0.1) == 6, "floor(6.3)");
}

/* Ranks: N loom_data objects with the same source and seed, rank r of N drawing B each, concatenated, equal
 * one object drawing B*N; train and val; and all ranks end with the single process's state. */
static int check_ranks(const char *src, int64_t vocab, int N, int64_t B, int64_t T, int steps) {
    int bad = 0;
    loom_data *one = NULL, **rk = calloc((size_t)N, sizeof *rk);
    if (loom_data_open(src, vocab, 0.25, 1234, &one) != LOOM_OK) {
        fprintf(stderr, "open %s: %s\n", src, loom_error_message());
        free(rk);
        return 1;
    }
    for (int r = 0; r < N; r++) {
        if (loom_data_open(src, vocab, 0.25, 1234, &rk[r]) != LOOM_OK || loom_data_set_rank(rk[r], r, N) != LOOM_OK) {
            fprintf(stderr, "rank %d: %s\n", r, loom_error_message());
            bad = 1;
        }
    }
    int32_t *gt = malloc((size_t)(B * N * T) * 4), *gy = malloc((size_t)(B * N * T) * 4);
    int32_t *t = malloc((size_t)(B * T) * 4), *y = malloc((size_t)(B * T) * 4);
    for (int s = 0; s < steps && !bad; s++) {
        loom_split split = s % 3 == 2 ? LOOM_SPLIT_VAL : LOOM_SPLIT_TRAIN;
        if (loom_data_next(one, split, B * N, T, gt, gy) != LOOM_OK) {
            fprintf(stderr, "draw: %s\n", loom_error_message());
            bad = 1;
            break;
        }
        for (int r = 0; r < N && !bad; r++) {
            if (loom_data_next(rk[r], split, B, T, t, y) != LOOM_OK) {
                fprintf(stderr, "rank draw: %s\n", loom_error_message());
                bad = 1;
            } else if (memcmp(t, gt + r * B * T, (size_t)(B * T) * 4) || memcmp(y, gy + r * B * T, (size_t)(B * T) * 4)) {
                fprintf(stderr, "%s: step %d rank %d of %d: batch differs from rows %lld..%lld of the global batch\n",
                        src, s, r, N, (long long)(r * B), (long long)(r * B + B - 1));
                bad = 1;
            }
        }
    }
    loom_data_state s1 = loom_data_get_state(one);
    for (int r = 0; r < N && !bad; r++) {
        loom_data_state s2 = loom_data_get_state(rk[r]);
        if (memcmp(&s1, &s2, sizeof s1) != 0) {
            fprintf(stderr, "%s: rank %d's sampler state differs from the single process's\n", src, r);
            bad = 1;
        }
    }
    EXPECT(loom_data_set_rank(one, 2, 2) == LOOM_ERR_INVALID_ARG, "rank 2 of 2 must be refused");
    for (int r = 0; r < N; r++) loom_data_free(&rk[r]);
    loom_data_free(&one);
    free(rk);
    free(gt);
    free(gy);
    free(t);
    free(y);
    return bad;
}

static uint16_t val_ramp(int64_t pos) { return (uint16_t)(100 + pos % 100); }

/* A dataset written by hand from the format description: train = 5 shards (sizes 7, 50, 1, 13, 29) of
 * ramp values 0..99, val = 2 shards of 100 + (pos % 100). Windows must stay in their split and be
 * contiguous across shard boundaries. */
static void test_hand_dataset(const char *tmp) {
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/hand", tmp);
    mkdir(dir, 0755);
    const int64_t sizes[] = {7, 50, 1, 13, 29, 17, 9};
    const int n_train_shards = 5, n_shards = 7;
    char json[8192];
    int at = snprintf(json, sizeof json,
                      "{\"format\": \"loom.dataset\", \"version\": 1, \"tokenizer\": \"byte\", \"tokenizer_file\": null, "
                      "\"vocab_size\": 256, \"eot\": -1, \"token_bytes\": 2, \"val_fraction\": 0.2, "
                      "\"tokens\": {\"train\": 100, \"val\": 26}, \"shards\": [");
    int64_t pos = 0;
    for (int i = 0; i < n_shards; i++) {
        int val = i >= n_train_shards;
        size_t size;
        unsigned char *s = make_shard(sizes[i], pos, (uint32_t)val, (uint32_t)(val ? i - n_train_shards : i), 256,
                                      val ? val_ramp : ramp, &size);
        char name[64];
        snprintf(name, sizeof name, "%s_%06d.bin", val ? "val" : "train", val ? i - n_train_shards : i);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        EXPECT(write_file(path, s, size), "write %s", path);
        loom_shard_header h;
        EXPECT(loom_shard_header_decode(s, size, name, &h) == LOOM_OK, "own shard");
        at += snprintf(json + at, sizeof json - (size_t)at,
                       "%s{\"file\": \"%s\", \"split\": \"%s\", \"tokens\": %lld, \"first_token\": %lld, \"crc32c\": %u}",
                       i ? ", " : "", name, val ? "val" : "train", (long long)sizes[i], (long long)pos, h.data_crc32c);
        pos += sizes[i];
        free(s);
    }
    at += snprintf(json + at, sizeof json - (size_t)at, "]}");
    snprintf(path, sizeof path, "%s/dataset.json", dir);
    EXPECT(write_file(path, json, (size_t)at), "write manifest");
    loom_data *d = NULL;
    if (loom_data_open(dir, 256, 0.5, 7, &d) != LOOM_OK) {
        EXPECT(0, "open hand-made dataset: %s", loom_error_message());
        return;
    }
    EXPECT(loom_data_num_tokens(d, LOOM_SPLIT_TRAIN) == 100 && loom_data_num_tokens(d, LOOM_SPLIT_VAL) == 26,
           "split sizes from the manifest (val_fraction given to open is ignored)");
    EXPECT(loom_data_vocab_size(d) == 256 && strcmp(loom_data_tokenizer(d), "byte") == 0 && loom_data_eot(d) == -1,
           "vocab/tokenizer/eot");
    const int64_t B = 8, T = 24;
    int32_t t[8 * 24], y[8 * 24];
    int seen_lo = 0, seen_hi = 0;
    for (int step = 0; step < 300; step++) {
        loom_split split = step % 2 ? LOOM_SPLIT_VAL : LOOM_SPLIT_TRAIN;
        if (loom_data_next(d, split, B, T, t, y) != LOOM_OK) {
            EXPECT(0, "draw: %s", loom_error_message());
            break;
        }
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < T; i++) {
                int32_t v = t[b * T + i], w = y[b * T + i];
                int32_t base = split == LOOM_SPLIT_VAL ? 100 : 0;
                EXPECT(v >= base && v < base + 100, "step %d: token %d outside the %s split", step, v,
                       split ? "val" : "train");
                EXPECT(w == base + (v - base + 1) % 100, "step %d: target %d does not follow token %d", step, w, v);
                if (i + 1 < T) EXPECT(t[b * T + i + 1] == w, "window not contiguous");
                if (split == LOOM_SPLIT_TRAIN) seen_lo |= v == 0, seen_hi |= w == 99;
            }
        if (failures > 20) break;
    }
    EXPECT(seen_lo && seen_hi, "train windows never reached the stream's first/last token");
    /* every window offset is in [0, n - T - 1]: the last training token (99) is a target but never a token
       followed by a val token: checked above by contiguity. A split shorter than a window is refused: */
    int32_t big[200], bigy[200];
    expect_error(loom_data_next(d, LOOM_SPLIT_VAL, 1, 26, big, bigy), LOOM_ERR_CONFIG, "validation split has 26",
                 "short split");
    int32_t all[126];
    EXPECT(loom_data_read(d, LOOM_SPLIT_TRAIN, 0, 100, all) == LOOM_OK, "read train");
    for (int i = 0; i < 100; i++) EXPECT(all[i] == i % 100, "read train[%d] = %d", i, all[i]);
    EXPECT(loom_data_read(d, LOOM_SPLIT_VAL, 20, 7, all) == LOOM_ERR_INVALID_ARG, "read past the end refused");
    EXPECT(loom_data_check_vocab(d, 200) == LOOM_ERR_CONFIG, "a model vocabulary smaller than the dataset's");
    EXPECT(check_ranks(dir, 256, 3, 2, 8, 12) == 0, "ranks on shards");
    loom_data_free(&d);
    EXPECT(d == NULL, "free clears");
    /* vocabulary 0 at open, checked later */
    EXPECT(loom_data_open(dir, 0, 0.1, 7, &d) == LOOM_OK, "open with vocab 0");
    EXPECT(d && loom_data_check_vocab(d, 256) == LOOM_OK, "check 256");
    loom_data_free(&d);
    expect_error(loom_data_open(dir, 128, 0.1, 7, &d), LOOM_ERR_CONFIG, "larger than model.vocab_size 128", "vocab");
}

static int unit(const char *tmp) {
    test_header();
    test_manifest();
    test_split_point();
    test_hand_dataset(tmp);
    EXPECT(check_ranks("synthetic", 50, 4, 3, 5, 7) == 0, "ranks on synthetic");
    char path[1024];
    snprintf(path, sizeof path, "%s/text.txt", tmp);
    char text[5000];
    for (int i = 0; i < 5000; i++) text[i] = (char)('a' + (i * 7 + i / 13) % 26);
    EXPECT(write_file(path, text, sizeof text), "write text");
    EXPECT(check_ranks(path, 256, 2, 4, 16, 9) == 0, "ranks on text");
    EXPECT(check_ranks(path, 256, 1, 4, 16, 3) == 0, "rank 0 of 1");
    loom_data *d = NULL;
    EXPECT(loom_data_open(path, 256, 0.1, 1, &d) == LOOM_OK, "open text");
    if (d) {
        EXPECT(loom_data_num_tokens(d, LOOM_SPLIT_TRAIN) == 4500, "text split 4500/500, got %lld",
               (long long)loom_data_num_tokens(d, LOOM_SPLIT_TRAIN));
        EXPECT(loom_data_vocab_size(d) == 256 && !strcmp(loom_data_tokenizer(d), "byte"), "text is byte-level");
        loom_data_free(&d);
    }
    EXPECT(loom_data_open("synthetic", 50, 0.1, 1, &d) == LOOM_OK && loom_data_tokenizer(d) == NULL &&
               loom_data_vocab_size(d) == 0,
           "synthetic has no tokenizer");
    loom_data_free(&d);
    printf("%s\n", failures ? "data unit tests FAILED" : "data unit tests passed");
    return failures ? 1 : 0;
}

static loom_data *open_or_die(const char *src) {
    loom_data *d;
    if (loom_data_open(src, 0, 0.1, 1234, &d) != LOOM_OK) {
        fprintf(stderr, "test_data: %s\n", loom_error_message());
        exit(1);
    }
    return d;
}

static int same(const char *a, const char *b, int64_t B, int64_t T, int steps) {
    loom_data *da = open_or_die(a), *db = open_or_die(b);
    int32_t *ta = malloc((size_t)(B * T) * 8), *tb = malloc((size_t)(B * T) * 8);
    int bad = 0;
    for (int s = 0; s < steps && !bad; s++) {
        loom_split split = s % 2 ? LOOM_SPLIT_VAL : LOOM_SPLIT_TRAIN;
        if (loom_data_next(da, split, B, T, ta, ta + B * T) != LOOM_OK ||
            loom_data_next(db, split, B, T, tb, tb + B * T) != LOOM_OK) {
            fprintf(stderr, "draw: %s\n", loom_error_message());
            bad = 1;
        } else if (memcmp(ta, tb, (size_t)(B * T) * 8) != 0) {
            fprintf(stderr, "step %d (%s): %s and %s drew different batches\n", s, split ? "val" : "train", a, b);
            bad = 1;
        }
    }
    free(ta);
    free(tb);
    loom_data_free(&da);
    loom_data_free(&db);
    return bad;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "unit")) return unit(argv[2]);
    if (argc == 7 && !strcmp(argv[1], "ranks"))
        return check_ranks(argv[2], 0, atoi(argv[3]), atoll(argv[4]), atoll(argv[5]), atoi(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "same")) return same(argv[2], argv[3], atoll(argv[4]), atoll(argv[5]), atoi(argv[6]));
    if (argc == 4 && !strcmp(argv[1], "split")) {
        loom_data *d = open_or_die(argv[2]);
        int64_t nt = loom_data_num_tokens(d, LOOM_SPLIT_TRAIN), nv = loom_data_num_tokens(d, LOOM_SPLIT_VAL);
        double vf = atof(argv[3]);
        int64_t want = (int64_t)((double)(nt + nv) * (1.0 - vf));
        loom_data_free(&d);
        printf("%s: %lld train + %lld val tokens; floor(%lld * (1 - %g)) = %lld\n", argv[2], (long long)nt,
               (long long)nv, (long long)(nt + nv), vf, (long long)want);
        return nt == want ? 0 : 1;
    }
    if (argc == 3 && !strcmp(argv[1], "tokens")) {
        loom_data *d = open_or_die(argv[2]);
        for (int s = 0; s < 2; s++) {
            int64_t n = loom_data_num_tokens(d, (loom_split)s);
            int32_t *t = malloc((size_t)(n ? n : 1) * 4);
            if (loom_data_read(d, (loom_split)s, 0, n, t) != LOOM_OK) return 1;
            for (int64_t i = 0; i < n; i++) printf("%d\n", t[i]);
            free(t);
        }
        loom_data_free(&d);
        return 0;
    }
    fprintf(stderr, "usage: test_data unit TMPDIR | ranks SRC N B T STEPS | same SRC1 SRC2 B T STEPS | split SRC VF | "
                    "tokens SRC\n");
    return 2;
}
