/* The update after backward (fe_optimizer_update): unscale, overflow check, clipping,
 * the optimizer step, zeroing the gradients and refreshing the mixed-precision compute
 * weights.
 *
 * The reference is the sequence of separate calls in train.h. For AdamW on a backend
 * with the multi-tensor kernels the same results come from two passes over the
 * gradients: grad_norm_sq reads the gradients where backward left them (the bf16/fp16
 * model gradients under mixed precision: there are no f32 master gradients) and gives the
 * sum of squares of the unscaled gradients, from which a few one-element device ops make
 * the overflow flag and the clip coefficient; then the AdamW kernel reads the same
 * gradients, multiplies them by 1/scale and by the coefficient (each product rounded to
 * f32, as the in-place unscale and clip of an f32 master gradient round them), updates
 * the f32 masters and writes the compute copies. The order of float operations is the
 * reference's, so the results are bit for bit the same on the CPU. */
#include "ops/ops_internal.h"
#include "train/train_internal.h"

#include <math.h>

static void zero_grads(fe_params *p, fe_params *model) {
    fe_params_zero_grad(p);
    if (model) fe_params_zero_grad(model);
}

/* The sequence of train.h, call by call. */
static fe_status reference(fe_optimizer *o, const fe_update_config *u, fe_tensor **norm,
                           bool *stepped) {
    fe_params *p = fe__optimizer_params(o);
    fe_status st = u->amp ? fe_amp_grads_to_master(u->amp) : FE_OK;
    if (!st && u->scaler) st = fe_grad_scaler_unscale(u->scaler, p);
    if (!st && u->max_norm > 0 && !(*norm = fe_clip_grad_norm(p, u->max_norm)))
        st = fe_last_status();
    bool ok = true;
    if (!st && u->scaler) st = fe_grad_scaler_update(u->scaler, &ok);
    if (!st && ok) st = fe_optimizer_step(o, u->lr);
    zero_grads(p, u->amp ? fe__amp_model(u->amp) : NULL);
    if (!st && u->amp) st = fe_amp_to_compute(u->amp);
    *stepped = !st && ok;
    return st;
}

/* The fused path may stand in for the reference: the plan applies, the backend has the
 * norm kernels the reference's clipping uses, and every gradient the reference would
 * scale in place (the f32 master gradient under mixed precision, else the gradient
 * itself) has its state's dtype, the precision the AdamW kernel rounds the products to.
 * With a loss scaler the gradients must be f32 (or narrower), whose squares cannot
 * overflow the f64 sum the overflow check is read from. */
static bool fusable(const fe__adamw_plan *pl, bool amp, bool scaler) {
    if (!pl->ok || pl->n == 0 || !pl->be->grad_norm_sq || !pl->be->scale_multi) return false;
    for (int i = 0; i < pl->n; i++) {
        fe_dtype held = amp ? fe_dtype_of(pl->p[i]) : fe_dtype_of(pl->g[i]);
        if (held != fe_dtype_of(pl->m[i]) || (scaler && held == FE_F64)) return false;
    }
    return true;
}

