/* Optimizers over a parameter registry: SGD with momentum and AdamW. The updates
 * are written with device ops (in-place adds and scales, a few temporaries per
 * parameter) so they run wherever the parameters live. When the backend has the
 * multi-tensor AdamW kernel (fe_backend.adamw) and every parameter with a gradient
 * lives on one device, AdamW makes one fused pass per tensor instead (about eight
 * fewer trips through memory per element); FE_FUSED_OPTIM=0 in the environment turns
 * that off, for comparisons. */
#include "train/train_internal.h"

#include <math.h>
#include <stdio.h>

typedef enum opt_kind { OPT_SGD, OPT_ADAMW } opt_kind;

typedef struct slot {
    int param;          /* index in the registry */
    fe_tensor *s0, *s1; /* SGD: momentum buffer (or NULL); AdamW: m, v */
    char *name0, *name1;
} slot;

struct fe_optimizer {
    opt_kind kind;
    fe_params *params;
    fe_sgd_config sgd;
    fe_adamw_config adamw;
    slot *slots;
    int n;
    int64_t step;
};

fe_adamw_config fe_adamw_defaults(void) {
    return (fe_adamw_config){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
}

void fe_optimizer_free(fe_optimizer *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        fe_free(o->slots[i].s0), fe_free(o->slots[i].s1);
        free(o->slots[i].name0), free(o->slots[i].name1);
    }
    free(o->slots);
    free(o);
}

static fe_dtype state_dtype(const fe_tensor *p) {
    return fe_dtype_of(p) == FE_F64 ? FE_F64 : FE_F32;
}

static fe_tensor *zeros_state(const fe_tensor *p) {
    return fe_keep(fe_zeros(fe_ndim(p), fe_shape(p), state_dtype(p), fe_device_of(p)));
}

static char *state_name(const char *param, const char *what) {
    size_t n = strlen(param) + strlen(what) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s.%s", param, what);
    return s;
}

static fe_optimizer *make(opt_kind kind, fe_params *p) {
    if (!p) {
        fe_set_error(FE_ERR_ARG, "optimizer: NULL parameter registry");
        return NULL;
    }
    fe_optimizer *o = calloc(1, sizeof *o);
    int np = fe_params_count(p);
    if (o) o->slots = calloc((size_t)(np ? np : 1), sizeof *o->slots);
    if (!o || !o->slots) {
        free(o);
        fe_set_error(FE_ERR_OOM, "optimizer: out of host memory");
        return NULL;
    }
    o->kind = kind;
    o->params = p;
    fe_scope *s = fe__scope_suspend(); /* state is long-lived */
    bool ok = true;
    for (int i = 0; i < np && ok; i++) {
        fe_tensor *t = fe_params_at(p, i);
        if (!fe_dtype_is_float(fe_dtype_of(t))) continue;
        slot *sl = &o->slots[o->n++];
        sl->param = i;
        const char *nm = fe_params_name(p, i);
        if (kind == OPT_ADAMW) {
            sl->s0 = zeros_state(t), sl->s1 = zeros_state(t);
            sl->name0 = state_name(nm, "exp_avg"), sl->name1 = state_name(nm, "exp_avg_sq");
            ok = sl->s0 && sl->s1 && sl->name0 && sl->name1;
        }
    }
    fe__scope_resume(s);
    if (!ok) {
        if (fe_last_status() == FE_OK)
            fe_set_error(FE_ERR_OOM, "optimizer: out of memory for state");
        fe_optimizer_free(o);
        return NULL;
    }
    return o;
}

