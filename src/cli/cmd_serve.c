/* loom serve: a checkpoint behind OpenAI's HTTP API, many requests batched together (include/loom/serve.h). */
#define _DEFAULT_SOURCE /* realpath */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/ckpt.h"
#include "loom/log.h"
#include "loom/serve.h"

static void serve_help(void) {
    printf("usage: loom serve --ckpt DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY | --api-key-file F]\n"
           "                  [--threads N] [--kv-memory BYTES] [--kv-dtype f32|bf16] [--kv-block 16] [--max-seqs 64]\n"
           "                  [--max-batch-tokens 512] [--max-queue 1024] [--chat-template plain|chatml|llama3]\n"
           "                  [--precision fp32|bf16] [--tokenizer T] [--model-name NAME] [--no-prefix-cache]\n"
           "                  [--max-body BYTES] [--timeout SECONDS] [--device cpu|cuda] [--lora NAME=RUN_DIR]...\n"
           "                  [--batch-invariant]\n"
           "Serves the model in DIR/checkpoint.bin with OpenAI's API: POST /v1/completions and\n"
           "/v1/chat/completions (stream: true for Server-Sent Events), GET /v1/models, /health and /metrics\n"
           "(Prometheus). Requests are batched continuously: each step runs one forward over every running\n"
           "sequence (decodes, and prefill chunks up to --max-batch-tokens rows). Keys and values live in a paged\n"
           "pool of --kv-memory bytes (K, M, G suffixes; default: a quarter of the context for every sequence\n"
           "slot, at least two contexts, at most a quarter of the available memory) in blocks of --kv-block\n"
           "positions; prompts sharing a prefix share its blocks. --kv-dtype bf16 stores them in bf16: twice the\n"
           "positions in the same memory (attention reads them back into fp32). --port 0 picks a free port; the\n"
           "address is printed to stderr once listening. SIGINT or SIGTERM stops the server. --precision bf16\n"
           "holds the weights in bf16 only on the CPU (norms and biases stay fp32) and multiplies in bf16.\n"
           "--batch-invariant: a request's tokens do not depend on what it is batched with (every row's products\n"
           "and attention in one fixed order, as loom generate --batch-invariant: its text to the bit); prompts\n"
           "run slower (GPT-2 124M here: 1.3-1.4x at 128 tokens, 2.5-2.8x at 512), decoding as fast. CPU only.\n"
           "--lora NAME=RUN_DIR (repeatable) serves a LoRA run's adapters over the model as model NAME: a request's\n"
           "\"model\" chooses the model itself (its name or \"base\") or an adapter set; requests for different\n"
           "ones share every step (the frozen products batched, each adds its own adapters).\n"
           "  curl -s localhost:8080/v1/completions -H 'Content-Type: application/json' \\\n"
           "       -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 32}'\n");
}

static int parse_bytes(const char *v, int64_t *out) {
    char *end = NULL;
    double x = strtod(v, &end);
    if (end == v || x <= 0) return 0;
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'B' || *end == 'i') end++;
    if (*end) return 0;
    *out = (int64_t)(x * mul);
    return 1;
}

static int64_t available_memory(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    if (f) fclose(f);
    return (int64_t)kb * 1024;
}

static char *read_key_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = 0;
    return n ? strdup(buf) : NULL;
}

/* --lora NAME=DIR: a LoRA run's adapters over the served model (its config; a warning when its base differs) */
static loom_status add_adapters(loom_model *m, const char *served, const char *name, const char *dir) {
    loom_run_ckpt *c = NULL;
    float *params = NULL;
    loom_status st;
    loom_lora_config lc;
    int64_t n = 0;
    LOOM_CALL_GOTO(st, loom_run_ckpt_open(dir, &c), done);
    LOOM_CALL_GOTO(st, loom_checkpoint_read_adapters(c, &lc, &params, &n), done);
    const loom_json *meta = loom_run_ckpt_meta(c), *base = loom_json_get(loom_json_get(meta, "lora"), "base");
    loom_model_config ac;
    LOOM_CALL_GOTO(st, loom_model_config_from_json(loom_json_get(meta, "model"), &ac), done);
    const loom_model_config *mc = loom_model_get_config(m);
    LOOM_CHECK_GOTO(st, ac.family == mc->family && ac.n_layer == mc->n_layer && ac.d_model == mc->d_model &&
                            ac.n_head == mc->n_head && ac.n_kv_head == mc->n_kv_head && ac.d_ff == mc->d_ff &&
                            ac.vocab_size == mc->vocab_size, LOOM_ERR_MISMATCH, done,
                    "--lora %s=%s: its adapters were trained on another model (%s, %lld layers, width %lld)", name, dir,
                    loom_family_name(ac.family), (long long)ac.n_layer, (long long)ac.d_model);
    char a[PATH_MAX], b[PATH_MAX];
    if (base && base->type == LOOM_JSON_STRING && (!realpath(served, a) || !realpath(base->string, b) || strcmp(a, b)))
        LOOM_WARN("--lora %s=%s: trained on the base '%s', served over '%s'", name, dir, base->string, served);
    int index;
    LOOM_CALL_GOTO(st, loom_model_add_adapter_set(m, &lc, params, n, &index), done);
    char spec[256];
    loom_lora_config_format(&lc, spec, sizeof spec);
    fprintf(stderr, "loom serve: adapters '%s' (LoRA %s) from %s\n", name, spec, loom_run_ckpt_path(c));
done:
    free(params);
    loom_run_ckpt_close(&c);
    return st;
}

