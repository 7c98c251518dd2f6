/* Data parallelism and ZeRO stages 0-3 (include/loom/parallel.h).
 *
 * Where buffers live, per stage (n floats in the flat layout, S = this rank's slice):
 *   params: stage < 3 a whole buffer; stage 3 a slice buffer plus a reserved (not resident) whole-size
 *           mapping into which units are gathered and from which their pages are dropped after use
 *   grads:  stage < 2 a whole buffer; stage >= 2 a slice buffer plus such a mapping for unit gradients
 * The mappings keep the model's indexing (params + offset) unchanged: only residency changes.
 * With the node-shared transport (stages 0-1) the whole gradient buffer (and at stage 1 the parameter
 * buffer) is this rank's segment of a shared window instead, with the flags that order the ranks; that
 * needs a backend whose kernels address host memory (the CPU).
 * Every buffer is the backend's; host memory meets it only through copies (checkpoints, initial values). */
#include <string.h>
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "loom/log.h"
#include "loom/parallel.h"

enum { UNIT_ABSENT = 0, UNIT_READING, UNIT_GATHERING, UNIT_RESIDENT };
enum { OWN_BUF = 1, OWN_MAP, OWN_SHM };

typedef struct {
    int unit;
    loom_comm_req req;
} pending;

struct loom_zero {
    int stage, overlap;
    loom_comm *dp;
    loom_backend *be;
    loom_mem *mem;
    loom_model *model;
    loom_optim *opt;
    int64_t n, begin, end;  /* flat size; this rank's slice */
    int64_t *slice_lo;      /* [N+1]: rank r owns [slice_lo[r], slice_lo[r+1]) */
    int n_units;
    int64_t *unit_lo;       /* [n_units+1] */
    float *pfull, *gfull;   /* what the model indexes */
    float *pshard, *gshard; /* this rank's slice (aliases into pfull/gfull below the sharding stage) */
    float *rs_tmp;          /* stage >= 2: reduce-scatter results, slice-indexed */
    size_t map_bytes;       /* size of each whole-size mapping */
    int owns_pfull, owns_gfull; /* 0: the model's; OWN_BUF, OWN_MAP or OWN_SHM */
    /* stage 3 parameter residency */
    int *pstate;
    loom_comm_req *preq;
    int pinned;             /* gather_all: keep every unit */
    /* gradient reductions in flight */
    pending *red;
    int n_red;
    int64_t micro;
    int last_micro;
    int *gres;              /* stage >= 2: unit gradients resident (accounted) */
    /* node-shared transport (stages 0-1): per rank [flags][gradients] and, at stage 1, [parameters] */
    loom_comm_shm *gwin, *pwin;
    size_t flags_bytes;
    uint64_t epoch;         /* reduction rounds so far; a flag at `epoch` means "done this round" */
    int *queue;             /* units this rank posted this round, in order; [queue_head, n_queue) unreduced */
    int n_queue, queue_head;
    int64_t *counts;        /* scratch [N] */
    loom_zero_stats stats;
    /* the memory manager (NULL: everything in RAM). The store's position 0 is flat position olo. */
    loom_offload *off;
    int off_pg;             /* stage 3: the slice's parameters and gradients are in the store too */
    int64_t olo, ohi;       /* the optimizer's range */
    int64_t *pticket;       /* [n_units] the read of a unit's slice part in flight */
    int64_t gw_ticket[2];   /* unit gradient writes in flight (FIFO), their source pages dropped when done */
    int gw_unit[2], n_gw;
    double gsumsq;          /* this step's gradient sum of squares, collected as gradients reach the store */
    float *stage_buf[2][LOOM_OFF_N_STREAMS]; /* update staging, two chunk sets (NULL where the chunk is elsewhere) */
    size_t stage_bytes;
    float *rs_unit;         /* dp > 1 offloaded: one unit's reduce-scatter result */
    int64_t rs_unit_floats;
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* counts[r] = how much of [a, b) rank r owns */
static void unit_counts(loom_zero *z, int64_t a, int64_t b) {
    const int N = loom_comm_size(z->dp);
    for (int r = 0; r < N; r++) z->counts[r] = max64(0, min64(b, z->slice_lo[r + 1]) - max64(a, z->slice_lo[r]));
}

/* Returns the pages wholly inside [a, b) of a whole-size mapping (boundary pages, shared with the
 * neighbouring units, stay; their stale part is overwritten before the next use). */
static void drop_range(loom_zero *z, float *base, int64_t a, int64_t b) {
    loom_buf_discard(z->be, base + a, (size_t)(b - a) * sizeof(float));
    z->stats.refill_floats += b - a;
}

static int64_t unit_bytes(const loom_zero *z, int u) { return (z->unit_lo[u + 1] - z->unit_lo[u]) * 4; }

/* ---- stage 3: parameters ---- */

static loom_status gather_start(loom_zero *z, int u);

/* stage 3 offloaded: a unit's slice part has arrived from the store; the other ranks' parts follow. Only
 * from hook_params_needed: every rank starts its collectives in the model's order, whatever its disk did. */
static loom_status unit_read_done(loom_zero *z, int u) {
    z->pticket[u] = 0;
    if (loom_comm_size(z->dp) == 1) {
        z->pstate[u] = UNIT_RESIDENT;
        return LOOM_OK;
    }
    unit_counts(z, z->unit_lo[u], z->unit_lo[u + 1]);
    LOOM_CALL(loom_comm_iallgather_f32(z->dp, z->pfull + z->unit_lo[u], z->counts, &z->preq[u]));
    z->pstate[u] = UNIT_GATHERING;
    return LOOM_OK;
}

static loom_status gather_start(loom_zero *z, int u) {
    const int64_t a = z->unit_lo[u], b = z->unit_lo[u + 1];
    if (z->off_pg) { /* this rank's part comes from the store straight to its place in the whole buffer */
        const int64_t lo = max64(a, z->begin), hi = min64(b, z->end);
        loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, unit_bytes(z, u));
        z->pstate[u] = UNIT_READING;
        z->pticket[u] = hi > lo ? loom_offload_read(z->off, LOOM_OFF_PARAMS, lo - z->olo, hi - z->olo, z->pfull + lo) : 0;
        return LOOM_OK;
    }
    /* in-place all-gather: this rank's part first goes to its place in the whole buffer; the unit's pages
     * made resident in one call first (the peers' parts arrive by copies that would fault them one by one:
     * dp=2 ZeRO-3 gpt2-l6, 4 steps: 749k page faults without, ~500k with) */
    loom_buf_populate(z->be, z->pfull + a, (size_t)(b - a) * sizeof(float));
    const int64_t lo = max64(a, z->begin), hi = min64(b, z->end);
    if (hi > lo) LOOM_CALL(loom_buf_copy(z->be, z->pfull + lo, z->pshard + (lo - z->begin), (size_t)(hi - lo) * sizeof(float)));
    unit_counts(z, a, b);
    LOOM_CALL(loom_comm_iallgather_f32(z->dp, z->pfull + a, z->counts, &z->preq[u]));
    z->pstate[u] = UNIT_GATHERING;
    loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, unit_bytes(z, u));
    return LOOM_OK;
}

