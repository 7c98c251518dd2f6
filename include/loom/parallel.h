/* loom/parallel.h: data parallelism with ZeRO stages 0-3 over the dp axis of the mesh.
 *
 *   loom_zero *z;
 *   loom_zero_options zo = {.stage = 1, .overlap = 1, .transport = LOOM_DP_AUTO};
 *   LOOM_CALL(loom_zero_init(&model_cfg, &optim_cfg, &zo, mesh.dp, be, &mem, &z));
 *   loom_model *m = loom_zero_model(z);
 *   LOOM_CALL(loom_zero_init_weights(z, seed));
 *   for each step:
 *       for micro in 0..accum-1:
 *           loom_zero_begin_micro(z, micro, micro == accum - 1);
 *           LOOM_CALL(loom_model_forward_backward(m, tok, tgt, B, T, scale, loom_zero_accumulate(z, micro), &l));
 *           LOOM_CALL(loom_zero_end_micro(z));
 *       LOOM_CALL(loom_zero_step(z, step, &stats));
 *
 * The flat buffer of n floats is cut into dp contiguous slices, rank r owning [r*S, min((r+1)*S, n)) with
 * S = ceil(n/dp). What each stage keeps per rank (fp32 AdamW; 4 bytes a float):
 *   stage 0: parameters, gradients and optimizer state whole (16 bytes/param); gradients all-reduced
 *   stage 1: optimizer state of the slice (4 + 4 + 8/N); all-reduce, update the slice, all-gather params
 *   stage 2: gradients of the slice too (4 + 12/N); each unit's gradients reduce-scattered as soon as the
 *            backward pass finishes them, then dropped
 *   stage 3: parameters of the slice too (16/N); each unit's parameters all-gathered just before its
 *            forward and again before its backward (the next unit prefetched), dropped after use
 * Units (loom_model_num_units) are the buckets: all-reduces and reduce-scatters start, non-blocking, the
 * moment a unit's gradients are final and overlap the rest of the backward pass. Transient gathered
 * parameters and not-yet-reduced unit gradients are accounted as workspace.
 *
 * Transport. Between nodes the reductions are MPI's collectives. When every dp rank shares one node (and
 * the stage is 0 or 1) the gradient buffers (and at stage 1 the parameter buffers) are node-shared segments
 * (loom_comm_shm_alloc): once every rank has posted a unit, rank r sums the r-th part of it straight out
 * of every rank's gradients (in rank order, so the sums do not depend on who computes them) and writes
 * the sums where they are needed: into every rank's gradients at stage 0, into the slice owner's at stage
 * 1 (which then copies the others' updated parameter slices). Every unit is split, so the work is even
 * over the backward pass; each peer byte is read once, instead of MPI's copies into and out of its transfer
 * buffers: on a CPU the cores that move bytes are the ones that compute, so fewer bytes moved is the whole
 * gain. Each rank still holds its own copy, so the memory per rank is that of the stage's formula. */
#ifndef LOOM_PARALLEL_H
#define LOOM_PARALLEL_H
#include "loom/comm.h"
#include "loom/model.h"
#include "loom/offload.h"
#include "loom/optim.h"

typedef struct loom_zero loom_zero;

/* (bytes moved per collective: loom_comm_get_stats of the dp communicator) */
typedef struct {
    double comm_wait_s;     /* blocked in gradient/parameter waits since the last reset */
    double comm_work_s;     /* shared-memory transport: this core summing and copying peers' bytes */
    int64_t refill_floats;  /* floats of gradients and parameters given back, to be written again at their
                             * next use (what loom plan --time prices as "page refill") */
} loom_zero_stats;

typedef enum {
    LOOM_DP_AUTO = 0, /* node-shared memory where possible, else MPI */
    LOOM_DP_MPI,      /* MPI collectives */
    LOOM_DP_SHM       /* node-shared memory, or an error saying why not */
} loom_dp_transport;

