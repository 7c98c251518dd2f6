/* Causal self-attention, forward and backward, in blocks of query rows (the flash-attention idea): for
 * a block of up to ATT_BLOCK queries, the scores against the keys it may see are one product into a
 * per-thread (ATT_BLOCK x T) scratch, softmaxed row by row and reduced to the output and each row's
 * log-sum-exp, then reused for the next block. No T x T matrix is kept for any head. The backward
 * recomputes the probabilities from the saved log-sum-exp.
 *
 * The products are small (head size 64 deep, a block of 64 queries against up to T keys), where a BLAS call's
 * packing, zeroing and setup cost a third of its time: they run through tile_product below, register tiles
 * over one packed strip of the right operand at a time, skipping the tiles the causal mask hides (keys are
 * transposed once per head; the backward works on transposed scores, see there). Work is split over (batch, head) in forward and (batch, kv head) in backward, so every gradient
 * element has one writer, and each product adds in a fixed order: deterministic on any thread count. */
#include <stdlib.h>

#include "cpu_impl.h"

#define ATT_BLOCK 64

/* ---- the products: C (+)= A B over register tiles of TILE_ROWS rows x 2 vectors ----
 * A row-major (lda), B row-major (ldb); vectors are the build's widest (16 floats with AVX-512, 8 with AVX, else
 * 4). Each strip of TILE_COLS columns of B is first copied into a dense K x TILE_COLS panel: the operands'
 * row strides here are powers of two or multiples of 2 KiB, which would map a strip's rows onto a few L1 sets
 * and evict it between row tiles (the packing a BLAS does, for the same reason). The causal mask enters as
 * ranges per tile: for the tile of rows r0..r0+mr-1 only columns in [r0 + col_begin, r0 + mr + col_end), and
 * only k in [r0 + k_begin, r0 + mr + k_end), can hold non-zero terms (NO_LIMIT: all). A column strip wholly
 * outside is left unwritten for that tile; the callers read none of it. */
#if defined(__AVX512F__)
#define VEC_FLOATS 16
#elif defined(__AVX__)
#define VEC_FLOATS 8
#else
#define VEC_FLOATS 4 /* SSE: the portable build */
#endif
#define TILE_ROWS 6 /* 6 x 2 accumulators, two B vectors and a broadcast: 15 of AVX2's 16 registers */
#define TILE_COLS (2 * VEC_FLOATS)
#define NO_LIMIT INT64_MIN

typedef float vecf __attribute__((vector_size(VEC_FLOATS * sizeof(float))));

static inline vecf vec_load(const float *p) {
    vecf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vec_store(float *p, vecf v) { memcpy(p, &v, sizeof v); }

typedef struct {
    int64_t col_begin, col_end, k_begin, k_end; /* NO_LIMIT, or offsets from the tile's rows (above) */
} tile_mask;

static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* the longest K of the kernels' products (head size, keys, or a block's queries): the panel's rows */
static inline int64_t panel_rows(int64_t Tk, int64_t hd) {
    const int64_t m = Tk > hd ? Tk : hd;
    return m > ATT_BLOCK ? m : ATT_BLOCK;
}

/* An 8 x 8 block transposed in registers: pairs of rows interleaved, then pairs of pairs, then the halves
 * swapped (the unpack / shuffle / permute sequence of an AVX transpose, left to the compiler's shuffles). */
typedef float vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef int32_t vec8i __attribute__((vector_size(8 * sizeof(int32_t))));

static inline void transpose8x8(float *dst, int64_t ldd, const float *src, int64_t lds, int accumulate) {
    vec8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) memcpy(&r[i], src + i * lds, sizeof r[i]);
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shuffle(r[i], r[i + 1], (vec8i){0, 8, 1, 9, 4, 12, 5, 13});
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], (vec8i){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; h++) {
            u[i + 2 * h] = __builtin_shuffle(t[i + h], t[i + 2 + h], (vec8i){0, 1, 8, 9, 4, 5, 12, 13});
            u[i + 2 * h + 1] = __builtin_shuffle(t[i + h], t[i + 2 + h], (vec8i){2, 3, 10, 11, 6, 7, 14, 15});
        }
    for (int c = 0; c < 4; c++) {
        vec8 lo = __builtin_shuffle(u[c], u[c + 4], (vec8i){0, 1, 2, 3, 8, 9, 10, 11});
        vec8 hi = __builtin_shuffle(u[c], u[c + 4], (vec8i){4, 5, 6, 7, 12, 13, 14, 15});
        if (accumulate) {
            vec8 d;
            memcpy(&d, dst + c * ldd, sizeof d);
            lo += d;
            memcpy(&d, dst + (c + 4) * ldd, sizeof d);
            hi += d;
        }
        memcpy(dst + c * ldd, &lo, sizeof lo);
        memcpy(dst + (c + 4) * ldd, &hi, sizeof hi);
    }
}

/* dst (cols x rows, row stride ldd) = or += the transpose of src's rows x cols block (row stride lds), 8 x 8
 * blocks at a time. Written (not added), the elements are only moved: it transposes pairs of bf16 too. */
static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows, int64_t cols, int accumulate) {
    for (int64_t i0 = 0; i0 < rows; i0 += 8)
        for (int64_t j0 = 0; j0 < cols; j0 += 8) {
            if (i0 + 8 <= rows && j0 + 8 <= cols) {
                transpose8x8(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, accumulate);
                continue;
            }
            const int64_t i1 = i0 + 8 < rows ? i0 + 8 : rows, j1 = j0 + 8 < cols ? j0 + 8 : cols;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) {
                    if (accumulate) dst[j * ldd + i] += src[i * lds + j];
                    else memcpy(dst + j * ldd + i, src + i * lds + j, sizeof(float)); /* bits as they are */
                }
        }
}

/* a tile's accumulators: the first cols columns of its first mr rows stored into (or added to) c */
static inline void tile_store(vecf acc[TILE_ROWS][2], float *c, int64_t ldc, int64_t mr, int64_t cols, int accumulate) {
    for (int64_t r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        if (cols == TILE_COLS) {
            vec_store(cr, accumulate ? vec_load(cr) + acc[r][0] : acc[r][0]);
            vec_store(cr + VEC_FLOATS, accumulate ? vec_load(cr + VEC_FLOATS) + acc[r][1] : acc[r][1]);
        } else {
            float t[TILE_COLS];
            vec_store(t, acc[r][0]);
            vec_store(t + VEC_FLOATS, acc[r][1]);
            for (int64_t j = 0; j < cols; j++) cr[j] = accumulate ? cr[j] + t[j] : t[j];
        }
    }
}

/* one tile: rows a[0..TILE_ROWS) (rows past the matrix repeat the last one and are not stored), the panel
 * (K x TILE_COLS, dense), k in [k0, k1) */
static inline void tile_kernel(const float *const a[TILE_ROWS], const float *panel, int64_t k0, int64_t k1, float *c,
                               int64_t ldc, int64_t mr, int64_t cols, int accumulate) {
    vecf acc[TILE_ROWS][2] = {{{0}}};
    for (int64_t k = k0; k < k1; k++) {
        const vecf b0 = vec_load(panel + k * TILE_COLS), b1 = vec_load(panel + k * TILE_COLS + VEC_FLOATS);
        for (int r = 0; r < TILE_ROWS; r++) {
            const float s = a[r][k];
            acc[r][0] += s * b0;
            acc[r][1] += s * b1;
        }
    }
    tile_store(acc, c, ldc, mr, cols, accumulate);
}

/* The tile of rows r0.. and the column strip j..j+w under the mask: its rows (mr), the columns to store (cols)
 * and the k that can hold non-zero terms [k0, k1); 0 where the mask hides the whole strip from these rows. */
typedef struct {
    int64_t mr, cols, k0, k1;
} tile_span;

static inline int tile_span_of(tile_mask mask, int64_t r0, int64_t M, int64_t j, int64_t w, int64_t N, int64_t K,
                               tile_span *t) {
    t->mr = M - r0 < TILE_ROWS ? M - r0 : TILE_ROWS;
    const int64_t cols = mask.col_end == NO_LIMIT ? N : clamp64(r0 + t->mr + mask.col_end, 0, N);
    if (j >= cols || (mask.col_begin != NO_LIMIT && j + TILE_COLS <= r0 + mask.col_begin)) return 0;
    t->cols = cols - j < w ? cols - j : w;
    t->k0 = mask.k_begin == NO_LIMIT ? 0 : clamp64(r0 + mask.k_begin, 0, K);
    t->k1 = mask.k_end == NO_LIMIT ? K : clamp64(r0 + t->mr + mask.k_end, 0, K);
    if (t->k0 > t->k1) t->k0 = t->k1;
    return 1;
}

