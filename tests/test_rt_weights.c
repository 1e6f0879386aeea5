/* tests/test_rt_weights.c: safetensors reading/writing, every refusal,
** initialisation (linear, permutations, linear_lu) and the LU prep ops. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "rt_internal.h"
#include "testutil.h"

static const char *W_DESC =
  "flowc-desc 1\nname wmodel\ndim 3\ncontext 0\ntile 8\nparams 10\n"
  "param flow.0.net.0.weight f32 2 4 2 linear_weight 2 0 0 0\n"
  "param flow.0.net.0.bias f32 1 4 0 linear_bias 2 0 0 0\n"
  "param flow.1.perm i64 1 10 0 perm_random 0 1 5 0\n"
  "param flow.2.perm i64 1 3 0 perm_list 0 2 0 3 2 0 1\n"
  "param flow.3.lower f32 2 5 5 lu_lower 0 3 0 0\n"
  "param flow.3.upper f32 2 5 5 lu_upper 0 3 0 0\n"
  "param flow.3.log_diag f32 1 5 0 lu_log_diag 0 3 0 0\n"
  "param flow.3.sign f32 1 5 0 lu_sign 0 3 0 0\n"
  "param flow.3.perm i64 1 5 0 lu_perm 0 3 0 0\n"
  "param flow.4.log_scale f32 1 3 0 zero 0 4 0 0\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 2\n"
  "prep lu_w 5 5 0 5 4 5 6 7 8\n"
  "prep lu_winv 5 5 0 5 4 5 6 7 8\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 0\n"
  "end\n";

static rt_desc *wdesc(void) {
  char err[256] = "";
  rt_desc *d = rt_desc_parse(W_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  return d;
}

static char *tmp(const char *name) {
  static char buf[4][256];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 256, "%s/%s", tu_tmpdir(), name);
  return p;
}

static size_t numel(const rt_param_desc *p) {
  return p->ndim == 1 ? (size_t)p->shape[0] : (size_t)p->shape[0] * p->shape[1];
}

/* A safetensors image from a header text and data bytes. */
static unsigned char *st_image(const char *hdr, const void *data, size_t dlen, size_t *len) {
  size_t h = strlen(hdr);
  unsigned char *b = malloc(8 + h + dlen + 1);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
  memcpy(b + 8, hdr, h);
  if (dlen) memcpy(b + 8 + h, data, dlen);
  *len = 8 + h + dlen;
  return b;
}

