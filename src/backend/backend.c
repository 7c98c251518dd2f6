/* Backend dispatch and built-in profiling: every kernel call goes through here, so `--profile` can say
 * where a step's time went (calls, seconds and FLOPs per op category). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_impl.h"

loom_backend_config loom_backend_config_default(void) {
    loom_backend_config c;
    memset(&c, 0, sizeof c);
    c.blas_coretype = "auto";
    return c;
}

loom_status loom_backend_init(const loom_backend_config *cfg, loom_backend **out) {
    *out = NULL;
    loom_backend *be = calloc(1, sizeof *be);
    LOOM_CHECK(be != NULL, LOOM_ERR_NOMEM, "out of memory creating the backend");
    loom_status st = loom_cpu_backend_init(cfg, be);
    if (st != LOOM_OK) {
        loom_error_trace(__FILE__, __LINE__, __func__);
        free(be);
        return st;
    }
    *out = be;
    return LOOM_OK;
}

void loom_backend_free(loom_backend **pbe) {
    if (!pbe || !*pbe) return;
    loom_backend *be = *pbe;
    if (be->impl_free) be->impl_free(be->impl);
    if (be->bf16_free) be->bf16_free(be->bf16);
    free(be);
    *pbe = NULL;
}

const char *loom_backend_name(const loom_backend *be) { return be->name; }
const char *loom_backend_gemm_kernel(const loom_backend *be) { return be->gemm_kernel; }
const char *loom_backend_bf16_kernel(const loom_backend *be) { return be->bf16_kernel; }
int loom_backend_threads(const loom_backend *be) { return be->threads; }
void loom_backend_set_profiling(loom_backend *be, int on) { be->profiling = on; }
loom_profile *loom_backend_profile(loom_backend *be) { return &be->profile; }

const char *loom_op_name(loom_op op) {
    static const char *const names[LOOM_OP_COUNT] = {"matmul",    "norm",  "activation",
                                                     "attention", "rope",  "embedding",
                                                     "loss",      "elementwise", "optimizer"};
    return (op >= 0 && op < LOOM_OP_COUNT) ? names[op] : "?";
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Times `call` into op's counters when profiling is on. */
#define DISPATCH(op, nflop, call)                                   \
    do {                                                            \
        if (!be->profiling) {                                       \
            call;                                                   \
        } else {                                                    \
            double t0_ = now_seconds();                             \
            call;                                                   \
            be->profile.seconds[op] += now_seconds() - t0_;         \
            be->profile.calls[op] += 1;                             \
            be->profile.flops[op] += (double)(nflop);               \
        }                                                           \
    } while (0)