/* C (M x N, ldc) = or += A (M x K, lda) B, B being K x N (row stride ldb) or, b_trans, the transpose of an
 * N x K matrix (row stride ldb: the packing transposes it); panel: scratch of K x TILE_COLS floats */
static void tile_product(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                         int b_trans, float *C, int64_t ldc, int accumulate, tile_mask mask, float *panel) {
    for (int64_t j = 0; j < N; j += TILE_COLS) {
        const int64_t w = N - j < TILE_COLS ? N - j : TILE_COLS;
        if (b_trans) {
            if (w < TILE_COLS) memset(panel, 0, (size_t)(K * TILE_COLS) * sizeof(float));
            transpose(panel, TILE_COLS, B + j * ldb, ldb, w, K, 0);
        } else
            for (int64_t k = 0; k < K; k++) {
                const float *bk = B + k * ldb + j;
                float *pk = panel + k * TILE_COLS;
                if (w == TILE_COLS) memcpy(pk, bk, sizeof(float) * TILE_COLS);
                else
                    for (int64_t c = 0; c < TILE_COLS; c++) pk[c] = c < w ? bk[c] : 0.0f;
            }
        for (int64_t r0 = 0; r0 < M; r0 += TILE_ROWS) {
            tile_span t;
            if (!tile_span_of(mask, r0, M, j, w, N, K, &t)) continue;
            const float *a[TILE_ROWS];
            for (int r = 0; r < TILE_ROWS; r++) a[r] = A + (r0 + (r < t.mr ? r : t.mr - 1)) * lda;
            tile_kernel(a, panel, t.k0, t.k1, C + r0 * ldc + j, ldc, t.mr, t.cols, accumulate);
        }
    }
}

/* ---- bf16 products (mixed precision), where the build has AVX512_BF16 ----
 * vdpbf16ps multiplies pairs of bf16 and adds both products into one fp32 lane: the same tiles, two k at a time.
 * A is bf16, row-major, k and k+1 side by side (rows padded to an even length with a zero); B is in pair rows:
 * row p holds, for each column c, (B[2p][c], B[2p+1][c]) as one 32-bit unit, the lower k in the low half (a
 * zero where K is odd). A strip of pair rows is copied into a dense panel as the fp32 product copies rows.
 * Where a mask cuts k at an odd index the pair takes one more k, whose terms the mask knows to be zero (the
 * callers zero the probabilities a query does not see). */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define ATT_BF16 1

static inline int64_t even(int64_t n) { return (n + 1) & ~(int64_t)1; }

/* The operands are rounded by the CPU's own instruction, vcvtneps2bf16: nearest even, as loom_cpu_bf16_round,
 * but reading denormal inputs as zero (terms under 1e-38 here; it is 16 lanes an instruction). The first
 * min(n, 16) floats of x; the rest zero. */

static inline __m256i bf16x16(const float *x, int64_t n) {
    return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(loom_cpu_first_lanes(n), x));
}

/* rows x cols of src (row stride lds) rounded to bf16 into dst (row stride ldd, even), an odd row's pad zero */
static void round_rows(uint16_t *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++) {
        const float *s = src + i * lds;
        uint16_t *d = dst + i * ldd;
        for (int64_t j = 0; j < cols; j += 16)
            _mm256_mask_storeu_epi16(d + j, loom_cpu_first_lanes(cols - j), bf16x16(s + j, cols - j));
        if (cols & 1) d[cols] = 0;
    }
}

/* the pair rows of the K x N matrix src (row stride lds) into dst (row stride ldd) */
static void pairs_of_rows(uint32_t *dst, int64_t ldd, const float *src, int64_t lds, int64_t K, int64_t N) {
    for (int64_t p = 0; 2 * p < K; p++) {
        const float *lo = src + 2 * p * lds, *hi = lo + lds;
        uint32_t *d = dst + p * ldd;
        for (int64_t c = 0; c < N; c += 16) {
            const __m512i l = _mm512_cvtepu16_epi32(bf16x16(lo + c, N - c));
            const __m512i h = 2 * p + 1 < K ? _mm512_cvtepu16_epi32(bf16x16(hi + c, N - c)) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(d + c, loom_cpu_first_lanes(N - c), _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
        }
    }
}

/* the pair rows of the transpose of the N x K matrix src (row stride lds), into dst (row stride ldd): each row of
 * src rounded into tmp (N x even(K)) is a row of pairs already, and the pairs are transposed as 32-bit units */
static void pairs_of_cols(uint32_t *dst, int64_t ldd, const float *src, int64_t lds, int64_t N, int64_t K,
                          uint16_t *tmp) {
    round_rows(tmp, even(K), src, lds, N, K);
    transpose((float *)dst, ldd, (const float *)tmp, even(K) / 2, N, even(K) / 2, 0);
}

static inline void tile_kernel16(const uint16_t *const a[TILE_ROWS], const uint32_t *panel, int64_t p0, int64_t p1,
                                 float *c, int64_t ldc, int64_t mr, int64_t cols, int accumulate) {
    vecf acc[TILE_ROWS][2] = {{{0}}};
    for (int64_t p = p0; p < p1; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(panel + p * TILE_COLS);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(panel + p * TILE_COLS + VEC_FLOATS);
        for (int r = 0; r < TILE_ROWS; r++) {
            uint32_t pair;
            memcpy(&pair, a[r] + 2 * p, sizeof pair);
            const __m512bh s = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], s, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], s, b1);
        }
    }
    tile_store(acc, c, ldc, mr, cols, accumulate);
}

/* C (M x N, ldc) = or += A (M x K, bf16, lda even) B (pair rows, ldb); panel: even(K) / 2 x TILE_COLS units */
static void tile_product16(int64_t M, int64_t N, int64_t K, const uint16_t *A, int64_t lda, const uint32_t *B,
                           int64_t ldb, float *C, int64_t ldc, int accumulate, tile_mask mask, uint32_t *panel) {
    for (int64_t j = 0; j < N; j += TILE_COLS) {
        const int64_t w = N - j < TILE_COLS ? N - j : TILE_COLS;
        for (int64_t p = 0; 2 * p < K; p++) {
            const uint32_t *bp = B + p * ldb + j;
            uint32_t *pp = panel + p * TILE_COLS;
            if (w == TILE_COLS) memcpy(pp, bp, sizeof(uint32_t) * TILE_COLS);
            else
                for (int64_t c = 0; c < TILE_COLS; c++) pp[c] = c < w ? bp[c] : 0u;
        }
        for (int64_t r0 = 0; r0 < M; r0 += TILE_ROWS) {
            tile_span t;
            if (!tile_span_of(mask, r0, M, j, w, N, K, &t)) continue;
            const uint16_t *a[TILE_ROWS];
            for (int r = 0; r < TILE_ROWS; r++) a[r] = A + (r0 + (r < t.mr ? r : t.mr - 1)) * lda;
            tile_kernel16(a, panel, t.k0 / 2, (t.k1 + 1) / 2, C + r0 * ldc + j, ldc, t.mr, t.cols, accumulate);
        }
    }
}
#else
#define ATT_BF16 0
#endif

/* Row i of the block (absolute position i0 + r) sees keys 0..i0+r (causal) or all ld keys: softmax in place
 * over those, zero beyond. s holds raw q.k scores on entry, probabilities on exit; lse gets
 * scale*max + log(sum). p16 (bf16 products): the probabilities go there instead, rounded, rows of even(ld)
 * (s is left holding the exponentials): the last pass writes them while the row is in L1, where a pass of
 * its own over the block read them back from L2. */
#if defined(__AVX512F__)
/* AVX-512: every pass in 16 lanes, a row's last few under a mask. The compiler's loops ran their tails (up
 * to 15 of a causal row's positions, a different count each row) one by one, the exponential included, and
 * reduced through the stack: the softmax was a third of the bf16 forward at T 1024 (0.21 of 0.64 ms a head,
 * one thread). */
