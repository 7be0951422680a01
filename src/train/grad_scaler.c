/* Dynamic loss scaling for fp16 training. The overflow check is made of device
 * ops: inf * 0 and NaN * 0 are NaN, so sum(g * 0) is 0 for a finite gradient and
 * NaN otherwise; the flag is 1 - (total == total). */
#include "ops/ops_internal.h"
#include "train/train_internal.h"

#include <math.h>

struct fe_grad_scaler {
    fe_grad_scaler_config cfg;
    double scale;
    int64_t growth_tracker;
    fe_tensor *found_inf; /* (1) f32, owned; NULL until the first unscale */
};

fe_grad_scaler_config fe_grad_scaler_defaults(void) {
    return (fe_grad_scaler_config){.init_scale = 65536.0,
                                   .growth_factor = 2.0,
                                   .backoff_factor = 0.5,
                                   .growth_interval = 2000};
}

fe_grad_scaler *fe_grad_scaler_new(const fe_grad_scaler_config *cfg) {
    fe_grad_scaler_config c = cfg ? *cfg : fe_grad_scaler_defaults();
    if (!(c.init_scale > 0) || isinf(c.init_scale) || !(c.growth_factor > 1) ||
        !(c.backoff_factor > 0 && c.backoff_factor < 1) || c.growth_interval < 1) {
        fe_set_error(FE_ERR_ARG,
                     "grad scaler: needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 "
                     "and growth_interval >= 1 (got %g, %g, %g, %lld)",
                     c.init_scale, c.growth_factor, c.backoff_factor, (long long)c.growth_interval);
        return NULL;
    }
    fe_grad_scaler *s = calloc(1, sizeof *s);
    if (!s) {
        fe_set_error(FE_ERR_OOM, "grad scaler: out of host memory");
        return NULL;
    }
    s->cfg = c;
    s->scale = c.init_scale;
    return s;
}

void fe_grad_scaler_free(fe_grad_scaler *s) {
    if (!s) return;
    fe_free(s->found_inf);
    free(s);
}

fe_tensor *fe_grad_scaler_scale(fe_grad_scaler *s, fe_tensor *loss) {
    if (!s) {
        fe_set_error(FE_ERR_ARG, "grad scaler: NULL scaler");
        return NULL;
    }
    return fe_scale(loss, s->scale);
}

fe_status fe_grad_scaler_unscale(fe_grad_scaler *s, fe_params *p) {
    if (!s || !p) return fe_set_error(FE_ERR_ARG, "grad scaler: NULL scaler or registry");
    int n = fe_params_count(p);
    fe_device dev = n ? fe_device_of(fe_params_at(p, 0)) : FE_DEVICE_CPU;
    bool prev = fe_set_grad_enabled(false);
    fe_scope *sc = fe_scope_begin();
    fe_tensor *total = fe_zeros(1, (int64_t[]){1}, FE_F32, dev);
    fe_status st = total ? FE_OK : fe_last_status();
    double inv = 1.0 / s->scale;
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *g = fe_grad(fe_params_at(p, i));
        if (!g) continue;
        st = fe_scale_(g, inv);
        fe_tensor *g32 = fe_dtype_of(g) == FE_F32 ? g : fe_cast(g, FE_F32);
        fe_tensor *probe = fe_sum(fe_scale(g32, 0.0), 0, NULL, false); /* 0, or NaN */
        fe_tensor *probe1 = fe_reshape(probe, 1, (int64_t[]){1});
        total = probe1 ? fe_add(total, probe1) : NULL;
        if (!st && !total) st = fe_last_status();
    }
    fe_tensor *finite = st ? NULL : fe__binary_raw(FE_B_EQ, total, total, 1.0, "grad scaler");
    fe_tensor *flag =
        finite ? fe__unary_raw(FE_U_AFFINE, finite, -1.0, 1.0) : NULL; /* 1 - finite */
    if (!st && !flag) st = fe_last_status();
    if (flag) fe_keep(flag);
    fe_scope_end(sc);
    fe_set_grad_enabled(prev);
    if (st) {
        fe_free(flag);
        return st;
    }
    fe_free(s->found_inf);
    s->found_inf = flag;
    return FE_OK;
}

fe_tensor *fe_grad_scaler_found_inf(const fe_grad_scaler *s) { return s ? s->found_inf : NULL; }

void fe__grad_scaler_set_found_inf(fe_grad_scaler *s, fe_tensor *flag) {
    fe_free(s->found_inf);
    s->found_inf = flag;
}

fe_status fe_grad_scaler_update(fe_grad_scaler *s, bool *step_ok) {
    if (!s || !step_ok) return fe_set_error(FE_ERR_ARG, "grad scaler: NULL scaler or step_ok");
    if (!s->found_inf) return fe_set_error(FE_ERR_STATE, "grad scaler: update before any unscale");
    double f = fe_item(s->found_inf);
    fe_free(s->found_inf);
    s->found_inf = NULL;
    if (f != 0) { /* overflow (a NaN flag would also land here) */
        *step_ok = false;
        s->scale *= s->cfg.backoff_factor;
        s->growth_tracker = 0;
        return FE_OK;
    }
    *step_ok = true;
    if (++s->growth_tracker >= s->cfg.growth_interval) {
        double grown = s->scale * s->cfg.growth_factor;
        if (isfinite(grown)) s->scale = grown;
        s->growth_tracker = 0;
    }
    return FE_OK;
}

double fe_grad_scaler_get_scale(const fe_grad_scaler *s) { return s ? s->scale : 0.0; }

int fe_grad_scaler_state_count(const fe_grad_scaler *s) { return s ? 2 : 0; }

fe_status fe_grad_scaler_state_item(const fe_grad_scaler *s, int i, fe_state_item *out) {
    if (!s || !out || i < 0 || i > 1)
        return fe_set_error(FE_ERR_ARG, "grad scaler: no state item %d", i);
    *out = i == 0 ? (fe_state_item){"scale", NULL, s->scale}
                  : (fe_state_item){"growth_tracker", NULL, (double)s->growth_tracker};
    return FE_OK;
}

fe_status fe_grad_scaler_set_scalar(fe_grad_scaler *s, const char *name, double value) {
    if (!s || !name) return fe_set_error(FE_ERR_ARG, "grad scaler: NULL scaler or name");
    if (!strcmp(name, "scale")) {
        if (!(value > 0) || isinf(value))
            return fe_set_error(FE_ERR_ARG, "grad scaler: scale must be finite and > 0, got %g",
                                value);
        s->scale = value;
        return FE_OK;
    }
    if (!strcmp(name, "growth_tracker")) {
        if (!(value >= 0) || value != floor(value))
            return fe_set_error(FE_ERR_ARG,
                                "grad scaler: growth_tracker must be a whole number >= 0");
        s->growth_tracker = (int64_t)value;
        return FE_OK;
    }
    return fe_set_error(FE_ERR_ARG, "grad scaler: no scalar state named '%s'", name);
}
