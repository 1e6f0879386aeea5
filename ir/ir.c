/* ir/ir.c: graph construction (see ir.h). */
#include "ir.h"
#include "rt_made.h"   /* header only: the masks, shared with the runtime */

#include <assert.h>
#include <string.h>

static const char *const op_names[IR_OP_COUNT] = {
  [IR_INPUT] = "input", [IR_PARAM] = "param", [IR_CONST] = "const",
  [IR_RELU] = "relu", [IR_GELU] = "gelu", [IR_GELU_TANH] = "gelu_tanh",
  [IR_SILU] = "silu", [IR_TANH] = "tanh", [IR_ELU] = "elu",
  [IR_SOFTPLUS] = "softplus", [IR_LIPSWISH] = "lipswish", [IR_EXP] = "exp",
  [IR_NEG] = "neg", [IR_LOGSIGMOID] = "logsigmoid", [IR_SQUARE] = "square",
  [IR_ADD] = "add", [IR_SUB] = "sub", [IR_MUL] = "mul",
  [IR_LINEAR] = "linear", [IR_SLICE] = "slice", [IR_CONCAT] = "concat",
  [IR_GATHER] = "gather", [IR_RQS] = "rqs", [IR_ROWSUM] = "rowsum",
  [IR_LU_W] = "lu_w", [IR_LU_WINV] = "lu_winv", [IR_MADE_MASK] = "made_mask",
  [IR_DACT] = "dact", [IR_LINEAR_T] = "linear_t", [IR_PAD] = "pad",
  [IR_BCAST] = "bcast", [IR_RQS_GRAD] = "rqs_grad", [IR_ACC_SUM] = "acc_sum",
  [IR_ACC_OUTER] = "acc_outer", [IR_SPECNORM] = "specnorm", [IR_PSCALE] = "pscale", [IR_D2ACT] = "d2act",
  [IR_LOGDET] = "logdet", [IR_LOGDET_GRAD] = "logdet_grad", [IR_STOPGRAD] = "stopgrad",
  [IR_FIX_BEGIN] = "fix_begin", [IR_FIX_END] = "fix_end", [IR_PGATHER] = "pgather",
  [IR_TEMB] = "temb", [IR_LOOP_ROW] = "loop_row", [IR_SDE_NOISE] = "sde_noise",
  [IR_ODE_CTRL] = "ode_ctrl", [IR_TRACE_COEF] = "trace_coef",
};

const char *ir_op_name(ir_op op) { return op < IR_OP_COUNT ? op_names[op] : "?"; }

const char *ir_entry_name(ir_entry e) {
  static const char *const names[IR_NENTRY] = {
    "encode", "encode_ld", "decode", "decode_ld", "log_prob"};
  return e < IR_NENTRY ? names[e] : "?";
}

int ir_is_unary(ir_op op) { return op >= IR_RELU && op <= IR_SQUARE; }
int ir_is_binary(ir_op op) { return op >= IR_ADD && op <= IR_MUL; }
int ir_is_sink(ir_op op) { return op == IR_ACC_SUM || op == IR_ACC_OUTER; }

ir_kind ir_op_kind(ir_op op) {
  if (ir_is_unary(op) || ir_is_binary(op) || op == IR_DACT || op == IR_D2ACT)
    return IR_KIND_ELEMWISE;
  switch (op) {
  case IR_SLICE: case IR_CONCAT: case IR_GATHER: case IR_PAD: case IR_BCAST: case IR_STOPGRAD:
    return IR_KIND_INJECTIVE;
  case IR_LINEAR: case IR_LINEAR_T: case IR_ROWSUM: case IR_LOGDET:
    return IR_KIND_REDUCTION;
  default: return IR_KIND_OPAQUE;
  }
}

ir_graph *ir_graph_new(ir_arena *A) {
  ir_graph *g = ir_alloc(A, sizeof *g);
  g->A = A;
  return g;
}