static void expect_refused(const rt_desc *d, const void *buf, size_t len, const char *needle) {
  rt_weights w;
  char err[512] = "";
  int rc = rt_weights_load_mem(d, buf, len, "w.safetensors", &w, err, sizeof err);
  cr_assert_neq(rc, 0, "accepted; wanted '%s'", needle);
  cr_assert(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
  cr_assert(strstr(err, "w.safetensors"), "message '%s' does not name the file", err);
  cr_assert_null(w.data);
}

/* W = P L U from the stored tensors, in double. */
static void lu_matrix(const rt_weights *w, int base, int D, double *W) {
  const float *lo = w->data[base], *up = w->data[base + 1];
  const float *ld = w->data[base + 2], *sg = w->data[base + 3];
  const int64_t *perm = w->data[base + 4];
  for (int i = 0; i < D; i++) {
    int r = (int)perm[i];
    for (int c = 0; c < D; c++) {
      double s = 0;
      for (int k = 0; k <= (r < c ? r : c); k++) {
        double l = k == r ? 1.0 : lo[r * D + k];
        double u = k == c ? sg[k] * exp(ld[k]) : up[k * D + c];
        s += l * u;
      }
      W[i * D + c] = s;
    }
  }
}

static double orth_err(const double *W, int D) {
  double e = 0;
  for (int i = 0; i < D; i++)
    for (int j = 0; j < D; j++) {
      double s = 0;
      for (int k = 0; k < D; k++) s += W[i * D + k] * W[j * D + k];
      e = fmax(e, fabs(s - (i == j)));
    }
  return e;
}

/* ---- initialisation ---- */

Test(init, rules) {
  rt_desc *d = wdesc();
  rt_weights a, b, c;
  char err[256];
  cr_assert_eq(rt_weights_init(d, 1, &a, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_weights_init(d, 1, &b, err, sizeof err), 0);
  cr_assert_eq(rt_weights_init(d, 2, &c, err, sizeof err), 0);
  cr_assert_eq(a.n, 10);
  for (int i = 0; i < d->nparams; i++) {
    size_t bytes = numel(&d->params[i]) * (d->params[i].dtype == RT_I64 ? 8 : 4);
    cr_assert_eq(memcmp(a.data[i], b.data[i], bytes), 0, "seeded: %s", d->params[i].name);
  }
  /* linear: U(-1/sqrt(2), 1/sqrt(2)), spread out, seed-dependent */
  const float *w0 = a.data[0], *w1 = c.data[0];
  double mx = 0;
  for (int k = 0; k < 8; k++) {
    cr_assert_leq(fabsf(w0[k]), 1 / sqrtf(2.0f));
    mx = fmax(mx, fabs(w0[k]));
  }
  cr_assert_gt(mx, 0.2);
  cr_assert_neq(memcmp(w0, w1, 32), 0);
  const float *bias = a.data[1];
  for (int k = 0; k < 4; k++) cr_assert_leq(fabsf(bias[k]), 1 / sqrtf(2.0f));
  /* permute(random): a permutation fixed by the file, not by --seed */
  const int64_t *p = a.data[2];
  int seen[10] = { 0 }, ident = 1;
  for (int k = 0; k < 10; k++) {
    cr_assert(p[k] >= 0 && p[k] < 10 && !seen[p[k]]);
    seen[p[k]] = 1;
    ident &= p[k] == k;
  }
  cr_assert(!ident);
  cr_assert_eq(memcmp(a.data[2], c.data[2], 80), 0);
  d->params[2].seed = 6;
  rt_weights e;
  cr_assert_eq(rt_weights_init(d, 1, &e, err, sizeof err), 0);
  cr_assert_neq(memcmp(a.data[2], e.data[2], 80), 0);
  rt_weights_free(&e);
  /* permute list */
  const int64_t *pl = a.data[3];
  cr_assert(pl[0] == 2 && pl[1] == 0 && pl[2] == 1);
  /* zero */
  for (int k = 0; k < 3; k++) cr_assert_eq(((float *)a.data[9])[k], 0.0f);
  /* linear_lu: stored strictly triangular, W orthogonal */
  const float *lo = a.data[4], *up = a.data[5];
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 5; j++) {
      if (j >= i) cr_assert_eq(lo[i * 5 + j], 0.0f);
      if (j <= i) cr_assert_eq(up[i * 5 + j], 0.0f);
      if (j < i) cr_assert_leq(fabsf(lo[i * 5 + j]), 1.0f + 1e-6f);   /* partial pivoting */
    }
  for (int i = 0; i < 5; i++) {
    float s = ((float *)a.data[7])[i];
    cr_assert(s == 1.0f || s == -1.0f);
  }
  double W[25];
  lu_matrix(&a, 4, 5, W);
  cr_assert_lt(orth_err(W, 5), 1e-5);
  double W2[25];
  lu_matrix(&c, 4, 5, W2);
  cr_assert_gt(fabs(W[0] - W2[0]) + fabs(W[7] - W2[7]), 1e-6);
  rt_weights_free(&a);
  rt_weights_free(&b);
  rt_weights_free(&c);
  rt_desc_free(d);
}

Test(init, lu_large_orthogonal_and_prep_inverse) {
  int D = 48;
  char text[4096];
  snprintf(text, sizeof text,
           "flowc-desc 1\nname lu\ndim %d\ncontext 0\ntile 8\nparams 5\n"
           "param flow.0.lower f32 2 %d %d lu_lower 0 0 0 0\n"
           "param flow.0.upper f32 2 %d %d lu_upper 0 0 0 0\n"
           "param flow.0.log_diag f32 1 %d 0 lu_log_diag 0 0 0 0\n"
           "param flow.0.sign f32 1 %d 0 lu_sign 0 0 0 0\n"
           "param flow.0.perm i64 1 %d 0 lu_perm 0 0 0 0\n"
           "entry encode scratch 0 has_ld 0 nprep 0\n"
           "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry decode scratch 0 has_ld 0 nprep 2\n"
           "prep lu_w %d %d 0 5 0 1 2 3 4\n"
           "prep lu_winv %d %d 0 5 0 1 2 3 4\n"
           "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
           "entry logprob scratch 0 has_ld 0 nprep 0\nend\n",
           D, D, D, D, D, D, D, D, D, D, D, D);
  char err[256] = "";
  rt_desc *d = rt_desc_parse(text, err, sizeof err);
  cr_assert(d, "%s", err);
  for (uint64_t seed = 0; seed < 3; seed++) {
    rt_weights w;
    cr_assert_eq(rt_weights_init(d, seed, &w, err, sizeof err), 0, "%s", err);
    double *W = malloc(sizeof(double) * D * D);
    lu_matrix(&w, 0, D, W);
    cr_assert_lt(orth_err(W, D), 1e-5);
    /* the prep program's W is the same matrix, and W * Winv = I */
    rt_kernel none[RT_NENTRY] = { 0 };
    rt_model *m = rt_model_open(d, none, &w, 1, err, sizeof err);
    cr_assert(m, "%s", err);
    const float *const *pr = rt_model_prep(m, RT_DECODE);
    const float *PW = pr[0], *PI = pr[1];
    double e1 = 0, e2 = 0;
    for (int i = 0; i < D; i++)
      for (int j = 0; j < D; j++) {
        e1 = fmax(e1, fabs(PW[i * D + j] - W[i * D + j]));
        double s = 0;
        for (int k = 0; k < D; k++) s += (double)PW[i * D + k] * PI[k * D + j];
        e2 = fmax(e2, fabs(s - (i == j)));
      }
    cr_assert_lt(e1, 1e-6);
    cr_assert_lt(e2, 1e-5);
    rt_model_close(m);
    free(W);
    rt_weights_free(&w);
  }
  rt_desc_free(d);
}

Test(init, prep_lu_nontrivial) {
  /* an arbitrary (non-orthogonal) LU layer: W Winv = I, W matches by hand */
  rt_desc *d = wdesc();
  rt_weights w;
  char err[256];
  cr_assert_eq(rt_weights_init(d, 3, &w, err, sizeof err), 0);
  float *lo = w.data[4], *up = w.data[5], *ld = w.data[6], *sg = w.data[7];
  int64_t *perm = w.data[8];
  for (int i = 0; i < 25; i++) {
    lo[i] = (float)sin(i * 1.3) * 0.7f;   /* diagonal and above must be ignored */
    up[i] = (float)cos(i * 0.7) * 1.5f;
  }
  for (int i = 0; i < 5; i++) {
    ld[i] = 0.3f * (float)(i - 2);
    sg[i] = i % 2 ? -1.0f : 1.0f;
    perm[i] = (i * 2) % 5;
  }
  double W[25];
  lu_matrix(&w, 4, 5, W);
  rt_kernel none[RT_NENTRY] = { 0 };
  rt_model *m = rt_model_open(d, none, &w, 2, err, sizeof err);
  cr_assert(m, "%s", err);
  const float *const *pr = rt_model_prep(m, RT_DECODE);
  for (int i = 0; i < 25; i++) cr_assert_float_eq(pr[0][i], W[i], 1e-5);
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 5; j++) {
      double s = 0;
      for (int k = 0; k < 5; k++) s += W[i * 5 + k] * pr[1][k * 5 + j];
      cr_assert_float_eq(s, i == j, 1e-5);
    }
  rt_model_close(m);
  rt_weights_free(&w);
  rt_desc_free(d);
}

