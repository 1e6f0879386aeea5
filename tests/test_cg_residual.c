/*
** tests/test_cg_residual.c: the generated code of the residual layers' ops
** (IR_D2ACT, IR_LOGDET, IR_LOGDET_GRAD, IR_STOPGRAD, the fixed-point loop
** IR_FIX_BEGIN .. IR_FIX_END, the train kernel's noise input) and the
** kernel status convention (0, or 1 + layer; RT_ENOCONV from rt_model_*).
**
** Graphs are built by hand with the ir.h builders, put through
** pass_pipeline, JIT-compiled at -O0 and -O2, and the kernel is called
** directly on random rows in calls of 1, 7 and a whole tile; results are
** compared with ir_interp (double precision) and with expectations computed
** here (finite differences, closed forms, tu_logabsdet).
*/
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cg.h"
#include "passes.h"
#include "rt.h"
#include "testutil.h"

/* ---- random numbers (splitmix64) ---- */

static uint64_t rng_state = 777;
static uint64_t rnext(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double runif(void) { return (rnext() >> 11) * (1.0 / 9007199254740992.0); }
static double rnorm(void) {
  double u = runif(), v = runif();
  return sqrt(-2 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static float *rand_rows(long n, double s) {
  float *v = malloc(sizeof *v * (size_t)(n + 1));
  for (long i = 0; i < n; i++) v[i] = (float)(s * rnorm());
  return v;
}

/* ---- programs ---- */

typedef struct pspec { const char *name; int ndim, s0, s1; } pspec;

typedef struct tprog {
  ir_arena *A;
  ir_program *p;
  void **params;          /* float* each, values uniform in (-wscale, wscale) */
} tprog;

/* Builds the graph of entry e (or of the train graph, e = -1). */
typedef void (*build_fn)(ir_graph *g, ir_program *p, int e);

/* Every entry (and the train graph when train) is build(g, p, e). */
static void make_prog(tprog *t, const char *name, int D, int np, const pspec *ps,
                      build_fn build, int train, int opt, double wscale) {
  t->A = ir_arena_new();
  ir_model *m = ir_alloc(t->A, sizeof *m);
  m->name = ir_strdup(t->A, name);
  m->dim = D;
  m->ndims = 1;
  m->dims[0] = D;
  ir_program *p = ir_alloc(t->A, sizeof *p);
  p->A = t->A;
  p->model = m;
  p->nparams = np;
  p->params = ir_alloc(t->A, sizeof *p->params * (size_t)(np ? np : 1));
  t->params = ir_alloc(t->A, sizeof(void *) * (size_t)(np ? np : 1));
  for (int i = 0; i < np; i++) {
    ir_param *pa = &p->params[i];
    pa->name = ps[i].name;
    pa->dtype = IR_F32;
    pa->ndim = ps[i].ndim;
    pa->shape[0] = ps[i].s0;
    pa->shape[1] = ps[i].s1;
    pa->init = INIT_ZERO;
    pa->fan_in = 1;
    long n = ps[i].ndim == 2 ? (long)ps[i].s0 * ps[i].s1 : ps[i].s0;
    float *v = ir_alloc(t->A, sizeof *v * (size_t)(n + 1));
    for (long k = 0; k < n; k++) v[k] = (float)(wscale * (2 * runif() - 1));
    t->params[i] = v;
  }
  t->p = p;
  for (int e = 0; e < IR_NENTRY; e++) {
    p->entry[e] = ir_graph_new(t->A);
    build(p->entry[e], p, e);
  }
  if (train) {
    p->train = ir_graph_new(t->A);
    build(p->train, p, -1);
  }
  cr_assert_eq(pass_pipeline(p, opt, NULL, NULL), 0);
}

static void free_prog(tprog *t) { ir_arena_free(t->A); }

static const ir_node *find_input(const ir_graph *g, int slot) {
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i]->op == IR_INPUT && g->nodes[i]->i0 == slot) return g->nodes[i];
  return NULL;
}

static cg_jit *jit(const tprog *t, int opt, unsigned mask) {
  char err[512];
  cg_jit *j = cg_jit_new_entries(t->p, opt, mask, err, sizeof err);
  cr_assert(j, "%s", err);
  return j;
}

/* ---- running a kernel directly ---- */

/* The prep results the kernels see: only constants occur here. */
static float **eval_prep(const ir_graph *g) {
  float **q = calloc((size_t)g->nprep + 1, sizeof *q);
  for (int i = 0; i < g->nnodes; i++) {
    const ir_node *x = g->nodes[i];
    if (x->prep < 0) continue;
    cr_assert_eq(x->op, IR_CONST, "prep op %s in a test graph", ir_op_name(x->op));
    q[x->prep] = malloc(sizeof(float));
    q[x->prep][0] = (float)x->f0;
  }
  return q;
}

/*
** Runs kernel k of graph g over n rows in calls of `chunk` rows; noise
** (train kernel: n rows of its width) goes to args[5 + 2(P + Q)]. Returns
** the first nonzero status of a call (the rest are not run), else 0.
*/
static int32_t run_kernel(const tprog *t, const ir_graph *g, rt_kernel k, long n, long chunk,
                          const float *in, const float *noise, float *out0, float *out1) {
  int P = t->p->nparams, Q = g->nprep, tile = cg_tile(t->p);
  cr_assert(chunk >= 1 && chunk <= tile);
  const ir_node *i0 = find_input(g, 0), *i2 = find_input(g, 2);
  long w0 = i0 ? i0->n : 0, w2 = i2 ? i2->n : 0;
  long o0 = g->outs[0]->n, o1 = g->nouts > 1 ? g->outs[1]->n : 0;
  float **q = eval_prep(g);
  void **args = calloc((size_t)(6 + 2 * (P + Q)), sizeof *args);
  size_t sbytes = ((size_t)tile * (size_t)g->scratch * sizeof(float) + 63) / 64 * 64 + 64;
  float *scratch = aligned_alloc(64, sbytes);
  for (size_t i = 0; i < sbytes / sizeof(float); i++) scratch[i] = NAN; /* stale reads show */
  for (int i = 0; i < P; i++) args[4 + i] = t->params[i];
  for (int i = 0; i < Q; i++) args[4 + P + i] = q[i];
  args[4 + P + Q] = scratch;
  int32_t st = 0;
  for (long r = 0; r < n && !st; r += chunk) {
    long rows = n - r < chunk ? n - r : chunk;
    args[0] = (void *)(in + r * w0);
    args[1] = NULL;
    args[2] = out0 + r * o0;
    args[3] = out1 ? out1 + r * o1 : NULL;
    args[5 + 2 * (P + Q)] = noise ? (void *)(noise + r * w2) : NULL;
    st = k((void *const *)args, rows);
  }
  free(scratch);
  free(args);
  for (int i = 0; i < Q; i++) free(q[i]);
  free(q);
  return st;
}

/* ir_interp on float rows; returns its status. */
static int interp(const tprog *t, const ir_graph *g, long n, const float *in, double *out0,
                  double *out1, char *err, size_t errlen) {
  const ir_node *i0 = find_input(g, 0);
  long w0 = i0 ? i0->n : 0;
  double *ind = calloc((size_t)(n * w0 + 1), sizeof *ind);
  for (long i = 0; i < n * w0; i++) ind[i] = in[i];
  int rc = ir_interp(t->p, g, (const void *const *)t->params, n, ind, NULL, out0, out1, err,
                     errlen);
  free(ind);
  return rc;
}

/* |got - want| / max(1, |want|) <= tol; equal infinities and NaNs pass. */
static void assert_close(const float *got, const double *want, long n, double tol,
                         const char *what) {
  for (long i = 0; i < n; i++) {
    if (isnan(want[i]) && isnan(got[i])) continue;
    if (isinf(want[i]) && got[i] == (float)want[i]) continue;
    double d = fabs(got[i] - want[i]) / fmax(1.0, fabs(want[i]));
    cr_assert(d <= tol, "%s[%ld]: kernel %.9g, expected %.9g", what, i, got[i], want[i]);
  }
}

/*
** Entry e of t at opt, n random rows (in given) in calls of 1, 7 and a
** tile, against the interpreter: out0 (and out1) within tol.
*/
static void check_entry(const tprog *t, int opt, int e, long n, const float *in, double tol,
                        const char *what) {
  cg_jit *j = jit(t, opt, CG_ENTRY(e));
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  cr_assert(ks[e]);
  const ir_graph *g = t->p->entry[e];
  long o0 = g->outs[0]->n, o1 = g->nouts > 1 ? g->outs[1]->n : 0;
  double *w0 = calloc((size_t)(n * o0 + 1), sizeof *w0), *w1 = calloc((size_t)(n * o1 + 1), sizeof *w1);
  char err[256];
  cr_assert_eq(interp(t, g, n, in, w0, o1 ? w1 : NULL, err, sizeof err), 0, "%s", err);
  long chunks[3] = {1, 7, cg_tile(t->p)};
  for (int c = 0; c < 3; c++) {
    float *g0 = malloc(sizeof(float) * (size_t)(n * o0 + 1));
    float *g1 = malloc(sizeof(float) * (size_t)(n * o1 + 1));
    long chunk = chunks[c] < cg_tile(t->p) ? chunks[c] : cg_tile(t->p);
    cr_assert_eq(run_kernel(t, g, ks[e], n, chunk, in, NULL, g0, o1 ? g1 : NULL), 0);
    char label[160];
    snprintf(label, sizeof label, "%s O%d chunk %ld out0", what, opt, chunk);
    assert_close(g0, w0, n * o0, tol, label);
    if (o1) {
      snprintf(label, sizeof label, "%s O%d chunk %ld out1", what, opt, chunk);
      assert_close(g1, w1, n * o1, tol, label);
    }
    free(g0);
    free(g1);
  }
  free(w0);
  free(w1);
  cg_jit_free(j);
}

#define NROWS 300

/* ---- IR_D2ACT ---- */

static ir_op g_op;

static void build_d2act(ir_graph *g, ir_program *p, int e) {
  (void)p;
  (void)e;
  ir_output(g, ir_d2act(g, g_op, ir_input(g, 0, 5)));
}

/* f''(x) by central differences of the interpreter's IR_DACT. */
static void d2_by_differences(const tprog *t, const float *in, long n, double *out) {
  const double h = 1e-4;
  ir_graph *g = ir_graph_new(t->A);
  ir_output(g, ir_dact(g, g_op, ir_input(g, 0, 1)));
  ir_renumber(g);
  double *xs = malloc(sizeof *xs * 2 * (size_t)n), *fs = malloc(sizeof *fs * 2 * (size_t)n);
  for (long i = 0; i < n; i++) {
    xs[2 * i] = in[i] + h;
    xs[2 * i + 1] = in[i] - h;
  }
  char err[256];
  cr_assert_eq(ir_interp(t->p, g, (const void *const *)t->params, 2 * n, xs, NULL, fs, NULL, err,
                         sizeof err), 0, "%s", err);
  for (long i = 0; i < n; i++) out[i] = (fs[2 * i] - fs[2 * i + 1]) / (2 * h);
  free(xs);
  free(fs);
}

Test(cg_residual, d2act_every_unary_op) {
  static const ir_op ops[] = {IR_RELU, IR_GELU, IR_GELU_TANH, IR_SILU, IR_TANH, IR_ELU,
                              IR_SOFTPLUS, IR_LIPSWISH, IR_EXP, IR_NEG, IR_LOGSIGMOID,
                              IR_SQUARE};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    for (int opt = 0; opt <= 2; opt += 2) {
      g_op = ops[i];
      tprog t;
      make_prog(&t, "d2", 5, 0, NULL, build_d2act, 0, opt, 1);
      long n = NROWS, m = n * 5;
      float *in = rand_rows(m, 2.0);
      const float ext[] = {30, -30, 0, 1e-4f, -1e-4f, 8, -9, 3, -3, 1.5f};
      memcpy(in, ext, sizeof ext);   /* the stable forms' extremes */
      char what[64];
      snprintf(what, sizeof what, "d2 %s", ir_op_name(g_op));
      check_entry(&t, opt, RT_ENCODE, n, in, 2e-5, what);
      /* the interpreter's formula against differences of f' (away from kinks) */
      double *fd = malloc(sizeof *fd * (size_t)m), *want = malloc(sizeof *want * (size_t)m);
      char err[256];
      cr_assert_eq(interp(&t, t.p->entry[RT_ENCODE], n, in, want, NULL, err, sizeof err), 0);
      d2_by_differences(&t, in, m, fd);
      for (long k = 0; k < m; k++) {
        if (fabs(in[k]) < 1e-3 || fabs(in[k]) > 20) continue;
        double d = fabs(fd[k] - want[k]) / fmax(1.0, fabs(want[k]));
        cr_assert(d < 1e-5, "%s at %g: formula %.9g, differences %.9g", what, in[k], want[k], fd[k]);
      }
      free(fd);
      free(want);
      free(in);
      free_prog(&t);
    }
}

/* ---- IR_LOGDET, IR_LOGDET_GRAD ---- */

static int g_D;

/* x = [pad | X (D*D) | g]: X and g are strided views of the input. */
static void build_logdet(ir_graph *g, ir_program *p, int e) {
  (void)p;
  int DD = g_D * g_D;
  ir_node *x = ir_input(g, 0, DD + 2);
  ir_node *X = ir_slice(g, x, 1, DD), *gs = ir_slice(g, x, DD + 1, 1);
  if (e == RT_ENCODE || e == RT_ENCODE_LD) ir_output(g, ir_logdet_grad(g, X, gs, g_D));
  else ir_output(g, ir_logdet(g, X, g_D));
  if (e == RT_ENCODE_LD || e == RT_DECODE_LD) ir_output(g, ir_logdet(g, X, g_D));
}

/* Rows of [pad | X | g] with X small enough that I + X is well conditioned. */
static float *logdet_rows(long n, int D) {
  int w = D * D + 2;
  float *in = rand_rows(n * w, 1.0);
  for (long r = 0; r < n; r++)
    for (int k = 0; k < D * D; k++) in[r * w + 1 + k] *= (float)(0.3 / sqrt(D));
  return in;
}

/* log|det(I + X)| of row r in double. */
static double ref_logdet(const float *in, long r, int D, int dk, double h) {
  int w = D * D + 2;
  double *M = malloc(sizeof *M * (size_t)(D * D));
  for (int k = 0; k < D * D; k++) M[k] = in[r * w + 1 + k] + (k % (D + 1) == 0) + (k == dk ? h : 0);
  double ld = tu_logabsdet(M, D);
  free(M);
  return ld;
}

Test(cg_residual, logdet_and_grad) {
  const int Ds[] = {1, 2, 5, 8};
  for (size_t i = 0; i < sizeof Ds / sizeof Ds[0]; i++)
    for (int opt = 0; opt <= 2; opt += 2) {
      g_D = Ds[i];
      int D = g_D, w = D * D + 2;
      tprog t;
      make_prog(&t, "ld", D, 0, NULL, build_logdet, 0, opt, 1);
      long n = NROWS;
      float *in = logdet_rows(n, D);
      char what[64];
      snprintf(what, sizeof what, "logdet D %d", D);
      check_entry(&t, opt, RT_DECODE, n, in, 1e-5, what);
      check_entry(&t, opt, RT_DECODE_LD, n, in, 1e-5, what);
      snprintf(what, sizeof what, "logdet_grad D %d", D);
      check_entry(&t, opt, RT_ENCODE, n, in, 1e-4, what);
      check_entry(&t, opt, RT_ENCODE_LD, n, in, 1e-4, what);
      /* against tu_logabsdet and its central differences (times g) */
      cg_jit *j = jit(&t, opt, CG_ENTRY(RT_ENCODE_LD));
      rt_kernel ks[RT_NENTRY];
      cg_jit_kernels(j, ks);
      long m = 20;
      float *gr = malloc(sizeof *gr * (size_t)(m * D * D)), *ld = malloc(sizeof *ld * (size_t)m);
      cr_assert_eq(run_kernel(&t, t.p->entry[RT_ENCODE_LD], ks[RT_ENCODE_LD], m, 7, in, NULL,
                              gr, ld), 0);
      for (long r = 0; r < m; r++) {
        double want = ref_logdet(in, r, D, -1, 0);
        cr_assert(fabs(ld[r] - want) <= 1e-5 * fmax(1, fabs(want)), "%s row %ld: %.9g vs %.9g",
                  what, r, ld[r], want);
        for (int k = 0; k < D * D; k++) {
          double h = 1e-6;
          double fd = in[r * w + D * D + 1] *
                      (ref_logdet(in, r, D, k, h) - ref_logdet(in, r, D, k, -h)) / (2 * h);
          cr_assert(fabs(gr[r * D * D + k] - fd) <= 1e-4 * fmax(1, fabs(fd)),
                    "%s row %ld entry %d: kernel %.9g, differences %.9g", what, r, k,
                    gr[r * D * D + k], fd);
        }
      }
      free(gr);
      free(ld);
      cg_jit_free(j);
      free(in);
      free_prog(&t);
    }
}

/* I + X singular: -inf and NaNs, no crash; D = 0 is the empty determinant. */
Test(cg_residual, logdet_singular) {
  for (int D = 1; D <= 3; D++) {
    float X[9] = {0}, G[9];
    for (int i = 0; i < D; i++) X[i * D + i] = -1;          /* I + X = 0 */
    cr_assert(isinf(rt_k_logdet(X, D)) && rt_k_logdet(X, D) < 0);
    rt_k_logdet_grad(X, D, 1.0f, G);
    for (int k = 0; k < D * D; k++) cr_assert(isnan(G[k]));
  }
  float R[4] = {0, 1, 0, -1};                 /* I + X = [[1, 1], [0, 0]] */
  cr_assert(isinf(rt_k_logdet(R, 2)));
  float P[4] = {-1, 1, 1, -1};                /* [[0, 1], [1, 0]]: pivoting, det -1 */
  cr_assert_float_eq(rt_k_logdet(P, 2), 0.0f, 1e-7);
  float G[4];
  rt_k_logdet_grad(P, 2, 2.0f, G);            /* 2 A^-T = 2 [[0, 1], [1, 0]] */
  cr_assert(G[0] == 0 && G[1] == 2 && G[2] == 2 && G[3] == 0);
  cr_assert_eq(rt_k_logdet(R, 0), 0.0f);

  /* through the kernel: a singular row among good ones */
  g_D = 2;
  tprog t;
  make_prog(&t, "sing", 2, 0, NULL, build_logdet, 0, 2, 1);
  cg_jit *j = jit(&t, 2, CG_ENTRY(RT_ENCODE_LD));
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  float in[3 * 6] = {0, -1, 0, 0, -1, 1,  0, 0.1f, 0, 0, 0.2f, 1,  0, 0, 0, 0, 0, 1};
  float gr[12], ld[3];
  cr_assert_eq(run_kernel(&t, t.p->entry[RT_ENCODE_LD], ks[RT_ENCODE_LD], 3, 3, in, NULL, gr, ld), 0);
  cr_assert(isinf(ld[0]) && ld[0] < 0);
  cr_assert_float_eq(ld[1], (float)log(1.1 * 1.2), 1e-6);
  cr_assert_eq(ld[2], 0.0f);
  cr_assert(isnan(gr[0]));
  cr_assert_float_eq(gr[4], (float)(1 / 1.1), 1e-6);
  cg_jit_free(j);
  free_prog(&t);
}

/* D beyond RT_K_LOGDET_MAX is refused at compile time, naming the limit. */
Test(cg_residual, logdet_limit) {
  g_D = RT_K_LOGDET_MAX + 1;
  tprog t;
  make_prog(&t, "big", 2, 0, NULL, build_logdet, 0, 2, 1);
  char err[512] = "";
  cg_jit *j = cg_jit_new_entries(t.p, 2, CG_ENTRY(RT_DECODE), err, sizeof err);
  cr_assert_null(j);
  cr_assert(strstr(err, "RT_K_LOGDET_MAX") && strstr(err, "64"), "%s", err);
  free_prog(&t);
}

/* ---- IR_STOPGRAD ---- */

static void build_stopgrad(ir_graph *g, ir_program *p, int e) {
  (void)p;
  ir_node *x = ir_input(g, 0, 6);
  ir_node *s = ir_stopgrad(g, ir_slice(g, x, 2, 3));   /* a view of a view, or a copy */
  ir_node *y = ir_binary(g, IR_MUL, s, ir_slice(g, x, 0, 3));
  if (e == RT_ENCODE) y = ir_stopgrad(g, ir_unary(g, IR_TANH, y));
  ir_output(g, y);
  if (e == RT_ENCODE_LD || e == RT_DECODE_LD) ir_output(g, ir_rowsum(g, ir_stopgrad(g, x)));
}

Test(cg_residual, stopgrad_is_identity) {
  for (int opt = 0; opt <= 2; opt += 2) {
    tprog t;
    make_prog(&t, "sg", 3, 0, NULL, build_stopgrad, 0, opt, 1);
    float *in = rand_rows(NROWS * 6, 1.0);
    for (int e = 0; e < RT_NENTRY; e++) check_entry(&t, opt, e, NROWS, in, 1e-6, "stopgrad");
    free(in);
    free_prog(&t);
  }
}

/* ---- fixed-point loops ---- */

#define FIXN 4
static const pspec fix_params[] = {{"w", 2, FIXN, FIXN}, {"b", 1, FIXN, 0}};
static int g_iters = 100, g_layer = 3;
static double g_tol = 1e-6;

/* y = u - 0.5 tanh(W y + b), a contraction for |W| < 2 */
static ir_node *contraction(ir_graph *g, ir_program *p, ir_node *u) {
  ir_node *y = ir_fix_begin(g, u, g_layer);
  ir_node *h = ir_linear(g, y, ir_param_node(g, p, 0), ir_param_node(g, p, 1));
  ir_node *m = ir_binary(g, IR_MUL, ir_unary(g, IR_TANH, h), ir_const(g, 0.5));
  return ir_fix_end(g, y, ir_binary(g, IR_SUB, u, m), g_iters, g_tol, g_layer);
}

static void build_contraction(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, FIXN);
  ir_node *y = contraction(g, p, x);
  ir_output(g, y);
  if (e == RT_ENCODE_LD || e == RT_DECODE_LD) ir_output(g, ir_rowsum(g, ir_unary(g, IR_EXP, y)));
}

