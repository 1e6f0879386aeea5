/*
** tests/test_jit.c: compiled code against the reference interpreter on
** random models and weights, through the runtime (tiles, threads), at every
** optimisation level; round trips and thread-count independence.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cg.h"
#include "modelgen.h"
#include "passes.h"
#include "rt.h"
#include "testutil.h"

typedef struct compiled {
  ir_arena *A;
  ir_program *p;
  void **params;
  rt_desc *desc;
  cg_jit *jit;
  rt_model *m;
} compiled;

/* compile_model's passes to skip (pass_pipeline's `disabled`) */
static const char *g_disabled;

/* Compiles model (allocated in c->A) with random weights from r. */
static void compile_model(compiled *c, const ir_model *model, mg_rng *r, int opt, int threads) {
  char err[512];
  c->p = ir_lower(c->A, model, err, sizeof err);
  cr_assert(c->p, "%s", err);
  c->params = mg_params(c->A, r, c->p, 0.7);   /* steep splines amplify float error */
  cr_assert_eq(pass_pipeline(c->p, opt, g_disabled, NULL), 0);
  c->desc = cg_desc_err(c->p, err, sizeof err);
  cr_assert(c->desc, "%s", err);
  c->jit = cg_jit_new(c->p, opt, err, sizeof err);
  cr_assert(c->jit, "%s", err);
  rt_kernel k[RT_NENTRY];
  cg_jit_kernels(c->jit, k);
  rt_weights w = {c->p->nparams, c->params, 0};
  c->m = rt_model_open(c->desc, k, &w, threads, err, sizeof err);
  cr_assert(c->m, "%s", err);
}

static void compile(compiled *c, mg_rng *r, int D, int C, int nl, const ir_layerkind *kinds,
                    int opt, int threads) {
  c->A = ir_arena_new();
  compile_model(c, mg_model(c->A, r, D, C, nl, kinds), r, opt, threads);
}

static void release(compiled *c) {
  rt_model_close(c->m);
  cg_jit_free(c->jit);
  rt_desc_free(c->desc);
  ir_arena_free(c->A);
}

static float *randf(mg_rng *r, long n, double s) {
  float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
  for (long i = 0; i < n; i++) v[i] = (float)(s * mg_normal(r));
  return v;
}

static double *to_double(const float *v, long n) {
  double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
  for (long i = 0; i < n; i++) d[i] = v[i];
  return d;
}

/* Max error scaled by the size of the values: float32 through a deep net. */
static void assert_close(const float *got, const double *want, long n, double tol, const char *what) {
  for (long i = 0; i < n; i++) {
    double e = fabs(got[i] - want[i]) / fmax(1.0, fabs(want[i]));
    cr_assert(e <= tol, "%s[%ld]: compiled %.9g, interpreter %.9g", what, i, got[i], want[i]);
  }
}

/* check_entry's tolerance: an adaptive solver's float32 and float64 runs
** may take different steps, each within its rtol of the flow. */
static double entry_tol = 2e-4;

static void check_entry(compiled *c, int e, long n, const float *x, const float *ctx) {
  const ir_model *m = c->p->model;
  long D = m->dim, w = e == IR_ENTRY_LOGPROB ? 1 : D;
  double *xd = to_double(x, n * D), *cd = to_double(ctx, n * m->context);
  double *o0 = malloc((size_t)(n * D + 1) * sizeof *o0), *o1 = malloc((size_t)(n + 1) * sizeof *o1);
  float *f0 = malloc((size_t)(n * D + 1) * sizeof *f0), *f1 = malloc((size_t)(n + 1) * sizeof *f1);
  char err[256];
  cr_assert_eq(ir_interp(c->p, c->p->entry[e], (const void *const *)c->params, n, xd, cd, o0, o1,
                         err, sizeof err), 0, "%s", err);
  int rc;
  if (!m->context) ctx = NULL;
  int ld = e == IR_ENTRY_ENCODE_LD || e == IR_ENTRY_DECODE_LD;
  if (e == IR_ENTRY_LOGPROB) rc = rt_model_log_prob(c->m, (size_t)n, x, ctx, (size_t)n, f0);
  else if (e <= IR_ENTRY_ENCODE_LD) rc = rt_model_encode(c->m, (size_t)n, x, ctx, (size_t)n, f0, ld ? f1 : NULL);
  else rc = rt_model_decode(c->m, (size_t)n, x, ctx, (size_t)n, f0, ld ? f1 : NULL);
  cr_assert_eq(rc, 0);
  assert_close(f0, o0, n * w, entry_tol, ir_entry_name((ir_entry)e));
  if (ld) assert_close(f1, o1, n, entry_tol, "logdet");
  free(xd); free(cd); free(o0); free(o1); free(f0); free(f1);
}

