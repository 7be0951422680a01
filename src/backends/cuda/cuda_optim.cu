/* CUDA multi-tensor optimizer kernels: AdamW over many tensors (which can also write the
 * low-precision compute copy of each parameter), the sum of squares of many gradients
 * (two deterministic stages, no atomics) and a scale of many tensors by a device scalar.
 * A launch takes up to MT_MAX tensors, passed by value in the kernel's
 * parameters (under the 4 KiB limit of every driver); each tensor is cut in chunks of
 * MT_CHUNK elements and the blocks walk the chunks of all tensors. Within a chunk each
 * thread moves 4 consecutive elements at a time, with 8- or 16-byte loads where the
 * addresses allow. f32/f16/bf16 tensors compute in f32, f64 ones in f64. */
#include "backends/cuda/cuda_internal.cuh"

#define MT_MAX 40
#define MT_CHUNK 32768
#define MT_THREADS 512

/* Up to MT_MAX tensors of one launch. chunk0[i] is the first chunk of tensor i;
 * chunk0[n] the total. decay[i] = 1 - lr * wd_i and c[i], the compute copy of p[i] or
 * NULL, are AdamW's only. */
typedef struct mt_list {
    int n;
    void *p[MT_MAX];
    const void *g[MT_MAX];
    void *m[MT_MAX];
    void *v[MT_MAX];
    void *c[MT_MAX];
    int64_t numel[MT_MAX];
    int64_t chunk0[MT_MAX + 1];
    double decay[MT_MAX];
    unsigned char pdt[MT_MAX], gdt[MT_MAX], cdt[MT_MAX];
} mt_list;
static_assert(sizeof(mt_list) + 128 <= 4096, "kernel parameters are limited to 4 KiB");