static void softmax_rows(float *s, int64_t ld, float *lse, int64_t i0, int64_t rows, float scale, int causal,
                         uint16_t *p16) {
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t r = 0; r < rows; r++) {
        float *p = s + r * ld;
        const int64_t n = causal ? i0 + r + 1 : ld;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = loom_cpu_first_lanes(n - j);
            vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, p + j));
        }
        const float mx = _mm512_reduce_max_ps(vmax);
        const __m512 vmx = _mm512_set1_ps(mx);
        __m512 vsum = _mm512_setzero_ps();
        const int64_t whole = n & ~(int64_t)15;
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = loom_cpu_first_lanes(n - j);
            const __m512 e = loom_cpu_exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + j), vmx), vscale));
            _mm512_mask_storeu_ps(p + j, m, e);
            if (j < whole) vsum = _mm512_add_ps(vsum, e);
        }
        /* the sum in the order GCC's vectorised loop had (the portable one below, at -march=native with
         * AVX-512): 16 lanes over the whole vectors, the tail added one by one into lane 0, then the lanes in
         * turn. The same bits as before this loop was written by hand: a small model's training
         * (tests/test_lora_cli.py) takes another path after hundreds of steps when one sum's last bit moves. */
        float lane[16], sum = 0.0f;
        _mm512_storeu_ps(lane, vsum);
        for (int64_t j = whole; j < n; j++) lane[0] += p[j];
        for (int l = 0; l < 16; l++) sum += lane[l];
        const float inv = 1.0f / sum;
        lse[r] = mx * scale + logf(sum);
        const __m512 vinv = _mm512_set1_ps(inv);
#if ATT_BF16
        if (p16) { /* p * inv rounded by vcvtneps2bf16, as round_rows would round the fp32 row; zeros after */
            uint16_t *d = p16 + r * even(ld);
            for (int64_t j = 0; j < even(ld); j += 16) {
                const __mmask16 m = loom_cpu_first_lanes(n - j > 0 ? n - j : 0);
                const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + j), vinv);
                _mm256_mask_storeu_epi16(d + j, loom_cpu_first_lanes(even(ld) - j), (__m256i)_mm512_cvtneps_pbh(v));
            }
            continue;
        }
#endif
        for (int64_t j = 0; j < ld; j += 16) { /* zeros past n */
            const __mmask16 m = loom_cpu_first_lanes(n - j > 0 ? n - j : 0);
            _mm512_mask_storeu_ps(p + j, loom_cpu_first_lanes(ld - j),
                                  _mm512_maskz_mul_ps(m, _mm512_maskz_loadu_ps(m, p + j), vinv));
        }
    }
    (void)p16;
}
#else
static void softmax_rows(float *s, int64_t ld, float *lse, int64_t i0, int64_t rows, float scale, int causal,
                         uint16_t *p16) {
    (void)p16; /* no AVX512_BF16 in this build: the products are fp32 */
    for (int64_t r = 0; r < rows; r++) {
        float *p = s + r * ld;
        const int64_t n = causal ? i0 + r + 1 : ld;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < n; j++) mx = p[j] > mx ? p[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; j++) {
            p[j] = loom_fast_expf((p[j] - mx) * scale);
            sum += p[j];
        }
        const float inv = 1.0f / sum;
        lse[r] = mx * scale + logf(sum);
#pragma omp simd
        for (int64_t j = 0; j < n; j++) p[j] *= inv;
        for (int64_t j = n; j < ld; j++) p[j] = 0.0f;
    }
}
#endif

static int cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                       const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                       int64_t KV, int64_t hd, int causal, int bf16);
static int cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                        int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                        int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                        int causal, int add, int bf16);

/* a kernel whose threads could not all allocate their scratch fails (rather than skip their work) */
static loom_status scratch_status(int ok) {
    LOOM_CHECK(ok, LOOM_ERR_NOMEM, "out of memory for the attention kernel's per-thread scratch");
    return LOOM_OK;
}

loom_status loom_cpu_attention_forward(loom_backend *be, const loom_attention_forward_args *a) {
    const int64_t row = (a->H + 2 * a->KV) * a->hd; /* q, k and v of a position side by side */
    return scratch_status(cpu_attention_block_forward(be, a->out, a->lse, a->qkv, row, a->qkv + a->H * a->hd, row, a->B,
                                                      a->T, a->T, a->H, a->KV, a->hd, 1, a->bf16_products));
}

loom_status loom_cpu_attention_backward(loom_backend *be, const loom_attention_backward_args *a) {
    const int64_t row = (a->H + 2 * a->KV) * a->hd;
    return scratch_status(cpu_attention_block_backward(be, a->dqkv, a->dqkv + a->H * a->hd, a->dout, a->qkv, row,
                                                       a->qkv + a->H * a->hd, row, a->out, a->lse, a->B, a->T, a->T,
                                                       a->H, a->KV, a->hd, 1, 0, a->bf16_products));
}

/* ---- one block of queries against one block of keys and values (ring attention) ----
 * Queries: rows of stride qs, head h at column h*hd. Keys and values: rows of stride kvs, kv head g's key at
 * column g*hd and value at (KV+g)*hd. causal: the two blocks cover the same positions (key j visible to
 * query i iff j <= i); otherwise every key is visible (an earlier block of the sequence). bf16: the products
 * on bf16 operands where the build has AVX512_BF16 (else it is ignored: fp32 products). */

/* the per-thread scratch of the bf16 products (pair rows and rounded copies of a head's operands): the forward's
 * (a, tmp, kp, vp) or the backward's (the rest, a and tmp sized for it); the others NULL */
typedef struct {
    uint16_t *a, *tmp, *k16, *v16, *kt16, *ds16;
    uint32_t *kp, *vp, *qc, *doc, *qr, *dor, *dsp;
} att16;

#if ATT_BF16
/* 0: out of memory (what was allocated is freed by att16_free) */
static int att16_alloc(att16 *w, int64_t Tk, int64_t hd, int backward) {
    const int64_t hp = even(hd), tp = even(Tk);
    const size_t h2 = sizeof(uint16_t), h4 = sizeof(uint32_t);
    if (!backward) {
        w->a = malloc((size_t)(ATT_BLOCK * (hp > tp ? hp : tp)) * h2); /* a block's queries, or probabilities */
        w->tmp = malloc((size_t)(Tk * hp) * h2);
        w->kp = malloc((size_t)(hp / 2 * Tk) * h4);
        w->vp = malloc((size_t)(tp / 2 * hd) * h4);
        return w->a && w->tmp && w->kp && w->vp;
    }
    w->a = malloc((size_t)(Tk * ATT_BLOCK) * h2);    /* a block's transposed probabilities */
    w->ds16 = malloc((size_t)(Tk * ATT_BLOCK) * h2); /* and its transposed dS */
    w->tmp = malloc((size_t)(ATT_BLOCK * hp) * h2);
    w->k16 = malloc((size_t)(Tk * hp) * h2);
    w->v16 = malloc((size_t)(Tk * hp) * h2);
    w->kt16 = malloc((size_t)(hd * tp) * h2);
    w->qc = malloc((size_t)(hp / 2 * ATT_BLOCK) * h4);
    w->doc = malloc((size_t)(hp / 2 * ATT_BLOCK) * h4);
    w->qr = malloc((size_t)(ATT_BLOCK / 2 * hd) * h4);
    w->dor = malloc((size_t)(ATT_BLOCK / 2 * hd) * h4);
    w->dsp = malloc((size_t)(tp / 2 * ATT_BLOCK) * h4);
    return w->a && w->ds16 && w->tmp && w->k16 && w->v16 && w->kt16 && w->qc && w->doc && w->qr && w->dor && w->dsp;
}
#endif

