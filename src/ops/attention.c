/* Scaled dot-product attention: the backend's fused kernels where it has them,
 * else composed from matmul, masked_fill and softmax, with grouped KV heads handled
 * by broadcasting (no copies of K and V).
 *
 * The fused path copies nothing around the kernels: q, k, v and the gradient of out
 * go in as the views they are when the backend can take their layout (backend.h),
 * and out and the gradients of q, k, v are allocated in the memory order of q, k, v.
 * The attention module's (B, T, H, D) projections seen as (B, H, T, D) thus get an
 * out whose transpose to (B, T, H*D) is a view, and gradients whose transpose back
 * to (B, T, H, D) is contiguous. */
#include "ops/ops_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* t for the fused kernels, without autograd: a view of it when they take its layout,
 * else a contiguous copy. */
static fe_tensor *fused_operand(fe_tensor *t) {
    return fe__attention_layout_ok(t) ? fe__view(t, t->ndim, t->shape, t->stride, t->offset)
                              : fe__contig_raw(t);
}

/* A new tensor shaped like t (B, H, N, D) whose memory orders B, H, N as t's strides
 * do (largest first, ties in place), D innermost: (B, N, H, D) memory for a
 * (B, N, H, D) projection seen as (B, H, N, D), contiguous for a contiguous t. */
static fe_tensor *alloc_like(const fe_tensor *t) {
    int perm[3] = {0, 1, 2};
    for (int x = 1; x < 3; x++) /* stable insertion sort, descending stride */
        for (int y = x; y > 0 && t->stride[perm[y]] > t->stride[perm[y - 1]]; y--) {
            int tmp = perm[y];
            perm[y] = perm[y - 1], perm[y - 1] = tmp;
        }
    int64_t ms[4] = {t->shape[perm[0]], t->shape[perm[1]], t->shape[perm[2]], t->shape[3]};
    int64_t mst[4], vst[4];
    fe_tensor *m = fe__alloc(4, ms, t->dtype, t->st->dev);
    if (!m) return NULL;
    fe__contiguous_strides(4, ms, mst);
    for (int i = 0; i < 3; i++) vst[perm[i]] = mst[i];
    vst[3] = 1;
    fe_tensor *out = fe__view(m, 4, t->shape, vst, m->offset);
    fe_free(m);
    return out;
}

static fe_status fused_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    fe_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
    fe_tensor *gc = fused_operand(g);
    fe_tensor *gq = alloc_like(q), *gk = alloc_like(k), *gv = alloc_like(v);
    if (!gc || !gq || !gk || !gv) {
        fe_free(gc), fe_free(gq), fe_free(gk), fe_free(gv);
        return fe_last_status() ? fe_last_status() : FE_ERR_OOM;
    }
    fe_status st = fe__be(q)->attention_backward(gq, gk, gv, gc, n->saved[1], n->saved[2],
                                                 n->saved[3], out, n->saved[0], n->i[0], n->f[0]);
    fe_free(gc);
    gin[0] = q->requires_grad ? gq : NULL;
    gin[1] = k->requires_grad ? gk : NULL;
    gin[2] = v->requires_grad ? gv : NULL;
    return st;
}

/* The backend's fused kernel, when it has one for these inputs; NULL with no error
 * set means "not applicable, compose instead". */
static fe_tensor *sdpa_fused(fe_tensor *q, fe_tensor *k, fe_tensor *v, bool causal, double scale) {
    const fe_backend *be = fe__be(q);
    int64_t D = q->shape[3];
    if (!be->attention || (q->dtype != FE_BF16 && q->dtype != FE_F16) || (D != 64 && D != 128) ||
        getenv("FE_NO_FUSED_ATTENTION"))
        return NULL;
    fe_tensor *qc = fused_operand(q), *kc = fused_operand(k), *vc = fused_operand(v);
    int64_t ls[3] = {q->shape[0], q->shape[1], q->shape[2]};
    fe_tensor *out = alloc_like(q);
    fe_tensor *lse = fe__alloc(3, ls, FE_F32, q->st->dev);
    fe_status st = qc && kc && vc && out && lse ? be->attention(out, lse, qc, kc, vc, causal, scale)
                                                : fe_last_status();
    if (!st && fe__needs_grad(3, (fe_tensor *[]){q, k, v})) {
        fe_node *n = fe__record(out, "attention", fused_backward, 3, (fe_tensor *[]){q, k, v});
        if (!n) st = FE_ERR_OOM;
        else {
            fe__save(n, 0, lse), fe__save(n, 1, qc), fe__save(n, 2, kc), fe__save(n, 3, vc);
            n->i[0] = causal, n->f[0] = scale;
        }
    }
    fe_free(qc), fe_free(kc), fe_free(vc), fe_free(lse);
    if (st) {
        fe_free(out);
        return NULL;
    }
    return out;
}

