/* GPT-2 and LLaMA transformers: parameter layout, forward and backward.
 *
 * One training micro-step's data flow (N = B*T tokens, C width, F hidden, V vocabulary):
 *   tokens -> embedding (N,C) -> L x [norm -> qkv GEMM (+bias, RoPE) -> causal attention -> out GEMM
 *   (+bias) -> residual -> norm -> fc GEMM (bias+GELU fused | SwiGLU) -> proj GEMM -> residual]
 *   -> final norm -> head GEMM (N,V) -> fused softmax+cross-entropy, which overwrites the logits with
 *   their gradient -> the same chain backwards, every weight gradient written (first micro-step) or
 *   added (later ones) straight into the flat gradient buffer.
 *
 * Recompute: each layer's activations are pointers into either a per-layer store or one shared scratch
 * set; `attn` keeps attention outputs and the MLP activation in scratch (recomputed in backward), `full`
 * keeps only each layer's input and re-runs the layer forward before its backward. The forward code is
 * the same in every mode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/model.h"
#include "loom/rng.h"

#include "model_impl.h"

#define P(off) (m->w + (off)) /* the weights: the parameters, or with LoRA the frozen base */
#define P_OPT(off) ((off) >= 0 ? m->w + (off) : NULL) /* an optional parameter (a bias) */

/* ---- the model's products with its weights: fp32, or bf16 copies of both operands (mixed precision) ---- */

/* ---- the weights' low-precision copy: whole (refreshed after each update), or per unit (ZeRO-3, whose
 * parameters are resident a unit at a time): a unit's part made at its first product and dropped when the
 * model is done with the unit ---- */

static size_t lowp_elem(const loom_model *m) { return m->params16 ? sizeof(uint16_t) : sizeof(float); }

static void lowp_drop(loom_model *m, int u) {
    const int64_t a = m->unit_lo[u], b = m->unit_lo[u + 1];
    const size_t e = lowp_elem(m);
    loom_buf_discard(m->be, (m->params16 ? (char *)m->params16 : (char *)m->params_h) + a * e, (size_t)(b - a) * e);
    m->lowp_made[u] = 0;
    loom_mem_track(m->mem, LOOM_MEM_WORKSPACE, -(int64_t)((size_t)(b - a) * e));
}

/* the unit holding flat position k, its part of the copy made when it is not yet */
static loom_status lowp_unit_of(loom_model *m, int64_t k) {
    if (!m->lowp_made) return LOOM_OK;
    int u = 0;
    while (u + 1 < m->n_units && m->unit_lo[u + 1] <= k) u++;
    if (m->lowp_made[u]) return LOOM_OK;
    const int64_t a = m->unit_lo[u], n = m->unit_lo[u + 1] - a;
    if (m->params16) LOOM_CALL(loom_k_f32_to_bf16(m->be, &(loom_f32_to_bf16_args){m->params16 + a, m->w + a, n}));
    else LOOM_CALL(loom_k_round_fp16(m->be, &(loom_round_fp16_args){m->params_h + a, n, m->w + a, n, 1, n}));
    m->lowp_made[u] = 1;
    loom_mem_track(m->mem, LOOM_MEM_WORKSPACE, (int64_t)((size_t)n * lowp_elem(m)));
    return LOOM_OK;
}

/* the model is done with unit u (the hook's params_done): its part of a per-unit copy goes too */
static loom_status unit_done(loom_model *m, int u) {
    if (m->hooks.params_done) LOOM_CALL(m->hooks.params_done(m->hooks.ctx, u));
    if (m->lowp_made && m->lowp_made[u]) lowp_drop(m, u);
    return LOOM_OK;
}

/* a bf16 view of an operand: the weights' bf16 copy when it lies in the parameter buffer, else `rows` rows
 * of `ld` floats converted into scratch */
static loom_status as_bf16(loom_model *m, const float *x, int64_t rows, int64_t ld, uint16_t *scratch,
                           const uint16_t **out) {
    if (x >= m->w && x < m->w + m->w_size) {
        LOOM_CALL(lowp_unit_of(m, x - m->w));
        *out = m->params16 + (x - m->w);
        return LOOM_OK;
    }
    *out = scratch;
    return loom_k_f32_to_bf16(m->be, &(loom_f32_to_bf16_args){.dst = scratch, .src = x, .n = rows * ld});
}

/* an fp16 view of an operand (rows x cols, leading dimension ld): the weights' rounded copy, else rounded
 * into scratch */
static loom_status as_fp16(loom_model *m, const float *x, int64_t rows, int64_t cols, int64_t ld, float *scratch,
                           const float **out) {
    if (x >= m->w && x < m->w + m->w_size) {
        LOOM_CALL(lowp_unit_of(m, x - m->w));
        *out = m->params_h + (x - m->w);
        return LOOM_OK;
    }
    *out = scratch;
    return loom_k_round_fp16(m->be, &(loom_round_fp16_args){scratch, ld, x, ld, rows, cols});
}

/* a bf16 product: both operands' bf16 views (a16, b16: an operand's, when the caller has it in bf16 already) */
static loom_status mm_bf16(loom_model *m, const loom_gemm *g, const uint16_t *a16, const uint16_t *b16) {
    if (!a16) LOOM_CALL(as_bf16(m, g->A, g->trans_a ? g->K : g->M, g->lda, m->scratch16[0], &a16));
    if (!b16) LOOM_CALL(as_bf16(m, g->B, g->trans_b ? g->N : g->K, g->ldb, m->scratch16[1], &b16));
    return loom_k_matmul_bf16(m->be, &(loom_matmul_bf16_args){g->trans_a, g->trans_b, g->M, g->N, g->K, g->alpha, a16,
                                                              g->lda, b16, g->ldb, g->beta, g->C, g->ldc});
}

static loom_status mm(loom_model *m, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (m->params_h) { /* fp16: operands rounded to fp16, exact products accumulated in fp32, the result
                        * stored as fp16 stores it (overflow to inf: what loss scaling watches for) */
        const float *a, *b;
        LOOM_CALL(as_fp16(m, A, ta ? K : M, ta ? M : K, lda, m->scratch16[0], &a));
        LOOM_CALL(as_fp16(m, B, tb ? N : K, tb ? K : N, ldb, m->scratch16[1], &b));
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc}));
        return loom_k_round_fp16(m->be, &(loom_round_fp16_args){C, ldc, C, ldc, M, N});
    }
    if (!m->params16) return loom_k_matmul(m->be, &(loom_gemm){ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc});
    return mm_bf16(m, &(loom_gemm){ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc}, NULL, NULL);
}

/* a product with an activation the model may store in bf16 (acts16): a16 or b16 is that operand, else mm */
static loom_status mm_act(loom_model *m, loom_gemm g, const uint16_t *a16, const uint16_t *b16) {
    if (a16 || b16) return mm_bf16(m, &g, a16, b16);
    return mm(m, g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, g.A, g.lda, g.B, g.ldb, g.beta, g.C, g.ldc);
}

/* a layer's input- and weight-gradient products are independent: in fp32 one call runs them side by side;
 * in bf16 they share their first operand (the output's gradient), converted once for both, or given (a16:
 * a's first operand in bf16, made beside the bias gradient). b16: the weight gradient's activation operand,
 * where the model stores it in bf16 (acts16). */
static loom_status mm_pair(loom_model *m, loom_gemm a, loom_gemm b, const uint16_t *a16, const uint16_t *b16) {
    if (!m->params16 && !m->params_h) return loom_k_matmul_pair(m->be, &(loom_matmul_pair_args){a, b});
    const int64_t rows_a = a.trans_a ? a.K : a.M, rows_b = b.trans_a ? b.K : b.M;
    if (m->params16 && a.A == b.A && rows_a == rows_b && a.lda == b.lda) {
        if (!a16) LOOM_CALL(as_bf16(m, a.A, rows_a, a.lda, m->scratch16[0], &a16));
        LOOM_CALL(mm_bf16(m, &a, a16, NULL));
        return mm_bf16(m, &b, a16, b16);
    }
    LOOM_CALL(mm_act(m, a, a16, NULL));
    return mm_act(m, b, NULL, b16);
}
#define G(off) (m->grads + (off))
#define G_OPT(off) ((off) >= 0 ? m->grads + (off) : NULL)

static loom_status add_param(loom_model *m, int cap, const char *name, int layer, int ndim, int64_t d0,
                             int64_t d1, int decay, int64_t *cursor, int64_t *out_off) {
    LOOM_CHECK(m->n_infos < cap, LOOM_ERR_INTERNAL, "parameter table overflow");
    loom_param_info *p = &m->infos[m->n_infos++];
    const size_t len = strnlen(name, sizeof p->name - 1); /* (no printf: the planner builds thousands of layouts) */
    memcpy(p->name, name, len);
    p->name[len] = '\0';
    p->offset = *cursor;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 1;
    p->numel = d0 * (ndim > 1 ? d1 : 1);
    p->layer = layer;
    p->decay = decay;
    p->tp_split = LOOM_TP_REPLICATED;
    p->full_shape[0] = p->shape[0];
    p->full_shape[1] = p->shape[1];
    m->n_params += p->numel;
    *cursor += (p->numel + 15) / 16 * 16; /* 64-byte aligned views */
    p->canon_offset = -1; /* walk_param sets it */
    *out_off = p->offset;
    return LOOM_OK;
}

/* How the last added parameter is cut over tensor parallelism (see LOOM_TP_* in loom/model.h). */
static void set_split(loom_model *m, int kind, int64_t full0, int64_t full1, int64_t b0, int64_t b1, int64_t b2) {
    const int i = m->n_infos - 1;
    loom_param_info *p = &m->infos[i];
    p->tp_split = m->tp_size > 1 ? kind : LOOM_TP_REPLICATED;
    p->full_shape[0] = full0;
    p->full_shape[1] = full1;
    m->row_blocks[i][0] = b0;
    m->row_blocks[i][1] = b1;
    m->row_blocks[i][2] = b2;
}

/* rows [*lo, *hi) of a block of `size` rows that tp rank r holds (equal parts of ceil(size / tp)) */
static void tp_part(const loom_model *m, int64_t size, int r, int64_t *lo, int64_t *hi) {
    const int64_t chunk = (size + m->tp_size - 1) / m->tp_size;
    *lo = (int64_t)r * chunk < size ? (int64_t)r * chunk : size;
    *hi = *lo + chunk < size ? *lo + chunk : size;
}

/* The local flat index of full-tensor element (row, col) of parameter i, or -1 when another tp rank holds it. */
static int64_t tp_local_index(const loom_model *m, int i, int64_t row, int64_t col) {
    const loom_param_info *p = &m->infos[i];
    int64_t lo, hi;
    if (p->tp_split == LOOM_TP_COLS) {
        tp_part(m, p->full_shape[1], m->tp_rank, &lo, &hi);
        return col >= lo && col < hi ? p->offset + row * p->shape[1] + (col - lo) : -1;
    }
    if (p->tp_split == LOOM_TP_ROWS) {
        int64_t start = 0, local_before = 0;
        for (int b = 0; b < 3 && m->row_blocks[i][b] > 0; b++) {
            const int64_t size = m->row_blocks[i][b];
            tp_part(m, size, m->tp_rank, &lo, &hi);
            if (row < start + size) {
                const int64_t k = row - start;
                return k >= lo && k < hi ? p->offset + (local_before + k - lo) * p->shape[1] + col : -1;
            }
            start += size;
            local_before += hi - lo;
        }
        return -1;
    }
    return p->offset + row * p->shape[1] + col;
}

int64_t loom_model_tp_element(const loom_model *m, int i, int64_t k) {
    const loom_param_info *p = &m->infos[i];
    const int64_t row = k / p->shape[1], col = k % p->shape[1];
    int64_t lo, hi;
    if (p->tp_split == LOOM_TP_COLS) {
        tp_part(m, p->full_shape[1], m->tp_rank, &lo, &hi);
        return row * p->full_shape[1] + lo + col;
    }
    if (p->tp_split == LOOM_TP_ROWS) {
        int64_t start = 0, local_before = 0;
        for (int b = 0; b < 3 && m->row_blocks[i][b] > 0; b++) {
            tp_part(m, m->row_blocks[i][b], m->tp_rank, &lo, &hi);
            if (row < local_before + (hi - lo)) return (start + lo + row - local_before) * p->full_shape[1] + col;
            start += m->row_blocks[i][b];
            local_before += hi - lo;
        }
    }
    return k;
}

/* One parameter of the whole model as the layout walk meets it: it always advances the one-rank layout and
 * the seed index; it takes a place in this rank's buffer only when this rank holds it. */
typedef struct {
    int split;
    int64_t full0, full1, b0, b1, b2;
} split_spec;

static loom_status walk_param(loom_model *m, int cap, int include, const char *name, int layer, int ndim, int64_t d0,
                              int64_t d1, int decay, split_spec sp, int64_t *cursor, int64_t *out_off) {
    const int64_t canon = m->canon_size;
    const int seed = m->n_full_params;
    m->canon_size += (sp.full0 * sp.full1 + 15) / 16 * 16;
    m->n_full_params++;
    *out_off = -1;
    if (!include) return LOOM_OK;
    LOOM_CALL(add_param(m, cap, name, layer, ndim, d0, d1, decay, cursor, out_off));
    set_split(m, sp.split, sp.full0, sp.full1, sp.b0, sp.b1, sp.b2);
    m->infos[m->n_infos - 1].canon_offset = canon;
    m->infos[m->n_infos - 1].seed_index = seed;
    return LOOM_OK;
}

/* "h.<g>.<nm>", without printf: the planner builds thousands of layouts */
static void block_name(char *dst, size_t n, int64_t g, const char *nm) {
    char digits[24];
    int nd = 0;
    for (int64_t v = g; nd == 0 || v > 0; v /= 10) digits[nd++] = (char)('0' + v % 10);
    size_t k = 0;
    dst[k++] = 'h';
    dst[k++] = '.';
    while (nd > 0 && k < n - 2) dst[k++] = digits[--nd];
    dst[k++] = '.';
    for (const char *q = nm; *q && k < n - 1; q++) dst[k++] = *q;
    dst[k] = '\0';
}

