/* CUDA reductions (sum, max) over any set of dims, accumulated in double like the
 * CPU reference. Work is split deterministically: each output's reduced range is cut
 * into P chunks whose partial results a second kernel combines in a fixed order. */
#include "backends/cuda/cuda_internal.cuh"

/* a's dims split into kept dims (the output's row-major order) and reduced dims, each
 * list collapsed where dims are adjacent in memory. */
typedef struct red_layout {
    int nk, nr;
    int64_t kshape[FE_MAX_DIMS], kstride[FE_MAX_DIMS];
    int64_t rshape[FE_MAX_DIMS], rstride[FE_MAX_DIMS];
    int64_t nout, R;
} red_layout;

static void push_dim(int *n, int64_t *shape, int64_t *stride, int64_t s, int64_t st) {
    if (*n > 0 && stride[*n - 1] == st * s) {
        shape[*n - 1] *= s;
        stride[*n - 1] = st;
    } else {
        shape[*n] = s;
        stride[*n] = st;
        (*n)++;
    }
}

static void layout_init(red_layout *L, const fe_tensor *out, const fe_tensor *a) {
    memset(L, 0, sizeof *L);
    L->nout = 1, L->R = 1;
    for (int d = 0; d < a->ndim; d++) {
        int64_t s = a->shape[d];
        if (s == 1) continue;
        if (out->shape[d] == 1) { /* reduced (an empty reduced dim leaves R = 0) */
            if (s) push_dim(&L->nr, L->rshape, L->rstride, s, a->stride[d]);
            L->R *= s;
        } else {
            if (s) push_dim(&L->nk, L->kshape, L->kstride, s, a->stride[d]);
            L->nout *= s;
        }
    }
    if (L->R == 0) L->nr = 0;
}

__device__ __forceinline__ int64_t kept_off(const red_layout &L, int64_t o) {
    int64_t off = 0;
    for (int d = L.nk - 1; d >= 0; d--) {
        int64_t q = o / L.kshape[d];
        off += (o - q * L.kshape[d]) * L.kstride[d];
        o = q;
    }
    return off;
}

__device__ __forceinline__ int64_t red_off(const red_layout &L, int64_t r) {
    if (L.nr == 1) return r * L.rstride[0];
    int64_t off = 0;
    for (int d = L.nr - 1; d >= 0; d--) {
        int64_t q = r / L.rshape[d];
        off += (r - q * L.rshape[d]) * L.rstride[d];
        r = q;
    }
    return off;
}

template <int OP> __device__ __forceinline__ double red_init() {
    return OP == FE_R_SUM ? 0.0 : -INFINITY;
}
template <int OP> __device__ __forceinline__ double red_comb(double acc, double v) {
    if (OP == FE_R_SUM) return acc + v;
    return (v > acc || v != v) ? v : acc; /* NaN wins, as on the CPU */
}
template <int OP> __device__ __forceinline__ double red_warp(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = red_comb<OP>(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Write an output (P == 1) or a partial result. */
template <typename T>
__device__ __forceinline__ void red_put(T *out, double *part, int64_t nout, int64_t o, int p,
                                        double v) {
    if (part)
        part[(int64_t)p * nout + o] = v;
    else
        out[o] = cu_cast<T>(v);
}

/* Reduced elements adjacent in memory, short rows: one warp per output. */
template <typename T, int OP> __global__ void k_red_warp(T *out, const T *a, red_layout L) {
    int lane = threadIdx.x & 31;
    int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t o = w; o < L.nout; o += nw) {
        const T *base = a + kept_off(L, o);
        double acc = red_init<OP>();
        for (int64_t r = lane; r < L.R; r += 32)
            acc = red_comb<OP>(acc, (double)cu_to_f(base[red_off(L, r)]));
        acc = red_warp<OP>(acc);
        if (lane == 0) out[o] = cu_cast<T>(acc);
    }
}

/* Reduced elements adjacent in memory, long rows: one block per (output, chunk). */
template <typename T, int OP>
__global__ void k_red_block(T *out, double *part, const T *a, red_layout L, int P) {
    __shared__ double sh[32];
    int64_t chunk = (L.R + P - 1) / P;
    for (int64_t item = blockIdx.x; item < L.nout * P; item += gridDim.x) {
        int64_t o = item / P;
        int p = (int)(item - o * P);
        int64_t r0 = p * chunk, r1 = r0 + chunk < L.R ? r0 + chunk : L.R;
        const T *base = a + kept_off(L, o);
        double acc = red_init<OP>();
        for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x)
            acc = red_comb<OP>(acc, (double)cu_to_f(base[red_off(L, r)]));
        acc = red_warp<OP>(acc);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) sh[warp] = acc;
        __syncthreads();
        if (warp == 0) {
            double v = lane < (int)(blockDim.x >> 5) ? sh[lane] : red_init<OP>();
            v = red_warp<OP>(v);
            if (lane == 0) red_put<T>(out, part, L.nout, o, p, v);
        }
        __syncthreads();
    }
}

