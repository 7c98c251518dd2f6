/* One training step's time, predicted (include/loom/plan.h).
 *
 * Per pipeline stage and micro-batch, the kernels the step runs are listed as gpt.c runs them: every product
 * with its shape and orientation (forward A W^T, input gradient dY W, weight gradient dY^T X), attention by its
 * FLOPs (the kernels' own counts, backend.h), the memory-bound kernels by the elements they touch, and each
 * tensor- or sequence-parallel collective with its bytes. Each costs what the cluster file says this
 * machine takes. The stages' forward and backward times go through the pipeline schedule on a clock
 * (loom_pipeline_simulate, the schedule the run executes); data-parallel reductions, the optimizer over the
 * rank's slice and the memory manager's file traffic follow. The counts and bytes of every collective are
 * the ones the run's metrics report (tests/test_plan_time.py checks them against runs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/parallel.h"
#include "loom/plan.h"
#include "plan_impl.h"

static const char *const cost_names[LOOM_PT_COUNT] = {"gemm",    "attention", "memory-bound", "optimizer",
                                                      "dp comm", "tp comm",   "sp comm",      "pp comm",
                                                      "pp bubble", "offload",   "page refill"};
const char *loom_plan_cost_name(loom_plan_cost c) { return c >= 0 && c < LOOM_PT_COUNT ? cost_names[c] : "?"; }

/* what one rank does for one micro-batch through some layers (a chunk), forward or backward */
typedef struct {
    double s[LOOM_PT_COUNT];                              /* seconds by category */
    int64_t tp_calls[LOOM_COLL_COUNT], tp_bytes[LOOM_COLL_COUNT];
    int64_t sp_calls, sp_bytes;
} tally;

typedef struct {
    const loom_cluster *c;
    int threads, prec, tp, sp, tp_sp, host_tp, host_sp; /* host_*: the group's ranks on each host */
    int gpt, lora, dlogits16, head_grads_in_forward;
    int64_t B, T, N, Nr, C, Cq, Cl, F, fcw, V, KVl, Hl, hd;
} ctx;

static double tsum(const tally *t) {
    double s = 0;
    for (int i = 0; i < LOOM_PT_COUNT; i++) s += t->s[i];
    return s;
}

static void add_tally(tally *a, const tally *b, double times) {
    for (int i = 0; i < LOOM_PT_COUNT; i++) a->s[i] += times * b->s[i];
    for (int i = 0; i < LOOM_COLL_COUNT; i++) {
        a->tp_calls[i] += (int64_t)times * b->tp_calls[i];
        a->tp_bytes[i] += (int64_t)times * b->tp_bytes[i];
    }
    a->sp_calls += (int64_t)times * b->sp_calls;
    a->sp_bytes += (int64_t)times * b->sp_bytes;
}

/* bf16 training stores the norms' and the MLP activation's outputs in bf16 (gpt.c acts_bf16) */
static int acts16(const ctx *x) {
    return x->prec == LOOM_PRECISION_BF16 && !x->lora && (!x->tp_sp || x->C % 2 == 0);
}

/* a product of the step: forward (trans 0, M x N from K), its input gradient, its weight gradient; convert:
 * its activation operand is fp32, converted to bf16 first in a bf16 step */
static void gemm(const ctx *x, tally *t, int trans, int64_t M, int64_t N, int64_t K, int convert) {
    t->s[LOOM_PT_GEMM] += loom_cluster_gemm_seconds(x->c, x->threads, x->prec, trans, M, N, K);
    if (x->prec == LOOM_PRECISION_BF16 && convert)
        t->s[LOOM_PT_MEMBOUND] += loom_cluster_kernel_seconds(x->c, x->threads, x->prec, LOOM_KC_ELEMENTWISE,
                                                              (double)(trans == 2 ? K * N : M * K));
}

