/*
** driver/commands.c: the commands of flowc-cli.md.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "driver.h"

/* ---- check ---- */

static void print_net(const ir_net *net) {
  printf("mlp(hidden = [");
  for (int j = 0; j < net->nhidden; j++) printf("%s%d", j ? ", " : "", net->hidden[j]);
  printf("], act = %s)", ir_act_name(net->act));
}

static void print_layer(int k, const ir_layer *L) {
  static const char *const scales[] = {"tanh", "exp", "sigmoid"};
  printf("  flow.%-3d %s", k, ir_layer_name(L->kind));
  switch (L->kind) {
  case LAYER_AFFINE_COUPLING: case LAYER_ADDITIVE_COUPLING: case LAYER_SPLINE_COUPLING:
    printf("(net = ");
    print_net(&L->net);
    if (L->kind == LAYER_AFFINE_COUPLING) printf(", scale = %s", scales[L->scale]);
    if (L->kind == LAYER_SPLINE_COUPLING) printf(", bins = %d, bound = %g", L->bins, L->bound);
    printf(")");
    break;
  case LAYER_MAF: case LAYER_IAF:
    printf("(net = made(hidden = [");
    for (int j = 0; j < L->net.nhidden; j++) printf("%s%d", j ? ", " : "", L->net.hidden[j]);
    printf("], act = %s), ", ir_act_name(L->net.act));
    if (L->spline) printf("transform = spline(bins = %d, bound = %g))", L->bins, L->bound);
    else printf("scale = %s)", scales[L->scale]);
    break;
  case LAYER_RESIDUAL:
    printf("(net = ");
    print_net(&L->net);
    printf(", lipschitz = %g, logdet = ", L->lipschitz);
    if (L->series) printf("series(terms = %d, roulette = %g)", L->terms, L->roulette);
    else printf("exact");
    printf(", iters = %d, tol = %g)", L->iters, L->tol);
    break;
  case LAYER_CNF: case LAYER_SDE: {
    static const char *const solvers[] = {"euler", "heun", "rk4", "dopri5"};
    printf(L->kind == LAYER_CNF ? "(net = " : "(drift = ");
    print_net(&L->net);
    if (L->kind == LAYER_SDE) printf(", diffusion = const(%g), steps = %d", L->sigma, L->steps);
    if (L->time == TIME_SCALAR) printf(", time = scalar");
    else printf(", time = sincos(%d)", L->time_k);
    if (L->kind == LAYER_CNF) {
      if (L->solver == SOLVER_DOPRI5)
        printf(", solver = dopri5(rtol = %g, atol = %g, max_steps = %d)", L->rtol, L->atol,
               L->max_steps);
      else
        printf(", solver = %s(steps = %d)", solvers[L->solver], L->steps);
      printf(", trace = %s", L->hutchinson ? "hutchinson" : "exact");
    }
    printf(")");
    break;
  }
  case LAYER_PERMUTE:
    if (L->perm_kind == PERM_REVERSE) printf("(reverse)");
    else if (L->perm_kind == PERM_RANDOM) printf("(random, seed = %llu)", (unsigned long long)L->perm_seed);
    else printf("(list)");
    break;
  default: break;
  }
  printf("\n");
}

int cmd_check(const drv_opts *o) {
  drv_session s = {0};
  int rc = drv_parse(&s, o);
  for (int i = 0; !rc && i < s.module->nmodels; i++) {
    const ir_model *m = &s.module->models[i];
    char err[512];
    ir_program *p = ir_lower(s.A, m, err, sizeof err);
    if (!p) { rc = drv_fail("%s: %s", o->flow, err); break; }
    printf("model %s: dim %d", m->name, m->dim);
    if (m->ndims > 1) {
      printf(" [");
      for (int j = 0; j < m->ndims; j++) printf("%s%d", j ? ", " : "", m->dims[j]);
      printf("]");
    }
    printf(", context %d, base normal, %d layers, %ld parameters\n", m->context, m->nlayers,
           ir_param_count(p));
    for (int k = 0; k < m->nlayers; k++) print_layer(k, &m->layers[k]);
  }
  drv_close(&s);
  return rc;
}

