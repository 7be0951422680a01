/* Tensors: headers over reference-counted storage, and the scopes that own them. */
#include "backends/backend.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* ---- scopes -------------------------------------------------------------- */

struct fe_scope {
    fe_scope *parent;
    fe_tensor **items;
    int64_t n, cap;
};

static _Thread_local fe_scope *g_scope = NULL;
static int64_t g_live = 0; /* tensors alive (atomic updates) */

int64_t fe_live_tensors(void) { return __atomic_load_n(&g_live, __ATOMIC_RELAXED); }

fe_scope *fe_scope_begin(void) {
    fe_scope *s = calloc(1, sizeof *s);
    if (!s) {
        fe_set_error(FE_ERR_OOM, "fe_scope_begin: out of host memory");
        return NULL;
    }
    s->parent = g_scope;
    g_scope = s;
    return s;
}

static void scope_add(fe_scope *s, fe_tensor *t) {
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 64;
        fe_tensor **items = realloc(s->items, (size_t)cap * sizeof *items);
        if (!items) return; /* leave unowned; the caller still holds the reference */
        s->items = items;
        s->cap = cap;
    }
    t->scope = s;
    t->scope_idx = s->n;
    s->items[s->n++] = t;
}

static void scope_remove(fe_tensor *t) {
    fe_scope *s = t->scope;
    int64_t i = t->scope_idx;
    s->items[i] = s->items[--s->n];
    s->items[i]->scope_idx = i;
    t->scope = NULL;
}

void fe_scope_end(fe_scope *s) {
    if (!s) return;
    /* end scopes opened inside s first */
    while (g_scope && g_scope != s) fe_scope_end(g_scope);
    while (s->n > 0) {
        fe_tensor *t = s->items[s->n - 1];
        scope_remove(t);
        fe__release(t);
    }
    if (g_scope == s) g_scope = s->parent;
    free(s->items);
    free(s);
}

fe_scope *fe__scope_suspend(void) {
    fe_scope *s = g_scope;
    g_scope = NULL;
    return s;
}

void fe__scope_resume(fe_scope *s) { g_scope = s; }

/* ---- shapes -------------------------------------------------------------- */

int64_t fe__numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

void fe__contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
}

fe_status fe__check_shape(int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > FE_MAX_DIMS)
        return fe_set_error(FE_ERR_SHAPE, "tensor rank %d is outside 0..%d", ndim, FE_MAX_DIMS);
    if (ndim > 0 && !shape) return fe_set_error(FE_ERR_ARG, "shape is NULL");
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fe_set_error(FE_ERR_SHAPE, "dim %d has negative size %" PRId64, i, shape[i]);
        if (shape[i] > 0 && n > INT64_MAX / 16 / shape[i])
            return fe_set_error(FE_ERR_SHAPE, "shape too large");
        n *= shape[i];
    }
    return FE_OK;
}

int fe__norm_dim(int d, int ndim, const char *op) {
    int r = d < 0 ? d + ndim : d;
    if (r < 0 || r >= ndim) {
        fe_set_error(FE_ERR_RANGE, "%s: dim %d out of range for a rank-%d tensor", op, d, ndim);
        return -1;
    }
    return r;
}

bool fe__same_shape(const fe_tensor *a, const fe_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

bool fe__same_device(const fe_tensor *a, const fe_tensor *b) {
    return a->st->dev.type == b->st->dev.type && a->st->dev.index == b->st->dev.index;
}

/* ---- life cycle ---------------------------------------------------------- */

static fe_tensor *header(fe_storage *st, fe_dtype dt, int ndim, const int64_t *shape) {
    fe_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        fe_set_error(FE_ERR_OOM, "out of host memory for a tensor header");
        return NULL;
    }
    t->refcnt = 1;
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    fe__contiguous_strides(ndim, shape, t->stride);
    t->st = st;
    st->refcnt++;
    __atomic_add_fetch(&g_live, 1, __ATOMIC_RELAXED);
    if (g_scope) scope_add(g_scope, t);
    return t;
}

static void storage_release(fe_storage *st) {
    if (--st->refcnt > 0) return;
    if (!st->borrowed && st->data) {
        const fe_backend *be = fe_backend_get(st->dev.type);
        if (be) be->free(st->dev, st->data, st->nbytes);
    }
    free(st);
}

