/*
** ir/dump.c: the text form of the IR, one node a line:
**
**   %3 = linear %0, %1, %2          [B,64]   @128 prep=-
**
** Shapes are [B,n] for batch and [rows,n] for param tensors; "@k" is the
** scratch offset given by pass_memplan, "#q" the prep index of pass_prep,
** "fused" a node pass_fuse computes inside its user's loop.
** Stable across runs: golden tests compare it as text.
*/
#include "ir.h"

static void attrs(FILE *f, const ir_node *x, const ir_program *p) {
  switch (x->op) {
  case IR_INPUT: fprintf(f, " slot=%d", x->i0); break;
  case IR_PARAM:
    if (p) fprintf(f, " %s", p->params[x->i0].name);
    else fprintf(f, " p%d", x->i0);
    break;
  case IR_CONST: fprintf(f, " %.9g", x->f0); break;
  case IR_SLICE: fprintf(f, " lo=%d", x->i0); break;
  case IR_RQS: fprintf(f, " bins=%d bound=%g%s", x->i0, x->f0, x->i1 ? " inverse" : ""); break;
  case IR_GATHER:
    if (x->idx) {
      fprintf(f, " idx=[");
      for (int i = 0; i < x->n; i++) fprintf(f, "%s%d", i ? "," : "", x->idx[i]);
      fprintf(f, "]");
    }
    if (x->i1) fprintf(f, " inverse");
    break;
  case IR_LINEAR:
    if (x->idx) {
      fprintf(f, " prefix=[");
      for (int i = 0; i < x->n; i++) fprintf(f, "%s%d", i ? "," : "", x->idx[i]);
      fprintf(f, "]");
    }
    break;
  case IR_D2ACT: fprintf(f, " %s", ir_op_name((ir_op)x->i0)); break;
  case IR_SPECNORM: fprintf(f, " lipschitz=%g", x->f0); break;
  case IR_PSCALE: fprintf(f, x->i0 ? " columns" : " rows"); break;
  case IR_LOGDET: fprintf(f, " D=%d", x->i0); break;
  case IR_FIX_BEGIN: fprintf(f, " layer=%d", x->i1); break;
  case IR_FIX_END:
    if (x->i2 == 1) fprintf(f, " runs=%d", x->i0);
    else if (x->i2 == 2) fprintf(f, " iters=%d exact", x->i0);
    else fprintf(f, " iters=%d tol=%g", x->i0, x->f0);
    break;
  case IR_SDE_NOISE: fprintf(f, " layer=%d", x->i0); break;
  case IR_TRACE_COEF: fprintf(f, " D=%d", x->i0); break;
  case IR_ODE_CTRL: fprintf(f, " rtol=%g atol=%g tend=%d", x->f0, x->f1, x->i0); break;
  case IR_TEMB:
    fprintf(f, " %s", x->i1 ? "sincos" : "scalar");
    if (!x->nargs) fprintf(f, " t0=%.9g dt=%.9g", x->f0, x->f1);
    break;
  default: break;
  }
}

static void dump_node(FILE *f, const ir_node *x, const ir_program *p) {
  fprintf(f, "  %%%d = %s", x->id, ir_op_name(x->op));
  for (int k = 0; k < x->nargs; k++) fprintf(f, "%s%%%d", k ? ", " : " ", x->args[k]->id);
  attrs(f, x, p);
  if (x->batch) fprintf(f, "  [B,%d]", x->n);
  else fprintf(f, "  [%d,%d]", x->rows, x->n);
  if (x->offset >= 0) fprintf(f, " @%ld", x->offset);
  if (x->prep >= 0) fprintf(f, " #%d", x->prep);
  if (x->fused) fprintf(f, " fused");
  fputc('\n', f);
}

static void dump(FILE *f, const ir_graph *g, const ir_program *p) {
  for (int i = 0; i < g->nnodes; i++) dump_node(f, g->nodes[i], p);
  fprintf(f, "  out");
  for (int k = 0; k < g->nouts; k++) fprintf(f, "%s%%%d", k ? ", " : " ", g->outs[k]->id);
  fputc('\n', f);
  if (g->scratch) fprintf(f, "  scratch %ld floats/row\n", g->scratch);
}

void ir_dump_graph(FILE *f, const ir_graph *g) { dump(f, g, NULL); }

void ir_dump_program(FILE *f, const ir_program *p) {
  const ir_model *m = p->model;
  fprintf(f, "program %s dim %d context %d params %d\n", m->name, m->dim, m->context,
          p->nparams);
  for (int i = 0; i < p->nparams; i++) {
    const ir_param *pa = &p->params[i];
    fprintf(f, "  param %d %s %s [%d", i, pa->name, pa->dtype == IR_F32 ? "f32" : "i64",
            pa->shape[0]);
    if (pa->ndim == 2) fprintf(f, ",%d", pa->shape[1]);
    fprintf(f, "]\n");
  }
  for (int e = 0; e < IR_NENTRY; e++) {
    fprintf(f, "entry %s%s\n", ir_entry_name((ir_entry)e), p->entry[e] ? "" : ": none (no density)");
    if (p->entry[e]) dump(f, p->entry[e], p);
  }
}
