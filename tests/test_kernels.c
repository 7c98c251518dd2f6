/* Layers 1 and 2 of the numerical tests (docs: CONVENTIONS.md rule 10).
 *
 * Layer 1: every loom_k_* kernel of the CPU backend against a plain double-precision loop written here,
 * on random inputs with awkward sizes (none a multiple of 16), with a per-op tolerance
 * |got - ref| <= atol + rtol * |ref| whose reason is given next to it.
 * Layer 2: finite-difference gradient checks of a tiny GPT-2 and a tiny LLaMA through the public model
 * API, plus the recompute modes (bit-identical gradients) and gradient accumulation.
 *
 * Output: one line per check, "ok|FAIL name err tol", where err and tol are taken at the element whose
 * err/tol ratio is the largest (so err <= tol exactly when the check passes; tol 0 means bit-exact);
 * then "N passed, M failed". Exit status 1 when anything failed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend.h"
#include "loom/comm.h"
#include "loom/mem.h"
#include "loom/model.h"
#include "loom/rng.h"
#include "loom/tensor.h"

static int g_pass, g_fail;
static loom_rng g_rng;

/* a kernel call that must succeed (the CPU backend's kernels return an error only for a bug or no memory) */
#define K(call)                                                                              \
    do {                                                                                     \
        if ((call) != LOOM_OK) {                                                             \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, loom_error_message()); \
            exit(2);                                                                         \
        }                                                                                    \
    } while (0)

/* ------------------------------------------------------------------------------------------------ */
/* helpers                                                                                           */

static void report(const char *name, int ok, double err, double tol) {
    printf("%s %s %.3e %.3e\n", ok ? "ok" : "FAIL", name, err, tol);
    fflush(stdout);
    if (ok) g_pass++;
    else g_fail++;
}

/* got (float) vs ref (double): every element within atol + rtol*|ref|, NaN fails. */
static void check_close(const char *name, const float *got, const double *ref, int64_t n, double atol,
                        double rtol) {
    int ok = 1;
    double worst = -1.0, werr = 0.0, wtol = atol;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        double tol = atol + rtol * fabs(ref[i]);
        int good = err <= tol; /* false for NaN */
        if (!good) ok = 0;
        double ratio = !good ? (isnan(err) ? INFINITY : (tol > 0 ? err / tol : INFINITY)) : (tol > 0 ? err / tol : 0.0);
        if (ratio > worst) {
            worst = ratio;
            werr = err;
            wtol = tol;
        }
    }
    report(name, ok, werr, wtol);
}

/* got (n bf16) holds exactly the bf16 rounding of src: the bits loom_f32_to_bf16 gives */
static void check_bf16_of(const char *name, const uint16_t *got, const float *src, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += got[i] != loom_f32_to_bf16(src[i]);
    report(name, bad == 0, (double)bad, 0.0);
}

static void check_scalar(const char *name, double got, double ref, double atol, double rtol) {
    double err = fabs(got - ref), tol = atol + rtol * fabs(ref);
    report(name, err <= tol, err, tol);
}

/* bit-exact comparison of two float arrays */
static void check_bits(const char *name, const float *got, const float *want, int64_t n) {
    int ok = 1;
    double maxerr = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            ok = 0;
            double e = fabs((double)got[i] - (double)want[i]);
            if (isnan(e)) e = INFINITY;
            if (e > maxerr) maxerr = e;
        }
    }
    report(name, ok, ok ? 0.0 : (maxerr > 0 ? maxerr : INFINITY), 0.0);
}

/* the kernels that return a scalar, as functions */
static double sum_squares(loom_backend *be, const float *x, int64_t n) {
    double r = NAN;
    K(loom_k_sum_squares(be, &(loom_sum_squares_args){x, n, &r}));
    return r;
}
static double lamb_moments(loom_backend *be, const float *p, const float *g, float *m, float *v, int64_t n, float b1,
                           float b2, float eps, float wd, float bc1, float bc2, float gs) {
    double r = NAN;
    K(loom_k_lamb_moments(be, &(loom_lamb_moments_args){.p = (float *)p, .g = g, .m = m, .v = v, .n = n, .beta1 = b1,
                                                       .beta2 = b2, .eps = eps, .weight_decay = wd,
                                                       .bias_correction1 = bc1, .bias_correction2 = bc2,
                                                       .grad_scale = gs, .result = &r}));
    return r;
}

static double urand(double lo, double hi) { return lo + (hi - lo) * loom_rng_uniform(&g_rng); }

static float *fvec(int64_t n) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static double *dvec(int64_t n) {
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static void fill(float *x, int64_t n, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)urand(lo, hi);
}
static void fill_value(float *x, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

/* ------------------------------------------------------------------------------------------------ */
/* matmul                                                                                            */

static void test_matmul_case(loom_backend *be, const char *tag, int ta, int tb, int64_t M, int64_t N, int64_t K,
                             float alpha, float beta) {
    /* leading dimensions larger than the rows they hold */
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
    const int64_t arows = ta ? K : M, brows = tb ? N : K;
    float *A = fvec(arows * lda), *Bm = fvec(brows * ldb), *C = fvec(M * ldc), *C0 = fvec(M * ldc);
    fill(A, arows * lda, -1, 1);
    fill(Bm, brows * ldb, -1, 1);
    fill(C, M * ldc, -1, 1);
    /* beta == 0: C is output only and must not be read (BLAS semantics; the model relies on it) */
    if (beta == 0.0f)
        for (int64_t i = 0; i < M; i++) fill_value(C + i * ldc, N, NAN);
    memcpy(C0, C, (size_t)(M * ldc) * sizeof(float));
    K(loom_k_matmul(be, &(loom_gemm){.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K, .alpha = alpha, .A = A, .lda = lda, .B = Bm, .ldb = ldb, .beta = beta, .C = C, .ldc = ldc}));
    double *ref = dvec(M * N);
    float *got = fvec(M * N), *pad = fvec(M * 7), *pad0 = fvec(M * 7);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k];
                double b = tb ? Bm[j * ldb + k] : Bm[k * ldb + j];
                s += a * b;
            }
            ref[i * N + j] = (double)alpha * s + (beta != 0.0f ? (double)beta * C0[i * ldc + j] : 0.0);
            got[i * N + j] = C[i * ldc + j];
        }
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < 7; j++) {
            pad[i * 7 + j] = C[i * ldc + N + j];
            pad0[i * 7 + j] = C0[i * ldc + N + j];
        }
    char name[160];
    snprintf(name, sizeof name, "matmul_%s_%s%s_%lldx%lldx%lld_alpha%g_beta%g", tag, ta ? "t" : "n", tb ? "t" : "n",
             (long long)M, (long long)N, (long long)K, (double)alpha, (double)beta);
    /* A float dot product of K=71 unit-range products: the worst-case rounding bound is
     * K*2^-24*sum|a b| ~ 71 * 6e-8 * 18 ~ 8e-5, the typical (random-walk) error ~ 1e-6; OpenBLAS's
     * blocked FMA kernels sit near the typical end. atol 2e-5 leaves 10x room over typical while still
     * catching any wrong term (which moves a result by ~0.1); rtol covers the beta*C term. */
    check_close(name, got, ref, M * N, 2e-5, 1e-5);
    snprintf(name, sizeof name, "matmul_%s_%s%s_%lldx%lldx%lld_ldc_padding_untouched", tag, ta ? "t" : "n",
             tb ? "t" : "n", (long long)M, (long long)N, (long long)K);
    check_bits(name, pad, pad0, M * 7);
    free(A);
    free(Bm);
    free(C);
    free(C0);
    free(ref);
    free(got);
    free(pad);
    free(pad0);
}

static void test_matmul(loom_backend *be, const char *tag) {
    /* NT with up to 32 rows runs the few-rows kernel (decoding a batch): partial 4 x 6 tiles, a K tail, none */
    static const int64_t shapes[][3] = {{37, 53, 71}, {1, 53, 71}, {37, 1, 71}, {5, 3, 1}, {13, 53, 71}, {8, 8, 64}};
    for (int s = 0; s < 6; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                test_matmul_case(be, tag, ta, tb, M, N, K, 0.7f, -1.3f);
                if (s <= 1) { /* and one row (the GEMV path) */
                    test_matmul_case(be, tag, ta, tb, M, N, K, 1.0f, 0.0f);
                    test_matmul_case(be, tag, ta, tb, M, N, K, -0.5f, 1.0f);
                }
            }
}

/* ------------------------------------------------------------------------------------------------ */
/* norms                                                                                             */

static void test_layernorm(loom_backend *be) {
    const int64_t N = 37, C = 53;
    const float eps = 1e-5f;
    float *x = fvec(N * C), *w = fvec(C), *b = fvec(C), *y = fvec(N * C), *mean = fvec(N), *rstd = fvec(N);
    fill(x, N * C, -1, 1);
    for (int64_t i = 0; i < N * C; i++) x[i] += 0.5f + 0.1f * (float)(i / C % 5); /* non-zero row means */
    fill(w, C, 0.5, 1.5);
    fill(b, C, -0.5, 0.5);
    K(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = y, .mean = mean, .rstd = rstd, .inp = x, .w = w, .b = b, .N = N, .C = C, .eps = eps}));
    double *yr = dvec(N * C), *mr = dvec(N), *rr = dvec(N);
    for (int64_t n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int64_t c = 0; c < C; c++) m += x[n * C + c];
        m /= (double)C;
        for (int64_t c = 0; c < C; c++) v += (x[n * C + c] - m) * (x[n * C + c] - m);
        double r = 1.0 / sqrt(v / (double)C + eps);
        mr[n] = m;
        rr[n] = r;
        for (int64_t c = 0; c < C; c++) yr[n * C + c] = (x[n * C + c] - m) * r * w[c] + b[c];
    }
    /* forward: a 53-term float mean and variance, then a few multiplies: relative error of mean/rstd
     * ~ C*2^-24 ~ 3e-6 worst case, outputs are O(1): 1e-5 bounds all three with room. */
    check_close("layernorm_forward_out", y, yr, N * C, 1e-5, 1e-5);
    check_close("layernorm_forward_mean", mean, mr, N, 1e-6, 1e-5);
    check_close("layernorm_forward_rstd", rstd, rr, N, 1e-6, 1e-5);
    /* the output in bf16 instead (bf16 training): exactly the fp32 output's rounding, the same statistics */
    uint16_t *y16 = malloc((size_t)(N * C) * sizeof(uint16_t));
    float *mean16 = fvec(N), *rstd16 = fvec(N);
    K(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out16 = y16, .mean = mean16, .rstd = rstd16, .inp = x, .w = w, .b = b, .N = N, .C = C, .eps = eps}));
    check_bf16_of("layernorm_forward_bf16_out_is_rounded_out", y16, y, N * C);
    check_bits("layernorm_forward_bf16_out_same_mean", mean16, mean, N);
    check_bits("layernorm_forward_bf16_out_same_rstd", rstd16, rstd, N);
    free(y16);
    free(mean16);
    free(rstd16);

    /* backward: dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy w; dw = sum dy xhat;
     * db = sum dy. Reference from x alone (its own double mean/rstd). */
    float *dy = fvec(N * C), *dx = fvec(N * C), *dx0 = fvec(N * C), *dw = fvec(C), *db = fvec(C);
    fill(dy, N * C, -1, 1);
    fill(dx0, N * C, -1, 1);
    double *dxr = dvec(N * C), *dwr = dvec(C), *dbr = dvec(C);
    for (int64_t n = 0; n < N; n++) {
        double a = 0, bs = 0;
        for (int64_t c = 0; c < C; c++) {
            double xh = (x[n * C + c] - mr[n]) * rr[n], dn = (double)dy[n * C + c] * w[c];
            a += dn;
            bs += dn * xh;
            dwr[c] += (double)dy[n * C + c] * xh;
            dbr[c] += dy[n * C + c];
        }
        a /= (double)C;
        bs /= (double)C;
        for (int64_t c = 0; c < C; c++) {
            double xh = (x[n * C + c] - mr[n]) * rr[n], dn = (double)dy[n * C + c] * w[c];
            dxr[n * C + c] = dx0[n * C + c] + rr[n] * (dn - a - xh * bs);
        }
    }
    /* accumulate = 0: dw, db are written (pre-filled with NaN to prove it); dinp always += */
    memcpy(dx, dx0, (size_t)(N * C) * sizeof(float));
    fill_value(dw, C, NAN);
    fill_value(db, C, NAN);
    K(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = dx, .dw = dw, .db = db, .dout = dy, .inp = x, .w = w, .mean = mean, .rstd = rstd, .N = N, .C = C, .accumulate = 0}));
    /* dx: two 53-term float row sums feed an O(1) result (|dx| up to ~5): 2e-5 absolute covers
     * C*2^-24*|terms| with margin. dw, db: 37-row float column sums of O(1) terms: same bound. */
    check_close("layernorm_backward_dinp_accumulates", dx, dxr, N * C, 2e-5, 1e-5);
    check_close("layernorm_backward_dw_acc0", dw, dwr, C, 2e-5, 1e-5);
    check_close("layernorm_backward_db_acc0", db, dbr, C, 2e-5, 1e-5);
    /* accumulate = 1: dw, db += */
    float *dw0 = fvec(C), *db0 = fvec(C);
    fill(dw0, C, -1, 1);
    fill(db0, C, -1, 1);
    memcpy(dw, dw0, (size_t)C * sizeof(float));
    memcpy(db, db0, (size_t)C * sizeof(float));
    memcpy(dx, dx0, (size_t)(N * C) * sizeof(float));
    K(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = dx, .dw = dw, .db = db, .dout = dy, .inp = x, .w = w, .mean = mean, .rstd = rstd, .N = N, .C = C, .accumulate = 1}));
    double *dwr1 = dvec(C), *dbr1 = dvec(C);
    for (int64_t c = 0; c < C; c++) {
        dwr1[c] = dwr[c] + dw0[c];
        dbr1[c] = dbr[c] + db0[c];
    }
    check_close("layernorm_backward_dw_acc1", dw, dwr1, C, 2e-5, 1e-5);
    check_close("layernorm_backward_db_acc1", db, dbr1, C, 2e-5, 1e-5);
    free(x); free(w); free(b); free(y); free(mean); free(rstd); free(yr); free(mr); free(rr);
    free(dy); free(dx); free(dx0); free(dw); free(db); free(dxr); free(dwr); free(dbr);
    free(dw0); free(db0); free(dwr1); free(dbr1);
}