/* The fixed point in double, row by row: |y - (u - 0.5 tanh(W y + b))| small. */
static void check_fixed_point(const tprog *t, const float *u, const float *y, long n) {
  const float *W = t->params[0], *b = t->params[1];
  for (long r = 0; r < n; r++)
    for (int o = 0; o < FIXN; o++) {
      double h = b[o];
      for (int i = 0; i < FIXN; i++) h += (double)W[o * FIXN + i] * y[r * FIXN + i];
      double res = y[r * FIXN + o] - (u[r * FIXN + o] - 0.5 * tanh(h));
      cr_assert(fabs(res) < 1e-5, "row %ld: residual %g", r, res);
    }
}

Test(cg_residual, fix_contraction) {
  for (int opt = 0; opt <= 2; opt += 2) {
    tprog t;
    make_prog(&t, "fix", FIXN, 2, fix_params, build_contraction, 0, opt, 0.4);
    float *in = rand_rows(NROWS * FIXN, 1.5);
    for (int e = 0; e < RT_NENTRY; e++) check_entry(&t, opt, e, NROWS, in, 2e-5, "contraction");
    cg_jit *j = jit(&t, opt, CG_ENTRY(RT_DECODE));
    rt_kernel ks[RT_NENTRY];
    cg_jit_kernels(j, ks);
    float *y = malloc(sizeof *y * NROWS * FIXN);
    cr_assert_eq(run_kernel(&t, t.p->entry[RT_DECODE], ks[RT_DECODE], NROWS, cg_tile(t.p), in,
                            NULL, y, NULL), 0);
    check_fixed_point(&t, in, y, NROWS);
    free(y);
    cg_jit_free(j);
    free(in);
    free_prog(&t);
  }
}

