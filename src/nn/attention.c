/* Causal self-attention with grouped KV heads and rotary positions. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <inttypes.h>
#include <stdio.h>

fe_status fe_nn_attention_init(fe_nn_attention *m, fe_params *p, const char *name, int64_t dim,
                               int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, bool bias,
                               double std, fe_dtype dt, fe_device dev) {
    if (!m || !p || !name || dim <= 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 ||
        n_heads % n_kv_heads)
        return fe_set_error(FE_ERR_ARG,
                            "attention: needs positive sizes with n_heads (%" PRId64
                            ") a multiple of n_kv_heads (%" PRId64 ")",
                            n_heads, n_kv_heads);
    char q[256], k[256], v[256], o[256];
    if (snprintf(q, sizeof q, "%s.q_proj", name) >= (int)sizeof q ||
        snprintf(k, sizeof k, "%s.k_proj", name) >= (int)sizeof k ||
        snprintf(v, sizeof v, "%s.v_proj", name) >= (int)sizeof v ||
        snprintf(o, sizeof o, "%s.o_proj", name) >= (int)sizeof o)
        return fe_set_error(FE_ERR_ARG, "attention: name '%s' is too long", name);
    m->n_heads = n_heads;
    m->n_kv_heads = n_kv_heads;
    m->head_dim = head_dim;
    m->attn = NULL;
    fe_status st = fe_nn_linear_init(&m->q_proj, p, q, dim, n_heads * head_dim, bias, std, dt, dev);
    if (!st)
        st = fe_nn_linear_init(&m->k_proj, p, k, dim, n_kv_heads * head_dim, bias, std, dt, dev);
    if (!st)
        st = fe_nn_linear_init(&m->v_proj, p, v, dim, n_kv_heads * head_dim, bias, std, dt, dev);
    if (!st) st = fe_nn_linear_init(&m->o_proj, p, o, n_heads * head_dim, dim, bias, std, dt, dev);
    return st;
}

/* (B, T, H*D) projection -> (B, H, T, D) with RoPE applied when inv_freq is given: a
 * transposed view of (B, T, H, D) memory, which fe_sdpa's fused kernels read as it is */
static fe_tensor *heads(fe_tensor *x, int64_t B, int64_t T, int64_t H, int64_t D,
                        fe_tensor *inv_freq, int64_t pos0) {
    fe_tensor *r = fe_reshape(x, 4, (int64_t[]){B, T, H, D});
    /* the projection's output is not read again: rotate it in place */
    fe_tensor *roped = inv_freq ? fe__rope_over(r, inv_freq, 1, pos0) : r;
    fe_tensor *out = fe_transpose(roped, 1, 2);
    if (roped != r) fe_free(roped);
    fe_free(r);
    return out;
}

