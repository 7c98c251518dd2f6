/* The trainer: one run's state and its well-defined step (include/loom/run.h).
 *
 * One optimizer step: grad_accum micro-batches (forward+backward, gradients written on the first and
 * added on the rest, no zeroing pass), then the optimizer (global-norm clip, schedule, update), then the
 * metrics line. Resume is bit-exact: the checkpoint holds the parameters, the optimizer state, the step
 * and the data sampler's generator, and every kernel is deterministic for a fixed thread count. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "loom/backend.h"
#include "loom/log.h"
#include "loom/progress.h"
#include "loom/supervise.h"

#include "run_impl.h"

static test_fault test_fault_parse(void) {
    test_fault f = {"", -1, 0};
    const char *e = getenv("LOOM_TEST_FAULT");
    long long n = 0;
    if (e && sscanf(e, "%15[a-z]@%d:%lld", f.point, &f.rank, &n) >= 2) f.n = n;
    else f.point[0] = '\0';
    return f;
}

/* The next micro-batch of this rank: its rows of the global batch, and with sp > 1 its block of positions. */
static loom_status next_batch(loom_trainer *tr, loom_split split) {
    const int64_t T = tr->rc->train.seq_len, B = tr->local_batch;
    if (tr->sp == 1) return loom_data_next(tr->data, split, B, T, tr->tokens, tr->targets);
    LOOM_CALL(loom_data_next(tr->data, split, B, T, tr->seq_tokens, tr->seq_targets));
    const int64_t t0 = (int64_t)tr->mesh.sp_rank * tr->T_local;
    for (int64_t b = 0; b < B; b++) {
        memcpy(tr->tokens + b * tr->T_local, tr->seq_tokens + b * T + t0, (size_t)tr->T_local * sizeof(int32_t));
        memcpy(tr->targets + b * tr->T_local, tr->seq_targets + b * T + t0, (size_t)tr->T_local * sizeof(int32_t));
    }
    return LOOM_OK;
}

/* this rank's targets with a loss in the current micro-batch */
static int64_t local_valid(const loom_trainer *tr) {
    int64_t k = 0;
    for (int64_t i = 0; i < tr->local_batch * tr->T_local; i++) k += tr->targets[i] >= 0;
    return k;
}

static loom_status evaluate(loom_trainer *tr, float *val_loss) {
    const loom_train_config *t = &tr->rc->train;
    loom_data_reset_val(tr->data);
    double s = 0.0;
    for (int64_t i = 0; i < t->eval_batches; i++) {
        float l;
        LOOM_CALL(next_batch(tr, LOOM_SPLIT_VAL));
        if (tr->pipe) {
            double dl = 0.0;
            LOOM_CALL(loom_pipeline_eval(tr->pipe, tr->model, tr->tokens, tr->targets, tr->local_batch, tr->T_local, &dl));
            l = (float)dl;
        } else {
            LOOM_CALL(loom_model_forward(tr->model, tr->tokens, tr->targets, tr->local_batch, tr->T_local, &l));
        }
        s += l;
    }
    if (tr->dp > 1) { /* equal shares: the global mean is the mean of the ranks' means */
        LOOM_CALL(loom_comm_allreduce_sum_f64(tr->red, &s, 1));
        s /= tr->dp;
    }
    *val_loss = (float)(s / (double)t->eval_batches);
    return LOOM_OK;
}

/* every rank's row (RANK_ROW), gathered on every rank (collective) */
static loom_status gather_rank_stats(loom_trainer *tr, int64_t *all) {
    int64_t mine[RANK_ROW];
    for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++) {
        mine[c] = tr->mem.current[c];
        mine[LOOM_MEM_N_CATEGORIES + c] = tr->mem.peak[c];
    }
    const loom_zero_stats zs = loom_zero_get_stats(tr->zero);
    mine[2 * LOOM_MEM_N_CATEGORIES] = (int64_t)(zs.comm_wait_s * 1e6);
    mine[2 * LOOM_MEM_N_CATEGORIES + 1] = (int64_t)(zs.comm_work_s * 1e6);
    if (tr->world_size == 1) {
        memcpy(all, mine, sizeof mine);
        return LOOM_OK;
    }
    return loom_comm_allgather_bytes(tr->world, mine, (int64_t)sizeof mine, all);
}

