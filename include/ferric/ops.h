/* ferric ops: every differentiable operation. Each returns a new tensor (or a
 * view) and records itself on the autograd tape when an input requires grad.
 * Each returns NULL on error with fe_last_error() naming the problem; a NULL
 * input makes the op return NULL without overwriting the first error. */
#ifndef FERRIC_OPS_H
#define FERRIC_OPS_H

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise, with NumPy broadcasting ------------------------------ */
fe_tensor *fe_add(fe_tensor *a, fe_tensor *b);
fe_tensor *fe_sub(fe_tensor *a, fe_tensor *b);
fe_tensor *fe_mul(fe_tensor *a, fe_tensor *b);
fe_tensor *fe_div(fe_tensor *a, fe_tensor *b);
fe_tensor *fe_neg(fe_tensor *a);
/* a * s */
fe_tensor *fe_scale(fe_tensor *a, double s);
/* a + s */
fe_tensor *fe_add_scalar(fe_tensor *a, double s);
fe_tensor *fe_exp(fe_tensor *a);
fe_tensor *fe_log(fe_tensor *a);
fe_tensor *fe_sqrt(fe_tensor *a);
fe_tensor *fe_rsqrt(fe_tensor *a);
fe_tensor *fe_tanh(fe_tensor *a);
fe_tensor *fe_sigmoid(fe_tensor *a);
fe_tensor *fe_relu(fe_tensor *a);
/* GELU; approximate=true is the tanh form, false the exact erf form. */
fe_tensor *fe_gelu(fe_tensor *a, bool approximate);
fe_tensor *fe_silu(fe_tensor *a);
/* a^2 */
fe_tensor *fe_square(fe_tensor *a);

/* ---- reductions -------------------------------------------------------- */
/* Reduce over `ndims` dims listed in `dims` (negative counts from the end);
 * ndims == 0 reduces over every dim. keepdim keeps reduced dims as size 1. */
fe_tensor *fe_sum(fe_tensor *a, int ndims, const int *dims, bool keepdim);
fe_tensor *fe_mean(fe_tensor *a, int ndims, const int *dims, bool keepdim);
/* Maximum; the gradient goes to every position equal to the maximum, shared. */
fe_tensor *fe_max(fe_tensor *a, int ndims, const int *dims, bool keepdim);

/* ---- linear algebra ---------------------------------------------------- */
/* a (..., M, K) @ b (..., K, N) -> (..., M, N); batch dims broadcast. 1-D and
 * 2-D operands work as in NumPy's 2-D case. ta/tb use the transposes of a/b's
 * last two dims. */
fe_tensor *fe_matmul(fe_tensor *a, fe_tensor *b, bool ta, bool tb);
/* x (..., in) @ w(out, in)^T + bias(out) -> (..., out); bias may be NULL. */
fe_tensor *fe_linear(fe_tensor *x, fe_tensor *w, fe_tensor *bias);
/* GELU (tanh form) of fe_linear(x, w, bias), bias may be NULL. On CUDA, when the operands
 * allow it (contiguous f32/f16/bf16, in and out sizes multiples of 16 bytes), the bias and
 * the GELU are the GEMM's epilogue, with no pass of their own; the same holds for
 * fe_linear's bias. */
fe_tensor *fe_linear_gelu(fe_tensor *x, fe_tensor *w, fe_tensor *bias);

/* ---- normalisation, activation blocks ---------------------------------- */
/* Softmax / log-softmax over `dim`. */
fe_tensor *fe_softmax(fe_tensor *a, int dim);
fe_tensor *fe_log_softmax(fe_tensor *a, int dim);
/* RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * w; w (C) may be NULL. */
fe_tensor *fe_rmsnorm(fe_tensor *x, fe_tensor *w, double eps);
/* LayerNorm over the last dim; w and b (C) may be NULL. */
fe_tensor *fe_layernorm(fe_tensor *x, fe_tensor *w, fe_tensor *b, double eps);
/* Fused SiLU gate: silu(a) * b, same shapes. */
fe_tensor *fe_silu_gate(fe_tensor *a, fe_tensor *b);
/* Fused residual add + RMSNorm: h = x + r; y = rmsnorm(h) * w. Writes both to
 * *h_out and *y_out (either may be NULL when unused). */
