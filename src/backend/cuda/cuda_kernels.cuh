/* Device helpers shared by the CUDA kernel files (*.cu): launch sizes, grid-stride loops, deterministic
 * reductions (warp butterflies and a fixed block tree: the same bits on every run for a fixed launch
 * configuration; no atomics anywhere), and the per-channel column sums behind every weight and bias
 * gradient. UNVERIFIED on a GPU (see cuda_impl.h). */
#ifndef LOOM_CUDA_KERNELS_CUH
#define LOOM_CUDA_KERNELS_CUH
#include <math.h>

#include "cuda_impl.h"

/* threads per block for the elementwise and row kernels */
enum { LOOM_CUDA_THREADS = 256 };

/* blocks for n items at `threads` a block; capped (the loops below stride over the grid) and never 0, which
 * would be an invalid launch (callers return early for n == 0 anyway) */
static inline unsigned loom_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > (1 << 20)) b = 1 << 20;
    return (unsigned)b;
}

#define LOOM_GRID_STRIDE(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* Butterfly reductions: every lane ends with the same bits (a + b == b + a in IEEE arithmetic, and each
 * step pairs the same partial sums on both sides). */
/* fp32 -> bf16 as the CPU rounds it (nearest, ties to even, NaN kept a quiet NaN): the same integer steps */
__device__ __forceinline__ uint16_t bf16_round(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* an output element stored as fp32 (out) or, where out16 is given, as bf16 (the kernels' out16 forms) */
__device__ __forceinline__ void store_out(float *out, uint16_t *out16, int64_t i, float v) {
    if (out16) out16[i] = bf16_round(v);
    else out[i] = v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block reductions over blockDim.x (a multiple of 32, at most 1024) threads; every thread gets the result.
 * `sh` is 32 elements of shared memory, reusable right after the call returns. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* an earlier call's readers are done with sh */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : 0.0f);
}
__device__ __forceinline__ double block_sum_d(double v, double *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_sum_d(lane < nw ? sh[lane] : 0.0);
}
__device__ __forceinline__ float block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_max(lane < nw ? sh[lane] : -INFINITY);
}

/* ---- column sums: dst (C) (+)= sum over rows n < N of f(n, c) ----
 * Deterministic without atomics: the rows are cut into fixed chunks (a function of N alone); a block sums one
 * chunk for 32 columns (8 row lanes, then the lanes in order), a second kernel adds the chunks in order. The
 * grid is (columns / 32) x chunks, so N = 16K rows of C = 768 channels make 6K blocks instead of the 768
 * threads a column-per-thread loop would have. */
enum { COLSUM_TILE = 32, COLSUM_LANES = 8 };

static inline int64_t colsum_rows_per_chunk(int64_t N) {
    const int64_t r = (N + 1023) / 1024; /* at most 1024 chunks: the partials stay small */
    return r < 64 ? 64 : r;
}

template <class F>
__global__ void colsum_partial(F f, int64_t N, int64_t C, int64_t rows, float *partial) {
    __shared__ float sh[COLSUM_LANES][COLSUM_TILE + 1];
    const int64_t c = (int64_t)blockIdx.x * COLSUM_TILE + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * rows, r1 = r0 + rows < N ? r0 + rows : N;
    float s = 0.0f;
    if (c < C)
        for (int64_t n = r0 + threadIdx.y; n < r1; n += COLSUM_LANES) s += f(n, c);
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = sh[0][threadIdx.x];
        for (int k = 1; k < COLSUM_LANES; k++) t += sh[k][threadIdx.x];
        partial[(int64_t)blockIdx.y * C + c] = t;
    }
}

__global__ void colsum_finish(float *dst, const float *partial, int64_t chunks, int64_t C, int accumulate);

/* dst (C) = (accumulate ? dst : 0) + column sums of f over N rows */
template <class F>
static loom_status colsum(loom_backend *be, F f, float *dst, int64_t N, int64_t C, int accumulate) {
    if (C <= 0) return LOOM_OK;
    const int64_t rows = colsum_rows_per_chunk(N), chunks = N > 0 ? (N + rows - 1) / rows : 0;
    float *partial = NULL;
    if (chunks > 0) LOOM_CALL(loom_cuda_workspace(be, (size_t)(chunks * C) * sizeof(float), (void **)&partial));
    cudaStream_t s = loom_cuda_of(be)->stream;
    if (chunks > 0) {
        const dim3 grid((unsigned)((C + COLSUM_TILE - 1) / COLSUM_TILE), (unsigned)chunks), block(COLSUM_TILE, COLSUM_LANES);
        colsum_partial<F><<<grid, block, 0, s>>>(f, N, C, rows, partial);
        LOOM_CUDA_LAUNCHED();
    }
    colsum_finish<<<loom_cuda_blocks(C, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, s>>>(dst, partial, chunks, C, accumulate);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
#endif
