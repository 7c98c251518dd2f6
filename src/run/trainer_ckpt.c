/* A trainer's checkpoints: written by every rank (its ZeRO slice, or with tensor/pipeline parallelism the
 * one-rank layout assembled over the world by rank 0) and read back by any layout (resharding). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "loom/hf.h"
#include "loom/log.h"
#include "loom/supervise.h"

#include "run_impl.h"

/* Tensor parallel checkpoints hold the one-rank layout: each rank scatters its dp slice [begin, end) of a
 * buffer to the one-rank positions (parameters replicated over tp from tp rank 0 only), and a sum over the
 * world, where every position has exactly one contributor, assembles the whole (collective). */
static loom_status canonical_gather(loom_trainer *tr, const float *slice, int64_t begin, int64_t end, float *canon) {
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

/* a LoRA run's base as its checkpoints name it: absolute, so that merging and serving find it from anywhere */
static void lora_base_path(const char *init_from, char *out, size_t n) {
    char abs[PATH_MAX];
    snprintf(out, n, "%s", !init_from[0] ? "" : realpath(init_from, abs) ? abs : init_from);
}

/* The trainer's state at `step` into directory `dir`: <dir>/checkpoint.bin (one writer), or its sharded
 * layout keeping the newest `keep` steps (collective). */
static loom_status save_to(loom_trainer *tr, int64_t step, const char *dir, int64_t keep) {
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
    const loom_lora_config *lora = loom_model_lora(tr->model);
    if (lora) { /* what the adapters sit on: resuming and merging find the same base */
        char spec[256];
        loom_lora_config_format(lora, spec, sizeof spec);
        loom_strbuf_printf(&meta, "\"lora\":{\"spec\":");
        loom_json_write_string(&meta, spec);
        char base[PATH_MAX];
        lora_base_path(rc->train.init_from, base, sizeof base);
        loom_strbuf_printf(&meta, ",\"base\":");
        loom_json_write_string(&meta, base);
        loom_strbuf_printf(&meta, ",\"base_seed\":%lld},", (long long)rc->train.seed);
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
    ts.window_n = tr->window_n;
    ts.window_pos = tr->window_pos;
    memcpy(ts.window, tr->window, sizeof ts.window);
    ts.skip_until = tr->skip_until;
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
        char file[LOOM_PATH_MAX + 32];
        snprintf(file, sizeof file, "%s/checkpoint.bin", dir);
        st = loom_ckpt_write(file, s, n);
    } else {
        st = loom_run_ckpt_save_sharded(dir, tr->red, meta.buf, !strcmp(dir, tr->snap_dir), step,
                                        loom_zero_stage(tr->zero), keep, &ts,
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
static void resume_hint(const loom_trainer *tr, int64_t bad_step, loom_status st) {
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

/* This rank's part of the state from checkpoint `from` (a run directory, a step's shard directory or a
 * file), written by any number of ranks and any ZeRO stage: each rank reads the flat ranges its own layout
 * needs (resharding). Rank-local; `hint`: a damaged checkpoint's message names what the user can do. */
/* the checkpoint holds this run's model */
static loom_status check_ckpt_model(const loom_trainer *tr, loom_run_ckpt *c) {
    const char *path = loom_run_ckpt_path(c);
    loom_model_config mc;
    LOOM_CALL(loom_model_config_from_json(loom_json_get(loom_run_ckpt_meta(c), "model"), &mc));
    LOOM_CALL(compare_models(&mc, &tr->model_cfg, path));
    LOOM_CHECK(loom_run_ckpt_size(c) == loom_model_canonical_size(tr->model), LOOM_ERR_MISMATCH,
               "checkpoint %s holds %lld floats, this model %lld", path, (long long)loom_run_ckpt_size(c),
               (long long)loom_model_canonical_size(tr->model));
    return LOOM_OK;
}

/* a LoRA run resumes on the base it trained on, with the same adapters */
static loom_status check_lora_base(const loom_trainer *tr, const loom_json *meta, const char *path) {
    const loom_lora_config *lora = loom_model_lora(tr->model);
    const loom_json *jl = loom_json_get(meta, "lora");
    LOOM_CHECK(!lora == !jl, LOOM_ERR_MISMATCH, "checkpoint %s %s LoRA adapters and this run %s", path,
               jl ? "holds" : "holds no", lora ? "trains them (--lora)" : "does not (give its --lora)");
    if (!lora) return LOOM_OK;
    char spec[256];
    loom_lora_config_format(lora, spec, sizeof spec);
    const loom_json *js = loom_json_get(jl, "spec"), *jb = loom_json_get(jl, "base"), *jseed = loom_json_get(jl, "base_seed");
    LOOM_CHECK(js && js->type == LOOM_JSON_STRING && !strcmp(js->string, spec), LOOM_ERR_MISMATCH,
               "checkpoint %s holds adapters '%s', this run asks for '%s'", path, js && js->string ? js->string : "?", spec);
    const loom_train_config *t = &tr->rc->train;
    char base[PATH_MAX];
    lora_base_path(t->init_from, base, sizeof base);
    LOOM_CHECK(jb && jb->type == LOOM_JSON_STRING && !strcmp(jb->string, base) &&
                   (t->init_from[0] || (jseed && jseed->type == LOOM_JSON_NUMBER && (int64_t)jseed->number == t->seed)),
               LOOM_ERR_MISMATCH, "checkpoint %s trained its adapters on the base '%s'%s; this run's is '%s' (give --init %s)",
               path, jb && jb->string ? jb->string : "?", jb && jb->string && !jb->string[0] ? " (the seed's)" : "",
               t->init_from, jb && jb->string && jb->string[0] ? jb->string : "nothing, and its seed");
    return LOOM_OK;
}

static loom_status load_from(loom_trainer *tr, const char *from, int hint, int64_t *step) {
    loom_run_ckpt *c = NULL;
    loom_status st;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(from, &c), done);
    const loom_json *j = loom_run_ckpt_meta(c);
    const char *path = loom_run_ckpt_path(c);
    LOOM_CALL_GOTO(st, check_lora_base(tr, j, path), done); /* first: it says why the sizes would differ */
    LOOM_CALL_GOTO(st, check_ckpt_model(tr, c), done);
    train_state ts;
    LOOM_CALL_GOTO(st, loom_run_ckpt_read_state(c, &ts, (int64_t)sizeof ts), done);
    LOOM_CHECK_GOTO(st, ts.optim_kind == (int32_t)tr->rc->optim.kind, LOOM_ERR_MISMATCH, done,
                    "checkpoint %s was trained with optimizer %s, this run uses %s", path,
                    loom_optim_kind_name((loom_optim_kind)ts.optim_kind), loom_optim_kind_name(tr->rc->optim.kind));
    if (ts.loss_scale > 0 && tr->loss_scale > 0) {
        tr->loss_scale = ts.loss_scale;
        tr->loss_scale_good = ts.loss_scale_good;
    }
    /* the loss spike window and a rollback's skipped steps (zero in older checkpoints: none) */
    tr->window_n = ts.window_n >= 0 && ts.window_n <= LOOM_SPIKE_WINDOW_MAX ? ts.window_n : 0;
    tr->window_pos = ts.window_pos >= 0 && ts.window_pos < LOOM_SPIKE_WINDOW_MAX ? ts.window_pos : 0;
    memcpy(tr->window, ts.window, sizeof tr->window);
    tr->skip_until = ts.skip_until;
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
    if (hint && (st == LOOM_ERR_CHECKSUM || st == LOOM_ERR_FORMAT)) { /* the damaged step, when its manifest was read */
        const loom_json *js = c ? loom_json_get(loom_run_ckpt_meta(c), "step") : NULL;
        resume_hint(tr, js && js->type == LOOM_JSON_NUMBER ? (int64_t)js->number : -1, st);
    }
    loom_run_ckpt_close(&c);
    return st;
}

loom_status loom_trainer_ckpt_load(loom_trainer *tr, int64_t *step) {
    const char *from = tr->rc->train.resume_from[0] ? tr->rc->train.resume_from : tr->rc->train.out;
    return load_from(tr, from, 1, step);
}

/* ---- a new run from a checkpoint's weights (train.init_from): the parameters read, the optimizer's state
 * zero (every optimizer's fresh state), the step count and the data position the run's own ---- */
typedef struct {
    loom_trainer *tr;
    loom_run_ckpt *c;
} weights_reader;

static loom_status read_weights_only(void *ctx, const char *section, int64_t begin, int64_t end, float *dst) {
    const weights_reader *r = ctx;
    if (strcmp(section, "params") != 0) {
        memset(dst, 0, (size_t)(end - begin) * sizeof(float));
        return LOOM_OK;
    }
    tp_reader tpr = {r->c, r->tr->model};
    return r->tr->tp > 1 || r->tr->pp > 1 ? read_tp_range(&tpr, section, begin, end, dst)
                                          : read_ckpt_range(r->c, section, begin, end, dst);
}

/* the checkpoint train.init_from names: itself, or a Hugging Face directory imported into <out>/init-hf by
 * rank 0 (collective then) */
static loom_status init_source(loom_trainer *tr, char *from, size_t n) {
    const loom_train_config *t = &tr->rc->train;
    snprintf(from, n, "%s", t->init_from);
    if (!loom_hf_is_model_dir(t->init_from)) return LOOM_OK;
    snprintf(from, n, "%s/init-hf", t->out);
    const loom_status st = tr->root ? loom_hf_import(t->init_from, from, NULL) : LOOM_OK;
    return loom_comm_agree(tr->world, st, "importing the Hugging Face model");
}

loom_status loom_trainer_load_frozen(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    loom_model *m = tr->model;
    if (!t->init_from[0]) {
        if (tr->root) LOOM_INFO("LoRA: the frozen weights from seed %lld (no --init)", (long long)t->seed);
        return loom_model_init_frozen(m, (uint64_t)t->seed);
    }
    char from[LOOM_PATH_MAX + 16];
    LOOM_CALL(init_source(tr, from, sizeof from));
    loom_run_ckpt *c = NULL;
    loom_status st;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(from, &c), done);
    loom_model_config mc;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(loom_run_ckpt_meta(c), "model"), &mc), done);
    LOOM_CALL_GOTO(st, compare_models(&mc, &tr->model_cfg, loom_run_ckpt_path(c)), done);
    LOOM_CALL_GOTO(st, loom_model_read_weights(m, c), done);
    if (tr->root) LOOM_INFO("LoRA: the frozen weights from %s", loom_run_ckpt_path(c));
done:
    loom_run_ckpt_close(&c);
    return st;
}

loom_status loom_trainer_ckpt_init(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    char from[LOOM_PATH_MAX + 16];
    LOOM_CALL(init_source(tr, from, sizeof from));
    loom_run_ckpt *c = NULL;
    loom_status st;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(from, &c), done);
    LOOM_CALL_GOTO(st, check_ckpt_model(tr, c), done);
    weights_reader r = {tr, c};
    LOOM_CALL_GOTO(st, loom_zero_load(tr->zero, read_weights_only, &r), done);
    const loom_json *js = loom_json_get(loom_run_ckpt_meta(c), "step");
    if (tr->root)
        LOOM_INFO("weights from %s (its step %lld)%s; a fresh optimizer, step 0, the data from its start",
                  loom_run_ckpt_path(c), js && js->type == LOOM_JSON_NUMBER ? (long long)js->number : 0LL,
                  strcmp(from, t->init_from) ? ", imported from the Hugging Face directory" : "");
done:
    loom_run_ckpt_close(&c);
    return st;
}

