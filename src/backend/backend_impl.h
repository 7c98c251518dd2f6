/* Private: what a backend fills. Its kernel table (one entry per LOOM_KERNELS line) and its buffer
 * operations; include/loom/backend.h's wrappers dispatch through them and profile. */
#ifndef LOOM_BACKEND_IMPL_H
#define LOOM_BACKEND_IMPL_H
#include "loom/backend.h"

struct loom_comm; /* loom/comm.h */

typedef struct {
#define LOOM_KERNEL_SLOT(name, category, flops) loom_status (*name)(loom_backend *, const loom_##name##_args *);
    LOOM_KERNELS(LOOM_KERNEL_SLOT)
#undef LOOM_KERNEL_SLOT
} loom_kernel_table;

typedef struct {
    /* zero-filled memory for kernels; accounting is done by the caller (loom_buf_alloc) */
    loom_status (*alloc)(loom_backend *, size_t bytes, void **out);
    void (*free)(loom_backend *, void *p, size_t bytes);
    loom_status (*reserve)(loom_backend *, size_t bytes, void **out);
    void (*unreserve)(loom_backend *, void *p, size_t bytes);
    void (*discard)(loom_backend *, void *p, size_t bytes);
    int (*device_only)(const loom_backend *, const void *p); /* NULL: the host addresses everything */
    loom_status (*sync)(loom_backend *);
    void (*populate)(loom_backend *, void *p, size_t bytes); /* NULL: pages come as they are written */
} loom_buffer_ops;

struct loom_backend {
    const char *name;
    loom_kernel_table k;
    loom_buffer_ops buf;
    int host_accessible;
    int batch_invariant;          /* loom_backend_config.batch_invariant */
    int own_peak;                 /* 1: the host CPU's GEMM peak says nothing of this backend's rate (a GPU) */
    int threads;
    char gemm_kernel[128];
    char bf16_kernel[160];        /* which bf16 GEMM runs */
    void *bf16;                   /* its state (oneDNN), NULL when the reference runs */
    void (*bf16_free)(void *);
    float *bf16_ref[2];           /* the reference's fp32 operands, grow-only (src/backend/cpu/dnnl.c) */
    size_t bf16_ref_n[2];
    size_t bf16_own_bytes;        /* the bf16 GEMM's own buffers (oneDNN's packed operands) */
    void *blas;                   /* the CPU kernels' GEMM (OpenBLAS), NULL for the built-in loop */
    void (*blas_free)(void *);
    int profiling;
    loom_profile profile;
    void *impl;                   /* backend-private state (the CPU backend's BLAS handle, the CUDA context) */
    void (*impl_free)(loom_backend *);
    /* Called by loom_comm_set_backend (and for every communicator split from one that has this backend): a
     * backend with its own transport for its buffers (CUDA: NCCL) wraps the communicator's operations; not
     * collective. NULL: the communicator stages this backend's device buffers through host memory. */
    void (*comm_attach)(loom_backend *, struct loom_comm *);
};

/* The CPU backend fills `be` (src/backend/cpu/cpu.c). */
LOOM_NODISCARD loom_status loom_cpu_backend_init(const loom_backend_config *cfg, loom_backend *be);
/* The CPU backend over buffers kept PROT_NONE except inside its own operations (src/backend/cpu/isolated.c). */
LOOM_NODISCARD loom_status loom_isolated_backend_init(const loom_backend_config *cfg, loom_backend *be);
#ifdef LOOM_HAVE_CUDA
/* src/backend/cuda/, built as the module libloom_cuda.so: backend.c finds it with dlopen and calls this */
LOOM_NODISCARD loom_status loom_cuda_backend_init(const loom_backend_config *cfg, loom_backend *be);
#endif
#endif
