/*
** runtime/rt_desc.c: the descriptor's text form, its parser and checks.
**
** The text is line-oriented, one record a line, fields separated by blanks:
**
**   flowc-desc 1
**   name NAME
**   dim D
**   context C
**   tile T
**   params P
**   param NAME f32|i64 NDIM S0 S1 INIT FAN_IN LAYER SEED NVALUES V...   (P lines)
**   index N V...      (optional: the pool of the gather ops' index lists)
**   entry ENTRY scratch S has_ld 0|1 nprep Q                          (5 times)
**   prep OP ROWS N F NARGS A... [KIND D C PER | MODE | OFF | TKIND F2 | D]  (Q lines)
**   train scratch S nprep Q          (optional: only when has_train)
**   prep OP ROWS N F NARGS A... [...]                                 (Q lines)
**   noise NB                         (optional: only in train, NB > 0)
**   block KIND N TERMS P [A B]                                       (NB lines)
**   end
**
** ENTRY is encode, encode_ld, decode, decode_ld, logprob, in that order.
** INIT is linear_weight linear_bias zero perm_random perm_list lu_lower
** lu_upper lu_log_diag lu_sign lu_perm sn_u; OP is exp neg sum add sub mul
** const lu_w lu_winv made_mask specnorm gather linear temb trace_coef. made_mask alone
** has the four ints KIND D C PER (its mask: rt_made.h), specnorm one, MODE
** (0 evaluation, 1 train; its F is the lipschitz constant), gather one, OFF
** (the offset of its rows + N indices in the pool), temb two fields, TKIND
** (0 scalar, 1 sincos: rt_temb.h) and F2 = dt, its F being t0 (row r is the
** embedding of F + r * F2; NARGS 0). linear has NARGS 2 or 3: x, W [, b].
** trace_coef has NARGS 2 (W0 [H0,in], W1 [D,H0]; result [1,H0]) or 3 (W0,
** W1 [H1,H0], W2 [D,H1]; result [H1,H0]) and one int, D (1 <= D <= in).
** The noise blocks (KIND rademacher, roulette, gauss or beta; TERMS and P
** are 0 but for roulette; beta alone has the shapes A B) are the train
** kernel's random input; their widths sum to noise_width. F, F2, P, A and B
** are printed with %.17g so they read back exactly. Names hold no white space.
** Blank lines and lines starting with '#' are ignored.
*/
#include "rt_internal.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const entry_names[RT_NENTRY] = {
  "encode", "encode_ld", "decode", "decode_ld", "logprob"
};
static const char *const init_names[] = {
  "linear_weight", "linear_bias", "zero", "perm_random", "perm_list",
  "lu_lower", "lu_upper", "lu_log_diag", "lu_sign", "lu_perm", "sn_u"
};
#define NINIT ((int)(sizeof init_names / sizeof init_names[0]))
static const char *const op_names[] = {
  "exp", "neg", "sum", "add", "sub", "mul", "const", "lu_w", "lu_winv", "made_mask",
  "specnorm", "gather", "linear", "temb", "trace_coef", "scale"
};
#define NOP ((int)(sizeof op_names / sizeof op_names[0]))
/* operands: at least op_arity, at most op_arity_max */
static const int op_arity[NOP] = { 1, 1, 1, 2, 2, 2, 0, 5, 5, 1, 2, 1, 2, 0, 2, 2 };
static const int op_arity_max[NOP] = { 1, 1, 1, 2, 2, 2, 0, 5, 5, 1, 2, 1, 3, 0, 3, 2 };
static const char *const noise_names[] = { "rademacher", "roulette", "gauss", "beta" };
#define NNOISE_KIND 4
/* Limits of the noise layout, so a counter fits rt_model_set_noise's
** Philox counter (lo = row << 24 | block << 16 | word, 65536 words): 128
** rademacher columns a word, 2 gauss columns a word, 256 words a beta
** column. */
#define MAX_NOISE_BLOCKS 256
#define MAX_NOISE_COLS (65536 * 128)
#define MAX_GAUSS_COLS (65536 * 2)
#define MAX_BETA_COLS (65536 / 256)

/* ------------------------------------------------------------------ */
/* formatting                                                          */

typedef struct sbuf { char *p; size_t n, cap; int oom; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = 1; return; }
    if ((size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
    size_t ncap = b->cap * 2 + (size_t)k + 64;
    char *np = realloc(b->p, ncap);
    if (!np) { b->oom = 1; return; }
    b->p = np;
    b->cap = ncap;
  }
}

static void format_preps(sbuf *b, const rt_entry_desc *en) {
  for (int q = 0; q < en->nprep; q++) {
    const rt_prep *pr = &en->prep[q];
    int op = (int)pr->op >= 0 && (int)pr->op < NOP ? (int)pr->op : 0;
    sb_printf(b, "prep %s %d %d %.17g %d", op_names[op], pr->rows, pr->n,
              pr->f, pr->nargs);
    for (int a = 0; a < pr->nargs && a < 5; a++) sb_printf(b, " %d", pr->args[a]);
    if (pr->op == RT_PREP_MADE_MASK)
      for (int k = 0; k < 4; k++) sb_printf(b, " %d", pr->iargs[k]);
    if (pr->op == RT_PREP_SPECNORM || pr->op == RT_PREP_GATHER || pr->op == RT_PREP_TRACE_COEF ||
        pr->op == RT_PREP_SCALE)
      sb_printf(b, " %d", pr->iargs[0]);
    if (pr->op == RT_PREP_TEMB) sb_printf(b, " %d %.17g", pr->iargs[0], pr->f2);
    sb_printf(b, "\n");
  }
}

