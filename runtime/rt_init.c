/*
** runtime/rt_init.c: fresh weights by flow-language.md section 3.
**
** Streams of the Philox generator (counter hi word, see rt_rng.c):
**   linear weight/bias of param i:  key = seed,       hi = 1 << 32 | i,     lo = element
**   permute(random) of layer K:     key = param seed, hi = 2 << 32 | K,     lo = draw
**   linear_lu of layer K:           key = seed,       hi = 3 << 32 | K,     lo = element
**   sn_u param i of layer K:        key = i,          hi = 4 << 32 | K,     lo = pair
** so a permutation depends on the .flow file only, not on --seed, and so
** does sn_u, which weights files may omit (then it is made here again).
*/
#include "rt_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void init_uniform(const rt_param_desc *p, uint64_t seed, int index, float *out) {
  double bound = p->fan_in > 0 ? 1.0 / sqrt((double)p->fan_in) : 0.0;
  size_t n = rt_param_numel(p);
  for (size_t i = 0; i < n; i++) {
    uint64_t u[2];
    rt_philox64(seed, 1ull << 32 | (uint32_t)index, i, u);
    out[i] = (float)(bound * (2.0 * rt_u01_from64(u[0]) - 1.0));
  }
}

/* Fisher-Yates with unbiased enough draws: a 64-bit word scaled to [0, i]. */
static void init_perm_random(const rt_param_desc *p, int64_t *out) {
  int n = p->shape[0];
  for (int i = 0; i < n; i++) out[i] = i;
  for (int i = n - 1; i > 0; i--) {
    uint64_t u[2];
    rt_philox64(p->seed, 2ull << 32 | (uint32_t)p->layer, (uint64_t)i, u);
    uint64_t j = (uint64_t)(((unsigned __int128)u[0] * (uint64_t)(i + 1)) >> 64);
    int64_t t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
}

/* Why two passes: classical Gram-Schmidt run twice ("twice is enough")
** keeps Q orthogonal to rounding for the well-conditioned Gaussian matrix.
** Columns of A (n x n, row-major) become Q's; R's diagonal is positive, which
** is the QR made unique by the sign of diag(R). */
static int orthonormalise(double *A, int n) {
  double *c = malloc((size_t)n * sizeof *c);
  if (!c) return -1;
  for (int j = 0; j < n; j++) {
    for (int pass = 0; pass < 2; pass++) {
      for (int k = 0; k < j; k++) {
        double dot = 0;
        for (int i = 0; i < n; i++) dot += A[i * n + k] * A[i * n + j];
        c[k] = dot;
      }
      for (int k = 0; k < j; k++)
        for (int i = 0; i < n; i++) A[i * n + j] -= c[k] * A[i * n + k];
    }
    double nrm = 0;
    for (int i = 0; i < n; i++) nrm += A[i * n + j] * A[i * n + j];
    nrm = sqrt(nrm);
    if (!(nrm > 1e-300)) { free(c); return -1; }
    for (int i = 0; i < n; i++) A[i * n + j] /= nrm;
  }
  free(c);
  return 0;
}

/* In-place LU with partial pivoting of A (n x n): afterwards row k of the
** packed factors is the LU of original row order[k]. */
static void lu_pivot(double *A, int n, int *order) {
  for (int i = 0; i < n; i++) order[i] = i;
  for (int k = 0; k < n; k++) {
    int piv = k;
    for (int i = k + 1; i < n; i++)
      if (fabs(A[i * n + k]) > fabs(A[piv * n + k])) piv = i;
    if (piv != k) {
      for (int j = 0; j < n; j++) {
        double t = A[k * n + j];
        A[k * n + j] = A[piv * n + j];
        A[piv * n + j] = t;
      }
      int t = order[k]; order[k] = order[piv]; order[piv] = t;
    }
    double d = A[k * n + k];
    if (d == 0) continue;
    for (int i = k + 1; i < n; i++) {
      double l = A[i * n + k] /= d;
      for (int j = k + 1; j < n; j++) A[i * n + j] -= l * A[k * n + j];
    }
  }
}

/* The five tensors of one linear_lu layer; slot i of idx is the param of
** init RT_INIT_LU_LOWER + i, or -1. */
static int init_lu(const rt_desc *d, const int idx[5], uint64_t seed, int layer,
                   rt_weights *w, char *err, size_t errlen) {
  int D = -1;
  for (int s = 0; s < 5; s++) {
    if (idx[s] < 0) continue;
    const rt_param_desc *p = &d->params[idx[s]];
    int n = p->shape[0];
    int ok = s < 2 ? p->ndim == 2 && p->shape[1] == n : p->ndim == 1;
    if (!ok || (D >= 0 && n != D))
      return rt_errf(err, errlen, "init: linear_lu parameter %s has an odd shape", p->name);
    D = n;
  }
  if (D <= 0) return 0;
  size_t DD = (size_t)D * (size_t)D;
  double *A = malloc(DD * sizeof *A);
  int *order = malloc((size_t)D * sizeof *order);
  if (!A || !order) {
    free(A); free(order);
    return rt_errf(err, errlen, "init: out of memory");
  }
  const double two_pi = 6.283185307179586476925286766559;
  for (size_t i = 0; i < DD; i++) {
    uint64_t u[2];
    rt_philox64(seed, 3ull << 32 | (uint32_t)layer, i, u);
    A[i] = sqrt(-2.0 * log(rt_u01_from64(u[0]))) * cos(two_pi * rt_u01_from64(u[1]));
  }
  if (orthonormalise(A, D)) {
    free(A); free(order);
    return rt_errf(err, errlen, "init: linear_lu of layer %d: degenerate random matrix", layer);
  }
  lu_pivot(A, D, order);
  float *lower = idx[0] >= 0 ? w->data[idx[0]] : NULL;
  float *upper = idx[1] >= 0 ? w->data[idx[1]] : NULL;
  float *logd = idx[2] >= 0 ? w->data[idx[2]] : NULL;
  float *sign = idx[3] >= 0 ? w->data[idx[3]] : NULL;
  int64_t *perm = idx[4] >= 0 ? w->data[idx[4]] : NULL;
  for (int i = 0; i < D; i++) {
    for (int j = 0; j < D; j++) {
      double v = A[(size_t)i * D + j];
      if (lower) lower[(size_t)i * D + j] = j < i ? (float)v : 0.0f;
      if (upper) upper[(size_t)i * D + j] = j > i ? (float)v : 0.0f;
    }
    double u = A[(size_t)i * D + i];
    if (logd) logd[i] = (float)log(fabs(u));
    if (sign) sign[i] = u < 0 ? -1.0f : 1.0f;
    /* W[i] = (LU)[perm[i]] = Q[order[perm[i]]] is Q[i]: perm = order^-1 */
    if (perm) perm[order[i]] = i;
  }
  free(A);
  free(order);
  return 0;
}

/* Box-Muller normals, pair k from one Philox call, then scaled to unit
** length (a uniformly random direction: torch draws u ~ N(0, I) and
** normalises it). */
void rt_sn_u_init(const rt_desc *d, int i, float *out) {
  const rt_param_desc *p = &d->params[i];
  const double two_pi = 6.283185307179586476925286766559;
  size_t n = rt_param_numel(p);
  double s = 0;
  for (size_t k = 0; k < n; k += 2) {
    uint64_t u[2];
    rt_philox64((uint64_t)i, 4ull << 32 | (uint32_t)p->layer, k / 2, u);
    double rad = sqrt(-2.0 * log(rt_u01_from64(u[0]))), th = two_pi * rt_u01_from64(u[1]);
    out[k] = (float)(rad * cos(th));
    if (k + 1 < n) out[k + 1] = (float)(rad * sin(th));
  }
  for (size_t k = 0; k < n; k++) s += (double)out[k] * out[k];
  s = sqrt(s);
  for (size_t k = 0; k < n && s > 0; k++) out[k] = (float)(out[k] / s);
}

static int is_lu(rt_init in) { return in >= RT_INIT_LU_LOWER && in <= RT_INIT_LU_PERM; }

int rt_weights_init(const rt_desc *d, uint64_t seed, rt_weights *w,
                    char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  if (rt_desc_check(d, err, errlen)) return -1;
  w->data = calloc(d->nparams ? (size_t)d->nparams : 1, sizeof(void *));
  if (!w->data) return rt_errf(err, errlen, "init: out of memory");
  w->n = d->nparams;
  for (int i = 0; i < d->nparams; i++) {
    const rt_param_desc *p = &d->params[i];
    size_t n = rt_param_numel(p), es = p->dtype == RT_I64 ? 8 : 4;
    w->data[i] = calloc(n ? n : 1, es);
    if (!w->data[i]) {
      rt_weights_free(w);
      return rt_errf(err, errlen, "init: out of memory for %s", p->name);
    }
    switch (p->init) {
    case RT_INIT_LINEAR_WEIGHT: case RT_INIT_LINEAR_BIAS:
      init_uniform(p, seed, i, w->data[i]);
      break;
    case RT_INIT_PERM_RANDOM:
      init_perm_random(p, w->data[i]);
      break;
    case RT_INIT_PERM_LIST:
      for (size_t k = 0; k < n; k++) ((int64_t *)w->data[i])[k] = p->values[k];
      break;
    case RT_INIT_SN_U:
      rt_sn_u_init(d, i, w->data[i]);
      break;
    default:                              /* zero; LU below */
      break;
    }
  }
  /* linear_lu groups: the params of one layer with LU inits */
  for (int i = 0; i < d->nparams; i++) {
    if (!is_lu(d->params[i].init)) continue;
    int layer = d->params[i].layer, first = 1;
    for (int k = 0; k < i && first; k++)
      if (is_lu(d->params[k].init) && d->params[k].layer == layer) first = 0;
    if (!first) continue;
    int idx[5] = { -1, -1, -1, -1, -1 };
    for (int k = i; k < d->nparams; k++)
      if (is_lu(d->params[k].init) && d->params[k].layer == layer)
        idx[d->params[k].init - RT_INIT_LU_LOWER] = k;
    if (init_lu(d, idx, seed, layer, w, err, errlen)) {
      rt_weights_free(w);
      return -1;
    }
  }
  return 0;
}
