/*
** codegen/cg_llvm.c: what the codegen files share around LLVM: errors,
** target setup, kernel and module names, the optimisation pipeline and the
** LLVM text dump.
*/
#define _GNU_SOURCE
#include "cg_internal.h"

#include <llvm-c/Support.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const entry_names[RT_NENTRY + 1] = {
  "encode", "encode_ld", "decode", "decode_ld", "log_prob", "train"
};

int cg_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

int cg_llvm_error(LLVMErrorRef e, const char *what, char *err, size_t errlen) {
  char *m = LLVMGetErrorMessage(e);
  cg_fail(err, errlen, "%s: %s", what, m);
  LLVMDisposeErrorMessage(m);
  return -1;
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void do_init(void) {
  /* Loop strength reduction took a third of the code generator's time on
     flow kernels (RealNVP D=2 log_prob in llc: 125 of 394 ms) and changed
     no measured run time (x86 addressing modes do its work). The option is
     process-wide, so it is set once, before anything is compiled. */
  const char *argv[] = {"flowc", "-disable-lsr"};
  LLVMParseCommandLineOptions(2, argv, NULL);
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  LLVMInitializeNativeAsmParser();
}
void cg_llvm_init(void) { pthread_once(&init_once, do_init); }

LLVMTargetMachineRef cg_host_tm(int opt, char *err, size_t errlen) {
  cg_llvm_init();
  char *triple = LLVMGetDefaultTargetTriple();
  char *cpu = LLVMGetHostCPUName();
  char *feat = LLVMGetHostCPUFeatures();
  LLVMTargetRef T;
  char *msg = NULL;
  LLVMTargetMachineRef tm = NULL;
  if (LLVMGetTargetFromTriple(triple, &T, &msg)) {
    cg_fail(err, errlen, "no LLVM target for %s: %s", triple, msg ? msg : "?");
    LLVMDisposeMessage(msg);
  } else {
    LLVMCodeGenOptLevel lvl = opt <= 0 ? LLVMCodeGenLevelNone
                            : opt == 1 ? LLVMCodeGenLevelLess
                            : opt == 2 ? LLVMCodeGenLevelDefault
                                       : LLVMCodeGenLevelAggressive;
    tm = LLVMCreateTargetMachine(T, triple, cpu, feat, lvl, LLVMRelocPIC,
                                 LLVMCodeModelDefault);
    if (!tm) cg_fail(err, errlen, "cannot create a target machine for %s", triple);
  }
  LLVMDisposeMessage(triple);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(feat);
  return tm;
}

const char *cg_model_name(const ir_program *p) {
  return p && p->model && p->model->name ? p->model->name : "model";
}

void cg_kernel_name(const ir_program *p, int e, char *buf, size_t len) {
  snprintf(buf, len, "flowc_%s_%s", cg_model_name(p), entry_names[e]);
}

const char *cg_entry_name(int e) { return entry_names[e]; }

LLVMModuleRef cg_module_new(const ir_program *p, LLVMContextRef C) {
  char mname[256];
  snprintf(mname, sizeof mname, "flowc_%s", cg_model_name(p));
  return LLVMModuleCreateWithNameInContext(mname, C);
}

int cg_optimize(LLVMModuleRef M, LLVMTargetMachineRef tm, int opt, char *err, size_t errlen) {
  if (opt < 0) opt = 0;
  if (opt > 3) opt = 3;
  char pipeline[32];
  snprintf(pipeline, sizeof pipeline, "default<O%d>", opt);
  LLVMPassBuilderOptionsRef o = LLVMCreatePassBuilderOptions();
  /* Compile time matters as much as speed here (every command JITs): at
     O2 LLVM's unroller and interleaving tripled compile time for no
     measurable gain on flow models (their run time is in the libm calls
     and the spline helper), so they are O3 only. */
  LLVMPassBuilderOptionsSetLoopVectorization(o, opt >= 2);
  LLVMPassBuilderOptionsSetSLPVectorization(o, opt >= 2);
  LLVMPassBuilderOptionsSetLoopInterleaving(o, opt >= 3);
  LLVMPassBuilderOptionsSetLoopUnrolling(o, opt >= 3);
  LLVMErrorRef e = LLVMRunPasses(M, pipeline, tm, o);
  LLVMDisposePassBuilderOptions(o);
  if (e) return cg_llvm_error(e, "LLVM optimisation", err, errlen);
  return 0;
}

int cg_dump_llvm(const ir_program *p, int opt, FILE *f, char *err, size_t errlen) {
  LLVMTargetMachineRef tm = cg_host_tm(opt, err, errlen);
  if (!tm) return -1;
  LLVMContextRef C = LLVMContextCreate();
  LLVMModuleRef M = cg_module_new(p, C);
  int rc = cg_emit_module(p, M, tm, 0, CG_ALL_KERNELS, err, errlen);
  if (!rc) rc = cg_optimize(M, tm, opt, err, errlen);
  if (!rc) {
    char *s = LLVMPrintModuleToString(M);
    if (fputs(s, f) < 0) rc = cg_fail(err, errlen, "cannot write the LLVM IR");
    LLVMDisposeMessage(s);
  }
  LLVMDisposeModule(M);
  LLVMContextDispose(C);
  LLVMDisposeTargetMachine(tm);
  return rc;
}
