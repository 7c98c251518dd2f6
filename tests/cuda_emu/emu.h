/* CPU emulation of the CUDA subset the backend's kernels use, for checking their logic on a machine without a
 * GPU (tests/cuda_emu/run.sh; not part of loom's build). Pre-included into each *.cu file after
 * transform.py has rewritten its kernel launches into emu_launch calls. A block's threads run as fibers on one
 * OS thread and switch only at __syncthreads, __syncwarp and warp shuffles, so barriers, shared memory, warp
 * reductions and grid-stride loops behave as on a GPU; shared memory starts as NaNs, device allocations as
 * garbage, and every pointer argument of a kernel, cuBLAS call and copy is checked to be device memory (a host
 * pointer would fault on a GPU). What it cannot show: races between threads that a GPU would interleave
 * differently, real asynchrony between streams, performance, and anything hardware-specific (shared-memory
 * limits beyond 227 KB, register pressure, FMA contraction). */
#pragma once
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static /* blocks run one at a time */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

struct emu_idx {
    unsigned x, y, z;
};
extern emu_idx threadIdx, blockIdx, blockDim, gridDim; /* the running fiber's */
extern float *emu_smem;                                /* dynamic shared memory (extern __shared__) */
void __syncthreads(void);
void __syncwarp(void);
void emu_warp_exchange(const void *v, void *out, int size, int lane_xor);
template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int o) {
    T r;
    emu_warp_exchange(&v, &r, (int)sizeof(T), o);
    return r;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
void emu_launch(dim3 grid, dim3 block, size_t smem, const std::function<void()> &kernel);
template <class T>
static inline cudaError_t cudaFuncSetAttribute(T *, cudaFuncAttribute, int) {
    return cudaSuccess;
}

/* every pointer argument of a kernel must be device memory (or NULL) */
extern "C" void emu_check_ptr(const void *p, const char *what);
template <class T>
static inline void emu_check_one(const T &, const char *) {}
template <class T>
static inline void emu_check_one(T *const &p, const char *w) {
    emu_check_ptr((const void *)p, w);
}
template <class... A>
static inline void emu_check_args(const char *w, const A &...a) {
    (emu_check_one(a, w), ...);
}
