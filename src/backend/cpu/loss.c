/* Softmax and cross-entropy fused: one pass for the row maximum, one for the sum of exponentials, and
 * (training) one that overwrites the logits with their gradient, so the (N,V) probabilities are never
 * stored separately. Training keeps each exponential in its logit's place between the last two passes, so
 * each is computed once (a row is ~200 KB: the later passes read it from L2); the vocabulary-parallel passes
 * too (keep_exps), across the all-reduce between them. */
#include "cpu_impl.h"

/* the sum of exp(x[v] - m) over a row; with keep, each exponential is left in its logit's place (for the
 * gradient's pass) */
static inline float row_exp_sum(float *x, int64_t V, float m, int keep) {
    float s = 0.0f;
    if (keep) {
#pragma omp simd reduction(+ : s)
        for (int64_t v = 0; v < V; v++) {
            x[v] = loom_fast_expf(x[v] - m);
            s += x[v];
        }
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t v = 0; v < V; v++) s += loom_fast_expf(x[v] - m);
    }
    return s;
}

static void cpu_softmax_cross_entropy(loom_backend *be, float *logits, float *losses, const int32_t *targets,
                                    int64_t N, int64_t V, float grad_scale, uint16_t *grad16) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *x = logits + n * V;
        int32_t tgt = targets[n];
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        const float x_tgt = tgt >= 0 ? x[tgt] : 0.0f;
        const float s = row_exp_sum(x, V, mx, grad_scale != 0.0f);
        float lse = mx + logf(s);
        if (tgt < 0) {
            losses[n] = 0.0f;
            if (grad_scale != 0.0f && grad16) memset(grad16 + n * V, 0, (size_t)V * sizeof(uint16_t));
            else if (grad_scale != 0.0f) memset(x, 0, (size_t)V * sizeof(float));
            continue;
        }
        losses[n] = lse - x_tgt;
        if (grad_scale != 0.0f && grad16) { /* the same fp32 values as below, rounded as they are written */
            const float inv = grad_scale / s, at_tgt = x[tgt] * inv - grad_scale;
            uint16_t *d = grad16 + n * V;
#pragma omp simd
            for (int64_t v = 0; v < V; v++) d[v] = loom_cpu_bf16_round(x[v] * inv);
            d[tgt] = loom_cpu_bf16_round(at_tgt);
        } else if (grad_scale != 0.0f) {
            float inv = grad_scale / s;
#pragma omp simd
            for (int64_t v = 0; v < V; v++) x[v] *= inv;
            x[tgt] -= grad_scale;
        }
    }
}

loom_status loom_cpu_softmax_cross_entropy(loom_backend *be, const loom_softmax_cross_entropy_args *a) {
    cpu_softmax_cross_entropy(be, a->logits, a->losses, a->targets, a->N, a->V, a->grad_scale, a->grad16);
    return LOOM_OK;
}

static void cpu_ce_row_max(loom_backend *be, const float *logits, int64_t N, int64_t V, float *out) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * V;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        out[n] = mx;
    }
}

loom_status loom_cpu_ce_row_max(loom_backend *be, const loom_ce_row_max_args *a) {
    cpu_ce_row_max(be, a->logits, a->N, a->V, a->mx);
    return LOOM_OK;
}

static void cpu_ce_row_sums(loom_backend *be, float *logits, const int32_t *targets, int64_t N, int64_t V,
                          int64_t v0, const float *mx, float *sums, int keep_exps) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *x = logits + n * V;
        const float m = mx[n];
        const int64_t t = (int64_t)targets[n] - v0;
        sums[N + n] = (targets[n] >= 0 && t >= 0 && t < V) ? x[t] : 0.0f; /* before keep_exps overwrites it */
        sums[n] = row_exp_sum(x, V, m, keep_exps);
    }
}

loom_status loom_cpu_ce_row_sums(loom_backend *be, const loom_ce_row_sums_args *a) {
    cpu_ce_row_sums(be, a->logits, a->targets, a->N, a->V, a->v0, a->mx, a->sums, a->keep_exps);
    return LOOM_OK;
}

static void cpu_ce_finish(loom_backend *be, float *logits, float *losses, const int32_t *targets, int64_t N, int64_t V,
                        int64_t v0, const float *mx, const float *sums, float grad_scale, uint16_t *grad16,
                        int have_exps) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *x = logits + n * V;
        if (targets[n] < 0) {
            losses[n] = 0.0f;
            if (grad_scale != 0.0f && grad16) memset(grad16 + n * V, 0, (size_t)V * sizeof(uint16_t));
            else if (grad_scale != 0.0f) memset(x, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float m = mx[n], s = sums[n];
        losses[n] = m + logf(s) - sums[N + n];
        const int64_t t = (int64_t)targets[n] - v0;
        if (grad_scale == 0.0f) continue;
        const float inv = grad_scale / s;
        if (!have_exps) /* the exponentials in the logits' place first, as row_sums leaves them with keep_exps */
#pragma omp simd
            for (int64_t v = 0; v < V; v++) x[v] = loom_fast_expf(x[v] - m);
        if (grad16) { /* the same fp32 values as below, rounded as they are written */
            uint16_t *d = grad16 + n * V;
#pragma omp simd
            for (int64_t v = 0; v < V; v++) d[v] = loom_cpu_bf16_round(x[v] * inv);
            if (t >= 0 && t < V) d[t] = loom_cpu_bf16_round(x[t] * inv - grad_scale);
        } else {
#pragma omp simd
            for (int64_t v = 0; v < V; v++) x[v] *= inv;
            if (t >= 0 && t < V) x[t] -= grad_scale;
        }
    }
}

loom_status loom_cpu_ce_finish(loom_backend *be, const loom_ce_finish_args *a) {
    cpu_ce_finish(be, a->logits, a->losses, a->targets, a->N, a->V, a->v0, a->mx, a->sums, a->grad_scale, a->grad16,
                  a->keep_exps);
    return LOOM_OK;
}
