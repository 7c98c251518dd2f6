/* The communicator interface, its single-rank implementation, and the process mesh (include/loom/comm.h). */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend_impl.h"
#include "comm_impl.h"
#include "loom/progress.h"

double loom_comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *loom_coll_name(loom_coll c) {
    static const char *const n[LOOM_COLL_COUNT] = {"all-reduce", "reduce-scatter", "all-gather", "broadcast",
                                                   "send/recv", "barrier"};
    return (c >= 0 && c < LOOM_COLL_COUNT) ? n[c] : "?";
}

void loom_comm_init_common(loom_comm *c, const char *name, int rank, int size, int world_rank) {
    snprintf(c->name, sizeof c->name, "%s", name);
    c->rank = rank;
    c->size = size;
    c->world_rank = world_rank;
    c->timeout_s = 600.0;
}

/* ---- self: one rank, every collective completes at once ---- */

static loom_status self_iallreduce(loom_comm *c, void *b, int64_t n, int dt, int op, loom_comm_req *r) {
    (void)c; (void)b; (void)n; (void)dt; (void)op; (void)r;
    return LOOM_OK;
}
static loom_status self_ireduce_scatter(loom_comm *c, const float *s, float *rv, const int64_t *counts,
                                        loom_comm_req *r) {
    (void)r;
    const size_t bytes = (size_t)counts[0] * sizeof(float);
    if (c->be) return loom_buf_copy(c->be, rv, s, bytes); /* backend buffers: the backend copies them */
    if (s != rv) memmove(rv, s, bytes);
    return LOOM_OK;
}
static loom_status self_iallgather(loom_comm *c, float *b, const int64_t *counts, loom_comm_req *r) {
    (void)c; (void)b; (void)counts; (void)r;
    return LOOM_OK;
}
static loom_status self_iallgather_bytes(loom_comm *c, const void *s, int64_t n, void *rv, loom_comm_req *r) {
    (void)c; (void)r;
    if (s != rv) memmove(rv, s, (size_t)n);
    return LOOM_OK;
}
static loom_status self_ibroadcast(loom_comm *c, void *b, int64_t n, int root, loom_comm_req *r) {
    (void)b; (void)n; (void)r;
    LOOM_CHECK(root == 0, LOOM_ERR_INVALID_ARG, "broadcast root %d on communicator '%s' of size %d", root, c->name,
               c->size);
    return LOOM_OK;
}
static loom_status self_ibarrier(loom_comm *c, loom_comm_req *r) { (void)c; (void)r; return LOOM_OK; }
static loom_status self_p2p(loom_comm *c, const void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    (void)b; (void)n; (void)tag; (void)r;
    return loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__,
                          "send/recv with rank %d on communicator '%s' of one rank", peer, c->name);
}
static loom_status self_irecv(loom_comm *c, void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    return self_p2p(c, b, n, peer, tag, r);
}
static int self_test(loom_comm_req *r, int *done, char *err, int errlen) {
    (void)r; (void)err; (void)errlen;
    *done = 1;
    return 0;
}
static loom_status self_split(loom_comm *c, int color, int key, const char *name, loom_comm **out);

static const loom_comm_ops self_ops = {self_iallreduce, self_ireduce_scatter, self_iallgather, self_iallgather_bytes,
                                       self_ibroadcast, self_ibarrier, self_p2p, self_irecv, self_test, self_split,
                                       NULL, NULL, NULL, NULL, 1 /* touches no buffer but through the backend */,
                                       NULL};

