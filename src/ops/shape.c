/* Shape ops: views (reshape, permute, slice, expand) and copies (contiguous,
 * cast, concat), each with its backward rule. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <stdio.h>

/* ---- reshape ------------------------------------------------------------------ */

static fe_status reshape_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    return (gin[0] = fe_reshape(g, n->in[0]->ndim, n->in[0]->shape)) ? FE_OK : fe_last_status();
}

/* Strides for viewing a as `shape` without a copy, if its layout allows. */
static bool view_strides(const fe_tensor *a, int nd, const int64_t *shape, int64_t *st) {
    if (fe_is_contiguous(a)) {
        fe__contiguous_strides(nd, shape, st);
        return true;
    }
    /* walk groups of old dims that multiply to groups of new dims */
    int i = 0, j = 0;
    while (i < a->ndim || j < nd) {
        if (i < a->ndim && a->shape[i] == 1) { i++; continue; }
        if (j < nd && shape[j] == 1) { st[j++] = 1; continue; }
        if (i >= a->ndim || j >= nd) return false;
        int i0 = i, j0 = j;
        int64_t po = a->shape[i++], pn = shape[j++];
        while (po != pn) {
            if (po < pn) {
                if (i >= a->ndim) return false;
                po *= a->shape[i++];
            } else {
                if (j >= nd) return false;
                pn *= shape[j++];
            }
        }
        /* old dims i0..i-1 must be contiguous among themselves */
        for (int k = i0; k < i - 1; k++)
            if (a->shape[k] != 1 && a->stride[k] != a->stride[k + 1] * a->shape[k + 1]) return false;
        int64_t s = a->stride[i - 1];
        for (int k = j - 1; k >= j0; k--) {
            st[k] = s;
            s *= shape[k];
        }
    }
    return true;
}

fe_tensor *fe_reshape(fe_tensor *a, int ndim, const int64_t *shape_in) {
    if (fe__any_null("reshape", 1, a)) return NULL;
    if (ndim < 0 || ndim > FE_MAX_DIMS || (ndim && !shape_in)) {
        fe_set_error(FE_ERR_SHAPE, "reshape: rank %d is outside 0..%d", ndim, FE_MAX_DIMS);
        return NULL;
    }
    int64_t shape[FE_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        shape[i] = shape_in[i];
        if (shape[i] == -1 && infer < 0)
            infer = i;
        else if (shape[i] < 0) {
            fe_set_error(FE_ERR_SHAPE, "reshape: bad size %" PRId64 " at dim %d", shape[i], i);
            return NULL;
        } else
            known *= shape[i];
    }
    int64_t n = fe_numel(a);
    if (infer >= 0) shape[infer] = known ? n / known : 0;
    if (fe__numel_of(ndim, shape) != n) {
        char b[96];
        fe_set_error(FE_ERR_SHAPE, "reshape: cannot view %s (%" PRId64 " elements) with %" PRId64
                     " elements", fe_shape_str(a, b, sizeof b), n, fe__numel_of(ndim, shape));
        return NULL;
    }
    int64_t st[FE_MAX_DIMS];
    fe_tensor *out;
    if (view_strides(a, ndim, shape, st)) {
        out = fe__view(a, ndim, shape, st, a->offset);
    } else {
        fe_tensor *c = fe__contig_raw(a);
        out = c ? fe__view(c, ndim, shape, (fe__contiguous_strides(ndim, shape, st), st), c->offset)
                : NULL;
        fe_free(c);
    }
    if (out && fe__needs_grad(1, &a) && !fe__record(out, "reshape", reshape_backward, 1, &a))
        return fe__done(out, FE_ERR_OOM);
    return out;
}

fe_tensor *fe_unsqueeze(fe_tensor *a, int dim) {
    if (fe__any_null("unsqueeze", 1, a)) return NULL;
    int d = fe__norm_dim(dim, a->ndim + 1, "unsqueeze");
    if (d < 0 || a->ndim == FE_MAX_DIMS) {
        if (d >= 0) fe_set_error(FE_ERR_SHAPE, "unsqueeze: tensor already has %d dims", FE_MAX_DIMS);
        return NULL;
    }
    int64_t shape[FE_MAX_DIMS];
    for (int i = 0, j = 0; i <= a->ndim; i++) shape[i] = i == d ? 1 : a->shape[j++];
    return fe_reshape(a, a->ndim + 1, shape);
}

fe_tensor *fe_squeeze(fe_tensor *a, int dim) {
    if (fe__any_null("squeeze", 1, a)) return NULL;
    int d = fe__norm_dim(dim, a->ndim, "squeeze");
    if (d < 0) return NULL;
    if (a->shape[d] != 1) {
        fe_set_error(FE_ERR_SHAPE, "squeeze: dim %d has size %" PRId64 ", not 1", dim, a->shape[d]);
        return NULL;
    }
    int64_t shape[FE_MAX_DIMS];
    for (int i = 0, j = 0; i < a->ndim; i++)
        if (i != d) shape[j++] = a->shape[i];
    return fe_reshape(a, a->ndim - 1, shape);
}

