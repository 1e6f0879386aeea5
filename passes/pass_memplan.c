/*
** passes/pass_memplan.c: scratch memory of a tile. Every batch node but
** the inputs and fused elementwise ones (pass_fuse) gets a buffer of n
** floats per row; a buffer is free again after
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

/* Frees node a's buffer once (freed[] remembers). */
static void release(plan *P, const ir_node *a, char *freed) {
  if (a->offset < 0 || freed[a->id]) return;
  freed[a->id] = 1;
  give(P, a->offset, rounded(a->n));
}

void pass_memplan(ir_graph *g) {
  ir_renumber(g);
  int N = g->nnodes;
  int *last = malloc(((size_t)N + 1) * sizeof *last);
  int *head = malloc(((size_t)N + 1) * sizeof *head), *next = malloc(((size_t)N + 1) * sizeof *next);
  char *freed = calloc((size_t)N + 1, 1);
  plan P = {malloc(((size_t)N + 1) * sizeof(span)), 0, 0};
  if (!last || !head || !next || !freed || !P.free) {
    g->scratch = -1;   /* codegen refuses a graph without a plan */
    goto done;
  }
  ir_last_uses(g, last);
  /* by last use: what a fused node reads is read where its user is */
  for (int i = 0; i <= N; i++) head[i] = -1;
  for (int j = N - 1; j >= 0; j--)
    if (last[j] > j && last[j] < N) {
      next[j] = head[last[j]];
      head[last[j]] = j;
    }
  long peak = 0;
  for (int i = 0; i < N; i++) {
    ir_node *x = g->nodes[i];
    /* a fused elementwise node is never stored; a fused linear map keeps
       its buffer for the calls that go to BLAS */
    int stored = x->batch && x->op != IR_INPUT && (!x->fused || x->op == IR_LINEAR);
    x->offset = stored ? take(&P, rounded(x->n)) : -1;
    if (P.top > peak) peak = P.top;
    for (int j = head[i]; j >= 0; j = next[j])   /* whatever is read for the last time here */
      release(&P, g->nodes[j], freed);
  }
  g->scratch = peak;
done:
  free(last);
  free(head);
  free(next);
  free(freed);
  free(P.free);
}
