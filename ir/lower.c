/*
** ir/lower.c: a checked model to a program (parameter table + one graph
** per entry). Each layer lowers in both directions with its log-det term,
** following section 4 of flow-language.md; decode applies f_1 .. f_K and
** adds log|det J_f|, encode applies the inverses from f_K back and adds
** log|det J_f^-1| = -log|det J_f|.
*/
#include "ir.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Lowering state of one entry graph. */
typedef struct lw {
  ir_graph *g;
  const ir_program *p;
  const ir_model *m;
  ir_node *ctx;           /* [B, C] or NULL */
  ir_node *ld;            /* running log-det, NULL while zero */
} lw;

/* ---- parameter table ---- */

static int add_param(ir_program *p, int cap, const char *name, ir_dtype dt, int ndim,
                     int s0, int s1, ir_init init, int layer) {
  if (p->nparams == cap) return -1;
  ir_param *pa = &p->params[p->nparams];
  pa->name = name;
  pa->dtype = dt;
  pa->ndim = ndim;
  pa->shape[0] = s0;
  pa->shape[1] = s1;
  pa->init = init;
  pa->layer = layer;
  return p->nparams++;
}

static int net_outputs(const ir_model *m, const ir_layer *L) {
  int D = m->dim, d = D / 2;
  switch (L->kind) {
  case LAYER_AFFINE_COUPLING: return 2 * (D - d);
  case LAYER_ADDITIVE_COUPLING: return D - d;
  case LAYER_SPLINE_COUPLING: return (D - d) * (3 * L->bins - 1);
  case LAYER_MAF: case LAYER_IAF: return L->spline ? D * (3 * L->bins - 1) : 2 * D;
  default: return 0;
  }
}

static int has_net(const ir_layer *L) {
  return L->kind == LAYER_AFFINE_COUPLING || L->kind == LAYER_ADDITIVE_COUPLING ||
         L->kind == LAYER_SPLINE_COUPLING || L->kind == LAYER_MAF || L->kind == LAYER_IAF;
}

/* Linear layer j of a network: in -> out; the last one starts at zero. */
static int net_params(ir_program *p, int cap, int k, const ir_net *net, int in, int out) {
  int first = -1;
  for (int j = 0; j <= net->nhidden; j++) {
    int o = j < net->nhidden ? net->hidden[j] : out;
    int last = j == net->nhidden;
    int w = add_param(p, cap, ir_sprintf(p->A, "flow.%d.net.%d.weight", k, j), IR_F32, 2, o, in,
                      last ? INIT_ZERO : INIT_LINEAR_WEIGHT, k);
    int b = add_param(p, cap, ir_sprintf(p->A, "flow.%d.net.%d.bias", k, j), IR_F32, 1, o, 0,
                      last ? INIT_ZERO : INIT_LINEAR_BIAS, k);
    if (w < 0 || b < 0) return -1;
    p->params[w].fan_in = p->params[b].fan_in = in;
    if (first < 0) first = w;
    in = o;
  }
  return first;
}

