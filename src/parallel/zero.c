/* Data parallelism and ZeRO stages 0-3 (include/loom/parallel.h).
 *
 * Where buffers live, per stage (n floats in the flat layout, S = this rank's slice):
 *   params: stage < 3 a whole buffer; stage 3 a slice buffer plus a reserved (not resident) whole-size
 *           mapping into which units are gathered and from which their pages are dropped after use
 *   grads:  stage < 2 a whole buffer; stage >= 2 a slice buffer plus such a mapping for unit gradients
 * The mappings keep the model's indexing (params + offset) unchanged: only residency changes.
 * With the node-shared transport (stages 0-1) the whole gradient buffer (and at stage 1 the parameter
 * buffer) is this rank's segment of a shared window instead, with the flags that order the ranks. */
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "loom/log.h"
#include "loom/parallel.h"

enum { UNIT_ABSENT = 0, UNIT_GATHERING, UNIT_RESIDENT };
enum { OWN_MEM = 1, OWN_MAP, OWN_SHM };

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
    int owns_pfull, owns_gfull; /* 0: the model's; OWN_MEM, OWN_MAP or OWN_SHM */
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
    loom_comm *tp_self;     /* the model's one-rank tp communicator when none was given */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* counts[r] = how much of [a, b) rank r owns */
static void unit_counts(loom_zero *z, int64_t a, int64_t b) {
    const int N = loom_comm_size(z->dp);
    for (int r = 0; r < N; r++) z->counts[r] = max64(0, min64(b, z->slice_lo[r + 1]) - max64(a, z->slice_lo[r]));
}

static loom_status map_whole(size_t bytes, float **out) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    LOOM_CHECK(p != MAP_FAILED, LOOM_ERR_NOMEM, "cannot reserve %zu bytes of address space", bytes);
    *out = p;
    return LOOM_OK;
}

/* Returns the pages wholly inside [a, b) of a mapping to the OS (boundary pages, shared with the
 * neighbouring units, stay; their stale part is overwritten before the next use). */
static void drop_range(float *base, int64_t a, int64_t b) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)(base + a) + pg - 1) / pg * pg, hi = (uintptr_t)(base + b) / pg * pg;
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static int64_t unit_bytes(const loom_zero *z, int u) { return (z->unit_lo[u + 1] - z->unit_lo[u]) * 4; }

/* ---- stage 3: parameters ---- */

static loom_status gather_start(loom_zero *z, int u) {
    const int64_t a = z->unit_lo[u], b = z->unit_lo[u + 1];
    /* in-place all-gather: this rank's part first goes to its place in the whole buffer */
    const int64_t lo = max64(a, z->begin), hi = min64(b, z->end);
    if (hi > lo) memcpy(z->pfull + lo, z->pshard + (lo - z->begin), (size_t)(hi - lo) * sizeof(float));
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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* This rank's slice of unit u, summed over the ranks in rank order (so every rank's sums are the same
 * numbers whichever rank computes them), written into its own gradients. */
