/* loom tokenizer: encode (text on stdin -> ids), decode (ids on stdin -> the exact bytes), train (a BPE or
 * char tokenizer file from text files), info. Input is streamed in 16 MiB pieces (LOOM_TOKENIZER_PARTIAL),
 * so the ids of a long text are exactly those of encoding it in one call. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "loom/log.h"
#include "loom/tokenizer.h"

#define READ_CHUNK (16u << 20)

static void tokenizer_help(FILE *f) {
    fprintf(f,
            "usage: loom tokenizer <command> [options]   (loom tokenizer <command> --help for its options)\n\n"
            "commands:\n"
            "  encode   read text on stdin, print its token ids (space-separated, one line)\n"
            "  decode   read token ids on stdin, write the exact bytes they stand for\n"
            "  train    train a byte-level BPE (or char) tokenizer on text files, write a tokenizer file\n"
            "  info     describe a tokenizer (kind, vocabulary, special tokens)\n\n"
            "tokenizers (--tokenizer T, default gpt2):\n"
            "  gpt2     GPT-2's BPE (encoder.json + vocab.bpe, found in $LOOM_GPT2_DIR, <loom's dir>/share/gpt2,\n"
            "           ~/.cache/loom/gpt2 or /usr/local/share/loom/gpt2; scripts/fetch_gpt2_tokenizer.sh DIR)\n"
            "  byte     ids are the bytes 0..255\n"
            "  FILE     a tokenizer file from `loom tokenizer train` (bpe or char), or a directory holding a\n"
            "           GPT-2 style encoder.json and vocab.bpe\n\n"
            "The byte-level BPE pre-tokenizer (gpt2 and trained bpe) splits text by the letter, number and space\n"
            "classes of %s. A tokenizer built on an older Unicode\n"
            "(an older Node.js, Python or ICU) sees characters assigned since then as 'other' and may split text\n"
            "holding them differently; text without such characters is encoded identically.\n",
            loom_tokenizer_unicode_version());
}

static void encode_help(FILE *f) {
    fprintf(f,
            "usage: loom tokenizer encode [--tokenizer gpt2|byte|FILE] [--no-special] [--stats] [--input FILE]\n\n"
            "Reads text on stdin (or FILE) and prints its token ids on one line, separated by spaces.\n"
            "  --tokenizer T   gpt2 (default), byte, or a tokenizer file (see `loom tokenizer --help`)\n"
            "  --no-special    encode special tokens such as <|endoftext|> as plain text (by default their\n"
            "                  occurrences in the text become their ids, e.g. 50256 for GPT-2)\n"
            "  --stats         print bytes, tokens, load and encode time and encode speed (MB/s) on stderr\n"
            "  --input FILE    read FILE instead of stdin\n"
            "Any bytes are accepted; invalid UTF-8 is encoded byte for byte and decodes back exactly.\n");
}

static void decode_help(FILE *f) {
    fprintf(f,
            "usage: loom tokenizer decode [--tokenizer gpt2|byte|FILE] [--input FILE]\n\n"
            "Reads token ids (decimal, separated by white space) on stdin and writes the bytes they stand for,\n"
            "exactly, to stdout. An id outside the vocabulary is an error.\n");
}

static void train_help(FILE *f) {
    fprintf(f,
            "usage: loom tokenizer train INPUT... --out FILE [--kind bpe|char] [--vocab-size N]\n"
            "                            [--special TOKEN]... [--no-special]\n\n"
            "Trains a tokenizer on the text files INPUT (each a separate text) and writes it to FILE, which\n"
            "--tokenizer FILE then loads (format: docs/FORMATS.md).\n"
            "  --kind bpe       byte-level BPE (default): GPT-2's pre-tokenization, the 256 byte tokens, then\n"
            "                   merges of the most frequent pair (ties: smallest ids), then the special tokens\n"
            "  --kind char      one id per distinct character (UTF-8; an invalid byte is its own character),\n"
            "                   sorted by their bytes, then the special tokens\n"
            "  --vocab-size N   bpe: the whole vocabulary, bytes + merges + special tokens (default 4096); fewer\n"
            "                   when the corpus runs out of pairs\n"
            "  --special TOKEN  a special token (repeatable); default <|endoftext|> for bpe, none for char\n"
            "  --no-special     no special tokens\n");
}

static void info_help(FILE *f) {
    fprintf(f, "usage: loom tokenizer info [--tokenizer gpt2|byte|FILE]\n\n"
               "Prints the tokenizer's kind, vocabulary size, end-of-text id and special tokens.\n");
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

/* ---- output of ids ---- */