/* Kept elements adjacent in memory: one thread per output, chunk p = blockIdx.y. */
template <typename T, int OP>
__global__ void k_red_cols(T *out, double *part, const T *a, red_layout L, int P) {
    int p = blockIdx.y;
    int64_t chunk = (L.R + P - 1) / P;
    int64_t r0 = p * chunk, r1 = r0 + chunk < L.R ? r0 + chunk : L.R;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < L.nout; o += step) {
        const T *base = a + kept_off(L, o);
        double acc = red_init<OP>();
        for (int64_t r = r0; r < r1; r++)
            acc = red_comb<OP>(acc, (double)cu_to_f(base[red_off(L, r)]));
        red_put<T>(out, part, L.nout, o, p, acc);
    }
}

/* Combine the P partial results of each output in chunk order. */
template <typename T, int OP>
__global__ void k_red_final(T *out, const double *part, int64_t nout, int P) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += step) {
        double acc = red_init<OP>();
        for (int p = 0; p < P; p++)
            acc = red_comb<OP>(acc, part[(int64_t)p * nout + o]);
        out[o] = cu_cast<T>(acc);
    }
}

template <typename T, int OP>
static fe_status reduce_t(cu_dev *d, fe_tensor *out, const fe_tensor *a) {
    red_layout L;
    layout_init(&L, out, a);
    if (L.nout == 0) return FE_OK;
    T *po = (T *)fe__ptr(out);
    const T *pa = (const T *)fe__ptr(a);
    /* the innermost dim of a (stride 1) decides which side threads walk along */
    bool inner_reduced = L.nr > 0 && L.rstride[L.nr - 1] == 1;
    int64_t want = (int64_t)d->sm_count * 2048; /* threads that keep the GPU busy */
    int P = 1;
    double *part = NULL;
    size_t part_bytes = 0;
    if (inner_reduced && L.R <= 2048) {
        int64_t warps = L.nout;
        k_red_warp<T, OP><<<cu_blocks(d, warps * 32, 256), 256, 0, d->stream>>>(po, pa, L);
        return cu_launched("reduce kernel");
    }
    if (inner_reduced) {
        int64_t blocks_wanted = (int64_t)d->sm_count * 8;
        if (L.nout < blocks_wanted) {
            int64_t p = (blocks_wanted + L.nout - 1) / L.nout, pmax = (L.R + 4095) / 4096;
            P = (int)(p < pmax ? p : pmax);
            if (P < 1) P = 1;
        }
    } else {
        if (L.nout < want) {
            int64_t p = (want + L.nout - 1) / L.nout, pmax = (L.R + 31) / 32;
            if (pmax > 4096) pmax = 4096;
            P = (int)(p < pmax ? p : pmax);
            if (P < 1) P = 1;
        }
    }
    if (P > 1) {
        part_bytes = (size_t)P * (size_t)L.nout * sizeof(double);
        if (cu_scratch(d, part_bytes, (void **)&part)) return fe_last_status();
    }
    if (inner_reduced) {
        int64_t items = L.nout * P;
        unsigned nb =
            (unsigned)(items < (int64_t)d->sm_count * 64 ? items : (int64_t)d->sm_count * 64);
        k_red_block<T, OP><<<nb, 256, 0, d->stream>>>(po, part, pa, L, P);
    } else {
        unsigned bx = (unsigned)((L.nout + 255) / 256);
        if (bx > 65535u) bx = 65535u;
        k_red_cols<T, OP><<<dim3(bx, (unsigned)P), 256, 0, d->stream>>>(po, part, pa, L, P);
    }
    fe_status st = cu_launched("reduce kernel");
    if (!st && P > 1) {
        k_red_final<T, OP><<<cu_blocks(d, L.nout, 256), 256, 0, d->stream>>>(po, part, L.nout, P);
        st = cu_launched("reduce kernel (final)");
    }
    if (part) cu_scratch_free(d, part, part_bytes);
    return st;
}

extern "C" fe_status fe_cuda_reduce(fe_reduce_op op, fe_tensor *out, const fe_tensor *a) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    if (out->dtype != a->dtype)
        return fe_set_error(FE_ERR_DTYPE, "reduce (cuda): output %s differs from input %s",
                            fe_dtype_name(out->dtype), fe_dtype_name(a->dtype));
    if (!fe_is_contiguous(a) || !fe_is_contiguous(out))
        return fe_set_error(FE_ERR_ARG, "reduce (cuda): operands must be contiguous");
    CU_FLOAT_DISPATCH(a->dtype, "reduce", {
        return op == FE_R_SUM ? reduce_t<T, FE_R_SUM>(d, out, a) : reduce_t<T, FE_R_MAX>(d, out, a);
    })
    return FE_OK;
}
