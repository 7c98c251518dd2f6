/* loom/hf.h: Hugging Face interchange. safetensors files (one file, or shards with an index) and the
 * mapping between loom checkpoints and transformers' GPT2LMHeadModel / LlamaForCausalLM (docs/FORMATS-hf.md).
 *
 *   loom_st_model *m;                                      // DIR/model.safetensors, or the index + shards
 *   LOOM_CALL(loom_st_model_open("gpt2-dir", &m));
 *   const loom_st_tensor *t = loom_st_model_find(m, "transformer.wte.weight");
 *   if (t) LOOM_CALL(loom_st_tensor_read_f32(t, dst, t->numel)); // F32, BF16 or F16 on disk
 *   loom_st_model_close(&m);
 *
 *   loom_hf_export_options eo = loom_hf_export_options_default();
 *   eo.dtype = LOOM_ST_BF16;
 *   LOOM_CALL(loom_hf_export("runs/demo", "hf-out", &eo));   // safetensors + config.json
 *   LOOM_CALL(loom_hf_import("hf-out", "runs/imported", NULL)); // runs/imported/checkpoint.bin
 *
 * Reading checks everything before any tensor is handed out: the header length against the file size,
 * the header JSON, each dtype, shape and data_offsets (inside the data area, byte count = numel * dtype
 * size), and that the tensors tile the data area in order with no overlap, gap or trailing bytes (as the
 * reference implementation requires). Every error is one line that names the file and, where there is
 * one, the tensor. Files are memory-mapped read-only; tensors point into the mapping (not necessarily
 * aligned: read them with loom_st_tensor_read_f32). Little-endian hosts only, as the rest of loom.
 * Not Collective; no state outside the caller's objects. */
#ifndef LOOM_HF_H
#define LOOM_HF_H
#include <stddef.h>
#include <stdint.h>

#include "loom/json.h"
#include "loom/model.h"
#include "loom/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------------------
 * safetensors */

/* Every dtype of the format (so that any valid file validates); loom converts F32, BF16 and F16. */
typedef enum {
    LOOM_ST_BOOL = 0,
    LOOM_ST_U8,
    LOOM_ST_I8,
    LOOM_ST_F8_E5M2,
    LOOM_ST_F8_E4M3,
    LOOM_ST_I16,
    LOOM_ST_U16,
    LOOM_ST_F16,
    LOOM_ST_BF16,
    LOOM_ST_I32,
    LOOM_ST_U32,
    LOOM_ST_F32,
    LOOM_ST_F64,
    LOOM_ST_I64,
    LOOM_ST_U64,
    LOOM_ST_DTYPE_COUNT
} loom_st_dtype;

#define LOOM_ST_MAX_DIMS 8
#define LOOM_ST_MAX_HEADER ((uint64_t)100000000) /* bytes; the reference implementation's limit */

/* The on-disk name ("F32", "BF16", ...). */
const char *loom_st_dtype_name(loom_st_dtype d);
size_t loom_st_dtype_size(loom_st_dtype d);
/* LOOM_ERR_FORMAT for a name that is not a safetensors dtype. */
LOOM_NODISCARD loom_status loom_st_dtype_from_name(const char *name, loom_st_dtype *out);

typedef struct {
    const char *name;   /* owned by the file object */
    loom_st_dtype dtype;
    int ndim;
    int64_t shape[LOOM_ST_MAX_DIMS];
    int64_t numel;      /* product of shape (1 for a scalar) */
    const void *data;   /* into the mapping; any alignment */
    size_t nbytes;      /* numel * dtype size */
    int64_t begin;      /* data_offsets[0], relative to the data area */
    const char *file;   /* the path (or label) of the file that holds it, for messages */
} loom_st_tensor;

typedef struct loom_st_file loom_st_file;

/* Maps and validates one .safetensors file. */
LOOM_NODISCARD loom_status loom_st_file_open(const char *path, loom_st_file **out);
/* Validates `size` bytes at `bytes` (a whole file's contents; not copied: they must outlive the object).
 * `label` names the bytes in messages. The fuzz test's entry point. */
