/*
** frontend/diag.h: the diagnostics accumulator.
**
** Every stage of the frontend reports into one fe_diags; nothing is printed
** until the caller asks (fe_print_diags). The number kept is capped so that
** a file of garbage stays cheap; the lexer stops once the cap is reached.
*/
#ifndef FLOWC_FE_DIAG_H
#define FLOWC_FE_DIAG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "frontend.h"

enum { FE_MAX_DIAGS = 50 };

typedef struct fe_diags {
  ir_arena *A;
  const char *path;
  const char *text;           /* the whole source, for source lines */
  size_t len;
  fe_diag *v;
  int n, cap;
  bool overflow;              /* more than FE_MAX_DIAGS errors */
  size_t *line_start;         /* built on the first error: offsets of lines */
  int nlines;
} fe_diags;

void fe_diags_init(fe_diags *D, ir_arena *A, const char *path,
                   const char *text, size_t len);
/* One error at LINE:COL (1-based; line 0: no location). */
void fe_error(fe_diags *D, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void fe_verror(fe_diags *D, int line, int col, const char *fmt, va_list ap);
bool fe_diags_full(const fe_diags *D);
/* Sorts by position and appends the "too many errors" line if needed. */
void fe_diags_finish(fe_diags *D);

#endif
