/*
** runtime/rt_model.c: a loaded model: owned weights, prep results, a thread
** pool and every buffer the entries need, all made by rt_model_open, so the
** calls allocate nothing. Work is split into tiles of desc.tile rows whose
** boundaries do not depend on the thread count, so neither do the results.
*/
#include "rt_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);

/* struct rt_model and rt_tls are in rt_internal.h: rt_train.c shares them. */

/* ------------------------------------------------------------------ */
/* prep programs                                                       */

const rt_entry_desc *rt_model_entry(const rt_model *m, int e) {
  return e < RT_NENTRY ? &m->d->entry[e] : &m->d->train;
}

/* Makes entry e's result buffers: double values and their float copies. */
static int alloc_prep(rt_model *m, int e, char *err, size_t errlen) {
  const rt_entry_desc *en = rt_model_entry(m, e);
  if (en->nprep == 0) return 0;
  m->prep[e] = calloc((size_t)en->nprep, sizeof(float *));
  m->vals[e] = calloc((size_t)en->nprep, sizeof(double *));
  if (!m->prep[e] || !m->vals[e]) return rt_errf(err, errlen, "model: out of memory");
  for (int q = 0; q < en->nprep; q++) {
    size_t len = (size_t)en->prep[q].rows * (size_t)en->prep[q].n;
    size_t vlen = rt_prep_val_len(&en->prep[q]);    /* specnorm keeps u, v, sigma */
    m->vals[e][q] = malloc((vlen ? vlen : 1) * sizeof(double));
    m->prep[e][q] = rt_alloc_aligned(len * sizeof(float));
    if (!m->vals[e][q] || !m->prep[e][q]) return rt_errf(err, errlen, "model: out of memory");
  }
  return 0;
}

/* Runs entry e's program in double and stores float results. */
static void run_prep(rt_model *m, int e) {
  const rt_entry_desc *en = rt_model_entry(m, e);
  rt_prep_forward(m->d, en, m->params, m->vals[e]);
  for (int q = 0; q < en->nprep; q++) {
    size_t len = (size_t)en->prep[q].rows * (size_t)en->prep[q].n;
    for (size_t k = 0; k < len; k++) m->prep[e][q][k] = (float)m->vals[e][q][k];
  }
}

static int nprog(const rt_model *m) { return m->d->has_train ? RT_NENTRY + 1 : RT_NENTRY; }

/* Program k in running order: the train program first, so that its
** specnorm steps have advanced sn_u before the entries' specnorms start
** their power iterations from it (then they converge in a few steps). */
static int prog_at(const rt_model *m, int k) {
  if (!m->d->has_train) return k;
  return k == 0 ? RT_NENTRY : k - 1;
}

/* The train program's specnorm that advances parameter i (mode 1), or -1.
** Such an sn_u is the model's state while it trains (rt_model_set_params). */
static int sn_step_of(const rt_model *m, int i) {
  const rt_entry_desc *en = &m->d->train;
  if (!m->d->has_train || m->d->params[i].init != RT_INIT_SN_U) return -1;
  for (int q = 0; q < en->nprep; q++)
    if (en->prep[q].op == RT_PREP_SPECNORM && en->prep[q].iargs[0] == 1 &&
        en->prep[q].args[1] == i)
      return q;
  return -1;
}

/* The u that train prep q's step started from: its tail (rt.h) after the
** result, sigma, the divisor, u' [rows] and v [n]. */
static const double *sn_start(const rt_model *m, int q) {
  const rt_prep *p = &m->d->train.prep[q];
  size_t out = (size_t)p->rows, in = (size_t)p->n;
  return m->vals[RT_NENTRY][q] + out * in + 2 + out + in;
}

/* ------------------------------------------------------------------ */
/* open and close                                                      */

