/* loom/comm.h: the communicator and the process mesh. Model and parallel code talk to other ranks only
 * through this layer. Two implementations fill one table of operations: "self" (one process; every
 * collective is the identity) and MPI (src/comm/mpi.c, when built with MPI and launched by mpirun/srun),
 * so no code above this layer has an #ifdef on MPI.
 *
 *   loom_comm *world;
 *   LOOM_CALL(loom_comm_init_world(&world));            // MPI when launched by mpirun/srun, else self
 *   loom_mesh mesh;
 *   LOOM_CALL(loom_mesh_init(world, (loom_mesh_shape){.dp = 2, .pp = 1, .tp = 1, .sp = 1}, &mesh));
 *   LOOM_CALL(loom_comm_allreduce_sum_f32(mesh.dp, grads, n));          // collective over the dp axis
 *   loom_comm_req r;
 *   LOOM_CALL(loom_comm_iallreduce_sum_f32(mesh.dp, bucket, k, &r));    // non-blocking
 *   ... compute ...
 *   LOOM_CALL(loom_comm_wait(&r));
 *   loom_mesh_free(&mesh);
 *   loom_comm_free(&world);
 *
 * Every wait polls, so a collective that does not finish within the communicator's timeout, or that is
 * interrupted by a signal, returns an error naming this rank, the collective and the axis instead of
 * hanging. Errors from MPI are returned, never fatal. Counts are elements; a float is 4 bytes.
 *
 * Buffers may be a backend's (loom/backend.h): with loom_comm_set_backend, a buffer the host cannot address
 * is staged through host memory (downloaded before the transfer, uploaded when it completes) for an
 * implementation that moves host memory (MPI); one that moves device memory itself (NCCL) takes it as it is. */
#ifndef LOOM_COMM_H
#define LOOM_COMM_H
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/backend.h"
#include "loom/status.h"

typedef struct loom_comm loom_comm;

/* A pending non-blocking operation. Plain data: zero-initialise; a finished or never-started request
 * is inactive and waiting on it returns at once. */
typedef struct {
    loom_comm *comm;
    const char *op;       /* "all-reduce", ... for error messages */
    uint64_t handle[2];   /* the implementation's request */
    int active;
    void *stage_in;       /* host copies of backend buffers (see loom_comm_set_backend): the input, freed */
    void *stage_out;      /* and the result, uploaded to out_dst, when the operation completes */
    void *out_dst;
    int64_t out_bytes;
} loom_comm_req;

/* What a communicator has done: for measuring overlap and counting traffic (per communicator). */
typedef enum {
    LOOM_COLL_ALLREDUCE = 0, LOOM_COLL_REDUCE_SCATTER, LOOM_COLL_ALLGATHER, LOOM_COLL_BROADCAST, LOOM_COLL_SENDRECV,
    LOOM_COLL_BARRIER, LOOM_COLL_COUNT
} loom_coll;
typedef struct {
    int64_t calls[LOOM_COLL_COUNT];   /* send/recv: the sends (a transfer counts once, at its sender) */
    int64_t bytes[LOOM_COLL_COUNT];   /* payload bytes this rank contributed */
    double wait_seconds;              /* time spent blocked in waits (not hidden behind compute) */
} loom_comm_stats;
const char *loom_coll_name(loom_coll c);

/* Not collective: a communicator of this process alone. */
LOOM_NODISCARD loom_status loom_comm_init_self(loom_comm **out);
/* The world: MPI's when this process was launched by an MPI launcher (mpirun, mpiexec, srun) and loom
 * was built with MPI; otherwise self. Collective when MPI. Initialises MPI once per process. */
LOOM_NODISCARD loom_status loom_comm_init_world(loom_comm **out);
/* 1 when this build has the MPI communicator. */
int loom_comm_have_mpi(void);
/* Collective: a sub-communicator of the ranks with the same color, ordered by key, named `name`. */
LOOM_NODISCARD loom_status loom_comm_split(loom_comm *comm, int color, int key, const char *name, loom_comm **out);
/* Frees the communicator; freeing the last MPI world finalises MPI. */
void loom_comm_free(loom_comm **comm);
int loom_comm_rank(const loom_comm *comm);
int loom_comm_size(const loom_comm *comm);
const char *loom_comm_name(const loom_comm *comm);
/* The rank of this process in the world (for messages). */
int loom_comm_world_rank(const loom_comm *comm);
/* Not collective: the backend whose buffers this communicator (and every one split from it later) may be
 * given (NULL: host memory only). */
