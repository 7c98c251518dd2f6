/* Precision conversions on the CPU: fp16 rounding (the fp16 mixed-precision path).
 *
 * GCC's _Float16 (x86-64, GCC >= 12) converts with F16C's vcvtps2ph/vcvtph2ps where the build targets a CPU
 * that has them (-march=native here), and in software otherwise: round to nearest even, overflow to inf,
 * gradual underflow, as fp16 storage on any hardware. */
#include "cpu_impl.h"

static void cpu_round_fp16(loom_backend *be, float *dst, int64_t ld_dst, const float *src, int64_t ld_src, int64_t rows,
                         int64_t cols) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t i = 0; i < rows; i++) {
        const float *s = src + i * ld_src;
        float *d = dst + i * ld_dst;
        for (int64_t j = 0; j < cols; j++) d[j] = (float)(_Float16)s[j];
    }
}

loom_status loom_cpu_round_fp16(loom_backend *be, const loom_round_fp16_args *a) {
    cpu_round_fp16(be, a->dst, a->ld_dst, a->src, a->ld_src, a->rows, a->cols);
    return LOOM_OK;
}