LOOM_NODISCARD loom_status loom_st_file_parse(const void *bytes, size_t size, const char *label,
                                              loom_st_file **out);
void loom_st_file_close(loom_st_file **f); /* NULL-safe; clears the pointer */
const char *loom_st_file_path(const loom_st_file *f);
int loom_st_file_num_tensors(const loom_st_file *f);
/* i-th tensor in data order (ascending offsets). */
const loom_st_tensor *loom_st_file_tensor(const loom_st_file *f, int i);
/* NULL when absent. */
const loom_st_tensor *loom_st_file_find(const loom_st_file *f, const char *name);
/* A "__metadata__" value; NULL when absent. */
const char *loom_st_file_metadata(const loom_st_file *f, const char *key);

/* Converts a F32/BF16/F16 tensor to floats. n must equal t->numel. Other dtypes: LOOM_ERR_UNSUPPORTED. */
LOOM_NODISCARD loom_status loom_st_tensor_read_f32(const loom_st_tensor *t, float *dst, int64_t n);

/* model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}. */
typedef struct {
    int n;                 /* weight_map entries, in document order */
    const char **tensor;   /* [n] */
    const char **file;     /* [n], each one of files[] */
    int n_files;           /* distinct shard files, in first-use order */
    const char **files;    /* plain file names: no '/', not "." or ".." */
    int64_t total_size;    /* metadata.total_size, -1 when absent */
    void *priv_;
} loom_st_index;

/* Parses and validates an index's text. `label` names it in messages. */
LOOM_NODISCARD loom_status loom_st_index_parse(const char *text, size_t len, const char *label,
                                               loom_st_index **out);
void loom_st_index_free(loom_st_index **ix);

/* A model's tensors: DIR/model.safetensors.index.json and its shards if the index exists, else
 * DIR/model.safetensors; or a path to a single .safetensors file. Index and shards must agree: every
 * mapped tensor is in its shard, every shard tensor is mapped there, no tensor is in two shards. */
typedef struct loom_st_model loom_st_model;
LOOM_NODISCARD loom_status loom_st_model_open(const char *path, loom_st_model **out);
void loom_st_model_close(loom_st_model **m);
/* "DIR/model.safetensors" or "DIR/model.safetensors.index.json": where a missing tensor was looked for. */
const char *loom_st_model_source(const loom_st_model *m);
int loom_st_model_num_files(const loom_st_model *m);
int loom_st_model_num_tensors(const loom_st_model *m);
/* i-th tensor in name order. */
const loom_st_tensor *loom_st_model_tensor(const loom_st_model *m, int i);
const loom_st_tensor *loom_st_model_find(const loom_st_model *m, const char *name);

/* Writing. A tensor to write: name, dtype, shape; its bytes come from a callback. */
typedef struct {
    const char *name;
    loom_st_dtype dtype;
    int ndim;
    int64_t shape[LOOM_ST_MAX_DIMS];
} loom_st_spec;

/* Fills dst (nbytes = numel * dtype size, little-endian) with tensor `index`'s data. */
typedef loom_status (*loom_st_fill_fn)(void *ctx, int index, void *dst, size_t nbytes);

/* Writes one file atomically (temporary file, fsync, rename): the 8-byte header length, the header
 * (tensors in the order given, data in that order, "__metadata__": {"format": "pt"}, padded with spaces
 * so the data area starts 8-byte aligned), the data. */
LOOM_NODISCARD loom_status loom_st_write(const char *path, const loom_st_spec *specs, int n,
                                         loom_st_fill_fn fill, void *ctx);
/* Writes DIR/model.safetensors, or, when max_shard_bytes > 0 and the data exceeds it,
 * DIR/model-0000i-of-0000n.safetensors shards (tensors in order, a new shard when the next tensor would
 * pass the limit; a tensor larger than the limit gets a shard of its own) and
 * DIR/model.safetensors.index.json. Stale files of the other layout (and unreferenced shards of an
 * earlier export) are removed, so DIR reads back as exactly what was written. */