static loom_status build_layout(loom_model *m) {
    const loom_model_config *c = &m->cfg;
    const int64_t Lg = c->n_layer, C = m->C, Cq = m->Cq, F = m->F, V = m->V;
    const int gpt = c->family == LOOM_FAMILY_GPT2;
    const int cap = 8 + (int)(m->L ? m->L : 1) * W_COUNT; /* the held blocks' tensors, the ends' */
    m->infos = calloc((size_t)cap, sizeof *m->infos);
    m->row_blocks = calloc((size_t)cap, sizeof *m->row_blocks);
    m->layer_off = malloc((size_t)((m->L ? m->L : 1) * W_COUNT) * sizeof(int64_t));
    LOOM_CHECK(m->infos && m->row_blocks && m->layer_off, LOOM_ERR_NOMEM, "out of memory");
    const int64_t P = m->tp_size, hd = m->hd, Vf = m->V_full;
    for (int64_t i = 0; i < m->L * W_COUNT; i++) m->layer_off[i] = -1;
    int64_t cur = 0, off;
    m->off_wte = m->off_wpe = m->off_lnf_w = m->off_lnf_b = m->off_head = -1;
    const split_spec vocab = {LOOM_TP_ROWS, Vf, C, Vf, 0, 0};
    LOOM_CALL(walk_param(m, cap, m->first, "wte", -1, 2, V, C, 1, vocab, &cur, &m->off_wte));
    if (gpt)
        LOOM_CALL(walk_param(m, cap, m->first, "wpe", -1, 2, c->max_seq_len, C, 1,
                             (split_spec){LOOM_TP_REPLICATED, c->max_seq_len, C, 0, 0, 0}, &cur, &m->off_wpe));
    static const char *const gpt_names[W_COUNT] = {
        "ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias"};
    static const char *const llama_names[W_COUNT] = {
        "attn_norm.weight", NULL, "attn.qkv.weight", NULL, "attn.proj.weight", NULL,
        "mlp_norm.weight", NULL, "mlp.gate_up.weight", NULL, "mlp.down.weight", NULL};
    int64_t l = 0; /* local index of the next held block */
    m->n_units = 0;
    m->unit_lo = calloc((size_t)m->L + 3, sizeof(int64_t));
    LOOM_CHECK(m->unit_lo != NULL, LOOM_ERR_NOMEM, "out of memory");
    if (m->first) m->unit_lo[m->n_units++] = 0;
    for (int64_t g = 0; g < Lg; g++) {
        const int held = l < m->L && m->layer_g[l] == g;
        if (held) m->unit_lo[m->n_units++] = cur;
        for (int w = 0; w < W_COUNT; w++) {
            const char *nm = gpt ? gpt_names[w] : llama_names[w];
            /* bias = 0: no bias in linears nor (GPT-2) LayerNorms, as nanoGPT's bias=False */
            if (!nm || (!c->bias && (w == W_QKV_B || w == W_ATTN_PROJ_B || w == W_FC_B || w == W_MLP_PROJ_B ||
                                     w == W_LN1_B || w == W_LN2_B)))
                continue;
            int64_t d0 = C, d1 = 1;
            int ndim = 1;
            switch (w) {
            case W_QKV_W: d0 = Cq; d1 = C; ndim = 2; break;
            case W_QKV_B: d0 = Cq; break;
            case W_ATTN_PROJ_W: d0 = C; d1 = m->H * m->hd; ndim = 2; break;
            case W_FC_W: d0 = gpt ? F : 2 * F; d1 = C; ndim = 2; break;
            case W_FC_B: d0 = gpt ? F : 2 * F; break;
            case W_MLP_PROJ_W: d0 = C; d1 = F; ndim = 2; break;
            default: break;
            }
            const int64_t Hf = m->H * P, KVf = m->KV * P, Ff = m->F * P;
            split_spec sp = {LOOM_TP_REPLICATED, d0, d1, 0, 0, 0};
            switch (w) {
            case W_QKV_W: case W_QKV_B: sp = (split_spec){LOOM_TP_ROWS, d0 * P, d1, Hf * hd, KVf * hd, KVf * hd}; break;
            case W_FC_W: case W_FC_B: sp = (split_spec){LOOM_TP_ROWS, d0 * P, d1, Ff, gpt ? 0 : Ff, 0}; break;
            case W_ATTN_PROJ_W: case W_MLP_PROJ_W: sp = (split_spec){LOOM_TP_COLS, d0, d1 * P, 0, 0, 0}; break;
            default: break;
            }
            char name[64] = ""; /* the blocks of other stages only advance the whole model's offsets */
            if (held) block_name(name, sizeof name, g, nm);
            LOOM_CALL(walk_param(m, cap, held, name, (int)g, ndim, d0, d1, ndim == 2, sp, &cur, &off));
            if (held) m->layer_off[l * W_COUNT + w] = off;
        }
        if (held) l++;
    }
    if (m->last) m->unit_lo[m->n_units++] = cur;
    const split_spec repl = {LOOM_TP_REPLICATED, C, 1, 0, 0, 0};
    LOOM_CALL(walk_param(m, cap, m->last, gpt ? "ln_f.weight" : "norm_f.weight", -1, 1, C, 1, 0, repl, &cur,
                         &m->off_lnf_w));
    if (gpt && c->bias) LOOM_CALL(walk_param(m, cap, m->last, "ln_f.bias", -1, 1, C, 1, 0, repl, &cur, &m->off_lnf_b));
    if (!c->tie_embeddings) {
        LOOM_CALL(walk_param(m, cap, m->last, "lm_head.weight", -1, 2, V, C, 1, vocab, &cur, &m->off_head));
    } else if (m->first) {
        m->off_head = m->off_wte;
    } else if (m->last) { /* the tied head on a later stage: its own copy of the embedding matrix */
        LOOM_CALL(add_param(m, cap, "wte", -1, 2, V, C, 1, &cur, &m->off_head));
        set_split(m, vocab.split, vocab.full0, vocab.full1, vocab.b0, vocab.b1, vocab.b2);
        m->infos[m->n_infos - 1].canon_offset = 0; /* the embedding leads the one-rank layout */
        m->infos[m->n_infos - 1].seed_index = 0;
        m->infos[m->n_infos - 1].tied_copy = 1;
    }
    m->buf_size = cur;
    m->unit_lo[m->n_units] = cur;
    return LOOM_OK;
}

static loom_status model_create(const loom_model_config *cfg, const loom_model_part *part, loom_backend *be,
                                const loom_model_options *o, int tps, int tpr, loom_mem *mem, loom_model **out);

loom_status loom_model_init_part(const loom_model_config *cfg, const loom_model_part *part, loom_backend *be,
                                 loom_mem *mem, const loom_model_options *opts, loom_model **out) {
    const loom_model_options none = {0};
    if (!opts) opts = &none;
    LOOM_CHECK(be != NULL, LOOM_ERR_INVALID_ARG, "a model needs a backend");
    return model_create(cfg, part, be, opts, loom_comm_size(opts->tp), loom_comm_rank(opts->tp), mem, out);
}

loom_status loom_model_init_layout(const loom_model_config *cfg, const loom_model_part *part, int tp_size,
                                   int tp_rank, loom_model **out) {
    LOOM_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size, LOOM_ERR_INVALID_ARG, "tp rank %d of %d", tp_rank,
               tp_size);
    loom_model_part whole = {1, {0}, {cfg->n_layer}, 1, 1};
    const loom_model_options o = {.flags = LOOM_MODEL_GRADS | LOOM_MODEL_EXTERNAL_PARAMS | LOOM_MODEL_EXTERNAL_GRADS};
    return model_create(cfg, part ? part : &whole, NULL, &o, tp_size, tp_rank, NULL, out);
}

loom_status loom_model_init_lora_layout(const loom_model_config *cfg, const loom_lora_config *lora, loom_model **out) {
    loom_model_part whole = {1, {0}, {cfg->n_layer}, 1, 1};
    const loom_model_options o = {.flags = LOOM_MODEL_GRADS | LOOM_MODEL_EXTERNAL_PARAMS | LOOM_MODEL_EXTERNAL_GRADS,
                                  .lora = *lora};
    return model_create(cfg, &whole, NULL, &o, 1, 0, NULL, out);
}

static loom_status model_create(const loom_model_config *cfg, const loom_model_part *part, loom_backend *be,
                                const loom_model_options *o, int tps, int tpr, loom_mem *mem, loom_model **out) {
    const int flags = o->flags;
    *out = NULL;
    LOOM_CALL(loom_model_config_validate(cfg));
    LOOM_CHECK(part->n_chunks >= 1 && part->n_chunks <= LOOM_MAX_CHUNKS, LOOM_ERR_INVALID_ARG,
               "a model part has 1..%d chunks, got %d", LOOM_MAX_CHUNKS, part->n_chunks);
    for (int k = 0; k < part->n_chunks; k++)
        LOOM_CHECK(part->layer_lo[k] < part->layer_hi[k] && part->layer_lo[k] >= 0 &&
                       part->layer_hi[k] <= cfg->n_layer && (k == 0 || part->layer_lo[k] >= part->layer_hi[k - 1]),
                   LOOM_ERR_INVALID_ARG, "model part chunk %d covers blocks [%lld, %lld) of %lld", k,
                   (long long)part->layer_lo[k], (long long)part->layer_hi[k], (long long)cfg->n_layer);
    LOOM_CHECK(cfg->n_head % tps == 0 && cfg->n_kv_head % tps == 0 && cfg->d_ff % tps == 0, LOOM_ERR_CONFIG,
               "tensor parallel size %d must divide the heads (%lld), the key/value heads (%lld) and d_ff (%lld)",
               tps, (long long)cfg->n_head, (long long)cfg->n_kv_head, (long long)cfg->d_ff);
    LOOM_CHECK(cfg->vocab_size >= 2 * tps, LOOM_ERR_CONFIG, "vocabulary %lld too small for tensor parallel size %d",
               (long long)cfg->vocab_size, tps);
    loom_model *m = calloc(1, sizeof *m);
    LOOM_CHECK(m != NULL, LOOM_ERR_NOMEM, "out of memory");
    m->head_grads_acc = -1;
    m->cfg = *cfg;
    m->first = part->first;
    m->last = part->last;
    m->n_chunks = part->n_chunks;
    for (int k = 0; k < part->n_chunks; k++) m->L += part->layer_hi[k] - part->layer_lo[k];
    m->layer_g = calloc((size_t)m->L, sizeof(int64_t));
    m->layer_chunk = calloc((size_t)m->L, sizeof(int));
    if (!m->layer_g || !m->layer_chunk) {
        loom_model_free(&m);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    for (int k = 0, l = 0; k < part->n_chunks; k++) {
        m->chunk_l0[k] = l;
        for (int64_t g = part->layer_lo[k]; g < part->layer_hi[k]; g++, l++) {
            m->layer_g[l] = g;
            m->layer_chunk[l] = k;
        }
        m->chunk_l1[k] = l;
    }
    m->be = be;
    m->tp = o->tp;
    m->mem = mem;
    m->parts = o->parts;
    m->C = cfg->d_model;
    m->H = cfg->n_head / tps;
    m->KV = cfg->n_kv_head / tps;
    m->hd = cfg->d_model / cfg->n_head;
    m->Cq = (m->H + 2 * m->KV) * m->hd;
    m->F = cfg->d_ff / tps;
    m->tp_size = tps;
    m->tp_rank = tpr;
    m->sp = o->sp;
    m->sp_size = loom_comm_size(o->sp);
    m->sp_rank = loom_comm_rank(o->sp);
    m->tp_sp = o->tp_seq_parallel && tps > 1;
    m->V_full = cfg->vocab_size;
    {
        int64_t lo, hi;
        tp_part(m, m->V_full, m->tp_rank, &lo, &hi);
        m->v0 = lo;
        m->V = hi - lo;
    }
    loom_status st;
    LOOM_CHECK_GOTO(st, o->precision >= LOOM_PRECISION_FP32 && o->precision <= LOOM_PRECISION_FP16, LOOM_ERR_INVALID_ARG,
                    fail, "unknown precision %d", (int)o->precision);
    m->precision = o->precision;
    if (m->tp_sp) {
        m->sp_counts = calloc((size_t)tps, sizeof(int64_t));
        LOOM_CHECK_GOTO(st, m->sp_counts != NULL, LOOM_ERR_NOMEM, fail, "out of memory");
    }
    LOOM_CALL_GOTO(st, build_layout(m), fail);
    m->w_infos = m->infos;
    m->w_n_infos = m->n_infos;
    m->w_size = m->buf_size;
    m->w_n_params = m->n_params;
    if (o->lora.r > 0) LOOM_CALL_GOTO(st, loom_lora_build(m, &o->lora), fail); /* the flat buffers: adapters */
    m->own_params = !(flags & LOOM_MODEL_EXTERNAL_PARAMS);
    m->own_grads = (flags & LOOM_MODEL_GRADS) && !(flags & LOOM_MODEL_EXTERNAL_GRADS);
    m->has_grads = (flags & LOOM_MODEL_GRADS) != 0;
    /* weights held in bf16 only: fp32 until their bf16 copy is made, then only what reads fp32 */
    const int bf16_only = be && (m->lora ? o->lora.base_bf16 : o->weights_bf16);
    if (bf16_only) {
        LOOM_CHECK_GOTO(st, m->precision == LOOM_PRECISION_BF16, LOOM_ERR_CONFIG, fail,
                        "weights held in bf16 only need bf16 precision (the products read the bf16 copy)");
        LOOM_CHECK_GOTO(st, loom_backend_host_accessible(be), LOOM_ERR_UNSUPPORTED, fail,
                        "weights held in bf16 only run on the CPU backend only yet (%s)", loom_backend_name(be));
        LOOM_CHECK_GOTO(st, m->lora || (m->own_params && !m->has_grads), LOOM_ERR_CONFIG, fail,
                        "weights held in bf16 only are an inference model's (its own parameters, no gradients: "
                        "training updates fp32 master weights)");
    }
    const size_t bytes = (size_t)m->buf_size * sizeof(float);
    m->w_resident = -1;
    if (m->own_params && bf16_only && !m->lora) {
        LOOM_CALL_GOTO(st, loom_buf_reserve(be, bytes, (void **)&m->params), fail);
        m->w_resident = 0; /* accounted as pieces are written (loom_model_weights_done) */
    } else if (m->own_params) {
        LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_PARAMS, bytes, (void **)&m->params), fail);
    }
    if (m->own_grads) LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_GRADS, bytes, (void **)&m->grads), fail);
    if (!m->lora) {
        m->w = m->params;
    } else if (bf16_only) {
        LOOM_CALL_GOTO(st, loom_buf_reserve(be, (size_t)m->w_size * sizeof(float), (void **)&m->w), fail);
        m->w_resident = 0;
    } else if (be) { /* the frozen weights: whole on every rank, whatever the ZeRO stage (nothing of them trains) */
        LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_PARAMS, (size_t)m->w_size * sizeof(float), (void **)&m->w), fail);
    }
    if (be && m->precision != LOOM_PRECISION_FP32) {
        /* bf16's copy, or fp16's (the weights rounded to fp16, held as fp32 values): whole, or per unit */
        void **copy = m->precision == LOOM_PRECISION_BF16 ? (void **)&m->params16 : (void **)&m->params_h;
        const size_t copy_bytes = (size_t)m->w_size * (m->precision == LOOM_PRECISION_BF16 ? sizeof(uint16_t) : sizeof(float));
        if ((flags & LOOM_MODEL_LOWP_PER_UNIT) && !m->lora) {
            m->lowp_made = calloc((size_t)m->n_units, 1);
            LOOM_CHECK_GOTO(st, m->lowp_made != NULL, LOOM_ERR_NOMEM, fail, "out of memory");
            LOOM_CALL_GOTO(st, loom_buf_reserve(be, copy_bytes, copy), fail);
        } else {
            LOOM_CALL_GOTO(st, loom_buf_alloc(be, mem, LOOM_MEM_PARAMS, copy_bytes, copy), fail);
        }
    }
    *out = m;
    return LOOM_OK;
fail:
    loom_model_free(&m);
    return st;
}

loom_status loom_model_init(const loom_model_config *cfg, loom_backend *be, loom_mem *mem,
                            const loom_model_options *opts, loom_model **out) {
    loom_model_part whole = {1, {0}, {cfg->n_layer}, 1, 1};
    return loom_model_init_part(cfg, &whole, be, mem, opts, out);
}

int loom_model_num_chunks(const loom_model *m) { return m->n_chunks; }
loom_comm *loom_model_parts_comm(const loom_model *m) { return m->parts; }

