/*
** ir/ir.h: the tensor graph.
**
** A graph is a DAG of nodes in topological order (args always precede the
** node). Every node is a 2-D float tensor of one of two classes:
**
**   batch  [B, n]    one row per sample; B is unknown until run time;
**   param  [rows, n] depends on parameters and constants only, evaluated
**                    once when weights are loaded (the "prep" program).
**
** Binary elementwise ops take two batch tensors of equal width (or one of
** them [B, 1], broadcast along the columns), or a batch tensor and a param
** tensor of shape [1, n] (row broadcast) or [1, 1].
**
** A program is one checked model lowered to a parameter table and one graph
** per entry point. Inputs: slot 0 is the data ([B, D] rows, or z for
** decode), slot 1 the context [B, C]. Outputs: out[0] is the main result,
** out[1] (when present) the log-det [B, 1].
*/
#ifndef FLOWC_IR_IR_H
#define FLOWC_IR_IR_H

#include <stdio.h>
#include <stdint.h>

#include "arena.h"
#include "model.h"

typedef enum ir_op {
  /* leaves */
  IR_INPUT,       /* batch; i0 = slot (0 data, 1 context, 2 noise: the train
                     graph's random numbers, ir_program.noise) */
  IR_PARAM,       /* param; i0 = index into program params (F32 or I64) */
  IR_CONST,       /* param [1,1]; f0 = value */
  /* elementwise unary, either class */
  IR_RELU, IR_GELU, IR_GELU_TANH, IR_SILU, IR_TANH, IR_ELU, IR_SOFTPLUS,
  IR_LIPSWISH, IR_EXP, IR_NEG, IR_LOGSIGMOID, IR_SQUARE,
  /* elementwise binary, broadcast as above */
  IR_ADD, IR_SUB, IR_MUL,
  /* structure, batch */
  IR_LINEAR,      /* x[B,in], W[out,in] (param), b[1,out] (param, optional).
                     With a param-class x [r,in] the result is param-class
                     [r,out] = x W^T + b, a prep op (a cnf's time columns).
                     idx (optional, n entries): a staircase; row o of W is
                     zero past column idx[o], which the sum stops at */
  IR_SLICE,       /* columns [i0, i0 + n) of x */
  IR_CONCAT,      /* [a, b] along columns */
  IR_GATHER,      /* y[:,i] = x[:, perm[i]]; perm = args[1] (I64 param [1,n])
                     or idx[] (constant) when nargs == 1. i1 = 1: the
                     inverse, a scatter y[:, perm[i]] = x[:, i] */
  IR_RQS,         /* x[B,m], h[B, m(3K-1)] -> [B, 2m] = [y | log|dy/dx|];
                     i0 = K bins, f0 = bound B, i1 = 1 for the inverse */
  IR_ROWSUM,      /* [B,n] -> [B,1]; on a param tensor: total sum -> [1,1] */
  /* param only */
  IR_LU_W,        /* lower, upper, log_diag, sign, perm -> W = P L U [D,D] */
  IR_LU_WINV,     /* same args -> W^-1 [D,D] */
  IR_MADE_MASK,   /* W [out,in] -> W * mask: the MADE mask (flow-language.md 5)
                     of kind i0 (IR_MASK_*) for a model of dim i1 and
                     context i2; outputs of the last layer belong to dim
                     o mod D (f0 == 0, affine) or o / f0 (f0 = 3K-1, spline) */
  IR_PGATHER,     /* W [R,N] -> [rows, n]: y[a][b] = W[idx[a]][idx[rows + b]], a dense
                     block of a MADE layer's weight (or bias, R = 1) */
  IR_PSCALE,      /* W [R,N], s -> W with its rows (i0 = 0, s [1,R]) or columns
                     (i0 = 1, s [1,N]) scaled: y[r][c] = W[r][c] s[r] or s[c]
                     (a per-column affine map folded into a linear map) */
  IR_SPECNORM,    /* W [out,in], u (the sn_u param, [1,out]) -> W / max(1, sigma(W)/f0),
                     sigma the largest singular value: computed to convergence
                     (power iteration from u) for evaluation; in the train
                     entry's prep one power-iteration step per parameter
                     update, u updated in place (torch.nn.utils.spectral_norm) */
  /* residual layers, batch */
  IR_D2ACT,       /* f''(x) of the unary op i0, elementwise (autodiff of IR_DACT) */
  IR_LOGDET,      /* x[B, D*D] -> [B,1]: log|det(I + X)|, X row-major D x D, i0 = D */
  IR_LOGDET_GRAD, /* x[B, D*D], g[B,1] -> [B, D*D]: g * (I + X)^-T, row-major */
  IR_STOPGRAD,    /* identity whose gradient is zero; removed after pass_autodiff */
  IR_FIX_BEGIN,   /* u[B,n] -> the loop variable y of a fixed-point loop, y = u on
                     entry; i1 = layer index. Nodes after it up to its IR_FIX_END
                     are the loop body, evaluated again every iteration */
  IR_FIX_END,     /* y (the IR_FIX_BEGIN), ynew[B,n] -> [B,n]: closes the loop:
                     while some row of the tile changed by >= f0 (max over its
                     columns of |ynew - y|) and fewer than i0 iterations ran,
                     y = ynew and run the body again; the result is the last
                     ynew. A row still >= f0 after i0 iterations fails the
                     kernel with status 1 + i1 (the layer).
                     i2 = 1: a counted loop: exactly i0 runs for every row,
                     no settling test (a fixed-step ODE solver's steps);
                     i2 = 2: a row settles only when ynew == y exactly (an
                     adaptive solver's state), failing as above */
  /* continuous flows (flow-language.md 7) */
  IR_TEMB,        /* time embedding, i1 = 0: [t] (n = 1); i1 = 1: sincos, n = K.
                     No args: param-class table [rows, n] of the times
                     t_r = f0 + r * f1 (a prep op, computed in double);
                     one arg t [B,1] (batch): per row. No gradient */
  IR_LOOP_ROW,    /* table (param-class [N,n]), loop (an IR_FIX_BEGIN) -> [1,n]:
                     row k of table in run k of the loop's body (k = 0..).
                     Param-like (a pointer into the table), not a prep node */
  IR_TRACE_COEF,  /* param only: W0 [H0,in], W1 [.,H0] [, W2 [D,H1]] -> the coefficients
                     of a fused exact trace of an MLP's Jacobian in its first
                     i0 = D inputs (Z = those columns of W0). Two args (one
                     hidden layer, W1 [D,H0]): c [1,H0], c_h = sum_i W1[i,h] Z[h,i],
                     so tr = sum_h f'(pre0_h) c_h. Three args (two hidden
                     layers): Q [H1,H0], Q[k,h] = W1[k,h] sum_i W2[i,k] Z[h,i],
                     so tr = f'(pre1) . (Q f'(pre0)) */
  IR_ODE_CTRL,    /* s [B, n+2] = [y | t | h], y5 [B,n], err [B,n] -> [B, n+2]: a dopri5
                     step's acceptance and next step size (runtime/rt_ode.h);
                     f0 rtol, f1 atol, i0 the end time (0 or 1) */
  IR_SDE_NOISE,   /* key (the entry's input [B,m]), loop (an IR_FIX_BEGIN) -> [B,n]:
                     standard normals of run k of the loop for each sample,
                     from its key row and i0 = the layer (runtime/rt_sde.h) */
  /* backward ops (passes/autodiff.c), batch */
  IR_DACT,        /* f'(x) of the unary op i0, elementwise */
  IR_LINEAR_T,    /* dy[B,out], W[out,in] (param-class) -> dy W  [B,in] */
  IR_PAD,         /* x[B,n] -> [B,i1]: x at columns [i0, i0+n), zero elsewhere */
  IR_BCAST,       /* x[B,1] -> [B,n] */
  IR_RQS_GRAD,    /* x, h, gy[B,m], gl[B,m] -> [B, m + m(3K-1)] = [gx | gh]:
                     back through IR_RQS (same i0, i1, f0) given the loss's
                     gradients gy, gl w.r.t. its two outputs y and log-det */
  /* gradient sinks: no value; the last arg is the target, an IR_PARAM or
     a prep node; they add a sum over the tile's rows into its gradient */
  IR_ACC_SUM,     /* a[B,n] [, b[B,n]], target: g[j] += sum_r a[r,j] (* b[r,j]);
                     when the target is [1,1] and n > 1, g[0] += the sum over j too */
  IR_ACC_OUTER,   /* dy[B,out], x[B,in], target [out,in]:
                     g[o*in + i] += sum_r dy[r,o] x[r,i] */
  IR_OP_COUNT
} ir_op;