/* ---- init ---- */

int cmd_init(const drv_opts *o) {
  if (!o->out) return fprintf(stderr, "flowc: init needs -o W.safetensors\n"), EXIT_USAGE;
  drv_session s = {0};
  int rc = drv_lower(&s, o);
  char err[1024];
  rt_weights w = {0};
  if (!rc) {
    pass_pipeline(s.prog, 0, NULL, NULL);
    s.desc = cg_desc_err(s.prog, err, sizeof err);
    if (!s.desc) rc = drv_fail("%s", err);
  }
  if (!rc && (rt_weights_init(s.desc, o->seed, &w, err, sizeof err) ||
              rt_weights_save(s.desc, &w, o->out, err, sizeof err)))
    rc = drv_fail("%s", err);
  rt_weights_free(&w);
  drv_close(&s);
  return rc;
}

/* ---- data in and out ---- */

int drv_load_rows(const char *path, long cols, const char *what, rt_array *a) {
  char err[1024];
  if (rt_array_load(path, a, err, sizeof err)) return drv_fail("%s", err);
  if (a->cols != cols)
    return drv_fail("%s: rows have %ld values, the model's %s has %ld", path, a->cols, what, cols);
  for (long i = 0; i < a->rows * a->cols; i++)
    if (!isfinite(a->data[i]))
      return drv_fail("%s: value %ld (row %ld) is not finite", path, i, i / (cols ? cols : 1));
  return 0;
}

/* The context rows for n samples: none, n rows, or one row for all. */
int drv_load_context(const drv_opts *o, const ir_model *m, long n, rt_array *c) {
  if (m->context == 0) {
    if (o->context) return drv_fail("%s: model '%s' takes no context", o->context, m->name);
    return 0;
  }
  if (!o->context)
    return drv_fail("model '%s' needs a context of %d values: --context C.npy", m->name, m->context);
  int rc = drv_load_rows(o->context, m->context, "context", c);
  if (!rc && c->rows != n && c->rows != 1)
    rc = drv_fail("%s: %ld context rows for %ld samples (give %ld rows, or one for all)",
                  o->context, c->rows, n, n);
  return rc;
}

static int save(const char *path, const float *v, long n, const ir_model *m, int per_row) {
  long shape[9] = {n};
  int nd = 1;
  if (per_row) for (int j = 0; j < m->ndims; j++) shape[nd++] = m->dims[j];
  char err[1024];
  return rt_npy_save(path, v, nd, shape, err, sizeof err) ? drv_fail("%s", err) : 0;
}

/* ---- logprob, encode, decode ---- */

/* The message for a failed rt_model_* call of command cmd. */
static int run_failed(const drv_session *s, const char *cmd, int rc) {
  int k = rc == RT_ENOCONV ? rt_model_failed_layer(s->rt) : -1;
  if (k >= 0 && k < s->model->nlayers && s->model->layers[k].kind == LAYER_CNF) {
    const ir_layer *L = &s->model->layers[k];
    return drv_fail("%s: layer %d (cnf, line %d): dopri5 needed more than max_steps = %d steps "
                    "(attempted, accepted or not) for a sample at rtol = %g, atol = %g; raise "
                    "max_steps or the tolerances", cmd, k, L->line, L->max_steps, L->rtol, L->atol);
  }
  if (k >= 0 && k < s->model->nlayers) {
    const ir_layer *L = &s->model->layers[k];
    return drv_fail("%s: the inverse of layer %d (residual, line %d) did not converge: a "
                    "sample still moved by tol = %g or more after iters = %d fixed-point "
                    "steps; raise iters or tol, or lower lipschitz", cmd, k, L->line, L->tol,
                    L->iters);
  }
  return drv_fail("%s failed (code %d)", cmd, rc);
}

