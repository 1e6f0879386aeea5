/* tests/test_rt_cnf.c: the runtime side of continuous flows and flow
** matching: the prep ops linear (x W^T + b, forward and reverse), temb
** (time-embedding tables, rt_temb.h) and trace_coef (the coefficients of a
** fused exact Jacobian trace, forward and reverse), their descriptor
** records, the gauss and beta noise kinds (records, distributions,
** determinism), and cg_desc's mapping of param-class IR_LINEAR, IR_TEMB,
** IR_TRACE_COEF and the noise. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cg.h"
#include "ir.h"
#include "rt.h"
#include "rt_temb.h"
#include "testutil.h"

/* The kernel's return type, whatever rt.h makes it (void or a status). */
typedef __typeof__(((rt_kernel)0)((void *const *)0, 0)) kret;

static const double two_pi = 6.283185307179586476925286766559;

static double urand(unsigned *s) { return (rand_r(s) + 0.5) / ((double)RAND_MAX + 1); }

static void fill(float *x, size_t n, unsigned *rs, double scale) {
  for (size_t k = 0; k < n; k++) x[k] = (float)(scale * (2 * urand(rs) - 1));
}

/* A descriptor whose logprob entry runs prog (nprep results), with the
** parameters x [R, I], W [O, I], b [O] (and a [R, I], v [O, I], c [O] for
** chains: params 3, 4, 5), and an optional train section and noise. */
enum { R = 3, I = 4, O = 5 };

static char *desc_text(const char *prog, int nprep, const char *train, const char *noise) {
  char *text = NULL;
  int rc = asprintf(&text,
           "flowc-desc 1\nname cnf\ndim 2\ncontext 0\ntile 4\nparams 6\n"
           "param t.x f32 2 %d %d zero 0 0 0 0\n"
           "param t.weight f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.bias f32 1 %d 0 linear_bias %d 0 0 0\n"
           "param t.a f32 2 %d %d zero 0 0 0 0\n"
           "param t.v f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.c f32 1 %d 0 linear_bias %d 0 0 0\n"
           "entry encode scratch 0 has_ld 0 nprep 0\n"
           "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry decode scratch 0 has_ld 0 nprep 0\n"
           "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry logprob scratch 0 has_ld 0 nprep %d\n%s%s%s"
           "end\n",
           R, I, O, I, I, O, I, R, I, O, I, I, O, I, nprep, prog, train ? train : "",
           noise ? noise : "");
  cr_assert(rc > 0);
  return text;
}

static rt_desc *parse_ok(const char *text) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(text, err, sizeof err);
  cr_assert(d, "%s\n%s", err, text);
  return d;
}

static rt_desc *make_desc(const char *prog, int nprep) {
  char *text = desc_text(prog, nprep, NULL, NULL);
  rt_desc *d = parse_ok(text);
  free(text);
  return d;
}

/* Parameter values: random floats of every parameter of d. */
typedef struct pset { float *p[6]; void *params[6]; } pset;

static void pset_init(pset *s, const rt_desc *d, unsigned seed) {
  unsigned rs = seed;
  for (int i = 0; i < 6; i++) {
    size_t len = (size_t)d->params[i].shape[0] * (d->params[i].ndim == 2 ? d->params[i].shape[1] : 1);
    s->p[i] = malloc(len * sizeof(float));
    fill(s->p[i], len, &rs, 1.0);
    s->params[i] = s->p[i];
  }
}

static void pset_free(pset *s) {
  for (int i = 0; i < 6; i++) free(s->p[i]);
}

static size_t numel(const rt_desc *d, int i) {
  return (size_t)d->params[i].shape[0] * (d->params[i].ndim == 2 ? d->params[i].shape[1] : 1);
}

/* The forward results of en into freshly allocated vals. */
static double **run_forward(const rt_desc *d, const rt_entry_desc *en, void *const *params) {
  double **vals = calloc((size_t)en->nprep, sizeof *vals);
  for (int q = 0; q < en->nprep; q++) vals[q] = calloc(rt_prep_val_len(&en->prep[q]), sizeof(double));
  rt_prep_forward(d, en, params, vals);
  return vals;
}

static void free_vals(double **v, int n) {
  for (int q = 0; q < n; q++) free(v[q]);
  free(v);
}

/* ---- linear: forward ---- */

static void direct_linear(const float *x, const float *W, const float *b, double *y) {
  for (int r = 0; r < R; r++)
    for (int o = 0; o < O; o++) {
      double s = b ? b[o] : 0;
      for (int i = 0; i < I; i++) s += (double)x[r * I + i] * W[o * I + i];
      y[r * O + o] = s;
    }
}

Test(linear, forward_matches_direct) {
  char prog[256];
  snprintf(prog, sizeof prog, "prep linear %d %d 0 3 0 1 2\nprep linear %d %d 0 2 0 1\n", R, O, R, O);
  rt_desc *d = make_desc(prog, 2);
  pset s;
  pset_init(&s, d, 5);
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  double **v = run_forward(d, en, s.params);
  double ref[R * O], ref0[R * O];
  direct_linear(s.p[0], s.p[1], s.p[2], ref);
  direct_linear(s.p[0], s.p[1], NULL, ref0);
  for (int k = 0; k < R * O; k++) {
    cr_assert(fabs(v[0][k] - ref[k]) <= 1e-14, "k %d: %.17g vs %.17g", k, v[0][k], ref[k]);
    cr_assert(fabs(v[1][k] - ref0[k]) <= 1e-14, "k %d (no bias)", k);
  }
  free_vals(v, 2);
  pset_free(&s);
  rt_desc_free(d);
}

/* ---- linear: reverse vs central differences ---- */

/* L = sum_k c[k] * (last result)[k] of en, in double. */
static double loss_of(const rt_desc *d, const rt_entry_desc *en, void *const *params,
                      const double *c) {
  double **v = run_forward(d, en, params);
  const rt_prep *last = &en->prep[en->nprep - 1];
  double L = 0;
  for (size_t k = 0; k < (size_t)last->rows * last->n; k++) L += c[k] * v[en->nprep - 1][k];
  free_vals(v, en->nprep);
  return L;
}

