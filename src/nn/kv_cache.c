/* The key/value cache of a Llama model for batch-1 inference: one preallocated
 * (1, Hkv, L, D) key and value buffer per layer and the number of positions filled. */
#include "core/internal.h"
#include "ferric/nn.h"
#include "nn/kv_cache_internal.h"

#include <inttypes.h>

struct fe_kv_cache {
    int64_t n_layers, capacity, len;
    fe_tensor **k, **v; /* n_layers each */
};

void fe_kv_cache_free(fe_kv_cache *c) {
    if (!c) return;
    for (int64_t l = 0; l < c->n_layers; l++) {
        if (c->k) fe_free(c->k[l]);
        if (c->v) fe_free(c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c);
}

fe_kv_cache *fe_kv_cache_new(fe_llama *m, int64_t max_len) {
    const fe_llama_config *cfg = fe_llama_config_of(m);
    if (!cfg) {
        fe_set_error(FE_ERR_ARG, "kv cache: NULL model");
        return NULL;
    }
    if (max_len < 1 || max_len > cfg->max_seq) {
        fe_set_error(FE_ERR_RANGE,
                     "kv cache: max_len %" PRId64 " must be in [1, max_seq = %" PRId64 "]", max_len,
                     cfg->max_seq);
        return NULL;
    }
    fe_tensor *w = fe_params_at(fe_llama_params(m), 0);
    fe_dtype dt = fe_dtype_of(w);
    fe_device dev = fe_device_of(w);
    fe_kv_cache *c = calloc(1, sizeof *c);
    if (c) {
        c->n_layers = cfg->n_layers;
        c->capacity = max_len;
        c->k = calloc((size_t)cfg->n_layers, sizeof *c->k);
        c->v = calloc((size_t)cfg->n_layers, sizeof *c->v);
    }
    if (!c || !c->k || !c->v) {
        fe_kv_cache_free(c);
        fe_set_error(FE_ERR_OOM, "kv cache: out of host memory");
        return NULL;
    }
    int64_t shape[4] = {1, cfg->n_kv_heads, max_len, cfg->head_dim};
    fe_scope *s = fe__scope_suspend(); /* the buffers live as long as the cache */
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        c->k[l] = fe_zeros(4, shape, dt, dev);
        c->v[l] = fe_zeros(4, shape, dt, dev);
        if (!c->k[l] || !c->v[l]) {
            fe__scope_resume(s);
            fe_kv_cache_free(c);
            return NULL;
        }
    }
    fe__scope_resume(s);
    return c;
}

int64_t fe_kv_cache_len(const fe_kv_cache *c) { return c ? c->len : 0; }
int64_t fe_kv_cache_capacity(const fe_kv_cache *c) { return c ? c->capacity : 0; }

fe_status fe_kv_cache_truncate(fe_kv_cache *c, int64_t len) {
    if (!c) return fe_set_error(FE_ERR_ARG, "kv cache: NULL");
    if (len < 0 || len > c->len)
        return fe_set_error(FE_ERR_RANGE,
                            "kv cache: cannot truncate to %" PRId64 " (holds %" PRId64 ")", len,
                            c->len);
    c->len = len;
    return FE_OK;
}

fe_tensor *fe_kv_cache_k(const fe_kv_cache *c, int64_t l) {
    return c && l >= 0 && l < c->n_layers ? c->k[l] : NULL;
}
fe_tensor *fe_kv_cache_v(const fe_kv_cache *c, int64_t l) {
    return c && l >= 0 && l < c->n_layers ? c->v[l] : NULL;
}

fe_status fe__kv_cache_set_len(fe_kv_cache *c, int64_t len) {
    if (!c || len < 0 || len > c->capacity)
        return fe_set_error(FE_ERR_RANGE, "kv cache: length %" PRId64 " out of range", len);
    c->len = len;
    return FE_OK;
}

fe_status fe__kv_cache_check(const fe_kv_cache *c, const fe_llama *m, const char *who) {
    const fe_llama_config *cfg = fe_llama_config_of(m);
    const fe_tensor *k = c && cfg && c->n_layers == cfg->n_layers ? c->k[0] : NULL;
    if (!k || fe_dim(k, 1) != cfg->n_kv_heads || fe_dim(k, 3) != cfg->head_dim)
        return fe_set_error(FE_ERR_ARG, "%s: the cache was made for another model", who);
    return FE_OK;
}