static loom_status wait_req(loom_zero *z, loom_comm_req *r) {
    double w0 = loom_comm_get_stats(z->dp).wait_seconds;
    LOOM_CALL(loom_comm_wait(r));
    z->stats.comm_wait_s += loom_comm_get_stats(z->dp).wait_seconds - w0;
    return LOOM_OK;
}

/* ---- node-shared transport ----
 * Flags, one 64-byte line each at the start of every rank's gradient segment: READY + u (this rank's unit u
 * gradients are final), then REDUCED (this rank has written every sum it computes, and read its last
 * input), UPDATED (stage 1: this rank's parameter slice is updated). A flag holds the round (epoch) it was
 * last posted in. */
enum { FLAG_LINE = 64 };
#define SLOT_READY(u) (u)
#define SLOT_REDUCED(z) ((z)->n_units)
#define SLOT_UPDATED(z) ((z)->n_units + 1)

static uint64_t *flag_of(const loom_zero *z, int rank, int slot) {
    return (uint64_t *)((char *)loom_comm_shm_base(z->gwin, rank) + (size_t)slot * FLAG_LINE);
}
static float *grads_of(const loom_zero *z, int rank) {
    return (float *)((char *)loom_comm_shm_base(z->gwin, rank) + z->flags_bytes);
}
static float *params_of(const loom_zero *z, int rank) { return loom_comm_shm_base(z->pwin, rank); }

static loom_status wait_flag(loom_zero *z, int rank, int slot, const char *op) {
    double w0 = loom_comm_get_stats(z->dp).wait_seconds;
    LOOM_CALL(loom_comm_shm_wait(z->gwin, flag_of(z, rank, slot), z->epoch, op));
    z->stats.comm_wait_s += loom_comm_get_stats(z->dp).wait_seconds - w0;
    return LOOM_OK;
}

/* This rank's share of unit u's sum over the ranks (loom_comm_shm_reduce): the me-th of N equal parts of the
 * unit (every unit is split, so the ranks' work stays even through the backward pass whichever rank owns
 * which slice), written to every rank's gradients (ZeRO-0) or the slice owner's (ZeRO-1). */
static void shm_reduce_unit(loom_zero *z, int u) {
    const int N = loom_comm_size(z->dp), me = loom_comm_rank(z->dp);
    const int64_t a = z->unit_lo[u], len = z->unit_lo[u + 1] - a;
    const int64_t lo = a + len * me / N / 16 * 16, hi = me == N - 1 ? a + len : a + len * (me + 1) / N / 16 * 16;
    const double t0 = loom_now_s();
    loom_comm_shm_reduce(z->gwin, z->flags_bytes, lo, hi, z->stage == 0 ? NULL : z->slice_lo);
    z->stats.comm_work_s += loom_now_s() - t0;
    loom_comm_count(z->dp, LOOM_COLL_REDUCE_SCATTER, unit_bytes(z, u));
}

/* Reduces the posted units whose peers have posted them too, in order; `block`: wait for every one. */
static loom_status shm_progress(loom_zero *z, int block) {
    const int N = loom_comm_size(z->dp);
    while (z->queue_head < z->n_queue) {
        const int u = z->queue[z->queue_head];
        for (int q = 0; q < N; q++) {
            if (loom_comm_shm_ready(flag_of(z, q, SLOT_READY(u)), z->epoch)) continue;
            if (!block) return LOOM_OK;
            LOOM_CALL(wait_flag(z, q, SLOT_READY(u), "shared-memory reduce-scatter"));
        }
        shm_reduce_unit(z, u);
        z->queue_head++;
    }
    return LOOM_OK;
}

/* ZeRO-1: copies every other rank's updated parameter slice once that rank has posted UPDATED. */
static loom_status shm_gather_params(loom_zero *z) {
    const int N = loom_comm_size(z->dp), me = loom_comm_rank(z->dp);
    for (int k = 1; k < N; k++) {
        const int q = (me + k) % N; /* start at different peers: the ranks do not all read one segment */
        LOOM_CALL(wait_flag(z, q, SLOT_UPDATED(z), "shared-memory all-gather"));
        const double t0 = loom_now_s();
        const int64_t a = z->slice_lo[q], b = z->slice_lo[q + 1];
        memcpy(z->pfull + a, params_of(z, q) + a, (size_t)(b - a) * sizeof(float)); /* host memory (see above) */
        z->stats.comm_work_s += loom_now_s() - t0;
    }
    loom_comm_count(z->dp, LOOM_COLL_ALLGATHER, (z->end - z->begin) * 4);
    return LOOM_OK;
}

static loom_status progress(loom_zero *z);

static loom_status hook_params_needed(void *ctx, int u, int dir) {
    loom_zero *z = ctx;
    LOOM_CALL(progress(z));
    if (z->stage >= 2 && dir < 0 && !z->gres[u]) { /* this unit's gradients are about to be written */
        z->gres[u] = 1;
        loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, unit_bytes(z, u));
    }
    if (z->stage < 3) return LOOM_OK;
    if (z->pstate[u] == UNIT_ABSENT) LOOM_CALL(gather_start(z, u));
    if (z->pstate[u] == UNIT_READING) {
        LOOM_CALL(loom_offload_wait(z->off, z->pticket[u]));
        LOOM_CALL(unit_read_done(z, u));
    }
    if (z->pstate[u] == UNIT_GATHERING) {
        LOOM_CALL(wait_req(z, &z->preq[u]));
        z->pstate[u] = UNIT_RESIDENT;
    }
    /* prefetch the unit this pass needs next, so its gather overlaps this unit's compute: after the head,
     * the last block (the backward starts there); nothing after the tied head's embedding unit */
    int next = u + dir;
    if (u == z->n_units - 1) next = u - 1;
    else if (u == 0 && z->pstate[z->n_units - 1] == UNIT_RESIDENT) next = -1;
    if (next >= 1 && next <= z->n_units - 1 && z->pstate[next] == UNIT_ABSENT)
        LOOM_CALL(gather_start(z, next));
    return LOOM_OK;
}

static loom_status hook_params_done(void *ctx, int u) {
    loom_zero *z = ctx;
    if (z->stage < 3 || z->pinned || z->pstate[u] != UNIT_RESIDENT) return LOOM_OK;
    drop_range(z, z->pfull, z->unit_lo[u], z->unit_lo[u + 1]);
    z->pstate[u] = UNIT_ABSENT;
    loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, -unit_bytes(z, u));
    return LOOM_OK;
}

/* ---- gradients ---- */

/* ---- the memory manager: unit gradients into the store ---- */

static void release_unit_grads(loom_zero *z, int u) {
    drop_range(z, z->gfull, z->unit_lo[u], z->unit_lo[u + 1]);
    if (z->gres[u]) {
        z->gres[u] = 0;
        loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, -unit_bytes(z, u));
    }
}

/* waits for the oldest gradient write; its source pages (one rank: the unit's own) can go */
static loom_status finish_grad_write(loom_zero *z) {
    LOOM_CALL(loom_offload_wait(z->off, z->gw_ticket[0]));
    if (z->gw_unit[0] >= 0) release_unit_grads(z, z->gw_unit[0]);
    z->gw_ticket[0] = z->gw_ticket[1];
    z->gw_unit[0] = z->gw_unit[1];
    z->n_gw--;
    return LOOM_OK;
}

