/*
** passes/pass_fold.c: constant folding. Arithmetic on constants becomes a
** constant; x + 0, x - 0, x * 1 and the row sum of one column become x. Parameter-only arithmetic is not
** folded here: it is the prep program, evaluated once at load time.
*/
#include "passes.h"

#include <math.h>
#include <stdlib.h>

static int fold_unary(ir_op op, double x, double *v) {
  switch (op) {
  case IR_EXP: *v = exp(x); return 1;
  case IR_NEG: *v = -x; return 1;
  case IR_SQUARE: *v = x * x; return 1;
  case IR_TANH: *v = tanh(x); return 1;
  default: return 0;
  }
}

static int is_const(const ir_node *x, double v) { return x->op == IR_CONST && x->f0 == v; }

static void make_const(ir_node *x, double v) {
  x->op = IR_CONST;
  x->nargs = 0;
  x->f0 = v;
}

/* The node that replaces x (x itself, changed in place or not). */
static ir_node *fold(ir_node *x) {
  ir_node *a = x->nargs > 0 ? x->args[0] : NULL, *b = x->nargs > 1 ? x->args[1] : NULL;
  double v;
  if (ir_is_unary(x->op) && a->op == IR_CONST && fold_unary(x->op, a->f0, &v)) {
    make_const(x, v);
  } else if (ir_is_binary(x->op) && a->op == IR_CONST && b->op == IR_CONST) {
    make_const(x, x->op == IR_ADD ? a->f0 + b->f0 : x->op == IR_SUB ? a->f0 - b->f0 : a->f0 * b->f0);
  } else if (ir_is_binary(x->op) && a->batch == x->batch && a->rows == x->rows && a->n == x->n &&
             (x->op == IR_MUL ? is_const(b, 1) : is_const(b, 0))) {
    return a;
  } else if (x->op == IR_ROWSUM && a->n == 1 && (a->batch || a->rows == 1)) {
    return a;   /* the sum of one column */
  }
  return x;
}

void pass_fold(ir_graph *g) {
  ir_renumber(g);
  ir_node **repl = calloc((size_t)g->nnodes + 1, sizeof *repl);
  for (int i = 0; i < g->nnodes; i++) {
    ir_node *x = g->nodes[i];
    for (int k = 0; k < x->nargs; k++) x->args[k] = repl[x->args[k]->id];
    repl[i] = fold(x);
  }
  for (int k = 0; k < g->nouts; k++) g->outs[k] = repl[g->outs[k]->id];
  free(repl);
  pass_dce(g);
}
