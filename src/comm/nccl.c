/* NCCL as a communicator implementation, for the CUDA backend's buffers (compiled into the CUDA module,
 * libloom_cuda.so, only; it needs MPI).
 *
 * How it attaches: loom_comm_set_backend(comm, cuda_backend) calls the backend's comm_attach (loom_nccl_attach)
 * for an MPI communicator, and for every communicator split from it later. Attaching is not collective: it
 * wraps the communicator's table of operations, keeping MPI's for everything else. The NCCL communicator
 * itself is created at the first collective on device buffers (which every rank of the communicator starts
 * in the same order, so the set-up is collective exactly when it must be): rank 0 makes an ncclUniqueId,
 * MPI broadcasts it, every rank joins with ncclCommInitRank on its backend's GPU (one process per GPU; the
 * backend picks local rank modulo the device count).
 *
 * Dispatch: a buffer the backend says is device memory goes to NCCL, host memory to MPI as before.
 * all-reduce (f32/f64/i64, sum/max) -> ncclAllReduce; reduce-scatter -> ncclReduceScatter when every rank's
 * count is equal, else a group of ncclReduce (one per rank, rooted at it) since NCCL's needs equal counts;
 * in-place all-gather -> ncclAllGather when equal, else a group of ncclBroadcast from each rank; byte
 * all-gather -> ncclAllGather; broadcast -> ncclBroadcast; barrier -> MPI. Send/recv stay on MPI, the device
 * buffer staged through host memory (NCCL's point-to-point would deadlock on loom's separately posted
 * exchanges and ignores tags: see n_isend). A communicator of one rank does the local part (a copy) on the
 * backend's stream, with no NCCL.
 *
 * Ordering: NCCL runs on the backend's one communication stream, after an event recorded on the compute
 * stream (so a collective reads what the kernels before it wrote); its completion is a CUDA event recorded
 * after it, which loom_comm_test queries (cudaEventQuery) while comm.c's waits poll, so timeouts and signals
 * still end a wait. A finished wait means the data is in place for any kernel queued after it. One stream
 * for every communicator keeps collectives in this process's issue order.
 *
 * A request NCCL completes holds its event in handle[0] and NCCL_REQ_TAG in handle[1] (MPI keeps 0 or a
 * pointer there, never that value). LOOM_NCCL=0 in the environment leaves communicators on MPI, staging
 * device buffers through host memory (comm.c).
 *
 * UNVERIFIED: compiled without a GPU or NCCL run; nothing here has been executed. */
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/cuda/cuda_impl.h"
#include "comm_impl.h"

#define NCCL_REQ_TAG 0x4e43434c45564e54ull /* "NCCLEVNT" */

typedef struct {
    loom_comm_ops mpi; /* the MPI implementation's table: host buffers, barrier, split, shared memory, free */
    loom_backend *be;  /* the CUDA backend whose buffers go through NCCL */
    ncclComm_t nccl;   /* created at the first collective on device buffers */
    int dead;          /* NCCL failed on this communicator: later device collectives fail at once */
} nccl_state;

static nccl_state *state_of(const loom_comm *c) { return (nccl_state *)c->dev; }

static int on_device(const nccl_state *s, const void *p) {
    return p && s->be->buf.device_only && s->be->buf.device_only(s->be, p);
}

static loom_status nccl_fail(loom_comm *c, ncclResult_t r, const char *what) {
    nccl_state *s = state_of(c);
    s->dead = 1;
    return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "rank %d: NCCL %s on communicator '%s' (%d ranks): %s%s%s",
                          c->world_rank, what, c->name, c->size, ncclGetErrorString(r), s->nccl ? "; " : "",
                          s->nccl ? ncclGetLastError(s->nccl) : "");
}

