/*
** tests/test_cnf.c: continuous flows (flow-language.md 7) in the reference
** interpreter (double precision) and compiled: the log-det against a
** finite-difference Jacobian of the discrete solver map, the inverse's
** convergence with the step count, Hutchinson's mean against the exact
** trace, the flow-matching loss against a direct evaluation and its
** gradient against differences, and sampling across thread counts.
** (JIT against the interpreter: test_jit.c cnf_layers; maximum-likelihood
** gradients through the solver: test_grad.c compiled_cnf.)
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg.h"
#include "modelgen.h"
#include "passes.h"
#include "rt.h"
#include "rt_temb.h"
#include "testutil.h"

/* One cnf layer with one hidden layer of h tanh units (or two). */
static ir_model *cnf_model(ir_arena *A, int D, int C, ir_solver solver, int steps, int sincos,
                           int nhidden) {
  ir_model *m = ir_alloc(A, sizeof *m);
  m->name = "cnf";
  m->dim = m->dims[0] = D;
  m->ndims = 1;
  m->context = C;
  m->nlayers = 1;
  ir_layer *L = ir_alloc(A, sizeof *L);
  int *hid = ir_alloc(A, 3 * sizeof *hid);
  hid[0] = 12;
  hid[1] = 9;
  hid[2] = 7;
  L->kind = LAYER_CNF;
  L->net = (ir_net){NET_MLP, nhidden, hid, ACT_TANH};
  L->time = sincos ? TIME_SINCOS : TIME_SCALAR;
  L->time_k = sincos ? 6 : 1;
  L->solver = solver;
  L->steps = steps;
  m->layers = L;
  return m;
}

static int run(const ir_program *p, ir_entry e, void **w, long n, const double *in,
               const double *ctx, double *out, double *ld, char *err) {
  return ir_interp(p, p->entry[e], (const void *const *)w, n, in, ctx, out, ld, err, 256);
}

/* log|det| of the encode map at x (D <= 12) by central differences. */
static double fd_logdet(const ir_program *p, void **w, int D, const double *x, const double *c) {
  double J[144], xp[12], zp[12], zm[12], h = 1e-6;
  char err[256];
  for (int j = 0; j < D; j++) {
    memcpy(xp, x, (size_t)D * sizeof *x);
    xp[j] = x[j] + h;
    cr_assert_eq(run(p, IR_ENTRY_ENCODE, w, 1, xp, c, zp, NULL, err), 0, "%s", err);
    xp[j] = x[j] - h;
    cr_assert_eq(run(p, IR_ENTRY_ENCODE, w, 1, xp, c, zm, NULL, err), 0, "%s", err);
    for (int i = 0; i < D; i++) J[i * D + j] = (zp[i] - zm[i]) / (2 * h);
  }
  return tu_logabsdet(J, D);
}

/* log|det dz/dx| of encode against central differences of the encode map
** itself: rk4 integrates the trace with the state, so the two agree to
** the solver's error, which 16 steps make small. */
Test(cnf, logdet_matches_the_solver_map) {
  mg_rng r = {1};
  ir_arena *A = ir_arena_new();
  for (int D = 1; D <= 3; D++)
    for (int C = 0; C <= 2; C += 2) {
      ir_program *p = ir_lower(A, cnf_model(A, D, C, SOLVER_RK4, 16, D % 2, 1 + D % 2), NULL, 0);
      void **w = mg_params(A, &r, p, 1.0);
      double x[3], c[2] = {0.5, -0.3}, z[3], ld;
      char err[256];
      for (int i = 0; i < D; i++) x[i] = mg_normal(&r);
      cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 1, x, c, z, &ld, err), 0, "%s", err);
      double want = fd_logdet(p, w, D, x, c);
      cr_assert(fabs(ld) > 1e-3, "D %d: the flow must do something (ld %g)", D, ld);
      cr_assert(fabs(ld - want) < 1e-5 * (1 + fabs(want)), "D %d C %d: logdet %.10g, differences %.10g",
                D, C, ld, want);
      /* log p = log N(z) + log|det| */
      double lp, base = -0.5 * D * log(2 * M_PI);
      for (int i = 0; i < D; i++) base -= 0.5 * z[i] * z[i];
      cr_assert_eq(run(p, IR_ENTRY_LOGPROB, w, 1, x, c, &lp, NULL, err), 0, "%s", err);
      cr_assert(fabs(lp - base - ld) < 1e-10);
    }
  ir_arena_free(A);
}

