/* loom/rng.h: a small deterministic random generator (xoshiro256**, seeded by splitmix64). Its whole
 * state is four words, saved in checkpoints so that a resumed run draws the same numbers. */
#ifndef LOOM_RNG_H
#define LOOM_RNG_H
#include <stdint.h>

typedef struct { uint64_t s[4]; } loom_rng;

void loom_rng_seed(loom_rng *r, uint64_t seed);
uint64_t loom_rng_next(loom_rng *r);
/* uniform in [0, n) without modulo bias */
uint64_t loom_rng_below(loom_rng *r, uint64_t n);
/* uniform float in [0, 1) */
double loom_rng_uniform(loom_rng *r);
/* standard normal (Box-Muller, one value per call; deterministic) */
double loom_rng_normal(loom_rng *r);
/* out[i] = scale * the next n loom_rng_normal values, the same bits: the uniforms drawn in order, their
 * transforms (the costly log and cos) spread over the OpenMP threads */
void loom_rng_normals(loom_rng *r, double scale, int64_t n, float *out);
#endif