void rt_model_close(rt_model *m) {
  if (!m) return;
  rt_pool_free(m->pool);
  rt_train_free(m);                       /* before the tls it points into */
  if (m->tls)
    for (int t = 0; t < m->nthreads; t++) {
      free(m->tls[t].scratch);
      free(m->tls[t].ctxbuf);
      free(m->tls[t].zbuf);
      free(m->tls[t].ldbuf);
      free(m->tls[t].lpbuf);
      free(m->tls[t].args);
    }
  free(m->tls);
  for (int e = 0; e <= RT_NENTRY; e++) {
    int nq = rt_model_entry(m, e)->nprep;
    for (int q = 0; q < nq; q++) {
      if (m->prep[e]) free(m->prep[e][q]);
      if (m->vals[e]) free(m->vals[e][q]);
    }
    free(m->prep[e]);
    free(m->vals[e]);
  }
  free(m->seen);
  if (m->params)
    for (int i = 0; i < m->d->nparams; i++) free(m->params[i]);
  free(m->params);
  rt_desc_free(m->d);
  free(m);
}

static int copy_weights(rt_model *m, const rt_weights *w, char *err, size_t errlen) {
  const rt_desc *d = m->d;
  if (!w || w->n != d->nparams || (d->nparams && !w->data))
    return rt_errf(err, errlen, "model: the weights do not fit the model");
  m->params = calloc(d->nparams ? (size_t)d->nparams : 1, sizeof(void *));
  if (!m->params) return rt_errf(err, errlen, "model: out of memory");
  for (int i = 0; i < d->nparams; i++) {
    const rt_param_desc *p = &d->params[i];
    size_t n = rt_param_numel(p), bytes = n * (p->dtype == RT_I64 ? 8 : 4);
    if (!w->data[i] && n) return rt_errf(err, errlen, "model: no data for %s", p->name);
    if (!(m->params[i] = rt_alloc_aligned(bytes))) return rt_errf(err, errlen, "model: out of memory");
    if (bytes) memcpy(m->params[i], w->data[i], bytes);
    if (p->dtype == RT_I64 && n > m->maxperm) m->maxperm = n;
    if (p->dtype == RT_I64) {             /* kernels index with it: must be a perm */
      const int64_t *v = m->params[i];
      unsigned char *seen = calloc(n ? n : 1, 1);
      if (!seen) return rt_errf(err, errlen, "model: out of memory");
      for (size_t k = 0; k < n; k++) {
        if (v[k] < 0 || (size_t)v[k] >= n || seen[v[k]]) {
          free(seen);
          return rt_errf(err, errlen, "model: %s is not a permutation", p->name);
        }
        seen[v[k]] = 1;
      }
      free(seen);
    }
  }
  m->w.n = d->nparams;
  m->w.data = m->params;
  m->w.step = w->step;
  if (!(m->seen = calloc(m->maxperm ? m->maxperm : 1, 1)))
    return rt_errf(err, errlen, "model: out of memory");
  return 0;
}

static int make_buffers(rt_model *m, char *err, size_t errlen) {
  const rt_desc *d = m->d;
  long maxs = 0;
  int maxq = 0;
  for (int e = 0; e < nprog(m); e++) {
    const rt_entry_desc *en = rt_model_entry(m, e);
    if (en->scratch > maxs) maxs = en->scratch;
    if (en->nprep > maxq) maxq = en->nprep;
  }
  size_t T = (size_t)d->tile, nargs = 4 + (size_t)d->nparams + (size_t)maxq + 1;
  m->tls = calloc((size_t)m->nthreads, sizeof *m->tls);
  if (!m->tls) return rt_errf(err, errlen, "model: out of memory");
  for (int t = 0; t < m->nthreads; t++) {
    rt_tls *b = &m->tls[t];
    b->scratch = rt_alloc_aligned(rt_mul_size(T * (size_t)maxs, sizeof(float)));
    b->ctxbuf = rt_alloc_aligned(T * (size_t)d->context * sizeof(float));
    b->zbuf = rt_alloc_aligned(T * (size_t)d->dim * sizeof(float));
    b->ldbuf = rt_alloc_aligned(T * sizeof(float));
    b->lpbuf = rt_alloc_aligned(T * sizeof(float));
    b->args = calloc(nargs, sizeof(void *));
    if (!b->scratch || !b->ctxbuf || !b->zbuf || !b->ldbuf || !b->lpbuf || !b->args)
      return rt_errf(err, errlen, "model: out of memory for %ld scratch floats a row", maxs);
    for (int i = 0; i < d->nparams; i++) b->args[4 + i] = m->params[i];
  }
  return 0;
}

