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

#include "loom/status.h"

#define LOOM_CKPT_NAME_MAX 48

typedef struct {
    const char *name;
    const void *data;
    int64_t nbytes;
} loom_ckpt_section;

typedef struct loom_ckpt_reader loom_ckpt_reader;

uint32_t loom_crc32c(uint32_t crc, const void *data, size_t n);

/* Writes a whole small file atomically (temporary file, fsync, rename, directory fsync). */
LOOM_NODISCARD loom_status loom_file_write_atomic(const char *path, const void *data, size_t n);
LOOM_NODISCARD loom_status loom_ckpt_write(const char *path, const loom_ckpt_section *sections, int n);
LOOM_NODISCARD loom_status loom_ckpt_open(const char *path, loom_ckpt_reader **out);
void loom_ckpt_close(loom_ckpt_reader **r);
/* -1 when the section is absent */
int64_t loom_ckpt_section_size(const loom_ckpt_reader *r, const char *name);
/* Reads exactly nbytes (the section's size) into dst and verifies its checksum. */
LOOM_NODISCARD loom_status loom_ckpt_read(loom_ckpt_reader *r, const char *name, void *dst, int64_t nbytes);
/* Reads a text section into a new NUL-terminated string (free() it). */
LOOM_NODISCARD loom_status loom_ckpt_read_text(loom_ckpt_reader *r, const char *name, char **out);
#endif
