/*
** runtime/rt_optim.c: Adam and AdamW as torch.optim has them, gradient
** clipping by the global norm, and learning-rate schedules.
**
** The moments are float32 like torch's; each update is computed in double
** from them and rounded once. Trained: every F32 parameter but linear_lu's
** sign (fixed at initialisation, flow-language.md 4) and the residual
** layers' spectral-norm vectors sn_u (advanced by the train prep, not by
** gradients: flow-language.md 6); perms are I64.
*/
#include "rt_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct rt_optim {
  rt_optim_cfg c;
  int n;                      /* params of the descriptor */
  size_t *numel;
  float **m, **v;             /* NULL for params not trained */
  long step;
};

void rt_optim_free(rt_optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    if (o->m) free(o->m[i]);
    if (o->v) free(o->v[i]);
  }
  free(o->m);
  free(o->v);
  free(o->numel);
  free(o);
}

static int trained(const rt_param_desc *p) {
  return p->dtype == RT_F32 && p->init != RT_INIT_LU_SIGN && p->init != RT_INIT_SN_U;
}

static int cfg_ok(const rt_optim_cfg *c) {
  return c && c->lr >= 0 && c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 &&
         c->eps >= 0 && c->weight_decay >= 0 && isfinite(c->lr) && isfinite(c->clip) &&
         (int)c->schedule >= RT_SCHED_CONSTANT && (int)c->schedule <= RT_SCHED_ONECYCLE &&
         c->warmup >= 0 && c->total_steps >= 0;
}

rt_optim *rt_optim_new(const rt_desc *d, const rt_optim_cfg *c) {
  if (!d || !cfg_ok(c)) return NULL;
  rt_optim *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->c = *c;
  o->n = d->nparams;
  size_t n = d->nparams ? (size_t)d->nparams : 1;
  o->numel = calloc(n, sizeof *o->numel);
  o->m = calloc(n, sizeof *o->m);
  o->v = calloc(n, sizeof *o->v);
  if (!o->numel || !o->m || !o->v) { rt_optim_free(o); return NULL; }
  for (int i = 0; i < d->nparams; i++) {
    o->numel[i] = rt_param_numel(&d->params[i]);
    if (!trained(&d->params[i])) continue;
    o->m[i] = calloc(o->numel[i] ? o->numel[i] : 1, sizeof(float));
    o->v[i] = calloc(o->numel[i] ? o->numel[i] : 1, sizeof(float));
    if (!o->m[i] || !o->v[i]) { rt_optim_free(o); return NULL; }
  }
  return o;
}

long rt_optim_steps(const rt_optim *o) { return o ? o->step : 0; }
void rt_optim_set_steps(rt_optim *o, long steps) { if (o) o->step = steps < 0 ? 0 : steps; }
const rt_optim_cfg *rt_optim_config(const rt_optim *o) { return o ? &o->c : NULL; }

float *rt_optim_moment(rt_optim *o, int i, int which) {
  if (!o || i < 0 || i >= o->n) return NULL;
  return which ? o->v[i] : o->m[i];
}

/* ------------------------------------------------------------------ */
/* schedules                                                           */

static const double PI = 3.14159265358979323846;

/* torch's _annealing_cos: from start (pct 0) to end (pct 1). */
static double anneal_cos(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (cos(PI * pct) + 1.0);
}

static double ratio(double num, double den) {
  if (!(den > 0)) return 1.0;
  double r = num / den;
  return r < 0 ? 0 : r > 1 ? 1 : r;
}

/* OneCycleLR with anneal_strategy "cos", three_phase False. */
static double onecycle(const rt_optim_cfg *c, long step) {
  double total = (double)c->total_steps;
  if (total < 1) return c->lr;
  double pct = c->warmup > 0 ? (double)c->warmup / total : 0.3;
  double initial = c->lr / 25.0, min_lr = initial / 1e4;
  double end1 = pct * total - 1, end2 = total - 1;
  double s = (double)(step < c->total_steps ? step : c->total_steps - 1);
  if (s <= end1) return anneal_cos(initial, c->lr, ratio(s, end1));
  return anneal_cos(c->lr, min_lr, ratio(s - end1, end2 - end1));
}

