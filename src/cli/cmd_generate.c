/* loom generate: text from a checkpoint, streamed to stdout as it is sampled (KV cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/generate.h"
#include "loom/log.h"
#include "loom/run.h"

static void generate_help(void) {
    printf("usage: loom generate --ckpt DIR [--prompt TEXT] [--max-tokens N] [--temperature X] [--top-k K]\n"
           "                     [--top-p P] [--seed S] [--tokenizer gpt2|byte|FILE] [--threads N] [--no-stop]\n"
           "                     [--device cpu|cuda] [--precision fp32|bf16] [--kv-dtype f32|bf16] [--batch-invariant]\n"
           "Samples from the model in DIR/checkpoint.bin with a KV cache and streams the text to stdout; the\n"
           "tokens/s go to stderr. Defaults: --max-tokens 200 --temperature 0.8 --top-k 0 (off) --top-p 1 (off)\n"
           "--seed 1337; temperature 0 is greedy. Stops at end-of-text unless --no-stop. The tokenizer is the one\n"
           "the checkpoint was trained with (recorded in it), unless --tokenizer says otherwise. --precision bf16\n"
           "holds the weights in bf16 only on the CPU (norms, biases and GPT-2's position table stay fp32) and\n"
           "multiplies in bf16 with fp32 accumulation, as bf16 training does: half the bytes each token reads.\n"
           "--kv-dtype bf16 stores the cached keys and values in bf16, as loom serve --kv-dtype bf16 does (the\n"
           "same text as the server's, one sequence alone). --batch-invariant runs the products and attention as\n"
           "loom serve --batch-invariant does (every row alone in one fixed order): the server's texts to the bit.\n"
           "The last line (stderr) gives the weights' memory.\n");
}

/* The tokenizer the checkpoint records, or the obvious one for its vocabulary. */
static const char *ckpt_tokenizer(const loom_json *meta, const loom_model_config *mc) {
    const loom_json *t = loom_json_get(meta, "tokenizer");
    if (t && t->type == LOOM_JSON_STRING && t->string[0]) return t->string;
    if (mc->vocab_size == 256) return "byte";
    if (mc->vocab_size == 50257) return "gpt2";
    return NULL;
}

int loom_cli_ckpt_open(const char *cmd, const char *ckpt, loom_precision precision, const loom_backend_config *bc,
                       const char *tok_name, loom_cli_ckpt *c) {
    memset(c, 0, sizeof *c);
    loom_mem_init(&c->mem);
    if (loom_backend_init(bc, &c->be) || loom_comm_init_self(&c->comm) ||
        loom_checkpoint_load_model(ckpt, precision, c->be, c->comm, &c->mem, &c->model, &c->meta))
        return loom_cli_fail(cmd);
    const loom_model_config *mc = loom_model_get_config(c->model);
    c->tok_name = tok_name ? tok_name : ckpt_tokenizer(c->meta, mc);
    if (!c->tok_name) {
        fprintf(stderr, "loom %s: error: the checkpoint does not record its tokenizer (vocabulary %lld); "
                        "name it with --tokenizer\n", cmd, (long long)mc->vocab_size);
        return 1;
    }
    if (loom_tokenizer_load(c->tok_name, &c->tok)) return loom_cli_fail(cmd);
    if (loom_tokenizer_vocab_size(c->tok) > mc->vocab_size) {
        fprintf(stderr, "loom %s: error: tokenizer %s has %lld tokens, the model only %lld\n", cmd, c->tok_name,
                (long long)loom_tokenizer_vocab_size(c->tok), (long long)mc->vocab_size);
        return 1;
    }
    return 0;
}

void loom_cli_ckpt_close(loom_cli_ckpt *c) {
    loom_tokenizer_free(&c->tok);
    loom_json_free(&c->meta);
    loom_model_free(&c->model);
    loom_comm_free(&c->comm);
    loom_backend_free(&c->be);
}