static void check_random(uint64_t seed, int opt) {
  mg_rng r = {seed};
  int D = 1 + (int)(mg_uniform(&r) * 7), C = mg_uniform(&r) < 0.4 ? 1 + (int)(mg_uniform(&r) * 3) : 0;
  int nl = (int)(mg_uniform(&r) * 6);
  compiled c;
  compile(&c, &r, D, C, nl, NULL, opt, 1 + (int)(seed % 2));
  static const long sizes[] = {1, 7, 150};
  for (int s = 0; s < 3; s++) {
    long n = sizes[s];
    float *x = randf(&r, n * D, 1.5), *ctx = randf(&r, n * C, 1.0);
    for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, ctx);
    free(x);
    free(ctx);
  }
  release(&c);
}

Test(jit, random_models_O0) { for (uint64_t s = 0; s < 15; s++) check_random(1000 + s, 0); }
Test(jit, random_models_O2) { for (uint64_t s = 0; s < 40; s++) check_random(2000 + s, 2); }
Test(jit, random_models_O3) { for (uint64_t s = 0; s < 15; s++) check_random(3000 + s, 3); }

Test(jit, each_layer_kind) {
  for (int k = 0; k < LAYER_CNF; k++)   /* continuous layers: test_cnf.c */
    for (int C = 0; C <= 2; C += 2) {
      mg_rng r = {(uint64_t)(50 + k * 3 + C)};
      ir_layerkind kinds[2] = {(ir_layerkind)k, (ir_layerkind)k};
      compiled c;
      compile(&c, &r, 5, C, 2, kinds, 2, 2);
      long n = 300;
      float *x = randf(&r, n * 5, 2.0), *ctx = randf(&r, n * C, 1.0);
      for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, ctx);
      free(x);
      free(ctx);
      release(&c);
    }
}

/* Occurrences of needle in s. */
static int count_of(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

/*
** Repeated layers: six copies of one layer (each with its own weights)
** give the interpreter's numbers, and codegen compiles the repetitions of
** a layer with a network once: the kernels call one unit function per repetition, and most calls
** go to a unit already made (plan_cuts, unit_close).
*/
Test(jit, repeated_layers_share_units) {
  for (int k = 0; k < LAYER_CNF; k++) {
    mg_rng r = {(uint64_t)(900 + k)};
    ir_layerkind kinds[6];
    for (int i = 0; i < 6; i++) kinds[i] = (ir_layerkind)k;
    compiled c;
    c.A = ir_arena_new();
    ir_model *mo = mg_model(c.A, &r, 5, k % 2 ? 2 : 0, 6, kinds);
    static int hidden[2] = {16, 16};
    ir_layer *L = (ir_layer *)mo->layers;   /* the generator's, in c.A */
    L[0].net.nhidden = 2;
    L[0].net.hidden = hidden;
    for (int i = 1; i < 6; i++) L[i] = L[0];
    compile_model(&c, mo, &r, 2, 1);
    for (long n = 1; n <= 150; n = n * 7 + 1) {
      float *x = randf(&r, n * 5, 1.5), *ctx = randf(&r, n * mo->context, 1.0);
      for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, ctx);
      free(x);
      free(ctx);
    }
    char err[512];
    const char *path = tu_path("units.ll");
    FILE *f = fopen(path, "w");
    cr_assert(f);
    cr_assert_eq(cg_dump_llvm(c.p, 2, f, err, sizeof err), 0, "%s", err);
    fclose(f);
    char *s = tu_read_file(path, NULL);
    cr_assert(s);
    int units = count_of(s, "define internal"), calls = count_of(s, "call fastcc");
    int net = k != LAYER_PERMUTE && k != LAYER_ACTNORM && k != LAYER_LINEAR_LU;
    cr_assert(!net || (units >= 1 && 2 * units <= calls), "layer kind %d: %d unit functions for %d calls", k,
              units, calls);
    free(s);
    release(&c);
  }
}

