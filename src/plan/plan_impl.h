/* Private to src/plan/: what the search shares with the time model. */
#ifndef LOOM_PLAN_IMPL_H
#define LOOM_PLAN_IMPL_H
#include "loom/plan.h"

/* loom_plan_time; memory = 0: without the per-rank memory prediction (peak_bytes stays 0) where no memory
 * budget changes the stage that runs (the search has predicted the memory already) */
LOOM_NODISCARD loom_status loom_plan_time_internal(const loom_run_config *rc, int world, const loom_cluster *c,
                                                   int memory, loom_plan_time_result *r);

/* ZeRO-3's gathers of unit u (of `units`) per step, zero.c's schedule: every micro-batch its forward, the
 * blocks' backward again (the head is kept from the forward; the embedding's backward reads no parameters), a
 * tied head the embedding once more */
static inline int64_t loom_plan_unit_gathers(int u, int units, int64_t micro, int tied) {
    return micro * (u == 0 ? 1 + tied : u == units - 1 ? 1 : 2);
}
#endif
