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
 * blocks at a time */
static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows, int64_t cols, int accumulate) {
    for (int64_t i0 = 0; i0 < rows; i0 += 8)
        for (int64_t j0 = 0; j0 < cols; j0 += 8) {
            if (i0 + 8 <= rows && j0 + 8 <= cols) {
                transpose8x8(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, accumulate);
                continue;
            }
            const int64_t i1 = i0 + 8 < rows ? i0 + 8 : rows, j1 = j0 + 8 < cols ? j0 + 8 : cols;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) dst[j * ldd + i] = (accumulate ? dst[j * ldd + i] : 0.0f) + src[i * lds + j];
        }
}

/* one tile: rows a[0..TILE_ROWS) (rows past the matrix repeat the last one and are not stored), the panel
 * (K x TILE_COLS, dense), k in [k0, k1); the first cols columns of mr rows stored into c */
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
            const int64_t mr = M - r0 < TILE_ROWS ? M - r0 : TILE_ROWS;
            const int64_t cols = mask.col_end == NO_LIMIT ? N : clamp64(r0 + mr + mask.col_end, 0, N);
            if (j >= cols || (mask.col_begin != NO_LIMIT && j + TILE_COLS <= r0 + mask.col_begin)) continue;
            const float *a[TILE_ROWS];
            for (int r = 0; r < TILE_ROWS; r++) a[r] = A + (r0 + (r < mr ? r : mr - 1)) * lda;
            int64_t k0 = mask.k_begin == NO_LIMIT ? 0 : clamp64(r0 + mask.k_begin, 0, K);
            const int64_t k1 = mask.k_end == NO_LIMIT ? K : clamp64(r0 + mr + mask.k_end, 0, K);
            if (k0 > k1) k0 = k1;
            tile_kernel(a, panel, k0, k1, C + r0 * ldc + j, ldc, mr, cols - j < w ? cols - j : w, accumulate);
        }
    }
}

/* Row i of the block (absolute position i0 + r) sees keys 0..i0+r (causal) or all ld keys: softmax in place
 * over those, zero beyond. s holds raw q.k scores on entry, probabilities on exit; lse gets
 * scale*max + log(sum). */
static void softmax_rows(float *s, int64_t ld, float *lse, int64_t i0, int64_t rows, float scale, int causal) {
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
#pragma omp simd
        for (int64_t j = 0; j < n; j++) p[j] *= inv;
        for (int64_t j = n; j < ld; j++) p[j] = 0.0f;
        lse[r] = mx * scale + logf(sum);
    }
}

static int cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                        const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                        int64_t KV, int64_t hd, int causal);
static int cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                         int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                         int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                         int causal, int add);

/* a kernel whose threads could not all allocate their scratch fails (rather than skip their work) */
static loom_status scratch_status(int ok) {
    LOOM_CHECK(ok, LOOM_ERR_NOMEM, "out of memory for the attention kernel's per-thread scratch");
    return LOOM_OK;
}

static int cpu_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                                int64_t H, int64_t KV, int64_t hd) {
    const int64_t row = (H + 2 * KV) * hd; /* q, k and v of a position side by side */
    return cpu_attention_block_forward(be, out, lse, qkv, row, qkv + H * hd, row, B, T, T, H, KV, hd, 1);
}

loom_status loom_cpu_attention_forward(loom_backend *be, const loom_attention_forward_args *a) {
    return scratch_status(cpu_attention_forward(be, a->out, a->lse, a->qkv, a->B, a->T, a->H, a->KV, a->hd));
}

static int cpu_attention_backward(loom_backend *be, float *dqkv, const float *dout, const float *qkv,
                                 const float *out, const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV,
                                 int64_t hd) {
    const int64_t row = (H + 2 * KV) * hd;
    return cpu_attention_block_backward(be, dqkv, dqkv + H * hd, dout, qkv, row, qkv + H * hd, row, out, lse, B, T, T, H,
                                      KV, hd, 1, 0);
}

loom_status loom_cpu_attention_backward(loom_backend *be, const loom_attention_backward_args *a) {
    return scratch_status(cpu_attention_backward(be, a->dqkv, a->dout, a->qkv, a->out, a->lse, a->B, a->T, a->H, a->KV, a->hd));
}

/* ---- one block of queries against one block of keys and values (ring attention) ----
 * Queries: rows of stride qs, head h at column h*hd. Keys and values: rows of stride kvs, kv head g's key at
 * column g*hd and value at (KV+g)*hd. causal: the two blocks cover the same positions (key j visible to
 * query i iff j <= i); otherwise every key is visible (an earlier block of the sequence). */

