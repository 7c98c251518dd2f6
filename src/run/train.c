/* The training driver: set-up, the step loop, validation, checkpoints, metrics and progress.
 *
 * One optimizer step: grad_accum micro-batches (forward+backward, gradients written on the first and
 * added on the rest, no zeroing pass), then the optimizer (global-norm clip, schedule, update), then the
 * metrics line. Resume is bit-exact: the checkpoint holds the parameters, the optimizer state, the step
 * and the data sampler's generator, and every kernel is deterministic for a fixed thread count. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/backend.h"
#include "loom/ckpt.h"
#include "loom/comm.h"
#include "loom/data.h"
#include "loom/generate.h"
#include "loom/log.h"
#include "loom/parallel.h"
#include "loom/run.h"

/* The one process-wide flag: a signal handler can only reach a global. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

void loom_train_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static loom_status mkdir_p(const char *path) {
    char buf[LOOM_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    LOOM_CHECK(mkdir(buf, 0755) == 0 || errno == EEXIST, LOOM_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    return LOOM_OK;
}

typedef struct {
    int64_t step;               /* optimizer steps completed */
    loom_data_state data;
    int32_t optim_kind;
    int32_t reserved;
    double loss_scale;          /* fp16: the dynamic loss scale (0 in older checkpoints: start afresh) */
    int64_t loss_scale_good;    /* good steps since it last changed */
} train_state; /* the "state" section, binary (older, shorter ones read with the new fields zero) */

/* A test hook, never set by a user: LOOM_TEST_FAULT=POINT@RANK[:N] makes world rank RANK fail at POINT:
 * "data" (its data file cannot be read), "step" (an error in the middle of step N, after its backward and
 * before the optimizer's reductions) or "oom" (its N-th allocation from the start of set-up fails). The tests
 * of errors on one rank of many (tests/test_dist.py errors) use it. */
typedef struct {
    char point[16];
    int rank;
    int64_t n;
} test_fault;

static test_fault test_fault_parse(void) {
    test_fault f = {"", -1, 0};
    const char *e = getenv("LOOM_TEST_FAULT");
    long long n = 0;
    if (e && sscanf(e, "%15[a-z]@%d:%lld", f.point, &f.rank, &n) >= 2) f.n = n;
    else f.point[0] = '\0';
    return f;
}

typedef struct {
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
} trainer;

/* Tensor parallel checkpoints hold the one-rank layout: each rank scatters its dp slice [begin, end) of a
 * buffer to the one-rank positions (parameters replicated over tp from tp rank 0 only), and a sum over the
 * world, where every position has exactly one contributor, assembles the whole (collective). */
static loom_status canonical_gather(trainer *tr, const float *slice, int64_t begin, int64_t end, float *canon) {
    const int64_t nc = loom_model_canonical_size(tr->model);
    const int tp_rank = tr->mesh.tp_rank;
    memset(canon, 0, (size_t)nc * sizeof(float));
    for (int i = 0; i < loom_model_num_param_infos(tr->model); i++) {
        const loom_param_info *p = loom_model_param_info(tr->model, i);
        if ((p->tp_split == LOOM_TP_REPLICATED && tp_rank != 0) || p->tied_copy) continue;
        const int64_t lo = p->offset > begin ? p->offset : begin;
        const int64_t hi = p->offset + p->numel < end ? p->offset + p->numel : end;
        for (int64_t j = lo; j < hi; j++)
            canon[p->canon_offset + loom_model_tp_element(tr->model, i, j - p->offset)] = slice[j - begin];
    }
    return loom_comm_allreduce_sum_f32(tr->world, canon, nc);
}

typedef struct {
    loom_zero *z;
    int which;
} slice_fill;
static loom_status fill_slice(void *ctx, int64_t off, int64_t n, void *dst) {
    const slice_fill *f = ctx;
    return loom_zero_read_slice(f->z, f->which, off / 4, (off + n) / 4, dst);
}