/* Checks rt_prep_backward's parameter gradients of L against central
** differences in every float of every parameter (h relative to 1; the
** difference divides by the actual float step). exact: L is linear in
** each parameter, so the difference is exact up to rounding. */
static void check_reverse_desc(rt_desc *d, const char *prog, int nprep, int exact) {
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  pset s;
  pset_init(&s, d, 17);
  unsigned rs = 99;
  const rt_prep *last = &en->prep[nprep - 1];
  size_t len = (size_t)last->rows * last->n;
  double *c = malloc(len * sizeof *c);
  for (size_t k = 0; k < len; k++) c[k] = 2 * urand(&rs) - 1;
  /* reverse */
  double **v = run_forward(d, en, s.params);
  double **gv = calloc((size_t)nprep, sizeof *gv);
  for (int q = 0; q < nprep; q++) gv[q] = calloc(rt_prep_val_len(&en->prep[q]), sizeof(double));
  memcpy(gv[nprep - 1], c, len * sizeof *c);
  double *gp[6];
  for (int i = 0; i < 6; i++) gp[i] = calloc(numel(d, i), sizeof(double));
  size_t ws = rt_prep_work_size(d, en);
  double *work = malloc((ws ? ws : 1) * sizeof(double));
  rt_prep_backward(d, en, s.params, (const double *const *)v, gv, gp, work);
  /* central differences */
  double h = exact ? 0.25 : 1e-3;
  for (int i = 0; i < 6; i++)
    for (size_t k = 0; k < numel(d, i); k++) {
      float keep = s.p[i][k];
      s.p[i][k] = keep + (float)h;
      double xp = s.p[i][k], Lp = loss_of(d, en, s.params, c);
      s.p[i][k] = keep - (float)h;
      double xm = s.p[i][k], Lm = loss_of(d, en, s.params, c);
      s.p[i][k] = keep;
      double fd = (Lp - Lm) / (xp - xm), tol = exact ? 1e-12 : 2e-5;
      cr_assert(fabs(gp[i][k] - fd) <= tol * fmax(1, fabs(fd)),
                "%s\nparam %d elem %zu: reverse %.12g, differences %.12g", prog, i, k, gp[i][k],
                fd);
    }
  free(work);
  for (int i = 0; i < 6; i++) free(gp[i]);
  free_vals(gv, nprep);
  free_vals(v, nprep);
  free(c);
  pset_free(&s);
  rt_desc_free(d);
}

static void check_reverse(const char *prog, int nprep, int exact) {
  check_reverse_desc(make_desc(prog, nprep), prog, nprep, exact);
}

Test(linear, reverse_into_params) {
  char prog[256];
  snprintf(prog, sizeof prog, "prep linear %d %d 0 3 0 1 2\n", R, O);
  check_reverse(prog, 1, 1);
  snprintf(prog, sizeof prog, "prep linear %d %d 0 2 0 1\n", R, O);
  check_reverse(prog, 1, 1);
}

/* scale (pass_affine's folded weights): rows of W [O, I] by c [1, O], and
** columns of b [1, O] by c; then through an earlier result, squared. */
Test(scale, reverse_into_params) {
  char prog[256];
  snprintf(prog, sizeof prog, "prep scale %d %d 0 2 1 5 0\n", O, I);
  check_reverse(prog, 1, 1);
  snprintf(prog, sizeof prog, "prep scale 1 %d 0 2 2 5 1\n", O);
  check_reverse(prog, 1, 1);
  snprintf(prog, sizeof prog, "prep exp 1 %d 0 1 5\nprep scale %d %d 0 2 1 6 0\nprep mul %d %d 0 2 7 7\n",
           O, O, I, O, I);
  check_reverse(prog, 3, 0);
}

/* The forward values: y[r][c] = v[r][c] b[r] (axis 0); a vector of the
** wrong width is refused (columns of v [O, I] by b [1, O]). */
Test(scale, forward_and_shapes) {
  char prog[256];
  snprintf(prog, sizeof prog, "prep scale %d %d 0 2 4 2 1\n", O, I);
  char *text = desc_text(prog, 1, NULL, NULL), err[256] = "";
  cr_assert_null(rt_desc_parse(text, err, sizeof err), "a scale of the wrong width was accepted");
  cr_assert(strstr(err, "do not fit"), "%s", err);
  free(text);
  snprintf(prog, sizeof prog, "prep scale %d %d 0 2 4 2 0\n", O, I);
  rt_desc *d = make_desc(prog, 1);
  pset s;
  pset_init(&s, d, 5);
  double **v = run_forward(d, &d->entry[RT_LOGPROB], s.params);
  for (int r = 0; r < O; r++)
    for (int c = 0; c < I; c++)
      cr_assert_float_eq(v[0][r * I + c], (double)s.p[4][r * I + c] * s.p[2][r], 1e-12);
  free_vals(v, 1);
  pset_free(&s);
  rt_desc_free(d);
}

Test(linear, reverse_through_earlier_results) {
  /* x = exp(a), W = neg(v), b = exp(c): every operand a prep result; the
  ** result squared, so the loss is not linear */
  char prog[512];
  snprintf(prog, sizeof prog,
           "prep exp %d %d 0 1 3\nprep neg %d %d 0 1 4\nprep exp 1 %d 0 1 5\n"
           "prep linear %d %d 0 3 6 7 8\nprep mul %d %d 0 2 9 9\n",
           R, I, O, I, O, R, O, R, O);
  check_reverse(prog, 5, 0);
  /* only x a result; W, b params; x also feeds the loss directly */
  snprintf(prog, sizeof prog,
           "prep exp %d %d 0 1 3\nprep linear %d %d 0 3 6 1 2\nprep mul %d %d 0 2 7 7\n",
           R, I, R, O, R, O);
  check_reverse(prog, 3, 0);
}

/* ---- temb ---- */

/* The formula, written out independently of rt_temb.h. */
static double temb_ref(int kind, int n, int col, double t) {
  if (kind == 0) return t;
  int h = n / 2, k = col % h;
  double period = 4e-3 * pow(1000.0, (double)k / (h - 1));
  double w = two_pi / period;
  return col < h ? sin(w * t) : cos(w * t);
}

Test(temb, helper_matches_formula) {
  cr_assert(fabs(rt_temb_freq(0, 4) - two_pi / 4e-3) <= 1e-12 * two_pi / 4e-3);
  cr_assert(fabs(rt_temb_freq(3, 4) - two_pi / 4) <= 1e-14);
  cr_assert(fabs(rt_temb_freq(1, 3) - two_pi / (4e-3 * sqrt(1000.0))) <= 1e-12);
  for (int n = 4; n <= 16; n += 2)
    for (int col = 0; col < n; col++)
      for (double t = -0.5; t <= 1.5; t += 0.125) {
        double v = rt_temb_value(1, n, col, t), r = temb_ref(1, n, col, t);
        cr_assert(fabs(v - r) <= 1e-10, "n %d col %d t %g: %.17g vs %.17g", n, col, t, v, r);
      }
  cr_assert_eq(rt_temb_value(0, 1, 0, 0.3125), 0.3125);
}

