/*
** runtime/rt_internal.h: helpers shared by the runtime's files; not part of
** the public contract (rt.h).
*/
#ifndef FLOWC_RT_INTERNAL_H
#define FLOWC_RT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "rt.h"

/* ---- errors and memory (rt_util.c) ---- */
/* Formats into err (when non-NULL) and returns -1, so `return rt_errf(...)`. */
int rt_errf(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  ;
/* Copies s into out (NUL-terminated, at most outlen), replacing bytes that
** are not printable ASCII by '?', and cutting long strings with "...": for
** names from hostile files in messages. Returns out. */
const char *rt_printable(const char *s, size_t slen, char *out, size_t outlen);
char *rt_strdup(const char *s);
void *rt_alloc_aligned(size_t bytes);         /* 64-byte aligned, free() it */
/* n * size, or SIZE_MAX on overflow. */
size_t rt_mul_size(size_t n, size_t size);
/* Reads a whole file; *buf is malloc'd (at least 1 byte, NUL after data). */
int rt_read_file(const char *path, unsigned char **buf, size_t *len,
                 char *err, size_t errlen);
/* Writes the n chunks to PATH.tmp, then renames it to PATH; on any failure
** the temporary file is removed and PATH is left as it was. */
int rt_write_atomic(const char *path, int n, const void *const *chunks,
                    const size_t *lens, char *err, size_t errlen);
/* Shape of a param as the prep program sees it: [rows, n]. */
void rt_param_rows_n(const rt_param_desc *p, int *rows, int *n);
size_t rt_param_numel(const rt_param_desc *p);
/* Structural checks of a descriptor (also for ones built in memory). */
int rt_desc_check(const rt_desc *d, char *err, size_t errlen);
rt_desc *rt_desc_copy(const rt_desc *d);

/* ---- JSON (rt_json.c) ---- */
typedef enum rt_jtype {
  RT_JNULL, RT_JFALSE, RT_JTRUE, RT_JNUM, RT_JSTR, RT_JARR, RT_JOBJ
} rt_jtype;

typedef struct rt_json rt_json;
struct rt_json {
  rt_jtype type;
  int n;                    /* children of an array or object */
  rt_json *child, *next;    /* first child; next sibling */
  char *key;                /* member name when inside an object */
  size_t keylen;
  char *str;                /* RT_JSTR: decoded UTF-8, NUL-terminated */
  size_t slen;
  double num;               /* RT_JNUM */
  int isuint;               /* RT_JNUM that is a plain integer < 2^64 */
  uint64_t u;
};

/* Parses exactly one JSON value (surrounding white space allowed). NUL
** characters in strings (\u0000) are refused. Nesting depth is limited. */
rt_json *rt_json_parse(const char *text, size_t len, char *err, size_t errlen);
void rt_json_free(rt_json *j);
const char *rt_json_type_name(rt_jtype t);

/* ---- safetensors container (rt_safetensors.c) ---- */
#define RT_ST_MAXDIM 8
typedef struct rt_st_entry {
  const char *name;         /* points into the JSON tree */
  const char *dtype;        /* "F32", "I64", ... */
  int dsize;                /* bytes per element */
  int ndim;
  uint64_t shape[RT_ST_MAXDIM];
  uint64_t numel;
  const unsigned char *data;/* begin of its bytes (maybe unaligned) */
  size_t nbytes;
} rt_st_entry;

typedef struct rt_st {
  rt_json *root;
  int n;
  rt_st_entry *t;           /* in file order */
  const rt_json *meta;      /* __metadata__ object or NULL */
} rt_st;

/* Parses and checks the container: header, JSON, dtypes, shapes, offsets
** against the data, byte counts, duplicate names. buf must outlive st. */
int rt_st_parse(const unsigned char *buf, size_t len, const char *what,
                rt_st *st, char *err, size_t errlen);
void rt_st_free(rt_st *st);
/* The metadata value of key, or NULL. */
const char *rt_st_meta(const rt_st *st, const char *key);
/* Decoders of IEEE half and bfloat16 bit patterns. */
float rt_half_to_float(uint16_t h);
float rt_bf16_to_float(uint16_t h);

/* Checks tensor t against param p (shape, dtype, perm) and stores a
** malloc'd copy converted to p's dtype in *out (rt_weights.c). The
** messages call the tensor by p's name. */
/* A missing sn_u (flow-language.md 6: optional): its initial value, malloc'd. */
int rt_weights_fresh_sn_u(const rt_desc *d, int i, const char *what, void **out, char *err,
                          size_t errlen);
int rt_weights_take(const rt_param_desc *p, const rt_st_entry *t, const char *what,
                    void **out, char *err, size_t errlen);

/* ---- thread pool (rt_pool.c) ---- */
typedef struct rt_pool rt_pool;
/* fn(arg, tid, item) for every item in [0, nitems); tid < nthreads. */
typedef void (*rt_pool_fn)(void *arg, int tid, long item);
rt_pool *rt_pool_new(int nthreads);           /* <= 0: all cores */
int rt_pool_size(const rt_pool *p);
/* Runs the items on the workers and the caller; returns when all are done.
** Allocates nothing. Not reentrant: one caller at a time. */
void rt_pool_run(rt_pool *p, long nitems, rt_pool_fn fn, void *arg);
void rt_pool_free(rt_pool *p);

/* ---- RNG helpers (rt_rng.c) ---- */
/* A double uniform in (0,1) from 64 random bits. */
double rt_u01_from64(uint64_t x);
/* Two 64-bit words from one Philox call, for a counter (hi, lo). */
void rt_philox64(uint64_t key, uint64_t hi, uint64_t lo, uint64_t out[2]);

/* ---- a loaded model (rt_model.c, rt_train.c) ---- */
typedef struct rt_tls {       /* one per thread, 64-byte aligned buffers */
  float *scratch, *ctxbuf, *zbuf, *ldbuf, *lpbuf;
  void **args;
  void **targs;               /* the gradient kernel's arguments */
} rt_tls;

/* What rt_model_set_train makes, so that rt_model_grad allocates nothing. */
typedef struct rt_train_buf {
  int nchunks;                /* == nthreads: chunk c is a static tile range */
  float **block;              /* per chunk: every slot, one aligned block,
                                 zeroed for every tile */
  double **dblock;            /* per chunk: the tiles' blocks summed */
  size_t block_floats;
  size_t *off;                /* P + Q slot offsets into a block */
  float ***slot;              /* per chunk: P + Q slot pointers (NULL: I64) */
  double *closs;              /* per chunk: sum of -log p */
  double *gsum;               /* the summed slots, in double */
  double **gp, **gq;          /* into gsum: P params (NULL: I64), Q preps */
  double *work;               /* rt_prep_backward's */
  uint64_t noise_seed, noise_ctr; /* rt_model_set_noise */
} rt_train_buf;

/* Below this many rows rt_k_gemm makes matrix-vector products (sgemv),
** whose threaded form splits the outputs and so gives the same bits. */
#define RT_K_GEMV_ROWS 4

struct rt_model {
  rt_desc *d;
  rt_kernel k[RT_NENTRY];
  void **params;
  rt_weights w;               /* n, data == params, step: rt_model_params */
  float **prep[RT_NENTRY + 1];  /* [RT_NENTRY]: the train program's */
  double **vals[RT_NENTRY + 1]; /* the same results in double */
  unsigned char stale[RT_NENTRY]; /* set_params during training: an entry's program
                                 runs when the entry is next called */
  unsigned char *seen;        /* permutation checks, maxperm bytes */
  size_t maxperm;
  rt_pool *pool;
  int nthreads;
  int blas_wide;              /* a weight of 512 x 512 or more: a one-tile call lets
                                 OpenBLAS use the threads (rt_model.c, run) */
  rt_tls *tls;
  rt_kernel train;
  rt_train_buf tb;
  int failed_layer1;          /* 1 + rt_model_failed_layer (0: none) */
};

/* Kernel failures (rt_model.c). *fail holds the lowest failing tile's
** tile << 32 | status (0: none), so thread counts agree; rt_fail_note adds
** one from any thread; rt_fail_take (after the join) records the layer and
** returns RT_ENOCONV, or RT_OK when *fail is 0. */
void rt_fail_note(_Atomic uint64_t *fail, size_t tile, int32_t status);
int rt_fail_take(rt_model *m, uint64_t fail);

/* The entry e's program; e == RT_NENTRY: the train program. */
const rt_entry_desc *rt_model_entry(const rt_model *m, int e);
void rt_train_free(rt_model *m);

#endif