static void att16_free(att16 *w) {
    void *all[] = {w->a, w->tmp, w->k16, w->v16, w->kt16, w->ds16, w->kp, w->vp, w->qc, w->doc, w->qr, w->dor, w->dsp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* One (batch, query head) of the forward: per block of queries, the scores against the keys it may see, their
 * softmax, and the probabilities times the values. kt: scratch (fp32 products: the keys transposed once); w16
 * (bf16 products): the keys and values to pair rows once, the block's queries and probabilities rounded. */
static void head_forward(float *out, int64_t C, float *lse, const float *Q, int64_t qs, const float *K,
                         const float *V, int64_t kvs, int64_t Tq, int64_t Tk, int64_t hd, int causal, float *s,
                         float *kt, float *panel, att16 *w16) {
    const float scale = 1.0f / sqrtf((float)hd);
    (void)w16; /* builds without AVX512_BF16 */
#if ATT_BF16
    if (w16) {
        pairs_of_cols(w16->kp, Tk, K, kvs, Tk, hd, w16->tmp); /* q.k: pairs over d, a column per key */
        pairs_of_rows(w16->vp, hd, V, kvs, Tk, hd);           /* p.v: pairs over keys */
    } else
#endif
        transpose(kt, Tk, K, kvs, Tk, hd, 0);
    for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
        const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, n = causal ? i0 + rows : Tk;
        const tile_mask cols_seen = {NO_LIMIT, causal ? i0 : NO_LIMIT, NO_LIMIT, NO_LIMIT};
        const tile_mask keys_seen = {NO_LIMIT, NO_LIMIT, NO_LIMIT, causal ? i0 : NO_LIMIT};
        const float *q = Q + i0 * qs;
        float *o = out + i0 * C;
#if ATT_BF16
        if (w16) {
            round_rows(w16->a, even(hd), q, qs, rows, hd);
            tile_product16(rows, n, hd, w16->a, even(hd), w16->kp, Tk, s, n, 0, cols_seen, (uint32_t *)panel);
            softmax_rows(s, n, lse + i0, i0, rows, scale, causal, w16->a);
            tile_product16(rows, hd, n, w16->a, even(n), w16->vp, hd, o, C, 0, keys_seen, (uint32_t *)panel);
            continue;
        }
#endif
        tile_product(rows, n, hd, q, qs, kt, Tk, 0, s, n, 0, cols_seen, panel);
        softmax_rows(s, n, lse + i0, i0, rows, scale, causal, NULL);
        tile_product(rows, hd, n, s, n, V, kvs, 0, o, C, 0, keys_seen, panel);
    }
}

static int cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                       const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                       int64_t KV, int64_t hd, int causal, int bf16) {
    (void)be;
    const int64_t group = H / KV, C = H * hd, pad_rows = panel_rows(Tk, hd);
    int ok = 1; /* a thread without its scratch clears it: the kernel fails rather than skip work */
#pragma omp parallel
    {
        const int with16 = bf16 && ATT_BF16; /* the bf16 products: no transposed keys (kt) */
        float *s = malloc((size_t)(ATT_BLOCK * Tk) * sizeof(float));
        float *kt = with16 ? NULL : malloc((size_t)(hd * Tk) * sizeof(float));
        float *panel = malloc((size_t)(pad_rows * TILE_COLS) * sizeof(float));
        att16 w = {0}, *w16 = NULL;
#if ATT_BF16
        if (with16) w16 = att16_alloc(&w, Tk, hd, 0) ? &w : NULL;
#endif
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                if (!s || !panel || (with16 ? !w16 : !kt)) {
#pragma omp atomic write
                    ok = 0;
                    continue;
                }
                const int64_t g = h / group;
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                head_forward(out + b * Tq * C + h * hd, C, lse + (b * H + h) * Tq, q + b * Tq * qs + h * hd, qs, K, V,
                             kvs, Tq, Tk, hd, causal, s, kt, panel, w16);
            }
        free(s);
        free(kt);
        free(panel);
        att16_free(&w);
    }
    return ok;
}

loom_status loom_cpu_attention_block_forward(loom_backend *be, const loom_attention_block_forward_args *a) {
    return scratch_status(cpu_attention_block_forward(be, a->out, a->lse, a->q, a->qs, a->kv, a->kvs, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal, a->bf16_products));
}

/* The softmax's backward on a block's transposed scores (keys x queries): pt holds the scores St on entry and
 * the probabilities on exit (exp(scale s - lse)); dpt holds dPt on entry and dSt = P (dP - D) scale on exit,
 * D being each query's dO . O; both zero where a query does not see the key (the products read them so).
 * w16 (bf16 products): P and dS go rounded into its a and ds16 (rows of even(rows)), and dS's pair rows
 * over keys into dsp (the dQ product's operand), each key's row while it is in L1; pt and dpt are left as
 * scratch. AVX-512: a key's queries 16 at a time, those it is not seen by masked (each value's arithmetic is
 * the scalar loop's, bit for bit). */
static void softmax_backward_t(float *pt, float *dpt, float *dcoef, const float *dO, const float *O, int64_t C,
                               const float *L, int64_t n, int64_t rows, int64_t i0, int64_t hd, int causal,
                               float scale, att16 *w16) {
    for (int64_t r = 0; r < rows; r++) {
        const float *dor = dO + r * C, *orow = O + r * C;
        float D = 0.0f;
#pragma omp simd reduction(+ : D)
        for (int64_t d = 0; d < hd; d++) D += dor[d] * orow[d];
        dcoef[r] = D;
    }
    (void)w16;
#if defined(__AVX512F__)
    const __m512 vscale = _mm512_set1_ps(scale);
    const int64_t rp = (rows + 1) & ~(int64_t)1;
    for (int64_t j = 0; j < n; j++) {
        float *pj = pt + j * rows, *dpj = dpt + j * rows;
        const int64_t first = causal && j > i0 ? j - i0 : 0; /* queries before it do not see key j */
        for (int64_t r = 0; r < rp; r += 16) {
            const __mmask16 in = loom_cpu_first_lanes(rows - r); /* the queries; past them an even row's pad */
            const __mmask16 seen = in & (__mmask16)~loom_cpu_first_lanes(first - r > 0 ? first - r : 0);
            const __m512 p = _mm512_maskz_mov_ps(seen, loom_cpu_exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(in, pj + r),
                                                                                     vscale, _mm512_maskz_loadu_ps(in, L + r))));
            /* masked too: a product leaves what a key is not seen by unwritten (any value, NaN included) */
            const __m512 ds = _mm512_maskz_mul_ps(
                seen, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(in, dpj + r), _mm512_maskz_loadu_ps(in, dcoef + r))),
                vscale);
#if ATT_BF16
            if (w16) {
                const __mmask16 out = loom_cpu_first_lanes(rp - r);
                _mm256_mask_storeu_epi16(w16->a + j * rp + r, out, (__m256i)_mm512_cvtneps_pbh(p));
                _mm256_mask_storeu_epi16(w16->ds16 + j * rp + r, out, (__m256i)_mm512_cvtneps_pbh(ds));
                continue;
            }
#endif
            _mm512_mask_storeu_ps(pj + r, in, p);
            _mm512_mask_storeu_ps(dpj + r, in, ds);
        }
#if ATT_BF16
        if (w16 && (j & 1 || j == n - 1)) { /* keys j - 1, j (or j and a zero) as pairs, a unit per query */
            const uint16_t *lo = w16->ds16 + (j & ~(int64_t)1) * rp;
            uint32_t *d = w16->dsp + (j / 2) * rows;
            for (int64_t c = 0; c < rows; c += 16) {
                const __mmask16 m = loom_cpu_first_lanes(rows - c);
                const __m512i l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo + c));
                const __m512i h = j & 1 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo + rp + c))
                                        : _mm512_setzero_si512();
                _mm512_mask_storeu_epi32(d + c, m, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
            }
        }
#endif
    }
#else
    for (int64_t j = 0; j < n; j++) {
        float *pj = pt + j * rows, *dpj = dpt + j * rows;
        const int64_t first = causal && j > i0 ? j - i0 : 0; /* queries before it do not see key j */
        for (int64_t r = 0; r < first; r++) pj[r] = dpj[r] = 0.0f;
#pragma omp simd
        for (int64_t r = first; r < rows; r++) {
            const float p = loom_fast_expf(pj[r] * scale - L[r]);
            pj[r] = p;
            dpj[r] = p * (dpj[r] - dcoef[r]) * scale;
        }
    }
#endif
}

/* the per-thread scratch of the backward (fp32 products; w16 adds the bf16 products') */
typedef struct {
    float *pt, *dpt, *kt, *dqt, *dk_sum, *dv_sum, *dcoef, *panel;
    att16 *w16;
} bwd_scratch;

/* One query head's block of queries i0.. in the backward of its (batch, kv head): dK and dV added into the
 * dense sums, dQ written or added. The block's Q, dO, O, L, dQ: from its first row. */
