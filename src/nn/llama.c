/* The Llama model: token embedding, decoder blocks, final norm and LM head. */
#include "core/internal.h"
#include "ferric/nn.h"
#include "nn/kv_cache_internal.h"

#include <inttypes.h>
#include <stdio.h>

typedef struct block_ctx {
    fe_llama *model;
    int layer;
} block_ctx;

struct fe_llama {
    fe_llama_config cfg;
    fe_params *params;
    fe_nn_embedding embed_tokens;
    fe_nn_llama_block *layers;
    block_ctx *ctx; /* one per layer, for checkpointed blocks */
    fe_nn_rmsnorm norm;
    fe_nn_linear lm_head; /* unused when tied */
    fe_tensor *inv_freq;
    bool checkpointing;
};

fe_status fe_llama_config_check(const fe_llama_config *c) {
    if (!c) return fe_set_error(FE_ERR_ARG, "llama config: NULL");
#define POS(f)                                                                                     \
    if (c->f <= 0)                                                                                 \
        return fe_set_error(FE_ERR_ARG, "llama config: " #f " must be positive, got %" PRId64,     \
                            (int64_t)c->f);
    POS(vocab_size)
    POS(dim) POS(n_layers) POS(n_heads) POS(n_kv_heads) POS(ffn_dim) POS(max_seq)
#undef POS
        if (c->n_heads % c->n_kv_heads) return fe_set_error(
            FE_ERR_ARG,
            "llama config: n_heads %" PRId64 " is not a multiple of n_kv_heads %" PRId64,
            c->n_heads, c->n_kv_heads);
    int64_t hd = c->head_dim ? c->head_dim : (c->dim % c->n_heads ? 0 : c->dim / c->n_heads);
    if (hd <= 0 || hd % 2)
        return fe_set_error(FE_ERR_ARG,
                            "llama config: head_dim must be positive and even (given %" PRId64
                            ", dim %" PRId64 ", n_heads %" PRId64 ")",
                            c->head_dim, c->dim, c->n_heads);
    if (!(c->norm_eps >= 0) || !(c->rope_theta > 0) || !(c->init_std >= 0))
        return fe_set_error(FE_ERR_ARG,
                            "llama config: norm_eps >= 0, rope_theta > 0 and init_std >= 0 needed");
    return FE_OK;
}

void fe_llama_free(fe_llama *m) {
    if (!m) return;
    fe_params_free(m->params);
    fe_free(m->inv_freq);
    free(m->layers);
    free(m->ctx);
    free(m);
}

static fe_status build(fe_llama *m, fe_dtype dt, fe_device dev) {
    const fe_llama_config *c = &m->cfg;
    double std = c->init_std;
    char name[128];
    fe_status st = fe_nn_embedding_init(&m->embed_tokens, m->params, "model.embed_tokens",
                                        c->vocab_size, c->dim, std, dt, dev);
    for (int64_t l = 0; l < c->n_layers && !st; l++) {
        fe_nn_llama_block *b = &m->layers[l];
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".self_attn", l);
        st = fe_nn_attention_init(&b->self_attn, m->params, name, c->dim, c->n_heads, c->n_kv_heads,
                                  c->head_dim, false, std, dt, dev);
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".mlp", l);
        if (!st) st = fe_nn_mlp_init(&b->mlp, m->params, name, c->dim, c->ffn_dim, std, dt, dev);
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".input_layernorm", l);
        if (!st)
            st = fe_nn_rmsnorm_init(&b->input_layernorm, m->params, name, c->dim, c->norm_eps, dt,
                                    dev);
        snprintf(name, sizeof name, "model.layers.%" PRId64 ".post_attention_layernorm", l);
        if (!st)
            st = fe_nn_rmsnorm_init(&b->post_attention_layernorm, m->params, name, c->dim,
                                    c->norm_eps, dt, dev);
        m->ctx[l] = (block_ctx){m, (int)l};
    }
    if (!st)
        st = fe_nn_rmsnorm_init(&m->norm, m->params, "model.norm", c->dim, c->norm_eps, dt, dev);
    if (!st && !c->tie_embeddings)
        st = fe_nn_linear_init(&m->lm_head, m->params, "lm_head", c->dim, c->vocab_size, false, std,
                               dt, dev);
    if (!st) {
        m->inv_freq =
            fe_keep(fe_nn_rope_inv_freq(c->head_dim, c->rope_theta, &c->rope_scaling, dev));
        if (!m->inv_freq) st = fe_last_status();
    }
    return st;
}

