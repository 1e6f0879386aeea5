/*
** passes/pass_affine.c: per-column affine maps folded into the linear maps
** beside them (actnorm next to linear_lu, or next to a network's first or
** last layer). A chain of one-use add, sub and mul steps, each with one
** batch operand and one parameter-class row vector [1,n] or scalar, is
** y = x s + t per column. After a linear map:
**   y = (x W^T + b) s + t = x (diag(s) W)^T + (b s + t);
** before one:
**   (x s + t) W^T + b = x (W diag(s))^T + (t W^T + b).
** The new weight and bias are parameter-only nodes (IR_PSCALE, products
** and sums of vectors, a parameter-class linear map), computed once when
** the weights are loaded; the chain's loop over the batch disappears.
*/
#include "passes.h"

#include <stdlib.h>

typedef struct affine {
  ir_node *s, *t;   /* y = x s + t; NULL: 1 and 0 */
} affine;

/* Can the prep program compute p at load time? Not a loop's row of a
** table (IR_LOOP_ROW, read in the kernel each run), nor anything made of one. */
static int at_load(const ir_node *p) {
  if (p->batch || p->op == IR_LOOP_ROW) return 0;
  for (int k = 0; k < p->nargs; k++)
    if (!at_load(p->args[k])) return 0;
  return 1;
}

/* The parameter operand of step y on batch value v, when y is an add, sub
** or mul of v and a row vector of width n or a scalar; *vfirst: v is the
** first operand. NULL otherwise. */
static ir_node *step_operand(const ir_node *y, const ir_node *v, int n, int *vfirst) {
  if ((y->op != IR_ADD && y->op != IR_SUB && y->op != IR_MUL) || !y->batch || y->n != n)
    return NULL;
  ir_node *a = y->args[0], *b = y->args[1];
  ir_node *p = a == v ? b : b == v ? a : NULL;
  if (!p || p->rows != 1 || (p->n != n && p->n != 1) || !at_load(p)) return NULL;
  *vfirst = a == v;
  return p;
}

/* f composed with one more step y = op(v, p). */
static void step(ir_graph *g, affine *f, const ir_node *y, ir_node *p, int vfirst) {
  if (y->op == IR_MUL) {
    f->s = f->s ? ir_binary(g, IR_MUL, f->s, p) : p;
    if (f->t) f->t = ir_binary(g, IR_MUL, f->t, p);
  } else if (y->op == IR_ADD || vfirst) {   /* v + p, p + v, v - p */
    ir_node *q = y->op == IR_ADD ? p : ir_unary(g, IR_NEG, p);
    f->t = f->t ? ir_binary(g, IR_ADD, f->t, q) : q;
  } else {                                  /* p - v */
    f->s = f->s ? ir_unary(g, IR_NEG, f->s) : ir_const(g, -1);
    f->t = f->t ? ir_binary(g, IR_SUB, p, f->t) : p;
  }
}

/* W with its rows (axis 0) or columns (axis 1) scaled by s. */
static ir_node *scaled(ir_graph *g, ir_node *W, ir_node *s, int axis) {
  if (!s) return W;
  return s->n == 1 ? ir_binary(g, IR_MUL, W, s) : ir_pscale(g, W, s, axis);
}

static void set_linear(ir_node *y, ir_node *x, ir_node *W, ir_node *b) {
  y->op = IR_LINEAR;
  y->batch = 1;
  y->nargs = b ? 3 : 2;
  y->args[0] = x;
  y->args[1] = W;
  y->args[2] = b;
  y->idx = NULL;
  y->i0 = y->i1 = y->i2 = 0;
  y->f0 = y->f1 = 0;
}

/* The chain of steps after L, each the one user of the one before, folded
** into L: its last step becomes the linear map. That step, or NULL. */
static ir_node *fold_after(ir_graph *g, ir_node *L, const int *user) {
  affine f = {0};
  ir_node *v = L, *y = NULL;
  int vfirst;
  for (ir_node *p; user[v->id] >= 0; v = y) {
    y = g->nodes[user[v->id]];
    if (!(p = step_operand(y, v, L->n, &vfirst))) break;
    step(g, &f, y, p, vfirst);
  }
  y = v == L ? NULL : v;
  ir_node *b = L->nargs > 2 ? L->args[2] : NULL;
  if (!y) return NULL;
  if (b && f.s) b = ir_binary(g, IR_MUL, b, f.s);
  if (f.t) b = b ? ir_binary(g, IR_ADD, b, f.t) : f.t;
  if (b && b->n != L->n) return NULL;   /* a scalar bias: left alone (what was made is dead) */
  set_linear(y, L->args[0], scaled(g, L->args[1], f.s, 0), b);
  return y;
}

