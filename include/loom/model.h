/* loom/model.h: GPT-family transformers (GPT-2 and LLaMA) from a config, forward and full backward.
 *
 *   loom_model_config cfg;
 *   LOOM_CALL(loom_model_config_preset("gpt2-124m", &cfg));
 *   loom_model *m;
 *   loom_model_options opts = {.flags = LOOM_MODEL_GRADS};           // tp, sp, pipeline, precision: here
 *   LOOM_CALL(loom_model_init(&cfg, be, &mem, &opts, &m));
 *   LOOM_CALL(loom_model_init_weights(m, seed));
 *   LOOM_CALL(loom_model_reserve(m, B, T, LOOM_RECOMPUTE_NONE));      // activation arena, once
 *   float loss;
 *   LOOM_CALL(loom_model_forward_backward(m, tokens, targets, B, T, 1.0f / (B * T), 0, &loss));
 *
 * Parameters live in ONE flat buffer (and gradients in another of the same layout), each parameter a
 * named view (loom_param_info): data parallel buckets, ZeRO shards, chunked offload and checkpoints all
 * slice these buffers. Views are laid out layer by layer (embeddings, block 0 .. block L-1, final norm,
 * head), so a layer's parameters are one contiguous range. Layers use local dimensions (heads, hidden
 * size, vocabulary) of the tensor-parallel communicator given at init; with a size-1 communicator they
 * equal the global ones. Every buffer (parameters, gradients, activations) is the backend's: its pointers
 * are device addresses (loom/backend.h), read and written by kernels and explicit copies only. */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H
#include <stdint.h>

#include "loom/backend.h"
#include "loom/comm.h"
#include "loom/mem.h"
#include "loom/status.h"

typedef enum { LOOM_FAMILY_GPT2 = 0, LOOM_FAMILY_LLAMA } loom_family;
typedef enum { LOOM_RECOMPUTE_NONE = 0, LOOM_RECOMPUTE_ATTN, LOOM_RECOMPUTE_FULL } loom_recompute;
/* GPT-2's MLP activation: the tanh approximation (GPT-2, Hugging Face gelu_new) or the exact erf form
 * (PyTorch's nn.GELU(), nanoGPT) */
typedef enum { LOOM_GELU_TANH = 0, LOOM_GELU_ERF } loom_gelu;

typedef struct {
    loom_family family;
    int64_t n_layer, n_head, n_kv_head, d_model, d_ff, vocab_size, max_seq_len;
    double norm_eps;
    double rope_theta;   /* LLaMA */
    int tie_embeddings;  /* GPT-2: 1 */
    int bias;            /* GPT-2: 1 (0: no bias in linears nor LayerNorms) */
    loom_gelu gelu;      /* GPT-2: LOOM_GELU_TANH */
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
    int tp_split;   /* LOOM_TP_*: how tensor parallelism cuts the full tensor into this rank's view */
    int64_t full_shape[2]; /* the whole tensor's shape (= shape when tp_split is LOOM_TP_REPLICATED) */
    int64_t canon_offset;  /* where the whole tensor starts in the one-rank layout (checkpoints) */
    int seed_index;        /* its index in the whole model's parameter list: its initialisation stream */
    int tied_copy;         /* pipeline: the last stage's copy of the tied embedding (the first stage's counts) */
} loom_param_info;

/* Tensor-parallel cuts (Megatron 1D). Rows: column-parallel linears (qkv, fc/gate_up) and their biases,
 * the vocabulary rows of the embedding and head; each block of rows (q|k|v, gate|up) is cut separately,
 * rank r taking the r-th of tp equal parts (the vocabulary: parts of ceil(V/tp), the last one shorter).
 * Columns: row-parallel linears (attention and MLP output projections). Everything else is replicated
 * and computed identically on every tp rank. */
enum { LOOM_TP_REPLICATED = 0, LOOM_TP_ROWS, LOOM_TP_COLS };

typedef struct loom_model loom_model;