/* the NCCL communicator, made at the first device collective (collective over c's ranks) */
static loom_status nccl_open(loom_comm *c, nccl_state *s) {
    if (s->nccl) return LOOM_OK;
    LOOM_CHECK(!s->dead, LOOM_ERR_IO, "rank %d: NCCL failed earlier on communicator '%s'", c->world_rank, c->name);
    const MPI_Comm mc = *(const MPI_Comm *)s->mpi.mpi_handle(c);
    struct {
        ncclUniqueId id;
        int ok;
    } msg;
    memset(&msg, 0, sizeof msg);
    if (c->rank == 0) msg.ok = ncclGetUniqueId(&msg.id) == ncclSuccess;
    const int rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, mc); /* every rank learns whether rank 0 could */
    LOOM_CHECK(rc == MPI_SUCCESS, LOOM_ERR_IO, "rank %d: broadcasting the NCCL id on communicator '%s' failed (MPI error %d)",
               c->world_rank, c->name, rc);
    if (!msg.ok) {
        s->dead = 1;
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                              "rank %d: NCCL: rank 0 of communicator '%s' could not create an id (LOOM_NCCL=0 stages "
                              "GPU buffers through MPI instead)", c->world_rank, c->name);
    }
    LOOM_CALL_CUDA(cudaSetDevice(loom_cuda_of(s->be)->device));
    const ncclResult_t r = ncclCommInitRank(&s->nccl, c->size, msg.id, c->rank);
    if (r != ncclSuccess) {
        s->nccl = NULL;
        return nccl_fail(c, r, "set-up (LOOM_NCCL=0 stages GPU buffers through MPI instead)");
    }
    int version = 0;
    (void)ncclGetVersion(&version);
    if (c->rank == 0)
        LOOM_INFO("NCCL %d on communicator '%s' (%d ranks) for GPU buffers", version, c->name, c->size);
    return LOOM_OK;
}

/* a device collective's stream, once the compute stream's work before it (its inputs) is done there */
static loom_status dev_start(loom_comm *c, nccl_state *s, cudaStream_t *st) {
    LOOM_CALL(nccl_open(c, s));
    loom_cuda *cu = loom_cuda_of(s->be);
    LOOM_CALL_CUDA(cudaEventRecord(cu->ev_comm, cu->stream));
    LOOM_CALL_CUDA(cudaStreamWaitEvent(cu->comm_stream, cu->ev_comm, 0));
    *st = cu->comm_stream;
    return LOOM_OK;
}

/* after the NCCL call(s) returned r: the request completes with an event recorded behind them */
static loom_status dev_finish(loom_comm *c, nccl_state *s, ncclResult_t r, const char *what, loom_comm_req *req) {
    if (r != ncclSuccess) return nccl_fail(c, r, what);
    cudaEvent_t ev;
    LOOM_CALL_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    const cudaError_t e = cudaEventRecord(ev, loom_cuda_of(s->be)->comm_stream);
    if (e != cudaSuccess) {
        (void)cudaEventDestroy(ev);
        return loom_cuda_fail(e, "cudaEventRecord", __FILE__, __LINE__, __func__);
    }
    memcpy(&req->handle[0], &ev, sizeof ev);
    req->handle[1] = NCCL_REQ_TAG;
    req->active = 1;
    return LOOM_OK;
}

static int equal_counts(const loom_comm *c, const int64_t *counts) {
    for (int i = 1; i < c->size; i++)
        if (counts[i] != counts[0]) return 0;
    return 1;
}

static int64_t total_count(const loom_comm *c, const int64_t *counts) {
    int64_t t = 0;
    for (int i = 0; i < c->size; i++) t += counts[i];
    return t;
}

static ncclResult_t group_end(ncclResult_t r) {
    const ncclResult_t e = ncclGroupEnd(); /* always closes the group, even after an error inside it */
    return r != ncclSuccess ? r : e;
}

/* ---- the operations: device buffers to NCCL, host buffers to MPI ---- */

static loom_status n_iallreduce(loom_comm *c, void *b, int64_t n, int dt, int op, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, b)) return s->mpi.iallreduce(c, b, n, dt, op, r);
    if (c->size == 1 || n == 0) return LOOM_OK;
    cudaStream_t st;
    LOOM_CALL(dev_start(c, s, &st));
    const ncclDataType_t t = dt == LOOM_DT_F32 ? ncclFloat32 : dt == LOOM_DT_F64 ? ncclFloat64 : ncclInt64;
    return dev_finish(c, s, ncclAllReduce(b, b, (size_t)n, t, op == LOOM_OP_SUM ? ncclSum : ncclMax, s->nccl, st),
                      "all-reduce", r);
}

