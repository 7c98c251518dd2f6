/* bf16 x bf16 -> fp32 GEMM through oneDNN's matmul primitive (its brgemm kernels use AVX512_BF16's
 * vdpbf16ps where the CPU has it), loaded at run time like OpenBLAS: libdnnl.so.2 from Debian's libdnnl2.
 * Nothing links against it, so a machine without it still runs loom; loom_k_matmul_bf16 then converts to
 * fp32 and uses the fp32 GEMM, and loom_backend_bf16_kernel says so. A primitive is made once per shape
 * (with its strides, alpha as an output scale and beta as a sum post-op) and kept. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#if defined(__has_include)
#if __has_include(<dnnl.h>)
#include <dnnl.h>
#define LOOM_DNNL_HEADERS 1
#endif
#endif

#ifdef LOOM_DNNL_HEADERS
/* A shape's product. Where oneDNN's kernel prefers B in its own blocked layout (products with a plain first
 * operand and enough rows: the forward's and the input gradients', plan_for), `pack` reorders B into it before
 * each call, into the shared `packed` buffer: the product then reads B in the order its kernel walks it,
 * instead of copying B's blocks as it goes. `loom bench gemm --stack` measures it against plain B (Zen 5, 2
 * threads: 1.04-1.06x on GPT-2 124M's layers). A weight changes after every step, so nothing is packed once
 * and kept. */
typedef struct {
    int ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c;
    dnnl_primitive_t pack; /* plain B -> bp (NULL: the product reads B as it is) */
    dnnl_memory_t bp;
    size_t bp_bytes;
} bf16_plan;

enum { MAX_PLANS = 256 }; /* shapes x strides x pieces: a GPT-2 step makes ~40 */
enum { BF16_PACK_MAX = 32 << 20, BF16_PACK_MIN_ROWS = 2048 }; /* which products pack B (bf16_plan) */

