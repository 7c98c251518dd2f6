/* LoRA adapters in Hugging Face PEFT's layout: adapter_config.json + adapter_model.safetensors.
 *
 * PEFT keys a module's adapter "base_model.model.<module>.lora_A.weight" (r x fan_in) and ".lora_B.weight"
 * (fan_out x r), the adapter name "default" left out, as get_peft_model_state_dict saves them. The shapes are
 * nn.Linear's whatever the base layer: GPT-2's Conv1D modules only add fan_in_fan_out = true to the config
 * (the merge transposes the delta). loom's adapters have the same shapes, so tensors map one to one; the
 * modules are GPT-2's transformer.h.L.attn.c_attn / attn.c_proj / mlp.c_fc / mlp.c_proj and LLaMA's
 * model.layers.L.self_attn.{q,k,v,o}_proj / mlp.{gate,up,down}_proj. An imported adapter set that leaves out
 * modules loom groups with others (PEFT's LLaMA default adapts q_proj and v_proj only; loom's qkv role holds
 * q, k and v) gets zero adapters there: B = 0 adds nothing, so the model is exactly PEFT's. */
#define _DEFAULT_SOURCE /* realpath */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/ckpt.h"
#include "loom/hf.h"
#include "loom/json.h"
#include "loom/log.h"
#include "loom/run.h"

/* loom's adapter module name (after "h.L.") -> PEFT's module path (a %lld for the layer) and role bit */
static const struct {
    const char *loom, *gpt2, *llama;
    int role;
} modules[] = {
    {"attn.qkv", "transformer.h.%lld.attn.c_attn", NULL, LOOM_LORA_QKV},
    {"attn.q", NULL, "model.layers.%lld.self_attn.q_proj", LOOM_LORA_QKV},
    {"attn.k", NULL, "model.layers.%lld.self_attn.k_proj", LOOM_LORA_QKV},
    {"attn.v", NULL, "model.layers.%lld.self_attn.v_proj", LOOM_LORA_QKV},
    {"attn.proj", "transformer.h.%lld.attn.c_proj", "model.layers.%lld.self_attn.o_proj", LOOM_LORA_PROJ},
    {"mlp.fc", "transformer.h.%lld.mlp.c_fc", NULL, LOOM_LORA_FC},
    {"mlp.gate", NULL, "model.layers.%lld.mlp.gate_proj", LOOM_LORA_FC},
    {"mlp.up", NULL, "model.layers.%lld.mlp.up_proj", LOOM_LORA_FC},
    {"mlp.proj", "transformer.h.%lld.mlp.c_proj", NULL, LOOM_LORA_DOWN},
    {"mlp.down", NULL, "model.layers.%lld.mlp.down_proj", LOOM_LORA_DOWN},
};
#define N_MODULES (int)(sizeof modules / sizeof modules[0])

/* PEFT's key for loom adapter `name` ("h.L.<module>.lora_A"); 0 when it is not one */
static int peft_key(loom_family fam, const char *name, char *out, size_t n) {
    long long l;
    int k = 0;
    if (sscanf(name, "h.%lld.%n", &l, &k) != 1 || !k) return 0;
    const char *mod = name + k, *dot = strrchr(mod, '.');
    if (!dot || (strcmp(dot, ".lora_A") && strcmp(dot, ".lora_B"))) return 0;
    for (int i = 0; i < N_MODULES; i++) {
        const char *path = fam == LOOM_FAMILY_GPT2 ? modules[i].gpt2 : modules[i].llama;
        if (!path || strlen(modules[i].loom) != (size_t)(dot - mod) || strncmp(modules[i].loom, mod, (size_t)(dot - mod)))
            continue;
        char p[128];
        snprintf(p, sizeof p, path, l);
        snprintf(out, n, "base_model.model.%s%s.weight", p, dot);
        return 1;
    }
    return 0;
}

/* the target_modules PEFT names for loom's role bits */
static void target_modules(loom_family fam, int targets, loom_strbuf *sb) {
    const char *sep = "";
    for (int i = 0; i < N_MODULES; i++) {
        const char *path = fam == LOOM_FAMILY_GPT2 ? modules[i].gpt2 : modules[i].llama;
        if (!path || !(targets & modules[i].role)) continue;
        /* the module's name past the layer: c_attn, attn.c_proj (GPT-2's two c_proj differ by their parent), ... */
        const char *tail = strstr(path, "%lld.") + 5;
        if (fam == LOOM_FAMILY_LLAMA) tail = strrchr(path, '.') + 1;
        else if (!strcmp(tail, "attn.c_attn") || !strcmp(tail, "mlp.c_fc")) tail = strrchr(path, '.') + 1;
        loom_strbuf_printf(sb, "%s\"%s\"", sep, tail);
        sep = ", ";
    }
}

