/* Hugging Face interchange: loom checkpoint <-> transformers GPT2LMHeadModel / LlamaForCausalLM safetensors
 * and config.json (docs/FORMATS-hf.md).
 *
 * Each loom parameter view maps to one or more Hugging Face tensors ("pieces"): a contiguous range of the
 * view's rows, stored as is ([out, in], nn.Linear) or transposed ([in, out], GPT-2's Conv1D). Export and
 * import walk the same piece list, so the two directions cannot disagree.
 *
 * Layering: this converter reads and writes the training driver's checkpoint ("meta" JSON with the model
 * section, "state", "params", "optim.*"), so it uses run.h's model-config JSON (the same keys `loom train`
 * compares on --resume) and the data sampler's initial state; nothing in run/ calls back into it. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/backend.h"
#include "loom/ckpt.h"
#include "loom/comm.h"
#include "loom/data.h"
#include "loom/hf.h"
#include "loom/json.h"
#include "loom/log.h"
#include "loom/mem.h"
#include "loom/optim.h"
#include "loom/run.h"
#include "loom/tensor.h"

#define HF_NAME_MAX 160

typedef struct {
    char hf[HF_NAME_MAX];
    const char *loom;    /* the loom view's name */
    int64_t offset;      /* floats into the loom buffer: the piece's first element */
    int64_t rows, cols;  /* as loom stores it (row-major); cols = 1 for a vector */
    int ndim;            /* 1 or 2 */
    int transpose;       /* Hugging Face stores [cols, rows] (GPT-2 Conv1D) */
} hf_piece;

/* How a block's views are named in Hugging Face: full name, or split into row ranges. */
enum { SPLIT_NONE = 0, SPLIT_QKV, SPLIT_GATE_UP };
typedef struct {
    const char *loom;  /* suffix after "h.N." */
    const char *hf;    /* suffix after the block prefix; for splits the part before the piece name */
    const char *tail;  /* splits: the part after the piece name ("_proj.weight") */
    int transpose;
    int split;
} block_map;

static const block_map gpt2_block[] = {
    {"ln_1.weight", "ln_1.weight", NULL, 0, SPLIT_NONE},
    {"ln_1.bias", "ln_1.bias", NULL, 0, SPLIT_NONE},
    {"attn.qkv.weight", "attn.c_attn.weight", NULL, 1, SPLIT_NONE},
    {"attn.qkv.bias", "attn.c_attn.bias", NULL, 0, SPLIT_NONE},
    {"attn.proj.weight", "attn.c_proj.weight", NULL, 1, SPLIT_NONE},
    {"attn.proj.bias", "attn.c_proj.bias", NULL, 0, SPLIT_NONE},
    {"ln_2.weight", "ln_2.weight", NULL, 0, SPLIT_NONE},
    {"ln_2.bias", "ln_2.bias", NULL, 0, SPLIT_NONE},
    {"mlp.fc.weight", "mlp.c_fc.weight", NULL, 1, SPLIT_NONE},
    {"mlp.fc.bias", "mlp.c_fc.bias", NULL, 0, SPLIT_NONE},
    {"mlp.proj.weight", "mlp.c_proj.weight", NULL, 1, SPLIT_NONE},
    {"mlp.proj.bias", "mlp.c_proj.bias", NULL, 0, SPLIT_NONE},
};

static const block_map llama_block[] = {
    {"attn_norm.weight", "input_layernorm.weight", NULL, 0, SPLIT_NONE},
    {"attn.qkv.weight", "self_attn.", "_proj.weight", 0, SPLIT_QKV},
    {"attn.qkv.bias", "self_attn.", "_proj.bias", 0, SPLIT_QKV},
    {"attn.proj.weight", "self_attn.o_proj.weight", NULL, 0, SPLIT_NONE},
    {"attn.proj.bias", "self_attn.o_proj.bias", NULL, 0, SPLIT_NONE},
    {"mlp_norm.weight", "post_attention_layernorm.weight", NULL, 0, SPLIT_NONE},
    {"mlp.gate_up.weight", "mlp.", "_proj.weight", 0, SPLIT_GATE_UP},
    {"mlp.gate_up.bias", "mlp.", "_proj.bias", 0, SPLIT_GATE_UP},
    {"mlp.down.weight", "mlp.down_proj.weight", NULL, 0, SPLIT_NONE},
    {"mlp.down.bias", "mlp.down_proj.bias", NULL, 0, SPLIT_NONE},
};

static void piece_init(hf_piece *p, const loom_param_info *info, int64_t row0, int64_t rows, int transpose) {
    p->loom = info->name;
    p->cols = info->ndim == 2 ? info->shape[1] : 1;
    p->offset = info->offset + row0 * p->cols;
    p->rows = rows;
    p->ndim = info->ndim;
    p->transpose = transpose;
}