static void test_rmsnorm(loom_backend *be) {
    const int64_t N = 37, C = 53;
    const float eps = 1e-5f;
    float *x = fvec(N * C), *w = fvec(C), *y = fvec(N * C), *rstd = fvec(N);
    fill(x, N * C, -1.5, 1.5);
    fill(w, C, 0.5, 1.5);
    K(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = y, .rstd = rstd, .inp = x, .w = w, .N = N, .C = C, .eps = eps}));
    double *yr = dvec(N * C), *rr = dvec(N);
    for (int64_t n = 0; n < N; n++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)x[n * C + c] * x[n * C + c];
        rr[n] = 1.0 / sqrt(ss / (double)C + eps);
        for (int64_t c = 0; c < C; c++) yr[n * C + c] = x[n * C + c] * rr[n] * w[c];
    }
    /* one 53-term float sum of squares (positive terms: relative error <= C*2^-24 ~ 3e-6) */
    check_close("rmsnorm_forward_out", y, yr, N * C, 1e-5, 1e-5);
    check_close("rmsnorm_forward_rstd", rstd, rr, N, 1e-6, 1e-5);
    uint16_t *y16 = malloc((size_t)(N * C) * sizeof(uint16_t));
    K(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out16 = y16, .inp = x, .w = w, .N = N, .C = C, .eps = eps}));
    check_bf16_of("rmsnorm_forward_bf16_out_is_rounded_out", y16, y, N * C);
    free(y16);
    /* backward: dx = r (dy w - xhat mean(dy w xhat)), xhat = x r; dw = sum dy xhat */
    float *dy = fvec(N * C), *dx = fvec(N * C), *dx0 = fvec(N * C), *dw = fvec(C), *dw0 = fvec(C);
    fill(dy, N * C, -1, 1);
    fill(dx0, N * C, -1, 1);
    fill(dw0, C, -1, 1);
    double *dxr = dvec(N * C), *dwr = dvec(C), *dwr1 = dvec(C);
    for (int64_t n = 0; n < N; n++) {
        double a = 0;
        for (int64_t c = 0; c < C; c++) {
            double xh = x[n * C + c] * rr[n];
            a += (double)dy[n * C + c] * w[c] * xh;
            dwr[c] += (double)dy[n * C + c] * xh;
        }
        a /= (double)C;
        for (int64_t c = 0; c < C; c++)
            dxr[n * C + c] = dx0[n * C + c] + rr[n] * ((double)dy[n * C + c] * w[c] - x[n * C + c] * rr[n] * a);
    }
    for (int64_t c = 0; c < C; c++) dwr1[c] = dwr[c] + dw0[c];
    memcpy(dx, dx0, (size_t)(N * C) * sizeof(float));
    fill_value(dw, C, NAN);
    K(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = dx, .dw = dw, .dout = dy, .inp = x, .w = w, .rstd = rstd, .N = N, .C = C, .accumulate = 0}));
    /* same reasoning as layernorm backward */
    check_close("rmsnorm_backward_dinp_accumulates", dx, dxr, N * C, 2e-5, 1e-5);
    check_close("rmsnorm_backward_dw_acc0", dw, dwr, C, 2e-5, 1e-5);
    memcpy(dx, dx0, (size_t)(N * C) * sizeof(float));
    memcpy(dw, dw0, (size_t)C * sizeof(float));
    K(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = dx, .dw = dw, .dout = dy, .inp = x, .w = w, .rstd = rstd, .N = N, .C = C, .accumulate = 1}));
    check_close("rmsnorm_backward_dw_acc1", dw, dwr1, C, 2e-5, 1e-5);
    free(x); free(w); free(y); free(rstd); free(yr); free(rr); free(dy); free(dx); free(dx0); free(dw);
    free(dw0); free(dxr); free(dwr); free(dwr1);
}

/* ------------------------------------------------------------------------------------------------ */
/* activations and elementwise                                                                       */

static double gelu_ref(double x) {
    const double k = sqrt(2.0 / M_PI), c = 0.044715;
    return 0.5 * x * (1.0 + tanh(k * (x + c * x * x * x)));
}
static double gelu_grad_ref(double x) {
    const double k = sqrt(2.0 / M_PI), c = 0.044715;
    double t = tanh(k * (x + c * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * c * x * x);
}

static void test_activations(loom_backend *be) {
    const int64_t N = 37, F = 53, n = N * F;
    float *pre = fvec(n), *pre0 = fvec(n), *bias = fvec(F), *out = fvec(n);
    fill(pre0, n, -5, 5); /* both tails of the GELU and the region around 0 */
    fill(bias, F, -0.5, 0.5);
    /* bias_gelu_forward with out: pre += bias, out = gelu(pre) */
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = pre, .out = out, .bias = bias, .N = N, .F = F, .exact = 0}));
    float *pre_want = fvec(n);
    double *ref = dvec(n);
    for (int64_t i = 0; i < n; i++) {
        pre_want[i] = pre0[i] + bias[i % F]; /* one float add: the kernel must give exactly this */
        ref[i] = gelu_ref((double)pre_want[i]);
    }
    check_bits("bias_gelu_forward_pre_plus_bias", pre, pre_want, n);
    /* tanh through 1 - 2/(exp(2u)+1) with a ~1-ulp expf: absolute error ~1e-7 near 0 (cancellation),
     * times 0.5|x| <= 2.75, plus the ulp of the O(5) result: atol 2e-6, rtol 4e-6. */
    check_close("bias_gelu_forward_out", out, ref, n, 2e-6, 4e-6);
    /* the output in bf16 instead (bf16 training), here and below: exactly the fp32 output's rounding */
    uint16_t *out16 = malloc((size_t)n * sizeof(uint16_t));
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = pre, .out16 = out16, .bias = bias, .N = N, .F = F, .exact = 0}));
    check_bits("bias_gelu_forward_bf16_pre_plus_bias", pre, pre_want, n);
    check_bf16_of("bias_gelu_forward_bf16_out_is_rounded_out", out16, out, n);
    /* out == NULL: bias only */
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = pre, .bias = bias, .N = N, .F = F, .exact = 0}));
    check_bits("bias_gelu_forward_out_null_bias_only", pre, pre_want, n);
    /* gelu_forward */
    fill_value(out, n, NAN);
    K(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out = out, .inp = pre0, .n = n, .exact = 0}));
    for (int64_t i = 0; i < n; i++) ref[i] = gelu_ref((double)pre0[i]);
    check_close("gelu_forward", out, ref, n, 2e-6, 4e-6);
    K(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out16 = out16, .inp = pre0, .n = n, .exact = 0}));
    check_bf16_of("gelu_forward_bf16_out_is_rounded_out", out16, out, n);
    /* gelu_backward (and in place: dpre aliases dout) */
    float *dout = fvec(n), *dpre = fvec(n);
    fill(dout, n, -1, 1);
    K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.dinp = dpre, .inp = pre0, .dout = dout, .n = n, .exact = 0}));
    for (int64_t i = 0; i < n; i++) ref[i] = gelu_grad_ref((double)pre0[i]) * dout[i];
    /* gelu' is O(1) (max ~1.13), but its sech^2 = 1 - t^2 is formed in float from t = tanh(u) ~ 1 for
     * |x| > 3: an error of ~1 ulp(1) = 1.2e-7 in t becomes 2.4e-7 absolute in sech^2, multiplied by
     * 0.5 x k (1 + 3 c x^2) ~ 9 at |x| = 5: ~2e-6 absolute (measured 1.8e-6). atol 5e-6. */
    check_close("gelu_backward", dpre, ref, n, 5e-6, 4e-6);
    memcpy(dpre, dout, (size_t)n * sizeof(float));
    K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.dinp = dpre, .inp = pre0, .dout = dpre, .n = n, .exact = 0}));
    check_close("gelu_backward_in_place", dpre, ref, n, 5e-6, 4e-6);
    /* the exact GELU (erf, PyTorch's nn.GELU()): erf to 1.5e-7 absolute (Abramowitz-Stegun 7.1.26) times
     * 0.5|x| <= 2.75 gives <= 4.2e-7, plus the ulp of the O(5) result: atol 1e-6, rtol 4e-6; its derivative
     * Phi(x) + x phi(x) has the erf error halved plus a ~1-ulp exp: the same bounds */
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = pre, .out = out, .bias = bias, .N = N, .F = F, .exact = 1}));
    for (int64_t i = 0; i < n; i++) ref[i] = 0.5 * pre_want[i] * (1.0 + erf(pre_want[i] / sqrt(2.0)));
    check_bits("bias_gelu_erf_forward_pre_plus_bias", pre, pre_want, n);
    check_close("bias_gelu_erf_forward_out", out, ref, n, 1e-6, 4e-6);
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = pre, .out16 = out16, .bias = bias, .N = N, .F = F, .exact = 1}));
    check_bf16_of("bias_gelu_erf_forward_bf16_out_is_rounded_out", out16, out, n);
    K(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out = out, .inp = pre0, .n = n, .exact = 1}));
    for (int64_t i = 0; i < n; i++) ref[i] = 0.5 * pre0[i] * (1.0 + erf(pre0[i] / sqrt(2.0)));
    check_close("gelu_erf_forward", out, ref, n, 1e-6, 4e-6);
    K(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out16 = out16, .inp = pre0, .n = n, .exact = 1}));
    check_bf16_of("gelu_erf_forward_bf16_out_is_rounded_out", out16, out, n);
    K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.dinp = dpre, .inp = pre0, .dout = dout, .n = n, .exact = 1}));
    for (int64_t i = 0; i < n; i++) {
        const double x = pre0[i];
        ref[i] = (0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI)) * dout[i];
    }
    check_close("gelu_erf_backward", dpre, ref, n, 1e-6, 4e-6);
    /* the bf16 form (rows of F): the bias gradient bias_backward makes of the fp32 gradient, to the bit, and
     * that gradient's bf16 rounding; with db NULL only the rounding */
    for (int exact = 0; exact < 2; exact++) {
        float *dbw = fvec(F), *db16 = fvec(F);
        fill(dbw, F, -1, 1);
        memcpy(db16, dbw, (size_t)F * sizeof(float));
        K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.dinp = dpre, .inp = pre0, .dout = dout, .n = n, .exact = exact}));
        K(loom_k_bias_backward(be, &(loom_bias_backward_args){.db = dbw, .dout = dpre, .N = N, .C = F, .accumulate = 1}));
        for (int64_t i = 0; i < n; i++) out16[i] = 0xFFFF;
        K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.inp = pre0, .dout = dout, .n = n, .exact = exact, .dinp16 = out16, .db = db16, .cols = F, .accumulate = 1}));
        if (exact) { /* the erf form's vector and remainder loops fall on other elements: an ulp apart at most */
            double *dbr = dvec(F);
            for (int64_t f = 0; f < F; f++) dbr[f] = dbw[f];
            check_close("gelu_erf_backward_bf16_bias_sums", db16, dbr, F, 1e-6, 1e-6);
            free(dbr);
        } else
            check_bits("gelu_backward_bf16_bias_sums", db16, dbw, F);
        check_bf16_of(exact ? "gelu_erf_backward_bf16" : "gelu_backward_bf16", out16, dpre, n);
        for (int64_t i = 0; i < n; i++) out16[i] = 0xFFFF;
        K(loom_k_gelu_backward(be, &(loom_gelu_backward_args){.inp = pre0, .dout = dout, .n = n, .exact = exact, .dinp16 = out16, .cols = F}));
        check_bf16_of(exact ? "gelu_erf_backward_bf16_no_bias" : "gelu_backward_bf16_no_bias", out16, dpre, n);
        free(dbw);
        free(db16);
    }

    /* SwiGLU: gu (N, 2F) = [gate | up]; out = silu(gate) * up */
    float *gu = fvec(N * 2 * F), *sw = fvec(n), *dgu = fvec(N * 2 * F);
    fill(gu, N * 2 * F, -6, 6);
    K(loom_k_swiglu_forward(be, &(loom_swiglu_forward_args){.out = sw, .gu = gu, .N = N, .F = F}));
    double *swr = dvec(n), *dgur = dvec(N * 2 * F);
    for (int64_t r = 0; r < N; r++)
        for (int64_t f = 0; f < F; f++) {
            double g = gu[r * 2 * F + f], u = gu[r * 2 * F + F + f], dy = dout[r * F + f];
            double s = 1.0 / (1.0 + exp(-g));
            swr[r * F + f] = g * s * u;
            dgur[r * 2 * F + f] = dy * u * s * (1.0 + g * (1.0 - s));
            dgur[r * 2 * F + F + f] = dy * g * s;
        }
    /* sigmoid through a ~1-ulp expf and one division: a few ulp relative on O(36) products */
    check_close("swiglu_forward", sw, swr, n, 1e-6, 4e-6);
    K(loom_k_swiglu_forward(be, &(loom_swiglu_forward_args){.out16 = out16, .gu = gu, .N = N, .F = F}));
    check_bf16_of("swiglu_forward_bf16_out_is_rounded_out", out16, sw, n);
    free(out16);
    fill_value(dgu, N * 2 * F, NAN);
    K(loom_k_swiglu_backward(be, &(loom_swiglu_backward_args){.dgu = dgu, .gu = gu, .dout = dout, .N = N, .F = F}));
    /* dgate's factor s(1 + g(1-s)) is a difference-free product; same few-ulp bound */
    check_close("swiglu_backward", dgu, dgur, N * 2 * F, 1e-6, 4e-6);

    /* bias_add: one float add per element, exact to the rounding of that add */
    memcpy(pre, pre0, (size_t)n * sizeof(float));
    K(loom_k_bias_add(be, &(loom_bias_add_args){.x = pre, .bias = bias, .N = N, .C = F}));
    check_bits("bias_add", pre, pre_want, n);
    /* bias_backward: column sums */
    float *db = fvec(F), *db0 = fvec(F);
    double *dbr = dvec(F), *dbr1 = dvec(F);
    fill(db0, F, -1, 1);
    for (int64_t r = 0; r < N; r++)
        for (int64_t f = 0; f < F; f++) dbr[f] += dout[r * F + f];
    for (int64_t f = 0; f < F; f++) dbr1[f] = dbr[f] + db0[f];
    fill_value(db, F, NAN);
    K(loom_k_bias_backward(be, &(loom_bias_backward_args){.db = db, .dout = dout, .N = N, .C = F, .accumulate = 0}));
    /* 37 (38) unit-range terms summed in float: <= 38 * 2^-24 * 38 ~ 1e-4 worst case, ~1e-6 typical */
    check_close("bias_backward_acc0", db, dbr, F, 1e-5, 1e-5);
    memcpy(db, db0, (size_t)F * sizeof(float));
    K(loom_k_bias_backward(be, &(loom_bias_backward_args){.db = db, .dout = dout, .N = N, .C = F, .accumulate = 1}));
    check_close("bias_backward_acc1", db, dbr1, F, 1e-5, 1e-5);
    /* with dout16: the same sums to the bit, and dout's bf16 rounding beside them (or only that, db NULL) */
    uint16_t *dout16 = malloc((size_t)n * sizeof(uint16_t));
    float *db16 = fvec(F);
    memcpy(db16, db0, (size_t)F * sizeof(float));
    for (int64_t i = 0; i < n; i++) dout16[i] = 0xFFFF;
    K(loom_k_bias_backward(be, &(loom_bias_backward_args){.db = db16, .dout = dout, .N = N, .C = F, .accumulate = 1, .dout16 = dout16}));
    check_bits("bias_backward_dout16_sums", db16, db, F);
    check_bf16_of("bias_backward_dout16", dout16, dout, n);
    for (int64_t i = 0; i < n; i++) dout16[i] = 0xFFFF;
    K(loom_k_bias_backward(be, &(loom_bias_backward_args){.dout = dout, .N = N, .C = F, .dout16 = dout16}));
    check_bf16_of("bias_backward_dout16_only", dout16, dout, n);
    free(dout16);
    free(db16);

    /* add (and out aliasing a), scale: one float operation each, so bit-exact */
    float *a = fvec(n), *s = fvec(n), *want = fvec(n);
    fill(a, n, -3, 3);
    for (int64_t i = 0; i < n; i++) want[i] = a[i] + dout[i];
    fill_value(s, n, NAN);
    K(loom_k_add(be, &(loom_add_args){.out = s, .a = a, .b = dout, .n = n}));
    check_bits("add", s, want, n);
    memcpy(s, a, (size_t)n * sizeof(float));
    K(loom_k_add(be, &(loom_add_args){.out = s, .a = s, .b = dout, .n = n}));
    check_bits("add_out_aliases_a", s, want, n);
    for (int64_t i = 0; i < n; i++) want[i] = a[i] * -0.37f;
    memcpy(s, a, (size_t)n * sizeof(float));
    K(loom_k_scale(be, &(loom_scale_args){.x = s, .s = -0.37f, .n = n}));
    check_bits("scale", s, want, n);
    free(pre); free(pre0); free(bias); free(out); free(pre_want); free(ref); free(dout); free(dpre);
    free(gu); free(sw); free(dgu); free(swr); free(dgur); free(db); free(db0); free(dbr); free(dbr1);
    free(a); free(s); free(want);
}

