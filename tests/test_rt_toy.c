/* tests/test_rt_toy.c: the 2-D toy data sets and the conditional set reach. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt.h"
#include "testutil.h"

static const char *NAMES[] = { "moons", "circles", "8gaussians", "checkerboard", "pinwheel",
                               "2spirals" };

static float *toy(const char *name, long n, uint64_t seed) {
  float *x = malloc((size_t)(n ? n : 1) * 2 * sizeof(float));
  char err[256] = "";
  cr_assert_eq(rt_toy(name, n, seed, x, err, sizeof err), 0, "%s: %s", name, err);
  return x;
}

Test(toy, finite_deterministic_and_seeded) {
  for (int i = 0; i < 6; i++) {
    long n = 1001;
    float *a = toy(NAMES[i], n, 1), *b = toy(NAMES[i], n, 1), *c = toy(NAMES[i], n, 2);
    cr_assert_eq(memcmp(a, b, (size_t)n * 2 * sizeof(float)), 0, "%s", NAMES[i]);
    cr_assert_neq(memcmp(a, c, (size_t)n * 2 * sizeof(float)), 0, "%s", NAMES[i]);
    for (long k = 0; k < 2 * n; k++) cr_assert(isfinite(a[k]) && fabsf(a[k]) < 10, "%s", NAMES[i]);
    free(a); free(b); free(c);
    float *z = toy(NAMES[i], 0, 1);
    free(z);
  }
}

static void moments(const float *x, long n, double mean[2], double *mean_r) {
  mean[0] = mean[1] = *mean_r = 0;
  for (long i = 0; i < n; i++) {
    mean[0] += x[2 * i];
    mean[1] += x[2 * i + 1];
    *mean_r += hypot(x[2 * i], x[2 * i + 1]);
  }
  mean[0] /= n; mean[1] /= n; *mean_r /= n;
}

Test(toy, statistics) {
  long n = 20000;
  double m[2], r;
  float *x = toy("8gaussians", n, 3);       /* centres at radius 4 / 1.414 */
  moments(x, n, m, &r);
  cr_assert(fabs(m[0]) < 0.05 && fabs(m[1]) < 0.05);
  cr_assert(fabs(r - 4 / 1.414) < 0.05, "mean radius %g", r);
  for (long i = 0; i < n; i++) {              /* every point near one centre */
    double best = 1e9;
    for (int k = 0; k < 8; k++) {
      double a = k * M_PI / 4, dx = x[2 * i] - 4 / 1.414 * cos(a), dy = x[2 * i + 1] - 4 / 1.414 * sin(a);
      best = fmin(best, hypot(dx, dy));
    }
    cr_assert(best < 2.0);
  }
  free(x);
  x = toy("moons", n, 3);                     /* means 0, 0.3 after FFJORD's shift */
  moments(x, n, m, &r);
  cr_assert(fabs(m[0]) < 0.03 && fabs(m[1] - 0.3) < 0.03, "moons mean %g %g", m[0], m[1]);
  free(x);
  x = toy("circles", n, 3);                   /* radii 3 and 1.5, half each */
  long outer = 0;
  for (long i = 0; i < n; i++) outer += hypot(x[2 * i], x[2 * i + 1]) > 2.25;
  cr_assert(labs(outer - n / 2) < n / 100, "outer %ld", outer);
  moments(x, n, m, &r);
  cr_assert(fabs(r - 2.25) < 0.05, "circles mean radius %g", r);
  free(x);
  x = toy("checkerboard", n, 3);              /* alternate 2 x 2 squares of [-4, 4]^2 */
  for (long i = 0; i < n; i++) {
    double a = x[2 * i], b = x[2 * i + 1];
    cr_assert(a >= -4 && a <= 4 && b >= -4 && b <= 4);
    long cell = (long)floor(a / 2) + (long)floor(b / 2);
    cr_assert(cell % 2 == 0, "point %g %g in a white square", a, b);
  }
  moments(x, n, m, &r);
  cr_assert(fabs(m[0]) < 0.05 && fabs(m[1]) < 0.05);
  free(x);
  x = toy("pinwheel", n, 3);
  moments(x, n, m, &r);
  cr_assert(fabs(m[0]) < 0.05 && fabs(m[1]) < 0.05);
  cr_assert(r > 1.6 && r < 2.4, "pinwheel mean radius %g", r);
  free(x);
  x = toy("2spirals", n, 3);                  /* symmetric arms out to about 3 pi / 3 */
  moments(x, n, m, &r);
  cr_assert(fabs(m[0]) < 0.05 && fabs(m[1]) < 0.05);
  double rmax = 0;
  for (long i = 0; i < n; i++) rmax = fmax(rmax, hypot(x[2 * i], x[2 * i + 1]));
  cr_assert(rmax > 2.8 && rmax < 4.0, "2spirals max radius %g", rmax);
  free(x);
}

