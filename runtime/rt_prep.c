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
**
** scale (y[r][c] = W[r][c] s[j], j = r or c) goes back as
**   G_W[r][c] = G[r][c] s[j],  G_s[j] = the sum of G[r][c] W[r][c] over its row or column;
** linear (y = x W^T + b, x [r, in], W [out, in]) goes back as
**   G_x = G W,  G_W = G^T x,  G_b = the column sums of G;
** temb is a function of constants only and gets nothing.
**
** trace_coef (rt.h; Z = the first D columns of W0 [H0, in]) goes back as
**   nargs 2, c[h] = sum_i W1[i][h] Z[h][i]:
**     G_W1[i][h] = G[h] Z[h][i],  G_Z[h][i] = G[h] W1[i][h];
**   nargs 3, Q = W1 .* P, P[k][h] = sum_i W2[i][k] Z[h][i], with
**   G_P = G .* W1:
**     G_W1 = G .* P,  G_W2[i][k] = sum_h G_P[k][h] Z[h][i],
**     G_Z[h][i] = sum_k G_P[k][h] W2[i][k];
** the columns of W0 from D on get nothing.
**
** Spectral normalisation (rt.h, RT_PREP_SPECNORM) keeps u, v and sigma of
** its forward run in a tail after its result, so the reverse needs no
** recomputation and the power iteration allocates nothing.
*/
#include "rt_internal.h"
#include "rt_made.h"
#include "rt_temb.h"

#include <math.h>
#include <string.h>

/* An operand: a float or int64 param, or an earlier result (double). */
typedef struct opnd { const float *f; const int64_t *i; const double *d; size_t len, cols; } opnd;

static double at(const opnd *o, size_t k) {
  if (o->len == 1) k = 0;                 /* [1,1] broadcast */
  return o->d ? o->d[k] : o->f ? (double)o->f[k] : (double)o->i[k];
}

static opnd get_opnd(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                     const double *const *vals, int a) {
  opnd o = { 0, 0, 0, 0, 0 };
  if (a < d->nparams) {
    int r, n;
    rt_param_rows_n(&d->params[a], &r, &n);
    o.cols = (size_t)n;
    o.len = rt_param_numel(&d->params[a]);
    if (d->params[a].dtype == RT_I64) o.i = params[a];
    else o.f = params[a];
  } else {
    const rt_prep *p = &en->prep[a - d->nparams];
    o.d = vals[a - d->nparams];
    o.cols = (size_t)p->n;
    o.len = (size_t)p->rows * (size_t)p->n;
  }
  return o;
}

static void get_opnds(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      const double *const *vals, const rt_prep *p, opnd o[5]) {
  for (int a = 0; a < p->nargs && a < 5; a++) o[a] = get_opnd(d, en, params, vals, p->args[a]);
}

/* The element of operand o that element k of gather p reads. */
static size_t gather_at(const rt_desc *d, const rt_prep *p, const opnd *o, size_t k) {
  const int *I = d->idx + p->iargs[0];
  size_t a = k / (size_t)p->n, b = k % (size_t)p->n;
  return (size_t)I[a] * o->cols + (size_t)I[p->rows + b];
}