static void write_metrics_line(loom_trainer *tr, int64_t step, float loss, const loom_optim_stats *os, double tok_s,
                               double mfu, double ms, const int64_t *rank_mem) {
    if (!tr->metrics) return;
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    /* numbers through the JSON writer: a diverged run's NaN is written as null, keeping the line valid */
    loom_strbuf_printf(&sb, "{\"step\":%lld,\"loss\":", (long long)step);
    loom_json_write_number(&sb, (double)loss);
    loom_strbuf_printf(&sb, ",\"lr\":");
    loom_json_write_number(&sb, os->lr);
    loom_strbuf_printf(&sb, ",\"grad_norm\":");
    loom_json_write_number(&sb, os->grad_norm);
    if (tr->loss_scale > 0) loom_strbuf_printf(&sb, ",\"loss_scale\":%.17g", tr->step_scale);
    if (tr->loss_scale > 0 || os->skipped) loom_strbuf_printf(&sb, ",\"skipped\":%d", os->skipped ? 1 : 0);
    struct timeval tv;
    gettimeofday(&tv, NULL); /* when the step ended: `loom events` measures wall time with it */
    loom_strbuf_printf(&sb, ",\"time\":%.3f", (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec);
    loom_strbuf_printf(&sb, ",\"tokens_per_sec\":%.3f,\"mfu\":%.6f,\"ms\":%.3f,\"mem_peak_bytes\":%lld", tok_s, mfu,
                       ms, (long long)tr->mem.peak_total);
    for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++)
        loom_strbuf_printf(&sb, ",\"mem_peak_%s\":%lld", loom_mem_category_name((loom_mem_category)c),
                           (long long)tr->mem.peak[c]);
    /* data-parallel communication per step, averaged over the ranks: blocked waiting, and (node-shared
     * transport) this rank's cores summing and copying peers' bytes */
    double wait_us = 0, work_us = 0;
    for (int r = 0; r < tr->world_size; r++) {
        wait_us += (double)rank_mem[r * RANK_ROW + 2 * LOOM_MEM_N_CATEGORIES];
        work_us += (double)rank_mem[r * RANK_ROW + 2 * LOOM_MEM_N_CATEGORIES + 1];
    }
    loom_strbuf_printf(&sb, ",\"rss_peak_bytes\":%lld,\"world\":%d,\"comm_wait_ms\":%.3f,\"comm_work_ms\":%.3f",
                       (long long)loom_mem_process_peak_rss(), tr->world_size, wait_us / 1e3 / tr->world_size,
                       work_us / 1e3 / tr->world_size);
    loom_offload *off = loom_zero_offload(tr->zero);
    if (off) { /* the memory manager's file traffic this step (this rank), and what it keeps where */
        const loom_offload_stats now = loom_offload_get_stats(off);
        int64_t rd = 0, wr = 0;
        for (int i = 0; i < LOOM_OFF_N_STREAMS; i++) {
            rd += now.read_bytes[i] - tr->off_prev.read_bytes[i];
            wr += now.write_bytes[i] - tr->off_prev.write_bytes[i];
        }
        loom_strbuf_printf(&sb, ",\"offload_read_bytes\":%lld,\"offload_write_bytes\":%lld,\"offload_wait_ms\":%.3f,"
                                "\"offload_pinned_bytes\":%lld,\"offload_file_bytes\":%lld",
                           (long long)rd, (long long)wr, (now.wait_seconds - tr->off_prev.wait_seconds) * 1e3,
                           (long long)loom_offload_pinned_bytes(off), (long long)loom_offload_file_bytes(off));
        tr->off_prev = now;
    }
    if (tr->tp > 1) /* this step's tensor-parallel collectives (all-gather: this rank's part) */
        loom_strbuf_printf(&sb, ",\"tp\":%d,\"tp_allreduce_calls\":%lld,\"tp_allreduce_bytes\":%lld,"
                           "\"tp_allgather_calls\":%lld,\"tp_allgather_bytes\":%lld,\"tp_reduce_scatter_calls\":%lld,"
                           "\"tp_reduce_scatter_bytes\":%lld", tr->tp,
                           (long long)tr->tp_stats.calls[LOOM_COLL_ALLREDUCE],
                           (long long)tr->tp_stats.bytes[LOOM_COLL_ALLREDUCE],
                           (long long)tr->tp_stats.calls[LOOM_COLL_ALLGATHER],
                           (long long)tr->tp_stats.bytes[LOOM_COLL_ALLGATHER],
                           (long long)tr->tp_stats.calls[LOOM_COLL_REDUCE_SCATTER],
                           (long long)tr->tp_stats.bytes[LOOM_COLL_REDUCE_SCATTER]);
    if (tr->pp > 1) { /* each stage's idle share of the step (blocked receiving) beside the schedule's theory */
        loom_strbuf_printf(&sb, ",\"pp\":%d,\"pp_bubble_theory\":%.4f,\"pp_idle_fraction\":[", tr->pp,
                           loom_pipeline_bubble_theory(tr->pipe));
        for (int r = 0; r < tr->pp; r++) {
            const double idle = tr->pp_stats[2 * r], busy = tr->pp_stats[2 * r + 1];
            loom_strbuf_printf(&sb, "%s%.4f", r ? "," : "", idle + busy > 0 ? idle / (idle + busy) : 0.0);
        }
        loom_strbuf_printf(&sb, "]");
    }
    if (tr->dp > 1) /* this step's data-parallel collectives (MPI's; the node-shared transport's sums are not) */
        for (int k = LOOM_COLL_ALLREDUCE; k <= LOOM_COLL_ALLGATHER; k++) {
            static const char *const key[] = {"allreduce", "reduce_scatter", "allgather"};
            loom_strbuf_printf(&sb, ",\"dp_%s_calls\":%lld,\"dp_%s_bytes\":%lld", key[k], (long long)tr->dp_stats.calls[k],
                               key[k], (long long)tr->dp_stats.bytes[k]);
        }
    if (tr->dp_refill_floats)
        loom_strbuf_printf(&sb, ",\"dp_refill_floats\":%lld", (long long)tr->dp_refill_floats);
    if (tr->sp > 1)
        loom_strbuf_printf(&sb, ",\"sp\":%d,\"sp_send_calls\":%lld,\"sp_send_bytes\":%lld", tr->sp,
                           (long long)tr->sp_stats.calls[LOOM_COLL_SENDRECV],
                           (long long)tr->sp_stats.bytes[LOOM_COLL_SENDRECV]);
    /* per world rank, peak bytes by category [params, grads, optim, acts, workspace] */
    loom_strbuf_printf(&sb, ",\"mem_rank_peak_bytes\":[");
    for (int r = 0; r < tr->world_size; r++) {
        loom_strbuf_printf(&sb, "%s[", r ? "," : "");
        for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++)
            loom_strbuf_printf(&sb, "%s%lld", c ? "," : "",
                               (long long)rank_mem[r * RANK_ROW + LOOM_MEM_N_CATEGORIES + c]);
        loom_strbuf_printf(&sb, "]");
    }
    loom_strbuf_printf(&sb, "]}\n");
    if (!sb.failed) fputs(sb.buf, tr->metrics);
    fflush(tr->metrics);
    loom_strbuf_free(&sb);
}

/* 1 when the test hook asks this rank to fail at `point` (at step/allocation n, when the hook names one) */
static int test_fault_at(const loom_trainer *tr, const char *point, int64_t n) {
    return !strcmp(tr->fault.point, point) && tr->fault.rank == loom_comm_world_rank(tr->world) &&
           (tr->fault.n == 0 || tr->fault.n == n);
}