/* This micro-step's gradients of flat [lo, hi) (part of unit u, at src) into the store: written on the first
 * micro-step, added on later ones; on the last, their sum of squares joins the step's norm. src must stay
 * until the write is waited for: with one rank it is the unit's own pages (dropped then, u >= 0). */
static loom_status grads_to_store(loom_zero *z, int u, int64_t lo, int64_t hi, const float *src) {
    while (z->n_gw >= 2) LOOM_CALL(finish_grad_write(z));
    double ss;
    if (z->micro == 0) {
        if (z->last_micro && hi > lo) {
            LOOM_CALL(loom_optim_grad_sumsq(z->opt, z->model, lo, hi, src, &ss));
            z->gsumsq += ss;
        }
        z->gw_ticket[z->n_gw] = hi > lo ? loom_offload_write(z->off, LOOM_OFF_GRADS, lo - z->olo, hi - z->olo, src) : 0;
        z->gw_unit[z->n_gw++] = u;
        return LOOM_OK;
    }
    float *acc = z->stage_buf[0][LOOM_OFF_GRADS]; /* a chunk at a time: read, add, write back */
    const int64_t C = loom_offload_chunk_floats(z->off);
    for (int64_t a = lo; a < hi; a += C) {
        const int64_t b = min64(a + C, hi);
        LOOM_CALL(loom_offload_wait(z->off, loom_offload_read(z->off, LOOM_OFF_GRADS, a - z->olo, b - z->olo, acc)));
        LOOM_CALL(loom_k_add(z->be, &(loom_add_args){acc, acc, src + (a - lo), b - a}));
        if (z->last_micro) {
            LOOM_CALL(loom_optim_grad_sumsq(z->opt, z->model, a, b, acc, &ss));
            z->gsumsq += ss;
        }
        LOOM_CALL(loom_offload_wait(z->off, loom_offload_write(z->off, LOOM_OFF_GRADS, a - z->olo, b - z->olo, acc)));
    }
    if (u >= 0) release_unit_grads(z, u);
    return LOOM_OK;
}

static loom_status finish_grad_writes(loom_zero *z) {
    while (z->n_gw > 0) LOOM_CALL(finish_grad_write(z));
    return LOOM_OK;
}

/* a finished reduce-scatter: add this micro-step's slice of unit u into the gradient slice (or the store),
 * drop the unit */
static loom_status reduce_scatter_done(loom_zero *z, int u) {
    const int64_t lo = max64(z->unit_lo[u], z->begin), hi = min64(z->unit_lo[u + 1], z->end);
    if (z->off_pg) {
        LOOM_CALL(grads_to_store(z, -1, lo, hi, z->rs_unit));
    } else if (hi > lo) {
        float *dst = z->gshard + (lo - z->begin);
        const float *src = z->rs_tmp + (lo - z->begin);
        if (z->micro == 0) LOOM_CALL(loom_buf_copy(z->be, dst, src, (size_t)(hi - lo) * sizeof(float)));
        else LOOM_CALL(loom_k_add(z->be, &(loom_add_args){dst, dst, src, hi - lo}));
    }
    release_unit_grads(z, u);
    return LOOM_OK;
}

/* tests the reductions in flight (MPI progresses non-blocking collectives inside its calls) */
static loom_status progress(loom_zero *z) {
    if (z->gwin) return z->overlap ? shm_progress(z, 0) : LOOM_OK;
    for (int i = 0; i < z->n_red; i++) {
        int done = 0;
        LOOM_CALL(loom_comm_test(&z->red[i].req, &done));
        if (!done) break; /* they finish in order */
        if (z->stage >= 2) LOOM_CALL(reduce_scatter_done(z, z->red[i].unit));
        memmove(&z->red[i], &z->red[i + 1], (size_t)(z->n_red - i - 1) * sizeof *z->red);
        z->n_red--;
        i--;
    }
    for (int u = 0; z->stage >= 3 && u < z->n_units; u++)
        if (z->pstate[u] == UNIT_GATHERING) {
            int done = 0;
            LOOM_CALL(loom_comm_test(&z->preq[u], &done));
            if (done) z->pstate[u] = UNIT_RESIDENT;
        }
    return LOOM_OK;
}

static loom_status finish_reductions(loom_zero *z) {
    if (z->gwin) {
        LOOM_CALL(shm_progress(z, 1));
        z->n_queue = z->queue_head = 0;
        return LOOM_OK;
    }
    for (int i = 0; i < z->n_red; i++) {
        LOOM_CALL(wait_req(z, &z->red[i].req));
        if (z->stage >= 2) LOOM_CALL(reduce_scatter_done(z, z->red[i].unit));
    }
    z->n_red = 0;
    if (z->off_pg) LOOM_CALL(finish_grad_writes(z));
    return LOOM_OK;
}

/* Stages 2-3 keep a unit's whole gradients until its reduce-scatter finishes: at most this many in flight
 * (the oldest is waited for first), so the transient memory is bounded and predictable (loom plan). */
enum { MAX_SCATTERS_IN_FLIGHT = 2 };

static loom_status start_reduction(loom_zero *z, int u) {
    const int64_t a = z->unit_lo[u], b = z->unit_lo[u + 1];
    /* offloaded: one scatter at a time into rs_unit, whose last contents must have reached the store */
    while (z->stage >= 2 && z->n_red >= (z->off_pg ? 1 : MAX_SCATTERS_IN_FLIGHT)) {
        LOOM_CALL(wait_req(z, &z->red[0].req));
        LOOM_CALL(reduce_scatter_done(z, z->red[0].unit));
        memmove(&z->red[0], &z->red[1], (size_t)(z->n_red - 1) * sizeof *z->red);
        z->n_red--;
    }
    pending *p = &z->red[z->n_red++];
    p->unit = u;
    if (z->stage < 2) {
        LOOM_CALL(loom_comm_iallreduce_sum_f32(z->dp, z->gfull + a, b - a, &p->req));
    } else {
        unit_counts(z, a, b);
        const int64_t lo = max64(a, z->begin);
        /* recv: this rank's part of [a, b), at its slice position (any valid pointer when the part is empty) */
        float *recv = z->rs_tmp + (min64(lo, z->end) - z->begin);
        if (z->off_pg) {
            LOOM_CALL(finish_grad_writes(z));
            recv = z->rs_unit;
        }
        LOOM_CALL(loom_comm_ireduce_scatter_f32(z->dp, z->gfull + a, recv, z->counts, &p->req));
    }
    if (!z->overlap) { /* measured baseline: the same reductions, each waited for at once */
        LOOM_CALL(finish_reductions(z));
    }
    return LOOM_OK;
}