typedef struct {
    const float *params;
    const loom_param_info **infos;
} export_ctx;

static loom_status export_fill(void *vctx, int i, void *dst, size_t nbytes) {
    const export_ctx *c = vctx;
    memcpy(dst, c->params + c->infos[i]->offset, nbytes);
    return LOOM_OK;
}

loom_status loom_peft_export(const char *ckpt, const char *out_dir) {
    loom_run_ckpt *c = NULL;
    loom_model *lay = NULL;
    float *params = NULL;
    loom_st_spec *specs = NULL;
    const loom_param_info **infos = NULL;
    char (*names)[192] = NULL;
    loom_strbuf cfg;
    loom_strbuf_init(&cfg);
    loom_status st;
    loom_model_config mc;
    loom_lora_config lc;
    int64_t n = 0;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(ckpt, &c), done);
    LOOM_CALL_GOTO(st, loom_checkpoint_read_adapters(c, &lc, &params, &n), done);
    const loom_json *meta = loom_run_ckpt_meta(c), *base = loom_json_get(loom_json_get(meta, "lora"), "base");
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(meta, "model"), &mc), done);
    LOOM_CALL_GOTO(st, loom_model_init_lora_layout(&mc, &lc, &lay), done);
    LOOM_CHECK_GOTO(st, n == loom_model_buffer_size(lay), LOOM_ERR_MISMATCH, done, "%s holds %lld floats, its adapters %lld",
                    loom_run_ckpt_path(c), (long long)n, (long long)loom_model_buffer_size(lay));
    const int k = loom_model_num_param_infos(lay);
    specs = calloc((size_t)k, sizeof *specs);
    infos = calloc((size_t)k, sizeof *infos);
    names = calloc((size_t)k, sizeof *names);
    LOOM_CHECK_GOTO(st, specs && infos && names, LOOM_ERR_NOMEM, done, "out of memory");
    for (int i = 0; i < k; i++) {
        infos[i] = loom_model_param_info(lay, i);
        LOOM_CHECK_GOTO(st, peft_key(mc.family, infos[i]->name, names[i], sizeof names[i]), LOOM_ERR_INTERNAL, done,
                        "adapter %s has no PEFT name", infos[i]->name);
        specs[i] = (loom_st_spec){names[i], LOOM_ST_F32, 2, {infos[i]->shape[0], infos[i]->shape[1]}};
    }
    LOOM_CALL_GOTO(st, loom_file_mkdir_p(out_dir), done);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out_dir);
    export_ctx ec = {params, infos};
    LOOM_CALL_GOTO(st, loom_st_write(path, specs, k, export_fill, &ec), done);
    const int gpt = mc.family == LOOM_FAMILY_GPT2;
    loom_strbuf_printf(&cfg, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": ");
    loom_json_write_string(&cfg, base && base->type == LOOM_JSON_STRING && base->string[0] ? base->string : NULL);
    loom_strbuf_printf(&cfg, ",\n  \"r\": %d,\n  \"lora_alpha\": %.17g,\n  \"lora_dropout\": %.17g,\n  \"use_rslora\": %s,\n"
                       "  \"fan_in_fan_out\": %s,\n  \"bias\": \"none\",\n  \"inference_mode\": true,\n"
                       "  \"init_lora_weights\": true,\n  \"modules_to_save\": null,\n  \"layers_to_transform\": null,\n"
                       "  \"target_modules\": [", lc.r, lc.alpha, lc.dropout, lc.rslora ? "true" : "false",
                       gpt ? "true" : "false");
    target_modules(mc.family, lc.targets, &cfg);
    loom_strbuf_printf(&cfg, "]\n}\n");
    LOOM_CHECK_GOTO(st, !cfg.failed, LOOM_ERR_NOMEM, done, "out of memory");
    snprintf(path, sizeof path, "%s/adapter_config.json", out_dir);
    LOOM_CALL_GOTO(st, loom_file_write_atomic(path, cfg.buf, cfg.len), done);
    LOOM_INFO("PEFT adapters: %d tensors (r %d, alpha %g) in %s", k, lc.r, lc.alpha, out_dir);
