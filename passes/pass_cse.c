/*
** passes/pass_cse.c: common-subexpression elimination. Two nodes with the
** same op, arguments and attributes compute the same tensor; the later one
** is replaced by the earlier. Runs in one forward sweep, since arguments
** are merged before the nodes that use them are compared.
*/
#include "passes.h"

#include <stdlib.h>
#include <string.h>

static int same(const ir_node *a, const ir_node *b) {
  if (ir_is_sink(a->op)) return a == b;   /* each sink adds its own share */
  if (a->op != b->op || a->nargs != b->nargs || a->batch != b->batch || a->rows != b->rows ||
      a->n != b->n || a->i0 != b->i0 || a->i1 != b->i1 || a->i2 != b->i2 || a->f0 != b->f0 ||
      a->f1 != b->f1)
    return 0;
  if (a->op == IR_INPUT) return 1;
  for (int k = 0; k < a->nargs; k++)
    if (a->args[k] != b->args[k]) return 0;
  if ((a->idx == NULL) != (b->idx == NULL)) return 0;
  size_t len = (size_t)(a->op == IR_PGATHER ? a->rows + a->n : a->n);
  return !a->idx || memcmp(a->idx, b->idx, len * sizeof *a->idx) == 0;
}

static unsigned hash(const ir_node *x) {
  unsigned h = (unsigned)x->op * 2654435761u ^ (unsigned)x->n * 40503u ^ (unsigned)x->i0;
  for (int k = 0; k < x->nargs; k++) h = h * 31u + (unsigned)x->args[k]->id;
  return h;
}

void pass_cse(ir_graph *g) {
  ir_renumber(g);
  int cap = 1;
  while (cap < 2 * g->nnodes) cap *= 2;
  ir_node **tab = calloc((size_t)cap, sizeof *tab);
  ir_node **repl = calloc((size_t)g->nnodes + 1, sizeof *repl);
  for (int i = 0; i < g->nnodes; i++) {
    ir_node *x = g->nodes[i];
    for (int k = 0; k < x->nargs; k++) x->args[k] = repl[x->args[k]->id];
    unsigned h = hash(x) & (unsigned)(cap - 1);
    while (tab[h] && !same(tab[h], x)) h = (h + 1) & (unsigned)(cap - 1);
    if (!tab[h]) tab[h] = x;
    repl[i] = tab[h];
  }
  for (int k = 0; k < g->nouts; k++) g->outs[k] = repl[g->outs[k]->id];
  free(tab);
  free(repl);
  pass_dce(g);
}
