/* Neural-network ops with dedicated kernels: softmax, norms, SiLU gate, RoPE,
 * embedding and the losses. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* dtype for per-row statistics saved for backward */
static fe_dtype stat_dtype(const fe_tensor *x) { return x->dtype == FE_F64 ? FE_F64 : FE_F32; }

static fe_status check_vec(const char *op, const char *what, const fe_tensor *v, const fe_tensor *x,
                           int64_t n) {
    if (!v) return FE_OK;
    if (fe__check_pair(op, x, v)) return fe_last_status();
    if (v->ndim != 1 || v->shape[0] != n) {
        char b[96];
        return fe_set_error(FE_ERR_SHAPE, "%s: %s %s should be (%" PRId64 ",)", op, what,
                            fe_shape_str(v, b, sizeof b), n);
    }
    return FE_OK;
}

/* ---- softmax --------------------------------------------------------------------- */

static fe_status softmax_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *gc = fe__contig_raw(g);
    fe_tensor *gx = gc ? fe__alloc(y->ndim, y->shape, y->dtype, y->st->dev) : NULL;
    fe_status st = gx ? fe__be(y)->softmax_backward(gx, gc, y, n->i[0]) : fe_last_status();
    gin[0] = st ? NULL : gx;
    return st;
}

static fe_tensor *softmax_op(fe_tensor *a, int dim, bool log) {
    const char *name = log ? "log_softmax" : "softmax";
    if (fe__any_null(name, 1, a) || fe__check_float(name, a)) return NULL;
    if (a->ndim == 0) {
        fe_set_error(FE_ERR_SHAPE, "%s: needs at least one dim", name);
        return NULL;
    }
    int d = fe__norm_dim(dim, a->ndim, name);
    if (d < 0) return NULL;
    if (d != a->ndim - 1) { /* move the dim last, and back */
        fe_tensor *t = fe_transpose(a, d, -1);
        fe_tensor *s = t ? softmax_op(t, -1, log) : NULL;
        fe_tensor *r = s ? fe_transpose(s, d, -1) : NULL;
        fe_free(t), fe_free(s);
        return r;
    }
    fe_tensor *c = fe__contig_raw(a);
    fe_tensor *y = c ? fe__alloc(a->ndim, a->shape, a->dtype, a->st->dev) : NULL;
    fe_status st = y ? fe__be(a)->softmax(y, c, log) : fe_last_status();
    fe_free(c);
    y = fe__done(y, st);
    if (y && fe__needs_grad(1, &a)) {
        fe_node *n = fe__record(y, name, softmax_backward, 1, &a);
        if (!n) return fe__done(y, FE_ERR_OOM);
        n->i[0] = log;
    }
    return y;
}

fe_tensor *fe_softmax(fe_tensor *a, int dim) { return softmax_op(a, dim, false); }
fe_tensor *fe_log_softmax(fe_tensor *a, int dim) { return softmax_op(a, dim, true); }

/* ---- RMSNorm (and fused residual add) ----------------------------------------------- */

static fe_status rmsnorm_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *x = n->in[0], *w = n->in[1];
    fe_tensor *xc = fe__contig_raw(x), *gc = fe__contig_raw(g);
    if (!xc || !gc) return fe_last_status();
    fe_tensor *gx = x->requires_grad ? fe__alloc(y->ndim, y->shape, y->dtype, y->st->dev) : NULL;
    fe_tensor *gw = w && w->requires_grad ? fe__alloc(1, w->shape, w->dtype, w->st->dev) : NULL;
    if ((x->requires_grad && !gx) || (w && w->requires_grad && !gw)) return fe_last_status();
    /* x's gradient from its other uses (the residual path) is added in the same pass */
    fe_tensor *extra = gx ? fe__take_pending(x) : NULL;
    fe_status st = fe__be(y)->rmsnorm_backward(gx, gw, gc, xc, w, n->saved[0], extra);
    if (extra) fe__release(extra);
    gin[0] = gx;
    gin[1] = gw;
    return st;
}

static fe_status residual_add_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    gin[0] = n->in[0]->requires_grad ? g : NULL;
    gin[1] = n->in[1]->requires_grad ? g : NULL;
    return FE_OK;
}

/* y = rmsnorm(x + r) * w; h = x + r when r is given, written over r's memory when
 * `over` (and r is contiguous: each kernel reads an element of r before it writes that
 * element of h). */