/* The tensor that owns chunk c (binary search over chunk0). */
__device__ __forceinline__ int mt_find(const mt_list &L, int64_t c) {
    int lo = 0, hi = L.n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (L.chunk0[mid] <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Load elements i..i+cnt-1 (cnt <= 4) of a buffer of dtype dt as C; vectorised when
 * cnt is 4 and the address is aligned to the vector size. */
template <typename C>
__device__ __forceinline__ void ld4(const void *p, int dt, int64_t i, int cnt, C out[4]) {
    if (cnt == 4) {
        switch (dt) {
        case FE_F32: {
            const float *q = (const float *)p + i;
            if (!((uintptr_t)q & 15)) {
                float4 x = *(const float4 *)q;
                out[0] = (C)x.x, out[1] = (C)x.y, out[2] = (C)x.z, out[3] = (C)x.w;
                return;
            }
            break;
        }
        case FE_BF16: {
            const __nv_bfloat16 *q = (const __nv_bfloat16 *)p + i;
            if (!((uintptr_t)q & 7)) {
                uint2 x = *(const uint2 *)q;
                const __nv_bfloat16 *h = (const __nv_bfloat16 *)&x;
#pragma unroll
                for (int k = 0; k < 4; k++)
                    out[k] = (C)__bfloat162float(h[k]);
                return;
            }
            break;
        }
        case FE_F16: {
            const __half *q = (const __half *)p + i;
            if (!((uintptr_t)q & 7)) {
                uint2 x = *(const uint2 *)q;
                const __half *h = (const __half *)&x;
#pragma unroll
                for (int k = 0; k < 4; k++)
                    out[k] = (C)__half2float(h[k]);
                return;
            }
            break;
        }
        default: break;
        }
    }
    for (int k = 0; k < 4; k++)
        out[k] = k < cnt ? (C)cu_load_dyn(p, dt, i + k) : (C)0;
}

/* Store cnt <= 4 values as elements i.. of a buffer of dtype dt (rounding as the CPU). */
template <typename C>
__device__ __forceinline__ void st4(void *p, int dt, int64_t i, int cnt, const C in[4]) {
    if (cnt == 4) {
        switch (dt) {
        case FE_F32: {
            float *q = (float *)p + i;
            if (!((uintptr_t)q & 15)) {
                *(float4 *)q = make_float4((float)in[0], (float)in[1], (float)in[2], (float)in[3]);
                return;
            }
            break;
        }
        case FE_BF16: {
            __nv_bfloat16 *q = (__nv_bfloat16 *)p + i;
            if (!((uintptr_t)q & 7)) {
                uint2 x;
                __nv_bfloat16 *h = (__nv_bfloat16 *)&x;
#pragma unroll
                for (int k = 0; k < 4; k++)
                    h[k] = __float2bfloat16_rn((float)in[k]);
                *(uint2 *)q = x;
                return;
            }
            break;
        }
        case FE_F16: {
            __half *q = (__half *)p + i;
            if (!((uintptr_t)q & 7)) {
                uint2 x;
                __half *h = (__half *)&x;
#pragma unroll
                for (int k = 0; k < 4; k++)
                    h[k] = __float2half_rn((float)in[k]);
                *(uint2 *)q = x;
                return;
            }
            break;
        }
        default: break;
        }
    }
    for (int k = 0; k < cnt; k++)
        cu_store_dyn(p, dt, i + k, (double)in[k]);
}

__device__ __forceinline__ float cu_sqrt_c(float x) { return sqrtf(x); }
__device__ __forceinline__ double cu_sqrt_c(double x) { return sqrt(x); }

/* x as a tensor of dtype dt stores it (the value a later cast reads back). */
template <typename C> __device__ __forceinline__ C cu_round_as(int dt, C x) {
    switch (dt) {
    case FE_F32: return (C)(float)x;
    case FE_BF16: return (C)__bfloat162float(__float2bfloat16_rn((float)x));
    case FE_F16: return (C)__half2float(__float2half_rn((float)x));
    default: return x;
    }
}

/* True when 4 elements of dtype dt at p go in one vector load (f32: 16 bytes, 16-bit: 8). */
__device__ __forceinline__ bool vec4_ok(const void *p, int dt) {
    uintptr_t a = (uintptr_t)p;
    return dt == FE_F32 ? !(a & 15) : (dt == FE_BF16 || dt == FE_F16) ? !(a & 7) : false;
}

/* ---- AdamW -------------------------------------------------------------------------- */

/* S: the state/compute type (float for f32 state, double for f64 state). The gradient is
 * multiplied by us, then by gs, each product rounded in S (a factor of 1 changes nothing),
 * as fe_adamw_args says. */
template <typename S>
__global__ void __launch_bounds__(MT_THREADS)
    k_adamw(mt_list L, S b1, S b2, S eps, S step, S inv_sqrt_bc2, S us, const void *gscale,
            int gs_dt, const void *skip, int skip_dt) {
    if (skip && cu_load_dyn(skip, skip_dt, 0) != 0.0) return;
    S gs = gscale ? (S)cu_load_dyn(gscale, gs_dt, 0) : (S)1;
    int sdt = sizeof(S) == 8 ? FE_F64 : FE_F32;
    for (int64_t c = blockIdx.x; c < L.chunk0[L.n]; c += gridDim.x) {
        int t = mt_find(L, c);
        int64_t j0 = (c - L.chunk0[t]) * MT_CHUNK, len = L.numel[t] - j0;
        if (len > MT_CHUNK) len = MT_CHUNK;
        S decay = (S)L.decay[t];
        for (int64_t j = (int64_t)threadIdx.x * 4; j < len; j += (int64_t)blockDim.x * 4) {
            int cnt = len - j < 4 ? (int)(len - j) : 4;
            int64_t i = j0 + j;
            S w[4], g[4], m[4], v[4];
            ld4<S>(L.p[t], L.pdt[t], i, cnt, w);
            ld4<S>(L.g[t], L.gdt[t], i, cnt, g);
            ld4<S>(L.m[t], sdt, i, cnt, m);
            ld4<S>(L.v[t], sdt, i, cnt, v);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                S gk = g[k] * us;
                gk = gk * gs;
                m[k] = b1 * m[k] + ((S)1 - b1) * gk;
                v[k] = b2 * v[k] + ((S)1 - b2) * gk * gk;
                S denom = cu_sqrt_c(v[k]) * inv_sqrt_bc2 + eps;
                w[k] = w[k] * decay - step * (m[k] / denom);
            }
            st4<S>(L.p[t], L.pdt[t], i, cnt, w);
            st4<S>(L.m[t], sdt, i, cnt, m);
            st4<S>(L.v[t], sdt, i, cnt, v);
            if (L.c[t]) { /* the compute copy: a cast of p as just stored */
#pragma unroll
                for (int k = 0; k < 4; k++)
                    w[k] = cu_round_as<S>(L.pdt[t], w[k]);
                st4<S>(L.c[t], L.cdt[t], i, cnt, w);
            }
        }
    }
}

static fe_status check_tensor(const char *op, const fe_tensor *t, int i, fe_device dev) {
    if (!t) return fe_set_error(FE_ERR_ARG, "%s (cuda): tensor %d is NULL", op, i);
    if (!fe_dtype_is_float(t->dtype))
        return fe_set_error(FE_ERR_DTYPE, "%s (cuda): tensor %d is %s, expected a float dtype", op,
                            i, fe_dtype_name(t->dtype));
    if (t->st->dev.type != FE_CUDA || t->st->dev.index != dev.index)
        return fe_set_error(FE_ERR_DEVICE, "%s (cuda): tensor %d is on another device", op, i);
    if (!fe_is_contiguous(t))
        return fe_set_error(FE_ERR_ARG, "%s (cuda): tensor %d is not contiguous", op, i);
    return FE_OK;
}

static fe_status check_scalar(const char *op, const fe_tensor *s, fe_device dev, bool want_float) {
    if (!s) return FE_OK;
    if (fe_numel(s) != 1 || (want_float && !fe_dtype_is_float(s->dtype)))
        return fe_set_error(FE_ERR_ARG, "%s (cuda): a scalar argument must hold one %s", op,
                            want_float ? "float" : "element");
    if (s->st->dev.type != FE_CUDA || s->st->dev.index != dev.index)
        return fe_set_error(FE_ERR_DEVICE, "%s (cuda): a scalar argument is on another device",
                            op);
    return FE_OK;
}

/* Grid for a launch over `chunks` chunks. */
static unsigned mt_blocks(const cu_dev *d, int64_t chunks) {
    int64_t cap = (int64_t)d->sm_count * 4;
    return (unsigned)(chunks < cap ? (chunks > 0 ? chunks : 1) : cap);
}

/* Append tensor i to L (c: its compute copy, or NULL): returns false when L is full. */
static bool mt_push(mt_list *L, void *p, const void *g, void *m, void *v, int64_t numel,
                    double decay, fe_dtype pdt, fe_dtype gdt, void *c = NULL,
                    fe_dtype cdt = FE_F32) {
    if (L->n == MT_MAX) return false;
    int k = L->n++;
    L->p[k] = p, L->g[k] = g, L->m[k] = m, L->v[k] = v, L->c[k] = c;
    L->numel[k] = numel;
    L->decay[k] = decay;
    L->pdt[k] = (unsigned char)pdt, L->gdt[k] = (unsigned char)gdt;
    L->cdt[k] = (unsigned char)cdt;
    L->chunk0[k + 1] = L->chunk0[k] + (numel + MT_CHUNK - 1) / MT_CHUNK;
    return true;
}

template <typename S>
static fe_status adamw_launch(cu_dev *d, mt_list *L, const fe_adamw_args *a) {
    if (L->n == 0) return FE_OK;
    const fe_tensor *gs = a->grad_scale, *sk = a->skip;
    double us = a->unscale != 0.0 ? a->unscale : 1.0;
    k_adamw<S><<<mt_blocks(d, L->chunk0[L->n]), MT_THREADS, 0, d->stream>>>(
        *L, (S)a->beta1, (S)a->beta2, (S)a->eps, (S)(a->lr / a->bc1), (S)(1.0 / sqrt(a->bc2)),
        (S)us, gs ? fe__ptr(gs) : NULL, gs ? (int)gs->dtype : 0, sk ? fe__ptr(sk) : NULL,
        sk ? (int)sk->dtype : 0);
    L->n = 0;
    return cu_launched("adamw kernel");
}

extern "C" fe_status fe_cuda_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g,
                                   fe_tensor *const *m, fe_tensor *const *v,
                                   const fe_adamw_args *a) {
    if (n < 0 || (n > 0 && (!p || !g || !m || !v || !a || !a->weight_decay)))
        return fe_set_error(FE_ERR_ARG, "adamw (cuda): NULL arguments");
    if (n == 0) return FE_OK;
    if (!p[0]) return fe_set_error(FE_ERR_ARG, "adamw (cuda): tensor 0 is NULL");
    fe_device dev = p[0]->st->dev;
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    for (int i = 0; i < n; i++) {
        if (check_tensor("adamw", p[i], i, dev) || check_tensor("adamw", g[i], i, dev) ||
            check_tensor("adamw", m[i], i, dev) || check_tensor("adamw", v[i], i, dev))
            return fe_last_status();
        fe_dtype sdt = p[i]->dtype == FE_F64 ? FE_F64 : FE_F32;
        if (m[i]->dtype != sdt || v[i]->dtype != sdt)
            return fe_set_error(FE_ERR_DTYPE, "adamw (cuda): state of tensor %d must be %s", i,
                                fe_dtype_name(sdt));
        int64_t k = fe_numel(p[i]);
        if (fe_numel(g[i]) != k || fe_numel(m[i]) != k || fe_numel(v[i]) != k)
            return fe_set_error(FE_ERR_SHAPE, "adamw (cuda): tensor %d: sizes of p, g, m, v differ",
                                i);
        const fe_tensor *c = a->copy ? a->copy[i] : NULL;
        if (c && check_tensor("adamw", c, i, dev)) return fe_last_status();
        if (c && fe_numel(c) != k)
            return fe_set_error(FE_ERR_SHAPE, "adamw (cuda): tensor %d: its copy has another size",
                                i);
    }
    if (check_scalar("adamw", a->grad_scale, dev, true) || check_scalar("adamw", a->skip, dev, false))
        return fe_last_status();
    /* f32-state tensors and f64-state tensors go to separate launches */
    mt_list *L = (mt_list *)calloc(1, sizeof *L);
    if (!L) return fe_set_error(FE_ERR_OOM, "adamw (cuda): out of host memory");
    fe_status st = FE_OK;
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (int i = 0; i < n && !st; i++) {
            bool f64 = p[i]->dtype == FE_F64;
            if (f64 != (pass == 1) || fe_numel(p[i]) == 0) continue;
            double decay = 1.0 - a->lr * a->weight_decay[i];
            fe_tensor *c = a->copy ? a->copy[i] : NULL;
            while (!st && !mt_push(L, fe__ptr(p[i]), fe__ptr(g[i]), fe__ptr(m[i]), fe__ptr(v[i]),
                                   fe_numel(p[i]), decay, p[i]->dtype, g[i]->dtype,
                                   c ? fe__ptr(c) : NULL, c ? c->dtype : FE_F32))
                st = f64 ? adamw_launch<double>(d, L, a) : adamw_launch<float>(d, L, a);
        }
        if (!st) st = pass == 1 ? adamw_launch<double>(d, L, a) : adamw_launch<float>(d, L, a);
    }
    free(L);
    return st;
}