/* a product's backward: dX and (not frozen) dW, with X and dY each converted to bf16 first, or not */
static void linear_grads(const ctx *x, tally *t, int64_t rows, int64_t out, int64_t in, int convert_x,
                         int convert_dy) {
    gemm(x, t, 1, rows, in, out, convert_dy);
    if (!x->lora) gemm(x, t, 2, out, in, rows, convert_x);
}

/* forward Y (rows x out) = X (rows x in) W^T and, for the backward, dX and (not frozen) dW; x16: X is one of
 * the activations a bf16 step stores in bf16 (no conversion before its products) */
static void linear(const ctx *x, tally *t, int backward, int64_t rows, int64_t out, int64_t in, int x16) {
    const int convert_x = !(x16 && acts16(x));
    if (backward) linear_grads(x, t, rows, out, in, convert_x, 1);
    else gemm(x, t, 0, rows, out, in, convert_x);
}

static void mem(const ctx *x, tally *t, loom_kernel_class k, double elements) {
    t->s[k == LOOM_KC_OPTIMIZER ? LOOM_PT_OPTIMIZER : LOOM_PT_MEMBOUND] +=
        loom_cluster_kernel_seconds(x->c, x->threads, x->prec, k, elements);
}

/* a tp collective of `floats` (the whole vector; all-gather: this rank's part counted, as the metrics do) */
static void tp_coll(const ctx *x, tally *t, loom_coll op, int64_t floats) {
    if (x->tp <= 1) return;
    t->tp_calls[op]++;
    t->tp_bytes[op] += 4 * (op == LOOM_COLL_ALLGATHER ? floats / x->tp : floats);
    t->s[LOOM_PT_TP_COMM] += loom_cluster_coll_seconds(x->c, op, x->tp, x->host_tp, 4.0 * (double)floats);
}

/* the rows of a column-parallel product's input: all-gathered with Megatron-SP; x16: a norm's output, which a
 * bf16 step gathers in bf16 (half the words) */
static void all_rows(const ctx *x, tally *t, int x16) {
    if (x->tp_sp) tp_coll(x, t, LOOM_COLL_ALLGATHER, x16 && acts16(x) ? x->N * x->C / 2 : x->N * x->C);
}
/* a row-parallel product completed: summed over tp, or reduce-scattered to this rank's rows */
static void row_sum(const ctx *x, tally *t) {
    tp_coll(x, t, x->tp_sp ? LOOM_COLL_REDUCE_SCATTER : LOOM_COLL_ALLREDUCE, x->N * x->C);
}

/* causal attention over this rank's positions; ring attention (sp > 1): the rank holding the last positions,
 * which does the most (its causal block and a full block per earlier rank), and the ring's sends */
static void attention(const ctx *x, tally *t, int backward) {
    const double B = (double)x->B, H = (double)x->Hl, T = (double)x->T, hd = (double)x->hd;
    const double causal = (backward ? 5.0 : 2.0) * B * H * T * (x->sp > 1 ? T : T + 1) * hd;
    const double full = (backward ? 10.0 : 4.0) * B * H * T * T * hd * (double)(x->sp - 1);
    t->s[LOOM_PT_ATTENTION] += loom_cluster_attention_seconds(x->c, x->threads, x->prec, backward, causal + full,
                                                              x->T * x->sp);
    if (x->sp > 1) {
        const int64_t kv = x->B * x->T * 2 * x->KVl * x->hd; /* one block's keys and values */
        /* forward: the block visits the sp-1 other ranks; backward: the block with its gradients, and the
         * gradients' last hop home */
        const int64_t per = backward ? 2 * kv : kv, hops = backward ? x->sp : x->sp - 1;
        t->sp_calls += hops;
        t->sp_bytes += 4 * per * hops;
        t->s[LOOM_PT_SP_COMM] += (double)hops * loom_cluster_coll_seconds(x->c, LOOM_COLL_SENDRECV, 2,
                                                                                  x->host_sp > 1 ? 2 : 1, 4.0 * (double)per);
        mem(x, t, LOOM_KC_ELEMENTWISE, (double)(x->N * x->Cl) * (double)(x->sp - 1)); /* merges */
    }
}

