/*
** codegen/cg_emit.c: IR graph -> one LLVM function per entry.
**
** i32 flowc_<model>_<entry>(ptr args, i64 nrows) walks the graph's nodes
** in order and returns 0 (or 1 + layer, below). A batch node's value lives at scratch + offset*tile floats,
** row-major [tile, n] (pass_memplan's offsets); inputs are read straight
** from args[0]/args[1]. Parameters are args[4 + i], the prep results of the
** entry args[4 + P + prep], constants are LLVM constants. Every column count
** is a compile-time constant; only the row count is dynamic. Each node is
** one loop nest over the rows of the tile; elementwise ops over contiguous
** buffers are a single flat loop so that the vectorizer sees a simple loop.
**
** The train graph's kernel has the same layout plus P + Q gradient slot
** pointers after the scratch pointer; its sinks (IR_ACC_SUM, IR_ACC_OUTER)
** sum the tile's rows into a stack buffer and then add that into the slot.
** Its noise input (IR_INPUT slot 2) is args[5 + 2(P + Q)], rows of its width.
**
** A fixed-point loop (IR_FIX_BEGIN .. IR_FIX_END) is a real loop in the
** code: the body's nodes are emitted once, between a loop head after
** FIX_BEGIN and the back edge at FIX_END. Each row stops moving on its own
** (a converged row keeps its y, so the body gives it the same ynew again),
** which makes a row's result independent of the rows beside it. A row still
** moving after i0 runs of the body makes the kernel return 1 + i1.**
** Units: where a run of nodes repeats back to back (a flow's repeated
** layers, a solver's steps; plan_cuts), and after every CG_SEG_NODES loop
** nests, the kernel is cut: the nodes that follow go into an internal
** noinline function i32 (ptr args, i64 nrows, ptr tab), called in order
** by the kernel, which returns the first nonzero status. A unit reads every
** pointer (args[k], a node's buffer) from its table, which the kernel fills
** before the call (vptr), so repetitions that differ only in weights and
** buffers are the same code, and only the first is kept (unit_close):
** RealNVP's eight couplings compile as about three. Cuts fall only outside
** fixed-point loops; LLVM's loop analyses also cost about the square of
** the loops in one function, which the cuts bound.
*/
#define _GNU_SOURCE
#include "cg_internal.h"
#include "rt_ode.h"
#include "rt_temb.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/DebugInfo.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const LLVMFastMathFlags FMF =
    LLVMFastMathAllowReassoc | LLVMFastMathAllowContract | LLVMFastMathNoSignedZeros;

/* ---- externals the kernels may call ---- */

static const cg_extern_sym externs[] = {
  {"rt_k_rqs", (void *)rt_k_rqs},
  {"rt_k_rqs_inv", (void *)rt_k_rqs_inv},
  {"rt_k_rqs_grad", (void *)rt_k_rqs_grad},
  {"rt_k_rqs_inv_grad", (void *)rt_k_rqs_inv_grad},
  {"rt_k_gemm", (void *)rt_k_gemm},
  {"rt_k_gemm_nn", (void *)rt_k_gemm_nn},
  {"rt_k_gemm_tn_acc", (void *)rt_k_gemm_tn_acc},
  {"rt_k_logdet", (void *)rt_k_logdet},
  {"rt_k_sde_noise", (void *)rt_k_sde_noise},
  {"rt_k_ode_ctrl", (void *)rt_k_ode_ctrl},
  {"rt_k_logdet_grad", (void *)rt_k_logdet_grad},
  {"expf", (void *)expf},
  {"expm1f", (void *)expm1f},
  {"logf", (void *)logf},
  {"log1pf", (void *)log1pf},
  {"tanhf", (void *)tanhf},
  {"erff", (void *)erff},
  {"sin", (void *)sin},
  {"cos", (void *)cos},
  /* what LLVM may introduce by itself (loop idioms, libcall folding) */
  {"memcpy", (void *)memcpy},
  {"memmove", (void *)memmove},
  {"memset", (void *)memset},
  {"exp2f", (void *)exp2f},
  {"ldexpf", (void *)ldexpf},
  {"powf", (void *)powf},
  {"sqrtf", (void *)sqrtf},
  {"fabsf", (void *)fabsf},
  {"fmaxf", (void *)fmaxf},
  {"fminf", (void *)fminf},
  {"floorf", (void *)floorf},
};

const cg_extern_sym *cg_extern_syms(int *n) {
  *n = (int)(sizeof externs / sizeof externs[0]);
  return externs;
}

/* ---- tile ---- */

/* Rows per kernel call at most: 128, halved while a tile's scratch exceeds
** 2 MB (about L2 + a share of L3 here). Not 512 KB: wide training graphs
** then ran 4-row tiles, below the size where their products go to BLAS
** (RealNVP D=16, 256x2: a training step 60 ms -> 29 ms). 128 rather than
** 64: OpenBLAS repacks a weight for every call, and more rows a call
** amortise it (RealNVP D=2 and D=16 log_prob at batch 65536: 42 -> 39 and
** 575 -> 519 ms; pi0's flow-matching training at batch 256: 2400 -> 3100
** samples/s). A graph with a weight of 512 x 512 or more may use 16 MB, and
** so may the train graph: its activations are written on the way forward
** and read back on the way back, so they leave the cache whatever the
** tile, and its weight gradients want rows (RealNVP D=16 at batch 256:
** 64 -> 128 rows, a training step 21 -> 19 ms, medians of four
** alternating runs).
** The runtime calls smaller tiles for small batches (rt_model.c). */
static int tile_for(long scratch, long limit) {
  int tile = 128;
  while (tile > 1 && (long)tile * scratch * (long)sizeof(float) > limit) tile /= 2;
  return tile;
}

int cg_tile(const ir_program *p) {
  long s = 1;
  for (int e = 0; e < IR_NENTRY; e++)
    if (p->entry[e] && p->entry[e]->scratch > s) s = p->entry[e]->scratch;
  int big = 0;   /* a product of a weight that BLAS streams anyway: rows amortise its packing */
  for (int e = 0; e <= IR_NENTRY && !big; e++) {
    const ir_graph *g = e < IR_NENTRY ? p->entry[e] : p->train;
    for (int i = 0; g && i < g->nnodes && !big; i++) {
      const ir_node *x = g->nodes[i];
      big = x->batch && x->op == IR_LINEAR && (long)x->args[1]->rows * x->args[1]->n >= CG_GEMV_MIN_SIZE;
    }
  }
  int tile = tile_for(s, big ? 16384L * 1024 : 2048L * 1024);
  if (p->train) {
    int t = tile_for(p->train->scratch > 1 ? p->train->scratch : 1, 16384L * 1024);
    if (t < tile) tile = t;
  }
  return tile;
}

/* ---- the emitter ---- */

/* Rows of W a linear map's loops take at once (each input loaded once for
** all of them): RealNVP D=16 batch 1 57 -> 35 us with 4; 8 measured the
** same. Comments below say "four". */
#define CG_RB 4

/* An entry of a unit's pointer table: args[k], or node k's buffer. */
typedef struct cg_slot { int node, k; } cg_slot;

/* The unit functions made so far in the module, by their text. */
typedef struct cg_units {
  char **text;
  LLVMValueRef *fn;
  int n, cap;
} cg_units;

typedef struct nval {
  LLVMValueRef ptr;       /* float* of row 0, column 0 */
  long stride;            /* floats between rows */
  long lo, hi;            /* scratch range in offset units, lo < 0: none */
  LLVMBasicBlockRef head; /* IR_FIX_BEGIN: its loop head, NULL once closed */
  LLVMValueRef iter;      /* IR_FIX_BEGIN: i64 alloca, body runs so far */
  int kind;               /* where ptr comes from (NV_*), to make it in another function (kptr) */
  int src, col;           /* NV_VIEW: the viewed node and the first column */
  int fused;              /* computed inside its user's loop (pass_fuse) */
  int gemm;               /* fused linear: BLAS takes calls of CG_GEMM_MIN_ROWS rows
                             or more, into its buffer */
  LLVMValueRef prefix;    /* staircase linear: its table of row prefixes, once made */
  LLVMValueRef prefixb;   /* ... and of the longest prefix of each block of four rows */
  int fn;                 /* the function ptr is valid in (E.fnid; see vptr), or 0 */
  LLVMValueRef kp;        /* the same pointer in the kernel, once made there */
} nval;

enum { NV_NONE, NV_SCRATCH, NV_INPUT, NV_NOISE, NV_VIEW };

typedef struct E {
  LLVMContextRef C;
  LLVMModuleRef M;
  LLVMBuilderRef B;
  LLVMTypeRef f32, i32, i64, ptr, vt;
  LLVMValueRef fn, nrows, acc, logd;
  LLVMValueRef accb[CG_RB];   /* float allocas: a linear map's four rows at once */
  LLVMBasicBlockRef entry;
  LLVMValueRef moving, rowbad; /* i64 allocas of IR_FIX_END */
  int *open;              /* ids of the open IR_FIX_BEGINs, innermost last */
  int tmpn;               /* floats of e->tmp (0: none) */
  int nopen;
  LLVMValueRef tmp;       /* float[tmpn] on the stack: a sink's partial sums */
  int train;               /* the gradient kernel: args[] has its gradient slots */
  LLVMValueRef *av;       /* the current function's loads of args[k] (A_*), made on first use */
  LLVMValueRef *kav, *uav;/* the kernel's, and the current unit's */
  int nav;
  /* units: the kernel function, where its next unit call goes */
  LLVMValueRef kfn;
  LLVMBuilderRef KB;      /* NULL until the first cut */
  LLVMBuilderRef EB;      /* inserts into an entry block */
  int nseg;
  int fnid;               /* the current function's number, from 1 in each kernel (a
                             deleted unit's address may be reused) */
  LLVMValueRef tab;       /* the unit's pointer table (its third parameter); NULL in the kernel */
  cg_slot *slots;         /* what each of the unit's table entries holds */
  int nslot, capslot;
  cg_units units;         /* the module's distinct unit functions */
  const ir_program *p;
  const ir_graph *g;
  int tile, P, Q;
  nval *v;
  char *err;
  size_t errlen;
  /* alias metadata: every store of the current node's loop nest is in
     scope `scope`; every load is marked noalias with it */
  LLVMMetadataRef domain;
  LLVMValueRef scope;
  unsigned md_scope, md_noalias, md_loop;
  int from_buffer;        /* fused linears with gemm set are read from their buffers */
} E;

static LLVMValueRef ci(E *e, long long v) {
  return LLVMConstInt(e->i64, (unsigned long long)v, 1);
}
static LLVMValueRef cf(E *e, double v) { return LLVMConstReal(e->f32, (float)v); }

static LLVMValueRef fm(LLVMValueRef v) {
  if (LLVMIsAInstruction(v) && LLVMCanValueUseFastMathFlags(v)) LLVMSetFastMathFlags(v, FMF);
  return v;
}
static LLVMValueRef f_add(E *e, LLVMValueRef a, LLVMValueRef b) {
  return fm(LLVMBuildFAdd(e->B, a, b, ""));
}
static LLVMValueRef f_sub(E *e, LLVMValueRef a, LLVMValueRef b) {
  return fm(LLVMBuildFSub(e->B, a, b, ""));
}
static LLVMValueRef f_mul(E *e, LLVMValueRef a, LLVMValueRef b) {
  return fm(LLVMBuildFMul(e->B, a, b, ""));
}
static LLVMValueRef f_div(E *e, LLVMValueRef a, LLVMValueRef b) {
  return fm(LLVMBuildFDiv(e->B, a, b, ""));
}
static LLVMValueRef f_neg(E *e, LLVMValueRef a) { return fm(LLVMBuildFNeg(e->B, a, "")); }
static LLVMValueRef iadd(E *e, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWAdd(e->B, a, b, "");
}
static LLVMValueRef imul(E *e, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWMul(e->B, a, b, "");
}
static LLVMValueRef gepf(E *e, LLVMValueRef base, LLVMValueRef idx) {
  return LLVMBuildInBoundsGEP2(e->B, e->f32, base, &idx, 1, "");
}
/* ---- pointers: args[k], node buffers, units ----
**
** Every pointer a function uses is made in its entry block on first use
** (so it dominates all uses): args[k] is loaded from the kernel's args,
** a node's buffer is scratch plus its offset. A unit (see cut) loads them
** instead from its table, entries numbered in order of first use, which
** the kernel fills before the call: two units that do the same work on
** other buffers and weights are then the same text, and one is kept
** (unit_close). */

/* args[] of the kernel ABI (rt.h): in, cond, out0, out1, the P parameters,
** the Q prep results, scratch; in the gradient kernel then P + Q gradient
** slots and the noise rows. */
static int a_param(int i) { return 4 + i; }
static int a_prep(const E *e, int j) { return 4 + e->P + j; }
static int a_scratch(const E *e) { return 4 + e->P + e->Q; }
static int a_grad(const E *e, int s) { return 5 + e->P + e->Q + s; }
static int a_noise(const E *e) { return 5 + 2 * (e->P + e->Q); }

/* e->EB before the branch that ends fn's entry block. */
static LLVMBuilderRef at_entry(E *e, LLVMValueRef fn) {
  LLVMBasicBlockRef b = LLVMGetEntryBasicBlock(fn);
  LLVMPositionBuilderBefore(e->EB, LLVMGetBasicBlockTerminator(b));
  return e->EB;
}

static LLVMValueRef load_ptr(E *e, LLVMBuilderRef b, LLVMValueRef base, int k) {
  LLVMValueRef i = ci(e, k);
  LLVMValueRef v = LLVMBuildLoad2(b, e->ptr, LLVMBuildInBoundsGEP2(b, e->ptr, base, &i, 1, ""), "");
  LLVMSetAlignment(v, 8);
  return v;
}

/* The unit's next table entry (room for it was made in emit_kernel). */
static LLVMValueRef slot_load(E *e, int node, int k) {
  e->slots[e->nslot] = (cg_slot){node, k};
  return load_ptr(e, at_entry(e, e->fn), e->tab, e->nslot++);
}

/* args[k] in the current function, and in the kernel. */
static LLVMValueRef argv(E *e, int k) {
  if (!e->av[k])
    e->av[k] = e->tab ? slot_load(e, -1, k)
                      : load_ptr(e, at_entry(e, e->fn), LLVMGetParam(e->fn, 0), k);
  return e->av[k];
}
static LLVMValueRef kargv(E *e, int k) {
  if (!e->kav[k]) e->kav[k] = load_ptr(e, at_entry(e, e->kfn), LLVMGetParam(e->kfn, 0), k);
  return e->kav[k];
}

