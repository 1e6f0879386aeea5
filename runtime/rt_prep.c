/*
** runtime/rt_prep.c: the parameter-only prep programs, forward and reverse,
** in double precision.
**
** Forward: every op of rt.h's rt_prep_op on [rows, n] operands. Reverse:
** the adjoints of the results flow back in reverse program order into the
** earlier results and the parameters. linear_lu's W = P L U (flow-language.md
** section 4, (P v)[i] = v[perm[i]]) goes back through A = L U:
**   G_A[perm[i], :] = G_W[i, :],
**   G_L = strict_lower(G_A U^T),  G_U = L^T G_A,
**   d log_diag[i] = G_U[i, i] * sign[i] * exp(log_diag[i]),
** and its inverse V = W^-1 first through G_W = -V^T G_V V^T. sign and perm
** get no gradient.
*/
#include "rt_internal.h"
#include "rt_made.h"

#include <math.h>
#include <string.h>

/* An operand: a float or int64 param, or an earlier result (double). */
typedef struct opnd { const float *f; const int64_t *i; const double *d; size_t len; } opnd;

static double at(const opnd *o, size_t k) {
  if (o->len == 1) k = 0;                 /* [1,1] broadcast */
  return o->d ? o->d[k] : o->f ? (double)o->f[k] : (double)o->i[k];
}

static opnd get_opnd(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                     const double *const *vals, int a) {
  opnd o = { 0, 0, 0, 0 };
  if (a < d->nparams) {
    o.len = rt_param_numel(&d->params[a]);
    if (d->params[a].dtype == RT_I64) o.i = params[a];
    else o.f = params[a];
  } else {
    const rt_prep *p = &en->prep[a - d->nparams];
    o.d = vals[a - d->nparams];
    o.len = (size_t)p->rows * (size_t)p->n;
  }
  return o;
}

static void get_opnds(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      const double *const *vals, const rt_prep *p, opnd o[5]) {
  for (int a = 0; a < p->nargs && a < 5; a++) o[a] = get_opnd(d, en, params, vals, p->args[a]);
}

/* Entries of L and U from the operands lower, upper, log_diag, sign. */
static double lu_L(const opnd *o, size_t n, size_t r, size_t c) {
  return r == c ? 1.0 : c < r ? at(&o[0], r * n + c) : 0.0;
}

static double lu_U(const opnd *o, size_t n, size_t r, size_t c) {
  return r == c ? at(&o[3], r) * exp(at(&o[2], r)) : c > r ? at(&o[1], r * n + c) : 0.0;
}

/* W = P L U, or its inverse by two triangular solves per column:
** W x = e_j  <=>  L U x = e_{perm[j]}. */
static void prep_lu(const opnd *o, int D, int inverse, double *out) {
  size_t n = (size_t)D;
  if (!inverse) {
    for (size_t i = 0; i < n; i++) {
      size_t r = (size_t)o[4].i[i];
      for (size_t c = 0; c < n; c++) {
        double s = 0;
        for (size_t k = 0; k <= (r < c ? r : c); k++) s += lu_L(o, n, r, k) * lu_U(o, n, k, c);
        out[i * n + c] = s;
      }
    }
    return;
  }
  for (size_t j = 0; j < n; j++) {
    size_t pj = (size_t)o[4].i[j];
    double *x = out;                      /* column j, strided */
    for (size_t r = 0; r < n; r++) {      /* L y = e_pj */
      double s = r == pj ? 1.0 : 0.0;
      for (size_t k = 0; k < r; k++) s -= lu_L(o, n, r, k) * x[k * n + j];
      x[r * n + j] = s;
    }
    for (size_t r = n; r-- > 0;) {        /* U x = y */
      double s = x[r * n + j];
      for (size_t k = r + 1; k < n; k++) s -= lu_U(o, n, r, k) * x[k * n + j];
      x[r * n + j] = s / lu_U(o, n, r, r);
    }
  }
}

static int made_mask(const rt_prep *p, int o, int i) {
  return rt_made_connected(p->iargs[0], p->iargs[1], p->iargs[2], p->iargs[3], o, i);
}

static void prep_one(const rt_prep *p, const opnd *o, double *out) {
  size_t len = (size_t)p->rows * (size_t)p->n;
  switch (p->op) {
  case RT_PREP_EXP: for (size_t k = 0; k < len; k++) out[k] = exp(at(&o[0], k)); break;
  case RT_PREP_NEG: for (size_t k = 0; k < len; k++) out[k] = -at(&o[0], k); break;
  case RT_PREP_SUM: {
    double s = 0;
    for (size_t k = 0; k < o[0].len; k++) s += at(&o[0], k);
    out[0] = s;
    break;
  }
  case RT_PREP_ADD: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) + at(&o[1], k); break;
  case RT_PREP_SUB: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) - at(&o[1], k); break;
  case RT_PREP_MUL: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) * at(&o[1], k); break;
  case RT_PREP_CONST: out[0] = p->f; break;
  case RT_PREP_LU_W: prep_lu(o, p->n, 0, out); break;
  case RT_PREP_LU_WINV: prep_lu(o, p->n, 1, out); break;
  case RT_PREP_MADE_MASK:
    for (int r = 0; r < p->rows; r++)
      for (int i = 0; i < p->n; i++)
        out[(size_t)r * p->n + i] = made_mask(p, r, i) ? at(&o[0], (size_t)r * p->n + i) : 0;
    break;
  }
}