static loom_status hook_grads_done(void *ctx, int u) {
    loom_zero *z = ctx;
    if (z->stage < 2 && !z->last_micro) return LOOM_OK; /* accumulate locally; reduce once */
    if (loom_comm_size(z->dp) == 1 && z->stage < 2) return LOOM_OK;
    if (z->off_pg && loom_comm_size(z->dp) == 1) /* the rank's own gradients go to the store as they are */
        return grads_to_store(z, u, z->unit_lo[u], z->unit_lo[u + 1], z->gfull + z->unit_lo[u]);
    if (z->gwin) {
        loom_comm_shm_post(flag_of(z, loom_comm_rank(z->dp), SLOT_READY(u)), z->epoch);
        z->queue[z->n_queue++] = u;
        return progress(z);
    }
    LOOM_CALL(start_reduction(z, u));
    return progress(z);
}

/* ---- set-up ---- */

/* Open MPI's non-blocking reduce-scatter (libnbc) allocates temporaries of up to twice the unit at every call
 * and frees them after; glibc maps a block past its threshold (at most 32 MiB by itself) afresh each time, so
 * every call faulted in that many new 4 KiB pages. A threshold past them keeps those temporaries in the heap,
 * reused (the heap then holds them between steps). */
static void keep_mpi_temporaries(const loom_zero *z) {
#if defined(__GLIBC__)
    int64_t largest = 0;
    for (int u = 0; u < z->n_units; u++) largest = unit_bytes(z, u) > largest ? unit_bytes(z, u) : largest;
    const int64_t cap = (int64_t)1 << 30, threshold = 4 * largest + 1 < cap ? 4 * largest + 1 : cap;
    if (threshold <= (int64_t)32 << 20) return; /* glibc's own dynamic threshold reaches that far */
    (void)mallopt(M_MMAP_THRESHOLD, (int)threshold);
    (void)mallopt(M_TRIM_THRESHOLD, (int)(2 * threshold));
#else
    (void)z;
#endif
}

/* Stages 0-1 on one node: the gradient (and stage-1 parameter) buffers become shared segments. Returns
 * LOOM_ERR_UNSUPPORTED (after the collective attempt) when the node cannot share them. */
static loom_status shm_setup(loom_zero *z) {
    z->flags_bytes = (size_t)loom_zero_shm_flags_bytes(z->n_units);
    const size_t gbytes = (size_t)z->n * sizeof(float);
    LOOM_CALL(loom_comm_shm_alloc(z->dp, z->flags_bytes + gbytes, &z->gwin));
    if (z->stage == 1) {
        loom_status st = loom_comm_shm_alloc(z->dp, gbytes, &z->pwin);
        if (st != LOOM_OK) {
            loom_comm_shm_free(&z->gwin);
            return st;
        }
    }
    const int me = loom_comm_rank(z->dp);
    z->gfull = grads_of(z, me);
    z->owns_gfull = OWN_SHM;
    loom_mem_track(z->mem, LOOM_MEM_GRADS, (int64_t)gbytes);
    loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, (int64_t)z->flags_bytes);
    if (z->pwin) {
        z->pfull = params_of(z, me);
        z->owns_pfull = OWN_SHM;
        loom_mem_track(z->mem, LOOM_MEM_PARAMS, (int64_t)gbytes);
    }
    z->queue = calloc((size_t)z->n_units, sizeof(int));
    LOOM_CHECK(z->queue != NULL, LOOM_ERR_NOMEM, "out of memory");
    return LOOM_OK;
}

void loom_zero_ram_bytes(const loom_model *lay, const loom_zero_options *zo, int stage, int N, int64_t slice,
                         int n_state, int managed, int64_t rs_unit, int64_t bytes[LOOM_MEM_N_CATEGORIES]) {
    const int64_t n = loom_model_buffer_size(lay);
    const int held = managed && stage >= 3; /* the store holds the parameters and gradients too */
    /* bytes per element of the whole low-precision copy below stage 3 (fp16's values are held as fp32) */
    const int64_t lowp = zo->precision == LOOM_PRECISION_BF16 ? 2 : zo->precision == LOOM_PRECISION_FP16 ? 4 : 0;
    bytes[LOOM_MEM_PARAMS] = (held ? 0 : 4 * (stage >= 3 ? slice : n)) + (stage < 3 ? lowp * n : 0);
    bytes[LOOM_MEM_GRADS] = held ? 0 : 4 * (stage >= 2 ? slice : n);
    bytes[LOOM_MEM_OPTIM] = managed ? 0 : 4 * (int64_t)n_state * (stage >= 1 ? slice : n);
    int64_t ws = loom_zero_unit_workspace(lay, stage, zo->precision) + loom_model_token_workspace(lay, zo->tokens);
    if (N > 1 && stage <= 1 && zo->transport != LOOM_DP_MPI && !managed)
        ws += loom_zero_shm_flags_bytes(loom_model_num_units(lay));
    if (stage >= 2 && !held) ws += 4 * slice;
    if (held && N > 1) ws += 4 * (rs_unit + 1);
    bytes[LOOM_MEM_WORKSPACE] = ws;
}

static int64_t budgeted(const int64_t bytes[LOOM_MEM_N_CATEGORIES]) {
    return bytes[LOOM_MEM_PARAMS] + bytes[LOOM_MEM_GRADS] + bytes[LOOM_MEM_OPTIM] + bytes[LOOM_MEM_WORKSPACE];
}

static void layout_units(const loom_model *m, int64_t *first, int64_t *last, int64_t *block) {
    const int n = loom_model_num_units(m);
    *first = *last = *block = 0;
    for (int u = 0; u < n; u++) {
        int64_t b, e;
        loom_model_unit_range(m, u, &b, &e);
        if (u == 0) *first = e - b;
        else if (u == n - 1) *last = e - b;
        else *block = max64(*block, e - b);
    }
}

int64_t loom_zero_unit_workspace(const loom_model *layout, int stage, int precision) {
    if (stage < 2) return 0;
    int64_t u_first, u_last, u_block;
    layout_units(layout, &u_first, &u_last, &u_block);
    const int64_t ends = u_first + u_last;
    /* bytes per element of the low-precision copy (fp16's values are held as fp32) */
    const int64_t lowp = stage < 3 ? 0 : precision == LOOM_PRECISION_BF16 ? 2 : precision == LOOM_PRECISION_FP16 ? 4 : 0;
    const int64_t at_head = 4 * (ends + (stage >= 3 ? ends + u_block : 0)) + lowp * ends;
    const int64_t in_blocks = 4 * (ends + 3 * u_block + (stage >= 3 ? 2 * u_block : 0)) + lowp * u_block;
    return at_head > in_blocks ? at_head : in_blocks;
}

/* Whether this rank's state fits the budget, and if not what the memory manager takes over: the moments
 * (stages 0-2), or the whole slice at stage 3; one rank alone runs as stage 3 (its shard is everything).
 * Then the working set the store must leave free, and its placement. */
