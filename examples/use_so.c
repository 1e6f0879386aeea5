/*
** examples/use_so.c: a C program that uses a model compiled by
**   flowc build examples/moons.flow -w W.safetensors -o libmoons.so
** through its generated header. No Python, no LLVM: the .so needs only the
** flowc runtime inside it and OpenBLAS.
**
**   cc use_so.c -I. -L. -lmoons -Wl,-rpath,. -o use_so && ./use_so 5 42
*/
#include <stdio.h>
#include <stdlib.h>

#include "moons.h"

int main(int argc, char **argv) {
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 5;
  uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
  char err[256];
  moons_model *m = moons_open(NULL, err, sizeof err);   /* built-in weights */
  if (!m) {
    fprintf(stderr, "use_so: %s\n", err);
    return 1;
  }
  float *x = malloc(n * MOONS_DIM * sizeof *x), *lp = malloc(n * sizeof *lp);
  float *lp2 = malloc(n * sizeof *lp2);
  int rc = moons_sample(m, n, seed, NULL, x, lp);
  if (!rc) rc = moons_log_prob(m, n, x, NULL, lp2);   /* the density of what we drew */
  for (size_t i = 0; !rc && i < n; i++) {
    for (size_t j = 0; j < MOONS_DIM; j++) printf("%.6g ", x[i * MOONS_DIM + j]);
    printf("| %.6g %.6g\n", lp[i], lp2[i]);
  }
  moons_close(m);
  free(x);
  free(lp);
  free(lp2);
  return rc ? 1 : 0;
}