/* The three ways of the exact trace (written-out directional derivatives,
** fused for one or two hidden layers, a loop over the dims above 8), each
** against differences of the solver map, through a context. */
Test(cnf, every_exact_trace_matches_the_solver_map) {
  mg_rng r = {11};
  ir_arena *A = ir_arena_new();
  static const struct { int D, nh; } cases[] = {{3, 0}, {3, 1}, {3, 2}, {3, 3}, {10, 0},
                                                {10, 1}, {10, 3}, {12, 2}};
  for (int t = 0; t < 8; t++) {
    int D = cases[t].D;
    ir_program *p = ir_lower(A, cnf_model(A, D, 2, SOLVER_RK4, 12, 0, cases[t].nh), NULL, 0);
    void **w = mg_params(A, &r, p, 0.8);
    double x[12], c[2] = {0.4, -0.9}, z[12], ld;
    char err[256];
    for (int i = 0; i < D; i++) x[i] = mg_normal(&r);
    cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 1, x, c, z, &ld, err), 0, "%s", err);
    double want = fd_logdet(p, w, D, x, c);
    cr_assert(fabs(ld) > 1e-3, "case %d: ld %g", t, ld);
    cr_assert(fabs(ld - want) < 1e-5 * (1 + fabs(want)), "case %d (D %d, %d hidden): logdet %.10g, "
              "differences %.10g", t, D, cases[t].nh, ld, want);
  }
  ir_arena_free(A);
}

/* decode of 4 points by solver s with `steps` steps; the model and points
** depend on seed only. */
static void decode_with(ir_arena *A, ir_solver s, int steps, uint64_t seed, double *x, double *ld) {
  mg_rng r = {seed};
  ir_program *p = ir_lower(A, cnf_model(A, 2, 1, s, steps, 0, 2), NULL, 0);
  void **w = mg_params(A, &r, p, 1.0);
  double z[8], c[4];
  for (int i = 0; i < 8; i++) z[i] = 1.5 * mg_normal(&r);
  for (int i = 0; i < 4; i++) c[i] = mg_normal(&r);
  char err[256];
  cr_assert_eq(run(p, IR_ENTRY_DECODE_LD, w, 4, z, c, x, ld, err), 0, "%s", err);
}

static double max_diff(const double *a, const double *b, int n) {
  double e = 0;
  for (int i = 0; i < n; i++) e = fmax(e, fabs(a[i] - b[i]));
  return e;
}

/* Each solver converges to the flow (rk4 with 512 steps standing in for
** it) at its order (time = scalar: sincos(K)'s shortest period, 4e-3,
** would need h below it before any order shows), the integrated log-det too; the inverse integrates
** back on the same grid and inverts the flow up to that error. */
Test(cnf, solvers_converge_at_their_order) {
  ir_arena *A = ir_arena_new();
  double xr[8], lr[4];
  decode_with(A, SOLVER_RK4, 512, 7, xr, lr);
  static const struct { ir_solver s; double order; } cases[] = {
    {SOLVER_EULER, 1}, {SOLVER_HEUN, 2}, {SOLVER_RK4, 4}};
  for (int k = 0; k < 3; k++) {
    double x1[8], l1[4], x2[8], l2[4];
    decode_with(A, cases[k].s, 8, 7, x1, l1);
    decode_with(A, cases[k].s, 32, 7, x2, l2);
    double e1 = max_diff(x1, xr, 8), e2 = max_diff(x2, xr, 8);
    double rate = log2(e1 / e2) / 2;   /* per halving of h */
    cr_assert(e1 > 0 && fabs(rate - cases[k].order) < 0.35, "solver %d: errors %g -> %g, order %.2f",
              k, e1, e2, rate);
    double d1 = max_diff(l1, lr, 4), d2 = max_diff(l2, lr, 4);
    cr_assert(log2(d1 / d2) / 2 > cases[k].order - 0.35, "solver %d: log-det errors %g -> %g", k, d1, d2);
  }
  /* the round trip, rk4 with 64 steps */
  mg_rng r = {8};
  ir_program *p = ir_lower(A, cnf_model(A, 2, 1, SOLVER_RK4, 64, 1, 2), NULL, 0);
  void **w = mg_params(A, &r, p, 1.0);
  double x[8], c[4], z[8], x2[8], l1[4], l2[4];
  for (int i = 0; i < 8; i++) x[i] = 1.5 * mg_normal(&r);
  for (int i = 0; i < 4; i++) c[i] = mg_normal(&r);
  char err[256];
  cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 4, x, c, z, l1, err), 0, "%s", err);
  cr_assert_eq(run(p, IR_ENTRY_DECODE_LD, w, 4, z, c, x2, l2, err), 0, "%s", err);
  cr_assert(max_diff(x, z, 8) > 0.01, "the flow must move the points");
  cr_assert(max_diff(x2, x, 8) < 1e-6, "round trip %g", max_diff(x2, x, 8));
  for (int i = 0; i < 4; i++) cr_assert(fabs(l1[i] + l2[i]) < 1e-6);
  ir_arena_free(A);
}

