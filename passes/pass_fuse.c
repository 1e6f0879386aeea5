/*
** passes/pass_fuse.c: layer fusion. An elementwise op whose one user is
** elementwise is computed inside its user's loop instead of into a buffer
** of its own: chains such as exp(s) * x + t become one loop that reads x, s
** and t once and writes one result. A linear map whose one user is
** elementwise is its user's prologue: the dot product of each result
** element is taken in the user's loop (four at a time), so bias,
** activation and the coupling's epilogue cost no pass over memory (codegen
** still keeps the product's buffer for calls that BLAS takes whole). ir_op_kind decides:
** only elementwise users absorb, and only elementwise ops and linear maps
** are absorbed. Nothing fuses across a fixed-point loop's boundary (a
** value made outside the loop is not recomputed every run), between
** tensors of different widths (a broadcast would recompute per column), or
** past a node with a loop of its own: what the fused node reads would
** have to live until its user. So a log-det's terms are added as they are
** made (neg and add fused into each step), into one running sum, rather
** than all kept to the end.
*/
#include "passes.h"

#include <stdlib.h>

/* A linear map fuses when its dot products are long enough to hide the
** cost of computing its user four columns at a time, without the
** vectorised loop across columns an activation has on its own: RealNVP
** D=2's 1 -> 64 products fused cost 10-15% (batch 256: 180 -> 211 us);
** D=16's 256 -> 256 ones run as fast either way, in fewer loops. */
#define FUSE_LINEAR_MIN_IN 64

static int absorbable(const ir_node *x) {
  return x->batch && (ir_op_kind(x->op) == IR_KIND_ELEMWISE ||
                      (x->op == IR_LINEAR && x->args[0]->batch &&
                       x->args[0]->n >= FUSE_LINEAR_MIN_IN));
}

void pass_fuse(ir_graph *g) {
  ir_renumber(g);
  int N = g->nnodes;
  int *user = malloc(((size_t)N + 1) * sizeof *user);
  int *fixes = malloc(((size_t)N + 1) * sizeof *fixes);   /* loop boundaries up to i */
  if (!user || !fixes) {   /* fusion is optional: without memory, none */
    free(user);
    free(fixes);
    return;
  }
  for (int i = 0, nf = 0; i < N; i++) {
    ir_node *x = g->nodes[i];
    x->fused = 0;
    user[i] = -1;
    nf += x->op == IR_FIX_BEGIN || x->op == IR_FIX_END;
    fixes[i] = nf;
    for (int k = 0; k < x->nargs; k++) user[x->args[k]->id] = i;
  }
  /* backwards, so that what lies between a node and its user is decided */
  for (int i = N - 1; i >= 0; i--) {
    ir_node *x = g->nodes[i];
    int u = user[i];
    if (x->uses != 1 || u < 0 || !absorbable(x)) continue;   /* an output has uses > 1 */
    const ir_node *y = g->nodes[u];
    int sum = y->op == IR_ROWSUM && x->op != IR_LINEAR;   /* a row sum of an elementwise op */
    if (!y->batch || fixes[u] != fixes[i] ||
        !(sum || (ir_op_kind(y->op) == IR_KIND_ELEMWISE && y->n == x->n)))
      continue;
    int near = 1;
    for (int k = i + 1; k < u && near; k++)
      near = !g->nodes[k]->batch || g->nodes[k]->fused;
    x->fused = near;
  }
  free(user);
  free(fixes);
}
