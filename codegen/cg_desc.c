/*
** codegen/cg_desc.c: ir_program -> rt_desc.
**
** Parameters map one to one (ir_init and rt_init share their order). Each
** entry's prep program (and the train graph's, in desc->train) is its
** parameter-class nodes with node->prep >= 0, in prep order; an argument is an IR_PARAM (its parameter index) or an
** earlier prep node (nparams + its prep index). IR_SPECNORM is mode 1 (one
** power step that advances sn_u) in the train graph's program only, mode
** 0 (to convergence, u read only) in the entries'. A param-class
** IR_LINEAR (a cnf's time columns, x W^T + b) is RT_PREP_LINEAR; the
** argument-less IR_TEMB (the table of the times t0 + r dt) is RT_PREP_TEMB
** with f = t0, f2 = dt, iargs[0] = its kind. IR_TRACE_COEF (the
** coefficients of a cnf's fused exact trace) is RT_PREP_TRACE_COEF with
** iargs[0] = D (its i0). The train graph's noise layout
** (ir_program.noise) is copied into desc->noise.
*/
#define _GNU_SOURCE
#include "cg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int prep_op(ir_op op, rt_prep_op *out) {
  switch (op) {
  case IR_EXP: *out = RT_PREP_EXP; return 0;
  case IR_NEG: *out = RT_PREP_NEG; return 0;
  case IR_ROWSUM: *out = RT_PREP_SUM; return 0;
  case IR_ADD: *out = RT_PREP_ADD; return 0;
  case IR_SUB: *out = RT_PREP_SUB; return 0;
  case IR_MUL: *out = RT_PREP_MUL; return 0;
  case IR_CONST: *out = RT_PREP_CONST; return 0;
  case IR_LU_W: *out = RT_PREP_LU_W; return 0;
  case IR_LU_WINV: *out = RT_PREP_LU_WINV; return 0;
  case IR_MADE_MASK: *out = RT_PREP_MADE_MASK; return 0;
  case IR_SPECNORM: *out = RT_PREP_SPECNORM; return 0;
  case IR_PGATHER: *out = RT_PREP_GATHER; return 0;
  case IR_PSCALE: *out = RT_PREP_SCALE; return 0;
  case IR_LINEAR: *out = RT_PREP_LINEAR; return 0;
  case IR_TEMB: *out = RT_PREP_TEMB; return 0;
  case IR_TRACE_COEF: *out = RT_PREP_TRACE_COEF; return 0;
  default: return -1;
  }
}

/* Appends a gather's rows + n indices to the descriptor's pool; their
** offset, or -1 when out of memory. */
static int pool_add(rt_desc *D, const ir_node *x) {
  int len = x->rows + x->n, off = D->nidx;
  int *idx = realloc(D->idx, (size_t)(off + len) * sizeof *idx);
  if (!idx) return -1;
  memcpy(idx + off, x->idx, (size_t)len * sizeof *idx);
  D->idx = idx;
  D->nidx = off + len;
  return off;
}

/* ent: an entry, or RT_NENTRY for the train graph */
static int entry_desc(const ir_program *p, int ent, rt_desc *D, char *err, size_t errlen) {
  rt_entry_desc *d = ent < RT_NENTRY ? &D->entry[ent] : &D->train;
  const ir_graph *g = ent < RT_NENTRY ? p->entry[ent] : p->train;
  if (!g) return 0;
  d->scratch = g->scratch;
  d->has_ld = ent < RT_NENTRY && g->nouts == 2;
  d->nprep = g->nprep;
  if (g->nprep <= 0) return 0;
  d->prep = calloc((size_t)g->nprep, sizeof *d->prep);
  char *seen = calloc((size_t)g->nprep, 1);
  if (!d->prep || !seen) {
    free(seen);
    return cg_fail(err, errlen, "out of memory");
  }
  int rc = 0;
  for (int i = 0; i < g->nnodes && !rc; i++) {
    const ir_node *x = g->nodes[i];
    if (x->batch || x->op == IR_PARAM || x->prep < 0) continue;
    const char *en = ent < RT_NENTRY ? ir_entry_name((ir_entry)ent) : "train";
    if (x->prep >= g->nprep || seen[x->prep]) {
      rc = cg_fail(err, errlen, "%s: node %d has prep index %d (program of %d)", en, x->id,
                x->prep, g->nprep);
      break;
    }
    seen[x->prep] = 1;
    rt_prep *r = &d->prep[x->prep];
    if (prep_op(x->op, &r->op) || (x->op == IR_TEMB && x->nargs != 0)) {
      rc = cg_fail(err, errlen, "%s: parameter-only %s (node %d) cannot be precomputed", en,
                ir_op_name(x->op), x->id);
      break;
    }
    r->nargs = x->nargs;
    r->rows = x->rows;
    r->n = x->n;
    r->f = x->op == IR_CONST || x->op == IR_SPECNORM ? x->f0 : 0;
    if (x->op == IR_SPECNORM) r->iargs[0] = ent == RT_NENTRY;   /* lipschitz; mode */
    if (x->op == IR_TEMB) {
      r->f = x->f0;           /* t0, dt, kind: see rt_temb.h */
      r->f2 = x->f1;
      r->iargs[0] = x->i1;
    }
    if (x->op == IR_TRACE_COEF || x->op == IR_PSCALE) r->iargs[0] = x->i0;   /* D; axis */
    if (x->op == IR_PGATHER && (r->iargs[0] = pool_add(D, x)) < 0) {
      rc = cg_fail(err, errlen, "out of memory");
      break;
    }
    if (x->op == IR_MADE_MASK) {
      r->iargs[0] = x->i0;    /* kind, D, C, outputs per dim: see rt_made.h */
      r->iargs[1] = x->i1;
      r->iargs[2] = x->i2;
      r->iargs[3] = (int)x->f0;
    }
    for (int k = 0; k < x->nargs; k++) {
      const ir_node *a = x->args[k];
      if (a->batch) {
        rc = cg_fail(err, errlen, "%s: parameter-only node %d has a batch argument", en, x->id);
        break;
      }
      if (a->op == IR_PARAM) {
        if (a->i0 < 0 || a->i0 >= p->nparams) {
          rc = cg_fail(err, errlen, "%s: parameter index %d out of range", en, a->i0);
          break;
        }
        r->args[k] = a->i0;
      } else if (a->prep >= 0 && a->prep < x->prep) {
        r->args[k] = p->nparams + a->prep;
      } else {
        rc = cg_fail(err, errlen, "%s: prep node %d uses node %d with prep index %d", en, x->id,
                  a->id, a->prep);
        break;
      }
    }
  }
  for (int q = 0; q < g->nprep && !rc; q++)
    if (!seen[q])
      rc = cg_fail(err, errlen, "%s: prep index %d has no node",
                ent < RT_NENTRY ? ir_entry_name((ir_entry)ent) : "train", q);
  free(seen);
  return rc;
}