/*
** x = [u | s | s2]: y = u - s y (the fixed point u / (1 + s), the rate |s|:
** rows settle after different numbers of runs), then y2 = y - s2 y2 in a
** second loop of layer g_layer + 2. The pre-loop slices are read inside
** the loops, and the output is read after them.
*/
static void build_rows(ir_graph *g, ir_program *p, int e) {
  (void)p;
  ir_node *x = ir_input(g, 0, 3);
  ir_node *u = ir_slice(g, x, 0, 1), *s = ir_slice(g, x, 1, 1), *s2 = ir_slice(g, x, 2, 1);
  ir_node *y = ir_fix_begin(g, u, g_layer);
  ir_node *yn = ir_binary(g, IR_SUB, u, ir_binary(g, IR_MUL, s, y));
  ir_node *r1 = ir_fix_end(g, y, yn, g_iters, g_tol, g_layer);
  ir_node *z = ir_fix_begin(g, r1, g_layer + 2);
  ir_node *zn = ir_binary(g, IR_SUB, r1, ir_binary(g, IR_MUL, s2, z));
  ir_node *r2 = ir_fix_end(g, z, zn, g_iters, g_tol, g_layer + 2);
  ir_output(g, ir_concat(g, ir_concat(g, r2, s), s2));
  if (e == RT_ENCODE_LD || e == RT_DECODE_LD) ir_output(g, r1);
}

