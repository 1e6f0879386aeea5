/*
** tests/test_frontend.c: the frontend (lexer, parser, sema, diagnostics).
**
** Golden tests: every tests/golden/frontend/NAME.flow is compiled with the
** path "NAME.flow"; the printed diagnostics, or for a valid file the dump
** below, must equal NAME.expected byte for byte. FLOWC_UPDATE_GOLDEN=1
** rewrites the expected files instead (review the diff by eye).
**
** Dump format, one line per module, model and layer:
**   module PATH models N
**   model NAME @LINE:COL dim D shape [d0,d1] context C base normal layers K
**     K @LINE:COL KIND FIELDS
** where FIELDS are, by kind:
**   affine_coupling    net=mlp[h1,h2] act=A scale=S
**   additive_coupling  net=mlp[...] act=A
**   spline_coupling    net=mlp[...] act=A bins=B bound=X
**   permute            perm=reverse | perm=random seed=S | perm=[p0,p1,...]
**   actnorm, linear_lu (none)
**   maf, iaf           net=made[...] act=A scale=S | transform=spline bins=B bound=X
**   residual           net=mlp[...] act=A lipschitz=L logdet=exact | logdet=series
**                      terms=T roulette=P, then iters=N tol=X
**   cnf                net=mlp[...] act=A time=T k=K SOLVER trace=exact|hutchinson
**   sde                net=mlp[...] act=A sigma=X steps=N time=T k=K solver=euler
** with T scalar or sincos, K the time embedding's width (time_k), and SOLVER
** solver=euler|heun|rk4 steps=N or solver=dopri5 rtol=X atol=X max_steps=N.
** Numbers are printed in the shortest form that reads back exactly.
*/
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "frontend.h"
#include "testutil.h"

#define GOLDEN_DIR FLOWC_SOURCE_DIR "/tests/golden/frontend"

/* ---- dump ---- */

static void dump_double(FILE *f, double x) {
  char buf[64];
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, x);
    if (strtod(buf, NULL) == x) break;
  }
  fputs(buf, f);
}

static void dump_net(FILE *f, const ir_net *n) {
  fprintf(f, " net=%s[", n->kind == NET_MADE ? "made" : "mlp");
  for (int i = 0; i < n->nhidden; i++) fprintf(f, "%s%d", i ? "," : "", n->hidden[i]);
  fprintf(f, "] act=%s", ir_act_name(n->act));
}

static void dump_layer(FILE *f, const ir_model *m, int k) {
  static const char *const scales[] = {"tanh", "exp", "sigmoid"};
  const ir_layer *L = &m->layers[k];
  fprintf(f, "  %d @%d:%d %s", k, L->line, L->col, ir_layer_name(L->kind));
  switch (L->kind) {
  case LAYER_AFFINE_COUPLING:
    dump_net(f, &L->net);
    fprintf(f, " scale=%s", scales[L->scale]);
    break;
  case LAYER_ADDITIVE_COUPLING:
    dump_net(f, &L->net);
    break;
  case LAYER_SPLINE_COUPLING:
    dump_net(f, &L->net);
    fprintf(f, " bins=%d bound=", L->bins);
    dump_double(f, L->bound);
    break;
  case LAYER_MAF: case LAYER_IAF:
    dump_net(f, &L->net);
    if (L->spline) {
      fprintf(f, " transform=spline bins=%d bound=", L->bins);
      dump_double(f, L->bound);
    } else {
      fprintf(f, " scale=%s", scales[L->scale]);
    }
    break;
  case LAYER_RESIDUAL:
    dump_net(f, &L->net);
    fprintf(f, " lipschitz=");
    dump_double(f, L->lipschitz);
    if (L->series) {
      fprintf(f, " logdet=series terms=%d roulette=", L->terms);
      dump_double(f, L->roulette);
    } else {
      fprintf(f, " logdet=exact");
    }
    fprintf(f, " iters=%d tol=", L->iters);
    dump_double(f, L->tol);
    break;
  case LAYER_CNF: case LAYER_SDE: {
    static const char *const solvers[] = {"euler", "heun", "rk4", "dopri5"};
    const char *time = L->time == TIME_SCALAR ? "scalar" : "sincos";
    dump_net(f, &L->net);
    if (L->kind == LAYER_SDE) {
      fprintf(f, " sigma=");
      dump_double(f, L->sigma);
      fprintf(f, " steps=%d time=%s k=%d solver=%s", L->steps, time, L->time_k,
              solvers[L->solver]);
      break;
    }
    fprintf(f, " time=%s k=%d solver=%s", time, L->time_k, solvers[L->solver]);
    if (L->solver == SOLVER_DOPRI5) {
      fprintf(f, " rtol=");
      dump_double(f, L->rtol);
      fprintf(f, " atol=");
      dump_double(f, L->atol);
      fprintf(f, " max_steps=%d", L->max_steps);
    } else {
      fprintf(f, " steps=%d", L->steps);
    }
    fprintf(f, " trace=%s", L->hutchinson ? "hutchinson" : "exact");
    break;
  }
  case LAYER_PERMUTE:
    if (L->perm_kind == PERM_REVERSE) fprintf(f, " perm=reverse");
    else if (L->perm_kind == PERM_RANDOM) fprintf(f, " perm=random seed=%llu",
                                                  (unsigned long long)L->perm_seed);
    else {
      fprintf(f, " perm=[");
      for (int i = 0; i < m->dim; i++) fprintf(f, "%s%d", i ? "," : "", L->perm[i]);
      fprintf(f, "]");
    }
    break;
  default:
    break;
  }
  fputc('\n', f);
}