/* Presets: demo, gpt2-124m, gpt2-350m, gpt2-l6 (6 layers, width 384), llama-tiny, llama-l6. */
LOOM_NODISCARD loom_status loom_model_config_preset(const char *name, loom_model_config *out);
const char *const *loom_model_preset_names(void);
/* Checks the config's consistency (heads divide width, kv heads divide heads, ...). */
LOOM_NODISCARD loom_status loom_model_config_validate(const loom_model_config *cfg);
const char *loom_family_name(loom_family f);
/* Total parameter count of a config (the head counted once when tied). */
int64_t loom_model_config_num_params(const loom_model_config *cfg);
/* The parameters a token's products go through: the total less the tables that are only looked up (GPT-2's
 * position embedding, an untied model's input embedding). The norms' and biases' few are kept, as 6 N has it. */
int64_t loom_model_config_product_params(const loom_model_config *cfg);
/* Model FLOPs per token for training: 6 N + 12 L d T (Megatron/PaLM accounting, attention counted unmasked),
 * N = loom_model_config_product_params: a looked-up table does no multiply-adds, so counting it would
 * overstate the MFU (an untied LLaMA's by half again at d 384, vocabulary 32000). */
double loom_model_config_flops_per_token(const loom_model_config *cfg, int64_t T);

/* flags of loom_model_options */
enum {
    LOOM_MODEL_GRADS = 1,           /* with a gradient buffer (training) */
    LOOM_MODEL_EXTERNAL_PARAMS = 2, /* the caller provides the parameter buffer (loom_model_set_buffers) */
    LOOM_MODEL_EXTERNAL_GRADS = 4,  /* the caller provides the gradient buffer */
    /* mixed precision where the parameters are resident a unit at a time (ZeRO-3): the weights' low-precision
     * copy is then too, in reserved memory (loom_buf_reserve), each unit's part made at its first product
     * and dropped when the model is done with the unit (after the params_done hook), accounted as
     * workspace while it lives; loom_model_refresh_low_precision drops every part */
    LOOM_MODEL_LOWP_PER_UNIT = 8
};
/* Mixed precision: with LOOM_PRECISION_BF16 every product with the weights (forward and backward)
 * multiplies bf16 copies of both operands and accumulates in fp32 (loom_k_matmul_bf16); master weights,
 * gradients, optimizer state and stored activations stay fp32 (the operands are converted at each
 * product); loom_model_refresh_low_precision after every change of the parameters. With
 * LOOM_PRECISION_FP16 the products run on fp16 values (operands rounded to fp16, the weights' rounded copy
 * refreshed likewise) with fp32 accumulation, and each product's result is stored as fp16 stores it (beyond
 * 65504: inf). This CPU has no fp16 arithmetic, so the values are held in fp32 registers: the numerics of
 * fp16 training (what dynamic loss scaling is for), not its speed; bf16 is the fast low precision here. */
typedef enum { LOOM_PRECISION_FP32 = 0, LOOM_PRECISION_BF16, LOOM_PRECISION_FP16 } loom_precision;
/* LoRA (Hu et al. 2021, as Hugging Face PEFT lays it out): low-rank adapters beside frozen weights. A
 * targeted product y = x W^T gains s * (drop(x) A^T) B^T, A (r x fan_in), B (rows x r), s = alpha / r
 * (rslora: alpha / sqrt(r)); A starts uniform in +-1/sqrt(fan_in), B at zero, so training starts from the
 * base model exactly. Adapters go where PEFT puts them, one per Hugging Face module: GPT-2's fused c_attn
 * (qkv) has one adapter, LLaMA's q, k and v projections one each (on their rows of the fused qkv weight),
 * likewise gate and up. With adapters the model's flat parameter and gradient buffers (loom_model_params,
 * _grads, _param_info, the units) hold the adapters only: the optimizer, ZeRO and checkpoints see what
 * trains; the frozen weights are loom_model_weights, no gradient is computed for them (the backward skips
 * their weight-gradient products). Targets: */