Test(temb, tables_and_no_gradient) {
  const char *prog = "prep temb 5 1 0.25 0 0 0.125\n"
                     "prep temb 7 8 0.10000000000000001 0 1 0.050000000000000003\n"
                     "prep temb 1 4 1 0 1 0\n";
  rt_desc *d = make_desc(prog, 3);
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  cr_assert_eq(en->prep[0].op, RT_PREP_TEMB);
  cr_assert_eq(en->prep[1].iargs[0], 1);
  cr_assert_eq(en->prep[1].f2, 0.05);
  pset s;
  pset_init(&s, d, 3);
  double **v = run_forward(d, en, s.params);
  for (int r = 0; r < 5; r++) cr_assert_eq(v[0][r], 0.25 + r * 0.125);
  for (int r = 0; r < 7; r++)
    for (int j = 0; j < 8; j++) {
      double t = 0.1 + r * 0.05, ref = temb_ref(1, 8, j, t);
      cr_assert(fabs(v[1][r * 8 + j] - ref) <= 1e-10, "r %d j %d: %.17g vs %.17g", r, j,
                v[1][r * 8 + j], ref);
    }
  for (int j = 0; j < 2; j++) cr_assert(fabs(v[2][j] - sin(rt_temb_freq(j, 2))) <= 1e-12);
  for (int j = 0; j < 2; j++) cr_assert(fabs(v[2][2 + j] - cos(rt_temb_freq(j, 2))) <= 1e-12);
  /* reverse: nothing reaches any parameter */
  double *gv[3], *gp[6];
  for (int q = 0; q < 3; q++) {
    size_t len = rt_prep_val_len(&en->prep[q]);
    gv[q] = malloc(len * sizeof(double));
    for (size_t k = 0; k < len; k++) gv[q][k] = 1;
  }
  for (int i = 0; i < 6; i++) gp[i] = calloc(numel(d, i), sizeof(double));
  double work[1];
  rt_prep_backward(d, en, s.params, (const double *const *)v, gv, gp, work);
  for (int i = 0; i < 6; i++)
    for (size_t k = 0; k < numel(d, i); k++) cr_assert_eq(gp[i][k], 0.0);
  for (int q = 0; q < 3; q++) free(gv[q]);
  for (int i = 0; i < 6; i++) free(gp[i]);
  free_vals(v, 3);
  pset_free(&s);
  rt_desc_free(d);
}

/* ---- descriptor records ---- */

/* A program that type-checks (operand indices: params 0-5, results 6..):
** x9 = linear(scalar table [9,1], W = another table [4,1]) [9,4], then
** the two linears of x9 with and without bias. */
static const char *const PROG =
  "prep temb 9 1 0 0 0 0.125\n"                                   /* 6: [9,1] */
  "prep temb 9 6 0.10000000000000001 0 1 0.033333333333333333\n"  /* 7: [9,6] */
  "prep temb 4 1 1 0 0 -0.25\n"                                   /* 8: [4,1] */
  "prep linear 9 4 0 2 6 8\n"                                     /* 9: [9,4] */
  "prep linear 9 5 0 3 9 1 2\n"                                   /* 10 */
  "prep linear 9 5 0 2 9 4\n";                                    /* 11 */
static const char *const TRAIN =
  "train scratch 0 nprep 2\n"
  "prep temb 3 4 -0.5 0 1 0.25\n"
  "prep linear 3 5 0 3 6 4 5\n";
static const char *const NOISE =
  "noise 5\n"
  "block rademacher 3 0 0\n"
  "block roulette 4 1 0.29999999999999999\n"
  "block gauss 7 0 0\n"
  "block beta 2 0 0 0.29999999999999999 0.00033333333333333332\n"
  "block beta 1 0 0 1 1\n";

Test(desc, round_trip) {
  char *text = desc_text(PROG, 6, TRAIN, NOISE);
  rt_desc *d = parse_ok(text);
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  cr_assert_eq(en->prep[1].op, RT_PREP_TEMB);
  cr_assert_eq(en->prep[1].f, 0.1);
  cr_assert_eq(en->prep[1].f2, 1.0 / 30);
  cr_assert_eq(en->prep[2].f2, -0.25);
  cr_assert_eq(en->prep[4].op, RT_PREP_LINEAR);
  cr_assert_eq(en->prep[4].nargs, 3);
  cr_assert_eq(en->prep[5].nargs, 2);
  cr_assert_eq(d->train.prep[0].f, -0.5);
  cr_assert_eq(d->nnoise, 5);
  cr_assert_eq(d->noise_width, 3 + 4 + 7 + 2 + 1);
  cr_assert_eq(d->noise[2].kind, RT_NOISE_GAUSS);
  cr_assert_eq(d->noise[3].kind, RT_NOISE_BETA);
  cr_assert_eq(d->noise[3].a, 0.3);
  cr_assert_eq(d->noise[3].b, 1.0 / 3000);
  cr_assert_eq(d->noise[4].a, 1.0);
  cr_assert_eq(d->noise[2].a, 0.0);
  char *f1 = rt_desc_format(d);
  cr_assert_str_eq(f1, text, "format reproduces the canonical text");
  rt_desc *d2 = parse_ok(f1);
  char *f2 = rt_desc_format(d2);
  cr_assert_str_eq(f1, f2);
  for (int q = 0; q < 6; q++) cr_assert_eq(memcmp(&d2->entry[RT_LOGPROB].prep[q], &en->prep[q], sizeof(rt_prep)), 0);
  for (int k = 0; k < 5; k++) {
    cr_assert_eq(d2->noise[k].kind, d->noise[k].kind);
    cr_assert_eq(d2->noise[k].a, d->noise[k].a);
    cr_assert_eq(d2->noise[k].b, d->noise[k].b);
    cr_assert_eq(d2->noise[k].p, d->noise[k].p);
  }
  /* awkward values survive: %.17g */
  d2->noise[3].a = nextafter(0.1, 1);
  d2->noise[3].b = 123456.789e-3;
  d2->entry[RT_LOGPROB].prep[0].f2 = -nextafter(1.0 / 7, 0);
  d2->entry[RT_LOGPROB].prep[0].f = 1e-300;
  char *f3 = rt_desc_format(d2);
  rt_desc *d3 = parse_ok(f3);
  cr_assert_eq(d3->noise[3].a, d2->noise[3].a);
  cr_assert_eq(d3->noise[3].b, d2->noise[3].b);
  cr_assert_eq(d3->entry[RT_LOGPROB].prep[0].f2, d2->entry[RT_LOGPROB].prep[0].f2);
  cr_assert_eq(d3->entry[RT_LOGPROB].prep[0].f, 1e-300);
  free(f1);
  free(f2);
  free(f3);
  rt_desc_free(d3);
  rt_desc_free(d2);
  rt_desc_free(d);
  free(text);
}