static void free_acts(loom_model *m) {
    loom_backend *be = m->be;
    const int64_t N = m->cap_B * m->cap_T;
    loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->act_mem, m->act_bytes);
    for (int i = 0; i < 2; i++) loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->ring[i], m->ring_bytes);
    loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->ring_out, (size_t)(N * m->H * m->hd) * sizeof(float));
    loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->ring_lse, (size_t)(N * m->H) * sizeof(float));
    m->ring[0] = m->ring[1] = m->ring_out = m->ring_lse = NULL;
    loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->logits_whole, m->logits_whole_bytes);
    m->logits_whole = NULL;
    m->logits_whole_bytes = 0;
    m->logits_kept = 0;
    for (int i = 0; i < 2; i++) loom_buf_free(be, m->mem, LOOM_MEM_ACTS, m->scratch16[i], m->scratch16_bytes[i]);
    m->scratch16[0] = m->scratch16[1] = NULL;
    m->scratch16_bytes[0] = m->scratch16_bytes[1] = 0;
    loom_buf_free(be, m->mem, LOOM_MEM_WORKSPACE, m->tok_dev, (size_t)(2 * N) * sizeof(int32_t));
    loom_buf_free(be, m->mem, LOOM_MEM_WORKSPACE, m->ce_stats, (size_t)(3 * N) * sizeof(float));
    m->tok_dev = m->tgt_dev = NULL;
    m->ce_stats = NULL;
    loom_lora_release(m);
    free(m->losses_host);
    free(m->tok_local);
    m->losses_host = NULL;
    m->tok_local = NULL;
    m->act_mem = NULL;
    m->act_bytes = 0;
    for (int i = 0; m->slots && i < m->n_slots; i++) free(m->slots[i].acts);
    free(m->slots);
    m->slots = NULL;
    m->n_slots = 0;
    m->acts = NULL;
    m->cap_B = m->cap_T = 0;
}

void loom_model_free(loom_model **pm) {
    if (!pm || !*pm) return;
    loom_model *m = *pm;
    free_acts(m);
    loom_backend *be = m->be;
    const size_t bytes = (size_t)m->buf_size * sizeof(float), w_bytes = (size_t)m->w_size * sizeof(float);
    if (m->own_params && !m->lora && m->w_resident >= 0) { /* weights held in bf16 only: what stayed resident */
        loom_mem_track(m->mem, LOOM_MEM_PARAMS, -m->w_resident);
        loom_buf_unreserve(be, m->params, bytes);
    } else if (m->own_params) {
        loom_buf_free(be, m->mem, LOOM_MEM_PARAMS, m->params, bytes);
    }
    if (m->own_grads) loom_buf_free(be, m->mem, LOOM_MEM_GRADS, m->grads, bytes);
    if (m->lowp_made) { /* reserved: the made units were accounted as they were made */
        for (int u = 0; u < m->n_units; u++)
            if (m->lowp_made[u]) lowp_drop(m, u);
        if (m->params16 || m->params_h)
            loom_buf_unreserve(be, m->params16 ? (void *)m->params16 : (void *)m->params_h, (size_t)m->w_size * lowp_elem(m));
        free(m->lowp_made);
    } else {
        loom_buf_free(be, m->mem, LOOM_MEM_PARAMS, m->params16, (size_t)m->w_size * sizeof(uint16_t));
        loom_buf_free(be, m->mem, LOOM_MEM_PARAMS, m->params_h, w_bytes);
    }
    if (m->lora && m->w_resident >= 0) {
        loom_mem_track(m->mem, LOOM_MEM_PARAMS, -m->w_resident);
        loom_buf_unreserve(be, m->w, w_bytes);
    } else if (m->lora) {
        loom_buf_free(be, m->mem, LOOM_MEM_PARAMS, m->w, w_bytes);
    }
    if (m->lora) free(m->w_infos);
    loom_lora_free(m); /* the adapters, or a server's adapter sets */
    free(m->infos);
    free(m->row_blocks);
    free(m->sp_counts);
    free(m->layer_g);
    free(m->layer_chunk);
    free(m->unit_lo);
    free(m->layer_off);
    loom_kv_cache_free(m);
    free(m);
    *pm = NULL;
}

static void init_weights_range(const loom_model *m, const loom_param_info *infos, int n_infos, uint64_t seed,
                               int64_t begin, int64_t end, float *dst);

/* a buffer of n floats (backend memory) filled from a range initialiser (frozen: the weights' own) */
static loom_status init_buffer(loom_model *m, uint64_t seed, float *buf, int64_t n, int frozen) {
    float *host = loom_backend_host_accessible(m->be) ? buf : malloc((size_t)n * sizeof(float));
    LOOM_CHECK(host != NULL, LOOM_ERR_NOMEM, "out of memory initialising %lld parameters", (long long)n);
    if (frozen) init_weights_range(m, m->w_infos, m->w_n_infos, seed, 0, n, host);
    else loom_model_init_weights_range(m, seed, 0, n, host);
    if (host == buf) return LOOM_OK;
    loom_status st = loom_buf_upload(m->be, buf, host, (size_t)n * sizeof(float));
    free(host);
    return st;
}

loom_status loom_model_init_weights(loom_model *m, uint64_t seed) {
    if (!m->lora && m->w_resident >= 0) return loom_model_init_frozen(m, seed); /* held in bf16 only: in pieces */
    return init_buffer(m, seed, m->params, m->buf_size, 0);
}

loom_status loom_model_init_frozen(loom_model *m, uint64_t seed) {
    m->w_lowp_fresh = 0;
    if (m->w_resident < 0) return init_buffer(m, seed, m->w, m->w_size, 1);
    /* held in bf16 only: a piece at a time, each made bf16 before the next (never the whole in fp32) */
    const int64_t piece = (int64_t)1 << 20; /* floats: a multiple of the page */
    for (int64_t lo = 0; lo < m->w_size; lo += piece) {
        const int64_t hi = lo + piece < m->w_size ? lo + piece : m->w_size;
        init_weights_range(m, m->w_infos, m->w_n_infos, seed, lo, hi, m->w + lo); /* host memory (CPU) */
        LOOM_CALL(loom_model_weights_done(m, lo, hi));
    }
    return LOOM_OK;
}

void loom_model_init_weights_range(const loom_model *m, uint64_t seed, int64_t begin, int64_t end, float *dst) {
    if (m->lora) loom_lora_init_range(m, seed, begin, end, dst);
    else init_weights_range(m, m->infos, m->n_infos, seed, begin, end, dst);
}

static void init_weights_range(const loom_model *m, const loom_param_info *infos, int n_infos, uint64_t seed,
                               int64_t begin, int64_t end, float *dst) {
    const loom_model_config *c = &m->cfg;
    double resid_std = c->init_std / sqrt(2.0 * (double)c->n_layer); /* the whole model's depth */
    memset(dst, 0, (size_t)(end - begin) * sizeof(float)); /* alignment padding stays zero */
    /* Each parameter draws from its own stream (seed, parameter index), so the values do not depend on
     * how parameters are later laid out or sharded: a shard replays its parameters' streams up to its end. */
    for (int i = 0; i < n_infos; i++) {
        const loom_param_info *p = &infos[i];
        const int64_t lo = p->offset > begin ? p->offset : begin;
        const int64_t hi = p->offset + p->numel < end ? p->offset + p->numel : end;
        if (lo >= hi) continue;
        float *w = dst + (p->offset - begin); /* w[j] for j in [lo - offset, hi - offset) only */
        const char *nm = p->name;
        size_t len = strlen(nm);
        int is_norm = strstr(nm, "ln_") || strstr(nm, "norm");
        int is_bias = len > 5 && strcmp(nm + len - 5, ".bias") == 0;
        if (is_bias) continue;
        if (is_norm) {
            for (int64_t j = lo - p->offset; j < hi - p->offset; j++) w[j] = 1.0f;
            continue;
        }
        int resid = strstr(nm, "attn.proj.weight") || strstr(nm, "mlp.proj.weight") || strstr(nm, "mlp.down.weight");
        double sd = resid ? resid_std : c->init_std;
        loom_rng r;
        loom_rng_seed(&r, seed * 0x9e3779b97f4a7c15ull + (uint64_t)p->seed_index + 1);
        if (p->tp_split != LOOM_TP_REPLICATED) {
            /* the whole tensor's stream, each value kept where this rank holds it: a tp shard of the
             * one-process initialisation */
            const int64_t cols = p->full_shape[1], n = p->full_shape[0] * cols;
            float v[1024];
            for (int64_t j0 = 0; j0 < n; j0 += 1024) {
                const int64_t k = n - j0 < 1024 ? n - j0 : 1024;
                loom_rng_normals(&r, sd, k, v);
                for (int64_t j = j0; j < j0 + k; j++) {
                    const int64_t at = tp_local_index(m, i, j / cols, j % cols);
                    if (at >= lo && at < hi) dst[at - begin] = v[j - j0];
                }
            }
            continue;
        }
        for (int64_t j = 0; j < lo - p->offset; j++) { /* the values before the range: their two uniforms each */
            (void)loom_rng_next(&r);
            (void)loom_rng_next(&r);
        }
        loom_rng_normals(&r, sd, hi - lo, w + (lo - p->offset));
    }
}

int loom_model_num_units(const loom_model *m) { return m->n_units; }

void loom_model_unit_range(const loom_model *m, int unit, int64_t *begin, int64_t *end) {
    *begin = m->unit_lo[unit];
    *end = m->unit_lo[unit + 1];
}

void loom_model_set_hooks(loom_model *m, const loom_model_hooks *h) {
    if (h) m->hooks = *h;
    else memset(&m->hooks, 0, sizeof m->hooks);
}

void loom_model_set_buffers(loom_model *m, float *params, float *grads) {
    if (params) m->params = params;
    if (params && !m->lora) m->w = params;
    if (grads) m->grads = grads;
}

loom_status loom_model_reserve(loom_model *m, int64_t B, int64_t T, loom_recompute rc) {
    return loom_model_reserve_slots(m, B, T, rc, 1);
}

void loom_model_use_slot(loom_model *m, int slot) {
    const act_slot *a = &m->slots[slot];
    m->slot = slot;
    m->enc = a->enc;
    m->lnf = a->lnf;
    m->lnf16 = a->lnf16;
    m->lnf_mean = a->lnf_mean;
    m->lnf_rstd = a->lnf_rstd;
    m->logits = a->logits;
    m->losses = a->losses;
    m->acts = a->acts;
}

/* bf16 training stores the activations that only products read (the norms' outputs, the MLP activation) in
 * bf16, rounded as they are written: the products read the bits they would have converted (so the numbers
 * are unchanged), nothing converts them, they take half the memory, and Megatron-SP gathers them in bf16
 * (two to a 32-bit word: C even). Not where LoRA's adapters read them in fp32. Generation on a training model
 * goes through the same forward; an inference model (no gradients) keeps fp32 for its adapter sets. */
static int acts_bf16(const loom_model *m, loom_precision p, int tp_sp) {
    return p == LOOM_PRECISION_BF16 && m->has_grads && !m->lora && (!tp_sp || m->C % 2 == 0);
}

/* A whole model training with one micro-batch in flight makes the head's gradient products in its forward,
 * a piece of logits at a time, right after the loss turned the piece into its gradient (the fused linear
 * cross-entropy of Liger and others): no buffer ever holds all N x V logits or their gradient, in any
 * precision. A pipeline's last stage cannot (its forward and backward are separate calls). */
static int head_grads_in_forward(const loom_model *m, int slots) {
    return m->has_grads && slots == 1 && m->first && m->last && m->n_chunks == 1;
}

/* Rows of the slot's fp32 logits buffer for micro-batches of N rows: LOOM_MODEL_HEAD_PIECE_ROWS where the
 * forward makes the head's gradient products (above), or where bf16 training with one micro-batch in flight
 * has the loss write the logits' gradient in bf16 (scratch16[0]; with tp, this rank's columns), which the
 * head's backward multiplies as it is: nothing reads the fp32 logits after the loss, so the head makes and
 * scores them a piece at a time. Pieces that large keep the head's product a wide one (its weights are
 * converted or packed once a piece: ~2% of the head's product here). Elsewhere the fp32 logits (or their
 * gradient) are kept whole. */
static int64_t logit_rows(const loom_model *m, loom_precision p, int slots, int64_t N) {
    return loom_model_head_piece(N, head_grads_in_forward(m, slots) ||
                                        (p == LOOM_PRECISION_BF16 && m->has_grads && slots == 1));
}

/* The activation arena's layout for B x T micro-batches (one function for reserve and the planner). */
typedef struct {
    int64_t Nr, s_ln, s_stat, s_qkv, s_att, s_lse, s_fc, s_act, s_lnf, s_lnf_full; /* floats (bf16: half as many) */
    int64_t logit_rows;
    int keep_ln, keep_att, keep_act, acts16;
    int64_t total; /* floats */
} arena_plan;

static arena_plan plan_arena(const loom_model *m, int64_t B, int64_t T, loom_recompute rc, int slots, int tp_sp,
                             loom_precision precision) {
    const int64_t L = m->L, N = B * T, C = m->C, Cq = m->Cq, F = m->F, V = m->V, H = m->H;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t fcw = gpt ? F : 2 * F;
    const int acts16 = acts_bf16(m, precision, tp_sp);
    arena_plan p;
    p.Nr = tp_sp ? N / m->tp_size : N; /* rows of the norms and the residual stream here */
    const int64_t Nr = p.Nr;
    p.logit_rows = logit_rows(m, precision, slots, N);
    /* per-tensor sizes of one layer */
    p.acts16 = acts16;
#define STORED(n) (acts16 ? ((n) + 1) / 2 : (n)) /* the floats a product-only operand takes */
    p.s_ln = STORED(Nr * C), p.s_stat = Nr, p.s_qkv = N * Cq, p.s_att = N * C, p.s_lse = B * H * T, p.s_fc = N * fcw;
    p.s_act = STORED(N * F), p.s_lnf = STORED(Nr * C), p.s_lnf_full = STORED(N * C);
#undef STORED
    /* which tensors are stored per layer (1) or live in the shared scratch (0) */
    p.keep_ln = rc != LOOM_RECOMPUTE_FULL, p.keep_att = rc == LOOM_RECOMPUTE_NONE, p.keep_act = rc == LOOM_RECOMPUTE_NONE;
    int64_t per_layer_store = Nr * C; /* out */
    const int64_t ln_pack = 2 * p.s_ln + 4 * p.s_stat + p.s_qkv + Nr * C /* res1 */ + p.s_fc;
    if (p.keep_ln) per_layer_store += ln_pack;
    if (p.keep_att) per_layer_store += p.s_att + p.s_lse;
    if (p.keep_act) per_layer_store += p.s_act;
    const int64_t scratch = (p.keep_ln ? 0 : ln_pack) + (p.keep_att ? 0 : p.s_att + p.s_lse) + (p.keep_act ? 0 : p.s_act);
    /* what one micro-batch in flight keeps: its inputs, its layers' stores, the head's outputs */
    const int64_t per_slot = L * per_layer_store + (m->first ? Nr * C : 0) + (m->n_chunks - (m->first ? 1 : 0)) * Nr * C +
                             (m->last ? p.s_lnf + 2 * Nr + p.logit_rows * V + N + (tp_sp ? p.s_lnf_full : 0) : 0) +
                             (m->has_grads ? Nr * C : 0);
    const int64_t grads = m->has_grads ? (N * C * 3 + N * Cq + N * fcw + N * F) : 0;
    const int64_t rope = (T * (m->hd / 2) + 15) / 16 * 16 * 2;
    const int64_t sp_scratch = tp_sp ? 2 * N * C + 8 * C + (gpt ? T * C : 0) : 0;
    p.total = (int64_t)slots * per_slot + scratch + grads + rope + sp_scratch + (64 + 16 * (int64_t)L * 16) * 64 * slots;
    return p;
}

