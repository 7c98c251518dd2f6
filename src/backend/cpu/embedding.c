/* Token (+ learned position) embedding. The backward scatter is parallel over channel ranges, each
 * thread walking all tokens in order, so repeated tokens add up in the same order on any thread count. */
#include "cpu_impl.h"

static void cpu_embedding_forward(loom_backend *be, float *out, const int32_t *tokens, const float *wte,
                                const uint16_t *wte16, const float *wpe, int64_t B, int64_t T, int64_t C) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < B * T; bt++) {
        float *o = out + bt * C;
        if (tokens[bt] < 0) { /* another rank's vocabulary row */
            if (wpe) memcpy(o, wpe + (bt % T) * C, (size_t)C * sizeof(float));
            else memset(o, 0, (size_t)C * sizeof(float));
            continue;
        }
        if (wte16) { /* bf16 rows: the upper half of an fp32 */
            const uint16_t *e = wte16 + (int64_t)tokens[bt] * C;
            for (int64_t c = 0; c < C; c++) {
                uint32_t u = (uint32_t)e[c] << 16;
                float v;
                memcpy(&v, &u, sizeof v);
                o[c] = wpe ? v + wpe[(bt % T) * C + c] : v;
            }
            continue;
        }
        const float *e = wte + (int64_t)tokens[bt] * C;
        if (wpe) {
            const float *p = wpe + (bt % T) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
            memcpy(o, e, (size_t)C * sizeof(float));
        }
    }
}

loom_status loom_cpu_embedding_forward(loom_backend *be, const loom_embedding_forward_args *a) {
    cpu_embedding_forward(be, a->out, a->tokens, a->wte, a->wte16, a->wpe, a->B, a->T, a->C);
    return LOOM_OK;
}

static void cpu_embedding_backward(loom_backend *be, float *dwte, float *dwpe, const float *dout,
                                 const int32_t *tokens, int64_t B, int64_t T, int64_t C, int64_t V,
                                 int accumulate_wte, int accumulate_wpe) {
    (void)be;
    if (dwte && !accumulate_wte) {
#pragma omp parallel for schedule(static)
        for (int64_t v = 0; v < V; v++) memset(dwte + v * C, 0, (size_t)C * sizeof(float));
    }
#pragma omp parallel
    {
        int64_t c0, c1;
        loom_cpu_thread_range(C, &c0, &c1);
        if (dwte)
            for (int64_t bt = 0; bt < B * T; bt++) {
                if (tokens[bt] < 0) continue;
                float *d = dwte + (int64_t)tokens[bt] * C;
                const float *g = dout + bt * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) d[c] += g[c];
            }
        if (dwpe)
            for (int64_t t = 0; t < T; t++) {
                float *d = dwpe + t * C;
                if (!accumulate_wpe)
                    for (int64_t c = c0; c < c1; c++) d[c] = 0.0f;
                for (int64_t b = 0; b < B; b++) {
                    const float *g = dout + (b * T + t) * C;
#pragma omp simd
                    for (int64_t c = c0; c < c1; c++) d[c] += g[c];
                }
            }
    }
}

loom_status loom_cpu_embedding_backward(loom_backend *be, const loom_embedding_backward_args *a) {
    cpu_embedding_backward(be, a->dwte, a->dwpe, a->dout, a->tokens, a->B, a->T, a->C, a->V, a->accumulate_wte, a->accumulate_wpe);
    return LOOM_OK;
}