static void block_backward(const bwd_scratch *w, const float *K, const float *V, int64_t kvs, const float *Q,
                           int64_t qs, const float *dO, const float *O, int64_t C, const float *L, float *dQ,
                           int64_t i0, int64_t rows, int64_t Tk, int64_t hd, int causal, int add) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t n = causal ? i0 + rows : Tk;
    /* key j is seen by the block's queries r >= j - i0 */
    const tile_mask seen_by = {causal ? -i0 : NO_LIMIT, NO_LIMIT, NO_LIMIT, NO_LIMIT};
    const tile_mask k_seen_by = {NO_LIMIT, NO_LIMIT, causal ? -i0 : NO_LIMIT, NO_LIMIT};
    const tile_mask no_mask = {NO_LIMIT, NO_LIMIT, NO_LIMIT, NO_LIMIT};
#if ATT_BF16
    if (w->w16) {
        att16 *v = w->w16;
        uint32_t *panel = (uint32_t *)w->panel;
        const int64_t rp = even(rows);
        pairs_of_cols(v->qc, rows, Q, qs, rows, hd, v->tmp);  /* St = K Q^T: pairs over d, a column per query */
        pairs_of_cols(v->doc, rows, dO, C, rows, hd, v->tmp); /* dPt = V dO^T */
        tile_product16(n, rows, hd, v->k16, even(hd), v->qc, rows, w->pt, rows, 0, seen_by, panel);
        tile_product16(n, rows, hd, v->v16, even(hd), v->doc, rows, w->dpt, rows, 0, seen_by, panel);
        /* P and dS rounded into a and ds16; dS's pairs over keys into dsp, for dQ^T = K^T dS^T */
        softmax_backward_t(w->pt, w->dpt, w->dcoef, dO, O, C, L, n, rows, i0, hd, causal, scale, v);
        pairs_of_rows(v->dor, hd, dO, C, rows, hd); /* dV += P^T dO: pairs over queries */
        pairs_of_rows(v->qr, hd, Q, qs, rows, hd);  /* dK += dS^T Q */
        tile_product16(n, hd, rows, v->a, rp, v->dor, hd, w->dv_sum, hd, 1, k_seen_by, panel);
        tile_product16(n, hd, rows, v->ds16, rp, v->qr, hd, w->dk_sum, hd, 1, k_seen_by, panel);
        tile_product16(hd, rows, n, v->kt16, even(Tk), v->dsp, rows, w->dqt, rows, 0, no_mask, panel);
        transpose(dQ, qs, w->dqt, rows, hd, rows, add);
        return;
    }
#endif
    tile_product(n, rows, hd, K, kvs, Q, qs, 1, w->pt, rows, 0, seen_by, w->panel);   /* St */
    tile_product(n, rows, hd, V, kvs, dO, C, 1, w->dpt, rows, 0, seen_by, w->panel); /* dPt */
    softmax_backward_t(w->pt, w->dpt, w->dcoef, dO, O, C, L, n, rows, i0, hd, causal, scale, NULL);
    /* dV += P^T dO_blk; dK += dS^T Q_blk (both into the dense sums); dQ_blk += dS K, as its transpose K^T dS^T */
    tile_product(n, hd, rows, w->pt, rows, dO, C, 0, w->dv_sum, hd, 1, k_seen_by, w->panel);
    tile_product(n, hd, rows, w->dpt, rows, Q, qs, 0, w->dk_sum, hd, 1, k_seen_by, w->panel);
    tile_product(hd, rows, n, w->kt, Tk, w->dpt, rows, 0, w->dqt, rows, 0, no_mask, w->panel);
    transpose(dQ, qs, w->dqt, rows, hd, rows, add);
}

/* The backward works on the transposes of a block's scores, St = K Q_blk^T (keys x queries): the two products
 * into dK and dV then read them in place (adding into dense per-(batch, kv head) sums, added to dkv once at the
 * end), and only the block's small Q and dO (packed) and dQ's addend are transposed. add: the gradients add
 * into dq and dkv (ring attention's blocks); else they are written, every element once (the whole attention). */
static int cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                        int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                        int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                        int causal, int add, int bf16) {
    (void)be;
    const int64_t group = H / KV, C = H * hd, pad_rows = panel_rows(Tk, hd);
    int ok = 1;
#pragma omp parallel
    {
        bwd_scratch w = {malloc((size_t)(Tk * ATT_BLOCK) * sizeof(float)), malloc((size_t)(Tk * ATT_BLOCK) * sizeof(float)),
                         malloc((size_t)(hd * Tk) * sizeof(float)), malloc((size_t)(hd * ATT_BLOCK) * sizeof(float)),
                         malloc((size_t)(Tk * hd) * sizeof(float)), malloc((size_t)(Tk * hd) * sizeof(float)),
                         malloc(ATT_BLOCK * sizeof(float)), malloc((size_t)(pad_rows * TILE_COLS) * sizeof(float)), NULL};
        const int with16 = bf16 && ATT_BF16;
        att16 w16 = {0};
#if ATT_BF16
        if (with16) w.w16 = att16_alloc(&w16, Tk, hd, 1) ? &w16 : NULL;
#endif
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t g = 0; g < KV; g++) {
                if (!w.pt || !w.dpt || !w.kt || !w.dqt || !w.dk_sum || !w.dv_sum || !w.dcoef || !w.panel ||
                    (with16 && !w.w16)) {
#pragma omp atomic write
                    ok = 0;
                    continue;
                }
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                float *dK = dkv + b * Tk * kvs + g * hd, *dV = dkv + b * Tk * kvs + (KV + g) * hd;
                transpose(w.kt, Tk, K, kvs, Tk, hd, 0);
#if ATT_BF16
                if (w.w16) { /* the kv head's operands in bf16, once */
                    round_rows(w16.k16, even(hd), K, kvs, Tk, hd);
                    round_rows(w16.v16, even(hd), V, kvs, Tk, hd);
                    round_rows(w16.kt16, even(Tk), w.kt, Tk, hd, Tk);
                }
#endif
                memset(w.dk_sum, 0, (size_t)(Tk * hd) * sizeof(float));
                memset(w.dv_sum, 0, (size_t)(Tk * hd) * sizeof(float));
                for (int64_t h = g * group; h < (g + 1) * group; h++)
                    for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
                        const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, r0 = b * Tq + i0;
                        block_backward(&w, K, V, kvs, q + r0 * qs + h * hd, qs, dout + r0 * C + h * hd,
                                       out + r0 * C + h * hd, C, lse + (b * H + h) * Tq + i0, dq + r0 * qs + h * hd, i0,
                                       rows, Tk, hd, causal, add);
                    }
                for (int64_t j = 0; j < Tk; j++) {
                    float *dk = dK + j * kvs, *dv = dV + j * kvs;
                    const float *sk = w.dk_sum + j * hd, *sv = w.dv_sum + j * hd;
                    if (add)
#pragma omp simd
                        for (int64_t d = 0; d < hd; d++) dk[d] += sk[d], dv[d] += sv[d];
                    else
                        memcpy(dk, sk, (size_t)hd * sizeof(float)), memcpy(dv, sv, (size_t)hd * sizeof(float));
                }
            }
        free(w.pt);
        free(w.dpt);
        free(w.kt);
        free(w.dqt);
        free(w.dk_sum);
        free(w.dv_sum);
        free(w.dcoef);
        free(w.panel);
        att16_free(&w16);
    }
    return ok;
}

loom_status loom_cpu_attention_block_backward(loom_backend *be, const loom_attention_block_backward_args *a) {
    return scratch_status(cpu_attention_block_backward(be, a->dq, a->dkv, a->dout, a->q, a->qs, a->kv, a->kvs, a->out, a->lse, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal, 1, a->bf16_products));
}

static void cpu_attention_merge(loom_backend *be, float *out, float *lse, const float *out_b, const float *lse_b,
                              int64_t B, int64_t T, int64_t H, int64_t hd) {
    (void)be;
    const int64_t C = H * hd;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                float *la = lse + (b * H + h) * T + t;
                const float lb = lse_b[(b * H + h) * T + t];
                const float m = *la > lb ? *la : lb;
                const float wa = expf(*la - m), wb = expf(lb - m), inv = 1.0f / (wa + wb);
                float *o = out + (b * T + t) * C + h * hd;
                const float *ob = out_b + (b * T + t) * C + h * hd;
#pragma omp simd
                for (int64_t d = 0; d < hd; d++) o[d] = (o[d] * wa + ob[d] * wb) * inv;
                *la = m + logf(wa + wb);
            }
}

loom_status loom_cpu_attention_merge(loom_backend *be, const loom_attention_merge_args *a) {
    cpu_attention_merge(be, a->out, a->lse, a->out_b, a->lse_b, a->B, a->T, a->H, a->hd);
    return LOOM_OK;
}

