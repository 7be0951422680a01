/* Linear + cross-entropy in row chunks: the mean cross-entropy of x (N, C) @ w (V, C)^T
 * without the (N, V) logits or their gradient ever existing whole.
 *
 * For each chunk of rows: logits = x_c w^T; its loss; and, since the loss is linear in
 * its incoming gradient, the logits' gradient for an incoming 1 written over the logits
 * at once; then gx_c = glogits w and gw += glogits^T x_c, the sum made by the GEMM itself
 * (beta = 1; in an f32 accumulator when w is 16-bit). The chunk's share of the mean
 * is weighted on the device by count_c / count (rows whose target is not ignored), so
 * there is no host read. The node keeps gx and gw; its backward scales them by the
 * incoming gradient and hands them over. */
#include "ferric/fused_loss.h"
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define OP "linear_cross_entropy"
#define AUTO_CHUNK_BYTES ((int64_t)256 << 20) /* logits of one chunk, automatic size */

/* The automatic chunk size in bytes: FE_LCE_CHUNK_MIB (1..65536) overrides it, for
 * measuring the memory/speed trade (bench/train_llama.sh). */
static int64_t auto_chunk_bytes(void) {
    const char *v = getenv("FE_LCE_CHUNK_MIB");
    long mib = v ? strtol(v, NULL, 10) : 0;
    return mib >= 1 && mib <= 65536 ? (int64_t)mib << 20 : AUTO_CHUNK_BYTES;
}

/* dtype of the loss and its per-row statistics, as fe_cross_entropy uses */
static fe_dtype stat_dtype(fe_dtype dt) { return dt == FE_F64 ? FE_F64 : FE_F32; }

/* A view (rows, cols) of the contiguous t's rows r0.. (t viewed as (*, cols)). */
static fe_tensor *rows_of(fe_tensor *t, int64_t r0, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols}, st[2] = {cols, 1};
    return fe__view(t, 2, shape, st, t->offset + r0 * cols);
}

/* The transpose view (cols, rows) of a contiguous (rows, cols) matrix. */
static fe_tensor *transposed(fe_tensor *t, int64_t rows, int64_t cols) {
    int64_t shape[2] = {cols, rows}, st[2] = {1, cols};
    return fe__view(t, 2, shape, st, t->offset);
}

/* A 1-D view of elements i0 .. i0 + n of the contiguous t. */
static fe_tensor *span_of(fe_tensor *t, int64_t i0, int64_t n) {
    int64_t st = 1;
    return fe__view(t, 1, &n, &st, t->offset + i0);
}

/* out = a (op) b with a shaped like out and b broadcast to it; dtypes may differ (the
 * backends then compute in double); out may be a. */
static fe_status bin_into(fe_binary_op op, fe_tensor *out, fe_tensor *a, fe_tensor *b) {
    fe_tensor *eb = fe__expand_raw(b, out->ndim, out->shape);
    fe_status st = eb ? fe__be(out)->binary(op, out, a, eb, 1.0) : fe_last_status();
    fe_free(eb);
    return st;
}

/* A new 0-dim f64 tensor out = a (op) b for 0-dim or 1-element a and b. */
static fe_tensor *scalar_op(fe_binary_op op, fe_tensor *a, fe_tensor *b) {
    fe_tensor *out = fe__alloc(0, NULL, FE_F64, a->st->dev);
    fe_tensor *ea = out ? fe__expand_raw(a, 0, NULL) : NULL;
    fe_status st = ea ? bin_into(op, out, ea, b) : fe_last_status();
    fe_free(ea);
    return fe__done(out, st);
}

/* ---- validation -------------------------------------------------------------------- */

static fe_status check_args(fe_tensor *x, fe_tensor *w, fe_tensor *targets, int64_t chunk_rows) {
    char a[96], b[96];
    if (fe__check_float(OP, x) || fe__check_pair(OP, x, w)) return fe_last_status();
    if (w->ndim != 2)
        return fe_set_error(FE_ERR_SHAPE, OP ": weight %s must be (V, C)",
                            fe_shape_str(w, a, sizeof a));
    if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return fe_set_error(
            FE_ERR_SHAPE, OP ": input %s does not fit weight %s: its last dim must be C = %" PRId64,
            fe_shape_str(x, a, sizeof a), fe_shape_str(w, b, sizeof b), w->shape[1]);
    if (targets->dtype != FE_I32 && targets->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE, OP ": targets must be i32 or i64, not %s",
                            fe_dtype_name(targets->dtype));
    if (!fe__same_device(x, targets))
        return fe_set_error(FE_ERR_DEVICE, OP ": targets are on another device than the input");
    int64_t rows = fe__numel_of(x->ndim - 1, x->shape);
    if (fe_numel(targets) != rows)
        return fe_set_error(FE_ERR_SHAPE,
                            OP ": input %s has %" PRId64 " rows but targets %s hold %" PRId64
                               " (one target per row)",
                            fe_shape_str(x, a, sizeof a), rows, fe_shape_str(targets, b, sizeof b),
                            fe_numel(targets));
    if (chunk_rows < 0)
        return fe_set_error(FE_ERR_ARG, OP ": chunk_rows must be >= 0 (0: automatic), got %" PRId64,
                            chunk_rows);
    return FE_OK;
}

