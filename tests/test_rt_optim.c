/* tests/test_rt_optim.c: Adam / AdamW steps against hand computation,
** clipping, schedules, and training checkpoints. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt.h"
#include "testutil.h"

static const char *OPT_DESC =
  "flowc-desc 1\n"
  "name opt\n"
  "dim 2\n"
  "context 0\n"
  "tile 4\n"
  "params 3\n"
  "param flow.0.a f32 1 3 0 zero 0 0 0 0\n"
  "param flow.1.sign f32 1 2 0 lu_sign 0 1 0 0\n"
  "param flow.1.perm i64 1 2 0 perm_list 0 1 0 2 1 0\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 0\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 0\n"
  "end\n";

static rt_desc *opt_desc(void) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(OPT_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  return d;
}

static void opt_weights(const rt_desc *d, rt_weights *w) {
  char err[256];
  cr_assert_eq(rt_weights_init(d, 3, w, err, sizeof err), 0, "%s", err);
  float *a = w->data[0], *s = w->data[1];
  a[0] = 1.0f; a[1] = -2.0f; a[2] = 0.5f;
  s[0] = 1.0f; s[1] = -1.0f;
}

static rt_optim_cfg adam_cfg(double lr) {
  rt_optim_cfg c = { lr, 0.9, 0.999, 1e-8, 0, 0, 0, RT_SCHED_CONSTANT, 0, 0 };
  return c;
}

/* torch.optim.Adam / AdamW, one element, in double */
static void ref_adam(double *p, double g, double *m, double *v, long t, const rt_optim_cfg *c,
                     double lr) {
  if (c->adamw) *p *= 1 - lr * c->weight_decay;
  else g += c->weight_decay * *p;
  *m = c->beta1 * *m + (1 - c->beta1) * g;
  *v = c->beta2 * *v + (1 - c->beta2) * g * g;
  double bc1 = 1 - pow(c->beta1, (double)t), bc2 = 1 - pow(c->beta2, (double)t);
  *p -= lr / bc1 * *m / (sqrt(*v) / sqrt(bc2) + c->eps);
}

