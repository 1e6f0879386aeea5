/*
** frontend/sema.c: AST -> checked ir_module (spec sections 2-4, 6, 7 and 9).
**
** Each model is checked item by item; each statement of its flow is checked
** once (not once per repetition), giving a tree of checked layers that is
** then written out: `repeat` expanded, net templates copied into every
** layer that names them, defaults filled in. Errors are reported at the
** offending argument or value; values that are already wrong (EXPR_ERROR)
** are passed over in silence.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "ast.h"
#include "frontend.h"

enum {
  FE_MAX_DIM = 1 << 24,         /* values in dim, and context */
  FE_MAX_LAYERS = 1 << 16,      /* layers after repeat is written out */
  FE_MAX_WIDTH = 1 << 20,       /* a hidden layer */
  FE_MAX_BINS = 4096,
  FE_MAX_DIMS = 8,              /* entries of a dim list (ir_model.dims) */
  FE_MAX_RESIDUAL_DIM = 64,     /* residual: exact log-det per sample */
  FE_MAX_STEPS = 1000000,       /* cnf, sde: solver steps, dopri5's max_steps */
};

typedef struct tmpl {
  const char *name;
  fe_loc loc;
  bool ok;
  ir_net net;
} tmpl;

typedef struct sema {
  ir_arena *A;
  fe_diags *D;
  bool quiet;                   /* the model has syntax errors */
  int dim;                      /* 0 while unknown */
  fe_vec tmpls;                 /* tmpl * of the current model */
} sema;

#define ERR(S, loc, ...) fe_error((S)->D, (loc).line, (loc).col, __VA_ARGS__)

/* ---- values ---- */

/* A string as it would be written, cut short if long. */
static const char *quote(sema *S, const char *s, size_t n) {
  char buf[64];
  size_t k = 0;
  for (size_t i = 0; i < n && k < 40; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') k += (size_t)snprintf(buf + k, sizeof buf - k, "\\%c", c);
    else if (c == '\n') k += (size_t)snprintf(buf + k, sizeof buf - k, "\\n");
    else if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(buf + k, sizeof buf - k, "\\x%02x", c);
    else buf[k++] = (char)c;
  }
  return ir_sprintf(S->A, "\"%.*s%s\"", (int)k, buf, k >= 40 ? "..." : "");
}

/* What a value is, for "must be X, not Y". */
static const char *describe(sema *S, const fe_expr *e) {
  switch (e->kind) {
  case EXPR_INT: return ir_sprintf(S->A, "the integer %s", e->text);
  case EXPR_NUM: return ir_sprintf(S->A, "the number %s", e->text);
  case EXPR_STR: return ir_sprintf(S->A, "the string %s", quote(S, e->str, e->len));
  case EXPR_IDENT: return ir_sprintf(S->A, "'%s'", e->str);
  case EXPR_CALL: return ir_sprintf(S->A, "a call of '%s'", e->str);
  case EXPR_BOOL: return e->ival ? "'true'" : "'false'";
  case EXPR_LIST: return "a list";
  case EXPR_ERROR: break;
  }
  return "an invalid value";
}

/* WHAT is the start of the message: "argument 'bins' must be an integer". */
static bool want_int(sema *S, const fe_expr *e, const char *what, int64_t *out) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind != EXPR_INT) {
    ERR(S, e->loc, "%s, not %s", what, describe(S, e));
    return false;
  }
  *out = e->ival;
  return true;
}

/* Integers are accepted where a decimal is expected. */
static bool want_number(sema *S, const fe_expr *e, const char *what, double *out) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind != EXPR_INT && e->kind != EXPR_NUM) {
    ERR(S, e->loc, "%s, not %s", what, describe(S, e));
    return false;
  }
  *out = e->num;
  return true;
}

/* ---- arguments ---- */

/* How a param may be given; positional params come first. The first
** argument of sincos and of the solvers may be given either way (section 9). */
enum { NAMED = 0, POSITIONAL = 1, EITHER = 2 };

typedef struct param {
  const char *name;
  int positional;               /* NAMED (false), POSITIONAL (true) or EITHER */
} param;

static bool nameable(const param *p) { return p->positional != POSITIONAL; }

/* "a, b or c" */
static const char *param_list(sema *S, const param *ps, int np, const char *last) {
  const char *s = "";
  int k = 0, nnamed = 0;
  for (int i = 0; i < np; i++) nnamed += nameable(&ps[i]);
  for (int i = 0; i < np; i++) {
    if (!nameable(&ps[i])) continue;
    k++;
    s = ir_sprintf(S->A, "%s%s%s", s, k == 1 ? "" : k == nnamed ? last : ", ", ps[i].name);
  }
  return s;
}

