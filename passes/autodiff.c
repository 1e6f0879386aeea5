/*
** passes/autodiff.c: reverse-mode differentiation of log_prob.
**
** Builds p->train: a fresh log_prob graph followed by its backward sweep,
** one gradient node per tensor (not per scalar). The loss of a row is
** -log p(x); the sweep visits the forward nodes from last to first, so
** every contribution to a node's gradient exists before the node is
** visited. Gradients w.r.t. parameters, and w.r.t. parameter-only (prep)
** nodes such as exp(log_scale) or the LU product, leave the graph through
** sinks that sum over the rows; the runtime carries the prep gradients
** back to the parameters. The log-det terms are differentiated like the
** rest of the graph: nothing is approximated.
*/
#include "passes.h"

#include <stdlib.h>

typedef struct ad {
  ir_graph *g;
  const ir_program *p;
  ir_node **grad;         /* by forward node id: its gradient, or NULL */
  char *needs;            /* the node depends on a trainable tensor */
} ad;

static int trainable(const ir_program *p, const ir_node *x) {
  if (x->op == IR_PARAM) return p->params[x->i0].dtype == IR_F32;
  return !x->batch && x->op != IR_CONST;   /* a prep node */
}

static void mark_needs(ad *a, int nfwd) {
  for (int i = 0; i < nfwd; i++) {
    ir_node *x = a->g->nodes[i];
    for (int k = 0; k < x->nargs; k++)
      if (a->needs[x->args[k]->id] || trainable(a->p, x->args[k])) a->needs[i] = 1;
  }
}

/* Adds contribution c to the gradient of batch node x. */
static void add_grad(ad *a, ir_node *x, ir_node *c) {
  if (!a->needs[x->id]) return;
  ir_node **g = &a->grad[x->id];
  *g = *g ? ir_binary(a->g, IR_ADD, *g, c) : c;
}

/*
** Sends gradient G of a binary op's result to operand x, where the other
** operand is y (for MUL). x may be batch of the result's width, batch
** [B,1] (broadcast: sum the columns), or a [1,n] / [1,1] parameter-class
** node (a sink sums the rows).
*/
static void to_operand(ad *a, ir_op op, int second, ir_node *x, ir_node *y, ir_node *G) {
  ir_graph *g = a->g;
  ir_node *other = op == IR_MUL ? y : NULL;
  if (!x->batch) {
    if (!trainable(a->p, x)) return;
    if (op == IR_SUB && second) G = ir_unary(g, IR_NEG, G);
    if (other && !other->batch) other = NULL, G = ir_binary(g, IR_MUL, G, y);
    if (other && other->n != G->n) G = ir_binary(g, IR_MUL, G, other), other = NULL;
    ir_acc_sum(g, G, other, x);
    return;
  }
  if (!a->needs[x->id]) return;
  ir_node *c = G;
  if (op == IR_SUB && second) c = ir_unary(g, IR_NEG, c);
  if (op == IR_MUL) c = ir_binary(g, IR_MUL, c, y);
  if (x->n != c->n) c = ir_rowsum(g, c);   /* x was broadcast along the columns */
  add_grad(a, x, c);
}

static void back_linear(ad *a, ir_node *x, ir_node *G) {
  ir_node *in = x->args[0], *W = x->args[1];
  if (a->needs[in->id]) add_grad(a, in, ir_linear_t(a->g, G, W));
  if (trainable(a->p, W)) ir_acc_outer(a->g, G, in, W);
  if (x->nargs > 2 && trainable(a->p, x->args[2])) ir_acc_sum(a->g, G, NULL, x->args[2]);
}

static void back_rqs(ad *a, ir_node *x, ir_node *G) {
  ir_graph *g = a->g;
  ir_node *in = x->args[0], *h = x->args[1];
  int m = in->n;
  ir_node *R = ir_rqs_grad(g, x, ir_slice(g, G, 0, m), ir_slice(g, G, m, m));
  add_grad(a, in, ir_slice(g, R, 0, m));
  add_grad(a, h, ir_slice(g, R, m, h->n));
}

