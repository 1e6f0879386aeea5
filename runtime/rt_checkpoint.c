/*
** runtime/rt_checkpoint.c: training checkpoints, one safetensors file:
**   NAME             the parameters (as in a weights file)
**   optim.m.NAME     Adam's first moment of each trained parameter
**   optim.v.NAME     and its second moment
**   best.NAME        the best-so-far parameters (optional, all or none)
**   __metadata__     format, model, step, optim_step, best_valid (%.17g),
**                    since_best, seed, and best_step with best.NAME
** Loading checks every tensor against the model as rt_weights_load does and
** refuses a tensor that is none of these. The spectral-norm vectors sn_u
** are saved like any parameter (no moments: not trained) and, as in
** weights files, optional: a missing one (or best.one) gets its initial
** value.
*/
#include "rt_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { K_PARAM, K_M, K_V, K_BEST, NKIND };
static const char *const prefix[NKIND] = { "", "optim.m.", "optim.v.", "best." };

void rt_train_state_free(rt_train_state *s) {
  if (!s) return;
  rt_weights_free(&s->best);
  s->has_best = 0;
}

/* ------------------------------------------------------------------ */
/* saving                                                              */

static char *prefixed(const char *pre, const char *name) {
  size_t a = strlen(pre), b = strlen(name);
  char *s = malloc(a + b + 1);
  if (s) {
    memcpy(s, pre, a);
    memcpy(s + a, name, b + 1);
  }
  return s;
}

static void fill(rt_named_tensor *t, const rt_param_desc *p, const char *name, const void *data) {
  t->name = name;
  t->dtype = p->dtype;
  t->ndim = p->ndim;
  t->shape[0] = p->shape[0];
  t->shape[1] = p->shape[1];
  t->data = data;
}

int rt_checkpoint_save(const rt_desc *d, const char *path, const rt_weights *w,
                       const rt_optim *o, const rt_train_state *s, char *err, size_t errlen) {
  if (!d || !path || !w || !s || w->n != d->nparams || (d->nparams && !w->data))
    return rt_errf(err, errlen, "%s: checkpoint: weights do not fit the model", path ? path : "?");
  int P = d->nparams;
  if (s->has_best && (s->best.n != P || (P && !s->best.data)))
    return rt_errf(err, errlen, "%s: checkpoint: best weights do not fit the model", path);
  rt_named_tensor *t = calloc(4 * (size_t)P + 1, sizeof *t);
  char **names = calloc(4 * (size_t)P + 1, sizeof *names);
  int n = 0, rc = 0;
  if (!t || !names) rc = rt_errf(err, errlen, "%s: out of memory", path);
  for (int i = 0; i < P && !rc; i++) {
    const rt_param_desc *p = &d->params[i];
    fill(&t[n++], p, p->name, w->data[i]);
    for (int k = K_M; k <= K_BEST && !rc; k++) {
      const void *data = k == K_BEST ? (s->has_best ? s->best.data[i] : NULL)
                       : rt_optim_moment((rt_optim *)o, i, k == K_V);
      if (!data) continue;
      if (!(names[n] = prefixed(prefix[k], p->name))) {
        rc = rt_errf(err, errlen, "%s: out of memory", path);
        break;
      }
      fill(&t[n], p, names[n], data);
      n++;
    }
  }
  if (!rc) {
    char step[32], ostep[32], best[40], since[32], seed[32], bstep[32];
    snprintf(step, sizeof step, "%ld", s->step);
    snprintf(ostep, sizeof ostep, "%ld", o ? rt_optim_steps(o) : s->step);
    snprintf(best, sizeof best, "%.17g", s->best_valid);
    snprintf(since, sizeof since, "%ld", s->since_best);
    snprintf(seed, sizeof seed, "%" PRIu64, s->seed);
    snprintf(bstep, sizeof bstep, "%ld", s->has_best ? s->best.step : 0);
    const char *meta[] = { "format", "pt", "model", d->name, "step", step, "optim_step", ostep,
                           "best_valid", best, "since_best", since, "seed", seed,
                           s->has_best ? "best_step" : NULL, bstep, NULL };
    rc = rt_safetensors_save(path, t, n, meta, err, errlen);
  }
  if (names)
    for (int i = 0; i < 4 * P + 1; i++) free(names[i]);
  free(names);
  free(t);
  return rc;
}

