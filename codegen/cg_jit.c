/*
** codegen/cg_jit.c: the kernels compiled in process with ORC LLJIT.
**
** Only the kernels a command asks for are compiled, each as its own module
** in its own LLVM context: emitted, optimised and turned into an object
** file in memory by a host target machine. Kernels are independent, so the
** jobs run on up to one thread per kernel (as many as there are cores), the
** largest first. The objects then go to one LLJIT's main JITDylib and are
** linked when the kernels are looked up. The only symbols the JIT'd code
** can see are the runtime helpers and libm functions, defined as absolute
** symbols.
*/
#define _GNU_SOURCE
#include "cg_internal.h"

#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cg_jit {
  LLVMOrcLLJITRef jit;
  rt_kernel k[RT_NENTRY];
  rt_kernel train;        /* flowc_<model>_train, or NULL */
  double ms;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- compiling one kernel to an object file ---- */

typedef struct job {
  const ir_program *p;
  int opt, kernel;          /* an entry, or CG_TRAIN */
  LLVMMemoryBufferRef obj;  /* the result, NULL on failure */
  char err[512];
} job;

typedef struct jobs {
  job *v;
  int n;
  atomic_int next;
} jobs;

static void compile_one(job *j) {
  LLVMTargetMachineRef tm = cg_host_tm(j->opt, j->err, sizeof j->err);
  if (!tm) return;
  LLVMContextRef C = LLVMContextCreate();
  LLVMModuleRef M = cg_module_new(j->p, C);
  int rc = cg_emit_module(j->p, M, tm, 0, 1u << j->kernel, j->err, sizeof j->err);
  if (!rc) rc = cg_optimize(M, tm, j->opt, j->err, sizeof j->err);
  if (!rc) {
    char *msg = NULL;
    if (LLVMTargetMachineEmitToMemoryBuffer(tm, M, LLVMObjectFile, &msg, &j->obj)) {
      cg_fail(j->err, sizeof j->err, "compiling the %s kernel: %s", cg_entry_name(j->kernel),
              msg ? msg : "?");
      j->obj = NULL;
    }
    LLVMDisposeMessage(msg);
  }
  LLVMDisposeModule(M);
  LLVMContextDispose(C);
  LLVMDisposeTargetMachine(tm);
}

static void *worker(void *arg) {
  jobs *q = arg;
  for (int i; (i = atomic_fetch_add(&q->next, 1)) < q->n;) compile_one(&q->v[i]);
  return NULL;
}

/* Runs every job, on min(jobs, cores) threads counting this one. */
static void compile_all(jobs *q) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int nt = q->n < cores ? q->n : (int)(cores > 1 ? cores : 1);
  pthread_t th[CG_TRAIN + 1];
  int started = 0;
  cg_llvm_init();
  for (int t = 1; t < nt; t++)
    if (pthread_create(&th[started], NULL, worker, q) == 0) started++;
  worker(q);
  for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
}

/* ---- the JIT ---- */

static int define_externs(cg_jit *j, char *err, size_t errlen) {
  int n;
  const cg_extern_sym *s = cg_extern_syms(&n);
  LLVMOrcCSymbolMapPair *pairs = calloc((size_t)n, sizeof *pairs);
  if (!pairs) return cg_fail(err, errlen, "out of memory");
  for (int i = 0; i < n; i++) {
    pairs[i].Name = LLVMOrcLLJITMangleAndIntern(j->jit, s[i].name);
    pairs[i].Sym.Address = (LLVMOrcExecutorAddress)(uintptr_t)s[i].addr;
    pairs[i].Sym.Flags.GenericFlags =
        LLVMJITSymbolGenericFlagsExported | LLVMJITSymbolGenericFlagsCallable;
    pairs[i].Sym.Flags.TargetFlags = 0;
  }
  /* the unit takes the names over */
  LLVMOrcMaterializationUnitRef mu = LLVMOrcAbsoluteSymbols(pairs, (size_t)n);
  free(pairs);
  LLVMErrorRef e = LLVMOrcJITDylibDefine(LLVMOrcLLJITGetMainJITDylib(j->jit), mu);
  if (e) {
    LLVMOrcDisposeMaterializationUnit(mu);
    return cg_llvm_error(e, "JIT symbols", err, errlen);
  }
  return 0;
}