/* Node id's buffer in the kernel, from where it lives (v->kind). */
static LLVMValueRef kptr(E *e, int id) {
  nval *v = &e->v[id];
  if (v->kp) return v->kp;
  const ir_node *x = e->g->nodes[id];
  LLVMValueRef base = NULL;
  long off = 0;
  switch (v->kind) {
  case NV_SCRATCH: base = kargv(e, a_scratch(e)), off = x->offset * (long)e->tile; break;
  case NV_INPUT: base = kargv(e, x->i0); break;
  case NV_NOISE: base = kargv(e, a_noise(e)); break;
  case NV_VIEW: base = kptr(e, v->src), off = v->col; break;
  default: return NULL;
  }
  if (off) {
    LLVMValueRef i = ci(e, off);
    base = LLVMBuildInBoundsGEP2(at_entry(e, e->kfn), e->f32, base, &i, 1, "");
  }
  return v->kp = base;
}

/* Node id's buffer in the current function. */
static LLVMValueRef vptr(E *e, int id) {
  nval *v = &e->v[id];
  if (v->fn != e->fnid) {
    v->ptr = e->tab ? slot_load(e, id, 0) : kptr(e, id);
    v->fn = e->fnid;
  }
  return v->ptr;
}

/* A distinct node !{self, ops...} (loop ids, alias domains and scopes). */
static LLVMMetadataRef self_md(E *e, LLVMMetadataRef *ops, int n) {
  LLVMMetadataRef all[4];
  LLVMMetadataRef tmp = LLVMTemporaryMDNode(e->C, NULL, 0);
  all[0] = tmp;
  for (int i = 0; i < n; i++) all[1 + i] = ops[i];
  LLVMMetadataRef md = LLVMMDNodeInContext2(e->C, all, (size_t)n + 1);
  LLVMMetadataReplaceAllUsesWith(tmp, md);
  return md;
}

/* Starts the alias scope of one node's loop nest: its result buffer is
** disjoint from everything it reads (checked against the memory plan). */
static void new_scope(E *e) {
  LLVMMetadataRef sc = self_md(e, &e->domain, 1);
  e->scope = LLVMMetadataAsValue(e->C, LLVMMDNodeInContext2(e->C, &sc, 1));
}

static LLVMValueRef ld_tag(E *e, LLVMValueRef v) {
  if (e->scope) LLVMSetMetadata(v, e->md_noalias, e->scope);
  return v;
}
static LLVMValueRef ldf(E *e, LLVMValueRef p) {
  LLVMValueRef v = LLVMBuildLoad2(e->B, e->f32, p, "");
  LLVMSetAlignment(v, 4);
  return ld_tag(e, v);
}
static void stf(E *e, LLVMValueRef v, LLVMValueRef p) {
  LLVMValueRef s = LLVMBuildStore(e->B, v, p);
  LLVMSetAlignment(s, 4);
  if (e->scope) LLVMSetMetadata(s, e->md_scope, e->scope);
}

/* Declares (once) an external function; libm ones are marked pure. */
static LLVMValueRef ext_fn(E *e, const char *name, LLVMTypeRef ty, int pure) {
  LLVMValueRef f = LLVMGetNamedFunction(e->M, name);
  if (f) return f;
  f = LLVMAddFunction(e->M, name, ty);
  const char *attrs[] = {"nounwind", "willreturn"};
  for (int i = 0; i < 2; i++) {
    unsigned k = LLVMGetEnumAttributeKindForName(attrs[i], strlen(attrs[i]));
    LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->C, k, 0));
  }
  if (pure) {
    unsigned k = LLVMGetEnumAttributeKindForName("memory", 6);
    LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->C, k, 0));
  }
  return f;
}

static LLVMValueRef libm1(E *e, const char *name, LLVMValueRef x) {
  LLVMTypeRef ty = LLVMFunctionType(e->f32, &e->f32, 1, 0);
  LLVMValueRef f = ext_fn(e, name, ty, 1);
  return fm(LLVMBuildCall2(e->B, ty, f, &x, 1, ""));
}

static LLVMValueRef fabs_(E *e, LLVMValueRef x) {
  unsigned id = LLVMLookupIntrinsicID("llvm.fabs", 9);
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(e->M, id, &e->f32, 1);
  LLVMTypeRef ty = LLVMIntrinsicGetType(e->C, id, &e->f32, 1);
  return fm(LLVMBuildCall2(e->B, ty, f, &x, 1, ""));
}

static LLVMValueRef fcmp(E *e, LLVMRealPredicate pr, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFCmp(e->B, pr, a, b, "");
}
static LLVMValueRef sel(E *e, LLVMValueRef c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(e->B, c, a, b, "");
}

/* log1p(exp(-|x|)), the tail shared by softplus and logsigmoid */
static LLVMValueRef softplus_tail(E *e, LLVMValueRef x) {
  return libm1(e, "log1pf", libm1(e, "expf", f_neg(e, fabs_(e, x))));
}

/* min(x, c) / max(x, c) that keep a NaN x */
static LLVMValueRef fmin_c(E *e, LLVMValueRef x, double c) {
  return LLVMBuildSelect(e->B, LLVMBuildFCmp(e->B, LLVMRealOGT, x, cf(e, c), ""), cf(e, c), x, "");
}

static LLVMValueRef silu(E *e, LLVMValueRef x) {
  /* exp(-x) clamped below overflow: libm's overflow path is slow, and
     x / (1 + e^88) is -0 to within 1e-36 */
  LLVMValueRef d = f_add(e, cf(e, 1), libm1(e, "expf", fmin_c(e, f_neg(e, x), 88)));
  return f_div(e, x, d);
}

static LLVMValueRef unary(E *e, ir_op op, LLVMValueRef x) {
  LLVMValueRef zero = cf(e, 0);
  switch (op) {
  case IR_RELU: /* NaN passes through */
    return sel(e, fcmp(e, LLVMRealOLT, x, zero), zero, x);
  case IR_GELU: {
    LLVMValueRef t = libm1(e, "erff", f_mul(e, x, cf(e, M_SQRT1_2)));
    return f_mul(e, f_mul(e, cf(e, 0.5), x), f_add(e, cf(e, 1), t));
  }
  case IR_GELU_TANH: {
    LLVMValueRef x3 = f_mul(e, f_mul(e, x, x), x);
    LLVMValueRef u = f_mul(e, cf(e, 0.7978845608028654), f_add(e, x, f_mul(e, cf(e, 0.044715), x3)));
    return f_mul(e, f_mul(e, cf(e, 0.5), x), f_add(e, cf(e, 1), libm1(e, "tanhf", u)));
  }
  case IR_SILU: return silu(e, x);
  case IR_TANH: return libm1(e, "tanhf", x);
  case IR_ELU:
    return sel(e, fcmp(e, LLVMRealOGT, x, zero), x, libm1(e, "expm1f", fmin_c(e, x, 0)));
  case IR_SOFTPLUS: {
    LLVMValueRef mx = sel(e, fcmp(e, LLVMRealOGT, x, zero), x, zero);
    return f_add(e, mx, softplus_tail(e, x));
  }
  case IR_LIPSWISH: return f_div(e, silu(e, x), cf(e, 1.1));
  case IR_EXP: return libm1(e, "expf", x);
  case IR_NEG: return f_neg(e, x);
  case IR_LOGSIGMOID: {
    LLVMValueRef mn = sel(e, fcmp(e, LLVMRealOLT, x, zero), x, zero);
    return f_sub(e, mn, softplus_tail(e, x));
  }
  case IR_SQUARE: return f_mul(e, x, x);
  default: return NULL;
  }
}

/* sigmoid(x) into *s and 1 - sigmoid(x) = sigmoid(-x) into *om, from
** e = exp(-|x|) <= 1: nothing overflows, whatever the reassociation. */
static void sigmoid2(E *e, LLVMValueRef x, LLVMValueRef *s, LLVMValueRef *om) {
  LLVMValueRef ex = libm1(e, "expf", f_neg(e, fabs_(e, x)));
  LLVMValueRef big = f_div(e, cf(e, 1), f_add(e, cf(e, 1), ex)); /* sigmoid(|x|) */
  LLVMValueRef small = f_mul(e, ex, big);                         /* sigmoid(-|x|) */
  LLVMValueRef pos = fcmp(e, LLVMRealOGE, x, cf(e, 0));
  *s = sel(e, pos, big, small);
  if (om) *om = sel(e, pos, small, big);
}

/* f'(x) of unary op op (IR_DACT), as ir/interp.c's dunary. */
static LLVMValueRef dunary(E *e, ir_op op, LLVMValueRef x) {
  LLVMValueRef zero = cf(e, 0), one = cf(e, 1), om;
  switch (op) {
  case IR_RELU: return sel(e, fcmp(e, LLVMRealOGT, x, zero), one, zero);
  case IR_GELU: {
    LLVMValueRef t = libm1(e, "erff", f_mul(e, x, cf(e, M_SQRT1_2)));
    LLVMValueRef g = libm1(e, "expf", f_mul(e, cf(e, -0.5), f_mul(e, x, x)));
    return f_add(e, f_mul(e, cf(e, 0.5), f_add(e, one, t)),
                 f_mul(e, f_mul(e, x, g), cf(e, 0.3989422804014327)));
  }
  case IR_GELU_TANH: {
    const double c = 0.7978845608028654, k = 0.044715;
    LLVMValueRef x2 = f_mul(e, x, x);
    LLVMValueRef u = f_mul(e, cf(e, c), f_add(e, x, f_mul(e, cf(e, k), f_mul(e, x2, x))));
    LLVMValueRef t = libm1(e, "tanhf", u);
    LLVMValueRef a = f_mul(e, cf(e, 0.5), f_add(e, one, t));
    LLVMValueRef sech2 = f_sub(e, one, f_mul(e, t, t));
    LLVMValueRef b = f_mul(e, f_mul(e, f_mul(e, cf(e, 0.5 * c), x), sech2),
                           f_add(e, one, f_mul(e, cf(e, 3 * k), x2)));
    return f_add(e, a, b);
  }
  case IR_SILU: case IR_LIPSWISH: {
    LLVMValueRef s;
    sigmoid2(e, x, &s, &om);
    LLVMValueRef d = f_mul(e, s, f_add(e, one, f_mul(e, x, om)));
    return op == IR_SILU ? d : f_div(e, d, cf(e, 1.1));
  }
  case IR_TANH: {
    LLVMValueRef t = libm1(e, "tanhf", x);
    return f_sub(e, one, f_mul(e, t, t));
  }
  case IR_ELU:
    return sel(e, fcmp(e, LLVMRealOGT, x, zero), one, libm1(e, "expf", fmin_c(e, x, 0)));
  case IR_SOFTPLUS: sigmoid2(e, x, &om, NULL); return om;
  case IR_EXP: return libm1(e, "expf", x);
  case IR_NEG: return cf(e, -1);
  case IR_LOGSIGMOID: { /* sigmoid(-x) */
    LLVMValueRef s;
    sigmoid2(e, x, &s, &om);
    return om;
  }
  case IR_SQUARE: return f_add(e, x, x);
  default: return NULL;
  }
}

/* f''(x) of unary op op (IR_D2ACT), as ir/interp.c's d2unary; the sigmoid
** products use sigmoid2's overflow-free pair. */
static LLVMValueRef d2unary(E *e, ir_op op, LLVMValueRef x) {
  LLVMValueRef zero = cf(e, 0), one = cf(e, 1), s, om;
  switch (op) {
  case IR_RELU: case IR_NEG: return zero;
  case IR_GELU: { /* phi(x) (2 - x^2) */
    LLVMValueRef x2 = f_mul(e, x, x);
    LLVMValueRef g = libm1(e, "expf", f_mul(e, cf(e, -0.5), x2));
    return f_mul(e, f_mul(e, g, cf(e, 0.3989422804014327)), f_sub(e, cf(e, 2), x2));
  }
  case IR_GELU_TANH: {
    const double c = 0.7978845608028654, k = 0.044715;
    LLVMValueRef x2 = f_mul(e, x, x);
    LLVMValueRef u = f_mul(e, cf(e, c), f_add(e, x, f_mul(e, cf(e, k), f_mul(e, x2, x))));
    LLVMValueRef t = libm1(e, "tanhf", u);
    LLVMValueRef a1 = f_mul(e, cf(e, c), f_add(e, one, f_mul(e, cf(e, 3 * k), x2)));
    LLVMValueRef a2 = f_mul(e, cf(e, 6 * c * k), x);
    LLVMValueRef in = f_sub(e, a2, f_mul(e, f_mul(e, cf(e, 2), t), f_mul(e, a1, a1)));
    LLVMValueRef sum = f_add(e, a1, f_mul(e, f_mul(e, cf(e, 0.5), x), in));
    return f_mul(e, f_sub(e, one, f_mul(e, t, t)), sum);
  }
  case IR_SILU: case IR_LIPSWISH: { /* s (1-s) (2 + x (1 - 2s)), 1 - 2s = om - s */
    sigmoid2(e, x, &s, &om);
    LLVMValueRef d = f_mul(e, f_mul(e, s, om), f_add(e, cf(e, 2), f_mul(e, x, f_sub(e, om, s))));
    return op == IR_SILU ? d : f_div(e, d, cf(e, 1.1));
  }
  case IR_TANH: {
    LLVMValueRef t = libm1(e, "tanhf", x);
    return f_mul(e, f_mul(e, cf(e, -2), t), f_sub(e, one, f_mul(e, t, t)));
  }
  case IR_ELU:
    return sel(e, fcmp(e, LLVMRealOGT, x, zero), zero, libm1(e, "expf", fmin_c(e, x, 0)));
  case IR_SOFTPLUS: sigmoid2(e, x, &s, &om); return f_mul(e, s, om);
  case IR_EXP: return libm1(e, "expf", x);
  case IR_LOGSIGMOID: sigmoid2(e, x, &s, &om); return f_neg(e, f_mul(e, s, om));
  case IR_SQUARE: return cf(e, 2);
  default: return NULL;
  }
}

static LLVMValueRef binary(E *e, ir_op op, LLVMValueRef a, LLVMValueRef b) {
  switch (op) {
  case IR_ADD: return f_add(e, a, b);
  case IR_SUB: return f_sub(e, a, b);
  case IR_MUL: return f_mul(e, a, b);
  default: return NULL;
  }
}

/* ---- loops: for (iv = 0; iv < n; iv++), guarded ---- */

typedef struct loop {
  LLVMValueRef iv, n;
  LLVMBasicBlockRef body, exit;
} loop;

static void loop_begin(E *e, loop *L, LLVMValueRef n) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->B);
  L->body = LLVMAppendBasicBlockInContext(e->C, e->fn, "loop");
  L->exit = LLVMAppendBasicBlockInContext(e->C, e->fn, "next");
  L->n = n;
  LLVMBuildCondBr(e->B, LLVMBuildICmp(e->B, LLVMIntSGT, n, ci(e, 0), ""), L->body, L->exit);
  LLVMPositionBuilderAtEnd(e->B, L->body);
  L->iv = LLVMBuildPhi(e->B, e->i64, "i");
  LLVMValueRef z = ci(e, 0);
  LLVMAddIncoming(L->iv, &z, &pre, 1);
}

