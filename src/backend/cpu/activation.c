/* GELU (the tanh approximation, as GPT-2, or the exact erf form, as PyTorch's nn.GELU()) fused with the
 * bias add of the GEMM before it; SwiGLU; bias and residual adds. */
#include "cpu_impl.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + loom_fast_erff(x * 0.70710678118654752f)); }
/* d/dx x Phi(x) = Phi(x) + x phi(x) */
static inline float gelu_erf_grad(float x) {
    return 0.5f * (1.0f + loom_fast_erff(x * 0.70710678118654752f)) +
           x * 0.3989422804014327f * loom_fast_expf(-0.5f * x * x);
}

static inline float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + loom_fast_tanhf(GELU_K * (x + GELU_C * x * x * x)));
}

/* Each forward below writes its output as fp32 (out) or as bf16 (out16): the loops are one per form, so that
 * neither branches per element, and the values are the same expression in both. */

static void cpu_bias_gelu_forward(loom_backend *be, float *pre, float *out, uint16_t *out16, const float *bias,
                                  int64_t N, int64_t F, int exact) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *p = pre + n * F;
        if (out16) {
            uint16_t *o = out16 + n * F;
            if (exact)
#pragma omp simd
                for (int64_t f = 0; f < F; f++) {
                    const float x = p[f] + bias[f];
                    p[f] = x;
                    o[f] = loom_cpu_bf16_round(gelu_erf(x));
                }
            else
#pragma omp simd
                for (int64_t f = 0; f < F; f++) {
                    const float x = p[f] + bias[f];
                    p[f] = x;
                    o[f] = loom_cpu_bf16_round(gelu_tanh(x));
                }
        } else if (out) {
            float *o = out + n * F;
            if (exact)
#pragma omp simd
                for (int64_t f = 0; f < F; f++) {
                    const float x = p[f] + bias[f];
                    p[f] = x;
                    o[f] = gelu_erf(x);
                }
            else
#pragma omp simd
                for (int64_t f = 0; f < F; f++) {
                    const float x = p[f] + bias[f];
                    p[f] = x;
                    o[f] = gelu_tanh(x);
                }
        } else {
#pragma omp simd
            for (int64_t f = 0; f < F; f++) p[f] += bias[f];
        }
    }
}

loom_status loom_cpu_bias_gelu_forward(loom_backend *be, const loom_bias_gelu_forward_args *a) {
    cpu_bias_gelu_forward(be, a->pre, a->out, a->out16, a->bias, a->N, a->F, a->exact);
    return LOOM_OK;
}

static void cpu_gelu_forward(loom_backend *be, float *out, uint16_t *out16, const float *pre, int64_t n, int exact) {
    (void)be;
    if (out16 && exact) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) out16[i] = loom_cpu_bf16_round(gelu_erf(pre[i]));
    } else if (out16) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) out16[i] = loom_cpu_bf16_round(gelu_tanh(pre[i]));
    } else if (exact) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) out[i] = gelu_erf(pre[i]);
    } else {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(pre[i]);
    }
}

loom_status loom_cpu_gelu_forward(loom_backend *be, const loom_gelu_forward_args *a) {
    cpu_gelu_forward(be, a->out, a->out16, a->inp, a->n, a->exact);
    return LOOM_OK;
}

static inline float gelu_tanh_grad(float x) {
    const float u = GELU_K * (x + GELU_C * x * x * x), t = loom_fast_tanhf(u), sech2 = 1.0f - t * t;
    return 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
}

static void cpu_gelu_backward(loom_backend *be, float *dpre, const float *pre, const float *dout, int64_t n,
                              int exact) {
    (void)be;
    if (exact) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) dpre[i] = gelu_erf_grad(pre[i]) * dout[i];
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) dpre[i] = gelu_tanh_grad(pre[i]) * dout[i];
}

/* A bias gradient's column sums split by columns: this thread's [c0, c1) of C, its part of db (if any) zeroed
 * unless accumulating. Each column is then summed over the rows in row order: the same bits at any thread count. */
static void column_sums_begin(float *db, int64_t C, int accumulate, int64_t *c0, int64_t *c1) {
    loom_cpu_thread_range(C, c0, c1);
    if (db && !accumulate)
        for (int64_t c = *c0; c < *c1; c++) db[c] = 0.0f;
}

/* one row of the bf16 form, columns [c0, c1): the gradient, its column sums (db) and its bf16 rounding; the
 * loop per form (erf or tanh, with or without db) so that none branches per element */
#define GELU_BACKWARD16_ROW(GRAD, DB)                                                                            \
    _Pragma("omp simd") for (int64_t c = c0; c < c1; c++) {                                                    \
        const float g = GRAD(x[c]) * dy[c];                                                                    \
        DB;                                                                                                    \
        o[c] = loom_cpu_bf16_round(g);                                                                         \
    }

