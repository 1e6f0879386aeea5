/* tests/test_runtime.c: descriptor text, Philox, normals, thread pool and
** the model driver with hand-written kernels. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "testutil.h"

/* A small model: dim 3, x = z * exp(log_scale) + bias (an actnorm). */
static const char *AFFINE_DESC =
  "flowc-desc 1\n"
  "name affine\n"
  "dim 3\n"
  "context 0\n"
  "tile 16\n"
  "params 3\n"
  "param flow.0.log_scale f32 1 3 0 zero 0 0 0 0\n"
  "param flow.0.bias f32 1 3 0 zero 0 0 0 0\n"
  "param flow.1.perm i64 1 3 0 perm_list 0 1 0 3 2 0 1\n"
  "entry encode scratch 3 has_ld 0 nprep 1\n"
  "prep neg 1 3 0 1 0\n"
  "entry encode_ld scratch 3 has_ld 1 nprep 3\n"
  "prep neg 1 3 0 1 0\n"
  "prep sum 1 1 0 1 0\n"
  "prep neg 1 1 0 1 4\n"
  "entry decode scratch 3 has_ld 0 nprep 1\n"
  "prep exp 1 3 0 1 0\n"
  "entry decode_ld scratch 3 has_ld 1 nprep 2\n"
  "prep exp 1 3 0 1 0\n"
  "prep sum 1 1 0 1 0\n"
  "entry logprob scratch 3 has_ld 0 nprep 2\n"
  "prep neg 1 3 0 1 0\n"
  "prep sum 1 1 0 1 0\n"
  "end\n";

#define P 3
/* args: 0 in, 1 ctx, 2 out0, 3 out1, 4..6 params, 7.. prep, then scratch */
static int32_t k_encode(void *const *a, int64_t n) {
  const float *x = a[0], *ls_neg = a[7 + 0 - 0], *b = a[5];
  float *z = a[2], *s = a[8];
  for (int64_t r = 0; r < n; r++)
    for (int j = 0; j < 3; j++) {
      s[r * 3 + j] = x[r * 3 + j] - b[j];
      z[r * 3 + j] = s[r * 3 + j] * expf(ls_neg[j]);
    }
  return 0;
}
static int32_t k_encode_ld(void *const *a, int64_t n) {
  const float *x = a[0], *ls_neg = a[7], *neg_sum = a[9], *b = a[5];
  float *z = a[2], *ld = a[3], *s = a[10];
  for (int64_t r = 0; r < n; r++) {
    for (int j = 0; j < 3; j++) {
      s[r * 3 + j] = x[r * 3 + j] - b[j];
      z[r * 3 + j] = s[r * 3 + j] * expf(ls_neg[j]);
    }
    ld[r] = neg_sum[0];
  }
  return 0;
}
static int32_t k_decode(void *const *a, int64_t n) {
  const float *z = a[0], *sc = a[7], *b = a[5];
  float *x = a[2], *s = a[8];
  for (int64_t r = 0; r < n; r++)
    for (int j = 0; j < 3; j++) {
      s[r * 3 + j] = z[r * 3 + j] * sc[j];
      x[r * 3 + j] = s[r * 3 + j] + b[j];
    }
  return 0;
}
static int32_t k_decode_ld(void *const *a, int64_t n) {
  const float *z = a[0], *sc = a[7], *sum = a[8], *b = a[5];
  float *x = a[2], *ld = a[3], *s = a[9];
  for (int64_t r = 0; r < n; r++) {
    for (int j = 0; j < 3; j++) {
      s[r * 3 + j] = z[r * 3 + j] * sc[j];
      x[r * 3 + j] = s[r * 3 + j] + b[j];
    }
    ld[r] = sum[0];
  }
  return 0;
}
static int32_t k_logprob(void *const *a, int64_t n) {
  const float *x = a[0], *ls_neg = a[7], *sum = a[8], *b = a[5];
  float *lp = a[2];
  for (int64_t r = 0; r < n; r++) {
    double q = 0;
    for (int j = 0; j < 3; j++) {
      double z = (x[r * 3 + j] - b[j]) * exp(ls_neg[j]);
      q += z * z;
    }
    lp[r] = (float)(-0.5 * q - 1.5 * log(2 * M_PI) - sum[0]);
  }
  return 0;
}
static const rt_kernel AFFINE_K[RT_NENTRY] = { k_encode, k_encode_ld, k_decode,
                                               k_decode_ld, k_logprob };

