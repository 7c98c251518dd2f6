/* loom/generate.h: sampling text from a model with its KV cache.
 *
 *   loom_sample_config sc = loom_sample_config_default();
 *   sc.temperature = 0.8; sc.top_k = 40; sc.max_tokens = 200;
 *   loom_generate_stats gs;
 *   LOOM_CALL(loom_generate(model, tok, prompt_ids, n_prompt, &sc, stdout, &gs));   // streams text
 *
 * temperature 0 is greedy. top_k 0 and top_p 1 switch those filters off. The same seed gives the same
 * text. Generation stops at max_tokens or at the tokenizer's end-of-text (unless disabled); when the
 * model's context is full the window slides: the last half of the text is re-read into a fresh cache. */
#ifndef LOOM_GENERATE_H
#define LOOM_GENERATE_H
#include <stdio.h>

#include "loom/model.h"
#include "loom/rng.h"
#include "loom/tokenizer.h"

typedef struct {
    double temperature;
    int64_t top_k;
    double top_p;
    uint64_t seed;
    int64_t max_tokens;
    int stop_at_eot;
    int kv_bf16; /* the cache's keys and values stored in bf16 (loom serve --kv-dtype bf16's storage) */
} loom_sample_config;

typedef struct {
    int64_t prompt_tokens, generated_tokens;
    double prefill_seconds, decode_seconds;
    int stopped_at_eot, context_full; /* context_full: the window slid at least once */
} loom_generate_stats;

loom_sample_config loom_sample_config_default(void);
/* Picks the next token from logits (V) under the config; rng advances. scratch: 2*V floats. */
int32_t loom_sample_token(const float *logits, int64_t V, const loom_sample_config *sc, loom_rng *rng, float *scratch);
/* out may be NULL (no streaming); the generated ids are returned through ids/n_ids when non-NULL (free()). */
LOOM_NODISCARD loom_status loom_generate(loom_model *m, const loom_tokenizer *tok, const int32_t *prompt,
                                         int64_t n_prompt, const loom_sample_config *sc, FILE *out,
                                         loom_generate_stats *stats, int32_t **ids, int64_t *n_ids);
#endif
