/* loom/comm.h: the communicator. Model code talks to other ranks only through this layer. This issue
 * builds the single-rank implementation (every collective is the identity); the MPI one (a later issue)
 * fills the same table, so no model code has an #ifdef on MPI.
 *
 *   loom_comm *world;
 *   LOOM_CALL(loom_comm_init_self(&world));
 *   LOOM_CALL(loom_comm_allreduce_sum_f32(world, grads, n));   // Collective
 *   loom_comm_free(&world);
 */
#ifndef LOOM_COMM_H
#define LOOM_COMM_H
#include <stdint.h>

#include "loom/status.h"

typedef struct loom_comm loom_comm;

/* Not collective: a communicator of this process alone. */
LOOM_NODISCARD loom_status loom_comm_init_self(loom_comm **out);
void loom_comm_free(loom_comm **comm);
int loom_comm_rank(const loom_comm *comm);
int loom_comm_size(const loom_comm *comm);
const char *loom_comm_name(const loom_comm *comm);
/* Collective: in-place sum over the communicator's ranks. */
LOOM_NODISCARD loom_status loom_comm_allreduce_sum_f32(loom_comm *comm, float *buf, int64_t n);
LOOM_NODISCARD loom_status loom_comm_allreduce_sum_f64(loom_comm *comm, double *buf, int64_t n);
/* Collective: rank `root`'s buffer to all. */
LOOM_NODISCARD loom_status loom_comm_broadcast(loom_comm *comm, void *buf, int64_t bytes, int root);
/* Collective: waits for every rank. */
LOOM_NODISCARD loom_status loom_comm_barrier(loom_comm *comm);
#endif
