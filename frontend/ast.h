/*
** frontend/ast.h: the syntax tree of a .flow file (internal to the frontend).
**
** The parser builds it in the arena exactly as written: no defaults, no
** `repeat` expansion, no checks beyond the grammar. sema.c turns it into an
** ir_module. Nodes that stand for text the parser had to skip after a syntax
** or lexical error are EXPR_ERROR, so that sema stays silent about them
** instead of piling up follow-on errors.
*/
#ifndef FLOWC_FE_AST_H
#define FLOWC_FE_AST_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "diag.h"

typedef struct fe_loc { int line, col; } fe_loc;

/* A growable array of pointers in the arena (old storage is abandoned). */
typedef struct fe_vec { void **v; int n, cap; } fe_vec;
void fe_vec_push(ir_arena *A, fe_vec *vec, void *p);

typedef enum fe_exprkind {
  EXPR_INT, EXPR_NUM, EXPR_STR, EXPR_IDENT, EXPR_CALL, EXPR_BOOL, EXPR_LIST,
  EXPR_ERROR                  /* already reported: a bad number, skipped text */
} fe_exprkind;

typedef struct fe_expr fe_expr;

typedef struct fe_arg {
  const char *name;           /* NULL: positional */
  fe_loc loc;                 /* of the name, or of the value if positional */
  fe_expr *value;
} fe_arg;

struct fe_expr {
  fe_exprkind kind;
  fe_loc loc;
  const char *text;           /* INT, NUM: the literal as written (with '-') */
  int64_t ival;               /* INT; BOOL: 0 or 1 */
  double num;                 /* NUM (and INT) */
  const char *str;            /* STR: decoded; IDENT, CALL: the name */
  size_t len;                 /* STR: decoded length */
  fe_vec args;                /* CALL: fe_arg * */
  bool bare;                  /* CALL: written without parentheses */
  fe_vec items;               /* LIST: fe_expr * */
};

typedef struct fe_block { fe_loc loc; fe_vec stmts; } fe_block;

typedef enum fe_stmtkind { STMT_CALL, STMT_REPEAT } fe_stmtkind;

typedef struct fe_stmt {
  fe_stmtkind kind;
  fe_loc loc;
  fe_expr *call;              /* STMT_CALL */
  fe_expr *count;             /* STMT_REPEAT */
  fe_block *body;             /* STMT_REPEAT */
} fe_stmt;

typedef enum fe_itemkind { ITEM_DIM, ITEM_CONTEXT, ITEM_BASE, ITEM_NET, ITEM_FLOW } fe_itemkind;

typedef struct fe_item {
  fe_itemkind kind;
  fe_loc loc;                 /* of the keyword */
  fe_expr *value;             /* DIM, CONTEXT: the value; NET: the call */
  const char *name;           /* BASE, NET */
  fe_loc name_loc;
  bool has_args;              /* BASE: written with a non-empty '(' args ')' */
  fe_loc args_loc;            /* BASE: of the first argument */
  fe_block *flow;             /* FLOW */
} fe_item;

typedef struct fe_model {
  const char *name;           /* NULL after a syntax error in the name */
  fe_loc loc;                 /* of the name (of 'model' if there is none) */
  fe_vec items;               /* fe_item * */
  int syntax_errors;          /* lexical and syntax errors inside the model */
} fe_model;

typedef struct fe_file {
  fe_vec models;              /* fe_model * */
  int syntax_errors;
} fe_file;

/* parser.y: never NULL; errors go to D. */
fe_file *fe_parse(ir_arena *A, fe_diags *D, const char *text, size_t len);
/* sema.c: NULL when D holds errors at the end. */
ir_module *fe_check(ir_arena *A, fe_diags *D, const fe_file *F, const char *path);

/* The lexer's state (flex "extra"): positions, the two last tokens for
** syntax messages, and the nesting depth guard. */
enum { FE_MAX_NESTING = 100 };

typedef struct fe_token { size_t off, len; int line, col, kind; } fe_token;

typedef struct fe_lexer {
  ir_arena *A;
  fe_diags *D;
  const char *text;
  size_t len;
  size_t off;                 /* next byte */
  int line, col;              /* of the next byte */
  fe_token match;             /* the text matched last */
  fe_token cur, prev;         /* the last two tokens returned */
  int depth;                  /* open ( [ { */
  char open[FE_MAX_NESTING];  /* which, and where: closed at end of file */
  fe_loc open_loc[FE_MAX_NESTING];
  bool stop;                  /* nesting too deep: the rest is not read */
  bool eof_seen;              /* "not closed" reported at the end */
  bool closing;               /* "not closed" reported before `model` */
  fe_loc lexerr;              /* the last lexical error */
  fe_file *file;
} fe_lexer;

#endif