static loom_status self_make(const char *name, loom_comm **out) {
    loom_comm *c = calloc(1, sizeof *c);
    LOOM_CHECK(c != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_comm_init_common(c, name, 0, 1, 0);
    c->ops = self_ops;
    *out = c;
    return LOOM_OK;
}

static loom_status self_split(loom_comm *c, int color, int key, const char *name, loom_comm **out) {
    (void)c; (void)color; (void)key;
    return self_make(name, out);
}

loom_status loom_comm_init_self(loom_comm **out) { return self_make("self", out); }

loom_status loom_comm_init_world(loom_comm **out) {
#ifdef LOOM_HAVE_MPI
    if (loom_comm_mpi_launched()) return loom_comm_mpi_world(out);
#endif
    return self_make("world", out);
}

int loom_comm_have_mpi(void) {
#ifdef LOOM_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

loom_status loom_comm_split(loom_comm *c, int color, int key, const char *name, loom_comm **out) {
    *out = NULL;
    LOOM_CALL(c->ops.split(c, color, key, name, out));
    (*out)->timeout_s = c->timeout_s;
    (*out)->interrupt = c->interrupt;
    loom_comm_set_backend(*out, c->be);
    return LOOM_OK;
}

void loom_comm_free(loom_comm **pc) {
    if (!pc || !*pc) return;
    if ((*pc)->ops.free_impl) (*pc)->ops.free_impl(*pc);
    free(*pc);
    *pc = NULL;
}

void loom_comm_abort(loom_comm *c, int code) {
    if (c && c->size > 1 && c->ops.abort_job) c->ops.abort_job(c, code);
}

loom_status loom_comm_agree(loom_comm *c, loom_status local, const char *what) {
    /* the lowest failing world rank and its status, in one maximum: (2^30 - rank) above the status byte */
    int64_t v = local != LOOM_OK ? (((int64_t)(1 << 30) - c->world_rank) << 8) | (int64_t)local : 0;
    if (c->size > 1) {
        char mine[1024];
        snprintf(mine, sizeof mine, "%s", loom_error_message());
        loom_status st = loom_comm_allreduce_max_i64(c, &v, 1);
        if (st != LOOM_OK) return st; /* no agreement: the caller aborts */
        if (local != LOOM_OK) loom_error_set(local, __FILE__, __LINE__, __func__, "%s", mine);
    }
    if (v == 0) return LOOM_OK;
    loom_status st = local;
    if (local == LOOM_OK)
        st = loom_error_set((loom_status)(v & 0xff), __FILE__, __LINE__, __func__,
                            "%s failed on rank %d (its message says why); every rank stops", what,
                            (int)((1 << 30) - (v >> 8)));
    loom_error_mark_collective();
    return st;
}

int loom_comm_rank(const loom_comm *c) { return c ? c->rank : 0; }
int loom_comm_size(const loom_comm *c) { return c ? c->size : 1; }
const char *loom_comm_name(const loom_comm *c) { return c ? c->name : "none"; }
int loom_comm_world_rank(const loom_comm *c) { return c ? c->world_rank : 0; }
void loom_comm_set_timeout(loom_comm *c, double s) { c->timeout_s = s; }
void loom_comm_set_backend(loom_comm *c, loom_backend *be) {
    c->be = be;
    if (be && be->comm_attach) be->comm_attach(be, c); /* the backend's own transport (CUDA: NCCL), if any */
}
void loom_comm_set_interrupt(loom_comm *c, volatile sig_atomic_t *flag) { c->interrupt = flag; }
loom_comm_stats loom_comm_get_stats(const loom_comm *c) { return c->stats; }
void loom_comm_reset_stats(loom_comm *c) { memset(&c->stats, 0, sizeof c->stats); }

/* ---- waits: polling, so that a lost peer or a signal ends the wait with a message ---- */

/* ---- staging: backend buffers the host cannot address go through host copies ---- */

static int needs_stage(const loom_comm *c, const void *buf) {
    return c->be && !c->ops.device_native && loom_buf_device_only(c->be, buf);
}

/* buf as the implementation gets it: itself, or a host copy (holding its contents when copy_in) */
static loom_status stage(loom_comm *c, const void *buf, int64_t bytes, int copy_in, void **host) {
    *host = (void *)buf;
    if (!needs_stage(c, buf)) return LOOM_OK;
    *host = malloc((size_t)(bytes > 0 ? bytes : 1));
    LOOM_CHECK(*host != NULL, LOOM_ERR_NOMEM, "out of memory staging %lld bytes for communicator '%s'",
               (long long)bytes, c->name);
    if (!copy_in) return LOOM_OK;
    loom_status st = loom_buf_download(c->be, *host, buf, (size_t)bytes);
    if (st != LOOM_OK) {
        free(*host);
        *host = NULL;
    }
    return st;
}

/* the request's input copy (freed when done) and result copy (uploaded to dst when done) */
static void stage_keep(loom_comm_req *r, void *in_copy, const void *in, void *out_copy, void *out, int64_t out_bytes) {
    if (in_copy != in) r->stage_in = in_copy;
    if (out_copy != out) {
        r->stage_out = out_copy;
        r->out_dst = out;
        r->out_bytes = out_bytes;
    }
}

static loom_status stage_finish(loom_comm_req *r, int ok) {
    loom_status st = LOOM_OK;
    if (r->stage_out && ok) st = loom_buf_upload(r->comm->be, r->out_dst, r->stage_out, (size_t)r->out_bytes);
    if (r->stage_in != r->stage_out) free(r->stage_in);
    free(r->stage_out);
    r->stage_in = r->stage_out = NULL;
    return st;
}

loom_status loom_comm_test(loom_comm_req *r, int *done) {
    *done = 1;
    if (!r->active) return LOOM_OK;
    char err[256] = "";
    if (r->comm->ops.test(r, done, err, (int)sizeof err) != 0) {
        r->active = 0;
        (void)stage_finish(r, 0);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "rank %d: %s on communicator '%s' (%d ranks) failed: %s",
                              r->comm->world_rank, r->op, r->comm->name, r->comm->size, err);
    }
    if (*done) {
        r->active = 0;
        LOOM_CALL(stage_finish(r, 1));
    }
    return LOOM_OK;
}

/* Polls until ready(ctx, &err) says done (1), fails (< 0, err set) or the communicator's timeout or
 * interrupt flag ends the wait with a message naming rank, operation and communicator. The time counts as
 * waiting. Spins briefly (latency), then yields the core (ranks may outnumber cores), then sleeps. */
enum { INTERRUPT_GRACE_S = 5 };
static double interrupt_seen; /* when a wait first saw the stop flag (process-wide, as the flag is) */

static loom_status poll_wait(loom_comm *c, const char *op, int (*ready)(void *ctx, loom_status *err), void *ctx) {
    const double t0 = loom_comm_now();
    long spins = 0;
    loom_status st = LOOM_OK;
    loom_progress_waiting(1); /* a supervisor tells the rank everyone waits for from those waiting */
    for (;;) {
        int r = ready(ctx, &st);
        if (r < 0) break;
        if (r > 0) break;
        double now = loom_comm_now();
        /* A stop signal usually reaches every rank at once (a launcher forwards it): the step finishes, and
         * the ranks stop together after it, checkpointed. A wait that goes on INTERRUPT_GRACE_S after the
         * signal waits for a peer that is gone or stuck: it ends with an error. */
        if (c->interrupt && *c->interrupt && interrupt_seen == 0) interrupt_seen = now;
        if (c->interrupt && *c->interrupt && now - interrupt_seen > INTERRUPT_GRACE_S) {
            st = loom_error_set(LOOM_ERR_INTERRUPTED, __FILE__, __LINE__, __func__,
                                "rank %d: interrupted by signal %d while waiting %.1f s in %s on communicator "
                                "'%s' (%d ranks); if a peer rank died, its launcher's message names it",
                                c->world_rank, (int)*c->interrupt, now - t0, op, c->name, c->size);
            break;
        }
        if (c->timeout_s > 0 && now - t0 > c->timeout_s) {
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                "rank %d: %s on communicator '%s' (%d ranks) did not finish within %.0f s: a peer "
                                "rank is lost or stuck (comm.timeout sets the limit)",
                                c->world_rank, op, c->name, c->size, c->timeout_s);
            break;
        }
        if (++spins > 2000) {
            if (now - t0 > 0.5) {
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
            } else {
                sched_yield();
            }
        }
    }
    loom_progress_waiting(0);
    c->stats.wait_seconds += loom_comm_now() - t0;
    return st;
}

