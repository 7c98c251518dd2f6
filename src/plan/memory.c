/* Peak memory per rank, predicted (include/loom/plan.h). The persistent state comes from the layout the
 * run would build (loom_model_init_layout: this rank's flat buffer, tp cuts and pipeline part included)
 * and the ZeRO stage's slice of it; activations from the arena the model would reserve. */
#include <stdlib.h>
#include <string.h>

#include "loom/parallel.h"
#include "loom/plan.h"
#include "plan_impl.h"

/* the mesh for `world` ranks (dp = the rest when left out) */
static loom_status mesh_of(const loom_train_config *t, int world, loom_mesh_shape *s) {
    LOOM_CALL(loom_mesh_shape_parse(t->mesh, s));
    if (!strstr(t->mesh, "dp=")) s->dp = world / (s->pp * s->tp * s->sp);
    LOOM_CHECK(s->dp >= 1 && s->dp * s->pp * s->tp * s->sp == world, LOOM_ERR_CONFIG,
               "mesh '%s' does not tile %d ranks", t->mesh, world);
    LOOM_CHECK(t->batch % s->dp == 0 && t->seq_len % s->sp == 0, LOOM_ERR_CONFIG,
               "batch %lld over dp=%d and seq_len %lld over sp=%d must divide evenly", (long long)t->batch, s->dp,
               (long long)t->seq_len, s->sp);
    return LOOM_OK;
}

/* floats of [a, b) (store positions) in chunks of C that are not pinned */
static int64_t in_files(const char *pinned, int64_t C, int64_t a, int64_t b) {
    int64_t f = 0;
    for (int64_t c = a / C; c * C < b; c++)
        if (!pinned[c]) f += (b < (c + 1) * C ? b : (c + 1) * C) - (a > c * C ? a : c * C);
    return f;
}

/* The memory manager's file traffic per step, in zero.c's order: at stage 3 a unit's parameters are read
 * at each gather (every micro-batch: the forward, and the blocks' backward again; a tied head the embedding
 * once more), its gradients written each micro-batch and, from the second, read back first to be added;
 * the update then reads every held stream once and writes all but the gradients. Only the files' parts
 * count (pinned chunks stay in RAM): the placement is loom_offload_plan_pins', chunk by chunk. */
static loom_status file_traffic(const loom_model *m, const loom_zero_budget *zb, int64_t budget, int64_t olo,
                                int64_t ohi, int64_t micro, int tied, loom_plan_rank *p) {
    const int64_t C = zb->chunk_bytes / 4, nc = (ohi - olo + C - 1) / C;
    char *marks[LOOM_OFF_N_STREAMS], *mem = calloc((size_t)(LOOM_OFF_N_STREAMS * nc), 1);
    LOOM_CHECK(mem != NULL, LOOM_ERR_NOMEM, "out of memory");
    for (int k = 0; k < LOOM_OFF_N_STREAMS; k++) marks[k] = mem + k * nc;
    int64_t pinned[LOOM_OFF_N_STREAMS];
    const loom_offload_options oo = {.budget_bytes = budget, .chunk_bytes = zb->chunk_bytes};
    loom_offload_plan_pins(&oo, ohi - olo, zb->mask, loom_offload_default_cost, zb->working_set, pinned, marks);
    int64_t reads = 0, writes = 0; /* floats */
    for (int k = 0; k < LOOM_OFF_N_STREAMS; k++) {
        if (!(zb->mask & (1 << k))) continue;
        const int64_t all = in_files(marks[k], C, 0, ohi - olo);
        reads += all;                               /* the update reads it */
        if (k != LOOM_OFF_GRADS) writes += all;     /* and writes it back */
        if (k == LOOM_OFF_GRADS && zb->stage >= 3) { /* each micro-batch's gradients */
            writes += micro * all;
            reads += (micro - 1) * all;
        }
    }
    if (zb->stage >= 3 && (zb->mask & (1 << LOOM_OFF_PARAMS))) {
        const int units = loom_model_num_units(m);
        for (int u = 0; u < units; u++) {
            int64_t a, b;
            loom_model_unit_range(m, u, &a, &b);
            a = a > olo ? a : olo;
            b = b < ohi ? b : ohi;
            if (b > a) reads += loom_plan_unit_gathers(u, units, micro, tied) * in_files(marks[LOOM_OFF_PARAMS], C, a - olo, b - olo);
        }
    }
    free(mem);
    p->file_read_bytes = 4 * reads;
    p->file_write_bytes = 4 * writes;
    return LOOM_OK;
}