static int layer_params(ir_program *p, int cap, int k, const ir_layer *L) {
  const ir_model *m = p->model;
  int D = m->dim;
  const char *pre = ir_sprintf(p->A, "flow.%d.", k);
#define NAME(s) ir_sprintf(p->A, "%s%s", pre, s)
  switch (L->kind) {
  case LAYER_AFFINE_COUPLING: case LAYER_ADDITIVE_COUPLING: case LAYER_SPLINE_COUPLING:
    return net_params(p, cap, k, &L->net, D / 2 + m->context, net_outputs(m, L));
  case LAYER_MAF: case LAYER_IAF:
    return net_params(p, cap, k, &L->net, D + m->context, net_outputs(m, L));
  case LAYER_PERMUTE: {
    if (L->perm_kind == PERM_REVERSE) return p->nparams;
    int i = add_param(p, cap, NAME("perm"), IR_I64, 1, D, 0,
                      L->perm_kind == PERM_RANDOM ? INIT_PERM_RANDOM : INIT_PERM_LIST, k);
    if (i >= 0) {
      p->params[i].seed = L->perm_seed;
      p->params[i].values = L->perm;
    }
    return i;
  }
  case LAYER_ACTNORM: {
    int i = add_param(p, cap, NAME("log_scale"), IR_F32, 1, D, 0, INIT_ZERO, k);
    return add_param(p, cap, NAME("bias"), IR_F32, 1, D, 0, INIT_ZERO, k) < 0 ? -1 : i;
  }
  case LAYER_LINEAR_LU: {
    int i = add_param(p, cap, NAME("lower"), IR_F32, 2, D, D, INIT_LU_LOWER, k);
    add_param(p, cap, NAME("upper"), IR_F32, 2, D, D, INIT_LU_UPPER, k);
    add_param(p, cap, NAME("log_diag"), IR_F32, 1, D, 0, INIT_LU_LOG_DIAG, k);
    add_param(p, cap, NAME("sign"), IR_F32, 1, D, 0, INIT_LU_SIGN, k);
    return add_param(p, cap, NAME("perm"), IR_I64, 1, D, 0, INIT_LU_PERM, k) < 0 ? -1 : i;
  }
  default: return -1;
  }
#undef NAME
}

/* ---- graph helpers ---- */

static void ld_add(lw *w, ir_node *term, int negate) {
  if (negate) term = ir_unary(w->g, IR_NEG, term);
  w->ld = w->ld ? ir_binary(w->g, IR_ADD, w->ld, term) : term;
}

static ir_op act_op(ir_act a) {
  static const ir_op ops[ACT_COUNT] = {
    [ACT_RELU] = IR_RELU, [ACT_GELU] = IR_GELU, [ACT_GELU_TANH] = IR_GELU_TANH,
    [ACT_SILU] = IR_SILU, [ACT_TANH] = IR_TANH, [ACT_ELU] = IR_ELU,
    [ACT_SOFTPLUS] = IR_SOFTPLUS, [ACT_LIPSWISH] = IR_LIPSWISH};
  return ops[a];
}

static ir_node *mlp(lw *w, const ir_net *net, int p0, ir_node *h) {
  for (int j = 0; j <= net->nhidden; j++) {
    ir_node *W = ir_param_node(w->g, w->p, p0 + 2 * j);
    ir_node *b = ir_param_node(w->g, w->p, p0 + 2 * j + 1);
    h = ir_linear(w->g, h, W, b);
    if (j < net->nhidden) h = ir_unary(w->g, act_op(net->act), h);
  }
  return h;
}

/* The conditioner: net([u[0:d], c]). */
static ir_node *conditioner(lw *w, const ir_layer *L, int p0, ir_node *a) {
  return mlp(w, &L->net, p0, ir_concat(w->g, a, w->ctx));
}

static ir_node *scale_fn(lw *w, ir_scale s, ir_node *h) {
  switch (s) {
  case SCALE_TANH: return ir_unary(w->g, IR_TANH, h);
  case SCALE_EXP: return h;
  case SCALE_SIGMOID:
    return ir_unary(w->g, IR_LOGSIGMOID, ir_binary(w->g, IR_ADD, h, ir_const(w->g, 2.0)));
  }
  return h;
}

/* A MADE network: an MLP whose weights are masked (flow-language.md 5). */
static ir_node *made(lw *w, const ir_layer *L, int p0, ir_node *h) {
  const ir_net *net = &L->net;
  int D = w->m->dim, C = w->m->context, per = L->spline ? 3 * L->bins - 1 : 0;
  for (int j = 0; j <= net->nhidden; j++) {
    int first = j == 0, last = j == net->nhidden;
    int kind = first ? (last ? IR_MASK_IN_OUT : IR_MASK_IN_HIDDEN)
                     : (last ? IR_MASK_HIDDEN_OUT : IR_MASK_HIDDEN_HIDDEN);
    ir_node *W = ir_made_mask(w->g, ir_param_node(w->g, w->p, p0 + 2 * j), kind, D, C, per);
    h = ir_linear(w->g, h, W, ir_param_node(w->g, w->p, p0 + 2 * j + 1));
    if (!last) h = ir_unary(w->g, act_op(net->act), h);
  }
  return h;
}

