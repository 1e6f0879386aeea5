/*
** bench/pi0_so_bench.c: the pi0 action head as a C program would use it,
** through the shared object that
**   flowc build examples/pi0_head.flow --model pi0_head -w W.safetensors -o libpi0_head.so
** writes (with pi0_head.h beside it; flowc-cli.md, "The shared object").
** For bench/pi0_bench.sh:
**
**   pi0_so_bench check Z.npy C.npy X.npy
**       decode the rows of Z.npy (contexts C.npy, one row per z or a single
**       row for all) into X.npy, for the comparison with flowc decode and
**       PyTorch;
**   pi0_so_bench time [--op decode|sample] [--batch B] [--min-time S] [--min-calls N]
**       steady-state time of one call at batch B (default 1: one action
**       chunk, the 10 Euler steps), after 5 warm-up calls: the median of
**       single-call times over at least S seconds (1) and N calls (50). z
**       and the context are fixed N(0, 1) and U(-1, 1) draws (decode), or z
**       is drawn by the model from seed k at call k (sample). Prints
**         so OP batch B: MEDIAN us per call (min MIN, CALLS calls)
**
** Weights: the built-in ones, or -w W.safetensors before the command.
** Another model: -DPI0_MODEL=pi0_small (its header pi0_small.h).
**
**   cc -O2 pi0_so_bench.c -IDIR -LDIR -lpi0_head -Wl,-rpath,DIR -lm -o pi0_so_bench
*/
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef PI0_MODEL
#define PI0_MODEL pi0_head
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(s) CAT(PI0_MODEL, s)

#include STR(PI0_MODEL.h)

typedef FN(_model) model;

/* ---- .npy, float32 little-endian C order only (what flowc writes) ---- */

/* rows x cols of a [rows, ...] float32 array; NULL with a message on error. */
static float *npy_read(const char *path, long *rows, long *cols) {
  FILE *f = fopen(path, "rb");
  if (!f) return fprintf(stderr, "pi0_so_bench: cannot open %s\n", path), NULL;
  unsigned char pre[10];
  float *x = NULL;
  char *h = NULL;
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6)) goto bad;
  size_t hl = pre[8] | (size_t)pre[9] << 8;
  if (pre[6] >= 2) {                     /* version 2+: 4-byte header length */
    unsigned char more[2];
    if (fread(more, 1, 2, f) != 2) goto bad;
    hl |= (size_t)more[0] << 16 | (size_t)more[1] << 24;
  }
  h = calloc(hl + 1, 1);
  if (!h || fread(h, 1, hl, f) != hl) goto bad;
  if (!strstr(h, "'<f4'") || strstr(h, "'fortran_order': True")) {
    fprintf(stderr, "pi0_so_bench: %s: not a C-ordered float32 array\n", path);
    goto out;
  }
  char *s = strstr(h, "'shape': (");
  if (!s) goto bad;
  s += 10;
  long dims[8], nd = 0;
  while (nd < 8) {
    char *e;
    long v = strtol(s, &e, 10);
    if (e == s) break;
    dims[nd++] = v;
    s = e;
    while (*s == ',' || *s == ' ' || *s == 'L') s++;
  }
  if (nd < 1) goto bad;
  *rows = dims[0];
  *cols = 1;
  for (long i = 1; i < nd; i++) *cols *= dims[i];
  size_t n = (size_t)*rows * (size_t)*cols;
  x = malloc((n ? n : 1) * sizeof *x);
  if (!x || fread(x, sizeof *x, n, f) != n) {
    free(x);
    x = NULL;
    goto bad;
  }
  goto out;
bad:
  fprintf(stderr, "pi0_so_bench: %s: not a .npy file this program reads\n", path);
out:
  free(h);
  fclose(f);
  return x;
}

static int npy_write(const char *path, const float *x, long rows, long cols) {
  char h[128];
  int n = snprintf(h, sizeof h, "{'descr': '<f4', 'fortran_order': False, 'shape': (%ld, %ld), }",
                   rows, cols);
  int total = 10 + n + 1, pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (!f) return fprintf(stderr, "pi0_so_bench: cannot write %s\n", path), -1;
  unsigned hl = (unsigned)(n + pad + 1);
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 255),
                           (unsigned char)(hl >> 8)};
  fwrite(pre, 1, 10, f);
  fwrite(h, 1, (size_t)n, f);
  for (int i = 0; i < pad; i++) fputc(' ', f);
  fputc('\n', f);
  size_t k = (size_t)rows * (size_t)cols;
  int bad = fwrite(x, sizeof *x, k, f) != k;
  if (fclose(f) || bad) return fprintf(stderr, "pi0_so_bench: writing %s failed\n", path), -1;
  return 0;
}