static loom_status predict_rank(const loom_run_config *rc, loom_mesh_shape s, int w, loom_plan_rank *p) {
    const loom_train_config *t = &rc->train;
    const int red = s.dp * s.sp; /* the ranks ZeRO slices over */
    const int64_t B = t->batch / s.dp, T = t->seq_len / s.sp;
    const int states = rc->optim.kind == LOOM_OPTIM_ADAMW || rc->optim.kind == LOOM_OPTIM_LAMB ? 2 : 1;
    loom_status st = LOOM_OK;
    memset(p, 0, sizeof *p);
    p->world_rank = w;
    p->tp_rank = w % s.tp;
    p->sp_rank = (w / s.tp) % s.sp;
    p->dp_rank = (w / (s.tp * s.sp)) % s.dp;
    p->pp_rank = w / (s.tp * s.sp * s.dp);
    loom_model_part part;
    int slots = 1;
    if (s.pp > 1) {
        const int v = t->pp_schedule ? (int)t->pp_virtual : 1;
        LOOM_CALL(loom_pipeline_partition(&rc->model, s.pp, v, p->pp_rank, &part, NULL));
        slots = loom_pipeline_schedule_slots(s.pp, p->pp_rank, (loom_pp_schedule)t->pp_schedule, v,
                                             (int)t->grad_accum);
    }
    loom_model *m = NULL;
    LOOM_CALL(loom_model_init_layout(&rc->model, s.pp > 1 ? &part : NULL, s.tp, p->tp_rank, &m));
    const int64_t n = loom_model_buffer_size(m);
    const int64_t S = (n + red - 1) / red, rr = p->dp_rank * s.sp + p->sp_rank;
    const int64_t lo = rr * S < n ? rr * S : n, hi = lo + S < n ? lo + S : n, slice = hi - lo;
    /* the memory budget: what zero.c would offload, and its placement */
    loom_zero_options zo;
    memset(&zo, 0, sizeof zo);
    zo.stage = (int)t->zero;
    zo.mem_budget = t->mem_budget;
    zo.tokens = B * T;
    zo.transport = (loom_dp_transport)t->dp_transport;
    zo.offload = t->offload;
    zo.mem_chunk = t->mem_chunk;
    zo.precision = (loom_precision)t->precision; /* stage 3's low-precision copy is part of the working set */
    zo.part = s.pp > 1 ? &part : NULL;
    if (s.tp > 1 && t->mem_budget > 0) {
        st = loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                            "the memory budget composes with data parallelism and ZeRO; not yet with tensor "
                            "or pipeline parallelism");
        loom_model_free(&m);
        return st;
    }
    loom_zero_budget zb;
    st = loom_zero_plan_budget(m, &rc->optim, &zo, red, (int)rr, &zb);
    if (st == LOOM_OK && zb.mask && zb.working_set > t->mem_budget)
        st = loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__, "memory budget %.1f MiB is below the "
                            "memory manager's working set of %.1f MiB", t->mem_budget / 1048576.0,
                            zb.working_set / 1048576.0);
    if (st != LOOM_OK) {
        loom_model_free(&m);
        return st;
    }
    const int stage = zb.stage, off_pg = zb.mask && stage >= 3;
    p->stage = stage;
    p->offload_mask = zb.mask;
    p->pinned_bytes = p->file_bytes = 0;
    for (int k = 0; k < LOOM_OFF_N_STREAMS; k++)
        if (zb.mask & (1 << k)) {
            p->pinned_bytes += zb.pinned[k];
            p->file_bytes += 4 * zb.store_floats - zb.pinned[k];
        }
    if (zb.mask) {
        const int64_t olo = stage == 0 ? 0 : lo;
        st = file_traffic(m, &zb, t->mem_budget, olo, olo + zb.store_floats, t->grad_accum,
                          rc->model.tie_embeddings && s.pp == 1, p);
        if (st != LOOM_OK) {
            loom_model_free(&m);
            return st;
        }
    }
    /* what stays in RAM (zero.c's own accounting), the chunks the memory manager pins, its update staging */
    loom_zero_ram_bytes(m, &zo, stage, red, slice, states, zb.mask != 0, zb.rs_unit_floats, p->bytes);
    if (off_pg) p->bytes[LOOM_MEM_PARAMS] += zb.pinned[LOOM_OFF_PARAMS];
    if (off_pg) p->bytes[LOOM_MEM_GRADS] += zb.pinned[LOOM_OFF_GRADS];
    p->bytes[LOOM_MEM_OPTIM] += zb.pinned[LOOM_OFF_M] + zb.pinned[LOOM_OFF_V];
    p->bytes[LOOM_MEM_WORKSPACE] += zb.staging_bytes;
    p->bytes[LOOM_MEM_ACTS] =
        loom_model_activation_bytes(m, B, T, t->recompute, slots, s.sp, t->tp_seq_parallel && s.tp > 1,
                                    (loom_precision)t->precision);
    /* low-precision copies of a product's two activation operands */
    p->bytes[LOOM_MEM_ACTS] +=
        loom_model_lowp_scratch_bytes(m, B, T, (loom_precision)t->precision, slots, t->tp_seq_parallel && s.tp > 1);
    loom_model_free(&m);
    return st;
}

loom_status loom_plan_memory_rank(const loom_run_config *rc, int world, int world_rank, loom_plan_rank *out) {
    loom_mesh_shape s;
    LOOM_CALL(mesh_of(&rc->train, world, &s));
    LOOM_CHECK(world_rank >= 0 && world_rank < world, LOOM_ERR_INVALID_ARG, "rank %d of %d", world_rank, world);
    return predict_rank(rc, s, world_rank, out);
}

loom_status loom_plan_memory(const loom_run_config *rc, int world, loom_plan_rank **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    loom_mesh_shape s;
    LOOM_CALL(mesh_of(&rc->train, world, &s));
    loom_plan_rank *r = calloc((size_t)world, sizeof *r);
    LOOM_CHECK(r != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    for (int w = 0; w < world && st == LOOM_OK; w++) st = predict_rank(rc, s, w, &r[w]);
    if (st != LOOM_OK) {
        free(r);
        return st;
    }
    *out = r;
    *n_out = world;
    return LOOM_OK;
}