Test(desc, rejects_malformed) {
  char *t = desc_text(PROG, 6, TRAIN, NOISE);
  rt_desc_free(parse_ok(t));
  static const char *const bad[][2] = {
    /* temb */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 0 2 0.125\n" },        /* kind */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 2 0 0 0 0.125\n" },        /* scalar n 2 */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 0 1 0 0 0 0.125\n" },        /* rows 0 */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 0 0 inf\n" },          /* dt */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 nan 0 0 0.125\n" },      /* t0 */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 0 0\n" },              /* no dt */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 0 0 0.125 1\n" },      /* extra */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 0 0 0.1x\n" },         /* bad dt */
    { "prep temb 9 1 0 0 0 0.125\n", "prep temb 9 1 0 1 0 0 0.125\n" },      /* an arg */
    { "prep temb 9 6 0.10000000000000001 0 1", "prep temb 9 5 0.1 0 1" },    /* odd */
    { "prep temb 9 6 0.10000000000000001 0 1", "prep temb 9 2 0.1 0 1" },    /* < 4 */
    { "prep temb 9 6 0.10000000000000001 0 1", "prep temb 9 1 0.1 0 1" },
    /* linear */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 9 4 0 1 6\n" },              /* 1 arg */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 9 4 0 4 6 8 2 2\n" },        /* 4 args */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 9 4 0 2 7 8\n" },            /* in 6 != 1 */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 8 4 0 2 6 8\n" },            /* rows */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 9 3 0 2 6 8\n" },            /* out */
    { "prep linear 9 4 0 2 6 8\n", "prep linear 9 4 0 2 6 9\n" },            /* later */
    { "prep linear 9 5 0 3 9 1 2\n", "prep linear 9 5 0 3 9 1 0\n" },        /* b [3,4] */
    { "prep linear 9 5 0 3 9 1 2\n", "prep linear 9 5 0 3 9 1 8\n" },        /* b [4,1] */
    { "prep linear 9 5 0 3 9 1 2\n", "prep linear 9 5 0 3 9 1 3\n" },        /* b [3,4] */
    { "prep linear 3 5 0 3 6 4 5\n", "prep linear 3 5 0 3 6 4 6\n" },        /* b [3,4] */
    /* noise */
    { "block gauss 7 0 0\n", "block gauss 0 0 0\n" },
    { "block gauss 7 0 0\n", "block gauss 7 1 0\n" },
    { "block gauss 7 0 0\n", "block gauss 7 0 0.5\n" },
    { "block gauss 7 0 0\n", "block gauss 7 0 0 1 1\n" },
    { "block gauss 7 0 0\n", "block gauss 131073 0 0\n" },
    { "block gauss 7 0 0\n", "block gaussian 7 0 0\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 1 1 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 0 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 1 -2\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 inf 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 1 nan\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 0 0 1 x\n" },
    { "block beta 1 0 0 1 1\n", "block beta 1 1 0 1 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 0 0 0 1 1\n" },
    { "block beta 1 0 0 1 1\n", "block beta 257 0 0 1 1\n" },
    { "block rademacher 3 0 0\n", "block rademacher 3 0 0 1 1\n" },
  };
  char err[256];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *at = strstr(t, bad[i][0]);
    cr_assert(at, "case %zu", i);
    char *text = NULL;
    cr_assert(asprintf(&text, "%.*s%s%s", (int)(at - t), t, bad[i][1], at + strlen(bad[i][0])) > 0);
    err[0] = 0;
    rt_desc *b = rt_desc_parse(text, err, sizeof err);
    cr_assert_null(b, "case %zu parsed:\n%s", i, text);
    cr_assert(err[0], "case %zu has no message", i);
    free(text);
  }
  free(t);
  /* the widest allowed blocks parse */
  const char *wide[] = { "block gauss 131072 0 0\n", "block beta 256 0 0 2 3\n" };
  for (int i = 0; i < 2; i++) {
    char *text = desc_text("", 0, "train scratch 0 nprep 0\n", NULL);
    char *e = strstr(text, "end\n"), *full = NULL;
    cr_assert(asprintf(&full, "%.*snoise 1\n%send\n", (int)(e - text), text, wide[i]) > 0);
    rt_desc_free(parse_ok(full));
    free(full);
    free(text);
  }
}

/* ---- trace_coef ---- */

/* A descriptor for trace_coef (D = 3 of in = 6 columns, H0 = 5, H1 = 2):
** params 0 w0 [5,6], 1 w1 [3,5], 2 u1 [2,5] (the second layer's W1),
** 3 w2 [3,2], 4 s [5,2], 5 m [6,2] (linear(s, m) is another [5,6] W0);
** the index pool holds a gather of w0 [5,6] -> [5,6] at offset 0 (rows
** permuted, a column repeated). */
enum { TD = 3, TIN = 6, TH0 = 5, TH1 = 2, TK = 2 };
static const char *const TRACE_INDEX = "index 11 4 0 3 1 2 2 2 0 5 1 3\n";
static const int trace_rows[TH0] = { 4, 0, 3, 1, 2 }, trace_cols[TIN] = { 2, 2, 0, 5, 1, 3 };

static char *trace_text(const char *prog, int nprep, const char *train) {
  char *text = NULL;
  int rc = asprintf(&text,
           "flowc-desc 1\nname cnf\ndim 2\ncontext 0\ntile 4\nparams 6\n"
           "param t.w0 f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.w1 f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.u1 f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.w2 f32 2 %d %d linear_weight %d 0 0 0\n"
           "param t.s f32 2 %d %d zero 0 0 0 0\n"
           "param t.m f32 2 %d %d linear_weight %d 0 0 0\n"
           "%s"
           "entry encode scratch 0 has_ld 0 nprep 0\n"
           "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry decode scratch 0 has_ld 0 nprep 0\n"
           "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry logprob scratch 0 has_ld 0 nprep %d\n%s%s"
           "end\n",
           TH0, TIN, TIN, TD, TH0, TH0, TH1, TH0, TH0, TD, TH1, TH1, TH0, TK, TIN, TK, TK,
           TRACE_INDEX, nprep, prog, train ? train : "");
  cr_assert(rc > 0);
  return text;
}

static rt_desc *make_trace_desc(const char *prog, int nprep) {
  char *text = trace_text(prog, nprep, NULL);
  rt_desc *d = parse_ok(text);
  free(text);
  return d;
}

/* c[h] = sum_{i<D} W1[i][h] W0[h][i], W0 [H0, ldw] */
static void direct_c(const double *W0, int ldw, const float *W1, double *c) {
  for (int h = 0; h < TH0; h++) {
    double s = 0;
    for (int i = 0; i < TD; i++) s += (double)W1[i * TH0 + h] * W0[h * ldw + i];
    c[h] = s;
  }
}

/* Q[k][h] = W1[k][h] sum_{i<D} W2[i][k] W0[h][i] */
static void direct_q(const double *W0, int ldw, const float *W1, const float *W2, double *Q) {
  for (int k = 0; k < TH1; k++)
    for (int h = 0; h < TH0; h++) {
      double s = 0;
      for (int i = 0; i < TD; i++) s += (double)W2[i * TH1 + k] * W0[h * ldw + i];
      Q[k * TH0 + h] = (double)W1[k * TH0 + h] * s;
    }
}

static void check_close(const double *got, const double *ref, int n, const char *what) {
  for (int k = 0; k < n; k++)
    cr_assert(fabs(got[k] - ref[k]) <= 1e-14 * fmax(1, fabs(ref[k])), "%s k %d: %.17g vs %.17g",
              what, k, got[k], ref[k]);
}