/* trace = hutchinson (training): the probe changes the log-det only, so
** averaging the train graph's log p over all 2^D sign vectors gives the
** exact trace's log p exactly. */
Test(cnf, hutchinson_mean_is_the_exact_trace) {
  mg_rng r = {3};
  ir_arena *A = ir_arena_new();
  for (int D = 1; D <= 3; D++) {
    ir_model *m = cnf_model(A, D, 1, (ir_solver)(D % 3), 3, 1, 2);
    ((ir_layer *)m->layers)->hutchinson = 1;
    ir_program *p = ir_lower(A, m, NULL, 0);
    cr_assert_eq(p->noise_width, D);
    void **w = mg_params(A, &r, p, 1.0);
    ir_graph *g = ir_lower_train(p);
    int n = 1 << D;
    double x[3 * 8], c[8], noise[3 * 8], lp[8], exact, mean = 0, spread = 0;
    char err[256];
    for (int i = 0; i < D; i++) x[i] = mg_normal(&r);
    c[0] = 0.7;
    for (int s = 0; s < n; s++) {
      memcpy(&x[s * D], x, (size_t)D * sizeof *x);
      c[s] = c[0];
      for (int i = 0; i < D; i++) noise[s * D + i] = s >> i & 1 ? 1 : -1;
    }
    cr_assert_eq(run(p, IR_ENTRY_LOGPROB, w, 1, x, c, &exact, NULL, err), 0, "%s", err);
    cr_assert_eq(ir_interp_noise(p, g, (const void *const *)w, n, x, c, noise, lp, NULL, err,
                                 sizeof err), 0, "%s", err);
    for (int s = 0; s < n; s++) mean += lp[s] / n, spread = fmax(spread, fabs(lp[s] - lp[0]));
    cr_assert(D == 1 || spread > 1e-6, "D %d: the probe must matter", D);
    cr_assert(fabs(mean - exact) < 1e-9 * (1 + fabs(exact)), "D %d: mean %.12g, exact %.12g", D,
              mean, exact);
  }
  ir_arena_free(A);
}

/* The velocity net written out: tanh MLP on [z, c, temb(t)]. */
static void velocity(const ir_program *p, void **w, const double *z, const double *c, double t,
                     double *v) {
  const ir_model *m = p->model;
  const ir_layer *L = m->layers;
  int D = m->dim, C = m->context, nl = L->net.nhidden + 1;
  double in[64], out[64];
  int n = 0;
  for (int i = 0; i < D; i++) in[n++] = z[i];
  for (int i = 0; i < C; i++) in[n++] = c[i];
  for (int k = 0; k < L->time_k; k++) in[n++] = rt_temb_value(L->time == TIME_SINCOS, L->time_k, k, t);
  for (int j = 0; j < nl; j++) {
    const float *W = w[2 * j], *b = w[2 * j + 1];
    int o = p->params[2 * j].shape[0];
    for (int a = 0; a < o; a++) {
      double s = b[a];
      for (int i = 0; i < n; i++) s += W[a * n + i] * in[i];
      out[a] = j + 1 < nl ? tanh(s) : s;
    }
    memcpy(in, out, (size_t)o * sizeof *in);
    n = o;
  }
  memcpy(v, in, (size_t)D * sizeof *v);
}

