/* loom bench peak | gemm: this machine's fp32 and bf16 GEMM peaks.
 *
 * `bench peak` runs `bench gemm` in a child process once per OpenBLAS kernel (the kernel is fixed when
 * the library loads, so each needs its own process) and keeps the best rate, then the bf16 products
 * (oneDNN's, which picks its own kernel: AMX, AVX512_BF16 or a conversion) in one more child: MFU in each
 * precision is measured against the best that precision's products reach here, so a slow kernel cannot
 * flatter it, and bf16 is not credited with a guessed multiple of fp32 (AMX runs 3.5-7x fp32, AVX512_BF16
 * about 2x). The results are cached per thread count in $LOOM_CACHE_DIR (default ~/.cache/loom). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "loom/backend.h"
#include "loom/log.h"
#include "loom/mem.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double loom_cli_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

int loom_cli_cores(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void cache_path(char *buf, size_t n, int threads) {
    const char *dir = getenv("LOOM_CACHE_DIR");
    char def[4096];
    if (!dir || !dir[0]) {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && xdg[0]) snprintf(def, sizeof def, "%s/loom", xdg);
        else snprintf(def, sizeof def, "%s/.cache/loom", home && home[0] ? home : "/tmp");
        dir = def;
    }
    snprintf(buf, n, "%s/peak-%dthreads.txt", dir, threads);
}

static void mkdir_parent(const char *path) {
    char buf[4200];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(buf, 0755);
            *p = '/';
        }
}

/* Median-of-reps GFLOP/s of the best shape, GPT-2-shaped products and a large square one. */
typedef struct {
    int64_t M, N, K;
    int ta, tb;
} gemm_shape;

/* GPT-2 124M's products at 256 tokens (qkv, MLP out, MLP in, a weight gradient, the head) and at 2048 (B 8 x
 * T 256: MLP in and a weight gradient), then 2048^3 */
static const gemm_shape shapes[] = {{256, 2304, 768, 0, 1},   {256, 768, 3072, 0, 1},  {256, 3072, 768, 0, 1},
                                    {768, 3072, 256, 1, 0},   {256, 50257, 768, 0, 1}, {2048, 3072, 768, 0, 1},
                                    {768, 3072, 2048, 1, 0},  {2048, 2048, 2048, 0, 0}};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0], N_GPT2_SHAPES = N_SHAPES - 1 };

/* the median GFLOP/s of `reps` runs of one product (after a warm-up): fp32 operands, or their bf16 copies */
static double median_rate(loom_backend *be, const gemm_shape *g, int reps, const float *A, const float *B,
                          const uint16_t *A16, const uint16_t *B16, float *C) {
    const int64_t lda = g->ta ? g->M : g->K, ldb = g->tb ? g->K : g->N;
    double times[16];
    for (int r = -1; r < reps; r++) {
        const double t0 = loom_now_s();
        const loom_status st =
            A16 ? loom_k_matmul_bf16(be, &(loom_matmul_bf16_args){g->ta, g->tb, g->M, g->N, g->K, 1.0f, A16, lda, B16, ldb,
                                                                  0.0f, C, g->N})
                : loom_k_matmul(be, &(loom_gemm){g->ta, g->tb, g->M, g->N, g->K, 1.0f, A, lda, B, ldb, 0.0f, C, g->N});
        if (st != LOOM_OK) return 0.0;
        if (r >= 0) times[r] = loom_now_s() - t0;
    }
    return 2.0 * (double)g->M * (double)g->N * (double)g->K / loom_cli_median(times, reps) / 1e9;
}

/* bf16: 0 fp32 products only, 1 fp32 and bf16 side by side (*best: fp32's), 2 bf16 products only (*best and
 * kernel: bf16's) */
