/*
** passes/pass_perm.c: permutations folded into indexing and weights.
** After a permutation a coupling reads its halves through concat -> gather
** -> slice, and every column of such a chain is one column of some other
** node. A slice, concat or constant gather whose columns all come from one
** node L becomes L itself, a slice of L or one gather of L; the copies in
** between are then dead. A full permutation feeding a linear map is folded
** into the weight's columns (a load-time gather): the product reads the
** unpermuted tensor.
*/
#include "passes.h"

#include <stdlib.h>
#include <string.h>

/* Column c of x, followed back through slices, concats and constant
** gathers to a node that is none of these; *c becomes its column there. */
static ir_node *source(ir_node *x, int *c) {
  for (;;) {
    if (x->op == IR_SLICE) {
      *c += x->i0;
    } else if (x->op == IR_CONCAT) {
      if (*c >= x->args[0]->n) {
        *c -= x->args[0]->n;
        x = x->args[1];
        continue;
      }
    } else if (x->op == IR_GATHER && x->nargs == 1 && x->idx) {
      if (!x->i1) {
        *c = x->idx[*c];
      } else {   /* a scatter: y[idx[i]] = a[i] */
        int i = 0;
        while (i < x->n && x->idx[i] != *c) i++;
        if (i == x->n) return x;
        *c = i;
      }
    } else {
      return x;
    }
    x = x->args[0];
  }
}

static int injective(const ir_node *x) {
  return x->batch && x->n > 0 && (x->op == IR_SLICE || x->op == IR_CONCAT ||
                                  (x->op == IR_GATHER && x->nargs == 1 && x->idx));
}

/* x as a function of one node: L itself (returned), or x rewritten in
** place as a slice or gather of L (x returned); x unchanged if its
** columns come from several nodes. */
static ir_node *reroute(ir_graph *g, ir_node *x) {
  int *cols = ir_alloc(g->A, (size_t)x->n * sizeof *cols);
  ir_node *L = NULL;
  for (int c = 0; c < x->n; c++) {
    int k = c;
    ir_node *s = source(x, &k);
    if (L && s != L) return x;
    L = s;
    cols[c] = k;
  }
  int ident = L->n == x->n, run = 1;
  for (int c = 0; c < x->n; c++) {
    ident &= cols[c] == c;
    run &= cols[c] == cols[0] + c;
  }
  if (ident) return L;
  x->nargs = 1;
  x->args[0] = L;
  x->i1 = 0;
  if (run) {
    x->op = IR_SLICE;
    x->i0 = cols[0];
    x->idx = NULL;
  } else {
    x->op = IR_GATHER;
    x->idx = cols;
  }
  return x;
}

/* Is the constant gather x a full permutation of its argument? */
static int full_perm(const ir_node *x, int *inv) {
  const ir_node *a = x->args[0];
  if (x->op != IR_GATHER || x->nargs != 1 || !x->idx || x->i1 || x->n != a->n) return 0;
  for (int i = 0; i < x->n; i++) inv[i] = -1;
  for (int i = 0; i < x->n; i++) {
    int k = x->idx[i];
    if (k < 0 || k >= x->n || inv[k] >= 0) return 0;
    inv[k] = i;
  }
  return 1;
}

/* y = gather(L) W^T + b = L W'^T + b with W'[o][j] = W[o][inv[j]]: the new
** weight node goes into g just before the linear map (at *extra). */
static void fold_into_weight(ir_graph *g, ir_node *lin, ir_node **extra) {
  ir_node *x = lin->args[0], *W = lin->args[1];
  int *inv = ir_alloc(g->A, (size_t)x->n * sizeof *inv + 1);
  if (!full_perm(x, inv)) return;
  int *rows = ir_alloc(g->A, (size_t)W->rows * sizeof *rows + 1);
  for (int o = 0; o < W->rows; o++) rows[o] = o;
  int before = g->nnodes;
  ir_node *Wp = ir_pgather(g, W, W->rows, rows, x->n, inv);
  if (g->nnodes != before + 1) return;
  g->nnodes--;   /* placed by the caller */
  extra[lin->id] = Wp;
  lin->args[0] = x->args[0];
  lin->args[1] = Wp;
}

void pass_perm(ir_graph *g) {
  ir_renumber(g);
  int N = g->nnodes;
  ir_node **repl = calloc((size_t)N + 1, sizeof *repl), **extra = calloc((size_t)N + 1, sizeof *extra);
  if (!repl || !extra) {   /* an optional pass: without memory, nothing */
    free(repl);
    free(extra);
    return;
  }
  for (int i = 0; i < N; i++) {
    ir_node *x = g->nodes[i];
    for (int k = 0; k < x->nargs; k++) x->args[k] = repl[x->args[k]->id];
    repl[i] = injective(x) ? reroute(g, x) : x;
    if (x->op == IR_LINEAR && !x->idx && x->args[0]->batch && !x->args[1]->batch)
      fold_into_weight(g, x, extra);   /* not a staircase: its columns are ordered */
  }
  for (int k = 0; k < g->nouts; k++) g->outs[k] = repl[g->outs[k]->id];
  /* the weights' gathers go in just before their linear maps */
  int nx = 0;
  for (int i = 0; i < N; i++) nx += extra[i] != NULL;
  ir_node **nodes = nx ? ir_alloc(g->A, (size_t)(N + nx) * sizeof *nodes) : NULL;
  if (nodes) {
    int n = 0;
    for (int i = 0; i < N; i++) {
      if (extra[i]) nodes[n++] = extra[i];
      nodes[n++] = g->nodes[i];
    }
    g->nodes = nodes;
    g->nnodes = g->cap = n;
  }
  free(repl);
  free(extra);
  pass_dce(g);
}