static fe_status rmsnorm_impl(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps, bool over,
                              fe_tensor **h_out, fe_tensor **y_out) {
    const char *name = r ? "rmsnorm_residual" : "rmsnorm";
    if (fe__check_float(name, x)) return fe_last_status();
    if (x->ndim == 0) return fe_set_error(FE_ERR_SHAPE, "%s: needs at least one dim", name);
    int64_t C = x->shape[x->ndim - 1];
    if (check_vec(name, "weight", w, x, C)) return fe_last_status();
    if (r && fe__check_pair(name, x, r)) return fe_last_status();
    if (r && !fe__same_shape(x, r)) {
        char a[96], b[96];
        return fe_set_error(FE_ERR_SHAPE, "%s: residual %s does not match input %s", name,
                            fe_shape_str(r, a, sizeof a), fe_shape_str(x, b, sizeof b));
    }
    int64_t rows = C ? fe_numel(x) / C : 0;
    fe_tensor *xc = fe__contig_raw(x), *rc = r ? fe__contig_raw(r) : NULL;
    fe_tensor *y = fe__alloc(x->ndim, x->shape, x->dtype, x->st->dev);
    fe_tensor *h = NULL;
    if (r && over && fe_is_contiguous(r))
        h = fe__view(r, r->ndim, r->shape, r->stride, r->offset);
    else if (r)
        h = fe__alloc(x->ndim, x->shape, x->dtype, x->st->dev);
    fe_tensor *rstd = fe__alloc(1, &rows, stat_dtype(x), x->st->dev);
    fe_status st = (!xc || (r && (!rc || !h)) || !y || !rstd) ? fe_last_status() : FE_OK;
    if (!st) st = fe__be(x)->rmsnorm(y, h, rstd, xc, rc, w, eps);
    fe_free(xc), fe_free(rc);
    if (!st && h && fe__needs_grad(2, (fe_tensor *[]){x, r})) {
        fe_tensor *hin[2] = {x, r};
        fe_node *n = fe__record(h, "residual_add", residual_add_backward, 2, hin);
        if (!n) st = FE_ERR_OOM;
    }
    fe_tensor *src = h ? h : x;
    if (!st && fe__needs_grad(2, (fe_tensor *[]){src, w})) {
        fe_node *n = fe__record(y, name, rmsnorm_backward, 2, (fe_tensor *[]){src, w});
        if (!n) st = FE_ERR_OOM;
        else fe__save(n, 0, rstd);
    }
    fe_free(rstd);
    if (st) {
        fe_free(y), fe_free(h);
        return st;
    }
    if (h_out) *h_out = h;
    else fe_free(h);
    *y_out = y;
    return FE_OK;
}

fe_tensor *fe_rmsnorm(fe_tensor *x, fe_tensor *w, double eps) {
    if (fe__any_null("rmsnorm", 1, x)) return NULL;
    fe_tensor *y = NULL;
    return rmsnorm_impl(x, NULL, w, eps, false, NULL, &y) ? NULL : y;
}

static fe_status rmsnorm_residual(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps, bool over,
                                  fe_tensor **h_out, fe_tensor **y_out) {
    if (fe__any_null("rmsnorm_residual", 2, x, r)) return FE_ERR_ARG;
    fe_tensor *h = NULL, *y = NULL;
    fe_status st = rmsnorm_impl(x, r, w, eps, over, &h, &y);
    if (st) return st;
    if (h_out) *h_out = h;
    else fe_free(h);
    if (y_out) *y_out = y;
    else fe_free(y);
    return FE_OK;
}

fe_status fe_rmsnorm_residual(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps,
                              fe_tensor **h_out, fe_tensor **y_out) {
    return rmsnorm_residual(x, r, w, eps, false, h_out, y_out);
}

fe_status fe__rmsnorm_residual_over(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps,
                                    fe_tensor **h_out, fe_tensor **y_out) {
    return rmsnorm_residual(x, r, w, eps, true, h_out, y_out);
}

/* ---- LayerNorm ------------------------------------------------------------------------ */