Test(trace_coef, forward_matches_direct) {
  const char *prog =
    "prep trace_coef 1 5 0 2 0 1 3\n"        /* 6: c of w0, w1 */
    "prep trace_coef 2 5 0 3 0 2 3 3\n"      /* 7: Q of w0, u1, w2 */
    "prep linear 5 6 0 2 4 5\n"              /* 8: s m^T [5,6] */
    "prep trace_coef 2 5 0 3 8 2 3 3\n"      /* 9: Q of that */
    "prep gather 5 6 0 1 0 0\n"              /* 10: w0 gathered */
    "prep trace_coef 1 5 0 2 10 1 3\n";      /* 11: c of that */
  rt_desc *d = make_trace_desc(prog, 6);
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  cr_assert_eq(en->prep[0].op, RT_PREP_TRACE_COEF);
  cr_assert_eq(en->prep[0].iargs[0], TD);
  pset s;
  pset_init(&s, d, 41);
  double **v = run_forward(d, en, s.params);
  double w0[TH0 * TIN], lin[TH0 * TIN], gat[TH0 * TIN], ref[TH1 * TH0];
  for (int h = 0; h < TH0; h++)
    for (int j = 0; j < TIN; j++) {
      w0[h * TIN + j] = s.p[0][h * TIN + j];
      gat[h * TIN + j] = s.p[0][trace_rows[h] * TIN + trace_cols[j]];
      double t = 0;
      for (int k = 0; k < TK; k++) t += (double)s.p[4][h * TK + k] * s.p[5][j * TK + k];
      lin[h * TIN + j] = t;
    }
  direct_c(w0, TIN, s.p[1], ref);
  check_close(v[0], ref, TH0, "c");
  direct_q(w0, TIN, s.p[2], s.p[3], ref);
  check_close(v[1], ref, TH1 * TH0, "Q");
  direct_q(lin, TIN, s.p[2], s.p[3], ref);
  check_close(v[3], ref, TH1 * TH0, "Q of linear");
  direct_c(gat, TIN, s.p[1], ref);
  check_close(v[5], ref, TH0, "c of gather");
  /* the columns of W0 from D on do not matter */
  for (int h = 0; h < TH0; h++)
    for (int j = TD; j < TIN; j++) s.p[0][h * TIN + j] = 1e3f;
  double **v2 = run_forward(d, en, s.params);
  for (int k = 0; k < TH0; k++) cr_assert_eq(v2[0][k], v[0][k]);
  for (int k = 0; k < TH1 * TH0; k++) cr_assert_eq(v2[1][k], v[1][k]);
  free_vals(v2, 6);
  free_vals(v, 6);
  pset_free(&s);
  rt_desc_free(d);
}

Test(trace_coef, reverse_into_params) {
  /* linear in every single parameter: the differences are exact */
  const char *one = "prep trace_coef 1 5 0 2 0 1 3\n";
  check_reverse_desc(make_trace_desc(one, 1), one, 1, 1);
  const char *two = "prep trace_coef 2 5 0 3 0 2 3 3\n";
  check_reverse_desc(make_trace_desc(two, 1), two, 1, 1);
  /* squared: not linear */
  const char *sq1 = "prep trace_coef 1 5 0 2 0 1 3\nprep mul 1 5 0 2 6 6\n";
  check_reverse_desc(make_trace_desc(sq1, 2), sq1, 2, 0);
  const char *sq2 = "prep trace_coef 2 5 0 3 0 2 3 3\nprep mul 2 5 0 2 6 6\n";
  check_reverse_desc(make_trace_desc(sq2, 2), sq2, 2, 0);
}

Test(trace_coef, reverse_through_earlier_results) {
  /* W0 = s m^T, W1 = exp(u1), W2 = -w2: every operand a prep result */
  const char *a =
    "prep linear 5 6 0 2 4 5\n"              /* 6 */
    "prep exp 2 5 0 1 2\n"                   /* 7 */
    "prep neg 3 2 0 1 3\n"                   /* 8 */
    "prep trace_coef 2 5 0 3 6 7 8 3\n"      /* 9 */
    "prep mul 2 5 0 2 9 9\n";                /* 10 */
  check_reverse_desc(make_trace_desc(a, 5), a, 5, 0);
  /* W0 = gather(w0) feeds both arities; W1 = exp(w1) in the first; the
  ** loss Q * sum(c^2) */
  const char *b =
    "prep gather 5 6 0 1 0 0\n"              /* 6 */
    "prep exp 3 5 0 1 1\n"                   /* 7 */
    "prep trace_coef 1 5 0 2 6 7 3\n"        /* 8 */
    "prep mul 1 5 0 2 8 8\n"                 /* 9 */
    "prep trace_coef 2 5 0 3 6 2 3 3\n"      /* 10 */
    "prep sum 1 1 0 1 9\n"                   /* 11 */
    "prep mul 2 5 0 2 10 11\n";              /* 12 */
  check_reverse_desc(make_trace_desc(b, 7), b, 7, 0);
  /* W0 = linear result, nargs 2, W1 and W2 results, exact (linear in each) */
  const char *c =
    "prep linear 5 6 0 2 4 5\n"              /* 6 */
    "prep neg 3 5 0 1 1\n"                   /* 7 */
    "prep trace_coef 1 5 0 2 6 7 3\n";       /* 8 */
  check_reverse_desc(make_trace_desc(c, 3), c, 3, 1);
}

/* A program that type-checks, for the descriptor tests. */
static const char *const TRACE_PROG =
  "prep trace_coef 1 5 0 2 0 1 3\n"          /* 6: [1,5] */
  "prep trace_coef 2 5 0 3 0 2 3 3\n"        /* 7: [2,5] */
  "prep linear 5 6 0 2 4 5\n"                /* 8: [5,6] */
  "prep gather 5 6 0 1 0 0\n"                /* 9: [5,6] */
  "prep trace_coef 2 5 0 3 8 2 3 3\n"        /* 10 */
  "prep exp 3 5 0 1 1\n"                     /* 11: [3,5] */
  "prep trace_coef 1 5 0 2 9 11 3\n"         /* 12 */
  "prep trace_coef 1 5 0 2 4 2 2\n";         /* 13: W0 s [5,2], D = in = 2, W1 u1 */
static const char *const TRACE_TRAIN = "train scratch 0 nprep 1\nprep trace_coef 2 5 0 3 0 2 3 3\n";

Test(trace_coef, desc_round_trip) {
  char *text = trace_text(TRACE_PROG, 8, TRACE_TRAIN);
  rt_desc *d = parse_ok(text);
  const rt_entry_desc *en = &d->entry[RT_LOGPROB];
  cr_assert_eq(en->prep[0].op, RT_PREP_TRACE_COEF);
  cr_assert_eq(en->prep[0].nargs, 2);
  cr_assert_eq(en->prep[0].rows, 1);
  cr_assert_eq(en->prep[0].n, TH0);
  cr_assert_eq(en->prep[0].iargs[0], TD);
  cr_assert_eq(en->prep[1].nargs, 3);
  cr_assert_eq(en->prep[1].args[2], 3);
  cr_assert_eq(en->prep[4].args[0], 8);
  cr_assert_eq(en->prep[7].iargs[0], 2);
  cr_assert_eq(d->train.prep[0].op, RT_PREP_TRACE_COEF);
  cr_assert_eq(d->train.prep[0].iargs[0], TD);
  char *f1 = rt_desc_format(d);
  cr_assert_str_eq(f1, text, "format reproduces the canonical text");
  rt_desc *d2 = parse_ok(f1);
  for (int q = 0; q < 8; q++)
    cr_assert_eq(memcmp(&d2->entry[RT_LOGPROB].prep[q], &en->prep[q], sizeof(rt_prep)), 0, "q %d", q);
  cr_assert_eq(memcmp(&d2->train.prep[0], &d->train.prep[0], sizeof(rt_prep)), 0);
  char *f2 = rt_desc_format(d2);
  cr_assert_str_eq(f1, f2);
  free(f1);
  free(f2);
  rt_desc_free(d2);
  rt_desc_free(d);
  free(text);
}