/* ------------------------------------------------------------------------------------------------ */
/* RoPE                                                                                              */

static void test_rope(loom_backend *be) {
    const int64_t B = 2, T = 13, H = 4, KV = 2, hd = 8, half = hd / 2, row = (H + 2 * KV) * hd, n = B * T * row;
    float *cs = fvec(T * half), *sn = fvec(T * half), *x0 = fvec(n), *x = fvec(n);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double ang = (double)t * pow(10000.0, -2.0 * (double)i / (double)hd);
            cs[t * half + i] = (float)cos(ang);
            sn[t * half + i] = (float)sin(ang);
        }
    fill(x0, n, -1, 1);
    for (int inverse = 0; inverse < 2; inverse++) {
        memcpy(x, x0, (size_t)n * sizeof(float));
        K(loom_k_rope(be, &(loom_rope_args){.qkv = x, .cos_t = cs, .sin_t = sn, .B = B, .T = T, .H = H, .KV = KV, .hd = hd, .inverse = inverse}));
        double *ref = dvec(n);
        for (int64_t i = 0; i < n; i++) ref[i] = x0[i];
        double sg = inverse ? -1.0 : 1.0;
        for (int64_t bt = 0; bt < B * T; bt++) {
            int64_t t = bt % T;
            for (int64_t h = 0; h < H + KV; h++) { /* q heads then k heads; v untouched */
                const float *xi = x0 + bt * row + h * hd;
                double *o = ref + bt * row + h * hd;
                for (int64_t i = 0; i < half; i++) {
                    double c = cs[t * half + i], s = sg * sn[t * half + i];
                    double x1 = xi[i], x2 = xi[i + half]; /* rotate_half: out = x c + rotate_half(x) s */
                    o[i] = x1 * c - x2 * s;
                    o[i + half] = x2 * c + x1 * s;
                }
            }
        }
        /* two products and one add of unit values: <= 2 ulp ~ 2.4e-7 */
        check_close(inverse ? "rope_inverse" : "rope_forward", x, ref, n, 5e-7, 1e-6);
        /* v heads must be left bit-identical */
        float *vg = fvec(B * T * KV * hd), *vw = fvec(B * T * KV * hd);
        for (int64_t bt = 0; bt < B * T; bt++)
            for (int64_t j = 0; j < KV * hd; j++) {
                vg[bt * KV * hd + j] = x[bt * row + (H + KV) * hd + j];
                vw[bt * KV * hd + j] = x0[bt * row + (H + KV) * hd + j];
            }
        check_bits(inverse ? "rope_inverse_v_untouched" : "rope_forward_v_untouched", vg, vw, B * T * KV * hd);
        free(vg);
        free(vw);
        free(ref);
    }
    /* inverse(forward(x)) == x up to cos^2 + sin^2 = 1 in float and 4 roundings: ~5e-7 */
    memcpy(x, x0, (size_t)n * sizeof(float));
    K(loom_k_rope(be, &(loom_rope_args){.qkv = x, .cos_t = cs, .sin_t = sn, .B = B, .T = T, .H = H, .KV = KV, .hd = hd, .inverse = 0}));
    K(loom_k_rope(be, &(loom_rope_args){.qkv = x, .cos_t = cs, .sin_t = sn, .B = B, .T = T, .H = H, .KV = KV, .hd = hd, .inverse = 1}));
    double *id = dvec(n);
    for (int64_t i = 0; i < n; i++) id[i] = x0[i];
    check_close("rope_inverse_of_forward_is_identity", x, id, n, 1e-6, 1e-6);
    free(id); free(cs); free(sn); free(x0); free(x);
}

/* ------------------------------------------------------------------------------------------------ */
/* attention                                                                                         */

/* Explicit causal softmax over the T x T scores in double; with dout, the analytic backward:
 * dV_j += p_ij dy_i, dp_ij = dy_i . v_j, ds_ij = p_ij (dp_ij - sum_k p_ik dp_ik),
 * dq_i = scale sum_j ds_ij k_j, dk_j += scale ds_ij q_i. GQA: query head h reads kv head h/(H/KV). */
static void ref_attention(const float *qkv, const float *dout, int64_t B, int64_t T, int64_t H, int64_t KV,
                          int64_t hd, double *out, double *lse, double *dqkv) {
    const int64_t row = (H + 2 * KV) * hd, group = H / KV, C = H * hd;
    const double scale = 1.0 / sqrt((double)hd);
    double *s = dvec(T * T), *p = dvec(T * T), *dp = dvec(T);
    if (dqkv) memset(dqkv, 0, (size_t)(B * T * row) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t kvh = h / group;
            for (int64_t i = 0; i < T; i++) {
                const float *q = qkv + (b * T + i) * row + h * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    const float *k = qkv + (b * T + j) * row + (H + kvh) * hd;
                    double d = 0;
                    for (int64_t e = 0; e < hd; e++) d += (double)q[e] * k[e];
                    s[i * T + j] = d * scale;
                    if (s[i * T + j] > mx) mx = s[i * T + j];
                }
                for (int64_t j = 0; j <= i; j++) sum += exp(s[i * T + j] - mx);
                lse[(b * H + h) * T + i] = mx + log(sum);
                for (int64_t j = 0; j <= i; j++) p[i * T + j] = exp(s[i * T + j] - mx) / sum;
                double *o = out + (b * T + i) * C + h * hd;
                for (int64_t e = 0; e < hd; e++) o[e] = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    const float *v = qkv + (b * T + j) * row + (H + KV + kvh) * hd;
                    for (int64_t e = 0; e < hd; e++) o[e] += p[i * T + j] * v[e];
                }
                if (!dout) continue;
                const float *dy = dout + (b * T + i) * C + h * hd;
                double D = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    const float *v = qkv + (b * T + j) * row + (H + KV + kvh) * hd;
                    double d = 0;
                    for (int64_t e = 0; e < hd; e++) d += (double)dy[e] * v[e];
                    dp[j] = d;
                    D += p[i * T + j] * d;
                }
                double *dq = dqkv + (b * T + i) * row + h * hd;
                for (int64_t j = 0; j <= i; j++) {
                    const float *k = qkv + (b * T + j) * row + (H + kvh) * hd;
                    double *dk = dqkv + (b * T + j) * row + (H + kvh) * hd;
                    double *dv = dqkv + (b * T + j) * row + (H + KV + kvh) * hd;
                    double ds = p[i * T + j] * (dp[j] - D);
                    for (int64_t e = 0; e < hd; e++) {
                        dq[e] += scale * ds * k[e];
                        dk[e] += scale * ds * q[e];
                        dv[e] += p[i * T + j] * dy[e];
                    }
                }
            }
        }
    free(s);
    free(p);
    free(dp);
}

static float bf16_value(uint16_t h); /* below */

/* the values of x rounded to bf16, in place: the operands bf16 products take (the reference reads the same) */
static void round_to_bf16(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = bf16_value(loom_f32_to_bf16(x[i]));
}

/* bf16 (bf16_products): the inputs are bf16 values, so that q.k, dO.v and the rest are exact products in both;
 * what is left is the rounding of the probabilities (p.v, dV) and of dS (dK, dQ) to bf16, 2^-8 relative a term
 * (8 significant bits): out within 2^-8 sum_j p_j |v_j| <= 2^-8 1.5; dv within 2^-8 1.5 sum_i p_ij, a key's
 * probabilities over the queries that see it, ~1 + ln T where rows are flat (dq, dk: the same order here).
 * lse comes from fp32 scores, as without. Where the build multiplies bf16 (AVX512_BF16) the products must
 * differ from fp32's on the same inputs (the probabilities were rounded); elsewhere the flag must leave the
 * fp32 products, bit for bit. */
static double bf16_out_tol(void) { return 1.5 / 256.0; }
static double bf16_grad_tol(int64_t T) { return 1.5 / 256.0 * (1.0 + log((double)T)); }

static void test_attention_case(loom_backend *be, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t hd, int bf16) {
    const int64_t row = (H + 2 * KV) * hd, C = H * hd;
    float *qkv = fvec(B * T * row), *out = fvec(B * T * C), *lse = fvec(B * H * T), *dout = fvec(B * T * C),
          *dqkv = fvec(B * T * row);
    fill(qkv, B * T * row, -1.5, 1.5); /* scores up to ~|q||k|/sqrt(hd) ~ 6: peaked and flat rows both */
    fill(dout, B * T * C, -1, 1);
    if (bf16) {
        round_to_bf16(qkv, B * T * row);
        round_to_bf16(dout, B * T * C);
    }
    fill_value(out, B * T * C, NAN);
    fill_value(lse, B * H * T, NAN);
    K(loom_k_attention_forward(be, &(loom_attention_forward_args){.out = out, .lse = lse, .qkv = qkv, .B = B, .T = T, .H = H, .KV = KV, .hd = hd, .bf16_products = bf16}));
    double *outr = dvec(B * T * C), *lser = dvec(B * H * T), *dqkvr = dvec(B * T * row);
    ref_attention(qkv, dout, B, T, H, KV, hd, outr, lser, dqkvr);
    char name[128], shape[64];
    snprintf(shape, sizeof shape, "B%lld_T%lld_H%lld_KV%lld_hd%lld", (long long)B, (long long)T, (long long)H,
             (long long)KV, (long long)hd);
    const char *form = bf16 ? "attention_bf16" : "attention";
    /* out: a convex combination of unit-range v (<= T terms) with probabilities from a ~1-ulp expf and
     * hd-term float dot products: ~1e-6 absolute. lse: max + log(sum) of O(6) numbers: a few ulp. */
    snprintf(name, sizeof name, "%s_forward_out_%s", form, shape);
    check_close(name, out, outr, B * T * C, bf16 ? bf16_out_tol() : 5e-6, 1e-5);
    snprintf(name, sizeof name, "%s_forward_lse_%s", form, shape);
    check_close(name, lse, lser, B * H * T, 5e-6, 2e-6);
    fill_value(dqkv, B * T * row, NAN); /* written, not accumulated */
    K(loom_k_attention_backward(be, &(loom_attention_backward_args){.dqkv = dqkv, .dout = dout, .qkv = qkv, .out = out, .lse = lse, .B = B, .T = T, .H = H, .KV = KV, .hd = hd, .bf16_products = bf16}));
    /* dq, dk, dv: sums over up to T (x group) terms of products of O(1) values, with p recomputed as
     * exp(s - lse) from float s and lse (relative error ~ ulp(|s|+|lse|) ~ 1e-6): 2e-5 absolute. */
    snprintf(name, sizeof name, "%s_backward_dqkv_%s", form, shape);
    check_close(name, dqkv, dqkvr, B * T * row, bf16 ? bf16_grad_tol(T) : 2e-5, 1e-4);
    if (bf16) { /* the same inputs through the fp32 products */
        float *out32 = fvec(B * T * C), *lse32 = fvec(B * H * T), *dqkv32 = fvec(B * T * row);
        K(loom_k_attention_forward(be, &(loom_attention_forward_args){.out = out32, .lse = lse32, .qkv = qkv, .B = B, .T = T, .H = H, .KV = KV, .hd = hd}));
        K(loom_k_attention_backward(be, &(loom_attention_backward_args){.dqkv = dqkv32, .dout = dout, .qkv = qkv, .out = out32, .lse = lse32, .B = B, .T = T, .H = H, .KV = KV, .hd = hd}));
        const int differ = memcmp(out, out32, (size_t)(B * T * C) * sizeof(float)) != 0 &&
                           memcmp(dqkv, dqkv32, (size_t)(B * T * row) * sizeof(float)) != 0;
#if defined(__AVX512BF16__)
        const int want = T > 1; /* one position: p = 1 exactly, nothing to round */
#else
        const int want = 0;
#endif
        snprintf(name, sizeof name, "attention_bf16_products_%s_%s", want ? "used" : "not_used", shape);
        report(name, differ == want, differ, want);
        free(out32); free(lse32); free(dqkv32);
    }
    free(qkv); free(out); free(lse); free(dout); free(dqkv); free(outr); free(lser); free(dqkvr);
}

/* Ring attention's pieces against the whole sequence's reference: the second half's queries against their own
 * keys (causal) and the first half's (all visible), merged, give the second half's rows of causal attention
 * over all 2T positions; the two backward pieces give its dq and both halves' dk, dv (from those rows). */
static void test_attention_blocks(loom_backend *be, int64_t T, int64_t hd, int bf16) {
    const int64_t B = 2, T2 = 2 * T, H = 4, KV = 2, row = (H + 2 * KV) * hd, C = H * hd, kvw = 2 * KV * hd;
    float *qkv = fvec(B * T2 * row), *dout = fvec(B * T2 * C);
    fill(qkv, B * T2 * row, -1.5, 1.5);
    fill(dout, B * T2 * C, -1, 1);
    if (bf16) { /* tolerances as test_attention_case's */
        round_to_bf16(qkv, B * T2 * row);
        round_to_bf16(dout, B * T2 * C);
    }
    const double out_tol = bf16 ? bf16_out_tol() : 5e-6, grad_tol = bf16 ? bf16_grad_tol(T2) : 2e-5;
    for (int64_t b = 0; b < B; b++) /* the first half's rows carry no gradient: only the second half is checked */
        for (int64_t i = 0; i < T * C; i++) dout[b * T2 * C + i] = 0.0f;
    double *outr = dvec(B * T2 * C), *lser = dvec(B * H * T2), *dr = dvec(B * T2 * row);
    ref_attention(qkv, dout, B, T2, H, KV, hd, outr, lser, dr);
    /* the pieces as ring attention lays them out: the second half's q|k|v rows, the first half's k|v packet */
    float *q1 = fvec(B * T * row), *kv0 = fvec(B * T * kvw), *dy1 = fvec(B * T * C);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            memcpy(q1 + (b * T + t) * row, qkv + (b * T2 + T + t) * row, (size_t)row * sizeof(float));
            memcpy(kv0 + (b * T + t) * kvw, qkv + (b * T2 + t) * row + H * hd, (size_t)kvw * sizeof(float));
            memcpy(dy1 + (b * T + t) * C, dout + (b * T2 + T + t) * C, (size_t)C * sizeof(float));
        }
    float *out = fvec(B * T * C), *lse = fvec(B * H * T), *ob = fvec(B * T * C), *lb = fvec(B * H * T);
    K(loom_k_attention_block_forward(be, &(loom_attention_block_forward_args){out, lse, q1, row, q1 + H * hd, row, B, T,
                                                                             T, H, KV, hd, 1, bf16}));
    K(loom_k_attention_block_forward(be, &(loom_attention_block_forward_args){ob, lb, q1, row, kv0, kvw, B, T, T, H, KV,
                                                                             hd, 0, bf16}));
    K(loom_k_attention_merge(be, &(loom_attention_merge_args){out, lse, ob, lb, B, T, H, hd}));
    double *want = dvec(B * T * C), *wl = dvec(B * H * T);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < T * C; i++) want[b * T * C + i] = outr[(b * T2 + T) * C + i];
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) wl[(b * H + h) * T + t] = lser[(b * H + h) * T2 + T + t];
    }
    /* as the whole attention's out and lse (attention_forward's tolerances), through one more merge */
    char name[128];
    const char *form = bf16 ? "attention_bf16" : "attention";
    snprintf(name, sizeof name, "%s_block_forward_merge_out_equals_causal_rows_T%lld", form, (long long)T);
    check_close(name, out, want, B * T * C, out_tol, 1e-5);
    snprintf(name, sizeof name, "%s_block_forward_merge_lse_T%lld", form, (long long)T);
    check_close(name, lse, wl, B * H * T, 5e-6, 2e-6);
    float *dq = fvec(B * T * row), *dkv0 = fvec(B * T * kvw);
    fill_value(dq, B * T * row, 0.0f);
    fill_value(dkv0, B * T * kvw, 0.0f);
    K(loom_k_attention_block_backward(be, &(loom_attention_block_backward_args){dq, dq + H * hd, dy1, q1, row, q1 + H * hd,
                                                                               row, out, lse, B, T, T, H, KV, hd, 1, bf16}));
    K(loom_k_attention_block_backward(be, &(loom_attention_block_backward_args){dq, dkv0, dy1, q1, row, kv0, kvw, out, lse,
                                                                               B, T, T, H, KV, hd, 0, bf16}));
    double *wq = dvec(B * T * row), *wk = dvec(B * T * kvw);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            for (int64_t e = 0; e < row; e++) wq[(b * T + t) * row + e] = dr[(b * T2 + T + t) * row + e];
            for (int64_t e = 0; e < kvw; e++) wk[(b * T + t) * kvw + e] = dr[(b * T2 + t) * row + H * hd + e];
        }
    snprintf(name, sizeof name, "%s_block_backward_dq_dk_dv_second_half_T%lld", form, (long long)T);
    check_close(name, dq, wq, B * T * row, grad_tol, 1e-4);
    snprintf(name, sizeof name, "%s_block_backward_dk_dv_first_half_T%lld", form, (long long)T);
    check_close(name, dkv0, wk, B * T * kvw, grad_tol, 1e-4);
    free(qkv); free(dout); free(outr); free(lser); free(dr); free(q1); free(kv0); free(dy1); free(out); free(lse);
    free(ob); free(lb); free(want); free(wl); free(dq); free(dkv0); free(wq); free(wk);
}

