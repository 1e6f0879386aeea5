/*
** runtime/rt_json.c: a small strict JSON parser (RFC 8259) for safetensors
** headers. Input is untrusted: lengths are explicit (no NUL needed), the
** nesting depth is capped, every allocation is checked, and errors give the
** byte offset.
*/
#include "rt_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct jp {
  const char *s;
  size_t len, pos;
  char *err;
  size_t errlen;
  int failed;
} jp;

static int fail(jp *p, const char *what) {
  if (!p->failed) rt_errf(p->err, p->errlen, "JSON error at byte %zu: %s", p->pos, what);
  p->failed = 1;
  return -1;
}

static void skip_ws(jp *p) {
  while (p->pos < p->len) {
    char c = p->s[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->pos++;
  }
}

static int peek(jp *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

void rt_json_free(rt_json *j) {
  while (j) {
    rt_json *next = j->next;
    rt_json_free(j->child);
    free(j->key);
    free(j->str);
    free(j);
    j = next;
  }
}

const char *rt_json_type_name(rt_jtype t) {
  switch (t) {
  case RT_JNULL: return "null";
  case RT_JFALSE: case RT_JTRUE: return "a boolean";
  case RT_JNUM: return "a number";
  case RT_JSTR: return "a string";
  case RT_JARR: return "an array";
  case RT_JOBJ: return "an object";
  }
  return "?";
}

static int hex4(jp *p, unsigned *out) {
  if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p->s[p->pos++];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return fail(p, "bad \\u escape");
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at p->pos (on the opening quote) into a malloc'd buffer.
** The decoded text is never longer than the source, which bounds the
** buffer. */
static int parse_string(jp *p, char **out, size_t *outlen) {
  p->pos++;                               /* opening quote */
  size_t start = p->pos, end = start;
  while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
  if (end >= p->len) return fail(p, "unterminated string");
  char *o = malloc(end - start + 1);
  if (!o) return fail(p, "out of memory");
  size_t n = 0;
  while (p->s[p->pos] != '"') {
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c < 0x20) { free(o); return fail(p, "control character in string"); }
    if (c != '\\') { o[n++] = (char)c; p->pos++; continue; }
    p->pos++;
    char e = p->s[p->pos++];
    switch (e) {
    case '"': o[n++] = '"'; break;
    case '\\': o[n++] = '\\'; break;
    case '/': o[n++] = '/'; break;
    case 'b': o[n++] = '\b'; break;
    case 'f': o[n++] = '\f'; break;
    case 'n': o[n++] = '\n'; break;
    case 'r': o[n++] = '\r'; break;
    case 't': o[n++] = '\t'; break;
    case 'u': {
      unsigned cp, lo;
      if (hex4(p, &cp)) { free(o); return -1; }
      if (cp >= 0xDC00 && cp <= 0xDFFF) { free(o); return fail(p, "lone low surrogate"); }
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
          free(o);
          return fail(p, "lone high surrogate");
        }
        p->pos += 2;
        if (hex4(p, &lo)) { free(o); return -1; }
        if (lo < 0xDC00 || lo > 0xDFFF) { free(o); return fail(p, "bad surrogate pair"); }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      if (cp == 0) { free(o); return fail(p, "NUL character in string"); }
      /* \uXXXX is 6 source bytes and at most 4 decoded ones; a pair 12 */
      n += put_utf8(o + n, cp);
      break;
    }
    default:
      free(o);
      return fail(p, "bad escape in string");
    }
  }
  p->pos++;                               /* closing quote */
  o[n] = 0;
  *out = o;
  *outlen = n;
  return 0;
}

static int parse_number(jp *p, rt_json *j) {
  size_t start = p->pos;
  if (peek(p) == '-') p->pos++;
  if (peek(p) == '0') p->pos++;
  else if (peek(p) >= '1' && peek(p) <= '9')
    while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
  else return fail(p, "bad number");
  size_t intend = p->pos;
  if (peek(p) == '.') {
    p->pos++;
    if (!(peek(p) >= '0' && peek(p) <= '9')) return fail(p, "bad number");
    while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
  }
  if (peek(p) == 'e' || peek(p) == 'E') {
    p->pos++;
    if (peek(p) == '+' || peek(p) == '-') p->pos++;
    if (!(peek(p) >= '0' && peek(p) <= '9')) return fail(p, "bad number");
    while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
  }
  size_t n = p->pos - start;
  char buf[64];
  if (n >= sizeof buf) {
    /* long literal: only its integer status matters, value via digits */
    j->num = HUGE_VAL;
  } else {
    memcpy(buf, p->s + start, n);
    buf[n] = 0;
    j->num = strtod(buf, NULL);
  }
  if (intend == p->pos && p->s[start] != '-') {
    uint64_t u = 0;
    j->isuint = 1;
    for (size_t i = start; i < intend; i++) {
      unsigned dgt = (unsigned)(p->s[i] - '0');
      if (u > (UINT64_MAX - dgt) / 10) { j->isuint = 0; break; }
      u = u * 10 + dgt;
    }
    j->u = u;
  }
  j->type = RT_JNUM;
  return 0;
}

static int literal(jp *p, const char *word, rt_json *j, rt_jtype t) {
  size_t n = strlen(word);
  if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n)) return fail(p, "unexpected character");
  p->pos += n;
  j->type = t;
  return 0;
}

