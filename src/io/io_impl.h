/* Private to src/io/: file helpers shared by the checkpoint and safetensors writers. */
#ifndef LOOM_IO_IMPL_H
#define LOOM_IO_IMPL_H
#include <stddef.h>

#include "loom/status.h"

/* Writes all n bytes (retrying short writes and EINTR, in chunks of at most 1 GiB); errors name path. */
LOOM_NODISCARD loom_status loom_io_write_all(int fd, const void *buf, size_t n, const char *path);
#endif
