/* Matrix products with broadcast batch dims and transposed operands, and linear.
 *
 * A product whose right operand is one matrix, (..., M, K) @ (K, N), folds the left
 * operand's batch dims into rows: one (R, K) @ (K, N) GEMM, and in the backward one
 * (K, R) @ (R, N) GEMM for the matrix's gradient rather than a batch of products summed
 * afterwards. That is linear's case, so linear is this op with no reshapes around it,
 * and its node holds its real input.
 *
 * A gradient that would be added to one already gathered for the same input (an input
 * that feeds several products, like the Llama block's normed input feeding q, k and v)
 * is instead computed into that gradient by the GEMM itself (beta = 1): the backward
 * takes the pending gradient (fe__take_pending_owned) and hands it back with the product
 * added, so the tape has nothing left to add. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fe_tensor *transpose_raw(fe_tensor *t) {
    int64_t shape[FE_MAX_DIMS], st[FE_MAX_DIMS];
    int n = t->ndim;
    memcpy(shape, t->shape, sizeof shape);
    memcpy(st, t->stride, sizeof st);
    shape[n - 2] = t->shape[n - 1], shape[n - 1] = t->shape[n - 2];
    st[n - 2] = t->stride[n - 1], st[n - 1] = t->stride[n - 2];
    return fe__view(t, n, shape, st, t->offset);
}

/* t (..., C) as the 2-D (R, C), R the product of the other dims, with no tape node: a
 * view where t's layout allows, else a contiguous copy. */
static fe_tensor *rows_2d(fe_tensor *t) {
    int64_t shape[2] = {fe__numel_of(t->ndim - 1, t->shape), t->shape[t->ndim - 1]};
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *r = fe_reshape(t, 2, shape);
    fe_set_grad_enabled(prev);
    return r;
}

/* True when op(a) @ op(b) folds a's batch dims into the rows of one GEMM. */
static bool folds(const fe_tensor *a, const fe_tensor *b, bool ta) {
    return !ta && a->ndim > 2 && b->ndim == 2;
}

/* True when t is contiguous with the given shape and dtype. */
static bool fits(const fe_tensor *t, int nd, const int64_t *shape, fe_dtype dt) {
    bool ok = t->ndim == nd && t->dtype == dt && fe_is_contiguous(t);
    for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == shape[d];
    return ok;
}

/* op(a) @ op(b) + add for a and b of >= 2 dims (one dtype and device), batch dims
 * broadcast; add (NULL for none) is added by the GEMM (beta = 1). The result is written
 * to into, or to a new tensor when into is NULL; into and add, when given, must be
 * contiguous and of the result's shape and dtype (a pending gradient that adds to itself:
 * into == add). Returns the result, NULL on failure (into then stays the caller's). */
