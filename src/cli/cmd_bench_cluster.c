/* loom bench cluster: measures what the planner's time model needs on this machine and writes cluster.json
 * (docs/FORMATS.md): GEMM rates on a grid of shapes in each orientation the step runs, attention by sequence
 * length, nanoseconds per element of each memory-bound kernel class, per thread count and precision, through
 * the backend's own kernels; each collective's latency and bus bandwidth between 2..N ranks (an mpirun of
 * this program per group size, fitted from a small and a large message); the disk's write and read rates. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "loom/backend.h"
#include "loom/comm.h"
#include "loom/log.h"
#include "loom/plan.h"

/* the median seconds of a call, after a warm-up: 3 runs, more (up to 9) while the total stays under 50 ms */
#define TIME_MEDIAN(result, call)                                         \
    do {                                                                  \
        double ts_[9];                                                    \
        int n_ = 0;                                                       \
        if ((call) != LOOM_OK) { result = -1; break; }                    \
        const double start_ = loom_now_s();                                    \
        while (n_ < 9 && (n_ < 3 || loom_now_s() - start_ < 0.05)) {           \
            const double t0_ = loom_now_s();                                   \
            if ((call) != LOOM_OK) { n_ = -1; break; }                    \
            ts_[n_++] = loom_now_s() - t0_;                                    \
        }                                                                 \
        if (n_ < 0) { result = -1; break; }                               \
        result = loom_cli_median(ts_, n_);                                \
    } while (0)

static float *filled(int64_t n) {
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; x && i < n; i++) x[i] = 0.01f * (float)((i * 7919) % 200 - 100) / 100.0f;
    return x;
}

/* ---- compute ---- */

static const int64_t grid_M[] = {128, 512, 2048}, grid_NK[] = {128, 768, 3072};
static const int64_t quick_M[] = {256, 2048}, quick_NK[] = {192, 3072};

/* a product's operands: fp32, or (bf16) their bf16 copies */
typedef struct {
    const float *A, *B;
    const uint16_t *A16, *B16; /* NULL: fp32 */
    float *C;
} gemm_operands;

/* one product in orientation tr (0 A W^T, 1 dY W, 2 dY^T X): its median rate into k's table */
static loom_status time_gemm(loom_backend *be, const gemm_operands *o, int tr, int64_t M, int64_t N, int64_t K,
                             loom_cluster_compute *k) {
    const int ta = tr == 2, tb = tr == 0;
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    double s;
    if (o->A16)
        TIME_MEDIAN(s, loom_k_matmul_bf16(be, &(loom_matmul_bf16_args){ta, tb, M, N, K, 1.0f, o->A16, lda, o->B16, ldb,
                                                                     0.0f, o->C, N}));
    else
        TIME_MEDIAN(s, loom_k_matmul(be, &(loom_gemm){ta, tb, M, N, K, 1.0f, o->A, lda, o->B, ldb, 0.0f, o->C, N}));
    if (s <= 0) return LOOM_ERR_UNSUPPORTED;
    k->gemm[k->n_gemm++] = (loom_gemm_rate){.M = M, .N = N, .K = K, .trans = tr, .gflops = 2.0 * M * N * K / s / 1e9};
    return LOOM_OK;
}

static loom_status measure_gemms(loom_backend *be, int bf16, int quick, loom_cluster_compute *k) {
    const int64_t *Ms = quick ? quick_M : grid_M, *NKs = quick ? quick_NK : grid_NK;
    const int nM = quick ? 2 : 3, nNK = quick ? 2 : 3;
    const int64_t most = 50304 * 768; /* the largest operand: the head's weight (the grid's: 3072 x 3072) */
    float *A = filled(most), *B = filled(most), *C = filled(most);
    uint16_t *A16 = malloc((size_t)most * 2), *B16 = malloc((size_t)most * 2);
    loom_status st = A && B && C && A16 && B16 ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int64_t i = 0; st == LOOM_OK && i < most; i++) A16[i] = B16[i] = 0x3c00; /* bf16 0.0078 */
    const gemm_operands ops = {A, B, bf16 ? A16 : NULL, B16, C};
    for (int tr = 0; st == LOOM_OK && tr < 3; tr++)
        for (int a = 0; st == LOOM_OK && a < nM; a++)
            for (int b = 0; st == LOOM_OK && b < nNK; b++)
                for (int c = 0; st == LOOM_OK && c < nNK; c++) {
                    /* the step's three orientations: forward A W^T; input gradient dY W; weight gradient dY^T X */
                    const int64_t M = tr == 2 ? NKs[b] : Ms[a], N = tr == 2 ? NKs[c] : NKs[b], K = tr == 2 ? Ms[a] : NKs[c];
                    st = time_gemm(be, &ops, tr, M, N, K, k);
                }
    /* the vocabulary head's products (a 50,304-row weight against 768 columns): the largest of a small model's
     * step, where rates differ most from the square grid's */
    const int64_t V = 50304, D = 768, Mv[2] = {128, 512};
    for (int tr = 0; st == LOOM_OK && tr < 3; tr++)
        for (int a = 0; st == LOOM_OK && a < 2; a++) {
            const int64_t M = tr == 2 ? V : Mv[a], N = tr == 1 ? D : tr == 2 ? D : V, K = tr == 1 ? V : tr == 2 ? Mv[a] : D;
            st = time_gemm(be, &ops, tr, M, N, K, k);
        }
    free(A);
    free(B);
    free(C);
    free(A16);
    free(B16);
    return st;
}

