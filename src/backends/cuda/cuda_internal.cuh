/* Internals shared by the CUDA kernel files (C++ only): per-device state, error
 * checks, dtype traits, and strided-operand walks passed to kernels by value. */
#ifndef FE_CUDA_INTERNAL_CUH
#define FE_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_backend.h"

/* ---- per-device state (cuda_device.cu) ------------------------------------------ */

typedef struct cu_dev {
    int index;
    cudaStream_t stream; /* the one compute stream of this device */
    int sm_count;
    cublasLtHandle_t lt; /* created on first use by the matmul */
    cublasHandle_t blas; /* f64 products */
    void *workspace;     /* cuBLASLt workspace, allocated once */
    size_t workspace_size;
    bool tf32;               /* FE_TF32=1: f32 products may use TF32 tensor cores */
    unsigned long long *err; /* device-side error record: code, value, position, limit */
    bool check_pending;      /* a kernel that may set *err ran since the last check */
} cu_dev;

/* Error codes of the device-side record */
enum { CU_ERR_NONE = 0, CU_ERR_EMBEDDING_INDEX = 1, CU_ERR_CE_TARGET = 2 };

/* The state of `dev`, created on first use, with `dev` made current on this thread;
 * NULL with the error set when the device is missing or fails. */
cu_dev *cu_dev_get(fe_device dev);
static inline cu_dev *cu_of(const fe_tensor *t) { return cu_dev_get(t->st->dev); }

/* FE_OK, or FE_ERR_DEVICE naming `what` and the CUDA error. */
fe_status cu_check(cudaError_t e, const char *what);
/* Check the launch that just happened (cudaGetLastError). */
static inline fe_status cu_launched(const char *what) { return cu_check(cudaGetLastError(), what); }

/* Scratch device memory from the caching allocator (stream-ordered reuse is safe
 * because every kernel of a device runs on its one stream). */
static inline fe_status cu_scratch(cu_dev *d, size_t nbytes, void **p) {
    return fe_cuda_alloc((fe_device){FE_CUDA, d->index}, nbytes, p);
}
static inline void cu_scratch_free(cu_dev *d, void *p, size_t nbytes) {
    fe_cuda_free((fe_device){FE_CUDA, d->index}, p, nbytes);
}

/* Environment switch `name`, read once into *cache (-1 until then; a setter may store 0 or 1
 * there first), so that a call does not look it up again: on when it is exactly "1". */
static inline bool cu_env_flag(const char *name, int *cache) {
    int v = __atomic_load_n(cache, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv(name);
        v = e && !strcmp(e, "1");
        __atomic_store_n(cache, v, __ATOMIC_RELAXED);
    }
    return v == 1;
}

