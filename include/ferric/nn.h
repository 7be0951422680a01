/* ferric nn: a registry of named parameters and the Llama modules built on the ops.
 *
 * Modules are small structs that remember where their weights sit in a registry
 * (fe_params) and a forward function that composes ops. Parameter names follow
 * Hugging Face (`model.layers.0.self_attn.q_proj.weight`) so that weights can be
 * exchanged with transformers checkpoints by name. Forward functions return a
 * tensor in the caller's current scope (or owned by the caller when no scope is
 * open) and release their intermediates themselves. */
#ifndef FERRIC_NN_H
#define FERRIC_NN_H

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameter registry ---------------------------------------------------- */

typedef struct fe_params fe_params;

/* An empty registry; NULL on OOM. */
fe_params *fe_params_new(void);
/* Free the registry and every tensor it holds. NULL is fine. */
void fe_params_free(fe_params *p);
/* Add tensor t under `name` (taken out of any scope; the registry owns it from now on,
 * also on failure). no_decay excludes it from weight decay. Returns its index, or -1
 * (duplicate name, NULL argument, OOM). */
int fe_params_add(fe_params *p, const char *name, fe_tensor *t, bool no_decay);
/* Create and add a tensor drawn from N(0, std) (global generator) that requires grad. */
int fe_params_add_normal(fe_params *p, const char *name, int ndim, const int64_t *shape, double std,
                         fe_dtype dt, fe_device dev, bool no_decay);
/* Create and add a tensor filled with `value` that requires grad. */
int fe_params_add_full(fe_params *p, const char *name, int ndim, const int64_t *shape, double value,
                       fe_dtype dt, fe_device dev, bool no_decay);
/* Number of tensors in the registry. */
int fe_params_count(const fe_params *p);
/* Total number of elements over all tensors. */
int64_t fe_params_numel(const fe_params *p);
/* Index of the tensor named `name`, or -1 (no error is set). */
int fe_params_find(const fe_params *p, const char *name);
/* The tensor named `name`, or NULL with an FE_ERR_ARG naming it. */
fe_tensor *fe_params_get(const fe_params *p, const char *name);
/* The i-th tensor / its name / its no-decay flag (NULL / NULL / false when i is out of range). */
fe_tensor *fe_params_at(const fe_params *p, int i);
const char *fe_params_name(const fe_params *p, int i);
bool fe_params_no_decay(const fe_params *p, int i);
/* Put t in slot i instead of the tensor there (same shape; the old one is freed; the
 * registry owns t, also on failure). Modules look tensors up by slot, so they see t. */
fe_status fe_params_replace(fe_params *p, int i, fe_tensor *t);
/* Drop the .grad of every tensor. */
void fe_params_zero_grad(fe_params *p);
/* Switch requires-grad on or off for every float tensor. */
fe_status fe_params_set_requires_grad(fe_params *p, bool on);

/* ---- modules --------------------------------------------------------------------- */

/* Embedding table "<name>.weight" (V, C) ~ N(0, std). */
typedef struct fe_nn_embedding {
    fe_params *params;
    int weight;
} fe_nn_embedding;
fe_status fe_nn_embedding_init(fe_nn_embedding *m, fe_params *p, const char *name, int64_t vocab,
                               int64_t dim, double std, fe_dtype dt, fe_device dev);
/* idx (...) int -> (..., C); FE_ERR_RANGE on an index outside [0, V). */
fe_tensor *fe_nn_embedding_forward(const fe_nn_embedding *m, fe_tensor *idx);

/* Linear "<name>.weight" (out, in) ~ N(0, std), optional "<name>.bias" (out) = 0 (no decay). */
typedef struct fe_nn_linear {
    fe_params *params;
    int weight, bias; /* bias -1 when absent */
} fe_nn_linear;
fe_status fe_nn_linear_init(fe_nn_linear *m, fe_params *p, const char *name, int64_t in,
                            int64_t out, bool bias, double std, fe_dtype dt, fe_device dev);
/* x (..., in) -> (..., out). */
fe_tensor *fe_nn_linear_forward(const fe_nn_linear *m, fe_tensor *x);

/* RMSNorm "<name>.weight" (C) = 1 (no decay). */
typedef struct fe_nn_rmsnorm {
    fe_params *params;
    int weight;
    double eps;
} fe_nn_rmsnorm;
fe_status fe_nn_rmsnorm_init(fe_nn_rmsnorm *m, fe_params *p, const char *name, int64_t dim,
                             double eps, fe_dtype dt, fe_device dev);
