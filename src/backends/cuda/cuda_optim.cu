/* CUDA multi-tensor optimizer kernels: AdamW over many tensors (which can also write the
 * low-precision compute copy of each parameter), the sum of squares of many gradients
 * (two deterministic stages, no atomics) and a scale of many tensors by a device scalar.
 *
 * Each tensor is cut in chunks and the blocks of a launch walk the chunks of all its
 * tensors, grid-stride. Two shapes of launch:
 *  - The fast AdamW (f32 parameters and state, gradients and copies of one dtype, every
 *    pointer aligned for vector accesses: the mixed-precision and f32 training steps) and
 *    the sum of squares take up to AW_MAX / SQ_MAX tensors in one launch, their table
 *    passed by value in the kernel's parameters (up to 32 KiB since CUDA 12.1 on Volta and
 *    newer). A training step is then one launch of each, with one wave of resident blocks
 *    sharing all the chunks of the step, and each thread keeps several 8- or 16-byte
 *    loads of every operand in flight. The dtypes are template arguments there: nothing
 *    is decided per element.
 *  - The generic AdamW (any float parameter dtype, f64 state, misaligned views) and the
 *    scale take up to MT_MAX tensors a launch (the older 4 KiB parameter table) and read
 *    each operand through its runtime dtype, 4 consecutive elements at a time.
 * f32/f16/bf16 tensors compute in f32, f64 ones in f64. Every AdamW path computes an
 * element with the same operations in the same order (adamw_elem), so a tensor gets the
 * same bits whichever path takes it. */
#include "backends/cuda/cuda_internal.cuh"

#if CUDART_VERSION < 12010
#error "the fast optimizer kernels take kernel parameters over 4 KiB: CUDA 12.1 or newer"
#endif

#define MT_MAX 40
#define MT_CHUNK 32768
#define MT_THREADS 512

/* Up to MT_MAX tensors of one generic launch. chunk0[i] is the first chunk of tensor i;
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

/* ---- 4 consecutive elements of a compile-time dtype, as floats ---------------------------- */

/* Vector load / store of elements q[0..4) (q aligned to 4 elements: 16 bytes for f32, 8
 * for f16/bf16). Stores round to nearest, as the CPU does. */
__device__ __forceinline__ void ld4v(const float *q, float x[4]) {
    float4 t = *(const float4 *)q;
    x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
}
/* f16/bf16: four 16-bit elements in one 8-byte access, converted by cu_to_f / cu_from */
template <typename T> __device__ __forceinline__ void ld4v(const T *q, float x[4]) {
    uint2 t = *(const uint2 *)q;
    const T *h = (const T *)&t;
#pragma unroll
    for (int k = 0; k < 4; k++)
        x[k] = cu_to_f(h[k]);
}
__device__ __forceinline__ void st4v(float *q, const float x[4]) {
    *(float4 *)q = make_float4(x[0], x[1], x[2], x[3]);
}
template <typename T> __device__ __forceinline__ void st4v(T *q, const float x[4]) {
    uint2 t;
    T *h = (T *)&t;
#pragma unroll
    for (int k = 0; k < 4; k++)
        h[k] = cu_from<T>(x[k]);
    *(uint2 *)q = t;
}

/* ---- 4 consecutive elements of a runtime dtype ---------------------------------------------- */

/* Load elements i..i+cnt-1 (cnt <= 4) of a buffer of dtype dt as C; vectorised when
 * cnt is 4 and the address is aligned to the vector size. */
template <typename C>
__device__ __forceinline__ void ld4(const void *p, int dt, int64_t i, int cnt, C out[4]) {
    if (cnt == 4) {
        float x[4];
        bool ok = true;
        switch (dt) {
        case FE_F32:
            if ((ok = !((uintptr_t)((const float *)p + i) & 15))) ld4v((const float *)p + i, x);
            break;
        case FE_BF16:
            if ((ok = !((uintptr_t)((const __nv_bfloat16 *)p + i) & 7)))
                ld4v((const __nv_bfloat16 *)p + i, x);
            break;
        case FE_F16:
            if ((ok = !((uintptr_t)((const __half *)p + i) & 7))) ld4v((const __half *)p + i, x);
            break;
        default: ok = false; break;
        }
        if (ok) {
#pragma unroll
            for (int k = 0; k < 4; k++)
                out[k] = (C)x[k];
            return;
        }
    }
    for (int k = 0; k < 4; k++)
        out[k] = k < cnt ? (C)cu_load_dyn(p, dt, i + k) : (C)0;
}

