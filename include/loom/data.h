/* loom/data.h: training data. Sources:
 *   - a prepared dataset directory (`loom data prepare`): dataset.json + binary token shards, memory-mapped,
 *     every header and checksum verified at open (docs/FORMATS-data.md);
 *   - "synthetic" (uniform random tokens, for benchmarks);
 *   - a text file or a directory of text files (byte-level tokens 0..255, for the demo and quick experiments);
 *   - a file of raw little-endian uint16 tokens (*.bin, as llm.c writes them).
 *
 *   loom_data *d;
 *   LOOM_CALL(loom_data_open("data/shakespeare", vocab, 0.1, seed, &d));
 *   LOOM_CALL(loom_data_next(d, LOOM_SPLIT_TRAIN, B, T, tokens, targets));
 *
 *   loom_data_prepare_config pc = loom_data_prepare_config_default();
 *   pc.tokenizer = "char";
 *   LOOM_CALL(loom_data_prepare(inputs, n_inputs, "data/shakespeare", &pc, &stats));
 *
 * Windows of T+1 tokens are drawn at positions from a seeded generator; its state (loom_data_state) goes
 * into checkpoints, so a resumed run draws exactly the batches the uninterrupted run would have. The
 * validation stream restarts from the same seed at every evaluation: each evaluation sees the same
 * batches, so validation losses are comparable across steps. A window never crosses the train/validation
 * boundary; in a prepared dataset a window may span two shards of the same split (the shards of a split
 * are one token stream, cut into files only for size).
 *
 * The split is positional: training is the first floor(n * (1 - val_fraction)) tokens of the stream and
 * validation the rest (as nanoGPT's `data[:int(n*0.9)]`). A prepared dataset keeps the split it was
 * prepared with; the val_fraction given to loom_data_open applies to text and .bin sources only.
 *
 * Not Collective. One loom_data is used by one thread at a time. */
#ifndef LOOM_DATA_H
#define LOOM_DATA_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/rng.h"
#include "loom/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_SPLIT_TRAIN = 0, LOOM_SPLIT_VAL } loom_split;

typedef struct {
    loom_rng train_rng;
    uint64_t batches_drawn;
} loom_data_state;

typedef struct loom_data loom_data;

/* vocab_size: the model's vocabulary. > 0: the data is checked against it here (every token id must be
 * below it, and a prepared dataset's tokenizer vocabulary must fit in it). 0: not checked yet (not for
 * "synthetic"): the caller reads loom_data_vocab_size(), settles the model's size, then calls
 * loom_data_check_vocab(). val_fraction: the last part of a text or .bin token stream held out for
 * validation (prepared datasets carry their own split). */
LOOM_NODISCARD loom_status loom_data_open(const char *source, int64_t vocab_size, double val_fraction,
                                          uint64_t seed, loom_data **out);
void loom_data_free(loom_data **d);
const char *loom_data_describe(const loom_data *d);
int64_t loom_data_num_tokens(const loom_data *d, loom_split split);
/* LOOM_ERR_CONFIG, naming the sizes, if this data does not fit a model vocabulary of vocab_size: a token id
 * >= vocab_size, or a prepared dataset whose tokenizer vocabulary is larger. */
LOOM_NODISCARD loom_status loom_data_check_vocab(const loom_data *d, int64_t vocab_size);
/* The vocabulary size of the tokenizer this data was made with: the dataset's for a prepared dataset, 256
 * for text sources (byte-level); 0 if unknown (synthetic, .bin). */
int64_t loom_data_vocab_size(const loom_data *d);
/* What to decode this data with, as loom_tokenizer_load() takes it: "gpt2", "byte" (text sources), or the
 * path of the tokenizer file stored in the dataset directory (char and trained tokenizers); NULL if
 * unknown (synthetic, .bin). Valid until loom_data_free. */
