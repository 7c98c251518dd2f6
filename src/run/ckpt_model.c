/* A model from a training checkpoint, for generation and export (include/loom/run.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/ckpt.h"
#include "loom/run.h"

loom_status loom_checkpoint_load_model(const char *path, loom_backend *be, loom_comm *comm, loom_mem *mem,
                                       loom_model **model, loom_json **meta) {
    *model = NULL;
    *meta = NULL;
    char file[LOOM_PATH_MAX + 32];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(file, sizeof file, "%s/checkpoint.bin", path);
    else snprintf(file, sizeof file, "%s", path);
    loom_ckpt_reader *r = NULL;
    char *text = NULL;
    loom_json *j = NULL;
    loom_model *m = NULL;
    loom_status st;
    LOOM_CALL_GOTO(st, loom_ckpt_open(file, &r), fail);
    LOOM_CALL_GOTO(st, loom_ckpt_read_text(r, "meta", &text), fail);
    LOOM_CALL_GOTO(st, loom_json_parse(text, strlen(text), &j), fail);
    const loom_json *fmt = loom_json_get(j, "format");
    LOOM_CHECK_GOTO(st, fmt && fmt->type == LOOM_JSON_STRING && !strcmp(fmt->string, "loom.train"), LOOM_ERR_FORMAT,
                    fail, "%s is not a loom training checkpoint", file);
    loom_model_config mc;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(j, "model"), &mc), fail);
    LOOM_CALL_GOTO(st, loom_model_init(&mc, be, comm, mem, 0, &m), fail);
    LOOM_CALL_GOTO(st, loom_ckpt_read(r, "params", loom_model_params(m),
                                      loom_model_buffer_size(m) * (int64_t)sizeof(float)), fail);
    loom_ckpt_close(&r);
    free(text);
    *model = m;
    *meta = j;
    return LOOM_OK;
fail:
    loom_model_free(&m);
    loom_json_free(&j);
    free(text);
    loom_ckpt_close(&r);
    return st;
}
