/*
** driver/session.c: one model through the stages, step by step, so each
** command takes only the steps it needs (check stops after lowering, dump
** after the passes, logprob goes all the way to a loaded model).
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "driver.h"

int drv_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("flowc: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return EXIT_INPUT;
}

int drv_parse(drv_session *s, const drv_opts *o) {
  s->A = ir_arena_new();
  fe_result r;
  if (fe_compile_file(s->A, o->flow, &r)) {
    fe_print_diags(stderr, &r);
    return EXIT_INPUT;
  }
  s->module = r.module;
  s->model = ir_module_find(s->module, o->model);
  if (!s->model) return drv_fail("%s: no model named '%s'", o->flow, o->model);
  return 0;
}

int drv_lower(drv_session *s, const drv_opts *o) {
  int rc = drv_parse(s, o);
  if (rc) return rc;
  char err[512];
  s->prog = ir_lower(s->A, s->model, err, sizeof err);
  return s->prog ? 0 : drv_fail("%s: %s", o->flow, err);
}

int drv_compile(drv_session *s, const drv_opts *o) {
  int rc = drv_lower(s, o);
  return rc ? rc : drv_compile_lowered(s, o);
}

/* An entry the command needs but the model lacks: its sde layer has no
** density (ir_lower_entry). */
static int missing_entry(const drv_session *s, const drv_opts *o) {
  const ir_model *m = s->model;
  for (int e = 0; e < IR_NENTRY; e++) {
    if (s->prog->entry[e] || !(s->entries & CG_ENTRY(e))) continue;   /* 0: what exists */
    for (int k = 0; k < m->nlayers; k++)
      if (m->layers[k].kind == LAYER_SDE)
        return drv_fail("%s: model %s has no density: layer %d (sde, line %d) can only be "
                        "sampled or decoded, without --logprob or --logdet", o->flow, m->name, k,
                        m->layers[k].line);
    return drv_fail("%s: internal: entry %s was not made", o->flow, ir_entry_name((ir_entry)e));
  }
  return 0;
}

int drv_compile_lowered(drv_session *s, const drv_opts *o) {
  int rc = missing_entry(s, o);
  if (rc) return rc;
  if (pass_pipeline(s->prog, o->opt, o->disable, NULL))
    return drv_fail("internal: pass pipeline failed");
  char err[512];
  s->desc = cg_desc_err(s->prog, err, sizeof err);
  if (!s->desc) return drv_fail("%s: %s", o->flow, err);
  s->jit = cg_jit_new_entries(s->prog, o->opt, s->entries ? s->entries : CG_ALL_KERNELS, err,
                              sizeof err);
  return s->jit ? 0 : drv_fail("%s: %s", o->flow, err);
}

/* Opens the compiled model with w, or with the weights named by -w. */
int drv_open(drv_session *s, const drv_opts *o, const rt_weights *w) {
  char err[1024];
  rt_weights own = {0};
  if (!w) {
    if (!o->weights) {
      fprintf(stderr, "flowc: %s needs weights: -w W.safetensors (make them with flowc init)\n",
              o->cmd);
      return EXIT_USAGE;
    }
    if (rt_weights_load(s->desc, o->weights, &own, err, sizeof err)) return drv_fail("%s", err);
    w = &own;
  }
  rt_kernel k[RT_NENTRY];
  cg_jit_kernels(s->jit, k);
  s->rt = rt_model_open(s->desc, k, w, o->threads, err, sizeof err);
  rt_weights_free(&own);
  return s->rt ? 0 : drv_fail("%s", err);
}

void drv_close(drv_session *s) {
  rt_model_close(s->rt);
  cg_jit_free(s->jit);
  rt_desc_free(s->desc);
  ir_arena_free(s->A);
}
