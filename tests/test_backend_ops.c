/* Every kernel of LOOM_KERNELS on every backend of this build, against the CPU backend (as ggml's
 * test-backend-ops): each case builds the same seeded inputs, uploads them into the backend's buffers, runs
 * the kernel, downloads every output, and compares with the CPU backend's outputs. The CPU kernels
 * themselves are checked against plain double-precision loops in tests/test_kernels.c.
 *
 * Backends: cpu-isolated (its buffers are PROT_NONE outside its own operations, so a case that touched
 * one from the host would crash here) must equal the CPU bit for bit: the same kernels on the same numbers.
 * cuda, when built and a GPU is present, within each case's tolerance: |got - cpu| <= atol + rtol*|cpu|,
 * with the reason given at the case (other summation orders, fast math functions).
 *
 *   test_backend_ops [backend ...]      (default: every backend of this build that starts here)
 * A kernel without a case here is a failure: adding a kernel means adding its case. */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loom/backend.h"
#include "loom/rng.h"
#include "loom/tensor.h"

enum { MAX_BUF = 24 };

/* one run of one case on one backend: its buffers and the outputs to compare */
typedef struct {
    loom_backend *be;
    loom_rng rng;
    void *buf[MAX_BUF];
    size_t bytes[MAX_BUF];
    int n_buf;
    const void *out[MAX_BUF]; /* device outputs (floats, bf16 values, or a host double for scalar results) */
    int64_t out_n[MAX_BUF];
    int out_host[MAX_BUF];
    int out_bf16[MAX_BUF];
    int n_out;
    loom_status st;
} run;

static void *alloc(run *r, size_t bytes) {
    void *p = NULL;
    if (r->st == LOOM_OK && r->n_buf < MAX_BUF) r->st = loom_buf_alloc(r->be, NULL, LOOM_MEM_WORKSPACE, bytes, &p);
    if (p) {
        r->buf[r->n_buf] = p;
        r->bytes[r->n_buf++] = bytes;
    }
    return p;
}
/* a buffer holding `host` (n floats) */
static void *upload(run *r, const void *host, size_t bytes) {
    void *p = alloc(r, bytes);
    if (p && r->st == LOOM_OK) r->st = loom_buf_upload(r->be, p, host, bytes);
    return p;
}
/* n uniform floats in [lo, hi), as a buffer */
static float *rand_in(run *r, int64_t n, double lo, double hi) {
    float *h = malloc((size_t)n * sizeof(float));
    if (!h) exit(2);
    for (int64_t i = 0; i < n; i++) h[i] = (float)(lo + (hi - lo) * loom_rng_uniform(&r->rng));
    float *d = upload(r, h, (size_t)n * sizeof(float));
    free(h);
    return d;
}
static int32_t *ids_in(run *r, int64_t n, int64_t below, int with_negative) {
    int32_t *h = malloc((size_t)n * sizeof(int32_t));
    if (!h) exit(2);
    for (int64_t i = 0; i < n; i++)
        h[i] = with_negative && i % 7 == 3 ? -1 : (int32_t)loom_rng_below(&r->rng, (uint64_t)below);
    int32_t *d = upload(r, h, (size_t)n * sizeof(int32_t));
    free(h);
    return d;
}
static uint16_t *bf16_in(run *r, int64_t n) {
    uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
    if (!h) exit(2);
    for (int64_t i = 0; i < n; i++) h[i] = loom_f32_to_bf16((float)(2.0 * loom_rng_uniform(&r->rng) - 1.0));
    uint16_t *d = upload(r, h, (size_t)n * sizeof(uint16_t));
    free(h);
    return d;
}
/* an output: a random starting value in [lo, hi) (kernels that accumulate must add to it; others overwrite it) */
static float *out_range(run *r, int64_t n, double lo, double hi) {
    float *d = rand_in(r, n, lo, hi);
    if (d && r->n_out < MAX_BUF) {
        r->out[r->n_out] = d;
        r->out_n[r->n_out] = n;
        r->out_host[r->n_out++] = 0;
    }
    return d;
}
static float *out_f(run *r, int64_t n) { return out_range(r, n, -1, 1); }
/* an output of n bf16 values (random starting bits), compared as the values they are: another device's
 * few-ulp differences in fp32 may round to the neighbouring bf16 value, one bf16 ulp (2^-7 relative) */
