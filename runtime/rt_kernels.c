/*
** runtime/rt_kernels.c: helpers that generated kernels call.
**
** rt_k_rqs / rt_k_rqs_inv follow flow-language.md 5a (nflows'
** unconstrained_rational_quadratic_spline, linear tails) in double
** precision; no storage is needed: the knots are accumulated on the fly.
*/
#include "rt_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define RQS_MIN 1e-3

/* Stable softmax pieces of a raw row: its max and sum of exp(r - max). */
static void softmax_stats(const float *r, int64_t K, double *mx, double *sum) {
  double m = r[0];
  for (int64_t k = 1; k < K; k++) if (r[k] > m) m = r[k];
  double s = 0;
  for (int64_t k = 0; k < K; k++) s += exp((double)r[k] - m);
  *mx = m;
  *sum = s;
}

static double softplus(double x) {
  return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

/* Knot derivative delta_k, k in [0, K]. */
static double knot_deriv(const float *e, int64_t K, int64_t k) {
  if (k == 0 || k == K) return 1.0;
  return RQS_MIN + softplus((double)e[k - 1]);
}

/* The knots of one axis: raw row r (K values), bound B. Why this shape:
** the bin of value t is found by accumulating widths until the next knot
** passes t; a point on a knot goes to the bin on its right, and the last
** bin also keeps t == B. */
typedef struct axis { const float *r; int64_t K; double B, mx, sum, scale; } axis;

static void axis_init(axis *a, const float *r, int64_t K, double B) {
  a->r = r;
  a->K = K;
  a->B = B;
  softmax_stats(r, K, &a->mx, &a->sum);
  a->scale = 1.0 - RQS_MIN * (double)K;
}

static double axis_width(const axis *a, int64_t k) {
  return RQS_MIN + a->scale * exp((double)a->r[k] - a->mx) / a->sum;
}

/* Finds the bin of t; stores its knots. */
static int64_t axis_find(const axis *a, double t, double *lo, double *hi) {
  double cum = 0, left = -a->B;
  for (int64_t k = 0; k < a->K; k++) {
    cum += axis_width(a, k);
    double right = k == a->K - 1 ? a->B : -a->B + 2 * a->B * cum;
    if (t < right || k == a->K - 1) { *lo = left; *hi = right; return k; }
    left = right;
  }
  return 0;                                   /* not reached: K >= 1 */
}

/* Knots of bin k. */
static void axis_knots(const axis *a, int64_t k, double *lo, double *hi) {
  double cum = 0;
  for (int64_t i = 0; i < k; i++) cum += axis_width(a, i);
  *lo = k == 0 ? -a->B : -a->B + 2 * a->B * cum;
  cum += axis_width(a, k);
  *hi = k == a->K - 1 ? a->B : -a->B + 2 * a->B * cum;
}

/* log dy/dx of the bin's rational quadratic at xi. */
static double rq_logd(double s, double d0, double d1, double xi) {
  double om = 1 - xi;
  double den = s + (d1 + d0 - 2 * s) * xi * om;
  double num = s * s * (d1 * xi * xi + 2 * s * xi * om + d0 * om * om);
  return log(num) - 2 * log(den);
}

float rt_k_rqs(float xf, const float *h, int64_t K, float bound, float *logd) {
  double x = xf, B = bound;
  if (!(x >= -B && x <= B) || K < 1) { *logd = 0; return xf; }
  axis ax, ay;
  axis_init(&ax, h, K, B);
  axis_init(&ay, h + K, K, B);
  double x0, x1, y0, y1;
  int64_t k = axis_find(&ax, x, &x0, &x1);
  axis_knots(&ay, k, &y0, &y1);
  double d0 = knot_deriv(h + 2 * K, K, k), d1 = knot_deriv(h + 2 * K, K, k + 1);
  double w = x1 - x0, hh = y1 - y0, s = hh / w;
  double xi = (x - x0) / w;
  if (xi < 0) xi = 0;
  if (xi > 1) xi = 1;
  double om = 1 - xi;
  double den = s + (d1 + d0 - 2 * s) * xi * om;
  double y = y0 + hh * (s * xi * xi + d0 * xi * om) / den;
  *logd = (float)rq_logd(s, d0, d1, xi);
  return (float)y;
}

float rt_k_rqs_inv(float yf, const float *h, int64_t K, float bound, float *logd) {
  double y = yf, B = bound;
  if (!(y >= -B && y <= B) || K < 1) { *logd = 0; return yf; }
  axis ax, ay;
  axis_init(&ax, h, K, B);
  axis_init(&ay, h + K, K, B);
  double x0, x1, y0, y1;
  int64_t k = axis_find(&ay, y, &y0, &y1);
  axis_knots(&ax, k, &x0, &x1);
  double d0 = knot_deriv(h + 2 * K, K, k), d1 = knot_deriv(h + 2 * K, K, k + 1);
  double w = x1 - x0, hh = y1 - y0, s = hh / w, dy = y - y0;
  double t = d1 + d0 - 2 * s;
  double a = hh * (s - d0) + dy * t;
  double b = hh * d0 - dy * t;
  double c = -s * dy;
  double disc = b * b - 4 * a * c;
  if (disc < 0) disc = 0;
  double den = -b - sqrt(disc);
  double xi = den != 0 ? 2 * c / den : 0;
  if (!(xi >= 0)) xi = 0;                     /* also catches NaN */
  if (xi > 1) xi = 1;
  *logd = (float)-rq_logd(s, d0, d1, xi);
  return (float)(x0 + xi * w);
}

void rt_k_gemm(int64_t m, int64_t n, int64_t k, const float *A, const float *B,
               const float *bias, float *C) {
  if (m <= 0 || n <= 0) return;
  for (int64_t i = 0; i < m; i++) {
    if (bias) memcpy(C + i * n, bias, (size_t)n * sizeof(float));
    else memset(C + i * n, 0, (size_t)n * sizeof(float));
  }
  if (k <= 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f,
              A, (int)k, B, (int)k, 1.0f, C, (int)n);
}
