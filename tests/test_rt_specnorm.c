/* tests/test_rt_specnorm.c: the runtime side of residual layers: spectral
** normalisation (RT_PREP_SPECNORM, both modes, forward and reverse), the
** sn_u parameter (init, optional in files, not trained, handed back by
** rt_model_set_params), the descriptor's specnorm and noise records, and
** the train kernel's noise input. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "testutil.h"

/* The kernel's return type, whatever rt.h makes it (void or a status). */
typedef __typeof__(((rt_kernel)0)((void *const *)0, 0)) kret;

static double urand(unsigned *s) { return (rand_r(s) + 0.5) / ((double)RAND_MAX + 1); }

/* ---- a direct largest singular value: Jacobi eigenvalues of W^T W ---- */

/* Largest eigenvalue of the symmetric n x n matrix A (destroyed), by
** cyclic Jacobi rotations: no power iteration involved. */
static double jacobi_max_eig(double *A, int n) {
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) off += A[p * n + q] * A[p * n + q];
    if (off < 1e-30) break;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) {
        double apq = A[p * n + q];
        if (fabs(apq) < 1e-300) continue;
        double th = (A[q * n + q] - A[p * n + p]) / (2 * apq);
        double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
        double c = 1 / sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; k++) {      /* columns p, q */
          double akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; k++) {      /* rows p, q */
          double apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  double mx = A[0];
  for (int k = 1; k < n; k++) mx = fmax(mx, A[k * n + k]);
  return mx;
}

static double direct_sigma(const double *W, int out, int in) {
  double *A = calloc((size_t)in * in, sizeof *A);
  for (int i = 0; i < in; i++)
    for (int j = 0; j < in; j++)
      for (int o = 0; o < out; o++) A[i * in + j] += W[o * in + i] * W[o * in + j];
  double e = jacobi_max_eig(A, in);
  free(A);
  return sqrt(fmax(e, 0));
}

/* ---- sigma by power iteration ---- */

Test(specnorm, sigma_of_known_matrices) {
  double u[8], v[8];
  /* 2 x 2: sigma^2 = (T + sqrt(T^2 - 4 det^2)) / 2, T = |W|_F^2 */
  double W2[4] = { 3, 1, -2, 0.5 };
  double T = 9 + 1 + 4 + 0.25, det = 3 * 0.5 + 2;
  double s2 = sqrt((T + sqrt(T * T - 4 * det * det)) / 2);
  memset(u, 0, sizeof u);                   /* zero: the fixed start */
  cr_assert(fabs(rt_specnorm_sigma(W2, 2, 2, u, v) - s2) <= 1e-12 * s2);
  /* 3 x 3 symmetric with eigenvalues 4, -5, 1 (sigma 5), rotated */
  double W3[9] = { 0 }, Q[9], D[3] = { 4, -5, 1 };
  double a = 0.3, b = 1.1;                  /* Q = Rz(a) Rx(b) */
  double Rz[9] = { cos(a), -sin(a), 0, sin(a), cos(a), 0, 0, 0, 1 };
  double Rx[9] = { 1, 0, 0, 0, cos(b), -sin(b), 0, sin(b), cos(b) };
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) {
      Q[i * 3 + j] = 0;
      for (int k = 0; k < 3; k++) Q[i * 3 + j] += Rz[i * 3 + k] * Rx[k * 3 + j];
    }
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++)
      for (int k = 0; k < 3; k++) W3[i * 3 + j] += Q[i * 3 + k] * D[k] * Q[j * 3 + k];
  u[0] = 1; u[1] = 0; u[2] = 0;
  double s3 = rt_specnorm_sigma(W3, 3, 3, u, v);
  cr_assert(fabs(s3 - 5) <= 1e-11, "sigma %.17g", s3);
  /* u and v are the top singular pair: W v = sigma u */
  for (int i = 0; i < 3; i++) {
    double wv = 0;
    for (int j = 0; j < 3; j++) wv += W3[i * 3 + j] * v[j];
    cr_assert(fabs(wv - s3 * u[i]) <= 1e-5, "row %d", i);
  }
  /* rectangular random, both shapes, against Jacobi */
  unsigned rs = 11;
  for (int t = 0; t < 6; t++) {
    int out = 2 + t, in = 7 - t;
    double W[64];
    for (int k = 0; k < out * in; k++) W[k] = 2 * urand(&rs) - 1;
    for (int k = 0; k < out; k++) u[k] = urand(&rs);
    double s = rt_specnorm_sigma(W, out, in, u, v), ref = direct_sigma(W, out, in);
    cr_assert(fabs(s - ref) <= 1e-10 * ref, "%dx%d: %.17g vs %.17g", out, in, s, ref);
  }
  /* W = 0 */
  double Z[6] = { 0 };
  u[0] = 1; u[1] = 2;
  cr_assert_eq(rt_specnorm_sigma(Z, 2, 3, u, v), 0.0);
  cr_assert_eq(u[0], 1.0);
  cr_assert_eq(u[1], 2.0);
}

