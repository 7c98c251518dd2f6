/* Optimizer updates and global sums on the GPU. Updates are elementwise, with the CPU's operation order
 * (PyTorch's); the scalars the CPU derives once per call (decay, step, sqrt(bc2)) are derived the same way on
 * the host and passed in. Sums of squares (the gradient norm, LAMB's trust ratio) are in double, in two
 * fixed stages: one block per 16K-element chunk (as the CPU's blocks), then one block over the chunks in a
 * fixed tree; the result comes to the host through pinned memory. Same bits on every run.
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

enum { SUM_BLOCK = 16384, SUM_THREADS = 256, FINISH_THREADS = 1024 };

__global__ void sum_squares_partial(const float *x, int64_t n, double *partial) {
    __shared__ double sh[32];
    const int64_t i0 = (int64_t)blockIdx.x * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
    double s = 0.0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += (double)x[i] * (double)x[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* partial[0] = the sum of partial[0..nb) */
__global__ void sum_finish(double *partial, int64_t nb) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) s += partial[b];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[0] = s;
}

static loom_status chunks_of(int64_t n, int64_t *nb) {
    *nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    LOOM_CHECK(*nb <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "cuda sum of %lld elements exceeds the grid", (long long)n);
    return LOOM_OK;
}

extern "C" loom_status loom_cuda_sum_squares(loom_backend *be, const loom_sum_squares_args *a) {
    if (a->n <= 0) {
        *a->result = 0.0;
        return LOOM_OK;
    }
    int64_t nb;
    LOOM_CALL(chunks_of(a->n, &nb));
    double *part;
    LOOM_CALL(loom_cuda_workspace(be, (size_t)nb * sizeof(double), (void **)&part));
    cudaStream_t s = loom_cuda_of(be)->stream;
    sum_squares_partial<<<(unsigned)nb, SUM_THREADS, 0, s>>>(a->x, a->n, part);
    LOOM_CUDA_LAUNCHED();
    sum_finish<<<1, FINISH_THREADS, 0, s>>>(part, nb);
    LOOM_CUDA_LAUNCHED();
    return loom_cuda_scalar_to_host(be, part, a->result);
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, uint16_t *p16, int64_t n, float beta1,
                             float beta2, float eps, float decay, float step, float bc2s, float gs) {
    LOOM_GRID_STRIDE(i, n) {
        const float gi = g[i] * gs, pi = p[i] * decay;
        const float mi = m[i] * beta1 + (1.0f - beta1) * gi;
        const float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float pn = pi - step * (mi / (sqrtf(vi) / bc2s + eps));
        p[i] = pn;
        if (p16) p16[i] = bf16_round(pn);
    }
}

extern "C" loom_status loom_cuda_adamw(loom_backend *be, const loom_adamw_args *a) {
    if (a->n <= 0) return LOOM_OK;
    /* as the CPU computes them, in float */
    const float decay = 1.0f - a->lr * a->weight_decay, step = a->lr / a->bias_correction1,
                bc2s = sqrtf(a->bias_correction2);
    adamw_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->p, a->g, a->m, a->v, a->p16, a->n, a->beta1, a->beta2, a->eps, decay, step, bc2s, a->grad_scale);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* LAMB's first pass over one chunk: the moments, and the chunk's sum of r^2 in double */
__global__ void lamb_moments_kernel(const float *p, const float *g, float *m, float *v, int64_t n, float beta1,
                                    float beta2, float eps, float wd, float bc1, float bc2, float gs, double *partial) {
    __shared__ double sh[32];
    const int64_t i0 = (int64_t)blockIdx.x * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
    double s = 0.0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const float gi = g[i] * gs;
        const float mi = m[i] * beta1 + (1.0f - beta1) * gi;
        const float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float r = (mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * p[i];
        s += (double)r * r;
    }
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" loom_status loom_cuda_lamb_moments(loom_backend *be, const loom_lamb_moments_args *a) {
    if (a->n <= 0) {
        *a->result = 0.0;
        return LOOM_OK;
    }
    int64_t nb;
    LOOM_CALL(chunks_of(a->n, &nb));
    double *part;
    LOOM_CALL(loom_cuda_workspace(be, (size_t)nb * sizeof(double), (void **)&part));
    cudaStream_t s = loom_cuda_of(be)->stream;
    lamb_moments_kernel<<<(unsigned)nb, SUM_THREADS, 0, s>>>(a->p, a->g, a->m, a->v, a->n, a->beta1, a->beta2, a->eps,
                                                             a->weight_decay, a->bias_correction1, a->bias_correction2,
                                                             a->grad_scale, part);
    LOOM_CUDA_LAUNCHED();
    sum_finish<<<1, FINISH_THREADS, 0, s>>>(part, nb);
    LOOM_CUDA_LAUNCHED();
    return loom_cuda_scalar_to_host(be, part, a->result);
}

__global__ void lamb_apply_kernel(float *p, const float *m, const float *v, uint16_t *p16, int64_t n, float eps,
                                  float wd, float bc1, float bc2, float step) {
    LOOM_GRID_STRIDE(i, n) {
        const float r = (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps) + wd * p[i];
        const float pn = p[i] - step * r;
        p[i] = pn;
        if (p16) p16[i] = bf16_round(pn);
    }
}

extern "C" loom_status loom_cuda_lamb_apply(loom_backend *be, const loom_lamb_apply_args *a) {
    if (a->n <= 0) return LOOM_OK;
    lamb_apply_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->p, a->m, a->v, a->p16, a->n, a->eps, a->weight_decay, a->bias_correction1, a->bias_correction2, a->step);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* SGD with momentum (dampening 0), optional Nesterov; weight decay added to the gradient */
__global__ void sgd_kernel(float *p, const float *g, float *buf, uint16_t *p16, int64_t n, float lr, float momentum,
                           int nesterov, float wd, float gs, int first_step) {
    LOOM_GRID_STRIDE(i, n) {
        float d = g[i] * gs + wd * p[i];
        if (momentum != 0.0f) {
            const float b = first_step ? d : momentum * buf[i] + d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        const float pn = p[i] - lr * d;
        p[i] = pn;
        if (p16) p16[i] = bf16_round(pn);
    }
}

extern "C" loom_status loom_cuda_sgd(loom_backend *be, const loom_sgd_args *a) {
    if (a->n <= 0) return LOOM_OK;
    sgd_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->p, a->g, a->buf, a->p16, a->n, a->lr, a->momentum, a->nesterov, a->weight_decay, a->grad_scale, a->first_step);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* LARS: buf = momentum*buf + lr*(g + wd*p); p -= buf */
__global__ void lars_kernel(float *p, const float *g, float *buf, uint16_t *p16, int64_t n, float lr, float momentum,
                            float wd, float gs) {
    LOOM_GRID_STRIDE(i, n) {
        const float d = g[i] * gs + wd * p[i];
        const float b = momentum * buf[i] + lr * d;
        buf[i] = b;
        const float pn = p[i] - b;
        p[i] = pn;
        if (p16) p16[i] = bf16_round(pn);
    }
}

extern "C" loom_status loom_cuda_lars(loom_backend *be, const loom_lars_args *a) {
    if (a->n <= 0) return LOOM_OK;
    lars_kernel<<<loom_cuda_blocks(a->n, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        a->p, a->g, a->buf, a->p16, a->n, a->lr, a->momentum, a->weight_decay, a->grad_scale);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}
