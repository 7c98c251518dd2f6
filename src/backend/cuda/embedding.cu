/* Token (+ learned position) embedding on the GPU. The backward scatter into dwte must be deterministic,
 * so no atomics: rows of the same token are added in token order, as on the CPU (bit for bit, when the
 * rows are added to the same starting values). How: a first kernel links each position to the next one
 * holding the same token and marks each token's first position (an all-pairs comparison over tiles of the
 * batch's tokens in shared memory: B*T = 16K tokens is 2.7e8 integer compares, well under a millisecond); a
 * second kernel lets each first position's block walk its token's chain, one thread per channel. A sort of
 * the tokens would scale better for much larger batches.
 * dwpe sums the batch rows of each position, one thread per (position, channel), in batch order.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

/* out (B*T, C) = wte[token] (+ wpe[t]); a negative token's row is zero (+ wpe[t]) */
__global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const float *wte, const uint16_t *wte16,
                                         const float *wpe, int64_t T, int64_t C, int64_t n) {
    LOOM_GRID_STRIDE(i, n) {
        const int64_t bt = i / C, c = i - bt * C;
        const int32_t tok = tokens[bt];
        const float e = tok < 0 ? 0.0f : wte16 ? __uint_as_float((uint32_t)wte16[(int64_t)tok * C + c] << 16)
                                               : wte[(int64_t)tok * C + c];
        out[i] = wpe ? (tok >= 0 ? e + wpe[(bt % T) * C + c] : wpe[(bt % T) * C + c]) : e;
    }
}

extern "C" loom_status loom_cuda_embedding_forward(loom_backend *be, const loom_embedding_forward_args *a) {
    const int64_t n = a->B * a->T * a->C;
    if (n <= 0) return LOOM_OK;
    embedding_forward_kernel<<<loom_cuda_blocks(n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->out, a->tokens, a->wte, a->wte16, a->wpe, a->T, a->C, n);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

enum { LINK_TILE = 1024 };

/* next[i] = the smallest j > i with tokens[j] == tokens[i], or -1; first[i] = 1 when no j < i holds it */
__global__ void token_links_kernel(const int32_t *tokens, int64_t n, int32_t *next, unsigned char *first) {
    __shared__ int32_t tile[LINK_TILE];
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t mine = i < n ? tokens[i] : -1;
    int64_t nxt = -1;
    int fst = 1;
    for (int64_t t0 = 0; t0 < n; t0 += LINK_TILE) {
        __syncthreads();
        for (int64_t k = threadIdx.x; k < LINK_TILE; k += blockDim.x) tile[k] = t0 + k < n ? tokens[t0 + k] : -1;
        __syncthreads();
        const int64_t m = n - t0 < LINK_TILE ? n - t0 : LINK_TILE;
        if (mine < 0) continue;
        for (int64_t k = 0; k < m; k++) {
            if (tile[k] != mine) continue;
            const int64_t j = t0 + k;
            if (j < i) fst = 0;
            else if (j > i && nxt < 0) nxt = j;
        }
    }
    if (i < n) {
        next[i] = (int32_t)nxt;
        first[i] = (unsigned char)(mine >= 0 && fst);
    }
}

/* block (i, channel chunk): when position i is its token's first, add every row of that token in order */
__global__ void embedding_scatter_kernel(float *dwte, const float *dout, const int32_t *tokens, const int32_t *next,
                                         const unsigned char *first, int64_t C) {
    const int64_t i = blockIdx.x, c = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (!first[i] || c >= C) return;
    float *d = dwte + (int64_t)tokens[i] * C + c;
    float acc = *d;
    for (int64_t j = i; j >= 0; j = next[j]) acc += dout[j * C + c];
    *d = acc;
}

/* dwpe (T, C) (+)= sum over b of dout[b][t] */
__global__ void embedding_dwpe_kernel(float *dwpe, const float *dout, int64_t B, int64_t T, int64_t C, int accumulate) {
    LOOM_GRID_STRIDE(i, T * C) {
        float d = accumulate ? dwpe[i] : 0.0f;
        for (int64_t b = 0; b < B; b++) d += dout[b * T * C + i];
        dwpe[i] = d;
    }
}

static loom_status scatter_wte(loom_backend *be, const loom_embedding_backward_args *a) {
    const int64_t n = a->B * a->T;
    cudaStream_t s = loom_cuda_of(be)->stream;
    if (!a->accumulate_wte) LOOM_CALL_CUDA(cudaMemsetAsync(a->dwte, 0, (size_t)(a->V * a->C) * sizeof(float), s));
    if (n <= 0 || a->C <= 0) return LOOM_OK;
    LOOM_CHECK(n <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda embedding backward: %lld tokens exceed the int32 links",
               (long long)n);
    LOOM_CHECK((a->C + LOOM_CUDA_THREADS - 1) / LOOM_CUDA_THREADS <= 65535, LOOM_ERR_UNSUPPORTED,
               "cuda embedding backward: %lld channels exceed the grid", (long long)a->C);
    void *w;
    LOOM_CALL(loom_cuda_workspace(be, (size_t)n * (sizeof(int32_t) + 1), &w));
    int32_t *next = (int32_t *)w;
    unsigned char *first = (unsigned char *)(next + n);
    token_links_kernel<<<(unsigned)((n + LOOM_CUDA_THREADS - 1) / LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, s>>>(
        a->tokens, n, next, first);
    LOOM_CUDA_LAUNCHED();
    const dim3 grid((unsigned)n, (unsigned)((a->C + LOOM_CUDA_THREADS - 1) / LOOM_CUDA_THREADS));
    embedding_scatter_kernel<<<grid, LOOM_CUDA_THREADS, 0, s>>>(a->dwte, a->dout, a->tokens, next, first, a->C);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

extern "C" loom_status loom_cuda_embedding_backward(loom_backend *be, const loom_embedding_backward_args *a) {
    if (a->dwte) LOOM_CALL(scatter_wte(be, a));
    if (a->dwpe && a->T * a->C > 0) {
        embedding_dwpe_kernel<<<loom_cuda_blocks(a->T * a->C, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0,
                                loom_cuda_of(be)->stream>>>(a->dwpe, a->dout, a->B, a->T, a->C, a->accumulate_wpe);
        LOOM_CUDA_LAUNCHED();
    }
    return LOOM_OK;
}