Test(specnorm, close_singular_values_are_bounded) {
  /* diag(1, 1 - 1e-10, 0.5) rotated: u, v converge very slowly, sigma
  ** does not; the iteration stops by its cap at the latest */
  double D[3] = { 1, 1 - 1e-10, 0.5 }, W[9] = { 0 };
  double c = cos(0.7), s = sin(0.7);
  double Q[9] = { c, -s, 0, s, c, 0, 0, 0, 1 };
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++)
      for (int k = 0; k < 3; k++) W[i * 3 + j] += Q[i * 3 + k] * D[k] * Q[j * 3 + k];
  double u[3] = { 0.2, 0.9, 0.4 }, v[3];
  double sg = rt_specnorm_sigma(W, 3, 3, u, v);
  cr_assert(fabs(sg - 1) <= 1e-9, "sigma %.17g", sg);
  /* a start orthogonal to the top pair of diag(2, 1) still finds 2 */
  double E[4] = { 2, 0, 0, 1 }, e2[2] = { 0, 1 };
  cr_assert(fabs(rt_specnorm_sigma(E, 2, 2, e2, v) - 2) <= 1e-9);
}

/* ---- the prep op ---- */

/* A descriptor with W [out,in] (param 0), sn_u (param 1), and programs
** given in text. */
static rt_desc *sn_desc(int out, int in, const char *entry_prog, int entry_nprep,
                        const char *train_prog, int train_nprep, const char *noise) {
  char text[4096];
  snprintf(text, sizeof text,
           "flowc-desc 1\nname sn\ndim %d\ncontext 0\ntile 4\nparams 2\n"
           "param flow.0.net.0.weight f32 2 %d %d linear_weight %d 0 0 0\n"
           "param flow.0.net.0.sn_u f32 1 %d 0 sn_u 0 0 0 0\n"
           "entry encode scratch 0 has_ld 0 nprep 0\n"
           "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry decode scratch 0 has_ld 0 nprep 0\n"
           "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry logprob scratch 0 has_ld 0 nprep %d\n%s"
           "train scratch 0 nprep %d\n%s%s"
           "end\n",
           in, out, in, in, out, entry_nprep, entry_prog, train_nprep, train_prog, noise);
  char err[256] = "";
  rt_desc *d = rt_desc_parse(text, err, sizeof err);
  cr_assert(d, "%s\n%s", err, text);
  return d;
}

static double *vals_for(const rt_prep *p) { return calloc(rt_prep_val_len(p), sizeof(double)); }

static void fill(float *x, size_t n, unsigned *rs, double scale) {
  for (size_t k = 0; k < n; k++) x[k] = (float)(scale * (2 * urand(rs) - 1));
}

Test(specnorm, mode0_caps_sigma_and_leaves_u) {
  enum { O = 4, I = 3 };
  char prog[128];
  snprintf(prog, sizeof prog, "prep specnorm %d %d 0.75 2 0 1 0\n", O, I);
  rt_desc *d = sn_desc(O, I, prog, 1, "", 0, "");
  const rt_prep *p = &d->entry[RT_LOGPROB].prep[0];
  cr_assert_eq(rt_prep_val_len(p), (size_t)(O * I + 2 + 2 * O + I));
  unsigned rs = 3;
  float W[O * I], u[O], ukeep[O];
  fill(W, O * I, &rs, 1.0);
  fill(u, O, &rs, 1.0);
  memcpy(ukeep, u, sizeof u);
  void *params[2] = { W, u };
  double *val = vals_for(p);
  rt_prep_forward(d, &d->entry[RT_LOGPROB], params, &val);
  cr_assert_eq(memcmp(u, ukeep, sizeof u), 0, "mode 0 reads u only");
  double Wd[O * I], R[O * I], uu[O] = { 0 }, vv[I];
  for (int k = 0; k < O * I; k++) Wd[k] = W[k];
  double sigma = direct_sigma(Wd, O, I);
  cr_assert(sigma > 0.75);
  for (int k = 0; k < O * I; k++) {
    R[k] = val[k];
    cr_assert(fabs(val[k] - Wd[k] * 0.75 / sigma) <= 1e-12, "k %d", k);
  }
  cr_assert(fabs(val[O * I] - sigma) <= 1e-12 * sigma, "tail sigma");
  double sr = rt_specnorm_sigma(R, O, I, uu, vv);
  cr_assert(sr <= 0.75 + 1e-6 && sr >= 0.75 - 1e-6, "sigma of the result %.17g", sr);
  /* sigma <= c: the result is W itself */
  for (int k = 0; k < O * I; k++) W[k] *= (float)(0.5 / sigma);
  rt_prep_forward(d, &d->entry[RT_LOGPROB], params, &val);
  for (int k = 0; k < O * I; k++) cr_assert_eq(val[k], (double)W[k]);
  free(val);
  rt_desc_free(d);
}