int64_t loom_model_token_workspace(const loom_model *m, int64_t tokens) {
    return tokens * (int64_t)(2 * sizeof(int32_t) + (m->tp_size > 1 ? 3 * sizeof(float) : 0));
}

int64_t loom_model_activation_bytes(const loom_model *m, int64_t B, int64_t T, loom_recompute rc, int slots, int sp,
                                    int tp_seq_parallel, loom_precision precision) {
    const int tp_sp = tp_seq_parallel && m->tp_size > 1;
    int64_t bytes = plan_arena(m, B, T, rc, slots, tp_sp, precision).total * (int64_t)sizeof(float);
    if (sp > 1) /* ring attention's packets and one block's partial output */
        bytes += (int64_t)sizeof(float) * (2 * B * T * 4 * m->KV * m->hd + B * T * m->H * m->hd + B * T * m->H);
    return bytes;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Elements of low-precision scratch buffer i (mm_bf16, as_fp16) for N rows. [0]: a product's first operand,
 * the widest of the activations and gradients (C, Cq, H hd, fc width) or the logits' gradient (V wide: a
 * piece of rows where the forward makes the head's gradient products, else all N). [1]: a weight gradient's
 * second operand, the product's input: a norm's output (C), attention's (H hd) or the MLP activation (F);
 * where bf16 stores the norms' and the MLP's outputs (acts16) only attention's is left. */
static int64_t lowp_scratch_elems(const loom_model *m, int i, int acts16, int slots, int64_t N) {
    const int64_t fcw = m->cfg.family == LOOM_FAMILY_GPT2 ? m->F : 2 * m->F, Ca = m->H * m->hd;
    if (i == 1) return N * (acts16 ? Ca : max64(max64(m->C, Ca), m->F));
    const int64_t head_rows = head_grads_in_forward(m, slots) ? loom_model_head_piece(N, 1) : N;
    return max64(N * max64(max64(m->C, m->Cq), max64(Ca, fcw)), head_rows * m->V);
}

int64_t loom_model_lowp_scratch_bytes(const loom_model *m, int64_t B, int64_t T, loom_precision p, int slots,
                                      int tp_seq_parallel) {
    if (p == LOOM_PRECISION_FP32) return 0;
    const int acts16 = acts_bf16(m, p, tp_seq_parallel && m->tp_size > 1);
    return (lowp_scratch_elems(m, 0, acts16, slots, B * T) + lowp_scratch_elems(m, 1, acts16, slots, B * T)) *
           (int64_t)(p == LOOM_PRECISION_BF16 ? sizeof(uint16_t) : sizeof(float));
}

loom_status loom_model_reserve_slots(loom_model *m, int64_t B, int64_t T, loom_recompute rc, int slots) {
    LOOM_CHECK(B >= 1 && T >= 1 && slots >= 1, LOOM_ERR_INVALID_ARG,
               "batch %lld, sequence length %lld and slots %d must be >= 1", (long long)B, (long long)T, slots);
    LOOM_CHECK(T * m->sp_size <= m->cfg.max_seq_len, LOOM_ERR_CONFIG,
               "sequence length %lld exceeds the model's max_seq_len %lld", (long long)(T * m->sp_size),
               (long long)m->cfg.max_seq_len);
    if (m->act_mem && B <= m->cap_B && T <= m->cap_T && rc == m->rc && slots <= m->n_slots) return LOOM_OK;
    free_acts(m);
    const int64_t L = m->L, N = B * T, C = m->C, Cq = m->Cq, F = m->F, V = m->V;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t fcw = gpt ? F : 2 * F;
    LOOM_CHECK(!m->tp_sp || N % m->tp_size == 0, LOOM_ERR_CONFIG,
               "tp sequence parallelism: the micro-batch's %lld tokens must divide over tp = %d", (long long)N,
               m->tp_size);
    const arena_plan ap = plan_arena(m, B, T, rc, slots, m->tp_sp, m->precision);
    const int64_t Nr = ap.Nr, s_ln = ap.s_ln, s_stat = ap.s_stat, s_qkv = ap.s_qkv, s_att = ap.s_att, s_lse = ap.s_lse,
                  s_fc = ap.s_fc, s_act = ap.s_act;
    const int keep_ln = ap.keep_ln, keep_att = ap.keep_att, keep_act = ap.keep_act;
    const int64_t total = ap.total;
    loom_backend *be = m->be;
    m->act_bytes = (size_t)total * sizeof(float);
    LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_ACTS, m->act_bytes, (void **)&m->act_mem));
    m->slots = calloc((size_t)slots, sizeof *m->slots);
    LOOM_CHECK(m->slots != NULL, LOOM_ERR_NOMEM, "out of memory");
    for (int i = 0; i < slots; i++) {
        m->slots[i].acts = calloc((size_t)(L ? L : 1), sizeof(layer_acts));
        LOOM_CHECK(m->slots[i].acts != NULL, LOOM_ERR_NOMEM, "out of memory");
    }
    m->n_slots = slots;
    float *cur = m->act_mem;
#define TAKE(n) (cur += (((n) + 15) / 16 * 16), cur - (((n) + 15) / 16 * 16))
    /* a product-only operand: bf16 (acts16) or fp32, in n floats' room */
#define TAKE_OPERAND(n, f32, b16)                          \
    do {                                                   \
        float *t_ = TAKE(n);                               \
        if (ap.acts16) (b16) = (uint16_t *)(void *)t_;     \
        else (f32) = t_;                                   \
    } while (0)
    if (m->has_grads) {
        m->dres = TAKE(N * C);
        m->dln = TAKE(N * C);
        m->datty = TAKE(N * C);
        m->dqkv = TAKE(N * Cq);
        m->dfc = TAKE(N * fcw);
        m->dfc_act = TAKE(N * F);
    }
    m->rope_cos = TAKE(T * (m->hd / 2));
    m->rope_sin = TAKE(T * (m->hd / 2));
    if (m->tp_sp) {
        m->sp_gather = TAKE(N * C);
        m->sp_partial = TAKE(N * C);
        m->sp_rep = TAKE(8 * C);
        if (gpt) m->sp_wpe = TAKE(T * C);
    }
    layer_acts sc;
    memset(&sc, 0, sizeof sc);
    if (!keep_ln) {
        TAKE_OPERAND(s_ln, sc.ln1, sc.ln1_16); sc.ln1_mean = TAKE(s_stat); sc.ln1_rstd = TAKE(s_stat); sc.qkv = TAKE(s_qkv);
        sc.res1 = TAKE(Nr * C); TAKE_OPERAND(s_ln, sc.ln2, sc.ln2_16); sc.ln2_mean = TAKE(s_stat); sc.ln2_rstd = TAKE(s_stat);
        sc.fc_pre = TAKE(s_fc);
    }
    if (!keep_att) { sc.atty = TAKE(s_att); sc.lse = TAKE(s_lse); }
    if (!keep_act) TAKE_OPERAND(s_act, sc.fc_act, sc.fc_act16);
    for (int i = 0; i < slots; i++) {
        act_slot *as = &m->slots[i];
        if (m->first) as->enc = TAKE(Nr * C);
        for (int k = 0; k < m->n_chunks; k++)
            as->chunk_in[k] = (k == 0 && m->first) ? as->enc : TAKE(Nr * C);
        if (m->last) {
            TAKE_OPERAND(ap.s_lnf, as->lnf, as->lnf16);
            as->lnf_mean = TAKE(Nr);
            as->lnf_rstd = TAKE(Nr);
            as->logits = TAKE(ap.logit_rows * V);
            as->losses = TAKE(N);
            if (ap.acts16) as->lnf16_full = m->tp_sp ? (uint16_t *)(void *)TAKE(ap.s_lnf_full) : as->lnf16;
            else as->lnf_full = m->tp_sp ? TAKE(ap.s_lnf_full) : as->lnf;
        }
        if (m->has_grads) as->dx = TAKE(Nr * C);
        for (int64_t l = 0; l < L; l++) {
            layer_acts *a = &as->acts[l];
            *a = sc;
            a->out = TAKE(Nr * C);
            if (keep_ln) {
                TAKE_OPERAND(s_ln, a->ln1, a->ln1_16); a->ln1_mean = TAKE(s_stat); a->ln1_rstd = TAKE(s_stat); a->qkv = TAKE(s_qkv);
                a->res1 = TAKE(Nr * C); TAKE_OPERAND(s_ln, a->ln2, a->ln2_16); a->ln2_mean = TAKE(s_stat); a->ln2_rstd = TAKE(s_stat);
                a->fc_pre = TAKE(s_fc);
            }
            if (keep_att) { a->atty = TAKE(s_att); a->lse = TAKE(s_lse); }
            if (keep_act) TAKE_OPERAND(s_act, a->fc_act, a->fc_act16);
        }
    }
#undef TAKE_OPERAND
#undef TAKE
    LOOM_CHECK((size_t)(cur - m->act_mem) * sizeof(float) <= m->act_bytes, LOOM_ERR_INTERNAL,
               "activation arena overflow");
    loom_model_use_slot(m, 0);
    m->cap_B = B; /* from here free_acts frees what follows */
    m->cap_T = T;
    m->logit_rows = ap.logit_rows;
    m->rc = rc;
    if (m->precision != LOOM_PRECISION_FP32) {
        const size_t elem = m->precision == LOOM_PRECISION_BF16 ? sizeof(uint16_t) : sizeof(float);
        for (int i = 0; i < 2; i++) {
            m->scratch16_bytes[i] = (size_t)lowp_scratch_elems(m, i, ap.acts16, slots, N) * elem;
            LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_ACTS, m->scratch16_bytes[i], (void **)&m->scratch16[i]));
        }
    }
    if (m->sp_size > 1) {
        m->ring_bytes = (size_t)(N * 4 * m->KV * m->hd) * sizeof(float);
        for (int i = 0; i < 2; i++) LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_ACTS, m->ring_bytes, (void **)&m->ring[i]));
        LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_ACTS, (size_t)(N * m->H * m->hd) * sizeof(float), (void **)&m->ring_out));
        LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_ACTS, (size_t)(N * m->H) * sizeof(float), (void **)&m->ring_lse));
    }
    /* the micro-batch's tokens and targets where the kernels read them; the losses where the host sums them */
    LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_WORKSPACE, (size_t)(2 * N) * sizeof(int32_t), (void **)&m->tok_dev));
    m->tgt_dev = m->tok_dev + N;
    m->losses_host = malloc((size_t)N * sizeof(float));
    LOOM_CHECK(m->losses_host != NULL, LOOM_ERR_NOMEM, "out of memory");
    if (m->tp_size > 1) {
        m->tok_local = malloc((size_t)N * sizeof(int32_t));
        LOOM_CHECK(m->tok_local != NULL, LOOM_ERR_NOMEM, "out of memory");
        LOOM_CALL(loom_buf_alloc(be, m->mem, LOOM_MEM_WORKSPACE, (size_t)(3 * N) * sizeof(float), (void **)&m->ce_stats));
    }
    LOOM_CALL(loom_lora_reserve(m, N));
    /* RoPE tables, computed in double once, at this rank's absolute positions */
    const int64_t half = m->hd / 2, t0 = (int64_t)m->sp_rank * T;
    float *tab = malloc((size_t)(2 * T * half) * sizeof(float));
    LOOM_CHECK(tab != NULL, LOOM_ERR_NOMEM, "out of memory");
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double inv = pow(m->cfg.rope_theta, -2.0 * (double)i / (double)m->hd);
            tab[t * half + i] = (float)cos((double)(t0 + t) * inv);
            tab[(T + t) * half + i] = (float)sin((double)(t0 + t) * inv);
        }
    loom_status st = loom_buf_upload(be, m->rope_cos, tab, (size_t)(T * half) * sizeof(float));
    if (st == LOOM_OK) st = loom_buf_upload(be, m->rope_sin, tab + T * half, (size_t)(T * half) * sizeof(float));
    free(tab);
    return st;
}

/* a chunk's first block reads the chunk's input (the embedding's output on the first stage's chunk 0) */
static const float *layer_input(const loom_model *m, int64_t l) {
    const int k = m->layer_chunk[l];
    return l == m->chunk_l0[k] ? m->slots[m->slot].chunk_in[k] : m->acts[l - 1].out;
}

/* hook units: the embedding (first stage), one per held block, the head (last stage) */
#define U_LAYER(l) ((int)(l) + m->first)
#define U_HEAD ((int)m->L + m->first)

/* ---- sequence parallel: ring self-attention ----
 * Rank r holds block r of every sequence. Its queries see its own block causally and every earlier block
 * whole; later blocks are fully masked, so they are passed on without compute. Keys and values travel
 * r -> r+1 in sp-1 steps, each step's transfer posted before the previous block's compute. Backward sends
 * packets [K | V | dK | dV] round the same ring: each rank adds its queries' contribution to the visiting
 * block's dK, dV, and after sp steps every packet is home with its gradients from all later ranks. */
static loom_status ring_shift(loom_model *m, float *send, float *recv, int64_t n, loom_comm_req *rs, loom_comm_req *rr) {
    const int p = m->sp_size, r = m->sp_rank;
    LOOM_CALL(loom_comm_irecv_f32(m->sp, recv, n, (r + p - 1) % p, 7, rr));
    LOOM_CALL(loom_comm_isend_f32(m->sp, send, n, (r + 1) % p, 7, rs));
    return LOOM_OK;
}

static loom_status ring_wait(loom_comm_req *rs, loom_comm_req *rr) {
    LOOM_CALL(loom_comm_wait(rs));
    return loom_comm_wait(rr);
}

/* rows of src (stride ss) -> rows of dst (stride ds): `w` floats each, N rows; add: accumulate */
static loom_status copy_rows(loom_model *m, float *dst, int64_t ds, const float *src, int64_t ss, int64_t N, int64_t w,
                             int add) {
    return loom_k_copy_rows(m->be, &(loom_copy_rows_args){dst, ds, src, ss, N, w, add});
}

/* bf16 training's attention takes its products on bf16 operands where the backend has them (backend.h); an
 * inference model keeps fp32 products, as its key/value cache's decoding does, so that a cached step and the
 * whole forward agree */
static int attention_bf16(const loom_model *m) { return m->precision == LOOM_PRECISION_BF16 && m->has_grads; }

