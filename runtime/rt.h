/*
** runtime/rt.h: the flowc runtime, a plain C library with no LLVM in it.
**
** A compiled model is a descriptor (rt_desc: sizes, parameter table, the
** parameter-only "prep" program of each entry) plus one kernel per entry.
** The same runtime drives kernels from the in-process JIT and from a built
** shared object, so both give the same numbers.
**
** Kernel ABI: int32_t k(void *const *args, int64_t nrows), nrows <= desc.tile;
** returns 0, or 1 + k when the fixed-point loop of layer k (a residual
** layer's inverse) left a row of the tile unconverged (the outputs of that
** tile are then undefined).
**   args[0] in   rows of the entry's input (x or z), nrows x dim
**   args[1] ctx  nrows x context (NULL when context == 0)
**   args[2] out0 nrows x (dim, or 1 for log_prob)
**   args[3] out1 nrows x 1 log-det, or NULL when the entry has none
**   args[4 .. 4+P)        the P parameters, float* or int64_t* by dtype
**   args[4+P .. 4+P+Q)    the Q prep results of this entry (float*)
**   args[4+P+Q]           scratch, tile * entry.scratch floats, 64-aligned
** Kernels may call the rt_k_* helpers below; nothing else.
*/
#ifndef FLOWC_RT_H
#define FLOWC_RT_H

#include <stddef.h>
#include <stdint.h>

#define RT_NENTRY 5
enum { RT_ENCODE, RT_ENCODE_LD, RT_DECODE, RT_DECODE_LD, RT_LOGPROB };

/* Error codes returned by rt_model_* (and the .so's functions).
** RT_ENOCONV: a kernel reported an unconverged fixed-point loop
** (rt_model_failed_layer says which layer). */
enum { RT_OK = 0, RT_EINVAL = -1, RT_ENOMEM = -2, RT_ENUMERIC = -3, RT_ENOCONV = -4 };

typedef int32_t (*rt_kernel)(void *const *args, int64_t nrows);

typedef enum rt_dtype { RT_F32, RT_I64 } rt_dtype;

/* Same order as ir_init in ir/ir.h. */
typedef enum rt_init {
  RT_INIT_LINEAR_WEIGHT, RT_INIT_LINEAR_BIAS, RT_INIT_ZERO,
  RT_INIT_PERM_RANDOM, RT_INIT_PERM_LIST,
  RT_INIT_LU_LOWER, RT_INIT_LU_UPPER, RT_INIT_LU_LOG_DIAG, RT_INIT_LU_SIGN,
  RT_INIT_LU_PERM,
  RT_INIT_SN_U              /* residual: spectral-norm power-iteration vector
                               [out], F32; optional in weights files, not
                               trained, advanced by the train prep (below) */
} rt_init;

typedef struct rt_param_desc {
  char *name;
  rt_dtype dtype;
  int ndim;
  int shape[2];
  rt_init init;
  int fan_in;
  int layer;
  uint64_t seed;
  int *values;              /* RT_INIT_PERM_LIST: shape[0] entries */
} rt_param_desc;

typedef enum rt_prep_op {
  RT_PREP_EXP, RT_PREP_NEG, RT_PREP_SUM,   /* SUM: all elements -> [1,1] */
  RT_PREP_ADD, RT_PREP_SUB, RT_PREP_MUL,   /* equal shapes or [1,1] broadcast */
  RT_PREP_CONST,                           /* [1,1] = f */
  RT_PREP_LU_W, RT_PREP_LU_WINV,          /* lower, upper, log_diag, sign, perm */
  RT_PREP_MADE_MASK,                       /* W * the MADE mask of iargs (rt_made.h) */
  RT_PREP_SPECNORM,                        /* W [out,in], u (an RT_INIT_SN_U param) ->
                                              W / max(1, sigma / f); iargs[0] mode */
  RT_PREP_GATHER,                          /* W [R,N] -> [rows,n]: y[a][b] = W[I[a]][I[rows+b]],
                                              I = desc.idx + iargs[0] (a MADE block) */
  RT_PREP_LINEAR,                          /* x [rows,in], W [n,in] [, b [1,n]] (nargs 2 or 3)
                                              -> x W^T + b (a cnf's time columns) */
  RT_PREP_TEMB,                            /* no args -> [rows,n]: row r the time embedding
                                              (rt_temb.h) of t_r = f + r * f2, kind iargs[0]
                                              (0 scalar, n = 1; 1 sincos, n even >= 4);
                                              no gradient */
  RT_PREP_TRACE_COEF,                      /* W0 [H0,in], W1 [D,H0] -> c [1,H0], or W0, W1 [H1,H0],
                                              W2 [D,H1] -> Q [H1,H0] (nargs 2 or 3), D = iargs[0]
                                              <= in, Z = the first D columns of W0:
                                              c[h] = sum_i W1[i][h] Z[h][i];
                                              Q[k][h] = W1[k][h] sum_i W2[i][k] Z[h][i]
                                              (a cnf's fused exact Jacobian trace) */
  RT_PREP_SCALE                            /* W [rows,n], s -> W with row r scaled by s[r]
                                              (iargs[0] = 0, s [1,rows]) or column c by
                                              s[c] (iargs[0] = 1, s [1,n]) */
} rt_prep_op;