static int bench_gemm(int threads, const char *coretype, int quick, int bf16, double *best, char *kernel, size_t ks) {
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.blas_coretype = coretype;
    bc.quiet = 1;
    loom_backend *be;
    if (loom_backend_init(&bc, &be) != LOOM_OK) return loom_cli_fail("bench");
    snprintf(kernel, ks, "%s", loom_backend_gemm_kernel(be));
    size_t maxe = (size_t)256 * 50257 + 16;
    if ((size_t)2048 * 2048 > maxe) maxe = (size_t)2048 * 2048;
    float *A, *B, *C;
    loom_mem mem;
    loom_mem_init(&mem);
    if (loom_mem_alloc(&mem, LOOM_MEM_WORKSPACE, (size_t)3072 * 2048 * 4, (void **)&A) ||
        loom_mem_alloc(&mem, LOOM_MEM_WORKSPACE, (size_t)50257 * 768 * 4, (void **)&B) ||
        loom_mem_alloc(&mem, LOOM_MEM_WORKSPACE, maxe * 4, (void **)&C))
        return loom_cli_fail("bench");
    for (size_t i = 0; i < (size_t)3072 * 2048; i++) A[i] = (float)((i * 13) % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)50257 * 768; i++) B[i] = (float)((i * 7) % 19) * 0.01f;
    uint16_t *A16 = NULL, *B16 = NULL;
    if (bf16) { /* bf16 copies of the same operands */
        A16 = malloc((size_t)3072 * 2048 * sizeof(uint16_t));
        B16 = malloc((size_t)50257 * 768 * sizeof(uint16_t));
        if (!A16 || !B16) {
            fprintf(stderr, "loom bench: out of memory\n");
            return 1;
        }
        if (loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){A16, A, (int64_t)3072 * 2048}) != LOOM_OK ||
            loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){B16, B, (int64_t)50257 * 768}) != LOOM_OK)
            return loom_cli_fail("bench");
    }
    *best = 0;
    double worst_ratio = 1e30, log_sum = 0.0;
    const int reps = quick ? 3 : 7;
    if (bf16 == 2) snprintf(kernel, ks, "%s", loom_backend_bf16_kernel(be));
    for (int s = 0; s < N_SHAPES; s++) {
        const gemm_shape *g = &shapes[s];
        if (bf16 == 2) {
            const double h = median_rate(be, g, reps, NULL, NULL, A16, B16, C);
            if (h > *best) *best = h;
            printf("gemm %lldx%lldx%lld %s%s: bf16 %.1f GFLOP/s\n", (long long)g->M, (long long)g->N, (long long)g->K,
                   g->ta ? "T" : "N", g->tb ? "T" : "N", h);
            continue;
        }
        const double f = median_rate(be, g, reps, A, B, NULL, NULL, C);
        if (f > *best) *best = f;
        if (!bf16) {
            printf("gemm %lldx%lldx%lld %s%s: %.1f GFLOP/s\n", (long long)g->M, (long long)g->N, (long long)g->K,
                   g->ta ? "T" : "N", g->tb ? "T" : "N", f);
            continue;
        }
        const double h = median_rate(be, g, reps, NULL, NULL, A16, B16, C);
        printf("gemm %lldx%lldx%lld %s%s: fp32 %.1f, bf16 %.1f GFLOP/s, bf16/fp32 %.2fx\n", (long long)g->M,
               (long long)g->N, (long long)g->K, g->ta ? "T" : "N", g->tb ? "T" : "N", f, h, h / f);
        if (s < N_GPT2_SHAPES) {
            if (h / f < worst_ratio) worst_ratio = h / f;
            log_sum += log(h / f);
        }
    }
    if (bf16 == 1)
        printf("fp32: %s; bf16: %s; %d threads\nbf16/fp32 on GPT-2 shapes: geometric mean %.2fx, lowest %.2fx "
               "(bar >= 1.6x)\n", loom_backend_gemm_kernel(be), loom_backend_bf16_kernel(be), threads,
               exp(log_sum / N_GPT2_SHAPES), worst_ratio);
    free(A16);
    free(B16);
    loom_mem_free(&mem, LOOM_MEM_WORKSPACE, A, 0);
    loom_mem_free(&mem, LOOM_MEM_WORKSPACE, B, 0);
    loom_mem_free(&mem, LOOM_MEM_WORKSPACE, C, 0);
    loom_backend_free(&be);
    return 0;
}

