/* Matrix products through OpenBLAS, loaded at run time.
 *
 * Why dlopen: OpenBLAS picks its kernel (OPENBLAS_CORETYPE) when the library loads. Machines here pin it
 * to the AVX2 kernel, half this CPU's speed; loading the library ourselves lets loom choose the kernel
 * first (and say so), and prefer the OpenMP build of OpenBLAS so that BLAS and loom's own kernels share
 * one thread pool instead of two pools fighting for the cores. Without OpenBLAS a blocked built-in GEMM
 * keeps everything working (slowly, and logged). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpu_impl.h"
#include "loom/log.h"

enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
typedef void (*set_threads_fn)(int);
typedef char *(*get_str_fn)(void);

typedef struct {
    void *handle;
    sgemm_fn sgemm;
    sgemv_fn sgemv;
    set_threads_fn set_threads;
} cpu_blas;

/* Built-in GEMM: correct for every transpose, cache-blocked, OpenMP over row blocks (deterministic). */
static void builtin_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f) memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
        for (int64_t k = 0; k < K; k++) {
            float a = alpha * (ta ? A[k * lda + i] : A[i * lda + k]);
            if (!tb) {
                const float *b = B + k * ldb;
                for (int64_t j = 0; j < N; j++) c[j] += a * b[j];
            } else {
                for (int64_t j = 0; j < N; j++) c[j] += a * B[j * ldb + k];
            }
        }
    }
}

void loom_cpu_sgemm(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc) {
    cpu_blas *blas = be->blas;
    if (M == 0 || N == 0) return;
    if (loom_cpu_fewrows_takes(be, ta, tb, M, K, 0)) {
        loom_cpu_fewrows_f32(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); /* decoding, or batch-invariant: fewrows.c */
        return;
    }
    /* BLAS takes int sizes: split along M (rows of C) where a dimension would not fit. The model's
     * sizes are far below 2^31; K and N over 2^31 are refused at model construction. */
    const int64_t max_int = 0x7fffffff;
    if (blas && blas->sgemm && K <= max_int && N <= max_int && lda <= max_int && ldb <= max_int &&
        ldc <= max_int) {
        if (M == 1 && blas->sgemv) { /* one row without the few-rows kernel (no AVX-512): OpenBLAS 0.3.21's
                                      * sgemm packs the whole weight for it; its gemv streams it once */
            const int inc_a = ta ? (int)lda : 1;
            if (tb) blas->sgemv(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, (int)N, (int)K, alpha, B, (int)ldb, A, inc_a, beta, C, 1);
            else blas->sgemv(CBLAS_ROW_MAJOR, CBLAS_TRANS, (int)K, (int)N, alpha, B, (int)ldb, A, inc_a, beta, C, 1);
            return;
        }
        for (int64_t m0 = 0; m0 < M; m0 += max_int) {
            int64_t mb = M - m0 < max_int ? M - m0 : max_int;
            const float *Am = ta ? A + m0 : A + m0 * lda;
            blas->sgemm(CBLAS_ROW_MAJOR, ta ? CBLAS_TRANS : CBLAS_NO_TRANS, tb ? CBLAS_TRANS : CBLAS_NO_TRANS,
                        (int)mb, (int)N, (int)K, alpha, Am, (int)lda, B, (int)ldb, beta, C + m0 * ldc, (int)ldc);
        }
        return;
    }
    builtin_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void run_gemm(loom_backend *be, const loom_gemm *g) {
    loom_cpu_sgemm(be, g->trans_a, g->trans_b, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C,
                    g->ldc);
}

loom_status loom_cpu_matmul(loom_backend *be, const loom_gemm *g) {
    run_gemm(be, g);
    return LOOM_OK;
}

loom_status loom_cpu_matmul_pair(loom_backend *be, const loom_matmul_pair_args *p) {
    const loom_gemm *a = &p->a, *b = &p->b;
#ifdef _OPENMP
    /* Inside a parallel region OpenBLAS's OpenMP build runs single-threaded, so on exactly two threads each
     * product gets one core. Other thread counts split each product over all threads, one after the other. */
    if (be->threads == 2) {
#pragma omp parallel num_threads(2)
        {
            if (omp_get_thread_num() == 0) run_gemm(be, a);
            else run_gemm(be, b);
        }
        return LOOM_OK;
    }
#endif
    run_gemm(be, a);
    run_gemm(be, b);
    return LOOM_OK;
}

static void cpu_blas_free(void *p) {
    cpu_blas *blas = p;
    if (!blas) return;
    /* OpenBLAS cannot be safely unloaded while its thread pool exists; leave the handle loaded. */
    free(blas);
}

static int cpu_has_avx512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* A tiny GEMM checked against the plain loop, so a kernel that computes wrong results on this CPU (as
 * older OpenBLAS builds did on some) is refused rather than trusted. */
static int blas_self_check(sgemm_fn sgemm) {
    enum { M = 37, N = 53, K = 71 };
    static float a[M * K], b[N * K], c[M * N];
    for (int i = 0; i < M * K; i++) a[i] = (float)((i * 7) % 13) - 6.0f;
    for (int i = 0; i < N * K; i++) b[i] = (float)((i * 5) % 11) - 5.0f;
    sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float ref = 0;
            for (int k = 0; k < K; k++) ref += a[i * K + k] * b[j * K + k];
            if (fabsf(ref - c[i * N + j]) > 1e-3f) return 0;
        }
    return 1;
}

