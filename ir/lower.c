/*
** ir/lower.c: a checked model to a program (parameter table + one graph
** per entry). Each layer lowers in both directions with its log-det term,
** following section 4 of flow-language.md; decode applies f_1 .. f_K and
** adds log|det J_f|, encode applies the inverses from f_K back and adds
** log|det J_f^-1| = -log|det J_f|.
*/
#include "ir.h"
#include "rt_made.h"   /* header only: the MADE degrees, shared with the runtime */
#include "rt_ode.h"    /* RT_K_ODE_MAX only */

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
  int train;              /* the train graph's log_prob: series estimators */
  int want_ld;            /* the entry uses the log-det (cnf: integrate the trace) */
  ir_node *x0;            /* the entry's input (an sde's noise is keyed by its rows) */
  ir_node *noise;         /* its noise input (slot 2), made when first needed */
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
  case LAYER_RESIDUAL: case LAYER_CNF: case LAYER_SDE: return D;
  default: return 0;
  }
}

static int has_net(const ir_layer *L) {
  return L->kind == LAYER_AFFINE_COUPLING || L->kind == LAYER_ADDITIVE_COUPLING ||
         L->kind == LAYER_SPLINE_COUPLING || L->kind == LAYER_MAF || L->kind == LAYER_IAF ||
         L->kind == LAYER_RESIDUAL || L->kind == LAYER_CNF || L->kind == LAYER_SDE;
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
  case LAYER_RESIDUAL: {   /* the net, then one power-iteration vector per linear layer */
    int first = net_params(p, cap, k, &L->net, D + m->context, D);
    for (int j = 0; j <= L->net.nhidden && first >= 0; j++) {
      int o = j < L->net.nhidden ? L->net.hidden[j] : D;
      if (add_param(p, cap, ir_sprintf(p->A, "flow.%d.net.%d.sn_u", k, j), IR_F32, 1, o, 0,
                    INIT_SN_U, k) < 0)
        return -1;
    }
    return first;
  }
  case LAYER_CNF: case LAYER_SDE:   /* v(z, t) = net([z, c, temb(t)]) */
    return net_params(p, cap, k, &L->net, D + m->context + L->time_k, D);
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

/*
** MADE networks by degree (flow-language.md 5), for the sequential
** direction. Units of equal degree form
** a group; a hidden group of degree m sees exactly the groups below it of
** degree <= m, and the outputs of dim i those of degree <= i. So each group
** is one dense linear map (IR_PGATHER takes its block out of the stored
** weight) of the concatenation of the groups it sees: the masks' zero
** blocks are never multiplied. Groups are made on demand and memoised, so
** the sequential direction computes each hidden group once, in the pass
** where its inputs are settled, and every later pass reuses it.
*/
typedef struct madeg {
  lw *w;
  const ir_layer *L;
  int p0, D, C, per, nl;    /* per: outputs of a dim (2 affine, 3K-1 spline) */
  ir_node **in;             /* [D+1]: input group of degree m (0: the context) */
  ir_node **memo;           /* [nl][D+1]: hidden group (j, m) */
  ir_node **cat;            /* [nl][D+1]: made_inputs (j, m), once made */
  ir_node *none;            /* a [B,0] tensor */
} madeg;

static int made_width(const madeg *M, int j) {   /* input width of linear layer j */
  return j == 0 ? M->D + M->C : M->L->net.hidden[j - 1];
}

static int made_deg(const madeg *M, int j, int i) {   /* degree of input i of layer j */
  return j == 0 ? rt_made_deg_in(M->D, i) : rt_made_deg_hidden(M->D, M->C, i);
}

static ir_node *made_hidden(madeg *M, int j, int m);

/* Input group of degree m of linear layer j, or NULL when empty. */
static ir_node *made_group(madeg *M, int j, int m) {
  return j == 0 ? M->in[m] : made_hidden(M, j - 1, m);
}

/* The concatenation of layer j's input groups of degree <= m, and in cols
** their indices in the layer's natural input order. */
static ir_node *made_inputs(madeg *M, int j, int m, int *cols, int *ncols) {
  ir_node *x = M->none;
  *ncols = 0;
  for (int d = 0; d <= m; d++) {
    ir_node *gr = made_group(M, j, d), **memo = &M->cat[j * (M->D + 1) + d];
    for (int i = 0; gr && i < made_width(M, j); i++)
      if (made_deg(M, j, i) == d) cols[(*ncols)++] = i;
    if (gr && !*memo) *memo = x == M->none ? gr : ir_concat(M->w->g, x, gr);
    if (gr) x = *memo;
  }
  return x;
}

/* Linear layer j on the rows `rows` of its weight, fed the inputs of
** degree <= m. */
static ir_node *made_block(madeg *M, int j, int m, const int *rows, int nrows) {
  ir_graph *g = M->w->g;
  int *cols = ir_alloc(M->w->p->A, (size_t)made_width(M, j) * sizeof *cols + 1), ncols;
  ir_node *x = made_inputs(M, j, m, cols, &ncols);
  ir_node *W = ir_pgather(g, ir_param_node(g, M->w->p, M->p0 + 2 * j), nrows, rows, ncols, cols);
  int zero = 0;
  ir_node *b = ir_pgather(g, ir_param_node(g, M->w->p, M->p0 + 2 * j + 1), 1, &zero, nrows, rows);
  return ir_linear(g, x, W, b);
}

/* Hidden layer j's group of degree m (after the activation), or NULL. */
static ir_node *made_hidden(madeg *M, int j, int m) {
  ir_node **slot = &M->memo[j * (M->D + 1) + m];
  if (*slot) return *slot;
  int size = M->L->net.hidden[j], n = 0;
  int *rows = ir_alloc(M->w->p->A, (size_t)size * sizeof *rows);
  for (int k = 0; k < size; k++)
    if (rt_made_deg_hidden(M->D, M->C, k) == m) rows[n++] = k;
  if (n == 0) return NULL;
  return *slot = ir_unary(M->w->g, act_op(M->L->net.act), made_block(M, j, m, rows, n));
}

/* The network outputs of dim i: [s_i, t_i] or the spline's 3K-1 values. */
static ir_node *made_out(madeg *M, int i) {
  int *rows = ir_alloc(M->w->p->A, (size_t)M->per * sizeof *rows);
  for (int k = 0; k < M->per; k++) rows[k] = M->L->spline ? i * M->per + k : i + k * M->D;
  return made_block(M, M->nl - 1, i, rows, M->per);
}

static void made_init(madeg *M, lw *w, const ir_layer *L, int p0, ir_node *any) {
  int D = w->m->dim;
  *M = (madeg){w, L, p0, D, w->m->context, L->spline ? 3 * L->bins - 1 : 2,
               L->net.nhidden + 1, NULL, NULL, NULL, ir_slice(w->g, any, 0, 0)};
  M->in = ir_alloc(w->p->A, (size_t)(D + 1) * sizeof *M->in);
  M->memo = ir_alloc(w->p->A, (size_t)(M->nl * (D + 1)) * sizeof *M->memo);
  M->cat = ir_alloc(w->p->A, (size_t)(M->nl * (D + 1)) * sizeof *M->cat);
  M->in[0] = w->ctx;
}

/*
** The elementwise transform of an autoregressive layer on the n columns x
** given their network outputs h ([s | t] affine, n rows of 3K-1 spline):
** forward (inv = 0) y = x exp(s) + t or the spline, or its inverse. Adds its
** log-det to w.
*/
static ir_node *ar_transform(lw *w, const ir_layer *L, ir_node *h, ir_node *x, int n, int inv) {
  ir_graph *g = w->g;
  if (L->spline) {
    ir_node *r = ir_rqs(g, x, h, L->bins, L->bound, inv);
    ld_add(w, ir_rowsum(g, ir_slice(g, r, n, n)), 0);
    return ir_slice(g, r, 0, n);
  }
  ir_node *s = scale_fn(w, L->scale, ir_slice(g, h, 0, n)), *t = ir_slice(g, h, n, n);
  ld_add(w, ir_rowsum(g, s), inv);
  if (inv)
    return ir_binary(g, IR_MUL, ir_binary(g, IR_SUB, x, t),
                     ir_unary(g, IR_EXP, ir_unary(g, IR_NEG, s)));
  return ir_binary(g, IR_ADD, ir_binary(g, IR_MUL, x, ir_unary(g, IR_EXP, s)), t);
}

/* The mask kind of MADE linear layer j. */
static int made_kind(const ir_net *net, int j) {
  int first = j == 0, last = j == net->nhidden;
  return first ? (last ? IR_MASK_IN_OUT : IR_MASK_IN_HIDDEN)
               : (last ? IR_MASK_HIDDEN_OUT : IR_MASK_HIDDEN_HIDDEN);
}

/*
** The parallel direction: all dimensions at once, one masked matrix product
** a layer. For evaluation the products are staircases: inputs ordered
** [context | u] and hidden units sorted by degree (a load-time gather of
** the masked weights) make every row's connections a prefix, and the sum
** of each row stops there (IR_LINEAR's idx): about half of the zero
** blocks are never multiplied. At large batch BLAS multiplies them all,
** which still beats D small products. The train graph keeps plain masked
** products, whose gradients autodiff knows.
*/
static ir_node *ar_parallel(lw *w, const ir_layer *L, int p0, ir_node *cond, ir_node *x, int inv) {
  const ir_net *net = &L->net;
  int D = w->m->dim, C = w->m->context, per = L->spline ? 3 * L->bins - 1 : 0;
  ir_graph *g = w->g;
  if (w->train) {
    ir_node *h = ir_concat(g, cond, w->ctx);
    for (int j = 0; j <= net->nhidden; j++) {
      ir_node *W = ir_made_mask(g, ir_param_node(g, w->p, p0 + 2 * j), made_kind(net, j), D, C, per);
      h = ir_linear(g, h, W, ir_param_node(g, w->p, p0 + 2 * j + 1));
      if (j < net->nhidden) h = ir_unary(g, act_op(net->act), h);
    }
    return ar_transform(w, L, h, x, D, inv);
  }
  ir_node *h = ir_concat(g, w->ctx, cond);
  int *cols = ir_alloc(w->p->A, (size_t)(D + C) * sizeof *cols);
  for (int i = 0; i < D + C; i++) cols[i] = i < C ? D + i : i - C;
  for (int j = 0; j <= net->nhidden; j++) {
    ir_node *Wp = ir_param_node(g, w->p, p0 + 2 * j);
    int out = Wp->rows, in = Wp->n, kind = made_kind(net, j), zero = 0;
    int *rows = ir_alloc(w->p->A, (size_t)out * sizeof *rows);
    int *len = ir_alloc(w->p->A, (size_t)out * sizeof *len);
    int nr = 0;
    if (j == net->nhidden)
      for (int o = 0; o < out; o++) rows[nr++] = o;
    else   /* by degree, stably */
      for (int d = 0; d <= D; d++)
        for (int o = 0; o < out; o++)
          if (rt_made_deg_hidden(D, C, o) == d) rows[nr++] = o;
    for (int o = 0; o < out; o++) {
      len[o] = 0;
      for (int i = 0; i < in; i++)
        if (rt_made_connected(kind, D, C, per, rows[o], cols[i])) len[o] = i + 1;
    }
    ir_node *W = ir_pgather(g, ir_made_mask(g, Wp, kind, D, C, per), out, rows, in, cols);
    ir_node *b = ir_pgather(g, ir_param_node(g, w->p, p0 + 2 * j + 1), 1, &zero, out, rows);
    h = ir_linear_prefix(g, h, W, b, len);
    if (j < net->nhidden) h = ir_unary(g, act_op(net->act), h);
    cols = rows;
  }
  return ar_transform(w, L, h, x, D, inv);
}

/*
** The sequential direction: dim i needs the outputs 0..i-1. Pass i makes
** the network outputs of dim i from the settled columns, reusing every
** hidden group already made, and settles column i; all in one kernel.
*/
static ir_node *ar_sequential(lw *w, const ir_layer *L, int p0, ir_node *x, int inv) {
  ir_graph *g = w->g;
  madeg M;
  made_init(&M, w, L, p0, x);
  ir_node *out = NULL;
  for (int i = 0; i < M.D; i++) {
    ir_node *v = ar_transform(w, L, made_out(&M, i), ir_slice(g, x, i, 1), 1, inv);
    M.in[i + 1] = v;
    out = out ? ir_concat(g, out, v) : v;
  }
  return out;
}

/* maf: density in parallel, sampling sequential; iaf the other way. */
static ir_node *autoregressive(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  int parallel = (L->kind == LAYER_MAF) == inv;
  return parallel ? ar_parallel(w, L, p0, u, u, inv) : ar_sequential(w, L, p0, u, inv);
}

/* ---- residual layers (flow-language.md 6): u = y + g(y) ---- */

/* g's spectrally normalised weights and, once res_g has run at a point,
** its hidden pre-activations there (for the derivatives). */
typedef struct resnet {
  int nl;                 /* linear layers */
  ir_act act;
  ir_node **W, **b, **pre;
} resnet;

static void res_weights(lw *w, const ir_layer *L, int p0, resnet *r) {
  ir_graph *g = w->g;
  r->nl = L->net.nhidden + 1;
  r->act = L->net.act;
  r->W = ir_alloc(w->p->A, 3 * (size_t)r->nl * sizeof *r->W);
  r->b = r->W + r->nl;
  r->pre = r->b + r->nl;
  for (int j = 0; j < r->nl; j++) {
    ir_node *u = ir_param_node(g, w->p, p0 + 2 * r->nl + j);
    r->W[j] = ir_specnorm(g, ir_param_node(g, w->p, p0 + 2 * j), u, L->lipschitz);
    r->b[j] = ir_param_node(g, w->p, p0 + 2 * j + 1);
  }
}

/* g(y) = net([y, c]); remembers the pre-activations. */
static ir_node *res_g(lw *w, resnet *r, ir_node *y) {
  ir_node *h = ir_concat(w->g, y, w->ctx);
  for (int j = 0; j < r->nl; j++) {
    h = ir_linear(w->g, h, r->W[j], r->b[j]);
    if (j + 1 < r->nl) h = ir_unary(w->g, act_op(r->act), r->pre[j] = h);
  }
  return h;
}

/* J_g t for a tangent t of g's whole input [y, c] (forward mode). */
static ir_node *res_jvp(lw *w, resnet *r, ir_node *t) {
  t = ir_linear(w->g, t, r->W[0], NULL);
  for (int j = 1; j < r->nl; j++)
    t = ir_linear(w->g, ir_binary(w->g, IR_MUL, t, ir_dact(w->g, act_op(r->act), r->pre[j - 1])),
                  r->W[j], NULL);
  return t;
}

/* J_g^T v, the y part (reverse mode). */
static ir_node *res_vjp(lw *w, resnet *r, ir_node *v) {
  for (int j = r->nl - 1; j > 0; j--)
    v = ir_binary(w->g, IR_MUL, ir_linear_t(w->g, v, r->W[j]),
                  ir_dact(w->g, act_op(r->act), r->pre[j - 1]));
  return ir_slice(w->g, ir_linear_t(w->g, v, r->W[0]), 0, w->m->dim);
}

/* log det(I + J_g(y)) from the D columns J_g e_i, by LU per sample. */
static ir_node *res_exact(lw *w, resnet *r, ir_node *y) {
  ir_graph *g = w->g;
  int D = w->m->dim, C = w->m->context;
  ir_node *one = ir_binary(g, IR_ADD, ir_rowsum(g, ir_slice(g, y, 0, 0)), ir_const(g, 1.0));
  ir_node *X = NULL;   /* row i: J e_i, so X = J^T, whose det is J's */
  for (int i = 0; i < D; i++) {
    ir_node *col = res_jvp(w, r, ir_pad(g, one, i, D + C));
    X = X ? ir_concat(g, X, col) : col;
  }
  return ir_logdet(g, X, D);
}

/* Terms of the roulette beyond `terms`: P(G >= extra) < 1e-6, at most 64. */
static int res_extra(const ir_layer *L) {
  if (L->roulette <= 0) return 0;
  int e = (int)ceil(log(1e-6) / log1p(-L->roulette));
  return e < 64 ? e : 64;
}

/* Column k of q times c_k, for k = 0..n-1, side by side. */
static ir_node *res_coefs(lw *w, ir_node *q, int n, double (*c)(int)) {
  ir_node *out = NULL;
  for (int k = 0; k < n; k++) {
    ir_node *t = ir_binary(w->g, IR_MUL, ir_slice(w->g, q, k, 1), ir_const(w->g, c(k + 1)));
    out = out ? ir_concat(w->g, out, t) : t;
  }
  return out;
}
static double coef_est(int k) { return (k % 2 ? 1.0 : -1.0) / k; }   /* (-1)^(k+1)/k */
static double coef_grad(int k) { return k % 2 ? -1.0 : 1.0; }        /* (-1)^k */

/* x without its first column, a zero column appended: the next term's. */
static ir_node *res_shift(lw *w, ir_node *x) {
  return ir_pad(w->g, ir_slice(w->g, x, 1, x->n - 1), 0, x->n);
}

/*
** The Residual Flows estimator of log det(I + J) for training: value
** sum_k (-1)^(k+1)/k q_k v^T J^k v (Hutchinson probe v, roulette weights
** q_k from the noise input), gradient that of A^T J v with A = sum_k
** (-1)^k q_k (J^T)^k v held constant: the Neumann-series estimator of
** Chen et al. (2019), unbiased for the series up to kmax terms.
**
** The terms run as a loop in the kernel (IR_FIX_BEGIN/END), not unrolled:
** its state is [w | A | estimate | a | b | m], w = (J^T)^k v, and a, b, m
** the remaining terms' estimate and gradient weights and 0/1 masks; each
** pass takes their first column and shifts them. When a sample's terms
** are used up w becomes 0 and its state stops changing, which ends its
** loop: a sample costs N + 2 products with J^T, not kmax.
*/
static ir_node *res_series(lw *w, const ir_layer *L, resnet *r, int k, int off) {
  ir_graph *g = w->g;
  int D = w->m->dim, kmax = L->terms + res_extra(L);
  if (!w->noise) w->noise = ir_input(g, 2, w->p->noise_width);
  ir_node *v = ir_slice(g, w->noise, off, D), *q = ir_slice(g, w->noise, off + D, kmax);
  ir_node *one = ir_binary(g, IR_ADD, ir_rowsum(g, ir_slice(g, v, 0, 0)), ir_const(g, 1.0));
  ir_node *m = ir_binary(g, IR_SUB, one, ir_unary(g, IR_RELU, ir_binary(g, IR_SUB, one, q)));
  ir_node *st = ir_concat(g, ir_concat(g, v, v), ir_rowsum(g, ir_slice(g, v, 0, 0)));
  st = ir_concat(g, ir_concat(g, st, res_coefs(w, q, kmax, coef_est)),
                 ir_concat(g, res_coefs(w, q, kmax, coef_grad), m));
  ir_node *s = ir_fix_begin(g, st, k);
  int o = 2 * D + 1;   /* where a starts */
  ir_node *wk = ir_slice(g, s, 0, D), *a = ir_slice(g, s, o, kmax);
  ir_node *b = ir_slice(g, s, o + kmax, kmax), *mk = ir_slice(g, s, o + 2 * kmax, kmax);
  ir_node *wn = ir_binary(g, IR_MUL, res_vjp(w, r, wk), ir_slice(g, mk, 0, 1));
  ir_node *dot = ir_rowsum(g, ir_binary(g, IR_MUL, wn, v));
  ir_node *est = ir_binary(g, IR_ADD, ir_slice(g, s, 2 * D, 1),
                           ir_binary(g, IR_MUL, dot, ir_slice(g, a, 0, 1)));
  ir_node *acc = ir_binary(g, IR_ADD, ir_slice(g, s, D, D),
                           ir_binary(g, IR_MUL, wn, ir_slice(g, b, 0, 1)));
  ir_node *next = ir_concat(g, ir_concat(g, ir_concat(g, wn, acc), est),
                            ir_concat(g, ir_concat(g, res_shift(w, a), res_shift(w, b)),
                                      res_shift(w, mk)));
  /* kmax + 2 passes settle every sample (but one with a NaN, which fails
     the kernel); tol: an unchanged state */
  ir_node *fin = ir_fix_end(g, s, next, kmax + 2, 1e-30, k);
  ir_node *jv = res_jvp(w, r, ir_pad(g, v, 0, D + w->m->context));
  ir_node *sur = ir_rowsum(g, ir_binary(g, IR_MUL, ir_stopgrad(g, ir_slice(g, fin, D, D)), jv));
  return ir_binary(g, IR_ADD, ir_stopgrad(g, ir_slice(g, fin, 2 * D, 1)),
                   ir_binary(g, IR_SUB, sur, ir_stopgrad(g, sur)));
}

/* Density: u = y + g(y), log|det| += log det(I + J_g(y)). Sampling: the
** fixed-point loop y <- u - g(y), then -log det at the y it found. */
static ir_node *residual(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  ir_graph *g = w->g;
  int k = (int)(L - w->m->layers);
  resnet r;
  res_weights(w, L, p0, &r);
  if (inv) {
    ir_node *gy = res_g(w, &r, u);
    if (w->train && L->series) ld_add(w, res_series(w, L, &r, k, w->p->layer_noise0[k]), 0);
    else ld_add(w, res_exact(w, &r, u), 0);
    return ir_binary(g, IR_ADD, u, gy);
  }
  ir_node *yv = ir_fix_begin(g, u, k);
  ir_node *y = ir_fix_end(g, yv, ir_binary(g, IR_SUB, u, res_g(w, &r, yv)), L->iters, L->tol, k);
  res_g(w, &r, y);
  ld_add(w, res_exact(w, &r, y), 1);
  return y;
}

/* ---- continuous flows (flow-language.md 7): dz/dt = v(z, t) ---- */

/*
** The velocity net with its first linear layer split by its inputs:
** W [z, c, temb(t)] + b = W_z z + W_c c + (W_t temb(t) + b). W_c c is the
** same at every step of a sample: computed once, before the solver. On a
** fixed grid the bracket depends on the parameters alone: one prep table
** per solver stage, a row per step (IR_TEMB, then a param-class
** IR_LINEAR), computed when the weights are loaded; the kernels read a row
** of it.
*/
typedef struct vnet {
  int nl, D, C, K, H;     /* linear layers; H: the first one's outputs */
  ir_act act;
  ir_node *Wz, *Wt;       /* [H, D], [H, K] */
  ir_node *hc;            /* W_c c [B, H], once per sample (NULL: no context) */
  ir_node **W, **b;       /* the net's layers (W[0] as Wz, W_c and Wt) */
  ir_node **pre;          /* hidden pre-activations of the last vnet_v */
} vnet;

static int *iota(ir_arena *A, int lo, int n) {
  int *v = ir_alloc(A, (size_t)(n ? n : 1) * sizeof *v);
  for (int i = 0; i < n; i++) v[i] = lo + i;
  return v;
}

static void vnet_init(lw *w, const ir_layer *L, int p0, vnet *vn) {
  ir_graph *g = w->g;
  ir_arena *A = w->p->A;
  int nl = L->net.nhidden + 1, D = w->m->dim, C = w->m->context;
  *vn = (vnet){nl, D, C, L->time_k, nl > 1 ? L->net.hidden[0] : D, L->net.act, NULL, NULL,
               NULL, NULL, NULL, NULL};
  vn->W = ir_alloc(A, 3 * (size_t)nl * sizeof *vn->W);
  vn->b = vn->W + nl;
  vn->pre = vn->b + nl;
  for (int j = 0; j < nl; j++) {
    vn->W[j] = ir_param_node(g, w->p, p0 + 2 * j);
    vn->b[j] = ir_param_node(g, w->p, p0 + 2 * j + 1);
  }
  int *rows = iota(A, 0, vn->H);
  vn->Wz = ir_pgather(g, vn->W[0], vn->H, rows, D, iota(A, 0, D));
  vn->Wt = ir_pgather(g, vn->W[0], vn->H, rows, vn->K, iota(A, D + C, vn->K));
  if (C > 0)   /* the context is the same at every step: its product once */
    vn->hc = ir_linear(g, w->ctx, ir_pgather(g, vn->W[0], vn->H, rows, C, iota(A, D, C)), NULL);
}

/* The first layer's bias rows W_t temb(t_r) + b at t_r = t0 + r dt. */
static ir_node *vnet_bias_table(lw *w, const ir_layer *L, vnet *vn, int rows, double t0,
                                double dt) {
  ir_node *T = ir_temb_table(w->g, L->time == TIME_SINCOS, vn->K, rows, t0, dt);
  return ir_linear(w->g, T, vn->Wt, vn->b[0]);
}

/* v(z, t) given its first-layer bias row; remembers the pre-activations. */
static ir_node *vnet_v(lw *w, vnet *vn, ir_node *z, ir_node *bias) {
  ir_node *h = ir_linear(w->g, z, vn->Wz, bias);
  if (vn->hc) h = ir_binary(w->g, IR_ADD, h, vn->hc);
  for (int j = 1; j < vn->nl; j++)
    h = ir_linear(w->g, ir_unary(w->g, act_op(vn->act), vn->pre[j - 1] = h), vn->W[j], vn->b[j]);
  return h;
}

/* dv/dz t for a tangent t of z (forward mode), at the last vnet_v's point. */
static ir_node *vnet_jvp(lw *w, vnet *vn, ir_node *t) {
  ir_graph *g = w->g;
  t = ir_linear(g, t, vn->Wz, NULL);
  for (int j = 1; j < vn->nl; j++)
    t = ir_linear(g, ir_binary(g, IR_MUL, t, ir_dact(g, act_op(vn->act), vn->pre[j - 1])),
                  vn->W[j], NULL);
  return t;
}

/*
** The exact trace of a net with one or two hidden layers in one piece:
** tr(W1 f0' Z) = f0' . c and tr(W2 f1' W1 f0' Z) = f1' . (Q f0'), with c
** and Q parameter-only (IR_TRACE_COEF, once per load): one product of the
** hidden sizes per stage, instead of D directional derivatives.
*/
static ir_node *vnet_trace_fused(lw *w, vnet *vn) {
  ir_graph *g = w->g;
  ir_op f = act_op(vn->act);
  ir_node *d0 = ir_dact(g, f, vn->pre[0]);
  if (vn->nl == 2)
    return ir_rowsum(g, ir_binary(g, IR_MUL, d0, ir_trace_coef(g, vn->W[0], vn->W[1], NULL, vn->D)));
  ir_node *Q = ir_trace_coef(g, vn->W[0], vn->W[1], vn->W[2], vn->D);
  return ir_rowsum(g, ir_binary(g, IR_MUL, ir_dact(g, f, vn->pre[1]), ir_linear(g, d0, Q, NULL)));
}

/* Above this dim the exact trace's D directional derivatives run as a
** loop in the kernel rather than written out (compile time and code size
** grow with D x depth otherwise: pi0's head has D = 350). */
#define CNF_TRACE_UNROLL 8

/*
** sum_i (dv/dz e_i)_i as a counted loop over i inside the solver's loop:
** the state [acc | e] carries the one-hot e_i, shifted one place a run.
** (Not in the train graph: autodiff differentiates written-out steps.)
*/
static ir_node *vnet_trace_loop(lw *w, vnet *vn, ir_node *z, int k) {
  ir_graph *g = w->g;
  int D = vn->D;
  ir_node *zero = ir_rowsum(g, ir_slice(g, z, 0, 0));
  ir_node *e0 = ir_pad(g, ir_binary(g, IR_ADD, zero, ir_const(g, 1.0)), 0, D);
  ir_node *s = ir_fix_begin(g, ir_concat(g, zero, e0), k);
  ir_node *e = ir_slice(g, s, 1, D);
  ir_node *tr = ir_rowsum(g, ir_binary(g, IR_MUL, vnet_jvp(w, vn, e), e));
  ir_node *next = ir_concat(g, ir_binary(g, IR_ADD, ir_slice(g, s, 0, 1), tr),
                            ir_pad(g, ir_slice(g, e, 0, D - 1), 1, D));
  return ir_slice(g, ir_loop_end(g, s, next, D, k), 0, 1);
}

/* tr(dv/dz): exactly (fused, or from the D columns dv/dz e_i); or
** Hutchinson's e^T (dv/dz) e with the layer's Rademacher probe e
** (training only). */
static ir_node *vnet_trace(lw *w, const ir_layer *L, vnet *vn, ir_node *z, int k) {
  ir_graph *g = w->g;
  int D = vn->D;
  if (w->train && L->hutchinson) {
    if (!w->noise) w->noise = ir_input(g, 2, w->p->noise_width);
    ir_node *e = ir_slice(g, w->noise, w->p->layer_noise0[k], D);
    return ir_rowsum(g, ir_binary(g, IR_MUL, e, vnet_jvp(w, vn, e)));
  }
  if (vn->nl == 2 || vn->nl == 3) return vnet_trace_fused(w, vn);
  if (D > CNF_TRACE_UNROLL && !w->train) return vnet_trace_loop(w, vn, z, k);
  ir_node *one = ir_binary(g, IR_ADD, ir_rowsum(g, ir_slice(g, z, 0, 0)), ir_const(g, 1.0));
  ir_node *diag = NULL;
  for (int i = 0; i < D; i++) {
    ir_node *c = ir_slice(g, vnet_jvp(w, vn, ir_pad(g, one, i, D)), i, 1);
    diag = diag ? ir_concat(g, diag, c) : c;
  }
  return ir_rowsum(g, diag);
}

/* Butcher tableaus of the fixed-step solvers (all explicit, each stage
** reading the one before): stage i at t + c[i] h and z + a[i] h k_{i-1};
** z' = z + h sum bw[i] k_i. */
static const struct { int s; double c[4], a[4], bw[4]; } tableau[] = {
  [SOLVER_EULER] = {1, {0}, {0}, {1}},
  [SOLVER_HEUN] = {2, {0, 1}, {0, 1}, {0.5, 0.5}},
  [SOLVER_RK4] = {4, {0, 0.5, 0.5, 1}, {0, 0.5, 0.5, 1}, {1 / 6.0, 1 / 3.0, 1 / 3.0, 1 / 6.0}},
};

static ir_node *scaled(lw *w, ir_node *x, double c) {
  return c == 1 ? x : ir_binary(w->g, IR_MUL, x, ir_const(w->g, c));
}

static ir_node *plus(lw *w, ir_node *a, ir_node *b) {
  return a ? ir_binary(w->g, IR_ADD, a, b) : b;
}

/* dopri5's first attempted step; the controller adapts it from there. */
#define DOPRI5_H0 0.05

/* A cnf being lowered: the net, the step h and each stage's bias table. */
typedef struct cnfl {
  const ir_layer *L;
  int k, N;
  double h;
  vnet vn;
  ir_node *tab[4];
} cnfl;

/*
** One solver step from (z, ld) with the first-layer biases bias[i] of its
** stages; ld (NULL when the log-det is not wanted) integrates the trace.
*/
static ir_node *cnf_step(lw *w, cnfl *c, ir_node *z, ir_node **ld, ir_node *const *bias) {
  int S = tableau[c->L->solver].s;
  ir_node *k = NULL, *ksum = NULL, *tsum = NULL;
  for (int i = 0; i < S; i++) {
    ir_node *zi = i ? ir_binary(w->g, IR_ADD, z, scaled(w, k, tableau[c->L->solver].a[i] * c->h)) : z;
    k = vnet_v(w, &c->vn, zi, bias[i]);
    ksum = plus(w, ksum, scaled(w, k, tableau[c->L->solver].bw[i]));
    if (*ld) tsum = plus(w, tsum, scaled(w, vnet_trace(w, c->L, &c->vn, zi, c->k),
                                         tableau[c->L->solver].bw[i]));
  }
  if (*ld) *ld = ir_binary(w->g, IR_ADD, *ld, scaled(w, tsum, c->h));
  return ir_binary(w->g, IR_ADD, z, scaled(w, ksum, c->h));
}

/* The train graph: every step written out, so that autodiff sees them;
** stage i of step n reads row n of its table. */
static ir_node *cnf_unrolled(lw *w, cnfl *c, ir_node *z, ir_node **ld) {
  int S = tableau[c->L->solver].s;
  int *cols = iota(w->p->A, 0, c->vn.H);
  for (int n = 0; n < c->N; n++) {
    ir_node *bias[4];
    for (int i = 0; i < S; i++) bias[i] = ir_pgather(w->g, c->tab[i], 1, &n, c->vn.H, cols);
    z = cnf_step(w, c, z, ld, bias);
  }
  return z;
}

/* Evaluation: the steps as a counted loop in the kernel over the state
** [z | ld]; stage i of run n reads row n of its table. */
static ir_node *cnf_loop(lw *w, cnfl *c, ir_node *z, ir_node **ld) {
  ir_graph *g = w->g;
  int S = tableau[c->L->solver].s, D = w->m->dim;
  ir_node *s = ir_fix_begin(g, *ld ? ir_concat(g, z, *ld) : z, c->k);
  ir_node *bias[4], *l = *ld ? ir_slice(g, s, D, 1) : NULL;
  for (int i = 0; i < S; i++) bias[i] = ir_loop_row(g, c->tab[i], s);
  ir_node *zn = cnf_step(w, c, ir_slice(g, s, 0, D), l ? &l : ld, bias);
  ir_node *fin = ir_loop_end(g, s, l ? ir_concat(g, zn, l) : zn, c->N, c->k);
  if (*ld) *ld = ir_slice(g, fin, D, 1);
  return ir_slice(g, fin, 0, D);
}

/* v(z, t) at a time per sample (adaptive steps): the time columns are
** read, not folded. */
static ir_node *vnet_vt(lw *w, const ir_layer *L, vnet *vn, ir_node *z, ir_node *t) {
  ir_graph *g = w->g;
  ir_node *te = ir_linear(g, ir_temb(g, L->time == TIME_SINCOS, vn->K, t), vn->Wt, vn->b[0]);
  ir_node *h = ir_binary(g, IR_ADD, ir_linear(g, z, vn->Wz, NULL), te);
  if (vn->hc) h = ir_binary(g, IR_ADD, h, vn->hc);
  for (int j = 1; j < vn->nl; j++)
    h = ir_linear(g, ir_unary(g, act_op(vn->act), vn->pre[j - 1] = h), vn->W[j], vn->b[j]);
  return h;
}

/* Dormand-Prince 5(4): nodes, coefficients, 5th-order weights and the
** error weights b5 - b4. */
static const double dp_c[7] = {0, 0.2, 0.3, 0.8, 8.0 / 9, 1, 1};
static const double dp_a[7][6] = {
  {0},
  {1.0 / 5},
  {3.0 / 40, 9.0 / 40},
  {44.0 / 45, -56.0 / 15, 32.0 / 9},
  {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
  {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
  {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}};
static const double dp_e[7] = {35.0 / 384 - 5179.0 / 57600, 0, 500.0 / 1113 - 7571.0 / 16695,
                               125.0 / 192 - 393.0 / 640, -2187.0 / 6784 + 92097.0 / 339200,
                               11.0 / 84 - 187.0 / 2100, -1.0 / 40};

/* sum_j coef[j] k[j] over j < n, NULL when every coefficient is zero. */
static ir_node *combo(lw *w, ir_node *const *k, const double *coef, int n) {
  ir_node *acc = NULL;
  for (int j = 0; j < n; j++)
    if (coef[j] != 0) acc = plus(w, acc, scaled(w, k[j], coef[j]));
  return acc;
}

/*
** dopri5: a loop of attempted steps over the state [y | t | h] of each
** sample, y = [z | ld] (ld when wanted); the controller (IR_ODE_CTRL)
** accepts or rejects and picks the next h, per sample, so a sample's result
** does not depend on the batch around it. The loop ends when every sample
** has reached the end time; max_steps attempts (accepted or not) is the
** budget, beyond which the kernel fails with the layer's status.
*/
static ir_node *cnf_dopri5(lw *w, cnfl *c, ir_node *u, ir_node **ld) {
  ir_graph *g = w->g;
  const ir_layer *L = c->L;
  int D = w->m->dim, n = D + (*ld ? 1 : 0), inv = c->h < 0;
  ir_node *zero = ir_rowsum(g, ir_slice(g, u, 0, 0));
  ir_node *y0 = *ld ? ir_concat(g, u, *ld) : u;
  ir_node *t0 = ir_binary(g, IR_ADD, zero, ir_const(g, inv ? 1.0 : 0.0));
  ir_node *h0 = ir_binary(g, IR_ADD, zero, ir_const(g, inv ? -DOPRI5_H0 : DOPRI5_H0));
  ir_node *s = ir_fix_begin(g, ir_concat(g, ir_concat(g, y0, t0), h0), c->k);
  ir_node *y = ir_slice(g, s, 0, n), *t = ir_slice(g, s, n, 1), *h = ir_slice(g, s, n + 1, 1);
  ir_node *k[7];
  for (int i = 0; i < 7; i++) {
    ir_node *a = combo(w, k, dp_a[i], i);
    ir_node *yi = a ? ir_binary(g, IR_ADD, y, ir_binary(g, IR_MUL, a, h)) : y;
    ir_node *ti = i ? ir_binary(g, IR_ADD, t, scaled(w, h, dp_c[i])) : t;
    ir_node *zi = *ld ? ir_slice(g, yi, 0, D) : yi;
    k[i] = vnet_vt(w, L, &c->vn, zi, ti);
    if (*ld) k[i] = ir_concat(g, k[i], vnet_trace(w, L, &c->vn, zi, c->k));
  }
  ir_node *y5 = ir_binary(g, IR_ADD, y, ir_binary(g, IR_MUL, combo(w, k, dp_a[6], 6), h));
  ir_node *err = ir_binary(g, IR_MUL, combo(w, k, dp_e, 7), h);
  ir_node *fin = ir_fix_end(g, s, ir_ode_ctrl(g, s, y5, err, L->rtol, L->atol, !inv),
                            L->max_steps, 0, c->k);
  fin->i2 = 2;   /* exact: a sample is done when its state stops changing */
  if (*ld) *ld = ir_slice(g, fin, D, 1);
  return ir_slice(g, fin, 0, D);
}

/* Generative: t = 0 -> 1, h = 1/N. Density: t = 1 -> 0 on the same grid,
** h = -1/N; the integrated trace is then log|det| of the inverse. */
static ir_node *cnf(lw *w, const ir_layer *L, int p0, ir_node *u, int inv) {
  int adaptive = L->solver == SOLVER_DOPRI5;
  cnfl c = {L, (int)(L - w->m->layers), L->steps, (inv ? -1.0 : 1.0) / (adaptive ? 1 : L->steps),
            {0}, {0}};
  vnet_init(w, L, p0, &c.vn);
  if (adaptive) {
    ir_node *ld = w->want_ld ? ir_rowsum(w->g, ir_slice(w->g, u, 0, 0)) : NULL;
    ir_node *y = cnf_dopri5(w, &c, u, &ld);
    if (ld) ld_add(w, ld, 0);
    return y;
  }
  for (int i = 0; i < tableau[L->solver].s; i++) {
    double t0 = inv ? 1 - tableau[L->solver].c[i] / c.N : tableau[L->solver].c[i] / c.N;
    c.tab[i] = vnet_bias_table(w, L, &c.vn, c.N, t0, c.h);
  }
  ir_node *ld = w->want_ld ? ir_rowsum(w->g, ir_slice(w->g, u, 0, 0)) : NULL;
  ir_node *y = w->train ? cnf_unrolled(w, &c, u, &ld) : cnf_loop(w, &c, u, &ld);
  if (ld) ld_add(w, ld, 0);
  return y;
}

/* An sde, generative only: Euler-Maruyama on the grid t_n = n/N,
** z += h v(z, t_n) + sigma sqrt(h) xi_n, the xi_n keyed by the sample's
** input row (rt_sde.h). It has no density: the entries that need one are
** not made (ir_lower). */
static ir_node *sde(lw *w, const ir_layer *L, int p0, ir_node *u) {
  ir_graph *g = w->g;
  int k = (int)(L - w->m->layers);
  double h = 1.0 / L->steps;
  vnet vn;
  vnet_init(w, L, p0, &vn);
  ir_node *tab = vnet_bias_table(w, L, &vn, L->steps, 0, h);
  ir_node *s = ir_fix_begin(g, u, k);
  ir_node *zn = ir_binary(g, IR_ADD, s, scaled(w, vnet_v(w, &vn, s, ir_loop_row(g, tab, s)), h));
  if (L->sigma > 0)
    zn = ir_binary(g, IR_ADD, zn, scaled(w, ir_sde_noise(g, w->x0, s, vn.D, k), L->sigma * sqrt(h)));
  return ir_loop_end(g, s, zn, L->steps, k);
}

/* Does the model have a density (no sde layer)? */
static int has_density(const ir_model *m) {
  for (int k = 0; k < m->nlayers; k++)
    if (m->layers[k].kind == LAYER_SDE) return 0;
  return 1;
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
  case LAYER_RESIDUAL: return residual(w, L, p0, u, inv);
  case LAYER_CNF: return cnf(w, L, p0, u, inv);
  case LAYER_SDE: return inv ? u : sde(w, L, p0, u);   /* no inverse: never lowered */
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
static ir_graph *lower_entry(ir_program *p, const int *p0, ir_entry e, int stop, int train) {
  const ir_model *m = p->model;
  lw w = {ir_graph_new(p->A), p, m, NULL, NULL, train, 0, NULL, NULL};
  w.want_ld = stop < 0 && e != IR_ENTRY_ENCODE && e != IR_ENTRY_DECODE;
  ir_node *x = w.x0 = ir_input(w.g, 0, m->dim);
  if (m->context > 0) w.ctx = ir_input(w.g, 1, m->context);
  /* the running log-det starts from a batch zero, so that every layer adds
     its term alike: repeated layers are then repeated code (cg_emit's
     units), the first included */
  if (w.want_ld && stop < 0) w.ld = ld_batch(&w, x);
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
    cap += has_net(&m->layers[k]) ? 3 * (m->layers[k].net.nhidden + 1) : 5;
  return cap;
}

/* The train graph's noise: per residual layer with a series log-det, D
** Rademacher probes and kmax roulette weights. */
static void noise_layout(ir_program *p) {
  const ir_model *m = p->model;
  p->layer_noise0 = ir_alloc(p->A, (size_t)(m->nlayers + 1) * sizeof *p->layer_noise0);
  p->noise = ir_alloc(p->A, 2 * (size_t)(m->nlayers + 1) * sizeof *p->noise);
  for (int k = 0; k < m->nlayers; k++) {
    const ir_layer *L = &m->layers[k];
    p->layer_noise0[k] = p->noise_width;
    if (L->kind == LAYER_CNF && L->hutchinson) {   /* one probe for the whole integration */
      p->noise[p->nnoise++] = (ir_noise){IR_NOISE_RADEMACHER, m->dim, 0, 0, 0, 0};
      p->noise_width += m->dim;
    }
    if (L->kind != LAYER_RESIDUAL || !L->series) continue;
    p->noise[p->nnoise++] = (ir_noise){IR_NOISE_RADEMACHER, m->dim, 0, 0, 0, 0};
    p->noise[p->nnoise++] = (ir_noise){IR_NOISE_ROULETTE, L->terms + res_extra(L), L->terms,
                                       L->roulette, 0, 0};
    p->noise_width += m->dim + L->terms + res_extra(L);
  }
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
  for (int k = 0; k < m->nlayers; k++) {
    const ir_layer *L = &m->layers[k];
    const char *no = L->kind == LAYER_CNF && L->solver == SOLVER_DOPRI5 &&
                     m->dim + 1 > RT_K_ODE_MAX ? "dopri5 with dim above 1023" : NULL;
    if (no) {
      snprintf(err, errlen, "%s: layer %d (%s, line %d): %s: not implemented yet", m->name, k,
               ir_layer_name(L->kind), L->line, no);
      return NULL;
    }
  }
  noise_layout(p);
  for (int e = 0; e < IR_NENTRY; e++) p->entry[e] = ir_lower_entry(p, (ir_entry)e);
  return p;
}

ir_graph *ir_lower_entry(ir_program *p, ir_entry e) {
  if (e != IR_ENTRY_DECODE && !has_density(p->model)) return NULL;
  return lower_entry(p, p->layer_param0, e, -1, 0);
}

/* The flow-matching loss of the model's one layer (ir.h, ir_use_fm). */
static ir_graph *lower_fm(ir_program *p) {
  const ir_model *m = p->model;
  const ir_layer *L = &m->layers[0];
  int D = m->dim;
  lw w = {ir_graph_new(p->A), p, m, NULL, NULL, 1, 0, NULL, NULL};
  ir_graph *g = w.g;
  ir_node *x1 = ir_input(g, 0, D);
  if (m->context > 0) w.ctx = ir_input(g, 1, m->context);
  ir_node *noise = ir_input(g, 2, p->noise_width);
  ir_node *z0 = ir_slice(g, noise, 0, D), *t = ir_slice(g, noise, D, 1);
  ir_node *d = ir_binary(g, IR_SUB, x1, z0);                   /* the target velocity */
  ir_node *xt = ir_binary(g, IR_ADD, z0, ir_binary(g, IR_MUL, d, t));
  ir_node *in = ir_concat(g, ir_concat(g, xt, w.ctx), ir_temb(g, L->time == TIME_SINCOS, L->time_k, t));
  ir_node *r = ir_binary(g, IR_SUB, mlp(&w, &L->net, p->layer_param0[0], in), d);
  ir_output(g, ir_binary(g, IR_MUL, ir_rowsum(g, ir_unary(g, IR_SQUARE, r)), ir_const(g, -1.0)));
  ir_renumber(g);
  return g;
}

ir_graph *ir_lower_train(ir_program *p) {
  if (p->fm) return lower_fm(p);
  return lower_entry(p, p->layer_param0, IR_ENTRY_LOGPROB, -1, 1);
}

int ir_use_fm(ir_program *p, double a, double b, char *err, size_t errlen) {
  const ir_model *m = p->model;
  if (m->nlayers != 1 || (m->layers[0].kind != LAYER_CNF && m->layers[0].kind != LAYER_SDE)) {
    snprintf(err, errlen, "%s: flow matching needs a model whose flow is one cnf layer",
             m->name);
    return -1;
  }
  if (!(a > 0 && b > 0 && a < 1e6 && b < 1e6)) {
    snprintf(err, errlen, "the time distribution beta(%g, %g) needs 0 < a, b", a, b);
    return -1;
  }
  p->fm = 1;
  p->nnoise = 0;
  p->noise[p->nnoise++] = (ir_noise){IR_NOISE_GAUSS, m->dim, 0, 0, 0, 0};
  p->noise[p->nnoise++] = (ir_noise){IR_NOISE_BETA, 1, 0, 0, a, b};
  p->noise_width = m->dim + 1;
  p->layer_noise0[0] = 0;
  return 0;
}

ir_graph *ir_lower_prefix(ir_program *p, int k) {
  return lower_entry(p, p->layer_param0, IR_ENTRY_ENCODE, k, 0);
}

long ir_param_count(const ir_program *p) {
  long n = 0;
  for (int i = 0; i < p->nparams; i++) {
    const ir_param *pa = &p->params[i];
    if (pa->dtype != IR_F32 || pa->init == INIT_LU_SIGN || pa->init == INIT_SN_U) continue;
    long D = pa->shape[0];
    if (pa->init == INIT_LU_LOWER || pa->init == INIT_LU_UPPER) n += D * (D - 1) / 2;
    else n += pa->ndim == 2 ? (long)pa->shape[0] * pa->shape[1] : pa->shape[0];
  }
  return n;
}
