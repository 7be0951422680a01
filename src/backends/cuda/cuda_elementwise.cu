/* CUDA elementwise kernels: copies with casts, fill, arange, Philox random numbers,
 * unary and binary maps and where. Operands may be strided views (broadcast inputs
 * have stride 0); contiguous operands take a flat path with 16-byte vector loads.
 * Float dtypes compute in f32 (f64 for f64), as the CPU reference rounds to. */
#include "core/philox.h"
#include "backends/cuda/cuda_internal.cuh"

#define CU_THREADS 256

#define CU_GELU_K 0.7978845608028654 /* sqrt(2/pi) */
#define CU_GELU_C 0.044715
#define CU_SQRT1_2 0.7071067811865476
#define CU_INV_SQRT_2PI 0.3989422804014327

/* y = f(x) for unary op OP (alpha, beta for the affine map) */
template <int OP, typename C> struct cu_un {
    C al, be;
    __device__ __forceinline__ C operator()(C x, C) const {
        if constexpr (OP == FE_U_NEG)
            return -x;
        else if constexpr (OP == FE_U_EXP)
            return cu_exp(x);
        else if constexpr (OP == FE_U_LOG)
            return cu_log(x);
        else if constexpr (OP == FE_U_SQRT)
            return cu_sqrt(x);
        else if constexpr (OP == FE_U_RSQRT)
            return (C)1 / cu_sqrt(x);
        else if constexpr (OP == FE_U_TANH)
            return cu_tanh(x);
        else if constexpr (OP == FE_U_SIGMOID)
            return cu_sigmoid(x);
        else if constexpr (OP == FE_U_RELU)
            return x > (C)0 ? x : (C)0;
        else if constexpr (OP == FE_U_GELU_TANH)
            return (C)0.5 * x * ((C)1 + cu_tanh((C)CU_GELU_K * (x + (C)CU_GELU_C * x * x * x)));
        else if constexpr (OP == FE_U_GELU_ERF)
            return (C)0.5 * x * ((C)1 + cu_erf(x * (C)CU_SQRT1_2));
        else if constexpr (OP == FE_U_SILU)
            return x * cu_sigmoid(x);
        else if constexpr (OP == FE_U_SQUARE)
            return x * x;
        else
            return x * al + be; /* FE_U_AFFINE */
    }
};

/* y = f(a, b) for binary op OP */
template <int OP, typename C> struct cu_bin {
    C al;
    __device__ __forceinline__ C operator()(C a, C b) const {
        if constexpr (OP == FE_B_ADD)
            return a + al * b;
        else if constexpr (OP == FE_B_SUB)
            return a - b;
        else if constexpr (OP == FE_B_MUL)
            return a * b;
        else if constexpr (OP == FE_B_DIV)
            return a / b;
        else if constexpr (OP == FE_B_EQ)
            return a == b ? (C)1 : (C)0;
        else if constexpr (OP == FE_B_GE)
            return a >= b ? (C)1 : (C)0;
        else if constexpr (OP == FE_B_GELU_TANH_GRAD) {
            C t = cu_tanh((C)CU_GELU_K * (a + (C)CU_GELU_C * a * a * a));
            return b * ((C)0.5 * ((C)1 + t) + (C)0.5 * a * ((C)1 - t * t) * (C)CU_GELU_K *
                                                  ((C)1 + (C)(3 * CU_GELU_C) * a * a));
        } else if constexpr (OP == FE_B_GELU_ERF_GRAD) {
            return b * ((C)0.5 * ((C)1 + cu_erf(a * (C)CU_SQRT1_2)) +
                        a * cu_exp((C)-0.5 * a * a) * (C)CU_INV_SQRT_2PI);
        } else if constexpr (OP == FE_B_SILU_GRAD) {
            C s = cu_sigmoid(a);
            return b * s * ((C)1 + a * ((C)1 - s));
        } else if constexpr (OP == FE_B_RELU_GRAD)
            return a > (C)0 ? b : (C)0;
        else if constexpr (OP == FE_B_SIGMOID_GRAD_Y)
            return b * a * ((C)1 - a);
        else
            return b * ((C)1 - a * a); /* FE_B_TANH_GRAD_Y */
    }
};