typedef struct {
    int stage;                   /* ZeRO stage 0-3 */
    int overlap;                 /* reduce each unit as its gradients become final (0: all after backward) */
    loom_dp_transport transport;
    loom_comm *tp;               /* the model's tensor-parallel communicator (borrowed); NULL: one rank */
    const loom_model_part *part; /* pipeline: this stage's part of the model; NULL: the whole model */
    loom_comm *sp, *parts;       /* the model's sequence-parallel ring and pipeline axis (loom_model_options) */
    int tp_seq_parallel;
    loom_precision precision;
    loom_lora_config lora;       /* r > 0: the model's flat buffers are LoRA adapters (loom/model.h): what is
                                    reduced, sharded and updated; the frozen weights stay whole on every rank */
    /* the heterogeneous memory manager (loom/offload.h): a RAM budget for this rank's parameters, gradients
     * and optimizer state. Within it everything stays in RAM; above it, with offload on, the chunk store
     * holds the rank's optimizer moments (stages 0-2) or its whole shard (stage 3; one rank alone always
     * runs as stage 3, its shard being everything), pinning in RAM what the budget allows. */
    int64_t mem_budget;          /* bytes; 0: no budget */
    int64_t tokens;              /* a micro-batch's tokens on this rank: the model's token buffers are part of
                                    the working set the budget leaves free (loom_model_token_workspace) */
    int offload;                 /* 1: offload what the budget cannot hold; 0: exceeding it is an error */
    int64_t mem_chunk;           /* bytes per chunk (0: 16 MiB) */
    const char *offload_dir;     /* scratch files (NULL: the working directory) */
    FILE *mem_trace;             /* placement and per-step traffic as JSON lines (NULL: none) */
} loom_zero_options;

/* Collective over dp. Creates the model (cut over zo->tp) and the optimizer of this rank's part; the dp
 * slices cut this rank's own (tensor-parallel local) flat buffers. */
LOOM_NODISCARD loom_status loom_zero_init(const loom_model_config *mc, const loom_optim_config *oc,
                                          const loom_zero_options *zo, loom_comm *dp, loom_backend *be,
                                          loom_mem *mem, loom_zero **out);
/* "MPI", "shared memory" or "none" (one rank). */
const char *loom_zero_transport_name(const loom_zero *z);
void loom_zero_free(loom_zero **z);
loom_model *loom_zero_model(loom_zero *z);
loom_optim *loom_zero_optim(loom_zero *z);
int loom_zero_stage(const loom_zero *z);
/* This rank's slice [begin, end) of the flat buffer. */
void loom_zero_slice(const loom_zero *z, int64_t *begin, int64_t *end);
/* The slice of a buffer for checkpoints: which 0 = parameters, 1 = optimizer state 0, 2 = state 1
 * (NULL when absent); end - begin floats. */
float *loom_zero_slice_ptr(loom_zero *z, int which);
LOOM_NODISCARD loom_status loom_zero_init_weights(loom_zero *z, uint64_t seed);

/* Fills this rank's buffers from a checkpoint: read(ctx, section, begin, end, dst) must write flat
 * positions [begin, end) of section "params", "optim.0" or "optim.1" to dst. */
typedef loom_status (*loom_zero_reader)(void *ctx, const char *section, int64_t begin, int64_t end, float *dst);
LOOM_NODISCARD loom_status loom_zero_load(loom_zero *z, loom_zero_reader read, void *ctx);

void loom_zero_begin_micro(loom_zero *z, int64_t micro, int last);
/* The model's `accumulate` argument for this micro-step. */
int loom_zero_accumulate(const loom_zero *z, int64_t micro);
LOOM_NODISCARD loom_status loom_zero_end_micro(loom_zero *z);
/* Finishes the reductions, updates this rank's part, re-assembles the parameters where the stage keeps
 * them whole. Collective. */
