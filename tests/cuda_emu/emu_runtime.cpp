/* The emulator's runtime (see emu.h): the fiber scheduler behind emu_launch, and stand-ins for the CUDA runtime
 * and cuBLAS entry points the backend calls. Device memory is host memory from malloc, tracked so that
 * cudaPointerGetAttributes tells device from host and every copy, memset and GEMM checks its pointers; streams
 * and events are tokens and everything completes at once; cuBLAS is a column-major reference GEMM in double. */
#include "emu.h" /* first: it defines the CUDA keywords the CUDA headers would otherwise define */

#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <map>
#include <vector>

emu_idx threadIdx, blockIdx, blockDim, gridDim;
static std::vector<float> smem_buf(232448 / 4);
float *emu_smem = smem_buf.data();

/* ---- fibers: one per thread of the running block ---- */

enum { RUNNING, AT_BLOCK, AT_WARP, DONE };
struct fiber {
    ucontext_t ctx;
    int wait;
    unsigned gen; /* the barrier generation it waits to see pass */
    emu_idx idx;
    int lane, warp;
    std::vector<char> stack;
};
static ucontext_t sched_ctx;
static std::vector<fiber> fibers;
static fiber *cur;
static unsigned block_gen;
static std::vector<unsigned> warp_gen;
static std::vector<std::vector<char>> warp_slots;
static const std::function<void()> *body;

static void fiber_main(void) {
    (*body)();
    cur->wait = DONE;
    swapcontext(&cur->ctx, &sched_ctx);
}

void __syncthreads(void) {
    cur->wait = AT_BLOCK;
    cur->gen = block_gen;
    swapcontext(&cur->ctx, &sched_ctx);
    cur->wait = RUNNING;
}

void __syncwarp(void) {
    cur->wait = AT_WARP;
    cur->gen = warp_gen[cur->warp];
    swapcontext(&cur->ctx, &sched_ctx);
    cur->wait = RUNNING;
}

void emu_warp_exchange(const void *v, void *out, int size, int x) {
    memcpy(&warp_slots[cur->warp][cur->lane * 16], v, size);
    __syncwarp();
    memcpy(out, &warp_slots[cur->warp][(cur->lane ^ x) * 16], size);
    __syncwarp();
}

static int runnable(const fiber &f) {
    if (f.wait == RUNNING) return 1;
    if (f.wait == AT_BLOCK) return f.gen != block_gen;
    if (f.wait == AT_WARP) return f.gen != warp_gen[f.warp];
    return 0;
}

/* runs every fiber until it blocks; releases a warp barrier when all its live lanes wait there, the block
 * barrier when every live thread does; anything else is a deadlock (divergent barriers) */
static void run_block(int nthreads) {
    for (;;) {
        int ran = 0, alive = 0;
        for (auto &f : fibers) {
            if (f.wait == DONE) continue;
            alive++;
            if (!runnable(f)) continue;
            cur = &f;
            threadIdx = f.idx;
            ran = 1;
            swapcontext(&sched_ctx, &f.ctx);
        }
        if (!alive) return;
        if (ran) continue;
        int released = 0;
        for (int w = 0; w < (nthreads + 31) / 32; w++) {
            int all = 1, any = 0;
            for (int l = 0; l < 32 && w * 32 + l < nthreads; l++) {
                const fiber &f = fibers[w * 32 + l];
                if (f.wait == DONE) continue;
                any = 1;
                all &= f.wait == AT_WARP;
            }
            if (any && all) {
                warp_gen[w]++;
                released = 1;
            }
        }
        if (released) continue;
        int all = 1;
        for (auto &f : fibers) all &= f.wait == DONE || f.wait == AT_BLOCK;
        if (!all) {
            fprintf(stderr, "emu: deadlock: threads wait at different barriers\n");
            abort();
        }
        block_gen++;
    }
}

void emu_launch(dim3 grid, dim3 block, size_t smem, const std::function<void()> &f) {
    const int nthreads = (int)(block.x * block.y * block.z);
    if (smem > smem_buf.size() * 4 || nthreads % 32 || nthreads > 1024 || !grid.x || !grid.y || !grid.z) {
        fprintf(stderr, "emu: invalid launch (%u x %u x %u blocks of %d threads, %zu bytes of shared memory)\n",
                grid.x, grid.y, grid.z, nthreads, smem);
        abort();
    }
    blockDim = {block.x, block.y, block.z};
    gridDim = {grid.x, grid.y, grid.z};
    body = &f;
    fibers.resize(nthreads);
    warp_gen.assign(nthreads / 32, 0);
    warp_slots.assign(nthreads / 32, std::vector<char>(32 * 16));
    for (auto &fb : fibers)
        if (fb.stack.empty()) fb.stack.resize(256 * 1024);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = {bx, by, bz};
                for (size_t i = 0; i < smem / 4; i++) emu_smem[i] = NAN; /* a kernel must not rely on it */
                for (int t = 0; t < nthreads; t++) {
                    fiber &fb = fibers[t];
                    fb.wait = RUNNING;
                    fb.gen = 0;
                    fb.idx = {(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y),
                              (unsigned)(t / (block.x * block.y))};
                    fb.lane = t % 32;
                    fb.warp = t / 32;
                    getcontext(&fb.ctx);
                    fb.ctx.uc_stack.ss_sp = fb.stack.data();
                    fb.ctx.uc_stack.ss_size = fb.stack.size();
                    fb.ctx.uc_link = &sched_ctx;
                    makecontext(&fb.ctx, fiber_main, 0);
                }
                block_gen = 0;
                run_block(nthreads);
            }
}

