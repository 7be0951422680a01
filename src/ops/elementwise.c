/* Elementwise ops with broadcasting, their backward rules, and in-place updates. */
#include "ops/ops_internal.h"

#include <stdio.h>

/* ---- shared checks ------------------------------------------------------------ */

fe_status fe__check_pair(const char *op, const fe_tensor *a, const fe_tensor *b) {
    if (a->dtype != b->dtype)
        return fe_set_error(FE_ERR_DTYPE, "%s: dtypes differ (%s and %s)", op,
                            fe_dtype_name(a->dtype), fe_dtype_name(b->dtype));
    if (!fe__same_device(a, b)) {
        char x[16], y[16];
        return fe_set_error(FE_ERR_DEVICE, "%s: inputs are on different devices (%s and %s)", op,
                            fe_device_str(a->st->dev, x, sizeof x),
                            fe_device_str(b->st->dev, y, sizeof y));
    }
    return FE_OK;
}

fe_status fe__check_float(const char *op, const fe_tensor *a) {
    if (!fe_dtype_is_float(a->dtype))
        return fe_set_error(FE_ERR_DTYPE, "%s: needs a float tensor, got %s", op,
                            fe_dtype_name(a->dtype));
    return FE_OK;
}

fe_tensor *fe__done(fe_tensor *t, fe_status st) {
    if (st != FE_OK) {
        fe_free(t);
        return NULL;
    }
    return t;
}

fe_tensor *fe__contig_raw(fe_tensor *t) {
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *c = fe_contiguous(t);
    fe_set_grad_enabled(prev);
    return c;
}

fe_tensor *fe__unary_raw(fe_unary_op op, fe_tensor *a, double alpha, double beta) {
    fe_tensor *out = fe__alloc(a->ndim, a->shape, a->dtype, a->st->dev);
    if (!out) return NULL;
    return fe__done(out, fe__be(a)->unary(op, out, a, alpha, beta));
}

fe_tensor *fe__binary_raw(fe_binary_op op, fe_tensor *a, fe_tensor *b, double alpha,
                          const char *name) {
    int nd;
    int64_t shape[FE_MAX_DIMS];
    if (fe__check_pair(name, a, b) || !fe__broadcast_shape(a, b, &nd, shape, name)) return NULL;
    fe_tensor *out = fe__alloc(nd, shape, a->dtype, a->st->dev);
    fe_tensor *ea = out ? fe__expand_raw(a, nd, shape) : NULL;
    fe_tensor *eb = ea ? fe__expand_raw(b, nd, shape) : NULL;
    fe_status st = eb ? fe__be(a)->binary(op, out, ea, eb, alpha) : fe_last_status();
    fe_free(ea);
    fe_free(eb);
    return fe__done(out, st);
}

/* ---- binary ops ------------------------------------------------------------------ */

static fe_status binary_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *a = n->in[0], *b = n->in[1];
    fe_tensor *ga = NULL, *gb = NULL;
    switch ((fe_binary_op)n->i[0]) {
    case FE_B_ADD:
        ga = g;
        gb = g;
        break;
    case FE_B_SUB:
        ga = g;
        gb = b->requires_grad ? fe_neg(g) : NULL;
        break;
    case FE_B_MUL:
        ga = a->requires_grad ? fe_mul(g, b) : NULL;
        gb = b->requires_grad ? fe_mul(g, a) : NULL;
        break;
    case FE_B_DIV:
        ga = a->requires_grad ? fe_div(g, b) : NULL;
        gb = b->requires_grad ? fe_neg(fe_div(fe_mul(g, a), fe_square(b))) : NULL;
        break;
    default: return fe_set_error(FE_ERR_STATE, "binary backward: op %d has no gradient", (int)n->i[0]);
    }
    if (a->requires_grad && !(gin[0] = ga ? fe__sum_to(ga, a->ndim, a->shape) : NULL))
        return fe_last_status();
    if (b->requires_grad && !(gin[1] = gb ? fe__sum_to(gb, b->ndim, b->shape) : NULL))
        return fe_last_status();
    return FE_OK;
}

/* out = a op b, with the tape node */
static fe_tensor *binary(const char *name, fe_binary_op op, fe_tensor *a, fe_tensor *b) {
    if (fe__any_null(name, 2, a, b)) return NULL;
    if (fe__check_float(name, a) || fe__check_float(name, b)) return NULL;
    fe_tensor *out = fe__binary_raw(op, a, b, 1.0, name);
    if (out && fe__needs_grad(2, (fe_tensor *[]){a, b})) {
        fe_node *n = fe__record(out, name, binary_backward, 2, (fe_tensor *[]){a, b});
        if (!n) return fe__done(out, FE_ERR_OOM);
        n->i[0] = op;
    }
    return out;
}

fe_tensor *fe_add(fe_tensor *a, fe_tensor *b) { return binary("add", FE_B_ADD, a, b); }
fe_tensor *fe_sub(fe_tensor *a, fe_tensor *b) { return binary("sub", FE_B_SUB, a, b); }
fe_tensor *fe_mul(fe_tensor *a, fe_tensor *b) { return binary("mul", FE_B_MUL, a, b); }
fe_tensor *fe_div(fe_tensor *a, fe_tensor *b) { return binary("div", FE_B_DIV, a, b); }

