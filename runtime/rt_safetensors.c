/*
** runtime/rt_safetensors.c: the safetensors container.
**
** Layout: u64 little-endian N, N bytes of JSON header, then the data. The
** header maps tensor names to {"dtype", "shape", "data_offsets": [b, e]}
** (offsets relative to the data) plus an optional "__metadata__" object of
** strings. Reading checks the container only; rt_weights.c matches it
** against a model.
*/
#include "rt_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADER (100u * 1000u * 1000u)

static const struct { const char *name; int size; } dtypes[] = {
  { "F32", 4 }, { "F64", 8 }, { "F16", 2 }, { "BF16", 2 }, { "I64", 8 },
  { "I32", 4 }, { "I16", 2 }, { "I8", 1 }, { "U8", 1 }, { "U16", 2 },
  { "U32", 4 }, { "U64", 8 }, { "BOOL", 1 }, { "F8_E5M2", 1 }, { "F8_E4M3", 1 },
};

float rt_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1F, m = h & 0x3FF, bits;
  if (e == 0x1F) {
    bits = sign | 0x7F800000u | (m << 13);              /* inf, nan */
  } else if (e) {
    bits = sign | ((e + 112) << 23) | (m << 13);         /* normal */
  } else if (m) {                                        /* subnormal */
    int k = -1;
    do { k++; m <<= 1; } while (!(m & 0x400));
    bits = sign | ((uint32_t)(112 - k) << 23) | ((m & 0x3FF) << 13);
  } else {
    bits = sign;
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

float rt_bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

void rt_st_free(rt_st *st) {
  rt_json_free(st->root);
  free(st->t);
  memset(st, 0, sizeof *st);
}

const char *rt_st_meta(const rt_st *st, const char *key) {
  if (!st->meta) return NULL;
  for (const rt_json *c = st->meta->child; c; c = c->next)
    if (!strcmp(c->key, key) && c->type == RT_JSTR) return c->str;
  return NULL;
}

static int cmp_entry_name(const void *a, const void *b) {
  return strcmp(((const rt_st_entry *)a)->name, ((const rt_st_entry *)b)->name);
}

#define PNAME(s, len) rt_printable((s), (len), pn, sizeof pn)

static int parse_meta(const rt_json *m, const char *what, char *err, size_t errlen) {
  char pn[80];
  if (m->type != RT_JOBJ)
    return rt_errf(err, errlen, "%s: __metadata__ is %s, not an object", what,
                   rt_json_type_name(m->type));
  for (const rt_json *c = m->child; c; c = c->next)
    if (c->type != RT_JSTR)
      return rt_errf(err, errlen, "%s: __metadata__ '%s' is %s, not a string", what,
                     PNAME(c->key, c->keylen), rt_json_type_name(c->type));
  return 0;
}

/* Reads an array of unsigned integers into out (at most max); -1 if it is
** something else. */
static int uint_array(const rt_json *a, uint64_t *out, int max, int *n) {
  if (a->type != RT_JARR || a->n > max) return -1;
  int k = 0;
  for (const rt_json *c = a->child; c; c = c->next) {
    if (c->type != RT_JNUM || !c->isuint) return -1;
    out[k++] = c->u;
  }
  *n = k;
  return 0;
}

static int parse_entry(const rt_json *v, const unsigned char *data, size_t datalen,
                       const char *what, rt_st_entry *t, char *err, size_t errlen) {
  char pn[80];
  const char *nm = PNAME(v->key, v->keylen);
  if (v->type != RT_JOBJ)
    return rt_errf(err, errlen, "%s: tensor '%s' is %s, not an object", what, nm,
                   rt_json_type_name(v->type));
  const rt_json *dt = NULL, *sh = NULL, *off = NULL;
  for (const rt_json *c = v->child; c; c = c->next) {
    const rt_json **slot = !strcmp(c->key, "dtype") ? &dt : !strcmp(c->key, "shape") ? &sh
                         : !strcmp(c->key, "data_offsets") ? &off : NULL;
    if (!slot) continue;                  /* unknown fields are ignored */
    if (*slot)
      return rt_errf(err, errlen, "%s: tensor '%s' has '%s' twice", what, nm, c->key);
    *slot = c;
  }
  if (!dt || !sh || !off)
    return rt_errf(err, errlen, "%s: tensor '%s' lacks '%s'", what, nm,
                   !dt ? "dtype" : !sh ? "shape" : "data_offsets");
  t->name = v->key;
  if (dt->type != RT_JSTR)
    return rt_errf(err, errlen, "%s: tensor '%s': dtype is not a string", what, nm);
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (!strcmp(dt->str, dtypes[i].name)) {
      t->dtype = dtypes[i].name;
      t->dsize = dtypes[i].size;
    }
  if (!t->dtype) {
    char pd[40];
    return rt_errf(err, errlen, "%s: tensor '%s' has unknown dtype '%s'", what, nm,
                   rt_printable(dt->str, dt->slen, pd, sizeof pd));
  }
  if (sh->type == RT_JARR && sh->n > RT_ST_MAXDIM)
    return rt_errf(err, errlen, "%s: tensor '%s' has %d dimensions, at most %d are read",
                   what, nm, sh->n, RT_ST_MAXDIM);
  if (uint_array(sh, t->shape, RT_ST_MAXDIM, &t->ndim))
    return rt_errf(err, errlen, "%s: tensor '%s': shape is not a list of sizes", what, nm);
  uint64_t o[2];
  int no;
  if (uint_array(off, o, 2, &no) || no != 2)
    return rt_errf(err, errlen, "%s: tensor '%s': data_offsets is not [begin, end]", what, nm);
  if (o[0] > o[1] || o[1] > datalen)
    return rt_errf(err, errlen,
                   "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] lie outside "
                   "the %zu bytes of data (truncated file?)", what, nm, o[0], o[1], datalen);
  /* numel * dsize, refusing overflow: the data is at most datalen bytes */
  uint64_t numel = 1;
  int over = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] && numel > UINT64_MAX / t->shape[i]) over = 1;
    numel *= t->shape[i];
  }
  if (over || numel > UINT64_MAX / (uint64_t)t->dsize || numel * (uint64_t)t->dsize != o[1] - o[0])
    return rt_errf(err, errlen, "%s: tensor '%s' has %" PRIu64 " bytes of data, its dtype "
                   "and shape need %s%" PRIu64, what, nm, o[1] - o[0],
                   over ? "more than " : "", over ? UINT64_MAX : numel * (uint64_t)t->dsize);
  t->numel = numel;
  t->data = data + o[0];
  t->nbytes = (size_t)(o[1] - o[0]);
  return 0;
}