/* One new position against a cache: the last row of the whole causal attention. */
static float bf16_value(uint16_t h); /* below */

static void test_attention_decode(loom_backend *be, int64_t T, int64_t hd, int64_t H, int64_t KV) {
    const int64_t row = (H + 2 * KV) * hd, C = H * hd;
    char name[128];
    float *qkv = fvec(T * row), *out = fvec(C);
    fill(qkv, T * row, -1.5, 1.5);
    double *outr = dvec(T * C), *lser = dvec(H * T);
    ref_attention(qkv, NULL, 1, T, H, KV, hd, outr, lser, NULL);
    /* the cache: keys and values of every position, rows of stride `row` (as the q|k|v rows lie) */
    K(loom_k_attention_decode(be, &(loom_attention_decode_args){.out = out, .q = qkv + (T - 1) * row, .k = qkv + H * hd,
                                                               .v = qkv + (H + KV) * hd, .ld = row, .n = T, .H = H, .KV = KV, .hd = hd}));
    snprintf(name, sizeof name, "attention_decode_equals_last_causal_row_T%lld_hd%lld_H%lld_KV%lld", (long long)T,
             (long long)hd, (long long)H, (long long)KV);
    check_close(name, out, outr + (T - 1) * C, C, 5e-6, 1e-5);
    /* paged: the k|v rows scattered over blocks of 4 in a shuffled order; the last 5 positions as causal
     * query rows equal the full causal attention's last 5 rows */
    const int64_t bl = 4, nb = (T + bl - 1) / bl, kvw2 = 2 * KV * hd, rows = 5;
    int32_t *table = malloc((size_t)nb * sizeof(int32_t));
    for (int64_t i = 0; i < nb; i++) table[i] = (int32_t)((i * 7 + 3) % nb); /* a permutation: nb is not a multiple of 7 */
    float *pool = fvec(nb * bl * kvw2), *outs = fvec(rows * C), *alone = fvec(C);
    for (int64_t j = 0; j < T; j++)
        memcpy(pool + (table[j / bl] * bl + j % bl) * kvw2, qkv + j * row + H * hd, (size_t)kvw2 * sizeof(float));
    loom_attention_decode_args p = {.out = outs, .q = qkv + (T - rows) * row, .k = pool, .v = pool + KV * hd, .ld = kvw2,
                                    .n = T, .H = H, .KV = KV, .hd = hd, .rows = rows, .qs = row, .blocks = table,
                                    .block_len = bl, .block_stride = bl * kvw2};
    K(loom_k_attention_decode(be, &p));
    snprintf(name, sizeof name, "attention_decode_paged_rows_equal_causal_rows_T%lld_hd%lld_H%lld_KV%lld", (long long)T,
             (long long)hd, (long long)H, (long long)KV);
    check_close(name, outs, outr + (T - rows) * C, rows * C, 5e-6, 1e-5);
    /* batch invariance: each of those rows decoded alone, over the positions it sees, gives the same bits */
    for (int pass = 0; pass < 2; pass++) { /* fp32 cache, then bf16 */
        uint16_t *pool16 = NULL;
        if (pass) {
            pool16 = malloc((size_t)(nb * bl * kvw2) * sizeof(uint16_t));
            for (int64_t i = 0; i < nb * bl * kvw2; i++) pool16[i] = loom_f32_to_bf16(pool[i]);
            p.k = p.v = NULL;
            p.k16 = pool16, p.v16 = pool16 + KV * hd;
            K(loom_k_attention_decode(be, &p));
        }
        int same = 1;
        for (int64_t r = 0; r < rows; r++) {
            loom_attention_decode_args one = p;
            one.out = alone, one.q = p.q + r * row, one.rows = 1, one.n = T - rows + r + 1;
            K(loom_k_attention_decode(be, &one));
            same &= memcmp(alone, outs + r * C, (size_t)C * sizeof(float)) == 0;
        }
        snprintf(name, sizeof name, "attention_decode_%s_rows_alone_same_bits_T%lld_hd%lld_H%lld_KV%lld",
                 pass ? "bf16" : "f32", (long long)T, (long long)hd, (long long)H, (long long)KV);
        report(name, same, 0.0, 0.0);
        /* a serving step's batch: those rows as one call, and the first and the last row as calls of their own,
         * together (their work split over the threads as one list): each call's bits as it gives alone */
        float *batch_out[3] = {fvec(rows * C), fvec(C), fvec(C)}, *first = fvec(C);
        loom_attention_decode_args calls[3] = {p, p, p};
        calls[0].out = batch_out[0];
        calls[1].out = batch_out[1], calls[1].rows = 1, calls[1].n = T - rows + 1;
        calls[2].out = batch_out[2], calls[2].q = p.q + (rows - 1) * row, calls[2].rows = 1;
        K(loom_k_attention_decode_batch(be, &(loom_attention_decode_batch_args){calls, 3}));
        loom_attention_decode_args call1 = calls[1];
        call1.out = first;
        K(loom_k_attention_decode(be, &call1));
        const int batch_same = memcmp(batch_out[0], outs, (size_t)(rows * C) * sizeof(float)) == 0 &&
                               memcmp(batch_out[1], first, (size_t)C * sizeof(float)) == 0 &&
                               memcmp(batch_out[2], alone, (size_t)C * sizeof(float)) == 0; /* the last row alone, above */
        snprintf(name, sizeof name, "attention_decode_%s_batch_same_bits_T%lld_hd%lld_H%lld_KV%lld",
                 pass ? "bf16" : "f32", (long long)T, (long long)hd, (long long)H, (long long)KV);
        report(name, batch_same, 0.0, 0.0);
        for (int i = 0; i < 3; i++) free(batch_out[i]);
        free(first);
        if (!pass) continue;
        /* a bf16 cache: equal to the causal attention over keys and values rounded to bf16 */
        float *qkv16 = fvec(T * row);
        memcpy(qkv16, qkv, (size_t)(T * row) * sizeof(float));
        for (int64_t j = 0; j < T; j++)
            for (int64_t i = H * hd; i < row; i++) qkv16[j * row + i] = bf16_value(loom_f32_to_bf16(qkv[j * row + i]));
        double *outr16 = dvec(T * C), *lser16 = dvec(H * T);
        ref_attention(qkv16, NULL, 1, T, H, KV, hd, outr16, lser16, NULL);
        snprintf(name, sizeof name, "attention_decode_bf16_cache_equals_causal_rows_on_rounded_kv_T%lld_hd%lld_H%lld_KV%lld",
                 (long long)T, (long long)hd, (long long)H, (long long)KV);
        check_close(name, outs, outr16 + (T - rows) * C, rows * C, 5e-6, 1e-5);
        free(pool16); free(qkv16); free(outr16); free(lser16);
    }
    free(table); free(pool); free(outs); free(alone);
    free(qkv); free(out); free(outr); free(lser);
}

static void test_attention(loom_backend *be) {
    test_attention_decode(be, 23, 10, 6, 3); /* a partial vector of head, a partial group of 16 keys */
    test_attention_decode(be, 70, 80, 6, 3); /* past one group of 4 vectors of head (64 floats) */
    test_attention_decode(be, 37, 16, 10, 2); /* a kv group of 5 query heads: one row's heads in sets of 4 and 1 */
    test_attention_decode(be, 70, 80, 6, 6);  /* no GQA: a lone row's heads by blocks of positions (decode_heads) */
    test_attention_decode(be, 23, 10, 4, 4);  /* the same, a partial vector of head and a partial block */
    for (int bf16 = 0; bf16 < 2; bf16++) { /* fp32 products, then bf16 training's */
        test_attention_blocks(be, 9, 6, bf16);
        test_attention_blocks(be, 70, 32, bf16); /* two query blocks, whole register tiles and 8 x 8 transposes */
        test_attention_case(be, 2, 13, 4, 2, 8, bf16);  /* GQA, group 2 */
        test_attention_case(be, 1, 17, 3, 1, 10, bf16); /* multi-query: one kv head for three query heads */
        test_attention_case(be, 3, 5, 2, 2, 6, bf16);   /* plain multi-head */
        test_attention_case(be, 2, 1, 2, 1, 4, bf16);   /* T = 1: the softmax of a single score */
        /* past one block of queries (64) and one register tile: a ragged last block, head sizes that fill the
         * vectors and one that leaves a partial column strip; odd head size and odd ragged block (bf16 pairs) */
        test_attention_case(be, 1, 150, 4, 2, 24, bf16);
        test_attention_case(be, 2, 80, 2, 2, 64, bf16);
        test_attention_case(be, 1, 99, 2, 1, 7, bf16);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* embedding and loss                                                                                */

static void test_embedding(loom_backend *be) {
    const int64_t B = 2, T = 13, C = 53, V = 101, N = B * T;
    int32_t tok[26];
    for (int64_t i = 0; i < N; i++) tok[i] = (i % 4 == 0) ? (int32_t)(V - 1) : (int32_t)loom_rng_below(&g_rng, 5);
    float *wte = fvec(V * C), *wpe = fvec(T * C), *out = fvec(N * C), *want = fvec(N * C);
    fill(wte, V * C, -1, 1);
    fill(wpe, T * C, -1, 1);
    K(loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = out, .tokens = tok, .wte = wte, .wpe = wpe, .B = B, .T = T, .C = C}));
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) want[i * C + c] = wte[tok[i] * C + c] + wpe[(i % T) * C + c];
    check_bits("embedding_forward_wte_wpe", out, want, N * C); /* a copy and one float add: exact */
    K(loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = out, .tokens = tok, .wte = wte, .B = B, .T = T, .C = C}));
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) want[i * C + c] = wte[tok[i] * C + c];
    check_bits("embedding_forward_wte_only", out, want, N * C);
    uint16_t *wte16 = malloc((size_t)(V * C) * sizeof(uint16_t)); /* a bf16 table: its rows widened exactly */
    for (int64_t i = 0; i < V * C; i++) wte16[i] = loom_f32_to_bf16(wte[i]);
    K(loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = out, .tokens = tok, .wte = wte, .wpe = wpe, .B = B, .T = T, .C = C, .wte16 = wte16}));
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) want[i * C + c] = loom_bf16_to_f32(wte16[tok[i] * C + c]) + wpe[(i % T) * C + c];
    check_bits("embedding_forward_bf16_table", out, want, N * C);
    free(wte16);

    float *dout = fvec(N * C), *dwte = fvec(V * C), *dwpe = fvec(T * C), *dwte0 = fvec(V * C), *dwpe0 = fvec(T * C);
    fill(dout, N * C, -1, 1);
    fill(dwte0, V * C, -1, 1);
    fill(dwpe0, T * C, -1, 1);
    double *rte = dvec(V * C), *rpe = dvec(T * C), *rte1 = dvec(V * C), *rpe1 = dvec(T * C);
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) {
            rte[tok[i] * C + c] += dout[i * C + c];
            rpe[(i % T) * C + c] += dout[i * C + c];
        }
    for (int64_t i = 0; i < V * C; i++) rte1[i] = rte[i] + dwte0[i];
    for (int64_t i = 0; i < T * C; i++) rpe1[i] = rpe[i] + dwpe0[i];
    /* repeated tokens: token V-1 appears 7 times, tokens 0..4 ~4 times each; float sums of <= 8
     * unit-range terms: <= 8 * 2^-24 * 8 ~ 4e-6 worst case */
    fill_value(dwte, V * C, NAN); /* accumulate 0 zeroes first: rows of absent tokens must become 0 */
    fill_value(dwpe, T * C, NAN);
    K(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = dwte, .dwpe = dwpe, .dout = dout, .tokens = tok, .B = B, .T = T, .C = C, .V = V, .accumulate_wte = 0, .accumulate_wpe = 0}));
    check_close("embedding_backward_dwte_acc0", dwte, rte, V * C, 5e-6, 1e-6);
    check_close("embedding_backward_dwpe_acc0", dwpe, rpe, T * C, 5e-6, 1e-6);
    memcpy(dwte, dwte0, (size_t)(V * C) * sizeof(float));
    memcpy(dwpe, dwpe0, (size_t)(T * C) * sizeof(float));
    K(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = dwte, .dwpe = dwpe, .dout = dout, .tokens = tok, .B = B, .T = T, .C = C, .V = V, .accumulate_wte = 1, .accumulate_wpe = 1}));
    check_close("embedding_backward_dwte_acc1", dwte, rte1, V * C, 5e-6, 1e-6);
    check_close("embedding_backward_dwpe_acc1", dwpe, rpe1, T * C, 5e-6, 1e-6);
    /* mixed flags (the tied GPT-2 path: wte accumulates onto the head's part, wpe is written) */
    memcpy(dwte, dwte0, (size_t)(V * C) * sizeof(float));
    fill_value(dwpe, T * C, NAN);
    K(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = dwte, .dwpe = dwpe, .dout = dout, .tokens = tok, .B = B, .T = T, .C = C, .V = V, .accumulate_wte = 1, .accumulate_wpe = 0}));
    check_close("embedding_backward_dwte_acc1_mixed", dwte, rte1, V * C, 5e-6, 1e-6);
    check_close("embedding_backward_dwpe_acc0_mixed", dwpe, rpe, T * C, 5e-6, 1e-6);
    /* no position table (LLaMA) */
    fill_value(dwte, V * C, NAN);
    K(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = dwte, .dout = dout, .tokens = tok, .B = B, .T = T, .C = C, .V = V, .accumulate_wte = 0, .accumulate_wpe = 0}));
    check_close("embedding_backward_dwte_no_wpe", dwte, rte, V * C, 5e-6, 1e-6);
    free(wte); free(wpe); free(out); free(want); free(dout); free(dwte); free(dwpe); free(dwte0); free(dwpe0);
    free(rte); free(rpe); free(rte1); free(rpe1);
}

