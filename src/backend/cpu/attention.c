/* Causal self-attention, forward and backward, in blocks of query rows (the flash-attention idea): for
 * a block of up to ATT_BLOCK queries, the scores against the keys it may see are one small GEMM into a
 * per-thread (ATT_BLOCK x T) scratch, softmaxed row by row and reduced to the output and each row's
 * log-sum-exp, then reused for the next block. No T x T matrix is kept for any head. The backward
 * recomputes the probabilities from the saved log-sum-exp.
 *
 * The small products run inside the OpenMP loop, where OpenBLAS's OpenMP build runs single-threaded. Work
 * is split over (batch, head) in forward and (batch, kv head) in backward, so every gradient element has
 * one writer: deterministic on any thread count. */
#include <stdlib.h>

#include "cpu_impl.h"

#define ATT_BLOCK 64

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

static void cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                        const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                        int64_t KV, int64_t hd, int causal);
static void cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                         int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                         int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                         int causal);

static void cpu_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                                int64_t H, int64_t KV, int64_t hd) {
    const int64_t row = (H + 2 * KV) * hd; /* q, k and v of a position side by side */
    cpu_attention_block_forward(be, out, lse, qkv, row, qkv + H * hd, row, B, T, T, H, KV, hd, 1);
}

loom_status loom_cpu_attention_forward(loom_backend *be, const loom_attention_forward_args *a) {
    cpu_attention_forward(be, a->out, a->lse, a->qkv, a->B, a->T, a->H, a->KV, a->hd);
    return LOOM_OK;
}

static void cpu_attention_backward(loom_backend *be, float *dqkv, const float *dout, const float *qkv,
                                 const float *out, const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV,
                                 int64_t hd) {
    const int64_t row = (H + 2 * KV) * hd;
    memset(dqkv, 0, (size_t)(B * T * row) * sizeof(float));
    cpu_attention_block_backward(be, dqkv, dqkv + H * hd, dout, qkv, row, qkv + H * hd, row, out, lse, B, T, T, H,
                                      KV, hd, 1);
}

loom_status loom_cpu_attention_backward(loom_backend *be, const loom_attention_backward_args *a) {
    cpu_attention_backward(be, a->dqkv, a->dout, a->qkv, a->out, a->lse, a->B, a->T, a->H, a->KV, a->hd);
    return LOOM_OK;
}

/* ---- one block of queries against one block of keys and values (ring attention) ----
 * Queries: rows of stride qs, head h at column h*hd. Keys and values: rows of stride kvs, kv head g's key at
 * column g*hd and value at (KV+g)*hd. causal: the two blocks cover the same positions (key j visible to
 * query i iff j <= i); otherwise every key is visible (an earlier block of the sequence). */

static void cpu_attention_block_forward(loom_backend *be, float *out, float *lse, const float *q, int64_t qs,
                                      const float *kv, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                      int64_t KV, int64_t hd, int causal) {
    const int64_t group = H / KV, C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *s = malloc((size_t)(ATT_BLOCK * Tk) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                if (!s) continue;
                const int64_t g = h / group;
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
                    const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, n = causal ? i0 + rows : Tk;
                    loom_cpu_sgemm(be, 0, 1, rows, n, hd, 1.0f, q + (b * Tq + i0) * qs + h * hd, qs, K, kvs, 0.0f, s, n);
                    softmax_rows(s, n, lse + (b * H + h) * Tq + i0, i0, rows, scale, causal);
                    loom_cpu_sgemm(be, 0, 0, rows, hd, n, 1.0f, s, n, V, kvs, 0.0f, out + (b * Tq + i0) * C + h * hd, C);
                }
            }
        free(s);
    }
}

loom_status loom_cpu_attention_block_forward(loom_backend *be, const loom_attention_block_forward_args *a) {
    cpu_attention_block_forward(be, a->out, a->lse, a->q, a->qs, a->kv, a->kvs, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal);
    return LOOM_OK;
}

