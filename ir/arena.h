/*
** ir/arena.h: bump allocator for compile-time data.
**
** Everything the frontend, the IR and the passes build lives in one arena
** and is freed at once with ir_arena_free. Allocation failure aborts with a
** message: compile-time data is small and a half-built graph is useless.
*/
#ifndef FLOWC_IR_ARENA_H
#define FLOWC_IR_ARENA_H

#include <stddef.h>

typedef struct ir_arena ir_arena;

ir_arena *ir_arena_new(void);
void ir_arena_free(ir_arena *A);
void *ir_alloc(ir_arena *A, size_t n);              /* zeroed, 16-aligned */
char *ir_strdup(ir_arena *A, const char *s);
char *ir_strndup(ir_arena *A, const char *s, size_t n);
char *ir_sprintf(ir_arena *A, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