void loom_comm_set_backend(loom_comm *comm, loom_backend *be);
/* Seconds a wait may block before it fails (default 600; <= 0: forever). */
void loom_comm_set_timeout(loom_comm *comm, double seconds);
/* A flag (a signal handler's) that makes a blocked wait fail as interrupted when it becomes non-zero. */
void loom_comm_set_interrupt(loom_comm *comm, volatile sig_atomic_t *flag);
loom_comm_stats loom_comm_get_stats(const loom_comm *comm);
void loom_comm_reset_stats(loom_comm *comm);

/* ---- errors across ranks ----
 * An error on one rank must end the whole job within seconds, never leave its peers waiting in a collective.
 * Where every rank must succeed together (set-up, resume, a checkpoint), they agree; elsewhere the rank
 * that failed aborts the job once its message is out. */
/* Collective: every rank learns whether any rank's `local` status failed. LOOM_OK when none did; else this
 * rank's own error (its message kept) or one naming the first failing rank and `what` ("resuming"), marked
 * collective (loom_error_is_collective) so that every rank may end normally. */
LOOM_NODISCARD loom_status loom_comm_agree(loom_comm *comm, loom_status local, const char *what);
/* Not collective: ends every process of the job at once with exit status `code` (MPI_Abort); for an error
 * that struck this rank alone, after its message is printed. Returns only for a communicator of one
 * process, where there is nothing else to end. */
void loom_comm_abort(loom_comm *comm, int code);

/* Collectives (blocking). In-place sums over the communicator's ranks. */
LOOM_NODISCARD loom_status loom_comm_allreduce_sum_f32(loom_comm *comm, float *buf, int64_t n);
LOOM_NODISCARD loom_status loom_comm_allreduce_sum_f64(loom_comm *comm, double *buf, int64_t n);
LOOM_NODISCARD loom_status loom_comm_allreduce_max_i64(loom_comm *comm, int64_t *buf, int64_t n);
LOOM_NODISCARD loom_status loom_comm_allreduce_max_f32(loom_comm *comm, float *buf, int64_t n);
/* rank `root`'s buffer to all. */
LOOM_NODISCARD loom_status loom_comm_broadcast(loom_comm *comm, void *buf, int64_t bytes, int root);
/* recv (size * bytes) = every rank's `bytes` of send, in rank order. */
LOOM_NODISCARD loom_status loom_comm_allgather_bytes(loom_comm *comm, const void *send, int64_t bytes, void *recv);
LOOM_NODISCARD loom_status loom_comm_barrier(loom_comm *comm);
LOOM_NODISCARD loom_status loom_comm_send_f32(loom_comm *comm, const float *buf, int64_t n, int dst, int tag);
LOOM_NODISCARD loom_status loom_comm_recv_f32(loom_comm *comm, float *buf, int64_t n, int src, int tag);

/* Non-blocking collectives: start, then loom_comm_wait (or loom_comm_test) before touching the buffers.
 * Every rank of the communicator must start the same collectives in the same order. */
LOOM_NODISCARD loom_status loom_comm_iallreduce_sum_f32(loom_comm *comm, float *buf, int64_t n, loom_comm_req *req);
/* Reduce-scatter of a vector split over the ranks: send holds sum(counts) floats; rank r receives the sum
 * of every rank's counts[r] floats at offset sum(counts[0..r)) into recv (counts[r] floats). */
LOOM_NODISCARD loom_status loom_comm_ireduce_scatter_f32(loom_comm *comm, const float *send, float *recv,
                                                         const int64_t *counts, loom_comm_req *req);
/* In-place all-gather: buf holds sum(counts) floats; rank r's part is counts[r] floats at offset
 * sum(counts[0..r)); afterwards every rank has every part. */
LOOM_NODISCARD loom_status loom_comm_iallgather_f32(loom_comm *comm, float *buf, const int64_t *counts,
                                                    loom_comm_req *req);
LOOM_NODISCARD loom_status loom_comm_isend_f32(loom_comm *comm, const float *buf, int64_t n, int dst, int tag,
                                               loom_comm_req *req);