static void back_gather(ad *a, ir_node *x, ir_node *G) {
  ir_node *in = x->args[0];
  if (x->nargs > 1) {
    add_grad(a, in, ir_gather(a->g, G, x->args[1], NULL, !x->i1));
    return;
  }
  int *inv = ir_alloc(a->p->A, (size_t)x->n * sizeof *inv);   /* y[i] = x[idx[i]] */
  for (int i = 0; i < x->n; i++) inv[x->idx[i]] = i;
  add_grad(a, in, ir_gather(a->g, G, NULL, inv, 0));
}

/* One forward node's contributions to its arguments' gradients. */
static void back(ad *a, ir_node *x, ir_node *G) {
  ir_graph *g = a->g;
  ir_node *u = x->nargs ? x->args[0] : NULL;
  if (ir_is_unary(x->op)) {
    add_grad(a, u, x->op == IR_NEG ? ir_unary(g, IR_NEG, G)
                   : ir_binary(g, IR_MUL, G, x->op == IR_EXP ? x : ir_dact(g, x->op, u)));
  } else if (ir_is_binary(x->op)) {
    to_operand(a, x->op, 0, x->args[0], x->args[1], G);
    to_operand(a, x->op, 1, x->args[1], x->args[0], G);
  } else switch (x->op) {
  case IR_LINEAR: back_linear(a, x, G); break;
  case IR_SLICE: add_grad(a, u, ir_pad(g, G, x->i0, u->n)); break;
  case IR_PAD: add_grad(a, u, ir_slice(g, G, x->i0, u->n)); break;
  case IR_BCAST: add_grad(a, u, ir_rowsum(g, G)); break;
  case IR_CONCAT:
    add_grad(a, u, ir_slice(g, G, 0, u->n));
    add_grad(a, x->args[1], ir_slice(g, G, u->n, x->args[1]->n));
    break;
  case IR_GATHER: back_gather(a, x, G); break;
  case IR_RQS: back_rqs(a, x, G); break;
  case IR_ROWSUM: add_grad(a, u, ir_bcast(g, G, u->n)); break;
  case IR_DACT:   /* residual layers' Jacobians use f' */
    add_grad(a, u, ir_binary(g, IR_MUL, G, ir_d2act(g, (ir_op)x->i0, u)));
    break;
  case IR_LOGDET: add_grad(a, u, ir_logdet_grad(g, u, G, x->i0)); break;
  case IR_STOPGRAD: break;
  default: break;   /* inputs; other backward ops occur only under a STOPGRAD */
  }
}

/* A STOPGRAD has done its work once the sweep is over: read its argument. */
static void drop_stopgrads(ir_graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    ir_node *x = g->nodes[i];
    for (int k = 0; k < x->nargs; k++)
      while (x->args[k]->op == IR_STOPGRAD) x->args[k] = x->args[k]->args[0];
  }
  for (int k = 0; k < g->nouts; k++)
    while (g->outs[k]->op == IR_STOPGRAD) g->outs[k] = g->outs[k]->args[0];
  pass_dce(g);
}

int pass_autodiff(ir_program *p) {
  ir_graph *g = ir_lower_train(p);
  int nfwd = g->nnodes;
  ad a = {g, p, calloc((size_t)nfwd, sizeof(ir_node *)), calloc((size_t)nfwd, 1)};
  mark_needs(&a, nfwd);
  ir_node *out = g->outs[0];
  /* d(-log p)/d(log p) = -1 for every row: a batch column of -1 */
  ir_node *zero = ir_rowsum(g, ir_slice(g, g->nodes[0], 0, 0));
  a.grad[out->id] = ir_binary(g, IR_ADD, zero, ir_const(g, -1.0));
  for (int i = nfwd - 1; i >= 0; i--) {
    ir_node *x = g->nodes[i];
    if (x->batch && a.grad[i] && a.needs[i]) back(&a, x, a.grad[i]);
  }
  free(a.grad);
  free(a.needs);
  ir_renumber(g);
  drop_stopgrads(g);
  ir_renumber(g);
  p->train = g;
  return 0;
}
