/* loom/backend.h: the compute backend. Each backend (CPU now, CUDA later) fills a table of kernels;
 * model code calls the loom_k_* wrappers below, which dispatch through the table and, when profiling is
 * on, count calls, time and FLOPs per op (`loom train --profile`).
 *
 *   loom_backend *be;
 *   loom_backend_config cfg = loom_backend_config_default();
 *   cfg.threads = 2;
 *   LOOM_CALL(loom_backend_init(&cfg, &be));
 *   loom_k_matmul(be, 0, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);   // y = x w^T
 *   loom_backend_free(&be);
 *
 * All kernels are deterministic for a fixed thread count: reductions use a fixed partition and order.
 * Shapes: N rows (tokens, B*T), C channels; every pointer argument says its shape in the comment. */
#ifndef LOOM_BACKEND_H
#define LOOM_BACKEND_H
#include <stdint.h>

#include "loom/status.h"

typedef struct loom_backend loom_backend;

typedef struct {
    int threads;              /* 0 = all cores */
    const char *blas_coretype; /* "auto" (AVX-512 kernel on AVX-512 CPUs, overriding OPENBLAS_CORETYPE with a
                                  notice), "keep" (respect the environment), or an OpenBLAS core name */
    const char *blas_library; /* path to a libopenblas; NULL = search (OpenMP build first), "builtin" = none */
    int quiet;                /* do not log the kernel choice */
} loom_backend_config;

typedef enum {
    LOOM_OP_MATMUL = 0,
    LOOM_OP_NORM,
    LOOM_OP_ACTIVATION,
    LOOM_OP_ATTENTION,
    LOOM_OP_ROPE,
    LOOM_OP_EMBEDDING,
    LOOM_OP_LOSS,
    LOOM_OP_ELEMENTWISE,
    LOOM_OP_OPTIMIZER,
    LOOM_OP_COUNT
} loom_op;

typedef struct {
    int64_t calls[LOOM_OP_COUNT];
    double seconds[LOOM_OP_COUNT];
    double flops[LOOM_OP_COUNT];
} loom_profile;

loom_backend_config loom_backend_config_default(void);
LOOM_NODISCARD loom_status loom_backend_init(const loom_backend_config *cfg, loom_backend **out);
void loom_backend_free(loom_backend **be);
const char *loom_backend_name(const loom_backend *be);
/* e.g. "openblas 0.3.21 SkylakeX (openmp)" or "builtin" */
const char *loom_backend_gemm_kernel(const loom_backend *be);
int loom_backend_threads(const loom_backend *be);
void loom_backend_set_profiling(loom_backend *be, int on);
loom_profile *loom_backend_profile(loom_backend *be);
const char *loom_op_name(loom_op op);

/* C(MxN) = alpha * op(A) op(B) + beta * C, row-major; op(A) is MxK, op(B) is KxN. */
void loom_k_matmul(loom_backend *be, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* One GEMM's arguments, for loom_k_matmul_pair. */
typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    float alpha;
    const float *A;
    int64_t lda;
    const float *B;
    int64_t ldb;
    float beta;
    float *C;
    int64_t ldc;
} loom_gemm;

/* Two independent GEMMs (no output of one is an input of the other), e.g. a layer's input and weight
 * gradients. On two threads they run side by side, one thread each, which keeps both cores busy with less
 * synchronisation than splitting each product over both. */
void loom_k_matmul_pair(loom_backend *be, const loom_gemm *a, const loom_gemm *b);

/* out (N,C) = LayerNorm(inp (N,C)) * w (C) + b (C); mean, rstd (N) saved for backward. */
void loom_k_layernorm_forward(loom_backend *be, float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int64_t N, int64_t C, float eps);
/* dinp (N,C) += ...; dw, db (C) = (accumulate ? += : =) ... */
void loom_k_layernorm_backward(loom_backend *be, float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean, const float *rstd,
                               int64_t N, int64_t C, int accumulate);
/* out (N,C) = inp * rsqrt(mean(inp^2) + eps) * w; rstd (N) saved. */
void loom_k_rmsnorm_forward(loom_backend *be, float *out, float *rstd, const float *inp, const float *w,
                            int64_t N, int64_t C, float eps);
void loom_k_rmsnorm_backward(loom_backend *be, float *dinp, float *dw, const float *dout, const float *inp,
                             const float *w, const float *rstd, int64_t N, int64_t C, int accumulate);