static ir_node *add(ir_graph *g, ir_op op, int batch, int rows, int n) {
  if (g->nnodes == g->cap) {
    int cap = g->cap ? 2 * g->cap : 64;
    ir_node **nodes = ir_alloc(g->A, (size_t)cap * sizeof *nodes);
    if (g->nnodes) memcpy(nodes, g->nodes, (size_t)g->nnodes * sizeof *nodes);
    g->nodes = nodes;
    g->cap = cap;
  }
  ir_node *x = ir_alloc(g->A, sizeof *x);
  x->op = op;
  x->id = g->nnodes;
  x->batch = batch;
  x->rows = batch ? 1 : rows;
  x->n = n;
  x->offset = -1;
  x->prep = -1;
  g->nodes[g->nnodes++] = x;
  return x;
}

static void arg(ir_node *x, ir_node *a) {
  assert(x->nargs < 5);
  x->args[x->nargs++] = a;
}

ir_node *ir_input(ir_graph *g, int slot, int n) {
  ir_node *x = add(g, IR_INPUT, 1, 1, n);
  x->i0 = slot;
  return x;
}

ir_node *ir_param_node(ir_graph *g, const ir_program *p, int index) {
  const ir_param *pa = &p->params[index];
  int rows = pa->ndim == 2 ? pa->shape[0] : 1;
  int n = pa->ndim == 2 ? pa->shape[1] : pa->shape[0];
  ir_node *x = add(g, IR_PARAM, 0, rows, n);
  x->i0 = index;
  return x;
}

ir_node *ir_const(ir_graph *g, double v) {
  ir_node *x = add(g, IR_CONST, 0, 1, 1);
  x->f0 = v;
  return x;
}

ir_node *ir_unary(ir_graph *g, ir_op op, ir_node *a) {
  assert(ir_is_unary(op));
  ir_node *x = add(g, op, a->batch, a->rows, a->n);
  arg(x, a);
  return x;
}

/* Batch op batch of equal width (or one of them [B,1]), or either side a
** [1,n] / [1,1] param, broadcast along the rows and columns. */
ir_node *ir_binary(ir_graph *g, ir_op op, ir_node *a, ir_node *b) {
  assert(ir_is_binary(op));
  int batch = a->batch || b->batch;
  const ir_node *big;
  if (a->batch != b->batch) big = a->batch ? a : b;
  else big = a->rows * a->n >= b->rows * b->n ? a : b;
  const ir_node *other = big == a ? b : a;
  assert(other->n == big->n || other->n == 1);
  assert(!batch || other->batch || other->rows == 1);
  (void)other;
  ir_node *x = add(g, op, batch, big->rows, big->n);
  arg(x, a);
  arg(x, b);
  return x;
}

ir_node *ir_linear(ir_graph *g, ir_node *in, ir_node *W, ir_node *b) {
  assert(!W->batch && W->n == in->n);
  assert(!b || (!b->batch && b->n == W->rows && b->rows == 1));
  ir_node *x = add(g, IR_LINEAR, in->batch, in->batch ? 1 : in->rows, W->rows);
  arg(x, in);
  arg(x, W);
  if (b) arg(x, b);
  return x;
}

ir_node *ir_slice(ir_graph *g, ir_node *in, int lo, int n) {
  assert(in->batch && lo >= 0 && lo + n <= in->n);
  if (lo == 0 && n == in->n) return in;
  ir_node *x = add(g, IR_SLICE, 1, 1, n);
  arg(x, in);
  x->i0 = lo;
  return x;
}

ir_node *ir_concat(ir_graph *g, ir_node *a, ir_node *b) {
  if (!b) return a;   /* NULL stands for "nothing", as an absent context */
  if (!a) return b;
  if (a->n == 0) return b;
  if (b->n == 0) return a;
  assert(a->batch && b->batch);
  ir_node *x = add(g, IR_CONCAT, 1, 1, a->n + b->n);
  arg(x, a);
  arg(x, b);
  return x;
}

ir_node *ir_gather(ir_graph *g, ir_node *in, ir_node *perm, const int *idx, int inverse) {
  assert(in->batch && (perm || idx));
  ir_node *x = add(g, IR_GATHER, 1, 1, in->n);
  x->i1 = inverse;
  arg(x, in);
  if (perm) arg(x, perm);
  else x->idx = idx;
  return x;
}

