/* KV-cache decoding: one token at a time through every block, keys and values of past positions kept per
 * layer, so a new token costs O(layers x (params + position x width)) instead of a whole forward pass.
 * It reuses the training kernels with one row (N = 1), and attention over the cache (attention_decode); its
 * products run in the model's precision (bf16: the weights' bf16 copy, half the bytes a token reads). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

struct loom_kv_cache {
    int64_t max_len, pos;
    size_t bytes;
    float *mem;
    float *k, *v;               /* [L][max_len][KV*hd] */
    float *x, *ln, *qkv, *att, *res, *fc, *act, *logits, *stat;
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
    if (m->kv && m->kv->max_len >= max_len) {
        m->kv->pos = 0;
        return LOOM_OK;
    }
    loom_kv_cache_free(m);
    struct loom_kv_cache *kv = calloc(1, sizeof *kv);
    LOOM_CHECK(kv != NULL, LOOM_ERR_NOMEM, "out of memory");
    const int64_t L = m->cfg.n_layer, C = m->C, kvw = m->KV * m->hd, F = m->F, half = m->hd / 2;
    const int64_t fcw = m->cfg.family == LOOM_FAMILY_GPT2 ? F : 2 * F;
    int64_t sizes[] = {L * max_len * kvw, L * max_len * kvw, C, C, m->Cq, C, C, fcw, F, m->V, 4,
                       max_len * half, max_len * half};
    float **ptrs[] = {&kv->k, &kv->v, &kv->x, &kv->ln, &kv->qkv, &kv->att, &kv->res, &kv->fc, &kv->act,
                      &kv->logits, &kv->stat, &kv->cos_t, &kv->sin_t};
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] + 15) / 16 * 16;
    kv->bytes = (size_t)total * sizeof(float);
    loom_status st = loom_buf_alloc(m->be, m->mem, LOOM_MEM_WORKSPACE, kv->bytes, (void **)&kv->mem);
    if (st != LOOM_OK) {
        free(kv);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    float *cur = kv->mem;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *ptrs[i] = cur;
        cur += (sizes[i] + 15) / 16 * 16;
    }
    kv->max_len = max_len;
    m->kv = kv;
    LOOM_CALL(loom_model_lowp_scratch(m, 1)); /* bf16: one row's operands */
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

#define P(off) (m->params + (off))
#define P_OPT(off) ((off) >= 0 ? m->params + (off) : NULL)