/* ---- sum of squares ---------------------------------------------------------------------- */

#define SQ_U 4
/* The sum of squares and the scale walk sub-chunks of MT_SUB elements (one pass of a block
 * with SQ_U vectors per thread), MT_SUBS to a chunk: finer work for the blocks to share. */
#define MT_SUB (MT_THREADS * 4 * SQ_U)
#define MT_SUBS (MT_CHUNK / MT_SUB)
static_assert(MT_CHUNK % MT_SUB == 0, "MT_CHUNK must be a multiple of MT_SUB");

/* part[blockIdx.x] = sum of squares over the chunks this block walks (f64), each element
 * first multiplied by the scale (scf in f32 for f32/f16/bf16 tensors, scd for f64 ones). */
__global__ void __launch_bounds__(MT_THREADS)
    k_sumsq(mt_list L, double *part, float scf, double scd) {
    __shared__ double sh[32];
    double acc = 0.0;
    for (int64_t q = blockIdx.x; q < L.chunk0[L.n] * MT_SUBS; q += gridDim.x) {
        int64_t c = q / MT_SUBS;
        int t = mt_find(L, c);
        int64_t j0 = (c - L.chunk0[t]) * MT_CHUNK + (q % MT_SUBS) * MT_SUB;
        int64_t len = L.numel[t] - j0;
        if (len <= 0) continue; /* past the end of the tensor's last, partial chunk */
        if (len > MT_SUB) len = MT_SUB;
        int dt = L.gdt[t];
        bool f64 = dt == FE_F64;
        if (len == MT_SUB && vec4_ok(L.g[t], dt)) {
            /* a whole aligned f32/f16/bf16 sub-chunk (the base pointer decides: j0 is a
             * multiple of MT_SUB): SQ_U vector loads in flight per thread, squares summed in
             * f64 in the same order as the generic loop below */
            for (int64_t j = (int64_t)threadIdx.x * 4; j < MT_SUB;
                 j += (int64_t)blockDim.x * 4 * SQ_U) {
                float x[SQ_U][4];
#pragma unroll
                for (int u = 0; u < SQ_U; u++)
                    ld4<float>(L.g[t], dt, j0 + j + (int64_t)u * blockDim.x * 4, 4, x[u]);
#pragma unroll
                for (int u = 0; u < SQ_U; u++)
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        float y = x[u][k] * scf; /* rounded to f32, as the CPU's */
                        acc += (double)y * (double)y;
                    }
            }
            continue;
        }
        for (int64_t j = (int64_t)threadIdx.x * 4; j < len; j += (int64_t)blockDim.x * 4) {
            int cnt = len - j < 4 ? (int)(len - j) : 4;
            if (f64) {
                double x[4];
                ld4<double>(L.g[t], dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++) {
                    double y = x[k] * scd;
                    acc += y * y;
                }
            } else {
                float x[4];
                ld4<float>(L.g[t], dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++) {
                    float y = x[k] * scf;
                    acc += (double)y * (double)y;
                }
            }
        }
    }
    acc = cu_block_sum(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* out[0] = sum of part[0..P) in a fixed order (one block). */
__global__ void __launch_bounds__(1024) k_sumsq_final(void *out, int out_dt, const double *part, int P) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        s += part[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) cu_store_dyn(out, out_dt, 0, s);
}

