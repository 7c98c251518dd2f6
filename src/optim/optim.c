/* Optimizers over named views of the flat buffers (see include/loom/optim.h). */
#include "loom/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loom_optim {
    loom_optim_config cfg;
    loom_backend *be;
    loom_mem *mem;
    int64_t size;       /* floats per state buffer = end - begin */
    int64_t begin, end; /* the range of the flat buffers this optimizer updates (a ZeRO shard, or all) */
    loom_comm *comm;    /* the ranks sharing the other ranges (norms are summed over it); NULL: none */
    float *m, *v;       /* v only for AdamW and LAMB */
    int64_t total_steps;
    double *norms;      /* LAMB/LARS: 2 per parameter, partial sums of squares */
    int streamed;       /* the moments live outside (loom_optim_init_streamed) */
    double loss_scale;  /* > 0: gradients carry this factor; a non-finite norm skips the step */
    int skip_nonfinite; /* a non-finite norm skips the step without loss scaling too */
    int64_t cur_step;   /* streamed: the step begun, its lr and clipping */
    double cur_lr, cur_clip;
    int cur_skip;
};

loom_optim_config loom_optim_config_default(void) {
    loom_optim_config c;
    memset(&c, 0, sizeof c);
    c.kind = LOOM_OPTIM_ADAMW;
    c.lr = 6e-4;
    c.min_lr = 6e-5;
    c.warmup_steps = 0;
    c.decay_steps = 0;
    c.schedule = LOOM_SCHEDULE_COSINE;
    c.beta1 = 0.9;
    c.beta2 = 0.95;
    c.eps = 1e-8;
    c.weight_decay = 0.1;
    c.momentum = 0.9;
    c.nesterov = 0;
    c.trust_coef = 0.001;
    c.grad_clip = 1.0;
    return c;
}

const char *loom_optim_kind_name(loom_optim_kind k) {
    switch (k) {
    case LOOM_OPTIM_ADAMW: return "adamw";
    case LOOM_OPTIM_SGD: return "sgd";
    case LOOM_OPTIM_LAMB: return "lamb";
    case LOOM_OPTIM_LARS: return "lars";
    }
    return "?";
}

loom_status loom_optim_config_validate(const loom_optim_config *c) {
    LOOM_CHECK(c->lr >= 0 && isfinite(c->lr), LOOM_ERR_CONFIG, "optim.lr must be >= 0, got %g", c->lr);
    LOOM_CHECK(c->min_lr >= 0 && c->min_lr <= c->lr, LOOM_ERR_CONFIG,
               "optim.min_lr must be in [0, optim.lr=%g], got %g", c->lr, c->min_lr);
    LOOM_CHECK(c->beta1 >= 0 && c->beta1 < 1, LOOM_ERR_CONFIG, "optim.beta1 must be in [0, 1), got %g", c->beta1);
    LOOM_CHECK(c->beta2 >= 0 && c->beta2 < 1, LOOM_ERR_CONFIG, "optim.beta2 must be in [0, 1), got %g", c->beta2);
    LOOM_CHECK(c->eps > 0, LOOM_ERR_CONFIG, "optim.eps must be > 0, got %g", c->eps);
    LOOM_CHECK(c->weight_decay >= 0, LOOM_ERR_CONFIG, "optim.weight_decay must be >= 0, got %g", c->weight_decay);
    LOOM_CHECK(c->momentum >= 0 && c->momentum < 1, LOOM_ERR_CONFIG, "optim.momentum must be in [0, 1), got %g",
               c->momentum);
    LOOM_CHECK(c->grad_clip >= 0, LOOM_ERR_CONFIG, "optim.grad_clip must be >= 0 (0 = off), got %g", c->grad_clip);
    LOOM_CHECK(c->warmup_steps >= 0 && c->decay_steps >= 0, LOOM_ERR_CONFIG,
               "optim.warmup_steps and optim.decay_steps must be >= 0");
    LOOM_CHECK(c->trust_coef > 0, LOOM_ERR_CONFIG, "optim.trust_coef must be > 0, got %g", c->trust_coef);
    return LOOM_OK;
}

double loom_optim_lr(const loom_optim_config *c, int64_t step, int64_t total_steps) {
    /* nanoGPT's schedule: linear warm-up over warmup_steps, then decay to min_lr at decay_steps */
    if (step < c->warmup_steps) return c->lr * (double)(step + 1) / (double)(c->warmup_steps + 1);
    if (c->schedule == LOOM_SCHEDULE_CONSTANT) return c->lr;
    int64_t decay = c->decay_steps > 0 ? c->decay_steps : total_steps;
    if (step >= decay || decay <= c->warmup_steps) return c->min_lr;
    double ratio = (double)(step - c->warmup_steps) / (double)(decay - c->warmup_steps);
    double coef = c->schedule == LOOM_SCHEDULE_COSINE ? 0.5 * (1.0 + cos(M_PI * ratio)) : 1.0 - ratio;
    return c->min_lr + coef * (c->lr - c->min_lr);
}

