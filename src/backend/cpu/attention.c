/* Causal self-attention, forward and backward, one query row at a time (the flash-attention idea
 * without tiles): each row's scores live in a per-thread scratch of T floats and are reduced to the
 * output and the row's log-sum-exp; no T x T matrix is ever kept. The backward recomputes the
 * probabilities from the saved log-sum-exp. Work is split over (batch, kv head) groups so that every
 * gradient element has one writer: deterministic on any thread count. */
#include <stdlib.h>

#include "cpu_impl.h"

static inline float dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void loom_cpu_attention_forward(loom_backend *be, float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                                int64_t H, int64_t KV, int64_t hd) {
    (void)be;
    const int64_t row = (H + 2 * KV) * hd, group = H / KV, C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *p = malloc((size_t)T * sizeof(float));
        float *acc = malloc((size_t)hd * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                if (!p || !acc) continue;
                const int64_t kvh = h / group;
                const float *base = qkv + b * T * row;
                for (int64_t i = 0; i < T; i++) {
                    const float *q = base + i * row + h * hd;
                    float mx = -INFINITY;
                    for (int64_t j = 0; j <= i; j++) {
                        const float *k = base + j * row + (H + kvh) * hd;
                        p[j] = dot(q, k, hd) * scale;
                        mx = p[j] > mx ? p[j] : mx;
                    }
                    float s = 0.0f;
                    for (int64_t j = 0; j <= i; j++) {
                        p[j] = loom_fast_expf(p[j] - mx);
                        s += p[j];
                    }
                    float inv = 1.0f / s;
                    memset(acc, 0, (size_t)hd * sizeof(float));
                    for (int64_t j = 0; j <= i; j++) {
                        const float *v = base + j * row + (H + KV + kvh) * hd;
                        float w = p[j] * inv;
#pragma omp simd
                        for (int64_t d = 0; d < hd; d++) acc[d] += w * v[d];
                    }
                    memcpy(out + (b * T + i) * C + h * hd, acc, (size_t)hd * sizeof(float));
                    lse[(b * H + h) * T + i] = mx + logf(s);
                }
            }
        free(p);
        free(acc);
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
        float *dq = malloc((size_t)hd * sizeof(float));
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; b++)
            for (int64_t kvh = 0; kvh < KV; kvh++) {
                if (!p || !dq) continue;
                const float *base = qkv + b * T * row;
                float *dbase = dqkv + b * T * row;
                for (int64_t j = 0; j < T; j++) {
                    memset(dbase + j * row + (H + kvh) * hd, 0, (size_t)hd * sizeof(float));
                    memset(dbase + j * row + (H + KV + kvh) * hd, 0, (size_t)hd * sizeof(float));
                }
                for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
                    for (int64_t i = 0; i < T; i++) {
                        const float *q = base + i * row + h * hd;
                        const float *dy = dout + (b * T + i) * C + h * hd;
                        const float *y = out + (b * T + i) * C + h * hd;
                        const float L = lse[(b * H + h) * T + i];
                        const float D = dot(dy, y, hd);
                        memset(dq, 0, (size_t)hd * sizeof(float));
                        for (int64_t j = 0; j <= i; j++) {
                            const float *k = base + j * row + (H + kvh) * hd;
                            const float *v = base + j * row + (H + KV + kvh) * hd;
                            float pj = loom_fast_expf(dot(q, k, hd) * scale - L);
                            float dp = dot(dy, v, hd);
                            float ds = pj * (dp - D) * scale;
                            float *dk = dbase + j * row + (H + kvh) * hd;
                            float *dv = dbase + j * row + (H + KV + kvh) * hd;
#pragma omp simd
                            for (int64_t d = 0; d < hd; d++) {
                                dq[d] += ds * k[d];
                                dk[d] += ds * q[d];
                                dv[d] += pj * dy[d];
                            }
                        }
                        memcpy(dbase + i * row + h * hd, dq, (size_t)hd * sizeof(float));
                    }
                }
            }
        free(p);
        free(dq);
    }
}
