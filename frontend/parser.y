/*
** frontend/parser.y: the .flow grammar (spec sections 1 and 9), pure Bison.
**
** The tree is built bottom-up in the arena. Error recovery is per list: a
** bad model, item or statement is dropped and tokens are skipped up to one
** that can start the next one (or close the enclosing block), so that one
** syntax error does not hide the errors that follow it; a keyword that
** starts an item ends the recovery at once. (Skipping to a ')' or ']'
** instead would run past the ';' when the closer is what is missing.) The
** lexer closes brackets left open, so a truncated model is still checked.
** Values for `dim`, `context` and `repeat` are parsed as expressions and
** checked by sema, which gives better messages than a syntax error would.
*/
%code top {
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
}

%code requires {
#include "ast.h"
#ifndef YY_TYPEDEF_YY_SCANNER_T
#define YY_TYPEDEF_YY_SCANNER_T
typedef void *yyscan_t;
#endif
}

%code {
#include "lexer.h"

static fe_loc loc_of(const FE_YYLTYPE *l) { return (fe_loc){l->first_line, l->first_column}; }
static fe_expr *new_expr(fe_lexer *L, fe_exprkind kind, const FE_YYLTYPE *l);
static fe_expr *new_call(fe_lexer *L, const char *name, const FE_YYLTYPE *l);
static fe_expr *negate(fe_lexer *L, fe_expr *e, const FE_YYLTYPE *l);
static fe_arg *new_arg(fe_lexer *L, const char *name, fe_expr *value, const FE_YYLTYPE *l);
static fe_item *new_item(fe_lexer *L, fe_itemkind kind, const FE_YYLTYPE *l);
static fe_stmt *new_stmt(fe_lexer *L, fe_stmtkind kind, const FE_YYLTYPE *l);
static fe_model *new_model(fe_lexer *L, const char *name, fe_vec items,
                           const FE_YYLTYPE *name_loc, const FE_YYLTYPE *all);
static void fe_yyerror(FE_YYLTYPE *loc, yyscan_t scanner, fe_lexer *L, const char *msg);
}

%define api.prefix {fe_yy}
%define api.pure full
%define api.token.prefix {}
%define parse.error custom
%define parse.lac full
%locations
%lex-param {yyscan_t scanner}
%parse-param {yyscan_t scanner} {fe_lexer *L}

%union {
  const char *str;
  fe_expr *expr;
  fe_arg *arg;
  fe_item *item;
  fe_stmt *stmt;
  fe_block *block;
  fe_model *model;
  fe_vec vec;
}

%token TK_MODEL "'model'" TK_DIM "'dim'" TK_CONTEXT "'context'" TK_BASE "'base'"
%token TK_NET "'net'" TK_FLOW "'flow'" TK_REPEAT "'repeat'"
%token TK_TRUE "'true'" TK_FALSE "'false'"
%token <str> TK_IDENT "name"
%token <expr> TK_INT "integer" TK_NUMBER "number" TK_STRING "string"

%type <str> argname
%type <expr> expr call
%type <arg> arg
%type <item> item
%type <stmt> stmt
%type <block> block
%type <model> model
%type <vec> items stmts args exprs

%%

file
  : %empty
  | file model        { fe_vec_push(L->A, &L->file->models, $2); }
  | file error
  ;

model
  : kw_model TK_IDENT '{' items '}'  { $$ = new_model(L, $2, $4, &@2, &@$); }
  | kw_model error '{' items '}'     { $$ = new_model(L, NULL, $4, &@1, &@$); }
  ;

items
  : %empty            { $$ = (fe_vec){0}; }
  | items item        { $$ = $1; fe_vec_push(L->A, &$$, $2); }
  | items error       { $$ = $1; }
  ;

item
  : kw_dim expr ';'       { $$ = new_item(L, ITEM_DIM, &@1); $$->value = $2; }
  | kw_context expr ';'   { $$ = new_item(L, ITEM_CONTEXT, &@1); $$->value = $2; }
  | kw_base TK_IDENT ';'  { $$ = new_item(L, ITEM_BASE, &@1); $$->name = $2; $$->name_loc = loc_of(&@2); }
  | kw_base TK_IDENT '(' ')' ';' {
      $$ = new_item(L, ITEM_BASE, &@1); $$->name = $2; $$->name_loc = loc_of(&@2);
    }
  | kw_base TK_IDENT '(' args ')' ';' {
      $$ = new_item(L, ITEM_BASE, &@1); $$->name = $2; $$->name_loc = loc_of(&@2);
      $$->has_args = true; $$->args_loc = loc_of(&@4);
    }
  | kw_net TK_IDENT '=' expr ';' {
      $$ = new_item(L, ITEM_NET, &@1); $$->name = $2; $$->name_loc = loc_of(&@2); $$->value = $4;
    }
  | kw_flow block         { $$ = new_item(L, ITEM_FLOW, &@1); $$->flow = $2; }
  ;