static float *rows_input(long n) {
  float *in = malloc(sizeof *in * (size_t)(3 * n));
  for (long r = 0; r < n; r++) {
    in[3 * r] = (float)(2 * rnorm());
    in[3 * r + 1] = r % 5 == 0 ? 0.0f : (float)(1.2 * runif() - 0.6);   /* 0: one run */
    in[3 * r + 2] = (float)(1.0 * runif() - 0.5);
  }
  return in;
}

Test(cg_residual, fix_rows_settle_independently) {
  for (int opt = 0; opt <= 2; opt += 2) {
    tprog t;
    make_prog(&t, "rows", 3, 0, NULL, build_rows, 0, opt, 1);
    long n = NROWS;
    float *in = rows_input(n);
    for (int e = 0; e < RT_NENTRY; e++) check_entry(&t, opt, e, n, in, 1e-5, "rows");
    cg_jit *j = jit(&t, opt, CG_ENTRY(RT_DECODE_LD));
    rt_kernel ks[RT_NENTRY];
    cg_jit_kernels(j, ks);
    const ir_graph *g = t.p->entry[RT_DECODE_LD];
    float *a = malloc(sizeof *a * 3 * (size_t)n), *b = malloc(sizeof *b * 3 * (size_t)n);
    float *a1 = malloc(sizeof *a1 * (size_t)n), *b1 = malloc(sizeof *b1 * (size_t)n);
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE_LD], n, 1, in, NULL, a, a1), 0);
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE_LD], n, cg_tile(t.p), in, NULL, b, b1), 0);
    /* a row's result does not depend on the rows beside it: bit for bit */
    cr_assert(memcmp(a, b, sizeof *a * 3 * (size_t)n) == 0, "O%d: tile rows differ from single rows", opt);
    cr_assert(memcmp(a1, b1, sizeof *a1 * (size_t)n) == 0);
    for (long r = 0; r < n; r++) {   /* the closed forms */
      double y = in[3 * r] / (1.0 + in[3 * r + 1]), z = y / (1.0 + in[3 * r + 2]);
      cr_assert(fabs(a1[r] - y) < 1e-5 * fmax(1, fabs(y)), "row %ld: %g vs %g", r, a1[r], y);
      cr_assert(fabs(a[3 * r] - z) < 1e-5 * fmax(1, fabs(z)), "row %ld: %g vs %g", r, a[3 * r], z);
    }
    free(a); free(b); free(a1); free(b1);
    cg_jit_free(j);
    free(in);
    free_prog(&t);
  }
}