/* Matches the arguments of CALL to the NP params: slot[i] is the argument
** for ps[i] or NULL. Reports unknown, duplicate and misplaced arguments;
** the slots are filled as far as possible even then. */
static bool bind_args(sema *S, const fe_expr *call, const param *ps, int np,
                      const fe_arg **slot) {
  const char *what = call->str;
  int npos = 0;
  while (npos < np && ps[npos].positional) npos++;
  for (int i = 0; i < np; i++) slot[i] = NULL;
  bool ok = true;
  for (int i = 0; i < call->args.n; i++) {
    const fe_arg *a = call->args.v[i];
    if (np == 0) {
      ERR(S, a->loc, "'%s' takes no arguments", what);
      ok = false;
      continue;
    }
    if (!a->name) {
      if (i < npos) {
        slot[i] = a;
      } else {
        if (npos == 0)
          ERR(S, a->loc, "positional argument to '%s'; its arguments are named: %s",
              what, param_list(S, ps, np, ", "));
        else
          ERR(S, a->loc, "only the first argument of '%s' may be positional", what);
        ok = false;
      }
      continue;
    }
    int k = -1;
    for (int j = 0; j < np; j++)
      if (nameable(&ps[j]) && !strcmp(ps[j].name, a->name)) k = j;
    if (k < 0) {
      ERR(S, a->loc, "unknown argument '%s' for '%s'; expected %s", a->name, what,
          param_list(S, ps, np, " or "));
      ok = false;
    } else if (slot[k]) {
      ERR(S, a->loc, "duplicate argument '%s' (first on line %d)", a->name, slot[k]->loc.line);
      ok = false;
    } else {
      slot[k] = a;
    }
  }
  return ok;
}

/* ---- networks ---- */

static bool check_act(sema *S, const fe_expr *e, ir_act *out) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind == EXPR_IDENT) {
    for (int a = 0; a < ACT_COUNT; a++)
      if (!strcmp(e->str, ir_act_name((ir_act)a))) {
        *out = (ir_act)a;
        return true;
      }
    ERR(S, e->loc, "unknown activation '%s'; expected relu, gelu, gelu_tanh, silu, "
        "tanh, elu, softplus or lipswish", e->str);
    return false;
  }
  ERR(S, e->loc, "argument 'act' must be an activation such as relu, not %s", describe(S, e));
  return false;
}

static bool check_hidden(sema *S, const fe_expr *e, ir_net *out) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind != EXPR_LIST) {
    ERR(S, e->loc, "argument 'hidden' must be a list of integers, not %s", describe(S, e));
    return false;
  }
  int *h = ir_alloc(S->A, (size_t)(e->items.n + 1) * sizeof *h);
  bool ok = true;
  for (int i = 0; i < e->items.n; i++) {
    const fe_expr *x = e->items.v[i];
    int64_t v;
    if (!want_int(S, x, "hidden sizes must be integers", &v)) {
      ok = false;
    } else if (v <= 0) {
      ERR(S, x->loc, "hidden sizes must be positive, not %s", x->text);
      ok = false;
    } else if (v > FE_MAX_WIDTH) {
      ERR(S, x->loc, "hidden size %s is too large (at most %d)", x->text, FE_MAX_WIDTH);
      ok = false;
    } else {
      h[i] = (int)v;
    }
  }
  out->nhidden = e->items.n;
  out->hidden = h;
  return ok;
}

/* mlp(hidden = [...], act = A) or made(...). */
static bool check_net_call(sema *S, const fe_expr *call, ir_net *out) {
  static const param ps[] = {{"hidden", false}, {"act", false}};
  bool made = !strcmp(call->str, "made");
  if (!made && strcmp(call->str, "mlp")) {
    ERR(S, call->loc, "unknown network '%s'; expected mlp or made", call->str);
    return false;
  }
  *out = (ir_net){made ? NET_MADE : NET_MLP, 0, NULL, ACT_RELU};
  const fe_arg *slot[2];
  bool ok = bind_args(S, call, ps, 2, slot);
  if (!slot[0]) {
    ERR(S, call->loc, "missing argument 'hidden' for '%s'", call->str);
    ok = false;
  } else {
    ok &= check_hidden(S, slot[0]->value, out);
  }
  if (slot[1]) ok &= check_act(S, slot[1]->value, &out->act);
  return ok;
}

static const tmpl *find_tmpl(sema *S, const char *name) {
  for (int i = 0; i < S->tmpls.n; i++) {
    const tmpl *t = S->tmpls.v[i];
    if (!strcmp(t->name, name)) return t;
  }
  return NULL;
}

/* `net = NAME`, `net = mlp(...)` or `net = made(...)`: made networks are
** for maf and iaf (made == true) and only there. LAYER names a layer that
** says so itself (cnf, sde); NULL for the general message. */
static bool net_kind_fits(sema *S, const fe_expr *e, ir_netkind kind, bool made,
                          const char *layer) {
  if ((kind == NET_MADE) == made) return true;
  if (made) ERR(S, e->loc, "maf and iaf need a made network: net = made(hidden = [...])");
  else if (layer) ERR(S, e->loc, "%s needs an mlp network, not made (made networks are only "
                      "for maf and iaf)", layer);
  else ERR(S, e->loc, "made networks are only for maf and iaf");
  return false;
}

/* The network argument named ARG ("net", or sde's "drift"). */
static bool check_net_value(sema *S, const fe_expr *e, ir_net *out, bool made, const char *arg,
                            const char *layer) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind == EXPR_IDENT) {
    const tmpl *t = find_tmpl(S, e->str);
    if (!t) {
      if (!strcmp(e->str, "mlp") || !strcmp(e->str, "made"))
        ERR(S, e->loc, "'%s' needs its arguments: %s(hidden = [...])", e->str, e->str);
      else if (!S->quiet)
        ERR(S, e->loc, "unknown net '%s'", e->str);
      return false;
    }
    if (!t->ok || !net_kind_fits(S, e, t->net.kind, made, layer)) return false;
    *out = t->net;
    return true;
  }
  if (e->kind == EXPR_CALL) {
    ir_netkind kind = !strcmp(e->str, "made") ? NET_MADE : NET_MLP;
    return net_kind_fits(S, e, kind, made, layer) && check_net_call(S, e, out);
  }
  ERR(S, e->loc, "argument '%s' must be a network such as %s(...) or a net name, not %s",
      arg, made ? "made" : "mlp", describe(S, e));
  return false;
}