/* The pieces of every view of model m, in the model's view order. *out: malloc'ed, *n entries. */
static loom_status build_pieces(const loom_model *m, hf_piece **out, int *n_out) {
    const loom_model_config *c = loom_model_get_config(m);
    int gpt = c->family == LOOM_FAMILY_GPT2;
    int nv = loom_model_num_param_infos(m);
    hf_piece *pc = calloc((size_t)nv * 3, sizeof *pc); /* a view splits into at most 3 pieces */
    LOOM_CHECK(pc != NULL, LOOM_ERR_NOMEM, "out of memory");
    int n = 0;
    int64_t hd = c->d_model / c->n_head;
    for (int v = 0; v < nv; v++) {
        const loom_param_info *p = loom_model_param_info(m, v);
        const char *nm = p->name;
        hf_piece *q = &pc[n];
        if (!strcmp(nm, "wte")) {
            piece_init(q, p, 0, p->shape[0], 0);
            snprintf(q->hf, HF_NAME_MAX, "%s", gpt ? "transformer.wte.weight" : "model.embed_tokens.weight");
            n++;
        } else if (!strcmp(nm, "wpe")) {
            piece_init(q, p, 0, p->shape[0], 0);
            snprintf(q->hf, HF_NAME_MAX, "transformer.wpe.weight");
            n++;
        } else if (!strcmp(nm, "ln_f.weight") || !strcmp(nm, "ln_f.bias")) {
            piece_init(q, p, 0, p->shape[0], 0);
            snprintf(q->hf, HF_NAME_MAX, "transformer.%s", nm);
            n++;
        } else if (!strcmp(nm, "norm_f.weight")) {
            piece_init(q, p, 0, p->shape[0], 0);
            snprintf(q->hf, HF_NAME_MAX, "model.norm.weight");
            n++;
        } else if (!strcmp(nm, "lm_head.weight")) {
            piece_init(q, p, 0, p->shape[0], 0);
            snprintf(q->hf, HF_NAME_MAX, "lm_head.weight");
            n++;
        } else {
            long long layer = -1;
            int used = 0;
            if (sscanf(nm, "h.%lld.%n", &layer, &used) != 1 || used == 0) {
                free(pc);
                return loom_error_set(LOOM_ERR_INTERNAL, __FILE__, __LINE__, __func__,
                                      "no Hugging Face name for loom parameter '%s'", nm);
            }
            const char *suffix = nm + used;
            const block_map *tab = gpt ? gpt2_block : llama_block;
            size_t nt = gpt ? sizeof gpt2_block / sizeof gpt2_block[0] : sizeof llama_block / sizeof llama_block[0];
            const block_map *bm = NULL;
            for (size_t k = 0; k < nt; k++)
                if (!strcmp(tab[k].loom, suffix)) bm = &tab[k];
            if (!bm) {
                free(pc);
                return loom_error_set(LOOM_ERR_INTERNAL, __FILE__, __LINE__, __func__,
                                      "no Hugging Face name for loom parameter '%s'", nm);
            }
            char prefix[64];
            snprintf(prefix, sizeof prefix, gpt ? "transformer.h.%lld." : "model.layers.%lld.", layer);
            if (bm->split == SPLIT_NONE) {
                piece_init(q, p, 0, p->shape[0], bm->transpose);
                snprintf(q->hf, HF_NAME_MAX, "%s%s", prefix, bm->hf);
                n++;
            } else {
                static const char *const qkv[3] = {"q", "k", "v"}, *const gu[2] = {"gate", "up"};
                int64_t rows_qkv[3] = {c->n_head * hd, c->n_kv_head * hd, c->n_kv_head * hd};
                int64_t rows_gu[2] = {c->d_ff, c->d_ff};
                int np = bm->split == SPLIT_QKV ? 3 : 2;
                int64_t r0 = 0;
                for (int k = 0; k < np; k++) {
                    int64_t rows = bm->split == SPLIT_QKV ? rows_qkv[k] : rows_gu[k];
                    piece_init(&pc[n], p, r0, rows, 0);
                    snprintf(pc[n].hf, HF_NAME_MAX, "%s%s%s%s", prefix, bm->hf,
                             bm->split == SPLIT_QKV ? qkv[k] : gu[k], bm->tail);
                    r0 += rows;
                    n++;
                }
                if (r0 != p->shape[0]) {
                    free(pc);
                    return loom_error_set(LOOM_ERR_INTERNAL, __FILE__, __LINE__, __func__,
                                          "split of '%s' covers %lld of %lld rows", nm, (long long)r0,
                                          (long long)p->shape[0]);
                }
            }
        }
    }
    *out = pc;
    *n_out = n;
    return LOOM_OK;
}

/* The Hugging Face shape of a piece. */
static int piece_shape(const hf_piece *p, int64_t shape[2]) {
    if (p->ndim == 1) {
        shape[0] = p->rows;
        return 1;
    }
    shape[0] = p->transpose ? p->cols : p->rows;
    shape[1] = p->transpose ? p->rows : p->cols;
    return 2;
}

static void shape_str(const int64_t *s, int nd, char *buf, size_t cap) {
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < nd && at < cap; i++) at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* ------------------------------------------------------------------------------------------------------ */
/* config.json */

static loom_status cfg_int(const loom_json *j, const char *key, int required, int64_t dflt, const char *label,
                           int64_t *out) {
    const loom_json *v = loom_json_get(j, key);
    if (!v || v->type == LOOM_JSON_NULL) {
        LOOM_CHECK(!required, LOOM_ERR_FORMAT, "%s: no \"%s\" (needed for the model's shape)", label, key);
        *out = dflt;
        return LOOM_OK;
    }
    LOOM_CHECK(v->type == LOOM_JSON_NUMBER && v->number >= 1 && v->number <= 1e15 && v->number == floor(v->number),
               LOOM_ERR_FORMAT, "%s: \"%s\" must be a positive integer", label, key);
    *out = (int64_t)v->number;
    return LOOM_OK;
}

static loom_status cfg_num(const loom_json *j, const char *key, double dflt, const char *label, double *out) {
    const loom_json *v = loom_json_get(j, key);
    if (!v || v->type == LOOM_JSON_NULL) {
        *out = dflt;
        return LOOM_OK;
    }
    LOOM_CHECK(v->type == LOOM_JSON_NUMBER, LOOM_ERR_FORMAT, "%s: \"%s\" must be a number", label, key);
    *out = v->number;
    return LOOM_OK;
}

static loom_status cfg_bool(const loom_json *j, const char *key, int dflt, const char *label, int *out) {
    const loom_json *v = loom_json_get(j, key);
    if (!v || v->type == LOOM_JSON_NULL) {
        *out = dflt;
        return LOOM_OK;
    }
    LOOM_CHECK(v->type == LOOM_JSON_BOOL, LOOM_ERR_FORMAT, "%s: \"%s\" must be true or false", label, key);
    *out = v->boolean;
    return LOOM_OK;
}

