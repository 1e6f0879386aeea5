/*
** runtime/rt_made.h: the MADE masks of flow-language.md section 5, header
** only, so the compiler (ir/) and the runtime's prep program agree by
** construction. Inputs are [u, c]: u_i has degree i + 1, context 0. Hidden
** unit k has degree (k mod (D-1)) + 1 without context (1 when D = 1), k mod D
** with. Output o belongs to dim o mod D (affine: s then t) or o / per
** (spline: 3K-1 consecutive values a dim) and has that dim's degree + 1.
*/
#ifndef FLOWC_RT_MADE_H
#define FLOWC_RT_MADE_H

enum { RT_MASK_IN_HIDDEN, RT_MASK_HIDDEN_HIDDEN, RT_MASK_HIDDEN_OUT, RT_MASK_IN_OUT };

static inline int rt_made_deg_in(int D, int i) { return i < D ? i + 1 : 0; }

static inline int rt_made_deg_hidden(int D, int C, int k) {
  if (C > 0) return k % D;
  return D == 1 ? 1 : k % (D - 1) + 1;
}

static inline int rt_made_deg_out(int D, int per, int o) { return (per ? o / per : o % D) + 1; }

/* 1 when input i of a MADE layer of that kind reaches its output o. */
static inline int rt_made_connected(int kind, int D, int C, int per, int o, int i) {
  switch (kind) {
  case RT_MASK_IN_HIDDEN: return rt_made_deg_hidden(D, C, o) >= rt_made_deg_in(D, i);
  case RT_MASK_HIDDEN_HIDDEN: return rt_made_deg_hidden(D, C, o) >= rt_made_deg_hidden(D, C, i);
  case RT_MASK_HIDDEN_OUT: return rt_made_deg_out(D, per, o) > rt_made_deg_hidden(D, C, i);
  default: return rt_made_deg_out(D, per, o) > rt_made_deg_in(D, i);
  }
}

#endif
