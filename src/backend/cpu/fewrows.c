/* Products of a few rows against a weight stored [N, K] (C = alpha A B^T + beta C, A [M, K] with M small):
 * decoding, one row per sequence in the batch. OpenBLAS 0.3.21 packs the whole weight for every such call
 * and reaches ~90 GFLOP/s at M = 16 here; oneDNN's bf16 kernels 20-45 GB/s. These stream each weight row
 * once: a 4-weight-row x 4-input-row tile of AVX-512 accumulators over K (16 multiply-adds per 8 loads),
 * each group of 4 weight rows kept in cache while every group of input rows passes over it; weight-row
 * groups are split over the threads. Missing rows of a last group repeat the last row (computed, not
 * stored). fp32 with FMA; bf16 with AVX512_BF16's pair dot product, fp32 sums. */
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

static inline void tile_rows(const void *base, int64_t ld, int64_t size, int64_t at, int64_t count,
                             const char **rows) {
    for (int t = 0; t < TILE; t++) rows[t] = (const char *)base + (at + t < count ? at + t : count - 1) * ld * size;
}

static inline void tile_store(float acc_sum[TILE][TILE], int64_t i0, int64_t j0, int64_t M, int64_t N, float alpha,
                              float beta, float *C, int64_t ldc) {
    for (int s = 0; s < TILE && i0 + s < M; s++)
        for (int t = 0; t < TILE && j0 + t < N; t++) {
            float *c = C + (i0 + s) * ldc + j0 + t;
            *c = alpha * acc_sum[s][t] + (beta != 0.0f ? beta * *c : 0.0f);
        }
}

