/* The communicator interface and its single-rank implementation (every collective is the identity). */
#include <stdlib.h>

#include "comm_impl.h"

static loom_status self_allreduce_f32(loom_comm *c, float *b, int64_t n) { (void)c; (void)b; (void)n; return LOOM_OK; }
static loom_status self_allreduce_f64(loom_comm *c, double *b, int64_t n) { (void)c; (void)b; (void)n; return LOOM_OK; }
static loom_status self_broadcast(loom_comm *c, void *b, int64_t n, int root) {
    (void)b; (void)n;
    LOOM_CHECK(root == 0, LOOM_ERR_INVALID_ARG, "broadcast root %d on a communicator of size %d", root, c->size);
    return LOOM_OK;
}
static loom_status self_barrier(loom_comm *c) { (void)c; return LOOM_OK; }

loom_status loom_comm_init_self(loom_comm **out) {
    loom_comm *c = calloc(1, sizeof *c);
    LOOM_CHECK(c != NULL, LOOM_ERR_NOMEM, "out of memory");
    c->name = "self";
    c->rank = 0;
    c->size = 1;
    c->ops.allreduce_sum_f32 = self_allreduce_f32;
    c->ops.allreduce_sum_f64 = self_allreduce_f64;
    c->ops.broadcast = self_broadcast;
    c->ops.barrier = self_barrier;
    *out = c;
    return LOOM_OK;
}

void loom_comm_free(loom_comm **pc) {
    if (!pc || !*pc) return;
    if ((*pc)->ops.free_impl) (*pc)->ops.free_impl(*pc);
    free(*pc);
    *pc = NULL;
}

int loom_comm_rank(const loom_comm *c) { return c ? c->rank : 0; }
int loom_comm_size(const loom_comm *c) { return c ? c->size : 1; }
const char *loom_comm_name(const loom_comm *c) { return c ? c->name : "none"; }
loom_status loom_comm_allreduce_sum_f32(loom_comm *c, float *b, int64_t n) { return c->ops.allreduce_sum_f32(c, b, n); }
loom_status loom_comm_allreduce_sum_f64(loom_comm *c, double *b, int64_t n) { return c->ops.allreduce_sum_f64(c, b, n); }
loom_status loom_comm_broadcast(loom_comm *c, void *b, int64_t n, int root) { return c->ops.broadcast(c, b, n, root); }
loom_status loom_comm_barrier(loom_comm *c) { return c->ops.barrier(c); }
