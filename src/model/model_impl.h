/* Private to src/model/: the model's layout and state, shared by the training path (gpt.c) and the
 * KV-cache decoder (kvcache.c). */
#ifndef LOOM_MODEL_IMPL_H
#define LOOM_MODEL_IMPL_H
#include "loom/model.h"

enum {
    W_LN1_W, W_LN1_B, W_QKV_W, W_QKV_B, W_ATTN_PROJ_W, W_ATTN_PROJ_B, W_LN2_W, W_LN2_B,
    W_FC_W, W_FC_B, W_MLP_PROJ_W, W_MLP_PROJ_B, W_COUNT
};

/* Activations of one layer (pointers into the store or the scratch set). */
struct act_slot; /* below */
typedef struct layer_acts_s {
    float *ln1, *ln1_mean, *ln1_rstd; /* (N,C), (N), (N) */
    float *qkv;                       /* (N,Cq) after RoPE */
    float *atty, *lse;                /* (N,C), (B,H,T) */
    float *res1;                      /* (N,C) x after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fc_pre;                    /* (N,F) GPT-2 pre-activation, or (N,2F) LLaMA gate|up */
    float *fc_act;                    /* (N,F) */
    float *out;                       /* (N,C) the layer's output = next layer's input */
    /* bf16 training (gpt.c acts_bf16): the operands only products read, stored in bf16 instead (fp32 ones NULL) */
    uint16_t *ln1_16, *ln2_16, *fc_act16;
} layer_acts;

/* What one micro-batch in flight keeps (pipeline schedules keep several). */
typedef struct act_slot {
    float *enc, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
    float *lnf_full;                  /* tp sequence parallel: the final norm's output gathered (N,C) */
    uint16_t *lnf16, *lnf16_full;     /* acts16: the final norm's output in bf16, and gathered (lnf, lnf_full NULL) */
    struct layer_acts_s *acts;
    float *chunk_in[LOOM_MAX_CHUNKS]; /* each chunk's input (chunks that do not start with the embedding) */
    float *dx;                        /* the gradient of a chunk's input, sent from here */
} act_slot;