int loom_cmd_generate(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL, *tok_name = NULL;
    loom_sample_config sc = loom_sample_config_default();
    int threads = 0, batch_invariant = 0;
    const char *device = "cpu";
    loom_precision precision = LOOM_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_help();
            return 0;
        }
        if (!strcmp(a, "--no-stop")) {
            sc.stop_at_eot = 0;
            continue;
        }
        if (!strcmp(a, "--batch-invariant")) {
            batch_invariant = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loom generate: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--tokenizer")) tok_name = v;
        else if (!strcmp(a, "--max-tokens")) sc.max_tokens = strtoll(v, &end, 10);
        else if (!strcmp(a, "--temperature")) sc.temperature = strtod(v, &end);
        else if (!strcmp(a, "--top-k")) sc.top_k = strtoll(v, &end, 10);
        else if (!strcmp(a, "--top-p")) sc.top_p = strtod(v, &end);
        else if (!strcmp(a, "--seed")) sc.seed = strtoull(v, &end, 10);
        else if (!strcmp(a, "--threads")) threads = (int)strtol(v, &end, 10);
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--precision")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) {
                fprintf(stderr, "loom generate: --precision is fp32 or bf16, not '%s'\n", v);
                return 2;
            }
            precision = strcmp(v, "bf16") ? LOOM_PRECISION_FP32 : LOOM_PRECISION_BF16;
        } else if (!strcmp(a, "--kv-dtype")) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                fprintf(stderr, "loom generate: --kv-dtype is f32 or bf16, not '%s'\n", v);
                return 2;
            }
            sc.kv_bf16 = !strcmp(v, "bf16");
        } else {
            fprintf(stderr, "loom generate: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (end && (*end || end == v)) {
            fprintf(stderr, "loom generate: %s expects a number, got '%s'\n", a, v);
            return 2;
        }
    }
    if (!ckpt) {
        fprintf(stderr, "loom generate: --ckpt DIR is required (see --help)\n");
        return 2;
    }
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    bc.device = device;
    bc.batch_invariant = batch_invariant;
    loom_cli_ckpt c;
    int32_t *ids = NULL;
    int64_t n = 0;
    int rc = loom_cli_ckpt_open("generate", ckpt, precision, &bc, tok_name, &c);
    if (rc) goto out;
    rc = 1;
    loom_model *m = c.model;
    loom_tokenizer *tok = c.tok;
    if (prompt && prompt[0]) {
        if (loom_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n)) {
            rc = loom_cli_fail("generate");
            goto out;
        }
    }
    if (n == 0) { /* no prompt: start from end-of-text, or a newline */
        free(ids);
        ids = malloc(sizeof(int32_t));
        int32_t eot = loom_tokenizer_eot(tok);
        if (eot < 0) {
            int32_t *nl = NULL;
            int64_t nn = 0;
            if (loom_tokenizer_encode(tok, "\n", 1, &nl, &nn) || nn < 1) {
                free(nl);
                rc = loom_cli_fail("generate");
                goto out;
            }
            eot = nl[0];
            free(nl);
        }
        ids[0] = eot;
        n = 1;
    }
    if (prompt) fputs(prompt, stdout);
    loom_generate_stats gs;
    if (loom_generate(m, tok, ids, n, &sc, stdout, &gs, NULL, NULL)) {
        rc = loom_cli_fail("generate");
        goto out;
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "[loom] %lld tokens in %.2f s (%.1f tokens/s); prompt %lld tokens in %.3f s; weights %.1f MiB%s\n",
            (long long)gs.generated_tokens, gs.decode_seconds,
            gs.decode_seconds > 0 ? (double)gs.generated_tokens / gs.decode_seconds : 0.0, (long long)gs.prompt_tokens,
            gs.prefill_seconds, (double)c.mem.current[LOOM_MEM_PARAMS] / 1048576.0,
            gs.stopped_at_eot ? "; stopped at end-of-text" : gs.context_full ? "; context full" : "");
    rc = 0;
out:
    free(ids);
    loom_cli_ckpt_close(&c);
    return rc;
}