/* torch.nn.utils.spectral_norm, one training step, in double */
static double torch_step(const float *W, int O, int I, double *u, double *v) {
  double nv = 0, nu = 0;
  for (int i = 0; i < I; i++) {
    v[i] = 0;
    for (int o = 0; o < O; o++) v[i] += (double)W[o * I + i] * u[o];
    nv += v[i] * v[i];
  }
  for (int i = 0; i < I; i++) v[i] /= fmax(sqrt(nv), 1e-12);
  double wv[16];
  for (int o = 0; o < O; o++) {
    wv[o] = 0;
    for (int i = 0; i < I; i++) wv[o] += (double)W[o * I + i] * v[i];
    nu += wv[o] * wv[o];
  }
  for (int o = 0; o < O; o++) u[o] = wv[o] / fmax(sqrt(nu), 1e-12);
  double sigma = 0;
  for (int o = 0; o < O; o++) sigma += u[o] * wv[o];
  return sigma;
}

Test(specnorm, mode1_is_one_torch_step) {
  enum { O = 5, I = 3 };
  char prog[128];
  snprintf(prog, sizeof prog, "prep specnorm %d %d 0.9 2 0 1 1\n", O, I);
  rt_desc *d = sn_desc(O, I, "", 0, prog, 1, "");
  const rt_prep *p = &d->train.prep[0];
  unsigned rs = 5;
  float W[O * I], u[O];
  fill(W, O * I, &rs, 1.0);
  fill(u, O, &rs, 1.0);
  double ur[O], vr[I];
  for (int o = 0; o < O; o++) ur[o] = u[o];
  void *params[2] = { W, u };
  double *val = vals_for(p);
  for (int step = 0; step < 3; step++) {   /* each run continues from the stored u */
    double u0[O];
    for (int o = 0; o < O; o++) u0[o] = u[o];
    for (int o = 0; o < O; o++) ur[o] = u[o];
    double sr = torch_step(W, O, I, ur, vr);
    rt_prep_forward(d, &d->train, params, &val);
    double div = fmax(1, sr / 0.9);
    for (int k = 0; k < O * I; k++)
      cr_assert(fabs(val[k] - W[k] / div) <= 1e-12, "step %d k %d", step, k);
    for (int o = 0; o < O; o++) {
      cr_assert_eq(u[o], (float)ur[o], "step %d: u[%d] %.9g vs %.9g", step, o, u[o], ur[o]);
      cr_assert_eq(val[O * I + 2 + O + I + o], u0[o], "tail: the start");
    }
    cr_assert(fabs(val[O * I] - sr) <= 1e-12 * sr);
  }
  /* u = 0: the fixed start, and u becomes a unit vector */
  memset(u, 0, sizeof u);
  rt_prep_forward(d, &d->train, params, &val);
  double n2 = 0;
  for (int o = 0; o < O; o++) n2 += (double)u[o] * u[o];
  cr_assert(fabs(n2 - 1) <= 1e-6);
  /* W = 0 (a zero-initialised last layer): u is kept, the result is W */
  float keep[O];
  memcpy(keep, u, sizeof u);
  memset(W, 0, sizeof W);
  rt_prep_forward(d, &d->train, params, &val);
  cr_assert_eq(memcmp(u, keep, sizeof u), 0);
  for (int k = 0; k < O * I; k++) cr_assert_eq(val[k], 0.0);
  free(val);
  rt_desc_free(d);
}

/* L = sum(seed .* result q) over the program */
static double loss_of(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      double *const *vals, double *const *seed) {
  rt_prep_forward(d, en, params, vals);
  double L = 0;
  for (int q = 0; q < en->nprep; q++) {
    size_t len = (size_t)en->prep[q].rows * (size_t)en->prep[q].n;
    for (size_t k = 0; k < len; k++) L += seed[q][k] * vals[q][k];
  }
  return L;
}

