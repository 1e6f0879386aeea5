/*
** driver/main.c: option parsing and dispatch (flowc-cli.md).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

static const char usage_text[] =
  "usage: flowc COMMAND MODEL.flow [options]\n"
  "commands:\n"
  "  check    parse and check; print each model\n"
  "  init     --seed S -o W.safetensors          fresh weights\n"
  "  logprob  -w W --data X -o LP.npy            log p(x) per row\n"
  "  encode   -w W --data X -o Z.npy [--logdet LD.npy]\n"
  "  decode   -w W --data Z -o X.npy [--logdet LD.npy]\n"
  "  sample   -w W -n N --seed S -o X.npy [--logprob LP.npy]\n"
  "  build    [-w W] -o libNAME.so                shared object + NAME.h\n"
  "  bench    [-w W] --batch B --op logprob|sample\n"
  "  dump     --ir [--after PASS] | --llvm\n"
  "options: --model NAME  --threads N  -O0..-O3  --context C.npy\n"
  "         --disable PASS[,PASS]  (skip optimisation passes)\n";

static int usage(const char *msg) {
  if (msg) fprintf(stderr, "flowc: %s\n", msg);
  fputs(usage_text, stderr);
  return EXIT_USAGE;
}

static int parse_long(const char *s, long *v) {
  char *end;
  *v = strtol(s, &end, 10);
  return *s && !*end;
}

/* Options with a value: name, where it goes. */
static const char **str_opt(drv_opts *o, const char *name) {
  static const struct { const char *name; size_t off; } t[] = {
    {"--model", offsetof(drv_opts, model)}, {"-w", offsetof(drv_opts, weights)},
    {"--weights", offsetof(drv_opts, weights)}, {"--data", offsetof(drv_opts, data)},
    {"--context", offsetof(drv_opts, context)}, {"-o", offsetof(drv_opts, out)},
    {"--logdet", offsetof(drv_opts, logdet)}, {"--logprob", offsetof(drv_opts, logprob)},
    {"--after", offsetof(drv_opts, after)}, {"--disable", offsetof(drv_opts, disable)},
    {"--op", offsetof(drv_opts, op)},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (strcmp(t[i].name, name) == 0) return (const char **)((char *)o + t[i].off);
  return NULL;
}

static int parse_args(int argc, char **argv, drv_opts *o) {
  o->opt = 2;
  o->n = -1;
  o->batch = 1024;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = str_opt(o, a);
    long v;
    if (slot) {
      if (i + 1 >= argc) return usage("missing value after option");
      *slot = argv[++i];
    } else if (a[0] == '-' && a[1] == 'O' && a[2] >= '0' && a[2] <= '3' && !a[3]) {
      o->opt = a[2] - '0';
    } else if (!strcmp(a, "--ir")) {
      o->ir = 1;
    } else if (!strcmp(a, "--llvm")) {
      o->llvm = 1;
    } else if (!strcmp(a, "--threads") || !strcmp(a, "-n") || !strcmp(a, "--seed") ||
               !strcmp(a, "--batch")) {
      if (i + 1 >= argc || !parse_long(argv[i + 1], &v) || v < 0)
        return usage("expected a non-negative integer after option");
      i++;
      if (!strcmp(a, "--threads")) o->threads = (int)v;
      else if (!strcmp(a, "-n")) o->n = v;
      else if (!strcmp(a, "--batch")) o->batch = v;
      else { o->seed = (uint64_t)v; o->have_seed = 1; }
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "flowc: unknown option '%s'\n", a);
      return usage(NULL);
    } else if (!o->flow) {
      o->flow = a;
    } else {
      fprintf(stderr, "flowc: unexpected argument '%s'\n", a);
      return usage(NULL);
    }
  }
  if (!o->flow) return usage("no MODEL.flow given");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    usage(NULL);
    return argc < 2 ? EXIT_USAGE : 0;
  }
  static const struct { const char *name; int (*fn)(const drv_opts *); } cmds[] = {
    {"check", cmd_check}, {"init", cmd_init}, {"logprob", cmd_run}, {"encode", cmd_run},
    {"decode", cmd_run}, {"sample", cmd_sample}, {"build", cmd_build}, {"dump", cmd_dump},
    {"bench", cmd_bench},
  };
  drv_opts o = {0};
  o.cmd = argv[1];
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(cmds[i].name, o.cmd)) {
      int rc = parse_args(argc, argv, &o);
      return rc ? rc : cmds[i].fn(&o);
    }
  fprintf(stderr, "flowc: unknown command '%s'\n", o.cmd);
  return usage(NULL);
}
