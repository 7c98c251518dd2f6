/* loom/model.h: GPT-family transformers (GPT-2 and LLaMA) from a config, forward and full backward.
 *
 *   loom_model_config cfg;
 *   LOOM_CALL(loom_model_config_preset("gpt2-124m", &cfg));
 *   loom_model *m;
 *   LOOM_CALL(loom_model_init(&cfg, be, tp_comm, &mem, 1, &m));       // 1: with gradients
 *   loom_model_init_weights(m, seed);
 *   LOOM_CALL(loom_model_reserve(m, B, T, LOOM_RECOMPUTE_NONE));      // activation arena, once
 *   float loss;
 *   LOOM_CALL(loom_model_forward_backward(m, tokens, targets, B, T, 1.0f / (B * T), 0, &loss));
 *
 * Parameters live in ONE flat buffer (and gradients in another of the same layout), each parameter a
 * named view (loom_param_info): data parallel buckets, ZeRO shards, chunked offload and checkpoints all
 * slice these buffers. Views are laid out layer by layer (embeddings, block 0 .. block L-1, final norm,
 * head), so a layer's parameters are one contiguous range. Layers use local dimensions (heads, hidden
 * size, vocabulary) of the tensor-parallel communicator given at init; with a size-1 communicator they
 * equal the global ones. */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H
#include <stdint.h>

#include "loom/backend.h"
#include "loom/comm.h"
#include "loom/mem.h"
#include "loom/status.h"

typedef enum { LOOM_FAMILY_GPT2 = 0, LOOM_FAMILY_LLAMA } loom_family;
typedef enum { LOOM_RECOMPUTE_NONE = 0, LOOM_RECOMPUTE_ATTN, LOOM_RECOMPUTE_FULL } loom_recompute;

typedef struct {
    loom_family family;
    int64_t n_layer, n_head, n_kv_head, d_model, d_ff, vocab_size, max_seq_len;
    double norm_eps;
    double rope_theta;   /* LLaMA */
    int tie_embeddings;  /* GPT-2: 1 */
    int bias;            /* GPT-2: 1 */
    double init_std;     /* weights ~ N(0, init_std); residual projections / sqrt(2 L) */
} loom_model_config;

typedef struct {
    char name[64];
    int64_t offset; /* in floats, into the flat buffers */
    int64_t numel;
    int ndim;
    int64_t shape[2];
    int layer;      /* -1 for embeddings and head */
    int decay;      /* weight decay applies (matrices and embeddings; not norms or biases) */
} loom_param_info;

typedef struct loom_model loom_model;

/* Presets: demo, gpt2-124m, gpt2-350m, gpt2-l6 (6 layers, width 384), llama-tiny, llama-l6. */
LOOM_NODISCARD loom_status loom_model_config_preset(const char *name, loom_model_config *out);
const char *const *loom_model_preset_names(void);
/* Checks the config's consistency (heads divide width, kv heads divide heads, ...). */
LOOM_NODISCARD loom_status loom_model_config_validate(const loom_model_config *cfg);
const char *loom_family_name(loom_family f);
/* Total parameter count of a config (the head counted once when tied). */
int64_t loom_model_config_num_params(const loom_model_config *cfg);
/* Model FLOPs per token for training: 6 N + 12 L d T (Megatron/PaLM accounting). */
double loom_model_config_flops_per_token(const loom_model_config *cfg, int64_t T);

LOOM_NODISCARD loom_status loom_model_init(const loom_model_config *cfg, loom_backend *be, loom_comm *tp,
                                           loom_mem *mem, int with_grads, loom_model **out);
void loom_model_free(loom_model **m);
void loom_model_init_weights(loom_model *m, uint64_t seed);
/* Allocates activations for micro-batches up to B x T (reallocates only when larger). */
LOOM_NODISCARD loom_status loom_model_reserve(loom_model *m, int64_t B, int64_t T, loom_recompute rc);

/* Forward only. targets may be NULL (no loss). The logits (B,T,V) stay readable by loom_model_logits. */
LOOM_NODISCARD loom_status loom_model_forward(loom_model *m, const int32_t *tokens, const int32_t *targets,
                                              int64_t B, int64_t T, float *loss);
/* Forward and backward of one micro-batch. Gradients of grad_scale * sum of token losses are written
 * (accumulate = 0) or added (accumulate = 1) to the gradient buffer. loss = mean token loss. */
LOOM_NODISCARD loom_status loom_model_forward_backward(loom_model *m, const int32_t *tokens,
                                                       const int32_t *targets, int64_t B, int64_t T,
                                                       float grad_scale, int accumulate, float *loss);

/* Incremental decoding with a key/value cache (generation). reset starts a new sequence of up to max_len
 * positions (<= max_seq_len; allocates the cache once); step feeds the next token and returns the logits
 * (V) for the position after it, valid until the next call. Equal to loom_model_forward's logits at the
 * same position up to float rounding (different summation order; tested). */
LOOM_NODISCARD loom_status loom_model_kv_reset(loom_model *m, int64_t max_len);
LOOM_NODISCARD loom_status loom_model_kv_step(loom_model *m, int32_t token, const float **logits);
int64_t loom_model_kv_position(const loom_model *m);

const loom_model_config *loom_model_get_config(const loom_model *m);
float *loom_model_params(loom_model *m);
float *loom_model_grads(loom_model *m);
/* Floats in the flat buffers (padded for alignment; >= the parameter count). */
int64_t loom_model_buffer_size(const loom_model *m);
int64_t loom_model_num_params(const loom_model *m);
int loom_model_num_param_infos(const loom_model *m);
const loom_param_info *loom_model_param_info(const loom_model *m, int i);
const loom_param_info *loom_model_find_param(const loom_model *m, const char *name);
const float *loom_model_logits(const loom_model *m);
#endif