static void dump_module(FILE *f, const ir_module *M) {
  fprintf(f, "module %s models %d\n", M->path, M->nmodels);
  for (int i = 0; i < M->nmodels; i++) {
    const ir_model *m = &M->models[i];
    fprintf(f, "model %s @%d:%d dim %d shape [", m->name, m->line, m->col, m->dim);
    for (int j = 0; j < m->ndims; j++) fprintf(f, "%s%d", j ? "," : "", m->dims[j]);
    fprintf(f, "] context %d base normal layers %d\n", m->context, m->nlayers);
    for (int k = 0; k < m->nlayers; k++) dump_layer(f, m, k);
  }
}

/* Diagnostics or dump of one source text, malloc'd. */
static char *compile_to_text(const char *path, const char *text, size_t len) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  int n = fe_compile_text(A, path, text, len, &r);
  char *out = NULL;
  size_t outlen = 0;
  FILE *f = open_memstream(&out, &outlen);
  if (n) fe_print_diags(f, &r);
  else dump_module(f, r.module);
  fclose(f);
  ir_arena_free(A);
  return out;
}

/* ---- golden files ---- */

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

Test(frontend, golden, .timeout = 120) {
  DIR *d = opendir(GOLDEN_DIR);
  cr_assert(d, "cannot open %s", GOLDEN_DIR);
  char *names[512];
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) && n < 512;) {
    size_t k = strlen(e->d_name);
    if (k > 5 && !strcmp(e->d_name + k - 5, ".flow")) names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, (size_t)n, sizeof *names, cmp_names);
  cr_assert_gt(n, 40, "only %d golden files", n);
  bool update = getenv("FLOWC_UPDATE_GOLDEN") != NULL;
  for (int i = 0; i < n; i++) {
    char path[1024], exp_path[1024];
    snprintf(path, sizeof path, "%s/%s", GOLDEN_DIR, names[i]);
    snprintf(exp_path, sizeof exp_path, "%s/%.*s.expected", GOLDEN_DIR,
             (int)(strlen(names[i]) - 5), names[i]);
    size_t len;
    char *src = tu_read_file(path, &len);
    cr_assert(src, "cannot read %s", path);
    char *got = compile_to_text(names[i], src, len);
    if (update) {
      FILE *f = fopen(exp_path, "wb");
      cr_assert(f, "cannot write %s", exp_path);
      fputs(got, f);
      fclose(f);
    } else {
      char *want = tu_read_file(exp_path, NULL);
      cr_expect(want, "missing %s (run with FLOWC_UPDATE_GOLDEN=1)", exp_path);
      if (want)
        cr_expect_str_eq(got, want, "golden mismatch for %s:\n--- got ---\n%s--- want ---\n%s",
                         names[i], got, want);
      free(want);
    }
    /* Names say what to expect: ok_* compile, err_* do not. */
    if (!strncmp(names[i], "ok_", 3))
      cr_expect(!strncmp(got, "module ", 7), "%s should compile:\n%s", names[i], got);
    else
      cr_expect(strstr(got, ": error: ") != NULL, "%s should fail:\n%s", names[i], got);
    free(got);
    free(src);
    free(names[i]);
  }
}

/* ---- API details ---- */

static const char *moons =
    "model moons {\n"
    "    dim 2;\n"
    "    net small = mlp(hidden = [8]);\n"
    "    flow {\n"
    "        repeat 2 { affine_coupling(net = small); permute(reverse); }\n"
    "        actnorm;\n"
    "    }\n"
    "}\n"
    "model other { dim [3, 2]; context 4; flow { linear_lu; } }\n";