/* bf16: the attention of bf16 training (its products on bf16 operands where the backend has them) */
static loom_status measure_attention(loom_backend *be, int bf16, int quick, loom_cluster_compute *k) {
    const int64_t Ts[] = {64, 256, 1024}, H = 12, hd = 64;
    const int nT = quick ? 2 : 3;
    loom_status st = LOOM_OK;
    for (int i = 0; i < nT && st == LOOM_OK; i++) {
        const int64_t T = Ts[i], B = 4096 / T > 1 ? 4096 / T : 1, C = H * hd;
        float *qkv = filled(B * T * 3 * C), *out = filled(B * T * C), *lse = filled(B * H * T), *dq = filled(B * T * 3 * C),
              *dout = filled(B * T * C);
        double f = -1, b = -1;
        if (qkv && out && lse && dq && dout) {
            TIME_MEDIAN(f, loom_k_attention_forward(be, &(loom_attention_forward_args){out, lse, qkv, B, T, H, H, hd, bf16}));
            TIME_MEDIAN(b, loom_k_attention_backward(be, &(loom_attention_backward_args){dq, dout, qkv, out, lse, B, T, H, H, hd, bf16}));
        }
        if (f <= 0 || b <= 0) st = LOOM_ERR_UNSUPPORTED;
        else {
            const double flops = (double)B * H * T * (double)(T + 1) * hd;
            k->attn_T[k->n_attn] = T;
            k->attn_fwd_gflops[k->n_attn] = 2.0 * flops / f / 1e9;
            k->attn_bwd_gflops[k->n_attn++] = 5.0 * flops / b / 1e9;
        }
        free(qkv);
        free(out);
        free(lse);
        free(dq);
        free(dout);
    }
    return st;
}

/* a copy into dst, its pages first given back (discard) or left resident */
static loom_status copy_into(loom_backend *be, float *dst, const float *src, int64_t n, int discard) {
    if (discard) loom_buf_discard(be, dst, (size_t)n * sizeof(float));
    return loom_k_copy(be, &(loom_copy_args){dst, src, n * (int64_t)sizeof(float), LOOM_COPY_D2D});
}

/* ZeRO-2/3 give a unit's pages back after use and write them again at its next (zero.c): the cost per float
 * of writing into given-back pages beyond writing into resident ones, through the backend's own reserve; a
 * model's worth (256 MiB, past the caches: a unit's pages come back cold) */
