/* fe_llama_decoder: the graph-replayed batch-1 decode path of a Llama model on CUDA
 * (src/backends/cuda/cuda_decode.cu), fed with the model's parameters by name and the
 * cache's buffers. */
#include "core/internal.h"
#include "ferric/nn.h"
#include "nn/kv_cache_internal.h"

#include <inttypes.h>
#include <stdio.h>

#ifdef FE_HAVE_CUDA
#include "backends/cuda/cuda_decode.h"
#endif

struct fe_llama_decoder {
    fe_kv_cache *cache;
    int64_t vocab;
#ifdef FE_HAVE_CUDA
    fe_cuda_decode *engine;
#endif
};

#ifdef FE_HAVE_CUDA
/* The device pointer of a parameter (or cache buffer) after checking it is contiguous,
 * on dev, of dtype dt and holding n elements; NULL with the error set otherwise. */
static void *weight_ptr(fe_tensor *t, const char *name, fe_dtype dt, fe_device dev, int64_t n) {
    if (!t) {
        fe_set_error(FE_ERR_ARG, "decoder: the model has no tensor '%s'", name);
        return NULL;
    }
    fe_device td = fe_device_of(t);
    if (!fe_is_contiguous(t) || fe_dtype_of(t) != dt || td.type != dev.type ||
        td.index != dev.index || fe_numel(t) != n) {
        fe_set_error(FE_ERR_SHAPE,
                     "decoder: '%s' must be contiguous, %s, on the model's device, with %" PRId64
                     " elements",
                     name, fe_dtype_name(dt), n);
        return NULL;
    }
    return fe__ptr(t);
}

static const void *param(fe_llama *m, const char *fmt, int64_t l, fe_dtype dt, fe_device dev,
                         int64_t n) {
    char name[160];
    snprintf(name, sizeof name, fmt, l);
    return weight_ptr(fe_params_get(fe_llama_params(m), name), name, dt, dev, n);
}
#endif

fe_llama_decoder *fe_llama_decoder_new(fe_llama *m, fe_kv_cache *c) {
    const fe_llama_config *cfg = fe_llama_config_of(m);
    if (!cfg || !c) {
        fe_set_error(FE_ERR_ARG, "decoder: NULL model or cache");
        return NULL;
    }
    if (fe__kv_cache_check(c, m, "decoder")) return NULL;
    fe_tensor *inv = fe_llama_inv_freq(m);
    fe_device dev = fe_device_of(inv);
#ifndef FE_HAVE_CUDA
    (void)dev;
    fe_set_error(FE_ERR_DEVICE, "decoder: this build has no CUDA backend");
    return NULL;
#else
    if (dev.type != FE_CUDA) {
        fe_set_error(FE_ERR_DEVICE, "decoder: the model is not on a CUDA device");
        return NULL;
    }
    fe_tensor *emb = fe_params_get(fe_llama_params(m), "model.embed_tokens.weight");
    if (!emb) {
        fe_set_error(FE_ERR_ARG, "decoder: the model has no model.embed_tokens.weight");
        return NULL;
    }
    fe_dtype dt = fe_dtype_of(emb);
    int64_t C = cfg->dim, D = cfg->head_dim, Hq = cfg->n_heads, Hkv = cfg->n_kv_heads,
            F = cfg->ffn_dim, V = cfg->vocab_size, L = cfg->n_layers,
            cap = fe_kv_cache_capacity(c);
    fe_cuda_decode_layer *layers = calloc((size_t)L, sizeof *layers);
    if (!layers) {
        fe_set_error(FE_ERR_OOM, "decoder: out of host memory");
        return NULL;
    }
    fe_cuda_decode_desc d = {
        .dtype = dt, .device = dev.index, .dim = C, .n_layers = L, .n_heads = Hq,
        .n_kv_heads = Hkv, .head_dim = D, .ffn_dim = F, .vocab = V, .capacity = cap,
        .eps = cfg->norm_eps, .layers = layers};
    bool ok = fe_dtype_of(inv) == FE_F32 && fe_is_contiguous(inv);
    if (!ok) fe_set_error(FE_ERR_DTYPE, "decoder: RoPE frequencies must be contiguous f32");
    d.inv_freq = ok ? fe__ptr(inv) : NULL;
    ok = ok && !fe_cuda_decode_supported(&d); /* sizes first: the clearest reason */
    ok = ok && (d.embed = weight_ptr(emb, "model.embed_tokens.weight", dt, dev, V * C));
    ok = ok && (d.final_norm = param(m, "model.norm.weight", 0, dt, dev, C));
    ok = ok && (d.lm_head = cfg->tie_embeddings ? d.embed
                                                : param(m, "lm_head.weight", 0, dt, dev, V * C));
    for (int64_t l = 0; l < L && ok; l++) {
        fe_cuda_decode_layer *y = &layers[l];
        const char *pre = "model.layers.%" PRId64;
        char f[128];
#define W(field, suffix, n)                                                                        \
    snprintf(f, sizeof f, "%s.%s", pre, suffix);                                                   \
    ok = ok && (y->field = param(m, f, l, dt, dev, n));
        W(wq, "self_attn.q_proj.weight", Hq * D * C)
        W(wk, "self_attn.k_proj.weight", Hkv * D * C)
        W(wv, "self_attn.v_proj.weight", Hkv * D * C)
        W(wo, "self_attn.o_proj.weight", C * Hq * D)
        W(w_gate, "mlp.gate_proj.weight", F * C)
        W(w_up, "mlp.up_proj.weight", F * C)
        W(w_down, "mlp.down_proj.weight", C * F)
        W(ln_attn, "input_layernorm.weight", C)
        W(ln_mlp, "post_attention_layernorm.weight", C)
#undef W
        ok = ok && (y->k_cache = weight_ptr(fe_kv_cache_k(c, l), "kv cache (keys)", dt, dev,
                                            Hkv * cap * D));
        ok = ok && (y->v_cache = weight_ptr(fe_kv_cache_v(c, l), "kv cache (values)", dt, dev,
                                            Hkv * cap * D));
    }
    fe_llama_decoder *dec = ok ? calloc(1, sizeof *dec) : NULL;
    if (ok && !dec) fe_set_error(FE_ERR_OOM, "decoder: out of host memory");
    if (dec) {
        dec->cache = c;
        dec->vocab = V;
        dec->engine = fe_cuda_decode_new(&d);
        if (!dec->engine) {
            free(dec);
            dec = NULL;
        }
    }
    free(layers);
    return dec;
#endif
}

