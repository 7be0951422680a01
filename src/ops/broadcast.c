/* Broadcasting: shapes, expanded views for kernels, and summing gradients back. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <stdio.h>

bool fe__broadcast_shape(const fe_tensor *a, const fe_tensor *b, int *ndim, int64_t *shape,
                         const char *op) {
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        int ia = a->ndim - n + i, ib = b->ndim - n + i;
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1) {
            char sa[96], sb[96];
            fe_set_error(FE_ERR_SHAPE, "%s: shapes %s and %s do not broadcast (dim %d: %" PRId64
                         " vs %" PRId64 ")", op, fe_shape_str(a, sa, sizeof sa),
                         fe_shape_str(b, sb, sizeof sb), i, da, db);
            return false;
        }
        shape[i] = da == 1 ? db : da;
    }
    *ndim = n;
    return true;
}

fe_tensor *fe__expand_raw(const fe_tensor *t, int ndim, const int64_t *shape) {
    int64_t st[FE_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        int j = t->ndim - ndim + i;
        if (j < 0 || (t->shape[j] == 1 && shape[i] != 1))
            st[i] = 0;
        else
            st[i] = t->stride[j];
    }
    return fe__view(t, ndim, shape, st, t->offset);
}

fe_tensor *fe__sum_to(fe_tensor *g, int ndim, const int64_t *shape) {
    if (g->ndim == ndim) {
        bool same = true;
        for (int i = 0; i < ndim; i++) same = same && g->shape[i] == shape[i];
        if (same) return g;
    }
    int dims[FE_MAX_DIMS], nd = 0;
    int lead = g->ndim - ndim;
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        if (j < 0 || (shape[j] == 1 && g->shape[i] != 1)) dims[nd++] = i;
    }
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *s = nd ? fe_sum(g, nd, dims, true) : g;
    fe_tensor *r = s ? fe_reshape(s, ndim, shape) : NULL;
    fe_set_grad_enabled(prev);
    return r;
}
