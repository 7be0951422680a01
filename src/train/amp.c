/* Mixed precision: f32 master weights for the optimizer, bf16/fp16 copies for
 * forward and backward, and the two copies between them each step. */
#include "train/train_internal.h"

struct fe_amp {
    fe_params *model;  /* holds the compute tensors */
    fe_params *master; /* holds the f32 tensors, same order and names */
    fe_dtype compute;
};

fe_params *fe_amp_master(fe_amp *a) { return a ? a->master : NULL; }

fe_params *fe__amp_model(fe_amp *a) { return a ? a->model : NULL; }

fe_amp *fe_amp_new(fe_params *model, fe_dtype compute_dt) {
    if (!model) {
        fe_set_error(FE_ERR_ARG, "amp: NULL parameter registry");
        return NULL;
    }
    if (compute_dt != FE_BF16 && compute_dt != FE_F16 && compute_dt != FE_F32) {
        fe_set_error(FE_ERR_DTYPE, "amp: compute dtype must be bf16, f16 or f32, not %s",
                     fe_dtype_name(compute_dt));
        return NULL;
    }
    int n = fe_params_count(model);
    for (int i = 0; i < n; i++) {
        fe_tensor *t = fe_params_at(model, i);
        if (fe_dtype_is_float(fe_dtype_of(t)) && fe_dtype_of(t) != FE_F32) {
            fe_set_error(FE_ERR_DTYPE, "amp: parameter '%s' is %s; create the model in f32",
                         fe_params_name(model, i), fe_dtype_name(fe_dtype_of(t)));
            return NULL;
        }
    }
    fe_amp *a = calloc(1, sizeof *a);
    if (!a || !(a->master = fe_params_new())) {
        free(a);
        fe_set_error(FE_ERR_OOM, "amp: out of host memory");
        return NULL;
    }
    a->model = model;
    a->compute = compute_dt;
    fe_scope *s = fe__scope_suspend();
    bool prev = fe_set_grad_enabled(false);
    fe_status st = FE_OK;
    /* build every compute copy first, so a failure leaves the model untouched */
    fe_tensor **copies = calloc((size_t)(n ? n : 1), sizeof *copies);
    if (!copies) st = fe_set_error(FE_ERR_OOM, "amp: out of host memory");
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *t = fe_params_at(model, i);
        copies[i] = fe_dtype_is_float(fe_dtype_of(t)) ? fe_cast(t, compute_dt) : fe_detach(t);
        if (!copies[i])
            st = fe_last_status();
        else if (fe_requires_grad(t))
            st = fe_set_requires_grad(copies[i], true);
    }
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *t = fe_params_at(model, i);
        fe__retain(t); /* the master registry takes this reference */
        fe_zero_grad(t);
        if (fe_params_add(a->master, fe_params_name(model, i), t, fe_params_no_decay(model, i)) < 0)
            st = fe_last_status();
        fe_tensor *c = copies[i];
        copies[i] = NULL;
        if (!st)
            st = fe_params_replace(model, i, c); /* releases the model's reference to t */
        else
            fe_free(c);
    }
    for (int i = 0; copies && i < n; i++)
        fe_free(copies[i]);
    free(copies);
    fe_set_grad_enabled(prev);
    fe__scope_resume(s);
    if (st) {
        /* only reachable on OOM in the middle: give back what moved */
        fe_amp_free(a);
        return NULL;
    }
    return a;
}

void fe_amp_free(fe_amp *a) {
    if (!a) return;
    int n = fe_params_count(a->master);
    for (int i = 0; i < n; i++) {
        fe_tensor *t = fe_params_at(a->master, i);
        int j = fe_params_find(a->model, fe_params_name(a->master, i));
        if (j < 0) continue;
        fe__retain(t);
        fe_params_replace(a->model, j, t);
    }
    fe_params_free(a->master);
    free(a);
}

fe_status fe_amp_to_compute(fe_amp *a) {
    if (!a) return fe_set_error(FE_ERR_ARG, "amp: NULL");
    int n = fe_params_count(a->master);
    for (int i = 0; i < n; i++) {
        fe_tensor *c = fe_params_at(a->model, i), *m = fe_params_at(a->master, i);
        if (!fe_dtype_is_float(fe_dtype_of(m))) continue;
        fe_status st = fe_copy_(c, m);
        if (st) return st;
    }
    return FE_OK;
}

fe_status fe_amp_grads_to_master(fe_amp *a) {
    if (!a) return fe_set_error(FE_ERR_ARG, "amp: NULL");
    int n = fe_params_count(a->master);
    fe_status st = FE_OK;
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *c = fe_params_at(a->model, i), *m = fe_params_at(a->master, i);
        fe_tensor *g = fe_grad(c);
        if (!g) {
            fe_zero_grad(m);
            continue;
        }
        if (!m->grad) {
            fe_scope *s = fe__scope_suspend();
            m->grad = fe__alloc(m->ndim, m->shape, m->dtype, m->st->dev);
            fe__scope_resume(s);
            if (!m->grad) st = fe_last_status();
        }
        if (!st) st = fe_copy_(m->grad, g); /* casts to f32 */
        fe_zero_grad(c);
    }
    return st;
}