fe_llama *fe_llama_new(const fe_llama_config *cfg, fe_dtype dt, fe_device dev) {
    if (fe_llama_config_check(cfg)) return NULL;
    if (!fe_dtype_is_float(dt)) {
        fe_set_error(FE_ERR_DTYPE, "llama: parameters must be a float dtype, not %s",
                     fe_dtype_name(dt));
        return NULL;
    }
    fe_llama *m = calloc(1, sizeof *m);
    if (!m) {
        fe_set_error(FE_ERR_OOM, "llama: out of host memory");
        return NULL;
    }
    m->cfg = *cfg;
    if (!m->cfg.head_dim) m->cfg.head_dim = cfg->dim / cfg->n_heads;
    if (m->cfg.init_std == 0) m->cfg.init_std = 0.02;
    m->params = fe_params_new();
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    m->ctx = calloc((size_t)cfg->n_layers, sizeof *m->ctx);
    if (!m->params || !m->layers || !m->ctx) {
        fe_set_error(FE_ERR_OOM, "llama: out of host memory");
        fe_llama_free(m);
        return NULL;
    }
    /* parameters are long-lived: keep them out of whatever scope the caller has open */
    fe_scope *s = fe__scope_suspend();
    fe_status st = build(m, dt, dev);
    fe__scope_resume(s);
    if (st) {
        fe_llama_free(m);
        return NULL;
    }
    return m;
}

const fe_llama_config *fe_llama_config_of(const fe_llama *m) { return m ? &m->cfg : NULL; }
fe_params *fe_llama_params(fe_llama *m) { return m ? m->params : NULL; }
fe_tensor *fe_llama_inv_freq(const fe_llama *m) { return m ? m->inv_freq : NULL; }
void fe_llama_set_checkpointing(fe_llama *m, bool on) {
    if (m) m->checkpointing = on;
}
void fe_llama_set_attention(fe_llama *m, fe_attention_fn fn) {
    for (int64_t l = 0; m && l < m->cfg.n_layers; l++)
        m->layers[l].self_attn.attn = fn;
}

static fe_tensor *block_fn(void *ctx, fe_tensor *const *in, int n) {
    (void)n;
    block_ctx *c = ctx;
    return fe_nn_llama_block_forward(&c->model->layers[c->layer], in[0], c->model->inv_freq, 0);
}

fe_tensor *fe_llama_forward_hidden(fe_llama *m, fe_tensor *idx) {
    if (!m || !idx) {
        if (!m) fe_set_error(FE_ERR_ARG, "llama: NULL model");
        return NULL;
    }
    if (fe_ndim(idx) != 2 || fe_dim(idx, 1) < 1 || fe_dim(idx, 1) > m->cfg.max_seq) {
        char s[96];
        fe_set_error(FE_ERR_SHAPE,
                     "llama: expected tokens (B, T) with 1 <= T <= %" PRId64 ", got %s",
                     m->cfg.max_seq, fe_shape_str(idx, s, sizeof s));
        return NULL;
    }
    fe_tensor *h = fe_nn_embedding_forward(&m->embed_tokens, idx); /* (B, T, C) */
    for (int64_t l = 0; l < m->cfg.n_layers && h; l++) {
        fe_tensor *next = m->checkpointing ? fe_checkpoint(block_fn, &m->ctx[l], &h, 1)
                                           : block_fn(&m->ctx[l], &h, 1);
        fe_free(h);
        h = next;
    }
    fe_tensor *x = h ? fe_nn_rmsnorm_forward(&m->norm, h) : NULL; /* (B, T, C) */
    fe_free(h);
    return x;
}