/* Mode 0 through a prep result (W * 1.5) and straight on the param; u is
** pre-converged, so u, v constant in the reverse is exact. */
static void backward_case(double c, int active) {
  enum { O = 4, I = 5 };
  char prog[512];
  snprintf(prog, sizeof prog,
           "prep const 1 1 1.5 0\n"
           "prep mul %d %d 0 2 0 2\n"
           "prep specnorm %d %d %.17g 2 3 1 0\n"
           "prep specnorm %d %d %.17g 2 0 1 0\n", O, I, O, I, c, O, I, c);
  rt_desc *d = sn_desc(O, I, prog, 4, "", 0, "");
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  unsigned rs = 9;
  float W[O * I], u[O] = { 0 };
  fill(W, O * I, &rs, 1.0);
  double Wd[O * I], ud[O] = { 0 }, vd[I];
  for (int k = 0; k < O * I; k++) Wd[k] = W[k];
  double sigma = rt_specnorm_sigma(Wd, O, I, ud, vd);
  cr_assert_eq(active, 1.5 * sigma > c && sigma > c);
  for (int o = 0; o < O; o++) u[o] = (float)ud[o];
  void *params[2] = { W, u };
  double *vals[4], *seed[4], *gv[4], gW[O * I] = { 0 }, gu[O] = { 0 };
  double *gp[2] = { gW, gu };
  for (int q = 0; q < 4; q++) {
    size_t len = (size_t)en->prep[q].rows * en->prep[q].n;
    vals[q] = vals_for(&en->prep[q]);
    seed[q] = calloc(len, sizeof(double));
    gv[q] = calloc(len, sizeof(double));
    for (size_t k = 0; k < len; k++) seed[q][k] = q >= 2 ? 2 * urand(&rs) - 1 : 0;
  }
  loss_of(d, en, params, vals, seed);
  for (int q = 0; q < 4; q++)
    memcpy(gv[q], seed[q], (size_t)en->prep[q].rows * en->prep[q].n * sizeof(double));
  rt_prep_backward(d, en, params, (const double *const *)vals, gv, gp, NULL);
  for (int o = 0; o < O; o++) cr_assert_eq(gu[o], 0.0, "no gradient to u");
  const float eps = 1.0f / 4096;
  for (int k = 0; k < O * I; k++) {
    float keep = W[k], up = keep + eps, dn = keep - eps;
    W[k] = up;
    double lp = loss_of(d, en, params, vals, seed);
    W[k] = dn;
    double lm = loss_of(d, en, params, vals, seed);
    W[k] = keep;
    double fd = (lp - lm) / ((double)up - (double)dn);
    cr_assert(fabs(gW[k] - fd) <= 2e-5 * fmax(1.0, fabs(fd)),
              "c %g elem %d: analytic %.10g, differences %.10g", c, k, gW[k], fd);
  }
  if (!active) {                           /* identity: G of both uses, 1.5 G + G */
    for (int k = 0; k < O * I; k++)
      cr_assert(fabs(gW[k] - (1.5 * seed[2][k] + seed[3][k])) <= 1e-12);
  }
  for (int q = 0; q < 4; q++) { free(vals[q]); free(seed[q]); free(gv[q]); }
  rt_desc_free(d);
}

Test(specnorm, backward_matches_differences) {
  backward_case(0.3, 1);
  backward_case(100.0, 0);
}

/* ---- descriptor text ---- */

static const char *NOISE_TEXT =
  "noise 3\n"
  "block rademacher 5 0 0\n"
  "block roulette 6 2 0.40000000000000002\n"
  "block roulette 3 3 0\n";

