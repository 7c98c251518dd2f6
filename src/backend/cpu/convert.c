/* Precision conversions on the CPU: rounding to fp16 (the fp16 mixed-precision path) or bf16 (a bf16
 * key/value cache's prompt rows) and back to fp32.
 *
 * GCC's _Float16 (x86-64, GCC >= 12) converts with F16C's vcvtps2ph/vcvtph2ps where the build targets a CPU
 * that has them (-march=native here), and in software otherwise: round to nearest even, overflow to inf,
 * gradual underflow, as fp16 storage on any hardware. bf16 is f32_to_bf16's rounding, widened. */
#include "cpu_impl.h"

static void cpu_round(const loom_round_fp16_args *a, int bf16) {
#pragma omp parallel for schedule(static) if (a->rows * a->cols > 65536)
    for (int64_t i = 0; i < a->rows; i++) {
        const float *s = a->src + i * a->ld_src;
        float *d = a->dst + i * a->ld_dst;
        if (bf16)
            for (int64_t j = 0; j < a->cols; j++) d[j] = loom_cpu_bf16_widen(loom_cpu_bf16_round(s[j]));
        else
            for (int64_t j = 0; j < a->cols; j++) d[j] = (float)(_Float16)s[j];
    }
}

loom_status loom_cpu_round_fp16(loom_backend *be, const loom_round_fp16_args *a) {
    (void)be;
    cpu_round(a, 0);
    return LOOM_OK;
}

loom_status loom_cpu_round_bf16(loom_backend *be, const loom_round_bf16_args *a) {
    (void)be;
    cpu_round(a, 1);
    return LOOM_OK;
}
