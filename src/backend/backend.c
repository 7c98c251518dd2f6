/* Backend selection, buffers, and kernel dispatch with built-in profiling: every kernel call goes through
 * here, so `--profile` can say where a step's time went (calls, seconds and FLOPs per op category). */
#include <stdlib.h>
#include <string.h>
#ifdef LOOM_HAVE_CUDA
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend_impl.h"
#include "loom/log.h"

loom_backend_config loom_backend_config_default(void) {
    loom_backend_config c;
    memset(&c, 0, sizeof c);
    c.device = "cpu";
    c.blas_coretype = "auto";
    return c;
}

const char *loom_backend_devices(void) {
#ifdef LOOM_HAVE_CUDA
    return "cpu cpu-isolated cuda";
#else
    return "cpu cpu-isolated";
#endif
}

#ifdef LOOM_HAVE_CUDA
/* The CUDA backend is the module libloom_cuda.so, loaded here when device "cuda" is asked for, so that loom
 * itself links neither the CUDA runtime nor cuBLAS/NCCL (a CPU run starts as fast as without them). Searched
 * at $LOOM_CUDA_LIBRARY, then beside the executable, then in the build directory that made this loom. The
 * module calls back into loom (errors, logging): executables that load it export their symbols (CMake
 * ENABLE_EXPORTS). It is never unloaded: the CUDA runtime inside it keeps state until the process ends. */
typedef loom_status (*cuda_init_fn)(const loom_backend_config *, loom_backend *);

static loom_status cuda_backend_init(const loom_backend_config *cfg, loom_backend *be) {
    char beside[4096] = "", tried[2048] = "";
    const ssize_t n = readlink("/proc/self/exe", beside, sizeof beside - 32); /* room for the file name */
    if (n > 0) beside[n] = '\0';
    char *slash = n > 0 ? strrchr(beside, '/') : NULL;
    if (slash) snprintf(slash + 1, 32, "libloom_cuda.so");
    const char *env = getenv("LOOM_CUDA_LIBRARY");
    const char *paths[3] = {env, slash ? beside : NULL, LOOM_CUDA_MODULE_DEFAULT};
    void *h = NULL;
    for (int i = 0; i < 3 && !h; i++) {
        if (!paths[i] || !*paths[i]) continue;
        h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const size_t used = strlen(tried);
            snprintf(tried + used, sizeof tried - used, "%s%s", used ? "; " : "", dlerror());
        }
    }
    LOOM_CHECK(h != NULL, LOOM_ERR_UNSUPPORTED, "device 'cuda': cannot load the CUDA backend module (%s)%s", tried,
               env && *env ? "" : "; LOOM_CUDA_LIBRARY=PATH names another");
    cuda_init_fn init;
    *(void **)&init = dlsym(h, "loom_cuda_backend_init");
    LOOM_CHECK(init != NULL, LOOM_ERR_UNSUPPORTED, "device 'cuda': the module has no loom_cuda_backend_init: %s",
               dlerror());
    return init(cfg, be);
}
#endif

loom_status loom_backend_init(const loom_backend_config *cfg, loom_backend **out) {
    *out = NULL;
    loom_backend_config def = loom_backend_config_default();
    if (!cfg) cfg = &def;
    const char *dev = cfg->device && cfg->device[0] ? cfg->device : "cpu";
    loom_backend *be = calloc(1, sizeof *be);
    LOOM_CHECK(be != NULL, LOOM_ERR_NOMEM, "out of memory creating the backend");
    loom_status st;
    if (!strcmp(dev, "cpu")) st = loom_cpu_backend_init(cfg, be);
    else if (!strcmp(dev, "cpu-isolated")) st = loom_isolated_backend_init(cfg, be);
#ifdef LOOM_HAVE_CUDA
    else if (!strcmp(dev, "cuda")) st = cuda_backend_init(cfg, be);
#endif
    else
        st = loom_error_set(!strcmp(dev, "cuda") ? LOOM_ERR_UNSUPPORTED : LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__,
                            "device '%s' is not in this build (it has: %s)%s", dev, loom_backend_devices(),
                            !strcmp(dev, "cuda") ? "; build with the CUDA toolkit installed (cmake finds nvcc)" : "");
    if (st == LOOM_OK && cfg->batch_invariant && !be->batch_invariant) /* the backend sets it where it can */
        st = loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                            "batch-invariant products run on the CPU backends only (%s picks its kernels by shape)",
                            be->name);
    if (st != LOOM_OK) {
        loom_error_trace(__FILE__, __LINE__, __func__);
        loom_backend_free(&be);
        return st;
    }
    *out = be;
    return LOOM_OK;
}