Test(specnorm, desc_round_trip_and_refusals) {
  rt_desc *d = sn_desc(3, 2, "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", 1,
                       "prep specnorm 3 2 0.96999999999999997 2 0 1 1\n", 1, NOISE_TEXT);
  cr_assert_eq(d->params[1].init, RT_INIT_SN_U);
  cr_assert_eq(d->entry[RT_LOGPROB].prep[0].op, RT_PREP_SPECNORM);
  cr_assert_eq(d->entry[RT_LOGPROB].prep[0].iargs[0], 0);
  cr_assert_eq(d->train.prep[0].iargs[0], 1);
  cr_assert_eq(d->train.prep[0].f, 0.97);
  cr_assert_eq(d->nnoise, 3);
  cr_assert_eq(d->noise_width, 14);
  cr_assert_eq(d->noise[1].kind, RT_NOISE_ROULETTE);
  cr_assert_eq(d->noise[1].terms, 2);
  cr_assert_eq(d->noise[1].p, 0.4);
  char *t = rt_desc_format(d);
  char err[256] = "";
  rt_desc *d2 = rt_desc_parse(t, err, sizeof err);
  cr_assert(d2, "%s", err);
  char *t2 = rt_desc_format(d2);
  cr_assert_str_eq(t, t2);
  cr_assert(strstr(t, "param flow.0.net.0.sn_u f32 1 3 0 sn_u 0 0 0 0\n"), "%s", t);
  cr_assert(strstr(t, "prep specnorm 3 2 0.96999999999999997 2 0 1 1\nnoise 3\n"), "%s", t);
  cr_assert(strstr(t, NOISE_TEXT), "%s", t);
  free(t2);
  /* an in-memory copy keeps the noise */
  rt_weights w;
  cr_assert_eq(rt_weights_init(d, 1, &w, err, sizeof err), 0, "%s", err);
  rt_kernel ks[RT_NENTRY] = { 0 };
  rt_model *m = rt_model_open(d, ks, &w, 1, err, sizeof err);
  cr_assert(m, "%s", err);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d2);
  /* refusals: each edit of the good text must be refused with a message */
  const char *bad[][2] = {
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 3 2 0.97 2 0 1 1\n" },
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 3 2 0.97 2 0 0 0\n" },
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 3 2 0 2 0 1 0\n" },
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 2 3 0.97 2 0 1 0\n" },
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 3 2 0.97 2 0 1\n" },
    { "prep specnorm 3 2 0.96999999999999997 2 0 1 0\n", "prep specnorm 3 2 0.97 2 0 1 2\n" },
    { "train scratch 0 nprep 1\nprep specnorm 3 2 0.96999999999999997 2 0 1 1\n",
      "train scratch 0 nprep 2\nprep specnorm 3 2 0.97 2 0 1 1\nprep specnorm 3 2 0.5 2 0 1 1\n" },
    { "block rademacher 5 0 0", "block rademacher 0 0 0" },
    { "block rademacher 5 0 0", "block gaussian 5 0 0" },
    { "block roulette 6 2 0.40000000000000002", "block roulette 6 2 1" },
    { "block roulette 6 2 0.40000000000000002", "block roulette 6 7 0.4" },
    { "block roulette 6 2 0.40000000000000002", "block roulette 6 2 -0.1" },
    { "noise 3\n", "noise 4\n" },
    { "noise 3\n", "noise 0\n" },
    { "param flow.0.net.0.sn_u f32 1 3 0 sn_u", "param flow.0.net.0.sn_u f32 2 3 1 sn_u" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[4096];
    const char *at = strstr(t, bad[i][0]);
    cr_assert(at, "case %zu", i);
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - t), t, bad[i][1], at + strlen(bad[i][0]));
    err[0] = 0;
    rt_desc *b = rt_desc_parse(text, err, sizeof err);
    cr_assert_null(b, "case %zu parsed:\n%s", i, text);
    cr_assert(err[0], "case %zu has no message", i);
  }
  /* noise outside a train section is not part of the grammar */
  char *cut = strstr(t, "train scratch");
  strcpy(cut, NOISE_TEXT);
  strcat(t, "end\n");
  cr_assert_null(rt_desc_parse(t, err, sizeof err));
  free(t);
  rt_desc_free(d);
}

/* ---- a model: set_params, grad, noise ---- */

enum { MO = 3, MI = 2, NW = 14, MAXROWS = 20000 };
static float g_noise[MAXROWS * NW];
static int g_seen[MAXROWS];
static double g_G[MO * MI];

/* args (P = 2, Q = 1): 0 x, 2 lp, 4 W, 5 u, 6 the train prep (W_sn),
** 7 scratch, 8-9 param slots, 10 the prep slot, 11 noise. x[r, 0] holds
** the row's index in the batch. Adds G into the prep slot per row, so
** dL/dW_sn = G for the mean, and copies its noise rows out. */
static kret k_train(void *const *a, int64_t n) {
  const float *x = a[0], *noise = a[11];
  float *lp = a[2], *gq = a[10];
  cr_assert_not_null(noise);
  for (int64_t r = 0; r < n; r++) {
    int row = (int)x[r * MI];
    lp[r] = 0;
    for (int k = 0; k < MO * MI; k++) gq[k] += (float)g_G[k];
    memcpy(g_noise + (size_t)row * NW, noise + r * NW, NW * sizeof(float));
    g_seen[row]++;
  }
  return (kret)0;
}

static kret k_logprob(void *const *a, int64_t n) {
  (void)a;
  (void)n;
  return (kret)0;
}

static rt_desc *model_desc(int tile) {
  rt_desc *d = sn_desc(MO, MI, "prep specnorm 3 2 0.5 2 0 1 0\n", 1,
                       "prep specnorm 3 2 0.5 2 0 1 1\n", 1, NOISE_TEXT);
  d->tile = tile;
  return d;
}

static rt_model *open_model(const rt_desc *d, const rt_weights *w, int threads) {
  char err[256] = "";
  rt_kernel ks[RT_NENTRY] = { NULL, NULL, NULL, NULL, k_logprob };
  rt_model *m = rt_model_open(d, ks, w, threads, err, sizeof err);
  cr_assert(m, "%s", err);
  cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
  return m;
}

static void model_weights(const rt_desc *d, rt_weights *w) {
  char err[256];
  cr_assert_eq(rt_weights_init(d, 7, w, err, sizeof err), 0, "%s", err);
  float *W = w->data[0];
  unsigned rs = 21;
  fill(W, MO * MI, &rs, 2.0);                  /* sigma well above c = 0.5 */
}