static rt_desc *affine_desc(void) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(AFFINE_DESC, err, sizeof err);
  cr_assert(d, "parse: %s", err);
  return d;
}

/* weights: log_scale = log 2 (x = 2z + 1), bias = 1 */
static void affine_weights(const rt_desc *d, rt_weights *w) {
  char err[256];
  cr_assert_eq(rt_weights_init(d, 1, w, err, sizeof err), 0, "%s", err);
  for (int j = 0; j < 3; j++) {
    ((float *)w->data[0])[j] = logf(2.0f);
    ((float *)w->data[1])[j] = 1.0f;
  }
}

/* ---- descriptor text ---- */

static void assert_desc_eq(const rt_desc *a, const rt_desc *b) {
  cr_assert_str_eq(a->name, b->name);
  cr_assert_eq(a->dim, b->dim);
  cr_assert_eq(a->context, b->context);
  cr_assert_eq(a->tile, b->tile);
  cr_assert_eq(a->nparams, b->nparams);
  for (int i = 0; i < a->nparams; i++) {
    const rt_param_desc *p = &a->params[i], *q = &b->params[i];
    cr_assert_str_eq(p->name, q->name);
    cr_assert_eq(p->dtype, q->dtype);
    cr_assert_eq(p->ndim, q->ndim);
    cr_assert_eq(p->shape[0], q->shape[0]);
    cr_assert_eq(p->shape[1], q->shape[1]);
    cr_assert_eq(p->init, q->init);
    cr_assert_eq(p->fan_in, q->fan_in);
    cr_assert_eq(p->layer, q->layer);
    cr_assert_eq(p->seed, q->seed);
    cr_assert_eq(!!p->values, !!q->values);
    for (int k = 0; p->values && k < p->shape[0]; k++) cr_assert_eq(p->values[k], q->values[k]);
  }
  for (int e = 0; e < RT_NENTRY; e++) {
    const rt_entry_desc *x = &a->entry[e], *y = &b->entry[e];
    cr_assert_eq(x->nprep, y->nprep);
    cr_assert_eq(x->scratch, y->scratch);
    cr_assert_eq(x->has_ld, y->has_ld);
    for (int q = 0; q < x->nprep; q++) {
      cr_assert_eq(x->prep[q].op, y->prep[q].op);
      cr_assert_eq(x->prep[q].nargs, y->prep[q].nargs);
      cr_assert_eq(x->prep[q].rows, y->prep[q].rows);
      cr_assert_eq(x->prep[q].n, y->prep[q].n);
      cr_assert_eq(memcmp(&x->prep[q].f, &y->prep[q].f, sizeof(double)), 0);
      for (int k = 0; k < x->prep[q].nargs; k++)
        cr_assert_eq(x->prep[q].args[k], y->prep[q].args[k]);
    }
  }
}

