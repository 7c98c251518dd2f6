/* loom/backend.h: the compute backend. A backend owns the memory kernels touch (its buffers) and runs the
 * kernels on it. Backends: "cpu"; "cpu-isolated", the CPU kernels over buffers the host code cannot touch
 * (the proof that nothing above this seam reads a buffer directly); "cuda" when built with the toolkit.
 *
 *   loom_backend *be;
 *   loom_backend_config cfg = loom_backend_config_default();
 *   cfg.device = "cpu";
 *   LOOM_CALL(loom_backend_init(&cfg, &be));
 *   float *x, *y;                                                  // backend buffers ("device pointers")
 *   LOOM_CALL(loom_buf_alloc(be, &mem, LOOM_MEM_ACTS, n * 4, (void **)&x));
 *   LOOM_CALL(loom_buf_upload(be, x, host_x, n * 4));              // host -> buffer
 *   LOOM_CALL(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out = y, .inp = x, .n = n}));
 *   LOOM_CALL(loom_buf_download(be, host_y, y, n * 4));            // buffer -> host
 *   loom_backend_free(&be);
 *
 * A buffer address is like a CUDA device pointer: code above the backend does arithmetic with it (views,
 * offsets) and passes it to kernels, copies and collectives, but never reads or writes through it. Where the
 * host can address the backend's memory (loom_backend_host_accessible: the CPU backend) a caller may skip a
 * staging copy, as an optimisation only.
 *
 * Kernels: every one is in LOOM_KERNELS below; loom_k_<name>(be, &args) runs it with its arguments in
 * loom_<name>_args, returns a status, and is profiled (calls, seconds, FLOPs per category) when profiling is
 * on. Adding a kernel: its line in LOOM_KERNELS and its args struct here, its function in each backend
 * (src/backend/<backend>/, named <backend>_<name>), and its case in tests/test_kernels.c. All kernels are
 * deterministic for a fixed thread count: reductions use a fixed partition and order. Shapes: N rows
 * (tokens, B*T), C channels; every pointer says its shape in its comment. */
#ifndef LOOM_BACKEND_H
#define LOOM_BACKEND_H
#include <stddef.h>
#include <stdint.h>

#include "loom/mem.h"
#include "loom/status.h"

typedef struct loom_backend loom_backend;

typedef struct {
    const char *device;       /* "cpu" (default), "cpu-isolated", "cuda" */
    int threads;              /* CPU threads, 0 = all cores */
    const char *blas_coretype; /* "auto" (AVX-512 kernel on AVX-512 CPUs, overriding OPENBLAS_CORETYPE with a
                                  notice), "keep" (respect the environment), or an OpenBLAS core name */
    const char *blas_library; /* path to a libopenblas; NULL = search (OpenMP build first), "builtin" = none */
    int quiet;                /* do not log the kernel choice */
    int gpu;                  /* cuda: the device index */
    int batch_invariant;      /* a row's results do not depend on the other rows of the call: products with
                                 a weight stored [N, K] go through the few-row kernel whatever their row
                                 count (each row against each weight row in one fixed order; the library
                                 GEMMs' bits depend on M) and a cached forward attends every row with the
                                 decode kernel, so a served sequence's tokens do not depend on its batch
                                 (vLLM's batch invariance). Prompts run slower (GPT-2 124M here:
                                 1.3-1.4x at 128 tokens, 2.5-2.8x at 512), decoding as fast. CPU only */
} loom_backend_config;

/* profiling categories */
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
    LOOM_OP_COPY,
    LOOM_OP_COUNT
} loom_op;

typedef struct loom_profile loom_profile; /* below the kernel list: it counts per kernel too */

loom_backend_config loom_backend_config_default(void);
/* The devices this build has, e.g. "cpu cpu-isolated cuda". */
const char *loom_backend_devices(void);
LOOM_NODISCARD loom_status loom_backend_init(const loom_backend_config *cfg, loom_backend **out);
void loom_backend_free(loom_backend **be);
const char *loom_backend_name(const loom_backend *be);
/* e.g. "openblas 0.3.21 SkylakeX (openmp)", "builtin", "cublas" */
const char *loom_backend_gemm_kernel(const loom_backend *be);
const char *loom_backend_bf16_kernel(const loom_backend *be);
int loom_backend_threads(const loom_backend *be);
/* 1 when the host can read and write the backend's buffers directly (the CPU backend) */
int loom_backend_host_accessible(const loom_backend *be);
int loom_backend_batch_invariant(const loom_backend *be); /* loom_backend_config.batch_invariant */
/* Host bytes the backend keeps between calls for its own use, outside every loom_mem category, grow-only: the
 * CPU's bf16 GEMM holds its second operand in oneDNN's blocked layout (at most 32 MiB), or, where oneDNN has no
 * bf16 matmul for this CPU, the reference holds blocks of its fp32 operands (at most 2^24 floats each). Runs
 * report it. */