/* This rank's view of the training data, and the model's vocabulary fitted to it. Rank-local. */
static loom_status open_data(loom_trainer *tr) {
    const loom_run_config *rc = tr->rc;
    const loom_train_config *t = &rc->train;
    const int synthetic = strcmp(t->data, "synthetic") == 0;
    char path[LOOM_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s%s", t->data, test_fault_at(tr, "data", 0) ? ".fault-injected" : "");
    LOOM_CALL(loom_data_open(path, synthetic ? rc->model.vocab_size : 0, t->val_fraction, (uint64_t)t->seed,
                             &tr->data));
    /* A preset's vocabulary too small for the data's tokenizer grows to it (e.g. the demo preset on a GPT-2
     * dataset) unless the vocabulary was set explicitly; a larger one is kept (unused rows cost little). */
    tr->model_cfg = rc->model;
    const int64_t data_vocab = loom_data_vocab_size(tr->data);
    if (t->fit_vocab && data_vocab > tr->model_cfg.vocab_size) {
        LOOM_INFO("model.vocab_size %lld -> %lld to fit the data's tokenizer (%s)", (long long)tr->model_cfg.vocab_size,
                  (long long)data_vocab, loom_data_tokenizer(tr->data) ? loom_data_tokenizer(tr->data) : "?");
        tr->model_cfg.vocab_size = data_vocab;
    }
    LOOM_CALL(loom_data_check_vocab(tr->data, tr->model_cfg.vocab_size));
    LOOM_CHECK(!loom_data_has_loss_mask(tr->data) || tr->pp == 1, LOOM_ERR_UNSUPPORTED,
               "%s has a loss mask (instruction data): pipeline parallelism does not normalise it yet (use dp, tp, sp)",
               t->data);
    LOOM_CALL(loom_data_set_rank(tr->data, tr->mesh.dp_rank, tr->data_dp));
    return LOOM_OK;
}

static void trainer_free(loom_trainer *tr) { /* collective */
    if (tr->metrics) fclose(tr->metrics);
    free(tr->tokens);
    free(tr->targets);
    free(tr->seq_tokens);
    free(tr->seq_targets);
    loom_data_free(&tr->data);
    loom_zero_free(&tr->zero); /* the model and the optimizer */
    if (tr->mem_trace) fclose(tr->mem_trace);
    free(tr->rank_mem);
    loom_pipeline_free(&tr->pipe);
    loom_comm_free(&tr->embed);
    free(tr->mb_tokens);
    free(tr->mb_targets);
    free(tr->pp_stats);
    loom_comm_free(&tr->red_owned);
    if (tr->have_mesh) loom_mesh_free(&tr->mesh);
    loom_comm_free(&tr->world_owned);
    loom_backend_free(&tr->be);
}


/* The process mesh, its communicators and this rank's share of the batch (collective). */
static loom_status setup_mesh(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    loom_mesh_shape shape;
    LOOM_CALL(loom_mesh_shape_parse(t->mesh, &shape));
    /* dp left out of the mesh: every rank the other axes leave */
    if (!strstr(t->mesh, "dp=")) shape.dp = loom_comm_size(tr->world) / (shape.pp * shape.tp * shape.sp);
    LOOM_CHECK(shape.pp == 1 || t->zero <= 1, LOOM_ERR_UNSUPPORTED,
               "mesh '%s': pipeline parallelism composes with ZeRO stages 0 and 1 (got --zero %lld)", t->mesh,
               (long long)t->zero);
    LOOM_CHECK(t->seq_len % shape.sp == 0, LOOM_ERR_CONFIG, "train.seq_len %lld must divide evenly over sp=%d ranks",
               (long long)t->seq_len, shape.sp);
    LOOM_CALL(loom_mesh_init(tr->world, shape, &tr->mesh));
    tr->have_mesh = 1;
    tr->tp = shape.tp;
    tr->sp = shape.sp;
    tr->pp = shape.pp;
    tr->data_dp = shape.dp;
    tr->T_local = t->seq_len / shape.sp;
    /* gradients are summed over every rank that saw other tokens: data and sequence parallel alike */
    if (shape.sp > 1)
        LOOM_CALL(loom_comm_split(tr->world, tr->mesh.pp_rank * shape.tp + tr->mesh.tp_rank,
                                  tr->mesh.dp_rank * shape.sp + tr->mesh.sp_rank, "dp x sp", &tr->red_owned));
    tr->red = shape.sp > 1 ? tr->red_owned : tr->mesh.dp;
    tr->dp = loom_comm_size(tr->red);
    tr->dp_rank = loom_comm_rank(tr->red);
    LOOM_CHECK(t->batch % shape.dp == 0, LOOM_ERR_CONFIG,
               "train.batch %lld is the global micro-batch: it must divide evenly over dp=%d ranks", (long long)t->batch,
               shape.dp);
    tr->local_batch = t->batch / shape.dp;
    tr->world_size = loom_comm_size(tr->world);
    tr->rank_mem = calloc((size_t)tr->world_size * RANK_ROW, sizeof(int64_t));
    LOOM_CHECK(tr->rank_mem != NULL, LOOM_ERR_NOMEM, "out of memory");
    return LOOM_OK;
}

/* The pipeline's part of the model and its communicators (collective over the world). */
static loom_status setup_pipeline_part(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    LOOM_CALL(loom_pipeline_partition(&tr->model_cfg, tr->pp, t->pp_schedule ? (int)t->pp_virtual : 1,
                                      tr->mesh.pp_rank, &tr->part, NULL));
    /* the tied embedding's two copies: the first and the last stage of each pipeline */
    const int ends = tr->mesh.pp_rank == 0 || tr->mesh.pp_rank == tr->pp - 1;
    const int lane = (tr->mesh.dp_rank * tr->sp + tr->mesh.sp_rank) * tr->tp + tr->mesh.tp_rank;
    LOOM_CALL(loom_comm_split(tr->world, ends ? lane : loom_comm_size(tr->world) + loom_comm_rank(tr->world),
                              tr->mesh.pp_rank, "embedding", &tr->embed));
    tr->pp_stats = calloc((size_t)tr->pp * 2, sizeof(double));
    LOOM_CHECK(tr->pp_stats != NULL, LOOM_ERR_NOMEM, "out of memory");
    return LOOM_OK;
}

/* The model, its optimizer, their layout over the ranks (ZeRO), the pipeline schedule and activations
 * (collective). */
static loom_status setup_model(loom_trainer *tr) {
    const loom_run_config *rc = tr->rc;
    const loom_train_config *t = &rc->train;
    const char *off_dir = t->offload_dir[0] ? t->offload_dir : t->out;
    if (t->mem_budget > 0) { /* the memory manager's scratch files go there from the start */
        LOOM_CALL(loom_run_mkdir_p(off_dir));
        if (t->mem_trace[0] && tr->root) {
            tr->mem_trace = fopen(t->mem_trace, "w");
            LOOM_CHECK(tr->mem_trace != NULL, LOOM_ERR_IO, "cannot create %s: %s", t->mem_trace, strerror(errno));
        }
    }
    loom_lora_config lora = {0};
    if (t->lora[0]) LOOM_CALL(loom_lora_config_parse(t->lora, &lora));
    lora.base_bf16 = t->lora_base_dtype == 1;
    const loom_zero_options zo = {.stage = (int)t->zero, .overlap = t->dp_overlap, .transport = t->dp_transport,
                                  .tp = tr->mesh.tp, .part = tr->pp > 1 ? &tr->part : NULL, .sp = tr->mesh.sp,
                                  .parts = tr->pp > 1 ? tr->mesh.pp : NULL, .tp_seq_parallel = t->tp_seq_parallel,
                                  .precision = (loom_precision)t->precision, .mem_budget = t->mem_budget,
                                  .tokens = tr->local_batch * tr->T_local,
                                  .offload = t->offload, .mem_chunk = t->mem_chunk, .offload_dir = off_dir,
                                  .mem_trace = tr->mem_trace, .lora = lora};
    LOOM_CALL(loom_zero_init(&tr->model_cfg, &rc->optim, &zo, tr->red, tr->be, &tr->mem, &tr->zero));
    tr->model = loom_zero_model(tr->zero);
    tr->opt = loom_zero_optim(tr->zero);
    if (t->precision == LOOM_PRECISION_FP16) tr->loss_scale = t->loss_scale; /* a resumed run continues its own */
    int slots = 1;
    if (tr->pp > 1) {
        LOOM_CALL(loom_pipeline_init(tr->mesh.pp, rc->model.tie_embeddings ? tr->embed : NULL,
                                     (loom_pp_schedule)t->pp_schedule, (int)t->pp_virtual, (int)t->grad_accum,
                                     &tr->pipe));
        slots = loom_pipeline_slots(tr->pipe);
    }
    LOOM_CALL(loom_model_reserve_slots(tr->model, tr->local_batch, tr->T_local, t->recompute, slots));
    loom_optim_set_total_steps(tr->opt, t->steps);
    return LOOM_OK;
}

/* Host arrays of the step's tokens and targets (collective: none; rank-local). */
static loom_status setup_batches(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    const char *tk = loom_data_tokenizer(tr->data);
    if (tk) {
        char abs[PATH_MAX];
        if (strchr(tk, '/') && realpath(tk, abs)) tk = abs;
        snprintf(tr->tokenizer, sizeof tr->tokenizer, "%s", tk);
    }
    const int64_t local_BT = tr->local_batch * tr->T_local; /* this rank's rows (and positions) of a micro-batch */
    tr->tokens = malloc((size_t)local_BT * sizeof(int32_t));
    tr->targets = malloc((size_t)local_BT * sizeof(int32_t));
    LOOM_CHECK(tr->tokens && tr->targets, LOOM_ERR_NOMEM, "out of memory");
    if (tr->pp > 1) {
        tr->mb_tokens = malloc((size_t)(local_BT * t->grad_accum) * sizeof(int32_t));
        tr->mb_targets = malloc((size_t)(local_BT * t->grad_accum) * sizeof(int32_t));
        LOOM_CHECK(tr->mb_tokens && tr->mb_targets, LOOM_ERR_NOMEM, "out of memory");
    }
    if (tr->sp > 1) {
        tr->seq_tokens = malloc((size_t)(tr->local_batch * t->seq_len) * sizeof(int32_t));
        tr->seq_targets = malloc((size_t)(tr->local_batch * t->seq_len) * sizeof(int32_t));
        LOOM_CHECK(tr->seq_tokens && tr->seq_targets, LOOM_ERR_NOMEM, "out of memory");
    }
    return LOOM_OK;
}

/* The run directory: only once everything is validated; a fresh run moves an earlier checkpoint aside. */
static loom_status setup_run_dir(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    LOOM_CALL(loom_run_mkdir_p(t->out));
    if (!tr->resumed && tr->root) loom_run_ckpt_move_aside(t->out);
    if (!tr->resumed && tr->root && access(tr->ckpt_path, F_OK) == 0) {
        char prev[LOOM_PATH_MAX + 64];
        snprintf(prev, sizeof prev, "%s/checkpoint.prev.bin", t->out);
        LOOM_CHECK(rename(tr->ckpt_path, prev) == 0, LOOM_ERR_IO, "cannot move aside %s: %s", tr->ckpt_path,
                   strerror(errno));
        LOOM_WARN("%s already held a checkpoint; moved it to %s (use --resume to continue a run)", t->out, prev);
    }
    char mpath[LOOM_PATH_MAX + 32];
    if (t->metrics[0]) snprintf(mpath, sizeof mpath, "%s", t->metrics);
    else snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", t->out);
    if (tr->root) {
        tr->metrics = fopen(mpath, tr->resumed ? "a" : "w");
        LOOM_CHECK(tr->metrics != NULL, LOOM_ERR_IO, "cannot write metrics %s: %s", mpath, strerror(errno));
    }
    return LOOM_OK;
}

/* What the run is, said once by rank 0. */
static void describe(const loom_trainer *tr, double peak_gflops, const char *peak_kernel) {
    const loom_run_config *rc = tr->rc;
    const loom_train_config *t = &rc->train;
    const loom_lora_config *lora = loom_model_lora(tr->model);
    LOOM_INFO("model %s (%s): %.2fM parameters, %.3f GFLOP/token; data %s", rc->preset,
              loom_family_name(tr->model_cfg.family),
              (double)(lora ? loom_model_config_num_params(&tr->model_cfg) : loom_model_num_params(tr->model)) / 1e6,
              tr->flops_per_token / 1e9, loom_data_describe(tr->data));
    if (lora)
        LOOM_INFO("LoRA r %d, alpha %g (scale %g), dropout %g, targets %s%s%s%s: %.3fM trainable parameters over %.2fM "
                  "frozen ones (no gradient, no optimizer state; the model FLOPs count no weight-gradient products for them)",
                  lora->r, lora->alpha, lora->alpha / (lora->rslora ? sqrt(lora->r) : lora->r), lora->dropout,
                  lora->targets & LOOM_LORA_QKV ? "qkv " : "", lora->targets & LOOM_LORA_PROJ ? "proj " : "",
                  lora->targets & LOOM_LORA_FC ? "fc " : "", lora->targets & LOOM_LORA_DOWN ? "down " : "",
                  (double)loom_model_num_params(tr->model) / 1e6, (double)loom_model_config_num_params(&tr->model_cfg) / 1e6);
    LOOM_INFO("batch %lld x %lld x %lld accum = %lld tokens/step; %s %s; %d threads on %s; GEMM %s; MFU against a "
              "peak of %.1f GFLOP/s per rank (%s)",
              (long long)t->batch, (long long)t->seq_len, (long long)t->grad_accum, (long long)tr->tokens_per_step,
              loom_optim_kind_name(rc->optim.kind), t->recompute == LOOM_RECOMPUTE_NONE ? "" : "recompute",
              loom_backend_threads(tr->be), loom_backend_name(tr->be), loom_backend_gemm_kernel(tr->be), peak_gflops,
              peak_kernel ? peak_kernel : "unmeasured");
    if (tr->dp > 1)
        LOOM_INFO("data parallel: %d ranks (reductions through %s), ZeRO-%lld, %lld sequences per rank per "
                  "micro-step, gradient reduction %s; this rank holds params %.1f, grads %.1f, optim %.1f MiB",
                  tr->dp, loom_zero_transport_name(tr->zero), (long long)t->zero, (long long)tr->local_batch,
                  t->dp_overlap ? "overlapped with the backward pass" : "after the backward pass",
                  tr->mem.current[LOOM_MEM_PARAMS] / 1048576.0, tr->mem.current[LOOM_MEM_GRADS] / 1048576.0,
                  tr->mem.current[LOOM_MEM_OPTIM] / 1048576.0);
    if (tr->pp > 1) {
        LOOM_INFO("pipeline: %d stages, %s schedule, %d chunk(s) per stage, %lld micro-batches per step; this stage "
                  "holds blocks%s%s, %.2fM parameters, activations for %d micro-batches in flight; bubble in theory "
                  "%.1f%%", tr->pp, t->pp_schedule ? "interleaved" : "1F1B", tr->part.n_chunks, (long long)t->grad_accum,
                  tr->part.first ? " (+ embedding)" : "", tr->part.last ? " (+ head)" : "",
                  (double)loom_model_num_params(tr->model) / 1e6, loom_pipeline_slots(tr->pipe),
                  100 * loom_pipeline_bubble_theory(tr->pipe));
        for (int k = 0; k < tr->part.n_chunks; k++)
            LOOM_INFO("  stage 0 chunk %d: blocks [%lld, %lld)", k, (long long)tr->part.layer_lo[k],
                      (long long)tr->part.layer_hi[k]);
    }
    if (tr->tp > 1)
        LOOM_INFO("tensor parallel: %d ranks per layer (heads, MLP hidden and vocabulary cut; 2 all-reduces of %lld "
                  "floats per block per pass); this rank holds %.2fM of %.2fM parameters", tr->tp,
                  (long long)(tr->local_batch * t->seq_len * tr->model_cfg.d_model),
                  (double)loom_model_num_params(tr->model) / 1e6,
                  (double)loom_model_config_num_params(&tr->model_cfg) / 1e6);
    if (t->precision == LOOM_PRECISION_BF16)
        LOOM_INFO("precision bf16: weight products in bf16 (%s), fp32 accumulation, master weights, gradients and "
                  "optimizer state; MFU against the measured bf16 peak", loom_backend_bf16_kernel(tr->be));
    if (t->precision == LOOM_PRECISION_FP16)
        LOOM_INFO("precision fp16: weight products on fp16 values with fp32 accumulation (fp32 units: this CPU has "
                  "no fp16 arithmetic), fp32 master state; dynamic loss scale from %g, doubled after %lld good steps, "
                  "halved with the step skipped on overflow", tr->loss_scale, (long long)t->loss_scale_window);
}

/* After an error: everything freed (collective), or with `collective` 0 only the files closed (an error of
 * this rank alone: its peers may wait for it in a collective, and the caller ends the job). */
static void trainer_release(loom_trainer *tr, int collective) {
    if (tr->async.running) { /* a background checkpoint that will not be committed: its copy ends first */
        pthread_join(tr->async.thread, NULL);
        tr->async.running = 0;
        free(tr->async.manifest);
        tr->async.manifest = NULL;
    }
    if (!collective) {
        if (tr->metrics) fclose(tr->metrics);
        if (tr->mem_trace) fclose(tr->mem_trace);
        return; /* scratch files were unlinked at creation; the process is about to end */
    }
    trainer_free(tr);
    free(tr);
}

loom_status loom_trainer_init(const loom_run_config *rc, loom_comm *world, double peak_gflops, const char *peak_kernel,
                              loom_trainer **out) {
    *out = NULL;
    LOOM_CALL(loom_run_config_validate(rc));
    const loom_train_config *t = &rc->train;
    loom_trainer *tr = calloc(1, sizeof *tr);
    LOOM_CHECK(tr != NULL, LOOM_ERR_NOMEM, "out of memory");
    tr->rc = rc;
    loom_mem_init(&tr->mem);
    loom_status st;
    loom_backend_config bc = loom_backend_config_default();
    bc.device = t->device;
    bc.threads = (int)t->threads;
    bc.blas_coretype = t->blas_coretype;
    tr->world = world;
    if (!tr->world) LOOM_CALL_GOTO(st, loom_comm_init_world(&tr->world_owned), fail);
    if (!tr->world) tr->world = tr->world_owned;
    tr->fault = test_fault_parse();
    if (test_fault_at(tr, "oom", tr->fault.n)) tr->mem.fail_after = tr->fault.n;
    LOOM_CALL_GOTO(st, loom_backend_init(&bc, &tr->be), fail);
    loom_comm_set_timeout(tr->world, t->comm_timeout);
    loom_comm_set_interrupt(tr->world, loom_run_stop_flag());
    loom_comm_set_backend(tr->world, tr->be); /* every axis split from it stages this backend's buffers if need be */
    tr->root = loom_comm_rank(tr->world) == 0;
    if (!tr->root && loom_log_get_level() > LOOM_LOG_WARN) loom_log_set_level(LOOM_LOG_WARN); /* rank 0 reports */
    LOOM_CALL_GOTO(st, setup_mesh(tr), fail);
    /* every rank opens the data itself (a file one rank cannot read): they agree before the next collective */
    LOOM_CALL_GOTO(st, loom_comm_agree(tr->world, open_data(tr), "opening the data"), fail);
    if (tr->pp > 1) LOOM_CALL_GOTO(st, setup_pipeline_part(tr), fail);
    LOOM_CALL_GOTO(st, setup_model(tr), fail);
    LOOM_CALL_GOTO(st, setup_batches(tr), fail);
    snprintf(tr->ckpt_path, sizeof tr->ckpt_path, "%s/checkpoint.bin", t->out);
    /* the run directory exists before the snapshot directory's name is derived from its absolute path (an
     * explicit resume needs it to exist already) */
    if (!t->resume)
        LOOM_CALL_GOTO(st, loom_comm_agree(tr->world, loom_run_mkdir_p(t->out), "creating the run directory"), fail);
    loom_trainer_snapshot_dir(tr, tr->snap_dir, sizeof tr->snap_dir);
    tr->snap_step = -1;
    loom_progress_mark(0, "init");
    tr->resumed = t->resume || t->resume_from[0];
    if (loom_model_lora(tr->model)) /* LoRA: the frozen base first, on a new run and a resumed one alike */
        LOOM_CALL_GOTO(st, loom_comm_agree(tr->world, loom_trainer_load_frozen(tr), "loading the frozen weights"), fail);
    if (tr->resumed) { /* every rank reads its own ranges: all of them resume, or none */
        LOOM_CALL_GOTO(st, loom_comm_agree(tr->world, loom_trainer_ckpt_load(tr, &tr->step), "resuming"), fail);
        LOOM_INFO("resumed from %s at step %lld", t->resume_from[0] ? t->resume_from : t->out, (long long)tr->step);
    } else if (t->resume_if_any) { /* a supervisor's restart: the newest intact snapshot or checkpoint, or none */
        int found = 0;
        LOOM_CALL_GOTO(st, loom_trainer_ckpt_resume_auto(tr, &tr->step, &found), fail);
        tr->resumed = found;
    }
    if (!tr->resumed) {
        if (t->init_from[0] && !loom_model_lora(tr->model)) /* every rank reads its own ranges of the weights, or none does */
            LOOM_CALL_GOTO(st, loom_comm_agree(tr->world, loom_trainer_ckpt_init(tr), "loading the initial weights"), fail);
        else
            LOOM_CALL_GOTO(st, loom_zero_init_weights(tr->zero, (uint64_t)t->seed), fail);
        loom_trainer_snapshot_clear(tr); /* an earlier run's snapshots of this directory are not this run's */
    }
    loom_progress_mark(tr->step, "init");
    /* a non-finite gradient norm skips the step (fp16's overflows did already) */
    loom_optim_set_skip_nonfinite(tr->opt, 1);
    LOOM_CALL_GOTO(st, loom_model_refresh_low_precision(tr->model), fail); /* bf16: the working copy of the weights */
    LOOM_CALL_GOTO(st, setup_run_dir(tr), fail);
    tr->flops_per_token = loom_model_train_flops_per_token(tr->model, t->seq_len);
    tr->tokens_per_step = t->batch * t->seq_len * t->grad_accum;
    /* every rank's share of the machine(s), in the run's precision: the host's peak comes measured in it (`loom
     * bench peak`); a GPU's is measured on it here */
    char device_kernel[200];
    if (peak_gflops < 0 && loom_backend_has_own_peak(tr->be)) {
        const int bf16 = t->precision == LOOM_PRECISION_BF16;
        LOOM_CALL_GOTO(st, loom_backend_measure_gemm_peak(tr->be, 4096, bf16, &peak_gflops), fail);
        snprintf(device_kernel, sizeof device_kernel, "%s %s GEMM 4096^3 measured on the device",
                 loom_backend_name(tr->be), bf16 ? "bf16" : "fp32");
        peak_kernel = device_kernel;
    }
    if (peak_gflops < 0) peak_gflops = 0; /* unmeasured: no MFU */
    tr->peak_gflops = peak_gflops;
    tr->world_peak = peak_gflops * loom_comm_size(tr->world);
    describe(tr, peak_gflops, peak_kernel);
    if (t->profile) loom_backend_set_profiling(tr->be, 1);
    *out = tr;
    return LOOM_OK;
fail:
    trainer_release(tr, loom_comm_size(tr->world) == 1 || loom_error_is_collective());
    return st;
}

void loom_trainer_free(loom_trainer **ptr, int collective) {
    if (!ptr || !*ptr) return;
    trainer_release(*ptr, collective);
    *ptr = NULL;
}

/* rank 0: one line of <out>/events.jsonl (a failure to write it is worth a warning, not the run) */
static void trainer_event(const loom_trainer *tr, const char *name, const char *fields) {
    if (tr->root && loom_event_append(tr->rc->train.out, name, fields) != LOOM_OK) LOOM_WARN("%s", loom_error_message());
}

/* A step that trains nothing (train.skip_steps, or after a rollback): its micro-batches are drawn as a trained
 * step draws them, so the data that follows is the same, and the step counts (the schedule moves on). */
static loom_status skip_step(loom_trainer *tr, loom_step_result *res, const char *why) {
    const loom_train_config *t = &tr->rc->train;
    const double t0 = loom_run_now();
    for (int64_t micro = 0; micro < t->grad_accum; micro++) LOOM_CALL(next_batch(tr, LOOM_SPLIT_TRAIN));
    loom_step_result r;
    memset(&r, 0, sizeof r);
    r.step = ++tr->step;
    r.loss = NAN;
    r.optim.lr = loom_optim_lr(&tr->rc->optim, r.step - 1, t->steps);
    r.optim.grad_norm = NAN;
    r.optim.skipped = 1;
    r.seconds = loom_run_now() - t0;
    r.skipped_untrained = 1;
    write_metrics_line(tr, r.step, r.loss, &r.optim, 0.0, 0.0, r.seconds * 1e3, tr->rank_mem);
    if (tr->root && (r.step == tr->skip_until || !strcmp(why, "skip_steps")))
        LOOM_INFO("step %lld: skipped, untrained (%s)", (long long)r.step, why);
    loom_progress_mark(tr->step, "step");
    if (res) *res = r;
    return LOOM_OK;
}

/* How far a step's loss lies above the window's mean, in its standard deviations (at least 1% of the mean:
 * a flat window makes no spike of noise); 0 until the window holds 8 steps. */
static double spike_zscore(const loom_trainer *tr, double loss) {
    if (tr->window_n < 8 || !isfinite(loss)) return 0;
    double mean = 0, var = 0;
    for (int i = 0; i < tr->window_n; i++) mean += tr->window[i];
    mean /= tr->window_n;
    for (int i = 0; i < tr->window_n; i++) var += (tr->window[i] - mean) * (tr->window[i] - mean);
    const double sd = sqrt(var / tr->window_n), floor_sd = 0.01 * fabs(mean) + 1e-12;
    return (loss - mean) / (sd > floor_sd ? sd : floor_sd);
}

static void window_push(loom_trainer *tr, float loss) {
    const int w = (int)tr->rc->train.spike_window;
    tr->window[tr->window_pos] = loss;
    tr->window_pos = (tr->window_pos + 1) % w;
    if (tr->window_n < w) tr->window_n++;
}

/* A loss spike at `step`: back to the newest checkpoint (snapshot or disk) before it, and the steps since
 * then skipped, their data with them (PaLM's remedy); a run that skips those steps from the start
 * (train.skip_steps) trains to the same weights. */
static loom_status rollback(loom_trainer *tr, int64_t step, double loss, double z, loom_step_result *r) {
    LOOM_CALL(loom_trainer_ckpt_poll(tr, 1)); /* a background checkpoint is committed before the state moves */
    int64_t to = 0;
    int found = 0;
    LOOM_CALL(loom_trainer_ckpt_rollback(tr, step, &to, &found));
    char fields[256];
    if (!found) {
        if (tr->root) LOOM_WARN("step %lld: loss %.4f is a spike (z-score %.1f) but no snapshot or checkpoint before it "
                                "to roll back to (train.snapshot_interval); training on", (long long)step, loss, z);
        snprintf(fields, sizeof fields, "\"step\":%lld,\"loss\":%.6f,\"zscore\":%.3f,\"window\":%d,\"action\":\"none\"",
                 (long long)step, loss, z, tr->window_n);
        trainer_event(tr, "spike", fields);
        return LOOM_OK;
    }
    snprintf(fields, sizeof fields, "\"step\":%lld,\"loss\":%.6f,\"zscore\":%.3f,\"window\":%d,\"rolled_back_to\":%lld",
             (long long)step, loss, z, tr->window_n, (long long)to);
    tr->step = to;
    tr->skip_until = step;
    LOOM_CALL(loom_model_refresh_low_precision(tr->model));
    if (tr->root) LOOM_WARN("step %lld: loss %.4f is a spike (z-score %.1f): rolled back to step %lld; the data of steps "
                            "%lld-%lld is skipped", (long long)step, loss, z, (long long)to, (long long)to + 1,
                            (long long)step);
    trainer_event(tr, "spike", fields);
    r->rolled_back = 1;
    return LOOM_OK;
}

/* LOOM_TEST_FAULT=spike@R:N: rank R's targets of step N become noise (a bad batch); deterministic */
static void spike_targets(loom_trainer *tr, int64_t step) {
    const int64_t n = tr->local_batch * tr->T_local;
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)step;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tr->targets[i] = (int32_t)(x % (uint64_t)tr->model_cfg.vocab_size);
    }
}

