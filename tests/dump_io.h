/* The record writer of the dump files tests/torch_ref.py and tests/test_lora.py read: u32 name length, the
 * name, u32 dtype (0 f32, 1 i32, 2 utf-8 text), u32 ndim, i64 shape[ndim], the raw data, little endian. */
#ifndef LOOM_TESTS_DUMP_IO_H
#define LOOM_TESTS_DUMP_IO_H
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "loom/model.h"

static inline void put(FILE *f, const char *name, uint32_t dtype, int ndim, const int64_t *shape, const void *data,
                       size_t elem) {
    uint32_t nl = (uint32_t)strlen(name), nd = (uint32_t)ndim;
    fwrite(&nl, 4, 1, f);
    fwrite(name, 1, nl, f);
    fwrite(&dtype, 4, 1, f);
    fwrite(&nd, 4, 1, f);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        fwrite(&shape[i], 8, 1, f);
        n *= (size_t)shape[i];
    }
    fwrite(data, elem, n, f);
}

/* The reference tests' small model: 2 blocks of width 64 (LLaMA: 2 key/value heads), init std 0.1, larger
 * than training's 0.02 so that every path carries signal. */
static inline int small_config(int llama, loom_model_config *c) {
    if (loom_model_config_preset(llama ? "llama-tiny" : "demo", c) != LOOM_OK) return 1;
    c->n_layer = 2;
    c->n_head = 4;
    c->n_kv_head = llama ? 2 : 4;
    c->d_model = 64;
    c->d_ff = llama ? 96 : 256;
    c->vocab_size = llama ? 101 : 97;
    c->max_seq_len = 32;
    c->init_std = 0.1;
    return 0;
}

/* The "config" record: the model config, the batch shape and AdamW's settings, then `extra` (more JSON
 * members, each led by a comma). */
static inline void put_config(FILE *f, const loom_model_config *c, int64_t B, int64_t T, double lr, double b1,
                              double b2, double eps, double wd, const char *extra) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"family\":\"%s\",\"n_layer\":%lld,\"n_head\":%lld,\"n_kv_head\":%lld,\"d_model\":%lld,\"d_ff\":%lld,"
             "\"vocab_size\":%lld,\"max_seq_len\":%lld,\"norm_eps\":%.17g,\"rope_theta\":%.17g,"
             "\"tie_embeddings\":%s,\"bias\":%s,\"gelu\":\"%s\",\"B\":%lld,\"T\":%lld,\"lr\":%.17g,\"beta1\":%.17g,"
             "\"beta2\":%.17g,\"eps\":%.17g,\"weight_decay\":%.17g%s}",
             loom_family_name(c->family), (long long)c->n_layer, (long long)c->n_head, (long long)c->n_kv_head,
             (long long)c->d_model, (long long)c->d_ff, (long long)c->vocab_size, (long long)c->max_seq_len,
             c->norm_eps, c->rope_theta, c->tie_embeddings ? "true" : "false", c->bias ? "true" : "false",
             c->gelu == LOOM_GELU_ERF ? "erf" : "tanh", (long long)B, (long long)T, lr, b1, b2, eps, wd, extra);
    int64_t len = (int64_t)strlen(json);
    put(f, "config", 2, 1, &len, json, 1);
}
#endif