/* Query rows against n cached positions (paged or not): per (row, head), scores, a max-subtracted softmax,
 * the weighted sum of values (rows and heads in parallel; each one's arithmetic in a fixed order, so a row's
 * bits do not depend on the others: loom serve --batch-invariant runs prompts through here too). The scores
 * live in DECODE_ROWS per-thread rows of n floats: a prompt's rows x heads x n would be a fresh allocation,
 * faulted in, at every layer (12.6 MB for 512 rows of GPT-2 124M). */
static inline int64_t decode_row_offset(const loom_attention_decode_args *a, int64_t j) {
    if (!a->blocks) return j * a->ld;
    return (int64_t)a->blocks[j / a->block_len] * a->block_stride + (j % a->block_len) * a->ld;
}

/* Up to DECODE_ROWS query rows at a time against one kv head: row i sees the first seen + i * step positions
 * (step 1: consecutive rows of one head, causal among themselves; step 0: one position's query heads of a kv
 * group). Each (row, position) runs the same arithmetic however many rows are together (what batch invariance
 * rests on); together, a key or value loaded once serves every row. */
#define DECODE_ROWS 4

typedef struct {
    const float *k, *v;
    const uint16_t *k16, *v16;
    const int64_t *off;
    int64_t hd;
    float scale;
} decode_head;

/* softmax of row i's scores s[0..seen) in place, as weights: max-subtracted exponentials over their sum */
static void decode_softmax(float *s, int64_t seen);

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* AVX-512. A score is 16 lanes of multiply-adds over the head, a chunk of 16 at a time, then a fixed tree of
 * pairwise sums; 16 such trees run at once (loom_cpu_sum16: 45 shuffles and adds where 16 reductions take ~130),
 * for 16 positions of one row or 4 positions of 4 rows. A value is one multiply-add chain per lane, in position
 * order. bf16 is a constant in each caller, so that no load asks which cache it reads. */
static inline __m512 decode_load(const float *x, const uint16_t *x16, int64_t at, __mmask16 m, int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x16 + at)), 16));
    return _mm512_maskz_loadu_ps(m, x + at);
}

/* scores of R rows (R == 1: 16 positions at a time; else 4 rows, q[i] repeating the last for i >= R, 4 positions
 * at a time) at positions [j0, j1), into s[i] + j */
static inline __attribute__((always_inline)) void decode_scores(const decode_head *d, const float *const q[DECODE_ROWS],
                                                                int R, int64_t kvo, int64_t j0, int64_t j1,
                                                                float *const s[DECODE_ROWS], int bf16) {
    const int per = R == 1 ? 16 : 4; /* positions per row in a tile of 16 sums */
    for (int64_t jb = j0; jb < j1; jb += per) {
        __m512 acc[16];
        int64_t at[16];
        for (int t = 0; t < per; t++) at[t] = d->off[jb + t < j1 ? jb + t : jb] + kvo; /* past j1: a copy, not stored */
        for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t c = 0; c < d->hd; c += 16) {
            const __mmask16 m = loom_cpu_first_lanes(d->hd - c);
            if (R == 1) {
                const __m512 qc = _mm512_maskz_loadu_ps(m, q[0] + c);
                for (int t = 0; t < 16; t++)
                    acc[t] = _mm512_fmadd_ps(qc, decode_load(d->k, d->k16, at[t] + c, m, bf16), acc[t]);
            } else {
                __m512 kc[4];
                for (int t = 0; t < 4; t++) kc[t] = decode_load(d->k, d->k16, at[t] + c, m, bf16);
                for (int i = 0; i < 4; i++) {
                    const __m512 qc = _mm512_maskz_loadu_ps(m, q[i] + c);
                    for (int t = 0; t < 4; t++) acc[4 * i + t] = _mm512_fmadd_ps(qc, kc[t], acc[4 * i + t]);
                }
            }
        }
        /* lane per * i + t: row i's score at position jb + t */
        const __m512 sc = _mm512_mul_ps(loom_cpu_sum16(acc), _mm512_set1_ps(d->scale));
        if (R == 1) {
            _mm512_mask_storeu_ps(s[0] + jb, loom_cpu_first_lanes(j1 - jb), sc);
        } else {
            float lane[16];
            _mm512_storeu_ps(lane, sc);
            const int64_t n = j1 - jb < 4 ? j1 - jb : 4;
            for (int i = 0; i < R; i++) memcpy(s[i] + jb, lane + 4 * i, (size_t)n * sizeof(float));
        }
    }
}

/* o[i] = the weights s[i] at positions [0, seen + i * step) against the values, for R rows: each lane two chains of
 * multiply-adds, over the even and over the odd positions in order (one chain would wait on its latency at
 * every position of a lone row), added at the end. A lone row takes 64 floats of the head at a time, 4 rows 32
 * (16 accumulators either way): the positions all rows see with each value loaded once, then each later row's
 * last few. */
static inline __attribute__((always_inline)) void decode_values(const decode_head *d, int R, int64_t kvo, int64_t seen,
                                                                int64_t step, float *const s[DECODE_ROWS],
                                                                float *const o[DECODE_ROWS], int bf16) {
    const int C = R == 1 ? 4 : 2; /* vectors of the head per pass */
    for (int64_t c0 = 0; c0 < d->hd; c0 += 16 * C) {
        __m512 acc[DECODE_ROWS][4][2];
        __mmask16 m[4];
        for (int c = 0; c < C; c++) m[c] = c0 + 16 * c < d->hd ? loom_cpu_first_lanes(d->hd - c0 - 16 * c) : 0;
        for (int i = 0; i < R; i++)
            for (int c = 0; c < C; c++) acc[i][c][0] = acc[i][c][1] = _mm512_setzero_ps();
        int64_t j = 0;
        for (; j + 1 < seen; j += 2)
            for (int p = 0; p < 2; p++) {
                const int64_t at = d->off[j + p] + kvo + c0;
                __m512 vc[4];
                for (int c = 0; c < C; c++) vc[c] = decode_load(d->v, d->v16, at + 16 * c, m[c], bf16);
                for (int i = 0; i < R; i++) {
                    const __m512 w = _mm512_set1_ps(s[i][j + p]);
                    for (int c = 0; c < C; c++) acc[i][c][p] = _mm512_fmadd_ps(w, vc[c], acc[i][c][p]);
                }
            }
        for (int i = 0; i < R; i++) /* the rest, each position into its parity's chain */
            for (int64_t k = j; k < seen + i * step; k++) {
                const __m512 w = _mm512_set1_ps(s[i][k]);
                const int p = (int)(k & 1);
                for (int c = 0; c < C; c++) {
                    const __m512 v = decode_load(d->v, d->v16, d->off[k] + kvo + c0 + 16 * c, m[c], bf16);
                    if (p) acc[i][c][1] = _mm512_fmadd_ps(w, v, acc[i][c][1]);
                    else acc[i][c][0] = _mm512_fmadd_ps(w, v, acc[i][c][0]);
                }
            }
        for (int i = 0; i < R; i++)
            for (int c = 0; c < C; c++)
                _mm512_mask_storeu_ps(o[i] + c0 + 16 * c, m[c], _mm512_add_ps(acc[i][c][0], acc[i][c][1]));
    }
}

static inline __attribute__((always_inline)) void decode_rows_body(const decode_head *d,
                                                                   const float *const q[DECODE_ROWS], int R,
                                                                   int64_t kvo, int64_t seen, int64_t step,
                                                                   float *const s[DECODE_ROWS],
                                                                   float *const o[DECODE_ROWS], int bf16) {
    decode_scores(d, q, R, kvo, 0, seen, s, bf16); /* the positions every row sees */
    for (int i = 1; step && i < R; i++) { /* and each later row's own last i, alone */
        const float *qi[DECODE_ROWS] = {q[i]};
        float *si[DECODE_ROWS] = {s[i]};
        decode_scores(d, qi, 1, kvo, seen, seen + i, si, bf16);
    }
    for (int i = 0; i < R; i++) decode_softmax(s[i], seen + i * step);
    decode_values(d, R, kvo, seen, step, s, o, bf16);
}

/* R and bf16 constants in each body (a row count known only at run time keeps the accumulators on the stack:
 * one row over 96 positions took 1.5x as long: 7.1 against 4.5 us a call, 2 threads) */
