/*
** runtime/rt_kernels.c: helpers that generated kernels call.
**
** rt_k_rqs / rt_k_rqs_inv follow flow-language.md 5a (nflows'
** unconstrained_rational_quadratic_spline, linear tails) in double
** precision; no storage is needed: the knots are accumulated on the fly.
*/
#include "rt_internal.h"
#include "rt_ode.h"
#include "rt_sde.h"

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
  double x0 = 0, x1 = 0, y0 = 0, y1 = 0;   /* set by axis_find / axis_knots */
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
  double x0 = 0, x1 = 0, y0 = 0, y1 = 0;   /* set by axis_find / axis_knots */
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

/* ------------------------------------------------------------------ */
/* reverse mode through one spline value                               */

/* One bin: its knots and end derivatives. */
typedef struct rq_bin { double x0, x1, y0, y1, d0, d1; } rq_bin;
/* Adjoints of the input and of the bin's six numbers. */
typedef struct rq_adj { double x, x0, x1, y0, y1, d0, d1; } rq_adj;

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

/* Given gy = dL/dy and gl = dL/d(log dy/dx) of the bin's map at x, the
** adjoints of x and of the bin (reverse mode of rt_k_rqs's formulas). */
static void rq_back(const rq_bin *b, double x, double gy, double gl, rq_adj *g) {
  double w = b->x1 - b->x0, hh = b->y1 - b->y0, s = hh / w;
  double xi = clamp01((x - b->x0) / w), om = 1 - xi, q = xi * om, dq = 1 - 2 * xi;
  double d0 = b->d0, d1 = b->d1, c2 = d1 + d0 - 2 * s;
  double den = s + c2 * q;
  double numy = s * xi * xi + d0 * q;
  double num = d1 * xi * xi + 2 * s * q + d0 * om * om;
  double g_den = -gy * hh * numy / (den * den) - 2 * gl / den;
  double g_numy = gy * hh / den, g_num = gl / num;
  double g_s = g_numy * xi * xi + g_den * (1 - 2 * q) + g_num * 2 * q + gl * 2 / s;
  double g_xi = g_numy * (2 * s * xi + d0 * dq) + g_den * c2 * dq +
                g_num * (2 * d1 * xi + 2 * s * dq - 2 * d0 * om);
  double g_hh = gy * numy / den + g_s / w;
  double g_w = -g_s * s / w - g_xi * xi / w;
  g->d0 = (g_numy + g_den) * q + g_num * om * om;
  g->d1 = g_den * q + g_num * xi * xi;
  g->x = g_xi / w;
  g->x0 = -g_xi / w - g_w;
  g->x1 = g_w;
  g->y1 = g_hh;
  g->y0 = gy - g_hh;
}

/* Adjoints of knots k (glo) and k+1 (ghi) of an axis into its K raw
** values: knot j (0 < j < K) is -B + 2B (W_0 + ... + W_{j-1}), W =
** m + (1 - mK) softmax(r); knots 0 and K are fixed. Streams, no storage. */
static void axis_back(const axis *a, int64_t k, double glo, double ghi, float *gr) {
  int64_t K = a->K;
  double ga = k > 0 && k < K ? 2 * a->B * glo : 0;       /* W_j, j < k */
  double gb = k + 1 < K ? 2 * a->B * ghi : 0;            /* W_j, j <= k */
  double dot = 0;
  for (int64_t j = 0; j <= k && j < K; j++) {
    double p = exp((double)a->r[j] - a->mx) / a->sum;
    dot += p * a->scale * ((j < k ? ga : 0) + gb);
  }
  for (int64_t j = 0; j < K; j++) {
    double p = exp((double)a->r[j] - a->mx) / a->sum;
    double gp = j <= k ? a->scale * ((j < k ? ga : 0) + gb) : 0;
    gr[j] = (float)(p * (gp - dot));
  }
}

static double sigmoid(double v) {
  if (v >= 0) return 1 / (1 + exp(-v));
  double e = exp(v);
  return e / (1 + e);
}

/* The bin k of h and its adjoint scatter, shared by both directions. */
static void bin_of(const axis *ax, const axis *ay, const float *h, int64_t K, int64_t k,
                   rq_bin *b) {
  axis_knots(ax, k, &b->x0, &b->x1);
  axis_knots(ay, k, &b->y0, &b->y1);
  b->d0 = knot_deriv(h + 2 * K, K, k);
  b->d1 = knot_deriv(h + 2 * K, K, k + 1);
}