struct loom_model {
    loom_model_config cfg;
    /* the part of the model this rank holds (all of it without pipeline parallelism) */
    int64_t L;                  /* local blocks */
    int64_t *layer_g;           /* [L] global index of local block l */
    int *layer_chunk;           /* [L] its chunk */
    int n_chunks;
    int64_t chunk_l0[LOOM_MAX_CHUNKS], chunk_l1[LOOM_MAX_CHUNKS]; /* local blocks of each chunk */
    int first, last;            /* holds the embedding / the final norm and head */
    loom_comm *parts;           /* the pipeline axis (NULL: the whole model is here) */
    int n_full_params;          /* parameters of the whole model */
    int n_units;
    int64_t *unit_lo;           /* [n_units + 1] */
    int n_slots, slot;
    int dlogits16;                    /* the last forward left its logits' bf16 gradient in scratch16[0] */
    int head_grads_acc;               /* set by loom_model_forward_backward for its forward: the head's gradient
                                       * products are made there, a piece of logits at a time, the weight's
                                       * gradient written (0) or added to (1); -1: the backward makes them */
    int head_grads_made;              /* the last forward made them (dlnf in place: gpt.c chunk_backward) */
    act_slot *slots;
    /* mixed precision (both NULL: fp32) */
    loom_precision precision;
    uint16_t *params16;         /* bf16: the parameters' bf16 copy, refreshed after each update */
    float *params_h;            /* fp16: the parameters rounded to fp16 (held as fp32 values), likewise */
    unsigned char *lowp_made;   /* per unit (LOOM_MODEL_LOWP_PER_UNIT; NULL: the copy is whole): its part of
                                   the copy is made (reserved memory, resident while made) */
    void *scratch16[2];         /* low-precision copies of a product's activation operands */
    size_t scratch16_bytes[2];
    loom_backend *be;
    loom_comm *tp;
    loom_mem *mem;
    int64_t C, H, KV, hd, Cq, F, V; /* local dimensions (V: this rank's vocabulary columns) */
    int tp_size, tp_rank;
    int64_t v0, V_full;             /* this rank's vocabulary columns start at v0 of V_full */
    int32_t *tok_local;             /* tp > 1: tokens shifted into this rank's vocabulary range, -1 outside (host) */
    float *ce_stats;                /* tp > 1: (3N) row maxima, sums of exponentials, target logits */
    int32_t *tok_dev, *tgt_dev;     /* (N) each: the micro-batch's tokens and targets in backend memory */
    float *losses_host;             /* (N) the losses, downloaded (backends the host cannot address) */
    int64_t (*row_blocks)[3];       /* per parameter: sizes of the full tensor's row blocks cut separately */
    /* Megatron sequence parallelism inside tp: norms and residuals on N/tp rows per rank */
    int tp_sp;
    int64_t *sp_counts;             /* [tp] floats per rank of a gather or scatter */
    float *sp_gather, *sp_partial;  /* (N,C) each: an all-gathered input, a partial product before its reduce-scatter */
    float *sp_rep;                  /* replicated parameters' gradients of one layer (8C), summed over tp */
    float *sp_wpe;                  /* GPT-2: (T,C) this rank's positions' wpe gradient of one micro-batch */
    /* sequence parallel (ring attention): this rank holds positions [sp_rank * T, (sp_rank + 1) * T) */
    loom_comm *sp;
    int sp_size, sp_rank;
    float *ring[2];                 /* key/value packets in flight: (B,T,4*KV*hd) each */
    float *ring_out, *ring_lse;     /* one block's partial attention output and log-sum-exp */
    size_t ring_bytes;
    int64_t n_params, buf_size, canon_size;
    float *params, *grads;
    int own_params, own_grads, has_grads;   /* 0: the buffer belongs to the caller (ZeRO) */
    loom_model_hooks hooks;      /* all NULL unless a parallel layer installed them */
    loom_param_info *infos;
    int n_infos;
    int64_t off_wte, off_wpe, off_lnf_w, off_lnf_b, off_head;
    int64_t *layer_off; /* [L][W_COUNT], -1 when absent */
    /* activations */
    int64_t cap_B, cap_T;
    loom_recompute rc;
    float *act_mem;
    size_t act_bytes;
    float *enc;                 /* (N,C) embedding output = layer 0 input */
    layer_acts *acts;           /* [L] */
    float *lnf, *lnf_mean, *lnf_rstd;
    uint16_t *lnf16;
    float *logits;              /* the last forward's logits (the slot's piece, or logits_whole) */
    int64_t logit_rows;         /* rows of the slot's logits buffer (gpt.c logit_rows: N, or a piece of N) */
    int logits_kept;            /* the last forward left all its logits in m->logits (not scored in pieces) */
    float *logits_whole;        /* forwards without targets, where the slot's buffer holds a piece: (rows,V) */
    size_t logits_whole_bytes;
    float *losses;              /* (N) */
    float *dres, *dln, *dqkv, *datty, *dfc, *dfc_act;
    float *rope_cos, *rope_sin; /* (T, hd/2) */
    int64_t last_B, last_T;
    /* LoRA (lora.c): the weights the blocks read are w, in the whole model's layout (w_infos, w_size); with
     * adapters they are frozen and the flat parameter and gradient buffers above (infos, units, buf_size)
     * hold only the adapters, so the optimizer, ZeRO and checkpoints see what trains. Without: w == params. */
    float *w;
    int64_t w_size, w_n_params;
    loom_param_info *w_infos;
    int w_n_infos;
    int w_lowp_fresh;           /* LoRA: the frozen weights' low-precision copy is made from their values */
    int64_t w_resident;         /* weights held in bf16 only (LoRA base_bf16, weights_bf16): bytes of w still
                                   resident (reserved memory; -1: allocated) */
    struct lora_state *lora;    /* NULL without adapters */
    struct lora_state *sets[LOOM_MAX_ADAPTER_SETS]; /* serving: adapter sets, each with its own buffer */
    int n_sets;
    float *set_u;               /* their low-rank products, one segment's at a time */
    size_t set_u_bytes;
    struct loom_kv_cache *kv; /* single-sequence generation state (kvcache.c), NULL until used */
    const void *kv_run;       /* the cached forward in progress (kvcache.c), NULL otherwise */
};

