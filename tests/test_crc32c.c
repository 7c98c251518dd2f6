/* CRC-32C against the bit-at-a-time definition (polynomial 0x82F63B78, reflected), over sizes and offsets
 * that exercise the three-stream blocks, their seams and the tails; and the standard check value. */
#include <stdio.h>
#include <stdlib.h>

#include "loom/crc32c.h"

static uint32_t by_definition(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

int main(void) {
    const size_t N = (size_t)1 << 20;
    unsigned char *b = malloc(N + 16);
    if (!b) return 1;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < N + 16; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b[i] = (unsigned char)x;
    }
    const size_t sizes[] = {0, 1, 7, 8, 9, 24575, 24576, 24577, 3 * 24576 + 5, 100003, N};
    int fail = 0, n = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (int off = 0; off < 4; off++, n++) {
            const uint32_t got = loom_crc32c(0xDEADBEEF, b + off, sizes[i]), want = by_definition(0xDEADBEEF, b + off, sizes[i]);
            if (got != want) {
                printf("FAIL size %zu offset %d: %08x, by definition %08x\n", sizes[i], off, got, want);
                fail = 1;
            }
        }
    /* incremental: the CRC of the whole is the CRC of its parts in order */
    const uint32_t whole = loom_crc32c(0, b, N), parts = loom_crc32c(loom_crc32c(0, b, 50001), b + 50001, N - 50001);
    if (whole != parts) printf("FAIL incremental %08x != %08x\n", parts, whole), fail = 1;
    const uint32_t check = loom_crc32c(0, "123456789", 9);
    if (check != 0xE3069283u) printf("FAIL check value %08x, want e3069283\n", check), fail = 1;
    printf("%s: %d sizes x offsets, incremental, check value\n", fail ? "FAIL" : "ok", n);
    free(b);
    return fail;
}