/* A keyword that starts a model, an item or a repeat ends error recovery
** at once: errors right after it are new errors, not leftovers. */
kw_model: TK_MODEL { yyerrok; } ;
kw_dim: TK_DIM { yyerrok; } ;
kw_context: TK_CONTEXT { yyerrok; } ;
kw_base: TK_BASE { yyerrok; } ;
kw_net: TK_NET { yyerrok; } ;
kw_flow: TK_FLOW { yyerrok; } ;
kw_repeat: TK_REPEAT { yyerrok; } ;

block
  : '{' stmts '}'     { $$ = ir_alloc(L->A, sizeof *$$); $$->loc = loc_of(&@1); $$->stmts = $2; }
  ;

stmts
  : %empty            { $$ = (fe_vec){0}; }
  | stmts stmt        { $$ = $1; fe_vec_push(L->A, &$$, $2); }
  | stmts error       { $$ = $1; }
  ;

stmt
  : kw_repeat expr block  { $$ = new_stmt(L, STMT_REPEAT, &@1); $$->count = $2; $$->body = $3; }
  | kw_repeat error block {
      $$ = new_stmt(L, STMT_REPEAT, &@1); $$->count = new_expr(L, EXPR_ERROR, &@1); $$->body = $3;
    }
  | call ';'              { $$ = new_stmt(L, STMT_CALL, &@1); $$->call = $1; }
  | TK_IDENT ';'          {
      $$ = new_stmt(L, STMT_CALL, &@1); $$->call = new_call(L, $1, &@1); $$->call->bare = true;
    }
  ;

call
  : TK_IDENT '(' ')'        { $$ = new_call(L, $1, &@1); }
  | TK_IDENT '(' args ')'   { $$ = new_call(L, $1, &@1); $$->args = $3; }
  ;

args
  : arg               { $$ = (fe_vec){0}; fe_vec_push(L->A, &$$, $1); }
  | args ',' arg      { $$ = $1; fe_vec_push(L->A, &$$, $3); }
  ;

arg
  : expr              { $$ = new_arg(L, NULL, $1, &@1); }
  | argname '=' expr  { $$ = new_arg(L, $1, $3, &@1); }
  ;

/* Keywords are reserved only where they start an item or a statement. */
argname
  : TK_IDENT          { $$ = $1; }
  | TK_MODEL          { $$ = "model"; }
  | TK_DIM            { $$ = "dim"; }
  | TK_CONTEXT        { $$ = "context"; }
  | TK_BASE           { $$ = "base"; }
  | TK_NET            { $$ = "net"; }
  | TK_FLOW           { $$ = "flow"; }
  | TK_REPEAT         { $$ = "repeat"; }
  ;

expr
  : TK_INT            { $$ = $1; }
  | TK_NUMBER         { $$ = $1; }
  | TK_STRING         { $$ = $1; }
  | '-' TK_INT        { $$ = negate(L, $2, &@1); }
  | '-' TK_NUMBER     { $$ = negate(L, $2, &@1); }
  | TK_IDENT          { $$ = new_expr(L, EXPR_IDENT, &@1); $$->str = $1; }
  | call              { $$ = $1; }
  | TK_TRUE           { $$ = new_expr(L, EXPR_BOOL, &@1); $$->ival = 1; }
  | TK_FALSE          { $$ = new_expr(L, EXPR_BOOL, &@1); }
  | '[' ']'           { $$ = new_expr(L, EXPR_LIST, &@1); }
  | '[' exprs ']'     { $$ = new_expr(L, EXPR_LIST, &@1); $$->items = $2; }
  ;

exprs
  : expr              { $$ = (fe_vec){0}; fe_vec_push(L->A, &$$, $1); }
  | exprs ',' expr    { $$ = $1; fe_vec_push(L->A, &$$, $3); }
  ;

%%

void fe_vec_push(ir_arena *A, fe_vec *vec, void *p) {
  if (vec->n == vec->cap) {
    int cap = vec->cap ? 2 * vec->cap : 4;
    void **v = ir_alloc(A, (size_t)cap * sizeof *v);
    if (vec->n) memcpy(v, vec->v, (size_t)vec->n * sizeof *v);
    vec->v = v;
    vec->cap = cap;
  }
  vec->v[vec->n++] = p;
}