static void scatter(const axis *ax, const axis *ay, const float *h, int64_t K, int64_t k,
                    const rq_adj *g, float *gh) {
  axis_back(ax, k, g->x0, g->x1, gh);
  axis_back(ay, k, g->y0, g->y1, gh + K);
  float *ge = gh + 2 * K;
  for (int64_t j = 0; j < K - 1; j++) ge[j] = 0;
  if (k > 0) ge[k - 1] = (float)(g->d0 * sigmoid((double)h[2 * K + k - 1]));
  if (k + 1 < K) ge[k] = (float)(g->d1 * sigmoid((double)h[2 * K + k]));
}

static void zero_gh(int64_t K, float *gh) {
  for (int64_t j = 0; j < 3 * K - 1; j++) gh[j] = 0;
}

float rt_k_rqs_grad(float xf, const float *h, int64_t K, float bound, float gy, float gl,
                    float *gh) {
  double x = xf, B = bound;
  if (!(x >= -B && x <= B) || K < 1) { zero_gh(K, gh); return gy; }
  axis ax, ay;
  axis_init(&ax, h, K, B);
  axis_init(&ay, h + K, K, B);
  double lo, hi;
  int64_t k = axis_find(&ax, x, &lo, &hi);
  rq_bin b;
  bin_of(&ax, &ay, h, K, k, &b);
  rq_adj g;
  rq_back(&b, x, gy, gl, &g);
  scatter(&ax, &ay, h, K, k, &g, gh);
  return (float)g.x;
}

/* Why the implicit function theorem: x = f^-1(y; h) and l = -log f'(x; h),
** so dx/dy = 1/f', dx/dh = -f_h/f' and dl/dh = -(L_h + L_x dx/dh) with
** L = log f'. Collecting terms, dL/dy = c = (gy - gl L_x) / f' and
** dL/dh = -c f_h - gl L_h: the forward reverse mode at x with seeds
** (-c, -gl). */
float rt_k_rqs_inv_grad(float yf, const float *h, int64_t K, float bound, float gy, float gl,
                        float *gh) {
  double y = yf, B = bound;
  if (!(y >= -B && y <= B) || K < 1) { zero_gh(K, gh); return gy; }
  axis ax, ay;
  axis_init(&ax, h, K, B);
  axis_init(&ay, h + K, K, B);
  double lo, hi;
  int64_t k = axis_find(&ay, y, &lo, &hi);
  rq_bin b;
  bin_of(&ax, &ay, h, K, k, &b);
  double w = b.x1 - b.x0, hh = b.y1 - b.y0, s = hh / w, dy = y - b.y0;
  double t = b.d1 + b.d0 - 2 * s;
  double qa = hh * (s - b.d0) + dy * t, qb = hh * b.d0 - dy * t, qc = -s * dy;
  double disc = qb * qb - 4 * qa * qc;
  if (disc < 0) disc = 0;
  double den = -qb - sqrt(disc);
  double xi = den != 0 ? 2 * qc / den : 0;
  if (!(xi >= 0)) xi = 0;
  if (xi > 1) xi = 1;
  double x = b.x0 + xi * w;
  double fp = exp(rq_logd(s, b.d0, b.d1, xi));
  rq_adj gL, g;
  rq_back(&b, x, 0, 1, &gL);
  double c = ((double)gy - (double)gl * gL.x) / fp;
  rq_back(&b, x, -c, -(double)gl, &g);
  scatter(&ax, &ay, h, K, k, &g, gh);
  return (float)c;
}

void rt_k_gemm(int64_t m, int64_t n, int64_t k, const float *A, const float *B,
               const float *bias, float *C) {
  if (m <= 0 || n <= 0) return;
  for (int64_t i = 0; i < m; i++) {
    if (bias) memcpy(C + i * n, bias, (size_t)n * sizeof(float));
    else memset(C + i * n, 0, (size_t)n * sizeof(float));
  }
  if (k <= 0) return;
  if (m < RT_K_GEMV_ROWS) {   /* a few rows: matrix-vector products stream B once each */
    for (int64_t i = 0; i < m; i++)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)k, 1.0f, B, (int)k, A + i * k, 1,
                  1.0f, C + i * n, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f,
              A, (int)k, B, (int)k, 1.0f, C, (int)n);
}

void rt_k_gemm_nn(int64_t m, int64_t n, int64_t k, const float *A, const float *B, float *C) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    memset(C, 0, (size_t)(m * n) * sizeof(float));
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f,
              A, (int)k, B, (int)n, 0.0f, C, (int)n);
}

void rt_k_gemm_tn_acc(int64_t m, int64_t n, int64_t k, const float *A, const float *B,
                      float *C) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f,
              A, (int)m, B, (int)n, 1.0f, C, (int)n);
}

/* ---- residual layers: log|det(I + X)| and its gradient ---- */