fe_tensor *fe__alloc(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev) {
    if (fe__check_shape(ndim, shape) != FE_OK) return NULL;
    if ((unsigned)dt >= FE_DTYPE_COUNT) {
        fe_set_error(FE_ERR_DTYPE, "unknown dtype %d", (int)dt);
        return NULL;
    }
    const fe_backend *be = fe_backend_get(dev.type);
    if (!be) {
        char b[32];
        fe_set_error(FE_ERR_DEVICE, "device %s is not available in this build",
                     fe_device_str(dev, b, sizeof b));
        return NULL;
    }
    fe_storage *st = calloc(1, sizeof *st);
    if (!st) {
        fe_set_error(FE_ERR_OOM, "out of host memory");
        return NULL;
    }
    st->dev = dev;
    st->nbytes = (size_t)fe__numel_of(ndim, shape) * fe_dtype_size(dt);
    if (be->alloc(dev, st->nbytes, &st->data) != FE_OK) {
        free(st);
        return NULL;
    }
    fe_tensor *t = header(st, dt, ndim, shape);
    if (!t) {
        st->refcnt = 1;
        storage_release(st);
    }
    return t;
}

fe_tensor *fe__wrap(fe_storage *st, fe_dtype dt, int ndim, const int64_t *shape) {
    return header(st, dt, ndim, shape);
}

fe_tensor *fe__view(const fe_tensor *base, int ndim, const int64_t *shape, const int64_t *stride,
                    int64_t offset) {
    fe_tensor *t = header(base->st, base->dtype, ndim, shape);
    if (!t) return NULL;
    if (ndim) memcpy(t->stride, stride, (size_t)ndim * sizeof *stride);
    t->offset = offset;
    return t;
}

void fe__retain(fe_tensor *t) { t->refcnt++; }

static void node_free(fe_node *n) {
    for (int i = 0; i < n->n_in; i++)
        if (n->in[i]) fe__release(n->in[i]);
    for (int i = 0; i < FE_NODE_MAX_SAVED; i++)
        if (n->saved[i]) fe__release(n->saved[i]);
    if (n->ctx_free) n->ctx_free(n->ctx);
    free(n);
}

void fe__release(fe_tensor *t) {
    if (!t || --t->refcnt > 0) return;
    if (t->scope) scope_remove(t);
    if (t->node) node_free(t->node);
    if (t->grad) fe__release(t->grad);
    if (t->bw_grad) fe__release(t->bw_grad);
    storage_release(t->st);
    __atomic_sub_fetch(&g_live, 1, __ATOMIC_RELAXED);
    free(t);
}

void fe_free(fe_tensor *t) {
    if (!t) return;
    if (t->scope) scope_remove(t);
    fe__release(t);
}

fe_tensor *fe_keep(fe_tensor *t) {
    if (t && t->scope) scope_remove(t);
    return t;
}

void *fe__ptr(const fe_tensor *t) {
    return (char *)t->st->data + t->offset * (int64_t)fe_dtype_size(t->dtype);
}

/* ---- creation ------------------------------------------------------------ */

fe_tensor *fe_empty(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev) {
    return fe__alloc(ndim, shape, dt, dev);
}

fe_tensor *fe_full(int ndim, const int64_t *shape, double value, fe_dtype dt, fe_device dev) {
    fe_tensor *t = fe__alloc(ndim, shape, dt, dev);
    if (t && fe__be(t)->fill(t, value) != FE_OK) {
        fe_free(t);
        return NULL;
    }
    return t;
}

fe_tensor *fe_zeros(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev) {
    return fe_full(ndim, shape, 0.0, dt, dev);
}

fe_tensor *fe_ones(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev) {
    return fe_full(ndim, shape, 1.0, dt, dev);
}

fe_tensor *fe_empty_like(const fe_tensor *t) {
    if (fe__any_null("fe_empty_like", 1, t)) return NULL;
    return fe__alloc(t->ndim, t->shape, t->dtype, t->st->dev);
}

fe_tensor *fe_zeros_like(const fe_tensor *t) {
    if (fe__any_null("fe_zeros_like", 1, t)) return NULL;
    return fe_zeros(t->ndim, t->shape, t->dtype, t->st->dev);
}

