/*
** tests/test_codegen.c: per-op correctness of the generated kernels.
**
** Small graphs are built by hand inside a program with a few parameters,
** put through pass_pipeline, JIT-compiled, and the kernel is called
** directly on random rows in chunks of 1, 7 and a whole tile; every result
** is compared with the double-precision reference interpreter. Also: the
** descriptor, the runtime path (prep programs incl. LU), every LLVM level,
** the LLVM text, and a built shared object loaded with dlopen.
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
#include "modelgen.h"
#include "passes.h"
#include "rt.h"
#include "testutil.h"

/* ---- random numbers (splitmix64) ---- */

static uint64_t rng_state = 12345;
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

/* ---- programs ---- */

typedef struct pspec {
  const char *name;
  ir_dtype dt;
  int ndim, s0, s1;
  ir_init init;
} pspec;

typedef struct tprog {
  ir_arena *A;
  ir_program *p;
  void **params;            /* random values, float* or int64_t* */
  const float *const *train_prep; /* the train graph's prep results from the
                                     runtime, or NULL: eval_prep */
} tprog;

/* The graph of every entry is built by build(g, p, entry). */
typedef void (*build_fn)(ir_graph *g, ir_program *p, int entry);
/* When set, make_prog also builds p->train with it. */
typedef void (*build_train_fn)(ir_graph *g, ir_program *p);
static build_train_fn g_build_train;

static long param_size(const ir_param *pa) {
  return pa->ndim == 2 ? (long)pa->shape[0] * pa->shape[1] : pa->shape[0];
}

static void make_prog(tprog *t, const char *name, int D, int C, int np, const pspec *ps,
                      build_fn build, int opt, double wscale) {
  t->A = ir_arena_new();
  t->train_prep = NULL;
  ir_model *m = ir_alloc(t->A, sizeof *m);
  m->name = ir_strdup(t->A, name);
  m->dim = D;
  m->ndims = 1;
  m->dims[0] = D;
  m->context = C;
  ir_program *p = ir_alloc(t->A, sizeof *p);
  p->A = t->A;
  p->model = m;
  p->nparams = np;
  p->params = ir_alloc(t->A, sizeof *p->params * (size_t)(np ? np : 1));
  t->params = ir_alloc(t->A, sizeof(void *) * (size_t)(np ? np : 1));
  for (int i = 0; i < np; i++) {
    ir_param *pa = &p->params[i];
    pa->name = ps[i].name;
    pa->dtype = ps[i].dt;
    pa->ndim = ps[i].ndim;
    pa->shape[0] = ps[i].s0;
    pa->shape[1] = ps[i].s1;
    pa->init = ps[i].init;
    pa->fan_in = ps[i].ndim == 2 ? ps[i].s1 : 1;
    long n = param_size(pa);
    if (pa->dtype == IR_I64) {
      int64_t *v = ir_alloc(t->A, sizeof *v * (size_t)(n ? n : 1));
      for (long k = 0; k < n; k++) v[k] = k;
      for (long k = n - 1; k > 0; k--) {
        long j = (long)(rnext() % (uint64_t)(k + 1));
        int64_t s = v[k]; v[k] = v[j]; v[j] = s;
      }
      t->params[i] = v;
    } else {
      float *v = ir_alloc(t->A, sizeof *v * (size_t)(n ? n : 1));
      for (long k = 0; k < n; k++) v[k] = (float)(wscale * (2 * runif() - 1));
      if (pa->init == INIT_LU_SIGN)
        for (long k = 0; k < n; k++) v[k] = v[k] < 0 ? -1.0f : 1.0f;
      t->params[i] = v;
    }
  }
  for (int e = 0; e < IR_NENTRY; e++) {
    p->entry[e] = ir_graph_new(t->A);
    build(p->entry[e], p, e);
  }
  if (g_build_train) {
    p->train = ir_graph_new(t->A);
    g_build_train(p->train, p);
  }
  cr_assert_eq(pass_pipeline(p, opt, NULL, NULL), 0);
  t->p = p;
}

static void free_prog(tprog *t) { ir_arena_free(t->A); }

/* The -O2 LLVM text of t's kernels (cg_dump_llvm, through tmpdir/NAME.ll);
** free it. */
static char *llvm_text(const tprog *t, const char *name) {
  char path[256], err[512];
  snprintf(path, sizeof path, "%s/%s.ll", tu_tmpdir(), name);
  FILE *f = fopen(path, "w");
  cr_assert(f);
  cr_assert_eq(cg_dump_llvm(t->p, 2, f, err, sizeof err), 0, "%s", err);
  fclose(f);
  char *s = tu_read_file(path, NULL);
  cr_assert(s);
  return s;
}

static const ir_node *find_input(const ir_graph *g, int slot) {
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i]->op == IR_INPUT && g->nodes[i]->i0 == slot) return g->nodes[i];
  return NULL;
}

/* ---- prep results, computed here for the simple prep ops ---- */

static float **eval_prep(const tprog *t, const ir_graph *g) {
  float **q = calloc((size_t)(g->nprep + 1), sizeof *q);
  double **v = calloc((size_t)g->nnodes, sizeof *v);
  for (int i = 0; i < g->nnodes; i++) {
    const ir_node *x = g->nodes[i];
    if (x->batch || ir_is_sink(x->op)) continue;
    long n = (long)x->rows * x->n;
    v[i] = calloc((size_t)(n + 1), sizeof(double));
    const ir_node *a = x->nargs > 0 ? x->args[0] : NULL, *b = x->nargs > 1 ? x->args[1] : NULL;
    switch (x->op) {
    case IR_PARAM:
      for (long k = 0; k < n; k++)
        v[i][k] = t->p->params[x->i0].dtype == IR_F32 ? ((float *)t->params[x->i0])[k]
                                                     : (double)((int64_t *)t->params[x->i0])[k];
      break;
    case IR_CONST: v[i][0] = x->f0; break;
    case IR_EXP: for (long k = 0; k < n; k++) v[i][k] = exp(v[a->id][k]); break;
    case IR_NEG: for (long k = 0; k < n; k++) v[i][k] = -v[a->id][k]; break;
    case IR_ROWSUM:
      for (long k = 0; k < (long)a->rows * a->n; k++) v[i][0] += v[a->id][k];
      break;
    case IR_ADD: case IR_SUB: case IR_MUL:
      for (long k = 0; k < n; k++) {
        double u = v[a->id][(long)a->rows * a->n == 1 ? 0 : k];
        double w = v[b->id][(long)b->rows * b->n == 1 ? 0 : k];
        v[i][k] = x->op == IR_ADD ? u + w : x->op == IR_SUB ? u - w : u * w;
      }
      break;
    default: cr_assert_fail("eval_prep: %s", ir_op_name(x->op));
    }
    if (x->prep >= 0) {
      q[x->prep] = malloc(sizeof(float) * (size_t)(n + 1));
      for (long k = 0; k < n; k++) q[x->prep][k] = (float)v[i][k];
    }
  }
  for (int i = 0; i < g->nnodes; i++) free(v[i]);
  free(v);
  return q;
}

static void free_prep(float **q, int n) {
  for (int i = 0; i < n; i++) free(q[i]);
  free(q);
}

/* ---- running a kernel directly ---- */

/* Runs kernel k of entry e over n rows in calls of `chunk` rows. */
static void run_kernel(const tprog *t, int e, rt_kernel k, long n, long chunk, const float *in,
                       const float *ctx, float *out0, float *out1) {
  const ir_graph *g = t->p->entry[e];
  int P = t->p->nparams, Q = g->nprep, tile = cg_tile(t->p);
  cr_assert(chunk >= 1 && chunk <= tile);
  const ir_node *i0 = find_input(g, 0), *i1 = find_input(g, 1);
  long w0 = i0 ? i0->n : 0, w1 = i1 ? i1->n : 0;
  long o0 = g->outs[0]->n, o1 = g->nouts > 1 ? g->outs[1]->n : 0;
  float **q = eval_prep(t, g);
  void **args = calloc((size_t)(5 + P + Q), sizeof *args);
  size_t sbytes = ((size_t)tile * (size_t)g->scratch * sizeof(float) + 63) / 64 * 64 + 64;
  float *scratch = aligned_alloc(64, sbytes);
  for (size_t i = 0; i < sbytes / sizeof(float); i++) scratch[i] = NAN; /* catch stale reads */
  for (int i = 0; i < P; i++) args[4 + i] = t->params[i];
  for (int i = 0; i < Q; i++) args[4 + P + i] = q[i];
  args[4 + P + Q] = scratch;
  for (long r = 0; r < n; r += chunk) {
    long rows = n - r < chunk ? n - r : chunk;
    args[0] = (void *)(in + r * w0);
    args[1] = ctx ? (void *)(ctx + r * w1) : NULL;
    args[2] = out0 + r * o0;
    args[3] = out1 ? out1 + r * o1 : NULL;
    k((void *const *)args, rows);
  }
  free(scratch);
  free(args);
  free_prep(q, Q);
}