done:
    loom_strbuf_free(&cfg);
    free(names);
    free(infos);
    free(specs);
    free(params);
    loom_model_free(&lay);
    loom_run_ckpt_close(&c);
    return st;
}

/* the number a config key holds, or dflt when absent */
static loom_status cfg_number(const loom_json *j, const char *key, double dflt, const char *label, double *out) {
    const loom_json *v = loom_json_get(j, key);
    *out = dflt;
    if (!v || v->type == LOOM_JSON_NULL) return LOOM_OK;
    LOOM_CHECK(v->type == LOOM_JSON_NUMBER || v->type == LOOM_JSON_BOOL, LOOM_ERR_FORMAT, "%s: %s must be a number",
               label, key);
    *out = v->type == LOOM_JSON_BOOL ? v->boolean : v->number;
    return LOOM_OK;
}

loom_status loom_peft_import(const char *adapter_dir, const char *base, const char *out_dir) {
    char path[PATH_MAX + 64], from[PATH_MAX + 64], abs_base[PATH_MAX];
    loom_json *cj = NULL;
    loom_st_file *sf = NULL;
    loom_run_ckpt *bc = NULL;
    loom_model *lay = NULL;
    float *params = NULL;
    loom_strbuf extra;
    loom_strbuf_init(&extra);
    loom_status st;
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter_dir);
    LOOM_CALL_GOTO(st, loom_json_parse_file(path, &cj), done);
    const loom_json *pt = loom_json_get(cj, "peft_type");
    LOOM_CHECK_GOTO(st, pt && pt->type == LOOM_JSON_STRING && !strcmp(pt->string, "LORA"), LOOM_ERR_UNSUPPORTED, done,
                    "%s: peft_type must be \"LORA\"", path);
    for (const char *key = "rank_pattern"; key; key = !strcmp(key, "rank_pattern") ? "alpha_pattern" : NULL) {
        const loom_json *v = loom_json_get(cj, key);
        LOOM_CHECK_GOTO(st, !v || v->type == LOOM_JSON_NULL || (v->type == LOOM_JSON_OBJECT && !v->child),
                        LOOM_ERR_UNSUPPORTED, done, "%s: %s (per-module ranks or alphas) is not supported", path, key);
    }
    double r, alpha, dropout, rslora;
    LOOM_CALL_GOTO(st, cfg_number(cj, "r", 8, path, &r), done);
    LOOM_CALL_GOTO(st, cfg_number(cj, "lora_alpha", 8, path, &alpha), done);
    LOOM_CALL_GOTO(st, cfg_number(cj, "lora_dropout", 0, path, &dropout), done);
    LOOM_CALL_GOTO(st, cfg_number(cj, "use_rslora", 0, path, &rslora), done);
    /* the base: its model config (a loom checkpoint, or a Hugging Face directory imported first) */
    snprintf(from, sizeof from, "%s", base);
    if (loom_hf_is_model_dir(base)) {
        snprintf(from, sizeof from, "%s/base-hf", out_dir);
        LOOM_CALL_GOTO(st, loom_hf_import(base, from, NULL), done);
    }
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(from, &bc), done);
    loom_model_config mc;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(loom_run_ckpt_meta(bc), "model"), &mc), done);
    LOOM_CHECK_GOTO(st, !loom_json_get(loom_run_ckpt_meta(bc), "lora"), LOOM_ERR_INVALID_ARG, done,
                    "%s holds LoRA adapters itself: merge it first (loom merge) to use it as a base", base);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter_dir);
    LOOM_CALL_GOTO(st, loom_st_file_open(path, &sf), done);
    /* which roles the tensors adapt: every module of a role gets an adapter, zero where the file has none */
    int targets = 0;
    for (int i = 0; i < loom_st_file_num_tensors(sf); i++) {
        const char *name = loom_st_file_tensor(sf, i)->name;
        int known = 0;
        for (int m = 0; m < N_MODULES && !known; m++) {
            const char *p = mc.family == LOOM_FAMILY_GPT2 ? modules[m].gpt2 : modules[m].llama;
            long long l;
            int end = 0;
            char fmt[160];
            if (!p) continue;
            snprintf(fmt, sizeof fmt, "base_model.model.%s.lora_%%*[AB].weight%%n", p);
            if (sscanf(name, fmt, &l, &end) == 1 && end && name[end] == '\0' && l >= 0 && l < mc.n_layer) {
                known = 1;
                targets |= modules[m].role;
            }
        }
        LOOM_CHECK_GOTO(st, known, LOOM_ERR_FORMAT, done, "%s: tensor '%s' is not a LoRA adapter of a %lld-layer %s model "
                        "(bias adapters, modules_to_save and other PEFT methods are not supported)", path, name,
                        (long long)mc.n_layer, loom_family_name(mc.family));
    }
    LOOM_CHECK_GOTO(st, targets != 0, LOOM_ERR_FORMAT, done, "%s holds no adapter", path);
    LOOM_CHECK_GOTO(st, r >= 1 && r <= 4096 && r == (int)r && alpha > 0 && dropout >= 0 && dropout < 1,
                    LOOM_ERR_FORMAT, done, "%s: r %g, lora_alpha %g, lora_dropout %g out of range", adapter_dir, r,
                    alpha, dropout);
    const loom_lora_config lc = {.r = (int)r, .alpha = alpha, .dropout = dropout, .targets = targets, .rslora = rslora != 0};
    LOOM_CALL_GOTO(st, loom_model_init_lora_layout(&mc, &lc, &lay), done);
    const int64_t n = loom_model_buffer_size(lay);
    params = calloc((size_t)(n ? n : 1), sizeof(float));
    LOOM_CHECK_GOTO(st, params != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    for (int i = 0; i < loom_model_num_param_infos(lay); i++) {
        const loom_param_info *p = loom_model_param_info(lay, i);
        char key[192];
        LOOM_CHECK_GOTO(st, peft_key(mc.family, p->name, key, sizeof key), LOOM_ERR_INTERNAL, done, "no PEFT name for %s",
                        p->name);
        const loom_st_tensor *t = loom_st_file_find(sf, key);
        if (!t) continue; /* a module PEFT did not adapt: zero */
        LOOM_CHECK_GOTO(st, t->ndim == 2 && t->shape[0] == p->shape[0] && t->shape[1] == p->shape[1], LOOM_ERR_FORMAT,
                        done, "%s: %s has shape [%lld, %lld], the model's module needs [%lld, %lld] (r %d)", path, key,
                        (long long)(t->ndim > 0 ? t->shape[0] : 0), (long long)(t->ndim > 1 ? t->shape[1] : 0),
                        (long long)p->shape[0], (long long)p->shape[1], lc.r);
        LOOM_CALL_GOTO(st, loom_st_tensor_read_f32(t, params + p->offset, p->numel), done);
    }
    char spec[256];
    loom_lora_config_format(&lc, spec, sizeof spec);
    loom_strbuf_printf(&extra, ",\"source\":");
    loom_json_write_string(&extra, adapter_dir);
    loom_strbuf_printf(&extra, ",\"lora\":{\"spec\":");
    loom_json_write_string(&extra, spec);
    loom_strbuf_printf(&extra, ",\"base\":");
    loom_json_write_string(&extra, realpath(from, abs_base) ? abs_base : from);
    loom_strbuf_printf(&extra, ",\"base_seed\":0}");
    const loom_json *tok = loom_json_get(loom_run_ckpt_meta(bc), "tokenizer"), *tmpl = loom_json_get(loom_run_ckpt_meta(bc), "chat_template");
    if (tok && tok->type == LOOM_JSON_STRING) {
        loom_strbuf_printf(&extra, ",\"tokenizer\":");
        loom_json_write_string(&extra, tok->string);
    }
    if (tmpl && tmpl->type == LOOM_JSON_STRING) {
        loom_strbuf_printf(&extra, ",\"chat_template\":");
        loom_json_write_string(&extra, tmpl->string);
    }
    LOOM_CHECK_GOTO(st, !extra.failed, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CALL_GOTO(st, loom_checkpoint_save_weights(out_dir, lay, params, "peft-import", extra.buf, 0), done);
    LOOM_INFO("PEFT adapters %s (LoRA %s) over %s: %s/checkpoint.bin", adapter_dir, spec, from, out_dir);
done:
    loom_strbuf_free(&extra);
    free(params);
    loom_model_free(&lay);
    loom_run_ckpt_close(&bc);
    loom_st_file_close(&sf);
    loom_json_free(&cj);
    return st;
}
