/*
** codegen/cg.h: from a program that has been through pass_pipeline to
** native code: the runtime descriptor, an in-process JIT (LLVM ORC LLJIT)
** and a shared object with the flowc-cli.md API.
**
** Each entry becomes one kernel `int32_t flowc_<model>_<entry>(void *const
** *args, int64_t nrows)` with the ABI of runtime/rt.h; it processes up to
** desc.tile rows through the whole graph, every column size a compile-time
** constant, and returns 0, or 1 + layer when a fixed-point loop (IR_FIX_END)
** of that layer left a row of the tile unconverged. IR_LOGDET and
** IR_LOGDET_GRAD take D <= RT_K_LOGDET_MAX (a larger D is a codegen error). The train graph (p->train, when present) becomes the gradient
** kernel flowc_<model>_train of rt.h's training ABI: in the JIT only, a
** shared object is for inference. Only codegen/ includes the LLVM headers.
*/
#ifndef FLOWC_CG_H
#define FLOWC_CG_H

#include <stddef.h>
#include <stdio.h>

#include "ir.h"
#include "rt.h"

typedef struct cg_jit cg_jit;

/* Linear layers with in*out >= CG_GEMM_MIN_SIZE call OpenBLAS (rt_k_gemm;
** in the gradient kernel also rt_k_gemm_nn for dy W and rt_k_gemm_tn_acc
** for the weight gradient) when a call has at least CG_GEMM_MIN_ROWS rows
** and the operands' rows are contiguous; smaller ones are inline loops
** with constant trip counts. */
#define CG_GEMM_MIN_SIZE (64 * 64)
/* ... and those with in*out >= CG_GEMV_MIN_SIZE (a weight of 1 MB) call it
** for any number of rows (sgemv below 4 rows): the inline loops are slower
** on a weight that streams from L3 (pi0's head, batch-1 sampling, one
** thread: 24 -> 21 ms; two threads 15 ms). */
#define CG_GEMV_MIN_SIZE (512 * 512)
#define CG_GEMM_MIN_ROWS 16

/* Rows per kernel call chosen for p: 64, halved while tile * scratch floats
** of the largest entry (or the train graph) would exceed 512 KiB (at least 1). */
int cg_tile(const ir_program *p);

/* Descriptor of a program that has been through pass_pipeline (has_train
** and train filled when p->train exists). malloc'd,
** free with rt_desc_free. NULL with err set when the program uses a
** parameter-only op the runtime's prep program cannot compute. */
rt_desc *cg_desc_err(const ir_program *p, char *err, size_t errlen);
rt_desc *cg_desc(const ir_program *p);

/* Kernel selection masks for cg_jit_new_entries: bit e (rt entry order)
** for entry e, CG_TRAIN_BIT for the gradient kernel. */
#define CG_TRAIN_BIT 5
#define CG_ENTRY(e) (1u << (e))
#define CG_TRAIN_MASK (1u << CG_TRAIN_BIT)
#define CG_ALL_KERNELS (((1u << RT_NENTRY) - 1u) | CG_TRAIN_MASK)

/* JIT-compiles the 5 entries (and the gradient kernel when p->train) in
** process; kernels valid until cg_jit_free. opt 0..3 = LLVM pipeline level
** (default<O0..O3>). NULL with err set. */
cg_jit *cg_jit_new(const ir_program *p, int opt, char *err, size_t errlen);
/* The same for the kernels of mask only (bits the program lacks are
** ignored); the others are NULL, so cost nothing. Each kernel is its own
** LLVM module, optimised and compiled on up to one thread per kernel. */
cg_jit *cg_jit_new_entries(const ir_program *p, int opt, unsigned mask, char *err,
                           size_t errlen);
/* The kernels in rt entry order; NULL for an entry the program lacks or
** the mask left out. */
void cg_jit_kernels(const cg_jit *j, rt_kernel out[RT_NENTRY]);
/* The gradient kernel flowc_<model>_train (rt.h's training ABI) compiled
** from p->train; NULL when the program has no train graph. */
rt_kernel cg_jit_train(const cg_jit *j);
double cg_jit_compile_ms(const cg_jit *j);
void cg_jit_free(cg_jit *j);

/* The optimised LLVM module as text. 0, or -1 with err set. */
int cg_dump_llvm(const ir_program *p, int opt, FILE *f, char *err, size_t errlen);

/* Writes so_path and NAME.h beside it (NAME = model name); weights (a
** safetensors image) built in when non-NULL. Never leaves a partial file.
** 0, or -1 with err set. */
int cg_build_so(const ir_program *p, int opt, const void *weights, size_t wlen,
                const char *so_path, char *err, size_t errlen);

#endif
