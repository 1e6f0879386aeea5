/*
** runtime/rt_model.c: a loaded model: owned weights, prep results, a thread
** pool and every buffer the entries need, all made by rt_model_open, so the
** calls allocate nothing. Work is split into tiles of desc.tile rows whose
** boundaries do not depend on the thread count, so neither do the results.
*/
#include "rt_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);

typedef struct rt_tls {       /* one per thread, 64-byte aligned buffers */
  float *scratch, *ctxbuf, *zbuf, *ldbuf;
  void **args;
} rt_tls;

struct rt_model {
  rt_desc *d;
  rt_kernel k[RT_NENTRY];
  void **params;
  float **prep[RT_NENTRY];
  rt_pool *pool;
  int nthreads;
  rt_tls *tls;
};

/* ------------------------------------------------------------------ */
/* prep programs                                                       */

/* An operand: a float or int64 param, or an earlier result (double). */
typedef struct opnd { const float *f; const int64_t *i; const double *d; size_t len; } opnd;

static double at(const opnd *o, size_t k) {
  if (o->len == 1) k = 0;                 /* [1,1] broadcast */
  return o->d ? o->d[k] : o->f ? (double)o->f[k] : (double)o->i[k];
}

static opnd get_opnd(const rt_model *m, const rt_entry_desc *en, double *const *vals, int a) {
  opnd o = { 0, 0, 0, 0 };
  const rt_desc *d = m->d;
  if (a < d->nparams) {
    o.len = rt_param_numel(&d->params[a]);
    if (d->params[a].dtype == RT_I64) o.i = m->params[a];
    else o.f = m->params[a];
  } else {
    const rt_prep *p = &en->prep[a - d->nparams];
    o.d = vals[a - d->nparams];
    o.len = (size_t)p->rows * (size_t)p->n;
  }
  return o;
}

/* W = P L U (flow-language.md 4), or its inverse by two triangular solves
** per column: W x = e_j  <=>  L U x = e_{perm[j]}. */
static void prep_lu(const opnd *o, int D, int inverse, double *out) {
  size_t n = (size_t)D;
#define LO(r, c) ((r) == (c) ? 1.0 : (c) < (r) ? at(&o[0], (r) * n + (c)) : 0.0)
#define UP(r, c) ((r) == (c) ? at(&o[3], (r)) * exp(at(&o[2], (r))) \
                  : (c) > (r) ? at(&o[1], (r) * n + (c)) : 0.0)
  if (!inverse) {
    for (size_t i = 0; i < n; i++) {
      size_t r = (size_t)o[4].i[i];
      for (size_t c = 0; c < n; c++) {
        double s = 0;
        for (size_t k = 0; k <= (r < c ? r : c); k++) s += LO(r, k) * UP(k, c);
        out[i * n + c] = s;
      }
    }
    return;
  }
  for (size_t j = 0; j < n; j++) {
    size_t pj = (size_t)o[4].i[j];
    double *x = out;                      /* column j, strided */
    for (size_t r = 0; r < n; r++) {      /* L y = e_pj */
      double s = r == pj ? 1.0 : 0.0;
      for (size_t k = 0; k < r; k++) s -= LO(r, k) * x[k * n + j];
      x[r * n + j] = s;
    }
    for (size_t r = n; r-- > 0;) {        /* U x = y */
      double s = x[r * n + j];
      for (size_t k = r + 1; k < n; k++) s -= UP(r, k) * x[k * n + j];
      x[r * n + j] = s / UP(r, r);
    }
  }
#undef LO
#undef UP
}

static void prep_one(const rt_prep *p, const opnd *o, double *out) {
  size_t len = (size_t)p->rows * (size_t)p->n;
  switch (p->op) {
  case RT_PREP_EXP: for (size_t k = 0; k < len; k++) out[k] = exp(at(&o[0], k)); break;
  case RT_PREP_NEG: for (size_t k = 0; k < len; k++) out[k] = -at(&o[0], k); break;
  case RT_PREP_SUM: {
    double s = 0;
    for (size_t k = 0; k < o[0].len; k++) s += at(&o[0], k);
    out[0] = s;
    break;
  }
  case RT_PREP_ADD: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) + at(&o[1], k); break;
  case RT_PREP_SUB: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) - at(&o[1], k); break;
  case RT_PREP_MUL: for (size_t k = 0; k < len; k++) out[k] = at(&o[0], k) * at(&o[1], k); break;
  case RT_PREP_CONST: out[0] = p->f; break;
  case RT_PREP_LU_W: prep_lu(o, p->n, 0, out); break;
  case RT_PREP_LU_WINV: prep_lu(o, p->n, 1, out); break;
  }
}

