/* fe_tensor entry points of the flash-attention kernels: check the tensors, take the
 * stream and scratch through the hooks, call the raw launchers. */
#include "backends/cuda/flash_attention.h"

#include "backends/backend.h"
#include "core/internal.h"

static fe_flash_hooks g_hooks;

void fe_cuda_attention_set_hooks(const fe_flash_hooks *hooks) {
    if (hooks) g_hooks = *hooks;
    else memset(&g_hooks, 0, sizeof g_hooks);
}

/* FE_OK when t has ndim dims and dtype dt on a CUDA device. A 4-d operand may be any
 * view whose last dim has unit stride and whose other strides (of dims of size > 1)
 * and data pointer keep every row 16-byte aligned; lse (3-d f32) must be contiguous. */
static fe_status check_tensor(const char *op, const char *name, const fe_tensor *t, int ndim,
                              fe_dtype dt) {
    if (!t) return fe_set_error(FE_ERR_ARG, "%s: %s is NULL", op, name);
    if (t->ndim != ndim)
        return fe_set_error(FE_ERR_SHAPE, "%s: %s must have %d dims, has %d", op, name, ndim,
                            t->ndim);
    if (t->dtype != dt)
        return fe_set_error(FE_ERR_DTYPE, "%s: %s is %s, expected %s", op, name,
                            fe_dtype_name(t->dtype), fe_dtype_name(dt));
    if (t->st->dev.type != FE_CUDA)
        return fe_set_error(FE_ERR_DEVICE, "%s: %s is not on a CUDA device", op, name);
    if (ndim == 4) {
        if (!fe__attention_layout_ok(t))
            return fe_set_error(FE_ERR_ARG,
                                "%s: %s needs a unit-stride last dim and 16-byte aligned rows",
                                op, name);
        return FE_OK;
    }
    int64_t want = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != want)
            return fe_set_error(FE_ERR_ARG, "%s: %s must be contiguous", op, name);
        want *= t->shape[d];
    }
    return FE_OK;
}

/* The batch, head and row strides of a checked 4-d operand (0 for dims of size 1). */
static fe_flash_strides strides_of(const fe_tensor *t) {
    fe_flash_strides s = {t->shape[0] > 1 ? t->stride[0] : 0, t->shape[1] > 1 ? t->stride[1] : 0,
                          t->shape[2] > 1 ? t->stride[2] : 0};
    return s;
}

static bool same_dims(const fe_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
    return t->shape[0] == a && t->shape[1] == b && t->shape[2] == c && (t->ndim < 4 || t->shape[3] == d);
}

/* Fill the raw arguments from the forward tensors (shapes checked). */
static fe_status make_args(const char *op, fe_flash_args *a, const fe_tensor *out,
                           const fe_tensor *lse, const fe_tensor *q, const fe_tensor *k,
                           const fe_tensor *v, bool causal, double scale) {
    fe_status st;
    if ((st = check_tensor(op, "q", q, 4, q ? q->dtype : FE_BF16))) return st;
    const fe_dtype dt = q->dtype;
    if (dt != FE_BF16 && dt != FE_F16)
        return fe_set_error(FE_ERR_DTYPE, "%s: q is %s, expected bf16 or f16", op,
                            fe_dtype_name(dt));
    if ((st = check_tensor(op, "k", k, 4, dt)) || (st = check_tensor(op, "v", v, 4, dt)) ||
        (st = check_tensor(op, "out", out, 4, dt)) || (st = check_tensor(op, "lse", lse, 3, FE_F32)))
        return st;
    const int64_t B = q->shape[0], Hq = q->shape[1], T = q->shape[2], D = q->shape[3];
    const int64_t Hkv = k->shape[1], S = k->shape[2];
    if (!same_dims(k, B, Hkv, S, D) || !same_dims(v, B, Hkv, S, D) ||
        !same_dims(out, B, Hq, T, D) || !same_dims(lse, B, Hq, T, 0) || Hkv == 0 || Hq % Hkv)
        return fe_set_error(FE_ERR_SHAPE,
                            "%s: expected q, out (B, Hq, T, D), k, v (B, Hkv, S, D), lse (B, Hq, "
                            "T) with Hq a multiple of Hkv",
                            op);
    const int dev = q->st->dev.index;
    if (k->st->dev.index != dev || v->st->dev.index != dev || out->st->dev.index != dev ||
        lse->st->dev.index != dev)
        return fe_set_error(FE_ERR_DEVICE, "%s: tensors on different devices", op);
    memset(a, 0, sizeof *a);
    a->dtype = dt, a->device = dev;
    a->B = B, a->Hq = Hq, a->Hkv = Hkv, a->T = T, a->S = S, a->D = D;
    a->causal = causal, a->scale = scale;
    a->q = fe__ptr(q), a->k = fe__ptr(k), a->v = fe__ptr(v);
    a->out = fe__ptr(out), a->lse = (float *)fe__ptr(lse);
    a->sq = strides_of(q), a->sk = strides_of(k), a->sv = strides_of(v), a->sout = strides_of(out);
    return FE_OK;
}