static fe_status layernorm_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    fe_tensor *xc = fe__contig_raw(x), *gc = fe__contig_raw(g);
    if (!xc || !gc) return fe_last_status();
    fe_tensor *gx = x->requires_grad ? fe__alloc(y->ndim, y->shape, y->dtype, y->st->dev) : NULL;
    fe_tensor *gw = w && w->requires_grad ? fe__alloc(1, w->shape, w->dtype, w->st->dev) : NULL;
    fe_tensor *gb = b && b->requires_grad ? fe__alloc(1, b->shape, b->dtype, b->st->dev) : NULL;
    fe_status st = fe__be(y)->layernorm_backward(gx, gw, gb, gc, xc, w, n->saved[0], n->saved[1]);
    gin[0] = gx, gin[1] = gw, gin[2] = gb;
    return st;
}

fe_tensor *fe_layernorm(fe_tensor *x, fe_tensor *w, fe_tensor *b, double eps) {
    if (fe__any_null("layernorm", 1, x) || fe__check_float("layernorm", x)) return NULL;
    if (x->ndim == 0) {
        fe_set_error(FE_ERR_SHAPE, "layernorm: needs at least one dim");
        return NULL;
    }
    int64_t C = x->shape[x->ndim - 1], rows = C ? fe_numel(x) / C : 0;
    if (check_vec("layernorm", "weight", w, x, C) || check_vec("layernorm", "bias", b, x, C))
        return NULL;
    fe_tensor *xc = fe__contig_raw(x);
    fe_tensor *y = fe__alloc(x->ndim, x->shape, x->dtype, x->st->dev);
    fe_tensor *mean = fe__alloc(1, &rows, stat_dtype(x), x->st->dev);
    fe_tensor *rstd = fe__alloc(1, &rows, stat_dtype(x), x->st->dev);
    fe_status st = xc && y && mean && rstd ? fe__be(x)->layernorm(y, mean, rstd, xc, w, b, eps)
                                           : fe_last_status();
    fe_free(xc);
    if (!st && fe__needs_grad(3, (fe_tensor *[]){x, w, b})) {
        fe_node *n = fe__record(y, "layernorm", layernorm_backward, 3, (fe_tensor *[]){x, w, b});
        if (!n) st = FE_ERR_OOM;
        else fe__save(n, 0, mean), fe__save(n, 1, rstd);
    }
    fe_free(mean), fe_free(rstd);
    return fe__done(y, st);
}

/* ---- SiLU gate ----------------------------------------------------------------------------- */

static fe_status silu_gate_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *a = fe__contig_raw(n->in[0]), *b = fe__contig_raw(n->in[1]), *gc = fe__contig_raw(g);
    if (!a || !b || !gc) return fe_last_status();
    fe_tensor *ga = n->in[0]->requires_grad ? fe__alloc(y->ndim, y->shape, y->dtype, y->st->dev) : NULL;
    fe_tensor *gb = n->in[1]->requires_grad ? fe__alloc(y->ndim, y->shape, y->dtype, y->st->dev) : NULL;
    gin[0] = ga, gin[1] = gb;
    return fe__be(y)->silu_gate_backward(ga, gb, gc, a, b);
}

fe_tensor *fe_silu_gate(fe_tensor *a, fe_tensor *b) {
    if (fe__any_null("silu_gate", 2, a, b) || fe__check_pair("silu_gate", a, b) ||
        fe__check_float("silu_gate", a))
        return NULL;
    if (!fe__same_shape(a, b)) {
        char x[96], y[96];
        fe_set_error(FE_ERR_SHAPE, "silu_gate: shapes differ: %s and %s", fe_shape_str(a, x, sizeof x),
                     fe_shape_str(b, y, sizeof y));
        return NULL;
    }
    fe_tensor *ac = fe__contig_raw(a), *bc = fe__contig_raw(b);
    fe_tensor *y = ac && bc ? fe__alloc(a->ndim, a->shape, a->dtype, a->st->dev) : NULL;
    fe_status st = y ? fe__be(a)->silu_gate(y, ac, bc) : fe_last_status();
    fe_free(ac), fe_free(bc);
    y = fe__done(y, st);
    if (y && fe__needs_grad(2, (fe_tensor *[]){a, b}) &&
        !fe__record(y, "silu_gate", silu_gate_backward, 2, (fe_tensor *[]){a, b}))
        return fe__done(y, FE_ERR_OOM);
    return y;
}

/* ---- RoPE ------------------------------------------------------------------------------------ */

