/* GELU (tanh approximation and exact erf), the GEMM bias fused into it, SwiGLU, bias add and its gradient,
 * add and scale on the GPU: one thread per element (grid-stride), CUDA's accurate tanhf/erff/expf (no fast
 * math: the results must follow the CPU's within a few ulps). The bias gradient is a deterministic column sum
 * (cuda_kernels.cuh). UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x)));
}
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float t = tanhf(GELU_K * (x + GELU_C * x * x * x)), sech2 = 1.0f - t * t;
    return 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
}
/* d/dx x Phi(x) = Phi(x) + x phi(x) */
__device__ __forceinline__ float gelu_erf_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * expf(-0.5f * x * x);
}

/* the column sums every kernel file may use (declared in cuda_kernels.cuh): one definition, here */
__global__ void colsum_finish(float *dst, const float *partial, int64_t chunks, int64_t C, int accumulate) {
    LOOM_GRID_STRIDE(c, C) {
        float t = accumulate ? dst[c] : 0.0f;
        for (int64_t k = 0; k < chunks; k++) t += partial[k * C + c];
        dst[c] = t;
    }
}

/* pre (N,F) += bias; out (or out16) = gelu(pre) when either is given */
__global__ void bias_gelu_kernel(float *pre, float *out, uint16_t *out16, const float *bias, int64_t n, int64_t F,
                                 int exact) {
    LOOM_GRID_STRIDE(i, n) {
        const float x = pre[i] + bias[i % F];
        pre[i] = x;
        if (out || out16) store_out(out, out16, i, exact ? gelu_erf(x) : gelu_tanh(x));
    }
}

extern "C" loom_status loom_cuda_bias_gelu_forward(loom_backend *be, const loom_bias_gelu_forward_args *a) {
    const int64_t n = a->N * a->F;
    if (n <= 0) return LOOM_OK;
    bias_gelu_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->pre, a->out, a->out16, a->bias, n, a->F, a->exact);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void gelu_kernel(float *out, uint16_t *out16, const float *inp, int64_t n, int exact) {
    LOOM_GRID_STRIDE(i, n) store_out(out, out16, i, exact ? gelu_erf(inp[i]) : gelu_tanh(inp[i]));
}

extern "C" loom_status loom_cuda_gelu_forward(loom_backend *be, const loom_gelu_forward_args *a) {
    if (a->n <= 0) return LOOM_OK;
    gelu_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->out16, a->inp, a->n, a->exact);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__device__ __forceinline__ float gelu_grad_times(const float *inp, const float *dout, int64_t i, int exact) {
    const float x = inp[i];
    return (exact ? gelu_erf_grad(x) : gelu_tanh_grad(x)) * dout[i];
}

/* dinp may alias dout: each element reads both before it writes */
__global__ void gelu_backward_kernel(float *dinp, uint16_t *dinp16, const float *inp, const float *dout, int64_t n,
                                     int exact) {
    LOOM_GRID_STRIDE(i, n) store_out(dinp, dinp16, i, gelu_grad_times(inp, dout, i, exact));
}

/* the bias gradient's summand in the bf16 form: the gradient recomputed from inp and dout (nothing fp32 stored) */
struct gelu_grad_of {
    const float *inp, *dout;
    int64_t cols;
    int exact;
    __device__ float operator()(int64_t n, int64_t c) const { return gelu_grad_times(inp, dout, n * cols + c, exact); }
};

/* with dinp16, the column sums (db) are a second kernel: the gradient recomputed per element */
extern "C" loom_status loom_cuda_gelu_backward(loom_backend *be, const loom_gelu_backward_args *a) {
    if (a->n <= 0) return LOOM_OK;
    if (a->dinp16 && a->db) {
        if (a->cols <= 0 || a->n % a->cols) return LOOM_ERR_INVALID_ARG;
        LOOM_CALL(colsum(be, gelu_grad_of{a->inp, a->dout, a->cols, a->exact}, a->db, a->n / a->cols, a->cols,
                         a->accumulate));
    }
    gelu_backward_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->dinp16 ? NULL : a->dinp, a->dinp16, a->inp, a->dout, a->n, a->exact);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* out (N,F) = silu(g) * u, gu rows [g (F) | u (F)] */
__global__ void swiglu_kernel(float *out, uint16_t *out16, const float *gu, int64_t n, int64_t F) {
    LOOM_GRID_STRIDE(i, n) {
        const int64_t row = i / F, f = i - row * F;
        const float g = gu[row * 2 * F + f], u = gu[row * 2 * F + F + f];
        const float s = 1.0f / (1.0f + expf(-g));
        store_out(out, out16, i, g * s * u);
    }
}

extern "C" loom_status loom_cuda_swiglu_forward(loom_backend *be, const loom_swiglu_forward_args *a) {
    const int64_t n = a->N * a->F;
    if (n <= 0) return LOOM_OK;
    swiglu_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->out16, a->gu, n, a->F);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void swiglu_backward_kernel(float *dgu, const float *gu, const float *dout, int64_t n, int64_t F) {
    LOOM_GRID_STRIDE(i, n) {
        const int64_t row = i / F, f = i - row * F;
        const float g = gu[row * 2 * F + f], u = gu[row * 2 * F + F + f], dy = dout[i];
        const float s = 1.0f / (1.0f + expf(-g));
        dgu[row * 2 * F + F + f] = dy * (g * s);
        dgu[row * 2 * F + f] = dy * u * s * (1.0f + g * (1.0f - s));
    }
}

extern "C" loom_status loom_cuda_swiglu_backward(loom_backend *be, const loom_swiglu_backward_args *a) {
    const int64_t n = a->N * a->F;
    if (n <= 0) return LOOM_OK;
    swiglu_backward_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->dgu, a->gu, a->dout, n, a->F);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void bias_add_kernel(float *x, const float *bias, int64_t n, int64_t C) {
    LOOM_GRID_STRIDE(i, n) x[i] += bias[i % C];
}

extern "C" loom_status loom_cuda_bias_add(loom_backend *be, const loom_bias_add_args *a) {
    const int64_t n = a->N * a->C;
    if (n <= 0) return LOOM_OK;
    bias_add_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->x, a->bias, n, a->C);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* the bias gradient's summand: dout[n][c] */
struct rows_of {
    const float *d;
    int64_t C;
    __device__ float operator()(int64_t n, int64_t c) const { return d[n * C + c]; }
};

/* dout16: a second pass rounds dout (the CPU's one pass saves memory traffic it has less of) */
extern "C" loom_status loom_cuda_bias_backward(loom_backend *be, const loom_bias_backward_args *a) {
    if (a->db) LOOM_CALL(colsum(be, rows_of{a->dout, a->C}, a->db, a->N, a->C, a->accumulate));
    if (!a->dout16) return LOOM_OK;
    const loom_f32_to_bf16_args r = {a->dout16, a->dout, a->N * a->C};
    return loom_cuda_f32_to_bf16(be, &r);
}

__global__ void add_kernel(float *out, const float *x, const float *y, int64_t n) {
    LOOM_GRID_STRIDE(i, n) out[i] = x[i] + y[i];
}

extern "C" loom_status loom_cuda_add(loom_backend *be, const loom_add_args *a) {
    if (a->n <= 0) return LOOM_OK;
    add_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->a, a->b, a->n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void scale_kernel(float *x, float s, int64_t n) {
    LOOM_GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" loom_status loom_cuda_scale(loom_backend *be, const loom_scale_args *a) {
    if (a->n <= 0) return LOOM_OK;
    scale_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->x, a->s, a->n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