static void format_noise(sbuf *b, const rt_desc *d) {
  if (d->nnoise <= 0) return;
  sb_printf(b, "noise %d\n", d->nnoise);
  for (int k = 0; k < d->nnoise; k++) {
    const rt_noise *z = &d->noise[k];
    int kind = (int)z->kind >= 0 && (int)z->kind < NNOISE_KIND ? (int)z->kind : 0;
    sb_printf(b, "block %s %d %d %.17g", noise_names[kind], z->n, z->terms, z->p);
    if (z->kind == RT_NOISE_BETA) sb_printf(b, " %.17g %.17g", z->a, z->b);
    sb_printf(b, "\n");
  }
}

char *rt_desc_format(const rt_desc *d) {
  sbuf b = { malloc(1024), 0, 1024, 0 };
  if (!b.p) return NULL;
  b.p[0] = 0;
  sb_printf(&b, "flowc-desc 1\nname %s\ndim %d\ncontext %d\ntile %d\nparams %d\n",
            d->name ? d->name : "?", d->dim, d->context, d->tile, d->nparams);
  for (int i = 0; i < d->nparams; i++) {
    const rt_param_desc *p = &d->params[i];
    int nv = p->init == RT_INIT_PERM_LIST && p->values ? p->shape[0] : 0;
    int in = (int)p->init >= 0 && (int)p->init < NINIT ? (int)p->init : 0;
    sb_printf(&b, "param %s %s %d %d %d %s %d %d %" PRIu64 " %d",
              p->name, p->dtype == RT_I64 ? "i64" : "f32", p->ndim,
              p->shape[0], p->shape[1], init_names[in], p->fan_in,
              p->layer, p->seed, nv);
    for (int k = 0; k < nv; k++) sb_printf(&b, " %d", p->values[k]);
    sb_printf(&b, "\n");
  }
  if (d->nidx > 0) {
    sb_printf(&b, "index %d", d->nidx);
    for (int k = 0; k < d->nidx; k++) sb_printf(&b, " %d", d->idx[k]);
    sb_printf(&b, "\n");
  }
  for (int e = 0; e < RT_NENTRY; e++) {
    const rt_entry_desc *en = &d->entry[e];
    sb_printf(&b, "entry %s scratch %ld has_ld %d nprep %d\n", entry_names[e],
              en->scratch, en->has_ld ? 1 : 0, en->nprep);
    format_preps(&b, en);
  }
  if (d->has_train) {
    sb_printf(&b, "train scratch %ld nprep %d\n", d->train.scratch, d->train.nprep);
    format_preps(&b, &d->train);
    format_noise(&b, d);
  }
  sb_printf(&b, "end\n");
  if (b.oom) { free(b.p); return NULL; }
  return b.p;
}

/* ------------------------------------------------------------------ */
/* freeing and copying                                                 */

void rt_desc_free(rt_desc *d) {
  if (!d) return;
  free(d->name);
  if (d->params)
    for (int i = 0; i < d->nparams; i++) {
      free(d->params[i].name);
      free(d->params[i].values);
    }
  free(d->params);
  for (int e = 0; e < RT_NENTRY; e++) free(d->entry[e].prep);
  free(d->train.prep);
  free(d->noise);
  free(d->idx);
  free(d);
}

