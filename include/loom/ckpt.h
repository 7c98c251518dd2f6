/* loom/ckpt.h: checkpoint files. A checkpoint is one file of named sections, each with a CRC-32C; it is
 * written to a temporary file, fsync'ed, renamed over the old one and the directory fsync'ed, so a crash
 * at any moment leaves either the old or the new checkpoint, never a mix. Format: docs/FORMATS.md.
 *
 *   loom_ckpt_section s[] = {{"meta", json, strlen(json)}, {"params", p, bytes}};
 *   LOOM_CALL(loom_ckpt_write("out/checkpoint.bin", s, 2));
 *   loom_ckpt_reader *r;
 *   LOOM_CALL(loom_ckpt_open("out/checkpoint.bin", &r));       // checks magic, version, sizes
 *   LOOM_CALL(loom_ckpt_read(r, "params", p, bytes));          // checks size and CRC
 *   loom_ckpt_close(&r);
 */
#ifndef LOOM_CKPT_H
#define LOOM_CKPT_H
#include <stddef.h>
#include <stdint.h>

#include "loom/comm.h"
#include "loom/json.h"
#include "loom/crc32c.h"
#include "loom/status.h"

#define LOOM_CKPT_NAME_MAX 48

typedef struct {
    const char *name;
    const void *data;
    int64_t nbytes;
    /* data == NULL: the writer pulls the section in pieces, fill(ctx, offset, n, dst) writing its bytes
     * [offset, offset + n) to dst (state that is not in RAM at once: the memory manager's) */
    loom_status (*fill)(void *ctx, int64_t offset, int64_t n, void *dst);
    void *ctx;
} loom_ckpt_section;

typedef struct loom_ckpt_reader loom_ckpt_reader;


/* Writes a whole small file atomically (temporary file, fsync, rename, directory fsync). */
/* A directory and its missing parents (mkdir -p); LOOM_ERR_IO naming the one that cannot be made. */
LOOM_NODISCARD loom_status loom_file_mkdir_p(const char *path);
LOOM_NODISCARD loom_status loom_file_write_atomic(const char *path, const void *data, size_t n);
/* Copies a file to dst atomically (the same temporary, fsync, rename and directory fsync), 1 MiB at a time;
 * after_piece (may be NULL) runs after each piece (the tests slow a copy down with it). */
LOOM_NODISCARD loom_status loom_file_copy_atomic(const char *src, const char *dst, void (*after_piece)(void *),
                                                 void *ctx);
LOOM_NODISCARD loom_status loom_ckpt_write(const char *path, const loom_ckpt_section *sections, int n);
/* The same, returning each section's CRC-32C in crcs[n]. */
/* The same, overwriting the file `recycle` in place when it exists (moved to the temporary name first): an
 * older checkpoint about to be dropped gives its storage to the new one (in-memory snapshots). */
LOOM_NODISCARD loom_status loom_ckpt_write_recycled(const char *path, const char *recycle,
                                                    const loom_ckpt_section *sections, int n, uint32_t *crcs);
LOOM_NODISCARD loom_status loom_ckpt_write_crcs(const char *path, const loom_ckpt_section *sections, int n,
                                                uint32_t *crcs);
LOOM_NODISCARD loom_status loom_ckpt_open(const char *path, loom_ckpt_reader **out);
void loom_ckpt_close(loom_ckpt_reader **r);
/* -1 when the section is absent */
int64_t loom_ckpt_section_size(const loom_ckpt_reader *r, const char *name);
/* Reads exactly nbytes (the section's size) into dst and verifies its checksum. */
LOOM_NODISCARD loom_status loom_ckpt_read(loom_ckpt_reader *r, const char *name, void *dst, int64_t nbytes);
/* Reads the whole section a piece at a time (no buffer of its size) and verifies its checksum; *crc (may be
 * NULL) gets it. With loom_ckpt_read_part: many parts of one section read after one check, not one each. */
LOOM_NODISCARD loom_status loom_ckpt_verify(loom_ckpt_reader *r, const char *name, uint32_t *crc);
/* Reads bytes [offset, offset + nbytes) of a section, unchecked: verify the section first. */
LOOM_NODISCARD loom_status loom_ckpt_read_part(loom_ckpt_reader *r, const char *name, int64_t offset, void *dst,
                                               int64_t nbytes);
/* Reads a text section into a new NUL-terminated string (free() it). */
LOOM_NODISCARD loom_status loom_ckpt_read_text(loom_ckpt_reader *r, const char *name, char **out);
/* ---- a run's checkpoint: one file <out>/checkpoint.bin (one rank), or per-rank shards and the manifest
 * <out>/checkpoint.json (docs/FORMATS.md). Readers address flat positions in either: resharding. ---- */
typedef struct loom_run_ckpt loom_run_ckpt;
/* path: a run directory (the newer of its checkpoint.bin and checkpoint.json), or either file */
LOOM_NODISCARD loom_status loom_run_ckpt_open(const char *path, loom_run_ckpt **out);
void loom_run_ckpt_close(loom_run_ckpt **c);
/* format, step, model, params, tokenizer, threads, ... (the same object in both layouts) */
const loom_json *loom_run_ckpt_meta(const loom_run_ckpt *c);
const char *loom_run_ckpt_path(const loom_run_ckpt *c);
int loom_run_ckpt_world(const loom_run_ckpt *c);
int64_t loom_run_ckpt_size(const loom_run_ckpt *c);
int loom_run_ckpt_has(const loom_run_ckpt *c, const char *section);
/* flat positions [begin, end) of "params", "optim.0" or "optim.1", checksums verified */
LOOM_NODISCARD loom_status loom_run_ckpt_read(loom_run_ckpt *c, const char *section, int64_t begin, int64_t end,
                                              float *dst);
LOOM_NODISCARD loom_status loom_run_ckpt_read_state(loom_run_ckpt *c, void *dst, int64_t bytes);
/* Collective over dp: each rank writes its slice [begin, end) of the three buffers (params, optim.0,
 * optim.1: each a section of (end - begin) floats given as data or fill; absent when both are NULL) to
 * <out>/shards/step-N/, then rank 0 writes that step's own manifest beside them and commits the run's
 * manifest <out>/checkpoint.json; the shard directories of all but the newest `keep` steps are removed. A
 * failure on any rank is agreed (loom_error_is_collective): every rank returns it, this step's shards are
 * removed and the previous checkpoint stays. recycle: each rank overwrites its file of the oldest step that
 * this commit drops (its storage reused; that step is no longer whole from the start of the write). */
LOOM_NODISCARD loom_status loom_run_ckpt_save_sharded(const char *out, loom_comm *dp, const char *meta_json, int recycle,
                                                      int64_t step, int zero_stage, int64_t keep, const void *state,
                                                      int64_t state_bytes, int64_t n, int64_t begin, int64_t end,
                                                      const loom_ckpt_section slices[3]);
/* Removes the shard directories of <out>/shards but the newest `keep` steps (not collective). */
void loom_run_ckpt_prune(const char *out, int64_t keep);
/* A new run in a directory holding a sharded checkpoint: keep it as checkpoint.prev.json + shards.prev. */
void loom_run_ckpt_move_aside(const char *out);
/* Writes a sharded checkpoint as one checkpoint.bin-format file. */
LOOM_NODISCARD loom_status loom_run_ckpt_consolidate(const char *path, const char *out_file);

#endif
