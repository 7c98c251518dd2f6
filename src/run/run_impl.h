/* Private to src/run/: the trainer object (one run's state) shared by the step (trainer.c), its
 * checkpoints (trainer_ckpt.c) and the driver loop (train.c). */
#ifndef LOOM_RUN_IMPL_H
#define LOOM_RUN_IMPL_H
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>

#include "loom/ckpt.h"
#include "loom/comm.h"
#include "loom/data.h"
#include "loom/parallel.h"
#include "loom/run.h"

typedef struct {
    int64_t step;               /* optimizer steps completed */
    loom_data_state data;
    int32_t optim_kind;
    int32_t reserved;
    double loss_scale;          /* fp16: the dynamic loss scale (0 in older checkpoints: start afresh) */
    int64_t loss_scale_good;    /* good steps since it last changed */
    int32_t window_n, window_pos; /* the loss spike window: losses held, the next slot */
    float window[LOOM_SPIKE_WINDOW_MAX];
    int64_t skip_until;         /* a rollback's skipped steps run up to this step */
} train_state; /* the "state" section, binary (older, shorter ones read with the new fields zero) */

/* A test hook, never set by a user: LOOM_TEST_FAULT=POINT@RANK[:N] makes world rank RANK fail at POINT:
 * "data" (its data file cannot be read), "step" (an error in the middle of step N, after its backward and
 * before the optimizer's reductions), "oom" (its N-th allocation from the start of set-up fails), "nan" (its
 * gradients of step N are NaN), "spike" (its targets of step N are noise: a loss spike) or "slowcopy" (its
 * background checkpoint copies pause N ms after each MiB, to be killed in the middle) or "hang" (it never
 * leaves step N, its heartbeat going on: a deadlock). The tests
 * of errors on one rank of many (tests/test_dist.py errors) use it. */
typedef struct {
    char point[16];
    int rank;
    int64_t n;
} test_fault;

/* An asynchronous disk checkpoint in flight: this rank's file of a snapshot, copied by a thread. */
typedef struct {
    pthread_t thread;
    int running;                /* started and not yet joined */
    atomic_int done;
    loom_status status;
    char err[1024];
    int64_t step;
    char src[LOOM_PATH_MAX + 80], dst[LOOM_PATH_MAX + 80]; /* "" when this rank writes no file */
    char *manifest;             /* rank 0, sharded: the run manifest to commit */
    size_t manifest_len;
    int64_t slow_ms;            /* the test hook's pause after each piece (LOOM_TEST_FAULT=slowcopy@R:MS) */
} ckpt_async;

/* every rank's row of statistics: current and peak bytes by category, then the step's communication wait
 * and work in microseconds */
enum { RANK_ROW = 2 * LOOM_MEM_N_CATEGORIES + 2 };

