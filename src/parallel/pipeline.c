/* Pipeline parallelism (include/loom/parallel.h): partition, schedules (1F1B, interleaved) and the step.
 *
 * Chunks (virtual stages) are numbered g = 0 .. p*v-1 along the model; rank r holds g = c*p + r for its
 * local chunks c = 0 .. v-1 (Megatron's interleaving; v = 1 is plain 1F1B). A chunk's output goes to the
 * rank of g+1, its input gradient to the rank of g-1. Sends are non-blocking and complete in the
 * background; a receive is posted when the schedule needs it, and the time blocked there is the stage's
 * idle time (the bubble). Every op of a rank's schedule depends only on ops earlier in some rank's
 * schedule, so blocking receives with non-blocking sends cannot deadlock. */
#include <stdlib.h>
#include <string.h>

#include "loom/log.h"
#include "loom/parallel.h"

typedef struct {
    int fwd, chunk, mb;
} pp_op;

struct loom_pipeline {
    loom_comm *pp, *embed; /* borrowed: the pipeline axis; first + last stage (tied embedding), or NULL */
    int p, r, v, m;
    pp_op *ops;
    int n_ops, slots;
    int *slot_of;          /* [m] */
    int *free_slots, n_free;
    loom_comm_req *fwd_send, *bwd_send; /* per slot: the last forward and backward send from it */
    float *xbuf, *dybuf;   /* received activations and gradients (N x C), the model's backend's buffers */
    loom_backend *be;
    int64_t cap_n;
    loom_pipeline_stats stats;
};

/* ---- partition ---- */

loom_status loom_pipeline_partition(const loom_model_config *mc, int p, int v, int rank, loom_model_part *part,
                                    int64_t *bounds) {
    const int K = p * v;
    const int64_t L = mc->n_layer;
    LOOM_CHECK(p >= 1 && v >= 1 && v <= LOOM_MAX_CHUNKS && rank >= 0 && rank < p, LOOM_ERR_INVALID_ARG,
               "pipeline of %d stages x %d chunks, rank %d", p, v, rank);
    LOOM_CHECK(L >= K, LOOM_ERR_CONFIG, "%lld blocks cannot fill %d pipeline chunks (pp=%d x %d virtual stages)",
               (long long)L, K, p, v);
    /* modelled cost per token (FLOPs of forward + backward): a block's matrices, and the head's on the last
     * chunk; the embedding (a row gather) is free. Contiguous chunks minimising the largest cost. */
    const double C = (double)mc->d_model, F = (double)mc->d_ff;
    const double kv = (double)mc->n_kv_head / (double)mc->n_head;
    const double block = 6.0 * (C * C * (2.0 + 2.0 * kv) + C * F * (mc->family == LOOM_FAMILY_LLAMA ? 3.0 : 2.0));
    const double head = 6.0 * C * (double)mc->vocab_size;
    int64_t *b = calloc((size_t)K + 1, sizeof(int64_t));
    LOOM_CHECK(b != NULL, LOOM_ERR_NOMEM, "out of memory");
    double lo = block, hi = block * (double)L + head;
    /* the smallest cap with which a greedy cut fits in K chunks (chunk costs are sums of whole blocks and the
     * head, so a cap known within 1e-7 of a block gives the same cut as the exact one) */
    for (int it = 0; it < 60 && hi - lo > 1e-7 * block; it++) {
        const double cap = 0.5 * (lo + hi);
        int k = 0;
        double acc = 0.0;
        int ok = 1;
        for (int64_t l = 0; l < L && ok; l++) {
            const double c = block + (l == L - 1 ? head : 0.0);
            const int64_t left = L - l, chunks_left = K - k - 1;
            if (acc > 0.0 && (acc + c > cap || left <= chunks_left)) {
                if (++k >= K) ok = 0;
                acc = 0.0;
            }
            acc += c;
            if (acc > cap) ok = 0;
        }
        if (ok && k == K - 1) hi = cap;
        else lo = cap;
    }
    { /* the cut at the cap found */
        int k = 0;
        double acc = 0.0;
        b[0] = 0;
        for (int64_t l = 0; l < L; l++) {
            const double c = block + (l == L - 1 ? head : 0.0);
            const int64_t left = L - l, chunks_left = K - k - 1;
            if (acc > 0.0 && k < K - 1 && (acc + c > hi * (1 + 1e-9) || left <= chunks_left)) {
                b[++k] = l;
                acc = 0.0;
            }
            acc += c;
        }
        while (k < K - 1) b[++k] = L; /* unreachable with L >= K; keeps b well formed */
        b[K] = L;
    }
    memset(part, 0, sizeof *part);
    part->n_chunks = v;
    for (int c = 0; c < v; c++) {
        part->layer_lo[c] = b[c * p + rank];
        part->layer_hi[c] = b[c * p + rank + 1];
    }
    part->first = rank == 0;
    part->last = rank == p - 1;
    if (bounds) memcpy(bounds, b, ((size_t)K + 1) * sizeof(int64_t));
    free(b);
    return LOOM_OK;
}