/* Blocks for a grid-stride loop over n items with `threads` per block. */
static inline unsigned cu_blocks(const cu_dev *d, int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads, cap = (int64_t)d->sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

/* Record an index error in the device record (first one wins). */
__device__ __forceinline__ void cu_flag_error(unsigned long long *err, unsigned long long code,
                                              long long value, long long pos, long long limit) {
    if (atomicCAS(err, 0ull, code) == 0ull) {
        err[1] = (unsigned long long)value;
        err[2] = (unsigned long long)pos;
        err[3] = (unsigned long long)limit;
    }
}

/* ---- dtypes ------------------------------------------------------------------------ */

/* Compute type: f32 for f32/f16/bf16, f64 for f64. */
template <typename T> struct cu_acc { typedef float type; };
template <> struct cu_acc<double> { typedef double type; };

__device__ __forceinline__ float cu_to_f(float v) { return v; }
__device__ __forceinline__ double cu_to_f(double v) { return v; }
__device__ __forceinline__ float cu_to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float cu_to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T cu_from(float v);
template <> __device__ __forceinline__ float cu_from<float>(float v) { return v; }
template <> __device__ __forceinline__ double cu_from<double>(float v) { return v; }
template <> __device__ __forceinline__ __half cu_from<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 cu_from<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <typename T> __device__ __forceinline__ T cu_from_d(double v);
template <> __device__ __forceinline__ double cu_from_d<double>(double v) { return v; }
template <> __device__ __forceinline__ float cu_from_d<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ __half cu_from_d<__half>(double v) {
    return __float2half_rn((float)v);
}
template <> __device__ __forceinline__ __nv_bfloat16 cu_from_d<__nv_bfloat16>(double v) {
    return __float2bfloat16_rn((float)v);
}
/* Store a compute-type value (float or double) as T. */
template <typename T> __device__ __forceinline__ T cu_cast(float v) { return cu_from<T>(v); }
template <typename T> __device__ __forceinline__ T cu_cast(double v) { return cu_from_d<T>(v); }

/* Saturating float -> integer conversion (NaN -> 0), as the CPU's fe__store. */
__device__ __forceinline__ long long cu_sat(double v, double lo, double hi) {
    if (v != v) return 0;
    if (v < lo) return (long long)lo;
    if (v > hi) return (long long)hi;
    return (long long)v;
}

/* Element i of a buffer of runtime dtype dt, as a double (exact for every dtype but i64
 * beyond 2^53, as on the CPU). */
__device__ __forceinline__ double cu_load_dyn(const void *p, int dt, int64_t i) {
    switch (dt) {
    case FE_F32: return ((const float *)p)[i];
    case FE_F64: return ((const double *)p)[i];
    case FE_F16: return __half2float(((const __half *)p)[i]);
    case FE_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case FE_I32: return ((const int32_t *)p)[i];
    case FE_I64: return (double)((const long long *)p)[i];
    case FE_U8: return ((const uint8_t *)p)[i];
    case FE_I8: return ((const int8_t *)p)[i];
    default: return 0;
    }
}

/* Store v as element i of dtype dt, rounding exactly as the CPU's fe__store. */
__device__ __forceinline__ void cu_store_dyn(void *p, int dt, int64_t i, double v) {
    switch (dt) {
    case FE_F32: ((float *)p)[i] = (float)v; break;
    case FE_F64: ((double *)p)[i] = v; break;
    case FE_F16: ((__half *)p)[i] = __float2half_rn((float)v); break;
    case FE_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v); break;
    case FE_I32: ((int32_t *)p)[i] = (int32_t)cu_sat(v, -2147483648.0, 2147483647.0); break;
    case FE_I64:
        ((long long *)p)[i] = cu_sat(v, -9223372036854775808.0, 9223372036854774784.0);
        break;
    case FE_U8: ((uint8_t *)p)[i] = (uint8_t)cu_sat(v, 0, 255); break;
    case FE_I8: ((int8_t *)p)[i] = (int8_t)cu_sat(v, -128, 127); break;
    default: break;
    }
}

