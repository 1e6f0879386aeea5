/*
** runtime/rt_weights.c: weights files matched against a model's parameter
** table (flow-language.md sections 8 and 9). The spectral-norm vectors
** sn_u are optional (section 6): a file without one gets rt_sn_u_init's.
*/
#include "rt_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rt_weights_free(rt_weights *w) {
  if (!w) return;
  if (w->data)
    for (int i = 0; i < w->n; i++) free(w->data[i]);
  free(w->data);
  w->data = NULL;
  w->n = 0;
  w->step = 0;
}

static void shape_text(char *out, size_t len, int ndim, const uint64_t *shape) {
  size_t o = 0;
  o += (size_t)snprintf(out, len, "[");
  for (int i = 0; i < ndim && o < len; i++)
    o += (size_t)snprintf(out + o, len - o, "%s%" PRIu64, i ? ", " : "", shape[i]);
  if (o < len) snprintf(out + o, len - o, "]");
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int is_float_dtype(const char *dt) {
  return !strcmp(dt, "F32") || !strcmp(dt, "F64") || !strcmp(dt, "F16") || !strcmp(dt, "BF16");
}

/* Converts one tensor's bytes to the param's dtype; data may be unaligned. */
static void convert(const rt_st_entry *t, rt_dtype to, void *out) {
  const unsigned char *s = t->data;
  for (uint64_t i = 0; i < t->numel; i++, s += t->dsize) {
    if (to == RT_F32) {
      float *o = out;
      if (t->dsize == 4) memcpy(&o[i], s, 4);
      else if (t->dsize == 8) { double v; memcpy(&v, s, 8); o[i] = (float)v; }
      else {
        uint16_t h = (uint16_t)(s[0] | s[1] << 8);
        o[i] = t->dtype[0] == 'B' ? rt_bf16_to_float(h) : rt_half_to_float(h);
      }
    } else {
      int64_t *o = out;
      if (t->dsize == 8) memcpy(&o[i], s, 8);
      else { int32_t v; memcpy(&v, s, 4); o[i] = v; }
    }
  }
}

static int check_perm(const rt_param_desc *p, const int64_t *v, const char *what,
                      char *err, size_t errlen) {
  int n = p->shape[0];
  unsigned char *seen = calloc(n ? (size_t)n : 1, 1);
  if (!seen) return rt_errf(err, errlen, "%s: out of memory", what);
  for (int i = 0; i < n; i++) {
    if (v[i] < 0 || v[i] >= n || seen[v[i]]) {
      free(seen);
      return rt_errf(err, errlen, "%s: tensor '%s' is not a permutation of 0..%d "
                     "(entry %d is %" PRId64 ")", what, p->name, n - 1, i, v[i]);
    }
    seen[v[i]] = 1;
  }
  free(seen);
  if (p->init == RT_INIT_PERM_LIST)
    for (int i = 0; i < n; i++)
      if (v[i] != p->values[i])
        return rt_errf(err, errlen, "%s: %s disagrees with the permute list in the model",
                       what, p->name);
  return 0;
}

/* Checks tensor t against param p and stores its converted copy. */
static int take(const rt_param_desc *p, const rt_st_entry *t, const char *what,
                void **out, char *err, size_t errlen) {
  uint64_t want[2] = { (uint64_t)p->shape[0], (uint64_t)p->shape[1] };
  int same = t->ndim == p->ndim;
  for (int i = 0; same && i < p->ndim; i++) same = t->shape[i] == want[i];
  if (!same) {
    char have[160], need[64];
    shape_text(have, sizeof have, t->ndim, t->shape);
    shape_text(need, sizeof need, p->ndim, want);
    return rt_errf(err, errlen, "%s: tensor '%s' has shape %s, the model needs %s",
                   what, p->name, have, need);
  }
  if (p->dtype == RT_F32 && !is_float_dtype(t->dtype))
    return rt_errf(err, errlen, "%s: tensor '%s' has dtype %s, the model needs a float "
                   "(F32, F64, F16 or BF16)", what, p->name, t->dtype);
  if (p->dtype == RT_I64 && strcmp(t->dtype, "I64") && strcmp(t->dtype, "I32"))
    return rt_errf(err, errlen, "%s: tensor '%s' has dtype %s, the model needs an "
                   "integer permutation (I64 or I32)", what, p->name, t->dtype);
  size_t es = p->dtype == RT_I64 ? 8 : 4;
  void *buf = malloc(t->numel ? (size_t)t->numel * es : 1);
  if (!buf) return rt_errf(err, errlen, "%s: out of memory", what);
  convert(t, p->dtype, buf);
  if (p->dtype == RT_I64 && check_perm(p, buf, what, err, errlen)) {
    free(buf);
    return -1;
  }
  *out = buf;
  return 0;
}

int rt_weights_take(const rt_param_desc *p, const rt_st_entry *t, const char *what,
                    void **out, char *err, size_t errlen) {
  return take(p, t, what, out, err, errlen);
}

/* An sn_u the file does not have: its initial value (rt_init.c). */
int rt_weights_fresh_sn_u(const rt_desc *d, int i, const char *what, void **out, char *err,
                      size_t errlen) {
  size_t n = rt_param_numel(&d->params[i]);
  float *u = malloc((n ? n : 1) * sizeof(float));
  if (!u) return rt_errf(err, errlen, "%s: out of memory", what);
  rt_sn_u_init(d, i, u);
  *out = u;
  return 0;
}

static long parse_step(const char *s) {
  if (!s || !*s) return 0;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  return (*end || errno || v < 0) ? 0 : v;
}

static int match(const rt_desc *d, const rt_st *st, const char *what, rt_weights *w,
                 char *err, size_t errlen) {
  int np = d->nparams;
  const char **names = malloc((np ? (size_t)np : 1) * sizeof(char *));
  int *where = malloc((np ? (size_t)np : 1) * sizeof(int));
  if (!names || !where) {
    free(names); free(where);
    return rt_errf(err, errlen, "%s: out of memory", what);
  }
  for (int i = 0; i < np; i++) names[i] = d->params[i].name;
  qsort(names, (size_t)np, sizeof(char *), cmp_str);
  for (int i = 0; i < np; i++) where[i] = -1;
  int rc = 0;
  /* extra tensors, in file order; duplicates were refused by rt_st_parse */
  for (int k = 0; k < st->n && !rc; k++) {
    const char **hit = np ? bsearch(&st->t[k].name, names, (size_t)np, sizeof(char *), cmp_str) : NULL;
    if (!hit) {
      char pn[80];
      rc = rt_errf(err, errlen, "%s: tensor '%s' is not a parameter of the model", what,
                   rt_printable(st->t[k].name, strlen(st->t[k].name), pn, sizeof pn));
    }
  }
  /* then every parameter in model order; names are few, a scan is fine */
  for (int i = 0; i < np && !rc; i++) {
    for (int k = 0; k < st->n; k++)
      if (!strcmp(st->t[k].name, d->params[i].name)) { where[i] = k; break; }
    if (where[i] < 0 && d->params[i].init != RT_INIT_SN_U)
      rc = rt_errf(err, errlen, "%s: tensor '%s' is missing", what, d->params[i].name);
  }
  for (int i = 0; i < np && !rc; i++)
    rc = where[i] >= 0 ? take(&d->params[i], &st->t[where[i]], what, &w->data[i], err, errlen)
                       : rt_weights_fresh_sn_u(d, i, what, &w->data[i], err, errlen);
  free(names);
  free(where);
  return rc;
}

int rt_weights_load_mem(const rt_desc *d, const void *buf, size_t len,
                        const char *what, rt_weights *w, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  if (!what) what = "weights";
  if (!d || (!buf && len)) return rt_errf(err, errlen, "%s: no descriptor or data", what);
  rt_st st;
  if (rt_st_parse(buf, len, what, &st, err, errlen)) return -1;
  w->data = calloc(d->nparams ? (size_t)d->nparams : 1, sizeof(void *));
  if (!w->data) {
    rt_st_free(&st);
    return rt_errf(err, errlen, "%s: out of memory", what);
  }
  w->n = d->nparams;
  int rc = match(d, &st, what, w, err, errlen);
  if (!rc) w->step = parse_step(rt_st_meta(&st, "step"));
  rt_st_free(&st);
  if (rc) rt_weights_free(w);
  return rc;
}

int rt_weights_load(const rt_desc *d, const char *path, rt_weights *w,
                    char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  unsigned char *buf;
  size_t len;
  if (rt_read_file(path, &buf, &len, err, errlen)) return -1;
  int rc = rt_weights_load_mem(d, buf, len, path, w, err, errlen);
  free(buf);
  return rc;
}

int rt_weights_save(const rt_desc *d, const rt_weights *w, const char *path,
                    char *err, size_t errlen) {
  if (!d || !w || w->n != d->nparams || (d->nparams && !w->data))
    return rt_errf(err, errlen, "%s: weights do not fit the model", path);
  rt_named_tensor *t = calloc(d->nparams ? (size_t)d->nparams : 1, sizeof *t);
  if (!t) return rt_errf(err, errlen, "%s: out of memory", path);
  for (int i = 0; i < d->nparams; i++) {
    const rt_param_desc *p = &d->params[i];
    t[i].name = p->name;
    t[i].dtype = p->dtype;
    t[i].ndim = p->ndim;
    t[i].shape[0] = p->shape[0];
    t[i].shape[1] = p->shape[1];
    t[i].data = w->data[i];
  }
  char step[32];
  snprintf(step, sizeof step, "%ld", w->step);
  const char *meta[] = { "format", "pt", "model", d->name, "step", step, NULL };
  int rc = rt_safetensors_save(path, t, d->nparams, meta, err, errlen);
  free(t);
  return rc;
}