/*
** Differential: each optional pass alone, and all of them, on models of
** every layer kind (an actnorm beside a linear_lu, for pass_affine) whose
** hidden layers are wide enough for BLAS (so that
** fused linear maps take both of their paths: 1 and 7 rows in loops, 150
** rows through BLAS), against the interpreter.
*/
Test(jit, each_pass_alone) {
  static const ir_layerkind sets[3][4] = {
    {LAYER_AFFINE_COUPLING, LAYER_SPLINE_COUPLING, LAYER_MAF, LAYER_RESIDUAL},
    {LAYER_ADDITIVE_COUPLING, LAYER_IAF, LAYER_ACTNORM, LAYER_LINEAR_LU},   /* affine folds */
    {LAYER_PERMUTE, LAYER_CNF, LAYER_ACTNORM, LAYER_CNF}};
  int np;
  const pass_info *t = pass_table(&np);
  for (int only = -1; only < np; only++) {
    if (only >= 0 && t[only].min_opt == 0) continue;
    char disabled[256] = "";   /* every optional pass but `only` (-1: none) */
    for (int k = 0; k < np && only >= 0; k++)
      if (k != only && t[k].min_opt > 0) {
        strcat(disabled, *disabled ? "," : "");
        strcat(disabled, t[k].name);
      }
    g_disabled = disabled;
    for (int set = 0; set < 3; set++) {
      mg_rng r = {(uint64_t)(700 + set)};
      compiled c;
      c.A = ir_arena_new();
      ir_model *m = mg_model(c.A, &r, 4, set == 1 ? 2 : 0, 4, sets[set]);
      for (int k = 0; k < 4; k++) {
        ir_layer *L = (ir_layer *)&m->layers[k];
        int *h = (int *)L->net.hidden;
        L->net.nhidden = 2;
        h[0] = h[1] = 72;
        L->steps = 2;
        if (L->solver == SOLVER_DOPRI5) L->solver = SOLVER_RK4;
      }
      compile_model(&c, m, &r, 2, 2);
      static const long sizes[] = {1, 7, 150};
      for (int s = 0; s < 3; s++) {
        long n = sizes[s];
        float *x = randf(&r, n * 4, 1.5), *ctx = randf(&r, n * m->context, 1.0);
        for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, ctx);
        free(x);
        free(ctx);
      }
      release(&c);
    }
  }
  g_disabled = NULL;
}

/* Continuous flows: every solver (dopri5 too) and time embedding, with and
** without a context, around an actnorm, at -O0/-O2 and 1/2 threads; and
** sde layers (decode only, the noise keyed by the input rows). n = 150
** spans several tiles: the loops' rows must match the interpreter's. */
Test(jit, cnf_layers) {
  for (uint64_t s = 0; s < 12; s++) {
    mg_rng r = {900 + s};
    int D = 1 + (int)(s % 4), C = s % 2 ? 2 : 0;
    ir_layerkind kinds[3] = {LAYER_CNF, LAYER_ACTNORM, LAYER_CNF};
    compiled c;
    c.A = ir_arena_new();
    ir_model *m = mg_model(c.A, &r, D, C, s % 3 ? 1 : 3, kinds);
    ir_layer *L = (ir_layer *)m->layers;
    L[0].solver = (ir_solver)(s % 4);
    L[0].rtol = L[0].atol = 1e-5;
    L[0].max_steps = 2000;
    entry_tol = L[0].solver == SOLVER_DOPRI5 ? 2e-3 : 2e-4;
    if (L[0].solver == SOLVER_DOPRI5) {   /* sincos's 4e-3 period: aliased, not controlled */
      L[0].time = TIME_SCALAR;
      L[0].time_k = 1;
    }
    if (s % 5 == 4) L[0].kind = LAYER_SDE;   /* decode only */
    compile_model(&c, m, &r, s % 4 == 3 ? 0 : 2, 1 + (int)(s % 2));
    long n = 150;
    float *x = randf(&r, n * D, 1.5), *ctx = randf(&r, n * C, 1.0);
    for (int e = 0; e < IR_NENTRY; e++)
      if (c.p->entry[e]) check_entry(&c, e, n, x, ctx);
    entry_tol = 2e-4;
    free(x);
    free(ctx);
    release(&c);
  }
}