static void decode_rows(const decode_head *d, const float *const q[DECODE_ROWS], int R, int64_t kvo, int64_t seen,
                        int64_t step, float *const s[DECODE_ROWS], float *const o[DECODE_ROWS]) {
#define DECODE_ROWS_CASE(r)                                                   \
    case r:                                                                   \
        if (d->k16) decode_rows_body(d, q, r, kvo, seen, step, s, o, 1);      \
        else decode_rows_body(d, q, r, kvo, seen, step, s, o, 0);             \
        break;
    switch (R) {
        DECODE_ROWS_CASE(1)
        DECODE_ROWS_CASE(2)
        DECODE_ROWS_CASE(3)
        DECODE_ROWS_CASE(4)
    }
#undef DECODE_ROWS_CASE
}

static void decode_softmax(float *s, int64_t seen) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < seen; j += 16) {
        const __mmask16 m = loom_cpu_first_lanes(seen - j);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + j));
    }
    const float top = _mm512_reduce_max_ps(mx);
#pragma omp simd
    for (int64_t j = 0; j < seen; j++) s[j] = loom_fast_expf(s[j] - top);
    __m512 part = _mm512_setzero_ps();
    for (int64_t j = 0; j < seen; j += 16)
        part = _mm512_add_ps(part, _mm512_maskz_loadu_ps(loom_cpu_first_lanes(seen - j), s + j));
    const float sum = _mm512_reduce_add_ps(part);
#pragma omp simd
    for (int64_t j = 0; j < seen; j++) s[j] /= sum;
}
#else
/* without AVX-512 (the portable build, AVX2 machines): one row at a time, the compiler's vectorised dot
 * products, the exponentials' sum in order */
static void decode_rows(const decode_head *d, const float *const q[DECODE_ROWS], int R, int64_t kvo, int64_t seen,
                        int64_t step, float *const s[DECODE_ROWS], float *const o[DECODE_ROWS]) {
    const int64_t hd = d->hd;
    for (int i = 0; i < R; i++) {
        const int64_t n = seen + i * step;
        for (int64_t j = 0; j < n; j++) {
            float dot = 0.0f;
            if (d->k16) {
                const uint16_t *k = d->k16 + d->off[j] + kvo;
#pragma omp simd reduction(+ : dot)
                for (int64_t e = 0; e < hd; e++) dot += q[i][e] * loom_cpu_bf16_widen(k[e]);
            } else {
                const float *k = d->k + d->off[j] + kvo;
#pragma omp simd reduction(+ : dot)
                for (int64_t e = 0; e < hd; e++) dot += q[i][e] * k[e];
            }
            s[i][j] = dot * d->scale;
        }
        decode_softmax(s[i], n);
        memset(o[i], 0, (size_t)hd * sizeof(float));
        for (int64_t j = 0; j < n; j++) {
            const float w = s[i][j];
            if (d->v16) {
                const uint16_t *v = d->v16 + d->off[j] + kvo;
#pragma omp simd
                for (int64_t e = 0; e < hd; e++) o[i][e] += w * loom_cpu_bf16_widen(v[e]);
            } else {
                const float *v = d->v + d->off[j] + kvo;
#pragma omp simd
                for (int64_t e = 0; e < hd; e++) o[i][e] += w * v[e];
            }
        }
    }
}

static void decode_softmax(float *s, int64_t seen) {
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t j = 0; j < seen; j++) mx = s[j] > mx ? s[j] : mx;
#pragma omp simd
    for (int64_t j = 0; j < seen; j++) s[j] = loom_fast_expf(s[j] - mx);
    for (int64_t j = 0; j < seen; j++) sum += s[j]; /* in order */
#pragma omp simd
    for (int64_t j = 0; j < seen; j++) s[j] /= sum;
}
#endif

/* A thread with several sets of rows of one head first copies that head's keys and values into dense rows
 * (the cache's rows lie a whole k|v row apart, 6 KiB for GPT-2 124M: each set would read them back from L2 at
 * a stride the prefetchers and L1's sets serve badly). A copy holds the same values: the bits do not change. */
typedef struct {
    void *k, *v;     /* n x hd each, the cache's element type */
    int64_t *offs;   /* j * hd */
    int64_t head;    /* the head copied, or -1 */
} decode_copy;

/* cap: the most positions of any call this thread's copy serves (its buffers are sized once, for all) */
static int decode_copy_head(decode_copy *c, const decode_head *d, int64_t kvo, int64_t n, int64_t h, int64_t cap) {
    const size_t el = d->k16 ? sizeof(uint16_t) : sizeof(float), row = (size_t)d->hd * el;
    if (!c->k) {
        c->k = malloc((size_t)cap * row);
        c->v = malloc((size_t)cap * row);
        c->offs = malloc((size_t)cap * sizeof(int64_t));
        if (!c->k || !c->v || !c->offs) return 0;
        for (int64_t j = 0; j < cap; j++) c->offs[j] = j * d->hd;
    }
    const char *k = d->k16 ? (const char *)d->k16 : (const char *)d->k;
    const char *v = d->v16 ? (const char *)d->v16 : (const char *)d->v;
    for (int64_t j = 0; j < n; j++) {
        memcpy((char *)c->k + (size_t)j * row, k + (size_t)(d->off[j] + kvo) * el, row);
        memcpy((char *)c->v + (size_t)j * row, v + (size_t)(d->off[j] + kvo) * el, row);
    }
    c->head = h;
    return 1;
}

/* One call's work as items: (head, set of up to DECODE_ROWS rows), or for one row with grouped heads (kv head,
 * set of its query heads) */
typedef struct {
    const loom_attention_decode_args *a;
    decode_head d;
    int64_t rows, qs, os, sets, hsets, group, items;
    int heads_together;
} decode_call;

static loom_status decode_call_init(decode_call *c, const loom_attention_decode_args *a) {
    const int64_t rows = a->rows > 1 ? a->rows : 1, group = a->H / a->KV;
    LOOM_CHECK(rows <= a->n, LOOM_ERR_INVALID_ARG, "attention: %lld query rows over %lld positions", (long long)rows,
               (long long)a->n);
    int64_t *off = malloc((size_t)a->n * sizeof(int64_t));
    if (!off) return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory for %lld positions",
                                    (long long)a->n);
    for (int64_t j = 0; j < a->n; j++) off[j] = decode_row_offset(a, j);
    *c = (decode_call){.a = a, .d = {a->k, a->v, a->k16, a->v16, off, a->hd, 1.0f / sqrtf((float)a->hd)},
                       .rows = rows, .qs = a->qs ? a->qs : a->H * a->hd, .os = a->os ? a->os : a->H * a->hd,
                       .sets = (rows + DECODE_ROWS - 1) / DECODE_ROWS, .hsets = (group + DECODE_ROWS - 1) / DECODE_ROWS,
                       .group = group, .heads_together = rows == 1 && group > 1};
    c->items = c->heads_together ? a->KV * c->hsets : a->H * c->sets;
    return LOOM_OK;
}

/* Decoding (one row): the keys and values a call's item reads, its first positions' up to DECODE_AHEAD bytes of
 * each, fetched while the item before it runs. A kv head's rows are a slice of each cached row, and a short
 * context's item is over before the hardware has fetched far into it: each of its blocks was a wait on memory.
 * The next item's addresses are known, so they go ahead of it (only a hint: no sum changes). 64 sequences of
 * one row over 80 positions, 12 layers of GPT-2 124M's cache from memory, 2 threads, Zen 5, ms a step: fp32
 * 14.3-15.1 -> 12.9-13.6, bf16 14.8-15.5 -> 10.4-10.8; 16 over 80, bf16: 3.1-3.5 -> 2.2-2.5; 16 over 256, bf16:
 * 11.6-11.7 -> 9.9-10.1; one over 2048 (past DECODE_AHEAD, the hardware's stream): unchanged. */
#define DECODE_AHEAD (32 * 1024)
/* always inlined: GCC takes a function of prefetches alone for one without effects and drops its calls */
static inline __attribute__((always_inline)) void decode_prefetch_item(const decode_call *c, int64_t item) {
    if (!c || c->rows != 1) return;
    const int64_t g = c->heads_together ? item / c->hsets : item / c->sets / c->group;
    const int64_t hd = c->a->hd, el = c->d.k16 ? 2 : 4, bytes = hd * el, kvo = g * hd;
    const int64_t n = c->a->n < DECODE_AHEAD / bytes ? c->a->n : DECODE_AHEAD / bytes;
    const char *k = c->d.k16 ? (const char *)c->d.k16 : (const char *)c->d.k;
    const char *v = c->d.v16 ? (const char *)c->d.v16 : (const char *)c->d.v;
    for (int64_t j = 0; j < n; j++)
        for (int64_t b = 0; b < bytes; b += 64) {
            __builtin_prefetch(k + (c->d.off[j] + kvo) * el + b, 0, 3);
            __builtin_prefetch(v + (c->d.off[j] + kvo) * el + b, 0, 3);
        }
}