fe_tensor *fe_sdpa(fe_tensor *q, fe_tensor *k, fe_tensor *v, bool causal, double scale) {
    if (fe__any_null("sdpa", 3, q, k, v)) return NULL;
    if (fe__check_pair("sdpa", q, k) || fe__check_pair("sdpa", q, v) || fe__check_float("sdpa", q))
        return NULL;
    char a[96], b[96], c[96];
    if (q->ndim != 4 || k->ndim != 4 || !fe__same_shape(k, v) || q->shape[0] != k->shape[0] ||
        q->shape[3] != k->shape[3] || k->shape[1] == 0 || q->shape[1] % k->shape[1]) {
        fe_set_error(FE_ERR_SHAPE,
                     "sdpa: expected q (B, Hq, T, D), k and v (B, Hkv, S, D) with Hq a multiple "
                     "of Hkv; got q %s, k %s, v %s",
                     fe_shape_str(q, a, sizeof a), fe_shape_str(k, b, sizeof b),
                     fe_shape_str(v, c, sizeof c));
        return NULL;
    }
    int64_t B = q->shape[0], Hq = q->shape[1], T = q->shape[2], D = q->shape[3];
    int64_t Hkv = k->shape[1], S = k->shape[2], G = Hq / Hkv;
    if (scale <= 0) scale = 1.0 / sqrt((double)D);
    fe_clear_error();
    fe_tensor *fused = sdpa_fused(q, k, v, causal, scale);
    if (fused || fe_last_status() != FE_OK) return fused;
    /* q as (B, Hkv, G, T, D) against k, v as (B, Hkv, 1, S, D) */
    int64_t qs[5] = {B, Hkv, G, T, D}, ks[5] = {B, Hkv, 1, S, D};
    fe_tensor *q5 = fe_reshape(q, 5, qs), *k5 = fe_reshape(k, 5, ks), *v5 = fe_reshape(v, 5, ks);
    fe_tensor *s = q5 && k5 ? fe_matmul(q5, k5, false, true) : NULL; /* (B, Hkv, G, T, S) */
    fe_tensor *ss = s ? fe_scale(s, scale) : NULL, *sm = ss, *mask = NULL;
    if (ss && causal) {
        uint8_t *m = malloc((size_t)(T * S > 0 ? T * S : 1));
        if (!m) {
            fe_set_error(FE_ERR_OOM, "sdpa: out of host memory");
        } else {
            for (int64_t i = 0; i < T; i++)
                for (int64_t j = 0; j < S; j++) m[i * S + j] = j > i + (S - T);
            int64_t ms[2] = {T, S};
            mask = fe_from_data(m, 2, ms, FE_U8, q->st->dev);
            free(m);
        }
        sm = mask ? fe_masked_fill(ss, mask, -INFINITY) : NULL;
    }
    fe_tensor *p = sm ? fe_softmax(sm, -1) : NULL;
    fe_tensor *o5 = p && v5 ? fe_matmul(p, v5, false, false) : NULL; /* (B, Hkv, G, T, D) */
    int64_t os[4] = {B, Hq, T, D};
    fe_tensor *out = o5 ? fe_reshape(o5, 4, os) : NULL;
    fe_free(q5), fe_free(k5), fe_free(v5), fe_free(s), fe_free(mask), fe_free(p), fe_free(o5);
    if (sm != ss) fe_free(sm);
    fe_free(ss);
    return out;
}