/*
** The loop reads slices of a scratch tensor made before it, whose buffer
** the body's nodes may reuse once the slices are taken: they must be
** copies, not views, or the second run reads the body's values.
*/
static void build_scratch_slices(ir_graph *g, ir_program *p, int e) {
  (void)p;
  (void)e;
  ir_node *a = ir_unary(g, IR_TANH, ir_input(g, 0, 3));
  ir_node *u = ir_slice(g, a, 0, 1), *s = ir_slice(g, a, 1, 2);
  ir_node *y = ir_fix_begin(g, ir_slice(g, s, 1, 1), g_layer);
  ir_node *t = ir_binary(g, IR_MUL, ir_unary(g, IR_SQUARE, ir_slice(g, s, 0, 1)), y);
  ir_node *yn = ir_binary(g, IR_SUB, u, ir_binary(g, IR_MUL, t, ir_const(g, 0.6)));
  ir_output(g, ir_fix_end(g, y, yn, g_iters, g_tol, g_layer));
}

Test(cg_residual, fix_reads_slices_of_scratch) {
  for (int opt = 0; opt <= 2; opt += 2) {
    tprog t;
    make_prog(&t, "scr", 1, 0, NULL, build_scratch_slices, 0, opt, 1);
    float *in = rand_rows(NROWS * 3, 1.5);
    for (int e = 0; e < RT_NENTRY; e++) check_entry(&t, opt, e, NROWS, in, 1e-5, "slices");
    free(in);
    free_prog(&t);
  }
}

