/* Copies and fills on the GPU. Every copy is queued on the backend's stream, in order with the kernels, so
 * an upload is seen by the next kernel and a download sees every kernel before it. A download waits for the
 * stream before returning: the host reads the bytes right after. An upload from pageable host memory has
 * been copied out of it when cudaMemcpyAsync returns (the runtime stages it), so the caller may reuse the
 * memory at once; from page-locked host memory the copy is truly asynchronous, so the upload waits too.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

static int page_locked(const void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError(); /* not an error worth keeping: plain host memory on older runtimes */
        return 0;
    }
    return at.type == cudaMemoryTypeHost;
}

/* buffer to buffer; overlapping ranges (memmove's case, which cudaMemcpy leaves undefined) go through the
 * workspace */
static loom_status copy_d2d(loom_backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t s = loom_cuda_of(be)->stream;
    const char *d = (const char *)dst, *c = (const char *)src;
    if (d < c + bytes && c < d + bytes) {
        void *w;
        LOOM_CALL(loom_cuda_workspace(be, bytes, &w));
        LOOM_CALL_CUDA(cudaMemcpyAsync(w, src, bytes, cudaMemcpyDeviceToDevice, s));
        src = w;
    }
    LOOM_CALL_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    return LOOM_OK;
}

extern "C" loom_status loom_cuda_copy(loom_backend *be, const loom_copy_args *a) {
    if (a->bytes <= 0 || a->dst == a->src) return LOOM_OK;
    cudaStream_t s = loom_cuda_of(be)->stream;
    const size_t bytes = (size_t)a->bytes;
    switch (a->kind) {
    case LOOM_COPY_H2D:
        LOOM_CALL_CUDA(cudaMemcpyAsync(a->dst, a->src, bytes, cudaMemcpyHostToDevice, s));
        if (page_locked(a->src)) LOOM_CALL_CUDA(cudaStreamSynchronize(s));
        return LOOM_OK;
    case LOOM_COPY_D2H:
        LOOM_CALL_CUDA(cudaMemcpyAsync(a->dst, a->src, bytes, cudaMemcpyDeviceToHost, s));
        LOOM_CALL_CUDA(cudaStreamSynchronize(s));
        return LOOM_OK;
    case LOOM_COPY_D2D: return copy_d2d(be, a->dst, a->src, bytes);
    }
    return loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__, "copy kind %d", (int)a->kind);
}

__global__ void copy_rows_kernel(float *dst, int64_t ld_dst, const float *src, int64_t ld_src, int64_t cols,
                                 int accumulate, int64_t n) {
    LOOM_GRID_STRIDE(k, n) {
        const int64_t i = k / cols, j = k - i * cols;
        const float v = src[i * ld_src + j];
        if (accumulate) dst[i * ld_dst + j] += v;
        else dst[i * ld_dst + j] = v;
    }
}

extern "C" loom_status loom_cuda_copy_rows(loom_backend *be, const loom_copy_rows_args *a) {
    const int64_t n = a->rows * a->cols;
    if (n <= 0) return LOOM_OK;
    copy_rows_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->dst, a->ld_dst, a->src, a->ld_src, a->cols, a->accumulate, n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

__global__ void fill_kernel(float *x, float v, int64_t n) {
    LOOM_GRID_STRIDE(i, n) x[i] = v;
}

extern "C" loom_status loom_cuda_fill(loom_backend *be, const loom_fill_args *a) {
    if (a->n <= 0) return LOOM_OK;
    cudaStream_t s = loom_cuda_of(be)->stream;
    if (a->value == 0.0f) { /* +0.0 (the CPU memsets for -0.0 too) */
        LOOM_CALL_CUDA(cudaMemsetAsync(a->x, 0, (size_t)a->n * sizeof(float), s));
        return LOOM_OK;
    }
    fill_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, s>>>(a->x, a->value, a->n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