static uint16_t *out_b16(run *r, int64_t n) {
    uint16_t *d = (uint16_t *)rand_in(r, (n + 1) / 2, -1, 1);
    if (d && r->n_out < MAX_BUF) {
        r->out[r->n_out] = d;
        r->out_n[r->n_out] = n;
        r->out_host[r->n_out] = 0;
        r->out_bf16[r->n_out++] = 1;
    }
    return d;
}
static void out_scalar(run *r, const double *x) {
    r->out[r->n_out] = x;
    r->out_n[r->n_out] = 1;
    r->out_host[r->n_out++] = 1;
}
#define KCALL(call)                            \
    do {                                       \
        if (r->st == LOOM_OK) r->st = (call);  \
    } while (0)

/* ---- the cases: sizes none a multiple of 16, so vector tails run too ---- */

static double scalar_a, scalar_b; /* a run's host results (sum_squares, lamb_moments) */

static loom_gemm gemm_case(run *r, int ta, int tb, float beta) {
    const int64_t M = 37, N = 29, K = 43, lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
    loom_gemm g = {ta, tb, M, N, K, 0.75f, NULL, lda, NULL, ldb, beta, NULL, ldc};
    g.A = rand_in(r, (ta ? K : M) * lda, -1, 1);
    g.B = rand_in(r, (tb ? N : K) * ldb, -1, 1);
    g.C = out_f(r, M * ldc);
    return g;
}