/* The exact trace as a loop over the dims (D > 8, three hidden layers)
** inside the solver's loop, and fused (two hidden layers), compiled. */
Test(jit, cnf_trace_loops) {
  static const int hidden[3] = {9, 7, 5};
  for (int nh = 2; nh <= 3; nh++) {
    mg_rng r = {950 + (uint64_t)nh};
    ir_layerkind kinds[1] = {LAYER_CNF};
    compiled c;
    c.A = ir_arena_new();
    ir_model *m = mg_model(c.A, &r, 11, 2, 1, kinds);
    ir_layer *L = (ir_layer *)m->layers;
    L->net.nhidden = nh;
    L->net.hidden = hidden;
    L->net.act = ACT_TANH;
    L->solver = SOLVER_HEUN;
    L->steps = 3;
    compile_model(&c, m, &r, 2, 2);
    long n = 100;
    float *x = randf(&r, n * 11, 1.0), *ctx = randf(&r, n * 2, 1.0);
    for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, ctx);
    free(x);
    free(ctx);
    release(&c);
  }
}

/* A wide model takes the OpenBLAS path for its matrix products. */
Test(jit, wide_network_gemm) {
  mg_rng r = {77};
  ir_layerkind kinds[2] = {LAYER_AFFINE_COUPLING, LAYER_SPLINE_COUPLING};
  static const int hidden[2] = {256, 256};
  compiled c;
  c.A = ir_arena_new();
  ir_model *m = mg_model(c.A, &r, 16, 0, 2, kinds);
  ir_layer *L = (ir_layer *)m->layers;
  for (int k = 0; k < 2; k++) {
    L[k].net.nhidden = 2;
    L[k].net.hidden = hidden;
    L[k].net.act = ACT_TANH;
  }
  compile_model(&c, m, &r, 2, 2);
  long n = 200;
  float *x = randf(&r, n * 16, 1.0);
  for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, n, x, NULL);
  free(x);
  release(&c);
}

/* A 512 x 512 weight goes to BLAS at any number of rows (matrix-vector
** products below RT_K_GEMV_ROWS): 1, 3, 5 and 17 rows against the
** interpreter, and the same with OpenBLAS's threads (2) as without. */
Test(jit, large_weight_few_rows) {
  mg_rng r = {78};
  ir_layerkind kinds[1] = {LAYER_AFFINE_COUPLING};
  static const int hidden[2] = {512, 512};
  compiled c;
  c.A = ir_arena_new();
  ir_model *m = mg_model(c.A, &r, 6, 0, 1, kinds);
  ir_layer *L = (ir_layer *)m->layers;
  L->net.nhidden = 2;
  L->net.hidden = hidden;
  L->net.act = ACT_TANH;
  compile_model(&c, m, &r, 2, 1);
  static const long rows[] = {1, 3, 5, 17};
  /* a one-tile call lets OpenBLAS use the threads: the same bits as one */
  rt_kernel k2[RT_NENTRY];
  cg_jit_kernels(c.jit, k2);
  rt_weights w = {c.p->nparams, c.params, 0};
  char err[256];
  rt_model *m2 = rt_model_open(c.desc, k2, &w, 2, err, sizeof err);
  cr_assert(m2, "%s", err);
  for (int k = 0; k < 4; k++) {
    float *x = randf(&r, rows[k] * 6, 1.0), y1[17 * 6], y2[17 * 6], l1[17], l2[17];
    for (int e = 0; e < IR_NENTRY; e++) check_entry(&c, e, rows[k], x, NULL);
    cr_assert_eq(rt_model_decode(c.m, (size_t)rows[k], x, NULL, 0, y1, l1), 0);
    cr_assert_eq(rt_model_decode(m2, (size_t)rows[k], x, NULL, 0, y2, l2), 0);
    cr_assert(!memcmp(y1, y2, (size_t)rows[k] * 6 * sizeof *y1) &&
              !memcmp(l1, l2, (size_t)rows[k] * sizeof *l1), "%ld rows: 1 and 2 threads differ", rows[k]);
    free(x);
  }
  rt_model_close(m2);
  release(&c);
}