ir_node *ir_rqs(ir_graph *g, ir_node *in, ir_node *h, int bins, double bound, int inverse) {
  assert(in->batch && h->batch && h->n == in->n * (3 * bins - 1));
  ir_node *x = add(g, IR_RQS, 1, 1, 2 * in->n);
  arg(x, in);
  arg(x, h);
  x->i0 = bins;
  x->i1 = inverse;
  x->f0 = bound;
  return x;
}

ir_node *ir_rowsum(ir_graph *g, ir_node *in) {
  ir_node *x = add(g, IR_ROWSUM, in->batch, 1, 1);
  arg(x, in);
  return x;
}

ir_node *ir_lu(ir_graph *g, ir_op op, ir_node *const lu[5]) {
  assert(op == IR_LU_W || op == IR_LU_WINV);
  int D = lu[0]->n;
  ir_node *x = add(g, op, 0, D, D);
  for (int i = 0; i < 5; i++) arg(x, lu[i]);
  return x;
}

void ir_output(ir_graph *g, ir_node *x) {
  assert(g->nouts < 2);
  g->outs[g->nouts++] = x;
}

void ir_renumber(ir_graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    g->nodes[i]->id = i;
    g->nodes[i]->uses = 0;
  }
  for (int i = 0; i < g->nnodes; i++)
    for (int k = 0; k < g->nodes[i]->nargs; k++) g->nodes[i]->args[k]->uses++;
  for (int k = 0; k < g->nouts; k++) g->outs[k]->uses++;
}

ir_node *ir_dact(ir_graph *g, ir_op unary, ir_node *a) {
  assert(ir_is_unary(unary) && a->batch);
  ir_node *x = add(g, IR_DACT, 1, 1, a->n);
  arg(x, a);
  x->i0 = unary;
  return x;
}

ir_node *ir_linear_prefix(ir_graph *g, ir_node *in, ir_node *W, ir_node *b, const int *prefix) {
  assert(in->batch);
  ir_node *x = ir_linear(g, in, W, b);
  int *idx = ir_alloc(g->A, (size_t)x->n * sizeof *idx + 1);
  for (int o = 0; o < x->n; o++) idx[o] = prefix[o];
  x->idx = idx;
  return x;
}

ir_node *ir_linear_t(ir_graph *g, ir_node *dy, ir_node *W) {
  assert(dy->batch && !W->batch && W->rows == dy->n);
  ir_node *x = add(g, IR_LINEAR_T, 1, 1, W->n);
  arg(x, dy);
  arg(x, W);
  return x;
}

ir_node *ir_pad(ir_graph *g, ir_node *a, int lo, int width) {
  assert(a->batch && lo >= 0 && lo + a->n <= width);
  if (lo == 0 && a->n == width) return a;
  ir_node *x = add(g, IR_PAD, 1, 1, width);
  arg(x, a);
  x->i0 = lo;
  x->i1 = width;
  return x;
}

ir_node *ir_bcast(ir_graph *g, ir_node *a, int n) {
  assert(a->batch && a->n == 1);
  if (n == 1) return a;
  ir_node *x = add(g, IR_BCAST, 1, 1, n);
  arg(x, a);
  return x;
}

ir_node *ir_rqs_grad(ir_graph *g, const ir_node *rqs, ir_node *gy, ir_node *gl) {
  int m = rqs->args[0]->n;
  assert(gy->batch && gl->batch && gy->n == m && gl->n == m);
  ir_node *x = add(g, IR_RQS_GRAD, 1, 1, m + rqs->args[1]->n);
  arg(x, rqs->args[0]);
  arg(x, rqs->args[1]);
  arg(x, gy);
  arg(x, gl);
  x->i0 = rqs->i0;
  x->i1 = rqs->i1;
  x->f0 = rqs->f0;
  return x;
}

ir_node *ir_acc_sum(ir_graph *g, ir_node *a, ir_node *b, ir_node *target) {
  assert(a->batch && !target->batch && (!b || (b->batch && b->n == a->n)));
  assert(target->rows * target->n == a->n || (target->rows == 1 && target->n == 1));
  ir_node *x = add(g, IR_ACC_SUM, 0, 1, 0);
  arg(x, a);
  if (b) arg(x, b);
  arg(x, target);
  return x;
}

