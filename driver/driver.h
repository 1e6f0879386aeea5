/*
** driver/driver.h: the flowc command line, the one place that ties the
** stages together: frontend -> ir -> passes -> codegen -> runtime.
*/
#ifndef FLOWC_DRIVER_H
#define FLOWC_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "cg.h"
#include "frontend.h"
#include "ir.h"
#include "passes.h"
#include "rt.h"

/* Exit codes of flowc-cli.md. */
enum { EXIT_INPUT = 1, EXIT_USAGE = 2 };

typedef struct drv_opts {
  const char *cmd, *flow, *model, *weights, *data, *context, *out;
  const char *logdet, *logprob, *after, *disable, *op;
  int threads, opt, ir, llvm;
  long n, batch;
  uint64_t seed;
  int have_seed;
  /* train */
  const char *objective, *valid, *valid_context, *schedule, *init, *resume, *checkpoint;
  const char *optimizer, *time_dist;   /* --time-dist uniform | beta(A,B) (objective fm) */
  const char *context_out;             /* toy: where a conditional set writes its context */
  double lr, clip, weight_decay, valid_fraction;
  long steps, epochs, patience, warmup, eval_every, checkpoint_every, stop_after;
} drv_opts;

/* A model compiled for running: the stages' results for one model. */
typedef struct drv_session {
  ir_arena *A;
  const ir_module *module;
  const ir_model *model;
  ir_program *prog;
  rt_desc *desc;
  cg_jit *jit;
  rt_model *rt;
  unsigned entries;   /* the kernels drv_compile makes (cg_jit_new_entries); 0: all */
} drv_session;

/* Prints "flowc: MESSAGE" to stderr; returns EXIT_INPUT. */
int drv_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Each step fills the session further; 0, or an exit code after printing
** the diagnostics. drv_close frees whatever was made. */
int drv_parse(drv_session *s, const drv_opts *o);
int drv_lower(drv_session *s, const drv_opts *o);
int drv_compile(drv_session *s, const drv_opts *o);
int drv_compile_lowered(drv_session *s, const drv_opts *o);   /* after drv_lower */
int drv_open(drv_session *s, const drv_opts *o, const rt_weights *w);
void drv_close(drv_session *s);

/* Loads rows of cols values (refusing NaN/Inf); the context of n samples
** (none, n rows, or one row for all). 0 or an exit code after a message. */
int drv_load_rows(const char *path, long cols, const char *what, rt_array *a);
int drv_load_context(const drv_opts *o, const ir_model *m, long n, rt_array *c);

/* One optimiser step of flowc train on B rows x (and B context rows c, or
** NULL): gradient, Adam step on w, parameters back into rt. 0; 1 when the
** loss or a gradient is not finite (w unchanged); 2 on another failure. */
int drv_train_step(rt_model *rt, rt_optim *opt, rt_weights *w, long B, const float *x,
                   const float *c, float *const *grads, double *loss);

/* --time-dist uniform | beta(A,B): 0 with the Beta's shapes, -1 if bad. */
int drv_time_dist(const char *s, double *a, double *b);

/* Maximum likelihood needs a density and a solver it can differentiate:
** 0, or EXIT_INPUT after naming the sde or dopri5 layer that stops it. */
int drv_ml_ok(const ir_model *m);

int cmd_check(const drv_opts *o);
int cmd_init(const drv_opts *o);
int cmd_run(const drv_opts *o);      /* logprob, encode, decode */
int cmd_sample(const drv_opts *o);
int cmd_build(const drv_opts *o);
int cmd_dump(const drv_opts *o);
int cmd_bench(const drv_opts *o);
int cmd_train(const drv_opts *o);    /* train.c */
int cmd_toy(const drv_opts *o);

#endif