static loom_status measure_refill(loom_backend *be, loom_cluster_compute *k) {
    const int64_t n = 64 << 20;
    float *r = NULL, *src = filled(n);
    LOOM_CHECK(src != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = loom_buf_reserve(be, (size_t)n * sizeof(float), (void **)&r);
    if (st != LOOM_OK) {
        free(src);
        return st;
    }
    double fresh = -1, resident = -1;
    TIME_MEDIAN(fresh, copy_into(be, r, src, n, 1));
    TIME_MEDIAN(resident, copy_into(be, r, src, n, 0));
    loom_buf_unreserve(be, r, (size_t)n * sizeof(float));
    free(src);
    LOOM_CHECK(fresh > 0 && resident > 0, LOOM_ERR_UNSUPPORTED, "the page refill could not be timed");
    k->ns_per_element[LOOM_KC_REFILL] = fresh > resident ? (fresh - resident) / (double)n * 1e9 : 0.0;
    return LOOM_OK;
}

/* each memory-bound class: its forward and backward kernels (where it has two) per element, averaged */
static loom_status measure_kernels(loom_backend *be, loom_cluster_compute *k) {
    const int64_t N = 2048, C = 768, F = 3072, V = 50257, Nl = 512, n = 4 << 20; /* Nl: a micro-batch's rows of logits */
    float *x = filled(N * F), *y = filled(N * F), *z = filled(N * F), *mean = filled(N), *rstd = filled(N), *w = filled(C),
          *bias = filled(C), *dw = filled(C), *db = filled(C), *logits = filled(Nl * V), *losses = filled(Nl),
          *wte = filled(V * C), *dwte = filled(V * C), *p = filled(n), *g = filled(n), *m = filled(n), *v = filled(n);
    int32_t *tok = malloc((size_t)N * sizeof(int32_t));
    double s1 = -1, s2 = -1, ss = 0;
    loom_status st = LOOM_OK;
    if (!x || !y || !z || !mean || !rstd || !w || !bias || !dw || !db || !logits || !losses || !wte || !dwte || !p || !g ||
        !m || !v || !tok) {
        st = LOOM_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)((i * 7919) % V);
    for (int64_t i = 0; i < n; i++) v[i] = 1e-4f;
#define CLASS(kc, elems, fwd, bwd)          \
    do {                                    \
        TIME_MEDIAN(s1, fwd);               \
        TIME_MEDIAN(s2, bwd);               \
        if (s1 <= 0 || s2 <= 0) { st = LOOM_ERR_UNSUPPORTED; goto out; } \
        k->ns_per_element[kc] = 0.5 * (s1 + s2) / (double)(elems) * 1e9; \
    } while (0)
    CLASS(LOOM_KC_NORM, N * C,
          loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = y, .mean = mean, .rstd = rstd, .inp = x, .w = w, .b = bias, .N = N, .C = C, .eps = 1e-5f}),
          loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = z, .dw = dw, .db = db, .dout = y, .inp = x, .w = w, .mean = mean, .rstd = rstd, .N = N, .C = C}));
    CLASS(LOOM_KC_ACTIVATION, N * F,
          loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = x, .out = y, .bias = bias, .N = N * F / C, .F = C}),
          loom_k_gelu_backward(be, &(loom_gelu_backward_args){.dinp = z, .inp = x, .dout = y, .n = N * F}));
    CLASS(LOOM_KC_ELEMENTWISE, N * F, loom_k_add(be, &(loom_add_args){z, x, y, N * F}),
          loom_k_add(be, &(loom_add_args){x, x, y, N * F}));
    CLASS(LOOM_KC_EMBEDDING, N * C,
          loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = y, .tokens = tok, .wte = wte, .B = 1, .T = N, .C = C}),
          loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = dwte, .dout = y, .tokens = tok, .B = 1, .T = N, .C = C, .V = V, .accumulate_wte = 1}));
    for (int64_t i = 0; i < Nl; i++) tok[i] = (int32_t)((i * 7919) % V);
    /* the loss: one fused pass (the loss and its gradient in place), as training runs it */
    CLASS(LOOM_KC_LOSS, Nl * V,
          loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = logits, .losses = losses, .targets = tok, .N = Nl, .V = V, .grad_scale = 1e-3f}),
          loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = logits, .losses = losses, .targets = tok, .N = Nl, .V = V, .grad_scale = 1e-3f}));
    /* the optimizer: the gradient norm's pass and AdamW's (one step per parameter: the sum of both) */
    CLASS(LOOM_KC_OPTIMIZER, n, loom_k_sum_squares(be, &(loom_sum_squares_args){g, n, &ss}),
          loom_k_adamw(be, &(loom_adamw_args){.p = p, .g = g, .m = m, .v = v, .n = n, .lr = 1e-9f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .bias_correction1 = 1, .bias_correction2 = 1, .grad_scale = 1}));
    k->ns_per_element[LOOM_KC_OPTIMIZER] *= 2.0;
    CLASS(LOOM_KC_COPY, N * F, loom_k_copy(be, &(loom_copy_args){z, x, N * F * (int64_t)sizeof(float), LOOM_COPY_D2D}),
          loom_k_copy(be, &(loom_copy_args){x, z, N * F * (int64_t)sizeof(float), LOOM_COPY_D2D}));
