/* loom data: prepare token shards from text, verify a dataset, decode it back to text. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/data.h"
#include "loom/log.h"

static void data_help(FILE *f) {
    fprintf(f,
            "usage: loom data prepare INPUT... --out DIR [--tokenizer gpt2|byte|char|FILE] [--val-fraction F]\n"
            "                         [--shard-tokens N] [--threads N] [--chunk-bytes N]\n"
            "                         [--format text|jsonl] [--chat-template plain|chatml|llama3]\n"
            "       loom data info DIR                      verify every shard's header and checksum; print a summary\n"
            "       loom data decode DIR [--split train|val] write a split's tokens as text to stdout\n\n"
            "prepare tokenizes text files and directories (walked recursively; regular text files in path order,\n"
            "each file one document, separated by the tokenizer's end-of-text token when it has one) into\n"
            "binary token shards and DIR/dataset.json; `loom train --data DIR` trains on them.\n"
            "  --tokenizer T      gpt2 (default; GPT-2's BPE), byte (ids 0..255), char (one id per distinct\n"
            "                     character of the inputs, vocabulary stored in DIR), or a tokenizer file\n"
            "  --val-fraction F   the last F of the token stream is the validation split (default 0.1;\n"
            "                     the split is positional: training is the first floor(n*(1-F)) tokens)\n"
            "  --shard-tokens N   tokens per shard file at most (default 100000000)\n"
            "  --threads N        tokenizer threads (default: every core)\n"
            "  --chunk-bytes N    text is read and tokenized in chunks of about N bytes (default 1048576);\n"
            "                     the output does not depend on it\n"
            "  --format jsonl     instruction data: each line {\"prompt\": P, \"completion\": C} or {\"messages\":\n"
            "                     [{\"role\": R, \"content\": S}, ...]} (rendered with --chat-template, as\n"
            "                     `loom serve` renders a chat); the loss is on the completion / the assistant's\n"
            "                     turns and each example's closing end-of-text token only (the others' targets are\n"
            "                     masked); examples are packed back to back, windows may span two of them (the\n"
            "                     model attends across the boundary, as in pretraining); the split falls on an\n"
            "                     example boundary; a malformed line stops with an error naming FILE:LINE\n"
            "  --chat-template T  plain (default), chatml or llama3: the template `loom serve` must use too\n"
            "Shard and manifest formats: docs/FORMATS-data.md.\n");
}

static int parse_i64(const char *flag, const char *s, int64_t lo, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo) {
        fprintf(stderr, "loom data: %s expects an integer >= %lld, got '%s'\n", flag, (long long)lo, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int cmd_prepare(int argc, char **argv) {
    loom_data_prepare_config cfg = loom_data_prepare_config_default();
    const char *out = NULL;
    const char **inputs = calloc((size_t)argc, sizeof *inputs);
    int n_inputs = 0;
    if (!inputs) return 1;
    int rc = 2;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        int64_t v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            data_help(stdout);
            rc = 0;
            goto done;
        } else if (a[0] == '-' && a[1] == '-' && !has) {
            fprintf(stderr, "loom data prepare: %s needs a value\n", a);
            goto done;
        } else if (!strcmp(a, "--out")) {
            out = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            cfg.tokenizer = argv[++i];
        } else if (!strcmp(a, "--format")) {
            cfg.format = argv[++i];
        } else if (!strcmp(a, "--chat-template")) {
            cfg.chat_template = argv[++i];
        } else if (!strcmp(a, "--val-fraction")) {
            char *end;
            errno = 0;
            cfg.val_fraction = strtod(argv[++i], &end);
            if (errno || end == argv[i] || *end || !(cfg.val_fraction >= 0 && cfg.val_fraction < 1)) {
                fprintf(stderr, "loom data prepare: --val-fraction expects a number in [0, 1), got '%s'\n", argv[i]);
                goto done;
            }
        } else if (!strcmp(a, "--shard-tokens")) {
            if (!parse_i64(a, argv[++i], 1, &cfg.shard_tokens)) goto done;
        } else if (!strcmp(a, "--threads")) {
            if (!parse_i64(a, argv[++i], 0, &v) || v > 4096) goto done;
            cfg.threads = (int)v;
        } else if (!strcmp(a, "--chunk-bytes")) {
            if (!parse_i64(a, argv[++i], 16, &cfg.chunk_bytes)) goto done;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "loom data prepare: unknown option %s (see loom data --help)\n", a);
            goto done;
        } else {
            inputs[n_inputs++] = a;
        }
    }
    if (!out || n_inputs == 0) {
        fprintf(stderr, "loom data prepare: %s (usage: loom data prepare INPUT... --out DIR)\n",
                !out ? "--out DIR is required" : "no INPUT files or directories given");
        goto done;
    }
    loom_data_prepare_stats s;
    if (loom_data_prepare(inputs, n_inputs, out, &cfg, &s) != LOOM_OK) {
        rc = loom_cli_fail("data prepare");
        goto done;
    }
    printf(strcmp(cfg.format, "jsonl") ? "prepared %s: %lld files (%lld skipped)" : "prepared %s: %lld examples (%lld files skipped), %.1f MB -> %lld train + %lld val tokens (%d + %d shards), "
           "vocabulary %lld, %.2f s (%.1f MB/s)\n",
           out, (long long)s.files, (long long)s.files_skipped, (double)s.bytes / 1e6, (long long)s.tokens[0],
           (long long)s.tokens[1], s.n_shards[0], s.n_shards[1], (long long)s.vocab_size, s.seconds,
           s.seconds > 0 ? (double)s.bytes / 1e6 / s.seconds : 0.0);
    rc = 0;
done:
    free(inputs);
    return rc;
}

static int cmd_info_or_decode(int argc, char **argv, int decode) {
    const char *dir = NULL;
    loom_split split = LOOM_SPLIT_TRAIN;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            data_help(stdout);
            return 0;
        } else if (decode && !strcmp(argv[i], "--split") && i + 1 < argc) {
            const char *s = argv[++i];
            if (strcmp(s, "train") && strcmp(s, "val")) {
                fprintf(stderr, "loom data decode: --split expects train or val, got '%s'\n", s);
                return 2;
            }
            split = strcmp(s, "val") == 0 ? LOOM_SPLIT_VAL : LOOM_SPLIT_TRAIN;
        } else if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "loom data %s: unexpected argument %s (see loom data --help)\n", argv[1], argv[i]);
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (!dir) {
        fprintf(stderr, "loom data %s: which dataset? (usage: loom data %s DIR)\n", argv[1], argv[1]);
        return 2;
    }
    loom_data *d;
    if (loom_data_open(dir, 0, 0.1, 0, &d) != LOOM_OK) return loom_cli_fail(argv[1][0] == 'i' ? "data info" : "data decode");
    int rc = 0;
    if (decode) {
        if (loom_data_write_text(d, split, stdout) != LOOM_OK || fflush(stdout) != 0) rc = loom_cli_fail("data decode");
    } else {
        const char *tok = loom_data_tokenizer(d);
        printf("%s\n", loom_data_describe(d));
        printf("tokenizer %s, vocabulary %lld, end-of-text %d\n", tok ? tok : "unknown",
               (long long)loom_data_vocab_size(d), loom_data_eot(d));
        printf("train %lld tokens, val %lld tokens: headers and checksums ok\n",
               (long long)loom_data_num_tokens(d, LOOM_SPLIT_TRAIN), (long long)loom_data_num_tokens(d, LOOM_SPLIT_VAL));
    }
    loom_data_free(&d);
    return rc;
}

int loom_cmd_data(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        data_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "prepare")) return cmd_prepare(argc, argv);
    if (!strcmp(argv[1], "info")) return cmd_info_or_decode(argc, argv, 0);
    if (!strcmp(argv[1], "decode")) return cmd_info_or_decode(argc, argv, 1);
    fprintf(stderr, "loom data: unknown subcommand '%s' (prepare, info, decode; see loom data --help)\n", argv[1]);
    return 2;
}
