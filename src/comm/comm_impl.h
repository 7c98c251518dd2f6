/* Private: a communicator is a table of operations over an implementation's state. The generic layer
 * (comm.c) does the bookkeeping every implementation shares: statistics, waits with timeout and
 * interrupt, error messages naming rank, operation and communicator. */
#ifndef LOOM_COMM_IMPL_H
#define LOOM_COMM_IMPL_H
#include "loom/comm.h"

typedef struct {
    /* start a non-blocking operation; fills req->handle (or completes at once and leaves req inactive) */
    loom_status (*iallreduce)(loom_comm *, void *buf, int64_t n, int dtype, int op, loom_comm_req *);
    loom_status (*ireduce_scatter)(loom_comm *, const float *send, float *recv, const int64_t *counts, loom_comm_req *);
    loom_status (*iallgather)(loom_comm *, float *buf, const int64_t *counts, loom_comm_req *);
    loom_status (*iallgather_bytes)(loom_comm *, const void *send, int64_t bytes, void *recv, loom_comm_req *);
    loom_status (*ibroadcast)(loom_comm *, void *buf, int64_t bytes, int root, loom_comm_req *);
    loom_status (*ibarrier)(loom_comm *, loom_comm_req *);
    loom_status (*isend)(loom_comm *, const void *buf, int64_t bytes, int peer, int tag, loom_comm_req *);
    loom_status (*irecv)(loom_comm *, void *buf, int64_t bytes, int peer, int tag, loom_comm_req *);
    /* *done = 1 when the request finished; an MPI error is returned as a message (no status set) */
    int (*test)(loom_comm_req *, int *done, char *err, int errlen);
    loom_status (*split)(loom_comm *, int color, int key, const char *name, loom_comm **out);
    void (*free_impl)(loom_comm *);
    /* node-shared segments (NULL: unsupported): base[r] = rank r's; *handle for shm_free */
    loom_status (*shm_alloc)(loom_comm *, size_t bytes, void **base, void **handle);
    void (*shm_free)(loom_comm *, void *handle);
    /* ends every process of the job (NULL: one process, nothing to end) */
    void (*abort_job)(loom_comm *, int code);
    int device_native;  /* moves a backend's device buffers itself (NCCL); 0: host memory only (MPI) */
    /* the MPI_Comm of an MPI communicator (a pointer to it), for a layer set up over it (NCCL exchanges its
     * id through it); NULL: not MPI */
    const void *(*mpi_handle)(const loom_comm *);
} loom_comm_ops;

enum { LOOM_DT_F32 = 0, LOOM_DT_F64, LOOM_DT_I64 };
enum { LOOM_OP_SUM = 0, LOOM_OP_MAX };

struct loom_comm {
    char name[32];
    int rank, size, world_rank;
    double timeout_s;
    volatile sig_atomic_t *interrupt;
    loom_backend *be;   /* whose buffers may need staging (NULL: none) */
    loom_comm_stats stats;
    loom_comm_ops ops;
    void *impl;
    void *dev;          /* a backend's layer over this communicator (NCCL: backend.h comm_attach), NULL: none */
};

/* comm.c: fills the generic fields of a new communicator */
void loom_comm_init_common(loom_comm *c, const char *name, int rank, int size, int world_rank);
double loom_comm_now(void);

/* mpi.c (MPI builds only) */
int loom_comm_mpi_launched(void);
loom_status loom_comm_mpi_world(loom_comm **out);
#endif