struct loom_trainer {
    const loom_run_config *rc;
    loom_backend *be;
    loom_comm *world;           /* the caller's, or world_owned */
    loom_comm *world_owned;
    test_fault fault;
    loom_mesh mesh;
    int have_mesh;
    loom_zero *zero;            /* owns the model and the optimizer */
    int root;                   /* world rank 0: prints, writes metrics and the manifest */
    int dp, dp_rank, tp, sp, pp; /* dp: the ranks that reduce gradients (data x sequence parallel) */
    loom_pipeline *pipe;        /* pp > 1 */
    loom_comm *embed;           /* pp > 1, tied embeddings: the first and the last stage */
    loom_model_part part;
    int32_t *mb_tokens, *mb_targets; /* pp > 1: a step's micro-batches back to back */
    double *pp_stats;           /* pp > 1: [pp][2] idle and busy seconds of the last step, per stage */
    loom_comm *red;             /* their communicator: mesh.dp, or dp x sp (owned) when sp > 1 */
    loom_comm *red_owned;
    int data_dp;                /* the mesh's dp: how the global batch is split */
    int64_t T_local;            /* train.seq_len / sp: this rank's positions of each sequence */
    int32_t *seq_tokens, *seq_targets; /* sp > 1: whole sequences, of which this rank keeps its block */
    int64_t local_batch;        /* train.batch / dp */
    loom_mem mem;
    loom_model *model;
    loom_optim *opt;
    loom_data *data;
    FILE *mem_trace;            /* --mem-trace (rank 0) */
    double loss_scale;          /* fp16: the dynamic loss scale (0: none) */
    int64_t loss_scale_good;    /* good steps in a row at this scale */
    int skipped;                /* the last step overflowed and was skipped */
    double step_scale;          /* the scale the last step used */
    loom_offload_stats off_prev; /* the memory manager's totals at the last metrics line */
    int32_t *tokens, *targets;
    char ckpt_path[LOOM_PATH_MAX + 32];
    FILE *metrics;
    double peak_gflops;
    char tokenizer[LOOM_PATH_MAX]; /* the data's tokenizer (absolute path when a file), "" if none */
    loom_model_config model_cfg;   /* the run's model: the config's, with the vocabulary fitted to the data */
    int world_size;
    int64_t *rank_mem;             /* [world][RANK_ROW]: current and peak bytes by category, comm wait and work (us) */
    loom_comm_stats tp_stats;      /* the last step's collectives on the tp axis (this rank) */
    loom_comm_stats sp_stats;      /* and the ring transfers on the sp axis */
    loom_comm_stats dp_stats;      /* and the data-parallel (dp x sp) group's, MPI's collectives only */
    int64_t dp_refill_floats;      /* this step's floats given back and written again (ZeRO-2/3) */
    int64_t step;                  /* optimizer steps completed */
    int64_t tokens_per_step;       /* over every rank and micro-batch */
    double flops_per_token, world_peak; /* for the MFU: model FLOPs, and every rank's peak (GFLOP/s) */
    int mfu_over_said;                  /* an MFU above 1 was reported (once) */
    int resumed;
    /* resilience: snapshots, asynchronous checkpoints, bad steps (trainer_ckpt.c, trainer.c) */
    char snap_dir[LOOM_PATH_MAX];
    int64_t snap_step;             /* the newest snapshot's step, -1: none */
    ckpt_async async;
    int32_t window_n, window_pos;  /* the loss spike window (in the checkpoint) */
    float window[LOOM_SPIKE_WINDOW_MAX];
    int64_t skip_until;            /* after a rollback: steps up to this one consume their data untrained */
    int64_t bad_in_row, bad_steps; /* non-finite steps skipped: in a row, in all */
};

/* train.c: the flag the signal handlers set (a signal handler can only reach a global) */
volatile sig_atomic_t *loom_run_stop_flag(void);
double loom_run_now(void);
LOOM_NODISCARD loom_status loom_run_mkdir_p(const char *path);
/* trainer_ckpt.c: collective; the trainer's state at `step` into <out> / from its newest checkpoint */
LOOM_NODISCARD loom_status loom_trainer_ckpt_save(loom_trainer *tr, int64_t step);
LOOM_NODISCARD loom_status loom_trainer_ckpt_load(loom_trainer *tr, int64_t *step);
/* Collective: the parameters of train.init_from (a loom checkpoint, or a Hugging Face directory imported into
 * <out>/init-hf first), the optimizer's state zero: a new run from trained weights. */
LOOM_NODISCARD loom_status loom_trainer_ckpt_init(loom_trainer *tr);
/* LoRA: the frozen weights from train.init_from (every rank reads them whole), or from the seed. Rank-local. */
LOOM_NODISCARD loom_status loom_trainer_load_frozen(loom_trainer *tr);
/* the snapshot directory of this run (train.snapshot_dir, or /dev/shm/loom-<uid>-<hash of out>); its removal */
void loom_trainer_snapshot_dir(const loom_trainer *tr, char *dir, size_t n);
void loom_trainer_snapshot_clear(loom_trainer *tr);
/* Collective: a snapshot of the state now; to_disk: then written to <out> in the background */
LOOM_NODISCARD loom_status loom_trainer_snapshot(loom_trainer *tr, int to_disk);
/* Collective: commits the background checkpoint once every rank's copy is done (wait: blocks for it) */
LOOM_NODISCARD loom_status loom_trainer_ckpt_poll(loom_trainer *tr, int wait);
/* Collective: the newest intact checkpoint of the snapshot and run directories (*found 0: none at all;
 * LOOM_ERR_CHECKSUM when every one is damaged) */
LOOM_NODISCARD loom_status loom_trainer_ckpt_resume_auto(loom_trainer *tr, int64_t *step, int *found);
/* Collective: the newest intact checkpoint of a step before `before` (*found 0: none) */
LOOM_NODISCARD loom_status loom_trainer_ckpt_rollback(loom_trainer *tr, int64_t before, int64_t *to, int *found);
#endif
