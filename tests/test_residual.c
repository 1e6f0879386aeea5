/*
** tests/test_residual.c: residual layers in the reference interpreter
** (double precision): the fixed-point inverse, the exact log-det against
** a finite-difference Jacobian, the series estimator's mean against the
** exact value, its Neumann-series gradient against differences of the
** exact log-likelihood, and the non-convergence error.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "modelgen.h"
#include "passes.h"
#include "testutil.h"

/* nl residual layers with one hidden layer of h units, Lipschitz c. */
static ir_model *res_model(ir_arena *A, int D, int C, int nl, int h, ir_act act, double c,
                           int series, int terms, double roulette) {
  ir_model *m = ir_alloc(A, sizeof *m);
  m->name = "res";
  m->dim = m->dims[0] = D;
  m->ndims = 1;
  m->context = C;
  m->nlayers = nl;
  ir_layer *L = ir_alloc(A, (size_t)nl * sizeof *L);
  int *hid = ir_alloc(A, sizeof *hid);
  hid[0] = h;
  for (int k = 0; k < nl; k++) {
    L[k].kind = LAYER_RESIDUAL;
    L[k].net = (ir_net){NET_MLP, 1, hid, act};
    L[k].lipschitz = c;
    L[k].series = series;
    L[k].terms = terms;
    L[k].roulette = roulette;
    L[k].iters = 500;
    L[k].tol = 1e-12;
  }
  m->layers = L;
  return m;
}

static int run(const ir_program *p, ir_entry e, void **w, long n, const double *in,
               const double *ctx, double *out, double *ld, char *err) {
  return ir_interp(p, p->entry[e], (const void *const *)w, n, in, ctx, out, ld, err, 256);
}

Test(residual, decode_inverts_encode) {
  mg_rng r = {1};
  ir_arena *A = ir_arena_new();
  for (int C = 0; C <= 2; C += 2) {
    ir_program *p = ir_lower(A, res_model(A, 3, C, 2, 10, ACT_LIPSWISH, 0.9, 0, 0, 0), NULL, 0);
    void **w = mg_params(A, &r, p, 2.0);   /* sigma well above c: the norm acts */
    double z[5 * 3], x[5 * 3], z2[5 * 3], c[5 * 2], ldx[5], ldz[5];
    for (int i = 0; i < 15; i++) z[i] = mg_normal(&r);
    for (int i = 0; i < 10; i++) c[i] = mg_normal(&r);
    char err[256];
    cr_assert_eq(run(p, IR_ENTRY_DECODE_LD, w, 5, z, c, x, ldz, err), 0, "%s", err);
    cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 5, x, c, z2, ldx, err), 0, "%s", err);
    /* the loop stops within two float32 steps (docs/choices.md), c = 0.9 */
    for (int i = 0; i < 15; i++) cr_assert(fabs(z2[i] - z[i]) < 1e-5, "z %g vs %g", z2[i], z[i]);
    for (int i = 0; i < 5; i++) cr_assert(fabs(ldx[i] + ldz[i]) < 1e-5);
    double moved = 0;
    for (int i = 0; i < 15; i++) moved += fabs(x[i] - z[i]);
    cr_assert(moved > 0.1, "the layers must do something");
  }
  ir_arena_free(A);
}

/* The density direction's log|det dz/dx| against central differences. */
Test(residual, exact_logdet_matches_jacobian) {
  mg_rng r = {2};
  ir_arena *A = ir_arena_new();
  for (int D = 1; D <= 4; D++) {
    ir_act act = D % 2 ? ACT_TANH : ACT_ELU;
    ir_program *p = ir_lower(A, res_model(A, D, 1, 2, 7, act, 0.8, 0, 0, 0), NULL, 0);
    void **w = mg_params(A, &r, p, 2.0);
    double x[4], c[1] = {0.3}, z[4], ld, J[16], xp[4], zp[4], zm[4];
    char err[256];
    for (int i = 0; i < D; i++) x[i] = mg_normal(&r);
    cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 1, x, c, z, &ld, err), 0, "%s", err);
    for (int j = 0; j < D; j++) {
      double h = 1e-6;
      memcpy(xp, x, sizeof x);
      xp[j] = x[j] + h;
      run(p, IR_ENTRY_ENCODE, w, 1, xp, c, zp, NULL, err);
      xp[j] = x[j] - h;
      run(p, IR_ENTRY_ENCODE, w, 1, xp, c, zm, NULL, err);
      for (int i = 0; i < D; i++) J[i * D + j] = (zp[i] - zm[i]) / (2 * h);
    }
    double want = tu_logabsdet(J, D);
    cr_assert(fabs(ld - want) < 1e-6, "D %d: logdet %.10g, differences %.10g", D, ld, want);
  }
  ir_arena_free(A);
}

