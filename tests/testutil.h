/* tests/testutil.h: small helpers shared by the Criterion tests. */
#ifndef FLOWC_TESTUTIL_H
#define FLOWC_TESTUTIL_H

#include <stddef.h>

/* Reads a whole file (NUL-terminated); NULL if it cannot be read. */
char *tu_read_file(const char *path, size_t *len);
/* Runs a shell command; returns its exit status; captures stdout+stderr
** into *out (malloc'd) when out is non-NULL. */
int tu_run(const char *cmd, char **out);
/* A fresh temporary directory for this test (mkdtemp). */
const char *tu_tmpdir(void);
/* Max |a-b| / max(1, |b|) over n values. */
double tu_max_rel_err(const float *a, const float *b, size_t n);

/* Runs FLOWC_EXE with printf-formatted arguments, like tu_run. */
int tu_flowc(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* NAME inside tu_tmpdir(); a ring of 64 buffers, each valid for 63 more calls. */
const char *tu_path(const char *name);

/* log|det M| of a D x D row-major matrix (destroyed), by elimination
** with partial pivoting. */
double tu_logabsdet(double *M, int D);

#endif