/* Store cnt <= 4 values as elements i.. of a buffer of dtype dt (rounding as the CPU). */
template <typename C>
__device__ __forceinline__ void st4(void *p, int dt, int64_t i, int cnt, const C in[4]) {
    if (cnt == 4 && (dt == FE_F32 || dt == FE_BF16 || dt == FE_F16)) {
        float x[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            x[k] = (float)in[k];
        switch (dt) {
        case FE_F32:
            if (!((uintptr_t)((float *)p + i) & 15)) return st4v((float *)p + i, x);
            break;
        case FE_BF16:
            if (!((uintptr_t)((__nv_bfloat16 *)p + i) & 7))
                return st4v((__nv_bfloat16 *)p + i, x);
            break;
        default:
            if (!((uintptr_t)((__half *)p + i) & 7)) return st4v((__half *)p + i, x);
            break;
        }
    }
    for (int k = 0; k < cnt; k++)
        cu_store_dyn(p, dt, i + k, (double)in[k]);
}

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

/* Blocks of `threads` threads of kernel fn resident on one SM (at least 1). */
static int occupancy(const void *fn, int threads) {
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, threads, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        occ = 1;
    }
    return occ > 0 ? occ : 1;
}

/* ---- AdamW -------------------------------------------------------------------------- */

/* AdamW's numbers in the state type S (float for f32 state, double for f64 state): the
 * host fills b1, b2, eps, step = lr / bc1, inv_sqrt_bc2 and us (aw_coef_of); each kernel
 * completes omb1 = 1 - b1, omb2 = 1 - b2 and gs, read from the device (aw_coef_ready). */
template <typename S> struct aw_coef {
    S b1, b2, omb1, omb2, eps, step, inv_sqrt_bc2, us, gs;
};

template <typename S> static aw_coef<S> aw_coef_of(const fe_adamw_args *a) {
    aw_coef<S> k = {};
    k.b1 = (S)a->beta1, k.b2 = (S)a->beta2, k.eps = (S)a->eps;
    k.step = (S)(a->lr / a->bc1), k.inv_sqrt_bc2 = (S)(1.0 / sqrt(a->bc2));
    k.us = (S)(a->unscale != 0.0 ? a->unscale : 1.0);
    return k;
}

/* False when skip says this step is skipped (an fp16 overflow). */
template <typename S>
__device__ __forceinline__ bool aw_coef_ready(aw_coef<S> &k, const void *gscale, int gs_dt,
                                              const void *skip, int skip_dt) {
    if (skip && cu_load_dyn(skip, skip_dt, 0) != 0.0) return false;
    k.gs = gscale ? (S)cu_load_dyn(gscale, gs_dt, 0) : (S)1;
    k.omb1 = (S)1 - k.b1, k.omb2 = (S)1 - k.b2;
    return true;
}

/* One element of AdamW as fe_adamw_args says: the gradient multiplied by us, then by gs,
 * each product rounded to S (a factor of 1 changes nothing), then m, v and the weight w.
 * Every rounding is spelled out (the _rn intrinsics are never contracted or reordered),
 * in the order the single generic kernel was compiled to before the fast path existed,
 * so every path gives one element the same bits and they are the bits of before:
 *   gk = (g us) gs;  m = fma(b1, m, (1 - b1) gk);  v = fma(b2, v, ((1 - b2) gk) gk);
 *   d = fma(sqrt(v), 1 / sqrt(bc2), eps);  then in f32 w = fma(-step, m / d, w decay),
 *   in f64 w = fma(w, decay, -(step (m / d))). */