static fe_expr *new_expr(fe_lexer *L, fe_exprkind kind, const FE_YYLTYPE *l) {
  fe_expr *e = ir_alloc(L->A, sizeof *e);
  e->kind = kind;
  e->loc = loc_of(l);
  return e;
}

static fe_expr *new_call(fe_lexer *L, const char *name, const FE_YYLTYPE *l) {
  fe_expr *e = new_expr(L, EXPR_CALL, l);
  e->str = name;
  return e;
}

/* `-` before a literal: the literal starts at the minus sign. */
static fe_expr *negate(fe_lexer *L, fe_expr *e, const FE_YYLTYPE *l) {
  e->loc = loc_of(l);
  if (e->kind == EXPR_ERROR) return e;
  e->text = ir_sprintf(L->A, "-%s", e->text);
  e->ival = -e->ival;
  e->num = -e->num;
  return e;
}

static fe_arg *new_arg(fe_lexer *L, const char *name, fe_expr *value, const FE_YYLTYPE *l) {
  fe_arg *a = ir_alloc(L->A, sizeof *a);
  a->name = name;
  a->value = value;
  a->loc = loc_of(l);
  return a;
}

static fe_item *new_item(fe_lexer *L, fe_itemkind kind, const FE_YYLTYPE *l) {
  fe_item *it = ir_alloc(L->A, sizeof *it);
  it->kind = kind;
  it->loc = loc_of(l);
  return it;
}

static fe_stmt *new_stmt(fe_lexer *L, fe_stmtkind kind, const FE_YYLTYPE *l) {
  fe_stmt *s = ir_alloc(L->A, sizeof *s);
  s->kind = kind;
  s->loc = loc_of(l);
  return s;
}

static bool loc_le(int l1, int c1, int l2, int c2) { return l1 < l2 || (l1 == l2 && c1 <= c2); }

/* Errors inside the model's text make sema skip checks that a skipped item
** could have satisfied ("no dim", "no flow block", "unknown net"). */
static fe_model *new_model(fe_lexer *L, const char *name, fe_vec items,
                           const FE_YYLTYPE *name_loc, const FE_YYLTYPE *all) {
  fe_model *m = ir_alloc(L->A, sizeof *m);
  m->name = name;
  m->loc = loc_of(name_loc);
  m->items = items;
  for (int i = 0; i < L->D->n; i++) {
    const fe_diag *d = &L->D->v[i];
    if (loc_le(all->first_line, all->first_column, d->line, d->col) &&
        loc_le(d->line, d->col, all->last_line, all->last_column + 1))
      m->syntax_errors++;
  }
  return m;
}

/* How a token is named in "expected ..." */
static const char *expected_name(fe_lexer *L, yysymbol_kind_t k) {
  switch (k) {
  case YYSYMBOL_YYEOF: return "end of file";
  case YYSYMBOL_TK_IDENT: return "a name";
  case YYSYMBOL_TK_INT: return "an integer";
  case YYSYMBOL_TK_NUMBER: return "a number";
  case YYSYMBOL_TK_STRING: return "a string";
  default: {
    const char *s = yysymbol_name(k);   /* '(' or "'model'" */
    return s[0] == '"' ? ir_strndup(L->A, s + 1, strlen(s) - 2) : s;
  }
  }
}

/* How the token T (as read) is named in "unexpected ..." and "after ..." */
static const char *token_text(fe_lexer *L, const fe_token *t) {
  if (t->kind == 0) return "end of file";
  if (t->kind == TK_STRING) return "string";
  if (t->len > 24) return ir_sprintf(L->A, "'%.20s...'", L->text + t->off);
  return ir_sprintf(L->A, "'%.*s'", (int)t->len, L->text + t->off);
}

/* Tokens that start a value stand together as "a value"; the keywords
** that may also name an argument are then left out. */
static bool starts_value(yysymbol_kind_t k) {
  switch (k) {
  case YYSYMBOL_TK_INT: case YYSYMBOL_TK_NUMBER: case YYSYMBOL_TK_STRING:
  case YYSYMBOL_TK_TRUE: case YYSYMBOL_TK_FALSE: case YYSYMBOL_TK_IDENT:
    return true;
  default: {
    const char *s = yysymbol_name(k);
    return !strcmp(s, "'['") || !strcmp(s, "'-'");
  }
  }
}

