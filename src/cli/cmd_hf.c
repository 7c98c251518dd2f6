/* loom export / loom import: Hugging Face safetensors + config.json <-> loom checkpoints (loom/hf.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/gguf.h"
#include "loom/hf.h"
#include "loom/log.h"
#include "loom/run.h"

static void export_help(FILE *f) {
    fprintf(f,
            "usage: loom export --ckpt DIR|FILE --format hf --out DIR [--dtype f32|bf16|f16] [--max-shard-size SIZE]\n"
            "       loom export --ckpt DIR|FILE --format gguf --out FILE.gguf [--dtype f32|bf16|f16] [--tokenizer T]\n"
            "                   [--name NAME]\n"
            "       loom export --ckpt LORA_RUN --format peft --out DIR\n\n"
            "hf: writes a loom checkpoint as a Hugging Face model: DIR/config.json and DIR/model.safetensors in\n"
            "transformers' names (GPT2LMHeadModel for gpt2, LlamaForCausalLM for llama).\n"
            "gguf: one GGUF file that llama.cpp runs (its gpt2 or llama architecture), with the tokenizer.\n"
            "peft: a LoRA run's adapters as Hugging Face PEFT saves them: DIR/adapter_config.json and\n"
            "DIR/adapter_model.safetensors (fp32; GPT-2's c_attn/c_proj/c_fc with fan_in_fan_out, LLaMA's q/k/v/o_proj\n"
            "and gate/up/down_proj), for PeftModel.from_pretrained over the exported base.\n\n"
            "  --ckpt DIR|FILE        run directory holding checkpoint.bin, or the file\n"
            "  --format hf|gguf|peft  default hf\n"
            "  --out DIR|FILE         output directory (created), or the .gguf file\n"
            "  --dtype f32|bf16|f16   tensor type on disk (default f32; bf16/f16 round to nearest even; gguf:\n"
            "                         the matrices, norms and biases stay f32)\n"
            "  --max-shard-size SIZE  hf: split into model-0000i-of-0000n.safetensors + model.safetensors.index.json\n"
            "                         when larger (bytes, or with a unit: 500MB, 5GB, 2GiB); default: one file\n"
            "  --tokenizer T          gguf: the tokenizer to embed (default: the one the checkpoint records)\n"
            "  --name NAME            gguf: general.name (default loom)\n");
}

static void import_help(FILE *f) {
    fprintf(f,
            "usage: loom import --format hf SRC_DIR --out DIR [--seed S]\n"
            "       loom import --format peft ADAPTER_DIR --base CKPT_OR_HF_DIR --out DIR\n\n"
            "Reads a Hugging Face model (SRC_DIR/config.json with model_type gpt2 or llama, and\n"
            "model.safetensors or model.safetensors.index.json + shards; F32, BF16 or F16 tensors) and writes\n"
            "DIR/checkpoint.bin (step 0, zero AdamW state) and DIR/train-config.json.\n\n"
            "peft: Hugging Face PEFT LoRA adapters (adapter_config.json, adapter_model.safetensors) over a base: DIR holds\n"
            "a LoRA checkpoint (generate, serve, merge, export it; modules PEFT left out get zero adapters).\n\n"
            "  --format hf|peft  default hf\n"
            "  --base B      peft: the base model (a loom checkpoint, or a Hugging Face directory, imported to DIR/base-hf)\n"
            "  --out DIR     output run directory (created; an existing checkpoint is moved to checkpoint.prev.bin)\n"
            "  --seed S      data sampler seed of the saved state (default 1337, as loom train)\n\n"
            "Then:  loom generate --ckpt DIR\n"
            "       loom train --config DIR/train-config.json --resume --out DIR --data ... --steps N\n");
}

/* "123", "500MB" (10^6), "2GiB" (2^30), "10kB" ... */
static int parse_size(const char *s, int64_t *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v >= 0)) return 0;
    struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},           {"B", 1},          {"KB", 1e3},     {"kB", 1e3},     {"MB", 1e6},
                 {"GB", 1e9},       {"TB", 1e12},      {"KiB", 1024.0}, {"MiB", 1048576.0},
                 {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].unit) == 0) {
            double b = v * units[i].mult;
            if (b > 9e18) return 0;
            *out = (int64_t)b;
            return 1;
        }
    return 0;
}

