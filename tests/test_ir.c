/*
** tests/test_ir.c: lowering checked against mathematics, in the reference
** interpreter (double precision): inverses, log-dets against finite
** differences, log_prob against the change of variables, and every pass
** against -O0.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "modelgen.h"
#include "passes.h"
#include "testutil.h"

typedef struct fixture {
  ir_arena *A;
  ir_program *p;
  void **params;
} fixture;

static void make(fixture *f, mg_rng *r, int D, int C, int nl, const ir_layerkind *kinds) {
  f->A = ir_arena_new();
  ir_model *m = mg_model(f->A, r, D, C, nl, kinds);
  char err[256];
  f->p = ir_lower(f->A, m, err, sizeof err);
  cr_assert(f->p, "%s", err);
  f->params = mg_params(f->A, r, f->p, 1.0);
}

static void run(const fixture *f, ir_entry e, long n, const double *in, const double *ctx,
                double *o0, double *o1) {
  char err[256];
  int rc = ir_interp(f->p, f->p->entry[e], (const void *const *)f->params, n, in, ctx, o0, o1,
                     err, sizeof err);
  cr_assert_eq(rc, 0, "%s", err);
}

static double *randn(mg_rng *r, long n, double s) {
  double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
  for (long i = 0; i < n; i++) v[i] = s * mg_normal(r);
  return v;
}


/* Checks one random model at one random point. */
static void check_model(mg_rng *r, int D, int C, int nl, const ir_layerkind *kinds) {
  fixture f;
  make(&f, r, D, C, nl, kinds);
  double *x = randn(r, D, 1.5), *c = randn(r, C, 1.0);
  double z[64], xr[64], lde, ldd, lp, tol = 1e-8;
  for (int k = 0; k < nl; k++)   /* a fixed-point inverse stops at tol 1e-6, c <= 0.9 */
    if (f.p->model->layers[k].kind == LAYER_RESIDUAL) tol = 3e-5;
  run(&f, IR_ENTRY_ENCODE_LD, 1, x, c, z, &lde);
  run(&f, IR_ENTRY_DECODE_LD, 1, z, c, xr, &ldd);
  for (int i = 0; i < D; i++)
    cr_assert(fabs(xr[i] - x[i]) < tol * (1 + fabs(x[i])), "round trip dim %d: %.12g vs %.12g", i,
              xr[i], x[i]);
  cr_assert(fabs(lde + ldd) < tol * (1 + fabs(lde)), "encode ld %g, decode ld %g", lde, ldd);
  /* log-det against central differences of the encode map */
  double J[64 * 64], zp[64], zm[64], h = 1e-6;
  for (int j = 0; j < D; j++) {
    double xp[64], xm[64];
    memcpy(xp, x, (size_t)D * sizeof *x);
    memcpy(xm, x, (size_t)D * sizeof *x);
    xp[j] += h;
    xm[j] -= h;
    run(&f, IR_ENTRY_ENCODE, 1, xp, c, zp, NULL);
    run(&f, IR_ENTRY_ENCODE, 1, xm, c, zm, NULL);
    for (int i = 0; i < D; i++) J[i * D + j] = (zp[i] - zm[i]) / (2 * h);
  }
  double fd = tu_logabsdet(J, D);
  cr_assert(fabs(fd - lde) < 1e-4 * (1 + fabs(lde)), "log-det %g, finite differences %g", lde, fd);
  /* log p(x) = log N(z) + log|det dz/dx| */
  run(&f, IR_ENTRY_LOGPROB, 1, x, c, &lp, NULL);
  double base = -0.5 * D * log(2 * M_PI);
  for (int i = 0; i < D; i++) base -= 0.5 * z[i] * z[i];
  cr_assert(fabs(lp - (base + lde)) < 1e-9 * (1 + fabs(lp)), "log_prob %g vs %g", lp, base + lde);
  free(x);
  free(c);
  ir_arena_free(f.A);
}

Test(ir, each_layer_kind_alone) {
  mg_rng r = {1};
  for (int k = 0; k < LAYER_CNF; k++)   /* continuous layers: test_cnf.c */
    for (int D = 1; D <= 5; D++)
      for (int C = 0; C <= 3; C += 3) {
        ir_layerkind kinds[1] = {(ir_layerkind)k};
        check_model(&r, D, C, 1, kinds);
      }
}

Test(ir, random_stacks) {
  mg_rng r = {2};
  for (int t = 0; t < 200; t++)
    check_model(&r, 1 + (int)(mg_uniform(&r) * 7), mg_uniform(&r) < 0.5 ? 0 : 2,
                1 + (int)(mg_uniform(&r) * 6), NULL);
}