size_t loom_backend_own_bytes(const loom_backend *be);
void loom_backend_set_profiling(loom_backend *be, int on);
/* 1 when MFU must be taken against this backend's own measured GEMM rate, not the host CPU's (a GPU). */
int loom_backend_has_own_peak(const loom_backend *be);
/* The best rate of n x n x n GEMMs on this backend (fp32, or bf16 operands with bf16 != 0), GFLOP/s over a
 * few timed repetitions after a warm-up; buffers are taken and returned (3 n^2 elements, not accounted). */
LOOM_NODISCARD loom_status loom_backend_measure_gemm_peak(loom_backend *be, int64_t n, int bf16, double *gflops);
loom_profile *loom_backend_profile(loom_backend *be);
const char *loom_op_name(loom_op op);
/* Waits until every operation issued so far has finished (kernels and copies may run asynchronously on a
 * device; on the CPU they are done when they return). */
LOOM_NODISCARD loom_status loom_backend_sync(loom_backend *be);
/* The calling thread lets its idle kernel threads go (the CPU's OpenMP pool: OpenMP gives each thread that
 * starts parallel work a pool of its own); for a thread handing the kernels over to another (loom serve: the
 * model is loaded on the main thread, its engine thread runs every step). While an idle pool stays, the runtime
 * counts more threads than cores and its workers sleep between parallel regions instead of spinning: every
 * region then waits on a wake-up (loom serve, one client: half `loom generate`'s tokens/s). */
void loom_backend_release_threads(loom_backend *be);

/* ---- buffers ----
 * Every allocation is accounted in `mem` by category and goes through its failure injection
 * (loom_mem.fail_after). Buffers start zeroed. */
LOOM_NODISCARD loom_status loom_buf_alloc(loom_backend *be, loom_mem *mem, loom_mem_category cat, size_t bytes,
                                          void **out);
void loom_buf_free(loom_backend *be, loom_mem *mem, loom_mem_category cat, void *p, size_t bytes);
/* Address space for `bytes` whose pages become resident when written and return to the system with
 * loom_buf_discard (ZeRO-3's whole-size mappings: only gathered units are resident). Not accounted: the
 * caller accounts what it makes resident. A backend without such memory allocates it all. */
LOOM_NODISCARD loom_status loom_buf_reserve(loom_backend *be, size_t bytes, void **out);
void loom_buf_unreserve(loom_backend *be, void *p, size_t bytes);
/* The pages wholly inside [p, p + bytes) of a reserved range go back (their contents become zero). */
void loom_buf_discard(loom_backend *be, void *p, size_t bytes);
/* Makes the pages of [p, p + bytes) of a reserved range resident at once, ahead of a write that would take
 * them one fault at a time (another process's copy into them: MPI's single-copy transfers). A hint. */
void loom_buf_populate(loom_backend *be, void *p, size_t bytes);
/* 1 when p is backend memory the host cannot address: a host-side user of it (MPI, a file read) must stage
 * it through host memory with loom_buf_download / loom_buf_upload. 0 for host memory, and on the CPU. */
int loom_buf_device_only(const loom_backend *be, const void *p);
/* copies between host memory and buffers (kernels of category "copy") */
LOOM_NODISCARD loom_status loom_buf_upload(loom_backend *be, void *dst, const void *host_src, size_t bytes);
LOOM_NODISCARD loom_status loom_buf_download(loom_backend *be, void *host_dst, const void *src, size_t bytes);
LOOM_NODISCARD loom_status loom_buf_copy(loom_backend *be, void *dst, const void *src, size_t bytes);
/* x (n floats) = value */
LOOM_NODISCARD loom_status loom_buf_fill(loom_backend *be, float *x, float value, int64_t n);

/* ---- kernel arguments ---- */

