/* Causal self-attention, forward and backward, one query row at a time (the flash-attention idea without
 * tiles): a row's scores live in a per-thread scratch of T floats and are reduced to the output and the
 * row's log-sum-exp; no T x T matrix is ever kept. The backward recomputes the probabilities from the
 * saved log-sum-exp.
 *
 * Each (batch, head) first copies its K (and in backward V) transposed into a per-thread (hd, T) scratch,
 * so that a row's scores q.k_j for all j are an axpy over j (vectorised, no horizontal sums), and its
 * output / gradients are axpys over the head dimension. Work is split over (batch, head) in forward and
 * (batch, kv head) in backward, so every gradient element has one writer: deterministic on any thread
 * count. */
#include <stdlib.h>

#include "cpu_impl.h"

/* dst (hd, T) = the kv head's rows of qkv, transposed, for positions [0, T) */
static void transpose_head(float *dst, const float *base, int64_t row, int64_t col, int64_t T, int64_t hd) {
    for (int64_t j = 0; j < T; j++) {
        const float *src = base + j * row + col;
        for (int64_t d = 0; d < hd; d++) dst[d * T + j] = src[d];
    }
}

/* s[j] = sum_d q[d] * kt[d][j] for j <= i */
static inline void scores(float *s, const float *q, const float *kt, int64_t T, int64_t hd, int64_t n) {
    for (int64_t j = 0; j < n; j++) s[j] = 0.0f;
    for (int64_t d = 0; d < hd; d++) {
        const float qd = q[d], *k = kt + d * T;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) s[j] += qd * k[j];
    }
}

void loom_cpu_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                                int64_t H, int64_t KV, int64_t hd) {
    (void)be;
    const int64_t row = (H + 2 * KV) * hd, group = H / KV, C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *p = malloc((size_t)T * sizeof(float));
        float *kt = malloc((size_t)(T * hd) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                if (!p || !kt) continue;
                const int64_t kvh = h / group;
                const float *base = qkv + b * T * row;
                transpose_head(kt, base, row, (H + kvh) * hd, T, hd);
                for (int64_t i = 0; i < T; i++) {
                    const int64_t n = i + 1;
                    scores(p, base + i * row + h * hd, kt, T, hd, n);
                    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
                    for (int64_t j = 0; j < n; j++) mx = p[j] > mx ? p[j] : mx;
                    float s = 0.0f;
#pragma omp simd reduction(+ : s)
                    for (int64_t j = 0; j < n; j++) {
                        p[j] = loom_fast_expf((p[j] - mx) * scale);
                        s += p[j];
                    }
                    const float inv = 1.0f / s;
                    float *o = out + (b * T + i) * C + h * hd;
                    for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
                    for (int64_t j = 0; j < n; j++) {
                        const float *v = base + j * row + (H + KV + kvh) * hd;
                        const float w = p[j] * inv;
#pragma omp simd
                        for (int64_t d = 0; d < hd; d++) o[d] += w * v[d];
                    }
                    lse[(b * H + h) * T + i] = mx * scale + logf(s);
                }
            }
        free(p);
        free(kt);
    }
}

void loom_cpu_attention_backward(loom_backend *be, float *dqkv, const float *dout, const float *qkv,
                                 const float *out, const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV,
                                 int64_t hd) {
    (void)be;
    const int64_t row = (H + 2 * KV) * hd, group = H / KV, C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *p = malloc((size_t)T * sizeof(float));
        float *ds = malloc((size_t)T * sizeof(float));
        float *kt = malloc((size_t)(T * hd) * sizeof(float));
        float *vt = malloc((size_t)(T * hd) * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t kvh = 0; kvh < KV; kvh++) {
                if (!p || !ds || !kt || !vt) continue;
                const float *base = qkv + b * T * row;
                float *dbase = dqkv + b * T * row;
                transpose_head(kt, base, row, (H + kvh) * hd, T, hd);
                transpose_head(vt, base, row, (H + KV + kvh) * hd, T, hd);
                for (int64_t j = 0; j < T; j++) {
                    memset(dbase + j * row + (H + kvh) * hd, 0, (size_t)hd * sizeof(float));
                    memset(dbase + j * row + (H + KV + kvh) * hd, 0, (size_t)hd * sizeof(float));
                }
                for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
                    for (int64_t i = 0; i < T; i++) {
                        const int64_t n = i + 1;
                        const float *q = base + i * row + h * hd;
                        const float *dy = dout + (b * T + i) * C + h * hd;
                        const float *y = out + (b * T + i) * C + h * hd;
                        const float L = lse[(b * H + h) * T + i];
                        float D = 0.0f;
#pragma omp simd reduction(+ : D)
                        for (int64_t d = 0; d < hd; d++) D += dy[d] * y[d];
                        scores(p, q, kt, T, hd, n);  /* q.k_j */
                        scores(ds, dy, vt, T, hd, n); /* dy.v_j */
#pragma omp simd
                        for (int64_t j = 0; j < n; j++) {
                            float pj = loom_fast_expf(p[j] * scale - L);
                            p[j] = pj;
                            ds[j] = pj * (ds[j] - D) * scale;
                        }
                        float *dq = dbase + i * row + h * hd;
                        for (int64_t d = 0; d < hd; d++) dq[d] = 0.0f;
                        for (int64_t j = 0; j < n; j++) {
                            const float *k = base + j * row + (H + kvh) * hd;
                            float *dk = dbase + j * row + (H + kvh) * hd;
                            float *dv = dbase + j * row + (H + KV + kvh) * hd;
                            const float dsj = ds[j], pj = p[j];
#pragma omp simd
                            for (int64_t d = 0; d < hd; d++) {
                                dq[d] += dsj * k[d];
                                dk[d] += dsj * q[d];
                                dv[d] += pj * dy[d];
                            }
                        }
                    }
                }
            }
        free(p);
        free(ds);
        free(kt);
        free(vt);
    }
}