typedef struct {
    char buf[1 << 16];
    size_t n;
    int first;
    int failed;
} id_writer;

static void idw_flush(id_writer *w) {
    if (w->n && fwrite(w->buf, 1, w->n, stdout) != w->n) w->failed = 1;
    w->n = 0;
}

static void idw_put(id_writer *w, int32_t id) {
    if (w->n + 16 > sizeof w->buf) idw_flush(w);
    if (!w->first) w->buf[w->n++] = ' ';
    w->first = 0;
    char tmp[12];
    int k = 0;
    uint32_t v = (uint32_t)id;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (k) w->buf[w->n++] = tmp[--k];
}

static int load_tok(const char *name, loom_tokenizer **tok, const char *cmd, double *load_s) {
    double t0 = loom_now_s();
    if (loom_tokenizer_load(name, tok) != LOOM_OK) return loom_cli_fail(cmd);
    if (load_s) *load_s = loom_now_s() - t0;
    return 0;
}

static FILE *open_input(const char *path, const char *cmd) {
    if (!path) return stdin;
    FILE *f = fopen(path, "rb");
    if (!f) fprintf(stderr, "loom %s: error: %s: cannot open: %s\n", cmd, path, strerror(errno));
    return f;
}

static int cmd_encode(int argc, char **argv) {
    const char *name = "gpt2", *input = NULL;
    unsigned flags = 0;
    int stats = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            encode_help(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) name = argv[++i];
        else if (!strcmp(a, "--input") && i + 1 < argc) input = argv[++i];
        else if (!strcmp(a, "--no-special")) flags |= LOOM_TOKENIZER_NO_SPECIAL;
        else if (!strcmp(a, "--stats")) stats = 1;
        else {
            fprintf(stderr, "loom tokenizer encode: unknown or incomplete option '%s'\n", a);
            encode_help(stderr);
            return 2;
        }
    }
    loom_tokenizer *tok = NULL;
    double load_s = 0, enc_s = 0;
    int rc = load_tok(name, &tok, "tokenizer encode", &load_s);
    if (rc) return rc;
    FILE *in = open_input(input, "tokenizer encode");
    if (!in) {
        loom_tokenizer_free(&tok);
        return 1;
    }
    size_t cap = READ_CHUNK, have = 0;
    char *buf = malloc(cap);
    id_writer *w = calloc(1, sizeof *w);
    int64_t total_bytes = 0, total_ids = 0;
    if (!buf || !w) {
        fprintf(stderr, "loom tokenizer encode: error: out of memory\n");
        rc = 1;
        goto out;
    }
    w->first = 1;
    for (;;) {
        if (cap - have < READ_CHUNK / 2) {
            char *b = realloc(buf, 2 * cap);
            if (!b) {
                fprintf(stderr, "loom tokenizer encode: error: out of memory\n");
                rc = 1;
                goto out;
            }
            buf = b;
            cap *= 2;
        }
        size_t r = fread(buf + have, 1, cap - have, in);
        if (ferror(in)) {
            fprintf(stderr, "loom tokenizer encode: error: reading %s: %s\n", input ? input : "stdin", strerror(errno));
            rc = 1;
            goto out;
        }
        have += r;
        total_bytes += (int64_t)r;
        int eof = r == 0 || feof(in);
        int32_t *ids;
        int64_t n;
        size_t used;
        double t0 = loom_now_s();
        loom_status st =
            loom_tokenizer_encode_ex(tok, buf, have, flags | (eof ? 0u : LOOM_TOKENIZER_PARTIAL), &ids, &n, &used);
        enc_s += loom_now_s() - t0;
        if (st != LOOM_OK) {
            rc = loom_cli_fail("tokenizer encode");
            goto out;
        }
        for (int64_t k = 0; k < n; k++) idw_put(w, ids[k]);
        total_ids += n;
        free(ids);
        memmove(buf, buf + used, have - used);
        have -= used;
        if (eof) break;
    }
    if (w->n + 1 > sizeof w->buf) idw_flush(w);
    w->buf[w->n++] = '\n';
    idw_flush(w);
    if (w->failed || fflush(stdout) != 0) {
        fprintf(stderr, "loom tokenizer encode: error: writing stdout: %s\n", strerror(errno));
        rc = 1;
        goto out;
    }
    if (stats)
        fprintf(stderr, "encode: %lld bytes -> %lld tokens in %.4f s (%.2f MB/s); tokenizer %s loaded in %.4f s\n",
                (long long)total_bytes, (long long)total_ids, enc_s,
                enc_s > 0 ? (double)total_bytes / 1e6 / enc_s : 0.0, loom_tokenizer_name(tok), load_s);
