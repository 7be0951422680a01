/* One Llama decoder layer: pre-norm attention and pre-norm SwiGLU, each with a
 * residual connection; the first residual add is fused with the second norm. */
#include "core/internal.h"
#include "ferric/nn.h"

/* The layer with attention through the KV cache when k_cache is given. */
static fe_tensor *block(const fe_nn_llama_block *m, fe_tensor *h, fe_tensor *inv_freq,
                        fe_tensor *k_cache, fe_tensor *v_cache, int64_t pos0) {
    if (!m || !h) {
        if (!m) fe_set_error(FE_ERR_ARG, "llama block: NULL module");
        return NULL;
    }
    fe_tensor *x = fe_nn_rmsnorm_forward(&m->input_layernorm, h); /* (B, T, C) */
    fe_tensor *a =
        k_cache ? fe_nn_attention_forward_cached(&m->self_attn, x, inv_freq, k_cache, v_cache, pos0)
                : fe_nn_attention_forward(&m->self_attn, x, inv_freq, pos0);
    fe_free(x);
    fe_tensor *h2 = NULL, *y = NULL; /* h2 = h + a, y = rmsnorm(h2) * w */
    const fe_nn_rmsnorm *pn = &m->post_attention_layernorm;
    /* h2 is written over a's memory: a is not read again */
    if (a && fe__rmsnorm_residual_over(h, a, fe_params_at(pn->params, pn->weight), pn->eps, &h2,
                                       &y)) {
        fe_free(a);
        return NULL;
    }
    fe_free(a);
    /* h2 + mlp(y), h2 added by the down projection's GEMM */
    fe_tensor *out = fe_nn_mlp_forward_residual(&m->mlp, y, h2); /* (B, T, C) */
    fe_free(y), fe_free(h2);
    return out;
}

fe_tensor *fe_nn_llama_block_forward(const fe_nn_llama_block *m, fe_tensor *h, fe_tensor *inv_freq,
                                     int64_t pos0) {
    return block(m, h, inv_freq, NULL, NULL, pos0);
}

fe_tensor *fe_nn_llama_block_forward_cached(const fe_nn_llama_block *m, fe_tensor *h,
                                            fe_tensor *inv_freq, fe_tensor *k_cache,
                                            fe_tensor *v_cache, int64_t pos0) {
    if (!k_cache || !v_cache) {
        fe_set_error(FE_ERR_ARG, "llama block (cached): NULL cache");
        return NULL;
    }
    return block(m, h, inv_freq, k_cache, v_cache, pos0);
}