static bool need_net_arg(sema *S, const fe_expr *call, const fe_arg *a, ir_net *out, bool made,
                         const char *arg, const char *layer) {
  if (!a) {
    ERR(S, call->loc, "missing argument '%s' for '%s'", arg, call->str);
    return false;
  }
  return check_net_value(S, a->value, out, made, arg, layer);
}

static bool need_net(sema *S, const fe_expr *call, const fe_arg *a, ir_net *out, bool made) {
  return need_net_arg(S, call, a, out, made, "net", NULL);
}

/* ---- layers ---- */

static bool check_scale(sema *S, const fe_expr *e, ir_scale *out) {
  static const char *const names[] = {"tanh", "exp", "sigmoid"};
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind == EXPR_IDENT)
    for (int i = 0; i < 3; i++)
      if (!strcmp(e->str, names[i])) {
        *out = (ir_scale)i;
        return true;
      }
  ERR(S, e->loc, "argument 'scale' must be tanh, exp or sigmoid, not %s", describe(S, e));
  return false;
}

static bool check_affine(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", false}, {"scale", false}};
  const fe_arg *slot[2];
  bool ok = bind_args(S, call, ps, 2, slot);
  ok &= need_net(S, call, slot[0], &L->net, false);
  L->scale = SCALE_TANH;
  if (slot[1]) ok &= check_scale(S, slot[1]->value, &L->scale);
  return ok;
}

static bool check_additive(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", false}};
  const fe_arg *slot[1];
  bool ok = bind_args(S, call, ps, 1, slot);
  return need_net(S, call, slot[0], &L->net, false) && ok;
}

/* bins = K, bound = B of a spline, defaults 8 and 3. */
static bool check_bins_bound(sema *S, const fe_arg *abins, const fe_arg *abound, ir_layer *L) {
  bool ok = true;
  L->bins = 8;
  L->bound = 3;
  int64_t bins;
  if (abins) {
    const fe_expr *e = abins->value;
    if (!want_int(S, e, "argument 'bins' must be an integer", &bins)) ok = false;
    else if (bins < 1) ok = false, ERR(S, e->loc, "bins must be at least 1, not %s", e->text);
    else if (bins > FE_MAX_BINS)
      ok = false, ERR(S, e->loc, "bins must be at most %d, not %s", FE_MAX_BINS, e->text);
    else L->bins = (int)bins;
  }
  if (abound) {
    const fe_expr *e = abound->value;
    if (!want_number(S, e, "argument 'bound' must be a number", &L->bound)) ok = false;
    else if (!(L->bound > 0)) ok = false, ERR(S, e->loc, "bound must be positive, not %s", e->text);
  }
  return ok;
}

static bool check_spline(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", false}, {"bins", false}, {"bound", false}};
  const fe_arg *slot[3];
  bool ok = bind_args(S, call, ps, 3, slot);
  ok &= need_net(S, call, slot[0], &L->net, false);
  return check_bins_bound(S, slot[1], slot[2], L) && ok;
}

/* transform = affine | spline | spline(bins = K, bound = B) of maf/iaf. */
static bool check_transform(sema *S, const fe_expr *e, ir_layer *L) {
  if (e->kind == EXPR_ERROR) return false;
  const char *name = e->kind == EXPR_IDENT || e->kind == EXPR_CALL ? e->str : "";
  if (!strcmp(name, "affine") && e->kind == EXPR_IDENT) return true;
  if (!strcmp(name, "spline")) {
    static const param ps[] = {{"bins", false}, {"bound", false}};
    const fe_arg *slot[2] = {NULL, NULL};
    bool ok = e->kind == EXPR_CALL ? bind_args(S, e, ps, 2, slot) : true;
    L->spline = 1;
    return check_bins_bound(S, slot[0], slot[1], L) && ok;
  }
  ERR(S, e->loc, "argument 'transform' must be affine or spline(bins = K, bound = B), not %s",
      describe(S, e));
  return false;
}

/* maf / iaf(net = made(...), scale = S, transform = affine | spline(...)). */
static bool check_autoregressive(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", false}, {"scale", false}, {"transform", false}};
  const fe_arg *slot[3];
  bool ok = bind_args(S, call, ps, 3, slot);
  ok &= need_net(S, call, slot[0], &L->net, true);
  L->scale = SCALE_TANH;
  L->bins = 8;
  L->bound = 3;
  if (slot[1]) ok &= check_scale(S, slot[1]->value, &L->scale);
  if (slot[2]) ok &= check_transform(S, slot[2]->value, L);
  if (slot[1] && L->spline) {
    ERR(S, slot[1]->loc, "argument 'scale' is only for transform = affine");
    ok = false;
  }
  return ok;
}