/*
** RT_PREP_SPECNORM (flow-language.md 6), f = the lipschitz constant c:
**   mode 0 (evaluation): sigma = the largest singular value of W, by power
**     iteration in double from u (plus 1e-6 |u| of a fixed vector, so that
**     a u exactly orthogonal to the top singular vector cannot converge to
**     another; the fixed vector alone when u is all zero) until sigma
**     changes by < 1e-12 relative (at most RT_SN_MAX_ITERS iterations);
**     u is only read.
**   mode 1 (the train program only): ONE step from the stored u, as
**     torch.nn.utils.spectral_norm in training: v = W^T u / |.|,
**     u' = W v / |.|, sigma = u' . W v, and u' is WRITTEN into the sn_u
**     parameter (so the next run continues from it).
**   Both: when W^T u is zero (u all zero, or W = 0 as a zero-initialised
**   last layer is) the iteration starts from the fixed vector instead; if
**   that gives zero too, sigma = 0 and u is kept (torch would store the
**   zero vector and stay there for good).
**   Only mode 1 writes, so rt_desc_check allows it in the train program
**   alone and at most once per sn_u parameter: one step per run of it.
** Its value in rt_prep_forward's vals[q] has a tail after the rows * n
** result (rt_prep_val_len): sigma, the divisor max(1, sigma / c), u' [out],
** v [in], and the u the step started from [out] (the stored u), which
** rt_prep_backward uses: dW = G if sigma <= c, else (c / sigma) (G -
** (sum(G .* W) / sigma) u' v^T), u' and v held constant (torch's gradient,
** exact at convergence); u gets none.
*/
#define RT_SN_MAX_ITERS 10000

typedef struct rt_prep {
  rt_prep_op op;
  int nargs;
  int args[5];              /* < nparams: parameter; else nparams + prep index */
  int rows, n;              /* result shape */
  double f;                 /* RT_PREP_CONST; RT_PREP_SPECNORM: lipschitz c;
                               RT_PREP_TEMB: t0 */
  int iargs[4];             /* RT_PREP_MADE_MASK: kind, D, C, per;
                               RT_PREP_SPECNORM: mode (0 evaluation, 1 train);
                               RT_PREP_TEMB: kind (0 scalar, 1 sincos);
                               RT_PREP_TRACE_COEF: D */
  double f2;                /* RT_PREP_TEMB: dt (0 for every other op) */
} rt_prep;