Test(specnorm_model, set_params_advances_once_and_hands_back) {
  rt_desc *d = model_desc(4);
  rt_weights w;
  model_weights(d, &w);
  float u0[MO], W[MO * MI];
  memcpy(u0, w.data[1], sizeof u0);
  memcpy(W, w.data[0], sizeof W);
  rt_model *m = open_model(d, &w, 2);
  const float *live = rt_model_params(m)->data[1];
  /* open ran the train program once: the live u is one step from w's */
  double ur[MO], vr[MI];
  for (int o = 0; o < MO; o++) ur[o] = u0[o];
  torch_step(W, MO, MI, ur, vr);
  for (int o = 0; o < MO; o++) cr_assert_eq(live[o], (float)ur[o]);
  cr_assert_eq(memcmp(w.data[1], u0, sizeof u0), 0, "open leaves the caller's weights");
  /* the logprob entry's prep is converged and left u alone */
  double Wd[MO * MI];
  for (int k = 0; k < MO * MI; k++) Wd[k] = W[k];
  double sigma = direct_sigma(Wd, MO, MI);
  const float *ev = rt_model_prep(m, RT_LOGPROB)[0];
  for (int k = 0; k < MO * MI; k++) cr_assert(fabs(ev[k] - W[k] * 0.5 / sigma) <= 1e-6);
  char err[256] = "";
  for (int step = 0; step < 4; step++) {
    float before[MO];
    memcpy(before, live, sizeof before);
    float *Ww = w.data[0];
    Ww[step % (MO * MI)] += 0.25f;          /* an "optimiser step" */
    float *wu = w.data[1];
    wu[0] = 123.0f;                         /* a stale caller u is ignored */
    cr_assert_eq(rt_model_set_params(m, &w, err, sizeof err), RT_OK, "%s", err);
    cr_assert_eq(memcmp(w.data[1], before, sizeof before), 0, "handed back: the start");
    for (int o = 0; o < MO; o++) ur[o] = before[o];
    torch_step(Ww, MO, MI, ur, vr);
    for (int o = 0; o < MO; o++) cr_assert_eq(live[o], (float)ur[o], "step %d", step);
    /* a model opened from the handed-back weights is in the same state */
    rt_model *m2 = open_model(d, &w, 1);
    cr_assert_eq(memcmp(rt_model_params(m2)->data[1], live, sizeof before), 0);
    cr_assert_eq(memcmp(rt_model_prep(m2, RT_TRAIN_PREP)[0], rt_model_prep(m, RT_TRAIN_PREP)[0],
                        sizeof(float) * MO * MI), 0);
    rt_model_close(m2);
  }
  /* its own params: advances once more, nothing handed anywhere */
  float before[MO];
  memcpy(before, live, sizeof before);
  cr_assert_eq(rt_model_set_params(m, rt_model_params(m), err, sizeof err), RT_OK, "%s", err);
  for (int o = 0; o < MO; o++) ur[o] = before[o];
  torch_step(rt_model_params(m)->data[0], MO, MI, ur, vr);
  for (int o = 0; o < MO; o++) cr_assert_eq(live[o], (float)ur[o]);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
}

static float *row_data(size_t n) {
  float *x = calloc(n * MI, sizeof(float));
  for (size_t r = 0; r < n; r++) x[r * MI] = (float)r;
  return x;
}

Test(specnorm_model, grad_goes_through_specnorm) {
  rt_desc *d = model_desc(4);
  rt_weights w;
  model_weights(d, &w);
  rt_model *m = open_model(d, &w, 2);
  unsigned rs = 4;
  for (int k = 0; k < MO * MI; k++) g_G[k] = 2 * urand(&rs) - 1;
  size_t n = 37;
  float *x = row_data(n);
  float gW[MO * MI], gu[MO];
  float *grads[2] = { gW, gu };
  double loss;
  memset(g_seen, 0, sizeof g_seen);
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_OK);
  for (int o = 0; o < MO; o++) cr_assert_eq(gu[o], 0.0f, "sn_u gets no gradient");
  /* torch's: W_sn = W c / sigma, u', v of the step held constant */
  const float *W = rt_model_params(m)->data[0];
  double ur[MO], vr[MI];
  for (int o = 0; o < MO; o++) ur[o] = ((const float *)w.data[1])[o];
  double sigma = torch_step(W, MO, MI, ur, vr), gw = 0;
  cr_assert(sigma > 0.5);
  for (int k = 0; k < MO * MI; k++) gw += g_G[k] * W[k];
  for (int o = 0; o < MO; o++)
    for (int i = 0; i < MI; i++) {
      int k = o * MI + i;
      double ref = 0.5 / sigma * (g_G[k] - gw / sigma * ur[o] * vr[i]);
      cr_assert(fabs(gW[k] - ref) <= 1e-5 * fmax(1, fabs(ref)), "k %d: %.9g vs %.9g", k, gW[k], ref);
    }
  free(x);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
}