/* ---- resilience: in-memory snapshots, asynchronous disk checkpoints, resuming from the newest intact ----
 *
 * A snapshot is a checkpoint written to the snapshot directory (shared memory: /dev/shm, so it outlives the
 * crashed process, and costs a memory copy and a CRC), in the same layouts as on disk, the newest two kept.
 * An asynchronous disk checkpoint is a snapshot that a background thread of each rank then copies to the run
 * directory (its own file: shard, or the single file); once every rank's copy is done (a vote at each step
 * boundary while one is in flight) rank 0 commits it with the manifests, as the synchronous writer does. A
 * crash before the commit leaves the previous disk checkpoint as the newest one. */

static int resume_failed_flag;
int loom_train_resume_failed(void) { return resume_failed_flag; }

static int sharded_layout(const loom_trainer *tr) { return tr->tp == 1 && tr->pp == 1 && tr->dp > 1; }
/* the rank that writes the single file (tensor/pipeline parallel: the assembled one-rank layout) */
static int writes_file(const loom_trainer *tr) { return sharded_layout(tr) || tr->root; }

/* every file and directory under `dir`, and dir itself; missing ones are fine (several ranks may race) */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[2 * LOOM_PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0 && (errno == EISDIR || errno == EPERM)) remove_tree(p);
    }
    closedir(d);
    rmdir(dir);
}