loom_status loom_optim_init(const loom_optim_config *c, loom_backend *be, loom_mem *mem, const loom_model *model,
                            loom_optim **out) {
    return loom_optim_init_range(c, be, mem, model, 0, loom_model_buffer_size(model), NULL, out);
}

static loom_status init_range(const loom_optim_config *c, loom_backend *be, loom_mem *mem, const loom_model *model,
                              int64_t begin, int64_t end, loom_comm *comm, int streamed, loom_optim **out);

loom_status loom_optim_init_range(const loom_optim_config *c, loom_backend *be, loom_mem *mem,
                                  const loom_model *model, int64_t begin, int64_t end, loom_comm *comm,
                                  loom_optim **out) {
    return init_range(c, be, mem, model, begin, end, comm, 0, out);
}

loom_status loom_optim_init_streamed(const loom_optim_config *c, loom_backend *be, loom_mem *mem,
                                     const loom_model *model, int64_t begin, int64_t end, loom_comm *comm,
                                     loom_optim **out) {
    LOOM_CHECK(c->kind == LOOM_OPTIM_ADAMW || c->kind == LOOM_OPTIM_SGD, LOOM_ERR_UNSUPPORTED,
               "the memory manager streams elementwise optimizers (adamw, sgd); %s needs whole-parameter norms "
               "before the update", loom_optim_kind_name(c->kind));
    return init_range(c, be, mem, model, begin, end, comm, 1, out);
}