/* C(MxN) = alpha * op(A) op(B) + beta * C, row-major; op(A) is MxK, op(B) is KxN. */
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
typedef loom_gemm loom_matmul_args;
/* Two independent GEMMs (no output of one is an input of the other), e.g. a layer's input and weight
 * gradients. On two threads they run side by side, one thread each, which keeps both cores busy with less
 * synchronisation than splitting each product over both. */
typedef struct {
    loom_gemm a, b;
} loom_matmul_pair_args;
/* bf16 GEMM (mixed precision): C (fp32) = alpha op(A) op(B) + beta C, A and B bf16 (the upper 16 bits of an
 * IEEE float), accumulated in fp32. On the CPU: oneDNN's matmul when libdnnl.so.2 loads, else a reference
 * through the fp32 GEMM (loom_backend_bf16_kernel says which). */
typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    float alpha;
    const uint16_t *A;
    int64_t lda;
    const uint16_t *B;
    int64_t ldb;
    float beta;
    float *C;
    int64_t ldc;
} loom_matmul_bf16_args;

/* LayerNorm: out (N,C) = norm(inp (N,C)) * w (C) + b (C) (b may be NULL); mean, rstd (N) saved for backward
 * (NULL: not saved). RMSNorm: out = inp * rsqrt(mean(inp^2) + eps) * w; mean and b unused.
 * Here and in the activations below, out16 non-NULL: the output goes there instead, rounded to bf16 (the
 * bits f32_to_bf16 gives of the fp32 output), and out is not written: bf16 training's products read it so. */
typedef struct {
    float *out, *mean, *rstd;
    const float *inp, *w, *b;
    int64_t N, C;
    float eps;
    uint16_t *out16;
} loom_layernorm_forward_args;
typedef loom_layernorm_forward_args loom_rmsnorm_forward_args;
/* dinp (N,C) += ...; dw, db (C) = (accumulate ? += : =) ... (db NULL: no bias) */
typedef struct {
    float *dinp, *dw, *db;
    const float *dout, *inp, *w, *mean, *rstd;
    int64_t N, C;
    int accumulate;
} loom_layernorm_backward_args;
typedef loom_layernorm_backward_args loom_rmsnorm_backward_args;

/* GELU: `exact` 0 the tanh approximation (GPT-2), 1 the erf form (PyTorch nn.GELU()).
 * bias_gelu: pre (N,F) += bias (F); out (N,F) = gelu(pre) (out may be NULL: bias only). */
typedef struct {
    float *pre, *out;
    const float *bias;
    int64_t N, F;
    int exact;
    uint16_t *out16;
} loom_bias_gelu_forward_args;
/* out (n) = gelu(inp) */
typedef struct {
    float *out;
    const float *inp;
    int64_t n;
    int exact;
    uint16_t *out16;
} loom_gelu_forward_args;
/* dinp (n) = gelu'(inp) * dout; dinp may alias dout. dinp16 non-NULL (bf16 training, the layer's bias and
 * products next): the rows are `cols` wide (n = rows x cols), db (cols; NULL: no bias) (+)= dinp's column sums
 * as bias_backward makes them (the same bits), and dinp is written rounded to bf16 into dinp16 instead (dinp
 * is not written): one pass where three (this, bias_backward, f32_to_bf16) would read and write it. */
typedef struct {
    float *dinp;
    const float *inp, *dout;
    int64_t n;
    int exact;
    uint16_t *dinp16;
    float *db;
    int64_t cols;
    int accumulate;
} loom_gelu_backward_args;
/* forward: out (N,F) = silu(gu[:, :F]) * gu[:, F:], gu (N,2F). backward: dgu (N,2F) from dout (N,F). */
typedef struct {
    float *out;
    const float *gu;
    int64_t N, F;
    uint16_t *out16;
} loom_swiglu_forward_args;
typedef struct {
    float *dgu;
    const float *gu, *dout;
    int64_t N, F;
} loom_swiglu_backward_args;
/* x (N,C) += bias (C) */
typedef struct {
    float *x;
    const float *bias;
    int64_t N, C;
} loom_bias_add_args;
/* db (C) (+)= column sums of dout (N,C). dout16 non-NULL: dout rounded to bf16 (the bits f32_to_bf16 gives) is
 * written there too, in the same pass: bf16 training's products read the gradient so (db NULL: only that). */
