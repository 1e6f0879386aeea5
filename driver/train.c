/*
** driver/train.c: `flowc train` (maximum likelihood) and `flowc toy`.
**
** The gradient is one compiled call (the autodiff graph of log_prob, see
** passes/autodiff.c); minibatches come from a seeded permutation per epoch,
** so step s always sees the same rows and a resumed run repeats an
** unbroken one. Adam/AdamW, schedules and clipping are the runtime's.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "driver.h"

typedef struct split {          /* rows of data and (optionally) context */
  float *x, *c;
  long n;
} split;

typedef struct trainer {
  const drv_opts *o;
  drv_session s;
  rt_weights w, best;
  rt_weights good, prev;        /* the last weights with a finite loss; before this step */
  uint64_t seed;                /* --seed, or the checkpoint's when resuming */
  rt_optim *opt;
  rt_train_state st;
  split tr, va;
  long D, C, B, steps, spe;     /* spe: steps per epoch */
  long start;                   /* first step of this run */
  int ngrads;
  float *xb, *cb, **grads;
  long *perm, perm_epoch;
  double t0;
} trainer;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- data ---- */

/* Fisher-Yates from the counter-based RNG: the same for a (seed, stream). */
static void shuffle(long *p, long n, uint64_t seed, uint64_t stream) {
  for (long i = 0; i < n; i++) p[i] = i;
  for (long i = n - 1; i > 0; i--) {
    long j = (long)(rt_uniform01(seed, stream, (uint64_t)i) * (double)(i + 1));
    if (j > i) j = i;
    long t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
}

static void take_rows(split *dst, const rt_array *x, const rt_array *c, const long *idx, long n,
                      long D, long C) {
  dst->n = n;
  dst->x = malloc((size_t)(n * D + 1) * sizeof(float));
  dst->c = C ? malloc((size_t)(n * C + 1) * sizeof(float)) : NULL;
  for (long i = 0; i < n; i++) {
    memcpy(dst->x + i * D, x->data + idx[i] * D, (size_t)D * sizeof(float));
    if (C) memcpy(dst->c + i * C, c->data + (c->rows == 1 ? 0 : idx[i]) * C, (size_t)C * sizeof(float));
  }
}

static int load_data(trainer *t) {
  const drv_opts *o = t->o;
  rt_array x = {0}, c = {0}, vx = {0}, vc = {0};
  int rc = drv_load_rows(o->data, t->D, "dim", &x);
  if (!rc && x.rows == 0) rc = drv_fail("%s: no rows to train on", o->data);
  if (!rc) rc = drv_load_context(o, t->s.model, x.rows, &c);
  long nv = 0;
  if (!rc && o->valid) {
    drv_opts vo = *o;
    vo.context = o->valid_context;
    rc = drv_load_rows(o->valid, t->D, "dim", &vx);
    if (!rc && vx.rows == 0) rc = drv_fail("%s: no rows to validate on", o->valid);
    if (!rc) rc = drv_load_context(&vo, t->s.model, vx.rows, &vc);
  } else if (!rc) {
    double f = o->valid_fraction > 0 ? o->valid_fraction : (x.rows >= 50 ? 0.1 : 0);
    if (f >= 1) rc = drv_fail("--valid-fraction must be below 1");
    nv = (long)(f * (double)x.rows);
  }
  if (rc) goto out;
  long *idx = malloc((size_t)x.rows * sizeof *idx);
  shuffle(idx, x.rows, t->seed, 0x5eed);
  take_rows(&t->tr, &x, &c, idx + nv, x.rows - nv, t->D, t->C);
  if (o->valid) {
    long *all = malloc((size_t)(vx.rows + 1) * sizeof *all);
    for (long i = 0; i < vx.rows; i++) all[i] = i;
    take_rows(&t->va, &vx, &vc, all, vx.rows, t->D, t->C);
    free(all);
  } else if (nv > 0) {
    take_rows(&t->va, &x, &c, idx, nv, t->D, t->C);
  }
  free(idx);
out:
  rt_array_free(&x); rt_array_free(&c); rt_array_free(&vx); rt_array_free(&vc);
  return rc;
}

/* Rows of step s: batch (s mod spe) of epoch s / spe's permutation. */
static void make_batch(trainer *t, long s) {
  long e = s / t->spe, k = s % t->spe;
  if (e != t->perm_epoch) {
    shuffle(t->perm, t->tr.n, t->seed, 1000 + (uint64_t)e);
    t->perm_epoch = e;
  }
  for (long i = 0; i < t->B; i++) {
    long r = t->perm[(k * t->B + i) % t->tr.n];
    memcpy(t->xb + i * t->D, t->tr.x + r * t->D, (size_t)t->D * sizeof(float));
    if (t->C) memcpy(t->cb + i * t->C, t->tr.c + r * t->C, (size_t)t->C * sizeof(float));
  }
}

/* Flow matching's loss over a split through the train kernel, with noise
** fixed per split so that evaluations compare. */
static double mean_fm(trainer *t, const split *sp) {
  double s = 0;
  for (long i = 0; i < sp->n; i += 4096) {
    long k = sp->n - i < 4096 ? sp->n - i : 4096;
    double l = NAN;
    rt_model_set_noise(t->s.rt, t->seed ^ 0x76616c6964ull, (uint64_t)(sp == &t->va) << 40 | (uint64_t)i);
    rt_model_grad(t->s.rt, (size_t)k, sp->x + i * t->D, t->C ? sp->c + i * t->C : NULL, (size_t)k,
                  &l, NULL);
    s += l * (double)k;
  }
  return s / (double)sp->n;
}

/* Mean -log p over a split, in chunks through the compiled log_prob (the
** flow-matching loss under --objective fm). */
static double mean_nll(trainer *t, const split *sp) {
  if (t->s.prog->fm) return mean_fm(t, sp);
  float lp[4096];
  double s = 0;
  for (long i = 0; i < sp->n; i += 4096) {
    long k = sp->n - i < 4096 ? sp->n - i : 4096;
    rt_model_log_prob(t->s.rt, (size_t)k, sp->x + i * t->D, t->C ? sp->c + i * t->C : NULL,
                      (size_t)k, lp);
    for (long j = 0; j < k; j++) s -= lp[j];
  }
  return s / (double)sp->n;
}

/* ---- data-dependent actnorm initialisation ---- */

/*
** From the data side inwards, each actnorm gets bias = mean and log_scale
** = log(std) of its input in the density direction over the first batch,
** so its output there has zero mean and unit variance. Runs the prefix of
** the flow in the reference interpreter: once, on one batch.
*/
static int actnorm_init(trainer *t) {
  const ir_model *m = t->s.model;
  long n = t->B, D = t->D;
  double *x = malloc((size_t)(n * D) * sizeof *x), *c = malloc((size_t)(n * t->C + 1) * sizeof *c);
  double *u = malloc((size_t)(n * D) * sizeof *u);
  for (long i = 0; i < n * D; i++) x[i] = t->xb[i];
  for (long i = 0; i < n * t->C; i++) c[i] = t->cb[i];
  int rc = 0;
  for (int k = m->nlayers - 1; k >= 0 && !rc; k--) {
    if (m->layers[k].kind != LAYER_ACTNORM) continue;
    char err[256];
    ir_graph *g = ir_lower_prefix(t->s.prog, k);
    if (ir_interp(t->s.prog, g, (const void *const *)t->w.data, n, x, c, u, NULL, err, sizeof err)) {
      rc = drv_fail("actnorm initialisation: %s", err);
      break;
    }
    int p0 = t->s.prog->layer_param0[k];
    float *ls = t->w.data[p0], *b = t->w.data[p0 + 1];
    for (long j = 0; j < D; j++) {
      double mu = 0, var = 0;
      for (long i = 0; i < n; i++) mu += u[i * D + j];
      mu /= (double)n;
      for (long i = 0; i < n; i++) var += (u[i * D + j] - mu) * (u[i * D + j] - mu);
      var /= (double)n;
      b[j] = (float)mu;
      ls[j] = (float)(0.5 * log(var + 1e-12));
    }
  }
  free(x); free(c); free(u);
  return rc;
}

/* ---- progress ---- */

static void progress(trainer *t, long s, double loss, double valid, int final) {
  static int tty = -1;
  if (tty < 0) tty = isatty(2);
  double el = now_s() - t->t0, sps = el > 0 ? (double)(s - t->start + 1) * (double)t->B / el : 0;
  char v[32] = "-";
  if (!isnan(valid)) snprintf(v, sizeof v, "%.4f", valid);
  fprintf(stderr, "%sstep %ld/%ld  loss %.4f  valid %s  lr %.3g  %.0f samples/s%s", tty ? "\r" : "",
          s + 1, t->steps, loss, v, rt_optim_lr(t->opt, s), sps, tty && !final ? "   " : "\n");
  fflush(stderr);
}

/* ---- the run ---- */

static size_t param_bytes(const rt_param_desc *pd) {
  size_t n = (size_t)pd->shape[0] * (pd->ndim == 2 ? (size_t)pd->shape[1] : 1);
  return n * (pd->dtype == RT_I64 ? 8 : 4);
}

/* dst = src, allocating dst's arrays the first time. */
static void copy_weights(const rt_desc *d, const rt_weights *src, rt_weights *dst) {
  if (!dst->data) {
    dst->n = src->n;
    dst->data = calloc((size_t)src->n + 1, sizeof *dst->data);
    for (int i = 0; i < src->n; i++) dst->data[i] = malloc(param_bytes(&d->params[i]) + 8);
  }
  for (int i = 0; i < src->n; i++) memcpy(dst->data[i], src->data[i], param_bytes(&d->params[i]));
  dst->step = src->step;
}

static int parse_schedule(const char *s, rt_schedule *out) {
  if (!s || !strcmp(s, "constant")) *out = RT_SCHED_CONSTANT;
  else if (!strcmp(s, "cosine")) *out = RT_SCHED_COSINE;
  else if (!strcmp(s, "onecycle")) *out = RT_SCHED_ONECYCLE;
  else return -1;
  return 0;
}

int drv_time_dist(const char *s, double *a, double *b) {
  char tail;
  if (!strcmp(s, "uniform")) return *a = *b = 1, 0;
  if (sscanf(s, " beta ( %lf , %lf )%c", a, b, &tail) != 2) return -1;
  return *a > 0 && *b > 0 && *a < 1e6 && *b < 1e6 ? 0 : -1;
}

int drv_ml_ok(const ir_model *m) {
  for (int k = 0; k < m->nlayers; k++) {
    const ir_layer *L = &m->layers[k];
    if (L->kind == LAYER_SDE)
      return drv_fail("%s: layer %d (sde, line %d) has no density: train it with --objective fm",
                      m->name, k, L->line);
    if (L->kind == LAYER_CNF && L->solver == SOLVER_DOPRI5)
      return drv_fail("%s: layer %d (cnf, line %d): maximum likelihood is trained through the "
                      "solver's steps, which dopri5 does not fix; use euler, heun or rk4, or "
                      "--objective fm", m->name, k, L->line);
  }
  return 0;
}

/* The seed of a resumed run is the checkpoint's: it fixed the validation
** split and the order of the batches. */
static int pick_seed(trainer *t) {
  const drv_opts *o = t->o;
  t->seed = o->seed;
  if (!o->resume) return 0;
  char err[1024];
  rt_weights w = {0};
  rt_train_state st = {0};
  int rc = rt_checkpoint_load(t->s.desc, o->resume, &w, NULL, &st, err, sizeof err);
  if (rc) rc = drv_fail("%s", err);
  else if (o->have_seed && o->seed != st.seed)
    rc = drv_fail("%s: --seed %llu differs from the checkpoint's seed %llu", o->resume,
                  (unsigned long long)o->seed, (unsigned long long)st.seed);
  else t->seed = st.seed;
  rt_weights_free(&w);
  rt_train_state_free(&st);
  return rc;
}

/* Options, data, weights (fresh, --init or --resume), compiled model. */
static int setup(trainer *t) {
  const drv_opts *o = t->o;
  char err[1024];
  rt_optim_cfg cfg = {o->lr > 0 ? o->lr : 1e-3, 0.9, 0.999, 1e-8, o->weight_decay, o->clip,
                      o->optimizer && !strcmp(o->optimizer, "adamw"), RT_SCHED_CONSTANT, 0, o->warmup};
  if (parse_schedule(o->schedule, &cfg.schedule) ||
      (o->optimizer && strcmp(o->optimizer, "adam") && strcmp(o->optimizer, "adamw")))
    return fprintf(stderr, "flowc: --schedule constant|cosine|onecycle, --optimizer adam|adamw\n"), EXIT_USAGE;
  int fm = o->objective && !strcmp(o->objective, "fm");
  double ta = 1, tb = 1;
  if (o->objective && strcmp(o->objective, "ml") && !fm)
    return fprintf(stderr, "flowc: --objective ml|fm\n"), EXIT_USAGE;
  if (o->time_dist && (!fm || drv_time_dist(o->time_dist, &ta, &tb)))
    return fprintf(stderr, "flowc: --time-dist uniform|beta(A,B), with --objective fm\n"),
           EXIT_USAGE;
  int rc = drv_lower(&t->s, o);
  if (rc) return rc;
  t->D = t->s.model->dim;
  t->C = t->s.model->context;
  if (fm && ir_use_fm(t->s.prog, ta, tb, err, sizeof err)) return drv_fail("%s", err);
  if (!fm && (rc = drv_ml_ok(t->s.model))) return rc;
  pass_autodiff(t->s.prog);
  /* steps; validation (flow matching's is the train kernel's loss) */
  t->s.entries = CG_TRAIN_MASK | (fm ? 0 : CG_ENTRY(RT_LOGPROB));
  if ((rc = drv_compile_lowered(&t->s, o))) return rc;
  if ((rc = pick_seed(t))) return rc;
  if ((rc = load_data(t))) return rc;
  t->B = o->batch > 0 ? o->batch : 256;
  if (t->B > t->tr.n) t->B = t->tr.n;
  t->spe = t->tr.n / t->B;
  t->steps = o->steps > 0 ? o->steps : o->epochs > 0 ? o->epochs * t->spe : 1000;
  cfg.total_steps = t->steps;
  t->opt = rt_optim_new(t->s.desc, &cfg);
  if (o->resume) {
    if (rt_checkpoint_load(t->s.desc, o->resume, &t->w, t->opt, &t->st, err, sizeof err))
      return drv_fail("%s", err);
    t->best = t->st.best;   /* the trainer owns the best weights from here */
    memset(&t->st.best, 0, sizeof t->st.best);
    t->st.has_best = 0;
  } else if (o->init) {
    if (rt_weights_load(t->s.desc, o->init, &t->w, err, sizeof err)) return drv_fail("%s", err);
  } else if (rt_weights_init(t->s.desc, t->seed, &t->w, err, sizeof err)) {
    return drv_fail("%s", err);
  }
  t->xb = malloc((size_t)(t->B * t->D) * sizeof *t->xb);
  t->cb = malloc((size_t)(t->B * t->C + 1) * sizeof *t->cb);
  t->perm = malloc((size_t)t->tr.n * sizeof *t->perm);
  t->perm_epoch = -1;
  if (!o->resume && !o->init) {
    make_batch(t, 0);
    if ((rc = actnorm_init(t))) return rc;
  }
  if ((rc = drv_open(&t->s, o, &t->w))) return rc;
  rt_model_set_train(t->s.rt, cg_jit_train(t->s.jit));
  t->ngrads = t->w.n;
  t->grads = calloc((size_t)t->w.n + 1, sizeof *t->grads);
  for (int i = 0; i < t->w.n; i++)
    if (t->s.desc->params[i].dtype == RT_F32) t->grads[i] = malloc(param_bytes(&t->s.desc->params[i]) + 4);
  if (!o->resume) t->st.best_valid = INFINITY;
  copy_weights(t->s.desc, &t->w, &t->good);
  copy_weights(t->s.desc, &t->w, &t->prev);
  return 0;
}

static int save_weights(trainer *t, const rt_weights *w, long step) {
  char err[1024];
  rt_weights out = *w;
  out.step = step;
  return rt_weights_save(t->s.desc, &out, t->o->out, err, sizeof err) ? drv_fail("%s", err) : 0;
}

static int save_checkpoint(trainer *t, long step) {
  char err[1024];
  t->st.step = step;
  t->st.seed = t->seed;
  t->st.has_best = t->best.data != NULL;
  t->st.best = t->best;   /* lent for the save */
  int rc = rt_checkpoint_save(t->s.desc, t->o->checkpoint, &t->w, t->opt, &t->st, err, sizeof err);
  memset(&t->st.best, 0, sizeof t->st.best);
  return rc ? drv_fail("%s", err) : 0;
}

/* Validation after step s; returns 1 when early stopping says stop. */
static int evaluate(trainer *t, long s, double loss) {
  double v = t->va.n ? mean_nll(t, &t->va) : NAN;
  progress(t, s, loss, v, 0);
  if (!t->va.n) return 0;
  if (v < t->st.best_valid) {
    t->st.best_valid = v;
    t->st.since_best = 0;
    copy_weights(t->s.desc, &t->w, &t->best);
    t->best.step = s + 1;
    return 0;
  }
  return t->o->patience > 0 && ++t->st.since_best >= t->o->patience;
}

/* One optimiser step on B rows (see driver.h; bench --op train uses it too). */
int drv_train_step(rt_model *rt, rt_optim *opt, rt_weights *w, long B, const float *x,
                   const float *c, float *const *grads, double *loss) {
  char err[512];
  int rc = rt_model_grad(rt, (size_t)B, x, c, (size_t)B, loss, grads);
  double gnorm;
  if (rc == RT_ENUMERIC || (!rc && rt_optim_step(opt, w, grads, &gnorm) == RT_ENUMERIC))
    return 1;
  if (rc || rt_model_set_params(rt, w, err, sizeof err)) return 2;
  return 0;
}

/* One optimiser step; 1 when the loss or a gradient is not finite. */
static int step(trainer *t, long s, double *loss) {
  make_batch(t, s);
  rt_model_set_noise(t->s.rt, t->seed, (uint64_t)s);   /* series probes */
  copy_weights(t->s.desc, &t->w, &t->prev);
  int rc = drv_train_step(t->s.rt, t->opt, &t->w, t->B, t->xb, t->C ? t->cb : NULL, t->grads, loss);
  if (!rc) {   /* the loss of the weights before this step was finite */
    rt_weights k = t->good;
    t->good = t->prev;
    t->prev = k;
  }
  return rc;
}

static void summary(trainer *t, long done) {
  double el = now_s() - t->t0;
  double tr = mean_nll(t, &t->tr);
  const char *what = t->s.prog->fm ? "FM loss" : "NLL";
  fprintf(stderr, "trained %ld steps in %.2f s (%.0f samples/s); train %s %.4f", done, el,
          el > 0 ? (double)done * (double)t->B / el : 0, what, tr);
  if (t->va.n) fprintf(stderr, ", valid %s %.4f (best %.4f at step %ld)", what, mean_nll(t, &t->va),
                       t->st.best_valid, t->best.step);
  fprintf(stderr, "\n");
}

static void release(trainer *t) {
  rt_weights_free(&t->w);
  rt_weights_free(&t->best);
  rt_weights_free(&t->good);
  rt_weights_free(&t->prev);
  rt_optim_free(t->opt);
  for (int i = 0; i < t->ngrads; i++) free(t->grads[i]);
  free(t->grads); free(t->xb); free(t->cb); free(t->perm);
  free(t->tr.x); free(t->tr.c); free(t->va.x); free(t->va.c);
  drv_close(&t->s);
}

int cmd_train(const drv_opts *o) {
  if (!o->data || !o->out)
    return fprintf(stderr, "flowc: train needs --data X.npy and -o W.safetensors\n"), EXIT_USAGE;
  trainer t = {0};
  t.o = o;
  int rc = setup(&t);
  long s = t.st.step, start = s, every = o->eval_every > 0 ? o->eval_every : (t.steps >= 20 ? t.steps / 20 : 1);
  double loss = NAN;
  t.start = start;
  t.t0 = now_s();
  int nonfinite = 0;
  for (; !rc && s < t.steps; s++) {
    if (o->stop_after && s - start >= o->stop_after) break;
    int bad = step(&t, s, &loss);
    if (bad == 1) {
      fprintf(stderr, "\nflowc: the loss or a gradient is not finite at step %ld; keeping the "
                      "last weights whose loss was finite\n", s + 1);
      copy_weights(t.s.desc, &t.good, &t.w);
      rt_model_set_params(t.s.rt, &t.w, NULL, 0);
      nonfinite = 1;
      rc = EXIT_INPUT;
      break;
    }
    if (bad) { rc = drv_fail("training step %ld failed", s + 1); break; }
    if (((s + 1) % every == 0 || s + 1 == t.steps) && evaluate(&t, s, loss)) {
      s++;
      fprintf(stderr, "early stop: no better validation for %ld evaluations\n", o->patience);
      break;
    }
    if (o->checkpoint && o->checkpoint_every && (s + 1) % o->checkpoint_every == 0 &&
        save_checkpoint(&t, s + 1))
      rc = EXIT_INPUT;
  }
  if (t.s.rt && (rc == 0 || rc == EXIT_INPUT) && t.w.data) {
    if (o->checkpoint && !nonfinite && save_checkpoint(&t, s)) rc = EXIT_INPUT;
    int keep_best = o->patience > 0 && t.best.data;
    if (keep_best) rt_model_set_params(t.s.rt, &t.best, NULL, 0);
    summary(&t, s - start);
    int wrc = save_weights(&t, keep_best ? &t.best : &t.w, keep_best ? t.best.step : s);
    if (!rc) rc = wrc;
  }
  release(&t);
  return rc;
}

int cmd_toy(const drv_opts *o) {
  if (o->n <= 0 || !o->out)
    return fprintf(stderr, "flowc: toy NAME -n N [--seed S] -o X.npy [--context-out C.npy]\n"),
           EXIT_USAGE;
  int dim = rt_toy_dim(o->flow);           /* -1: rt_toy names the valid sets */
  int cdim = rt_toy_context_dim(o->flow);
  if (cdim > 0 && !o->context_out)
    return fprintf(stderr, "flowc: toy %s is conditional: give --context-out C.npy for its "
                   "%d-D context rows\n", o->flow, cdim), EXIT_USAGE;
  if (cdim == 0 && o->context_out)
    return fprintf(stderr, "flowc: toy %s has no context: drop --context-out (the conditional "
                   "set is reach)\n", o->flow), EXIT_USAGE;
  char err[512];
  if (dim > 0 && (size_t)o->n > ((size_t)-1 / sizeof(float)) / (size_t)(dim > cdim ? dim : cdim))
    return drv_fail("toy %s: -n %ld is too many rows", o->flow, o->n);
  float *x = dim > 0 ? malloc((size_t)o->n * (size_t)dim * sizeof *x) : NULL;
  float *c = cdim > 0 ? malloc((size_t)o->n * (size_t)cdim * sizeof *c) : NULL;
  long shape[2] = {o->n, dim}, cshape[2] = {o->n, cdim};
  int rc;
  if (dim > 0 && (!x || (cdim > 0 && !c))) {
    snprintf(err, sizeof err, "toy %s: out of memory for %ld rows", o->flow, o->n);
    rc = 1;
  } else {
    rc = rt_toy_cond(o->flow, o->n, o->seed, x, c, err, sizeof err) ||
         rt_npy_save(o->out, x, 2, shape, err, sizeof err) ||
         (c && rt_npy_save(o->context_out, c, 2, cshape, err, sizeof err));
  }
  free(x);
  free(c);
  return rc ? drv_fail("%s", err) : 0;
}
