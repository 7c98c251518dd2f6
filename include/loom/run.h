/* loom/run.h: the training driver behind `loom train`, and its typed configuration.
 *
 *   loom_run_config rc;
 *   LOOM_CALL(loom_run_config_init(&rc, "gpt2-124m"));        // preset
 *   LOOM_CALL(loom_run_config_set(&rc, "train.steps", "100")); // typed, validated; unknown keys are errors
 *   LOOM_CALL(loom_train(&rc, NULL, peak_gflops, NULL));
 *
 * Every option has a key (`section.name`), a type, a default and a help line; `loom train --help` lists
 * them all. A JSON config file uses the same keys, nested ({"model": {"n_layer": 6}}) or dotted. */
#ifndef LOOM_RUN_H
#define LOOM_RUN_H
#include <stdio.h>

#include "loom/json.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/comm.h"

#define LOOM_PATH_MAX 4096
#define LOOM_SPIKE_WINDOW_MAX 64 /* train.spike_window's largest value (the window is in the checkpoint) */

typedef struct {
    int64_t steps;          /* total optimizer steps of the run (a resumed run continues up to it) */
    int64_t stop_after;     /* stop (checkpointing) after this step, as if interrupted; 0 = never */
    int64_t batch;          /* micro-batch size B: sequences per micro-step over all data-parallel ranks */
    int64_t seq_len;        /* T */
    int64_t grad_accum;     /* micro-batches per optimizer step */
    int64_t threads;        /* 0 = all cores */
    char device[32];        /* the backend: cpu, cpu-isolated (tests), cuda */
    char data[LOOM_PATH_MAX];
    double val_fraction;
    int64_t eval_interval;  /* steps between validations; 0 = only at the end */
    int64_t eval_batches;
    int64_t ckpt_interval;  /* steps between checkpoints; 0 = only at the end (and on a signal) */
    int save_checkpoints;   /* 0: none at all (benchmarks) */
    double loss_scale;      /* fp16: initial dynamic loss scale */
    int64_t loss_scale_window; /* fp16: good steps before it doubles */
    int64_t log_interval;
    int64_t seed;
    char out[LOOM_PATH_MAX];     /* run directory: checkpoint.bin, metrics.jsonl */
    char metrics[LOOM_PATH_MAX]; /* default: <out>/metrics.jsonl */
    int resume;
    char resume_from[LOOM_PATH_MAX]; /* resume from this checkpoint ("" = <out>'s newest) */
    char init_from[LOOM_PATH_MAX];   /* a new run from this checkpoint's (or HF directory's) weights ("" = none) */
    char lora[256];         /* LoRA adapters over frozen weights (loom_lora_config_parse's spec; "" = none): the
                               frozen base is init_from's weights (or the seed's), on a new run and on resume */
    int lora_base_dtype;    /* 0 fp32, 1 bf16: the frozen base held in bf16 only (with precision bf16) */
    int64_t keep_checkpoints; /* sharded: steps whose shards stay on disk */
    int resume_if_any;      /* resume from the newest intact checkpoint (snapshot or disk), else start afresh */
    int64_t snapshot_interval; /* steps between in-memory snapshots (0: none) */
    char snapshot_dir[LOOM_PATH_MAX]; /* where they go ("" = /dev/shm/loom-<uid>-<hash of out>) */
    int ckpt_async;         /* disk checkpoints written from a snapshot by a background thread */
    double spike_zscore;    /* a step's loss this many deviations above the window's mean rolls back (0: off) */
    int64_t spike_window;   /* the steps of that window */
    int64_t max_bad_steps;  /* non-finite steps skipped in a row before the run fails */
    char skip_steps[256];   /* "a-b,c": steps that consume their data and count but do not train */
    loom_recompute recompute;
    int profile;
    char blas_coretype[32];
    int64_t progress;       /* 1 = always a progress line, 0 = plain lines, -1 = auto (terminal); int64: an OPT_INT */
    int64_t sample_tokens;  /* after training, print a sample of this many tokens (0 = none) */
    int fit_vocab;          /* grow model.vocab_size to the data's tokenizer (off when the vocabulary is set explicitly) */
    char mesh[64];          /* "dp=2,pp=1,tp=1,sp=1"; "" = dp over every rank */
    int64_t zero;           /* ZeRO stage 0-3 over dp */
    int dp_overlap;         /* start gradient reductions during the backward pass (0: after it, for measuring) */
    int dp_transport;       /* loom_dp_transport: 0 auto, 1 MPI, 2 node-shared memory */
    int pp_schedule;        /* loom_pp_schedule: 0 1F1B, 1 interleaved */
    int precision;          /* loom_precision: 0 fp32, 1 bf16 products with fp32 master state */
    int tp_seq_parallel;    /* Megatron sequence parallelism in the norm/residual regions (tp > 1) */
    int64_t pp_virtual;     /* interleaved: chunks (virtual stages) per pipeline rank */
    double comm_timeout;    /* seconds a collective may block before the run fails (<= 0: forever) */
    int64_t mem_budget;     /* bytes of RAM for this rank's parameters, gradients, optimizer state (0: none) */
    int offload;            /* the memory manager may offload what the budget cannot hold */
    int64_t mem_chunk;      /* its chunk, bytes */
    char offload_dir[LOOM_PATH_MAX]; /* its scratch files ("" = out) */
    char mem_trace[LOOM_PATH_MAX];   /* JSON lines of placement and traffic ("" = none) */
} loom_train_config;

