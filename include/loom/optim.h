/* loom/optim.h: AdamW, SGD (momentum, Nesterov), LAMB and LARS over the flat parameter buffer, with
 * global-norm clipping and a warm-up + cosine/linear learning-rate schedule.
 *
 *   loom_optim_config oc = loom_optim_config_default();
 *   loom_optim *opt;
 *   LOOM_CALL(loom_optim_init(&oc, be, &mem, model, &opt));
 *   loom_optim_stats st;
 *   LOOM_CALL(loom_optim_step(opt, model, step, &st));   // step counts from 0
 *
 * State (m, v or momentum) lives in flat buffers of the parameters' layout, so a later ZeRO stage can
 * shard it by slicing. Weight decay applies only to parameters marked `decay` (matrices, embeddings). */
#ifndef LOOM_OPTIM_H
#define LOOM_OPTIM_H
#include "loom/backend.h"
#include "loom/mem.h"
#include "loom/model.h"

typedef enum { LOOM_OPTIM_ADAMW = 0, LOOM_OPTIM_SGD, LOOM_OPTIM_LAMB, LOOM_OPTIM_LARS } loom_optim_kind;
typedef enum { LOOM_SCHEDULE_COSINE = 0, LOOM_SCHEDULE_LINEAR, LOOM_SCHEDULE_CONSTANT } loom_schedule;

typedef struct {
    loom_optim_kind kind;
    double lr, min_lr;
    int64_t warmup_steps;
    int64_t decay_steps; /* step at which lr reaches min_lr; 0 = the run's total steps */
    loom_schedule schedule;
    double beta1, beta2, eps, weight_decay;
    double momentum;     /* SGD, LARS */
    int nesterov;        /* SGD */
    double trust_coef;   /* LARS */
    double grad_clip;    /* global-norm clip; 0 = off */
    int decay_all;       /* also decay norms and biases */
} loom_optim_config;

typedef struct {
    double lr;
    double grad_norm;  /* before clipping */
    double clip_coef;  /* applied scale (1 = none) */
    int skipped;       /* loss scaling: the gradients overflowed, nothing was updated */
    int bf16_written;  /* the update also wrote the weights' bf16 copy (loom_model_bf16_copy_of): no refresh */
} loom_optim_stats;

typedef struct loom_optim loom_optim;

loom_optim_config loom_optim_config_default(void);
const char *loom_optim_kind_name(loom_optim_kind k);
LOOM_NODISCARD loom_status loom_optim_config_validate(const loom_optim_config *c);
/* Learning rate of step `step` (0-based) in a run of `total_steps`. */
double loom_optim_lr(const loom_optim_config *c, int64_t step, int64_t total_steps);
LOOM_NODISCARD loom_status loom_optim_init(const loom_optim_config *c, loom_backend *be, loom_mem *mem,
                                           const loom_model *model, loom_optim **out);
/* An optimizer of flat positions [begin, end) only (a ZeRO shard; its state is end - begin floats per
 * buffer). Norms (clipping, LAMB/LARS trust ratios) are summed over `comm`, whose ranks hold the other
 * ranges (NULL: this range is everything). */
LOOM_NODISCARD loom_status loom_optim_init_range(const loom_optim_config *c, loom_backend *be, loom_mem *mem,
                                                 const loom_model *model, int64_t begin, int64_t end,
                                                 loom_comm *comm, loom_optim **out);
void loom_optim_free(loom_optim **o);
void loom_optim_set_total_steps(loom_optim *o, int64_t total_steps);
/* Dynamic loss scaling (fp16): the gradients are `scale` times the true ones; norms, clipping and the
 * update divide it out, and a step whose gradient norm is not finite (an overflow) updates nothing and
 * reports skipped. scale 0: off (a non-finite norm is an error, the default). */
void loom_optim_set_loss_scale(loom_optim *o, double scale);
/* on: a non-finite gradient norm skips the update (stats.skipped) instead of failing, as under loss scaling */
void loom_optim_set_skip_nonfinite(loom_optim *o, int on);
/* One update from the model's gradient buffer. */
LOOM_NODISCARD loom_status loom_optim_step(loom_optim *o, loom_model *model, int64_t step, loom_optim_stats *st);
/* The update of the range from explicit buffers: params and grads point at flat position `begin`. */
LOOM_NODISCARD loom_status loom_optim_step_range(loom_optim *o, loom_model *model, int64_t step, float *params,
                                                 const float *grads, loom_optim_stats *st);
/* Global L2 norm of the gradients (deterministic). */
double loom_optim_grad_norm(loom_optim *o, loom_model *model);
/* ---- the streamed update (the memory manager keeps the moments in chunks, RAM or file) ----
 * An optimizer of [begin, end) that owns no state; elementwise kinds only (AdamW, SGD: LAMB and LARS need
 * whole-parameter norms before any chunk moves). A step is: the gradients' sum of squares over this range,
 * collected chunk by chunk (loom_optim_grad_sumsq), then loom_optim_begin_streamed (norm, clipping, lr;
 * collective over the comm given and the model's tp/pp axes), then loom_optim_update_chunk per chunk. */
LOOM_NODISCARD loom_status loom_optim_init_streamed(const loom_optim_config *c, loom_backend *be, loom_mem *mem,
                                                    const loom_model *model, int64_t begin, int64_t end,
                                                    loom_comm *comm, loom_optim **out);
/* *ss = sum of squares of gradients [lo, hi) (g, a buffer, points at flat position lo), parameters counted as
 * the norm counts them. */
LOOM_NODISCARD loom_status loom_optim_grad_sumsq(const loom_optim *o, const loom_model *model, int64_t lo, int64_t hi,
                                                 const float *g, double *ss);
LOOM_NODISCARD loom_status loom_optim_begin_streamed(loom_optim *o, loom_model *model, int64_t step, double sumsq,
                                                     loom_optim_stats *st);
/* The update of flat positions [lo, hi): p, g, m, v (buffers; v NULL for SGD) point at position lo. */
LOOM_NODISCARD loom_status loom_optim_update_chunk(loom_optim *o, const loom_model *model, int64_t lo, int64_t hi,
                                                   float *p, const float *g, float *m, float *v);
/* State buffers for checkpoints: count (1 or 2) and each buffer of loom_optim_state_size floats. */
int loom_optim_num_state_buffers(const loom_optim *o);
float *loom_optim_state_buffer(loom_optim *o, int i);
int64_t loom_optim_state_size(const loom_optim *o);
#endif