static int run_entry(const drv_opts *o, drv_session *s, const rt_array *x, const rt_array *c) {
  long n = x->rows, D = s->model->dim;
  const float *ctx = c->data;
  size_t crows = (size_t)c->rows;
  int lp = !strcmp(o->cmd, "logprob"), enc = !strcmp(o->cmd, "encode");
  float *out = malloc((size_t)(n * D + 1) * sizeof *out);
  float *ld = malloc((size_t)(n + 1) * sizeof *ld);
  int rc;
  if (lp) rc = rt_model_log_prob(s->rt, (size_t)n, x->data, ctx, crows, ld);
  else if (enc) rc = rt_model_encode(s->rt, (size_t)n, x->data, ctx, crows, out, o->logdet ? ld : NULL);
  else rc = rt_model_decode(s->rt, (size_t)n, x->data, ctx, crows, out, o->logdet ? ld : NULL);
  if (rc) rc = run_failed(s, o->cmd, rc);
  else if (lp) rc = save(o->out, ld, n, s->model, 0);
  else {
    rc = save(o->out, out, n, s->model, 1);
    if (!rc && o->logdet) rc = save(o->logdet, ld, n, s->model, 0);
  }
  free(out);
  free(ld);
  return rc;
}

int cmd_run(const drv_opts *o) {
  if (!o->data || !o->out)
    return fprintf(stderr, "flowc: %s needs --data X.npy and -o OUT.npy\n", o->cmd), EXIT_USAGE;
  drv_session s = {0};
  rt_array x = {0}, c = {0};
  int ld = o->logdet != NULL;
  s.entries = !strcmp(o->cmd, "logprob") ? CG_ENTRY(RT_LOGPROB)
              : !strcmp(o->cmd, "encode") ? CG_ENTRY(ld ? RT_ENCODE_LD : RT_ENCODE)
                                          : CG_ENTRY(ld ? RT_DECODE_LD : RT_DECODE);
  int rc = drv_compile(&s, o);
  if (!rc) rc = drv_load_rows(o->data, s.model->dim, "dim", &x);
  if (!rc) rc = drv_load_context(o, s.model, x.rows, &c);
  if (!rc) rc = drv_open(&s, o, NULL);
  if (!rc) rc = run_entry(o, &s, &x, &c);
  rt_array_free(&x);
  rt_array_free(&c);
  drv_close(&s);
  return rc;
}

/* ---- sample ---- */

int cmd_sample(const drv_opts *o) {
  if (o->n < 0 || !o->out)
    return fprintf(stderr, "flowc: sample needs -n N and -o X.npy\n"), EXIT_USAGE;
  drv_session s = {0};
  rt_array c = {0};
  s.entries = CG_ENTRY(o->logprob ? RT_DECODE_LD : RT_DECODE);
  int rc = drv_compile(&s, o);
  if (!rc) rc = drv_load_context(o, s.model, o->n, &c);
  if (!rc) rc = drv_open(&s, o, NULL);
  if (!rc) {
    long n = o->n, D = s.model->dim;
    float *x = malloc((size_t)(n * D + 1) * sizeof *x), *lp = malloc((size_t)(n + 1) * sizeof *lp);
    rc = rt_model_sample(s.rt, (size_t)n, o->seed, c.data, (size_t)c.rows, x, o->logprob ? lp : NULL);
    if (rc) rc = run_failed(&s, "sample", rc);
    if (!rc) rc = save(o->out, x, n, s.model, 1);
    if (!rc && o->logprob) rc = save(o->logprob, lp, n, s.model, 0);
    free(x);
    free(lp);
  }
  rt_array_free(&c);
  drv_close(&s);
  return rc;
}

/* ---- build ---- */

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
  fclose(f);
  *len = buf ? (size_t)n : 0;
  return buf;
}