/* ---- map kernels ------------------------------------------------------------------------ */

template <typename T> struct alignas(16) cu_vec { T v[16 / sizeof(T)]; };

/* out[i] = f(a[i], b[i]) over contiguous arrays, 16 bytes at a time (all pointers 16-byte
 * aligned), the tail element by element. NIN = 1 leaves b unread. */
template <typename T, int NIN, class F>
__global__ void k_map_vec(T *out, const T *a, const T *b, int64_t n, F f) {
    typedef typename cu_acc<T>::type C;
    constexpr int V = 16 / sizeof(T);
    int64_t nv = n / V, tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    const cu_vec<T> *va = (const cu_vec<T> *)a, *vb = (const cu_vec<T> *)b;
    cu_vec<T> *vo = (cu_vec<T> *)out;
    for (int64_t i = tid; i < nv; i += step) {
        cu_vec<T> x = va[i], y, r;
        if constexpr (NIN == 2) y = vb[i];
#pragma unroll
        for (int j = 0; j < V; j++)
            r.v[j] = cu_cast<T>(f((C)cu_to_f(x.v[j]), NIN == 2 ? (C)cu_to_f(y.v[j]) : (C)0));
        vo[i] = r;
    }
    for (int64_t i = nv * V + tid; i < n; i += step)
        out[i] = cu_cast<T>(f((C)cu_to_f(a[i]), NIN == 2 ? (C)cu_to_f(b[i]) : (C)0));
}

/* out[o0] = f(a[o1], b[o2]) with offsets from a strided walk (CONTIG: offsets are i). */
template <typename T, int NIN, bool CONTIG, class F>
__global__ void k_map(T *out, const T *a, const T *b, cu_iter it, F f) {
    typedef typename cu_acc<T>::type C;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[3] = {i, i, i};
        if constexpr (!CONTIG) cu_offsets<NIN + 1>(it, i, off);
        C x = (C)cu_to_f(a[off[1]]);
        C y = NIN == 2 ? (C)cu_to_f(b[off[2]]) : (C)0;
        out[off[0]] = cu_cast<T>(f(x, y));
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Launch the best map kernel for operands of one dtype T. */
template <typename T, int NIN, class F>
static fe_status launch_map(cu_dev *d, fe_tensor *out, const fe_tensor *a, const fe_tensor *b, F f,
                            const char *what) {
    const fe_tensor *ts[3] = {out, a, NIN == 2 ? b : a};
    cu_iter it;
    cu_iter_init(&it, NIN + 1, ts, out->ndim, out->shape);
    if (it.n == 0) return FE_OK;
    T *po = (T *)fe__ptr(out);
    const T *pa = (const T *)fe__ptr(a), *pb = (const T *)fe__ptr(NIN == 2 ? b : a);
    if (cu_iter_contiguous(&it)) {
        if (aligned16(po) && aligned16(pa) && aligned16(pb) && it.n >= (int64_t)(16 / sizeof(T)))
            k_map_vec<T, NIN, F>
                <<<cu_blocks(d, it.n / (16 / sizeof(T)), CU_THREADS), CU_THREADS, 0, d->stream>>>(
                    po, pa, pb, it.n, f);
        else
            k_map<T, NIN, true, F>
                <<<cu_blocks(d, it.n, CU_THREADS), CU_THREADS, 0, d->stream>>>(po, pa, pb, it, f);
    } else {
        k_map<T, NIN, false, F>
            <<<cu_blocks(d, it.n, CU_THREADS), CU_THREADS, 0, d->stream>>>(po, pa, pb, it, f);
    }
    return cu_launched(what);
}

/* Mixed dtypes (rare): every operand loaded by its own dtype, computed in double. */
template <int NIN, class F>
__global__ void k_map_dyn(void *out, int dto, const void *a, int dta, const void *b, int dtb,
                          cu_iter it, F f) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[3];
        cu_offsets<NIN + 1>(it, i, off);
        double x = cu_load_dyn(a, dta, off[1]);
        double y = NIN == 2 ? cu_load_dyn(b, dtb, off[2]) : 0.0;
        cu_store_dyn(out, dto, off[0], f(x, y));
    }
}