fe_tensor *fe_rope_inv_freq(int64_t head_dim, double theta, fe_device dev) {
    if (head_dim < 2 || head_dim % 2 || theta <= 0) {
        fe_set_error(FE_ERR_ARG, "rope: head dim %" PRId64 " must be even and theta %g positive",
                     head_dim, theta);
        return NULL;
    }
    int64_t half = head_dim / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) {
        fe_set_error(FE_ERR_OOM, "rope: out of host memory");
        return NULL;
    }
    /* in f32 like Hugging Face: 1 / theta ** (arange(0, D, 2).float() / D) */
    for (int64_t i = 0; i < half; i++)
        f[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)head_dim);
    fe_tensor *t = fe_from_data(f, 1, &half, FE_F32, dev);
    free(f);
    return t;
}

/* over: write the result over x's storage (x contiguous) */
static fe_tensor *rope_raw(fe_tensor *x, fe_tensor *inv, int seq_dim, int64_t pos0, int sign,
                           bool over) {
    fe_tensor *xc = fe__contig_raw(x);
    fe_tensor *y = !xc ? NULL
                   : over && fe_is_contiguous(x)
                       ? fe__view(x, x->ndim, x->shape, x->stride, x->offset)
                       : fe__alloc(x->ndim, x->shape, x->dtype, x->st->dev);
    fe_status st = y ? fe__be(x)->rope(y, xc, inv, seq_dim, pos0, sign) : fe_last_status();
    fe_free(xc);
    return fe__done(y, st);
}

static fe_status rope_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    (void)y;
    gin[0] = rope_raw(g, n->saved[0], (int)n->i[0], n->i[1], -1, false);
    return gin[0] ? FE_OK : fe_last_status();
}

static fe_tensor *rope_op(fe_tensor *x, fe_tensor *inv_freq, int seq_dim, int64_t pos0, bool over) {
    if (fe__any_null("rope", 2, x, inv_freq) || fe__check_float("rope", x)) return NULL;
    int d = fe__norm_dim(seq_dim, x->ndim, "rope");
    if (d < 0) return NULL;
    int64_t D = x->shape[x->ndim - 1];
    if (d == x->ndim - 1 || D % 2 || inv_freq->ndim != 1 || inv_freq->shape[0] != D / 2 ||
        !fe_dtype_is_float(inv_freq->dtype) || inv_freq->st->dev.type != x->st->dev.type) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE,
                     "rope: input %s with positions on dim %d needs an even last dim and float "
                     "frequencies of half its size on the same device, got %s",
                     fe_shape_str(x, a, sizeof a), seq_dim, fe_shape_str(inv_freq, b, sizeof b));
        return NULL;
    }
    fe_tensor *y = rope_raw(x, inv_freq, d, pos0, 1, over);
    if (y && fe__needs_grad(1, &x)) {
        fe_node *n = fe__record(y, "rope", rope_backward, 1, &x);
        if (!n) return fe__done(y, FE_ERR_OOM);
        fe__save(n, 0, inv_freq);
        n->i[0] = d, n->i[1] = pos0;
    }
    return y;
}

fe_tensor *fe_rope(fe_tensor *x, fe_tensor *inv_freq, int seq_dim, int64_t pos0) {
    return rope_op(x, inv_freq, seq_dim, pos0, false);
}

fe_tensor *fe__rope_over(fe_tensor *x, fe_tensor *inv_freq, int seq_dim, int64_t pos0) {
    return rope_op(x, inv_freq, seq_dim, pos0, true);
}

/* ---- embedding --------------------------------------------------------------------------------- */

static fe_status check_index(const char *op, const fe_tensor *idx, const fe_tensor *like) {
    if (idx->dtype != FE_I32 && idx->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE, "%s: indices must be i32 or i64, not %s", op,
                            fe_dtype_name(idx->dtype));
    if (idx->st->dev.type != like->st->dev.type)
        return fe_set_error(FE_ERR_DEVICE, "%s: indices are on another device", op);
    return FE_OK;
}

static fe_status embedding_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    (void)y;
    fe_tensor *w = n->in[0], *gc = fe__contig_raw(g);
    fe_tensor *gw = gc ? fe__alloc(2, w->shape, w->dtype, w->st->dev) : NULL;
    fe_status st = gw ? fe__be(w)->embedding_backward(gw, gc, n->saved[0]) : fe_last_status();
    gin[0] = st ? NULL : gw;
    return st;
}