Test(toy, unknown_name) {
  char err[256] = "";
  float x[2];
  cr_assert_neq(rt_toy("swirl", 1, 0, x, err, sizeof err), 0);
  for (int i = 0; i < 6; i++) cr_assert(strstr(err, NAMES[i]), "%s", err);
  cr_assert(strstr(err, "swirl"), "%s", err);
  cr_assert_neq(rt_toy(NULL, 1, 0, x, err, sizeof err), 0);
  cr_assert_neq(rt_toy("moons", -1, 0, x, err, sizeof err), 0);
}

/* ---- reach: the conditional set (action chunks [50, 7], 512-D context) ---- */

enum { RT = 50, RJ = 7, RD = RT * RJ, RC = 512 };

static void reach(long n, uint64_t seed, float **x, float **c) {
  char err[256] = "";
  *x = malloc((size_t)(n ? n : 1) * RD * sizeof(float));
  *c = malloc((size_t)(n ? n : 1) * RC * sizeof(float));
  cr_assert_eq(rt_toy_cond("reach", n, seed, *x, *c, err, sizeof err), 0, "%s", err);
}

Test(reach, dims_and_errors) {
  cr_assert_eq(rt_toy_dim("reach"), RD);
  cr_assert_eq(rt_toy_context_dim("reach"), RC);
  for (int i = 0; i < 6; i++) cr_assert_eq(rt_toy_context_dim(NAMES[i]), 0, "%s", NAMES[i]);
  cr_assert_eq(rt_toy_context_dim("tabular8"), 0);
  cr_assert_eq(rt_toy_context_dim("reaches"), -1);
  cr_assert_eq(rt_toy_context_dim(NULL), -1);
  char err[256] = "";
  float x[2], c[2];
  cr_assert_neq(rt_toy_cond("moons", 1, 0, x, c, err, sizeof err), 0);   /* no context there */
  cr_assert(strstr(err, "moons") && strstr(err, "context"), "%s", err);
  cr_assert_eq(rt_toy_cond("moons", 1, 0, x, NULL, err, sizeof err), 0);
  cr_assert_neq(rt_toy_cond("reach", -1, 0, x, c, err, sizeof err), 0);
  cr_assert_neq(rt_toy_cond("reach", 1, 0, NULL, c, err, sizeof err), 0);
  cr_assert_neq(rt_toy("reacher", 1, 0, x, err, sizeof err), 0);
  cr_assert(strstr(err, "reach") && strstr(err, "tabular8") && strstr(err, "moons"), "%s", err);
  float *a, *b;
  reach(0, 1, &a, &b);                                   /* zero rows is fine */
  free(a); free(b);
}