loom_status loom_zero_plan_budget(const loom_model *lay, const loom_optim_config *oc, const loom_zero_options *zo,
                                  int N, int rank, loom_zero_budget *b) {
    memset(b, 0, sizeof *b);
    b->stage = zo->stage;
    if (zo->mem_budget <= 0) return LOOM_OK;
    LOOM_CHECK(!zo->part && (!zo->tp || loom_comm_size(zo->tp) == 1), LOOM_ERR_UNSUPPORTED,
               "the memory budget composes with data parallelism and ZeRO; not yet with tensor or pipeline parallelism");
    const int64_t n = loom_model_buffer_size(lay), S = (n + N - 1) / N;
    const int64_t lo = min64((int64_t)rank * S, n), hi = min64(lo + S, n);
    const int n_state = oc->kind == LOOM_OPTIM_ADAMW || oc->kind == LOOM_OPTIM_LAMB ? 2 : 1;
    int64_t ram[LOOM_MEM_N_CATEGORIES] = {0};
    loom_zero_ram_bytes(lay, zo, b->stage, N, S, n_state, 0, 0, ram);
    const int64_t need = budgeted(ram);
    if (need <= zo->mem_budget) return LOOM_OK;
    LOOM_CHECK(zo->offload, LOOM_ERR_CONFIG,
               "this rank's parameters, gradients, optimizer state and their workspace need %.1f MiB at ZeRO-%d, "
               "above the memory budget of %.1f MiB (train.offload=1 lets the memory manager keep what does not "
               "fit in files)",
               need / 1048576.0, b->stage, zo->mem_budget / 1048576.0);
    if (N == 1 && b->stage < 3) b->stage = 3;
    b->chunk_bytes = zo->mem_chunk > 0 ? zo->mem_chunk : (int64_t)16 << 20;
    b->mask = 1 << LOOM_OFF_M | (n_state == 2 ? 1 << LOOM_OFF_V : 0);
    if (b->stage >= 3) b->mask |= 1 << LOOM_OFF_PARAMS | 1 << LOOM_OFF_GRADS;
    b->store_floats = b->stage == 0 ? n : hi - lo;
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++)
        if (b->mask & (1 << s)) b->staging_bytes += 2 * b->chunk_bytes;
    if (b->stage >= 3 && N > 1)
        for (int u = 0; u < loom_model_num_units(lay); u++) {
            int64_t a, e;
            loom_model_unit_range(lay, u, &a, &e);
            b->rs_unit_floats = max64(b->rs_unit_floats, min64(e, hi) - max64(a, lo));
        }
    /* what stays in RAM beside the store: below stage 3 the parameters and gradients; units resident at once */
    loom_zero_ram_bytes(lay, zo, b->stage, N, S, n_state, 1, b->rs_unit_floats, ram);
    b->working_set = b->staging_bytes + budgeted(ram);
    const loom_offload_options oo = {zo->mem_budget, b->chunk_bytes, NULL, NULL, NULL};
    if (zo->mem_budget >= b->working_set)
        loom_offload_plan_pins(&oo, b->store_floats, b->mask, loom_offload_default_cost, b->working_set, b->pinned,
                               NULL);
    return LOOM_OK;
}

static loom_status offload_setup(loom_zero *z, const loom_zero_options *zo, const loom_zero_budget *b) {
    const loom_offload_options oo = {zo->mem_budget, b->chunk_bytes, zo->offload_dir ? zo->offload_dir : ".",
                                     zo->mem_trace, z->be};
    LOOM_CALL(loom_offload_init(&oo, z->ohi - z->olo, b->mask, loom_offload_default_cost, b->working_set, z->mem,
                                &z->off));
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < LOOM_OFF_N_STREAMS; s++)
            if (b->mask & (1 << s))
                LOOM_CALL(loom_buf_alloc(z->be, z->mem, LOOM_MEM_WORKSPACE, (size_t)b->chunk_bytes,
                                         (void **)&z->stage_buf[k][s]));
    z->stage_bytes = (size_t)b->chunk_bytes;
    return LOOM_OK;
}