static void run_case(loom_kernel k, run *r) {
    loom_backend *be = r->be;
    switch (k) {
    case LOOM_KERNEL_matmul:
        for (int t = 0; t < 4; t++) {
            loom_gemm g = gemm_case(r, t & 1, t >> 1, t == 3 ? 0.5f : 0.0f);
            KCALL(loom_k_matmul(be, &g));
        }
        break;
    case LOOM_KERNEL_matmul_pair: {
        loom_matmul_pair_args a = {gemm_case(r, 0, 1, 0.0f), gemm_case(r, 1, 0, 1.0f)};
        KCALL(loom_k_matmul_pair(be, &a));
        break;
    }
    case LOOM_KERNEL_matmul_bf16: {
        const int64_t M = 21, N = 35, K = 40;
        loom_matmul_bf16_args a = {0, 1, M, N, K, 1.0f, bf16_in(r, M * K), K, bf16_in(r, N * K), K, 0.5f, NULL, N};
        a.C = out_f(r, M * N);
        KCALL(loom_k_matmul_bf16(be, &a));
        break;
    }
    case LOOM_KERNEL_layernorm_forward:
    case LOOM_KERNEL_rmsnorm_forward:
        for (int b16 = 0; b16 < 2; b16++) { /* the output in fp32, or in bf16 */
            const int64_t N = 23, C = 67;
            loom_layernorm_forward_args a = {NULL, NULL, NULL, rand_in(r, N * C, -2, 2), rand_in(r, C, 0.5, 1.5),
                                             rand_in(r, C, -0.5, 0.5), N, C, 1e-5f, NULL};
            if (b16) a.out16 = out_b16(r, N * C);
            else a.out = out_f(r, N * C);
            a.mean = out_f(r, N);
            a.rstd = out_f(r, N);
            KCALL(k == LOOM_KERNEL_layernorm_forward ? loom_k_layernorm_forward(be, &a) : loom_k_rmsnorm_forward(be, &a));
        }
        break;
    case LOOM_KERNEL_layernorm_backward:
    case LOOM_KERNEL_rmsnorm_backward:
        for (int acc = 0; acc < 2; acc++) {
            const int64_t N = 23, C = 67;
            loom_layernorm_backward_args a = {NULL, NULL, NULL, rand_in(r, N * C, -1, 1), rand_in(r, N * C, -2, 2),
                                              rand_in(r, C, 0.5, 1.5), rand_in(r, N, -0.3, 0.3), rand_in(r, N, 0.5, 2),
                                              N, C, acc};
            a.dinp = out_f(r, N * C);
            a.dw = out_f(r, C);
            a.db = k == LOOM_KERNEL_layernorm_backward ? out_f(r, C) : NULL;
            KCALL(k == LOOM_KERNEL_layernorm_backward ? loom_k_layernorm_backward(be, &a)
                                                       : loom_k_rmsnorm_backward(be, &a));
        }
        break;
    case LOOM_KERNEL_bias_gelu_forward:
        for (int v = 0; v < 6; v++) { /* tanh or erf; the output in fp32, bf16 or not at all (bias only) */
            const int exact = v & 1, form = v >> 1;
            loom_bias_gelu_forward_args a = {out_f(r, 19 * 45), NULL, rand_in(r, 45, -1, 1), 19, 45, exact, NULL};
            if (form == 0) a.out = out_f(r, 19 * 45);
            if (form == 1) a.out16 = out_b16(r, 19 * 45);
            KCALL(loom_k_bias_gelu_forward(be, &a));
        }
        break;
    case LOOM_KERNEL_gelu_forward:
        for (int v = 0; v < 4; v++) { /* tanh or erf; the output in fp32 or bf16 */
            const int exact = v & 1;
            loom_gelu_forward_args a = {NULL, rand_in(r, 1001, -6, 6), 1001, exact, NULL};
            if (v >> 1) a.out16 = out_b16(r, 1001);
            else a.out = out_f(r, 1001);
            KCALL(loom_k_gelu_forward(be, &a));
        }
        break;
    case LOOM_KERNEL_gelu_backward:
        for (int exact = 0; exact < 2; exact++) {
            loom_gelu_backward_args a = {NULL, rand_in(r, 1001, -6, 6), rand_in(r, 1001, -1, 1), 1001, exact, NULL, NULL, 0, 0};
            a.dinp = out_f(r, 1001);
            KCALL(loom_k_gelu_backward(be, &a));
            a.dinp = NULL; /* the bf16 form, 7 rows of 143: with the bias gradient (added to), then without */
            a.dinp16 = out_b16(r, 1001);
            a.db = out_f(r, 143);
            a.cols = 143;
            a.accumulate = 1;
            KCALL(loom_k_gelu_backward(be, &a));
            a.dinp16 = out_b16(r, 1001);
            a.db = NULL;
            KCALL(loom_k_gelu_backward(be, &a));
        }
        break;
    case LOOM_KERNEL_swiglu_forward:
        for (int b16 = 0; b16 < 2; b16++) {
            loom_swiglu_forward_args a = {NULL, rand_in(r, 17 * 2 * 33, -4, 4), 17, 33, NULL};
            if (b16) a.out16 = out_b16(r, 17 * 33);
            else a.out = out_f(r, 17 * 33);
            KCALL(loom_k_swiglu_forward(be, &a));
        }
        break;
    case LOOM_KERNEL_swiglu_backward: {
        loom_swiglu_backward_args a = {NULL, rand_in(r, 17 * 2 * 33, -4, 4), rand_in(r, 17 * 33, -1, 1), 17, 33};
        a.dgu = out_f(r, 17 * 2 * 33);
        KCALL(loom_k_swiglu_backward(be, &a));
        break;
    }
    case LOOM_KERNEL_bias_add: {
        loom_bias_add_args a = {out_f(r, 13 * 71), rand_in(r, 71, -1, 1), 13, 71};
        KCALL(loom_k_bias_add(be, &a));
        break;
    }
    case LOOM_KERNEL_bias_backward:
        for (int acc = 0; acc < 2; acc++) {
            loom_bias_backward_args a = {out_f(r, 71), rand_in(r, 131 * 71, -1, 1), 131, 71, acc, NULL};
            KCALL(loom_k_bias_backward(be, &a));
            a.dout16 = out_b16(r, 131 * 71); /* the bf16 operand beside the sums, then alone */
            KCALL(loom_k_bias_backward(be, &a));
            a.db = NULL;
            a.dout16 = out_b16(r, 131 * 71);
            KCALL(loom_k_bias_backward(be, &a));
        }
        break;
    case LOOM_KERNEL_add: {
        float *o = out_f(r, 1003);
        loom_add_args a = {o, o, rand_in(r, 1003, -1, 1), 1003}; /* in place, as the model uses it */
        KCALL(loom_k_add(be, &a));
        break;
    }
    case LOOM_KERNEL_scale: {
        loom_scale_args a = {out_f(r, 1003), -0.37f, 1003};
        KCALL(loom_k_scale(be, &a));
        break;
    }
    case LOOM_KERNEL_rope:
        for (int inv = 0; inv < 2; inv++) {
            const int64_t B = 2, T = 11, H = 4, KV = 2, hd = 10;
            loom_rope_args a = {out_f(r, B * T * (H + 2 * KV) * hd), rand_in(r, T * hd / 2, -1, 1),
                                rand_in(r, T * hd / 2, -1, 1), B, T, H, KV, hd, inv};
            KCALL(loom_k_rope(be, &a));
        }
        break;
    case LOOM_KERNEL_attention_forward: {
        const int64_t B = 2, T = 37, H = 4, KV = 2, hd = 12;
        loom_attention_forward_args a = {NULL, NULL, rand_in(r, B * T * (H + 2 * KV) * hd, -1, 1), B, T, H, KV, hd, 0};
        a.out = out_f(r, B * T * H * hd);
        a.lse = out_f(r, B * H * T);
        KCALL(loom_k_attention_forward(be, &a));
        break;
    }
    case LOOM_KERNEL_attention_backward: {
        const int64_t B = 2, T = 37, H = 4, KV = 2, hd = 12, Cq = (H + 2 * KV) * hd;
        float *qkv = rand_in(r, B * T * Cq, -1, 1), *out = rand_in(r, B * T * H * hd, -1, 1),
              *lse = rand_in(r, B * H * T, 1, 3);
        loom_attention_forward_args f = {out, lse, qkv, B, T, H, KV, hd, 0}; /* a consistent out and lse */
        KCALL(loom_k_attention_forward(be, &f));
        loom_attention_backward_args a = {NULL, rand_in(r, B * T * H * hd, -1, 1), qkv, out, lse, B, T, H, KV, hd, 0};
        a.dqkv = out_f(r, B * T * Cq);
        KCALL(loom_k_attention_backward(be, &a));
        break;
    }
    case LOOM_KERNEL_attention_block_forward:
    case LOOM_KERNEL_attention_block_backward:
    case LOOM_KERNEL_attention_merge: {
        /* ring attention's pieces: block 1's queries against its own keys (causal) and block 0's (all
         * visible), merged; then the backward of both pieces */
        const int64_t B = 2, T = 19, H = 4, KV = 2, hd = 8, Cq = (H + 2 * KV) * hd, C = H * hd;
        const float *q = rand_in(r, B * T * Cq, -1, 1), *kv0 = rand_in(r, B * T * 2 * KV * hd, -1, 1);
        float *out = out_f(r, B * T * C), *lse = out_f(r, B * H * T);
        float *out_b = out_f(r, B * T * C), *lse_b = out_f(r, B * H * T);
        loom_attention_block_forward_args own = {out, lse, q, Cq, q + H * hd, Cq, B, T, T, H, KV, hd, 1, 0};
        loom_attention_block_forward_args prev = {out_b, lse_b, q, Cq, kv0, 2 * KV * hd, B, T, T, H, KV, hd, 0, 0};
        KCALL(loom_k_attention_block_forward(be, &own));
        KCALL(loom_k_attention_block_forward(be, &prev));
        loom_attention_merge_args mg = {out, lse, out_b, lse_b, B, T, H, hd};
        KCALL(loom_k_attention_merge(be, &mg));
        const float *dout = rand_in(r, B * T * C, -1, 1);
        float *dq = out_f(r, B * T * Cq), *dkv0 = out_f(r, B * T * 2 * KV * hd);
        loom_attention_block_backward_args b1 = {dq, dq + H * hd, dout, q, Cq, q + H * hd, Cq, out, lse,
                                                 B, T, T, H, KV, hd, 1, 0};
        loom_attention_block_backward_args b0 = {dq, dkv0, dout, q, Cq, kv0, 2 * KV * hd, out, lse,
                                                 B, T, T, H, KV, hd, 0, 0};
        KCALL(loom_k_attention_block_backward(be, &b1));
        KCALL(loom_k_attention_block_backward(be, &b0));
        break;
    }
    case LOOM_KERNEL_attention_decode: {
        const int64_t H = 6, KV = 3, hd = 10, n = 29, ld = KV * hd + 4;
        loom_attention_decode_args a = {.q = rand_in(r, H * hd, -1, 1), .k = rand_in(r, n * ld, -1, 1),
                                        .v = rand_in(r, n * ld, -1, 1), .ld = ld, .n = n, .H = H, .KV = KV, .hd = hd};
        a.out = out_f(r, H * hd);
        KCALL(loom_k_attention_decode(be, &a));
        /* paged, several causal query rows: 5 rows after 24 cached positions in blocks of 4 (of 9) */
        const int64_t bl = 4, nb = 9, rows = 5, qs = H * hd + 3;
        loom_attention_decode_args p = {NULL, rand_in(r, rows * qs, -1, 1), NULL, NULL, ld, n, H, KV, hd,
                                        rows, qs, H * hd + 1, ids_in(r, (n + bl - 1) / bl, nb, 0), bl, bl * ld, NULL, NULL};
        p.k = rand_in(r, nb * bl * ld, -1, 1);
        p.v = rand_in(r, nb * bl * ld, -1, 1);
        p.out = out_f(r, rows * (H * hd + 1));
        KCALL(loom_k_attention_decode(be, &p));
        p.k = p.v = NULL; /* the same from a bf16 cache */
        p.k16 = bf16_in(r, nb * bl * ld);
        p.v16 = bf16_in(r, nb * bl * ld);
        p.out = out_f(r, rows * (H * hd + 1));
        KCALL(loom_k_attention_decode(be, &p));
        break;
    }
    case LOOM_KERNEL_attention_decode_batch: { /* three sequences of a serving step: paged, 1, 3 and 2 new rows */
        const int64_t H = 6, KV = 3, hd = 10, ld = 2 * KV * hd, bl = 4, nb = 12, ns[3] = {9, 17, 5}, rs[3] = {1, 3, 2};
        const float *pool = rand_in(r, nb * bl * ld, -1, 1);
        loom_attention_decode_args calls[3];
        for (int i = 0; i < 3; i++)
            calls[i] = (loom_attention_decode_args){.out = out_f(r, rs[i] * H * hd), .q = rand_in(r, rs[i] * H * hd, -1, 1),
                                                    .k = pool, .v = pool + KV * hd, .ld = ld, .n = ns[i], .H = H,
                                                    .KV = KV, .hd = hd, .rows = rs[i],
                                                    .blocks = ids_in(r, (ns[i] + bl - 1) / bl, nb, 0),
                                                    .block_len = bl, .block_stride = bl * ld};
        KCALL(loom_k_attention_decode_batch(be, &(loom_attention_decode_batch_args){calls, 3}));
        break;
    }
    case LOOM_KERNEL_embedding_forward:
        for (int pos = 0; pos < 3; pos++) { /* without positions, with them, with them and a bf16 table */
            const int64_t B = 3, T = 7, C = 33, V = 41;
            loom_embedding_forward_args a = {NULL, ids_in(r, B * T, V, 1), rand_in(r, V * C, -1, 1),
                                             pos ? rand_in(r, T * C, -1, 1) : NULL, B, T, C,
                                             pos == 2 ? bf16_in(r, V * C) : NULL};
            a.out = out_f(r, B * T * C);
            KCALL(loom_k_embedding_forward(be, &a));
        }
        break;
    case LOOM_KERNEL_embedding_backward:
        for (int acc = 0; acc < 2; acc++) {
            const int64_t B = 3, T = 7, C = 33, V = 41;
            loom_embedding_backward_args a = {out_f(r, V * C), out_f(r, T * C), rand_in(r, B * T * C, -1, 1),
                                              ids_in(r, B * T, V, 1), B, T, C, V, acc, acc};
            KCALL(loom_k_embedding_backward(be, &a));
        }
        break;
    case LOOM_KERNEL_softmax_cross_entropy:
        for (int grad = 0; grad < 3; grad++) { /* no gradient, over the logits, into bf16 (compared as floats;
                                                * the logits are then scratch, not compared) */
            float *logits = grad == 2 ? rand_in(r, 13 * 211, -1, 1) : out_f(r, 13 * 211);
            loom_softmax_cross_entropy_args a = {logits, out_f(r, 13), ids_in(r, 13, 211, 1), 13, 211,
                                                 grad ? 0.25f : 0.0f, grad == 2 ? (uint16_t *)out_f(r, (13 * 211 + 1) / 2) : NULL};
            KCALL(loom_k_softmax_cross_entropy(be, &a));
        }
        break;
    case LOOM_KERNEL_ce_row_max:
    case LOOM_KERNEL_ce_row_sums:
    case LOOM_KERNEL_ce_finish: { /* this rank's columns [50, 150) of a vocabulary of 211 */
        const int64_t N = 13, V = 100, v0 = 50;
        loom_ce_args a = {out_f(r, N * V), out_f(r, N), ids_in(r, N, 211, 1), N, V, v0, out_f(r, N), out_f(r, 2 * N),
                          0.5f, NULL, 0};
        KCALL(loom_k_ce_row_max(be, &a));
        KCALL(loom_k_ce_row_sums(be, &a));
        KCALL(loom_k_ce_finish(be, &a));
        /* again on those values, as training runs it: the exponentials kept by row_sums (keep_exps), the
         * gradient into bf16 (the logits stay) */
        a.keep_exps = 1;
        KCALL(loom_k_ce_row_sums(be, &a));
        a.grad16 = out_b16(r, N * V);
        KCALL(loom_k_ce_finish(be, &a));
        break;
    }
    case LOOM_KERNEL_f32_to_bf16: {
        /* the bf16 values, viewed as floats two at a time: compared bit for bit */
        float *dst = out_f(r, 500);
        loom_f32_to_bf16_args a = {(uint16_t *)dst, rand_in(r, 1000, -100, 100), 1000};
        KCALL(loom_k_f32_to_bf16(be, &a));
        break;
    }
    case LOOM_KERNEL_round_fp16: {
        const int64_t rows = 9, cols = 45;
        loom_round_fp16_args a = {NULL, cols + 3, rand_in(r, rows * (cols + 5), -70000, 70000), cols + 5, rows, cols};
        a.dst = out_f(r, rows * (cols + 3));
        KCALL(loom_k_round_fp16(be, &a));
        break;
    }
    case LOOM_KERNEL_round_bf16: { /* in place, as the key/value cache calls it */
        const int64_t rows = 9, cols = 45;
        float *x = out_range(r, rows * (cols + 5), -100, 100); /* the columns past cols stay as they are */
        loom_round_bf16_args a = {x, cols + 5, x, cols + 5, rows, cols};
        KCALL(loom_k_round_bf16(be, &a));
        break;
    }
    case LOOM_KERNEL_sum_squares: {
        loom_sum_squares_args a = {rand_in(r, 100003, -1, 1), 100003, &scalar_a};
        KCALL(loom_k_sum_squares(be, &a));
        out_scalar(r, &scalar_a);
        break;
    }
    case LOOM_KERNEL_adamw:
        for (int with16 = 0; with16 < 2; with16++) { /* and writing the bf16 copy (compared as floats) */
            const int64_t n = 5003;
            loom_adamw_args a = {out_f(r, n), rand_in(r, n, -1, 1), out_f(r, n), NULL, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f,
                                 0.1f, 0.05f, 0.5f, with16 ? (uint16_t *)out_f(r, (n + 1) / 2) : NULL};
            a.v = out_range(r, n, 0.01, 1); /* a second moment is never negative */
            KCALL(loom_k_adamw(be, &a));
        }
        break;
    case LOOM_KERNEL_lamb_moments:
    case LOOM_KERNEL_lamb_apply: {
        const int64_t n = 5003;
        loom_lamb_args a = {out_f(r, n), rand_in(r, n, -1, 1), out_f(r, n), out_range(r, n, 0.01, 1), n, 0.9f, 0.999f,
                            1e-6f, 0.01f, 0.1f, 0.05f, 2.0f, 0.003f, &scalar_b, NULL};
        KCALL(loom_k_lamb_moments(be, &a));
        out_scalar(r, &scalar_b);
        KCALL(loom_k_lamb_apply(be, &a));
        a.p16 = (uint16_t *)out_f(r, (n + 1) / 2); /* and a second apply writing the bf16 copy */
        KCALL(loom_k_lamb_apply(be, &a));
        break;
    }
    case LOOM_KERNEL_sgd:
    case LOOM_KERNEL_lars:
        for (int variant = 0; variant < 3; variant++) { /* first step, later step, later step writing the bf16 copy */
            const int64_t n = 5003;
            loom_sgd_args a = {out_f(r, n), rand_in(r, n, -1, 1), out_f(r, n), n, 0.01f, 0.9f, 0.1f, 0.5f, 1, variant == 0,
                               variant == 2 ? (uint16_t *)out_f(r, (n + 1) / 2) : NULL};
            KCALL(k == LOOM_KERNEL_sgd ? loom_k_sgd(be, &a) : loom_k_lars(be, &a));
        }
        break;
    case LOOM_KERNEL_copy: { /* host -> buffer -> buffer -> host */
        float host[301], back[301];
        for (int i = 0; i < 301; i++) host[i] = (float)loom_rng_uniform(&r->rng);
        float *a = out_f(r, 301), *b = out_f(r, 301);
        KCALL(loom_k_copy(be, &(loom_copy_args){a, host, sizeof host, LOOM_COPY_H2D}));
        KCALL(loom_k_copy(be, &(loom_copy_args){b + 1, a, 300 * sizeof(float), LOOM_COPY_D2D}));
        KCALL(loom_k_copy(be, &(loom_copy_args){back, b, sizeof back, LOOM_COPY_D2H}));
        KCALL(loom_buf_upload(be, a, back, sizeof back));
        break;
    }
    case LOOM_KERNEL_copy_rows:
        for (int acc = 0; acc < 2; acc++) {
            loom_copy_rows_args a = {out_f(r, 17 * 40), 40, rand_in(r, 17 * 53, -1, 1), 53, 17, 31, acc};
            KCALL(loom_k_copy_rows(be, &a));
        }
        break;
    case LOOM_KERNEL_fill: {
        float *x = out_f(r, 1003);
        KCALL(loom_k_fill(be, &(loom_fill_args){x, 0.0f, 500}));
        KCALL(loom_k_fill(be, &(loom_fill_args){x + 500, -2.5f, 503}));
        break;
    }
    default:
        r->st = LOOM_ERR_UNSUPPORTED;
        break;
    }
}