static void test_cross_entropy(loom_backend *be) {
    const int64_t N = 37, V = 101;
    const float gs = 1.0f / (float)N;
    float *x0 = fvec(N * V), *x = fvec(N * V), *loss = fvec(N), *loss_nog = fvec(N);
    int32_t tgt[37];
    fill(x0, N * V, -6, 6);
    for (int64_t v = 0; v < V; v++) x0[5 * V + v] += 90.0f; /* a row that overflows expf without the max shift */
    for (int64_t n = 0; n < N; n++) tgt[n] = (int32_t)loom_rng_below(&g_rng, (uint64_t)V);
    tgt[0] = 0;
    tgt[1] = (int32_t)(V - 1);
    tgt[3] = -1;
    tgt[20] = -1;
    double *lr = dvec(N), *gr = dvec(N * V);
    for (int64_t n = 0; n < N; n++) {
        const float *r = x0 + n * V;
        double mx = -INFINITY, s = 0;
        for (int64_t v = 0; v < V; v++) mx = r[v] > mx ? r[v] : mx;
        for (int64_t v = 0; v < V; v++) s += exp(r[v] - mx);
        double lse = mx + log(s);
        if (tgt[n] < 0) continue; /* loss 0, gradient row 0 */
        lr[n] = lse - r[tgt[n]];
        for (int64_t v = 0; v < V; v++) gr[n * V + v] = gs * (exp(r[v] - mx) / s - (v == tgt[n] ? 1.0 : 0.0));
    }
    memcpy(x, x0, (size_t)(N * V) * sizeof(float));
    K(loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = x, .losses = loss, .targets = tgt, .N = N, .V = V, .grad_scale = gs}));
    /* loss = (max + log sum) - x[t]: a difference of numbers as large as the row maximum (~96 in the
     * shifted row), so a few ulp of 96 (7.6e-6 each) absolute. */
    check_close("softmax_cross_entropy_loss", loss, lr, N, 3e-5, 1e-6);
    /* gradient gs*(p - onehot): p to a few ulp relative (expf ~1 ulp, one division); the target
     * entry p*gs - gs rounds at ulp(gs) ~ 2e-9. */
    check_close("softmax_cross_entropy_grad", x, gr, N * V, 1e-8, 1e-5);
    /* ignored targets: loss exactly 0 and gradient row exactly 0 */
    float zrow[2 * 101], grow[2 * 101];
    memset(zrow, 0, sizeof zrow);
    memcpy(grow, x + 3 * V, (size_t)V * sizeof(float));
    memcpy(grow + V, x + 20 * V, (size_t)V * sizeof(float));
    check_bits("softmax_cross_entropy_ignored_target_grad_zero", grow, zrow, 2 * V);
    float lz[2] = {loss[3], loss[20]};
    check_bits("softmax_cross_entropy_ignored_target_loss_zero", lz, zrow, 2);
    /* grad_scale 0: losses only, logits left as they were */
    memcpy(x, x0, (size_t)(N * V) * sizeof(float));
    K(loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = x, .losses = loss_nog, .targets = tgt, .N = N, .V = V, .grad_scale = 0.0f}));
    check_bits("softmax_cross_entropy_no_grad_logits_untouched", x, x0, N * V);
    check_bits("softmax_cross_entropy_no_grad_same_losses", loss_nog, loss, N);
    /* the gradient into bf16: exactly the fp32 gradient's rounding (ignored rows zero) and the same losses (the
     * logits are the kernel's scratch then) */
    float *loss16 = fvec(N);
    uint16_t *g16 = malloc((size_t)(N * V) * sizeof(uint16_t));
    K(loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = x, .losses = loss16, .targets = tgt, .N = N, .V = V, .grad_scale = gs, .grad16 = g16}));
    check_bits("softmax_cross_entropy_bf16_grad_same_losses", loss16, loss, N);
    memcpy(x, x0, (size_t)(N * V) * sizeof(float));
    K(loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = x, .losses = loss16, .targets = tgt, .N = N, .V = V, .grad_scale = gs}));
    check_bf16_of("softmax_cross_entropy_bf16_grad_is_rounded_grad", g16, x, N * V);
    free(loss16);
    free(g16);
    /* vocabulary-parallel: the columns cut in two ranges (as two tp ranks hold them), the reductions between the
     * passes done here; losses and gradients as the fused kernel's reference */
    const int64_t V1 = 40;
    float *xa = fvec(N * V1), *xb = fvec(N * (V - V1)), *mxa = fvec(N), *mxb = fvec(N), *sa = fvec(2 * N), *sb = fvec(2 * N),
          *la = fvec(N), *lb = fvec(N);
    for (int64_t n = 0; n < N; n++) {
        memcpy(xa + n * V1, x0 + n * V, (size_t)V1 * sizeof(float));
        memcpy(xb + n * (V - V1), x0 + n * V + V1, (size_t)(V - V1) * sizeof(float));
    }
    K(loom_k_ce_row_max(be, &(loom_ce_row_max_args){.logits = xa, .N = N, .V = V1, .mx = mxa}));
    K(loom_k_ce_row_max(be, &(loom_ce_row_max_args){.logits = xb, .N = N, .V = V - V1, .mx = mxb}));
    for (int64_t n = 0; n < N; n++) mxa[n] = mxb[n] = mxa[n] > mxb[n] ? mxa[n] : mxb[n]; /* all-reduce max */
    K(loom_k_ce_row_sums(be, &(loom_ce_row_sums_args){.logits = xa, .targets = tgt, .N = N, .V = V1, .v0 = 0, .mx = mxa,
                                                      .sums = sa}));
    K(loom_k_ce_row_sums(be, &(loom_ce_row_sums_args){.logits = xb, .targets = tgt, .N = N, .V = V - V1, .v0 = V1,
                                                      .mx = mxb, .sums = sb}));
    float *local_sums[2] = {fvec(2 * N), fvec(2 * N)};
    memcpy(local_sums[0], sa, (size_t)(2 * N) * sizeof(float));
    memcpy(local_sums[1], sb, (size_t)(2 * N) * sizeof(float));
    for (int64_t i = 0; i < 2 * N; i++) sa[i] = sb[i] = sa[i] + sb[i]; /* all-reduce sum */
    /* into bf16 (on a copy: the logits are then undefined): the fp32 gradient's rounding, the same losses */
    const int64_t Vr[2] = {V1, V - V1}, v0r[2] = {0, V1};
    float *xr[2] = {xa, xb}, *mxr[2] = {mxa, mxb}, *sr[2] = {sa, sb}, *lr2[2] = {la, lb};
    for (int k = 0; k < 2; k++) {
        const int64_t n = N * Vr[k];
        uint16_t *g16r = malloc((size_t)n * sizeof(uint16_t)), *gk16 = malloc((size_t)n * sizeof(uint16_t));
        float *scratch = fvec(n), *l16 = fvec(N), *xk = fvec(n), *mk = fvec(N), *sk = fvec(2 * N), *lk = fvec(N), *lk16 = fvec(N);
        memcpy(scratch, xr[k], (size_t)n * sizeof(float));
        memcpy(xk, xr[k], (size_t)n * sizeof(float)); /* the raw logits, for keep_exps below */
        K(loom_k_ce_finish(be, &(loom_ce_finish_args){scratch, l16, tgt, N, Vr[k], v0r[k], mxr[k], sr[k], gs, g16r, 0}));
        K(loom_k_ce_finish(be, &(loom_ce_finish_args){xr[k], lr2[k], tgt, N, Vr[k], v0r[k], mxr[k], sr[k], gs, NULL, 0}));
        char name[96];
        snprintf(name, sizeof name, "ce_vocab_parallel_bf16_same_losses_rank%d", k);
        check_bits(name, l16, lr2[k], N);
        snprintf(name, sizeof name, "ce_vocab_parallel_bf16_grad_is_rounded_grad_rank%d", k);
        check_bf16_of(name, g16r, xr[k], n);
        /* keep_exps (training): row_sums leaves the exponentials, finish scales them; bf16 first (the logits
         * stay), then fp32: the same sums, losses and gradients, bit for bit */
        memcpy(mk, mxr[k], (size_t)N * sizeof(float));
        K(loom_k_ce_row_sums(be, &(loom_ce_row_sums_args){.logits = xk, .targets = tgt, .N = N, .V = Vr[k], .v0 = v0r[k],
                                                          .mx = mk, .sums = sk, .keep_exps = 1}));
        snprintf(name, sizeof name, "ce_vocab_parallel_keep_exps_sums_rank%d", k);
        check_bits(name, sk, local_sums[k], 2 * N);
        memcpy(sk, sr[k], (size_t)(2 * N) * sizeof(float)); /* the other rank's part, all-reduced as above */
        K(loom_k_ce_finish(be, &(loom_ce_finish_args){.logits = xk, .losses = lk16, .targets = tgt, .N = N, .V = Vr[k],
                                                      .v0 = v0r[k], .mx = mk, .sums = sk, .grad_scale = gs, .grad16 = gk16,
                                                      .keep_exps = 1}));
        K(loom_k_ce_finish(be, &(loom_ce_finish_args){.logits = xk, .losses = lk, .targets = tgt, .N = N, .V = Vr[k],
                                                      .v0 = v0r[k], .mx = mk, .sums = sk, .grad_scale = gs,
                                                      .keep_exps = 1}));
        snprintf(name, sizeof name, "ce_vocab_parallel_keep_exps_losses_rank%d", k);
        check_bits(name, lk, lr2[k], N);
        snprintf(name, sizeof name, "ce_vocab_parallel_keep_exps_grad_rank%d", k);
        check_bits(name, xk, xr[k], n);
        snprintf(name, sizeof name, "ce_vocab_parallel_keep_exps_bf16_rank%d", k);
        report(name, memcmp(gk16, g16r, (size_t)n * sizeof(uint16_t)) == 0, 0, 0);
        snprintf(name, sizeof name, "ce_vocab_parallel_keep_exps_bf16_losses_rank%d", k);
        check_bits(name, lk16, lr2[k], N);
        free(g16r); free(gk16); free(scratch); free(l16); free(xk); free(mk); free(sk); free(lk); free(lk16);
        free(local_sums[k]);
    }
    double *ga = dvec(N * V1), *gb = dvec(N * (V - V1));
    for (int64_t n = 0; n < N; n++)
        for (int64_t v = 0; v < V; v++) *(v < V1 ? &ga[n * V1 + v] : &gb[n * (V - V1) + v - V1]) = gr[n * V + v];
    check_close("ce_vocab_parallel_loss_rank0", la, lr, N, 3e-5, 1e-6);
    check_close("ce_vocab_parallel_loss_rank1", lb, lr, N, 3e-5, 1e-6);
    check_close("ce_vocab_parallel_grad_rank0", xa, ga, N * V1, 1e-8, 1e-5);
    check_close("ce_vocab_parallel_grad_rank1", xb, gb, N * (V - V1), 1e-8, 1e-5);
    free(xa); free(xb); free(mxa); free(mxb); free(sa); free(sb); free(la); free(lb); free(ga); free(gb);
    free(x0); free(x); free(loss); free(loss_nog); free(lr); free(gr);
}

/* Two independent products at once equal each alone (to the matmul tolerance), and fp16 rounding equals the
 * software conversion in src/core/tensor.c; copies and fills are exact. */
static void test_pair_round_copy(loom_backend *be) {
    const int64_t M = 37, N = 29, Kd = 43;
    float *A = fvec(M * Kd), *B = fvec(Kd * N), *C1 = fvec(M * N), *A2 = fvec(Kd * M), *B2 = fvec(Kd * N), *C2 = fvec(M * N);
    fill(A, M * Kd, -1, 1); fill(B, Kd * N, -1, 1); fill(A2, Kd * M, -1, 1); fill(B2, Kd * N, -1, 1);
    fill(C2, M * N, -1, 1);
    double *r1 = dvec(M * N), *r2 = dvec(M * N);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double a = 0, b = 0;
            for (int64_t k = 0; k < Kd; k++) {
                a += (double)A[i * Kd + k] * B[k * N + j];
                b += (double)A2[k * M + i] * B2[k * N + j]; /* op(A2) = A2^T */
            }
            r1[i * N + j] = a;
            r2[i * N + j] = b + 0.5 * C2[i * N + j];
        }
    K(loom_k_matmul_pair(be, &(loom_matmul_pair_args){{0, 0, M, N, Kd, 1.0f, A, Kd, B, N, 0.0f, C1, N},
                                                      {1, 0, M, N, Kd, 1.0f, A2, M, B2, N, 0.5f, C2, N}}));
    check_close("matmul_pair_first", C1, r1, M * N, 1e-5, 1e-5);
    check_close("matmul_pair_second_transposed_beta", C2, r2, M * N, 1e-5, 1e-5);
    const int64_t rows = 7, cols = 33, ld = 40;
    float *x = fvec(rows * ld), *y = fvec(rows * ld), *want = fvec(rows * ld);
    fill(x, rows * ld, -70000, 70000);
    for (int64_t i = 0; i < 12; i++) x[i] *= 1e-9f; /* subnormal and underflowing halves too */
    fill_value(y, rows * ld, -1.0f);
    memcpy(want, y, (size_t)(rows * ld) * sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) want[i * ld + j] = loom_f16_to_f32(loom_f32_to_f16(x[i * ld + j]));
    K(loom_k_round_fp16(be, &(loom_round_fp16_args){y, ld, x, ld, rows, cols}));
    check_bits("round_fp16_equals_software_half_conversion", y, want, rows * ld);
    memcpy(y, x, (size_t)(rows * ld) * sizeof(float)); /* bf16, in place (the columns past cols untouched) */
    memcpy(want, x, (size_t)(rows * ld) * sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) want[i * ld + j] = loom_bf16_to_f32(loom_f32_to_bf16(x[i * ld + j]));
    K(loom_k_round_bf16(be, &(loom_round_bf16_args){y, ld, y, ld, rows, cols}));
    check_bits("round_bf16_equals_software_bf16_conversion", y, want, rows * ld);
    K(loom_k_copy_rows(be, &(loom_copy_rows_args){y, ld, x, ld, rows, cols, 0}));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) want[i * ld + j] = x[i * ld + j];
    check_bits("copy_rows", y, want, rows * ld);
    K(loom_k_copy_rows(be, &(loom_copy_rows_args){y, ld, x, ld, rows, cols, 1}));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) want[i * ld + j] = x[i * ld + j] + x[i * ld + j];
    check_bits("copy_rows_accumulate", y, want, rows * ld);
    K(loom_k_fill(be, &(loom_fill_args){y + 3, 2.5f, 11}));
    for (int64_t i = 3; i < 14; i++) want[i] = 2.5f;
    check_bits("fill", y, want, rows * ld);
    K(loom_k_copy(be, &(loom_copy_args){y, x, (int64_t)(rows * ld * sizeof(float)), LOOM_COPY_D2D}));
    check_bits("copy", y, x, rows * ld);
    free(A); free(B); free(C1); free(A2); free(B2); free(C2); free(r1); free(r2); free(x); free(y); free(want);
}

/* ------------------------------------------------------------------------------------------------ */
/* sum of squares and optimizers                                                                     */

/* bf16 GEMM (oneDNN or the reference): against a double-precision product of the same bf16 values; the only
 * difference is fp32 accumulation order. Also the fp32 -> bf16 rounding itself. */
static float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* operands and result inside wider matrices (leading dimensions past their widths), as the model's pieces of
 * the head are: every layout a product's B is packed from (oneDNN) must read the strides, and C's other
 * columns stay as they were */