loom_status loom_zero_init(const loom_model_config *mc, const loom_optim_config *oc, const loom_zero_options *zo,
                           loom_comm *dp, loom_backend *be, loom_mem *mem, loom_zero **out) {
    *out = NULL;
    const int overlap = zo->overlap;
    LOOM_CHECK(zo->stage >= 0 && zo->stage <= 3, LOOM_ERR_CONFIG, "zero stage must be 0, 1, 2 or 3, got %d", zo->stage);
    loom_zero_budget budget;
    memset(&budget, 0, sizeof budget);
    budget.stage = zo->stage;
    if (zo->mem_budget > 0) {
        loom_model *lay;
        LOOM_CALL(loom_model_init_layout(mc, NULL, 1, 0, &lay));
        const loom_status bs = loom_zero_plan_budget(lay, oc, zo, loom_comm_size(dp), loom_comm_rank(dp), &budget);
        loom_model_free(&lay);
        LOOM_CALL(bs);
        if (budget.stage != zo->stage)
            LOOM_INFO("memory manager: the state is over the %.1f MiB budget: one rank streams all of it (ZeRO-3 layout)",
                      zo->mem_budget / 1048576.0);
    }
    const int stage = budget.stage, offload = budget.mask != 0;
    loom_zero *z = calloc(1, sizeof *z);
    LOOM_CHECK(z != NULL, LOOM_ERR_NOMEM, "out of memory");
    z->stage = stage;
    z->overlap = overlap;
    z->dp = dp;
    z->be = be;
    z->mem = mem;
    loom_status st;
    const int N = loom_comm_size(dp), r = loom_comm_rank(dp);
    /* node-shared segments are host memory: kernels must address it (the CPU backend) */
    const int host = loom_backend_host_accessible(be);
    const int try_shm = N > 1 && zo->transport != LOOM_DP_MPI && !offload && host;
    LOOM_CHECK_GOTO(st, zo->transport != LOOM_DP_SHM || stage <= 1, LOOM_ERR_CONFIG, fail,
                    "the shared-memory dp transport serves ZeRO stages 0 and 1 (stage %d reduces through MPI)", stage);
    LOOM_CHECK_GOTO(st, zo->transport != LOOM_DP_SHM || host, LOOM_ERR_CONFIG, fail,
                    "the shared-memory dp transport needs buffers in host memory; the %s backend's are not (use mpi)",
                    loom_backend_name(be));
    const loom_model_options mo = {
        .flags = LOOM_MODEL_GRADS | (stage >= 3 || (stage == 1 && try_shm) ? LOOM_MODEL_EXTERNAL_PARAMS : 0) |
                 (stage >= 2 || try_shm ? LOOM_MODEL_EXTERNAL_GRADS : 0) |
                 (stage >= 3 ? LOOM_MODEL_LOWP_PER_UNIT : 0), /* the parameters come and go a unit at a time */
        .tp = zo->tp, .sp = zo->sp, .parts = zo->parts, .tp_seq_parallel = zo->tp_seq_parallel,
        .precision = zo->precision, .lora = zo->lora};
    if (zo->part) LOOM_CALL_GOTO(st, loom_model_init_part(mc, zo->part, be, mem, &mo, &z->model), fail);
    else LOOM_CALL_GOTO(st, loom_model_init(mc, be, mem, &mo, &z->model), fail);
    z->n = loom_model_buffer_size(z->model);
    z->slice_lo = calloc((size_t)N + 1, sizeof(int64_t));
    z->counts = calloc((size_t)N, sizeof(int64_t));
    z->n_units = loom_model_num_units(z->model);
    z->unit_lo = calloc((size_t)z->n_units + 1, sizeof(int64_t));
    z->pstate = calloc((size_t)z->n_units, sizeof(int));
    z->gres = calloc((size_t)z->n_units, sizeof(int));
    z->preq = calloc((size_t)z->n_units, sizeof(loom_comm_req));
    z->red = calloc((size_t)z->n_units, sizeof(pending));
    z->pticket = calloc((size_t)z->n_units, sizeof(int64_t));
    LOOM_CHECK_GOTO(st, z->slice_lo && z->counts && z->unit_lo && z->pstate && z->gres && z->preq && z->red && z->pticket,
                    LOOM_ERR_NOMEM, fail, "out of memory");
    const int64_t S = (z->n + N - 1) / N;
    for (int i = 0; i <= N; i++) z->slice_lo[i] = min64((int64_t)i * S, z->n);
    z->begin = z->slice_lo[r];
    z->end = z->slice_lo[r + 1];
    for (int u = 0; u < z->n_units; u++) loom_model_unit_range(z->model, u, &z->unit_lo[u], &z->unit_lo[u + 1]);
    const int64_t slice = z->end - z->begin;
    z->map_bytes = (size_t)z->n * sizeof(float);
    if (try_shm && stage <= 1) {
        st = shm_setup(z);
        if (st == LOOM_ERR_UNSUPPORTED && zo->transport == LOOM_DP_AUTO) {
            LOOM_INFO("dp transport: MPI (%s)", loom_error_message());
            loom_error_clear();
        } else {
            LOOM_CALL_GOTO(st, st, fail);
        }
    }
    if (try_shm && stage <= 1 && !z->gwin) { /* no shared segments after all: this rank's own buffers */
        LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_GRADS, z->map_bytes, (void **)&z->gfull), fail);
        z->owns_gfull = OWN_BUF;
        if (stage == 1) {
            LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_PARAMS, z->map_bytes, (void **)&z->pfull), fail);
            z->owns_pfull = OWN_BUF;
        }
    }
    z->off_pg = offload && stage >= 3;
    z->olo = stage == 0 ? 0 : z->begin;
    z->ohi = stage == 0 ? z->n : z->end;
    if (z->off_pg && N > 1) { /* one unit's part of the reduce-scatter at a time */
        z->rs_unit_floats = budget.rs_unit_floats;
        LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_WORKSPACE, (size_t)(z->rs_unit_floats + 1) * sizeof(float),
                                          (void **)&z->rs_unit), fail);
    }
    if (stage >= 3) {
        LOOM_CALL_GOTO(st, loom_buf_reserve(be, z->map_bytes, (void **)&z->pfull), fail);
        z->owns_pfull = OWN_MAP;
        if (!z->off_pg)
            LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_PARAMS, (size_t)slice * sizeof(float), (void **)&z->pshard), fail);
    } else {
        if (!z->owns_pfull) z->pfull = loom_model_params(z->model);
        z->pshard = z->pfull + z->begin;
    }
    if (stage >= 2) {
        LOOM_CALL_GOTO(st, loom_buf_reserve(be, z->map_bytes, (void **)&z->gfull), fail);
        z->owns_gfull = OWN_MAP;
        if (!z->off_pg) {
            LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_GRADS, (size_t)slice * sizeof(float), (void **)&z->gshard), fail);
            LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_WORKSPACE, (size_t)slice * sizeof(float), (void **)&z->rs_tmp), fail);
        }
    } else {
        if (!z->owns_gfull) z->gfull = loom_model_grads(z->model);
        z->gshard = z->gfull + z->begin;
    }
    if (stage >= 2 && N > 1 && host) keep_mpi_temporaries(z); /* MPI reduces host memory (NCCL: the device's) */
    loom_model_set_buffers(z->model, z->pfull, z->gfull);
    if (offload) {
        LOOM_CALL_GOTO(st, loom_optim_init_streamed(oc, be, mem, z->model, z->olo, z->ohi, stage == 0 ? NULL : dp, &z->opt),
                       fail);
        LOOM_CALL_GOTO(st, offload_setup(z, zo, &budget), fail);
    } else if (stage == 0) LOOM_CALL_GOTO(st, loom_optim_init(oc, be, mem, z->model, &z->opt), fail);
    else LOOM_CALL_GOTO(st, loom_optim_init_range(oc, be, mem, z->model, z->begin, z->end, dp, &z->opt), fail);
    loom_model_hooks h = {z, hook_params_needed, hook_params_done, hook_grads_done};
    loom_model_set_hooks(z->model, &h);
    *out = z;
    return LOOM_OK;
fail:
    loom_zero_free(&z);
    return st;
}

void loom_zero_free(loom_zero **pz) {
    if (!pz || !*pz) return;
    loom_zero *z = *pz;
    /* nothing may stay in flight on buffers about to be freed */
    for (int i = 0; i < z->n_red; i++)
        if (loom_comm_wait(&z->red[i].req) != LOOM_OK) break;
    for (int u = 0; z->preq && u < z->n_units; u++)
        if (loom_comm_wait(&z->preq[u]) != LOOM_OK) break;
    const int64_t slice = z->end - z->begin;
    loom_optim_free(&z->opt);
    loom_offload_free(&z->off); /* waits for its requests first: they may read the mappings below */
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) loom_buf_free(z->be, z->mem, LOOM_MEM_WORKSPACE, z->stage_buf[k][s], z->stage_bytes);
    loom_buf_free(z->be, z->mem, LOOM_MEM_WORKSPACE, z->rs_unit, (size_t)(z->rs_unit_floats + 1) * sizeof(float));
    free(z->pticket);
    if (z->owns_pfull == OWN_MAP) {
        loom_buf_unreserve(z->be, z->pfull, z->map_bytes);
        loom_buf_free(z->be, z->mem, LOOM_MEM_PARAMS, z->pshard, (size_t)slice * sizeof(float));
    }
    if (z->owns_gfull == OWN_MAP) {
        loom_buf_unreserve(z->be, z->gfull, z->map_bytes);
        loom_buf_free(z->be, z->mem, LOOM_MEM_GRADS, z->gshard, (size_t)slice * sizeof(float));
        loom_buf_free(z->be, z->mem, LOOM_MEM_WORKSPACE, z->rs_tmp, (size_t)slice * sizeof(float));
    }
    if (z->owns_pfull == OWN_BUF) loom_buf_free(z->be, z->mem, LOOM_MEM_PARAMS, z->pfull, z->map_bytes);
    if (z->owns_gfull == OWN_BUF) loom_buf_free(z->be, z->mem, LOOM_MEM_GRADS, z->gfull, z->map_bytes);
    if (z->pwin) {
        loom_mem_track(z->mem, LOOM_MEM_PARAMS, -(int64_t)z->map_bytes);
        loom_comm_shm_free(&z->pwin);
    }
    if (z->gwin) {
        loom_mem_track(z->mem, LOOM_MEM_GRADS, -(int64_t)z->map_bytes);
        loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, -(int64_t)z->flags_bytes);
        loom_comm_shm_free(&z->gwin);
    }
    free(z->queue);
    loom_model_free(&z->model);
    free(z->slice_lo);
    free(z->counts);
    free(z->unit_lo);
    free(z->pstate);
    free(z->gres);
    free(z->preq);
    free(z->red);
    free(z);
    *pz = NULL;
}