/* Rows per chunk: chunk_rows, else about AUTO_CHUNK_BYTES of logits with the rows spread
 * evenly over the chunks. */
static int64_t chunk_size(int64_t N, int64_t V, fe_dtype dt, int64_t chunk_rows) {
    if (N == 0) return 1;
    if (chunk_rows > 0) return chunk_rows < N ? chunk_rows : N;
    int64_t row_bytes = V * (int64_t)fe_dtype_size(dt);
    int64_t most = row_bytes > 0 ? auto_chunk_bytes() / row_bytes : N;
    if (most < 1) most = 1;
    int64_t n_chunks = (N + most - 1) / most;
    return (N + n_chunks - 1) / n_chunks;
}

/* ---- backward ---------------------------------------------------------------------- */

/* gx and gw were computed for an incoming gradient of 1: scale them by g on the device
 * (in place: in one launch through the backend's multi-tensor scale where it has one,
 * since a 16-bit tensor times an f32 scalar is a mixed-dtype map otherwise) and hand
 * them over (the tape refuses a second backward through a node). */
static fe_status lce_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out;
    fe_tensor *ts[2];
    int nt = 0;
    for (int k = 0; k < 2; k++)
        if (n->saved[k] && n->in[k]->requires_grad) ts[nt++] = n->saved[k];
    const fe_backend *be = fe__be(g);
    fe_status st = FE_OK;
    if (be->scale_multi && fe_numel(g) == 1 && fe_dtype_is_float(g->dtype))
        st = be->scale_multi(nt, ts, g);
    else
        for (int k = 0; k < nt && !st; k++) st = bin_into(FE_B_MUL, ts[k], ts[k], g);
    for (int k = 0; k < 2 && !st; k++) {
        fe_tensor *s = n->saved[k];
        if (!s || !n->in[k]->requires_grad) continue;
        /* a view in this backward's scope carries the storage on; the node lets go */
        if (!(gin[k] = fe__view(s, s->ndim, s->shape, s->stride, s->offset))) st = fe_last_status();
    }
    for (int k = 0; k < 2; k++)
        if (n->saved[k]) fe__release(n->saved[k]), n->saved[k] = NULL;
    return st;
}

/* ---- forward ----------------------------------------------------------------------- */

typedef struct lce {
    /* inputs, contiguous: x2 (N, C), wc (V, C), wt (C, V) view, t1 (N) */
    fe_tensor *xc, *x2, *wc, *wt, *tc, *t1;
    fe_tensor *keep;                 /* (N) f64: 1 where the target counts */
    fe_tensor *denom;                /* f64: max(count, 1) */
    fe_tensor *acc;                  /* f64: the loss so far */
    fe_tensor *buf;                  /* (rows, V): one chunk's logits, then their gradient */
    fe_tensor *gx, *gx2;             /* (..., C) like x, and its (N, C) view */
    fe_tensor *gw, *gw_acc;          /* (V, C); f32 accumulator for 16-bit w */
    bool grad, grad_w;               /* gradients wanted: any, of w */
} lce;

static void lce_free(lce *s) {
    fe_tensor **all[] = {&s->xc,  &s->x2,  &s->wc,   &s->wt,    &s->tc,  &s->t1, &s->keep,
                         &s->denom, &s->acc, &s->buf, &s->gx, &s->gx2, &s->gw, &s->gw_acc};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        fe_free(*all[i]);
        *all[i] = NULL;
    }
}

