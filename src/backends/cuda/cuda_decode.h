/* Batch-1 Llama decoding on CUDA as one CUDA graph per model: a token step is a fixed
 * sequence of fused kernels (per layer: RMSNorm + QKV projection + RoPE + KV-cache
 * append; attention over the cache in place; output projection + residual add;
 * RMSNorm + gate/up projection + SiLU gate; down projection + residual add), captured
 * once and replayed for every token. The token and its position are read on the
 * device from a small buffer copied before a replay, so one host synchronisation per
 * token (to read the logits, or only their argmax, back) is all there is, and none in a
 * greedy run (fe_cuda_decode_greedy: the argmax is fed back on the device). Kernels
 * are chained with programmatic dependent launches: each one starts launching while
 * its predecessor finishes and requests its first weight rows before waiting.
 * FE_DECODE_PERSIST=1 captures one persistent cooperative kernel per token instead
 * (slower today; see docs/ARCHITECTURE.md).
 *
 * The weights and the cache are the caller's (raw device pointers, row-major,
 * contiguous, one dtype: f32, f16 or bf16); the engine owns only its activations
 * (f32) and the graph. */
#ifndef FE_CUDA_DECODE_H
#define FE_CUDA_DECODE_H

#include <stdint.h>

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fe_cuda_decode_layer {
    const void *wq, *wk, *wv, *wo;   /* (Hq*D, C), (Hkv*D, C), (Hkv*D, C), (C, Hq*D) */
    const void *w_gate, *w_up, *w_down; /* (F, C), (F, C), (C, F) */
    const void *ln_attn, *ln_mlp;    /* (C) RMSNorm weights */
    void *k_cache, *v_cache;         /* (Hkv, capacity, D), written at the step's position */
} fe_cuda_decode_layer;

typedef struct fe_cuda_decode_desc {
    fe_dtype dtype; /* of every weight and of the caches */
    int device;
    int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, capacity;
    double eps;                 /* RMSNorm epsilon */
    const float *inv_freq;      /* (head_dim / 2) f32 RoPE frequencies, on the device */
    const void *embed;          /* (vocab, C) */
    const void *final_norm;     /* (C) */
    const void *lm_head;        /* (vocab, C); the embedding when tied */
    const fe_cuda_decode_layer *layers; /* n_layers */
} fe_cuda_decode_desc;

typedef struct fe_cuda_decode fe_cuda_decode;

/* FE_OK when the engine can run this shape (head_dim 64 or 128, dim and ffn_dim
 * multiples of 16 bytes of the dtype, f32/f16/bf16), else FE_ERR_DTYPE/FE_ERR_SHAPE
 * naming what it lacks; looks at the sizes only, never at the pointers or the device. */
fe_status fe_cuda_decode_supported(const fe_cuda_decode_desc *d);
/* Make the engine (activations, pinned buffers, the captured graph); NULL with the
 * error set on failure. The desc's pointers must stay valid while it lives. */
fe_cuda_decode *fe_cuda_decode_new(const fe_cuda_decode_desc *d);
/* Run one token at position pos (< capacity; the caches hold positions < pos):
 * writes its K/V at pos; *logits (when logits is not NULL) points to the f32 logits
 * (vocab) in host memory, valid until the next call; *top (when not NULL) receives the
 * first index of the largest logit, found on the device. Synchronises once. */
fe_status fe_cuda_decode_step(fe_cuda_decode *e, int32_t token, int64_t pos, const float **logits,
                              int32_t *top);
/* Greedy decoding of n steps from `token` at position pos (pos + n <= capacity): each step's
 * argmax becomes the next step's token on the device, and a few steps stay queued ahead, so
 * the device does not wait for the host between tokens. on_top(ctx, top) gets each step's
 * argmax in order; when it returns false no more steps are queued (the ones already queued
 * still run and write cache rows past the accepted ones). *done: the steps delivered. */
fe_status fe_cuda_decode_greedy(fe_cuda_decode *e, int32_t token, int64_t pos, int64_t n,
                                bool (*on_top)(void *ctx, int32_t top), void *ctx,
                                int64_t *done);
void fe_cuda_decode_free(fe_cuda_decode *e);

#ifdef __cplusplus
}
#endif
#endif