LOOM_NODISCARD loom_status loom_zero_step(loom_zero *z, int64_t step, loom_optim_stats *st);
/* Stage 3: makes every parameter resident (generation, export) until loom_zero_release_all. Collective. */
LOOM_NODISCARD loom_status loom_zero_gather_all(loom_zero *z);
void loom_zero_release_all(loom_zero *z);
loom_zero_stats loom_zero_get_stats(const loom_zero *z);
void loom_zero_reset_stats(loom_zero *z);
/* Stages 0-1: starts every unit's reduction now (a pipeline, whose micro-batches end at different times
 * per unit, reduces after its last backward and the tied-embedding sync). Collective over dp. */
LOOM_NODISCARD loom_status loom_zero_reduce_all(loom_zero *z);
/* The memory manager's plan for one rank, made from the layout alone (loom_zero_init and loom plan share it). */
typedef struct {
    int stage;              /* the stage the rank runs: the one asked for, or 3 for one rank over its budget */
    int mask;               /* the store's streams (1 << loom_offload_stream); 0: everything in RAM */
    int64_t store_floats;   /* floats per stream in the store (the optimizer's range) */
    int64_t chunk_bytes;
    int64_t staging_bytes;  /* the streamed update's two chunk sets */
    int64_t working_set;    /* bytes the store leaves free: staging, units resident at once, RAM buffers */
    int64_t rs_unit_floats; /* stage 3 offloaded over dp > 1: one unit's reduce-scatter part */
    int64_t pinned[LOOM_OFF_N_STREAMS]; /* bytes the placement pins in RAM */
} loom_zero_budget;
LOOM_NODISCARD loom_status loom_zero_plan_budget(const loom_model *layout, const loom_optim_config *oc,
                                                 const loom_zero_options *zo, int dp, int dp_rank,
                                                 loom_zero_budget *out);
/* Stages 2-3: the most bytes of whole units (gathered parameters, unit gradients before their reduction)
 * resident at once for a layout, from the sizes of its embedding unit, head unit and largest block. The
 * peak is at the head (both end units' parameters and gradients, the last block prefetched) or within the
 * blocks' backward (two blocks' parameters; the end units' gradients, the block's and two in flight).
 * Stage 3 in mixed precision adds the units' low-precision copies (LOOM_MODEL_LOWP_PER_UNIT): the end
 * units' at the head, one block's within the blocks; precision: loom_precision. */
int64_t loom_zero_unit_workspace(const loom_model *layout, int stage, int precision);
/* The memory manager: its store, or NULL when everything is in RAM (traffic, trace). */
loom_offload *loom_zero_offload(loom_zero *z);
/* Floats [lo, hi) of this rank's slice (positions relative to its begin) of buffer `which` (as
 * loom_zero_slice_ptr), from RAM or the store: checkpoints of offloaded state. */
LOOM_NODISCARD loom_status loom_zero_read_slice(loom_zero *z, int which, int64_t lo, int64_t hi, float *dst);
/* This rank's bytes by memory category (params, grads, optim and workspace: what a budget covers; acts are
 * left as they are) at `stage` over N ranks, a slice of `slice` floats and n_state optimizer buffers: the
 * stage's slices and whole buffers, the weights' low-precision copy (whole below stage 3, a unit at a time in
 * the unit workspace at stage 3), units resident at once and the reduce-scatter results at stages 2-3, the
 * node-shared flag pages, the model's token buffers. managed: the memory manager holds the optimizer state
 * (at stage 3 also the parameters and gradients, with one unit's reduce-scatter part of rs_unit floats over
 * N > 1), whose pinned chunks its placement adds. Everything in RAM (managed 0): what a budget is compared
 * with; the planner predicts a run's peaks from it. */
void loom_zero_ram_bytes(const loom_model *layout, const loom_zero_options *zo, int stage, int N, int64_t slice,
                         int n_state, int managed, int64_t rs_unit, int64_t bytes[LOOM_MEM_N_CATEGORIES]);
