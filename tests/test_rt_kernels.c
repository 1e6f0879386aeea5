/* tests/test_rt_kernels.c: rational-quadratic splines and the sgemm helper. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

/* a reproducible normal from the runtime's own generator */
static float gauss(uint64_t i) {
  float z[1];
  rt_normal_rows(99, 7, (long)i, 1, 1, z);
  return z[0];
}

static void random_row(float *h, int K, float scale, uint64_t *ctr) {
  for (int i = 0; i < 3 * K - 1; i++) h[i] = scale * gauss((*ctr)++);
}

/* The inverse's log-det is minus the forward one at its exact solution,
** which lies within an ulp of the float x2 it returns: bracket it by the
** values one ulp either side, widened by their spread (log f' has a kink at
** a knot, so its extreme may fall between two floats). */
static void assert_inv_logd(float x2, float ldi, const float *h, int K, float B) {
  float xs[3] = { nextafterf(x2, -INFINITY), x2, nextafterf(x2, INFINITY) };
  double lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < 3; i++) {
    if (xs[i] < -B || xs[i] > B) continue;
    float ld;
    rt_k_rqs(xs[i], h, K, B, &ld);
    lo = fmin(lo, -ld);
    hi = fmax(hi, -ld);
  }
  double slack = 2e-5 * fmax(1.0, fabs(ldi)) + (hi - lo);
  cr_assert(ldi >= lo - slack && ldi <= hi + slack, "x2 %.9g: ldi %.9g not in [%.9g, %.9g]",
            x2, ldi, lo, hi);
}

/* knots of one axis from the spec, in double */
static void knots(const float *r, int K, double B, double *x) {
  double mx = r[0], s = 0, cum = 0;
  for (int k = 1; k < K; k++) mx = fmax(mx, r[k]);
  for (int k = 0; k < K; k++) s += exp(r[k] - mx);
  x[0] = -B;
  for (int k = 0; k < K; k++) {
    cum += 1e-3 + (1 - 1e-3 * K) * exp(r[k] - mx) / s;
    x[k + 1] = -B + 2 * B * cum;
  }
  x[K] = B;
}

Test(rqs, hand_values) {
  /* K = 1 is the identity whatever the raw values */
  float h1[2] = { 3.0f, -7.0f };
  for (float x = -3; x <= 3; x += 0.25f) {
    float ld, y = rt_k_rqs(x, h1, 1, 3.0f, &ld);
    cr_assert_float_eq(y, x, 1e-6);
    cr_assert_float_eq(ld, 0.0, 1e-6);
  }
  /* K = 2, zero raw values: knots -B, 0, B; delta_1 = m + log 2 */
  float h2[5] = { 0, 0, 0, 0, 0 };
  double B = 2, d1 = 1e-3 + log(2.0), xi = 0.5, s = 1;
  double den = s + (1 + d1 - 2 * s) * xi * (1 - xi);
  double y = 0 + B * (s * xi * xi + d1 * xi * (1 - xi)) / den;
  double dy = s * s * (1 * xi * xi + 2 * s * xi * (1 - xi) + d1 * (1 - xi) * (1 - xi)) / (den * den);
  float ld, yf = rt_k_rqs(1.0f, h2, 2, 2.0f, &ld);
  cr_assert_float_eq(yf, y, 1e-6);
  cr_assert_float_eq(ld, log(dy), 1e-6);
  /* at the middle knot: y = 0, slope delta_1 (the right bin's xi = 0) */
  yf = rt_k_rqs(0.0f, h2, 2, 2.0f, &ld);
  cr_assert_float_eq(yf, 0.0, 1e-7);
  cr_assert_float_eq(ld, log(d1), 1e-6);
  /* symmetric: f(-x) = -f(x) */
  float yn = rt_k_rqs(-1.0f, h2, 2, 2.0f, &ld);
  cr_assert_float_eq(yn, -y, 1e-6);
}