ir_node *ir_acc_outer(ir_graph *g, ir_node *dy, ir_node *in, ir_node *target) {
  assert(dy->batch && in->batch && target->rows == dy->n && target->n == in->n);
  ir_node *x = add(g, IR_ACC_OUTER, 0, 1, 0);
  arg(x, dy);
  arg(x, in);
  arg(x, target);
  return x;
}

int ir_grad_slot(const ir_program *p, const ir_node *target) {
  return target->op == IR_PARAM ? target->i0 : p->nparams + target->prep;
}

ir_node *ir_made_mask(ir_graph *g, ir_node *W, int kind, int D, int C, int per) {
  assert(!W->batch);
  ir_node *x = add(g, IR_MADE_MASK, 0, W->rows, W->n);
  arg(x, W);
  x->i0 = kind;
  x->i1 = D;
  x->i2 = C;
  x->f0 = per;
  return x;
}

int ir_made_connected(int kind, int D, int C, int per, int o, int i) {
  return rt_made_connected(kind, D, C, per, o, i);
}

ir_node *ir_pgather(ir_graph *g, ir_node *W, int rows, const int *ridx, int n, const int *cidx) {
  assert(!W->batch && rows > 0);
  ir_node *x = add(g, IR_PGATHER, 0, rows, n);
  int *idx = ir_alloc(g->A, (size_t)(rows + n) * sizeof *idx);
  for (int a = 0; a < rows; a++) idx[a] = ridx[a];
  for (int b = 0; b < n; b++) idx[rows + b] = cidx[b];
  x->idx = idx;
  arg(x, W);
  return x;
}

ir_node *ir_pscale(ir_graph *g, ir_node *W, ir_node *s, int axis) {
  assert(!W->batch && !s->batch && s->rows == 1 && s->n == (axis ? W->n : W->rows));
  ir_node *x = add(g, IR_PSCALE, 0, W->rows, W->n);
  arg(x, W);
  arg(x, s);
  x->i0 = axis;
  return x;
}

ir_node *ir_specnorm(ir_graph *g, ir_node *W, ir_node *u, double lipschitz) {
  assert(!W->batch && !u->batch && u->rows * u->n == W->rows);
  ir_node *x = add(g, IR_SPECNORM, 0, W->rows, W->n);
  arg(x, W);
  arg(x, u);
  x->f0 = lipschitz;
  return x;
}

ir_node *ir_d2act(ir_graph *g, ir_op unary, ir_node *a) {
  assert(ir_is_unary(unary) && a->batch);
  ir_node *x = add(g, IR_D2ACT, 1, 1, a->n);
  arg(x, a);
  x->i0 = unary;
  return x;
}

ir_node *ir_logdet(ir_graph *g, ir_node *a, int D) {
  assert(a->batch && a->n == D * D);
  ir_node *x = add(g, IR_LOGDET, 1, 1, 1);
  arg(x, a);
  x->i0 = D;
  return x;
}

ir_node *ir_logdet_grad(ir_graph *g, ir_node *a, ir_node *gd, int D) {
  assert(a->batch && gd->batch && gd->n == 1 && a->n == D * D);
  ir_node *x = add(g, IR_LOGDET_GRAD, 1, 1, a->n);
  arg(x, a);
  arg(x, gd);
  x->i0 = D;
  return x;
}

ir_node *ir_stopgrad(ir_graph *g, ir_node *a) {
  assert(a->batch);
  ir_node *x = add(g, IR_STOPGRAD, 1, 1, a->n);
  arg(x, a);
  return x;
}

ir_node *ir_fix_begin(ir_graph *g, ir_node *u, int layer) {
  assert(u->batch);
  ir_node *x = add(g, IR_FIX_BEGIN, 1, 1, u->n);
  arg(x, u);
  x->i1 = layer;
  return x;
}

ir_node *ir_fix_end(ir_graph *g, ir_node *y, ir_node *ynew, int iters, double tol, int layer) {
  assert(y->op == IR_FIX_BEGIN && ynew->batch && ynew->n == y->n);
  ir_node *x = add(g, IR_FIX_END, 1, 1, y->n);
  arg(x, y);
  arg(x, ynew);
  x->i0 = iters;
  x->i1 = layer;
  x->f0 = tol;
  return x;
}