static void loop_end(E *e, loop *L) {
  LLVMValueRef nx = LLVMBuildNUWAdd(e->B, L->iv, ci(e, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->B);
  LLVMValueRef br = LLVMBuildCondBr(e->B, LLVMBuildICmp(e->B, LLVMIntSLT, nx, L->n, ""), L->body, L->exit);
  if (!LLVMIsAConstantInt(L->n)) {
    /* row loops: vectorised, not runtime-unrolled (that only multiplies code
       and compile time; the column loops inside are unrolled fully) */
    static const char k[] = "llvm.loop.unroll.runtime.disable";
    LLVMMetadataRef str = LLVMMDStringInContext2(e->C, k, sizeof k - 1);
    LLVMMetadataRef prop = LLVMMDNodeInContext2(e->C, &str, 1);
    LLVMSetMetadata(br, e->md_loop, LLVMMetadataAsValue(e->C, self_md(e, &prop, 1)));
  }
  LLVMAddIncoming(L->iv, &nx, &latch, 1);
  LLVMPositionBuilderAtEnd(e->B, L->exit);
}

/* ---- node values ---- */

static int efail(E *e, const ir_node *x, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int efail(E *e, const ir_node *x, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return cg_fail(e->err, e->errlen, "codegen: node %d (%s): %s", x ? x->id : -1,
              x ? ir_op_name(x->op) : "?", msg);
}

static LLVMValueRef pptr(E *e, const ir_node *x);

/* IR_LOOP_ROW: row `runs so far` of its table, inside the loop's body. */
static LLVMValueRef loop_row_ptr(E *e, const ir_node *x) {
  const ir_node *t = x->args[0], *l = x->args[1];
  LLVMValueRef base = pptr(e, t);
  if (!base) return NULL;
  if (l->op != IR_FIX_BEGIN || !e->v[l->id].head || t->n != x->n) {
    efail(e, x, "a loop row read outside its loop");
    return NULL;
  }
  LLVMValueRef it = LLVMBuildLoad2(e->B, e->i64, e->v[l->id].iter, "");
  LLVMValueRef last = ci(e, t->rows - 1);   /* the table has a row per run */
  it = sel(e, LLVMBuildICmp(e->B, LLVMIntSLT, it, last, ""), it, last);
  return gepf(e, base, imul(e, it, ci(e, x->n)));
}

/* float* of a parameter-class node (not IR_CONST); NULL + err */
static LLVMValueRef pptr(E *e, const ir_node *x) {
  if (x->op == IR_LOOP_ROW) return loop_row_ptr(e, x);
  if (x->op == IR_PARAM) {
    if (x->i0 < 0 || x->i0 >= e->P) {
      efail(e, x, "parameter index %d out of range", x->i0);
      return NULL;
    }
    return argv(e, a_param(x->i0));
  }
  if (x->prep < 0 || x->prep >= e->Q) {
    efail(e, x, "parameter-only node without a prep slot (prep %d of %d)", x->prep, e->Q);
    return NULL;
  }
  return argv(e, a_prep(e, x->prep));
}

static int is_f32_param(E *e, const ir_node *x) {
  return x->op != IR_PARAM || e->p->params[x->i0].dtype == IR_F32;
}

/* Checks that a float operand can be read by get(); 0 or -1. */
static int check_operand(E *e, const ir_node *node, const ir_node *x) {
  if (x->batch) return 0;
  if (x->op == IR_CONST) return 0;
  if (x->op == IR_PARAM && (x->i0 < 0 || x->i0 >= e->P))
    return efail(e, node, "parameter index %d out of range", x->i0);
  if (!is_f32_param(e, x)) return efail(e, node, "an I64 parameter used as float");
  if (x->rows != 1) return efail(e, node, "parameter operand of shape [%d, %d], not one row",
                                 x->rows, x->n);
  return pptr(e, x) ? 0 : -1;
}

/* Element (r, c) of x with broadcast: params are one row, width-1 tensors
** broadcast along columns. */
static LLVMValueRef fused_val(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef c);

static int computed_here(E *e, const ir_node *x) {
  const nval *v = &e->v[x->id];
  return x->batch && v->fused && !(v->gemm && e->from_buffer);
}

static LLVMValueRef get(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef c) {
  if (x->op == IR_CONST) return cf(e, x->f0);
  if (computed_here(e, x)) return fused_val(e, x, r, c);
  if (x->n == 1) c = ci(e, 0);
  if (!x->batch) return ldf(e, gepf(e, pptr(e, x), c));
  nval *v = &e->v[x->id];
  return ldf(e, gepf(e, vptr(e, x->id), iadd(e, imul(e, r, ci(e, v->stride)), c)));
}

static LLVMValueRef dst(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef c) {
  nval *v = &e->v[x->id];
  return gepf(e, vptr(e, x->id), iadd(e, imul(e, r, ci(e, v->stride)), c));
}

static int overlaps(const nval *a, const nval *b) {
  return a->lo >= 0 && b->lo >= 0 && a->lo < a->hi && b->lo < b->hi && a->lo < b->hi &&
         b->lo < a->hi;
}

/* ---- ops ---- */

static LLVMValueRef elem(E *e, const ir_node *x, LLVMValueRef *vals) {
  if (x->op == IR_DACT) return dunary(e, (ir_op)x->i0, vals[0]);
  if (x->op == IR_D2ACT) return d2unary(e, (ir_op)x->i0, vals[0]);
  return x->nargs == 1 ? unary(e, x->op, vals[0]) : binary(e, x->op, vals[0], vals[1]);
}

/* Checks x's operands, and those of the nodes fused into it, against the
** result buffer d; clears *flat unless every value can be read at one
** flat index (equal widths, contiguous rows, no dot products). */
static int check_elementwise(E *e, const ir_node *x, const nval *d, int *flat) {
  int n = x->n;
  for (int k = 0; k < x->nargs; k++) {
    const ir_node *a = x->args[k];
    if (check_operand(e, x, a)) return -1;
    if (computed_here(e, a)) {
      if (a->n != n) return efail(e, x, "fused operand width %d, result %d", a->n, n);
      if (a->op == IR_LINEAR) *flat = 0;
      else if (check_elementwise(e, a, d, flat)) return -1;
      continue;
    }
    if (a->batch) {
      nval *v = &e->v[a->id];
      if (a->n != n && a->n != 1) return efail(e, x, "operand width %d, result %d", a->n, n);
      if (a->n != n || v->stride != n) *flat = 0;
      if (overlaps(d, v)) {
        if (!(d->lo == v->lo && d->hi == v->hi && v->stride == n))
          return efail(e, x, "result buffer partly overlaps operand %d", k);
        e->scope = NULL; /* in place: loads and stores do alias */
      }
    } else if (a->op != IR_CONST) {
      if (a->n != n && a->n != 1) return efail(e, x, "operand width %d, result %d", a->n, n);
      if (a->n != 1) *flat = 0;
    }
  }
  if ((x->op == IR_DACT || x->op == IR_D2ACT) && !ir_is_unary((ir_op)x->i0))
    return efail(e, x, "derivative of %s, not a unary op", ir_op_name((ir_op)x->i0));
  return 0;
}

/* x at flat index i (check_elementwise said flat). */
static LLVMValueRef flat_val(E *e, const ir_node *x, LLVMValueRef i) {
  LLVMValueRef vals[2];
  for (int k = 0; k < x->nargs && k < 2; k++) {
    const ir_node *a = x->args[k];
    if (computed_here(e, a)) vals[k] = flat_val(e, a, i);
    else if (a->batch) vals[k] = ldf(e, gepf(e, vptr(e, a->id), i));
    else vals[k] = get(e, a, ci(e, 0), ci(e, 0));
  }
  return elem(e, x, vals);
}

static void linear_dots(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef o, LLVMValueRef bmax,
                        LLVMValueRef *out);
static LLVMValueRef block_prefix(E *e, const ir_node *x);

/* Elements (r, c..c+3) of x into out, the nodes fused into it computed
** here: a linear map's four dot products in one loop (linear_dots). */
static void tree_cols(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef c, LLVMValueRef *out) {
  if (x->op == IR_LINEAR) {
    linear_dots(e, x, r, c, block_prefix(e, x), out);
    return;
  }
  LLVMValueRef a[2][CG_RB];
  for (int k = 0; k < x->nargs && k < 2; k++) {
    if (computed_here(e, x->args[k])) tree_cols(e, x->args[k], r, c, a[k]);
    else for (int j = 0; j < CG_RB; j++) a[k][j] = get(e, x->args[k], r, iadd(e, c, ci(e, j)));
  }
  for (int j = 0; j < CG_RB; j++) {
    LLVMValueRef v[2] = {a[0][j], x->nargs > 1 ? a[1][j] : NULL};
    out[j] = elem(e, x, v);
  }
}

/* Does a linear map's dot product happen in x's loop? */
static int inline_linear(E *e, const ir_node *x) {
  for (int k = 0; k < x->nargs; k++) {
    const ir_node *a = x->args[k];
    if (computed_here(e, a) && (a->op == IR_LINEAR || inline_linear(e, a))) return 1;
  }
  return 0;
}

static void elementwise_loops(E *e, const ir_node *x, int flat) {
  if (!flat && x->n >= CG_RB && inline_linear(e, x)) {   /* four columns at a time, then the rest */
    int nb = x->n / CG_RB;
    loop R, Cb, Cl;
    loop_begin(e, &R, e->nrows);
    loop_begin(e, &Cb, ci(e, nb));
    LLVMValueRef c = imul(e, Cb.iv, ci(e, CG_RB)), v[CG_RB];
    tree_cols(e, x, R.iv, c, v);
    for (int j = 0; j < CG_RB; j++) stf(e, v[j], dst(e, x, R.iv, iadd(e, c, ci(e, j))));
    loop_end(e, &Cb);
    if (x->n > CG_RB * nb) {
      loop_begin(e, &Cl, ci(e, x->n - CG_RB * nb));
      LLVMValueRef cc = iadd(e, Cl.iv, ci(e, CG_RB * nb)), vals[2];
      for (int k = 0; k < x->nargs && k < 2; k++) vals[k] = get(e, x->args[k], R.iv, cc);
      stf(e, elem(e, x, vals), dst(e, x, R.iv, cc));
      loop_end(e, &Cl);
    }
    loop_end(e, &R);
    return;
  }
  if (flat) {
    loop L;
    loop_begin(e, &L, imul(e, e->nrows, ci(e, x->n)));
    stf(e, flat_val(e, x, L.iv), gepf(e, vptr(e, x->id), L.iv));
    loop_end(e, &L);
    return;
  }
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, x->n));
  LLVMValueRef vals[2];
  for (int k = 0; k < x->nargs && k < 2; k++) vals[k] = get(e, x->args[k], R.iv, Cl.iv);
  stf(e, elem(e, x, vals), dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
}

static int gemm_linear(E *e, const ir_node *x, LLVMBasicBlockRef *join, int minrows);

/* Calls BLAS for the fused linears below x whose calls it takes. */
static void fused_gemms(E *e, const ir_node *x) {
  for (int k = 0; k < x->nargs; k++) {
    const ir_node *a = x->args[k];
    if (!a->batch || !e->v[a->id].fused) continue;
    if (a->op == IR_LINEAR && e->v[a->id].gemm) gemm_linear(e, a, NULL, 0);
    else if (a->op != IR_LINEAR) fused_gemms(e, a);
  }
}

static int any_gemm(E *e, const ir_node *x) {
  for (int k = 0; k < x->nargs; k++) {
    const ir_node *a = x->args[k];
    if (a->batch && e->v[a->id].fused &&
        (a->op == IR_LINEAR ? e->v[a->id].gemm : any_gemm(e, a)))
      return 1;
  }
  return 0;
}

/*
** Unary, binary (with broadcasts), IR_DACT and IR_D2ACT, with the nodes
** fused into x computed in its loop. When BLAS takes the fused linear
** maps of a call of many rows, the loop is made twice: after the BLAS
** calls, reading their buffers, and below CG_GEMM_MIN_ROWS rows, with the
** dot products in the loop.
*/
static int emit_elementwise(E *e, const ir_node *x) {
  nval *d = &e->v[x->id];
  int flat = 1;
  if (check_elementwise(e, x, d, &flat)) return -1;
  if (x->n == 0) return 0;
  if (!any_gemm(e, x)) {
    elementwise_loops(e, x, flat);
    return 0;
  }
  LLVMBasicBlockRef big = LLVMAppendBasicBlockInContext(e->C, e->fn, "gemm");
  LLVMBasicBlockRef small = LLVMAppendBasicBlockInContext(e->C, e->fn, "loops");
  LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(e->C, e->fn, "next");
  LLVMValueRef many = LLVMBuildICmp(e->B, LLVMIntSGE, e->nrows, ci(e, CG_GEMM_MIN_ROWS), "");
  LLVMBuildCondBr(e->B, many, big, small);
  LLVMPositionBuilderAtEnd(e->B, big);
  e->from_buffer = 1;
  fused_gemms(e, x);
  int bflat = 1;
  if (check_elementwise(e, x, d, &bflat)) return -1;
  elementwise_loops(e, x, bflat);
  e->from_buffer = 0;
  LLVMBuildBr(e->B, join);
  LLVMPositionBuilderAtEnd(e->B, small);
  elementwise_loops(e, x, flat);
  LLVMBuildBr(e->B, join);
  LLVMPositionBuilderAtEnd(e->B, join);
  return 0;
}

/* Refuses a result buffer that overlaps a batch operand's. */
static int check_disjoint(E *e, const ir_node *x) {
  for (int k = 0; k < x->nargs; k++)
    if (x->args[k]->batch && overlaps(&e->v[x->id], &e->v[x->args[k]->id]))
      return efail(e, x, "result buffer overlaps operand %d", k);
  return 0;
}

/* Does a product of an m x n weight with batch operands a and b (NULL:
** none) go to BLAS when a call has CG_GEMM_MIN_ROWS rows? When it is wide
** and the operands' rows are contiguous. */
static int is_gemm(E *e, int m, int n, const ir_node *a, const ir_node *b) {
  return (long)m * n >= CG_GEMM_MIN_SIZE && e->v[a->id].stride == a->n &&
         (!b || e->v[b->id].stride == b->n);
}

/* if (nrows >= CG_GEMM_MIN_ROWS) fn(args...); else: leaves the builder in
** the else branch, for the inline loops, and returns the join block that
** gemm_join closes the branch with. fn returns void; its parameter types
** are those of args. */
static LLVMBasicBlockRef gemm_call_rows(E *e, const char *fn, LLVMValueRef *args, int nargs,
                                        int minrows) {
  LLVMBasicBlockRef big = LLVMAppendBasicBlockInContext(e->C, e->fn, "gemm");
  LLVMBasicBlockRef small = LLVMAppendBasicBlockInContext(e->C, e->fn, "loops");
  LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(e->C, e->fn, "next");
  LLVMBuildCondBr(e->B, LLVMBuildICmp(e->B, LLVMIntSGE, e->nrows, ci(e, minrows), ""), big, small);
  LLVMPositionBuilderAtEnd(e->B, big);
  LLVMTypeRef pt[8];
  for (int i = 0; i < nargs; i++) pt[i] = LLVMTypeOf(args[i]);
  LLVMTypeRef ty = LLVMFunctionType(e->vt, pt, (unsigned)nargs, 0);
  LLVMBuildCall2(e->B, ty, ext_fn(e, fn, ty, 0), args, (unsigned)nargs, "");
  LLVMBuildBr(e->B, join);
  LLVMPositionBuilderAtEnd(e->B, small);
  return join;
}

static LLVMBasicBlockRef gemm_call(E *e, const char *fn, LLVMValueRef *args, int nargs) {
  return gemm_call_rows(e, fn, args, nargs, CG_GEMM_MIN_ROWS);
}

static void gemm_join(E *e, LLVMBasicBlockRef join) {
  if (!join) return;
  LLVMBuildBr(e->B, join);
  LLVMPositionBuilderAtEnd(e->B, join);
}

/* A private constant i64 array of the n values c (a node's index table),
** shared by all the tables of those values. */
static LLVMValueRef const_table(E *e, LLVMValueRef *c, int n, const char *name) {
  LLVMValueRef init = LLVMConstArray2(e->i64, c, (uint64_t)n);
  /* one global per table (constants are uniqued): units that differ
     only in which copy they read would not be merged */
  for (LLVMValueRef g = LLVMGetFirstGlobal(e->M); g; g = LLVMGetNextGlobal(g))
    if (LLVMIsGlobalConstant(g) && LLVMGetInitializer(g) == init) return g;
  LLVMValueRef t = LLVMAddGlobal(e->M, LLVMTypeOf(init), name);
  LLVMSetInitializer(t, init);
  LLVMSetGlobalConstant(t, 1);
  LLVMSetLinkage(t, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(t, LLVMGlobalUnnamedAddr);
  LLVMSetAlignment(t, 8);
  return t;
}

/* t[i], a load from a const_table. */
static LLVMValueRef table_at(E *e, LLVMValueRef t, LLVMValueRef i) {
  LLVMValueRef k = ld_tag(e, LLVMBuildLoad2(e->B, e->i64, LLVMBuildInBoundsGEP2(e->B, e->i64, t, &i, 1, ""), ""));
  LLVMSetAlignment(k, 8);
  return k;
}

/* Refuses a weight that is not a float parameter tensor [out, in]. */
static int check_weight(E *e, const ir_node *x, const ir_node *Wn, int out, int in) {
  if (Wn->batch || Wn->op == IR_CONST || !is_f32_param(e, Wn))
    return efail(e, x, "weight must be a float parameter tensor");
  if (Wn->rows != out || Wn->n != in)
    return efail(e, x, "weight [%d, %d] for %d -> %d", Wn->rows, Wn->n, in, out);
  return 0;
}

/* Node x's table of row prefixes (a staircase linear), made once; NULL
** for a dense one. */
static LLVMValueRef linear_prefix(E *e, const ir_node *x) {
  nval *v = &e->v[x->id];
  if (!x->idx || v->prefix) return v->prefix;
  LLVMValueRef *c = malloc(sizeof *c * (size_t)x->n);
  if (!c) return NULL;   /* check_linear made it already */
  for (int o = 0; o < x->n; o++) c[o] = ci(e, x->idx[o]);
  v->prefix = const_table(e, c, x->n, "prefix");
  free(c);
  return v->prefix;
}

/* Elements (r, o..o+nr-1) of x = in W^T + b into out: nr dot products in
** one loop of bound columns (NULL: all), which loads each input once for
** nr rows of W (a matrix-vector product is bound by those loads). nr is 1
** or CG_RB; a staircase's rows run to their (longest) prefix, past which
** they are zero. */
static void linear_rows(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef o, int nr,
                        LLVMValueRef bound, LLVMValueRef *out) {
  const ir_node *in = x->args[0], *b = x->nargs > 2 ? x->args[2] : NULL;
  int ni = in->n;
  LLVMValueRef W = pptr(e, x->args[1]);
  for (int k = 0; k < nr; k++)
    LLVMBuildStore(e->B, b ? get(e, b, ci(e, 0), iadd(e, o, ci(e, k))) : cf(e, 0), e->accb[k]);
  if (ni > 0) {
    loop I;
    loop_begin(e, &I, bound ? bound : ci(e, ni));
    LLVMValueRef xv = get(e, in, r, I.iv);
    for (int k = 0; k < nr; k++) {
      LLVMValueRef row = imul(e, iadd(e, o, ci(e, k)), ci(e, ni));
      LLVMValueRef wv = ldf(e, gepf(e, W, iadd(e, row, I.iv)));
      LLVMValueRef a = LLVMBuildLoad2(e->B, e->f32, e->accb[k], "");
      LLVMBuildStore(e->B, f_add(e, a, f_mul(e, xv, wv)), e->accb[k]);
    }
    loop_end(e, &I);
  }
  for (int k = 0; k < nr; k++) out[k] = LLVMBuildLoad2(e->B, e->f32, e->accb[k], "");
}

/* Element (r, o) of x. */
static LLVMValueRef linear_dot(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef o) {
  LLVMValueRef prefix = linear_prefix(e, x), v;
  linear_rows(e, x, r, o, 1, prefix ? table_at(e, prefix, o) : NULL, &v);
  return v;
}

/* Elements (r, o..o+3) of x; bmax: block_prefix's table, or NULL. */
static void linear_dots(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef o, LLVMValueRef bmax,
                        LLVMValueRef *out) {
  LLVMValueRef bound = bmax ? table_at(e, bmax, LLVMBuildUDiv(e->B, o, ci(e, CG_RB), "")) : NULL;
  linear_rows(e, x, r, o, CG_RB, bound, out);
}

/* The longest prefix of each block of four rows of a staircase, or NULL. */
static LLVMValueRef block_prefix(E *e, const ir_node *x) {
  if (!x->idx || e->v[x->id].prefixb) return e->v[x->id].prefixb;
  int nb = x->n / CG_RB;
  LLVMValueRef *c = malloc(sizeof *c * (size_t)(nb + 1));
  if (!c) return NULL;
  for (int q = 0; q < nb; q++) {
    int m = 0;
    for (int k = 0; k < CG_RB; k++) m = x->idx[CG_RB * q + k] > m ? x->idx[CG_RB * q + k] : m;
    c[q] = ci(e, m);
  }
  e->v[x->id].prefixb = const_table(e, c, nb, "prefixb");
  free(c);
  return e->v[x->id].prefixb;
}

/* x's rows r of nrows into its buffer: blocks of four rows of W, then the
** rest one at a time. */
static void linear_loops(E *e, const ir_node *x) {
  int nb = x->n / CG_RB;
  loop R, O;
  loop_begin(e, &R, e->nrows);
  if (nb > 0) {
    LLVMValueRef bmax = block_prefix(e, x);
    loop_begin(e, &O, ci(e, nb));
    LLVMValueRef o = imul(e, O.iv, ci(e, CG_RB)), v[CG_RB];
    linear_dots(e, x, R.iv, o, bmax, v);
    for (int k = 0; k < CG_RB; k++) stf(e, v[k], dst(e, x, R.iv, iadd(e, o, ci(e, k))));
    loop_end(e, &O);
  }
  if (x->n > CG_RB * nb) {
    loop_begin(e, &O, ci(e, x->n - CG_RB * nb));
    LLVMValueRef o = iadd(e, O.iv, ci(e, CG_RB * nb));
    stf(e, linear_dot(e, x, R.iv, o), dst(e, x, R.iv, o));
    loop_end(e, &O);
  }
  loop_end(e, &R);
}

/* A fused node's value at (r, c), computed in its user's loop. */
static LLVMValueRef fused_val(E *e, const ir_node *x, LLVMValueRef r, LLVMValueRef c) {
  if (x->op == IR_LINEAR) return linear_dot(e, x, r, c);
  LLVMValueRef vals[2];
  for (int k = 0; k < x->nargs && k < 2; k++) vals[k] = get(e, x->args[k], r, c);
  return elem(e, x, vals);
}

/* Refuses what emit_linear cannot compute; 0 or -1. */
static int check_linear(E *e, const ir_node *x) {
  if (x->nargs < 2) return efail(e, x, "linear without a weight");
  const ir_node *in = x->args[0], *Wn = x->args[1], *b = x->nargs > 2 ? x->args[2] : NULL;
  if (!in->batch) return efail(e, x, "linear of a parameter tensor");
  if (check_weight(e, x, Wn, x->n, in->n)) return -1;
  if (b) {
    if (b->batch) return efail(e, x, "bias must be a parameter tensor");
    if (check_operand(e, x, b)) return -1;
    if (b->n != x->n && b->n != 1) return efail(e, x, "bias width %d for %d outputs", b->n, x->n);
  }
  for (int o = 0; x->idx && o < x->n; o++)
    if (x->idx[o] < 0 || x->idx[o] > in->n) return efail(e, x, "row prefix out of [0, %d]", in->n);
  if (check_disjoint(e, x)) return -1;
  if (!pptr(e, Wn)) return -1;
  if (x->idx && !linear_prefix(e, x)) return efail(e, x, "out of memory");
  return 0;
}

/* Would BLAS take x's calls of minrows rows or more? (0: never) */
static int linear_gemm_rows(E *e, const ir_node *x) {
  const ir_node *in = x->args[0], *b = x->nargs > 2 ? x->args[2] : NULL;
  if (!is_gemm(e, in->n, x->n, in, NULL) || (b && (b->op == IR_CONST || b->n != x->n))) return 0;
  long size = (long)x->n * in->n;   /* a weight beyond L2: BLAS's streaming wins at any rows */
  return size >= CG_GEMV_MIN_SIZE ? 1 : CG_GEMM_MIN_ROWS;
}

/* The BLAS call of x into its buffer: behind a row-count test when join
** is given (see gemm_call_rows), unconditional otherwise. */
static int gemm_linear(E *e, const ir_node *x, LLVMBasicBlockRef *join, int minrows) {
  const ir_node *in = x->args[0], *b = x->nargs > 2 ? x->args[2] : NULL;
  LLVMValueRef av[7] = {e->nrows, ci(e, x->n), ci(e, in->n), vptr(e, in->id), pptr(e, x->args[1]),
                        b ? pptr(e, b) : LLVMConstPointerNull(e->ptr), vptr(e, x->id)};
  if (join) {
    *join = gemm_call_rows(e, "rt_k_gemm", av, 7, minrows);
    return 0;
  }
  LLVMTypeRef pt[7];
  for (int i = 0; i < 7; i++) pt[i] = LLVMTypeOf(av[i]);
  LLVMTypeRef ty = LLVMFunctionType(e->vt, pt, 7, 0);
  LLVMBuildCall2(e->B, ty, ext_fn(e, "rt_k_gemm", ty, 0), av, 7, "");
  return 0;
}

static int emit_linear(E *e, const ir_node *x) {
  if (check_linear(e, x)) return -1;
  if (x->n == 0) return 0;
  LLVMBasicBlockRef join = NULL;
  int minrows = linear_gemm_rows(e, x);
  if (minrows) gemm_linear(e, x, &join, minrows);
  linear_loops(e, x);
  gemm_join(e, join);
  return 0;
}

static int emit_slice(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (x->i0 < 0 || x->i0 + x->n > a->n) return efail(e, x, "slice [%d, %d) of width %d",
                                                     x->i0, x->i0 + x->n, a->n);
  if (check_operand(e, x, a) || check_disjoint(e, x)) return -1;
  if (x->n == 0) return 0;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, x->n));
  stf(e, get(e, a, R.iv, iadd(e, Cl.iv, ci(e, x->i0))), dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
  return 0;
}

static int emit_concat(E *e, const ir_node *x) {
  const ir_node *a = x->args[0], *b = x->args[1];
  if (a->n + b->n != x->n) return efail(e, x, "concat %d + %d != %d", a->n, b->n, x->n);
  if (check_operand(e, x, a) || check_operand(e, x, b) || check_disjoint(e, x)) return -1;
  if (x->n == 0) return 0;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  for (int k = 0; k < 2; k++) {
    const ir_node *s = x->args[k];
    if (s->n == 0) continue;
    loop_begin(e, &Cl, ci(e, s->n));
    LLVMValueRef v = s->op == IR_CONST ? cf(e, s->f0) : get(e, s, R.iv, Cl.iv);
    stf(e, v, dst(e, x, R.iv, k ? iadd(e, Cl.iv, ci(e, a->n)) : Cl.iv));
    loop_end(e, &Cl);
  }
  loop_end(e, &R);
  return 0;
}

static int emit_gather(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (check_operand(e, x, a) || check_disjoint(e, x)) return -1;
  LLVMValueRef idx;
  int scatter = 0;
  if (x->nargs >= 2) {
    const ir_node *pn = x->args[1];
    if (pn->op != IR_PARAM || e->p->params[pn->i0].dtype != IR_I64)
      return efail(e, x, "permutation must be an I64 parameter");
    if (pn->rows * pn->n != x->n) return efail(e, x, "permutation of %d entries for width %d",
                                               pn->rows * pn->n, x->n);
    if (x->i1 && a->n != x->n) return efail(e, x, "scatter of width %d into %d", a->n, x->n);
    idx = pptr(e, pn);
    if (!idx) return -1;
    scatter = x->i1;
  } else {
    if (!x->idx) return efail(e, x, "gather without a permutation");
    /* the inverse (a scatter) of a constant permutation is the gather of
       the inverted permutation */
    LLVMValueRef *c = malloc(sizeof *c * (x->n ? x->n : 1));
    int *inv = malloc(sizeof *inv * (x->n ? x->n : 1));
    if (!c || !inv) {
      free(c);
      free(inv);
      return efail(e, x, "out of memory");
    }
    for (int i = 0; i < x->n; i++) inv[i] = -1;
    for (int i = 0; i < x->n; i++) {
      int k = x->idx[i];
      if (k < 0 || k >= a->n || (x->i1 && (a->n != x->n || inv[k] >= 0))) {
        free(c);
        free(inv);
        return efail(e, x, "index %d at %d is not a permutation of %d", k, i, a->n);
      }
      if (x->i1) inv[k] = i;
    }
    for (int i = 0; i < x->n; i++) c[i] = ci(e, x->i1 ? inv[i] : x->idx[i]);
    free(inv);
    idx = const_table(e, c, x->n, "perm");
    free(c);
  }
  if (x->n == 0) return 0;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, x->n));
  LLVMValueRef k = table_at(e, idx, Cl.iv);
  if (scatter) stf(e, get(e, a, R.iv, Cl.iv), dst(e, x, R.iv, k));
  else stf(e, get(e, a, R.iv, k), dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
  return 0;
}