template <int NIN, class F>
static fe_status launch_map_dyn(cu_dev *d, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                                F f, const char *what) {
    const fe_tensor *ts[3] = {out, a, NIN == 2 ? b : a};
    cu_iter it;
    cu_iter_init(&it, NIN + 1, ts, out->ndim, out->shape);
    if (it.n == 0) return FE_OK;
    const fe_tensor *bb = NIN == 2 ? b : a;
    k_map_dyn<NIN, F><<<cu_blocks(d, it.n, CU_THREADS), CU_THREADS, 0, d->stream>>>(
        fe__ptr(out), out->dtype, fe__ptr(a), a->dtype, fe__ptr(bb), bb->dtype, it, f);
    return cu_launched(what);
}

/* ---- unary and binary entry points -------------------------------------------------------------
 */

template <int OP>
static fe_status unary_op(cu_dev *d, fe_tensor *out, const fe_tensor *a, double al, double be) {
    if (out->dtype != a->dtype || !fe_dtype_is_float(out->dtype))
        return launch_map_dyn<1>(d, out, a, a, cu_un<OP, double>{al, be}, "unary kernel");
    CU_FLOAT_DISPATCH(out->dtype, "unary", {
        typedef typename cu_acc<T>::type C;
        return launch_map<T, 1>(d, out, a, a, cu_un<OP, C>{(C)al, (C)be}, "unary kernel");
    })
    return FE_OK;
}

extern "C" fe_status fe_cuda_unary(fe_unary_op op, fe_tensor *out, const fe_tensor *a, double alpha,
                                   double beta) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    switch (op) {
#define CU_UN_CASE(X)                                                                              \
    case X: return unary_op<X>(d, out, a, alpha, beta);
        CU_UN_CASE(FE_U_NEG)
        CU_UN_CASE(FE_U_EXP)
        CU_UN_CASE(FE_U_LOG)
        CU_UN_CASE(FE_U_SQRT)
        CU_UN_CASE(FE_U_RSQRT)
        CU_UN_CASE(FE_U_TANH)
        CU_UN_CASE(FE_U_SIGMOID)
        CU_UN_CASE(FE_U_RELU)
        CU_UN_CASE(FE_U_GELU_TANH)
        CU_UN_CASE(FE_U_GELU_ERF)
        CU_UN_CASE(FE_U_SILU)
        CU_UN_CASE(FE_U_SQUARE)
        CU_UN_CASE(FE_U_AFFINE)
#undef CU_UN_CASE
    default: return fe_set_error(FE_ERR_ARG, "unary (cuda): unknown op %d", (int)op);
    }
}

template <int OP>
static fe_status binary_op(cu_dev *d, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                           double al) {
    if (out->dtype != a->dtype || out->dtype != b->dtype || !fe_dtype_is_float(out->dtype))
        return launch_map_dyn<2>(d, out, a, b, cu_bin<OP, double>{al}, "binary kernel");
    CU_FLOAT_DISPATCH(out->dtype, "binary", {
        typedef typename cu_acc<T>::type C;
        return launch_map<T, 2>(d, out, a, b, cu_bin<OP, C>{(C)al}, "binary kernel");
    })
    return FE_OK;
}