Test(trace_coef, desc_rejects_malformed) {
  char *t = trace_text(TRACE_PROG, 8, TRACE_TRAIN);
  rt_desc_free(parse_ok(t));
  static const char *const bad[][2] = {
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 1 0 3\n" },        /* 1 arg */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 4 0 1 3 3 3\n" },  /* 4 args */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1\n" },        /* no D */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 3 3\n" },    /* extra */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 0\n" },      /* D 0 */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 -3\n" },     /* D < 0 */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 x\n" },      /* D text */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 2\n" },      /* W1 rows != D */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 1 7\n" },      /* D > in */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 4 1 3\n" },      /* in 2 < D */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 2 5 0 2 0 1 3\n" },      /* rows */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 4 0 2 0 1 3\n" },      /* n */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 3 3\n" },      /* W1 [3,2] */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 1 1 3\n" },      /* W0 [3,5] */
    { "prep trace_coef 1 5 0 2 0 1 3\n", "prep trace_coef 1 5 0 2 0 6 3\n" },      /* self */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 1 5 0 3 0 2 3 3\n" },  /* rows != H1 */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 2 5 0 3 0 2 1 3\n" },  /* W2 [3,5] */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 2 5 0 3 0 2 2 3\n" },  /* W2 [2,5] */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 2 5 0 3 0 3 3 3\n" },  /* W1 [3,2] */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 2 5 0 3 0 2 3 2\n" },  /* D != W2 rows */
    { "prep trace_coef 2 5 0 3 0 2 3 3\n", "prep trace_coef 2 5 0 3 0 2 3\n" },    /* no D */
    { "prep trace_coef 2 5 0 3 8 2 3 3\n", "prep trace_coef 2 5 0 3 11 2 3 3\n" }, /* later */
    { "prep trace_coef 1 5 0 2 4 2 2\n", "prep trace_coef 1 5 0 2 4 2 3\n" },      /* D > in 2 */
    { "prep trace_coef 1 5 0 2 9 11 3\n", "prep trace_coef 1 5 0 2 9 10 3\n" },    /* W1 [2,5] */
    { "prep trace_coef 2 5 0 3 8 2 3 3\n", "prep trace_coef 2 5 0 3 7 2 3 3\n" },  /* W0 [2,5] */
    { "train scratch 0 nprep 1\nprep trace_coef 2 5 0 3 0 2 3 3\n",                 /* train */
      "train scratch 0 nprep 1\nprep trace_coef 2 5 0 3 0 2 3 4\n" },
  };
  char err[256];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *at = strstr(t, bad[i][0]);
    cr_assert(at, "case %zu", i);
    char *text = NULL;
    cr_assert(asprintf(&text, "%.*s%s%s", (int)(at - t), t, bad[i][1], at + strlen(bad[i][0])) > 0);
    err[0] = 0;
    rt_desc *b = rt_desc_parse(text, err, sizeof err);
    cr_assert_null(b, "case %zu parsed:\n%s", i, text);
    cr_assert(err[0], "case %zu has no message", i);
    free(text);
  }
  free(t);
}

/* ---- noise in a model ---- */

enum { NW = 5 + 2 * 6, MAXROWS = 100000 };
static const char *const MODEL_NOISE =
  "noise 7\n"
  "block gauss 5 0 0\n"
  "block beta 2 0 0 1 1\n"
  "block beta 2 0 0 1.5 1\n"
  "block beta 2 0 0 0.5 0.5\n"
  "block beta 2 0 0 2 5\n"
  "block beta 2 0 0 0.01 0.02\n"
  "block beta 2 0 0 40 0.3\n";
static float g_noise[(size_t)MAXROWS * NW];
static int g_seen[MAXROWS];

/* args (P = 6, Q = 0): 0 x, 2 lp, 4..9 params, 10 scratch, 11..16 slots,
** 17 noise. x[r, 0] holds the row's index in the batch. */
static kret k_train(void *const *a, int64_t n) {
  const float *x = a[0], *noise = a[17];
  float *lp = a[2];
  cr_assert_not_null(noise);
  for (int64_t r = 0; r < n; r++) {
    int row = (int)x[r * 2];
    lp[r] = 0;
    memcpy(g_noise + (size_t)row * NW, noise + r * NW, NW * sizeof(float));
    g_seen[row]++;
  }
  return (kret)0;
}

static kret k_nothing(void *const *a, int64_t n) {
  (void)a;
  (void)n;
  return (kret)0;
}

static float *noise_of(size_t n, int threads, int tile, uint64_t seed, uint64_t ctr) {
  char *text = desc_text("", 0, "train scratch 0 nprep 0\n", MODEL_NOISE);
  rt_desc *d = parse_ok(text);
  free(text);
  cr_assert_eq(d->noise_width, NW);
  d->tile = tile;
  char err[256] = "";
  rt_weights w;
  cr_assert_eq(rt_weights_init(d, 1, &w, err, sizeof err), 0, "%s", err);
  rt_kernel ks[RT_NENTRY] = { k_nothing, k_nothing, k_nothing, k_nothing, k_nothing };
  rt_model *m = rt_model_open(d, ks, &w, threads, err, sizeof err);
  cr_assert(m, "%s", err);
  cr_assert_eq(rt_model_set_train(m, k_train), RT_OK);
  rt_model_set_noise(m, seed, ctr);
  float *x = calloc(n * 2, sizeof(float));
  for (size_t r = 0; r < n; r++) x[r * 2] = (float)r;
  double loss;
  memset(g_seen, 0, sizeof g_seen);
  cr_assert_eq(rt_model_grad(m, n, x, NULL, 0, &loss, NULL), RT_OK);
  for (size_t r = 0; r < n; r++) cr_assert_eq(g_seen[r], 1, "row %zu", r);
  float *out = malloc(n * NW * sizeof(float));
  memcpy(out, g_noise, n * NW * sizeof(float));
  free(x);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
  return out;
}

Test(noise, deterministic_and_split_free) {
  size_t n = 301;
  float *a = noise_of(n, 1, 4, 5, 17);
  float *b = noise_of(n, 3, 4, 5, 17);
  float *c = noise_of(n, 2, 7, 5, 17);
  float *e = noise_of(n, 2, 4, 5, 18);
  float *f = noise_of(n, 2, 4, 6, 17);
  size_t bytes = n * NW * sizeof(float);
  cr_assert_eq(memcmp(a, b, bytes), 0, "thread count");
  cr_assert_eq(memcmp(a, c, bytes), 0, "tile size");
  cr_assert_neq(memcmp(a, e, bytes), 0, "counter");
  cr_assert_neq(memcmp(a, f, bytes), 0, "seed");
  /* every column of every block changes with the counter */
  for (int j = 0; j < NW; j++) {
    int differ = 0;
    for (size_t r = 0; r < n; r++) differ |= a[r * NW + j] != e[r * NW + j];
    cr_assert(differ, "column %d", j);
  }
  float *g = noise_of(10, 2, 4, 5, 17);
  cr_assert_eq(memcmp(a, g, 10 * NW * sizeof(float)), 0, "rows");
  free(a); free(b); free(c); free(e); free(f); free(g);
}