/* ---- unary ops --------------------------------------------------------------------- */

static fe_status unary_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *x = n->in[0];
    fe_unary_op op = (fe_unary_op)n->i[0];
    switch (op) {
    case FE_U_NEG: gin[0] = fe_neg(g); break;
    case FE_U_AFFINE: gin[0] = fe_scale(g, n->f[0]); break;
    case FE_U_EXP: gin[0] = fe_mul(g, y); break;
    case FE_U_LOG: gin[0] = fe_div(g, x); break;
    case FE_U_SQRT: gin[0] = fe_div(fe_scale(g, 0.5), y); break;
    case FE_U_RSQRT: gin[0] = fe_mul(fe_scale(g, -0.5), fe_mul(y, fe_square(y))); break;
    case FE_U_SQUARE: gin[0] = fe_mul(fe_scale(g, 2.0), x); break;
    case FE_U_TANH: gin[0] = fe__binary_raw(FE_B_TANH_GRAD_Y, y, g, 1, "tanh backward"); break;
    case FE_U_SIGMOID:
        gin[0] = fe__binary_raw(FE_B_SIGMOID_GRAD_Y, y, g, 1, "sigmoid backward");
        break;
    case FE_U_RELU: gin[0] = fe__binary_raw(FE_B_RELU_GRAD, x, g, 1, "relu backward"); break;
    case FE_U_GELU_TANH:
        gin[0] = fe__binary_raw(FE_B_GELU_TANH_GRAD, x, g, 1, "gelu backward");
        break;
    case FE_U_GELU_ERF:
        gin[0] = fe__binary_raw(FE_B_GELU_ERF_GRAD, x, g, 1, "gelu backward");
        break;
    case FE_U_SILU: gin[0] = fe__binary_raw(FE_B_SILU_GRAD, x, g, 1, "silu backward"); break;
    case FE_U_COUNT: break;
    }
    return gin[0] ? FE_OK : fe_last_status();
}

static fe_tensor *unary(const char *name, fe_unary_op op, fe_tensor *a, double alpha, double beta) {
    if (fe__any_null(name, 1, a) || fe__check_float(name, a)) return NULL;
    fe_tensor *out = fe__unary_raw(op, a, alpha, beta);
    if (out && fe__needs_grad(1, &a)) {
        fe_node *n = fe__record(out, name, unary_backward, 1, &a);
        if (!n) return fe__done(out, FE_ERR_OOM);
        n->i[0] = op;
        n->f[0] = alpha;
    }
    return out;
}

fe_tensor *fe_neg(fe_tensor *a) { return unary("neg", FE_U_NEG, a, 0, 0); }
fe_tensor *fe_scale(fe_tensor *a, double s) { return unary("scale", FE_U_AFFINE, a, s, 0); }
fe_tensor *fe_add_scalar(fe_tensor *a, double s) { return unary("add_scalar", FE_U_AFFINE, a, 1, s); }
fe_tensor *fe_exp(fe_tensor *a) { return unary("exp", FE_U_EXP, a, 0, 0); }
fe_tensor *fe_log(fe_tensor *a) { return unary("log", FE_U_LOG, a, 0, 0); }
fe_tensor *fe_sqrt(fe_tensor *a) { return unary("sqrt", FE_U_SQRT, a, 0, 0); }
fe_tensor *fe_rsqrt(fe_tensor *a) { return unary("rsqrt", FE_U_RSQRT, a, 0, 0); }
fe_tensor *fe_tanh(fe_tensor *a) { return unary("tanh", FE_U_TANH, a, 0, 0); }
fe_tensor *fe_sigmoid(fe_tensor *a) { return unary("sigmoid", FE_U_SIGMOID, a, 0, 0); }
fe_tensor *fe_relu(fe_tensor *a) { return unary("relu", FE_U_RELU, a, 0, 0); }
fe_tensor *fe_silu(fe_tensor *a) { return unary("silu", FE_U_SILU, a, 0, 0); }
fe_tensor *fe_square(fe_tensor *a) { return unary("square", FE_U_SQUARE, a, 0, 0); }
fe_tensor *fe_gelu(fe_tensor *a, bool approximate) {
    return unary("gelu", approximate ? FE_U_GELU_TANH : FE_U_GELU_ERF, a, 0, 0);
}

/* ---- selection ---------------------------------------------------------------------- */

static fe_status where_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *c = n->in[0], *a = n->in[1], *b = n->in[2];
    fe_tensor *zero = fe_zeros(0, NULL, g->dtype, g->st->dev);
    if (!zero) return fe_last_status();
    if (a && a->requires_grad) {
        fe_tensor *ga = fe_where(c, g, zero);
        if (!ga || !(gin[1] = fe__sum_to(ga, a->ndim, a->shape))) return fe_last_status();
    }
    if (b && b->requires_grad) {
        fe_tensor *gb = fe_where(c, zero, g);
        if (!gb || !(gin[2] = fe__sum_to(gb, b->ndim, b->shape))) return fe_last_status();
    }
    return FE_OK;
}

