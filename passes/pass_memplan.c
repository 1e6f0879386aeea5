/*
** passes/pass_memplan.c: scratch memory of a tile. Every batch node but
** the inputs gets a buffer of n floats per row; a buffer is free again after
** the last node that reads it, and later nodes reuse it (first fit over the
** free list). Outputs stay live to the end; what a fixed-point loop's body
** reads from before the loop stays live to the loop's end (ir_last_uses).
** Sizes are rounded up to 16 floats so every buffer of a 16-row-aligned
** tile is 64-byte aligned.
*/
#include "passes.h"

#include <stdlib.h>

typedef struct span { long lo, hi; } span;   /* free [lo, hi) in floats/row */

typedef struct plan {
  span *free;
  int nfree;
  long top;
} plan;

static long take(plan *P, long size) {
  for (int i = 0; i < P->nfree; i++)
    if (P->free[i].hi - P->free[i].lo >= size) {
      long at = P->free[i].lo;
      P->free[i].lo += size;
      return at;
    }
  long at = P->top;
  P->top += size;
  return at;
}

/* Returns [lo, lo+size) and merges it with its neighbours. */
static void give(plan *P, long lo, long size) {
  long hi = lo + size;
  for (int i = 0; i < P->nfree; i++) {
    if (P->free[i].hi == lo) { lo = P->free[i].lo; P->free[i--] = P->free[--P->nfree]; }
    else if (P->free[i].lo == hi) { hi = P->free[i].hi; P->free[i--] = P->free[--P->nfree]; }
  }
  if (hi == P->top) P->top = lo;
  else P->free[P->nfree++] = (span){lo, hi};
}

static long rounded(long n) { return (n + 15) / 16 * 16; }

void pass_memplan(ir_graph *g) {
  ir_renumber(g);
  int N = g->nnodes;
  int *last = malloc(((size_t)N + 1) * sizeof *last);
  ir_last_uses(g, last);
  plan P = {malloc(((size_t)N + 1) * sizeof(span)), 0, 0};
  long peak = 0;
  for (int i = 0; i < N; i++) {
    ir_node *x = g->nodes[i];
    x->offset = x->batch && x->op != IR_INPUT ? take(&P, rounded(x->n)) : -1;
    if (P.top > peak) peak = P.top;
    for (int k = 0; k < x->nargs; k++) {   /* free arguments read for the last time */
      ir_node *a = x->args[k];
      int dup = 0;
      for (int j = 0; j < k; j++) dup |= x->args[j] == a;
      if (!dup && last[a->id] == i && a->offset >= 0) give(&P, a->offset, rounded(a->n));
    }
    if (x->op == IR_FIX_END)   /* what the loop body read from before the loop */
      for (int j = 0; j < x->args[0]->id; j++) {
        ir_node *a = g->nodes[j];
        if (last[j] == i && a->offset >= 0) give(&P, a->offset, rounded(a->n));
      }
  }
  g->scratch = peak;
  free(last);
  free(P.free);
}
