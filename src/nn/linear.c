/* Linear layer y = x W^T + b with Hugging Face's (out, in) weight layout. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <stdio.h>

fe_status fe_nn_linear_init(fe_nn_linear *m, fe_params *p, const char *name, int64_t in,
                            int64_t out, bool bias, double std, fe_dtype dt, fe_device dev) {
    if (!m || !p || !name || in <= 0 || out <= 0)
        return fe_set_error(FE_ERR_ARG, "linear: needs a module, a registry, a name and "
                                        "positive sizes");
    char w[256], b[256];
    if (snprintf(w, sizeof w, "%s.weight", name) >= (int)sizeof w ||
        snprintf(b, sizeof b, "%s.bias", name) >= (int)sizeof b)
        return fe_set_error(FE_ERR_ARG, "linear: name '%s' is too long", name);
    m->params = p;
    m->bias = -1;
    m->weight = fe_params_add_normal(p, w, 2, (int64_t[]){out, in}, std, dt, dev, false);
    if (m->weight < 0) return fe_last_status();
    if (bias) {
        m->bias = fe_params_add_full(p, b, 1, &out, 0.0, dt, dev, true);
        if (m->bias < 0) return fe_last_status();
    }
    return FE_OK;
}

fe_tensor *fe_nn_linear_forward(const fe_nn_linear *m, fe_tensor *x) {
    if (!m) {
        fe_set_error(FE_ERR_ARG, "linear: NULL module");
        return NULL;
    }
    fe_tensor *b = m->bias >= 0 ? fe_params_at(m->params, m->bias) : NULL;
    return fe_linear(x, fe_params_at(m->params, m->weight), b);
}