/*
** Blocks of the train kernel's noise input, one row per sample, filled by
** rt_model_grad (see rt_model_set_noise):
**   RT_NOISE_RADEMACHER  n columns of +-1 (Hutchinson probes)
**   RT_NOISE_ROULETTE    n = kmax columns, column k-1 (k = 1..kmax) holds
**     q_k = 1 / P(N >= k) when k <= N, else 0; N = min(terms + G, kmax),
**     G ~ Geometric(p) on {0, 1, ..}, P(G >= j) = (1-p)^j (p = 0: G = 0),
**     so q_k = 1 for k <= terms, (1-p)^-(k - terms) above, and
**     E[column k-1] = 1 for every k (the Russian-roulette estimator).
**   RT_NOISE_GAUSS       n columns of iid N(0, 1) (flow matching's z0)
**   RT_NOISE_BETA        n columns of iid Beta(a, b) in [0, 1] (flow
**     matching's t); a = b = 1 exactly: uniform on [0, 1) (k / 2^24).
** terms and p are 0 for every kind but roulette, a and b for every kind but
** beta (a, b > 0 and finite).
*/
typedef enum rt_noise_kind {
  RT_NOISE_RADEMACHER, RT_NOISE_ROULETTE, RT_NOISE_GAUSS, RT_NOISE_BETA
} rt_noise_kind;
typedef struct rt_noise {
  rt_noise_kind kind;
  int n;                    /* columns */
  int terms;                /* RT_NOISE_ROULETTE: 0 <= terms <= n */
  double p;                 /* RT_NOISE_ROULETTE: 0 <= p < 1 */
  double a, b;              /* RT_NOISE_BETA: the shapes */
} rt_noise;

typedef struct rt_entry_desc {
  int nprep;
  rt_prep *prep;
  long scratch;             /* floats per tile row */
  int has_ld;
} rt_entry_desc;

typedef struct rt_desc {
  char *name;
  int dim, context;
  int tile;                 /* rows per kernel call */
  int nparams;
  rt_param_desc *params;
  rt_entry_desc entry[RT_NENTRY];
  int has_train;            /* a gradient kernel exists (flowc train) */
  rt_entry_desc train;      /* its prep program and scratch; has_ld 0 */
  int nidx;                 /* index lists of the RT_PREP_GATHER ops, one pool */
  int *idx;
  int nnoise;               /* the train kernel's random input (ir_noise): */
  rt_noise *noise;          /* blocks side by side in a row, */
  int noise_width;          /* of total width sum(n) (0: none) */
} rt_desc;

/* Descriptor text form: what a built .so carries; parse(format(d)) == d. */
char *rt_desc_format(const rt_desc *d);                       /* malloc'd */
rt_desc *rt_desc_parse(const char *text, char *err, size_t errlen);
void rt_desc_free(rt_desc *d);

/* ---- weights (rt_weights.c, rt_safetensors.c, rt_init.c) ---- */
typedef struct rt_weights {
  int n;                    /* == desc->nparams, in desc order */
  void **data;              /* float* or int64_t* per param dtype */
  long step;                /* training step from __metadata__, 0 if none */
} rt_weights;

/* Reads a safetensors file and checks it against the descriptor: every
** tensor present, no extra one, shapes and dtypes right, perms valid and
** equal to an explicit permute list. F64/F16/BF16 converted to F32,
** I32 to I64. The message names the file and the tensor. */
int rt_weights_load(const rt_desc *d, const char *path, rt_weights *w,
                    char *err, size_t errlen);
int rt_weights_load_mem(const rt_desc *d, const void *buf, size_t len,
                        const char *what, rt_weights *w, char *err, size_t errlen);
/* Writes to PATH.tmp and renames, so a failure never leaves half a file. */
int rt_weights_save(const rt_desc *d, const rt_weights *w, const char *path,
                    char *err, size_t errlen);
/* Any list of named F32 / I64 tensors as safetensors (atomically, as
** above); meta is NULL or a NULL-terminated list of key, value strings for
** __metadata__. Used by rt_weights_save, tests and tools. */
typedef struct rt_named_tensor {
  const char *name;
  rt_dtype dtype;
  int ndim;                 /* 0 .. 8 */
  long shape[8];
  const void *data;         /* float* or int64_t*, C order */
} rt_named_tensor;
int rt_safetensors_save(const char *path, const rt_named_tensor *t, int n,
                        const char *const *meta, char *err, size_t errlen);
int rt_weights_init(const rt_desc *d, uint64_t seed, rt_weights *w,
                    char *err, size_t errlen);
/* The initial value of sn_u parameter i of d (RT_INIT_SN_U, numel floats):
** a unit vector of standard normals from Philox keyed by (its layer, i),
** independent of the seed. rt_weights_init gives it, and so do
** rt_weights_load and rt_checkpoint_load for a file without the tensor
** (sn_u is optional in weights files, flow-language.md 6). */
void rt_sn_u_init(const rt_desc *d, int i, float *out);
void rt_weights_free(rt_weights *w);

/* ---- a loaded model (rt_model.c) ---- */
typedef struct rt_model rt_model;

