/*
** ir/interp.c: the reference interpreter. Evaluates a graph node by node
** over the whole batch in double precision, with the plainest loops that
** state the mathematics of flow-language.md. Slow on purpose: it is the
** oracle that compiled code and optimisation passes are tested against.
*/
#include "ir.h"
#include "rt_ode.h"    /* header only: dopri5's step control, as the runtime's */
#include "rt_sde.h"    /* header only: an sde's noise, drawn as the runtime draws it */
#include "rt_temb.h"   /* header only: the time embedding, shared with the runtime */

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct val {
  long rows, n;           /* batch nodes: rows = nrows */
  double *v;
} val;

static double softplus(double x) { return fmax(x, 0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) { return 1 / (1 + exp(-x)); }

static double unary(ir_op op, double x) {
  switch (op) {
  case IR_RELU: return x > 0 ? x : 0;
  case IR_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  case IR_GELU_TANH:
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  case IR_SILU: return x * sigmoid(x);
  case IR_TANH: return tanh(x);
  case IR_ELU: return x > 0 ? x : expm1(x);
  case IR_SOFTPLUS: return softplus(x);
  case IR_LIPSWISH: return x * sigmoid(x) / 1.1;
  case IR_EXP: return exp(x);
  case IR_NEG: return -x;
  case IR_LOGSIGMOID: return -softplus(-x);
  case IR_SQUARE: return x * x;
  default: return NAN;
  }
}

/* f'(x) for each unary op. */
static double dunary(ir_op op, double x) {
  double sg = sigmoid(x), t;
  switch (op) {
  case IR_RELU: return x > 0;
  case IR_GELU: return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
  case IR_GELU_TANH: {
    double c = sqrt(2 / M_PI), u = c * (x + 0.044715 * x * x * x);
    t = tanh(u);
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
  }
  case IR_SILU: return sg * (1 + x * (1 - sg));
  case IR_TANH: t = tanh(x); return 1 - t * t;
  case IR_ELU: return x > 0 ? 1 : exp(x);
  case IR_SOFTPLUS: return sg;
  case IR_LIPSWISH: return sg * (1 + x * (1 - sg)) / 1.1;
  case IR_EXP: return exp(x);
  case IR_NEG: return -1;
  case IR_LOGSIGMOID: return sigmoid(-x);
  case IR_SQUARE: return 2 * x;
  default: return NAN;
  }
}

/* f''(x) of unary op op (IR_D2ACT): the derivative of dunary. */
static double d2unary(ir_op op, double x) {
  double sg = sigmoid(x), t;
  switch (op) {
  case IR_RELU: case IR_NEG: return 0;
  case IR_GELU: return exp(-0.5 * x * x) / sqrt(2 * M_PI) * (2 - x * x);
  case IR_GELU_TANH: {
    double c = sqrt(2 / M_PI), k = 0.044715;
    double a1 = c * (1 + 3 * k * x * x), a2 = 6 * c * k * x;
    t = tanh(c * (x + k * x * x * x));
    return (1 - t * t) * (a1 + 0.5 * x * (a2 - 2 * t * a1 * a1));
  }
  case IR_SILU: return sg * (1 - sg) * (2 + x * (1 - 2 * sg));
  case IR_LIPSWISH: return sg * (1 - sg) * (2 + x * (1 - 2 * sg)) / 1.1;
  case IR_TANH: t = tanh(x); return -2 * t * (1 - t * t);
  case IR_ELU: return x > 0 ? 0 : exp(x);
  case IR_SOFTPLUS: return sg * (1 - sg);
  case IR_EXP: return exp(x);
  case IR_LOGSIGMOID: return -sg * (1 - sg);
  case IR_SQUARE: return 2;
  default: return NAN;
  }
}

static double binary(ir_op op, double a, double b) {
  return op == IR_ADD ? a + b : op == IR_SUB ? a - b : a * b;
}

/* Element (r, j) of a, broadcasting [1,n] and [1,1] operands. */
static double at(const val *a, long r, long j) {
  if (a->rows == 1) r = 0;
  if (a->n == 1) j = 0;
  return a->v[r * a->n + j];
}

/* ---- rational-quadratic spline, section 5a ---- */

typedef struct knots {
  int K;
  double *x, *y, *d;      /* K + 1 each */
} knots;

/* Knots of one spline; free with free(kn->x). */
static void rqs_knots(const double *h, int K, double B, knots *kn) {
  const double m = 1e-3;
  kn->K = K;
  kn->x = malloc(3 * ((size_t)K + 1) * sizeof(double));
  kn->y = kn->x + K + 1;
  kn->d = kn->y + K + 1;
  for (int which = 0; which < 2; which++) {
    const double *w = h + which * K;
    double mx = w[0], s = 0;
    for (int k = 1; k < K; k++) mx = fmax(mx, w[k]);
    for (int k = 0; k < K; k++) s += exp(w[k] - mx);
    double *t = which ? kn->y : kn->x, c = 0;
    t[0] = -B;
    for (int k = 0; k < K; k++) {
      c += m + (1 - m * K) * exp(w[k] - mx) / s;
      t[k + 1] = -B + 2 * B * c;
    }
    t[K] = B;
  }
  kn->d[0] = kn->d[K] = 1;
  for (int k = 1; k < K; k++) kn->d[k] = m + softplus(h[2 * K + k - 1]);
}

static int rqs_bin(const double *t, int K, double v) {
  int k = 0;
  while (k < K - 1 && v >= t[k + 1]) k++;
  return k;
}

static double rqs_fwd(double u, const double *h, int K, double B, double *logd) {
  if (u < -B || u > B) { *logd = 0; return u; }
  knots kn;
  rqs_knots(h, K, B, &kn);
  int k = rqs_bin(kn.x, K, u);
  double w = kn.x[k + 1] - kn.x[k], hh = kn.y[k + 1] - kn.y[k], s = hh / w;
  double xi = (u - kn.x[k]) / w, q = xi * (1 - xi);
  double den = s + (kn.d[k + 1] + kn.d[k] - 2 * s) * q;
  double num = kn.d[k + 1] * xi * xi + 2 * s * q + kn.d[k] * (1 - xi) * (1 - xi);
  *logd = log(s * s * num / (den * den));
  double y = kn.y[k] + hh * (s * xi * xi + kn.d[k] * q) / den;
  free(kn.x);
  return y;
}

static double rqs_inv(double y, const double *h, int K, double B, double *logd) {
  if (y < -B || y > B) { *logd = 0; return y; }
  knots kn;
  rqs_knots(h, K, B, &kn);
  int k = rqs_bin(kn.y, K, y);
  double w = kn.x[k + 1] - kn.x[k], hh = kn.y[k + 1] - kn.y[k], s = hh / w;
  double dk = kn.d[k], dk1 = kn.d[k + 1], dy = y - kn.y[k], c2 = dk1 + dk - 2 * s;
  double a = hh * (s - dk) + dy * c2, b = hh * dk - dy * c2, c = -s * dy;
  double disc = fmax(b * b - 4 * a * c, 0);
  double xi = fmin(fmax(2 * c / (-b - sqrt(disc)), 0), 1);
  double fl;
  double u = kn.x[k] + xi * w;
  free(kn.x);
  rqs_fwd(u, h, K, B, &fl);
  *logd = -fl;
  return u;
}

/* Back through one spline value, by central differences in double: the
** oracle for the compiled, analytic rt_k_rqs_grad. gh gets 3K-1 values. */
static double rqs_grad(double x, const double *h, int K, double B, int inv, double gy,
                       double gl, double *gh) {
  int w = 3 * K - 1;
  double *hh = malloc((size_t)w * sizeof *hh), e = 1e-6, lp, lm;
  memcpy(hh, h, (size_t)w * sizeof *hh);
#define F(xx, hp, l) (inv ? rqs_inv(xx, hp, K, B, l) : rqs_fwd(xx, hp, K, B, l))
  double gx = (gy * (F(x + e, hh, &lp) - F(x - e, hh, &lm)) + gl * (lp - lm)) / (2 * e);
  for (int k = 0; k < w; k++) {
    hh[k] = h[k] + e;
    double yp = F(x, hh, &lp);
    hh[k] = h[k] - e;
    double ym = F(x, hh, &lm);
    hh[k] = h[k];
    gh[k] = (gy * (yp - ym) + gl * (lp - lm)) / (2 * e);
  }
#undef F
  free(hh);
  return gx;
}

/* ---- linear_lu: W = P L U, (P v)[i] = v[perm[i]] ---- */

static void lu_w(const val *a, double *W, int inverse) {
  long D = a[0].n;
  const double *lo = a[0].v, *up = a[1].v, *ld = a[2].v, *sg = a[3].v, *pm = a[4].v;
  double *L = calloc((size_t)(D * D), sizeof *L), *U = calloc((size_t)(D * D), sizeof *U);
  for (long i = 0; i < D; i++)
    for (long j = 0; j < D; j++) {
      L[i * D + j] = i > j ? lo[i * D + j] : i == j;
      U[i * D + j] = i < j ? up[i * D + j] : i == j ? sg[i] * exp(ld[i]) : 0;
    }
  for (long i = 0; i < D; i++) {
    long r = (long)pm[i];
    if (!inverse) {
      for (long j = 0; j < D; j++) {   /* row i of W is row perm[i] of L U */
        double s = 0;
        for (long k = 0; k < D; k++) s += L[r * D + k] * U[k * D + j];
        W[i * D + j] = s;
      }
    } else {
      /* W^-1 = U^-1 L^-1 P^-1: column i of W^-1 solves L U c = e_{perm[i]}... */
      double *c = calloc((size_t)D, sizeof *c);
      c[r] = 1;  /* P^-1 e_i has its one at perm[i] */
      for (long p = 0; p < D; p++)
        for (long k = 0; k < p; k++) c[p] -= L[p * D + k] * c[k];
      for (long p = D - 1; p >= 0; p--) {
        for (long k = p + 1; k < D; k++) c[p] -= U[p * D + k] * c[k];
        c[p] /= U[p * D + p];
      }
      for (long j = 0; j < D; j++) W[j * D + i] = c[j];
      free(c);
    }
  }
  free(L);
  free(U);
}

/* ---- residual layers ---- */

/* The largest singular value of W [R, n] by power iteration in double,
** from u (R entries) until sigma settles: an oracle independent of the
** runtime's. */
static double sigma_max(const double *W, long R, long n, const double *u0) {
  double *u = malloc((size_t)R * sizeof *u), *v = malloc((size_t)(n + 1) * sizeof *v);
  double nu = 0, sigma = 0;
  for (long r = 0; r < R; r++) nu += u0[r] * u0[r];
  for (long r = 0; r < R; r++) u[r] = nu > 0 ? u0[r] : 1;
  for (int it = 0; it < 100000; it++) {
    double nv = 0, nw = 0;
    for (long i = 0; i < n; i++) {
      v[i] = 0;
      for (long r = 0; r < R; r++) v[i] += W[r * n + i] * u[r];
      nv += v[i] * v[i];
    }
    if (nv == 0) break;
    for (long i = 0; i < n; i++) v[i] /= sqrt(nv);
    for (long r = 0; r < R; r++) {
      u[r] = 0;
      for (long i = 0; i < n; i++) u[r] += W[r * n + i] * v[i];
      nw += u[r] * u[r];
    }
    double s = sqrt(nw);   /* = u . W v after normalising u */
    for (long r = 0; r < R; r++) u[r] /= s > 0 ? s : 1;
    int done = fabs(s - sigma) <= 1e-13 * s;
    sigma = s;
    if (done) break;
  }
  free(u);
  free(v);
  return sigma;
}

/* LU with partial pivoting of A (D x D, destroyed); the inverse into inv
** when non-NULL. Returns log|det A| (-inf when singular). */
static double lu_logdet(double *A, long D, double *inv) {
  long *piv = malloc((size_t)(D + 1) * sizeof *piv);
  double ld = 0;
  for (long k = 0; k < D; k++) {
    long p = k;
    for (long i = k + 1; i < D; i++)
      if (fabs(A[i * D + k]) > fabs(A[p * D + k])) p = i;
    piv[k] = p;
    for (long j = 0; j < D && p != k; j++) {
      double t = A[k * D + j]; A[k * D + j] = A[p * D + j]; A[p * D + j] = t;
    }
    if (A[k * D + k] == 0) { free(piv); return -INFINITY; }
    ld += log(fabs(A[k * D + k]));
    for (long i = k + 1; i < D; i++) {
      double f = A[i * D + k] /= A[k * D + k];
      for (long j = k + 1; j < D; j++) A[i * D + j] -= f * A[k * D + j];
    }
  }
  for (long c = 0; inv && c < D; c++) {   /* column c of A^-1: solve P A x = e_c */
    double *x = &inv[c * D];              /* stored as a row for now */
    for (long i = 0; i < D; i++) x[i] = i == c;
    for (long k = 0; k < D; k++) { double t = x[k]; x[k] = x[piv[k]]; x[piv[k]] = t; }
    for (long i = 0; i < D; i++)
      for (long j = 0; j < i; j++) x[i] -= A[i * D + j] * x[j];
    for (long i = D - 1; i >= 0; i--) {
      for (long j = i + 1; j < D; j++) x[i] -= A[i * D + j] * x[j];
      x[i] /= A[i * D + i];
    }
  }
  free(piv);
  return ld;   /* inv holds (A^-1)^T row-major: row c is column c of A^-1 */
}

/* IR_LOGDET (gout NULL) or IR_LOGDET_GRAD: log|det(I + X)| per row, or
** g (I + X)^-T. */
static void logdet_rows(const val *a, long D, const val *g, double *out) {
  double *A = malloc((size_t)(D * D + 1) * sizeof *A), *T = malloc((size_t)(D * D + 1) * sizeof *T);
  for (long r = 0; r < a->rows; r++) {
    for (long k = 0; k < D * D; k++) A[k] = a->v[r * D * D + k] + (k % (D + 1) == 0);
    double ld = lu_logdet(A, D, g ? T : NULL);
    if (!g) out[r] = ld;
    else for (long k = 0; k < D * D; k++) out[r * D * D + k] = g->v[r] * T[k];
  }
  free(A);
  free(T);
}

/* ---- evaluation ---- */

static void eval(const ir_node *x, val *V, long B) {
  val *o = &V[x->id];
  const val *a = x->nargs > 0 ? &V[x->args[0]->id] : NULL;
  const val *b = x->nargs > 1 ? &V[x->args[1]->id] : NULL;
  long R = o->rows, n = o->n;
  if (ir_is_unary(x->op)) {
    for (long i = 0; i < R * n; i++) o->v[i] = unary(x->op, a->v[i]);
  } else if (ir_is_binary(x->op)) {
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) o->v[r * n + j] = binary(x->op, at(a, r, j), at(b, r, j));
  } else switch (x->op) {
  case IR_CONST: o->v[0] = x->f0; break;
  case IR_LINEAR:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) {
        double s = x->nargs > 2 ? V[x->args[2]->id].v[j] : 0;
        for (long i = 0; i < a->n; i++) s += a->v[r * a->n + i] * b->v[j * a->n + i];
        o->v[r * n + j] = s;
      }
    break;
  case IR_SLICE:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) o->v[r * n + j] = a->v[r * a->n + x->i0 + j];
    break;
  case IR_CONCAT:
    for (long r = 0; r < R; r++) {
      for (long j = 0; j < a->n; j++) o->v[r * n + j] = a->v[r * a->n + j];
      for (long j = 0; j < b->n; j++) o->v[r * n + a->n + j] = b->v[r * b->n + j];
    }
    break;
  case IR_GATHER:
    for (long r = 0; r < R; r++)
      for (long i = 0; i < n; i++) {
        long p = x->idx ? x->idx[i] : (long)b->v[i];
        if (x->i1) o->v[r * n + p] = a->v[r * a->n + i];
        else o->v[r * n + i] = a->v[r * a->n + p];
      }
    break;
  case IR_RQS: {
    long m = a->n, w = 3 * x->i0 - 1;
    for (long r = 0; r < R; r++)
      for (long j = 0; j < m; j++) {
        const double *h = &b->v[r * b->n + j * w];
        double ld, u = a->v[r * m + j];
        o->v[r * n + j] = x->i1 ? rqs_inv(u, h, x->i0, x->f0, &ld) : rqs_fwd(u, h, x->i0, x->f0, &ld);
        o->v[r * n + m + j] = ld;
      }
    break;
  }
  case IR_ROWSUM:
    for (long r = 0; r < R; r++) {
      double s = 0;
      long cols = x->batch ? a->n : a->rows * a->n;
      for (long j = 0; j < cols; j++) s += a->v[r * a->n + j];
      o->v[r] = s;
    }
    break;
  case IR_MADE_MASK:
    for (long r = 0; r < R; r++)
      for (long i = 0; i < n; i++)
        o->v[r * n + i] = ir_made_connected(x->i0, x->i1, x->i2, (int)x->f0, (int)r, (int)i)
                              ? a->v[r * n + i] : 0;
    break;
  case IR_LU_W: case IR_LU_WINV: {
    val args[5];
    for (int i = 0; i < 5; i++) args[i] = V[x->args[i]->id];
    lu_w(args, o->v, x->op == IR_LU_WINV);
    break;
  }
  case IR_DACT:
    for (long i = 0; i < R * n; i++) o->v[i] = dunary((ir_op)x->i0, a->v[i]);
    break;
  case IR_D2ACT:
    for (long i = 0; i < R * n; i++) o->v[i] = d2unary((ir_op)x->i0, a->v[i]);
    break;
  case IR_SPECNORM: {
    double sigma = sigma_max(a->v, R, n, b->v), div = fmax(1, sigma / x->f0);
    for (long i = 0; i < R * n; i++) o->v[i] = a->v[i] / div;
    break;
  }
  case IR_PSCALE:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) o->v[r * n + j] = a->v[r * n + j] * b->v[x->i0 ? j : r];
    break;
  case IR_PGATHER:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) o->v[r * n + j] = a->v[x->idx[r] * a->n + x->idx[R + j]];
    break;
  case IR_TEMB:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++)
        o->v[r * n + j] = rt_temb_value(x->i1, (int)n, (int)j, a ? a->v[r] : x->f0 + (double)r * x->f1);
    break;
  case IR_TRACE_COEF: {   /* ir.h: c_h or Q[k,h] */
    const val *W0 = a, *W1 = b, *W2 = x->nargs > 2 ? &V[x->args[2]->id] : NULL;
    for (long k = 0; k < R; k++)
      for (long h = 0; h < n; h++) {
        double sum = 0;
        for (long i = 0; i < x->i0; i++)
          sum += (W2 ? W2->v[i * W2->n + k] : W1->v[i * W1->n + h]) * W0->v[h * W0->n + i];
        o->v[k * n + h] = W2 ? W1->v[k * W1->n + h] * sum : sum;
      }
    break;
  }
  case IR_ODE_CTRL:
    for (long r = 0; r < R; r++)
      rt_ode_ctrl(&a->v[r * n], &b->v[r * b->n], &V[x->args[2]->id].v[r * b->n], b->n, x->f0,
                  x->f1, x->i0, &o->v[r * n]);
    break;
  case IR_LOGDET: logdet_rows(a, x->i0, NULL, o->v); break;
  case IR_LOGDET_GRAD: logdet_rows(a, x->i0, b, o->v); break;
  case IR_STOPGRAD: case IR_FIX_BEGIN: case IR_FIX_END:
    for (long i = 0; i < R * n; i++) o->v[i] = (x->op == IR_FIX_END ? b : a)->v[i];
    break;
  case IR_LINEAR_T:
    for (long r = 0; r < R; r++)
      for (long i = 0; i < n; i++) {
        double s = 0;
        for (long j = 0; j < a->n; j++) s += a->v[r * a->n + j] * b->v[j * n + i];
        o->v[r * n + i] = s;
      }
    break;
  case IR_PAD:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < a->n; j++) o->v[r * n + x->i0 + j] = a->v[r * a->n + j];
    break;
  case IR_BCAST:
    for (long r = 0; r < R; r++)
      for (long j = 0; j < n; j++) o->v[r * n + j] = a->v[r];
    break;
  case IR_RQS_GRAD: {
    long m = a->n, w = 3 * x->i0 - 1;
    const val *gy = &V[x->args[2]->id], *gl = &V[x->args[3]->id];
    for (long r = 0; r < R; r++)
      for (long j = 0; j < m; j++)
        o->v[r * n + j] = rqs_grad(a->v[r * m + j], &b->v[r * b->n + j * w], x->i0, x->f0, x->i1,
                                   gy->v[r * m + j], gl->v[r * m + j], &o->v[r * n + m + j * w]);
    break;
  }
  default: break;
  }
  (void)B;
}