/* logdet = exact | series | series(terms = n, estimator = hutchinson, roulette = p) */
static bool check_logdet(sema *S, const fe_expr *e, ir_layer *L) {
  if (e->kind == EXPR_ERROR) return false;
  const char *name = e->kind == EXPR_IDENT || e->kind == EXPR_CALL ? e->str : "";
  if (!strcmp(name, "exact") && e->kind == EXPR_IDENT) return true;
  if (strcmp(name, "series")) {
    ERR(S, e->loc, "argument 'logdet' must be exact or series(terms = n, roulette = p), not %s",
        describe(S, e));
    return false;
  }
  static const param ps[] = {{"terms", false}, {"estimator", false}, {"roulette", false}};
  const fe_arg *slot[3] = {NULL, NULL, NULL};
  bool ok = e->kind == EXPR_CALL ? bind_args(S, e, ps, 3, slot) : true;
  int64_t terms;
  L->series = 1;
  if (slot[0]) {
    const fe_expr *t = slot[0]->value;
    if (!want_int(S, t, "argument 'terms' must be an integer", &terms)) ok = false;
    else if (terms < 1 || terms > 64)
      ok = false, ERR(S, t->loc, "terms must be between 1 and 64, not %s", t->text);
    else L->terms = (int)terms;
  }
  if (slot[1]) {
    const fe_expr *t = slot[1]->value;
    if (t->kind != EXPR_ERROR && (t->kind != EXPR_IDENT || strcmp(t->str, "hutchinson")))
      ok = false, ERR(S, t->loc, "argument 'estimator' must be hutchinson, not %s", describe(S, t));
  }
  if (slot[2]) {
    const fe_expr *t = slot[2]->value;
    if (!want_number(S, t, "argument 'roulette' must be a number", &L->roulette)) ok = false;
    else if (!(L->roulette >= 0 && L->roulette < 1))
      ok = false, ERR(S, t->loc, "roulette must be in [0, 1), not %s", t->text);
  }
  return ok;
}

/* The fixed-point inverse converges only for a contraction: g's activation
** must be 1-Lipschitz (gelu and silu are not). */
static bool lipschitz_act(sema *S, const fe_expr *call, const ir_net *net) {
  ir_act a = net->act;
  if (a != ACT_GELU && a != ACT_GELU_TANH && a != ACT_SILU) return true;
  ERR(S, call->loc, "residual needs a 1-Lipschitz activation (lipswish, relu, elu, tanh or "
      "softplus), not %s", ir_act_name(a));
  return false;
}

static bool check_residual(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", false}, {"lipschitz", false}, {"logdet", false},
                             {"iters", false}, {"tol", false}};
  const fe_arg *slot[5];
  bool ok = bind_args(S, call, ps, 5, slot);
  if (need_net(S, call, slot[0], &L->net, false)) ok &= lipschitz_act(S, call, &L->net);
  else ok = false;
  L->lipschitz = 0.97;
  L->terms = 2;
  L->roulette = 0.5;
  L->iters = 50;
  L->tol = 1e-6;
  if (slot[1]) {
    const fe_expr *e = slot[1]->value;
    if (!want_number(S, e, "argument 'lipschitz' must be a number", &L->lipschitz)) ok = false;
    else if (!(L->lipschitz > 0 && L->lipschitz < 1))
      ok = false, ERR(S, e->loc, "lipschitz must be in (0, 1), not %s", e->text);
  }
  if (slot[2]) ok &= check_logdet(S, slot[2]->value, L);
  if (slot[3]) {
    const fe_expr *e = slot[3]->value;
    int64_t v;
    if (!want_int(S, e, "argument 'iters' must be an integer", &v)) ok = false;
    else if (v < 1 || v > 100000)
      ok = false, ERR(S, e->loc, "iters must be between 1 and 100000, not %s", e->text);
    else L->iters = (int)v;
  }
  if (slot[4]) {
    const fe_expr *e = slot[4]->value;
    if (!want_number(S, e, "argument 'tol' must be a number", &L->tol)) ok = false;
    else if (!(L->tol > 0)) ok = false, ERR(S, e->loc, "tol must be positive, not %s", e->text);
  }
  if (S->dim > FE_MAX_RESIDUAL_DIM) {
    ERR(S, call->loc, "residual layers need dim <= %d (the exact log-det is a D x D "
        "determinant per sample), not %d", FE_MAX_RESIDUAL_DIM, S->dim);
    ok = false;
  }
  return ok;
}

/* ---- continuous flows (section 7, docs/choices.md) ---- */

/* An integer argument NAME in [lo, hi]. */
static bool int_arg(sema *S, const fe_arg *a, const char *name, int64_t lo, int64_t hi,
                    int *out) {
  const fe_expr *e = a->value;
  int64_t v;
  if (!want_int(S, e, ir_sprintf(S->A, "argument '%s' must be an integer", name), &v))
    return false;
  if (v < lo || v > hi) {
    ERR(S, e->loc, "%s must be between %lld and %lld, not %s", name, (long long)lo,
        (long long)hi, e->text);
    return false;
  }
  *out = (int)v;
  return true;
}

/* A number argument NAME > 0 (or >= 0 when ZERO). */
static bool number_arg(sema *S, const fe_arg *a, const char *name, bool zero, double *out) {
  const fe_expr *e = a->value;
  double v;
  if (!want_number(S, e, ir_sprintf(S->A, "argument '%s' must be a number", name), &v))
    return false;
  if (zero ? !(v >= 0) : !(v > 0)) {
    ERR(S, e->loc, "%s must %s, not %s", name, zero ? "not be negative" : "be positive", e->text);
    return false;
  }
  *out = v;
  return true;
}