/* --stack: the forward and input-gradient products of GPT-2 124M's 12 layers at B8 T256 (M 2048), in the
 * step's order, each layer with its own bf16 weights (so B comes from memory, as in training), through
 * loom_k_matmul_bf16: once with B packed into oneDNN's layout (the default) and once on plain B (a second
 * backend made with LOOM_BF16_PACK=0), in alternating rounds of one process; medians. */
enum { STACK_LAYERS = 12, STACK_M = 2048, STACK_C = 768, STACK_F = 3072 };

static double stack_seconds(loom_backend *be, const uint16_t *W, const uint16_t *X, float *Y) {
    const int64_t M = STACK_M, C = STACK_C, F = STACK_F, per = 4 * C * C + 2 * C * F;
    const double t0 = loom_now_s();
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < STACK_LAYERS; i++) {
            const int l = pass ? STACK_LAYERS - 1 - i : i; /* the backward walks the layers back */
            const uint16_t *wqkv = W + l * per, *wo = wqkv + 3 * C * C, *w1 = wo + C * C, *w2 = w1 + F * C;
            /* forward: x W^T (qkv, attention proj, fc, mlp proj); backward: dy W (the same four, reversed) */
            const loom_matmul_bf16_args g[4] = {
                pass ? (loom_matmul_bf16_args){0, 0, M, F, C, 1.0f, X, C, w2, F, 0.0f, Y, F}
                     : (loom_matmul_bf16_args){0, 1, M, 3 * C, C, 1.0f, X, C, wqkv, C, 0.0f, Y, 3 * C},
                pass ? (loom_matmul_bf16_args){0, 0, M, C, F, 1.0f, X, F, w1, C, 0.0f, Y, C}
                     : (loom_matmul_bf16_args){0, 1, M, C, C, 1.0f, X, C, wo, C, 1.0f, Y, C},
                pass ? (loom_matmul_bf16_args){0, 0, M, C, C, 1.0f, X, C, wo, C, 0.0f, Y, C}
                     : (loom_matmul_bf16_args){0, 1, M, F, C, 1.0f, X, C, w1, C, 0.0f, Y, F},
                pass ? (loom_matmul_bf16_args){0, 0, M, C, 3 * C, 1.0f, X, 3 * C, wqkv, C, 0.0f, Y, C}
                     : (loom_matmul_bf16_args){0, 1, M, C, F, 1.0f, X, F, w2, F, 1.0f, Y, C}};
            for (int k = 0; k < 4; k++)
                if (loom_k_matmul_bf16(be, &g[k]) != LOOM_OK) return -1.0;
        }
    return loom_now_s() - t0;
}

