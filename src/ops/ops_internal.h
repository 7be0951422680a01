/* Helpers shared by the op files. */
#ifndef FE_OPS_INTERNAL_H
#define FE_OPS_INTERNAL_H

#include "backends/backend.h"

/* Same dtype and device for a and b, else an error naming op; returns FE_OK or the error. */
fe_status fe__check_pair(const char *op, const fe_tensor *a, const fe_tensor *b);
/* a must hold a float dtype. */
fe_status fe__check_float(const char *op, const fe_tensor *a);
/* Release t when st signals an error; returns t or NULL. */
fe_tensor *fe__done(fe_tensor *t, fe_status st);
/* A contiguous version of t without recording on the tape. */
fe_tensor *fe__contig_raw(fe_tensor *t);
/* Elementwise helpers without autograd: out = op(a) / op(a, b) with broadcasting. */
fe_tensor *fe__unary_raw(fe_unary_op op, fe_tensor *a, double alpha, double beta);
fe_tensor *fe__binary_raw(fe_binary_op op, fe_tensor *a, fe_tensor *b, double alpha,
                          const char *name);
/* How many linears (fe_linear with a bias, fe_linear_gelu) the backend's GEMM epilogue has
 * run in this process (tests check that the fused path is the one taken). */
int64_t fe__linear_epilogue_runs(void);

#endif