/* ---- schedules ---- */

static int build_schedule(int p, int r, int v, int m, pp_op *ops) {
    int n = 0;
    if (v == 1) {
        const int warm = p - r - 1 < m ? p - r - 1 : m;
        for (int i = 0; i < warm; i++) ops[n++] = (pp_op){1, 0, i};
        for (int i = 0; i < m - warm; i++) {
            ops[n++] = (pp_op){1, 0, warm + i};
            ops[n++] = (pp_op){0, 0, i};
        }
        for (int i = m - warm; i < m; i++) ops[n++] = (pp_op){0, 0, i};
        return n;
    }
    /* Megatron's interleaved order: micro-batches in groups of p, each group through chunk 0, then 1, ... */
    const int total = m * v;
    int warm = (p - r - 1) * 2 + (v - 1) * p;
    if (warm > total) warm = total;
#define FWD(k) ((pp_op){1, ((k) / p) % v, ((k) / (p * v)) * p + (k) % p})
#define BWD(k) ((pp_op){0, v - 1 - ((k) / p) % v, ((k) / (p * v)) * p + (k) % p})
    for (int i = 0; i < warm; i++) ops[n++] = FWD(i);
    for (int i = 0; i < total - warm; i++) {
        ops[n++] = FWD(warm + i);
        ops[n++] = BWD(i);
    }
    for (int i = total - warm; i < total; i++) ops[n++] = BWD(i);
#undef FWD
#undef BWD
    return n;
}

/* micro-batches alive at once on rank r: from their first forward to their last backward (chunk 0's) */
static int count_slots(const pp_op *ops, int n_ops) {
    int live = 0, most = 0;
    for (int i = 0; i < n_ops; i++) {
        if (ops[i].fwd && ops[i].chunk == 0) live++;
        if (live > most) most = live;
        if (!ops[i].fwd && ops[i].chunk == 0) live--;
    }
    return most;
}

int loom_pipeline_schedule_slots(int pp, int rank, loom_pp_schedule sched, int v, int micro) {
    if (sched == LOOM_PP_1F1B) v = 1;
    pp_op *ops = calloc((size_t)(2 * micro * v), sizeof(pp_op));
    if (!ops) return micro; /* the bound: every micro-batch at once */
    const int slots = count_slots(ops, build_schedule(pp, rank, v, micro, ops));
    free(ops);
    return slots;
}

/* The schedule run on a clock: every rank executes its ops in order, an op starting when its rank is free and
 * its input is there (a forward after the previous chunk's forward of that micro-batch, a backward after the
 * next chunk's backward, the last chunk's after its own forward), plus p2p seconds when the two chunks are on
 * different ranks. Rounds over the ranks until every op has run: the schedules cannot deadlock. */
