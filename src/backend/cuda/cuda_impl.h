/* Private to the CUDA backend (src/backend/cuda/, the module libloom_cuda.so): its state, the error macros
 * around CUDA and cuBLAS calls, and the kernel entry points cuda.c puts in the table. Included from C (cuda.c,
 * blas.c, src/comm/nccl.c) and from CUDA C++ (the *.cu kernel files), so everything here has C linkage.
 *
 * UNVERIFIED on hardware: this backend was written and compiled on a machine without a GPU. Its code ran there
 * only in a CPU emulation of the CUDA execution model (tests/cuda_emu/run.sh: every kernel against the CPU backend, and
 * short training runs matching the CPU's); tests/test_backend_ops cuda and scripts/gpu_check.sh are what check
 * it on a GPU. */
#ifndef LOOM_CUDA_IMPL_H
#define LOOM_CUDA_IMPL_H
/* the C headers the loom headers include, first: in C++ they must not be seen inside extern "C" */
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../backend_impl.h"
#include "loom/log.h"

/* The backend's state (be->impl). One device, one compute stream for every kernel and copy in issue order
 * (which is what makes the host's view of a buffer consistent: a download waits for the stream). */
typedef struct {
    int device;
    cudaStream_t stream;       /* every kernel and copy */
    cudaStream_t stream2;      /* matmul_pair's second product, joined back to `stream` */
    cudaStream_t comm_stream;  /* NCCL collectives (src/comm/nccl.c): one per backend, so that collectives of
                                  different communicators run in the order this process issued them */
    cudaEvent_t ev_fork, ev_join; /* matmul_pair */
    cudaEvent_t ev_comm;       /* the compute stream's point a collective waits for */
    cublasHandle_t blas, blas2; /* one per stream: each has its own workspace, which keeps cuBLAS deterministic */
    int tf32;                  /* LOOM_CUDA_TF32=1: fp32 GEMMs on TF32 tensor cores */
    void *work;                /* scratch for multi-pass kernels (reduction partials, links); grown, never shrunk */
    size_t work_bytes;
    double *host_scalar;       /* pinned: a reduction's result on its way to the host */
    int sm_count;
    size_t smem_optin;         /* the most dynamic shared memory a block may opt in to */
    char device_name[256];
} loom_cuda;

static inline loom_cuda *loom_cuda_of(loom_backend *be) { return (loom_cuda *)be->impl; }

/* Records a failed CUDA call as loom's error (file:line, the call, CUDA's name and text for the code) and
 * returns the status: LOOM_ERR_NOMEM for out of memory, LOOM_ERR_UNSUPPORTED for no device or driver,
 * LOOM_ERR_INTERNAL otherwise. */
loom_status loom_cuda_fail(cudaError_t e, const char *what, const char *file, int line, const char *func);
loom_status loom_cublas_fail(cublasStatus_t s, const char *what, const char *file, int line, const char *func);

#define LOOM_CALL_CUDA(expr)                                                                 \
    do {                                                                                     \
        const cudaError_t loom_cuda_e_ = (expr);                                             \
        if (loom_cuda_e_ != cudaSuccess) return loom_cuda_fail(loom_cuda_e_, #expr, __FILE__, __LINE__, __func__); \
    } while (0)
#define LOOM_CALL_CUBLAS(expr)                                                               \
    do {                                                                                     \
        const cublasStatus_t loom_cublas_s_ = (expr);                                        \
        if (loom_cublas_s_ != CUBLAS_STATUS_SUCCESS)                                         \
            return loom_cublas_fail(loom_cublas_s_, #expr, __FILE__, __LINE__, __func__);    \
    } while (0)
/* after a <<<...>>> launch: a bad configuration shows here; faults inside kernels show at the next sync */
#define LOOM_CUDA_LAUNCHED() LOOM_CALL_CUDA(cudaGetLastError())

/* Device scratch of at least `bytes`, valid until the next call (every user is on the compute stream, so a
 * kernel queued before that call has read it before anything queued after writes it). Growing waits for the
 * stream, then reallocates. */
LOOM_NODISCARD loom_status loom_cuda_workspace(loom_backend *be, size_t bytes, void **out);
/* *result (host) = the device double at d, after everything queued before: through pinned memory */
LOOM_NODISCARD loom_status loom_cuda_scalar_to_host(loom_backend *be, const double *d, double *result);

/* every kernel of LOOM_KERNELS: loom_status loom_cuda_<name>(loom_backend *, const loom_<name>_args *) */
#define LOOM_CUDA_KERNEL_DECLARE(name, category, flops) \
    loom_status loom_cuda_##name(loom_backend *be, const loom_##name##_args *a);
LOOM_KERNELS(LOOM_CUDA_KERNEL_DECLARE)
#undef LOOM_CUDA_KERNEL_DECLARE

#ifdef LOOM_HAVE_NCCL
/* src/comm/nccl.c: be->comm_attach */
void loom_nccl_attach(loom_backend *be, struct loom_comm *c);
#endif
#ifdef __cplusplus
}
#endif
#endif