static int bench_stack(int threads, int quick) {
    const int64_t C = STACK_C, F = STACK_F, per = 4 * C * C + 2 * C * F;
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    loom_backend *packed = NULL, *plain = NULL;
    if (loom_backend_init(&bc, &packed) != LOOM_OK) return loom_cli_fail("bench");
    setenv("LOOM_BF16_PACK", "0", 1);
    const loom_status st = loom_backend_init(&bc, &plain);
    unsetenv("LOOM_BF16_PACK");
    if (st != LOOM_OK) {
        loom_backend_free(&packed);
        return loom_cli_fail("bench");
    }
    const size_t nw = (size_t)STACK_LAYERS * (size_t)per, nx = (size_t)STACK_M * (size_t)F;
    uint16_t *W = malloc(nw * sizeof *W), *X = malloc(nx * sizeof *X);
    float *Y = malloc(nx * sizeof *Y);
    enum { MAX_ROUNDS = 7 };
    const int rounds = quick ? 3 : MAX_ROUNDS;
    double tp[MAX_ROUNDS], tq[MAX_ROUNDS];
    int rc = 0;
    if (!W || !X || !Y) {
        fprintf(stderr, "loom bench: out of memory\n");
        rc = 1;
        goto out;
    }
    for (size_t i = 0; i < nw; i++) W[i] = (uint16_t)(0x3C00u + (i * 7) % 97); /* ~1.0-1.7: finite sums */
    for (size_t i = 0; i < nx; i++) X[i] = (uint16_t)(0x3A00u + (i * 13) % 89);
    /* a warm-up (plans made), then rounds alternating which goes first */
    rc = stack_seconds(packed, W, X, Y) < 0 || stack_seconds(plain, W, X, Y) < 0;
    for (int r = 0; r < rounds && !rc; r++) {
        loom_backend *first = r & 1 ? plain : packed, *second = r & 1 ? packed : plain;
        const double a = stack_seconds(first, W, X, Y), b = stack_seconds(second, W, X, Y);
        rc = a < 0 || b < 0;
        tp[r] = r & 1 ? b : a;
        tq[r] = r & 1 ? a : b;
    }
    if (rc) {
        rc = loom_cli_fail("bench");
        goto out;
    }
    const double mp = loom_cli_median(tp, rounds), mq = loom_cli_median(tq, rounds);
    const double flops = 2.0 * 2.0 * STACK_LAYERS * (double)STACK_M * (double)per; /* forward + input gradients */
    printf("gemm stack: GPT-2 124M's %d layers, forward and input-gradient products, M %d, bf16 (%s), %d threads, "
           "medians of %d alternating rounds\n", STACK_LAYERS, STACK_M, loom_backend_bf16_kernel(packed), threads, rounds);
    printf("  B packed (default) %8.1f ms %7.1f GFLOP/s\n", 1e3 * mp, flops / mp / 1e9);
    printf("  B plain            %8.1f ms %7.1f GFLOP/s\n", 1e3 * mq, flops / mq / 1e9);
    printf("packed/plain speed %.3fx\n", mq / mp);
out:
    free(W);
    free(X);
    free(Y);
    loom_backend_free(&packed);
    loom_backend_free(&plain);
    return rc;
}

/* Runs `loom bench gemm` for one kernel (fp32) or the bf16 products in a child; parses its last line. */
static double run_child(int threads, const char *coretype, int quick, int bf16, char *kernel, size_t ks) {
    char cmd[4096 + 256];
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 0;
    self[n] = '\0';
    snprintf(cmd, sizeof cmd, "'%s' -q bench gemm --threads %d --blas-coretype %s%s%s", self, threads, coretype,
             quick ? " --quick" : "", bf16 ? " --precision bf16" : "");
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[512];
    double g = 0;
    while (fgets(line, sizeof line, p)) {
        if (!strncmp(line, "gflops=", 7)) {
            g = atof(line + 7);
            char *k = strstr(line, " kernel=");
            if (k) {
                snprintf(kernel, ks, "%s", k + 8);
                kernel[strcspn(kernel, "\n")] = '\0';
            }
        }
    }
    int status = pclose(p);
    return (WIFEXITED(status) && WEXITSTATUS(status) == 0) ? g : 0;
}

/* the best fp32 rate over the OpenBLAS kernels, and the bf16 products', on one CPU model */
typedef struct {
    double fp32, bf16;
    char kernel[128], bf16_kernel[128], cpu[128];
} machine_peak;

/* this machine's CPU model: the first processor's "model name", "cpu family" and "model" in /proc/cpuinfo (a
 * virtual machine may name only the vendor's line, "AMD EPYC", for several generations), "?" where unknown */