__attribute__((target("avx512f"))) void loom_cpu_fewrows_f32(int64_t M, int64_t N, int64_t K, float alpha,
                                                             const float *A, int64_t lda, const float *B, int64_t ldb,
                                                             float beta, float *C, int64_t ldc) {
    const int64_t kf = K - K % 16;
    const __mmask16 tail = (__mmask16)((1u << (K % 16)) - 1u);
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < N; j0 += TILE) {
        const char *w[TILE];
        tile_rows(B, ldb, sizeof(float), j0, N, w);
        for (int64_t i0 = 0; i0 < M - M % TILE; i0 += TILE) {
            const char *a[TILE];
            tile_rows(A, lda, sizeof(float), i0, M, a);
            __m512 acc[TILE][TILE];
#pragma GCC unroll 4
            for (int s = 0; s < TILE; s++)
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) acc[s][t] = _mm512_setzero_ps();
            for (int64_t k = 0; k < kf; k += 16) {
                __m512 wv[TILE], av[TILE];
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) {
                    wv[t] = _mm512_loadu_ps((const float *)w[t] + k);
                    __asm__("" : "+v"(wv[t])); /* one load per weight vector, not one per multiply-add */
                }
#pragma GCC unroll 4
                for (int s = 0; s < TILE; s++) av[s] = _mm512_loadu_ps((const float *)a[s] + k);
#pragma GCC unroll 4
                for (int s = 0; s < TILE; s++)
#pragma GCC unroll 4
                    for (int t = 0; t < TILE; t++) acc[s][t] = _mm512_fmadd_ps(av[s], wv[t], acc[s][t]);
            }
            if (tail) { /* the last K % 16 columns, masked */
                __m512 wv[TILE], av[TILE];
                for (int t = 0; t < TILE; t++) wv[t] = _mm512_maskz_loadu_ps(tail, (const float *)w[t] + kf);
                for (int s = 0; s < TILE; s++) av[s] = _mm512_maskz_loadu_ps(tail, (const float *)a[s] + kf);
                for (int s = 0; s < TILE; s++)
                    for (int t = 0; t < TILE; t++) acc[s][t] = _mm512_fmadd_ps(av[s], wv[t], acc[s][t]);
            }
            float sum[TILE][TILE];
            for (int s = 0; s < TILE; s++)
                for (int t = 0; t < TILE; t++) sum[s][t] = _mm512_reduce_add_ps(acc[s][t]);
            tile_store(sum, i0, j0, M, N, alpha, beta, C, ldc);
        }
        for (int64_t i = M - M % TILE; i < M; i++) { /* the last rows alone: 4 weight rows, one input row */
            const float *a = A + i * lda;
            __m512 acc[TILE];
            for (int t = 0; t < TILE; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t k = 0; k < kf; k += 16) {
                const __m512 av = _mm512_loadu_ps(a + k);
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) acc[t] = _mm512_fmadd_ps(av, _mm512_loadu_ps((const float *)w[t] + k), acc[t]);
            }
            if (tail) {
                const __m512 av = _mm512_maskz_loadu_ps(tail, a + kf);
                for (int t = 0; t < TILE; t++)
                    acc[t] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, (const float *)w[t] + kf), acc[t]);
            }
            float sum[TILE][TILE];
            for (int t = 0; t < TILE; t++) sum[0][t] = _mm512_reduce_add_ps(acc[t]);
            tile_store(sum, i, j0, i + 1, N, alpha, beta, C, ldc);
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void loom_cpu_fewrows_bf16(int64_t M, int64_t N, int64_t K,
                                                                                  float alpha, const uint16_t *A,
                                                                                  int64_t lda, const uint16_t *B,
                                                                                  int64_t ldb, float beta, float *C,
                                                                                  int64_t ldc) {
    const int64_t kf = K - K % 32;
    const __mmask32 tail = (__mmask32)((1ull << (K % 32)) - 1u);
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < N; j0 += TILE) {
        const char *w[TILE];
        tile_rows(B, ldb, sizeof(uint16_t), j0, N, w);
        for (int64_t i0 = 0; i0 < M - M % TILE; i0 += TILE) {
            const char *a[TILE];
            tile_rows(A, lda, sizeof(uint16_t), i0, M, a);
            __m512 acc[TILE][TILE];
#pragma GCC unroll 4
            for (int s = 0; s < TILE; s++)
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) acc[s][t] = _mm512_setzero_ps();
            for (int64_t k = 0; k < kf; k += 32) {
                __m512i wv[TILE], av[TILE];
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) {
                    wv[t] = _mm512_loadu_si512((const uint16_t *)w[t] + k);
                    __asm__("" : "+v"(wv[t]));
                }
#pragma GCC unroll 4
                for (int s = 0; s < TILE; s++) av[s] = _mm512_loadu_si512((const uint16_t *)a[s] + k);
#pragma GCC unroll 4
                for (int s = 0; s < TILE; s++)
#pragma GCC unroll 4
                    for (int t = 0; t < TILE; t++)
                        acc[s][t] = _mm512_dpbf16_ps(acc[s][t], (__m512bh)av[s], (__m512bh)wv[t]);
            }
            if (tail) { /* the last K % 32 columns, masked */
                __m512i wv[TILE], av[TILE];
                for (int t = 0; t < TILE; t++) wv[t] = _mm512_maskz_loadu_epi16(tail, (const uint16_t *)w[t] + kf);
                for (int s = 0; s < TILE; s++) av[s] = _mm512_maskz_loadu_epi16(tail, (const uint16_t *)a[s] + kf);
                for (int s = 0; s < TILE; s++)
                    for (int t = 0; t < TILE; t++)
                        acc[s][t] = _mm512_dpbf16_ps(acc[s][t], (__m512bh)av[s], (__m512bh)wv[t]);
            }
            float sum[TILE][TILE];
            for (int s = 0; s < TILE; s++)
                for (int t = 0; t < TILE; t++) sum[s][t] = _mm512_reduce_add_ps(acc[s][t]);
            tile_store(sum, i0, j0, M, N, alpha, beta, C, ldc);
        }
        for (int64_t i = M - M % TILE; i < M; i++) { /* the last rows alone */
            const uint16_t *a = A + i * lda;
            __m512 acc[TILE];
            for (int t = 0; t < TILE; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t k = 0; k < kf; k += 32) {
                const __m512i av = _mm512_loadu_si512(a + k);
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++)
                    acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)av, (__m512bh)_mm512_loadu_si512((const uint16_t *)w[t] + k));
            }
            if (tail) {
                const __m512i av = _mm512_maskz_loadu_epi16(tail, a + kf);
                for (int t = 0; t < TILE; t++)
                    acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)av,
                                              (__m512bh)_mm512_maskz_loadu_epi16(tail, (const uint16_t *)w[t] + kf));
            }
            float sum[TILE][TILE];
            for (int t = 0; t < TILE; t++) sum[0][t] = _mm512_reduce_add_ps(acc[t]);
            tile_store(sum, i, j0, i + 1, N, alpha, beta, C, ldc);
        }
    }
}

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