/*
** The elementwise transform of an autoregressive layer on columns
** [lo, lo + n) of x, given the full network output h: forward (inv = 0)
** y = x exp(s) + t or the spline, or its inverse. Adds its log-det to w.
*/
static ir_node *ar_transform(lw *w, const ir_layer *L, ir_node *h, ir_node *x, int lo, int n,
                             int inv) {
  ir_graph *g = w->g;
  int D = w->m->dim;
  if (L->spline) {
    int per = 3 * L->bins - 1;
    ir_node *r = ir_rqs(g, x, ir_slice(g, h, lo * per, n * per), L->bins, L->bound, inv);
    ld_add(w, ir_rowsum(g, ir_slice(g, r, n, n)), 0);
    return ir_slice(g, r, 0, n);
  }
  ir_node *s = scale_fn(w, L->scale, ir_slice(g, h, lo, n)), *t = ir_slice(g, h, D + lo, n);
  ld_add(w, ir_rowsum(g, s), inv);
  if (inv)
    return ir_binary(g, IR_MUL, ir_binary(g, IR_SUB, x, t),
                     ir_unary(g, IR_EXP, ir_unary(g, IR_NEG, s)));
  return ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, x, ir_unary(g, IR_EXP, s)), t);
}

/* All dimensions at once, conditioned on cond: the parallel direction. */
static ir_node *ar_parallel(lw *w, const ir_layer *L, int p0, ir_node *cond, ir_node *x, int inv) {
  ir_node *h = made(w, L, p0, ir_concat(w->g, cond, w->ctx));
  return ar_transform(w, L, h, x, 0, w->m->dim, inv);
}

/*
** The sequential direction: output dimension i needs outputs 0..i-1, so
** D - 1 passes of the network each settle one more column (the others
** still zero, which the masks ignore); a last parallel pass on the settled
** outputs gives the final column and the log-det. One kernel, no calls.
*/
static ir_node *ar_sequential(lw *w, const ir_layer *L, int p0, ir_node *x, int inv) {
  ir_graph *g = w->g;
  int D = w->m->dim;
  ir_node *out = ir_pad(g, ir_slice(g, x, 0, 0), 0, D);   /* zeros */
  ir_node *ld = w->ld;
  for (int i = 0; i < D - 1; i++) {
    ir_node *h = made(w, L, p0, ir_concat(g, out, w->ctx));
    ir_node *v = ar_transform(w, L, h, ir_slice(g, x, i, 1), i, 1, inv);
    out = ir_binary(g, IR_ADD, out, ir_pad(g, v, i, D));
  }
  w->ld = ld;   /* only the last pass's log-det counts */
  return ar_parallel(w, L, p0, out, x, inv);
}

/* maf: density in parallel, sampling sequential; iaf the other way. */
static ir_node *autoregressive(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  int parallel = (L->kind == LAYER_MAF) == inv;
  return parallel ? ar_parallel(w, L, p0, u, u, inv) : ar_sequential(w, L, p0, u, inv);
}

/* ---- layers: inv = 0 generative (f), 1 density (f^-1) ---- */