static loom_status save_checkpoint(trainer *tr, int64_t step) {
    const loom_run_config *rc = tr->rc;
    loom_strbuf meta;
    loom_strbuf_init(&meta);
    loom_strbuf_printf(&meta, "{\"format\":\"loom.train\",\"version\":1,\"preset\":");
    loom_json_write_string(&meta, rc->preset);
    loom_strbuf_printf(&meta, ",\"step\":%lld,\"optimizer\":\"%s\",\"threads\":%d,\"world\":%d,\"zero\":%d,"
                       "\"mesh\":{\"dp\":%d,\"tp\":%d,\"sp\":%d},", (long long)step, loom_optim_kind_name(rc->optim.kind),
                       loom_backend_threads(tr->be), tr->tp > 1 || tr->pp > 1 ? 1 : tr->dp, loom_zero_stage(tr->zero),
                       tr->data_dp, tr->tp, tr->sp);
    if (tr->tokenizer[0]) { /* what generation decodes with */
        loom_strbuf_printf(&meta, "\"tokenizer\":");
        loom_json_write_string(&meta, tr->tokenizer);
        loom_strbuf_printf(&meta, ",");
    }
    loom_strbuf_printf(&meta, "\"model\":");
    loom_model_config_to_json(&tr->model_cfg, &meta);
    loom_strbuf_printf(&meta, ",\"params\":["); /* the one-rank layout, which the sections hold */
    for (int i = 0; i < loom_model_num_param_infos(tr->model); i++) {
        const loom_param_info *p = loom_model_param_info(tr->model, i);
        loom_strbuf_printf(&meta, "%s{\"name\":\"%s\",\"offset\":%lld,\"shape\":[%lld", i ? "," : "", p->name,
                           (long long)p->canon_offset, (long long)p->full_shape[0]);
        if (p->ndim > 1) loom_strbuf_printf(&meta, ",%lld", (long long)p->full_shape[1]);
        loom_strbuf_printf(&meta, "]}");
    }
    loom_strbuf_printf(&meta, "]}");
    if (meta.failed) {
        loom_strbuf_free(&meta);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    train_state ts;
    memset(&ts, 0, sizeof ts);
    ts.step = step;
    ts.data = loom_data_get_state(tr->data);
    ts.optim_kind = (int32_t)rc->optim.kind;
    ts.loss_scale = tr->loss_scale;
    ts.loss_scale_good = tr->loss_scale_good;
    int64_t begin, end;
    loom_zero_slice(tr->zero, &begin, &end);
    float *slices[3];
    for (int k = 0; k < 3; k++) slices[k] = loom_zero_slice_ptr(tr->zero, k);
    /* a buffer the host addresses is written as it is; otherwise (the backend's memory elsewhere, or state the
     * memory manager keeps in files) each section is pulled a piece at a time */
    const int host = loom_backend_host_accessible(tr->be);
    const int n_state = loom_optim_num_state_buffers(tr->opt);
    slice_fill fills[3];
    loom_ckpt_section secs[3];
    for (int k = 0; k < 3; k++) {
        fills[k] = (slice_fill){tr->zero, k};
        secs[k] = (loom_ckpt_section){NULL, host ? slices[k] : NULL, (end - begin) * 4, NULL, NULL};
        if ((!host || !slices[k]) && k <= n_state) {
            secs[k].fill = fill_slice;
            secs[k].ctx = &fills[k];
        }
    }
    loom_status st = LOOM_OK;
    float *canon = NULL, *tmp = NULL;
    const int assembled = tr->tp > 1 || tr->pp > 1;
    if (assembled) { /* tensor/pipeline parallel: the one-rank layout, assembled over the world, by rank 0 */
        const int64_t nc = loom_model_canonical_size(tr->model);
        canon = malloc((size_t)(3 * nc) * sizeof(float));
        if (!host) tmp = malloc((size_t)(end - begin + 1) * sizeof(float)); /* a slice, in host memory */
        if (!canon || (!host && !tmp)) st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
        for (int k = 0; k < 3 && st == LOOM_OK; k++)
            if (slices[k]) {
                const float *src = slices[k];
                if (!host) {
                    st = loom_zero_read_slice(tr->zero, k, 0, end - begin, tmp);
                    src = tmp;
                }
                if (st == LOOM_OK) st = canonical_gather(tr, src, begin, end, canon + k * nc);
                slices[k] = canon + k * nc;
            }
        free(tmp);
        if (st != LOOM_OK) {
            free(canon);
            loom_strbuf_free(&meta);
            return st;
        }
        begin = 0;
        end = nc;
    }
    if (assembled && !tr->root) {
        st = LOOM_OK;
    } else if (tr->dp == 1 || assembled) { /* one process (or the assembled tp layout): the single file */
        int64_t pbytes = (end - begin) * (int64_t)sizeof(float);
        loom_ckpt_section s[5] = {
            {"meta", meta.buf, (int64_t)meta.len, NULL, NULL},
            {"state", &ts, (int64_t)sizeof ts, NULL, NULL},
        };
        int n = 2;
        for (int i = 0; i < 3; i++) {
            if (assembled) secs[i] = (loom_ckpt_section){NULL, slices[i], pbytes, NULL, NULL}; /* host copies */
            if (!secs[i].data && !secs[i].fill) continue;
            s[n] = secs[i];
            s[n++].name = i == 0 ? "params" : i == 1 ? "optim.0" : "optim.1";
        }
        st = loom_ckpt_write(tr->ckpt_path, s, n);
    } else {
        st = loom_run_ckpt_save_sharded(tr->rc->train.out, tr->red, meta.buf, step, loom_zero_stage(tr->zero),
                                        rc->train.keep_checkpoints, &ts,
                                        (int64_t)sizeof ts, loom_model_buffer_size(tr->model), begin, end, secs);
    }
    free(canon);
    loom_strbuf_free(&meta);
    if (assembled) { /* every rank learns whether rank 0's write succeeded */
        int64_t failed = st != LOOM_OK;
        loom_status s2 = loom_comm_allreduce_max_i64(tr->world, &failed, 1);
        if (st == LOOM_OK && s2 != LOOM_OK) st = s2;
        if (st == LOOM_OK && failed)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "rank 0 could not write the checkpoint");
        if (st != LOOM_OK && s2 == LOOM_OK) loom_error_mark_collective(); /* every rank knows */
    }
    LOOM_CALL(st);
    return LOOM_OK;
}

static loom_status compare_models(const loom_model_config *a, const loom_model_config *b, const char *path) {
#define SAME(f)                                                                                              \
    LOOM_CHECK(a->f == b->f, LOOM_ERR_MISMATCH,                                                              \
               "checkpoint %s belongs to another model: model." #f " is %g there and %g in this config", path, \
               (double)a->f, (double)b->f)
    LOOM_CHECK(a->family == b->family, LOOM_ERR_MISMATCH,
               "checkpoint %s belongs to another model: family %s there, %s in this config", path,
               loom_family_name(a->family), loom_family_name(b->family));
    SAME(n_layer); SAME(n_head); SAME(n_kv_head); SAME(d_model); SAME(d_ff); SAME(vocab_size); SAME(max_seq_len);
    SAME(tie_embeddings); SAME(bias); SAME(gelu); SAME(norm_eps); SAME(rope_theta);
#undef SAME
    return LOOM_OK;
}

static loom_status read_ckpt_range(void *ctx, const char *section, int64_t begin, int64_t end, float *dst) {
    return loom_run_ckpt_read((loom_run_ckpt *)ctx, section, begin, end, dst);
}

/* Tensor parallel: local flat positions [begin, end) from the checkpoint's one-rank layout, each parameter
 * read whole and this rank's elements picked out. */
typedef struct {
    loom_run_ckpt *c;
    const loom_model *m;
} tp_reader;

static loom_status read_tp_range(void *ctx, const char *section, int64_t begin, int64_t end, float *dst) {
    const tp_reader *r = ctx;
    memset(dst, 0, (size_t)(end - begin) * sizeof(float));
    for (int i = 0; i < loom_model_num_param_infos(r->m); i++) {
        const loom_param_info *p = loom_model_param_info(r->m, i);
        const int64_t lo = p->offset > begin ? p->offset : begin;
        const int64_t hi = p->offset + p->numel < end ? p->offset + p->numel : end;
        if (lo >= hi) continue;
        const int64_t whole = p->full_shape[0] * p->full_shape[1];
        float *tmp = malloc((size_t)whole * sizeof(float));
        LOOM_CHECK(tmp != NULL, LOOM_ERR_NOMEM, "out of memory");
        loom_status st = loom_run_ckpt_read(r->c, section, p->canon_offset, p->canon_offset + whole, tmp);
        if (st == LOOM_OK)
            for (int64_t j = lo; j < hi; j++) dst[j - begin] = tmp[loom_model_tp_element(r->m, i, j - p->offset)];
        free(tmp);
        LOOM_CALL(st);
    }
    return LOOM_OK;
}