Test(rqs, bounds_and_outside) {
  uint64_t ctr = 0;
  float h[3 * 8 - 1];
  for (int t = 0; t < 50; t++) {
    random_row(h, 8, 2.0f, &ctr);
    float ld;
    float B = 3.0f;
    cr_assert_eq(rt_k_rqs(B, h, 8, B, &ld), B);
    cr_assert_float_eq(ld, 0.0, 1e-5);               /* delta_K = 1 */
    cr_assert_eq(rt_k_rqs(-B, h, 8, B, &ld), -B);
    cr_assert_float_eq(ld, 0.0, 1e-5);
    cr_assert_eq(rt_k_rqs_inv(B, h, 8, B, &ld), B);
    cr_assert_eq(rt_k_rqs_inv(-B, h, 8, B, &ld), -B);
    float outs[] = { nextafterf(B, 10), -nextafterf(B, 10), 3.5f, -100.0f, 1e30f };
    for (int i = 0; i < 5; i++) {
      cr_assert_eq(rt_k_rqs(outs[i], h, 8, B, &ld), outs[i]);
      cr_assert_eq(ld, 0.0f);
      cr_assert_eq(rt_k_rqs_inv(outs[i], h, 8, B, &ld), outs[i]);
      cr_assert_eq(ld, 0.0f);
    }
    /* just inside the bound is not the identity's logd */
    float in = nextafterf(B, 0);
    float y = rt_k_rqs(in, h, 8, B, &ld);
    cr_assert(y <= B && y > 2.9f);
  }
}

Test(rqs, knots) {
  uint64_t ctr = 1000;
  int K = 6;
  double B = 2.5;
  float h[3 * 6 - 1];
  for (int t = 0; t < 50; t++) {
    random_row(h, K, 1.5f, &ctr);
    double xk[7], yk[7];
    knots(h, K, B, xk);
    knots(h + K, K, B, yk);
    for (int k = 0; k <= K; k++) {
      float x = (float)xk[k], ld;
      float y = rt_k_rqs(x, h, K, (float)B, &ld);
      /* the float knot is within an ulp: bracket log(delta) the same way */
      float ldm, ldp;
      rt_k_rqs(nextafterf(x, -INFINITY), h, K, (float)B, &ldm);
      rt_k_rqs(nextafterf(x, INFINITY), h, K, (float)B, &ldp);
      /* y at the knot is y_k; the float knot may be off by half an ulp */
      cr_assert_float_eq(y, yk[k], 1e-5, "k %d: %g vs %g", k, y, yk[k]);
      double delta = (k == 0 || k == K) ? 1.0 : 1e-3 + log1p(exp(h[2 * K + k - 1]));
      double lo = fmin(ld, fmin(ldm, ldp)), hi = fmax(ld, fmax(ldm, ldp));
      if (k == 0) { lo = fmin(ld, ldp); hi = fmax(ld, ldp); }   /* ldm: outside */
      if (k == K) { lo = fmin(ld, ldm); hi = fmax(ld, ldm); }
      double sl = 1e-5 + (hi - lo);
      cr_assert(log(delta) >= lo - sl && log(delta) <= hi + sl, "k %d: %g not in [%g, %g]",
                k, log(delta), lo, hi);
      /* a point exactly on a knot: inverse of y_k gives x_k */
      float xi = rt_k_rqs_inv((float)yk[k], h, K, (float)B, &ld);
      cr_assert_float_eq(xi, xk[k], 1e-4);
      assert_inv_logd(xi, ld, h, K, (float)B);
    }
  }
}

static void check_row(const float *h, int K, float B, int extreme) {
  float prev = -INFINITY;
  int n = 400;
  for (int i = 0; i <= n; i++) {
    float x = -B + 2 * B * (float)i / n, ld, ldi;
    float y = rt_k_rqs(x, h, K, B, &ld);
    cr_assert(isfinite(y) && isfinite(ld), "K %d x %g: y %g ld %g", K, x, y, ld);
    cr_assert(y >= -B && y <= B);
    cr_assert_geq(y, prev, "not monotone at %g", x);   /* monotone */
    prev = y;
    float x2 = rt_k_rqs_inv(y, h, K, B, &ldi);
    cr_assert(isfinite(x2) && isfinite(ldi));
    cr_assert(x2 >= -B && x2 <= B);
    /* the inverse's forward reproduces y */
    float ld3, y3 = rt_k_rqs(x2, h, K, B, &ld3);
    cr_assert_float_eq(y3, y, 4e-6 * B + 1e-6 * fabs(y), "K %d x %g y %g x2 %g y3 %g", K, x, y, x2, y3);
    /* the inverse's log-det is minus the forward one at its solution */
    assert_inv_logd(x2, ldi, h, K, B);
    if (!extreme) {
      /* x comes back up to y's rounding error times dx/dy */
      double tol = 2e-6 * B + 3e-7 * fmax(1.0, fabs(y)) / exp(ld);
      cr_assert_float_eq(x2, x, tol, "K %d: %g -> %g -> %g", K, x, y, x2);
    }
  }
}