typedef struct {
    char preset[64];
    loom_model_config model;
    loom_optim_config optim;
    loom_train_config train;
} loom_run_config;

LOOM_NODISCARD loom_status loom_run_config_init(loom_run_config *c, const char *preset);
/* key = "section.name"; value parsed by the key's type. */
LOOM_NODISCARD loom_status loom_run_config_set(loom_run_config *c, const char *key, const char *value);
/* Applies a parsed JSON object: nested sections or dotted keys; "preset" is handled by the caller. */
LOOM_NODISCARD loom_status loom_run_config_apply_json(loom_run_config *c, const loom_json *obj, const char *origin);
LOOM_NODISCARD loom_status loom_run_config_validate(const loom_run_config *c);
/* train.skip_steps ("100-120,250"): a malformed list is a config error; has: 1 when `step` is listed. */
LOOM_NODISCARD loom_status loom_run_skip_steps_check(const char *spec);
int loom_run_skip_steps_has(const char *spec, int64_t step);
void loom_run_config_print_help(FILE *f);
/* The model section as JSON (written into checkpoints, compared on resume). */
void loom_model_config_to_json(const loom_model_config *m, loom_strbuf *sb);
LOOM_NODISCARD loom_status loom_model_config_from_json(const loom_json *obj, loom_model_config *m);

/* Loads a model from a training checkpoint (a file, or a run directory holding checkpoint.bin): the model
 * config from its metadata, the parameters verified against their checksum, its products in `precision`
 * (bf16: the weights' bf16 copy made here). A LoRA run's checkpoint gives its adapters over the frozen base
 * its metadata names (a loom checkpoint, a Hugging Face directory, or the seed's), the adapters applied
 * beside the base as in training. *meta receives the parsed metadata (loom_json_free it); the model has no
 * gradients. */
/* The weights of an open checkpoint (its "params", a whole model's) into m's loom_model_weights, a piece at a
 * time (loom_model_weights_done after each), then loom_model_refresh_low_precision. Rank-local. */
typedef struct loom_run_ckpt loom_run_ckpt;
LOOM_NODISCARD loom_status loom_model_read_weights(loom_model *m, loom_run_ckpt *c);
/* A LoRA run's checkpoint: its adapters' config and the adapters (*params, *n floats of host memory in the
 * layout a LoRA model of that config has; free it). LOOM_ERR_INVALID_ARG naming the file when it holds none. */
LOOM_NODISCARD loom_status loom_checkpoint_read_adapters(loom_run_ckpt *c, loom_lora_config *lc, float **params,
                                                         int64_t *n);
LOOM_NODISCARD loom_status loom_checkpoint_load_model(const char *path, loom_precision precision, loom_backend *be,
                                                      loom_comm *comm, loom_mem *mem, loom_model **model,
                                                      loom_json **meta);

