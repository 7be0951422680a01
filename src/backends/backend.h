/* The backend interface: memory and kernels, never autograd.
 *
 * Every kernel receives tensors whose data lives on the backend's device. The op
 * layer allocates outputs contiguous; inputs of elementwise kernels may be any
 * strided view (broadcast inputs have stride 0); inputs of the other kernels are
 * contiguous unless the comment says otherwise. Kernels return FE_OK or an error
 * status with the message set. Float kernels accept f32, f64, f16 and bf16. */
#ifndef FE_BACKEND_H
#define FE_BACKEND_H

#include "core/internal.h"

typedef enum fe_unary_op {
    FE_U_NEG,
    FE_U_EXP,
    FE_U_LOG,
    FE_U_SQRT,
    FE_U_RSQRT,
    FE_U_TANH,
    FE_U_SIGMOID,
    FE_U_RELU,
    FE_U_GELU_TANH,
    FE_U_GELU_ERF,
    FE_U_SILU,
    FE_U_SQUARE,
    FE_U_AFFINE, /* x * alpha + beta */
    FE_U_COUNT
} fe_unary_op;

typedef enum fe_binary_op {
    FE_B_ADD, /* a + alpha * b */
    FE_B_SUB,
    FE_B_MUL,
    FE_B_DIV,
    FE_B_EQ, /* 1 where a == b, else 0 */
    FE_B_GE, /* 1 where a >= b, else 0 */
    /* derivative helpers: out = b * f'(a) where a is the op's input x */
    FE_B_GELU_TANH_GRAD,
    FE_B_GELU_ERF_GRAD,
    FE_B_SILU_GRAD,
    FE_B_RELU_GRAD,
    /* out = b * f'(x) written with a = y = f(x) */
    FE_B_SIGMOID_GRAD_Y,
    FE_B_TANH_GRAD_Y,
    FE_B_COUNT
} fe_binary_op;

typedef enum fe_reduce_op { FE_R_SUM, FE_R_MAX } fe_reduce_op;
/* activations a GEMM epilogue can apply (linear_act) */
typedef enum fe_act { FE_ACT_NONE, FE_ACT_GELU_TANH } fe_act;
typedef enum fe_rand_kind { FE_RAND_UNIFORM, FE_RAND_NORMAL } fe_rand_kind;

/* Arguments of fe_backend.adamw, the update PyTorch's AdamW makes, with g the gradient
 * after the optional multipliers below:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p = p (1 - lr wd_i) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
 * The gradient is first multiplied by `unscale` (a host number: 1 / the fp16 loss scale;
 * 0 reads as 1) and then by gs = grad_scale[0] (a device scalar: the clip coefficient),
 * each product rounded to the state precision (f32, or f64 for f64 state), so g is what an
 * in-place unscale and an in-place clip of an f32 (f64) gradient would have left. When
 * skip is not NULL and skip[0] != 0 nothing is written (an fp16 overflow step, decided on
 * the device). When copy is not NULL, each copy[i] that is not NULL (contiguous, any float
 * dtype, p[i]'s element count) receives p[i] as stored after the update, cast to its dtype:
 * the low-precision compute weights of mixed precision, with no pass of their own. */
typedef struct fe_adamw_args {
    double lr, beta1, beta2, eps;
    double bc1, bc2;             /* bias corrections 1 - beta^t */
    const double *weight_decay;  /* n entries, 0 for no-decay tensors */
    double unscale;              /* host multiplier of the gradients; 0 = 1 */
    const fe_tensor *grad_scale; /* 1 element, any float dtype, or NULL */
    const fe_tensor *skip;       /* 1 element, any dtype, or NULL */
    fe_tensor *const *copy;      /* n entries (each may be NULL), or NULL */
} fe_adamw_args;