#undef CLASS
    if (st == LOOM_OK) st = measure_refill(be, k);
out:
    free(x), free(y), free(z), free(mean), free(rstd), free(w), free(bias), free(dw), free(db), free(logits);
    free(losses), free(wte), free(dwte), free(p), free(g), free(m), free(v), free(tok);
    return st;
}

static int measure_compute(int threads, int bf16, int quick, loom_cluster_compute *k) {
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    loom_backend *be;
    if (loom_backend_init(&bc, &be) != LOOM_OK) return loom_cli_fail("bench cluster");
    memset(k, 0, sizeof *k);
    k->threads = threads;
    k->precision = bf16 ? LOOM_PRECISION_BF16 : LOOM_PRECISION_FP32;
    loom_status st = measure_gemms(be, bf16, quick, k);
    if (st == LOOM_OK) st = measure_attention(be, bf16, quick, k);
    if (st == LOOM_OK) st = measure_kernels(be, k);
    loom_backend_free(&be);
    if (st != LOOM_OK) {
        fprintf(stderr, "loom bench cluster: %s kernels at %d threads could not be measured\n", bf16 ? "bf16" : "fp32",
                threads);
        return 1;
    }
    return 0;
}

/* ---- collectives: a child of mpirun per group size; rank 0 prints one line per collective ---- */

static double coll_once(loom_comm *w, loom_coll op, float *buf, int64_t n) {
    const int p = loom_comm_size(w), r = loom_comm_rank(w);
    int64_t counts[256];
    for (int i = 0; i < p; i++) counts[i] = n / p;
    loom_status st = loom_comm_barrier(w);
    const double t0 = loom_now_s();
    loom_comm_req rq;
    memset(&rq, 0, sizeof rq);
    if (st != LOOM_OK) return -1;
    if (op == LOOM_COLL_ALLREDUCE) st = loom_comm_allreduce_sum_f32(w, buf, n);
    else if (op == LOOM_COLL_ALLGATHER) {
        st = loom_comm_iallgather_f32(w, buf, counts, &rq);
        if (st == LOOM_OK) st = loom_comm_wait(&rq);
    } else if (op == LOOM_COLL_REDUCE_SCATTER) {
        st = loom_comm_ireduce_scatter_f32(w, buf, buf + n, counts, &rq);
        if (st == LOOM_OK) st = loom_comm_wait(&rq);
    } else if (r == 0) st = loom_comm_send_f32(w, buf, n, 1, 5); /* send/recv: rank 0 to rank 1 */
    else if (r == 1) st = loom_comm_recv_f32(w, buf, n, 0, 5);
    double t = loom_now_s() - t0;
    if (st != LOOM_OK) return -1;
    /* the slowest rank's time */
    float f = (float)t;
    if (loom_comm_allreduce_max_f32(w, &f, 1) != LOOM_OK) return -1;
    return (double)f;
}

static int comm_child(void) {
    loom_comm *w = NULL;
    if (loom_comm_init_world(&w) != LOOM_OK) return loom_cli_fail("bench cluster");
    const int64_t small = 1024, large = 4 << 20; /* floats: 4 KiB and 16 MiB */
    float *buf = filled(2 * large);
    const loom_coll ops[] = {LOOM_COLL_ALLREDUCE, LOOM_COLL_ALLGATHER, LOOM_COLL_REDUCE_SCATTER, LOOM_COLL_SENDRECV};
    int rc = buf ? 0 : 1;
    for (int o = 0; o < 4 && !rc; o++) {
        double t[2];
        for (int sz = 0; sz < 2 && !rc; sz++) {
            double ts[7];
            const int reps = sz ? 5 : 7;
            for (int i = -1; i < reps && !rc; i++) {
                const double s = coll_once(w, ops[o], buf, sz ? large : small);
                if (s < 0) rc = 1;
                else if (i >= 0) ts[i] = s;
            }
            if (!rc) {
                t[sz] = loom_cli_median(ts, reps);
            }
        }
        if (rc) break;
        /* time = latency + factor * bytes / busbw, through the two sizes */
        const int n = loom_comm_size(w);
        double factor = 1.0;
        if (ops[o] == LOOM_COLL_ALLREDUCE) factor = 2.0 * (n - 1) / n;
        else if (ops[o] != LOOM_COLL_SENDRECV) factor = (double)(n - 1) / n;
        const double dbytes = 4.0 * (double)(large - small);
        const double busbw = t[1] > t[0] ? factor * dbytes / (t[1] - t[0]) : factor * 4.0 * large / t[1];
        double lat = t[0] - factor * 4.0 * small / busbw;
        if (lat < 0) lat = t[0];
        if (loom_comm_rank(w) == 0) printf("link %d %.3f %.4f\n", (int)ops[o], lat * 1e6, busbw / 1e9);
    }
    free(buf);
    fflush(stdout);
    loom_comm_free(&w);
    return rc ? loom_cli_fail("bench cluster") : 0;
}