rt_model *rt_model_open(const rt_desc *d, const rt_kernel kernels[RT_NENTRY],
                        const rt_weights *w, int nthreads, char *err, size_t errlen) {
  if (rt_desc_check(d, err, errlen)) return NULL;
  if (!kernels) { rt_errf(err, errlen, "model: no kernels"); return NULL; }
  rt_model *m = calloc(1, sizeof *m);
  if (!m || !(m->d = rt_desc_copy(d))) {
    free(m);
    rt_errf(err, errlen, "model: out of memory");
    return NULL;
  }
  memcpy(m->k, kernels, sizeof m->k);
  int rc = copy_weights(m, w, err, errlen);
  for (int e = 0; e < nprog(m) && !rc; e++) rc = alloc_prep(m, e, err, errlen);
  for (int k = 0; k < nprog(m) && !rc; k++) run_prep(m, prog_at(m, k));
  if (!rc) {
    openblas_set_num_threads(1);          /* we split the work over tiles */
    m->pool = rt_pool_new(nthreads);
    if (!m->pool) rc = rt_errf(err, errlen, "model: cannot start threads");
    else m->nthreads = rt_pool_size(m->pool);
    for (int i = 0; i < d->nparams; i++)   /* as codegen's CG_GEMV_MIN_SIZE */
      m->blas_wide |= d->params[i].dtype == RT_F32 && rt_param_numel(&d->params[i]) >= 512 * 512;
  }
  if (!rc) rc = make_buffers(m, err, errlen);
  if (rc) {
    rt_model_close(m);
    return NULL;
  }
  return m;
}

const float *const *rt_model_prep(rt_model *m, int entry) {
  if (!m || entry < 0 || entry >= nprog(m)) return NULL;
  if (entry < RT_NENTRY && m->stale[entry]) {
    run_prep(m, entry);
    m->stale[entry] = 0;
  }
  return (const float *const *)m->prep[entry];
}

const rt_weights *rt_model_params(const rt_model *m) { return m ? &m->w : NULL; }

/* Checks every perm of w into m->seen (sized at open): no allocation. */
static int check_perms(rt_model *m, const rt_weights *w, char *err, size_t errlen) {
  const rt_desc *d = m->d;
  for (int i = 0; i < d->nparams; i++) {
    if (d->params[i].dtype != RT_I64) continue;
    size_t n = rt_param_numel(&d->params[i]);
    const int64_t *v = w->data[i];
    if (n && !v) return rt_errf(err, errlen, "model: no data for %s", d->params[i].name);
    memset(m->seen, 0, n);
    for (size_t k = 0; k < n; k++) {
      if (v[k] < 0 || (size_t)v[k] >= n || m->seen[v[k]])
        return rt_errf(err, errlen, "model: %s is not a permutation", d->params[i].name);
      m->seen[v[k]] = 1;
    }
  }
  return 0;
}

/* Why: the caller's weights are what gets saved. Giving them the u each
** step started from (not the stepped one) pairs it with the current W the
** way torch's state_dict does, so reopening from them repeats this step. */
static void hand_back_sn(rt_model *m, const rt_weights *w, int training) {
  for (int i = 0; training && i < m->d->nparams; i++) {
    int q = sn_step_of(m, i);
    if (q < 0 || w->data[i] == m->params[i]) continue;
    float *u = w->data[i];
    const double *u0 = sn_start(m, q);
    for (size_t k = 0; k < rt_param_numel(&m->d->params[i]); k++) u[k] = (float)u0[k];
  }
}

