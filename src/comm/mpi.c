/* The MPI communicator: every operation is MPI's non-blocking form; waits poll (comm.c) so that timeouts
 * and signals end them. Errors are returned (MPI_ERRORS_RETURN), never fatal. */
#ifdef LOOM_HAVE_MPI
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "comm_impl.h"

typedef struct {
    MPI_Comm comm;
    int owns;      /* MPI_Comm_free at free */
    int is_world;  /* MPI_Finalize at free */
} mpi_impl;

static MPI_Comm comm_of(loom_comm *c) { return ((mpi_impl *)c->impl)->comm; }

int loom_comm_mpi_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK",
                                       "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

static loom_status mpi_fail(loom_comm *c, int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "rank %d: %s on communicator '%s' (%d ranks): %s",
                          c->world_rank, what, c->name, c->size, msg);
}

#define MPI_TRY(c, call, what)                         \
    do {                                               \
        int rc_ = (call);                              \
        if (rc_ != MPI_SUCCESS) return mpi_fail((c), rc_, (what)); \
    } while (0)

static MPI_Request *req_of(loom_comm_req *r) { return (MPI_Request *)(void *)r->handle; }

static void armed(loom_comm_req *r) { r->active = 1; }

/* MPI counts are int: loom splits nothing, so one operation must stay below 2^31 elements */
static loom_status count_ok(loom_comm *c, int64_t n, const char *what) {
    LOOM_CHECK(n >= 0 && n <= 0x7fffffff, LOOM_ERR_UNSUPPORTED, "rank %d: %s of %lld elements on '%s' exceeds MPI's int count",
               c->world_rank, what, (long long)n, c->name);
    return LOOM_OK;
}

static loom_status m_iallreduce(loom_comm *c, void *b, int64_t n, int dt, int op, loom_comm_req *r) {
    LOOM_CALL(count_ok(c, n, "all-reduce"));
    MPI_Datatype t = dt == LOOM_DT_F32 ? MPI_FLOAT : dt == LOOM_DT_F64 ? MPI_DOUBLE : MPI_INT64_T;
    MPI_TRY(c, MPI_Iallreduce(MPI_IN_PLACE, b, (int)n, t, op == LOOM_OP_SUM ? MPI_SUM : MPI_MAX, comm_of(c), req_of(r)),
            "all-reduce");
    armed(r);
    return LOOM_OK;
}

/* MPI's int counts and displacements for a v-collective: one block (counts, then displacements) that must
 * outlive the non-blocking call, so the request keeps it (second handle word) until it finishes. */
static loom_status hold_counts(loom_comm *c, const int64_t *counts, loom_comm_req *r, int **ic, int **displ,
                               const char *what) {
    int *block = malloc(2 * (size_t)c->size * sizeof(int));
    LOOM_CHECK(block != NULL, LOOM_ERR_NOMEM, "out of memory");
    int64_t off = 0;
    for (int i = 0; i < c->size; i++) {
        loom_status st = count_ok(c, off + counts[i], what);
        if (st != LOOM_OK) {
            free(block);
            return st;
        }
        block[i] = (int)counts[i];
        block[c->size + i] = (int)off;
        off += counts[i];
    }
    memcpy(&r->handle[1], &block, sizeof block);
    *ic = block;
    *displ = block + c->size;
    return LOOM_OK;
}

static void release_counts(loom_comm_req *r) {
    int *block = NULL;
    memcpy(&block, &r->handle[1], sizeof block);
    free(block);
    memset(&r->handle[1], 0, sizeof r->handle[1]);
}

static loom_status m_ireduce_scatter(loom_comm *c, const float *s, float *rv, const int64_t *counts, loom_comm_req *r) {
    int *ic, *displ;
    LOOM_CALL(hold_counts(c, counts, r, &ic, &displ, "reduce-scatter"));
    int rc = MPI_Ireduce_scatter(s, rv, ic, MPI_FLOAT, MPI_SUM, comm_of(c), req_of(r));
    if (rc != MPI_SUCCESS) {
        release_counts(r);
        return mpi_fail(c, rc, "reduce-scatter");
    }
    armed(r);
    return LOOM_OK;
}

