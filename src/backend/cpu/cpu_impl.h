/* Private to the CPU backend: kernel entry points that cpu.c puts in the table, and shared helpers. */
#ifndef LOOM_CPU_IMPL_H
#define LOOM_CPU_IMPL_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../backend_impl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* This thread's share [lo, hi) of n items inside a parallel region: a fixed partition, so per-channel
 * reductions (weight and bias gradients) add rows in the same order whatever the thread count. */
static inline void loom_cpu_thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    int64_t nth = omp_get_num_threads(), ith = omp_get_thread_num();
#else
    int64_t nth = 1, ith = 0;
#endif
    *lo = n * ith / nth;
    *hi = n * (ith + 1) / nth;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* a mask of the first min(n, 16) lanes (n >= 0) */
static inline __mmask16 loom_cpu_first_lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* The sums of 16 vectors' lanes at once: lane t of the result is a[t]'s lanes added by one fixed tree (lane i
 * with i + 8, then i + 4, i + 2, i + 1: _mm512_reduce_add_ps's tree), so each sum's bits do not depend on the
 * other 15 vectors. Pairs of vectors are halved together: 15 shuffle pairs and adds where 16 reductions take
 * ~130 instructions. */
__attribute__((target("avx512f"))) static inline __m512 loom_cpu_sum16(const __m512 a[16]) {
    __m512 h8[8], h4[4], h2[2];
    for (int p = 0; p < 8; p++) /* lanes 0-7: a[2p]'s i + (i + 8); lanes 8-15: a[2p + 1]'s */
        h8[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                              _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xee));
    for (int p = 0; p < 4; p++) /* 128-bit quarter q: vector 4p + q's i + (i + 4) */
        h4[p] = _mm512_add_ps(_mm512_shuffle_f32x4(h8[2 * p], h8[2 * p + 1], 0x88),
                              _mm512_shuffle_f32x4(h8[2 * p], h8[2 * p + 1], 0xdd));
    for (int p = 0; p < 2; p++) /* quarter q: (i + (i + 2)) for i = 0, 1 of vector 8p + q, then of 8p + 4 + q */
        h2[p] = _mm512_add_ps(_mm512_shuffle_ps(h4[2 * p], h4[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(h4[2 * p], h4[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* lane 4q + r: the sum of vector q + 4r; put back in order */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(h2[0], h2[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(h2[0], h2[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), t);
}
#endif

/* Cephes-style expf: ~1 ulp on [-87, 88], written so that the compiler vectorises it without
 * -ffast-math (glibc's expf only vectorises under fast-math); its clamp becomes a blend only under
 * -fno-trapping-math (CMakeLists.txt). Deterministic. */
static inline float loom_fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(n, -0.693359375f, x);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    float y = __builtin_fmaf(p * r, r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

/* erf by Abramowitz and Stegun 7.1.26 (absolute error <= 1.5e-7, about an ulp of 1), branch-free so that
 * loops vectorise (libm's erff does not) */
static inline float loom_fast_erff(float x) {
    const float a = __builtin_fabsf(x), t = 1.0f / __builtin_fmaf(0.3275911f, a, 1.0f);
    float p = 1.061405429f;
    p = __builtin_fmaf(p, t, -1.453152027f);
    p = __builtin_fmaf(p, t, 1.421413741f);
    p = __builtin_fmaf(p, t, -0.284496736f);
    p = __builtin_fmaf(p, t, 0.254829592f);
    const float y = 1.0f - p * t * loom_fast_expf(-a * a);
    return __builtin_copysignf(y, x);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* loom_fast_expf on 16 lanes, operation for operation (each lane's bits are the scalar's; a NaN stays NaN):
 * for loops whose remainders are masks rather than scalar tails */
__attribute__((target("avx512f"))) static inline __m512 loom_cpu_exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.3f), _mm512_max_ps(_mm512_set1_ps(-87.3f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}
#endif

/* fp32 -> bf16, round to nearest even, NaN stays a quiet NaN: the one rounding every bf16 writer here uses, the
 * same as core's loom_f32_to_bf16 but inline, so that the loops writing bf16 vectorise */
static inline uint16_t loom_cpu_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* bf16 -> fp32, exact (the bits moved up): the one widening every bf16 reader here uses, inline so that its
 * loops vectorise (core's loom_bf16_to_f32 is the same, out of line) */
static inline float loom_cpu_bf16_widen(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float loom_fast_tanhf(float x) {
    /* tanh(x) = 1 - 2 / (exp(2x) + 1); the absolute error near 0 is ~1e-7, well inside the tests' bounds */
    return 1.0f - 2.0f / (loom_fast_expf(2.0f * x) + 1.0f);
}

/* every kernel of LOOM_KERNELS: loom_status loom_cpu_<name>(loom_backend *, const loom_<name>_args *) */
#define LOOM_CPU_KERNEL_DECLARE(name, category, flops) \
    loom_status loom_cpu_##name(loom_backend *be, const loom_##name##_args *a);
LOOM_KERNELS(LOOM_CPU_KERNEL_DECLARE)
#undef LOOM_CPU_KERNEL_DECLARE

/* fewrows.c: C = alpha A B^T + beta C for a few rows of A (decoding a batch); supported(bf16): the CPU has
 * the instructions (AVX-512, or AVX2 with FMA). Rows up to loom_cpu_fewrows_max() go there. The bf16 one
 * returns 0 where it could not run (no memory to widen the rows): the caller takes its general path. */
void loom_cpu_fewrows_f32(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                          int64_t ldb, float beta, float *C, int64_t ldc);
int loom_cpu_fewrows_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t *A, int64_t lda,
                          const uint16_t *B, int64_t ldb, float beta, float *C, int64_t ldc);
int loom_cpu_fewrows_supported(int bf16);
int64_t loom_cpu_fewrows_max(void);
/* 1 where a product goes there: a weight stored [N, K] (B^T), and up to loom_cpu_fewrows_max() rows, or any
 * number on a batch-invariant backend (each row then in the one fixed order, whatever its batch) */
int loom_cpu_fewrows_takes(const loom_backend *be, int ta, int tb, int64_t M, int64_t K, int bf16);
/* the fp32 GEMM itself (OpenBLAS, else a plain loop), for kernels built on products */
void loom_cpu_sgemm(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
/* loads OpenBLAS (required unless "builtin") and oneDNN (optional) */
LOOM_NODISCARD loom_status loom_cpu_blas_load(const loom_backend_config *cfg, loom_backend *be);
void loom_cpu_bf16_load(loom_backend *be);
/* host memory as the backend's buffers (malloc'ed, reserved with MAP_NORESERVE) */
void loom_cpu_buffer_ops(loom_backend *be);
/* fills the kernel table and the threads; the CPU backend and the isolated one share it */
LOOM_NODISCARD loom_status loom_cpu_setup(const loom_backend_config *cfg, loom_backend *be);
#endif
