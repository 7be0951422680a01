/* The parameter registry: named long-lived tensors in insertion order. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <stdio.h>

typedef struct param_entry {
    char *name;
    fe_tensor *t;
    bool no_decay;
} param_entry;

struct fe_params {
    param_entry *items;
    int n, cap;
};

fe_params *fe_params_new(void) {
    fe_params *p = calloc(1, sizeof *p);
    if (!p) fe_set_error(FE_ERR_OOM, "fe_params_new: out of host memory");
    return p;
}

void fe_params_free(fe_params *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        free(p->items[i].name);
        fe_free(p->items[i].t);
    }
    free(p->items);
    free(p);
}

int fe_params_find(const fe_params *p, const char *name) {
    if (!p || !name) return -1;
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->items[i].name, name)) return i;
    return -1;
}

int fe_params_add(fe_params *p, const char *name, fe_tensor *t, bool no_decay) {
    if (t) fe_keep(t);
    if (!p || !name || !t) {
        /* a NULL tensor usually comes from a failed creation whose error is already set */
        if (!p || !name || fe_last_status() == FE_OK)
            fe_set_error(FE_ERR_ARG, "fe_params_add: NULL registry, name or tensor");
        fe_free(t);
        return -1;
    }
    if (fe_params_find(p, name) >= 0) {
        fe_set_error(FE_ERR_ARG, "fe_params_add: a parameter named '%s' already exists", name);
        fe_free(t);
        return -1;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        param_entry *items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) {
            fe_set_error(FE_ERR_OOM, "fe_params_add: out of host memory");
            fe_free(t);
            return -1;
        }
        p->items = items;
        p->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        fe_set_error(FE_ERR_OOM, "fe_params_add: out of host memory");
        fe_free(t);
        return -1;
    }
    p->items[p->n] = (param_entry){copy, t, no_decay};
    return p->n++;
}

static int add_made(fe_params *p, const char *name, fe_tensor *t, bool no_decay) {
    if (!t) return -1;
    if (fe_dtype_is_float(fe_dtype_of(t)) && fe_set_requires_grad(t, true)) {
        fe_free(t);
        return -1;
    }
    return fe_params_add(p, name, t, no_decay);
}

int fe_params_add_normal(fe_params *p, const char *name, int ndim, const int64_t *shape, double std,
                         fe_dtype dt, fe_device dev, bool no_decay) {
    if (!p || !name) {
        fe_set_error(FE_ERR_ARG, "fe_params_add_normal: NULL registry or name");
        return -1;
    }
    return add_made(p, name, fe_randn(ndim, shape, 0.0, std, dt, dev), no_decay);
}

int fe_params_add_full(fe_params *p, const char *name, int ndim, const int64_t *shape, double value,
                       fe_dtype dt, fe_device dev, bool no_decay) {
    if (!p || !name) {
        fe_set_error(FE_ERR_ARG, "fe_params_add_full: NULL registry or name");
        return -1;
    }
    return add_made(p, name, fe_full(ndim, shape, value, dt, dev), no_decay);
}

int fe_params_count(const fe_params *p) { return p ? p->n : 0; }

int64_t fe_params_numel(const fe_params *p) {
    int64_t n = 0;
    for (int i = 0; p && i < p->n; i++)
        n += fe_numel(p->items[i].t);
    return n;
}

fe_tensor *fe_params_get(const fe_params *p, const char *name) {
    int i = fe_params_find(p, name);
    if (i < 0) {
        fe_set_error(FE_ERR_ARG, "fe_params_get: no parameter named '%s'", name ? name : "(null)");
        return NULL;
    }
    return p->items[i].t;
}

fe_tensor *fe_params_at(const fe_params *p, int i) {
    return p && i >= 0 && i < p->n ? p->items[i].t : NULL;
}

const char *fe_params_name(const fe_params *p, int i) {
    return p && i >= 0 && i < p->n ? p->items[i].name : NULL;
}

bool fe_params_no_decay(const fe_params *p, int i) {
    return p && i >= 0 && i < p->n ? p->items[i].no_decay : false;
}

fe_status fe_params_replace(fe_params *p, int i, fe_tensor *t) {
    if (t) fe_keep(t);
    if (!p || !t || i < 0 || i >= p->n) {
        fe_free(t);
        return fe_set_error(FE_ERR_ARG, "fe_params_replace: no slot %d or a NULL tensor", i);
    }
    if (!fe__same_shape(t, p->items[i].t)) {
        char a[96], b[96];
        fe_status st = fe_set_error(
            FE_ERR_SHAPE, "fe_params_replace: '%s' is %s, the new tensor %s", p->items[i].name,
            fe_shape_str(p->items[i].t, a, sizeof a), fe_shape_str(t, b, sizeof b));
        fe_free(t);
        return st;
    }
    fe_free(p->items[i].t);
    p->items[i].t = t;
    return FE_OK;
}

void fe_params_zero_grad(fe_params *p) {
    for (int i = 0; p && i < p->n; i++)
        fe_zero_grad(p->items[i].t);
}

fe_status fe_params_set_requires_grad(fe_params *p, bool on) {
    if (!p) return fe_set_error(FE_ERR_ARG, "fe_params_set_requires_grad: NULL registry");
    for (int i = 0; i < p->n; i++) {
        if (!fe_dtype_is_float(fe_dtype_of(p->items[i].t))) continue;
        fe_status st = fe_set_requires_grad(p->items[i].t, on);
        if (st) return st;
    }
    return FE_OK;
}
