/* Private to src/io/: file helpers shared by the checkpoint and safetensors writers. */
#ifndef LOOM_IO_IMPL_H
#define LOOM_IO_IMPL_H
#include <stddef.h>

#include "loom/status.h"

/* Writes all n bytes (retrying short writes and EINTR, in chunks of at most 1 GiB); errors name path. */
LOOM_NODISCARD loom_status loom_io_write_all(int fd, const void *buf, size_t n, const char *path);
/* The temporary name an atomic write of `path` goes through ("<path>.tmp.<pid>"). Removes, first, the
 * temporaries of `path` left by processes that no longer run (a rank killed mid-write), so that nothing
 * half-written outlives the next write. */
void loom_io_tmp_path(char *tmp, size_t n, const char *path);
#endif