typedef struct {
    float *db;
    const float *dout;
    int64_t N, C;
    int accumulate;
    uint16_t *dout16;
} loom_bias_backward_args;
/* out (n) = a + b (out may alias a) */
typedef struct {
    float *out;
    const float *a, *b;
    int64_t n;
} loom_add_args;
/* x (n) *= s */
typedef struct {
    float *x;
    float s;
    int64_t n;
} loom_scale_args;

/* Rotary embedding (rotate_half convention) of the q and k heads of qkv (B*T, (H+2*KV)*hd), in place; cos,
 * sin tables (T, hd/2). inverse rotates by -theta (the backward pass). */
typedef struct {
    float *qkv;
    const float *cos_t, *sin_t;
    int64_t B, T, H, KV, hd;
    int inverse;
} loom_rope_args;

/* Causal attention. qkv (B,T,(H+2KV)*hd); out (B,T,H*hd); lse (B,H,T) log-sum-exp of each row's scores.
 * Query head h reads kv head h / (H/KV). No T x T matrix is stored. bf16_products (here and in the block
 * forms below; bf16 training sets it): the products inside (q.k, p.v and the backward's) may take their
 * operands rounded to bf16, probabilities included, with fp32 accumulation and an fp32 softmax, where the
 * backend multiplies bf16 natively (the CPU: builds with AVX512_BF16); elsewhere they stay fp32. */
typedef struct {
    float *out, *lse;
    const float *qkv;
    int64_t B, T, H, KV, hd;
    int bf16_products;
} loom_attention_forward_args;
/* dqkv (B,T,(H+2KV)*hd) is written (not accumulated). */
typedef struct {
    float *dqkv;
    const float *dout, *qkv, *out, *lse;
    int64_t B, T, H, KV, hd;
    int bf16_products;
} loom_attention_backward_args;
/* Ring attention's pieces: queries of one sequence block against the keys and values of one block.
 * q: (B,Tq) rows of stride qs, head h at column h*hd; kv: (B,Tk) rows of stride kvs, kv head g's key at
 * column g*hd and its value at (KV+g)*hd. causal: both blocks cover the same positions; otherwise the keys
 * are all earlier and all visible. Forward writes this block's out (B,Tq,H*hd) and lse (B,H,Tq); merge
 * folds a second block's (out_b, lse_b) into (out, lse) as the softmax over the union would. Backward,
 * given the final out and lse: dq (same layout as q) += and dkv (same layout as kv) +=. */
typedef struct {
    float *out, *lse;
    const float *q;
    int64_t qs;
    const float *kv;
    int64_t kvs;
    int64_t B, Tq, Tk, H, KV, hd;
    int causal;
    int bf16_products;
} loom_attention_block_forward_args;
typedef struct {
    float *dq, *dkv;
    const float *dout, *q;
    int64_t qs;
    const float *kv;
    int64_t kvs;
    const float *out, *lse;
    int64_t B, Tq, Tk, H, KV, hd;
    int causal;
    int bf16_products;
} loom_attention_block_backward_args;
typedef struct {
    float *out, *lse;
    const float *out_b, *lse_b;
    int64_t B, T, H, hd;
} loom_attention_merge_args;
/* New positions against a key/value cache (generation, serving): out = softmax(q k^T / sqrt(hd)) v for each
 * of `rows` query rows (0 means 1; row r at q + r*qs, its output at out + r*os; qs, os 0 mean H*hd), the
 * last `rows` of n positions, causal: row r sees positions [0, n - rows + r]. Position j's key is row j of
 * stride ld (kv head g at column g*hd) or, paged (blocks != NULL, block table in backend memory), row
 * j % block_len of block blocks[j / block_len], which starts block_stride elements after k; v likewise. A
 * bf16 cache gives k16, v16 instead of k, v (the same layout in bf16 elements). */
typedef struct {
    float *out;
    const float *q, *k, *v;
    int64_t ld, n, H, KV, hd;
    int64_t rows, qs, os;
    const int32_t *blocks;
    int64_t block_len, block_stride;
    const uint16_t *k16, *v16;
} loom_attention_decode_args;
/* Several such calls at once (a serving step: every sequence's new rows against its own cache): each call's
 * outputs are the bits it gives alone. The array is host memory; what its calls point to, the backend's. A
 * backend may run them together (the CPU: one parallel region over all their heads, where a sequence's few
 * heads alone would not pay for waking the threads). */
