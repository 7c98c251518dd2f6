/* Peak memory per rank, predicted (include/loom/plan.h). The persistent state comes from the layout the
 * run would build (loom_model_init_layout: this rank's flat buffer, tp cuts and pipeline part included)
 * and the ZeRO stage's slice of it; activations from the arena the model would reserve. */
#include <stdlib.h>
#include <string.h>

#include "loom/parallel.h"
#include "loom/plan.h"

/* the largest block unit and the embedding/head units' sizes of a layout, in floats */
static void unit_sizes(const loom_model *m, int64_t *first, int64_t *last, int64_t *largest_block) {
    const int n = loom_model_num_units(m);
    *first = *last = *largest_block = 0;
    for (int u = 0; u < n; u++) {
        int64_t b, e;
        loom_model_unit_range(m, u, &b, &e);
        if (u == 0) *first = e - b;
        else if (u == n - 1) *last = e - b;
        else if (e - b > *largest_block) *largest_block = e - b;
    }
}

loom_status loom_plan_memory(const loom_run_config *rc, int world, loom_plan_rank **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    const loom_train_config *t = &rc->train;
    loom_mesh_shape s;
    LOOM_CALL(loom_mesh_shape_parse(t->mesh, &s));
    if (!strstr(t->mesh, "dp=")) s.dp = world / (s.pp * s.tp * s.sp);
    LOOM_CHECK(s.dp >= 1 && s.dp * s.pp * s.tp * s.sp == world, LOOM_ERR_CONFIG,
               "mesh '%s' does not tile %d ranks", t->mesh, world);
    LOOM_CHECK(t->batch % s.dp == 0 && t->seq_len % s.sp == 0, LOOM_ERR_CONFIG,
               "batch %lld over dp=%d and seq_len %lld over sp=%d must divide evenly", (long long)t->batch, s.dp,
               (long long)t->seq_len, s.sp);
    loom_plan_rank *r = calloc((size_t)world, sizeof *r);
    LOOM_CHECK(r != NULL, LOOM_ERR_NOMEM, "out of memory");
    const int red = s.dp * s.sp; /* the ranks ZeRO slices over */
    const int64_t B = t->batch / s.dp, T = t->seq_len / s.sp;
    const int states = rc->optim.kind == LOOM_OPTIM_ADAMW || rc->optim.kind == LOOM_OPTIM_LAMB ? 2 : 1;
    const int stage = (int)t->zero;
    loom_status st = LOOM_OK;
    for (int w = 0; w < world && st == LOOM_OK; w++) {
        loom_plan_rank *p = &r[w];
        p->world_rank = w;
        p->tp_rank = w % s.tp;
        p->sp_rank = (w / s.tp) % s.sp;
        p->dp_rank = (w / (s.tp * s.sp)) % s.dp;
        p->pp_rank = w / (s.tp * s.sp * s.dp);
        loom_model_part part;
        int slots = 1;
        if (s.pp > 1) {
            const int v = t->pp_schedule ? (int)t->pp_virtual : 1;
            st = loom_pipeline_partition(&rc->model, s.pp, v, p->pp_rank, &part, NULL);
            if (st != LOOM_OK) break;
            slots = loom_pipeline_schedule_slots(s.pp, p->pp_rank, (loom_pp_schedule)t->pp_schedule, v,
                                                 (int)t->grad_accum);
        }
        loom_model *m = NULL;
        st = loom_model_init_layout(&rc->model, s.pp > 1 ? &part : NULL, s.tp, p->tp_rank, &m);
        if (st != LOOM_OK) break;
        const int64_t n = loom_model_buffer_size(m);
        const int64_t S = (n + red - 1) / red, rr = p->dp_rank * s.sp + p->sp_rank;
        const int64_t lo = rr * S < n ? rr * S : n, hi = lo + S < n ? lo + S : n, slice = hi - lo;
        p->bytes[LOOM_MEM_PARAMS] = 4 * (stage >= 3 ? slice : n);
        p->bytes[LOOM_MEM_GRADS] = 4 * (stage >= 2 ? slice : n);
        p->bytes[LOOM_MEM_OPTIM] = 4 * (int64_t)states * (stage >= 1 ? slice : n);
        int64_t u_first, u_last, u_block;
        unit_sizes(m, &u_first, &u_last, &u_block);
        int64_t ws = 0;
        if (red > 1 && stage <= 1 && t->dp_transport != LOOM_DP_MPI) /* node-shared flags page(s) */
            ws += loom_zero_shm_flags_bytes(loom_model_num_units(m));
        if (stage >= 2) /* reduce-scatter results; the head's unit gradients, the unit being computed and at
                         * most two more whose reduce-scatters are in flight (zero.c bounds them) */
            ws += 4 * (slice + u_first + u_last + 3 * u_block);
        if (stage >= 3) /* gathered units: the one in use, the one prefetched, the head's kept into backward */
            ws += 4 * (u_first + u_last + 2 * u_block);
        p->bytes[LOOM_MEM_WORKSPACE] = ws;
        p->bytes[LOOM_MEM_ACTS] =
            loom_model_activation_bytes(m, B, T, t->recompute, slots, s.sp, t->tp_seq_parallel && s.tp > 1);
        loom_model_free(&m);
    }
    if (st != LOOM_OK) {
        free(r);
        return st;
    }
    *out = r;
    *n_out = world;
    return LOOM_OK;
}