static void cpu_model(char *buf, size_t n) {
    snprintf(buf, n, "?");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512], name[160] = "?", family[16] = "?", model[16] = "?";
    while (fgets(line, sizeof line, f) && line[0] != '\n') { /* the first processor's block */
        const char *colon = strchr(line, ':');
        if (!colon) continue;
        const char *v = colon + 1 + (colon[1] == ' ');
        const int len = (int)strcspn(v, "\n");
        if (!strncmp(line, "model name", 10)) snprintf(name, sizeof name, "%.*s", len, v);
        else if (!strncmp(line, "cpu family", 10)) snprintf(family, sizeof family, "%.*s", len, v);
        else if (!strncmp(line, "model\t", 6)) snprintf(model, sizeof model, "%.*s", len, v);
    }
    fclose(f);
    snprintf(buf, n, "%s (family %s model %s)", name, family, model);
}

static machine_peak measure_peak(int threads, int quick, int verbose) {
    static const char *const kinds[] = {"keep", "SkylakeX", "Haswell", NULL};
    machine_peak p = {0, 0, "?", "?", "?"};
    cpu_model(p.cpu, sizeof p.cpu);
    for (int i = 0; kinds[i]; i++) {
        char k[128] = "?";
        double g = run_child(threads, kinds[i], quick, 0, k, sizeof k);
        if (verbose) printf("fp32 kernel %-32s (%s): %.1f GFLOP/s\n", k, kinds[i], g);
        if (g > p.fp32) {
            p.fp32 = g;
            snprintf(p.kernel, sizeof p.kernel, "%s", k);
        }
    }
    p.bf16 = run_child(threads, "auto", quick, 1, p.bf16_kernel, sizeof p.bf16_kernel);
    if (verbose) printf("bf16 kernel %-32s: %.1f GFLOP/s\n", p.bf16_kernel, p.bf16);
    return p;
}

static void write_cache(int threads, const machine_peak *p) {
    char path[4200];
    cache_path(path, sizeof path, threads);
    mkdir_parent(path);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "peak_gflops=%.3f\nkernel=%s\npeak_bf16_gflops=%.3f\nbf16_kernel=%s\nthreads=%d\ncpu=%s\n", p->fp32,
            p->kernel, p->bf16, p->bf16_kernel, threads, p->cpu);
    if (fclose(f) == 0) rename(tmp, path);
    else unlink(tmp);
}

/* 1 when line is key=value, the value copied to dst (cut to fit) */
static int line_value(const char *line, const char *key, char *dst, size_t n) {
    const size_t k = strlen(key);
    if (strncmp(line, key, k) || line[k] != '=') return 0;
    size_t len = strcspn(line + k + 1, "\n");
    if (len >= n) len = n - 1;
    memcpy(dst, line + k + 1, len);
    dst[len] = '\0';
    return 1;
}

/* 1 when this build and machine run another bf16 GEMM than `cached` names (libdnnl installed or removed since, or
 * a loom that reports it differently): its peak is then not this run's */
static int bf16_kernel_changed(int threads, const char *cached) {
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    loom_backend *be;
    if (loom_backend_init(&bc, &be) != LOOM_OK) return 0;
    const int changed = strncmp(loom_backend_bf16_kernel(be), cached, sizeof ((machine_peak *)0)->bf16_kernel - 1) != 0;
    loom_backend_free(&be);
    return changed;
}

/* the cached peaks for this thread count (zeros and "?" where there are none) */
static machine_peak read_cache(int threads) {
    char path[4200];
    cache_path(path, sizeof path, threads);
    FILE *f = fopen(path, "r");
    machine_peak p = {0, 0, "?", "?", "?"};
    if (!f) return p;
    char line[512], v[128];
    while (fgets(line, sizeof line, f)) {
        if (line_value(line, "peak_gflops", v, sizeof v)) p.fp32 = atof(v);
        if (line_value(line, "peak_bf16_gflops", v, sizeof v)) p.bf16 = atof(v);
        line_value(line, "kernel", p.kernel, sizeof p.kernel);
        line_value(line, "bf16_kernel", p.bf16_kernel, sizeof p.bf16_kernel);
        line_value(line, "cpu", p.cpu, sizeof p.cpu);
    }
    fclose(f);
    return p;
}