/* keep = (t1 != ignore) as f64; denom = max(sum(keep), 1). */
static fe_status count_rows(lce *s, int64_t ignore, fe_device dev) {
    int64_t N = s->t1->shape[0];
    fe_tensor *ign = fe_full(0, NULL, (double)ignore, FE_F64, dev);
    s->keep = ign ? fe__alloc(1, &N, FE_F64, dev) : NULL;
    fe_status st = s->keep ? bin_into(FE_B_EQ, s->keep, s->t1, ign) : fe_last_status();
    if (!st) st = fe__be(s->keep)->unary(FE_U_AFFINE, s->keep, s->keep, -1.0, 1.0);
    fe_tensor *count = st ? NULL : fe_sum(s->keep, 0, NULL, false);
    fe_tensor *one = count ? fe_full(0, NULL, 1.0, FE_F64, dev) : NULL;
    fe_tensor *ge = one ? scalar_op(FE_B_GE, count, one) : NULL; /* 1 when count >= 1 */
    fe_tensor *diff = ge ? scalar_op(FE_B_SUB, count, ge) : NULL;
    s->denom = diff ? scalar_op(FE_B_ADD, diff, one) : NULL;
    if (!st && !s->denom) st = fe_last_status();
    fe_free(ign), fe_free(count), fe_free(one), fe_free(ge), fe_free(diff);
    return st;
}

static bool narrow(fe_dtype dt) { return dt == FE_F16 || dt == FE_BF16; }

/* gw (+)= glogits^T x_c for one chunk, the GEMM adding to what the earlier chunks left:
 * straight into gw for a single chunk or an f32/f64 w; for 16-bit w over several chunks
 * into an f32 accumulator (16-bit products, f32 sums; gw comes from it at the end). */
static fe_status add_gw(lce *s, fe_tensor *glt, fe_tensor *xv, bool first) {
    fe_tensor *w = s->wc;
    if (!s->gw && !s->gw_acc && !(s->gw_acc = fe__alloc(2, w->shape, FE_F32, w->st->dev)))
        return fe_last_status();
    fe_tensor *gw = s->gw ? s->gw : s->gw_acc;
    return fe__be(xv)->matmul(gw, glt, xv, 1.0, first ? NULL : gw);
}

/* After the chunks: gw from the f32 accumulator, once the chunk buffer is gone. */
static fe_status finish_gw(lce *s) {
    fe_free(s->buf), s->buf = NULL;
    if (!s->gw_acc) return FE_OK;
    fe_tensor *w = s->wc;
    if (!(s->gw = fe__alloc(2, w->shape, w->dtype, w->st->dev))) return fe_last_status();
    fe_status st = fe__be(w)->copy(s->gw, s->gw_acc);
    fe_free(s->gw_acc), s->gw_acc = NULL;
    return st;
}

/* One chunk of rows r0 .. r0 + n. */
static fe_status do_chunk(lce *s, int64_t r0, int64_t n, int64_t ignore, bool first) {
    const fe_backend *be = fe__be(s->xc);
    int64_t C = s->wc->shape[1], V = s->wc->shape[0];
    fe_device dev = s->xc->st->dev;
    fe_tensor *xv = rows_of(s->x2, r0, n, C);
    fe_tensor *tv = xv ? span_of(s->t1, r0, n) : NULL;
    fe_tensor *kv = tv ? span_of(s->keep, r0, n) : NULL;
    fe_tensor *lg = kv ? rows_of(s->buf, 0, n, V) : NULL; /* (n, V) */
    fe_tensor *loss = lg ? fe__alloc(0, NULL, stat_dtype(s->xc->dtype), dev) : NULL;
    fe_tensor *count = NULL, *wgt = NULL, *part = NULL, *glt = NULL, *gxv = NULL;
    fe_status st = loss ? FE_OK : fe_last_status();
    if (!st) st = be->matmul(lg, xv, s->wt, 1.0, NULL);         /* logits (n, V) */
    if (!st && (st = be->cross_entropy(loss, lg, tv, ignore))) { /* mean over counted rows */
        char why[256]; /* the kernel numbers rows within the chunk: say where it starts */
        snprintf(why, sizeof why, "%s", fe_last_error());
        fe_set_error(st, OP ": in the chunk of rows %" PRId64 "..%" PRId64 " (numbered from 0): %s",
                     r0, r0 + n - 1, why);
    }
    if (!st && !(count = fe_sum(kv, 0, NULL, false))) st = fe_last_status();
    if (!st && !(wgt = scalar_op(FE_B_DIV, count, s->denom))) st = fe_last_status();
    if (!st && !(part = scalar_op(FE_B_MUL, loss, wgt))) st = fe_last_status();
    if (!st) st = be->binary(FE_B_ADD, s->acc, s->acc, part, 1.0);
    if (!st && s->grad) {
        /* d loss / d logits of this chunk = wgt * (softmax - onehot) / count_c, in place */
        st = be->cross_entropy_backward(lg, wgt, lg, tv, ignore);
        if (!st && s->gx) {
            if (!(gxv = rows_of(s->gx2, r0, n, C)))
                st = fe_last_status();
            else
                st = be->matmul(gxv, lg, s->wc, 1.0, NULL); /* (n, V) @ (V, C) */
        }
        if (!st && s->grad_w) {
            if (!(glt = transposed(lg, n, V)))
                st = fe_last_status();
            else
                st = add_gw(s, glt, xv, first); /* (V, n) @ (n, C) */
        }
    }
    fe_free(xv), fe_free(tv), fe_free(kv), fe_free(lg), fe_free(loss);
    fe_free(count), fe_free(wgt), fe_free(part), fe_free(glt), fe_free(gxv);
    return st;
}