/* The noise of n rows under (threads, tile), copied out by k_train. */
static float *noise_of(size_t n, int threads, int tile, uint64_t seed, uint64_t ctr) {
  rt_desc *d = model_desc(tile);
  rt_weights w;
  model_weights(d, &w);
  rt_model *m = open_model(d, &w, threads);
  rt_model_set_noise(m, seed, ctr);
  float *x = row_data(n);
  double loss;
  memset(g_seen, 0, sizeof g_seen);
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, NULL), RT_OK);
  for (size_t r = 0; r < n; r++) cr_assert_eq(g_seen[r], 1, "row %zu", r);
  float *out = malloc(n * NW * sizeof(float));
  memcpy(out, g_noise, n * NW * sizeof(float));
  free(x);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
  return out;
}

Test(specnorm_model, noise_is_deterministic_and_split_free) {
  size_t n = 301;
  float *a = noise_of(n, 1, 4, 5, 17);
  float *b = noise_of(n, 3, 4, 5, 17);
  float *c = noise_of(n, 2, 7, 5, 17);
  float *e = noise_of(n, 2, 4, 5, 18);
  float *f = noise_of(n, 2, 4, 6, 17);
  cr_assert_eq(memcmp(a, b, n * NW * sizeof(float)), 0, "thread count");
  cr_assert_eq(memcmp(a, c, n * NW * sizeof(float)), 0, "tile size");
  cr_assert_neq(memcmp(a, e, n * NW * sizeof(float)), 0, "counter");
  cr_assert_neq(memcmp(a, f, n * NW * sizeof(float)), 0, "seed");
  /* a smaller batch has the same first rows */
  float *g = noise_of(10, 2, 4, 5, 17);
  cr_assert_eq(memcmp(a, g, 10 * NW * sizeof(float)), 0, "rows");
  free(a); free(b); free(c); free(e); free(f); free(g);
}

Test(specnorm_model, noise_distributions) {
  size_t n = MAXROWS;
  float *z = noise_of(n, 2, 4, 99, 3);
  /* Rademacher: +-1, mean about 0 (5 columns of n rows) */
  double s = 0;
  for (size_t r = 0; r < n; r++)
    for (int j = 0; j < 5; j++) {
      float v = z[r * NW + j];
      cr_assert(v == 1.0f || v == -1.0f);
      s += v;
    }
  cr_assert(fabs(s / (5.0 * n)) <= 5 / sqrt(5.0 * n), "mean %g", s / (5.0 * n));
  /* roulette (kmax 6, terms 2, p 0.4): q_k = 1 / P(N >= k) on a prefix k <=
  ** N, 0 after; E[column k] = 1 for every k, within sampling error */
  double mean[6] = { 0 }, q = 1;
  long reach[7] = { 0 };
  for (size_t r = 0; r < n; r++) {
    const float *row = z + r * NW + 5;
    int N = 0;
    while (N < 6 && row[N] != 0) N++;
    reach[N]++;
    for (int k = 0; k < 6; k++) {
      double want = k < 2 ? 1 : pow(0.6, -(k - 1));
      if (k < N) cr_assert(fabs(row[k] - want) <= 1e-6 * want, "row %zu col %d", r, k);
      else cr_assert_eq(row[k], 0.0f);
      mean[k] += row[k];
    }
    cr_assert(N >= 2);
  }
  for (int k = 0; k < 6; k++) {
    double P = k < 2 ? 1 : pow(0.6, k - 1);           /* P(N >= k + 1) */
    double se = sqrt((1 / P - 1) / (double)n);
    mean[k] /= (double)n;
    cr_assert(fabs(mean[k] - 1) <= 5 * se + 1e-12, "k %d: mean %g (se %g)", k + 1, mean[k], se);
    (void)q;
  }
  /* p = 0: exactly `terms` (3 of 3) ones */
  for (size_t r = 0; r < n; r++)
    for (int k = 0; k < 3; k++) cr_assert_eq(z[r * NW + 11 + k], 1.0f);
  cr_assert(reach[2] > 0 && reach[6] > 0);
  free(z);
}

/* ---- sn_u in files and the optimiser ---- */

static const char *tmp(const char *name) {
  static char buf[4][512];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
  return p;
}