/* P(|Z| > z) for Z ~ N(0, 1) */
static double two_tail(double z) { return erfc(z / sqrt(2.0)); }

Test(noise, gauss_is_standard_normal) {
  size_t n = MAXROWS;
  float *z = noise_of(n, 2, 64, 99, 3);
  double N = 5.0 * n, s = 0, s2 = 0, s4 = 0, t2 = 0, t3 = 0, c01 = 0;
  for (size_t r = 0; r < n; r++) {
    for (int j = 0; j < 5; j++) {
      double v = z[r * NW + j];
      cr_assert(isfinite(v));
      s += v;
      s2 += v * v;
      s4 += v * v * v * v;
      t2 += fabs(v) > 2;
      t3 += fabs(v) > 3;
    }
    c01 += (double)z[r * NW] * z[r * NW + 1];
  }
  double mean = s / N, var = s2 / N - mean * mean;
  cr_assert(fabs(mean) <= 5 / sqrt(N), "mean %g", mean);
  cr_assert(fabs(var - 1) <= 5 * sqrt(2 / N), "var %g", var);
  cr_assert(fabs(s4 / N - 3) <= 5 * sqrt(96 / N), "E z^4 %g", s4 / N);
  double p2 = two_tail(2), p3 = two_tail(3);
  cr_assert(fabs(t2 / N - p2) <= 5 * sqrt(p2 * (1 - p2) / N), "P(|z|>2) %g vs %g", t2 / N, p2);
  cr_assert(fabs(t3 / N - p3) <= 5 * sqrt(p3 * (1 - p3) / N), "P(|z|>3) %g vs %g", t3 / N, p3);
  /* the cos and sin columns of one word are uncorrelated */
  cr_assert(fabs(c01 / n) <= 5 / sqrt((double)n), "corr %g", c01 / n);
  free(z);
}

/* Raw moment E[X^k] of Beta(a, b). */
static double beta_moment(double a, double b, int k) {
  double m = 1;
  for (int r = 0; r < k; r++) m *= (a + r) / (a + b + r);
  return m;
}

Test(noise, beta_moments) {
  size_t n = MAXROWS;
  float *z = noise_of(n, 3, 64, 2024, 11);
  static const double shape[6][2] = { { 1, 1 }, { 1.5, 1 }, { 0.5, 0.5 }, { 2, 5 },
                                      { 0.01, 0.02 }, { 40, 0.3 } };
  for (int k = 0; k < 6; k++) {
    double a = shape[k][0], b = shape[k][1];
    double m1 = beta_moment(a, b, 1), m2 = beta_moment(a, b, 2), m3 = beta_moment(a, b, 3),
           m4 = beta_moment(a, b, 4);
    double var = a * b / ((a + b) * (a + b) * (a + b + 1));
    cr_assert(fabs(var - (m2 - m1 * m1)) <= 1e-12);
    double mu4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 * m1 * m1 * m1;
    double N = 2.0 * n, s = 0, s2 = 0;
    for (size_t r = 0; r < n; r++)
      for (int j = 0; j < 2; j++) {
        float v = z[r * NW + 5 + 2 * k + j];
        cr_assert(v >= 0.0f && v <= 1.0f, "beta(%g, %g) row %zu: %g", a, b, r, v);
        if (k == 0) {                       /* exactly uniform on [0, 1): k / 2^24 */
          double u = (double)v * 16777216.0;
          cr_assert(v < 1.0f && u == floor(u), "uniform row %zu: %.9g", r, v);
        }
        s += v;
        s2 += (double)v * v;
      }
    double mean = s / N, svar = s2 / N - mean * mean;
    double se_m = sqrt(var / N), se_v = sqrt((mu4 - var * var) / N);
    cr_assert(fabs(mean - m1) <= 5 * se_m, "beta(%g, %g): mean %.6g vs %.6g (se %.3g)", a, b,
              mean, m1, se_m);
    cr_assert(fabs(svar - var) <= 5 * se_v + 1e-7, "beta(%g, %g): var %.6g vs %.6g (se %.3g)",
              a, b, svar, var, se_v);
  }
  /* the two columns of a block are independent draws */
  double c = 0;
  for (size_t r = 0; r < n; r++)
    c += (z[r * NW + 5 + 6] - 2.0 / 7) * (z[r * NW + 5 + 7] - 2.0 / 7);
  double var25 = 10.0 / (49 * 8);
  cr_assert(fabs(c / n) <= 5 * var25 / sqrt((double)n), "cov %g", c / n);
  free(z);
}

/* ---- cg_desc ---- */