loom_status loom_model_kv_step(loom_model *m, int32_t token, float *logits) {
    struct loom_kv_cache *kv = m->kv;
    LOOM_CHECK(kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before loom_model_kv_step");
    LOOM_CHECK(kv->pos < kv->max_len, LOOM_ERR_INVALID_ARG, "the sequence is full (%lld positions)",
               (long long)kv->max_len);
    LOOM_CHECK(token >= 0 && token < m->V, LOOM_ERR_INVALID_ARG, "token %d is outside the vocabulary [0, %lld)",
               token, (long long)m->V);
    loom_backend *be = m->be;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t C = m->C, Cq = m->Cq, F = m->F, Ca = m->H * m->hd, kvw = m->KV * m->hd, pos = kv->pos, half = m->hd / 2;
    const int64_t fcw = gpt ? F : 2 * F;
    const float eps = (float)m->cfg.norm_eps;
    LOOM_CALL(loom_buf_copy(be, kv->x, P(m->off_wte) + (int64_t)token * C, (size_t)C * sizeof(float)));
    if (gpt) LOOM_CALL(loom_k_add(be, &(loom_add_args){.out = kv->x, .a = kv->x, .b = P(m->off_wpe) + pos * C, .n = C}));
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        const int64_t *lo = m->layer_off + l * W_COUNT;
        if (gpt) LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = kv->ln, .inp = kv->x, .w = P(lo[W_LN1_W]), .b = P_OPT(lo[W_LN1_B]), .N = 1, .C = C, .eps = eps}));
        else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = kv->ln, .inp = kv->x, .w = P(lo[W_LN1_W]), .N = 1, .C = C, .eps = eps}));
        LOOM_CALL(loom_model_product(m, &(loom_gemm){.trans_a = 0, .trans_b = 1, .M = 1, .N = Cq, .K = C, .alpha = 1.0f, .A = kv->ln, .lda = C, .B = P(lo[W_QKV_W]), .ldb = C, .beta = 0.0f, .C = kv->qkv, .ldc = Cq}));
        if (lo[W_QKV_B] >= 0) LOOM_CALL(loom_k_bias_add(be, &(loom_bias_add_args){.x = kv->qkv, .bias = P(lo[W_QKV_B]), .N = 1, .C = Cq}));
        if (!gpt) LOOM_CALL(loom_k_rope(be, &(loom_rope_args){.qkv = kv->qkv, .cos_t = kv->cos_t + pos * half, .sin_t = kv->sin_t + pos * half, .B = 1, .T = 1, .H = m->H, .KV = m->KV, .hd = m->hd, .inverse = 0}));
        float *K = kv->k + l * kv->max_len * kvw, *V = kv->v + l * kv->max_len * kvw;
        LOOM_CALL(loom_buf_copy(be, K + pos * kvw, kv->qkv + Ca, (size_t)kvw * sizeof(float)));
        LOOM_CALL(loom_buf_copy(be, V + pos * kvw, kv->qkv + Ca + kvw, (size_t)kvw * sizeof(float)));
        LOOM_CALL(loom_k_attention_decode(be, &(loom_attention_decode_args){.out = kv->att, .q = kv->qkv, .k = K, .v = V,
                                          .ld = kvw, .n = pos + 1, .H = m->H, .KV = m->KV, .hd = m->hd}));
        LOOM_CALL(loom_buf_copy(be, kv->res, kv->x, (size_t)C * sizeof(float)));
        LOOM_CALL(loom_model_product(m, &(loom_gemm){.trans_a = 0, .trans_b = 1, .M = 1, .N = C, .K = Ca, .alpha = 1.0f, .A = kv->att, .lda = Ca, .B = P(lo[W_ATTN_PROJ_W]), .ldb = Ca, .beta = 1.0f, .C = kv->res, .ldc = C}));
        if (lo[W_ATTN_PROJ_B] >= 0) LOOM_CALL(loom_k_bias_add(be, &(loom_bias_add_args){.x = kv->res, .bias = P(lo[W_ATTN_PROJ_B]), .N = 1, .C = C}));
        if (gpt) LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = kv->ln, .inp = kv->res, .w = P(lo[W_LN2_W]), .b = P_OPT(lo[W_LN2_B]), .N = 1, .C = C, .eps = eps}));
        else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = kv->ln, .inp = kv->res, .w = P(lo[W_LN2_W]), .N = 1, .C = C, .eps = eps}));
        LOOM_CALL(loom_model_product(m, &(loom_gemm){.trans_a = 0, .trans_b = 1, .M = 1, .N = fcw, .K = C, .alpha = 1.0f, .A = kv->ln, .lda = C, .B = P(lo[W_FC_W]), .ldb = C, .beta = 0.0f, .C = kv->fc, .ldc = fcw}));
        const int exact = m->cfg.gelu == LOOM_GELU_ERF;
        if (gpt && lo[W_FC_B] >= 0) LOOM_CALL(loom_k_bias_gelu_forward(be, &(loom_bias_gelu_forward_args){.pre = kv->fc, .out = kv->act, .bias = P(lo[W_FC_B]), .N = 1, .F = F, .exact = exact}));
        else if (gpt) LOOM_CALL(loom_k_gelu_forward(be, &(loom_gelu_forward_args){.out = kv->act, .inp = kv->fc, .n = F, .exact = exact})); /* bias = 0 */
        else LOOM_CALL(loom_k_swiglu_forward(be, &(loom_swiglu_forward_args){.out = kv->act, .gu = kv->fc, .N = 1, .F = F}));
        LOOM_CALL(loom_buf_copy(be, kv->x, kv->res, (size_t)C * sizeof(float)));
        LOOM_CALL(loom_model_product(m, &(loom_gemm){.trans_a = 0, .trans_b = 1, .M = 1, .N = C, .K = F, .alpha = 1.0f, .A = kv->act, .lda = F, .B = P(lo[W_MLP_PROJ_W]), .ldb = F, .beta = 1.0f, .C = kv->x, .ldc = C}));
        if (lo[W_MLP_PROJ_B] >= 0) LOOM_CALL(loom_k_bias_add(be, &(loom_bias_add_args){.x = kv->x, .bias = P(lo[W_MLP_PROJ_B]), .N = 1, .C = C}));
    }
    if (gpt) LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = kv->ln, .inp = kv->x, .w = P(m->off_lnf_w), .b = P_OPT(m->off_lnf_b), .N = 1, .C = C, .eps = eps}));
    else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = kv->ln, .inp = kv->x, .w = P(m->off_lnf_w), .N = 1, .C = C, .eps = eps}));
    LOOM_CALL(loom_model_product(m, &(loom_gemm){.trans_a = 0, .trans_b = 1, .M = 1, .N = m->V, .K = C, .alpha = 1.0f, .A = kv->ln, .lda = C, .B = P(m->off_head), .ldb = C, .beta = 0.0f, .C = kv->logits, .ldc = m->V}));
    kv->pos++;
    return loom_buf_download(be, logits, kv->logits, (size_t)m->V * sizeof(float));
}