/* ------------------------------------------------------------------ */
/* loading                                                             */

/* Which param and kind a file tensor is; -1 when none. */
static int classify(const rt_desc *d, const char *name, int *kind) {
  for (int k = NKIND - 1; k >= 0; k--) {
    size_t pl = strlen(prefix[k]);
    if (strncmp(name, prefix[k], pl)) continue;
    for (int i = 0; i < d->nparams; i++)
      if (!strcmp(name + pl, d->params[i].name)) {
        if ((k == K_M || k == K_V) && d->params[i].dtype != RT_F32) continue;
        *kind = k;
        return i;
      }
  }
  return -1;
}

static int meta_long(const rt_st *st, const char *key, long dflt, const char *what, long *out,
                     char *err, size_t errlen) {
  const char *s = rt_st_meta(st, key);
  *out = dflt;
  if (!s) return 0;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || *end || errno || v < 0)
    return rt_errf(err, errlen, "%s: __metadata__ %s is not a count", what, key);
  *out = v;
  return 0;
}

static int read_meta(const rt_st *st, const char *what, rt_train_state *s, long *ostep,
                     long *bstep, char *err, size_t errlen) {
  if (meta_long(st, "step", 0, what, &s->step, err, errlen) ||
      meta_long(st, "best_step", 0, what, bstep, err, errlen) ||
      meta_long(st, "since_best", 0, what, &s->since_best, err, errlen) ||
      meta_long(st, "optim_step", s->step, what, ostep, err, errlen))
    return -1;
  const char *b = rt_st_meta(st, "best_valid"), *sd = rt_st_meta(st, "seed");
  s->best_valid = INFINITY;
  if (b) {
    char *end;
    double v = strtod(b, &end);
    if (!*b || *end || isnan(v))
      return rt_errf(err, errlen, "%s: __metadata__ best_valid is not a number", what);
    s->best_valid = v;
  }
  if (sd) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(sd, &end, 10);
    if (!*sd || *sd == '-' || *end || errno)
      return rt_errf(err, errlen, "%s: __metadata__ seed is not a 64-bit count", what);
    s->seed = (uint64_t)v;
  }
  return 0;
}

typedef struct found { int *at[NKIND]; } found;   /* tensor index or -1 */

static int match(const rt_desc *d, const rt_st *st, const char *what, found *f, char *err,
                 size_t errlen) {
  for (int k = 0; k < st->n; k++) {
    int kind, i = classify(d, st->t[k].name, &kind);
    if (i < 0) {
      char pn[80];
      return rt_errf(err, errlen, "%s: tensor '%s' is neither a parameter of the model nor "
                     "training state", what,
                     rt_printable(st->t[k].name, strlen(st->t[k].name), pn, sizeof pn));
    }
    f->at[kind][i] = k;
  }
  return 0;
}

/* Checks and converts tensor k of the file for param p into *out. */
static int take_as(const rt_desc *d, int i, const rt_st *st, int k, const char *what,
                   void **out, char *err, size_t errlen) {
  rt_param_desc q = d->params[i];
  q.name = (char *)st->t[k].name;         /* messages name the file's tensor */
  return rt_weights_take(&q, &st->t[k], what, out, err, errlen);
}

static int alloc_weights(rt_weights *w, int n) {
  w->n = n;
  w->data = calloc(n ? (size_t)n : 1, sizeof(void *));
  return w->data ? 0 : -1;
}

