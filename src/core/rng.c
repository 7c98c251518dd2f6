#include "loom/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void loom_rng_seed(loom_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t loom_rng_next(loom_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t loom_rng_below(loom_rng *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = loom_rng_next(r);
    while (x >= limit);
    return x % n;
}

double loom_rng_uniform(loom_rng *r) { return (double)(loom_rng_next(r) >> 11) * 0x1.0p-53; }

static double box_muller(double u1, double u2) {
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double loom_rng_normal(loom_rng *r) {
    const double u1 = loom_rng_uniform(r), u2 = loom_rng_uniform(r);
    return box_muller(u1, u2);
}

void loom_rng_normals(loom_rng *r, double scale, int64_t n, float *out) {
    enum { BLOCK = 4096 }; /* 64 KiB of uniforms on the stack */
    double u[2 * BLOCK];
    for (int64_t b = 0; b < n; b += BLOCK) {
        const int64_t m = n - b < BLOCK ? n - b : BLOCK;
        for (int64_t i = 0; i < 2 * m; i++) u[i] = loom_rng_uniform(r);
#pragma omp parallel for schedule(static) if (m > 1024)
        for (int64_t i = 0; i < m; i++) out[b + i] = (float)(scale * box_muller(u[2 * i], u[2 * i + 1]));
    }
}