void loom_trainer_snapshot_dir(const loom_trainer *tr, char *dir, size_t n) {
    const loom_train_config *t = &tr->rc->train;
    if (t->snapshot_dir[0]) {
        snprintf(dir, n, "%s", t->snapshot_dir);
        return;
    }
    char abs[PATH_MAX];
    const char *out = realpath(t->out, abs) ? abs : t->out;
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the run directory's absolute path */
    for (const char *c = out; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    snprintf(dir, n, "/dev/shm/loom-%ld-%016llx", (long)getuid(), (unsigned long long)h);
}

void loom_trainer_snapshot_clear(loom_trainer *tr) { remove_tree(tr->snap_dir); }

/* LOOM_TEST_FAULT=slowcopy@R:MS: rank R's background copies pause MS ms after each piece, so that a test can
 * kill the rank in the middle of one */
static void slow_piece(void *ctx) {
    const struct timespec ts = {*(const int64_t *)ctx / 1000, (*(const int64_t *)ctx % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* the background copy of this rank's file of a snapshot to the run directory */
static void *async_copy(void *arg) {
    ckpt_async *a = arg;
    /* below the training threads: on a machine whose cores all train, the copy takes what they leave (a
     * copy still done within the snapshot interval), not a share of every step */
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
    a->status = a->src[0] ? loom_file_copy_atomic(a->src, a->dst, a->slow_ms > 0 ? slow_piece : NULL, &a->slow_ms)
                          : LOOM_OK;
    if (a->status != LOOM_OK) snprintf(a->err, sizeof a->err, "%s", loom_error_message());
    atomic_store(&a->done, 1);
    return NULL;
}

/* Collective: when every rank's copy is done (or with `wait`, once it is), rank 0 commits the step. */
loom_status loom_trainer_ckpt_poll(loom_trainer *tr, int wait) {
    ckpt_async *a = &tr->async;
    if (!a->running) return LOOM_OK;
    int64_t pending = 0;
    if (wait) {
        pthread_join(a->thread, NULL);
    } else {
        pending = !atomic_load(&a->done);
        if (tr->world_size > 1) LOOM_CALL(loom_comm_allreduce_max_i64(tr->world, &pending, 1));
        if (pending) return LOOM_OK;
        pthread_join(a->thread, NULL);
    }
    a->running = 0;
    int64_t failed = a->status != LOOM_OK;
    if (tr->world_size > 1) LOOM_CALL(loom_comm_allreduce_max_i64(tr->world, &failed, 1));
    loom_status st = LOOM_OK;
    const loom_train_config *t = &tr->rc->train;
    if (!failed && tr->root && sharded_layout(tr)) { /* the step's manifest, then the run's: the commit */
        char src[LOOM_PATH_MAX + 80], dst[LOOM_PATH_MAX + 80], man[LOOM_PATH_MAX + 32];
        snprintf(src, sizeof src, "%s/shards/step-%08lld/checkpoint.json", tr->snap_dir, (long long)a->step);
        snprintf(dst, sizeof dst, "%s/shards/step-%08lld/checkpoint.json", t->out, (long long)a->step);
        snprintf(man, sizeof man, "%s/checkpoint.json", t->out);
        st = loom_file_copy_atomic(src, dst, NULL, NULL);
        if (st == LOOM_OK) st = loom_file_write_atomic(man, a->manifest, a->manifest_len);
        if (st == LOOM_OK) loom_run_ckpt_prune(t->out, t->keep_checkpoints);
        failed = st != LOOM_OK;
    }
    free(a->manifest);
    a->manifest = NULL;
    if (tr->world_size > 1) LOOM_CALL(loom_comm_broadcast(tr->world, &failed, (int64_t)sizeof failed, 0));
    if (failed) {
        if (st == LOOM_OK)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                "the asynchronous checkpoint of step %lld failed on %s: %s; the previous checkpoint "
                                "stays", (long long)a->step, a->status != LOOM_OK ? "this rank" : "another rank",
                                a->status != LOOM_OK ? a->err : "see its message");
        loom_error_mark_collective();
        return st;
    }
    if (tr->root) LOOM_DEBUG("checkpoint of step %lld committed to %s (written in the background)",
                             (long long)a->step, t->out);
    return LOOM_OK;
}

loom_status loom_trainer_snapshot(loom_trainer *tr, int to_disk) {
    const loom_train_config *t = &tr->rc->train;
    /* a background copy in flight must end first when this snapshot recycles the step it reads (the older of
     * the two kept) or when another disk checkpoint starts; otherwise it goes on */
    const int recycles_source = sharded_layout(tr) && tr->async.step < tr->snap_step;
    LOOM_CALL(loom_trainer_ckpt_poll(tr, to_disk || recycles_source));
    LOOM_CALL(loom_comm_agree(tr->world, loom_run_mkdir_p(tr->snap_dir), "creating the snapshot directory"));
    const double t0 = loom_run_now();
    LOOM_CALL(save_to(tr, tr->step, tr->snap_dir, 2));
    tr->snap_step = tr->step;
    if (tr->root) LOOM_DEBUG("snapshot of step %lld in %s: %.3f s", (long long)tr->step, tr->snap_dir, loom_run_now() - t0);
    if (!to_disk) return LOOM_OK;
    ckpt_async *a = &tr->async;
    memset(a, 0, sizeof *a);
    a->step = tr->step;
    if (writes_file(tr) && sharded_layout(tr)) {
        const int r = loom_comm_rank(tr->red);
        char dir[LOOM_PATH_MAX + 48];
        snprintf(a->src, sizeof a->src, "%s/shards/step-%08lld/rank-%05d.bin", tr->snap_dir, (long long)a->step, r);
        snprintf(dir, sizeof dir, "%s/shards", t->out);
        loom_status st = loom_run_mkdir_p(dir);
        snprintf(dir, sizeof dir, "%s/shards/step-%08lld", t->out, (long long)a->step);
        if (st == LOOM_OK) st = loom_run_mkdir_p(dir);
        LOOM_CALL(loom_comm_agree(tr->world, st, "creating the checkpoint directory"));
        snprintf(a->dst, sizeof a->dst, "%s/rank-%05d.bin", dir, r);
        if (tr->root) { /* the run manifest of this step, committed when every shard is on disk */
            char man[LOOM_PATH_MAX + 32];
            snprintf(man, sizeof man, "%s/checkpoint.json", tr->snap_dir);
            FILE *f = fopen(man, "rb");
            LOOM_CHECK(f != NULL, LOOM_ERR_IO, "cannot read %s: %s", man, strerror(errno));
            fseek(f, 0, SEEK_END);
            const long len = ftell(f);
            fseek(f, 0, SEEK_SET);
            a->manifest = malloc(len > 0 ? (size_t)len : 1);
            a->manifest_len = a->manifest ? fread(a->manifest, 1, (size_t)(len > 0 ? len : 0), f) : 0;
            fclose(f);
            LOOM_CHECK(a->manifest && a->manifest_len == (size_t)len, LOOM_ERR_IO, "cannot read %s", man);
        }
    } else if (writes_file(tr)) {
        snprintf(a->src, sizeof a->src, "%s/checkpoint.bin", tr->snap_dir);
        snprintf(a->dst, sizeof a->dst, "%s", tr->ckpt_path);
    }
    if (!strcmp(tr->fault.point, "slowcopy") && tr->fault.rank == loom_comm_world_rank(tr->world)) a->slow_ms = tr->fault.n;
    atomic_store(&a->done, 0);
    LOOM_CHECK(pthread_create(&a->thread, NULL, async_copy, a) == 0, LOOM_ERR_INTERNAL,
               "cannot start the checkpoint thread");
    a->running = 1;
    return LOOM_OK;
}

loom_status loom_trainer_ckpt_save(loom_trainer *tr, int64_t step) {
    LOOM_CALL(loom_trainer_ckpt_poll(tr, 1)); /* an older step in flight commits first */
    return save_to(tr, step, tr->rc->train.out, tr->rc->train.keep_checkpoints);
}

/* ---- the candidates a restart or a rollback may load: every complete checkpoint of the snapshot and run
 * directories, newest step first (a snapshot before the disk copy of the same step). */
typedef struct {
    char path[LOOM_PATH_MAX + 64];
    int64_t step;
    int snapshot;
} candidate;

static int64_t step_of(const char *path) {
    loom_run_ckpt *c = NULL;
    int64_t step = -1;
    if (loom_run_ckpt_open(path, &c) == LOOM_OK) {
        const loom_json *js = loom_json_get(loom_run_ckpt_meta(c), "step");
        if (js && js->type == LOOM_JSON_NUMBER) step = (int64_t)js->number;
    }
    loom_run_ckpt_close(&c);
    loom_error_clear();
    return step;
}

static void add_candidate(candidate *list, int *n, int cap, const char *path, int snapshot) {
    if (*n >= cap || strlen(path) >= sizeof list->path || access(path, R_OK) != 0) return;
    const int64_t step = step_of(path);
    if (step < 0) { /* unreadable manifest: still a candidate, tried last, so its error is reported */
        LOOM_WARN("checkpoint %s cannot be read: %s", path, loom_error_message());
    }
    memcpy(list[*n].path, path, strlen(path) + 1);
    list[*n].step = step;
    list[*n].snapshot = snapshot;
    (*n)++;
}

static void add_dir(candidate *list, int *n, int cap, const char *dir, int snapshot) {
    char p[2 * LOOM_PATH_MAX];
    snprintf(p, sizeof p, "%s/checkpoint.bin", dir);
    add_candidate(list, n, cap, p, snapshot);
    snprintf(p, sizeof p, "%s/shards", dir);
    DIR *d = opendir(p);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "step-", 5) != 0) continue;
        snprintf(p, sizeof p, "%s/shards/%s/checkpoint.json", dir, e->d_name);
        add_candidate(list, n, cap, p, snapshot);
    }
    if (d) closedir(d);
}