/* a norm's pass, forward or backward (the class's rate is the mean of the two kernels per element) */
static void norm(const ctx *x, tally *t) { mem(x, t, LOOM_KC_NORM, (double)(x->Nr * x->C)); }

/* one block's forward (gpt.c layer_forward) */
static void layer_forward(const ctx *x, tally *t) {
    norm(x, t);
    all_rows(x, t, 1);
    linear(x, t, 0, x->N, x->Cq, x->C, 1);
    if (x->gpt) mem(x, t, LOOM_KC_ELEMENTWISE, (double)(x->N * x->Cq)); /* bias */
    else mem(x, t, LOOM_KC_ELEMENTWISE, (double)(x->N * x->Cq));        /* RoPE */
    attention(x, t, 0);
    linear(x, t, 0, x->N, x->C, x->Cl, 0);
    row_sum(x, t);
    mem(x, t, LOOM_KC_ELEMENTWISE, 2.0 * (double)(x->Nr * x->C)); /* residual and bias */
    norm(x, t);
    all_rows(x, t, 1);
    linear(x, t, 0, x->N, x->fcw, x->C, 1);
    mem(x, t, LOOM_KC_ACTIVATION, (double)(x->N * x->F));
    linear(x, t, 0, x->N, x->C, x->F, 1);
    row_sum(x, t);
    mem(x, t, LOOM_KC_ELEMENTWISE, 2.0 * (double)(x->Nr * x->C));
}

/* one block's backward, after what the recompute mode recomputes */
static void layer_backward(const ctx *x, tally *t, loom_recompute rc) {
    if (rc == LOOM_RECOMPUTE_FULL) layer_forward(x, t);
    if (rc == LOOM_RECOMPUTE_ATTN) {
        attention(x, t, 0);
        mem(x, t, LOOM_KC_ACTIVATION, (double)(x->N * x->F));
    }
    /* MLP: the output projection (its input gradient over all rows: all-gathered with SP), the activation,
     * the column-parallel fc (input gradient summed over tp), the norm */
    all_rows(x, t, 0);
    linear(x, t, 1, x->N, x->C, x->F, 1);
    mem(x, t, LOOM_KC_ACTIVATION, (double)(x->N * x->F));
    if (x->tp_sp) all_rows(x, t, 1); /* the norm's output again, for the weight gradient */
    linear(x, t, 1, x->N, x->fcw, x->C, 1);
    row_sum(x, t);
    norm(x, t);
    mem(x, t, LOOM_KC_ELEMENTWISE, 2.0 * (double)(x->Nr * x->C) + (double)(x->N * x->C));
    /* attention */
    all_rows(x, t, 0);
    linear(x, t, 1, x->N, x->C, x->Cl, 0);
    attention(x, t, 1);
    if (x->tp_sp) all_rows(x, t, 1);
    linear(x, t, 1, x->N, x->Cq, x->C, 1);
    mem(x, t, LOOM_KC_ELEMENTWISE, (double)(x->N * x->Cq));
    row_sum(x, t);
    norm(x, t);
    mem(x, t, LOOM_KC_ELEMENTWISE, 2.0 * (double)(x->Nr * x->C));
    if (x->tp_sp) tp_coll(x, t, LOOM_COLL_ALLREDUCE, 6 * x->C); /* the replicated gradients (6 slots, either family) */
}