static loom_status ring_attention_forward(loom_model *m, layer_acts *a, int64_t B, int64_t T) {
    const int p = m->sp_size, r = m->sp_rank;
    const int64_t N = B * T, H = m->H, KV = m->KV, hd = m->hd, Cq = m->Cq, kvw = 2 * KV * hd;
    float *cur = m->ring[0], *nxt = m->ring[1];
    LOOM_CALL(copy_rows(m, cur, kvw, a->qkv + H * hd, Cq, N, kvw, 0)); /* this block's [K | V] */
    loom_comm_req rs, rr;
    LOOM_CALL(ring_shift(m, cur, nxt, N * kvw, &rs, &rr));
    LOOM_CALL(loom_k_attention_block_forward(m->be, &(loom_attention_block_forward_args){.out = a->atty, .lse = a->lse, .q = a->qkv, .qs = Cq, .kv = a->qkv + H * hd, .kvs = Cq, .B = B, .Tq = T, .Tk = T, .H = H, .KV = KV, .hd = hd, .causal = 1, .bf16_products = attention_bf16(m)}));
    for (int s = 1; s < p; s++) {
        LOOM_CALL(ring_wait(&rs, &rr));
        float *t = cur;
        cur = nxt;
        nxt = t;
        if (s < p - 1) LOOM_CALL(ring_shift(m, cur, nxt, N * kvw, &rs, &rr));
        const int j = (r - s + p) % p; /* whose block arrived */
        if (j < r) {
            LOOM_CALL(loom_k_attention_block_forward(m->be, &(loom_attention_block_forward_args){.out = m->ring_out, .lse = m->ring_lse, .q = a->qkv, .qs = Cq, .kv = cur, .kvs = kvw, .B = B, .Tq = T, .Tk = T, .H = H, .KV = KV, .hd = hd, .causal = 0, .bf16_products = attention_bf16(m)}));
            LOOM_CALL(loom_k_attention_merge(m->be, &(loom_attention_merge_args){.out = a->atty, .lse = a->lse, .out_b = m->ring_out, .lse_b = m->ring_lse, .B = B, .T = T, .H = H, .hd = hd}));
        }
    }
    return LOOM_OK;
}

static loom_status ring_attention_backward(loom_model *m, layer_acts *a, int64_t B, int64_t T) {
    const int p = m->sp_size, r = m->sp_rank;
    const int64_t N = B * T, H = m->H, KV = m->KV, hd = m->hd, Cq = m->Cq, kvw = 2 * KV * hd, pw = 2 * kvw;
    LOOM_CALL(loom_buf_fill(m->be, m->dqkv, 0.0f, N * Cq));
    LOOM_CALL(loom_k_attention_block_backward(m->be, &(loom_attention_block_backward_args){.dq = m->dqkv, .dkv = m->dqkv + H * hd, .dout = m->datty, .q = a->qkv, .qs = Cq, .kv = a->qkv + H * hd, .kvs = Cq, .out = a->atty, .lse = a->lse, .B = B, .Tq = T, .Tk = T, .H = H, .KV = KV, .hd = hd, .causal = 1, .bf16_products = attention_bf16(m)}));
    float *cur = m->ring[0], *nxt = m->ring[1];
    /* packet: [K | V] of this block, [dK | dV] (zero) from the ranks it visits */
    LOOM_CALL(loom_buf_fill(m->be, cur, 0.0f, N * pw));
    LOOM_CALL(copy_rows(m, cur, pw, a->qkv + H * hd, Cq, N, kvw, 0));
    loom_comm_req rs, rr;
    for (int s = 1; s <= p; s++) {
        LOOM_CALL(ring_shift(m, cur, nxt, N * pw, &rs, &rr));
        LOOM_CALL(ring_wait(&rs, &rr));
        float *t = cur;
        cur = nxt;
        nxt = t;
        const int j = (r - s + p) % p;
        if (s < p && j < r)
            LOOM_CALL(loom_k_attention_block_backward(m->be, &(loom_attention_block_backward_args){.dq = m->dqkv, .dkv = cur + kvw, .dout = m->datty, .q = a->qkv, .qs = Cq, .kv = cur, .kvs = pw, .out = a->atty, .lse = a->lse, .B = B, .Tq = T, .Tk = T, .H = H, .KV = KV, .hd = hd, .causal = 0, .bf16_products = attention_bf16(m)}));
    }
    return copy_rows(m, m->dqkv + H * hd, Cq, cur + kvw, pw, N, kvw, 1); /* home again: the later ranks' dK, dV */
}

/* The attention core of layer l: qkv -> atty, lse. */
static loom_status attention_core_forward(loom_model *m, int64_t l, int64_t B, int64_t T) {
    layer_acts *a = &m->acts[l];
    if (loom_kv_decoding(m)) return loom_kv_attention(m, l);
    if (m->sp_size > 1) return ring_attention_forward(m, a, B, T);
    LOOM_CALL(loom_k_attention_forward(m->be, &(loom_attention_forward_args){.out = a->atty, .lse = a->lse, .qkv = a->qkv, .B = B, .T = T, .H = m->H, .KV = m->KV, .hd = m->hd, .bf16_products = attention_bf16(m)}));
    return LOOM_OK;
}

static loom_status mlp_activation_forward(loom_model *m, layer_acts *a, const int64_t *lo, int64_t N, int with_bias) {
    if (m->cfg.family != LOOM_FAMILY_GPT2)
        return loom_k_swiglu_forward(m->be, &(loom_swiglu_forward_args){.out = a->fc_act, .out16 = a->fc_act16, .gu = a->fc_pre, .N = N, .F = m->F});
    const int exact = m->cfg.gelu == LOOM_GELU_ERF;
    if (with_bias && lo[W_FC_B] >= 0)
        return loom_k_bias_gelu_forward(m->be, &(loom_bias_gelu_forward_args){.pre = a->fc_pre, .out = a->fc_act, .out16 = a->fc_act16,
                                        .bias = P(lo[W_FC_B]), .N = N, .F = m->F, .exact = exact});
    return loom_k_gelu_forward(m->be, &(loom_gelu_forward_args){.out = a->fc_act, .out16 = a->fc_act16, .inp = a->fc_pre, .n = N * m->F,
                               .exact = exact});
}

/* its backward: m->dfc (N, fc width) from m->dfc_act (N, F). bf16 GELU (not under LoRA, whose adapters read dfc in
 * fp32) writes it straight as the fc products' bf16 operand (*d16, scratch16[0]) with the fc bias's gradient
 * (db, NULL: none) in the same pass; else *d16 is NULL, dfc is fp32, and the bias is the caller's. */
static loom_status mlp_activation_backward(loom_model *m, const layer_acts *a, int64_t N, float *db, int acc,
                                           const uint16_t **d16) {
    *d16 = NULL;
    const int exact = m->cfg.gelu == LOOM_GELU_ERF;
    if (m->cfg.family == LOOM_FAMILY_GPT2 && m->params16 && !m->lora) {
        *d16 = m->scratch16[0];
        return loom_k_gelu_backward(m->be, &(loom_gelu_backward_args){.inp = a->fc_pre, .dout = m->dfc_act, .n = N * m->F,
                                    .exact = exact, .dinp16 = m->scratch16[0], .db = db, .cols = m->F, .accumulate = acc});
    }
    if (m->cfg.family == LOOM_FAMILY_GPT2)
        return loom_k_gelu_backward(m->be, &(loom_gelu_backward_args){.dinp = m->dfc, .inp = a->fc_pre, .dout = m->dfc_act,
                                    .n = N * m->F, .exact = exact});
    return loom_k_swiglu_backward(m->be, &(loom_swiglu_backward_args){.dgu = m->dfc, .gu = a->fc_pre, .dout = m->dfc_act,
                                  .N = N, .F = m->F});
}

/* Tensor parallel: completes a row-parallel product (each rank's partial sum over its heads or hidden
 * columns) by summing over the tp ranks; the one all-reduce of each attention and MLP part per pass. */
static loom_status tp_sum(loom_model *m, float *x, int64_t n) {
    return m->tp_size > 1 ? loom_comm_allreduce_sum_f32(m->tp, x, n) : LOOM_OK;
}

/* ---- Megatron sequence parallelism inside tp ----
 * The residual stream, the norms and the embedding output hold rows [r Nr, (r+1) Nr) of the N tokens on tp
 * rank r (Nr = N/tp). A column-parallel product first all-gathers its input (N,C); a row-parallel one
 * reduce-scatters its partial product back to rows. The replicated parameters (norms, the output
 * projections' biases, wpe) then see only this rank's rows: their gradients are summed over tp per layer. */
/* every tp rank's `words` 32-bit words (its rows: fp32, or bf16 two to a word) gathered into full, in rank order */
static loom_status sp_all_gather_words(loom_model *m, const void *shard, void *full, int64_t words) {
    float *f = full;
    LOOM_CALL(loom_buf_copy(m->be, f + m->tp_rank * words, shard, (size_t)words * sizeof(float)));
    for (int r = 0; r < m->tp_size; r++) m->sp_counts[r] = words;
    loom_comm_req rq;
    LOOM_CALL(loom_comm_iallgather_f32(m->tp, f, m->sp_counts, &rq));
    return loom_comm_wait(&rq);
}

static loom_status sp_all_gather(loom_model *m, const float *shard, float *full, int64_t Nr) {
    return sp_all_gather_words(m, shard, full, Nr * m->C);
}

static loom_status sp_reduce_scatter(loom_model *m, const float *full, float *shard, int64_t Nr) {
    for (int r = 0; r < m->tp_size; r++) m->sp_counts[r] = Nr * m->C;
    loom_comm_req rq;
    LOOM_CALL(loom_comm_ireduce_scatter_f32(m->tp, full, shard, m->sp_counts, &rq));
    return loom_comm_wait(&rq);
}

/* x (n) += y (n) */
static loom_status add_into(loom_model *m, float *x, const float *y, int64_t n) {
    return loom_k_add(m->be, &(loom_add_args){x, x, y, n});
}

/* the replicated gradients of one layer (or the final norm), gathered in m->sp_rep, summed over tp and
 * written (acc = 0) or added to their places; offsets < 0 are absent parameters */
static loom_status sp_apply_rep(loom_model *m, const int64_t *offs, int n, int acc) {
    const int64_t C = m->C;
    LOOM_CALL(loom_comm_allreduce_sum_f32(m->tp, m->sp_rep, n * C));
    for (int i = 0; i < n; i++) {
        if (offs[i] < 0) continue;
        float *g = m->grads + offs[i];
        if (acc) LOOM_CALL(add_into(m, g, m->sp_rep + i * C, C));
        else LOOM_CALL(loom_buf_copy(m->be, g, m->sp_rep + i * C, (size_t)C * sizeof(float)));
    }
    return LOOM_OK;
}

/* The input of a column-parallel product (forward) or of a weight gradient (backward): the rows as they
 * are, or with Megatron-SP this rank's Nr rows all-gathered to all N (into m->sp_gather). */
static loom_status all_rows(loom_model *m, const float *rows, int64_t Nr, const float **out) {
    *out = rows;
    if (!m->tp_sp) return LOOM_OK;
    LOOM_CALL(sp_all_gather(m, rows, m->sp_gather, Nr));
    *out = m->sp_gather;
    return LOOM_OK;
}

/* The same for an operand the model stores as fp32 (rows) or in bf16 (rows16, acts16: gathered in bf16, half
 * the bytes, as Megatron gathers its bf16 activations; C is even there); the other output is NULL. */
static loom_status operand_rows(loom_model *m, const float *rows, const uint16_t *rows16, int64_t Nr, const float **in,
                                const uint16_t **in16) {
    *in = NULL;
    *in16 = rows16;
    if (!rows16) return all_rows(m, rows, Nr, in);
    if (!m->tp_sp) return LOOM_OK;
    LOOM_CALL(sp_all_gather_words(m, rows16, m->sp_gather, Nr * m->C / 2));
    *in16 = (const uint16_t *)(void *)m->sp_gather;
    return LOOM_OK;
}

/* A row-parallel product (K columns of in, or of in16 where the model stores it in bf16, against weight W)
 * completed onto the residual: dst = resid + in W^T (+ bias). Plain and tensor parallel: the GEMM accumulates
 * onto a copy of resid on tp rank 0, which also adds the bias, the others contribute only their partial
 * product, and the tp sum completes it (one all-reduce). Megatron-SP: the partial product reduce-scattered
 * to this rank's Nr rows, then resid and the bias added there. */
static loom_status row_output(loom_model *m, const float *in, const uint16_t *in16, int64_t K, int64_t w_off,
                              int64_t b_off, const float *resid, float *dst, int64_t N, int64_t Nr) {
    const int64_t C = m->C;
    if (m->tp_sp) {
        LOOM_CALL(mm_act(m, (loom_gemm){0, 1, N, C, K, 1.0f, in, K, P(w_off), K, 0.0f, m->sp_partial, C}, in16, NULL));
        LOOM_CALL(sp_reduce_scatter(m, m->sp_partial, dst, Nr));
        LOOM_CALL(add_into(m, dst, resid, Nr * C));
        if (b_off >= 0) LOOM_CALL(loom_k_bias_add(m->be, &(loom_bias_add_args){.x = dst, .bias = P(b_off), .N = Nr, .C = C}));
        return LOOM_OK;
    }
    const int lead = m->tp_rank == 0;
    if (lead) LOOM_CALL(loom_buf_copy(m->be, dst, resid, (size_t)(N * C) * sizeof(float)));
    LOOM_CALL(mm_act(m, (loom_gemm){0, 1, N, C, K, 1.0f, in, K, P(w_off), K, lead ? 1.0f : 0.0f, dst, C}, in16, NULL));
    if (lead && b_off >= 0) LOOM_CALL(loom_k_bias_add(m->be, &(loom_bias_add_args){.x = dst, .bias = P(b_off), .N = N, .C = C}));
    return tp_sum(m, dst, N * C);
}

/* One transformer block's forward: training (plain, tensor parallel, Megatron-SP) and generation (with
 * the KV cache active: positions after the cached ones, attention against the cache) alike. The residual
 * stream x, the norms and the residual sums hold Nr rows (N, or N/tp with Megatron-SP). */