double loom_cli_peak_gflops(int threads, loom_precision precision, char *kernel, size_t ks) {
    char path[4200], cpu[128];
    cache_path(path, sizeof path, threads);
    machine_peak p = read_cache(threads);
    cpu_model(cpu, sizeof cpu);
    if (p.fp32 > 0 && strcmp(p.cpu, cpu)) { /* a home directory shared by machines of several kinds */
        LOOM_INFO("the cached peaks were measured on another CPU (%s; this one: %s)", p.cpu, cpu);
        p.fp32 = p.bf16 = 0;
    }
    if (precision == LOOM_PRECISION_BF16 && p.bf16 > 0 && bf16_kernel_changed(threads, p.bf16_kernel)) {
        LOOM_INFO("the cached bf16 peak was measured with another bf16 GEMM (%s)", p.bf16_kernel);
        p.bf16 = 0;
    }
    if (p.fp32 <= 0 || p.bf16 <= 0) { /* none yet, or a cache from before bf16 was measured */
        LOOM_INFO("measuring this machine's fp32 and bf16 GEMM peaks for %d threads once (cached in %s; `loom bench "
                  "peak` to redo)", threads, path);
        p = measure_peak(threads, 1, 0);
        if (p.fp32 > 0 && p.bf16 > 0) write_cache(threads, &p);
    }
    /* fp16 runs its products on fp32 units here: against fp32's peak */
    const int bf16 = precision == LOOM_PRECISION_BF16;
    snprintf(kernel, ks, "%s %s", bf16 ? "bf16" : "fp32", bf16 ? p.bf16_kernel : p.kernel);
    return bf16 ? p.bf16 : p.fp32;
}