/* Which layer of a MADE network a mask is for (= RT_MASK_* of rt_made.h). */
enum { IR_MASK_IN_HIDDEN, IR_MASK_HIDDEN_HIDDEN, IR_MASK_HIDDEN_OUT, IR_MASK_IN_OUT };

typedef struct ir_node ir_node;
struct ir_node {
  ir_op op;
  int id;                 /* position in graph, reassigned by ir_renumber */
  int batch;              /* 1: [B, n]; 0: param [rows, n] */
  int rows, n;
  int nargs;
  ir_node *args[5];
  int i0, i1, i2;
  double f0, f1;
  const int *idx;         /* IR_GATHER constant permutation, n entries;
                             IR_PGATHER rows + n entries; IR_LINEAR
                             row prefixes, n entries (NULL: dense) */
  /* filled by passes */
  int uses;               /* number of uses within the graph (+1 per output) */
  long offset;            /* pass_memplan: this node's buffer starts at
                             scratch + offset * tile (floats), row-major
                             [tile, n]; -1 when it has none */
  int prep;               /* pass_prep: index in the entry's prep program
                             (param-class nodes other than IR_PARAM); -1 */
  int fused;              /* pass_fuse: computed inside its one user's loop
                             (an elementwise op), not stored; 0 */
};

typedef enum ir_entry {
  IR_ENTRY_ENCODE,        /* x -> z */
  IR_ENTRY_ENCODE_LD,     /* x -> z, log|det dz/dx| */
  IR_ENTRY_DECODE,        /* z -> x */
  IR_ENTRY_DECODE_LD,     /* z -> x, log|det dx/dz| */
  IR_ENTRY_LOGPROB,       /* x -> log p(x) [B,1] */
  IR_NENTRY
} ir_entry;