/* A sink adds its row sums into the gradient of its target. */
static void sink(const ir_program *p, const ir_node *x, const val *V, long R, double *const *grads) {
  const ir_node *t = x->args[x->nargs - 1];
  double *g = grads ? grads[ir_grad_slot(p, t)] : NULL;
  if (!g) return;
  const val *a = &V[x->args[0]->id], *b = x->nargs == 3 ? &V[x->args[1]->id] : NULL;
  if (x->op == IR_ACC_OUTER) {
    for (long r = 0; r < R; r++)
      for (long o = 0; o < a->n; o++)
        for (long i = 0; i < b->n; i++) g[o * b->n + i] += a->v[r * a->n + o] * b->v[r * b->n + i];
    return;
  }
  int all = t->rows * t->n == 1;
  for (long r = 0; r < R; r++)
    for (long j = 0; j < a->n; j++)
      g[all ? 0 : j] += a->v[r * a->n + j] * (b ? b->v[r * b->n + j] : 1);
}

/* A coordinate has settled when it moves by less than tol, or by less than
** two float32 steps at its size: float32 code cannot resolve finer. */
static double fix_tol(double tol, double y) { return fmax(tol, 2 * FLT_EPSILON * fabs(y)); }

/*
** The end of a fixed-point loop after `done` runs of its body: rows that
** moved by tol or more take ynew as their next y; the others keep y, so
** their ynew stays what it is. Returns 1 to run the body again, 0 when
** every row has settled, -1 when some have not after i0 runs.
*/
static int fix_next(const ir_node *x, val *V, int done) {
  val *y = &V[x->args[0]->id];
  const val *yn = &V[x->args[1]->id];
  if (x->i2 == 1) {   /* counted: every row takes ynew, i0 runs */
    memcpy(y->v, yn->v, (size_t)(y->rows * y->n) * sizeof(double));
    return done < x->i0;
  }
  long moving = 0;
  for (long r = 0; r < y->rows; r++) {
    int move = 0;
    for (long j = 0; j < y->n; j++) {
      double d = fabs(yn->v[r * y->n + j] - y->v[r * y->n + j]);
      /* NaN counts as moving */
      move |= x->i2 == 2 ? !(d == 0) : !(d < fix_tol(x->f0, y->v[r * y->n + j]));
    }
    if (move) {
      moving++;
      memcpy(&y->v[r * y->n], &yn->v[r * y->n], (size_t)y->n * sizeof(double));
    }
  }
  if (!moving) return 0;
  return done < x->i0 ? 1 : -1;
}

