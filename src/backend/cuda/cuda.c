/* The CUDA backend ("cuda"): a module of its own, libloom_cuda.so, built only when CMake finds nvcc and
 * loaded by src/backend/backend.c with dlopen when a run asks for device "cuda", so that loom itself links
 * neither the CUDA runtime nor cuBLAS/NCCL and a CPU run starts as fast as before. The module calls back into
 * loom's core (errors, logging), which is why the executables that may load it export their symbols.
 *
 * This file: start-up (device choice, streams, cuBLAS), the buffers (device memory from cudaMalloc, zeroed),
 * errors, the workspace, and the kernel table. Kernels: one file per op family, as src/backend/cpu/: blas.c
 * (cuBLAS GEMMs), activation.cu, norm.cu, embedding.cu, rope.cu, attention.cu, loss.cu, convert.cu,
 * optimizer.cu, copy.cu. Every kernel and copy runs on the backend's one stream, in issue order; a download
 * waits for it. Everything is deterministic for a fixed configuration (no atomics; fixed reduction trees).
 *
 * Environment: LOOM_CUDA_TF32=1 lets the fp32 GEMMs use TF32 tensor cores (faster, ~1e-3 relative error;
 * default off: fp32 as on the CPU). Device: cfg->gpu when > 0; else, under an MPI launcher, the local rank
 * modulo the devices (one process per GPU); else device 0.
 *
 * UNVERIFIED on hardware: written and compiled without a GPU, run only in the CPU emulation of tests/cuda_emu/run.sh;
 * tests/test_backend_ops cuda (every kernel against the CPU) and scripts/gpu_check.sh (training against
 * PyTorch) are the checks to run on one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"

static loom_status status_of(cudaError_t e) {
    if (e == cudaErrorMemoryAllocation) return LOOM_ERR_NOMEM;
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) return LOOM_ERR_UNSUPPORTED;
    return LOOM_ERR_INTERNAL;
}

loom_status loom_cuda_fail(cudaError_t e, const char *what, const char *file, int line, const char *func) {
    (void)cudaGetLastError(); /* a sticky launch error is now reported: clear it */
    return loom_error_set(status_of(e), file, line, func, "CUDA: %s failed: %s (%s)", what, cudaGetErrorString(e),
                          cudaGetErrorName(e));
}

loom_status loom_cublas_fail(cublasStatus_t s, const char *what, const char *file, int line, const char *func) {
    return loom_error_set(s == CUBLAS_STATUS_ALLOC_FAILED ? LOOM_ERR_NOMEM : LOOM_ERR_INTERNAL, file, line, func,
                          "cuBLAS: %s failed: %s (%s)", what, cublasGetStatusString(s), cublasGetStatusName(s));
}

loom_status loom_cuda_workspace(loom_backend *be, size_t bytes, void **out) {
    loom_cuda *cu = loom_cuda_of(be);
    if (bytes > cu->work_bytes) {
        size_t want = bytes > 2 * cu->work_bytes ? bytes : 2 * cu->work_bytes;
        want = (want + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
        if (cu->work) { /* a kernel queued earlier may still read the old one */
            LOOM_CALL_CUDA(cudaStreamSynchronize(cu->stream));
            LOOM_CALL_CUDA(cudaFree(cu->work));
            cu->work = NULL;
            cu->work_bytes = 0;
        }
        LOOM_CALL_CUDA(cudaMalloc(&cu->work, want));
        cu->work_bytes = want;
    }
    *out = cu->work;
    return LOOM_OK;
}

loom_status loom_cuda_scalar_to_host(loom_backend *be, const double *d, double *result) {
    loom_cuda *cu = loom_cuda_of(be);
    LOOM_CALL_CUDA(cudaMemcpyAsync(cu->host_scalar, d, sizeof(double), cudaMemcpyDeviceToHost, cu->stream));
    LOOM_CALL_CUDA(cudaStreamSynchronize(cu->stream));
    *result = *cu->host_scalar;
    return LOOM_OK;
}

/* ---- buffers: device memory ---- */

static loom_status cu_alloc(loom_backend *be, size_t bytes, void **out) {
    loom_cuda *cu = loom_cuda_of(be);
    *out = NULL;
    const cudaError_t e = cudaMalloc(out, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *out = NULL;
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__,
                              "device 'cuda': cannot allocate %zu bytes of GPU memory (%.2f of %.2f GiB free): %s",
                              bytes, (double)free_b / 1073741824.0, (double)total_b / 1073741824.0,
                              cudaGetErrorString(e));
    }
    /* buffers start zeroed (loom_buf_alloc's contract); on the stream, so every later kernel sees the zeros */
    LOOM_CALL_CUDA(cudaMemsetAsync(*out, 0, bytes, cu->stream));
    return LOOM_OK;
}