/* Runs kernel k's case on be; the outputs, downloaded, concatenated into *got (n values); is16 (may be NULL):
 * which of them are bf16 values. */
static loom_status run_on(loom_backend *be, loom_kernel k, double **got, int64_t *n, unsigned char **is16) {
    run r;
    memset(&r, 0, sizeof r);
    r.be = be;
    loom_rng_seed(&r.rng, 1000 + (uint64_t)k);
    run_case(k, &r);
    if (r.st == LOOM_OK) r.st = loom_backend_sync(be);
    int64_t total = 0;
    for (int i = 0; i < r.n_out; i++) total += r.out_n[i];
    *got = calloc((size_t)(total + 1), sizeof(double));
    if (is16) *is16 = calloc((size_t)(total + 1), 1);
    float *tmp = malloc((size_t)(total + 1) * sizeof(float));
    int64_t at = 0;
    for (int i = 0; i < r.n_out && r.st == LOOM_OK && *got && tmp && (!is16 || *is16); i++) {
        if (r.out_host[i]) {
            (*got)[at++] = *(const double *)r.out[i];
            continue;
        }
        const int b16 = r.out_bf16[i];
        r.st = loom_buf_download(be, tmp, r.out[i], (size_t)r.out_n[i] * (b16 ? sizeof(uint16_t) : sizeof(float)));
        for (int64_t j = 0; j < r.out_n[i]; j++) {
            if (is16) (*is16)[at] = (unsigned char)b16;
            (*got)[at++] = b16 ? loom_bf16_to_f32(((const uint16_t *)tmp)[j]) : tmp[j];
        }
    }
    free(tmp);
    for (int i = r.n_buf - 1; i >= 0; i--) loom_buf_free(be, NULL, LOOM_MEM_WORKSPACE, r.buf[i], r.bytes[i]);
    *n = at;
    return r.st;
}

