/* loom bench decode: the serving kernels alone, each beside its peer in the same process, medians.
 *
 * The attention against a key/value cache (what `loom generate` and `loom serve` run after cached positions,
 * and for every row with --batch-invariant): a prompt of 512 rows over 512 positions, one decoding row over 96
 * and over 2048 positions, and grouped-query heads (32 over 4 kv heads) over 2048; fp32 and bf16 caches, the
 * cache's rows as loom's pool lays them (k | v of every kv head in a row). Its peer: the training kernel on the
 * same prompt (the default path for a prompt with nothing cached), whose arithmetic the batch-invariant path
 * gives up. Then a serving step's attention: 16 sequences decoding a row each (short contexts, then one long
 * among them), as one batch beside the same calls one by one.
 *
 * Then products of M rows against a weight stored [N, K] (GPT-2 124M's qkv, MLP in, MLP out): the few-row
 * kernel (decoding's up to 32 rows, and every M with --batch-invariant) beside the library GEMM (OpenBLAS for
 * fp32, oneDNN for bf16) at M 64 and 512.
 *
 * Last, from memory, beside a plain read of the same bytes (the memory's rate, the roofline), in memory reserved
 * as the model's and the server's pool are (huge pages) and past any cache: one decoding row through 12 layers
 * of those weights (what `loom generate` multiplies per token, less the head), GB/s of weights read; and a
 * serving step's attention, 64 sequences decoding a row over 80 positions each, through 12 layers of a paged
 * pool laid out as loom serve's (blocks of 16 positions, scattered), GB/s of keys and values read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/backend.h"
#include "loom/log.h"
#include "loom/rng.h"
#include "loom/tensor.h"

typedef struct {
    int64_t rows, n, H, KV;
} attention_shape;

/* one kernel call of a benchmark, on its arguments */
typedef struct {
    loom_backend *be;
    const void *args;
    loom_status (*call)(loom_backend *be, const void *args);
} bench_call;

static loom_status call_decode(loom_backend *be, const void *a) { return loom_k_attention_decode(be, a); }
static loom_status call_forward(loom_backend *be, const void *a) { return loom_k_attention_forward(be, a); }
static loom_status call_decode_batch(loom_backend *be, const void *a) { return loom_k_attention_decode_batch(be, a); }
/* the same calls one by one (a backend without the batch, and serving before it) */
static loom_status call_decode_each(loom_backend *be, const void *a) {
    const loom_attention_decode_batch_args *b = a;
    for (int64_t i = 0; i < b->n; i++) LOOM_CALL(loom_k_attention_decode(be, &b->calls[i]));
    return LOOM_OK;
}
static loom_status call_matmul(loom_backend *be, const void *a) { return loom_k_matmul(be, a); }
static loom_status call_matmul_bf16(loom_backend *be, const void *a) { return loom_k_matmul_bf16(be, a); }

/* the median seconds of reps calls (after one warm-up); 0 where a call failed */
static double median_seconds(bench_call c, int reps) {
    double t[32];
    for (int r = -1; r < reps; r++) {
        const double t0 = loom_now_s();
        if (c.call(c.be, c.args) != LOOM_OK) return 0.0;
        if (r >= 0) t[r] = loom_now_s() - t0;
    }
    return loom_cli_median(t, reps);
}

/* n uniforms in [-0.5, 0.5): the values do not change the speed */
static void fill(float *x, int64_t n, uint64_t seed) {
    loom_rng r;
    loom_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = (float)loom_rng_uniform(&r) - 0.5f;
}