/* `loom export --format gguf`: the checkpoint's model on the CPU, its tokenizer, one GGUF file */
static int export_gguf(const char *ckpt, const char *out, const char *tok_name, loom_gguf_options *o) {
    loom_backend_config bc = loom_backend_config_default();
    bc.blas_library = "builtin"; /* no GEMM runs here */
    bc.quiet = 1;
    loom_cli_ckpt c;
    int rc = loom_cli_ckpt_open("export", ckpt, LOOM_PRECISION_FP32, &bc, tok_name, &c);
    if (!rc && loom_gguf_write(c.model, c.tok, out, o)) rc = loom_cli_fail("export");
    if (!rc)
        LOOM_INFO("exported %s to %s (GGUF, %s, tokenizer %s)", ckpt, out,
                  o->dtype == LOOM_GGUF_F32 ? "f32" : o->dtype == LOOM_GGUF_F16 ? "f16" : "bf16", c.tok_name);
    loom_cli_ckpt_close(&c);
    return rc;
}

int loom_cmd_export(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *format = "hf", *tok_name = NULL;
    loom_gguf_options go = loom_gguf_options_default();
    loom_hf_export_options o = loom_hf_export_options_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            export_help(stdout);
            return 0;
        }
        int takes = !strcmp(a, "--ckpt") || !strcmp(a, "--out") || !strcmp(a, "--format") || !strcmp(a, "--dtype") ||
                    !strcmp(a, "--max-shard-size") || !strcmp(a, "--tokenizer") || !strcmp(a, "--name");
        if (!takes) {
            fprintf(stderr, "loom export: unknown argument '%s' (see loom export --help)\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loom export: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--format")) format = v;
        else if (!strcmp(a, "--tokenizer")) tok_name = v;
        else if (!strcmp(a, "--name")) go.name = v;
        else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32") || !strcmp(v, "float32")) o.dtype = LOOM_ST_F32, go.dtype = LOOM_GGUF_F32;
            else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16")) o.dtype = LOOM_ST_BF16, go.dtype = LOOM_GGUF_BF16;
            else if (!strcmp(v, "f16") || !strcmp(v, "float16")) o.dtype = LOOM_ST_F16, go.dtype = LOOM_GGUF_F16;
            else {
                fprintf(stderr, "loom export: --dtype expects f32, bf16 or f16, got '%s'\n", v);
                return 2;
            }
        } else if (!parse_size(v, &o.max_shard_bytes)) {
            fprintf(stderr, "loom export: --max-shard-size expects bytes (e.g. 1000000, 500MB, 2GiB), got '%s'\n", v);
            return 2;
        }
    }
    if (strcmp(format, "hf") != 0 && strcmp(format, "gguf") != 0 && strcmp(format, "peft") != 0) {
        fprintf(stderr, "loom export: --format expects hf, gguf or peft, got '%s'\n", format);
        return 2;
    }
    if (!ckpt || !out) {
        fprintf(stderr, "loom export: --ckpt and --out are required (see loom export --help)\n");
        return 2;
    }
    if (!strcmp(format, "gguf")) return export_gguf(ckpt, out, tok_name, &go);
    if (!strcmp(format, "peft")) return loom_peft_export(ckpt, out) != LOOM_OK ? loom_cli_fail("export") : 0;
    if (loom_hf_export(ckpt, out, &o) != LOOM_OK) return loom_cli_fail("export");
    LOOM_INFO("exported %s to %s (%s)", ckpt, out, loom_st_dtype_name(o.dtype));
    return 0;
}

int loom_cmd_import(int argc, char **argv) {
    const char *src = NULL, *out = NULL, *format = "hf", *base = NULL;
    loom_hf_import_options o = loom_hf_import_options_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            import_help(stdout);
            return 0;
        }
        if (!strcmp(a, "--out") || !strcmp(a, "--format") || !strcmp(a, "--seed") || !strcmp(a, "--base")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loom import: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--format")) format = v;
            else if (!strcmp(a, "--base")) base = v;
            else {
                char *end = NULL;
                errno = 0;
                unsigned long long s = strtoull(v, &end, 10);
                if (end == v || *end || errno || v[0] == '-') {
                    fprintf(stderr, "loom import: --seed expects a non-negative integer, got '%s'\n", v);
                    return 2;
                }
                o.seed = (uint64_t)s;
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "loom import: unknown option '%s' (see loom import --help)\n", a);
            return 2;
        } else if (src) {
            fprintf(stderr, "loom import: one source directory, got '%s' and '%s'\n", src, a);
            return 2;
        } else {
            src = a;
        }
    }
    if (strcmp(format, "hf") != 0 && strcmp(format, "peft") != 0) {
        fprintf(stderr, "loom import: --format expects hf or peft, got '%s'\n", format);
        return 2;
    }
    if (!strcmp(format, "peft")) {
        if (!src || !out || !base) {
            fprintf(stderr, "loom import: peft needs the adapter directory, --base and --out (see loom import --help)\n");
            return 2;
        }
        return loom_peft_import(src, base, out) != LOOM_OK ? loom_cli_fail("import") : 0;
    }
    if (!src || !out) {
        fprintf(stderr, "loom import: a source directory and --out are required (see loom import --help)\n");
        return 2;
    }
    if (loom_hf_import(src, out, &o) != LOOM_OK) return loom_cli_fail("import");
    LOOM_INFO("imported %s into %s/checkpoint.bin", src, out);
    return 0;
}