/* A damaged checkpoint: the message says what the user can do, naming the kept steps that remain. */
static void resume_hint(const trainer *tr, int64_t bad_step, loom_status st) {
    char kept[512] = "", dir[LOOM_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/shards", tr->rc->train.out);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, "step-", 5) && strlen(kept) + strlen(dir) + strlen(e->d_name) + 8 < sizeof kept) {
            char man[2 * LOOM_PATH_MAX];
            snprintf(man, sizeof man, "%s/%s/checkpoint.json", dir, e->d_name);
            if (access(man, F_OK) == 0 && atoll(e->d_name + 5) != bad_step)
                snprintf(kept + strlen(kept), sizeof kept - strlen(kept), "%s%s/%s", kept[0] ? ", " : "", dir, e->d_name);
        }
    if (d) closedir(d);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", loom_error_message());
    loom_error_set(st, __FILE__, __LINE__, __func__,
                   "%s. This checkpoint cannot be resumed: %s%s%s, or start afresh without --resume", msg,
                   kept[0] ? "resume from a kept earlier one with --set train.resume_from=" : "no earlier one is kept "
                   "(train.keep_checkpoints=2 keeps one for next time)", kept, kept[0] ? "" : "; restore it from a copy");
}

/* Resumes from the newest checkpoint of the run directory, written by any number of ranks and any ZeRO
 * stage: each rank reads the flat ranges its own layout needs (resharding). */
static loom_status load_checkpoint(trainer *tr, int64_t *step) {
    loom_run_ckpt *c = NULL;
    loom_status st;
    const char *from = tr->rc->train.resume_from[0] ? tr->rc->train.resume_from : tr->rc->train.out;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(from, &c), done);
    const loom_json *j = loom_run_ckpt_meta(c);
    const char *path = loom_run_ckpt_path(c);
    loom_model_config mc;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(j, "model"), &mc), done);
    LOOM_CALL_GOTO(st, compare_models(&mc, &tr->model_cfg, path), done);
    LOOM_CHECK_GOTO(st, loom_run_ckpt_size(c) == loom_model_canonical_size(tr->model), LOOM_ERR_MISMATCH, done,
                    "checkpoint %s holds %lld floats, this model %lld", path, (long long)loom_run_ckpt_size(c),
                    (long long)loom_model_canonical_size(tr->model));
    train_state ts;
    LOOM_CALL_GOTO(st, loom_run_ckpt_read_state(c, &ts, (int64_t)sizeof ts), done);
    LOOM_CHECK_GOTO(st, ts.optim_kind == (int32_t)tr->rc->optim.kind, LOOM_ERR_MISMATCH, done,
                    "checkpoint %s was trained with optimizer %s, this run uses %s", path,
                    loom_optim_kind_name((loom_optim_kind)ts.optim_kind), loom_optim_kind_name(tr->rc->optim.kind));
    if (ts.loss_scale > 0 && tr->loss_scale > 0) {
        tr->loss_scale = ts.loss_scale;
        tr->loss_scale_good = ts.loss_scale_good;
    }
    tp_reader tpr = {c, tr->model};
    if (tr->tp > 1 || tr->pp > 1) LOOM_CALL_GOTO(st, loom_zero_load(tr->zero, read_tp_range, &tpr), done);
    else LOOM_CALL_GOTO(st, loom_zero_load(tr->zero, read_ckpt_range, c), done);
    const loom_json *th = loom_json_get(j, "threads");
    const loom_json *wo = loom_json_get(j, "world");
    int ck_world = wo && wo->type == LOOM_JSON_NUMBER ? (int)wo->number : 1;
    if (tr->root && ck_world != tr->dp)
        LOOM_INFO("resharding: checkpoint written by %d rank(s), this run has %d (ZeRO-%d)", ck_world, tr->dp,
                  loom_zero_stage(tr->zero));
    if (tr->root && th && th->type == LOOM_JSON_NUMBER && (int)th->number != loom_backend_threads(tr->be))
        LOOM_WARN("checkpoint was written with %d threads, this run uses %d: the continued losses will match "
                  "an uninterrupted run to rounding, not bit for bit", (int)th->number, loom_backend_threads(tr->be));
    loom_data_set_state(tr->data, &ts.data);
    *step = ts.step;
    st = LOOM_OK;
done:
    if (st == LOOM_ERR_CHECKSUM || st == LOOM_ERR_FORMAT) { /* the damaged step, when its manifest was read */
        const loom_json *js = c ? loom_json_get(loom_run_ckpt_meta(c), "step") : NULL;
        resume_hint(tr, js && js->type == LOOM_JSON_NUMBER ? (int64_t)js->number : -1, st);
    }
    loom_run_ckpt_close(&c);
    return st;
}