/* ---- round trips ---- */

Test(safetensors, save_load_round_trip) {
  rt_desc *d = wdesc();
  rt_weights a, b;
  char err[512] = "";
  cr_assert_eq(rt_weights_init(d, 9, &a, err, sizeof err), 0);
  a.step = 1234;
  const char *path = tmp("rt.safetensors");
  cr_assert_eq(rt_weights_save(d, &a, path, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_weights_load(d, path, &b, err, sizeof err), 0, "%s", err);
  cr_assert_eq(b.step, 1234);
  for (int i = 0; i < d->nparams; i++) {
    size_t bytes = numel(&d->params[i]) * (d->params[i].dtype == RT_I64 ? 8 : 4);
    cr_assert_eq(memcmp(a.data[i], b.data[i], bytes), 0, "%s", d->params[i].name);
  }
  /* the file's layout: header padded to 8, metadata, desc order */
  size_t len;
  char *buf = tu_read_file(path, &len);
  uint64_t N = 0;
  for (int i = 7; i >= 0; i--) N = N << 8 | (unsigned char)buf[i];
  cr_assert_eq(N % 8, 0);
  cr_assert(strstr(buf + 8, "\"__metadata__\":{\"format\":\"pt\",\"model\":\"wmodel\",\"step\":\"1234\"}"));
  char *p0 = strstr(buf + 8, "flow.0.net.0.weight"), *p9 = strstr(buf + 8, "flow.4.log_scale");
  cr_assert(p0 && p9 && p0 < p9);
  cr_assert(strstr(buf + 8, "\"flow.1.perm\":{\"dtype\":\"I64\",\"shape\":[10]"));
  /* no temporary file left */
  char t[300];
  snprintf(t, sizeof t, "%s.tmp", path);
  cr_assert_null(fopen(t, "rb"));
  free(buf);
  /* writing into a missing directory fails cleanly */
  cr_assert_neq(rt_weights_save(d, &a, "/nonexistent-dir/x.safetensors", err, sizeof err), 0);
  cr_assert(strstr(err, "/nonexistent-dir/x.safetensors"), "%s", err);
  rt_weights_free(&a);
  rt_weights_free(&b);
  rt_desc_free(d);
}

/* A one-float-param and one-perm model for hand-made files. */
static const char *SMALL_DESC =
  "flowc-desc 1\nname small\ndim 3\ncontext 0\ntile 8\nparams 2\n"
  "param a f32 2 2 3 zero 0 0 0 0\n"
  "param p i64 1 3 0 perm_random 0 1 0 0\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 0\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 0\nend\n";

static const float VALS[6] = { 1.0f, -2.5f, 0.125f, 3.0f, -0.0f, 65280.0f };

static uint16_t to_half(float f) {     /* exact for VALS */
  uint32_t b;
  memcpy(&b, &f, 4);
  uint32_t s = (b >> 16) & 0x8000, e = (b >> 23) & 0xff, m = b & 0x7fffff;
  if (!e) return (uint16_t)s;
  return (uint16_t)(s | ((e - 112) << 10) | (m >> 13));
}

static void load_small(const char *dt_a, const void *a, size_t asz, const char *dt_p,
                       const void *p, size_t psz, rt_weights *w) {
  char err[512] = "", hdr[512];
  snprintf(hdr, sizeof hdr,
           "{\"__metadata__\":{\"step\":\"77\",\"x\":\"y\"},"
           "\"p\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]},"
           "\"a\":{\"dtype\":\"%s\",\"shape\":[2,3],\"data_offsets\":[%zu,%zu]}}  ",
           dt_p, psz, dt_a, psz, psz + asz);
  unsigned char data[256];
  memcpy(data, p, psz);
  memcpy(data + psz, a, asz);
  size_t len;
  unsigned char *img = st_image(hdr, data, psz + asz, &len);
  rt_desc *d = rt_desc_parse(SMALL_DESC, err, sizeof err);
  cr_assert(d, "%s", err);
  cr_assert_eq(rt_weights_load_mem(d, img, len, "small", w, err, sizeof err), 0, "%s", err);
  cr_assert_eq(w->step, 77);
  free(img);
  rt_desc_free(d);
}

Test(safetensors, dtype_conversions) {
  int64_t p64[3] = { 2, 0, 1 };
  int32_t p32[3] = { 1, 2, 0 };
  double f64[6];
  uint16_t f16[6], bf16[6];
  for (int i = 0; i < 6; i++) {
    f64[i] = VALS[i];
    f16[i] = to_half(VALS[i]);
    uint32_t b;
    memcpy(&b, &VALS[i], 4);
    bf16[i] = (uint16_t)(b >> 16);
  }
  struct { const char *dt; const void *d; size_t sz; } fl[] = {
    { "F32", VALS, 24 }, { "F64", f64, 48 }, { "F16", f16, 12 }, { "BF16", bf16, 12 },
  };
  for (int k = 0; k < 4; k++) {
    rt_weights w;
    load_small(fl[k].dt, fl[k].d, fl[k].sz, k % 2 ? "I32" : "I64", k % 2 ? (void *)p32 : (void *)p64,
               k % 2 ? 12 : 24, &w);
    const float *a = w.data[0];
    for (int i = 0; i < 6; i++) cr_assert_eq(a[i], VALS[i], "%s %d", fl[k].dt, i);
    const int64_t *p = w.data[1];
    for (int i = 0; i < 3; i++) cr_assert_eq(p[i], k % 2 ? p32[i] : p64[i]);
    rt_weights_free(&w);
  }
  /* half subnormals, infinities */
  cr_assert_eq(rt_half_to_float(0x0001), ldexpf(1.0f, -24));
  cr_assert_eq(rt_half_to_float(0x03ff), ldexpf(1023.0f, -24));
  cr_assert(isinf(rt_half_to_float(0x7c00)));
  cr_assert(isnan(rt_half_to_float(0x7e00)));
  cr_assert_eq(rt_half_to_float(0xc000), -2.0f);
}

/* ---- refusals ---- */

typedef struct fcase { const char *hdr; size_t dlen; const char *needle; } fcase;

Test(safetensors, refusals) {
  char err[512];
  rt_desc *d = rt_desc_parse(SMALL_DESC, err, sizeof err);
  cr_assert(d);
  unsigned char data[128];
  memset(data, 0, sizeof data);
  int64_t perm[3] = { 2, 0, 1 };
  memcpy(data, perm, 24);
#define A_OK "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,48]}"
#define P_OK "\"p\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[0,24]}"
  static const fcase cases[] = {
    { "{" P_OK "," A_OK "}", 48, NULL },
    { "{" P_OK "}", 48, "tensor 'a' is missing" },
    { "{" P_OK "," A_OK ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 48,
      "tensor 'b' is not a parameter of the model" },
    { "{" P_OK "," A_OK "," A_OK "}", 48, "tensor 'a' appears twice" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[24,48]}}", 48,
      "tensor 'a' has shape [3, 2], the model needs [2, 3]" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[24,48]}}", 48,
      "tensor 'a' has shape [6], the model needs [2, 3]" },
    { "{" P_OK ",\"a\":{\"dtype\":\"I32\",\"shape\":[2,3],\"data_offsets\":[24,48]}}", 48,
      "tensor 'a' has dtype I32, the model needs a float" },
    { "{\"p\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}," A_OK "}", 48,
      "tensor 'p' has dtype F64, the model needs an integer" },
    { "{" P_OK ",\"a\":{\"dtype\":\"Q9\",\"shape\":[2,3],\"data_offsets\":[24,48]}}", 48,
      "tensor 'a' has unknown dtype 'Q9'" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,40]}}", 48,
      "tensor 'a' has 16 bytes of data, its dtype and shape need 24" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,72]}}", 48,
      "lie outside" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[48,24]}}", 48,
      "lie outside" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[24,48]}}", 48,
      "need more than" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[24,48]}}", 48,
      "shape is not a list of sizes" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24]}}", 48,
      "data_offsets is not [begin, end]" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 48, "tensor 'a' lacks 'data_offsets'" },
    { "{" P_OK ",\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,48]}}",
      48, "has 'dtype' twice" },
    { "{" P_OK ",\"a\":[1,2]}", 48, "tensor 'a' is an array, not an object" },
    { "{" P_OK "," A_OK ",\"__metadata__\":{\"step\":5}}", 48, "__metadata__ 'step' is a number" },
    { "{" P_OK "," A_OK ",\"__metadata__\":[]}", 48, "__metadata__ is an array" },
    { "{" P_OK "," A_OK ",}", 48, "bad header: JSON error" },
    { "{" P_OK " " A_OK "}", 48, "expected ',' or '}'" },
    { "{\"a\":\"\\u0000\"}", 48, "NUL" },
    { "{\"a\":\"\\ud800\"}", 48, "surrogate" },
    { "{\"a\":tru}", 48, "JSON error" },
    { "{\"a\":{}} x", 48, "text after the value" },
    { "[1,2,3]", 0, "not a safetensors file" },
    { "{" P_OK "," A_OK "}", 40, "lie outside" },
    { "{" P_OK "," A_OK "}", 0, "lie outside" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t len;
    unsigned char *img = st_image(cases[i].hdr, data, cases[i].dlen, &len);
    if (!cases[i].needle) {
      rt_weights w;
      cr_assert_eq(rt_weights_load_mem(d, img, len, "w.safetensors", &w, err, sizeof err), 0, "%s", err);
      rt_weights_free(&w);
    } else {
      expect_refused(d, img, len, cases[i].needle);
    }
    free(img);
  }
  /* permutations */
  static const int64_t bad[][3] = { { 0, 0, 1 }, { 0, 1, 3 }, { -1, 0, 1 } };
  for (int k = 0; k < 3; k++) {
    memcpy(data, bad[k], 24);
    size_t len;
    unsigned char *img = st_image("{" P_OK "," A_OK "}", data, 48, &len);
    expect_refused(d, img, len, "tensor 'p' is not a permutation of 0..2");
    free(img);
  }
  /* deep nesting is refused, not a stack overflow */
  char deep[4096];
  strcpy(deep, "{\"a\":");
  for (int k = 0; k < 2000; k++) strcat(deep, "[");
  size_t len;
  unsigned char *img = st_image(deep, data, 0, &len);
  expect_refused(d, img, len, "nesting too deep");
  free(img);
  rt_desc_free(d);
}