/* `loom merge`: a LoRA run's adapters folded into its base, written as a plain checkpoint */
int loom_cmd_merge(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: loom merge --ckpt RUN_DIR --out DIR\n"
                   "Folds a LoRA run's adapters into its frozen base (W += alpha/r * B A on each adapted module's\n"
                   "rows, in double, rounded once) and writes DIR/checkpoint.bin, a plain checkpoint: generate, serve,\n"
                   "export and train it as any other. The base is the one the run's checkpoint names.\n");
            return 0;
        }
        if ((strcmp(a, "--ckpt") && strcmp(a, "--out")) || i + 1 >= argc) {
            fprintf(stderr, "loom merge: %s (usage: loom merge --ckpt RUN_DIR --out DIR)\n",
                    i + 1 >= argc && (!strcmp(a, "--ckpt") || !strcmp(a, "--out")) ? "a flag needs a value" : "unknown argument");
            return 2;
        }
        if (!strcmp(a, "--ckpt")) ckpt = argv[++i];
        else out = argv[++i];
    }
    if (!ckpt || !out) {
        fprintf(stderr, "loom merge: --ckpt and --out are required\n");
        return 2;
    }
    loom_backend_config bc = loom_backend_config_default();
    bc.quiet = 1;
    loom_backend *be = NULL;
    loom_comm *comm = NULL;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL, *plain = NULL;
    loom_json *meta = NULL;
    float *w = NULL;
    loom_strbuf extra;
    loom_strbuf_init(&extra);
    int rc = 1;
    if (loom_backend_init(&bc, &be) || loom_comm_init_self(&comm) ||
        loom_checkpoint_load_model(ckpt, LOOM_PRECISION_FP32, be, comm, &mem, &m, &meta)) {
        rc = loom_cli_fail("merge");
        goto done;
    }
    const loom_lora_config *lora = loom_model_lora(m);
    if (!lora) {
        fprintf(stderr, "loom merge: %s holds no LoRA adapters (train with --lora): nothing to merge\n", ckpt);
        rc = 1;
        goto done;
    }
    w = malloc((size_t)loom_model_weights_size(m) * sizeof(float));
    char spec[256];
    loom_lora_config_format(lora, spec, sizeof spec);
    loom_strbuf_printf(&extra, ",\"source\":");
    loom_json_write_string(&extra, ckpt);
    loom_strbuf_printf(&extra, ",\"merged_lora\":");
    loom_json_write_string(&extra, spec);
    const char *const keep[] = {"tokenizer", "chat_template"}; /* what generation and serving read */
    for (int i = 0; i < 2; i++) {
        const loom_json *v = loom_json_get(meta, keep[i]);
        if (!v || v->type != LOOM_JSON_STRING) continue;
        loom_strbuf_printf(&extra, ",\"%s\":", keep[i]);
        loom_json_write_string(&extra, v->string);
    }
    if (!w || extra.failed || loom_model_lora_merged(m, w) ||
        loom_model_init_layout(loom_model_get_config(m), NULL, 1, 0, &plain) ||
        loom_checkpoint_save_weights(out, plain, w, "lora-merge", extra.buf, 0)) {
        rc = w && !extra.failed ? loom_cli_fail("merge") : (fprintf(stderr, "loom merge: out of memory\n"), 1);
        goto done;
    }
    printf("merged %s (LoRA %s) into %s/checkpoint.bin\n", ckpt, spec, out);
    rc = 0;
done:
    free(w);
    loom_strbuf_free(&extra);
    loom_json_free(&meta);
    loom_model_free(&plain);
    loom_model_free(&m);
    loom_comm_free(&comm);
    loom_backend_free(&be);
    return rc;
}