/* ---- memory ---- */

static std::map<uintptr_t, size_t> allocs;

static int is_dev(const void *p) {
    auto it = allocs.upper_bound((uintptr_t)p);
    if (it == allocs.begin()) return 0;
    --it;
    return (uintptr_t)p < it->first + it->second;
}

static void check_dev(const void *p, size_t n, const char *what) {
    if (n && (!is_dev(p) || !is_dev((const char *)p + n - 1))) {
        fprintf(stderr, "emu: %s: [%p, +%zu) is not device memory\n", what, p, n);
        abort();
    }
}

static void check_host(const void *p, size_t n, const char *what) {
    if (n && is_dev(p)) {
        fprintf(stderr, "emu: %s: %p is device memory\n", what, p);
        abort();
    }
}

extern "C" {
void emu_check_ptr(const void *p, const char *w) {
    if (p) check_dev(p, 1, w);
}

cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
const char *cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorEmulated" : "cudaSuccess"; }

cudaError_t cudaMalloc(void **p, size_t n) {
    *p = malloc(n + 64);
    memset(*p, 0xAB, n + 64); /* garbage: the backend must zero what it promises zeroed */
    allocs[(uintptr_t)*p] = n;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (p) {
        allocs.erase((uintptr_t)p);
        free(p);
    }
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n) {
    *p = malloc(n);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
    *f = (size_t)1 << 30;
    *t = (size_t)2 << 30;
    return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
    memset(a, 0, sizeof *a);
    a->type = is_dev(p) ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    check_dev(p, n, "cudaMemsetAsync");
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t) {
    if (k == cudaMemcpyHostToDevice) check_dev(d, n, "H2D destination"), check_host(s, n, "H2D source");
    if (k == cudaMemcpyDeviceToHost) check_host(d, n, "D2H destination"), check_dev(s, n, "D2H source");
    if (k == cudaMemcpyDeviceToDevice) {
        check_dev(d, n, "D2D destination");
        check_dev(s, n, "D2D source");
        if ((const char *)d < (const char *)s + n && (const char *)s < (const char *)d + n) {
            fprintf(stderr, "emu: overlapping device-to-device copy (undefined in CUDA)\n");
            abort();
        }
    }
    memcpy(d, s, n);
    return cudaSuccess;
}

/* ---- device, streams, events: one emulated GPU; everything is done when issued ---- */

cudaError_t cudaGetDeviceCount(int *n) {
    *n = getenv("EMU_NO_DEVICE") ? 0 : 1;
    return *n ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    strcpy(p->name, "emulated GPU (src/backend/cuda/emu)");
    p->major = 9;
    p->multiProcessorCount = 4;
    p->sharedMemPerBlockOptin = 232448; /* an H100's */
    p->totalGlobalMem = (size_t)2 << 30;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    static uintptr_t k;
    *s = (cudaStream_t)++k;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
    static uintptr_t k;
    *e = (cudaEvent_t)++k;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
}

/* ---- cuBLAS: column-major C (m x n) = alpha op(A) op(B) + beta C, summed in double ---- */

struct cublasContext {
    int math;
};

static float value(const float *p, int64_t i) { return p[i]; }
static float value(const uint16_t *p, int64_t i) {
    const uint32_t u = (uint32_t)p[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

template <class T>
static void gemm_ref(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const T *A, int lda,
                     const T *B, int ldb, float beta, float *C, int ldc) {
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m) {
        fprintf(stderr, "emu: GEMM leading dimension too small\n");
        abort();
    }
    check_dev(C, (size_t)((int64_t)(n - 1) * ldc + m) * 4, "GEMM C");
    check_dev(A, (size_t)(ta == CUBLAS_OP_N ? (int64_t)(k - 1) * lda + m : (int64_t)(m - 1) * lda + k) * sizeof(T), "GEMM A");
    check_dev(B, (size_t)(tb == CUBLAS_OP_N ? (int64_t)(n - 1) * ldb + k : (int64_t)(k - 1) * ldb + n) * sizeof(T), "GEMM B");
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                const float a = ta == CUBLAS_OP_N ? value(A, i + (int64_t)p * lda) : value(A, p + (int64_t)i * lda);
                const float b = tb == CUBLAS_OP_N ? value(B, p + (int64_t)j * ldb) : value(B, j + (int64_t)p * ldb);
                s += (double)a * b;
            }
            float &c = C[i + (int64_t)j * ldc];
            c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * c));
        }
}

extern "C" {
cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    h->math = (int)m;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS error"; }
const char *cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_EMULATED"; }
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    gemm_ref(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
    if (at != CUDA_R_16BF || bt != CUDA_R_16BF || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    gemm_ref(ta, tb, m, n, k, *(const float *)alpha, (const uint16_t *)A, lda, (const uint16_t *)B, ldb,
             *(const float *)beta, (float *)C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
}