typedef struct {
    void *h;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    bf16_plan plans[MAX_PLANS];
    int n_plans;
    void *packed; /* B in its product's layout, grow-only (the largest plan's bp_bytes) */
    size_t packed_bytes;
    int pack_b; /* 0: every product reads plain B (LOOM_BF16_PACK=0, the side-by-side of `loom bench gemm --stack`) */
#define F(ret, name, args) ret(*name) args;
#define DNNL_FUNCS                                                                                             \
    F(dnnl_status_t, engine_create, (dnnl_engine_t *, dnnl_engine_kind_t, size_t))                             \
    F(dnnl_status_t, engine_destroy, (dnnl_engine_t))                                                          \
    F(dnnl_status_t, stream_create, (dnnl_stream_t *, dnnl_engine_t, unsigned))                                \
    F(dnnl_status_t, stream_destroy, (dnnl_stream_t))                                                          \
    F(dnnl_status_t, stream_wait, (dnnl_stream_t))                                                             \
    F(dnnl_status_t, memory_desc_init_by_strides, (dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t, \
                                                   const dnnl_dims_t))                                         \
    F(dnnl_status_t, matmul_desc_init, (dnnl_matmul_desc_t *, const dnnl_memory_desc_t *,                      \
                                        const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,                \
                                        const dnnl_memory_desc_t *))                                           \
    F(dnnl_status_t, primitive_attr_create, (dnnl_primitive_attr_t *))                                         \
    F(dnnl_status_t, primitive_attr_destroy, (dnnl_primitive_attr_t))                                          \
    F(dnnl_status_t, primitive_attr_set_output_scales, (dnnl_primitive_attr_t, dnnl_dim_t, int, const float *)) \
    F(dnnl_status_t, primitive_attr_set_post_ops, (dnnl_primitive_attr_t, const_dnnl_post_ops_t))              \
    F(dnnl_status_t, post_ops_create, (dnnl_post_ops_t *))                                                     \
    F(dnnl_status_t, post_ops_destroy, (dnnl_post_ops_t))                                                      \
    F(dnnl_status_t, post_ops_append_sum, (dnnl_post_ops_t, float))                                            \
    F(dnnl_status_t, primitive_desc_create, (dnnl_primitive_desc_t *, const_dnnl_op_desc_t,                   \
                                             const_dnnl_primitive_attr_t, dnnl_engine_t,                       \
                                             const_dnnl_primitive_desc_t))                                     \
    F(dnnl_status_t, primitive_desc_destroy, (dnnl_primitive_desc_t))                                          \
    F(dnnl_status_t, primitive_desc_query, (const_dnnl_primitive_desc_t, dnnl_query_t, int, void *))           \
    F(dnnl_status_t, primitive_create, (dnnl_primitive_t *, const_dnnl_primitive_desc_t))                      \
    F(dnnl_status_t, primitive_destroy, (dnnl_primitive_t))                                                    \
    F(dnnl_status_t, primitive_execute, (const_dnnl_primitive_t, dnnl_stream_t, int, const dnnl_exec_arg_t *)) \
    F(dnnl_status_t, memory_create, (dnnl_memory_t *, const dnnl_memory_desc_t *, dnnl_engine_t, void *))      \
    F(dnnl_status_t, memory_destroy, (dnnl_memory_t))                                                          \
    F(dnnl_status_t, memory_set_data_handle, (dnnl_memory_t, void *))                                          \
    F(dnnl_status_t, memory_desc_init_by_tag, (dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t,  \
                                               dnnl_format_tag_t))                                             \
    F(const dnnl_memory_desc_t *, primitive_desc_query_md, (const_dnnl_primitive_desc_t, dnnl_query_t, int))   \
    F(size_t, memory_desc_get_size, (const dnnl_memory_desc_t *))                                              \
    F(int, memory_desc_equal, (const dnnl_memory_desc_t *, const dnnl_memory_desc_t *))                         \
    F(dnnl_status_t, reorder_primitive_desc_create, (dnnl_primitive_desc_t *, const dnnl_memory_desc_t *,       \
                                                     dnnl_engine_t, const dnnl_memory_desc_t *, dnnl_engine_t,  \
                                                     const_dnnl_primitive_attr_t))
    DNNL_FUNCS
#undef F
} dnnl_lib;

static void plan_free(dnnl_lib *d, bf16_plan *p) {
    if (p->prim) d->primitive_destroy(p->prim);
    if (p->pack) d->primitive_destroy(p->pack);
    if (p->a) d->memory_destroy(p->a);
    if (p->b) d->memory_destroy(p->b);
    if (p->bp) d->memory_destroy(p->bp);
    if (p->c) d->memory_destroy(p->c);
}

static void dnnl_lib_free(void *p) {
    dnnl_lib *d = p;
    if (!d) return;
    for (int i = 0; i < d->n_plans; i++) plan_free(d, &d->plans[i]);
    free(d->packed);
    if (d->stream) d->stream_destroy(d->stream);
    if (d->engine) d->engine_destroy(d->engine);
    if (d->h) dlclose(d->h);
    free(d);
}

