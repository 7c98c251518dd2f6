/* Products of a few rows against a weight stored [N, K] (C = alpha A B^T + beta C, A [M, K] with M small):
 * decoding, one row per sequence in the batch. OpenBLAS 0.3.21 packs the whole weight for every such call
 * and reaches ~90 GFLOP/s at M = 16 here; oneDNN's bf16 kernels 20-45 GB/s. These stream each weight row
 * once: a 6-weight-row x 4-input-row tile of AVX-512 accumulators over K (24 multiply-adds per 10 loads),
 * each group of 6 weight rows kept in cache while every group of input rows passes over it; weight-row
 * groups are split over the threads. fp32 with FMA; bf16 with AVX512_BF16's pair dot product, fp32 sums.
 * CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 3, seen here) run the same walk with 16 vector registers:
 * tiles of 4 weight rows x 2 input rows, bf16 weights widened to fp32 as they are loaded and bf16 inputs
 * widened once per call. */
#include <stdlib.h>

#include "cpu_impl.h"
#include "loom/tensor.h"

int loom_cpu_fewrows_takes(const loom_backend *be, int ta, int tb, int64_t M, int64_t K, int bf16) {
    return !ta && tb && K > 0 && (M <= loom_cpu_fewrows_max() || be->batch_invariant) && loom_cpu_fewrows_supported(bf16);
}

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

/* Weight rows per group in the AVX-512 tiles (input rows: TILE). 6 x 4 holds 24 accumulators, the 4 input
 * vectors and one weight vector at a time in the 32 registers; against 4 x 4 tiles (16 sums stored one by
 * one), the same harness over 12 layers of GPT-2 124M's weights from memory (huge pages, 2 threads, Zen 5,
 * alternating, ms): bf16 M 16 6.49-6.74 -> 6.13-6.48, M 32 10.8-11.7 -> 10.2-10.7, M 64 18.3-19.4 ->
 * 16.9-18.4; fp32 M 16 14.2-15.5 -> 12.6-13.3, M 32 21.9-22.9 -> 19.7-20.3; M 1 and 8 (bound by the
 * memory) unchanged. Every output's sum is the same: its own chain over K, then the same tree. */
#define TW 6

/* the tw weight rows from row j0 (past the last: the last again, computed and not stored) */
static inline void weight_rows(const void *B, int64_t ldb, size_t size, int64_t j0, int64_t N, int tw, const char **w) {
    for (int t = 0; t < tw; t++) w[t] = (const char *)B + (size_t)((j0 + t < N ? j0 + t : N - 1) * ldb) * size;
}

/* the AVX2 tiles' outputs, sum[s * TILE + t]: input row i0 + s against weight row j0 + t */
static inline void tile_store(const float *sum, int rows, int64_t i0, int64_t j0, int64_t N, float alpha, float beta,
                              float *C, int64_t ldc) {
    for (int s = 0; s < rows; s++)
        for (int t = 0; t < TILE && j0 + t < N; t++) {
            float *c = C + (i0 + s) * ldc + j0 + t;
            *c = alpha * sum[s * TILE + t] + (beta != 0.0f ? beta * *c : 0.0f);
        }
}

/* Input rows per block when there are many (loom serve --batch-invariant runs whole prompts here): a block of
 * at most 512 KiB stays in L2 while this thread's weight rows pass over it once, where every input row against
 * every group of weight rows streams the whole input from L3 at every group (M 512 here, 2 threads, 1 MiB L2:
 * 623-777 GFLOP/s unblocked, 660-800 with 512 KiB blocks, 638-773 with 64 KiB). Never fewer rows than
 * decoding sends (loom_cpu_fewrows_max): there the weights stream from memory, once. */
static inline int64_t rows_per_block(int64_t K, size_t size) {
    /* whole tiles: none straddles two blocks */
    const int64_t b = (int64_t)(512 * 1024 / ((size_t)K * size)) / TILE * TILE;
    const int64_t few = (loom_cpu_fewrows_max() + TILE - 1) / TILE * TILE;
    return b > few ? b : few > TILE ? few : TILE;
}

/* A tile's outputs a row of TW at a time (sum[s * TW + t]): alpha x + (beta c, or 0), fused */
__attribute__((target("avx512f"))) static inline void tile_store16(const float *sum, int rows, int64_t i0, int64_t j0,
                                                                   int64_t N, float alpha, float beta, float *C,
                                                                   int64_t ldc) {
    const __mmask16 m = (__mmask16)((1u << (N - j0 < TW ? N - j0 : TW)) - 1u);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int s = 0; s < rows; s++) {
        float *c = C + (i0 + s) * ldc + j0;
        const __m512 add = beta != 0.0f ? _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, c)) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(c, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, sum + s * TW), add));
    }
}

