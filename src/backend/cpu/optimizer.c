/* Optimizer update kernels over one contiguous range of the flat parameter buffer (a parameter, or later a
 * ZeRO shard or an offloaded chunk). PyTorch's operation order is mirrored so one step matches it to
 * rounding. */
#include <stdlib.h>

#include "cpu_impl.h"

#define SUM_BLOCK 16384

/* Blocked sum of squares: each fixed-size block is summed in double, then the block sums in order, so the
 * bits do not depend on the thread count. */
static double cpu_sum_squares(loom_backend *be, const float *x, int64_t n) {
    (void)be;
    int64_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double stack_part[64];
    double *part = nb <= 64 ? stack_part : malloc((size_t)nb * sizeof(double));
    if (!part) { /* fall back to a serial sum: same order as the blocks below */
        double total = 0.0;
        for (int64_t b = 0; b < nb; b++) {
            double s = 0.0;
            for (int64_t i = b * SUM_BLOCK; i < n && i < (b + 1) * SUM_BLOCK; i++) s += (double)x[i] * x[i];
            total += s;
        }
        return total;
    }
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = i0; i < i1; i++) s += (double)x[i] * (double)x[i];
        part[b] = s;
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += part[b];
    if (part != stack_part) free(part);
    return total;
}

loom_status loom_cpu_sum_squares(loom_backend *be, const loom_sum_squares_args *a) {
    *a->result = cpu_sum_squares(be, a->x, a->n);
    return LOOM_OK;
}

/* one element's update; p16: also its bf16 copy (the flag is a constant in each caller's loop; so in the
 * updates below) */
static inline void adamw_one(float *p, const float *g, float *m, float *v, uint16_t *p16, int64_t i, float decay,
                             float step, float bc2s, float beta1, float beta2, float eps, float gs, int with16) {
    float gi = g[i] * gs;
    float pi = p[i] * decay;
    float mi = m[i] * beta1 + (1.0f - beta1) * gi;
    float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step * (mi / (sqrtf(vi) / bc2s + eps));
    if (with16) p16[i] = loom_cpu_bf16_round(p[i]);
}

static void cpu_adamw(loom_backend *be, float *p, const float *g, float *m, float *v, uint16_t *p16, int64_t n,
                      float lr, float beta1, float beta2, float eps, float wd, float bc1, float bc2, float gs) {
    (void)be;
    const float decay = 1.0f - lr * wd, step = lr / bc1, bc2s = sqrtf(bc2);
    if (p16) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) adamw_one(p, g, m, v, p16, i, decay, step, bc2s, beta1, beta2, eps, gs, 1);
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) adamw_one(p, g, m, v, NULL, i, decay, step, bc2s, beta1, beta2, eps, gs, 0);
}

loom_status loom_cpu_adamw(loom_backend *be, const loom_adamw_args *a) {
    cpu_adamw(be, a->p, a->g, a->m, a->v, a->p16, a->n, a->lr, a->beta1, a->beta2, a->eps, a->weight_decay, a->bias_correction1, a->bias_correction2, a->grad_scale);
    return LOOM_OK;
}

/* One block of LAMB's first pass: updates m and v, returns the block's sum of r^2 (in vector lanes, then the
 * lanes: a fixed order for a fixed build, whatever the thread count). */
static double lamb_block(const float *p, const float *g, float *m, float *v, int64_t i0, int64_t i1, float beta1,
                         float beta2, float eps, float wd, float bc1, float bc2, float gs) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; i++) {
        float gi = g[i] * gs;
        float mi = m[i] * beta1 + (1.0f - beta1) * gi;
        float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float r = (mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * p[i];
        s += (double)r * r;
    }
    return s;
}

static double cpu_lamb_moments(loom_backend *be, const float *p, const float *g, float *m, float *v, int64_t n,
                             float beta1, float beta2, float eps, float wd, float bc1, float bc2, float gs) {
    (void)be;
    int64_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double stack_part[64];
    double *part = nb <= 64 ? stack_part : malloc((size_t)nb * sizeof(double));
    double total = 0.0;
    if (!part) { /* same blocks, same order, one thread */
        for (int64_t b = 0; b < nb; b++)
            total += lamb_block(p, g, m, v, b * SUM_BLOCK, b * SUM_BLOCK + SUM_BLOCK < n ? b * SUM_BLOCK + SUM_BLOCK : n,
                                beta1, beta2, eps, wd, bc1, bc2, gs);
        return total;
    }
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++)
        part[b] = lamb_block(p, g, m, v, b * SUM_BLOCK, b * SUM_BLOCK + SUM_BLOCK < n ? b * SUM_BLOCK + SUM_BLOCK : n,
                             beta1, beta2, eps, wd, bc1, bc2, gs);
    for (int64_t b = 0; b < nb; b++) total += part[b];
    if (part != stack_part) free(part);
    return total;
}

