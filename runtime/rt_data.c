/*
** runtime/rt_data.c: data arrays from .npy (format 1.0, 2.0, 3.0; float32
** or float64, little-endian, C order) and CSV files, and float32 .npy
** output. Every message names the file.
*/
#define _POSIX_C_SOURCE 200809L
#include "rt_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_NPY_HEADER (1 << 20)

void rt_array_free(rt_array *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ */
/* .npy header: a Python dict literal                                  */

typedef struct npyhdr {
  char descr[16];
  int fortran, have_descr, have_fortran, have_shape;
  int ndim;
  long shape[8];
} npyhdr;

static void ws(const char **s, const char *end) {
  while (*s < end && isspace((unsigned char)**s)) (*s)++;
}

static int pystr(const char **s, const char *end, char *out, size_t outlen) {
  if (*s >= end || (**s != '\'' && **s != '"')) return -1;
  char q = *(*s)++;
  size_t n = 0;
  while (*s < end && **s != q) {
    if (**s == '\\') return -1;
    if (n + 1 >= outlen) return -1;
    out[n++] = *(*s)++;
  }
  if (*s >= end) return -1;
  (*s)++;
  out[n] = 0;
  return 0;
}

static int pyword(const char **s, const char *end, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(end - *s) < n || memcmp(*s, w, n)) return -1;
  *s += n;
  return 0;
}

static int pyshape(const char **s, const char *end, npyhdr *h) {
  if (*s >= end || **s != '(') return -1;
  (*s)++;
  h->ndim = 0;
  for (;;) {
    ws(s, end);
    if (*s < end && **s == ')') { (*s)++; return 0; }
    if (h->ndim == 8) return -2;
    if (*s >= end || !isdigit((unsigned char)**s)) return -1;
    long v = 0;
    while (*s < end && isdigit((unsigned char)**s)) {
      int dg = *(*s)++ - '0';
      if (v > (0x7fffffffffffL - dg) / 10) return -1;   /* 2^47: beyond any file */
      v = v * 10 + dg;
    }
    if (*s < end && **s == 'L') (*s)++;
    h->shape[h->ndim++] = v;
    ws(s, end);
    if (*s < end && **s == ',') { (*s)++; continue; }
    if (*s < end && **s == ')') { (*s)++; return 0; }
    return -1;
  }
}

static int parse_header(const char *s, const char *end, npyhdr *h, const char *path,
                        char *err, size_t errlen) {
  memset(h, 0, sizeof *h);
  ws(&s, end);
  if (s >= end || *s++ != '{') return rt_errf(err, errlen, "%s: bad .npy header", path);
  for (;;) {
    ws(&s, end);
    if (s < end && *s == '}') break;
    char key[32];
    if (pystr(&s, end, key, sizeof key)) return rt_errf(err, errlen, "%s: bad .npy header", path);
    ws(&s, end);
    if (s >= end || *s++ != ':') return rt_errf(err, errlen, "%s: bad .npy header", path);
    ws(&s, end);
    int bad = 0;
    if (!strcmp(key, "descr")) {
      if (s < end && *s == '[')
        return rt_errf(err, errlen, "%s: structured arrays are not supported (need float32 or float64)", path);
      bad = pystr(&s, end, h->descr, sizeof h->descr);
      h->have_descr = 1;
    } else if (!strcmp(key, "fortran_order")) {
      if (!pyword(&s, end, "True")) h->fortran = 1;
      else bad = pyword(&s, end, "False");
      h->have_fortran = 1;
    } else if (!strcmp(key, "shape")) {
      int r = pyshape(&s, end, h);
      if (r == -2) return rt_errf(err, errlen, "%s: more than 8 dimensions", path);
      bad = r;
      h->have_shape = 1;
    } else {
      return rt_errf(err, errlen, "%s: unexpected key '%s' in the .npy header", path, key);
    }
    if (bad) return rt_errf(err, errlen, "%s: bad '%s' in the .npy header", path, key);
    ws(&s, end);
    if (s < end && *s == ',') { s++; continue; }
    if (s < end && *s == '}') break;
    return rt_errf(err, errlen, "%s: bad .npy header", path);
  }
  if (!h->have_descr || !h->have_fortran || !h->have_shape)
    return rt_errf(err, errlen, "%s: the .npy header lacks '%s'", path,
                   !h->have_descr ? "descr" : !h->have_fortran ? "fortran_order" : "shape");
  return 0;
}

/* Element size for a supported descr, else a message. */
static int npy_dtype(const npyhdr *h, const char *path, char *err, size_t errlen) {
  const char *d = h->descr;
  if ((d[0] == '<' || d[0] == '=') && !strcmp(d + 1, "f4")) return 4;
  if ((d[0] == '<' || d[0] == '=') && !strcmp(d + 1, "f8")) return 8;
  if (d[0] == '>' && (!strcmp(d + 1, "f4") || !strcmp(d + 1, "f8")))
    return rt_errf(err, errlen, "%s: big-endian data ('%s') is not supported; save it "
                   "little-endian", path, d);
  char pd[20];
  return rt_errf(err, errlen, "%s: dtype '%s' is not supported (need float32 or float64)",
                 path, rt_printable(d, strlen(d), pd, sizeof pd));
}