/* ---- permute ------------------------------------------------------------------- */

static fe_status permute_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    int inv[FE_MAX_DIMS];
    for (int i = 0; i < g->ndim; i++) inv[n->i[i]] = i;
    return (gin[0] = fe_permute(g, inv)) ? FE_OK : fe_last_status();
}

fe_tensor *fe_permute(fe_tensor *a, const int *perm) {
    if (fe__any_null("permute", 2, a, perm)) return NULL;
    int seen[FE_MAX_DIMS] = {0};
    int64_t shape[FE_MAX_DIMS], st[FE_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) {
        int p = perm[i];
        if (p < 0 || p >= a->ndim || seen[p]++) {
            fe_set_error(FE_ERR_ARG, "permute: entry %d (%d) is not a permutation of 0..%d", i, p,
                         a->ndim - 1);
            return NULL;
        }
        shape[i] = a->shape[p];
        st[i] = a->stride[p];
    }
    fe_tensor *out = fe__view(a, a->ndim, shape, st, a->offset);
    if (out && fe__needs_grad(1, &a)) {
        fe_node *n = fe__record(out, "permute", permute_backward, 1, &a);
        if (!n) return fe__done(out, FE_ERR_OOM);
        for (int i = 0; i < a->ndim; i++) n->i[i] = perm[i];
    }
    return out;
}

fe_tensor *fe_transpose(fe_tensor *a, int d0, int d1) {
    if (fe__any_null("transpose", 1, a)) return NULL;
    int x = fe__norm_dim(d0, a->ndim, "transpose"), y = x < 0 ? -1 : fe__norm_dim(d1, a->ndim, "transpose");
    if (x < 0 || y < 0) return NULL;
    int perm[FE_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) perm[i] = i;
    perm[x] = y;
    perm[y] = x;
    return fe_permute(a, perm);
}

/* ---- slice ------------------------------------------------------------------------ */

static fe_tensor *slice_raw(fe_tensor *a, int d, int64_t start, int64_t len, int64_t step) {
    int64_t shape[FE_MAX_DIMS], st[FE_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    memcpy(st, a->stride, sizeof st);
    shape[d] = len;
    st[d] = a->stride[d] * step;
    return fe__view(a, a->ndim, shape, st, a->offset + start * a->stride[d]);
}

static fe_status slice_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *a = n->in[0];
    fe_tensor *z = fe_zeros(a->ndim, a->shape, g->dtype, g->st->dev);
    fe_tensor *v = z ? slice_raw(z, (int)n->i[0], n->i[1], g->shape[n->i[0]], n->i[2]) : NULL;
    fe_status st = v ? fe_copy_(v, g) : fe_last_status();
    gin[0] = st ? NULL : z;
    return st;
}

fe_tensor *fe_slice(fe_tensor *a, int dim, int64_t start, int64_t end, int64_t step) {
    if (fe__any_null("slice", 1, a)) return NULL;
    int d = fe__norm_dim(dim, a->ndim, "slice");
    if (d < 0) return NULL;
    if (step < 1) {
        fe_set_error(FE_ERR_ARG, "slice: step %" PRId64 " must be >= 1", step);
        return NULL;
    }
    int64_t n = a->shape[d];
    if (start < 0) start += n;
    if (end < 0) end += n;
    if (start < 0) start = 0;
    if (end > n) end = n;
    if (start > n) start = n;
    int64_t len = end > start ? (end - start + step - 1) / step : 0;
    fe_tensor *out = slice_raw(a, d, start, len, step);
    if (out && fe__needs_grad(1, &a)) {
        fe_node *nd = fe__record(out, "slice", slice_backward, 1, &a);
        if (!nd) return fe__done(out, FE_ERR_OOM);
        nd->i[0] = d;
        nd->i[1] = start;
        nd->i[2] = step;
    }
    return out;
}

/* ---- expand ------------------------------------------------------------------------ */

static fe_status expand_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    return (gin[0] = fe__sum_to(g, n->in[0]->ndim, n->in[0]->shape)) ? FE_OK : fe_last_status();
}

fe_tensor *fe_expand(fe_tensor *a, int ndim, const int64_t *shape_in) {
    if (fe__any_null("expand", 1, a)) return NULL;
    if (ndim < a->ndim || ndim > FE_MAX_DIMS || !shape_in) {
        fe_set_error(FE_ERR_SHAPE, "expand: cannot expand a rank-%d tensor to rank %d", a->ndim, ndim);
        return NULL;
    }
    int64_t shape[FE_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        int j = i - (ndim - a->ndim);
        int64_t want = shape_in[i];
        if (want == -1 && j >= 0) want = a->shape[j];
        if (want < 0 || (j >= 0 && a->shape[j] != 1 && a->shape[j] != want)) {
            char b[96];
            fe_set_error(FE_ERR_SHAPE, "expand: %s cannot expand to size %" PRId64 " at dim %d",
                         fe_shape_str(a, b, sizeof b), shape_in[i], i);
            return NULL;
        }
        shape[i] = want;
    }
    fe_tensor *out = fe__expand_raw(a, ndim, shape);
    if (out && fe__needs_grad(1, &a) && !fe__record(out, "expand", expand_backward, 1, &a))
        return fe__done(out, FE_ERR_OOM);
    return out;
}