static bf16_plan *plan_for(loom_backend *be, dnnl_lib *d, int ta, int tb, int64_t M, int64_t N, int64_t K,
                           int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta) {
    for (int i = 0; i < d->n_plans; i++) {
        bf16_plan *p = &d->plans[i];
        if (p->ta == ta && p->tb == tb && p->M == M && p->N == N && p->K == K && p->lda == lda && p->ldb == ldb &&
            p->ldc == ldc && p->alpha == alpha && p->beta == beta)
            return p;
    }
    if (d->n_plans == MAX_PLANS) return NULL;
    dnnl_memory_desc_t ma, mb, mc;
    dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N};
    dnnl_dims_t sa = {ta ? 1 : lda, ta ? lda : 1}, sb = {tb ? 1 : ldb, tb ? ldb : 1}, sc = {ldc, 1};
    if (d->memory_desc_init_by_strides(&ma, 2, da, dnnl_bf16, sa) != dnnl_success ||
        d->memory_desc_init_by_strides(&mb, 2, db, dnnl_bf16, sb) != dnnl_success ||
        d->memory_desc_init_by_strides(&mc, 2, dc, dnnl_f32, sc) != dnnl_success)
        return NULL;
    /* B in the layout the kernel picks (packed), where A is plain, has the rows to pay for the reorder and B
     * fits the caches' scale: the weight gradients' tiles (transposed A) keep plain B (oneDNN picks it even
     * when offered any); below BF16_PACK_MIN_ROWS the reorder costs more than it saves (Zen 5, 2 threads:
     * M 256-512 lose 6-25%, M 1024 is even, M 2048-4096 gain 0-16% from run to run); a B past BF16_PACK_MAX
     * bytes gains nothing (GPT-2's head, 50257 x 768 at M 1024: 96.8 ms plain, 86.0 packed + 10.6 reorder) */
    dnnl_memory_desc_t mw = mb;
    if (!ta && d->pack_b && M >= BF16_PACK_MIN_ROWS && K * N * 2 <= BF16_PACK_MAX &&
        d->memory_desc_init_by_tag(&mw, 2, db, dnnl_bf16, dnnl_format_tag_any) != dnnl_success)
        return NULL;
    dnnl_matmul_desc_t md;
    if (d->matmul_desc_init(&md, &ma, &mw, NULL, &mc) != dnnl_success) return NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    bf16_plan *p = &d->plans[d->n_plans];
    memset(p, 0, sizeof *p);
    int ok = d->primitive_attr_create(&attr) == dnnl_success &&
             (alpha == 1.0f || d->primitive_attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success);
    if (ok && beta != 0.0f)
        ok = d->post_ops_create(&po) == dnnl_success && d->post_ops_append_sum(po, beta) == dnnl_success &&
             d->primitive_attr_set_post_ops(attr, po) == dnnl_success;
    ok = ok && d->primitive_desc_create(&pd, &md, attr, d->engine, NULL) == dnnl_success &&
         d->primitive_create(&p->prim, pd) == dnnl_success &&
         d->memory_create(&p->a, &ma, d->engine, DNNL_MEMORY_NONE) == dnnl_success &&
         d->memory_create(&p->b, &mb, d->engine, DNNL_MEMORY_NONE) == dnnl_success &&
         d->memory_create(&p->c, &mc, d->engine, DNNL_MEMORY_NONE) == dnnl_success;
    const dnnl_memory_desc_t *wq = ok ? d->primitive_desc_query_md(pd, dnnl_query_weights_md, 0) : NULL;
    ok = ok && wq;
    if (ok && !d->memory_desc_equal(wq, &mb)) {
        p->bp_bytes = d->memory_desc_get_size(wq);
        ok = d->reorder_primitive_desc_create(&rpd, &mb, d->engine, wq, d->engine, NULL) == dnnl_success &&
             d->primitive_create(&p->pack, rpd) == dnnl_success &&
             d->memory_create(&p->bp, wq, d->engine, DNNL_MEMORY_NONE) == dnnl_success;
    }
    if (ok && d->n_plans == 0) { /* say which implementation oneDNN chose */
        const char *impl = NULL;
        if (d->primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)&impl) == dnnl_success && impl)
            snprintf(be->bf16_kernel, sizeof be->bf16_kernel, "onednn matmul %s", impl);
    }
    if (rpd) d->primitive_desc_destroy(rpd);
    if (pd) d->primitive_desc_destroy(pd);
    if (po) d->post_ops_destroy(po);
    if (attr) d->primitive_attr_destroy(attr);
    if (!ok) {
        plan_free(d, p);
        return NULL;
    }
    p->ta = ta, p->tb = tb, p->M = M, p->N = N, p->K = K, p->lda = lda, p->ldb = ldb, p->ldc = ldc;
    p->alpha = alpha, p->beta = beta;
    d->n_plans++;
    return p;
}