/* The noise of flow-language.md 6 / ir_noise, written here from the
** definition: Rademacher probes, q_k = 1 / P(N >= k) for k <= N. */
static void fill_noise(mg_rng *r, const ir_program *p, long n, double *noise) {
  for (long row = 0; row < n; row++) {
    double *o = &noise[row * p->noise_width];
    for (int b = 0; b < p->nnoise; b++) {
      const ir_noise *nb = &p->noise[b];
      if (nb->kind == IR_NOISE_RADEMACHER) {
        for (int j = 0; j < nb->n; j++) *o++ = mg_uniform(r) < 0.5 ? -1 : 1;
        continue;
      }
      int N = nb->terms;
      while (nb->p > 0 && N < nb->n && mg_uniform(r) >= nb->p) N++;
      for (int k = 1; k <= nb->n; k++)
        *o++ = k > N ? 0 : k <= nb->terms ? 1 : pow(1 - nb->p, -(k - nb->terms));
    }
  }
}

/* Mean and standard error of the train graph's log p over n probes at
** one point x, against the exact log p. */
static void check_series_mean(int terms, double roulette, uint64_t seed) {
  mg_rng r = {seed};
  ir_arena *A = ir_arena_new();
  ir_program *p = ir_lower(A, res_model(A, 2, 0, 1, 8, ACT_LIPSWISH, 0.7, 1, terms, roulette),
                           NULL, 0);
  void **w = mg_params(A, &r, p, 3.0);
  ir_graph *g = ir_lower_train(p);
  long n = 20000;
  double *x = malloc((size_t)n * 2 * sizeof *x), *lp = malloc((size_t)n * sizeof *lp);
  double *noise = malloc((size_t)(n * p->noise_width) * sizeof *noise), exact;
  for (long i = 0; i < n; i++) x[2 * i] = 0.4, x[2 * i + 1] = -1.1;
  fill_noise(&r, p, n, noise);
  char err[256];
  cr_assert_eq(run(p, IR_ENTRY_LOGPROB, w, 1, x, NULL, &exact, NULL, err), 0, "%s", err);
  cr_assert_eq(ir_interp_noise(p, g, (const void *const *)w, n, x, NULL, noise, lp, NULL, err,
                               sizeof err), 0, "%s", err);
  double s = 0, s2 = 0;
  for (long i = 0; i < n; i++) s += lp[i], s2 += lp[i] * lp[i];
  double mean = s / n, se = sqrt(fmax(s2 / n - mean * mean, 0) / n);
  cr_assert(se > 0, "the estimator must be random");
  cr_assert(fabs(mean - exact) < 4 * se + 1e-3, "terms %d roulette %g: mean %.6g +- %.2g, exact %.6g",
            terms, roulette, mean, se, exact);
  free(x); free(lp); free(noise);
  ir_arena_free(A);
}

Test(residual, series_estimator_is_unbiased) {
  check_series_mean(2, 0.5, 3);
  check_series_mean(1, 0.3, 4);
  check_series_mean(12, 0, 5);   /* plain truncation: converged at c = 0.7 */
}

/* Scales W [R, n] so that its largest singular value is target. */
static void set_sigma(float *W, int R, int n, double target) {
  double u[64], v[64], s = 0;
  for (int i = 0; i < R; i++) u[i] = 1;
  for (int it = 0; it < 2000; it++) {
    double nv = 0, nu = 0;
    for (int j = 0; j < n; j++) {
      v[j] = 0;
      for (int i = 0; i < R; i++) v[j] += W[i * n + j] * u[i];
      nv += v[j] * v[j];
    }
    for (int i = 0; i < R; i++) {
      u[i] = 0;
      for (int j = 0; j < n; j++) u[i] += W[i * n + j] * v[j] / sqrt(nv);
      nu += u[i] * u[i];
    }
    s = sqrt(nu);
    for (int i = 0; i < R; i++) u[i] /= s;
  }
  for (int e = 0; e < R * n; e++) W[e] = (float)(W[e] * target / s);
}