static void test_matmul_bf16_strided(loom_backend *be) {
    const int64_t M = 2050, N = 45, K = 70; /* M past dnnl.c's BF16_PACK_MIN_ROWS: B packed where A is plain */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int64_t lda = (ta ? M : K) + 5, ldb = (tb ? K : N) + 3, ldc = N + 2;
            const int64_t ra = ta ? K : M, rb = tb ? N : K;
            uint16_t *a16 = malloc((size_t)(ra * lda) * 2), *b16 = malloc((size_t)(rb * ldb) * 2);
            float *a = fvec(ra * lda), *b = fvec(rb * ldb), *c = fvec(M * ldc), *c0 = fvec(M * ldc);
            double *ref = dvec(M * ldc);
            fill(a, ra * lda, -1, 1);
            fill(b, rb * ldb, -1, 1);
            fill(c, M * ldc, -1, 1);
            memcpy(c0, c, (size_t)(M * ldc) * sizeof(float));
            K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = a16, .src = a, .n = ra * lda}));
            K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = b16, .src = b, .n = rb * ldb}));
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < ldc; j++) {
                    double acc = 0.0;
                    for (int64_t k = 0; j < N && k < K; k++)
                        acc += (double)bf16_value(a16[ta ? k * lda + i : i * lda + k]) *
                               (double)bf16_value(b16[tb ? j * ldb + k : k * ldb + j]);
                    ref[i * ldc + j] = j < N ? 0.5 * acc + (double)c0[i * ldc + j] : (double)c0[i * ldc + j];
                }
            char name[96];
            snprintf(name, sizeof name, "matmul_bf16 %s%s strided (lda %lld, ldb %lld, ldc %lld)", ta ? "T" : "N",
                     tb ? "T" : "N", (long long)lda, (long long)ldb, (long long)ldc);
            if (loom_k_matmul_bf16(be, &(loom_matmul_bf16_args){.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K, .alpha = 0.5f, .A = a16, .lda = lda, .B = b16, .ldb = ldb, .beta = 1.0f, .C = c, .ldc = ldc}) != LOOM_OK)
                report(name, 0, 0, 0);
            else
                check_close(name, c, ref, M * ldc, 1e-5, 1e-5);
            free(a); free(b); free(c); free(c0); free(ref); free(a16); free(b16);
        }
}

static void test_matmul_bf16(loom_backend *be) {
    const float probe[6] = {1.0f, 1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f, -2.5f, 3.0e38f, NAN};
    const float want[6] = {1.0f, 1.0f, 1.0f + 4.0f / 256.0f, -2.5f, 3.00405527e38f, NAN}; /* ties to even */
    uint16_t h[6];
    K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = h, .src = probe, .n = 6}));
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= bf16_value(h[i]) == want[i];
    ok &= isnan(bf16_value(h[5]));
    report("f32_to_bf16 rounding (nearest, ties to even; NaN kept)", ok, 0, 0);
    /* a small product, one row and 13 rows (NT: the few-rows kernel where the CPU has AVX512_BF16; K = 70 leaves a tail), then
     * one with M and one with K past the backend's piece length (16384: oneDNN runs them in pieces, the K
     * pieces summed into C); fp32 sums of 16500 terms: a looser tolerance */
    /* the last three: op(A) and op(B) past the reference's block of 2^24 floats, which it widens a block at a
     * time: op(A) cut along K (M < K: the pieces summed into C) or along its rows, op(B) along its columns; its
     * copies, checked after the first, stay within a block and a small operand */
    const int64_t shapes[9][3] = {{37, 45, 70}, {1, 45, 70}, {16500, 9, 20},  {5, 7, 16500},  {13, 45, 70},
                                  {8, 8, 64},   {4100, 5, 8200}, {8200, 5, 4100}, {5, 4100, 8200}};
    for (int sh = 0; sh < 9; sh++)
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int64_t M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
            const double tol = sh == 2 || sh == 3 || sh >= 6 ? 1e-4 : 1e-5;
            float *a = fvec(M * K), *b = fvec(K * N), *c = fvec(M * N);
            double *ref = dvec(M * N);
            uint16_t *a16 = malloc((size_t)(M * K) * 2), *b16 = malloc((size_t)(K * N) * 2);
            fill(a, M * K, -1, 1);
            fill(b, K * N, -1, 1);
            fill(c, M * N, -1, 1);
            K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = a16, .src = a, .n = M * K}));
            K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = b16, .src = b, .n = K * N}));
            const int64_t lda = ta ? M : K, ldb = tb ? K : N;
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double acc = 0.0;
                    for (int64_t k = 0; k < K; k++)
                        acc += (double)bf16_value(a16[ta ? k * lda + i : i * lda + k]) *
                               (double)bf16_value(b16[tb ? j * ldb + k : k * ldb + j]);
                    ref[i * N + j] = 0.5 * acc + 1.0 * (double)c[i * N + j];
                }
            char name[96];
            snprintf(name, sizeof name, "matmul_bf16 %s%s %lldx%lldx%lld (alpha 0.5, beta 1) [%s]", ta ? "T" : "N",
                     tb ? "T" : "N", (long long)M, (long long)N, (long long)K, loom_backend_bf16_kernel(be));
            if (loom_k_matmul_bf16(be, &(loom_matmul_bf16_args){.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K, .alpha = 0.5f, .A = a16, .lda = lda, .B = b16, .ldb = ldb, .beta = 1.0f, .C = c, .ldc = N}) != LOOM_OK)
                report(name, 0, 0, 0);
            else
                check_close(name, c, ref, M * N, tol, tol);
            if (sh == 6 && ta && tb) { /* a block (2^24 floats) and room for the small operands' */
                const size_t own = loom_backend_own_bytes(be), bound = (((size_t)1 << 24) + ((size_t)1 << 22)) * 4;
                report("matmul_bf16 reference copies bounded (none where oneDNN multiplies)", own <= bound, (double)own,
                       (double)bound);
            }
            free(a); free(b); free(c); free(ref); free(a16); free(b16);
        }
}

/* A batch-invariant backend (loom serve --batch-invariant): products against a weight stored [N, K] give each
 * row the same bits alone, in a few rows, or among many (the whole input past several of the kernel's blocks
 * of rows, with rows left over past the last tile), fp32 and bf16 */
static void test_matmul_batch_invariant(void) {
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    bc.batch_invariant = 1;
    loom_backend *be = NULL;
    if (loom_backend_init(&bc, &be) != LOOM_OK) { /* no AVX-512 nor AVX2: refused, as loom serve says */
        printf("# batch-invariant backend refused here: %s\n", loom_error_message());
        return;
    }
    const int64_t M = 150, N = 37, K = 2100, sub0 = 7, subM = 13;
    float *a = fvec(M * K), *b = fvec(N * K), *c = fvec(M * N), *part = fvec(M * N);
    double *ref = dvec(M * N);
    uint16_t *a16 = malloc((size_t)(M * K) * 2), *b16 = malloc((size_t)(N * K) * 2);
    fill(a, M * K, -1, 1);
    fill(b, N * K, -1, 1);
    K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = a16, .src = a, .n = M * K}));
    K(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = b16, .src = b, .n = N * K}));
    for (int bf16 = 0; bf16 < 2; bf16++) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0.0;
                for (int64_t k = 0; k < K; k++)
                    acc += bf16 ? (double)bf16_value(a16[i * K + k]) * bf16_value(b16[j * K + k])
                                : (double)a[i * K + k] * b[j * K + k];
                ref[i * N + j] = acc;
            }
        /* rows [i0, i0 + m) into out at their own rows */
#define PRODUCT(i0, m, out)                                                                                           \
        K(bf16 ? loom_k_matmul_bf16(be, &(loom_matmul_bf16_args){.trans_b = 1, .M = (m), .N = N, .K = K, .alpha = 1.0f,  \
                                                                 .A = a16 + (i0) * K, .lda = K, .B = b16, .ldb = K,     \
                                                                 .beta = beta, .C = (out) + (i0) * N, .ldc = N})        \
               : loom_k_matmul(be, &(loom_gemm){.trans_b = 1, .M = (m), .N = N, .K = K, .alpha = 1.0f,                 \
                                                .A = a + (i0) * K, .lda = K, .B = b, .ldb = K, .beta = beta,           \
                                                .C = (out) + (i0) * N, .ldc = N}))
        float beta = 0.0f;
        PRODUCT(0, M, c);
        char name[96];
        snprintf(name, sizeof name, "matmul_%s_batch_invariant_%lldx%lldx%lld", bf16 ? "bf16" : "f32", (long long)M,
                 (long long)N, (long long)K);
        check_close(name, c, ref, M * N, 1e-4, 1e-4);
        /* beta: every element of C read once and written once, across the kernel's blocks of rows */
        beta = 0.5f;
        fill(part, M * N, -1, 1);
        double *ref_b = dvec(M * N);
        for (int64_t i = 0; i < M * N; i++) ref_b[i] = ref[i] + 0.5 * part[i];
        PRODUCT(0, M, part);
        snprintf(name, sizeof name, "matmul_%s_batch_invariant_beta_half", bf16 ? "bf16" : "f32");
        check_close(name, part, ref_b, M * N, 1e-4, 1e-4);
        free(ref_b);
        beta = 0.0f;
        int same = 1;
        for (int64_t i = 0; i < M; i++) PRODUCT(i, 1, part);
        same &= memcmp(part, c, (size_t)(M * N) * sizeof(float)) == 0;
        PRODUCT(sub0, subM, part);
        same &= memcmp(part + sub0 * N, c + sub0 * N, (size_t)(subM * N) * sizeof(float)) == 0;
#undef PRODUCT
        snprintf(name, sizeof name, "matmul_%s_batch_invariant_rows_alone_and_in_13_same_bits", bf16 ? "bf16" : "f32");
        report(name, same, 0, 0);
    }
    free(a); free(b); free(c); free(part); free(ref); free(a16); free(b16);
    loom_backend_free(&be);
}

static void test_sum_squares(loom_backend *be) {
    const int64_t n = 100003;
    float *x = fvec(n);
    fill(x, n, -1, 1);
    long double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += (long double)x[i] * x[i];
    /* float squares are exact in double; summing 1e5 positive doubles: <= n * 2^-53 ~ 1.1e-11 relative */
    check_scalar("sum_squares_n100003", sum_squares(be, x, n), (double)ref, 0.0, 1.2e-11);
    long double r37 = 0;
    for (int64_t i = 0; i < 37; i++) r37 += (long double)x[i] * x[i];
    check_scalar("sum_squares_n37", sum_squares(be, x, 37), (double)r37, 0.0, 1e-15);
    check_scalar("sum_squares_n0", sum_squares(be, x, 0), 0.0, 0.0, 0.0);
    free(x);
}

static void test_adamw(loom_backend *be, int64_t n) {
    float *p = fvec(n), *g = fvec(n), *m = fvec(n), *v = fvec(n), *p0 = fvec(n), *m0 = fvec(n), *v0 = fvec(n);
    fill(p0, n, -1, 1);
    fill(g, n, -1, 1);
    fill(m0, n, -0.1, 0.1);
    fill(v0, n, 1e-4, 1e-2);
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    const int t = 3;
    const float bc1 = (float)(1.0 - pow(b1, t)), bc2 = (float)(1.0 - pow(b2, t));
    memcpy(p, p0, (size_t)n * sizeof(float));
    memcpy(m, m0, (size_t)n * sizeof(float));
    memcpy(v, v0, (size_t)n * sizeof(float));
    K(loom_k_adamw(be, &(loom_adamw_args){.p = p, .g = g, .m = m, .v = v, .n = n, .lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .grad_scale = gs}));
    double *pr = dvec(n), *mr = dvec(n), *vr = dvec(n);
    /* torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= (lr/bc1) m / (sqrt(v)/sqrt(bc2) + eps) */
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)g[i] * gs;
        double mi = (double)b1 * m0[i] + (1.0 - (double)b1) * gi;
        double vi = (double)b2 * v0[i] + (1.0 - (double)b2) * gi * gi;
        double pi = (double)p0[i] * (1.0 - (double)lr * wd);
        mr[i] = mi;
        vr[i] = vi;
        pr[i] = pi - ((double)lr / bc1) * mi / (sqrt(vi) / sqrt((double)bc2) + eps);
    }
    /* each result is a handful of float operations on O(1) (p), O(0.1) (m), O(1e-2) (v) values: a few
     * ulp relative. m = b1 m + (1-b1) g cancels when its two terms (each up to ~0.1) have opposite
     * signs, so its error is a few ulp of the terms (ulp(0.1) = 7.5e-9), not of the result: atol 3e-8.
     * v's terms are both positive (no cancellation); p's floor is below ulp(1). */
    check_close("adamw_p", p, pr, n, 1e-7, 1e-6);
    check_close("adamw_m", m, mr, n, 3e-8, 1e-6);
    check_close("adamw_v", v, vr, n, 1e-11, 1e-6);
    /* the fused bf16 copy: the same update bit for bit, and the copy is exactly the updated weights rounded */
    float *pf = fvec(n), *mf = fvec(n), *vf = fvec(n);
    uint16_t *p16 = malloc((size_t)n * sizeof(uint16_t));
    memcpy(pf, p0, (size_t)n * sizeof(float));
    memcpy(mf, m0, (size_t)n * sizeof(float));
    memcpy(vf, v0, (size_t)n * sizeof(float));
    K(loom_k_adamw(be, &(loom_adamw_args){.p = pf, .g = g, .m = mf, .v = vf, .n = n, .lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .grad_scale = gs, .p16 = p16}));
    check_bits("adamw_bf16_copy_same_p", pf, p, n);
    check_bits("adamw_bf16_copy_same_m", mf, m, n);
    check_bits("adamw_bf16_copy_same_v", vf, v, n);
    check_bf16_of("adamw_bf16_copy_is_rounded_p", p16, p, n);
    free(pf); free(mf); free(vf); free(p16);
    free(p); free(g); free(m); free(v); free(p0); free(m0); free(v0); free(pr); free(mr); free(vr);
}

static void test_lamb(loom_backend *be, int64_t n) {
    float *p = fvec(n), *g = fvec(n), *m = fvec(n), *v = fvec(n), *m0 = fvec(n), *v0 = fvec(n);
    fill(p, n, -1, 1);
    fill(g, n, -1, 1);
    fill(m0, n, -0.1, 0.1);
    fill(v0, n, 1e-4, 1e-2);
    memcpy(m, m0, (size_t)n * sizeof(float));
    memcpy(v, v0, (size_t)n * sizeof(float));
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-6f, wd = 0.01f, gs = 2.0f, step = 0.0123f;
    const float bc1 = (float)(1.0 - pow(b1, 5)), bc2 = (float)(1.0 - pow(b2, 5));
    double sq = lamb_moments(be, p, g, m, v, n, b1, b2, eps, wd, bc1, bc2, gs);
    double *pr = dvec(n), *mr = dvec(n), *vr = dvec(n), sqr = 0;
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)g[i] * gs;
        mr[i] = (double)b1 * m0[i] + (1.0 - (double)b1) * gi;
        vr[i] = (double)b2 * v0[i] + (1.0 - (double)b2) * gi * gi;
        double r = (mr[i] / bc1) / (sqrt(vr[i] / bc2) + eps) + (double)wd * p[i];
        sqr += r * r;
        pr[i] = p[i] - (double)step * r;
    }
    /* as AdamW: m's terms (up to ~0.2 here, gs = 2) may cancel, so a few ulp(0.2) = 1.5e-8 absolute */
    check_close("lamb_moments_m", m, mr, n, 5e-8, 1e-6);
    check_close("lamb_moments_v", v, vr, n, 1e-11, 1e-6);
    /* sum of n squares of float r, each a few ulp (~5e-7) off: the total is within ~1e-6 relative */
    check_scalar("lamb_moments_sq_norm", sq, sqr, 0.0, 2e-6);
    float *pf = fvec(n);
    uint16_t *p16 = malloc((size_t)n * sizeof(uint16_t));
    memcpy(pf, p, (size_t)n * sizeof(float));
    K(loom_k_lamb_apply(be, &(loom_lamb_apply_args){.p = p, .m = m, .v = v, .n = n, .eps = eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .step = step}));
    check_close("lamb_apply_p", p, pr, n, 1e-7, 1e-6);
    /* the fused bf16 copy: the same update bit for bit, and the copy is exactly the updated weights rounded */
    K(loom_k_lamb_apply(be, &(loom_lamb_apply_args){.p = pf, .m = m, .v = v, .n = n, .eps = eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .step = step, .p16 = p16}));
    check_bits("lamb_apply_bf16_copy_same_p", pf, p, n);
    check_bf16_of("lamb_apply_bf16_copy_is_rounded_p", p16, p, n);
    free(pf); free(p16);
    free(p); free(g); free(m); free(v); free(m0); free(v0); free(pr); free(mr); free(vr);
}