void loom_cpu_bf16_load(loom_backend *be) {
    snprintf(be->bf16_kernel, sizeof be->bf16_kernel, "reference (fp32 GEMM on converted inputs: no libdnnl.so.2)");
    const char *want = getenv("LOOM_BF16_GEMM"); /* "reference": compare against the fallback */
    if (want && !strcmp(want, "reference")) {
        snprintf(be->bf16_kernel, sizeof be->bf16_kernel, "reference (fp32 GEMM on converted inputs: LOOM_BF16_GEMM)");
        return;
    }
    dnnl_lib *d = calloc(1, sizeof *d);
    if (!d) return;
    const char *pack = getenv("LOOM_BF16_PACK");
    d->pack_b = !(pack && !strcmp(pack, "0"));
    d->h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!d->h) {
        free(d);
        return;
    }
    int ok = 1;
#define F(ret, name, args) ok &= (*(void **)&d->name = dlsym(d->h, "dnnl_" #name)) != NULL;
    DNNL_FUNCS
#undef F
    if (!ok || d->engine_create(&d->engine, dnnl_cpu, 0) != dnnl_success ||
        d->stream_create(&d->stream, d->engine, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_lib_free(d);
        return;
    }
    /* oneDNN makes bf16 matmuls only where the CPU has bf16 or AVX-512 instructions (2.x: none on AVX2-only
     * CPUs such as Zen 3); ask for one product now, so that such a machine reports the reference it runs */
    if (!plan_for(be, d, 0, 0, 64, 64, 64, 64, 64, 64, 1.0f, 0.0f)) {
        dnnl_lib_free(d);
        snprintf(be->bf16_kernel, sizeof be->bf16_kernel,
                 "reference (fp32 GEMM on converted inputs: oneDNN has no bf16 matmul for this CPU)");
        return;
    }
    be->bf16 = d;
    be->bf16_free = dnnl_lib_free;
}

static int onednn_run(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta, float *C,
                      int64_t ldc) {
    dnnl_lib *d = be->bf16;
    bf16_plan *p = plan_for(be, d, ta, tb, M, N, K, lda, ldb, ldc, alpha, beta);
    if (!p) return 0;
    d->memory_set_data_handle(p->a, (void *)A);
    d->memory_set_data_handle(p->b, (void *)B);
    d->memory_set_data_handle(p->c, C);
    if (p->pack) {
        d->memory_set_data_handle(p->bp, d->packed);
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, p->b}, {DNNL_ARG_TO, p->bp}};
        if (d->primitive_execute(p->pack, d->stream, 2, r) != dnnl_success) return 0;
    }
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p->a}, {DNNL_ARG_WEIGHTS, p->pack ? p->bp : p->b}, {DNNL_ARG_DST, p->c}};
    if (d->primitive_execute(p->prim, d->stream, 3, args) != dnnl_success) return 0;
    d->stream_wait(d->stream);
    return 1;
}

/* the packed buffer, grown to hold plan p's B (run 0 of onednn_pieces, before C changes) */
static int packed_room(loom_backend *be, const bf16_plan *p) {
    dnnl_lib *d = be->bf16;
    if (p->bp_bytes <= d->packed_bytes) return 1;
    free(d->packed);
    d->packed = aligned_alloc(64, (p->bp_bytes + 63) / 64 * 64);
    d->packed_bytes = d->packed ? p->bp_bytes : 0;
    be->bf16_own_bytes = d->packed_bytes;
    return d->packed != NULL;
}

/* Tiles of C and pieces of K. oneDNN's kernels lose rate on some shapes that pieces avoid (Zen 5, 2 threads,
 * medians): a transposed first operand (the weight gradients) ~620-660 GFLOP/s whole against ~750 in tiles of
 * <= 768 x 768; a very long M (the head's weight gradient, 50257 rows: 400 whole, 708 in pieces) or K (its
 * input gradient: 613 whole, 707 in pieces of ~16k). Tiles are independent; K pieces sum into C (beta 1
 * after the first). */
enum { BF16_TILE_TRANS_A = 768, BF16_MAX_M = 16384, BF16_MAX_K = 16384 };