/*
** The run count: u = 1, s = 0.5 moves by 0.5^k in run k, so with tol 0.1
** the fourth run settles: iters = 4 passes, iters = 3 fails (status 1 +
** layer, and the interpreter fails too).
*/
Test(cg_residual, fix_iteration_limit) {
  g_tol = 0.1;
  for (int iters = 3; iters <= 4; iters++)
    for (int opt = 0; opt <= 2; opt += 2) {
      g_iters = iters;
      tprog t;
      make_prog(&t, "lim", 3, 0, NULL, build_rows, 0, opt, 1);
      float in[3] = {1, 0.5f, 0};
      float out[3];
      cg_jit *j = jit(&t, opt, CG_ENTRY(RT_DECODE));
      rt_kernel ks[RT_NENTRY];
      cg_jit_kernels(j, ks);
      int32_t st = run_kernel(&t, t.p->entry[RT_DECODE], ks[RT_DECODE], 1, 1, in, NULL, out, NULL);
      double want[3];
      char err[256];
      int rc = interp(&t, t.p->entry[RT_DECODE], 1, in, want, NULL, err, sizeof err);
      if (iters == 4) {
        cr_assert_eq(st, 0);
        cr_assert_eq(rc, 0, "%s", err);
        cr_assert_float_eq(out[0], 0.6875f, 1e-7);   /* 1, .5, .75, .625, .6875 */
        cr_assert_float_eq(want[0], 0.6875, 1e-12);
      } else {
        cr_assert_eq(st, 1 + g_layer);
        cr_assert_eq(rc, -1);
      }
      cg_jit_free(j);
      free_prog(&t);
    }
  g_iters = 100;
  g_tol = 1e-6;
}

/* y = u - 2 y (|s| > 1) does not settle: a NaN row neither. */
Test(cg_residual, fix_status_of_kernel) {
  for (int opt = 0; opt <= 2; opt += 2) {
    g_iters = 50;
    tprog t;
    make_prog(&t, "div", 3, 0, NULL, build_rows, 0, opt, 1);
    cg_jit *j = jit(&t, opt, CG_ENTRY(RT_DECODE));
    rt_kernel ks[RT_NENTRY];
    cg_jit_kernels(j, ks);
    const ir_graph *g = t.p->entry[RT_DECODE];
    float out[3 * 8];
    float good[3 * 2] = {1, 0.5f, 0, 0, 3, 0};       /* u = 0 settles at once, any s */
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE], 2, 2, good, NULL, out, NULL), 0);
    float bad[3 * 3] = {0, 3, 0, 1, 2, 0, 1, 0.5f, 0};  /* the middle row diverges */
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE], 3, 3, bad, NULL, out, NULL), 1 + g_layer);
    float second[3 * 2] = {1, 0.5f, 0, 1, 0.5f, -1.5f}; /* the second loop diverges */
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE], 2, 2, second, NULL, out, NULL), 3 + g_layer);
    float nan_row[3 * 2] = {1, 0.5f, 0, NAN, 0.5f, 0};
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE], 2, 2, nan_row, NULL, out, NULL), 1 + g_layer);
    float nan_s[3] = {1, NAN, 0};
    cr_assert_eq(run_kernel(&t, g, ks[RT_DECODE], 1, 1, nan_s, NULL, out, NULL), 1 + g_layer);
    double want[3 * 3];
    char err[256];
    cr_assert_eq(interp(&t, g, 3, bad, want, NULL, err, sizeof err), -1);
    cg_jit_free(j);
    free_prog(&t);
  }
  g_iters = 100;
}

