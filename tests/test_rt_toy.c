/* tests/test_rt_toy.c: the 2-D toy data sets. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

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