Test(reach, deterministic_seeded_finite) {
  long n = 301;
  float *x1, *c1, *x2, *c2, *x3, *c3;
  reach(n, 1, &x1, &c1);
  reach(n, 1, &x2, &c2);
  reach(n, 2, &x3, &c3);
  cr_assert_eq(memcmp(x1, x2, (size_t)n * RD * sizeof(float)), 0);
  cr_assert_eq(memcmp(c1, c2, (size_t)n * RC * sizeof(float)), 0);
  cr_assert_neq(memcmp(x1, x3, (size_t)n * RD * sizeof(float)), 0);
  cr_assert_neq(memcmp(c1, c3, (size_t)n * RC * sizeof(float)), 0);
  /* rows without the context, and a prefix of the rows, are the same rows */
  float *y = malloc((size_t)n * RD * sizeof(float));
  char err[256] = "";
  cr_assert_eq(rt_toy("reach", n, 1, y, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(x1, y, (size_t)n * RD * sizeof(float)), 0);
  cr_assert_eq(rt_toy("reach", 7, 1, y, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(x1, y, (size_t)7 * RD * sizeof(float)), 0);
  for (long k = 0; k < n * RD; k++) cr_assert(isfinite(x1[k]) && fabsf(x1[k]) < 1.2f, "x %g", x1[k]);
  for (long k = 0; k < n * RC; k++) cr_assert(isfinite(c1[k]) && fabsf(c1[k]) < 1.0f, "c %g", c1[k]);
  free(x1); free(c1); free(x2); free(c2); free(x3); free(c3); free(y);
}

/* Smooth in time: consecutive steps differ by little (at most the
** minimum-jerk speed 2 * 1.875 / 49 plus the wiggle and the noise), second
** differences are about the noise alone; the chunk moves from near q0 to
** near g, and rows differ from each other (they are not one trajectory). */
Test(reach, smooth_trajectories) {
  long n = 500;
  float *x, *c;
  reach(n, 5, &x, &c);
  double d1max = 0, d2sum = 0, spread = 0;
  long d2n = 0;
  for (long i = 0; i < n; i++) {
    const float *a = x + i * RD;
    for (int s = 1; s < RT; s++)
      for (int j = 0; j < RJ; j++) {
        d1max = fmax(d1max, fabs(a[s * RJ + j] - a[(s - 1) * RJ + j]));
        if (s < RT - 1) {
          d2sum += fabs(a[(s + 1) * RJ + j] - 2 * a[s * RJ + j] + a[(s - 1) * RJ + j]);
          d2n++;
        }
      }
    if (i) spread += fabs(a[0] - x[(i - 1) * RD]);
  }
  cr_assert(d1max < 0.2, "largest step %g", d1max);
  cr_assert(d2sum / d2n < 0.03, "mean |second difference| %g", d2sum / d2n);
  cr_assert(spread / (n - 1) > 0.3, "rows barely differ: %g", spread / (n - 1));
  /* the whole set is far from one mean trajectory (std about 0.5) */
  double m[RD] = {0}, v = 0;
  for (long i = 0; i < n; i++)
    for (int k = 0; k < RD; k++) m[k] += x[i * RD + k] / n;
  for (long i = 0; i < n; i++)
    for (int k = 0; k < RD; k++) v += (x[i * RD + k] - m[k]) * (x[i * RD + k] - m[k]);
  v = sqrt(v / ((double)n * RD));
  cr_assert(v > 0.4 && v < 0.7, "rms about the mean trajectory %g", v);
  free(x);
  free(c);
}

/* The context is tanh(P f + b) of 16 numbers f, the same P and b for every
** seed: atanh(c) - atanh(c_0) spans a 16-D subspace, and rows of another
** seed fall into it. */
static double residual(double basis[][RC], int nb, double *v) {
  for (int b = 0; b < nb; b++) {
    double dot = 0;
    for (int k = 0; k < RC; k++) dot += basis[b][k] * v[k];
    for (int k = 0; k < RC; k++) v[k] -= dot * basis[b][k];
  }
  double r = 0;
  for (int k = 0; k < RC; k++) r += v[k] * v[k];
  return sqrt(r);
}

Test(reach, one_observation_map) {
  long n = 40;
  float *x1, *c1, *x2, *c2;
  reach(n, 11, &x1, &c1);
  reach(n, 12, &x2, &c2);
  static double basis[RC][RC];
  double v[RC];
  int nb = 0;
  for (long i = 1; i < n; i++) {
    double norm = 0;
    for (int k = 0; k < RC; k++) {
      v[k] = atanh((double)c1[i * RC + k]) - atanh((double)c1[k]);
      norm += v[k] * v[k];
    }
    double r = residual(basis, nb, v);
    if (r > 1e-2 * sqrt(norm)) {
      for (int k = 0; k < RC; k++) basis[nb][k] = v[k] / r;
      nb++;
    }
  }
  cr_assert_eq(nb, 16, "the context rows span %d dimensions, not 16", nb);
  for (long i = 0; i < n; i++) {
    double norm = 0;
    for (int k = 0; k < RC; k++) {
      v[k] = atanh((double)c2[i * RC + k]) - atanh((double)c1[k]);
      norm += v[k] * v[k];
    }
    double r = residual(basis, nb, v);
    cr_assert(r < 1e-3 * sqrt(norm), "seed 12 row %ld: off the map by %g of %g", i, r, sqrt(norm));
  }
  free(x1); free(c1); free(x2); free(c2);
}

/* flowc toy reach: the rows and the context into two files; the context
** option is required for reach and refused for the others (exit 2). */
Test(reach, command_line, .timeout = 120) {
  char x[600], c[600];
  snprintf(x, sizeof x, "%s", tu_path("reach.npy"));
  snprintf(c, sizeof c, "%s", tu_path("reach_ctx.npy"));
  char *log;
  int rc = tu_flowc(&log, "toy reach -n 30 --seed 4 -o %s --context-out %s", x, c);
  cr_assert_eq(rc, 0, "%s", log);
  free(log);
  rt_array a, b;
  char err[256] = "";
  cr_assert_eq(rt_array_load(x, &a, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_array_load(c, &b, err, sizeof err), 0, "%s", err);
  cr_assert(a.rows == 30 && a.cols == RD && b.rows == 30 && b.cols == RC, "%ld x %ld, %ld x %ld",
            a.rows, a.cols, b.rows, b.cols);
  float *x1, *c1;
  reach(30, 4, &x1, &c1);
  cr_assert_eq(memcmp(a.data, x1, (size_t)30 * RD * sizeof(float)), 0);
  cr_assert_eq(memcmp(b.data, c1, (size_t)30 * RC * sizeof(float)), 0);
  free(x1); free(c1);
  rt_array_free(&a); rt_array_free(&b);

  const char *y = tu_path("reach_no_ctx.npy");
  rc = tu_flowc(&log, "toy reach -n 30 --seed 4 -o %s", y);
  cr_assert_eq(rc, 2, "reach without --context-out: exit %d: %s", rc, log);
  cr_assert(strstr(log, "--context-out"), "%s", log);
  free(log);
  cr_assert_neq(access(y, F_OK), 0, "an output was written without --context-out");
  const char *m = tu_path("moons.npy"), *mc = tu_path("moons_ctx.npy");
  rc = tu_flowc(&log, "toy moons -n 30 --seed 4 -o %s --context-out %s", m, mc);
  cr_assert_eq(rc, 2, "moons with --context-out: exit %d: %s", rc, log);
  cr_assert(strstr(log, "context"), "%s", log);
  free(log);
  cr_assert_neq(access(m, F_OK), 0);
  cr_assert_neq(access(mc, F_OK), 0);
}
