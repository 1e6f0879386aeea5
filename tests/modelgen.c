/* tests/modelgen.c: see modelgen.h. */
#include "modelgen.h"

#include <math.h>
#include <stdlib.h>

#include "rt.h"

static uint64_t next(mg_rng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double mg_uniform(mg_rng *r) { return (double)(next(r) >> 11) * 0x1.0p-53; }

double mg_normal(mg_rng *r) {
  double u = mg_uniform(r) + 1e-300, v = mg_uniform(r);
  return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static int pick(mg_rng *r, int n) { return (int)(mg_uniform(r) * n); }

static int *random_perm(ir_arena *A, mg_rng *r, int D) {
  int *p = ir_alloc(A, (size_t)D * sizeof *p);
  for (int i = 0; i < D; i++) p[i] = i;
  for (int i = D - 1; i > 0; i--) {
    int j = pick(r, i + 1), t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

static void random_layer(ir_arena *A, mg_rng *r, int D, ir_layerkind kind, ir_layer *L) {
  L->kind = kind;
  L->net.kind = NET_MLP;
  L->net.nhidden = pick(r, 3);
  int *h = ir_alloc(A, 3 * sizeof *h);
  for (int j = 0; j < L->net.nhidden; j++) h[j] = 1 + pick(r, 12);
  L->net.hidden = h;
  L->net.act = (ir_act)pick(r, ACT_COUNT);
  L->scale = (ir_scale)pick(r, 3);
  L->bins = 1 + pick(r, 8);
  L->bound = 1 + 3 * mg_uniform(r);
  L->perm_kind = (ir_permkind)pick(r, 3);
  L->perm_seed = (uint64_t)pick(r, 100);
  L->perm = random_perm(A, r, D);
  if (kind == LAYER_MAF || kind == LAYER_IAF) {
    L->net.kind = NET_MADE;
    L->spline = pick(r, 2);
  }
  if (kind == LAYER_RESIDUAL) {   /* a contraction: 1-Lipschitz activations only */
    static const ir_act acts[] = {ACT_RELU, ACT_TANH, ACT_ELU, ACT_SOFTPLUS, ACT_LIPSWISH};
    L->net.act = acts[pick(r, 5)];
    L->lipschitz = 0.5 + 0.4 * mg_uniform(r);
    L->iters = 400;
    L->tol = 1e-6;
    L->terms = 2;
    L->roulette = 0.5;
  }
  if (kind == LAYER_CNF || kind == LAYER_SDE) {
    L->time = pick(r, 2) ? TIME_SINCOS : TIME_SCALAR;
    L->time_k = L->time == TIME_SINCOS ? 4 + 2 * pick(r, 3) : 1;
    L->solver = (ir_solver)pick(r, 3);
    L->steps = 1 + pick(r, 3);
    L->hutchinson = 0;   /* tests that want the estimator set it */
    L->sigma = 0.5;
  }
}

ir_model *mg_model(ir_arena *A, mg_rng *r, int D, int C, int nlayers, const ir_layerkind *kinds) {
  ir_model *m = ir_alloc(A, sizeof *m);
  m->name = "rnd";
  m->dim = D;
  m->ndims = 1;
  m->dims[0] = D;
  m->context = C;
  m->nlayers = nlayers;
  ir_layer *L = ir_alloc(A, (size_t)(nlayers ? nlayers : 1) * sizeof *L);
  int ar = 0;
  for (int k = 0; k < nlayers; k++) {
    /* random kinds: the discrete layers (continuous ones: test_cnf.c) */
    random_layer(A, r, D, kinds ? kinds[k] : (ir_layerkind)pick(r, LAYER_CNF), &L[k]);
    ar |= L[k].kind == LAYER_MAF || L[k].kind == LAYER_IAF;
  }
  /* exp scales compound through the D steps of a sequential direction:
  ** overflow of random weights there says nothing about the compiler */
  for (int k = 0; ar && nlayers > 1 && k < nlayers; k++)
    if (L[k].scale == SCALE_EXP) L[k].scale = SCALE_TANH;
  m->layers = L;
  return m;
}

static void lu_values(mg_rng *r, const ir_param *pa, void *data) {
  int D = pa->shape[0];
  float *f = data;
  int64_t *q = data;
  switch (pa->init) {
  case INIT_LU_LOWER: case INIT_LU_UPPER:
    for (int i = 0; i < D * D; i++) f[i] = (float)(0.3 * mg_normal(r) / sqrt(D));
    break;
  case INIT_LU_LOG_DIAG:
    for (int i = 0; i < D; i++) f[i] = (float)(0.3 * mg_normal(r));
    break;
  case INIT_LU_SIGN:
    for (int i = 0; i < D; i++) f[i] = mg_uniform(r) < 0.5 ? -1.0f : 1.0f;
    break;
  default:
    for (int i = 0; i < D; i++) q[i] = i;
    for (int i = D - 1; i > 0; i--) {
      int j = pick(r, i + 1);
      int64_t t = q[i];
      q[i] = q[j];
      q[j] = t;
    }
  }
}

/* A converged power-iteration vector for the weight W [out, in], so that
** the train program's one step gives the converged sigma the interpreter
** uses. */
static void sn_converged(const float *W, int out, int in, float *u) {
  double *Wd = malloc((size_t)out * in * sizeof *Wd + 8), *ud = calloc((size_t)out + 1, 8);
  double *vd = calloc((size_t)in + 1, 8);
  for (long k = 0; k < (long)out * in; k++) Wd[k] = W[k];
  rt_specnorm_sigma(Wd, out, in, ud, vd);
  for (int k = 0; k < out; k++) u[k] = (float)ud[k];
  free(Wd); free(ud); free(vd);
}

void **mg_params(ir_arena *A, mg_rng *r, const ir_program *p, double scale) {
  void **v = ir_alloc(A, (size_t)(p->nparams ? p->nparams : 1) * sizeof *v);
  for (int i = 0; i < p->nparams; i++) {
    const ir_param *pa = &p->params[i];
    long n = pa->ndim == 2 ? (long)pa->shape[0] * pa->shape[1] : pa->shape[0];
    v[i] = ir_alloc(A, (size_t)(n ? n : 1) * 8);
    if (pa->init == INIT_SN_U) {   /* its weight: param p0 + 2 J; it is p0 + 2 nl + J */
      int k = pa->layer, nl = p->model->layers[k].net.nhidden + 1;
      int J = i - p->layer_param0[k] - 2 * nl;
      const ir_param *W = &p->params[p->layer_param0[k] + 2 * J];
      sn_converged(v[p->layer_param0[k] + 2 * J], W->shape[0], W->shape[1], v[i]);
    } else if (pa->init >= INIT_LU_LOWER || pa->init == INIT_PERM_RANDOM) {
      lu_values(r, pa, v[i]);
    } else if (pa->init == INIT_PERM_LIST) {
      for (long j = 0; j < n; j++) ((int64_t *)v[i])[j] = pa->values[j];
    } else {
      float *f = v[i];
      double s = pa->fan_in > 0 ? scale / sqrt(pa->fan_in) : scale;
      for (long j = 0; j < n; j++) f[j] = (float)(s * mg_normal(r));
    }
  }
  return v;
}