/* ir_noise -> rt_noise (same kinds, same order). */
static int noise_desc(const ir_program *p, rt_desc *d) {
  if (p->nnoise <= 0) return 0;
  d->noise = calloc((size_t)p->nnoise, sizeof *d->noise);
  if (!d->noise) return -1;
  d->nnoise = p->nnoise;
  d->noise_width = p->noise_width;
  for (int k = 0; k < p->nnoise; k++) {
    const ir_noise *s = &p->noise[k];
    rt_noise *t = &d->noise[k];
    switch (s->kind) {
    case IR_NOISE_ROULETTE: t->kind = RT_NOISE_ROULETTE; break;
    case IR_NOISE_GAUSS: t->kind = RT_NOISE_GAUSS; break;
    case IR_NOISE_BETA: t->kind = RT_NOISE_BETA; break;
    default: t->kind = RT_NOISE_RADEMACHER; break;
    }
    t->n = s->n;
    t->terms = t->kind == RT_NOISE_ROULETTE ? s->terms : 0;
    t->p = t->kind == RT_NOISE_ROULETTE ? s->p : 0;
    t->a = t->kind == RT_NOISE_BETA ? s->a : 0;
    t->b = t->kind == RT_NOISE_BETA ? s->b : 0;
  }
  return 0;
}

rt_desc *cg_desc_err(const ir_program *p, char *err, size_t errlen) {
  rt_desc *d = calloc(1, sizeof *d);
  if (!d) {
    cg_fail(err, errlen, "out of memory");
    return NULL;
  }
  const ir_model *m = p->model;
  d->name = strdup(m && m->name ? m->name : "model");
  d->dim = m ? m->dim : 0;
  d->context = m ? m->context : 0;
  d->tile = cg_tile(p);
  d->nparams = p->nparams;
  if (!d->name) goto oom;
  if (p->nparams > 0) {
    d->params = calloc((size_t)p->nparams, sizeof *d->params);
    if (!d->params) goto oom;
  }
  for (int i = 0; i < p->nparams; i++) {
    const ir_param *s = &p->params[i];
    rt_param_desc *t = &d->params[i];
    t->name = strdup(s->name ? s->name : "");
    if (!t->name) goto oom;
    t->dtype = s->dtype == IR_I64 ? RT_I64 : RT_F32;
    t->ndim = s->ndim;
    t->shape[0] = s->shape[0];
    t->shape[1] = s->shape[1];
    t->init = (rt_init)s->init;
    t->fan_in = s->fan_in;
    t->layer = s->layer;
    t->seed = s->seed;
    if (s->init == INIT_PERM_LIST && s->values && s->shape[0] > 0) {
      t->values = malloc(sizeof *t->values * (size_t)s->shape[0]);
      if (!t->values) goto oom;
      memcpy(t->values, s->values, sizeof *t->values * (size_t)s->shape[0]);
    }
  }
  for (int e = 0; e < RT_NENTRY; e++)
    if (entry_desc(p, e, d, err, errlen)) {
      rt_desc_free(d);
      return NULL;
    }
  if (p->train) {
    d->has_train = 1;
    if (entry_desc(p, RT_NENTRY, d, err, errlen)) {
      rt_desc_free(d);
      return NULL;
    }
    if (noise_desc(p, d)) goto oom;
  }
  return d;
oom:
  cg_fail(err, errlen, "out of memory");
  rt_desc_free(d);
  return NULL;
}

rt_desc *cg_desc(const ir_program *p) {
  char err[256];
  rt_desc *d = cg_desc_err(p, err, sizeof err);
  if (!d) fprintf(stderr, "flowc: %s\n", err);
  return d;
}
