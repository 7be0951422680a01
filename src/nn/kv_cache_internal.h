/* What the model code (llama.c, decoder.c) needs of the KV cache beyond its public API. */
#ifndef FE_NN_KV_CACHE_INTERNAL_H
#define FE_NN_KV_CACHE_INTERNAL_H

#include "ferric/nn.h"

/* Record that positions up to len are filled; FE_ERR_RANGE past the capacity. */
fe_status fe__kv_cache_set_len(fe_kv_cache *c, int64_t len);
/* FE_OK when c was made for a model of m's shape (layers, KV heads, head dim);
 * FE_ERR_ARG "<who>: the cache was made for another model" otherwise. */
fe_status fe__kv_cache_check(const fe_kv_cache *c, const fe_llama *m, const char *who);

#endif