static void shm_reduce_unit(loom_zero *z, int u) {
    const int N = loom_comm_size(z->dp), me = loom_comm_rank(z->dp);
    /* this rank's share of the work: the me-th of N equal parts of the unit (every unit is split, so the
     * ranks' work stays even through the backward pass whichever rank owns which slice) */
    const int64_t a = z->unit_lo[u], len = z->unit_lo[u + 1] - a;
    const int64_t lo = a + len * me / N / 16 * 16, hi = me == N - 1 ? a + len : a + len * (me + 1) / N / 16 * 16;
    const double t0 = now_s();
    enum { CHUNK = 2048 }; /* 8 KiB of partial sums stay in L1 while the peers stream past */
    float acc[CHUNK];
    for (int64_t i0 = lo; i0 < hi; i0 += CHUNK) {
        const int64_t m = min64(CHUNK, hi - i0);
        const float *g0 = grads_of(z, 0) + i0, *g1 = grads_of(z, 1) + i0;
        for (int64_t i = 0; i < m; i++) acc[i] = g0[i] + g1[i];
        for (int q = 2; q < N; q++) {
            const float *g = grads_of(z, q) + i0;
            for (int64_t i = 0; i < m; i++) acc[i] += g[i];
        }
        /* the sums go where they are needed: ZeRO-0 every rank's gradients, ZeRO-1 the slice owner's; only
         * this rank reads or writes these positions until it posts REDUCED */
        for (int q = 0; q < N; q++) {
            const int64_t s0 = z->stage == 0 ? i0 : max64(i0, z->slice_lo[q]);
            const int64_t s1 = z->stage == 0 ? i0 + m : min64(i0 + m, z->slice_lo[q + 1]);
            if (s1 > s0) memcpy(grads_of(z, q) + s0, acc + (s0 - i0), (size_t)(s1 - s0) * sizeof(float));
        }
    }
    z->stats.comm_work_s += now_s() - t0;
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
        const double t0 = now_s();
        const int64_t a = z->slice_lo[q], b = z->slice_lo[q + 1];
        memcpy(z->pfull + a, params_of(z, q) + a, (size_t)(b - a) * sizeof(float));
        z->stats.comm_work_s += now_s() - t0;
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
    if (z->pstate[u] == UNIT_GATHERING) {
        LOOM_CALL(wait_req(z, &z->preq[u]));
        z->pstate[u] = UNIT_RESIDENT;
    }
    /* prefetch the unit this pass needs next, so its gather overlaps this unit's compute */
    int next = u + dir;
    if (next >= 1 && next <= z->n_units - 1 && z->pstate[next] == UNIT_ABSENT)
        LOOM_CALL(gather_start(z, next));
    return LOOM_OK;
}

static loom_status hook_params_done(void *ctx, int u) {
    loom_zero *z = ctx;
    if (z->stage < 3 || z->pinned || z->pstate[u] != UNIT_RESIDENT) return LOOM_OK;
    drop_range(z->pfull, z->unit_lo[u], z->unit_lo[u + 1]);
    z->pstate[u] = UNIT_ABSENT;
    loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, -unit_bytes(z, u));
    return LOOM_OK;
}

/* ---- gradients ---- */

/* a finished reduce-scatter: add this micro-step's slice of unit u into the gradient slice, drop the unit */
static void reduce_scatter_done(loom_zero *z, int u) {
    const int64_t lo = max64(z->unit_lo[u], z->begin), hi = min64(z->unit_lo[u + 1], z->end);
    if (hi > lo) {
        float *dst = z->gshard + (lo - z->begin);
        const float *src = z->rs_tmp + (lo - z->begin);
        if (z->micro == 0) memcpy(dst, src, (size_t)(hi - lo) * sizeof(float));
        else
            for (int64_t i = 0; i < hi - lo; i++) dst[i] += src[i];
    }
    drop_range(z->gfull, z->unit_lo[u], z->unit_lo[u + 1]);
    if (z->gres[u]) {
        z->gres[u] = 0;
        loom_mem_track(z->mem, LOOM_MEM_WORKSPACE, -unit_bytes(z, u));
    }
}

/* tests the reductions in flight (MPI progresses non-blocking collectives inside its calls) */
static loom_status progress(loom_zero *z) {
    if (z->gwin) return z->overlap ? shm_progress(z, 0) : LOOM_OK;
    for (int i = 0; i < z->n_red; i++) {
        int done = 0;
        LOOM_CALL(loom_comm_test(&z->red[i].req, &done));
        if (!done) break; /* they finish in order */
        if (z->stage >= 2) reduce_scatter_done(z, z->red[i].unit);
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
        if (z->stage >= 2) reduce_scatter_done(z, z->red[i].unit);
    }
    z->n_red = 0;
    return LOOM_OK;
}

/* Stages 2-3 keep a unit's whole gradients until its reduce-scatter finishes: at most this many in flight
 * (the oldest is waited for first), so the transient memory is bounded and predictable (loom plan). */
