/*
** frontend/frontend.h: .flow source text -> checked ir_module.
**
** fe_compile_text lexes, parses and checks one file; every error found is
** returned as an fe_diag (never printed, never fatal). Everything returned
** lives in the caller's arena.
*/
#ifndef FLOWC_FRONTEND_H
#define FLOWC_FRONTEND_H

#include <stddef.h>
#include <stdio.h>

#include "arena.h"
#include "model.h"

typedef struct fe_diag { const char *file; int line, col; const char *msg; const char *src_line; } fe_diag;
typedef struct fe_result { const ir_module *module; int ndiags; const fe_diag *diags; } fe_result;
/* Parses and checks; returns the number of errors (0: r->module is set). All memory in A. */
int fe_compile_text(ir_arena *A, const char *path, const char *text, size_t len, fe_result *r);
/* Reads the file first; an unreadable file is one diagnostic "cannot read FILE: strerror" with line 0 (printed as "FILE: error: ..."). */
int fe_compile_file(ir_arena *A, const char *path, fe_result *r);
void fe_print_diags(FILE *f, const fe_result *r);

#endif