enum { LOOM_LORA_QKV = 1, LOOM_LORA_PROJ = 2, LOOM_LORA_FC = 4, LOOM_LORA_DOWN = 8,
       LOOM_LORA_ATTN = 3, LOOM_LORA_MLP = 12, LOOM_LORA_ALL = 15 };
typedef struct {
    int r;          /* rank; 0: no adapters */
    double alpha;   /* scale numerator (PEFT's lora_alpha) */
    double dropout; /* on the adapters' input while training (PEFT's lora_dropout) */
    int targets;    /* LOOM_LORA_* bits */
    int rslora;     /* scale alpha / sqrt(r) */
    int base_bf16;  /* the frozen weights held in bf16 only (precision bf16): written a piece at a time, each
                       piece handed to loom_model_weights_done, which makes its bf16 copy and returns the fp32
                       matrices' memory (all but GPT-2's position table); the embedding reads its bf16 rows.
                       CPU backend (host-addressable memory). */
} loom_lora_config;
/* "r=16,alpha=32,dropout=0.05,targets=attn,mlp,rslora=1": keys in any order; targets by role (qkv, proj,
 * fc or gate_up, down) or group (attn, mlp, all), comma-separated; defaults PEFT's: r 8, alpha = r,
 * dropout 0, targets attn (PEFT's GPT-2 and LLaMA defaults are the attention projections). */
LOOM_NODISCARD loom_status loom_lora_config_parse(const char *spec, loom_lora_config *out);
/* The same text back (canonical: every key, targets by role; not base_bf16, which is how the base is held). */
void loom_lora_config_format(const loom_lora_config *c, char *buf, size_t n);
/* How a model is built and where its parts live. Zero-initialised: one rank, fp32, no gradients. The
 * communicators are borrowed; each NULL or of size 1 means "not cut over that axis". */
typedef struct {
    int flags;                /* LOOM_MODEL_* */
    loom_comm *tp;            /* tensor parallel: heads, MLP hidden units and vocabulary cut over its ranks */
    loom_comm *sp;            /* sequence parallel: this rank holds positions [rank*T, (rank+1)*T) of each
                                 sequence (T its local length) and attention runs as a ring over sp */
    loom_comm *parts;         /* pipeline: the ranks holding the other parts (whole-model norms sum over it) */
    int tp_seq_parallel;      /* Megatron sequence parallelism (tp > 1): the norms, residual stream and
                                 embedding output hold B*T/tp rows per rank; each all-reduce becomes an
                                 all-gather before a column-parallel product and a reduce-scatter after a
                                 row-parallel one; B*T must divide by tp */
    loom_precision precision;
    loom_lora_config lora;    /* r > 0: adapters over frozen weights (one rank of tp, sp and pipeline) */
    int weights_bf16;         /* an inference model (no LOOM_MODEL_GRADS, its own parameters) in bf16 on a
                                 host-addressable backend: the weights held in bf16 only, as lora.base_bf16
                                 holds a frozen base (written a piece at a time, each piece handed to
                                 loom_model_weights_done; only what reads fp32 stays: norms, biases, GPT-2's
                                 position table); half the bytes of the bf16 copy beside fp32 weights, a third
                                 of them. loom_checkpoint_load_model sets it for bf16 loads on the CPU. */
} loom_model_options;
/* Collective over opts->tp, sp and parts (none today: it only reads their sizes and ranks). */
LOOM_NODISCARD loom_status loom_model_init(const loom_model_config *cfg, loom_backend *be, loom_mem *mem,
                                           const loom_model_options *opts, loom_model **out);

/* ---- pipeline parts ----
 * A pipeline stage holds some of the blocks, in chunks (virtual stages: one chunk without interleaving),
 * plus the embedding when it is the first stage and the final norm and head when it is the last (with a
 * tied head, the last stage keeps its own copy of the embedding matrix, flagged tied_copy). Parameter
 * names, initialisation and the one-rank layout are the whole model's, so any part starts from the same
 * weights and checkpoints in the same layout. */
