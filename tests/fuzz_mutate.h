/* The deterministic random-mutation harness the fuzz tests share (when not built for libFuzzer): a
 * xorshift generator, a bounded input buffer and the time. Each test includes it once. */
#ifndef LOOM_TESTS_FUZZ_MUTATE_H
#define LOOM_TESTS_FUZZ_MUTATE_H
#include <stdint.h>
#include <string.h>
#include <time.h>

#define FUZZ_MAX 65536

typedef struct {
    uint8_t *buf;
    size_t len;
} fuzz_input;

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static size_t below(uint64_t *s, size_t n) { return n ? (size_t)(xorshift(s) % n) : 0; }

/* inserts n bytes of src at `at`, as many as fit in FUZZ_MAX */
static void insert(fuzz_input *in, size_t at, const void *src, size_t n) {
    if (n > FUZZ_MAX - in->len) n = FUZZ_MAX - in->len;
    memmove(in->buf + at + n, in->buf + at, in->len - at);
    memmove(in->buf + at, src, n);
    in->len += n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif
