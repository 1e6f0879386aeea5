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
  "  bench    [-w W] --batch B --op logprob|sample|train\n"
  "  dump     --ir [--after PASS] | --llvm\n"
  "  train    --data X.npy -o W.safetensors [--valid V.npy | --valid-fraction F]\n"
  "           [--steps N | --epochs E] [--batch B] [--lr LR] [--schedule constant|cosine|onecycle]\n"
  "           [--warmup N] [--clip G] [--weight-decay W] [--optimizer adam|adamw] [--seed S]\n"
  "           [--init W0] [--patience P] [--eval-every N] [--checkpoint C [--checkpoint-every N]]\n"
  "           [--resume C]\n"
  "  toy      NAME -n N --seed S -o X.npy [--context-out C.npy]\n"
  "           (moons circles 8gaussians checkerboard pinwheel 2spirals tabular8;\n"
  "           reach: [50, 7] action chunks, needs --context-out for its 512-D context)\n"
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
    {"--op", offsetof(drv_opts, op)}, {"--objective", offsetof(drv_opts, objective)},
    {"--valid", offsetof(drv_opts, valid)}, {"--valid-context", offsetof(drv_opts, valid_context)},
    {"--schedule", offsetof(drv_opts, schedule)}, {"--init", offsetof(drv_opts, init)},
    {"--resume", offsetof(drv_opts, resume)}, {"--checkpoint", offsetof(drv_opts, checkpoint)},
    {"--optimizer", offsetof(drv_opts, optimizer)}, {"--time-dist", offsetof(drv_opts, time_dist)},
    {"--context-out", offsetof(drv_opts, context_out)},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (strcmp(t[i].name, name) == 0) return (const char **)((char *)o + t[i].off);
  return NULL;
}

/* Options with a number: name, where it goes (long or double). */
static int num_opt(drv_opts *o, const char *name, const char *val) {
  static const struct { const char *name; size_t off; int dbl; } t[] = {
    {"--lr", offsetof(drv_opts, lr), 1}, {"--clip", offsetof(drv_opts, clip), 1},
    {"--weight-decay", offsetof(drv_opts, weight_decay), 1},
    {"--valid-fraction", offsetof(drv_opts, valid_fraction), 1},
    {"--steps", offsetof(drv_opts, steps), 0}, {"--epochs", offsetof(drv_opts, epochs), 0},
    {"--patience", offsetof(drv_opts, patience), 0}, {"--warmup", offsetof(drv_opts, warmup), 0},
    {"--eval-every", offsetof(drv_opts, eval_every), 0},
    {"--checkpoint-every", offsetof(drv_opts, checkpoint_every), 0},
    {"--stop-after", offsetof(drv_opts, stop_after), 0},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    if (strcmp(t[i].name, name)) continue;
    char *end;
    if (!val) return -1;
    if (t[i].dbl) {
      double v = strtod(val, &end);
      if (!*val || *end || !(v >= 0) || v > 1e30) return -1;
      *(double *)((char *)o + t[i].off) = v;
    } else {
      long v = strtol(val, &end, 10);
      if (!*val || *end || v < 0) return -1;
      *(long *)((char *)o + t[i].off) = v;
    }
    return 1;
  }
  return 0;
}

static int parse_args(int argc, char **argv, drv_opts *o) {
  o->opt = 2;
  o->n = -1;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = str_opt(o, a);
    long v;
    int num = num_opt(o, a, i + 1 < argc ? argv[i + 1] : NULL);
    if (num < 0) {
      fprintf(stderr, "flowc: %s needs a non-negative number\n", a);
      return usage(NULL);
    } else if (num > 0) {
      i++;
    } else if (slot) {
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
  if (!o->flow) return usage(strcmp(o->cmd, "toy") ? "no MODEL.flow given" : "no data set named");
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
    {"bench", cmd_bench}, {"train", cmd_train}, {"toy", cmd_toy},
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