static fe_status lce_setup(lce *s, fe_tensor *x, fe_tensor *w, fe_tensor *targets, int64_t N,
                           int64_t rows, bool grad_x, bool grad_w) {
    int64_t C = w->shape[1], V = w->shape[0];
    fe_device dev = x->st->dev;
    if (!(s->xc = fe__contig_raw(x)) || !(s->x2 = rows_of(s->xc, 0, N, C))) return fe_last_status();
    if (!(s->wc = fe__contig_raw(w)) || !(s->wt = transposed(s->wc, V, C))) return fe_last_status();
    if (!(s->tc = fe__contig_raw(targets)) || !(s->t1 = span_of(s->tc, 0, N)))
        return fe_last_status();
    if (!(s->acc = fe_zeros(0, NULL, FE_F64, dev))) return fe_last_status();
    if (grad_x) {
        if (!(s->gx = fe__alloc(x->ndim, x->shape, x->dtype, dev))) return fe_last_status();
        if (!(s->gx2 = rows_of(s->gx, 0, N, C))) return fe_last_status();
    }
    s->grad = grad_x || grad_w, s->grad_w = grad_w;
    if (!grad_w || (narrow(w->dtype) && N > rows)) return FE_OK; /* gw comes from gw_acc */
    s->gw = N ? fe__alloc(2, w->shape, w->dtype, dev) : fe_zeros(2, w->shape, w->dtype, dev);
    return s->gw ? FE_OK : fe_last_status();
}

fe_tensor *fe_linear_cross_entropy(fe_tensor *x, fe_tensor *w, fe_tensor *targets,
                                   int64_t ignore_index, int64_t chunk_rows) {
    if (fe__any_null(OP, 3, x, w, targets)) return NULL;
    if (check_args(x, w, targets, chunk_rows)) return NULL;
    int64_t V = w->shape[0], N = fe__numel_of(x->ndim - 1, x->shape);
    bool need = fe__needs_grad(2, (fe_tensor *[]){x, w});
    bool grad_x = need && x->requires_grad, grad_w = need && w->requires_grad;
    int64_t rows = chunk_size(N, V, x->dtype, chunk_rows);

    bool prev = fe_set_grad_enabled(false);
    lce s = {0};
    fe_tensor *loss = NULL;
    fe_status st = lce_setup(&s, x, w, targets, N, rows, grad_x, grad_w);
    if (!st) st = count_rows(&s, ignore_index, x->st->dev);
    if (!st && N > 0 && !(s.buf = fe__alloc(2, (int64_t[]){rows, V}, x->dtype, x->st->dev)))
        st = fe_last_status();
    for (int64_t r0 = 0; r0 < N && !st; r0 += rows) {
        int64_t n = N - r0 < rows ? N - r0 : rows;
        st = do_chunk(&s, r0, n, ignore_index, r0 == 0);
    }
    if (!st) st = finish_gw(&s); /* also gives the chunk memory back */
    if (!st && !(loss = fe__alloc(0, NULL, stat_dtype(x->dtype), x->st->dev)))
        st = fe_last_status();
    if (!st) st = fe__be(loss)->copy(loss, s.acc);
    fe_set_grad_enabled(prev);
    if (!st && need) {
        fe_node *n = fe__record(loss, OP, lce_backward, 2, (fe_tensor *[]){x, w});
        if (!n)
            st = fe_last_status();
        else
            fe__save(n, 0, s.gx), fe__save(n, 1, s.gw);
    }
    lce_free(&s);
    return fe__done(loss, st);
}