/* Blocks resident on one SM for a kernel of MT_THREADS threads (at least 1). */
static int mt_occupancy(const void *fn) {
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, MT_THREADS, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        occ = 1;
    }
    return occ > 0 ? occ : 1;
}

/* Grid for a sub-chunk kernel over `chunks` chunks: one wave of resident blocks at most
 * (occ per SM), so that every block walks about as many sub-chunks as every other. */
static unsigned sub_blocks(const cu_dev *d, int64_t chunks, int occ) {
    int64_t units = chunks * MT_SUBS, cap = (int64_t)d->sm_count * occ;
    return (unsigned)(units < cap ? (units > 0 ? units : 1) : cap);
}

extern "C" fe_status fe_cuda_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g,
                                          double scale) {
    if (!out || n < 0 || (n > 0 && !g))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cuda): NULL arguments");
    if (fe_numel(out) != 1 || (out->dtype != FE_F32 && out->dtype != FE_F64))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cuda): out must be one f32 or f64 element");
    fe_device dev = out->st->dev;
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    for (int i = 0; i < n; i++)
        if (check_tensor("grad_norm_sq", g[i], i, dev)) return fe_last_status();
    /* plan the launches first so the partial sums fit one scratch buffer */
    mt_list *L = (mt_list *)calloc(1, sizeof *L);
    if (!L) return fe_set_error(FE_ERR_OOM, "grad_norm_sq (cuda): out of host memory");
    static int occ = 0; /* the same for every launch: computed once */
    if (!occ) occ = mt_occupancy((const void *)k_sumsq);
    int64_t P = 0;
    for (int i = 0; i < n; i++) {
        if (fe_numel(g[i]) == 0) continue;
        if (!mt_push(L, NULL, fe__ptr(g[i]), NULL, NULL, fe_numel(g[i]), 0, FE_F32, g[i]->dtype)) {
            P += sub_blocks(d, L->chunk0[L->n], occ);
            L->n = 0;
            mt_push(L, NULL, fe__ptr(g[i]), NULL, NULL, fe_numel(g[i]), 0, FE_F32, g[i]->dtype);
        }
    }
    if (L->n) P += sub_blocks(d, L->chunk0[L->n], occ);
    L->n = 0;
    double *part = NULL;
    size_t bytes = (size_t)(P > 0 ? P : 1) * sizeof(double);
    fe_status st = cu_scratch(d, bytes, (void **)&part);
    int64_t off = 0;
    for (int i = 0; i <= n && !st; i++) {
        bool last = i == n;
        if (!last && fe_numel(g[i]) == 0) continue;
        if (last || !mt_push(L, NULL, fe__ptr(g[i]), NULL, NULL, fe_numel(g[i]), 0, FE_F32,
                             g[i]->dtype)) {
            if (L->n) {
                unsigned nb = sub_blocks(d, L->chunk0[L->n], occ);
                k_sumsq<<<nb, MT_THREADS, 0, d->stream>>>(*L, part + off, (float)scale, scale);
                st = cu_launched("grad_norm_sq kernel");
                off += nb;
                L->n = 0;
            }
            if (!last) mt_push(L, NULL, fe__ptr(g[i]), NULL, NULL, fe_numel(g[i]), 0, FE_F32,
                               g[i]->dtype);
        }
    }
    if (!st) {
        k_sumsq_final<<<1, 1024, 0, d->stream>>>(fe__ptr(out), out->dtype, part, (int)P);
        st = cu_launched("grad_norm_sq kernel (final)");
    }
    if (part) cu_scratch_free(d, part, bytes);
    free(L);
    return st;
}