/* GELU: `exact` 0 the tanh approximation (GPT-2), 1 the erf form (PyTorch nn.GELU()).
 * pre (N,F) += bias (F); out (N,F) = gelu(pre) (out may be NULL: bias only). */
void loom_k_bias_gelu_forward(loom_backend *be, float *pre, float *out, const float *bias, int64_t N,
                              int64_t F, int exact);
/* out (n) = gelu(pre) */
void loom_k_gelu_forward(loom_backend *be, float *out, const float *pre, int64_t n, int exact);
/* dpre (n) = gelu'(pre) * dout; dpre may alias dout. */
void loom_k_gelu_backward(loom_backend *be, float *dpre, const float *pre, const float *dout, int64_t n, int exact);
/* out (N,F) = silu(gu[:, :F]) * gu[:, F:], gu is (N,2F). */
void loom_k_swiglu_forward(loom_backend *be, float *out, const float *gu, int64_t N, int64_t F);
/* dgu (N,2F) from dout (N,F). */
void loom_k_swiglu_backward(loom_backend *be, float *dgu, const float *gu, const float *dout, int64_t N,
                            int64_t F);
/* x (N,C) += bias (C) */
void loom_k_bias_add(loom_backend *be, float *x, const float *bias, int64_t N, int64_t C);
/* db (C) (+)= column sums of dout (N,C) */
void loom_k_bias_backward(loom_backend *be, float *db, const float *dout, int64_t N, int64_t C,
                          int accumulate);
/* out (n) = a + b (out may alias a) */
void loom_k_add(loom_backend *be, float *out, const float *a, const float *b, int64_t n);

/* Rotary embedding (rotate_half convention) of the q and k heads of qkv (B*T, (H+2*KV)*hd), in place;
 * cos, sin tables (T, hd/2). inverse rotates by -theta (the backward pass). */
void loom_k_rope(loom_backend *be, float *qkv, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                 int64_t H, int64_t KV, int64_t hd, int inverse);

/* Causal attention. qkv (B,T,(H+2KV)*hd); out (B,T,H*hd); lse (B,H,T) log-sum-exp of each row's scores.
 * Query head h reads kv head h / (H/KV). No T x T matrix is stored. */
void loom_k_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                              int64_t H, int64_t KV, int64_t hd);
/* dqkv (B,T,(H+2KV)*hd) is written (not accumulated). */
void loom_k_attention_backward(loom_backend *be, float *dqkv, const float *dout, const float *qkv,
                               const float *out, const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV,
                               int64_t hd);

/* Ring attention's pieces: queries of one sequence block against the keys and values of one block.
 * q: (B,Tq) rows of stride qs, head h at column h*hd; kv: (B,Tk) rows of stride kvs, kv head g's key at
 * column g*hd and its value at (KV+g)*hd. causal: both blocks cover the same positions; otherwise the
 * keys are all earlier and all visible. Forward writes this block's out (B,Tq,H*hd) and lse (B,H,Tq);
 * merge folds a second block's (out_b, lse_b) into (out, lse) as the softmax over the union would.
 * Backward, given the final out and lse: dq (same layout as q) += and dkv (same layout as kv) +=. */
void loom_k_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                    const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                    int64_t KV, int64_t hd, int causal);
void loom_k_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                     int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                     int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd, int causal);
void loom_k_attention_merge(loom_backend *be, float *out, float *lse, const float *out_b, const float *lse_b,
                            int64_t B, int64_t T, int64_t H, int64_t hd);

/* out (B,T,C) = wte[tokens] (+ wpe[t] when wpe != NULL). A negative token's row is zero (vocabulary-
 * parallel: that row lives on another rank); in backward it adds nothing to dwte. */
void loom_k_embedding_forward(loom_backend *be, float *out, const int32_t *tokens, const float *wte,
                              const float *wpe, int64_t B, int64_t T, int64_t C);
/* dwte (V,C) (+)= scatter of dout rows; dwpe (maxT,C) (+)= sums over batch. accumulate=0 zeroes first. */
void loom_k_embedding_backward(loom_backend *be, float *dwte, float *dwpe, const float *dout,
                               const int32_t *tokens, int64_t B, int64_t T, int64_t C, int64_t V,
                               int accumulate_wte, int accumulate_wpe);

/* Fused softmax + cross-entropy. logits (N,V) in; losses (N) out; when grad_scale != 0 the logits are
 * overwritten by grad_scale * (softmax - onehot(target)). Targets < 0 are ignored (loss 0, grad 0). */