static int bench_attention(loom_backend *be, int reps) {
    const attention_shape shapes[] = {{512, 512, 12, 12}, {1, 96, 12, 12}, {1, 2048, 12, 12}, {1, 2048, 32, 4}};
    const int64_t hd = 64;
    printf("attention against a cache (head size %lld): ms a call, medians of %d\n", (long long)hd, reps);
    printf("  %5s %5s %5s %4s  %-6s %9s %9s   %s\n", "rows", "pos", "heads", "kv", "cache", "ms", "GFLOP/s",
           "training kernel on the prompt (ms)");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const attention_shape *s = &shapes[i];
        /* queries in qkv rows (q | k | v, as the activations hold them), keys and values in the pool's rows
         * (k | v of every kv head, as loom's paged pool lays them out) */
        const int64_t qw = s->H * hd, kvw = 2 * s->KV * hd, row = qw + kvw;
        float *qkv = malloc((size_t)(s->n * row) * sizeof(float)), *out = malloc((size_t)(s->n * qw) * sizeof(float));
        float *lse = malloc((size_t)(s->H * s->n) * sizeof(float)), *kv = malloc((size_t)(s->n * kvw) * sizeof(float));
        uint16_t *kv16 = malloc((size_t)(s->n * kvw) * sizeof(uint16_t));
        if (!qkv || !out || !lse || !kv || !kv16) {
            free(qkv), free(out), free(lse), free(kv), free(kv16);
            fprintf(stderr, "loom bench decode: out of memory\n");
            return 1;
        }
        fill(qkv, s->n * row, i + 1);
        for (int64_t j = 0; j < s->n; j++)
            for (int64_t e = 0; e < kvw; e++) {
                kv[j * kvw + e] = qkv[j * row + qw + e];
                kv16[j * kvw + e] = loom_f32_to_bf16(kv[j * kvw + e]);
            }
        const int64_t q0 = s->n - s->rows; /* the last rows query */
        /* pairs a row sees: causal among the rows, every earlier position */
        const double pairs = (double)s->rows * (double)(s->n - s->rows) + (double)s->rows * (double)(s->rows + 1) / 2;
        const double flop = 4.0 * pairs * (double)s->H * (double)hd;
        double train_ms = 0.0;
        if (s->rows == s->n) {
            const loom_attention_forward_args f = {.out = out, .lse = lse, .qkv = qkv, .B = 1, .T = s->n, .H = s->H,
                                                   .KV = s->KV, .hd = hd};
            train_ms = 1e3 * median_seconds((bench_call){be, &f, call_forward}, reps);
        }
        for (int bf16 = 0; bf16 < 2; bf16++) {
            loom_attention_decode_args a = {.out = out, .q = qkv + q0 * row, .ld = kvw, .n = s->n, .H = s->H,
                                            .KV = s->KV, .hd = hd, .rows = s->rows, .qs = row};
            if (bf16) a.k16 = kv16, a.v16 = kv16 + s->KV * hd;
            else a.k = kv, a.v = kv + s->KV * hd;
            const double sec = median_seconds((bench_call){be, &a, call_decode}, reps);
            if (sec <= 0.0) {
                free(qkv), free(out), free(lse), free(kv), free(kv16);
                return loom_cli_fail("bench decode");
            }
            printf("  %5lld %5lld %5lld %4lld  %-6s %9.4f %9.1f", (long long)s->rows, (long long)s->n, (long long)s->H,
                   (long long)s->KV, bf16 ? "bf16" : "f32", sec * 1e3, flop / sec / 1e9);
            if (train_ms > 0.0 && !bf16) printf("   %.3f (%.2fx)", train_ms, sec * 1e3 / train_ms);
            printf("\n");
        }
        free(qkv), free(out), free(lse), free(kv), free(kv16);
    }
    return 0;
}

/* A serving step's attention: SEQS sequences decoding a row each, each its own cache, as one batch against the
 * same calls one by one; every context short (64 positions), then one of them long (2048: the batch must not
 * leave its heads to one thread) */
