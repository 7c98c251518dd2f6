/* LayerNorm and RMSNorm, forward and backward. Row statistics are computed per row (parallel over
 * rows); weight/bias gradients are reduced per channel range (parallel over channels) so the result does
 * not depend on the thread count. dinp accumulates (+=): it is the residual stream's gradient. */
#include "cpu_impl.h"

/* one output element, fp32, whichever way it is stored (one expression, so fp32 and bf16 outputs agree) */
static inline float ln_value(float x, float m, float r, float w, float b) { return (x - m) * r * w + b; }

static void cpu_layernorm_forward(loom_backend *be, float *out, uint16_t *out16, float *mean, float *rstd,
                                  const float *inp, const float *w, const float *b, int64_t N, int64_t C, float eps) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < C; c++) s += x[c];
        float m = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int64_t c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        float r = 1.0f / sqrtf(v / (float)C + eps);
        if (out16) {
            uint16_t *y = out16 + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) y[c] = loom_cpu_bf16_round(ln_value(x[c], m, r, w[c], b ? b[c] : 0.0f));
        } else {
            float *y = out + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) y[c] = ln_value(x[c], m, r, w[c], b ? b[c] : 0.0f);
        }
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
    }
}

loom_status loom_cpu_layernorm_forward(loom_backend *be, const loom_layernorm_forward_args *a) {
    cpu_layernorm_forward(be, a->out, a->out16, a->mean, a->rstd, a->inp, a->w, a->b, a->N, a->C, a->eps);
    return LOOM_OK;
}

static void cpu_layernorm_backward(loom_backend *be, float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, const float *mean, const float *rstd,
                                 int64_t N, int64_t C, int accumulate) {
    (void)be;
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float *dx = dinp + n * C;
            float m = mean[n], r = rstd[n];
            float a = 0.0f, bsum = 0.0f;
#pragma omp simd reduction(+ : a, bsum)
            for (int64_t c = 0; c < C; c++) {
                float dn = dy[c] * w[c];
                a += dn;
                bsum += dn * (x[c] - m) * r;
            }
            a /= (float)C;
            bsum /= (float)C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float dn = dy[c] * w[c];
                float nrm = (x[c] - m) * r;
                dx[c] += (dn - a - nrm * bsum) * r;
            }
        }
        /* parameter gradients: each thread owns a channel range and walks all rows in order */
        int64_t c0, c1;
        loom_cpu_thread_range(C, &c0, &c1);
        if (!accumulate)
            for (int64_t c = c0; c < c1; c++) {
                dw[c] = 0.0f;
                if (db) db[c] = 0.0f;
            }
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float m = mean[n], r = rstd[n];
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) dw[c] += dy[c] * (x[c] - m) * r;
            if (db) /* a LayerNorm without bias (nanoGPT's bias=False) */
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) db[c] += dy[c];
        }
    }
}

loom_status loom_cpu_layernorm_backward(loom_backend *be, const loom_layernorm_backward_args *a) {
    cpu_layernorm_backward(be, a->dinp, a->dw, a->db, a->dout, a->inp, a->w, a->mean, a->rstd, a->N, a->C, a->accumulate);
    return LOOM_OK;
}

static void cpu_rmsnorm_forward(loom_backend *be, float *out, uint16_t *out16, float *rstd, const float *inp,
                                const float *w, int64_t N, int64_t C, float eps) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        if (out16) {
            uint16_t *y = out16 + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) y[c] = loom_cpu_bf16_round(x[c] * r * w[c]);
        } else {
            float *y = out + n * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) y[c] = x[c] * r * w[c];
        }
        if (rstd) rstd[n] = r;
    }
}

loom_status loom_cpu_rmsnorm_forward(loom_backend *be, const loom_rmsnorm_forward_args *a) {
    cpu_rmsnorm_forward(be, a->out, a->out16, a->rstd, a->inp, a->w, a->N, a->C, a->eps);
    return LOOM_OK;
}

static void cpu_rmsnorm_backward(loom_backend *be, float *dinp, float *dw, const float *dout, const float *inp,
                               const float *w, const float *rstd, int64_t N, int64_t C, int accumulate) {
    (void)be;
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float *dx = dinp + n * C;
            float r = rstd[n];
            float a = 0.0f;
#pragma omp simd reduction(+ : a)
            for (int64_t c = 0; c < C; c++) a += dy[c] * w[c] * x[c] * r;
            a /= (float)C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) dx[c] += r * (dy[c] * w[c] - x[c] * r * a);
        }
        int64_t c0, c1;
        loom_cpu_thread_range(C, &c0, &c1);
        if (!accumulate)
            for (int64_t c = c0; c < c1; c++) dw[c] = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float r = rstd[n];
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) dw[c] += dy[c] * x[c] * r;
        }
    }
}

loom_status loom_cpu_rmsnorm_backward(loom_backend *be, const loom_rmsnorm_backward_args *a) {
    cpu_rmsnorm_backward(be, a->dinp, a->dw, a->dout, a->inp, a->w, a->rstd, a->N, a->C, a->accumulate);
    return LOOM_OK;
}
