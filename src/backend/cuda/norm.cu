/* LayerNorm and RMSNorm, forward and backward, on the GPU. One warp per row: the row's statistics are warp
 * butterflies (deterministic), and a row of a few thousand channels is a few dozen loads per lane. The weight
 * and bias gradients are column sums over the rows in fixed chunks (cuda_kernels.cuh), never atomics, so a
 * run repeats to the bit. dinp accumulates (+=), as on the CPU: it is the residual stream's gradient.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

enum { ROWS_PER_BLOCK = LOOM_CUDA_THREADS / 32 };

static unsigned row_blocks(int64_t N) { return (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

__global__ void layernorm_forward_kernel(float *out, uint16_t *out16, float *mean, float *rstd, const float *inp,
                                         const float *w, const float *b, int64_t N, int64_t C, float eps) {
    const int64_t n = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C;
    float s = 0.0f;
    for (int64_t c = lane; c < C; c += 32) s += x[c];
    const float m = warp_sum(s) / (float)C;
    float v = 0.0f; /* two passes, as the CPU: the variance of (x - mean), not E[x^2] - mean^2 */
    for (int64_t c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
    const float r = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
    for (int64_t c = lane; c < C; c += 32) store_out(out, out16, n * C + c, (x[c] - m) * r * w[c] + (b ? b[c] : 0.0f));
    if (lane == 0) {
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
    }
}

extern "C" loom_status loom_cuda_layernorm_forward(loom_backend *be, const loom_layernorm_forward_args *a) {
    if (a->N <= 0) return LOOM_OK;
    layernorm_forward_kernel<<<row_blocks(a->N), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->out16, a->mean, a->rstd, a->inp, a->w, a->b, a->N, a->C, a->eps);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void layernorm_dinp_kernel(float *dinp, const float *dout, const float *inp, const float *w,
                                      const float *mean, const float *rstd, int64_t N, int64_t C) {
    const int64_t n = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C, *dy = dout + n * C;
    float *dx = dinp + n * C;
    const float m = mean[n], r = rstd[n];
    float a = 0.0f, bs = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
        const float dn = dy[c] * w[c];
        a += dn;
        bs += dn * (x[c] - m) * r;
    }
    a = warp_sum(a) / (float)C;
    bs = warp_sum(bs) / (float)C;
    for (int64_t c = lane; c < C; c += 32) {
        const float dn = dy[c] * w[c], nrm = (x[c] - m) * r;
        dx[c] += (dn - a - nrm * bs) * r;
    }
}

/* the weight gradient's summand dy * (x - mean) * rstd, and the bias's dy */
struct ln_dw {
    const float *dy, *x, *mean, *rstd;
    int64_t C;
    __device__ float operator()(int64_t n, int64_t c) const { return dy[n * C + c] * (x[n * C + c] - mean[n]) * rstd[n]; }
};
struct ln_db {
    const float *dy;
    int64_t C;
    __device__ float operator()(int64_t n, int64_t c) const { return dy[n * C + c]; }
};

extern "C" loom_status loom_cuda_layernorm_backward(loom_backend *be, const loom_layernorm_backward_args *a) {
    if (a->N > 0) {
        layernorm_dinp_kernel<<<row_blocks(a->N), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
            a->dinp, a->dout, a->inp, a->w, a->mean, a->rstd, a->N, a->C);
        LOOM_CUDA_LAUNCHED();
    }
    LOOM_CALL(colsum(be, ln_dw{a->dout, a->inp, a->mean, a->rstd, a->C}, a->dw, a->N, a->C, a->accumulate));
    if (a->db) LOOM_CALL(colsum(be, ln_db{a->dout, a->C}, a->db, a->N, a->C, a->accumulate));
    return LOOM_OK;
}

__global__ void rmsnorm_forward_kernel(float *out, uint16_t *out16, float *rstd, const float *inp, const float *w,
                                       int64_t N, int64_t C, float eps) {
    const int64_t n = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C;
    float ss = 0.0f;
    for (int64_t c = lane; c < C; c += 32) ss += x[c] * x[c];
    const float r = 1.0f / sqrtf(warp_sum(ss) / (float)C + eps);
    for (int64_t c = lane; c < C; c += 32) store_out(out, out16, n * C + c, x[c] * r * w[c]);
    if (lane == 0 && rstd) rstd[n] = r;
}

extern "C" loom_status loom_cuda_rmsnorm_forward(loom_backend *be, const loom_rmsnorm_forward_args *a) {
    if (a->N <= 0) return LOOM_OK;
    rmsnorm_forward_kernel<<<row_blocks(a->N), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->out16, a->rstd, a->inp, a->w, a->N, a->C, a->eps);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void rmsnorm_dinp_kernel(float *dinp, const float *dout, const float *inp, const float *w,
                                    const float *rstd, int64_t N, int64_t C) {
    const int64_t n = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *x = inp + n * C, *dy = dout + n * C;
    float *dx = dinp + n * C;
    const float r = rstd[n];
    float a = 0.0f;
    for (int64_t c = lane; c < C; c += 32) a += dy[c] * w[c] * x[c] * r;
    a = warp_sum(a) / (float)C;
    for (int64_t c = lane; c < C; c += 32) dx[c] += r * (dy[c] * w[c] - x[c] * r * a);
}

struct rms_dw {
    const float *dy, *x, *rstd;
    int64_t C;
    __device__ float operator()(int64_t n, int64_t c) const { return dy[n * C + c] * x[n * C + c] * rstd[n]; }
};

extern "C" loom_status loom_cuda_rmsnorm_backward(loom_backend *be, const loom_rmsnorm_backward_args *a) {
    if (a->N > 0) {
        rmsnorm_dinp_kernel<<<row_blocks(a->N), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
            a->dinp, a->dout, a->inp, a->w, a->rstd, a->N, a->C);
        LOOM_CUDA_LAUNCHED();
    }
    return colsum(be, rms_dw{a->dout, a->inp, a->rstd, a->C}, a->dw, a->N, a->C, a->accumulate);
}
