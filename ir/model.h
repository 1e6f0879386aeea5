/*
** ir/model.h: a checked model, the contract between frontend and IR.
**
** The frontend (frontend/sema.c) turns the AST of a .flow file into an
** ir_module: every `repeat` written out, every `net` template instantiated
** into its own ir_net, every default filled in, every size checked. The IR
** lowering (ir/lower.c) reads nothing else. All memory is in an ir_arena.
*/
#ifndef FLOWC_IR_MODEL_H
#define FLOWC_IR_MODEL_H

#include <stdint.h>

typedef enum ir_act {
  ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU, ACT_TANH, ACT_ELU,
  ACT_SOFTPLUS, ACT_LIPSWISH, ACT_COUNT
} ir_act;

typedef enum ir_scale { SCALE_TANH, SCALE_EXP, SCALE_SIGMOID } ir_scale;

typedef enum ir_netkind { NET_MLP, NET_MADE } ir_netkind;

typedef struct ir_net {
  ir_netkind kind;
  int nhidden;
  const int *hidden;          /* nhidden sizes */
  ir_act act;
} ir_net;

typedef enum ir_layerkind {
  LAYER_AFFINE_COUPLING,
  LAYER_ADDITIVE_COUPLING,
  LAYER_SPLINE_COUPLING,
  LAYER_PERMUTE,
  LAYER_ACTNORM,
  LAYER_LINEAR_LU,
  LAYER_MAF,                  /* masked autoregressive flow (made net) */
  LAYER_IAF,                  /* inverse autoregressive flow (made net) */
  LAYER_RESIDUAL,             /* i-ResNet / residual flow: x = y + g(y) inverted */
  LAYER_CNF,                  /* continuous flow dz/dt = v(z, t, c), integrated t = 0 -> 1 */
  LAYER_SDE,                  /* neural SDE dz = v(z, t, c) dt + sigma dW: sampling only */
  LAYER_COUNT
} ir_layerkind;

typedef enum ir_permkind { PERM_REVERSE, PERM_RANDOM, PERM_LIST } ir_permkind;

typedef enum ir_timekind { TIME_SCALAR, TIME_SINCOS } ir_timekind;
typedef enum ir_solver { SOLVER_EULER, SOLVER_HEUN, SOLVER_RK4, SOLVER_DOPRI5 } ir_solver;

typedef struct ir_layer {
  ir_layerkind kind;
  int line, col;              /* where the call was written */
  ir_net net;                 /* couplings */
  ir_scale scale;             /* affine_coupling, maf, iaf (affine transform) */
  int spline;                 /* maf/iaf: transform = spline(bins, bound) */
  int bins;                   /* spline_coupling, spline transform */
  double bound;               /* spline_coupling, spline transform */
  ir_permkind perm_kind;      /* permute */
  uint64_t perm_seed;         /* permute(random, seed = S) */
  const int *perm;            /* permute([..]): dim entries */
  /* residual */
  double lipschitz;           /* c: every weight scaled to sigma <= c */
  int series;                 /* logdet = series(...) for training; 0: exact */
  int terms;                  /* series: terms always computed */
  double roulette;            /* series: Russian-roulette p (0: none) */
  int iters;                  /* fixed-point inverse: most iterations */
  double tol;                 /* ... stop when no coordinate moves by tol */
  /* cnf, sde (flow-language.md 7): v(z, t) = net([z, c, temb(t)]) */
  ir_timekind time;           /* time = scalar | sincos(K) */
  int time_k;                 /* temb width: K for sincos, 1 for scalar */
  ir_solver solver;           /* cnf; an sde is always Euler-Maruyama */
  int steps;                  /* fixed-step solvers, sde */
  double rtol, atol;          /* dopri5 */
  int max_steps;              /* dopri5: the step budget */
  int hutchinson;             /* trace = hutchinson (training); 0: exact */
  double sigma;               /* sde: diffusion = const(sigma) */
} ir_layer;

typedef enum ir_base { BASE_NORMAL } ir_base;

typedef struct ir_model {
  const char *name;
  int line, col;
  int dim;                    /* D: product of dims */
  int ndims;
  int dims[8];                /* the shape as written: [50, 7] */
  int context;                /* C; 0 means none */
  ir_base base;
  int nlayers;
  const ir_layer *layers;     /* generative order: z -> f_1 .. f_K -> x */
} ir_model;

typedef struct ir_module {
  const char *path;
  int nmodels;
  const ir_model *models;
} ir_module;

const char *ir_act_name(ir_act a);
const char *ir_layer_name(ir_layerkind k);
const ir_model *ir_module_find(const ir_module *M, const char *name); /* NULL name: first */

#endif
