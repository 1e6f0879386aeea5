/*
** tests/test_cli.c: the flowc command line end to end: every command on
** the examples, bad input refused with exit 1 and no output left behind,
** usage errors exit 2, sampling reproducible across thread counts, and a
** built shared object used from the example C program.
*/
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt.h"
#include "testutil.h"

#define EX FLOWC_SOURCE_DIR "/examples/"

static rt_array load(const char *path) {
  rt_array a = {0};
  char err[512];
  cr_assert_eq(rt_array_load(path, &a, err, sizeof err), 0, "%s", err);
  return a;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  fwrite(data, 1, n, f);
  fclose(f);
}

static void init_weights(const char *flow, const char *w) {
  char *out;
  int rc = tu_flowc(&out, "init %s --seed 3 -o %s", flow, w);
  cr_assert_eq(rc, 0, "init: %s", out);
  free(out);
}

Test(cli, check_examples) {
  static const char *const files[] = {"moons", "glow", "spline", "conditional"};
  for (int i = 0; i < 4; i++) {
    char *out;
    int rc = tu_flowc(&out, "check " EX "%s.flow", files[i]);
    cr_assert_eq(rc, 0, "%s: %s", files[i], out);
    cr_assert(strstr(out, "parameters"), "%s", out);
    free(out);
  }
  char *out;
  tu_flowc(&out, "check " EX "moons.flow");
  cr_assert(strstr(out, "model moons: dim 2, context 0, base normal, 9 layers"), "%s", out);
  free(out);
}

/* Sample, then score the samples: log_prob of sample agrees with logprob;
** encode/decode round trip through files. */
Test(cli, sample_logprob_encode_decode) {
  char w[512];
  snprintf(w, sizeof w, "%s", tu_path("m.safetensors"));
  init_weights(EX "spline.flow", w);
  char *out;
  int rc = tu_flowc(&out, "sample " EX "spline.flow -w %s -n 500 --seed 9 -o %s --logprob %s", w,
                 tu_path("x.npy"), tu_path("lps.npy"));
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = tu_flowc(&out, "logprob " EX "spline.flow -w %s --data %s -o %s", w, tu_path("x.npy"), tu_path("lp.npy"));
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rt_array a = load(tu_path("lps.npy")), b = load(tu_path("lp.npy"));
  cr_assert_eq(a.rows, 500);
  cr_assert(tu_max_rel_err(a.data, b.data, 500) < 1e-4);
  rc = tu_flowc(&out, "encode " EX "spline.flow -w %s --data %s -o %s --logdet %s", w, tu_path("x.npy"),
             tu_path("z.npy"), tu_path("ld.npy"));
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = tu_flowc(&out, "decode " EX "spline.flow -w %s --data %s -o %s --logdet %s", w, tu_path("z.npy"),
             tu_path("xr.npy"), tu_path("ldd.npy"));
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rt_array x = load(tu_path("x.npy")), xr = load(tu_path("xr.npy"));
  rt_array le = load(tu_path("ld.npy")), ld = load(tu_path("ldd.npy"));
  cr_assert(tu_max_rel_err(xr.data, x.data, 3000) < 1e-4);
  for (int i = 0; i < 500; i++) cr_assert(fabsf(le.data[i] + ld.data[i]) < 1e-3);
  rt_array_free(&a); rt_array_free(&b); rt_array_free(&x); rt_array_free(&xr);
  rt_array_free(&le); rt_array_free(&ld);
}

Test(cli, sample_same_for_any_thread_count) {
  char w[512];
  snprintf(w, sizeof w, "%s", tu_path("c.safetensors"));
  init_weights(EX "conditional.flow", w);
  float ctx[3] = {0.5f, -1, 2};
  long shape[2] = {1, 3};
  char err[256];
  cr_assert_eq(rt_npy_save(tu_path("ctx.npy"), ctx, 2, shape, err, sizeof err), 0);
  for (int t = 1; t <= 3; t++) {
    char name[32];
    snprintf(name, sizeof name, "s%d.npy", t);
    char *out;
    int rc = tu_flowc(&out, "sample " EX "conditional.flow -w %s -n 777 --seed 5 --threads %d --context %s -o %s",
                   w, t, tu_path("ctx.npy"), tu_path(name));
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
  }
  size_t n1, n2, n3;
  char *a = tu_read_file(tu_path("s1.npy"), &n1), *b = tu_read_file(tu_path("s2.npy"), &n2),
       *c = tu_read_file(tu_path("s3.npy"), &n3);
  cr_assert(n1 == n2 && n2 == n3 && !memcmp(a, b, n1) && !memcmp(a, c, n1));
  free(a); free(b); free(c);
}