/* The hw raw spline parameters of value (r, c) in row r of h. */
static LLVMValueRef spline_h(E *e, const ir_node *h, LLVMValueRef r, LLVMValueRef c, int hw) {
  nval *v = &e->v[h->id];
  return gepf(e, vptr(e, h->id), iadd(e, imul(e, r, ci(e, v->stride)), imul(e, c, ci(e, hw))));
}

static int emit_rqs(E *e, const ir_node *x) {
  const ir_node *a = x->args[0], *h = x->args[1];
  int m = a->n, K = x->i0, hw = 3 * K - 1;
  if (K < 1) return efail(e, x, "%d bins", K);
  if (!a->batch || !h->batch) return efail(e, x, "spline of a parameter tensor");
  if (h->n != m * hw || x->n != 2 * m)
    return efail(e, x, "spline widths x %d, h %d, y %d for %d bins", m, h->n, x->n, K);
  if (check_disjoint(e, x)) return -1;
  if (m == 0) return 0;
  LLVMTypeRef pt[5] = {e->f32, e->ptr, e->i64, e->f32, e->ptr};
  LLVMTypeRef ty = LLVMFunctionType(e->f32, pt, 5, 0);
  LLVMValueRef f = ext_fn(e, x->i1 ? "rt_k_rqs_inv" : "rt_k_rqs", ty, 0);
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, m));
  LLVMValueRef hp = spline_h(e, h, R.iv, Cl.iv, hw);
  LLVMValueRef av[5] = {get(e, a, R.iv, Cl.iv), hp, ci(e, K), cf(e, x->f0), e->logd};
  LLVMValueRef y = LLVMBuildCall2(e->B, ty, f, av, 5, "");
  stf(e, y, dst(e, x, R.iv, Cl.iv));
  stf(e, LLVMBuildLoad2(e->B, e->f32, e->logd, ""), dst(e, x, R.iv, iadd(e, Cl.iv, ci(e, m))));
  loop_end(e, &Cl);
  loop_end(e, &R);
  return 0;
}