/* ---- copies ------------------------------------------------------------------------- */

static fe_status identity_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    gin[0] = n->in[0]->dtype == g->dtype ? g : fe_cast(g, n->in[0]->dtype);
    return gin[0] ? FE_OK : fe_last_status();
}

fe_tensor *fe_contiguous(fe_tensor *a) {
    if (fe__any_null("contiguous", 1, a)) return NULL;
    fe_tensor *out;
    if (fe_is_contiguous(a)) {
        out = fe__view(a, a->ndim, a->shape, a->stride, a->offset);
    } else {
        out = fe__alloc(a->ndim, a->shape, a->dtype, a->st->dev);
        if (out) out = fe__done(out, fe__be(a)->copy(out, a));
    }
    if (out && fe__needs_grad(1, &a) && !fe__record(out, "contiguous", identity_backward, 1, &a))
        return fe__done(out, FE_ERR_OOM);
    return out;
}

fe_tensor *fe_cast(fe_tensor *a, fe_dtype dt) {
    if (fe__any_null("cast", 1, a)) return NULL;
    if ((unsigned)dt >= FE_DTYPE_COUNT) {
        fe_set_error(FE_ERR_DTYPE, "cast: unknown dtype %d", (int)dt);
        return NULL;
    }
    fe_tensor *out = fe__alloc(a->ndim, a->shape, dt, a->st->dev);
    if (out) out = fe__done(out, fe__be(a)->copy(out, a));
    if (out && fe_dtype_is_float(dt) && fe__needs_grad(1, &a) &&
        !fe__record(out, "cast", identity_backward, 1, &a))
        return fe__done(out, FE_ERR_OOM);
    return out;
}

/* ---- concat -------------------------------------------------------------------------- */

static fe_status concat_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    int d = (int)n->i[0];
    int64_t at = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t len = n->in[i]->shape[d];
        if (n->in[i]->requires_grad && !(gin[i] = slice_raw(g, d, at, len, 1))) return fe_last_status();
        at += len;
    }
    return FE_OK;
}

fe_tensor *fe_concat(int n, fe_tensor *const *ts, int dim) {
    if (n < 1 || !ts) {
        fe_set_error(FE_ERR_ARG, "concat: needs at least one tensor");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (fe__any_null("concat", 1, ts[i])) return NULL;
    if (n > FE_NODE_MAX_IN) { /* join in groups so that each tape node stays small */
        fe_tensor *head = fe_concat(FE_NODE_MAX_IN, ts, dim);
        fe_tensor **tmp = malloc((size_t)(n - FE_NODE_MAX_IN + 1) * sizeof *tmp);
        if (!head || !tmp) {
            free(tmp);
            fe_free(head);
            if (head) fe_set_error(FE_ERR_OOM, "concat: out of host memory");
            return NULL;
        }
        tmp[0] = head;
        memcpy(tmp + 1, ts + FE_NODE_MAX_IN, (size_t)(n - FE_NODE_MAX_IN) * sizeof *tmp);
        fe_tensor *out = fe_concat(n - FE_NODE_MAX_IN + 1, tmp, dim);
        free(tmp);
        fe_free(head);
        return out;
    }
    fe_tensor *a = ts[0];
    int d = fe__norm_dim(dim, a->ndim, "concat");
    if (d < 0) return NULL;
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 0; i < n; i++) {
        fe_tensor *t = ts[i];
        if (fe__check_pair("concat", a, t)) return NULL;
        bool ok = t->ndim == a->ndim;
        for (int k = 0; ok && k < a->ndim; k++) ok = k == d || t->shape[k] == a->shape[k];
        if (!ok) {
            char x[96], y[96];
            fe_set_error(FE_ERR_SHAPE, "concat: %s does not fit %s along dim %d",
                         fe_shape_str(t, x, sizeof x), fe_shape_str(a, y, sizeof y), dim);
            return NULL;
        }
        shape[d] += t->shape[d];
    }
    fe_tensor *out = fe__alloc(a->ndim, shape, a->dtype, a->st->dev);
    int64_t at = 0;
    fe_status st = out ? FE_OK : fe_last_status();
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *v = slice_raw(out, d, at, ts[i]->shape[d], 1);
        st = v ? fe__be(a)->copy(v, ts[i]) : fe_last_status();
        fe_free(v);
        at += ts[i]->shape[d];
    }
    out = fe__done(out, st);
    if (out && fe__needs_grad(n, ts)) {
        fe_node *nd = fe__record(out, "concat", concat_backward, n, ts);
        if (!nd) return fe__done(out, FE_ERR_OOM);
        nd->i[0] = d;
    }
    return out;
}
