/*
** tests/modelgen.h: random models and weights for property tests, built
** directly as checked models (no parser involved).
*/
#ifndef FLOWC_MODELGEN_H
#define FLOWC_MODELGEN_H

#include <stdint.h>

#include "ir.h"

/* A deterministic generator for tests (splitmix64). */
typedef struct mg_rng { uint64_t s; } mg_rng;
double mg_uniform(mg_rng *r);          /* [0,1) */
double mg_normal(mg_rng *r);

/* A random model of the coupling family: dim D, context C, nlayers layers
** of the given kinds (or random kinds when kinds == NULL). */
ir_model *mg_model(ir_arena *A, mg_rng *r, int D, int C, int nlayers, const ir_layerkind *kinds);

/* Random parameter values for p (scale sets the network weights' size),
** valid permutations and well-conditioned LU factors. Returns arrays in an
** arena: float* or int64_t* per param dtype. */
void **mg_params(ir_arena *A, mg_rng *r, const ir_program *p, double scale);

#endif
