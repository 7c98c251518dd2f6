/* A model from a training checkpoint (either layout), for generation and export (include/loom/run.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/ckpt.h"
#include "loom/run.h"

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
    const loom_model_options mo = {.tp = comm, .precision = precision};
    LOOM_CALL_GOTO(st, loom_model_init(&mc, be, mem, &mo, &m), fail);
    const int64_t n = loom_model_buffer_size(m);
    LOOM_CHECK_GOTO(st, loom_run_ckpt_size(c) == n, LOOM_ERR_MISMATCH, fail,
                    "%s holds %lld floats of parameters, its model config needs %lld", loom_run_ckpt_path(c),
                    (long long)loom_run_ckpt_size(c), (long long)n);
    if (loom_backend_host_accessible(be)) {
        LOOM_CALL_GOTO(st, loom_run_ckpt_read(c, "params", 0, n, loom_model_params(m)), fail);
    } else { /* read on the host, then into the backend's buffer */
        float *host = malloc((size_t)n * sizeof(float));
        LOOM_CHECK_GOTO(st, host != NULL, LOOM_ERR_NOMEM, fail, "out of memory");
        st = loom_run_ckpt_read(c, "params", 0, n, host);
        if (st == LOOM_OK) st = loom_buf_upload(be, loom_model_params(m), host, (size_t)n * sizeof(float));
        free(host);
        LOOM_CALL_GOTO(st, st, fail);
    }
    LOOM_CALL_GOTO(st, loom_model_refresh_low_precision(m), fail);
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