/* The next micro-batch of this rank: its rows of the global batch, and with sp > 1 its block of positions. */
static loom_status next_batch(trainer *tr, loom_split split) {
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

static loom_status evaluate(trainer *tr, float *val_loss) {
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

static void fmt_duration(char *buf, size_t n, double s) {
    if (s < 0 || !isfinite(s)) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

static void print_profile(loom_backend *be, double total_s) {
    loom_profile *p = loom_backend_profile(be);
    double ksum = 0;
    for (int i = 0; i < LOOM_OP_COUNT; i++) ksum += p->seconds[i];
    printf("profile (kernel time by category; %.2f s in kernels of %.2f s total):\n", ksum, total_s);
    printf("  %-12s %10s %10s %7s %10s\n", "category", "calls", "seconds", "share", "GFLOP/s");
    for (int i = 0; i < LOOM_OP_COUNT; i++) {
        if (!p->calls[i]) continue;
        printf("  %-12s %10lld %10.3f %6.1f%% %10.1f\n", loom_op_name((loom_op)i), (long long)p->calls[i],
               p->seconds[i], 100.0 * p->seconds[i] / total_s, p->seconds[i] > 0 ? p->flops[i] / p->seconds[i] / 1e9 : 0.0);
    }
    printf("  %-12s %10s %10.3f %6.1f%%\n", "other", "", total_s - ksum, 100.0 * (total_s - ksum) / total_s);
}

/* every rank's row: current bytes and peak bytes by category, then this step's communication wait and work
 * in microseconds (collective) */
enum { RANK_ROW = 2 * LOOM_MEM_N_CATEGORIES + 2 };
static loom_status gather_rank_stats(trainer *tr, int64_t *all) {
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

static void write_metrics_line(trainer *tr, int64_t step, float loss, const loom_optim_stats *os, double tok_s,
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
    if (tr->loss_scale > 0) loom_strbuf_printf(&sb, ",\"loss_scale\":%.17g,\"skipped\":%d", tr->step_scale, tr->skipped);
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

/* A short text from the trained model, so a first run ends with something to read. */
static loom_status print_sample(trainer *tr) {
    loom_tokenizer *tok = NULL;
    LOOM_CALL(loom_tokenizer_load(tr->tokenizer, &tok));
    int32_t start = loom_tokenizer_eot(tok);
    if (start < 0) {
        int32_t *nl = NULL;
        int64_t n = 0;
        loom_status st = loom_tokenizer_encode(tok, "\n", 1, &nl, &n);
        start = (st == LOOM_OK && n > 0) ? nl[0] : 0;
        free(nl);
    }
    loom_sample_config sc = loom_sample_config_default();
    sc.max_tokens = tr->rc->train.sample_tokens;
    sc.seed = (uint64_t)tr->rc->train.seed;
    printf("--- sample (%lld tokens, temperature %.1f) ---\n", (long long)sc.max_tokens, sc.temperature);
    loom_generate_stats gs;
    loom_status st = loom_generate(tr->model, tok, &start, 1, &sc, stdout, &gs, NULL, NULL);
    printf("\n--- %.0f tokens/s ---\n", gs.decode_seconds > 0 ? (double)gs.generated_tokens / gs.decode_seconds : 0.0);
    loom_tokenizer_free(&tok);
    LOOM_CALL(st);
    return LOOM_OK;
}

/* 1 when the test hook asks this rank to fail at `point` (at step/allocation n, when the hook names one) */
static int test_fault_at(const trainer *tr, const char *point, int64_t n) {
    return !strcmp(tr->fault.point, point) && tr->fault.rank == loom_comm_world_rank(tr->world) &&
           (tr->fault.n == 0 || tr->fault.n == n);
}

/* This rank's view of the training data, and the model's vocabulary fitted to it. Rank-local. */
static loom_status open_data(trainer *tr) {
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
    LOOM_CALL(loom_data_set_rank(tr->data, tr->mesh.dp_rank, tr->data_dp));
    return LOOM_OK;
}

static void trainer_free(trainer *tr) {
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

loom_status loom_train(const loom_run_config *rc, loom_comm *world, double peak_gflops, const char *peak_kernel) {
    LOOM_CALL(loom_run_config_validate(rc));
    const loom_train_config *t = &rc->train;
    trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.rc = rc;
    tr.peak_gflops = peak_gflops;
    loom_mem_init(&tr.mem);
    loom_status st;
    loom_backend_config bc = loom_backend_config_default();
    bc.device = t->device;
    bc.threads = (int)t->threads;
    bc.blas_coretype = t->blas_coretype;
    tr.world = world;
    if (!tr.world) LOOM_CALL_GOTO(st, loom_comm_init_world(&tr.world_owned), done);
    if (!tr.world) tr.world = tr.world_owned;
    tr.fault = test_fault_parse();
    if (test_fault_at(&tr, "oom", tr.fault.n)) tr.mem.fail_after = tr.fault.n;
    LOOM_CALL_GOTO(st, loom_backend_init(&bc, &tr.be), done);
    loom_comm_set_timeout(tr.world, t->comm_timeout);
    loom_comm_set_interrupt(tr.world, &stop_signal);
    loom_comm_set_backend(tr.world, tr.be); /* every axis split from it stages this backend's buffers if need be */
    tr.root = loom_comm_rank(tr.world) == 0;
    if (!tr.root && loom_log_get_level() > LOOM_LOG_WARN) loom_log_set_level(LOOM_LOG_WARN); /* rank 0 reports */
    loom_mesh_shape shape;
    LOOM_CALL_GOTO(st, loom_mesh_shape_parse(t->mesh, &shape), done);
    /* dp left out of the mesh: every rank the other axes leave */
    if (!strstr(t->mesh, "dp=")) shape.dp = loom_comm_size(tr.world) / (shape.pp * shape.tp * shape.sp);
    LOOM_CHECK_GOTO(st, shape.pp == 1 || t->zero <= 1, LOOM_ERR_UNSUPPORTED, done,
                    "mesh '%s': pipeline parallelism composes with ZeRO stages 0 and 1 (got --zero %lld)", t->mesh,
                    (long long)t->zero);
    LOOM_CHECK_GOTO(st, t->seq_len % shape.sp == 0, LOOM_ERR_CONFIG, done,
                    "train.seq_len %lld must divide evenly over sp=%d ranks", (long long)t->seq_len, shape.sp);
    LOOM_CALL_GOTO(st, loom_mesh_init(tr.world, shape, &tr.mesh), done);
    tr.have_mesh = 1;
    tr.tp = shape.tp;
    tr.sp = shape.sp;
    tr.pp = shape.pp;
    tr.data_dp = shape.dp;
    tr.T_local = t->seq_len / shape.sp;
    /* gradients are summed over every rank that saw other tokens: data and sequence parallel alike */
    if (shape.sp > 1)
        LOOM_CALL_GOTO(st, loom_comm_split(tr.world, tr.mesh.pp_rank * shape.tp + tr.mesh.tp_rank,
                                           tr.mesh.dp_rank * shape.sp + tr.mesh.sp_rank, "dp x sp", &tr.red_owned),
                       done);
    tr.red = shape.sp > 1 ? tr.red_owned : tr.mesh.dp;
    tr.dp = loom_comm_size(tr.red);
    tr.dp_rank = loom_comm_rank(tr.red);
    LOOM_CHECK_GOTO(st, t->batch % shape.dp == 0, LOOM_ERR_CONFIG, done,
                    "train.batch %lld is the global micro-batch: it must divide evenly over dp=%d ranks",
                    (long long)t->batch, shape.dp);
    tr.local_batch = t->batch / shape.dp;
    tr.world_size = loom_comm_size(tr.world);
    tr.rank_mem = calloc((size_t)tr.world_size * RANK_ROW, sizeof(int64_t));
    LOOM_CHECK_GOTO(st, tr.rank_mem != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    /* every rank opens the data itself (a file one rank cannot read): they agree before the next collective */
    LOOM_CALL_GOTO(st, loom_comm_agree(tr.world, open_data(&tr), "opening the data"), done);
    if (tr.pp > 1) {
        LOOM_CALL_GOTO(st, loom_pipeline_partition(&tr.model_cfg, tr.pp, t->pp_schedule ? (int)t->pp_virtual : 1,
                                                   tr.mesh.pp_rank, &tr.part, NULL), done);
        /* the tied embedding's two copies: the first and the last stage of each pipeline */
        const int ends = tr.mesh.pp_rank == 0 || tr.mesh.pp_rank == tr.pp - 1;
        const int lane = (tr.mesh.dp_rank * tr.sp + tr.mesh.sp_rank) * tr.tp + tr.mesh.tp_rank;
        LOOM_CALL_GOTO(st, loom_comm_split(tr.world, ends ? lane : loom_comm_size(tr.world) + loom_comm_rank(tr.world),
                                           tr.mesh.pp_rank, "embedding", &tr.embed), done);
        tr.pp_stats = calloc((size_t)tr.pp * 2, sizeof(double));
        LOOM_CHECK_GOTO(st, tr.pp_stats != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    }
    const char *off_dir = t->offload_dir[0] ? t->offload_dir : t->out;
    if (t->mem_budget > 0) { /* the memory manager's scratch files go there from the start */
        LOOM_CALL_GOTO(st, mkdir_p(off_dir), done);
        if (t->mem_trace[0] && tr.root) {
            tr.mem_trace = fopen(t->mem_trace, "w");
            LOOM_CHECK_GOTO(st, tr.mem_trace != NULL, LOOM_ERR_IO, done, "cannot create %s: %s", t->mem_trace,
                            strerror(errno));
        }
    }
    const loom_zero_options zo = {.stage = (int)t->zero, .overlap = t->dp_overlap, .transport = t->dp_transport,
                                  .tp = tr.mesh.tp, .part = tr.pp > 1 ? &tr.part : NULL, .sp = tr.mesh.sp,
                                  .parts = tr.pp > 1 ? tr.mesh.pp : NULL, .tp_seq_parallel = t->tp_seq_parallel,
                                  .precision = (loom_precision)t->precision, .mem_budget = t->mem_budget,
                                  .offload = t->offload, .mem_chunk = t->mem_chunk, .offload_dir = off_dir,
                                  .mem_trace = tr.mem_trace};
    LOOM_CHECK_GOTO(st, t->precision == LOOM_PRECISION_FP32 || t->zero < 3, LOOM_ERR_UNSUPPORTED, done,
                    "--precision bf16/fp16 keeps a low-precision copy of the whole local parameters: use ZeRO 0-2 "
                    "(and no parameter offload)");
    LOOM_CALL_GOTO(st, loom_zero_init(&tr.model_cfg, &rc->optim, &zo, tr.red, tr.be, &tr.mem, &tr.zero), done);
    tr.model = loom_zero_model(tr.zero);
    tr.opt = loom_zero_optim(tr.zero);
    if (t->precision == LOOM_PRECISION_FP16) tr.loss_scale = t->loss_scale; /* a resumed run continues its own */
    LOOM_CHECK_GOTO(st, t->precision == LOOM_PRECISION_FP32 || loom_zero_stage(tr.zero) < 3, LOOM_ERR_UNSUPPORTED, done,
                    "--precision bf16/fp16 keeps a low-precision copy of the whole local parameters: use ZeRO 0-2 "
                    "(and no parameter offload)");
    int slots = 1;
    if (tr.pp > 1) {
        LOOM_CALL_GOTO(st, loom_pipeline_init(tr.mesh.pp, rc->model.tie_embeddings ? tr.embed : NULL,
                                              (loom_pp_schedule)t->pp_schedule, (int)t->pp_virtual, (int)t->grad_accum,
                                              &tr.pipe), done);
        slots = loom_pipeline_slots(tr.pipe);
    }
    LOOM_CALL_GOTO(st, loom_model_reserve_slots(tr.model, tr.local_batch, tr.T_local, t->recompute, slots), done);
    loom_optim_set_total_steps(tr.opt, t->steps);
    const char *tk = loom_data_tokenizer(tr.data);
    if (tk) {
        char abs[PATH_MAX];
        if (strchr(tk, '/') && realpath(tk, abs)) tk = abs;
        snprintf(tr.tokenizer, sizeof tr.tokenizer, "%s", tk);
    }
    const int64_t BT = t->batch * t->seq_len;              /* the global micro-batch's tokens */
    const int64_t local_BT = tr.local_batch * tr.T_local;  /* this rank's rows (and positions) of it */
    tr.tokens = malloc((size_t)local_BT * sizeof(int32_t));
    tr.targets = malloc((size_t)local_BT * sizeof(int32_t));
    LOOM_CHECK_GOTO(st, tr.tokens && tr.targets, LOOM_ERR_NOMEM, done, "out of memory");
    if (tr.pp > 1) {
        tr.mb_tokens = malloc((size_t)(local_BT * t->grad_accum) * sizeof(int32_t));
        tr.mb_targets = malloc((size_t)(local_BT * t->grad_accum) * sizeof(int32_t));
        LOOM_CHECK_GOTO(st, tr.mb_tokens && tr.mb_targets, LOOM_ERR_NOMEM, done, "out of memory");
    }
    if (tr.sp > 1) {
        tr.seq_tokens = malloc((size_t)(tr.local_batch * t->seq_len) * sizeof(int32_t));
        tr.seq_targets = malloc((size_t)(tr.local_batch * t->seq_len) * sizeof(int32_t));
        LOOM_CHECK_GOTO(st, tr.seq_tokens && tr.seq_targets, LOOM_ERR_NOMEM, done, "out of memory");
    }
    snprintf(tr.ckpt_path, sizeof tr.ckpt_path, "%s/checkpoint.bin", t->out);
    int64_t step = 0;
    const int resume = t->resume || t->resume_from[0];
    if (resume) { /* every rank reads its own ranges: all of them resume, or none */
        LOOM_CALL_GOTO(st, loom_comm_agree(tr.world, load_checkpoint(&tr, &step), "resuming"), done);
        LOOM_INFO("resumed from %s at step %lld", t->resume_from[0] ? t->resume_from : t->out, (long long)step);
    } else {
        LOOM_CALL_GOTO(st, loom_zero_init_weights(tr.zero, (uint64_t)t->seed), done);
    }
    LOOM_CALL_GOTO(st, loom_model_refresh_low_precision(tr.model), done); /* bf16: the working copy of the weights */
    /* everything is validated: only now touch the run directory */
    LOOM_CALL_GOTO(st, mkdir_p(t->out), done);
    if (!resume && tr.root) loom_run_ckpt_move_aside(t->out);
    if (!resume && tr.root && access(tr.ckpt_path, F_OK) == 0) {
        char prev[LOOM_PATH_MAX + 64];
        snprintf(prev, sizeof prev, "%s/checkpoint.prev.bin", t->out);
        LOOM_CHECK_GOTO(st, rename(tr.ckpt_path, prev) == 0, LOOM_ERR_IO, done, "cannot move aside %s: %s",
                        tr.ckpt_path, strerror(errno));
        LOOM_WARN("%s already held a checkpoint; moved it to %s (use --resume to continue a run)", t->out, prev);
    }
    char mpath[LOOM_PATH_MAX + 32];
    if (t->metrics[0]) snprintf(mpath, sizeof mpath, "%s", t->metrics);
    else snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", t->out);
    if (tr.root) {
        tr.metrics = fopen(mpath, resume ? "a" : "w");
        LOOM_CHECK_GOTO(st, tr.metrics != NULL, LOOM_ERR_IO, done, "cannot write metrics %s: %s", mpath, strerror(errno));
    }

    const double flops_tok = loom_model_config_flops_per_token(&tr.model_cfg, t->seq_len);
    const int64_t tokens_per_step = BT * t->grad_accum;
    LOOM_INFO("model %s (%s): %.2fM parameters, %.3f GFLOP/token; data %s", rc->preset,
              loom_family_name(tr.model_cfg.family), (double)loom_model_num_params(tr.model) / 1e6, flops_tok / 1e9,
              loom_data_describe(tr.data));
    LOOM_INFO("batch %lld x %lld x %lld accum = %lld tokens/step; %s %s; %d threads; GEMM %s; peak %.1f GFLOP/s (%s)",
              (long long)t->batch, (long long)t->seq_len, (long long)t->grad_accum, (long long)tokens_per_step,
              loom_optim_kind_name(rc->optim.kind), t->recompute == LOOM_RECOMPUTE_NONE ? "" : "recompute",
              loom_backend_threads(tr.be), loom_backend_gemm_kernel(tr.be), peak_gflops,
              peak_kernel ? peak_kernel : "unmeasured");
    if (tr.dp > 1)
        LOOM_INFO("data parallel: %d ranks (reductions through %s), ZeRO-%lld, %lld sequences per rank per "
                  "micro-step, gradient reduction %s; this rank holds params %.1f, grads %.1f, optim %.1f MiB",
                  tr.dp, loom_zero_transport_name(tr.zero), (long long)t->zero, (long long)tr.local_batch,
                  t->dp_overlap ? "overlapped with the backward pass" : "after the backward pass",
                  tr.mem.current[LOOM_MEM_PARAMS] / 1048576.0, tr.mem.current[LOOM_MEM_GRADS] / 1048576.0,
                  tr.mem.current[LOOM_MEM_OPTIM] / 1048576.0);
    if (tr.pp > 1) {
        LOOM_INFO("pipeline: %d stages, %s schedule, %d chunk(s) per stage, %lld micro-batches per step; this stage "
                  "holds blocks%s%s, %.2fM parameters, activations for %d micro-batches in flight; bubble in theory "
                  "%.1f%%", tr.pp, t->pp_schedule ? "interleaved" : "1F1B", tr.part.n_chunks, (long long)t->grad_accum,
                  tr.part.first ? " (+ embedding)" : "", tr.part.last ? " (+ head)" : "",
                  (double)loom_model_num_params(tr.model) / 1e6, loom_pipeline_slots(tr.pipe),
                  100 * loom_pipeline_bubble_theory(tr.pipe));
        for (int k = 0; k < tr.part.n_chunks; k++)
            LOOM_INFO("  stage 0 chunk %d: blocks [%lld, %lld)", k, (long long)tr.part.layer_lo[k],
                      (long long)tr.part.layer_hi[k]);
    }
    if (tr.tp > 1)
        LOOM_INFO("tensor parallel: %d ranks per layer (heads, MLP hidden and vocabulary cut; 2 all-reduces of %lld "
                  "floats per block per pass); this rank holds %.2fM of %.2fM parameters", tr.tp,
                  (long long)(tr.local_batch * t->seq_len * tr.model_cfg.d_model),
                  (double)loom_model_num_params(tr.model) / 1e6, (double)loom_model_config_num_params(&tr.model_cfg) / 1e6);
    /* every rank's share of the machine(s); bf16 products run at twice the fp32 rate on vdpbf16ps hardware
     * (../shared/PERFORMANCE.md: ~800 against ~440 GFLOP/s on two cores), so their peak is taken as 2x */
    const double world_peak = peak_gflops * loom_comm_size(tr.world) * (t->precision == LOOM_PRECISION_BF16 ? 2.0 : 1.0);
    if (t->precision == LOOM_PRECISION_BF16)
        LOOM_INFO("precision bf16: weight products in bf16 (%s), fp32 accumulation, master weights, gradients and "
                  "optimizer state; MFU against 2x the fp32 peak", loom_backend_bf16_kernel(tr.be));
    int tty = tr.root && (t->progress == 1 || (t->progress < 0 && isatty(STDOUT_FILENO)));
    if (t->profile) loom_backend_set_profiling(tr.be, 1);
    if (t->precision == LOOM_PRECISION_FP16)
        LOOM_INFO("precision fp16: weight products on fp16 values with fp32 accumulation (fp32 units: this CPU has "
                  "no fp16 arithmetic), fp32 master state; dynamic loss scale from %g, doubled after %lld good steps, "
                  "halved with the step skipped on overflow", tr.loss_scale, (long long)t->loss_scale_window);
    double t_start = now_s(), t_train = 0;
    int64_t first_step = step;
    float loss = NAN, val_loss = NAN;
    while (step < t->steps) {
        double t0 = now_s();
        double lsum = 0.0;
        /* the loss's gradient is scaled (fp16), the optimizer divides the scale out */
        tr.step_scale = tr.loss_scale;
        const float grad_scale = (float)((tr.loss_scale > 0 ? tr.loss_scale : 1.0) / (double)tokens_per_step);
        loom_optim_set_loss_scale(tr.opt, tr.loss_scale);
        loom_zero_reset_stats(tr.zero);
        loom_comm_reset_stats(tr.mesh.tp);
        loom_comm_reset_stats(tr.mesh.sp);
        for (int64_t micro = 0; tr.pipe && micro < t->grad_accum; micro++) { /* the step's micro-batches */
            LOOM_CALL_GOTO(st, next_batch(&tr, LOOM_SPLIT_TRAIN), done);
            memcpy(tr.mb_tokens + micro * local_BT, tr.tokens, (size_t)local_BT * sizeof(int32_t));
            memcpy(tr.mb_targets + micro * local_BT, tr.targets, (size_t)local_BT * sizeof(int32_t));
        }
        if (tr.pipe) {
            LOOM_CALL_GOTO(st, loom_pipeline_train_step(tr.pipe, tr.model, tr.zero, tr.mb_tokens, tr.mb_targets,
                                                        tr.local_batch, tr.T_local, grad_scale, &lsum), done);
            const loom_pipeline_stats ps = loom_pipeline_get_stats(tr.pipe);
            double mine[2] = {ps.idle_s, ps.busy_s};
            LOOM_CALL_GOTO(st, loom_comm_allgather_bytes(tr.mesh.pp, mine, (int64_t)sizeof mine, tr.pp_stats), done);
        }
        for (int64_t micro = 0; !tr.pipe && micro < t->grad_accum; micro++) {
            float l;
            LOOM_CALL_GOTO(st, next_batch(&tr, LOOM_SPLIT_TRAIN), done);
            loom_zero_begin_micro(tr.zero, micro, micro == t->grad_accum - 1);
            LOOM_CALL_GOTO(st, loom_model_forward_backward(tr.model, tr.tokens, tr.targets, tr.local_batch, tr.T_local,
                                                           grad_scale, loom_zero_accumulate(tr.zero, micro), &l), done);
            LOOM_CALL_GOTO(st, loom_zero_end_micro(tr.zero), done);
            lsum += l;
        }
        LOOM_CHECK_GOTO(st, !test_fault_at(&tr, "step", step + 1), LOOM_ERR_INTERNAL, done,
                        "an error in the middle of step %lld (injected by LOOM_TEST_FAULT)", (long long)step + 1);
        loom_optim_stats os;
        LOOM_CALL_GOTO(st, loom_zero_step(tr.zero, step, &os), done);
        tr.skipped = tr.loss_scale > 0 && os.skipped;
        if (tr.skipped) { /* an overflow: the step did nothing; a smaller scale */
            tr.loss_scale *= 0.5;
            tr.loss_scale_good = 0;
            if (tr.root) LOOM_INFO("step %lld: gradients overflowed in fp16, step skipped, loss scale now %g",
                                   (long long)step + 1, tr.loss_scale);
        } else if (tr.loss_scale > 0 && ++tr.loss_scale_good >= t->loss_scale_window) {
            tr.loss_scale *= 2.0;
            tr.loss_scale_good = 0;
        }
        LOOM_CALL_GOTO(st, loom_model_refresh_low_precision(tr.model), done);
        tr.tp_stats = loom_comm_get_stats(tr.mesh.tp); /* this step's tensor-parallel traffic, before any eval */
        tr.sp_stats = loom_comm_get_stats(tr.mesh.sp);
        if (tr.dp > 1) { /* the global batch's mean loss: equal shares, so the mean of the ranks' means */
            LOOM_CALL_GOTO(st, loom_comm_allreduce_sum_f64(tr.red, &lsum, 1), done);
            lsum /= tr.dp;
        }
        loss = (float)(lsum / (double)t->grad_accum);
        step++;
        double dt = now_s() - t0;
        t_train += dt;
        double tok_s = (double)tokens_per_step / dt;
        double mfu = world_peak > 0 ? flops_tok * tok_s / (world_peak * 1e9) : 0.0;
        LOOM_CALL_GOTO(st, gather_rank_stats(&tr, tr.rank_mem), done);
        write_metrics_line(&tr, step, loss, &os, tok_s, mfu, dt * 1e3, tr.rank_mem);
        if (loom_zero_offload(tr.zero)) loom_offload_trace_step(loom_zero_offload(tr.zero), step, &tr.mem);
        char eta[32];
        fmt_duration(eta, sizeof eta, t_train / (double)(step - first_step) * (double)(t->steps - step));
        if (tty) {
            printf("\rstep %lld/%lld | loss %.4f | %.0f tok/s | MFU %.1f%% | %.0f ms/step | ETA %s   ", (long long)step,
                   (long long)t->steps, loss, tok_s, 100 * mfu, dt * 1e3, eta);
            fflush(stdout);
        } else if (tr.root && (step % t->log_interval == 0 || step == t->steps || step == first_step + 1)) {
            printf("step %lld/%lld loss %.6f lr %.3e grad_norm %.4f tok/s %.0f mfu %.1f%% ms %.0f eta %s\n",
                   (long long)step, (long long)t->steps, loss, os.lr, os.grad_norm, tok_s, 100 * mfu, dt * 1e3, eta);
            fflush(stdout);
        }
        int last = step == t->steps;
        if ((t->eval_interval > 0 && step % t->eval_interval == 0) || last) {
            loom_backend_set_profiling(tr.be, 0); /* the profile covers training steps only */
            LOOM_CALL_GOTO(st, evaluate(&tr, &val_loss), done);
            loom_backend_set_profiling(tr.be, t->profile);
            if (tr.metrics) {
                loom_strbuf vb;
                loom_strbuf_init(&vb);
                loom_strbuf_printf(&vb, "{\"step\":%lld,\"val_loss\":", (long long)step);
                loom_json_write_number(&vb, (double)val_loss);
                loom_strbuf_printf(&vb, "}\n");
                if (!vb.failed) fputs(vb.buf, tr.metrics);
                loom_strbuf_free(&vb);
                fflush(tr.metrics);
            }
            if (tr.root) printf("%sstep %lld val_loss %.6f\n", tty ? "\n" : "", (long long)step, val_loss);
        }
        int64_t stop_vote = stop_signal != 0;
        if (tr.world_size > 1) /* a signal stops every rank at the same step, so the checkpoint is whole */
            LOOM_CALL_GOTO(st, loom_comm_allreduce_max_i64(tr.world, &stop_vote, 1), done);
        int stop_now = stop_vote != 0 || (t->stop_after > 0 && step == t->stop_after);
        if (t->save_checkpoints && ((t->ckpt_interval > 0 && step % t->ckpt_interval == 0) || last || stop_now)) {
            LOOM_CALL_GOTO(st, save_checkpoint(&tr, step), done);
            LOOM_DEBUG("checkpoint %s at step %lld", tr.ckpt_path, (long long)step);
        }
        if (stop_now) {
            if (tty) printf("\n");
            if (stop_vote) {
                st = loom_error_set(LOOM_ERR_INTERRUPTED, __FILE__, __LINE__, __func__,
                                    "interrupted by signal %d at step %lld; %s%s", (int)stop_signal, (long long)step,
                                    t->save_checkpoints ? "continue with --resume from the checkpoint in "
                                                        : "no checkpoint (train.save_checkpoints=false)",
                                    t->save_checkpoints ? (tr.dp > 1 ? t->out : tr.ckpt_path) : "");
                loom_error_mark_collective(); /* the stop was voted: every rank stops here */
                goto done;
            }
            LOOM_INFO("stopped after step %lld as asked; checkpoint in %s", (long long)step, t->out);
            break;
        }
    }
    if (tty) printf("\n");
    double total = now_s() - t_start;
    if (tr.root) {
        printf("done: %lld steps, final loss %.6f, val_loss %.6f, %.1f s, %.0f tokens/s, peak memory %.1f MiB "
               "(params %.1f, grads %.1f, optim %.1f, acts %.1f, workspace %.1f MiB), checkpoint %s\n",
               (long long)(step - first_step), loss, val_loss, total,
               t_train > 0 ? (double)(tokens_per_step * (step - first_step)) / t_train : 0.0,
               (double)tr.mem.peak_total / 1048576.0, (double)tr.mem.peak[LOOM_MEM_PARAMS] / 1048576.0,
               (double)tr.mem.peak[LOOM_MEM_GRADS] / 1048576.0, (double)tr.mem.peak[LOOM_MEM_OPTIM] / 1048576.0,
               (double)tr.mem.peak[LOOM_MEM_ACTS] / 1048576.0, (double)tr.mem.peak[LOOM_MEM_WORKSPACE] / 1048576.0,
               !t->save_checkpoints ? "none (train.save_checkpoints=false)" : tr.dp > 1 ? t->out : tr.ckpt_path);
        for (int r = 0; tr.pp > 1 && r < tr.pp; r++) {
            const double idle = tr.pp_stats[2 * r], busy = tr.pp_stats[2 * r + 1];
            printf("  pipeline stage %d idle %.1f%% of the last step (theory (p-1)/(v m+p-1) = %.1f%%)\n", r,
                   idle + busy > 0 ? 100 * idle / (idle + busy) : 0.0, 100 * loom_pipeline_bubble_theory(tr.pipe));
        }
        for (int r = 0; tr.world_size > 1 && r < tr.world_size; r++) {
            const int64_t *pk = tr.rank_mem + r * RANK_ROW + LOOM_MEM_N_CATEGORIES;
            printf("  rank %d peak MiB: params %.1f, grads %.1f, optim %.1f, acts %.1f, workspace %.1f\n", r,
                   pk[0] / 1048576.0, pk[1] / 1048576.0, pk[2] / 1048576.0, pk[3] / 1048576.0, pk[4] / 1048576.0);
        }
    }
    if (t->profile && tr.root) print_profile(tr.be, t_train);
    if (t->sample_tokens > 0 && tr.tokenizer[0] && (tr.tp > 1 || tr.sp > 1 || tr.pp > 1)) {
        if (tr.root) LOOM_INFO("no sample: generation runs on one rank per sequence and layer (loom generate %s)", t->out);
    } else if (t->sample_tokens > 0 && tr.tokenizer[0] && loom_zero_offload(tr.zero) && loom_zero_stage(tr.zero) >= 3) {
        if (tr.root) LOOM_INFO("no sample: the parameters are offloaded (loom generate %s)", t->out);
    } else if (t->sample_tokens > 0 && tr.tokenizer[0]) {
        LOOM_CALL_GOTO(st, loom_zero_gather_all(tr.zero), done); /* ZeRO-3: every rank lends its slice */
        if (tr.root) LOOM_CALL_GOTO(st, print_sample(&tr), done);
        loom_zero_release_all(tr.zero);
    }
    st = LOOM_OK;
done:
    if (st != LOOM_OK && loom_comm_size(tr.world) > 1 && !loom_error_is_collective()) {
        /* this rank alone failed: its peers may be waiting for it in a collective, so nothing collective is
         * freed; the caller aborts the job. Files are closed, and scratch files were unlinked at creation. */
        if (tr.metrics) fclose(tr.metrics);
        if (tr.mem_trace) fclose(tr.mem_trace);
        return st;
    }
    trainer_free(&tr);
    return st;
}