/* A descriptor built in memory, as the compiler does, with every init. */
static rt_desc *built_desc(void) {
  rt_desc *d = calloc(1, sizeof *d);
  d->name = strdup("big_one");
  d->dim = 4;
  d->context = 2;
  d->tile = 64;
  d->nparams = 10;
  d->params = calloc(10, sizeof *d->params);
  static const struct { const char *n; rt_dtype t; int nd, s0, s1; rt_init in; } ps[10] = {
    { "flow.0.net.0.weight", RT_F32, 2, 16, 4, RT_INIT_LINEAR_WEIGHT },
    { "flow.0.net.0.bias", RT_F32, 1, 16, 0, RT_INIT_LINEAR_BIAS },
    { "flow.0.net.1.weight", RT_F32, 2, 4, 16, RT_INIT_ZERO },
    { "flow.1.perm", RT_I64, 1, 4, 0, RT_INIT_PERM_RANDOM },
    { "flow.2.perm", RT_I64, 1, 4, 0, RT_INIT_PERM_LIST },
    { "flow.3.lower", RT_F32, 2, 4, 4, RT_INIT_LU_LOWER },
    { "flow.3.upper", RT_F32, 2, 4, 4, RT_INIT_LU_UPPER },
    { "flow.3.log_diag", RT_F32, 1, 4, 0, RT_INIT_LU_LOG_DIAG },
    { "flow.3.sign", RT_F32, 1, 4, 0, RT_INIT_LU_SIGN },
    { "flow.3.perm", RT_I64, 1, 4, 0, RT_INIT_LU_PERM },
  };
  for (int i = 0; i < 10; i++) {
    rt_param_desc *p = &d->params[i];
    p->name = strdup(ps[i].n);
    p->dtype = ps[i].t;
    p->ndim = ps[i].nd;
    p->shape[0] = ps[i].s0;
    p->shape[1] = ps[i].s1;
    p->init = ps[i].in;
    p->fan_in = i < 3 ? 6 : 0;
    p->layer = ps[i].n[5] - '0';
    p->seed = i == 3 ? 18446744073709551615ull : 0;
  }
  d->params[4].values = malloc(4 * sizeof(int));
  for (int k = 0; k < 4; k++) d->params[4].values[k] = 3 - k;
  for (int e = 0; e < RT_NENTRY; e++) {
    d->entry[e].scratch = 100 + e;
    d->entry[e].has_ld = e == RT_ENCODE_LD || e == RT_DECODE_LD;
  }
  rt_entry_desc *en = &d->entry[RT_DECODE];
  en->nprep = 5;
  en->prep = calloc(5, sizeof(rt_prep));
  en->prep[0] = (rt_prep){ RT_PREP_LU_W, 5, { 5, 6, 7, 8, 9 }, 4, 4, 0, { 0 }, 0 };
  en->prep[1] = (rt_prep){ RT_PREP_LU_WINV, 5, { 5, 6, 7, 8, 9 }, 4, 4, 0, { 0 }, 0 };
  en->prep[2] = (rt_prep){ RT_PREP_CONST, 0, { 0 }, 1, 1, 0.1, { 0 }, 0 };
  en->prep[3] = (rt_prep){ RT_PREP_MUL, 2, { 11, 12 }, 4, 4, 0, { 0 }, 0 };
  en->prep[4] = (rt_prep){ RT_PREP_CONST, 0, { 0 }, 1, 1, -1.0 / 3.0, { 0 }, 0 };
  return d;
}

Test(desc, round_trip_text) {
  rt_desc *d = affine_desc();
  char *t = rt_desc_format(d);
  cr_assert_str_eq(t, AFFINE_DESC);
  rt_desc *e = rt_desc_parse(t, NULL, 0);
  cr_assert(e);
  assert_desc_eq(d, e);
  free(t);
  rt_desc_free(d);
  rt_desc_free(e);
}

Test(desc, round_trip_built) {
  rt_desc *d = built_desc();
  char err[256] = "";
  char *t = rt_desc_format(d);
  cr_assert(t);
  rt_desc *e = rt_desc_parse(t, err, sizeof err);
  cr_assert(e, "%s\n%s", err, t);
  assert_desc_eq(d, e);
  char *t2 = rt_desc_format(e);
  cr_assert_str_eq(t, t2);
  cr_assert(strstr(t, "18446744073709551615"));
  cr_assert(strstr(t, "-0.33333333333333331"));
  free(t);
  free(t2);
  rt_desc_free(d);
  rt_desc_free(e);
}

static void expect_bad(const char *text, const char *needle) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(text, err, sizeof err);
  cr_assert_null(d, "accepted: %s", text);
  cr_assert(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
}

static char *replace(const char *s, const char *from, const char *to) {
  const char *p = strstr(s, from);
  cr_assert(p, "no '%s'", from);
  char *r = malloc(strlen(s) + strlen(to) + 1);
  memcpy(r, s, (size_t)(p - s));
  strcpy(r + (p - s), to);
  strcat(r, p + strlen(from));
  return r;
}

