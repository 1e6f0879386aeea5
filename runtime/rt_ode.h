/*
** runtime/rt_ode.h: the step-size controller of the dopri5 solver
** (flow-language.md 7), header only, shared by the runtime kernel
** rt_k_ode_ctrl and the IR interpreter, so both take the same decisions.
**
** A sample's state is [y (n values) | t | h]. One attempted Dormand-Prince
** step gave y5 (5th order) and err = y5 - y4. The error is the RMS over the
** state of err_i / (atol + rtol max(|y_i|, |y5_i|)); at most 1 accepts
** (y = y5, t += h, landing exactly on tend when within 1e-6 of it). Either
** way h *= clamp(0.9 err^-1/5, 0.2, 10), clipped so t + h does not pass
** tend; a non-finite y5 or err rejects with h *= 0.2. A sample at tend
** keeps its state, which is how its fixed-point loop (IR_FIX_END, exact
** mode) sees that it is done.
*/
#ifndef FLOWC_RT_ODE_H
#define FLOWC_RT_ODE_H

#include <math.h>

#define RT_K_ODE_MAX 1024   /* state values of one sample (rt_k_ode_ctrl's stack arrays) */

static inline void rt_ode_ctrl(const double *s, const double *y5, const double *err, long n,
                               double rtol, double atol, double tend, double *out) {
  double t = s[n], h = s[n + 1], dir = h >= 0 ? 1.0 : -1.0;
  for (long i = 0; i < n + 2; i++) out[i] = s[i];
  if ((tend - t) * dir <= 0) return;                 /* done */
  double acc = 0;
  int bad = 0;
  for (long i = 0; i < n; i++) {
    double q = err[i] / (atol + rtol * fmax(fabs(s[i]), fabs(y5[i])));
    acc += q * q;
    bad |= !isfinite(y5[i]) || !isfinite(err[i]);
  }
  double en = n > 0 ? sqrt(acc / (double)n) : 0;
  double f = bad ? 0.2 : en == 0 ? 10 : fmin(10, fmax(0.2, 0.9 * pow(en, -0.2)));
  if (bad || !(en <= 1)) {
    out[n + 1] = h * f;
    return;
  }
  for (long i = 0; i < n; i++) out[i] = y5[i];
  double tn = t + h;
  if ((tend - tn) * dir < 1e-6) tn = tend;
  double hn = h * f;
  if ((tn + hn - tend) * dir > 0 && tn != tend) hn = tend - tn;
  out[n] = tn;
  out[n + 1] = hn;
}

#endif