static void interp(const tprog *t, int e, long n, const float *in, const float *ctx, double *out0,
                   double *out1) {
  const ir_graph *g = t->p->entry[e];
  const ir_node *i0 = find_input(g, 0), *i1 = find_input(g, 1);
  long w0 = i0 ? i0->n : 0, w1 = i1 ? i1->n : 0;
  double *ind = calloc((size_t)(n * w0 + 1), sizeof *ind), *cd = calloc((size_t)(n * w1 + 1), sizeof *cd);
  for (long i = 0; i < n * w0; i++) ind[i] = in[i];
  for (long i = 0; i < n * w1; i++) cd[i] = ctx[i];
  char err[256];
  int rc = ir_interp(t->p, g, (const void *const *)t->params, n, ind, cd, out0, out1, err, sizeof err);
  cr_assert_eq(rc, 0, "%s", err);
  free(ind);
  free(cd);
}

static void assert_close(const float *got, const double *want, long n, double tol, const char *what) {
  for (long i = 0; i < n; i++) {
    double d = fabs(got[i] - want[i]) / fmax(1.0, fabs(want[i]));
    cr_assert(d <= tol, "%s[%ld]: kernel %.9g, interpreter %.9g", what, i, got[i], want[i]);
  }
}

static float *rand_rows(long n, double s) {
  float *v = malloc(sizeof *v * (size_t)(n + 1));
  for (long i = 0; i < n; i++) v[i] = (float)(s * rnorm());
  return v;
}

/*
** Compiles t at opt, runs entry e on random inputs (scale s) in chunks of
** 1, 7 and a tile, and compares with the interpreter.
*/
static unsigned g_mask = CG_ALL_KERNELS; /* what check_prog compiles */
static void check_prog(const tprog *t, int opt, int e, double s, double tol, const char *what) {
  char err[512];
  cg_jit *j = cg_jit_new_entries(t->p, opt, g_mask, err, sizeof err);
  cr_assert(j, "%s: %s", what, err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  cr_assert(ks[e]);
  for (int k = 0; k < RT_NENTRY; k++)
    cr_assert(!ks[k] == !(t->p->entry[k] && (g_mask & CG_ENTRY(k))), "%s: kernel %d", what, k);
  const ir_graph *g = t->p->entry[e];
  const ir_node *i0 = find_input(g, 0), *i1 = find_input(g, 1);
  long w0 = i0 ? i0->n : 0, w1 = i1 ? i1->n : 0;
  long o0 = g->outs[0]->n, o1 = g->nouts > 1 ? g->outs[1]->n : 0;
  int tile = cg_tile(t->p);
  long n = 2L * tile + 5;
  float *in = rand_rows(n * w0, s), *ctx = w1 ? rand_rows(n * w1, s) : NULL;
  /* extremes for the activations' stable forms */
  if (n * w0 > 8) { in[0] = 30; in[1] = -30; in[2] = 0; in[3] = 1e-4f; in[4] = -1e-4f; in[5] = 8; in[6] = -9; }
  double *want0 = calloc((size_t)(n * o0 + 1), sizeof *want0);
  double *want1 = calloc((size_t)(n * o1 + 1), sizeof *want1);
  interp(t, e, n, in, ctx, want0, o1 ? want1 : NULL);
  long chunks[3] = {1, 7, tile};
  for (int c = 0; c < 3; c++) {
    long chunk = chunks[c] < tile ? chunks[c] : tile;
    float *out0 = malloc(sizeof(float) * (size_t)(n * o0 + 1));
    float *out1 = malloc(sizeof(float) * (size_t)(n * o1 + 1));
    for (long i = 0; i < n * o0; i++) out0[i] = NAN;
    for (long i = 0; i < n * o1; i++) out1[i] = NAN;
    run_kernel(t, e, ks[e], n, chunk, in, ctx, out0, o1 ? out1 : NULL);
    char label[128];
    snprintf(label, sizeof label, "%s O%d chunk %ld out0", what, opt, chunk);
    assert_close(out0, want0, n * o0, tol, label);
    if (o1) {
      snprintf(label, sizeof label, "%s O%d chunk %ld out1", what, opt, chunk);
      assert_close(out1, want1, n * o1, tol, label);
    }
    free(out0);
    free(out1);
  }
  free(in);
  free(ctx);
  free(want0);
  free(want1);
  cg_jit_free(j);
}

/* ---- the cases: a global selects what the builder makes ---- */

static ir_op g_op;
static int g_variant;
static int g_D = 5;

static void build_unary(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, g_D);
  ir_output(g, ir_unary(g, g_op, x));
}

Test(codegen, unary_ops) {
  static const ir_op ops[] = {IR_RELU, IR_GELU, IR_GELU_TANH, IR_SILU, IR_TANH, IR_ELU,
                              IR_SOFTPLUS, IR_LIPSWISH, IR_EXP, IR_NEG, IR_LOGSIGMOID,
                              IR_SQUARE};
  int widths[] = {1, 5, 37};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    for (int w = 0; w < 3; w++) {
      g_op = ops[i];
      g_D = widths[w];
      tprog t;
      make_prog(&t, "un", g_D, 0, 0, NULL, build_unary, 2, 1);
      char what[64];
      snprintf(what, sizeof what, "%s width %d", ir_op_name(g_op), g_D);
      check_prog(&t, 2, IR_ENTRY_ENCODE, 2.0, 1e-5, what);
      free_prog(&t);
    }
  g_D = 5;
}

/* binary ops: variant selects the operand kinds */
static const pspec bin_params[] = {
  {"row", IR_F32, 1, 6, 0, INIT_ZERO},        /* [1,6] */
  {"one", IR_F32, 1, 1, 0, INIT_ZERO},        /* [1,1] */
  {"mat", IR_F32, 2, 3, 6, INIT_ZERO},        /* [3,6] for a prep sum */
};

static void build_binary(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 6);
  ir_node *row = ir_param_node(g, p, 0), *one = ir_param_node(g, p, 1);
  ir_node *y = NULL;
  switch (g_variant) {
  case 0: y = ir_binary(g, g_op, x, ir_unary(g, IR_TANH, x)); break;      /* batch, batch */
  case 1: y = ir_binary(g, g_op, x, row); break;                         /* batch, [1,n] */
  case 2: y = ir_binary(g, g_op, row, x); break;                         /* [1,n], batch */
  case 3: y = ir_binary(g, g_op, x, ir_const(g, -1.75)); break;          /* batch, const */
  case 4: y = ir_binary(g, g_op, ir_const(g, 0.5), x); break;            /* const, batch */
  case 5: y = ir_binary(g, g_op, x, one); break;                         /* batch, [1,1] */
  case 6: y = ir_binary(g, g_op, ir_unary(g, IR_EXP, row), x); break;    /* prep row */
  case 7: /* prep scalar: sum of a matrix, times a constant */
    y = ir_binary(g, g_op, x, ir_binary(g, IR_MUL, ir_rowsum(g, ir_param_node(g, p, 2)),
                                        ir_const(g, 0.25)));
    break;
  case 8: y = ir_binary(g, g_op, x, ir_rowsum(g, x)); break;             /* batch, [B,1] */
  case 9: /* prep of prep: neg(exp(row)) - one */
    y = ir_binary(g, g_op, x, ir_binary(g, IR_SUB, ir_unary(g, IR_NEG, ir_unary(g, IR_EXP, row)), one));
    break;
  }
  ir_output(g, y);
}

Test(codegen, binary_ops) {
  static const ir_op ops[] = {IR_ADD, IR_SUB, IR_MUL};
  for (int i = 0; i < 3; i++)
    for (int v = 0; v <= 9; v++) {
      g_op = ops[i];
      g_variant = v;
      tprog t;
      make_prog(&t, "bin", 6, 0, 3, bin_params, build_binary, 2, 1);
      char what[64];
      snprintf(what, sizeof what, "%s variant %d", ir_op_name(g_op), v);
      check_prog(&t, 2, IR_ENTRY_ENCODE, 1.5, 1e-5, what);
      free_prog(&t);
    }
}