/* The chain of steps before L, each used only by the next, folded into L.
** 1 when L changed. */
static int fold_before(ir_graph *g, ir_node *L, const int *user) {
  enum { MAXCHAIN = 16 };
  ir_node *chain[MAXCHAIN], *op[MAXCHAIN], *cur = L, *v = L->args[0];
  int first[MAXCHAIN], k = 0, n = v->n;
  while (k < MAXCHAIN && user[v->id] == cur->id && v->nargs == 2) {
    ir_node *w = v->args[0]->batch ? v->args[0] : v->args[1];
    if (!(op[k] = step_operand(v, w, n, &first[k]))) break;
    chain[k++] = cur = v;
    v = w;
  }
  if (!k) return 0;
  affine f = {0};
  for (int j = k - 1; j >= 0; j--) step(g, &f, chain[j], op[j], first[j]);   /* from x outwards */
  if (f.t && f.t->n != n) return 0;     /* t W^T of a scalar t: left alone */
  ir_node *W = L->args[1], *b = L->nargs > 2 ? L->args[2] : NULL;
  if (f.t) b = ir_linear(g, f.t, W, b);
  set_linear(L, v, scaled(g, W, f.s, 1), b);
  return 1;
}

static int foldable(const ir_node *x) {
  return x->op == IR_LINEAR && x->batch && !x->idx && x->args[0]->batch && at_load(x->args[1]) &&
         (x->nargs < 3 || at_load(x->args[2]));
}

/* Nodes [lo, hi) of g, made by a fold, go just before node site. */
typedef struct made {
  int site, lo, hi, next;
} made;

/* Puts the made nodes in place: each range before its site, in the order
** made (a later fold may read an earlier one's weight). */
static void place(ir_graph *g, int N, made *m, int nm, int *head) {
  ir_node **nodes = ir_alloc(g->A, (size_t)g->nnodes * sizeof *nodes);
  int n = 0, *tail = head + N;
  for (int i = 0; i < N; i++) head[i] = tail[i] = -1;
  for (int k = 0; k < nm; k++) {   /* append k to its site's list */
    if (tail[m[k].site] < 0) head[m[k].site] = k;
    else m[tail[m[k].site]].next = k;
    tail[m[k].site] = k;
  }
  for (int i = 0; i < N; i++) {
    for (int k = head[i]; k >= 0; k = m[k].next)
      for (int j = m[k].lo; j < m[k].hi; j++) nodes[n++] = g->nodes[j];
    nodes[n++] = g->nodes[i];
  }
  g->nodes = nodes;
  g->nnodes = g->cap = n;
}

void pass_affine(ir_graph *g) {
  ir_renumber(g);
  int N = g->nnodes;
  int *user = malloc(((size_t)N + 1) * sizeof *user);   /* the one user, or -1 */
  int *head = malloc((2 * (size_t)N + 1) * sizeof *head);
  made *m = malloc((2 * (size_t)N + 1) * sizeof *m);
  if (!user || !head || !m) {   /* an optional pass: without memory, nothing */
    free(user), free(head), free(m);
    return;
  }
  for (int i = 0; i < N; i++) user[i] = -1;
  for (int i = 0; i < N; i++)
    for (int k = 0; k < g->nodes[i]->nargs; k++) user[g->nodes[i]->args[k]->id] = i;
  for (int i = 0; i < N; i++)
    if (g->nodes[i]->uses != 1) user[i] = -1;   /* outputs count as uses */
  int nm = 0;
  for (int i = 0; i < N; i++) {
    ir_node *x = g->nodes[i];
    if (!foldable(x)) continue;
    int lo = g->nnodes;
    fold_before(g, x, user);
    if (g->nnodes > lo) m[nm++] = (made){i, lo, g->nnodes, -1};
    lo = g->nnodes;
    ir_node *y = fold_after(g, x, user);
    if (g->nnodes > lo) m[nm++] = (made){y ? y->id : i, lo, g->nnodes, -1};
  }
  if (nm) place(g, N, m, nm, head);
  free(user), free(head), free(m);
  pass_dce(g);
}
