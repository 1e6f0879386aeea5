/*
** runtime/rt_sde.h: the Brownian increments of an sde layer's
** Euler-Maruyama steps (flow-language.md 7), header only, shared by the
** runtime kernel rt_k_sde_noise and the IR interpreter.
**
** Why from the sample's input row: a kernel gets no seed, and the noise of
** a sample must not depend on its tile or thread. The entry's input (z of
** decode; sample draws it from --seed) is hashed with the layer into a
** Philox key; step n's D normals are Box-Muller pairs of counters (n, j/2).
** So decode(z) is a deterministic function of z, and sampling is
** reproducible for a seed and any thread count.
*/
#ifndef FLOWC_RT_SDE_H
#define FLOWC_RT_SDE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rt_philox.h"

/* The key of a sample: its n input floats (their bits) and the layer. */
static inline uint64_t rt_sde_key(const float *u, long n, long layer) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)layer * 0xD1B54A32D192ED03ull;
  for (long i = 0; i < n; i++) {
    uint32_t b;
    memcpy(&b, &u[i], sizeof b);
    h = (h ^ b) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return h;
}

/* Normals j0 .. j0 + m - 1 (j0 even) of step `step` for key. */
static inline void rt_sde_normals_from(uint64_t key, long step, long j0, long m, double *out) {
  const double two_pi = 6.283185307179586476925286766559;
  for (long j = 0; j < m; j += 2) {
    uint32_t w[4];
    rt_philox_inline(key, (uint64_t)step, (uint64_t)((j0 + j) / 2), w);
    double a = rt_u01_inline((uint64_t)w[1] << 32 | w[0]);
    double b = rt_u01_inline((uint64_t)w[3] << 32 | w[2]);
    double rad = sqrt(-2.0 * log(a)), th = two_pi * b;
    out[j] = rad * cos(th);
    if (j + 1 < m) out[j + 1] = rad * sin(th);
  }
}

enum { RT_K_SDE_CHUNK = 64 };   /* normals per call of the kernel's loop */

#endif
