/* tests/test_rt_rqs_grad.c: the analytic spline gradients rt_k_rqs_grad and
** rt_k_rqs_inv_grad against central differences of a long double
** spline written from flow-language.md 5a. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

#define MAXK 64
#define MINW 1e-3

/* The reference in long double, so that differences are not noise. */
typedef struct knots { long double x[MAXK + 1], y[MAXK + 1], d[MAXK + 1]; } knots;

static long double softplus(long double v) { return v > 0 ? v + log1pl(expl(-v)) : log1pl(expl(v)); }

static void axis(const long double *r, int K, long double B, long double *t) {
  long double mx = r[0], s = 0, cum = 0;
  for (int k = 1; k < K; k++) mx = fmaxl(mx, r[k]);
  for (int k = 0; k < K; k++) s += expl(r[k] - mx);
  t[0] = -B;
  for (int k = 0; k < K; k++) {
    cum += MINW + (1 - MINW * K) * expl(r[k] - mx) / s;
    t[k + 1] = -B + 2 * B * cum;
  }
  t[K] = B;
}

static void make_knots(const long double *h, int K, long double B, knots *kn) {
  axis(h, K, B, kn->x);
  axis(h + K, K, B, kn->y);
  kn->d[0] = kn->d[K] = 1;
  for (int k = 1; k < K; k++) kn->d[k] = MINW + softplus(h[2 * K + k - 1]);
}

static int find(const long double *t, int K, long double v) {
  int k = 0;
  while (k < K - 1 && v >= t[k + 1]) k++;
  return k;
}

/* forward in a given bin (so that differences never jump bins) */
static long double fwd_bin(long double u, const knots *kn, int k, long double *logd) {
  long double w = kn->x[k + 1] - kn->x[k], hh = kn->y[k + 1] - kn->y[k], s = hh / w;
  long double xi = (u - kn->x[k]) / w, q = xi * (1 - xi);
  long double den = s + (kn->d[k + 1] + kn->d[k] - 2 * s) * q;
  long double num = kn->d[k + 1] * xi * xi + 2 * s * q + kn->d[k] * (1 - xi) * (1 - xi);
  *logd = logl(s * s * num / (den * den));
  return kn->y[k] + hh * (s * xi * xi + kn->d[k] * q) / den;
}

static long double inv_bin(long double y, const knots *kn, int k, long double *logd) {
  long double w = kn->x[k + 1] - kn->x[k], hh = kn->y[k + 1] - kn->y[k], s = hh / w;
  long double dk = kn->d[k], dk1 = kn->d[k + 1], dy = y - kn->y[k], c2 = dk1 + dk - 2 * s;
  long double a = hh * (s - dk) + dy * c2, b = hh * dk - dy * c2, c = -s * dy;
  long double disc = fmaxl(b * b - 4 * a * c, 0);
  long double xi = 2 * c / (-b - sqrtl(disc));
  long double u = kn->x[k] + xi * w, fl;
  for (int it = 0; it < 3; it++) {         /* Newton polish: no rounding noise */
    long double f = fwd_bin(u, kn, k, &fl);
    u -= (f - y) / expl(fl);
  }
  fwd_bin(u, kn, k, &fl);
  *logd = -fl;
  return u;
}

/* The map with its bin fixed to the one of the unperturbed point. */
static long double F(int inv, long double v, const long double *h, int K, long double B, int k, long double *logd) {
  knots kn;
  make_knots(h, K, B, &kn);
  return inv ? inv_bin(v, &kn, k, logd) : fwd_bin(v, &kn, k, logd);
}

/* gy * d(out)/d(var) + gl * d(logd)/d(var), var the input (i < 0) or h[i] */
static long double central(int inv, int i, long double v, long double *h, int K, long double B,
                           int k, double gy, double gl, long double e) {
  long double lp, lm, yp, ym;
  if (i < 0) {
    yp = F(inv, v + e, h, K, B, k, &lp);
    ym = F(inv, v - e, h, K, B, k, &lm);
  } else {
    long double keep = h[i];
    h[i] = keep + e;
    yp = F(inv, v, h, K, B, k, &lp);
    h[i] = keep - e;
    ym = F(inv, v, h, K, B, k, &lm);
    h[i] = keep;
  }
  return (gy * (yp - ym) + gl * (lp - lm)) / (2 * e);
}

static long double richardson(int inv, int i, long double v, long double *h, int K,
                              long double B, int k, double gy, double gl, long double e) {
  long double d1 = central(inv, i, v, h, K, B, k, gy, gl, e);
  long double d2 = central(inv, i, v, h, K, B, k, gy, gl, e / 2);
  return (4 * d2 - d1) / 3;
}

