/* ir/arena.c: chunked bump allocator (see arena.h). */
#include "arena.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ir_chunk {
  struct ir_chunk *next;
  size_t used, size;
  _Alignas(16) unsigned char data[];
} ir_chunk;

struct ir_arena {
  ir_chunk *head;
};

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "flowc: out of memory (%zu bytes)\n", n);
    abort();
  }
  return p;
}

ir_arena *ir_arena_new(void) {
  ir_arena *A = xmalloc(sizeof *A);
  A->head = NULL;
  return A;
}

void ir_arena_free(ir_arena *A) {
  if (!A) return;
  for (ir_chunk *c = A->head, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  free(A);
}

void *ir_alloc(ir_arena *A, size_t n) {
  n = (n + 15) & ~(size_t)15;
  ir_chunk *c = A->head;
  if (!c || c->size - c->used < n) {
    size_t size = n > 65536 ? n : 65536;
    c = xmalloc(sizeof *c + size);
    c->size = size;
    c->used = 0;
    c->next = A->head;
    A->head = c;
  }
  void *p = c->data + c->used;
  c->used += n;
  memset(p, 0, n);
  return p;
}

char *ir_strndup(ir_arena *A, const char *s, size_t n) {
  char *p = ir_alloc(A, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *ir_strdup(ir_arena *A, const char *s) { return ir_strndup(A, s, strlen(s)); }

char *ir_sprintf(ir_arena *A, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = ir_alloc(A, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}