/* pieces of a dimension longer than `limit`: equal, rounded up to 64 */
static int64_t piece_of(int64_t n, int64_t limit) {
    if (n <= limit) return n;
    const int64_t pieces = (n + limit - 1) / limit, len = (n + pieces - 1) / pieces;
    return (len + 63) / 64 * 64;
}

/* run 0: only make every piece's primitive (so that a failure comes before C has changed and the caller can
 * still fall back); run 1: compute */
static int onednn_pieces(loom_backend *be, int run, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta, float *C,
                         int64_t ldc) {
    const int64_t lm = piece_of(M, ta ? BF16_TILE_TRANS_A : BF16_MAX_M), ln = piece_of(N, ta ? BF16_TILE_TRANS_A : N),
                  lk = piece_of(K, BF16_MAX_K);
    for (int64_t i = 0; i < M; i += lm)
        for (int64_t j = 0; j < N; j += ln)
            for (int64_t k = 0; k < K; k += lk) {
                const int64_t m = M - i < lm ? M - i : lm, n = N - j < ln ? N - j : ln, kk = K - k < lk ? K - k : lk;
                const float b = k ? 1.0f : beta;
                if (!run) {
                    const bf16_plan *p = plan_for(be, be->bf16, ta, tb, m, n, kk, lda, ldb, ldc, alpha, b);
                    if (!p || !packed_room(be, p)) return 0;
                    continue;
                }
                const uint16_t *a = ta ? A + k * lda + i : A + i * lda + k, *bb = tb ? B + j * ldb + k : B + k * ldb + j;
                if (!onednn_run(be, ta, tb, m, n, kk, alpha, a, lda, bb, ldb, b, C + i * ldc + j, ldc)) return 0;
            }
    return 1;
}