fe_tensor *fe_where(fe_tensor *cond, fe_tensor *a, fe_tensor *b) {
    if (fe__any_null("where", 3, cond, a, b)) return NULL;
    if (fe__check_pair("where", a, b)) return NULL;
    if (cond->st->dev.type != a->st->dev.type) {
        fe_set_error(FE_ERR_DEVICE, "where: the condition is on another device");
        return NULL;
    }
    int n1, nd;
    int64_t s1[FE_MAX_DIMS], shape[FE_MAX_DIMS];
    if (!fe__broadcast_shape(a, b, &n1, s1, "where")) return NULL;
    fe_tensor tmp = {.ndim = n1};
    memcpy(tmp.shape, s1, sizeof s1);
    if (!fe__broadcast_shape(cond, &tmp, &nd, shape, "where")) return NULL;
    fe_tensor *out = fe__alloc(nd, shape, a->dtype, a->st->dev);
    fe_tensor *ec = out ? fe__expand_raw(cond, nd, shape) : NULL;
    fe_tensor *ea = ec ? fe__expand_raw(a, nd, shape) : NULL;
    fe_tensor *eb = ea ? fe__expand_raw(b, nd, shape) : NULL;
    fe_status st = eb ? fe__be(a)->where(out, ec, ea, eb) : fe_last_status();
    fe_free(ec), fe_free(ea), fe_free(eb);
    out = fe__done(out, st);
    if (out && fe__needs_grad(2, (fe_tensor *[]){a, b})) {
        if (!fe__record(out, "where", where_backward, 3, (fe_tensor *[]){cond, a, b}))
            return fe__done(out, FE_ERR_OOM);
    }
    return out;
}

fe_tensor *fe_masked_fill(fe_tensor *a, fe_tensor *mask, double value) {
    if (fe__any_null("masked_fill", 2, a, mask)) return NULL;
    fe_tensor *v = fe_full(0, NULL, value, a->dtype, a->st->dev);
    fe_tensor *out = v ? fe_where(mask, v, a) : NULL;
    fe_free(v); /* the tape keeps its own reference when it needs one */
    return out;
}

fe_tensor *fe_dropout(fe_tensor *a, double p, bool training) {
    if (fe__any_null("dropout", 1, a) || fe__check_float("dropout", a)) return NULL;
    if (p < 0 || p >= 1) {
        fe_set_error(FE_ERR_ARG, "dropout: p = %g is outside [0, 1)", p);
        return NULL;
    }
    if (!training || p == 0) return fe_reshape(a, a->ndim, a->shape);
    fe_tensor *u = fe_rand(a->ndim, a->shape, 0.0, 1.0, a->dtype, a->st->dev);
    fe_tensor *pt = u ? fe_full(0, NULL, p, a->dtype, a->st->dev) : NULL;
    fe_tensor *keep = pt ? fe__binary_raw(FE_B_GE, u, pt, 1, "dropout") : NULL;
    fe_tensor *mask = keep ? fe__unary_raw(FE_U_AFFINE, keep, 1.0 / (1.0 - p), 0) : NULL;
    fe_tensor *out = mask ? fe_mul(a, mask) : NULL;
    fe_free(u), fe_free(pt), fe_free(keep), fe_free(mask);
    return out;
}

/* ---- in place ------------------------------------------------------------------------- */

fe_status fe_add_(fe_tensor *dst, fe_tensor *src, double alpha) {
    if (fe__any_null("fe_add_", 2, dst, src)) return FE_ERR_ARG;
    if (!fe_is_contiguous(dst))
        return fe_set_error(FE_ERR_ARG, "fe_add_: the destination must be contiguous");
    if (dst->st->dev.type != src->st->dev.type)
        return fe_set_error(FE_ERR_DEVICE, "fe_add_: tensors are on different devices");
    int nd;
    int64_t shape[FE_MAX_DIMS];
    if (!fe__broadcast_shape(dst, src, &nd, shape, "fe_add_")) return fe_last_status();
    if (nd != dst->ndim || fe__numel_of(nd, shape) != fe_numel(dst)) {
        char a[96], b[96];
        return fe_set_error(FE_ERR_SHAPE, "fe_add_: %s cannot be added into %s",
                            fe_shape_str(src, a, sizeof a), fe_shape_str(dst, b, sizeof b));
    }
    fe_tensor *e = fe__expand_raw(src, nd, shape);
    fe_status st = e ? fe__be(dst)->binary(FE_B_ADD, dst, dst, e, alpha) : fe_last_status();
    fe_free(e);
    return st;
}

fe_status fe_scale_(fe_tensor *dst, double s) {
    if (fe__any_null("fe_scale_", 1, dst)) return FE_ERR_ARG;
    if (!fe_is_contiguous(dst))
        return fe_set_error(FE_ERR_ARG, "fe_scale_: the tensor must be contiguous");
    return fe__be(dst)->unary(FE_U_AFFINE, dst, dst, s, 0.0);
}