/* time = scalar | sincos | sincos(K) | sincos(dim = K), K even, 4 <= K. */
static bool check_time(sema *S, const fe_expr *e, ir_layer *L) {
  if (e->kind == EXPR_ERROR) return false;
  const char *name = e->kind == EXPR_IDENT || e->kind == EXPR_CALL ? e->str : "";
  if (!strcmp(name, "scalar") && e->kind == EXPR_IDENT) {
    L->time = TIME_SCALAR;
    L->time_k = 1;
    return true;
  }
  if (strcmp(name, "sincos")) {
    ERR(S, e->loc, "argument 'time' must be scalar or sincos(K), not %s", describe(S, e));
    return false;
  }
  static const param ps[] = {{"dim", EITHER}};
  const fe_arg *slot[1] = {NULL};
  bool ok = e->kind == EXPR_CALL ? bind_args(S, e, ps, 1, slot) : true;
  L->time = TIME_SINCOS;
  L->time_k = 32;
  if (slot[0]) {
    const fe_expr *k = slot[0]->value;
    int64_t v;
    if (!want_int(S, k, "the width of sincos must be an integer", &v)) ok = false;
    else if (v < 4 || v % 2 || v > FE_MAX_WIDTH)
      ok = false, ERR(S, k->loc, "the width of sincos must be even and between 4 and %d, not %s",
                      FE_MAX_WIDTH, k->text);
    else L->time_k = (int)v;
  }
  return ok;
}

/* solver = euler | heun | rk4 [(steps = N)] | dopri5 [(rtol, atol, max_steps)].
** The fields of the other kind of solver are left 0. */
static bool check_solver(sema *S, const fe_expr *e, ir_layer *L) {
  static const char *const names[] = {"euler", "heun", "rk4", "dopri5"};
  if (e->kind == EXPR_ERROR) return false;
  int k = -1;
  if (e->kind == EXPR_IDENT || e->kind == EXPR_CALL)
    for (int i = 0; i < 4; i++)
      if (!strcmp(e->str, names[i])) k = i;
  if (k < 0) {
    ERR(S, e->loc, "argument 'solver' must be euler, heun, rk4 or dopri5, not %s",
        describe(S, e));
    return false;
  }
  bool call = e->kind == EXPR_CALL, ok = true;
  L->solver = (ir_solver)k;
  if (L->solver != SOLVER_DOPRI5) {
    static const param ps[] = {{"steps", EITHER}};
    const fe_arg *slot[1] = {NULL};
    if (call) ok = bind_args(S, e, ps, 1, slot);
    L->steps = 20;
    L->rtol = L->atol = 0;
    L->max_steps = 0;
    if (slot[0]) ok &= int_arg(S, slot[0], "steps", 1, FE_MAX_STEPS, &L->steps);
    return ok;
  }
  static const param ps[] = {{"rtol", EITHER}, {"atol", NAMED}, {"max_steps", NAMED}};
  const fe_arg *slot[3] = {NULL, NULL, NULL};
  if (call) ok = bind_args(S, e, ps, 3, slot);
  L->steps = 0;
  L->rtol = L->atol = 1e-5;
  L->max_steps = 1000;
  if (slot[0]) ok &= number_arg(S, slot[0], "rtol", false, &L->rtol);
  if (slot[1]) ok &= number_arg(S, slot[1], "atol", false, &L->atol);
  if (slot[2]) ok &= int_arg(S, slot[2], "max_steps", 1, FE_MAX_STEPS, &L->max_steps);
  return ok;
}

static bool check_trace(sema *S, const fe_expr *e, ir_layer *L) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind == EXPR_IDENT && !strcmp(e->str, "exact")) return L->hutchinson = 0, true;
  if (e->kind == EXPR_IDENT && !strcmp(e->str, "hutchinson")) return L->hutchinson = 1, true;
  ERR(S, e->loc, "argument 'trace' must be exact or hutchinson, not %s", describe(S, e));
  return false;
}

/* cnf(net = mlp(...), time = sincos(32), solver = rk4(steps = 20), trace = exact) */
static bool check_cnf(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"net", NAMED}, {"time", NAMED}, {"solver", NAMED},
                             {"trace", NAMED}};
  const fe_arg *slot[4];
  bool ok = bind_args(S, call, ps, 4, slot);
  ok &= need_net_arg(S, call, slot[0], &L->net, false, "net", "cnf");
  L->time = TIME_SINCOS;
  L->time_k = 32;
  L->solver = SOLVER_RK4;
  L->steps = 20;
  L->hutchinson = 0;
  if (slot[1]) ok &= check_time(S, slot[1]->value, L);
  if (slot[2]) ok &= check_solver(S, slot[2]->value, L);
  if (slot[3]) ok &= check_trace(S, slot[3]->value, L);
  return ok;
}

/* diffusion = const(sigma) | const(sigma = S), S >= 0. */
static bool check_diffusion(sema *S, const fe_expr *e, ir_layer *L) {
  if (e->kind == EXPR_ERROR) return false;
  if (e->kind != EXPR_CALL || strcmp(e->str, "const")) {
    if (e->kind == EXPR_IDENT && !strcmp(e->str, "const"))
      ERR(S, e->loc, "'const' needs its value: diffusion = const(sigma)");
    else
      ERR(S, e->loc, "argument 'diffusion' must be const(sigma), not %s", describe(S, e));
    return false;
  }
  static const param ps[] = {{"sigma", EITHER}};
  const fe_arg *slot[1];
  bool ok = bind_args(S, e, ps, 1, slot);
  if (!slot[0]) {
    if (ok) ERR(S, e->loc, "missing argument 'sigma' for 'const'");
    return false;
  }
  return number_arg(S, slot[0], "sigma", true, &L->sigma) && ok;
}