int rt_st_parse(const unsigned char *buf, size_t len, const char *what,
                rt_st *st, char *err, size_t errlen) {
  memset(st, 0, sizeof *st);
  if (len == 0) return rt_errf(err, errlen, "%s: empty file, not a safetensors file", what);
  if (len < 8)
    return rt_errf(err, errlen, "%s: %zu bytes, too short for a safetensors file", what, len);
  uint64_t N = 0;
  for (int i = 7; i >= 0; i--) N = N << 8 | buf[i];
  if (N > MAX_HEADER)
    return rt_errf(err, errlen, "%s: header length %" PRIu64 " is over the limit of 100 MB: "
                   "not a safetensors file?", what, N);
  if (N > len - 8)
    return rt_errf(err, errlen, "%s: header length %" PRIu64 " exceeds the file's %zu bytes: "
                   "truncated, or not a safetensors file", what, N, len);
  if (N < 2 || buf[8] != '{')
    return rt_errf(err, errlen, "%s: not a safetensors file (the header is not a JSON object)", what);
  char jerr[160];
  st->root = rt_json_parse((const char *)buf + 8, (size_t)N, jerr, sizeof jerr);
  if (!st->root) return rt_errf(err, errlen, "%s: bad header: %s", what, jerr);
  const unsigned char *data = buf + 8 + N;
  size_t datalen = len - 8 - (size_t)N;
  st->t = calloc(st->root->n ? (size_t)st->root->n : 1, sizeof *st->t);
  if (!st->t) { rt_st_free(st); return rt_errf(err, errlen, "%s: out of memory", what); }
  for (const rt_json *c = st->root->child; c; c = c->next) {
    int rc;
    if (!strcmp(c->key, "__metadata__")) {
      if (st->meta) rc = rt_errf(err, errlen, "%s: __metadata__ appears twice", what);
      else rc = parse_meta(c, what, err, errlen);
      st->meta = c;
    } else {
      rc = parse_entry(c, data, datalen, what, &st->t[st->n++], err, errlen);
    }
    if (rc) { rt_st_free(st); return -1; }
  }
  if (st->n > 1) {
    rt_st_entry *s = malloc((size_t)st->n * sizeof *s);
    if (!s) { rt_st_free(st); return rt_errf(err, errlen, "%s: out of memory", what); }
    memcpy(s, st->t, (size_t)st->n * sizeof *s);
    qsort(s, (size_t)st->n, sizeof *s, cmp_entry_name);
    for (int i = 1; i < st->n; i++)
      if (!strcmp(s[i].name, s[i - 1].name)) {
        char pn[80];
        rt_errf(err, errlen, "%s: tensor '%s' appears twice", what,
                PNAME(s[i].name, strlen(s[i].name)));
        free(s);
        rt_st_free(st);
        return -1;
      }
    free(s);
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* writing                                                             */

typedef struct sbuf { char *p; size_t n, cap; int oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->cap - b->n < n + 1) {
    size_t ncap = (b->cap + n) * 2 + 64;
    char *np = realloc(b->p, ncap);
    if (!np) { b->oom = 1; return; }
    b->p = np;
    b->cap = ncap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char e[8];
    if (c == '"' || c == '\\') { e[0] = '\\'; e[1] = (char)c; sb_put(b, e, 2); }
    else if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); sb_put(b, e, 6); }
    else sb_put(b, (const char *)&c, 1);
  }
  sb_put(b, "\"", 1);
}

