/* Global-norm gradient clipping, computed on the device. */
#include "ferric/train.h"
#include "ops/ops_internal.h"

fe_tensor *fe_clip_grad_norm(fe_params *p, double max_norm) {
    if (!p) {
        fe_set_error(FE_ERR_ARG, "clip_grad_norm: NULL parameter registry");
        return NULL;
    }
    int n = fe_params_count(p);
    fe_dtype acc = FE_F32;
    fe_tensor *any = NULL;
    for (int i = 0; i < n; i++) {
        fe_tensor *g = fe_grad(fe_params_at(p, i));
        if (!g) continue;
        if (!any) any = g;
        if (fe_dtype_of(g) == FE_F64) acc = FE_F64;
    }
    if (!any) { /* nothing to clip: the norm is 0 */
        fe_tensor *first = fe_params_at(p, 0);
        return fe_zeros(1, (int64_t[]){1}, acc, first ? fe_device_of(first) : FE_DEVICE_CPU);
    }
    bool prev = fe_set_grad_enabled(false);
    fe_scope *s = fe_scope_begin();
    fe_tensor *total = fe_zeros(1, (int64_t[]){1}, acc, fe_device_of(any));
    for (int i = 0; i < n && total; i++) {
        fe_tensor *g = fe_grad(fe_params_at(p, i));
        if (!g) continue;
        fe_tensor *ga = fe_dtype_of(g) == acc ? g : fe_cast(g, acc);
        fe_tensor *sq = fe_sum(fe_square(ga), 0, NULL, false); /* sum of g^2, a scalar */
        fe_tensor *sq1 = fe_reshape(sq, 1, (int64_t[]){1});
        fe_tensor *nt = sq1 ? fe_add(total, sq1) : NULL;
        total = nt;
    }
    fe_tensor *norm = total ? fe_sqrt(total) : NULL; /* (1) */
    fe_status st = norm ? FE_OK : fe_last_status();
    if (!st && max_norm > 0) {
        /* coef = min(1, max_norm / (norm + 1e-6)) */
        fe_tensor *coef = fe_div(fe_full(1, (int64_t[]){1}, max_norm, acc, fe_device_of(norm)),
                                 fe_add_scalar(norm, 1e-6));
        fe_tensor *one = fe_ones(1, (int64_t[]){1}, acc, fe_device_of(norm));
        fe_tensor *big =
            coef && one ? fe__binary_raw(FE_B_GE, coef, one, 1.0, "clip_grad_norm") : NULL;
        fe_tensor *c = big ? fe_where(big, one, coef) : NULL;
        st = c ? FE_OK : fe_last_status();
        for (int i = 0; i < n && !st; i++) {
            fe_tensor *g = fe_grad(fe_params_at(p, i));
            if (!g) continue;
            fe_tensor *cg = fe_dtype_of(g) == acc ? c : fe_cast(c, fe_dtype_of(g));
            fe_tensor *scaled = cg ? fe_mul(g, cg) : NULL;
            st = scaled ? fe_copy_(g, scaled) : fe_last_status();
            fe_free(scaled);
        }
    }
    if (norm) fe_keep(norm);
    fe_scope_end(s);
    fe_set_grad_enabled(prev);
    if (st) {
        fe_free(norm);
        return NULL;
    }
    /* hand the norm to the caller's scope, like any op result */
    fe_tensor *out = fe_contiguous(norm);
    fe_free(norm);
    return out;
}