Test(rqs, round_trip_monotone) {
  uint64_t ctr = 5000;
  int Ks[] = { 1, 2, 3, 5, 8, 16 };
  float Bs[] = { 1.0f, 3.0f, 5.0f };
  float scales[] = { 0.1f, 1.0f, 3.0f };
  float h[3 * 16 - 1];
  for (int a = 0; a < 6; a++)
    for (int b = 0; b < 3; b++)
      for (int c = 0; c < 3; c++)
        for (int t = 0; t < 6; t++) {
          random_row(h, Ks[a], scales[c], &ctr);
          check_row(h, Ks[a], Bs[b], 0);
        }
}

Test(rqs, extreme_parameters) {
  uint64_t ctr = 9000;
  float h[3 * 8 - 1];
  for (int t = 0; t < 200; t++) {
    int K = 1 + t % 8;
    random_row(h, K, 20.0f, &ctr);
    for (int i = 0; i < 3 * K - 1; i++) {     /* clamp to +-50, some at the ends */
      if (h[i] > 50) h[i] = 50;
      if (h[i] < -50) h[i] = -50;
      if ((t + i) % 7 == 0) h[i] = (i % 2) ? 50.0f : -50.0f;
    }
    check_row(h, K, 3.0f, 1);
  }
  /* all raw values at the extremes at once */
  for (int sgn = -1; sgn <= 1; sgn += 2) {
    for (int i = 0; i < 23; i++) h[i] = sgn * 50.0f;
    check_row(h, 8, 3.0f, 1);
    for (int i = 0; i < 23; i++) h[i] = (i % 3 ? 1 : -1) * sgn * 50.0f;
    check_row(h, 8, 3.0f, 1);
  }
}

Test(rqs, derivative_matches_finite_difference) {
  uint64_t ctr = 20000;
  float h[3 * 5 - 1];
  int K = 5;
  float B = 3.0f;
  int checked = 0;
  for (int t = 0; t < 40; t++) {
    random_row(h, K, 1.0f, &ctr);
    double xk[6];
    knots(h, K, B, xk);
    for (int i = 1; i < 60; i++) {
      double x = -B + 2.0 * B * i / 60.0, e = 2e-3;
      int near = 0;                           /* the slope jumps at knots */
      for (int k = 0; k <= K; k++) near |= fabs(x - xk[k]) < 10 * e;
      if (near) continue;
      float ld, l1, l2;
      rt_k_rqs((float)x, h, K, B, &ld);
      double yp = rt_k_rqs((float)(x + e), h, K, B, &l1);
      double ym = rt_k_rqs((float)(x - e), h, K, B, &l2);
      double fd = (yp - ym) / ((double)(float)(x + e) - (double)(float)(x - e));
      double d = exp(ld);
      cr_assert_float_eq(fd, d, 5e-3 * fmax(1.0, d) + 5e-4, "x %g: fd %g d %g", x, fd, d);
      /* the inverse's derivative is the reciprocal */
      float y = rt_k_rqs((float)x, h, K, B, &ld), ldi;
      rt_k_rqs_inv(y, h, K, B, &ldi);
      cr_assert_float_eq(exp(ldi), 1.0 / d, 1e-3 / d + 1e-3);
      checked++;
    }
  }
  cr_assert_gt(checked, 800);
}

Test(gemm, matches_naive) {
  int dims[][3] = { { 1, 1, 1 }, { 7, 5, 3 }, { 64, 33, 17 }, { 3, 4, 0 } };
  for (int t = 0; t < 4; t++) {
    int m = dims[t][0], n = dims[t][1], k = dims[t][2];
    float *A = malloc(sizeof(float) * (m * k + 1)), *B = malloc(sizeof(float) * (n * k + 1));
    float *bias = malloc(sizeof(float) * n), *C = malloc(sizeof(float) * m * n);
    for (int i = 0; i < m * k; i++) A[i] = sinf((float)i);
    for (int i = 0; i < n * k; i++) B[i] = cosf((float)i * 0.3f);
    for (int i = 0; i < n; i++) bias[i] = (float)i;
    for (int withb = 0; withb < 2; withb++) {
      for (int i = 0; i < m * n; i++) C[i] = NAN;    /* overwritten, not accumulated */
      rt_k_gemm(m, n, k, A, B, withb ? bias : NULL, C);
      for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
          double s = withb ? bias[j] : 0;
          for (int q = 0; q < k; q++) s += (double)A[i * k + q] * B[j * k + q];
          cr_assert_float_eq(C[i * n + j], s, 1e-4);
        }
    }
    free(A); free(B); free(bias); free(C);
  }
}
