/* A trainer's checkpoints: written by every rank (its ZeRO slice, or with tensor/pipeline parallelism the
 * one-rank layout assembled over the world by rank 0) and read back by any layout (resharding). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/log.h"

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

loom_status loom_trainer_ckpt_save(loom_trainer *tr, int64_t step) {
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

/* Resumes from the newest checkpoint of the run directory, written by any number of ranks and any ZeRO
 * stage: each rank reads the flat ranges its own layout needs (resharding). */
loom_status loom_trainer_ckpt_load(loom_trainer *tr, int64_t *step) {
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