static loom_status layer_forward(loom_model *m, int64_t l, int64_t B, int64_t T) {
    loom_backend *be = m->be;
    const int64_t N = B * T, Nr = m->tp_sp ? N / m->tp_size : N, C = m->C, Cq = m->Cq, F = m->F;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t fcw = gpt ? F : 2 * F;
    const int64_t *lo = m->layer_off + l * W_COUNT;
    const float eps = (float)m->cfg.norm_eps;
    layer_acts *a = &m->acts[l];
    const float *x = layer_input(m, l), *in;
    const uint16_t *in16;
    if (gpt) LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = a->ln1, .out16 = a->ln1_16, .mean = a->ln1_mean, .rstd = a->ln1_rstd, .inp = x, .w = P(lo[W_LN1_W]), .b = P_OPT(lo[W_LN1_B]), .N = Nr, .C = C, .eps = eps}));
    else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = a->ln1, .out16 = a->ln1_16, .rstd = a->ln1_rstd, .inp = x, .w = P(lo[W_LN1_W]), .N = Nr, .C = C, .eps = eps}));
    LOOM_CALL(operand_rows(m, a->ln1, a->ln1_16, Nr, &in, &in16));
    /* LoRA (tp 1: all rows here): the adapters write their part first, the frozen product adds to it */
    const float lq = (float)loom_lora_has(m, LORA_QKV), lf = (float)loom_lora_has(m, LORA_FC);
    if (lq != 0.0f) LOOM_CALL(loom_lora_forward(m, l, LORA_QKV, in, a->qkv, Cq, N, 0.0f));
    LOOM_CALL(mm_act(m, (loom_gemm){0, 1, N, Cq, C, 1.0f, in, C, P(lo[W_QKV_W]), C, lq, a->qkv, Cq}, in16, NULL));
    LOOM_CALL(loom_lora_forward_sets(m, l, LORA_QKV, in, a->qkv, Cq)); /* serving: each segment's adapter set */
    if (lo[W_QKV_B] >= 0) LOOM_CALL(loom_k_bias_add(be, &(loom_bias_add_args){.x = a->qkv, .bias = P(lo[W_QKV_B]), .N = N, .C = Cq}));
    if (!gpt && loom_kv_decoding(m)) LOOM_CALL(loom_kv_rope(m, a->qkv)); /* each sequence's positions */
    else if (!gpt) LOOM_CALL(loom_k_rope(be, &(loom_rope_args){.qkv = a->qkv, .cos_t = m->rope_cos, .sin_t = m->rope_sin, .B = B, .T = T, .H = m->H, .KV = m->KV, .hd = m->hd, .inverse = 0}));
    LOOM_CALL(attention_core_forward(m, l, B, T));
    LOOM_CALL(row_output(m, a->atty, NULL, m->H * m->hd, lo[W_ATTN_PROJ_W], lo[W_ATTN_PROJ_B], x, a->res1, N, Nr));
    LOOM_CALL(loom_lora_forward(m, l, LORA_PROJ, a->atty, a->res1, C, N, 1.0f)); /* onto the residual sum */
    LOOM_CALL(loom_lora_forward_sets(m, l, LORA_PROJ, a->atty, a->res1, C));
    if (gpt) LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = a->ln2, .out16 = a->ln2_16, .mean = a->ln2_mean, .rstd = a->ln2_rstd, .inp = a->res1, .w = P(lo[W_LN2_W]), .b = P_OPT(lo[W_LN2_B]), .N = Nr, .C = C, .eps = eps}));
    else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = a->ln2, .out16 = a->ln2_16, .rstd = a->ln2_rstd, .inp = a->res1, .w = P(lo[W_LN2_W]), .N = Nr, .C = C, .eps = eps}));
    LOOM_CALL(operand_rows(m, a->ln2, a->ln2_16, Nr, &in, &in16));
    if (lf != 0.0f) LOOM_CALL(loom_lora_forward(m, l, LORA_FC, in, a->fc_pre, fcw, N, 0.0f));
    LOOM_CALL(mm_act(m, (loom_gemm){0, 1, N, fcw, C, 1.0f, in, C, P(lo[W_FC_W]), C, lf, a->fc_pre, fcw}, in16, NULL));
    LOOM_CALL(loom_lora_forward_sets(m, l, LORA_FC, in, a->fc_pre, fcw));
    LOOM_CALL(mlp_activation_forward(m, a, lo, N, 1));
    LOOM_CALL(row_output(m, a->fc_act, a->fc_act16, F, lo[W_MLP_PROJ_W], lo[W_MLP_PROJ_B], a->res1, a->out, N, Nr));
    LOOM_CALL(loom_lora_forward(m, l, LORA_DOWN, a->fc_act, a->out, C, N, 1.0f));
    return loom_lora_forward_sets(m, l, LORA_DOWN, a->fc_act, a->out, C);
}

/* before a layer's backward: recompute what the recompute mode did not keep */
static loom_status recompute_layer(loom_model *m, int64_t l, int64_t B, int64_t T) {
    if (m->rc == LOOM_RECOMPUTE_FULL) return layer_forward(m, l, B, T);
    if (m->rc == LOOM_RECOMPUTE_ATTN) {
        LOOM_CALL(attention_core_forward(m, l, B, T));
        LOOM_CALL(mlp_activation_forward(m, &m->acts[l], m->layer_off + l * W_COUNT, B * T, 0));
    }
    return LOOM_OK;
}

static loom_status check_batch(loom_model *m, const int32_t *tokens, const int32_t *targets, int64_t B, int64_t T) {
    LOOM_CHECK(m->act_mem && B <= m->cap_B && T <= m->cap_T, LOOM_ERR_INVALID_ARG,
               "micro-batch %lldx%lld exceeds the reserved %lldx%lld (call loom_model_reserve)", (long long)B,
               (long long)T, (long long)m->cap_B, (long long)m->cap_T);
    LOOM_CHECK(m->sp_size == 1 || T == m->cap_T, LOOM_ERR_INVALID_ARG,
               "sequence parallel: every micro-batch must have the reserved length %lld (positions are fixed per rank)",
               (long long)m->cap_T);
    for (int64_t i = 0; i < B * T; i++) {
        LOOM_CHECK(tokens[i] >= 0 && tokens[i] < m->V_full, LOOM_ERR_INVALID_ARG,
                   "token %d at position %lld is outside the vocabulary [0, %lld)", tokens[i], (long long)i,
                   (long long)m->V_full);
        LOOM_CHECK(!targets || targets[i] < m->V_full, LOOM_ERR_INVALID_ARG,
                   "target %d at position %lld is outside the vocabulary [0, %lld)", targets[i], (long long)i,
                   (long long)m->V_full);
    }
    return LOOM_OK;
}

#define HOOK(name, ...)                                                          \
    do {                                                                         \
        if (m->hooks.name) LOOM_CALL(m->hooks.name(m->hooks.ctx, __VA_ARGS__)); \
    } while (0)

/* Host ids (tokens or targets, N) where the kernels read them: the host array itself when the backend
 * addresses host memory, else uploaded into dev. */
static loom_status stage_ids(loom_model *m, const int32_t *host, int32_t *dev, int64_t N, const int32_t **out) {
    *out = host;
    if (loom_backend_host_accessible(m->be)) return LOOM_OK;
    *out = dev;
    return loom_buf_upload(m->be, dev, host, (size_t)N * sizeof(int32_t));
}

/* the embedding's tokens; vocabulary-parallel: shifted into this rank's rows, -1 for the other ranks' */
static loom_status local_tokens(loom_model *m, const int32_t *tokens, int64_t N, const int32_t **out) {
    if (m->tp_size > 1) {
        for (int64_t i = 0; i < N; i++) {
            const int64_t t = (int64_t)tokens[i] - m->v0;
            m->tok_local[i] = t >= 0 && t < m->V ? (int32_t)t : -1;
        }
        tokens = m->tok_local;
    }
    return stage_ids(m, tokens, m->tok_dev, N, out);
}

/* the head multiplies by the embedding matrix itself (tied, on the stage that holds the embedding) */
static int head_is_wte(const loom_model *m) { return m->cfg.tie_embeddings && m->first; }

/* logits rows [r0, r0 + rows) = lnf Whead^T, into out (rows, V) */
static loom_status head_logits(loom_model *m, const float *lnf_full, const uint16_t *lnf16_full, int64_t r0,
                               int64_t rows, float *out) {
    const int64_t C = m->C, V = m->V;
    const float *a = lnf_full ? lnf_full + r0 * C : NULL;
    return mm_act(m, (loom_gemm){0, 1, rows, V, C, 1.0f, a, C, P(m->off_head), C, 0.0f, out, V},
                  lnf16_full ? lnf16_full + r0 * C : NULL, NULL);
}

/* the head's products are made: its units released, unless the backward pass follows (keep_head) */
static loom_status head_done(loom_model *m, int keep_head) {
    if (keep_head) return LOOM_OK;
    LOOM_CALL(unit_done(m, U_HEAD));
    if (head_is_wte(m)) LOOM_CALL(unit_done(m, 0));
    return LOOM_OK;
}

/* The loss of logits rows [r0, r0 + rows) (in m->logits) and, with grad_scale, their gradient: in m->logits'
 * place, or into g16 in bf16. Vocabulary-parallel (tp > 1), no rank holds a whole row: three passes with the
 * rows' maxima and sums reduced over tp between them. */
static loom_status score_rows(loom_model *m, int64_t r0, int64_t rows, const int32_t *tgt, float grad_scale,
                              uint16_t *g16) {
    loom_backend *be = m->be;
    const int64_t V = m->V;
    if (m->tp_size == 1)
        return loom_k_softmax_cross_entropy(be, &(loom_softmax_cross_entropy_args){.logits = m->logits,
                                            .losses = m->losses + r0, .targets = tgt, .N = rows, .V = V,
                                            .grad_scale = grad_scale, .grad16 = g16});
    float *mx = m->ce_stats, *sums = m->ce_stats + rows;
    LOOM_CALL(loom_k_ce_row_max(be, &(loom_ce_row_max_args){.logits = m->logits, .N = rows, .V = V, .mx = mx}));
    LOOM_CALL(loom_comm_allreduce_max_f32(m->tp, mx, rows));
    const int keep_exps = grad_scale != 0.0f; /* each exponential computed once, kept for the gradient's pass */
    LOOM_CALL(loom_k_ce_row_sums(be, &(loom_ce_row_sums_args){.logits = m->logits, .targets = tgt, .N = rows, .V = V,
                                 .v0 = m->v0, .mx = mx, .sums = sums, .keep_exps = keep_exps}));
    LOOM_CALL(loom_comm_allreduce_sum_f32(m->tp, sums, 2 * rows));
    return loom_k_ce_finish(be, &(loom_ce_finish_args){.logits = m->logits, .losses = m->losses + r0, .targets = tgt,
                            .N = rows, .V = V, .v0 = m->v0, .mx = mx, .sums = sums, .grad_scale = grad_scale,
                            .grad16 = g16, .keep_exps = keep_exps});
}

/* m->logits: room for `rows` whole rows of logits the caller reads; the slot's buffer, or where that holds
 * only a piece (logit_rows), a buffer of their own, made at the first forward that needs it */
static loom_status logits_room(loom_model *m, int64_t rows) {
    m->logits_kept = 1;
    if (rows <= m->logit_rows) {
        m->logits = m->slots[m->slot].logits;
        return LOOM_OK;
    }
    const size_t bytes = (size_t)(rows * m->V) * sizeof(float);
    if (bytes > m->logits_whole_bytes) {
        loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, m->logits_whole, m->logits_whole_bytes);
        m->logits_whole = NULL;
        m->logits_whole_bytes = 0;
        LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, bytes, (void **)&m->logits_whole));
        m->logits_whole_bytes = bytes;
    }
    m->logits = m->logits_whole;
    return LOOM_OK;
}

static loom_status head_grad_rows(loom_model *m, int64_t r0, int64_t rows, const float *dlogits, const uint16_t *g16,
                                  const uint16_t *lnf16, float beta);

/* Forward of chunk k: from tokens (the first stage's chunk 0) or x_in, to the next chunk's input, or on
 * the last stage's last chunk to the logits and, with targets, the fused loss (grad_scale != 0: dlogits
 * in place). keep_head: leave the head's units acquired for the backward pass. */
static loom_status chunk_forward(loom_model *m, int k, const int32_t *tokens, const float *x_in,
                                 const int32_t *targets, int64_t B, int64_t T, float grad_scale, float *loss,
                                 int keep_head, const float **x_out) {
    loom_backend *be = m->be;
    const int64_t N = B * T, C = m->C, V = m->V;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int embed = k == 0 && m->first, head = k == m->n_chunks - 1 && m->last;
    const int64_t Nr = m->tp_sp ? N / m->tp_size : N; /* rows of the residual stream here */
    const int32_t *tok = NULL;
    if (embed) LOOM_CALL(local_tokens(m, tokens, N, &tok));
    if (embed && m->tp_sp) { /* this rank's vocabulary rows for every token, reduce-scattered to its rows */
        HOOK(params_needed, 0, 1);
        const int64_t t0 = (int64_t)m->sp_rank * T, r0 = m->tp_rank * Nr;
        LOOM_CALL(loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = m->sp_partial, .tokens = tok,
                                           .wte = P(m->off_wte), .B = B, .T = T, .C = C}));
        LOOM_CALL(sp_reduce_scatter(m, m->sp_partial, m->enc, Nr));
        for (int64_t i = 0; gpt && i < Nr; i++)
            LOOM_CALL(add_into(m, m->enc + i * C, P(m->off_wpe) + (t0 + (r0 + i) % T) * C, C));
        LOOM_CALL(unit_done(m, 0));
    } else if (embed) {
        HOOK(params_needed, 0, 1);
        const float *wpe = gpt && m->tp_rank == 0 ? P(m->off_wpe) : NULL;
        if (loom_kv_decoding(m)) LOOM_CALL(loom_kv_embed(m, tok, P(m->off_wte), wpe, m->enc)); /* each sequence's positions */
        else LOOM_CALL(loom_k_embedding_forward(be, &(loom_embedding_forward_args){.out = m->enc, .tokens = tok,
                                                .wte = P(m->off_wte), .wte16 = loom_model_wte16(m),
                                                .wpe = wpe ? wpe + (int64_t)m->sp_rank * T * C : NULL,
                                                .B = B, .T = T, .C = C}));
        LOOM_CALL(tp_sum(m, m->enc, N * C));
        LOOM_CALL(unit_done(m, 0));
    } else if (x_in != m->slots[m->slot].chunk_in[k]) {
        LOOM_CALL(loom_buf_copy(be, m->slots[m->slot].chunk_in[k], x_in, (size_t)(Nr * C) * sizeof(float)));
    }
    for (int64_t l = m->chunk_l0[k]; l < m->chunk_l1[k]; l++) {
        HOOK(params_needed, U_LAYER(l), 1);
        LOOM_CALL(layer_forward(m, l, B, T));
        LOOM_CALL(unit_done(m, U_LAYER(l)));
    }
    const float *x = m->acts[m->chunk_l1[k] - 1].out;
    if (!head) {
        if (x_out) *x_out = x;
        return LOOM_OK;
    }
    HOOK(params_needed, U_HEAD, 1);
    if (head_is_wte(m)) HOOK(params_needed, 0, 1);
    if (gpt)
        LOOM_CALL(loom_k_layernorm_forward(be, &(loom_layernorm_forward_args){.out = m->lnf, .out16 = m->lnf16, .mean = m->lnf_mean, .rstd = m->lnf_rstd, .inp = x, .w = P(m->off_lnf_w), .b = P_OPT(m->off_lnf_b), .N = Nr, .C = C, .eps = (float)m->cfg.norm_eps}));
    else LOOM_CALL(loom_k_rmsnorm_forward(be, &(loom_rmsnorm_forward_args){.out = m->lnf, .out16 = m->lnf16, .rstd = m->lnf_rstd, .inp = x, .w = P(m->off_lnf_w), .N = Nr, .C = C, .eps = (float)m->cfg.norm_eps}));
    float *lnf_full = m->slots[m->slot].lnf_full;
    uint16_t *lnf16_full = m->slots[m->slot].lnf16_full;
    if (m->tp_sp && lnf16_full) LOOM_CALL(sp_all_gather_words(m, m->lnf16, lnf16_full, Nr * C / 2));
    else if (m->tp_sp) LOOM_CALL(sp_all_gather(m, m->lnf, lnf_full, Nr));
    m->last_B = B;
    m->last_T = T;
    m->dlogits16 = 0;
    m->head_grads_made = 0;
    const int32_t *tgt = NULL;
    if (targets) LOOM_CALL(stage_ids(m, targets, m->tgt_dev, N, &tgt));
    if (!targets || loom_kv_decoding(m)) { /* the caller reads the logits: all of them, in one buffer */
        int64_t rows = N;
        if (loom_kv_decoding(m)) { /* generation scores only the rows it samples from: moved to the front */
            loom_status st;
            rows = lnf16_full ? loom_kv_logit_rows(m, lnf16_full, (size_t)C * sizeof(uint16_t), &st)
                              : loom_kv_logit_rows(m, lnf_full, (size_t)C * sizeof(float), &st);
            LOOM_CALL(st);
        }
        LOOM_CALL(logits_room(m, rows));
        if (rows) LOOM_CALL(head_logits(m, lnf_full, lnf16_full, 0, rows, m->logits));
        LOOM_CALL(head_done(m, keep_head));
    } else {
        /* The fp32 logits are made and scored m->logit_rows rows at a time (logit_rows). bf16 with one
         * activation slot: the gradient goes straight into the head products' bf16 operand (scratch16[0],
         * untouched until this slot's backward starts with the head). Called by loom_model_forward_backward
         * (head_grads_acc >= 0), the head's gradient products follow each piece's loss at once. */
        const int fused = grad_scale != 0.0f && m->head_grads_acc >= 0 && head_grads_in_forward(m, m->n_slots);
        uint16_t *g16 = grad_scale != 0.0f && m->params16 && m->n_slots == 1 ? m->scratch16[0] : NULL;
        const int64_t piece = m->logit_rows;
        LOOM_CHECK(piece >= N || grad_scale == 0.0f || g16 || fused, LOOM_ERR_INTERNAL,
                   "the logits are scored in pieces but their gradient has nowhere to go (a whole model trains "
                   "through loom_model_forward_backward)");
        m->logits = m->slots[m->slot].logits;
        m->logits_kept = piece >= N;
        if (piece < N && g16 && !lnf16_full) { /* converted once, beside the gradient (scratch16[1]: N rows >= C wide) */
            LOOM_CALL(loom_k_f32_to_bf16(be, &(loom_f32_to_bf16_args){.dst = m->scratch16[1], .src = lnf_full, .n = N * C}));
            lnf16_full = m->scratch16[1];
        }
        for (int64_t r0 = 0; r0 < N; r0 += piece) {
            const int64_t rows = N - r0 < piece ? N - r0 : piece;
            uint16_t *piece16 = g16 ? g16 + (fused ? 0 : r0 * V) : NULL;
            LOOM_CALL(head_logits(m, lnf_full, lnf16_full, r0, rows, m->logits));
            LOOM_CALL(score_rows(m, r0, rows, tgt + r0, grad_scale, piece16));
            if (fused)
                LOOM_CALL(head_grad_rows(m, r0, rows, m->logits, piece16, lnf16_full,
                                         r0 ? 1.0f : (float)m->head_grads_acc));
        }
        LOOM_CALL(head_done(m, keep_head));
        m->dlogits16 = g16 != NULL && !fused;
        m->head_grads_made = fused;
    }
    if (targets && loss) { /* the mean over the tokens with a target, summed on the host */
        const float *losses = m->losses;
        if (!loom_backend_host_accessible(be)) {
            LOOM_CALL(loom_buf_download(be, m->losses_host, m->losses, (size_t)N * sizeof(float)));
            losses = m->losses_host;
        }
        double s = 0.0;
        int64_t valid = 0;
        for (int64_t i = 0; i < N; i++)
            if (targets[i] >= 0) { s += losses[i]; valid++; }
        *loss = valid ? (float)(s / (double)valid) : 0.0f;
    }
    return LOOM_OK;
}

