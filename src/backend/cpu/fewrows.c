/* Products of a few rows against a weight stored [N, K] (C = alpha A B^T + beta C, A [M, K] with M small):
 * decoding, one row per sequence in the batch. OpenBLAS 0.3.21 packs the whole weight for every such call
 * and reaches ~90 GFLOP/s at M = 16 here; oneDNN's bf16 kernels 20-45 GB/s. These stream each weight row
 * once: a 4-weight-row x 4-input-row tile of AVX-512 accumulators over K (16 multiply-adds per 8 loads),
 * each group of 4 weight rows kept in cache while every group of input rows passes over it; weight-row
 * groups are split over the threads. fp32 with FMA; bf16 with AVX512_BF16's pair dot product, fp32 sums. */
#include <stdlib.h>

#include "cpu_impl.h"

/* up to how many rows these beat the library's GEMM (measured: see DESIGN.md); LOOM_FEWROWS_MAX overrides */
int64_t loom_cpu_fewrows_max(void) {
    static int64_t max = -1;
    if (max < 0) {
        const char *e = getenv("LOOM_FEWROWS_MAX");
        max = e && *e ? atoll(e) : 32;
    }
    return max;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TILE 4

/* the TILE weight rows from row j0 (past the last: the last again, computed and not stored) */
static inline void weight_rows(const void *B, int64_t ldb, size_t size, int64_t j0, int64_t N, const char **w) {
    for (int t = 0; t < TILE; t++) w[t] = (const char *)B + (size_t)((j0 + t < N ? j0 + t : N - 1) * ldb) * size;
}

static inline void tile_store(float sum[TILE][TILE], int rows, int64_t i0, int64_t j0, int64_t N, float alpha,
                              float beta, float *C, int64_t ldc) {
    for (int s = 0; s < rows; s++)
        for (int t = 0; t < TILE && j0 + t < N; t++) {
            float *c = C + (i0 + s) * ldc + j0 + t;
            *c = alpha * sum[s][t] + (beta != 0.0f ? beta * *c : 0.0f);
        }
}

/* One kernel, written once for both element types: T the element, STEP elements per vector, VEC the vector
 * type, LOAD/MLOAD (masked, mask type MASK) its loads, MADD(acc, a, w) the multiply-add into fp32 lanes.
 * Groups of TILE input rows run as TILE x TILE tiles; the last M % TILE rows one at a time against the same
 * TILE weight rows. Each weight vector is loaded once per tile step (the empty asm keeps the compiler from
 * folding it into every multiply-add as a memory operand, TILE loads instead of one). */
#define FEWROWS_KERNEL(NAME, TARGET, T, STEP, VEC, LOAD, MLOAD, MASK, MADD)                                          \
    __attribute__((target(TARGET))) void NAME(int64_t M, int64_t N, int64_t K, float alpha, const T *A, int64_t lda, \
                                              const T *B, int64_t ldb, float beta, float *C, int64_t ldc) {          \
        const int64_t kf = K - K % STEP, Mf = M - M % TILE;                                                         \
        const MASK tail = (MASK)((1ull << (K % STEP)) - 1u);                                                        \
        _Pragma("omp parallel for schedule(static)") for (int64_t j0 = 0; j0 < N; j0 += TILE) {                     \
            const char *wr[TILE];                                                                                   \
            weight_rows(B, ldb, sizeof(T), j0, N, wr);                                                              \
            const T *w[TILE] = {(const T *)wr[0], (const T *)wr[1], (const T *)wr[2], (const T *)wr[3]};            \
            for (int64_t i0 = 0; i0 < M; i0 += i0 < Mf ? TILE : 1) {                                                \
                const int rows = i0 < Mf ? TILE : 1; /* a tile, or one of the last rows */                          \
                const T *a[TILE];                                                                                   \
                for (int s = 0; s < TILE; s++) a[s] = A + (i0 + (s < rows ? s : 0)) * lda;                          \
                __m512 acc[TILE][TILE];                                                                             \
                _Pragma("GCC unroll 4") for (int s = 0; s < TILE; s++)                                              \
                    _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) acc[s][t] = _mm512_setzero_ps();         \
                if (rows == TILE) {                                                                                 \
                    for (int64_t k = 0; k < kf; k += STEP) {                                                        \
                        VEC wv[TILE], av[TILE];                                                                     \
                        _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) {                                    \
                            wv[t] = LOAD(w[t] + k);                                                                 \
                            __asm__("" : "+v"(wv[t]));                                                              \
                        }                                                                                           \
                        _Pragma("GCC unroll 4") for (int s = 0; s < TILE; s++) av[s] = LOAD(a[s] + k);              \
                        _Pragma("GCC unroll 4") for (int s = 0; s < TILE; s++)                                      \
                            _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) acc[s][t] = MADD(acc[s][t], av[s], wv[t]); \
                    }                                                                                               \
                } else {                                                                                            \
                    for (int64_t k = 0; k < kf; k += STEP) {                                                        \
                        const VEC av = LOAD(a[0] + k);                                                              \
                        _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) acc[0][t] = MADD(acc[0][t], av, LOAD(w[t] + k)); \
                    }                                                                                               \
                }                                                                                                   \
                if (tail) { /* the last K % STEP columns, masked */                                                 \
                    for (int s = 0; s < rows; s++) {                                                                \
                        const VEC av = MLOAD(tail, a[s] + kf);                                                      \
                        for (int t = 0; t < TILE; t++) acc[s][t] = MADD(acc[s][t], av, MLOAD(tail, w[t] + kf));     \
                    }                                                                                               \
                }                                                                                                   \
                float sum[TILE][TILE];                                                                              \
                for (int s = 0; s < rows; s++)                                                                      \
                    for (int t = 0; t < TILE; t++) sum[s][t] = _mm512_reduce_add_ps(acc[s][t]);                     \
                tile_store(sum, rows, i0, j0, N, alpha, beta, C, ldc);                                              \
            }                                                                                                       \
        }                                                                                                           \
    }

#define F32_MADD(acc, a, w) _mm512_fmadd_ps(a, w, acc)
#define BF16_LOAD(p) _mm512_loadu_si512(p)
#define BF16_MADD(acc, a, w) _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(w))
FEWROWS_KERNEL(loom_cpu_fewrows_f32, "avx512f", float, 16, __m512, _mm512_loadu_ps, _mm512_maskz_loadu_ps, __mmask16,
               F32_MADD)
FEWROWS_KERNEL(loom_cpu_fewrows_bf16, "avx512f,avx512bw,avx512bf16", uint16_t, 32, __m512i, BF16_LOAD,
               _mm512_maskz_loadu_epi16, __mmask32, BF16_MADD)

int loom_cpu_fewrows_supported(int bf16) {
    static int f32 = -1, b16 = -1;
    if (f32 < 0) f32 = __builtin_cpu_supports("avx512f") != 0;
    if (b16 < 0) b16 = f32 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
    return bf16 ? b16 : f32;
}
#else
void loom_cpu_fewrows_f32(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                          int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
}
void loom_cpu_fewrows_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t *A, int64_t lda,
                           const uint16_t *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
}
int loom_cpu_fewrows_supported(int bf16) {
    (void)bf16;
    return 0;
}
#endif