static double gmax_abs(const double *g, int n) {
  double m = 0;
  for (int i = 0; i < n; i++) m = fmax(m, fabs(g[i]));
  return m;
}

static long nchecked;

/* Checks both directions' gradients at value v (float) and row h. */
static void check_point(int inv, float v, const float *hf, int K, float Bf, double gy, double gl,
                        const char *what) {
  long double B = Bf, h[3 * MAXK];
  for (int i = 0; i < 3 * K - 1; i++) h[i] = hf[i];
  knots kn;
  make_knots(h, K, B, &kn);
  int k = find(inv ? kn.y : kn.x, K, v);
  float gh[3 * MAXK];
  for (int i = 0; i < 3 * K - 1; i++) gh[i] = NAN;
  float gx = inv ? rt_k_rqs_inv_grad(v, hf, K, Bf, (float)gy, (float)gl, gh)
                 : rt_k_rqs_grad(v, hf, K, Bf, (float)gy, (float)gl, gh);
  /* differences: the step is small against the distance to the knots;
  ** Richardson-extrapolated central differences */
  const long double *t = inv ? kn.y : kn.x;
  long double room = fminl(v - t[k], t[k + 1] - v);
  long double e = fminl(1e-7L, room / 4), eh = 1e-7L;
  double fd[3 * MAXK + 1];
  fd[0] = (double)richardson(inv, -1, v, h, K, B, k, gy, gl, e);
  for (int i = 0; i < 3 * K - 1; i++)
    fd[1 + i] = (double)richardson(inv, i, v, h, K, B, k, gy, gl, eh);
  double scale = gmax_abs(fd + 1, 3 * K - 1);
  cr_assert(fabs(gx - fd[0]) <= 1e-3 * fmax(fabs(fd[0]), 1e-3) + 1e-6,
            "%s %s K %d v %.9g bin %d: d/dv %.9g, differences %.9g", what, inv ? "inv" : "fwd",
            K, v, k, gx, fd[0]);
  for (int i = 0; i < 3 * K - 1; i++)
    cr_assert(fabs(gh[i] - fd[1 + i]) <= 1e-3 * fmax(fabs(fd[1 + i]), 1e-3 * scale) + 1e-6,
              "%s %s K %d v %.9g bin %d (gy %g gl %g scale %g): d/dh[%d] %.9g, "
              "differences %.9g", what, inv ? "inv" : "fwd", K, v, k, gy, gl, scale, i, gh[i],
              fd[1 + i]);
  nchecked++;
}

static float gauss(uint64_t i) {
  float z[1];
  rt_normal_rows(4242, 3, (long)i, 1, 1, z);
  return z[0];
}

static float unif(uint64_t i) { return rt_uniform01(4242, 5, i); }

/* Points: random inside, near knots (1% of the bin from either side). */
static void check_row(const float *hf, int K, float B, uint64_t *ctr, const char *what) {
  long double h[3 * MAXK];
  for (int i = 0; i < 3 * K - 1; i++) h[i] = hf[i];
  knots kn;
  make_knots(h, K, B, &kn);
  for (int inv = 0; inv < 2; inv++) {
    const long double *t = inv ? kn.y : kn.x;
    for (int r = 0; r < 6; r++) {
      float v = (float)(-B + 2 * B * unif((*ctr)++));
      double gy = gauss((*ctr)++), gl = gauss((*ctr)++);
      int k = find(t, K, v);
      if (fmin(v - t[k], t[k + 1] - v) < 1e-5 * (t[k + 1] - t[k])) continue;
      check_point(inv, v, hf, K, B, gy, gl, what);
    }
    for (int k = 0; k < K; k++) {
      long double w = t[k + 1] - t[k];
      float a = (float)(t[k] + 0.01L * w), b = (float)(t[k + 1] - 0.01L * w);
      check_point(inv, a, hf, K, B, 1.0, 0.0, what);
      check_point(inv, b, hf, K, B, 0.0, 1.0, what);
      check_point(inv, a, hf, K, B, 0.3, -0.7, what);
    }
  }
}