/* sde(drift = mlp(...), diffusion = const(sigma), steps = 20, time = sincos(32)):
** Euler-Maruyama on the grid t_n = n / steps. */
static bool check_sde(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"drift", NAMED}, {"diffusion", NAMED}, {"steps", NAMED},
                             {"time", NAMED}};
  const fe_arg *slot[4];
  bool ok = bind_args(S, call, ps, 4, slot);
  ok &= need_net_arg(S, call, slot[0], &L->net, false, "drift", "sde");
  L->solver = SOLVER_EULER;
  L->steps = 20;
  L->time = TIME_SINCOS;
  L->time_k = 32;
  if (!slot[1]) {
    ERR(S, call->loc, "missing argument 'diffusion' for 'sde'");
    ok = false;
  } else {
    ok &= check_diffusion(S, slot[1]->value, L);
  }
  if (slot[2]) ok &= int_arg(S, slot[2], "steps", 1, FE_MAX_STEPS, &L->steps);
  if (slot[3]) ok &= check_time(S, slot[3]->value, L);
  return ok;
}

/* permute([p_0, ...]): a permutation of 0..D-1 when D is known. */
static bool check_perm_list(sema *S, const fe_expr *e, ir_layer *L) {
  int n = e->items.n;
  bool ok = true;
  for (int i = 0; i < n; i++) {
    int64_t v;
    if (!want_int(S, e->items.v[i], "permutation entries must be integers", &v)) ok = false;
  }
  if (!ok || !S->dim) return false;
  if (n != S->dim) {
    ERR(S, e->loc, "permutation has %d entries but dim is %d", n, S->dim);
    return false;
  }
  int *perm = ir_alloc(S->A, (size_t)n * sizeof *perm);
  unsigned char *seen = ir_alloc(S->A, (size_t)n);
  for (int i = 0; i < n; i++) {
    const fe_expr *x = e->items.v[i];
    if (x->ival < 0 || x->ival >= n) {
      ERR(S, x->loc, "permutation entry %s is out of range 0..%d", x->text, n - 1);
      ok = false;
    } else if (seen[x->ival]) {
      ERR(S, x->loc, "permutation entry %s appears twice", x->text);
      ok = false;
    } else {
      seen[x->ival] = 1;
      perm[i] = (int)x->ival;
    }
  }
  L->perm = perm;
  return ok;
}

static bool check_permute(sema *S, const fe_expr *call, ir_layer *L) {
  static const param ps[] = {{"order", true}, {"seed", false}};
  const fe_arg *slot[2];
  bool ok = bind_args(S, call, ps, 2, slot);
  bool known = false;
  if (!slot[0]) {
    ERR(S, call->loc, "missing argument for 'permute': reverse, random or a list of indices");
    return false;
  }
  const fe_expr *e = slot[0]->value;
  if (e->kind == EXPR_ERROR) {
    ok = false;
  } else if (e->kind == EXPR_IDENT && !strcmp(e->str, "reverse")) {
    L->perm_kind = PERM_REVERSE, known = true;
  } else if (e->kind == EXPR_IDENT && !strcmp(e->str, "random")) {
    L->perm_kind = PERM_RANDOM, known = true;
  } else if (e->kind == EXPR_IDENT) {
    ERR(S, e->loc, "unknown permutation '%s'; expected reverse, random or a list of indices",
        e->str);
    ok = false;
  } else if (e->kind == EXPR_LIST) {
    L->perm_kind = PERM_LIST, known = true;
    ok &= check_perm_list(S, e, L);
  } else {
    ERR(S, e->loc, "the argument of 'permute' must be reverse, random or a list of indices, "
        "not %s", describe(S, e));
    ok = false;
  }
  if (slot[1]) {
    const fe_expr *s = slot[1]->value;
    int64_t seed;
    if (known && L->perm_kind != PERM_RANDOM) {
      ERR(S, slot[1]->loc, "argument 'seed' is only for permute(random)");
      ok = false;
    } else if (!want_int(S, s, "argument 'seed' must be an integer", &seed)) {
      ok = false;
    } else if (seed < 0) {
      ERR(S, s->loc, "seed must not be negative, not %s", s->text);
      ok = false;
    } else {
      L->perm_seed = (uint64_t)seed;
    }
  }
  return ok;
}

static bool check_noargs(sema *S, const fe_expr *call, ir_layer *L) {
  const fe_arg *slot[1];
  (void)L;
  return bind_args(S, call, NULL, 0, slot);
}

typedef bool (*layer_fn)(sema *, const fe_expr *, ir_layer *);

static const struct {
  const char *name;
  ir_layerkind kind;
  layer_fn check;             /* NULL: in the language, not yet here */
} layers[] = {
  {"affine_coupling", LAYER_AFFINE_COUPLING, check_affine},
  {"additive_coupling", LAYER_ADDITIVE_COUPLING, check_additive},
  {"spline_coupling", LAYER_SPLINE_COUPLING, check_spline},
  {"permute", LAYER_PERMUTE, check_permute},
  {"actnorm", LAYER_ACTNORM, check_noargs},
  {"linear_lu", LAYER_LINEAR_LU, check_noargs},
  {"maf", LAYER_MAF, check_autoregressive},
  {"iaf", LAYER_IAF, check_autoregressive},
  {"residual", LAYER_RESIDUAL, check_residual},
  {"cnf", LAYER_CNF, check_cnf},
  {"sde", LAYER_SDE, check_sde},
};

static bool check_layer(sema *S, const fe_expr *call, ir_layer *L) {
  L->line = call->loc.line;
  L->col = call->loc.col;
  for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) {
    if (strcmp(layers[i].name, call->str)) continue;
    if (!layers[i].check) {
      ERR(S, call->loc, "layer '%s' is not supported yet", call->str);
      return false;
    }
    L->kind = layers[i].kind;
    return layers[i].check(S, call, L);
  }
  ERR(S, call->loc, "unknown layer '%s'", call->str);
  return false;
}