double rt_optim_lr(const rt_optim *o, long step) {
  if (!o) return 0;
  const rt_optim_cfg *c = &o->c;
  if (step < 0) step = 0;
  if (c->schedule == RT_SCHED_ONECYCLE) return onecycle(c, step);
  if (c->warmup > 0 && step < c->warmup) return c->lr * (double)(step + 1) / (double)c->warmup;
  if (c->schedule == RT_SCHED_CONSTANT) return c->lr;
  double span = (double)(c->total_steps - c->warmup);
  if (span <= 0) return step >= c->total_steps ? 0.0 : c->lr;
  return c->lr * 0.5 * (1.0 + cos(PI * ratio((double)(step - c->warmup), span)));
}

/* ------------------------------------------------------------------ */
/* the step                                                            */

static double grad_norm(const rt_optim *o, float *const *grads) {
  double s = 0;
  for (int i = 0; i < o->n; i++) {
    if (!o->m[i] || !grads[i]) continue;
    for (size_t k = 0; k < o->numel[i]; k++) s += (double)grads[i][k] * grads[i][k];
  }
  return sqrt(s);
}

/* One tensor's update, in double like torch's reference formulas. The
** pointers do not alias and the decay kind is decided outside the loop,
** so that the loop vectorises: it was a quarter of a training step
** (RealNVP D=16, 610k weights: 4.6 ms of 20). */
static void adam_loop(float *restrict p, const float *restrict g, float *restrict m,
                      float *restrict v, size_t n, double b1, double b2, double decay, double l2,
                      double step_size, double bc2s, double eps) {
  for (size_t k = 0; k < n; k++) {
    double gk = l2 != 0 ? g[k] + l2 * p[k] : g[k];
    float mk = (float)(b1 * m[k] + (1.0 - b1) * gk);
    float vk = (float)(b2 * v[k] + (1.0 - b2) * gk * gk);
    m[k] = mk;
    v[k] = vk;
    p[k] = (float)(p[k] * decay - step_size * (double)mk / (sqrt((double)vk) / bc2s + eps));
  }
}

static void adam_one(const rt_optim *o, float *p, const float *g, float *m, float *v, size_t n,
                     double lr) {
  const rt_optim_cfg *c = &o->c;
  double t = (double)(o->step + 1);
  double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
  double wd = c->weight_decay;
  /* AdamW decays the weight; Adam adds wd * p to the gradient (L2) */
  adam_loop(p, g, m, v, n, c->beta1, c->beta2, c->adamw ? 1.0 - lr * wd : 1.0, c->adamw ? 0 : wd,
            lr / bc1, sqrt(bc2), c->eps);
}

int rt_optim_step(rt_optim *o, rt_weights *w, float *const *grads, double *gnorm) {
  if (!o || !w || !grads || w->n != o->n || (o->n && !w->data)) return RT_EINVAL;
  double norm = grad_norm(o, grads);
  if (gnorm) *gnorm = norm;
  if (!isfinite(norm)) return RT_ENUMERIC;
  if (o->c.clip > 0) {
    double coef = o->c.clip / (norm + 1e-6);
    if (coef < 1.0)
      for (int i = 0; i < o->n; i++) {
        if (!o->m[i] || !grads[i]) continue;
        for (size_t k = 0; k < o->numel[i]; k++) grads[i][k] = (float)(grads[i][k] * coef);
      }
  }
  double lr = rt_optim_lr(o, o->step);
  for (int i = 0; i < o->n; i++)
    if (o->m[i] && grads[i] && w->data[i])
      adam_one(o, w->data[i], grads[i], o->m[i], o->v[i], o->numel[i], lr);
  o->step++;
  return RT_OK;
}