Test(safetensors, perm_list_disagrees) {
  rt_desc *d = wdesc();
  rt_weights w, v;
  char err[512] = "";
  cr_assert_eq(rt_weights_init(d, 1, &w, err, sizeof err), 0);
  int64_t *p = w.data[3];
  p[0] = 0; p[1] = 2; p[2] = 1;                /* a permutation, not the list */
  const char *path = tmp("pl.safetensors");
  cr_assert_eq(rt_weights_save(d, &w, path, err, sizeof err), 0, "%s", err);
  cr_assert_neq(rt_weights_load(d, path, &v, err, sizeof err), 0);
  cr_assert(strstr(err, "flow.2.perm disagrees with the permute list in the model"), "%s", err);
  cr_assert(strstr(err, path), "%s", err);
  /* a file's random permutation is used as it is */
  p[0] = 2; p[1] = 0; p[2] = 1;
  int64_t *r = w.data[2];
  for (int k = 0; k < 10; k++) r[k] = 9 - k;
  cr_assert_eq(rt_weights_save(d, &w, path, err, sizeof err), 0, "%s", err);
  cr_assert_eq(rt_weights_load(d, path, &v, err, sizeof err), 0, "%s", err);
  cr_assert_eq(((int64_t *)v.data[2])[0], 9);
  rt_weights_free(&v);
  rt_weights_free(&w);
  rt_desc_free(d);
}

