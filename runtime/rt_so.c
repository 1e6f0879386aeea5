/*
** runtime/rt_so.c: what a built shared object's m_open calls (flowc-cli.md,
** "The shared object"): descriptor text + kernels + weights -> a model on
** all cores.
*/
#include "rt_internal.h"

#include <stdio.h>

rt_model *rt_so_open(const char *desc_text, const rt_kernel kernels[RT_NENTRY],
                     const void *builtin, size_t builtin_len,
                     const char *weights_path, char *err, size_t errlen) {
  char e[512];
  rt_desc *d = rt_desc_parse(desc_text, e, sizeof e);
  if (!d) {
    rt_errf(err, errlen, "built-in %s", e);
    return NULL;
  }
  rt_weights w;
  int rc;
  if (weights_path) {
    rc = rt_weights_load(d, weights_path, &w, err, errlen);
  } else if (builtin) {
    rc = rt_weights_load_mem(d, builtin, builtin_len, "built-in weights", &w, err, errlen);
  } else {
    rc = rt_errf(err, errlen, "%s: no weights: pass a path", d->name);
  }
  rt_model *m = NULL;
  if (!rc) {
    m = rt_model_open(d, kernels, &w, 0, err, errlen);
    rt_weights_free(&w);
  }
  rt_desc_free(d);
  return m;
}