/* The stream of `dev` from the hook (device made current), or NULL = default stream. */
static fe_status get_stream(int dev, void **stream) {
    *stream = NULL;
    if (!g_hooks.stream) return FE_OK;
    fe_clear_error();
    *stream = g_hooks.stream(dev);
    if (!*stream)
        return fe_last_status() ? fe_last_status()
                                : fe_set_error(FE_ERR_DEVICE, "attention: no stream for cuda:%d", dev);
    return FE_OK;
}

fe_status fe_cuda_attention(fe_tensor *out, fe_tensor *lse, const fe_tensor *q, const fe_tensor *k,
                            const fe_tensor *v, bool causal, double scale) {
    fe_flash_args a;
    void *stream;
    fe_status st = make_args("attention", &a, out, lse, q, k, v, causal, scale);
    if (!st) st = get_stream(a.device, &stream);
    if (!st) st = fe_flash_attention_forward(&a, stream);
    return st;
}

fe_status fe_cuda_attention_backward(fe_tensor *gq, fe_tensor *gk, fe_tensor *gv,
                                     const fe_tensor *gout, const fe_tensor *q,
                                     const fe_tensor *k, const fe_tensor *v,
                                     const fe_tensor *out, const fe_tensor *lse, bool causal,
                                     double scale) {
    static const char *op = "attention backward";
    fe_flash_args a;
    void *stream;
    fe_status st = make_args(op, &a, out, lse, q, k, v, causal, scale);
    if (!st && !((st = check_tensor(op, "gout", gout, 4, a.dtype)) ||
                 (st = check_tensor(op, "gq", gq, 4, a.dtype)) ||
                 (st = check_tensor(op, "gk", gk, 4, a.dtype)) ||
                 (st = check_tensor(op, "gv", gv, 4, a.dtype)))) {
        if (!fe__same_shape(gout, q) || !fe__same_shape(gq, q) || !fe__same_shape(gk, k) ||
            !fe__same_shape(gv, v))
            st = fe_set_error(FE_ERR_SHAPE, "%s: gout, gq, gk, gv must be shaped like q, q, k, v",
                              op);
    }
    if (st) return st;
    a.gout = fe__ptr(gout), a.gq = fe__ptr(gq), a.gk = fe__ptr(gk), a.gv = fe__ptr(gv);
    a.sgout = strides_of(gout), a.sgq = strides_of(gq), a.sgk = strides_of(gk);
    a.sgv = strides_of(gv);
    if ((st = get_stream(a.device, &stream))) return st;
    const size_t ws = fe_flash_attention_workspace_size(&a);
    void *w = NULL;
    const fe_device dev = {FE_CUDA, a.device};
    const bool hooked = g_hooks.alloc && g_hooks.free && ws > 0;
    if (hooked && (st = g_hooks.alloc(dev, ws, &w))) return st;
    st = fe_flash_attention_backward(&a, w, stream);
    /* stream-ordered reuse: the allocator hands this block out again only to later work
     * on the same stream */
    if (hooked) g_hooks.free(dev, w, ws);
    return st;
}
