/* loom/plan.h: predictions made before anything runs.
 *
 *   loom_plan_rank *ranks; int n;
 *   LOOM_CALL(loom_plan_memory(&run_config, world_size, &ranks, &n));
 *   ... ranks[r].bytes[LOOM_MEM_PARAMS] ...
 *   free(ranks);
 *
 * Memory: every rank's peak bytes by category (the categories loom_mem accounts), from the same layout and
 * activation-arena code the training run allocates with (loom_model_init_layout,
 * loom_model_activation_bytes) and the ZeRO stage's slices; transient ZeRO-2/3 units are estimated from
 * the largest units; with a memory budget (train.mem_budget) the memory manager's placement, from the
 * same planning code the run uses (loom_zero_plan_budget), and the bf16 copies of mixed precision. */
#ifndef LOOM_PLAN_H
#define LOOM_PLAN_H
#include "loom/mem.h"
#include "loom/run.h"

typedef struct {
    int world_rank;
    int dp_rank, pp_rank, tp_rank, sp_rank;
    int64_t bytes[LOOM_MEM_N_CATEGORIES]; /* predicted peak per category */
    int stage;                            /* the ZeRO stage it runs (one rank over a budget: 3) */
    int offload_mask;                     /* streams the memory manager holds (loom/offload.h); 0: none */
    int64_t pinned_bytes, file_bytes;     /* its placement: in RAM (within bytes[]) and in files */
} loom_plan_rank;

/* For `world` ranks laid out by rc->train.mesh (dp = the rest when left out); *out is malloc'd, one entry
 * per world rank. */
LOOM_NODISCARD loom_status loom_plan_memory(const loom_run_config *rc, int world, loom_plan_rank **out, int *n);
#endif