typedef struct ir_graph {
  ir_arena *A;
  int nnodes, cap;
  ir_node **nodes;
  int nouts;
  ir_node *outs[2];
  long scratch;           /* pass_memplan: scratch floats per tile row */
  int nprep;              /* pass_prep: length of the prep program */
} ir_graph;

typedef enum ir_dtype { IR_F32, IR_I64 } ir_dtype;

typedef enum ir_init {
  INIT_LINEAR_WEIGHT,     /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch */
  INIT_LINEAR_BIAS,       /* same bound */
  INIT_ZERO,
  INIT_PERM_RANDOM,       /* permutation drawn from (seed, layer) */
  INIT_PERM_LIST,         /* values[] */
  INIT_LU_LOWER, INIT_LU_UPPER, INIT_LU_LOG_DIAG, INIT_LU_SIGN, INIT_LU_PERM,
                          /* all from one random orthogonal matrix of the layer */
  INIT_SN_U               /* residual: spectral-norm power-iteration vector, a unit
                             vector drawn from (layer, J); optional in weights
                             files, not trained (updated by the train prep) */
} ir_init;

typedef struct ir_param {
  const char *name;       /* flow.K.net.J.weight ... */
  ir_dtype dtype;
  int ndim;
  int shape[2];
  ir_init init;
  int fan_in;
  int layer;              /* K */
  uint64_t seed;          /* INIT_PERM_RANDOM */
  const int *values;      /* INIT_PERM_LIST */
} ir_param;

/* The train graph's noise input (slot 2) is these blocks side by side;
** the runtime fills them per step and row from its seeded RNG. */
typedef enum ir_noise_kind {
  IR_NOISE_RADEMACHER,    /* n columns of +-1 (Hutchinson probes) */
  IR_NOISE_ROULETTE,      /* n = kmax columns: q_k = 1 / P(N >= k) for k <= N, else 0
                             (k = 1..kmax); N = terms + G, G ~ Geometric(p) on
                             {0, 1, ..}, P(G >= j) = (1-p)^j, N capped at kmax */
  IR_NOISE_GAUSS,         /* n columns of N(0, 1) (flow matching's z0) */
  IR_NOISE_BETA           /* n columns of Beta(a, b) (flow matching's t; a = b = 1:
                             uniform on [0, 1)) */
} ir_noise_kind;

typedef struct ir_noise {
  ir_noise_kind kind;
  int n;                  /* columns */
  int terms;              /* IR_NOISE_ROULETTE */
  double p;               /* IR_NOISE_ROULETTE: 0 means exactly `terms` terms */
  double a, b;            /* IR_NOISE_BETA */
} ir_noise;