extern "C" fe_status fe_cuda_binary(fe_binary_op op, fe_tensor *out, const fe_tensor *a,
                                    const fe_tensor *b, double alpha) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    switch (op) {
#define CU_BIN_CASE(X)                                                                             \
    case X: return binary_op<X>(d, out, a, b, alpha);
        CU_BIN_CASE(FE_B_ADD)
        CU_BIN_CASE(FE_B_SUB)
        CU_BIN_CASE(FE_B_MUL)
        CU_BIN_CASE(FE_B_DIV)
        CU_BIN_CASE(FE_B_EQ)
        CU_BIN_CASE(FE_B_GE)
        CU_BIN_CASE(FE_B_GELU_TANH_GRAD)
        CU_BIN_CASE(FE_B_GELU_ERF_GRAD)
        CU_BIN_CASE(FE_B_SILU_GRAD)
        CU_BIN_CASE(FE_B_RELU_GRAD)
        CU_BIN_CASE(FE_B_SIGMOID_GRAD_Y)
        CU_BIN_CASE(FE_B_TANH_GRAD_Y)
#undef CU_BIN_CASE
    default: return fe_set_error(FE_ERR_ARG, "binary (cuda): unknown op %d", (int)op);
    }
}

/* ---- where ------------------------------------------------------------------------------------
 */

template <typename T>
__global__ void k_where(T *out, const void *cond, int dtc, const T *a, const T *b, cu_iter it) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[4];
        cu_offsets<4>(it, i, off);
        out[off[0]] = cu_load_dyn(cond, dtc, off[1]) != 0.0 ? a[off[2]] : b[off[3]];
    }
}

__global__ void k_where_dyn(void *out, int dto, const void *cond, int dtc, const void *a, int dta,
                            const void *b, int dtb, cu_iter it) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[4];
        cu_offsets<4>(it, i, off);
        double v = cu_load_dyn(cond, dtc, off[1]) != 0.0 ? cu_load_dyn(a, dta, off[2])
                                                         : cu_load_dyn(b, dtb, off[3]);
        cu_store_dyn(out, dto, off[0], v);
    }
}

extern "C" fe_status fe_cuda_where(fe_tensor *out, const fe_tensor *cond, const fe_tensor *a,
                                   const fe_tensor *b) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    const fe_tensor *ts[4] = {out, cond, a, b};
    cu_iter it;
    cu_iter_init(&it, 4, ts, out->ndim, out->shape);
    if (it.n == 0) return FE_OK;
    unsigned nb = cu_blocks(d, it.n, CU_THREADS);
    if (out->dtype == a->dtype && out->dtype == b->dtype && fe_dtype_is_float(out->dtype)) {
        CU_FLOAT_DISPATCH(out->dtype, "where", {
            k_where<T><<<nb, CU_THREADS, 0, d->stream>>>((T *)fe__ptr(out), fe__ptr(cond),
                                                         cond->dtype, (const T *)fe__ptr(a),
                                                         (const T *)fe__ptr(b), it);
        })
    } else {
        k_where_dyn<<<nb, CU_THREADS, 0, d->stream>>>(fe__ptr(out), out->dtype, fe__ptr(cond),
                                                      cond->dtype, fe__ptr(a), a->dtype, fe__ptr(b),
                                                      b->dtype, it);
    }
    return cu_launched("where kernel");
}

/* ---- copy
 * ---------------------------------------------------------------------------------------- */

/* Same dtype, strided: move elements of `W` bytes (index math in 32 bits when it fits). */
template <typename W, typename I> __global__ void k_copy_raw(W *dst, const W *src, cu_iter it) {
    I n = (I)it.n, step = (I)gridDim.x * blockDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o0 = 0, o1 = 0;
        I r = i;
        for (int d = it.ndim - 1; d >= 0; d--) {
            I s = (I)it.shape[d], q = r / s, k = r - q * s;
            r = q;
            o0 += (int64_t)k * it.stride[0][d];
            o1 += (int64_t)k * it.stride[1][d];
        }
        dst[o0] = src[o1];
    }
}

/* Float to float cast over contiguous arrays. */
template <typename D, typename S> __global__ void k_cast(D *dst, const S *src, int64_t n) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += step)
        dst[i] = cu_cast<D>(cu_to_f(src[i]));
}

