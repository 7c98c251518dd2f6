/* Model configs: presets, validation, parameter and FLOP counts. */
#include <string.h>

#include "loom/model.h"

static const char *const preset_names[] = {"demo", "gpt2-124m", "gpt2-350m", "gpt2-l6", "llama-tiny",
                                           "llama-l6", "nanogpt-char", "gpt3-175b", "llama2-70b", NULL};

const char *const *loom_model_preset_names(void) { return preset_names; }

const char *loom_family_name(loom_family f) { return f == LOOM_FAMILY_LLAMA ? "llama" : "gpt2"; }

static loom_model_config gpt2(int64_t L, int64_t H, int64_t C) {
    loom_model_config c;
    memset(&c, 0, sizeof c);
    c.family = LOOM_FAMILY_GPT2;
    c.n_layer = L;
    c.n_head = H;
    c.n_kv_head = H;
    c.d_model = C;
    c.d_ff = 4 * C;
    c.vocab_size = 50257;
    c.max_seq_len = 1024;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.tie_embeddings = 1;
    c.bias = 1;
    c.init_std = 0.02;
    return c;
}

static loom_model_config llama(int64_t L, int64_t H, int64_t KV, int64_t C, int64_t F) {
    loom_model_config c = gpt2(L, H, C);
    c.family = LOOM_FAMILY_LLAMA;
    c.n_kv_head = KV;
    c.d_ff = F;
    c.vocab_size = 32000;
    c.max_seq_len = 2048;
    c.tie_embeddings = 0;
    c.bias = 0;
    return c;
}

loom_status loom_model_config_preset(const char *name, loom_model_config *out) {
    if (strcmp(name, "demo") == 0) {
        /* byte-level, small enough to learn visibly in a minute on two cores */
        *out = gpt2(4, 4, 128);
        out->vocab_size = 256;
        out->max_seq_len = 256;
    } else if (strcmp(name, "gpt2-124m") == 0) *out = gpt2(12, 12, 768);
    else if (strcmp(name, "gpt2-350m") == 0) *out = gpt2(24, 16, 1024);
    else if (strcmp(name, "gpt2-l6") == 0) *out = gpt2(6, 6, 384);
    else if (strcmp(name, "llama-tiny") == 0) *out = llama(4, 8, 4, 256, 704);
    else if (strcmp(name, "llama-l6") == 0) *out = llama(6, 6, 2, 384, 1024);
    else if (strcmp(name, "gpt3-175b") == 0) { /* GPT-3 (Brown et al. 2020, table 2.1): for planning at scale */
        *out = gpt2(96, 96, 12288);
        out->max_seq_len = 2048;
    } else if (strcmp(name, "llama2-70b") == 0) { /* Llama 2 70B (grouped-query attention, 8 KV heads) */
        *out = llama(80, 64, 8, 8192, 28672);
        out->max_seq_len = 4096;
    }
    else if (strcmp(name, "nanogpt-char") == 0) {
        /* nanoGPT's CPU recipe for character-level Tiny Shakespeare (65 characters, context 64) */
        *out = gpt2(4, 4, 128);
        out->vocab_size = 65;
        out->max_seq_len = 64;
        out->bias = 0;                /* nanoGPT's train.py: bias = False (no bias in Linear or LayerNorm) */
        out->gelu = LOOM_GELU_ERF;    /* its MLP: nn.GELU(), the exact form */
    }
    else {
        char list[256] = "";
        for (int i = 0; preset_names[i]; i++) {
            strcat(list, i ? ", " : "");
            strcat(list, preset_names[i]);
        }
        return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__,
                              "unknown preset '%s' (known: %s)", name, list);
    }
    return LOOM_OK;
}