int rt_safetensors_save(const char *path, const rt_named_tensor *t, int n,
                        const char *const *meta, char *err, size_t errlen) {
  sbuf h = { NULL, 0, 0, 0 };
  sb_str(&h, "{");
  int first = 1;
  if (meta && meta[0]) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; meta[i] && meta[i + 1]; i += 2) {
      if (i) sb_str(&h, ",");
      sb_json_string(&h, meta[i]);
      sb_str(&h, ":");
      sb_json_string(&h, meta[i + 1]);
    }
    sb_str(&h, "}");
    first = 0;
  }
  const void **chunks = calloc((size_t)n + 2, sizeof *chunks);
  size_t *lens = calloc((size_t)n + 2, sizeof *lens);
  if (!chunks || !lens) h.oom = 1;
  uint64_t off = 0;
  for (int i = 0; i < n && !h.oom; i++) {
    if (t[i].ndim < 0 || t[i].ndim > 8 || !t[i].name) {
      free(h.p); free(chunks); free(lens);
      return rt_errf(err, errlen, "%s: bad tensor %d", path, i);
    }
    size_t numel = 1;
    char num[64];
    if (!first) sb_str(&h, ",");
    first = 0;
    sb_json_string(&h, t[i].name);
    sb_str(&h, t[i].dtype == RT_I64 ? ":{\"dtype\":\"I64\",\"shape\":[" : ":{\"dtype\":\"F32\",\"shape\":[");
    for (int k = 0; k < t[i].ndim; k++) {
      long s = t[i].shape[k] < 0 ? 0 : t[i].shape[k];
      snprintf(num, sizeof num, "%s%ld", k ? "," : "", s);
      sb_str(&h, num);
      numel = rt_mul_size(numel, (size_t)s);
    }
    size_t nbytes = rt_mul_size(numel, t[i].dtype == RT_I64 ? 8 : 4);
    if (nbytes == SIZE_MAX || (nbytes && !t[i].data)) {
      free(h.p); free(chunks); free(lens);
      return rt_errf(err, errlen, "%s: tensor %s has no data or is too large", path, t[i].name);
    }
    snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + nbytes);
    sb_str(&h, num);
    chunks[i + 2] = t[i].data;
    lens[i + 2] = nbytes;
    off += nbytes;
  }
  sb_str(&h, "}");
  while (!h.oom && h.n % 8) sb_str(&h, " ");
  if (h.oom) {
    free(h.p); free(chunks); free(lens);
    return rt_errf(err, errlen, "%s: out of memory", path);
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  chunks[0] = len8; lens[0] = 8;
  chunks[1] = h.p; lens[1] = h.n;
  int rc = rt_write_atomic(path, n + 2, chunks, lens, err, errlen);
  free(h.p); free(chunks); free(lens);
  return rc;
}