#define SEQS 16
static int bench_attention_batch(loom_backend *be, int reps) {
    const int64_t H = 12, hd = 64, kvw = 2 * H * hd, short_n = 64, long_n = 2048;
    float *q = malloc((size_t)(SEQS * H * hd) * sizeof(float)), *out = malloc((size_t)(SEQS * H * hd) * sizeof(float));
    float *kv = malloc((size_t)((SEQS - 1) * short_n + long_n) * (size_t)kvw * sizeof(float));
    if (!q || !out || !kv) {
        free(q), free(out), free(kv);
        fprintf(stderr, "loom bench decode: out of memory\n");
        return 1;
    }
    fill(q, SEQS * H * hd, 21);
    fill(kv, ((SEQS - 1) * short_n + long_n) * kvw, 23);
    int rc = 0;
    for (int with_long = 0; with_long < 2 && !rc; with_long++) {
        loom_attention_decode_args calls[SEQS];
        for (int i = 0, at = 0; i < SEQS; at += (int)calls[i].n, i++) {
            const int64_t n = with_long && i == 0 ? long_n : short_n;
            calls[i] = (loom_attention_decode_args){.out = out + i * H * hd, .q = q + i * H * hd, .k = kv + at * kvw,
                                                    .v = kv + at * kvw + H * hd, .ld = kvw, .n = n, .H = H, .KV = H,
                                                    .hd = hd};
        }
        const loom_attention_decode_batch_args b = {calls, SEQS};
        const double each = median_seconds((bench_call){be, &b, call_decode_each}, reps);
        const double batch = median_seconds((bench_call){be, &b, call_decode_batch}, reps);
        if (each <= 0.0 || batch <= 0.0) {
            rc = loom_cli_fail("bench decode");
            break;
        }
        char what[64];
        if (with_long)
            snprintf(what, sizeof what, "1 over %lld and %d over %lld", (long long)long_n, SEQS - 1, (long long)short_n);
        else
            snprintf(what, sizeof what, "%d over %lld", SEQS, (long long)short_n);
        printf("a serving step's attention, %d sequences of 1 row (%s positions, f32): one by one %.4f ms, one batch "
               "%.4f ms (%.2fx)\n", SEQS, what, each * 1e3, batch * 1e3, each / batch);
    }
    free(q), free(out), free(kv);
    return rc;
}

/* GFLOP/s of M rows against a weight [N, K] on backend be (0: failed) */
static double product_rate(loom_backend *be, int bf16, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                           const uint16_t *A16, const uint16_t *B16, float *C, int reps) {
    const loom_matmul_bf16_args b = {.trans_b = 1, .M = M, .N = N, .K = K, .alpha = 1.0f, .A = A16, .lda = K, .B = B16,
                                     .ldb = K, .C = C, .ldc = N};
    const loom_gemm f = {.trans_b = 1, .M = M, .N = N, .K = K, .alpha = 1.0f, .A = A, .lda = K, .B = B, .ldb = K, .C = C,
                         .ldc = N};
    const double sec = median_seconds(bf16 ? (bench_call){be, &b, call_matmul_bf16} : (bench_call){be, &f, call_matmul},
                                      reps);
    return sec > 0.0 ? 2.0 * (double)M * (double)N * (double)K / sec / 1e9 : 0.0;
}