loom_status loom_model_config_validate(const loom_model_config *c) {
    LOOM_CHECK(c->family == LOOM_FAMILY_GPT2 || c->family == LOOM_FAMILY_LLAMA, LOOM_ERR_CONFIG,
               "model.family must be gpt2 or llama");
    LOOM_CHECK(c->n_layer >= 1 && c->n_layer <= 1024, LOOM_ERR_CONFIG, "model.n_layer must be in [1, 1024], got %lld",
               (long long)c->n_layer);
    LOOM_CHECK(c->n_head >= 1, LOOM_ERR_CONFIG, "model.n_head must be >= 1, got %lld", (long long)c->n_head);
    LOOM_CHECK(c->d_model >= 1 && c->d_model <= (1 << 20), LOOM_ERR_CONFIG,
               "model.d_model must be in [1, 2^20], got %lld", (long long)c->d_model);
    LOOM_CHECK(c->d_model % c->n_head == 0, LOOM_ERR_CONFIG,
               "model.d_model (%lld) must be divisible by model.n_head (%lld)", (long long)c->d_model,
               (long long)c->n_head);
    LOOM_CHECK(c->n_kv_head >= 1 && c->n_head % c->n_kv_head == 0, LOOM_ERR_CONFIG,
               "model.n_head (%lld) must be a multiple of model.n_kv_head (%lld)", (long long)c->n_head,
               (long long)c->n_kv_head);
    LOOM_CHECK(c->family == LOOM_FAMILY_LLAMA || c->n_kv_head == c->n_head, LOOM_ERR_CONFIG,
               "gpt2 models have n_kv_head == n_head (got %lld and %lld)", (long long)c->n_kv_head,
               (long long)c->n_head);
    LOOM_CHECK(c->family == LOOM_FAMILY_GPT2 || (c->d_model / c->n_head) % 2 == 0, LOOM_ERR_CONFIG,
               "RoPE needs an even head dimension, got %lld", (long long)(c->d_model / c->n_head));
    LOOM_CHECK(c->d_ff >= 1 && c->d_ff <= (1 << 22), LOOM_ERR_CONFIG, "model.d_ff must be in [1, 2^22], got %lld",
               (long long)c->d_ff);
    LOOM_CHECK(c->vocab_size >= 2 && c->vocab_size <= (1 << 24), LOOM_ERR_CONFIG,
               "model.vocab_size must be in [2, 2^24], got %lld", (long long)c->vocab_size);
    LOOM_CHECK(c->max_seq_len >= 1 && c->max_seq_len <= (1 << 20), LOOM_ERR_CONFIG,
               "model.max_seq_len must be in [1, 2^20], got %lld", (long long)c->max_seq_len);
    LOOM_CHECK(c->norm_eps > 0 && c->norm_eps < 1, LOOM_ERR_CONFIG, "model.norm_eps must be in (0, 1), got %g",
               c->norm_eps);
    LOOM_CHECK(c->rope_theta > 1, LOOM_ERR_CONFIG, "model.rope_theta must be > 1, got %g", c->rope_theta);
    LOOM_CHECK(c->init_std > 0 && c->init_std < 10, LOOM_ERR_CONFIG, "model.init_std must be in (0, 10), got %g",
               c->init_std);
    LOOM_CHECK(c->family == LOOM_FAMILY_LLAMA || c->tie_embeddings, LOOM_ERR_CONFIG,
               "gpt2 models tie the head to the token embedding (model.tie_embeddings must be true)");
    return LOOM_OK;
}

int64_t loom_model_config_num_params(const loom_model_config *c) {
    int64_t C = c->d_model, hd = C / c->n_head, Cq = (c->n_head + 2 * c->n_kv_head) * hd, F = c->d_ff;
    int64_t per_layer, n = c->vocab_size * C;
    if (c->family == LOOM_FAMILY_GPT2) {
        const int64_t b = c->bias ? 1 : 0; /* bias = 0: none in linears or LayerNorms */
        n += c->max_seq_len * C + (1 + b) * C;
        per_layer = (1 + b) * C + Cq * C + b * Cq + C * C + b * C + (1 + b) * C + F * C + b * F + C * F + b * C;
    } else {
        n += C + (c->tie_embeddings ? 0 : c->vocab_size * C);
        per_layer = C + Cq * C + C * (c->n_head * hd) + C + 2 * F * C + C * F;
    }
    return n + c->n_layer * per_layer;
}

/* The tables that are only looked up, never multiplied: GPT-2's positions, and an untied model's input
 * embedding (a tied one is also the head, a product over the vocabulary). */
static int64_t lookup_only_params(const loom_model_config *c) {
    if (c->family == LOOM_FAMILY_GPT2) return c->max_seq_len * c->d_model;
    return c->tie_embeddings ? 0 : c->vocab_size * c->d_model;
}

int64_t loom_model_config_product_params(const loom_model_config *c) {
    return loom_model_config_num_params(c) - lookup_only_params(c);
}

double loom_model_config_flops_per_token(const loom_model_config *c, int64_t T) {
    return 6.0 * (double)loom_model_config_product_params(c) +
           12.0 * (double)c->n_layer * (double)c->d_model * (double)T;
}