/* A = I + X in double, LU-factorised in place with partial pivoting (the
** pivot of column k is the first largest |a[i][k]|, i >= k, as ir/interp.c);
** piv[k] is the row swapped with k. Returns log|det A|, or -inf at the first
** zero pivot (A singular; the factorisation is then incomplete). */
static double lu_ipx(const float *x, int64_t D, double *a, int64_t *piv) {
  for (int64_t k = 0; k < D * D; k++) a[k] = (double)x[k] + (k % (D + 1) == 0);
  double ld = 0;
  for (int64_t k = 0; k < D; k++) {
    int64_t p = k;
    for (int64_t i = k + 1; i < D; i++)
      if (fabs(a[i * D + k]) > fabs(a[p * D + k])) p = i;
    piv[k] = p;
    for (int64_t j = 0; j < D && p != k; j++) {
      double t = a[k * D + j];
      a[k * D + j] = a[p * D + j];
      a[p * D + j] = t;
    }
    double u = a[k * D + k];
    if (u == 0) return -INFINITY;
    ld += log(fabs(u));
    for (int64_t i = k + 1; i < D; i++) {
      double f = a[i * D + k] /= u;
      for (int64_t j = k + 1; j < D; j++) a[i * D + j] -= f * a[k * D + j];
    }
  }
  return ld;
}

float rt_k_logdet(const float *x, int64_t D) {
  double a[RT_K_LOGDET_MAX * RT_K_LOGDET_MAX];
  int64_t piv[RT_K_LOGDET_MAX];
  if (D <= 0) return 0;                     /* the empty determinant is 1 */
  if (D > RT_K_LOGDET_MAX) return NAN;      /* codegen refuses this */
  return (float)lu_ipx(x, D, a, piv);
}

/* Row c of out = g times column c of A^-1, the solution of A v = e_c
** (P A = L U: apply the swaps to e_c, then the two triangular solves). */
void rt_k_logdet_grad(const float *x, int64_t D, float g, float *out) {
  double a[RT_K_LOGDET_MAX * RT_K_LOGDET_MAX], v[RT_K_LOGDET_MAX];
  int64_t piv[RT_K_LOGDET_MAX];
  if (D <= 0) return;
  if (D > RT_K_LOGDET_MAX || lu_ipx(x, D, a, piv) == -INFINITY) {
    for (int64_t k = 0; k < D * D; k++) out[k] = NAN;
    return;
  }
  for (int64_t c = 0; c < D; c++) {
    for (int64_t i = 0; i < D; i++) v[i] = i == c;
    for (int64_t k = 0; k < D; k++) {
      double t = v[k];
      v[k] = v[piv[k]];
      v[piv[k]] = t;
    }
    for (int64_t i = 0; i < D; i++)
      for (int64_t j = 0; j < i; j++) v[i] -= a[i * D + j] * v[j];
    for (int64_t i = D - 1; i >= 0; i--) {
      for (int64_t j = i + 1; j < D; j++) v[i] -= a[i * D + j] * v[j];
      v[i] /= a[i * D + i];
    }
    for (int64_t j = 0; j < D; j++) out[c * D + j] = (float)((double)g * v[j]);
  }
}

void rt_k_sde_noise(const float *key, int64_t ks, int64_t n, int64_t rows, int64_t D,
                    int64_t step, int64_t layer, float *out, int64_t os) {
  double v[RT_K_SDE_CHUNK];
  for (int64_t r = 0; r < rows; r++) {
    uint64_t k = rt_sde_key(key + r * ks, (long)n, (long)layer);
    for (int64_t j0 = 0; j0 < D; j0 += RT_K_SDE_CHUNK) {   /* pairs stay within a chunk */
      int64_t m = D - j0 < RT_K_SDE_CHUNK ? D - j0 : RT_K_SDE_CHUNK;
      rt_sde_normals_from(k, (long)step, (long)j0, (long)m, v);
      for (int64_t j = 0; j < m; j++) out[r * os + j0 + j] = (float)v[j];
    }
  }
}

void rt_k_ode_ctrl(const float *s, const float *y5, const float *err, int64_t n, float rtol,
                   float atol, float tend, float *out) {
  double ds[RT_K_ODE_MAX + 2], d5[RT_K_ODE_MAX], de[RT_K_ODE_MAX], o[RT_K_ODE_MAX + 2];
  if (n < 0 || n > RT_K_ODE_MAX) return;   /* the code generator refuses more */
  for (int64_t i = 0; i < n; i++) d5[i] = y5[i], de[i] = err[i];
  for (int64_t i = 0; i < n + 2; i++) ds[i] = s[i];
  rt_ode_ctrl(ds, d5, de, (long)n, rtol, atol, tend, o);
  for (int64_t i = 0; i < n + 2; i++) out[i] = (float)o[i];
}