#define LOOM_MAX_CHUNKS 16
typedef struct {
    int n_chunks;
    int64_t layer_lo[LOOM_MAX_CHUNKS], layer_hi[LOOM_MAX_CHUNKS]; /* global blocks of each chunk, ascending */
    int first, last;
} loom_model_part;
LOOM_NODISCARD loom_status loom_model_init_part(const loom_model_config *cfg, const loom_model_part *part,
                                                loom_backend *be, loom_mem *mem, const loom_model_options *opts,
                                                loom_model **out);
int loom_model_num_chunks(const loom_model *m);
/* Planning: the layout alone (no buffers, no communicator) of tp rank `tp_rank` of `tp_size` holding `part`
 * (NULL: the whole model), for buffer sizes and loom_model_activation_bytes. Free with loom_model_free. */
LOOM_NODISCARD loom_status loom_model_init_layout(const loom_model_config *cfg, const loom_model_part *part,
                                                  int tp_size, int tp_rank, loom_model **out);
/* The layout alone of a one-rank model with LoRA adapters (its flat parameters: the adapters). */
LOOM_NODISCARD loom_status loom_model_init_lora_layout(const loom_model_config *cfg, const loom_lora_config *lora,
                                                       loom_model **out);
/* Rows of fp32 logits a bf16 training step makes and scores at a time, where one micro-batch is in flight
 * on the head's rank: the loss writes the logits' gradient in bf16 (with tp, the rank's vocabulary columns),
 * which the head's backward reads, so the (N, V) fp32 logits are never whole. */
#define LOOM_MODEL_HEAD_PIECE_ROWS 1024
/* the rows of one such piece for N rows (N itself where the logits are made whole); the model and the
 * planner's time model both cut by it */
static inline int64_t loom_model_head_piece(int64_t N, int in_pieces) {
    return in_pieces && N > LOOM_MODEL_HEAD_PIECE_ROWS ? LOOM_MODEL_HEAD_PIECE_ROWS : N;
}
/* Bytes loom_model_reserve_slots would account as activations, with sequence-parallel degree sp (ring
 * attention), tp sequence parallelism and the precision as set on the model (planning: pass them here; bf16
 * training stores some activations in bf16). */
int64_t loom_model_activation_bytes(const loom_model *m, int64_t B, int64_t T, loom_recompute rc, int slots, int sp,
                                    int tp_seq_parallel, loom_precision precision);
/* Bytes loom_model_reserve_slots keeps as workspace for a micro-batch of `tokens` tokens: its tokens and
 * targets where the kernels read them (with tensor parallelism, also the loss's per-row statistics). The
 * memory manager's working set and the planner's workspace count them. */
int64_t loom_model_token_workspace(const loom_model *m, int64_t tokens);
/* The pipeline axis given at init (borrowed; NULL without pipeline parallelism). */
loom_comm *loom_model_parts_comm(const loom_model *m);
/* Activations for `slots` micro-batches in flight (pipeline schedules); loom_model_reserve is one slot. */
LOOM_NODISCARD loom_status loom_model_reserve_slots(loom_model *m, int64_t B, int64_t T, loom_recompute rc,
                                                    int slots);
void loom_model_use_slot(loom_model *m, int slot);
/* One chunk of one micro-batch, in the current slot. Forward: the first stage's chunk 0 reads tokens,
 * every other chunk x_in (B*T, C), the previous chunk's output; the last stage's last chunk computes the
 * loss (with grad_scale != 0, its gradient in place, as loom_model_forward_backward); every other chunk
 * returns its output in *x_out (valid while the slot is). Backward: dy (B*T, C) is the gradient of the
 * chunk's output (ignored on the head's chunk); *dx_out receives the gradient of its input (valid until
 * the next backward call), except on the embedding's chunk. accumulate: add to the gradients. */
LOOM_NODISCARD loom_status loom_model_chunk_forward(loom_model *m, int chunk, const int32_t *tokens, const float *x_in,
                                                    const int32_t *targets, int64_t B, int64_t T, float grad_scale,
                                                    float *loss, const float **x_out);
LOOM_NODISCARD loom_status loom_model_chunk_backward(loom_model *m, int chunk, const int32_t *tokens, const float *dy,
                                                     int64_t B, int64_t T, int accumulate, const float **dx_out);
