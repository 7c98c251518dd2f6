/* loom/gguf.h: GGUF export, so that a model trained in loom runs in llama.cpp (docs/FORMATS.md).
 *
 *   loom_gguf_options o = loom_gguf_options_default();
 *   o.dtype = LOOM_GGUF_F16;                       // 2-D weights; norms and biases stay F32
 *   LOOM_CALL(loom_gguf_write(model, tokenizer, "demo.gguf", &o));   // `loom export --format gguf`
 *
 * GGUF version 3: the architecture's hyper-parameters (llama.cpp's "gpt2" or "llama"), the tokenizer (a
 * byte-level BPE: GPT-2's, a trained one, or the byte tokenizer as a BPE without merges), then the tensors
 * under llama.cpp's names, 32-byte aligned. LLaMA's q and k rows are reordered from Hugging Face's rotate-half
 * pairing (i, i + hd/2) to GGML's adjacent pairs (2i, 2i + 1), as llama.cpp's converter does. The file is
 * written to a temporary name and renamed, so a failure (a full disk) leaves no partial file. Not Collective. */
#ifndef LOOM_GGUF_H
#define LOOM_GGUF_H

#include "loom/model.h"
#include "loom/status.h"
#include "loom/tokenizer.h"

typedef enum { LOOM_GGUF_F32 = 0, LOOM_GGUF_F16 = 1, LOOM_GGUF_BF16 = 30 } loom_gguf_dtype; /* GGML's type ids */

typedef struct {
    loom_gguf_dtype dtype;  /* of the 2-D weights (default F32) */
    const char *name;       /* general.name (default "loom") */
} loom_gguf_options;

loom_gguf_options loom_gguf_options_default(void);
/* m: a whole model (one rank, no tensor parallel cut) whose parameters are host memory (the CPU backend);
 * tok: its tokenizer (byte-level); path: the .gguf file. */
LOOM_NODISCARD loom_status loom_gguf_write(loom_model *m, const loom_tokenizer *tok, const char *path,
                                           const loom_gguf_options *opt);

#endif