Test(ir, empty_flow_is_identity) {
  mg_rng r = {3};
  fixture f;
  make(&f, &r, 3, 0, 0, NULL);
  double x[3] = {0.5, -1, 2}, z[3], ld = 7;
  run(&f, IR_ENTRY_ENCODE_LD, 1, x, NULL, z, &ld);
  cr_assert(z[0] == 0.5 && z[1] == -1 && z[2] == 2 && ld == 0);
  ir_arena_free(f.A);
}

/* Every pass alone, and all together, against -O0, over a batch: the same
** numbers, up to the order of a sum (perm reorders a dot product's terms). */
static int same_num(double a, double b) { return fabs(a - b) <= 1e-13 * fmax(1.0, fabs(a)); }

Test(ir, passes_preserve_numbers) {
  int npass;
  const pass_info *t = pass_table(&npass);
  for (int seed = 0; seed < 40; seed++) {
    long n = 5;
    for (int cfg = -1; cfg <= npass; cfg++) {
      mg_rng r = {100 + (uint64_t)seed}, r0 = r;
      fixture f0, f;
      make(&f0, &r0, 1 + seed % 6, seed % 3 == 0 ? 2 : 0, 1 + seed % 5, NULL);
      make(&f, &r, 1 + seed % 6, seed % 3 == 0 ? 2 : 0, 1 + seed % 5, NULL);
      if (cfg == npass) pass_pipeline(f.p, 3, NULL, NULL);
      else if (cfg >= 0)
        for (int e = 0; e < IR_NENTRY; e++) t[cfg].run(f.p->entry[e]);
      int D = f.p->model->dim, C = f.p->model->context;
      mg_rng rx = {7};
      double *x = randn(&rx, n * D, 1.0), *c = randn(&rx, n * C, 1.0);
      for (int e = 0; e < IR_NENTRY; e++) {
        double a0[64], a1[8], b0[64], b1[8];
        run(&f0, (ir_entry)e, n, x, c, a0, a1);
        run(&f, (ir_entry)e, n, x, c, b0, b1);
        long w = e == IR_ENTRY_LOGPROB ? 1 : D;
        for (long i = 0; i < n * w; i++)
          cr_assert(same_num(a0[i], b0[i]), "entry %d cfg %d: %.17g vs %.17g", e, cfg, a0[i], b0[i]);
        if (f.p->entry[e]->nouts == 2)
          for (long i = 0; i < n; i++) cr_assert(same_num(a1[i], b1[i]), "ld entry %d cfg %d", e, cfg);
      }
      free(x);
      free(c);
      ir_arena_free(f0.A);
      ir_arena_free(f.A);
    }
  }
}

/* pass_affine: actnorm beside linear_lu becomes the linear map's weight
** and bias, rows scaled in the density direction (after the product),
** columns in the sampling direction (before it); numbers unchanged. */
Test(ir, affine_folds_actnorm) {
  ir_layerkind kinds[4] = {LAYER_ACTNORM, LAYER_LINEAR_LU, LAYER_AFFINE_COUPLING, LAYER_ACTNORM};
  mg_rng r = {11}, r0 = r;
  fixture f0, f;
  make(&f0, &r0, 4, 0, 4, kinds);
  make(&f, &r, 4, 0, 4, kinds);
  for (int e = 0; e < IR_NENTRY; e++) pass_affine(f.p->entry[e]);
  static const int axis[IR_NENTRY] = {0, 0, 1, 1, 0};   /* encode(_ld), decode(_ld), log_prob */
  for (int e = 0; e < IR_NENTRY; e++) {
    const ir_graph *g = f.p->entry[e];
    int scales = 0;
    for (int i = 0; i < g->nnodes; i++) {
      const ir_node *x = g->nodes[i];
      if (x->op == IR_PSCALE) scales += x->i0 == axis[e];
      for (int k = 0; k < x->nargs; k++)   /* arguments come first */
        cr_assert(x->args[k]->id < i, "entry %d node %d", e, i);
    }
    cr_assert_eq(scales, 1, "entry %d: %d folds", e, scales);
  }
  long n = 5;
  mg_rng rx = {3};
  double *x = randn(&rx, n * 4, 1.0), a0[32], a1[8], b0[32], b1[8];
  for (int e = 0; e < IR_NENTRY; e++) {
    run(&f0, (ir_entry)e, n, x, NULL, a0, a1);
    run(&f, (ir_entry)e, n, x, NULL, b0, b1);
    for (long i = 0; i < n * (e == IR_ENTRY_LOGPROB ? 1 : 4); i++)
      cr_assert(same_num(a0[i], b0[i]), "entry %d: %.17g vs %.17g", e, a0[i], b0[i]);
    if (f.p->entry[e]->nouts == 2)
      for (long i = 0; i < n; i++) cr_assert(same_num(a1[i], b1[i]), "ld entry %d", e);
  }
  free(x);
  ir_arena_free(f0.A);
  ir_arena_free(f.A);
}