static void run_two_steps(int adamw, double wd) {
  rt_desc *d = opt_desc();
  rt_weights w;
  opt_weights(d, &w);
  rt_optim_cfg c = adam_cfg(0.01);
  c.adamw = adamw;
  c.weight_decay = wd;
  rt_optim *o = rt_optim_new(d, &c);
  cr_assert(o);
  cr_assert_null(rt_optim_moment(o, 1, 0), "sign is not trained");
  cr_assert_null(rt_optim_moment(o, 2, 0), "perm is not trained");
  cr_assert_not_null(rt_optim_moment(o, 0, 1));
  double p[3] = { 1, -2, 0.5 }, m[3] = { 0 }, v[3] = { 0 };
  float g1[3] = { 0.1f, -0.3f, 0.0f }, g2[3] = { -0.05f, 0.2f, 1e-4f }, gs[2] = { 5, 5 };
  float *const grads1[3] = { g1, gs, NULL }, *const grads2[3] = { g2, gs, NULL };
  for (int t = 1; t <= 2; t++) {
    const float *g = t == 1 ? g1 : g2;
    double norm;
    cr_assert_eq(rt_optim_step(o, &w, t == 1 ? grads1 : grads2, &norm), RT_OK);
    double en = sqrt((double)g[0] * g[0] + (double)g[1] * g[1] + (double)g[2] * g[2]);
    cr_assert(fabs(norm - en) < 1e-12, "norm %g, expected %g (sign excluded)", norm, en);
    cr_assert_eq(rt_optim_steps(o), t);
    for (int k = 0; k < 3; k++) {
      ref_adam(&p[k], g[k], &m[k], &v[k], t, &c, 0.01);
      float got = ((float *)w.data[0])[k];
      cr_assert(fabs(got - p[k]) <= 2e-7 * fmax(1, fabs(p[k])),
                "adamw %d wd %g step %d elem %d: %.9g, expected %.9g", adamw, wd, t, k, got, p[k]);
      cr_assert(fabs(rt_optim_moment(o, 0, 0)[k] - m[k]) <= 1e-7 * fabs(m[k]) + 1e-12);
      cr_assert(fabs(rt_optim_moment(o, 0, 1)[k] - v[k]) <= 1e-7 * fabs(v[k]) + 1e-15);
    }
    cr_assert_eq(((float *)w.data[1])[0], 1.0f);
    cr_assert_eq(((float *)w.data[1])[1], -1.0f);
  }
  /* step 1 moves every element with a gradient by about lr: Adam's hallmark */
  rt_optim_free(o);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(optim, adam_two_steps) { run_two_steps(0, 0); }
Test(optim, adam_l2_weight_decay) { run_two_steps(0, 0.1); }
Test(optim, adamw_two_steps) { run_two_steps(1, 0.1); }

Test(optim, first_step_is_lr_sized) {
  rt_desc *d = opt_desc();
  rt_weights w;
  opt_weights(d, &w);
  rt_optim_cfg c = adam_cfg(0.001);
  rt_optim *o = rt_optim_new(d, &c);
  float g[3] = { 3.0f, -1e-3f, 0 };
  float *const grads[3] = { g, NULL, NULL };
  cr_assert_eq(rt_optim_step(o, &w, grads, NULL), RT_OK);
  float *a = w.data[0];
  cr_assert_float_eq(a[0], 1.0f - 0.001f, 1e-7);
  cr_assert_float_eq(a[1], -2.0f + 0.001f * (1e-3f / (1e-3f + 1e-8f)), 1e-7);
  cr_assert_eq(a[2], 0.5f);
  rt_optim_free(o);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(optim, clipping_and_nan) {
  rt_desc *d = opt_desc();
  rt_weights w;
  opt_weights(d, &w);
  rt_optim_cfg c = adam_cfg(0.01);
  c.clip = 0.1;
  rt_optim *o = rt_optim_new(d, &c);
  float g[3] = { 0.1f, -0.3f, 0.0f };
  float *const grads[3] = { g, NULL, NULL };
  double norm, en = sqrt(0.1 * 0.1 + 0.3 * 0.3);
  cr_assert_eq(rt_optim_step(o, &w, grads, &norm), RT_OK);
  cr_assert(fabs(norm - en) < 1e-7, "the norm before clipping");
  double coef = 0.1 / (en + 1e-6);
  cr_assert_float_eq(g[0], 0.1 * coef, 1e-8);
  cr_assert_float_eq(g[1], -0.3 * coef, 1e-8);
  double clipped = sqrt((double)g[0] * g[0] + (double)g[1] * g[1]);
  cr_assert(fabs(clipped - 0.1) < 1e-6);
  /* below the threshold nothing is scaled */
  float h[3] = { 0.01f, 0.02f, 0 };
  float *const hg[3] = { h, NULL, NULL };
  cr_assert_eq(rt_optim_step(o, &w, hg, &norm), RT_OK);
  cr_assert_eq(h[0], 0.01f);
  /* a NaN or infinite gradient changes nothing */
  float before[3], mb[3];
  memcpy(before, w.data[0], sizeof before);
  memcpy(mb, rt_optim_moment(o, 0, 0), sizeof mb);
  float bad[3] = { 0.1f, NAN, 0 };
  float *const bg[3] = { bad, NULL, NULL };
  cr_assert_eq(rt_optim_step(o, &w, bg, &norm), RT_ENUMERIC);
  cr_assert(isnan(norm));
  bad[1] = INFINITY;
  cr_assert_eq(rt_optim_step(o, &w, bg, &norm), RT_ENUMERIC);
  cr_assert_eq(memcmp(before, w.data[0], sizeof before), 0);
  cr_assert_eq(memcmp(mb, rt_optim_moment(o, 0, 0), sizeof mb), 0);
  cr_assert_eq(rt_optim_steps(o), 2);
  cr_assert_eq(bad[0], 0.1f, "not clipped either");
  rt_optim_free(o);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(optim, schedules) {
  rt_desc *d = opt_desc();
  rt_optim_cfg c = adam_cfg(0.1);
  c.total_steps = 100;
  rt_optim *o = rt_optim_new(d, &c);
  for (long s = 0; s < 200; s += 37) cr_assert_eq(rt_optim_lr(o, s), 0.1);
  rt_optim_free(o);
  c.warmup = 10;                           /* constant with warm-up */
  o = rt_optim_new(d, &c);
  cr_assert_float_eq(rt_optim_lr(o, 0), 0.01, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 4), 0.05, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 9), 0.1, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 50), 0.1, 1e-15);
  rt_optim_free(o);
  c.schedule = RT_SCHED_COSINE;
  c.warmup = 0;
  o = rt_optim_new(d, &c);
  cr_assert_float_eq(rt_optim_lr(o, 0), 0.1, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 25), 0.05 * (1 + cos(M_PI / 4)), 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 50), 0.05, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 100), 0.0, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 150), 0.0, 1e-15);
  rt_optim_free(o);
  c.warmup = 10;
  o = rt_optim_new(d, &c);
  cr_assert_float_eq(rt_optim_lr(o, 0), 0.01, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 10), 0.1, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 55), 0.05, 1e-15);
  rt_optim_free(o);
  /* OneCycleLR(max_lr 0.1, total_steps 100): phase ends at 29 and 99 */
  c.schedule = RT_SCHED_ONECYCLE;
  c.warmup = 0;
  o = rt_optim_new(d, &c);
  double lo = 0.1 / 25, fin = lo / 1e4;
  cr_assert_float_eq(rt_optim_lr(o, 0), lo, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 29), 0.1, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 64), (0.1 + fin) / 2, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 99), fin, 1e-15);
  cr_assert_float_eq(rt_optim_lr(o, 14),
                     0.1 + (lo - 0.1) / 2 * (cos(M_PI * 14 / 29.0) + 1), 1e-15);
  rt_optim_free(o);
  c.warmup = 50;                           /* pct_start = 0.5 */
  o = rt_optim_new(d, &c);
  cr_assert_float_eq(rt_optim_lr(o, 49), 0.1, 1e-15);
  rt_optim_free(o);
  /* the step uses lr(step) */
  rt_weights w;
  opt_weights(d, &w);
  c = adam_cfg(0.1);
  c.warmup = 4;
  o = rt_optim_new(d, &c);
  float g[3] = { 1, 1, 1 };
  float *const grads[3] = { g, NULL, NULL };
  cr_assert_eq(rt_optim_step(o, &w, grads, NULL), RT_OK);
  cr_assert_float_eq(((float *)w.data[0])[0], 1.0f - 0.025f, 1e-7);
  rt_optim_free(o);
  rt_weights_free(&w);
  c.beta1 = 1.0;                           /* refused configuration */
  cr_assert_null(rt_optim_new(d, &c));
  rt_desc_free(d);
}