LOOM_NODISCARD loom_status loom_comm_irecv_f32(loom_comm *comm, float *buf, int64_t n, int src, int tag,
                                               loom_comm_req *req);
/* Blocks until done (or the timeout/interrupt: then an error naming rank, operation and communicator). */
LOOM_NODISCARD loom_status loom_comm_wait(loom_comm_req *req);
/* Non-blocking progress: *done = 1 when finished (the request becomes inactive). */
LOOM_NODISCARD loom_status loom_comm_test(loom_comm_req *req, int *done);

/* ---- node-shared memory ----
 * When every rank of a communicator runs on one node, each rank can own a segment that all the others
 * address directly (MPI-3 shared windows). A reduction then reads the peers' buffers in place: one pass
 * over memory instead of MPI's copies through its own buffers, which matters on a CPU, where moving bytes
 * costs the same cores the model computes on. Ranks order their accesses with flags in the segments:
 * loom_comm_shm_post publishes a value (release), loom_comm_shm_wait blocks until a peer's flag reaches one
 * (acquire), under the communicator's timeout and interrupt like every other wait. */
typedef struct loom_comm_shm loom_comm_shm;
/* Collective: `bytes` per rank, zero-filled. LOOM_ERR_UNSUPPORTED (nothing allocated, no collective left
 * pending) when the ranks span nodes, the communicator is not MPI's, or the node's shared-memory file
 * system lacks room; the caller falls back to message passing. */
LOOM_NODISCARD loom_status loom_comm_shm_alloc(loom_comm *comm, size_t bytes, loom_comm_shm **out);
/* Collective. */
void loom_comm_shm_free(loom_comm_shm **shm);
/* Rank r's segment, in this process's address space. */
void *loom_comm_shm_base(const loom_comm_shm *shm, int rank);
void loom_comm_shm_post(uint64_t *flag, uint64_t value);
LOOM_NODISCARD loom_status loom_comm_shm_wait(loom_comm_shm *shm, const uint64_t *flag, uint64_t value,
                                              const char *op);
/* Non-blocking: 1 when *flag >= value. */
int loom_comm_shm_ready(const uint64_t *flag, uint64_t value);
/* This rank's share of a node-shared sum (every rank calls it for its own [lo, hi) of the same round, after
 * the peers' flags say their inputs are final): floats [lo, hi) at byte offset `off` of every rank's segment,
 * summed in rank order (so a sum is the same number whichever rank computes it), each sum written to every
 * segment (owner_lo NULL) or to the segment of the rank q owning its position (owner_lo[q] <= pos <
 * owner_lo[q+1]: a reduce-scatter). Only this rank touches [lo, hi) until it posts its next flag. */
void loom_comm_shm_reduce(loom_comm_shm *shm, size_t off, int64_t lo, int64_t hi, const int64_t *owner_lo);
/* Counts a collective done through shared memory in the communicator's statistics. */
void loom_comm_count(loom_comm *comm, loom_coll coll, int64_t bytes);

/* ---- the process mesh ---- */

/* Degrees of the four axes; their product is the world size. */
typedef struct {
    int dp, pp, tp, sp;
} loom_mesh_shape;

/* Rank order (documented in docs/DESIGN.md): tp varies fastest, then sp, then dp, then pp:
 *   world rank = ((pp_i * dp + dp_i) * sp + sp_i) * tp + tp_i
 * so a tensor-parallel group is consecutive ranks (one host's cores) and pipeline stages are farthest apart. */
typedef struct {
    loom_mesh_shape shape;
    int dp_rank, pp_rank, tp_rank, sp_rank;
    loom_comm *world;            /* borrowed */
    loom_comm *dp, *pp, *tp, *sp; /* owned: one sub-communicator per axis */
} loom_mesh;

/* Parses "dp=2,pp=1,tp=1,sp=1" (axes left out are 1; "" = all 1). */
LOOM_NODISCARD loom_status loom_mesh_shape_parse(const char *text, loom_mesh_shape *out);
/* Collective over world: checks the product against the world size and makes the axis communicators. */
LOOM_NODISCARD loom_status loom_mesh_init(loom_comm *world, loom_mesh_shape shape, loom_mesh *out);
void loom_mesh_free(loom_mesh *mesh);
#endif
