/* The layout search (include/loom/plan.h, loom_plan_auto): every way to run one model and global batch on
 * `world` ranks that loom can run, each checked against the memory limit (loom_plan_memory's prediction for
 * one rank per pipeline stage) and timed (loom_plan_time); the k fastest kept. Layouts loom would refuse
 * (a split that does not divide, a memory budget with tp or pp) are not enumerated. */
#include <stdlib.h>
#include <string.h>

#include "loom/parallel.h"
#include "loom/plan.h"
#include "plan_impl.h"

typedef struct {
    loom_plan_choice *best;
    int k, n;
} top_k;

static void keep(top_k *tk, const loom_run_config *rc, const loom_plan_time_result *t) {
    if (tk->n == tk->k && t->step_s >= tk->best[tk->n - 1].t.step_s) return;
    int i = tk->n < tk->k ? tk->n++ : tk->n - 1;
    while (i > 0 && tk->best[i - 1].t.step_s > t->step_s) {
        tk->best[i] = tk->best[i - 1];
        i--;
    }
    tk->best[i].rc = *rc;
    tk->best[i].t = *t;
}

/* The largest predicted peak over the pipeline's stages: while searching (all = 0) the first stage (the most
 * micro-batches in flight, the embedding) and the last (the head), which hold the most; the chosen layouts
 * are then checked on every stage (all = 1). The ranks of a stage differ by at most a slice's rounding. */
static loom_status peak_of(const loom_run_config *rc, int world, const loom_mesh_shape *s, int all, int64_t *peak) {
    *peak = 0;
    for (int p = 0; p < s->pp; p++) {
        if (!all && p != 0 && p != s->pp - 1) continue;
        loom_plan_rank pr;
        LOOM_CALL(loom_plan_memory_rank(rc, world, p * s->dp * s->sp * s->tp, &pr));
        int64_t total = 0;
        for (int k = 0; k < LOOM_MEM_N_CATEGORIES; k++) total += pr.bytes[k];
        if (total > *peak) *peak = total;
    }
    return LOOM_OK;
}

static int divides(int64_t a, int64_t b) { return b > 0 && a % b == 0; }

/* A lower bound of a rank's persistent state (parameters, gradients, the optimizer's n_state moments; a bf16
 * copy below stage 3), its share of the whole model's: it rules out most layouts of a large model before any
 * layout is built. */
static double state_floor(double params, int n_state, int tp, int pp, int red, int zero, int prec) {
    const double p = params / ((double)tp * pp);
    return 4.0 * p * (zero >= 3 ? 1.0 / red : 1.0) + 4.0 * p * (zero >= 2 ? 1.0 / red : 1.0) +
           4.0 * n_state * p * (zero >= 1 ? 1.0 / red : 1.0) + (prec == LOOM_PRECISION_BF16 && zero < 3 ? 2.0 * p : 0.0);
}

/* what one search holds: the question, the running top k, the counts */
typedef struct {
    const loom_run_config *base;
    const loom_cluster *c;
    int world;
    int64_t limit;
    double params;   /* the whole model's, for the state's lower bound */
    int n_state;
    loom_plan_search *so;
    top_k tk;
} search;

/* one layout (its mesh s, the rest in rc): dropped when it does not fit or cannot run, else timed and kept
 * when among the k fastest. off: with the memory manager holding the state within what the rest leaves. */
static void consider(search *sr, loom_run_config *rc, const loom_mesh_shape *s, int off) {
    loom_train_config *t = &rc->train;
    sr->so->evaluated++;
    if (!off && state_floor(sr->params, sr->n_state, s->tp, s->pp, s->dp * s->sp, (int)t->zero, t->precision) >
                    (double)sr->limit)
        return;
    int64_t peak;
    if (off) { /* only where the state does not fit in RAM as it is */
        if (peak_of(rc, sr->world, s, 0, &peak) != LOOM_OK || peak <= sr->limit) return;
        loom_plan_rank pr;
        if (loom_plan_memory_rank(rc, sr->world, 0, &pr) != LOOM_OK) return;
        t->offload = 1;
        t->mem_budget = sr->limit - pr.bytes[LOOM_MEM_ACTS]; /* the budget covers every other category */
        if (t->mem_budget <= 0) return;
    }
    if (peak_of(rc, sr->world, s, 0, &peak) != LOOM_OK || peak > sr->limit) return; /* cannot run, or too big */
    sr->so->fitting++;
    loom_plan_time_result r;
    if (loom_plan_time_internal(rc, sr->world, sr->c, 0, &r) != LOOM_OK) return;
    r.peak_bytes = peak;
    keep(&sr->tk, rc, &r);
}

/* every setting of one mesh: micro-batches (powers of two dividing the global batch over dp; a pipeline wants
 * >= pp), ZeRO stage, recompute, schedule (interleaved: 2 chunks per rank), Megatron-SP, precision, offload */
