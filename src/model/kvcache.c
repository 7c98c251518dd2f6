/* KV-cache decoding: one token at a time through every block, keys and values of past positions kept per
 * layer, so a new token costs O(layers x (params + position x width)) instead of a whole forward pass.
 * It reuses the training kernels with one row (N = 1); only attention over the cache is written here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

struct loom_kv_cache {
    int64_t max_len, pos;
    size_t bytes;
    float *mem;
    float *k, *v;               /* [L][max_len][KV*hd] */
    float *x, *ln, *qkv, *att, *res, *fc, *act, *logits, *stat, *scores;
    float *cos_t, *sin_t;       /* (max_len, hd/2) */
};

void loom_kv_cache_free(loom_model *m) {
    if (!m->kv) return;
    loom_mem_free(m->mem, LOOM_MEM_WORKSPACE, m->kv->mem, m->kv->bytes);
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
    int64_t sizes[] = {L * max_len * kvw, L * max_len * kvw, C, C, m->Cq, C, C, fcw, F, m->V, 4, max_len,
                       max_len * half, max_len * half};
    float **ptrs[] = {&kv->k, &kv->v, &kv->x, &kv->ln, &kv->qkv, &kv->att, &kv->res, &kv->fc, &kv->act,
                      &kv->logits, &kv->stat, &kv->scores, &kv->cos_t, &kv->sin_t};
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] + 15) / 16 * 16;
    kv->bytes = (size_t)total * sizeof(float);
    loom_status st = loom_mem_alloc(m->mem, LOOM_MEM_WORKSPACE, kv->bytes, (void **)&kv->mem);
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
    for (int64_t t = 0; t < max_len; t++)
        for (int64_t i = 0; i < half; i++) {
            double inv = pow(m->cfg.rope_theta, -2.0 * (double)i / (double)m->hd);
            kv->cos_t[t * half + i] = (float)cos((double)t * inv);
            kv->sin_t[t * half + i] = (float)sin((double)t * inv);
        }
    kv->max_len = max_len;
    m->kv = kv;
    return LOOM_OK;
}

int64_t loom_model_kv_position(const loom_model *m) { return m->kv ? m->kv->pos : 0; }

/* att (H*hd) for the newest position: each query head against its kv head's cached keys 0..pos. */
static void cached_attention(loom_model *m, int64_t l) {
    struct loom_kv_cache *kv = m->kv;
    const int64_t H = m->H, KVh = m->KV, hd = m->hd, group = H / KVh, kvw = KVh * hd, n = kv->pos + 1;
    const float *K = kv->k + l * kv->max_len * kvw, *V = kv->v + l * kv->max_len * kvw;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t h = 0; h < H; h++) {
        const float *q = kv->qkv + h * hd;
        const int64_t off = (h / group) * hd;
        float *s = kv->scores, mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            const float *k = K + j * kvw + off;
            float d = 0.0f;
            for (int64_t i = 0; i < hd; i++) d += q[i] * k[i];
            s[j] = d * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        float *o = kv->att + h * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int64_t j = 0; j < n; j++) {
            const float *v = V + j * kvw + off, w = s[j] / sum;
            for (int64_t i = 0; i < hd; i++) o[i] += w * v[i];
        }
    }
}

#define P(off) (m->params + (off))
#define P_OPT(off) ((off) >= 0 ? m->params + (off) : NULL)

loom_status loom_model_kv_step(loom_model *m, int32_t token, const float **logits) {
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
    memcpy(kv->x, P(m->off_wte) + (int64_t)token * C, (size_t)C * sizeof(float));
    if (gpt) loom_k_add(be, kv->x, kv->x, P(m->off_wpe) + pos * C, C);
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        const int64_t *lo = m->layer_off + l * W_COUNT;
        if (gpt) loom_k_layernorm_forward(be, kv->ln, NULL, NULL, kv->x, P(lo[W_LN1_W]), P_OPT(lo[W_LN1_B]), 1, C, eps);
        else loom_k_rmsnorm_forward(be, kv->ln, NULL, kv->x, P(lo[W_LN1_W]), 1, C, eps);
        loom_k_matmul(be, 0, 1, 1, Cq, C, 1.0f, kv->ln, C, P(lo[W_QKV_W]), C, 0.0f, kv->qkv, Cq);
        if (lo[W_QKV_B] >= 0) loom_k_bias_add(be, kv->qkv, P(lo[W_QKV_B]), 1, Cq);
        if (!gpt) loom_k_rope(be, kv->qkv, kv->cos_t + pos * half, kv->sin_t + pos * half, 1, 1, m->H, m->KV, m->hd, 0);
        memcpy(kv->k + (l * kv->max_len + pos) * kvw, kv->qkv + Ca, (size_t)kvw * sizeof(float));
        memcpy(kv->v + (l * kv->max_len + pos) * kvw, kv->qkv + Ca + kvw, (size_t)kvw * sizeof(float));
        cached_attention(m, l);
        memcpy(kv->res, kv->x, (size_t)C * sizeof(float));
        loom_k_matmul(be, 0, 1, 1, C, Ca, 1.0f, kv->att, Ca, P(lo[W_ATTN_PROJ_W]), Ca, 1.0f, kv->res, C);
        if (lo[W_ATTN_PROJ_B] >= 0) loom_k_bias_add(be, kv->res, P(lo[W_ATTN_PROJ_B]), 1, C);
        if (gpt) loom_k_layernorm_forward(be, kv->ln, NULL, NULL, kv->res, P(lo[W_LN2_W]), P_OPT(lo[W_LN2_B]), 1, C, eps);
        else loom_k_rmsnorm_forward(be, kv->ln, NULL, kv->res, P(lo[W_LN2_W]), 1, C, eps);
        loom_k_matmul(be, 0, 1, 1, fcw, C, 1.0f, kv->ln, C, P(lo[W_FC_W]), C, 0.0f, kv->fc, fcw);
        const int exact = m->cfg.gelu == LOOM_GELU_ERF;
        if (gpt && lo[W_FC_B] >= 0) loom_k_bias_gelu_forward(be, kv->fc, kv->act, P(lo[W_FC_B]), 1, F, exact);
        else if (gpt) loom_k_gelu_forward(be, kv->act, kv->fc, F, exact); /* bias = 0 */
        else loom_k_swiglu_forward(be, kv->act, kv->fc, 1, F);
        memcpy(kv->x, kv->res, (size_t)C * sizeof(float));
        loom_k_matmul(be, 0, 1, 1, C, F, 1.0f, kv->act, F, P(lo[W_MLP_PROJ_W]), F, 1.0f, kv->x, C);
        if (lo[W_MLP_PROJ_B] >= 0) loom_k_bias_add(be, kv->x, P(lo[W_MLP_PROJ_B]), 1, C);
    }
    if (gpt) loom_k_layernorm_forward(be, kv->ln, NULL, NULL, kv->x, P(m->off_lnf_w), P_OPT(m->off_lnf_b), 1, C, eps);
    else loom_k_rmsnorm_forward(be, kv->ln, NULL, kv->x, P(m->off_lnf_w), 1, C, eps);
    loom_k_matmul(be, 0, 1, 1, m->V, C, 1.0f, kv->ln, C, P(m->off_head), C, 0.0f, kv->logits, m->V);
    kv->pos++;
    *logits = kv->logits;
    return LOOM_OK;
}