/* Tolerances against the CPU: an identical build of the same kernels (cpu-isolated) must match to the bit;
 * another device sums in other orders and uses its own exp/erf/tanh: ~1e-6 relative per operation, a few
 * ulps more through the chains inside attention, norms and the optimizers. */
typedef struct {
    double atol, rtol;
} tolerance;
static tolerance tolerance_of(loom_kernel k, int exact) {
    if (exact) return (tolerance){0, 0};
    switch (k) {
    case LOOM_KERNEL_matmul:
    case LOOM_KERNEL_matmul_pair: return (tolerance){1e-5, 1e-5};     /* K=43 terms of |x| < 1, fp32 (no tf32) */
    case LOOM_KERNEL_matmul_bf16: return (tolerance){1e-4, 1e-4};     /* bf16 products, fp32 accumulation */
    case LOOM_KERNEL_attention_forward:
    case LOOM_KERNEL_attention_backward:
    case LOOM_KERNEL_attention_block_forward:
    case LOOM_KERNEL_attention_block_backward:
    case LOOM_KERNEL_attention_merge:
    case LOOM_KERNEL_attention_decode: /* online softmax in another order */
    case LOOM_KERNEL_attention_decode_batch: return (tolerance){2e-5, 1e-4};
    case LOOM_KERNEL_f32_to_bf16:
    case LOOM_KERNEL_round_fp16:
    case LOOM_KERNEL_round_bf16:
    case LOOM_KERNEL_copy:
    case LOOM_KERNEL_copy_rows:
    case LOOM_KERNEL_fill: return (tolerance){0, 0};                   /* exact operations */
    case LOOM_KERNEL_sum_squares: return (tolerance){0, 1e-12};        /* double accumulation */
    default: return (tolerance){1e-5, 1e-5};
    }
}