/* The element of s that element k of a scale op multiplies by. */
static size_t scale_at(const rt_prep *p, size_t k) {
  return p->iargs[0] ? k % (size_t)p->n : k / (size_t)p->n;
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

/* ------------------------------------------------------------------ */
/* spectral normalisation                                              */

/* W [out, in] as floats (a parameter) or doubles (a prep result). */
typedef struct snmat { const float *f; const double *d; size_t out, in; } snmat;

/* Entry k of the fixed start vector: a Weyl sequence in [0.5, 1.5), not
** orthogonal to anything structured; computed, so it needs no buffer. */
static double sn_fixed(size_t k) {
  double x = (double)(k + 1) * 0.61803398874989484820;
  return 0.5 + (x - floor(x));
}

/* y[in] = W^T x[out]; x NULL: the fixed vector. */
static void sn_mtv(const snmat *A, const double *x, double *y) {
  for (size_t i = 0; i < A->in; i++) y[i] = 0;
  for (size_t o = 0; o < A->out; o++) {
    double xo = x ? x[o] : sn_fixed(o);
    if (xo == 0) continue;
    if (A->d) for (size_t i = 0; i < A->in; i++) y[i] += A->d[o * A->in + i] * xo;
    else for (size_t i = 0; i < A->in; i++) y[i] += (double)A->f[o * A->in + i] * xo;
  }
}

/* y[out] = W x[in] */
static void sn_mv(const snmat *A, const double *x, double *y) {
  for (size_t o = 0; o < A->out; o++) {
    double s = 0;
    if (A->d) for (size_t i = 0; i < A->in; i++) s += A->d[o * A->in + i] * x[i];
    else for (size_t i = 0; i < A->in; i++) s += (double)A->f[o * A->in + i] * x[i];
    y[o] = s;
  }
}

/* x /= |x| unless x == 0; returns |x|. */
static double sn_normalize(double *x, size_t n) {
  double s = 0;
  for (size_t k = 0; k < n; k++) s += x[k] * x[k];
  s = sqrt(s);
  if (s > 0)
    for (size_t k = 0; k < n; k++) x[k] /= s;
  return s;
}

/* One torch step: v = W^T u / |.|, u = W v / |.|, sigma = u . W v = |W v|.
** When W^T u = 0 it starts from the fixed vector; when that gives 0 too
** (W = 0), sigma = 0, v = 0 and u is left as it was. */
static double sn_step(const snmat *A, double *u, double *v) {
  sn_mtv(A, u, v);
  if (sn_normalize(v, A->in) == 0) {
    sn_mtv(A, NULL, v);
    if (sn_normalize(v, A->in) == 0) return 0;
  }
  double *w = u;                          /* W v, then normalised in place */
  sn_mv(A, v, w);
  return sn_normalize(w, A->out);
}

/* Steps until sigma changes by < 1e-12 relative (at most RT_SN_MAX_ITERS):
** sigma converges even where u and v do so slowly (two close top singular
** values), and the cap bounds the time. The start gets 1e-6 of the fixed
** vector added, so that a u exactly orthogonal to the top singular vector
** (diag(2, 1) from e_2) cannot make it converge to a smaller one; from a
** nearly converged u that costs a few steps. */
static int sn_zero(const snmat *A) {
  for (size_t k = 0; k < A->out * A->in; k++)
    if (A->d ? A->d[k] != 0 : A->f[k] != 0) return 0;
  return 1;
}

static double sn_converge(const snmat *A, double *u, double *v) {
  if (sn_zero(A)) {                       /* sigma 0, u kept */
    for (size_t i = 0; i < A->in; i++) v[i] = 0;
    return 0;
  }
  double nu = 0, nf = 0;
  for (size_t k = 0; k < A->out; k++) {
    nu += u[k] * u[k];
    nf += sn_fixed(k) * sn_fixed(k);
  }
  for (size_t k = 0; k < A->out && nu > 0; k++) u[k] += 1e-6 * sqrt(nu / nf) * sn_fixed(k);
  double sigma = sn_step(A, u, v);
  for (int it = 1; it < RT_SN_MAX_ITERS && sigma > 0; it++) {
    double prev = sigma;
    sigma = sn_step(A, u, v);
    if (fabs(sigma - prev) <= 1e-12 * sigma) break;
  }
  return sigma;
}

double rt_specnorm_sigma(const double *W, int out, int in, double *u, double *v) {
  snmat A = { NULL, W, (size_t)(out > 0 ? out : 0), (size_t)(in > 0 ? in : 0) };
  return sn_converge(&A, u, v);
}

double rt_specnorm_step(const double *W, int out, int in, double *u, double *v) {
  snmat A = { NULL, W, (size_t)(out > 0 ? out : 0), (size_t)(in > 0 ? in : 0) };
  return sn_step(&A, u, v);
}

size_t rt_prep_val_len(const rt_prep *p) {
  size_t len = (size_t)p->rows * (size_t)p->n;
  if (p->op == RT_PREP_SPECNORM) len += 2 + 2 * (size_t)p->rows + (size_t)p->n;
  return len;
}

/* The tail of a specnorm value (rt.h): sigma, divisor, u, v, u0. */
typedef struct sntail { double *sigma, *div, *u, *v, *u0; } sntail;

static sntail sn_tail(const rt_prep *p, double *val) {
  size_t out = (size_t)p->rows, in = (size_t)p->n;
  double *t = val + out * in;
  sntail s = { t, t + 1, t + 2, t + 2 + out, t + 2 + out + in };
  return s;
}

/* W / max(1, sigma / c); mode 1 writes the stepped u into its parameter. */
static void prep_specnorm(const rt_prep *p, const opnd *o, float *uparam, double *val) {
  size_t out = (size_t)p->rows, in = (size_t)p->n, len = out * in;
  snmat A = { o[0].f, o[0].d, out, in };
  sntail t = sn_tail(p, val);
  for (size_t k = 0; k < out; k++) t.u[k] = t.u0[k] = at(&o[1], k);
  double sigma = p->iargs[0] == 1 ? sn_step(&A, t.u, t.v) : sn_converge(&A, t.u, t.v);
  if (sigma == 0)
    for (size_t k = 0; k < in; k++) t.v[k] = 0;
  *t.sigma = sigma;
  *t.div = sigma > p->f ? sigma / p->f : 1.0;
  for (size_t k = 0; k < len; k++) val[k] = at(&o[0], k) / *t.div;
  if (p->iargs[0] == 1 && uparam)
    for (size_t k = 0; k < out; k++) uparam[k] = (float)t.u[k];
}

/* y [r, out] = x [r, in] W[out, in]^T (+ b [1, out] when nargs == 3). */
static void prep_linear(const rt_prep *p, const opnd *o, double *out) {
  size_t R = (size_t)p->rows, N = (size_t)p->n, I = o[1].cols;
  for (size_t r = 0; r < R; r++)
    for (size_t j = 0; j < N; j++) {
      double s = p->nargs > 2 ? at(&o[2], j) : 0.0;
      for (size_t i = 0; i < I; i++) s += at(&o[0], r * I + i) * at(&o[1], j * I + i);
      out[r * N + j] = s;
    }
}

/* P[k][h] = sum_{i<D} W2[i][k] W0[h][i] (nargs 3; o[2] W2 [D, H1]), or
** c[h] = sum_{i<D} W1[i][h] W0[h][i] (nargs 2, k = 0; o[1] W1 [D, H0]). */
static double trace_p(const rt_prep *p, const opnd *o, size_t k, size_t h) {
  size_t D = (size_t)p->iargs[0], H0 = (size_t)p->n, in = o[0].cols, H1 = (size_t)p->rows;
  double s = 0;
  for (size_t i = 0; i < D; i++)
    s += (p->nargs > 2 ? at(&o[2], i * H1 + k) : at(&o[1], i * H0 + h)) * at(&o[0], h * in + i);
  return s;
}

/* c [1, H0] or Q [H1, H0] = W1 .* P. */
static void prep_trace_coef(const rt_prep *p, const opnd *o, double *out) {
  size_t H1 = (size_t)p->rows, H0 = (size_t)p->n;
  for (size_t k = 0; k < H1; k++)
    for (size_t h = 0; h < H0; h++) {
      double P = trace_p(p, o, k, h);
      out[k * H0 + h] = p->nargs > 2 ? at(&o[1], k * H0 + h) * P : P;
    }
}

/* Row r: the embedding of t_r = f + r * f2. */
static void prep_temb(const rt_prep *p, double *out) {
  for (int r = 0; r < p->rows; r++) {
    double t = p->f + (double)r * p->f2;
    for (int j = 0; j < p->n; j++)
      out[(size_t)r * (size_t)p->n + (size_t)j] = rt_temb_value(p->iargs[0], p->n, j, t);
  }
}

static void prep_one(const rt_desc *d, const rt_prep *p, const opnd *o, double *out) {
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
  case RT_PREP_SPECNORM: break;           /* prep_specnorm */
  case RT_PREP_GATHER:
    for (size_t k = 0; k < len; k++) out[k] = at(&o[0], gather_at(d, p, &o[0], k));
    break;
  case RT_PREP_LINEAR: prep_linear(p, o, out); break;
  case RT_PREP_TEMB: prep_temb(p, out); break;
  case RT_PREP_TRACE_COEF: prep_trace_coef(p, o, out); break;
  case RT_PREP_SCALE:
    for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) * at(&o[1], scale_at(p, k));
    break;
  }
}

