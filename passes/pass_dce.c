/*
** passes/pass_dce.c: dead-code elimination. Keeps the nodes some output
** (or a gradient sink) depends on, in their order. This is what removes the log-det work from
** the entries that do not return it (encode, decode, sample).
*/
#include "passes.h"

#include <stdlib.h>

void pass_dce(ir_graph *g) {
  ir_renumber(g);
  char *live = calloc((size_t)g->nnodes + 1, 1);
  for (int k = 0; k < g->nouts; k++) live[g->outs[k]->id] = 1;
  for (int i = 0; i < g->nnodes; i++)   /* gradient sinks are outputs too */
    if (ir_is_sink(g->nodes[i]->op)) live[i] = 1;
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (live[i])
      for (int k = 0; k < g->nodes[i]->nargs; k++) live[g->nodes[i]->args[k]->id] = 1;
  int n = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (live[i] || g->nodes[i]->op == IR_INPUT) g->nodes[n++] = g->nodes[i];
  g->nnodes = n;
  free(live);
  ir_renumber(g);
}