fe_status fe_rmsnorm_residual(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps,
                              fe_tensor **h_out, fe_tensor **y_out);

/* ---- positions and attention ------------------------------------------- */
/* Rotary position embedding, Hugging Face's rotate-half layout. x is (..., T, ..., D)
 * with the position axis at `seq_dim`; position of index t is pos0 + t;
 * inv_freq (D/2, f32 or f64, on x's device) holds the frequencies; see
 * fe_rope_inv_freq. */
fe_tensor *fe_rope(fe_tensor *x, fe_tensor *inv_freq, int seq_dim, int64_t pos0);
/* Plain RoPE frequencies theta^(-2i/D), i < D/2, as an f32 tensor. */
fe_tensor *fe_rope_inv_freq(int64_t head_dim, double theta, fe_device dev);
/* Scaled dot-product attention, composed from the ops above. q (B, Hq, T, D),
 * k and v (B, Hkv, S, D) with Hq a multiple of Hkv (grouped KV heads); causal
 * masks key j > i + (S - T). scale <= 0 means 1/sqrt(D). Returns (B, Hq, T, D). */
fe_tensor *fe_sdpa(fe_tensor *q, fe_tensor *k, fe_tensor *v, bool causal, double scale);

/* ---- losses ------------------------------------------------------------ */
/* Mean cross-entropy of logits (N, V) against int targets (N); rows whose
 * target equals ignore_index do not count. Returns a scalar. */
fe_tensor *fe_cross_entropy(fe_tensor *logits, fe_tensor *targets, int64_t ignore_index);
/* Mean squared error, a scalar. */
fe_tensor *fe_mse(fe_tensor *a, fe_tensor *b);

/* ---- indexing and shapes ----------------------------------------------- */
/* weight (V, C) gathered at int indices idx (...) -> (..., C). */
fe_tensor *fe_embedding(fe_tensor *weight, fe_tensor *idx);
/* cond ? a : b, with broadcasting; cond is u8 (nonzero = true) or any dtype. */
fe_tensor *fe_where(fe_tensor *cond, fe_tensor *a, fe_tensor *b);
/* a with `value` wherever mask (broadcastable) is nonzero. */
fe_tensor *fe_masked_fill(fe_tensor *a, fe_tensor *mask, double value);
/* Zero each element with probability p and scale the rest by 1/(1-p), seeded
 * by the global generator; identity when !training or p == 0. */
fe_tensor *fe_dropout(fe_tensor *a, double p, bool training);
/* Join n tensors along dim. */
fe_tensor *fe_concat(int n, fe_tensor *const *ts, int dim);
/* A view with a new shape (one entry may be -1); copies when strides forbid a view. */
fe_tensor *fe_reshape(fe_tensor *a, int ndim, const int64_t *shape);
/* A view with dims reordered by perm. */
fe_tensor *fe_permute(fe_tensor *a, const int *perm);
fe_tensor *fe_transpose(fe_tensor *a, int d0, int d1);
/* A view of indices start, start+step, ... below end along dim (negative start/end
 * count from the end; step >= 1). */
fe_tensor *fe_slice(fe_tensor *a, int dim, int64_t start, int64_t end, int64_t step);
/* A broadcast view of a to `shape` (size-1 dims stretched, new dims in front). */
fe_tensor *fe_expand(fe_tensor *a, int ndim, const int64_t *shape);
fe_tensor *fe_unsqueeze(fe_tensor *a, int dim);
fe_tensor *fe_squeeze(fe_tensor *a, int dim);
/* A contiguous tensor with a's elements (a itself, with a new reference, when already contiguous). */
fe_tensor *fe_contiguous(fe_tensor *a);
/* A copy in dtype dt (round-to-nearest-even for narrowing float casts). */
fe_tensor *fe_cast(fe_tensor *a, fe_dtype dt);

/* ---- in place, never recorded on the tape ------------------------------- */
/* dst += alpha * src (src broadcast to dst). */
fe_status fe_add_(fe_tensor *dst, fe_tensor *src, double alpha);
/* dst *= s */
fe_status fe_scale_(fe_tensor *dst, double s);

#ifdef __cplusplus
}
#endif
#endif
