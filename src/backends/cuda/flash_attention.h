/* Fused flash attention on the tensor cores (FlashAttention-2 style) for the CUDA
 * backend: bf16 and f16, head dims 64 and 128, grouped KV heads, optional causal mask.
 *
 * Two layers. The raw launchers (fe_flash_attention_*) take device pointers and
 * sizes plus the cudaStream_t (as void *) to queue on; they depend on nothing but
 * the CUDA runtime and fe_set_error, so tests/flash/flash_check.cu links them
 * alone. The fe_tensor entry points (fe_cuda_attention, fe_cuda_attention_backward,
 * in flash_attention_glue.c) have exactly the signatures of the backend table's
 * `attention` and `attention_backward` and queue on the stream and allocate scratch
 * through the hooks set with fe_cuda_attention_set_hooks.
 *
 * Semantics: q (B, Hq, T, D), k and v (B, Hkv, S, D), out (B, Hq, T, D), Hq a
 * multiple of Hkv (query head h reads kv head h / (Hq / Hkv));
 * causal masks key j > i + (S - T); lse (B, Hq, T) f32 = log-sum-exp of the scaled
 * scores of each query row. A row whose keys are all masked (causal with S < T)
 * gets out = 0, lse = -inf and contributes no gradient. */
#ifndef FE_CUDA_FLASH_ATTENTION_H
#define FE_CUDA_FLASH_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Layout of one (B, H, rows, D) operand: element strides of batch, head and row (a
 * sequence position); D is contiguous. Strides of dims of size > 1 are non-negative
 * multiples of 8 elements (16 bytes) and data pointers 16-byte aligned, so that every
 * row starts 16-byte aligned. Contiguous (B, H, N, D) is {H * N * D, N * D, D}; the
 * (B, N, H, D) memory of a projection viewed as (B, H, N, D) is {N * H * D, D, H * D}. */
typedef struct fe_flash_strides {
    int64_t b, h, r;
} fe_flash_strides;

/* Arguments of the raw launchers: device pointers, sizes and strides. lse and the
 * backward scratch are contiguous; out, gq, gk, gv must not overlap themselves. */
typedef struct fe_flash_args {
    fe_dtype dtype;                  /* FE_BF16 or FE_F16, of q, k, v, out, gout, gq, gk, gv */
    int device;                      /* CUDA device index the pointers live on */
    int64_t B, Hq, Hkv, T, S, D;     /* D is 64 or 128 */
    bool causal;                     /* mask key j > i + (S - T) */
    double scale;                    /* multiplies q.k (> 0) */
    const void *q, *k, *v;           /* (B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D) */
    void *out;                       /* (B, Hq, T, D): written by forward, read by backward */
    float *lse;                      /* (B, Hq, T): written by forward, read by backward */
    const void *gout;                /* backward: gradient of out, (B, Hq, T, D) */
    void *gq, *gk, *gv;              /* backward: gradients, shaped like q, k, v (overwritten) */
    fe_flash_strides sq, sk, sv, sout; /* layouts of q, k, v, out */
    fe_flash_strides sgout, sgq, sgk, sgv; /* backward: layouts of gout, gq, gk, gv */
} fe_flash_args;

/* Set every stride of `a` to the contiguous layout of its sizes (B, Hq, Hkv, T, S, D). */
void fe_flash_args_contiguous(fe_flash_args *a);

/* Queue the forward pass (out, lse) on `stream` (a cudaStream_t; NULL = default stream).
 * FE_ERR_ARG / FE_ERR_SHAPE / FE_ERR_DTYPE on bad arguments (misaligned pointers or
 * strides, an out that overlaps itself), FE_ERR_DEVICE on a launch failure. Never
 * synchronises. */
fe_status fe_flash_attention_forward(const fe_flash_args *a, void *stream);