static int req_ready(void *ctx, loom_status *err) {
    int done = 0;
    *err = loom_comm_test(ctx, &done);
    return *err != LOOM_OK ? -1 : done;
}

loom_status loom_comm_wait(loom_comm_req *r) {
    if (!r->active) return stage_finish(r, 1); /* (an operation that completed when it started) */
    loom_status st = poll_wait(r->comm, r->op, req_ready, r);
    r->active = 0;
    if (st != LOOM_OK) (void)stage_finish(r, 0);
    return st;
}

/* ---- node-shared memory ---- */

struct loom_comm_shm {
    loom_comm *comm;
    void **base;
    void *handle;
};

loom_status loom_comm_shm_alloc(loom_comm *c, size_t bytes, loom_comm_shm **out) {
    *out = NULL;
    LOOM_CHECK(c->ops.shm_alloc != NULL, LOOM_ERR_UNSUPPORTED, "communicator '%s' has no shared memory", c->name);
    loom_comm_shm *s = calloc(1, sizeof *s);
    void **base = calloc((size_t)c->size, sizeof(void *));
    if (!s || !base) {
        free(s);
        free(base);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    loom_status st = c->ops.shm_alloc(c, bytes, base, &s->handle);
    if (st != LOOM_OK) {
        free(s);
        free(base);
        return st;
    }
    s->comm = c;
    s->base = base;
    *out = s;
    return LOOM_OK;
}

void loom_comm_shm_free(loom_comm_shm **ps) {
    if (!ps || !*ps) return;
    loom_comm_shm *s = *ps;
    s->comm->ops.shm_free(s->comm, s->handle);
    free(s->base);
    free(s);
    *ps = NULL;
}

void *loom_comm_shm_base(const loom_comm_shm *s, int r) { return s->base[r]; }

void loom_comm_shm_post(uint64_t *flag, uint64_t v) { __atomic_store_n(flag, v, __ATOMIC_RELEASE); }

int loom_comm_shm_ready(const uint64_t *flag, uint64_t v) { return __atomic_load_n(flag, __ATOMIC_ACQUIRE) >= v; }

typedef struct {
    const uint64_t *flag;
    uint64_t value;
} flag_wait;

static int flag_ready(void *ctx, loom_status *err) {
    const flag_wait *f = ctx;
    *err = LOOM_OK;
    return loom_comm_shm_ready(f->flag, f->value);
}

loom_status loom_comm_shm_wait(loom_comm_shm *s, const uint64_t *flag, uint64_t v, const char *op) {
    if (loom_comm_shm_ready(flag, v)) return LOOM_OK;
    flag_wait f = {flag, v};
    return poll_wait(s->comm, op, flag_ready, &f);
}

void loom_comm_shm_reduce(loom_comm_shm *s, size_t off, int64_t lo, int64_t hi, const int64_t *owner_lo) {
    const int N = s->comm->size;
    enum { CHUNK = 2048 }; /* 8 KiB of partial sums stay in L1 while the peers stream past */
    float acc[CHUNK];
#define SEG(q) ((float *)((char *)s->base[q] + off))
    for (int64_t i0 = lo; i0 < hi; i0 += CHUNK) {
        const int64_t m = hi - i0 < CHUNK ? hi - i0 : CHUNK;
        const float *g0 = SEG(0) + i0, *g1 = N > 1 ? SEG(1) + i0 : NULL;
        for (int64_t i = 0; i < m; i++) acc[i] = g1 ? g0[i] + g1[i] : g0[i];
        for (int q = 2; q < N; q++) {
            const float *g = SEG(q) + i0;
            for (int64_t i = 0; i < m; i++) acc[i] += g[i];
        }
        for (int q = 0; q < N; q++) { /* every segment, or the owner of each position */
            const int64_t s0 = owner_lo ? (i0 > owner_lo[q] ? i0 : owner_lo[q]) : i0;
            const int64_t s1 = owner_lo ? (i0 + m < owner_lo[q + 1] ? i0 + m : owner_lo[q + 1]) : i0 + m;
            if (s1 > s0) memcpy(SEG(q) + s0, acc + (s0 - i0), (size_t)(s1 - s0) * sizeof(float));
        }
    }
#undef SEG
}

void loom_comm_count(loom_comm *c, loom_coll k, int64_t bytes) {
    c->stats.calls[k]++;
    c->stats.bytes[k] += bytes;
}

static void begin_uncounted(loom_comm *c, loom_comm_req *r, const char *op) {
    memset(r, 0, sizeof *r);
    r->comm = c;
    r->op = op;
}

static void begin(loom_comm *c, loom_comm_req *r, const char *op, loom_coll k, int64_t bytes) {
    begin_uncounted(c, r, op);
    loom_comm_count(c, k, bytes);
}

/* an implementation's start on staged buffers; on failure the copies go at once */
static loom_status started(loom_comm_req *r, loom_status st) {
    if (st != LOOM_OK) (void)stage_finish(r, 0);
    return st;
}

static loom_status iallreduce(loom_comm *c, void *b, int64_t n, int dt, int op, loom_comm_req *r) {
    const int64_t bytes = n * (dt == LOOM_DT_F32 ? 4 : 8);
    void *h;
    LOOM_CALL(stage(c, b, bytes, 1, &h));
    stage_keep(r, NULL, NULL, h, b, bytes);
    return started(r, c->ops.iallreduce(c, h, n, dt, op, r));
}

loom_status loom_comm_iallreduce_sum_f32(loom_comm *c, float *b, int64_t n, loom_comm_req *r) {
    begin(c, r, "all-reduce", LOOM_COLL_ALLREDUCE, n * 4);
    return iallreduce(c, b, n, LOOM_DT_F32, LOOM_OP_SUM, r);
}

loom_status loom_comm_ireduce_scatter_f32(loom_comm *c, const float *s, float *rv, const int64_t *counts,
                                          loom_comm_req *r) {
    int64_t tot = 0;
    for (int i = 0; i < c->size; i++) tot += counts[i];
    begin(c, r, "reduce-scatter", LOOM_COLL_REDUCE_SCATTER, tot * 4);
    void *hs, *hr;
    LOOM_CALL(stage(c, s, tot * 4, 1, &hs));
    loom_status st = stage(c, rv, counts[c->rank] * 4, 0, &hr);
    if (st != LOOM_OK) {
        if (hs != s) free(hs);
        return st;
    }
    stage_keep(r, hs, s, hr, rv, counts[c->rank] * 4);
    return started(r, c->ops.ireduce_scatter(c, hs, hr, counts, r));
}

loom_status loom_comm_iallgather_f32(loom_comm *c, float *b, const int64_t *counts, loom_comm_req *r) {
    begin(c, r, "all-gather", LOOM_COLL_ALLGATHER, counts[c->rank] * 4);
    int64_t tot = 0;
    for (int i = 0; i < c->size; i++) tot += counts[i];
    void *h;
    LOOM_CALL(stage(c, b, tot * 4, 1, &h));
    stage_keep(r, NULL, NULL, h, b, tot * 4);
    return started(r, c->ops.iallgather(c, h, counts, r));
}

loom_status loom_comm_isend_f32(loom_comm *c, const float *b, int64_t n, int dst, int tag, loom_comm_req *r) {
    begin(c, r, "send", LOOM_COLL_SENDRECV, n * 4);
    void *h;
    LOOM_CALL(stage(c, b, n * 4, 1, &h));
    stage_keep(r, h, b, NULL, NULL, 0);
    return started(r, c->ops.isend(c, h, n * 4, dst, tag, r));
}

loom_status loom_comm_irecv_f32(loom_comm *c, float *b, int64_t n, int src, int tag, loom_comm_req *r) {
    begin_uncounted(c, r, "recv"); /* a transfer counts once, at its sender */
    void *h;
    LOOM_CALL(stage(c, b, n * 4, 0, &h));
    stage_keep(r, NULL, NULL, h, b, n * 4);
    return started(r, c->ops.irecv(c, h, n * 4, src, tag, r));
}

/* blocking forms: start + wait, so the timeout and interrupt apply to them too */
#define BLOCKING(start)             \
    do {                            \
        loom_comm_req r_;           \
        LOOM_CALL(start);           \
        LOOM_CALL(loom_comm_wait(&r_)); \
        return LOOM_OK;             \
    } while (0)

loom_status loom_comm_allreduce_sum_f32(loom_comm *c, float *b, int64_t n) {
    BLOCKING(loom_comm_iallreduce_sum_f32(c, b, n, &r_));
}
/* the operations without a public non-blocking form: begin's bookkeeping, then the implementation's start */
loom_status loom_comm_allreduce_sum_f64(loom_comm *c, double *b, int64_t n) {
    BLOCKING((begin(c, &r_, "all-reduce", LOOM_COLL_ALLREDUCE, n * 8), iallreduce(c, b, n, LOOM_DT_F64, LOOM_OP_SUM, &r_)));
}
loom_status loom_comm_allreduce_max_i64(loom_comm *c, int64_t *b, int64_t n) {
    BLOCKING((begin(c, &r_, "all-reduce", LOOM_COLL_ALLREDUCE, n * 8), iallreduce(c, b, n, LOOM_DT_I64, LOOM_OP_MAX, &r_)));
}
loom_status loom_comm_allreduce_max_f32(loom_comm *c, float *b, int64_t n) {
    BLOCKING((begin(c, &r_, "all-reduce", LOOM_COLL_ALLREDUCE, n * 4), iallreduce(c, b, n, LOOM_DT_F32, LOOM_OP_MAX, &r_)));
}
loom_status loom_comm_broadcast(loom_comm *c, void *b, int64_t n, int root) {
    BLOCKING((begin(c, &r_, "broadcast", LOOM_COLL_BROADCAST, n), c->ops.ibroadcast(c, b, n, root, &r_)));
}
loom_status loom_comm_allgather_bytes(loom_comm *c, const void *s, int64_t n, void *rv) {
    BLOCKING((begin(c, &r_, "all-gather", LOOM_COLL_ALLGATHER, n), c->ops.iallgather_bytes(c, s, n, rv, &r_)));
}
loom_status loom_comm_barrier(loom_comm *c) {
    BLOCKING((begin(c, &r_, "barrier", LOOM_COLL_BARRIER, 0), c->ops.ibarrier(c, &r_)));
}
loom_status loom_comm_send_f32(loom_comm *c, const float *b, int64_t n, int dst, int tag) {
    BLOCKING(loom_comm_isend_f32(c, b, n, dst, tag, &r_));
}
loom_status loom_comm_recv_f32(loom_comm *c, float *b, int64_t n, int src, int tag) {
    BLOCKING(loom_comm_irecv_f32(c, b, n, src, tag, &r_));
}

/* ---- the mesh ---- */

loom_status loom_mesh_shape_parse(const char *text, loom_mesh_shape *out) {
    loom_mesh_shape s = {1, 1, 1, 1};
    const char *p = text ? text : "";
    while (*p) {
        char axis[8];
        int n = 0, used = 0;
        LOOM_CHECK(sscanf(p, "%7[a-z]=%d%n", axis, &n, &used) == 2, LOOM_ERR_CONFIG,
                   "mesh '%s': expected axis=N[,axis=N...] with axes dp, pp, tp, sp", text);
        LOOM_CHECK(n >= 1, LOOM_ERR_CONFIG, "mesh '%s': %s=%d must be >= 1", text, axis, n);
        if (!strcmp(axis, "dp")) s.dp = n;
        else if (!strcmp(axis, "pp")) s.pp = n;
        else if (!strcmp(axis, "tp")) s.tp = n;
        else if (!strcmp(axis, "sp")) s.sp = n;
        else return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__,
                                   "mesh '%s': unknown axis '%s' (known: dp, pp, tp, sp)", text, axis);
        p += used;
        if (*p == ',') p++;
        else LOOM_CHECK(*p == '\0', LOOM_ERR_CONFIG, "mesh '%s': expected ',' after %s=%d", text, axis, n);
    }
    *out = s;
    return LOOM_OK;
}