/* x (..., C) -> (..., C). */
fe_tensor *fe_nn_rmsnorm_forward(const fe_nn_rmsnorm *m, fe_tensor *x);

/* RoPE frequency scaling as in Llama 3 (Hugging Face rope_type "llama3"). */
typedef struct fe_rope_scaling {
    bool llama3; /* false: plain RoPE, the fields below are unused */
    double factor, low_freq_factor, high_freq_factor;
    int64_t original_max_position_embeddings;
} fe_rope_scaling;
/* RoPE inverse frequencies (head_dim/2) f32 on dev, computed in f32 exactly as
 * transformers does (including _compute_llama3_parameters when scaling->llama3);
 * scaling may be NULL. FE_ERR_ARG on an odd head_dim, theta <= 0 or bad factors. */
fe_tensor *fe_nn_rope_inv_freq(int64_t head_dim, double theta, const fe_rope_scaling *scaling,
                               fe_device dev);

/* Attention kernel: q (B, Hq, T, D), k and v (B, Hkv, T, D) -> (B, Hq, T, D); fe_sdpa
 * has this signature. A fused (flash) kernel can be plugged in through this type. */
typedef fe_tensor *(*fe_attention_fn)(fe_tensor *q, fe_tensor *k, fe_tensor *v, bool causal,
                                      double scale);

/* Causal self-attention with grouped KV heads: "<name>.{q,k,v,o}_proj.weight". */
typedef struct fe_nn_attention {
    fe_nn_linear q_proj, k_proj, v_proj, o_proj;
    int64_t n_heads, n_kv_heads, head_dim;
    fe_attention_fn attn; /* NULL: fe_sdpa */
} fe_nn_attention;
fe_status fe_nn_attention_init(fe_nn_attention *m, fe_params *p, const char *name, int64_t dim,
                               int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, bool bias,
                               double std, fe_dtype dt, fe_device dev);
/* x (B, T, C) -> (B, T, C); RoPE with inv_freq (head_dim/2) at positions pos0.. */
fe_tensor *fe_nn_attention_forward(const fe_nn_attention *m, fe_tensor *x, fe_tensor *inv_freq,
                                   int64_t pos0);
/* Like fe_nn_attention_forward for inference with a KV cache: k_cache and v_cache are
 * (B, Hkv, L, D) in the weights' dtype; the new keys/values of x (B, T, C) are written at
 * positions pos0..pos0+T-1 (pos0 + T <= L) and the queries attend to positions 0..pos0+T-1
 * causally. FE_ERR_SHAPE on mismatched caches or overflow. Not differentiable. */
fe_tensor *fe_nn_attention_forward_cached(const fe_nn_attention *m, fe_tensor *x,
                                          fe_tensor *inv_freq, fe_tensor *k_cache,
                                          fe_tensor *v_cache, int64_t pos0);

/* SwiGLU MLP: down(silu(gate(x)) * up(x)), "<name>.{gate,up,down}_proj.weight". */
typedef struct fe_nn_mlp {
    fe_nn_linear gate_proj, up_proj, down_proj;
} fe_nn_mlp;
fe_status fe_nn_mlp_init(fe_nn_mlp *m, fe_params *p, const char *name, int64_t dim, int64_t hidden,
                         double std, fe_dtype dt, fe_device dev);
/* x (..., C) -> (..., C). */
fe_tensor *fe_nn_mlp_forward(const fe_nn_mlp *m, fe_tensor *x);
/* r + mlp(x) for r (..., C), with r added by the down projection's matrix product itself
 * rather than by a separate add: a block's second residual connection. */
fe_tensor *fe_nn_mlp_forward_residual(const fe_nn_mlp *m, fe_tensor *x, fe_tensor *r);

/* One pre-norm Llama decoder layer "<name>.{input_layernorm,self_attn,
 * post_attention_layernorm,mlp}". */
typedef struct fe_nn_llama_block {
    fe_nn_rmsnorm input_layernorm, post_attention_layernorm;
    fe_nn_attention self_attn;
    fe_nn_mlp mlp;
} fe_nn_llama_block;
/* h (B, T, C) -> h + attn(norm(h)) then + mlp(norm(.)), (B, T, C). */
fe_tensor *fe_nn_llama_block_forward(const fe_nn_llama_block *m, fe_tensor *h, fe_tensor *inv_freq,
                                     int64_t pos0);
/* The same with the attention reading and appending to a KV cache (see
 * fe_nn_attention_forward_cached). */