static ir_node *coupling(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  ir_graph *g = w->g;
  int D = w->m->dim, d = D / 2;
  ir_node *a = ir_slice(g, u, 0, d), *b = ir_slice(g, u, d, D - d);
  ir_node *h = conditioner(w, L, p0, a), *y;
  if (L->kind == LAYER_ADDITIVE_COUPLING) {
    y = ir_binary(g, inv ? IR_SUB : IR_ADD, b, h);
  } else if (L->kind == LAYER_AFFINE_COUPLING) {
    ir_node *s = scale_fn(w, L->scale, ir_slice(g, h, 0, D - d));
    ir_node *t = ir_slice(g, h, D - d, D - d);
    if (inv)
      y = ir_binary(g, IR_MUL, ir_binary(g, IR_SUB, b, t),
                    ir_unary(g, IR_EXP, ir_unary(g, IR_NEG, s)));
    else
      y = ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, b, ir_unary(g, IR_EXP, s)), t);
    ld_add(w, ir_rowsum(g, s), inv);
  } else {
    ir_node *r = ir_rqs(g, b, h, L->bins, L->bound, inv);
    y = ir_slice(g, r, 0, D - d);
    ld_add(w, ir_rowsum(g, ir_slice(g, r, D - d, D - d)), 0);
  }
  return ir_concat(g, a, y);
}

static ir_node *permute(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  int D = w->m->dim;
  if (L->perm_kind == PERM_RANDOM)
    return ir_gather(w->g, u, ir_param_node(w->g, w->p, p0), NULL, inv);
  int *idx = ir_alloc(w->p->A, (size_t)(D ? D : 1) * sizeof *idx);
  for (int i = 0; i < D; i++) {
    int pi = L->perm_kind == PERM_REVERSE ? D - 1 - i : L->perm[i];
    if (inv) idx[pi] = i;   /* the inverse as a gather with the inverse list */
    else idx[i] = pi;
  }
  return ir_gather(w->g, u, NULL, idx, 0);
}

static ir_node *actnorm(lw *w, int p0, ir_node *u, int inv) {
  ir_graph *g = w->g;
  ir_node *ls = ir_param_node(g, w->p, p0), *bias = ir_param_node(g, w->p, p0 + 1);
  ld_add(w, ir_rowsum(g, ls), inv);
  if (inv)
    return ir_binary(g, IR_MUL, ir_binary(g, IR_SUB, u, bias),
                     ir_unary(g, IR_EXP, ir_unary(g, IR_NEG, ls)));
  return ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, u, ir_unary(g, IR_EXP, ls)), bias);
}

static ir_node *linear_lu(lw *w, int p0, ir_node *u, int inv) {
  ir_node *lu[5];
  for (int i = 0; i < 5; i++) lu[i] = ir_param_node(w->g, w->p, p0 + i);
  ld_add(w, ir_rowsum(w->g, lu[2]), inv);
  return ir_linear(w->g, u, ir_lu(w->g, inv ? IR_LU_WINV : IR_LU_W, lu), NULL);
}

static ir_node *layer(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  switch (L->kind) {
  case LAYER_AFFINE_COUPLING: case LAYER_ADDITIVE_COUPLING: case LAYER_SPLINE_COUPLING:
    return coupling(w, L, p0, u, inv);
  case LAYER_PERMUTE: return permute(w, L, p0, u, inv);
  case LAYER_ACTNORM: return actnorm(w, p0, u, inv);
  case LAYER_LINEAR_LU: return linear_lu(w, p0, u, inv);
  case LAYER_MAF: case LAYER_IAF: return autoregressive(w, L, p0, u, inv);
  default: return u;
  }
}

/* log N(z; 0, I) = -0.5 sum z^2 - 0.5 D ln(2 pi) */
static ir_node *base_logp(lw *w, ir_node *z) {
  ir_graph *g = w->g;
  ir_node *ss = ir_rowsum(g, ir_unary(g, IR_SQUARE, z));
  ir_node *t = ir_binary(g, IR_MUL, ss, ir_const(g, -0.5));
  return ir_binary(g, IR_ADD, t, ir_const(g, -0.5 * w->m->dim * log(2 * M_PI)));
}