Test(specnorm_files, sn_u_is_optional_and_saved) {
  rt_desc *d = model_desc(4);
  rt_weights w, r;
  model_weights(d, &w);
  char err[512] = "";
  /* the initial vector: unit length, independent of the seed */
  rt_weights w2;
  cr_assert_eq(rt_weights_init(d, 12345, &w2, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(w.data[1], w2.data[1], MO * sizeof(float)), 0);
  float fresh[MO];
  rt_sn_u_init(d, 1, fresh);
  cr_assert_eq(memcmp(w.data[1], fresh, sizeof fresh), 0);
  double n2 = 0;
  for (int o = 0; o < MO; o++) n2 += (double)fresh[o] * fresh[o];
  cr_assert(fabs(n2 - 1) <= 1e-6);
  rt_weights_free(&w2);
  /* without sn_u: loads, with the initial vector */
  const char *p = tmp("no_u.safetensors");
  rt_named_tensor t = { "flow.0.net.0.weight", RT_F32, 2, { MO, MI }, w.data[0] };
  cr_assert_eq(rt_safetensors_save(p, &t, 1, NULL, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_weights_load(d, p, &r, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(r.data[0], w.data[0], MO * MI * sizeof(float)), 0);
  cr_assert_eq(memcmp(r.data[1], fresh, sizeof fresh), 0);
  rt_weights_free(&r);
  /* with it: its values; and rt_weights_save writes it */
  float *u = w.data[1];
  u[0] = 0.25f; u[1] = -0.5f; u[2] = 0.75f;
  p = tmp("u.safetensors");
  cr_assert_eq(rt_weights_save(d, &w, p, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_weights_load(d, p, &r, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(r.data[1], u, MO * sizeof(float)), 0);
  rt_weights_free(&r);
  /* a misshapen one is still refused */
  float bad[4] = { 0 };
  rt_named_tensor tb[2] = { t, { "flow.0.net.0.sn_u", RT_F32, 1, { 4 }, bad } };
  p = tmp("bad_u.safetensors");
  cr_assert_eq(rt_safetensors_save(p, tb, 2, NULL, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_weights_load(d, p, &r, err, sizeof err), 0);
  cr_assert(strstr(err, "sn_u"), "%s", err);
  /* checkpoints carry it (no moments: not trained); without it they load */
  rt_optim_cfg cfg = { 0.01, 0.9, 0.999, 1e-8, 0, 0, 0, RT_SCHED_CONSTANT, 0, 0 };
  rt_optim *o = rt_optim_new(d, &cfg);
  cr_assert_null(rt_optim_moment(o, 1, 0));
  cr_assert_null(rt_optim_moment(o, 1, 1));
  cr_assert_not_null(rt_optim_moment(o, 0, 0));
  rt_train_state st = { 0 };
  st.step = 3;
  p = tmp("ck.safetensors");
  cr_assert_eq(rt_checkpoint_save(d, p, &w, o, &st, err, sizeof err), 0, "%s", err);
  rt_train_state s2;
  cr_assert_eq(rt_checkpoint_load(d, p, &r, o, &s2, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(r.data[1], u, MO * sizeof(float)), 0);
  rt_weights_free(&r);
  rt_train_state_free(&s2);
  p = tmp("ck_no_u.safetensors");
  float m0[MO * MI] = { 0 };
  rt_named_tensor tc[3] = { t, { "optim.m.flow.0.net.0.weight", RT_F32, 2, { MO, MI }, m0 },
                            { "optim.v.flow.0.net.0.weight", RT_F32, 2, { MO, MI }, m0 } };
  cr_assert_eq(rt_safetensors_save(p, tc, 3, NULL, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_checkpoint_load(d, p, &r, o, &s2, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(r.data[1], fresh, sizeof fresh), 0);
  rt_weights_free(&r);
  rt_train_state_free(&s2);
  rt_optim_free(o);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(specnorm_files, optimiser_skips_sn_u) {
  rt_desc *d = model_desc(4);
  rt_weights w;
  model_weights(d, &w);
  float u[MO], W[MO * MI];
  memcpy(u, w.data[1], sizeof u);
  memcpy(W, w.data[0], sizeof W);
  rt_optim_cfg cfg = { 0.01, 0.9, 0.999, 1e-8, 0, 1.0, 0, RT_SCHED_CONSTANT, 0, 0 };
  rt_optim *o = rt_optim_new(d, &cfg);
  cr_assert(o);
  float gW[MO * MI], gu[MO];
  for (int k = 0; k < MO * MI; k++) gW[k] = 0.1f;
  for (int k = 0; k < MO; k++) gu[k] = 1e6f;
  float *grads[2] = { gW, gu };
  double norm;
  cr_assert_eq(rt_optim_step(o, &w, grads, &norm), RT_OK);
  cr_assert(fabs(norm - 0.1 * sqrt(MO * MI)) <= 1e-6, "norm %g: sn_u left out", norm);
  cr_assert_eq(memcmp(w.data[1], u, sizeof u), 0, "sn_u unchanged");
  cr_assert_neq(memcmp(w.data[0], W, sizeof W), 0, "the weight moved");
  for (int k = 0; k < MO; k++) cr_assert_eq(gu[k], 1e6f, "not clipped either");
  rt_optim_free(o);
  rt_weights_free(&w);
  rt_desc_free(d);
}