/* ---- scale by a device scalar -------------------------------------------------------------- */

__global__ void __launch_bounds__(MT_THREADS) k_scale_multi(mt_list L, const void *s, int s_dt) {
    double f = cu_load_dyn(s, s_dt, 0);
    for (int64_t q = blockIdx.x; q < L.chunk0[L.n] * MT_SUBS; q += gridDim.x) {
        int64_t c = q / MT_SUBS;
        int t = mt_find(L, c);
        int64_t j0 = (c - L.chunk0[t]) * MT_CHUNK + (q % MT_SUBS) * MT_SUB;
        int64_t len = L.numel[t] - j0;
        if (len <= 0) continue; /* past the end of the tensor's last, partial chunk */
        if (len > MT_SUB) len = MT_SUB;
        int dt = L.pdt[t];
        float *pf = (float *)L.p[t] + j0;
        if (dt == FE_F32 && !((uintptr_t)pf & 15) && len == MT_SUB) {
            /* a whole aligned f32 sub-chunk: SQ_U 16-byte loads in flight per thread */
            float ff = (float)f;
            for (int64_t j = (int64_t)threadIdx.x * 4; j < MT_SUB;
                 j += (int64_t)blockDim.x * 4 * SQ_U) {
                float4 x[SQ_U];
#pragma unroll
                for (int u = 0; u < SQ_U; u++)
                    x[u] = *(const float4 *)(pf + j + (int64_t)u * blockDim.x * 4);
#pragma unroll
                for (int u = 0; u < SQ_U; u++)
                    *(float4 *)(pf + j + (int64_t)u * blockDim.x * 4) =
                        make_float4(x[u].x * ff, x[u].y * ff, x[u].z * ff, x[u].w * ff);
            }
            continue;
        }
        for (int64_t j = (int64_t)threadIdx.x * 4; j < len; j += (int64_t)blockDim.x * 4) {
            int cnt = len - j < 4 ? (int)(len - j) : 4;
            if (dt == FE_F64) {
                double x[4];
                ld4<double>(L.p[t], dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++)
                    x[k] *= f;
                st4<double>(L.p[t], dt, j0 + j, cnt, x);
            } else {
                float x[4], ff = (float)f;
                ld4<float>(L.p[t], dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++)
                    x[k] *= ff;
                st4<float>(L.p[t], dt, j0 + j, cnt, x);
            }
        }
    }
}