/* A batch [B,1] log-det even when every term was zero or parameter-only:
** the sum of a zero-width slice is a batch zero. */
static ir_node *ld_batch(lw *w, ir_node *x) {
  ir_node *zero = ir_rowsum(w->g, ir_slice(w->g, x, 0, 0));
  return w->ld ? (w->ld->batch ? w->ld : ir_binary(w->g, IR_ADD, zero, w->ld)) : zero;
}

/* stop >= 0: only the density direction down to layer stop + 1. */
static ir_graph *lower_entry(ir_program *p, const int *p0, ir_entry e, int stop) {
  const ir_model *m = p->model;
  lw w = {ir_graph_new(p->A), p, m, NULL, NULL};
  ir_node *x = ir_input(w.g, 0, m->dim);
  if (m->context > 0) w.ctx = ir_input(w.g, 1, m->context);
  int density = e == IR_ENTRY_ENCODE || e == IR_ENTRY_ENCODE_LD || e == IR_ENTRY_LOGPROB;
  ir_node *u = x;
  if (stop >= 0) {
    for (int k = m->nlayers - 1; k > stop; k--) u = layer(&w, &m->layers[k], p0[k], u, 1);
    ir_output(w.g, u);
    ir_renumber(w.g);
    return w.g;
  }
  if (density)
    for (int k = m->nlayers - 1; k >= 0; k--) u = layer(&w, &m->layers[k], p0[k], u, 1);
  else
    for (int k = 0; k < m->nlayers; k++) u = layer(&w, &m->layers[k], p0[k], u, 0);
  if (e == IR_ENTRY_LOGPROB) {
    ir_output(w.g, ir_binary(w.g, IR_ADD, base_logp(&w, u), ld_batch(&w, x)));
  } else {
    ir_output(w.g, u);
    if (e == IR_ENTRY_ENCODE_LD || e == IR_ENTRY_DECODE_LD) ir_output(w.g, ld_batch(&w, x));
  }
  ir_renumber(w.g);
  return w.g;
}

static int param_cap(const ir_model *m) {
  int cap = 0;
  for (int k = 0; k < m->nlayers; k++)
    cap += has_net(&m->layers[k]) ? 2 * (m->layers[k].net.nhidden + 1) : 5;
  return cap;
}

ir_program *ir_lower(ir_arena *A, const ir_model *m, char *err, size_t errlen) {
  ir_program *p = ir_alloc(A, sizeof *p);
  p->A = A;
  p->model = m;
  int cap = param_cap(m);
  p->params = ir_alloc(A, (size_t)(cap ? cap : 1) * sizeof *p->params);
  int *p0 = ir_alloc(A, (size_t)(m->nlayers + 1) * sizeof *p0);
  for (int k = 0; k < m->nlayers; k++) {
    p0[k] = layer_params(p, cap, k, &m->layers[k]);
    if (p0[k] < 0) {
      snprintf(err, errlen, "%s: layer %d (%s) cannot be lowered", m->name, k,
               ir_layer_name(m->layers[k].kind));
      return NULL;
    }
  }
  p->layer_param0 = p0;
  for (int e = 0; e < IR_NENTRY; e++) p->entry[e] = lower_entry(p, p0, (ir_entry)e, -1);
  return p;
}

ir_graph *ir_lower_entry(ir_program *p, ir_entry e) {
  return lower_entry(p, p->layer_param0, e, -1);
}

ir_graph *ir_lower_prefix(ir_program *p, int k) {
  return lower_entry(p, p->layer_param0, IR_ENTRY_ENCODE, k);
}

long ir_param_count(const ir_program *p) {
  long n = 0;
  for (int i = 0; i < p->nparams; i++) {
    const ir_param *pa = &p->params[i];
    if (pa->dtype != IR_F32 || pa->init == INIT_LU_SIGN) continue;
    long D = pa->shape[0];
    if (pa->init == INIT_LU_LOWER || pa->init == INIT_LU_UPPER) n += D * (D - 1) / 2;
    else n += pa->ndim == 2 ? (long)pa->shape[0] * pa->shape[1] : pa->shape[0];
  }
  return n;
}
