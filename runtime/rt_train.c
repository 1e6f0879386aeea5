/*
** runtime/rt_train.c: gradients of the mean negative log-likelihood.
**
** Why a static split: thread t's chunk is the contiguous tile range
** [t * tiles / T, (t + 1) * tiles / T), accumulated into the chunk's own
** slots, and the chunks are summed in chunk order, so the result depends on
** the thread count only, never on scheduling. The kernel adds one tile into
** zeroed float slots, which are then added into the chunk's double sums, so
** float rounding grows with the tile, not with n, and thread counts agree
** to about 1e-7. Everything is allocated by rt_model_set_train;
** rt_model_grad allocates nothing.
**
** The noise input (rt.h, rt_model_set_noise) is filled per tile from
** Philox with the row's index in the batch in the counter, so it too is
** the same for any thread count and any split into tiles. Every value is
** a function of its row's and block's counters alone (gauss: Box-Muller;
** beta: two Marsaglia-Tsang gammas whose tries use fixed words), never of
** another row's draws.
*/
#include "rt_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_FLOATS 16       /* 64 bytes */

static size_t round_up(size_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

/* Floats of slot s (< P: param s, else prep s - P); 0 for I64 params. */
static size_t slot_len(const rt_model *m, int s) {
  const rt_desc *d = m->d;
  if (s < d->nparams)
    return d->params[s].dtype == RT_I64 ? 0 : rt_param_numel(&d->params[s]);
  const rt_prep *p = &d->train.prep[s - d->nparams];
  return (size_t)p->rows * (size_t)p->n;
}

static int is_slot(const rt_model *m, int s) {
  return s >= m->d->nparams || m->d->params[s].dtype != RT_I64;
}

/* The train kernel's noise argument: after the P + Q gradient slots. */
static size_t noise_arg(const rt_model *m) {
  return 5 + 2 * (size_t)m->d->nparams + 2 * (size_t)m->d->train.nprep;
}

void rt_train_free(rt_model *m) {
  rt_train_buf *tb = &m->tb;
  for (int c = 0; c < tb->nchunks; c++) {
    if (tb->block) free(tb->block[c]);
    if (tb->dblock) free(tb->dblock[c]);
    if (tb->slot) free(tb->slot[c]);
  }
  free(tb->block);
  free(tb->dblock);
  free(tb->off);
  free(tb->slot);
  free(tb->closs);
  free(tb->gsum);
  free(tb->gp);
  free(tb->gq);
  free(tb->work);
  if (m->tls)
    for (int t = 0; t < m->nthreads; t++) {
      if (m->tls[t].targs) free(m->tls[t].targs[noise_arg(m)]);
      free(m->tls[t].targs);
      m->tls[t].targs = NULL;
    }
  memset(tb, 0, sizeof *tb);
}

static int make_chunks(rt_model *m) {
  rt_train_buf *tb = &m->tb;
  int S = m->d->nparams + m->d->train.nprep;
  if (!(tb->off = calloc(S ? (size_t)S : 1, sizeof(size_t)))) return -1;
  size_t total = 0;
  for (int s = 0; s < S; s++) {
    tb->off[s] = total;
    total += round_up(slot_len(m, s));
  }
  tb->block_floats = total;
  tb->nchunks = m->nthreads;
  tb->block = calloc((size_t)tb->nchunks, sizeof *tb->block);
  tb->dblock = calloc((size_t)tb->nchunks, sizeof *tb->dblock);
  tb->slot = calloc((size_t)tb->nchunks, sizeof *tb->slot);
  tb->closs = calloc((size_t)tb->nchunks, sizeof *tb->closs);
  if (!tb->block || !tb->dblock || !tb->slot || !tb->closs) return -1;
  for (int c = 0; c < tb->nchunks; c++) {
    tb->block[c] = rt_alloc_aligned(total * sizeof(float));
    tb->dblock[c] = rt_alloc_aligned(total * sizeof(double));
    tb->slot[c] = calloc(S ? (size_t)S : 1, sizeof(float *));
    if (!tb->block[c] || !tb->dblock[c] || !tb->slot[c]) return -1;
    for (int s = 0; s < S; s++)
      if (is_slot(m, s)) tb->slot[c][s] = tb->block[c] + tb->off[s];
  }
  return 0;
}

static int make_sums(rt_model *m) {
  rt_train_buf *tb = &m->tb;
  const rt_desc *d = m->d;
  int P = d->nparams, Q = d->train.nprep;
  size_t total = 0;
  for (int s = 0; s < P + Q; s++) total += slot_len(m, s);
  tb->gsum = calloc(total ? total : 1, sizeof(double));
  tb->gp = calloc(P ? (size_t)P : 1, sizeof(double *));
  tb->gq = calloc(Q ? (size_t)Q : 1, sizeof(double *));
  size_t w = rt_prep_work_size(d, &d->train);
  tb->work = malloc((w ? w : 1) * sizeof(double));
  if (!tb->gsum || !tb->gp || !tb->gq || !tb->work) return -1;
  size_t off = 0;
  for (int s = 0; s < P + Q; s++) {
    double *g = is_slot(m, s) ? tb->gsum + off : NULL;
    if (s < P) tb->gp[s] = g;
    else tb->gq[s - P] = g;
    off += slot_len(m, s);
  }
  return 0;
}

/* args: params, prep results and the thread's noise buffer (tile x
** noise_width, owned by the args array) are fixed; the slots are set per
** chunk. */
static int make_args(rt_model *m) {
  const rt_desc *d = m->d;
  size_t P = (size_t)d->nparams, Q = (size_t)d->train.nprep;
  size_t nw = (size_t)d->tile * (size_t)d->noise_width;
  for (int t = 0; t < m->nthreads; t++) {
    void **a = calloc(noise_arg(m) + 1, sizeof(void *));
    if (!a) return -1;
    m->tls[t].targs = a;
    for (size_t i = 0; i < P; i++) a[4 + i] = m->params[i];
    for (size_t q = 0; q < Q; q++) a[4 + P + q] = m->prep[RT_TRAIN_PREP][q];
    a[4 + P + Q] = m->tls[t].scratch;
    if (nw && !(a[noise_arg(m)] = rt_alloc_aligned(nw * sizeof(float)))) return -1;
  }
  return 0;
}

void rt_model_set_noise(rt_model *m, uint64_t seed, uint64_t counter) {
  if (!m) return;
  m->tb.noise_seed = seed;
  m->tb.noise_ctr = counter;
}

/* ------------------------------------------------------------------ */
/* noise                                                               */

#define NOISE_KEY 0x6e6f697365ull     /* "noise" */

/* n columns of +-1: bit j % 128 of Philox word j / 128 (1: +1). */
static void fill_rademacher(uint64_t key, uint64_t ctr, uint64_t lo, int n, float *out) {
  for (int w = 0; w * 128 < n; w++) {
    uint32_t bits[4];
    rt_philox(key, ctr, lo | (uint64_t)w, bits);
    int m = n - w * 128 < 128 ? n - w * 128 : 128;
    for (int b = 0; b < m; b++) out[w * 128 + b] = (bits[b >> 5] >> (b & 31) & 1u) ? 1.0f : -1.0f;
  }
}

/* kmax = z->n columns: q_k = (1-p)^-(k - terms) for k <= N (1 up to terms),
** 0 above; N = min(terms + G, kmax), G = floor(log U / log(1-p)) so that
** P(G >= j) = P(U <= (1-p)^j) = (1-p)^j. */
static void fill_roulette(uint64_t key, uint64_t ctr, uint64_t lo, const rt_noise *z,
                          float *out) {
  int kmax = z->n, N = z->terms;
  double lq = z->p > 0 ? -log1p(-z->p) : 0;      /* log 1/(1-p) */
  if (z->p > 0) {
    uint64_t u[2];
    rt_philox64(key, ctr, lo, u);
    double G = floor(-log(rt_u01_from64(u[0])) / lq);
    N = G >= (double)(kmax - z->terms) ? kmax : z->terms + (int)G;
  }
  for (int k = 1; k <= kmax; k++)
    out[k - 1] = k > N ? 0.0f : k <= z->terms ? 1.0f : (float)exp((double)(k - z->terms) * lq);
}

/* Columns 2k, 2k+1 of N(0, 1): Box-Muller on word k's two uniforms. */
static void fill_gauss(uint64_t key, uint64_t ctr, uint64_t lo, int n, float *out) {
  const double two_pi = 6.283185307179586476925286766559;
  for (int w = 0; 2 * w < n; w++) {
    uint64_t u[2];
    rt_philox64(key, ctr, lo | (uint64_t)w, u);
    double rad = sqrt(-2.0 * log(rt_u01_from64(u[0]))), th = two_pi * rt_u01_from64(u[1]);
    out[2 * w] = (float)(rad * cos(th));
    if (2 * w + 1 < n) out[2 * w + 1] = (float)(rad * sin(th));
  }
}

/* Why bounded: Marsaglia-Tsang accepts a try with probability >= 0.95 for
** every shape >= 1 (the boosted shape is >= 1), so 64 rejections in a row
** have probability < 1e-80; the bound keeps the words inside the column's
** 128 and the time fixed. If it ever happens, the draw is d = shape - 1/3
** (the sampler's centre, about the median) instead. */
#define GAMMA_TRIES 64

/* log of a Gamma(shape) variate (shape > 0) from words lo + [0, 128): try i
** takes a normal from word 2i (Box-Muller, cos branch) and its acceptance
** uniform from word 2i+1's first 64 bits; shape < 1 is Gamma(shape + 1)
** U^(1/shape), U from word 1's second 64 bits. In logs, so that tiny shapes
** (U^(1/shape) below the smallest double) still give a ratio. */
static double log_gamma_variate(uint64_t key, uint64_t ctr, uint64_t lo, double shape) {
  const double two_pi = 6.283185307179586476925286766559;
  double boost = 0, a = shape;
  if (shape < 1) {
    uint64_t u[2];
    rt_philox64(key, ctr, lo | 1u, u);
    boost = log(rt_u01_from64(u[1])) / shape;
    a = shape + 1;
  }
  double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (int i = 0; i < GAMMA_TRIES; i++) {
    uint64_t u[2], v2[2];
    rt_philox64(key, ctr, lo | (uint64_t)(2 * i), u);
    double x = sqrt(-2.0 * log(rt_u01_from64(u[0]))) * cos(two_pi * rt_u01_from64(u[1]));
    double v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    rt_philox64(key, ctr, lo | (uint64_t)(2 * i + 1), v2);
    double U = rt_u01_from64(v2[0]), x2 = x * x;
    if (U < 1 - 0.0331 * x2 * x2 || log(U) < 0.5 * x2 + d * (1 - v + log(v)))
      return log(d) + log(v) + boost;
  }
  return log(d) + boost;
}

/* Column j of Beta(a, b): X / (X + Y), X ~ Gamma(a) from words 256 j +
** [0, 128), Y ~ Gamma(b) from 256 j + [128, 256), as 1 / (1 + exp(log Y -
** log X)), clamped into [0, 1]; a = b = 1: uniform on [0, 1), the top 24
** bits of word 256 j over 2^24 (exact in float). */
static void fill_beta(uint64_t key, uint64_t ctr, uint64_t lo, const rt_noise *z, float *out) {
  for (int j = 0; j < z->n; j++) {
    uint64_t base = lo | (uint64_t)j << 8;
    if (z->a == 1 && z->b == 1) {
      uint64_t u[2];
      rt_philox64(key, ctr, base, u);
      out[j] = (float)((double)(u[0] >> 40) * (1.0 / 16777216.0));
      continue;
    }
    double lx = log_gamma_variate(key, ctr, base, z->a);
    double ly = log_gamma_variate(key, ctr, base | 128u, z->b);
    double v = 1.0 / (1.0 + exp(ly - lx));
    out[j] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
  }
}

/* Rows [row0, row0 + nr) of the batch into buf, nr x noise_width. */
static void fill_noise(const rt_model *m, float *buf, size_t row0, size_t nr) {
  const rt_desc *d = m->d;
  uint64_t key = m->tb.noise_seed ^ NOISE_KEY, ctr = m->tb.noise_ctr;
  for (size_t r = 0; r < nr; r++) {
    float *row = buf + r * (size_t)d->noise_width;
    uint64_t lo = (uint64_t)(row0 + r) << 24;
    for (int b = 0; b < d->nnoise; b++) {
      const rt_noise *z = &d->noise[b];
      uint64_t blo = lo | (uint64_t)b << 16;
      switch (z->kind) {
      case RT_NOISE_RADEMACHER: fill_rademacher(key, ctr, blo, z->n, row); break;
      case RT_NOISE_ROULETTE: fill_roulette(key, ctr, blo, z, row); break;
      case RT_NOISE_GAUSS: fill_gauss(key, ctr, blo, z->n, row); break;
      case RT_NOISE_BETA: fill_beta(key, ctr, blo, z, row); break;
      }
      row += z->n;
    }
  }
}

int rt_model_set_train(rt_model *m, rt_kernel train) {
  if (!m || !train || !m->d->has_train) return RT_EINVAL;
  if (!m->tb.block) {
    if (make_chunks(m) || make_sums(m) || make_args(m)) {
      rt_train_free(m);
      return RT_ENOMEM;
    }
  }
  m->train = train;
  return RT_OK;
}

/* ------------------------------------------------------------------ */
/* running                                                             */

typedef struct gjob {
  rt_model *m;
  size_t n, ntiles;
  const float *x, *ctx;
  size_t ctx_rows;
  _Atomic uint64_t *fail;     /* the lowest tile's kernel failure */
} gjob;

/* One tile's gradients into the chunk's double sums (the first tile of a
** chunk sets them: no pass to zero them first). */
static void grad_tile(const gjob *j, rt_tls *b, int chunk, size_t tile, int first) {
  rt_model *m = j->m;
  const rt_desc *d = m->d;
  size_t T = (size_t)d->tile, row0 = tile * T, D = (size_t)d->dim, C = (size_t)d->context;
  size_t nr = j->n - row0 < T ? j->n - row0 : T;
  const float *ctx = NULL;
  if (C && j->ctx_rows == j->n) {
    ctx = j->ctx + row0 * C;
  } else if (C) {                          /* one row for all */
    for (size_t r = 0; r < nr; r++) memcpy(b->ctxbuf + r * C, j->ctx, C * sizeof(float));
    ctx = b->ctxbuf;
  }
  void **a = b->targs;
  a[0] = (void *)(j->x + row0 * D);
  a[1] = (void *)ctx;
  a[2] = b->lpbuf;
  a[3] = NULL;
  rt_train_buf *tb = &m->tb;
  float *f = tb->block[chunk];
  double *g = tb->dblock[chunk];
  memset(f, 0, tb->block_floats * sizeof(float));
  if (d->noise_width > 0) fill_noise(m, a[noise_arg(m)], row0, nr);
  int32_t st = m->train((void *const *)a, (int64_t)nr);
  if (st) rt_fail_note(j->fail, tile, st);
  if (first)
    for (size_t k = 0; k < tb->block_floats; k++) g[k] = (double)f[k];
  else
    for (size_t k = 0; k < tb->block_floats; k++) g[k] += (double)f[k];
  double s = 0;
  for (size_t r = 0; r < nr; r++) s -= (double)b->lpbuf[r];
  tb->closs[chunk] += s;
}

static void grad_chunk(void *arg, int tid, long item) {
  const gjob *j = arg;
  rt_model *m = j->m;
  rt_train_buf *tb = &m->tb;
  rt_tls *b = &m->tls[tid];
  size_t P = (size_t)m->d->nparams, Q = (size_t)m->d->train.nprep;
  size_t c = (size_t)item, nc = (size_t)tb->nchunks;
  tb->closs[c] = 0;
  for (size_t s = 0; s < P + Q; s++) b->targs[5 + P + Q + s] = tb->slot[c][s];
  size_t t0 = c * j->ntiles / nc, t1 = (c + 1) * j->ntiles / nc;
  if (t0 == t1) memset(tb->dblock[c], 0, tb->block_floats * sizeof(double));
  for (size_t t = t0; t < t1; t++) grad_tile(j, b, (int)c, t, t == t0);
}

/* Sums the chunks in order into gsum; returns the summed -log p. */
static double sum_chunks(rt_model *m) {
  rt_train_buf *tb = &m->tb;
  int S = m->d->nparams + m->d->train.nprep, P = m->d->nparams;
  double loss = 0;
  for (int c = 0; c < tb->nchunks; c++) {
    loss += tb->closs[c];
    for (int s = 0; s < S; s++) {
      double *g = s < P ? tb->gp[s] : tb->gq[s - P];
      const double *f = tb->dblock[c] + tb->off[s];
      size_t len = slot_len(m, s);
      if (!g) continue;
      if (c == 0) memcpy(g, f, len * sizeof(double));
      else for (size_t k = 0; k < len; k++) g[k] += f[k];
    }
  }
  return loss;
}

int rt_model_grad(rt_model *m, size_t n, const float *x, const float *ctx, size_t ctx_rows,
                  double *loss, float *const *grads) {
  if (!m || !m->train || !loss) return RT_EINVAL;
  const rt_desc *d = m->d;
  if (n == 0 || !x) return RT_EINVAL;
  if (d->context > 0) {
    if (!ctx || !(ctx_rows == 1 || ctx_rows == n)) return RT_EINVAL;
  } else if (ctx) {
    return RT_EINVAL;
  }
  if (n > SIZE_MAX / 64 / (size_t)d->dim) return RT_EINVAL;
  if (d->noise_width > 0 && (uint64_t)n >= (1ull << 40)) return RT_EINVAL;  /* noise counter */
  size_t T = (size_t)d->tile;
  _Atomic uint64_t fail = 0;
  gjob j = { m, n, (n + T - 1) / T, x, ctx, ctx_rows, &fail };
  rt_pool_run(m->pool, m->tb.nchunks, grad_chunk, &j);
  if (atomic_load(&fail)) return rt_fail_take(m, atomic_load(&fail));
  double total = sum_chunks(m);
  rt_prep_backward(d, &d->train, m->params, (const double *const *)m->vals[RT_TRAIN_PREP],
                   m->tb.gq, m->tb.gp, m->tb.work);
  double inv = 1.0 / (double)n;
  *loss = total * inv;
  int bad = !isfinite(*loss);
  for (int i = 0; i < d->nparams; i++) {
    const double *g = m->tb.gp[i];
    if (!g) continue;
    size_t len = rt_param_numel(&d->params[i]);
    float *out = grads ? grads[i] : NULL;
    for (size_t k = 0; k < len; k++) {
      double v = g[k] * inv;
      if (!isfinite(v) || !isfinite((float)v)) bad = 1;
      if (out) out[k] = (float)v;
    }
  }
  return bad ? RT_ENUMERIC : RT_OK;
}