typedef struct {
    const loom_attention_decode_args *calls;
    int64_t n;
} loom_attention_decode_batch_args;
static inline double loom_attention_decode_flops(const loom_attention_decode_args *a) {
    return 4.0 * (double)(a->rows > 1 ? a->rows : 1) * (double)a->H * (double)a->n * (double)a->hd;
}
static inline double loom_attention_decode_batch_flops(const loom_attention_decode_batch_args *a) {
    double f = 0.0;
    for (int64_t i = 0; i < a->n; i++) f += loom_attention_decode_flops(&a->calls[i]);
    return f;
}

/* out (B,T,C) = wte[tokens] (+ wpe[t] when wpe != NULL); tokens (B,T) a buffer of int32. A negative token's
 * row is zero (vocabulary-parallel: that row lives on another rank); in backward it adds nothing. */
typedef struct {
    float *out;
    const int32_t *tokens;
    const float *wte, *wpe;
    int64_t B, T, C;
    const uint16_t *wte16; /* when set, the table in bf16, read instead of wte (a model holding its frozen weights in
                              bf16: LoRA's base_bf16) */
} loom_embedding_forward_args;
/* dwte (V,C) (+)= scatter of dout rows; dwpe (maxT,C) (+)= sums over batch (NULL: none). accumulate 0
 * zeroes first. */
typedef struct {
    float *dwte, *dwpe;
    const float *dout;
    const int32_t *tokens;
    int64_t B, T, C, V;
    int accumulate_wte, accumulate_wpe;
} loom_embedding_backward_args;

/* Fused softmax + cross-entropy. logits (N,V) in; losses (N) out; when grad_scale != 0 the logits are
 * overwritten by grad_scale * (softmax - onehot(target)). targets (N) int32; < 0 are ignored. grad16
 * (N,V) or NULL: the gradient goes there instead, rounded to bf16 (the bits f32_to_bf16 gives of the fp32
 * gradient), and the logits are left undefined (a backend may keep intermediates there): bf16 training's
 * head products read it without a conversion. */
typedef struct {
    float *logits, *losses;
    const int32_t *targets;
    int64_t N, V;
    float grad_scale;
    uint16_t *grad16;
} loom_softmax_cross_entropy_args;
/* Vocabulary-parallel cross-entropy, in three passes with the caller's reductions over the ranks between
 * them: logits (N,V) hold this rank's columns [v0, v0+V) of the full vocabulary.
 *   row_max: mx (N) = each row's local maximum                     -> caller: all-reduce max
 *   row_sums: sums (2N) = [sum_v exp(x - mx) (N), the target's logit where this rank holds it, else 0 (N)];
 *             with keep_exps the logits become those exponentials (a gradient follows: finish scales them
 *             instead of computing each again)                      -> caller: all-reduce sum
 *   finish: losses (N) = log(sum) + mx - target logit; with grad_scale != 0 the logits become
 *           grad_scale * (softmax - onehot(target)) over this rank's columns, or with grad16 (N,V) that
 *           gradient goes there in bf16 (as loom_softmax_cross_entropy_args' grad16: the logits are left
 *           undefined, except that with keep_exps they stay). keep_exps: the logits hold row_sums'
 *           exponentials (set it on both passes or on neither).
 *           Targets < 0 are ignored. */
typedef struct {
    float *logits, *losses;
    const int32_t *targets;
    int64_t N, V, v0;
    float *mx, *sums;
    float grad_scale;
    uint16_t *grad16;
    int keep_exps;
} loom_ce_args;
typedef loom_ce_args loom_ce_row_max_args;
typedef loom_ce_args loom_ce_row_sums_args;
typedef loom_ce_args loom_ce_finish_args;

/* dst (n) = src rounded to bf16 (nearest, ties to even; NaN stays NaN). */
typedef struct {
    uint16_t *dst;
    const float *src;
    int64_t n;
} loom_f32_to_bf16_args;
/* dst (rows x cols, leading dimension ld_dst) = src (leading dimension ld_src) rounded to IEEE fp16 and back
 * (nearest, ties to even; beyond 65504 inf, below 2^-24 zero, as fp16 storage does): fp16 numerics on fp32
 * units. dst may be src. */