loom_model *loom_zero_model(loom_zero *z) { return z->model; }
const char *loom_zero_transport_name(const loom_zero *z) {
    return loom_comm_size(z->dp) == 1 ? "none" : z->gwin ? "shared memory" : "MPI";
}
loom_optim *loom_zero_optim(loom_zero *z) { return z->opt; }
int loom_zero_stage(const loom_zero *z) { return z->stage; }

void loom_zero_slice(const loom_zero *z, int64_t *b, int64_t *e) {
    *b = z->begin;
    *e = z->end;
}

float *loom_zero_slice_ptr(loom_zero *z, int which) {
    if (which == 0) return z->pshard;
    if (which > loom_optim_num_state_buffers(z->opt) || z->off) return NULL;
    float *s = loom_optim_state_buffer(z->opt, which - 1);
    return z->stage == 0 ? s + z->begin : s;
}

loom_offload *loom_zero_offload(loom_zero *z) { return z->off; }

static loom_offload_stream which_stream(int which) {
    return which == 0 ? LOOM_OFF_PARAMS : which == 1 ? LOOM_OFF_M : LOOM_OFF_V;
}

loom_status loom_zero_read_slice(loom_zero *z, int which, int64_t lo, int64_t hi, float *dst) {
    LOOM_CHECK(which >= 0 && which <= loom_optim_num_state_buffers(z->opt) && lo >= 0 && lo <= hi &&
               hi <= z->end - z->begin, LOOM_ERR_INVALID_ARG, "bad slice read %d [%lld, %lld)", which, (long long)lo,
               (long long)hi);
    float *ram = loom_zero_slice_ptr(z, which);
    if (ram) return loom_buf_download(z->be, dst, ram + lo, (size_t)(hi - lo) * sizeof(float));
    const int64_t a = z->begin + lo - z->olo;
    return loom_offload_wait(z->off, loom_offload_read(z->off, which_stream(which), a, a + hi - lo, dst));
}

/* Fills stream s of the store over flat [lo, hi) chunk by chunk: fill(ctx, a, b, buf) writes positions [a, b). */
typedef loom_status (*fill_fn)(void *ctx, const char *section, int64_t a, int64_t b, float *buf);
static loom_status store_fill(loom_zero *z, loom_offload_stream s, const char *section, int64_t lo, int64_t hi,
                              fill_fn fill, void *ctx) {
    const int64_t C = loom_offload_chunk_floats(z->off);
    float *buf = malloc((size_t)C * sizeof(float)); /* host memory: fill writes it */
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    for (int64_t a = lo; a < hi && st == LOOM_OK; a += C) {
        const int64_t b = min64(a + C, hi);
        st = fill(ctx, section, a, b, buf);
        if (st == LOOM_OK) st = loom_offload_wait(z->off, loom_offload_write(z->off, s, a - z->olo, b - z->olo, buf));
    }
    free(buf);
    return st;
}

/* Host values into a buffer range: read(ctx, section, lo, hi, host) fills host memory; straight into the
 * buffer where the host can address it, else through a bounded host copy. */
static loom_status buffer_fill(loom_zero *z, const char *section, int64_t lo, int64_t hi, float *dst, fill_fn fill,
                               void *ctx) {
    if (loom_backend_host_accessible(z->be)) return fill(ctx, section, lo, hi, dst);
    enum { PIECE = 4 << 20 }; /* floats */
    float *buf = malloc((size_t)min64(PIECE, hi - lo + 1) * sizeof(float));
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    for (int64_t a = lo; a < hi && st == LOOM_OK; a += PIECE) {
        const int64_t b = min64(a + PIECE, hi);
        st = fill(ctx, section, a, b, buf);
        if (st == LOOM_OK) st = loom_buf_upload(z->be, dst + (a - lo), buf, (size_t)(b - a) * sizeof(float));
    }
    free(buf);
    return st;
}

typedef struct {
    loom_zero *z;
    uint64_t seed;
} init_ctx;
static loom_status fill_init(void *ctx, const char *section, int64_t a, int64_t b, float *buf) {
    (void)section;
    const init_ctx *ic = ctx;
    loom_model_init_weights_range(ic->z->model, ic->seed, a, b, buf);
    return LOOM_OK;
}

loom_status loom_zero_init_weights(loom_zero *z, uint64_t seed) {
    if (z->off_pg) {
        init_ctx ic = {z, seed};
        return store_fill(z, LOOM_OFF_PARAMS, "params", z->begin, z->end, fill_init, &ic);
    }
    if (z->stage < 3) return loom_model_init_weights(z->model, seed);
    init_ctx ic = {z, seed};
    return buffer_fill(z, "params", z->begin, z->end, z->pshard, fill_init, &ic);
}

loom_status loom_zero_load(loom_zero *z, loom_zero_reader read, void *ctx) {
    if (z->off) { /* through the store, a chunk at a time */
        if (z->off_pg) LOOM_CALL(store_fill(z, LOOM_OFF_PARAMS, "params", z->begin, z->end, read, ctx));
        else LOOM_CALL(buffer_fill(z, "params", 0, z->n, z->pfull, read, ctx));
        for (int i = 0; i < loom_optim_num_state_buffers(z->opt); i++)
            LOOM_CALL(store_fill(z, which_stream(i + 1), i == 0 ? "optim.0" : "optim.1", z->olo, z->ohi, read, ctx));
        return LOOM_OK;
    }
    if (z->stage >= 3) LOOM_CALL(buffer_fill(z, "params", z->begin, z->end, z->pshard, read, ctx));
    else LOOM_CALL(buffer_fill(z, "params", 0, z->n, z->pfull, read, ctx));
    for (int i = 0; i < loom_optim_num_state_buffers(z->opt); i++) {
        const int64_t b = z->stage == 0 ? 0 : z->begin, e = z->stage == 0 ? z->n : z->end;
        LOOM_CALL(buffer_fill(z, i == 0 ? "optim.0" : "optim.1", b, e, loom_optim_state_buffer(z->opt, i), read, ctx));
    }
    return LOOM_OK;
}

/* ---- the step ---- */

void loom_zero_begin_micro(loom_zero *z, int64_t micro, int last) {
    z->micro = micro;
    z->last_micro = last;
    if (z->gwin && last) z->epoch++; /* a new reduction round */
    if (z->stage >= 2) /* the head's units: their gradients are written from the first backward kernel */
        for (int u = 0; u < z->n_units; u += z->n_units - 1)
            if (!z->gres[u]) {
                z->gres[u] = 1;
                loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, unit_bytes(z, u));
            }
}

int loom_zero_accumulate(const loom_zero *z, int64_t micro) { return z->stage < 2 ? micro > 0 : 0; }

loom_status loom_zero_end_micro(loom_zero *z) {
    if (z->stage >= 2) LOOM_CALL(finish_reductions(z)); /* the next micro-step rewrites the unit gradients */
    return LOOM_OK;
}

/* The node-shared step: every flag wait below is what keeps a rank from rewriting a buffer a peer still
 * reads (gradients are rewritten by the next backward, parameter slices by the next update). */