static int read_npy(FILE *f, const char *path, rt_array *a, char *err, size_t errlen) {
  unsigned char pre[12];
  struct stat st;
  if (fstat(fileno(f), &st)) return rt_errf(err, errlen, "%s: cannot stat", path);
  size_t got = fread(pre, 1, 10, f);
  if (got < 10 || memcmp(pre, "\x93NUMPY", 6))
    return rt_errf(err, errlen, "%s: not a .npy file%s", path, got < 10 ? " (too short)" : "");
  int major = pre[6];
  size_t hlen, off = 10;
  if (major == 1) {
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
  } else if (major == 2 || major == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) return rt_errf(err, errlen, "%s: truncated .npy header", path);
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    off = 12;
  } else {
    return rt_errf(err, errlen, "%s: .npy format version %d.%d is not supported", path, major, pre[7]);
  }
  if (hlen > MAX_NPY_HEADER) return rt_errf(err, errlen, "%s: .npy header too large", path);
  char *hdr = malloc(hlen + 1);
  if (!hdr) return rt_errf(err, errlen, "%s: out of memory", path);
  if (fread(hdr, 1, hlen, f) != hlen) {
    free(hdr);
    return rt_errf(err, errlen, "%s: truncated .npy header", path);
  }
  npyhdr h;
  int rc = parse_header(hdr, hdr + hlen, &h, path, err, errlen);
  free(hdr);
  if (rc) return -1;
  int es = npy_dtype(&h, path, err, errlen);
  if (es < 0) return -1;
  if (h.fortran)
    return rt_errf(err, errlen, "%s: Fortran-ordered arrays are not supported; save it in C order", path);
  size_t numel = 1;
  for (int i = 0; i < h.ndim; i++) numel = rt_mul_size(numel, (size_t)h.shape[i]);
  size_t need = rt_mul_size(numel, (size_t)es), have = (size_t)st.st_size - off - hlen;
  if ((size_t)st.st_size < off + hlen || need == SIZE_MAX || have < need)
    return rt_errf(err, errlen, "%s: truncated: %zu bytes of data, the shape needs %zu",
                   path, (size_t)st.st_size < off + hlen ? 0 : have, need);
  a->data = malloc(numel ? numel * sizeof(float) : sizeof(float));
  if (!a->data) return rt_errf(err, errlen, "%s: out of memory", path);
  if (es == 4) {
    if (fread(a->data, 4, numel, f) != numel) goto short_read;
  } else {
    double buf[1024];
    for (size_t i = 0; i < numel;) {
      size_t k = numel - i < 1024 ? numel - i : 1024;
      if (fread(buf, 8, k, f) != k) goto short_read;
      for (size_t t = 0; t < k; t++) a->data[i + t] = (float)buf[t];
      i += k;
    }
  }
  a->ndim = h.ndim;
  for (int i = 0; i < h.ndim; i++) a->shape[i] = h.shape[i];
  a->rows = h.ndim ? h.shape[0] : 1;
  a->cols = 1;
  for (int i = 1; i < h.ndim; i++) a->cols *= h.shape[i];
  return 0;
short_read:
  rt_array_free(a);
  return rt_errf(err, errlen, "%s: read error or truncated data", path);
}

/* ------------------------------------------------------------------ */
/* CSV                                                                  */

/* Parses one field; 0 when it is a whole number, white space aside. */
static int csv_number(const char *s, const char *e, double *v) {
  while (s < e && isspace((unsigned char)*s)) s++;
  while (e > s && isspace((unsigned char)e[-1])) e--;
  if (s == e || e - s > 63) return -1;
  char buf[64], *end;
  memcpy(buf, s, (size_t)(e - s));
  buf[e - s] = 0;
  *v = strtod(buf, &end);
  return *end ? -1 : 0;
}