/* Copies the weights, runs the prep programs, makes nthreads-1 workers
** (nthreads <= 0: all cores) and every scratch buffer. */
rt_model *rt_model_open(const rt_desc *d, const rt_kernel kernels[RT_NENTRY],
                        const rt_weights *w, int nthreads, char *err, size_t errlen);
void rt_model_close(rt_model *m);
/* ctx: NULL, or n rows, or (ctx_rows == 1) one row for all. */
int rt_model_encode(rt_model *m, size_t n, const float *x, const float *ctx,
                    size_t ctx_rows, float *z, float *logdet);
int rt_model_decode(rt_model *m, size_t n, const float *z, const float *ctx,
                    size_t ctx_rows, float *x, float *logdet);
int rt_model_log_prob(rt_model *m, size_t n, const float *x, const float *ctx,
                      size_t ctx_rows, float *log_prob);
int rt_model_sample(rt_model *m, size_t n, uint64_t seed, const float *ctx,
                    size_t ctx_rows, float *x, float *log_prob);
/* The layer of the last RT_ENOCONV of m's calls (rt_model_grad too): when
** several tiles failed, the one with the lowest row wins, so the answer does
** not depend on the thread count. -1 when no call has failed so. */
int rt_model_failed_layer(const rt_model *m);
/* The prep results of an entry, for tests and the interpreter, brought up
** to date (during training an entry's program runs when it is next used);
** entry RT_TRAIN_PREP (when desc.has_train): the train program's. */
const float *const *rt_model_prep(rt_model *m, int entry);
#define RT_TRAIN_PREP RT_NENTRY

/* ---- prep programs in double (rt_prep.c) ---- */
/* Runs en's program (en is one of d's entries or d->train): params[i] is
** float* or int64_t* by dtype; vals[q] receives result q (rows * n). */
void rt_prep_forward(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                     double *const *vals);
/* Doubles vals[q] must hold for prep p: rows * n, and for RT_PREP_SPECNORM
** a tail of 2 + 2 out + in (u, v and sigma for rt_prep_backward). Mode 1
** writes its sn_u parameter (params[p->args[1]]). */
size_t rt_prep_val_len(const rt_prep *p);
/* Spectral norm helpers, in double, W row-major [out, in] (for tests and
** the reference interpreter; RT_PREP_SPECNORM uses the same code):
** rt_specnorm_sigma iterates to convergence as mode 0 does, from u[out]
** (all zero: the fixed vector), and leaves the converged u in u and v in
** v[in]; rt_specnorm_step is mode 1's single step, u updated in place.
** Both return sigma (0 for W = 0). */
double rt_specnorm_sigma(const double *W, int out, int in, double *u, double *v);
double rt_specnorm_step(const double *W, int out, int in, double *u, double *v);
/* Doubles of work space rt_prep_backward needs for en (2 D^2 for the
** largest linear_lu, else 0). */
size_t rt_prep_work_size(const rt_desc *d, const rt_entry_desc *en);
/* Reverse mode through en: vals are rt_prep_forward's results; gvals[q]
** holds dL/d(result q) on entry and is used as the accumulator of the
** earlier results' adjoints (so it is changed); the parameters' adjoints
** are ADDED into gparams[i] (numel doubles; NULL entries, I64 params and
** the linear_lu sign and perm get none; gparams itself may be NULL). */
void rt_prep_backward(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      const double *const *vals, double *const *gvals, double *const *gparams,
                      double *work);