static loom_status shm_step(loom_zero *z, int64_t step, loom_optim_stats *st) {
    const int me = loom_comm_rank(z->dp), N = loom_comm_size(z->dp);
    LOOM_CALL(finish_reductions(z));
    loom_comm_shm_post(flag_of(z, me, SLOT_REDUCED(z)), z->epoch);
    /* every peer has written its sums into this rank's gradients and read its last input from them */
    for (int q = 0; q < N; q++) LOOM_CALL(wait_flag(z, q, SLOT_REDUCED(z), "shared-memory reduce-scatter"));
    if (z->stage == 0) return loom_optim_step(z->opt, z->model, step, st);
    LOOM_CALL(loom_optim_step_range(z->opt, z->model, step, z->pshard, z->gshard, st));
    loom_comm_shm_post(flag_of(z, me, SLOT_UPDATED(z)), z->epoch);
    return shm_gather_params(z);
}

/* flat position pos of the gradients kept in RAM (the whole buffer, or from stage 2 this rank's slice) */
static float *ram_grads_at(loom_zero *z, int64_t pos) {
    return z->stage >= 2 ? z->gshard + (pos - z->begin) : z->gfull + pos;
}

/* Where chunk c's floats of stream s are for the update: RAM (a buffer the store does not hold, or a pinned
 * chunk, updated in place), else staging set k, read from the file (*ticket). */
static float *update_operand(loom_zero *z, loom_offload_stream s, int64_t c, int k, int64_t lo, int64_t hi,
                             int64_t *ticket) {
    if (!loom_offload_holds(z->off, s)) {
        if (s == LOOM_OFF_PARAMS) return z->pfull + lo;
        return ram_grads_at(z, lo);
    }
    float *pin = loom_offload_pinned(z->off, s, c);
    if (pin) return pin;
    *ticket = loom_offload_read(z->off, s, lo - z->olo, hi - z->olo, z->stage_buf[k][s]);
    return z->stage_buf[k][s];
}

/* The streamed update: chunk c + 1 is read while chunk c is updated, then c's parameters and moments are
 * queued for writing. The two staging sets alternate; the queue runs in order, so chunk c + 2's reads into
 * c's set start only after c's writes from it are done. */
static loom_status offload_update(loom_zero *z, int64_t step, loom_optim_stats *st) {
    if (!z->off_pg) LOOM_CALL(loom_optim_grad_sumsq(z->opt, z->model, z->olo, z->ohi, ram_grads_at(z, z->olo), &z->gsumsq));
    loom_optim_stats own;
    if (!st) st = &own;
    LOOM_CALL(loom_optim_begin_streamed(z->opt, z->model, step, z->gsumsq, st));
    z->gsumsq = 0.0;
    if (st->skipped) return LOOM_OK; /* loss scaling: an overflow, nothing to update */
    const int adam = loom_optim_num_state_buffers(z->opt) == 2;
    const int64_t C = loom_offload_chunk_floats(z->off), nc = loom_offload_num_chunks(z->off);
    float *ptr[2][LOOM_OFF_N_STREAMS] = {{NULL}};
    int64_t ticket[2] = {0, 0};
    for (int64_t c = 0; c <= nc; c++) {
        if (c < nc) { /* queue chunk c's reads */
            const int k = (int)(c & 1);
            const int64_t lo = z->olo + c * C, hi = min64(lo + C, z->ohi);
            for (int s = 0; s < LOOM_OFF_N_STREAMS; s++)
                ptr[k][s] = s == LOOM_OFF_V && !adam ? NULL : update_operand(z, (loom_offload_stream)s, c, k, lo, hi, &ticket[k]);
        }
        if (c == 0) continue;
        const int64_t d = c - 1; /* update chunk d, whose reads were queued one iteration ago */
        const int k = (int)(d & 1);
        const int64_t lo = z->olo + d * C, hi = min64(lo + C, z->ohi);
        LOOM_CALL(loom_offload_wait(z->off, ticket[k]));
        LOOM_CALL(loom_optim_update_chunk(z->opt, z->model, lo, hi, ptr[k][LOOM_OFF_PARAMS], ptr[k][LOOM_OFF_GRADS],
                                          ptr[k][LOOM_OFF_M], ptr[k][LOOM_OFF_V]));
        for (int s = 0; s < LOOM_OFF_N_STREAMS; s++)
            if (s != LOOM_OFF_GRADS && ptr[k][s] == z->stage_buf[k][s] && ptr[k][s])
                (void)loom_offload_write(z->off, (loom_offload_stream)s, lo - z->olo, hi - z->olo, ptr[k][s]);
    }
    return loom_offload_wait_all(z->off);
}

loom_status loom_zero_step(loom_zero *z, int64_t step, loom_optim_stats *st) {
    if (z->gwin) return shm_step(z, step, st);
    LOOM_CALL(finish_reductions(z));
    if (z->off) LOOM_CALL(offload_update(z, step, st));
    else if (z->stage == 0) LOOM_CALL(loom_optim_step(z->opt, z->model, step, st));
    else LOOM_CALL(loom_optim_step_range(z->opt, z->model, step, z->pshard, z->gshard, st));
    if (z->stage == 1 || z->stage == 2) { /* every rank needs the whole updated parameters */
        for (int r = 0; r < loom_comm_size(z->dp); r++) z->counts[r] = z->slice_lo[r + 1] - z->slice_lo[r];
        loom_comm_req req;
        LOOM_CALL(loom_comm_iallgather_f32(z->dp, z->pfull, z->counts, &req));
        LOOM_CALL(wait_req(z, &req));
    }
    return LOOM_OK;
}

loom_status loom_zero_gather_all(loom_zero *z) {
    if (z->stage < 3) return LOOM_OK;
    LOOM_CHECK(!z->off_pg, LOOM_ERR_UNSUPPORTED, "the parameters are offloaded: the whole model is never in RAM at once");
    for (int u = 0; u < z->n_units; u++) LOOM_CALL(hook_params_needed(z, u, 0));
    z->pinned = 1;
    return LOOM_OK;
}

void loom_zero_release_all(loom_zero *z) {
    if (z->stage < 3) return;
    z->pinned = 0;
    for (int u = 0; u < z->n_units; u++) (void)hook_params_done(z, u);
}

loom_status loom_zero_reduce_all(loom_zero *z) {
    LOOM_CHECK(z->stage < 2, LOOM_ERR_UNSUPPORTED, "ZeRO-%d reduces per micro-batch; a pipeline composes with "
               "stages 0 and 1", z->stage);
    loom_zero_begin_micro(z, z->micro, 1);
    for (int u = 0; u < z->n_units; u++) LOOM_CALL(hook_grads_done(z, u));
    return LOOM_OK;
}

loom_zero_stats loom_zero_get_stats(const loom_zero *z) { return z->stats; }

int64_t loom_zero_shm_flags_bytes(int n_units) { /* READY per unit, REDUCED, UPDATED: a line each, whole pages */
    return ((int64_t)(n_units + 2) * FLAG_LINE + 4095) / 4096 * 4096;
}
void loom_zero_reset_stats(loom_zero *z) { memset(&z->stats, 0, sizeof z->stats); }
