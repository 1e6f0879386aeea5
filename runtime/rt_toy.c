/*
** runtime/rt_toy.c: the 2-D toy densities of FFJORD's toy_data.py
** (Grathwohl et al. 2019), with their scaling, from the Philox generator:
**   moons        sklearn make_moons(noise 0.1) * 2 + (-1, -0.2)
**   circles      sklearn make_circles(factor 0.5, noise 0.08) * 3
**   8gaussians   N(4 c, 0.5^2) around the 8 unit-circle points c, / 1.414
**   checkerboard x1 ~ U(-2, 2), x2 in alternate unit squares, * 2
**   pinwheel     5 arms, radial std 0.3, tangential 0.1, rate 0.25, * 2
**   2spirals     two arms of sqrt(u) * 540 degrees, / 3, noise 0.1
** and one 8-D tabular set for autoregressive models (MAF, NSF):
**   tabular8     x0 ~ N(0,1); x1 = sin(2 x0) + 0.2 e; x2 = +-1.5 + 0.35 e,
**                + with probability sigmoid(5 x1); x3 = x0 x1 + 0.2 e;
**                x4 = 0.3 x2 + 0.4 exp(0.35 x0) e (heteroscedastic, heavy
**                tailed); x5 = exp(0.5 e) - 1.13 + 0.5 tanh(x3) (skewed);
**                (x6, x7) on a ring at an angle U(0, 2 pi), radius 1.8 if
**                x2 > 0 else 1.0, radial noise 0.1 (bimodal x7 given x6).
**                Each x_i depends on earlier ones only; e fresh N(0,1).
** and one conditional set (rows plus a context row), for flow matching:
**   reach        robot-like action chunks of 50 steps x 7 joints (350
**                values, row-major [50, 7]): start q0 ~ U(-1,1)^7, goal
**                g ~ U(-1,1)^7, phase ph ~ U(0, 2 pi);
**                a[s][j] = q0_j + (g_j - q0_j) mj(s/49)
**                          + 0.1 sin(ph + 2 pi s/49 + j) + 0.01 e,
**                mj(r) = 10 r^3 - 15 r^4 + 6 r^5 (minimum jerk). Context:
**                512 values, tanh(P f + b) of f = (q0, g, cos ph, sin ph)
**                (16 numbers), P [512, 16] with entries N(0, 1/16) and
**                b ~ N(0, 0.25^2), both drawn from a fixed seed (REACH_OBS
**                below), not from the data seed: every set shares the map.
** Why per-row streams: value (row, what) depends only on (seed, row) so the
** set is reproducible for a seed; moons and circles place their points on
** sklearn's linspace and shuffle the rows, as make_moons does. pinwheel and
** 2spirals alternate their classes by row instead of stacking them.
*/
#include "rt_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const double PI = 3.14159265358979323846;

enum { S_NORMAL = 1, S_UNIF, S_PICK, S_SHUFFLE, S_TAB = 16, S_REACH = 32, S_REACH_NOISE = 64,
       S_OBS = 1024 };

/* Two uniforms in (0,1) for (row, what). */
static void uni2(uint64_t seed, int what, long row, double u[2]) {
  uint64_t w[2];
  rt_philox64(seed, 0x746f79ull << 32 | (uint64_t)what, (uint64_t)row, w);
  u[0] = rt_u01_from64(w[0]);
  u[1] = rt_u01_from64(w[1]);
}

/* Two standard normals for a row (Box-Muller). */
static void normal2w(uint64_t seed, int what, long row, double z[2]) {
  double u[2];
  uni2(seed, what, row, u);
  double r = sqrt(-2.0 * log(u[0])), t = 2 * PI * u[1];
  z[0] = r * cos(t);
  z[1] = r * sin(t);
}

static void normal2(uint64_t seed, long row, double z[2]) { normal2w(seed, S_NORMAL, row, z); }