static int measure_links(const char *self, int ranks, loom_cluster_link *l) {
    char cmd[8300];
    snprintf(cmd, sizeof cmd,
             "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe --bind-to none -np %d "
             "'%s' bench cluster --comm-child 2>&1", ranks, self);
    FILE *f = popen(cmd, "r");
    if (!f) return 1;
    memset(l, 0, sizeof *l);
    l->ranks = ranks;
    char line[512];
    int got = 0;
    while (fgets(line, sizeof line, f)) {
        int op;
        double lat, bw;
        if (sscanf(line, "link %d %lf %lf", &op, &lat, &bw) == 3 && op >= 0 && op < LOOM_COLL_COUNT) {
            l->latency_s[op] = lat * 1e-6;
            l->busbw[op] = bw * 1e9;
            got++;
        } else {
            fputs(line, stderr);
        }
    }
    const int status = pclose(f);
    return got == 4 && status == 0 ? 0 : 1;
}

/* ---- disk: the memory manager's files ---- */

static void measure_disk(const char *dir, loom_cluster *c) {
    char path[4300];
    snprintf(path, sizeof path, "%.4200s/.loom-bench-disk-%d", dir, (int)getpid());
    const size_t chunk = 8 << 20, total = (size_t)256 << 20;
    char *buf = malloc(chunk);
    int fd = buf ? open(path, O_CREAT | O_TRUNC | O_RDWR, 0600) : -1;
    if (fd < 0) {
        free(buf);
        return;
    }
    memset(buf, 7, chunk);
    double t0 = loom_now_s();
    size_t done = 0;
    while (done < total && write(fd, buf, chunk) == (ssize_t)chunk) done += chunk;
    if (fsync(fd) == 0 && done == total) c->disk_write_bps = (double)total / (loom_now_s() - t0);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* read from the disk, not the page cache */
    if (lseek(fd, 0, SEEK_SET) == 0) {
        t0 = loom_now_s();
        done = 0;
        while (done < total && read(fd, buf, chunk) == (ssize_t)chunk) done += chunk;
        if (done == total) c->disk_read_bps = (double)total / (loom_now_s() - t0);
    }
    close(fd);
    unlink(path);
    free(buf);
}

static void cpu_name(char *dst, size_t n) {
    snprintf(dst, n, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            const char *v = strchr(line, ':');
            if (v) {
                snprintf(dst, n, "%s", v + 2);
                dst[strcspn(dst, "\n")] = 0;
            }
            break;
        }
    if (f) fclose(f);
}

