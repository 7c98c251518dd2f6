/* Sampling with temperature, top-k and top-p over the KV-cache decoder (include/loom/generate.h). */
#include "loom/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/log.h"

loom_sample_config loom_sample_config_default(void) {
    loom_sample_config c;
    memset(&c, 0, sizeof c);
    c.temperature = 0.8;
    c.top_k = 0;
    c.top_p = 1.0;
    c.seed = 1337;
    c.max_tokens = 200;
    c.stop_at_eot = 1;
    return c;
}

static int cmp_desc(const void *a, const void *b) {
    float x = ((const float *)a)[0], y = ((const float *)b)[0];
    if (x != y) return x < y ? 1 : -1;
    float i = ((const float *)a)[1], j = ((const float *)b)[1];
    return i < j ? -1 : (i > j); /* ties: lower id first, deterministic */
}

int32_t loom_sample_token(const float *logits, int64_t V, const loom_sample_config *sc, loom_rng *rng, float *scratch) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (sc->temperature <= 0) return (int32_t)best;
    /* (probability, id) pairs, sorted by probability when a filter needs the order */
    const double inv_t = 1.0 / sc->temperature;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) {
        double p = exp(((double)logits[i] - (double)logits[best]) * inv_t);
        scratch[2 * i] = (float)p;
        scratch[2 * i + 1] = (float)i;
        sum += p;
    }
    int64_t n = V;
    if ((sc->top_k > 0 && sc->top_k < V) || sc->top_p < 1.0) {
        qsort(scratch, (size_t)V, 2 * sizeof(float), cmp_desc);
        if (sc->top_k > 0 && sc->top_k < n) n = sc->top_k;
        if (sc->top_p < 1.0) {
            double acc = 0.0, tot = 0.0;
            for (int64_t i = 0; i < n; i++) tot += scratch[2 * i];
            for (int64_t i = 0; i < n; i++) {
                acc += scratch[2 * i];
                if (acc >= sc->top_p * tot) {
                    n = i + 1;
                    break;
                }
            }
        }
        sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += scratch[2 * i];
    }
    double u = loom_rng_uniform(rng) * sum, acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += scratch[2 * i];
        if (u < acc) return (int32_t)scratch[2 * i + 1];
    }
    return (int32_t)scratch[2 * (n - 1) + 1];
}

static void emit(FILE *out, const loom_tokenizer *tok, int32_t id) {
    if (!out || !tok) return;
    size_t len = 0;
    const char *b = loom_tokenizer_token_bytes(tok, id, &len);
    if (b && len) fwrite(b, 1, len, out);
    fflush(out);
}

loom_status loom_generate(loom_model *m, const loom_tokenizer *tok, const int32_t *prompt, int64_t n_prompt,
                          const loom_sample_config *sc, FILE *out, loom_generate_stats *stats, int32_t **ids,
                          int64_t *n_ids) {
    const loom_model_config *cfg = loom_model_get_config(m);
    LOOM_CHECK(n_prompt >= 1, LOOM_ERR_INVALID_ARG, "generation needs at least one prompt token");
    LOOM_CHECK(n_prompt < cfg->max_seq_len, LOOM_ERR_INVALID_ARG,
               "the prompt has %lld tokens; the model's context is %lld", (long long)n_prompt,
               (long long)cfg->max_seq_len);
    LOOM_CHECK(sc->max_tokens >= 0 && sc->top_k >= 0 && sc->top_p > 0 && sc->top_p <= 1 && sc->temperature >= 0,
               LOOM_ERR_INVALID_ARG, "bad sampling settings: need max_tokens >= 0, temperature >= 0, top_k >= 0, "
               "0 < top_p <= 1");
    const int64_t V = cfg->vocab_size;
    int64_t max_len = n_prompt + sc->max_tokens;
    if (max_len > cfg->max_seq_len) max_len = cfg->max_seq_len;
    LOOM_CALL(loom_model_kv_reset(m, max_len, sc->kv_bf16));
    LOOM_CALL(loom_model_kv_prepare(m, n_prompt)); /* the prompt's activations, before its clock starts */
    float *scratch = malloc((size_t)V * 2 * sizeof(float)), *logits = malloc((size_t)V * sizeof(float));
    int32_t *gen = malloc((size_t)(sc->max_tokens + 1) * sizeof(int32_t)), *window = malloc((size_t)max_len * sizeof(int32_t));
    if (!scratch || !gen || !logits || !window) {
        free(scratch);
        free(logits);
        free(gen);
        free(window);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    loom_generate_stats gs;
    memset(&gs, 0, sizeof gs);
    gs.prompt_tokens = n_prompt;
    loom_rng rng;
    loom_rng_seed(&rng, sc->seed);
    loom_status st = LOOM_OK;
    double t0 = loom_now_s();
    st = loom_model_kv_prefill(m, prompt, n_prompt, logits);
    gs.prefill_seconds = loom_now_s() - t0;
    t0 = loom_now_s();
    const int32_t eot = tok ? loom_tokenizer_eot(tok) : -1;
    int64_t n = 0;
    while (st == LOOM_OK && n < sc->max_tokens) {
        int32_t next = loom_sample_token(logits, V, sc, &rng, scratch);
        gen[n++] = next;
        if (sc->stop_at_eot && next == eot) {
            gs.stopped_at_eot = 1;
            break;
        }
        emit(out, tok, next);
        if (n >= sc->max_tokens) break;
        if (loom_model_kv_position(m) >= max_len) {
            /* context full: slide the window, re-reading the last half of the text into a fresh cache
             * (as nanoGPT crops to its block size) */
            gs.context_full = 1;
            const int64_t keep = max_len / 2 > 0 ? max_len / 2 : 1;
            st = loom_model_kv_reset(m, max_len, sc->kv_bf16);
            int64_t nw = 0; /* the keep - 1 tokens before `next`: gen, or the prompt before it */
            for (int64_t i = keep - 1; i >= 1; i--) {
                const int64_t back = n - 1 - i;
                if (back >= -n_prompt) window[nw++] = back >= 0 ? gen[back] : prompt[n_prompt + back];
            }
            if (st == LOOM_OK && nw > 0) st = loom_model_kv_prefill(m, window, nw, logits);
            if (st != LOOM_OK) break;
        }
        st = loom_model_kv_step(m, next, logits);
    }
    gs.decode_seconds = loom_now_s() - t0;
    gs.generated_tokens = n;
    free(scratch);
    free(logits);
    free(window);
    if (st != LOOM_OK) {
        free(gen);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    if (stats) *stats = gs;
    if (ids) {
        *ids = gen;
        *n_ids = n;
    } else {
        free(gen);
    }
    return LOOM_OK;
}