/* weights for rt_model_open: the program has no parameters */
static rt_model *open_model(const tprog *t, cg_jit *j, int nthreads) {
  char err[512];
  rt_desc *d = cg_desc_err(t->p, err, sizeof err);
  cr_assert(d, "%s", err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  rt_weights w = {0};
  rt_model *m = rt_model_open(d, ks, &w, nthreads, err, sizeof err);
  cr_assert(m, "%s", err);
  rt_desc_free(d);
  return m;
}

/*
** rt_model_*: RT_ENOCONV and the failing layer. Tile 0 fails the second
** loop (layer g_layer + 2), tile 1 the first (g_layer): the lowest tile
** wins whatever the thread count.
*/
Test(cg_residual, model_reports_layer) {
  g_iters = 50;
  tprog t;
  make_prog(&t, "mdl", 3, 0, NULL, build_rows, 0, 2, 1);
  cg_jit *j = jit(&t, 2, CG_ALL_KERNELS);
  int T = cg_tile(t.p);
  long n = 3L * T + 5;
  float *in = rows_input(n);
  float *x = malloc(sizeof *x * 3 * (size_t)n), *ld = malloc(sizeof *ld * (size_t)n);
  for (int nth = 1; nth <= 3; nth++) {
    rt_model *m = open_model(&t, j, nth);
    cr_assert_eq(rt_model_failed_layer(m), -1);
    cr_assert_eq(rt_model_decode(m, (size_t)n, in, NULL, 0, x, ld), RT_OK);
    cr_assert_eq(rt_model_failed_layer(m), -1);
    float *bad = malloc(sizeof *bad * 3 * (size_t)n);
    memcpy(bad, in, sizeof *bad * 3 * (size_t)n);
    bad[3 * (T + 2) + 1] = 2.5f;          /* tile 1, first loop */
    bad[3 * (T - 1) + 2] = -3;            /* tile 0, second loop */
    bad[3 * (2 * T) + 1] = 2.5f;          /* tile 2, first loop */
    cr_assert_eq(rt_model_decode(m, (size_t)n, bad, NULL, 0, x, ld), RT_ENOCONV);
    cr_assert_eq(rt_model_failed_layer(m), g_layer + 2, "%d threads", nth);
    cr_assert_eq(rt_model_decode(m, (size_t)n, bad, NULL, 0, x, NULL), RT_ENOCONV);
    /* sampling feeds normals: some |s| > 1 surely diverges */
    cr_assert_eq(rt_model_sample(m, (size_t)n, 1, NULL, 0, x, ld), RT_ENOCONV);
    int l = rt_model_failed_layer(m);
    cr_assert(l == g_layer || l == g_layer + 2, "%d", l);
    bad[3 * (T - 1) + 2] = 0;             /* now tile 1 is the first */
    cr_assert_eq(rt_model_decode(m, (size_t)n, bad, NULL, 0, x, ld), RT_ENOCONV);
    cr_assert_eq(rt_model_failed_layer(m), g_layer, "%d threads", nth);
    cr_assert_eq(rt_model_encode(m, 1, in, NULL, 0, x, NULL), RT_OK);
    cr_assert_eq(rt_model_failed_layer(m), g_layer);    /* the last failure stays */
    free(bad);
    rt_model_close(m);
  }
  free(x);
  free(ld);
  free(in);
  cg_jit_free(j);
  free_prog(&t);
  g_iters = 100;
}

/* A built shared object: rows_decode returns RT_ENOCONV (-4), and its
** header says so. */
typedef struct so_model so_model;
Test(cg_residual, shared_object_status) {
  g_iters = 50;
  tprog t;
  make_prog(&t, "rows", 3, 0, NULL, build_rows, 0, 2, 1);
  char err[512], wpath[256], so[256], hdr[256];
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert(d, "%s", err);
  rt_weights w = {0};
  snprintf(wpath, sizeof wpath, "%s/rows.safetensors", tu_tmpdir());
  snprintf(so, sizeof so, "%s/librows.so", tu_tmpdir());
  snprintf(hdr, sizeof hdr, "%s/rows.h", tu_tmpdir());
  cr_assert_eq(rt_weights_save(d, &w, wpath, err, sizeof err), 0, "%s", err);
  rt_desc_free(d);
  size_t wlen;
  char *wbytes = tu_read_file(wpath, &wlen);
  cr_assert(wbytes);
  cr_assert_eq(cg_build_so(t.p, 2, wbytes, wlen, so, err, sizeof err), 0, "%s", err);
  free(wbytes);
  char *h = tu_read_file(hdr, NULL);
  cr_assert(h && strstr(h, "-4 a residual layer's fixed-point inverse did not converge"));
  free(h);
  void *lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  cr_assert(lib, "%s", dlerror());
  so_model *(*op)(const char *, char *, size_t) =
      (so_model * (*)(const char *, char *, size_t))dlsym(lib, "rows_open");
  void (*cl)(so_model *) = (void (*)(so_model *))dlsym(lib, "rows_close");
  int (*dec)(so_model *, size_t, const float *, const float *, float *, float *) =
      (int (*)(so_model *, size_t, const float *, const float *, float *, float *))dlsym(lib, "rows_decode");
  cr_assert(op && cl && dec);
  so_model *m = op(NULL, err, sizeof err);
  cr_assert(m, "%s", err);
  float z[6] = {1, 0.5f, 0, 2, -0.25f, 0.5f}, x[6];
  cr_assert_eq(dec(m, 2, z, NULL, x, NULL), 0);
  cr_assert_float_eq(x[3], (float)(2 / 0.75 / 1.5), 1e-5);
  z[1] = 2;                                   /* diverges */
  cr_assert_eq(dec(m, 2, z, NULL, x, NULL), RT_ENOCONV);
  cl(m);
  dlclose(lib);
  free_prog(&t);
  g_iters = 100;
}

/* A stand-in gradient kernel: fails with status 1 + x[r, 1] for a row
** whose x[r, 0] is 100, else log p = 0 and no gradient. */
static int32_t k_train_status(void *const *a, int64_t n) {
  const float *x = a[0];
  float *lp = a[2];
  int32_t st = 0;
  for (int64_t r = 0; r < n; r++) {
    lp[r] = 0;
    if (x[3 * r] == 100 && !st) st = 1 + (int32_t)x[3 * r + 1];
  }
  return st;
}

static void build_neg(ir_graph *g, ir_program *p, int e) {
  (void)p;
  (void)e;
  ir_output(g, ir_unary(g, IR_NEG, ir_input(g, 0, 3)));
}

/* rt_model_grad: RT_ENOCONV and the lowest tile's layer, any thread count. */
Test(cg_residual, grad_reports_layer) {
  tprog t;
  make_prog(&t, "gr", 3, 0, NULL, build_neg, 1, 2, 1);
  cg_jit *j = jit(&t, 2, CG_ENTRY(RT_ENCODE));
  int T = cg_tile(t.p);
  long n = 4L * T + 3;
  float *x = rand_rows(3 * n, 1);
  for (int nth = 1; nth <= 3; nth++) {
    rt_model *m = open_model(&t, j, nth);
    cr_assert_eq(rt_model_set_train(m, k_train_status), RT_OK);
    double loss;
    cr_assert_eq(rt_model_grad(m, (size_t)n, x, NULL, 0, &loss, NULL), RT_OK);
    cr_assert_eq(rt_model_failed_layer(m), -1);
    x[3 * (3 * T + 1)] = 100, x[3 * (3 * T + 1) + 1] = 7;   /* tile 3: layer 7 */
    x[3 * (T + 5)] = 100, x[3 * (T + 5) + 1] = 2;           /* tile 1: layer 2 */
    cr_assert_eq(rt_model_grad(m, (size_t)n, x, NULL, 0, &loss, NULL), RT_ENOCONV);
    cr_assert_eq(rt_model_failed_layer(m), 2, "%d threads", nth);
    x[3 * (T + 5)] = 0;
    cr_assert_eq(rt_model_grad(m, (size_t)n, x, NULL, 0, &loss, NULL), RT_ENOCONV);
    cr_assert_eq(rt_model_failed_layer(m), 7, "%d threads", nth);
    x[3 * (3 * T + 1)] = 0;
    rt_model_close(m);
  }
  free(x);
  cg_jit_free(j);
  free_prog(&t);
}

/* ---- the train kernel's noise input ---- */

#define NOISEW 5
/* log p stand-in: rowsum(x * noise[:, 1:4]) + noise[:, 0]; the other
** entries just negate x */
static void build_noise(ir_graph *g, ir_program *p, int e) {
  p->noise_width = NOISEW;
  ir_node *x = ir_input(g, 0, 3);
  if (e >= 0) {
    ir_output(g, ir_unary(g, IR_NEG, x));
    return;
  }
  ir_node *z = ir_input(g, 2, NOISEW);
  ir_node *s = ir_rowsum(g, ir_binary(g, IR_MUL, x, ir_slice(g, z, 1, 3)));
  ir_output(g, ir_binary(g, IR_ADD, s, ir_slice(g, z, 0, 1)));
}

Test(cg_residual, noise_input) {
  for (int opt = 0; opt <= 2; opt += 2) {
    tprog t;
    make_prog(&t, "nz", 3, 0, NULL, build_noise, 1, opt, 1);
    cg_jit *j = jit(&t, opt, CG_TRAIN_MASK);
    rt_kernel k = cg_jit_train(j);
    cr_assert(k);
    long n = NROWS;
    float *x = rand_rows(3 * n, 1), *z = rand_rows(NOISEW * n, 1), *out = malloc(sizeof *out * (size_t)n);
    double *xd = malloc(sizeof *xd * 3 * (size_t)n), *zd = malloc(sizeof *zd * NOISEW * (size_t)n);
    double *want = malloc(sizeof *want * (size_t)n);
    for (long i = 0; i < 3 * n; i++) xd[i] = x[i];
    for (long i = 0; i < NOISEW * n; i++) zd[i] = z[i];
    char err[256];
    cr_assert_eq(ir_interp_noise(t.p, t.p->train, (const void *const *)t.params, n, xd, NULL, zd,
                                 want, NULL, err, sizeof err), 0, "%s", err);
    long chunks[3] = {1, 7, cg_tile(t.p)};
    for (int c = 0; c < 3; c++) {
      cr_assert_eq(run_kernel(&t, t.p->train, k, n, chunks[c], x, z, out, NULL), 0);
      for (long r = 0; r < n; r++) {
        double h = z[r * NOISEW];
        for (int i = 0; i < 3; i++) h += (double)x[3 * r + i] * z[r * NOISEW + 1 + i];
        cr_assert(fabs(out[r] - h) < 1e-5 && fabs(want[r] - h) < 1e-5, "row %ld: %g, %g, %g",
                  r, out[r], want[r], h);
      }
    }
    free(x); free(z); free(out); free(xd); free(zd); free(want);
    cg_jit_free(j);
    free_prog(&t);
  }
}

/* What codegen refuses: noise outside the train kernel, a sink inside a
** loop, a loop without its end. */
static int g_bad;
static void build_bad(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 2);
  if (g_bad == 0) {
    ir_output(g, ir_binary(g, IR_ADD, x, ir_input(g, 2, 2)));
  } else if (g_bad == 1 && e < 0) {
    ir_node *y = ir_fix_begin(g, x, 1);
    ir_node *yn = ir_binary(g, IR_MUL, y, ir_const(g, 0.5));
    ir_acc_sum(g, yn, NULL, ir_param_node(g, p, 0));
    ir_output(g, ir_rowsum(g, ir_fix_end(g, y, yn, 10, 1e-6, 1)));
  } else if (g_bad == 2) {
    ir_node *y = ir_fix_begin(g, x, 1);
    ir_output(g, ir_unary(g, IR_NEG, y));
  } else {
    ir_output(g, x);
  }
}