__device__ __forceinline__ void adamw_elem(float &w, float &m, float &v, float g, float decay,
                                           const aw_coef<float> &k) {
    float gk = __fmul_rn(__fmul_rn(g, k.us), k.gs);
    m = __fmaf_rn(k.b1, m, __fmul_rn(k.omb1, gk));
    v = __fmaf_rn(k.b2, v, __fmul_rn(__fmul_rn(k.omb2, gk), gk));
    float denom = __fmaf_rn(__fsqrt_rn(v), k.inv_sqrt_bc2, k.eps);
    w = __fmaf_rn(-k.step, __fdiv_rn(m, denom), __fmul_rn(w, decay));
}
__device__ __forceinline__ void adamw_elem(double &w, double &m, double &v, double g,
                                           double decay, const aw_coef<double> &k) {
    double gk = __dmul_rn(__dmul_rn(g, k.us), k.gs);
    m = __fma_rn(k.b1, m, __dmul_rn(k.omb1, gk));
    v = __fma_rn(k.b2, v, __dmul_rn(__dmul_rn(k.omb2, gk), gk));
    double denom = __fma_rn(__dsqrt_rn(v), k.inv_sqrt_bc2, k.eps);
    w = __fma_rn(w, decay, -__dmul_rn(k.step, __ddiv_rn(m, denom)));
}

/* The generic kernel. S: the state/compute type. */
template <typename S>
__global__ void __launch_bounds__(MT_THREADS)
    k_adamw(mt_list L, aw_coef<S> k, const void *gscale, int gs_dt, const void *skip,
            int skip_dt) {
    if (!aw_coef_ready(k, gscale, gs_dt, skip, skip_dt)) return;
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
            for (int q = 0; q < 4; q++)
                adamw_elem(w[q], m[q], v[q], g[q], decay, k);
            st4<S>(L.p[t], L.pdt[t], i, cnt, w);
            st4<S>(L.m[t], sdt, i, cnt, m);
            st4<S>(L.v[t], sdt, i, cnt, v);
            if (L.c[t]) { /* the compute copy: a cast of p as just stored */
#pragma unroll
                for (int q = 0; q < 4; q++)
                    w[q] = cu_round_as<S>(L.pdt[t], w[q]);
                st4<S>(L.c[t], L.cdt[t], i, cnt, w);
            }
        }
    }
}

/* The fast kernel's tables: up to AW_MAX tensors a launch, cut in chunks of AW_CHUNK
 * elements; a block moves a tile of AW_TILE elements at a time, each thread AW_U groups
 * of 4 consecutive elements (AW_THREADS * 4 apart, so that a warp's accesses are
 * contiguous), all loads of a tile issued before the first is used. */
#define AW_MAX 448
#define AW_CHUNK 32768
#define AW_THREADS 256
#define AW_U 2
#define AW_TILE (AW_THREADS * 4 * AW_U)
/* Blocks per SM the kernel is compiled for: 4 x 256 threads at 64 registers keep 1024
 * threads x 112 bytes of loads in flight per SM (ptxas keeps a few values of a tile in
 * L1-resident local memory at that bound; without it, 66 registers give 3 blocks). */
#define AW_MIN_BLOCKS 4
static_assert(AW_CHUNK % AW_TILE == 0, "a chunk is whole tiles");

/* One tensor of a fast launch: f32 p, m, v; the gradient and the copy (or NULL) of the
 * launch's dtype; chunks chunk0 .. chunk0 + ceil(numel / AW_CHUNK) - 1 of the launch. */
typedef struct aw_ent {
    float *p, *m, *v;
    const void *g;
    void *c;
    int64_t numel, chunk0;
    float decay; /* 1 - lr * wd_i, rounded to f32 as the generic kernel rounds it */
} aw_ent;
typedef struct aw_list {
    int n;
    int64_t chunks; /* of all n tensors */
    aw_ent e[AW_MAX];
} aw_list;
static_assert(sizeof(aw_list) + sizeof(aw_coef<float>) + 64 <= 32764,
              "kernel parameters are limited to 32764 bytes");

/* AdamW over f32 parameters and state with gradients (and copies) of dtype G. One wave of
 * blocks walks all chunks of the launch, grid-stride, so that every block gets within one
 * chunk of the same work. */