/* The sde's normals of run `runs` from each row's key (float32 inputs,
** hashed by their bits as the kernels do). */
static void sde_noise(const ir_node *x, val *V, int runs) {
  const val *k = &V[x->args[0]->id];
  val *o = &V[x->id];
  float *kf = malloc((size_t)(k->n + 1) * sizeof *kf);
  for (long r = 0; r < o->rows; r++) {
    for (long j = 0; j < k->n; j++) kf[j] = (float)k->v[r * k->n + j];
    uint64_t key = rt_sde_key(kf, k->n, x->i0);
    for (long j0 = 0; j0 < o->n; j0 += RT_K_SDE_CHUNK) {
      long m = o->n - j0 < RT_K_SDE_CHUNK ? o->n - j0 : RT_K_SDE_CHUNK;
      rt_sde_normals_from(key, runs, j0, m, &o->v[r * o->n + j0]);
    }
  }
  free(kf);
}

/* A staircase linear sums each row only up to its prefix: the reference
** sums it all, and insists that the rest of the row is zero. */
static int stair_check(const ir_node *x, const val *V, char *err, size_t errlen) {
  const val *W = &V[x->args[1]->id];
  for (long o = 0; o < W->rows; o++)
    for (long i = x->idx[o] < 0 ? 0 : x->idx[o]; i < W->n; i++)
      if (W->v[o * W->n + i] != 0 || x->idx[o] < 0) {
        snprintf(err, errlen, "interp: node %d: staircase linear's weight [%ld, %ld] past its "
                 "row prefix %d is %g, not 0", x->id, o, i, x->idx[o], W->v[o * W->n + i]);
        return -1;
      }
  return 0;
}

