/* A model from a training checkpoint (either layout), for generation, serving and export (include/loom/run.h):
 * a plain run's weights, or a LoRA run's adapters over the frozen base its metadata names. */
#define _DEFAULT_SOURCE /* realpath, mkdtemp */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/ckpt.h"
#include "loom/hf.h"
#include "loom/run.h"

loom_status loom_model_read_weights(loom_model *m, loom_run_ckpt *c) {
    const int64_t n = loom_model_weights_size(m), piece = (int64_t)1 << 20; /* a bf16 base is never whole in fp32 */
    LOOM_CHECK(loom_run_ckpt_size(c) == n, LOOM_ERR_MISMATCH,
               "%s holds %lld floats of weights, its model needs %lld (a LoRA run's checkpoint holds adapters: merge it "
               "first with loom merge)", loom_run_ckpt_path(c), (long long)loom_run_ckpt_size(c), (long long)n);
    loom_backend *be = loom_model_backend(m);
    float *w = loom_model_weights(m);
    float *host = loom_backend_host_accessible(be) ? w : malloc((size_t)piece * sizeof(float));
    LOOM_CHECK(host != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    for (int64_t lo = 0; lo < n && st == LOOM_OK; lo += piece) {
        const int64_t hi = lo + piece < n ? lo + piece : n;
        float *dst = host == w ? w + lo : host;
        st = loom_run_ckpt_read(c, "params", lo, hi, dst);
        if (st == LOOM_OK && host != w) st = loom_buf_upload(be, w + lo, host, (size_t)(hi - lo) * sizeof(float));
        if (st == LOOM_OK) st = loom_model_weights_done(m, lo, hi);
    }
    if (host != w) free(host);
    LOOM_CALL(st);
    return loom_model_refresh_low_precision(m);
}

loom_status loom_checkpoint_read_adapters(loom_run_ckpt *c, loom_lora_config *lc, float **params, int64_t *n) {
    *params = NULL;
    *n = 0;
    const loom_json *spec = loom_json_get(loom_json_get(loom_run_ckpt_meta(c), "lora"), "spec");
    LOOM_CHECK(spec && spec->type == LOOM_JSON_STRING, LOOM_ERR_INVALID_ARG,
               "%s holds no LoRA adapters (a run trained with --lora has them)", loom_run_ckpt_path(c));
    LOOM_CALL(loom_lora_config_parse(spec->string, lc));
    const int64_t k = loom_run_ckpt_size(c);
    float *p = malloc((size_t)(k ? k : 1) * sizeof(float));
    LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory");
    const loom_status st = loom_run_ckpt_read(c, "params", 0, k, p);
    if (st != LOOM_OK) {
        free(p);
        return st;
    }
    *params = p;
    *n = k;
    return LOOM_OK;
}

/* the directory of a checkpoint path (a run directory, a shard directory, or a file in one) */
static void ckpt_dir(const char *path, char *dir, size_t n) {
    struct stat sb;
    snprintf(dir, n, "%s", path);
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return;
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, n, ".");
}

/* A LoRA run's frozen base into m: the seed's (no base named), a loom checkpoint, or a Hugging Face directory
 * (the run's own import of it, <run>/init-hf, or a fresh one in a temporary directory). */