typedef struct {
    float *dst;
    int64_t ld_dst;
    const float *src;
    int64_t ld_src, rows, cols;
} loom_round_fp16_args;
/* The same, rounded to bf16 and back (the bits f32_to_bf16 gives, widened): the values a bf16 store holds,
 * in fp32 (a bf16 key/value cache's prompt rows attend over what the cache will give back). dst may be src. */
typedef loom_round_fp16_args loom_round_bf16_args;

/* *result = sum of squares of x (n), in double, summed in fixed-size blocks in a fixed order: the same bits
 * for any thread count. result is host memory. */
typedef struct {
    const float *x;
    int64_t n;
    double *result;
} loom_sum_squares_args;

/* Optimizer updates over one contiguous range; every scalar is already scheduled (lr, corrections). p, g
 * and the state are buffers; grad_scale multiplies g (clipping, loss-scale removal). p16 (n) or NULL, in every
 * update that writes p (AdamW, LAMB's apply, SGD, LARS): the updated weights' bf16 copy, written in the same
 * pass (the bits f32_to_bf16 gives of p). */
typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n;
    float lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale;
    uint16_t *p16;
} loom_adamw_args;
/* LAMB, two passes so that no update buffer the size of a parameter is needed: moments updates m and v and
 * sets *result to the squared norm of the Adam direction r = mhat/(sqrt(vhat)+eps) + wd*p; apply recomputes r
 * and sets p -= step * r (step = lr * trust ratio). */
typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n;
    float beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale, step;
    double *result;
    uint16_t *p16; /* apply */
} loom_lamb_args;
typedef loom_lamb_args loom_lamb_moments_args;
typedef loom_lamb_args loom_lamb_apply_args;
/* SGD with momentum (buf), optional Nesterov; dampening 0; weight decay added to the gradient.
 * LARS: buf = momentum*buf + lr*(g + wd*p); p -= buf (lr: the layer-wise rate). */
typedef struct {
    float *p;
    const float *g;
    float *buf;
    int64_t n;
    float lr, momentum, weight_decay, grad_scale;
    int nesterov, first_step;
    uint16_t *p16;
} loom_sgd_args;
typedef loom_sgd_args loom_lars_args;

/* Copies. copy: bytes between host memory and buffers (kind) or buffer to buffer. copy_rows: rows x cols
 * floats between buffers, strided, added to dst when accumulate. fill: x (n) = value. */
typedef enum { LOOM_COPY_H2D = 0, LOOM_COPY_D2H, LOOM_COPY_D2D } loom_copy_kind;
typedef struct {
    void *dst;
    const void *src;
    int64_t bytes;
    loom_copy_kind kind;
} loom_copy_args;
typedef struct {
    float *dst;
    int64_t ld_dst;
    const float *src;
    int64_t ld_src, rows, cols;
    int accumulate;
} loom_copy_rows_args;
typedef struct {
    float *x;
    float value;
    int64_t n;
} loom_fill_args;