static bool names_argument(yysymbol_kind_t k) {
  return k == YYSYMBOL_TK_MODEL || k == YYSYMBOL_TK_DIM || k == YYSYMBOL_TK_CONTEXT ||
         k == YYSYMBOL_TK_BASE || k == YYSYMBOL_TK_NET || k == YYSYMBOL_TK_FLOW ||
         k == YYSYMBOL_TK_REPEAT;
}

/* Names of the expected tokens, "a value" for a whole set; returns how many. */
static int expected_names(fe_lexer *L, const yypcontext_t *ctx, const char **names) {
  yysymbol_kind_t exp[YYNTOKENS];
  int n = yypcontext_expected_tokens(ctx, exp, YYNTOKENS), nvalue = 0, k = 0;
  if (n < 0) n = 0;
  for (int i = 0; i < n; i++) nvalue += starts_value(exp[i]);
  bool value = nvalue >= 7;
  if (value) names[k++] = "a value";
  for (int i = 0; i < n; i++) {
    if (value && (starts_value(exp[i]) || names_argument(exp[i]))) continue;
    names[k++] = expected_name(L, exp[i]);
  }
  return k;
}

/* Readable messages: "expected ';' after ')'" pointing just past the
** previous token when one token (or ';') would have fit; otherwise
** "unexpected X; expected A, B or C" at the offending token. Right after
** a lexical error the parser's complaint would only repeat it. */
static int yyreport_syntax_error(const yypcontext_t *ctx, yyscan_t scanner, fe_lexer *L) {
  (void)scanner;
  const fe_token *cur = &L->cur, *prev = &L->prev;
  if (L->lexerr.line && (prev->line == 0 || loc_le(prev->line, prev->col,
                                                   L->lexerr.line, L->lexerr.col)))
    return 0;
  const char *names[YYNTOKENS + 1];
  int n = expected_names(L, ctx, names);
  bool semi = false;
  for (int i = 0; i < n; i++)
    if (!strcmp(names[i], "';'")) semi = true;
  /* A statement that ends inside brackets lacks the closer. */
  const char *closer = NULL;
  bool ends = cur->kind == ';' || cur->kind == '}' || cur->kind == 0;
  for (int i = 0; i < n && ends; i++)
    if (!strcmp(names[i], "')'") || !strcmp(names[i], "']'")) closer = names[i];
  const FE_YYLTYPE *at = yypcontext_location(ctx);
  if ((n == 1 || semi || closer) && prev->line > 0) {
    fe_error(L->D, prev->line, prev->col + (int)prev->len, "expected %s after %s",
             semi ? "';'" : closer ? closer : names[0], token_text(L, prev));
    return 0;
  }
  const char *what = token_text(L, cur);
  if (n == 0 || n > 4) {
    fe_error(L->D, at->first_line, at->first_column, "unexpected %s", what);
    return 0;
  }
  char buf[256] = "";
  for (int i = 0; i < n; i++) {
    strcat(buf, i == 0 ? "" : i == n - 1 ? " or " : ", ");
    strcat(buf, names[i]);
  }
  fe_error(L->D, at->first_line, at->first_column, "unexpected %s; expected %s", what, buf);
  return 0;
}

/* Only Bison's own failures land here ("memory exhausted"). */
static void fe_yyerror(FE_YYLTYPE *loc, yyscan_t scanner, fe_lexer *L, const char *msg) {
  (void)scanner;
  fe_error(L->D, loc->first_line, loc->first_column, "%s", msg);
}

fe_file *fe_parse(ir_arena *A, fe_diags *D, const char *text, size_t len) {
  fe_lexer L = {.A = A, .D = D, .text = text ? text : "", .len = len, .line = 1, .col = 1};
  L.file = ir_alloc(A, sizeof *L.file);
  if (len > (size_t)1 << 30) {
    fe_error(D, 0, 0, "file is too large (more than 1 GiB)");
    L.file->syntax_errors = 1;
    return L.file;
  }
  int before = D->n;
  yyscan_t scanner;
  if (fe_yylex_init_extra(&L, &scanner)) {
    fe_error(D, 0, 0, "cannot start the lexer");
    L.file->syntax_errors = 1;
    return L.file;
  }
  fe_yy_scan_bytes(L.text, (int)len, scanner);
  fe_yyparse(scanner, &L);
  fe_yylex_destroy(scanner);
  L.file->syntax_errors = D->n - before + D->overflow;
  return L.file;
}
