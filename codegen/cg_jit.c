/*
** codegen/cg_jit.c: the kernels compiled in process with ORC LLJIT.
**
** One LLJIT per cg_jit: the module is built in its own thread-safe context,
** optimised with a host target machine, added to the main JITDylib under a
** resource tracker, and the 5 kernels (and the gradient kernel of a train
** graph) are looked up, which materialises them. The only symbols the JIT'd code can see are the runtime helpers
** and libm functions, defined as absolute symbols.
*/
#define _GNU_SOURCE
#include "cg_internal.h"

#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct cg_jit {
  LLVMOrcLLJITRef jit;
  LLVMOrcResourceTrackerRef rt;
  rt_kernel k[RT_NENTRY];
  rt_kernel train;        /* flowc_<model>_train, or NULL */
  double ms;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int define_externs(cg_jit *j, char *err, size_t errlen) {
  int n;
  const cg_extern_sym *s = cg_extern_syms(&n);
  LLVMOrcCSymbolMapPair *pairs = calloc((size_t)n, sizeof *pairs);
  if (!pairs) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
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

cg_jit *cg_jit_new(const ir_program *p, int opt, char *err, size_t errlen) {
  double t0 = now_ms();
  cg_jit *j = calloc(1, sizeof *j);
  if (!j) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  LLVMTargetMachineRef tm = cg_host_tm(opt, err, errlen);
  if (!tm) {
    free(j);
    return NULL;
  }
  LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
  LLVMContextRef C = LLVMOrcThreadSafeContextGetContext(tsc);
  char mname[256];
  snprintf(mname, sizeof mname, "flowc_%s", p && p->model && p->model->name ? p->model->name : "model");
  LLVMModuleRef M = LLVMModuleCreateWithNameInContext(mname, C);
  int rc = cg_emit_module(p, M, tm, 0, 1, err, errlen);
  if (!rc) rc = cg_optimize(M, tm, opt, err, errlen);
  LLVMDisposeTargetMachine(tm);
  if (rc) {
    LLVMDisposeModule(M);
    LLVMOrcDisposeThreadSafeContext(tsc);
    free(j);
    return NULL;
  }

  /* the JIT's own target machine: same host CPU, features and level */
  LLVMTargetMachineRef jtm = cg_host_tm(opt, err, errlen);
  LLVMErrorRef e = NULL;
  if (!jtm) goto fail_module;
  LLVMOrcLLJITBuilderRef jb = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
      jb, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jtm));
  if ((e = LLVMOrcCreateLLJIT(&j->jit, jb))) {
    cg_llvm_error(e, "creating the JIT", err, errlen);
    j->jit = NULL;
    goto fail_module;
  }
  if (define_externs(j, err, errlen)) goto fail_module;

  LLVMOrcJITDylibRef jd = LLVMOrcLLJITGetMainJITDylib(j->jit);
  j->rt = LLVMOrcJITDylibCreateResourceTracker(jd);
  LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(M, tsc);
  LLVMOrcDisposeThreadSafeContext(tsc); /* the module keeps it alive */
  tsc = NULL;
  M = NULL;
  if ((e = LLVMOrcLLJITAddLLVMIRModuleWithRT(j->jit, j->rt, tsm))) {
    LLVMOrcDisposeThreadSafeModule(tsm);
    cg_llvm_error(e, "adding the module to the JIT", err, errlen);
    goto fail;
  }
  for (int ent = 0; ent < RT_NENTRY; ent++) {
    if (!p->entry[ent]) continue;
    char name[256];
    cg_kernel_name(p, ent, name, sizeof name);
    LLVMOrcExecutorAddress a = 0;
    if ((e = LLVMOrcLLJITLookup(j->jit, &a, name))) {
      cg_llvm_error(e, name, err, errlen);
      goto fail;
    }
    j->k[ent] = (rt_kernel)(uintptr_t)a;
  }
  if (p->train) {
    char name[256];
    cg_kernel_name(p, CG_TRAIN, name, sizeof name);
    LLVMOrcExecutorAddress a = 0;
    if ((e = LLVMOrcLLJITLookup(j->jit, &a, name))) {
      cg_llvm_error(e, name, err, errlen);
      goto fail;
    }
    j->train = (rt_kernel)(uintptr_t)a;
  }
  j->ms = now_ms() - t0;
  return j;

fail_module:
  if (M) LLVMDisposeModule(M);
  if (tsc) LLVMOrcDisposeThreadSafeContext(tsc);
fail:
  cg_jit_free(j);
  return NULL;
}

void cg_jit_kernels(const cg_jit *j, rt_kernel out[RT_NENTRY]) {
  for (int e = 0; e < RT_NENTRY; e++) out[e] = j->k[e];
}

rt_kernel cg_jit_train(const cg_jit *j) { return j->train; }

double cg_jit_compile_ms(const cg_jit *j) { return j->ms; }

void cg_jit_free(cg_jit *j) {
  if (!j) return;
  if (j->rt) {
    LLVMErrorRef e = LLVMOrcResourceTrackerRemove(j->rt);
    if (e) LLVMConsumeError(e);
    LLVMOrcReleaseResourceTracker(j->rt);
  }
  if (j->jit) {
    LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->jit);
    if (e) LLVMConsumeError(e);
  }
  free(j);
}