loom_status loom_mesh_init(loom_comm *world, loom_mesh_shape s, loom_mesh *m) {
    memset(m, 0, sizeof *m);
    const int W = loom_comm_size(world), r = loom_comm_rank(world);
    LOOM_CHECK(s.dp >= 1 && s.pp >= 1 && s.tp >= 1 && s.sp >= 1, LOOM_ERR_CONFIG, "mesh degrees must be >= 1");
    LOOM_CHECK((int64_t)s.dp * s.pp * s.tp * s.sp == W, LOOM_ERR_CONFIG,
               "mesh dp=%d x pp=%d x tp=%d x sp=%d = %lld ranks, but the world has %d (launch with that many "
               "processes, or change the mesh)", s.dp, s.pp, s.tp, s.sp, (long long)s.dp * s.pp * s.tp * s.sp, W);
    m->shape = s;
    m->world = world;
    m->tp_rank = r % s.tp;
    m->sp_rank = (r / s.tp) % s.sp;
    m->dp_rank = (r / (s.tp * s.sp)) % s.dp;
    m->pp_rank = r / (s.tp * s.sp * s.dp);
    /* each axis: ranks that agree on every other coordinate form one group, ordered by their coordinate */
    const int c_tp = (m->pp_rank * s.dp + m->dp_rank) * s.sp + m->sp_rank;
    const int c_sp = (m->pp_rank * s.dp + m->dp_rank) * s.tp + m->tp_rank;
    const int c_dp = (m->pp_rank * s.sp + m->sp_rank) * s.tp + m->tp_rank;
    const int c_pp = (m->dp_rank * s.sp + m->sp_rank) * s.tp + m->tp_rank;
    loom_status st;
    LOOM_CALL_GOTO(st, loom_comm_split(world, c_dp, m->dp_rank, "dp", &m->dp), fail);
    LOOM_CALL_GOTO(st, loom_comm_split(world, c_pp, m->pp_rank, "pp", &m->pp), fail);
    LOOM_CALL_GOTO(st, loom_comm_split(world, c_tp, m->tp_rank, "tp", &m->tp), fail);
    LOOM_CALL_GOTO(st, loom_comm_split(world, c_sp, m->sp_rank, "sp", &m->sp), fail);
    return LOOM_OK;
fail:
    loom_mesh_free(m);
    return st;
}

void loom_mesh_free(loom_mesh *m) {
    loom_comm_free(&m->dp);
    loom_comm_free(&m->pp);
    loom_comm_free(&m->tp);
    loom_comm_free(&m->sp);
}