static void cu_free(loom_backend *be, void *p, size_t bytes) {
    (void)bytes;
    /* no kernel queued before may still use p (cudaFree synchronises too; this says so whatever the stream) */
    if (cudaStreamSynchronize(loom_cuda_of(be)->stream) != cudaSuccess) (void)cudaGetLastError();
    (void)cudaFree(p);
}

/* No residency saving yet: a reserved range is a whole allocation (ZeRO-3's full-size mappings cost their full
 * size on the GPU). CUDA's virtual memory management (cuMemAddressReserve + cuMemMap of physical chunks on
 * write, cuMemUnmap on discard) is the way to make only gathered units resident. */
static loom_status cu_reserve(loom_backend *be, size_t bytes, void **out) { return cu_alloc(be, bytes, out); }

static void cu_unreserve(loom_backend *be, void *p, size_t bytes) { cu_free(be, p, bytes); }

/* the range's contents become zero (as discarded pages read back on the CPU); nothing returns to the device */
static void cu_discard(loom_backend *be, void *p, size_t bytes) {
    if (cudaMemsetAsync(p, 0, bytes, loom_cuda_of(be)->stream) != cudaSuccess) (void)cudaGetLastError();
}

static int cu_device_only(const loom_backend *be, const void *p) {
    (void)be;
    struct cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice;
}

static loom_status cu_sync(loom_backend *be) {
    LOOM_CALL_CUDA(cudaStreamSynchronize(loom_cuda_of(be)->stream));
    return LOOM_OK;
}

static void cu_impl_free(loom_backend *be) {
    loom_cuda *cu = be->impl;
    if (!cu) return;
    if (cu->stream) (void)cudaStreamSynchronize(cu->stream);
    if (cu->comm_stream) (void)cudaStreamSynchronize(cu->comm_stream);
    if (cu->blas) (void)cublasDestroy(cu->blas);
    if (cu->blas2) (void)cublasDestroy(cu->blas2);
    if (cu->work) (void)cudaFree(cu->work);
    if (cu->host_scalar) (void)cudaFreeHost(cu->host_scalar);
    if (cu->ev_fork) (void)cudaEventDestroy(cu->ev_fork);
    if (cu->ev_join) (void)cudaEventDestroy(cu->ev_join);
    if (cu->ev_comm) (void)cudaEventDestroy(cu->ev_comm);
    if (cu->stream) (void)cudaStreamDestroy(cu->stream);
    if (cu->stream2) (void)cudaStreamDestroy(cu->stream2);
    if (cu->comm_stream) (void)cudaStreamDestroy(cu->comm_stream);
    (void)cudaGetLastError();
    free(cu);
    be->impl = NULL;
}

/* ---- start-up ---- */

/* the local rank when an MPI launcher started this process, else -1 */
static int local_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                                       "SLURM_LOCALID", "PMIX_LOCAL_RANK", "LOCAL_RANK", NULL};
    for (int i = 0; vars[i]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return -1;
}

static loom_status choose_device(const loom_backend_config *cfg, int *dev) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        (void)cudaGetLastError();
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                              "device 'cuda': no CUDA device (cudaGetDeviceCount: %s)",
                              e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    const int lr = local_rank();
    *dev = cfg->gpu > 0 ? cfg->gpu : (lr >= 0 ? lr % count : 0);
    LOOM_CHECK(*dev < count, LOOM_ERR_CONFIG, "device 'cuda': GPU %d asked for, this machine has %d", *dev, count);
    return LOOM_OK;
}