loom_status loom_trainer_step(loom_trainer *tr, loom_step_result *res) {
    const loom_train_config *t = &tr->rc->train;
    const int64_t n = tr->step + 1;
    if (n <= tr->skip_until) return skip_step(tr, res, "rolled back past a loss spike");
    if (loom_run_skip_steps_has(t->skip_steps, n)) return skip_step(tr, res, "train.skip_steps");
    const double t0 = loom_run_now();
    const int64_t local_BT = tr->local_batch * tr->T_local;
    double lsum = 0.0;
    /* the loss's gradient is scaled (fp16), the optimizer divides the scale out */
    tr->step_scale = tr->loss_scale;
    float grad_scale = (float)((tr->loss_scale > 0 ? tr->loss_scale : 1.0) / (double)tr->tokens_per_step);
    if (test_fault_at(tr, "nan", n)) grad_scale = NAN; /* the test hook: this rank's gradients become NaN */
    const int spike = test_fault_at(tr, "spike", n);
    loom_optim_set_loss_scale(tr->opt, tr->loss_scale);
    loom_zero_reset_stats(tr->zero);
    loom_comm_reset_stats(tr->mesh.tp);
    loom_comm_reset_stats(tr->mesh.sp);
    loom_comm_reset_stats(tr->red);
    for (int64_t micro = 0; tr->pipe && micro < t->grad_accum; micro++) { /* the step's micro-batches */
        LOOM_CALL(next_batch(tr, LOOM_SPLIT_TRAIN));
        if (spike) spike_targets(tr, n);
        memcpy(tr->mb_tokens + micro * local_BT, tr->tokens, (size_t)local_BT * sizeof(int32_t));
        memcpy(tr->mb_targets + micro * local_BT, tr->targets, (size_t)local_BT * sizeof(int32_t));
    }
    if (tr->pipe) {
        LOOM_CALL(loom_pipeline_train_step(tr->pipe, tr->model, tr->zero, tr->mb_tokens, tr->mb_targets, tr->local_batch,
                                           tr->T_local, grad_scale, &lsum));
        const loom_pipeline_stats ps = loom_pipeline_get_stats(tr->pipe);
        double mine[2] = {ps.idle_s, ps.busy_s};
        LOOM_CALL(loom_comm_allgather_bytes(tr->mesh.pp, mine, (int64_t)sizeof mine, tr->pp_stats));
    }
    loom_model_lora_seek(tr->model, (uint64_t)tr->step * (uint64_t)t->grad_accum); /* dropout: the step's masks */
    for (int64_t micro = 0; !tr->pipe && micro < t->grad_accum; micro++) {
        float l;
        LOOM_CALL(next_batch(tr, LOOM_SPLIT_TRAIN));
        if (spike) spike_targets(tr, n);
        /* a loss mask (instruction data): the micro-batch's mean over its targets with a loss, those of the whole
         * global batch (every rank counts the same), the micro-batches weighted alike; without one this is the
         * step's token count */
        const int64_t valid = loom_data_last_valid(tr->data), mine = local_valid(tr);
        const float scale = valid ? (float)((double)grad_scale * (double)tr->tokens_per_step /
                                            ((double)valid * (double)t->grad_accum)) : grad_scale;
        loom_zero_begin_micro(tr->zero, micro, micro == t->grad_accum - 1);
        LOOM_CALL(loom_model_forward_backward(tr->model, tr->tokens, tr->targets, tr->local_batch, tr->T_local,
                                              scale, loom_zero_accumulate(tr->zero, micro), &l));
        LOOM_CALL(loom_zero_end_micro(tr->zero));
        /* the global micro-batch's mean: this rank's share of it, times the ranks (their mean is taken below) */
        lsum += valid ? (double)l * (double)mine * (double)tr->dp / (double)valid : 0.0;
    }
    /* the test hook: a rank that never reaches the collective (in the first attempt of a supervised job) */
    const char *attempt = getenv("LOOM_SUPERVISOR_ATTEMPT");
    while (test_fault_at(tr, "hang", n) && (!attempt || !strcmp(attempt, "0"))) sleep(1);
    LOOM_CHECK(!test_fault_at(tr, "step", tr->step + 1), LOOM_ERR_INTERNAL,
               "an error in the middle of step %lld (injected by LOOM_TEST_FAULT)", (long long)tr->step + 1);
    loom_optim_stats os = {0};
    LOOM_CALL(loom_zero_step(tr->zero, tr->step, &os));
    tr->skipped = tr->loss_scale > 0 && os.skipped;
    if (os.skipped && tr->loss_scale <= 0) { /* a non-finite gradient norm (every rank sees the same) */
        tr->bad_steps++;
        char fields[128];
        snprintf(fields, sizeof fields, "\"step\":%lld,\"action\":\"skipped\",\"in_a_row\":%lld", (long long)n,
                 (long long)tr->bad_in_row + 1);
        trainer_event(tr, "bad_step", fields);
        if (tr->root) LOOM_WARN("step %lld: the gradient norm is not finite; update skipped", (long long)n);
        if (++tr->bad_in_row >= t->max_bad_steps) {
            const loom_status st = loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__,
                                                  "the loss diverged: %lld steps in a row with a non-finite gradient "
                                                  "norm (train.max_bad_steps)", (long long)tr->bad_in_row);
            loom_error_mark_collective();
            return st;
        }
    } else if (!os.skipped) {
        tr->bad_in_row = 0;
    }
    if (tr->skipped) { /* an overflow: the step did nothing; a smaller scale */
        tr->loss_scale *= 0.5;
        tr->loss_scale_good = 0;
        if (tr->root) LOOM_INFO("step %lld: gradients overflowed in fp16, step skipped, loss scale now %g",
                                (long long)tr->step + 1, tr->loss_scale);
    } else if (tr->loss_scale > 0 && ++tr->loss_scale_good >= t->loss_scale_window) {
        tr->loss_scale *= 2.0;
        tr->loss_scale_good = 0;
    }
    if (!os.bf16_written) LOOM_CALL(loom_model_refresh_low_precision(tr->model));
    tr->tp_stats = loom_comm_get_stats(tr->mesh.tp); /* this step's tensor-parallel traffic, before any eval */
    tr->sp_stats = loom_comm_get_stats(tr->mesh.sp);
    tr->dp_stats = loom_comm_get_stats(tr->red);
    tr->dp_refill_floats = loom_zero_get_stats(tr->zero).refill_floats;
    if (tr->dp > 1) { /* the global batch's mean loss: equal shares, so the mean of the ranks' means */
        LOOM_CALL(loom_comm_allreduce_sum_f64(tr->red, &lsum, 1));
        lsum /= tr->dp;
    }
    tr->step++;
    loom_step_result r;
    memset(&r, 0, sizeof r);
    r.step = tr->step;
    r.loss = (float)(lsum / (double)t->grad_accum);
    r.optim = os;
    r.seconds = loom_run_now() - t0;
    r.tokens_per_sec = (double)tr->tokens_per_step / r.seconds;
    r.mfu = tr->world_peak > 0 ? tr->flops_per_token * r.tokens_per_sec / (tr->world_peak * 1e9) : 0.0;
    if (r.mfu > 1.0 && !tr->mfu_over_said) { /* the model FLOPs alone cannot outrun the best GEMM */
        tr->mfu_over_said = 1;
        LOOM_WARN("MFU %.1f%%: the peak it is against (%.1f GFLOP/s per rank) is below this run's own rate; it was "
                  "measured in a slower moment or on another machine: `loom bench peak --reset` measures it again",
                  100.0 * r.mfu, tr->world_peak / loom_comm_size(tr->world));
    }
    LOOM_CALL(gather_rank_stats(tr, tr->rank_mem));
    write_metrics_line(tr, r.step, r.loss, &os, r.tokens_per_sec, r.mfu, r.seconds * 1e3, tr->rank_mem);
    if (loom_zero_offload(tr->zero)) loom_offload_trace_step(loom_zero_offload(tr->zero), r.step, &tr->mem);
    loom_progress_mark(tr->step, "step");
    if (t->spike_zscore > 0 && !os.skipped && isfinite(r.loss)) { /* the same loss on every rank: one decision */
        const double z = spike_zscore(tr, r.loss);
        if (z > t->spike_zscore) LOOM_CALL(rollback(tr, r.step, r.loss, z, &r));
        else window_push(tr, r.loss);
    }
    if (res) *res = r;
    return LOOM_OK;
}

