/* tests/testutil.c: see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

char *tu_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (size_t k; (k = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
    n += k;
    if (cap - n < 2) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

int tu_run(const char *cmd, char **out) {
  char *full = NULL;
  if (asprintf(&full, "%s 2>&1", cmd) < 0) return -1;
  FILE *p = popen(full, "r");
  free(full);
  if (!p) return -1;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (size_t k; (k = fread(buf + n, 1, cap - n - 1, p)) > 0;) {
    n += k;
    if (cap - n < 2) buf = realloc(buf, cap *= 2);
  }
  buf[n] = 0;
  int st = pclose(p);
  if (out) *out = buf; else free(buf);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

const char *tu_tmpdir(void) {
  static char dir[64];
  if (!dir[0]) {
    strcpy(dir, "/tmp/flowc-test-XXXXXX");
    if (!mkdtemp(dir)) abort();
  }
  return dir;
}

double tu_max_rel_err(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i]));
    if (isnan(d)) return INFINITY;
    if (d > m) m = d;
  }
  return m;
}

double tu_logabsdet(double *M, int D) {
  double s = 0;
  for (int c = 0; c < D; c++) {
    int p = c;
    for (int i = c + 1; i < D; i++)
      if (fabs(M[i * D + c]) > fabs(M[p * D + c])) p = i;
    for (int j = 0; j < D; j++) {
      double t = M[c * D + j];
      M[c * D + j] = M[p * D + j];
      M[p * D + j] = t;
    }
    s += log(fabs(M[c * D + c]));
    for (int i = c + 1; i < D; i++) {
      double q = M[i * D + c] / M[c * D + c];
      for (int j = c; j < D; j++) M[i * D + j] -= q * M[c * D + j];
    }
  }
  return s;
}

int tu_flowc(char **out, const char *fmt, ...) {
  char args[4096], cmd[4600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "%s %s", FLOWC_EXE, args);
  return tu_run(cmd, out);
}

const char *tu_path(const char *name) {
  static char buf[64][512];
  static int k;
  k = (k + 1) % 64;
  snprintf(buf[k], sizeof buf[k], "%s/%s", tu_tmpdir(), name);
  return buf[k];
}