fe_tensor *fe_nn_attention_forward(const fe_nn_attention *m, fe_tensor *x, fe_tensor *inv_freq,
                                   int64_t pos0) {
    if (!m || !x) {
        if (!m) fe_set_error(FE_ERR_ARG, "attention: NULL module");
        return NULL;
    }
    if (fe_ndim(x) != 3) {
        char s[96];
        fe_set_error(FE_ERR_SHAPE, "attention: expected x (B, T, C), got %s",
                     fe_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t B = fe_dim(x, 0), T = fe_dim(x, 1), D = m->head_dim;
    fe_tensor *q = fe_nn_linear_forward(&m->q_proj, x); /* (B, T, Hq*D) */
    fe_tensor *k = fe_nn_linear_forward(&m->k_proj, x); /* (B, T, Hkv*D) */
    fe_tensor *v = fe_nn_linear_forward(&m->v_proj, x);
    fe_tensor *qh = heads(q, B, T, m->n_heads, D, inv_freq, pos0);    /* (B, Hq, T, D) */
    fe_tensor *kh = heads(k, B, T, m->n_kv_heads, D, inv_freq, pos0); /* (B, Hkv, T, D) */
    fe_tensor *vh = heads(v, B, T, m->n_kv_heads, D, NULL, 0);
    fe_free(q), fe_free(k), fe_free(v);
    fe_attention_fn attn = m->attn ? m->attn : fe_sdpa;
    fe_tensor *o = qh && kh && vh ? attn(qh, kh, vh, true, 0.0) : NULL; /* (B, Hq, T, D) */
    fe_free(qh), fe_free(kh), fe_free(vh);
    /* fe_sdpa's fused path lays o out as q is, (B, T, Hq, D) memory: the transpose
     * back is contiguous and the reshape a view (and in the backward the gradients of
     * q, k, v come out (B, T, H, D)-contiguous for RoPE and the projections) */
    fe_tensor *ot = fe_transpose(o, 1, 2); /* (B, T, Hq, D) */
    fe_tensor *flat = fe_reshape(ot, 3, (int64_t[]){B, T, m->n_heads * D});
    fe_free(o), fe_free(ot);
    fe_tensor *y = fe_nn_linear_forward(&m->o_proj, flat); /* (B, T, C) */
    fe_free(flat);
    return y;
}

/* Write src (B, Hkv, T, D) into cache (B, Hkv, L, D) at positions pos0.. */
static fe_status cache_write(fe_tensor *cache, fe_tensor *src, int64_t pos0, int64_t T) {
    fe_tensor *dst = fe_slice(cache, 2, pos0, pos0 + T, 1);
    fe_status st = dst ? fe_copy_(dst, src) : fe_last_status();
    fe_free(dst);
    return st;
}

fe_tensor *fe_nn_attention_forward_cached(const fe_nn_attention *m, fe_tensor *x,
                                          fe_tensor *inv_freq, fe_tensor *k_cache,
                                          fe_tensor *v_cache, int64_t pos0) {
    if (!m || !x || !k_cache || !v_cache) {
        fe_set_error(FE_ERR_ARG, "attention (cached): NULL module, input or cache");
        return NULL;
    }
    char s1[96], s2[96];
    if (fe_ndim(x) != 3 || fe_ndim(k_cache) != 4 || fe_ndim(v_cache) != 4) {
        fe_set_error(FE_ERR_SHAPE,
                     "attention (cached): expected x (B, T, C) and caches "
                     "(B, Hkv, L, D), got x %s, k cache %s",
                     fe_shape_str(x, s1, sizeof s1), fe_shape_str(k_cache, s2, sizeof s2));
        return NULL;
    }
    int64_t B = fe_dim(x, 0), T = fe_dim(x, 1), D = m->head_dim, L = fe_dim(k_cache, 2);
    for (int i = 0; i < 4; i++)
        if (fe_dim(k_cache, i) != fe_dim(v_cache, i)) L = -1;
    if (L < 0 || fe_dim(k_cache, 0) != B || fe_dim(k_cache, 1) != m->n_kv_heads ||
        fe_dim(k_cache, 3) != D || pos0 < 0 || pos0 + T > L) {
        fe_set_error(FE_ERR_SHAPE,
                     "attention (cached): %" PRId64 " tokens at position %" PRId64
                     " do not fit caches k %s, v %s (expected (%" PRId64 ", %" PRId64
                     ", L >= %" PRId64 ", %" PRId64 "))",
                     T, pos0, fe_shape_str(k_cache, s1, sizeof s1),
                     fe_shape_str(v_cache, s2, sizeof s2), B, m->n_kv_heads, pos0 + T, D);
        return NULL;
    }
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *q = fe_nn_linear_forward(&m->q_proj, x); /* (B, T, Hq*D) */
    fe_tensor *k = fe_nn_linear_forward(&m->k_proj, x); /* (B, T, Hkv*D) */
    fe_tensor *v = fe_nn_linear_forward(&m->v_proj, x);
    fe_tensor *qh = heads(q, B, T, m->n_heads, D, inv_freq, pos0);    /* (B, Hq, T, D) */
    fe_tensor *kh = heads(k, B, T, m->n_kv_heads, D, inv_freq, pos0); /* (B, Hkv, T, D) */
    fe_tensor *vh = heads(v, B, T, m->n_kv_heads, D, NULL, 0);
    fe_free(q), fe_free(k), fe_free(v);
    fe_tensor *o = NULL;
    if (qh && kh && vh && !cache_write(k_cache, kh, pos0, T) &&
        !cache_write(v_cache, vh, pos0, T)) {
        fe_tensor *ka = fe_slice(k_cache, 2, 0, pos0 + T, 1); /* (B, Hkv, S, D) */
        fe_tensor *va = fe_slice(v_cache, 2, 0, pos0 + T, 1);
        fe_attention_fn attn = m->attn ? m->attn : fe_sdpa;
        /* one query row sees every cached key: no mask needed */
        o = ka && va ? attn(qh, ka, va, T > 1, 0.0) : NULL; /* (B, Hq, T, D) */
        fe_free(ka), fe_free(va);
    }
    fe_free(qh), fe_free(kh), fe_free(vh);
    fe_tensor *ot = fe_transpose(o, 1, 2); /* (B, T, Hq, D) */
    fe_tensor *flat = fe_reshape(ot, 3, (int64_t[]){B, T, m->n_heads * D});
    fe_free(o), fe_free(ot);
    fe_tensor *y = fe_nn_linear_forward(&m->o_proj, flat); /* (B, T, C) */
    fe_free(flat);
    fe_set_grad_enabled(prev);
    return y;
}