static loom_status load_lora_base(loom_model *m, const loom_json *lora, const char *path) {
    const loom_json *jb = loom_json_get(lora, "base"), *jseed = loom_json_get(lora, "base_seed");
    LOOM_CHECK(jb && jb->type == LOOM_JSON_STRING && jseed && jseed->type == LOOM_JSON_NUMBER, LOOM_ERR_FORMAT,
               "%s: its LoRA metadata names no base", path);
    if (!jb->string[0]) return loom_model_init_frozen(m, (uint64_t)jseed->number);
    char from[PATH_MAX + 32], tmp[] = "/tmp/loom-lora-base-XXXXXX";
    snprintf(from, sizeof from, "%s", jb->string);
    int imported = 0;
    if (loom_hf_is_model_dir(jb->string)) {
        char dir[PATH_MAX];
        ckpt_dir(path, dir, sizeof dir);
        snprintf(from, sizeof from, "%s/init-hf/checkpoint.bin", dir);
        if (access(from, R_OK) != 0) {
            LOOM_CHECK(mkdtemp(tmp) != NULL, LOOM_ERR_IO, "cannot create a temporary directory for the base");
            LOOM_CALL(loom_hf_import(jb->string, tmp, NULL));
            snprintf(from, sizeof from, "%s", tmp);
            imported = 1;
        }
    }
    loom_run_ckpt *c = NULL;
    loom_status st = loom_run_ckpt_open(from, &c);
    if (st == LOOM_OK) st = loom_model_read_weights(m, c);
    loom_run_ckpt_close(&c);
    if (imported) {
        char p[PATH_MAX + 64];
        const char *const files[] = {"checkpoint.bin", "train-config.json"};
        for (int i = 0; i < 2; i++) {
            snprintf(p, sizeof p, "%s/%s", tmp, files[i]);
            (void)unlink(p);
        }
        (void)rmdir(tmp);
    }
    if (st != LOOM_OK) loom_error_trace(__FILE__, __LINE__, "loading the LoRA base named in the checkpoint");
    return st;
}

loom_status loom_checkpoint_load_model(const char *path, loom_precision precision, loom_backend *be, loom_comm *comm,
                                       loom_mem *mem, loom_model **model, loom_json **meta) {
    *model = NULL;
    *meta = NULL;
    loom_run_ckpt *c = NULL;
    loom_json *j = NULL;
    loom_model *m = NULL;
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_status st;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(path, &c), fail);
    /* the caller owns its copy of the metadata */
    LOOM_CALL_GOTO(st, loom_json_serialize(loom_run_ckpt_meta(c), &sb), fail);
    LOOM_CALL_GOTO(st, loom_json_parse(sb.buf, sb.len, &j), fail);
    loom_model_config mc;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(j, "model"), &mc), fail);
    loom_model_options mo = {.tp = comm, .precision = precision};
    const loom_json *lora = loom_json_get(j, "lora");
    float *adapters = NULL;
    int64_t n = 0;
    if (lora) LOOM_CALL_GOTO(st, loom_checkpoint_read_adapters(c, &mo.lora, &adapters, &n), fail);
    /* bf16 inference on the CPU: the weights (or a LoRA run's frozen base) held in bf16 only */
    if (precision == LOOM_PRECISION_BF16 && loom_backend_host_accessible(be)) {
        if (lora) mo.lora.base_bf16 = 1;
        else mo.weights_bf16 = 1;
    }
    st = loom_model_init(&mc, be, mem, &mo, &m);
    if (lora && st == LOOM_OK) { /* the base first, then the adapters: the flat parameters */
        st = load_lora_base(m, lora, loom_run_ckpt_path(c));
        if (st == LOOM_OK && n != loom_model_buffer_size(m))
            st = loom_error_set(LOOM_ERR_MISMATCH, __FILE__, __LINE__, __func__, "%s holds %lld floats of adapters, "
                                "its LoRA config needs %lld", loom_run_ckpt_path(c), (long long)n,
                                (long long)loom_model_buffer_size(m));
        if (st == LOOM_OK) st = loom_buf_upload(be, loom_model_params(m), adapters, (size_t)n * sizeof(float));
    }
    free(adapters);
    LOOM_CALL_GOTO(st, st, fail);
    if (!lora) {
        LOOM_CALL_GOTO(st, loom_model_read_weights(m, c), fail);
    }
    loom_run_ckpt_close(&c);
    loom_strbuf_free(&sb);
    *model = m;
    *meta = j;
    return LOOM_OK;
fail:
    loom_model_free(&m);
    loom_json_free(&j);
    loom_strbuf_free(&sb);
    loom_run_ckpt_close(&c);
    return st;
}