void loom_k_matmul(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    DISPATCH(LOOM_OP_MATMUL, 2.0 * (double)M * (double)N * (double)K,
             be->ops.matmul(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
}
void loom_k_matmul_pair(loom_backend *be, const loom_gemm *a, const loom_gemm *b) {
    DISPATCH(LOOM_OP_MATMUL,
             2.0 * ((double)a->M * (double)a->N * (double)a->K + (double)b->M * (double)b->N * (double)b->K),
             be->ops.matmul_pair(be, a, b));
}
void loom_k_layernorm_forward(loom_backend *be, float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int64_t N, int64_t C, float eps) {
    DISPATCH(LOOM_OP_NORM, 0, be->ops.layernorm_forward(be, out, mean, rstd, inp, w, b, N, C, eps));
}
void loom_k_layernorm_backward(loom_backend *be, float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean, const float *rstd,
                               int64_t N, int64_t C, int accumulate) {
    DISPATCH(LOOM_OP_NORM, 0,
             be->ops.layernorm_backward(be, dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate));
}
void loom_k_rmsnorm_forward(loom_backend *be, float *out, float *rstd, const float *inp, const float *w,
                            int64_t N, int64_t C, float eps) {
    DISPATCH(LOOM_OP_NORM, 0, be->ops.rmsnorm_forward(be, out, rstd, inp, w, N, C, eps));
}
void loom_k_rmsnorm_backward(loom_backend *be, float *dinp, float *dw, const float *dout, const float *inp,
                             const float *w, const float *rstd, int64_t N, int64_t C, int accumulate) {
    DISPATCH(LOOM_OP_NORM, 0, be->ops.rmsnorm_backward(be, dinp, dw, dout, inp, w, rstd, N, C, accumulate));
}
void loom_k_bias_gelu_forward(loom_backend *be, float *pre, float *out, const float *bias, int64_t N, int64_t F,
                              int exact) {
    DISPATCH(LOOM_OP_ACTIVATION, 0, be->ops.bias_gelu_forward(be, pre, out, bias, N, F, exact));
}
void loom_k_gelu_forward(loom_backend *be, float *out, const float *pre, int64_t n, int exact) {
    DISPATCH(LOOM_OP_ACTIVATION, 0, be->ops.gelu_forward(be, out, pre, n, exact));
}
void loom_k_gelu_backward(loom_backend *be, float *dpre, const float *pre, const float *dout, int64_t n, int exact) {
    DISPATCH(LOOM_OP_ACTIVATION, 0, be->ops.gelu_backward(be, dpre, pre, dout, n, exact));
}
void loom_k_swiglu_forward(loom_backend *be, float *out, const float *gu, int64_t N, int64_t F) {
    DISPATCH(LOOM_OP_ACTIVATION, 0, be->ops.swiglu_forward(be, out, gu, N, F));
}
void loom_k_swiglu_backward(loom_backend *be, float *dgu, const float *gu, const float *dout, int64_t N,
                            int64_t F) {
    DISPATCH(LOOM_OP_ACTIVATION, 0, be->ops.swiglu_backward(be, dgu, gu, dout, N, F));
}
void loom_k_bias_add(loom_backend *be, float *x, const float *bias, int64_t N, int64_t C) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.bias_add(be, x, bias, N, C));
}
void loom_k_bias_backward(loom_backend *be, float *db, const float *dout, int64_t N, int64_t C,
                          int accumulate) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.bias_backward(be, db, dout, N, C, accumulate));
}
void loom_k_add(loom_backend *be, float *out, const float *a, const float *b, int64_t n) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.add(be, out, a, b, n));
}
void loom_k_rope(loom_backend *be, float *qkv, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                 int64_t H, int64_t KV, int64_t hd, int inverse) {
    DISPATCH(LOOM_OP_ROPE, 0, be->ops.rope(be, qkv, cos_t, sin_t, B, T, H, KV, hd, inverse));
}
void loom_k_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                              int64_t H, int64_t KV, int64_t hd) {
    DISPATCH(LOOM_OP_ATTENTION, 2.0 * (double)B * (double)H * (double)T * (double)(T + 1) * (double)hd,
             be->ops.attention_forward(be, out, lse, qkv, B, T, H, KV, hd));
}
void loom_k_attention_backward(loom_backend *be, float *dqkv, const float *dout, const float *qkv,
                               const float *out, const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV,
                               int64_t hd) {
    DISPATCH(LOOM_OP_ATTENTION, 5.0 * (double)B * (double)H * (double)T * (double)(T + 1) * (double)hd,
             be->ops.attention_backward(be, dqkv, dout, qkv, out, lse, B, T, H, KV, hd));
}
void loom_k_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                    const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                    int64_t KV, int64_t hd, int causal) {
    DISPATCH(LOOM_OP_ATTENTION, (causal ? 2.0 : 4.0) * (double)B * (double)H * (double)Tq * (double)Tk * (double)hd,
             be->ops.attention_block_forward(be, out, lse, q, qs, kv, kvs, B, Tq, Tk, H, KV, hd, causal));
}
void loom_k_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                     int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                     int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd, int causal) {
    DISPATCH(LOOM_OP_ATTENTION, (causal ? 5.0 : 10.0) * (double)B * (double)H * (double)Tq * (double)Tk * (double)hd,
             be->ops.attention_block_backward(be, dq, dkv, dout, q, qs, kv, kvs, out, lse, B, Tq, Tk, H, KV, hd, causal));
}
void loom_k_attention_merge(loom_backend *be, float *out, float *lse, const float *out_b, const float *lse_b,
                            int64_t B, int64_t T, int64_t H, int64_t hd) {
    DISPATCH(LOOM_OP_ATTENTION, 0, be->ops.attention_merge(be, out, lse, out_b, lse_b, B, T, H, hd));
}
void loom_k_embedding_forward(loom_backend *be, float *out, const int32_t *tokens, const float *wte,
                              const float *wpe, int64_t B, int64_t T, int64_t C) {
    DISPATCH(LOOM_OP_EMBEDDING, 0, be->ops.embedding_forward(be, out, tokens, wte, wpe, B, T, C));
}
void loom_k_embedding_backward(loom_backend *be, float *dwte, float *dwpe, const float *dout,
                               const int32_t *tokens, int64_t B, int64_t T, int64_t C, int64_t V,
                               int accumulate_wte, int accumulate_wpe) {
    DISPATCH(LOOM_OP_EMBEDDING, 0,
             be->ops.embedding_backward(be, dwte, dwpe, dout, tokens, B, T, C, V, accumulate_wte,
                                        accumulate_wpe));
}
void loom_k_softmax_cross_entropy(loom_backend *be, float *logits, float *losses, const int32_t *targets,
                                  int64_t N, int64_t V, float grad_scale) {
    DISPATCH(LOOM_OP_LOSS, 0, be->ops.softmax_cross_entropy(be, logits, losses, targets, N, V, grad_scale));
}
loom_status loom_k_matmul_bf16(loom_backend *be, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                               float alpha, const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta,
                               float *C, int64_t ldc) {
    loom_status st = LOOM_OK;
    DISPATCH(LOOM_OP_MATMUL, 2.0 * (double)M * (double)N * (double)K,
             st = be->ops.matmul_bf16(be, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
    return st;
}
void loom_k_f32_to_bf16(loom_backend *be, uint16_t *dst, const float *src, int64_t n) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.f32_to_bf16(be, dst, src, n));
}
void loom_k_round_fp16(loom_backend *be, float *dst, int64_t ld_dst, const float *src, int64_t ld_src, int64_t rows,
                       int64_t cols) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.round_fp16(be, dst, ld_dst, src, ld_src, rows, cols));
}
void loom_k_ce_row_max(loom_backend *be, const float *logits, int64_t N, int64_t V, float *mx) {
    DISPATCH(LOOM_OP_LOSS, 0, be->ops.ce_row_max(be, logits, N, V, mx));
}
void loom_k_ce_row_sums(loom_backend *be, const float *logits, const int32_t *targets, int64_t N, int64_t V,
                        int64_t v0, const float *mx, float *sums) {
    DISPATCH(LOOM_OP_LOSS, 0, be->ops.ce_row_sums(be, logits, targets, N, V, v0, mx, sums));
}
void loom_k_ce_finish(loom_backend *be, float *logits, float *losses, const int32_t *targets, int64_t N, int64_t V,
                      int64_t v0, const float *mx, const float *sums, float grad_scale) {
    DISPATCH(LOOM_OP_LOSS, 0, be->ops.ce_finish(be, logits, losses, targets, N, V, v0, mx, sums, grad_scale));
}
double loom_k_sum_squares(loom_backend *be, const float *x, int64_t n) {
    double r = 0;
    DISPATCH(LOOM_OP_OPTIMIZER, 0, r = be->ops.sum_squares(be, x, n));
    return r;
}
void loom_k_scale(loom_backend *be, float *x, float s, int64_t n) {
    DISPATCH(LOOM_OP_ELEMENTWISE, 0, be->ops.scale(be, x, s, n));
}
void loom_k_adamw(loom_backend *be, float *p, const float *g, float *m, float *v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2, float gs) {
    DISPATCH(LOOM_OP_OPTIMIZER, 0, be->ops.adamw(be, p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, gs));
}
double loom_k_lamb_moments(loom_backend *be, const float *p, const float *g, float *m, float *v, int64_t n,
                           float beta1, float beta2, float eps, float wd, float bc1, float bc2, float gs) {
    double r = 0;
    DISPATCH(LOOM_OP_OPTIMIZER, 0, r = be->ops.lamb_moments(be, p, g, m, v, n, beta1, beta2, eps, wd, bc1, bc2, gs));
    return r;
}
void loom_k_lamb_apply(loom_backend *be, float *p, const float *m, const float *v, int64_t n, float eps, float wd,
                       float bc1, float bc2, float step) {
    DISPATCH(LOOM_OP_OPTIMIZER, 0, be->ops.lamb_apply(be, p, m, v, n, eps, wd, bc1, bc2, step));
}
void loom_k_sgd(loom_backend *be, float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                int nesterov, float weight_decay, float gs, int first_step) {
    DISPATCH(LOOM_OP_OPTIMIZER, 0,
             be->ops.sgd(be, p, g, buf, n, lr, momentum, nesterov, weight_decay, gs, first_step));
}
void loom_k_lars(loom_backend *be, float *p, const float *g, float *buf, int64_t n, float lr_local,
                 float momentum, float weight_decay, float gs) {
    DISPATCH(LOOM_OP_OPTIMIZER, 0, be->ops.lars(be, p, g, buf, n, lr_local, momentum, weight_decay, gs));
}
