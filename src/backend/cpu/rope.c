/* Rotary position embedding, Hugging Face's rotate_half convention: element i of a head pairs with
 * element i + hd/2. Applied in place to the q and k heads of the fused qkv rows. */
#include "cpu_impl.h"

static void cpu_rope(loom_backend *be, float *qkv, const float *cos_t, const float *sin_t, int64_t B, int64_t T,
                   int64_t H, int64_t KV, int64_t hd, int inverse) {
    (void)be;
    int64_t half = hd / 2, row = (H + 2 * KV) * hd, nheads = H + KV;
    float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t t = bt % T;
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < nheads; h++) {
            float *x = qkv + bt * row + h * hd;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half], si = sgn * s[i];
                x[i] = x1 * c[i] - x2 * si;
                x[i + half] = x2 * c[i] + x1 * si;
            }
        }
    }
}

loom_status loom_cpu_rope(loom_backend *be, const loom_rope_args *a) {
    cpu_rope(be, a->qkv, a->cos_t, a->sin_t, a->B, a->T, a->H, a->KV, a->hd, a->inverse);
    return LOOM_OK;
}
