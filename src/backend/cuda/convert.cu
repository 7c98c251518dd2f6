/* Precision conversions on the GPU: fp32 -> bf16 (the bf16 GEMM's operands) with the CPU's exact rounding
 * (nearest, ties to even, NaN kept a quiet NaN: the same integer arithmetic), and rounding to fp16 (fp16
 * storage's numerics: __float2half_rn rounds to nearest even, overflows to inf and keeps subnormals, as
 * the CPU's _Float16 conversion does) or to bf16 (f32_to_bf16's rounding, widened). All are exact: the same
 * bits as the CPU.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include <cuda_fp16.h>

#include "cuda_kernels.cuh"

__global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, int64_t n) {
    LOOM_GRID_STRIDE(i, n) dst[i] = bf16_round(src[i]);
}

extern "C" loom_status loom_cuda_f32_to_bf16(loom_backend *be, const loom_f32_to_bf16_args *a) {
    if (a->n <= 0) return LOOM_OK;
    f32_to_bf16_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->dst, a->src, a->n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* dst may be src: each element is read before it is written, by the same thread */
template <bool BF16>
__global__ void round_kernel(float *dst, int64_t ld_dst, const float *src, int64_t ld_src, int64_t cols, int64_t n) {
    LOOM_GRID_STRIDE(k, n) {
        const int64_t i = k / cols, j = k - i * cols;
        const float x = src[i * ld_src + j];
        dst[i * ld_dst + j] = BF16 ? __uint_as_float((uint32_t)bf16_round(x) << 16) : __half2float(__float2half_rn(x));
    }
}

template <bool BF16>
static loom_status round_launch(loom_backend *be, const loom_round_fp16_args *a) {
    const int64_t n = a->rows * a->cols;
    if (n <= 0) return LOOM_OK;
    round_kernel<BF16><<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->dst, a->ld_dst, a->src, a->ld_src, a->cols, n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

extern "C" loom_status loom_cuda_round_fp16(loom_backend *be, const loom_round_fp16_args *a) { return round_launch<false>(be, a); }

extern "C" loom_status loom_cuda_round_bf16(loom_backend *be, const loom_round_bf16_args *a) { return round_launch<true>(be, a); }
