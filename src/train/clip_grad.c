/* Global-norm gradient clipping, computed on the device.
 *
 * When the backend has the multi-tensor kernels (fe_backend.grad_norm_sq and
 * scale_multi) and all gradients live on one device, the sum of squares is one
 * deterministic reduction over every gradient, the clip factor
 * min(1, max_norm / (norm + 1e-6)) is computed by a few one-element device ops, and
 * the gradients are scaled in place by one multi-tensor kernel that reads the factor
 * on the device. Scaling in place (rather than handing the factor to the next AdamW
 * step as its grad_scale) keeps this function's contract: after it returns the
 * gradients are clipped, whatever optimizer or code reads them next (fe_optimizer_update,
 * which owns the whole step, hands the factor to AdamW instead). The composed-ops path
 * below remains for backends without those kernels; FE_FUSED_OPTIM=0 forces it. */
#include "ops/ops_internal.h"
#include "train/train_internal.h"

/* The gradients of p in *out (malloc'd) and their count when the fused kernels apply:
 * the backend has them, FE_FUSED_OPTIM is not 0, and every gradient is a contiguous
 * float tensor on `any`'s device. 0 when they do not apply, -1 when out of memory
 * (which also means: use the composed path). */
static int fused_grads(fe_params *p, const fe_tensor *any, fe_tensor ***out) {
    const char *e = getenv("FE_FUSED_OPTIM");
    const fe_backend *be = fe__be(any);
    *out = NULL;
    if ((e && !strcmp(e, "0")) || !be || !be->grad_norm_sq || !be->scale_multi) return 0;
    int n = fe_params_count(p), k = 0;
    fe_tensor **gl = malloc((size_t)(n ? n : 1) * sizeof *gl);
    if (!gl) return -1;
    fe_device dev = fe_device_of(any);
    for (int i = 0; i < n; i++) {
        fe_tensor *g = fe_grad(fe_params_at(p, i));
        if (!g) continue;
        fe_device d = fe_device_of(g);
        if (d.type != dev.type || d.index != dev.index || !fe_is_contiguous(g) ||
            !fe_dtype_is_float(fe_dtype_of(g))) {
            free(gl);
            return 0;
        }
        gl[k++] = g;
    }
    *out = gl;
    return k;
}

fe_tensor *fe__clip_coef(fe_tensor *norm, double max_norm) {
    if (!norm) return NULL;
    fe_dtype acc = fe_dtype_of(norm);
    fe_device dev = fe_device_of(norm);
    /* coef = min(1, max_norm / (norm + 1e-6)) */
    fe_tensor *coef =
        fe_div(fe_full(1, (int64_t[]){1}, max_norm, acc, dev), fe_add_scalar(norm, 1e-6));
    fe_tensor *one = fe_ones(1, (int64_t[]){1}, acc, dev);
    fe_tensor *big = coef && one ? fe__binary_raw(FE_B_GE, coef, one, 1.0, "clip_grad_norm") : NULL;
    return big ? fe_where(big, one, coef) : NULL;
}

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
    fe_tensor **gl = NULL;
    int ng = fused_grads(p, any, &gl);
    fe_tensor *total = ng > 0 ? fe_empty(1, (int64_t[]){1}, acc, fe_device_of(any))
                              : fe_zeros(1, (int64_t[]){1}, acc, fe_device_of(any));
    if (ng > 0 && total) {
        fe_status fs = fe__be(any)->grad_norm_sq(total, ng, (const fe_tensor *const *)gl, 1.0);
        if (fs) total = NULL;
    }
    for (int i = 0; i < n && total && ng <= 0; i++) {
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
        fe_tensor *c = fe__clip_coef(norm, max_norm);
        st = c ? FE_OK : fe_last_status();
        if (!st && ng > 0) st = fe__be(any)->scale_multi(ng, gl, c);
        for (int i = 0; i < n && !st && ng <= 0; i++) {
            fe_tensor *g = fe_grad(fe_params_at(p, i));
            if (!g) continue;
            fe_tensor *cg = fe_dtype_of(g) == acc ? c : fe_cast(c, fe_dtype_of(g));
            fe_tensor *scaled = cg ? fe_mul(g, cg) : NULL;
            st = scaled ? fe_copy_(g, scaled) : fe_last_status();
            fe_free(scaled);
        }
    }
    if (norm) fe_keep(norm);
    free(gl);
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