/* FE_ERR_RANGE naming `what` when token is outside the model's vocabulary. */
static fe_status check_token(const fe_llama_decoder *d, int32_t token, const char *what) {
    if (token >= 0 && token < d->vocab) return FE_OK;
    return fe_set_error(FE_ERR_RANGE, "%s: token %" PRId32 " is outside the vocabulary of %" PRId64,
                        what, token, d->vocab);
}

fe_status fe_llama_decoder_step(fe_llama_decoder *d, int32_t token, double *logits,
                                int32_t *top) {
    if (!d || (!logits && !top))
        return fe_set_error(FE_ERR_ARG, "decoder step: NULL decoder or no output asked for");
    int64_t pos = fe_kv_cache_len(d->cache);
    if (check_token(d, token, "decoder step")) return fe_last_status();
    if (pos >= fe_kv_cache_capacity(d->cache))
        return fe_set_error(FE_ERR_RANGE, "decoder step: the cache is full (%" PRId64 " positions)",
                            pos);
#ifdef FE_HAVE_CUDA
    const float *row = NULL;
    fe_status st = fe_cuda_decode_step(d->engine, token, pos, logits ? &row : NULL, top);
    if (st) return st;
    for (int64_t i = 0; logits && i < d->vocab; i++)
        logits[i] = row[i];
    return fe__kv_cache_set_len(d->cache, pos + 1);
#else
    return fe_set_error(FE_ERR_DEVICE, "decoder step: this build has no CUDA backend");
#endif
}

fe_status fe_llama_decoder_greedy(fe_llama_decoder *d, int32_t token, int64_t n,
                                  fe_token_fn on_token, void *ctx, int64_t *n_done) {
    if (n_done) *n_done = 0;
    if (!d || !on_token || n < 0)
        return fe_set_error(FE_ERR_ARG, "decoder greedy: NULL decoder or callback, or n < 0");
    int64_t pos = fe_kv_cache_len(d->cache);
    if (check_token(d, token, "decoder greedy")) return fe_last_status();
    if (pos + n > fe_kv_cache_capacity(d->cache))
        return fe_set_error(FE_ERR_RANGE,
                            "decoder greedy: %" PRId64 " steps from position %" PRId64
                            " overflow the cache (%" PRId64 " positions)",
                            n, pos, fe_kv_cache_capacity(d->cache));
#ifdef FE_HAVE_CUDA
    int64_t done = 0;
    fe_status st = fe_cuda_decode_greedy(d->engine, token, pos, n, on_token, ctx, &done);
    fe_status sl = fe__kv_cache_set_len(d->cache, pos + done);
    if (n_done) *n_done = done;
    return st ? st : sl;
#else
    return fe_set_error(FE_ERR_DEVICE, "decoder greedy: this build has no CUDA backend");
#endif
}

void fe_llama_decoder_free(fe_llama_decoder *d) {
    if (!d) return;
#ifdef FE_HAVE_CUDA
    fe_cuda_decode_free(d->engine);
#endif
    free(d);
}