static fe_tensor *product(fe_tensor *into, const fe_tensor *add, fe_tensor *a, fe_tensor *b,
                          bool ta, bool tb) {
    fe_tensor *va = ta ? transpose_raw(a) : fe__view(a, a->ndim, a->shape, a->stride, a->offset);
    fe_tensor *vb = tb ? transpose_raw(b) : fe__view(b, b->ndim, b->shape, b->stride, b->offset);
    fe_tensor *out = NULL, *ea = NULL, *eb = NULL, *o2 = NULL, *c2 = NULL;
    fe_status st = FE_OK;
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
    int nd;
    int64_t shape[FE_MAX_DIMS];
    bool fold = folds(a, b, ta);
    if (fold) {
        nd = a->ndim;
        memcpy(shape, a->shape, sizeof(int64_t) * (size_t)nd);
        shape[nd - 1] = N;
    } else { /* broadcast the batch dims */
        fe_tensor ba = {.ndim = va->ndim - 2}, bb = {.ndim = vb->ndim - 2};
        memcpy(ba.shape, va->shape, sizeof(int64_t) * (size_t)ba.ndim);
        memcpy(bb.shape, vb->shape, sizeof(int64_t) * (size_t)bb.ndim);
        if (!fe__broadcast_shape(&ba, &bb, &nd, shape, "matmul (batch dims)")) goto done;
        if (nd + 2 > FE_MAX_DIMS) {
            fe_set_error(FE_ERR_SHAPE, "matmul: too many dims");
            goto done;
        }
        shape[nd] = M, shape[nd + 1] = K;
        if (!(ea = fe__expand_raw(va, nd + 2, shape))) goto done;
        shape[nd] = K, shape[nd + 1] = N;
        if (!(eb = fe__expand_raw(vb, nd + 2, shape))) goto done;
        shape[nd] = M, shape[nd + 1] = N;
        nd += 2;
    }
    if ((into && !fits(into, nd, shape, a->dtype)) || (add && !fits(add, nd, shape, a->dtype))) {
        fe_set_error(FE_ERR_STATE, "matmul: the tensor to add to does not fit the product");
        goto done;
    }
    if (!(out = into ? into : fe__alloc(nd, shape, a->dtype, a->st->dev))) goto done;
    if (!fold) {
        st = fe__be(a)->matmul(out, ea, eb, 1.0, add);
    } else { /* (R, K) @ (K, N) into out seen as (R, N), likewise add */
        int64_t s2[2] = {fe__numel_of(nd - 1, shape), N}, st2[2] = {N, 1};
        ea = rows_2d(va);
        o2 = ea ? fe__view(out, 2, s2, st2, out->offset) : NULL;
        c2 = o2 && add ? (add == out ? o2 : fe__view(add, 2, s2, st2, add->offset)) : NULL;
        st = !o2 || (add && !c2) ? fe_last_status() : fe__be(a)->matmul(o2, ea, vb, 1.0, c2);
    }
    if (st) {
        if (out != into) fe_free(out);
        out = NULL;
    }
done:
    if (c2 != o2) fe_free(c2);
    fe_free(va), fe_free(vb), fe_free(ea), fe_free(eb), fe_free(o2);
    return out;
}

/* True when a gradient of x computed from the product's out (..., M, N) has x's shape
 * as it comes: x has every batch dim of out, none broadcast. */
static bool unbroadcast(const fe_tensor *x, const fe_tensor *out) {
    if (x->ndim != out->ndim) return false;
    for (int d = 0; d < x->ndim - 2; d++)
        if (x->shape[d] != out->shape[d]) return false;
    return true;
}

/* The gradient of input x, op(p) @ op(q): added by the GEMM into x's pending gradient
 * when the product has x's shape (whole) and nothing else holds that gradient; else a
 * new tensor, summed down to x's shape. */
static fe_status grad_of(fe_tensor *x, bool whole, fe_tensor *p, fe_tensor *q, bool tp, bool tq,
                         fe_tensor **gx) {
    fe_tensor *acc = whole ? fe__take_pending_owned(x) : NULL;
    fe_tensor *r = product(acc, acc, p, q, tp, tq);
    if (!r) {
        if (acc) fe__release(acc);
        return fe_last_status();
    }
    if (acc) { /* handed back through a view in this backward's scope, which keeps the memory */
        *gx = fe__view(acc, acc->ndim, acc->shape, acc->stride, acc->offset);
        fe__release(acc);
        return *gx ? FE_OK : fe_last_status();
    }
    return (*gx = fe__sum_to(r, x->ndim, x->shape)) ? FE_OK : fe_last_status();
}

static fe_status matmul_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *a = n->in[0], *b = n->in[1];
    bool ta = n->i[0], tb = n->i[1];
    fe_status st = FE_OK;
    if (a->requires_grad) /* g op(b)^T, or its transpose when a is used transposed */
        st = ta ? grad_of(a, unbroadcast(a, out), b, g, tb, true, &gin[0])
                : grad_of(a, unbroadcast(a, out), g, b, false, !tb, &gin[0]);
    if (st || !b->requires_grad) return st;
    if (folds(a, b, ta)) { /* op(b)'s gradient a2^T g2 over all the folded rows at once */
        fe_tensor *a2 = rows_2d(a), *g2 = a2 ? rows_2d(g) : NULL;
        st = !g2  ? fe_last_status()
             : tb ? grad_of(b, true, g2, a2, true, false, &gin[1])
                  : grad_of(b, true, a2, g2, true, false, &gin[1]);
        fe_free(a2), fe_free(g2);
        return st;
    }
    return tb ? grad_of(b, unbroadcast(b, out), g, a, true, ta, &gin[1])
              : grad_of(b, unbroadcast(b, out), a, g, !ta, false, &gin[1]);
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
    fe_tensor *out = product(NULL, NULL, a, b, ta, tb);
    if (out && fe__needs_grad(2, (fe_tensor *[]){a, b})) {
        fe_node *n = fe__record(out, "matmul", matmul_backward, 2, (fe_tensor *[]){a, b});
        if (!n) out = fe__done(out, FE_ERR_OOM);
        else n->i[0] = ta, n->i[1] = tb;
    }
    return out;
}

