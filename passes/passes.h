/*
** passes/passes.h: optimisation passes, one file each.
**
** A pass is a function over one graph. The pipeline runs them on every
** entry of a program in a fixed order; each is switchable by name and all
** optional ones are off at -O0. pass_prep and pass_memplan always run last:
** code generation needs their results (ir_node.prep, ir_node.offset).
*/
#ifndef FLOWC_PASSES_H
#define FLOWC_PASSES_H

#include <stdio.h>

#include "ir.h"

typedef struct pass_info {
  const char *name;
  void (*run)(ir_graph *g);
  int min_opt;              /* runs at -O<min_opt> and above */
} pass_info;

void pass_dce(ir_graph *g);      /* drop nodes no output depends on */
void pass_cse(ir_graph *g);      /* merge identical nodes */
void pass_fold(ir_graph *g);     /* fold constant-only arithmetic */
void pass_perm(ir_graph *g);     /* fold permutations into indexing and weights */
void pass_affine(ir_graph *g);   /* fold per-column affine maps into linear maps */
void pass_fuse(ir_graph *g);     /* compute elementwise ops in their user's loop */
void pass_prep(ir_graph *g);     /* number the parameter-only nodes */
void pass_memplan(ir_graph *g);  /* scratch offsets, reusing dead buffers */

/* Builds p->train, the gradient graph of log_prob (autodiff.c). Run it
** before pass_pipeline, which then optimises the train graph as well. */
int pass_autodiff(ir_program *p);

const pass_info *pass_table(int *n);
const pass_info *pass_find(const char *name);

/*
** Runs the pipeline for optimisation level opt on every entry of p.
** disabled: comma-separated pass names to skip (or NULL). With stop_after
** set, stops after that pass (for `flowc dump --ir --after`); returns -1 if
** no pass has that name.
*/
int pass_pipeline(ir_program *p, int opt, const char *disabled, const char *stop_after);

#endif