rt_desc *rt_desc_copy(const rt_desc *s) {
  rt_desc *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  *d = *s;
  d->name = NULL;
  d->params = NULL;
  for (int e = 0; e < RT_NENTRY; e++) d->entry[e].prep = NULL;
  d->train.prep = NULL;
  d->train.nprep = 0;
  d->noise = NULL;
  d->nnoise = 0;
  d->idx = NULL;
  d->nidx = 0;
  int nparams = d->nparams;
  d->nparams = 0;
  d->name = rt_strdup(s->name ? s->name : "");
  if (!d->name) goto oom;
  d->params = calloc(nparams ? (size_t)nparams : 1, sizeof *d->params);
  if (!d->params) goto oom;
  for (int i = 0; i < nparams; i++) {
    rt_param_desc *p = &d->params[i];
    *p = s->params[i];
    p->values = NULL;
    p->name = rt_strdup(s->params[i].name);
    d->nparams = i + 1;
    if (!p->name) goto oom;
    if (s->params[i].values && p->ndim >= 1 && p->shape[0] > 0) {
      p->values = malloc((size_t)p->shape[0] * sizeof(int));
      if (!p->values) goto oom;
      memcpy(p->values, s->params[i].values, (size_t)p->shape[0] * sizeof(int));
    }
  }
  for (int e = 0; e < RT_NENTRY; e++) {
    int q = s->entry[e].nprep;
    if (q > 0) {
      d->entry[e].prep = malloc((size_t)q * sizeof(rt_prep));
      if (!d->entry[e].prep) { d->entry[e].nprep = 0; goto oom; }
      memcpy(d->entry[e].prep, s->entry[e].prep, (size_t)q * sizeof(rt_prep));
    } else {
      d->entry[e].nprep = 0;
    }
  }
  if (s->has_train && s->train.nprep > 0) {
    d->train.prep = malloc((size_t)s->train.nprep * sizeof(rt_prep));
    if (!d->train.prep) goto oom;
    memcpy(d->train.prep, s->train.prep, (size_t)s->train.nprep * sizeof(rt_prep));
    d->train.nprep = s->train.nprep;
  }
  if (s->nidx > 0 && s->idx) {
    if (!(d->idx = malloc((size_t)s->nidx * sizeof *d->idx))) goto oom;
    memcpy(d->idx, s->idx, (size_t)s->nidx * sizeof *d->idx);
    d->nidx = s->nidx;
  }
  if (s->nnoise > 0 && s->noise) {
    d->noise = malloc((size_t)s->nnoise * sizeof *d->noise);
    if (!d->noise) goto oom;
    memcpy(d->noise, s->noise, (size_t)s->nnoise * sizeof *d->noise);
    d->nnoise = s->nnoise;
  }
  return d;
oom:
  for (int e = 0; e < RT_NENTRY; e++)
    if (!d->entry[e].prep) d->entry[e].nprep = 0;
  rt_desc_free(d);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* checks                                                              */

static int bad_name(const char *s) {
  if (!s || !*s) return 1;
  for (; *s; s++)
    if ((unsigned char)*s <= 32 || (unsigned char)*s == 127) return 1;
  return 0;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int check_param(const rt_param_desc *p, char *err, size_t errlen) {
  if (bad_name(p->name))
    return rt_errf(err, errlen, "descriptor: a parameter name is empty or holds blanks");
  if (p->ndim != 1 && p->ndim != 2)
    return rt_errf(err, errlen, "descriptor: parameter %s has %d dimensions", p->name, p->ndim);
  if (p->shape[0] < 0 || (p->ndim == 2 && p->shape[1] < 0))
    return rt_errf(err, errlen, "descriptor: parameter %s has a negative size", p->name);
  if ((int)p->init < 0 || (int)p->init >= NINIT)
    return rt_errf(err, errlen, "descriptor: parameter %s has a bad init", p->name);
  if (p->dtype != RT_F32 && p->dtype != RT_I64)
    return rt_errf(err, errlen, "descriptor: parameter %s has a bad dtype", p->name);
  int isperm = p->init == RT_INIT_PERM_RANDOM || p->init == RT_INIT_PERM_LIST ||
               p->init == RT_INIT_LU_PERM;
  if (isperm != (p->dtype == RT_I64) || (isperm && p->ndim != 1) ||
      (p->init == RT_INIT_SN_U && p->ndim != 1))
    return rt_errf(err, errlen, "descriptor: parameter %s: dtype does not fit its init", p->name);
  if (p->fan_in < 0)
    return rt_errf(err, errlen, "descriptor: parameter %s has a negative fan_in", p->name);
  if (p->init == RT_INIT_PERM_LIST) {
    int n = p->shape[0];
    if (n > 0 && !p->values)
      return rt_errf(err, errlen, "descriptor: parameter %s lacks its permutation", p->name);
    unsigned char *seen = calloc(n ? (size_t)n : 1, 1);
    if (!seen) return rt_errf(err, errlen, "descriptor: out of memory");
    for (int k = 0; k < n; k++) {
      int v = p->values[k];
      if (v < 0 || v >= n || seen[v]) {
        free(seen);
        return rt_errf(err, errlen, "descriptor: parameter %s: values are not a permutation", p->name);
      }
      seen[v] = 1;
    }
    free(seen);
  }
  return 0;
}

/* Shape [rows, n] and kind of operand a of an entry's prep q. */
static int operand(const rt_desc *d, const rt_entry_desc *en, int q, int a,
                   int *rows, int *n, int *isint) {
  if (a < 0) return -1;
  if (a < d->nparams) {
    rt_param_rows_n(&d->params[a], rows, n);
    *isint = d->params[a].dtype == RT_I64;
    return 0;
  }
  long k = (long)a - d->nparams;
  if (k >= q) return -1;
  *rows = en->prep[k].rows;
  *n = en->prep[k].n;
  *isint = 0;
  return 0;
}

/* specnorm: W [out,in] of floats, u an sn_u param of out values, c > 0;
** mode 1 (it writes u) only in the train program. */
static int bad_specnorm(const rt_desc *d, const rt_prep *p, const int *r, const int *n,
                        const int *isint, int train) {
  int u = p->args[1];
  if (isint[0] || isint[1] || p->rows != r[0] || p->n != n[0]) return 1;
  if (u >= d->nparams || d->params[u].init != RT_INIT_SN_U ||
      rt_param_numel(&d->params[u]) != (size_t)r[0])
    return 1;
  if (!(p->f > 0) || p->f > 1e300) return 1;
  return p->iargs[0] != 0 && !(p->iargs[0] == 1 && train);
}

/* gather: rows + n indices in the pool, each inside W [R, N]. */
static int bad_gather(const rt_desc *d, const rt_prep *p, int R, int N) {
  long off = p->iargs[0];
  if (off < 0 || p->rows < 1 || off + p->rows + p->n > d->nidx) return 1;
  for (int a = 0; a < p->rows + p->n; a++) {
    int v = d->idx[off + a];
    if (v < 0 || v >= (a < p->rows ? R : N)) return 1;
  }
  return 0;
}

/* temb: kind 0 of width 1 or kind 1 of an even width >= 4, rows >= 1,
** t0 and dt finite. */
static int bad_temb(const rt_prep *p) {
  if (p->rows < 1 || !isfinite(p->f) || !isfinite(p->f2)) return 1;
  if (p->iargs[0] == 0) return p->n != 1;
  return p->iargs[0] != 1 || p->n < 4 || p->n % 2 != 0;
}

/* trace_coef: W0 [H0, in] with 1 <= D <= in; nargs 2: W1 [D, H0], result
** [1, H0]; nargs 3: W1 [H1, H0], W2 [D, H1], result [H1, H0]; all floats. */
static int bad_trace_coef(const rt_prep *p, const int *r, const int *n, const int *isint) {
  int D = p->iargs[0], H0 = r[0];
  if (isint[0] || isint[1] || D < 1 || n[0] < D || H0 < 1 || p->n != H0 || n[1] != H0)
    return 1;
  if (p->nargs == 2) return r[1] != D || p->rows != 1;
  return isint[2] || r[1] < 1 || p->rows != r[1] || r[2] != D || n[2] != r[1];
}

static int check_prep(const rt_desc *d, const rt_entry_desc *en, const char *E, int q,
                      char *err, size_t errlen) {
  const rt_prep *p = &en->prep[q];
  if ((int)p->op < 0 || (int)p->op >= NOP)
    return rt_errf(err, errlen, "descriptor: %s prep %d: bad op", E, q);
  if (p->nargs < op_arity[p->op] || p->nargs > op_arity_max[p->op]) {
    if (op_arity[p->op] == op_arity_max[p->op])
      return rt_errf(err, errlen, "descriptor: %s prep %d: %s takes %d operands, not %d",
                     E, q, op_names[p->op], op_arity[p->op], p->nargs);
    return rt_errf(err, errlen, "descriptor: %s prep %d: %s takes %d to %d operands, not %d",
                   E, q, op_names[p->op], op_arity[p->op], op_arity_max[p->op], p->nargs);
  }
  if (p->rows < 0 || p->n < 0)
    return rt_errf(err, errlen, "descriptor: %s prep %d: negative size", E, q);
  int r[5], n[5], isint[5];
  for (int a = 0; a < p->nargs; a++)
    if (operand(d, en, q, p->args[a], &r[a], &n[a], &isint[a]))
      return rt_errf(err, errlen, "descriptor: %s prep %d: operand %d out of range", E, q, a);
  int bad = 0;
  switch (p->op) {
  case RT_PREP_EXP: case RT_PREP_NEG:
    bad = isint[0] || p->rows != r[0] || p->n != n[0];
    break;
  case RT_PREP_SUM:
    bad = isint[0] || p->rows != 1 || p->n != 1;
    break;
  case RT_PREP_ADD: case RT_PREP_SUB: case RT_PREP_MUL: {
    int s0 = r[0] == 1 && n[0] == 1, s1 = r[1] == 1 && n[1] == 1;
    if (isint[0] || isint[1]) bad = 1;
    else if (r[0] == r[1] && n[0] == n[1]) bad = p->rows != r[0] || p->n != n[0];
    else if (s1) bad = p->rows != r[0] || p->n != n[0];
    else if (s0) bad = p->rows != r[1] || p->n != n[1];
    else bad = 1;
    break;
  }
  case RT_PREP_CONST:
    bad = p->rows != 1 || p->n != 1;
    break;
  case RT_PREP_MADE_MASK:
    bad = isint[0] || p->rows != r[0] || p->n != n[0] || p->iargs[0] < 0 || p->iargs[0] > 3 ||
          p->iargs[1] < 1 || p->iargs[2] < 0 || p->iargs[3] < 0;
    break;
  case RT_PREP_SPECNORM:
    bad = bad_specnorm(d, p, r, n, isint, en == &d->train);
    break;
  case RT_PREP_GATHER:
    bad = isint[0] || bad_gather(d, p, r[0], n[0]);
    break;
  case RT_PREP_LINEAR:                    /* x [rows, in], W [n, in], b [1, n] */
    bad = isint[0] || isint[1] || p->rows != r[0] || p->n != r[1] || n[0] != n[1] ||
          (p->nargs > 2 && (isint[2] || r[2] != 1 || n[2] != p->n));
    break;
  case RT_PREP_TEMB:
    bad = bad_temb(p);
    break;
  case RT_PREP_TRACE_COEF:
    bad = bad_trace_coef(p, r, n, isint);
    break;
  case RT_PREP_SCALE:                     /* W [rows, n], s [1, rows] or [1, n] */
    bad = isint[0] || isint[1] || p->rows != r[0] || p->n != n[0] || r[1] != 1 ||
          n[1] != (p->iargs[0] ? p->n : p->rows);
    break;
  case RT_PREP_LU_W: case RT_PREP_LU_WINV: {
    int D = p->n;
    bad = p->rows != D || r[0] != D || n[0] != D || r[1] != D || n[1] != D ||
          (size_t)r[2] * n[2] != (size_t)D || (size_t)r[3] * n[3] != (size_t)D ||
          (size_t)r[4] * n[4] != (size_t)D || isint[0] || isint[1] || isint[2] ||
          isint[3] || !isint[4];
    break;
  }
  }
  if (bad)
    return rt_errf(err, errlen, "descriptor: %s prep %d (%s): operand shapes or types do not fit",
                   E, q, op_names[p->op]);
  return 0;
}

/* Why: each mode-1 specnorm advances its u; two on one u would advance it
** twice per run of the train program. */
static int check_sn_steps(const rt_desc *d, char *err, size_t errlen) {
  const rt_entry_desc *en = &d->train;
  for (int q = 0; q < en->nprep; q++) {
    const rt_prep *a = &en->prep[q];
    if (a->op != RT_PREP_SPECNORM || a->iargs[0] != 1) continue;
    for (int k = 0; k < q; k++) {
      const rt_prep *b = &en->prep[k];
      if (b->op == RT_PREP_SPECNORM && b->iargs[0] == 1 && b->args[1] == a->args[1])
        return rt_errf(err, errlen, "descriptor: train preps %d and %d both advance %s", k, q,
                       d->params[a->args[1]].name);
    }
  }
  return 0;
}

static int check_noise(const rt_desc *d, char *err, size_t errlen) {
  if (d->nnoise == 0 && d->noise_width == 0) return 0;
  if (!d->has_train || d->nnoise < 0 || d->nnoise > MAX_NOISE_BLOCKS || !d->noise)
    return rt_errf(err, errlen, "descriptor: bad noise layout (%d blocks)", d->nnoise);
  long width = 0;
  for (int k = 0; k < d->nnoise; k++) {
    const rt_noise *z = &d->noise[k];
    int roul = z->kind == RT_NOISE_ROULETTE, beta = z->kind == RT_NOISE_BETA;
    int maxn = z->kind == RT_NOISE_GAUSS ? MAX_GAUSS_COLS : beta ? MAX_BETA_COLS : MAX_NOISE_COLS;
    if ((int)z->kind < 0 || (int)z->kind >= NNOISE_KIND || z->n < 1 || z->n > maxn ||
        (roul ? z->terms < 0 || z->terms > z->n || !(z->p >= 0 && z->p < 1)
              : z->terms != 0 || z->p != 0) ||
        (beta ? !(z->a > 0 && isfinite(z->a) && z->b > 0 && isfinite(z->b))
              : z->a != 0 || z->b != 0))
      return rt_errf(err, errlen, "descriptor: noise block %d is malformed", k);
    width += z->n;
  }
  if (width != d->noise_width || width > (1L << 30) / d->tile)
    return rt_errf(err, errlen, "descriptor: noise width %d, the blocks have %ld",
                   d->noise_width, width);
  return 0;
}

int rt_desc_check(const rt_desc *d, char *err, size_t errlen) {
  if (!d) return rt_errf(err, errlen, "descriptor: none");
  if (bad_name(d->name)) return rt_errf(err, errlen, "descriptor: bad model name");
  if (d->dim < 1) return rt_errf(err, errlen, "descriptor: dim must be at least 1");
  if (d->context < 0) return rt_errf(err, errlen, "descriptor: negative context");
  if (d->tile < 1 || d->tile > (1 << 20)) return rt_errf(err, errlen, "descriptor: tile out of range");
  if (d->nparams < 0 || (d->nparams > 0 && !d->params))
    return rt_errf(err, errlen, "descriptor: bad parameter table");
  for (int i = 0; i < d->nparams; i++)
    if (check_param(&d->params[i], err, errlen)) return -1;
  if (d->nparams > 1) {
    const char **ix = malloc((size_t)d->nparams * sizeof(char *));
    if (!ix) return rt_errf(err, errlen, "descriptor: out of memory");
    for (int i = 0; i < d->nparams; i++) ix[i] = d->params[i].name;
    qsort(ix, (size_t)d->nparams, sizeof(char *), cmp_name);
    for (int i = 1; i < d->nparams; i++)
      if (!strcmp(ix[i], ix[i - 1])) {
        rt_errf(err, errlen, "descriptor: parameter %s appears twice", ix[i]);
        free(ix);
        return -1;
      }
    free(ix);
  }
  for (int e = 0; e <= RT_NENTRY; e++) {
    if (e == RT_NENTRY && !d->has_train) break;
    const rt_entry_desc *en = e < RT_NENTRY ? &d->entry[e] : &d->train;
    const char *E = e < RT_NENTRY ? entry_names[e] : "train";
    if (en->nprep < 0 || (en->nprep > 0 && !en->prep))
      return rt_errf(err, errlen, "descriptor: %s: bad prep program", E);
    if (en->scratch < 0 || en->scratch > (1L << 40) / d->tile)
      return rt_errf(err, errlen, "descriptor: %s: scratch size out of range", E);
    for (int q = 0; q < en->nprep; q++)
      if (check_prep(d, en, E, q, err, errlen)) return -1;
  }
  if (d->has_train && d->train.has_ld)
    return rt_errf(err, errlen, "descriptor: train: has_ld must be 0");
  if (d->has_train && check_sn_steps(d, err, errlen)) return -1;
  return check_noise(d, err, errlen);
}

/* ------------------------------------------------------------------ */
/* parsing                                                             */

typedef struct lexer {
  char *p;          /* current position in the (writable) copy */
  char *line;       /* current line's tokens */
  int lineno;
  char *err;
  size_t errlen;
} lexer;

/* Moves to the next non-blank, non-comment line; 0 at end of text. */
static int next_line(lexer *L) {
  while (*L->p) {
    char *s = L->p, *nl = strchr(s, '\n');
    if (nl) { *nl = 0; L->p = nl + 1; } else L->p = s + strlen(s);
    L->lineno++;
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    if (*s && *s != '#') { L->line = s; return 1; }
  }
  return 0;
}

/* Does the next non-blank, non-comment line start with the word kw? The
** text is only looked at (next_line and token write into it). */
static int next_is(const lexer *L, const char *kw) {
  const char *s = L->p;
  size_t n = strlen(kw);
  for (;;) {
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    if (*s == '\n') { s++; continue; }
    if (*s != '#') break;
    while (*s && *s != '\n') s++;
  }
  return !strncmp(s, kw, n) && (s[n] == ' ' || s[n] == '\t' || s[n] == '\r' || s[n] == '\n' || !s[n]);
}

static char *token(lexer *L) {
  char *s = L->line;
  while (*s == ' ' || *s == '\t' || *s == '\r') s++;
  if (!*s) { L->line = s; return NULL; }
  char *t = s;
  while (*s && *s != ' ' && *s != '\t' && *s != '\r') s++;
  if (*s) *s++ = 0;
  L->line = s;
  return t;
}

static int lerr(lexer *L, const char *what) {
  return rt_errf(L->err, L->errlen, "descriptor line %d: %s", L->lineno, what);
}

static int end_of_line(lexer *L) {
  if (token(L)) return lerr(L, "unexpected extra field");
  return 0;
}

static int tok_long(lexer *L, long lo, long hi, long *out) {
  char *t = token(L), *end;
  if (!t) return lerr(L, "missing number");
  errno = 0;
  long v = strtol(t, &end, 10);
  if (*end || errno || end == t) return lerr(L, "bad integer");
  if (v < lo || v > hi) return lerr(L, "number out of range");
  *out = v;
  return 0;
}

/* A number as %.17g prints it (strtod: inf and nan read too; the checks
** refuse them where they do not belong). */
static int tok_double(lexer *L, const char *what, double *out) {
  char *t = token(L), *end;
  char m[96];
  if (!t) {
    snprintf(m, sizeof m, "missing %s", what);
    return lerr(L, m);
  }
  *out = strtod(t, &end);
  if (*end || end == t) {
    snprintf(m, sizeof m, "bad %s", what);
    return lerr(L, m);
  }
  return 0;
}

static int tok_int(lexer *L, int lo, int hi, int *out) {
  long v;
  if (tok_long(L, lo, hi, &v)) return -1;
  *out = (int)v;
  return 0;
}

static int keyword(lexer *L, const char *kw) {
  char *t = token(L);
  if (!t || strcmp(t, kw)) {
    char m[96];
    snprintf(m, sizeof m, "expected '%s'", kw);
    return lerr(L, m);
  }
  return 0;
}

static int line_kw(lexer *L, const char *kw) {
  if (!next_line(L)) {
    char m[96];
    snprintf(m, sizeof m, "text ends where '%s' was expected", kw);
    return lerr(L, m);
  }
  return keyword(L, kw);
}

static int lookup(const char *t, const char *const *names, int n) {
  if (t)
    for (int i = 0; i < n; i++)
      if (!strcmp(t, names[i])) return i;
  return -1;
}

static int parse_param(lexer *L, rt_param_desc *p) {
  if (line_kw(L, "param")) return -1;
  char *t = token(L);
  if (!t) return lerr(L, "missing parameter name");
  if (!(p->name = rt_strdup(t))) return lerr(L, "out of memory");
  t = token(L);
  if (t && !strcmp(t, "f32")) p->dtype = RT_F32;
  else if (t && !strcmp(t, "i64")) p->dtype = RT_I64;
  else return lerr(L, "dtype must be f32 or i64");
  if (tok_int(L, 1, 2, &p->ndim) || tok_int(L, 0, INT_MAX, &p->shape[0]) ||
      tok_int(L, 0, INT_MAX, &p->shape[1]))
    return -1;
  int in = lookup(token(L), init_names, NINIT);
  if (in < 0) return lerr(L, "unknown init");
  p->init = (rt_init)in;
  if (tok_int(L, 0, INT_MAX, &p->fan_in) || tok_int(L, 0, INT_MAX, &p->layer)) return -1;
  t = token(L);
  char *end;
  errno = 0;
  if (!t || *t == '-' || (p->seed = strtoull(t, &end, 10), *end || errno || end == t))
    return lerr(L, "bad seed");
  int nv;
  if (tok_int(L, 0, INT_MAX, &nv)) return -1;
  if (nv != (p->init == RT_INIT_PERM_LIST ? p->shape[0] : 0))
    return lerr(L, "wrong number of permutation values");
  if (nv > 0) {
    /* each value takes at least two characters of the line */
    if ((size_t)nv > strlen(L->line) / 2 + 1) return lerr(L, "missing permutation values");
    if (!(p->values = malloc((size_t)nv * sizeof(int)))) return lerr(L, "out of memory");
    for (int k = 0; k < nv; k++)
      if (tok_int(L, 0, INT_MAX, &p->values[k])) return -1;
  }
  return end_of_line(L);
}

static int parse_prep(lexer *L, rt_prep *pr) {
  if (line_kw(L, "prep")) return -1;
  int op = lookup(token(L), op_names, NOP);
  if (op < 0) return lerr(L, "unknown prep op");
  pr->op = (rt_prep_op)op;
  if (tok_int(L, 0, INT_MAX, &pr->rows) || tok_int(L, 0, INT_MAX, &pr->n)) return -1;
  char *t = token(L), *end;
  if (!t) return lerr(L, "missing constant");
  pr->f = strtod(t, &end);
  if (*end || end == t) return lerr(L, "bad constant");
  if (tok_int(L, 0, 5, &pr->nargs)) return -1;
  for (int a = 0; a < pr->nargs; a++)
    if (tok_int(L, 0, INT_MAX, &pr->args[a])) return -1;
  if (pr->op == RT_PREP_MADE_MASK)
    for (int k = 0; k < 4; k++)
      if (tok_int(L, 0, INT_MAX, &pr->iargs[k])) return -1;
  if ((pr->op == RT_PREP_SPECNORM || pr->op == RT_PREP_SCALE) && tok_int(L, 0, 1, &pr->iargs[0]))
    return -1;
  if ((pr->op == RT_PREP_GATHER || pr->op == RT_PREP_TRACE_COEF) &&
      tok_int(L, 0, INT_MAX, &pr->iargs[0]))
    return -1;
  if (pr->op == RT_PREP_TEMB &&
      (tok_int(L, 0, 1, &pr->iargs[0]) || tok_double(L, "time step", &pr->f2)))
    return -1;
  return end_of_line(L);
}

/* After the keyword 'noise': "NB", then NB block lines. */
static int parse_noise(lexer *L, rt_desc *d, int maxlines) {
  int nb;
  if (tok_int(L, 1, maxlines, &nb) || end_of_line(L)) return -1;
  if (!(d->noise = calloc((size_t)nb, sizeof *d->noise))) return lerr(L, "out of memory");
  d->nnoise = nb;
  for (int k = 0; k < nb; k++) {
    rt_noise *z = &d->noise[k];
    if (line_kw(L, "block")) return -1;
    int kind = lookup(token(L), noise_names, NNOISE_KIND);
    if (kind < 0) return lerr(L, "unknown noise kind");
    z->kind = (rt_noise_kind)kind;
    if (tok_int(L, 1, INT_MAX, &z->n) || tok_int(L, 0, INT_MAX, &z->terms)) return -1;
    char *t = token(L), *end;
    if (!t) return lerr(L, "missing probability");
    z->p = strtod(t, &end);
    if (*end || end == t) return lerr(L, "bad probability");
    if (z->kind == RT_NOISE_BETA &&
        (tok_double(L, "beta shape a", &z->a) || tok_double(L, "beta shape b", &z->b)))
      return -1;
    if (end_of_line(L)) return -1;
    if (d->noise_width > INT_MAX - z->n) return lerr(L, "noise too wide");
    d->noise_width += z->n;
  }
  return 0;
}

/* "index N V..." (optional: only gather ops read it). */
static int parse_index(lexer *L, rt_desc *d) {
  if (line_kw(L, "index") || tok_int(L, 0, INT_MAX, &d->nidx)) return -1;
  if (d->nidx > 0 && !(d->idx = malloc((size_t)d->nidx * sizeof *d->idx)))
    return lerr(L, "out of memory");
  for (int k = 0; k < d->nidx; k++)
    if (tok_int(L, 0, INT_MAX, &d->idx[k])) return -1;
  return end_of_line(L);
}

static int parse_entry(lexer *L, rt_desc *d, int e, int maxlines) {
  rt_entry_desc *en = &d->entry[e];
  if (line_kw(L, "entry")) return -1;
  char *t = token(L);
  if (!t || strcmp(t, entry_names[e])) {
    char m[96];
    snprintf(m, sizeof m, "expected entry %s", entry_names[e]);
    return lerr(L, m);
  }
  int nprep;
  if (keyword(L, "scratch") || tok_long(L, 0, LONG_MAX, &en->scratch) ||
      keyword(L, "has_ld") || tok_int(L, 0, 1, &en->has_ld) ||
      keyword(L, "nprep") || tok_int(L, 0, maxlines, &nprep) || end_of_line(L))
    return -1;
  if (nprep > 0 && !(en->prep = calloc((size_t)nprep, sizeof(rt_prep))))
    return lerr(L, "out of memory");
  en->nprep = nprep;
  for (int q = 0; q < nprep; q++)
    if (parse_prep(L, &en->prep[q])) return -1;
  return 0;
}

/* After the keyword 'train': "scratch S nprep Q", then Q prep lines. */
static int parse_train(lexer *L, rt_desc *d, int maxlines) {
  rt_entry_desc *en = &d->train;
  int nprep;
  if (keyword(L, "scratch") || tok_long(L, 0, LONG_MAX, &en->scratch) ||
      keyword(L, "nprep") || tok_int(L, 0, maxlines, &nprep) || end_of_line(L))
    return -1;
  d->has_train = 1;
  if (nprep > 0 && !(en->prep = calloc((size_t)nprep, sizeof(rt_prep))))
    return lerr(L, "out of memory");
  en->nprep = nprep;
  for (int q = 0; q < nprep; q++)
    if (parse_prep(L, &en->prep[q])) return -1;
  return 0;
}

static int parse_all(lexer *L, rt_desc *d, int maxlines) {
  if (!next_line(L)) return rt_errf(L->err, L->errlen, "descriptor: empty text");
  if (keyword(L, "flowc-desc")) return -1;
  int version;
  if (tok_int(L, 0, INT_MAX, &version)) return -1;
  if (version != 1) return lerr(L, "unsupported descriptor version");
  if (end_of_line(L) || line_kw(L, "name")) return -1;
  char *t = token(L);
  if (!t) return lerr(L, "missing model name");
  if (!(d->name = rt_strdup(t))) return lerr(L, "out of memory");
  if (end_of_line(L)) return -1;
  if (line_kw(L, "dim") || tok_int(L, 1, INT_MAX, &d->dim) || end_of_line(L)) return -1;
  if (line_kw(L, "context") || tok_int(L, 0, INT_MAX, &d->context) || end_of_line(L)) return -1;
  if (line_kw(L, "tile") || tok_int(L, 1, 1 << 20, &d->tile) || end_of_line(L)) return -1;
  int np;
  if (line_kw(L, "params") || tok_int(L, 0, maxlines, &np) || end_of_line(L)) return -1;
  if (!(d->params = calloc(np ? (size_t)np : 1, sizeof *d->params)))
    return lerr(L, "out of memory");
  for (int i = 0; i < np; i++) {
    d->nparams = i + 1;
    if (parse_param(L, &d->params[i])) return -1;
  }
  if (next_is(L, "index") && parse_index(L, d)) return -1;
  for (int e = 0; e < RT_NENTRY; e++)
    if (parse_entry(L, d, e, maxlines)) return -1;
  if (!next_line(L)) return lerr(L, "text ends where 'end' was expected");
  char *kw = token(L);
  if (kw && !strcmp(kw, "train")) {
    if (parse_train(L, d, maxlines)) return -1;
    if (!next_line(L)) return lerr(L, "text ends where 'noise' or 'end' was expected");
    kw = token(L);
    if (kw && !strcmp(kw, "noise") && (parse_noise(L, d, maxlines) || line_kw(L, "end")))
      return -1;
    if (!kw || (strcmp(kw, "noise") && strcmp(kw, "end")))
      return lerr(L, "expected 'noise' or 'end'");
  } else if (!kw || strcmp(kw, "end")) {
    return lerr(L, "expected 'train' or 'end'");
  }
  if (end_of_line(L)) return -1;
  if (next_line(L)) return lerr(L, "text after 'end'");
  return 0;
}

rt_desc *rt_desc_parse(const char *text, char *err, size_t errlen) {
  if (!text) { rt_errf(err, errlen, "descriptor: no text"); return NULL; }
  char *copy = rt_strdup(text);
  rt_desc *d = calloc(1, sizeof *d);
  if (!copy || !d) {
    free(copy);
    free(d);
    rt_errf(err, errlen, "descriptor: out of memory");
    return NULL;
  }
  /* every record is a line, so no count may exceed the number of lines */
  int maxlines = 1;
  for (const char *s = copy; *s; s++)
    if (*s == '\n' && maxlines < INT_MAX) maxlines++;
  lexer L = { copy, copy, 0, err, errlen };
  int rc = parse_all(&L, d, maxlines);
  free(copy);
  if (rc == 0) rc = rt_desc_check(d, err, errlen);
  if (rc) {
    rt_desc_free(d);
    return NULL;
  }
  return d;
}