loom_status loom_cpu_lamb_moments(loom_backend *be, const loom_lamb_moments_args *a) {
    *a->result = cpu_lamb_moments(be, a->p, a->g, a->m, a->v, a->n, a->beta1, a->beta2, a->eps, a->weight_decay, a->bias_correction1, a->bias_correction2, a->grad_scale);
    return LOOM_OK;
}

static inline void lamb_apply_one(float *p, const float *m, const float *v, uint16_t *p16, int64_t i, float eps,
                                  float wd, float bc1, float bc2, float step, int with16) {
    float r = (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps) + wd * p[i];
    p[i] -= step * r;
    if (with16) p16[i] = loom_cpu_bf16_round(p[i]);
}

static void cpu_lamb_apply(loom_backend *be, float *p, const float *m, const float *v, uint16_t *p16, int64_t n,
                           float eps, float wd, float bc1, float bc2, float step) {
    (void)be;
    if (p16) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) lamb_apply_one(p, m, v, p16, i, eps, wd, bc1, bc2, step, 1);
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) lamb_apply_one(p, m, v, NULL, i, eps, wd, bc1, bc2, step, 0);
}

loom_status loom_cpu_lamb_apply(loom_backend *be, const loom_lamb_apply_args *a) {
    cpu_lamb_apply(be, a->p, a->m, a->v, a->p16, a->n, a->eps, a->weight_decay, a->bias_correction1, a->bias_correction2, a->step);
    return LOOM_OK;
}

static inline void sgd_one(float *p, const float *g, float *buf, uint16_t *p16, int64_t i, float lr, float momentum,
                           int nesterov, float wd, float gs, int first_step, int with16) {
    float d = g[i] * gs + wd * p[i];
    if (momentum != 0.0f) {
        float b = first_step ? d : momentum * buf[i] + d;
        buf[i] = b;
        d = nesterov ? d + momentum * b : b;
    }
    p[i] -= lr * d;
    if (with16) p16[i] = loom_cpu_bf16_round(p[i]);
}

static void cpu_sgd(loom_backend *be, float *p, const float *g, float *buf, uint16_t *p16, int64_t n, float lr,
                    float momentum, int nesterov, float wd, float gs, int first_step) {
    (void)be;
    if (p16) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) sgd_one(p, g, buf, p16, i, lr, momentum, nesterov, wd, gs, first_step, 1);
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) sgd_one(p, g, buf, NULL, i, lr, momentum, nesterov, wd, gs, first_step, 0);
}

loom_status loom_cpu_sgd(loom_backend *be, const loom_sgd_args *a) {
    cpu_sgd(be, a->p, a->g, a->buf, a->p16, a->n, a->lr, a->momentum, a->nesterov, a->weight_decay, a->grad_scale, a->first_step);
    return LOOM_OK;
}

static inline void lars_one(float *p, const float *g, float *buf, uint16_t *p16, int64_t i, float lr_local,
                            float momentum, float wd, float gs, int with16) {
    float d = g[i] * gs + wd * p[i];
    float b = momentum * buf[i] + lr_local * d;
    buf[i] = b;
    p[i] -= b;
    if (with16) p16[i] = loom_cpu_bf16_round(p[i]);
}

static void cpu_lars(loom_backend *be, float *p, const float *g, float *buf, uint16_t *p16, int64_t n, float lr_local,
                     float momentum, float wd, float gs) {
    (void)be;
    if (p16) {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) lars_one(p, g, buf, p16, i, lr_local, momentum, wd, gs, 1);
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) lars_one(p, g, buf, NULL, i, lr_local, momentum, wd, gs, 0);
}

loom_status loom_cpu_lars(loom_backend *be, const loom_lars_args *a) {
    cpu_lars(be, a->p, a->g, a->buf, a->p16, a->n, a->lr, a->momentum, a->weight_decay, a->grad_scale);
    return LOOM_OK;
}