fe_optimizer *fe_sgd_new(fe_params *p, const fe_sgd_config *cfg) {
    fe_sgd_config c = cfg ? *cfg : (fe_sgd_config){0};
    if (!(c.momentum >= 0) || !(c.weight_decay >= 0)) {
        fe_set_error(FE_ERR_ARG, "sgd: momentum %g and weight decay %g must be >= 0", c.momentum,
                     c.weight_decay);
        return NULL;
    }
    fe_optimizer *o = make(OPT_SGD, p);
    if (!o) return NULL;
    o->sgd = c;
    if (c.momentum > 0) {
        fe_scope *s = fe__scope_suspend();
        bool ok = true;
        for (int i = 0; i < o->n && ok; i++) {
            slot *sl = &o->slots[i];
            sl->s0 = zeros_state(fe_params_at(p, sl->param));
            sl->name0 = state_name(fe_params_name(p, sl->param), "momentum_buffer");
            ok = sl->s0 && sl->name0;
        }
        fe__scope_resume(s);
        if (!ok) {
            if (fe_last_status() == FE_OK) fe_set_error(FE_ERR_OOM, "sgd: out of memory for state");
            fe_optimizer_free(o);
            return NULL;
        }
    }
    return o;
}

fe_optimizer *fe_adamw_new(fe_params *p, const fe_adamw_config *cfg) {
    fe_adamw_config c = cfg ? *cfg : fe_adamw_defaults();
    if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1) || !(c.eps >= 0) ||
        !(c.weight_decay >= 0)) {
        fe_set_error(FE_ERR_ARG,
                     "adamw: betas (%g, %g) must lie in [0, 1), eps %g and weight "
                     "decay %g must be >= 0",
                     c.beta1, c.beta2, c.eps, c.weight_decay);
        return NULL;
    }
    fe_optimizer *o = make(OPT_ADAMW, p);
    if (o) o->adamw = c;
    return o;
}

/* The update of one parameter; runs inside a scope with the tape off. */
static fe_status sgd_update(fe_optimizer *o, slot *sl, fe_tensor *p, fe_tensor *grad, double lr) {
    fe_dtype sdt = state_dtype(p);
    fe_tensor *g = fe_dtype_of(grad) == sdt ? grad : fe_cast(grad, sdt);
    fe_tensor *w = fe_dtype_of(p) == sdt ? p : fe_cast(p, sdt); /* the weights in state precision */
    if (!g || !w) return fe_last_status();
    fe_status st = FE_OK;
    if (o->sgd.weight_decay > 0 && !fe_params_no_decay(o->params, sl->param)) {
        g = fe_add(g, fe_scale(w, o->sgd.weight_decay)); /* g + wd * p */
        if (!g) return fe_last_status();
    }
    fe_tensor *upd = g;
    if (sl->s0) { /* buf = momentum * buf + g */
        st = fe_scale_(sl->s0, o->sgd.momentum);
        if (!st) st = fe_add_(sl->s0, g, 1.0);
        upd = sl->s0;
    }
    if (!st) st = fe_add_(w, upd, -lr);
    if (!st && w != p) st = fe_copy_(p, w);
    return st;
}

static fe_status adamw_update(fe_optimizer *o, slot *sl, fe_tensor *p, fe_tensor *grad, double lr) {
    const fe_adamw_config *c = &o->adamw;
    fe_dtype sdt = state_dtype(p);
    fe_tensor *g = fe_dtype_of(grad) == sdt ? grad : fe_cast(grad, sdt);
    fe_tensor *w = fe_dtype_of(p) == sdt ? p : fe_cast(p, sdt);
    if (!g || !w) return fe_last_status();
    double t = (double)o->step;
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    fe_tensor *m = sl->s0, *v = sl->s1;
    fe_status st = fe_scale_(m, c->beta1); /* m = b1 m + (1 - b1) g */
    if (!st) st = fe_add_(m, g, 1.0 - c->beta1);
    if (!st) st = fe_scale_(v, c->beta2); /* v = b2 v + (1 - b2) g^2 */
    if (!st) st = fe_add_(v, fe_square(g), 1.0 - c->beta2);
    if (st) return st;
    /* denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom */
    fe_tensor *denom = fe_add_scalar(fe_scale(fe_sqrt(v), 1.0 / sqrt(bc2)), c->eps);
    fe_tensor *upd = fe_div(m, denom);
    if (!upd) return fe_last_status();
    if (c->weight_decay > 0 && !fe_params_no_decay(o->params, sl->param))
        st = fe_scale_(w, 1.0 - lr * c->weight_decay); /* decoupled decay first, as PyTorch */
    if (!st) st = fe_add_(w, upd, -lr / bc1);
    if (!st && w != p) st = fe_copy_(p, w);
    return st;
}