static int emit_rowsum(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (x->n != 1) return efail(e, x, "row sum of width %d", x->n);
  if (check_operand(e, x, a) || check_disjoint(e, x)) return -1;
  int flat = 1;   /* elementwise ops fused into the sum: checked as theirs */
  if (computed_here(e, a) && (a->op == IR_LINEAR || check_elementwise(e, a, &e->v[x->id], &flat)))
    return a->op == IR_LINEAR ? efail(e, x, "a linear map fused into a row sum") : -1;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  LLVMBuildStore(e->B, cf(e, 0), e->acc);
  if (a->n > 0) {
    loop_begin(e, &Cl, ci(e, a->n));
    LLVMValueRef s = LLVMBuildLoad2(e->B, e->f32, e->acc, "");
    LLVMBuildStore(e->B, f_add(e, s, get(e, a, R.iv, Cl.iv)), e->acc);
    loop_end(e, &Cl);
  }
  stf(e, LLVMBuildLoad2(e->B, e->f32, e->acc, ""), dst(e, x, R.iv, ci(e, 0)));
  loop_end(e, &R);
  return 0;
}

/* IR_TEMB of a batch t [B,1]: [t], or sin(w_k t) .. cos(w_k t) in double
** (w_k t reaches 1600 rad; float would lose 1e-4 of it). */
static int emit_temb(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (x->nargs != 1 || !a->batch || a->n != 1 || (x->i1 ? x->n < 4 || x->n % 2 : x->n != 1))
    return efail(e, x, "time embedding of width %d", x->n);
  if (check_disjoint(e, x)) return -1;
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(e->C);
  LLVMTypeRef ty = LLVMFunctionType(f64, &f64, 1, 0);
  loop R;
  loop_begin(e, &R, e->nrows);
  LLVMValueRef t = get(e, a, R.iv, ci(e, 0));
  if (!x->i1) {
    stf(e, t, dst(e, x, R.iv, ci(e, 0)));
  } else {
    LLVMValueRef td = LLVMBuildFPExt(e->B, t, f64, "");
    int half = x->n / 2;
    for (int k = 0; k < x->n; k++) {
      LLVMValueRef arg = LLVMBuildFMul(e->B, td, LLVMConstReal(f64, rt_temb_freq(k % half, half)), "");
      LLVMValueRef r = LLVMBuildCall2(e->B, ty, ext_fn(e, k < half ? "sin" : "cos", ty, 1), &arg, 1, "");
      stf(e, LLVMBuildFPTrunc(e->B, r, e->f32, ""), dst(e, x, R.iv, ci(e, k)));
    }
  }
  loop_end(e, &R);
  return 0;
}

/* ---- backward ops ---- */

/* y[r, i] = sum_j dy[r, j] W[j, i], as rows of axpys over W's rows so that
** the inner loop is contiguous with a constant trip count. */
static int emit_linear_t(E *e, const ir_node *x) {
  if (x->nargs != 2) return efail(e, x, "transposed linear with %d arguments", x->nargs);
  const ir_node *dy = x->args[0], *Wn = x->args[1];
  if (!dy->batch) return efail(e, x, "transposed linear of a parameter tensor");
  if (check_weight(e, x, Wn, dy->n, x->n)) return -1;
  if (check_disjoint(e, x)) return -1;
  LLVMValueRef W = pptr(e, Wn);
  if (!W) return -1;
  int ni = x->n, no = dy->n;
  if (ni == 0) return 0;
  LLVMBasicBlockRef join = NULL;
  if (is_gemm(e, ni, no, dy, NULL)) {
    LLVMValueRef av[6] = {e->nrows, ci(e, ni), ci(e, no), vptr(e, dy->id), W, vptr(e, x->id)};
    join = gemm_call(e, "rt_k_gemm_nn", av, 6);
  }
  loop R, I, J;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &I, ci(e, ni));
  stf(e, cf(e, 0), dst(e, x, R.iv, I.iv));
  loop_end(e, &I);
  if (no > 0) {
    loop_begin(e, &J, ci(e, no));
    LLVMValueRef s = get(e, dy, R.iv, J.iv);
    loop_begin(e, &I, ci(e, ni));
    LLVMValueRef wv = ldf(e, gepf(e, W, iadd(e, imul(e, J.iv, ci(e, ni)), I.iv)));
    LLVMValueRef d = dst(e, x, R.iv, I.iv);
    LLVMValueRef o = LLVMBuildLoad2(e->B, e->f32, d, ""); /* may alias the store */
    LLVMSetAlignment(o, 4);
    stf(e, f_add(e, o, f_mul(e, s, wv)), d);
    loop_end(e, &I);
    loop_end(e, &J);
  }
  loop_end(e, &R);
  gemm_join(e, join);
  return 0;
}

/* Columns [i0, i0 + n) of the result are x, the others zero. */
static int emit_pad(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (!a->batch) return efail(e, x, "pad of a parameter tensor");
  if (x->i0 < 0 || x->i0 + a->n > x->n)
    return efail(e, x, "pad of width %d at %d into %d", a->n, x->i0, x->n);
  if (check_disjoint(e, x)) return -1;
  if (x->n == 0) return 0;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  int lo[3] = {0, x->i0, x->i0 + a->n}, hi[3] = {x->i0, x->i0 + a->n, x->n};
  for (int k = 0; k < 3; k++) {
    if (hi[k] <= lo[k]) continue;
    loop_begin(e, &Cl, ci(e, hi[k] - lo[k]));
    LLVMValueRef v = k == 1 ? get(e, a, R.iv, Cl.iv) : cf(e, 0);
    stf(e, v, dst(e, x, R.iv, lo[k] ? iadd(e, Cl.iv, ci(e, lo[k])) : Cl.iv));
    loop_end(e, &Cl);
  }
  loop_end(e, &R);
  return 0;
}

static int emit_bcast(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (!a->batch || a->n != 1) return efail(e, x, "broadcast of a [%s, %d] tensor",
                                           a->batch ? "B" : "1", a->n);
  if (check_disjoint(e, x)) return -1;
  if (x->n == 0) return 0;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  LLVMValueRef v = get(e, a, R.iv, ci(e, 0));
  loop_begin(e, &Cl, ci(e, x->n));
  stf(e, v, dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
  return 0;
}

/* [gx | gh] per spline value from rt_k_rqs_grad / rt_k_rqs_inv_grad, which
** write gh straight into the result row. */
static int emit_rqs_grad(E *e, const ir_node *x) {
  if (x->nargs != 4) return efail(e, x, "spline gradient with %d arguments", x->nargs);
  const ir_node *a = x->args[0], *h = x->args[1], *gy = x->args[2], *gl = x->args[3];
  int m = a->n, K = x->i0, hw = 3 * K - 1;
  if (K < 1) return efail(e, x, "%d bins", K);
  if (!a->batch || !h->batch || !gy->batch || !gl->batch)
    return efail(e, x, "spline gradient of a parameter tensor");
  if (h->n != m * hw || gy->n != m || gl->n != m || x->n != m + m * hw)
    return efail(e, x, "spline gradient widths x %d, h %d, gy %d, gl %d, result %d for %d bins",
                 m, h->n, gy->n, gl->n, x->n, K);
  if (check_disjoint(e, x)) return -1;
  if (m == 0) return 0;
  LLVMTypeRef pt[7] = {e->f32, e->ptr, e->i64, e->f32, e->f32, e->f32, e->ptr};
  LLVMTypeRef ty = LLVMFunctionType(e->f32, pt, 7, 0);
  LLVMValueRef f = ext_fn(e, x->i1 ? "rt_k_rqs_inv_grad" : "rt_k_rqs_grad", ty, 0);
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, m));
  LLVMValueRef hp = spline_h(e, h, R.iv, Cl.iv, hw);
  LLVMValueRef gh = dst(e, x, R.iv, iadd(e, ci(e, m), imul(e, Cl.iv, ci(e, hw))));
  LLVMValueRef av[7] = {get(e, a, R.iv, Cl.iv), hp, ci(e, K), cf(e, x->f0),
                        get(e, gy, R.iv, Cl.iv), get(e, gl, R.iv, Cl.iv), gh};
  LLVMValueRef gx = LLVMBuildCall2(e->B, ty, f, av, 7, "");
  stf(e, gx, dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
  return 0;
}

/* ---- residual layers ---- */

/* x[r, c] = a[r, lo + c] for c < x->n */
static void copy_cols(E *e, const ir_node *a, int lo, const ir_node *x) {
  if (x->n == 0) return;
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, x->n));
  stf(e, get(e, a, R.iv, lo ? iadd(e, Cl.iv, ci(e, lo)) : Cl.iv), dst(e, x, R.iv, Cl.iv));
  loop_end(e, &Cl);
  loop_end(e, &R);
}

/* An alloca at the top of the entry block: allocated once, whatever loops
** the code it serves ends up in. */
static LLVMValueRef entry_alloca(E *e, LLVMTypeRef ty, const char *name) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(e->B);
  LLVMValueRef first = LLVMGetFirstInstruction(e->entry);
  if (first) LLVMPositionBuilder(e->B, e->entry, first);
  else LLVMPositionBuilderAtEnd(e->B, e->entry);
  LLVMValueRef a = LLVMBuildAlloca(e->B, ty, name);
  LLVMPositionBuilderAtEnd(e->B, cur);
  return a;
}

/* Checks an IR_LOGDET / IR_LOGDET_GRAD matrix operand of D x D. */
static int check_matrix(E *e, const ir_node *x, const ir_node *a, int D) {
  if (!a->batch) return efail(e, x, "log-determinant of a parameter tensor");
  if (D < 0 || a->n != D * D) return efail(e, x, "a %d x %d matrix in a row of width %d", D, D, a->n);
  if (D > RT_K_LOGDET_MAX)
    return efail(e, x, "the exact log-determinant is limited to D <= %d (RT_K_LOGDET_MAX), "
                 "here D = %d", RT_K_LOGDET_MAX, D);
  return check_disjoint(e, x);
}

/* Per row, rt_k_logdet on the row's D*D floats: a view moves only the row
** start, so the row's own columns are contiguous. */
static int emit_logdet(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  int D = x->i0;
  if (x->n != 1) return efail(e, x, "log-determinant of width %d", x->n);
  if (check_matrix(e, x, a, D)) return -1;
  LLVMTypeRef pt[2] = {e->ptr, e->i64};
  LLVMTypeRef ty = LLVMFunctionType(e->f32, pt, 2, 0);
  LLVMValueRef f = ext_fn(e, "rt_k_logdet", ty, 0);
  loop R;
  loop_begin(e, &R, e->nrows);
  LLVMValueRef av[2] = {dst(e, a, R.iv, ci(e, 0)), ci(e, D)};
  stf(e, LLVMBuildCall2(e->B, ty, f, av, 2, ""), dst(e, x, R.iv, ci(e, 0)));
  loop_end(e, &R);
  return 0;
}

/* IR_ODE_CTRL: rt_k_ode_ctrl per row (rows of a view are contiguous). */
static int emit_ode_ctrl(E *e, const ir_node *x) {
  const ir_node *s = x->args[0], *y5 = x->args[1], *er = x->args[2];
  int n = y5->n;
  if (!s->batch || !y5->batch || !er->batch || er->n != n || s->n != n + 2 || x->n != n + 2)
    return efail(e, x, "state %d, y5 %d, err %d", s->n, y5->n, er->n);
  if (n > RT_K_ODE_MAX) return efail(e, x, "a state of %d values (at most %d)", n, RT_K_ODE_MAX);
  if (check_disjoint(e, x)) return -1;
  LLVMTypeRef pt[8] = {e->ptr, e->ptr, e->ptr, e->i64, e->f32, e->f32, e->f32, e->ptr};
  LLVMTypeRef ty = LLVMFunctionType(e->vt, pt, 8, 0);
  LLVMValueRef f = ext_fn(e, "rt_k_ode_ctrl", ty, 0);
  loop R;
  loop_begin(e, &R, e->nrows);
  LLVMValueRef av[8] = {dst(e, s, R.iv, ci(e, 0)), dst(e, y5, R.iv, ci(e, 0)),
                        dst(e, er, R.iv, ci(e, 0)), ci(e, n), cf(e, x->f0), cf(e, x->f1),
                        cf(e, x->i0), dst(e, x, R.iv, ci(e, 0))};
  LLVMBuildCall2(e->B, ty, f, av, 8, "");
  loop_end(e, &R);
  return 0;
}

/* IR_SDE_NOISE: one call for the tile, at the loop's current run. */
static int emit_sde_noise(E *e, const ir_node *x) {
  const ir_node *k = x->args[0], *l = x->args[1];
  if (k->op != IR_INPUT || !k->batch || l->op != IR_FIX_BEGIN || !e->v[l->id].head)
    return efail(e, x, "noise outside its loop or without an input row");
  if (check_disjoint(e, x)) return -1;
  LLVMTypeRef pt[9] = {e->ptr, e->i64, e->i64, e->i64, e->i64, e->i64, e->i64, e->ptr, e->i64};
  LLVMTypeRef ty = LLVMFunctionType(e->vt, pt, 9, 0);
  LLVMValueRef f = ext_fn(e, "rt_k_sde_noise", ty, 0);
  nval *kv = &e->v[k->id];
  LLVMValueRef av[9] = {vptr(e, k->id), ci(e, kv->stride), ci(e, k->n), e->nrows, ci(e, x->n),
                        LLVMBuildLoad2(e->B, e->i64, e->v[l->id].iter, ""), ci(e, x->i0),
                        dst(e, x, ci(e, 0), ci(e, 0)), ci(e, e->v[x->id].stride)};
  LLVMBuildCall2(e->B, ty, f, av, 9, "");
  return 0;
}