static int interp(const ir_program *p, const ir_graph *g, const void *const *params,
                  long nrows, const double *in, const double *ctx, const double *noise,
                  double *out0, double *out1, double *const *grads, char *err, size_t errlen) {
  val *V = calloc((size_t)g->nnodes, sizeof *V);
  int *runs = calloc((size_t)g->nnodes + 1, sizeof *runs);   /* by IR_FIX_BEGIN: body runs */
  int rc = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const ir_node *x = g->nodes[i];
    if (x->id != i) { snprintf(err, errlen, "interp: graph not numbered"); rc = -1; break; }
    V[i].rows = x->batch ? nrows : x->rows;
    V[i].n = x->n;
    if (!V[i].v) V[i].v = calloc((size_t)(V[i].rows * x->n + 1), sizeof(double));
    if (x->op == IR_FIX_BEGIN) runs[i] = 0;   /* entered afresh (an inner loop: per outer run) */
    if (x->op == IR_INPUT) {
      const double *src = x->i0 == 0 ? in : x->i0 == 1 ? ctx : noise;
      if (!src) { snprintf(err, errlen, "interp: no data for input slot %d", x->i0); rc = -1; break; }
      memcpy(V[i].v, src, (size_t)(nrows * x->n) * sizeof(double));
    } else if (x->op == IR_PARAM) {
      const ir_param *pa = &p->params[x->i0];
      for (long k = 0; k < V[i].rows * x->n; k++)
        V[i].v[k] = pa->dtype == IR_F32 ? ((const float *)params[x->i0])[k]
                                        : (double)((const int64_t *)params[x->i0])[k];
    } else if (x->op == IR_SDE_NOISE) {
      sde_noise(x, V, runs[x->args[1]->id]);
    } else if (x->op == IR_LOOP_ROW) {
      const val *t = &V[x->args[0]->id];
      long k = runs[x->args[1]->id] < t->rows ? runs[x->args[1]->id] : t->rows - 1;
      memcpy(V[i].v, &t->v[k * x->n], (size_t)x->n * sizeof(double));
    } else if (ir_is_sink(x->op)) {
      sink(p, x, V, nrows, grads);
    } else {
      eval(x, V, nrows);
      if (x->op == IR_LINEAR && x->idx && (rc = stair_check(x, V, err, errlen))) break;
    }
    if (x->op == IR_FIX_END) {
      int next = fix_next(x, V, ++runs[x->args[0]->id]);
      if (next < 0) {
        if (x->i2 == 2)
          snprintf(err, errlen, "layer %d (cnf): dopri5 needed more than max_steps = %d steps",
                   x->i1, x->i0);
        else
          snprintf(err, errlen, "layer %d (residual): the fixed-point inverse did not converge "
                   "within %d iterations (tol %g)", x->i1, x->i0, x->f0);
        rc = -1;
        break;
      }
      if (next) i = x->args[0]->id;   /* the body again */
    }
  }
  double *outs[2] = {out0, out1};
  for (int k = 0; k < g->nouts && !rc; k++) {
    const val *o = &V[g->outs[k]->id];
    if (outs[k]) memcpy(outs[k], o->v, (size_t)(nrows * o->n) * sizeof(double));
  }
  for (int i = 0; i < g->nnodes; i++) free(V[i].v);
  free(V);
  free(runs);
  return rc;
}

int ir_interp(const ir_program *p, const ir_graph *g, const void *const *params,
              long nrows, const double *in, const double *ctx,
              double *out0, double *out1, char *err, size_t errlen) {
  return interp(p, g, params, nrows, in, ctx, NULL, out0, out1, NULL, err, errlen);
}

int ir_interp_grads(const ir_program *p, const ir_graph *g, const void *const *params,
                    long nrows, const double *in, const double *ctx, double *out0,
                    double *const *grads, char *err, size_t errlen) {
  return interp(p, g, params, nrows, in, ctx, NULL, out0, NULL, grads, err, errlen);
}

int ir_interp_noise(const ir_program *p, const ir_graph *g, const void *const *params,
                    long nrows, const double *in, const double *ctx, const double *noise,
                    double *out0, double *const *grads, char *err, size_t errlen) {
  return interp(p, g, params, nrows, in, ctx, noise, out0, NULL, grads, err, errlen);
}