/* The node-shared transport's flag pages per rank (workspace) for a model of n_units units. */
int64_t loom_zero_shm_flags_bytes(int n_units);

/* ---- pipeline parallel ----
 * Blocks are cut into pp x v contiguous chunks balanced by modelled FLOPs (the head counted on the last
 * chunk); rank r of the pipeline axis holds chunks r, r + pp, ... (v > 1: Megatron's interleaved
 * virtual stages). One step runs train.grad_accum micro-batches through the schedule:
 *   1F1B: warm-up forwards (pp - r - 1), then one forward and one backward alternately, then the rest
 *   interleaved: the same over v chunks per rank, micro-batches in groups of pp (grad_accum % pp == 0)
 * Activations and gradients go point-to-point (non-blocking sends), every stage keeps activations only
 * for the micro-batches in flight on it (loom_pipeline_slots), the tied embedding's two copies add their
 * gradients after the last backward, then ZeRO reduces over dp. Idle time = time blocked receiving. */
typedef enum { LOOM_PP_1F1B = 0, LOOM_PP_INTERLEAVED } loom_pp_schedule;
typedef struct loom_pipeline loom_pipeline;
typedef struct {
    double idle_s, busy_s; /* the last step: blocked in pipeline receives and sends / everything else */
} loom_pipeline_stats;
/* This rank's part of the model (and, when bounds != NULL, the pp*v+1 block boundaries of all chunks). */
LOOM_NODISCARD loom_status loom_pipeline_partition(const loom_model_config *mc, int pp, int v, int rank,
                                                   loom_model_part *part, int64_t *bounds);
/* embed: the communicator of the first and the last stage (tied embeddings), or NULL. */
LOOM_NODISCARD loom_status loom_pipeline_init(loom_comm *pp, loom_comm *embed, loom_pp_schedule sched, int v,
                                              int micro_batches, loom_pipeline **out);
void loom_pipeline_free(loom_pipeline **pl);
/* Activation slots this rank needs (loom_model_reserve_slots). */
int loom_pipeline_slots(const loom_pipeline *pl);
/* The same, before any communicator exists (planning). */
int loom_pipeline_schedule_slots(int pp, int rank, loom_pp_schedule sched, int v, int micro_batches);
/* One step's forwards and backwards: tokens and targets hold the micro-batches back to back (each B x T);
 * *loss_sum = the sum of the micro-batches' mean losses, on every stage. Then call loom_zero_step. */
LOOM_NODISCARD loom_status loom_pipeline_train_step(loom_pipeline *pl, loom_model *m, loom_zero *z,
                                                    const int32_t *tokens, const int32_t *targets, int64_t B,
                                                    int64_t T, float grad_scale, double *loss_sum);
/* Forward only, one micro-batch: its mean loss on every stage. */
LOOM_NODISCARD loom_status loom_pipeline_eval(loom_pipeline *pl, loom_model *m, const int32_t *tokens,
                                              const int32_t *targets, int64_t B, int64_t T, double *loss);
loom_pipeline_stats loom_pipeline_get_stats(const loom_pipeline *pl);
/* The schedule's idle fraction in theory: (pp - 1) / (v m + pp - 1). */
double loom_pipeline_bubble_theory(const loom_pipeline *pl);
/* Planning: the schedule's step on a clock, for p ranks and m micro-batches, where virtual stage g (= chunk
 * c of rank r: g = c*p + r) takes fwd_s[g] and bwd_s[g] seconds per micro-batch and a transfer between ranks
 * p2p_s. Returns the step's seconds (the last rank's finish; -1 when out of memory); busy_out (p, added to,
 * may be NULL): each rank's seconds of work. Equal stages and no transfer time give the theory's bubble. */
double loom_pipeline_simulate(int p, loom_pp_schedule sched, int v, int m, const double *fwd_s, const double *bwd_s,
                              double p2p_s, double *busy_out);
#endif