static loom_status m_iallgather(loom_comm *c, float *b, const int64_t *counts, loom_comm_req *r) {
    int *ic, *displ;
    LOOM_CALL(hold_counts(c, counts, r, &ic, &displ, "all-gather"));
    int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, b, ic, displ, MPI_FLOAT, comm_of(c), req_of(r));
    if (rc != MPI_SUCCESS) {
        release_counts(r);
        return mpi_fail(c, rc, "all-gather");
    }
    armed(r);
    return LOOM_OK;
}

static loom_status m_iallgather_bytes(loom_comm *c, const void *s, int64_t n, void *rv, loom_comm_req *r) {
    LOOM_CALL(count_ok(c, n * c->size, "all-gather"));
    MPI_TRY(c, MPI_Iallgather(s, (int)n, MPI_BYTE, rv, (int)n, MPI_BYTE, comm_of(c), req_of(r)), "all-gather");
    armed(r);
    return LOOM_OK;
}

static loom_status m_ibroadcast(loom_comm *c, void *b, int64_t n, int root, loom_comm_req *r) {
    LOOM_CALL(count_ok(c, n, "broadcast"));
    LOOM_CHECK(root >= 0 && root < c->size, LOOM_ERR_INVALID_ARG, "broadcast root %d on '%s' of %d ranks", root,
               c->name, c->size);
    MPI_TRY(c, MPI_Ibcast(b, (int)n, MPI_BYTE, root, comm_of(c), req_of(r)), "broadcast");
    armed(r);
    return LOOM_OK;
}

static loom_status m_ibarrier(loom_comm *c, loom_comm_req *r) {
    MPI_TRY(c, MPI_Ibarrier(comm_of(c), req_of(r)), "barrier");
    armed(r);
    return LOOM_OK;
}

static loom_status m_isend(loom_comm *c, const void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    LOOM_CALL(count_ok(c, n, "send"));
    MPI_TRY(c, MPI_Isend(b, (int)n, MPI_BYTE, peer, tag, comm_of(c), req_of(r)), "send");
    armed(r);
    return LOOM_OK;
}

static loom_status m_irecv(loom_comm *c, void *b, int64_t n, int peer, int tag, loom_comm_req *r) {
    LOOM_CALL(count_ok(c, n, "recv"));
    MPI_TRY(c, MPI_Irecv(b, (int)n, MPI_BYTE, peer, tag, comm_of(c), req_of(r)), "recv");
    armed(r);
    return LOOM_OK;
}

static int m_test(loom_comm_req *r, int *done, char *err, int errlen) {
    int flag = 0;
    int rc = MPI_Test(req_of(r), &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING] = "";
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        snprintf(err, (size_t)errlen, "%s", msg);
        release_counts(r);
        return -1;
    }
    *done = flag;
    if (flag) release_counts(r);
    return 0;
}

static void m_free(loom_comm *c) {
    mpi_impl *im = c->impl;
    if (!im) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (im->owns) MPI_Comm_free(&im->comm);
        if (im->is_world) MPI_Finalize();
    }
    free(im);
    c->impl = NULL;
}

static loom_status m_split(loom_comm *c, int color, int key, const char *name, loom_comm **out);

/* ---- node-shared segments: an MPI-3 shared window over the communicator, when it is one node ---- */

typedef struct {
    MPI_Comm node;
    MPI_Win win;
} shm_impl;

/* Where Open MPI puts its shared-window backing files (osc_sm_backing_directory's default): pages are
 * allocated on first touch, so a full file system would be a SIGBUS mid-step, not an error; check first. */
static int shm_room(size_t bytes_per_node) {
    const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
    struct statvfs v;
    if (statvfs(dir && *dir ? dir : "/dev/shm", &v) != 0) return 1; /* not Linux's layout: let MPI decide */
    return (double)v.f_bavail * (double)v.f_frsize >= 1.1 * (double)bytes_per_node + (64 << 20);
}

