/* runtime/rt_util.c: error messages, memory, whole-file I/O. */
#define _POSIX_C_SOURCE 200809L
#include "rt_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int rt_errf(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

const char *rt_printable(const char *s, size_t slen, char *out, size_t outlen) {
  if (!outlen) return out;
  size_t max = outlen - 1, o = 0;
  int cut = slen > max;
  if (cut && max > 3) max -= 3;
  for (size_t i = 0; i < slen && o < max; i++) {
    unsigned char c = (unsigned char)s[i];
    out[o++] = (c >= 32 && c < 127) ? (char)c : '?';
  }
  if (cut && outlen > 4)
    for (int k = 0; k < 3; k++) out[o++] = '.';
  out[o] = 0;
  return out;
}

char *rt_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

void *rt_alloc_aligned(size_t bytes) {
  void *p = NULL;
  if (bytes == 0) bytes = 64;
  bytes = (bytes + 63) & ~(size_t)63;
  if (posix_memalign(&p, 64, bytes)) return NULL;
  return p;
}

size_t rt_mul_size(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return SIZE_MAX;
  return n * size;
}

int rt_read_file(const char *path, unsigned char **buf, size_t *len,
                 char *err, size_t errlen) {
  *buf = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return rt_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    fclose(f);
    return rt_errf(err, errlen, "%s: is a directory", path);
  }
  size_t cap = 1 << 16, n = 0;
  unsigned char *b = malloc(cap);
  for (;;) {
    if (!b) { fclose(f); return rt_errf(err, errlen, "%s: out of memory", path); }
    size_t k = fread(b + n, 1, cap - n - 1, f);
    n += k;
    if (k == 0) break;
    if (cap - n < 2) {
      unsigned char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(b, cap * 2);
      if (!nb) free(b);
      b = nb;
      cap *= 2;
    }
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(b);
    return rt_errf(err, errlen, "%s: read error", path);
  }
  b[n] = 0;
  *buf = b;
  *len = n;
  return 0;
}

int rt_write_atomic(const char *path, int n, const void *const *chunks,
                    const size_t *lens, char *err, size_t errlen) {
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 5);
  if (!tmp) return rt_errf(err, errlen, "%s: out of memory", path);
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    rt_errf(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
    free(tmp);
    return -1;
  }
  int ok = 1;
  for (int i = 0; i < n && ok; i++)
    if (lens[i] && fwrite(chunks[i], 1, lens[i], f) != lens[i]) ok = 0;
  if (ok && fflush(f) != 0) ok = 0;
  int e = errno;
  if (fclose(f) != 0 && ok) { ok = 0; e = errno; }
  if (ok && rename(tmp, path) != 0) {
    e = errno;
    rt_errf(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(e));
    unlink(tmp);
    free(tmp);
    return -1;
  }
  if (!ok) {
    rt_errf(err, errlen, "%s: write failed: %s", tmp, strerror(e));
    unlink(tmp);
    free(tmp);
    return -1;
  }
  free(tmp);
  return 0;
}

void rt_param_rows_n(const rt_param_desc *p, int *rows, int *n) {
  *rows = p->ndim == 2 ? p->shape[0] : 1;
  *n = p->ndim == 2 ? p->shape[1] : p->shape[0];
}

size_t rt_param_numel(const rt_param_desc *p) {
  if (p->ndim == 1) return (size_t)p->shape[0];
  return (size_t)p->shape[0] * (size_t)p->shape[1];
}