/* ---- timing ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A fixed stream of pseudo-random numbers (splitmix64), for z and c. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double u01(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static int cmd_check(model *m, int argc, char **argv) {
  if (argc != 3) return fprintf(stderr, "pi0_so_bench: check Z.npy C.npy X.npy\n"), 2;
  long zr, zc, cr, cc;
  float *z = npy_read(argv[0], &zr, &zc), *c = z ? npy_read(argv[1], &cr, &cc) : NULL;
  if (!z || !c) return free(z), 1;
  const long D = (long)FN(_dim)(), C = (long)FN(_context_dim)();
  if (zc != D || cc != C || (cr != 1 && cr != zr)) {
    fprintf(stderr, "pi0_so_bench: z [%ld, %ld] and context [%ld, %ld] do not fit dim %ld, context %ld\n",
            zr, zc, cr, cc, D, C);
    free(z); free(c);
    return 1;
  }
  float *cf = c;
  if (cr == 1 && zr > 1) {                 /* one row for all: repeat it */
    cf = malloc((size_t)(zr * C) * sizeof *cf);
    for (long i = 0; cf && i < zr; i++) memcpy(cf + i * C, c, (size_t)C * sizeof *cf);
  }
  float *x = malloc((size_t)(zr * D + 1) * sizeof *x);
  int rc = !cf || !x ? -2 : FN(_decode)(m, (size_t)zr, z, C ? cf : NULL, x, NULL);
  if (rc) fprintf(stderr, "pi0_so_bench: decode failed (%d)\n", rc);
  else rc = npy_write(argv[2], x, zr, D);
  if (cf != c) free(cf);
  free(z); free(c); free(x);
  return rc ? 1 : 0;
}

static int cmd_time(model *m, int argc, char **argv) {
  const char *op = "decode";
  long B = 1, min_calls = 50;
  double min_time = 1.0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--op") && i + 1 < argc) op = argv[++i];
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = strtol(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--min-time") && i + 1 < argc) min_time = strtod(argv[++i], NULL);
    else if (!strcmp(argv[i], "--min-calls") && i + 1 < argc) min_calls = strtol(argv[++i], NULL, 10);
    else return fprintf(stderr, "pi0_so_bench: time: unknown option %s\n", argv[i]), 2;
  }
  int sample = !strcmp(op, "sample");
  if ((!sample && strcmp(op, "decode")) || B < 1 || min_calls < 1)
    return fprintf(stderr, "pi0_so_bench: time [--op decode|sample] [--batch B>=1]\n"), 2;
  const long D = (long)FN(_dim)(), C = (long)FN(_context_dim)();
  float *z = malloc((size_t)(B * D) * sizeof *z), *x = malloc((size_t)(B * D) * sizeof *x);
  float *c = malloc((size_t)(B * C + 1) * sizeof *c);
  size_t cap = 1 << 16;
  double *t = malloc(cap * sizeof *t);
  if (!z || !x || !c || !t) return fprintf(stderr, "pi0_so_bench: out of memory\n"), 1;
  for (long i = 0; i < B * D; i++) {           /* Box-Muller */
    double r = sqrt(-2 * log(u01())), a = 6.283185307179586 * u01();
    z[i] = (float)(r * cos(a));
  }
  for (long i = 0; i < B * C; i++) c[i] = (float)(2 * u01() - 1);
  const float *ctx = C ? c : NULL;
  int rc = 0;
  size_t n = 0;
  for (long k = 0; !rc; k++) {
    double t0 = now_s();
    rc = sample ? FN(_sample)(m, (size_t)B, (uint64_t)k, ctx, x, NULL)
                : FN(_decode)(m, (size_t)B, z, ctx, x, NULL);
    double dt = now_s() - t0;
    if (k < 5) continue;                       /* warm-up */
    if (n < cap) t[n++] = dt;
    double sum = 0;                            /* enough: by count and total time */
    if (n >= (size_t)min_calls) {
      for (size_t i = 0; i < n; i++) sum += t[i];
      if (sum >= min_time || n == cap) break;
    }
  }
  if (rc) {
    fprintf(stderr, "pi0_so_bench: %s failed (%d)\n", op, rc);
  } else {
    double mn = t[0];
    for (size_t i = 0; i < n; i++) mn = t[i] < mn ? t[i] : mn;
    qsort(t, n, sizeof *t, cmp_double);
    double med = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    float chk = 0;                             /* keep the result alive */
    for (long i = 0; i < B * D; i++) chk += x[i];
    printf("so %s batch %ld: %.1f us per call (min %.1f, %zu calls)%s\n", op, B, 1e6 * med,
           1e6 * mn, n, isfinite(chk) ? "" : " NON-FINITE OUTPUT");
  }
  free(z); free(x); free(c); free(t);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  const char *w = NULL;
  int a = 1;
  if (a + 1 < argc && !strcmp(argv[a], "-w")) {
    w = argv[a + 1];
    a += 2;
  }
  if (a >= argc || (strcmp(argv[a], "check") && strcmp(argv[a], "time"))) {
    fprintf(stderr, "usage: pi0_so_bench [-w W.safetensors] check Z.npy C.npy X.npy\n"
                    "       pi0_so_bench [-w W.safetensors] time [--op decode|sample] [--batch B]\n"
                    "                    [--min-time S] [--min-calls N]\n");
    return 2;
  }
  char err[512];
  model *m = FN(_open)(w, err, sizeof err);
  if (!m) return fprintf(stderr, "pi0_so_bench: %s\n", err), 1;
  int rc = !strcmp(argv[a], "check") ? cmd_check(m, argc - a - 1, argv + a + 1)
                                     : cmd_time(m, argc - a - 1, argv + a + 1);
  FN(_close)(m);
  return rc;
}