/* Bytes of device scratch fe_flash_attention_backward needs for these sizes
 * (an f32 dQ accumulator (B, Hq, T, D), with grouped KV heads (Hq > Hkv) f32 dK and dV
 * accumulators (B, Hkv, S, D), and rowsum(dO * O) (B, Hq, T)). */
size_t fe_flash_attention_workspace_size(const fe_flash_args *a);

/* Queue the backward pass (gq, gk, gv from gout, q, k, v, out, lse) on `stream`.
 * gq (and gk, gv when Hq > Hkv) are sums of float atomic adds, so they can differ in
 * the last bits from run to run.
 * `workspace` holds fe_flash_attention_workspace_size(a) bytes of 16-byte aligned
 * device memory, or
 * is NULL to take it with cudaMallocAsync / cudaFreeAsync on the stream. Errors as
 * for the forward pass, FE_ERR_OOM when scratch cannot be had. */
fe_status fe_flash_attention_backward(const fe_flash_args *a, void *workspace, void *stream);

/* Experimental kernels on Hopper's warpgroup MMA (src/backends/cuda/wgmma/), head dim 128,
 * compiled for sm_90a where FE_CUDA_ARCH includes 90 (FE_HAVE_WGMMA). The launchers above use
 * them when FE_FLASH_WGMMA=1 is set, D is 128 and the device has compute capability 9.0; they
 * are off by default until they have been measured. These take the same arguments (already
 * checked by the caller). variant: 0 the pipelined forward, 1 the plain one. The backward needs fe_flash_wgmma_scratch_size(a) bytes of 16-byte aligned
 * device scratch. */
fe_status fe_flash_wgmma_forward(const fe_flash_args *a, int variant, void *stream);
size_t fe_flash_wgmma_scratch_size(const fe_flash_args *a);
fe_status fe_flash_wgmma_backward(const fe_flash_args *a, void *scratch, void *stream);

/* How the fe_tensor entry points reach the rest of the CUDA backend. stream(i)
 * returns the cudaStream_t of device i with that device made current (NULL only on
 * error, with the error set); alloc / free give scratch device memory that is safe
 * to use in stream order on that stream. Any member may be NULL: then the default
 * stream of the current device, and cudaMallocAsync / cudaFreeAsync, are used. */
typedef struct fe_flash_hooks {
    void *(*stream)(int device_index);
    fe_status (*alloc)(fe_device dev, size_t nbytes, void **out);
    void (*free)(fe_device dev, void *p, size_t nbytes);
} fe_flash_hooks;

/* Set the hooks (copied; NULL clears them). Call once when the CUDA backend starts. */
void fe_cuda_attention_set_hooks(const fe_flash_hooks *hooks);

/* Backend-table `attention`: out (B, Hq, T, D), lse (B, Hq, T) f32 from q, k, v on a
 * CUDA device. q, k, v, out may be strided views with a unit-stride last dim and
 * 16-byte aligned rows (other strides multiples of 16 bytes; out must not overlap
 * itself); lse is contiguous. Shape / dtype / layout errors as values (FE_ERR_ARG for
 * a layout it cannot take), FE_ERR_DEVICE on launch failure. */
fe_status fe_cuda_attention(fe_tensor *out, fe_tensor *lse, const fe_tensor *q, const fe_tensor *k,
                            const fe_tensor *v, bool causal, double scale);

/* Backend-table `attention_backward`: gq, gk, gv (overwritten) from gout, the forward
 * inputs, out and lse; every 4-d operand strided as for fe_cuda_attention; errors as
 * fe_cuda_attention, FE_ERR_OOM for scratch. */
fe_status fe_cuda_attention_backward(fe_tensor *gq, fe_tensor *gk, fe_tensor *gv,
                                     const fe_tensor *gout, const fe_tensor *q,
                                     const fe_tensor *k, const fe_tensor *v,
                                     const fe_tensor *out, const fe_tensor *lse, bool causal,
                                     double scale);

#ifdef __cplusplus
}
#endif
#endif