int cmd_build(const drv_opts *o) {
  if (!o->out) return fprintf(stderr, "flowc: build needs -o libNAME.so\n"), EXIT_USAGE;
  drv_session s = {0};
  int rc = drv_lower(&s, o);
  char err[1024];
  char *wbuf = NULL;
  size_t wlen = 0;
  if (!rc) {
    pass_pipeline(s.prog, o->opt, o->disable, NULL);
    s.desc = cg_desc_err(s.prog, err, sizeof err);
    if (!s.desc) rc = drv_fail("%s", err);
  }
  if (!rc && o->weights) {   /* refuse bad weights now, not when the .so opens */
    rt_weights w = {0};
    if (rt_weights_load(s.desc, o->weights, &w, err, sizeof err)) rc = drv_fail("%s", err);
    rt_weights_free(&w);
    if (!rc && !(wbuf = read_all(o->weights, &wlen))) rc = drv_fail("cannot read %s", o->weights);
  }
  if (!rc && cg_build_so(s.prog, o->opt, wbuf, wlen, o->out, err, sizeof err))
    rc = drv_fail("%s", err);
  free(wbuf);
  drv_close(&s);
  return rc;
}

/* ---- dump ---- */

int cmd_dump(const drv_opts *o) {
  if (o->ir == o->llvm)
    return fprintf(stderr, "flowc: dump needs one of --ir or --llvm\n"), EXIT_USAGE;
  drv_session s = {0};
  int rc = drv_lower(&s, o);
  if (!rc && pass_pipeline(s.prog, o->opt, o->disable, o->ir ? o->after : NULL)) {
    int n;
    const pass_info *t = pass_table(&n);
    fprintf(stderr, "flowc: no pass named '%s'; passes:", o->after);
    for (int i = 0; i < n; i++) fprintf(stderr, " %s", t[i].name);
    fputc('\n', stderr);
    rc = EXIT_USAGE;
  }
  char err[1024];
  if (!rc && o->ir) ir_dump_program(stdout, s.prog);
  if (!rc && o->llvm && cg_dump_llvm(s.prog, o->opt, stdout, err, sizeof err))
    rc = drv_fail("%s", err);
  drv_close(&s);
  return rc;
}

/* ---- bench ---- */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/*
** --op train: flowc train's optimiser step (drv_train_step: gradient, Adam
** at --lr, default 1e-3, parameters back into the model) on batches of B
** rows cycling through 16 * B rows drawn from the model (-w, or fresh
** weights: then N(0, 1)), zero context; three warm-up steps, then at least
** 1 s and 5 steps.
*/
static int bench_train(const drv_opts *o, drv_session *s, rt_weights *w, long B, double tc) {
  long D = s->model->dim, C = s->model->context, pool = 16;
  rt_optim_cfg cfg = {o->lr > 0 ? o->lr : 1e-3, 0.9, 0.999, 1e-8, 0, 0, 0, RT_SCHED_CONSTANT, 1L << 40, 0};
  rt_optim *opt = rt_optim_new(s->desc, &cfg);
  float *x = calloc((size_t)(pool * B * D), sizeof *x), *c = calloc((size_t)(B * C + 1), sizeof *c);
  float **grads = calloc((size_t)w->n + 1, sizeof *grads);
  for (int i = 0; i < w->n; i++) {
    const rt_param_desc *pd = &s->desc->params[i];
    if (pd->dtype == RT_F32)
      grads[i] = malloc(((size_t)pd->shape[0] * (pd->ndim == 2 ? (size_t)pd->shape[1] : 1) + 1) * sizeof(float));
  }
  int rc = opt ? 0 : drv_fail("out of memory");
  if (!rc && rt_model_sample(s->rt, (size_t)(pool * B), 1, C ? c : NULL, 1, x, NULL))
    rc = drv_fail("sampling the training rows failed");
  rt_model_set_train(s->rt, cg_jit_train(s->jit));
  long iters = 0;
  double start = 0, el = 0, loss = 0;
  for (long k = 0; !rc && (el < 1.0 || iters < 5); k++) {
    if (k == 3) { start = now_s(); iters = 0; }   /* three warm-up steps */
    int bad = drv_train_step(s->rt, opt, w, B, x + (k % pool) * B * D, C ? c : NULL, grads, &loss);
    if (bad) rc = drv_fail("training step %ld failed (%s)", k + 1, bad == 1 ? "loss not finite" : "error");
    iters++;
    if (k >= 3) el = now_s() - start;
  }
  if (!rc)
    printf("%s train batch %ld: %.4g samples/s, %.4g us per step (compile %.1f ms)\n", s->model->name,
           B, (double)B * iters / el, 1e6 * el / iters, 1e3 * tc);
  for (int i = 0; i < w->n; i++) free(grads[i]);
  free(grads); free(x); free(c);
  rt_optim_free(opt);
  return rc;
}