static int make_jit(cg_jit *j, int opt, char *err, size_t errlen) {
  /* the JIT's own target machine: same host CPU, features and level */
  LLVMTargetMachineRef jtm = cg_host_tm(opt, err, errlen);
  if (!jtm) return -1;
  LLVMOrcLLJITBuilderRef jb = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
      jb, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jtm));
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&j->jit, jb);
  if (e) {
    j->jit = NULL;
    return cg_llvm_error(e, "creating the JIT", err, errlen);
  }
  return define_externs(j, err, errlen);
}

cg_jit *cg_jit_new_entries(const ir_program *p, int opt, unsigned mask, char *err,
                           size_t errlen) {
  double t0 = now_ms();
  if (!p || !p->model) {
    cg_fail(err, errlen, "codegen: no program");
    return NULL;
  }
  cg_jit *j = calloc(1, sizeof *j);
  jobs q = {0};
  q.v = calloc(CG_TRAIN + 1, sizeof *q.v);
  if (!j || !q.v) {
    free(j);
    free(q.v);
    cg_fail(err, errlen, "out of memory");
    return NULL;
  }
  /* the largest first: the gradient kernel, then log_prob, ... */
  for (int k = CG_TRAIN; k >= 0; k--) {
    const ir_graph *g = k == CG_TRAIN ? p->train : p->entry[k];
    if (g && (mask & (1u << k))) q.v[q.n++] = (job){.p = p, .opt = opt, .kernel = k};
  }
  compile_all(&q);
  int rc = 0;
  for (int i = 0; i < q.n && !rc; i++)
    if (!q.v[i].obj) rc = cg_fail(err, errlen, "%s", q.v[i].err);
  if (!rc) rc = make_jit(j, opt, err, errlen);
  LLVMOrcJITDylibRef jd = rc ? NULL : LLVMOrcLLJITGetMainJITDylib(j->jit);
  for (int i = 0; i < q.n; i++) {
    if (!q.v[i].obj) continue;
    if (rc) {
      LLVMDisposeMemoryBuffer(q.v[i].obj);
      continue;
    }
    /* the JIT owns the buffer from here, whatever the outcome */
    LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(j->jit, jd, q.v[i].obj);
    if (e) rc = cg_llvm_error(e, "adding a kernel to the JIT", err, errlen);
  }
  for (int i = 0; i < q.n && !rc; i++) {
    int k = q.v[i].kernel;
    char name[256];
    cg_kernel_name(p, k, name, sizeof name);
    LLVMOrcExecutorAddress a = 0;
    LLVMErrorRef e = LLVMOrcLLJITLookup(j->jit, &a, name);
    if (e) rc = cg_llvm_error(e, name, err, errlen);
    else if (k == CG_TRAIN) j->train = (rt_kernel)(uintptr_t)a;
    else j->k[k] = (rt_kernel)(uintptr_t)a;
  }
  free(q.v);
  if (rc) {
    cg_jit_free(j);
    return NULL;
  }
  j->ms = now_ms() - t0;
  return j;
}

cg_jit *cg_jit_new(const ir_program *p, int opt, char *err, size_t errlen) {
  return cg_jit_new_entries(p, opt, CG_ALL_KERNELS, err, errlen);
}

void cg_jit_kernels(const cg_jit *j, rt_kernel out[RT_NENTRY]) {
  for (int e = 0; e < RT_NENTRY; e++) out[e] = j->k[e];
}

rt_kernel cg_jit_train(const cg_jit *j) { return j->train; }

double cg_jit_compile_ms(const cg_jit *j) { return j->ms; }

void cg_jit_free(cg_jit *j) {
  if (!j) return;
  if (j->jit) {
    LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->jit);
    if (e) LLVMConsumeError(e);
  }
  free(j);
}