double loom_pipeline_simulate(int p, loom_pp_schedule sched, int v, int m, const double *fwd_s, const double *bwd_s,
                              double p2p_s, double *busy_out) {
    if (sched == LOOM_PP_1F1B) v = 1;
    const int G = p * v, per = 2 * m * v;
    pp_op *ops = calloc((size_t)p * (size_t)per, sizeof(pp_op));
    int *n_ops = calloc((size_t)p, sizeof(int)), *next = calloc((size_t)p, sizeof(int));
    double *done = malloc((size_t)2 * (size_t)G * (size_t)m * sizeof(double)), *clock = calloc((size_t)p, sizeof(double));
    double makespan = -1.0;
    if (!ops || !n_ops || !next || !done || !clock) goto out;
    for (int r = 0; r < p; r++) n_ops[r] = build_schedule(p, r, v, m, ops + (size_t)r * per);
    for (int64_t i = 0; i < 2 * (int64_t)G * m; i++) done[i] = -1.0;
#define DONE(g, mb, f) done[((int64_t)(g) * m + (mb)) * 2 + (f)]
    for (int left = 1, progress = 1; left && progress;) {
        left = progress = 0;
        for (int r = 0; r < p; r++) {
            while (next[r] < n_ops[r]) {
                const pp_op *o = &ops[(size_t)r * per + next[r]];
                const int g = o->chunk * p + r;
                const int dep_g = o->fwd ? g - 1 : (g == G - 1 ? g : g + 1), dep_f = o->fwd || g == G - 1;
                double ready = 0.0;
                if (!(o->fwd && g == 0)) {
                    const double d = DONE(dep_g, o->mb, dep_f);
                    if (d < 0) break;
                    ready = d + (dep_g != g && dep_g % p != r ? p2p_s : 0.0);
                }
                const double start = clock[r] > ready ? clock[r] : ready;
                clock[r] = start + (o->fwd ? fwd_s[g] : bwd_s[g]);
                if (busy_out) busy_out[r] += o->fwd ? fwd_s[g] : bwd_s[g];
                DONE(g, o->mb, o->fwd) = clock[r];
                next[r]++;
                progress = 1;
            }
            if (next[r] < n_ops[r]) left = 1;
        }
        if (!left) makespan = 0.0;
    }
#undef DONE
    for (int r = 0; makespan >= 0.0 && r < p; r++)
        if (clock[r] > makespan) makespan = clock[r];
out:
    free(ops);
    free(n_ops);
    free(next);
    free(done);
    free(clock);
    return makespan;
}

