/* Token embedding table. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <stdio.h>

fe_status fe_nn_embedding_init(fe_nn_embedding *m, fe_params *p, const char *name, int64_t vocab,
                               int64_t dim, double std, fe_dtype dt, fe_device dev) {
    if (!m || !p || !name || vocab <= 0 || dim <= 0)
        return fe_set_error(FE_ERR_ARG, "embedding: needs a module, a registry, a name and "
                                        "positive sizes");
    char full[256];
    if (snprintf(full, sizeof full, "%s.weight", name) >= (int)sizeof full)
        return fe_set_error(FE_ERR_ARG, "embedding: name '%s' is too long", name);
    m->params = p;
    m->weight = fe_params_add_normal(p, full, 2, (int64_t[]){vocab, dim}, std, dt, dev, false);
    return m->weight < 0 ? fe_last_status() : FE_OK;
}

fe_tensor *fe_nn_embedding_forward(const fe_nn_embedding *m, fe_tensor *idx) {
    if (!m) {
        fe_set_error(FE_ERR_ARG, "embedding: NULL module");
        return NULL;
    }
    return fe_embedding(fe_params_at(m->params, m->weight), idx);
}