/* 8 consecutive elements of T (f32, f16 or bf16) at a 16-byte-aligned address, as float. */
template <typename T> __device__ __forceinline__ void ld8(const T *p, float f[8]) {
    if constexpr (sizeof(T) == 4) {
        uint4 u0 = cu_ld16(p), u1 = cu_ld16(p + 4);
#pragma unroll
        for (int e = 0; e < 4; e++)
            f[e] = cu_vget<T>(u0, e), f[e + 4] = cu_vget<T>(u1, e);
    } else {
        uint4 u = cu_ld16(p);
#pragma unroll
        for (int e = 0; e < 8; e++)
            f[e] = cu_vget<T>(u, e);
    }
}
template <typename T> __device__ __forceinline__ void st8(T *p, const float f[8]) {
    cu_st16(p, cu_vpack<T>(f));
    if constexpr (sizeof(T) == 4) cu_st16(p + 4, cu_vpack<T>(f + 4));
}

/* Float to float cast over contiguous 16-byte-aligned arrays (f32/f16/bf16 both sides), 8
 * elements per thread and step, two steps' loads issued together; the tail one by one. */
template <typename D, typename S>
__global__ void __launch_bounds__(CU_THREADS)
    k_cast_vec(D *__restrict__ dst, const S *__restrict__ src, int64_t n) {
    int64_t n8 = n / 8, tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = tid; i < n8; i += 2 * step) {
        float f0[8], f1[8];
        bool two = i + step < n8;
        ld8<S>(src + i * 8, f0);
        if (two) ld8<S>(src + (i + step) * 8, f1);
        st8<D>(dst + i * 8, f0);
        if (two) st8<D>(dst + (i + step) * 8, f1);
    }
    for (int64_t i = n8 * 8 + tid; i < n; i += step)
        dst[i] = cu_from<D>(cu_to_f(src[i]));
}

/* Any dtype to any dtype, strided, through double exactly as the CPU's fe__load/fe__store. */
__global__ void k_copy_dyn(void *dst, int dtd, const void *src, int dts, cu_iter it) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[2];
        cu_offsets<2>(it, i, off);
        cu_store_dyn(dst, dtd, off[0], cu_load_dyn(src, dts, off[1]));
    }
}

template <typename W>
static void launch_copy_raw(cu_dev *d, void *dst, const void *src, const cu_iter &it) {
    unsigned nb = cu_blocks(d, it.n, CU_THREADS);
    if (it.n < INT32_MAX)
        k_copy_raw<W, uint32_t><<<nb, CU_THREADS, 0, d->stream>>>((W *)dst, (const W *)src, it);
    else
        k_copy_raw<W, uint64_t><<<nb, CU_THREADS, 0, d->stream>>>((W *)dst, (const W *)src, it);
}