static int whole(const loom_model *m) { return m->first && m->last && m->n_chunks == 1; }

loom_status loom_model_forward(loom_model *m, const int32_t *tokens, const int32_t *targets, int64_t B, int64_t T,
                               float *loss) {
    LOOM_CHECK(whole(m), LOOM_ERR_INVALID_ARG, "loom_model_forward runs a whole model (this is a pipeline part)");
    LOOM_CALL(check_batch(m, tokens, targets, B, T));
    loom_lora_begin_micro(m, 0);
    float l = 0.0f;
    LOOM_CALL(chunk_forward(m, 0, tokens, NULL, targets, B, T, 0.0f, &l, 0, NULL));
    if (loss) *loss = l;
    return LOOM_OK;
}

/* A column-parallel product's input gradient, left in input_grad_dst(m) for all N rows, completed into m->dln:
 * summed over tp (all rows), or with Megatron-SP reduce-scattered to this rank's rows. */
static float *input_grad_dst(loom_model *m) { return m->tp_sp ? m->sp_partial : m->dln; }

static loom_status input_grad_sum(loom_model *m, int64_t N, int64_t Nr) {
    return m->tp_sp ? sp_reduce_scatter(m, m->sp_partial, m->dln, Nr) : tp_sum(m, m->dln, N * m->C);
}

/* A product's output gradient dout (rows x C) as its gradient products read it in bf16: rounded once for both
 * (*d16, in scratch16[0]) in the same pass as its bias gradient (db; NULL: none). *d16 is NULL where the
 * products read dout as it is (fp32, fp16) or convert it themselves (their operand is not dout's rows:
 * Megatron-SP gathers them first); bias_after then makes the bias gradient after the products, as it always was. */
static loom_status output_grad16(loom_model *m, float *db, const float *dout, const float *operand, int64_t rows,
                                 int64_t C, int acc, const uint16_t **d16) {
    uint16_t *out16 = m->params16 && operand == dout ? m->scratch16[0] : NULL;
    *d16 = out16;
    if (!out16) return LOOM_OK;
    return loom_k_bias_backward(m->be, &(loom_bias_backward_args){.db = db, .dout = dout, .N = rows, .C = C,
                                                                  .accumulate = acc, .dout16 = out16});
}

static loom_status bias_after(loom_model *m, float *db, const float *dout, int64_t rows, int64_t C, int acc,
                              const uint16_t *d16) {
    if (d16 || !db) return LOOM_OK; /* made with d16, or no bias */
    return loom_k_bias_backward(m->be, &(loom_bias_backward_args){.db = db, .dout = dout, .N = rows, .C = C, .accumulate = acc});
}

/* A product's input gradient and its weight's gradient (not for frozen weights: LoRA); d16: their shared first
 * operand in bf16 (output_grad16, mlp_activation_backward), or NULL; dw_b16: the weight gradient's activation operand where the model
 * stores it in bf16 (acts16) */
static loom_status grad_products(loom_model *m, loom_gemm dx, loom_gemm dw, const uint16_t *d16,
                                 const uint16_t *dw_b16) {
    if (m->lora) return mm_act(m, dx, d16, NULL);
    return mm_pair(m, dx, dw, d16, dw_b16);
}

/* The head's gradient products for logits rows [r0, r0 + rows), from their gradient: dlogits (rows x V,
 * fp32), or g16 (the same rows in bf16, as the loss wrote them). lnf16: the final norm's output in bf16, all
 * rows (NULL: converted here). The norm's output gradient rows land in place (m->dln; with Megatron-SP
 * m->sp_partial, every row); the head weight's gradient is written (beta 0) or added to (beta 1), not with
 * LoRA (frozen). */
static loom_status head_grad_rows(loom_model *m, int64_t r0, int64_t rows, const float *dlogits, const uint16_t *g16,
                                  const uint16_t *lnf16, float beta) {
    const int64_t C = m->C, V = m->V;
    const float *lnf = m->slots[m->slot].lnf_full + r0 * C;
    if (lnf16) lnf16 += r0 * C;
    float *dlnf = (m->tp_sp ? m->sp_partial : m->dln) + r0 * C;
    const loom_gemm dx = {0, 0, rows, C, V, 1.0f, dlogits, V, P(m->off_head), C, 0.0f, dlnf, C},
                    dw = {1, 0, V, C, rows, 1.0f, dlogits, V, lnf, C, beta, G(m->off_head), C};
    if (!g16) return grad_products(m, dx, dw, NULL, lnf16);
    /* the same products on the bits as_bf16 would have made of the fp32 gradient */
    LOOM_CALL(mm_bf16(m, &dx, g16, NULL));
    return m->lora ? LOOM_OK : mm_bf16(m, &dw, g16, lnf16);
}

/* One layer's backward, plain or tensor parallel, with or without Megatron-SP. The residual-stream
 * gradient m->dres holds Nr rows (N, or N/tp with Megatron-SP). With Megatron-SP the replicated
 * parameters (norms, output-projection biases) see only this rank's rows: their gradients are staged in
 * m->sp_rep (slots [ln1.w, ln1.b, proj.b, ln2.w, ln2.b, mlp.proj.b]) and summed over tp at the end. */
static loom_status layer_backward(loom_model *m, int64_t l, int64_t B, int64_t T, int acc) {
    loom_backend *be = m->be;
    const int sp = m->tp_sp;
    const int64_t N = B * T, Nr = sp ? N / m->tp_size : N, C = m->C, Cq = m->Cq, F = m->F, Ca = m->H * m->hd;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t fcw = gpt ? F : 2 * F;
    const int64_t *lo = m->layer_off + l * W_COUNT;
    const float beta = acc ? 1.0f : 0.0f;
    layer_acts *a = &m->acts[l];
    const float *x = layer_input(m, l);
    float *dres = m->dres, *dfull = input_grad_dst(m);
    const float *in;
    const uint16_t *in16, *d16;
    const int racc = sp ? 0 : acc; /* replicated gradients: staged (written) or in place (accumulated) */
    const int frozen = m->lora != NULL; /* LoRA: the weights take no gradient; norms write theirs to scratch */
#define REP(slot, w) (sp ? m->sp_rep + (slot) * C : frozen ? loom_lora_dw_scratch(m) + ((slot) & 1) * C : G_OPT(lo[w]))
    LOOM_CALL(recompute_layer(m, l, B, T));
    if (sp) LOOM_CALL(loom_buf_fill(be, m->sp_rep, 0.0f, 6 * C));
    /* MLP: out = res1 + fc_act W2^T + b2 */
    LOOM_CALL(all_rows(m, dres, Nr, &in));
    /* LoRA: the adapters write their part of each input gradient first, the frozen product adds to it */
    float lx = (float)loom_lora_has(m, LORA_DOWN);
    LOOM_CALL(loom_lora_backward(m, l, LORA_DOWN, a->fc_act, in, C, m->dfc_act, 0.0f, N, acc));
    float *db = lo[W_MLP_PROJ_B] >= 0 && !frozen ? REP(5, W_MLP_PROJ_B) : NULL;
    LOOM_CALL(output_grad16(m, db, dres, in, Nr, C, racc, &d16));
    LOOM_CALL(grad_products(m, (loom_gemm){0, 0, N, F, C, 1.0f, in, C, P(lo[W_MLP_PROJ_W]), F, lx, m->dfc_act, F},
              (loom_gemm){1, 0, C, F, N, 1.0f, in, C, a->fc_act, F, beta, G(lo[W_MLP_PROJ_W]), F}, d16, a->fc_act16));
    LOOM_CALL(bias_after(m, db, dres, Nr, C, racc, d16));
    db = lo[W_FC_B] >= 0 && !frozen ? G(lo[W_FC_B]) : NULL;
    LOOM_CALL(mlp_activation_backward(m, a, N, db, acc, &d16));
    LOOM_CALL(operand_rows(m, a->ln2, a->ln2_16, Nr, &in, &in16));
    lx = (float)loom_lora_has(m, LORA_FC);
    LOOM_CALL(loom_lora_backward(m, l, LORA_FC, in, m->dfc, fcw, dfull, 0.0f, N, acc));
    if (!d16) LOOM_CALL(output_grad16(m, db, m->dfc, m->dfc, N, fcw, acc, &d16));
    LOOM_CALL(grad_products(m, (loom_gemm){0, 0, N, C, fcw, 1.0f, m->dfc, fcw, P(lo[W_FC_W]), C, lx, dfull, C},
              (loom_gemm){1, 0, fcw, C, N, 1.0f, m->dfc, fcw, in, C, beta, G(lo[W_FC_W]), C}, d16, in16));
    LOOM_CALL(bias_after(m, db, m->dfc, N, fcw, acc, d16));
    LOOM_CALL(input_grad_sum(m, N, Nr));
    if (gpt)
        LOOM_CALL(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = dres, .dw = REP(3, W_LN2_W), .db = REP(4, W_LN2_B), .dout = m->dln, .inp = a->res1, .w = P(lo[W_LN2_W]), .mean = a->ln2_mean, .rstd = a->ln2_rstd, .N = Nr, .C = C, .accumulate = racc}));
    else LOOM_CALL(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = dres, .dw = REP(3, W_LN2_W), .dout = m->dln, .inp = a->res1, .w = P(lo[W_LN2_W]), .rstd = a->ln2_rstd, .N = Nr, .C = C, .accumulate = racc}));
    /* attention: res1 = x + atty Wo^T + bo */
    LOOM_CALL(all_rows(m, dres, Nr, &in));
    lx = (float)loom_lora_has(m, LORA_PROJ);
    LOOM_CALL(loom_lora_backward(m, l, LORA_PROJ, a->atty, in, C, m->datty, 0.0f, N, acc));
    db = lo[W_ATTN_PROJ_B] >= 0 && !frozen ? REP(2, W_ATTN_PROJ_B) : NULL;
    LOOM_CALL(output_grad16(m, db, dres, in, Nr, C, racc, &d16));
    LOOM_CALL(grad_products(m, (loom_gemm){0, 0, N, Ca, C, 1.0f, in, C, P(lo[W_ATTN_PROJ_W]), Ca, lx, m->datty, Ca},
              (loom_gemm){1, 0, C, Ca, N, 1.0f, in, C, a->atty, Ca, beta, G(lo[W_ATTN_PROJ_W]), Ca}, d16, NULL));
    LOOM_CALL(bias_after(m, db, dres, Nr, C, racc, d16));
    if (m->sp_size > 1) LOOM_CALL(ring_attention_backward(m, a, B, T));
    else LOOM_CALL(loom_k_attention_backward(be, &(loom_attention_backward_args){.dqkv = m->dqkv, .dout = m->datty, .qkv = a->qkv, .out = a->atty, .lse = a->lse, .B = B, .T = T, .H = m->H, .KV = m->KV, .hd = m->hd, .bf16_products = attention_bf16(m)}));
    if (!gpt) LOOM_CALL(loom_k_rope(be, &(loom_rope_args){.qkv = m->dqkv, .cos_t = m->rope_cos, .sin_t = m->rope_sin, .B = B, .T = T, .H = m->H, .KV = m->KV, .hd = m->hd, .inverse = 1}));
    LOOM_CALL(operand_rows(m, a->ln1, a->ln1_16, Nr, &in, &in16));
    lx = (float)loom_lora_has(m, LORA_QKV);
    LOOM_CALL(loom_lora_backward(m, l, LORA_QKV, in, m->dqkv, Cq, dfull, 0.0f, N, acc));
    db = lo[W_QKV_B] >= 0 && !frozen ? G(lo[W_QKV_B]) : NULL;
    LOOM_CALL(output_grad16(m, db, m->dqkv, m->dqkv, N, Cq, acc, &d16));
    LOOM_CALL(grad_products(m, (loom_gemm){0, 0, N, C, Cq, 1.0f, m->dqkv, Cq, P(lo[W_QKV_W]), C, lx, dfull, C},
              (loom_gemm){1, 0, Cq, C, N, 1.0f, m->dqkv, Cq, in, C, beta, G(lo[W_QKV_W]), C}, d16, in16));
    LOOM_CALL(bias_after(m, db, m->dqkv, N, Cq, acc, d16));
    LOOM_CALL(input_grad_sum(m, N, Nr));
    if (gpt)
        LOOM_CALL(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = dres, .dw = REP(0, W_LN1_W), .db = REP(1, W_LN1_B), .dout = m->dln, .inp = x, .w = P(lo[W_LN1_W]), .mean = a->ln1_mean, .rstd = a->ln1_rstd, .N = Nr, .C = C, .accumulate = racc}));
    else LOOM_CALL(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = dres, .dw = REP(0, W_LN1_W), .dout = m->dln, .inp = x, .w = P(lo[W_LN1_W]), .rstd = a->ln1_rstd, .N = Nr, .C = C, .accumulate = racc}));