static void embed_forward(const ctx *x, tally *t) {
    mem(x, t, LOOM_KC_EMBEDDING, (double)(x->N * x->C));
    row_sum(x, t);
}
static void embed_backward(const ctx *x, tally *t) {
    if (x->tp_sp) all_rows(x, t, 0);
    mem(x, t, LOOM_KC_EMBEDDING, (double)(x->N * x->C));
    if (x->tp_sp && x->gpt) tp_coll(x, t, LOOM_COLL_ALLREDUCE, x->T * x->C); /* the positions' gradient */
}
static void head_forward(const ctx *x, tally *t) {
    norm(x, t);
    all_rows(x, t, 1);
    /* where the loss writes the logits' gradient in bf16, or the forward makes the head's gradient products,
     * the logits are made and scored a piece of rows at a time */
    const int64_t piece = loom_model_head_piece(x->N, x->dlogits16 || x->head_grads_in_forward);
    for (int64_t r0 = 0; r0 < x->N; r0 += piece) {
        const int64_t rows = x->N - r0 < piece ? x->N - r0 : piece;
        linear(x, t, 0, rows, x->V, x->C, 1);
        mem(x, t, LOOM_KC_LOSS, (double)(rows * x->V));
        tp_coll(x, t, LOOM_COLL_ALLREDUCE, rows);     /* vocabulary-parallel loss: the rows' maxima, */
        tp_coll(x, t, LOOM_COLL_ALLREDUCE, 2 * rows); /* their sums and the targets' logits */
    }
}
static void head_backward(const ctx *x, tally *t) {
    /* a whole model's are made in the forward a piece at a time (gpt.c head_grads_in_forward): counted here */
    const int64_t piece = loom_model_head_piece(x->N, x->head_grads_in_forward);
    for (int64_t r0 = 0; r0 < x->N; r0 += piece)
        linear_grads(x, t, x->N - r0 < piece ? x->N - r0 : piece, x->V, x->C, !acts16(x), !x->dlogits16);
    row_sum(x, t);
    norm(x, t);
    if (x->tp_sp) tp_coll(x, t, LOOM_COLL_ALLREDUCE, 2 * x->C); /* the final norm's replicated gradients */
}

/* the layers [l0, l1) of a chunk, with the embedding or the head where it holds them: one micro-batch */
static void chunk(const ctx *x, int64_t l0, int64_t l1, int embed, int head, loom_recompute rc, tally *f,
                  tally *b) {
    tally lf, lb;
    memset(&lf, 0, sizeof lf);
    memset(&lb, 0, sizeof lb);
    memset(f, 0, sizeof *f);
    memset(b, 0, sizeof *b);
    layer_forward(x, &lf);
    layer_backward(x, &lb, rc);
    if (embed) embed_forward(x, f);
    add_tally(f, &lf, (double)(l1 - l0));
    if (head) {
        head_forward(x, f);
        head_backward(x, b);
    }
    add_tally(b, &lb, (double)(l1 - l0));
    if (embed) embed_backward(x, b);
}

/* floats of [lo, hi) within rank 0's slice [0, S) (the metrics are rank 0's: an all-gather counts its part) */
static int64_t part0(int64_t lo, int64_t hi, int64_t S) {
    const int64_t e = hi < S ? hi : S;
    return e > lo ? e - lo : 0;
}

/* The dp (x sp) group's collectives per step, the ZeRO stage's schedule (zero.c), each unit a bucket: stages
 * 0-1 all-reduce each unit after the last micro-batch; 2-3 reduce-scatter each unit every micro-batch; 1-2
 * all-gather the updated slices once; 3 all-gathers a unit before each use: forward every unit (a tied head
 * the embedding's again), backward the blocks (the head is kept from the forward; the embedding's backward
 * reads no parameters). The
 * gradient norm's sum of squares over the slices: one 8-byte all-reduce. *refill: the floats written again
 * into pages given back (zero.c drops a unit's gradients after its reduce-scatter, at stage 3 its parameters
 * after use): each reduce-scatter's unit, each gather's. */