/* True unless FE_FUSED_OPTIM=0 asks for the composed-ops path. */
static bool fused_allowed(void) {
    const char *e = getenv("FE_FUSED_OPTIM");
    return !(e && e[0] == '0' && e[1] == '\0');
}

void fe__adamw_plan_free(fe__adamw_plan *pl) {
    free(pl->p), free(pl->wd);
    *pl = (fe__adamw_plan){0};
}

/* t can be read in place by a multi-tensor kernel on dev. */
static bool flat_on(const fe_tensor *t, fe_device dev) {
    fe_device d = fe_device_of(t);
    return d.type == dev.type && d.index == dev.index && fe_is_contiguous(t) &&
           fe_dtype_is_float(fe_dtype_of(t));
}

fe_status fe__adamw_plan_make(fe_optimizer *o, fe_params *grads, fe_params *copies,
                              fe__adamw_plan *pl) {
    *pl = (fe__adamw_plan){0};
    int np = fe_params_count(o->params);
    if (o->kind != OPT_ADAMW || !fused_allowed() || (grads && fe_params_count(grads) != np) ||
        (copies && fe_params_count(copies) != np))
        return FE_OK;
    size_t cap = (size_t)(o->n ? o->n : 1);
    pl->p = malloc(cap * 5 * sizeof *pl->p);
    pl->wd = malloc(cap * sizeof *pl->wd);
    if (!pl->p || !pl->wd) {
        fe__adamw_plan_free(pl);
        return fe_set_error(FE_ERR_OOM, "adamw: out of host memory");
    }
    pl->g = pl->p + cap, pl->m = pl->g + cap, pl->v = pl->m + cap, pl->copy = pl->v + cap;
    bool ok = true;
    fe_device dev = FE_DEVICE_CPU;
    for (int i = 0; i < o->n && ok; i++) {
        slot *sl = &o->slots[i];
        fe_tensor *t = fe_params_at(o->params, sl->param);
        fe_tensor *gr = fe_grad(grads ? fe_params_at(grads, sl->param) : t);
        if (!gr) continue;
        fe_tensor *c = copies ? fe_params_at(copies, sl->param) : NULL;
        int k = pl->n++;
        if (k == 0) dev = fe_device_of(t), pl->be = fe__be(t);
        ok = flat_on(t, dev) && flat_on(gr, dev) && fe_numel(gr) == fe_numel(t) &&
             (!c || (flat_on(c, dev) && fe_numel(c) == fe_numel(t)));
        pl->p[k] = t, pl->g[k] = gr, pl->m[k] = sl->s0, pl->v[k] = sl->s1, pl->copy[k] = c;
        pl->wd[k] = fe_params_no_decay(o->params, sl->param) ? 0.0 : o->adamw.weight_decay;
    }
    pl->ok = ok && (pl->n == 0 || (pl->be && pl->be->adamw));
    if (!pl->ok) fe__adamw_plan_free(pl);
    return FE_OK;
}