/* A block's first tile of input rows reads the group's weight rows from memory, and the tiles after it from
 * cache; while it runs, the next group's rows are fetched in software (the hardware prefetcher, seeing a few
 * short streams, starts too late). Weights in huge pages as the model's, 2 threads, Zen 5, median us: bf16
 * M 8, 2304 x 768, 122 -> 49-60; M 16, 145-160 -> 90-97; fp32 M 16, 285-305 -> 232-272; `loom serve` bf16,
 * 8-32 clients decoding 64 tokens each: +10-11% tokens/s. A lone row (decoding one sequence, the path below
 * the tiles') goes without: there the hardware keeps up, and `loom generate` ran 7% slower with it. Only a
 * hint: no sum changes. */
#define PREFETCH_ROWS(rows, at)                                                                                        \
    _Pragma("GCC unroll 8") for (int t = 0; t < TW; t++) _mm_prefetch((rows)[t] + (at), _MM_HINT_T0)

/* One kernel, written once for both element types: T the element, STEP elements per vector, VEC the vector
 * type, LOAD/MLOAD (masked, mask type MASK) its loads, MADD(acc, a, w) the multiply-add into fp32 lanes.
 * Groups of TILE input rows run as TILE x TW tiles; the last M % TILE rows one at a time against the same
 * TW weight rows. Each weight and input vector is loaded once per tile step (the empty asm keeps the compiler
 * from folding it into every multiply-add as a memory operand, several loads instead of one: fp32 at M 512
 * here, 2 threads, 296-419 GFLOP/s against 168-280 with the input rows folded; bf16 the same either way). A
 * tile's 24 sums are two loom_cpu_sum16 (each the tree of _mm512_reduce_add_ps, the same bits for a tile or a
 * single row). Each thread holds a fixed range of weight-row groups; blocks of input rows pass in order (see
 * above). */