/* DCE leaves no log-det work in the entries that do not return it. */
Test(ir, dce_drops_logdet) {
  mg_rng r = {5};
  fixture f;
  ir_layerkind kinds[3] = {LAYER_AFFINE_COUPLING, LAYER_ACTNORM, LAYER_SPLINE_COUPLING};
  make(&f, &r, 4, 0, 3, kinds);
  pass_pipeline(f.p, 2, NULL, NULL);
  const ir_graph *g = f.p->entry[IR_ENTRY_DECODE];
  for (int i = 0; i < g->nnodes; i++) cr_assert(g->nodes[i]->op != IR_ROWSUM, "rowsum left");
  ir_arena_free(f.A);
}

/* The memory plan never lets a node's buffer overlap a live one. */
Test(ir, memplan_no_overlap) {
  mg_rng r = {6};
  for (int t = 0; t < 50; t++) {
    fixture f;
    make(&f, &r, 2 + t % 5, t % 2 ? 3 : 0, 1 + t % 7, NULL);
    pass_pipeline(f.p, 2, NULL, NULL);
    for (int e = 0; e < IR_NENTRY; e++) {
      const ir_graph *g = f.p->entry[e];
      int N = g->nnodes;
      int *last = calloc((size_t)N, sizeof *last);
      for (int i = 0; i < N; i++) {
        last[i] = i;
        for (int k = 0; k < g->nodes[i]->nargs; k++) last[g->nodes[i]->args[k]->id] = i;
      }
      for (int k = 0; k < g->nouts; k++) last[g->outs[k]->id] = N;
      for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N && j <= last[i]; j++) {
          const ir_node *a = g->nodes[i], *b = g->nodes[j];
          if (a->offset < 0 || b->offset < 0 || !a->n || !b->n) continue;
          int overlap = a->offset < b->offset + b->n && b->offset < a->offset + a->n;
          cr_assert(!overlap, "entry %d: %%%d and %%%d are live together and overlap", e, i, j);
        }
      for (int i = 0; i < N; i++)
        if (g->nodes[i]->offset >= 0) cr_assert(g->nodes[i]->offset + g->nodes[i]->n <= g->scratch);
      free(last);
    }
    ir_arena_free(f.A);
  }
}

/* pass_perm on a coupling's pattern: concat -> reverse -> the two halves
** become reads of the concat's parts (the copies die), and a permutation
** feeding a linear map becomes a gather of its weight's columns. */
Test(ir, perm_folds_chains_and_weights) {
  ir_arena *A = ir_arena_new();
  ir_graph *g = ir_graph_new(A);
  ir_program p = {0};
  ir_param pa = {.name = "w", .dtype = IR_F32, .ndim = 2, .shape = {3, 4}};
  p.A = A;
  p.nparams = 1;
  p.params = &pa;
  ir_node *x = ir_input(g, 0, 4);
  ir_node *h = ir_unary(g, IR_TANH, ir_slice(g, x, 2, 2));
  ir_node *c = ir_concat(g, ir_slice(g, x, 0, 2), h);
  static const int rev[4] = {3, 2, 1, 0}, rot[4] = {1, 2, 3, 0};
  ir_node *r = ir_gather(g, c, NULL, rev, 0);
  ir_node *lo = ir_slice(g, r, 0, 2), *hi = ir_slice(g, r, 2, 2);
  ir_node *y = ir_binary(g, IR_MUL, lo, hi);
  ir_node *l = ir_linear(g, ir_gather(g, x, NULL, rot, 0), ir_param_node(g, &p, 0), NULL);
  ir_output(g, ir_concat(g, y, l));
  pass_perm(g);
  cr_assert(lo->op == IR_GATHER && lo->args[0] == h && lo->idx[0] == 1 && lo->idx[1] == 0);
  cr_assert(hi->op == IR_GATHER && hi->args[0] == x && hi->idx[0] == 1 && hi->idx[1] == 0);
  cr_assert(l->args[0] == x && l->args[1]->op == IR_PGATHER);
  const int *ci = l->args[1]->idx + 3;   /* W'[o][j] = W[o][rot^-1[j]] */
  cr_assert(ci[0] == 3 && ci[1] == 0 && ci[2] == 1 && ci[3] == 2);
  for (int i = 0; i < g->nnodes; i++) {
    cr_assert(g->nodes[i] != c && g->nodes[i] != r, "the copies are dead");
    for (int k = 0; k < g->nodes[i]->nargs; k++)   /* arguments come first */
      cr_assert(g->nodes[i]->args[k]->id < i);
  }
  ir_arena_free(A);
}