void loom_cli_cluster_default_path(char *buf, size_t n) {
    const char *dir = getenv("LOOM_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (dir && dir[0]) snprintf(buf, n, "%s/cluster.json", dir);
    else if (xdg && xdg[0]) snprintf(buf, n, "%s/loom/cluster.json", xdg);
    else snprintf(buf, n, "%s/.cache/loom/cluster.json", home && home[0] ? home : "/tmp");
}

int loom_cli_cluster_load(const char *cmd, const char *path, loom_cluster **out) {
    char def[4200];
    if (!path) {
        loom_cli_cluster_default_path(def, sizeof def);
        path = def;
    }
    *out = malloc(sizeof **out);
    if (!*out) return 1;
    if (loom_cluster_load(path, *out) != LOOM_OK) {
        free(*out);
        *out = NULL;
        fprintf(stderr, "loom %s: no cluster description (measure this machine with `loom bench cluster`, or pass "
                        "--cluster FILE; docs/clusters/ has real clusters)\n", cmd);
        return loom_cli_fail(cmd);
    }
    return 0;
}

int loom_cmd_bench_cluster(int argc, char **argv) {
    const char *out = NULL;
    int ranks = 0, quick = 0, threads_max = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--comm-child")) return comm_child();
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--ranks") && i + 1 < argc) ranks = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads_max = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "loom bench cluster: unknown option '%s' (see loom bench --help)\n", argv[i]);
            return 2;
        }
    }
    char def[4200];
    if (!out) { /* the cache, where `loom plan` looks */
        loom_cli_cluster_default_path(def, sizeof def);
        for (char *p = def + 1; *p; p++)
            if (*p == '/') {
                *p = 0;
                (void)mkdir(def, 0755);
                *p = '/';
            }
        out = def;
    }
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const int cores = ncpu > 0 ? (int)ncpu : 1;
    if (threads_max <= 0 || threads_max > cores) threads_max = cores;
    if (ranks <= 0) ranks = cores;
    loom_cluster *c = calloc(1, sizeof *c);
    if (!c) return 1;
    snprintf(c->name, sizeof c->name, "this machine");
    snprintf(c->source, sizeof c->source, "measured");
    cpu_name(c->device, sizeof c->device);
    c->hosts = 1;
    c->cores_per_host = cores;
    c->memory_per_rank = (int64_t)sysconf(_SC_PHYS_PAGES) * (int64_t)sysconf(_SC_PAGESIZE);
    /* one thread and every core; both precisions */
    int rc = 0;
    for (int th = 1; th <= threads_max && !rc; th = th == threads_max ? threads_max + 1 : (th * 2 < threads_max ? th * 2 : threads_max))
        for (int bf16 = 0; bf16 < 2 && !rc; bf16++) {
            const double t0 = loom_now_s();
            rc = measure_compute(th, bf16, quick, &c->compute[c->n_compute]);
            if (rc) break;
            const loom_cluster_compute *k = &c->compute[c->n_compute++];
            double best = 0;
            for (int g = 0; g < k->n_gemm; g++) best = k->gemm[g].gflops > best ? k->gemm[g].gflops : best;
            if (th == threads_max && best > c->peak_gflops[bf16]) c->peak_gflops[bf16] = best;
            printf("compute: %d thread%s %s: best GEMM %.1f GFLOP/s, attention %.1f/%.1f GFLOP/s (T %lld), "
                   "%.1f s\n", th, th > 1 ? "s" : "", bf16 ? "bf16" : "fp32", best, k->attn_fwd_gflops[k->n_attn - 1],
                   k->attn_bwd_gflops[k->n_attn - 1], (long long)k->attn_T[k->n_attn - 1], loom_now_s() - t0);
            fflush(stdout);
        }
    c->peak_gflops[2] = c->peak_gflops[0]; /* fp16 runs on fp32 units here */
    char self[4096];
    const ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    for (int r = 2; r <= ranks && !rc && loom_comm_have_mpi() && sl > 0; r *= 2) {
        self[sl] = 0;
        loom_cluster_link *l = &c->links[c->n_links];
        if (measure_links(self, r, l)) {
            fprintf(stderr, "loom bench cluster: the collectives over %d ranks could not be measured (mpirun)\n", r);
            rc = 1;
            break;
        }
        c->n_links++;
        printf("links: %d ranks: all-reduce %.1f us + %.2f GB/s bus bandwidth, send %.1f us + %.2f GB/s\n", r,
               l->latency_s[LOOM_COLL_ALLREDUCE] * 1e6, l->busbw[LOOM_COLL_ALLREDUCE] / 1e9,
               l->latency_s[LOOM_COLL_SENDRECV] * 1e6, l->busbw[LOOM_COLL_SENDRECV] / 1e9);
    }
    if (!rc) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s", out);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        measure_disk(dir, c);
        printf("disk: write %.2f GB/s, read %.2f GB/s\n", c->disk_write_bps / 1e9, c->disk_read_bps / 1e9);
        loom_strbuf sb;
        loom_strbuf_init(&sb);
        loom_cluster_to_json(c, &sb);
        FILE *f = sb.failed ? NULL : fopen(out, "w");
        if (!f || fwrite(sb.buf, 1, sb.len, f) != sb.len || fclose(f) != 0) {
            fprintf(stderr, "loom bench cluster: cannot write %s\n", out);
            rc = 1;
        } else {
            printf("wrote %s\n", out);
        }
        loom_strbuf_free(&sb);
    }
    free(c);
    return rc;
}