static void dp_traffic(const loom_cluster *c, const loom_model *m, int stage, int red, int per_host, int64_t micro,
                       int tied, loom_plan_time_result *r, double *seconds, double *refill) {
    *seconds = *refill = 0.0;
    const int units = loom_model_num_units(m);
    const int64_t n = loom_model_buffer_size(m), S = (n + red - 1) / red;
#define COLL(op, bytes_total, bytes_counted)                                                           \
    do {                                                                                              \
        r->dp_calls[op]++;                                                                            \
        r->dp_bytes[op] += (int64_t)(bytes_counted);                                                  \
        *seconds += loom_cluster_coll_seconds(c, op, red, per_host, (double)(bytes_total));             \
    } while (0)
    for (int u = 0; u < units; u++) {
        int64_t lo, hi;
        loom_model_unit_range(m, u, &lo, &hi);
        const int64_t gathers = stage < 3 ? 0 : loom_plan_unit_gathers(u, units, micro, tied);
        *refill += (double)(hi - lo) * (double)((stage >= 2 ? micro : 0) + gathers);
        if (red <= 1) continue; /* one rank (over a memory budget: stage 3) refills, and issues no collectives */
        const int64_t b = 4 * (hi - lo);
        if (stage <= 1) COLL(LOOM_COLL_ALLREDUCE, b, b);
        for (int64_t k = 0; stage >= 2 && k < micro; k++) COLL(LOOM_COLL_REDUCE_SCATTER, b, b);
        for (int64_t k = 0; k < gathers; k++) COLL(LOOM_COLL_ALLGATHER, b, 4 * part0(lo, hi, S));
    }
    if (red <= 1) return;
    if (stage == 1 || stage == 2) COLL(LOOM_COLL_ALLGATHER, 4 * n, 4 * part0(0, n, S));
    if (stage >= 1) COLL(LOOM_COLL_ALLREDUCE, 8, 8);
#undef COLL
}

/* Writing `floats` into pages given back: each thread takes its own pages' faults, so more threads never
 * refill slower than one does; a figure above the one-thread one is the benchmark's own stall (with
 * MADV_HUGEPAGE the kernel may compact memory at a fault: 0.07-5.1 ns per float at 2 threads between two
 * passes of one `loom bench cluster` here, 0.12-0.14 at 1 thread; the run with 364M refilled floats per
 * step bounds its own cost below 1.4 ns) */
static double refill_seconds(const loom_cluster *c, int threads, int prec, double floats) {
    const double s = loom_cluster_kernel_seconds(c, threads, prec, LOOM_KC_REFILL, floats);
    const double one = threads > 1 ? loom_cluster_kernel_seconds(c, 1, prec, LOOM_KC_REFILL, floats) : s;
    return one > 0 && one < s ? one : s;
}

/* the members of a group (`size` ranks, `stride` apart in the world's order) on each host of rph ranks */
static int on_host(int stride, int size, int rph) {
    if (stride * size <= rph) return size;
    const int k = stride >= rph ? 1 : rph / stride;
    return k < size ? k : size;
}

loom_status loom_plan_time(const loom_run_config *rc, int world, const loom_cluster *c, loom_plan_time_result *r) {
    return loom_plan_time_internal(rc, world, c, 1, r);
}