/* Shapes of a linear's operands; sets the error and returns false when they do not fit. */
static bool linear_shapes_ok(const char *name, fe_tensor *x, fe_tensor *w, fe_tensor *bias) {
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE, "%s: input %s does not fit weight %s (out, in)", name,
                     fe_shape_str(x, a, sizeof a), fe_shape_str(w, b, sizeof b));
        return false;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0])) {
        char b[96];
        fe_set_error(FE_ERR_SHAPE, "%s: bias %s should be (%" PRId64 ",)", name,
                     fe_shape_str(bias, b, sizeof b), w->shape[0]);
        return false;
    }
    return !(bias && fe__check_pair(name, x, bias));
}

/* ---- linear with a GEMM epilogue (bias, GELU) ------------------------------------------ */

static int64_t g_epilogue_runs; /* linears whose bias/activation the GEMM applied */
int64_t fe__linear_epilogue_runs(void) { return g_epilogue_runs; }

/* True when the backend can run x w^T + bias (then act) as one GEMM with an epilogue:
 * it has the entry, and every operand is contiguous, of one 16/32-bit float dtype, with
 * rows of whole 16-byte chunks on 16-byte aligned pointers, and with an activation a
 * multiple of 8 outputs (cuBLASLt's rules for the epilogue's vectors and aux matrix). */
static bool epilogue_ok(fe_tensor *x, fe_tensor *w, fe_tensor *bias, fe_act act) {
    const fe_backend *be = fe__be(x);
    const char *off = getenv("FE_LINEAR_EPILOGUE"); /* "0": always compose (measurements) */
    if (!be->linear_act || (off && !strcmp(off, "0"))) return false;
    fe_dtype dt = x->dtype;
    if (x->ndim < 2) return false; /* the node's backward is matmul's, for >= 2-d inputs */
    if (!(dt == FE_F32 || dt == FE_F16 || dt == FE_BF16) || w->dtype != dt ||
        !fe__same_device(x, w) || !fe_is_contiguous(x) || !fe_is_contiguous(w))
        return false;
    if (bias && (bias->dtype != dt || !fe__same_device(x, bias) || !fe_is_contiguous(bias)))
        return false;
    const int64_t es = (int64_t)fe_dtype_size(dt);
    if ((w->shape[0] * es) % 16 || (w->shape[1] * es) % 16) return false;
    if (act != FE_ACT_NONE && w->shape[0] % 8) return false; /* the pre-activation's ld */
    const fe_tensor *ts[3] = {x, w, bias};
    for (int i = 0; i < 3; i++)
        if (ts[i] && (uintptr_t)fe__ptr(ts[i]) % 16) return false;
    return true;
}

static fe_status linear_act_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *bias = n->in[2];
    /* through the activation first: GELU's derivative at the saved pre-activation */
    fe_tensor *gy = n->i[2] == FE_ACT_GELU_TANH
                        ? fe__binary_raw(FE_B_GELU_TANH_GRAD, n->saved[0], g, 1, "linear_gelu backward")
                        : g;
    if (!gy) return fe_last_status();
    fe_status st = matmul_backward(n, out, gy, gin); /* x and w, from in[0], in[1] */
    if (!st && bias && bias->requires_grad && !(gin[2] = fe__sum_to(gy, 1, bias->shape)))
        st = fe_last_status();
    return st;
}

/* act(x w^T + bias) through the backend's epilogue; NULL with *done false when the
 * backend turned it down (nothing is left set: the caller composes the ops). */