void loom_backend_free(loom_backend **pbe) {
    if (!pbe || !*pbe) return;
    loom_backend *be = *pbe;
    if (be->bf16_free) be->bf16_free(be->bf16);
    free(be->bf16_ref[0]);
    free(be->bf16_ref[1]);
    if (be->blas_free) be->blas_free(be->blas);
    if (be->impl_free) be->impl_free(be);
    free(be);
    *pbe = NULL;
}

const char *loom_backend_name(const loom_backend *be) { return be->name; }
const char *loom_backend_gemm_kernel(const loom_backend *be) { return be->gemm_kernel; }
const char *loom_backend_bf16_kernel(const loom_backend *be) { return be->bf16_kernel; }
int loom_backend_threads(const loom_backend *be) { return be->threads; }
int loom_backend_host_accessible(const loom_backend *be) { return be->host_accessible; }
int loom_backend_batch_invariant(const loom_backend *be) { return be->batch_invariant; }
size_t loom_backend_own_bytes(const loom_backend *be) {
    return (be->bf16_ref_n[0] + be->bf16_ref_n[1]) * sizeof(float) + be->bf16_own_bytes;
}
int loom_backend_has_own_peak(const loom_backend *be) { return be->own_peak; }
void loom_backend_set_profiling(loom_backend *be, int on) { be->profiling = on; }
loom_profile *loom_backend_profile(loom_backend *be) { return &be->profile; }
loom_status loom_backend_sync(loom_backend *be) { return be->buf.sync ? be->buf.sync(be) : LOOM_OK; }

void loom_backend_release_threads(loom_backend *be) {
    (void)be; /* the pool is the calling thread's, whichever backend: a GPU backend's host code may use one too */
#ifdef _OPENMP
    (void)omp_pause_resource_all(omp_pause_soft); /* OpenMP 5.0; GCC's frees the caller's pool (gomp_pause_host) */
#endif
}

const char *loom_op_name(loom_op op) {
    static const char *const names[LOOM_OP_COUNT] = {"matmul",    "norm",      "activation", "attention",
                                                     "rope",      "embedding", "loss",       "elementwise",
                                                     "optimizer", "copy"};
    return (op >= 0 && op < LOOM_OP_COUNT) ? names[op] : "?";
}

const char *loom_kernel_name(loom_kernel k) {
    static const char *const names[] = {
#define LOOM_KERNEL_NAME(name, category, flops) #name,
        LOOM_KERNELS(LOOM_KERNEL_NAME)
#undef LOOM_KERNEL_NAME
    };
    return (k >= 0 && k < LOOM_KERNEL_COUNT) ? names[k] : "?";
}

/* ---- buffers ---- */

loom_status loom_buf_alloc(loom_backend *be, loom_mem *mem, loom_mem_category cat, size_t bytes, void **out) {
    *out = NULL;
    LOOM_CALL(loom_mem_account(mem, cat, bytes));
    loom_status st = be->buf.alloc(be, bytes ? bytes : 1, out);
    if (st != LOOM_OK) {
        loom_mem_unaccount(mem, cat, bytes);
        loom_error_trace(__FILE__, __LINE__, __func__);
    }
    return st;
}

void loom_buf_free(loom_backend *be, loom_mem *mem, loom_mem_category cat, void *p, size_t bytes) {
    if (!p) return;
    be->buf.free(be, p, bytes ? bytes : 1);
    loom_mem_unaccount(mem, cat, bytes);
}

loom_status loom_buf_reserve(loom_backend *be, size_t bytes, void **out) { return be->buf.reserve(be, bytes, out); }
void loom_buf_unreserve(loom_backend *be, void *p, size_t bytes) {
    if (p) be->buf.unreserve(be, p, bytes);
}
void loom_buf_discard(loom_backend *be, void *p, size_t bytes) {
    if (be->buf.discard && bytes > 0) be->buf.discard(be, p, bytes);
}
void loom_buf_populate(loom_backend *be, void *p, size_t bytes) {
    if (be->buf.populate && bytes > 0) be->buf.populate(be, p, bytes);
}
int loom_buf_device_only(const loom_backend *be, const void *p) {
    return be && p && be->buf.device_only && be->buf.device_only(be, p);
}

loom_status loom_buf_upload(loom_backend *be, void *dst, const void *src, size_t bytes) {
    return bytes ? loom_k_copy(be, &(loom_copy_args){dst, src, (int64_t)bytes, LOOM_COPY_H2D}) : LOOM_OK;
}
loom_status loom_buf_download(loom_backend *be, void *dst, const void *src, size_t bytes) {
    return bytes ? loom_k_copy(be, &(loom_copy_args){dst, src, (int64_t)bytes, LOOM_COPY_D2H}) : LOOM_OK;
}
loom_status loom_buf_copy(loom_backend *be, void *dst, const void *src, size_t bytes) {
    return bytes && dst != src ? loom_k_copy(be, &(loom_copy_args){dst, src, (int64_t)bytes, LOOM_COPY_D2D}) : LOOM_OK;
}
loom_status loom_buf_fill(loom_backend *be, float *x, float value, int64_t n) {
    return n > 0 ? loom_k_fill(be, &(loom_fill_args){x, value, n}) : LOOM_OK;
}

