/*
** runtime/rt_rng.c: Philox4x32-10 (Salmon et al., "Parallel random numbers:
** as easy as 1, 2, 3", SC 2011), counter-based, so any value can be computed
** from its coordinates alone and any split of the work over threads agrees.
**
** Word order: key = (k0, k1) = (low, high 32 bits of key); the counter is
** (c0, c1, c2, c3) = (low, high of ctr_lo, low, high of ctr_hi). This is the
** order of Random123's known-answer tests.
*/
#include "rt_internal.h"
#include "rt_philox.h"

#include <math.h>

void rt_philox(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo, uint32_t out[4]) {
  rt_philox_inline(key, ctr_hi, ctr_lo, out);
}

void rt_philox64(uint64_t key, uint64_t hi, uint64_t lo, uint64_t out[2]) {
  uint32_t w[4];
  rt_philox(key, hi, lo, w);
  out[0] = (uint64_t)w[1] << 32 | w[0];
  out[1] = (uint64_t)w[3] << 32 | w[2];
}

double rt_u01_from64(uint64_t x) { return rt_u01_inline(x); }

float rt_uniform01(uint64_t seed, uint64_t stream, uint64_t i) {
  uint32_t w[4];
  rt_philox(seed, stream, i, w);
  /* 23 bits, so (k + 0.5) / 2^23 is exact in float and below 1 */
  return (float)(((double)(w[0] >> 9) + 0.5) * (1.0 / 8388608.0));
}

/* Why: value (r, j) must depend on (seed, r, j) only. Column pair p of row
** r uses counter (hi = stream << 32 | p, lo = r): one Philox call gives two
** 64-bit uniforms, and Box-Muller turns them into the pair's two normals.
** The stream's low 32 bits are used. */
void rt_normal_rows(uint64_t seed, uint64_t stream, long row0, long nrows, int dim,
                    float *out) {
  const double two_pi = 6.283185307179586476925286766559;
  for (long r = 0; r < nrows; r++) {
    float *o = out + (size_t)r * (size_t)dim;
    for (int j = 0; j < dim; j += 2) {
      uint64_t u[2];
      rt_philox64(seed, stream << 32 | (uint64_t)(j / 2), (uint64_t)(row0 + r), u);
      double rad = sqrt(-2.0 * log(rt_u01_from64(u[0])));
      double th = two_pi * rt_u01_from64(u[1]);
      o[j] = (float)(rad * cos(th));
      if (j + 1 < dim) o[j + 1] = (float)(rad * sin(th));
    }
  }
}
