/* tests/test_rt_train.c: the train section of the descriptor, prep programs
** in reverse against finite differences, and rt_model_grad with a
** hand-written gradient kernel. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

static const char *TRAIN_DESC =
  "flowc-desc 1\n"
  "name tr\n"
  "dim 3\n"
  "context 0\n"
  "tile 8\n"
  "params 3\n"
  "param flow.0.log_scale f32 1 3 0 zero 0 0 0 0\n"
  "param flow.0.bias f32 1 3 0 zero 0 0 0 0\n"
  "param flow.1.perm i64 1 3 0 perm_list 0 1 0 3 2 0 1\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 0\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 1\n"
  "prep exp 1 3 0 1 0\n"
  "train scratch 3 nprep 2\n"
  "prep exp 1 3 0 1 0\n"
  "prep sum 1 1 0 1 0\n"
  "end\n";

/* ---- descriptor ---- */

Test(train_desc, round_trip_and_old_text) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(TRAIN_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_eq(d->has_train, 1);
  cr_assert_eq(d->train.scratch, 3);
  cr_assert_eq(d->train.nprep, 2);
  cr_assert_eq(d->train.prep[1].op, RT_PREP_SUM);
  char *t = rt_desc_format(d);
  cr_assert_str_eq(t, TRAIN_DESC);
  free(t);
  /* an old text without the train line still parses, has_train 0 */
  char *old = strdup(TRAIN_DESC);
  char *cut = strstr(old, "train scratch");
  strcpy(cut, "end\n");
  rt_desc *o = rt_desc_parse(old, err, sizeof err);
  cr_assert(o, "%s", err);
  cr_assert_eq(o->has_train, 0);
  cr_assert_eq(o->train.nprep, 0);
  t = rt_desc_format(o);
  cr_assert_str_eq(t, old);
  free(t);
  /* train with no prep */
  cut = strstr(old, "end\n");
  strcpy(cut, "train scratch 0 nprep 0\nend\n");
  rt_desc_free(o);
  o = rt_desc_parse(old, err, sizeof err);
  cr_assert(o, "%s", err);
  cr_assert_eq(o->has_train, 1);
  free(old);
  rt_desc_free(o);
  rt_desc_free(d);
}

Test(train_desc, refusals) {
  char err[256];
  const char *bad[][2] = {
    { "train scratch 3 nprep 2\n", "train scratch 3 nprep 3\n" },      /* missing prep */
    { "prep sum 1 1 0 1 0\nend", "prep sum 1 1 0 1 9\nend" },          /* bad operand */
    { "train scratch 3", "train scrotch 3" },
    { "train scratch 3 nprep 2\n", "trains scratch 3 nprep 2\n" },
    { "prep exp 1 3 0 1 0\nprep sum", "prep exp 1 4 0 1 0\nprep sum" },/* shape */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[2048];
    const char *at = strstr(TRAIN_DESC, bad[i][0]);
    if (i == 4) at = strstr(strstr(TRAIN_DESC, "train"), bad[i][0]);
    cr_assert(at, "case %zu", i);
    size_t pre = (size_t)(at - TRAIN_DESC);
    snprintf(text, sizeof text, "%.*s%s%s", (int)pre, TRAIN_DESC, bad[i][1],
             at + strlen(bad[i][0]));
    err[0] = 0;
    rt_desc *d = rt_desc_parse(text, err, sizeof err);
    cr_assert_null(d, "case %zu parsed:\n%s", i, text);
    cr_assert(err[0], "case %zu has no message", i);
  }
}

/* ---- prep programs in reverse ---- */