void rt_prep_forward(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                     double *const *vals) {
  for (int q = 0; q < en->nprep; q++) {
    opnd o[5];
    get_opnds(d, en, params, (const double *const *)vals, &en->prep[q], o);
    prep_one(&en->prep[q], o, vals[q]);
  }
}

size_t rt_prep_work_size(const rt_desc *d, const rt_entry_desc *en) {
  (void)d;
  size_t w = 0;
  for (int q = 0; q < en->nprep; q++) {
    const rt_prep *p = &en->prep[q];
    if (p->op == RT_PREP_LU_W || p->op == RT_PREP_LU_WINV) {
      size_t s = 2 * (size_t)p->n * (size_t)p->n;
      if (s > w) w = s;
    }
  }
  return w;
}

/* ------------------------------------------------------------------ */
/* reverse                                                             */

/* Where the adjoint of operand a goes: a parameter's double buffer (NULL:
** not wanted, or an I64 param) or an earlier result's. */
static double *adj_of(const rt_desc *d, int a, double *const *gvals, double *const *gparams) {
  if (a < d->nparams) return d->params[a].dtype == RT_I64 || !gparams ? NULL : gparams[a];
  return gvals[a - d->nparams];
}

/* g[k] += v, k broadcast onto a [1,1] operand. */
static void acc(double *g, const opnd *o, size_t k, double v) {
  if (g) g[o->len == 1 ? 0 : k] += v;
}

/* G_A (the adjoint of A = L U) into lower, upper and log_diag. */
static void lu_back(const opnd *o, size_t n, const double *GA, double *glo, double *gup,
                    double *gld) {
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < n; j++) {
      if (i > j && glo) {                 /* (G_A U^T)[i, j], U[j, k] = 0 for k < j */
        double s = 0;
        for (size_t k = j; k < n; k++) s += GA[i * n + k] * lu_U(o, n, j, k);
        glo[i * n + j] += s;
      } else if (i <= j && (gup || gld)) { /* (L^T G_A)[i, j], L[k, i] = 0 for k < i */
        double s = 0;
        for (size_t k = i; k < n; k++) s += lu_L(o, n, k, i) * GA[k * n + j];
        if (i < j && gup) gup[i * n + j] += s;
        if (i == j && gld) acc(gld, &o[2], i, s * at(&o[3], i) * exp(at(&o[2], i)));
      }
    }
}

/* Adjoint G of W (or of V = W^-1 when inverse) back into the operands. */
static void lu_backward(const opnd *o, size_t n, int inverse, const double *V, const double *G,
                        double *glo, double *gup, double *gld, double *work) {
  double *T = work, *GW = work + n * n;
  if (inverse) {                          /* G_W = -V^T (G V^T) */
    for (size_t i = 0; i < n; i++)
      for (size_t j = 0; j < n; j++) {
        double s = 0;
        for (size_t k = 0; k < n; k++) s += G[i * n + k] * V[j * n + k];
        T[i * n + j] = s;
      }
    for (size_t i = 0; i < n; i++)
      for (size_t j = 0; j < n; j++) {
        double s = 0;
        for (size_t k = 0; k < n; k++) s += V[k * n + i] * T[k * n + j];
        GW[i * n + j] = -s;
      }
    G = GW;
  }
  for (size_t i = 0; i < n; i++)          /* G_A[perm[i], :] = G_W[i, :] */
    memcpy(T + (size_t)o[4].i[i] * n, G + i * n, n * sizeof(double));
  lu_back(o, n, T, glo, gup, gld);
}

void rt_prep_backward(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      const double *const *vals, double *const *gvals, double *const *gparams,
                      double *work) {
  for (int q = en->nprep - 1; q >= 0; q--) {
    const rt_prep *p = &en->prep[q];
    const double *g = gvals[q], *y = vals[q];
    size_t len = (size_t)p->rows * (size_t)p->n;
    opnd o[5];
    double *ga[5] = { 0 };
    get_opnds(d, en, params, vals, p, o);
    for (int a = 0; a < p->nargs && a < 5; a++) ga[a] = adj_of(d, p->args[a], gvals, gparams);
    switch (p->op) {
    case RT_PREP_EXP: for (size_t k = 0; k < len; k++) acc(ga[0], &o[0], k, g[k] * y[k]); break;
    case RT_PREP_NEG: for (size_t k = 0; k < len; k++) acc(ga[0], &o[0], k, -g[k]); break;
    case RT_PREP_SUM: for (size_t k = 0; k < o[0].len; k++) acc(ga[0], &o[0], k, g[0]); break;
    case RT_PREP_ADD:
    case RT_PREP_SUB: {
      double sg = p->op == RT_PREP_SUB ? -1.0 : 1.0;
      for (size_t k = 0; k < len; k++) {
        acc(ga[0], &o[0], k, g[k]);
        acc(ga[1], &o[1], k, sg * g[k]);
      }
      break;
    }
    case RT_PREP_MUL:
      for (size_t k = 0; k < len; k++) {
        acc(ga[0], &o[0], k, g[k] * at(&o[1], k));
        acc(ga[1], &o[1], k, g[k] * at(&o[0], k));
      }
      break;
    case RT_PREP_CONST: break;
    case RT_PREP_LU_W: case RT_PREP_LU_WINV:
      lu_backward(o, (size_t)p->n, p->op == RT_PREP_LU_WINV, y, g, ga[0], ga[1], ga[2], work);
      break;
    case RT_PREP_MADE_MASK:
      for (size_t k = 0; k < len; k++)
        if (made_mask(p, (int)(k / (size_t)p->n), (int)(k % (size_t)p->n))) acc(ga[0], &o[0], k, g[k]);
      break;
    }
  }
}