static int bench_products(loom_backend *lib, loom_backend *few, int reps) {
    const int64_t shapes[3][2] = {{2304, 768}, {3072, 768}, {768, 3072}}, ms[2] = {64, 512}, maxe = 512 * 3072;
    float *A = malloc((size_t)maxe * sizeof(float)), *B = malloc((size_t)(3072 * 768) * sizeof(float));
    float *C = malloc((size_t)(512 * 3072) * sizeof(float));
    uint16_t *A16 = malloc((size_t)maxe * sizeof(uint16_t)), *B16 = malloc((size_t)(3072 * 768) * sizeof(uint16_t));
    int rc = 0;
    if (!A || !B || !C || !A16 || !B16) {
        fprintf(stderr, "loom bench decode: out of memory\n");
        rc = 1;
        goto done;
    }
    fill(A, maxe, 7);
    fill(B, 3072 * 768, 11);
    for (int64_t i = 0; i < maxe; i++) A16[i] = loom_f32_to_bf16(A[i]);
    for (int64_t i = 0; i < 3072 * 768; i++) B16[i] = loom_f32_to_bf16(B[i]);
    printf("products against a weight [N, K]: GFLOP/s, medians of %d (library: past LOOM_FEWROWS_MAX rows)\n", reps);
    printf("  %4s %5s %5s %5s %9s %9s %7s\n", "M", "N", "K", "prec", "few-row", "library", "ratio");
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int mi = 0; mi < 2; mi++)
            for (int si = 0; si < 3; si++) {
                const int64_t M = ms[mi], N = shapes[si][0], K = shapes[si][1];
                const double f = product_rate(few, bf16, M, N, K, A, B, A16, B16, C, reps);
                const double l = product_rate(lib, bf16, M, N, K, A, B, A16, B16, C, reps);
                if (f <= 0.0 || l <= 0.0) {
                    rc = loom_cli_fail("bench decode");
                    goto done;
                }
                printf("  %4lld %5lld %5lld %5s %9.1f %9.1f %6.2fx\n", (long long)M, (long long)N, (long long)K,
                       bf16 ? "bf16" : "fp32", f, l, f / l);
            }
done:
    free(A), free(B), free(C), free(A16), free(B16);
    return rc;
}

#define ROW_LAYERS 12

/* one row through every layer's four products (qkv, proj, fc, fc2), the weights one after another from w */
typedef struct {
    int bf16;
    const void *w, *x;
    float *y;
} row_pass;

static loom_status call_row_pass(loom_backend *be, const void *args) {
    const row_pass *a = args;
    const int64_t shapes[4][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};
    const char *at = a->w;
    for (int l = 0; l < ROW_LAYERS; l++)
        for (int p = 0; p < 4; p++) {
            const int64_t N = shapes[p][0], K = shapes[p][1];
            const loom_matmul_bf16_args b = {.trans_b = 1, .M = 1, .N = N, .K = K, .alpha = 1.0f, .A = a->x,
                                             .lda = K, .B = (const uint16_t *)at, .ldb = K, .C = a->y, .ldc = N};
            const loom_gemm f = {.trans_b = 1, .M = 1, .N = N, .K = K, .alpha = 1.0f, .A = a->x, .lda = K,
                                 .B = (const float *)at, .ldb = K, .C = a->y, .ldc = N};
            LOOM_CALL(a->bf16 ? loom_k_matmul_bf16(be, &b) : loom_k_matmul(be, &f));
            at += (size_t)(N * K) * (a->bf16 ? sizeof(uint16_t) : sizeof(float));
        }
    return LOOM_OK;
}

/* a plain read of n bytes, 8 at a time, on every thread */
typedef struct {
    const uint64_t *w;
    size_t n;
} plain_read;

static loom_status call_plain_read(loom_backend *be, const void *args) {
    (void)be;
    const plain_read *a = args;
    uint64_t s = 0;
#pragma omp parallel for reduction(^ : s) schedule(static)
    for (size_t i = 0; i < a->n / 8; i++) s ^= a->w[i];
    __asm__ volatile("" : : "r"(s)); /* the sum is used: the loads stay */
    return LOOM_OK;
}

/* c's median beside a plain read of the n bytes at p it reads: a row of ms, GB/s, the read's GB/s, their ratio */
static int roofline_row(loom_backend *be, bench_call c, const void *p, size_t n, const char *label, int reps) {
    const plain_read pr = {p, n};
    const double sec = median_seconds(c, reps);
    const double rd = median_seconds((bench_call){be, &pr, call_plain_read}, reps);
    if (sec <= 0.0 || rd <= 0.0) return loom_cli_fail("bench decode");
    printf("  %-5s %9.3f %9.1f %12.1f %6.2fx\n", label, sec * 1e3, (double)n / sec / 1e9, (double)n / rd / 1e9,
           rd / sec);
    return 0;
}

