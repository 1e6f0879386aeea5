/*
** runtime/rt_philox.h: Philox4x32-10 (Salmon et al., SC 2011), header only,
** so that the IR interpreter draws exactly the numbers the runtime does
** (rt_sde.h). Word order as rt_rng.c describes; rt_philox is this.
*/
#ifndef FLOWC_RT_PHILOX_H
#define FLOWC_RT_PHILOX_H

#include <stdint.h>

static inline void rt_philox_inline(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo,
                                    uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr_lo, c1 = (uint32_t)(ctr_lo >> 32);
  uint32_t c2 = (uint32_t)ctr_hi, c3 = (uint32_t)(ctr_hi >> 32);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* 53 random bits, centred in their cell: never 0, never 1. */
static inline double rt_u01_inline(uint64_t x) {
  return ((double)(x >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

#endif