Test(cg_desc, linear_temb_and_noise) {
  ir_arena *A = ir_arena_new();
  ir_program *p = ir_alloc(A, sizeof *p);
  p->A = A;
  p->nparams = 3;
  p->params = ir_alloc(A, 3 * sizeof *p->params);
  const char *names[3] = { "t.x", "t.weight", "t.bias" };
  int shapes[3][2] = { { R, I }, { O, I }, { O, 0 } };
  for (int i = 0; i < 3; i++) {
    p->params[i].name = names[i];
    p->params[i].dtype = IR_F32;
    p->params[i].ndim = i == 2 ? 1 : 2;
    p->params[i].shape[0] = shapes[i][0];
    p->params[i].shape[1] = shapes[i][1];
    p->params[i].init = i == 0 ? INIT_ZERO : i == 1 ? INIT_LINEAR_WEIGHT : INIT_LINEAR_BIAS;
    p->params[i].fan_in = I;
  }
  for (int e = 0; e < 2; e++) {
    ir_graph *g = ir_graph_new(A);
    ir_node *x = ir_param_node(g, p, 0), *W = ir_param_node(g, p, 1), *b = ir_param_node(g, p, 2);
    ir_node *tt = ir_temb_table(g, 1, 6, 11, 0.0625, -0.1);
    ir_node *ts = ir_temb_table(g, 0, 1, 4, 1.5, 0.25);
    ir_node *y = ir_linear(g, x, W, b), *y2 = ir_linear(g, x, W, NULL);
    cr_assert(!y->batch && y->rows == R && y->n == O);
    tt->prep = 0;
    ts->prep = 1;
    y->prep = 2;
    y2->prep = 3;
    g->nprep = 4;
    ir_output(g, x);
    if (e == 0) p->entry[IR_ENTRY_LOGPROB] = g;
    else p->train = g;
  }
  p->nnoise = 3;
  p->noise = ir_alloc(A, 3 * sizeof *p->noise);
  p->noise[0] = (ir_noise){ IR_NOISE_RADEMACHER, 2, 0, 0, 0, 0 };
  p->noise[1] = (ir_noise){ IR_NOISE_GAUSS, 3, 0, 0, 0, 0 };
  p->noise[2] = (ir_noise){ IR_NOISE_BETA, 1, 0, 0, 0.7, 1.0 / 3 };
  p->noise_width = 6;
  char err[256] = "";
  rt_desc *d = cg_desc_err(p, err, sizeof err);
  cr_assert(d, "%s", err);
  for (int e = 0; e < 2; e++) {
    const rt_entry_desc *en = e ? &d->train : &d->entry[RT_LOGPROB];
    cr_assert_eq(en->nprep, 4);
    const rt_prep *q = en->prep;
    cr_assert_eq(q[0].op, RT_PREP_TEMB);
    cr_assert_eq(q[0].nargs, 0);
    cr_assert_eq(q[0].rows, 11);
    cr_assert_eq(q[0].n, 6);
    cr_assert_eq(q[0].iargs[0], 1);
    cr_assert_eq(q[0].f, 0.0625);
    cr_assert_eq(q[0].f2, -0.1);
    cr_assert_eq(q[1].iargs[0], 0);
    cr_assert_eq(q[1].f, 1.5);
    cr_assert_eq(q[1].f2, 0.25);
    cr_assert_eq(q[2].op, RT_PREP_LINEAR);
    cr_assert_eq(q[2].nargs, 3);
    cr_assert_eq(q[2].args[0], 0);
    cr_assert_eq(q[2].args[1], 1);
    cr_assert_eq(q[2].args[2], 2);
    cr_assert_eq(q[2].rows, R);
    cr_assert_eq(q[2].n, O);
    cr_assert_eq(q[3].op, RT_PREP_LINEAR);
    cr_assert_eq(q[3].nargs, 2);
  }
  cr_assert_eq(d->nnoise, 3);
  cr_assert_eq(d->noise_width, 6);
  cr_assert_eq(d->noise[0].kind, RT_NOISE_RADEMACHER);
  cr_assert_eq(d->noise[1].kind, RT_NOISE_GAUSS);
  cr_assert_eq(d->noise[1].a, 0.0);
  cr_assert_eq(d->noise[2].kind, RT_NOISE_BETA);
  cr_assert_eq(d->noise[2].a, 0.7);
  cr_assert_eq(d->noise[2].b, 1.0 / 3);
  /* it is a valid descriptor and its text round-trips */
  d->dim = 2;
  char *text = rt_desc_format(d);
  rt_desc *d2 = parse_ok(text);
  char *text2 = rt_desc_format(d2);
  cr_assert_str_eq(text, text2);
  cr_assert_eq(d2->noise[2].b, 1.0 / 3);
  free(text);
  free(text2);
  rt_desc_free(d2);
  rt_desc_free(d);
  ir_arena_free(A);
}

Test(cg_desc, trace_coef) {
  ir_arena *A = ir_arena_new();
  ir_program *p = ir_alloc(A, sizeof *p);
  p->A = A;
  p->nparams = 6;
  p->params = ir_alloc(A, 6 * sizeof *p->params);
  const char *names[6] = { "t.w0", "t.w1", "t.u1", "t.w2", "t.s", "t.m" };
  int shapes[6][2] = { { TH0, TIN }, { TD, TH0 }, { TH1, TH0 }, { TD, TH1 }, { TH0, TK }, { TIN, TK } };
  for (int i = 0; i < 6; i++) {
    p->params[i].name = names[i];
    p->params[i].dtype = IR_F32;
    p->params[i].ndim = 2;
    p->params[i].shape[0] = shapes[i][0];
    p->params[i].shape[1] = shapes[i][1];
    p->params[i].init = i == 4 ? INIT_ZERO : INIT_LINEAR_WEIGHT;
    p->params[i].fan_in = shapes[i][1];
  }
  for (int e = 0; e < 2; e++) {
    ir_graph *g = ir_graph_new(A);
    ir_node *P[6];
    for (int i = 0; i < 6; i++) P[i] = ir_param_node(g, p, i);
    ir_node *c = ir_trace_coef(g, P[0], P[1], NULL, TD);
    ir_node *q = ir_trace_coef(g, P[0], P[2], P[3], TD);
    ir_node *lin = ir_linear(g, P[4], P[5], NULL);
    ir_node *q2 = ir_trace_coef(g, lin, P[2], P[3], TD);
    cr_assert(!c->batch && c->rows == 1 && c->n == TH0);
    cr_assert(!q->batch && q->rows == TH1 && q->n == TH0);
    c->prep = 0;
    q->prep = 1;
    lin->prep = 2;
    q2->prep = 3;
    g->nprep = 4;
    ir_output(g, P[0]);
    if (e == 0) p->entry[IR_ENTRY_LOGPROB] = g;
    else p->train = g;
  }
  char err[256] = "";
  rt_desc *d = cg_desc_err(p, err, sizeof err);
  cr_assert(d, "%s", err);
  for (int e = 0; e < 2; e++) {
    const rt_entry_desc *en = e ? &d->train : &d->entry[RT_LOGPROB];
    cr_assert_eq(en->nprep, 4);
    const rt_prep *q = en->prep;
    cr_assert_eq(q[0].op, RT_PREP_TRACE_COEF);
    cr_assert_eq(q[0].nargs, 2);
    cr_assert_eq(q[0].args[0], 0);
    cr_assert_eq(q[0].args[1], 1);
    cr_assert_eq(q[0].rows, 1);
    cr_assert_eq(q[0].n, TH0);
    cr_assert_eq(q[0].iargs[0], TD);
    cr_assert_eq(q[1].op, RT_PREP_TRACE_COEF);
    cr_assert_eq(q[1].nargs, 3);
    cr_assert_eq(q[1].args[1], 2);
    cr_assert_eq(q[1].args[2], 3);
    cr_assert_eq(q[1].rows, TH1);
    cr_assert_eq(q[1].iargs[0], TD);
    cr_assert_eq(q[2].op, RT_PREP_LINEAR);
    cr_assert_eq(q[3].op, RT_PREP_TRACE_COEF);
    cr_assert_eq(q[3].args[0], 6 + 2);
    cr_assert_eq(q[3].iargs[0], TD);
  }
  /* it is a valid descriptor, its text round-trips, and it computes Q */
  d->dim = 2;
  char *text = rt_desc_format(d);
  rt_desc *d2 = parse_ok(text);
  char *text2 = rt_desc_format(d2);
  cr_assert_str_eq(text, text2);
  pset s;
  pset_init(&s, d2, 7);
  double **v = run_forward(d2, &d2->entry[RT_LOGPROB], s.params);
  double w0[TH0 * TIN], ref[TH1 * TH0];
  for (int k = 0; k < TH0 * TIN; k++) w0[k] = s.p[0][k];
  direct_q(w0, TIN, s.p[2], s.p[3], ref);
  check_close(v[1], ref, TH1 * TH0, "Q");
  free_vals(v, 4);
  pset_free(&s);
  free(text);
  free(text2);
  rt_desc_free(d2);
  rt_desc_free(d);
  ir_arena_free(A);
}