#define FEWROWS_KERNEL(NAME, TARGET, T, STEP, VEC, LOAD, MLOAD, MASK, MADD)                                          \
    __attribute__((target(TARGET))) static void NAME(int64_t M, int64_t N, int64_t K, float alpha, const T *A, int64_t lda, \
                                              const T *B, int64_t ldb, float beta, float *C, int64_t ldc) {          \
        const int64_t kf = K - K % STEP, Mf = M - M % TILE, groups = (N + TW - 1) / TW;                             \
        const int64_t block = rows_per_block(K, sizeof(T));                                                         \
        const MASK tail = (MASK)((1ull << (K % STEP)) - 1u);                                                        \
        _Pragma("omp parallel") {                                                                                   \
            int64_t g_lo, g_hi;                                                                                     \
            loom_cpu_thread_range(groups, &g_lo, &g_hi);                                                            \
            for (int64_t b0 = 0; b0 < M; b0 += block) {                                                             \
                const int64_t b1 = M - b0 < block ? M : b0 + block;                                                \
                for (int64_t g = g_lo; g < g_hi; g++) {                                                             \
                    const int64_t j0 = g * TW;                                                                      \
                    const char *wr[TW];                                                                             \
                    weight_rows(B, ldb, sizeof(T), j0, N, TW, wr);                                                  \
                    const T *w[TW];                                                                                 \
                    _Pragma("GCC unroll 8") for (int t = 0; t < TW; t++) w[t] = (const T *)wr[t];                   \
                    const char *next[TW]; /* the next group's rows (the last group: its own) */                     \
                    weight_rows(B, ldb, sizeof(T), j0 + TW < N ? j0 + TW : j0, N, TW, next);                        \
                    for (int64_t i0 = b0; i0 < b1; i0 += i0 + TILE <= Mf ? TILE : 1) {                              \
                        const int rows = i0 + TILE <= Mf ? TILE : 1; /* a tile, or one of the last rows */          \
                        const T *a[TILE];                                                                           \
                        for (int s = 0; s < TILE; s++) a[s] = A + (i0 + (s < rows ? s : 0)) * lda;                  \
                        __m512 acc[32]; /* [s * TW + t], the rest zeros for the sums */                             \
                        _Pragma("GCC unroll 32") for (int u = 0; u < 32; u++) acc[u] = _mm512_setzero_ps();         \
                        if (rows == TILE) {                                                                         \
                            for (int64_t k = 0; k < kf; k += STEP) {                                                \
                                if (i0 == b0) PREFETCH_ROWS(next, k * (int64_t)sizeof(T));                         \
                                VEC av[TILE];                                                                       \
                                _Pragma("GCC unroll 4") for (int s = 0; s < TILE; s++) {                            \
                                    av[s] = LOAD(a[s] + k);                                                         \
                                    __asm__("" : "+v"(av[s]));                                                      \
                                }                                                                                   \
                                _Pragma("GCC unroll 8") for (int t = 0; t < TW; t++) {                              \
                                    VEC wv = LOAD(w[t] + k);                                                        \
                                    __asm__("" : "+v"(wv));                                                         \
                                    _Pragma("GCC unroll 4") for (int s = 0; s < TILE; s++)                          \
                                        acc[s * TW + t] = MADD(acc[s * TW + t], av[s], wv);                         \
                                }                                                                                   \
                            }                                                                                       \
                        } else {                                                                                    \
                            for (int64_t k = 0; k < kf; k += STEP) {                                                \
                                const VEC av = LOAD(a[0] + k);                                                      \
                                _Pragma("GCC unroll 8") for (int t = 0; t < TW; t++)                                \
                                    acc[t] = MADD(acc[t], av, LOAD(w[t] + k));                                      \
                            }                                                                                       \
                        }                                                                                           \
                        if (tail) { /* the last K % STEP columns, masked */                                         \
                            for (int s = 0; s < rows; s++) {                                                        \
                                const VEC av = MLOAD(tail, a[s] + kf);                                              \
                                for (int t = 0; t < TW; t++)                                                        \
                                    acc[s * TW + t] = MADD(acc[s * TW + t], av, MLOAD(tail, w[t] + kf));            \
                            }                                                                                       \
                        }                                                                                           \
                        float sum[32]; /* rows past `rows` summed from zeros, not stored */                         \
                        _mm512_storeu_ps(sum, loom_cpu_sum16(acc));                                                 \
                        if (rows * TW > 16) _mm512_storeu_ps(sum + 16, loom_cpu_sum16(acc + 16));                   \
                        tile_store16(sum, rows, i0, j0, N, alpha, beta, C, ldc);                                    \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

#define F32_MADD(acc, a, w) _mm512_fmadd_ps(a, w, acc)
#define BF16_LOAD(p) _mm512_loadu_si512(p)
#define BF16_MADD(acc, a, w) _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(w))
FEWROWS_KERNEL(fewrows_f32_avx512, "avx512f", float, 16, __m512, _mm512_loadu_ps, _mm512_maskz_loadu_ps, __mmask16,
               F32_MADD)
FEWROWS_KERNEL(fewrows_bf16_avx512, "avx512f,avx512bw,avx512bf16", uint16_t, 32, __m512i, BF16_LOAD,
               _mm512_maskz_loadu_epi16, __mmask32, BF16_MADD)

/* AVX2 (no AVX-512): 16 registers hold 4 x 2 accumulators, 2 input vectors and the weight vector in use (at
 * 4 x 3 GCC spills an accumulator to the stack: M = 16, 768 x 3072 here, 2 threads: 60 GFLOP/s with every
 * operand folded into the multiply-adds, 83 with 4 x 3 tiles in registers, 105-110 with 4 x 2) */
#define AVX2_ROWS 2

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* A always fp32 here; the weight's element type T, its 8-element fp32 load LOADW and scalar WVALUE; the
 * empty asm keeps each loaded vector in a register (else GCC folds it into every multiply-add: 3 loads for 1) */
#define FEWROWS_AVX2_KERNEL(NAME, T, LOADW, WVALUE)                                                                  \
    __attribute__((target("avx2,fma"))) static void NAME(int64_t M, int64_t N, int64_t K, float alpha,              \
                                                         const float *A, int64_t lda, const T *B, int64_t ldb,       \
                                                         float beta, float *C, int64_t ldc) {                        \
        const int64_t kf = K - K % 8, Mf = M - M % AVX2_ROWS;                                                       \
        _Pragma("omp parallel for schedule(static)") for (int64_t j0 = 0; j0 < N; j0 += TILE) {                     \
            const char *wr[TILE];                                                                                   \
            weight_rows(B, ldb, sizeof(T), j0, N, TILE, wr);                                                        \
            const T *w[TILE] = {(const T *)wr[0], (const T *)wr[1], (const T *)wr[2], (const T *)wr[3]};            \
            for (int64_t i0 = 0; i0 < M; i0 += i0 < Mf ? AVX2_ROWS : 1) {                                           \
                const int rows = i0 < Mf ? AVX2_ROWS : 1;                                                           \
                const float *a[AVX2_ROWS];                                                                          \
                for (int s = 0; s < AVX2_ROWS; s++) a[s] = A + (i0 + (s < rows ? s : 0)) * lda;                     \
                __m256 acc[AVX2_ROWS][TILE];                                                                        \
                _Pragma("GCC unroll 2") for (int s = 0; s < AVX2_ROWS; s++)                                         \
                    _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) acc[s][t] = _mm256_setzero_ps();         \
                if (rows == AVX2_ROWS) {                                                                            \
                    for (int64_t k = 0; k < kf; k += 8) {                                                           \
                        __m256 av[AVX2_ROWS];                                                                       \
                        _Pragma("GCC unroll 2") for (int s = 0; s < AVX2_ROWS; s++) {                               \
                            av[s] = _mm256_loadu_ps(a[s] + k);                                                      \
                            __asm__("" : "+x"(av[s]));                                                              \
                        }                                                                                           \
                        _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++) {                                    \
                            __m256 wv = LOADW(w[t] + k);                                                            \
                            __asm__("" : "+x"(wv));                                                                 \
                            _Pragma("GCC unroll 2") for (int s = 0; s < AVX2_ROWS; s++)                             \
                                acc[s][t] = _mm256_fmadd_ps(av[s], wv, acc[s][t]);                                  \
                        }                                                                                           \
                    }                                                                                               \
                } else {                                                                                            \
                    for (int64_t k = 0; k < kf; k += 8) {                                                           \
                        const __m256 av = _mm256_loadu_ps(a[0] + k);                                                \
                        _Pragma("GCC unroll 4") for (int t = 0; t < TILE; t++)                                      \
                            acc[0][t] = _mm256_fmadd_ps(av, LOADW(w[t] + k), acc[0][t]);                            \
                    }                                                                                               \
                }                                                                                                   \
                float sum[AVX2_ROWS * TILE];                                                                        \
                for (int s = 0; s < rows; s++)                                                                      \
                    for (int t = 0; t < TILE; t++) {                                                                \
                        float tail = 0.0f; /* the last K % 8 columns */                                             \
                        for (int64_t k = kf; k < K; k++) tail += a[s][k] * WVALUE(w[t][k]);                         \
                        sum[s * TILE + t] = hsum256(acc[s][t]) + tail;                                              \
                    }                                                                                               \
                tile_store(sum, rows, i0, j0, N, alpha, beta, C, ldc);                                              \
            }                                                                                                       \
        }                                                                                                           \
    }

#define F32_LOADW(p) _mm256_loadu_ps(p)
#define F32_VALUE(x) (x)
#define BF16_LOADW(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
FEWROWS_AVX2_KERNEL(fewrows_f32_avx2, float, F32_LOADW, F32_VALUE)
FEWROWS_AVX2_KERNEL(fewrows_bf16_avx2, uint16_t, BF16_LOADW, loom_bf16_to_f32)

/* rows of bf16 widened to fp32 (exact) */
__attribute__((target("avx2,fma"))) static void widen_bf16(const uint16_t *src, float *dst, int64_t n) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) _mm256_storeu_ps(dst + k, BF16_LOADW(src + k));
    for (; k < n; k++) dst[k] = loom_bf16_to_f32(src[k]);
}

static int has_avx512(void) {
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avx512f") != 0;
    return has;
}

static int has_avx512_bf16(void) {
    static int has = -1;
    if (has < 0) has = has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
    return has;
}

static int has_avx2(void) {
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has;
}

int loom_cpu_fewrows_supported(int bf16) {
    (void)bf16; /* bf16 without AVX512_BF16 is widened to fp32 in the AVX2 kernel */
    return has_avx512() || has_avx2();
}

void loom_cpu_fewrows_f32(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                          int64_t ldb, float beta, float *C, int64_t ldc) {
    if (has_avx512()) fewrows_f32_avx512(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else fewrows_f32_avx2(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int loom_cpu_fewrows_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t *A, int64_t lda,
                          const uint16_t *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (has_avx512_bf16()) {
        fewrows_bf16_avx512(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return 1;
    }
    /* the input rows widened once (exact), not at every weight-row group */
    float *a = malloc((size_t)(M * K) * sizeof(float));
    if (!a) return 0;
    for (int64_t i = 0; i < M; i++) widen_bf16(A + i * lda, a + i * K, K);
    fewrows_bf16_avx2(M, N, K, alpha, a, K, B, ldb, beta, C, ldc);
    free(a);
    return 1;
}
#else
void loom_cpu_fewrows_f32(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                          int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
}
int loom_cpu_fewrows_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t *A, int64_t lda,
                          const uint16_t *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    return 0;
}
int loom_cpu_fewrows_supported(int bf16) {
    (void)bf16;
    return 0;
}
#endif
