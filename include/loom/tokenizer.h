/* loom/tokenizer.h: text <-> token ids. Kinds: "gpt2" (GPT-2 byte-level BPE from encoder.json + vocab.bpe,
 * token for token equal to OpenAI's encoder), a trained byte-level BPE file (`loom tokenizer train`), "char"
 * (one id per distinct character of a corpus, stored in a file) and "byte" (ids 0..255, no file).
 *
 *   loom_tokenizer *tok;
 *   LOOM_CALL(loom_tokenizer_load("gpt2", &tok));            // or a file path, or "byte"
 *   int32_t *ids; int64_t n;
 *   LOOM_CALL(loom_tokenizer_encode(tok, text, len, &ids, &n));   // free(ids)
 *   char *bytes; size_t nb;
 *   LOOM_CALL(loom_tokenizer_decode(tok, ids, n, &bytes, &nb));   // free(bytes); exact bytes back
 *
 * Encoding works on raw bytes: invalid UTF-8 is kept byte for byte and decodes back exactly.
 *
 * "gpt2" equals the JavaScript encoder of the npm package gpt-3-encoder (OpenAI's encoder.js), including
 * where that encoder could differ from OpenAI's Python one (it looks merges up by the string "left,right",
 * so 11 pairs whose joined string has an extra comma, such as `",` + `"`, merge in JavaScript and not in
 * Python; with GPT-2's ranks no text has been found where that changes the ids). Special tokens
 * (<|endoftext|>, id 50256) are cut out of the text first and encoded as their ids; the text between them
 * is encoded on its own (LOOM_TOKENIZER_NO_SPECIAL encodes them as plain text, as the JavaScript encoder,
 * which knows no special tokens, does).
 *
 * A loaded tokenizer is read-only: encode and decode may run on one tokenizer from several threads at
 * once (the word cache lives in each call). Not Collective. File format: docs/FORMATS-tokenizer.md. */
#ifndef LOOM_TOKENIZER_H
#define LOOM_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#include "loom/status.h"

typedef struct loom_tokenizer loom_tokenizer;

/* name: "gpt2" (files found in $LOOM_GPT2_DIR, <loom executable's dir>/share/gpt2, ~/.cache/loom/gpt2,
 * /usr/local/share/loom/gpt2), "byte", or the path of a loom tokenizer file (BPE or char), or of a
 * directory holding a GPT-2 style encoder.json and vocab.bpe. */
LOOM_NODISCARD loom_status loom_tokenizer_load(const char *name, loom_tokenizer **out);
void loom_tokenizer_free(loom_tokenizer **t);
int64_t loom_tokenizer_vocab_size(const loom_tokenizer *t);
/* id of "<|endoftext|>" (or the tokenizer's end-of-text), -1 if none */
int32_t loom_tokenizer_eot(const loom_tokenizer *t);
/* What it was loaded as: "gpt2", "byte", the path given, or "bpe"/"char" for a trained one not yet loaded
 * from a file. */
const char *loom_tokenizer_name(const loom_tokenizer *t);
/* Special tokens such as <|endoftext|> in the text are encoded as their ids (to encode them as plain text:
 * loom_tokenizer_encode_ex with LOOM_TOKENIZER_NO_SPECIAL). *ids is always an allocation: free() it. */
LOOM_NODISCARD loom_status loom_tokenizer_encode(const loom_tokenizer *t, const char *text, size_t len,
                                                 int32_t **ids, int64_t *n);
LOOM_NODISCARD loom_status loom_tokenizer_decode(const loom_tokenizer *t, const int32_t *ids, int64_t n,
                                                 char **bytes, size_t *len);
/* The bytes of one token (for streaming generation output); NULL (and *len 0) for an id out of range. */
const char *loom_tokenizer_token_bytes(const loom_tokenizer *t, int32_t id, size_t *len);

/* ---- additions ---- */

/* Flags for loom_tokenizer_encode_ex. */
enum {
    LOOM_TOKENIZER_NO_SPECIAL = 1, /* special tokens in the text are plain text (no special ids) */
    LOOM_TOKENIZER_PARTIAL = 2     /* more text follows: encode only the prefix whose tokens cannot change */
};
/* loom_tokenizer_encode with flags. With LOOM_TOKENIZER_PARTIAL, *consumed is the length of the prefix
 * encoded (the rest, with more text appended, goes to the next call; the final call omits the flag), so a
 * stream encoded in pieces gives exactly the tokens of the whole; without it *consumed (may be NULL) is len.
 * *ids is always an allocation (free it), also when *n is 0. */
