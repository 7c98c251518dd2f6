/* Copies and fills on the CPU: host memory is the buffers' memory, so every kind of copy is a memcpy
 * (large ones split over the threads: first touch and bandwidth both scale with cores here). */
#include "cpu_impl.h"

loom_status loom_cpu_copy(loom_backend *be, const loom_copy_args *a) {
    (void)be;
    const int64_t n = a->bytes, piece = (int64_t)1 << 20;
    if (n <= 4 * piece) {
        memmove(a->dst, a->src, (size_t)n);
        return LOOM_OK;
    }
    char *d = a->dst;
    const char *s = a->src;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < n; o += piece) memcpy(d + o, s + o, (size_t)(n - o < piece ? n - o : piece));
    return LOOM_OK;
}

loom_status loom_cpu_copy_rows(loom_backend *be, const loom_copy_rows_args *a) {
    (void)be;
    const int64_t rows = a->rows, w = a->cols;
#pragma omp parallel for schedule(static) if (rows * w > 65536)
    for (int64_t i = 0; i < rows; i++) {
        float *d = a->dst + i * a->ld_dst;
        const float *s = a->src + i * a->ld_src;
        if (a->accumulate)
            for (int64_t k = 0; k < w; k++) d[k] += s[k];
        else memcpy(d, s, (size_t)w * sizeof(float));
    }
    return LOOM_OK;
}

loom_status loom_cpu_fill(loom_backend *be, const loom_fill_args *a) {
    (void)be;
    float *x = a->x;
    const float v = a->value;
    const int64_t n = a->n;
    if (v == 0.0f) {
        memset(x, 0, (size_t)n * sizeof(float));
        return LOOM_OK;
    }
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] = v;
    return LOOM_OK;
}