/* the bf16 form: each thread its columns over every row, in row order, as cpu_bias_backward sums them */
static void cpu_gelu_backward16(uint16_t *d16, float *db, const float *pre, const float *dout, int64_t rows,
                                int64_t cols, int exact, int accumulate) {
#pragma omp parallel
    {
        int64_t c0, c1;
        column_sums_begin(db, cols, accumulate, &c0, &c1);
        for (int64_t r = 0; r < rows; r++) {
            const float *x = pre + r * cols, *dy = dout + r * cols;
            uint16_t *o = d16 + r * cols;
            if (exact && db) GELU_BACKWARD16_ROW(gelu_erf_grad, db[c] += g)
            else if (exact) GELU_BACKWARD16_ROW(gelu_erf_grad, (void)0)
            else if (db) GELU_BACKWARD16_ROW(gelu_tanh_grad, db[c] += g)
            else GELU_BACKWARD16_ROW(gelu_tanh_grad, (void)0)
        }
    }
}
#undef GELU_BACKWARD16_ROW

loom_status loom_cpu_gelu_backward(loom_backend *be, const loom_gelu_backward_args *a) {
    if (a->dinp16) {
        LOOM_CHECK(a->cols > 0 && a->n % a->cols == 0, LOOM_ERR_INVALID_ARG, "gelu_backward: %lld values in rows of %lld",
                   (long long)a->n, (long long)a->cols);
        cpu_gelu_backward16(a->dinp16, a->db, a->inp, a->dout, a->n / a->cols, a->cols, a->exact, a->accumulate);
    } else
        cpu_gelu_backward(be, a->dinp, a->inp, a->dout, a->n, a->exact);
    return LOOM_OK;
}

static inline float swiglu(float g, float u) { return g * (1.0f / (1.0f + loom_fast_expf(-g))) * u; }

static void cpu_swiglu_forward(loom_backend *be, float *out, uint16_t *out16, const float *gu, int64_t N, int64_t F) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *g = gu + n * 2 * F, *u = g + F;
        if (out16) {
            uint16_t *o = out16 + n * F;
#pragma omp simd
            for (int64_t f = 0; f < F; f++) o[f] = loom_cpu_bf16_round(swiglu(g[f], u[f]));
        } else {
            float *o = out + n * F;
#pragma omp simd
            for (int64_t f = 0; f < F; f++) o[f] = swiglu(g[f], u[f]);
        }
    }
}

loom_status loom_cpu_swiglu_forward(loom_backend *be, const loom_swiglu_forward_args *a) {
    cpu_swiglu_forward(be, a->out, a->out16, a->gu, a->N, a->F);
    return LOOM_OK;
}

static void cpu_swiglu_backward(loom_backend *be, float *dgu, const float *gu, const float *dout, int64_t N,
                              int64_t F) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *g = gu + n * 2 * F, *u = g + F, *dy = dout + n * F;
        float *dg = dgu + n * 2 * F, *du = dg + F;
#pragma omp simd
        for (int64_t f = 0; f < F; f++) {
            float s = 1.0f / (1.0f + loom_fast_expf(-g[f]));
            float silu = g[f] * s;
            du[f] = dy[f] * silu;
            dg[f] = dy[f] * u[f] * s * (1.0f + g[f] * (1.0f - s));
        }
    }
}

loom_status loom_cpu_swiglu_backward(loom_backend *be, const loom_swiglu_backward_args *a) {
    cpu_swiglu_backward(be, a->dgu, a->gu, a->dout, a->N, a->F);
    return LOOM_OK;
}

static void cpu_bias_add(loom_backend *be, float *x, const float *bias, int64_t N, int64_t C) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *r = x + n * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) r[c] += bias[c];
    }
}

loom_status loom_cpu_bias_add(loom_backend *be, const loom_bias_add_args *a) {
    cpu_bias_add(be, a->x, a->bias, a->N, a->C);
    return LOOM_OK;
}

/* column_sums_begin's split; with dout16 each thread rounds the values it reads, so the products' bf16 operand
 * costs no pass of its own */
static void cpu_bias_backward(loom_backend *be, float *db, uint16_t *dout16, const float *dout, int64_t N, int64_t C,
                              int accumulate) {
    (void)be;
#pragma omp parallel
    {
        int64_t c0, c1;
        column_sums_begin(db, C, accumulate, &c0, &c1);
        for (int64_t n = 0; n < N; n++) {
            const float *dy = dout + n * C;
            uint16_t *d16 = dout16 ? dout16 + n * C : NULL;
            if (db && d16)
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) {
                    db[c] += dy[c];
                    d16[c] = loom_cpu_bf16_round(dy[c]);
                }
            else if (db)
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) db[c] += dy[c];
            else if (d16)
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) d16[c] = loom_cpu_bf16_round(dy[c]);
        }
    }
}

loom_status loom_cpu_bias_backward(loom_backend *be, const loom_bias_backward_args *a) {
    cpu_bias_backward(be, a->db, a->dout16, a->dout, a->N, a->C, a->accumulate);
    return LOOM_OK;
}

static void cpu_add(loom_backend *be, float *out, const float *a, const float *b, int64_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

loom_status loom_cpu_add(loom_backend *be, const loom_add_args *a) {
    cpu_add(be, a->out, a->a, a->b, a->n);
    return LOOM_OK;
}

static void cpu_scale(loom_backend *be, float *x, float s, int64_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

loom_status loom_cpu_scale(loom_backend *be, const loom_scale_args *a) {
    cpu_scale(be, a->x, a->s, a->n);
    return LOOM_OK;
}