static const char *cfg_str(const loom_json *j, const char *key) {
    const loom_json *v = loom_json_get(j, key);
    return v && v->type == LOOM_JSON_STRING ? v->string : NULL;
}

loom_status loom_hf_config_from_json(const loom_json *j, const char *label, loom_model_config *out) {
    if (!label) label = "config.json";
    LOOM_CHECK(j && j->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: not a JSON object", label);
    const char *type = cfg_str(j, "model_type");
    const loom_json *arch = loom_json_get(j, "architectures");
    const char *arch0 = arch && arch->type == LOOM_JSON_ARRAY && arch->child && arch->child->type == LOOM_JSON_STRING
                            ? arch->child->string : NULL;
    if (!type && arch0) type = !strcmp(arch0, "GPT2LMHeadModel") ? "gpt2" : !strcmp(arch0, "LlamaForCausalLM") ? "llama" : arch0;
    LOOM_CHECK(type != NULL, LOOM_ERR_FORMAT, "%s: no \"model_type\"", label);
    LOOM_CHECK(!strcmp(type, "gpt2") || !strcmp(type, "llama"), LOOM_ERR_UNSUPPORTED,
               "%s: model_type '%.60s' is not supported (loom reads gpt2 and llama)", label, type);
    loom_model_config c;
    memset(&c, 0, sizeof c);
    LOOM_CALL(cfg_num(j, "initializer_range", 0.02, label, &c.init_std));
    c.rope_theta = 10000.0;
    if (!strcmp(type, "gpt2")) {
        c.family = LOOM_FAMILY_GPT2;
        LOOM_CALL(cfg_int(j, "n_embd", 1, 0, label, &c.d_model));
        LOOM_CALL(cfg_int(j, "n_layer", 1, 0, label, &c.n_layer));
        LOOM_CALL(cfg_int(j, "n_head", 1, 0, label, &c.n_head));
        LOOM_CALL(cfg_int(j, "vocab_size", 1, 0, label, &c.vocab_size));
        int64_t nctx = 0;
        LOOM_CALL(cfg_int(j, "n_ctx", 0, 0, label, &nctx));
        LOOM_CALL(cfg_int(j, "n_positions", nctx == 0, nctx, label, &c.max_seq_len));
        LOOM_CALL(cfg_int(j, "n_inner", 0, 4 * c.d_model, label, &c.d_ff));
        LOOM_CALL(cfg_num(j, "layer_norm_epsilon", 1e-5, label, &c.norm_eps));
        c.n_kv_head = c.n_head;
        c.bias = 1;
        const char *act = cfg_str(j, "activation_function");
        if (!act) act = "gelu_new";
        LOOM_CHECK(!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_fast") ||
                       !strcmp(act, "gelu"),
                   LOOM_ERR_UNSUPPORTED,
                   "%s: activation_function '%.40s' is not supported (loom's GPT-2 has the tanh GELU, gelu_new, and the "
                   "exact one, gelu)", label, act);
        c.gelu = !strcmp(act, "gelu") ? LOOM_GELU_ERF : LOOM_GELU_TANH;
        int tie = 1, scale = 1, inv_layer = 0, cross = 0;
        LOOM_CALL(cfg_bool(j, "tie_word_embeddings", 1, label, &tie));
        LOOM_CALL(cfg_bool(j, "scale_attn_weights", 1, label, &scale));
        LOOM_CALL(cfg_bool(j, "scale_attn_by_inverse_layer_idx", 0, label, &inv_layer));
        LOOM_CALL(cfg_bool(j, "add_cross_attention", 0, label, &cross));
        LOOM_CHECK(tie, LOOM_ERR_UNSUPPORTED, "%s: tie_word_embeddings is false; loom's gpt2 ties the head to wte", label);
        LOOM_CHECK(scale && !inv_layer, LOOM_ERR_UNSUPPORTED,
                   "%s: scale_attn_weights=false or scale_attn_by_inverse_layer_idx=true is not supported", label);
        LOOM_CHECK(!cross, LOOM_ERR_UNSUPPORTED, "%s: add_cross_attention is not supported", label);
        c.tie_embeddings = 1;
    } else {
        c.family = LOOM_FAMILY_LLAMA;
        LOOM_CALL(cfg_int(j, "hidden_size", 1, 0, label, &c.d_model));
        LOOM_CALL(cfg_int(j, "intermediate_size", 1, 0, label, &c.d_ff));
        LOOM_CALL(cfg_int(j, "num_hidden_layers", 1, 0, label, &c.n_layer));
        LOOM_CALL(cfg_int(j, "num_attention_heads", 1, 0, label, &c.n_head));
        LOOM_CALL(cfg_int(j, "num_key_value_heads", 0, c.n_head, label, &c.n_kv_head));
        LOOM_CALL(cfg_int(j, "vocab_size", 1, 0, label, &c.vocab_size));
        LOOM_CALL(cfg_int(j, "max_position_embeddings", 0, 2048, label, &c.max_seq_len));
        LOOM_CALL(cfg_num(j, "rms_norm_eps", 1e-6, label, &c.norm_eps));
        const loom_json *rp = loom_json_get(j, "rope_parameters"); /* newer transformers */
        double theta_default = 10000.0;
        if (rp && rp->type == LOOM_JSON_OBJECT) {
            const char *rt = cfg_str(rp, "rope_type");
            LOOM_CHECK(!rt || !strcmp(rt, "default"), LOOM_ERR_UNSUPPORTED,
                       "%s: rope_parameters.rope_type '%.40s' is not supported (loom implements plain RoPE)", label, rt);
            LOOM_CALL(cfg_num(rp, "rope_theta", 10000.0, label, &theta_default));
        }
        LOOM_CALL(cfg_num(j, "rope_theta", theta_default, label, &c.rope_theta));
        const loom_json *rs = loom_json_get(j, "rope_scaling");
        if (rs && rs->type != LOOM_JSON_NULL) {
            const char *rt = cfg_str(rs, "rope_type");
            if (!rt) rt = cfg_str(rs, "type");
            LOOM_CHECK(rt && !strcmp(rt, "default"), LOOM_ERR_UNSUPPORTED,
                       "%s: rope_scaling ('%.40s') is not supported (loom implements plain RoPE)", label,
                       rt ? rt : "?");
        }
        const char *act = cfg_str(j, "hidden_act");
        if (!act) act = "silu";
        LOOM_CHECK(!strcmp(act, "silu"), LOOM_ERR_UNSUPPORTED,
                   "%s: hidden_act '%.40s' is not supported (loom's llama uses SwiGLU: silu)", label, act);
        int ab = 0, mb = 0;
        LOOM_CALL(cfg_bool(j, "attention_bias", 0, label, &ab));
        LOOM_CALL(cfg_bool(j, "mlp_bias", 0, label, &mb));
        LOOM_CHECK(!ab && !mb, LOOM_ERR_UNSUPPORTED,
                   "%s: attention_bias/mlp_bias = true is not supported (loom's llama has no biases)", label);
        c.bias = 0;
        LOOM_CALL(cfg_bool(j, "tie_word_embeddings", 0, label, &c.tie_embeddings));
        int64_t head_dim = 0;
        LOOM_CALL(cfg_int(j, "head_dim", 0, 0, label, &head_dim));
        LOOM_CHECK(head_dim == 0 || head_dim * c.n_head == c.d_model, LOOM_ERR_UNSUPPORTED,
                   "%s: head_dim %lld is not hidden_size / num_attention_heads = %lld (loom derives it)", label,
                   (long long)head_dim, (long long)(c.d_model / c.n_head));
    }
    if (!(c.init_std > 0 && c.init_std < 10)) c.init_std = 0.02; /* only used to initialise: not the weights here */
    loom_status st = loom_model_config_validate(&c);
    if (st != LOOM_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", loom_error_message());
        return loom_error_set(st, __FILE__, __LINE__, __func__, "%s: %s", label, msg);
    }
    *out = c;
    return LOOM_OK;
}

static const char *torch_dtype_name(loom_st_dtype d) {
    return d == LOOM_ST_BF16 ? "bfloat16" : d == LOOM_ST_F16 ? "float16" : "float32";
}

static void hf_config_to_json(const loom_model_config *c, int has_bias, loom_st_dtype dtype, loom_strbuf *sb) {
    if (c->family == LOOM_FAMILY_GPT2) {
        loom_strbuf_printf(sb,
                           "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n"
                           "  \"vocab_size\": %lld,\n  \"n_positions\": %lld,\n  \"n_ctx\": %lld,\n  \"n_embd\": %lld,\n"
                           "  \"n_layer\": %lld,\n  \"n_head\": %lld,\n",
                           (long long)c->vocab_size, (long long)c->max_seq_len, (long long)c->max_seq_len,
                           (long long)c->d_model, (long long)c->n_layer, (long long)c->n_head);
        if (c->d_ff == 4 * c->d_model) loom_strbuf_printf(sb, "  \"n_inner\": null,\n");
        else loom_strbuf_printf(sb, "  \"n_inner\": %lld,\n", (long long)c->d_ff);
        loom_strbuf_printf(sb, "  \"activation_function\": \"%s\",\n  \"layer_norm_epsilon\": ",
                           c->gelu == LOOM_GELU_ERF ? "gelu" : "gelu_new");
        loom_json_write_number(sb, c->norm_eps);
        loom_strbuf_printf(sb, ",\n  \"initializer_range\": ");
        loom_json_write_number(sb, c->init_std);
        loom_strbuf_printf(sb, ",\n  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n"
                               "  \"scale_attn_weights\": true,\n  \"use_cache\": true,\n  \"tie_word_embeddings\": true,\n");
        if (c->vocab_size >= 50257) /* the GPT-2 BPE vocabulary: <|endoftext|> is 50256 */
            loom_strbuf_printf(sb, "  \"bos_token_id\": 50256,\n  \"eos_token_id\": 50256,\n");
        else
            loom_strbuf_printf(sb, "  \"bos_token_id\": null,\n  \"eos_token_id\": null,\n");
    } else {
        loom_strbuf_printf(sb,
                           "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
                           "  \"vocab_size\": %lld,\n  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n"
                           "  \"num_hidden_layers\": %lld,\n  \"num_attention_heads\": %lld,\n"
                           "  \"num_key_value_heads\": %lld,\n  \"head_dim\": %lld,\n  \"max_position_embeddings\": %lld,\n"
                           "  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": ",
                           (long long)c->vocab_size, (long long)c->d_model, (long long)c->d_ff, (long long)c->n_layer,
                           (long long)c->n_head, (long long)c->n_kv_head, (long long)(c->d_model / c->n_head),
                           (long long)c->max_seq_len);
        loom_json_write_number(sb, c->norm_eps);
        loom_strbuf_printf(sb, ",\n  \"rope_theta\": ");
        loom_json_write_number(sb, c->rope_theta);
        loom_strbuf_printf(sb, ",\n  \"rope_scaling\": null,\n  \"initializer_range\": ");
        loom_json_write_number(sb, c->init_std);
        loom_strbuf_printf(sb,
                           ",\n  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n  \"attention_dropout\": 0.0,\n"
                           "  \"use_cache\": true,\n  \"tie_word_embeddings\": %s,\n",
                           has_bias ? "true" : "false", has_bias ? "true" : "false", c->tie_embeddings ? "true" : "false");
    }
    loom_strbuf_printf(sb, "  \"torch_dtype\": \"%s\"\n}\n", torch_dtype_name(dtype));
}

/* ------------------------------------------------------------------------------------------------------ */
/* helpers */


static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    snprintf(p, a + b + 2, "%s%s%s", dir, (a && dir[a - 1] == '/') ? "" : "/", name);
    return p;
}

