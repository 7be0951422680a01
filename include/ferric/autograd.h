/* ferric autograd: a tape of operations recorded as ops run, replayed backwards. */
#ifndef FERRIC_AUTOGRAD_H
#define FERRIC_AUTOGRAD_H

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Mark a leaf tensor as needing a gradient (float dtypes only). */
fe_status fe_set_requires_grad(fe_tensor *t, bool on);
bool fe_requires_grad(const fe_tensor *t);
/* The accumulated gradient of a leaf (NULL before any backward). Owned by t. */
fe_tensor *fe_grad(const fe_tensor *t);
/* Drop t's accumulated gradient. */
void fe_zero_grad(fe_tensor *t);
/* Back-propagate from `out`. gout is the gradient of out (NULL: out must have one
 * element and its gradient is 1). Gradients are added into the .grad of every
 * leaf that requires grad. */
fe_status fe_backward(fe_tensor *out, fe_tensor *gout);
/* Whether ops record on the tape on this thread (default true). */
bool fe_grad_enabled(void);
/* Turn recording on or off on this thread; returns the previous setting. */
bool fe_set_grad_enabled(bool on);
/* A view sharing a's data that is cut off from the tape. */
fe_tensor *fe_detach(fe_tensor *a);

/* A function to checkpoint: computes one output from n inputs (and whatever
 * parameters ctx reaches). It must be deterministic given the RNG state. */
typedef fe_tensor *(*fe_checkpoint_fn)(void *ctx, fe_tensor *const *inputs, int n);
/* Run fn without keeping its intermediates; during backward, run it again with
 * the tape on and back-propagate through the recomputation. The RNG state is
 * restored for the recomputation, so dropout masks match. */
fe_tensor *fe_checkpoint(fe_checkpoint_fn fn, void *ctx, fe_tensor *const *inputs, int n);

#ifdef __cplusplus
}
#endif
#endif