template <typename G>
__global__ void __launch_bounds__(AW_THREADS, AW_MIN_BLOCKS)
    k_adamw_fast(aw_list L, aw_coef<float> k, const void *gscale, int gs_dt, const void *skip,
                 int skip_dt) {
    if (!aw_coef_ready(k, gscale, gs_dt, skip, skip_dt)) return;
    int t = 0;
    for (int64_t c = blockIdx.x; c < L.chunks; c += gridDim.x) {
        while (t + 1 < L.n && L.e[t + 1].chunk0 <= c) /* c only grows: walk forward */
            t++;
        int64_t j0 = (c - L.e[t].chunk0) * AW_CHUNK, rest = L.e[t].numel - j0;
        int len = rest < AW_CHUNK ? (int)rest : AW_CHUNK;
        float *p = L.e[t].p + j0, *m = L.e[t].m + j0, *v = L.e[t].v + j0;
        const G *g = (const G *)L.e[t].g + j0;
        G *cp = L.e[t].c ? (G *)L.e[t].c + j0 : NULL;
        float decay = L.e[t].decay;
        for (int j = threadIdx.x * 4; j < len; j += AW_TILE) {
            if (j + (AW_U - 1) * AW_THREADS * 4 + 4 <= len) {
                float w[AW_U][4], gr[AW_U][4], mm[AW_U][4], vv[AW_U][4];
#pragma unroll
                for (int u = 0; u < AW_U; u++) {
                    int i = j + u * AW_THREADS * 4;
                    ld4v(p + i, w[u]);
                    ld4v(g + i, gr[u]);
                    ld4v(m + i, mm[u]);
                    ld4v(v + i, vv[u]);
                }
#pragma unroll
                for (int u = 0; u < AW_U; u++) { /* each group stored as soon as it is done */
                    int i = j + u * AW_THREADS * 4;
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        adamw_elem(w[u][q], mm[u][q], vv[u][q], gr[u][q], decay, k);
                    st4v(p + i, w[u]);
                    st4v(m + i, mm[u]);
                    st4v(v + i, vv[u]);
                    if (cp) st4v(cp + i, w[u]); /* the compute copy: a cast of p as stored */
                }
            } else { /* the tensor's last, partial tile: one element at a time */
                for (int u = 0; u < AW_U; u++)
                    for (int i = j + u * AW_THREADS * 4, q = i; q < i + 4 && q < len; q++) {
                        float w = p[q], mq = m[q], vq = v[q];
                        adamw_elem(w, mq, vq, cu_to_f(g[q]), decay, k);
                        p[q] = w, m[q] = mq, v[q] = vq;
                        if (cp) cp[q] = cu_from<G>(w);
                    }
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

/* The fast kernels, by the dtype of the gradients (and copies) they read. */
enum { AW_G_F32, AW_G_BF16, AW_G_F16, AW_KINDS };

/* The fast kernel that takes a tensor (AW_G_*), or -1 for the generic one: p f32 (so m and
 * v are f32) and not empty, a gradient of f32/bf16/f16, the copy absent or of the
 * gradient's dtype, p, m, v 16-byte aligned and g and the copy aligned to 4 elements. */
static int aw_kind(const fe_tensor *p, const fe_tensor *g, const fe_tensor *m,
                   const fe_tensor *v, const fe_tensor *c) {
    int k = g->dtype == FE_F32 ? AW_G_F32 : g->dtype == FE_BF16 ? AW_G_BF16
                                        : g->dtype == FE_F16    ? AW_G_F16
                                                                : -1;
    if (k < 0 || p->dtype != FE_F32 || fe_numel(p) == 0 || (c && c->dtype != g->dtype))
        return -1;
    uintptr_t ga = 4 * (uintptr_t)fe_dtype_size(g->dtype);
    if ((uintptr_t)fe__ptr(p) % 16 || (uintptr_t)fe__ptr(m) % 16 || (uintptr_t)fe__ptr(v) % 16 ||
        (uintptr_t)fe__ptr(g) % ga || (c && (uintptr_t)fe__ptr(c) % ga))
        return -1;
    return k;
}

template <typename G>
static fe_status aw_launch(cu_dev *d, const aw_list *L, const aw_coef<float> &k,
                           const fe_adamw_args *a) {
    static int occ = 0; /* per dtype, the same for every launch: computed once */
    if (!occ) occ = occupancy((const void *)k_adamw_fast<G>, AW_THREADS);
    int64_t cap = (int64_t)d->sm_count * occ;
    const fe_tensor *gs = a->grad_scale, *sk = a->skip;
    k_adamw_fast<G><<<(unsigned)(L->chunks < cap ? L->chunks : cap), AW_THREADS, 0, d->stream>>>(
        *L, k, gs ? fe__ptr(gs) : NULL, gs ? (int)gs->dtype : 0, sk ? fe__ptr(sk) : NULL,
        sk ? (int)sk->dtype : 0);
    return cu_launched("adamw kernel (fast)");
}

/* Launch the fast kernel of `kind` over L's tensors and empty L. */
static fe_status aw_flush(cu_dev *d, aw_list *L, int kind, const aw_coef<float> &k,
                          const fe_adamw_args *a) {
    fe_status st = kind == AW_G_F32    ? aw_launch<float>(d, L, k, a)
                   : kind == AW_G_BF16 ? aw_launch<__nv_bfloat16>(d, L, k, a)
                                       : aw_launch<__half>(d, L, k, a);
    L->n = 0, L->chunks = 0;
    return st;
}

template <typename S>
static fe_status adamw_launch(cu_dev *d, mt_list *L, const fe_adamw_args *a) {
    if (L->n == 0) return FE_OK;
    const fe_tensor *gs = a->grad_scale, *sk = a->skip;
    k_adamw<S><<<mt_blocks(d, L->chunk0[L->n]), MT_THREADS, 0, d->stream>>>(
        *L, aw_coef_of<S>(a), gs ? fe__ptr(gs) : NULL, gs ? (int)gs->dtype : 0,
        sk ? fe__ptr(sk) : NULL, sk ? (int)sk->dtype : 0);
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
    /* the fast kernels first, one launch per gradient dtype present (AW_MAX tensors at
     * most a launch), then the generic kernel for the others: f32-state tensors and
     * f64-state tensors in separate launches */
    signed char *kind = (signed char *)malloc((size_t)n);
    aw_list *F = (aw_list *)calloc(1, sizeof *F);
    mt_list *L = (mt_list *)calloc(1, sizeof *L);
    fe_status st = kind && F && L ? FE_OK
                                  : fe_set_error(FE_ERR_OOM, "adamw (cuda): out of host memory");
    for (int i = 0; i < n && !st; i++)
        kind[i] = (signed char)aw_kind(p[i], g[i], m[i], v[i], a->copy ? a->copy[i] : NULL);
    aw_coef<float> kf = aw_coef_of<float>(a);
    for (int K = 0; K < AW_KINDS && !st; K++) {
        for (int i = 0; i < n && !st; i++) {
            if (kind[i] != K) continue;
            if (F->n == AW_MAX) st = aw_flush(d, F, K, kf, a);
            fe_tensor *c = a->copy ? a->copy[i] : NULL;
            aw_ent *e = &F->e[F->n++];
            e->p = (float *)fe__ptr(p[i]), e->m = (float *)fe__ptr(m[i]);
            e->v = (float *)fe__ptr(v[i]), e->g = fe__ptr(g[i]), e->c = c ? fe__ptr(c) : NULL;
            e->numel = fe_numel(p[i]), e->chunk0 = F->chunks;
            e->decay = (float)(1.0 - a->lr * a->weight_decay[i]);
            F->chunks += (e->numel + AW_CHUNK - 1) / AW_CHUNK;
        }
        if (!st && F->n) st = aw_flush(d, F, K, kf, a);
    }
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (int i = 0; i < n && !st; i++) {
            bool f64 = p[i]->dtype == FE_F64;
            if (f64 != (pass == 1) || fe_numel(p[i]) == 0 || kind[i] >= 0) continue;
            double decay = 1.0 - a->lr * a->weight_decay[i];
            fe_tensor *c = a->copy ? a->copy[i] : NULL;
            while (!st && !mt_push(L, fe__ptr(p[i]), fe__ptr(g[i]), fe__ptr(m[i]), fe__ptr(v[i]),
                                   fe_numel(p[i]), decay, p[i]->dtype, g[i]->dtype,
                                   c ? fe__ptr(c) : NULL, c ? c->dtype : FE_F32))
                st = f64 ? adamw_launch<double>(d, L, a) : adamw_launch<float>(d, L, a);
        }
        if (!st) st = pass == 1 ? adamw_launch<double>(d, L, a) : adamw_launch<float>(d, L, a);
    }
    free(kind), free(F), free(L);
    return st;
}

/* ---- sum of squares ---------------------------------------------------------------------- */

/* Up to SQ_MAX tensors a launch, cut in units of SQ_UNIT elements that the blocks walk
 * grid-stride; a block takes a unit in one pass, each thread SQ_U groups of 4 consecutive
 * elements (SQ_THREADS * 4 apart), SQ_U loads in flight. */
#define SQ_MAX 896
#define SQ_THREADS 256
#define SQ_U 8
#define SQ_UNIT (SQ_THREADS * 4 * SQ_U)

/* Tensor i of a launch: its units are unit0 .. unit0 + ceil(numel / SQ_UNIT) - 1. */
typedef struct sq_ent {
    const void *g;
    int64_t numel, unit0;
    int dt;
} sq_ent;
typedef struct sq_list {
    int n;
    int64_t units; /* of all n tensors */
    sq_ent e[SQ_MAX];
} sq_list;
static_assert(sizeof(sq_list) + 64 <= 32764, "kernel parameters are limited to 32764 bytes");

/* acc plus the squares of a whole unit at g (f32/f16/bf16, aligned to 4 elements), each
 * element first multiplied by scf and rounded to f32: this thread's elements in the order
 * of the element-wise loop of k_sumsq, so a unit sums the same either way. */
template <typename G> __device__ __forceinline__ double sq_unit(const G *g, float scf, double acc) {
    float x[SQ_U][4];
#pragma unroll
    for (int u = 0; u < SQ_U; u++)
        ld4v(g + u * SQ_THREADS * 4 + threadIdx.x * 4, x[u]);
#pragma unroll
    for (int u = 0; u < SQ_U; u++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float y = __fmul_rn(x[u][q], scf); /* rounded to f32, as the CPU's */
            acc = __fma_rn((double)y, (double)y, acc);
        }
    return acc;
}

/* part[blockIdx.x] = sum of squares over the units this block walks (f64), each element
 * first multiplied by the scale (scf in f32 for f32/f16/bf16 tensors, scd for f64 ones). */
__global__ void __launch_bounds__(SQ_THREADS) k_sumsq(sq_list L, double *part, float scf, double scd) {
    __shared__ double sh[32];
    double acc = 0.0;
    int t = 0;
    for (int64_t q = blockIdx.x; q < L.units; q += gridDim.x) {
        while (t + 1 < L.n && L.e[t + 1].unit0 <= q) /* q only grows: walk forward */
            t++;
        int64_t j0 = (q - L.e[t].unit0) * SQ_UNIT, rest = L.e[t].numel - j0;
        int len = rest < SQ_UNIT ? (int)rest : SQ_UNIT, dt = L.e[t].dt;
        const void *g = L.e[t].g;
        if (len == SQ_UNIT && vec4_ok(g, dt)) { /* the base pointer decides: j0 is whole units */
            if (dt == FE_F32)
                acc = sq_unit((const float *)g + j0, scf, acc);
            else if (dt == FE_BF16)
                acc = sq_unit((const __nv_bfloat16 *)g + j0, scf, acc);
            else
                acc = sq_unit((const __half *)g + j0, scf, acc);
            continue;
        }
        /* a tensor's last, partial unit, an f64 tensor or a misaligned one */
        for (int j = threadIdx.x * 4; j < len; j += SQ_THREADS * 4) {
            int cnt = len - j < 4 ? len - j : 4;
            if (dt == FE_F64) {
                double x[4];
                ld4<double>(g, dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++) {
                    double y = __dmul_rn(x[k], scd);
                    acc = __fma_rn(y, y, acc);
                }
            } else {
                float x[4];
                ld4<float>(g, dt, j0 + j, cnt, x);
                for (int k = 0; k < cnt; k++) {
                    float y = __fmul_rn(x[k], scf);
                    acc = __fma_rn((double)y, (double)y, acc);
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

extern "C" fe_status fe_cuda_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g,
                                          double scale) {
    if (!out || n < 0 || (n > 0 && !g))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cuda): NULL arguments");
    if (fe_numel(out) != 1 || (out->dtype != FE_F32 && out->dtype != FE_F64))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cuda): out must be one f32 or f64 element");
    fe_device dev = out->st->dev;
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    int nonempty = 0;
    for (int i = 0; i < n; i++) {
        if (check_tensor("grad_norm_sq", g[i], i, dev)) return fe_last_status();
        nonempty += fe_numel(g[i]) > 0;
    }
    static int occ = 0; /* the same for every launch: computed once */
    if (!occ) occ = occupancy((const void *)k_sumsq, SQ_THREADS);
    /* one wave of resident blocks a launch, each leaving one partial sum */
    int64_t cap = (int64_t)d->sm_count * occ, P = (nonempty + SQ_MAX - 1) / SQ_MAX * cap;
    sq_list *L = (sq_list *)calloc(1, sizeof *L);
    if (!L) return fe_set_error(FE_ERR_OOM, "grad_norm_sq (cuda): out of host memory");
    double *part = NULL;
    size_t bytes = (size_t)(P > 0 ? P : 1) * sizeof(double);
    fe_status st = cu_scratch(d, bytes, (void **)&part);
    int64_t off = 0;
    for (int i = 0; i <= n && !st; i++) {
        bool last = i == n;
        if (!last && fe_numel(g[i]) == 0) continue;
        if (L->n && (last || L->n == SQ_MAX)) {
            unsigned nb = (unsigned)(L->units < cap ? L->units : cap);
            k_sumsq<<<nb, SQ_THREADS, 0, d->stream>>>(*L, part + off, (float)scale, scale);
            st = cu_launched("grad_norm_sq kernel");
            off += nb;
            L->n = 0, L->units = 0;
        }
        if (!last) {
            sq_ent *e = &L->e[L->n++];
            e->g = fe__ptr(g[i]), e->numel = fe_numel(g[i]), e->unit0 = L->units;
            e->dt = (int)g[i]->dtype;
            L->units += (e->numel + SQ_UNIT - 1) / SQ_UNIT;
        }
    }
    if (!st) {
        k_sumsq_final<<<1, 1024, 0, d->stream>>>(fe__ptr(out), out->dtype, part, (int)off);
        st = cu_launched("grad_norm_sq kernel (final)");
    }
    if (part) cu_scratch_free(d, part, bytes);
    free(L);
    return st;
}

/* ---- scale by a device scalar -------------------------------------------------------------- */

#define MT_U 4
/* The scale walks sub-chunks of MT_SUB elements (one pass of a block with MT_U vectors per
 * thread), MT_SUBS to a chunk: finer work for the blocks to share. */
#define MT_SUB (MT_THREADS * 4 * MT_U)
#define MT_SUBS (MT_CHUNK / MT_SUB)
static_assert(MT_CHUNK % MT_SUB == 0, "MT_CHUNK must be a multiple of MT_SUB");

/* Grid for a sub-chunk kernel over `chunks` chunks: one wave of resident blocks at most
 * (occ per SM), so that every block walks about as many sub-chunks as every other. */
static unsigned sub_blocks(const cu_dev *d, int64_t chunks, int occ) {
    int64_t units = chunks * MT_SUBS, cap = (int64_t)d->sm_count * occ;
    return (unsigned)(units < cap ? (units > 0 ? units : 1) : cap);
}

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
            /* a whole aligned f32 sub-chunk: MT_U 16-byte loads in flight per thread */
            float ff = (float)f;
            for (int64_t j = (int64_t)threadIdx.x * 4; j < MT_SUB;
                 j += (int64_t)blockDim.x * 4 * MT_U) {
                float4 x[MT_U];
#pragma unroll
                for (int u = 0; u < MT_U; u++)
                    x[u] = *(const float4 *)(pf + j + (int64_t)u * blockDim.x * 4);
#pragma unroll
                for (int u = 0; u < MT_U; u++)
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
    if (!occ) occ = occupancy((const void *)k_scale_multi, MT_THREADS);
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
