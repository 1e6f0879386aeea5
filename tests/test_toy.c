/* tests/test_toy.c: the 8-D tabular toy set (tabular8) and rt_toy_dim; the
** 2-D sets are in test_rt_toy.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "testutil.h"

enum { D = 8 };

static float *tab(long n, uint64_t seed) {
  float *x = malloc((size_t)(n ? n : 1) * D * sizeof(float));
  char err[256] = "";
  cr_assert_eq(rt_toy("tabular8", n, seed, x, err, sizeof err), 0, "%s", err);
  return x;
}

static double corr(const double *a, const double *b, long n) {
  double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
  for (long i = 0; i < n; i++) { ma += a[i]; mb += b[i]; }
  ma /= n; mb /= n;
  for (long i = 0; i < n; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / sqrt(saa * sbb);
}

Test(toy8, dims) {
  const char *two[] = { "moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals" };
  for (int i = 0; i < 6; i++) cr_assert_eq(rt_toy_dim(two[i]), 2, "%s", two[i]);
  cr_assert_eq(rt_toy_dim("tabular8"), 8);
  cr_assert_eq(rt_toy_dim("tabular"), -1);
  cr_assert_eq(rt_toy_dim(NULL), -1);
  char err[256] = "";
  float x[8];
  cr_assert_neq(rt_toy("tabular", 1, 0, x, err, sizeof err), 0);
  cr_assert(strstr(err, "tabular8") && strstr(err, "moons") && strstr(err, "2spirals"), "%s", err);
  cr_assert_neq(rt_toy("tabular8", -1, 0, x, err, sizeof err), 0);
}

Test(toy8, finite_deterministic_and_seeded) {
  long n = 3001;
  float *a = tab(n, 1), *b = tab(n, 1), *c = tab(n, 2), *p = tab(100, 1);
  cr_assert_eq(memcmp(a, b, (size_t)n * D * sizeof(float)), 0);
  cr_assert_neq(memcmp(a, c, (size_t)n * D * sizeof(float)), 0);
  /* a row depends only on (seed, row): a shorter set is a prefix */
  cr_assert_eq(memcmp(a, p, 100 * D * sizeof(float)), 0);
  for (long k = 0; k < n * D; k++) cr_assert(isfinite(a[k]) && fabsf(a[k]) < 30, "value %ld: %g", k, a[k]);
  free(a); free(b); free(c); free(p);
  free(tab(0, 1));
}

/* The dependencies a Gaussian cannot express: x1 = sin(2 x0) + noise,
** x3 = x0 x1 + noise, the mode of x2 follows the sign of x1, (x6, x7) on one
** of two rings chosen by x2; and non-Gaussian marginals. */
Test(toy8, dependencies) {
  long n = 20000;
  float *x = tab(n, 3);
  double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), m[D] = {0};
  for (long i = 0; i < n; i++)
    for (int k = 0; k < D; k++) m[k] += x[D * i + k] / (double)n;
  cr_assert(fabs(m[0]) < 0.05, "mean x0 %g", m[0]);
  for (long i = 0; i < n; i++) { a[i] = x[D * i + 1]; b[i] = sin(2 * x[D * i]); }
  double c1 = corr(a, b, n);
  cr_assert(c1 > 0.9, "corr(x1, sin(2 x0)) = %g", c1);
  for (long i = 0; i < n; i++) { a[i] = x[D * i + 3]; b[i] = (double)x[D * i] * x[D * i + 1]; }
  double c3 = corr(a, b, n);
  cr_assert(c3 > 0.9, "corr(x3, x0 x1) = %g", c3);
  /* linearly, x3 is nearly uncorrelated with x0 and x1 */
  for (long i = 0; i < n; i++) { a[i] = x[D * i + 3]; b[i] = x[D * i]; }
  cr_assert(fabs(corr(a, b, n)) < 0.1);
  long agree = 0, near2 = 0, ring_ok = 0;
  double skew = 0, var5 = 0;
  for (long i = 0; i < n; i++) {
    const float *r = x + D * i;
    agree += (r[1] > 0) == (r[2] > 0);
    near2 += fabs(fabs(r[2]) - 1.5) < 1.0;      /* bimodal x2, nothing at 0 */
    double rad = hypot(r[6], r[7]);
    ring_ok += fabs(rad - (r[2] > 0 ? 1.8 : 1.0)) < 0.4;
    double d5 = r[5] - m[5];
    var5 += d5 * d5 / n;
    skew += d5 * d5 * d5 / n;
  }
  skew /= pow(var5, 1.5);
  cr_assert(agree > 0.8 * n, "sign(x2) == sign(x1) in %ld of %ld", agree, n);
  cr_assert(near2 > 0.95 * n, "x2 near +-1.5 in %ld of %ld", near2, n);
  cr_assert(ring_ok > 0.99 * n, "(x6, x7) on its ring in %ld of %ld", ring_ok, n);
  cr_assert(skew > 0.8, "skewness of x5 %g", skew);
  free(a); free(b); free(x);
}

/* flowc toy writes [N, 8] for tabular8 and [N, 2] for the 2-D sets. */
Test(toy8, cli_shape) {
  cr_assert_eq(tu_flowc(NULL, "toy tabular8 -n 50 --seed 4 -o %s", tu_path("t.npy")), 0);
  cr_assert_eq(tu_flowc(NULL, "toy moons -n 50 --seed 4 -o %s", tu_path("m.npy")), 0);
  rt_array t = {0}, m = {0};
  char err[256] = "";
  cr_assert_eq(rt_array_load(tu_path("t.npy"), &t, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_array_load(tu_path("m.npy"), &m, err, sizeof err), 0, "%s", err);
  cr_assert(t.ndim == 2 && t.shape[0] == 50 && t.shape[1] == 8);
  cr_assert(m.ndim == 2 && m.shape[0] == 50 && m.shape[1] == 2);
  float *ref = tab(50, 4);
  cr_assert_eq(memcmp(ref, t.data, 50 * D * sizeof(float)), 0);
  free(ref);
  rt_array_free(&t);
  rt_array_free(&m);
  char *out = NULL;
  cr_assert_eq(tu_flowc(&out, "toy tabular9 -n 5 -o %s", tu_path("u.npy")), 1);
  cr_assert(out && strstr(out, "tabular8") && strstr(out, "moons"), "%s", out ? out : "");
  free(out);
}