int rt_model_set_params(rt_model *m, const rt_weights *w, char *err, size_t errlen) {
  if (!m || !w || w->n != m->d->nparams || (w->n && !w->data)) {
    rt_errf(err, errlen, "model: the weights do not fit the model");
    return RT_EINVAL;
  }
  const rt_desc *d = m->d;
  for (int i = 0; i < d->nparams; i++)
    if (!w->data[i] && rt_param_numel(&d->params[i])) {
      rt_errf(err, errlen, "model: no data for %s", d->params[i].name);
      return RT_EINVAL;
    }
  if (check_perms(m, w, err, errlen)) return RT_EINVAL;
  int training = m->train != NULL;        /* the train program runs below */
  for (int i = 0; i < d->nparams; i++) {
    const rt_param_desc *p = &d->params[i];
    size_t bytes = rt_param_numel(p) * (p->dtype == RT_I64 ? 8 : 4);
    if (training && sn_step_of(m, i) >= 0) continue;   /* the model's own u */
    if (bytes && w->data[i] != m->params[i]) memcpy(m->params[i], w->data[i], bytes);
  }
  m->w.step = w->step;
  /* every training step ends here: the train program now, the entries'
     when next called (a cnf's fused trace costs H0 H1 D at each run) */
  for (int k = 0; k < nprog(m); k++) {
    int e = prog_at(m, k);
    if (e == RT_NENTRY ? training : m->k[e] != NULL && !training) run_prep(m, e);
    else if (e < RT_NENTRY) m->stale[e] = m->k[e] != NULL;
  }
  hand_back_sn(m, w, training);
  return RT_OK;
}

/* ------------------------------------------------------------------ */
/* running                                                             */

typedef struct job {
  rt_model *m;
  int entry;
  size_t n;
  const float *in, *ctx;
  size_t ctx_rows;
  float *out0, *out1;
  int sample;                 /* in = normals of seed; out1 = log_prob */
  uint64_t seed;
  _Atomic uint64_t *fail;     /* run's: the lowest tile's kernel failure */
  size_t T;                   /* rows per call (call_rows) */
} job;

/* Rows per kernel call for a batch of n: the compiled tile, halved (not
** below 16) while the batch is under two of them, so that a mid-sized
** batch still spreads over the pool. A function of n and the descriptor
** only: results never depend on the thread count. */
static size_t call_rows(const rt_desc *d, size_t n) {
  size_t T = (size_t)d->tile;
  while (T >= 32 && n < 2 * T) T /= 2;
  return T;
}

static void run_tile(void *arg, int tid, long item) {
  const job *j = arg;
  rt_model *m = j->m;
  const rt_desc *d = m->d;
  const rt_entry_desc *en = &d->entry[j->entry];
  rt_tls *b = &m->tls[tid];
  size_t T = j->T, row0 = (size_t)item * T, D = (size_t)d->dim;
  size_t C = (size_t)d->context;
  size_t nr = j->n - row0 < T ? j->n - row0 : T;
  const float *in = j->in ? j->in + row0 * D : b->zbuf;
  if (j->sample) rt_normal_rows(j->seed, 0, (long)row0, (long)nr, d->dim, b->zbuf);
  const float *ctx = NULL;
  if (C && j->ctx_rows == j->n) {
    ctx = j->ctx + row0 * C;
  } else if (C) {                          /* one row for all */
    for (size_t r = 0; r < nr; r++) memcpy(b->ctxbuf + r * C, j->ctx, C * sizeof(float));
    ctx = b->ctxbuf;
  }
  float *ld = NULL;
  if (en->has_ld) ld = j->out1 && !j->sample ? j->out1 + row0 : b->ldbuf;
  size_t outw = j->entry == RT_LOGPROB ? 1 : D;
  void **a = b->args;
  a[0] = (void *)in;
  a[1] = (void *)ctx;
  a[2] = j->out0 + row0 * outw;
  a[3] = ld;
  size_t P = (size_t)d->nparams;
  for (int q = 0; q < en->nprep; q++) a[4 + P + (size_t)q] = m->prep[j->entry][q];
  a[4 + P + (size_t)en->nprep] = b->scratch;
  int32_t st = m->k[j->entry]((void *const *)a, (int64_t)nr);
  if (st) {
    rt_fail_note(j->fail, (size_t)item, st);
    return;
  }
  if (j->sample && j->out1) {
    const double half_log_2pi = 0.91893853320467274178032973640562;
    for (size_t r = 0; r < nr; r++) {
      double s = 0;
      for (size_t c = 0; c < D; c++) {
        double z = b->zbuf[r * D + c];
        s += z * z;
      }
      double ldr = en->has_ld ? b->ldbuf[r] : 0.0;
      j->out1[row0 + r] = (float)(-0.5 * s - (double)D * half_log_2pi - ldr);
    }
  }
}