template <typename D>
static fe_status launch_cast_from(cu_dev *d, D *dst, const fe_tensor *src, int64_t n) {
    unsigned nb = cu_blocks(d, n, CU_THREADS);
    if constexpr (sizeof(D) <= 4) {
        if (src->dtype != FE_F64 && aligned16(dst) && aligned16(fe__ptr(src))) {
            int64_t per = (int64_t)CU_THREADS * 16, b = (n + per - 1) / per;
            int64_t cap = (int64_t)d->sm_count * 32;
            unsigned nbv = (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
            switch (src->dtype) {
            case FE_F32:
                k_cast_vec<D, float>
                    <<<nbv, CU_THREADS, 0, d->stream>>>(dst, (const float *)fe__ptr(src), n);
                break;
            case FE_F16:
                k_cast_vec<D, __half>
                    <<<nbv, CU_THREADS, 0, d->stream>>>(dst, (const __half *)fe__ptr(src), n);
                break;
            default:
                k_cast_vec<D, __nv_bfloat16><<<nbv, CU_THREADS, 0, d->stream>>>(
                    dst, (const __nv_bfloat16 *)fe__ptr(src), n);
                break;
            }
            return cu_launched("cast kernel");
        }
    }
    CU_FLOAT_DISPATCH(src->dtype, "copy", {
        k_cast<D, T><<<nb, CU_THREADS, 0, d->stream>>>(dst, (const T *)fe__ptr(src), n);
    })
    return cu_launched("cast kernel");
}

extern "C" fe_status fe_cuda_copy(fe_tensor *dst, const fe_tensor *src) {
    cu_dev *d = cu_of(dst);
    if (!d) return fe_last_status();
    const fe_tensor *ts[2] = {dst, src};
    cu_iter it;
    cu_iter_init(&it, 2, ts, dst->ndim, dst->shape);
    if (it.n == 0) return FE_OK;
    void *pd = fe__ptr(dst);
    const void *ps = fe__ptr(src);
    size_t es = fe_dtype_size(dst->dtype);
    bool flat = cu_iter_contiguous(&it);
    if (dst->dtype == src->dtype) {
        if (pd == ps && flat) return FE_OK;
        if (flat)
            return cu_check(
                cudaMemcpyAsync(pd, ps, (size_t)it.n * es, cudaMemcpyDeviceToDevice, d->stream),
                "cudaMemcpyAsync (copy)");
        switch (es) {
        case 1: launch_copy_raw<uint8_t>(d, pd, ps, it); break;
        case 2: launch_copy_raw<uint16_t>(d, pd, ps, it); break;
        case 4: launch_copy_raw<uint32_t>(d, pd, ps, it); break;
        default: launch_copy_raw<unsigned long long>(d, pd, ps, it); break;
        }
        return cu_launched("copy kernel");
    }
    if (flat && fe_dtype_is_float(dst->dtype) && fe_dtype_is_float(src->dtype)) {
        CU_FLOAT_DISPATCH(dst->dtype, "copy",
                          { return launch_cast_from<T>(d, (T *)pd, src, it.n); })
    }
    k_copy_dyn<<<cu_blocks(d, it.n, CU_THREADS), CU_THREADS, 0, d->stream>>>(pd, dst->dtype, ps,
                                                                             src->dtype, it);
    return cu_launched("cast kernel");
}

/* ---- fill and arange
 * ------------------------------------------------------------------------------- */

template <typename W> __global__ void k_fill(W *p, W v, cu_iter it) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += step) {
        int64_t off[1];
        cu_offsets<1>(it, i, off);
        p[off[0]] = v;
    }
}

template <typename W> __global__ void k_fill_flat(W *p, W v, int64_t n) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += step)
        p[i] = v;
}

template <typename W>
static void launch_fill(cu_dev *d, void *p, const unsigned char *bits, const cu_iter &it) {
    W v;
    memcpy(&v, bits, sizeof v);
    unsigned nb = cu_blocks(d, it.n, CU_THREADS);
    if (cu_iter_contiguous(&it))
        k_fill_flat<W><<<nb, CU_THREADS, 0, d->stream>>>((W *)p, v, it.n);
    else
        k_fill<W><<<nb, CU_THREADS, 0, d->stream>>>((W *)p, v, it);
}

extern "C" fe_status fe_cuda_fill(fe_tensor *t, double v) {
    cu_dev *d = cu_of(t);
    if (!d) return fe_last_status();
    const fe_tensor *ts[1] = {t};
    cu_iter it;
    cu_iter_init(&it, 1, ts, t->ndim, t->shape);
    if (it.n == 0) return FE_OK;
    /* the element's bit pattern, rounded on the host exactly as the CPU does */
    unsigned char bits[8] = {0};
    fe__store(bits, t->dtype, 0, v);
    size_t es = fe_dtype_size(t->dtype);
    bool zero = true;
    for (size_t i = 0; i < es; i++)
        zero = zero && bits[i] == 0;
    if (zero && cu_iter_contiguous(&it))
        return cu_check(cudaMemsetAsync(fe__ptr(t), 0, (size_t)it.n * es, d->stream),
                        "cudaMemsetAsync (fill)");
    switch (es) {
    case 1: launch_fill<uint8_t>(d, fe__ptr(t), bits, it); break;
    case 2: launch_fill<uint16_t>(d, fe__ptr(t), bits, it); break;
    case 4: launch_fill<uint32_t>(d, fe__ptr(t), bits, it); break;
    default: launch_fill<unsigned long long>(d, fe__ptr(t), bits, it); break;
    }
    return cu_launched("fill kernel");
}