static void shuffle_rows(float *out, long n, uint64_t seed) {
  for (long i = n - 1; i > 0; i--) {
    double u[2];
    uni2(seed, S_SHUFFLE, i, u);
    long j = (long)(u[0] * (double)(i + 1));
    if (j > i) j = i;
    float a = out[2 * i], b = out[2 * i + 1];
    out[2 * i] = out[2 * j];
    out[2 * i + 1] = out[2 * j + 1];
    out[2 * j] = a;
    out[2 * j + 1] = b;
  }
}

/* np.linspace(0, end, m, endpoint)[j] */
static double linspace(double end, long m, long j, int endpoint) {
  if (endpoint) return m > 1 ? end * (double)j / (double)(m - 1) : 0.0;
  return end * (double)j / (double)m;
}

static void moons(long n, uint64_t seed, float *out) {
  long nout = n / 2, nin = n - nout;
  for (long i = 0; i < n; i++) {
    double x, y;
    if (i < nout) {
      double t = linspace(PI, nout, i, 1);
      x = cos(t);
      y = sin(t);
    } else {
      double t = linspace(PI, nin, i - nout, 1);
      x = 1 - cos(t);
      y = 1 - sin(t) - 0.5;
    }
    out[2 * i] = (float)x;
    out[2 * i + 1] = (float)y;
  }
  shuffle_rows(out, n, seed);
  for (long i = 0; i < n; i++) {
    double z[2];
    normal2(seed, i, z);
    out[2 * i] = (float)((out[2 * i] + 0.1 * z[0]) * 2 - 1);
    out[2 * i + 1] = (float)((out[2 * i + 1] + 0.1 * z[1]) * 2 - 0.2);
  }
}

static void circles(long n, uint64_t seed, float *out) {
  long nout = n / 2, nin = n - nout;
  for (long i = 0; i < n; i++) {
    int inner = i >= nout;
    double t = inner ? linspace(2 * PI, nin, i - nout, 0) : linspace(2 * PI, nout, i, 0);
    double f = inner ? 0.5 : 1.0;
    out[2 * i] = (float)(f * cos(t));
    out[2 * i + 1] = (float)(f * sin(t));
  }
  shuffle_rows(out, n, seed);
  for (long i = 0; i < n; i++) {
    double z[2];
    normal2(seed, i, z);
    out[2 * i] = (float)((out[2 * i] + 0.08 * z[0]) * 3);
    out[2 * i + 1] = (float)((out[2 * i + 1] + 0.08 * z[1]) * 3);
  }
}

static void gaussians8(long n, uint64_t seed, float *out) {
  const double r = 1.0 / sqrt(2.0);
  const double c[8][2] = { { 1, 0 }, { -1, 0 }, { 0, 1 }, { 0, -1 },
                           { r, r }, { r, -r }, { -r, r }, { -r, -r } };
  for (long i = 0; i < n; i++) {
    double z[2], u[2];
    normal2(seed, i, z);
    uni2(seed, S_PICK, i, u);
    int k = (int)(u[0] * 8);
    if (k > 7) k = 7;
    out[2 * i] = (float)((0.5 * z[0] + 4 * c[k][0]) / 1.414);
    out[2 * i + 1] = (float)((0.5 * z[1] + 4 * c[k][1]) / 1.414);
  }
}

static void checkerboard(long n, uint64_t seed, float *out) {
  for (long i = 0; i < n; i++) {
    double u[2], p[2];
    uni2(seed, S_UNIF, i, u);
    uni2(seed, S_PICK, i, p);
    double x1 = u[0] * 4 - 2;
    double x2 = u[1] - (p[0] < 0.5 ? 0 : 2);
    double f = floor(x1);
    x2 += f - 2 * floor(f / 2);           /* Python's floor(x1) % 2 */
    out[2 * i] = (float)(x1 * 2);
    out[2 * i + 1] = (float)(x2 * 2);
  }
}