Test(cg_residual, refused_graphs) {
  static const pspec one[] = {{"o", 1, 2, 0}};
  const char *want[] = {"outside the train kernel", "inside a fixed-point loop", "without its end"};
  unsigned masks[] = {CG_ENTRY(RT_ENCODE), CG_TRAIN_MASK, CG_ENTRY(RT_DECODE)};
  for (g_bad = 0; g_bad < 3; g_bad++) {
    tprog t;
    make_prog(&t, "bad", 2, 1, one, build_bad, g_bad == 1, 0, 1);
    char err[512] = "";
    cg_jit *j = cg_jit_new_entries(t.p, 0, masks[g_bad], err, sizeof err);
    cr_assert_null(j, "case %d compiled", g_bad);
    cr_assert(strstr(err, want[g_bad]), "case %d: %s", g_bad, err);
    free_prog(&t);
  }
}

/* The LLVM text: kernels return i32 and call the log-determinant helper. */
Test(cg_residual, llvm_text) {
  g_D = 3;
  tprog t;
  make_prog(&t, "txt", 3, 0, NULL, build_logdet, 0, 2, 1);
  char path[256], err[256];
  snprintf(path, sizeof path, "%s/txt.ll", tu_tmpdir());
  FILE *f = fopen(path, "w");
  cr_assert(f);
  cr_assert_eq(cg_dump_llvm(t.p, 2, f, err, sizeof err), 0, "%s", err);
  fclose(f);
  char *s = tu_read_file(path, NULL);
  cr_assert(s && strstr(s, "i32 @flowc_txt_decode(ptr"));
  cr_assert(strstr(s, "@rt_k_logdet(") && strstr(s, "@rt_k_logdet_grad("));
  free(s);
  free_prog(&t);
}