Test(frontend, module_find_and_names) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  cr_assert_eq(fe_compile_text(A, "m.flow", moons, strlen(moons), &r), 0);
  cr_assert_eq(r.ndiags, 0);
  const ir_module *M = r.module;
  cr_assert_str_eq(M->path, "m.flow");
  cr_assert_eq(ir_module_find(M, NULL), &M->models[0]);
  cr_assert_eq(ir_module_find(M, "other"), &M->models[1]);
  cr_assert_null(ir_module_find(M, "nope"));
  cr_assert_null(ir_module_find(NULL, NULL));
  const ir_model *m = ir_module_find(M, "other");
  cr_assert_eq(m->dim, 6);
  cr_assert_eq(m->ndims, 2);
  cr_assert_eq(m->context, 4);
  cr_assert_str_eq(ir_layer_name(m->layers[0].kind), "linear_lu");
  cr_assert_str_eq(ir_act_name(ACT_GELU_TANH), "gelu_tanh");
  cr_assert_str_eq(ir_act_name(ACT_LIPSWISH), "lipswish");
  cr_assert_str_eq(ir_layer_name(LAYER_AFFINE_COUPLING), "affine_coupling");
  cr_assert_str_eq(ir_layer_name(LAYER_SPLINE_COUPLING), "spline_coupling");
  cr_assert_str_eq(ir_layer_name(LAYER_CNF), "cnf");
  cr_assert_str_eq(ir_layer_name(LAYER_SDE), "sde");
  /* A template used twice makes two networks with their own storage. */
  m = &M->models[0];
  cr_assert_eq(m->nlayers, 5);
  cr_assert_eq(m->layers[0].net.hidden[0], 8);
  cr_assert_neq(m->layers[0].net.hidden, m->layers[2].net.hidden);
  cr_assert_eq(m->layers[0].line, 5);
  cr_assert_eq(m->layers[0].col, 20);
  cr_assert_eq(m->line, 1);
  cr_assert_eq(m->col, 7);
  ir_arena_free(A);
}

Test(frontend, string_escapes) {
  const char *src = "model m { dim f(\"a\\\"b\\\\c\\nd\", -2, -.5, 5., 1e3, 2.5E-1); }";
  ir_arena *A = ir_arena_new();
  fe_diags D;
  fe_diags_init(&D, A, "s.flow", src, strlen(src));
  fe_file *F = fe_parse(A, &D, src, strlen(src));
  cr_assert_eq(D.n, 0);
  cr_assert_eq(F->models.n, 1);
  const fe_model *m = F->models.v[0];
  const fe_item *it = m->items.v[0];
  const fe_expr *call = it->value;
  cr_assert_eq(call->kind, EXPR_CALL);
  cr_assert_eq(call->args.n, 6);
  const fe_expr *s = ((fe_arg *)call->args.v[0])->value;
  cr_assert_eq(s->kind, EXPR_STR);
  cr_assert_eq(s->len, 7);
  cr_assert_str_eq(s->str, "a\"b\\c\nd");
  const fe_expr *x = ((fe_arg *)call->args.v[1])->value;
  cr_assert_eq(x->kind, EXPR_INT);
  cr_assert_eq(x->ival, -2);
  double want[] = {-0.5, 5.0, 1000.0, 0.25};
  for (int i = 0; i < 4; i++) {
    x = ((fe_arg *)call->args.v[2 + i])->value;
    cr_assert_eq(x->kind, EXPR_NUM);
    cr_assert_float_eq(x->num, want[i], 0);
  }
  ir_arena_free(A);
}

Test(frontend, unreadable_file) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  cr_assert_eq(fe_compile_file(A, "/nonexistent/x.flow", &r), 1);
  cr_assert_null(r.module);
  cr_assert_eq(r.diags[0].line, 0);
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  fe_print_diags(f, &r);
  fclose(f);
  cr_assert_str_eq(out, "/nonexistent/x.flow: error: cannot read /nonexistent/x.flow: "
                        "No such file or directory\n");
  free(out);
  ir_arena_free(A);
}

Test(frontend, compile_file_reads) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  int n = fe_compile_file(A, GOLDEN_DIR "/ok_moons.flow", &r);
  cr_assert_eq(n, 0);
  cr_assert_str_eq(r.module->path, GOLDEN_DIR "/ok_moons.flow");
  cr_assert_eq(r.module->models[0].nlayers, 9);
  ir_arena_free(A);
}

Test(frontend, nul_byte_is_an_error) {
  static const char src[] = "model m { dim 2; flow { actnorm; } }\n# a\0b\n";
  ir_arena *A = ir_arena_new();
  fe_result r;
  int n = fe_compile_text(A, "nul.flow", src, sizeof src - 1, &r);
  cr_assert_eq(n, 1);
  cr_assert_null(r.module);
  cr_assert_eq(r.diags[0].line, 2);
  cr_assert_eq(r.diags[0].col, 4);
  cr_assert_str_eq(r.diags[0].msg, "unexpected NUL byte");
  cr_assert_str_eq(r.diags[0].src_line, "# a?b");
  ir_arena_free(A);
}