out:
    if (in && in != stdin) fclose(in);
    free(buf);
    free(w);
    loom_tokenizer_free(&tok);
    return rc;
}

static int decode_flush(const loom_tokenizer *tok, int32_t *ids, int64_t *n) {
    char *bytes;
    size_t len;
    if (loom_tokenizer_decode(tok, ids, *n, &bytes, &len) != LOOM_OK) return loom_cli_fail("tokenizer decode");
    int ok = fwrite(bytes, 1, len, stdout) == len;
    free(bytes);
    *n = 0;
    if (!ok) {
        fprintf(stderr, "loom tokenizer decode: error: writing stdout: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

static int cmd_decode(int argc, char **argv) {
    const char *name = "gpt2", *input = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            decode_help(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) name = argv[++i];
        else if (!strcmp(a, "--input") && i + 1 < argc) input = argv[++i];
        else {
            fprintf(stderr, "loom tokenizer decode: unknown or incomplete option '%s'\n", a);
            decode_help(stderr);
            return 2;
        }
    }
    loom_tokenizer *tok = NULL;
    int rc = load_tok(name, &tok, "tokenizer decode", NULL);
    if (rc) return rc;
    FILE *in = open_input(input, "tokenizer decode");
    if (!in) {
        loom_tokenizer_free(&tok);
        return 1;
    }
    enum { BATCH = 1 << 16 };
    int32_t *ids = malloc(BATCH * sizeof *ids);
    int64_t n = 0, pos = 0, value = 0;
    int in_num = 0;
    if (!ids) {
        fprintf(stderr, "loom tokenizer decode: error: out of memory\n");
        rc = 1;
        goto out;
    }
    for (;;) {
        int c = getc(in);
        if (c >= '0' && c <= '9') {
            value = value * 10 + (c - '0');
            if (value > INT32_MAX) {
                fprintf(stderr, "loom tokenizer decode: error: the number ending at byte %lld of the input is not a "
                                "token id (too large)\n", (long long)pos);
                rc = 1;
                goto out;
            }
            in_num = 1;
        } else if (c == EOF || c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
            if (in_num) {
                ids[n++] = (int32_t)value;
                value = 0;
                in_num = 0;
                if (n == BATCH && (rc = decode_flush(tok, ids, &n)) != 0) goto out;
            }
            if (c == EOF) break;
        } else {
            fprintf(stderr, "loom tokenizer decode: error: expected token ids (decimal numbers separated by white "
                            "space), found '%c' (0x%02X) at byte %lld of the input\n",
                    c >= 0x20 && c < 0x7f ? c : '?', (unsigned)c, (long long)pos);
            rc = 1;
            goto out;
        }
        pos++;
    }
    if (ferror(in)) {
        fprintf(stderr, "loom tokenizer decode: error: reading %s: %s\n", input ? input : "stdin", strerror(errno));
        rc = 1;
        goto out;
    }
    if ((rc = decode_flush(tok, ids, &n)) != 0) goto out;
    if (fflush(stdout) != 0) {
        fprintf(stderr, "loom tokenizer decode: error: writing stdout: %s\n", strerror(errno));
        rc = 1;
    }
out:
    if (in && in != stdin) fclose(in);
    free(ids);
    loom_tokenizer_free(&tok);
    return rc;
}

static int cmd_train(int argc, char **argv) {
    loom_tokenizer_train_config cfg = loom_tokenizer_train_config_default();
    const char *out_path = NULL;
    const char **inputs = calloc((size_t)argc, sizeof *inputs);
    const char **special = calloc((size_t)argc, sizeof *special);
    int n_inputs = 0, n_special = 0, no_special = 0, rc = 2, vocab_given = 0;
    if (!inputs || !special) {
        fprintf(stderr, "loom tokenizer train: error: out of memory\n");
        rc = 1;
        goto out;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            train_help(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(a, "--kind") && i + 1 < argc) cfg.kind = argv[++i];
        else if (!strcmp(a, "--special") && i + 1 < argc) special[n_special++] = argv[++i];
        else if (!strcmp(a, "--no-special")) no_special = 1;
        else if (!strcmp(a, "--vocab-size") && i + 1 < argc) {
            char *end;
            errno = 0;
            long long v = strtoll(argv[++i], &end, 10);
            if (errno || *end || v <= 0) {
                fprintf(stderr, "loom tokenizer train: --vocab-size '%s' is not a positive integer\n", argv[i]);
                goto out;
            }
            cfg.vocab_size = v;
            vocab_given = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom tokenizer train: unknown or incomplete option '%s'\n", a);
            train_help(stderr);
            goto out;
        } else inputs[n_inputs++] = a;
    }
    if (!n_inputs || !out_path) {
        fprintf(stderr, "loom tokenizer train: %s\n", !n_inputs ? "no INPUT files given" : "--out FILE is required");
        train_help(stderr);
        goto out;
    }
    if (strcmp(cfg.kind, "bpe") != 0 && strcmp(cfg.kind, "char") != 0) {
        fprintf(stderr, "loom tokenizer train: --kind '%s': expected bpe or char\n", cfg.kind);
        goto out;
    }
    if (vocab_given && !strcmp(cfg.kind, "char")) {
        fprintf(stderr, "loom tokenizer train: --vocab-size is for --kind bpe (a char vocabulary is the corpus's "
                        "characters)\n");
        goto out;
    }
    if (no_special && n_special) {
        fprintf(stderr, "loom tokenizer train: --special and --no-special contradict each other\n");
        goto out;
    }
    if (no_special) cfg.n_special = 0;
    else if (n_special) {
        cfg.special = special;
        cfg.n_special = n_special;
    }
    loom_tokenizer *tok = NULL;
    loom_tokenizer_train_stats ts;
    double t0 = loom_now_s();
    if (loom_tokenizer_train(&cfg, inputs, n_inputs, &tok, &ts) != LOOM_OK) {
        rc = loom_cli_fail("tokenizer train");
        goto out;
    }
    double dt = loom_now_s() - t0;
    if (loom_tokenizer_save(tok, out_path) != LOOM_OK) {
        loom_tokenizer_free(&tok);
        rc = loom_cli_fail("tokenizer train");
        goto out;
    }
    if (!strcmp(cfg.kind, "bpe"))
        printf("trained bpe: %lld tokens (256 bytes, %lld merges, %d special) from %lld bytes (%lld words, %lld "
               "distinct) in %.2f s -> %s\n",
               (long long)loom_tokenizer_vocab_size(tok), (long long)ts.merges, loom_tokenizer_n_special(tok),
               (long long)ts.bytes, (long long)ts.words, (long long)ts.distinct, dt, out_path);
    else
        printf("trained char: %lld tokens (%lld characters, %d special) from %lld bytes in %.2f s -> %s\n",
               (long long)loom_tokenizer_vocab_size(tok), (long long)ts.distinct, loom_tokenizer_n_special(tok),
               (long long)ts.bytes, dt, out_path);
    if (!strcmp(cfg.kind, "bpe") && loom_tokenizer_vocab_size(tok) < cfg.vocab_size)
        printf("note: the corpus ran out of pairs before --vocab-size %lld\n", (long long)cfg.vocab_size);
    loom_tokenizer_free(&tok);
    rc = 0;
out:
    free(inputs);
    free(special);
    return rc;
}

static void print_bytes_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '\\') printf("\\x%02X", c);
        else putchar(c);
    }
}