static loom_status n_ireduce_scatter(loom_comm *c, const float *snd, float *rcv, const int64_t *counts,
                                     loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, snd)) {
        LOOM_CHECK(!on_device(s, rcv), LOOM_ERR_UNSUPPORTED, "rank %d: reduce-scatter on '%s' from host memory into a GPU "
                   "buffer: both must be on one side", c->world_rank, c->name);
        return s->mpi.ireduce_scatter(c, snd, rcv, counts, r);
    }
    LOOM_CHECK(counts[c->rank] == 0 || on_device(s, rcv), LOOM_ERR_UNSUPPORTED, "rank %d: reduce-scatter on '%s' from a "
               "GPU buffer into host memory: both must be on one side", c->world_rank, c->name);
    cudaStream_t st;
    if (total_count(c, counts) == 0) return LOOM_OK; /* every rank knows it: the same counts everywhere */
    if (c->size == 1) { /* this rank's part is everything: a copy, in order on the compute stream */
        if (rcv != snd && counts[0] > 0)
            LOOM_CALL_CUDA(cudaMemcpyAsync(rcv, snd, (size_t)counts[0] * sizeof(float), cudaMemcpyDeviceToDevice,
                                           loom_cuda_of(s->be)->stream));
        return LOOM_OK;
    }
    LOOM_CALL(dev_start(c, s, &st));
    if (equal_counts(c, counts))
        return dev_finish(c, s, ncclReduceScatter(snd, rcv, (size_t)counts[0], ncclFloat32, ncclSum, s->nccl, st),
                          "reduce-scatter", r);
    /* unequal parts: each rank's part is a reduce rooted at it (recvbuff is only written on the root) */
    void *unused = rcv ? (void *)rcv : (void *)snd; /* a valid device address for the ranks NCCL ignores it on */
    ncclResult_t res = ncclGroupStart();
    int64_t off = 0;
    for (int q = 0; q < c->size && res == ncclSuccess; q++) {
        if (counts[q] > 0)
            res = ncclReduce(snd + off, q == c->rank ? (void *)rcv : unused, (size_t)counts[q], ncclFloat32, ncclSum, q,
                             s->nccl, st);
        off += counts[q];
    }
    return dev_finish(c, s, group_end(res), "reduce-scatter", r);
}

static loom_status n_iallgather(loom_comm *c, float *b, const int64_t *counts, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, b)) return s->mpi.iallgather(c, b, counts, r);
    if (c->size == 1 || total_count(c, counts) == 0) return LOOM_OK;
    cudaStream_t st;
    LOOM_CALL(dev_start(c, s, &st));
    if (equal_counts(c, counts)) /* in place: this rank's part already sits at its offset */
        return dev_finish(c, s, ncclAllGather(b + (int64_t)c->rank * counts[0], b, (size_t)counts[0], ncclFloat32,
                                              s->nccl, st), "all-gather", r);
    ncclResult_t res = ncclGroupStart();
    int64_t off = 0;
    for (int q = 0; q < c->size && res == ncclSuccess; q++) {
        if (counts[q] > 0) res = ncclBroadcast(b + off, b + off, (size_t)counts[q], ncclFloat32, q, s->nccl, st);
        off += counts[q];
    }
    return dev_finish(c, s, group_end(res), "all-gather", r);
}

static loom_status n_iallgather_bytes(loom_comm *c, const void *snd, int64_t n, void *rcv, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, snd)) return s->mpi.iallgather_bytes(c, snd, n, rcv, r);
    LOOM_CHECK(on_device(s, rcv), LOOM_ERR_UNSUPPORTED, "rank %d: all-gather on '%s' from a GPU buffer into host "
               "memory: both must be on one side", c->world_rank, c->name);
    if (n == 0) return LOOM_OK;
    if (c->size == 1) {
        if (rcv != snd)
            LOOM_CALL_CUDA(cudaMemcpyAsync(rcv, snd, (size_t)n, cudaMemcpyDeviceToDevice, loom_cuda_of(s->be)->stream));
        return LOOM_OK;
    }
    cudaStream_t st;
    LOOM_CALL(dev_start(c, s, &st));
    return dev_finish(c, s, ncclAllGather(snd, rcv, (size_t)n, ncclUint8, s->nccl, st), "all-gather", r);
}

static loom_status n_ibroadcast(loom_comm *c, void *b, int64_t n, int root, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, b)) return s->mpi.ibroadcast(c, b, n, root, r);
    LOOM_CHECK(root >= 0 && root < c->size, LOOM_ERR_INVALID_ARG, "broadcast root %d on '%s' of %d ranks", root,
               c->name, c->size);
    if (c->size == 1 || n == 0) return LOOM_OK;
    cudaStream_t st;
    LOOM_CALL(dev_start(c, s, &st));
    return dev_finish(c, s, ncclBroadcast(b, b, (size_t)n, ncclUint8, root, s->nccl, st), "broadcast", r);
}