/* Per row, rt_k_logdet_grad writes g (I + X)^-T straight into the result. */
static int emit_logdet_grad(E *e, const ir_node *x) {
  if (x->nargs != 2) return efail(e, x, "with %d arguments", x->nargs);
  const ir_node *a = x->args[0], *g = x->args[1];
  int D = x->i0;
  if (!g->batch || g->n != 1) return efail(e, x, "the scale must be a [B, 1] tensor");
  if (x->n != a->n) return efail(e, x, "result width %d for %d", x->n, a->n);
  if (check_matrix(e, x, a, D)) return -1;
  if (D == 0) return 0;
  LLVMTypeRef pt[4] = {e->ptr, e->i64, e->f32, e->ptr};
  LLVMTypeRef ty = LLVMFunctionType(e->vt, pt, 4, 0);
  LLVMValueRef f = ext_fn(e, "rt_k_logdet_grad", ty, 0);
  loop R;
  loop_begin(e, &R, e->nrows);
  LLVMValueRef av[4] = {dst(e, a, R.iv, ci(e, 0)), ci(e, D), get(e, g, R.iv, ci(e, 0)),
                        dst(e, x, R.iv, ci(e, 0))};
  LLVMBuildCall2(e->B, ty, f, av, 4, "");
  loop_end(e, &R);
  return 0;
}

/* IR_STOPGRAD: the identity (a copy when it could not be a view). */
static int emit_copy(E *e, const ir_node *x) {
  const ir_node *a = x->args[0];
  if (!a->batch || a->n != x->n) return efail(e, x, "identity of a [%s, %d] tensor into %d",
                                               a->batch ? "B" : "1", a->n, x->n);
  if (check_disjoint(e, x)) return -1;
  copy_cols(e, a, 0, x);
  return 0;
}

/* y = u, a zeroed run counter, then the loop head: the nodes up to the
** matching IR_FIX_END are emitted inside the loop. */
static int emit_fix_begin(E *e, const ir_node *x) {
  const ir_node *u = x->args[0];
  if (!u->batch || u->n != x->n) return efail(e, x, "loop variable of width %d from %d", x->n,
                                              u->n);
  if (check_disjoint(e, x)) return -1;
  copy_cols(e, u, 0, x);
  nval *v = &e->v[x->id];
  v->iter = entry_alloca(e, e->i64, "iter");
  LLVMBuildStore(e->B, ci(e, 0), v->iter);
  v->head = LLVMAppendBasicBlockInContext(e->C, e->fn, "fix");
  LLVMBuildBr(e->B, v->head);
  LLVMPositionBuilderAtEnd(e->B, v->head);
  e->open[e->nopen++] = x->id;
  return 0;
}

/* Per row r: moving when some |ynew - y| >= tol (or is NaN: unordered);
** a moving row takes ynew as its next y, a settled row keeps its y, so the
** body gives it the same ynew again. Counts the moving rows into
** e->moving. */
static void fix_rows(E *e, const ir_node *x, const ir_node *y, const ir_node *yn) {
  loop R, Cl;
  LLVMBuildStore(e->B, ci(e, 0), e->moving);
  loop_begin(e, &R, e->nrows);
  LLVMBuildStore(e->B, ci(e, 0), e->rowbad);
  loop_begin(e, &Cl, ci(e, x->n));
  LLVMValueRef yv = get(e, y, R.iv, Cl.iv);
  LLVMValueRef d = fabs_(e, f_sub(e, get(e, yn, R.iv, Cl.iv), yv));
  /* settled below tol, or below two float steps at y's size (interp.c fix_tol);
     exact mode (i2 = 2): only when unchanged */
  LLVMValueRef fl = f_mul(e, fabs_(e, yv), cf(e, 2 * FLT_EPSILON));
  LLVMValueRef thr = sel(e, fcmp(e, LLVMRealOGT, fl, cf(e, x->f0)), fl, cf(e, x->f0));
  LLVMValueRef far = x->i2 == 2 ? fcmp(e, LLVMRealUNE, d, cf(e, 0)) : fcmp(e, LLVMRealUGE, d, thr);
  LLVMValueRef bad = LLVMBuildZExt(e->B, far, e->i64, "");
  LLVMValueRef rb = LLVMBuildLoad2(e->B, e->i64, e->rowbad, "");
  LLVMBuildStore(e->B, LLVMBuildOr(e->B, rb, bad, ""), e->rowbad);
  loop_end(e, &Cl);
  rb = LLVMBuildLoad2(e->B, e->i64, e->rowbad, "");
  LLVMValueRef mv = LLVMBuildICmp(e->B, LLVMIntNE, rb, ci(e, 0), "");
  LLVMBuildStore(e->B, iadd(e, LLVMBuildLoad2(e->B, e->i64, e->moving, ""), rb), e->moving);
  loop_begin(e, &Cl, ci(e, x->n));
  LLVMValueRef p = dst(e, y, R.iv, Cl.iv);
  stf(e, sel(e, mv, get(e, yn, R.iv, Cl.iv), ldf(e, p)), p);
  loop_end(e, &Cl);
  loop_end(e, &R);
}

/* A counted loop's end: y = ynew for every row; again while fewer than
** i0 runs are done; the result is the last ynew. */
static int loop_end_counted(E *e, const ir_node *x) {
  const ir_node *y = x->args[0], *yn = x->args[1];
  nval *v = &e->v[y->id];
  copy_cols(e, yn, 0, y);
  LLVMValueRef it = iadd(e, LLVMBuildLoad2(e->B, e->i64, v->iter, ""), ci(e, 1));
  LLVMBuildStore(e->B, it, v->iter);
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(e->C, e->fn, "loop.done");
  LLVMBuildCondBr(e->B, LLVMBuildICmp(e->B, LLVMIntSLT, it, ci(e, x->i0), ""), v->head, done);
  LLVMPositionBuilderAtEnd(e->B, done);
  v->head = NULL;
  e->nopen--;
  copy_cols(e, yn, 0, x);
  return 0;
}

/* Closes the innermost loop: back to its head while rows move and fewer
** than i0 runs are done; then return 1 + i1 if rows still move, else the
** result is ynew. */
static int emit_fix_end(E *e, const ir_node *x) {
  if (x->nargs != 2) return efail(e, x, "with %d arguments", x->nargs);
  const ir_node *y = x->args[0], *yn = x->args[1];
  if (y->op != IR_FIX_BEGIN || !e->nopen || e->open[e->nopen - 1] != y->id)
    return efail(e, x, "does not close the innermost open fixed-point loop");
  if (!yn->batch || yn->n != x->n || y->n != x->n)
    return efail(e, x, "widths y %d, ynew %d, result %d", y->n, yn->n, x->n);
  if (check_disjoint(e, x)) return -1;
  e->scope = NULL; /* y is read and written */
  if (x->i2 == 1) return loop_end_counted(e, x);
  if (!e->moving) {
    e->moving = entry_alloca(e, e->i64, "moving");
    e->rowbad = entry_alloca(e, e->i64, "rowbad");
  }
  nval *v = &e->v[y->id];
  fix_rows(e, x, y, yn);
  LLVMValueRef it = iadd(e, LLVMBuildLoad2(e->B, e->i64, v->iter, ""), ci(e, 1));
  LLVMBuildStore(e->B, it, v->iter);
  LLVMValueRef mv = LLVMBuildICmp(e->B, LLVMIntNE, LLVMBuildLoad2(e->B, e->i64, e->moving, ""),
                                  ci(e, 0), "");
  LLVMValueRef again = LLVMBuildAnd(e->B, mv, LLVMBuildICmp(e->B, LLVMIntSLT, it, ci(e, x->i0), ""), "");
  LLVMBasicBlockRef out = LLVMAppendBasicBlockInContext(e->C, e->fn, "fix.out");
  LLVMBasicBlockRef fail = LLVMAppendBasicBlockInContext(e->C, e->fn, "fix.fail");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(e->C, e->fn, "fix.done");
  LLVMBuildCondBr(e->B, again, v->head, out);
  LLVMPositionBuilderAtEnd(e->B, out);
  LLVMBuildCondBr(e->B, mv, fail, done);
  LLVMPositionBuilderAtEnd(e->B, fail);
  LLVMBuildRet(e->B, LLVMConstInt(e->i32, (unsigned long long)(1 + (long long)x->i1), 0));
  LLVMPositionBuilderAtEnd(e->B, done);
  v->head = NULL;
  e->nopen--;
  copy_cols(e, yn, 0, x);
  return 0;
}

/* ---- gradient sinks ---- */

/* Width of the stack buffer sink x needs (0: none). */
static int sink_tmp(const ir_node *x) {
  if (x->op == IR_ACC_OUTER && x->nargs == 3) return x->args[1]->n;
  if (x->op == IR_ACC_SUM && x->nargs >= 2) {
    const ir_node *t = x->args[x->nargs - 1];
    return (long)t->rows * t->n == 1 ? 0 : x->args[0]->n;
  }
  return 0;
}

static LLVMValueRef tmp_at(E *e, LLVMValueRef i) { return gepf(e, e->tmp, i); }

/* g[k] += tmp[k] for k < n */
static void add_tmp(E *e, LLVMValueRef g, int n) {
  loop Cl;
  loop_begin(e, &Cl, ci(e, n));
  LLVMValueRef gp = gepf(e, g, Cl.iv);
  LLVMValueRef o = LLVMBuildLoad2(e->B, e->f32, gp, "");
  LLVMSetAlignment(o, 4);
  LLVMValueRef t = LLVMBuildLoad2(e->B, e->f32, tmp_at(e, Cl.iv), "");
  LLVMSetAlignment(t, 4);
  stf(e, f_add(e, o, t), gp);
  loop_end(e, &Cl);
}

static void zero_tmp(E *e, int n) {
  loop Cl;
  loop_begin(e, &Cl, ci(e, n));
  LLVMSetAlignment(LLVMBuildStore(e->B, cf(e, 0), tmp_at(e, Cl.iv)), 4);
  loop_end(e, &Cl);
}

/* tmp[c] += v */
static void acc_tmp(E *e, LLVMValueRef c, LLVMValueRef v) {
  LLVMValueRef p = tmp_at(e, c);
  LLVMValueRef o = LLVMBuildLoad2(e->B, e->f32, p, "");
  LLVMSetAlignment(o, 4);
  LLVMSetAlignment(LLVMBuildStore(e->B, f_add(e, o, v), p), 4);
}

static int emit_sink(E *e, const ir_node *x) {
  if (!e->train) return efail(e, x, "gradient sink outside the train graph");
  if (x->nargs < 2 || x->nargs > 3) return efail(e, x, "sink with %d arguments", x->nargs);
  const ir_node *t = x->args[x->nargs - 1];
  if (t->batch) return efail(e, x, "the target is a batch tensor");
  if (t->op == IR_PARAM) {
    if (t->i0 < 0 || t->i0 >= e->P) return efail(e, x, "parameter index %d out of range", t->i0);
    if (!is_f32_param(e, t)) return efail(e, x, "gradient of an I64 parameter");
  } else if (t->prep < 0 || t->prep >= e->Q) {
    return efail(e, x, "target node %d has no prep slot (prep %d of %d)", t->id, t->prep, e->Q);
  }
  int slot = ir_grad_slot(e->p, t);
  if (slot < 0 || slot >= e->P + e->Q) return efail(e, x, "gradient slot %d out of range", slot);
  LLVMValueRef g = argv(e, a_grad(e, slot));
  long tn = (long)t->rows * t->n;
  const ir_node *a = x->args[0];
  for (int k = 0; k + 1 < x->nargs; k++)
    if (!x->args[k]->batch) return efail(e, x, "argument %d is not a batch tensor", k);
  if (x->op == IR_ACC_OUTER) {
    if (x->nargs != 3) return efail(e, x, "outer-product sink without its input");
    const ir_node *in = x->args[1];
    int no = a->n, ni = in->n;
    if (tn != (long)no * ni) return efail(e, x, "target [%d, %d] for %d x %d", t->rows, t->n, no, ni);
    if (no == 0 || ni == 0) return 0;
    LLVMBasicBlockRef join = NULL;
    if (is_gemm(e, no, ni, a, in)) { /* g += dy^T x */
      LLVMValueRef av[6] = {ci(e, no), ci(e, ni), e->nrows, vptr(e, a->id), vptr(e, in->id), g};
      join = gemm_call(e, "rt_k_gemm_tn_acc", av, 6);
    }
    /* per output row o: tmp = sum_r dy[r, o] x[r, :], then g[o, :] += tmp */
    loop O, R, I;
    loop_begin(e, &O, ci(e, no));
    zero_tmp(e, ni);
    loop_begin(e, &R, e->nrows);
    LLVMValueRef s = get(e, a, R.iv, O.iv);
    loop_begin(e, &I, ci(e, ni));
    acc_tmp(e, I.iv, f_mul(e, s, get(e, in, R.iv, I.iv)));
    loop_end(e, &I);
    loop_end(e, &R);
    add_tmp(e, gepf(e, g, imul(e, O.iv, ci(e, ni))), ni);
    loop_end(e, &O);
    gemm_join(e, join);
    return 0;
  }
  const ir_node *b = x->nargs == 3 ? x->args[1] : NULL;
  int n = a->n;
  if (b && b->n != n) return efail(e, x, "factors of widths %d and %d", n, b->n);
  if (tn != n && tn != 1) return efail(e, x, "target [%d, %d] for width %d", t->rows, t->n, n);
  if (n == 0) return 0;
  if (tn == 1) { /* everything into g[0] */
    LLVMBuildStore(e->B, cf(e, 0), e->acc);
    int flat = e->v[a->id].stride == n && (!b || e->v[b->id].stride == n);
    loop R, Cl;
    if (flat) loop_begin(e, &Cl, imul(e, e->nrows, ci(e, n)));
    else {
      loop_begin(e, &R, e->nrows);
      loop_begin(e, &Cl, ci(e, n));
    }
    LLVMValueRef v, w = NULL;
    if (flat) {
      v = ldf(e, gepf(e, vptr(e, a->id), Cl.iv));
      if (b) w = ldf(e, gepf(e, vptr(e, b->id), Cl.iv));
    } else {
      v = get(e, a, R.iv, Cl.iv);
      if (b) w = get(e, b, R.iv, Cl.iv);
    }
    if (w) v = f_mul(e, v, w);
    LLVMBuildStore(e->B, f_add(e, LLVMBuildLoad2(e->B, e->f32, e->acc, ""), v), e->acc);
    loop_end(e, &Cl);
    if (!flat) loop_end(e, &R);
    LLVMValueRef o = LLVMBuildLoad2(e->B, e->f32, g, "");
    LLVMSetAlignment(o, 4);
    stf(e, f_add(e, o, LLVMBuildLoad2(e->B, e->f32, e->acc, "")), g);
    return 0;
  }
  loop R, Cl;
  zero_tmp(e, n);
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, n));
  LLVMValueRef v = get(e, a, R.iv, Cl.iv);
  if (b) v = f_mul(e, v, get(e, b, R.iv, Cl.iv));
  acc_tmp(e, Cl.iv, v);
  loop_end(e, &Cl);
  loop_end(e, &R);
  add_tmp(e, g, n);
  return 0;
}

