/* Rotary position embedding on the GPU, Hugging Face's rotate_half convention (element i of a head pairs with
 * element i + hd/2), in place on the q and k heads of the fused qkv rows: one thread per pair.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

/* pairs: B*T positions x (H + KV) heads x hd/2 */
__global__ void rope_kernel(float *qkv, const float *cos_t, const float *sin_t, int64_t T, int64_t nheads,
                            int64_t hd, int64_t row, float sgn, int64_t n) {
    const int64_t half = hd / 2;
    LOOM_GRID_STRIDE(k, n) {
        const int64_t i = k % half, h = (k / half) % nheads, bt = k / (half * nheads), t = bt % T;
        float *x = qkv + bt * row + h * hd;
        const float c = cos_t[t * half + i], s = sgn * sin_t[t * half + i];
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
    }
}

extern "C" loom_status loom_cuda_rope(loom_backend *be, const loom_rope_args *a) {
    const int64_t nheads = a->H + a->KV, n = a->B * a->T * nheads * (a->hd / 2);
    if (n <= 0) return LOOM_OK;
    rope_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->qkv, a->cos_t, a->sin_t, a->T, nheads, a->hd, (a->H + 2 * a->KV) * a->hd, a->inverse ? -1.0f : 1.0f, n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