/* Point-to-point stays on MPI, through host copies of device buffers kept in the request's staging fields
 * (comm.c frees the send's copy and uploads the receive's when the request completes). NCCL matches a pair's
 * transfers in issue order, not by tag, and a send or receive holds its stream until the peer's matching call:
 * an exchange posted as separate calls (a ring shift: every rank receives from the left, then sends to the
 * right) deadlocks unless both halves are in one ncclGroup, and loom's interface posts them separately. */
static loom_status n_isend(loom_comm *c, const void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, b)) return s->mpi.isend(c, b, n, peer, tag, r);
    void *h = malloc((size_t)(n > 0 ? n : 1));
    LOOM_CHECK(h != NULL, LOOM_ERR_NOMEM, "out of memory staging a %lld-byte send on '%s'", (long long)n, c->name);
    const loom_status st = loom_cuda_copy(s->be, &(loom_copy_args){h, b, n, LOOM_COPY_D2H}); /* waits for it */
    if (st != LOOM_OK) {
        free(h);
        return st;
    }
    r->stage_in = h;
    return s->mpi.isend(c, h, n, peer, tag, r);
}

static loom_status n_irecv(loom_comm *c, void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    nccl_state *s = state_of(c);
    if (!on_device(s, b)) return s->mpi.irecv(c, b, n, peer, tag, r);
    void *h = malloc((size_t)(n > 0 ? n : 1));
    LOOM_CHECK(h != NULL, LOOM_ERR_NOMEM, "out of memory staging a %lld-byte receive on '%s'", (long long)n, c->name);
    r->stage_out = h;
    r->out_dst = b;
    r->out_bytes = n;
    return s->mpi.irecv(c, h, n, peer, tag, r);
}

/* an NCCL request: done when its event is; NCCL's own asynchronous error (a lost peer) ends it too */
static int n_test(loom_comm_req *r, int *done, char *err, int errlen) {
    nccl_state *s = state_of(r->comm);
    if (r->handle[1] != NCCL_REQ_TAG) return s->mpi.test(r, done, err, errlen);
    cudaEvent_t ev;
    memcpy(&ev, &r->handle[0], sizeof ev);
    const cudaError_t e = cudaEventQuery(ev);
    *done = 0;
    if (e == cudaErrorNotReady) {
        ncclResult_t ae = ncclSuccess;
        if (s->nccl && ncclCommGetAsyncError(s->nccl, &ae) == ncclSuccess && ae != ncclSuccess && ae != ncclInProgress) {
            snprintf(err, (size_t)errlen, "NCCL: %s", ncclGetErrorString(ae));
            s->dead = 1;
            return -1; /* the event stays: the job is about to end */
        }
        return 0;
    }
    (void)cudaEventDestroy(ev);
    r->handle[0] = r->handle[1] = 0;
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(err, (size_t)errlen, "CUDA: %s", cudaGetErrorString(e));
        return -1;
    }
    *done = 1;
    return 0;
}

static void n_free(loom_comm *c) {
    nccl_state *s = state_of(c);
    if (s) {
        if (s->nccl) {
            if (s->dead) (void)ncclCommAbort(s->nccl); /* a failed communicator may never finish its work */
            else (void)ncclCommDestroy(s->nccl);
        }
        c->ops = s->mpi;
        c->dev = NULL;
        free(s);
    }
    if (c->ops.free_impl) c->ops.free_impl(c);
}

void loom_nccl_attach(loom_backend *be, loom_comm *c) {
    if (c->dev || !c->ops.mpi_handle) return; /* already attached, or not MPI (self: one process, no transport) */
    const char *env = getenv("LOOM_NCCL");
    if (env && !strcmp(env, "0")) return; /* MPI with device buffers staged through host memory (comm.c) */
    nccl_state *s = calloc(1, sizeof *s);
    if (!s) {
        LOOM_WARN("out of memory attaching NCCL to communicator '%s': GPU buffers go through MPI", c->name);
        return;
    }
    s->mpi = c->ops;
    s->be = be;
    c->dev = s;
    c->ops.iallreduce = n_iallreduce;
    c->ops.ireduce_scatter = n_ireduce_scatter;
    c->ops.iallgather = n_iallgather;
    c->ops.iallgather_bytes = n_iallgather_bytes;
    c->ops.ibroadcast = n_ibroadcast;
    c->ops.isend = n_isend;
    c->ops.irecv = n_irecv;
    c->ops.test = n_test;
    c->ops.free_impl = n_free;
    c->ops.device_native = 1; /* comm.c passes device buffers through unstaged */
}
