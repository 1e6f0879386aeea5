/*
** ir/lower.c: a checked model to a program (parameter table + one graph
** per entry). Each layer lowers in both directions with its log-det term,
** following section 4 of flow-language.md; decode applies f_1 .. f_K and
** adds log|det J_f|, encode applies the inverses from f_K back and adds
** log|det J_f^-1| = -log|det J_f|.
*/
#include "ir.h"
#include "rt_made.h"   /* header only: the MADE degrees, shared with the runtime */

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
  case LAYER_RESIDUAL: return D;
  default: return 0;
  }
}

static int has_net(const ir_layer *L) {
  return L->kind == LAYER_AFFINE_COUPLING || L->kind == LAYER_ADDITIVE_COUPLING ||
         L->kind == LAYER_SPLINE_COUPLING || L->kind == LAYER_MAF || L->kind == LAYER_IAF ||
         L->kind == LAYER_RESIDUAL;
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

/*
** The parallel direction: all dimensions at once, as one masked matrix
** product a layer. Here the zero blocks are multiplied: one product (a
** BLAS call at large batch) beats D small ones, and the gradient graph
** stays small enough to compile quickly.
*/
static ir_node *ar_parallel(lw *w, const ir_layer *L, int p0, ir_node *cond, ir_node *x, int inv) {
  const ir_net *net = &L->net;
  int D = w->m->dim, C = w->m->context, per = L->spline ? 3 * L->bins - 1 : 0;
  ir_node *h = ir_concat(w->g, cond, w->ctx);
  for (int j = 0; j <= net->nhidden; j++) {
    int first = j == 0, last = j == net->nhidden;
    int kind = first ? (last ? IR_MASK_IN_OUT : IR_MASK_IN_HIDDEN)
                     : (last ? IR_MASK_HIDDEN_OUT : IR_MASK_HIDDEN_HIDDEN);
    ir_node *W = ir_made_mask(w->g, ir_param_node(w->g, w->p, p0 + 2 * j), kind, D, C, per);
    h = ir_linear(w->g, h, W, ir_param_node(w->g, w->p, p0 + 2 * j + 1));
    if (!last) h = ir_unary(w->g, act_op(net->act), h);
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
  lw w = {ir_graph_new(p->A), p, m, NULL, NULL, train, NULL};
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
    if (L->kind != LAYER_RESIDUAL || !L->series) continue;
    p->noise[p->nnoise++] = (ir_noise){IR_NOISE_RADEMACHER, m->dim, 0, 0};
    p->noise[p->nnoise++] = (ir_noise){IR_NOISE_ROULETTE, L->terms + res_extra(L), L->terms,
                                       L->roulette};
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
  noise_layout(p);
  for (int e = 0; e < IR_NENTRY; e++) p->entry[e] = lower_entry(p, p0, (ir_entry)e, -1, 0);
  return p;
}

ir_graph *ir_lower_entry(ir_program *p, ir_entry e) {
  return lower_entry(p, p->layer_param0, e, -1, 0);
}

ir_graph *ir_lower_train(ir_program *p) {
  return lower_entry(p, p->layer_param0, IR_ENTRY_LOGPROB, -1, 1);
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