static fe_status fused(fe_optimizer *o, const fe_update_config *u, const fe__adamw_plan *pl,
                       fe_tensor **norm, bool *stepped) {
    fe_params *p = fe__optimizer_params(o), *model = u->amp ? fe__amp_model(u->amp) : NULL;
    /* the reference's unscale multiplies by exactly this double */
    double unscale = u->scaler ? 1.0 / fe_grad_scaler_get_scale(u->scaler) : 1.0;
    fe_dtype acc = FE_F32; /* the reference's clipping accumulates in f64 for f64 gradients */
    for (int i = 0; i < pl->n; i++)
        if (fe_dtype_of(pl->m[i]) == FE_F64) acc = FE_F64;
    bool prev = fe_set_grad_enabled(false);
    fe_scope *sc = fe_scope_begin();
    fe_tensor *sq = fe_empty(1, (int64_t[]){1}, FE_F64, fe_device_of(pl->p[0]));
    fe_status st = sq ? pl->be->grad_norm_sq(sq, pl->n, (const fe_tensor *const *)pl->g, unscale)
                      : fe_last_status();
    if (!st && u->scaler) {
        /* squares of finite f32 values cannot overflow f64, so the sum is finite exactly
         * when every unscaled gradient is, and then sum * 0 == sum * 0 */
        fe_tensor *probe = fe_scale(sq, 0.0);
        fe_tensor *finite = probe ? fe__binary_raw(FE_B_EQ, probe, probe, 1.0, "update") : NULL;
        fe_tensor *flag =
            finite ? fe_cast(fe__unary_raw(FE_U_AFFINE, finite, -1.0, 1.0), FE_F32) : NULL;
        if (flag)
            fe__grad_scaler_set_found_inf(u->scaler, fe_keep(flag));
        else
            st = fe_last_status();
    }
    fe_tensor *nrm = NULL, *coef = NULL;
    if (!st && u->max_norm > 0) {
        /* the reference stores the sum in its accumulator dtype before the square root */
        nrm = fe_sqrt(acc == FE_F64 ? sq : fe_cast(sq, acc));
        coef = fe__clip_coef(nrm, u->max_norm);
        if (!coef) st = fe_last_status();
    }
    bool ok = true;
    if (!st && u->scaler) st = fe_grad_scaler_update(u->scaler, &ok);
    if (!st && ok) st = fe__adamw_plan_run(o, pl, u->lr, unscale, coef);
    if (!st && u->amp && !ok) st = fe_amp_to_compute(u->amp); /* a skipped step: as the reference */
    for (int i = 0; !st && u->amp && ok && i < fe_params_count(p); i++) {
        /* the kernel wrote the copies of the updated tensors; cast the others */
        fe_tensor *m = fe_params_at(p, i), *c = fe_params_at(model, i);
        if (fe_dtype_is_float(fe_dtype_of(m)) && !fe_grad(c)) st = fe_copy_(c, m);
    }
    if (nrm) fe_keep(nrm);
    fe_scope_end(sc);
    fe_set_grad_enabled(prev);
    zero_grads(p, model);
    *stepped = !st && ok;
    if (st || !nrm) {
        fe_free(nrm);
        return st;
    }
    *norm = fe_contiguous(nrm); /* into the caller's scope, like any op result */
    fe_free(nrm);
    return *norm ? FE_OK : fe_last_status();
}

fe_status fe_optimizer_update(fe_optimizer *o, const fe_update_config *u, fe_tensor **norm,
                              fe_update_info *info) {
    fe_tensor *nrm = NULL;
    bool took = false, fuse = false;
    if (norm) *norm = NULL;
    if (info) *info = (fe_update_info){0};
    if (!o || !u) return fe_set_error(FE_ERR_ARG, "optimizer update: NULL optimizer or config");
    fe_params *p = fe__optimizer_params(o), *model = u->amp ? fe__amp_model(u->amp) : NULL;
    if (u->amp && fe_amp_master(u->amp) != p)
        return fe_set_error(FE_ERR_ARG, "optimizer update: the optimizer must be over the "
                                        "mixed-precision master registry (fe_amp_master)");
    if (!(u->lr >= 0) || isinf(u->lr) || !(u->max_norm >= 0) || isinf(u->max_norm)) {
        zero_grads(p, model);
        return fe_set_error(FE_ERR_ARG,
                            "optimizer update: learning rate %g and max_norm %g must "
                            "be finite and >= 0",
                            u->lr, u->max_norm);
    }
    fe__adamw_plan pl;
    fe_status st = fe__adamw_plan_make(o, model, model, &pl);
    if (!st) {
        fuse = fusable(&pl, model != NULL, u->scaler != NULL);
        st = fuse ? fused(o, u, &pl, &nrm, &took) : reference(o, u, &nrm, &took);
    } else {
        zero_grads(p, model);
    }
    fe__adamw_plan_free(&pl);
    if (norm)
        *norm = nrm;
    else
        fe_free(nrm);
    if (info) *info = (fe_update_info){.stepped = took, .fused = fuse};
    return st;
}