void loom_model_free(loom_model **m);
LOOM_NODISCARD loom_status loom_model_init_weights(loom_model *m, uint64_t seed);
/* Writes the initial values of flat positions [begin, end) to dst (end - begin floats of host memory): the
 * same values loom_model_init_weights puts there, without touching the model's buffer (a ZeRO-3 shard). */
void loom_model_init_weights_range(const loom_model *m, uint64_t seed, int64_t begin, int64_t end, float *dst);

/* ---- units and hooks: how a parallel layer (ZeRO) manages where parameters and gradients live ----
 * A unit is a contiguous range of the flat buffers that the model uses together: unit 0 the embeddings,
 * units 1..L the blocks, unit L+1 the final norm and the untied head. Units tile [0, buffer size). */
int loom_model_num_units(const loom_model *m);
void loom_model_unit_range(const loom_model *m, int unit, int64_t *begin, int64_t *end);
typedef struct {
    void *ctx;
    /* before the model reads unit's parameters (dir +1 forward, -1 backward) */
    loom_status (*params_needed)(void *ctx, int unit, int dir);
    /* after the model's last read of unit's parameters in this pass */
    loom_status (*params_done)(void *ctx, int unit);
    /* backward: unit's gradients for this micro-batch are final */
    loom_status (*grads_done)(void *ctx, int unit);
} loom_model_hooks;
/* NULL hooks: every parameter and gradient is always resident (the default). */
void loom_model_set_hooks(loom_model *m, const loom_model_hooks *hooks);
/* Points the model at caller-owned flat buffers (either may be NULL to keep the current one). */
void loom_model_set_buffers(loom_model *m, float *params, float *grads);
/* Bytes of the low-precision copies of a product's activation operands (mixed precision p) for B x T with
 * `slots` micro-batches in flight, with tp sequence parallelism as set on the model (planning: pass it here). */
int64_t loom_model_lowp_scratch_bytes(const loom_model *m, int64_t B, int64_t T, loom_precision p, int slots,
                                      int tp_seq_parallel);
/* Mixed precision: refreshes the weights' low-precision copy from the parameters (after each change). */
LOOM_NODISCARD loom_status loom_model_refresh_low_precision(loom_model *m);
/* The bf16 copy of the weights where an update of `params` (n floats) can write it in the same pass: only
 * when they are the whole trained weights and the copy is whole-model bf16; else NULL (the caller refreshes). */
uint16_t *loom_model_bf16_copy_of(loom_model *m, const float *params, int64_t n);
/* Floats of one activation passed between pipeline chunks for a B x T micro-batch. */
int64_t loom_model_boundary_floats(const loom_model *m, int64_t B, int64_t T);
/* Allocates activations for micro-batches up to B x T (reallocates only when larger). */
LOOM_NODISCARD loom_status loom_model_reserve(loom_model *m, int64_t B, int64_t T, loom_recompute rc);

/* Forward only. targets may be NULL (no loss). The logits (B,T,V) stay readable by loom_model_read_logits,
 * except where a bf16 training model (one micro-batch in flight) scores them a piece of rows at a time with
 * targets: then only the loss is kept (without targets they are kept whole). tokens and targets are
 * host memory. */
LOOM_NODISCARD loom_status loom_model_forward(loom_model *m, const int32_t *tokens, const int32_t *targets,
                                              int64_t B, int64_t T, float *loss);
/* Forward and backward of one micro-batch. Gradients of grad_scale * sum of token losses are written
 * (accumulate = 0) or added (accumulate = 1) to the gradient buffer. loss = mean token loss. */
LOOM_NODISCARD loom_status loom_model_forward_backward(loom_model *m, const int32_t *tokens,
                                                       const int32_t *targets, int64_t B, int64_t T,
                                                       float grad_scale, int accumulate, float *loss);