#undef REP
    if (!sp) return LOOM_OK;
    const int64_t offs[6] = {lo[W_LN1_W], lo[W_LN1_B], lo[W_ATTN_PROJ_B], lo[W_LN2_W], lo[W_LN2_B], lo[W_MLP_PROJ_B]};
    return sp_apply_rep(m, offs, 6, acc);
}

/* Backward of chunk k (after its forward, in the same slot): from the loss (the head's chunk) or dy, the
 * gradient of the chunk's output; every weight gradient written (accumulate = 0) or added. */
static loom_status chunk_backward(loom_model *m, int k, const int32_t *tokens, const float *dy, int64_t B, int64_t T,
                                  int accumulate, const float **dx_out) {
    loom_backend *be = m->be;
    const int64_t N = B * T, C = m->C, V = m->V;
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int embed = k == 0 && m->first, head = k == m->n_chunks - 1 && m->last;
    const float beta = accumulate ? 1.0f : 0.0f;
    const int64_t l0 = m->chunk_l0[k], l1 = m->chunk_l1[k];
    const int64_t Nr = m->tp_sp ? N / m->tp_size : N; /* rows of the residual stream here */
    if (head) { /* logits = lnf Whead^T; m->logits holds dlogits, or scratch16[0] in bf16 (m->dlogits16), unless
                 * the forward made the head's gradient products already (m->head_grads_made) */
        float *dlnf = m->tp_sp ? m->sp_partial : m->dln;
        if (!m->head_grads_made) /* else the forward made them (head_grads_in_forward) */
            LOOM_CALL(head_grad_rows(m, 0, N, m->logits, m->dlogits16 ? m->scratch16[0] : NULL,
                                     m->slots[m->slot].lnf16_full, beta));
        m->dlogits16 = m->head_grads_made = 0;
        if (m->tp_sp) LOOM_CALL(sp_reduce_scatter(m, dlnf, m->dln, Nr));
        else LOOM_CALL(tp_sum(m, m->dln, N * C));
        LOOM_CALL(loom_buf_fill(be, m->dres, 0.0f, Nr * C));
        const float *xL = m->acts[l1 - 1].out;
        float *gw = m->lora ? loom_lora_dw_scratch(m) : G(m->off_lnf_w);
        float *gb = m->off_lnf_b < 0 ? NULL : m->lora ? gw + C : G(m->off_lnf_b);
        const int acc_n = m->tp_sp ? 0 : accumulate;
        if (m->tp_sp) { /* this rank's rows' part, summed over tp below */
            gw = m->sp_rep;
            gb = m->sp_rep + C;
            LOOM_CALL(loom_buf_fill(be, m->sp_rep, 0.0f, 2 * C));
        }
        if (gpt)
            LOOM_CALL(loom_k_layernorm_backward(be, &(loom_layernorm_backward_args){.dinp = m->dres, .dw = gw, .db = gb, .dout = m->dln, .inp = xL, .w = P(m->off_lnf_w), .mean = m->lnf_mean, .rstd = m->lnf_rstd, .N = Nr, .C = C, .accumulate = acc_n}));
        else LOOM_CALL(loom_k_rmsnorm_backward(be, &(loom_rmsnorm_backward_args){.dinp = m->dres, .dw = gw, .dout = m->dln, .inp = xL, .w = P(m->off_lnf_w), .rstd = m->lnf_rstd, .N = Nr, .C = C, .accumulate = acc_n}));
        if (m->tp_sp) {
            const int64_t offs[2] = {m->off_lnf_w, m->off_lnf_b};
            LOOM_CALL(sp_apply_rep(m, offs, 2, accumulate));
        }
        LOOM_CALL(unit_done(m, U_HEAD));
        if (head_is_wte(m)) LOOM_CALL(unit_done(m, 0));
        HOOK(grads_done, U_HEAD);
    } else {
        LOOM_CALL(loom_buf_copy(be, m->dres, dy, (size_t)(Nr * C) * sizeof(float)));
    }
    for (int64_t li = l1 - 1; li >= l0; li--) {
        HOOK(params_needed, U_LAYER(li), -1);
        LOOM_CALL(layer_backward(m, li, B, T, accumulate));
        LOOM_CALL(unit_done(m, U_LAYER(li)));
        HOOK(grads_done, U_LAYER(li));
    }
    if (!embed) {
        float *dx = m->slots[m->slot].dx;
        LOOM_CALL(loom_buf_copy(be, dx, m->dres, (size_t)(Nr * C) * sizeof(float)));
        if (dx_out) *dx_out = dx;
        return LOOM_OK;
    }
    if (m->lora) { /* the embedding is frozen */
        HOOK(grads_done, 0);
        return LOOM_OK;
    }
    /* the token embedding (reads no parameter): with the tied head here, the head already wrote this
     * micro-step's part */
    const int64_t t0 = (int64_t)m->sp_rank * T; /* positions [t0, t0 + T) */
    const int32_t *tok;
    LOOM_CALL(local_tokens(m, tokens, N, &tok));
    if (m->tp_sp) { /* every token's gradient for this rank's vocabulary rows; wpe from this rank's rows */
        LOOM_CALL(sp_all_gather(m, m->dres, m->sp_gather, Nr));
        LOOM_CALL(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = G(m->off_wte),
                                            .dout = m->sp_gather, .tokens = tok, .B = B, .T = T, .C = C, .V = V,
                                            .accumulate_wte = head_is_wte(m) && m->last ? 1 : accumulate,
                                            .accumulate_wpe = accumulate}));
        if (gpt) {
            float *w = m->sp_wpe, *g = G(m->off_wpe) + t0 * C;
            const int64_t r0 = m->tp_rank * Nr;
            LOOM_CALL(loom_buf_fill(be, w, 0.0f, T * C));
            for (int64_t i = 0; i < Nr; i++) LOOM_CALL(add_into(m, w + ((r0 + i) % T) * C, m->dres + i * C, C));
            LOOM_CALL(loom_comm_allreduce_sum_f32(m->tp, w, T * C));
            if (accumulate) LOOM_CALL(add_into(m, g, w, T * C));
            else LOOM_CALL(loom_buf_copy(be, g, w, (size_t)(T * C) * sizeof(float)));
        }
    } else {
        LOOM_CALL(loom_k_embedding_backward(be, &(loom_embedding_backward_args){.dwte = G(m->off_wte),
                                            .dwpe = gpt ? G(m->off_wpe) + t0 * C : NULL, .dout = m->dres, .tokens = tok,
                                            .B = B, .T = T, .C = C, .V = V,
                                            .accumulate_wte = head_is_wte(m) && m->last ? 1 : accumulate,
                                            .accumulate_wpe = accumulate}));
    }
    if (gpt && !accumulate) { /* the positions this rank did not see have no gradient here */
        LOOM_CALL(loom_buf_fill(be, G(m->off_wpe), 0.0f, t0 * C));
        if (t0 + T < m->cfg.max_seq_len)
            LOOM_CALL(loom_buf_fill(be, G(m->off_wpe) + (t0 + T) * C, 0.0f, (m->cfg.max_seq_len - t0 - T) * C));
    }
    HOOK(grads_done, 0);
    return LOOM_OK;
}

static loom_status check_training(const loom_model *m, float grad_scale) {
    LOOM_CHECK(m->has_grads && m->grads != NULL, LOOM_ERR_INVALID_ARG, "model was created without gradients");
    LOOM_CHECK(grad_scale != 0.0f, LOOM_ERR_INVALID_ARG, "grad_scale must be non-zero");
    return LOOM_OK;
}

loom_status loom_model_forward_backward(loom_model *m, const int32_t *tokens, const int32_t *targets, int64_t B,
                                        int64_t T, float grad_scale, int accumulate, float *loss) {
    LOOM_CALL(check_training(m, grad_scale));
    LOOM_CHECK(targets != NULL, LOOM_ERR_INVALID_ARG, "training needs targets");
    LOOM_CHECK(whole(m), LOOM_ERR_INVALID_ARG, "loom_model_forward_backward runs a whole model (this is a pipeline part)");
    LOOM_CALL(check_batch(m, tokens, targets, B, T));
    loom_lora_begin_micro(m, 1);
    float l = 0.0f;
    m->head_grads_acc = accumulate ? 1 : 0;
    const loom_status st = chunk_forward(m, 0, tokens, NULL, targets, B, T, grad_scale, &l, 1, NULL);
    m->head_grads_acc = -1;
    LOOM_CALL(st);
    LOOM_CALL(chunk_backward(m, 0, tokens, NULL, B, T, accumulate, NULL));
    if (loss) *loss = l;
    return LOOM_OK;
}

loom_status loom_model_chunk_forward(loom_model *m, int chunk, const int32_t *tokens, const float *x_in,
                                     const int32_t *targets, int64_t B, int64_t T, float grad_scale, float *loss,
                                     const float **x_out) {
    LOOM_CHECK(chunk >= 0 && chunk < m->n_chunks, LOOM_ERR_INVALID_ARG, "chunk %d of %d", chunk, m->n_chunks);
    LOOM_CHECK(grad_scale == 0.0f || m->has_grads, LOOM_ERR_INVALID_ARG, "model was created without gradients");
    LOOM_CHECK((chunk == 0 && m->first) || x_in, LOOM_ERR_INVALID_ARG, "chunk %d needs its input", chunk);
    LOOM_CALL(check_batch(m, tokens, targets, B, T));
    return chunk_forward(m, chunk, tokens, x_in, targets, B, T, grad_scale, loss, grad_scale != 0.0f, x_out);
}

loom_status loom_model_chunk_backward(loom_model *m, int chunk, const int32_t *tokens, const float *dy, int64_t B,
                                      int64_t T, int accumulate, const float **dx_out) {
    LOOM_CHECK(chunk >= 0 && chunk < m->n_chunks, LOOM_ERR_INVALID_ARG, "chunk %d of %d", chunk, m->n_chunks);
    LOOM_CALL(check_training(m, 1.0f));
    LOOM_CHECK((chunk == m->n_chunks - 1 && m->last) || dy, LOOM_ERR_INVALID_ARG, "chunk %d needs dy", chunk);
    return chunk_backward(m, chunk, tokens, dy, B, T, accumulate, dx_out);
}

const loom_model_config *loom_model_get_config(const loom_model *m) { return &m->cfg; }
float *loom_model_params(loom_model *m) { return m->params; }
float *loom_model_weights(loom_model *m) {
    if (m->w_resident < 0) m->w_lowp_fresh = 0; /* the caller may write them (a bf16 base: before its first refresh) */
    return m->w;
}
int64_t loom_model_weights_size(const loom_model *m) { return m->w_size; }
int loom_model_num_weight_infos(const loom_model *m) { return m->w_n_infos; }
const loom_param_info *loom_model_weight_info(const loom_model *m, int i) {
    return (i >= 0 && i < m->w_n_infos) ? &m->w_infos[i] : NULL;
}

float *loom_model_grads(loom_model *m) { return m->grads; }
int64_t loom_model_buffer_size(const loom_model *m) { return m->buf_size; }
int64_t loom_model_num_params(const loom_model *m) { return m->n_params; }
int loom_model_num_param_infos(const loom_model *m) { return m->n_infos; }
const loom_param_info *loom_model_param_info(const loom_model *m, int i) {
    return (i >= 0 && i < m->n_infos) ? &m->infos[i] : NULL;
}
const loom_param_info *loom_model_find_param(const loom_model *m, const char *name) {
    for (int i = 0; i < m->n_infos; i++)
        if (strcmp(m->infos[i].name, name) == 0) return &m->infos[i];
    return NULL;
}
loom_status loom_model_read_logits(const loom_model *m, float *dst) {
    LOOM_CHECK(m->logits && m->last_B > 0, LOOM_ERR_INVALID_ARG, "no forward pass has produced logits yet");
    LOOM_CHECK(m->logits_kept, LOOM_ERR_INVALID_ARG,
               "the last forward scored its logits %lld rows at a time and kept none whole (bf16 training with "
               "targets); a forward without targets keeps them", (long long)m->logit_rows);
    return loom_buf_download(m->be, dst, m->logits, (size_t)(m->last_B * m->last_T * m->V) * sizeof(float));
}
loom_backend *loom_model_backend(const loom_model *m) { return m->be; }
loom_comm *loom_model_tp_comm(const loom_model *m) { return m->tp; }

loom_status loom_model_weights_done(loom_model *m, int64_t begin, int64_t end) {
    LOOM_CHECK(begin >= 0 && begin <= end && end <= m->w_size, LOOM_ERR_INVALID_ARG, "weights [%lld, %lld) of %lld",
               (long long)begin, (long long)end, (long long)m->w_size);
    if (m->w_resident < 0) return LOOM_OK; /* the next refresh makes the copy */
    LOOM_CALL(loom_k_f32_to_bf16(m->be, &(loom_f32_to_bf16_args){m->params16 + begin, m->w + begin, end - begin}));
    /* the fp32 matrices' whole pages in the range go back: their products read the copy, the embedding its bf16
     * rows; norms, biases and GPT-2's position table stay */
    const int64_t page = 4096 / (int64_t)sizeof(float);
    int64_t kept = end - begin; /* floats of the range that stay resident */
    for (int i = 0; i < m->w_n_infos; i++) {
        const loom_param_info *p = &m->w_infos[i];
        if (p->ndim != 2 || p->offset == m->off_wpe) continue;
        const int64_t a = p->offset > begin ? p->offset : begin, b = p->offset + p->numel < end ? p->offset + p->numel : end;
        const int64_t lo = (a + page - 1) / page * page, hi = b / page * page;
        if (hi <= lo) continue;
        loom_buf_discard(m->be, m->w + lo, (size_t)(hi - lo) * sizeof(float));
        kept -= hi - lo;
    }
    loom_mem_track(m->mem, LOOM_MEM_PARAMS, kept * (int64_t)sizeof(float));
    m->w_resident += kept * (int64_t)sizeof(float);
    m->w_lowp_fresh = 1;
    return LOOM_OK;
}

uint16_t *loom_model_bf16_copy_of(loom_model *m, const float *params, int64_t n) {
    const int whole = params == m->w && n == m->w_size && !m->lora && !m->lowp_made;
    return whole && m->params16 ? m->params16 : NULL;
}

loom_status loom_model_refresh_low_precision(loom_model *m) {
    if (m->lowp_made) { /* per unit: every part is made again from the new values at its next use */
        for (int u = 0; u < m->n_units; u++)
            if (m->lowp_made[u]) lowp_drop(m, u);
        return LOOM_OK;
    }
    if (m->w_resident >= 0 || (m->lora && m->w_lowp_fresh)) return LOOM_OK; /* held in bf16 only: made as they
                                                                                were written; frozen: made once */
    if (m->params16) LOOM_CALL(loom_k_f32_to_bf16(m->be, &(loom_f32_to_bf16_args){m->params16, m->w, m->w_size}));
    if (m->params_h)
        LOOM_CALL(loom_k_round_fp16(m->be, &(loom_round_fp16_args){m->params_h, m->w_size, m->w, m->w_size, 1, m->w_size}));
    m->w_lowp_fresh = 1;
    return LOOM_OK;
}
int64_t loom_model_boundary_floats(const loom_model *m, int64_t B, int64_t T) {
    return B * T / (m->tp_sp ? m->tp_size : 1) * m->C;
}
int64_t loom_model_canonical_size(const loom_model *m) { return m->canon_size; }
void loom_model_vocab_range(const loom_model *m, int64_t *v0, int64_t *n) {
    *v0 = m->v0;
    *n = m->V;
}