static int cmd_info(int argc, char **argv) {
    const char *name = "gpt2";
    for (int i = 2; i < argc; i++) {
        if (is_help(argv[i])) {
            info_help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) name = argv[++i];
        else {
            fprintf(stderr, "loom tokenizer info: unknown or incomplete option '%s'\n", argv[i]);
            info_help(stderr);
            return 2;
        }
    }
    loom_tokenizer *tok = NULL;
    int rc = load_tok(name, &tok, "tokenizer info", NULL);
    if (rc) return rc;
    printf("name %s\nkind %s\nvocab_size %lld\neot %d\n", loom_tokenizer_name(tok), loom_tokenizer_kind(tok),
           (long long)loom_tokenizer_vocab_size(tok), loom_tokenizer_eot(tok));
    for (int i = 0; i < loom_tokenizer_n_special(tok); i++) {
        size_t len;
        int32_t id;
        const char *s = loom_tokenizer_special(tok, i, &len, &id);
        printf("special %d ", id);
        print_bytes_escaped(s, len);
        putchar('\n');
    }
    if (!strcmp(loom_tokenizer_kind(tok), "gpt2") || !strcmp(loom_tokenizer_kind(tok), "bpe"))
        printf("unicode_tables %s\n", loom_tokenizer_unicode_version());
    loom_tokenizer_free(&tok);
    return 0;
}

int loom_cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        tokenizer_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "encode")) return cmd_encode(argc, argv);
    if (!strcmp(sub, "decode")) return cmd_decode(argc, argv);
    if (!strcmp(sub, "train")) return cmd_train(argc, argv);
    if (!strcmp(sub, "info")) return cmd_info(argc, argv);
    fprintf(stderr, "loom tokenizer: unknown command '%s'\n", sub);
    tokenizer_help(stderr);
    return 2;
}