/* Incremental decoding with a key/value cache (generation). reset starts a new sequence of up to max_len
 * positions (<= max_seq_len; allocates the cache once, bf16: its keys and values stored in bf16, as
 * loom_kv_pool's); step feeds the next token and writes the logits
 * (V floats, host memory) for the position after it. Equal to loom_model_forward's logits at the same
 * position up to float rounding (different summation order; tested). */
LOOM_NODISCARD loom_status loom_model_kv_reset(loom_model *m, int64_t max_len, int bf16);
LOOM_NODISCARD loom_status loom_model_kv_step(loom_model *m, int32_t token, float *logits);
/* Feeds n tokens (a prompt) and writes the logits for the position after the last. For a model without
 * gradients (an inference model): one cached forward (loom_model_kv_forward, one segment) over all n tokens;
 * a training model sampling between steps, whose activations must stay as they are, in pieces as large as
 * its activations reach. */
LOOM_NODISCARD loom_status loom_model_kv_prefill(loom_model *m, const int32_t *tokens, int64_t n, float *logits);
int64_t loom_model_kv_position(const loom_model *m);

/* Paged key/value memory for serving many sequences (vLLM's PagedAttention layout): n_blocks blocks of
 * block_len positions, each holding every layer's keys and values for them. A sequence's block table says
 * which block holds its positions [i*block_len, (i+1)*block_len); which blocks are free or shared is the
 * caller's business (src/serve). bf16: keys and values stored in bf16 (half the memory; attention reads
 * them back into fp32). loom_kv_pool_block_bytes is one block's size, to size a pool. */
typedef struct loom_kv_pool loom_kv_pool;
LOOM_NODISCARD loom_status loom_kv_pool_create(loom_model *m, int64_t n_blocks, int64_t block_len, int bf16,
                                               loom_kv_pool **out);
void loom_kv_pool_free(loom_kv_pool **p);
size_t loom_kv_pool_block_bytes(const loom_model *m, int64_t block_len, int bf16);
int64_t loom_kv_pool_blocks(const loom_kv_pool *p);
int64_t loom_kv_pool_block_len(const loom_kv_pool *p);
/* One sequence's part of a cached forward: n new tokens at positions [pos, pos + n), the positions before
 * them already in its blocks; the block table must cover pos + n positions. */
typedef struct {
    const int32_t *tokens;
    int64_t n, pos;
    const int32_t *blocks; /* host memory */
    int logits;            /* 1: the logits after its last token are wanted */
    int adapter;           /* 0: the model alone; k: the k-th adapter set (loom_model_add_adapter_set) */
} loom_kv_segment;
/* Advances several sequences in one forward: every product runs over all segments' rows together;
 * positions, RoPE and attention are per segment (causal over the new rows, against the cached ones). Writes
 * the new keys and values into the blocks, and V logits (host memory) for each segment that wants them, in
 * segment order. An inference model reserves activations for the rows as needed. Single rank only. */
LOOM_NODISCARD loom_status loom_model_kv_forward(loom_model *m, loom_kv_pool *pool, const loom_kv_segment *segs,
                                                 int64_t n_segs, float *logits);
/* Activations for a cached forward of `rows` rows, reserved now where loom_model_kv_forward would reserve them
 * at its first such call (an inference model; a training model's stay as they are): setup, as a
 * server's start or llama.cpp's context, so that a first prompt's time is its arithmetic and not the first
 * touch of fresh memory (measured here: 0.05 s of 0.3 s for 128 tokens of GPT-2 124M in bf16). */
LOOM_NODISCARD loom_status loom_model_kv_prepare(loom_model *m, int64_t rows);

/* The weights the blocks multiply by, in the whole model's layout (loom_model_weights_size floats; its
 * views: loom_model_weight_info): with LoRA the frozen base, without it the parameters themselves. After
 * writing them call loom_model_refresh_low_precision. */
float *loom_model_weights(loom_model *m);
int64_t loom_model_weights_size(const loom_model *m);
int loom_model_num_weight_infos(const loom_model *m);
const loom_param_info *loom_model_weight_info(const loom_model *m, int i);
/* [begin, end) of loom_model_weights is written: with a bf16 base (base_bf16) its bf16 copy is made now and
 * the fp32 matrices' whole pages in it go back to the system (so a base loaded in pieces is never whole in
 * fp32; use pieces of a multiple of 1024 floats); otherwise nothing (loom_model_refresh_low_precision does it). */