int cmd_bench(const drv_opts *o) {
  const char *op = o->op ? o->op : "logprob";
  if (strcmp(op, "logprob") && strcmp(op, "sample") && strcmp(op, "train"))
    return fprintf(stderr, "flowc: bench --op logprob|sample|train\n"), EXIT_USAGE;
  int train = !strcmp(op, "train");
  drv_session s = {0};
  /* every op draws its rows with sample (decode); then log_prob or the
     gradient kernel */
  s.entries = CG_ENTRY(RT_DECODE) | (train ? CG_TRAIN_MASK
                                     : !strcmp(op, "logprob") ? CG_ENTRY(RT_LOGPROB) : 0);
  double t0 = now_s();
  int rc = drv_lower(&s, o);
  rt_weights w = {0};
  char err[1024];
  double ta = 1, tb = 1;
  int fm = o->objective && !strcmp(o->objective, "fm");
  if (!rc && (fm || o->time_dist) && (!train || !fm || (o->time_dist && drv_time_dist(o->time_dist, &ta, &tb))))
    rc = (fprintf(stderr, "flowc: bench --op train --objective fm [--time-dist uniform|beta(A,B)]\n"),
          EXIT_USAGE);
  if (!rc && fm && ir_use_fm(s.prog, ta, tb, err, sizeof err)) rc = drv_fail("%s", err);
  if (!rc && train && !fm) rc = drv_ml_ok(s.model);
  if (!rc && train) pass_autodiff(s.prog);
  if (!rc) rc = drv_compile_lowered(&s, o);
  double tc = now_s() - t0;
  if (!rc && !o->weights && rt_weights_init(s.desc, 0, &w, err, sizeof err)) rc = drv_fail("%s", err);
  if (!rc && train && o->weights && rt_weights_load(s.desc, o->weights, &w, err, sizeof err))
    rc = drv_fail("%s", err);
  if (!rc) rc = drv_open(&s, o, w.data ? &w : NULL);
  if (!rc && train) {
    rc = bench_train(o, &s, &w, o->batch > 0 ? o->batch : 256, tc);
  } else if (!rc) {
    long B = o->batch > 0 ? o->batch : 1024, D = s.model->dim, C = s.model->context;
    float *x = calloc((size_t)(B * D), sizeof *x), *lp = calloc((size_t)B, sizeof *lp);
    float *c = calloc((size_t)(C + 1), sizeof *c);
    rt_model_sample(s.rt, (size_t)B, 1, C ? c : NULL, 1, x, NULL);
    long iters = 0;
    double start = 0, el = 0;
    for (long k = 0; el < 1.0 || iters < 5; k++) {
      if (k == 3) { start = now_s(); iters = 0; }   /* three warm-up calls */
      if (!strcmp(op, "logprob")) rt_model_log_prob(s.rt, (size_t)B, x, C ? c : NULL, 1, lp);
      else rt_model_sample(s.rt, (size_t)B, (uint64_t)k, C ? c : NULL, 1, x, NULL);
      iters++;
      if (k >= 3) el = now_s() - start;
    }
    printf("%s %s batch %ld: %.4g samples/s, %.4g us per call (compile %.1f ms)\n", s.model->name,
           op, B, (double)B * iters / el, 1e6 * el / iters, 1e3 * tc);
    free(x);
    free(lp);
    free(c);
  }
  rt_weights_free(&w);
  drv_close(&s);
  return rc;
}
