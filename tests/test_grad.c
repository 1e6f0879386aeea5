/*
** tests/test_grad.c: gradients of the mean negative log-likelihood against
** central differences of the reference interpreter (double precision):
** the autodiff graph itself in the interpreter, and the compiled gradient
** kernel through the runtime (with the prep program's backward pass), for
** every layer kind, with and without context.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "modelgen.h"
#include "passes.h"

/* Sum over rows of -log p(x) in the interpreter. */
static double nll(const ir_program *p, void **params, long n, const double *x, const double *c) {
  double *lp = malloc((size_t)n * sizeof *lp), s = 0;
  char err[256];
  cr_assert_eq(ir_interp(p, p->entry[IR_ENTRY_LOGPROB], (const void *const *)params, n, x, c, lp,
                         NULL, err, sizeof err), 0, "%s", err);
  for (long i = 0; i < n; i++) s -= lp[i];
  free(lp);
  return s;
}

/* d nll / d param[i][j] by central differences on the float parameter. */
static double fd(const ir_program *p, void **params, int i, long j, long n, const double *x,
                 const double *c) {
  float *v = params[i], keep = v[j];
  double h = 3e-5 * fmax(1.0, fabs(keep));   /* small: ReLU kinks; exact deltas below */
  v[j] = (float)(keep + h);
  double hp = (double)v[j] - keep, fp = nll(p, params, n, x, c);
  v[j] = (float)(keep - h);
  double hm = keep - (double)v[j], fm = nll(p, params, n, x, c);
  v[j] = keep;
  return (fp - fm) / (hp + hm);
}

static long numel(const ir_param *pa) { return pa->ndim == 2 ? (long)pa->shape[0] * pa->shape[1] : pa->shape[0]; }

/* Models whose parameters are all used directly (no prep program): the
** interpreter's sinks alone are the whole gradient. */
static void check_interp(uint64_t seed, int D, int C, const ir_layerkind *kinds, int nl) {
  mg_rng r = {seed};
  ir_arena *A = ir_arena_new();
  ir_model *m = mg_model(A, &r, D, C, nl, kinds);
  char err[256];
  ir_program *p = ir_lower(A, m, err, sizeof err);
  void **params = mg_params(A, &r, p, 0.8);
  pass_autodiff(p);
  pass_pipeline(p, 2, NULL, NULL);
  long n = 3;
  double *x = malloc((size_t)(n * D) * sizeof *x), *c = malloc((size_t)(n * C + 1) * sizeof *c);
  for (long i = 0; i < n * D; i++) x[i] = 1.2 * mg_normal(&r);
  for (long i = 0; i < n * C; i++) c[i] = mg_normal(&r);
  int slots = p->nparams + p->train->nprep;
  double **g = calloc((size_t)slots, sizeof *g);
  for (int i = 0; i < p->nparams; i++) g[i] = calloc((size_t)numel(&p->params[i]) + 1, sizeof **g);
  double *lp = malloc((size_t)n * sizeof *lp);
  cr_assert_eq(ir_interp_grads(p, p->train, (const void *const *)params, n, x, c, lp, g, err, sizeof err), 0);
  for (int i = 0; i < p->nparams; i++) {
    if (p->params[i].dtype != IR_F32) continue;
    for (long j = 0; j < numel(&p->params[i]); j++) {
      double want = fd(p, params, i, j, n, x, c);
      cr_assert(fabs(g[i][j] - want) <= 2e-3 * fmax(1.0, fabs(want)),
                "seed %llu %s[%ld]: autodiff %.8g, differences %.8g", (unsigned long long)seed,
                p->params[i].name, j, g[i][j], want);
    }
  }
  for (int i = 0; i < p->nparams; i++) free(g[i]);
  free(g); free(x); free(c); free(lp);
  ir_arena_free(A);
}

Test(grad, interp_couplings) {
  static const ir_layerkind k1[] = {LAYER_AFFINE_COUPLING, LAYER_PERMUTE, LAYER_AFFINE_COUPLING};
  static const ir_layerkind k2[] = {LAYER_ADDITIVE_COUPLING, LAYER_PERMUTE, LAYER_SPLINE_COUPLING};
  static const ir_layerkind k3[] = {LAYER_SPLINE_COUPLING};
  for (uint64_t s = 0; s < 6; s++) {
    check_interp(10 + s, 2 + (int)s % 4, s % 2 ? 2 : 0, k1, 3);
    check_interp(20 + s, 2 + (int)s % 4, s % 2 ? 2 : 0, k2, 3);
    check_interp(30 + s, 1 + (int)s % 4, s % 2 ? 0 : 2, k3, 1);
  }
}

/* ---- compiled gradients through the runtime ---- */

#include "cg.h"
#include "rt.h"