static loom_status m_shm_alloc(loom_comm *c, size_t bytes, void **base, void **handle) {
    MPI_Comm node;
    MPI_TRY(c, MPI_Comm_split_type(comm_of(c), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "split by node");
    int n = 0, ok;
    MPI_Comm_size(node, &n);
    ok = n == c->size && shm_room(bytes * (size_t)c->size); /* node ranks keep the communicator's order (key 0) */
    int rc = MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm_of(c));
    if (rc != MPI_SUCCESS || !ok) {
        MPI_Comm_free(&node);
        if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "shared-memory agreement");
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                              "communicator '%s': its %d ranks are not all on one node, or the node's shared-memory "
                              "file system lacks room for %zu bytes", c->name, c->size, bytes * (size_t)c->size);
    }
    shm_impl *im = calloc(1, sizeof *im);
    if (!im) {
        MPI_Comm_free(&node);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    im->node = node;
    MPI_Comm_set_errhandler(node, MPI_ERRORS_RETURN);
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true"); /* each rank's segment in its own pages */
    void *mine = NULL;
    rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, node, &mine, &im->win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&node);
        free(im);
        return mpi_fail(c, rc, "shared window allocation");
    }
    MPI_Win_set_errhandler(im->win, MPI_ERRORS_RETURN);
    for (int r = 0; r < c->size; r++) {
        MPI_Aint sz = 0;
        int disp = 0;
        MPI_Win_shared_query(im->win, r, &sz, &disp, &base[r]);
    }
    memset(mine, 0, bytes);
    /* one passive epoch for the window's life; ranks order their accesses with their own flags */
    MPI_Win_lock_all(MPI_MODE_NOCHECK, im->win);
    MPI_Barrier(node); /* every segment zeroed before anyone reads a flag */
    *handle = im;
    return LOOM_OK;
}

static void m_shm_free(loom_comm *c, void *handle) {
    (void)c;
    shm_impl *im = handle;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        MPI_Win_unlock_all(im->win);
        MPI_Win_free(&im->win);
        MPI_Comm_free(&im->node);
    }
    free(im);
}

static void m_abort(loom_comm *c, int code) {
    (void)c;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code); /* the launcher ends every rank */
}

static const void *m_mpi_handle(const loom_comm *c) { return &((const mpi_impl *)c->impl)->comm; }

static const loom_comm_ops mpi_ops = {m_iallreduce, m_ireduce_scatter, m_iallgather, m_iallgather_bytes, m_ibroadcast,
                                      m_ibarrier,   m_isend,          m_irecv,     m_test,           m_split,
                                      m_free,       m_shm_alloc,      m_shm_free,  m_abort,
                                      0 /* host memory: a backend's device buffers are staged */, m_mpi_handle};

static loom_status wrap(MPI_Comm mc, int owns, int is_world, const char *name, int world_rank, loom_comm **out) {
    loom_comm *c = calloc(1, sizeof *c);
    mpi_impl *im = calloc(1, sizeof *im);
    if (!c || !im) {
        free(c);
        free(im);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(mc, &rank);
    MPI_Comm_size(mc, &size);
    MPI_Comm_set_errhandler(mc, MPI_ERRORS_RETURN);
    im->comm = mc;
    im->owns = owns;
    im->is_world = is_world;
    loom_comm_init_common(c, name, rank, size, world_rank < 0 ? rank : world_rank);
    c->ops = mpi_ops;
    c->impl = im;
    *out = c;
    return LOOM_OK;
}

static loom_status m_split(loom_comm *c, int color, int key, const char *name, loom_comm **out) {
    MPI_Comm sub;
    MPI_TRY(c, MPI_Comm_split(comm_of(c), color, key, &sub), "split");
    return wrap(sub, 1, 0, name, c->world_rank, out);
}

loom_status loom_comm_mpi_world(loom_comm **out) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        /* FUNNELED: OpenMP threads compute, only the main thread calls MPI */
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        LOOM_CHECK(rc == MPI_SUCCESS, LOOM_ERR_IO, "MPI_Init_thread failed (error %d)", rc);
    }
    MPI_Comm dup;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    LOOM_CHECK(rc == MPI_SUCCESS, LOOM_ERR_IO, "MPI_Comm_dup of the world failed (error %d)", rc);
    return wrap(dup, 1, !inited, "world", -1, out);
}
#else
typedef int loom_comm_mpi_unused; /* ISO C: a translation unit is not empty */
#endif
