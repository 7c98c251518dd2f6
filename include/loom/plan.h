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
#include <stdio.h>

#include "loom/comm.h"
#include "loom/mem.h"
#include "loom/run.h"

typedef struct {
    int world_rank;
    int dp_rank, pp_rank, tp_rank, sp_rank;
    int64_t bytes[LOOM_MEM_N_CATEGORIES]; /* predicted peak per category */
    int stage;                            /* the ZeRO stage it runs (one rank over a budget: 3) */
    int offload_mask;                     /* streams the memory manager holds (loom/offload.h); 0: none */
    int64_t pinned_bytes, file_bytes;     /* its placement: in RAM (within bytes[]) and in files */
    int64_t file_read_bytes, file_write_bytes; /* the files' traffic per step (the run's offload_*_bytes) */
} loom_plan_rank;

/* For `world` ranks laid out by rc->train.mesh (dp = the rest when left out); *out is malloc'd, one entry
 * per world rank. */
LOOM_NODISCARD loom_status loom_plan_memory(const loom_run_config *rc, int world, loom_plan_rank **out, int *n);
/* One rank's prediction (the same as loom_plan_memory's entry for it), for a planner that needs one rank per
 * pipeline stage of a large mesh. */
LOOM_NODISCARD loom_status loom_plan_memory_rank(const loom_run_config *rc, int world, int world_rank,
                                                 loom_plan_rank *out);

/* ---- the machine: what `loom bench cluster` measures, or a hand-written description (docs/FORMATS.md
 * "cluster.json"; examples in docs/clusters/) ----
 * Compute is given per (threads per rank, precision): GEMM rates at measured shapes (interpolated in log
 * space between them), attention rates by sequence length, and nanoseconds per element of each memory-bound
 * kernel class. A GPU is one rank with threads 0. Links: each collective's latency and bus bandwidth for a
 * group of `ranks` on one host or across hosts (NCCL's busbw convention: an all-reduce of S bytes over n ranks
 * takes latency + 2 (n-1)/n S / busbw; all-gather and reduce-scatter (n-1)/n S / busbw; a send S / busbw). */
enum { LOOM_CLUSTER_MAX_GEMM = 256, LOOM_CLUSTER_MAX_ATTN = 8, LOOM_CLUSTER_MAX_COMPUTE = 8,
       LOOM_CLUSTER_MAX_LINKS = 16 };
typedef enum {
    LOOM_KC_NORM = 0, LOOM_KC_ACTIVATION, LOOM_KC_ELEMENTWISE, LOOM_KC_EMBEDDING, LOOM_KC_LOSS, LOOM_KC_OPTIMIZER,
    LOOM_KC_COPY, LOOM_KC_REFILL, LOOM_KC_COUNT
} loom_kernel_class;
const char *loom_kernel_class_name(loom_kernel_class k);
typedef struct {
    int64_t M, N, K;  /* C (M x N) = A (M x K) B (K x N) */
    int trans;        /* 0: A B^T (forward: activations x weight rows), 1: A B (input gradient), 2: A^T B (weight) */
    double gflops;
    double log_mnk[3], log_rate; /* filled when read (loom_cluster_from_json): the interpolation's coordinates */
} loom_gemm_rate;
typedef struct {
    int threads;      /* per rank (0: a GPU) */
    int precision;    /* loom_precision of the products */
    int n_gemm;
    loom_gemm_rate gemm[LOOM_CLUSTER_MAX_GEMM];
    int n_attn;
    int64_t attn_T[LOOM_CLUSTER_MAX_ATTN];       /* sequence lengths, ascending (head dim 64) */
    double attn_fwd_gflops[LOOM_CLUSTER_MAX_ATTN], attn_bwd_gflops[LOOM_CLUSTER_MAX_ATTN];
    double ns_per_element[LOOM_KC_COUNT];        /* per element of the kernel's rows (optimizer: per parameter) */
} loom_cluster_compute;
typedef struct {
    int ranks;        /* group size measured or described */
    int cross_host;   /* 0: within one host; 1: every rank on its own host */
    double latency_s[LOOM_COLL_COUNT], busbw[LOOM_COLL_COUNT]; /* bytes/s; 0: not measured */
} loom_cluster_link;
typedef struct {
    char name[128];
    char source[32];     /* "measured" or "vendor" */
    char device[128];    /* "AMD EPYC 9B45", "NVIDIA H100 SXM5 80GB" */
    int gpu;             /* 1: one rank per GPU */
    int hosts;
    int cores_per_host;  /* CPU cores (threads shared by the ranks of a host) or GPUs per host */
    int64_t memory_per_rank; /* bytes a rank may hold (a GPU's memory; a CPU host's RAM / ranks is the caller's) */
    double peak_gflops[3];   /* per rank, per loom_precision, the best GEMM rate (MFU's denominator) */
    int n_compute;
    loom_cluster_compute compute[LOOM_CLUSTER_MAX_COMPUTE];
    int n_links;
    loom_cluster_link links[LOOM_CLUSTER_MAX_LINKS];
    double disk_read_bps, disk_write_bps; /* the offload store's files */
} loom_cluster;
LOOM_NODISCARD loom_status loom_cluster_load(const char *path, loom_cluster *out);
LOOM_NODISCARD loom_status loom_cluster_from_json(const loom_json *j, const char *origin, loom_cluster *out);
void loom_cluster_to_json(const loom_cluster *c, loom_strbuf *sb);
/* Seconds of one product on a rank running `threads` threads (the nearest measured thread count), in precision
 * p, from the measured shapes (log-space inverse-distance interpolation of the rate). */