static int cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                      const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                      int64_t KV, int64_t hd, int causal) {
    (void)be;
    const int64_t group = H / KV, C = H * hd, pad_rows = panel_rows(Tk, hd);
    const float scale = 1.0f / sqrtf((float)hd);
    int ok = 1; /* a thread without its scratch clears it: the kernel fails rather than skip work */
#pragma omp parallel
    {
        float *s = malloc((size_t)(ATT_BLOCK * Tk) * sizeof(float)), *kt = malloc((size_t)(hd * Tk) * sizeof(float));
        float *panel = malloc((size_t)(pad_rows * TILE_COLS) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                if (!s || !kt || !panel) {
#pragma omp atomic write
                    ok = 0;
                    continue;
                }
                const int64_t g = h / group;
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                transpose(kt, Tk, K, kvs, Tk, hd, 0);
                for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
                    const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, n = causal ? i0 + rows : Tk;
                    const tile_mask cols_seen = {NO_LIMIT, causal ? i0 : NO_LIMIT, NO_LIMIT, NO_LIMIT};
                    const tile_mask keys_seen = {NO_LIMIT, NO_LIMIT, NO_LIMIT, causal ? i0 : NO_LIMIT};
                    tile_product(rows, n, hd, q + (b * Tq + i0) * qs + h * hd, qs, kt, Tk, 0, s, n, 0, cols_seen, panel);
                    softmax_rows(s, n, lse + (b * H + h) * Tq + i0, i0, rows, scale, causal);
                    tile_product(rows, hd, n, s, n, V, kvs, 0, out + (b * Tq + i0) * C + h * hd, C, 0, keys_seen, panel);
                }
            }
        free(s);
        free(kt);
        free(panel);
    }
    return ok;
}

loom_status loom_cpu_attention_block_forward(loom_backend *be, const loom_attention_block_forward_args *a) {
    return scratch_status(cpu_attention_block_forward(be, a->out, a->lse, a->q, a->qs, a->kv, a->kvs, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal));
}

/* The backward works on the transposes of a block's scores, St = K Q_blk^T (keys x queries): the two products
 * into dK and dV then read them in place (adding into dense per-(batch, kv head) sums, added to dkv once at the
 * end), and only the block's small Q and dO (packed) and dQ's addend are transposed. add: the gradients add
 * into dq and dkv (ring attention's blocks); else they are written, every element once (the whole attention). */
static int cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                       int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                       int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                       int causal, int add) {
    (void)be;
    const int64_t group = H / KV, C = H * hd, pad_rows = panel_rows(Tk, hd);
    const float scale = 1.0f / sqrtf((float)hd);
    int ok = 1;
#pragma omp parallel
    {
        float *pt = malloc((size_t)(Tk * ATT_BLOCK) * sizeof(float)), *dpt = malloc((size_t)(Tk * ATT_BLOCK) * sizeof(float));
        float *kt = malloc((size_t)(hd * Tk) * sizeof(float)), *dqt = malloc((size_t)(hd * ATT_BLOCK) * sizeof(float));
        float *dk_sum = malloc((size_t)(Tk * hd) * sizeof(float)), *dv_sum = malloc((size_t)(Tk * hd) * sizeof(float));
        float *dcoef = malloc(ATT_BLOCK * sizeof(float)), *panel = malloc((size_t)(pad_rows * TILE_COLS) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t g = 0; g < KV; g++) {
                if (!pt || !dpt || !kt || !dqt || !dk_sum || !dv_sum || !dcoef || !panel) {
#pragma omp atomic write
                    ok = 0;
                    continue;
                }
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                float *dK = dkv + b * Tk * kvs + g * hd, *dV = dkv + b * Tk * kvs + (KV + g) * hd;
                transpose(kt, Tk, K, kvs, Tk, hd, 0);
                memset(dk_sum, 0, (size_t)(Tk * hd) * sizeof(float));
                memset(dv_sum, 0, (size_t)(Tk * hd) * sizeof(float));
                for (int64_t h = g * group; h < (g + 1) * group; h++)
                    for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
                        const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, n = causal ? i0 + rows : Tk;
                        const float *Q = q + (b * Tq + i0) * qs + h * hd;
                        const float *dO = dout + (b * Tq + i0) * C + h * hd, *O = out + (b * Tq + i0) * C + h * hd;
                        const float *L = lse + (b * H + h) * Tq + i0;
                        float *dQ = dq + (b * Tq + i0) * qs + h * hd;
                        /* key j is seen by the block's queries r >= j - i0 */
                        const tile_mask seen_by = {causal ? -i0 : NO_LIMIT, NO_LIMIT, NO_LIMIT, NO_LIMIT};
                        const tile_mask k_seen_by = {NO_LIMIT, NO_LIMIT, causal ? -i0 : NO_LIMIT, NO_LIMIT};
                        const tile_mask no_mask = {NO_LIMIT, NO_LIMIT, NO_LIMIT, NO_LIMIT};
                        tile_product(n, rows, hd, K, kvs, Q, qs, 1, pt, rows, 0, seen_by, panel);   /* St */
                        tile_product(n, rows, hd, V, kvs, dO, C, 1, dpt, rows, 0, seen_by, panel); /* dPt */
                        for (int64_t r = 0; r < rows; r++) {
                            const float *dor = dO + r * C, *orow = O + r * C;
                            float D = 0.0f;
#pragma omp simd reduction(+ : D)
                            for (int64_t d = 0; d < hd; d++) D += dor[d] * orow[d];
                            dcoef[r] = D;
                        }
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
                        /* dV += P^T dO_blk; dK += dS^T Q_blk (both into the dense sums); dQ_blk += dS K, as its
                         * transpose K^T dS^T */
                        tile_product(n, hd, rows, pt, rows, dO, C, 0, dv_sum, hd, 1, k_seen_by, panel);
                        tile_product(n, hd, rows, dpt, rows, Q, qs, 0, dk_sum, hd, 1, k_seen_by, panel);
                        tile_product(hd, rows, n, kt, Tk, dpt, rows, 0, dqt, rows, 0, no_mask, panel);
                        transpose(dQ, qs, dqt, rows, hd, rows, add);
                    }
                for (int64_t j = 0; j < Tk; j++)
                    for (int64_t d = 0; d < hd; d++) {
                        dK[j * kvs + d] = (add ? dK[j * kvs + d] : 0.0f) + dk_sum[j * hd + d];
                        dV[j * kvs + d] = (add ? dV[j * kvs + d] : 0.0f) + dv_sum[j * hd + d];
                    }
            }
        free(pt);
        free(dpt);
        free(kt);
        free(dqt);
        free(dk_sum);
        free(dv_sum);
        free(dcoef);
        free(panel);
    }
    return ok;
}