/* The isolation is real: in a child process, a direct write to a cpu-isolated buffer from host code must end
 * it with SIGSEGV (and a read too), while the same buffer works through the backend's own copies. */
static int isolation_holds(int write) {
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        loom_backend_config bc = loom_backend_config_default();
        bc.device = "cpu-isolated";
        bc.quiet = 1;
        loom_backend *be;
        float *x, v = 1.0f;
        if (loom_backend_init(&bc, &be) || loom_buf_alloc(be, NULL, LOOM_MEM_WORKSPACE, 4096, (void **)&x) ||
            loom_buf_upload(be, x, &v, sizeof v) || loom_buf_download(be, &v, x, sizeof v) || v != 1.0f)
            _exit(3);
        if (write) x[0] = 2.0f; /* must fault */
        else v = *(volatile float *)x;
        _exit(v == 12345.0f ? 5 : 4); /* reached only when the access did not fault */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    const int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
    printf("%s cpu-isolated: a direct %s of a buffer from host code %s\n", ok ? "ok  " : "FAIL",
           write ? "write" : "read", ok ? "faults (SIGSEGV)" : "did not fault");
    return ok;
}

int main(int argc, char **argv) {
    const char *all[] = {"cpu-isolated", "cuda"};
    const char **names = argc > 1 ? (const char **)argv + 1 : all;
    const int n_names = argc > 1 ? argc - 1 : 2;
    loom_backend_config rc = loom_backend_config_default();
    rc.threads = 2;
    rc.quiet = 1;
    loom_backend *ref;
    if (loom_backend_init(&rc, &ref) != LOOM_OK) {
        fprintf(stderr, "the CPU backend: %s\n", loom_error_message());
        return 1;
    }
    int pass = 0, fail = 0, backends = 0;
    for (int b = 0; b < n_names; b++) {
        loom_backend_config bc = rc;
        bc.device = names[b];
        loom_backend *be;
        if (loom_backend_init(&bc, &be) != LOOM_OK) {
            const int asked = argc > 1;
            printf("%s %s: %s\n", asked ? "FAIL" : "skip", names[b], loom_error_message());
            fail += asked;
            continue;
        }
        backends++;
        const int exact = !strcmp(names[b], "cpu-isolated");
        for (int w = 0; exact && w < 2; w++) isolation_holds(w) ? pass++ : fail++;
        for (int k = 0; k < LOOM_KERNEL_COUNT; k++) {
            double *want = NULL, *got = NULL;
            int64_t nw = 0, ng = 0;
            unsigned char *is16 = NULL;
            const loom_status s1 = run_on(ref, (loom_kernel)k, &want, &nw, &is16);
            const loom_status s2 = s1 == LOOM_OK ? run_on(be, (loom_kernel)k, &got, &ng, NULL) : LOOM_OK;
            const tolerance t = tolerance_of((loom_kernel)k, exact);
            double worst = 0, werr = 0, wtol = 0;
            int ok = s1 == LOOM_OK && s2 == LOOM_OK && nw == ng && nw > 0;
            for (int64_t i = 0; ok && i < nw; i++) {
                const double err = fabs(got[i] - want[i]),
                             tol = t.atol + (t.rtol + (is16[i] ? 1.0 / 128 : 0.0)) * fabs(want[i]);
                const int both_nan = isnan(got[i]) && isnan(want[i]); /* bf16 pairs seen as floats may be NaNs */
                /* equal infinities are a match (|inf - inf| is NaN): fp16 rounding overflows to inf on purpose */
                const int same = exact ? memcmp(&got[i], &want[i], sizeof(double)) == 0 || both_nan
                                       : err <= tol || got[i] == want[i] || both_nan;
                if (!same) ok = 0;
                const double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0);
                if (!same || ratio > worst) {
                    worst = ratio;
                    werr = err;
                    wtol = tol;
                }
            }
            if (s1 == LOOM_ERR_UNSUPPORTED) printf("FAIL %s %s: no case in tests/test_backend_ops.c\n", names[b],
                                                   loom_kernel_name((loom_kernel)k));
            else if (s1 != LOOM_OK || s2 != LOOM_OK) printf("FAIL %s %s: %s\n", names[b], loom_kernel_name((loom_kernel)k),
                                                            loom_error_message());
            else printf("%s %s %s: %lld values, err %.3e tol %.3e\n", ok ? "ok  " : "FAIL", names[b],
                        loom_kernel_name((loom_kernel)k), (long long)nw, werr, wtol);
            ok ? pass++ : fail++;
            free(want);
            free(got);
            free(is16);
        }
        /* MFU's device peak: a positive rate from the backend's own fp32 and bf16 GEMMs (small: the emulator) */
        for (int bf16 = 0; bf16 < 2; bf16++) {
            double gflops = 0;
            const loom_status st = loom_backend_measure_gemm_peak(be, 64, bf16, &gflops);
            const int ok = st == LOOM_OK && gflops > 0 && isfinite(gflops);
            printf("%s %s gemm peak %s: %.3f GFLOP/s%s%s\n", ok ? "ok  " : "FAIL", names[b], bf16 ? "bf16" : "fp32",
                   gflops, st == LOOM_OK ? "" : ": ", st == LOOM_OK ? "" : loom_error_message());
            ok ? pass++ : fail++;
        }
        loom_backend_free(&be);
    }
    loom_backend_free(&ref);
    printf("%d kernels x %d backend(s): %d passed, %d failed\n", LOOM_KERNEL_COUNT, backends, pass, fail);
    return fail ? 1 : 0;
}