loom_status loom_model_kv_prefill(loom_model *m, const int32_t *tokens, int64_t n, float *logits) {
    struct loom_kv_cache *kv = m->kv;
    LOOM_CHECK(kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before loom_model_kv_prefill");
    LOOM_CHECK(n >= 1 && kv->pos + n <= kv->max_len, LOOM_ERR_INVALID_ARG,
               "%lld prompt tokens do not fit the sequence (%lld of %lld positions used)", (long long)n,
               (long long)kv->pos, (long long)kv->max_len);
    if (n == 1 || kv->pos != 0 || m->has_grads) { /* token by token */
        for (int64_t i = 0; i < n; i++) LOOM_CALL(loom_model_kv_step(m, tokens[i], logits));
        return LOOM_OK;
    }
    for (int64_t i = 0; i < n; i++)
        LOOM_CHECK(tokens[i] >= 0 && tokens[i] < m->V, LOOM_ERR_INVALID_ARG,
                   "token %d is outside the vocabulary [0, %lld)", tokens[i], (long long)m->V);
    LOOM_CALL(loom_model_reserve(m, 1, n, LOOM_RECOMPUTE_NONE));
    LOOM_CALL(loom_model_forward(m, tokens, NULL, 1, n, NULL));
    /* each layer's keys and values (after RoPE, as kv_step stores them) from its qkv rows into the cache */
    const int64_t Ca = m->H * m->hd, kvw = m->KV * m->hd;
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        const float *qkv = m->acts[l].qkv;
        float *K = kv->k + l * kv->max_len * kvw, *V = kv->v + l * kv->max_len * kvw;
        for (int64_t t = 0; t < n; t++) {
            LOOM_CALL(loom_buf_copy(m->be, K + t * kvw, qkv + t * m->Cq + Ca, (size_t)kvw * sizeof(float)));
            LOOM_CALL(loom_buf_copy(m->be, V + t * kvw, qkv + t * m->Cq + Ca + kvw, (size_t)kvw * sizeof(float)));
        }
    }
    kv->pos = n;
    return loom_buf_download(m->be, logits, m->logits + (n - 1) * m->V, (size_t)m->V * sizeof(float));
}