/* structure: slice, concat, gather with a parameter or constant indices */
static const int perm7[7] = {3, 6, 0, 1, 5, 2, 4};
static const pspec perm_params[] = {{"flow.0.perm", IR_I64, 1, 7, 0, INIT_PERM_RANDOM}};

static void build_struct(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 7), *c = ir_input(g, 1, 3), *y = NULL;
  switch (g_variant) {
  case 0: y = ir_slice(g, x, 2, 4); break;
  case 1: y = ir_concat(g, ir_slice(g, x, 4, 3), ir_slice(g, x, 0, 4)); break;
  case 2: y = ir_concat(g, x, c); break;
  case 3: y = ir_gather(g, x, ir_param_node(g, p, 0), NULL, 0); break;
  case 4: y = ir_gather(g, x, ir_param_node(g, p, 0), NULL, 1); break;
  case 5: y = ir_gather(g, x, NULL, perm7, 0); break;
  case 6: y = ir_gather(g, x, NULL, perm7, 1); break;
  case 7: /* gather then its inverse: the identity */
    y = ir_gather(g, ir_gather(g, x, ir_param_node(g, p, 0), NULL, 0), ir_param_node(g, p, 0), NULL, 1);
    break;
  case 8: y = ir_rowsum(g, ir_concat(g, ir_unary(g, IR_SQUARE, x), c)); break;
  case 9: y = ir_slice(g, ir_unary(g, IR_NEG, x), 6, 1); break;
  }
  ir_output(g, y);
}

Test(codegen, structure_ops) {
  for (int v = 0; v <= 9; v++) {
    g_variant = v;
    tprog t;
    make_prog(&t, "st", 7, 3, 1, perm_params, build_struct, 2, 1);
    char what[64];
    snprintf(what, sizeof what, "structure variant %d", v);
    check_prog(&t, 2, IR_ENTRY_ENCODE, 1, 1e-6, what);
    free_prog(&t);
  }
}

/* splines: h from a linear layer of the context */
static const pspec rqs_params[] = {
  {"flow.0.net.0.weight", IR_F32, 2, 3 * 11, 4, INIT_LINEAR_WEIGHT},
  {"flow.0.net.0.bias", IR_F32, 1, 3 * 11, 0, INIT_LINEAR_BIAS},
};

static void build_rqs(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 3), *c = ir_input(g, 1, 4);
  ir_node *h = ir_linear(g, c, ir_param_node(g, p, 0), ir_param_node(g, p, 1));
  ir_node *y = ir_rqs(g, x, h, 4, 2.5, g_variant);
  ir_output(g, ir_slice(g, y, 0, 3));
  ir_output(g, ir_rowsum(g, ir_slice(g, y, 3, 3)));
}

Test(codegen, rqs_both_directions) {
  for (int inv = 0; inv < 2; inv++) {
    g_variant = inv;
    tprog t;
    /* log|dy/dx| in a narrow bin is sensitive to h: float h -> 1e-5 */
    make_prog(&t, "sp", 3, 4, 2, rqs_params, build_rqs, 2, 1.0);
    check_prog(&t, 2, IR_ENTRY_ENCODE_LD, 2, 5e-5, inv ? "rqs inverse" : "rqs forward");
    free_prog(&t);
  }
}

/* linear layers: small inline, large (gemm path), without bias, zero input */
static pspec lin_params[3];
static int g_in, g_out;

static void build_linear(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, g_in);
  ir_node *W = ir_param_node(g, p, 0), *b = ir_param_node(g, p, 1);
  ir_node *y = NULL;
  switch (g_variant) {
  case 0: y = ir_linear(g, x, W, b); break;
  case 1: y = ir_linear(g, x, W, NULL); break;
  case 2: y = ir_linear(g, ir_slice(g, x, 0, 0), ir_param_node(g, p, 2), b); break; /* [B,0] */
  case 3: y = ir_linear(g, x, ir_unary(g, IR_NEG, W), ir_unary(g, IR_EXP, b)); break; /* prep W, b */
  case 4: /* two layers with an activation, then back to in */
    y = ir_linear(g, ir_unary(g, IR_TANH, ir_linear(g, x, W, b)), ir_param_node(g, p, 2), NULL);
    break;
  }
  ir_output(g, y);
}

static void linear_case(int in, int out, int variant, double tol) {
  g_in = in;
  g_out = out;
  g_variant = variant;
  lin_params[0] = (pspec){"w", IR_F32, 2, out, in, INIT_LINEAR_WEIGHT};
  lin_params[1] = (pspec){"b", IR_F32, 1, out, 0, INIT_LINEAR_BIAS};
  lin_params[2] = variant == 4 ? (pspec){"w2", IR_F32, 2, in, out, INIT_LINEAR_WEIGHT}
                               : (pspec){"w0", IR_F32, 2, out, 0, INIT_LINEAR_WEIGHT};
  tprog t;
  make_prog(&t, "lin", in, 0, 3, lin_params, build_linear, 2, 1.0 / sqrt(in > 0 ? in : 1));
  char what[64];
  snprintf(what, sizeof what, "linear %d -> %d variant %d", in, out, variant);
  check_prog(&t, 2, IR_ENTRY_ENCODE, 1, tol, what);
  free_prog(&t);
}

Test(codegen, linear_small) {
  for (int v = 0; v <= 4; v++) {
    if (v == 2) continue;
    linear_case(5, 7, v, 1e-5);
    linear_case(1, 3, v, 1e-5);
    linear_case(33, 2, v, 1e-5);
  }
}

Test(codegen, linear_zero_input) {
  linear_case(4, 6, 2, 1e-6);
}

Test(codegen, linear_large_gemm) {
  /* in*out >= 64*64: rt_k_gemm for calls of >= 16 rows, loops below */
  for (int v = 0; v <= 4; v++) {
    if (v == 2) continue;
    linear_case(96, 80, v, 2e-5);
  }
  linear_case(64, 64, 0, 2e-5);
}

/* A staircase linear (MADE's parallel direction): row o of W is zero past
** its prefix[o], and the loops may stop there. Rows go four at a time to
** the longest prefix of the four (rows 0-3 here, to 9), the rest one at a
** time; W holds NaN wherever no loop should read, so a result shows that
** the loops stop (the interpreter refuses such a W; this 33 x 7 weight
** never goes to BLAS). */
static const int stair_len[7] = {0, 1, 5, 9, 12, 2, 33};
static void build_stair(ir_graph *g, ir_program *p, int e) {
  (void)e;
  ir_node *x = ir_input(g, 0, 33);
  ir_output(g, ir_linear_prefix(g, x, ir_param_node(g, p, 0), ir_param_node(g, p, 1), stair_len));
}

Test(codegen, linear_staircase) {
  lin_params[0] = (pspec){"w", IR_F32, 2, 7, 33, INIT_LINEAR_WEIGHT};
  lin_params[1] = (pspec){"b", IR_F32, 1, 7, 0, INIT_LINEAR_BIAS};
  tprog t;
  make_prog(&t, "stair", 33, 0, 2, lin_params, build_stair, 2, 0.3);
  char err[512];
  cg_jit *j = cg_jit_new_entries(t.p, 2, g_mask, err, sizeof err);
  cr_assert(j, "%s", err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  for (int o = 0; o < 7; o++)
    for (int i = stair_len[o]; i < 33; i++)
      ((float *)t.params[0])[o * 33 + i] = i < (o < 4 ? 9 : stair_len[o]) ? 0.0f : NAN;
  long n = 40;
  float *in = rand_rows(n * 33, 1), out[40 * 7];
  const float *W = t.params[0], *b = t.params[1];
  for (long chunk = 1; chunk <= 32; chunk *= 32) {
    run_kernel(&t, IR_ENTRY_ENCODE, ks[IR_ENTRY_ENCODE], n, chunk, in, NULL, out, NULL);
    for (long r = 0; r < n; r++)
      for (int o = 0; o < 7; o++) {
        double want = b[o];
        for (int i = 0; i < stair_len[o]; i++) want += (double)in[r * 33 + i] * W[o * 33 + i];
        cr_assert(fabs(out[r * 7 + o] - want) < 1e-5, "row %ld out %d: %g, prefix sum %g", r, o,
                  out[r * 7 + o], want);
      }
  }
  /* the reference refuses a staircase whose rows are not zero past it */
  double ind[33] = {0}, o[7];
  cr_assert_neq(ir_interp(t.p, t.p->entry[IR_ENTRY_ENCODE], (const void *const *)t.params, 1, ind,
                          NULL, o, NULL, err, sizeof err), 0);
  cr_assert(strstr(err, "past its row prefix"), "%s", err);
  free(in);
  cg_jit_free(j);
  free_prog(&t);
}

/* ---- every LLVM level on a small MLP with two outputs ---- */

static const pspec mlp_params[] = {
  {"flow.0.net.0.weight", IR_F32, 2, 16, 4, INIT_LINEAR_WEIGHT},
  {"flow.0.net.0.bias", IR_F32, 1, 16, 0, INIT_LINEAR_BIAS},
  {"flow.0.net.1.weight", IR_F32, 2, 4, 16, INIT_LINEAR_WEIGHT},
  {"flow.0.net.1.bias", IR_F32, 1, 4, 0, INIT_LINEAR_BIAS},
  {"flow.1.log_scale", IR_F32, 1, 4, 0, INIT_ZERO},
  {"flow.1.bias", IR_F32, 1, 4, 0, INIT_ZERO},
};

static void build_mlp(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 4);
  ir_node *c = ir_input(g, 1, 2);
  ir_node *in = ir_concat(g, ir_slice(g, x, 0, 2), c);
  ir_node *h = ir_unary(g, IR_GELU, ir_linear(g, in, ir_param_node(g, p, 0), ir_param_node(g, p, 1)));
  ir_node *o = ir_linear(g, h, ir_param_node(g, p, 2), ir_param_node(g, p, 3));
  ir_node *s = ir_unary(g, IR_TANH, ir_slice(g, o, 0, 2));
  ir_node *y2 = ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, ir_slice(g, x, 2, 2), ir_unary(g, IR_EXP, s)),
                          ir_slice(g, o, 2, 2));
  ir_node *y = ir_concat(g, ir_slice(g, x, 0, 2), y2);
  ir_node *ls = ir_param_node(g, p, 4);
  ir_node *z = ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, y, ir_unary(g, IR_EXP, ls)), ir_param_node(g, p, 5));
  ir_output(g, z);
  if (e == IR_ENTRY_ENCODE_LD || e == IR_ENTRY_DECODE_LD)
    ir_output(g, ir_binary(g, IR_ADD, ir_rowsum(g, s), ir_rowsum(g, ls)));
}