/* items [lo, hi) of one call, in order, by one thread (scores: DECODE_ROWS rows of at least n floats; copy: the
 * thread's, holding no head of this call yet; next: the call whose first item this thread runs next, or NULL) */
static void decode_call_items(const decode_call *c, int64_t lo, int64_t hi, float *scores, int64_t cap,
                              decode_copy *copy, int *copies, const decode_call *next) {
    const loom_attention_decode_args *a = c->a;
    const int64_t hd = a->hd, n = a->n, rows = c->rows, group = c->group;
    for (int64_t item = lo; item < hi && c->heads_together; item++) { /* one row: a kv group's heads together */
        decode_prefetch_item(item + 1 < hi ? c : next, item + 1 < hi ? item + 1 : 0);
        const int64_t g = item / c->hsets, h0 = g * group + item % c->hsets * DECODE_ROWS;
        const int R = (g + 1) * group - h0 < DECODE_ROWS ? (int)((g + 1) * group - h0) : DECODE_ROWS;
        const float *q[DECODE_ROWS];
        float *s[DECODE_ROWS], *o[DECODE_ROWS];
        for (int i = 0; i < DECODE_ROWS; i++) {
            const int64_t h = h0 + (i < R ? i : R - 1);
            q[i] = a->q + h * hd;
            s[i] = scores + i * n;
            o[i] = a->out + h * hd;
        }
        decode_rows(&c->d, q, R, g * hd, n, 0, s, o);
    }
    for (int64_t item = lo; item < hi && !c->heads_together; item++) {
        decode_prefetch_item(item + 1 < hi ? c : next, item + 1 < hi ? item + 1 : 0);
        const int64_t h = item / c->sets, r0 = item % c->sets * DECODE_ROWS, kvo = (h / group) * hd;
        const int R = rows - r0 < DECODE_ROWS ? (int)(rows - r0) : DECODE_ROWS;
        const float *q[DECODE_ROWS];
        float *s[DECODE_ROWS], *o[DECODE_ROWS];
        for (int i = 0; i < DECODE_ROWS; i++) {
            const int64_t r = r0 + (i < R ? i : R - 1);
            q[i] = a->q + r * c->qs + h * hd;
            s[i] = scores + i * n;
            o[i] = a->out + r * c->os + h * hd;
        }
        const int64_t last = (h + 1) * c->sets < hi ? (h + 1) * c->sets - 1 : hi - 1; /* this head's last item here */
        if (*copies && copy->head != h && last > item) *copies = decode_copy_head(copy, &c->d, kvo, n, h, cap);
        if (*copies && copy->head == h) {
            const decode_head d = {c->d.k16 ? NULL : copy->k, c->d.v16 ? NULL : copy->v, c->d.k16 ? copy->k : NULL,
                                   c->d.v16 ? copy->v : NULL, copy->offs, hd, c->d.scale};
            decode_rows(&d, q, R, 0, n - rows + r0 + 1, 1, s, o);
        } else {
            decode_rows(&c->d, q, R, kvo, n - rows + r0 + 1, 1, s, o);
        }
    }
}

/* an item's multiply-adds for its scores: its rows x the positions they read x the head size */
static double decode_item_cost(const decode_call *c, int64_t item) {
    const double hd = (double)c->a->hd;
    if (c->heads_together) {
        const int64_t h0 = item % c->hsets * DECODE_ROWS;
        return (double)(c->group - h0 < DECODE_ROWS ? c->group - h0 : DECODE_ROWS) * (double)c->a->n * hd;
    }
    const int64_t r0 = item % c->sets * DECODE_ROWS, R = c->rows - r0 < DECODE_ROWS ? c->rows - r0 : DECODE_ROWS;
    return (double)R * (double)(c->a->n - c->rows + r0 + R) * hd;
}

/* The calling thread's range [lo, hi) of all the calls' items, in order: each item goes to the thread where the
 * middle of its cost falls, so the threads read about as many positions each. A split by count put a long
 * context's heads on one thread (one sequence over 2048 positions and 15 over 64: the batch slower than the
 * calls one at a time in 5 of 6 runs; by cost, `loom bench decode`: 1.34x faster than them). Which thread runs
 * an item does not change its bits. */
static void decode_thread_range(const decode_call *c, int64_t n_calls, double total, int64_t *lo, int64_t *hi) {
    int64_t ith = 0, nth = 1;
#ifdef _OPENMP
    ith = omp_get_thread_num(), nth = omp_get_num_threads();
#endif
    double before = 0.0;
    *lo = *hi = 0;
    for (int64_t i = 0, g = 0; i < n_calls; i++)
        for (int64_t item = 0; item < c[i].items; item++, g++) {
            const double w = decode_item_cost(&c[i], item);
            int64_t t = total > 0.0 ? (int64_t)((before + 0.5 * w) * (double)nth / total) : 0;
            t = t < nth ? t : nth - 1;
            if (t < ith) *lo = g + 1;
            if (t <= ith) *hi = g + 1;
            before += w;
        }
}

/* n calls as one list of items, split over the threads in fixed ranges by cost (a call's bits do not depend on
 * which thread runs its items, nor on the other calls); one parallel region for all, where their work pays */
static loom_status decode_calls(const loom_attention_decode_args *calls, int64_t n_calls) {
    decode_call *c = calloc((size_t)(n_calls > 0 ? n_calls : 1), sizeof *c);
    if (!c) return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory for %lld calls",
                                  (long long)n_calls);
    loom_status st = LOOM_OK;
    int64_t cap = 1;
    double total = 0.0; /* the scores' multiply-adds: what the threads split, and whether they are woken */
    for (int64_t i = 0; i < n_calls && st == LOOM_OK; i++) {
        st = decode_call_init(&c[i], &calls[i]);
        if (st != LOOM_OK) break;
        cap = calls[i].n > cap ? calls[i].n : cap;
        for (int64_t item = 0; item < c[i].items; item++) total += decode_item_cost(&c[i], item);
    }
    int ok = 1;
#pragma omp parallel if (st == LOOM_OK && total > 65536)
    {
        float *scores = st == LOOM_OK ? malloc((size_t)(DECODE_ROWS * cap) * sizeof(float)) : NULL;
        decode_copy copy = {NULL, NULL, NULL, -1};
        int copies = 1; /* until an allocation fails: then the cache in place (the same bits) */
        int64_t lo, hi; /* a fixed range of the items: a head's sets in turn, its keys and values in cache */
        decode_thread_range(c, st == LOOM_OK ? n_calls : 0, total, &lo, &hi);
        if (st == LOOM_OK && !scores) {
#pragma omp atomic write
            ok = 0;
            hi = lo;
        }
        for (int64_t i = 0, first = 0; st == LOOM_OK && i < n_calls && first < hi; first += c[i].items, i++) {
            const int64_t a = lo > first ? lo - first : 0, b = hi - first < c[i].items ? hi - first : c[i].items;
            copy.head = -1; /* a head of another call */
            const decode_call *next = i + 1 < n_calls && hi > first + c[i].items ? &c[i + 1] : NULL;
            if (a < b) decode_call_items(&c[i], a, b, scores, cap, &copy, &copies, next);
        }
        free(scores);
        free(copy.k);
        free(copy.v);
        free(copy.offs);
    }
    for (int64_t i = 0; i < n_calls; i++) free((void *)c[i].d.off);
    free(c);
    if (st != LOOM_OK) return st;
    return ok ? LOOM_OK
              : loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory for %lld attention scores",
                               (long long)cap);
}

loom_status loom_cpu_attention_decode(loom_backend *be, const loom_attention_decode_args *a) {
    (void)be;
    return decode_calls(a, 1);
}

loom_status loom_cpu_attention_decode_batch(loom_backend *be, const loom_attention_decode_batch_args *a) {
    (void)be;
    return decode_calls(a->calls, a->n);
}
