/* frontend/diag.c: the diagnostics accumulator and printer (see diag.h). */
#include "diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fe_diags_init(fe_diags *D, ir_arena *A, const char *path,
                   const char *text, size_t len) {
  memset(D, 0, sizeof *D);
  D->A = A;
  D->path = path;
  D->text = text ? text : "";
  D->len = text ? len : 0;
}

bool fe_diags_full(const fe_diags *D) { return D->overflow; }

/* Offsets of the line starts, found once: diagnostics are few. */
static void index_lines(fe_diags *D) {
  int n = 1;
  for (size_t i = 0; i < D->len; i++)
    if (D->text[i] == '\n') n++;
  D->line_start = ir_alloc(D->A, (size_t)(n + 1) * sizeof *D->line_start);
  D->line_start[0] = 0;
  int k = 1;
  for (size_t i = 0; i < D->len; i++)
    if (D->text[i] == '\n') D->line_start[k++] = i + 1;
  D->line_start[n] = D->len + 1;
  D->nlines = n;
}

/* The text of LINE without its newline; control bytes (a NUL, say) become
** '?' so that the printed line keeps one byte per column. Diagnostics on
** the same line share the copy. */
static const char *source_line(fe_diags *D, int line) {
  if (line < 1) return NULL;
  for (int i = 0; i < D->n; i++)
    if (D->v[i].line == line && D->v[i].src_line) return D->v[i].src_line;
  if (!D->line_start) index_lines(D);
  if (line > D->nlines) return "";
  size_t a = D->line_start[line - 1], b = D->line_start[line] - 1;
  if (b > a && D->text[b - 1] == '\r') b--;
  char *s = ir_strndup(D->A, D->text + a, b - a);
  for (char *p = s; p < s + (b - a); p++)
    if ((unsigned char)*p < 0x20 && *p != '\t') *p = '?';
    else if (*p == 0x7f) *p = '?';
  return s;
}

void fe_error(fe_diags *D, int line, int col, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fe_verror(D, line, col, fmt, ap);
  va_end(ap);
}

void fe_verror(fe_diags *D, int line, int col, const char *fmt, va_list ap) {
  if (D->n >= FE_MAX_DIAGS) {
    D->overflow = true;
    return;
  }
  if (D->n == D->cap) {
    int cap = D->cap ? 2 * D->cap : 8;
    fe_diag *v = ir_alloc(D->A, (size_t)cap * sizeof *v);
    if (D->n) memcpy(v, D->v, (size_t)D->n * sizeof *v);
    D->v = v;
    D->cap = cap;
  }
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  fe_diag *d = &D->v[D->n];
  d->file = D->path;
  d->line = line > 0 ? line : 0;
  d->col = line > 0 && col > 0 ? col : 0;
  d->msg = ir_strdup(D->A, buf);
  d->src_line = source_line(D, d->line);
  D->n++;
}

static int diag_cmp(const void *a, const void *b) {
  const fe_diag *x = a, *y = b;
  if (x->line != y->line) return x->line < y->line ? -1 : 1;
  if (x->col != y->col) return x->col < y->col ? -1 : 1;
  return 0;
}

/* Stable: insertion sort on at most FE_MAX_DIAGS entries. */
static void sort_diags(fe_diag *v, int n) {
  for (int i = 1; i < n; i++) {
    fe_diag t = v[i];
    int j = i;
    for (; j > 0 && diag_cmp(&v[j - 1], &t) > 0; j--) v[j] = v[j - 1];
    v[j] = t;
  }
}

void fe_diags_finish(fe_diags *D) {
  sort_diags(D->v, D->n);
  if (!D->overflow) return;
  fe_diag *v = ir_alloc(D->A, (size_t)(D->n + 1) * sizeof *v);
  if (D->n) memcpy(v, D->v, (size_t)D->n * sizeof *v);
  v[D->n] = (fe_diag){D->path, 0, 0,
                      ir_sprintf(D->A, "too many errors (more than %d); stopping", FE_MAX_DIAGS),
                      NULL};
  D->v = v;
  D->cap = ++D->n;
}

static int digits(int n) {
  int k = 1;
  while (n >= 10) n /= 10, k++;
  return k;
}

/* FILE:LINE:COL: error: MSG, then the line and a caret under COL (tabs
** kept, UTF-8 continuation bytes skipped so the caret lines up). */
static void print_diag(FILE *f, const fe_diag *d) {
  if (d->line <= 0) {
    fprintf(f, "%s: error: %s\n", d->file, d->msg);
    return;
  }
  fprintf(f, "%s:%d:%d: error: %s\n", d->file, d->line, d->col, d->msg);
  if (!d->src_line) return;
  int w = digits(d->line);
  fprintf(f, " %d | %s\n", d->line, d->src_line);
  fprintf(f, " %*s | ", w, "");
  const char *s = d->src_line;
  size_t n = strlen(s);
  for (int i = 0; i < d->col - 1; i++) {
    unsigned char c = (size_t)i < n ? (unsigned char)s[i] : ' ';
    if (c == '\t') fputc('\t', f);
    else if ((c & 0xc0) != 0x80) fputc(' ', f);
  }
  fputs("^\n", f);
}

void fe_print_diags(FILE *f, const fe_result *r) {
  for (int i = 0; i < r->ndiags; i++) print_diag(f, &r->diags[i]);
}
