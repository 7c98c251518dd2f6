/* A model from a training checkpoint (either layout), for generation and export (include/loom/run.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/ckpt.h"
#include "loom/run.h"

loom_status loom_checkpoint_load_model(const char *path, loom_backend *be, loom_comm *comm, loom_mem *mem,
                                       loom_model **model, loom_json **meta) {
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
    LOOM_CALL_GOTO(st, loom_model_init(&mc, be, comm, mem, 0, &m), fail);
    LOOM_CHECK_GOTO(st, loom_run_ckpt_size(c) == loom_model_buffer_size(m), LOOM_ERR_MISMATCH, fail,
                    "%s holds %lld floats of parameters, its model config needs %lld", loom_run_ckpt_path(c),
                    (long long)loom_run_ckpt_size(c), (long long)loom_model_buffer_size(m));
    LOOM_CALL_GOTO(st, loom_run_ckpt_read(c, "params", 0, loom_model_buffer_size(m), loom_model_params(m)), fail);
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