LOOM_NODISCARD loom_status loom_model_weights_done(loom_model *m, int64_t begin, int64_t end);
/* The frozen weights' initial values from a seed (what loom_model_init_weights gives a model without
 * adapters); without LoRA the same as loom_model_init_weights. */
LOOM_NODISCARD loom_status loom_model_init_frozen(loom_model *m, uint64_t seed);
/* Serving several fine-tunes of one base at once: LoRA adapter sets over an inference model without adapters
 * of its own, numbered from 1 in the order added; params (host memory, n floats) in the layout a LoRA run of
 * cfg has (its checkpoint's "params"). A cached forward's segment names its set; rows of different sets
 * share every frozen product and add their own adapters' (fp32). */
#define LOOM_MAX_ADAPTER_SETS 32
LOOM_NODISCARD loom_status loom_model_add_adapter_set(loom_model *m, const loom_lora_config *cfg, const float *params,
                                                      int64_t n, int *index);
int loom_model_num_adapter_sets(const loom_model *m);
/* LoRA dropout draws its masks from the count of training micro-batches run (each loom_model_forward_backward
 * counts one): a trainer sets it from its step (step x grad_accum) so that a resumed run draws the
 * uninterrupted run's masks. The masks are per local row: another data-parallel layout draws other ones. */
void loom_model_lora_seek(loom_model *m, uint64_t micro_batches);
/* The model's adapters (NULL without). */
const loom_lora_config *loom_model_lora(const loom_model *m);
/* Model FLOPs per token of a training step at sequence length T, the MFU numerator: the config's 6 N + 12 L d T;
 * with LoRA, the frozen weights' products without weight gradients (4 N) and the adapters' 6 n. */
double loom_model_train_flops_per_token(const loom_model *m, int64_t T);
/* The weights with every adapter folded in (W += scale * B A on its rows): dst, loom_model_weights_size floats
 * of host memory, in loom_model_weight_info's layout (a plain model's). Not for a bf16-held base. */
LOOM_NODISCARD loom_status loom_model_lora_merged(loom_model *m, float *dst);

const loom_model_config *loom_model_get_config(const loom_model *m);
loom_backend *loom_model_backend(const loom_model *m);
/* the flat buffers: backend memory (loom_buf_download / loom_buf_upload to read or write them) */
float *loom_model_params(loom_model *m);
float *loom_model_grads(loom_model *m);
/* Floats in the flat buffers (padded for alignment; >= the parameter count). */
int64_t loom_model_buffer_size(const loom_model *m);
int64_t loom_model_num_params(const loom_model *m);
int loom_model_num_param_infos(const loom_model *m);
const loom_param_info *loom_model_param_info(const loom_model *m, int i);
const loom_param_info *loom_model_find_param(const loom_model *m, const char *name);
/* The last forward's logits (B*T rows of this rank's V columns) into host memory; an error where that
 * forward scored them in pieces (loom_model_forward). */
LOOM_NODISCARD loom_status loom_model_read_logits(const loom_model *m, float *dst);
/* The tensor-parallel communicator given at init (borrowed). */
loom_comm *loom_model_tp_comm(const loom_model *m);
/* The one-rank layout, which checkpoints hold whatever the tensor-parallel size: its size in floats. Without
 * tensor parallelism it is the model's own layout. */
int64_t loom_model_canonical_size(const loom_model *m);
/* Element k (row-major in this rank's shape) of parameter i: its index in the whole tensor (row-major in
 * full_shape). */
int64_t loom_model_tp_element(const loom_model *m, int i, int64_t k);
/* This rank's columns [*v0, *v0 + n) of the vocabulary (all of it without tensor parallelism). */
void loom_model_vocab_range(const loom_model *m, int64_t *v0, int64_t *n);
#endif