static int newer_first(const void *x, const void *y) {
    const candidate *a = x, *b = y;
    if (a->step != b->step) return a->step > b->step ? -1 : 1;
    return b->snapshot - a->snapshot;
}

/* Collective: rank 0 lists the candidates (older than `before` when >= 0) and every rank learns them. */
static loom_status list_candidates(loom_trainer *tr, int64_t before, candidate *list, int cap, int *n) {
    *n = 0;
    if (tr->root) {
        add_dir(list, n, cap, tr->snap_dir, 1);
        add_dir(list, n, cap, tr->rc->train.out, 0);
        qsort(list, (size_t)*n, sizeof *list, newer_first);
        int k = 0;
        for (int i = 0; i < *n; i++)
            if (before < 0 || (list[i].step >= 0 && list[i].step < before)) list[k++] = list[i];
        *n = k;
    }
    if (tr->world_size > 1) {
        int64_t count = *n;
        LOOM_CALL(loom_comm_broadcast(tr->world, &count, (int64_t)sizeof count, 0));
        *n = (int)count;
        if (*n) LOOM_CALL(loom_comm_broadcast(tr->world, list, (int64_t)(*n * (int)sizeof *list), 0));
    }
    return LOOM_OK;
}

/* Collective: loads the first candidate every rank reads intact; LOOM_ERR_CHECKSUM when none is. */
static loom_status load_first_intact(loom_trainer *tr, const candidate *list, int n, int64_t *step, int *which) {
    char tried[2048] = "";
    for (int i = 0; i < n; i++) {
        int64_t got = 0;
        const loom_status st = load_from(tr, list[i].path, 0, &got);
        int64_t failed = st != LOOM_OK;
        char why[512];
        snprintf(why, sizeof why, "%s", st == LOOM_OK ? "" : loom_error_message());
        if (tr->world_size > 1) LOOM_CALL(loom_comm_allreduce_max_i64(tr->world, &failed, 1));
        if (!failed) {
            *step = got;
            *which = i;
            return LOOM_OK;
        }
        if (tr->root) LOOM_WARN("checkpoint %s (step %lld) cannot be loaded%s%s; trying an older one", list[i].path,
                                (long long)list[i].step, why[0] ? ": " : " on another rank", why);
        snprintf(tried + strlen(tried), sizeof tried - strlen(tried), "%s%s", i ? ", " : "", list[i].path);
    }
    loom_status st = loom_error_set(LOOM_ERR_CHECKSUM, __FILE__, __LINE__, __func__,
                                    "no intact checkpoint to resume from: every one is damaged or incomplete (%s)", tried);
    loom_error_mark_collective();
    return st;
}