Test(safetensors, truncated_everywhere) {
  rt_desc *d = wdesc();
  rt_weights w;
  char err[512] = "";
  cr_assert_eq(rt_weights_init(d, 4, &w, err, sizeof err), 0);
  const char *path = tmp("tr.safetensors");
  cr_assert_eq(rt_weights_save(d, &w, path, err, sizeof err), 0, "%s", err);
  rt_weights_free(&w);
  size_t len;
  char *buf = tu_read_file(path, &len);
  for (size_t k = 0; k < len; k++) {
    unsigned char *cut = malloc(k ? k : 1);
    memcpy(cut, buf, k);
    rt_weights v;
    err[0] = 0;
    int rc = rt_weights_load_mem(d, cut, k, "w.safetensors", &v, err, sizeof err);
    cr_assert_neq(rc, 0, "accepted at %zu bytes", k);
    cr_assert(strstr(err, "w.safetensors"), "%zu: %s", k, err);
    if (k == 0) cr_assert(strstr(err, "empty file"), "%s", err);
    else if (k < 8) cr_assert(strstr(err, "too short"), "%s", err);
    else cr_assert(strstr(err, "truncated"), "%zu: %s", k, err);
    free(cut);
  }
  /* the whole file is fine, also from memory */
  rt_weights v;
  cr_assert_eq(rt_weights_load_mem(d, buf, len, "w.safetensors", &v, err, sizeof err), 0, "%s", err);
  rt_weights_free(&v);
  /* a huge header length */
  unsigned char huge[64] = { 0 };
  huge[5] = 1;                                  /* 2^40 */
  expect_refused(d, huge, sizeof huge, "over the limit");
  memset(huge, 0, 8);
  huge[0] = 100;
  expect_refused(d, huge, sizeof huge, "exceeds the file");
  /* a text file */
  const char *txt = "hello, this is not a safetensors file at all";
  expect_refused(d, txt, strlen(txt), "w.safetensors");
  /* a missing file names the path */
  cr_assert_neq(rt_weights_load(d, "/nonexistent/q.safetensors", &v, err, sizeof err), 0);
  cr_assert(strstr(err, "/nonexistent/q.safetensors"), "%s", err);
  free(buf);
  rt_desc_free(d);
}

Test(safetensors, save_named_tensors) {
  float a[6] = { 1, 2, 3, 4, 5, 6 };
  int64_t p[2] = { 1, 0 };
  rt_named_tensor t[2] = {
    { "we\"ird\\name", RT_F32, 2, { 2, 3 }, a },
    { "p", RT_I64, 1, { 2 }, p },
  };
  char err[256];
  const char *path = tmp("named.safetensors");
  cr_assert_eq(rt_safetensors_save(path, t, 2, NULL, err, sizeof err), 0, "%s", err);
  size_t len;
  char *buf = tu_read_file(path, &len);
  cr_assert(strstr(buf + 8, "\"we\\\"ird\\\\name\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"),
            "%s", buf + 8);
  cr_assert(!strstr(buf + 8, "__metadata__"));
  cr_assert_eq(memcmp(buf + len - 16, p, 16), 0);
  free(buf);
}
