/* tests/test_rt_data.c: .npy and CSV data files. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "testutil.h"

static char *tmp(const char *name) {
  static char buf[4][256];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 256, "%s/%s", tu_tmpdir(), name);
  return p;
}

static void write_file(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  if (n) cr_assert_eq(fwrite(b, 1, n, f), n);
  fclose(f);
}

/* A .npy file by hand: version major.0, dict text, raw data. */
static void write_npy(const char *path, int major, const char *dict, const void *data, size_t dlen) {
  size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
  size_t total = (pre + dl + 1 + 63) / 64 * 64, hlen = total - pre;
  unsigned char *b = malloc(total + dlen);
  memcpy(b, "\x93NUMPY", 6);
  b[6] = (unsigned char)major;
  b[7] = 0;
  b[8] = (unsigned char)hlen;
  b[9] = (unsigned char)(hlen >> 8);
  if (major != 1) { b[10] = 0; b[11] = 0; }
  memcpy(b + pre, dict, dl);
  memset(b + pre + dl, ' ', hlen - dl - 1);
  b[total - 1] = '\n';
  memcpy(b + total, data, dlen);
  write_file(path, b, total + dlen);
  free(b);
}

static void expect_fail(const char *path, const char *needle) {
  rt_array a;
  char err[512] = "";
  cr_assert_neq(rt_array_load(path, &a, err, sizeof err), 0, "accepted %s", path);
  cr_assert(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
  cr_assert(strstr(err, path), "message '%s' does not name the file", err);
  cr_assert_null(a.data);
}

Test(npy, round_trip_f32) {
  float v[15];
  for (int i = 0; i < 15; i++) v[i] = (float)i * 0.5f - 3.0f;
  long shape[2] = { 5, 3 };
  char err[256] = "";
  const char *path = tmp("a.npy");
  cr_assert_eq(rt_npy_save(path, v, 2, shape, err, sizeof err), 0, "%s", err);
  size_t len;
  char *buf = tu_read_file(path, &len);
  cr_assert_eq(len, 128 + 60);
  cr_assert_eq(memcmp(buf, "\x93NUMPY\x01\x00", 8), 0);
  cr_assert_eq((unsigned char)buf[8] | (unsigned char)buf[9] << 8, 118);
  cr_assert_eq(strncmp(buf + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 3), }", 59), 0);
  cr_assert_eq(buf[127], '\n');
  cr_assert_eq(buf[126], ' ');
  free(buf);
  rt_array a;
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert_eq(a.ndim, 2);
  cr_assert_eq(a.rows, 5);
  cr_assert_eq(a.cols, 3);
  cr_assert_eq(memcmp(a.data, v, sizeof v), 0);
  rt_array_free(&a);
  char t[300];
  snprintf(t, sizeof t, "%s.tmp", path);
  cr_assert_null(fopen(t, "rb"));
  /* 1-D and 3-D */
  long s1 = 7, s3[3] = { 1, 3, 5 };
  cr_assert_eq(rt_npy_save(path, v, 1, &s1, err, sizeof err), 0);
  buf = tu_read_file(path, &len);
  cr_assert(strstr(buf + 10, "'shape': (7,), }"));
  free(buf);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.ndim == 1 && a.rows == 7 && a.cols == 1 && a.data[6] == v[6]);
  rt_array_free(&a);
  cr_assert_eq(rt_npy_save(path, v, 3, s3, err, sizeof err), 0);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.ndim == 3 && a.rows == 1 && a.cols == 15 && a.shape[2] == 5 && a.data[14] == v[14]);
  rt_array_free(&a);
  /* zero rows */
  long s0[2] = { 0, 3 };
  cr_assert_eq(rt_npy_save(path, NULL, 2, s0, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.rows == 0 && a.cols == 3);
  rt_array_free(&a);
  cr_assert_neq(rt_npy_save("/nonexistent-dir/a.npy", v, 1, &s1, err, sizeof err), 0);
  cr_assert(strstr(err, "/nonexistent-dir/a.npy"));
}