void loom_k_softmax_cross_entropy(loom_backend *be, float *logits, float *losses, const int32_t *targets,
                                  int64_t N, int64_t V, float grad_scale);

/* sum of squares of x (n), in double, summed in fixed-size blocks in a fixed order: the same bits for
 * any thread count. */
/* bf16 GEMM (mixed precision): C (fp32, row-major) = alpha op(A) op(B) + beta C, with A and B bf16 (the
 * upper 16 bits of an IEEE float), accumulated in fp32. oneDNN's matmul when libdnnl.so.2 loads (its
 * AVX512_BF16 kernels where the CPU has them), else a reference through the fp32 GEMM;
 * loom_backend_bf16_kernel says which. */
LOOM_NODISCARD loom_status loom_k_matmul_bf16(loom_backend *be, int trans_a, int trans_b, int64_t M, int64_t N,
                                              int64_t K, float alpha, const uint16_t *A, int64_t lda,
                                              const uint16_t *B, int64_t ldb, float beta, float *C, int64_t ldc);
/* dst (n) = src rounded to bf16 (nearest, ties to even; NaN stays NaN). */
void loom_k_f32_to_bf16(loom_backend *be, uint16_t *dst, const float *src, int64_t n);
const char *loom_backend_bf16_kernel(const loom_backend *be);
/* dst (rows x cols, leading dimension ld_dst) = src (leading dimension ld_src) rounded to IEEE fp16 and back
 * (nearest, ties to even; beyond 65504 it becomes inf, below 2^-24 zero, as fp16 storage does): fp16
 * numerics on fp32 units. dst may be src. */
void loom_k_round_fp16(loom_backend *be, float *dst, int64_t ld_dst, const float *src, int64_t ld_src, int64_t rows,
                       int64_t cols);

/* Vocabulary-parallel cross-entropy, in three passes with the caller's reductions over the ranks between
 * them: logits (N,V) hold this rank's columns [v0, v0+V) of the full vocabulary.
 *   row_max: mx (N) = each row's local maximum                       -> caller: all-reduce max
 *   row_sums: sums (2N) = [sum_v exp(x - mx) (N), the target's logit where this rank holds it, else 0 (N)]
 *                                                                      -> caller: all-reduce sum
 *   finish: losses (N) = log(sum) + mx - target logit; with grad_scale != 0 the logits become
 *           grad_scale * (softmax - onehot(target)) over this rank's columns. Targets < 0 are ignored. */
void loom_k_ce_row_max(loom_backend *be, const float *logits, int64_t N, int64_t V, float *mx);
void loom_k_ce_row_sums(loom_backend *be, const float *logits, const int32_t *targets, int64_t N, int64_t V,
                        int64_t v0, const float *mx, float *sums);
void loom_k_ce_finish(loom_backend *be, float *logits, float *losses, const int32_t *targets, int64_t N, int64_t V,
                      int64_t v0, const float *mx, const float *sums, float grad_scale);

double loom_k_sum_squares(loom_backend *be, const float *x, int64_t n);
/* x (n) *= s */
void loom_k_scale(loom_backend *be, float *x, float s, int64_t n);

/* Optimizer updates over one contiguous range; every argument is already scheduled (lr, corrections). */
void loom_k_adamw(loom_backend *be, float *p, const float *g, float *m, float *v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float bias_correction1,
                  float bias_correction2, float grad_scale);
/* LAMB, two passes so that no update buffer the size of a parameter is needed: the first updates m and v
 * and returns the squared norm of the Adam direction r = mhat/(sqrt(vhat)+eps) + wd*p; the second
 * recomputes r and applies p -= step * r (step = lr * trust ratio). */
double loom_k_lamb_moments(loom_backend *be, const float *p, const float *g, float *m, float *v, int64_t n,
                           float beta1, float beta2, float eps, float weight_decay, float bias_correction1,
                           float bias_correction2, float grad_scale);
void loom_k_lamb_apply(loom_backend *be, float *p, const float *m, const float *v, int64_t n, float eps,
                       float weight_decay, float bias_correction1, float bias_correction2, float step);
/* SGD with momentum (buf), optional Nesterov; dampening 0; weight decay added to the gradient. */
void loom_k_sgd(loom_backend *be, float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                int nesterov, float weight_decay, float grad_scale, int first_step);
/* LARS: buf = momentum*buf + lr*local_lr*(g + wd*p); p -= buf. */
void loom_k_lars(loom_backend *be, float *p, const float *g, float *buf, int64_t n, float lr_local,
                 float momentum, float weight_decay, float grad_scale);
#endif
