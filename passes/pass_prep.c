/*
** passes/pass_prep.c: numbers the parameter-only nodes other than the
** parameters themselves. They form the entry's prep program, which the
** runtime evaluates once when weights are loaded (exp of actnorm's
** log_scale, the LU product, the sum of log-det constants); the kernels
** read their results like parameters. An IR_LOOP_ROW is not one: it is
** a row of a prep table chosen by the loop's run, read in the kernel.
*/
#include "passes.h"

void pass_prep(ir_graph *g) {
  g->nprep = 0;
  for (int i = 0; i < g->nnodes; i++) {
    ir_node *x = g->nodes[i];
    x->prep = !x->batch && x->op != IR_PARAM && x->op != IR_LOOP_ROW && !ir_is_sink(x->op)
                  ? g->nprep++ : -1;
  }
}