/* Runs entry e's program in double and stores float results. */
static int run_prep(rt_model *m, int e, char *err, size_t errlen) {
  const rt_entry_desc *en = &m->d->entry[e];
  if (en->nprep == 0) return 0;
  m->prep[e] = calloc((size_t)en->nprep, sizeof(float *));
  double **vals = calloc((size_t)en->nprep, sizeof(double *));
  int rc = 0;
  if (!m->prep[e] || !vals) rc = rt_errf(err, errlen, "model: out of memory");
  for (int q = 0; q < en->nprep && !rc; q++) {
    const rt_prep *p = &en->prep[q];
    size_t len = (size_t)p->rows * (size_t)p->n;
    vals[q] = malloc((len ? len : 1) * sizeof(double));
    m->prep[e][q] = rt_alloc_aligned(len * sizeof(float));
    if (!vals[q] || !m->prep[e][q]) { rc = rt_errf(err, errlen, "model: out of memory"); break; }
    opnd o[5];
    for (int a = 0; a < p->nargs; a++) o[a] = get_opnd(m, en, vals, p->args[a]);
    prep_one(p, o, vals[q]);
    for (size_t k = 0; k < len; k++) m->prep[e][q][k] = (float)vals[q][k];
  }
  if (vals)
    for (int q = 0; q < en->nprep; q++) free(vals[q]);
  free(vals);
  return rc;
}

/* ------------------------------------------------------------------ */
/* open and close                                                      */

void rt_model_close(rt_model *m) {
  if (!m) return;
  rt_pool_free(m->pool);
  if (m->tls)
    for (int t = 0; t < m->nthreads; t++) {
      free(m->tls[t].scratch);
      free(m->tls[t].ctxbuf);
      free(m->tls[t].zbuf);
      free(m->tls[t].ldbuf);
      free(m->tls[t].args);
    }
  free(m->tls);
  for (int e = 0; e < RT_NENTRY; e++) {
    if (m->prep[e])
      for (int q = 0; q < m->d->entry[e].nprep; q++) free(m->prep[e][q]);
    free(m->prep[e]);
  }
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
  return 0;
}

static int make_buffers(rt_model *m, char *err, size_t errlen) {
  const rt_desc *d = m->d;
  long maxs = 0;
  int maxq = 0;
  for (int e = 0; e < RT_NENTRY; e++) {
    if (d->entry[e].scratch > maxs) maxs = d->entry[e].scratch;
    if (d->entry[e].nprep > maxq) maxq = d->entry[e].nprep;
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
    b->args = calloc(nargs, sizeof(void *));
    if (!b->scratch || !b->ctxbuf || !b->zbuf || !b->ldbuf || !b->args)
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
  for (int e = 0; e < RT_NENTRY && !rc; e++) rc = run_prep(m, e, err, errlen);
  if (!rc) {
    openblas_set_num_threads(1);          /* we split the work over tiles */
    m->pool = rt_pool_new(nthreads);
    if (!m->pool) rc = rt_errf(err, errlen, "model: cannot start threads");
    else m->nthreads = rt_pool_size(m->pool);
  }
  if (!rc) rc = make_buffers(m, err, errlen);
  if (rc) {
    rt_model_close(m);
    return NULL;
  }
  return m;
}

const float *const *rt_model_prep(const rt_model *m, int entry) {
  if (!m || entry < 0 || entry >= RT_NENTRY) return NULL;
  return (const float *const *)m->prep[entry];
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
} job;

static void run_tile(void *arg, int tid, long item) {
  const job *j = arg;
  rt_model *m = j->m;
  const rt_desc *d = m->d;
  const rt_entry_desc *en = &d->entry[j->entry];
  rt_tls *b = &m->tls[tid];
  size_t T = (size_t)d->tile, row0 = (size_t)item * T, D = (size_t)d->dim;
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
  m->k[j->entry]((void *const *)a, (int64_t)nr);
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
  if (d->context > 0) {
    if (!j->ctx || !(j->ctx_rows == 1 || j->ctx_rows == j->n)) return RT_EINVAL;
  } else if (j->ctx) {
    return RT_EINVAL;
  }
  if (j->n > SIZE_MAX / 64 / (size_t)d->dim) return RT_EINVAL;
  size_t T = (size_t)d->tile;
  rt_pool_run(m->pool, (long)((j->n + T - 1) / T), run_tile, j);
  return RT_OK;
}

int rt_model_encode(rt_model *m, size_t n, const float *x, const float *ctx,
                    size_t ctx_rows, float *z, float *logdet) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !z) return RT_EINVAL;
  job j = { m, logdet ? RT_ENCODE_LD : RT_ENCODE, n, x, ctx, ctx_rows, z, logdet, 0, 0 };
  return run(&j);
}

int rt_model_decode(rt_model *m, size_t n, const float *z, const float *ctx,
                    size_t ctx_rows, float *x, float *logdet) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !z) return RT_EINVAL;
  job j = { m, logdet ? RT_DECODE_LD : RT_DECODE, n, z, ctx, ctx_rows, x, logdet, 0, 0 };
  return run(&j);
}

int rt_model_log_prob(rt_model *m, size_t n, const float *x, const float *ctx,
                      size_t ctx_rows, float *log_prob) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x || !log_prob) return RT_EINVAL;
  job j = { m, RT_LOGPROB, n, x, ctx, ctx_rows, log_prob, NULL, 0, 0 };
  return run(&j);
}

int rt_model_sample(rt_model *m, size_t n, uint64_t seed, const float *ctx,
                    size_t ctx_rows, float *x, float *log_prob) {
  if (!m) return RT_EINVAL;
  if (n == 0) return RT_OK;
  if (!x) return RT_EINVAL;
  job j = { m, log_prob ? RT_DECODE_LD : RT_DECODE, n, NULL, ctx, ctx_rows, x, log_prob, 1, seed };
  return run(&j);
}