/* ---- kernels: dispatch, and when profiling is on, time (after the device finished), calls and FLOPs ---- */

#define LOOM_KERNEL_DEFINE(name, category, flop_count)                                        \
    loom_status loom_k_##name(loom_backend *be, const loom_##name##_args *a) {           \
        if (!be->profiling) {                                                            \
            loom_status st_ = be->k.name(be, a);                                         \
            if (st_ != LOOM_OK) loom_error_trace(__FILE__, __LINE__, "loom_k_" #name);    \
            return st_;                                                                  \
        }                                                                                \
        const double t0_ = loom_now_s();                                                \
        loom_status st_ = be->k.name(be, a);                                             \
        if (st_ == LOOM_OK && !be->host_accessible) st_ = loom_backend_sync(be);         \
        if (st_ != LOOM_OK) loom_error_trace(__FILE__, __LINE__, "loom_k_" #name);        \
        const double dt_ = loom_now_s() - t0_;                                          \
        be->profile.seconds[category] += dt_;                                            \
        be->profile.calls[category] += 1;                                                \
        be->profile.kernel_seconds[LOOM_KERNEL_##name] += dt_;                           \
        be->profile.kernel_calls[LOOM_KERNEL_##name] += 1;                               \
        be->profile.flops[category] += (double)(flop_count);                                  \
        return st_;                                                                      \
    }
LOOM_KERNELS(LOOM_KERNEL_DEFINE)
#undef LOOM_KERNEL_DEFINE

/* Three rounds of `reps` products, each timed to the device's completion; the best round counts (a GPU's
 * clocks ramp up during the first). Operands are filled with small values: the rate does not depend on them. */
loom_status loom_backend_measure_gemm_peak(loom_backend *be, int64_t n, int bf16, double *gflops) {
    *gflops = 0;
    LOOM_CHECK(n > 0, LOOM_ERR_INVALID_ARG, "GEMM peak: size %lld", (long long)n);
    const size_t elems = (size_t)n * (size_t)n, in_bytes = elems * (bf16 ? 2 : 4);
    void *A = NULL, *B = NULL, *C = NULL;
    loom_status st = LOOM_OK;
    LOOM_CALL_GOTO(st, loom_buf_alloc(be, NULL, LOOM_MEM_WORKSPACE, in_bytes, &A), out);
    LOOM_CALL_GOTO(st, loom_buf_alloc(be, NULL, LOOM_MEM_WORKSPACE, in_bytes, &B), out);
    LOOM_CALL_GOTO(st, loom_buf_alloc(be, NULL, LOOM_MEM_WORKSPACE, elems * 4, &C), out);
    /* bf16 1/64 is 0x3C80; two of them make one float word, so a float fill writes both halves */
    if (bf16) {
        const uint32_t pair = 0x3C803C80u;
        float f;
        memcpy(&f, &pair, sizeof f);
        LOOM_CALL_GOTO(st, loom_buf_fill(be, A, f, (int64_t)(elems / 2)), out);
        LOOM_CALL_GOTO(st, loom_buf_fill(be, B, f, (int64_t)(elems / 2)), out);
    } else {
        LOOM_CALL_GOTO(st, loom_buf_fill(be, A, 1.0f / 64.0f, (int64_t)elems), out);
        LOOM_CALL_GOTO(st, loom_buf_fill(be, B, 1.0f / 64.0f, (int64_t)elems), out);
    }
    const loom_gemm g = {0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n};
    const loom_matmul_bf16_args gb = {0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n};
    const int reps = 8;
    for (int round = 0; round < 4; round++) { /* round 0 warms up */
        LOOM_CALL_GOTO(st, loom_backend_sync(be), out);
        const double t0 = loom_now_s();
        for (int r = 0; r < reps; r++)
            LOOM_CALL_GOTO(st, bf16 ? loom_k_matmul_bf16(be, &gb) : loom_k_matmul(be, &g), out);
        LOOM_CALL_GOTO(st, loom_backend_sync(be), out);
        const double dt = loom_now_s() - t0;
        const double rate = 2.0 * (double)n * (double)n * (double)n * reps / dt / 1e9;
        if (round > 0 && dt > 0 && rate > *gflops) *gflops = rate;
    }
out:
    loom_buf_free(be, NULL, LOOM_MEM_WORKSPACE, C, elems * 4);
    loom_buf_free(be, NULL, LOOM_MEM_WORKSPACE, B, in_bytes);
    loom_buf_free(be, NULL, LOOM_MEM_WORKSPACE, A, in_bytes);
    return st;
}