loom_status loom_cpu_attention_block_backward(loom_backend *be, const loom_attention_block_backward_args *a) {
    return scratch_status(cpu_attention_block_backward(be, a->dq, a->dkv, a->dout, a->q, a->qs, a->kv, a->kvs, a->out, a->lse, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal, 1));
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
 * the weighted sum of values (rows and heads in parallel; each one's arithmetic in a fixed order). */
static inline int64_t decode_row_offset(const loom_attention_decode_args *a, int64_t j) {
    if (!a->blocks) return j * a->ld;
    return (int64_t)a->blocks[j / a->block_len] * a->block_stride + (j % a->block_len) * a->ld;
}

loom_status loom_cpu_attention_decode(loom_backend *be, const loom_attention_decode_args *a) {
    (void)be;
    const int64_t H = a->H, hd = a->hd, n = a->n, group = H / a->KV, rows = a->rows > 1 ? a->rows : 1;
    const int64_t qs = a->qs ? a->qs : H * hd, os = a->os ? a->os : H * hd;
    LOOM_CHECK(rows <= n, LOOM_ERR_INVALID_ARG, "attention: %lld query rows over %lld positions", (long long)rows,
               (long long)n);
    int64_t *off = malloc((size_t)n * sizeof(int64_t));
    float *scores = malloc((size_t)(rows * H * n) * sizeof(float));
    if (!off || !scores) {
        free(off);
        free(scores);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory for %lld attention scores",
                              (long long)(rows * H * n));
    }
    for (int64_t j = 0; j < n; j++) off[j] = decode_row_offset(a, j);
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static) collapse(2) if (rows * H * n * hd > 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < H; h++) {
            const float *q = a->q + r * qs + h * hd;
            const int64_t kvo = (h / group) * hd, seen = n - rows + r + 1;
            float *s = scores + (r * H + h) * n, mx = -INFINITY;
            for (int64_t j = 0; j < seen; j++) {
                float d = 0.0f;
                if (a->k16) {
                    const uint16_t *k = a->k16 + off[j] + kvo;
#pragma omp simd reduction(+ : d)
                    for (int64_t i = 0; i < hd; i++) d += q[i] * loom_cpu_bf16_widen(k[i]);
                } else {
                    const float *k = a->k + off[j] + kvo;
#pragma omp simd reduction(+ : d)
                    for (int64_t i = 0; i < hd; i++) d += q[i] * k[i];
                }
                s[j] = d * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < seen; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            float *o = a->out + r * os + h * hd;
            memset(o, 0, (size_t)hd * sizeof(float));
            for (int64_t j = 0; j < seen; j++) {
                const float w = s[j] / sum;
                if (a->v16) {
                    const uint16_t *v = a->v16 + off[j] + kvo;
#pragma omp simd
                    for (int64_t i = 0; i < hd; i++) o[i] += w * loom_cpu_bf16_widen(v[i]);
                } else {
                    const float *v = a->v + off[j] + kvo;
#pragma omp simd
                    for (int64_t i = 0; i < hd; i++) o[i] += w * v[i];
                }
            }
        }
    free(off);
    free(scores);
    return LOOM_OK;
}