static int bench_decode_row(loom_backend *be, int reps) {
    const int64_t per_layer = 2304 * 768 + 768 * 768 + 3072 * 768 + 768 * 3072, n = ROW_LAYERS * per_layer;
    const size_t bytes = (size_t)n * sizeof(float);
    void *w = NULL;
    float *x = malloc(3072 * sizeof(float)), *y = malloc(3072 * sizeof(float));
    uint16_t *x16 = malloc(3072 * sizeof(uint16_t));
    if (!x || !y || !x16 || loom_buf_reserve(be, bytes + bytes / 2, &w) != LOOM_OK) {
        free(x), free(y), free(x16);
        fprintf(stderr, "loom bench decode: out of memory\n");
        return 1;
    }
    loom_buf_populate(be, w, bytes + bytes / 2);
    float *w32 = w;
    uint16_t *w16 = (uint16_t *)(w32 + n); /* the bf16 weights after the fp32 ones */
    fill(w32, n, 17);
    for (int64_t i = 0; i < n; i++) w16[i] = loom_f32_to_bf16(w32[i]);
    fill(x, 3072, 13);
    for (int64_t i = 0; i < 3072; i++) x16[i] = loom_f32_to_bf16(x[i]);
    printf("one decoding row through %d layers of those weights (%.0f MB in fp32), from memory: medians of %d\n",
           ROW_LAYERS, (double)bytes / 1e6, reps);
    printf("  %-5s %9s %9s %12s %7s\n", "prec", "ms", "GB/s", "read GB/s", "ratio");
    int rc = 0;
    for (int bf16 = 0; bf16 < 2 && !rc; bf16++) {
        const size_t wb = bf16 ? bytes / 2 : bytes;
        const void *wt = bf16 ? (const void *)w16 : (const void *)w32, *xt = bf16 ? (const void *)x16 : (const void *)x;
        const row_pass rp = {bf16, wt, xt, y};
        rc = roofline_row(be, (bench_call){be, &rp, call_row_pass}, wt, wb, bf16 ? "bf16" : "fp32", reps);
    }
    loom_buf_unreserve(be, w, bytes + bytes / 2);
    free(x), free(y), free(x16);
    return rc;
}

/* a serving step's attention from memory: every layer's batch of decode calls in turn */
typedef struct {
    const loom_attention_decode_args *calls; /* [layers][seqs] */
    int64_t layers, seqs;
} step_attention;

static loom_status call_step_attention(loom_backend *be, const void *args) {
    const step_attention *a = args;
    for (int64_t l = 0; l < a->layers; l++)
        LOOM_CALL(loom_k_attention_decode_batch(be, &(loom_attention_decode_batch_args){a->calls + l * a->seqs,
                                                                                         a->seqs}));
    return LOOM_OK;
}