LOOM_NODISCARD loom_status loom_tokenizer_encode_ex(const loom_tokenizer *t, const char *text, size_t len,
                                                    unsigned flags, int32_t **ids, int64_t *n, size_t *consumed);
/* "gpt2", "byte", "bpe" (a trained byte-level BPE) or "char". */
const char *loom_tokenizer_kind(const loom_tokenizer *t);
int loom_tokenizer_n_special(const loom_tokenizer *t);
/* Special token i (0 <= i < n_special): its text (not NUL-terminated; *len bytes) and *id. NULL if out of range. */
const char *loom_tokenizer_special(const loom_tokenizer *t, int i, size_t *len, int32_t *id);
/* The node/ICU/Unicode versions the \p{L}, \p{N}, \s tables were generated with. */
const char *loom_tokenizer_unicode_version(void);

/* Loads a loom tokenizer file held in memory (`name` is what loom_tokenizer_name will return, and what
 * messages start with). */
LOOM_NODISCARD loom_status loom_tokenizer_load_memory(const void *data, size_t len, const char *name,
                                                      loom_tokenizer **out);
/* A GPT-2 style tokenizer from the contents of an encoder.json and a vocab.bpe. */
LOOM_NODISCARD loom_status loom_tokenizer_load_gpt2_memory(const char *encoder_json, size_t encoder_len,
                                                           const char *vocab_bpe, size_t vocab_len,
                                                           loom_tokenizer **out);
/* Writes a bpe or char tokenizer as a loom tokenizer file (temporary file, fsync, rename). */
LOOM_NODISCARD loom_status loom_tokenizer_save(const loom_tokenizer *t, const char *path);
/* The bytes of that file, in a new allocation (free it). */
LOOM_NODISCARD loom_status loom_tokenizer_serialize(const loom_tokenizer *t, void **data, size_t *len);

/* ---- the vocabulary itself (for exporters: GGUF) ---- */
/* 1 for a byte-level BPE (gpt2, a trained bpe file) or the byte tokenizer (a BPE without merges): every
 * token is a byte string and text splits as GPT-2 pre-tokenizes it; 0 for char */
int loom_tokenizer_is_byte_level(const loom_tokenizer *t);
/* 1 if id is a special token (matched in the text before pre-tokenization: <|endoftext|>) */
int loom_tokenizer_is_special(const loom_tokenizer *t, int32_t id);
/* The BPE merges in rank order: *pairs = malloc'ed (left id, right id) x *n; none for byte and char. */
LOOM_NODISCARD loom_status loom_tokenizer_merges(const loom_tokenizer *t, int32_t **pairs, int64_t *n);

typedef struct {
    const char *kind;            /* "bpe" (byte-level BPE, default) or "char" */
    int64_t vocab_size;          /* bpe: all ids, 256 bytes + merges + special tokens (default 4096); the
                                    training stops earlier when no pair is left. char: ignored */
    const char *const *special;  /* special tokens (ids after all others), n_special of them */
    int n_special;               /* -1 (default): bpe gets "<|endoftext|>", char none */
} loom_tokenizer_train_config;

typedef struct {
    int64_t bytes;       /* of text read */
    int64_t words;       /* pre-tokens (bpe) or characters (char) seen */
    int64_t distinct;    /* distinct pre-tokens (bpe) or characters (char) */
    int64_t merges;      /* bpe: merges learned */
} loom_tokenizer_train_stats;

loom_tokenizer_train_config loom_tokenizer_train_config_default(void);
/* Trains on the text files `paths` (each a separate text: no token spans two files), streaming them.
 * bpe: GPT-2's pre-tokenization, then merges of the most frequent adjacent pair, ties to the smallest
 * (left id, right id); char: the distinct UTF-8 characters (an invalid byte is its own character),
 * sorted by their bytes. Special tokens in the text are not learned from. stats may be NULL. */
LOOM_NODISCARD loom_status loom_tokenizer_train(const loom_tokenizer_train_config *cfg, const char *const *paths,
                                                int n_paths, loom_tokenizer **out, loom_tokenizer_train_stats *stats);
/* The same on one text in memory. */
LOOM_NODISCARD loom_status loom_tokenizer_train_text(const loom_tokenizer_train_config *cfg, const char *text,
                                                     size_t len, loom_tokenizer **out,
                                                     loom_tokenizer_train_stats *stats);
#endif