Test(rqs_grad, matches_differences_random_rows) {
  uint64_t ctr = 0;
  int Ks[] = { 1, 2, 3, 8, 17 };
  float Bs[] = { 3.0f, 1.0f, 5.0f };
  nchecked = 0;
  for (int ki = 0; ki < 5; ki++)
    for (int bi = 0; bi < 3; bi++)
      for (int rep = 0; rep < 4; rep++) {
        int K = Ks[ki];
        float h[3 * MAXK];
        float scale = rep == 0 ? 0.0f : rep == 1 ? 0.5f : rep == 2 ? 1.5f : 3.0f;
        for (int i = 0; i < 3 * K - 1; i++) h[i] = scale * gauss(ctr++);
        check_row(h, K, Bs[bi], &ctr, "random");
      }
  cr_assert(nchecked > 1000, "only %ld points", nchecked);
}

Test(rqs_grad, extreme_params) {
  uint64_t ctr = 1u << 20;
  int K = 6;
  float h[3 * MAXK];
  /* one dominant width and height (others near the 1e-3 minimum), knot
  ** derivatives far into softplus' tails */
  for (int i = 0; i < K; i++) h[i] = i == 2 ? 12.0f : -3.0f;
  for (int i = 0; i < K; i++) h[K + i] = i == 4 ? 10.0f : 1.0f * (float)i;
  for (int i = 0; i < K - 1; i++) h[2 * K + i] = i % 2 ? 15.0f : -12.0f;
  check_row(h, K, 3.0f, &ctr, "extreme");
  for (int i = 0; i < 3 * K - 1; i++) h[i] = 4.0f * gauss(ctr++);
  check_row(h, K, 3.0f, &ctr, "wide");
}

Test(rqs_grad, outside_is_identity_and_values_agree) {
  int K = 4;
  float h[11], gh[11];
  for (int i = 0; i < 11; i++) h[i] = 0.3f * gauss((uint64_t)i);
  float xs[] = { -3.5f, 3.0001f, 100.0f, -INFINITY };
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 11; j++) gh[j] = 7;
    cr_assert_eq(rt_k_rqs_grad(xs[i], h, K, 3.0f, 0.75f, 2.0f, gh), 0.75f);
    for (int j = 0; j < 11; j++) cr_assert_eq(gh[j], 0.0f);
    for (int j = 0; j < 11; j++) gh[j] = 7;
    cr_assert_eq(rt_k_rqs_inv_grad(xs[i], h, K, 3.0f, -0.5f, 2.0f, gh), -0.5f);
    for (int j = 0; j < 11; j++) cr_assert_eq(gh[j], 0.0f);
  }
  /* at the bounds and on a knot: finite, and d/dx = f'(x) for (gy, gl) = (1, 0) */
  float pts[] = { -3.0f, 3.0f, 0.0f };
  for (int i = 0; i < 3; i++) {
    float ld;
    rt_k_rqs(pts[i], h, K, 3.0f, &ld);
    float g = rt_k_rqs_grad(pts[i], h, K, 3.0f, 1.0f, 0.0f, gh);
    cr_assert_float_eq(g, expf(ld), 1e-5 * expf(ld));
    for (int j = 0; j < 11; j++) cr_assert(isfinite(gh[j]));
    float gi = rt_k_rqs_inv_grad(pts[i], h, K, 3.0f, 1.0f, 0.0f, gh);
    float ldi;
    rt_k_rqs_inv(pts[i], h, K, 3.0f, &ldi);
    cr_assert_float_eq(gi, expf(ldi), 1e-4 * expf(ldi));
    for (int j = 0; j < 11; j++) cr_assert(isfinite(gh[j]));
  }
}

Test(rqs_grad, many_bins_no_allocation_limit) {
  /* many bins: streams, so any K works; spot-check against
  ** differences on a few rows */
  int K = 900;                       /* 1 - 1e-3 K stays positive */
  float *h = malloc((3 * (size_t)K - 1) * sizeof(float)), *gh = malloc((3 * (size_t)K - 1) * sizeof(float));
  for (int i = 0; i < 3 * K - 1; i++) h[i] = 0.5f * gauss((uint64_t)i + 99);
  float x = 0.123f, ld;
  rt_k_rqs(x, h, K, 3.0f, &ld);
  float g = rt_k_rqs_grad(x, h, K, 3.0f, 1.0f, 0.0f, gh);
  cr_assert_float_eq(g, expf(ld), 1e-5 * expf(ld));
  double s = 0;
  for (int i = 0; i < K; i++) s += gh[i];
  cr_assert(fabs(s) < 1e-4, "softmax gradients sum to zero, got %g", s);  /* shift invariance */
  float gi = rt_k_rqs_inv_grad(x, h, K, 3.0f, 0.0f, 1.0f, gh);
  cr_assert(isfinite(gi));
  free(h);
  free(gh);
}