/* Every op: linear_lu W and W^-1, exp, neg, const, mul (plain and [1,1]
** broadcast either side), add, sum, sub. Params: lower, upper [D,D],
** log_diag, sign, perm [D], vec [D]. */
#define PD 4
static rt_desc *prep_desc(void) {
  rt_desc *d = calloc(1, sizeof *d);
  d->name = strdup("prep");
  d->dim = PD;
  d->tile = 4;
  d->nparams = 6;
  d->params = calloc(6, sizeof *d->params);
  static const struct { const char *n; rt_dtype t; int nd, s0, s1; rt_init in; } ps[6] = {
    { "lower", RT_F32, 2, PD, PD, RT_INIT_LU_LOWER },
    { "upper", RT_F32, 2, PD, PD, RT_INIT_LU_UPPER },
    { "log_diag", RT_F32, 1, PD, 0, RT_INIT_LU_LOG_DIAG },
    { "sign", RT_F32, 1, PD, 0, RT_INIT_LU_SIGN },
    { "perm", RT_I64, 1, PD, 0, RT_INIT_LU_PERM },
    { "vec", RT_F32, 1, PD, 0, RT_INIT_ZERO },
  };
  for (int i = 0; i < 6; i++) {
    rt_param_desc *p = &d->params[i];
    p->name = strdup(ps[i].n);
    p->dtype = ps[i].t;
    p->ndim = ps[i].nd;
    p->shape[0] = ps[i].s0;
    p->shape[1] = ps[i].s1;
    p->init = ps[i].in;
  }
  d->has_train = 1;
  rt_entry_desc *en = &d->train;
  static const rt_prep prog[] = {
    { RT_PREP_LU_W, 5, { 0, 1, 2, 3, 4 }, PD, PD, 0, { 0 }, 0 },      /* 6  */
    { RT_PREP_LU_WINV, 5, { 0, 1, 2, 3, 4 }, PD, PD, 0, { 0 }, 0 },   /* 7  */
    { RT_PREP_EXP, 1, { 2 }, 1, PD, 0, { 0 }, 0 },                    /* 8  */
    { RT_PREP_NEG, 1, { 5 }, 1, PD, 0, { 0 }, 0 },                    /* 9  */
    { RT_PREP_CONST, 0, { 0 }, 1, 1, 0.7, { 0 }, 0 },                 /* 10 */
    { RT_PREP_MUL, 2, { 8, 10 }, 1, PD, 0, { 0 }, 0 },                /* 11 */
    { RT_PREP_ADD, 2, { 11, 9 }, 1, PD, 0, { 0 }, 0 },                /* 12 */
    { RT_PREP_SUM, 1, { 6 }, 1, 1, 0, { 0 }, 0 },                     /* 13 */
    { RT_PREP_SUB, 2, { 13, 12 }, 1, PD, 0, { 0 }, 0 },               /* 14 */
    { RT_PREP_MUL, 2, { 7, 7 }, PD, PD, 0, { 0 }, 0 },                /* 15 */
    { RT_PREP_MUL, 2, { 5, 12 }, 1, PD, 0, { 0 }, 0 },                /* 16 */
    { RT_PREP_ADD, 2, { 10, 7 }, PD, PD, 0, { 0 }, 0 },               /* 17 */
    { RT_PREP_MUL, 2, { 6, 13 }, PD, PD, 0, { 0 }, 0 },               /* 18 */
    { RT_PREP_SUB, 2, { 1, 13 }, PD, PD, 0, { 0 }, 0 },               /* 19 */
    { RT_PREP_SUM, 1, { 16 }, 1, 1, 0, { 0 }, 0 },                    /* 20 */
    { RT_PREP_EXP, 1, { 0 }, PD, PD, 0, { 0 }, 0 },                   /* 21 */
  };
  en->nprep = (int)(sizeof prog / sizeof prog[0]);
  en->prep = malloc(sizeof prog);
  memcpy(en->prep, prog, sizeof prog);
  return d;
}

static double loss_of(const rt_desc *d, void *const *params, double *const *vals,
                      double *const *seed) {
  rt_prep_forward(d, &d->train, params, vals);
  double L = 0;
  for (int q = 0; q < d->train.nprep; q++) {
    size_t len = (size_t)d->train.prep[q].rows * (size_t)d->train.prep[q].n;
    for (size_t k = 0; k < len; k++) L += seed[q][k] * vals[q][k];
  }
  return L;
}

static double urand(unsigned *s) { return (rand_r(s) + 0.5) / ((double)RAND_MAX + 1); }