/* The compiled mean -log p gradient of a random model against central
** differences of the interpreter, for every parameter entry. */
static void check_compiled(uint64_t seed, int D, int C, const ir_layerkind *kinds, int nl, int threads) {
  mg_rng r = {seed};
  ir_arena *A = ir_arena_new();
  ir_model *m = mg_model(A, &r, D, C, nl, kinds);
  char err[512];
  ir_program *p = ir_lower(A, m, err, sizeof err);
  void **params = mg_params(A, &r, p, 0.8);
  pass_autodiff(p);
  pass_pipeline(p, 2, NULL, NULL);
  rt_desc *d = cg_desc_err(p, err, sizeof err);
  cr_assert(d, "%s", err);
  cg_jit *j = cg_jit_new(p, 2, err, sizeof err);
  cr_assert(j, "%s", err);
  rt_kernel k[RT_NENTRY];
  cg_jit_kernels(j, k);
  rt_weights w = {p->nparams, params, 0};
  rt_model *rm = rt_model_open(d, k, &w, threads, err, sizeof err);
  cr_assert(rm, "%s", err);
  cr_assert_eq(rt_model_set_train(rm, cg_jit_train(j)), 0);
  long n = 70;   /* more than one tile when the tile is small */
  float *x = malloc((size_t)(n * D) * sizeof *x), *c = malloc((size_t)(n * C + 1) * sizeof *c);
  double *xd = malloc((size_t)(n * D) * sizeof *xd), *cd = malloc((size_t)(n * C + 1) * sizeof *cd);
  for (long i = 0; i < n * D; i++) xd[i] = x[i] = (float)(1.2 * mg_normal(&r));
  for (long i = 0; i < n * C; i++) cd[i] = c[i] = (float)mg_normal(&r);
  float **g = calloc((size_t)p->nparams + 1, sizeof *g);
  for (int i = 0; i < p->nparams; i++)
    if (p->params[i].dtype == IR_F32) g[i] = malloc((size_t)numel(&p->params[i]) * sizeof **g + 4);
  double loss;
  cr_assert_eq(rt_model_grad(rm, (size_t)n, x, C ? c : NULL, (size_t)n, &loss, g), 0);
  cr_assert(fabs(loss - nll(p, params, n, xd, cd) / n) < 1e-4 * fmax(1, fabs(loss)), "loss %g", loss);
  for (int i = 0; i < p->nparams; i++) {
    if (!g[i] || p->params[i].init == INIT_LU_SIGN) continue;
    for (long e = 0; e < numel(&p->params[i]); e++) {
      double want = fd(p, params, i, e, n, xd, cd) / n;
      cr_assert(fabs(g[i][e] - want) <= 2e-3 * fmax(0.05, fabs(want)),
                "seed %llu %s[%ld]: compiled %.7g, differences %.7g", (unsigned long long)seed,
                p->params[i].name, e, g[i][e], want);
    }
  }
  for (int i = 0; i < p->nparams; i++) free(g[i]);
  free(g); free(x); free(c); free(xd); free(cd);
  rt_model_close(rm);
  cg_jit_free(j);
  rt_desc_free(d);
  ir_arena_free(A);
}

Test(grad, compiled_each_layer_kind) {
  for (int k = 0; k < LAYER_CNF; k++)   /* continuous layers: test_cnf.c */
    for (int C = 0; C <= 2; C += 2) {
      ir_layerkind kinds[3] = {(ir_layerkind)k, LAYER_AFFINE_COUPLING, (ir_layerkind)k};
      check_compiled(100 + (uint64_t)(k * 3 + C), 3 + k % 3, C, kinds, 3, 1 + C / 2);
    }
}

/* Maximum likelihood through the fixed-step solvers (the train graph
** writes the steps out): exact traces, so no noise. */
Test(grad, compiled_cnf) {
  ir_layerkind kinds[2] = {LAYER_CNF, LAYER_ACTNORM};
  for (uint64_t s = 0; s < 6; s++)
    check_compiled(800 + s, 1 + (int)(s % 3), s % 2 ? 2 : 0, kinds, 1 + (int)(s % 2), 1 + (int)(s % 2));
}

Test(grad, compiled_random_stacks) {
  for (uint64_t s = 0; s < 8; s++) check_compiled(300 + s, 2 + (int)s % 5, s % 3 ? 0 : 2, NULL, 4, 2);
}

Test(grad, compiled_autoregressive) {
  for (int k = LAYER_MAF; k <= LAYER_IAF; k++)
    for (int D = 1; D <= 4; D++) {
      ir_layerkind kinds[1] = {(ir_layerkind)k};
      check_compiled(500 + (uint64_t)(k * 10 + D), D, D % 2 ? 0 : 2, kinds, 1, 1);
    }
}
