/* The record writer of the dump files tests/torch_ref.py and tests/test_lora.py read: u32 name length, the
 * name, u32 dtype (0 f32, 1 i32, 2 utf-8 text), u32 ndim, i64 shape[ndim], the raw data, little endian. */
#ifndef LOOM_TESTS_DUMP_IO_H
#define LOOM_TESTS_DUMP_IO_H
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline void put(FILE *f, const char *name, uint32_t dtype, int ndim, const int64_t *shape, const void *data,
                       size_t elem) {
    uint32_t nl = (uint32_t)strlen(name), nd = (uint32_t)ndim;
    fwrite(&nl, 4, 1, f);
    fwrite(name, 1, nl, f);
    fwrite(&dtype, 4, 1, f);
    fwrite(&nd, 4, 1, f);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        fwrite(&shape[i], 8, 1, f);
        n *= (size_t)shape[i];
    }
    fwrite(data, elem, n, f);
}
#endif