static void settings(search *sr, const loom_mesh_shape *s, int max_prec) {
    const loom_run_config *base = sr->base;
    const loom_model_config *mc = &base->model;
    const int64_t global = base->train.batch * base->train.grad_accum;
    const int dp = s->dp, pp = s->pp, tp = s->tp, sp = s->sp;
    const int offload = sr->so->try_offload && tp == 1 && pp == 1; /* the memory budget composes with dp only */
    for (int64_t m = 1; m <= global; m *= 2) {
        if (!divides(global, m) || !divides(global / m, dp) || (pp > 1 && m < pp)) continue;
        for (int zero = 0; zero <= (dp * sp > 1 ? 3 : 0); zero++)
            for (int rcm = 0; rcm < 3; rcm++)
                for (int sched = 0; sched < (pp > 1 ? 2 : 1); sched++) {
                    if (sched && (!divides(m, pp) || mc->n_layer < 2 * pp)) continue;
                    for (int tsp = 0; tsp < (tp > 1 ? 2 : 1); tsp++)
                        for (int prec = 0; prec <= max_prec; prec++)
                            for (int off = 0; off <= offload; off++) {
                                loom_run_config rc = *base;
                                loom_train_config *t = &rc.train;
                                snprintf(t->mesh, sizeof t->mesh, "dp=%d,pp=%d,tp=%d,sp=%d", dp, pp, tp, sp);
                                t->batch = global / m;
                                t->grad_accum = m;
                                t->zero = zero;
                                t->recompute = (loom_recompute)rcm;
                                t->pp_schedule = sched;
                                t->pp_virtual = sched ? 2 : t->pp_virtual;
                                t->tp_seq_parallel = tsp;
                                t->precision = prec;
                                t->offload = 0;
                                t->mem_budget = 0;
                                if (!sr->c->gpu) { /* a host's cores shared by its ranks */
                                    const int per_host = (sr->world + sr->c->hosts - 1) / sr->c->hosts;
                                    t->threads = sr->c->cores_per_host / per_host > 0 ? sr->c->cores_per_host / per_host : 1;
                                }
                                consider(sr, &rc, s, off);
                            }
                }
    }
}

loom_status loom_plan_auto(const loom_run_config *base, int world, const loom_cluster *c, loom_plan_search *so, int k,
                           loom_plan_choice **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    LOOM_CHECK(world >= 1 && k >= 1, LOOM_ERR_INVALID_ARG, "a search needs ranks and k >= 1");
    const loom_model_config *mc = &base->model;
    const int64_t T = base->train.seq_len;
    const int64_t limit = so->mem_limit > 0 ? so->mem_limit : c->memory_per_rank;
    LOOM_CHECK(limit > 0, LOOM_ERR_INVALID_ARG, "no memory limit: give one (--mem-limit) or a cluster that states it");
    search sr = {base, c, world, limit, (double)loom_model_config_num_params(mc),
                 base->optim.kind == LOOM_OPTIM_ADAMW || base->optim.kind == LOOM_OPTIM_LAMB ? 2 : 1, so,
                 {calloc((size_t)k, sizeof(loom_plan_choice)), k, 0}};
    LOOM_CHECK(sr.tk.best != NULL, LOOM_ERR_NOMEM, "out of memory");
    so->evaluated = so->fitting = 0;
    const int max_prec = c->peak_gflops[LOOM_PRECISION_BF16] > 0 ? LOOM_PRECISION_BF16 : LOOM_PRECISION_FP32;
    /* the meshes: tp a power of two dividing the heads and the MLP; pp up to the blocks; sp a power of two
     * leaving ring attention blocks of at least 128 positions (shorter ones leave the products too small) */
    for (int tp = 1; tp <= world; tp *= 2) {
        if (!divides(world, tp) || !divides(mc->n_head, tp) || !divides(mc->n_kv_head, tp) || !divides(mc->d_ff, tp)) continue;
        for (int pp = 1; tp * pp <= world && pp <= mc->n_layer; pp++) {
            if (!divides(world, tp * pp)) continue;
            for (int sp = 1; tp * pp * sp <= world; sp *= 2) {
                if (!divides(world, tp * pp * sp) || !divides(T, sp) || (sp > 1 && T / sp < 128)) continue;
                const loom_mesh_shape s = {world / (tp * pp * sp), pp, tp, sp};
                settings(&sr, &s, max_prec);
            }
        }
    }
    top_k tk = sr.tk;
    loom_error_clear();
    /* the chosen layouts' memory on every stage */
    int kept = 0;
    for (int i = 0; i < tk.n; i++) {
        loom_mesh_shape s;
        int64_t peak = 0;
        if (loom_mesh_shape_parse(tk.best[i].rc.train.mesh, &s) != LOOM_OK ||
            peak_of(&tk.best[i].rc, world, &s, 1, &peak) != LOOM_OK || peak > limit) {
            loom_error_clear();
            so->fitting--;
            continue;
        }
        tk.best[i].t.peak_bytes = peak;
        tk.best[kept++] = tk.best[i];
    }
    *out = tk.best;
    *n_out = kept;
    return LOOM_OK;
}