/* ---- robustness ---- */

static uint64_t rng(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void check_result(const char *text, size_t len) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  int n = fe_compile_text(A, "fuzz.flow", text, len, &r);
  cr_assert_geq(n, 0);
  cr_assert_eq(n, r.ndiags);
  cr_assert_leq(n, 51);
  cr_assert_eq(n == 0, r.module != NULL);
  for (int i = 0; i < n; i++) {
    cr_assert_not_null(r.diags[i].msg);
    cr_assert_geq(r.diags[i].line, 0);
  }
  FILE *f = fopen("/dev/null", "w");
  fe_print_diags(f, &r);
  fclose(f);
  ir_arena_free(A);
}

Test(frontend, random_bytes, .timeout = 120) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  char buf[1024];
  for (int iter = 0; iter < 3000; iter++) {
    size_t len = rng(&s) % sizeof buf;
    for (size_t i = 0; i < len; i++) buf[i] = (char)rng(&s);
    check_result(buf, len);
  }
}

/* Random sequences of the language's own tokens reach deeper into the
** parser and sema than random bytes do. */
Test(frontend, random_tokens, .timeout = 120) {
  static const char *const toks[] = {
    "model", "m", "{", "}", "dim", "2", "[", "]", ",", ";", "context", "base",
    "normal", "net", "a", "=", "mlp", "(", ")", "hidden", "act", "relu", "flow",
    "repeat", "3", "affine_coupling", "permute", "reverse", "random", "seed",
    "actnorm", "spline_coupling", "bins", "bound", "-", "1.5", "\"s\"", "true",
    "made", "maf", "0", "-1", "99999999999", "\n", "#c\n", "scale", "tanh",
    "linear_lu", "additive_coupling", "1e999", "1e", "@", "\"",
    "cnf", "sde", "time", "sincos", "scalar", "solver", "rk4", "dopri5", "steps",
    "trace", "drift", "diffusion", "const",
  };
  const int ntoks = sizeof toks / sizeof toks[0];
  uint64_t s = 12345;
  char buf[4096];
  for (int iter = 0; iter < 3000; iter++) {
    size_t len = 0;
    /* Often start like a real model so that sema gets to run. */
    if (iter % 2) len += (size_t)sprintf(buf, "model m { dim 2; flow { ");
    int n = (int)(rng(&s) % 60);
    for (int i = 0; i < n; i++) {
      const char *t = toks[rng(&s) % ntoks];
      len += (size_t)snprintf(buf + len, sizeof buf - len, "%s ", t);
    }
    if (iter % 4 == 1) len += (size_t)snprintf(buf + len, sizeof buf - len, "; } }");
    check_result(buf, len);
  }
}

Test(frontend, deep_nesting, .timeout = 60) {
  size_t n = 200000;
  char *buf = malloc(3 * n + 64);
  for (int kind = 0; kind < 3; kind++) {
    size_t len = (size_t)sprintf(buf, "model m { dim 2; flow { ");
    const char *open = kind == 0 ? "[" : kind == 1 ? "repeat 1 { " : "f(";
    for (size_t i = 0; i < n / strlen(open); i++) len += (size_t)sprintf(buf + len, "%s", open);
    ir_arena *A = ir_arena_new();
    fe_result r;
    int n = fe_compile_text(A, "deep.flow", buf, len, &r);
    bool found = false;
    for (int i = 0; i < n; i++) found |= strstr(r.diags[i].msg, "nesting is too deep") != NULL;
    cr_assert(found, "kind %d: %d errors, first: %s", kind, n, r.diags[0].msg);
    ir_arena_free(A);
  }
  free(buf);
}

Test(frontend, huge_repeat_is_cheap, .timeout = 10) {
  const char *src =
      "model m { dim 2; flow { repeat 2000000000 { repeat 2000000000 { } } "
      "repeat 9000000000000000000 { } actnorm; } }";
  ir_arena *A = ir_arena_new();
  fe_result r;
  cr_assert_eq(fe_compile_text(A, "r.flow", src, strlen(src), &r), 0);
  cr_assert_eq(r.module->models[0].nlayers, 1);
  ir_arena_free(A);
}

Test(frontend, error_cap) {
  char buf[400];
  size_t len = (size_t)sprintf(buf, "model m { dim 2; flow { ");
  for (int i = 0; i < 100; i++) buf[len++] = '@';
  ir_arena *A = ir_arena_new();
  fe_result r;
  cr_assert_eq(fe_compile_text(A, "cap.flow", buf, len, &r), 51);
  cr_assert_eq(r.diags[50].line, 0);
  cr_assert_str_eq(r.diags[50].msg, "too many errors (more than 50); stopping");
  ir_arena_free(A);
}
