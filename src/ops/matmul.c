/* Matrix products with broadcast batch dims and transposed operands, and linear. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <stdio.h>

static fe_tensor *transpose_raw(fe_tensor *t) {
    int64_t shape[FE_MAX_DIMS], st[FE_MAX_DIMS];
    int n = t->ndim;
    memcpy(shape, t->shape, sizeof shape);
    memcpy(st, t->stride, sizeof st);
    shape[n - 2] = t->shape[n - 1], shape[n - 1] = t->shape[n - 2];
    st[n - 2] = t->stride[n - 1], st[n - 1] = t->stride[n - 2];
    return fe__view(t, n, shape, st, t->offset);
}

static fe_status matmul_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *a = n->in[0], *b = n->in[1];
    bool ta = n->i[0], tb = n->i[1];
    if (a->requires_grad) {
        fe_tensor *ga = ta ? fe_matmul(b, g, tb, true) : fe_matmul(g, b, false, !tb);
        if (!ga || !(gin[0] = fe__sum_to(ga, a->ndim, a->shape))) return fe_last_status();
    }
    if (b->requires_grad) {
        fe_tensor *gb = tb ? fe_matmul(g, a, true, ta) : fe_matmul(a, g, !ta, false);
        if (!gb || !(gin[1] = fe__sum_to(gb, b->ndim, b->shape))) return fe_last_status();
    }
    return FE_OK;
}

fe_tensor *fe_matmul(fe_tensor *a, fe_tensor *b, bool ta, bool tb) {
    if (fe__any_null("matmul", 2, a, b)) return NULL;
    if (fe__check_pair("matmul", a, b) || fe__check_float("matmul", a)) return NULL;
    if (a->ndim == 0 || b->ndim == 0) {
        fe_set_error(FE_ERR_SHAPE, "matmul: operands must have at least one dim");
        return NULL;
    }
    if (a->ndim == 1 || b->ndim == 1) { /* NumPy's vector cases, through 2-D views */
        int64_t sa[2] = {1, a->shape[0]}, sb[2] = {b->shape[0], 1};
        fe_tensor *a2 = a->ndim == 1 ? fe_reshape(a, 2, sa) : a;
        fe_tensor *b2 = b->ndim == 1 ? fe_reshape(b, 2, sb) : b;
        fe_tensor *r = a2 && b2 ? fe_matmul(a2, b2, a->ndim == 1 ? false : ta, b->ndim == 1 ? false : tb) : NULL;
        fe_tensor *out = r ? fe_squeeze(r, a->ndim == 1 ? -2 : -1) : NULL;
        if (out && a->ndim == 1 && b->ndim == 1) {
            fe_tensor *s = fe_squeeze(out, -1);
            fe_free(out);
            out = s;
        }
        if (a2 != a) fe_free(a2);
        if (b2 != b) fe_free(b2);
        fe_free(r);
        return out;
    }
    fe_tensor *va = ta ? transpose_raw(a) : fe__view(a, a->ndim, a->shape, a->stride, a->offset);
    fe_tensor *vb = tb ? transpose_raw(b) : fe__view(b, b->ndim, b->shape, b->stride, b->offset);
    fe_tensor *out = NULL, *ea = NULL, *eb = NULL;
    if (!va || !vb) goto done;
    int64_t M = va->shape[va->ndim - 2], K = va->shape[va->ndim - 1];
    int64_t K2 = vb->shape[vb->ndim - 2], N = vb->shape[vb->ndim - 1];
    if (K != K2) {
        char x[96], y[96];
        fe_set_error(FE_ERR_SHAPE, "matmul: inner dims differ: %s%s @ %s%s (%" PRId64 " vs %" PRId64 ")",
                     fe_shape_str(a, x, sizeof x), ta ? "^T" : "", fe_shape_str(b, y, sizeof y),
                     tb ? "^T" : "", K, K2);
        goto done;
    }
    /* broadcast the batch dims */
    fe_tensor ba = {.ndim = va->ndim - 2}, bb = {.ndim = vb->ndim - 2};
    memcpy(ba.shape, va->shape, sizeof(int64_t) * (size_t)ba.ndim);
    memcpy(bb.shape, vb->shape, sizeof(int64_t) * (size_t)bb.ndim);
    int nb;
    int64_t shape[FE_MAX_DIMS];
    if (!fe__broadcast_shape(&ba, &bb, &nb, shape, "matmul (batch dims)")) goto done;
    if (nb + 2 > FE_MAX_DIMS) {
        fe_set_error(FE_ERR_SHAPE, "matmul: too many dims");
        goto done;
    }
    shape[nb] = M, shape[nb + 1] = K;
    ea = fe__expand_raw(va, nb + 2, shape);
    shape[nb] = K, shape[nb + 1] = N;
    eb = ea ? fe__expand_raw(vb, nb + 2, shape) : NULL;
    shape[nb] = M, shape[nb + 1] = N;
    out = eb ? fe__alloc(nb + 2, shape, a->dtype, a->st->dev) : NULL;
    if (out) out = fe__done(out, fe__be(a)->matmul(out, ea, eb, 1.0));
    if (out && fe__needs_grad(2, (fe_tensor *[]){a, b})) {
        fe_node *n = fe__record(out, "matmul", matmul_backward, 2, (fe_tensor *[]){a, b});
        if (!n) out = fe__done(out, FE_ERR_OOM);
        else n->i[0] = ta, n->i[1] = tb;
    }
done:
    fe_free(va), fe_free(vb), fe_free(ea), fe_free(eb);
    return out;
}

fe_tensor *fe_linear(fe_tensor *x, fe_tensor *w, fe_tensor *bias) {
    if (fe__any_null("linear", 2, x, w)) return NULL;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE, "linear: input %s does not fit weight %s (out, in)",
                     fe_shape_str(x, a, sizeof a), fe_shape_str(w, b, sizeof b));
        return NULL;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0])) {
        char b[96];
        fe_set_error(FE_ERR_SHAPE, "linear: bias %s should be (%" PRId64 ",)",
                     fe_shape_str(bias, b, sizeof b), w->shape[0]);
        return NULL;
    }
    /* fold the batch dims into rows so that one GEMM does the work */
    int64_t rows[2] = {fe_numel(x) / (w->shape[1] ? w->shape[1] : 1), w->shape[1]};
    fe_tensor *x2 = fe_reshape(x, 2, rows);
    fe_tensor *y2 = x2 ? fe_matmul(x2, w, false, true) : NULL;
    fe_tensor *yb = y2 && bias ? fe_add(y2, bias) : y2;
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = w->shape[0];
    fe_tensor *y = yb ? fe_reshape(yb, x->ndim, shape) : NULL;
    fe_free(x2);
    if (yb != y2) fe_free(yb);
    fe_free(y2);
    return y;
}