fe_tensor *fe_embedding(fe_tensor *weight, fe_tensor *idx) {
    if (fe__any_null("embedding", 2, weight, idx)) return NULL;
    if (weight->ndim != 2) {
        char b[96];
        fe_set_error(FE_ERR_SHAPE, "embedding: weight %s must be (rows, dim)",
                     fe_shape_str(weight, b, sizeof b));
        return NULL;
    }
    if (check_index("embedding", idx, weight) || idx->ndim + 1 > FE_MAX_DIMS) return NULL;
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
    shape[idx->ndim] = weight->shape[1];
    fe_tensor *wc = fe__contig_raw(weight), *ic = fe__contig_raw(idx);
    fe_tensor *y = wc && ic ? fe__alloc(idx->ndim + 1, shape, weight->dtype, weight->st->dev) : NULL;
    fe_status st = y ? fe__be(weight)->embedding(y, wc, ic) : fe_last_status();
    fe_free(wc);
    y = fe__done(y, st);
    if (y && fe__needs_grad(1, &weight)) {
        fe_node *n = fe__record(y, "embedding", embedding_backward, 1, &weight);
        if (!n) y = fe__done(y, FE_ERR_OOM);
        else fe__save(n, 0, ic);
    }
    fe_free(ic);
    return y;
}

/* ---- losses --------------------------------------------------------------------------------------- */

static fe_status cross_entropy_backward(fe_node *n, fe_tensor *y, fe_tensor *g, fe_tensor **gin) {
    (void)y;
    fe_tensor *lg = n->saved[1];
    fe_tensor *gx = fe__alloc(lg->ndim, lg->shape, lg->dtype, lg->st->dev);
    fe_status st = gx ? fe__be(lg)->cross_entropy_backward(gx, g, lg, n->saved[0], n->i[0])
                      : fe_last_status();
    if (!st && gx && !fe__same_shape(gx, n->in[0])) {
        gin[0] = fe_reshape(gx, n->in[0]->ndim, n->in[0]->shape);
        return gin[0] ? FE_OK : fe_last_status();
    }
    gin[0] = st ? NULL : gx;
    return st;
}

fe_tensor *fe_cross_entropy(fe_tensor *logits, fe_tensor *targets, int64_t ignore_index) {
    if (fe__any_null("cross_entropy", 2, logits, targets) || fe__check_float("cross_entropy", logits))
        return NULL;
    if (check_index("cross_entropy", targets, logits)) return NULL;
    int64_t V = logits->ndim ? logits->shape[logits->ndim - 1] : 0;
    int64_t rows = V ? fe_numel(logits) / V : 0;
    if (logits->ndim < 1 || fe_numel(targets) != rows) {
        char a[96], b[96];
        fe_set_error(FE_ERR_SHAPE, "cross_entropy: logits %s need one target per row, got %s",
                     fe_shape_str(logits, a, sizeof a), fe_shape_str(targets, b, sizeof b));
        return NULL;
    }
    int64_t shape2[2] = {rows, V};
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *l2 = fe_reshape(logits, 2, shape2);
    fe_tensor *lc = l2 ? fe_contiguous(l2) : NULL;
    fe_tensor *tc = fe_contiguous(targets);
    fe_set_grad_enabled(prev);
    fe_tensor *loss = lc && tc ? fe__alloc(0, NULL, stat_dtype(logits), logits->st->dev) : NULL;
    fe_status st = loss ? fe__be(logits)->cross_entropy(loss, lc, tc, ignore_index) : fe_last_status();
    if (!st && fe__needs_grad(1, &logits)) {
        fe_node *n = fe__record(loss, "cross_entropy", cross_entropy_backward, 1, &logits);
        if (!n) st = FE_ERR_OOM;
        else fe__save(n, 0, tc), fe__save(n, 1, lc), n->i[0] = ignore_index;
    }
    fe_free(l2), fe_free(lc), fe_free(tc);
    return fe__done(loss, st);
}

fe_tensor *fe_mse(fe_tensor *a, fe_tensor *b) {
    if (fe__any_null("mse", 2, a, b)) return NULL;
    if (!fe__same_shape(a, b)) {
        char x[96], y[96];
        fe_set_error(FE_ERR_SHAPE, "mse: shapes differ: %s and %s", fe_shape_str(a, x, sizeof x),
                     fe_shape_str(b, y, sizeof y));
        return NULL;
    }
    fe_tensor *d = fe_sub(a, b);
    fe_tensor *s = d ? fe_square(d) : NULL;
    fe_tensor *m = s ? fe_mean(s, 0, NULL, false) : NULL;
    fe_free(d), fe_free(s);
    return m;
}