void rt_prep_forward(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                     double *const *vals) {
  for (int q = 0; q < en->nprep; q++) {
    const rt_prep *p = &en->prep[q];
    opnd o[5];
    get_opnds(d, en, params, (const double *const *)vals, p, o);
    if (p->op == RT_PREP_SPECNORM) prep_specnorm(p, o, params[p->args[1]], vals[q]);
    else prep_one(d, p, o, vals[q]);
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

/* dW += G, or (c / sigma) (G - (sum(G .* W) / sigma) u v^T) when sigma > c. */
static void specnorm_back(const rt_prep *p, const opnd *o, const double *val, const double *g,
                          double *gw) {
  if (!gw) return;
  size_t out = (size_t)p->rows, in = (size_t)p->n, len = out * in;
  sntail t = sn_tail(p, (double *)val);
  if (*t.div == 1.0) {
    for (size_t k = 0; k < len; k++) acc(gw, &o[0], k, g[k]);
    return;
  }
  double sigma = *t.sigma, gdotw = 0;
  for (size_t k = 0; k < len; k++) gdotw += g[k] * at(&o[0], k);
  for (size_t r = 0; r < out; r++)
    for (size_t i = 0; i < in; i++) {
      size_t k = r * in + i;
      acc(gw, &o[0], k, (g[k] - gdotw / sigma * t.u[r] * t.v[i]) / *t.div);
    }
}

/* The adjoint G [r, out] of y = x W^T + b into x, W and b (each NULL: not
** wanted). */
static void linear_back(const rt_prep *p, const opnd *o, const double *G, double *gx,
                        double *gw, double *gb) {
  size_t R = (size_t)p->rows, N = (size_t)p->n, I = o[1].cols;
  for (size_t r = 0; r < R; r++)
    for (size_t j = 0; j < N; j++) {
      double g = G[r * N + j];
      if (p->nargs > 2) acc(gb, &o[2], j, g);
      for (size_t i = 0; i < I; i++) {
        acc(gx, &o[0], r * I + i, g * at(&o[1], j * I + i));
        acc(gw, &o[1], j * I + i, g * at(&o[0], r * I + i));
      }
    }
}

/* The adjoint G of c [1, H0] or Q [H1, H0] into W0, W1 (and W2) (each
** NULL: not wanted); P is recomputed, nothing is allocated. */
static void trace_coef_back(const rt_prep *p, const opnd *o, const double *G, double *gw0,
                            double *gw1, double *gw2) {
  size_t D = (size_t)p->iargs[0], H0 = (size_t)p->n, in = o[0].cols, H1 = (size_t)p->rows;
  int three = p->nargs > 2;
  for (size_t k = 0; k < H1; k++)
    for (size_t h = 0; h < H0; h++) {
      double g = G[k * H0 + h];
      if (three) {                        /* G_W1 = G .* P; then G_P = G .* W1 */
        if (gw1) acc(gw1, &o[1], k * H0 + h, g * trace_p(p, o, k, h));
        g *= at(&o[1], k * H0 + h);
      }
      for (size_t i = 0; i < D; i++) {
        size_t zi = h * in + i;
        if (three) {
          acc(gw2, &o[2], i * H1 + k, g * at(&o[0], zi));
          acc(gw0, &o[0], zi, g * at(&o[2], i * H1 + k));
        } else {
          acc(gw1, &o[1], i * H0 + h, g * at(&o[0], zi));
          acc(gw0, &o[0], zi, g * at(&o[1], i * H0 + h));
        }
      }
    }
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
    case RT_PREP_GATHER:
      for (size_t k = 0; k < len; k++) acc(ga[0], &o[0], gather_at(d, p, &o[0], k), g[k]);
      break;
    case RT_PREP_SPECNORM:                /* u is held constant: no adjoint */
      specnorm_back(p, o, y, g, ga[0]);
      break;
    case RT_PREP_LINEAR: linear_back(p, o, g, ga[0], ga[1], ga[2]); break;
    case RT_PREP_TEMB: break;             /* constants only */
    case RT_PREP_TRACE_COEF: trace_coef_back(p, o, g, ga[0], ga[1], ga[2]); break;
    case RT_PREP_SCALE:
      for (size_t k = 0; k < len; k++) {
        size_t j = scale_at(p, k);
        acc(ga[0], &o[0], k, g[k] * at(&o[1], j));
        acc(ga[1], &o[1], j, g[k] * at(&o[0], k));
      }
      break;
    }
  }
}
