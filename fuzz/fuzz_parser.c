/*
** fuzz/fuzz_parser.c: libFuzzer entry for the frontend.
**
**   clang -fsanitize=fuzzer,address ... fuzz_parser.c -lflowc_frontend ...
**
** Built with -DFUZZ_MAIN it is a plain program instead: it runs each file
** named on the command line through the same entry point and prints the
** diagnostics, to replay a crash without libFuzzer.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "frontend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ir_arena *A = ir_arena_new();
  fe_result r;
  int n = fe_compile_text(A, "fuzz.flow", (const char *)data, size, &r);
  /* The contract: errors and module are exclusive, and every diagnostic
  ** is printable. */
  if ((n == 0) != (r.module != NULL) || n != r.ndiags) __builtin_trap();
  FILE *f = fopen("/dev/null", "w");
  if (f) {
    fe_print_diags(f, &r);
    fclose(f);
  }
  ir_arena_free(A);
  return 0;
}

#ifdef FUZZ_MAIN
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    ir_arena *A = ir_arena_new();
    fe_result r;
    int n = fe_compile_file(A, argv[i], &r);
    fe_print_diags(stdout, &r);
    if (!n) {
      const ir_model *m = ir_module_find(r.module, NULL);
      printf("%s: ok, %d models, first '%s' with %d layers\n", argv[i],
             r.module->nmodels, m->name, m->nlayers);
    }
    ir_arena_free(A);
  }
  return 0;
}
#endif