static void pinwheel(long n, uint64_t seed, float *out) {
  for (long i = 0; i < n; i++) {
    double z[2];
    normal2(seed, i, z);
    double f0 = z[0] * 0.3 + 1.0, f1 = z[1] * 0.1;
    double a = 2 * PI * (double)(i % 5) / 5 + 0.25 * exp(f0);
    double ca = cos(a), sa = sin(a);
    out[2 * i] = (float)(2 * (f0 * ca + f1 * sa));
    out[2 * i + 1] = (float)(2 * (-f0 * sa + f1 * ca));
  }
}

static void spirals2(long n, uint64_t seed, float *out) {
  for (long i = 0; i < n; i++) {
    double u[2], v[2], z[2];
    uni2(seed, S_UNIF, i, u);
    uni2(seed, S_PICK, i, v);
    normal2(seed, i, z);
    double t = sqrt(u[0]) * 540 * (2 * PI) / 360;
    double x = -cos(t) * t + u[1] * 0.5, y = sin(t) * t + v[0] * 0.5;
    if (i % 2) { x = -x; y = -y; }
    out[2 * i] = (float)(x / 3 + z[0] * 0.1);
    out[2 * i + 1] = (float)(y / 3 + z[1] * 0.1);
  }
}

static void tabular8(long n, uint64_t seed, float *out) {
  for (long i = 0; i < n; i++) {
    double e[8], u[2];
    for (int k = 0; k < 4; k++) normal2w(seed, S_TAB + k, i, e + 2 * k);
    uni2(seed, S_PICK, i, u);
    double x[8];
    x[0] = e[0];
    x[1] = sin(2 * x[0]) + 0.2 * e[1];
    x[2] = (u[0] < 1 / (1 + exp(-5 * x[1])) ? 1.5 : -1.5) + 0.35 * e[2];
    x[3] = x[0] * x[1] + 0.2 * e[3];
    x[4] = 0.3 * x[2] + 0.4 * exp(0.35 * x[0]) * e[4];
    x[5] = exp(0.5 * e[5]) - 1.13 + 0.5 * tanh(x[3]);
    double r = (x[2] > 0 ? 1.8 : 1.0) + 0.1 * e[6], t = 2 * PI * u[1];
    x[6] = r * cos(t);
    x[7] = r * sin(t);
    for (int k = 0; k < 8; k++) out[8 * i + k] = (float)x[k];
  }
}

enum { REACH_T = 50, REACH_J = 7, REACH_D = REACH_T * REACH_J, REACH_F = 16, REACH_C = 512 };
static const uint64_t REACH_OBS = 0x6f62736d6170ull;   /* "obsmap": the observation map's seed */

/* The observation map: P [REACH_C, REACH_F] row-major, then b [REACH_C],
** into pb. Drawn per call (cheap), so that nothing is shared between
** threads. */
static void reach_obs_map(double *pb) {
  for (long k = 0; k < (long)REACH_C * (REACH_F + 1); k += 2) {
    double z[2];
    normal2w(REACH_OBS, S_OBS, k / 2, z);
    pb[k] = 0.25 * z[0];                  /* std 1/4 = sqrt(1/16), P and b alike */
    pb[k + 1] = 0.25 * z[1];
  }
}

static double minjerk(double r) { return r * r * r * (10 + r * (-15 + 6 * r)); }

