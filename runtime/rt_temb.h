/*
** runtime/rt_temb.h: the time embedding of continuous flows
** (flow-language.md 7), header only, so the compiler (ir/, codegen/) and
** the runtime's prep program (RT_PREP_TEMB) agree by construction.
**
** Kind 0 (scalar): one column, t itself. Kind 1 (sincos): n = K columns,
** K even >= 4, h = K / 2 frequencies
**   period_k = 4e-3 * (4 / 4e-3)^(k / (h - 1)),  w_k = 2 pi / period_k,
** (periods geometric from 4e-3 up to 4), and the row is
**   [sin(w_0 t) .. sin(w_{h-1} t), cos(w_0 t) .. cos(w_{h-1} t)],
** all in double.
*/
#ifndef FLOWC_RT_TEMB_H
#define FLOWC_RT_TEMB_H

#include <math.h>

enum { RT_TEMB_SCALAR, RT_TEMB_SINCOS };

/* w_k of a sincos embedding with half = K / 2 >= 2 frequencies, k < half
** (half < 2: the shortest period's frequency). */
static inline double rt_temb_freq(int k, int half) {
  const double two_pi = 6.283185307179586476925286766559;
  double e = half > 1 ? (double)k / (double)(half - 1) : 0.0;
  return two_pi / (4e-3 * pow(4.0 / 4e-3, e));
}

/* Column col (< n) of the embedding of time t: t for kind 0, else sincos
** of width n. */
static inline double rt_temb_value(int kind, int n, int col, double t) {
  if (kind == RT_TEMB_SCALAR) return t;
  int half = n / 2;
  return col < half ? sin(rt_temb_freq(col, half) * t) : cos(rt_temb_freq(col - half, half) * t);
}

#endif