/* The flow-matching train graph: its value is -||v(x_t, t) - (x1 - z0)||^2
** per row, and its gradient matches differences of that value. */
Test(cnf, flow_matching_loss_and_gradient) {
  mg_rng r = {4};
  ir_arena *A = ir_arena_new();
  for (int C = 0; C <= 2; C += 2) {
    ir_program *p = ir_lower(A, cnf_model(A, 2, C, SOLVER_EULER, 10, C > 0, 2), NULL, 0);
    char err[256];
    cr_assert_eq(ir_use_fm(p, 1.5, 1.0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(p->noise_width, 3);
    void **w = mg_params(A, &r, p, 1.0);
    pass_autodiff(p);
    pass_pipeline(p, 0, NULL, NULL);
    enum { N = 5 };
    double x[2 * N], c[2 * N], noise[3 * N], lp[N];
    for (int i = 0; i < 2 * N; i++) x[i] = mg_normal(&r), c[i] = mg_normal(&r);
    for (int s = 0; s < N; s++) {
      noise[3 * s] = mg_normal(&r);
      noise[3 * s + 1] = mg_normal(&r);
      noise[3 * s + 2] = mg_uniform(&r);
    }
    double **g = calloc((size_t)(p->nparams + p->train->nprep + 1), sizeof *g);
    for (int i = 0; i < p->nparams; i++)
      g[i] = calloc((size_t)(p->params[i].shape[0] * (p->params[i].ndim == 2 ? p->params[i].shape[1] : 1)), sizeof **g);
    for (int q = 0; q < p->train->nprep; q++) g[p->nparams + q] = calloc(1 << 16, sizeof **g);
    cr_assert_eq(ir_interp_noise(p, p->train, (const void *const *)w, N, x, c, noise, lp, g, err,
                                 sizeof err), 0, "%s", err);
    double total = 0;
    for (int s = 0; s < N; s++) {
      double t = noise[3 * s + 2], xt[2], v[2], want = 0;
      for (int i = 0; i < 2; i++) xt[i] = (1 - t) * noise[3 * s + i] + t * x[2 * s + i];
      velocity(p, w, xt, &c[2 * s], t, v);
      for (int i = 0; i < 2; i++) {
        double d = v[i] - (x[2 * s + i] - noise[3 * s + i]);
        want -= d * d;
      }
      cr_assert(fabs(lp[s] - want) < 1e-9 * (1 + fabs(want)), "row %d: %.12g vs %.12g", s, lp[s], want);
      total += lp[s];
    }
    /* the sinks add d(sum of -lp)/dparam; differences of -sum lp */
    for (int i = 0; i < p->nparams; i++) {
      float *W = w[i];
      long len = p->params[i].shape[0] * (p->params[i].ndim == 2 ? p->params[i].shape[1] : 1);
      for (long e = 0; e < len; e += 1 + len / 7) {
        float keep = W[e];
        double h = 1e-3, lpp[N], lpm[N], sp = 0, sm = 0;
        W[e] = (float)(keep + h);
        ir_interp_noise(p, p->train, (const void *const *)w, N, x, c, noise, lpp, NULL, err, sizeof err);
        W[e] = (float)(keep - h);
        ir_interp_noise(p, p->train, (const void *const *)w, N, x, c, noise, lpm, NULL, err, sizeof err);
        double hh = ((double)(float)(keep + h) - (double)(float)(keep - h));
        W[e] = keep;
        for (int s = 0; s < N; s++) sp -= lpp[s], sm -= lpm[s];
        double fd = (sp - sm) / hh;
        cr_assert(fabs(g[i][e] - fd) < 1e-4 * (1 + fabs(fd)), "%s[%ld]: gradient %.9g, differences %.9g",
                  p->params[i].name, e, g[i][e], fd);
      }
    }
    cr_assert(total < 0);
    for (int i = 0; i < p->nparams + p->train->nprep; i++) free(g[i]);
    free(g);
  }
  ir_arena_free(A);
}

/* Flow matching is for one cnf layer only, and the time distribution
** must be a proper Beta. */
Test(cnf, flow_matching_refuses_other_models) {
  ir_arena *A = ir_arena_new();
  mg_rng r = {5};
  ir_layerkind kinds[2] = {LAYER_CNF, LAYER_ACTNORM};
  ir_program *p = ir_lower(A, mg_model(A, &r, 2, 0, 2, kinds), NULL, 0);
  char err[256] = "";
  cr_assert_eq(ir_use_fm(p, 1, 1, err, sizeof err), -1);
  cr_assert(strstr(err, "one cnf layer"), "%s", err);
  p = ir_lower(A, cnf_model(A, 2, 0, SOLVER_RK4, 4, 0, 1), NULL, 0);
  cr_assert_eq(ir_use_fm(p, 0, 1, err, sizeof err), -1);
  cr_assert_eq(p->fm, 0);
  ir_arena_free(A);
}

/* Compiled sampling: the same samples and log-densities for 1 and 3
** threads, and sample --logprob agrees with logprob of the samples up to
** the solver's error. */
Test(cnf, compiled_sampling_threads) {
  ir_arena *A = ir_arena_new();
  mg_rng r = {6};
  ir_program *p = ir_lower(A, cnf_model(A, 3, 0, SOLVER_RK4, 24, 1, 2), NULL, 0);
  void **w = mg_params(A, &r, p, 1.0);
  pass_pipeline(p, 2, NULL, NULL);
  char err[512];
  rt_desc *d = cg_desc_err(p, err, sizeof err);
  cr_assert(d, "%s", err);
  cg_jit *j = cg_jit_new(p, 2, err, sizeof err);
  cr_assert(j, "%s", err);
  rt_kernel k[RT_NENTRY];
  cg_jit_kernels(j, k);
  rt_weights wt = {p->nparams, w, 0};
  rt_model *m1 = rt_model_open(d, k, &wt, 1, err, sizeof err), *m3 = rt_model_open(d, k, &wt, 3, err, sizeof err);
  cr_assert(m1 && m3, "%s", err);
  enum { N = 700 };
  static float s1[N * 3], s3[N * 3], l1[N], l3[N], lp[N];
  cr_assert_eq(rt_model_sample(m1, N, 9, NULL, 0, s1, l1), 0);
  cr_assert_eq(rt_model_sample(m3, N, 9, NULL, 0, s3, l3), 0);
  cr_assert(memcmp(s1, s3, sizeof s1) == 0 && memcmp(l1, l3, sizeof l1) == 0, "thread counts differ");
  cr_assert_eq(rt_model_log_prob(m1, N, s1, NULL, 0, lp), 0);
  for (int i = 0; i < N; i++)
    cr_assert(fabs(lp[i] - l1[i]) < 2e-3 * (1 + fabs(lp[i])), "row %d: %g vs %g", i, lp[i], l1[i]);
  rt_model_close(m1);
  rt_model_close(m3);
  cg_jit_free(j);
  rt_desc_free(d);
  ir_arena_free(A);
}

/* flowc train --objective fm on two moons: the flow-matching loss falls,
** and the trained flow's log-likelihood beats the untrained identity. */
Test(cnf, cli_flow_matching_trains) {
  const char *flow = tu_path("fm.flow");
  FILE *f = fopen(flow, "w");
  fprintf(f, "model fm { dim 2; flow { cnf(net = mlp(hidden = [64, 64], act = silu), "
             "time = sincos(16), solver = rk4(steps = 8)); } }\n");
  fclose(f);
  char *out = NULL;
  cr_assert_eq(tu_flowc(&out, "toy moons -n 4000 --seed 2 -o %s", tu_path("m.npy")), 0, "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "train %s --objective fm --time-dist 'beta(1.5,1)' --data %s "
                        "--steps 600 --batch 128 --lr 3e-3 --seed 1 -o %s", flow, tu_path("m.npy"),
                        tu_path("w.st")), 0, "%s", out);
  cr_assert(strstr(out, "FM loss"), "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "init %s --seed 0 -o %s", flow, tu_path("w0.st")), 0, "%s", out);
  free(out);
  const char *w[2] = {tu_path("w0.st"), tu_path("w.st")};
  double nll[2];
  for (int k = 0; k < 2; k++) {
    cr_assert_eq(tu_flowc(&out, "logprob %s -w %s --data %s -o %s", flow, w[k], tu_path("m.npy"),
                          tu_path("lp.npy")), 0, "%s", out);
    free(out);
    rt_array a = {0};
    char err[256];
    cr_assert_eq(rt_array_load(tu_path("lp.npy"), &a, err, sizeof err), 0, "%s", err);
    double s = 0;
    long n = a.rows;
    for (long i = 0; i < n; i++) s -= a.data[i];
    rt_array_free(&a);
    cr_assert_eq(n, 4000);
    nll[k] = s / n;
  }
  cr_assert(nll[1] < nll[0] - 0.5, "NLL untrained %g, trained %g", nll[0], nll[1]);
  cr_assert_eq(tu_flowc(&out, "train %s --time-dist uniform --data %s --steps 2 -o %s", flow,
                        tu_path("m.npy"), tu_path("w2.st")), 2, "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "train %s --objective fm --time-dist 'beta(0,1)' --data %s --steps 2 -o %s",
                        flow, tu_path("m.npy"), tu_path("w2.st")), 2, "%s", out);
  free(out);
}

/* dopri5 reaches the flow (rk4 with 512 steps) to its tolerance, in both
** directions; and a step budget too small for it is a failure, not a
** silent result. */
Test(cnf, dopri5_meets_its_tolerance) {
  ir_arena *A = ir_arena_new();
  double xr[8], lr[4], x[8], l[4];
  decode_with(A, SOLVER_RK4, 512, 7, xr, lr);
  for (int k = 0; k < 2; k++) {
    double tol = k ? 1e-8 : 1e-5;
    mg_rng r = {7};
    ir_model *m = cnf_model(A, 2, 1, SOLVER_DOPRI5, 0, 0, 2);
    ir_layer *L = (ir_layer *)m->layers;
    L->rtol = L->atol = tol;
    L->max_steps = 1000;
    ir_program *p = ir_lower(A, m, NULL, 0);
    void **w = mg_params(A, &r, p, 1.0);
    double z[8], c[4], z2[8], l2[4];
    for (int i = 0; i < 8; i++) z[i] = 1.5 * mg_normal(&r);
    for (int i = 0; i < 4; i++) c[i] = mg_normal(&r);
    char err[256];
    cr_assert_eq(run(p, IR_ENTRY_DECODE_LD, w, 4, z, c, x, l, err), 0, "%s", err);
    cr_assert(max_diff(x, xr, 8) < 200 * tol, "tol %g: error %g", tol, max_diff(x, xr, 8));
    cr_assert(max_diff(l, lr, 4) < 200 * tol, "tol %g: log-det error %g", tol, max_diff(l, lr, 4));
    cr_assert_eq(run(p, IR_ENTRY_ENCODE_LD, w, 4, x, c, z2, l2, err), 0, "%s", err);
    cr_assert(max_diff(z2, z, 8) < 200 * tol, "tol %g: round trip %g", tol, max_diff(z2, z, 8));
    L->max_steps = 1;   /* h starts at 0.05 */
    p = ir_lower(A, m, NULL, 0);
    cr_assert_neq(run(p, IR_ENTRY_DECODE, w, 4, z, c, x, NULL, err), 0);
    cr_assert(strstr(err, "max_steps = 1"), "%s", err);
  }
  ir_arena_free(A);
}

/* Mean and variance of column j of an [n, D] .npy. */
static void column_stats(const char *path, int j, double *mean, double *var, long *n) {
  rt_array a = {0};
  char err[256];
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  double s = 0, s2 = 0;
  for (long i = 0; i < a.rows; i++) s += a.data[i * a.cols + j], s2 += a.data[i * a.cols + j] * a.data[i * a.cols + j];
  *n = a.rows;
  *mean = s / a.rows;
  *var = s2 / a.rows - *mean * *mean;
  rt_array_free(&a);
}

/* An sde with a zero drift (fresh weights: the last layer is zero) is
** z + sigma W(1): variance 1 + sigma^2, which checks the Euler-Maruyama
** noise's scale; samples are the same for any thread count; asking for a
** density is a clear error. */
Test(cnf, cli_sde_samples) {
  const char *flow = tu_path("sde.flow");
  FILE *f = fopen(flow, "w");
  fprintf(f, "model s { dim 3; flow { sde(drift = mlp(hidden = [16], act = tanh), "
             "diffusion = const(0.5), steps = 25, time = scalar); } }\n");
  fclose(f);
  char *out = NULL;
  cr_assert_eq(tu_flowc(&out, "init %s --seed 3 -o %s", flow, tu_path("w.st")), 0, "%s", out);
  free(out);
  for (int t = 1; t <= 2; t++) {
    cr_assert_eq(tu_flowc(&out, "sample %s -w %s -n 40000 --seed 5 --threads %d -o %s", flow,
                          tu_path("w.st"), t, tu_path(t == 1 ? "s1.npy" : "s2.npy")), 0, "%s", out);
    free(out);
  }
  size_t l1, l2;
  char *a = tu_read_file(tu_path("s1.npy"), &l1), *b = tu_read_file(tu_path("s2.npy"), &l2);
  cr_assert(a && b && l1 == l2 && memcmp(a, b, l1) == 0, "samples differ across threads");
  free(a);
  free(b);
  for (int j = 0; j < 3; j++) {
    double mean, var;
    long n;
    column_stats(tu_path("s1.npy"), j, &mean, &var, &n);
    cr_assert_eq(n, 40000);
    cr_assert(fabs(mean) < 0.03 && fabs(var - 1.25) < 0.05, "column %d: mean %g, var %g (1.25)", j,
              mean, var);
  }
  cr_assert_eq(tu_flowc(&out, "logprob %s -w %s --data %s -o %s", flow, tu_path("w.st"),
                        tu_path("s1.npy"), tu_path("lp.npy")), 1, "%s", out);
  cr_assert(strstr(out, "has no density"), "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "sample %s -w %s -n 5 --seed 5 -o %s --logprob %s", flow,
                        tu_path("w.st"), tu_path("x.npy"), tu_path("lp.npy")), 1, "%s", out);
  cr_assert(strstr(out, "has no density"), "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "train %s --data %s --steps 2 -o %s", flow, tu_path("s1.npy"),
                        tu_path("w2.st")), 1, "%s", out);
  cr_assert(strstr(out, "--objective fm"), "%s", out);
  free(out);
}