ir_node *ir_loop_end(ir_graph *g, ir_node *y, ir_node *ynew, int runs, int layer) {
  ir_node *x = ir_fix_end(g, y, ynew, runs, 0, layer);
  x->i2 = 1;
  return x;
}

ir_node *ir_temb_table(ir_graph *g, int kind, int n, int rows, double t0, double dt) {
  assert(rows >= 1 && (kind ? n >= 4 && n % 2 == 0 : n == 1));
  ir_node *x = add(g, IR_TEMB, 0, rows, n);
  x->i1 = kind;
  x->f0 = t0;
  x->f1 = dt;
  return x;
}

ir_node *ir_temb(ir_graph *g, int kind, int n, ir_node *t) {
  assert(t->batch && t->n == 1 && (kind ? n >= 4 && n % 2 == 0 : n == 1));
  ir_node *x = add(g, IR_TEMB, 1, 1, n);
  arg(x, t);
  x->i1 = kind;
  return x;
}

ir_node *ir_loop_row(ir_graph *g, ir_node *table, ir_node *loop) {
  assert(!table->batch && loop->op == IR_FIX_BEGIN);
  ir_node *x = add(g, IR_LOOP_ROW, 0, 1, table->n);
  arg(x, table);
  arg(x, loop);
  return x;
}

ir_node *ir_trace_coef(ir_graph *g, ir_node *W0, ir_node *W1, ir_node *W2, int D) {
  assert(!W0->batch && !W1->batch && W0->n >= D && W1->n == W0->rows);
  assert(W2 ? !W2->batch && W2->rows == D && W2->n == W1->rows : W1->rows == D);
  ir_node *x = add(g, IR_TRACE_COEF, 0, W2 ? W1->rows : 1, W0->rows);
  arg(x, W0);
  arg(x, W1);
  if (W2) arg(x, W2);
  x->i0 = D;
  return x;
}

ir_node *ir_ode_ctrl(ir_graph *g, ir_node *s, ir_node *y5, ir_node *err, double rtol,
                     double atol, int tend) {
  assert(s->batch && y5->batch && err->batch && y5->n == err->n && s->n == y5->n + 2);
  ir_node *x = add(g, IR_ODE_CTRL, 1, 1, s->n);
  arg(x, s);
  arg(x, y5);
  arg(x, err);
  x->f0 = rtol;
  x->f1 = atol;
  x->i0 = tend;
  return x;
}

ir_node *ir_sde_noise(ir_graph *g, ir_node *key, ir_node *loop, int n, int layer) {
  assert(key->op == IR_INPUT && loop->op == IR_FIX_BEGIN);
  ir_node *x = add(g, IR_SDE_NOISE, 1, 1, n);
  arg(x, key);
  arg(x, loop);
  x->i0 = layer;
  return x;
}

void ir_last_uses(const ir_graph *g, int *last) {
  int N = g->nnodes;
  for (int i = 0; i < N; i++) last[i] = i;
  for (int i = 0; i < N; i++)
    for (int k = 0; k < g->nodes[i]->nargs; k++) last[g->nodes[i]->args[k]->id] = i;
  for (int i = N - 1; i >= 0; i--) {  /* a fused node: computed where its user is */
    int u = last[i];
    if (g->nodes[i]->fused && u < N && g->nodes[u]->fused) last[i] = last[u];
  }
  for (int i = 0; i < N; i++)
    for (int k = 0; k < g->nodes[i]->nargs; k++) {
      int a = g->nodes[i]->args[k]->id, at = g->nodes[i]->fused ? last[i] : i;
      if (!g->nodes[a]->fused && last[a] < at) last[a] = at;
    }
  for (int k = 0; k < g->nouts; k++) last[g->outs[k]->id] = N;
  for (int e = 0; e < N; e++) {       /* loops: what the body reads lives to the end */
    if (g->nodes[e]->op != IR_FIX_END) continue;
    int b = g->nodes[e]->args[0]->id;
    for (int i = b + 1; i < e; i++)
      for (int k = 0; k < g->nodes[i]->nargs; k++) {
        int a = g->nodes[i]->args[k]->id;
        if (a < b && last[a] < e) last[a] = e;
      }
  }
}