static int run(job *j) {
  rt_model *m = j->m;
  const rt_desc *d = m->d;
  if (!m->k[j->entry]) return RT_EINVAL;
  if (m->stale[j->entry]) {
    run_prep(m, j->entry);
    m->stale[j->entry] = 0;
  }
  if (d->context > 0) {
    if (!j->ctx || !(j->ctx_rows == 1 || j->ctx_rows == j->n)) return RT_EINVAL;
  } else if (j->ctx) {
    return RT_EINVAL;
  }
  if (j->n > SIZE_MAX / 64 / (size_t)d->dim) return RT_EINVAL;
  size_t T = j->T = call_rows(d, j->n);
  _Atomic uint64_t fail = 0;
  j->fail = &fail;
  long ntiles = (long)((j->n + T - 1) / T);
  /* a call of a few rows leaves the pool idle: let OpenBLAS split its large
     matrix-vector products instead, which keeps the bits of one thread
     (pi0's head, batch-1 sampling on two cores: 2.55 -> 1.2-1.5 ms) */
  int wide = ntiles == 1 && j->n < RT_K_GEMV_ROWS && m->nthreads > 1 && m->blas_wide;
  if (wide) openblas_set_num_threads(m->nthreads);
  rt_pool_run(m->pool, ntiles, run_tile, j);
  if (wide) openblas_set_num_threads(1);
  return rt_fail_take(m, atomic_load(&fail));
}

void rt_fail_note(_Atomic uint64_t *fail, size_t tile, int32_t status) {
  uint64_t key = (uint64_t)tile << 32 | (uint32_t)status, cur = atomic_load(fail);
  while ((cur == 0 || key < cur) && !atomic_compare_exchange_weak(fail, &cur, key)) {}
}

int rt_fail_take(rt_model *m, uint64_t fail) {
  if (!fail) return RT_OK;
  m->failed_layer1 = (int)(uint32_t)fail;   /* status = 1 + layer */
  return RT_ENOCONV;
}

int rt_model_failed_layer(const rt_model *m) { return m ? m->failed_layer1 - 1 : -1; }

int rt_model_encode(rt_model *m, size_t n, const float *x, const float *ctx,
                    size_t ctx_rows, float *z, float *logdet) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !z) return RT_EINVAL;
  job j = { m, logdet ? RT_ENCODE_LD : RT_ENCODE, n, x, ctx, ctx_rows, z, logdet, 0, 0, NULL, 0 };
  return run(&j);
}

int rt_model_decode(rt_model *m, size_t n, const float *z, const float *ctx,
                    size_t ctx_rows, float *x, float *logdet) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !z) return RT_EINVAL;
  job j = { m, logdet ? RT_DECODE_LD : RT_DECODE, n, z, ctx, ctx_rows, x, logdet, 0, 0, NULL, 0 };
  return run(&j);
}

int rt_model_log_prob(rt_model *m, size_t n, const float *x, const float *ctx,
                      size_t ctx_rows, float *log_prob) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !log_prob) return RT_EINVAL;
  job j = { m, RT_LOGPROB, n, x, ctx, ctx_rows, log_prob, NULL, 0, 0, NULL, 0 };
  return run(&j);
}

int rt_model_sample(rt_model *m, size_t n, uint64_t seed, const float *ctx,
                    size_t ctx_rows, float *x, float *log_prob) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x) return RT_EINVAL;
  job j = { m, log_prob ? RT_DECODE_LD : RT_DECODE, n, NULL, ctx, ctx_rows, x, log_prob, 1, seed, NULL, 0 };
  return run(&j);
}
