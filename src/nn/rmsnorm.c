/* RMSNorm with a learned scale, initialised at one and never weight-decayed. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <stdio.h>

fe_status fe_nn_rmsnorm_init(fe_nn_rmsnorm *m, fe_params *p, const char *name, int64_t dim,
                             double eps, fe_dtype dt, fe_device dev) {
    if (!m || !p || !name || dim <= 0 || !(eps >= 0))
        return fe_set_error(FE_ERR_ARG, "rmsnorm: needs a module, a registry, a name, a positive "
                                        "size and eps >= 0");
    char w[256];
    if (snprintf(w, sizeof w, "%s.weight", name) >= (int)sizeof w)
        return fe_set_error(FE_ERR_ARG, "rmsnorm: name '%s' is too long", name);
    m->params = p;
    m->eps = eps;
    m->weight = fe_params_add_full(p, w, 1, &dim, 1.0, dt, dev, true);
    return m->weight < 0 ? fe_last_status() : FE_OK;
}

fe_tensor *fe_nn_rmsnorm_forward(const fe_nn_rmsnorm *m, fe_tensor *x) {
    if (!m) {
        fe_set_error(FE_ERR_ARG, "rmsnorm: NULL module");
        return NULL;
    }
    return fe_rmsnorm(x, fe_params_at(m->params, m->weight), m->eps);
}