/*
** Training (rt_train.c). The gradient kernel has the ABI above with
**   args[0] x, args[1] ctx, args[2] log p(x) per row (nrows x 1), args[3] NULL,
**   params, the train entry's Q prep results, scratch, and then
**   args[5+P+Q .. 5+P+2Q+P)  P + Q gradient slots (float*, NULL for I64
**   params): the kernel ADDS d(sum over its rows of -log p)/d(slot) into
**   them. Slot i < P is parameter i, slot P + q is prep result q.
**   args[5+2P+2Q]  noise: nrows x desc.noise_width floats, row r holding
**   the blocks of desc.noise for sample r of the tile (NULL when
**   noise_width is 0); read only.
** rt_model_grad runs it over n rows (tiles spread over the threads, each
** thread accumulating into its own slots, summed in thread order), then
** back-propagates the prep slots through the prep program into the
** parameters (rt_prep_backward), and divides by n: grads[i] (floats, or
** NULL for I64 params) receives d(mean -log p)/d(param i) (0 for sn_u,
** which the kernel and the specnorm reverse leave alone); *loss the mean
** -log p. Returns RT_ENUMERIC when the loss or a gradient is not finite,
** RT_ENOCONV (nothing computed) when a kernel call returned a status.
*/
int rt_model_set_train(rt_model *m, rt_kernel train);
/* The noise of the following rt_model_grad calls (call it once per step,
** counter = the step): value (row, column) depends only on (seed,
** counter, the row's index in the batch, column), never on threads or
** tiles. Philox key seed ^ 0x6e6f697365 ("noise"), counter (hi = counter,
** lo = row << 24 | block << 16 | word), so it does not repeat the data
** shuffles of the same seed. Rademacher column j of a block is bit j % 128
** of word j / 128 (1: +1); a roulette block draws G from word 0's first
** 64 bits: U in (0,1), G = floor(log U / log(1 - p)). A gauss block's
** columns 2k, 2k+1 are Box-Muller on word k's two 64-bit uniforms U1, U2:
** R cos(2 pi U2), R sin(2 pi U2), R = sqrt(-2 log U1) (so n <= 2^17). Beta
** column j (n <= 256) is X / (X + Y) of X ~ Gamma(a), Y ~ Gamma(b) from
** words 256 j + [0, 128) and 256 j + [128, 256) (rt_train.c: Marsaglia-Tsang,
** at most 64 tries); a = b = 1: the top 24 bits of word 256 j / 2^24.
** Seed and counter are 0 until set. */
void rt_model_set_noise(rt_model *m, uint64_t seed, uint64_t counter);
int rt_model_grad(rt_model *m, size_t n, const float *x, const float *ctx, size_t ctx_rows,
                  double *loss, float *const *grads);
/* Replaces the model's parameters (same shapes) and reruns every prep
** program: what an optimiser step ends with. The train program runs first
** (its specnorm steps advance the model's sn_u), then the others.
** sn_u parameters advanced by the train program are the model's state
** while it trains (rt_model_set_train done): their values in w are NOT
** copied in; instead, on success, w's buffers RECEIVE the vectors the
** step started from (unless they are the model's own, rt_model_params).
** So after every set_params, w holds what torch's state_dict would at
** that point (weight, u before the next forward), and a model opened
** from w continues exactly as this one: save w, not rt_model_params. */
int rt_model_set_params(rt_model *m, const rt_weights *w, char *err, size_t errlen);
/* The live parameters (the kernels'); an advanced sn_u here is one power
** step ahead of what set_params hands back. */
const rt_weights *rt_model_params(const rt_model *m);

/* ---- optimiser (rt_optim.c) ---- */
typedef enum { RT_SCHED_CONSTANT, RT_SCHED_COSINE, RT_SCHED_ONECYCLE } rt_schedule;
typedef struct rt_optim_cfg {
  double lr, beta1, beta2, eps, weight_decay, clip;  /* clip <= 0: none */
  int adamw;                /* decoupled weight decay (torch.optim.AdamW) */
  rt_schedule schedule;
  long total_steps, warmup;
} rt_optim_cfg;
typedef struct rt_optim rt_optim;