enum { MAX_SCATTERS_IN_FLIGHT = 2 };

static loom_status start_reduction(loom_zero *z, int u) {
    const int64_t a = z->unit_lo[u], b = z->unit_lo[u + 1];
    while (z->stage >= 2 && z->n_red >= MAX_SCATTERS_IN_FLIGHT) {
        LOOM_CALL(wait_req(z, &z->red[0].req));
        reduce_scatter_done(z, z->red[0].unit);
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
    if (z->gwin) {
        loom_comm_shm_post(flag_of(z, loom_comm_rank(z->dp), SLOT_READY(u)), z->epoch);
        z->queue[z->n_queue++] = u;
        return progress(z);
    }
    LOOM_CALL(start_reduction(z, u));
    return progress(z);
}

/* ---- set-up ---- */

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

loom_status loom_zero_init(const loom_model_config *mc, const loom_optim_config *oc, const loom_zero_options *zo,
                           loom_comm *dp, loom_backend *be, loom_mem *mem, loom_zero **out) {
    *out = NULL;
    const int stage = zo->stage, overlap = zo->overlap;
    LOOM_CHECK(stage >= 0 && stage <= 3, LOOM_ERR_CONFIG, "zero stage must be 0, 1, 2 or 3, got %d", stage);
    loom_zero *z = calloc(1, sizeof *z);
    LOOM_CHECK(z != NULL, LOOM_ERR_NOMEM, "out of memory");
    z->stage = stage;
    z->overlap = overlap;
    z->dp = dp;
    z->be = be;
    z->mem = mem;
    loom_status st;
    const int N = loom_comm_size(dp), r = loom_comm_rank(dp);
    const int try_shm = N > 1 && zo->transport != LOOM_DP_MPI;
    LOOM_CHECK_GOTO(st, zo->transport != LOOM_DP_SHM || stage <= 1, LOOM_ERR_CONFIG, fail,
                    "the shared-memory dp transport serves ZeRO stages 0 and 1 (stage %d reduces through MPI)", stage);
    int flags = LOOM_MODEL_GRADS | (stage >= 3 || (stage == 1 && try_shm) ? LOOM_MODEL_EXTERNAL_PARAMS : 0) |
                (stage >= 2 || try_shm ? LOOM_MODEL_EXTERNAL_GRADS : 0);
    loom_comm *tp = zo->tp;
    if (!tp) {
        LOOM_CALL_GOTO(st, loom_comm_init_self(&z->tp_self), fail);
        tp = z->tp_self;
    }
    if (zo->part) LOOM_CALL_GOTO(st, loom_model_init_part(mc, zo->part, be, tp, mem, flags, &z->model), fail);
    else LOOM_CALL_GOTO(st, loom_model_init(mc, be, tp, mem, flags, &z->model), fail);
    z->n = loom_model_buffer_size(z->model);
    z->slice_lo = calloc((size_t)N + 1, sizeof(int64_t));
    z->counts = calloc((size_t)N, sizeof(int64_t));
    z->n_units = loom_model_num_units(z->model);
    z->unit_lo = calloc((size_t)z->n_units + 1, sizeof(int64_t));
    z->pstate = calloc((size_t)z->n_units, sizeof(int));
    z->gres = calloc((size_t)z->n_units, sizeof(int));
    z->preq = calloc((size_t)z->n_units, sizeof(loom_comm_req));
    z->red = calloc((size_t)z->n_units, sizeof(pending));
    LOOM_CHECK_GOTO(st, z->slice_lo && z->counts && z->unit_lo && z->pstate && z->gres && z->preq && z->red,
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
        LOOM_CALL_GOTO(st, loom_mem_alloc(mem, LOOM_MEM_GRADS, z->map_bytes, (void **)&z->gfull), fail);
        z->owns_gfull = OWN_MEM;
        if (stage == 1) {
            LOOM_CALL_GOTO(st, loom_mem_alloc(mem, LOOM_MEM_PARAMS, z->map_bytes, (void **)&z->pfull), fail);
            z->owns_pfull = OWN_MEM;
        }
    }
    if (stage >= 3) {
        LOOM_CALL_GOTO(st, map_whole(z->map_bytes, &z->pfull), fail);
        z->owns_pfull = OWN_MAP;
        LOOM_CALL_GOTO(st, loom_mem_alloc(mem, LOOM_MEM_PARAMS, (size_t)slice * sizeof(float), (void **)&z->pshard), fail);
    } else {
        if (!z->owns_pfull) z->pfull = loom_model_params(z->model);
        z->pshard = z->pfull + z->begin;
    }
    if (stage >= 2) {
        LOOM_CALL_GOTO(st, map_whole(z->map_bytes, &z->gfull), fail);
        z->owns_gfull = OWN_MAP;
        LOOM_CALL_GOTO(st, loom_mem_alloc(mem, LOOM_MEM_GRADS, (size_t)slice * sizeof(float), (void **)&z->gshard), fail);
        LOOM_CALL_GOTO(st, loom_mem_alloc(mem, LOOM_MEM_WORKSPACE, (size_t)slice * sizeof(float), (void **)&z->rs_tmp), fail);
    } else {
        if (!z->owns_gfull) z->gfull = loom_model_grads(z->model);
        z->gshard = z->gfull + z->begin;
    }
    loom_model_set_buffers(z->model, z->pfull, z->gfull);
    if (stage == 0) LOOM_CALL_GOTO(st, loom_optim_init(oc, be, mem, z->model, &z->opt), fail);
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
    if (z->owns_pfull == OWN_MAP) {
        munmap(z->pfull, z->map_bytes);
        loom_mem_free(z->mem, LOOM_MEM_PARAMS, z->pshard, (size_t)slice * sizeof(float));
    }
    if (z->owns_gfull == OWN_MAP) {
        munmap(z->gfull, z->map_bytes);
        loom_mem_free(z->mem, LOOM_MEM_GRADS, z->gshard, (size_t)slice * sizeof(float));
        loom_mem_free(z->mem, LOOM_MEM_WORKSPACE, z->rs_tmp, (size_t)slice * sizeof(float));
    }
    if (z->owns_pfull == OWN_MEM) loom_mem_free(z->mem, LOOM_MEM_PARAMS, z->pfull, z->map_bytes);
    if (z->owns_gfull == OWN_MEM) loom_mem_free(z->mem, LOOM_MEM_GRADS, z->gfull, z->map_bytes);
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
    loom_comm_free(&z->tp_self);
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
    if (which > loom_optim_num_state_buffers(z->opt)) return NULL;
    float *s = loom_optim_state_buffer(z->opt, which - 1);
    return z->stage == 0 ? s + z->begin : s;
}

void loom_zero_init_weights(loom_zero *z, uint64_t seed) {
    if (z->stage >= 3) loom_model_init_weights_range(z->model, seed, z->begin, z->end, z->pshard);
    else loom_model_init_weights(z->model, seed);
}

loom_status loom_zero_load(loom_zero *z, loom_zero_reader read, void *ctx) {
    if (z->stage >= 3) LOOM_CALL(read(ctx, "params", z->begin, z->end, z->pshard));
    else LOOM_CALL(read(ctx, "params", 0, z->n, z->pfull));
    for (int i = 0; i < loom_optim_num_state_buffers(z->opt); i++) {
        const int64_t b = z->stage == 0 ? 0 : z->begin, e = z->stage == 0 ? z->n : z->end;
        LOOM_CALL(read(ctx, i == 0 ? "optim.0" : "optim.1", b, e, loom_optim_state_buffer(z->opt, i)));
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

loom_status loom_zero_step(loom_zero *z, int64_t step, loom_optim_stats *st) {
    if (z->gwin) return shm_step(z, step, st);
    LOOM_CALL(finish_reductions(z));
    if (z->stage == 0) LOOM_CALL(loom_optim_step(z->opt, z->model, step, st));
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
