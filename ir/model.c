/* ir/model.c: names and lookup for checked models (see model.h). */
#include "model.h"

#include <string.h>

const char *ir_act_name(ir_act a) {
  static const char *const names[ACT_COUNT] = {
    "relu", "gelu", "gelu_tanh", "silu", "tanh", "elu", "softplus", "lipswish",
  };
  return (unsigned)a < ACT_COUNT ? names[a] : "?";
}

const char *ir_layer_name(ir_layerkind k) {
  static const char *const names[LAYER_COUNT] = {
    "affine_coupling", "additive_coupling", "spline_coupling",
    "permute", "actnorm", "linear_lu", "maf", "iaf", "residual", "cnf", "sde",
  };
  return (unsigned)k < LAYER_COUNT ? names[k] : "?";
}

const ir_model *ir_module_find(const ir_module *M, const char *name) {
  if (!M || M->nmodels < 1) return NULL;
  if (!name) return &M->models[0];
  for (int i = 0; i < M->nmodels; i++)
    if (M->models[i].name && !strcmp(M->models[i].name, name)) return &M->models[i];
  return NULL;
}