typedef struct fe_backend {
    const char *name;
    /* memory */
    fe_status (*alloc)(fe_device dev, size_t nbytes, void **out);
    void (*free)(fe_device dev, void *p, size_t nbytes);
    /* copy nbytes between host and device memory (kind: 0 h2d, 1 d2h, 2 d2d) */
    fe_status (*memcpy)(fe_device dev, void *dst, const void *src, size_t nbytes, int kind);
    fe_status (*sync)(fe_device dev);
    size_t (*mem_current)(fe_device dev);
    size_t (*mem_peak)(fe_device dev);
    void (*mem_reset_peak)(fe_device dev);

    /* dst[i] = cast(src[i]); both may be strided; same shape */
    fe_status (*copy)(fe_tensor *dst, const fe_tensor *src);
    fe_status (*fill)(fe_tensor *t, double v);
    fe_status (*arange)(fe_tensor *t, double start, double step);
    /* element k of t = k-th number of the Philox stream (seed, block0) */
    fe_status (*rand)(fe_tensor *t, uint64_t seed, uint64_t block0, fe_rand_kind kind, double a,
                      double b);

    /* elementwise; out contiguous, inputs strided and already broadcast to out's shape */
    fe_status (*unary)(fe_unary_op op, fe_tensor *out, const fe_tensor *a, double alpha,
                       double beta);
    fe_status (*binary)(fe_binary_op op, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                        double alpha);
    fe_status (*where)(fe_tensor *out, const fe_tensor *cond, const fe_tensor *a,
                       const fe_tensor *b);
    /* out has a's ndim with reduced dims of size 1; a contiguous */
    fe_status (*reduce)(fe_reduce_op op, fe_tensor *out, const fe_tensor *a);
    /* out (..., M, N) = alpha * a (..., M, K) @ b (..., K, N) + c. c is NULL (nothing is
     * added and out is only written), out itself (accumulate in place: BLAS's beta = 1)
     * or another contiguous tensor of out's shape and dtype that does not overlap it. The
     * sum is formed at the product's precision -- f32 for f32/f16/bf16 operands, f64 for
     * f64 -- and rounded to out's dtype once. a and b are views already broadcast to
     * out's batch dims whose last two dims have one unit stride; they share a dtype,
     * which out has too, or out is f32 under f16/bf16 operands (an f32 accumulator of
     * 16-bit products) */
    fe_status (*matmul)(fe_tensor *out, const fe_tensor *a, const fe_tensor *b, double alpha,
                        const fe_tensor *c);
    /* Optional (NULL when absent): out (R, N) = act(x (R, K) @ w (N, K)^T + bias (N)) as
     * one GEMM whose epilogue adds the bias and applies the activation: act FE_ACT_NONE,
     * or FE_ACT_GELU_TANH, when pre (R, N) receives the value before the activation (the
     * backward needs it). bias may be NULL (then act is GELU). Every tensor contiguous, of
     * one dtype among f32/f16/bf16, rows a multiple of 16 bytes, pointers 16-byte aligned
     * (the op layer checks). Returns FE_OK with *done false when the library has no
     * algorithm for it: the caller then composes the ops. */
    fe_status (*linear_act)(fe_tensor *out, fe_tensor *pre, const fe_tensor *x, const fe_tensor *w,
                            const fe_tensor *bias, int act, bool *done);

    /* row kernels over the last dim */
    fe_status (*softmax)(fe_tensor *y, const fe_tensor *x, bool log);
    fe_status (*softmax_backward)(fe_tensor *gx, const fe_tensor *gy, const fe_tensor *y, bool log);
    /* y = (x + r) / rms * w (r and w may be NULL); h = x + r is written when r != NULL;
     * rstd (rows, f32) receives 1/rms */
    fe_status (*rmsnorm)(fe_tensor *y, fe_tensor *h, fe_tensor *rstd, const fe_tensor *x,
                         const fe_tensor *r, const fe_tensor *w, double eps);
    /* gx = d/dx (+ gextra when not NULL); gw (may be NULL) is overwritten with the
     * weight gradient summed over rows */
    fe_status (*rmsnorm_backward)(fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                                  const fe_tensor *x, const fe_tensor *w, const fe_tensor *rstd,
                                  const fe_tensor *gextra);
    fe_status (*layernorm)(fe_tensor *y, fe_tensor *mean, fe_tensor *rstd, const fe_tensor *x,
                           const fe_tensor *w, const fe_tensor *b, double eps);
    fe_status (*layernorm_backward)(fe_tensor *gx, fe_tensor *gw, fe_tensor *gb,
                                    const fe_tensor *gy, const fe_tensor *x, const fe_tensor *w,
                                    const fe_tensor *mean, const fe_tensor *rstd);
    /* rotate-half RoPE; x contiguous with positions along seq_dim; sign -1 inverts */
    fe_status (*rope)(fe_tensor *out, const fe_tensor *x, const fe_tensor *inv_freq, int seq_dim,
                      int64_t pos0, int sign);
    /* out (..., C) = w (V, C)[idx (...)]; idx i32 or i64; error on an index out of range */
    fe_status (*embedding)(fe_tensor *out, const fe_tensor *w, const fe_tensor *idx);
    /* gw (V, C) = scatter-add of gout rows at idx (gw overwritten) */
    fe_status (*embedding_backward)(fe_tensor *gw, const fe_tensor *gout, const fe_tensor *idx);
    /* loss (1) = mean over rows whose target != ignore of -log softmax(logits)[target] */
    fe_status (*cross_entropy)(fe_tensor *loss, const fe_tensor *logits, const fe_tensor *targets,
                               int64_t ignore);
    /* glogits = gloss[0] * (softmax - onehot) / count, zero on ignored rows */
    fe_status (*cross_entropy_backward)(fe_tensor *glogits, const fe_tensor *gloss,
                                        const fe_tensor *logits, const fe_tensor *targets,
                                        int64_t ignore);
    fe_status (*silu_gate)(fe_tensor *out, const fe_tensor *a, const fe_tensor *b);
    fe_status (*silu_gate_backward)(fe_tensor *ga, fe_tensor *gb, const fe_tensor *g,
                                    const fe_tensor *a, const fe_tensor *b);

    /* Optional (NULL when the backend has none): fused attention for bf16/f16, head
     * dims 64 and 128. q (B, Hq, T, D), k and v (B, Hkv, S, D), Hq a multiple of Hkv;
     * causal masks key j > i + (S - T). out (B, Hq, T, D); lse (B, Hq, T) f32,
     * contiguous, receives each row's log-sum-exp of the scaled scores. q, k, v and
     * out (and below gout, gq, gk, gv) may be any strided views whose last dim has
     * unit stride and whose other strides (of dims of size > 1, non-negative) and data
     * pointer are multiples of 16 bytes, such as the (B, T, H, D) memory of a
     * projection seen as (B, H, T, D); written ones must not overlap themselves. The
     * op layer makes other layouts contiguous first. */
    fe_status (*attention)(fe_tensor *out, fe_tensor *lse, const fe_tensor *q, const fe_tensor *k,
                           const fe_tensor *v, bool causal, double scale);
    /* gradients of the above; gq, gk, gv shaped like q, k, v (overwritten), layouts
     * as above */
    fe_status (*attention_backward)(fe_tensor *gq, fe_tensor *gk, fe_tensor *gv,
                                    const fe_tensor *gout, const fe_tensor *q, const fe_tensor *k,
                                    const fe_tensor *v, const fe_tensor *out, const fe_tensor *lse,
                                    bool causal, double scale);

    /* Optional multi-tensor optimizer kernels (NULL when absent; callers fall back to
     * composed ops). Tensors are contiguous and all on one device. */
    /* AdamW over n tensors in one pass each (see fe_adamw_args). For tensor i: p[i] is
     * f32/f64/f16/bf16, m[i] and v[i] are f32 (f64 for f64 params), g[i] any float dtype,
     * all with p[i]'s element count; updated in place. */
    fe_status (*adamw)(int n, fe_tensor *const *p, const fe_tensor *const *g, fe_tensor *const *m,
                       fe_tensor *const *v, const fe_adamw_args *args);
    /* out (1 element, f32 or f64) = sum over the n tensors g[i] (any float dtype) of
     * their squared elements, accumulated in f64 in a fixed order (deterministic). Each
     * element is first multiplied by `scale` and rounded to f32 (kept in f64 for f64
     * tensors): the gradients an in-place unscale of f32 copies would hold. scale 1
     * leaves the elements as they are. */
    fe_status (*grad_norm_sq)(fe_tensor *out, int n, const fe_tensor *const *g, double scale);
    /* t[i] *= s[0] for the n tensors (any float dtype); s is a 1-element float tensor
     * on the same device, read on the device. */
    fe_status (*scale_multi)(int n, fe_tensor *const *t, const fe_tensor *s);
} fe_backend;

/* True when a 4-d operand has the layout the optional fused attention entries take:
 * unit-stride last dim (or size 1), every other dim of size != 1 with a non-negative
 * stride that is a multiple of 16 bytes, and a 16-byte aligned data pointer. The op
 * layer passes such views as they are; the CUDA glue refuses anything else. */
static inline bool fe__attention_layout_ok(const fe_tensor *t) {
    const int64_t es = (int64_t)fe_dtype_size(t->dtype);
    if ((t->stride[3] != 1 && t->shape[3] != 1) || (uintptr_t)fe__ptr(t) % 16) return false;
    for (int d = 0; d < 3; d++)
        if (t->shape[d] != 1 && (t->stride[d] < 0 || t->stride[d] * es % 16)) return false;
    return true;
}

/* The backend serving `type`, or NULL when not compiled in. */
const fe_backend *fe_backend_get(fe_device_type type);
extern const fe_backend fe_cpu_backend;
#ifdef FE_HAVE_CUDA
const fe_backend *fe_cuda_backend_get(void);
#endif

/* The backend of a tensor's device. */
static inline const fe_backend *fe__be(const fe_tensor *t) { return fe_backend_get(t->st->dev.type); }

#endif