Test(prep, backward_matches_differences) {
  rt_desc *d = prep_desc();
  char err[256] = "";
  char *text = rt_desc_format(d);           /* valid: it parses back */
  rt_desc *d2 = rt_desc_parse(text, err, sizeof err);
  cr_assert(d2, "%s\n%s", err, text);
  cr_assert_eq(d2->train.nprep, d->train.nprep);
  free(text);
  rt_desc_free(d2);
  unsigned rs = 7;
  float lower[PD * PD], upper[PD * PD], ld[PD], sign[PD] = { 1, -1, 1, -1 }, vec[PD];
  int64_t perm[PD] = { 2, 0, 3, 1 };
  for (int i = 0; i < PD * PD; i++) {
    lower[i] = (float)(urand(&rs) - 0.5);
    upper[i] = (float)(urand(&rs) - 0.5);
  }
  for (int i = 0; i < PD; i++) {
    ld[i] = (float)(0.6 * (urand(&rs) - 0.5));
    vec[i] = (float)(2 * urand(&rs) - 1);
  }
  void *params[6] = { lower, upper, ld, sign, perm, vec };
  int Q = d->train.nprep;
  double *vals[32], *seed[32], *gv[32], *gp[6] = { 0 };
  for (int q = 0; q < Q; q++) {
    size_t len = (size_t)d->train.prep[q].rows * (size_t)d->train.prep[q].n;
    vals[q] = calloc(len, sizeof(double));
    seed[q] = calloc(len, sizeof(double));
    gv[q] = calloc(len, sizeof(double));
    for (size_t k = 0; k < len; k++) seed[q][k] = 2 * urand(&rs) - 1;
  }
  for (int i = 0; i < 6; i++)
    if (i != 4) gp[i] = calloc(PD * PD, sizeof(double));
  double *work = malloc((rt_prep_work_size(d, &d->train) + 1) * sizeof(double));
  cr_assert_eq(rt_prep_work_size(d, &d->train), 2 * PD * PD);
  loss_of(d, params, vals, seed);
  for (int q = 0; q < Q; q++) {
    size_t len = (size_t)d->train.prep[q].rows * (size_t)d->train.prep[q].n;
    memcpy(gv[q], seed[q], len * sizeof(double));
  }
  rt_prep_backward(d, &d->train, params, (const double *const *)vals, gv, gp, work);
  /* central differences on every float param element */
  const float eps = 1.0f / 4096;
  int checked = 0;
  for (int i = 0; i < 6; i++) {
    if (i == 4) continue;
    float *p = params[i];
    size_t n = i < 2 ? PD * PD : PD;
    for (size_t k = 0; k < n; k++) {
      float keep = p[k];
      float up = keep + eps, dn = keep - eps;
      p[k] = up;
      double lp = loss_of(d, params, vals, seed);
      p[k] = dn;
      double lm = loss_of(d, params, vals, seed);
      p[k] = keep;
      double fd = (lp - lm) / ((double)up - (double)dn);
      double an = gp[i][k];
      if (i == 3) {               /* sign: fixed, no gradient */
        cr_assert_eq(an, 0.0);
        continue;
      }
      cr_assert(fabs(an - fd) <= 1e-4 * fmax(1.0, fabs(fd)),
                "param %d elem %zu: analytic %.10g, differences %.10g", i, k, an, fd);
      checked++;
    }
  }
  cr_assert_eq(checked, 2 * PD * PD + 2 * PD);
  for (int q = 0; q < Q; q++) { free(vals[q]); free(seed[q]); free(gv[q]); }
  for (int i = 0; i < 6; i++) free(gp[i]);
  free(work);
  rt_desc_free(d);
}

/* ---- rt_model_grad with a hand-written gradient kernel ---- */

/* log p(x) = -0.5 sum(((x - b) * exp(s))^2) + sum(s) per row: params
** s (log_scale), b (bias), perm (I64, unused); train prep q0 = exp(s),
** q1 = sum(s). args: 0 x, 2 lp, 4..6 params, 7..8 preps, 9 scratch,
** 10..12 param slots (12 NULL), 13..14 prep slots. */
static int32_t k_train(void *const *a, int64_t n) {
  const float *x = a[0], *b = a[5], *e = a[7], *sum = a[8];
  float *lp = a[2], *sc = a[9], *gb = a[11], *ge = a[13], *gsum = a[14];
  cr_assert_null(a[1]);
  cr_assert_null(a[3]);
  cr_assert_null(a[12]);
  for (int64_t r = 0; r < n; r++) {
    double q = 0;
    for (int j = 0; j < 3; j++) {
      sc[r * 3 + j] = x[r * 3 + j] - b[j];
      double z = sc[r * 3 + j] * e[j];
      q += z * z;
    }
    lp[r] = (float)(-0.5 * q + sum[0]);
    for (int j = 0; j < 3; j++) {          /* d(-lp) */
      double u = sc[r * 3 + j];
      gb[j] += (float)(-u * e[j] * e[j]);
      ge[j] += (float)(u * u * e[j]);
    }
    gsum[0] += -1.0f;
  }
  return 0;
}