/* Zeroed moments for every trained parameter of d: the F32 ones except
** linear_lu's sign (RT_INIT_LU_SIGN) and the spectral-norm vectors
** (RT_INIT_SN_U). NULL when out of memory or c is bad. */
rt_optim *rt_optim_new(const rt_desc *d, const rt_optim_cfg *c);
void rt_optim_free(rt_optim *o);
/* The learning rate of step `step` (0-based): a linear warm-up over
** `warmup` steps, lr * (step + 1) / warmup, then constant, or cosine decay
** lr/2 (1 + cos(pi t)), t = (step - warmup) / (total_steps - warmup), to 0 at
** total_steps; onecycle is torch.optim.lr_scheduler.OneCycleLR (cosine
** annealing, div_factor 25, final_div_factor 1e4, pct_start 0.3 or
** warmup / total_steps when warmup > 0): from lr/25 up to lr, then down to
** lr/25/1e4 at total_steps - 1. */
double rt_optim_lr(const rt_optim *o, long step);
/* One step at lr(rt_optim_steps(o)): the global L2 norm of the trained
** parameters' gradients goes to *grad_norm (may be NULL); when clip > 0 the
** gradients are scaled IN PLACE by clip / (norm + 1e-6) if that is below 1
** (torch.nn.utils.clip_grad_norm_); then torch.optim.Adam (weight_decay
** added to the gradient) or AdamW (p *= 1 - lr * weight_decay first), both
** bias-corrected. grads[i] is NULL for params that are not trained.
** RT_ENUMERIC, changing nothing, when the norm is not finite. */
int rt_optim_step(rt_optim *o, rt_weights *w, float *const *grads, double *grad_norm);
long rt_optim_steps(const rt_optim *o);
void rt_optim_set_steps(rt_optim *o, long steps);
/* Adam's first (which 0) or second (which 1) moment of param i, numel
** floats, writable (checkpoints restore it); NULL when i is not trained. */
float *rt_optim_moment(rt_optim *o, int i, int which);
const rt_optim_cfg *rt_optim_config(const rt_optim *o);

/* ---- training checkpoints (rt_checkpoint.c) ---- */
typedef struct rt_train_state {
  long step;                /* steps done */
  double best_valid;        /* best validation loss so far (inf: none) */
  long since_best;          /* evaluations since it */
  uint64_t seed;
  int has_best;
  rt_weights best;          /* the best-so-far parameters when has_best */
} rt_train_state;

/* A safetensors file, written atomically (PATH.tmp + rename): the params
** under their names, Adam's moments as optim.m.NAME / optim.v.NAME for the
** trained params (when o is non-NULL), the best params as best.NAME (when
** s->has_best), and __metadata__ format, model, step, optim_step,
** best_valid (%.17g), since_best, seed (and best_step = s->best.step). */
int rt_checkpoint_save(const rt_desc *d, const char *path, const rt_weights *w,
                       const rt_optim *o, const rt_train_state *s, char *err, size_t errlen);
/* Reads one back, checked against d like rt_weights_load (every tensor,
** nothing extra, shapes, dtypes, perms): fills *w (free with
** rt_weights_free), o's moments and step counter (o may be NULL: moments
** in the file are then skipped), and *s, whose best weights (has_best) are
** allocated here: free them with rt_train_state_free. */
int rt_checkpoint_load(const rt_desc *d, const char *path, rt_weights *w, rt_optim *o,
                       rt_train_state *s, char *err, size_t errlen);
void rt_train_state_free(rt_train_state *s);

/* ---- toy data sets (rt_toy.c) ---- */
/* n rows of rt_toy_dim(name) floats into out, deterministic in (name, n,
** seed): the 2-D "moons", "circles", "8gaussians", "checkerboard",
** "pinwheel", "2spirals", as in FFJORD's toy_data.py (with its scaling),
** and the 8-D "tabular8" (nonlinear autoregressive dependencies, for MAF),
** and the rows (without context) of the conditional sets below.
** An unknown name is an error listing the valid ones. */
int rt_toy(const char *name, long n, uint64_t seed, float *out, char *err, size_t errlen);
/* The width of a row of toy set name: 2, 8 or 350; -1 for an unknown name. */
int rt_toy_dim(const char *name);
/* The context width of toy set name: 512 for the conditional "reach" (pi0-
** like action chunks [50, 7] given a 512-D observation), 0 for the others,
** -1 for an unknown name. */
int rt_toy_context_dim(const char *name);
/* rt_toy plus, when ctx is non-NULL, n rows of rt_toy_context_dim(name)
** floats into ctx (an error for a set without context). The context map is
** the same for every seed; out is the same with or without ctx. */
int rt_toy_cond(const char *name, long n, uint64_t seed, float *out, float *ctx, char *err,
                size_t errlen);

/* Entry points of a built shared object (rt_so.c): the generated m_open
** calls this with the embedded descriptor text and, optionally, weights. */
rt_model *rt_so_open(const char *desc_text, const rt_kernel kernels[RT_NENTRY],
                     const void *builtin, size_t builtin_len,
                     const char *weights_path, char *err, size_t errlen);

