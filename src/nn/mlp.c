/* The SwiGLU feed-forward block of Llama. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <stdio.h>

fe_status fe_nn_mlp_init(fe_nn_mlp *m, fe_params *p, const char *name, int64_t dim, int64_t hidden,
                         double std, fe_dtype dt, fe_device dev) {
    if (!m || !p || !name) return fe_set_error(FE_ERR_ARG, "mlp: NULL module, registry or name");
    char g[256], u[256], d[256];
    if (snprintf(g, sizeof g, "%s.gate_proj", name) >= (int)sizeof g ||
        snprintf(u, sizeof u, "%s.up_proj", name) >= (int)sizeof u ||
        snprintf(d, sizeof d, "%s.down_proj", name) >= (int)sizeof d)
        return fe_set_error(FE_ERR_ARG, "mlp: name '%s' is too long", name);
    fe_status st = fe_nn_linear_init(&m->gate_proj, p, g, dim, hidden, false, std, dt, dev);
    if (!st) st = fe_nn_linear_init(&m->up_proj, p, u, dim, hidden, false, std, dt, dev);
    if (!st) st = fe_nn_linear_init(&m->down_proj, p, d, hidden, dim, false, std, dt, dev);
    return st;
}

/* mlp(x), plus r when r is given */
static fe_tensor *forward(const fe_nn_mlp *m, fe_tensor *x, fe_tensor *r) {
    if (!m) {
        fe_set_error(FE_ERR_ARG, "mlp: NULL module");
        return NULL;
    }
    fe_tensor *g = fe_nn_linear_forward(&m->gate_proj, x); /* (..., F) */
    fe_tensor *u = fe_nn_linear_forward(&m->up_proj, x);   /* (..., F) */
    fe_tensor *a = g && u ? fe_silu_gate(g, u) : NULL;     /* silu(g) * u */
    fe_free(g), fe_free(u);
    const fe_nn_linear *d = &m->down_proj;
    fe_tensor *y;
    if (r && d->bias < 0) { /* (..., C): r + a W^T in one GEMM */
        y = a ? fe__linear_add(a, fe_params_at(d->params, d->weight), r) : NULL;
    } else {
        fe_tensor *f = fe_nn_linear_forward(d, a); /* (..., C) */
        y = f && r ? fe_add(f, r) : f;
        if (y != f) fe_free(f);
    }
    fe_free(a);
    return y;
}

fe_tensor *fe_nn_mlp_forward(const fe_nn_mlp *m, fe_tensor *x) { return forward(m, x, NULL); }

fe_tensor *fe_nn_mlp_forward_residual(const fe_nn_mlp *m, fe_tensor *x, fe_tensor *r) {
    return fe__any_null("mlp", 1, r) ? NULL : forward(m, x, r);
}