loom_status loom_trainer_eval(loom_trainer *tr, float *val_loss) {
    const int profiling = tr->rc->train.profile;
    loom_backend_set_profiling(tr->be, 0); /* the profile covers training steps only */
    loom_status st = evaluate(tr, val_loss);
    loom_backend_set_profiling(tr->be, profiling);
    LOOM_CALL(st);
    if (tr->metrics) {
        loom_strbuf vb;
        loom_strbuf_init(&vb);
        loom_strbuf_printf(&vb, "{\"step\":%lld,\"val_loss\":", (long long)tr->step);
        loom_json_write_number(&vb, (double)*val_loss);
        loom_strbuf_printf(&vb, "}\n");
        if (!vb.failed) fputs(vb.buf, tr->metrics);
        loom_strbuf_free(&vb);
        fflush(tr->metrics);
    }
    return LOOM_OK;
}

loom_status loom_trainer_save(loom_trainer *tr) {
    loom_progress_mark(tr->step, "checkpoint");
    LOOM_CALL(loom_trainer_ckpt_save(tr, tr->step));
    loom_progress_mark(tr->step, "step");
    LOOM_DEBUG("checkpoint %s at step %lld", tr->ckpt_path, (long long)tr->step);
    return LOOM_OK;
}

int64_t loom_trainer_steps_done(const loom_trainer *tr) { return tr->step; }
loom_comm *loom_trainer_world(const loom_trainer *tr) { return tr->world; }
loom_model *loom_trainer_model(const loom_trainer *tr) { return tr->model; }