const char *loom_data_tokenizer(const loom_data *d);
/* End-of-text token id of the dataset's tokenizer, -1 if none or unknown. */
int32_t loom_data_eot(const loom_data *d);
/* 1 when the data masks the loss of some targets (instruction data): loom_data_next writes -1 for them. */
int loom_data_has_loss_mask(const loom_data *d);
/* The targets with a loss (>= 0) in the last loom_data_next's whole global batch (every rank's rows, so
 * every rank gets the same count): what the loss's mean divides by. B*nranks*T without a mask. */
int64_t loom_data_last_valid(const loom_data *d);

/* tokens, targets: (B,T). B is this rank's batch (see loom_data_set_rank). With a loss mask, the targets
 * that take no loss are -1. */
LOOM_NODISCARD loom_status loom_data_next(loom_data *d, loom_split split, int64_t B, int64_t T, int32_t *tokens,
                                          int32_t *targets);
/* Restart the validation stream (call before each evaluation). */
void loom_data_reset_val(loom_data *d);
loom_data_state loom_data_get_state(const loom_data *d);
void loom_data_set_state(loom_data *d, const loom_data_state *s);

/* Copies tokens [off, off+count) of a split's stream into dst (not for synthetic data). */
LOOM_NODISCARD loom_status loom_data_read(const loom_data *d, loom_split split, int64_t off, int64_t count,
                                          int32_t *dst);
/* Writes a split's tokens decoded with loom_data_tokenizer() to f: for a prepared dataset, the text it
 * was made from (documents joined by the end-of-text token's text, when the tokenizer has one). */
LOOM_NODISCARD loom_status loom_data_write_text(const loom_data *d, loom_split split, FILE *f);

/* Disjoint shares for data parallelism (default: rank 0 of 1). Every rank opens the data with the same
 * source and seed and calls this once before drawing. Each loom_data_next(d, split, B, T, ...) then
 * draws the global batch of B*nranks windows (exactly the windows, in order, that one process would get
 * from loom_data_next(d, split, B*nranks, T, ...)) and returns rows [rank*B, (rank+1)*B) of it: the ranks'
 * batches, concatenated in rank order, are the single-process global batch, and no window index is given
 * to two ranks. All ranks advance the generator identically, so loom_data_state is the same on every rank
 * and one rank's copy in a checkpoint resumes all of them. Validation is sliced the same way. */
LOOM_NODISCARD loom_status loom_data_set_rank(loom_data *d, int rank, int nranks);

/* ---- preparing a dataset (src/data/prepare.c) ---- */

typedef struct {
    const char *tokenizer;   /* "gpt2" (default), "byte", "char" (vocabulary built from the inputs and
                                stored in the dataset), or a tokenizer file */
    double val_fraction;     /* 0.1: the last tenth of the token stream is validation; in [0, 1) */
    int64_t shard_tokens;    /* 100,000,000 tokens per shard at most (the last of each split is shorter) */
    int threads;             /* 0: every online core */
    int64_t chunk_bytes;     /* 1 MiB: text is read and tokenized in chunks of about this size, cut at safe
                                boundaries (docs/FORMATS-data.md); the result does not depend on it */
    const char *format;      /* "text" (default) or "jsonl": instruction data, one example per line, either
                                {"prompt": P, "completion": C} or {"messages": [{"role", "content"}, ...]}
                                rendered with chat_template; the loss is on the completion (the assistant's
                                turns) and the end-of-text token that closes each example only; the split
                                falls on an example boundary; a malformed line is an error naming it */
    const char *chat_template; /* jsonl messages: plain (default), chatml or llama3 (loom/chat.h) */
} loom_data_prepare_config;

typedef struct {
    int64_t files, files_skipped; /* text files read; files skipped (binary, empty, unreadable links) */
    int64_t bytes;                /* text bytes read */
    int64_t tokens[2];            /* by loom_split */
    int n_shards[2];              /* by loom_split */
    int64_t vocab_size;
    int32_t eot;                  /* -1: documents are not separated */
    double seconds;
} loom_data_prepare_stats;