typedef struct ir_program {
  ir_arena *A;
  const ir_model *model;
  int nparams;
  ir_param *params;
  ir_graph *entry[IR_NENTRY];   /* NULL: not available (ir_lower_entry) */
  ir_graph *train;        /* pass_autodiff: log_prob with gradient sinks, or NULL */
  int *layer_param0;      /* first parameter index of each layer */
  int nnoise;             /* blocks of the train graph's noise input */
  ir_noise *noise;
  int noise_width;        /* their total width (0: the train graph has none) */
  int *layer_noise0;      /* first noise column of each layer */
  int fm;                 /* ir_use_fm: the train graph is the flow-matching loss */
} ir_program;

/* graph building (ir.c) */
ir_graph *ir_graph_new(ir_arena *A);
ir_node *ir_input(ir_graph *g, int slot, int n);
ir_node *ir_param_node(ir_graph *g, const ir_program *p, int index);
ir_node *ir_const(ir_graph *g, double v);
ir_node *ir_unary(ir_graph *g, ir_op op, ir_node *x);
ir_node *ir_binary(ir_graph *g, ir_op op, ir_node *a, ir_node *b);
ir_node *ir_linear(ir_graph *g, ir_node *x, ir_node *W, ir_node *b);
/* A batch linear whose row o of W is zero past column prefix[o] (copied). */
ir_node *ir_linear_prefix(ir_graph *g, ir_node *x, ir_node *W, ir_node *b, const int *prefix);
ir_node *ir_slice(ir_graph *g, ir_node *x, int lo, int n);
ir_node *ir_concat(ir_graph *g, ir_node *a, ir_node *b);
ir_node *ir_gather(ir_graph *g, ir_node *x, ir_node *perm, const int *idx, int inverse);
ir_node *ir_rqs(ir_graph *g, ir_node *x, ir_node *h, int bins, double bound, int inverse);
ir_node *ir_rowsum(ir_graph *g, ir_node *x);
ir_node *ir_lu(ir_graph *g, ir_op op, ir_node *const lu[5]);
ir_node *ir_made_mask(ir_graph *g, ir_node *W, int kind, int D, int C, int per);
/* 1 when input i of a MADE layer of that kind reaches output o. */
int ir_made_connected(int kind, int D, int C, int per, int o, int i);
ir_node *ir_dact(ir_graph *g, ir_op unary, ir_node *x);
ir_node *ir_linear_t(ir_graph *g, ir_node *dy, ir_node *W);
ir_node *ir_pad(ir_graph *g, ir_node *x, int lo, int width);
ir_node *ir_bcast(ir_graph *g, ir_node *x, int n);
ir_node *ir_rqs_grad(ir_graph *g, const ir_node *rqs, ir_node *gy, ir_node *gl);
ir_node *ir_pgather(ir_graph *g, ir_node *W, int rows, const int *ridx, int n, const int *cidx);
ir_node *ir_specnorm(ir_graph *g, ir_node *W, ir_node *u, double lipschitz);
/* W with its rows (axis 0) or columns (axis 1) scaled by the vector s. */
ir_node *ir_pscale(ir_graph *g, ir_node *W, ir_node *s, int axis);
ir_node *ir_d2act(ir_graph *g, ir_op unary, ir_node *x);
ir_node *ir_logdet(ir_graph *g, ir_node *x, int D);
ir_node *ir_logdet_grad(ir_graph *g, ir_node *x, ir_node *gd, int D);
ir_node *ir_stopgrad(ir_graph *g, ir_node *x);
ir_node *ir_fix_begin(ir_graph *g, ir_node *u, int layer);
ir_node *ir_fix_end(ir_graph *g, ir_node *y, ir_node *ynew, int iters, double tol, int layer);
ir_node *ir_loop_end(ir_graph *g, ir_node *y, ir_node *ynew, int runs, int layer); /* counted */
ir_node *ir_temb_table(ir_graph *g, int kind, int n, int rows, double t0, double dt);
ir_node *ir_temb(ir_graph *g, int kind, int n, ir_node *t);
ir_node *ir_loop_row(ir_graph *g, ir_node *table, ir_node *loop);
ir_node *ir_trace_coef(ir_graph *g, ir_node *W0, ir_node *W1, ir_node *W2, int D);
ir_node *ir_ode_ctrl(ir_graph *g, ir_node *s, ir_node *y5, ir_node *err, double rtol,
                     double atol, int tend);