/* decode(encode(x)) = x in float32, and sampling is the same whatever the
** number of threads. */
Test(jit, round_trip_and_threads) {
  for (uint64_t seed = 0; seed < 10; seed++) {
    mg_rng r1 = {500 + seed}, r2 = {500 + seed};
    compiled a, b;
    compile(&a, &r1, 6, seed % 2 ? 2 : 0, 4, NULL, 2, 1);
    compile(&b, &r2, 6, seed % 2 ? 2 : 0, 4, NULL, 2, 2);
    long n = 1000, C = a.p->model->context;
    float *x = randf(&r1, n * 6, 1.0), *ctx = C ? randf(&r1, n * C, 1.0) : NULL;
    float *z = malloc((size_t)n * 6 * sizeof *z), *xr = malloc((size_t)n * 6 * sizeof *xr);
    cr_assert_eq(rt_model_encode(a.m, (size_t)n, x, ctx, (size_t)n, z, NULL), 0);
    cr_assert_eq(rt_model_decode(a.m, (size_t)n, z, ctx, (size_t)n, xr, NULL), 0);
    cr_assert(tu_max_rel_err(xr, x, (size_t)(n * 6)) < 1e-3, "round trip %g",
              tu_max_rel_err(xr, x, (size_t)(n * 6)));
    float *s1 = malloc((size_t)n * 6 * sizeof *s1), *s2 = malloc((size_t)n * 6 * sizeof *s2);
    float l1[1000], l2[1000];
    cr_assert_eq(rt_model_sample(a.m, (size_t)n, 42, ctx, C ? (size_t)n : 0, s1, l1), 0);
    cr_assert_eq(rt_model_sample(b.m, (size_t)n, 42, ctx, C ? (size_t)n : 0, s2, l2), 0);
    cr_assert(memcmp(s1, s2, (size_t)n * 6 * sizeof *s1) == 0, "samples differ across threads");
    cr_assert(memcmp(l1, l2, sizeof l1) == 0, "log_prob differs across threads");
    free(x); free(ctx); free(z); free(xr); free(s1); free(s2);
    release(&a);
    release(&b);
  }
}


/* The compiled encode's log-det against central differences of the
** compiled map itself (float32: steps of 1e-2), and log_prob against the
** change of variables with the compiled z and log-det. */
Test(jit, logdet_of_the_compiled_map) {
  for (uint64_t seed = 0; seed < 12; seed++) {
    mg_rng r = {700 + seed};
    int D = 2 + (int)(seed % 5), C = seed % 3 ? 0 : 2;
    compiled c;
    compile(&c, &r, D, C, 3, NULL, 2, 1);
    float x[8], ctx[2] = {0.3f, -0.7f}, z[8], ld, lp;
    for (int i = 0; i < D; i++) x[i] = (float)mg_normal(&r);
    const float *cp = C ? ctx : NULL;
    cr_assert_eq(rt_model_encode(c.m, 1, x, cp, 1, z, &ld), 0);
    double J[64];
    for (int j = 0; j < D; j++) {
      float xp[8], xm[8], zp[8], zm[8];
      memcpy(xp, x, sizeof x);
      memcpy(xm, x, sizeof x);
      xp[j] += 1e-2f;
      xm[j] -= 1e-2f;
      rt_model_encode(c.m, 1, xp, cp, 1, zp, NULL);
      rt_model_encode(c.m, 1, xm, cp, 1, zm, NULL);
      for (int i = 0; i < D; i++) J[i * D + j] = ((double)zp[i] - zm[i]) / ((double)xp[j] - xm[j]);
    }
    double fd = tu_logabsdet(J, D);
    cr_assert(fabs(fd - ld) < 2e-2 * fmax(1, fabs(ld)), "seed %llu: log-det %g, differences %g",
              (unsigned long long)seed, ld, fd);
    cr_assert_eq(rt_model_log_prob(c.m, 1, x, cp, 1, &lp), 0);
    double base = -0.5 * D * log(2 * M_PI);
    for (int i = 0; i < D; i++) base -= 0.5 * (double)z[i] * z[i];
    cr_assert(fabs(lp - (base + ld)) < 1e-4 * fmax(1, fabs(lp)), "log_prob %g vs %g", lp, base + ld);
    release(&c);
  }
}