static int32_t k_logprob(void *const *a, int64_t n) {
  (void)a;
  (void)n;
  return 0;
}

static const rt_kernel TRAIN_K[RT_NENTRY] = { NULL, NULL, NULL, NULL, k_logprob };

static rt_model *open_train(int nthreads, rt_weights *w) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(TRAIN_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_eq(rt_weights_init(d, 1, w, err, sizeof err), 0, "%s", err);
  float *s = w->data[0], *b = w->data[1];
  for (int j = 0; j < 3; j++) {
    s[j] = 0.1f * (float)(j - 1);
    b[j] = 0.25f * (float)j;
  }
  rt_model *m = rt_model_open(d, TRAIN_K, w, nthreads, err, sizeof err);
  cr_assert(m, "%s", err);
  rt_desc_free(d);
  return m;
}

static float *train_data(size_t n) {
  float *x = malloc(n * 3 * sizeof(float));
  rt_normal_rows(5, 0, 0, (long)n, 3, x);
  for (size_t i = 0; i < 3 * n; i++) x[i] = 1.5f * x[i] + 0.3f;
  return x;
}

/* exact mean -log p and its gradients, in double */
static double expected(const rt_weights *w, const float *x, size_t n, double gs[3], double gb[3]) {
  const float *s = w->data[0], *b = w->data[1];
  double L = 0;
  for (int j = 0; j < 3; j++) gs[j] = gb[j] = 0;
  for (size_t r = 0; r < n; r++)
    for (int j = 0; j < 3; j++) {
      double u = (double)x[r * 3 + j] - b[j], e2 = exp(2.0 * s[j]);
      L += 0.5 * u * u * e2 - s[j];
      gs[j] += u * u * e2 - 1;
      gb[j] += -u * e2;
    }
  for (int j = 0; j < 3; j++) { gs[j] /= n; gb[j] /= n; }
  return L / n;
}

Test(grad, matches_exact_and_threads_agree) {
  size_t n = 1001;                      /* 126 tiles, the last one short */
  float *x = train_data(n);
  double L0 = 0, G0[6] = { 0 };
  int threads[] = { 1, 2, 3, 8 };
  for (int t = 0; t < 4; t++) {
    rt_weights w;
    rt_model *m = open_train(threads[t], &w);
    cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &(double){ 0 }, NULL), RT_EINVAL,
                 "no train kernel yet");
    cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
    float gs[3], gb[3];
    float *grads[3] = { gs, gb, NULL };
    double loss;
    for (int rep = 0; rep < 2; rep++) {   /* a second call gives the same */
      cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_OK);
      double es[3], eb[3], el = expected(&w, x, n, es, eb);
      cr_assert(fabs(loss - el) <= 1e-6 * fabs(el), "loss %.12g, expected %.12g", loss, el);
      for (int j = 0; j < 3; j++) {
        cr_assert(fabs(gs[j] - es[j]) <= 1e-5 * fmax(1, fabs(es[j])), "gs[%d] %.9g vs %.9g", j, gs[j], es[j]);
        cr_assert(fabs(gb[j] - eb[j]) <= 1e-5 * fmax(1, fabs(eb[j])), "gb[%d] %.9g vs %.9g", j, gb[j], eb[j]);
      }
    }
    if (t == 0) {
      L0 = loss;
      for (int j = 0; j < 3; j++) { G0[j] = gs[j]; G0[3 + j] = gb[j]; }
    } else {
      cr_assert(fabs(loss - L0) <= 1e-6 * fabs(L0));
      for (int j = 0; j < 3; j++) {
        cr_assert(fabs(gs[j] - G0[j]) <= 1e-6 * fmax(1e-3, fabs(G0[j])), "threads %d: %.9g vs %.9g", threads[t], gs[j], G0[j]);
        cr_assert(fabs(gb[j] - G0[3 + j]) <= 1e-6 * fmax(1e-3, fabs(G0[3 + j])), "threads %d: %.9g vs %.9g", threads[t], gb[j], G0[3 + j]);
      }
    }
    rt_model_close(m);
    rt_weights_free(&w);
  }
  free(x);
}

