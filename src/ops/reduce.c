/* Reductions: sum, mean and max over chosen dims. */
#include "ops/ops_internal.h"

/* Fill keep[] with the keepdim shape of reducing a over dims; false on a bad dim. */
static bool reduced_shape(const fe_tensor *a, int ndims, const int *dims, int64_t *keep,
                          bool *mask, const char *op) {
    memcpy(keep, a->shape, sizeof(int64_t) * FE_MAX_DIMS);
    for (int i = 0; i < FE_MAX_DIMS; i++) mask[i] = ndims == 0;
    if (ndims && !dims) {
        fe_set_error(FE_ERR_ARG, "%s: dims is NULL", op);
        return false;
    }
    for (int i = 0; i < ndims; i++) {
        int d = fe__norm_dim(dims[i], a->ndim, op);
        if (d < 0) return false;
        mask[d] = true;
    }
    for (int i = 0; i < a->ndim; i++)
        if (mask[i]) keep[i] = 1;
    return true;
}

/* Run the reduce kernel and drop reduced dims unless keepdim (no tape). */
static fe_tensor *reduce_raw(fe_reduce_op op, fe_tensor *a, const int64_t *keep, const bool *mask,
                             bool keepdim) {
    fe_tensor *c = fe__contig_raw(a);
    fe_tensor *out = c ? fe__alloc(a->ndim, keep, a->dtype, a->st->dev) : NULL;
    fe_status st = out ? fe__be(a)->reduce(op, out, c) : fe_last_status();
    fe_free(c);
    out = fe__done(out, st);
    if (!out || keepdim) return out;
    int64_t shape[FE_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < a->ndim; i++)
        if (!mask[i]) shape[nd++] = a->shape[i];
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *r = fe_reshape(out, nd, shape);
    fe_set_grad_enabled(prev);
    fe_free(out);
    return r;
}

/* g reshaped to the keepdim shape of node n's reduction. */
static fe_tensor *grad_keepdim(fe_node *n, fe_tensor *g) {
    fe_tensor *a = n->in[0];
    int64_t keep[FE_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) keep[i] = n->i[i] ? 1 : a->shape[i];
    return fe_reshape(g, a->ndim, keep);
}

static fe_status sum_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *gk = grad_keepdim(n, g);
    gin[0] = gk ? fe__expand_raw(gk, n->in[0]->ndim, n->in[0]->shape) : NULL;
    return gin[0] ? FE_OK : fe_last_status();
}

static fe_status max_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *a = n->in[0];
    fe_tensor *ok = grad_keepdim(n, out), *gk = grad_keepdim(n, g);
    fe_tensor *hit = ok && gk ? fe__binary_raw(FE_B_EQ, a, ok, 1, "max backward") : NULL;
    int dims[FE_MAX_DIMS], nd = 0;
    for (int i = 0; i < a->ndim; i++)
        if (n->i[i]) dims[nd++] = i;
    fe_tensor *cnt = hit ? fe_sum(hit, nd, dims, true) : NULL;
    gin[0] = cnt ? fe_mul(hit, fe_div(gk, cnt)) : NULL;
    return gin[0] ? FE_OK : fe_last_status();
}

static fe_tensor *reduction(const char *name, fe_reduce_op op, fe_backward_fn bw, fe_tensor *a,
                            int ndims, const int *dims, bool keepdim) {
    if (fe__any_null(name, 1, a) || fe__check_float(name, a)) return NULL;
    int64_t keep[FE_MAX_DIMS];
    bool mask[FE_MAX_DIMS];
    if (!reduced_shape(a, ndims, dims, keep, mask, name)) return NULL;
    fe_tensor *out = reduce_raw(op, a, keep, mask, keepdim);
    if (out && fe__needs_grad(1, &a)) {
        fe_node *n = fe__record(out, name, bw, 1, &a);
        if (!n) return fe__done(out, FE_ERR_OOM);
        for (int i = 0; i < a->ndim; i++) n->i[i] = mask[i];
    }
    return out;
}

fe_tensor *fe_sum(fe_tensor *a, int ndims, const int *dims, bool keepdim) {
    return reduction("sum", FE_R_SUM, sum_backward, a, ndims, dims, keepdim);
}

fe_tensor *fe_max(fe_tensor *a, int ndims, const int *dims, bool keepdim) {
    return reduction("max", FE_R_MAX, max_backward, a, ndims, dims, keepdim);
}

fe_tensor *fe_mean(fe_tensor *a, int ndims, const int *dims, bool keepdim) {
    if (fe__any_null("mean", 1, a)) return NULL;
    int64_t keep[FE_MAX_DIMS];
    bool mask[FE_MAX_DIMS];
    if (!reduced_shape(a, ndims, dims, keep, mask, "mean")) return NULL;
    int64_t count = fe_numel(a) / (fe__numel_of(a->ndim, keep) ? fe__numel_of(a->ndim, keep) : 1);
    fe_tensor *s = fe_sum(a, ndims, dims, keepdim);
    fe_tensor *m = s ? fe_scale(s, count ? 1.0 / (double)count : 0.0) : NULL;
    fe_free(s);
    return m;
}