int loom_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "cluster")) return loom_cmd_bench_cluster(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "decode")) return loom_cmd_bench_decode(argc, argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: loom bench peak [--threads N] [--quick] [--reset]\n"
               "       loom bench cluster [--out cluster.json] [--ranks N] [--threads N] [--quick]\n"
               "       loom bench gemm [--threads N] [--blas-coretype auto|keep|NAME] [--quick] [--bf16]\n"
               "                       [--precision fp32|bf16] [--stack]\n"
               "       loom bench decode [--threads N] [--quick]\n"
               "peak: the best fp32 GEMM rate any available kernel reaches on this machine (each OpenBLAS kernel\n"
               "in its own process), and the best bf16 GEMM rate (oneDNN's matmul), cached for training's MFU: a\n"
               "run's MFU is against its precision's peak (fp16, which runs on fp32 units here, against fp32's).\n"
               "A peak is the best rate this CPU model reaches: a lower measurement keeps the cached one (a slow\n"
               "minute on a shared machine would otherwise make every MFU read high); --reset replaces it. A cache\n"
               "from another CPU model is measured again. Its last two lines: peak_bf16_gflops=<number>,\n"
               "peak_gflops=<number> (fp32).\n"
               "gemm: one kernel's rate on GPT-2-shaped and 2048^3 products; --bf16: beside it the bf16 GEMM's\n"
               "(oneDNN's matmul when libdnnl.so.2 is installed) on the same products, and their ratio;\n"
               "--precision bf16: the bf16 products alone (last line gflops=<best> kernel=<name>).\n"
               "--stack: GPT-2 124M's 12 layers of bf16 forward and input-gradient products at M 2048 in sequence,\n"
               "B packed into oneDNN's layout (the default) against plain B (LOOM_BF16_PACK=0), alternating rounds.\n"
               "cluster: what `loom plan --time/--auto` predicts from (docs/FORMATS.md, cluster.json): GEMM rates on a\n"
               "grid of shapes in the step's three orientations, attention, the memory-bound kernels, at 1 thread and\n"
               "at every core, fp32 and bf16; each collective's latency and bus bandwidth over 2, 4, .. N ranks (mpirun;\n"
               "default N: the cores); the disk's rates (the file's folder). About a minute (--quick: less). Default\n"
               "--out: $LOOM_CACHE_DIR/cluster.json (~/.cache/loom), where `loom plan` looks.\n"
               "decode: the serving kernels beside their peers, medians: the attention against a key/value cache\n"
               "(512 prompt rows over 512 positions beside the training kernel's causal attention; one decoding row\n"
               "over 96 and 2048 positions; 32 query heads over 4 kv heads), fp32 and bf16 caches; then the few-row\n"
               "kernel (decoding, --batch-invariant) beside the library GEMM at M 64 and 512, fp32 and bf16.\n"
               "Training benchmarks against PyTorch: bench/bench_train.py (see README).\n");
        return argc < 2 ? 2 : 0;
    }
    int threads = 0, quick = 0, bf16 = 0, stack = 0, reset = 0;
    const char *coretype = "auto";
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--blas-coretype") && i + 1 < argc) coretype = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--reset")) reset = 1;
        else if (!strcmp(argv[i], "--bf16")) bf16 = 1;
        else if (!strcmp(argv[i], "--stack")) stack = 1;
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc && (!strcmp(argv[i + 1], "fp32") || !strcmp(argv[i + 1], "bf16")))
            bf16 = !strcmp(argv[++i], "bf16") ? 2 : 0;
        else {
            fprintf(stderr, "loom bench: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (threads <= 0) threads = loom_cli_cores();
    char kernel[128] = "?";
    if (!strcmp(argv[1], "gemm") && stack) return bench_stack(threads, quick);
    if (!strcmp(argv[1], "gemm")) {
        double best = 0;
        int rc = bench_gemm(threads, coretype, quick, bf16, &best, kernel, sizeof kernel);
        if (rc) return rc;
        printf("gflops=%.3f kernel=%s\n", best, kernel);
        return 0;
    }
    if (!strcmp(argv[1], "peak")) {
        machine_peak p = measure_peak(threads, quick, 1);
        if (p.fp32 <= 0 || p.bf16 <= 0) {
            fprintf(stderr, "loom bench peak: error: no %s GEMM kernel could be measured\n", p.fp32 <= 0 ? "fp32" : "bf16");
            return 1;
        }
        /* a peak is the best rate this CPU reaches: a slower moment (another tenant on a shared machine) must not
         * lower it, or every MFU after it reads high (seen here: 368 and 790 GFLOP/s measured in a slow minute,
         * against 455-477 and 908-970, then runs at "115% MFU") */
        const machine_peak c = read_cache(threads);
        if (!reset && !strcmp(c.cpu, p.cpu)) {
            if (c.fp32 > p.fp32) {
                printf("fp32: kept the cached %.1f GFLOP/s (%s), above this measurement (--reset replaces it)\n",
                       c.fp32, c.kernel);
                p.fp32 = c.fp32;
                snprintf(p.kernel, sizeof p.kernel, "%s", c.kernel);
            }
            if (c.bf16 > p.bf16 && !strcmp(c.bf16_kernel, p.bf16_kernel)) {
                printf("bf16: kept the cached %.1f GFLOP/s, above this measurement (--reset replaces it)\n", c.bf16);
                p.bf16 = c.bf16;
            }
        }
        write_cache(threads, &p);
        char path[4200];
        cache_path(path, sizeof path, threads);
        printf("best fp32 kernel: %s; bf16: %s; bf16/fp32 %.2fx; %d threads (cached in %s)\n", p.kernel, p.bf16_kernel,
               p.bf16 / p.fp32, threads, path);
        printf("peak_bf16_gflops=%.1f\npeak_gflops=%.1f\n", p.bf16, p.fp32);
        return 0;
    }
    fprintf(stderr, "loom bench: unknown benchmark '%s' (peak, gemm)\n", argv[1]);
    return 2;
}