static int load_all(const rt_desc *d, const rt_st *st, const char *what, const found *f,
                    rt_weights *w, rt_optim *o, rt_train_state *s, char *err, size_t errlen) {
  int P = d->nparams, any_best = 0;
  for (int i = 0; i < P; i++) any_best |= f->at[K_BEST][i] >= 0;
  if (alloc_weights(w, P) || (any_best && alloc_weights(&s->best, P)))
    return rt_errf(err, errlen, "%s: out of memory", what);
  s->has_best = any_best;
  for (int i = 0; i < P; i++) {
    const char *name = d->params[i].name;
    for (int kind = 0; kind < NKIND; kind++) {
      float *mom = kind == K_M || kind == K_V ? rt_optim_moment(o, i, kind == K_V) : NULL;
      int need = kind == K_PARAM || (kind == K_BEST && any_best) || mom;
      int k = f->at[kind][i];
      if (k < 0 && need && d->params[i].init == RT_INIT_SN_U && (kind == K_PARAM || kind == K_BEST)) {
        if (rt_weights_fresh_sn_u(d, i, what, kind == K_PARAM ? &w->data[i] : &s->best.data[i], err, errlen))
          return -1;
        continue;
      }
      if (k < 0) {
        if (need) return rt_errf(err, errlen, "%s: tensor '%s%s' is missing", what, prefix[kind], name);
        continue;
      }
      void *buf = NULL;
      if (take_as(d, i, st, k, what, &buf, err, errlen)) return -1;
      if (!need) free(buf);               /* moments without an optimiser: checked only */
      else if (kind == K_PARAM) w->data[i] = buf;
      else if (kind == K_BEST) s->best.data[i] = buf;
      else {
        memcpy(mom, buf, rt_param_numel(&d->params[i]) * sizeof(float));
        free(buf);
      }
    }
  }
  return 0;
}

int rt_checkpoint_load(const rt_desc *d, const char *path, rt_weights *w, rt_optim *o,
                       rt_train_state *s, char *err, size_t errlen) {
  if (w) memset(w, 0, sizeof *w);
  if (s) memset(s, 0, sizeof *s);
  if (!d || !path || !w || !s) return rt_errf(err, errlen, "checkpoint: missing arguments");
  unsigned char *buf;
  size_t len;
  if (rt_read_file(path, &buf, &len, err, errlen)) return -1;
  rt_st st;
  if (rt_st_parse(buf, len, path, &st, err, errlen)) {
    free(buf);
    return -1;
  }
  found f;
  int P = d->nparams, rc = 0;
  for (int k = 0; k < NKIND; k++) {
    f.at[k] = malloc((P ? (size_t)P : 1) * sizeof(int));
    if (!f.at[k]) rc = rt_errf(err, errlen, "%s: out of memory", path);
    for (int i = 0; f.at[k] && i < P; i++) f.at[k][i] = -1;
  }
  long ostep = 0, bstep = 0;
  if (!rc) rc = read_meta(&st, path, s, &ostep, &bstep, err, errlen);
  if (!rc) rc = match(d, &st, path, &f, err, errlen);
  if (!rc) rc = load_all(d, &st, path, &f, w, o, s, err, errlen);
  if (!rc) {
    w->step = s->step;
    s->best.step = s->has_best ? bstep : 0;
    if (o) rt_optim_set_steps(o, ostep);
  }
  for (int k = 0; k < NKIND; k++) free(f.at[k]);
  rt_st_free(&st);
  free(buf);
  if (rc) {
    rt_weights_free(w);
    rt_train_state_free(s);
    /* moments may be half restored: start them again */
    for (int i = 0; o && i < P; i++)
      for (int which = 0; which < 2; which++) {
        float *m = rt_optim_moment(o, i, which);
        if (m) memset(m, 0, rt_param_numel(&d->params[i]) * sizeof(float));
      }
    if (o) rt_optim_set_steps(o, 0);
  }
  return rc;
}