fe_tensor *fe_nn_llama_block_forward_cached(const fe_nn_llama_block *m, fe_tensor *h,
                                            fe_tensor *inv_freq, fe_tensor *k_cache,
                                            fe_tensor *v_cache, int64_t pos0);

/* ---- the Llama model --------------------------------------------------------------- */

typedef struct fe_llama_config {
    int64_t vocab_size, dim, n_layers, n_heads, n_kv_heads;
    int64_t head_dim;  /* 0: dim / n_heads */
    int64_t ffn_dim;   /* MLP hidden size */
    int64_t max_seq;   /* longest sequence forward accepts */
    double norm_eps;   /* RMSNorm epsilon (1e-5 or 1e-6) */
    double rope_theta; /* 10000 or 500000 */
    fe_rope_scaling rope_scaling;
    bool tie_embeddings; /* lm_head shares model.embed_tokens.weight */
    double init_std;     /* 0: 0.02 */
} fe_llama_config;

typedef struct fe_llama fe_llama;

/* Check a config (positive sizes, heads divide, even head_dim); FE_ERR_ARG names the field. */
fe_status fe_llama_config_check(const fe_llama_config *cfg);
/* A model with parameters of dtype dt on dev, drawn N(0, init_std) from the global
 * generator (seed it with fe_manual_seed first), norms at 1. NULL on error. */
fe_llama *fe_llama_new(const fe_llama_config *cfg, fe_dtype dt, fe_device dev);
void fe_llama_free(fe_llama *m);
/* The model's configuration (head_dim and init_std filled in) and its parameters. */
const fe_llama_config *fe_llama_config_of(const fe_llama *m);
fe_params *fe_llama_params(fe_llama *m);
/* The RoPE frequencies the model uses (head_dim/2, f32, owned by the model). */
fe_tensor *fe_llama_inv_freq(const fe_llama *m);
/* Recompute each block in backward instead of keeping its activations (fe_checkpoint). */
void fe_llama_set_checkpointing(fe_llama *m, bool on);
/* Use fn for every attention (NULL: fe_sdpa). */
void fe_llama_set_attention(fe_llama *m, fe_attention_fn fn);
/* idx (B, T) i32/i64, T <= max_seq -> logits (B, T, V) in the parameter dtype. */
fe_tensor *fe_llama_forward(fe_llama *m, fe_tensor *idx);
/* The same without the LM head: the final-norm output (B, T, C). */
fe_tensor *fe_llama_forward_hidden(fe_llama *m, fe_tensor *idx);
/* Mean cross-entropy of logits (B, T, V) against targets (B, T) (ignore -100), a scalar
 * in the logits' dtype. */
fe_tensor *fe_llama_loss(fe_tensor *logits, fe_tensor *targets);

/* Sampling for fe_llama_generate. temperature <= 0 means greedy (argmax); top_k <= 0
 * keeps every token; seed drives its own Philox stream (the global one is untouched). */
typedef struct fe_sample_config {
    double temperature;
    int top_k;
    uint64_t seed;
    double top_p; /* nucleus sampling: keep the smallest set of tokens whose probability
                     reaches top_p; <= 0 or >= 1 keeps every token */
} fe_sample_config;
/* Continue `prompt` (n_prompt >= 1 tokens) by n_new tokens. out receives n_prompt + n_new
 * tokens. Uses a KV cache when n_prompt + n_new <= max_seq, otherwise recomputes the last
 * max_seq tokens each step. cfg NULL means greedy. FE_ERR_RANGE on a token outside the
 * vocabulary. */
fe_status fe_llama_generate(fe_llama *m, const int32_t *prompt, int64_t n_prompt, int64_t n_new,
                            const fe_sample_config *cfg, int32_t *out);

/* ---- KV cache and cached generation ------------------------------------------------ */

/* Per-layer key/value buffers (1, n_kv_heads, max_len, head_dim) for batch-1 inference,
 * preallocated on the model's device in its parameter dtype, and the number of
 * positions filled so far. */
typedef struct fe_kv_cache fe_kv_cache;
/* A cache for m of max_len positions (1 <= max_len <= max_seq); NULL on error/OOM. */
fe_kv_cache *fe_kv_cache_new(fe_llama *m, int64_t max_len);
void fe_kv_cache_free(fe_kv_cache *c);
/* Positions filled so far / capacity. */
int64_t fe_kv_cache_len(const fe_kv_cache *c);
int64_t fe_kv_cache_capacity(const fe_kv_cache *c);
/* Forget positions from len on (0 empties it); FE_ERR_RANGE when len exceeds the fill. */
fe_status fe_kv_cache_truncate(fe_kv_cache *c, int64_t len);
/* Layer l's key / value buffer (1, Hkv, max_len, D), owned by the cache; NULL when out of range. */
fe_tensor *fe_kv_cache_k(const fe_kv_cache *c, int64_t l);
fe_tensor *fe_kv_cache_v(const fe_kv_cache *c, int64_t l);