static loom_status init_range(const loom_optim_config *c, loom_backend *be, loom_mem *mem, const loom_model *model,
                              int64_t begin, int64_t end, loom_comm *comm, int streamed, loom_optim **out) {
    *out = NULL;
    LOOM_CALL(loom_optim_config_validate(c));
    LOOM_CHECK(begin >= 0 && begin <= end && end <= loom_model_buffer_size(model), LOOM_ERR_INVALID_ARG,
               "optimizer range [%lld, %lld) outside the model's buffer of %lld", (long long)begin, (long long)end,
               (long long)loom_model_buffer_size(model));
    loom_optim *o = calloc(1, sizeof *o);
    LOOM_CHECK(o != NULL, LOOM_ERR_NOMEM, "out of memory");
    o->cfg = *c;
    o->be = be;
    o->mem = mem;
    o->begin = begin;
    o->end = end;
    o->comm = comm && loom_comm_size(comm) > 1 ? comm : NULL;
    o->size = end - begin;
    o->norms = calloc((size_t)(2 * loom_model_num_param_infos(model) + 1), sizeof(double));
    if (!o->norms) {
        free(o);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    o->streamed = streamed;
    size_t bytes = (size_t)o->size * sizeof(float);
    loom_status st = streamed ? LOOM_OK : loom_buf_alloc(be, mem, LOOM_MEM_OPTIM, bytes, (void **)&o->m);
    if (st == LOOM_OK && !streamed && (c->kind == LOOM_OPTIM_ADAMW || c->kind == LOOM_OPTIM_LAMB))
        st = loom_buf_alloc(be, mem, LOOM_MEM_OPTIM, bytes, (void **)&o->v);
    if (st != LOOM_OK) {
        loom_optim_free(&o);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    *out = o;
    return LOOM_OK;
}

void loom_optim_free(loom_optim **po) {
    if (!po || !*po) return;
    loom_optim *o = *po;
    size_t bytes = (size_t)o->size * sizeof(float);
    loom_buf_free(o->be, o->mem, LOOM_MEM_OPTIM, o->m, bytes);
    loom_buf_free(o->be, o->mem, LOOM_MEM_OPTIM, o->v, bytes);
    free(o->norms);
    free(o);
    *po = NULL;
}

void loom_optim_set_total_steps(loom_optim *o, int64_t total_steps) { o->total_steps = total_steps; }
void loom_optim_set_loss_scale(loom_optim *o, double scale) { o->loss_scale = scale > 0 ? scale : 0.0; }
void loom_optim_set_skip_nonfinite(loom_optim *o, int on) { o->skip_nonfinite = on; }

/* From the (loss-scaled) gradients' norm: stats, whether to skip (an overflow under loss scaling), and the
 * factor the update multiplies gradients by (clipping and unscaling together). */
static loom_status norm_to_clip(loom_optim *o, int64_t step, double norm, loom_optim_stats *st, int *skip,
                                double *gmul) {
    const loom_optim_config *c = &o->cfg;
    const double unscale = o->loss_scale > 0 ? 1.0 / o->loss_scale : 1.0;
    norm *= unscale;
    double clip = 1.0;
    if (c->grad_clip > 0 && norm > c->grad_clip) clip = c->grad_clip / (norm + 1e-6); /* as torch's clip_grad_norm_ */
    *skip = (o->loss_scale > 0 || o->skip_nonfinite) && !isfinite(norm);
    *gmul = clip * unscale;
    if (st) {
        st->lr = loom_optim_lr(c, step, o->total_steps);
        st->grad_norm = norm;
        st->clip_coef = clip;
        st->skipped = *skip;
        st->bf16_written = 0; /* set by the update that writes it */
    }
    LOOM_CHECK(*skip || isfinite(norm), LOOM_ERR_INVALID_ARG, "gradient norm is %g at step %lld (loss diverged)", norm,
               (long long)step);
    return LOOM_OK;
}

/* The part of parameter p inside the optimizer's range: [*lo, *hi) in flat positions; 0 if none. */
static int clip_to_range(const loom_optim *o, const loom_param_info *p, int64_t *lo, int64_t *hi) {
    *lo = p->offset > o->begin ? p->offset : o->begin;
    *hi = p->offset + p->numel < o->end ? p->offset + p->numel : o->end;
    return *lo < *hi;
}

/* Tensor parallelism: a parameter replicated over tp counts once (on tp rank 0) in norms summed over tp;
 * a cut one counts on every rank, each holding its part. */
static loom_comm *tp_of(const loom_model *model) {
    loom_comm *tp = loom_model_tp_comm(model);
    return tp && loom_comm_size(tp) > 1 ? tp : NULL;
}
static int counts_on_tp(const loom_model *model, const loom_param_info *p) {
    return p->tp_split != LOOM_TP_REPLICATED || loom_comm_rank(loom_model_tp_comm(model)) == 0;
}
/* in the whole model's norm: a pipeline's tied embedding counts once, on the first stage */
static int counts_here(const loom_model *model, const loom_param_info *p) {
    return !p->tied_copy && counts_on_tp(model, p);
}
/* Pipeline: the other stages hold the rest of the model; a whole-model norm sums over them. */
static loom_comm *pp_of(const loom_model *model) {
    loom_comm *pp = loom_model_parts_comm(model);
    return pp && loom_comm_size(pp) > 1 ? pp : NULL;
}

/* A sum of squares of this rank's part, summed over the ranks holding the other parts (the optimizer's
 * comm, the model's tp and pp axes): the whole model's. */
static loom_status sum_over_ranks(const loom_optim *o, const loom_model *model, double *ss) {
    if (o->comm) LOOM_CALL(loom_comm_allreduce_sum_f64(o->comm, ss, 1));
    if (tp_of(model)) LOOM_CALL(loom_comm_allreduce_sum_f64(tp_of(model), ss, 1));
    if (pp_of(model)) LOOM_CALL(loom_comm_allreduce_sum_f64(pp_of(model), ss, 1));
    return LOOM_OK;
}

static loom_status range_grad_norm(loom_optim *o, loom_model *model, const float *g, double *norm) {
    double ss;
    LOOM_CALL(loom_optim_grad_sumsq(o, model, o->begin, o->end, g, &ss));
    LOOM_CALL(sum_over_ranks(o, model, &ss));
    *norm = sqrt(ss);
    return LOOM_OK;
}

double loom_optim_grad_norm(loom_optim *o, loom_model *model) {
    double n = NAN;
    if (range_grad_norm(o, model, loom_model_grads(model) + o->begin, &n) != LOOM_OK) return NAN;
    return n;
}

loom_status loom_optim_step(loom_optim *o, loom_model *model, int64_t step, loom_optim_stats *st) {
    return loom_optim_step_range(o, model, step, loom_model_params(model) + o->begin,
                                 loom_model_grads(model) + o->begin, st);
}

loom_status loom_optim_step_range(loom_optim *o, loom_model *model, int64_t step, float *params, const float *grads,
                                  loom_optim_stats *st) {
    const loom_optim_config *c = &o->cfg;
    LOOM_CHECK(step >= 0, LOOM_ERR_INVALID_ARG, "step must be >= 0, got %lld", (long long)step);
    double norm, clip;
    int skip;
    LOOM_CALL(range_grad_norm(o, model, grads, &norm));
    LOOM_CALL(norm_to_clip(o, step, norm, st, &skip, &clip)); /* clip: also divides out a loss scale */
    if (skip) return LOOM_OK;
    /* an update over the whole weights writes their bf16 copy in the same pass (one read of p, not two) */
    uint16_t *p16 = loom_model_bf16_copy_of(model, params, o->end - o->begin);
    const double lr = loom_optim_lr(c, step, o->total_steps);
    const double t = (double)(step + 1);
    const float bc1 = (float)(1.0 - pow(c->beta1, t)), bc2 = (float)(1.0 - pow(c->beta2, t));
    const int np = loom_model_num_param_infos(model);
    const int layerwise = c->kind == LOOM_OPTIM_LAMB || c->kind == LOOM_OPTIM_LARS;
    int64_t lo, hi;
    /* LAMB and LARS scale each parameter by a ratio of whole-parameter norms: partial sums over this
     * range first (LAMB's moments update here too), summed over the ranks holding the other parts */
    if (layerwise) {
        for (int i = 0; i < 2 * np; i++) o->norms[i] = 0.0;
        for (int i = 0; i < np; i++) {
            const loom_param_info *pi = loom_model_param_info(model, i);
            if (!clip_to_range(o, pi, &lo, &hi)) continue;
            float *p = params + (lo - o->begin), *m = o->m + (lo - o->begin), *v = o->v ? o->v + (lo - o->begin) : NULL;
            const float *g = grads + (lo - o->begin);
            const float wd = (pi->decay || c->decay_all) ? (float)c->weight_decay : 0.0f;
            LOOM_CALL(loom_k_sum_squares(o->be, &(loom_sum_squares_args){p, hi - lo, &o->norms[2 * i]}));
            if (c->kind == LOOM_OPTIM_LAMB)
                LOOM_CALL(loom_k_lamb_moments(o->be, &(loom_lamb_moments_args){.p = p, .g = g, .m = m, .v = v, .n = hi - lo,
                                              .beta1 = (float)c->beta1, .beta2 = (float)c->beta2, .eps = (float)c->eps,
                                              .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2,
                                              .grad_scale = (float)clip, .result = &o->norms[2 * i + 1]}));
            else LOOM_CALL(loom_k_sum_squares(o->be, &(loom_sum_squares_args){g, hi - lo, &o->norms[2 * i + 1]}));
            if (!counts_on_tp(model, pi)) o->norms[2 * i] = o->norms[2 * i + 1] = 0.0;
        }
        if (o->comm) LOOM_CALL(loom_comm_allreduce_sum_f64(o->comm, o->norms, 2 * np));
        if (tp_of(model)) LOOM_CALL(loom_comm_allreduce_sum_f64(tp_of(model), o->norms, 2 * np));
    }
    for (int i = 0; i < np; i++) {
        const loom_param_info *pi = loom_model_param_info(model, i);
        if (!clip_to_range(o, pi, &lo, &hi)) continue;
        const int64_t n = hi - lo;
        float *p = params + (lo - o->begin), *m = o->m + (lo - o->begin), *v = o->v ? o->v + (lo - o->begin) : NULL;
        uint16_t *q16 = p16 ? p16 + (lo - o->begin) : NULL; /* this parameter's part of the bf16 copy */
        const float *g = grads + (lo - o->begin);
        const float wd = (pi->decay || c->decay_all) ? (float)c->weight_decay : 0.0f;
        switch (c->kind) {
        case LOOM_OPTIM_ADAMW:
            LOOM_CALL(loom_k_adamw(o->be, &(loom_adamw_args){.p = p, .g = g, .m = m, .v = v, .n = n, .lr = (float)lr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2, .eps = (float)c->eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .grad_scale = (float)clip, .p16 = q16}));
            break;
        case LOOM_OPTIM_LAMB: {
            double pn = sqrt(o->norms[2 * i]), rn = sqrt(o->norms[2 * i + 1]);
            double trust = (pn > 0 && rn > 0) ? pn / rn : 1.0;
            LOOM_CALL(loom_k_lamb_apply(o->be, &(loom_lamb_apply_args){.p = p, .m = m, .v = v, .n = n, .eps = (float)c->eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .step = (float)(lr * trust), .p16 = q16}));
            break;
        }
        case LOOM_OPTIM_SGD:
            LOOM_CALL(loom_k_sgd(o->be, &(loom_sgd_args){.p = p, .g = g, .buf = m, .n = n, .lr = (float)lr, .momentum = (float)c->momentum, .nesterov = c->nesterov, .weight_decay = wd, .grad_scale = (float)clip, .first_step = step == 0, .p16 = q16}));
            break;
        case LOOM_OPTIM_LARS: {
            double pn = sqrt(o->norms[2 * i]);
            double gn = clip * sqrt(o->norms[2 * i + 1]);
            double denom = gn + (double)wd * pn;
            double local = (pn > 0 && denom > 0) ? c->trust_coef * pn / denom : 1.0;
            LOOM_CALL(loom_k_lars(o->be, &(loom_lars_args){.p = p, .g = g, .buf = m, .n = n, .lr = (float)(lr * local), .momentum = (float)c->momentum, .weight_decay = wd, .grad_scale = (float)clip, .p16 = q16}));
            break;
        }
        }
    }
    if (st) st->bf16_written = p16 != NULL;
    return LOOM_OK;
}

loom_status loom_optim_grad_sumsq(const loom_optim *o, const loom_model *model, int64_t lo, int64_t hi, const float *g,
                                  double *ss) {
    *ss = 0.0;
    for (int i = 0; i < loom_model_num_param_infos(model); i++) {
        const loom_param_info *p = loom_model_param_info(model, i);
        const int64_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        double part;
        if (a >= b || !counts_here(model, p)) continue;
        LOOM_CALL(loom_k_sum_squares(o->be, &(loom_sum_squares_args){g + (a - lo), b - a, &part}));
        *ss += part;
    }
    return LOOM_OK;
}

loom_status loom_optim_begin_streamed(loom_optim *o, loom_model *model, int64_t step, double ss, loom_optim_stats *st) {
    const loom_optim_config *c = &o->cfg;
    LOOM_CHECK(o->streamed, LOOM_ERR_INVALID_ARG, "loom_optim_begin_streamed needs loom_optim_init_streamed");
    LOOM_CHECK(step >= 0, LOOM_ERR_INVALID_ARG, "step must be >= 0, got %lld", (long long)step);
    LOOM_CALL(sum_over_ranks(o, model, &ss));
    int skip;
    o->cur_step = step;
    o->cur_lr = loom_optim_lr(c, step, o->total_steps);
    LOOM_CALL(norm_to_clip(o, step, sqrt(ss), st, &skip, &o->cur_clip));
    o->cur_skip = skip;
    return LOOM_OK;
}

loom_status loom_optim_update_chunk(loom_optim *o, const loom_model *model, int64_t lo, int64_t hi, float *p,
                                    const float *g, float *m, float *v) {
    const loom_optim_config *c = &o->cfg;
    if (o->cur_skip) return LOOM_OK;
    const double t = (double)(o->cur_step + 1);
    const float bc1 = (float)(1.0 - pow(c->beta1, t)), bc2 = (float)(1.0 - pow(c->beta2, t));
    for (int i = 0; i < loom_model_num_param_infos(model); i++) {
        const loom_param_info *pi = loom_model_param_info(model, i);
        const int64_t a = pi->offset > lo ? pi->offset : lo, b = pi->offset + pi->numel < hi ? pi->offset + pi->numel : hi;
        if (a >= b) continue;
        const float wd = (pi->decay || c->decay_all) ? (float)c->weight_decay : 0.0f;
        const int64_t k = a - lo;
        if (c->kind == LOOM_OPTIM_ADAMW)
            LOOM_CALL(loom_k_adamw(o->be, &(loom_adamw_args){.p = p + k, .g = g + k, .m = m + k, .v = v + k, .n = b - a, .lr = (float)o->cur_lr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2, .eps = (float)c->eps, .weight_decay = wd, .bias_correction1 = bc1, .bias_correction2 = bc2, .grad_scale = (float)o->cur_clip}));
        else
            LOOM_CALL(loom_k_sgd(o->be, &(loom_sgd_args){.p = p + k, .g = g + k, .buf = m + k, .n = b - a, .lr = (float)o->cur_lr, .momentum = (float)c->momentum, .nesterov = c->nesterov, .weight_decay = wd, .grad_scale = (float)o->cur_clip, .first_step = o->cur_step == 0}));
    }
    return LOOM_OK;
}

int loom_optim_num_state_buffers(const loom_optim *o) {
    if (o->streamed) return o->cfg.kind == LOOM_OPTIM_ADAMW ? 2 : 1;
    return o->v ? 2 : 1;
}
float *loom_optim_state_buffer(loom_optim *o, int i) { return i == 0 ? o->m : (i == 1 ? o->v : NULL); }
int64_t loom_optim_state_size(const loom_optim *o) { return o->size; }