fe_tensor *fe_arange(double start, double end, double step, fe_dtype dt, fe_device dev) {
    if (step == 0 || (end - start) / step < 0) {
        fe_set_error(FE_ERR_ARG, "fe_arange: step %g cannot go from %g to %g", step, start, end);
        return NULL;
    }
    int64_t n = (int64_t)ceil((end - start) / step);
    fe_tensor *t = fe__alloc(1, &n, dt, dev);
    if (t && fe__be(t)->arange(t, start, step) != FE_OK) {
        fe_free(t);
        return NULL;
    }
    return t;
}

static fe_tensor *random_tensor(int ndim, const int64_t *shape, fe_rand_kind kind, double a,
                                double b, fe_dtype dt, fe_device dev) {
    if (!fe_dtype_is_float(dt)) {
        fe_set_error(FE_ERR_DTYPE, "random tensors need a float dtype, not %s", fe_dtype_name(dt));
        return NULL;
    }
    fe_tensor *t = fe__alloc(ndim, shape, dt, dev);
    if (!t) return NULL;
    uint64_t seed, block0 = fe__rng_reserve(fe_numel(t), &seed);
    if (fe__be(t)->rand(t, seed, block0, kind, a, b) != FE_OK) {
        fe_free(t);
        return NULL;
    }
    return t;
}

fe_tensor *fe_rand(int ndim, const int64_t *shape, double lo, double hi, fe_dtype dt,
                   fe_device dev) {
    return random_tensor(ndim, shape, FE_RAND_UNIFORM, lo, hi, dt, dev);
}

fe_tensor *fe_randn(int ndim, const int64_t *shape, double mean, double std, fe_dtype dt,
                    fe_device dev) {
    return random_tensor(ndim, shape, FE_RAND_NORMAL, mean, std, dt, dev);
}

fe_tensor *fe_from_data(const void *data, int ndim, const int64_t *shape, fe_dtype dt,
                        fe_device dev) {
    if (!data) {
        fe_set_error(FE_ERR_ARG, "fe_from_data: data is NULL");
        return NULL;
    }
    fe_tensor *t = fe__alloc(ndim, shape, dt, dev);
    if (t && fe_from_host(t, data, dt) != FE_OK) {
        fe_free(t);
        return NULL;
    }
    return t;
}

/* ---- queries ------------------------------------------------------------- */

int fe_ndim(const fe_tensor *t) { return t ? t->ndim : 0; }

int64_t fe_dim(const fe_tensor *t, int d) {
    if (!t) return 0;
    int r = d < 0 ? d + t->ndim : d;
    return (r >= 0 && r < t->ndim) ? t->shape[r] : 0;
}

const int64_t *fe_shape(const fe_tensor *t) { return t ? t->shape : NULL; }
const int64_t *fe_strides(const fe_tensor *t) { return t ? t->stride : NULL; }
int64_t fe_numel(const fe_tensor *t) { return t ? fe__numel_of(t->ndim, t->shape) : 0; }
fe_dtype fe_dtype_of(const fe_tensor *t) { return t ? t->dtype : FE_F32; }
fe_device fe_device_of(const fe_tensor *t) { return t ? t->st->dev : FE_DEVICE_CPU; }