loom_status loom_cpu_blas_load(const loom_backend_config *cfg, loom_backend *be);
loom_status loom_cpu_blas_load(const loom_backend_config *cfg, loom_backend *be) {
    const char *want = cfg->blas_library;
    if (want && strcmp(want, "builtin") == 0) {
        snprintf(be->gemm_kernel, sizeof be->gemm_kernel, "builtin");
        return LOOM_OK;
    }
    /* Decide the OpenBLAS kernel before the library loads. */
    const char *coretype = cfg->blas_coretype ? cfg->blas_coretype : "auto";
    const char *user = getenv("OPENBLAS_CORETYPE");
    char saved[64] = "";
    int had_user = user != NULL;
    if (had_user) snprintf(saved, sizeof saved, "%s", user);
    const char *set_to = NULL;
    if (strcmp(coretype, "auto") == 0) {
        if (cpu_has_avx512() && had_user && strcasecmp(saved, "SkylakeX") != 0 &&
            strcasecmp(saved, "Cooperlake") != 0 && strcasecmp(saved, "SapphireRapids") != 0)
            set_to = "SkylakeX";
    } else if (strcmp(coretype, "keep") != 0) {
        set_to = coretype;
    }
    if (set_to) setenv("OPENBLAS_CORETYPE", set_to, 1);

    static const char *const candidates[] = {
#ifdef LOOM_MULTIARCH_LIBDIR
        LOOM_MULTIARCH_LIBDIR "/openblas-openmp/libopenblas.so.0",
#endif
        "libopenblas.so.0", "libopenblas.so", NULL};
    void *h = NULL;
    const char *path = NULL;
    if (want) {
        h = dlopen(want, RTLD_NOW | RTLD_LOCAL);
        path = want;
        if (!h) {
            if (set_to) { if (had_user) setenv("OPENBLAS_CORETYPE", saved, 1); else unsetenv("OPENBLAS_CORETYPE"); }
            return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                                  "cannot load BLAS library '%s': %s", want, dlerror());
        }
    } else {
        for (int i = 0; candidates[i] && !h; i++) {
            h = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
            path = candidates[i];
        }
    }
    /* Put the user's environment back for any child process. */
    if (set_to) {
        if (had_user) setenv("OPENBLAS_CORETYPE", saved, 1);
        else unsetenv("OPENBLAS_CORETYPE");
    }
    if (!h) {
        LOOM_WARN("OpenBLAS not found (install libopenblas0-openmp); using loom's slow built-in GEMM");
        snprintf(be->gemm_kernel, sizeof be->gemm_kernel, "builtin");
        return LOOM_OK;
    }
    cpu_blas *blas = calloc(1, sizeof *blas);
    LOOM_CHECK(blas != NULL, LOOM_ERR_NOMEM, "out of memory");
    blas->handle = h;
    *(void **)&blas->sgemm = dlsym(h, "cblas_sgemm");
    *(void **)&blas->sgemv = dlsym(h, "cblas_sgemv");
    *(void **)&blas->set_threads = dlsym(h, "openblas_set_num_threads");
    get_str_fn corename = NULL, config = NULL;
    *(void **)&corename = dlsym(h, "openblas_get_corename");
    *(void **)&config = dlsym(h, "openblas_get_config");
    if (!blas->sgemm) {
        free(blas);
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                              "'%s' has no cblas_sgemm", path);
    }
    if (blas->set_threads) blas->set_threads(be->threads);
    if (!blas_self_check(blas->sgemm)) {
        free(blas);
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                              "OpenBLAS kernel %s computes wrong results on this CPU; run with "
                              "--blas-coretype keep or another core type", set_to ? set_to : "(default)");
    }
    const char *cn = corename ? corename() : "?";
    const char *cf = config ? config() : "";
    snprintf(be->gemm_kernel, sizeof be->gemm_kernel, "openblas %s (%s)", cn,
             strstr(path, "openmp") || strstr(cf, "USE_OPENMP") ? "openmp" : path);
    if (!cfg->quiet) {
        if (set_to && had_user)
            LOOM_INFO("GEMM: OpenBLAS kernel %s, overriding OPENBLAS_CORETYPE=%s from the environment "
                      "(--blas-coretype keep respects it)", cn, saved);
        else
            LOOM_INFO("GEMM: OpenBLAS kernel %s", cn);
    }
    be->blas = blas;
    be->blas_free = cpu_blas_free;
    return LOOM_OK;
}
