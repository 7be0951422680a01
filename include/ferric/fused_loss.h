/* ferric fused losses: a language-model head and its cross-entropy computed in row
 * chunks, so that the (N, V) logits and their gradient never exist whole. */
#ifndef FERRIC_FUSED_LOSS_H
#define FERRIC_FUSED_LOSS_H

#include "ferric/core.h"
#include "ferric/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Mean cross-entropy of x (..., C) @ w (V, C)^T against int targets (...) (i32/i64, one
 * per row of x), rows whose target is ignore_index not counted (0 when none counts), as
 * fe_cross_entropy(fe_linear(x, w, NULL), targets, ignore_index) gives it: a scalar, f64
 * for f64 inputs, else f32. x and w share a float dtype and device. Rows go through in
 * chunks of chunk_rows (0: automatic, about 256 MiB of logits per chunk); when x or w
 * requires grad their gradients are computed during the forward and kept on the tape
 * (N*C + V*C elements) instead of the logits, and a second backward through the same
 * loss is refused (FE_ERR_STATE). FE_ERR_SHAPE / FE_ERR_DTYPE / FE_ERR_ARG name the
 * mismatch. */
fe_tensor *fe_linear_cross_entropy(fe_tensor *x, fe_tensor *w, fe_tensor *targets,
                                   int64_t ignore_index, int64_t chunk_rows);

/* The training loss of tokens idx (B, T) against targets (B, T) (ignore -100): equal to
 * fe_llama_loss(fe_llama_forward(m, idx), targets) but through fe_linear_cross_entropy,
 * so the logits never exist whole. A scalar (f32, f64 for f64 models). */
fe_tensor *fe_llama_forward_loss(fe_llama *m, fe_tensor *idx, fe_tensor *targets);

#ifdef __cplusplus
}
#endif
#endif