fe_status fe__adamw_plan_run(fe_optimizer *o, const fe__adamw_plan *pl, double lr, double unscale,
                             const fe_tensor *grad_scale) {
    o->step++;
    if (pl->n == 0) return FE_OK;
    const fe_adamw_config *c = &o->adamw;
    double t = (double)o->step;
    fe_adamw_args a = {.lr = lr,
                       .beta1 = c->beta1,
                       .beta2 = c->beta2,
                       .eps = c->eps,
                       .bc1 = 1.0 - pow(c->beta1, t),
                       .bc2 = 1.0 - pow(c->beta2, t),
                       .weight_decay = pl->wd,
                       .unscale = unscale,
                       .grad_scale = grad_scale,
                       .copy = pl->copy};
    return pl->be->adamw(pl->n, pl->p, (const fe_tensor *const *)pl->g, pl->m, pl->v, &a);
}

fe_params *fe__optimizer_params(fe_optimizer *o) { return o ? o->params : NULL; }

fe_status fe_optimizer_step(fe_optimizer *o, double lr) {
    if (!o) return fe_set_error(FE_ERR_ARG, "optimizer step: NULL optimizer");
    if (!(lr >= 0) || isinf(lr))
        return fe_set_error(FE_ERR_ARG, "optimizer step: learning rate %g must be finite and >= 0",
                            lr);
    if (o->kind == OPT_ADAMW) { /* one fused pass per tensor when the backend has it */
        fe__adamw_plan pl;
        fe_status st = fe__adamw_plan_make(o, NULL, NULL, &pl);
        if (st) return st;
        if (pl.ok) {
            st = fe__adamw_plan_run(o, &pl, lr, 0.0, NULL);
            fe__adamw_plan_free(&pl);
            return st;
        }
    }
    o->step++;
    bool prev = fe_set_grad_enabled(false);
    fe_status st = FE_OK;
    for (int i = 0; i < o->n && !st; i++) {
        slot *sl = &o->slots[i];
        fe_tensor *p = fe_params_at(o->params, sl->param);
        fe_tensor *g = fe_grad(p);
        if (!g) continue;
        fe_scope *s = fe_scope_begin();
        st = o->kind == OPT_SGD ? sgd_update(o, sl, p, g, lr) : adamw_update(o, sl, p, g, lr);
        fe_scope_end(s);
    }
    fe_set_grad_enabled(prev);
    return st;
}

int64_t fe_optimizer_steps(const fe_optimizer *o) { return o ? o->step : 0; }

int fe_optimizer_state_count(const fe_optimizer *o) {
    if (!o) return 0;
    int n = 1;
    for (int i = 0; i < o->n; i++)
        n += (o->slots[i].s0 != NULL) + (o->slots[i].s1 != NULL);
    return n;
}

fe_status fe_optimizer_state_item(const fe_optimizer *o, int i, fe_state_item *out) {
    if (!o || !out || i < 0 || i >= fe_optimizer_state_count(o))
        return fe_set_error(FE_ERR_ARG, "optimizer state: no item %d", i);
    if (i == 0) {
        *out = (fe_state_item){"step", NULL, (double)o->step};
        return FE_OK;
    }
    int k = 1;
    for (int j = 0; j < o->n; j++) {
        const slot *sl = &o->slots[j];
        if (sl->s0 && k++ == i) {
            *out = (fe_state_item){sl->name0, sl->s0, 0.0};
            return FE_OK;
        }
        if (sl->s1 && k++ == i) {
            *out = (fe_state_item){sl->name1, sl->s1, 0.0};
            return FE_OK;
        }
    }
    return fe_set_error(FE_ERR_STATE, "optimizer state: item %d not found", i);
}

fe_status fe_optimizer_set_scalar(fe_optimizer *o, const char *name, double value) {
    if (!o || !name) return fe_set_error(FE_ERR_ARG, "optimizer: NULL optimizer or name");
    if (strcmp(name, "step") != 0)
        return fe_set_error(FE_ERR_ARG, "optimizer: no scalar state named '%s'", name);
    if (!(value >= 0) || value != floor(value))
        return fe_set_error(FE_ERR_ARG, "optimizer: step must be a whole number >= 0, got %g",
                            value);
    o->step = (int64_t)value;
    return FE_OK;
}
