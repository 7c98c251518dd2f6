/* loom serve: a checkpoint behind OpenAI's HTTP API, many requests batched together (include/loom/serve.h). */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/log.h"
#include "loom/serve.h"

static void serve_help(void) {
    printf("usage: loom serve --ckpt DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY | --api-key-file F]\n"
           "                  [--threads N] [--kv-memory BYTES] [--kv-dtype f32|bf16] [--kv-block 16] [--max-seqs 64]\n"
           "                  [--max-batch-tokens 512] [--max-queue 1024] [--chat-template plain|chatml|llama3]\n"
           "                  [--precision fp32|bf16] [--tokenizer T] [--model-name NAME] [--no-prefix-cache]\n"
           "                  [--max-body BYTES] [--timeout SECONDS] [--device cpu|cuda]\n"
           "Serves the model in DIR/checkpoint.bin with OpenAI's API: POST /v1/completions and\n"
           "/v1/chat/completions (stream: true for Server-Sent Events), GET /v1/models, /health and /metrics\n"
           "(Prometheus). Requests are batched continuously: each step runs one forward over every running\n"
           "sequence (decodes, and prefill chunks up to --max-batch-tokens rows). Keys and values live in a paged\n"
           "pool of --kv-memory bytes (K, M, G suffixes; default: a quarter of the context for every sequence\n"
           "slot, at least two contexts, at most a quarter of the available memory) in blocks of --kv-block\n"
           "positions; prompts sharing a prefix share its blocks. --kv-dtype bf16 stores them in bf16: twice the\n"
           "positions in the same memory (attention reads them back into fp32). --port 0 picks a free port; the\n"
           "address is printed to stderr once listening. SIGINT or SIGTERM stops the server.\n"
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

int loom_cmd_serve(int argc, char **argv) {
    const char *ckpt = NULL, *tok_name = NULL, *device = "cpu", *key_file = NULL, *model_name = NULL;
    loom_server_config sc = {.host = "127.0.0.1", .port = 8080, .chat_template = NULL, .max_body = 1 << 20,
                             .timeout_s = 30};
    loom_engine_config ec = loom_engine_config_default();
    int64_t kv_memory = 0;
    int threads = 0;
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
    fprintf(stderr, "loom serve: %s (%s), key/value pool %.1f MiB = %lld blocks of %lld positions in %s (%.1f full "
                    "contexts of %lld), up to %lld sequences and %lld tokens a step, chat template %s\n",
            model_name, mc->family == LOOM_FAMILY_GPT2 ? "gpt2" : "llama", (double)ec.kv_blocks * (double)block_bytes / 1048576.0,
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