/* Run tokens idx (1, T) at positions len..len+T-1 of the cache, append their keys and
 * values, and return logits (1, T, V) (or (1, 1, V) for the last position when
 * last_only) in the parameter dtype. No gradients are recorded. FE_ERR_RANGE when the
 * cache would overflow; the cache is unchanged on error. */
fe_tensor *fe_llama_forward_cached(fe_llama *m, fe_tensor *idx, fe_kv_cache *c, bool last_only);

/* A batch-1 decoder that runs one token per call as a single replayed CUDA graph of
 * fused kernels (see docs/ARCHITECTURE.md), reading and appending the cache in place.
 * Available for a CUDA model in f32/f16/bf16 with head_dim 64 or 128 and row sizes
 * that are multiples of 16 bytes; elsewhere NULL with FE_ERR_DEVICE / FE_ERR_DTYPE /
 * FE_ERR_SHAPE saying why (use fe_llama_forward_cached then). The cache must belong to
 * m and outlive the decoder. Activations are kept in f32, so its logits differ from
 * fe_llama_forward_cached's (which rounds every op to the parameter dtype) by about
 * that dtype's rounding. */
typedef struct fe_llama_decoder fe_llama_decoder;
fe_llama_decoder *fe_llama_decoder_new(fe_llama *m, fe_kv_cache *c);
/* Run `token` at the cache's next position, append its keys/values, write the logits
 * (V doubles) to `logits` and/or the first index of the largest logit (found on the
 * device: nothing else is read back) to `top`; either may be NULL, not both.
 * FE_ERR_RANGE for a token outside the vocabulary or a full cache (nothing changes). */
fe_status fe_llama_decoder_step(fe_llama_decoder *d, int32_t token, double *logits,
                                int32_t *top);
void fe_llama_decoder_free(fe_llama_decoder *d);

/* Pick a token from one row of logits (V doubles): greedy when cfg is NULL or its
 * temperature <= 0, else temperature / top-k / top-p sampling driven by Philox(seed, step).
 * scratch needs room for 2*V doubles. */
int32_t fe_sample_logits(const double *logits, int64_t V, const fe_sample_config *cfg,
                         uint64_t step, double *scratch);

/* Called with each new token; return false to stop generating (after this token). */
typedef bool (*fe_token_fn)(void *ctx, int32_t token);
/* Greedy decoding of up to n tokens on the decoder: `token` at the cache's next position,
 * then each step's argmax as the next step's token, fed back on the device with a few steps
 * queued ahead, so the GPU does not wait for the host between tokens. on_token(ctx, t) gets
 * each generated token in order; returning false stops (the steps already queued still run
 * on the device, but the cache keeps only the accepted ones). *n_done: tokens delivered.
 * FE_ERR_RANGE for a token outside the vocabulary or n steps that would overflow the cache
 * (nothing runs). */
fe_status fe_llama_decoder_greedy(fe_llama_decoder *d, int32_t token, int64_t n,
                                  fe_token_fn on_token, void *ctx, int64_t *n_done);
/* Timings of one fe_llama_generate_cached call (device-synchronised). */
typedef struct fe_generate_stats {
    int64_t n_prompt, n_generated;
    double prefill_s, decode_s; /* prefill: prompt + first token; decode: the rest */
    bool graph_decode;          /* the steps ran on fe_llama_decoder */
} fe_generate_stats;
/* Continue `prompt` by up to n_new tokens with a KV cache (n_prompt + n_new <= max_seq):
 * one prefill over the prompt, then one step per token, reading back only the last logits
 * row. out (room for n_prompt + n_new) receives the prompt and the tokens made; on_token
 * (may be NULL) sees each new token and can stop early; stats may be NULL. FE_ERR_RANGE on
 * tokens outside the vocabulary or a too long request. */
fe_status fe_llama_generate_cached(fe_llama *m, const int32_t *prompt, int64_t n_prompt,
                                   int64_t n_new, const fe_sample_config *cfg, int32_t *out,
                                   fe_token_fn on_token, void *ctx, fe_generate_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