/* ---- flow blocks ---- */

/* A flow block checked once: repeat bodies are expanded afterwards. */
typedef struct cblock cblock;
typedef struct cstmt {
  bool repeat, ok;
  ir_layer layer;
  int64_t count;
  cblock *body;
} cstmt;
struct cblock { int n; cstmt *v; };

static cblock *check_block(sema *S, const fe_block *b) {
  cblock *cb = ir_alloc(S->A, sizeof *cb);
  cb->n = b->stmts.n;
  cb->v = ir_alloc(S->A, (size_t)(cb->n + 1) * sizeof *cb->v);
  for (int i = 0; i < cb->n; i++) {
    const fe_stmt *s = b->stmts.v[i];
    cstmt *c = &cb->v[i];
    if (s->kind == STMT_CALL) {
      c->ok = check_layer(S, s->call, &c->layer);
      continue;
    }
    c->repeat = true;
    c->ok = want_int(S, s->count, "repeat count must be an integer", &c->count);
    if (c->ok && c->count <= 0) {
      ERR(S, s->count->loc, "repeat count must be positive, not %s", s->count->text);
      c->ok = false;
    }
    if (!c->ok) c->count = 0;
    c->body = check_block(S, s->body);
  }
  return cb;
}

/* Layers once written out, saturating just above the limit. */
static int64_t count_layers(const cblock *b) {
  int64_t n = 0;
  for (int i = 0; i < b->n; i++) {
    const cstmt *c = &b->v[i];
    int64_t k = c->repeat ? count_layers(c->body) : 1;
    if (c->repeat && k > 0 && c->count > FE_MAX_LAYERS) return FE_MAX_LAYERS + 1;
    n += c->repeat ? c->count * k : 1;
    if (n > FE_MAX_LAYERS) return FE_MAX_LAYERS + 1;
  }
  return n;
}

/* Every layer gets its own copy of its network ("afresh"). */
static void expand(sema *S, const cblock *b, ir_layer *out, int *k) {
  for (int i = 0; i < b->n; i++) {
    const cstmt *c = &b->v[i];
    if (c->repeat) {
      if (count_layers(c->body) == 0) continue;
      for (int64_t r = 0; r < c->count; r++) expand(S, c->body, out, k);
      continue;
    }
    ir_layer *L = &out[(*k)++];
    *L = c->layer;
    if (L->net.nhidden) {
      int *h = ir_alloc(S->A, (size_t)L->net.nhidden * sizeof *h);
      memcpy(h, L->net.hidden, (size_t)L->net.nhidden * sizeof *h);
      L->net.hidden = h;
    }
  }
}

/* ---- models ---- */

static void check_dim(sema *S, const fe_item *it, ir_model *M) {
  const fe_expr *e = it->value;
  const fe_expr *const *entries;
  int n;
  if (e->kind == EXPR_ERROR) return;
  if (e->kind == EXPR_INT) {
    entries = (const fe_expr *const *)&it->value, n = 1;
  } else if (e->kind == EXPR_LIST) {
    entries = (const fe_expr *const *)e->items.v, n = e->items.n;
  } else {
    ERR(S, e->loc, "dim must be an integer or a list of integers, not %s", describe(S, e));
    return;
  }
  if (n == 0) {
    ERR(S, e->loc, "dim must not be an empty list");
    return;
  }
  if (n > FE_MAX_DIMS) {
    ERR(S, e->loc, "dim has %d entries; at most %d are supported", n, FE_MAX_DIMS);
    return;
  }
  const char *what = e->kind == EXPR_LIST ? "dim entries" : "dim";
  bool ok = true, big = false;
  int64_t prod = 1;
  for (int i = 0; i < n; i++) {
    const fe_expr *x = entries[i];
    int64_t v;
    if (!want_int(S, x, "dim entries must be integers", &v)) {
      ok = false;
    } else if (v <= 0) {
      ERR(S, x->loc, "%s must be positive, not %s", what, x->text);
      ok = false;
    } else {
      if (v > FE_MAX_DIM || prod * v > FE_MAX_DIM) big = true;
      else prod *= v;
      M->dims[i] = v <= FE_MAX_DIM ? (int)v : 0;
    }
  }
  if (ok && big) {
    ERR(S, e->loc, "dim is too large (more than %d values)", FE_MAX_DIM);
    ok = false;
  }
  if (!ok) return;
  M->ndims = n;
  M->dim = (int)prod;
  S->dim = (int)prod;
}

static void check_context(sema *S, const fe_item *it, ir_model *M) {
  const fe_expr *e = it->value;
  int64_t v;
  if (!want_int(S, e, "context must be an integer", &v)) return;
  if (v < 0) ERR(S, e->loc, "context must not be negative, not %s", e->text);
  else if (v > FE_MAX_DIM) ERR(S, e->loc, "context is too large (at most %d)", FE_MAX_DIM);
  else M->context = (int)v;
}

static void check_base(sema *S, const fe_item *it, ir_model *M) {
  if (strcmp(it->name, "normal"))
    ERR(S, it->name_loc, "unknown base distribution '%s'; only normal is supported", it->name);
  if (it->has_args) ERR(S, it->args_loc, "base takes no arguments in this version");
  M->base = BASE_NORMAL;
}