static void test_sgd(loom_backend *be, int64_t n) {
    float *p = fvec(n), *g = fvec(n), *buf = fvec(n), *p0 = fvec(n), *b0 = fvec(n), *pf = fvec(n), *buff = fvec(n);
    uint16_t *p16 = malloc((size_t)n * sizeof(uint16_t));
    fill(p0, n, -1, 1);
    fill(g, n, -1, 1);
    fill(b0, n, -0.5, 0.5);
    const float lr = 0.05f, wd = 0.01f, gs = 0.25f;
    double *pr = dvec(n), *br = dvec(n);
    static const struct { float momentum; int nesterov, first; } cases[] = {
        {0.9f, 0, 0}, {0.9f, 1, 0}, {0.9f, 0, 1}, {0.9f, 1, 1}, {0.0f, 0, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const float mom = cases[c].momentum;
        memcpy(p, p0, (size_t)n * sizeof(float));
        memcpy(buf, b0, (size_t)n * sizeof(float));
        if (cases[c].first) fill_value(buf, n, NAN); /* the first step must not read the buffer */
        K(loom_k_sgd(be, &(loom_sgd_args){.p = p, .g = g, .buf = buf, .n = n, .lr = lr, .momentum = mom, .nesterov = cases[c].nesterov, .weight_decay = wd, .grad_scale = gs, .first_step = cases[c].first}));
        /* torch.optim.SGD (dampening 0): d = g + wd p; buf = first ? d : mom buf + d;
         * d = nesterov ? d + mom buf : buf; p -= lr d */
        for (int64_t i = 0; i < n; i++) {
            double d = (double)g[i] * gs + (double)wd * p0[i];
            if (mom != 0.0f) {
                double b = cases[c].first ? d : (double)mom * b0[i] + d;
                br[i] = b;
                d = cases[c].nesterov ? d + (double)mom * b : b;
            }
            pr[i] = p0[i] - (double)lr * d;
        }
        char name[96];
        snprintf(name, sizeof name, "sgd_p_momentum%g_nesterov%d_first%d", (double)mom, cases[c].nesterov,
                 cases[c].first);
        /* three or four float operations: a few ulp of O(1) values */
        check_close(name, p, pr, n, 1e-7, 1e-6);
        if (mom != 0.0f) {
            snprintf(name, sizeof name, "sgd_buf_momentum%g_nesterov%d_first%d", (double)mom, cases[c].nesterov,
                     cases[c].first);
            check_close(name, buf, br, n, 1e-7, 1e-6);
        }
        /* the fused bf16 copy: the same p and buf bit for bit, the copy the rounded p */
        memcpy(pf, p0, (size_t)n * sizeof(float));
        memcpy(buff, b0, (size_t)n * sizeof(float));
        if (cases[c].first) fill_value(buff, n, NAN);
        K(loom_k_sgd(be, &(loom_sgd_args){.p = pf, .g = g, .buf = buff, .n = n, .lr = lr, .momentum = mom, .nesterov = cases[c].nesterov, .weight_decay = wd, .grad_scale = gs, .first_step = cases[c].first, .p16 = p16}));
        snprintf(name, sizeof name, "sgd_bf16_copy_momentum%g_nesterov%d_first%d", (double)mom, cases[c].nesterov,
                 cases[c].first);
        check_bits(name, pf, p, n);
        if (mom != 0.0f) check_bits(name, buff, buf, n);
        check_bf16_of(name, p16, p, n);
    }
    /* LARS: d = g gs + wd p; buf = mom buf + lr_local d; p -= buf */
    const float lrl = 0.037f, mom = 0.9f;
    memcpy(p, p0, (size_t)n * sizeof(float));
    memcpy(buf, b0, (size_t)n * sizeof(float));
    K(loom_k_lars(be, &(loom_lars_args){.p = p, .g = g, .buf = buf, .n = n, .lr = lrl, .momentum = mom, .weight_decay = wd, .grad_scale = gs}));
    for (int64_t i = 0; i < n; i++) {
        double d = (double)g[i] * gs + (double)wd * p0[i];
        br[i] = (double)mom * b0[i] + (double)lrl * d;
        pr[i] = p0[i] - br[i];
    }
    check_close("lars_p", p, pr, n, 1e-7, 1e-6);
    check_close("lars_buf", buf, br, n, 1e-7, 1e-6);
    memcpy(pf, p0, (size_t)n * sizeof(float));
    memcpy(buff, b0, (size_t)n * sizeof(float));
    K(loom_k_lars(be, &(loom_lars_args){.p = pf, .g = g, .buf = buff, .n = n, .lr = lrl, .momentum = mom, .weight_decay = wd, .grad_scale = gs, .p16 = p16}));
    check_bits("lars_bf16_copy_same_p", pf, p, n);
    check_bits("lars_bf16_copy_same_buf", buff, buf, n);
    check_bf16_of("lars_bf16_copy_is_rounded_p", p16, p, n);
    free(p); free(g); free(buf); free(p0); free(b0); free(pr); free(br); free(pf); free(buff); free(p16);
}

/* ------------------------------------------------------------------------------------------------ */
/* thread-count invariance of the reductions that promise it                                         */

typedef struct {
    double ss, lamb;
    float *ln_dx, *ln_dw, *ln_db, *rms_dx, *rms_dw, *bias_db, *dwte, *dwpe, *att_out, *att_lse, *att_dqkv;
} det_out;

enum { DN = 37, DC = 53, DV = 101, DB = 2, DT = 13, DH = 4, DKV = 2, DHD = 8, DSS = 100003 };

static void det_run(loom_backend *be, const float *x, const float *w, const float *b, const float *dy,
                    const float *qkv, const float *big, const int32_t *tok, det_out *o) {
    float mean[DN], rstd[DN], *y = fvec(DN * DC), *m = fvec(DSS), *v = fvec(DSS);
    o->ss = sum_squares(be, big, DSS);
    for (int64_t i = 0; i < DSS; i++) {
        m[i] = 0.01f * big[DSS - 1 - i];
        v[i] = 1e-3f;
    }
    o->lamb = lamb_moments(be, big, big, m, v, DSS, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f, 1.0f);
    K(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = y, .mean = mean, .rstd = rstd, .inp = x, .w = w, .b = b, .N = DN, .C = DC, .eps = 1e-5f}));
    memset(o->ln_dx, 0, DN * DC * sizeof(float));
    K(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = o->ln_dx, .dw = o->ln_dw, .db = o->ln_db, .dout = dy, .inp = x, .w = w, .mean = mean, .rstd = rstd, .N = DN, .C = DC, .accumulate = 0}));
    K(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = y, .rstd = rstd, .inp = x, .w = w, .N = DN, .C = DC, .eps = 1e-5f}));
    memset(o->rms_dx, 0, DN * DC * sizeof(float));
    K(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = o->rms_dx, .dw = o->rms_dw, .dout = dy, .inp = x, .w = w, .rstd = rstd, .N = DN, .C = DC, .accumulate = 0}));
    K(loom_k_bias_backward(be, &(loom_bias_backward_args){.db = o->bias_db, .dout = dy, .N = DN, .C = DC, .accumulate = 0}));
    K(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = o->dwte, .dwpe = o->dwpe, .dout = dy, .tokens = tok, .B = DB, .T = DT, .C = DC, .V = DV, .accumulate_wte = 0, .accumulate_wpe = 0}));
    K(loom_k_attention_forward(be, &(loom_attention_forward_args){.out = o->att_out, .lse = o->att_lse, .qkv = qkv, .B = DB, .T = DT, .H = DH, .KV = DKV, .hd = DHD}));
    K(loom_k_attention_backward(be, &(loom_attention_backward_args){.dqkv = o->att_dqkv, .dout = dy, .qkv = qkv, .out = o->att_out, .lse = o->att_lse, .B = DB, .T = DT, .H = DH, .KV = DKV, .hd = DHD}));
    free(y);
    free(m);
    free(v);
}

static void det_alloc(det_out *o) {
    const int64_t row = (DH + 2 * DKV) * DHD;
    o->ln_dx = fvec(DN * DC); o->ln_dw = fvec(DC); o->ln_db = fvec(DC); o->rms_dx = fvec(DN * DC);
    o->rms_dw = fvec(DC); o->bias_db = fvec(DC); o->dwte = fvec(DV * DC); o->dwpe = fvec(DT * DC);
    o->att_out = fvec(DB * DT * DH * DHD); o->att_lse = fvec(DB * DH * DT); o->att_dqkv = fvec(DB * DT * row);
}
static void det_free(det_out *o) {
    free(o->ln_dx); free(o->ln_dw); free(o->ln_db); free(o->rms_dx); free(o->rms_dw); free(o->bias_db);
    free(o->dwte); free(o->dwpe); free(o->att_out); free(o->att_lse); free(o->att_dqkv);
}

/* Backends set the (process-wide) OpenMP thread count when they are created, so each is used right
 * after its creation here. Returns non-zero when a backend cannot be made. */
static int test_thread_invariance(void) {
    const int64_t row = (DH + 2 * DKV) * DHD;
    /* inputs: dy doubles as the (B*T, C) gradient for the embedding and (B,T,H*hd) for attention */
    float *x = fvec(DN * DC), *w = fvec(DC), *b = fvec(DC), *dy = fvec(DN * DC), *qkv = fvec(DB * DT * row),
          *big = fvec(DSS);
    int32_t tok[DB * DT];
    fill(x, DN * DC, -1, 1.5);
    fill(w, DC, 0.5, 1.5);
    fill(b, DC, -0.5, 0.5);
    fill(dy, DN * DC, -1, 1);
    fill(qkv, DB * DT * row, -1.5, 1.5);
    fill(big, DSS, -1, 1);
    for (int i = 0; i < DB * DT; i++) tok[i] = (int32_t)loom_rng_below(&g_rng, 6);
    det_out o1, o2;
    det_alloc(&o1);
    det_alloc(&o2);
    loom_backend *be1 = NULL, *be2 = NULL;
    loom_backend_config bc = loom_backend_config_default();
    bc.quiet = 1;
    bc.threads = 1;
    if (loom_backend_init(&bc, &be1) != LOOM_OK) return 1;
    det_run(be1, x, w, b, dy, qkv, big, tok, &o1);
    bc.threads = 2;
    if (loom_backend_init(&bc, &be2) != LOOM_OK) return 1;
    det_run(be2, x, w, b, dy, qkv, big, tok, &o2);
    /* doubles compared bit for bit */
    report("threads_1v2_sum_squares_n100003_bitwise", memcmp(&o1.ss, &o2.ss, sizeof(double)) == 0,
           fabs(o1.ss - o2.ss), 0.0);
    report("threads_1v2_lamb_moments_bitwise", memcmp(&o1.lamb, &o2.lamb, sizeof(double)) == 0,
           fabs(o1.lamb - o2.lamb), 0.0);
    check_bits("threads_1v2_layernorm_backward_dinp", o1.ln_dx, o2.ln_dx, DN * DC);
    check_bits("threads_1v2_layernorm_backward_dw", o1.ln_dw, o2.ln_dw, DC);
    check_bits("threads_1v2_layernorm_backward_db", o1.ln_db, o2.ln_db, DC);
    check_bits("threads_1v2_rmsnorm_backward_dinp", o1.rms_dx, o2.rms_dx, DN * DC);
    check_bits("threads_1v2_rmsnorm_backward_dw", o1.rms_dw, o2.rms_dw, DC);
    check_bits("threads_1v2_bias_backward", o1.bias_db, o2.bias_db, DC);
    check_bits("threads_1v2_embedding_backward_dwte", o1.dwte, o2.dwte, DV * DC);
    check_bits("threads_1v2_embedding_backward_dwpe", o1.dwpe, o2.dwpe, DT * DC);
    check_bits("threads_1v2_attention_forward_out", o1.att_out, o2.att_out, DB * DT * DH * DHD);
    check_bits("threads_1v2_attention_forward_lse", o1.att_lse, o2.att_lse, DB * DH * DT);
    check_bits("threads_1v2_attention_backward_dqkv", o1.att_dqkv, o2.att_dqkv, DB * DT * row);
    loom_backend_free(&be1);
    loom_backend_free(&be2);
    det_free(&o1);
    det_free(&o2);
    free(x); free(w); free(b); free(dy); free(qkv); free(big);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* layer 2: finite differences through the model                                                     */

enum { MB = 2, MT = 5 };

static loom_status make_tiny_model(int llama, loom_backend *be, loom_comm *comm, loom_mem *mem, loom_model **out) {
    loom_model_config c;
    LOOM_CALL(loom_model_config_preset(llama ? "llama-tiny" : "demo", &c));
    c.n_layer = 1;
    c.d_model = 16;
    c.n_head = 2;
    c.n_kv_head = llama ? 1 : 2;
    c.d_ff = 24;
    c.vocab_size = 23;
    c.max_seq_len = 8;
    c.init_std = 0.2;
    const loom_model_options mo = {.flags = LOOM_MODEL_GRADS, .tp = comm};
    LOOM_CALL(loom_model_init(&c, be, mem, &mo, out));
    LOOM_CALL(loom_model_init_weights(*out, 4242));
    /* norm gains and biases away from 1 and 0 so that their gradients are tested on real values */
    loom_rng r;
    loom_rng_seed(&r, 77);
    float *params = loom_model_params(*out);
    for (int i = 0; i < loom_model_num_param_infos(*out); i++) {
        const loom_param_info *p = loom_model_param_info(*out, i);
        if (p->ndim == 1)
            for (int64_t j = 0; j < p->numel; j++) params[p->offset + j] += (float)(0.1 * loom_rng_normal(&r));
    }
    LOOM_CALL(loom_model_reserve(*out, MB, MT, LOOM_RECOMPUTE_NONE));
    return LOOM_OK;
}

/* Gradients of every parameter view compared element-wise (padding between views is not touched). */
static void compare_grads(const char *name, loom_model *m, const float *got, const float *want, int exact,
                          double rel, double factor) {
    int ok = 1;
    double worst = -1, werr = 0, wtol = 0;
    for (int i = 0; i < loom_model_num_param_infos(m); i++) {
        const loom_param_info *p = loom_model_param_info(m, i);
        double gmax = 0;
        for (int64_t j = 0; j < p->numel; j++) gmax = fmax(gmax, fabs((double)want[p->offset + j]));
        for (int64_t j = 0; j < p->numel; j++) {
            float a = got[p->offset + j], b = want[p->offset + j];
            double err, tol;
            if (exact) {
                err = memcmp(&a, &b, sizeof a) ? fabs((double)a - b) + 1e-300 : 0.0;
                if (isnan(err)) err = INFINITY;
                tol = 0.0;
            } else {
                double ref = factor * (double)b;
                err = fabs((double)a - ref);
                /* relative to the element, with a floor relative to the tensor's largest gradient
                 * (float sums of mixed signs lose relative accuracy on the elements that cancel) */
                tol = rel * fabs(ref) + rel * factor * gmax;
            }
            int good = err <= tol;
            if (!good) ok = 0;
            double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0);
            if (isnan(ratio)) ratio = INFINITY;
            if (ratio > worst) {
                worst = ratio;
                werr = err;
                wtol = tol;
            }
        }
    }
    report(name, ok, werr, wtol);
}