static int read_csv(const char *path, rt_array *a, char *err, size_t errlen) {
  unsigned char *buf;
  size_t len;
  if (rt_read_file(path, &buf, &len, err, errlen)) return -1;
  size_t cap = 0, n = 0;
  float *v = NULL;
  long rows = 0, cols = -1;
  int lineno = 0, seen_line = 0, rc = 0;
  char *p = (char *)buf, *end = p + len;
  while (p < end && !rc) {
    char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end;
    lineno++;
    char *s = p;
    p = nl ? nl + 1 : end;
    while (s < le && isspace((unsigned char)*s)) s++;
    if (s == le) continue;                /* blank line */
    int first = !seen_line;
    seen_line = 1;
    long k = 0;
    size_t n0 = n;
    for (char *f = s;; k++) {
      char *c = memchr(f, ',', (size_t)(le - f)), *fe = c ? c : le;
      double x;
      if (csv_number(f, fe, &x)) {
        if (first) { n = n0; k = -1; break; }   /* a header line: skip it */
        char fld[40];
        while (f < fe && isspace((unsigned char)*f)) f++;
        rc = rt_errf(err, errlen, "%s:%d: '%s' is not a number", path, lineno,
                     rt_printable(f, (size_t)(fe - f), fld, sizeof fld));
        break;
      }
      if (n == cap) {
        size_t nc = cap ? cap * 2 : 1024;
        float *nv = realloc(v, nc * sizeof *v);
        if (!nv) { rc = rt_errf(err, errlen, "%s: out of memory", path); break; }
        v = nv;
        cap = nc;
      }
      v[n++] = (float)x;
      if (!c) { k++; break; }
      f = c + 1;
    }
    if (rc || k < 0) continue;
    if (cols < 0) cols = k;
    else if (k != cols)
      rc = rt_errf(err, errlen, "%s:%d: %ld values, the first row has %ld", path, lineno, k, cols);
    rows++;
  }
  free(buf);
  if (!rc && rows == 0) rc = rt_errf(err, errlen, "%s: no rows", path);
  if (rc) { free(v); return -1; }
  a->data = v;
  a->ndim = 2;
  a->shape[0] = a->rows = rows;
  a->shape[1] = a->cols = cols;
  return 0;
}

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), k = strlen(suf);
  if (n < k) return 0;
  for (size_t i = 0; i < k; i++)
    if (tolower((unsigned char)s[n - k + i]) != suf[i]) return 0;
  return 1;
}

int rt_array_load(const char *path, rt_array *a, char *err, size_t errlen) {
  memset(a, 0, sizeof *a);
  if (!path) return rt_errf(err, errlen, "no data file given");
  FILE *f = fopen(path, "rb");
  if (!f) return rt_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  unsigned char magic[6] = { 0 };
  size_t got = fread(magic, 1, 6, f);
  int npy = ends_with(path, ".npy") || (got == 6 && !memcmp(magic, "\x93NUMPY", 6));
  if (npy && !ends_with(path, ".csv")) {
    rewind(f);
    int rc = read_npy(f, path, a, err, errlen);
    fclose(f);
    return rc;
  }
  fclose(f);
  if (got == 0) return rt_errf(err, errlen, "%s: empty file: no rows", path);
  return read_csv(path, a, err, errlen);
}

int rt_array_check_finite(const rt_array *a, const char *what, char *err, size_t errlen) {
  size_t n = (size_t)a->rows * (size_t)a->cols;
  for (size_t i = 0; i < n; i++)
    if (!isfinite(a->data[i]))
      return rt_errf(err, errlen, "%s: row %zu, column %zu is %s (counting from 0)",
                     what ? what : "data", i / (size_t)a->cols, i % (size_t)a->cols,
                     isnan(a->data[i]) ? "NaN" : "infinite");
  return 0;
}

/* ------------------------------------------------------------------ */
/* writing                                                             */

int rt_npy_save(const char *path, const float *data, int ndim, const long *shape,
                char *err, size_t errlen) {
  if (ndim < 0 || ndim > 8 || (ndim && !shape))
    return rt_errf(err, errlen, "%s: bad array shape", path);
  char dict[512];
  int o = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  size_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return rt_errf(err, errlen, "%s: negative array size", path);
    o += snprintf(dict + o, sizeof dict - (size_t)o, "%ld,%s", shape[i],
                  i + 1 < ndim ? " " : "");
    numel = rt_mul_size(numel, (size_t)shape[i]);
  }
  if (ndim > 1) o--;                          /* (3, 2) but (3,) */
  o += snprintf(dict + o, sizeof dict - (size_t)o, "), }");
  size_t bytes = rt_mul_size(numel, sizeof(float));
  if (bytes == SIZE_MAX || (bytes && !data))
    return rt_errf(err, errlen, "%s: no data or too large", path);
  /* magic(6) version(2) hlen(2) header, padded with blanks to 64 and '\n' */
  char hdr[640];
  size_t total = 10 + (size_t)o + 1;
  total = (total + 63) / 64 * 64;
  size_t hlen = total - 10;
  memcpy(hdr, "\x93NUMPY\x01\x00", 8);
  hdr[8] = (char)(hlen & 0xff);
  hdr[9] = (char)(hlen >> 8);
  memcpy(hdr + 10, dict, (size_t)o);
  memset(hdr + 10 + o, ' ', hlen - (size_t)o - 1);
  hdr[total - 1] = '\n';
  const void *chunks[2] = { hdr, data };
  size_t lens[2] = { total, bytes };
  return rt_write_atomic(path, 2, chunks, lens, err, errlen);
}