LOOM_NODISCARD loom_status loom_st_write_model(const char *dir, const loom_st_spec *specs, int n,
                                               int64_t max_shard_bytes, loom_st_fill_fn fill, void *ctx);

/* ---------------------------------------------------------------------------------------------------------
 * Hugging Face models <-> loom checkpoints */

/* Maps a transformers config.json (model_type "gpt2" or "llama") to a loom model config; `label` names
 * the file in messages. Unsupported features (another activation, rope_scaling, untied GPT-2 head, ...)
 * are LOOM_ERR_UNSUPPORTED with the key named. */
LOOM_NODISCARD loom_status loom_hf_config_from_json(const loom_json *cfg, const char *label,
                                                    loom_model_config *out);

/* 1 when dir is a Hugging Face model directory (a config.json, and no loom checkpoint beside it) */
int loom_hf_is_model_dir(const char *dir);
/* The model config of a checkpoint (a loom run directory, shard step directory or checkpoint file) or of a
 * Hugging Face model directory (its config.json). */
LOOM_NODISCARD loom_status loom_hf_model_config_of(const char *path, loom_model_config *out);

typedef struct {
    loom_st_dtype dtype;     /* LOOM_ST_F32 (default), LOOM_ST_BF16 or LOOM_ST_F16 */
    int64_t max_shard_bytes; /* 0 (default): one model.safetensors */
} loom_hf_export_options;
loom_hf_export_options loom_hf_export_options_default(void);

/* Reads a loom checkpoint (a run directory holding checkpoint.bin, or the file) and writes out_dir/
 * config.json and the safetensors in transformers' names and layouts (docs/FORMATS-hf.md). */
LOOM_NODISCARD loom_status loom_hf_export(const char *ckpt, const char *out_dir, const loom_hf_export_options *opt);

typedef struct {
    uint64_t seed; /* data sampler seed of the written state (as `loom train --seed`); default 1337 */
} loom_hf_import_options;
loom_hf_import_options loom_hf_import_options_default(void);

/* Reads src_dir/config.json and its safetensors and writes out_dir/checkpoint.bin (step 0, zero AdamW
 * state: `loom train --resume` fine-tunes from it, `loom generate --ckpt` samples from it) and
 * out_dir/train-config.json (the model section, for `loom train --config`). Every tensor is checked
 * (present, shape, finite) before anything is written; an existing checkpoint is moved to
 * checkpoint.prev.bin. opt may be NULL. */
LOOM_NODISCARD loom_status loom_hf_import(const char *src_dir, const char *out_dir, const loom_hf_import_options *opt);
/* LoRA adapters in Hugging Face PEFT's layout (src/io/peft.c): export writes out_dir/adapter_config.json and
 * adapter_model.safetensors (fp32) from a LoRA run's checkpoint; import reads them onto `base` (a loom
 * checkpoint or a Hugging Face directory, imported into out_dir/base-hf) and writes out_dir/checkpoint.bin, a
 * LoRA checkpoint that generate, serve, merge and export read as loom's own. */
LOOM_NODISCARD loom_status loom_peft_export(const char *ckpt, const char *out_dir);
LOOM_NODISCARD loom_status loom_peft_import(const char *adapter_dir, const char *base, const char *out_dir);
/* A checkpoint of parameters only, as import writes it: out_dir/checkpoint.bin (step 0, AdamW's state zero,
 * the data position of `seed`; an earlier checkpoint there moved aside to checkpoint.prev.bin) and
 * train-config.json. layout: a one-rank model whose flat parameters params holds (host memory): a plain
 * model's weights, or a LoRA model's adapters (then meta_extra carries the "lora" field); preset: its name in
 * the metadata; meta_extra: more metadata fields, each led by a comma (NULL: none). */
LOOM_NODISCARD loom_status loom_checkpoint_save_weights(const char *out_dir, const loom_model *layout,
                                                        const float *params, const char *preset,
                                                        const char *meta_extra, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