Test(npy, f64_and_versions) {
  double v[8] = { 1, -2, 3.5, 1e-3, 1e30, -0.0, 7, 8 };
  const char *path = tmp("b.npy");
  char err[256] = "";
  rt_array a;
  for (int major = 1; major <= 3; major++) {
    write_npy(path, major, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v);
    cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%d: %s", major, err);
    cr_assert(a.rows == 4 && a.cols == 2);
    for (int i = 0; i < 8; i++) cr_assert_eq(a.data[i], (float)v[i]);
    rt_array_free(&a);
  }
  /* key order, double quotes, no trailing comma, 'L' sizes, '|' padding all fine */
  write_npy(path, 1, "{\"shape\": (2L, 4L), \"fortran_order\": False, \"descr\": \"<f8\"}", v, sizeof v);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.rows == 2 && a.cols == 4);
  rt_array_free(&a);
  /* a .npy file with another extension is recognised by its magic */
  const char *odd = tmp("b.data");
  write_npy(odd, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", v, 8);
  cr_assert_eq(rt_array_load(odd, &a, err, sizeof err), 0, "%s", err);
  cr_assert_eq(a.rows, 2);
  rt_array_free(&a);
}

Test(npy, refusals) {
  double v[8] = { 0 };
  const char *path = tmp("c.npy");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': True, 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "Fortran");
  write_npy(path, 1, "{'descr': '>f8', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "big-endian");
  write_npy(path, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "dtype '<i8' is not supported");
  write_npy(path, 1, "{'descr': '|O', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "not supported");
  write_npy(path, 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", v, 16);
  expect_fail(path, "structured");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v - 1);
  expect_fail(path, "truncated");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (400000000000, 2), }", v, 8);
  expect_fail(path, "truncated");
  write_npy(path, 1, "{'descr': '<f8', 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "lacks 'fortran_order'");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), 'x': 1}", v, sizeof v);
  expect_fail(path, "unexpected key");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2, }", v, sizeof v);
  expect_fail(path, "bad 'shape'");
  write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", v, 8);
  expect_fail(path, "more than 8");
  write_npy(path, 4, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", v, sizeof v);
  expect_fail(path, "version 4");
  write_file(path, "\x93NUMPY\x01\x00\xff\x00{'descr'", 17);
  expect_fail(path, "truncated .npy header");
  write_file(path, "\x93NUM", 5);
  expect_fail(path, "not a .npy file");
  write_file(path, "", 0);
  expect_fail(path, "not a .npy file");
  expect_fail("/nonexistent/x.npy", "cannot open");
  /* every prefix of a good file is refused */
  float f[6] = { 1, 2, 3, 4, 5, 6 };
  long sh[2] = { 3, 2 };
  char err[256];
  cr_assert_eq(rt_npy_save(path, f, 2, sh, err, sizeof err), 0);
  size_t len;
  char *buf = tu_read_file(path, &len);
  const char *cut = tmp("cut.npy");
  for (size_t k = 0; k < len; k++) {
    write_file(cut, buf, k);
    rt_array a;
    cr_assert_neq(rt_array_load(cut, &a, err, sizeof err), 0, "prefix %zu accepted", k);
  }
  free(buf);
}

Test(csv, parse) {
  const char *path = tmp("d.csv");
  const char *text = "x,y, z\r\n1,2,3\r\n\n 4.5 , -5e-1,6\n7,8,9";
  write_file(path, text, strlen(text));
  rt_array a;
  char err[256] = "";
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.rows == 3 && a.cols == 3 && a.ndim == 2);
  float want[9] = { 1, 2, 3, 4.5f, -0.5f, 6, 7, 8, 9 };
  cr_assert_eq(memcmp(a.data, want, sizeof want), 0);
  rt_array_free(&a);
  /* no header */
  write_file(path, "1\n2\n", 4);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(a.rows == 2 && a.cols == 1 && a.data[1] == 2);
  rt_array_free(&a);
  /* non-finite values are kept; the check finds them */
  write_file(path, "1,nan\n2,3\n", 10);
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  cr_assert(isnan(a.data[1]));
  cr_assert_neq(rt_array_check_finite(&a, "d.csv", err, sizeof err), 0);
  cr_assert(strstr(err, "d.csv: row 0, column 1 is NaN"), "%s", err);
  a.data[1] = 0;
  cr_assert_eq(rt_array_check_finite(&a, "d.csv", err, sizeof err), 0);
  rt_array_free(&a);
}

Test(csv, refusals) {
  const char *path = tmp("e.csv");
  write_file(path, "a,b\n1,2\n3,4\n5\n", 14);
  expect_fail(path, ":4: 1 values, the first row has 2");
  write_file(path, "1,2\n3,x\n", 8);
  expect_fail(path, ":2: 'x' is not a number");
  write_file(path, "1,2\n3,4,\n", 9);
  expect_fail(path, "is not a number");
  write_file(path, "", 0);
  expect_fail(path, "no rows");
  write_file(path, "a,b\n\n", 5);
  expect_fail(path, "no rows");
}