/* dopri5 from the command line: encode/decode agree with rk4 on many steps
** to the tolerance; a step budget too small is the error that names it. */
Test(cnf, cli_dopri5) {
  const char *flow = tu_path("d.flow");
  FILE *f = fopen(flow, "w");
  fprintf(f, "model a { dim 2; flow { cnf(net = mlp(hidden = [16, 16], act = tanh), time = scalar, "
             "solver = dopri5(rtol = 1e-6, atol = 1e-6)); } }\n"
             "model b { dim 2; flow { cnf(net = mlp(hidden = [16, 16], act = tanh), time = scalar, "
             "solver = rk4(steps = 200)); } }\n"
             "model c { dim 2; flow { cnf(net = mlp(hidden = [16, 16], act = tanh), time = scalar, "
             "solver = dopri5(max_steps = 1)); } }\n");
  fclose(f);
  char *out = NULL;
  cr_assert_eq(tu_flowc(&out, "toy moons -n 500 --seed 2 -o %s", tu_path("m.npy")), 0, "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "train %s --model b --data %s --steps 40 --lr 1e-2 -o %s", flow,
                        tu_path("m.npy"), tu_path("w.st")), 0, "%s", out);
  free(out);
  const char *m[2] = {"a", "b"}, *o[2] = {"la.npy", "lb.npy"};
  for (int k = 0; k < 2; k++) {
    cr_assert_eq(tu_flowc(&out, "logprob %s --model %s -w %s --data %s -o %s", flow, m[k],
                          tu_path("w.st"), tu_path("m.npy"), tu_path(o[k])), 0, "%s", out);
    free(out);
  }
  rt_array a = {0}, b = {0};
  char err[256];
  cr_assert_eq(rt_array_load(tu_path("la.npy"), &a, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_array_load(tu_path("lb.npy"), &b, err, sizeof err), 0, "%s", err);
  double d = 0;
  for (long i = 0; i < a.rows; i++) d = fmax(d, fabs(a.data[i] - b.data[i]));
  rt_array_free(&a);
  rt_array_free(&b);
  cr_assert(d < 1e-3, "dopri5 vs rk4(200): %g", d);
  cr_assert_eq(tu_flowc(&out, "logprob %s --model c -w %s --data %s -o %s", flow, tu_path("w.st"),
                        tu_path("m.npy"), tu_path("lc.npy")), 1, "%s", out);
  cr_assert(strstr(out, "dopri5 needed more than max_steps = 1"), "%s", out);
  free(out);
  cr_assert_eq(tu_flowc(&out, "train %s --model a --data %s --steps 2 -o %s", flow,
                        tu_path("m.npy"), tu_path("w2.st")), 1, "%s", out);
  cr_assert(strstr(out, "dopri5"), "%s", out);
  free(out);
}