static loom_status make_blas(cublasHandle_t *h, cudaStream_t s, int tf32) {
    LOOM_CALL_CUBLAS(cublasCreate(h));
    LOOM_CALL_CUBLAS(cublasSetStream(*h, s));
    /* CUBLAS_DEFAULT_MATH is true fp32 (no TF32) for cublasSgemm */
    LOOM_CALL_CUBLAS(cublasSetMathMode(*h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return LOOM_OK;
}

static loom_status setup(const loom_backend_config *cfg, loom_backend *be, loom_cuda *cu) {
    LOOM_CALL(choose_device(cfg, &cu->device));
    LOOM_CALL_CUDA(cudaSetDevice(cu->device));
    struct cudaDeviceProp prop;
    LOOM_CALL_CUDA(cudaGetDeviceProperties(&prop, cu->device));
    snprintf(cu->device_name, sizeof cu->device_name, "%s", prop.name);
    cu->sm_count = prop.multiProcessorCount;
    cu->smem_optin = prop.sharedMemPerBlockOptin;
    const char *tf = getenv("LOOM_CUDA_TF32");
    cu->tf32 = tf && !strcmp(tf, "1");
    /* non-blocking: the legacy default stream (anything else in the process) does not serialise with ours */
    LOOM_CALL_CUDA(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
    LOOM_CALL_CUDA(cudaStreamCreateWithFlags(&cu->stream2, cudaStreamNonBlocking));
    LOOM_CALL_CUDA(cudaStreamCreateWithFlags(&cu->comm_stream, cudaStreamNonBlocking));
    LOOM_CALL_CUDA(cudaEventCreateWithFlags(&cu->ev_fork, cudaEventDisableTiming));
    LOOM_CALL_CUDA(cudaEventCreateWithFlags(&cu->ev_join, cudaEventDisableTiming));
    LOOM_CALL_CUDA(cudaEventCreateWithFlags(&cu->ev_comm, cudaEventDisableTiming));
    LOOM_CALL(make_blas(&cu->blas, cu->stream, cu->tf32));
    LOOM_CALL(make_blas(&cu->blas2, cu->stream2, cu->tf32));
    LOOM_CALL_CUDA(cudaMallocHost((void **)&cu->host_scalar, 64));
    snprintf(be->gemm_kernel, sizeof be->gemm_kernel, "cublas %s (%.96s)", cu->tf32 ? "tf32" : "fp32", cu->device_name);
    snprintf(be->bf16_kernel, sizeof be->bf16_kernel, "cublas bf16 (%.96s)", cu->device_name);
    if (!cfg->quiet)
        LOOM_INFO("CUDA: GPU %d, %s (sm_%d%d, %d SMs, %.1f GiB); GEMM cuBLAS %s%s", cu->device, cu->device_name,
                  prop.major, prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / 1073741824.0,
                  cu->tf32 ? "tf32" : "fp32", cu->tf32 ? " (LOOM_CUDA_TF32=1)" : "");
    return LOOM_OK;
}

/* the module's one exported symbol (built with hidden visibility): backend.c finds it with dlsym */
__attribute__((visibility("default"))) loom_status loom_cuda_backend_init(const loom_backend_config *cfg,
                                                                          loom_backend *be) {
    loom_cuda *cu = calloc(1, sizeof *cu);
    LOOM_CHECK(cu != NULL, LOOM_ERR_NOMEM, "out of memory");
    be->name = "cuda";
    be->host_accessible = 0;
    be->own_peak = 1;
    be->threads = 1; /* the host thread that issues the kernels */
    be->impl = cu;
    be->impl_free = cu_impl_free; /* also after a failed set-up: frees what exists */
    LOOM_CALL(setup(cfg, be, cu));
#define LOOM_CUDA_KERNEL_FILL(name, category, flops) be->k.name = loom_cuda_##name;
    LOOM_KERNELS(LOOM_CUDA_KERNEL_FILL)
#undef LOOM_CUDA_KERNEL_FILL
    be->buf = (loom_buffer_ops){cu_alloc, cu_free, cu_reserve, cu_unreserve, cu_discard, cu_device_only, cu_sync, NULL};
#ifdef LOOM_HAVE_NCCL
    be->comm_attach = loom_nccl_attach;
#endif
    return LOOM_OK;
}