void loom_kv_cache_free(loom_model *m);
/* The embedding table in bf16 where the model holds it only so (weights held in bf16 only, once written) */
static inline const uint16_t *loom_model_wte16(const loom_model *m) {
    return m->w_resident >= 0 && m->w_lowp_fresh ? m->params16 + m->off_wte : NULL;
}

/* ---- LoRA (lora.c) ---- */
/* Adapter targets by role, as the products that carry them */
enum { LORA_QKV = 0, LORA_PROJ, LORA_FC, LORA_DOWN, LORA_N_ROLES };
/* Called by model_create after build_layout: moves the whole model's layout to the w_* fields and lays
 * out the adapters in its place (the same units: the embedding, each block, the head). */
LOOM_NODISCARD loom_status loom_lora_build(loom_model *m, const loom_lora_config *cfg);
void loom_lora_free(loom_model *m);
/* Activations for N rows: each adapter's low-rank product (kept for the backward when training), and the
 * dropout scratch. Accounted as activations. */
LOOM_NODISCARD loom_status loom_lora_reserve(loom_model *m, int64_t N);
void loom_lora_release(loom_model *m);
/* The adapters' initial values (A uniform in +-1/sqrt(fan_in), as PEFT's kaiming_uniform(a=sqrt(5)); B
 * zero) for flat positions [begin, end) of the adapter buffer. */
void loom_lora_init_range(const loom_model *m, uint64_t seed, int64_t begin, int64_t end, float *dst);
/* 1 when block products of role `role` carry adapters */
int loom_lora_has(const loom_model *m, int role);
/* y (N rows, leading dimension ldy) = beta * y + the adapters of role `role` in block l over input x
 * (N x fan_in), on their columns. With beta 0 the frozen product then adds to y (its GEMM with beta 1): the
 * output is written once by the small product and read inside the large one, instead of a pass of its own. */
LOOM_NODISCARD loom_status loom_lora_forward(loom_model *m, int64_t l, int role, const float *x, float *y,
                                             int64_t ldy, int64_t N, float beta);
/* Backward of the same: dy (N rows, ldy) the output's gradient; the adapters' gradients written (acc 0) or
 * added; dx (N x fan_in) = dx_beta * dx + the input's gradient through them (dx_beta 0: the frozen product's
 * input gradient then adds to it, likewise). */
LOOM_NODISCARD loom_status loom_lora_backward(loom_model *m, int64_t l, int role, const float *x, const float *dy,
                                              int64_t ldy, float *dx, float dx_beta, int64_t N, int acc);
/* Dropout masks are a function of (seed, micro-batch counter, block, adapter, element): the forward, a
 * recomputed forward and the backward of one micro-batch draw the same one. training 0: no dropout. */
void loom_lora_begin_micro(loom_model *m, int training);
/* y (N rows, ldy) += the adapter sets' products of role `role` in block l, segment by segment (each its own
 * set, or none), while a cached forward with adapter sets runs; nothing otherwise */
LOOM_NODISCARD loom_status loom_lora_forward_sets(loom_model *m, int64_t l, int role, const float *x, float *y,
                                                  int64_t ldy);
void loom_lora_free_sets(loom_model *m);
/* (2C) floats where the frozen norms' backward writes the weight gradients nobody keeps */
float *loom_lora_dw_scratch(loom_model *m);
/* While a cached forward runs (kvcache.c) its rows are segments of several sequences: the embedding, RoPE
 * and attention go segment by segment through these, and the head scores only the rows loom_kv_logit_rows
 * moves to the front. */
int loom_kv_decoding(const loom_model *m);
LOOM_NODISCARD loom_status loom_kv_embed(loom_model *m, const int32_t *tok, const float *wte, const float *wpe, float *out);
LOOM_NODISCARD loom_status loom_kv_rope(loom_model *m, float *qkv);
LOOM_NODISCARD loom_status loom_kv_attention(loom_model *m, int64_t l);
int64_t loom_kv_logit_rows(loom_model *m, void *x, size_t row_bytes, loom_status *st);
/* the cached forward's segments: their count; segment s's first row, rows and adapter set (0: none) */
int64_t loom_kv_num_segments(const loom_model *m);
void loom_kv_segment_rows(const loom_model *m, int64_t s, int64_t *row0, int64_t *n, int *adapter);

#endif