bool fe_is_contiguous(const fe_tensor *t) {
    if (!t) return false;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

const char *fe_shape_str(const fe_tensor *t, char *buf, size_t n) {
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %" PRId64 : "%" PRId64, t->shape[i]);
    char dev[32];
    if (k < n)
        snprintf(buf + k, n - k, "%s) %s %s", t->ndim == 1 ? "," : "", fe_dtype_name(t->dtype),
                 fe_device_str(t->st->dev, dev, sizeof dev));
    return buf;
}

void *fe_data(const fe_tensor *t) {
    if (!t || t->st->dev.type != FE_CPU) return NULL;
    return fe__ptr(t);
}

/* ---- copies ---------------------------------------------------------------- */

fe_status fe_copy_(fe_tensor *dst, const fe_tensor *src) {
    if (fe__any_null("fe_copy_", 2, dst, src)) return FE_ERR_ARG;
    if (fe_numel(dst) != fe_numel(src) || !fe__same_shape(dst, src)) {
        char a[96], b[96];
        return fe_set_error(FE_ERR_SHAPE, "fe_copy_: shapes differ: %s vs %s",
                            fe_shape_str(dst, a, sizeof a), fe_shape_str(src, b, sizeof b));
    }
    if (fe__same_device(dst, src)) return fe__be(dst)->copy(dst, src);
    /* across devices: stage through a contiguous tensor of src's dtype on the host side */
    fe_scope *saved = fe__scope_suspend();
    fe_status st = FE_OK;
    fe_tensor *s = NULL, *d = NULL;
    if (src->st->dev.type == FE_CPU || dst->st->dev.type == FE_CPU) {
        /* pack src contiguously on its device, move the bytes, unpack into dst */
        bool h2d = src->st->dev.type == FE_CPU;
        s = fe__alloc(src->ndim, src->shape, src->dtype, src->st->dev);
        d = fe__alloc(dst->ndim, dst->shape, src->dtype, dst->st->dev);
        if (!s || !d) st = fe_last_status();
        if (!st) st = fe__be(s)->copy(s, src);
        const fe_tensor *gpu = h2d ? d : s;
        if (!st)
            st = fe__be(gpu)->memcpy(gpu->st->dev, d->st->data, s->st->data, s->st->nbytes, h2d ? 0 : 1);
        if (!st) st = fe__be(dst)->copy(dst, d);
    } else {
        st = fe_set_error(FE_ERR_DEVICE, "fe_copy_: copies between two GPUs go through the host");
    }
    fe_free(s);
    fe_free(d);
    fe__scope_resume(saved);
    return st;
}

fe_status fe_to_host(const fe_tensor *t, void *dst, fe_dtype dt) {
    if (fe__any_null("fe_to_host", 2, t, dst)) return FE_ERR_ARG;
    fe_scope *saved = fe__scope_suspend();
    fe_storage st = {.data = dst, .nbytes = (size_t)fe_numel(t) * fe_dtype_size(dt),
                     .dev = FE_DEVICE_CPU, .refcnt = 1, .borrowed = true};
    fe_tensor *h = fe__wrap(&st, dt, t->ndim, t->shape);
    fe_status s = h ? fe_copy_(h, t) : fe_last_status();
    if (h) {
        h->st = NULL; /* stack storage: detach before freeing the header */
        __atomic_sub_fetch(&g_live, 1, __ATOMIC_RELAXED);
        free(h);
    }
    fe__scope_resume(saved);
    return s;
}

fe_status fe_from_host(fe_tensor *t, const void *src, fe_dtype dt) {
    if (fe__any_null("fe_from_host", 2, t, src)) return FE_ERR_ARG;
    fe_scope *saved = fe__scope_suspend();
    fe_storage st = {.data = (void *)src, .nbytes = (size_t)fe_numel(t) * fe_dtype_size(dt),
                     .dev = FE_DEVICE_CPU, .refcnt = 1, .borrowed = true};
    fe_tensor *h = fe__wrap(&st, dt, t->ndim, t->shape);
    fe_status s = h ? fe_copy_(t, h) : fe_last_status();
    if (h) {
        h->st = NULL;
        __atomic_sub_fetch(&g_live, 1, __ATOMIC_RELAXED);
        free(h);
    }
    fe__scope_resume(saved);
    return s;
}

double fe_item(const fe_tensor *t) {
    if (fe__any_null("fe_item", 1, t)) return NAN;
    if (fe_numel(t) != 1) {
        fe_set_error(FE_ERR_SHAPE, "fe_item: tensor has %" PRId64 " elements, not 1", fe_numel(t));
        return NAN;
    }
    double v = NAN;
    if (fe_to_host(t, &v, FE_F64) != FE_OK) return NAN;
    return v;
}

fe_tensor *fe_to_device(const fe_tensor *t, fe_device dev) {
    if (fe__any_null("fe_to_device", 1, t)) return NULL;
    fe_tensor *o = fe__alloc(t->ndim, t->shape, t->dtype, dev);
    if (o && fe_copy_(o, t) != FE_OK) {
        fe_free(o);
        return NULL;
    }
    return o;
}

fe_status fe_fill_(fe_tensor *t, double value) {
    if (fe__any_null("fe_fill_", 1, t)) return FE_ERR_ARG;
    if (fe_is_contiguous(t)) return fe__be(t)->fill(t, value);
    fe_scope *saved = fe__scope_suspend();
    fe_tensor *c = fe_full(t->ndim, t->shape, value, t->dtype, t->st->dev);
    fe_status s = c ? fe__be(t)->copy(t, c) : fe_last_status();
    fe_free(c);
    fe__scope_resume(saved);
    return s;
}