static void cpu_attention_block_backward(loom_backend *be, float *dq, float *dkv, const float *dout, const float *q,
                                       int64_t qs, const float *kv, int64_t kvs, const float *out, const float *lse,
                                       int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t KV, int64_t hd,
                                       int causal) {
    const int64_t group = H / KV, C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *p = malloc((size_t)(ATT_BLOCK * Tk) * sizeof(float));
        float *dp = malloc((size_t)(ATT_BLOCK * Tk) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t g = 0; g < KV; g++) {
                if (!p || !dp) continue;
                const float *K = kv + b * Tk * kvs + g * hd, *V = kv + b * Tk * kvs + (KV + g) * hd;
                float *dK = dkv + b * Tk * kvs + g * hd, *dV = dkv + b * Tk * kvs + (KV + g) * hd;
                for (int64_t h = g * group; h < (g + 1) * group; h++)
                    for (int64_t i0 = 0; i0 < Tq; i0 += ATT_BLOCK) {
                        const int64_t rows = Tq - i0 < ATT_BLOCK ? Tq - i0 : ATT_BLOCK, n = causal ? i0 + rows : Tk;
                        const float *Q = q + (b * Tq + i0) * qs + h * hd;
                        const float *dO = dout + (b * Tq + i0) * C + h * hd, *O = out + (b * Tq + i0) * C + h * hd;
                        const float *L = lse + (b * H + h) * Tq + i0;
                        loom_cpu_sgemm(be, 0, 1, rows, n, hd, 1.0f, Q, qs, K, kvs, 0.0f, p, n);  /* S */
                        loom_cpu_sgemm(be, 0, 1, rows, n, hd, 1.0f, dO, C, V, kvs, 0.0f, dp, n); /* dP */
                        for (int64_t r = 0; r < rows; r++) {
                            float *pr = p + r * n, *dpr = dp + r * n;
                            const float *dor = dO + r * C, *orow = O + r * C;
                            float D = 0.0f;
#pragma omp simd reduction(+ : D)
                            for (int64_t d = 0; d < hd; d++) D += dor[d] * orow[d];
                            const int64_t valid = causal ? i0 + r + 1 : n;
                            const float Lr = L[r];
#pragma omp simd
                            for (int64_t j = 0; j < valid; j++) {
                                float pj = loom_fast_expf(pr[j] * scale - Lr);
                                pr[j] = pj;
                                dpr[j] = pj * (dpr[j] - D) * scale;
                            }
                            for (int64_t j = valid; j < n; j++) pr[j] = dpr[j] = 0.0f;
                        }
                        /* dQ_blk += dS K; dK += dS^T Q_blk; dV += P^T dO_blk */
                        loom_cpu_sgemm(be, 0, 0, rows, hd, n, 1.0f, dp, n, K, kvs, 1.0f, dq + (b * Tq + i0) * qs + h * hd, qs);
                        loom_cpu_sgemm(be, 1, 0, n, hd, rows, 1.0f, dp, n, Q, qs, 1.0f, dK, kvs);
                        loom_cpu_sgemm(be, 1, 0, n, hd, rows, 1.0f, p, n, dO, C, 1.0f, dV, kvs);
                    }
            }
        free(p);
        free(dp);
    }
}

loom_status loom_cpu_attention_block_backward(loom_backend *be, const loom_attention_block_backward_args *a) {
    cpu_attention_block_backward(be, a->dq, a->dkv, a->dout, a->q, a->qs, a->kv, a->kvs, a->out, a->lse, a->B, a->Tq, a->Tk, a->H, a->KV, a->hd, a->causal);
    return LOOM_OK;
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
static inline float bf16_value(uint16_t h) {
    union { uint32_t u; float f; } x = {.u = (uint32_t)h << 16};
    return x.f;
}

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
                    for (int64_t i = 0; i < hd; i++) d += q[i] * bf16_value(k[i]);
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
                    for (int64_t i = 0; i < hd; i++) o[i] += w * bf16_value(v[i]);
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
