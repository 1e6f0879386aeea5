/*
** passes/pipeline.c: the pass table and the order passes run in.
*/
#include "passes.h"

#include <string.h>

static const pass_info passes[] = {
  {"fold", pass_fold, 1},
  {"perm", pass_perm, 1},
  {"affine", pass_affine, 1},
  {"cse", pass_cse, 1},
  {"dce", pass_dce, 1},
  {"fuse", pass_fuse, 1},
  {"prep", pass_prep, 0},      /* required by codegen */
  {"memplan", pass_memplan, 0},
};

const pass_info *pass_table(int *n) {
  *n = (int)(sizeof passes / sizeof passes[0]);
  return passes;
}

const pass_info *pass_find(const char *name) {
  int n;
  const pass_info *t = pass_table(&n);
  for (int i = 0; i < n; i++)
    if (strcmp(t[i].name, name) == 0) return &t[i];
  return NULL;
}

/* Is name in the comma-separated list? */
static int listed(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *s = list; s && *s;) {
    const char *e = strchr(s, ',');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    if (len == n && strncmp(s, name, n) == 0) return 1;
    s = e ? e + 1 : NULL;
  }
  return 0;
}

int pass_pipeline(ir_program *p, int opt, const char *disabled, const char *stop_after) {
  if (stop_after && !pass_find(stop_after)) return -1;
  int n;
  const pass_info *t = pass_table(&n);
  for (int i = 0; i < n; i++) {
    int required = t[i].min_opt == 0;
    if (!required && (opt < t[i].min_opt || listed(disabled, t[i].name))) continue;
    for (int e = 0; e < IR_NENTRY; e++)
      if (p->entry[e]) t[i].run(p->entry[e]);
    if (p->train) t[i].run(p->train);
    if (stop_after && strcmp(stop_after, t[i].name) == 0) break;
  }
  return 0;
}
