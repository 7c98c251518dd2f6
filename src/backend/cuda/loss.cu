/* Softmax + cross-entropy on the GPU, fused as on the CPU: one block per row, a pass for the maximum, one for
 * the sum of exponentials, and (training) one that overwrites the logits with their gradient. The
 * vocabulary-parallel passes (ce_row_max, ce_row_sums, ce_finish) are the same pieces with the caller's
 * all-reduces between them. Block reductions are fixed trees: deterministic.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

enum { CE_THREADS = 512 };

static unsigned rows_grid(int64_t N) { return (unsigned)N; }

__global__ void softmax_ce_kernel(float *logits, float *losses, const int32_t *targets, int64_t V, float grad_scale,
                                  uint16_t *grad16) {
    __shared__ float sh[32];
    const int64_t n = blockIdx.x;
    float *x = logits + n * V;
    const int32_t tgt = targets[n];
    /* the target's logit, read before the gradient pass below overwrites the row (block_* synchronise) */
    const float xt = tgt >= 0 ? x[tgt] : 0.0f;
    float mx = -INFINITY;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
    mx = block_max(mx, sh);
    float s = 0.0f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf(x[v] - mx);
    s = block_sum(s, sh);
    if (tgt < 0) {
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (grad_scale != 0.0f)
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
                if (grad16) grad16[n * V + v] = 0;
                else x[v] = 0.0f;
            }
        return;
    }
    if (threadIdx.x == 0) losses[n] = (mx + logf(s)) - xt;
    if (grad_scale == 0.0f) return;
    const float inv = grad_scale / s;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float p = expf(x[v] - mx) * inv;
        if (v == tgt) p -= grad_scale;
        if (grad16) grad16[n * V + v] = bf16_round(p); /* the logits stay (the CPU kernel writes its exponentials there) */
        else x[v] = p;
    }
}

extern "C" loom_status loom_cuda_softmax_cross_entropy(loom_backend *be, const loom_softmax_cross_entropy_args *a) {
    if (a->N <= 0) return LOOM_OK;
    LOOM_CHECK(a->N <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda cross-entropy: %lld rows exceed the grid", (long long)a->N);
    softmax_ce_kernel<<<rows_grid(a->N), CE_THREADS, 0, loom_cuda_of(be)->stream>>>(a->logits, a->losses, a->targets,
                                                                                    a->V, a->grad_scale, a->grad16);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void ce_row_max_kernel(const float *logits, int64_t V, float *mxo) {
    __shared__ float sh[32];
    const int64_t n = blockIdx.x;
    const float *x = logits + n * V;
    float mx = -INFINITY;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
    mx = block_max(mx, sh);
    if (threadIdx.x == 0) mxo[n] = mx;
}

extern "C" loom_status loom_cuda_ce_row_max(loom_backend *be, const loom_ce_row_max_args *a) {
    if (a->N <= 0) return LOOM_OK;
    LOOM_CHECK(a->N <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda cross-entropy: %lld rows exceed the grid", (long long)a->N);
    ce_row_max_kernel<<<rows_grid(a->N), CE_THREADS, 0, loom_cuda_of(be)->stream>>>(a->logits, a->V, a->mx);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* sums[n] = sum exp(x - mx[n]); sums[N + n] = the target's logit when this rank holds column target - v0; with
 * keep_exps the logits become those exponentials, which ce_finish scales */
__global__ void ce_row_sums_kernel(float *logits, const int32_t *targets, int64_t N, int64_t V, int64_t v0,
                                   const float *mx, float *sums, int keep_exps) {
    __shared__ float sh[32];
    const int64_t n = blockIdx.x;
    float *x = logits + n * V;
    const float m = mx[n];
    const int64_t t = (int64_t)targets[n] - v0;
    const float xt = (targets[n] >= 0 && t >= 0 && t < V) ? x[t] : 0.0f;
    __syncthreads(); /* the target's logit is read before keep_exps overwrites it */
    float s = 0.0f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float e = expf(x[v] - m);
        if (keep_exps) x[v] = e;
        s += e;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        sums[n] = s;
        sums[N + n] = xt;
    }
}

extern "C" loom_status loom_cuda_ce_row_sums(loom_backend *be, const loom_ce_row_sums_args *a) {
    if (a->N <= 0) return LOOM_OK;
    LOOM_CHECK(a->N <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda cross-entropy: %lld rows exceed the grid", (long long)a->N);
    ce_row_sums_kernel<<<rows_grid(a->N), CE_THREADS, 0, loom_cuda_of(be)->stream>>>(a->logits, a->targets, a->N, a->V,
                                                                                     a->v0, a->mx, a->sums,
                                                                                     a->keep_exps);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void ce_finish_kernel(float *logits, float *losses, const int32_t *targets, int64_t N, int64_t V, int64_t v0,
                                 const float *mx, const float *sums, float grad_scale, uint16_t *grad16,
                                 int have_exps) {
    const int64_t n = blockIdx.x;
    float *x = logits + n * V;
    if (targets[n] < 0) {
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (grad_scale != 0.0f)
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
                if (grad16) grad16[n * V + v] = 0;
                else x[v] = 0.0f;
            }
        return;
    }
    const float m = mx[n], s = sums[n];
    if (threadIdx.x == 0) losses[n] = m + logf(s) - sums[N + n];
    if (grad_scale == 0.0f) return;
    const float inv = grad_scale / s;
    const int64_t t = (int64_t)targets[n] - v0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float p = (have_exps ? x[v] : expf(x[v] - m)) * inv;
        if (v == t) p -= grad_scale;
        if (grad16) grad16[n * V + v] = bf16_round(p); /* the logits stay */
        else x[v] = p;
    }
}

extern "C" loom_status loom_cuda_ce_finish(loom_backend *be, const loom_ce_finish_args *a) {
    if (a->N <= 0) return LOOM_OK;
    LOOM_CHECK(a->N <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda cross-entropy: %lld rows exceed the grid", (long long)a->N);
    ce_finish_kernel<<<rows_grid(a->N), CE_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->logits, a->losses, a->targets, a->N, a->V, a->v0, a->mx, a->sums, a->grad_scale, a->grad16, a->keep_exps);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