/* ---- data files (rt_data.c) ---- */
typedef struct rt_array {
  float *data;
  int ndim;
  long shape[8];
  long rows, cols;          /* shape[0], product of the rest */
} rt_array;

/* .npy (f32/f64, C order) or .csv by extension; message names the file. */
int rt_array_load(const char *path, rt_array *a, char *err, size_t errlen);
/* float32 .npy, written atomically (PATH.tmp + rename). */
int rt_npy_save(const char *path, const float *data, int ndim, const long *shape,
                char *err, size_t errlen);
void rt_array_free(rt_array *a);
/* 0 when every value is finite; else -1 and a message naming what, the
** row and the column of the first NaN or infinity. */
int rt_array_check_finite(const rt_array *a, const char *what, char *err, size_t errlen);

/* ---- counter-based RNG (rt_rng.c): Philox4x32-10 ---- */
void rt_philox(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo, uint32_t out[4]);
/* Standard normals for rows [row0, row0+nrows) of width dim: value (r, j)
** depends only on (seed, r, j), so any split across threads agrees. */
void rt_normal_rows(uint64_t seed, uint64_t stream, long row0, long nrows, int dim,
                    float *out);
float rt_uniform01(uint64_t seed, uint64_t stream, uint64_t i); /* (0,1) */

/* ---- helpers callable from kernels (rt_kernels.c) ---- */
/* Rational-quadratic spline of flow-language.md 5a on one value; h points at
** the 3K-1 raw parameters. Returns y and stores log|dy/dx| (forward) or
** log|dx/dy| (inverse) in *logd. */
float rt_k_rqs(float x, const float *h, int64_t bins, float bound, float *logd);
float rt_k_rqs_inv(float y, const float *h, int64_t bins, float bound, float *logd);
/* Back through one spline value: given gy = dL/dy and gl = dL/d(logd) of
** the outputs of rt_k_rqs (or rt_k_rqs_inv), returns dL/dx (dL/dy) and
** WRITES dL/dh[k] into gh[0 .. 3K-1). Exact derivatives, not differences. */
float rt_k_rqs_grad(float x, const float *h, int64_t bins, float bound, float gy, float gl,
                    float *gh);
float rt_k_rqs_inv_grad(float y, const float *h, int64_t bins, float bound, float gy, float gl,
                        float *gh);
/* C[m,n] = A[m,k] B[n,k]^T (+ bias[n] when non-NULL): OpenBLAS sgemm. */
void rt_k_gemm(int64_t m, int64_t n, int64_t k, const float *A, const float *B,
               const float *bias, float *C);
/* The gradient kernel's products of wide layers, all row-major and
** contiguous: C[m,n] = A[m,k] B[k,n] (the input gradient dy W), and
** C[m,n] += A[k,m]^T B[k,n] (the weight gradient dy^T x over k rows). */
void rt_k_gemm_nn(int64_t m, int64_t n, int64_t k, const float *A, const float *B, float *C);
void rt_k_gemm_tn_acc(int64_t m, int64_t n, int64_t k, const float *A, const float *B,
                      float *C);
/* Residual layers' exact log-determinant, x a row-major D x D matrix X
** (contiguous), D <= RT_K_LOGDET_MAX (the work space is on the stack; the
** code generator refuses larger D): log|det(I + X)| by LU with partial
** pivoting in double, -inf when I + X is singular; and its gradient, out =
** g (I + X)^-T row-major (NaN everywhere when singular). */
#define RT_K_LOGDET_MAX 64
float rt_k_logdet(const float *x, int64_t D);
void rt_k_logdet_grad(const float *x, int64_t D, float g, float *out);
/* The sde layer's Brownian increments (rt_sde.h): for each of rows rows,
** D normals of step `step` keyed by the row's n input floats at
** key + r * ks and the layer, into out + r * os. */
/* One sample's dopri5 step control (rt_ode.h) on s [n + 2], y5 [n],
** err [n] into out [n + 2]. */
void rt_k_ode_ctrl(const float *s, const float *y5, const float *err, int64_t n, float rtol,
                   float atol, float tend, float *out);
void rt_k_sde_noise(const float *key, int64_t ks, int64_t n, int64_t rows, int64_t D,
                    int64_t step, int64_t layer, float *out, int64_t os);

#endif