/* Gradients of sum log p w.r.t. the (spectrally normalised) weights: the
** train graph in the interpreter, averaged over probes for the series,
** against central differences of the exact log p. The weights are small
** (sigma < c), so the normalisation is the identity and the gradient of a
** specnorm node is that of its weight. */
static void check_grads(int series, uint64_t seed) {
  mg_rng r = {seed};
  ir_arena *A = ir_arena_new();
  ir_program *p = ir_lower(A, res_model(A, 2, 1, 1, 5, ACT_SOFTPLUS, 0.9, series, 2, 0.5),
                           NULL, 0);
  void **w = mg_params(A, &r, p, 1.0);
  for (int i = 0; i < p->nparams; i++)   /* strong, but below c: no normalisation */
    if (p->params[i].ndim == 2) set_sigma(w[i], p->params[i].shape[0], p->params[i].shape[1], 0.88);
  pass_autodiff(p);
  pass_pipeline(p, 2, NULL, NULL);
  long n = series ? 40000 : 1;
  double *x = malloc((size_t)n * 2 * sizeof *x), *c = malloc((size_t)n * sizeof *c);
  double *noise = malloc((size_t)(n * p->noise_width + 1) * sizeof *noise);
  double *lp = malloc((size_t)n * sizeof *lp);
  for (long i = 0; i < n; i++) x[2 * i] = 0.7, x[2 * i + 1] = 0.2, c[i] = -0.5;
  fill_noise(&r, p, n, noise);
  int slots = p->nparams + p->train->nprep;
  double **g = calloc((size_t)slots, sizeof *g);
  for (int i = 0; i < slots; i++) g[i] = calloc(64, sizeof **g);
  char err[256];
  cr_assert_eq(ir_interp_noise(p, p->train, (const void *const *)w, n, x, c, noise, lp, g, err,
                               sizeof err), 0, "%s", err);
  /* the specnorm node of weight i is the prep node whose first arg is it */
  for (int i = 0; i < p->train->nnodes; i++) {
    const ir_node *s = p->train->nodes[i];
    if (s->op != IR_SPECNORM) continue;
    float *W = w[s->args[0]->i0];
    for (int e = 0; e < s->rows * s->n; e++) {
      float keep = W[e];
      double lpp, lpm, h = 1e-4;
      W[e] = keep + (float)h;
      double hp = W[e] - (double)keep;
      run(p, IR_ENTRY_LOGPROB, w, 1, x, c, &lpp, NULL, err);
      W[e] = keep - (float)h;
      double hm = keep - (double)W[e];
      run(p, IR_ENTRY_LOGPROB, w, 1, x, c, &lpm, NULL, err);
      W[e] = keep;
      double want = -(lpp - lpm) / (hp + hm), got = g[p->nparams + s->prep][e] / n;
      double tol = series ? 0.01 + 0.03 * fabs(want) : 1e-6 + 1e-5 * fabs(want);
      cr_assert(fabs(got - want) < tol, "series %d: %s[%d] gradient %.6g, differences %.6g",
                series, p->params[s->args[0]->i0].name, e, got, want);
    }
  }
  for (int i = 0; i < slots; i++) free(g[i]);
  free(g); free(x); free(c); free(noise); free(lp);
  ir_arena_free(A);
}

Test(residual, exact_gradients) { check_grads(0, 6); }
Test(residual, series_gradients_in_expectation) { check_grads(1, 7); }

Test(residual, no_convergence_is_an_error) {
  mg_rng r = {8};
  ir_arena *A = ir_arena_new();
  ir_model *m = res_model(A, 2, 0, 1, 6, ACT_TANH, 0.95, 0, 0, 0);
  ((ir_layer *)m->layers)[0].iters = 3;
  ir_program *p = ir_lower(A, m, NULL, 0);
  void **w = mg_params(A, &r, p, 3.0);
  double z[2] = {2.0, -1.0}, x[2];
  char err[256] = "";
  cr_assert_eq(run(p, IR_ENTRY_DECODE, w, 1, z, NULL, x, NULL, err), -1);
  cr_assert(strstr(err, "layer 0 (residual)") && strstr(err, "did not converge within 3"), "%s", err);
  ir_arena_free(A);
}
