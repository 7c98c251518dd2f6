/* loom/data.h: training data. Sources: "synthetic" (uniform random tokens, for benchmarks), a text file
 * or a directory of text files (byte-level tokens 0..255, for the demo and quick experiments), or a
 * file of raw little-endian uint16 tokens (*.bin, as llm.c writes them).
 *
 *   loom_data *d;
 *   LOOM_CALL(loom_data_open("input.txt", vocab, 0.1, seed, &d));
 *   LOOM_CALL(loom_data_next(d, LOOM_SPLIT_TRAIN, B, T, tokens, targets));
 *
 * Windows of T+1 tokens are drawn at positions from a seeded generator; its state (loom_data_state) goes
 * into checkpoints, so a resumed run draws exactly the batches the uninterrupted run would have. The
 * validation stream restarts from the same seed at every evaluation: each evaluation sees the same
 * batches, so validation losses are comparable across steps. */
#ifndef LOOM_DATA_H
#define LOOM_DATA_H
#include <stdint.h>

#include "loom/rng.h"
#include "loom/status.h"

typedef enum { LOOM_SPLIT_TRAIN = 0, LOOM_SPLIT_VAL } loom_split;

typedef struct {
    loom_rng train_rng;
    uint64_t batches_drawn;
} loom_data_state;

typedef struct loom_data loom_data;

/* val_fraction: the last part of the token stream held out for validation. */
LOOM_NODISCARD loom_status loom_data_open(const char *source, int64_t vocab_size, double val_fraction,
                                          uint64_t seed, loom_data **out);
void loom_data_free(loom_data **d);
const char *loom_data_describe(const loom_data *d);
int64_t loom_data_num_tokens(const loom_data *d, loom_split split);
/* tokens, targets: (B,T) */
LOOM_NODISCARD loom_status loom_data_next(loom_data *d, loom_split split, int64_t B, int64_t T, int32_t *tokens,
                                          int32_t *targets);
/* Restart the validation stream (call before each evaluation). */
void loom_data_reset_val(loom_data *d);
loom_data_state loom_data_get_state(const loom_data *d);
void loom_data_set_state(loom_data *d, const loom_data_state *s);
#endif