/* Refused input: exit 1, a message naming the problem, no output file. */
static void refused(const char *args, const char *needle) {
  char *out;
  unlink(tu_path("never.npy"));
  int rc = tu_flowc(&out, "%s", args);
  cr_assert_eq(rc, 1, "exit %d for '%s': %s", rc, args, out);
  cr_assert(strstr(out, needle), "'%s' not in: %s", needle, out);
  cr_assert(access(tu_path("never.npy"), F_OK) != 0, "output left behind");
  free(out);
}

Test(cli, bad_inputs) {
  char w[512];
  snprintf(w, sizeof w, "%s", tu_path("b.safetensors"));
  init_weights(EX "moons.flow", w);
  size_t len;
  char *buf = tu_read_file(w, &len);
  float x[6] = {0, 1, 2, 3, 4, 5};
  long s3[2] = {2, 3}, s2[2] = {3, 2};
  char err[256];
  rt_npy_save(tu_path("wide.npy"), x, 2, s3, err, sizeof err);
  rt_npy_save(tu_path("ok.npy"), x, 2, s2, err, sizeof err);
  /* truncated weights, at several lengths */
  for (size_t cut = 0; cut < len; cut += len / 7 + 1) {
    write_file(tu_path("trunc.safetensors"), buf, cut);
    char args[1024];
    snprintf(args, sizeof args, "logprob " EX "moons.flow -w %s --data %s -o %s",
             tu_path("trunc.safetensors"), tu_path("ok.npy"), tu_path("never.npy"));
    refused(args, "trunc.safetensors");
  }
  /* a mislabelled tensor: rename one inside the header */
  char *p = strstr(buf + 8, "flow.0.net.1.bias");
  cr_assert(p);
  p[5] = '7';
  write_file(tu_path("label.safetensors"), buf, len);
  free(buf);
  write_file(tu_path("empty.npy"), "", 0);
  write_file(tu_path("empty.flow"), "", 0);
  char a[1024];
  snprintf(a, sizeof a, "logprob " EX "moons.flow -w %s --data %s -o %s", tu_path("label.safetensors"),
           tu_path("ok.npy"), tu_path("never.npy"));
  refused(a, "flow.7.net.1.bias");
  snprintf(a, sizeof a, "logprob " EX "moons.flow -w %s --data %s -o %s", w, tu_path("wide.npy"), tu_path("never.npy"));
  refused(a, "wide.npy");
  snprintf(a, sizeof a, "logprob " EX "moons.flow -w %s --data %s -o %s", w, tu_path("empty.npy"), tu_path("never.npy"));
  refused(a, "empty.npy");
  snprintf(a, sizeof a, "logprob %s -w %s --data %s -o %s", tu_path("empty.flow"), w, tu_path("ok.npy"), tu_path("never.npy"));
  refused(a, "empty.flow");
  snprintf(a, sizeof a, "logprob " EX "moons.flow -w %s --data %s -o %s", tu_path("empty.npy"), tu_path("ok.npy"), tu_path("never.npy"));
  refused(a, "empty.npy");
  const char *other = "model other { dim 2; flow { actnorm; } }\n";
  write_file(tu_path("other.flow"), other, strlen(other));
  snprintf(a, sizeof a, "logprob %s -w %s --data %s -o %s", tu_path("other.flow"), w, tu_path("ok.npy"), tu_path("never.npy"));
  refused(a, "flow.0.net.0.weight");
  snprintf(a, sizeof a, "logprob " EX "moons.flow --model nope -w %s --data %s -o %s", w, tu_path("ok.npy"), tu_path("never.npy"));
  refused(a, "nope");
  snprintf(a, sizeof a, "sample " EX "conditional.flow -w %s -n 3 -o %s", w, tu_path("never.npy"));
  refused(a, "context");
}