extern "C" fe_status fe_cuda_scale_multi(int n, fe_tensor *const *t, const fe_tensor *s) {
    if (!s || n < 0 || (n > 0 && !t))
        return fe_set_error(FE_ERR_ARG, "scale_multi (cuda): NULL arguments");
    fe_device dev = s->st->dev;
    if (check_scalar("scale_multi", s, dev, true)) return fe_last_status();
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    for (int i = 0; i < n; i++)
        if (check_tensor("scale_multi", t[i], i, dev)) return fe_last_status();
    mt_list *L = (mt_list *)calloc(1, sizeof *L);
    if (!L) return fe_set_error(FE_ERR_OOM, "scale_multi (cuda): out of host memory");
    static int occ = 0; /* the same for every launch: computed once */
    if (!occ) occ = mt_occupancy((const void *)k_scale_multi);
    fe_status st = FE_OK;
    for (int i = 0; i <= n && !st; i++) {
        bool last = i == n;
        if (!last && fe_numel(t[i]) == 0) continue;
        if (last || !mt_push(L, fe__ptr(t[i]), NULL, NULL, NULL, fe_numel(t[i]), 0, t[i]->dtype,
                             FE_F32)) {
            if (L->n) {
                k_scale_multi<<<sub_blocks(d, L->chunk0[L->n], occ), MT_THREADS, 0, d->stream>>>(
                    *L, fe__ptr(s), s->dtype);
                st = cu_launched("scale_multi kernel");
                L->n = 0;
            }
            if (!last)
                mt_push(L, fe__ptr(t[i]), NULL, NULL, NULL, fe_numel(t[i]), 0, t[i]->dtype, FE_F32);
        }
    }
    free(L);
    return st;
}
