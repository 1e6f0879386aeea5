/*
** tests/test_golden_ir.c: the IR of each example, after lowering alone
** (-O0) and after the whole pipeline (-O2), against golden text in
** tests/golden/ir/. FLOWC_UPDATE_GOLDEN=1 rewrites the files; read the
** diff before committing one.
*/
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"
#include "ir.h"
#include "passes.h"
#include "testutil.h"

static char *dump(const char *example, int opt) {
  char path[512];
  snprintf(path, sizeof path, FLOWC_SOURCE_DIR "/examples/%s.flow", example);
  ir_arena *A = ir_arena_new();
  fe_result r;
  cr_assert_eq(fe_compile_file(A, path, &r), 0, "%s does not compile", path);
  char err[256];
  ir_program *p = ir_lower(A, &r.module->models[0], err, sizeof err);
  cr_assert(p, "%s", err);
  pass_pipeline(p, opt, NULL, NULL);
  char *text;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  ir_dump_program(f, p);
  fclose(f);
  ir_arena_free(A);
  return text;
}

static void golden(const char *example, int opt) {
  char path[512];
  snprintf(path, sizeof path, FLOWC_SOURCE_DIR "/tests/golden/ir/%s.O%d.ir", example, opt);
  char *got = dump(example, opt);
  if (getenv("FLOWC_UPDATE_GOLDEN")) {
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(got, f);
    fclose(f);
  }
  char *want = tu_read_file(path, NULL);
  cr_assert(want, "no golden file %s", path);
  if (strcmp(got, want)) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    size_t line = 1;
    for (size_t k = 0; k < i; k++) line += got[k] == '\n';
    cr_assert_fail("%s differs from the golden file at line %zu", path, line);
  }
  free(got);
  free(want);
}

Test(golden_ir, moons) { golden("moons", 0); golden("moons", 2); }
Test(golden_ir, glow) { golden("glow", 2); }
Test(golden_ir, spline) { golden("spline", 2); }
Test(golden_ir, conditional) { golden("conditional", 0); golden("conditional", 2); }