Test(cli, random_bytes_flow) {
  srand(11);
  for (int t = 0; t < 20; t++) {
    unsigned char junk[300];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)rand();
    write_file(tu_path("junk.flow"), junk, sizeof junk);
    char *out;
    int rc = tu_flowc(&out, "check %s", tu_path("junk.flow"));
    cr_assert_eq(rc, 1, "exit %d: %s", rc, out);
    cr_assert(strstr(out, "junk.flow:"), "%s", out);
    free(out);
  }
}

Test(cli, usage_errors) {
  static const char *const bad[] = {"", "frobnicate x.flow", "check", "sample " EX "moons.flow",
                                    "check " EX "moons.flow --bogus", "sample " EX "moons.flow -n x -o y",
                                    "dump " EX "moons.flow", "dump " EX "moons.flow --ir --after nopass"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *out;
    int rc = tu_flowc(&out, "%s", bad[i]);
    cr_assert_eq(rc, 2, "'%s' exit %d: %s", bad[i], rc, out);
    free(out);
  }
}

Test(cli, dump_ir_and_llvm) {
  char *out;
  int rc = tu_flowc(&out, "dump " EX "moons.flow --ir --after cse");
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "entry log_prob") && strstr(out, "linear"), "%s", out);
  cr_assert_null(strstr(out, "fused"), "fusion runs after cse: %s", out);
  free(out);
  /* after fuse: the coupling's epilogue and the hidden layers' products are
     marked; without it (--disable) nothing is */
  rc = tu_flowc(&out, "dump " EX "moons.flow --ir --after fuse");
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "] fused\n") && strstr(out, "linear") , "%s", out);
  free(out);
  rc = tu_flowc(&out, "dump " EX "moons.flow --ir --after fuse --disable fuse");
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert_null(strstr(out, "fused"), "%s", out);
  free(out);
  rc = tu_flowc(&out, "dump " EX "moons.flow --llvm");
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "define"), "%s", out);
  free(out);
}

/* The example C program against a built .so with weights inside: its
** samples are flowc's samples, its log-densities flowc's. */
Test(cli, shared_object_example) {
  char w[512];
  snprintf(w, sizeof w, "%s", tu_path("so.safetensors"));
  init_weights(EX "moons.flow", w);
  char *out;
  int rc = tu_flowc(&out, "build " EX "moons.flow -w %s -o %s", w, tu_path("libmoons.so"));
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  cr_assert(access(tu_path("moons.h"), F_OK) == 0, "no header");
  char cmd[2048];
  /* a sanitizer build's .so needs the sanitizer runtime in the program too */
  snprintf(cmd, sizeof cmd, "cc -O1 %s %s -I%s -L%s -lmoons -Wl,-rpath,%s -o %s", FLOWC_CC_FLAGS,
           EX "use_so.c", tu_tmpdir(), tu_tmpdir(), tu_tmpdir(), tu_path("use_so"));
  rc = tu_run(cmd, &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  snprintf(cmd, sizeof cmd, "%s 4 21", tu_path("use_so"));
  rc = tu_run(cmd, &out);
  cr_assert_eq(rc, 0, "%s", out);
  rc = tu_flowc(NULL, "sample " EX "moons.flow -w %s -n 4 --seed 21 -o %s --logprob %s", w,
             tu_path("ref.npy"), tu_path("reflp.npy"));
  cr_assert_eq(rc, 0);
  rt_array x = load(tu_path("ref.npy")), lp = load(tu_path("reflp.npy"));
  char *line = out;
  for (int i = 0; i < 4; i++) {
    float a, b, l1, l2;
    cr_assert_eq(sscanf(line, "%g %g | %g %g", &a, &b, &l1, &l2), 4, "%s", out);
    cr_assert(fabsf(a - x.data[2 * i]) < 1e-5f && fabsf(b - x.data[2 * i + 1]) < 1e-5f);
    cr_assert(fabsf(l1 - lp.data[i]) < 1e-4f && fabsf(l2 - l1) < 1e-3f);
    line = strchr(line, '\n') + 1;
  }
  free(out);
  rt_array_free(&x);
  rt_array_free(&lp);
}