/* ---- the one list of kernels: X(name, profiling category, model FLOPs of a call given `a`) ---- */
#define LOOM_KERNELS(X)                                                                                         \
    X(matmul, LOOM_OP_MATMUL, 2.0 * (double)a->M * (double)a->N * (double)a->K)                                  \
    X(matmul_pair, LOOM_OP_MATMUL,                                                                              \
      2.0 * ((double)a->a.M * (double)a->a.N * (double)a->a.K + (double)a->b.M * (double)a->b.N * (double)a->b.K)) \
    X(matmul_bf16, LOOM_OP_MATMUL, 2.0 * (double)a->M * (double)a->N * (double)a->K)                             \
    X(layernorm_forward, LOOM_OP_NORM, 0)                                                                       \
    X(layernorm_backward, LOOM_OP_NORM, 0)                                                                      \
    X(rmsnorm_forward, LOOM_OP_NORM, 0)                                                                         \
    X(rmsnorm_backward, LOOM_OP_NORM, 0)                                                                        \
    X(bias_gelu_forward, LOOM_OP_ACTIVATION, 0)                                                                 \
    X(gelu_forward, LOOM_OP_ACTIVATION, 0)                                                                      \
    X(gelu_backward, LOOM_OP_ACTIVATION, 0)                                                                     \
    X(swiglu_forward, LOOM_OP_ACTIVATION, 0)                                                                    \
    X(swiglu_backward, LOOM_OP_ACTIVATION, 0)                                                                   \
    X(bias_add, LOOM_OP_ELEMENTWISE, 0)                                                                         \
    X(bias_backward, LOOM_OP_ELEMENTWISE, 0)                                                                    \
    X(add, LOOM_OP_ELEMENTWISE, 0)                                                                              \
    X(scale, LOOM_OP_ELEMENTWISE, 0)                                                                            \
    X(rope, LOOM_OP_ROPE, 0)                                                                                    \
    X(attention_forward, LOOM_OP_ATTENTION,                                                                     \
      2.0 * (double)a->B * (double)a->H * (double)a->T * (double)(a->T + 1) * (double)a->hd)                    \
    X(attention_backward, LOOM_OP_ATTENTION,                                                                    \
      5.0 * (double)a->B * (double)a->H * (double)a->T * (double)(a->T + 1) * (double)a->hd)                    \
    X(attention_block_forward, LOOM_OP_ATTENTION,                                                               \
      (a->causal ? 2.0 : 4.0) * (double)a->B * (double)a->H * (double)a->Tq * (double)a->Tk * (double)a->hd)     \
    X(attention_block_backward, LOOM_OP_ATTENTION,                                                              \
      (a->causal ? 5.0 : 10.0) * (double)a->B * (double)a->H * (double)a->Tq * (double)a->Tk * (double)a->hd)    \
    X(attention_merge, LOOM_OP_ATTENTION, 0)                                                                    \
    X(attention_decode, LOOM_OP_ATTENTION, loom_attention_decode_flops(a))                                      \
    X(attention_decode_batch, LOOM_OP_ATTENTION, loom_attention_decode_batch_flops(a))                          \
    X(embedding_forward, LOOM_OP_EMBEDDING, 0)                                                                  \
    X(embedding_backward, LOOM_OP_EMBEDDING, 0)                                                                 \
    X(softmax_cross_entropy, LOOM_OP_LOSS, 0)                                                                   \
    X(ce_row_max, LOOM_OP_LOSS, 0)                                                                              \
    X(ce_row_sums, LOOM_OP_LOSS, 0)                                                                             \
    X(ce_finish, LOOM_OP_LOSS, 0)                                                                               \
    X(f32_to_bf16, LOOM_OP_ELEMENTWISE, 0)                                                                      \
    X(round_fp16, LOOM_OP_ELEMENTWISE, 0)                                                                       \
    X(round_bf16, LOOM_OP_ELEMENTWISE, 0)                                                                       \
    X(sum_squares, LOOM_OP_OPTIMIZER, 0)                                                                        \
    X(adamw, LOOM_OP_OPTIMIZER, 0)                                                                              \
    X(lamb_moments, LOOM_OP_OPTIMIZER, 0)                                                                       \
    X(lamb_apply, LOOM_OP_OPTIMIZER, 0)                                                                         \
    X(sgd, LOOM_OP_OPTIMIZER, 0)                                                                                \
    X(lars, LOOM_OP_OPTIMIZER, 0)                                                                               \
    X(copy, LOOM_OP_COPY, 0)                                                                                    \
    X(copy_rows, LOOM_OP_COPY, 0)                                                                               \
    X(fill, LOOM_OP_COPY, 0)

/* loom_status loom_k_<name>(loom_backend *be, const loom_<name>_args *a) for every kernel */
#define LOOM_KERNEL_DECLARE(name, category, flops) \
    LOOM_NODISCARD loom_status loom_k_##name(loom_backend *be, const loom_##name##_args *a);
LOOM_KERNELS(LOOM_KERNEL_DECLARE)
#undef LOOM_KERNEL_DECLARE

/* Kernel identifiers (tests iterate over them). */
typedef enum {
#define LOOM_KERNEL_ID(name, category, flops) LOOM_KERNEL_##name,
    LOOM_KERNELS(LOOM_KERNEL_ID)
#undef LOOM_KERNEL_ID
        LOOM_KERNEL_COUNT
} loom_kernel;
const char *loom_kernel_name(loom_kernel k);

/* what profiling counted: per category, and per kernel (which kernels a category's time went to) */
struct loom_profile {
    int64_t calls[LOOM_OP_COUNT];
    double seconds[LOOM_OP_COUNT];
    double flops[LOOM_OP_COUNT];
    int64_t kernel_calls[LOOM_KERNEL_COUNT];
    double kernel_seconds[LOOM_KERNEL_COUNT];
};
#endif