static void check_template(sema *S, const fe_item *it) {
  const tmpl *old = find_tmpl(S, it->name);
  if (old) {
    ERR(S, it->name_loc, "net '%s' is defined twice (first on line %d)", it->name, old->loc.line);
    return;
  }
  tmpl *t = ir_alloc(S->A, sizeof *t);
  t->name = it->name;
  t->loc = it->name_loc;
  const fe_expr *e = it->value;
  if (e->kind == EXPR_CALL)
    t->ok = check_net_call(S, e, &t->net);
  else if (e->kind != EXPR_ERROR)
    ERR(S, e->loc, "a net must be a network such as mlp(...), not %s", describe(S, e));
  fe_vec_push(S->A, &S->tmpls, t);
}

/* An item given twice: the second is reported and ignored. */
static bool once(sema *S, const fe_item **first, const fe_item *it, const char *what) {
  if (*first) {
    ERR(S, it->loc, "%s given twice (first on line %d)", what, (*first)->loc.line);
    return false;
  }
  *first = it;
  return true;
}

static void check_model(sema *S, const fe_model *m, ir_model *M) {
  S->quiet = m->syntax_errors > 0;
  S->dim = 0;
  S->tmpls = (fe_vec){0};
  M->name = m->name;
  M->line = m->loc.line;
  M->col = m->loc.col;
  const fe_item *dim = NULL, *context = NULL, *base = NULL, *flow = NULL;
  for (int i = 0; i < m->items.n; i++) {
    const fe_item *it = m->items.v[i];
    switch (it->kind) {
    case ITEM_DIM: if (once(S, &dim, it, "dim")) check_dim(S, it, M); break;
    case ITEM_CONTEXT: if (once(S, &context, it, "context")) check_context(S, it, M); break;
    case ITEM_BASE: if (once(S, &base, it, "base")) check_base(S, it, M); break;
    case ITEM_NET: check_template(S, it); break;
    case ITEM_FLOW: once(S, &flow, it, "flow block"); break;
    }
  }
  const char *name = m->name ? m->name : "?";
  if (!dim && !S->quiet) ERR(S, m->loc, "model '%s' has no dim", name);
  if (!flow) {
    if (!S->quiet) ERR(S, m->loc, "model '%s' has no flow block", name);
    return;
  }
  cblock *cb = check_block(S, flow->flow);
  int64_t n = count_layers(cb);
  if (n > FE_MAX_LAYERS) {
    ERR(S, flow->loc, "flow has more than %d layers once repeat is written out", FE_MAX_LAYERS);
    return;
  }
  if (S->D->n) return;          /* no module will be returned: skip the work */
  ir_layer *out = ir_alloc(S->A, (size_t)(n + 1) * sizeof *out);
  int k = 0;
  expand(S, cb, out, &k);
  M->nlayers = k;
  M->layers = out;
}

ir_module *fe_check(ir_arena *A, fe_diags *D, const fe_file *F, const char *path) {
  sema S = {.A = A, .D = D};
  ir_module *mod = ir_alloc(A, sizeof *mod);
  mod->path = ir_strdup(A, path);
  int n = F->models.n;
  ir_model *models = ir_alloc(A, (size_t)(n + 1) * sizeof *models);
  if (n == 0 && !F->syntax_errors) fe_error(D, 0, 0, "no model in file");
  for (int i = 0; i < n; i++) {
    const fe_model *m = F->models.v[i];
    for (int j = 0; j < i && m->name; j++) {
      const fe_model *o = F->models.v[j];
      if (o->name && !strcmp(o->name, m->name)) {
        ERR(&S, m->loc, "model '%s' is defined twice (first on line %d)", m->name, o->loc.line);
        break;
      }
    }
    check_model(&S, m, &models[i]);
  }
  mod->nmodels = n;
  mod->models = models;
  return D->n ? NULL : mod;
}

/* ---- entry points ---- */

int fe_compile_text(ir_arena *A, const char *path, const char *text, size_t len, fe_result *r) {
  fe_diags D;
  path = ir_strdup(A, path ? path : "<input>");
  fe_diags_init(&D, A, path, text, len);
  const fe_file *F = fe_parse(A, &D, text, len);
  const ir_module *mod = NULL;
  if (!fe_diags_full(&D)) mod = fe_check(A, &D, F, path);
  fe_diags_finish(&D);
  r->module = D.n ? NULL : mod;
  r->ndiags = D.n;
  r->diags = D.v;
  return D.n;
}

static int read_error(ir_arena *A, const char *path, int err, fe_result *r) {
  fe_diags D;
  path = ir_strdup(A, path);
  fe_diags_init(&D, A, path, NULL, 0);
  fe_error(&D, 0, 0, "cannot read %s: %s", path, strerror(err));
  fe_diags_finish(&D);
  r->module = NULL;
  r->ndiags = D.n;
  r->diags = D.v;
  return D.n;
}

int fe_compile_file(ir_arena *A, const char *path, fe_result *r) {
  FILE *f = fopen(path, "rb");
  if (!f) return read_error(A, path, errno, r);
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (size_t k; buf && (k = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += k;
    if (n == cap) {
      char *p = cap < ((size_t)1 << 31) ? realloc(buf, cap *= 2) : NULL;
      if (!p) free(buf);
      buf = p;
    }
  }
  int err = !buf ? ENOMEM : ferror(f) ? (errno ? errno : EIO) : 0;
  fclose(f);
  if (err) {
    free(buf);
    return read_error(A, path, err, r);
  }
  char *text = ir_strndup(A, buf, n);
  free(buf);
  return fe_compile_text(A, path, text, n, r);
}
