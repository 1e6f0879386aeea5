/*
** fuzz/fuzz_weights.c: libFuzzer harness for the weights reader.
**
**   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iruntime \
**     fuzz/fuzz_weights.c runtime/rt_*.c -lopenblas -lpthread -lm -o fuzz_weights
**   ./fuzz_weights -max_len=4096 corpus/
**
** Every input goes through rt_weights_load_mem against a small fixed model
** (float matrix and vector, a random and a listed permutation, a linear_lu
** group); it must be accepted or refused with a message, never crash, leak
** or read out of bounds.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

static const char *DESC =
  "flowc-desc 1\nname fuzz\ndim 3\ncontext 0\ntile 8\nparams 9\n"
  "param flow.0.net.0.weight f32 2 2 3 linear_weight 3 0 0 0\n"
  "param flow.0.net.0.bias f32 1 2 0 linear_bias 3 0 0 0\n"
  "param flow.1.perm i64 1 3 0 perm_random 0 1 0 0\n"
  "param flow.2.perm i64 1 3 0 perm_list 0 2 0 3 2 0 1\n"
  "param flow.3.lower f32 2 3 3 lu_lower 0 3 0 0\n"
  "param flow.3.upper f32 2 3 3 lu_upper 0 3 0 0\n"
  "param flow.3.log_diag f32 1 3 0 lu_log_diag 0 3 0 0\n"
  "param flow.3.sign f32 1 3 0 lu_sign 0 3 0 0\n"
  "param flow.3.perm i64 1 3 0 lu_perm 0 3 0 0\n"
  "entry encode scratch 0 has_ld 0 nprep 0\n"
  "entry encode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry decode scratch 0 has_ld 0 nprep 0\n"
  "entry decode_ld scratch 0 has_ld 1 nprep 0\n"
  "entry logprob scratch 0 has_ld 0 nprep 0\nend\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static rt_desc *d;
  if (!d) {
    d = rt_desc_parse(DESC, NULL, 0);
    if (!d) abort();
  }
  rt_weights w;
  char err[512];
  if (rt_weights_load_mem(d, data, size, "fuzz.safetensors", &w, err, sizeof err) == 0) {
    /* an accepted file must have every tensor, each a fitting size */
    if (w.n != d->nparams) abort();
    for (int i = 0; i < w.n; i++)
      if (!w.data[i]) abort();
    rt_weights_free(&w);
  } else if (!err[0] || !strstr(err, "fuzz.safetensors")) {
    abort();                              /* a refusal always names the file */
  }
  return 0;
}