static int parse_value(jp *p, rt_json *j, int depth);

static int parse_container(jp *p, rt_json *j, int depth, int isobj) {
  j->type = isobj ? RT_JOBJ : RT_JARR;
  if (depth >= MAX_DEPTH) return fail(p, "nesting too deep");
  p->pos++;
  skip_ws(p);
  char close = isobj ? '}' : ']';
  if (peek(p) == close) { p->pos++; return 0; }
  rt_json **tail = &j->child;
  for (;;) {
    skip_ws(p);
    rt_json *c = calloc(1, sizeof *c);
    if (!c) return fail(p, "out of memory");
    *tail = c;
    tail = &c->next;
    j->n++;
    if (isobj) {
      if (peek(p) != '"') return fail(p, "expected a member name");
      if (parse_string(p, &c->key, &c->keylen)) return -1;
      skip_ws(p);
      if (peek(p) != ':') return fail(p, "expected ':'");
      p->pos++;
      skip_ws(p);
    }
    if (parse_value(p, c, depth + 1)) return -1;
    skip_ws(p);
    int ch = peek(p);
    if (ch == ',') { p->pos++; continue; }
    if (ch == close) { p->pos++; return 0; }
    return fail(p, isobj ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static int parse_value(jp *p, rt_json *j, int depth) {
  switch (peek(p)) {
  case '{': return parse_container(p, j, depth, 1);
  case '[': return parse_container(p, j, depth, 0);
  case '"': j->type = RT_JSTR; return parse_string(p, &j->str, &j->slen);
  case 't': return literal(p, "true", j, RT_JTRUE);
  case 'f': return literal(p, "false", j, RT_JFALSE);
  case 'n': return literal(p, "null", j, RT_JNULL);
  case -1: return fail(p, "unexpected end");
  default:
    if (peek(p) == '-' || (peek(p) >= '0' && peek(p) <= '9')) return parse_number(p, j);
    return fail(p, "unexpected character");
  }
}

rt_json *rt_json_parse(const char *text, size_t len, char *err, size_t errlen) {
  jp p = { text, len, 0, err, errlen, 0 };
  rt_json *j = calloc(1, sizeof *j);
  if (!j) { rt_errf(err, errlen, "out of memory"); return NULL; }
  skip_ws(&p);
  if (parse_value(&p, j, 0) == 0) {
    skip_ws(&p);
    if (p.pos == p.len) return j;
    fail(&p, "text after the value");
  }
  rt_json_free(j);
  return NULL;
}