/* A model object for a config: the parameter layout (views) and a zeroed flat buffer. */
typedef struct {
    loom_backend *be;
    loom_comm *comm;
    loom_mem mem;
    loom_model *model;
} model_ctx;

static void model_ctx_free(model_ctx *mc) {
    loom_model_free(&mc->model);
    loom_comm_free(&mc->comm);
    loom_backend_free(&mc->be);
}

static loom_status model_ctx_init(const loom_model_config *cfg, model_ctx *mc) {
    memset(mc, 0, sizeof *mc);
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 0; /* as `loom train` by default: the thread count recorded in the checkpoint */
    bc.blas_library = "builtin"; /* no GEMM runs here */
    bc.quiet = 1;
    loom_mem_init(&mc->mem);
    loom_status st;
    LOOM_CALL_GOTO(st, loom_backend_init(&bc, &mc->be), fail);
    LOOM_CALL_GOTO(st, loom_comm_init_self(&mc->comm), fail);
    /* the CPU backend: the parameters are host memory that the conversions read and write directly */
    const loom_model_options mo = {.tp = mc->comm};
    LOOM_CALL_GOTO(st, loom_model_init(cfg, mc->be, &mc->mem, &mo, &mc->model), fail);
    return LOOM_OK;
fail:
    model_ctx_free(mc);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* export */

loom_hf_export_options loom_hf_export_options_default(void) {
    loom_hf_export_options o;
    memset(&o, 0, sizeof o);
    o.dtype = LOOM_ST_F32;
    return o;
}

typedef struct {
    const hf_piece *pieces;
    const float *params;
    loom_st_dtype dtype;
} export_ctx;

static loom_status export_fill(void *vctx, int i, void *dst, size_t nbytes) {
    const export_ctx *x = vctx;
    const hf_piece *p = &x->pieces[i];
    const float *src = x->params + p->offset;
    int64_t n = p->rows * p->cols;
    LOOM_CHECK(nbytes == (size_t)n * loom_st_dtype_size(x->dtype), LOOM_ERR_INTERNAL, "piece %s: %zu bytes", p->hf,
               nbytes);
    float *f32 = dst;
    uint16_t *h16 = dst;
    for (int64_t r = 0; r < p->rows; r++)
        for (int64_t c = 0; c < p->cols; c++) {
            float v = src[r * p->cols + c];
            int64_t at = p->transpose ? c * p->rows + r : r * p->cols + c;
            switch (x->dtype) {
            case LOOM_ST_F32: f32[at] = v; break;
            case LOOM_ST_BF16: h16[at] = loom_f32_to_bf16(v); break;
            default: h16[at] = loom_f32_to_f16(v); break;
            }
        }
    return LOOM_OK;
}

/* The checkpoint's params list must describe this build's layout for its config. */
static loom_status check_layout(const loom_json *meta, const loom_model *m, const char *path) {
    const loom_json *pl = loom_json_get(meta, "params");
    if (!pl) return LOOM_OK; /* older checkpoints: the section size check still applies */
    LOOM_CHECK(pl->type == LOOM_JSON_ARRAY && pl->n_children == (size_t)loom_model_num_param_infos(m), LOOM_ERR_MISMATCH,
               "%s: meta.params lists %zu views, this loom lays the model out in %d", path,
               pl->type == LOOM_JSON_ARRAY ? pl->n_children : 0, loom_model_num_param_infos(m));
    int i = 0;
    for (const loom_json *e = pl->child; e; e = e->next, i++) {
        const loom_param_info *p = loom_model_param_info(m, i);
        const loom_json *nm = loom_json_get(e, "name"), *off = loom_json_get(e, "offset"), *sh = loom_json_get(e, "shape");
        int ok = nm && nm->type == LOOM_JSON_STRING && !strcmp(nm->string, p->name) && off &&
                 off->type == LOOM_JSON_NUMBER && off->number == (double)p->offset && sh && sh->type == LOOM_JSON_ARRAY &&
                 sh->n_children == (size_t)p->ndim;
        if (ok) {
            int k = 0;
            for (const loom_json *d = sh->child; d; d = d->next, k++)
                if (d->type != LOOM_JSON_NUMBER || d->number != (double)p->shape[k]) ok = 0;
        }
        LOOM_CHECK(ok, LOOM_ERR_MISMATCH, "%s: meta.params[%d] does not match this loom's view '%s' (offset %lld)", path, i,
                   p->name, (long long)p->offset);
    }
    return LOOM_OK;
}

loom_status loom_hf_export(const char *ckpt, const char *out_dir, const loom_hf_export_options *opt) {
    LOOM_CHECK(ckpt && out_dir, LOOM_ERR_INVALID_ARG, "loom_hf_export: ckpt and out_dir are required");
    loom_hf_export_options o = opt ? *opt : loom_hf_export_options_default();
    LOOM_CHECK(o.dtype == LOOM_ST_F32 || o.dtype == LOOM_ST_BF16 || o.dtype == LOOM_ST_F16, LOOM_ERR_INVALID_ARG,
               "export dtype must be F32, BF16 or F16, got %s", loom_st_dtype_name(o.dtype));
    LOOM_CHECK(o.max_shard_bytes >= 0, LOOM_ERR_INVALID_ARG, "max shard size must be >= 0");
    char *path = strdup(ckpt);
    LOOM_CHECK(path != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_run_ckpt *r = NULL; /* a single-file or a sharded checkpoint */
    char *cfg_path = NULL;
    const loom_json *j = NULL;
    model_ctx mc;
    memset(&mc, 0, sizeof mc);
    hf_piece *pieces = NULL;
    loom_st_spec *specs = NULL;
    loom_strbuf cj;
    loom_strbuf_init(&cj);
    loom_status st;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(path, &r), done);
    j = loom_run_ckpt_meta(r);
    loom_model_config cfg;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(j, "model"), &cfg), done);
    LOOM_CALL_GOTO(st, loom_model_config_validate(&cfg), done);
    LOOM_CHECK_GOTO(st, cfg.family == LOOM_FAMILY_LLAMA || cfg.bias, LOOM_ERR_UNSUPPORTED, done,
                    "%s: a gpt2 model without biases has no Hugging Face GPT2LMHeadModel equivalent", path);
    LOOM_CALL_GOTO(st, model_ctx_init(&cfg, &mc), done);
    LOOM_CALL_GOTO(st, check_layout(j, mc.model, path), done);
    float *params = loom_model_params(mc.model);
    LOOM_CHECK_GOTO(st, loom_run_ckpt_size(r) == loom_model_buffer_size(mc.model), LOOM_ERR_MISMATCH, done,
                    "%s holds %lld floats of parameters, its model needs %lld", path, (long long)loom_run_ckpt_size(r),
                    (long long)loom_model_buffer_size(mc.model));
    LOOM_CALL_GOTO(st, loom_run_ckpt_read(r, "params", 0, loom_model_buffer_size(mc.model), params), done);
    int n = 0;
    LOOM_CALL_GOTO(st, build_pieces(mc.model, &pieces, &n), done);
    specs = calloc((size_t)n, sizeof *specs);
    LOOM_CHECK_GOTO(st, specs != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    for (int i = 0; i < n; i++) {
        specs[i].name = pieces[i].hf;
        specs[i].dtype = o.dtype;
        specs[i].ndim = piece_shape(&pieces[i], specs[i].shape);
    }
    LOOM_CALL_GOTO(st, loom_file_mkdir_p(out_dir), done);
    export_ctx xc = {pieces, params, o.dtype};
    LOOM_CALL_GOTO(st, loom_st_write_model(out_dir, specs, n, o.max_shard_bytes, export_fill, &xc), done);
    hf_config_to_json(&cfg, loom_model_find_param(mc.model, "h.0.attn.qkv.bias") != NULL, o.dtype, &cj);
    LOOM_CHECK_GOTO(st, !cj.failed, LOOM_ERR_NOMEM, done, "out of memory");
    cfg_path = join(out_dir, "config.json");
    LOOM_CHECK_GOTO(st, cfg_path != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_file_write_atomic(cfg_path, cj.buf, cj.len), done);
    st = LOOM_OK;
done:
    loom_strbuf_free(&cj);
    free(cfg_path);
    free(specs);
    free(pieces);
    model_ctx_free(&mc);
    loom_run_ckpt_close(&r);
    free(path);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* import */

loom_hf_import_options loom_hf_import_options_default(void) {
    loom_hf_import_options o;
    memset(&o, 0, sizeof o);
    o.seed = 1337;
    return o;
}

typedef struct {
    int64_t step;
    loom_data_state data;
    int32_t optim_kind;
    int32_t reserved;
} train_state; /* the "state" section as src/run/train.c writes it (docs/FORMATS.md) */

static int str_ptr_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Buffers and other tensors that checkpoints carry and loom has no use for. */
static int ignorable(const char *name, int gpt) {
    const char *s = name;
    if (gpt) {
        if (!strncmp(s, "transformer.", 12)) s += 12;
        long long l;
        int used = 0;
        if (sscanf(s, "h.%lld.%n", &l, &used) == 1 && used > 0)
            return !strcmp(s + used, "attn.bias") || !strcmp(s + used, "attn.masked_bias");
        return 0;
    }
    size_t n = strlen(s), k = strlen(".self_attn.rotary_emb.inv_freq");
    return !strncmp(s, "model.layers.", 13) && n > k && !strcmp(s + n - k, ".self_attn.rotary_emb.inv_freq");
}

/* Reads tensor t (the Hugging Face form of piece p) into the loom buffer. tmp holds p's elements. */
static loom_status read_piece(const hf_piece *p, const loom_st_tensor *t, float *params, float *tmp) {
    int64_t want[2];
    int nd = piece_shape(p, want);
    int same = t->ndim == nd;
    for (int k = 0; same && k < nd; k++) same = t->shape[k] == want[k];
    if (!same) {
        char got_s[160], want_s[64];
        shape_str(t->shape, t->ndim, got_s, sizeof got_s);
        shape_str(want, nd, want_s, sizeof want_s);
        return loom_error_set(LOOM_ERR_MISMATCH, __FILE__, __LINE__, __func__,
                              "%s: tensor '%s' has shape %s, config.json implies %s", t->file, t->name, got_s, want_s);
    }
    int64_t n = p->rows * p->cols;
    LOOM_CALL(loom_st_tensor_read_f32(t, tmp, n));
    for (int64_t i = 0; i < n; i++)
        LOOM_CHECK(isfinite(tmp[i]), LOOM_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (%g at element %lld)",
                   t->file, t->name, (double)tmp[i], (long long)i);
    float *dst = params + p->offset;
    if (!p->transpose) memcpy(dst, tmp, (size_t)n * sizeof(float));
    else
        for (int64_t c = 0; c < p->cols; c++)
            for (int64_t r = 0; r < p->rows; r++) dst[r * p->cols + c] = tmp[c * p->rows + r];
    return LOOM_OK;
}

/* A tied head stored anyway must equal the embedding it is tied to. */
static loom_status check_tied_head(const loom_st_tensor *t, const float *wte, int64_t V, int64_t C, float *tmp) {
    LOOM_CHECK(t->ndim == 2 && t->shape[0] == V && t->shape[1] == C, LOOM_ERR_MISMATCH,
               "%s: tensor '%s' (the tied head) is not [%lld, %lld]", t->file, t->name, (long long)V, (long long)C);
    LOOM_CALL(loom_st_tensor_read_f32(t, tmp, V * C));
    for (int64_t i = 0; i < V * C; i++)
        LOOM_CHECK(memcmp(&tmp[i], &wte[i], sizeof(float)) == 0, LOOM_ERR_UNSUPPORTED,
                   "%s: tensor '%s' differs from the token embedding (element %lld), but config.json ties them", t->file,
                   t->name, (long long)i);
    return LOOM_OK;
}

int loom_hf_is_model_dir(const char *dir) {
    static const char *const names[] = {"config.json", "checkpoint.bin", "checkpoint.json"};
    int has[3];
    for (int i = 0; i < 3; i++) {
        char *p = join(dir, names[i]);
        has[i] = p && access(p, F_OK) == 0;
        free(p);
    }
    return has[0] && !has[1] && !has[2];
}

loom_status loom_hf_model_config_of(const char *path, loom_model_config *out) {
    if (!loom_hf_is_model_dir(path)) {
        loom_run_ckpt *c = NULL;
        LOOM_CALL(loom_run_ckpt_open(path, &c));
        const loom_status st = loom_model_config_from_json(loom_json_get(loom_run_ckpt_meta(c), "model"), out);
        loom_run_ckpt_close(&c);
        return st;
    }
    char *cfg_path = join(path, "config.json");
    LOOM_CHECK(cfg_path != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_json *cj = NULL;
    loom_status st = loom_json_parse_file(cfg_path, &cj);
    if (st == LOOM_OK) st = loom_hf_config_from_json(cj, cfg_path, out);
    loom_json_free(&cj);
    free(cfg_path);
    return st;
}

/* The chat template loom serve has built in that tokenizer_config.json's Jinja template is, recognised by
 * its turn markers (ChatML's <|im_start|>, Llama 3's <|start_header_id|>); NULL for none or another. */
static const char *chat_template_of(const char *src_dir) {
    char *path = join(src_dir, "tokenizer_config.json");
    loom_json *tc = NULL;
    const char *name = NULL;
    if (path && loom_json_parse_file(path, &tc) == LOOM_OK) {
        const loom_json *t = loom_json_get(tc, "chat_template");
        if (t && t->type == LOOM_JSON_STRING && strstr(t->string, "<|im_start|>")) name = "chatml";
        else if (t && t->type == LOOM_JSON_STRING && strstr(t->string, "<|start_header_id|>")) name = "llama3";
    }
    loom_error_clear();
    loom_json_free(&tc);
    free(path);
    return name;
}

loom_status loom_checkpoint_save_weights(const char *out_dir, const loom_model *lay, const float *params,
                                         const char *preset, const char *meta_extra, uint64_t seed) {
    const loom_model_config *cfg = loom_model_get_config(lay);
    loom_data *data = NULL;
    float *zeros = NULL;
    char *ckpt_path = join(out_dir, "checkpoint.bin"), *prev_path = join(out_dir, "checkpoint.prev.bin"),
         *tc_path = join(out_dir, "train-config.json");
    loom_strbuf meta, tc;
    loom_strbuf_init(&meta);
    loom_strbuf_init(&tc);
    loom_status st;
    LOOM_CHECK_GOTO(st, ckpt_path && prev_path && tc_path, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_data_open("synthetic", cfg->vocab_size, 0.0, seed, &data), done);
    train_state ts;
    memset(&ts, 0, sizeof ts);
    ts.step = 0;
    ts.data = loom_data_get_state(data);
    ts.optim_kind = (int32_t)LOOM_OPTIM_ADAMW;
    loom_strbuf_printf(&meta, "{\"format\":\"loom.train\",\"version\":1,\"preset\":");
    loom_json_write_string(&meta, preset);
    loom_strbuf_printf(&meta, ",\"step\":0,\"optimizer\":\"%s\",\"threads\":1%s,\"model\":",
                       loom_optim_kind_name(LOOM_OPTIM_ADAMW), meta_extra ? meta_extra : "");
    loom_model_config_to_json(cfg, &meta);
    loom_strbuf_printf(&meta, ",\"params\":[");
    for (int i = 0; i < loom_model_num_param_infos(lay); i++) {
        const loom_param_info *p = loom_model_param_info(lay, i);
        loom_strbuf_printf(&meta, "%s{\"name\":\"%s\",\"offset\":%lld,\"shape\":[%lld", i ? "," : "", p->name,
                           (long long)p->offset, (long long)p->shape[0]);
        if (p->ndim > 1) loom_strbuf_printf(&meta, ",%lld", (long long)p->shape[1]);
        loom_strbuf_printf(&meta, "]}");
    }
    loom_strbuf_printf(&meta, "]}");
    LOOM_CHECK_GOTO(st, !meta.failed, LOOM_ERR_NOMEM, done, "out of memory");
    int64_t pbytes = loom_model_buffer_size(lay) * (int64_t)sizeof(float);
    zeros = calloc((size_t)pbytes, 1); /* AdamW's m and v start at zero (untouched pages cost no memory) */
    LOOM_CHECK_GOTO(st, zeros != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    loom_ckpt_section sec[5] = {
        {"meta", meta.buf, (int64_t)meta.len, NULL, NULL}, {"state", &ts, (int64_t)sizeof ts, NULL, NULL},
        {"params", params, pbytes, NULL, NULL},            {"optim.0", zeros, pbytes, NULL, NULL},
        {"optim.1", zeros, pbytes, NULL, NULL},
    };
    LOOM_CALL_GOTO(st, loom_file_mkdir_p(out_dir), done);
    if (access(ckpt_path, F_OK) == 0) {
        LOOM_CHECK_GOTO(st, rename(ckpt_path, prev_path) == 0, LOOM_ERR_IO, done, "cannot move aside %s: %s", ckpt_path,
                        strerror(errno));
        LOOM_WARN("%s already held a checkpoint; moved it to %s", out_dir, prev_path);
    }
    LOOM_CALL_GOTO(st, loom_ckpt_write(ckpt_path, sec, 5), done);
    /* for `loom train --config DIR/train-config.json --resume --out DIR` */
    loom_strbuf_printf(&tc, "{\"model\": ");
    loom_model_config_to_json(cfg, &tc);
    loom_strbuf_printf(&tc, ",\n \"train\": {\"seq_len\": %lld}}\n",
                       (long long)(cfg->max_seq_len < 64 ? cfg->max_seq_len : 64));
    LOOM_CHECK_GOTO(st, !tc.failed, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_file_write_atomic(tc_path, tc.buf, tc.len), done);
    st = LOOM_OK;
done:
    loom_strbuf_free(&meta);
    loom_strbuf_free(&tc);
    loom_data_free(&data);
    free(zeros);
    free(ckpt_path);
    free(prev_path);
    free(tc_path);
    return st;
}

loom_status loom_hf_import(const char *src_dir, const char *out_dir, const loom_hf_import_options *opt) {
    LOOM_CHECK(src_dir && out_dir, LOOM_ERR_INVALID_ARG, "loom_hf_import: src_dir and out_dir are required");
    loom_hf_import_options o = opt ? *opt : loom_hf_import_options_default();
    char *cfg_path = join(src_dir, "config.json");
    loom_json *cj = NULL;
    loom_st_model *stm = NULL;
    model_ctx mc;
    memset(&mc, 0, sizeof mc);
    hf_piece *pieces = NULL;
    const char **names = NULL;
    float *tmp = NULL;
    loom_strbuf meta;
    loom_strbuf_init(&meta);
    loom_status st;
    LOOM_CHECK_GOTO(st, cfg_path != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_json_parse_file(cfg_path, &cj), done);
    loom_model_config cfg;
    LOOM_CALL_GOTO(st, loom_hf_config_from_json(cj, cfg_path, &cfg), done);
    LOOM_CALL_GOTO(st, loom_st_model_open(src_dir, &stm), done);
    LOOM_CALL_GOTO(st, model_ctx_init(&cfg, &mc), done);
    float *params = loom_model_params(mc.model);
    int n = 0, gpt = cfg.family == LOOM_FAMILY_GPT2;
    LOOM_CALL_GOTO(st, build_pieces(mc.model, &pieces, &n), done);
    /* GPT-2 checkpoints saved from GPT2Model (the hub's "gpt2") lack the "transformer." prefix */
    if (gpt && !loom_st_model_find(stm, "transformer.wte.weight") && loom_st_model_find(stm, "wte.weight"))
        for (int i = 0; i < n; i++)
            if (!strncmp(pieces[i].hf, "transformer.", 12)) memmove(pieces[i].hf, pieces[i].hf + 12, strlen(pieces[i].hf + 12) + 1);
    int64_t most = cfg.vocab_size * cfg.d_model;
    for (int i = 0; i < n; i++)
        if (pieces[i].rows * pieces[i].cols > most) most = pieces[i].rows * pieces[i].cols;
    tmp = malloc((size_t)most * sizeof(float));
    names = malloc((size_t)n * sizeof *names);
    LOOM_CHECK_GOTO(st, tmp && names, LOOM_ERR_NOMEM, done, "out of memory");
    for (int i = 0; i < n; i++) {
        const loom_st_tensor *t = loom_st_model_find(stm, pieces[i].hf);
        LOOM_CHECK_GOTO(st, t != NULL, LOOM_ERR_FORMAT, done, "%s: no tensor '%s' (loom's %s needs it)",
                        loom_st_model_source(stm), pieces[i].hf, pieces[i].loom);
        LOOM_CALL_GOTO(st, read_piece(&pieces[i], t, params, tmp), done);
        names[i] = pieces[i].hf;
    }
    /* everything else must be known: buffers, or a tied head equal to the embedding */
    qsort(names, (size_t)n, sizeof *names, str_ptr_cmp);
    int unknown = 0;
    const char *first_unknown = NULL;
    for (int i = 0; i < loom_st_model_num_tensors(stm); i++) {
        const loom_st_tensor *t = loom_st_model_tensor(stm, i);
        if (bsearch(&t->name, names, (size_t)n, sizeof *names, str_ptr_cmp)) continue;
        if (ignorable(t->name, gpt)) continue;
        if (cfg.tie_embeddings && !strcmp(t->name, "lm_head.weight")) {
            const loom_param_info *wte = loom_model_find_param(mc.model, "wte");
            LOOM_CALL_GOTO(st, check_tied_head(t, params + wte->offset, cfg.vocab_size, cfg.d_model, tmp), done);
            continue;
        }
        if (!unknown) first_unknown = t->name;
        unknown++;
    }
    LOOM_CHECK_GOTO(st, unknown == 0, LOOM_ERR_FORMAT, done,
                    "%s: %d tensor%s that a %s model of this config.json does not have, e.g. '%s'",
                    loom_st_model_source(stm), unknown, unknown == 1 ? "" : "s", loom_family_name(cfg.family),
                    first_unknown);

    /* the checkpoint, in src/run/train.c's layout */
    loom_strbuf_printf(&meta, ",\"source\":");
    loom_json_write_string(&meta, src_dir);
    const char *tmpl = chat_template_of(src_dir);
    if (tmpl) loom_strbuf_printf(&meta, ",\"chat_template\":\"%s\"", tmpl);
    LOOM_CHECK_GOTO(st, !meta.failed, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_checkpoint_save_weights(out_dir, mc.model, params, "hf-import", meta.buf, o.seed), done);
    st = LOOM_OK;
done:
    loom_strbuf_free(&meta);
    free(tmp);
    free(names);
    free(pieces);
    model_ctx_free(&mc);
    loom_st_model_close(&stm);
    loom_json_free(&cj);
    free(cfg_path);
    return st;
}