static int onednn_matmul(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta, float *C,
                       int64_t ldc) {
    return be->bf16 && onednn_pieces(be, 0, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) &&
           onednn_pieces(be, 1, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
#else
void loom_cpu_bf16_load(loom_backend *be) {
    snprintf(be->bf16_kernel, sizeof be->bf16_kernel, "reference (fp32 GEMM on converted inputs: built without dnnl.h)");
}
static int onednn_matmul(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta, float *C,
                       int64_t ldc) {
    (void)be; (void)ta; (void)tb; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    (void)beta; (void)C; (void)ldc;
    return 0;
}
#endif

static void cpu_f32_to_bf16(loom_backend *be, uint16_t *dst, const float *src, int64_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static) if (n > 65536) /* one token's keys and values: no threads to wake */
    for (int64_t i = 0; i < n; i++) dst[i] = loom_cpu_bf16_round(src[i]);
}

loom_status loom_cpu_f32_to_bf16(loom_backend *be, const loom_f32_to_bf16_args *a) {
    cpu_f32_to_bf16(be, a->dst, a->src, a->n);
    return LOOM_OK;
}

/* the reference's fp32 copy of a block of operand i (n floats), grow-only: a step makes the same products every
 * time, so after the first these are reused instead of being mapped and faulted in on every call (~1 GB a step
 * at GPT-2 124M B8 T256: 4% of its bf16 step on Zen 3). They lie outside loom's memory categories and runs
 * report them (loom_backend_own_bytes). */
static float *ref_operand(loom_backend *be, int i, size_t n) {
    if (n > be->bf16_ref_n[i]) {
        free(be->bf16_ref[i]);
        be->bf16_ref[i] = malloc(n * sizeof(float));
        be->bf16_ref_n[i] = be->bf16_ref[i] ? n : 0;
    }
    return be->bf16_ref[i];
}

/* The reference widens its operands a block at a time, so that its fp32 copies stay bounded (2^24 floats an
 * operand): whole, the head's backward products widened the loss's gradient of the logits (N x V) entire,
 * 1.6 GB at GPT-2 124M B8 T1024, more than bf16's pieces of logits save. An op(A) past the bound is cut along
 * the dimension that costs the GEMM least: its rows where M >= K (each block's call packs op(B) again, K x N),
 * else K (each block's call reads and writes C again, M x N; the pieces summed into C, beta 1 after the
 * first). op(B) is then cut along its columns where still past the bound (op(A)'s block packed again). */
enum { REF_BLOCK_FLOATS = 1 << 24 }; /* 64 MiB an operand */

static int64_t ref_block(int64_t n, int64_t other) {
    const int64_t len = REF_BLOCK_FLOATS / (other > 1 ? other : 1);
    return len < 1 ? 1 : len < n ? len : n;
}

/* rows x cols of the bf16 matrix src (leading dimension ld) from (r0, c0), widened into dst, packed */
static void widen_block(float *dst, const uint16_t *src, int64_t ld, int64_t r0, int64_t c0, int64_t rows,
                        int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[i * cols + j] = loom_cpu_bf16_widen(src[(r0 + i) * ld + c0 + j]);
}

static loom_status cpu_matmul_bf16(loom_backend *be, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                                 const uint16_t *A, int64_t lda, const uint16_t *B, int64_t ldb, float beta, float *C,
                                 int64_t ldc) {
    if (onednn_matmul(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return LOOM_OK;
    /* reference: the same products in fp32 from the bf16 values */
    const int whole_a = M * K <= REF_BLOCK_FLOATS, cut_k = !whole_a && M < K;
    const int64_t bm = whole_a || cut_k ? M : ref_block(M, K), bk = cut_k ? ref_block(K, M) : K, bn = ref_block(N, bk);
    const int64_t kk = bk > 1 ? bk : 1;
    float *fa = ref_operand(be, 0, (size_t)(bm * kk)), *fb = ref_operand(be, 1, (size_t)(bn * kk));
    LOOM_CHECK(fa && fb, LOOM_ERR_NOMEM, "out of memory for the reference bf16 GEMM");
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kk) {
        const int64_t kb = K - k0 < bk ? K - k0 : bk, ld_k = kb > 1 ? kb : 1; /* the blocks' rows are kb long */
        for (int64_t j = 0; j < N; j += bn) {
            const int64_t n = N - j < bn ? N - j : bn;
            if (tb) widen_block(fb, B, ldb, j, k0, n, kb);
            else widen_block(fb, B, ldb, k0, j, kb, n);
            for (int64_t i = 0; i < M; i += bm) {
                const int64_t m = M - i < bm ? M - i : bm;
                if (j == 0 || bm < M) { /* op(A)'s block of all M rows serves every block of op(B) */
                    if (ta) widen_block(fa, A, lda, k0, i, kb, m);
                    else widen_block(fa, A, lda, i, k0, m, kb);
                }
                loom_cpu_sgemm(be, ta, tb, m, n, kb, alpha, fa, ta ? m : ld_k, fb, tb ? ld_k : n, k0 ? 1.0f : beta,
                               C + i * ldc + j, ldc);
            }
        }
    }
    return LOOM_OK;
}


loom_status loom_cpu_matmul_bf16(loom_backend *be, const loom_matmul_bf16_args *a) {
    if (loom_cpu_fewrows_takes(be, a->trans_a, a->trans_b, a->M, a->K, 1)) { /* decoding (oneDNN reaches 20-45 GB/s
                                                                               on a few rows), or batch-invariant */
        if (loom_cpu_fewrows_bf16(a->M, a->N, a->K, a->alpha, a->A, a->lda, a->B, a->ldb, a->beta, a->C, a->ldc))
            return LOOM_OK;
        /* no memory to widen the rows (AVX2): the general path, unless that would change a row's bits */
        LOOM_CHECK(!be->batch_invariant, LOOM_ERR_NOMEM,
                   "out of memory widening %lld x %lld bf16 rows (batch-invariant)", (long long)a->M, (long long)a->K);
    }
    return cpu_matmul_bf16(be, a->trans_a, a->trans_b, a->M, a->N, a->K, a->alpha, a->A, a->lda, a->B, a->ldb, a->beta, a->C, a->ldc);
}