/* LM head: x (B, T, C) -> logits (B, T, V), through the embedding when tied. */
static fe_tensor *lm_head(fe_llama *m, fe_tensor *x) {
    if (m->cfg.tie_embeddings)
        return fe_linear(x, fe_params_at(m->params, m->embed_tokens.weight), NULL);
    return fe_nn_linear_forward(&m->lm_head, x);
}

fe_tensor *fe_llama_forward(fe_llama *m, fe_tensor *idx) {
    fe_tensor *x = fe_llama_forward_hidden(m, idx);
    fe_tensor *logits = x ? lm_head(m, x) : NULL; /* (B, T, V) */
    fe_free(x);
    return logits;
}

/* Final norm and LM head: h (B, T, C) -> logits (B, T, V). */
static fe_tensor *head(fe_llama *m, fe_tensor *h) {
    fe_tensor *x = fe_nn_rmsnorm_forward(&m->norm, h); /* (B, T, C) */
    fe_tensor *logits = x ? lm_head(m, x) : NULL;
    fe_free(x);
    return logits;
}

fe_tensor *fe_llama_forward_cached(fe_llama *m, fe_tensor *idx, fe_kv_cache *c, bool last_only) {
    if (!m || !idx || !c) {
        fe_set_error(FE_ERR_ARG, "llama (cached): NULL model, tokens or cache");
        return NULL;
    }
    int64_t pos0 = fe_kv_cache_len(c), T = fe_ndim(idx) == 2 ? fe_dim(idx, 1) : 0;
    if (fe_ndim(idx) != 2 || fe_dim(idx, 0) != 1 || T < 1) {
        char s[96];
        fe_set_error(FE_ERR_SHAPE, "llama (cached): expected tokens (1, T) with T >= 1, got %s",
                     fe_shape_str(idx, s, sizeof s));
        return NULL;
    }
    if (pos0 + T > fe_kv_cache_capacity(c)) {
        fe_set_error(FE_ERR_RANGE,
                     "llama (cached): %" PRId64 " more tokens overflow the cache (%" PRId64
                     " of %" PRId64 " positions used)",
                     T, pos0, fe_kv_cache_capacity(c));
        return NULL;
    }
    if (fe__kv_cache_check(c, m, "llama (cached)")) return NULL;
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *h = fe_nn_embedding_forward(&m->embed_tokens, idx); /* (1, T, C) */
    for (int64_t l = 0; l < m->cfg.n_layers && h; l++) {
        fe_tensor *next = fe_nn_llama_block_forward_cached(
            &m->layers[l], h, m->inv_freq, fe_kv_cache_k(c, l), fe_kv_cache_v(c, l), pos0);
        fe_free(h);
        h = next;
    }
    if (h && last_only && T > 1) {
        fe_tensor *lh = fe_slice(h, 1, T - 1, T, 1); /* (1, 1, C) */
        fe_free(h);
        h = lh;
    }
    fe_tensor *logits = h ? head(m, h) : NULL;
    fe_free(h);
    fe_set_grad_enabled(prev);
    if (logits) fe__kv_cache_set_len(c, pos0 + T);
    return logits;
}

fe_tensor *fe_llama_loss(fe_tensor *logits, fe_tensor *targets) {
    if (fe__any_null("llama loss", 2, logits, targets)) return NULL;
    if (fe_ndim(logits) != 3 || fe_ndim(targets) != 2 || fe_dim(logits, 0) != fe_dim(targets, 0) ||
        fe_dim(logits, 1) != fe_dim(targets, 1)) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE,
                     "llama loss: expected logits (B, T, V) and targets (B, T), got %s and %s",
                     fe_shape_str(logits, a, sizeof a), fe_shape_str(targets, b, sizeof b));
        return NULL;
    }
    int64_t N = fe_dim(logits, 0) * fe_dim(logits, 1);
    fe_tensor *l2 = fe_reshape(logits, 2, (int64_t[]){N, fe_dim(logits, 2)});
    fe_tensor *t1 = fe_reshape(targets, 1, &N);
    fe_tensor *loss = fe_cross_entropy(l2, t1, -100);
    fe_free(l2), fe_free(t1);
    return loss;
}