Test(desc, refusals) {
  expect_bad("", "empty");
  expect_bad("hello", "flowc-desc");
  expect_bad("flowc-desc 2\n", "version");
  static const char *cases[][3] = {
    { "dim 3", "dim 0", "out of range" },
    { "dim 3", "dim x", "bad integer" },
    { "dim 3", "dim 99999999999999999999", "bad integer" },
    { "params 3", "params 4", "expected 'param'" },
    { "params 3", "params 2", "expected 'entry'" },
    { "params 3", "params 2000000000", "out of range" },
    { "f32 1 3 0 zero", "f16 1 3 0 zero", "dtype" },
    { "f32 1 3 0 zero", "f32 3 3 0 zero", "out of range" },
    { "f32 1 3 0 zero", "f32 1 3 0 ones", "unknown init" },
    { "perm_list 0 1 0 3 2 0 1", "perm_list 0 1 0 3 2 0 0", "permutation" },
    { "perm_list 0 1 0 3 2 0 1", "perm_list 0 1 0 3 2 0", "missing" },
    { "perm_list 0 1 0 3 2 0 1", "perm_list 0 1 0 2 2 0", "wrong number" },
    { "perm_list 0 1 0 3 2 0 1", "perm_list 0 1 -1 3 2 0 1", "bad seed" },
    { "prep neg 1 3 0 1 0\nprep sum", "prep neg 1 3 0 1 5\nprep sum", "operand" },
    { "prep neg 1 1 0 1 4", "prep neg 1 1 0 1 2", "shapes or types" },
    { "prep exp 1 3 0 1 0\nentry decode_ld", "prep exp 1 4 0 1 0\nentry decode_ld", "shapes" },
    { "prep sum 1 1 0 1 0\nend", "prep sum 1 1 0 2 0 1\nend", "takes 1 operands" },
    { "prep sum 1 1 0 1 0\nend", "prep sum 1 1 zz 1 0\nend", "bad constant" },
    { "prep sum 1 1 0 1 0\nend", "prep nope 1 1 0 1 0\nend", "unknown prep op" },
    { "entry logprob", "entry decode", "expected entry logprob" },
    { "has_ld 1 nprep 2", "has_ld 2 nprep 2", "out of range" },
    { "end\n", "end\nmore\n", "after 'end'" },
    { "end\n", "", "text ends" },
    { "name affine", "name", "missing model name" },
    { "tile 16", "tile 16 17", "extra field" },
    { "flow.0.bias", "flow.0.log_scale", "appears twice" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *t = replace(AFFINE_DESC, cases[i][0], cases[i][1]);
    expect_bad(t, cases[i][2]);
    free(t);
  }
  /* every prefix of a good text is refused without a crash */
  size_t n = strlen(AFFINE_DESC);
  for (size_t k = 0; k + 1 < n; k++) {
    char *t = strndup(AFFINE_DESC, k);
    rt_desc *d = rt_desc_parse(t, NULL, 0);
    if (d) {                               /* only a prefix ending in "end" */
      cr_assert_geq(k, n - 2);
      rt_desc_free(d);
    }
    free(t);
  }
  cr_assert_null(rt_desc_parse(NULL, NULL, 0));
}

/* ---- Philox and normals ---- */

Test(rng, philox_known_answers) {
  /* Random123 kat_vectors, philox4x32_10 */
  uint32_t o[4];
  rt_philox(0, 0, 0, o);
  cr_assert_eq(o[0], 0x6627e8d5u); cr_assert_eq(o[1], 0xe169c58du);
  cr_assert_eq(o[2], 0xbc57ac4cu); cr_assert_eq(o[3], 0x9b00dbd8u);
  rt_philox(~0ull, ~0ull, ~0ull, o);
  cr_assert_eq(o[0], 0x408f276du); cr_assert_eq(o[1], 0x41c83b0eu);
  cr_assert_eq(o[2], 0xa20bc7c6u); cr_assert_eq(o[3], 0x6d5451fdu);
  /* ctr = 243f6a88 85a308d3 13198a2e 03707344, key = a4093822 299f31d0 */
  rt_philox(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull, o);
  cr_assert_eq(o[0], 0xd16cfe09u); cr_assert_eq(o[1], 0x94fdccebu);
  cr_assert_eq(o[2], 0x5001e420u); cr_assert_eq(o[3], 0x24126ea1u);
}

Test(rng, uniform_open_interval) {
  double s = 0;
  for (uint64_t i = 0; i < 100000; i++) {
    float u = rt_uniform01(7, 3, i);
    cr_assert(u > 0.0f && u < 1.0f);
    s += u;
  }
  cr_assert_float_eq(s / 100000, 0.5, 0.005);
}

Test(rng, normals_moments_and_split) {
  enum { R = 20000, D = 5 };              /* 1e5 values, odd width */
  float *a = malloc(sizeof(float) * R * D), *b = malloc(sizeof(float) * R * D);
  rt_normal_rows(42, 0, 0, R, D, a);
  double m = 0, v = 0, m4 = 0;
  for (long i = 0; i < R * D; i++) {
    cr_assert(isfinite(a[i]));
    m += a[i];
  }
  m /= R * D;
  for (long i = 0; i < R * D; i++) {
    v += (a[i] - m) * (a[i] - m);
    m4 += pow(a[i] - m, 4);
  }
  v /= R * D;
  m4 /= R * D;
  cr_assert_float_eq(m, 0.0, 0.015);
  cr_assert_float_eq(v, 1.0, 0.02);
  cr_assert_float_eq(m4, 3.0, 0.1);
  /* rows computed in pieces agree exactly */
  rt_normal_rows(42, 0, 0, 777, D, b);
  rt_normal_rows(42, 0, 777, R - 777, D, b + 777 * D);
  cr_assert_eq(memcmp(a, b, sizeof(float) * R * D), 0);
  /* another seed or stream differs; a wider row keeps its first columns' pairs */
  rt_normal_rows(43, 0, 0, R, D, b);
  cr_assert_neq(memcmp(a, b, sizeof(float) * D), 0);
  rt_normal_rows(42, 1, 0, R, D, b);
  cr_assert_neq(memcmp(a, b, sizeof(float) * D), 0);
  float w[6];
  rt_normal_rows(42, 0, 5, 1, 6, w);
  cr_assert_eq(memcmp(w, a + 5 * D, 4 * sizeof(float)), 0);
  free(a);
  free(b);
}

/* ---- the model driver ---- */

Test(model, affine_all_entries) {
  rt_desc *d = affine_desc();
  rt_weights w;
  affine_weights(d, &w);
  char err[256] = "";
  rt_model *m = rt_model_open(d, AFFINE_K, &w, 3, err, sizeof err);
  cr_assert(m, "%s", err);
  rt_weights_free(&w);
  rt_desc_free(d);                        /* the model owns its copy */
  enum { N = 101 };
  float z[N * 3], x[N * 3], z2[N * 3], ld[N], ld2[N], lp[N];
  for (int i = 0; i < N * 3; i++) z[i] = (float)(i % 17) * 0.25f - 2.0f;
  cr_assert_eq(rt_model_decode(m, N, z, NULL, 0, x, ld), RT_OK);
  for (int i = 0; i < N * 3; i++) cr_assert_float_eq(x[i], 2 * z[i] + 1, 1e-5);
  for (int r = 0; r < N; r++) cr_assert_float_eq(ld[r], 3 * log(2.0), 1e-5);
  cr_assert_eq(rt_model_encode(m, N, x, NULL, 0, z2, ld2), RT_OK);
  for (int i = 0; i < N * 3; i++) cr_assert_float_eq(z2[i], z[i], 1e-5);
  for (int r = 0; r < N; r++) cr_assert_float_eq(ld2[r], -3 * log(2.0), 1e-5);
  memset(z2, 0, sizeof z2);
  cr_assert_eq(rt_model_encode(m, N, x, NULL, 0, z2, NULL), RT_OK);
  cr_assert_float_eq(z2[7], z[7], 1e-5);
  cr_assert_eq(rt_model_log_prob(m, N, x, NULL, 0, lp), RT_OK);
  for (int r = 0; r < N; r++) {
    double q = 0;
    for (int j = 0; j < 3; j++) q += (double)z[r * 3 + j] * z[r * 3 + j];
    cr_assert_float_eq(lp[r], -0.5 * q - 1.5 * log(2 * M_PI) - 3 * log(2.0), 1e-4);
  }
  /* prep results are visible */
  const float *const *pr = rt_model_prep(m, RT_DECODE_LD);
  cr_assert_float_eq(pr[0][1], 2.0, 1e-6);
  cr_assert_float_eq(pr[1][0], 3 * log(2.0), 1e-6);
  cr_assert_null(rt_model_prep(m, 9));
  rt_model_close(m);
}

Test(model, sample_independent_of_threads) {
  rt_desc *d = affine_desc();
  rt_weights w;
  affine_weights(d, &w);
  enum { N = 1000 };
  float *ref = NULL, *reflp = NULL;
  int threads[] = { 1, 2, 4, 7, 0 };
  for (int t = 0; t < 5; t++) {
    char err[256];
    rt_model *m = rt_model_open(d, AFFINE_K, &w, threads[t], err, sizeof err);
    cr_assert(m, "%s", err);
    float *x = malloc(sizeof(float) * N * 3), *lp = malloc(sizeof(float) * N);
    cr_assert_eq(rt_model_sample(m, N, 1234, NULL, 0, x, lp), RT_OK);
    if (!ref) {
      ref = x;
      reflp = lp;
      /* x = 2 z + 1 with z the seed's normals; lp = log p(x) */
      float z[6];
      rt_normal_rows(1234, 0, 500, 2, 3, z);
      for (int j = 0; j < 6; j++) cr_assert_float_eq(x[500 * 3 + j], 2 * z[j] + 1, 1e-5);
      float lp2[N];
      cr_assert_eq(rt_model_log_prob(m, N, x, NULL, 0, lp2), RT_OK);
      cr_assert_lt(tu_max_rel_err(lp, lp2, N), 1e-5);
      float x2[N * 3];
      cr_assert_eq(rt_model_sample(m, N, 1234, NULL, 0, x2, NULL), RT_OK);
      cr_assert_eq(memcmp(x, x2, sizeof x2), 0);
      cr_assert_eq(rt_model_sample(m, N, 1235, NULL, 0, x2, NULL), RT_OK);
      cr_assert_neq(memcmp(x, x2, sizeof x2), 0);
    } else {
      cr_assert_eq(memcmp(x, ref, sizeof(float) * N * 3), 0, "threads %d", threads[t]);
      cr_assert_eq(memcmp(lp, reflp, sizeof(float) * N), 0);
      free(x);
      free(lp);
    }
    rt_model_close(m);
  }
  free(ref);
  free(reflp);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(model, argument_checks) {
  rt_desc *d = affine_desc();
  rt_weights w;
  affine_weights(d, &w);
  char err[256];
  rt_model *m = rt_model_open(d, AFFINE_K, &w, 2, err, sizeof err);
  cr_assert(m);
  float x[6] = { 0 }, y[6], c[2] = { 0 };
  cr_assert_eq(rt_model_encode(NULL, 2, x, NULL, 0, y, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_encode(m, 2, NULL, NULL, 0, y, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_encode(m, 2, x, NULL, 0, NULL, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_encode(m, 2, x, c, 1, y, NULL), RT_EINVAL);   /* no context */
  cr_assert_eq(rt_model_decode(m, 2, NULL, NULL, 0, y, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_log_prob(m, 2, x, NULL, 0, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_sample(m, 2, 0, NULL, 0, NULL, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_sample(m, 0, 0, NULL, 0, NULL, NULL), RT_OK);
  rt_model_close(m);
  rt_model_close(NULL);
  /* weights that do not fit: wrong count, a broken permutation */
  rt_weights bad = w;
  bad.n = 2;
  cr_assert_null(rt_model_open(d, AFFINE_K, &bad, 1, err, sizeof err));
  ((int64_t *)w.data[2])[0] = 7;
  cr_assert_null(rt_model_open(d, AFFINE_K, &w, 1, err, sizeof err));
  cr_assert(strstr(err, "flow.1.perm"), "%s", err);
  cr_assert_null(rt_model_open(d, NULL, &w, 1, err, sizeof err));
  /* a missing kernel is refused at call time */
  rt_kernel ks[RT_NENTRY] = { k_encode, NULL, k_decode, k_decode_ld, k_logprob };
  ((int64_t *)w.data[2])[0] = 2;
  m = rt_model_open(d, ks, &w, 1, err, sizeof err);
  cr_assert(m, "%s", err);
  cr_assert_eq(rt_model_encode(m, 2, x, NULL, 0, y, y), RT_EINVAL);
  cr_assert_eq(rt_model_encode(m, 2, x, NULL, 0, y, NULL), RT_OK);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
}

/* dim 2, context 1: x = z + c[0], decode only */
static const char *CTX_DESC =
  "flowc-desc 1\nname ctx\ndim 2\ncontext 1\ntile 4\nparams 0\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 0\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 0\n"
  "end\n";

static int32_t k_ctx_decode(void *const *a, int64_t n) {
  const float *z = a[0], *c = a[1];
  float *x = a[2];
  for (int64_t r = 0; r < n; r++)
    for (int j = 0; j < 2; j++) x[r * 2 + j] = z[r * 2 + j] + c[r];
  return 0;
}

Test(model, context_broadcast) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(CTX_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  rt_weights w;
  cr_assert_eq(rt_weights_init(d, 0, &w, err, sizeof err), 0);
  rt_kernel ks[RT_NENTRY] = { 0, 0, k_ctx_decode, 0, 0 };
  rt_model *m = rt_model_open(d, ks, &w, 3, err, sizeof err);
  cr_assert(m, "%s", err);
  enum { N = 11 };
  float z[N * 2], x1[N * 2], x2[N * 2], c1 = 5, cn[N], x3[N * 2];
  for (int i = 0; i < N * 2; i++) z[i] = (float)i;
  for (int r = 0; r < N; r++) cn[r] = r == 3 ? -1 : 5;
  cr_assert_eq(rt_model_decode(m, N, z, NULL, 0, x1, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_decode(m, N, z, &c1, 2, x1, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_decode(m, N, z, &c1, 1, x1, NULL), RT_OK);
  cr_assert_eq(rt_model_decode(m, N, z, cn, N, x2, NULL), RT_OK);
  for (int i = 0; i < N * 2; i++) {
    cr_assert_float_eq(x1[i], z[i] + 5, 1e-6);
    cr_assert_float_eq(x2[i], z[i] + (i / 2 == 3 ? -1 : 5), 1e-6);
  }
  /* sampling with context works and needs it */
  cr_assert_eq(rt_model_sample(m, N, 3, NULL, 0, x3, NULL), RT_EINVAL);
  cr_assert_eq(rt_model_sample(m, N, 3, &c1, 1, x3, NULL), RT_OK);
  float zz[N * 2];
  rt_normal_rows(3, 0, 0, N, 2, zz);
  for (int i = 0; i < N * 2; i++) cr_assert_float_eq(x3[i], zz[i] + 5, 1e-6);
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
}

/* ---- rt_so_open ---- */

Test(so, open_paths) {
  rt_desc *d = affine_desc();
  rt_weights w;
  affine_weights(d, &w);
  char path[256], err[256] = "";
  snprintf(path, sizeof path, "%s/so.safetensors", tu_tmpdir());
  cr_assert_eq(rt_weights_save(d, &w, path, err, sizeof err), 0, "%s", err);
  size_t len;
  char *buf = tu_read_file(path, &len);
  rt_model *m = rt_so_open(AFFINE_DESC, AFFINE_K, buf, len, NULL, err, sizeof err);
  cr_assert(m, "%s", err);
  float z[3] = { 1, 2, 3 }, x[3];
  cr_assert_eq(rt_model_decode(m, 1, z, NULL, 0, x, NULL), RT_OK);
  cr_assert_float_eq(x[2], 7.0, 1e-5);
  rt_model_close(m);
  m = rt_so_open(AFFINE_DESC, AFFINE_K, NULL, 0, path, err, sizeof err);
  cr_assert(m, "%s", err);
  rt_model_close(m);
  cr_assert_null(rt_so_open(AFFINE_DESC, AFFINE_K, NULL, 0, NULL, err, sizeof err));
  cr_assert(strstr(err, "no weights: pass a path"), "%s", err);
  cr_assert_null(rt_so_open(AFFINE_DESC, AFFINE_K, buf, len, "/nonexistent/w.safetensors",
                            err, sizeof err));
  cr_assert(strstr(err, "/nonexistent/w.safetensors"), "%s", err);
  cr_assert_null(rt_so_open("garbage", AFFINE_K, buf, len, NULL, err, sizeof err));
  cr_assert(strstr(err, "descriptor"), "%s", err);
  cr_assert_null(rt_so_open(AFFINE_DESC, AFFINE_K, buf, 5, NULL, err, sizeof err));
  cr_assert(strstr(err, "built-in weights"), "%s", err);
  free(buf);
  rt_weights_free(&w);
  rt_desc_free(d);
}