/* Run `body` with T bound to the C++ type of float dtype dt; else set a dtype error. */
#define CU_FLOAT_DISPATCH(dt, opname, ...)                                                         \
    switch (dt) {                                                                                  \
    case FE_F32: {                                                                                 \
        typedef float T;                                                                           \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    case FE_F64: {                                                                                 \
        typedef double T;                                                                          \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    case FE_F16: {                                                                                 \
        typedef __half T;                                                                          \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    case FE_BF16: {                                                                                \
        typedef __nv_bfloat16 T;                                                                   \
        __VA_ARGS__                                                                                \
    } break;                                                                                       \
    default:                                                                                       \
        return fe_set_error(FE_ERR_DTYPE, "%s (cuda): dtype %s is not supported", opname,          \
                            fe_dtype_name(dt));                                                    \
    }

/* ---- math in the compute type ------------------------------------------------------ */

__device__ __forceinline__ float cu_exp(float x) { return expf(x); }
__device__ __forceinline__ double cu_exp(double x) { return exp(x); }
__device__ __forceinline__ float cu_log(float x) { return logf(x); }
__device__ __forceinline__ double cu_log(double x) { return log(x); }
__device__ __forceinline__ float cu_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double cu_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float cu_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double cu_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float cu_erf(float x) { return erff(x); }
__device__ __forceinline__ double cu_erf(double x) { return erf(x); }

template <typename C> __device__ __forceinline__ C cu_sigmoid(C x) {
    if (x >= (C)0) return (C)1 / ((C)1 + cu_exp(-x));
    C e = cu_exp(x);
    return e / ((C)1 + e);
}

/* ---- strided walks ------------------------------------------------------------------- */

#define CU_MAX_OPS 4

/* Up to 4 operands walked in the row-major order of a common shape. Dims of size 1
 * are dropped and dims contiguous for every operand merged (as the CPU's cpu_iter). */
typedef struct cu_iter {
    int ndim, nops;
    int64_t n;
    int64_t shape[FE_MAX_DIMS];
    int64_t stride[CU_MAX_OPS][FE_MAX_DIMS];
} cu_iter;

void cu_iter_init(cu_iter *it, int nops, const fe_tensor *const *ts, int ndim,
                  const int64_t *shape);
/* True when every operand walks with unit stride over one dim (plain arrays). */
bool cu_iter_contiguous(const cu_iter *it);

/* Element offsets of the operands at linear index i. */
template <int NOPS>
__device__ __forceinline__ void cu_offsets(const cu_iter &it, int64_t i, int64_t *off) {
#pragma unroll
    for (int k = 0; k < NOPS; k++)
        off[k] = 0;
    for (int d = it.ndim - 1; d >= 0; d--) {
        int64_t s = it.shape[d];
        int64_t q = i / s, r = i - q * s;
        i = q;
#pragma unroll
        for (int k = 0; k < NOPS; k++)
            off[k] += r * it.stride[k][d];
    }
}

/* Warp-level sums. */
template <typename C> __device__ __forceinline__ C cu_warp_sum(C v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename C> __device__ __forceinline__ C cu_warp_max(C v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        C w = __shfl_xor_sync(0xffffffffu, v, o);
        v = (w > v || w != w) ? w : v;
    }
    return v;
}

/* Sum of v over the whole block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. `sh` holds 32 values; the call ends with a barrier so sh
 * may be reused. */
template <typename C> __device__ __forceinline__ C cu_block_sum(C v, C *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    C t = lane < nw ? sh[lane] : (C)0;
    t = cu_warp_sum(t);
    __syncthreads();
    return t;
}
template <typename C> __device__ __forceinline__ C cu_block_max(C v, C *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_max(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    C t = lane < nw ? sh[lane] : (C)-INFINITY;
    t = cu_warp_max(t);
    __syncthreads();
    return t;
}

/* ---- 16-byte vectors of float dtypes (f32, f16, bf16) -------------------------------------- */

/* Elements of T in one 16-byte vector. */
template <typename T> struct cu_vn { static constexpr int n = 16 / sizeof(T); };

/* 32-bit word k (0..3) of a vector; k is a compile-time constant after unrolling. */
__device__ __forceinline__ uint32_t cu_word(const uint4 &u, int k) {
    return k == 0 ? u.x : k == 1 ? u.y : k == 2 ? u.z : u.w;
}
__device__ __forceinline__ void cu_set_word(uint4 &u, int k, uint32_t w) {
    if (k == 0) u.x = w;
    else if (k == 1) u.y = w;
    else if (k == 2) u.z = w;
    else u.w = w;
}

/* Element i of a 16-byte vector of T, as float. */
template <typename T> __device__ __forceinline__ float cu_vget(const uint4 &u, int i);
template <> __device__ __forceinline__ float cu_vget<float>(const uint4 &u, int i) {
    return __uint_as_float(cu_word(u, i));
}
template <> __device__ __forceinline__ float cu_vget<__nv_bfloat16>(const uint4 &u, int i) {
    uint32_t w = cu_word(u, i >> 1);
    return __uint_as_float((i & 1) ? (w & 0xffff0000u) : (w << 16));
}
template <> __device__ __forceinline__ float cu_vget<__half>(const uint4 &u, int i) {
    uint32_t w = cu_word(u, i >> 1);
    return __half2float(__ushort_as_half((unsigned short)((i & 1) ? (w >> 16) : (w & 0xffffu))));
}

/* All cu_vn<T>::n elements of a 16-byte vector of T, as floats. */
template <typename T> __device__ __forceinline__ void cu_vunpack(const uint4 &u, float *f) {
#pragma unroll
    for (int i = 0; i < cu_vn<T>::n; i++)
        f[i] = cu_vget<T>(u, i);
}

/* Bits of f rounded to T (f16/bf16: low 16 bits). */
template <typename T> __device__ __forceinline__ uint32_t cu_bits(float f);
template <> __device__ __forceinline__ uint32_t cu_bits<__nv_bfloat16>(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
template <> __device__ __forceinline__ uint32_t cu_bits<__half>(float f) {
    return __half_as_ushort(__float2half_rn(f));
}

/* A 16-byte vector of T holding f[0..n) rounded to T. */
template <typename T> __device__ __forceinline__ uint4 cu_vpack(const float *f) {
    uint4 u;
    if constexpr (sizeof(T) == 4) {
        u = make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                       __float_as_uint(f[3]));
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            cu_set_word(u, k, cu_bits<T>(f[2 * k]) | (cu_bits<T>(f[2 * k + 1]) << 16));
    }
    return u;
}

/* 16-byte load and store (the address must be 16-byte aligned). */
__device__ __forceinline__ uint4 cu_ld16(const void *p) { return *(const uint4 *)p; }
__device__ __forceinline__ void cu_st16(void *p, uint4 v) { *(uint4 *)p = v; }

/* True when T has a 16-byte vector path (f32, f16, bf16). */
template <typename T> struct cu_has_v16 { static constexpr bool value = sizeof(T) <= 4; };

#endif