ir_node *ir_sde_noise(ir_graph *g, ir_node *key, ir_node *loop, int n, int layer);
ir_node *ir_acc_sum(ir_graph *g, ir_node *a, ir_node *b, ir_node *target);
ir_node *ir_acc_outer(ir_graph *g, ir_node *dy, ir_node *x, ir_node *target);
/* Gradient slot of a sink's target: param index, or nparams + prep index. */
int ir_grad_slot(const ir_program *p, const ir_node *target);
void ir_output(ir_graph *g, ir_node *x);
void ir_renumber(ir_graph *g);        /* ids and use counts from scratch */
/*
** last[i] = index of the last node that reads node i (g->nnodes for an
** output; i itself when nothing reads it). A node defined before a
** fixed-point loop (IR_FIX_BEGIN .. IR_FIX_END) and read inside it lives
** to the IR_FIX_END, since the body runs again. A node that pass_fuse fused
** is computed where its user is, so what it reads lives that long too.
** last has nnodes entries;
** the graph must be renumbered. Memory planning and codegen both use it.
*/
void ir_last_uses(const ir_graph *g, int *last);
int ir_is_unary(ir_op op);
int ir_is_sink(ir_op op);

/* What an op's loops look like, for deciding what may fuse: elementwise
** (result (r, c) from operands at (r, c) or a broadcast of them),
** injective (each result element copies one operand element), reduction
** (sums over a row or a dot product per element), opaque (anything else:
** loops, solvers, sinks). */
typedef enum ir_kind { IR_KIND_ELEMWISE, IR_KIND_INJECTIVE, IR_KIND_REDUCTION, IR_KIND_OPAQUE } ir_kind;
ir_kind ir_op_kind(ir_op op);
int ir_is_binary(ir_op op);
const char *ir_op_name(ir_op op);
const char *ir_entry_name(ir_entry e);

/* lowering (lower.c): one checked model to a program; NULL with err set */
ir_program *ir_lower(ir_arena *A, const ir_model *m, char *err, size_t errlen);
long ir_param_count(const ir_program *p);   /* trainable scalars */
/* A fresh graph of entry e, as ir_lower made it; NULL for an entry that
** needs a density when the model has none (an sde layer: decode only). */
ir_graph *ir_lower_entry(ir_program *p, ir_entry e);
/* log_prob as the train graph wants it: residual layers with a series
** log-det use the estimator on the noise input (pass_autodiff's start). */
ir_graph *ir_lower_train(ir_program *p);
/*
** Makes ir_lower_train build the conditional flow-matching objective of
** flow-language.md 7 instead: a model whose flow is one cnf (or sde, whose
** drift is trained the same way). Its "log_prob" per row is
** -||v(x_t, t, c) - (x1 - z0)||^2, x_t = (1 - t) z0 + t x1, from the noise
** input [z0 (D columns, N(0, I)) | t (Beta(a, b); a = b = 1 uniform)].
** 0, or -1 with err set when the model is not one such layer.
*/
int ir_use_fm(ir_program *p, double a, double b, char *err, size_t errlen);
/* The density direction up to layer k: x through the inverses of layers
** K-1 .. k+1; out[0] is the input of layer k's inverse (data-dependent
** initialisation of actnorm). */
ir_graph *ir_lower_prefix(ir_program *p, int k);

/* text form (dump.c), stable for golden tests */
void ir_dump_graph(FILE *f, const ir_graph *g);
void ir_dump_program(FILE *f, const ir_program *p);

/*
** Reference interpreter (interp.c): evaluates a graph op by op over the
** whole batch in double precision. params[i] points at the data of program
** parameter i (float for IR_F32, int64_t for IR_I64). in/ctx/out as in the
** entry contract; out1 may be NULL. Returns 0, or -1 with err set.
*/
int ir_interp(const ir_program *p, const ir_graph *g, const void *const *params,
              long nrows, const double *in, const double *ctx,
              double *out0, double *out1, char *err, size_t errlen);
/* The same for a graph with gradient sinks (p->train after pass_prep):
** each sink adds into grads[ir_grad_slot(target)], sized like its target. */
int ir_interp_grads(const ir_program *p, const ir_graph *g, const void *const *params,
                    long nrows, const double *in, const double *ctx, double *out0,
                    double *const *grads, char *err, size_t errlen);
/* The same with the train graph's noise input (slot 2): nrows x
** p->noise_width doubles; grads may be NULL. */
int ir_interp_noise(const ir_program *p, const ir_graph *g, const void *const *params,
                    long nrows, const double *in, const double *ctx, const double *noise,
                    double *out0, double *const *grads, char *err, size_t errlen);

#endif