loom_status loom_trainer_ckpt_resume_auto(loom_trainer *tr, int64_t *step, int *found) {
    enum { CAP = 64 };
    candidate *list = calloc(CAP, sizeof *list);
    LOOM_CHECK(list != NULL, LOOM_ERR_NOMEM, "out of memory");
    int n = 0, which = -1;
    loom_status st = list_candidates(tr, -1, list, CAP, &n);
    *found = 0;
    *step = 0;
    if (st == LOOM_OK && n > 0) {
        st = load_first_intact(tr, list, n, step, &which);
        if (st == LOOM_ERR_CHECKSUM) resume_failed_flag = 1;
    }
    if (st == LOOM_OK && n > 0) {
        *found = 1;
        if (tr->root) {
            LOOM_INFO("resumed at step %lld from %s %s", (long long)*step,
                      list[which].snapshot ? "the in-memory snapshot" : "the disk checkpoint", list[which].path);
            loom_strbuf sb;
            loom_strbuf_init(&sb);
            loom_strbuf_printf(&sb, "\"step\":%lld,\"source\":\"%s\",\"path\":", (long long)*step,
                               list[which].snapshot ? "snapshot" : "disk");
            loom_json_write_string(&sb, list[which].path);
            if (!sb.failed && loom_event_append(tr->rc->train.out, "resumed", sb.buf) != LOOM_OK)
                LOOM_WARN("%s", loom_error_message());
            loom_strbuf_free(&sb);
        }
    } else if (st == LOOM_OK && tr->root) {
        LOOM_INFO("no checkpoint in %s or %s: starting afresh", tr->rc->train.out, tr->snap_dir);
        if (loom_event_append(tr->rc->train.out, "resumed", "\"step\":0,\"source\":\"none\"") != LOOM_OK)
            LOOM_WARN("%s", loom_error_message());
    }
    free(list);
    return st;
}

loom_status loom_trainer_ckpt_rollback(loom_trainer *tr, int64_t before, int64_t *to, int *found) {
    enum { CAP = 64 };
    candidate *list = calloc(CAP, sizeof *list);
    LOOM_CHECK(list != NULL, LOOM_ERR_NOMEM, "out of memory");
    int n = 0, which = -1;
    loom_status st_ = LOOM_OK;
    *found = 0;
    LOOM_CALL_GOTO(st_, list_candidates(tr, before, list, CAP, &n), out);
    if (n > 0) {
        LOOM_CALL_GOTO(st_, load_first_intact(tr, list, n, to, &which), out);
        *found = 1;
    }
out:
    free(list);
    return st_;
}