/* ---- the trainer: one run's state and its well-defined step, shared by `loom train`, the supervisor, the
 * planner and the benchmarks ----
 *   loom_trainer *tr;
 *   LOOM_CALL(loom_trainer_init(&rc, world, peak, kernel, &tr));       // resumes when rc says so
 *   while (loom_trainer_steps_done(tr) < rc.train.steps) {
 *       loom_step_result r;
 *       LOOM_CALL(loom_trainer_step(tr, &r));                           // and its metrics line
 *       if (r.step % 100 == 0) LOOM_CALL(loom_trainer_save(tr));
 *   }
 *   loom_trainer_free(&tr, 1);
 * Every call is collective over the world (every rank calls it for the same step). */
typedef struct loom_trainer loom_trainer;
typedef struct {
    int64_t step;             /* optimizer steps completed, this one included */
    float loss;               /* the step's mean token loss over the global batch */
    loom_optim_stats optim;   /* learning rate, gradient norm, clipping, skipped (overflow, non-finite norm) */
    double seconds, tokens_per_sec, mfu;
    int skipped_untrained;    /* train.skip_steps, or after a rollback: data drawn, nothing trained */
    int rolled_back;          /* a loss spike: the state went back to an earlier step (loom_trainer_steps_done) */
} loom_step_result;
/* Collective over `world` (the caller's, from loom_comm_init_world; NULL: its own): the backend, mesh, data,
 * model, optimizer and run directory; the weights from the seed, or from the newest checkpoint with
 * train.resume (train.resume_from). peak_gflops is one rank's GEMM peak for MFU in the run's precision (the
 * host's, from `loom bench peak`: bf16's for bf16, fp32's for fp32 and fp16, which runs on fp32 units here);
 * < 0: measured on the device when the backend has its own (a GPU), else no MFU. On an error of
 * this rank alone it frees nothing collective (see loom_train). */
LOOM_NODISCARD loom_status loom_trainer_init(const loom_run_config *c, loom_comm *world, double peak_gflops,
                                             const char *peak_kernel, loom_trainer **out);
/* Collective: one optimizer step (train.grad_accum micro-batches, the update), its metrics line written. */
LOOM_NODISCARD loom_status loom_trainer_step(loom_trainer *tr, loom_step_result *res);
/* Collective: the validation loss (train.eval_batches micro-batches), its metrics line written. */
LOOM_NODISCARD loom_status loom_trainer_eval(loom_trainer *tr, float *val_loss);
/* Collective: a checkpoint of the state after the last step (atomic; sharded with several ranks). */
LOOM_NODISCARD loom_status loom_trainer_save(loom_trainer *tr);
int64_t loom_trainer_steps_done(const loom_trainer *tr);
loom_comm *loom_trainer_world(const loom_trainer *tr);
loom_model *loom_trainer_model(const loom_trainer *tr);
/* Collective when `collective`; with 0 (after an error of this rank alone, before the job is aborted) only its
 * files are closed. */
void loom_trainer_free(loom_trainer **tr, int collective);

/* Set by a SIGINT/SIGTERM/SIGUSR1 handler: the loop saves a checkpoint and returns LOOM_ERR_INTERRUPTED
 * (SIGUSR1: what Open MPI's mpirun forwards to every rank, the supervisor's "checkpoint and stop"). */
void loom_train_install_signal_handlers(void);
/* 1 after a trainer could not resume because its checkpoints are damaged (every candidate, with
 * train.resume_if_any): `loom train` exits with 3, which a supervisor does not retry. */
int loom_train_resume_failed(void);
/* Collective over `world` (the caller's, from loom_comm_init_world; NULL: its own). Trains as configured;
 * peak_gflops > 0 enables the MFU figure. In a job of several ranks an error that struck this rank alone
 * (not loom_error_is_collective) returns at once, without the collective clean-up its peers would wait
 * in: the caller prints the message and ends the job with loom_comm_abort(world). */
LOOM_NODISCARD loom_status loom_train(const loom_run_config *c, loom_comm *world, double peak_gflops,
                                      const char *peak_kernel);
#endif