#define STEP_SEQS 64
#define STEP_POSITIONS 80
#define STEP_BLOCK 16
static int bench_step_attention(loom_backend *be, int reps) {
    const int64_t H = 12, hd = 64, kvw2 = 2 * H * hd, L = ROW_LAYERS, per_seq = STEP_POSITIONS / STEP_BLOCK;
    const int64_t n_blocks = STEP_SEQS * per_seq, layer = n_blocks * STEP_BLOCK * kvw2; /* elements */
    const size_t bytes = (size_t)(L * layer) * sizeof(float);
    void *pool = NULL;
    float *q = malloc((size_t)(STEP_SEQS * H * hd) * sizeof(float));
    float *out = malloc((size_t)(STEP_SEQS * H * hd) * sizeof(float));
    int32_t *tables = malloc((size_t)n_blocks * sizeof(int32_t));
    loom_attention_decode_args *calls = malloc((size_t)(L * STEP_SEQS) * sizeof *calls);
    if (!q || !out || !tables || !calls || loom_buf_reserve(be, bytes, &pool) != LOOM_OK) {
        free(q), free(out), free(tables), free(calls);
        fprintf(stderr, "loom bench decode: out of memory\n");
        return 1;
    }
    loom_buf_populate(be, pool, bytes);
    fill(q, STEP_SEQS * H * hd, 29);
    fill(pool, L * layer, 31); /* fp32, then rounded in place to bf16 (the first half of the bytes) */
    loom_rng rng;
    loom_rng_seed(&rng, 37);
    for (int64_t b = 0; b < n_blocks; b++) tables[b] = (int32_t)b; /* a shuffle: a server's blocks are scattered */
    for (int64_t b = n_blocks - 1; b > 0; b--) {
        const int64_t o = (int64_t)loom_rng_below(&rng, (uint64_t)(b + 1));
        const int32_t t = tables[b];
        tables[b] = tables[o], tables[o] = t;
    }
    printf("a serving step's attention from memory: %d sequences of 1 row over %d positions, %lld layers of a "
           "paged pool (blocks of %d, scattered): medians of %d\n", STEP_SEQS, STEP_POSITIONS, (long long)L,
           STEP_BLOCK, reps);
    printf("  %-5s %9s %9s %12s %7s\n", "cache", "ms", "GB/s", "read GB/s", "ratio");
    int rc = 0;
    for (int bf16 = 0; bf16 < 2 && !rc; bf16++) {
        const size_t el = bf16 ? sizeof(uint16_t) : sizeof(float), read = (size_t)(L * layer) * el;
        for (int64_t i = 0; bf16 && i < L * layer; i++) { /* in place, ascending: value i lands on the float i / 2 */
            float x;
            memcpy(&x, (const char *)pool + i * (int64_t)sizeof x, sizeof x);
            const uint16_t h = loom_f32_to_bf16(x);
            memcpy((char *)pool + i * (int64_t)sizeof h, &h, sizeof h);
        }
        for (int64_t l = 0; l < L; l++)
            for (int64_t i = 0; i < STEP_SEQS; i++) {
                loom_attention_decode_args *c = &calls[l * STEP_SEQS + i];
                *c = (loom_attention_decode_args){.out = out + i * H * hd, .q = q + i * H * hd, .ld = kvw2,
                                                  .n = STEP_POSITIONS, .H = H, .KV = H, .hd = hd,
                                                  .blocks = tables + i * per_seq, .block_len = STEP_BLOCK,
                                                  .block_stride = STEP_BLOCK * kvw2};
                if (bf16) c->k16 = (const uint16_t *)pool + l * layer, c->v16 = c->k16 + H * hd;
                else c->k = (const float *)pool + l * layer, c->v = c->k + H * hd;
            }
        const step_attention sa = {calls, L, STEP_SEQS};
        rc = roofline_row(be, (bench_call){be, &sa, call_step_attention}, pool, read, bf16 ? "bf16" : "f32", reps);
    }
    loom_buf_unreserve(be, pool, bytes);
    free(q), free(out), free(tables), free(calls);
    return rc;
}

int loom_cmd_bench_decode(int argc, char **argv) {
    int threads = 0, quick = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "loom bench decode: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (threads <= 0) threads = loom_cli_cores();
    const int reps = quick ? 3 : 15;
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    loom_backend *lib = NULL, *few = NULL;
    if (loom_backend_init(&bc, &lib) != LOOM_OK) return loom_cli_fail("bench decode");
    bc.batch_invariant = 1; /* every product with a weight [N, K] through the few-row kernel */
    if (loom_backend_init(&bc, &few) != LOOM_OK) {
        loom_backend_free(&lib);
        return loom_cli_fail("bench decode");
    }
    printf("loom bench decode: %d threads\n", threads);
    int rc = bench_attention(lib, reps);
    if (!rc) rc = bench_attention_batch(lib, reps);
    if (!rc) rc = bench_products(lib, few, reps);
    if (!rc) rc = bench_decode_row(lib, reps);
    if (!rc) rc = bench_step_attention(lib, reps);
    loom_backend_free(&few);
    loom_backend_free(&lib);
    return rc;
}
