/* The Llama training loss through the fused LM head + cross-entropy: the final-norm
 * output (B, T, C) goes straight into fe_linear_cross_entropy with the LM head's weight
 * (or the embedding table when tied), so the (B, T, V) logits never exist whole. */
#include "core/internal.h"
#include "ferric/fused_loss.h"
#include "ferric/nn.h"

#include <stdio.h>

fe_tensor *fe_llama_forward_loss(fe_llama *m, fe_tensor *idx, fe_tensor *targets) {
    if (!m) {
        fe_set_error(FE_ERR_ARG, "llama loss: NULL model");
        return NULL;
    }
    if (fe__any_null("llama loss", 2, idx, targets)) return NULL;
    if (fe_ndim(idx) != 2 || fe_ndim(targets) != 2 || fe_dim(idx, 0) != fe_dim(targets, 0) ||
        fe_dim(idx, 1) != fe_dim(targets, 1)) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE,
                     "llama loss: expected tokens (B, T) and targets (B, T), got %s and %s",
                     fe_shape_str(idx, a, sizeof a), fe_shape_str(targets, b, sizeof b));
        return NULL;
    }
    const fe_llama_config *c = fe_llama_config_of(m);
    fe_tensor *w = fe_params_get(fe_llama_params(m), c->tie_embeddings ? "model.embed_tokens.weight"
                                                                       : "lm_head.weight");
    if (!w) return NULL;
    fe_tensor *h = fe_llama_forward_hidden(m, idx); /* (B, T, C) */
    fe_tensor *loss = h ? fe_linear_cross_entropy(h, w, targets, -100, 0) : NULL;
    fe_free(h);
    return loss;
}