loom_status loom_plan_time_internal(const loom_run_config *rc, int world, const loom_cluster *c, int memory,
                                    loom_plan_time_result *r) {
    memset(r, 0, sizeof *r);
    const loom_train_config *t = &rc->train;
    const loom_model_config *mc = &rc->model;
    loom_mesh_shape s;
    LOOM_CALL(loom_mesh_shape_parse(t->mesh, &s));
    if (!strstr(t->mesh, "dp=")) s.dp = world / (s.pp * s.tp * s.sp);
    LOOM_CHECK(s.dp >= 1 && s.dp * s.pp * s.tp * s.sp == world, LOOM_ERR_CONFIG, "mesh '%s' does not tile %d ranks",
               t->mesh, world);
    LOOM_CHECK(t->batch % s.dp == 0 && t->seq_len % s.sp == 0 && mc->n_head % s.tp == 0 &&
                   mc->n_kv_head % s.tp == 0 && mc->d_ff % s.tp == 0,
               LOOM_ERR_CONFIG, "the layout does not divide the model and batch evenly");
    r->dp = s.dp;
    r->tp = s.tp;
    r->pp = s.pp;
    r->sp = s.sp;
    const int v = s.pp > 1 && t->pp_schedule ? (int)t->pp_virtual : 1;
    const int64_t micro = t->grad_accum;
    ctx x;
    memset(&x, 0, sizeof x);
    x.c = c;
    x.prec = t->precision;
    x.tp = s.tp;
    x.sp = s.sp;
    x.tp_sp = t->tp_seq_parallel && s.tp > 1;
    x.gpt = mc->family == LOOM_FAMILY_GPT2;
    x.lora = t->lora[0] != 0;
    /* bf16 with one micro-batch in flight where the head is: the loss writes the logits' gradient in bf16
     * (gpt.c dlogits16), the head's products read it unconverted */
    const int head_slots = s.pp > 1 ? loom_pipeline_schedule_slots(s.pp, s.pp - 1, (loom_pp_schedule)t->pp_schedule,
                                                                    v, (int)t->grad_accum)
                                    : 1;
    x.dlogits16 = x.prec == LOOM_PRECISION_BF16 && head_slots == 1;
    x.head_grads_in_forward = s.pp == 1; /* a whole model, one micro-batch in flight */
    /* ranks per host: they fill hosts in order, tp fastest; a group is within a host while it fits */
    const int per_host = c->gpu ? c->cores_per_host : (world < c->cores_per_host * c->hosts ? (world + c->hosts - 1) / c->hosts : world / c->hosts);
    const int rph = per_host < 1 ? 1 : per_host;
    x.host_tp = on_host(1, s.tp, rph);
    x.host_sp = on_host(s.tp, s.sp, rph);
    const int host_dp = on_host(s.tp, s.sp * s.dp, rph); /* ZeRO's group: dp x sp, stride tp */
    const int host_pp = on_host(s.tp * s.sp * s.dp, s.pp, rph) > 1 ? 2 : 1;
    x.threads = c->gpu ? 0 : (t->threads > 0 ? (int)t->threads : (c->cores_per_host / rph > 0 ? c->cores_per_host / rph : 1));
    /* CPU ranks asking for more cores than their host has: they share them (see below) */
    const double demand = !c->gpu && (double)rph * x.threads > c->cores_per_host
                              ? (double)rph * x.threads / c->cores_per_host : 1.0;
    const int hosts_used = (world + rph - 1) / rph;
    x.B = t->batch / s.dp;
    x.T = t->seq_len / s.sp;
    x.N = x.B * x.T;
    x.Nr = x.tp_sp ? x.N / s.tp : x.N;
    x.C = mc->d_model;
    x.hd = mc->d_model / mc->n_head;
    x.Hl = mc->n_head / s.tp;
    x.KVl = mc->n_kv_head / s.tp;
    x.Cl = x.Hl * x.hd;
    x.Cq = (x.Hl + 2 * x.KVl) * x.hd;
    x.F = mc->d_ff / s.tp;
    x.fcw = x.gpt ? x.F : 2 * x.F;
    x.V = (mc->vocab_size + s.tp - 1) / s.tp;

    /* per virtual stage g = c p + r: its chunk's forward and backward seconds */
    const int G = s.pp * v;
    double *fwd_s = calloc((size_t)G, sizeof(double)), *bwd_s = calloc((size_t)G, sizeof(double));
    double *busy = calloc((size_t)s.pp, sizeof(double));
    int64_t *bounds = calloc((size_t)G + 1, sizeof(int64_t));
    tally *stage_tally = calloc((size_t)s.pp, sizeof(tally));
    loom_status st = LOOM_OK;
    if (!fwd_s || !bwd_s || !busy || !bounds || !stage_tally) {
        st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
        goto out;
    }
    if (s.pp > 1) {
        loom_model_part part;
        st = loom_pipeline_partition(mc, s.pp, v, 0, &part, bounds);
        if (st != LOOM_OK) goto out;
    } else {
        bounds[1] = mc->n_layer;
    }
    for (int g = 0; g < G; g++) {
        tally f, b;
        chunk(&x, bounds[g], bounds[g + 1], g == 0, g == G - 1, t->recompute, &f, &b);
        fwd_s[g] = tsum(&f);
        bwd_s[g] = tsum(&b);
        tally *sum = &stage_tally[g % s.pp];
        add_tally(sum, &f, (double)micro);
        add_tally(sum, &b, (double)micro);
    }
    /* the pipeline: activations (and their gradients) point to point, N x C floats (Megatron-SP: a rank's rows) */
    double p2p = 0.0, step_compute;
    if (s.pp > 1) {
        p2p = loom_cluster_coll_seconds(c, LOOM_COLL_SENDRECV, 2, host_pp, 4.0 * (double)(x.Nr * x.C));
        step_compute = loom_pipeline_simulate(s.pp, (loom_pp_schedule)t->pp_schedule, v, (int)micro, fwd_s, bwd_s, p2p, busy);
        if (step_compute < 0) {
            st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
            goto out;
        }
    } else {
        step_compute = (double)micro * (fwd_s[0] + bwd_s[0]);
        busy[0] = step_compute;
    }
    /* the slowest stage's step, by category: its own work, the schedule's idle time as the bubble */
    int worst = 0;
    for (int p = 1; p < s.pp; p++)
        if (busy[p] > busy[worst]) worst = p;
    for (int k = 0; k < LOOM_PT_COUNT; k++) r->breakdown_s[k] = stage_tally[worst].s[k];
    if (s.pp > 1) {
        const double transfers = (double)micro * 2.0 * p2p * (worst > 0 && worst < s.pp - 1 ? 2.0 : 1.0) * v;
        r->breakdown_s[LOOM_PT_PP_COMM] = transfers < step_compute - busy[worst] ? transfers : step_compute - busy[worst];
        r->breakdown_s[LOOM_PT_PP_BUBBLE] = step_compute - busy[worst] - r->breakdown_s[LOOM_PT_PP_COMM];
        r->pp_bubble = (step_compute - busy[worst]) / step_compute;
    }
    /* Oversubscribed CPU cores are shared, and work-conserving: a rank blocked in a wait yields its core (the
     * waits poll with sched_yield), so the step takes at least all ranks' work over the cores, and no less than
     * the schedule's own length. */
    if (demand > 1.0) {
        double work = 0.0;
        for (int p = 0; p < s.pp; p++) work += busy[p];
        work *= (double)(s.dp * s.tp * s.sp) * x.threads / ((double)c->cores_per_host * hosts_used);
        const double f = work > step_compute ? work / step_compute : 1.0;
        for (int k = 0; k < LOOM_PT_COUNT; k++) r->breakdown_s[k] *= f;
        busy[worst] *= f;
        step_compute *= f;
    }
    for (int k = 0; k < LOOM_COLL_COUNT; k++) {
        r->tp_calls[k] = stage_tally[0].tp_calls[k];
        r->tp_bytes[k] = stage_tally[0].tp_bytes[k];
    }
    if (s.tp > 1) { /* the gradient norm's sum of squares over the tp cuts: one 8-byte all-reduce */
        r->tp_calls[LOOM_COLL_ALLREDUCE]++;
        r->tp_bytes[LOOM_COLL_ALLREDUCE] += 8;
    }
    r->sp_calls = stage_tally[0].sp_calls;
    r->sp_bytes = stage_tally[0].sp_bytes;

    /* the optimizer and data parallelism: the memory prediction's layout and stage for the slowest stage */
    loom_plan_rank pr; /* without a memory budget the stage asked for runs, nothing offloaded */
    memset(&pr, 0, sizeof pr);
    pr.stage = (int)t->zero;
    if (memory || t->mem_budget > 0) st = loom_plan_memory_rank(rc, world, worst * s.dp * s.sp * s.tp, &pr);
    if (st != LOOM_OK) goto out;
    {
        loom_model_part part = {.n_chunks = v, .first = worst == 0, .last = worst == s.pp - 1};
        for (int k = 0; k < v; k++) { /* the worst stage's chunks, from the partition's bounds */
            part.layer_lo[k] = bounds[k * s.pp + worst];
            part.layer_hi[k] = bounds[k * s.pp + worst + 1];
        }
        /* what the optimizer updates and dp reduces: this stage's flat buffer, or a LoRA run's adapters
         * (whose frozen weights have no gradients; LoRA runs one whole model per rank) */
        loom_model *m = NULL;
        loom_lora_config lc;
        if (x.lora) {
            st = loom_lora_config_parse(t->lora, &lc);
            if (st == LOOM_OK) st = loom_model_init_lora_layout(mc, &lc, &m);
        } else {
            st = loom_model_init_layout(mc, s.pp > 1 ? &part : NULL, s.tp, 0, &m);
        }
        if (st != LOOM_OK) goto out;
        const int64_t n = loom_model_buffer_size(m);
        r->model_flops = loom_model_train_flops_per_token(m, t->seq_len); /* per token, as the run counts */
        const int red = s.dp * s.sp;
        const int64_t slice = pr.stage >= 1 ? (n + red - 1) / red : n;
        /* every rank updates at once: oversubscribed, they share the cores */
        double opt = demand * loom_cluster_kernel_seconds(c, x.threads, x.prec, LOOM_KC_OPTIMIZER, (double)slice);
        if (t->precision != LOOM_PRECISION_FP32 && !x.lora) /* the low-precision copy refreshed */
            opt += demand * loom_cluster_kernel_seconds(c, x.threads, x.prec, LOOM_KC_ELEMENTWISE, (double)n);
        r->breakdown_s[LOOM_PT_OPTIMIZER] += opt;
        double dp_s, refill;
        dp_traffic(c, m, pr.stage, red, host_dp, micro, mc->tie_embeddings && s.pp == 1, r, &dp_s, &refill);
        r->dp_refill_floats = (int64_t)refill;
        r->breakdown_s[LOOM_PT_REFILL] =
            demand * refill_seconds(c, x.threads, x.prec, refill);
        const int units = loom_model_num_units(m);
        loom_model_free(&m);
        /* a GPU's collectives (NCCL) run beside the backward pass; a CPU's take the cores that compute */
        if (c->gpu) {
            const double hide = 0.8 * (double)micro * bwd_s[worst];
            dp_s = dp_s > hide ? dp_s - hide : dp_s / units;
        }
        r->breakdown_s[LOOM_PT_DP_COMM] = dp_s;
        if (pr.offload_mask) { /* the files' reads and writes (loom_plan_rank's count of zero.c's) */
            r->offload_read_bytes = pr.file_read_bytes;
            r->offload_write_bytes = pr.file_write_bytes;
            r->breakdown_s[LOOM_PT_OFFLOAD] =
                (c->disk_read_bps > 0 ? (double)pr.file_read_bytes / c->disk_read_bps : 0.0) +
                (c->disk_write_bps > 0 ? (double)pr.file_write_bytes / c->disk_write_bps : 0.0);
        }
        r->peak_bytes = 0;
        for (int k = 0; k < LOOM_MEM_N_CATEGORIES; k++) r->peak_bytes += pr.bytes[k];
    }
    r->step_s = step_compute - busy[worst]; /* the bubble and the transfers */
    for (int k = 0; k < LOOM_PT_COUNT; k++)
        if (k != LOOM_PT_PP_BUBBLE && k != LOOM_PT_PP_COMM) r->step_s += r->breakdown_s[k];
    const double tokens = (double)t->batch * (double)t->seq_len * (double)micro;
    r->model_flops *= tokens;
    r->tokens_per_sec = tokens / r->step_s;
    const double peak = c->peak_gflops[t->precision] > 0 ? c->peak_gflops[t->precision] : c->peak_gflops[0];
    /* a GPU's peak per rank; a CPU host's (its cores, however many ranks share them) per host used */
    const double world_peak = c->gpu ? peak * world : peak * (double)hosts_used;
    r->mfu = r->model_flops / r->step_s / (world_peak * 1e9);
out:
    free(fwd_s);
    free(bwd_s);
    free(busy);
    free(bounds);
    free(stage_tally);
    return st;
}