loom_status loom_pipeline_init(loom_comm *pp, loom_comm *embed, loom_pp_schedule sched, int v, int micro,
                               loom_pipeline **out) {
    *out = NULL;
    const int p = loom_comm_size(pp), r = loom_comm_rank(pp);
    if (sched == LOOM_PP_1F1B) v = 1;
    LOOM_CHECK(micro >= 1, LOOM_ERR_CONFIG, "a pipeline needs micro-batches (train.grad_accum >= 1)");
    LOOM_CHECK(sched == LOOM_PP_1F1B || (v >= 2 && micro % p == 0), LOOM_ERR_CONFIG,
               "the interleaved schedule needs >= 2 virtual stages and micro-batches (train.grad_accum = %d) "
               "a multiple of pp = %d", micro, p);
    loom_pipeline *pl = calloc(1, sizeof *pl);
    LOOM_CHECK(pl != NULL, LOOM_ERR_NOMEM, "out of memory");
    pl->pp = pp;
    pl->embed = embed;
    pl->p = p;
    pl->r = r;
    pl->v = v;
    pl->m = micro;
    pl->ops = calloc((size_t)(2 * micro * v), sizeof(pp_op));
    pl->slot_of = calloc((size_t)micro, sizeof(int));
    if (!pl->ops || !pl->slot_of) {
        loom_pipeline_free(&pl);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    pl->n_ops = build_schedule(p, r, v, micro, pl->ops);
    pl->slots = count_slots(pl->ops, pl->n_ops);
    pl->free_slots = calloc((size_t)pl->slots, sizeof(int));
    pl->fwd_send = calloc((size_t)pl->slots, sizeof(loom_comm_req));
    pl->bwd_send = calloc((size_t)pl->slots, sizeof(loom_comm_req));
    if (!pl->free_slots || !pl->fwd_send || !pl->bwd_send) {
        loom_pipeline_free(&pl);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    *out = pl;
    return LOOM_OK;
}

void loom_pipeline_free(loom_pipeline **ppl) {
    if (!ppl || !*ppl) return;
    loom_pipeline *pl = *ppl;
    for (int s = 0; pl->fwd_send && s < pl->slots; s++) /* nothing may stay in flight on freed buffers */
        if (loom_comm_wait(&pl->fwd_send[s]) != LOOM_OK || loom_comm_wait(&pl->bwd_send[s]) != LOOM_OK) break;
    free(pl->ops);
    free(pl->slot_of);
    free(pl->free_slots);
    free(pl->fwd_send);
    free(pl->bwd_send);
    if (pl->be) {
        loom_buf_free(pl->be, NULL, LOOM_MEM_ACTS, pl->xbuf, (size_t)pl->cap_n * sizeof(float));
        loom_buf_free(pl->be, NULL, LOOM_MEM_ACTS, pl->dybuf, (size_t)pl->cap_n * sizeof(float));
    }
    free(pl);
    *ppl = NULL;
}

int loom_pipeline_slots(const loom_pipeline *pl) { return pl->slots; }
loom_pipeline_stats loom_pipeline_get_stats(const loom_pipeline *pl) { return pl->stats; }

double loom_pipeline_bubble_theory(const loom_pipeline *pl) {
    const double p = pl->p, work = (double)pl->m * (double)pl->v;
    return (p - 1.0) / (work + p - 1.0);
}

/* ---- the step ---- */

static loom_status buffers(loom_pipeline *pl, const loom_model *m, int64_t n) {
    if (n <= pl->cap_n) return LOOM_OK;
    if (pl->be) {
        loom_buf_free(pl->be, NULL, LOOM_MEM_ACTS, pl->xbuf, (size_t)pl->cap_n * sizeof(float));
        loom_buf_free(pl->be, NULL, LOOM_MEM_ACTS, pl->dybuf, (size_t)pl->cap_n * sizeof(float));
    }
    pl->xbuf = pl->dybuf = NULL;
    pl->cap_n = n; /* the size every free of these buffers gives */
    pl->be = loom_model_backend(m);
    LOOM_CALL(loom_buf_alloc(pl->be, NULL, LOOM_MEM_ACTS, (size_t)n * sizeof(float), (void **)&pl->xbuf));
    return loom_buf_alloc(pl->be, NULL, LOOM_MEM_ACTS, (size_t)n * sizeof(float), (void **)&pl->dybuf);
}

static int tag_of(const loom_pipeline *pl, int g, int mb, int fwd) { return ((mb * pl->p * pl->v + g) * 2 + !fwd) % 32000; }

/* a receive the schedule needs now: the time blocked is this stage's idle time */
static loom_status recv_now(loom_pipeline *pl, float *buf, int64_t n, int src, int tag) {
    loom_comm_req rq;
    LOOM_CALL(loom_comm_irecv_f32(pl->pp, buf, n, src, tag, &rq));
    const double t0 = loom_now_s();
    loom_status st = loom_comm_wait(&rq);
    pl->stats.idle_s += loom_now_s() - t0;
    return st;
}

static loom_status wait_send(loom_pipeline *pl, loom_comm_req *rq) {
    const double t0 = loom_now_s();
    loom_status st = loom_comm_wait(rq);
    pl->stats.idle_s += loom_now_s() - t0;
    return st;
}

/* the tied embedding's two copies (first and last stage) add their gradients */
static loom_status sync_tied(loom_pipeline *pl, loom_model *m) {
    if (!pl->embed || loom_comm_size(pl->embed) < 2) return LOOM_OK;
    const loom_param_info *w = NULL;
    for (int i = 0; i < loom_model_num_param_infos(m); i++) {
        const loom_param_info *p = loom_model_param_info(m, i);
        if (strcmp(p->name, "wte") == 0) w = p;
    }
    LOOM_CHECK(w != NULL, LOOM_ERR_INTERNAL, "pipeline stage without its embedding copy");
    return loom_comm_allreduce_sum_f32(pl->embed, loom_model_grads(m) + w->offset, w->numel);
}

loom_status loom_pipeline_train_step(loom_pipeline *pl, loom_model *m, loom_zero *z, const int32_t *tokens,
                                     const int32_t *targets, int64_t B, int64_t T, float grad_scale,
                                     double *loss_sum) {
    const int p = pl->p, r = pl->r, K = p * pl->v;
    const int64_t N = B * T, NC = loom_model_boundary_floats(m, B, T);
    LOOM_CALL(buffers(pl, m, NC));
    pl->stats.idle_s = 0.0;
    const double t_start = loom_now_s();
    pl->n_free = 0;
    for (int s = pl->slots - 1; s >= 0; s--) pl->free_slots[pl->n_free++] = s;
    for (int i = 0; i < pl->m; i++) pl->slot_of[i] = -1;
    double lsum = 0.0;
    for (int i = 0; i < pl->n_ops; i++) {
        const pp_op *o = &pl->ops[i];
        const int g = o->chunk * p + r, mb = o->mb;
        const int32_t *tok = tokens + (int64_t)mb * N, *tgt = targets + (int64_t)mb * N;
        if (o->fwd) {
            if (pl->slot_of[mb] < 0) {
                LOOM_CHECK(pl->n_free > 0, LOOM_ERR_INTERNAL, "pipeline: no free activation slot");
                pl->slot_of[mb] = pl->free_slots[--pl->n_free];
            }
            const int s = pl->slot_of[mb];
            loom_model_use_slot(m, s);
            const float *x_in = NULL;
            if (g > 0) {
                LOOM_CALL(recv_now(pl, pl->xbuf, NC, (r + p - 1) % p, tag_of(pl, g, mb, 1)));
                x_in = pl->xbuf;
            }
            const float *x_out = NULL;
            float l = 0.0f;
            LOOM_CALL(wait_send(pl, &pl->fwd_send[s])); /* this slot's previous output has left */
            LOOM_CALL(loom_model_chunk_forward(m, o->chunk, tok, x_in, tgt, B, T, grad_scale, &l, &x_out));
            if (g == K - 1) lsum += l;
            else LOOM_CALL(loom_comm_isend_f32(pl->pp, x_out, NC, (r + 1) % p, tag_of(pl, g + 1, mb, 1), &pl->fwd_send[s]));
        } else {
            const int s = pl->slot_of[mb];
            loom_model_use_slot(m, s);
            const float *dy = NULL;
            if (g < K - 1) {
                LOOM_CALL(recv_now(pl, pl->dybuf, NC, (r + 1) % p, tag_of(pl, g, mb, 0)));
                dy = pl->dybuf;
            }
            LOOM_CALL(wait_send(pl, &pl->bwd_send[s])); /* the slot's dx buffer is free again */
            loom_zero_begin_micro(z, mb, 0);           /* accumulate; reductions after the last backward */
            const float *dx = NULL;
            LOOM_CALL(loom_model_chunk_backward(m, o->chunk, tok, dy, B, T, mb > 0, &dx));
            if (g > 0) LOOM_CALL(loom_comm_isend_f32(pl->pp, dx, NC, (r + p - 1) % p, tag_of(pl, g - 1, mb, 0), &pl->bwd_send[s]));
            if (o->chunk == 0) { /* this micro-batch is done on this rank: its slot is free once its sends are */
                LOOM_CALL(wait_send(pl, &pl->fwd_send[s]));
                LOOM_CALL(wait_send(pl, &pl->bwd_send[s]));
                pl->free_slots[pl->n_free++] = s;
                pl->slot_of[mb] = -1;
            }
        }
    }
    for (int s = 0; s < pl->slots; s++) {
        LOOM_CALL(wait_send(pl, &pl->fwd_send[s]));
        LOOM_CALL(wait_send(pl, &pl->bwd_send[s]));
    }
    pl->stats.busy_s = loom_now_s() - t_start - pl->stats.idle_s;
    LOOM_CALL(sync_tied(pl, m));
    LOOM_CALL(loom_zero_reduce_all(z));
    LOOM_CALL(loom_comm_allreduce_sum_f64(pl->pp, &lsum, 1)); /* the last stage's losses, to every stage */
    *loss_sum = lsum;
    return LOOM_OK;
}

loom_status loom_pipeline_eval(loom_pipeline *pl, loom_model *m, const int32_t *tokens, const int32_t *targets,
                               int64_t B, int64_t T, double *loss) {
    const int p = pl->p, r = pl->r, K = p * pl->v;
    const int64_t NC = loom_model_boundary_floats(m, B, T);
    LOOM_CALL(buffers(pl, m, NC));
    loom_model_use_slot(m, 0);
    double l_out = 0.0;
    for (int c = 0; c < pl->v; c++) {
        const int g = c * p + r;
        const float *x_in = NULL, *x_out = NULL;
        if (g > 0) {
            LOOM_CALL(recv_now(pl, pl->xbuf, NC, (r + p - 1) % p, tag_of(pl, g, 0, 1)));
            x_in = pl->xbuf;
        }
        float l = 0.0f;
        LOOM_CALL(loom_model_chunk_forward(m, c, tokens, x_in, targets, B, T, 0.0f, &l, &x_out));
        if (g == K - 1) l_out = l;
        else LOOM_CALL(loom_comm_send_f32(pl->pp, x_out, NC, (r + 1) % p, tag_of(pl, g + 1, 0, 1)));
    }
    LOOM_CALL(loom_comm_allreduce_sum_f64(pl->pp, &l_out, 1));
    *loss = l_out;
    return LOOM_OK;
}