/* a model call in a test that returns 1 on error, with the error trace */
#define MCALL(expr)                                                   \
    do {                                                              \
        if ((expr) != LOOM_OK) {                                      \
            fprintf(stderr, "error: %s\n", loom_error_trace_text());  \
            return 1;                                                 \
        }                                                             \
    } while (0)

static int test_model_family(loom_backend *be, int llama) {
    const char *fam = llama ? "llama" : "gpt2";
    loom_comm *comm = NULL;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL;
    if (loom_comm_init_self(&comm) != LOOM_OK || make_tiny_model(llama, be, comm, &mem, &m) != LOOM_OK) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    const int64_t N = MB * MT, nbuf = loom_model_buffer_size(m);
    const int64_t V = loom_model_get_config(m)->vocab_size;
    int32_t tok[MB * MT], tgt[MB * MT];
    loom_rng r;
    loom_rng_seed(&r, llama ? 11 : 12);
    for (int64_t i = 0; i < N; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint64_t)V);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint64_t)V);
    }
    float *params = loom_model_params(m), *grads = loom_model_grads(m);
    float *g0 = fvec(nbuf);
    float loss_fb = 0, loss_f = 0;
    char name[160];
    MCALL(loom_model_forward_backward(m, tok, tgt, MB, MT, 1.0f / (float)N, 0, &loss_fb));
    memcpy(g0, grads, (size_t)nbuf * sizeof(float));
    MCALL(loom_model_forward(m, tok, tgt, MB, MT, &loss_f));
    snprintf(name, sizeof name, "model_%s_forward_loss_equals_forward_backward_loss", fam);
    check_bits(name, &loss_f, &loss_fb, 1);

    /* finite differences: one element of every parameter view, then random ones up to 24 */
    enum { NFD = 24 };
    int64_t picked[NFD];
    int ninfo = loom_model_num_param_infos(m);
    for (int k = 0; k < NFD; k++) {
        const loom_param_info *p;
        int64_t j, idx;
        int dup;
        do { /* distinct elements, each where a gradient can be non-zero */
            p = loom_model_param_info(m, k < ninfo ? k : (int)loom_rng_below(&r, (uint64_t)ninfo));
            if (strcmp(p->name, "wte") == 0) /* a row of a token in the batch */
                j = (int64_t)tok[loom_rng_below(&r, (uint64_t)N)] * p->shape[1] +
                    (int64_t)loom_rng_below(&r, (uint64_t)p->shape[1]);
            else if (strcmp(p->name, "wpe") == 0) /* rows >= T are not used */
                j = (int64_t)loom_rng_below(&r, (uint64_t)(MT * p->shape[1]));
            else
                j = (int64_t)loom_rng_below(&r, (uint64_t)p->numel);
            idx = p->offset + j;
            dup = 0;
            for (int q = 0; q < k; q++) dup |= picked[q] == idx;
        } while (dup);
        picked[k] = idx;
        const float orig = params[idx], h = 1e-2f;
        float lp = 0, lm = 0;
        params[idx] = orig + h;
        const float xp = params[idx];
        MCALL(loom_model_forward(m, tok, tgt, MB, MT, &lp));
        params[idx] = orig - h;
        const float xm = params[idx];
        MCALL(loom_model_forward(m, tok, tgt, MB, MT, &lm));
        params[idx] = orig;
        double fd = ((double)lp - (double)lm) / ((double)xp - (double)xm); /* the step actually taken */
        double g = g0[idx];
        /* Central difference with h = 1e-2: truncation error h^2/6 |f'''| ~ 2e-5 * |f'''| (f''' is O(1)
         * to O(10) for these 0.2-std weights), plus float noise in the loss: ~|loss| * 2^-24 * a few
         * over 2h, i.e. ~1e-4. |fd - g| <= 2e-3 + 5e-2 |g| is ~10x above both, while a wrong gradient
         * (a missing term, a wrong sign, a factor 2) on these O(1e-2..1) gradients is far outside it. */
        double err = fabs(fd - g), tol = 2e-3 + 5e-2 * fabs(g);
        snprintf(name, sizeof name, "fd_grad_%s_%s[%lld]_g=%.4g", fam, p->name, (long long)j, g);
        report(name, err <= tol, err, tol);
    }
    /* the forwards above must not have disturbed anything: a fresh backward gives the same bits */
    MCALL(loom_model_forward_backward(m, tok, tgt, MB, MT, 1.0f / (float)N, 0, &loss_fb));
    snprintf(name, sizeof name, "model_%s_backward_repeatable_bitwise", fam);
    compare_grads(name, m, grads, g0, 1, 0, 1);

    /* recompute modes: the same kernels on the same inputs, so the same bits */
    static const struct { loom_recompute rc; const char *name; } modes[] = {
        {LOOM_RECOMPUTE_ATTN, "attn"}, {LOOM_RECOMPUTE_FULL, "full"}};
    for (int k = 0; k < 2; k++) {
        float l2 = 0;
        MCALL(loom_model_reserve(m, MB, MT, modes[k].rc));
        MCALL(loom_model_forward_backward(m, tok, tgt, MB, MT, 1.0f / (float)N, 0, &l2));
        snprintf(name, sizeof name, "model_%s_recompute_%s_grads_bitwise_vs_none", fam, modes[k].name);
        compare_grads(name, m, grads, g0, 1, 0, 1);
        snprintf(name, sizeof name, "model_%s_recompute_%s_loss_bitwise_vs_none", fam, modes[k].name);
        check_bits(name, &l2, &loss_fb, 1);
    }
    MCALL(loom_model_reserve(m, MB, MT, LOOM_RECOMPUTE_NONE));

    /* accumulation: acc=0 then acc=1 on the same batch gives 2x. Every gradient is written once then
     * added once, so the only difference from 2*g is the rounding of sums that now start from g instead
     * of 0: ~ (rows summed) * 2^-24 relative to the tensor's scale; 1e-6 relative. */
    MCALL(loom_model_forward_backward(m, tok, tgt, MB, MT, 1.0f / (float)N, 0, &loss_fb));
    MCALL(loom_model_forward_backward(m, tok, tgt, MB, MT, 1.0f / (float)N, 1, &loss_fb));
    snprintf(name, sizeof name, "model_%s_accumulate_same_batch_twice_is_2x", fam);
    compare_grads(name, m, grads, g0, 0, 1e-6, 2.0);
    /* two half-batches (B=1 each, grad_scale 1/(B*T) of the full batch) accumulate to the full batch's
     * gradient; the per-row sums are split in two, so float rounding differs at ~1e-6 of the scale */
    MCALL(loom_model_forward_backward(m, tok, tgt, 1, MT, 1.0f / (float)N, 0, &loss_fb));
    MCALL(loom_model_forward_backward(m, tok + MT, tgt + MT, 1, MT, 1.0f / (float)N, 1, &loss_fb));
    snprintf(name, sizeof name, "model_%s_accumulate_two_half_batches_equals_full", fam);
    compare_grads(name, m, grads, g0, 0, 1e-5, 1.0);
    free(g0);
    loom_model_free(&m);
    loom_comm_free(&comm);
    return 0;
}

/* Training with one micro-batch in flight makes and scores the logits LOOM_MODEL_HEAD_PIECE_ROWS rows at a
 * time, in every precision, and the head's gradient products follow each piece (gpt.c logit_rows,
 * head_grads_in_forward); with two slots reserved it keeps them whole. The same model on the same batch both
 * ways: the pieces must change nothing but the rounding of the head's products (BLAS blocks a product of
 * fewer rows differently; the head weight's gradient is summed a piece at a time) and must hold less memory. */
static int test_head_pieces(loom_backend *be, int llama, loom_precision prec) {
    char fam[32];
    snprintf(fam, sizeof fam, "%s_%s", llama ? "llama" : "gpt2",
             prec == LOOM_PRECISION_BF16 ? "bf16" : prec == LOOM_PRECISION_FP16 ? "fp16" : "fp32");
    enum { PB = 9, PT = 128 }; /* 1152 rows: a whole piece and a short one */
    loom_comm *comm = NULL;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL;
    loom_model_config c;
    char name[160];
    MCALL(loom_comm_init_self(&comm));
    MCALL(loom_model_config_preset(llama ? "llama-tiny" : "demo", &c));
    c.n_layer = 1, c.d_model = 16, c.n_head = 2, c.n_kv_head = llama ? 1 : 2, c.d_ff = 24, c.vocab_size = 53;
    c.max_seq_len = PT, c.init_std = 0.2;
    const loom_model_options mo = {.flags = LOOM_MODEL_GRADS, .tp = comm, .precision = prec};
    MCALL(loom_model_init(&c, be, &mem, &mo, &m));
    MCALL(loom_model_init_weights(m, 4243));
    if (prec != LOOM_PRECISION_FP32) MCALL(loom_model_refresh_low_precision(m));
    const int64_t N = PB * PT, V = c.vocab_size, nbuf = loom_model_buffer_size(m);
    int32_t *tok = malloc((size_t)N * sizeof(int32_t)), *tgt = malloc((size_t)N * sizeof(int32_t));
    loom_rng r;
    loom_rng_seed(&r, llama ? 21 : 22);
    for (int64_t i = 0; i < N; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint64_t)V);
        tgt[i] = i % 7 == 3 ? -1 : (int32_t)loom_rng_below(&r, (uint64_t)V); /* some rows without a target */
    }
    float *g_pieces = fvec(nbuf), *lg_pieces = fvec(N * V), *lg_whole = fvec(N * V);
    float l_pieces = 0, l_whole = 0, l_eval = 0;
    /* the planner: past a piece's rows (B 8 -> 9 at T 128) the micro-batch's bytes grow by all but the logits */
    int64_t plan[3];
    for (int b = 7; b <= 9; b++)
        plan[b - 7] = loom_model_activation_bytes(m, b, PT, LOOM_RECOMPUTE_NONE, 1, 1, 0, prec);
    const double logit_growth = (double)((plan[1] - plan[0]) - (plan[2] - plan[1])), want = (double)(PT * V * 4);
    snprintf(name, sizeof name, "head_pieces_%s_plan_stops_the_logits_at_a_piece", fam);
    report(name, fabs(logit_growth - want) <= 1024, fabs(logit_growth - want), 1024); /* 1024: the alignment */
    if (prec != LOOM_PRECISION_FP32) { /* the low-precision copy of the logits' gradient: a piece's rows too */
        const int64_t widest = 48, elem = prec == LOOM_PRECISION_BF16 ? 2 : 4; /* max(C, Cq, H hd, fc width) */
        const int64_t whole_rows = N * V, piece = N * widest > 1024 * V ? N * widest : 1024 * V;
        const int64_t saved = loom_model_lowp_scratch_bytes(m, PB, PT, prec, 2, 0) -
                              loom_model_lowp_scratch_bytes(m, PB, PT, prec, 1, 0);
        snprintf(name, sizeof name, "head_pieces_%s_plan_stops_the_lowp_gradient_at_a_piece", fam);
        report(name, saved == (whole_rows - piece) * elem, (double)saved, (double)((whole_rows - piece) * elem));
    }

    MCALL(loom_model_reserve_slots(m, PB, PT, LOOM_RECOMPUTE_NONE, 1)); /* in pieces */
    MCALL(loom_model_forward_backward(m, tok, tgt, PB, PT, 1.0f / (float)N, 0, &l_pieces));
    memcpy(g_pieces, loom_model_grads(m), (size_t)nbuf * sizeof(float));
    snprintf(name, sizeof name, "head_pieces_%s_logits_not_kept_after_a_training_forward", fam);
    report(name, loom_model_read_logits(m, lg_pieces) == LOOM_ERR_INVALID_ARG, 0, 0);
    MCALL(loom_model_forward(m, tok, tgt, PB, PT, &l_eval));
    snprintf(name, sizeof name, "head_pieces_%s_eval_loss_equals_training_loss", fam);
    check_bits(name, &l_eval, &l_pieces, 1);
    MCALL(loom_model_forward(m, tok, NULL, PB, PT, NULL)); /* the caller reads them: whole */
    MCALL(loom_model_read_logits(m, lg_pieces));

    MCALL(loom_model_reserve_slots(m, PB, PT, LOOM_RECOMPUTE_NONE, 2)); /* whole */
    MCALL(loom_model_forward_backward(m, tok, tgt, PB, PT, 1.0f / (float)N, 0, &l_whole));
    MCALL(loom_model_read_logits(m, lg_whole)); /* the logits' gradient, in place: kept */
    MCALL(loom_model_forward(m, tok, NULL, PB, PT, NULL));
    MCALL(loom_model_read_logits(m, lg_whole));
    snprintf(name, sizeof name, "head_pieces_%s_logits_without_targets_bitwise", fam);
    check_bits(name, lg_pieces, lg_whole, N * V);
    /* the loss: each row's logits rounded differently by at most a few ulps; the mean over ~1000 rows */
    snprintf(name, sizeof name, "head_pieces_%s_loss_vs_whole", fam);
    report(name, fabs((double)l_pieces - l_whole) <= 1e-6 * fabs((double)l_whole), fabs((double)l_pieces - l_whole),
           1e-6 * fabs((double)l_whole));
    /* the gradients: a logit a few ulps apart can round its bf16 gradient one bf16 ulp (2^-8) apart, so up to
     * 2^-8 of an element, with the tensor's floor as for every float sum; fp16 rounds each product's result
     * to 11 bits (2^-11); fp32 differs by float sums in another order (1e-5: ~100 ulps) */
    const double rel = prec == LOOM_PRECISION_BF16 ? 1.0 / 256 : prec == LOOM_PRECISION_FP16 ? 1.0 / 2048 : 1e-5;
    snprintf(name, sizeof name, "head_pieces_%s_grads_vs_whole", fam);
    compare_grads(name, m, g_pieces, loom_model_grads(m), 0, rel, 1.0);
    free(tok);
    free(tgt);
    free(g_pieces);
    free(lg_pieces);
    free(lg_whole);
    loom_model_free(&m);
    loom_comm_free(&comm);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */

int main(void) {
    loom_rng_seed(&g_rng, 20240601);
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    loom_backend *be = NULL, *be_builtin = NULL;
    if (loom_backend_init(&bc, &be) != LOOM_OK) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    printf("# backend %s, GEMM %s, %d threads\n", loom_backend_name(be), loom_backend_gemm_kernel(be),
           loom_backend_threads(be));
    bc.blas_library = "builtin";
    if (loom_backend_init(&bc, &be_builtin) != LOOM_OK) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    test_matmul(be, strncmp(loom_backend_gemm_kernel(be), "openblas", 8) == 0 ? "openblas" : "default");
    test_matmul(be_builtin, "builtin");
    loom_backend_free(&be_builtin);
    test_layernorm(be);
    test_rmsnorm(be);
    test_activations(be);
    test_rope(be);
    test_attention(be);
    test_embedding(be);
    test_cross_entropy(be);
    test_pair_round_copy(be);
    test_matmul_bf16(be);
    test_matmul_bf16_strided(be);
    test_matmul_batch_invariant();
    test_sum_squares(be);
    test_adamw(be, 40009);
    test_lamb(be, 40009); /* three of the kernel's 16384-element blocks, the last partial */
    test_sgd(be, 40009);
    int rc = test_model_family(be, 0);
    rc |= test_model_family(be, 1);
    for (int p = 0; p < 3; p++) {
        const loom_precision prec[3] = {LOOM_PRECISION_BF16, LOOM_PRECISION_FP32, LOOM_PRECISION_FP16};
        rc |= test_head_pieces(be, 0, prec[p]);
        rc |= test_head_pieces(be, 1, prec[p]);
    }
    loom_backend_free(&be);
    rc |= test_thread_invariance();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return (rc || g_fail) ? 1 : 0;
}