Test(grad, deterministic_for_a_thread_count) {
  size_t n = 777;
  float *x = train_data(n);
  rt_weights w;
  rt_model *m = open_train(4, &w);
  cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
  float a[6], b[6];
  float *ga[3] = { a, a + 3, NULL }, *gb[3] = { b, b + 3, NULL };
  double la, lb;
  for (int rep = 0; rep < 20; rep++) {
    cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &la, ga), RT_OK);
    cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &lb, gb), RT_OK);
    cr_assert_eq(memcmp(&la, &lb, sizeof la), 0);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
  }
  rt_model_close(m);
  rt_weights_free(&w);
  free(x);
}

Test(grad, refuses_nan_and_bad_arguments) {
  size_t n = 50;
  float *x = train_data(n);
  rt_weights w;
  rt_model *m = open_train(3, &w);
  cr_assert_eq(rt_model_set_train(m, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
  float g[6];
  float *grads[3] = { g, g + 3, NULL };
  double loss;
  cr_assert_eq(rt_model_grad(m, 0, x, NULL, 0, &loss, grads), RT_EINVAL);
  cr_assert_eq(rt_model_grad(m, n, NULL, NULL, 0, &loss, grads), RT_EINVAL);
  cr_assert_eq(rt_model_grad(m, n, x, x, n, &loss, grads), RT_EINVAL);   /* no context */
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, NULL, grads), RT_EINVAL);
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, NULL), RT_OK);     /* loss only */
  x[37 * 3 + 1] = NAN;
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_ENUMERIC);
  x[37 * 3 + 1] = 1e30f;                 /* finite input, infinite loss */
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_ENUMERIC);
  x[37 * 3 + 1] = 0.5f;
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_OK);
  rt_model_close(m);
  rt_weights_free(&w);
  free(x);
}

Test(grad, set_params_reruns_preps) {
  size_t n = 64;
  float *x = train_data(n);
  rt_weights w;
  rt_model *m = open_train(2, &w);
  cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
  const float *const *tp = rt_model_prep(m, RT_TRAIN_PREP);
  const float *const *lp = rt_model_prep(m, RT_LOGPROB);
  cr_assert(tp && lp);
  cr_assert_null(rt_model_prep(m, RT_TRAIN_PREP + 1));
  float *s = w.data[0];
  for (int j = 0; j < 3; j++) s[j] = 0.5f + (float)j;
  char err[256] = "";
  cr_assert_eq(rt_model_set_params(m, &w, err, sizeof err), RT_OK, "%s", err);
  const rt_weights *mw = rt_model_params(m);
  cr_assert_eq(mw->n, 3);
  cr_assert_eq(memcmp(mw->data[0], s, 3 * sizeof(float)), 0);
  cr_assert_eq(rt_model_prep(m, RT_LOGPROB), lp);   /* training: brought up to date on use */
  for (int j = 0; j < 3; j++) {
    cr_assert_float_eq(tp[0][j], expf(s[j]), 1e-6 * expf(s[j]));
    cr_assert_float_eq(lp[0][j], expf(s[j]), 1e-6 * expf(s[j]));
  }
  cr_assert_float_eq(tp[1][0], 0.5f + 1.5f + 2.5f, 1e-5);
  double loss, es[3], eb[3];
  float g[6];
  float *grads[3] = { g, g + 3, NULL };
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, grads), RT_OK);
  double el = expected(&w, x, n, es, eb);
  cr_assert(fabs(loss - el) <= 1e-6 * fabs(el));
  /* a bad permutation is refused and changes nothing */
  int64_t *perm = w.data[2];
  perm[0] = perm[1];
  s[0] = 100;
  cr_assert_eq(rt_model_set_params(m, &w, err, sizeof err), RT_EINVAL);
  cr_assert(strstr(err, "flow.1.perm"), "%s", err);
  cr_assert_float_eq(((float *)mw->data[0])[0], 0.5f, 0);
  /* its own params are accepted */
  cr_assert_eq(rt_model_set_params(m, mw, err, sizeof err), RT_OK, "%s", err);
  rt_model_close(m);
  rt_weights_free(&w);
  free(x);
}