int loom_cmd_serve(int argc, char **argv) {
    const char *ckpt = NULL, *tok_name = NULL, *device = "cpu", *key_file = NULL, *model_name = NULL;
    loom_server_config sc = {.host = "127.0.0.1", .port = 8080, .chat_template = NULL, .max_body = 1 << 20,
                             .timeout_s = 30};
    loom_engine_config ec = loom_engine_config_default();
    int64_t kv_memory = 0;
    int threads = 0, n_lora = 0, batch_invariant = 0;
    const char *lora_name[LOOM_MAX_ADAPTER_SETS], *lora_dir[LOOM_MAX_ADAPTER_SETS];
    char lora_buf[LOOM_MAX_ADAPTER_SETS][128];
    loom_precision precision = LOOM_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            serve_help();
            return 0;
        }
        if (!strcmp(a, "--no-prefix-cache")) {
            ec.prefix_cache = 0;
            continue;
        }
        if (!strcmp(a, "--batch-invariant")) {
            batch_invariant = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loom serve: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        long long n = 0;
        if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--host")) sc.host = v;
        else if (!strcmp(a, "--api-key")) sc.api_key = v;
        else if (!strcmp(a, "--api-key-file")) key_file = v;
        else if (!strcmp(a, "--tokenizer")) tok_name = v;
        else if (!strcmp(a, "--model-name")) model_name = v;
        else if (!strcmp(a, "--chat-template")) sc.chat_template = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--lora")) { /* NAME=DIR */
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || !eq[1] || (size_t)(eq - v) >= sizeof lora_buf[0] || n_lora == LOOM_MAX_ADAPTER_SETS) {
                fprintf(stderr, "loom serve: --lora expects NAME=RUN_DIR (a LoRA run's checkpoint; at most %d), got '%s'\n",
                        LOOM_MAX_ADAPTER_SETS, v);
                return 2;
            }
            snprintf(lora_buf[n_lora], sizeof lora_buf[n_lora], "%.*s", (int)(eq - v), v);
            lora_name[n_lora] = lora_buf[n_lora];
            lora_dir[n_lora++] = eq + 1;
        }
        else if (!strcmp(a, "--kv-dtype")) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                fprintf(stderr, "loom serve: --kv-dtype is f32 or bf16, not '%s'\n", v);
                return 2;
            }
            ec.kv_bf16 = !strcmp(v, "bf16");
        }
        else if (!strcmp(a, "--kv-memory") || !strcmp(a, "--max-body")) {
            int64_t b;
            if (!parse_bytes(v, &b)) {
                fprintf(stderr, "loom serve: %s expects a size in bytes (e.g. 2G), got '%s'\n", a, v);
                return 2;
            }
            if (!strcmp(a, "--kv-memory")) kv_memory = b;
            else sc.max_body = (size_t)b;
        } else if (!strcmp(a, "--precision")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) {
                fprintf(stderr, "loom serve: --precision is fp32 or bf16, not '%s'\n", v);
                return 2;
            }
            precision = strcmp(v, "bf16") ? LOOM_PRECISION_FP32 : LOOM_PRECISION_BF16;
        } else {
            n = strtoll(v, &end, 10);
            if (end == v || *end || n < 0 || n > 1000000000) {
                fprintf(stderr, "loom serve: %s expects a non-negative integer, got '%s'\n", a, v);
                return 2;
            }
            if (!strcmp(a, "--port") && n <= 65535) sc.port = (int)n;
            else if (!strcmp(a, "--threads")) threads = (int)n;
            else if (!strcmp(a, "--kv-block") && n >= 1) ec.block_len = n;
            else if (!strcmp(a, "--max-seqs") && n >= 1) ec.max_seqs = n;
            else if (!strcmp(a, "--max-batch-tokens") && n >= 1) ec.max_batch_tokens = n;
            else if (!strcmp(a, "--max-queue") && n >= 1) ec.max_queue = n;
            else if (!strcmp(a, "--timeout") && n >= 1) sc.timeout_s = (int)n;
            else {
                fprintf(stderr, "loom serve: unknown option or value out of range: %s %s (see --help)\n", a, v);
                return 2;
            }
        }
    }
    if (!ckpt) {
        fprintf(stderr, "loom serve: --ckpt DIR is required (see --help)\n");
        return 2;
    }
    char *key = NULL;
    if (key_file) {
        if (sc.api_key) {
            fprintf(stderr, "loom serve: give --api-key or --api-key-file, not both\n");
            return 2;
        }
        if (!(key = read_key_file(key_file))) {
            fprintf(stderr, "loom serve: cannot read an API key from %s\n", key_file);
            return 2;
        }
        sc.api_key = key;
    }
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = threads;
    bc.quiet = 1;
    bc.device = device;
    bc.batch_invariant = batch_invariant;
    loom_cli_ckpt c;
    loom_engine *e = NULL;
    char *dir = strdup(ckpt);
    int rc = loom_cli_ckpt_open("serve", ckpt, precision, &bc, tok_name, &c);
    if (rc) goto out;
    rc = 1;
    const loom_json *tmpl = loom_json_get(c.meta, "chat_template");
    if (!sc.chat_template) sc.chat_template = tmpl && tmpl->type == LOOM_JSON_STRING ? tmpl->string : "plain";
    if (!model_name) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') dir[--n] = 0;
        model_name = basename(dir);
    }
    sc.model_name = model_name;
    for (int i = 0; i < n_lora; i++) {
        int dup = !strcmp(lora_name[i], model_name) || !strcmp(lora_name[i], "base");
        for (int j = 0; j < i; j++) dup |= !strcmp(lora_name[i], lora_name[j]);
        if (dup) {
            fprintf(stderr, "loom serve: --lora name '%s' is taken (the model's name, \"base\", or another adapter's)\n",
                    lora_name[i]);
            goto out;
        }
        if (add_adapters(c.model, ckpt, lora_name[i], lora_dir[i]) != LOOM_OK) {
            rc = loom_cli_fail("serve");
            goto out;
        }
    }
    sc.adapter_names = lora_name;
    sc.n_adapters = n_lora;
    const size_t block_bytes = loom_kv_pool_block_bytes(c.model, ec.block_len, ec.kv_bf16);
    const loom_model_config *mc = loom_model_get_config(c.model);
    if (!kv_memory) { /* every sequence slot a quarter of the context (preemption covers the rest), at least two
                       * whole contexts, at most a quarter of the available memory */
        int64_t positions = ec.max_seqs * mc->max_seq_len / 4;
        if (positions < 2 * mc->max_seq_len) positions = 2 * mc->max_seq_len;
        kv_memory = (positions + ec.block_len - 1) / ec.block_len * (int64_t)block_bytes;
        if (kv_memory > available_memory() / 4) kv_memory = available_memory() / 4;
    }
    ec.kv_blocks = (int64_t)((size_t)kv_memory / block_bytes);
    if (ec.max_batch_tokens < ec.max_seqs) ec.max_batch_tokens = ec.max_seqs; /* every sequence can decode */
    fprintf(stderr, "loom serve: %s (%s), weights %.1f MiB, key/value pool %.1f MiB = %lld blocks of %lld positions in %s (%.1f full "
                    "contexts of %lld), up to %lld sequences and %lld tokens a step, chat template %s\n",
            model_name, mc->family == LOOM_FAMILY_GPT2 ? "gpt2" : "llama", (double)c.mem.current[LOOM_MEM_PARAMS] / 1048576.0,
            (double)ec.kv_blocks * (double)block_bytes / 1048576.0,
            (long long)ec.kv_blocks, (long long)ec.block_len, ec.kv_bf16 ? "bf16" : "f32",
            (double)(ec.kv_blocks * ec.block_len) / (double)mc->max_seq_len, (long long)mc->max_seq_len,
            (long long)ec.max_seqs, (long long)ec.max_batch_tokens, sc.chat_template);
    if (loom_engine_create(c.model, c.tok, &ec, &e) || loom_serve_http(e, c.tok, &sc)) {
        rc = loom_cli_fail("serve");
        goto out;
    }
    rc = 0;
out:
    loom_engine_free(&e);
    loom_cli_ckpt_close(&c);
    free(dir);
    free(key);
    return rc;
}
