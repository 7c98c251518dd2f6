/* loom/crc32c.h: CRC-32C (Castagnoli), the checksum of every loom file format (checkpoints, token shards,
 * tokenizer files; docs/FORMATS.md).
 *
 *   uint32_t c = loom_crc32c(0, data, n);          // a whole buffer
 *   c = loom_crc32c(c, more, m);                   // continued over a second piece
 */
#ifndef LOOM_CRC32C_H
#define LOOM_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* The CRC of data [0, n) continued from crc (0 to start). */
uint32_t loom_crc32c(uint32_t crc, const void *data, size_t n);
#endif