/* ---- checkpoints ---- */

static char *tmp_path(const char *name) {
  char *p = malloc(512);
  snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
  return p;
}

static void assert_weights_eq(const rt_desc *d, const rt_weights *a, const rt_weights *b) {
  cr_assert_eq(a->n, b->n);
  for (int i = 0; i < d->nparams; i++) {
    size_t bytes = (d->params[i].dtype == RT_I64 ? 8 : 4) * (size_t)(d->params[i].ndim == 1
                     ? d->params[i].shape[0] : d->params[i].shape[0] * d->params[i].shape[1]);
    cr_assert_eq(memcmp(a->data[i], b->data[i], bytes), 0, "param %d", i);
  }
}

Test(checkpoint, round_trip_bitwise) {
  rt_desc *d = opt_desc();
  rt_weights w, best;
  opt_weights(d, &w);
  opt_weights(d, &best);
  ((float *)best.data[0])[1] = 0.123456789f;
  best.step = 7;
  rt_optim_cfg c = adam_cfg(0.01);
  rt_optim *o = rt_optim_new(d, &c);
  float g[3] = { 0.1f, -0.3f, 1e-3f };
  float *const grads[3] = { g, NULL, NULL };
  for (int s = 0; s < 3; s++) cr_assert_eq(rt_optim_step(o, &w, grads, NULL), RT_OK);
  rt_train_state st = { 3, 1.0 / 3.0, 2, 18446744073709551615ull, 1, best };
  char *path = tmp_path("ck.safetensors"), err[512] = "";
  cr_assert_eq(rt_checkpoint_save(d, path, &w, o, &st, err, sizeof err), 0, "%s", err);
  char *tmp = malloc(strlen(path) + 8);
  sprintf(tmp, "%s.tmp", path);
  cr_assert(access(tmp, F_OK) != 0, "no temporary file is left");
  free(tmp);

  rt_optim *o2 = rt_optim_new(d, &c);
  rt_weights w2;
  rt_train_state st2;
  cr_assert_eq(rt_checkpoint_load(d, path, &w2, o2, &st2, err, sizeof err), 0, "%s", err);
  assert_weights_eq(d, &w, &w2);
  cr_assert_eq(w2.step, 3);
  cr_assert_eq(rt_optim_steps(o2), 3);
  for (int which = 0; which < 2; which++)
    cr_assert_eq(memcmp(rt_optim_moment(o, 0, which), rt_optim_moment(o2, 0, which),
                        3 * sizeof(float)), 0);
  cr_assert_eq(st2.step, 3);
  cr_assert_eq(memcmp(&st2.best_valid, &st.best_valid, sizeof(double)), 0);
  cr_assert_eq(st2.since_best, 2);
  cr_assert_eq(st2.seed, 18446744073709551615ull);
  cr_assert_eq(st2.has_best, 1);
  cr_assert_eq(st2.best.step, 7);
  assert_weights_eq(d, &best, &st2.best);
  /* the next steps agree bitwise */
  cr_assert_eq(rt_optim_step(o, &w, grads, NULL), RT_OK);
  cr_assert_eq(rt_optim_step(o2, &w2, grads, NULL), RT_OK);
  assert_weights_eq(d, &w, &w2);
  rt_train_state_free(&st2);
  rt_weights_free(&w2);

  /* a plain weights loader refuses it; without an optimiser it loads */
  cr_assert_neq(rt_weights_load(d, path, &w2, err, sizeof err), 0);
  cr_assert(strstr(err, "optim.m.flow.0.a") || strstr(err, "best."), "%s", err);
  cr_assert_eq(rt_checkpoint_load(d, path, &w2, NULL, &st2, err, sizeof err), 0, "%s", err);
  rt_train_state_free(&st2);
  rt_weights_free(&w2);

  /* no best, infinite best_valid */
  rt_train_state st3 = { 0, INFINITY, 0, 5, 0, { 0 } };
  cr_assert_eq(rt_checkpoint_save(d, path, &w, o, &st3, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_checkpoint_load(d, path, &w2, o2, &st2, err, sizeof err), 0, "%s", err);
  cr_assert_eq(st2.has_best, 0);
  cr_assert(isinf(st2.best_valid) && st2.best_valid > 0);
  cr_assert_eq(rt_optim_steps(o2), 4);
  rt_train_state_free(&st2);
  rt_weights_free(&w2);

  /* a weights file lacks the moments: refused with an optimiser */
  cr_assert_eq(rt_weights_save(d, &w, path, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_checkpoint_load(d, path, &w2, o2, &st2, err, sizeof err), 0);
  cr_assert(strstr(err, "optim.m.flow.0.a") && strstr(err, "missing"), "%s", err);
  cr_assert_null(w2.data);
  cr_assert_eq(rt_checkpoint_load(d, path, &w2, NULL, &st2, err, sizeof err), 0, "%s", err);
  rt_weights_free(&w2);

  /* an extra tensor is refused, by name */
  rt_named_tensor t[4] = {
    { "flow.0.a", RT_F32, 1, { 3 }, w.data[0] }, { "flow.1.sign", RT_F32, 1, { 2 }, w.data[1] },
    { "flow.1.perm", RT_I64, 1, { 2 }, w.data[2] }, { "optim.m.flow.1.perm", RT_I64, 1, { 2 }, w.data[2] },
  };
  cr_assert_eq(rt_safetensors_save(path, t, 4, NULL, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_checkpoint_load(d, path, &w2, NULL, &st2, err, sizeof err), 0);
  cr_assert(strstr(err, "optim.m.flow.1.perm"), "%s", err);
  /* a misshapen moment is refused, by name */
  t[3] = (rt_named_tensor){ "optim.v.flow.0.a", RT_F32, 1, { 2 }, w.data[0] };
  cr_assert_eq(rt_safetensors_save(path, t, 4, NULL, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_checkpoint_load(d, path, &w2, NULL, &st2, err, sizeof err), 0);
  cr_assert(strstr(err, "optim.v.flow.0.a") && strstr(err, "shape"), "%s", err);
  /* bad metadata */
  const char *meta[] = { "step", "-3", NULL };
  cr_assert_eq(rt_safetensors_save(path, t, 3, meta, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_checkpoint_load(d, path, &w2, NULL, &st2, err, sizeof err), 0);
  cr_assert(strstr(err, "step"), "%s", err);
  cr_assert_neq(rt_checkpoint_load(d, "/nonexistent/x", &w2, NULL, &st2, err, sizeof err), 0);

  free(path);
  rt_optim_free(o);
  rt_optim_free(o2);
  rt_weights_free(&w);
  rt_weights_free(&best);
  rt_desc_free(d);
}
