/*
** codegen/cg_internal.h: shared between the codegen files; LLVM inside.
*/
#ifndef FLOWC_CG_INTERNAL_H
#define FLOWC_CG_INTERNAL_H

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/TargetMachine.h>

#include "cg.h"

/* Formats into err (when err && errlen); returns -1. */
int cg_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* One-time LLVM target initialisation (thread-safe). */
void cg_llvm_init(void);
/* A target machine for the host CPU and its features, PIC. NULL + err. */
LLVMTargetMachineRef cg_host_tm(int opt, char *err, size_t errlen);
/* The gradient kernel's index for cg_kernel_name (after the entries). */
#define CG_TRAIN RT_NENTRY
_Static_assert(CG_TRAIN == CG_TRAIN_BIT, "the train kernel's mask bit is its index");
/* Kernel symbol name of entry e: flowc_<model>_<entry>; e == CG_TRAIN:
** flowc_<model>_train. */
void cg_kernel_name(const ir_program *p, int e, char *buf, size_t len);
/* "encode", ..., "log_prob" for entry e; "train" for CG_TRAIN. */
const char *cg_entry_name(int e);
/* The model's name ("model" when it has none). */
const char *cg_model_name(const ir_program *p);
/* An empty module flowc_<model> in C. */
LLVMModuleRef cg_module_new(const ir_program *p, LLVMContextRef C);
/* Emits into M (in M's context) the kernel of each entry of p whose bit is
** set in mask (CG_ENTRY(e)), and with CG_TRAIN_MASK the gradient kernel of
** p->train when there is one; with hidden set, they get hidden visibility
** (shared object build). Sets the module's triple and data layout from tm.
** 0, or -1 with err set. */
int cg_emit_module(const ir_program *p, LLVMModuleRef M, LLVMTargetMachineRef tm,
                   int hidden, unsigned mask, char *err, size_t errlen);
/* Runs default<O{opt}> with tm. 0, or -1 with err set. */
int cg_optimize(LLVMModuleRef M, LLVMTargetMachineRef tm, int opt, char *err,
                size_t errlen);
/* Copies an LLVMErrorRef's message into err and disposes of it; -1. */
int cg_llvm_error(LLVMErrorRef e, const char *what, char *err, size_t errlen);

/* Names of the external functions kernels may call, with their addresses
** in this process (for the JIT's absolute symbols). */
typedef struct cg_extern_sym { const char *name; void *addr; } cg_extern_sym;
const cg_extern_sym *cg_extern_syms(int *n);

#endif
