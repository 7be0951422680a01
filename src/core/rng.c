/* Philox4x32-10 counter-based generator. Number k of a draw comes from block
 * (block0 + k/4), lane k%4, so any backend produces the same stream. */
#include "core/internal.h"
#include "core/philox.h"

#include <math.h>

static uint64_t g_seed = 0x5eed;
static uint64_t g_block = 0;

void fe_manual_seed(uint64_t seed) {
    g_seed = seed;
    g_block = 0;
}

fe_rng_state fe_rng_get_state(void) { return (fe_rng_state){g_seed, g_block}; }

void fe_rng_set_state(fe_rng_state s) {
    g_seed = s.seed;
    g_block = s.offset;
}

uint64_t fe__rng_reserve(int64_t n, uint64_t *seed) {
    uint64_t b = g_block;
    /* normals use two uniforms per number: reserve generously for both kinds */
    g_block += (uint64_t)(n + 1) / 2 + 1;
    *seed = g_seed;
    return b;
}

void fe__philox(uint64_t seed, uint64_t ctr, uint32_t out[4]) { fe_philox4x32_10(seed, ctr, out); }

/* uniform number u of the stream (two per normal; uniforms use lanes directly) */
static uint32_t raw(uint64_t seed, uint64_t block0, int64_t u) {
    uint32_t o[4];
    fe__philox(seed, block0 + (uint64_t)u / 4, o);
    return o[u % 4];
}

double fe__rng_uniform(uint64_t seed, uint64_t block0, int64_t k) {
    return (double)(raw(seed, block0, k) >> 8) * (1.0 / 16777216.0);
}

double fe__rng_normal(uint64_t seed, uint64_t block0, int64_t k) {
    /* Box-Muller on uniforms 2k and 2k+1 of the block pair; u1 in (0, 1] */
    uint32_t o[4];
    fe__philox(seed, block0 + (uint64_t)k / 2, o);
    int lane = (int)(k % 2) * 2;
    double u1 = ((double)(o[lane] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)(o[lane + 1] >> 8) * (1.0 / 16777216.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
