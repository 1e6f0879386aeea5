/*
** tests/test_actnorm_init.c: data-dependent actnorm initialisation. With
** the whole training set as the first batch and a learning rate too small
** to move anything, the density-direction output of the actnorm nearest
** the base has zero mean and unit variance over the training data.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "rt.h"
#include "testutil.h"

Test(actnorm_init, first_batch_is_standardised) {
  FILE *f = fopen(tu_path("an.flow"), "w");
  fputs("model an { dim 3; flow { actnorm; affine_coupling(net = mlp(hidden = [8])); "
        "permute(reverse); actnorm; } }\n", f);
  fclose(f);
  float x[300 * 3];
  for (int i = 0; i < 300; i++)
    for (int j = 0; j < 3; j++) x[i * 3 + j] = (float)(5 + 3 * j + (j + 1) * sin(i * 1.7 + j));
  long shape[2] = {300, 3};
  char err[256], cmd[2048], *out;
  cr_assert_eq(rt_npy_save(tu_path("x.npy"), x, 2, shape, err, sizeof err), 0);
  cr_assert_eq(rt_npy_save(tu_path("v.npy"), x, 2, shape, err, sizeof err), 0);
  snprintf(cmd, sizeof cmd, "%s train %s --data %s --valid %s --batch 300 --steps 1 --lr 1e-20 -o %s",
           FLOWC_EXE, tu_path("an.flow"), tu_path("x.npy"), tu_path("v.npy"), tu_path("w.safetensors"));
  int rc = tu_run(cmd, &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  snprintf(cmd, sizeof cmd, "%s encode %s -w %s --data %s -o %s", FLOWC_EXE, tu_path("an.flow"),
           tu_path("w.safetensors"), tu_path("x.npy"), tu_path("z.npy"));
  rc = tu_run(cmd, &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rt_array z = {0};
  cr_assert_eq(rt_array_load(tu_path("z.npy"), &z, err, sizeof err), 0, "%s", err);
  for (int j = 0; j < 3; j++) {
    double m = 0, v = 0;
    for (int i = 0; i < 300; i++) m += z.data[i * 3 + j];
    m /= 300;
    for (int i = 0; i < 300; i++) v += (z.data[i * 3 + j] - m) * (z.data[i * 3 + j] - m);
    v /= 300;
    cr_assert(fabs(m) < 1e-3 && fabs(v - 1) < 1e-3, "column %d: mean %g variance %g", j, m, v);
  }
  rt_array_free(&z);
}
