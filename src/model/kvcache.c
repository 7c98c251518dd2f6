/* KV-cache decoding through the model's one forward (gpt.c's blocks): a prompt as one batched pass, then one
 * token at a time, the keys and values of past positions kept per layer, so a new token costs O(layers x
 * (params + position x width)) instead of a whole forward pass. While a cached forward runs, the forward asks
 * here for the positions' RoPE tables and for attention (the new keys and values appended, the queries against
 * the cache); its products run in the model's precision (bf16: the weights' bf16 copy). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

struct loom_kv_cache {
    int64_t max_len, pos;
    int decoding;               /* 1 while a cached forward runs (the model's forward reads it) */
    size_t bytes;
    float *mem;
    float *kv;                  /* [L][max_len][2 KV hd]: each position's key then value, as in a qkv row */
    float *cos_t, *sin_t;       /* (max_len, hd/2) */
};

void loom_kv_cache_free(loom_model *m) {
    if (!m->kv) return;
    loom_buf_free(m->be, m->mem, LOOM_MEM_WORKSPACE, m->kv->mem, m->kv->bytes);
    free(m->kv);
    m->kv = NULL;
}

loom_status loom_model_kv_reset(loom_model *m, int64_t max_len) {
    LOOM_CHECK(m->tp_size == 1 && m->sp_size == 1 && m->first && m->last && m->n_chunks == 1, LOOM_ERR_UNSUPPORTED,
               "generation runs on one rank holding the whole model (this one is cut over tp=%d, sp=%d, or a "
               "pipeline part); generate from its "
               "checkpoint", m->tp_size, m->sp_size);
    LOOM_CHECK(max_len >= 1 && max_len <= m->cfg.max_seq_len, LOOM_ERR_INVALID_ARG,
               "generation length %lld must be in [1, max_seq_len=%lld]", (long long)max_len,
               (long long)m->cfg.max_seq_len);
    if (!m->act_mem) LOOM_CALL(loom_model_reserve(m, 1, 1, LOOM_RECOMPUTE_NONE)); /* a step's activations */
    if (m->kv && m->kv->max_len >= max_len) {
        m->kv->pos = 0;
        return LOOM_OK;
    }
    loom_kv_cache_free(m);
    struct loom_kv_cache *kv = calloc(1, sizeof *kv);
    LOOM_CHECK(kv != NULL, LOOM_ERR_NOMEM, "out of memory");
    const int64_t L = m->cfg.n_layer, kvw = m->KV * m->hd, half = m->hd / 2;
    const int64_t cache = L * max_len * 2 * kvw, table = (max_len * half + 15) / 16 * 16;
    kv->bytes = (size_t)(cache + 2 * table) * sizeof(float);
    loom_status st = loom_buf_alloc(m->be, m->mem, LOOM_MEM_WORKSPACE, kv->bytes, (void **)&kv->mem);
    if (st != LOOM_OK) {
        free(kv);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    kv->kv = kv->mem;
    kv->cos_t = kv->mem + cache;
    kv->sin_t = kv->cos_t + table;
    kv->max_len = max_len;
    m->kv = kv;
    float *tab = malloc((size_t)(2 * max_len * half) * sizeof(float)); /* RoPE tables, in double */
    LOOM_CHECK(tab != NULL, LOOM_ERR_NOMEM, "out of memory");
    for (int64_t t = 0; t < max_len; t++)
        for (int64_t i = 0; i < half; i++) {
            double inv = pow(m->cfg.rope_theta, -2.0 * (double)i / (double)m->hd);
            tab[t * half + i] = (float)cos((double)t * inv);
            tab[(max_len + t) * half + i] = (float)sin((double)t * inv);
        }
    st = loom_buf_upload(m->be, kv->cos_t, tab, (size_t)(max_len * half) * sizeof(float));
    if (st == LOOM_OK) st = loom_buf_upload(m->be, kv->sin_t, tab + max_len * half, (size_t)(max_len * half) * sizeof(float));
    free(tab);
    return st;
}

int64_t loom_model_kv_position(const loom_model *m) { return m->kv ? m->kv->pos : 0; }

/* ---- what the model's forward asks while a cached forward runs (gpt.c) ---- */

int loom_kv_decoding(const loom_model *m) { return m->kv && m->kv->decoding; }
int64_t loom_kv_first_position(const loom_model *m) { return m->kv->pos; }

void loom_kv_rope_tables(const loom_model *m, const float **cos_t, const float **sin_t) {
    const int64_t half = m->hd / 2;
    *cos_t = m->kv->cos_t + m->kv->pos * half;
    *sin_t = m->kv->sin_t + m->kv->pos * half;
}

/* Layer l's attention for T new positions: their keys and values (after RoPE) appended to the cache, then
 * the queries against every cached position. Into an empty cache it is the training forward's causal
 * attention over the T tokens; after that one position at a time over the cache (attention_decode). */
loom_status loom_kv_attention(loom_model *m, int64_t l, int64_t T) {
    struct loom_kv_cache *kv = m->kv;
    layer_acts *a = &m->acts[l];
    const int64_t Ca = m->H * m->hd, kvw = m->KV * m->hd, pos = kv->pos;
    float *cache = kv->kv + l * kv->max_len * 2 * kvw;
    LOOM_CHECK(pos == 0 || T == 1, LOOM_ERR_UNSUPPORTED,
               "several new positions (%lld) after %lld cached ones: one at a time (loom_model_kv_prefill does)",
               (long long)T, (long long)pos);
    for (int64_t t = 0; t < T; t++) /* k|v lie side by side in a qkv row */
        LOOM_CALL(loom_buf_copy(m->be, cache + (pos + t) * 2 * kvw, a->qkv + t * m->Cq + Ca,
                                (size_t)(2 * kvw) * sizeof(float)));
    if (pos == 0)
        return loom_k_attention_forward(m->be, &(loom_attention_forward_args){.out = a->atty, .lse = a->lse,
                                        .qkv = a->qkv, .B = 1, .T = T, .H = m->H, .KV = m->KV, .hd = m->hd});
    return loom_k_attention_decode(m->be, &(loom_attention_decode_args){.out = a->atty, .q = a->qkv, .k = cache,
                                   .v = cache + kvw, .ld = 2 * kvw, .n = pos + 1, .H = m->H, .KV = m->KV,
                                   .hd = m->hd});
}

/* T tokens through the model's one forward with the cache (no parallel hooks: the sequence is this rank's
 * alone, with its parameters resident); the logits of the last go to host memory */
static loom_status cached_forward(loom_model *m, const int32_t *tokens, int64_t T, float *logits) {
    struct loom_kv_cache *kv = m->kv;
    LOOM_CHECK(kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before feeding tokens");
    LOOM_CHECK(kv->pos + T <= kv->max_len, LOOM_ERR_INVALID_ARG, "the sequence is full (%lld positions)",
               (long long)kv->max_len);
    for (int64_t i = 0; i < T; i++)
        LOOM_CHECK(tokens[i] >= 0 && tokens[i] < m->V, LOOM_ERR_INVALID_ARG,
                   "token %d is outside the vocabulary [0, %lld)", tokens[i], (long long)m->V);
    const loom_model_hooks hooks = m->hooks;
    memset(&m->hooks, 0, sizeof m->hooks);
    kv->decoding = 1;
    loom_status st = loom_model_forward(m, tokens, NULL, 1, T, NULL);
    kv->decoding = 0;
    m->hooks = hooks;
    LOOM_CALL(st);
    kv->pos += T;
    return loom_buf_download(m->be, logits, m->logits, (size_t)m->V * sizeof(float));
}

loom_status loom_model_kv_step(loom_model *m, int32_t token, float *logits) {
    return cached_forward(m, &token, 1, logits);
}

loom_status loom_model_kv_prefill(loom_model *m, const int32_t *tokens, int64_t n, float *logits) {
    LOOM_CHECK(m->kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before loom_model_kv_prefill");
    LOOM_CHECK(n >= 1, LOOM_ERR_INVALID_ARG, "a prefill needs at least one token");
    /* one pass where the activations allow it: an inference model reserves them, a training model's
     * (sampling between steps) are used only as far as they reach */
    const int fits = m->act_mem && m->cap_B >= 1 && m->cap_T >= n;
    if (m->kv->pos == 0 && (fits || !m->has_grads)) {
        if (!fits) LOOM_CALL(loom_model_reserve(m, 1, n, LOOM_RECOMPUTE_NONE));
        return cached_forward(m, tokens, n, logits);
    }
    for (int64_t i = 0; i < n; i++) LOOM_CALL(cached_forward(m, tokens + i, 1, logits));
    return LOOM_OK;
}