/* Copies output k (any class) into args[2 + k], row stride = its width. */
static int emit_output(E *e, int k) {
  const ir_node *o = e->g->outs[k];
  if (check_operand(e, NULL, o)) return -1;
  if (!o->batch && o->op != IR_CONST && o->rows != 1)
    return efail(e, o, "output parameter tensor of %d rows", o->rows);
  if (o->n == 0) return 0;
  LLVMValueRef d = argv(e, 2 + k);
  LLVMBasicBlockRef join = NULL;
  new_scope(e);
  if (k == 1) { /* out1 may be NULL */
    LLVMBasicBlockRef go = LLVMAppendBasicBlockInContext(e->C, e->fn, "ld");
    join = LLVMAppendBasicBlockInContext(e->C, e->fn, "ret");
    LLVMBuildCondBr(e->B, LLVMBuildIsNotNull(e->B, d, ""), go, join);
    LLVMPositionBuilderAtEnd(e->B, go);
  }
  loop R, Cl;
  loop_begin(e, &R, e->nrows);
  loop_begin(e, &Cl, ci(e, o->n));
  stf(e, get(e, o, R.iv, Cl.iv), gepf(e, d, iadd(e, imul(e, R.iv, ci(e, o->n)), Cl.iv)));
  loop_end(e, &Cl);
  loop_end(e, &R);
  if (join) {
    LLVMBuildBr(e->B, join);
    LLVMPositionBuilderAtEnd(e->B, join);
  }
  return 0;
}

/* May slice (or identity) node i read its argument in place rather than
** copy it? Yes when no node up to its last use writes into the argument's
** buffer, and no user is a linear layer (whose gemm path wants contiguous
** rows). Fewer loops: less to compile and less memory traffic. Not across
** a fixed-point loop's boundary, nor of a loop variable (rewritten at every
** back edge): a copy is certain there. */
static int view_ok(E *e, const ir_graph *g, int i, const int *last) {
  const ir_node *x = g->nodes[i], *a = x->args[0];
  int lo = x->op == IR_SLICE ? x->i0 : 0;
  if (!a->batch || lo < 0 || lo + x->n > a->n || a->op == IR_FIX_BEGIN) return 0;
  const nval *va = &e->v[a->id];
  for (int k = i + 1; k <= last[i] && k < g->nnodes; k++) {
    const ir_node *y = g->nodes[k];
    if (y->op == IR_FIX_BEGIN || y->op == IR_FIX_END) return 0;
    if (y->op == IR_LINEAR || y->op == IR_LINEAR_T)
      for (int j = 0; j < y->nargs; j++)
        if (y->args[j] == x) return 0;
    if (y->batch && y->op != IR_INPUT && y->offset >= 0) {
      nval t = {0};
      t.lo = y->offset;
      t.hi = y->offset + y->n;
      if (overlaps(&t, va)) return 0;
    }
  }
  return 1;
}

/* live[i]: node i is needed by an output or a sink (live[i] = 1 on entry
** for those). A loop whose variable is needed runs in full: its IR_FIX_END,
** and so the body, is needed too. */
static void mark_live(const ir_graph *g, char *live) {
  for (int changed = 1; changed;) {
    changed = 0;
    for (int i = g->nnodes - 1; i >= 0; i--)
      if (live[i])
        for (int k = 0; k < g->nodes[i]->nargs; k++) live[g->nodes[i]->args[k]->id] = 1;
    for (int i = 0; i < g->nnodes; i++) {
      const ir_node *x = g->nodes[i];
      if (x->op == IR_FIX_END && x->nargs > 0 && !live[i] && live[x->args[0]->id])
        live[i] = changed = 1;
    }
  }
}

/* A node pass_fuse fused into its user: nothing to emit here but its
** buffer (a linear map's, for BLAS). A linear map that BLAS takes at any
** row count stays unfused (v->fused stays 0) and is emitted as usual. */
static int fused_node(E *e, const ir_node *x, nval *v) {
  if (ir_op_kind(x->op) != IR_KIND_ELEMWISE && x->op != IR_LINEAR)
    return efail(e, x, "%s cannot be fused", ir_op_name(x->op));
  if (x->op != IR_LINEAR) {
    v->fused = 1;
    return 0;
  }
  if (x->offset < 0) return efail(e, x, "fused linear without a buffer");
  v->kind = NV_SCRATCH;
  v->stride = x->n;
  v->lo = x->offset;
  v->hi = x->offset + x->n;
  if (check_linear(e, x)) return -1;
  int minrows = linear_gemm_rows(e, x);
  v->fused = minrows != 1;
  v->gemm = minrows == CG_GEMM_MIN_ROWS;
  return 0;
}

/* The train kernel's noise rows: args[5 + 2(P + Q)], row stride = width. */
static int noise_input(E *e, const ir_node *x, nval *v) {
  if (!e->train) return efail(e, x, "the noise input (slot 2) outside the train kernel");
  if (e->p->noise_width > 0 && x->n != e->p->noise_width)
    return efail(e, x, "noise input of width %d, the program's is %d", x->n, e->p->noise_width);
  v->kind = NV_NOISE;
  v->stride = x->n;
  return 0;
}

static void add_fn_attr(E *e, const char *k, const char *v) {
  LLVMAddAttributeAtIndex(e->fn, LLVMAttributeFunctionIndex,
                          LLVMCreateStringAttribute(e->C, k, (unsigned)strlen(k), v,
                                                    (unsigned)strlen(v)));
}

/* Entry block of e->fn (the kernel or one of its units): its allocas and
** the branch to the body, before which pointers are made (at_entry). */
static void fn_begin(E *e) {
  e->nrows = LLVMGetParam(e->fn, 1);
  LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(e->C, e->fn, "entry");
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->C, e->fn, "body");
  LLVMPositionBuilderAtEnd(e->B, entry);
  e->entry = entry;
  e->moving = e->rowbad = NULL;
  e->acc = LLVMBuildAlloca(e->B, e->f32, "acc");
  for (int k = 0; k < CG_RB; k++) e->accb[k] = LLVMBuildAlloca(e->B, e->f32, "accb");
  e->logd = LLVMBuildAlloca(e->B, e->f32, "logd");
  e->tmp = NULL;
  if (e->tmpn > 0) {
    e->tmp = LLVMBuildAlloca(e->B, LLVMArrayType2(e->f32, (uint64_t)e->tmpn), "tmp");
    LLVMSetAlignment(e->tmp, 64);
  }
  LLVMBuildBr(e->B, body);
  LLVMPositionBuilderAtEnd(e->B, body);
  memset(e->av, 0, sizeof *e->av * (size_t)e->nav);
}

/* Loop nests per function: past that a unit ends. LLVM's loop analyses
** (ScalarEvolution's guard and predecessor walks) cost about the square
** of the loops in a function; units keep that bounded. FLOWC_SEG_NODES
** overrides it (0: never cut). */
#define CG_SEG_NODES 32
static int seg_nodes(void) {
  const char *s = getenv("FLOWC_SEG_NODES");
  return s && *s ? atoi(s) : CG_SEG_NODES;
}

/* A repeated run of nodes becomes units when each repetition has at least
** this many loop nests: fewer would not pay for a call and its table. */
#define CG_UNIT_MIN_LOOPS 4

static int has_loop(const ir_node *x) {
  return x->batch && !x->fused && x->op != IR_INPUT && x->offset >= 0;
}

/* What x does, not where: op, shape and attributes, not parameter indices
** or buffer offsets. Equal runs of these are candidates for one unit. */
static uint64_t node_sig(const ir_node *x) {
  long f[9] = {x->op, x->batch, x->rows, x->n, x->nargs, x->op == IR_PARAM ? 0 : x->i0,
               x->i1, x->fused, x->offset < 0};
  uint64_t h = 1469598103934665603ull;
  for (int k = 0; k < 9; k++) h = (h ^ (uint64_t)f[k]) * 1099511628211ull;
  for (int k = 0; k < x->nargs; k++)
    h = (h ^ (uint64_t)(x->args[k]->batch * 2 + (x->args[k]->op == IR_CONST))) * 1099511628211ull;
  return h;
}

/*
** Marks mark[i] where a unit should start: at every repetition of a run
** of nodes that repeats back to back (a flow's repeated layers, an ODE
** solver's steps), so that the repetitions become units of one text.
** Greedy from the front, the shortest period at each start; runs are
** compared by polynomial hashes of node_sig (a collision costs only a
** cut: unit_close compares the code itself). Without memory, no marks.
*/
static void plan_cuts(const ir_graph *g, char *mark) {
  int N = g->nnodes;
  uint64_t *h = malloc(sizeof *h * (size_t)(N + 1)), *pw = malloc(sizeof *pw * (size_t)(N + 1));
  int *loops = malloc(sizeof *loops * (size_t)(N + 1));
  if (h && pw && loops) {
    h[0] = 0, pw[0] = 1, loops[0] = 0;
    for (int i = 0; i < N; i++) {
      h[i + 1] = h[i] * 1000003u + node_sig(g->nodes[i]);
      pw[i + 1] = pw[i] * 1000003u;
      loops[i + 1] = loops[i] + has_loop(g->nodes[i]);
    }
#define RUN(a, len) (h[(a) + (len)] - h[a] * pw[len])
    for (int i = 0; i < N;) {
      int p = 1;
      while (i + 2 * p <= N &&
             (loops[i + p] - loops[i] < CG_UNIT_MIN_LOOPS || RUN(i, p) != RUN(i + p, p)))
        p++;
      if (i + 2 * p > N) {
        i++;
        continue;
      }
      int r = 2;
      while (i + (r + 1) * p <= N && RUN(i + r * p, p) == RUN(i, p)) r++;
      for (int k = 0; k <= r && i + k * p < N; k++) mark[i + k * p] = 1;
      i += r * p;
    }
#undef RUN
  }
  free(h);
  free(pw);
  free(loops);
}

/* The function's code as text, for comparison: without its define line
** (the name), metadata renumbered in order of first appearance (each
** function has its own alias scopes and loop ids). NULL without memory. */
static char *unit_text(LLVMValueRef f) {
  char *s = LLVMPrintValueToString(f);
  const char *p = strstr(s, "define ");   /* after a "; Function Attrs" line */
  p = p ? strchr(p, '\n') : NULL;
  p = p ? p + 1 : s;
  size_t cap = strlen(p) + 64, o = 0, ns = 0, scap = 0;
  char *out = malloc(cap);
  long *seen = NULL;
  while (out && *p) {
    if (o + 32 > cap) {   /* a new number may be longer than the old */
      char *t = realloc(out, cap *= 2);
      if (!t) break;
      out = t;
    }
    if (*p != '!' || p[1] < '0' || p[1] > '9') {
      out[o++] = *p++;
      continue;
    }
    char *end;
    long id = strtol(p + 1, &end, 10);
    size_t k = 0;
    while (k < ns && seen[k] != id) k++;
    if (k == ns) {
      long *t = ns < scap ? seen : realloc(seen, sizeof *t * (scap = scap ? 2 * scap : 64));
      if (!t) break;
      seen = t;
      seen[ns++] = id;
    }
    o += (size_t)snprintf(out + o, cap - o, "!%zu", k);
    p = end;
  }
  if (out && *p) {   /* out of memory */
    free(out);
    out = NULL;
  }
  if (out) out[o] = 0;
  free(seen);
  LLVMDisposeMessage(s);
  return out;
}

/* An earlier unit function of the same text as f, or NULL (then f is
** remembered). */
static LLVMValueRef unit_same(E *e, LLVMValueRef f) {
  char *t = unit_text(f);
  if (!t) return NULL;
  cg_units *u = &e->units;
  for (int k = 0; k < u->n; k++)
    if (!strcmp(u->text[k], t)) {
      free(t);
      return u->fn[k];
    }
  if (u->n == u->cap) {
    int cap = u->cap ? 2 * u->cap : 16;
    char **tx = realloc(u->text, sizeof *tx * (size_t)cap);
    if (tx) u->text = tx;
    LLVMValueRef *fx = tx ? realloc(u->fn, sizeof *fx * (size_t)cap) : NULL;
    if (fx) u->fn = fx;
    if (!tx || !fx) {
      free(t);
      return NULL;
    }
    u->cap = cap;
  }
  u->text[u->n] = t;
  u->fn[u->n++] = f;
  return NULL;
}

static void units_free(cg_units *u) {
  for (int k = 0; k < u->n; k++) free(u->text[k]);
  free(u->text);
  free(u->fn);
  *u = (cg_units){0};
}

/* Ends the current unit (its body returns 0): the kernel fills a table
** with the pointers it reads and calls it, or an earlier unit of the same
** text, and returns the first nonzero status. */
static void unit_close(E *e) {
  LLVMBuildRet(e->B, LLVMConstInt(e->i32, 0, 0));
  LLVMValueRef f = e->fn, same = unit_same(e, f);
  LLVMValueRef tab = LLVMConstPointerNull(e->ptr);
  if (e->nslot) {
    LLVMBasicBlockRef kentry = LLVMGetEntryBasicBlock(e->kfn);
    LLVMPositionBuilder(e->EB, kentry, LLVMGetFirstInstruction(kentry));
    tab = LLVMBuildAlloca(e->EB, LLVMArrayType2(e->ptr, (uint64_t)e->nslot), "tab");
  }
  for (int s = 0; s < e->nslot; s++) {
    const cg_slot *sl = &e->slots[s];
    LLVMValueRef v = sl->node >= 0 ? kptr(e, sl->node) : kargv(e, sl->k);
    LLVMValueRef i = ci(e, s);
    LLVMValueRef st = LLVMBuildStore(e->KB, v, LLVMBuildInBoundsGEP2(e->KB, e->ptr, tab, &i, 1, ""));
    LLVMSetAlignment(st, 8);
  }
  LLVMTypeRef fty = LLVMGlobalGetValueType(f);
  LLVMValueRef ca[3] = {LLVMGetParam(e->kfn, 0), LLVMGetParam(e->kfn, 1), tab};
  LLVMValueRef st = LLVMBuildCall2(e->KB, fty, same ? same : f, ca, 3, "");
  LLVMBasicBlockRef bad = LLVMAppendBasicBlockInContext(e->C, e->kfn, "unit.fail");
  LLVMBasicBlockRef ok = LLVMAppendBasicBlockInContext(e->C, e->kfn, "unit.next");
  LLVMBuildCondBr(e->KB, LLVMBuildICmp(e->KB, LLVMIntNE, st, LLVMConstInt(e->i32, 0, 0), ""),
                  bad, ok);
  LLVMPositionBuilderAtEnd(e->KB, bad);
  LLVMBuildRet(e->KB, st);
  LLVMPositionBuilderAtEnd(e->KB, ok);
  if (same) LLVMDeleteFunction(f);
  e->fn = e->kfn;
  e->av = e->kav;
  e->tab = NULL;
}