double loom_cluster_gemm_seconds(const loom_cluster *c, int threads, int precision, int trans, int64_t M, int64_t N,
                                 int64_t K);
double loom_cluster_attention_seconds(const loom_cluster *c, int threads, int precision, int backward, double flops,
                                      int64_t T);
double loom_cluster_kernel_seconds(const loom_cluster *c, int threads, int precision, loom_kernel_class k,
                                   double elements);
/* One collective of `bytes` (the whole vector: an all-reduce's buffer, an all-gather's result) over n ranks of
 * which per_host share each host (per_host >= n: one host); the nearest described group size's fit. Across
 * hosts the link's bandwidth is one rank's (its NIC) times per_host (the rings use every rank's NIC), capped at
 * the within-host figure. 0 for n <= 1. */
double loom_cluster_coll_seconds(const loom_cluster *c, loom_coll op, int n, int per_host, double bytes);

/* ---- time: one training step of a layout, predicted ----
 * Compute per rank from the kernels the step runs (every GEMM with its shape, attention, the memory-bound
 * kernels by their elements, the optimizer over this rank's slice), each collective the layout issues (the
 * counts and bytes the run's metrics report), the pipeline schedule run on a clock (loom_pipeline_simulate:
 * bubbles and unbalanced stages), the memory manager's file traffic at the disk's rates. CPU ranks sharing a
 * host's cores run slower by the oversubscription. */
typedef enum {
    LOOM_PT_GEMM = 0, LOOM_PT_ATTENTION, LOOM_PT_MEMBOUND, LOOM_PT_OPTIMIZER, LOOM_PT_DP_COMM, LOOM_PT_TP_COMM,
    LOOM_PT_SP_COMM, LOOM_PT_PP_COMM, LOOM_PT_PP_BUBBLE, LOOM_PT_OFFLOAD, LOOM_PT_REFILL, LOOM_PT_COUNT
} loom_plan_cost;
const char *loom_plan_cost_name(loom_plan_cost c);
typedef struct {
    double step_s, tokens_per_sec, mfu;
    double breakdown_s[LOOM_PT_COUNT];   /* the slowest rank's step, by category (sums to step_s) */
    double model_flops;                  /* per step, all ranks (the run's MFU numerator) */
    int64_t tp_calls[LOOM_COLL_COUNT], tp_bytes[LOOM_COLL_COUNT]; /* per step, one tp rank (as the metrics) */
    int64_t sp_calls, sp_bytes;          /* ring attention's sends per step, one rank */
    int64_t dp_calls[LOOM_COLL_COUNT], dp_bytes[LOOM_COLL_COUNT]; /* the dp (x sp) group's, one rank */
    int64_t dp_refill_floats;            /* floats ZeRO-2/3 give back and write again per step, one rank */
    int64_t offload_read_bytes, offload_write_bytes; /* the memory manager's file traffic per step, one rank */
    double pp_bubble;                    /* idle share of the step on the pipeline's busiest rank */
    int64_t peak_bytes;                  /* the largest rank's predicted peak (loom_plan_memory) */
    int dp, tp, pp, sp;
} loom_plan_time_result;
LOOM_NODISCARD loom_status loom_plan_time(const loom_run_config *rc, int world, const loom_cluster *c,
                                          loom_plan_time_result *out);

/* ---- search: every layout of `world` ranks for a global batch of rc->train.batch x grad_accum sequences ---- */
typedef struct {
    loom_run_config rc;                  /* the layout, as `loom train` would take it */
    loom_plan_time_result t;
} loom_plan_choice;
typedef struct {
    int64_t mem_limit;   /* bytes per rank (0: the cluster's memory_per_rank) */
    int max_threads;     /* CPU: threads per rank to try up to (0: the host's cores / ranks per host) */
    int try_offload;     /* also layouts that need the memory manager */
    int64_t evaluated, fitting; /* out: layouts considered, and those that fit */
} loom_plan_search;
/* The best `k` layouts by predicted step time (*out malloc'd, *n <= k). */
LOOM_NODISCARD loom_status loom_plan_auto(const loom_run_config *base, int world, const loom_cluster *c,
                                          loom_plan_search *opts, int k, loom_plan_choice **out, int *n);
#endif