/* x: n rows of REACH_D; ctx (may be NULL): n rows of REACH_C. */
static int reach(long n, uint64_t seed, float *x, float *ctx) {
  double *pb = NULL;
  if (ctx) {
    pb = malloc((size_t)REACH_C * (REACH_F + 1) * sizeof *pb);
    if (!pb) return -1;
    reach_obs_map(pb);
  }
  double mj[REACH_T];
  for (int s = 0; s < REACH_T; s++) mj[s] = minjerk((double)s / (REACH_T - 1));
  for (long i = 0; i < n; i++) {
    double u[REACH_F], e[REACH_D];
    for (int k = 0; k < REACH_F / 2; k++) uni2(seed, S_REACH + k, i, u + 2 * k);
    for (int k = 0; k < REACH_D / 2; k++) normal2w(seed, S_REACH_NOISE + k, i, e + 2 * k);
    double q0[REACH_J], g[REACH_J], ph = 2 * PI * u[14];      /* u[15] unused */
    for (int j = 0; j < REACH_J; j++) {
      q0[j] = 2 * u[j] - 1;
      g[j] = 2 * u[REACH_J + j] - 1;
    }
    float *xi = x + i * REACH_D;
    for (int s = 0; s < REACH_T; s++)
      for (int j = 0; j < REACH_J; j++)
        xi[s * REACH_J + j] = (float)(q0[j] + (g[j] - q0[j]) * mj[s] +
                                      0.1 * sin(ph + 2 * PI * s / (REACH_T - 1) + j) +
                                      0.01 * e[s * REACH_J + j]);
    if (!ctx) continue;
    double f[REACH_F];
    for (int j = 0; j < REACH_J; j++) {
      f[j] = q0[j];
      f[REACH_J + j] = g[j];
    }
    f[14] = cos(ph);
    f[15] = sin(ph);
    float *ci = ctx + i * REACH_C;
    for (int r = 0; r < REACH_C; r++) {
      const double *p = pb + (long)r * REACH_F;
      double a = pb[(long)REACH_C * REACH_F + r];
      for (int k = 0; k < REACH_F; k++) a += p[k] * f[k];
      ci[r] = (float)tanh(a);
    }
  }
  free(pb);
  return 0;
}

static const struct {
  const char *name;
  int dim;
  void (*fn)(long, uint64_t, float *);
} toys[] = {
  { "moons", 2, moons }, { "circles", 2, circles }, { "8gaussians", 2, gaussians8 },
  { "checkerboard", 2, checkerboard }, { "pinwheel", 2, pinwheel }, { "2spirals", 2, spirals2 },
  { "tabular8", 8, tabular8 },
};

static const char VALID[] = "moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals, "
                            "tabular8, reach";

static int unknown(const char *name, char *err, size_t errlen) {
  char pn[64];
  return rt_errf(err, errlen, "unknown toy data set '%s'; the valid ones are %s",
                 name ? rt_printable(name, strlen(name), pn, sizeof pn) : "(none)", VALID);
}

int rt_toy_dim(const char *name) {
  for (size_t i = 0; name && i < sizeof toys / sizeof toys[0]; i++)
    if (!strcmp(name, toys[i].name)) return toys[i].dim;
  if (name && !strcmp(name, "reach")) return REACH_D;
  return -1;
}

int rt_toy_context_dim(const char *name) {
  if (name && !strcmp(name, "reach")) return REACH_C;
  return rt_toy_dim(name) < 0 ? -1 : 0;
}

int rt_toy_cond(const char *name, long n, uint64_t seed, float *out, float *ctx, char *err,
                size_t errlen) {
  int c = rt_toy_context_dim(name);
  if (c < 0) return unknown(name, err, errlen);
  if (n < 0 || (n > 0 && !out)) return rt_errf(err, errlen, "toy %s: bad row count or output", name);
  if (ctx && c == 0)
    return rt_errf(err, errlen, "toy %s has no context (the conditional sets: reach)", name);
  if (c > 0) {
    if (reach(n, seed, out, n > 0 ? ctx : NULL))
      return rt_errf(err, errlen, "toy %s: out of memory", name);
    return 0;
  }
  for (size_t i = 0; i < sizeof toys / sizeof toys[0]; i++)
    if (!strcmp(name, toys[i].name)) toys[i].fn(n, seed, out);
  return 0;
}

int rt_toy(const char *name, long n, uint64_t seed, float *out, char *err, size_t errlen) {
  return rt_toy_cond(name, n, seed, out, NULL, err, errlen);
}