/* Ends the kernel's code, or the current unit, before node i (outside any
** fixed-point loop) and starts the next unit: an internal noinline
** function i32 (ptr args, i64 nrows, ptr tab) whose pointers come from
** tab (see vptr). */
static void cut(E *e) {
  if (!e->KB) { /* the kernel's own code ends here; its calls follow */
    e->KB = LLVMCreateBuilderInContext(e->C);
    LLVMPositionBuilderAtEnd(e->KB, LLVMGetInsertBlock(e->B));
  } else {
    unit_close(e);
  }
  char name[300];
  size_t nl = 0;
  const char *kn = LLVMGetValueName2(e->kfn, &nl);
  snprintf(name, sizeof name, "%.*s.seg%d", (int)nl, kn, ++e->nseg);
  LLVMTypeRef pt[3] = {e->ptr, e->i64, e->ptr};
  LLVMValueRef f = LLVMAddFunction(e->M, name, LLVMFunctionType(e->i32, pt, 3, 0));
  LLVMSetLinkage(f, LLVMInternalLinkage);
  static const char *sa[] = {"target-cpu", "target-features", "prefer-vector-width"};
  for (int k = 0; k < 3; k++) {
    LLVMAttributeRef a = LLVMGetStringAttributeAtIndex(e->kfn, LLVMAttributeFunctionIndex, sa[k],
                                                       (unsigned)strlen(sa[k]));
    if (a) LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, a);
  }
  static const char *ea[] = {"nounwind", "noinline"};
  for (int k = 0; k < 2; k++) {
    unsigned kd = LLVMGetEnumAttributeKindForName(ea[k], strlen(ea[k]));
    LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->C, kd, 0));
  }
  e->fn = f;
  e->fnid++;
  e->av = e->uav;
  e->tab = LLVMGetParam(f, 2);
  e->nslot = 0;
  fn_begin(e);
}

/* Ends the kernel: its last unit, then its own return. */
static void kernel_end(E *e) {
  if (e->KB) {
    unit_close(e);
    LLVMBuildRet(e->KB, LLVMConstInt(e->i32, 0, 0));
  } else {
    LLVMBuildRet(e->B, LLVMConstInt(e->i32, 0, 0));
  }
}

/* Deletes what emit_kernel made of a kernel that failed. */
static void kernel_drop(E *e, const char *name) {
  LLVMClearInsertionPosition(e->B);
  LLVMDeleteFunction(e->kfn);   /* first: it calls the units */
  for (int k = e->nseg; k >= 1; k--) {
    char sn[300];
    snprintf(sn, sizeof sn, "%s.seg%d", name, k);
    LLVMValueRef f = LLVMGetNamedFunction(e->M, sn);
    if (f) LLVMDeleteFunction(f);
  }
}

static int emit_kernel(E *e, int ent, int hidden, const char *cpu, const char *feat) {
  const ir_graph *g = e->g;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i]->id != i)
      return cg_fail(e->err, e->errlen, "codegen: %s graph not renumbered (node %d has id %d)",
                  cg_entry_name(ent), i, g->nodes[i]->id);
  if (g->nouts < 1 || g->nouts > 2)
    return cg_fail(e->err, e->errlen, "codegen: %s graph has %d outputs", cg_entry_name(ent), g->nouts);
  if (g->nprep < 0 || g->scratch < 0)
    return cg_fail(e->err, e->errlen, "codegen: %s graph has not been through pass_memplan",
                cg_entry_name(ent));

  e->train = ent == CG_TRAIN;
  char name[256];
  cg_kernel_name(e->p, ent, name, sizeof name);
  LLVMTypeRef pt[2] = {e->ptr, e->i64};
  LLVMTypeRef fty = LLVMFunctionType(e->i32, pt, 2, 0);
  e->fn = LLVMAddFunction(e->M, name, fty);
  if (hidden) LLVMSetVisibility(e->fn, LLVMHiddenVisibility);
  add_fn_attr(e, "target-cpu", cpu);
  add_fn_attr(e, "target-features", feat);
  /* AVX-512 hosts vectorise 256 bits wide unless told otherwise; whether
     512 is faster depends on the chip (clock offsets), so it is measured,
     not assumed: FLOWC_VECTOR_WIDTH=512 (or 128, 256) sets LLVM's
     prefer-vector-width for flowc bench to compare. */
  const char *vw = getenv("FLOWC_VECTOR_WIDTH");
  if (vw && (!strcmp(vw, "128") || !strcmp(vw, "256") || !strcmp(vw, "512")))
    add_fn_attr(e, "prefer-vector-width", vw);
  unsigned nu = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(e->fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->C, nu, 0));
  LLVMSetValueName2(LLVMGetParam(e->fn, 0), "args", 4);
  LLVMSetValueName2(LLVMGetParam(e->fn, 1), "nrows", 5);

  e->scope = NULL;
  {
    LLVMMetadataRef nm = LLVMMDStringInContext2(e->C, name, strlen(name));
    e->domain = self_md(e, &nm, 1);
  }
  e->kfn = e->fn;
  e->KB = NULL;
  e->tab = NULL;
  e->nseg = 0;
  e->fnid = 1;
  e->Q = g->nprep;
  e->nav = a_noise(e) + 1;
  e->tmpn = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (ir_is_sink(g->nodes[i]->op) && sink_tmp(g->nodes[i]) > e->tmpn)
      e->tmpn = sink_tmp(g->nodes[i]);

  size_t N = g->nnodes ? (size_t)g->nnodes : 1;
  char *live = calloc(N, 1), *mark = calloc(N, 1);
  int *last = malloc(sizeof *last * N);
  e->v = calloc(N, sizeof *e->v);
  e->open = malloc(sizeof *e->open * N);
  e->kav = calloc((size_t)e->nav, sizeof *e->kav);
  e->uav = calloc((size_t)e->nav, sizeof *e->uav);
  e->slots = malloc(sizeof *e->slots * (N + (size_t)e->nav));   /* a unit's table at most */
  int rc = 0;
  if (!live || !mark || !last || !e->v || !e->open || !e->kav || !e->uav || !e->slots) {
    rc = cg_fail(e->err, e->errlen, "codegen: out of memory");
    goto done;
  }
  e->av = e->kav;
  fn_begin(e);
  for (int i = 0; i < g->nnodes && !rc; i++)
    for (int k = 0; k < g->nodes[i]->nargs && !rc; k++)
      if (!g->nodes[i]->args[k]) rc = efail(e, g->nodes[i], "missing argument %d", k);
  if (rc) goto done;
  for (int k = 0; k < g->nouts; k++) live[g->outs[k]->id] = 1;
  /* last use of each node (g->nnodes: an output), loops included */
  ir_last_uses(g, last);
  for (int i = 0; i < g->nnodes; i++)
    if (ir_is_sink(g->nodes[i]->op)) live[i] = 1;
  mark_live(g, live);
  int segmax = seg_nodes();
  if (segmax > 0) plan_cuts(g, mark);

  int segn = 0, marked = 0;
  for (int i = 0; i < g->nnodes && !rc; i++) {
    const ir_node *x = g->nodes[i];
    nval *v = &e->v[i];
    v->lo = v->hi = -1;
    marked |= mark[i];
    if (ir_is_sink(x->op) && live[i]) {
      if (e->nopen) { /* it would add once per run of the body */
        rc = efail(e, x, "gradient sink inside a fixed-point loop");
        break;
      }
      if (segmax > 0 && (marked || ++segn > segmax)) {
        cut(e);
        segn = 1, marked = 0;
      }
      e->scope = NULL;
      new_scope(e);
      rc = emit_sink(e, x);
      continue;
    }
    if (!x->batch || !live[i]) continue;
    if (x->op == IR_INPUT && x->i0 == 2) {
      rc = noise_input(e, x, v);
      continue;
    }
    if (x->op == IR_INPUT) {
      if (x->i0 != 0 && x->i0 != 1) {
        rc = efail(e, x, "input slot %d", x->i0);
        break;
      }
      v->kind = NV_INPUT;
      v->stride = x->n;
      continue;
    }
    if (x->fused && (rc = fused_node(e, x, v))) break;
    if (v->fused) continue;
    for (int k = 0; k < x->nargs && ir_op_kind(x->op) != IR_KIND_ELEMWISE && x->op != IR_ROWSUM; k++)
      if (x->args[k]->batch && e->v[x->args[k]->id].fused) rc = efail(e, x, "fused into a non-elementwise user");
    if (rc) break;
    int viewable = x->op == IR_SLICE || x->op == IR_STOPGRAD;
    if (x->offset < 0 || (viewable && view_ok(e, g, i, last))) {
      if (viewable && x->args[0]->batch) { /* a view of its argument */
        nval *a = &e->v[x->args[0]->id];
        int lo = x->op == IR_SLICE ? x->i0 : 0;
        if (lo < 0 || lo + x->n > x->args[0]->n) {
          rc = efail(e, x, "slice out of range");
          break;
        }
        v->stride = a->stride;
        v->lo = a->lo;
        v->hi = a->hi;
        v->kind = NV_VIEW;
        v->src = x->args[0]->id;
        v->col = lo;
        continue;
      }
      rc = efail(e, x, "batch node without a scratch buffer");
      break;
    }
    if (x->offset + x->n > g->scratch) {
      rc = efail(e, x, "buffer [%ld, %ld) beyond scratch %ld", x->offset, x->offset + x->n,
                 g->scratch);
      break;
    }
    if (segmax > 0 && !e->nopen && (marked || ++segn > segmax)) {
      cut(e);
      segn = 1, marked = 0;
    }
    v->kind = NV_SCRATCH;
    v->stride = x->n;
    v->lo = x->offset;
    v->hi = x->offset + x->n;
    new_scope(e);
    if (ir_is_unary(x->op) || ir_is_binary(x->op) || x->op == IR_DACT || x->op == IR_D2ACT)
      rc = emit_elementwise(e, x);
    else switch (x->op) {
    case IR_LINEAR: rc = emit_linear(e, x); break;
    case IR_SLICE: rc = emit_slice(e, x); break;
    case IR_CONCAT: rc = emit_concat(e, x); break;
    case IR_GATHER: rc = emit_gather(e, x); break;
    case IR_RQS: rc = emit_rqs(e, x); break;
    case IR_ROWSUM: rc = emit_rowsum(e, x); break;
    case IR_LINEAR_T: rc = emit_linear_t(e, x); break;
    case IR_PAD: rc = emit_pad(e, x); break;
    case IR_BCAST: rc = emit_bcast(e, x); break;
    case IR_RQS_GRAD: rc = emit_rqs_grad(e, x); break;
    case IR_LOGDET: rc = emit_logdet(e, x); break;
    case IR_LOGDET_GRAD: rc = emit_logdet_grad(e, x); break;
    case IR_STOPGRAD: rc = emit_copy(e, x); break;
    case IR_FIX_BEGIN: rc = emit_fix_begin(e, x); break;
    case IR_FIX_END: rc = emit_fix_end(e, x); break;
    case IR_TEMB: rc = emit_temb(e, x); break;
    case IR_SDE_NOISE: rc = emit_sde_noise(e, x); break;
    case IR_ODE_CTRL: rc = emit_ode_ctrl(e, x); break;
    default: rc = efail(e, x, "not a batch operation"); break;
    }
  }
  if (!rc && e->nopen)
    rc = efail(e, g->nodes[e->open[e->nopen - 1]], "fixed-point loop without its end");
  for (int k = 0; k < g->nouts && !rc; k++) rc = emit_output(e, k);
  if (!rc) kernel_end(e);
done:
  if (rc) kernel_drop(e, name);   /* leave no half-built function behind */
  if (e->KB) LLVMDisposeBuilder(e->KB);
  e->KB = NULL;
  free(live);
  free(mark);
  free(last);
  free(e->v);
  e->v = NULL;
  free(e->open);
  e->open = NULL;
  free(e->kav);
  free(e->uav);
  e->av = e->kav = e->uav = NULL;
  free(e->slots);
  e->slots = NULL;
  return rc;
}

int cg_emit_module(const ir_program *p, LLVMModuleRef M, LLVMTargetMachineRef tm, int hidden,
                   unsigned mask, char *err, size_t errlen) {
  if (!p || !p->model) return cg_fail(err, errlen, "codegen: no program");
  E e = {0};
  e.C = LLVMGetModuleContext(M);
  e.M = M;
  e.B = LLVMCreateBuilderInContext(e.C);
  e.EB = LLVMCreateBuilderInContext(e.C);
  e.f32 = LLVMFloatTypeInContext(e.C);
  e.i64 = LLVMInt64TypeInContext(e.C);
  e.ptr = LLVMPointerTypeInContext(e.C, 0);
  e.vt = LLVMVoidTypeInContext(e.C);
  e.i32 = LLVMInt32TypeInContext(e.C);
  e.p = p;
  e.P = p->nparams;
  e.tile = cg_tile(p);
  e.err = err;
  e.errlen = errlen;
  e.md_scope = LLVMGetMDKindIDInContext(e.C, "alias.scope", 11);
  e.md_noalias = LLVMGetMDKindIDInContext(e.C, "noalias", 7);
  e.md_loop = LLVMGetMDKindIDInContext(e.C, "llvm.loop", 9);

  char *triple = LLVMGetTargetMachineTriple(tm);
  char *cpu = LLVMGetTargetMachineCPU(tm);
  char *feat = LLVMGetTargetMachineFeatureString(tm);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  LLVMSetTarget(M, triple);
  LLVMSetModuleDataLayout(M, td);
  LLVMDisposeTargetData(td);

  int rc = 0;
  for (int ent = 0; ent <= CG_TRAIN && !rc; ent++) {
    e.g = ent == CG_TRAIN ? p->train : p->entry[ent];
    if (e.g && (mask & (1u << ent))) rc = emit_kernel(&e, ent, hidden, cpu, feat);
  }
  LLVMDisposeBuilder(e.B);
  LLVMDisposeBuilder(e.EB);
  units_free(&e.units);
  LLVMDisposeMessage(triple);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(feat);
  if (rc) return rc;

  char *msg = NULL;
  if (LLVMVerifyModule(M, LLVMReturnStatusAction, &msg)) {
    cg_fail(err, errlen, "codegen: internal error, invalid LLVM module: %s", msg ? msg : "?");
    LLVMDisposeMessage(msg);
    return -1;
  }
  LLVMDisposeMessage(msg);
  return 0;
}