__global__ void k_arange(void *p, int dt, int64_t n, double start, double step) {
    int64_t gs = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += gs)
        cu_store_dyn(p, dt, i,
                     __dadd_rn(start, __dmul_rn((double)i, step))); /* no FMA: as the CPU */
}

extern "C" fe_status fe_cuda_arange(fe_tensor *t, double start, double step) {
    cu_dev *d = cu_of(t);
    if (!d) return fe_last_status();
    int64_t n = fe_numel(t);
    if (n == 0) return FE_OK;
    k_arange<<<cu_blocks(d, n, CU_THREADS), CU_THREADS, 0, d->stream>>>(fe__ptr(t), t->dtype, n,
                                                                        start, step);
    return cu_launched("arange kernel");
}

/* ---- random numbers: Philox4x32-10, bit for bit as src/core/rng.c
 * -------------------------------- */

__device__ __forceinline__ void cu_philox(unsigned long long seed, unsigned long long ctr,
                                          uint32_t out[4]) {
    fe_philox4x32_10(seed, ctr, out); /* the same definition as the CPU's (core/philox.h) */
}

/* Uniform: number k is lane k%4 of block block0 + k/4; each thread makes one block. */
__global__ void k_rand_uniform(void *p, int dt, int64_t n, unsigned long long seed,
                               unsigned long long block0, double a, double b) {
    int64_t nblk = (n + 3) / 4, gs = (int64_t)gridDim.x * blockDim.x;
    double w = b - a;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nblk; j += gs) {
        uint32_t o[4];
        cu_philox(seed, block0 + (unsigned long long)j, o);
#pragma unroll
        for (int l = 0; l < 4; l++) {
            int64_t k = 4 * j + l;
            if (k < n) {
                double u = (double)(o[l] >> 8) * (1.0 / 16777216.0);
                cu_store_dyn(p, dt, k, __dadd_rn(a, __dmul_rn(w, u)));
            }
        }
    }
}

/* Normal: number k is Box-Muller on lanes 2(k%2), 2(k%2)+1 of block block0 + k/2, in
 * double, with every product and sum rounded separately as on the CPU. */
__global__ void k_rand_normal(void *p, int dt, int64_t n, unsigned long long seed,
                              unsigned long long block0, double mean, double sd) {
    int64_t nblk = (n + 1) / 2, gs = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nblk; j += gs) {
        uint32_t o[4];
        cu_philox(seed, block0 + (unsigned long long)j, o);
#pragma unroll
        for (int l = 0; l < 2; l++) {
            int64_t k = 2 * j + l;
            if (k < n) {
                double u1 = __dmul_rn((double)(o[2 * l] >> 8) + 1.0, 1.0 / 16777216.0);
                double u2 = __dmul_rn((double)(o[2 * l + 1] >> 8), 1.0 / 16777216.0);
                double r = sqrt(__dmul_rn(-2.0, log(u1)));
                double z = __dmul_rn(r, cos(__dmul_rn(6.283185307179586, u2)));
                cu_store_dyn(p, dt, k, __dadd_rn(mean, __dmul_rn(sd, z)));
            }
        }
    }
}

extern "C" fe_status fe_cuda_rand(fe_tensor *t, uint64_t seed, uint64_t block0, fe_rand_kind kind,
                                  double a, double b) {
    cu_dev *d = cu_of(t);
    if (!d) return fe_last_status();
    int64_t n = fe_numel(t);
    if (n == 0) return FE_OK;
    if (kind == FE_RAND_UNIFORM)
        k_rand_uniform<<<cu_blocks(d, (n + 3) / 4, CU_THREADS), CU_THREADS, 0, d->stream>>>(
            fe__ptr(t), t->dtype, n, seed, block0, a, b);
    else
        k_rand_normal<<<cu_blocks(d, (n + 1) / 2, CU_THREADS), CU_THREADS, 0, d->stream>>>(
            fe__ptr(t), t->dtype, n, seed, block0, a, b);
    return cu_launched("rand kernel");
}