loom_data_prepare_config loom_data_prepare_config_default(void);
/* Tokenizes inputs (text files, or directories walked recursively for regular text files; each file is
 * one document; jsonl: each line an example) into token shards and out_dir/dataset.json. Streams: memory is bounded by about
 * 2 * threads chunks, whatever the corpus size. The output depends only on the inputs, the tokenizer,
 * val_fraction and shard_tokens (not on threads or chunk_bytes). stats may be NULL. */
LOOM_NODISCARD loom_status loom_data_prepare(const char *const *inputs, int n_inputs, const char *out_dir,
                                             const loom_data_prepare_config *cfg, loom_data_prepare_stats *stats);

/* ---- the on-disk pieces, for tools and tests (src/data/shard.c; docs/FORMATS-data.md) ---- */

#define LOOM_SHARD_MAGIC "LOOMSHRD"
#define LOOM_SHARD_VERSION 1u
#define LOOM_SHARD_HEADER_BYTES 64

typedef struct {
    uint32_t version;
    uint32_t token_bytes;  /* 2 (uint16 tokens) or 4 (uint32) */
    uint32_t data_crc32c;  /* of the token bytes */
    uint32_t split;        /* loom_split */
    uint32_t index;        /* shard number within its split, from 0 */
    int64_t n_tokens;
    int64_t vocab_size;    /* every token id is below it */
    int64_t first_token;   /* position of the shard's first token in the whole prepared stream */
    uint32_t flags;        /* LOOM_SHARD_LOSS_MASK */
} loom_shard_header;
/* Instruction data (`loom data prepare --format jsonl`): 4-byte tokens whose bit 31 says "no loss when this
 * token is the target" (a prompt's tokens); the id is the low 31 bits. */
#define LOOM_SHARD_LOSS_MASK 1u
#define LOOM_TOKEN_NO_LOSS 0x80000000u

/* Checks a shard file's header against the file's size: magic, version, header checksum, token width,
 * and that the file holds exactly the header's token count (so truncation or a lying count is found
 * before any token is read). `name` is used in messages. LOOM_ERR_FORMAT / LOOM_ERR_CHECKSUM. */
LOOM_NODISCARD loom_status loom_shard_header_decode(const void *file, size_t file_size, const char *name,
                                                    loom_shard_header *out);
/* Checks the tokens after a decoded header: their CRC-32C, and that every id is below h->vocab_size
 * (LOOM_ERR_CHECKSUM / LOOM_ERR_FORMAT). */
LOOM_NODISCARD loom_status loom_shard_check_tokens(const void *file, const loom_shard_header *h, const char *name);
/* Writes the 64-byte header (computing its checksum) into out. */
void loom_shard_header_encode(const loom_shard_header *h, unsigned char out[LOOM_SHARD_HEADER_BYTES]);

typedef struct {
    char file[256];        /* a plain file name inside the dataset directory */
    loom_split split;
    int64_t n_tokens, first_token;
    uint32_t crc32c;
} loom_dataset_shard;

typedef struct {
    char tokenizer[256];       /* "gpt2", "byte", "char", or the name the tokenizer file gives itself */
    char tokenizer_file[256];  /* "" or a plain file name inside the dataset directory */
    int64_t vocab_size;
    int32_t eot;               /* -1: none */
    uint32_t token_bytes;
    int loss_mask;             /* the shards carry LOOM_SHARD_LOSS_MASK ("loss_mask": true) */
    double val_fraction;
    int64_t tokens[2];         /* by loom_split: the sums of the shards' counts */
    int n_shards;              /* training shards first, then validation, each in stream order */
    loom_dataset_shard *shards;
} loom_dataset_manifest;

/* Parses and checks dataset.json text (`name` for messages): types, ranges, plain file names, and that
 * the shards tile the token stream (counts add up, positions follow one another, train before val). */
LOOM_NODISCARD loom_status loom_dataset_manifest_parse(const char *text, size_t len, const char *name,
                                                       loom_dataset_manifest **out);
void loom_dataset_manifest_free(loom_dataset_manifest **m);

/* floor(n * (1 - val_fraction)): the number of training tokens of an n-token stream. */
int64_t loom_data_split_point(int64_t n, double val_fraction);

#ifdef __cplusplus
}
#endif
#endif
