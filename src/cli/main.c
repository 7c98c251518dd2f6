/* loom: the command-line front end. Subcommands live in cmd_*.c; the library never exits, main does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/log.h"
#include "loom/status.h"
#include "loom/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "loom %s: train, fine-tune and serve GPT-family language models on the CPU\n\n"
            "usage: loom <command> [options]   (loom <command> --help for its options)\n\n"
            "commands:\n"
            "  train        train a model (no arguments: the demo model on the default corpus)\n"
            "  bench        benchmarks: `bench peak` (the GEMM peaks), `bench cluster` (what `plan` predicts from),\n"
            "               `bench decode` (the serving kernels)\n"
            "  ckpt         inspect a checkpoint: `ckpt info DIR|FILE`\n"
            "  generate     sample text from a checkpoint (KV cache, temperature, top-k, top-p)\n"
            "  serve        an OpenAI-compatible HTTP server (continuous batching, paged KV cache, streaming)\n"
            "  tokenizer    encode, decode, train a tokenizer\n"
            "  data         prepare token shards from text\n"
            "  export       write a checkpoint as Hugging Face safetensors, or GGUF for llama.cpp\n"
            "  import       read Hugging Face safetensors into a checkpoint\n"
            "  merge        fold a LoRA run's adapters into its base: a plain checkpoint\n"
            "  plot         draw the loss and throughput of a metrics log\n"
            "  launch       run a command on N MPI ranks (mpirun with the right flags); with --max-restarts,\n"
            "               supervised: failed, dead or hung ranks stop the job, which restarts from a checkpoint\n"
            "  events       a run's incidents and its effective training time ratio (ETTR)\n"
            "  plan         predict a run before it runs: `plan --memory` (peak memory per rank by category), `plan --time`\n"
            "               (step time by category), `plan --auto` (the fastest layout that fits)\n\n"
            "options: --version, --help, -v/--verbose (debug logging), -q/--quiet (errors only)\n",
            LOOM_VERSION);
}

int loom_cli_fail(const char *cmd) {
    const char *trace = getenv("LOOM_TRACE");
    /* under an MPI launcher every rank's error reaches the same terminal: say whose it is */
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (!rank) rank = getenv("PMIX_RANK");
    if (!rank) rank = getenv("PMI_RANK");
    char who[48] = "";
    if (rank) snprintf(who, sizeof who, "[rank %s] ", rank);
    if (trace && trace[0] == '1') fprintf(stderr, "%sloom %s: error: %s", who, cmd, loom_error_trace_text());
    else fprintf(stderr, "%sloom %s: error: %s\n", who, cmd, loom_error_message());
    return 1;
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--version")) {
            printf("loom %s\n", LOOM_VERSION);
            printf("pre-tokenizer (gpt2, bpe): character classes of %s\n", loom_tokenizer_unicode_version());
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) {
            loom_log_set_level(LOOM_LOG_DEBUG);
        } else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) {
            loom_log_set_level(LOOM_LOG_ERROR);
        } else {
            fprintf(stderr, "loom: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (!strcmp(cmd, "train")) return loom_cmd_train(sub_argc, sub_argv);
    if (!strcmp(cmd, "plan")) return loom_cmd_plan(sub_argc, sub_argv);
    if (!strcmp(cmd, "bench")) return loom_cmd_bench(sub_argc, sub_argv);
    if (!strcmp(cmd, "ckpt")) return loom_cmd_ckpt(sub_argc, sub_argv);
    if (!strcmp(cmd, "generate")) return loom_cmd_generate(sub_argc, sub_argv);
    if (!strcmp(cmd, "serve")) return loom_cmd_serve(sub_argc, sub_argv);
    if (!strcmp(cmd, "tokenizer")) return loom_cmd_tokenizer(sub_argc, sub_argv);
    if (!strcmp(cmd, "data")) return loom_cmd_data(sub_argc, sub_argv);
    if (!strcmp(cmd, "export")) return loom_cmd_export(sub_argc, sub_argv);
    if (!strcmp(cmd, "import")) return loom_cmd_import(sub_argc, sub_argv);
    if (!strcmp(cmd, "merge")) return loom_cmd_merge(sub_argc, sub_argv);
    if (!strcmp(cmd, "plot")) return loom_cmd_plot(sub_argc, sub_argv);
    if (!strcmp(cmd, "launch")) return loom_cmd_launch(sub_argc, sub_argv);
    if (!strcmp(cmd, "events")) return loom_cmd_events(sub_argc, sub_argv);
    if (!strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "loom: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