static fe_tensor *linear_epilogue(const char *name, fe_tensor *x, fe_tensor *w, fe_tensor *bias,
                                  fe_act act, bool *done) {
    *done = false;
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = w->shape[0];
    fe_tensor *out = fe__alloc(x->ndim, shape, x->dtype, x->st->dev);
    fe_tensor *pre = out && act != FE_ACT_NONE ? fe__alloc(x->ndim, shape, x->dtype, x->st->dev) : NULL;
    fe_status st = !out || (act != FE_ACT_NONE && !pre) ? fe_last_status()
                                                         : fe__be(x)->linear_act(out, pre, x, w, bias, act, done);
    if (st || !*done) {
        fe_free(out), fe_free(pre);
        *done = st != FE_OK; /* an error is reported, not composed around */
        return NULL;
    }
    g_epilogue_runs++;
    if (fe__needs_grad(3, (fe_tensor *[]){x, w, bias})) {
        fe_node *n = fe__record(out, name, linear_act_backward, 3, (fe_tensor *[]){x, w, bias});
        if (!n) {
            fe_free(pre);
            return fe__done(out, FE_ERR_OOM);
        }
        n->i[0] = false, n->i[1] = true, n->i[2] = act;
        if (pre) fe__save(n, 0, pre);
    }
    fe_free(pre);
    return out;
}

fe_tensor *fe_linear(fe_tensor *x, fe_tensor *w, fe_tensor *bias) {
    if (fe__any_null("linear", 2, x, w) || !linear_shapes_ok("linear", x, w, bias)) return NULL;
    if (bias && epilogue_ok(x, w, bias, FE_ACT_NONE)) {
        bool done;
        fe_tensor *y = linear_epilogue("linear", x, w, bias, FE_ACT_NONE, &done);
        if (done) return y;
    }
    /* x's batch dims fold into the rows of one GEMM (see product) */
    fe_tensor *y = fe_matmul(x, w, false, true);
    fe_tensor *yb = y && bias ? fe_add(y, bias) : y;
    if (yb != y) fe_free(y);
    return yb;
}

fe_tensor *fe_linear_gelu(fe_tensor *x, fe_tensor *w, fe_tensor *bias) {
    if (fe__any_null("linear_gelu", 2, x, w) || !linear_shapes_ok("linear_gelu", x, w, bias))
        return NULL;
    if (epilogue_ok(x, w, bias, FE_ACT_GELU_TANH)) {
        bool done;
        fe_tensor *y = linear_epilogue("linear_gelu", x, w, bias, FE_ACT_GELU_TANH, &done);
        if (done) return y;
    }
    fe_tensor *y = fe_linear(x, w, bias);
    fe_tensor *a = y ? fe_gelu(y, true) : NULL;
    fe_free(y);
    return a;
}

static fe_status linear_add_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    fe_status st = matmul_backward(n, out, g, gin); /* x and w, from in[0], in[1] */
    if (!st && n->in[2]->requires_grad) gin[2] = g;
    return st;
}

fe_tensor *fe__linear_add(fe_tensor *x, fe_tensor *w, fe_tensor *r) {
    if (fe__any_null("linear", 3, x, w, r)) return NULL;
    /* the GEMM adds r when r is laid out exactly as the result; else r is added after */
    bool direct = x->ndim >= 2 && w->ndim == 2 && x->shape[x->ndim - 1] == w->shape[1] &&
                  fe_dtype_is_float(x->dtype) && w->dtype == x->dtype && fe__same_device(x, w) &&
                  fe__same_device(x, r);
    int64_t shape[FE_MAX_DIMS];
    if (direct) {
        memcpy(shape, x->shape, sizeof shape);
        shape[x->ndim - 1] = w->shape[0];
        direct = fits(r, x->ndim, shape, x->dtype);
    }
    if (!direct) {
        fe_tensor *y = fe_linear(x, w, NULL);
        fe_tensor *out = y ? fe_add(y, r) : NULL;
        fe_free(y);
        return out;
    }
    fe_tensor *out = product(NULL, r, x, w, false, true);
    if (out && fe__needs_grad(3, (fe_tensor *[]){x, w, r})) {
        fe_node *n = fe__record(out, "linear_add", linear_add_backward, 3, (fe_tensor *[]){x, w, r});
        if (!n) out = fe__done(out, FE_ERR_OOM);
        else n->i[0] = false, n->i[1] = true;
    }
    return out;
}