Test(codegen, all_levels_mlp) {
  for (int opt = 0; opt <= 3; opt++) {
    tprog t;
    make_prog(&t, "mlp", 4, 2, 6, mlp_params, build_mlp, opt, 0.7);
    check_prog(&t, opt, IR_ENTRY_ENCODE_LD, 1, 1e-5, "mlp");
    check_prog(&t, opt, IR_ENTRY_ENCODE, 1, 1e-5, "mlp");
    free_prog(&t);
  }
}

/* ---- descriptor ---- */

Test(codegen, descriptor) {
  tprog t;
  make_prog(&t, "mlp", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  char err[256];
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_str_eq(d->name, "mlp");
  cr_assert_eq(d->dim, 4);
  cr_assert_eq(d->context, 2);
  cr_assert_eq(d->tile, cg_tile(t.p));
  cr_assert(d->tile >= 1 && d->tile <= 128);
  cr_assert_eq(d->nparams, 6);
  cr_assert_str_eq(d->params[0].name, "flow.0.net.0.weight");
  cr_assert_eq(d->params[0].ndim, 2);
  cr_assert_eq(d->params[0].shape[0], 16);
  cr_assert_eq(d->params[0].shape[1], 4);
  cr_assert_eq(d->params[0].init, RT_INIT_LINEAR_WEIGHT);
  cr_assert_eq(d->params[4].init, RT_INIT_ZERO);
  for (int e = 0; e < RT_NENTRY; e++) {
    const ir_graph *g = t.p->entry[e];
    cr_assert_eq(d->entry[e].scratch, g->scratch);
    cr_assert_eq(d->entry[e].has_ld, g->nouts == 2);
    cr_assert_eq(d->entry[e].nprep, g->nprep);
    /* exp(log_scale) [1,4] is in every entry; the ld entries sum it */
    int nexp = 0, nsum = 0;
    for (int q = 0; q < d->entry[e].nprep; q++) {
      const rt_prep *r = &d->entry[e].prep[q];
      if (r->op == RT_PREP_EXP) {
        nexp++;
        cr_assert_eq(r->nargs, 1);
        cr_assert_eq(r->args[0], 4);
        cr_assert_eq(r->rows, 1);
        cr_assert_eq(r->n, 4);
      }
      if (r->op == RT_PREP_SUM) {
        nsum++;
        cr_assert_eq(r->args[0], 4);
        cr_assert_eq(r->n, 1);
      }
    }
    cr_assert_eq(nexp, 1);
    cr_assert_eq(nsum, d->entry[e].has_ld);
  }
  /* the text form round-trips */
  char *text = rt_desc_format(d);
  cr_assert(text);
  rt_desc *d2 = rt_desc_parse(text, err, sizeof err);
  cr_assert(d2, "%s", err);
  char *text2 = rt_desc_format(d2);
  cr_assert_str_eq(text, text2);
  free(text);
  free(text2);
  rt_desc_free(d2);
  rt_desc_free(d);
  free_prog(&t);
}

static void build_bad(ir_graph *g, ir_program *p, int e) {
  ir_node *x = ir_input(g, 0, 6);
  ir_output(g, ir_binary(g, IR_ADD, x, ir_unary(g, IR_TANH, ir_param_node(g, p, 0))));
}

Test(codegen, descriptor_refuses_unknown_prep) {
  tprog t;
  make_prog(&t, "bad", 6, 0, 3, bin_params, build_bad, 2, 1);
  char err[256] = "";
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert_null(d);
  cr_assert(strstr(err, "tanh"), "%s", err);
  free_prog(&t);
}

/* ---- through the runtime: prep programs with LU, tiles, threads ---- */

static const pspec lu_params[] = {
  {"flow.0.lower", IR_F32, 2, 5, 5, INIT_LU_LOWER},
  {"flow.0.upper", IR_F32, 2, 5, 5, INIT_LU_UPPER},
  {"flow.0.log_diag", IR_F32, 1, 5, 0, INIT_LU_LOG_DIAG},
  {"flow.0.sign", IR_F32, 1, 5, 0, INIT_LU_SIGN},
  {"flow.0.perm", IR_I64, 1, 5, 0, INIT_LU_PERM},
};

static void build_lu(ir_graph *g, ir_program *p, int e) {
  ir_node *lu[5];
  for (int i = 0; i < 5; i++) lu[i] = ir_param_node(g, p, i);
  int dec = e == IR_ENTRY_DECODE || e == IR_ENTRY_DECODE_LD;
  ir_node *x = ir_input(g, 0, 5);
  ir_node *W = ir_lu(g, dec ? IR_LU_W : IR_LU_WINV, lu);
  ir_node *y = ir_linear(g, x, W, NULL);
  ir_node *ld = ir_rowsum(g, lu[2]);
  if (!dec) ld = ir_unary(g, IR_NEG, ld);
  if (e == IR_ENTRY_LOGPROB) {
    ir_node *sq = ir_rowsum(g, ir_unary(g, IR_SQUARE, y));
    ir_node *lp = ir_binary(g, IR_MUL, sq, ir_const(g, -0.5));
    ir_output(g, ir_binary(g, IR_ADD, lp, ir_binary(g, IR_ADD, ld, ir_const(g, -5 * 0.9189385332046727))));
    return;
  }
  ir_output(g, y);
  if (e == IR_ENTRY_ENCODE_LD || e == IR_ENTRY_DECODE_LD)   /* [1,1] param log-det, broadcast */
    ir_output(g, ir_binary(g, IR_ADD, ir_rowsum(g, x), ir_binary(g, IR_MUL, ld, ir_const(g, 1))));
}

Test(codegen, runtime_lu) {
  tprog t;
  make_prog(&t, "lu", 5, 0, 5, lu_params, build_lu, 2, 0.5);
  char err[512];
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert(d, "%s", err);
  cg_jit *j = cg_jit_new(t.p, 2, err, sizeof err);
  cr_assert(j, "%s", err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  rt_weights w = {t.p->nparams, t.params, 0};
  rt_model *m = rt_model_open(d, ks, &w, 2, err, sizeof err);
  cr_assert(m, "%s", err);
  long n = 300;
  float *x = rand_rows(n * 5, 1);
  float *z = malloc(sizeof *z * (size_t)n * 5), *ld = malloc(sizeof *ld * (size_t)n);
  float *lp = malloc(sizeof *lp * (size_t)n), *x2 = malloc(sizeof *x2 * (size_t)n * 5);
  double *wz = malloc(sizeof *wz * (size_t)n * 5), *wld = malloc(sizeof *wld * (size_t)n);
  cr_assert_eq(rt_model_encode(m, (size_t)n, x, NULL, 0, z, ld), 0);
  interp(&t, IR_ENTRY_ENCODE_LD, n, x, NULL, wz, wld);
  assert_close(z, wz, n * 5, 1e-5, "lu encode");
  assert_close(ld, wld, n, 1e-5, "lu encode logdet");
  cr_assert_eq(rt_model_log_prob(m, (size_t)n, x, NULL, 0, lp), 0);
  interp(&t, IR_ENTRY_LOGPROB, n, x, NULL, wld, NULL);
  assert_close(lp, wld, n, 1e-5, "lu log_prob");
  cr_assert_eq(rt_model_decode(m, (size_t)n, z, NULL, 0, x2, NULL), 0);
  for (long i = 0; i < n * 5; i++)
    cr_assert(fabsf(x2[i] - x[i]) <= 1e-4f * fmaxf(1, fabsf(x[i])), "round trip [%ld] %g %g", i, x2[i], x[i]);
  free(x); free(z); free(ld); free(lp); free(x2); free(wz); free(wld);
  rt_model_close(m);
  cg_jit_free(j);
  rt_desc_free(d);
  free_prog(&t);
}

/* ---- LLVM text ---- */

Test(codegen, dump_llvm_vectorizes) {
  g_op = IR_RELU;
  g_D = 64;
  tprog t;
  make_prog(&t, "vec", 64, 0, 0, NULL, build_unary, 2, 1);
  char *s = llvm_text(&t, "vec");
  cr_assert(strstr(s, "i32 @flowc_vec_encode(ptr"), "no kernel");
  cr_assert(strstr(s, "i32 @flowc_vec_log_prob(ptr") || strstr(s, "i32 @flowc_vec_logprob(ptr"));
  cr_assert(strstr(s, "x float>"), "relu over 64 columns is not vectorized");
  cr_assert(strstr(s, "\"target-cpu\""));
  free(s);
  free_prog(&t);
  g_D = 5;
}

/* FLOWC_VECTOR_WIDTH=128: LLVM is told to prefer 128-bit vectors, so the
** relu over 64 columns uses 4 x float, and the numbers do not change. */
Test(codegen, vector_width) {
  g_op = IR_RELU;
  g_D = 64;
  setenv("FLOWC_VECTOR_WIDTH", "128", 1);
  tprog t;
  make_prog(&t, "vw", 64, 0, 0, NULL, build_unary, 2, 1);
  char *s = llvm_text(&t, "vw");
  cr_assert(strstr(s, "\"prefer-vector-width\"=\"128\""), "no width attribute");
  cr_assert(strstr(s, "<4 x float>") && !strstr(s, "<8 x float>"), "not 128 bits wide");
  free(s);
  check_prog(&t, 2, IR_ENTRY_ENCODE, 2.0, 1e-6, "128-bit vectors");
  unsetenv("FLOWC_VECTOR_WIDTH");
  free_prog(&t);
  g_D = 5;
}

/* ---- shared object ---- */

typedef struct so_model so_model;

Test(codegen, shared_object) {
  tprog t;
  make_prog(&t, "cgso", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  char err[512];
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert(d, "%s", err);
  rt_weights w = {t.p->nparams, t.params, 0};
  char wpath[256], so[256], hdr[256];
  snprintf(wpath, sizeof wpath, "%s/cgso.safetensors", tu_tmpdir());
  snprintf(so, sizeof so, "%s/libcgso.so", tu_tmpdir());
  snprintf(hdr, sizeof hdr, "%s/cgso.h", tu_tmpdir());
  cr_assert_eq(rt_weights_save(d, &w, wpath, err, sizeof err), 0, "%s", err);
  size_t wlen;
  char *wbytes = tu_read_file(wpath, &wlen);
  cr_assert(wbytes);
  cr_assert_eq(cg_build_so(t.p, 2, wbytes, wlen, so, err, sizeof err), 0, "%s", err);
  free(wbytes);

  /* the header compiles and carries the sizes */
  char *h = tu_read_file(hdr, NULL);
  cr_assert(h, "no header");
  cr_assert(strstr(h, "#define CGSO_DIM 4"));
  cr_assert(strstr(h, "#define CGSO_CONTEXT_DIM 2"));
  free(h);
  char cmd[1024], *out = NULL;
  snprintf(cmd, sizeof cmd, "printf '#include \"cgso.h\"\\nint main(void){return (int)cgso_dim();}\\n' | "
           "cc -x c -std=c99 -Wall -Werror -I%s -fsyntax-only -", tu_tmpdir());
  cr_assert_eq(tu_run(cmd, &out), 0, "%s", out);
  free(out);
  /* no temporaries left */
  snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", tu_tmpdir());
  tu_run(cmd, &out);
  cr_assert_eq(atoi(out), 0, "temporary files left: %s", out);
  free(out);

  void *lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  cr_assert(lib, "%s", dlerror());
  so_model *(*op)(const char *, char *, size_t) = (so_model * (*)(const char *, char *, size_t))dlsym(lib, "cgso_open");
  void (*cl)(so_model *) = (void (*)(so_model *))dlsym(lib, "cgso_close");
  int (*enc)(so_model *, size_t, const float *, const float *, float *, float *) =
      (int (*)(so_model *, size_t, const float *, const float *, float *, float *))dlsym(lib, "cgso_encode");
  size_t (*dim)(void) = (size_t(*)(void))dlsym(lib, "cgso_dim");
  size_t (*cdim)(void) = (size_t(*)(void))dlsym(lib, "cgso_context_dim");
  cr_assert(op && cl && enc && dim && cdim);
  cr_assert_null(dlsym(lib, "rt_model_open"), "runtime symbols are exported");
  cr_assert_eq(dim(), 4);
  cr_assert_eq(cdim(), 2);

  /* reference: the JIT through the runtime */
  cg_jit *j = cg_jit_new(t.p, 2, err, sizeof err);
  cr_assert(j, "%s", err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  rt_model *m = rt_model_open(d, ks, &w, 1, err, sizeof err);
  cr_assert(m, "%s", err);
  long n = 150;
  float *x = rand_rows(n * 4, 1), *c = rand_rows(n * 2, 1);
  float *z0 = malloc(sizeof(float) * (size_t)n * 4), *l0 = malloc(sizeof(float) * (size_t)n);
  float *z1 = malloc(sizeof(float) * (size_t)n * 4), *l1 = malloc(sizeof(float) * (size_t)n);
  cr_assert_eq(rt_model_encode(m, (size_t)n, x, c, (size_t)n, z0, l0), 0);
  for (int pass = 0; pass < 2; pass++) {  /* built-in weights, then the file */
    so_model *sm = op(pass ? wpath : NULL, err, sizeof err);
    cr_assert(sm, "%s", err);
    memset(z1, 0, sizeof(float) * (size_t)n * 4);
    memset(l1, 0, sizeof(float) * (size_t)n);
    cr_assert_eq(enc(sm, (size_t)n, x, c, z1, l1), 0);
    cr_assert(tu_max_rel_err(z1, z0, (size_t)n * 4) <= 1e-6);
    cr_assert(tu_max_rel_err(l1, l0, (size_t)n) <= 1e-6);
    cr_assert_eq(enc(sm, (size_t)n, x, c, z1, NULL), 0);   /* logdet may be NULL */
    cl(sm);
  }
  dlclose(lib);
  free(x); free(c); free(z0); free(l0); free(z1); free(l1);
  rt_model_close(m);
  cg_jit_free(j);
  rt_desc_free(d);
  free_prog(&t);
}

Test(codegen, shared_object_errors) {
  tprog t;
  make_prog(&t, "cgso2", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  char err[512] = "", so[256];
  snprintf(so, sizeof so, "%s/nodir/libx.so", tu_tmpdir());
  cr_assert_eq(cg_build_so(t.p, 2, NULL, 0, so, err, sizeof err), -1);
  cr_assert(err[0]);
  free_prog(&t);
}

/* ---- the gradient kernel: backward ops and sinks against ir_interp_grads ---- */

/* Size in floats of gradient slot k of train graph g (0 for I64 params). */
static long slot_size(const tprog *t, const ir_graph *g, int k) {
  int P = t->p->nparams;
  if (k < P) return t->p->params[k].dtype == IR_F32 ? param_size(&t->p->params[k]) : 0;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i]->prep == k - P) return (long)g->nodes[i]->rows * g->nodes[i]->n;
  cr_assert_fail("no node for prep slot %d", k - P);
  return 0;
}

/* Runs the gradient kernel over n rows in calls of `chunk` rows. */
static void run_train_kernel(const tprog *t, rt_kernel k, long n, long chunk, const float *in,
                             const float *ctx, float *out0, float *const *slots) {
  const ir_graph *g = t->p->train;
  int P = t->p->nparams, Q = g->nprep, tile = cg_tile(t->p);
  cr_assert(chunk >= 1 && chunk <= tile);
  const ir_node *i0 = find_input(g, 0), *i1 = find_input(g, 1);
  long w0 = i0 ? i0->n : 0, w1 = i1 ? i1->n : 0, o0 = g->outs[0]->n;
  float **q = t->train_prep ? NULL : eval_prep(t, g);
  void **args = calloc((size_t)(5 + 2 * (P + Q)), sizeof *args);
  size_t sbytes = ((size_t)tile * (size_t)g->scratch * sizeof(float) + 63) / 64 * 64 + 64;
  float *scratch = aligned_alloc(64, sbytes);
  for (size_t i = 0; i < sbytes / sizeof(float); i++) scratch[i] = NAN;
  for (int i = 0; i < P; i++) args[4 + i] = t->params[i];
  for (int i = 0; i < Q; i++) args[4 + P + i] = q ? q[i] : (void *)t->train_prep[i];
  args[4 + P + Q] = scratch;
  for (int i = 0; i < P + Q; i++) args[5 + P + Q + i] = slots[i];
  for (long r = 0; r < n; r += chunk) {
    long rows = n - r < chunk ? n - r : chunk;
    args[0] = (void *)(in + r * w0);
    args[1] = ctx ? (void *)(ctx + r * w1) : NULL;
    args[2] = out0 + r * o0;
    args[3] = NULL;
    k((void *const *)args, rows);
  }
  free(scratch);
  free(args);
  if (q) free_prep(q, Q);
}

/*
** Compiles t (with a train graph) at opt and runs its gradient kernel on
** random rows (scale s) in chunks of 1, 7 and a tile, every gradient slot
** pre-filled with non-zero values; out[0] and every slot are compared with
** ir_interp_grads (tol relative, at least 1 in the denominator). The first
** row holds extremes (+-30, ...) for the derivatives' stable forms; a slot
** sums terms up to 30 times the others in float, so its tolerance is 30 tol.
*/
static void check_train_jit(const tprog *t, cg_jit *j, int opt, double s, double tol,
                            const char *what);
static int g_extremes = 1;
static int g_big;   /* also +-200, -100, +-1e5 (for derivatives that stay finite) */
static void check_train(const tprog *t, int opt, double s, double tol, const char *what) {
  char err[512];
  cg_jit *j = cg_jit_new(t->p, opt, err, sizeof err);
  cr_assert(j, "%s: %s", what, err);
  check_train_jit(t, j, opt, s, tol, what);
  cg_jit_free(j);
}

static void check_train_jit(const tprog *t, cg_jit *j, int opt, double s, double tol,
                            const char *what) {
  char err[512];
  rt_kernel k = cg_jit_train(j);
  cr_assert(k, "%s: no gradient kernel", what);
  const ir_graph *g = t->p->train;
  int S = t->p->nparams + g->nprep;
  const ir_node *i0 = find_input(g, 0), *i1 = find_input(g, 1);
  long w0 = i0 ? i0->n : 0, w1 = i1 ? i1->n : 0, o0 = g->outs[0]->n;
  int tile = cg_tile(t->p);
  long n = 2L * tile + 5;
  float *in = rand_rows(n * w0, s), *ctx = w1 ? rand_rows(n * w1, s) : NULL;
  int extremes = g_extremes && n * w0 > 8;
  if (extremes) { in[0] = 30; in[1] = -30; in[2] = 0; in[3] = 1e-4f; in[4] = -1e-4f; in[5] = 8; in[6] = -9; }
  if (extremes && g_big && n * w0 > 12) { in[7] = -200; in[8] = 200; in[9] = -100; in[10] = -1e5f; in[11] = 1e5f; }
  double *ind = calloc((size_t)(n * w0 + 1), sizeof *ind), *cd = calloc((size_t)(n * w1 + 1), sizeof *cd);
  for (long i = 0; i < n * w0; i++) ind[i] = in[i];
  for (long i = 0; i < n * w1; i++) cd[i] = ctx[i];
  long *sz = calloc((size_t)S + 1, sizeof *sz);
  float **init = calloc((size_t)S + 1, sizeof *init), **got = calloc((size_t)S + 1, sizeof *got);
  double **want = calloc((size_t)S + 1, sizeof *want);
  for (int q = 0; q < S; q++) {
    sz[q] = slot_size(t, g, q);
    if (!sz[q] && q < t->p->nparams) continue;
    init[q] = malloc(sizeof(float) * (size_t)(sz[q] + 1));
    got[q] = malloc(sizeof(float) * (size_t)(sz[q] + 1));
    want[q] = malloc(sizeof(double) * (size_t)(sz[q] + 1));
    for (long i = 0; i < sz[q]; i++) want[q][i] = init[q][i] = (float)(0.5 * rnorm());
  }
  double *want0 = calloc((size_t)(n * o0 + 1), sizeof *want0);
  int rc = ir_interp_grads(t->p, g, (const void *const *)t->params, n, ind, cd, want0,
                           (double *const *)want, err, sizeof err);
  cr_assert_eq(rc, 0, "%s", err);
  long chunks[3] = {1, 7, tile};
  for (int c = 0; c < 3; c++) {
    long chunk = chunks[c] < tile ? chunks[c] : tile;
    float *out0 = malloc(sizeof(float) * (size_t)(n * o0 + 1));
    for (long i = 0; i < n * o0; i++) out0[i] = NAN;
    for (int q = 0; q < S; q++)
      if (got[q]) memcpy(got[q], init[q], sizeof(float) * (size_t)sz[q]);
    run_train_kernel(t, k, n, chunk, in, ctx, out0, got);
    char label[160];
    snprintf(label, sizeof label, "%s O%d chunk %ld out0", what, opt, chunk);
    assert_close(out0, want0, n * o0, tol, label);
    for (int q = 0; q < S; q++) {
      if (!got[q]) continue;
      snprintf(label, sizeof label, "%s O%d chunk %ld slot %d", what, opt, chunk, q);
      assert_close(got[q], want[q], sz[q], extremes ? 30 * tol : tol, label);
    }
    free(out0);
  }
  for (int q = 0; q < S; q++) {
    free(init[q]);
    free(got[q]);
    free(want[q]);
  }
  free(sz); free(init); free(got); free(want);
  free(in); free(ctx); free(ind); free(cd); free(want0);
}

/* entries of the train tests: anything small */
static void build_neg(ir_graph *g, ir_program *p, int e) {
  (void)p;
  (void)e;
  ir_output(g, ir_unary(g, IR_NEG, ir_input(g, 0, g_D)));
}

static const pspec dact_params[] = {
  {"t.col", IR_F32, 1, 5, 0, INIT_ZERO},      /* [1,5] */
  {"t.one", IR_F32, 1, 1, 0, INIT_ZERO},      /* [1,1] */
  {"t.outer", IR_F32, 2, 5, 5, INIT_ZERO},    /* [5,5] */
  {"t.perm", IR_I64, 1, 5, 0, INIT_PERM_RANDOM}, /* an I64 param: NULL slot */
};

static void train_dact(ir_graph *g, ir_program *p) {
  ir_node *x = ir_input(g, 0, 5);
  ir_node *y = ir_dact(g, g_op, x);
  ir_output(g, y);
  ir_acc_sum(g, y, NULL, ir_param_node(g, p, 0));
  ir_acc_sum(g, y, x, ir_param_node(g, p, 1));
  ir_acc_outer(g, y, x, ir_param_node(g, p, 2));
}

Test(codegen, train_dact) {
  static const ir_op ops[] = {IR_RELU, IR_GELU, IR_GELU_TANH, IR_SILU, IR_TANH, IR_ELU,
                              IR_SOFTPLUS, IR_LIPSWISH, IR_EXP, IR_NEG, IR_LOGSIGMOID,
                              IR_SQUARE};
  g_build_train = train_dact;
  g_D = 5;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
    g_op = ops[i];
    tprog t;
    make_prog(&t, "dact", 5, 0, 4, dact_params, build_neg, 2, 1);
    char what[64];
    snprintf(what, sizeof what, "d %s", ir_op_name(g_op));
    g_big = g_op != IR_EXP;
    check_train(&t, 2, 2.0, 1e-5, what);
    g_big = 0;
    free_prog(&t);
  }
  g_build_train = NULL;
}

/* dy W with W a parameter or a prep node; the sinks target both kinds */
static void train_linear_t(ir_graph *g, ir_program *p) {
  ir_node *dy = ir_input(g, 0, g_out), *c = ir_input(g, 1, g_in);
  ir_node *W = ir_param_node(g, p, 0), *b = ir_param_node(g, p, 1);
  if (g_variant) W = ir_unary(g, IR_NEG, W);
  ir_node *y = ir_linear_t(g, dy, W);
  ir_output(g, y);
  ir_acc_outer(g, dy, c, W);
  ir_acc_sum(g, y, c, ir_unary(g, IR_EXP, b));
  ir_acc_sum(g, dy, NULL, ir_param_node(g, p, 2));
}

static void linear_t_case_opt(int in, int out, int variant, int opt) {
  g_in = in;
  g_out = out;
  g_variant = variant;
  g_D = out;
  lin_params[0] = (pspec){"w", IR_F32, 2, out, in, INIT_LINEAR_WEIGHT};
  lin_params[1] = (pspec){"b", IR_F32, 1, in, 0, INIT_LINEAR_BIAS};
  lin_params[2] = (pspec){"o", IR_F32, 1, 1, 0, INIT_ZERO};
  g_build_train = train_linear_t;
  tprog t;
  make_prog(&t, "lint", out, in, 3, lin_params, build_neg, opt, 1.0 / sqrt(out));
  char what[64];
  snprintf(what, sizeof what, "linear_t %d -> %d variant %d", out, in, variant);
  check_train(&t, opt, 1, 2e-5, what);
  free_prog(&t);
  g_build_train = NULL;
  g_D = 5;
}

static void linear_t_case(int in, int out, int variant) { linear_t_case_opt(in, out, variant, 2); }

Test(codegen, train_linear_t) {
  for (int v = 0; v < 2; v++) {
    linear_t_case(7, 5, v);
    linear_t_case(3, 1, v);
    linear_t_case(2, 33, v);
    linear_t_case(80, 96, v);
  }
  for (int opt = 0; opt <= 3; opt++) linear_t_case_opt(7, 5, 1, opt); /* every level */
}

/* The gradient products of wide layers: dy W (rt_k_gemm_nn) and the
** weight gradient dy^T x (rt_k_gemm_tn_acc) call BLAS for calls of
** CG_GEMM_MIN_ROWS rows or more when out * in >= CG_GEMM_MIN_SIZE and the
** operands are contiguous; short calls, narrow layers and strided operands
** are inline loops. check_train's chunks of 1, 7 and a tile take both paths.
** Variant 1 reads x as a strided view (columns [2, 2 + in) of the context). */
static void train_wide(ir_graph *g, ir_program *p) {
  ir_node *dy = ir_input(g, 0, g_out), *c = ir_input(g, 1, g_variant ? g_in + 5 : g_in);
  ir_node *W = ir_param_node(g, p, 0);
  ir_output(g, ir_linear_t(g, dy, W));
  ir_acc_outer(g, dy, g_variant ? ir_slice(g, c, 2, g_in) : c, W);
}

static void wide_case(int in, int out, int variant) {
  g_in = in;
  g_out = out;
  g_variant = variant;
  g_D = out;
  lin_params[0] = (pspec){"w", IR_F32, 2, out, in, INIT_LINEAR_WEIGHT};
  g_build_train = train_wide;
  tprog t;
  make_prog(&t, "wide", out, variant ? in + 5 : in, 1, lin_params, build_neg, 2, 1.0 / sqrt(out));
  g_build_train = NULL;
  char what[64];
  snprintf(what, sizeof what, "wide %d -> %d variant %d", out, in, variant);
  cr_assert_geq(cg_tile(t.p), CG_GEMM_MIN_ROWS, "%s: the tile never reaches BLAS", what);
  check_train(&t, 2, 1, 2e-5, what);
  /* which path the kernel has */
  char *ll = llvm_text(&t, "wide");
  int wide = (long)in * out >= CG_GEMM_MIN_SIZE;
  cr_assert_eq(strstr(ll, "@rt_k_gemm_nn(") != NULL, wide, "%s: rt_k_gemm_nn", what);
  cr_assert_eq(strstr(ll, "@rt_k_gemm_tn_acc(") != NULL, wide && !variant, "%s: rt_k_gemm_tn_acc",
               what);
  free(ll);
  free_prog(&t);
  g_D = 5;
}

Test(codegen, train_wide_gemm) {
  for (int v = 0; v < 2; v++) {
    wide_case(128, 128, v);  /* glow's hidden layers */
    wide_case(64, 64, v);    /* the threshold */
    wide_case(63, 65, v);    /* just below it: loops only */
    wide_case(300, 16, v);   /* wide and short */
    wide_case(17, 257, v);
  }
}

/* pad, broadcast, batch [B,1] operands of binary ops, views of them */
static const pspec shape_params[] = {
  {"t.1", IR_F32, 1, 1, 0, INIT_ZERO}, {"t.5", IR_F32, 1, 5, 0, INIT_ZERO},
  {"t.6", IR_F32, 1, 6, 0, INIT_ZERO}, {"t.7", IR_F32, 1, 7, 0, INIT_ZERO},
  {"t.9", IR_F32, 1, 9, 0, INIT_ZERO},
};

static void train_shape(ir_graph *g, ir_program *p) {
  ir_node *x = ir_input(g, 0, 5), *y = NULL;
  ir_node *rs = ir_rowsum(g, x);
  switch (g_variant) {
  case 0: y = ir_pad(g, x, 2, 9); break;
  case 1: y = ir_pad(g, x, 0, 7); break;
  case 2: y = ir_pad(g, x, 4, 9); break;
  case 3: y = ir_bcast(g, rs, 6); break;
  case 4: y = ir_binary(g, IR_SUB, rs, x); break;
  case 5: y = ir_binary(g, IR_MUL, x, ir_rowsum(g, ir_unary(g, IR_SQUARE, x))); break;
  case 6: y = ir_binary(g, IR_ADD, ir_bcast(g, rs, 5), ir_slice(g, ir_pad(g, x, 1, 7), 1, 5)); break;
  case 7: y = ir_binary(g, IR_MUL, ir_slice(g, ir_pad(g, x, 3, 9), 2, 5), rs); break;
  case 8: y = ir_binary(g, IR_ADD, rs, ir_unary(g, IR_TANH, rs)); break; /* [B,1] both */
  }
  ir_output(g, y);
  int widths[5] = {1, 5, 6, 7, 9};
  for (int k = 0; k < 5; k++)
    if (widths[k] == y->n) ir_acc_sum(g, y, NULL, ir_param_node(g, p, k));
  ir_acc_sum(g, y, y, ir_param_node(g, p, 0));                    /* sum over columns too */
  ir_acc_sum(g, ir_slice(g, y, 0, 1), NULL, ir_param_node(g, p, 0)); /* a [B,1] view */
}

Test(codegen, train_pad_bcast) {
  g_build_train = train_shape;
  g_D = 5;
  for (int v = 0; v <= 8; v++) {
    g_variant = v;
    tprog t;
    make_prog(&t, "shp", 5, 0, 5, shape_params, build_neg, 2, 1);
    char what[64];
    snprintf(what, sizeof what, "shape variant %d", v);
    check_train(&t, 2, 1, 1e-5, what);
    free_prog(&t);
  }
  g_build_train = NULL;
}

/* back through a spline: h from a linear layer of the context, the
** gradients gy, gl of the loss from the context too */
static void train_rqs(ir_graph *g, ir_program *p) {
  ir_node *x = ir_input(g, 0, 3), *c = ir_input(g, 1, 4);
  ir_node *W = ir_param_node(g, p, 0), *b = ir_param_node(g, p, 1);
  ir_node *h = ir_linear(g, c, W, b);
  ir_node *r = ir_rqs(g, x, h, 4, 2.5, g_variant);
  ir_node *gr = ir_rqs_grad(g, r, ir_slice(g, c, 0, 3), ir_unary(g, IR_TANH, ir_slice(g, c, 1, 3)));
  ir_output(g, gr);
  ir_node *gh = ir_slice(g, gr, 3, 33);
  ir_acc_outer(g, gh, c, W);
  ir_acc_sum(g, gh, NULL, b);
}

Test(codegen, train_rqs_grad) {
  g_build_train = train_rqs;
  g_D = 3;
  for (int inv = 0; inv < 2; inv++) {
    g_variant = inv;
    tprog t;
    make_prog(&t, "rqsg", 3, 4, 2, rqs_params, build_neg, 2, 1.0);
    /* the interpreter differentiates by central differences in double; the
       kernel's h comes from a float linear layer, and where the inverse is
       steep (gradients ~100) that alone moves the result by ~1e-4 */
    check_train(&t, 2, 1.5, 2e-4, inv ? "rqs_grad inverse" : "rqs_grad forward");
    free_prog(&t);
  }
  g_build_train = NULL;
  g_D = 5;
}

/* the descriptor of a program with a train graph; the shared object ignores it */
Test(codegen, train_descriptor_and_so) {
  g_build_train = train_dact;
  g_op = IR_TANH;
  g_D = 5;
  tprog t;
  make_prog(&t, "dtrain", 5, 0, 4, dact_params, build_neg, 2, 1);
  g_build_train = NULL;
  char err[512];
  rt_desc *d = cg_desc_err(t.p, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_eq(d->has_train, 1);
  cr_assert_eq(d->train.scratch, t.p->train->scratch);
  cr_assert_eq(d->train.nprep, t.p->train->nprep);
  cr_assert_eq(d->train.has_ld, 0);
  cr_assert(d->tile * t.p->train->scratch * (long)sizeof(float) <= 512L * 1024 || d->tile == 1);
  rt_desc_free(d);
  /* no train graph: no gradient kernel */
  tprog t2;
  make_prog(&t2, "mlp", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  cg_jit *j = cg_jit_new(t2.p, 2, err, sizeof err);
  cr_assert(j, "%s", err);
  cr_assert_null(cg_jit_train(j));
  cg_jit_free(j);
  d = cg_desc_err(t2.p, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_eq(d->has_train, 0);
  rt_desc_free(d);
  free_prog(&t2);
  /* the shared object has no train kernel and its descriptor no train line */
  char so[256];
  snprintf(so, sizeof so, "%s/libdtrain.so", tu_tmpdir());
  cr_assert_eq(cg_build_so(t.p, 2, NULL, 0, so, err, sizeof err), 0, "%s", err);
  void *lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  cr_assert(lib, "%s", dlerror());
  cr_assert_null(dlsym(lib, "flowc_dtrain_train"));
  dlclose(lib);
  /* the LLVM text has it */
  char *s = llvm_text(&t, "dtrain");
  cr_assert(strstr(s, "i32 @flowc_dtrain_train(ptr"));
  free(s);
  free_prog(&t);
}

/* the gradient kernels of lowered random models (pass_autodiff), every layer
** kind, with the runtime's prep results (LU products included) */
Test(codegen, train_lowered_models) {
  for (uint64_t seed = 0; seed < 8; seed++) {
    mg_rng r = {seed + 100};
    int D = 2 + (int)(seed % 4), C = seed % 3 == 0 ? 3 : 0;
    tprog t = {0};
    t.A = ir_arena_new();
    ir_model *m = mg_model(t.A, &r, D, C, 4, NULL);
    char err[512];
    t.p = ir_lower(t.A, m, err, sizeof err);
    cr_assert(t.p, "%s", err);
    t.params = mg_params(t.A, &r, t.p, 0.8);
    cr_assert_eq(pass_autodiff(t.p), 0);
    cr_assert_eq(pass_pipeline(t.p, 2, NULL, NULL), 0);
    rt_desc *d = cg_desc_err(t.p, err, sizeof err);
    cr_assert(d, "%s", err);
    cg_jit *j = cg_jit_new(t.p, 2, err, sizeof err);
    cr_assert(j, "%s", err);
    rt_kernel ks[RT_NENTRY];
    cg_jit_kernels(j, ks);
    rt_weights w = {t.p->nparams, t.params, 0};
    rt_model *rm = rt_model_open(d, ks, &w, 1, err, sizeof err);
    cr_assert(rm, "%s", err);
    t.train_prep = rt_model_prep(rm, RT_NENTRY);
    cr_assert(t.train_prep || t.p->train->nprep == 0);
    char what[64];
    snprintf(what, sizeof what, "model seed %llu", (unsigned long long)seed);
    /* iaf's density is sequential: float rounding compounds over the dims */
    double tol = 1e-4;
    for (int k = 0; k < m->nlayers; k++) if (m->layers[k].kind == LAYER_IAF) tol = 1e-3;
    check_train_jit(&t, j, 2, 1, tol, what);
    rt_model_close(rm);
    cg_jit_free(j);
    rt_desc_free(d);
    free_prog(&t);
  }
}

/* cg_jit_new_entries compiles the kernels of its mask only; they compute
** what the full set does */
Test(codegen, jit_entry_mask) {
  tprog t;
  make_prog(&t, "mlp", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  for (int e = 0; e < RT_NENTRY; e++) {
    if (!t.p->entry[e]) continue;
    g_mask = CG_ENTRY(e);
    check_prog(&t, 2, e, 1.0, 1e-5, "masked");
  }
  g_mask = CG_ENTRY(RT_ENCODE) | CG_ENTRY(RT_LOGPROB) | CG_TRAIN_MASK; /* no train graph here */
  check_prog(&t, 2, RT_LOGPROB, 1.0, 1e-5, "masked pair");
  g_mask = CG_ALL_KERNELS;
  char err[512];
  cg_jit *j = cg_jit_new_entries(t.p, 2, 0, err, sizeof err);   /* nothing: still a handle */
  cr_assert(j, "%s", err);
  rt_kernel ks[RT_NENTRY];
  cg_jit_kernels(j, ks);
  for (int e = 0; e < RT_NENTRY; e++) cr_assert_null(ks[e]);
  cr_assert_null(cg_jit_train(j));
  cg_jit_free(j);
  free_prog(&t);
  /* the gradient kernel alone */
  g_build_train = train_dact;
  g_op = IR_TANH;
  make_prog(&t, "dmask", 5, 0, 4, dact_params, build_neg, 2, 1);
  g_build_train = NULL;
  j = cg_jit_new_entries(t.p, 2, CG_TRAIN_MASK, err, sizeof err);
  cr_assert(j, "%s", err);
  cg_jit_kernels(j, ks);
  for (int e = 0; e < RT_NENTRY; e++) cr_assert_null(ks[e]);
  check_train_jit(&t, j, 2, 2.0, 1e-5, "train only");
  cg_jit_free(j);
  free_prog(&t);
}

/* FLOWC_SEG_NODES=2: kernels cut into units (internal functions, called
** in order) every two nodes compute what the one-function kernels do: the
** pointers of live values, views, inputs and parameters come to each unit
** in its table */
Test(codegen, segments) {
  setenv("FLOWC_SEG_NODES", "2", 1);
  tprog t;
  make_prog(&t, "mlp", 4, 2, 6, mlp_params, build_mlp, 2, 0.7);
  for (int opt = 0; opt <= 2; opt += 2)
    for (int e = 0; e < RT_NENTRY; e++)
      if (t.p->entry[e]) check_prog(&t, opt, e, 1.0, 1e-5, "segments");
  char err[512];
  char *s = llvm_text(&t, "seg");
  cr_assert(strstr(s, ".seg1("), "no unit functions");
  free(s);
  free_prog(&t);
  for (uint64_t seed = 0; seed < 4; seed++) {
    mg_rng r = {seed + 300};
    tprog m = {0};
    m.A = ir_arena_new();
    ir_model *mo = mg_model(m.A, &r, 3 + (int)(seed % 3), seed % 2 ? 2 : 0, 4, NULL);
    m.p = ir_lower(m.A, mo, err, sizeof err);
    cr_assert(m.p, "%s", err);
    m.params = mg_params(m.A, &r, m.p, 0.8);
    cr_assert_eq(pass_autodiff(m.p), 0);
    cr_assert_eq(pass_pipeline(m.p, 2, NULL, NULL), 0);
    rt_desc *d = cg_desc_err(m.p, err, sizeof err);
    cr_assert(d, "%s", err);
    cg_jit *j = cg_jit_new(m.p, 2, err, sizeof err);
    cr_assert(j, "%s", err);
    rt_kernel ks[RT_NENTRY];
    cg_jit_kernels(j, ks);
    rt_weights w = {m.p->nparams, m.params, 0};
    rt_model *rm = rt_model_open(d, ks, &w, 1, err, sizeof err);
    cr_assert(rm, "%s", err);
    m.train_prep = rt_model_prep(rm, RT_NENTRY);
    double tol = 1e-4;
    for (int k = 0; k < mo->nlayers; k++) if (mo->layers[k].kind == LAYER_IAF) tol = 1e-3;
    check_train_jit(&m, j, 2, 1, tol, "segmented train kernel");
    rt_model_close(rm);
    cg_jit_free(j);
    rt_desc_free(d);
    free_prog(&m);
  }
  unsetenv("FLOWC_SEG_NODES");
}
