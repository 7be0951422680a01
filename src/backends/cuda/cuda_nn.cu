/* CUDA row kernels: softmax, RMSNorm, LayerNorm, RoPE, embedding, cross-entropy and
 * the SiLU gate. A row of up to 1024 elements is handled by one warp, a longer one by
 * one block. Float dtypes compute in f32 (f64 for f64). Weight gradients summed over
 * rows use two deterministic stages (partial sums per row chunk, then a fixed-order
 * sum), never float atomics; the embedding gradient sorts its indices and writes each row
 * once. */
#include "backends/cuda/cuda_internal.cuh"

/* ---- rows: one warp or one block each ---------------------------------------------------- */

#define ROW_WARP_MAX 1024 /* longest row a warp handles */
#define ROW_WARP_THREADS 256
#define ROW_BLOCK_THREADS 512

template <bool WARP> struct rows_t {
    int lane, nthr;
    int64_t first, step;
    __device__ __forceinline__ rows_t() {
        if (WARP) {
            int wpb = blockDim.x >> 5;
            lane = threadIdx.x & 31;
            nthr = 32;
            first = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5);
            step = (int64_t)gridDim.x * wpb;
        } else {
            lane = threadIdx.x;
            nthr = blockDim.x;
            first = blockIdx.x;
            step = gridDim.x;
        }
    }
};

template <bool WARP, typename C> __device__ __forceinline__ C rsum(C v, C *sh) {
    if constexpr (WARP)
        return cu_warp_sum(v);
    else
        return cu_block_sum(v, sh);
}
template <bool WARP, typename C> __device__ __forceinline__ C rmax(C v, C *sh) {
    if constexpr (WARP)
        return cu_warp_max(v);
    else
        return cu_block_max(v, sh);
}

/* Grid for R rows of length C. */
static void row_grid(const cu_dev *d, int64_t R, int64_t C, bool *warp, unsigned *blocks,
                     int *threads) {
    *warp = C <= ROW_WARP_MAX;
    int64_t cap = (int64_t)d->sm_count * 32, b;
    if (*warp) {
        *threads = ROW_WARP_THREADS;
        b = (R + ROW_WARP_THREADS / 32 - 1) / (ROW_WARP_THREADS / 32);
    } else {
        *threads = C >= 16384 ? 1024 : ROW_BLOCK_THREADS;
        b = R;
    }
    if (b > cap) b = cap;
    *blocks = (unsigned)(b > 0 ? b : 1);
}

/* Launch KERNEL<T, WARP> over R rows of length C with the arguments that follow. */
#define ROW_LAUNCH(KERNEL, d, R, C, ...)                                                           \
    do {                                                                                           \
        bool w_;                                                                                   \
        unsigned nb_;                                                                              \
        int nt_;                                                                                   \
        row_grid(d, R, C, &w_, &nb_, &nt_);                                                        \
        if (w_)                                                                                    \
            KERNEL<T, true><<<nb_, nt_, 0, (d)->stream>>>(__VA_ARGS__);                            \
        else                                                                                       \
            KERNEL<T, false><<<nb_, nt_, 0, (d)->stream>>>(__VA_ARGS__);                           \
    } while (0)

static int64_t rows_of(const fe_tensor *t) {
    int64_t c = t->ndim ? t->shape[t->ndim - 1] : 1;
    return c ? fe_numel(t) / c : 0;
}
static int64_t cols_of(const fe_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

/* Row maximum and sum of exp(x - max) of a row, online, reduced over the row's threads. */
template <bool WARP, typename T, typename C>
__device__ __forceinline__ void row_max_sumexp(const T *x, int64_t n, const rows_t<WARP> &rw, C *sh,
                                               C *m_out, C *s_out) {
    C m = (C)-INFINITY, s = (C)0;
    for (int64_t j = rw.lane; j < n; j += rw.nthr) {
        C v = (C)cu_to_f(x[j]);
        if (v > m) {
            s = s * cu_exp(m - v) + (C)1; /* exp(-inf) = 0 on the first element */
            m = v;
        } else if (v != (C)-INFINITY) {
            s += cu_exp(v - m);
        }
    }
    C M = rmax<WARP>(m, sh);
    C part = m == (C)-INFINITY ? (C)0 : s * cu_exp(m - M);
    *s_out = rsum<WARP>(part, sh);
    *m_out = M;
}

/* ---- fast rows: the whole row in registers, read once in 16-byte vectors ----------------------
 * A group of tpr threads (a power of two, 32..1024) owns a row; thread `lane` of the group holds
 * vectors lane, lane + tpr, ... (at most FR_NV of them). A block holds blockDim / tpr groups and
 * walks the rows in steps of gridDim * groups, every thread taking part in every barrier. The
 * rows must be contiguous, C a multiple of the vector length and the pointers 16-byte aligned;
 * f64 and other rows take the generic kernels above. */

#define FR_NV 4 /* most 16-byte vectors a thread holds of one row */
#define FR_THREADS 256

/* Threads per row for rows of nvec vectors: the fewest (power of two >= 32) that hold it. */
static int fr_tpr(int64_t nvec) {
    int t = 32;
    while ((int64_t)t * FR_NV < nvec && t < 1024)
        t *= 2;
    return t;
}

/* Whether rows of C elements of dtype size es fit the fast path with these pointers, with at
 * most max_tpr threads per row. */
static bool fr_ok(int64_t C, size_t es, const void *const *ps, int np, int max_tpr = 1024) {
    if (es > 4 || C <= 0) return false;
    int64_t vn = 16 / (int64_t)es;
    if (C % vn || C / vn > (int64_t)max_tpr * FR_NV) return false;
    for (int i = 0; i < np; i++)
        if ((uintptr_t)ps[i] & 15u) return false;
    return true;
}

/* Blocks for R rows with groups of tpr threads in blocks of `threads`. */
static unsigned fr_blocks(const cu_dev *d, int64_t R, int tpr, int threads) {
    int64_t rpb = threads / tpr, b = (R + rpb - 1) / rpb, cap = (int64_t)d->sm_count * 64;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

/* Run `body` with T bound to f32, f16 or bf16 (other dtypes: nothing). */
#define FR_DISPATCH(dt, ...)                                                                       \
    switch (dt) {                                                                                  \
    case FE_F32: {                                                                                 \
        typedef float T;                                                                           \
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
    default: break;                                                                                \
    }

/* Threads per row (tpr) and per block for fast rows of C elements of size es. */
static void fr_shape(int64_t C, size_t es, int *tpr, int *threads) {
    *tpr = fr_tpr(C / (16 / (int64_t)es));
    *threads = *tpr > FR_THREADS ? *tpr : FR_THREADS;
}

/* A barrier over the tpr threads of the calling thread's group (named barrier 1 + group; at most
 * 15 groups a block), so that the groups of a block do not wait for each other. */
__device__ __forceinline__ void fr_group_sync(int tpr) {
#ifdef FE_CUDA_EMU
    emu::named_barrier(1 + (int)threadIdx.x / tpr, tpr);
#else
    asm volatile("bar.sync %0, %1;" ::"r"(1 + (int)threadIdx.x / tpr), "r"(tpr) : "memory");
#endif
}
/* Sum (MAX: maximum, NaN winning) of v over the tpr threads of this thread's group; every
 * thread of the block (with GROUP: of the group) must call it. Barriers when tpr > 32: the
 * block's, or with GROUP the group's own (fr_group_sync). */
template <bool MAX, bool GROUP = false>
__device__ __forceinline__ float fr_reduce(float v, float *sh, int tpr) {
    v = MAX ? cu_warp_max(v) : cu_warp_sum(v);
    if (tpr == 32) return v;
    int w = threadIdx.x >> 5, wpg = tpr >> 5, g0 = (w / wpg) * wpg;
    if ((threadIdx.x & 31) == 0) sh[w] = v;
    if (GROUP) fr_group_sync(tpr);
    else __syncthreads();
    float t = sh[g0];
    for (int k = 1; k < wpg; k++) {
        float u = sh[g0 + k];
        if (MAX)
            t = (u > t || u != u) ? u : t;
        else
            t += u;
    }
    if (GROUP) fr_group_sync(tpr);
    else __syncthreads();
    return t;
}

/* Fast-math pieces for the register-resident kernels: 2^x and 1/x on the special-function
 * unit (about 2 ulp, results below 2^-126 flushed to 0), and a maximum where NaN wins. */
#define FR_LOG2E 1.4426950408889634f
__device__ __forceinline__ float fr_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float fr_rcp(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float fr_max_nan(float a, float b) {
    float y;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
    return y;
}
/* sigmoid(x) = 1 / (1 + e^-x): no branch, no division; 0 for x below about -87, 1 above 17. */
__device__ __forceinline__ float fr_sigmoid(float x) { return fr_rcp(1.f + fr_exp2(-FR_LOG2E * x)); }

/* y = x * rstd (* w); with a residual r, h = round(x + r) is stored and normalised. */
template <typename T>
__global__ void __launch_bounds__(1024)
    k_rmsnorm_fast(T *__restrict__ y, T *__restrict__ h, void *rstd, int stat_dt,
                   const T *__restrict__ x, const T *__restrict__ r, const T *__restrict__ w,
                   int64_t R, int C, int tpr, float eps) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    int g = threadIdx.x / tpr, lane = threadIdx.x % tpr, rpb = blockDim.x / tpr, nvec = C / N;
    for (int64_t base = (int64_t)blockIdx.x * rpb; base < R; base += (int64_t)gridDim.x * rpb) {
        int64_t row = base + g;
        bool ok = row < R;
        uint4 xv[FR_NV], rv[FR_NV];
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                xv[k] = cu_ld16(x + row * C + (int64_t)j * N);
                if (r) rv[k] = cu_ld16(r + row * C + (int64_t)j * N);
            }
        }
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                if (r) { /* normalise the rounded h that backward will see */
                    float f[N];
#pragma unroll
                    for (int e = 0; e < N; e++)
                        f[e] = cu_vget<T>(xv[k], e) + cu_vget<T>(rv[k], e);
                    xv[k] = cu_vpack<T>(f);
                    cu_st16(h + row * C + (int64_t)j * N, xv[k]);
                }
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float v = cu_vget<T>(xv[k], e);
                    ss += v * v;
                }
            }
        }
        ss = fr_reduce<false>(ss, sh, tpr);
        float rs = 1.f / sqrtf(ss / (float)C + eps);
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                uint4 wv = w ? cu_ld16(w + (int64_t)j * N) : make_uint4(0, 0, 0, 0);
                float f[N];
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float v = cu_vget<T>(xv[k], e) * rs;
                    f[e] = w ? v * cu_vget<T>(wv, e) : v;
                }
                cu_st16(y + row * C + (int64_t)j * N, cu_vpack<T>(f));
            }
        }
        if (ok && lane == 0) cu_store_dyn(rstd, stat_dt, row, (double)rs);
    }
}

/* Programmatic dependent launch (Hopper and later). A kernel launched by nn_launch_dep may begin
 * while the kernel before it on the stream is still running, so it calls nn_wait_prev() before it
 * touches any memory (the wait returns once that kernel has completed and its writes are
 * visible); the kernel before it calls nn_launch_next() to let it start launching early. Both are
 * no-ops on older architectures and in a kernel launched the ordinary way.
 * What the kernel before wrote must not be read through `const T *__restrict__` (nor __ldg):
 * those become non-coherent loads (ld.global.nc), which promise that the data does not change
 * while the kernel runs, and ptxas may then move them above the wait. It did (LDG.E.CONSTANT
 * before ACQBULK in the SASS, and wrong gradients on an H200) when k_emb_rows gained a trigger;
 * scripts/pdl_order_check.sh checks the SASS of these kernels. */
__device__ __forceinline__ void nn_wait_prev() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void nn_launch_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* Launch k after the previous kernel on d's stream as a programmatic dependent launch when the
 * device and k's code support it (k then starts with nn_wait_prev), else the ordinary way. */
template <typename... P, typename... A>
static fe_status nn_launch_dep(cu_dev *d, const char *what, void (*k)(P...), unsigned grid,
                               unsigned block, size_t smem, A &&...args) {
    int major = 0;
    cudaFuncAttributes fa;
    fe_status st =
        cu_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d->index),
                 "cudaDeviceGetAttribute");
    if (!st) st = cu_check(cudaFuncGetAttributes(&fa, k), "cudaFuncGetAttributes");
    if (st) return st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid), cfg.blockDim = dim3(block), cfg.dynamicSmemBytes = smem;
    cfg.stream = d->stream;
    /* the wait is compiled in only for compute_90 and later (ptxVersion: the virtual arch) */
    cfg.attrs = at, cfg.numAttrs = major >= 9 && fa.ptxVersion >= 90 ? 1 : 0;
    return cu_check(cudaLaunchKernelEx(&cfg, k, static_cast<A &&>(args)...), what);
}

/* ---- RMSNorm backward on rows in registers ------------------------------------------------------
 * gx = rstd * (g*w - xhat * mean(g*w*xhat)) (+ gextra), xhat = x * rstd, and the weight gradient
 * gw = sum over rows of g * xhat. A group of tpr threads owns a row; thread `lane` holds vectors
 * lane and (VPT = 2) lane + tpr of it, so a thread keeps little: its w vectors, its f32 share of
 * the weight gradient and three row slots. The grid is persistent (as many blocks as fit on the
 * device, or the fewest that give every group the same number of rows); group gid of G takes rows
 * gid, gid + G, ... While a group works on one row, the loads of its next two rows are in flight:
 * the slots form a ring and the loop is unrolled by three, so a slot is never copied (a copy would
 * wait for its loads). With two blocks of 512 threads per SM that is about 64 KB of reads in
 * flight per SM, enough to cover the memory latency at full bandwidth; the kernel before did one
 * row at a time and reached 72% of copy bandwidth. With PART, block b writes part[b][j] = its
 * rows' sum of g * xhat (its groups added in order) and k_colsum_final_f adds the blocks' rows in
 * a fixed order: the result is the same on every run. gx may be NULL (weight gradient only);
 * ge (the gradient added to gx) is NULL when there is none. */
#define RB_THREADS 512
#define RB_MAX_VEC 1024 /* longest row: 1024 16-byte vectors (8192 bf16, 4096 f32) */

template <typename T> struct rb_args {
    T *gx;
    float *part;
    const T *gy, *x, *w, *ge;
    const float *rstd; /* f32 statistics (a plain load: converting it would wait for it) */
    int R, C, tpr;     /* R < 2^30 rows (checked by the caller) */
};

/* One row's data as loaded: VPT vectors of gy, x and (GE) ge, and the row's rstd. */
template <int VPT, bool GE> struct rb_slot {
    uint4 g[VPT], x[VPT], e[GE ? VPT : 1];
    float rs;
};

template <typename T, int VPT, bool GE>
__device__ __forceinline__ void rb_load(rb_slot<VPT, GE> &s, const rb_args<T> &a, int row,
                                        int lane) {
    constexpr int N = cu_vn<T>::n;
    if (row >= a.R) return;
#pragma unroll
    for (int v = 0; v < VPT; v++) {
        int j = (lane + v * a.tpr) * N;
        if (j < a.C) {
            int64_t o = (int64_t)row * a.C + j;
            s.g[v] = cu_ld16(a.gy + o);
            s.x[v] = cu_ld16(a.x + o);
            if (GE) s.e[v] = cu_ld16(a.ge + o);
        }
    }
    s.rs = a.rstd[row];
}

/* gx of one row (every thread of the block calls it: the row sum may take barriers; the group's
 * own where NB), and the row's g * xhat added to acc. */
template <typename T, int VPT, bool PART, bool GE, bool NB>
__device__ __forceinline__ void rb_row(const rb_slot<VPT, GE> &s, const rb_args<T> &a, int row,
                                       int lane, const uint4 *wv, float (*acc)[cu_vn<T>::n],
                                       float *sh) {
    constexpr int N = cu_vn<T>::n;
    bool ok = row < a.R;
    float dot = 0.f; /* sum of (g*w) * x over the thread's elements */
#pragma unroll
    for (int v = 0; v < VPT; v++) {
        if (ok && (lane + v * a.tpr) * N < a.C) {
#pragma unroll
            for (int e = 0; e < N; e++) {
                float gf = cu_vget<T>(s.g[v], e), xf = cu_vget<T>(s.x[v], e);
                dot += (a.w ? gf * cu_vget<T>(wv[v], e) : gf) * xf;
                if (PART) acc[v][e] += gf * xf * s.rs;
            }
        }
    }
    if (!a.gx) return; /* uniform over the block */
    float rs = ok ? s.rs : 0.f;
    /* mean(g*w*xhat) * rstd = dot * rs^3 / C; gx = rs * (g*w - x * rs^2 * dot / C) */
    float c = fr_reduce<false, NB>(dot, sh, a.tpr) * rs * rs / (float)a.C;
#pragma unroll
    for (int v = 0; v < VPT; v++) {
        int j = (lane + v * a.tpr) * N;
        if (ok && j < a.C) {
            float f[N];
#pragma unroll
            for (int e = 0; e < N; e++) {
                float gf = cu_vget<T>(s.g[v], e);
                float gw = a.w ? gf * cu_vget<T>(wv[v], e) : gf;
                float o = rs * (gw - cu_vget<T>(s.x[v], e) * c);
                f[e] = GE ? o + cu_vget<T>(s.e[v], e) : o;
            }
            cu_st16(a.gx + (int64_t)row * a.C + j, cu_vpack<T>(f));
        }
    }
}

/* NB: the row sums wait at their group's named barrier instead of the block's (the groups of a
 * block then keep their own pace; FE_RMS_NAMED=1, an experiment) */
template <typename T, int VPT, bool PART, bool GE, bool NB = false>
__global__ void __launch_bounds__(RB_THREADS, VPT == 1 && !GE ? 2 : 1)
    k_rmsnorm_bwd_fast(rb_args<T> a) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    extern __shared__ float shp[]; /* PART: C floats */
    nn_launch_next();              /* the final column sum may start launching */
    int tpr = a.tpr, g = threadIdx.x / tpr, lane = threadIdx.x % tpr, rpb = blockDim.x / tpr;
    uint4 wv[VPT];
    float acc[PART ? VPT : 1][N];
#pragma unroll
    for (int v = 0; v < VPT; v++) {
        int j = (lane + v * tpr) * N;
        wv[v] = a.w && j < a.C ? cu_ld16(a.w + j) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int e = 0; e < N; e++)
            if (PART) acc[v][e] = 0.f;
    }
    /* base: the block's first row this round (uniform, so every thread takes the same turns) */
    int G = gridDim.x * rpb, base = blockIdx.x * rpb, row = base + g;
    rb_slot<VPT, GE> s0, s1, s2;
    rb_load<T, VPT, GE>(s0, a, row, lane);
    rb_load<T, VPT, GE>(s1, a, row + G, lane);
    while (base < a.R) {
        rb_load<T, VPT, GE>(s2, a, row + 2 * G, lane);
        rb_row<T, VPT, PART, GE, NB>(s0, a, row, lane, wv, acc, sh);
        base += G, row += G;
        if (base >= a.R) break;
        rb_load<T, VPT, GE>(s0, a, row + 2 * G, lane);
        rb_row<T, VPT, PART, GE, NB>(s1, a, row, lane, wv, acc, sh);
        base += G, row += G;
        if (base >= a.R) break;
        rb_load<T, VPT, GE>(s1, a, row + 2 * G, lane);
        rb_row<T, VPT, PART, GE, NB>(s2, a, row, lane, wv, acc, sh);
        base += G, row += G;
    }
    if constexpr (PART) {
        /* the groups add their sums into shp one after another, then the block writes them */
        for (int gi = 0; gi < rpb; gi++) {
            if (g == gi) {
#pragma unroll
                for (int v = 0; v < VPT; v++) {
                    int j = (lane + v * tpr) * N;
                    if (j < a.C) {
#pragma unroll
                        for (int e = 0; e < N; e++)
                            shp[j + e] = gi == 0 ? acc[v][e] : shp[j + e] + acc[v][e];
                    }
                }
            }
            __syncthreads();
        }
        for (int j = threadIdx.x; j < a.C; j += blockDim.x)
            a.part[(int64_t)blockIdx.x * a.C + j] = shp[j];
    }
}

/* out[j] = sum over p of part[p][j] (f32 partials, f64 sum) in a fixed order: a block of
 * CF_TX x CF_TY threads takes CF_TX columns; thread (tx, ty) adds rows ty, ty + CF_TY, ... in
 * turn (CF_U loads in flight), then thread (tx, 0) adds the CF_TY sums in order of ty.
 * The partials (a few hundred rows) sit in L2; this kernel is latency-bound, so it takes narrow
 * column tiles (C / 16 blocks: every SM busy at C = 2048) and 32 row strides with 8 loads in
 * flight, about one round trip to L2 per thread for P <= 256. It is launched as a programmatic
 * dependent of the kernel that writes the partials, so it waits for that kernel first. */
#define CF_TX 16
#define CF_TY 32
#define CF_U 8
template <typename T>
__global__ void __launch_bounds__(CF_TX *CF_TY)
    k_colsum_final_f(T *out, const float *part, int64_t C, int P) { /* part: see nn_wait_prev */
    __shared__ double sh[CF_TY][CF_TX + 1];
    nn_wait_prev();
    int tx = threadIdx.x % CF_TX, ty = threadIdx.x / CF_TX;
    int64_t j = (int64_t)blockIdx.x * CF_TX + tx;
    double s = 0;
    if (j < C) {
        int p = ty;
        for (; p + (CF_U - 1) * CF_TY < P; p += CF_U * CF_TY) {
            float v[CF_U];
#pragma unroll
            for (int u = 0; u < CF_U; u++)
                v[u] = part[(int64_t)(p + u * CF_TY) * C + j];
#pragma unroll
            for (int u = 0; u < CF_U; u++)
                s += (double)v[u];
        }
        for (; p < P; p += CF_TY)
            s += (double)part[(int64_t)p * C + j];
    }
    sh[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && j < C) {
        double t = sh[0][tx];
        for (int k = 1; k < CF_TY; k++)
            t += sh[k][tx];
        out[j] = cu_cast<T>(t);
    }
}

/* Softmax (LOG: log-softmax) of rows held in registers. */
template <typename T>
__global__ void __launch_bounds__(1024)
    k_softmax_fast(T *__restrict__ y, const T *__restrict__ x, int64_t R, int C, int tpr,
                   bool take_log) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    int g = threadIdx.x / tpr, lane = threadIdx.x % tpr, rpb = blockDim.x / tpr, nvec = C / N;
    for (int64_t base = (int64_t)blockIdx.x * rpb; base < R; base += (int64_t)gridDim.x * rpb) {
        int64_t row = base + g;
        bool ok = row < R;
        uint4 xv[FR_NV];
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) xv[k] = cu_ld16(x + row * C + (int64_t)j * N);
        }
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
#pragma unroll
                for (int e = 0; e < N; e++)
                    m = fr_max_nan(m, cu_vget<T>(xv[k], e));
            }
        }
        m = fr_reduce<true>(m, sh, tpr);
        /* e^(v - m) = 2^(v*log2e - m*log2e): one FMA and one ex2 per element. An element of
         * -inf gives 0 when m is finite; a row whose max is -inf, +inf or NaN sums to NaN,
         * as the exact formula does (its outputs are NaN either way). */
        float ml = m * FR_LOG2E, s = 0.f;
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
#pragma unroll
                for (int e = 0; e < N; e++)
                    s += fr_exp2(fmaf(cu_vget<T>(xv[k], e), FR_LOG2E, -ml));
            }
        }
        s = fr_reduce<false>(s, sh, tpr);
        float l = m + logf(s), inv = 1.f / s;
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                float f[N];
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float v = cu_vget<T>(xv[k], e);
                    f[e] = take_log ? v - l : fr_exp2(fmaf(v, FR_LOG2E, -ml)) * inv;
                }
                cu_st16(y + row * C + (int64_t)j * N, cu_vpack<T>(f));
            }
        }
    }
}

/* Softmax backward with gy and y rows held in registers. */
template <typename T>
__global__ void __launch_bounds__(1024)
    k_softmax_bwd_fast(T *__restrict__ gx, const T *__restrict__ gy, const T *__restrict__ y,
                       int64_t R, int C, int tpr, bool take_log) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    int g = threadIdx.x / tpr, lane = threadIdx.x % tpr, rpb = blockDim.x / tpr, nvec = C / N;
    for (int64_t base = (int64_t)blockIdx.x * rpb; base < R; base += (int64_t)gridDim.x * rpb) {
        int64_t row = base + g;
        bool ok = row < R;
        uint4 gv[FR_NV], yv[FR_NV];
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                gv[k] = cu_ld16(gy + row * C + (int64_t)j * N);
                yv[k] = cu_ld16(y + row * C + (int64_t)j * N);
            }
        }
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
#pragma unroll
                for (int e = 0; e < N; e++)
                    s += take_log ? cu_vget<T>(gv[k], e)
                                  : cu_vget<T>(gv[k], e) * cu_vget<T>(yv[k], e);
            }
        }
        s = fr_reduce<false>(s, sh, tpr);
#pragma unroll
        for (int k = 0; k < FR_NV; k++) {
            int j = lane + k * tpr;
            if (ok && j < nvec) {
                float f[N];
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float gf = cu_vget<T>(gv[k], e), yf = cu_vget<T>(yv[k], e);
                    f[e] = take_log ? gf - expf(yf) * s : yf * (gf - s);
                }
                cu_st16(gx + row * C + (int64_t)j * N, cu_vpack<T>(f));
            }
        }
    }
}

/* ---- softmax
 * -------------------------------------------------------------------------------------- */

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_softmax(T *y, const T *x, int64_t R, int64_t C, bool take_log) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *xr = x + row * C;
        T *yr = y + row * C;
        A m, s;
        row_max_sumexp<WARP, T, A>(xr, C, rw, sh, &m, &s);
        if (take_log) {
            A l = m + cu_log(s);
            for (int64_t j = rw.lane; j < C; j += rw.nthr)
                yr[j] = cu_cast<T>((A)cu_to_f(xr[j]) - l);
        } else {
            for (int64_t j = rw.lane; j < C; j += rw.nthr)
                yr[j] = cu_cast<T>(cu_exp((A)cu_to_f(xr[j]) - m) / s);
        }
    }
}

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_softmax_bwd(T *gx, const T *gy, const T *y, int64_t R, int64_t C, bool take_log) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *g = gy + row * C, *yr = y + row * C;
        T *o = gx + row * C;
        A s = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr)
            s += take_log ? (A)cu_to_f(g[j]) : (A)cu_to_f(g[j]) * (A)cu_to_f(yr[j]);
        s = rsum<WARP>(s, sh);
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A gv = (A)cu_to_f(g[j]), yv = (A)cu_to_f(yr[j]);
            o[j] = cu_cast<T>(take_log ? gv - cu_exp(yv) * s : yv * (gv - s));
        }
    }
}

static fe_status same_dtype(const char *op, fe_dtype dt, int n, const fe_tensor *const *ts) {
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->dtype != dt)
            return fe_set_error(FE_ERR_DTYPE, "%s (cuda): operand %d is %s, expected %s", op, i,
                                fe_dtype_name(ts[i]->dtype), fe_dtype_name(dt));
    return FE_OK;
}

extern "C" fe_status fe_cuda_softmax(fe_tensor *y, const fe_tensor *x, bool take_log) {
    cu_dev *d = cu_of(y);
    if (!d) return fe_last_status();
    const fe_tensor *ts[1] = {y};
    if (same_dtype("softmax", x->dtype, 1, ts)) return fe_last_status();
    int64_t R = rows_of(x), C = cols_of(x);
    if (R == 0 || C == 0) return FE_OK;
    const void *ps[2] = {fe__ptr(y), fe__ptr(x)};
    if (fr_ok(C, fe_dtype_size(x->dtype), ps, 2)) {
        int tpr, thr;
        fr_shape(C, fe_dtype_size(x->dtype), &tpr, &thr);
        FR_DISPATCH(x->dtype, {
            k_softmax_fast<T><<<fr_blocks(d, R, tpr, thr), thr, 0, d->stream>>>(
                (T *)fe__ptr(y), (const T *)fe__ptr(x), R, (int)C, tpr, take_log);
            return cu_launched("softmax kernel");
        })
    }
    CU_FLOAT_DISPATCH(x->dtype, "softmax", {
        ROW_LAUNCH(k_softmax, d, R, C, (T *)fe__ptr(y), (const T *)fe__ptr(x), R, C, take_log);
    })
    return cu_launched("softmax kernel");
}

extern "C" fe_status fe_cuda_softmax_backward(fe_tensor *gx, const fe_tensor *gy,
                                              const fe_tensor *y, bool take_log) {
    cu_dev *d = cu_of(gx);
    if (!d) return fe_last_status();
    const fe_tensor *ts[2] = {gx, gy};
    if (same_dtype("softmax backward", y->dtype, 2, ts)) return fe_last_status();
    int64_t R = rows_of(y), C = cols_of(y);
    if (R == 0 || C == 0) return FE_OK;
    const void *ps[3] = {fe__ptr(gx), fe__ptr(gy), fe__ptr(y)};
    if (fr_ok(C, fe_dtype_size(y->dtype), ps, 3)) {
        int tpr, thr;
        fr_shape(C, fe_dtype_size(y->dtype), &tpr, &thr);
        FR_DISPATCH(y->dtype, {
            k_softmax_bwd_fast<T><<<fr_blocks(d, R, tpr, thr), thr, 0, d->stream>>>(
                (T *)fe__ptr(gx), (const T *)fe__ptr(gy), (const T *)fe__ptr(y), R, (int)C, tpr,
                take_log);
            return cu_launched("softmax backward kernel");
        })
    }
    CU_FLOAT_DISPATCH(y->dtype, "softmax backward", {
        ROW_LAUNCH(k_softmax_bwd, d, R, C, (T *)fe__ptr(gx), (const T *)fe__ptr(gy),
                   (const T *)fe__ptr(y), R, C, take_log);
    })
    return cu_launched("softmax backward kernel");
}

/* ---- column sums over rows (weight gradients), two deterministic stages
 * ----------------------------- */

/* What a column sum adds up for row r, column j. */
enum { COL_RMS_W = 0, COL_LN_W = 1, COL_LN_B = 2 };

#define COL_TX 32
#define COL_TY 8

/* part[p][j] (and part2[p][j]) = sum over rows of chunk p of the term(s) of column j. */
template <typename T, int MODE>
__global__ void k_colsum(double *part, double *part2, const T *gy, const T *x, const void *mean,
                         const void *rstd, int stat_dt, int64_t R, int64_t C, int64_t chunk) {
    __shared__ double sh[COL_TY][COL_TX + 1], sh2[COL_TY][COL_TX + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t j = (int64_t)blockIdx.x * COL_TX + tx;
    int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
    double acc = 0, acc2 = 0;
    if (j < C) {
        for (int64_t r = r0 + ty; r < r1; r += COL_TY) {
            double g = cu_to_f(gy[r * C + j]);
            if (MODE == COL_RMS_W) {
                acc += g * (double)cu_to_f(x[r * C + j]) * cu_load_dyn(rstd, stat_dt, r);
            } else {
                double xh = ((double)cu_to_f(x[r * C + j]) - cu_load_dyn(mean, stat_dt, r)) *
                            cu_load_dyn(rstd, stat_dt, r);
                acc += g * xh;
                acc2 += g;
            }
        }
    }
    sh[ty][tx] = acc;
    sh2[ty][tx] = acc2;
    __syncthreads();
    if (ty == 0 && j < C) {
        double s = 0, s2 = 0;
        for (int k = 0; k < COL_TY; k++)
            s += sh[k][tx], s2 += sh2[k][tx];
        part[blockIdx.y * C + j] = s;
        if (part2) part2[blockIdx.y * C + j] = s2;
    }
}

template <typename T> __global__ void k_colsum_final(T *out, const double *part, int64_t C, int P) {
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < C; j += step) {
        double s = 0;
        for (int p = 0; p < P; p++)
            s += part[(int64_t)p * C + j];
        out[j] = cu_cast<T>(s);
    }
}

/* gw (and gb) = column sums of the MODE terms; either output may be NULL. */
template <typename T, int MODE>
static fe_status colsum(cu_dev *d, fe_tensor *gw, fe_tensor *gb, const fe_tensor *gy,
                        const fe_tensor *x, const fe_tensor *mean, const fe_tensor *rstd) {
    int64_t R = rows_of(x), C = cols_of(x);
    if (C == 0) return FE_OK;
    if (R == 0) {
        fe_status st = gw ? fe_cuda_fill(gw, 0.0) : FE_OK;
        return st || !gb ? st : fe_cuda_fill(gb, 0.0);
    }
    int64_t tiles = (C + COL_TX - 1) / COL_TX, want = (int64_t)d->sm_count * 8;
    int64_t P = (want + tiles - 1) / tiles, pmax = (R + COL_TY - 1) / COL_TY;
    if (P > pmax) P = pmax;
    if (P > 1024) P = 1024;
    if (P < 1) P = 1;
    int64_t chunk = (R + P - 1) / P;
    P = (R + chunk - 1) / chunk;
    size_t bytes = (size_t)P * (size_t)C * sizeof(double) * (MODE == COL_RMS_W ? 1 : 2);
    double *part = NULL;
    if (cu_scratch(d, bytes, (void **)&part)) return fe_last_status();
    double *part2 = MODE == COL_RMS_W ? NULL : part + P * C;
    dim3 grid((unsigned)tiles, (unsigned)P), block(COL_TX, COL_TY);
    k_colsum<T, MODE><<<grid, block, 0, d->stream>>>(
        part, part2, (const T *)fe__ptr(gy), (const T *)fe__ptr(x), mean ? fe__ptr(mean) : NULL,
        fe__ptr(rstd), rstd->dtype, R, C, chunk);
    fe_status st = cu_launched("weight-gradient kernel");
    unsigned nb = cu_blocks(d, C, 256);
    if (!st && gw) {
        k_colsum_final<T><<<nb, 256, 0, d->stream>>>((T *)fe__ptr(gw), part, C, (int)P);
        st = cu_launched("weight-gradient kernel (final)");
    }
    if (!st && gb && part2) {
        k_colsum_final<T><<<nb, 256, 0, d->stream>>>((T *)fe__ptr(gb), part2, C, (int)P);
        st = cu_launched("bias-gradient kernel (final)");
    }
    cu_scratch_free(d, part, bytes);
    return st;
}

/* ---- RMSNorm
 * ------------------------------------------------------------------------------------------ */

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_rmsnorm(T *y, T *h, void *rstd, int stat_dt, const T *x, const T *r, const T *w, int64_t R,
              int64_t C, double eps) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *xr = x + row * C;
        const T *rr = r ? r + row * C : NULL;
        T *hr = h ? h + row * C : NULL;
        A ss = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A v;
            if (rr) { /* normalise the rounded h that backward will see */
                T hv = cu_cast<T>((A)cu_to_f(xr[j]) + (A)cu_to_f(rr[j]));
                hr[j] = hv;
                v = (A)cu_to_f(hv);
            } else {
                v = (A)cu_to_f(xr[j]);
            }
            ss += v * v;
        }
        ss = rsum<WARP>(ss, sh);
        A rs = (A)1 / cu_sqrt(ss / (A)C + (A)eps);
        const T *src = rr ? hr : xr; /* each thread rereads only what it wrote */
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A v = (A)cu_to_f(src[j]) * rs;
            y[row * C + j] = cu_cast<T>(w ? v * (A)cu_to_f(w[j]) : v);
        }
        if (rw.lane == 0) cu_store_dyn(rstd, stat_dt, row, (double)rs);
    }
}

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_rmsnorm_bwd(T *gx, const T *gy, const T *x, const T *w, const void *rstd, int stat_dt,
                  const T *gextra, int64_t R, int64_t C) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *g = gy + row * C, *xr = x + row * C;
        A rs = (A)cu_load_dyn(rstd, stat_dt, row), dot = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A gv = (A)cu_to_f(g[j]) * (w ? (A)cu_to_f(w[j]) : (A)1);
            dot += gv * (A)cu_to_f(xr[j]) * rs;
        }
        dot = rsum<WARP>(dot, sh) / (A)C;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A gv = (A)cu_to_f(g[j]) * (w ? (A)cu_to_f(w[j]) : (A)1);
            A v = (A)cu_to_f(xr[j]) * rs;
            A o = rs * (gv - v * dot);
            if (gextra) o += (A)cu_to_f(gextra[row * C + j]);
            gx[row * C + j] = cu_cast<T>(o);
        }
    }
}

extern "C" fe_status fe_cuda_rmsnorm(fe_tensor *y, fe_tensor *h, fe_tensor *rstd,
                                     const fe_tensor *x, const fe_tensor *r, const fe_tensor *w,
                                     double eps) {
    cu_dev *d = cu_of(y);
    if (!d) return fe_last_status();
    const fe_tensor *ts[4] = {y, h, r, w};
    if (same_dtype("rmsnorm", x->dtype, 4, ts)) return fe_last_status();
    if (r && !h) return fe_set_error(FE_ERR_ARG, "rmsnorm (cuda): a residual needs an h output");
    int64_t R = rows_of(x), C = cols_of(x);
    if (R == 0) return FE_OK;
    const void *ps[5] = {fe__ptr(y), fe__ptr(x), r ? fe__ptr(h) : NULL, r ? fe__ptr(r) : NULL,
                         w ? fe__ptr(w) : NULL};
    if (fr_ok(C, fe_dtype_size(x->dtype), ps, 5)) {
        int tpr, thr;
        fr_shape(C, fe_dtype_size(x->dtype), &tpr, &thr);
        FR_DISPATCH(x->dtype, {
            k_rmsnorm_fast<T><<<fr_blocks(d, R, tpr, thr), thr, 0, d->stream>>>(
                (T *)fe__ptr(y), r ? (T *)fe__ptr(h) : (T *)NULL, fe__ptr(rstd), rstd->dtype,
                (const T *)fe__ptr(x), r ? (const T *)fe__ptr(r) : (const T *)NULL,
                w ? (const T *)fe__ptr(w) : (const T *)NULL, R, (int)C, tpr, (float)eps);
            return cu_launched("rmsnorm kernel");
        })
    }
    CU_FLOAT_DISPATCH(x->dtype, "rmsnorm", {
        ROW_LAUNCH(k_rmsnorm, d, R, C, (T *)fe__ptr(y), r ? (T *)fe__ptr(h) : (T *)NULL,
                   fe__ptr(rstd), rstd->dtype, (const T *)fe__ptr(x),
                   r ? (const T *)fe__ptr(r) : (const T *)NULL,
                   w ? (const T *)fe__ptr(w) : (const T *)NULL, R, C, eps);
    })
    return cu_launched("rmsnorm kernel");
}

/* FE_RMS_NAMED=1 (an experiment, read once): the RMSNorm backward's row sums wait at named
 * barriers of their group instead of the block's */
static int g_rms_named = -1;

/* Launch k_rmsnorm_bwd_fast<T, VPT, PART = gw != NULL, GE> (see there) and, for gw, the final
 * column sum. */
template <typename T, int VPT, bool GE>
static fe_status rmsnorm_bwd_launch(cu_dev *d, rb_args<T> a, fe_tensor *gw) {
    /* named barriers: 1 + group, at most 15 groups (tpr >= 64 where there are barriers at all) */
    const bool nb_ = cu_env_flag("FE_RMS_NAMED", &g_rms_named) && RB_THREADS / a.tpr <= 15;
    void (*k)(rb_args<T>) = gw ? (nb_ ? k_rmsnorm_bwd_fast<T, VPT, true, GE, true>
                                      : k_rmsnorm_bwd_fast<T, VPT, true, GE, false>)
                               : (nb_ ? k_rmsnorm_bwd_fast<T, VPT, false, GE, true>
                                      : k_rmsnorm_bwd_fast<T, VPT, false, GE, false>);
    size_t smem = gw ? (size_t)a.C * sizeof(float) : 0;
    int occ = 0;
    fe_status st =
        cu_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, RB_THREADS, smem),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (st) return st;
    /* rounds: rows per group when every block that fits runs; then the fewest blocks that keep
     * that many rounds, so that every group has the same number of rows where R allows it
     * (16384 rows at 4 groups per SM: 256 blocks of 32 rounds rather than 264 of which a few
     * run a 32nd round alone) and fewer partial rows */
    int64_t rpb = RB_THREADS / a.tpr, cap = (int64_t)d->sm_count * (occ > 0 ? occ : 1);
    int64_t rounds = ((int64_t)a.R + cap * rpb - 1) / (cap * rpb);
    unsigned nb = (unsigned)(((int64_t)a.R + rounds * rpb - 1) / (rounds * rpb));
    if (!gw) {
        k<<<nb, RB_THREADS, 0, d->stream>>>(a);
        return cu_launched("rmsnorm backward kernel");
    }
    size_t bytes = (size_t)nb * (size_t)a.C * sizeof(float);
    if (cu_scratch(d, bytes, (void **)&a.part)) return fe_last_status();
    k<<<nb, RB_THREADS, smem, d->stream>>>(a);
    st = cu_launched("rmsnorm backward kernel");
    if (!st)
        st = nn_launch_dep(d, "weight-gradient kernel (final)", k_colsum_final_f<T>,
                           (unsigned)((a.C + CF_TX - 1) / CF_TX), CF_TX * CF_TY, 0,
                           (T *)fe__ptr(gw), (const float *)a.part, (int64_t)a.C, (int)nb);
    cu_scratch_free(d, a.part, bytes);
    return st;
}

/* Fast RMSNorm backward: gx in one pass over rows in registers; gw from per-block f32 partial
 * sums in scratch, then a fixed-order sum per column (deterministic for a device). Rows of up to
 * RB_MAX_VEC 16-byte vectors: one vector per thread up to RB_THREADS vectors, else two. */
static fe_status rmsnorm_bwd_fast(cu_dev *d, fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                                  const fe_tensor *x, const fe_tensor *w, const fe_tensor *rstd,
                                  const fe_tensor *gextra, int64_t R, int64_t C) {
    int64_t nvec = C / (16 / (int64_t)fe_dtype_size(x->dtype));
    int vpt = nvec > RB_THREADS ? 2 : 1, tpr = 32;
    while ((int64_t)tpr * vpt < nvec)
        tpr *= 2; /* at most RB_THREADS, as nvec <= RB_MAX_VEC */
    FR_DISPATCH(x->dtype, {
        rb_args<T> a;
        a.gx = gx ? (T *)fe__ptr(gx) : (T *)NULL;
        a.part = NULL;
        a.gy = (const T *)fe__ptr(gy), a.x = (const T *)fe__ptr(x);
        a.w = w ? (const T *)fe__ptr(w) : (const T *)NULL;
        a.ge = gx && gextra ? (const T *)fe__ptr(gextra) : (const T *)NULL;
        a.rstd = (const float *)fe__ptr(rstd);
        a.R = (int)R, a.C = (int)C, a.tpr = tpr;
        if (a.ge)
            return vpt == 1 ? rmsnorm_bwd_launch<T, 1, true>(d, a, gw)
                            : rmsnorm_bwd_launch<T, 2, true>(d, a, gw);
        return vpt == 1 ? rmsnorm_bwd_launch<T, 1, false>(d, a, gw)
                        : rmsnorm_bwd_launch<T, 2, false>(d, a, gw);
    })
    return fe_set_error(FE_ERR_DTYPE, "rmsnorm backward (cuda): dtype %s is not supported",
                        fe_dtype_name(x->dtype));
}

extern "C" fe_status fe_cuda_rmsnorm_backward(fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                                              const fe_tensor *x, const fe_tensor *w,
                                              const fe_tensor *rstd, const fe_tensor *gextra) {
    cu_dev *d = cu_of(x);
    if (!d) return fe_last_status();
    const fe_tensor *ts[5] = {gx, gw, gy, w, gextra};
    if (same_dtype("rmsnorm backward", x->dtype, 5, ts)) return fe_last_status();
    int64_t R = rows_of(x), C = cols_of(x);
    fe_status st = FE_OK;
    const void *ps[5] = {gx ? fe__ptr(gx) : NULL, fe__ptr(gy), fe__ptr(x), w ? fe__ptr(w) : NULL,
                         gx && gextra ? fe__ptr(gextra) : NULL};
    if (R > 0 && R < (1 << 30) && (gx || gw) && rstd->dtype == FE_F32 &&
        fr_ok(C, fe_dtype_size(x->dtype), ps, 5, RB_MAX_VEC / FR_NV))
        return rmsnorm_bwd_fast(d, gx, gw, gy, x, w, rstd, gextra, R, C);
    CU_FLOAT_DISPATCH(x->dtype, "rmsnorm backward", {
        if (gx && R > 0) {
            ROW_LAUNCH(k_rmsnorm_bwd, d, R, C, (T *)fe__ptr(gx), (const T *)fe__ptr(gy),
                       (const T *)fe__ptr(x), w ? (const T *)fe__ptr(w) : (const T *)NULL,
                       fe__ptr(rstd), rstd->dtype,
                       gextra ? (const T *)fe__ptr(gextra) : (const T *)NULL, R, C);
            st = cu_launched("rmsnorm backward kernel");
        }
        if (!st && gw) st = colsum<T, COL_RMS_W>(d, gw, NULL, gy, x, NULL, rstd);
    })
    return st;
}

/* ---- LayerNorm
 * --------------------------------------------------------------------------------------------- */

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_layernorm(T *y, void *mean, void *rstd, int stat_dt, const T *x, const T *w, const T *b,
                int64_t R, int64_t C, double eps) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *xr = x + row * C;
        A s = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr)
            s += (A)cu_to_f(xr[j]);
        A m = rsum<WARP>(s, sh) / (A)C, var = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A t = (A)cu_to_f(xr[j]) - m;
            var += t * t;
        }
        var = rsum<WARP>(var, sh);
        A rs = (A)1 / cu_sqrt(var / (A)C + (A)eps);
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A v = ((A)cu_to_f(xr[j]) - m) * rs;
            if (w) v *= (A)cu_to_f(w[j]);
            if (b) v += (A)cu_to_f(b[j]);
            y[row * C + j] = cu_cast<T>(v);
        }
        if (rw.lane == 0) {
            cu_store_dyn(mean, stat_dt, row, (double)m);
            cu_store_dyn(rstd, stat_dt, row, (double)rs);
        }
    }
}

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_layernorm_bwd(T *gx, const T *gy, const T *x, const T *w, const void *mean, const void *rstd,
                    int stat_dt, int64_t R, int64_t C) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        const T *g = gy + row * C, *xr = x + row * C;
        A m = (A)cu_load_dyn(mean, stat_dt, row), rs = (A)cu_load_dyn(rstd, stat_dt, row);
        A mg = 0, mgx = 0;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A gv = (A)cu_to_f(g[j]) * (w ? (A)cu_to_f(w[j]) : (A)1);
            mg += gv;
            mgx += gv * ((A)cu_to_f(xr[j]) - m) * rs;
        }
        mg = rsum<WARP>(mg, sh) / (A)C;
        mgx = rsum<WARP>(mgx, sh) / (A)C;
        for (int64_t j = rw.lane; j < C; j += rw.nthr) {
            A gv = (A)cu_to_f(g[j]) * (w ? (A)cu_to_f(w[j]) : (A)1);
            A v = ((A)cu_to_f(xr[j]) - m) * rs;
            gx[row * C + j] = cu_cast<T>(rs * (gv - mg - v * mgx));
        }
    }
}

extern "C" fe_status fe_cuda_layernorm(fe_tensor *y, fe_tensor *mean, fe_tensor *rstd,
                                       const fe_tensor *x, const fe_tensor *w, const fe_tensor *b,
                                       double eps) {
    cu_dev *d = cu_of(y);
    if (!d) return fe_last_status();
    const fe_tensor *ts[3] = {y, w, b};
    if (same_dtype("layernorm", x->dtype, 3, ts)) return fe_last_status();
    if (mean->dtype != rstd->dtype)
        return fe_set_error(FE_ERR_DTYPE, "layernorm (cuda): mean and rstd dtypes differ");
    int64_t R = rows_of(x), C = cols_of(x);
    if (R == 0) return FE_OK;
    CU_FLOAT_DISPATCH(x->dtype, "layernorm", {
        ROW_LAUNCH(k_layernorm, d, R, C, (T *)fe__ptr(y), fe__ptr(mean), fe__ptr(rstd), rstd->dtype,
                   (const T *)fe__ptr(x), w ? (const T *)fe__ptr(w) : (const T *)NULL,
                   b ? (const T *)fe__ptr(b) : (const T *)NULL, R, C, eps);
    })
    return cu_launched("layernorm kernel");
}

extern "C" fe_status fe_cuda_layernorm_backward(fe_tensor *gx, fe_tensor *gw, fe_tensor *gb,
                                                const fe_tensor *gy, const fe_tensor *x,
                                                const fe_tensor *w, const fe_tensor *mean,
                                                const fe_tensor *rstd) {
    cu_dev *d = cu_of(x);
    if (!d) return fe_last_status();
    const fe_tensor *ts[5] = {gx, gw, gb, gy, w};
    if (same_dtype("layernorm backward", x->dtype, 5, ts)) return fe_last_status();
    if (mean->dtype != rstd->dtype)
        return fe_set_error(FE_ERR_DTYPE, "layernorm backward (cuda): mean and rstd dtypes differ");
    int64_t R = rows_of(x), C = cols_of(x);
    fe_status st = FE_OK;
    CU_FLOAT_DISPATCH(x->dtype, "layernorm backward", {
        if (gx && R > 0) {
            ROW_LAUNCH(k_layernorm_bwd, d, R, C, (T *)fe__ptr(gx), (const T *)fe__ptr(gy),
                       (const T *)fe__ptr(x), w ? (const T *)fe__ptr(w) : (const T *)NULL,
                       fe__ptr(mean), fe__ptr(rstd), rstd->dtype, R, C);
            st = cu_launched("layernorm backward kernel");
        }
        if (!st && (gw || gb)) st = colsum<T, COL_LN_W>(d, gw, gb, gy, x, mean, rstd);
    })
    return st;
}

/* ---- RoPE
 * -------------------------------------------------------------------------------------------------
 */

/* One thread per (row, i < half) pair, everything in f64: for f64 tensors or f64
 * frequencies (the f32-angle case is k_rope_f32 below). */
template <typename T>
__global__ void k_rope_f64(T *out, const T *x, const void *inv, int inv_dt, int64_t R, int64_t D,
                           int64_t T_len, int64_t inner, long long pos0, int sign) {
    int64_t half = D / 2, n = R * half, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += step) {
        int64_t row = e / half, i = e - row * half;
        long long pos = pos0 + (row / inner) % T_len;
        const T *xr = x + row * D;
        T *o = out + row * D;
        double ang = inv_dt == FE_F32
                         ? (double)__fmul_rn(__ll2float_rn(pos), ((const float *)inv)[i])
                         : __dmul_rn((double)pos, cu_load_dyn(inv, inv_dt, i));
        double s, c;
        sincos(ang, &s, &c);
        s *= (double)sign;
        double a = cu_to_f(xr[i]), b = cu_to_f(xr[i + half]);
        o[i] = cu_cast<T>(a * c - b * s);
        o[i + half] = cu_cast<T>(b * c + a * s);
    }
}

/* The f32-angle case (inv_freq f32, x not f64: the angle float(pos) * inv_freq[i] and
 * its sine and cosine in f32, as the CPU computes them), one thread per (position row
 * group, i < half): the angle is computed once and applied to all `inner` rows that
 * share the position (the heads of a (B, T, H, D) tensor; inner is 1 when the sequence
 * dim is the second to last), so the transcendental work is divided by the heads. */
template <typename T>
__global__ void k_rope_f32(T *out, const T *x, const float *inv, int64_t n_outer, int64_t D,
                              int64_t T_len, int64_t inner, long long pos0, float sign) {
    int64_t half = D / 2, n = n_outer * half, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += step) {
        int64_t o = e / half, i = e - o * half;
        long long pos = pos0 + o % T_len;
        float ang = __fmul_rn(__ll2float_rn(pos), inv[i]), sn, cs;
        sincosf(ang, &sn, &cs);
        sn *= sign;
        const T *xr = x + o * inner * D + i;
        T *orow = out + o * inner * D + i;
#pragma unroll 4
        for (int64_t h = 0; h < inner; h++) {
            float a = cu_to_f(xr[h * D]), b = cu_to_f(xr[h * D + half]);
            orow[h * D] = cu_cast<T>(a * cs - b * sn);
            orow[h * D + half] = cu_cast<T>(b * cs + a * sn);
        }
    }
}

extern "C" fe_status fe_cuda_rope(fe_tensor *out, const fe_tensor *x, const fe_tensor *inv_freq,
                                  int seq_dim, int64_t pos0, int sign) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    const fe_tensor *ts[1] = {out};
    if (same_dtype("rope", x->dtype, 1, ts)) return fe_last_status();
    if (!fe_dtype_is_float(inv_freq->dtype) || !fe_is_contiguous(inv_freq))
        return fe_set_error(FE_ERR_DTYPE,
                            "rope (cuda): frequencies must be a contiguous float tensor");
    int64_t R = rows_of(x), D = cols_of(x), Tl = x->shape[seq_dim], inner = 1;
    for (int k = seq_dim + 1; k < x->ndim - 1; k++)
        inner *= x->shape[k];
    if (R == 0 || D < 2 || Tl == 0) return FE_OK;
    bool f32a = inv_freq->dtype == FE_F32 && x->dtype != FE_F64;
    unsigned nb = cu_blocks(d, (f32a ? R / inner : R) * (D / 2), 256);
    CU_FLOAT_DISPATCH(x->dtype, "rope", {
        if (f32a)
            k_rope_f32<T><<<nb, 256, 0, d->stream>>>(
                (T *)fe__ptr(out), (const T *)fe__ptr(x), (const float *)fe__ptr(inv_freq),
                R / inner, D, Tl, inner, (long long)pos0, (float)sign);
        else
            k_rope_f64<T><<<nb, 256, 0, d->stream>>>((T *)fe__ptr(out), (const T *)fe__ptr(x),
                                                     fe__ptr(inv_freq), inv_freq->dtype, R, D, Tl,
                                                     inner, (long long)pos0, sign);
    })
    return cu_launched("rope kernel");
}

/* ---- embedding
 * ---------------------------------------------------------------------------------------------- */

__device__ __forceinline__ long long index_at(const void *idx, bool i64, int64_t i) {
    return i64 ? ((const long long *)idx)[i] : (long long)((const int32_t *)idx)[i];
}

/* out row i = w row idx[i], moved in words of W bytes; rows of bad indices are zeroed
 * and the first bad index is recorded for the next synchronisation to report. */
template <typename W>
__global__ void k_embedding(W *out, const W *w, const void *idx, bool i64, int64_t n, int64_t V,
                            int64_t rw, unsigned long long *err) {
    int64_t total = n * rw, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += step) {
        int64_t i = e / rw, j = e - i * rw;
        long long k = index_at(idx, i64, i);
        if (k < 0 || k >= V) {
            W z;
            memset(&z, 0, sizeof z);
            out[e] = z;
            if (j == 0) cu_flag_error(err, CU_ERR_EMBEDDING_INDEX, k, i, V);
        } else {
            out[e] = w[k * rw + j];
        }
    }
}

extern "C" fe_status fe_cuda_embedding(fe_tensor *out, const fe_tensor *w, const fe_tensor *idx) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    if (idx->dtype != FE_I32 && idx->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE, "embedding (cuda): indices must be i32 or i64");
    if (out->dtype != w->dtype)
        return fe_set_error(FE_ERR_DTYPE, "embedding (cuda): output and weight dtypes differ");
    int64_t n = fe_numel(idx), V = w->shape[0], C = w->shape[1];
    size_t rb = (size_t)C * fe_dtype_size(w->dtype);
    if (n == 0 || rb == 0) return FE_OK;
    void *po = fe__ptr(out);
    const void *pw = fe__ptr(w);
    bool i64 = idx->dtype == FE_I64;
    uintptr_t al = (uintptr_t)po | (uintptr_t)pw | (uintptr_t)rb;
    d->check_pending = true;
#define EMB_LAUNCH(W)                                                                              \
    k_embedding<W><<<cu_blocks(d, n *(int64_t)(rb / sizeof(W)), 256), 256, 0, d->stream>>>(        \
        (W *)po, (const W *)pw, fe__ptr(idx), i64, n, V, (int64_t)(rb / sizeof(W)), d->err)
    if (!(al & 15))
        EMB_LAUNCH(uint4);
    else if (!(al & 7))
        EMB_LAUNCH(unsigned long long);
    else if (!(al & 3))
        EMB_LAUNCH(uint32_t);
    else if (!(al & 1))
        EMB_LAUNCH(uint16_t);
    else
        EMB_LAUNCH(uint8_t);
#undef EMB_LAUNCH
    return cu_launched("embedding kernel");
}

/* ---- embedding backward: deterministic, without float atomics ----------------------------------
 * gw[v] = the sum of gout rows i with idx[i] == v (zeros where there is none; indices out of range
 * add nothing: the forward reported them). Two kernels, no memsets:
 * 1. k_emb_sort: a counting sort of the positions by index. Block b owns the vocabulary slice
 *    [b S, b S + S) and reads every index. The first pass counts its rows' indices, warp by warp
 *    (warp w reads positions [w L, w L + L) in order and keeps its own counts, which one lane at
 *    a time updates: no atomics), lists the first ES_LIST positions of the slice it meets, and
 *    counts the valid indices below the slice: that is where the slice starts in the sorted list.
 *    A scan gives start[v] (start[V] = the number of valid indices) and each warp's first place
 *    for each row, and the second pass puts every position at its place, from the warp's list
 *    (or, where that overflowed, reading the warp's indices again): ent[] lists the positions row
 *    by row, each row's in increasing order, each entry as (position, row, the row's first place,
 *    its end) so that step 2 needs one load per entry. Every place follows from the counts
 *    alone, so the order is the same on every run. The sort writes nothing of gw: it is on the
 *    critical path (step 2 waits for all of it), so it is kept short.
 * 2. k_emb_rows (programmatic dependent launch: it launches while the sort runs): block q < nq
 *    takes the sorted entries [q H, q H + H). A row with at most H entries is summed whole by the
 *    block in which it begins (so a block reads at most 2 H entries) and written once. A longer
 *    ("hot") row is cut at the block boundaries: each block writes the f32 sum of its piece to
 *    part[2q + slot] (slot 0: the piece that starts the block, slot 1: one that starts later),
 *    counts the piece on ticket[v] (zeroed by the sort), and the block that brings the count to
 *    the row's number of pieces adds the pieces in order of q and writes the row. So a row hit
 *    thousands of times is spread over many blocks, and nothing depends on which block came last.
 *    Every block (there may be more than nq, for the zeros alone) also writes zeros to the rows
 *    no index hits (start[v] == start[v + 1]), most of gw's bytes: the 32-row group g is block
 *    g % G's (G blocks), each of its zero rows one warp's. So these stores overlap with the sums
 *    and are spread over the blocks wherever the hits fall.
 * Sums are in f32 (f64 for f64) with one rounding; within a piece, in position order. Rows move
 * in VN-element pieces: 16-byte vectors when C * es is a multiple of 16 and the pointers are
 * 16-byte aligned, else single elements. */

#define ES_THREADS 1024 /* k_emb_sort: 32 warps */
#define ES_WARPS (ES_THREADS / 32)
#define ES_U 16           /* index loads in flight per lane: pass 1 */
#define ES_U2 8           /* pass 2, where it reads the indices again */
#define ES_LIST 64        /* positions of its slice a warp keeps for pass 2 */
#define ES_MAX_SLICE 1280 /* rows per slice: (32 + 2) x 1280 + 2 x 32 x 64 ints = 186 KB */
#define ER_THREADS 256    /* k_emb_rows */
#define ER_U 8            /* gout loads in flight per thread */

/* A piece of VN elements of T as loaded (VN > 1: one 16-byte vector), and as the compute type. */
template <typename T, int VN> struct emb_raw { typedef uint4 type; };
template <typename T> struct emb_raw<T, 1> { typedef T type; };
template <typename T, int VN>
__device__ __forceinline__ typename emb_raw<T, VN>::type emb_ld(const T *p) {
    if constexpr (VN == 1)
        return p[0];
    else
        return cu_ld16(p);
}
template <typename T, int VN, typename A>
__device__ __forceinline__ void emb_add(A *acc, const typename emb_raw<T, VN>::type &r) {
    if constexpr (VN == 1) {
        acc[0] += (A)cu_to_f(r);
    } else if constexpr (sizeof(T) == 8) {
        acc[0] += __hiloint2double((int)r.y, (int)r.x);
        acc[1] += __hiloint2double((int)r.w, (int)r.z);
    } else {
#pragma unroll
        for (int e = 0; e < VN; e++)
            acc[e] += cu_vget<T>(r, e);
    }
}
/* One 16-byte store (p 16-byte aligned). A plain uint4 store came out as four 4-byte stores in
 * these kernels, and the __stwb/__stcg intrinsics as "strong" stores; this is the ordinary one. */
__device__ __forceinline__ void emb_st16(void *p, uint4 v) {
#ifdef __CUDA_ARCH__
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
#else
    *(uint4 *)p = v; /* the CPU emulation (scripts/row_grads_emu.sh) */
#endif
}
__device__ __forceinline__ uint4 emb_bits(float a, float b, float c, float d) {
    return make_uint4(__float_as_uint(a), __float_as_uint(b), __float_as_uint(c), __float_as_uint(d));
}
__device__ __forceinline__ uint4 emb_bits(double a, double b) {
    unsigned long long x = (unsigned long long)__double_as_longlong(a),
                       y = (unsigned long long)__double_as_longlong(b);
    return make_uint4((unsigned)x, (unsigned)(x >> 32), (unsigned)y, (unsigned)(y >> 32));
}
template <typename T, int VN, typename A> __device__ __forceinline__ void emb_st(T *p, const A *f) {
    if constexpr (VN == 1) {
        p[0] = cu_cast<T>(f[0]);
    } else if constexpr (sizeof(T) == 8) {
        emb_st16(p, emb_bits(f[0], f[1]));
    } else {
        float g[VN];
#pragma unroll
        for (int e = 0; e < VN; e++)
            g[e] = f[e];
        emb_st16(p, cu_vpack<T>(g));
    }
}
template <typename T, int VN> __device__ __forceinline__ void emb_zero(T *p) {
    if constexpr (VN == 1)
        p[0] = cu_cast<T>(0.f);
    else
        emb_st16(p, make_uint4(0, 0, 0, 0)); /* +0 in every float dtype */
}
/* VN compute-type values (the partial sum of a piece) to p, 16 bytes at a time where VN allows. */
template <int VN, typename A> __device__ __forceinline__ void emb_st_acc(A *p, const A *f) {
    if constexpr (VN * sizeof(A) % 16 == 0 && sizeof(A) == 4) {
#pragma unroll
        for (int i = 0; i < VN; i += 4)
            emb_st16(p + i, emb_bits(f[i], f[i + 1], f[i + 2], f[i + 3]));
    } else if constexpr (VN * sizeof(A) % 16 == 0) {
#pragma unroll
        for (int i = 0; i < VN; i += 2)
            emb_st16(p + i, emb_bits(f[i], f[i + 1]));
    } else {
#pragma unroll
        for (int i = 0; i < VN; i++)
            p[i] = f[i];
    }
}

/* key[u] = idx[p] for the positions p = b + 32 u + lane (u < U) below p1, else -1; an index out
 * of [0, V) may stay as it is (i32: the tests of its users leave it out of every slice) or become
 * -1 (i64). Every load is issued before any is looked at (checking each as it came would keep
 * only a few in flight). */
template <int U, typename I>
__device__ __forceinline__ void emb_keys_of(int *key, const I *idx, int b, int p1, int V) {
    int lane = threadIdx.x & 31;
    I raw[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        int p = b + u * 32 + lane;
        raw[u] = p < p1 ? idx[p] : (I)-1;
    }
#pragma unroll
    for (int u = 0; u < U; u++)
        if constexpr (sizeof(I) == 4)
            key[u] = raw[u];
        else
            key[u] = raw[u] >= 0 && raw[u] < V ? (int)raw[u] : -1;
}
template <int U>
__device__ __forceinline__ void emb_keys(int *key, const void *idx, bool i64, int b, int p1, int V) {
    if (i64)
        emb_keys_of<U>(key, (const long long *)idx, b, p1, V);
    else
        emb_keys_of<U>(key, (const int32_t *)idx, b, p1, V);
}

/* Exclusive prefix sums of a[0..m) in place (a in shared memory); returns the total. Every
 * thread of the block calls it; wsum holds 32 ints. */
static __device__ int emb_block_scan(int *a, int m, int *wsum) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int per = (m + blockDim.x - 1) / blockDim.x, lo = threadIdx.x * per;
    int hi = lo + per < m ? lo + per : m, s = 0;
    for (int i = lo; i < hi; i++)
        s += a[i];
    int incl = s; /* inclusive sum over the warp's threads */
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (lane == 31) wsum[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int v = lane < nw ? wsum[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, v, o);
            if (lane >= o) v += t;
        }
        wsum[lane] = v; /* inclusive over warps */
    }
    __syncthreads();
    int run = incl - s + (warp ? wsum[warp - 1] : 0), total = wsum[nw - 1];
    for (int i = lo; i < hi; i++) {
        int t = a[i];
        a[i] = run;
        run += t;
    }
    __syncthreads();
    return total;
}

/* The lanes whose k equals this lane's, where `has` (the same in every lane) holds the lanes with
 * a key: __match_any_sync, which is slow, only where two or more lanes have one (rare: a slice is a
 * small part of V). */
__device__ __forceinline__ unsigned emb_match(unsigned has, int k) {
    return has & (has - 1) ? __match_any_sync(0xffffffffu, k) : has;
}

/* What the sort asks L2 for while DRAM has nothing else to do (FE_EMB_PREFETCH):
 * the gout rows (bytes each, a multiple of 16) of the first x entries of every window of h
 * entries, the ones k_emb_rows reads first. rows NULL: nothing. */
struct emb_pf {
    const char *rows;
    unsigned bytes;
    int h, x;
};
__device__ __forceinline__ void emb_prefetch_row(const emb_pf &pf, int place, int p) {
#ifdef __CUDA_ARCH__
    if (pf.rows && place % pf.h < pf.x) {
        const char *row = pf.rows + (size_t)p * pf.bytes;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(row), "r"(pf.bytes)
                     : "memory");
    }
#else
    (void)pf, (void)place, (void)p;
#endif
}

/* Pass 2 of step 1 for one position p of each lane with key k, the lanes' positions increasing
 * with the lane: the position to its place if k is a row of the slice [v0, v0 + ns), in the
 * order pass 1 counted them; cw: the warp's next places. */
__device__ __forceinline__ void emb_place(int k, int p, int v0, int ns, int *cw, const int *first,
                                          const int *per, int4 *ent, const emb_pf &pf) {
    unsigned lt = (1u << (threadIdx.x & 31)) - 1;
    bool in = k >= v0 && k < v0 + ns;
    unsigned has = __ballot_sync(0xffffffffu, in);
    if (!has) return; /* uniform */
    unsigned m = emb_match(has, in ? k : -1);
    int *c = &cw[in ? k - v0 : 0];
    if (in) {
        int r = k - v0, place = *c + __popc(m & lt);
        emb_st16(&ent[place], make_uint4(p, k, first[r], first[r] + per[r]));
        emb_prefetch_row(pf, place, p);
    }
    __syncwarp(); /* every lane has read *c before the lowest lane moves it on */
    if (in && !(m & lt)) *c += __popc(m);
    __syncwarp();
}

/* Step 1 (see above), S a multiple of 32. Dynamic shared memory (emb_sort_smem): cnt[ES_WARPS][S],
 * per[S], first[S], lpos[ES_WARPS][ES_LIST] and lkey[ES_WARPS][ES_LIST] ints. (Two blocks of 16
 * warps an SM instead measured the same or 1% slower, H200.) */
__global__ void __launch_bounds__(ES_THREADS, 1)
    k_emb_sort(const void *__restrict__ idx, bool i64, int n, int V, int S, int *__restrict__ start,
               unsigned *__restrict__ ticket, int4 *__restrict__ ent, emb_pf pf) {
    extern __shared__ int es_sh[];
    __shared__ int wsum[32];
    /* cnt[w * S + r]: warp w's count of row v0 + r, later its next place; per[r]: the row's
     * count; first[r]: its first place; lpos, lkey: the warp's first ES_LIST positions of the
     * slice and their rows */
    int *cnt = es_sh, *per = es_sh + ES_WARPS * S, *first = per + S;
    nn_launch_next(); /* k_emb_rows may start launching; it waits for this kernel to finish */
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int *lpos = first + S + warp * ES_LIST, *lkey = first + S + (ES_WARPS + warp) * ES_LIST;
    unsigned lt = (1u << lane) - 1; /* lanes below this one */
    int v0 = blockIdx.x * S, ns = V - v0 < S ? V - v0 : S;
    int L = ((n + ES_WARPS - 1) / ES_WARPS + 31) & ~31; /* positions per warp */
    int p0 = warp * L, p1 = p0 + L < n ? p0 + L : n;
    for (int i = threadIdx.x; i < ES_WARPS * S / 4; i += blockDim.x) /* S: a multiple of 32 */
        ((int4 *)cnt)[i] = make_int4(0, 0, 0, 0);
    __syncthreads();

    /* pass 1: counts. Lanes holding the same row meet in __match_any_sync; the lowest adds. The
     * positions of the slice also go to the warp's list while it has room. */
    int below = 0, met = 0; /* met: positions of the slice the warp has seen */
    for (int b = p0; b < p1; b += 32 * ES_U) {
        int key[ES_U];
        emb_keys<ES_U>(key, idx, i64, b, p1, V);
#pragma unroll
        for (int u = 0; u < ES_U; u++) {
            int k = key[u];
            bool in = k >= v0 && k < v0 + ns;
            below += k >= 0 && k < v0;
            unsigned has = __ballot_sync(0xffffffffu, in);
            if (has) {
                unsigned m = emb_match(has, in ? k : -1);
                int at = met + __popc(has & lt);
                if (in && at < ES_LIST) lpos[at] = b + u * 32 + lane, lkey[at] = k;
                met += __popc(has);
                if (in && !(m & lt)) cnt[warp * S + k - v0] += __popc(m);
                __syncwarp(); /* the next lowest lane of a row reads what this one wrote */
            }
        }
    }
    int base = cu_block_sum(below, wsum); /* valid indices below the slice (barriers inside) */

    /* the slice's rows: count, then first places (start) by a scan over the rows */
    for (int r = threadIdx.x; r < ns; r += blockDim.x) {
        int t = 0;
        for (int w = 0; w < ES_WARPS; w++)
            t += cnt[w * S + r];
        per[r] = t;
    }
    __syncthreads();
    int total = emb_block_scan(per, ns, wsum);
    for (int r = threadIdx.x; r < ns; r += blockDim.x) {
        int at = base + per[r], run = at;
        start[v0 + r] = first[r] = at;
        ticket[v0 + r] = 0;
        for (int w = 0; w < ES_WARPS; w++) { /* warp w's first place for row r */
            int c = cnt[w * S + r];
            cnt[w * S + r] = run;
            run += c;
        }
        per[r] = run - at; /* the row's count again */
    }
    if (v0 + ns == V) { /* the last slice: M, and the entries past it (indices out of range) */
        if (threadIdx.x == 0) start[V] = base + total;
        for (int i = base + total + threadIdx.x; i < n; i += blockDim.x)
            emb_st16(&ent[i], make_uint4(0, 0, 0, 0));
    }
    __syncthreads();

    /* pass 2: every position of the slice to its place, from the warp's list where it holds them
     * all (the usual case: a slice is a small part of V), else from the indices again */
    int *cw = cnt + warp * S;
    if (met <= ES_LIST) {
        for (int i = 0; i < met; i += 32) {
            int e = i + lane;
            emb_place(e < met ? lkey[e] : -1, e < met ? lpos[e] : 0, v0, ns, cw, first, per, ent,
                      pf);
        }
    } else {
        for (int b = p0; b < p1; b += 32 * ES_U2) {
            int key[ES_U2];
            emb_keys<ES_U2>(key, idx, i64, b, p1, V);
#pragma unroll
            for (int u = 0; u < ES_U2; u++)
                emb_place(key[u], b + u * 32 + lane, v0, ns, cw, first, per, ent, pf);
        }
    }
}

/* Dynamic shared memory of k_emb_sort for slices of S rows. */
static size_t emb_sort_smem(int64_t S) {
    return ((size_t)(ES_WARPS + 2) * (size_t)S + 2 * ES_WARPS * ES_LIST) * sizeof(int);
}

/* Step 2's zeros (see above): the rows of this block's 32-row groups that no index hits. Every
 * warp reads the group's start[] (one load a lane) and takes the rows g 32 + w, g 32 + w + nw, ...
 * Called by every thread of the block; warp-uniform. */
template <typename T, int VN>
__device__ __forceinline__ void emb_zero_rows(T *__restrict__ gw, const int *__restrict__ start,
                                              int V, int64_t C) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int64_t nv = C / VN;
    for (int64_t g = blockIdx.x; g * 32 < V; g += gridDim.x) {
        int64_t v = g * 32 + lane;
        unsigned z = __ballot_sync(0xffffffffu, v < V && start[v] == start[v + 1]);
        for (int r = warp; r < 32; r += nw)
            if (z >> r & 1) {
                T *p = gw + (g * 32 + r) * C;
                for (int64_t j = lane; j < nv; j += 32)
                    emb_zero<T, VN>(p + j * VN);
            }
    }
}

/* Step 2 (see above): block q over the sorted entries [q H, q H + 2 H) (ent holds n entries, the
 * first M = start[V] of them sorted, the rest zeros; a block past them has none), and the zeros
 * of the 32-row groups q, q + G, ... Dynamic shared memory: pos, row and flag, 2 H ints each;
 * flag: 1 = last entry of a row or piece, 2 = hot piece, 4 = slot 1. ent and start, the sort's,
 * are read with coherent loads (see nn_wait_prev); gout may take the read-only path, as its
 * writer completed before the sort, an ordinary launch, began. */
template <typename T, int VN>
__global__ void __launch_bounds__(ER_THREADS)
    k_emb_rows(T *__restrict__ gw, const T *__restrict__ gout, const int4 *ent, const int *start,
               unsigned *ticket, typename cu_acc<T>::type *part,
               int n, int V, int64_t C, int H) {
    typedef typename cu_acc<T>::type A;
    typedef typename emb_raw<T, VN>::type Raw;
    extern __shared__ int er_sh[];
    __shared__ int hot_row[2], hot_lo[2], hot_hi[2], hot_last[2]; /* hot pieces by slot */
    nn_wait_prev();
    int *pos = er_sh, *row = er_sh + 2 * H, *flag = er_sh + 4 * H, s0 = blockIdx.x * H;
    int M = start[V]; /* in flight with the entries' loads: they do not depend on it */
    if (threadIdx.x < 2) hot_row[threadIdx.x] = -1;
    __syncthreads();
    for (int e = threadIdx.x; e < 2 * H; e += blockDim.x) { /* entries past M are zeros */
        int s = s0 + e;
        int4 en = s < n ? ent[s] : make_int4(0, 0, 0, 0);
        int p = en.x, k = en.y, lo = en.z, hi = en.w;
        bool hot = hi - lo > H;
        /* small rows: whole, in the block where they begin; hot rows: this block's piece */
        bool take = s < M && (hot ? s < s0 + H : lo >= s0 && lo < s0 + H);
        bool last = s == (hot && hi > s0 + H ? s0 + H : hi) - 1;
        int slot = hot && lo > s0;
        pos[e] = p;
        row[e] = take ? k : -1;
        flag[e] = last | hot << 1 | slot << 2;
        if (take && hot && last) hot_row[slot] = k, hot_lo[slot] = lo, hot_hi[slot] = hi;
    }
    int W = M - s0 < 2 * H ? M - s0 : 2 * H; /* entries of the window (none when s0 >= M) */
    __syncthreads();
    int64_t nv = C / VN, q = blockIdx.x;
    for (int64_t j = threadIdx.x; j < nv; j += blockDim.x) {
        A acc[VN];
#pragma unroll
        for (int i = 0; i < VN; i++)
            acc[i] = 0;
        for (int e0 = 0; e0 < W; e0 += ER_U) {
            Raw f[ER_U];
#pragma unroll
            for (int u = 0; u < ER_U; u++) /* ER_U loads in flight */
                if (e0 + u < W && row[e0 + u] >= 0)
                    f[u] = emb_ld<T, VN>(gout + (int64_t)pos[e0 + u] * C + j * VN);
#pragma unroll
            for (int u = 0; u < ER_U; u++) {
                int e = e0 + u;
                if (e >= W || row[e] < 0) continue;
                emb_add<T, VN>(acc, f[u]);
                if (!(flag[e] & 1)) continue;
                if (flag[e] & 2) {
                    emb_st_acc<VN>(part + (2 * q + (flag[e] >> 2)) * C + j * VN, acc);
                } else {
                    emb_st<T, VN>(gw + (int64_t)row[e] * C + j * VN, acc);
                }
#pragma unroll
                for (int i = 0; i < VN; i++)
                    acc[i] = 0;
            }
        }
    }
    emb_zero_rows<T, VN>(gw, start, V, C);
    if (hot_row[0] < 0 && hot_row[1] < 0) return; /* uniform */
    /* count this block's pieces; the block that completes a row adds its pieces in order */
    __threadfence(); /* the partial sums are visible before the count says so */
    __syncthreads();
    if (threadIdx.x == 0)
        for (int sl = 0; sl < 2; sl++) {
            int k = hot_row[sl], lo = hot_lo[sl], hi = hot_hi[sl];
            if (k < 0) continue;
            unsigned pieces = (unsigned)((hi - 1) / H - lo / H + 1);
            hot_last[sl] = atomicAdd(&ticket[k], 1u) + 1 == pieces;
        }
    __syncthreads();
    for (int sl = 0; sl < 2; sl++) {
        int k = hot_row[sl];
        if (k < 0 || !hot_last[sl]) continue;
        int lo = hot_lo[sl], hi = hot_hi[sl], q0 = lo / H, q1 = (hi - 1) / H;
        __threadfence();
        for (int64_t j = threadIdx.x; j < nv; j += blockDim.x) {
            A acc[VN];
#pragma unroll
            for (int i = 0; i < VN; i++)
                acc[i] = 0;
#pragma unroll 4
            for (int qq = q0; qq <= q1; qq++) {
                /* the piece of row k in block qq is slot 1 only where the row starts inside it */
                const A *src = part + (2 * (int64_t)qq + (qq == q0 && lo != qq * H)) * C + j * VN;
#pragma unroll
                for (int i = 0; i < VN; i++)
                    acc[i] += __ldcg(src + i); /* written by other blocks: read from L2 */
            }
            emb_st<T, VN>(gw + (int64_t)k * C + j * VN, acc);
        }
    }
}

static size_t emb_align(size_t b) { return (b + 255) & ~(size_t)255; }

/* The entries of a window whose gout rows the sort asks L2 for: FE_EMB_PREFETCH (default 4; 0
 * switches it off), read once (a count, where cu_env_flag reads on/off switches), so that a call
 * does not look it up again. 4 measured 0.5-1.5 us faster than 0 on a 62 us backward, 8 and
 * 16 less so (H200). */
static int emb_prefetch_entries(void) {
    static int cache = -1;
    int v = __atomic_load_n(&cache, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv("FE_EMB_PREFETCH");
        v = !e ? 4 : atoi(e) > 0 ? atoi(e) : 0;
        __atomic_store_n(&cache, v, __ATOMIC_RELAXED);
    }
    return v;
}

template <typename T, int VN>
static fe_status emb_bwd_run(cu_dev *d, fe_tensor *gw, const fe_tensor *gout, const fe_tensor *idx,
                             int64_t n, int64_t V, int64_t C) {
    typedef typename cu_acc<T>::type A;
    /* slices: one block per SM where the counters fit */
    int64_t S = (V + d->sm_count - 1) / d->sm_count;
    S = (S + 31) / 32 * 32;
    if (S > ES_MAX_SLICE) S = ES_MAX_SLICE;
    int64_t nslice = (V + S - 1) / S;
    size_t es_smem = emb_sort_smem(S);
    /* H entries per block of k_emb_rows: 32 (blocks enough to spread the sums evenly over the
     * multiprocessors), more for long index lists so that the partial sums (two rows of C per
     * block) stay a small fraction of gout */
    int64_t H = 32;
    while ((n + H - 1) / H > 2048 && H < 1024)
        H *= 2;
    int64_t nq = (n + H - 1) / H;
    /* blocks of k_emb_rows: nq, or more where the zeros need them (four a multiprocessor, as long
     * as there are 32-row groups for them) */
    int64_t groups = (V + 31) / 32, G = 4 * (int64_t)d->sm_count;
    if (G > groups) G = groups;
    if (G < nq) G = nq;
    size_t o_start = 0, o_ticket = o_start + emb_align((size_t)(V + 1) * 4),
           o_ent = o_ticket + emb_align((size_t)V * 4),
           o_part = o_ent + emb_align((size_t)(n > 0 ? n : 1) * sizeof(int4)),
           bytes = o_part + emb_align((size_t)(nq > 0 ? 2 * nq : 1) * (size_t)C * sizeof(A));
    char *buf = NULL;
    if (cu_scratch(d, bytes, (void **)&buf)) return fe_last_status();
    int *start = (int *)(buf + o_start);
    int4 *ent = (int4 *)(buf + o_ent);
    unsigned *ticket = (unsigned *)(buf + o_ticket);
    A *part = (A *)(buf + o_part);
    fe_status st = FE_OK;
    if (es_smem > 48 * 1024)
        st = cu_check(cudaFuncSetAttribute(k_emb_sort, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)es_smem),
                      "cudaFuncSetAttribute");
    /* the sort asks L2 for the gout rows of the first entries of every window (16-byte rows) */
    emb_pf pf = {NULL, 0, (int)H, emb_prefetch_entries()};
    if (VN > 1 && pf.x > 0)
        pf.rows = (const char *)fe__ptr(gout), pf.bytes = (unsigned)(C * sizeof(T));
    if (!st) {
        k_emb_sort<<<(unsigned)nslice, ES_THREADS, es_smem, d->stream>>>(
            fe__ptr(idx), idx->dtype == FE_I64, (int)n, (int)V, (int)S, start, ticket, ent, pf);
        st = cu_launched("embedding backward kernel (sort)");
    }
    if (!st)
        st = nn_launch_dep(d, "embedding backward kernel (rows)", k_emb_rows<T, VN>, (unsigned)G,
                           ER_THREADS, (size_t)6 * (size_t)H * sizeof(int), (T *)fe__ptr(gw),
                           (const T *)fe__ptr(gout), (const int4 *)ent, (const int *)start, ticket,
                           part, (int)n, (int)V, C, (int)H);
    cu_scratch_free(d, buf, bytes);
    return st;
}

extern "C" fe_status fe_cuda_embedding_backward(fe_tensor *gw, const fe_tensor *gout,
                                                const fe_tensor *idx) {
    cu_dev *d = cu_of(gw);
    if (!d) return fe_last_status();
    if (idx->dtype != FE_I32 && idx->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE, "embedding backward (cuda): indices must be i32 or i64");
    const fe_tensor *ts[1] = {gout};
    if (same_dtype("embedding backward", gw->dtype, 1, ts)) return fe_last_status();
    int64_t n = fe_numel(idx), V = gw->shape[0], C = gw->shape[1];
    if (V == 0 || C == 0) return FE_OK;
    if (n > INT32_MAX / 2 || V >= INT32_MAX)
        return fe_set_error(FE_ERR_ARG,
                            "embedding backward (cuda): %lld indices into %lld rows is too many",
                            (long long)n, (long long)V);
    size_t es = fe_dtype_size(gw->dtype);
    bool vec = ((size_t)C * es) % 16 == 0 &&
               !(((uintptr_t)fe__ptr(gw) | (uintptr_t)fe__ptr(gout)) & 15u);
    CU_FLOAT_DISPATCH(gw->dtype, "embedding backward", {
        if (vec) return emb_bwd_run<T, cu_vn<T>::n>(d, gw, gout, idx, n, V, C);
        return emb_bwd_run<T, 1>(d, gw, gout, idx, n, V, C);
    })
    return FE_OK;
}

/* ---- cross-entropy
 * -----------------------------------------------------------------------------------------------
 */

/* row_loss[row] = logsumexp(logits[row]) - logits[row][t], 0 on ignored rows, NaN (and a
 * recorded error) on targets out of range. */
template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_ce_rows(double *row_loss, const T *logits, const void *tg, bool i64, int64_t R, int64_t V,
              long long ignore, unsigned long long *err) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    for (int64_t row = rw.first; row < R; row += rw.step) {
        long long t = index_at(tg, i64, row);
        if (t == ignore) {
            if (rw.lane == 0) row_loss[row] = 0.0;
            continue;
        }
        if (t < 0 || t >= V) {
            if (rw.lane == 0) {
                row_loss[row] = __longlong_as_double(0x7ff8000000000000ll);
                cu_flag_error(err, CU_ERR_CE_TARGET, t, row, V);
            }
            continue;
        }
        const T *x = logits + row * V;
        A m, s;
        row_max_sumexp<WARP, T, A>(x, V, rw, sh, &m, &s);
        if (rw.lane == 0) row_loss[row] = (double)(m + cu_log(s)) - (double)cu_to_f(x[t]);
    }
}

/* ---- cross-entropy over rows read in 16-byte vectors, one block per row ---- */

#define CE_THREADS 512
#define CE_U 4 /* vectors in flight per thread */
#define CE_LOG2E 1.4426950408889634f

/* Maximum and sum of exp(x - max) of one row of nv vectors, online over the block's threads
 * (the row read once), reduced over the block; every thread gets both. -inf elements add
 * nothing; a NaN makes the sum NaN. exp is taken as exp2 of a log2(e)-scaled argument. */
template <typename T>
__device__ __forceinline__ void ce_row_stats(const T *__restrict__ x, int64_t nv, float *sh,
                                             float *m_out, float *s_out) {
    constexpr int N = cu_vn<T>::n;
    float m = -INFINITY, s = 0.f;
    for (int64_t j = threadIdx.x; j < nv; j += (int64_t)blockDim.x * CE_U) {
        uint4 u[CE_U];
#pragma unroll
        for (int k = 0; k < CE_U; k++) {
            int64_t q = j + (int64_t)k * blockDim.x;
            if (q < nv) u[k] = cu_ld16(x + q * N);
        }
#pragma unroll
        for (int k = 0; k < CE_U; k++) {
            int64_t q = j + (int64_t)k * blockDim.x;
            if (q < nv) {
                float vm = cu_vget<T>(u[k], 0);
#pragma unroll
                for (int e = 1; e < N; e++)
                    vm = fmaxf(vm, cu_vget<T>(u[k], e));
                if (vm > m) {
                    s *= exp2f((m - vm) * CE_LOG2E); /* 0 while m is -inf */
                    m = vm;
                }
                float m2 = m * CE_LOG2E;
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float v = cu_vget<T>(u[k], e);
                    if (v != -INFINITY) s += exp2f(fmaf(v, CE_LOG2E, -m2));
                }
            }
        }
    }
    float M = cu_block_max(m, sh);
    float part = m == -INFINITY ? 0.f : s * exp2f((m - M) * CE_LOG2E);
    *s_out = cu_block_sum(part, sh);
    *m_out = M;
}

template <typename T>
__global__ void __launch_bounds__(CE_THREADS)
    k_ce_bwd_vec(T *__restrict__ gl, const T *__restrict__ logits, const void *tg, bool i64,
                 int64_t R, int64_t V, long long ignore, const double *scale_p,
                 unsigned long long *err) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    int64_t nv = V / N;
    float scale = (float)scale_p[0];
    for (int64_t row = blockIdx.x; row < R; row += gridDim.x) {
        long long t = index_at(tg, i64, row);
        T *g = gl + row * V;
        if (t == ignore || t < 0 || t >= V) {
            for (int64_t j = threadIdx.x; j < nv; j += blockDim.x)
                cu_st16(g + j * N, make_uint4(0, 0, 0, 0));
            if (t != ignore && threadIdx.x == 0) cu_flag_error(err, CU_ERR_CE_TARGET, t, row, V);
            continue;
        }
        const T *x = logits + row * V;
        float m, s;
        ce_row_stats<T>(x, nv, sh, &m, &s);
        float l2 = (m + logf(s)) * CE_LOG2E;
        for (int64_t j = threadIdx.x; j < nv; j += (int64_t)blockDim.x * CE_U) {
            uint4 u[CE_U];
#pragma unroll
            for (int k = 0; k < CE_U; k++) {
                int64_t q = j + (int64_t)k * blockDim.x;
                if (q < nv) u[k] = cu_ld16(x + q * N);
            }
#pragma unroll
            for (int k = 0; k < CE_U; k++) {
                int64_t q = j + (int64_t)k * blockDim.x;
                if (q < nv) {
                    float f[N];
#pragma unroll
                    for (int e = 0; e < N; e++) {
                        float p = exp2f(fmaf(cu_vget<T>(u[k], e), CE_LOG2E, -l2)) * scale;
                        f[e] = q * N + e == t ? p - scale : p;
                    }
                    cu_st16(g + q * N, cu_vpack<T>(f));
                }
            }
        }
    }
}

/* ---- cross-entropy, one warp per row (forward) and rows in registers (backward) ----
 * The forward streams each row once through one warp: no barriers, CEW_U 16-byte loads in flight
 * per lane and many rows per SM, so the loads of some rows always overlap the arithmetic and the
 * reductions of others. exp is the special-function unit's 2^x (ex2.approx.ftz: about 2 ulp,
 * terms below 2^-126 flushed to 0, which a sum >= 1 cannot see). */

#define CEW_THREADS 256
#define CEW_U 8

/* Fold one 16-byte vector into a running (maximum m, sum of 2^((x - m) log2 e) s). -inf
 * elements add nothing, NaN makes s NaN, +inf makes it NaN (as the generic kernels). */
template <typename T> __device__ __forceinline__ void ce_fold(const uint4 &u, float &m, float &s) {
    constexpr int N = cu_vn<T>::n;
    float vm = cu_vget<T>(u, 0);
#pragma unroll
    for (int e = 1; e < N; e++)
        vm = fmaxf(vm, cu_vget<T>(u, e));
    if (vm > m) {
        s *= fr_exp2((m - vm) * FR_LOG2E); /* 0 while m is -inf */
        m = vm;
    }
    if (m != -INFINITY) {
        float m2 = m * FR_LOG2E;
#pragma unroll
        for (int e = 0; e < N; e++)
            s += fr_exp2(fmaf(cu_vget<T>(u, e), FR_LOG2E, -m2));
    } else { /* only -inf and NaN so far: NaN must still show */
#pragma unroll
        for (int e = 0; e < N; e++) {
            float v = cu_vget<T>(u, e);
            if (v != v) s += v;
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(CEW_THREADS)
    k_ce_rows_warp(double *row_loss, const T *__restrict__ logits, const void *tg, bool i64,
                   int64_t R, int64_t V, long long ignore, unsigned long long *err) {
    constexpr int N = cu_vn<T>::n;
    int lane = threadIdx.x & 31, wpb = CEW_THREADS / 32;
    int64_t nv = V / N;
    for (int64_t row = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); row < R;
         row += (int64_t)gridDim.x * wpb) {
        long long t = index_at(tg, i64, row);
        if (t == ignore) {
            if (lane == 0) row_loss[row] = 0.0;
            continue;
        }
        if (t < 0 || t >= V) {
            if (lane == 0) {
                row_loss[row] = __longlong_as_double(0x7ff8000000000000ll);
                cu_flag_error(err, CU_ERR_CE_TARGET, t, row, V);
            }
            continue;
        }
        const T *x = logits + row * V;
        float m = -INFINITY, s = 0.f;
        for (int64_t j = lane; j < nv; j += 32 * CEW_U) {
            uint4 u[CEW_U];
#pragma unroll
            for (int k = 0; k < CEW_U; k++)
                if (j + 32 * k < nv) u[k] = __ldcs((const uint4 *)(x + (j + 32 * k) * N));
#pragma unroll
            for (int k = 0; k < CEW_U; k++)
                if (j + 32 * k < nv) ce_fold<T>(u[k], m, s);
        }
        float M = cu_warp_max(m);
        float part = m == -INFINITY ? 0.f : s * fr_exp2((m - M) * FR_LOG2E);
        float S = cu_warp_sum(part);
        if (lane == 0) row_loss[row] = (double)M + (double)logf(S) - (double)cu_to_f(x[t]);
    }
}

/* Backward with the row held in registers: a block of CEB_THREADS threads reads its row once
 * (up to CEB_NV vectors a thread), reduces the maximum, then the sum of exponentials, and writes
 * the gradient from the registers: one read and one write of the logits, where the two-pass
 * kernel reads each row twice (the second time from L2) with a barrier-bound pass in between. */
#define CEB_THREADS 512
#define CEB_NV 8
template <typename T>
__global__ void __launch_bounds__(CEB_THREADS, 2)
    k_ce_bwd_reg(T *__restrict__ gl, const T *__restrict__ logits, const void *tg, bool i64,
                 int64_t R, int64_t V, long long ignore, const double *scale_p,
                 unsigned long long *err) {
    constexpr int N = cu_vn<T>::n;
    __shared__ float sh[32];
    int nv = (int)(V / N);
    float scale = (float)scale_p[0];
    for (int64_t row = blockIdx.x; row < R; row += gridDim.x) {
        long long t = index_at(tg, i64, row);
        T *g = gl + row * V;
        if (t == ignore || t < 0 || t >= V) { /* uniform over the block */
#pragma unroll
            for (int k = 0; k < CEB_NV; k++) {
                int j = threadIdx.x + k * CEB_THREADS;
                if (j < nv) cu_st16(g + (int64_t)j * N, make_uint4(0, 0, 0, 0));
            }
            if (t != ignore && threadIdx.x == 0) cu_flag_error(err, CU_ERR_CE_TARGET, t, row, V);
            continue;
        }
        const T *x = logits + row * V;
        uint4 u[CEB_NV];
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < CEB_NV; k++) {
            int j = threadIdx.x + k * CEB_THREADS;
            if (j < nv) u[k] = __ldcs((const uint4 *)(x + (int64_t)j * N));
        }
#pragma unroll
        for (int k = 0; k < CEB_NV; k++) {
            int j = threadIdx.x + k * CEB_THREADS;
            if (j < nv) {
#pragma unroll
                for (int e = 0; e < N; e++)
                    m = fmaxf(m, cu_vget<T>(u[k], e));
            }
        }
        float M2 = cu_block_max(m, sh) * FR_LOG2E, s = 0.f;
#pragma unroll
        for (int k = 0; k < CEB_NV; k++) {
            int j = threadIdx.x + k * CEB_THREADS;
            if (j < nv) {
#pragma unroll
                for (int e = 0; e < N; e++)
                    s += fr_exp2(fmaf(cu_vget<T>(u[k], e), FR_LOG2E, -M2));
            }
        }
        float l2 = M2 + log2f(cu_block_sum(s, sh)); /* log-sum-exp, in units of log 2 */
        int tq = (int)(t / N), te = (int)(t % N);
#pragma unroll
        for (int k = 0; k < CEB_NV; k++) {
            int j = threadIdx.x + k * CEB_THREADS;
            if (j < nv) {
                float f[N];
#pragma unroll
                for (int e = 0; e < N; e++)
                    f[e] = fr_exp2(fmaf(cu_vget<T>(u[k], e), FR_LOG2E, -l2)) * scale;
                if (j == tq) {
#pragma unroll
                    for (int e = 0; e < N; e++)
                        if (e == te) f[e] -= scale;
                }
                cu_st16(g + (int64_t)j * N, cu_vpack<T>(f));
            }
        }
    }
}

/* Blocks for the one-block-per-row cross-entropy kernels. */
static unsigned ce_blocks(const cu_dev *d, int64_t R) {
    int64_t cap = (int64_t)d->sm_count * 32;
    return (unsigned)(R < cap ? (R > 0 ? R : 1) : cap);
}

/* Count of rows whose target is not `ignore` (one block). */
__device__ double ce_count(const void *tg, bool i64, int64_t R, long long ignore, double *sh) {
    double c = 0;
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
        c += index_at(tg, i64, r) != ignore;
    return cu_block_sum(c, sh);
}

/* loss = sum of row losses / count, summed in a fixed order (one block). */
__global__ void __launch_bounds__(1024)
    k_ce_final(void *loss, int loss_dt, const double *row_loss, const void *tg, bool i64, int64_t R,
               long long ignore) {
    __shared__ double sh[32];
    double s = 0;
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
        s += row_loss[r];
    s = cu_block_sum(s, sh);
    double c = ce_count(tg, i64, R, ignore, sh);
    if (threadIdx.x == 0) cu_store_dyn(loss, loss_dt, 0, c > 0 ? s / c : 0.0);
}

extern "C" fe_status fe_cuda_cross_entropy(fe_tensor *loss, const fe_tensor *logits,
                                           const fe_tensor *targets, int64_t ignore) {
    cu_dev *d = cu_of(loss);
    if (!d) return fe_last_status();
    if (targets->dtype != FE_I32 && targets->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE, "cross_entropy (cuda): targets must be i32 or i64");
    if (!fe_dtype_is_float(logits->dtype))
        return fe_set_error(FE_ERR_DTYPE, "cross_entropy (cuda): logits must be float");
    int64_t R = rows_of(logits), V = cols_of(logits);
    bool i64 = targets->dtype == FE_I64;
    double *rl = NULL;
    size_t bytes = (size_t)(R > 0 ? R : 1) * sizeof(double);
    if (cu_scratch(d, bytes, (void **)&rl)) return fe_last_status();
    fe_status st = FE_OK;
    d->check_pending = true;
    const void *pl[1] = {fe__ptr(logits)};
    if (R > 0 && fr_ok(V, fe_dtype_size(logits->dtype), pl, 1, 1 << 20)) {
        int64_t wpb = CEW_THREADS / 32, nb = (R + wpb - 1) / wpb, cap = (int64_t)d->sm_count * 64;
        FR_DISPATCH(logits->dtype, {
            k_ce_rows_warp<T><<<(unsigned)(nb < cap ? nb : cap), CEW_THREADS, 0, d->stream>>>(
                rl, (const T *)fe__ptr(logits), fe__ptr(targets), i64, R, V, (long long)ignore,
                d->err);
        })
        st = cu_launched("cross_entropy kernel");
    } else if (R > 0) {
        CU_FLOAT_DISPATCH(logits->dtype, "cross_entropy", {
            ROW_LAUNCH(k_ce_rows, d, R, V, rl, (const T *)fe__ptr(logits), fe__ptr(targets), i64, R,
                       V, (long long)ignore, d->err);
        })
        st = cu_launched("cross_entropy kernel");
    }
    if (!st) {
        k_ce_final<<<1, 1024, 0, d->stream>>>(fe__ptr(loss), loss->dtype, rl, fe__ptr(targets), i64,
                                              R, (long long)ignore);
        st = cu_launched("cross_entropy kernel (final)");
    }
    cu_scratch_free(d, rl, bytes);
    return st;
}

/* scale[0] = gloss[0] / count (0 when no row counts), on the device. */
__global__ void __launch_bounds__(1024)
    k_ce_scale(double *scale, const void *gloss, int gloss_dt, const void *tg, bool i64, int64_t R,
               long long ignore) {
    __shared__ double sh[32];
    double c = ce_count(tg, i64, R, ignore, sh);
    if (threadIdx.x == 0) scale[0] = c > 0 ? cu_load_dyn(gloss, gloss_dt, 0) / c : 0.0;
}

template <typename T, bool WARP>
__global__ void __launch_bounds__(1024)
    k_ce_bwd(T *gl, const T *logits, const void *tg, bool i64, int64_t R, int64_t V,
             long long ignore, const double *scale_p, unsigned long long *err) {
    typedef typename cu_acc<T>::type A;
    __shared__ A sh[32];
    rows_t<WARP> rw;
    A scale = (A)scale_p[0];
    for (int64_t row = rw.first; row < R; row += rw.step) {
        long long t = index_at(tg, i64, row);
        T *g = gl + row * V;
        if (t == ignore || t < 0 || t >= V) {
            for (int64_t j = rw.lane; j < V; j += rw.nthr)
                g[j] = cu_cast<T>((A)0);
            if (t != ignore && rw.lane == 0) cu_flag_error(err, CU_ERR_CE_TARGET, t, row, V);
            continue;
        }
        const T *x = logits + row * V;
        A m, s;
        row_max_sumexp<WARP, T, A>(x, V, rw, sh, &m, &s);
        A l = m + cu_log(s);
        for (int64_t j = rw.lane; j < V; j += rw.nthr) {
            A p = cu_exp((A)cu_to_f(x[j]) - l) * scale;
            g[j] = cu_cast<T>(j == t ? p - scale : p);
        }
    }
}

extern "C" fe_status fe_cuda_cross_entropy_backward(fe_tensor *glogits, const fe_tensor *gloss,
                                                    const fe_tensor *logits,
                                                    const fe_tensor *targets, int64_t ignore) {
    cu_dev *d = cu_of(glogits);
    if (!d) return fe_last_status();
    if (targets->dtype != FE_I32 && targets->dtype != FE_I64)
        return fe_set_error(FE_ERR_DTYPE,
                            "cross_entropy backward (cuda): targets must be i32 or i64");
    const fe_tensor *ts[1] = {glogits};
    if (same_dtype("cross_entropy backward", logits->dtype, 1, ts)) return fe_last_status();
    if (!fe_dtype_is_float(logits->dtype))
        return fe_set_error(FE_ERR_DTYPE, "cross_entropy backward (cuda): logits must be float");
    if (!fe_dtype_is_float(gloss->dtype) || fe_numel(gloss) != 1)
        return fe_set_error(FE_ERR_ARG, "cross_entropy backward (cuda): gloss must be one float");
    int64_t R = rows_of(logits), V = cols_of(logits);
    if (R == 0 || V == 0) return FE_OK;
    bool i64 = targets->dtype == FE_I64;
    double *scale = NULL;
    if (cu_scratch(d, sizeof(double), (void **)&scale)) return fe_last_status();
    k_ce_scale<<<1, 1024, 0, d->stream>>>(scale, fe__ptr(gloss), gloss->dtype, fe__ptr(targets),
                                          i64, R, (long long)ignore);
    fe_status st = cu_launched("cross_entropy backward kernel (scale)");
    d->check_pending = true;
    const void *pl[2] = {fe__ptr(logits), fe__ptr(glogits)};
    if (!st && fr_ok(V, fe_dtype_size(logits->dtype), pl, 2, CEB_THREADS * CEB_NV / FR_NV)) {
        int64_t cap = (int64_t)d->sm_count * 64;
        FR_DISPATCH(logits->dtype, {
            k_ce_bwd_reg<T><<<(unsigned)(R < cap ? R : cap), CEB_THREADS, 0, d->stream>>>(
                (T *)fe__ptr(glogits), (const T *)fe__ptr(logits), fe__ptr(targets), i64, R, V,
                (long long)ignore, scale, d->err);
        })
        st = cu_launched("cross_entropy backward kernel");
    } else if (!st && fr_ok(V, fe_dtype_size(logits->dtype), pl, 2, 1 << 20)) {
        FR_DISPATCH(logits->dtype, {
            k_ce_bwd_vec<T><<<ce_blocks(d, R), CE_THREADS, 0, d->stream>>>(
                (T *)fe__ptr(glogits), (const T *)fe__ptr(logits), fe__ptr(targets), i64, R, V,
                (long long)ignore, scale, d->err);
        })
        st = cu_launched("cross_entropy backward kernel");
    } else if (!st) {
        CU_FLOAT_DISPATCH(logits->dtype, "cross_entropy backward", {
            ROW_LAUNCH(k_ce_bwd, d, R, V, (T *)fe__ptr(glogits), (const T *)fe__ptr(logits),
                       fe__ptr(targets), i64, R, V, (long long)ignore, scale, d->err);
        })
        st = cu_launched("cross_entropy backward kernel");
    }
    cu_scratch_free(d, scale, sizeof(double));
    return st;
}

/* ---- SiLU gate
 * ---------------------------------------------------------------------------------------------------
 */

template <typename T> __global__ void k_silu_gate(T *out, const T *a, const T *b, int64_t n) {
    typedef typename cu_acc<T>::type A;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += step) {
        A x = (A)cu_to_f(a[i]);
        out[i] = cu_cast<T>(x * cu_sigmoid(x) * (A)cu_to_f(b[i]));
    }
}

template <typename T>
__global__ void k_silu_gate_bwd(T *ga, T *gb, const T *g, const T *a, const T *b, int64_t n) {
    typedef typename cu_acc<T>::type A;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += step) {
        A x = (A)cu_to_f(a[i]), y = (A)cu_to_f(b[i]), gg = (A)cu_to_f(g[i]);
        A s = cu_sigmoid(x);
        if (ga) ga[i] = cu_cast<T>(gg * y * s * ((A)1 + x * ((A)1 - s)));
        if (gb) gb[i] = cu_cast<T>(gg * x * s);
    }
}

/* The SiLU gate over contiguous 16-byte-aligned arrays: each thread moves SG_U vectors per
 * step (loads issued together), the last n % vector-length elements one by one. The sigmoid
 * is fr_sigmoid (ex2 and rcp on the special-function unit, no branch, no division). */
#define SG_U 2
#define SG_THREADS 256

template <typename T>
__global__ void __launch_bounds__(SG_THREADS)
    k_silu_gate_vec(T *__restrict__ out, const T *__restrict__ a, const T *__restrict__ b,
                    int64_t n) {
    constexpr int N = cu_vn<T>::n;
    int64_t nv = n / N, tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = tid; i < nv; i += step * SG_U) {
        uint4 av[SG_U], bv[SG_U];
#pragma unroll
        for (int u = 0; u < SG_U; u++) {
            int64_t q = i + u * step;
            if (q < nv) av[u] = cu_ld16(a + q * N), bv[u] = cu_ld16(b + q * N);
        }
#pragma unroll
        for (int u = 0; u < SG_U; u++) {
            int64_t q = i + u * step;
            if (q < nv) {
                float f[N];
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float x = cu_vget<T>(av[u], e);
                    f[e] = x * fr_sigmoid(x) * cu_vget<T>(bv[u], e);
                }
                cu_st16(out + q * N, cu_vpack<T>(f));
            }
        }
    }
    for (int64_t i = nv * N + tid; i < n; i += step) {
        float x = cu_to_f(a[i]);
        out[i] = cu_cast<T>(x * fr_sigmoid(x) * cu_to_f(b[i]));
    }
}

template <typename T>
__global__ void __launch_bounds__(SG_THREADS)
    k_silu_gate_bwd_vec(T *__restrict__ ga, T *__restrict__ gb, const T *__restrict__ g,
                        const T *__restrict__ a, const T *__restrict__ b, int64_t n) {
    constexpr int N = cu_vn<T>::n;
    int64_t nv = n / N, tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = tid; i < nv; i += step * SG_U) {
        uint4 av[SG_U], bv[SG_U], gv[SG_U];
#pragma unroll
        for (int u = 0; u < SG_U; u++) {
            int64_t q = i + u * step;
            if (q < nv) {
                av[u] = cu_ld16(a + q * N), gv[u] = cu_ld16(g + q * N);
                if (ga) bv[u] = cu_ld16(b + q * N);
            }
        }
#pragma unroll
        for (int u = 0; u < SG_U; u++) {
            int64_t q = i + u * step;
            if (q < nv) {
                float fa[N], fb[N];
#pragma unroll
                for (int e = 0; e < N; e++) {
                    float x = cu_vget<T>(av[u], e), gg = cu_vget<T>(gv[u], e);
                    float y = ga ? cu_vget<T>(bv[u], e) : 0.f;
                    float sg = fr_sigmoid(x);
                    fa[e] = gg * y * sg * (1.f + x * (1.f - sg));
                    fb[e] = gg * x * sg;
                }
                if (ga) cu_st16(ga + q * N, cu_vpack<T>(fa));
                if (gb) cu_st16(gb + q * N, cu_vpack<T>(fb));
            }
        }
    }
    for (int64_t i = nv * N + tid; i < n; i += step) {
        float x = cu_to_f(a[i]), y = cu_to_f(b[i]), gg = cu_to_f(g[i]);
        float sg = fr_sigmoid(x);
        if (ga) ga[i] = cu_cast<T>(gg * y * sg * (1.f + x * (1.f - sg)));
        if (gb) gb[i] = cu_cast<T>(gg * x * sg);
    }
}

/* Blocks for the vector SiLU-gate kernels over n elements of vectors of vn. */
static unsigned sg_blocks(const cu_dev *d, int64_t n, int vn) {
    int64_t per = (int64_t)SG_THREADS * SG_U * vn, b = (n + per - 1) / per;
    int64_t cap = (int64_t)d->sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

static bool all_aligned16(const void *const *ps, int n) {
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ps[i] & 15u) return false;
    return true;
}

extern "C" fe_status fe_cuda_silu_gate(fe_tensor *out, const fe_tensor *a, const fe_tensor *b) {
    cu_dev *d = cu_of(out);
    if (!d) return fe_last_status();
    const fe_tensor *ts[2] = {out, b};
    if (same_dtype("silu_gate", a->dtype, 2, ts)) return fe_last_status();
    int64_t n = fe_numel(a);
    if (n == 0) return FE_OK;
    const void *ps[3] = {fe__ptr(out), fe__ptr(a), fe__ptr(b)};
    if (a->dtype != FE_F64 && all_aligned16(ps, 3)) {
        FR_DISPATCH(a->dtype, {
            k_silu_gate_vec<T><<<sg_blocks(d, n, cu_vn<T>::n), SG_THREADS, 0, d->stream>>>(
                (T *)fe__ptr(out), (const T *)fe__ptr(a), (const T *)fe__ptr(b), n);
            return cu_launched("silu_gate kernel");
        })
    }
    CU_FLOAT_DISPATCH(a->dtype, "silu_gate", {
        k_silu_gate<T><<<cu_blocks(d, n, 256), 256, 0, d->stream>>>(
            (T *)fe__ptr(out), (const T *)fe__ptr(a), (const T *)fe__ptr(b), n);
    })
    return cu_launched("silu_gate kernel");
}

extern "C" fe_status fe_cuda_silu_gate_backward(fe_tensor *ga, fe_tensor *gb, const fe_tensor *g,
                                                const fe_tensor *a, const fe_tensor *b) {
    cu_dev *d = cu_of(a);
    if (!d) return fe_last_status();
    const fe_tensor *ts[4] = {ga, gb, g, b};
    if (same_dtype("silu_gate backward", a->dtype, 4, ts)) return fe_last_status();
    int64_t n = fe_numel(a);
    if (n == 0 || (!ga && !gb)) return FE_OK;
    const void *ps[5] = {ga ? fe__ptr(ga) : NULL, gb ? fe__ptr(gb) : NULL, fe__ptr(g), fe__ptr(a),
                         fe__ptr(b)};
    if (a->dtype != FE_F64 && all_aligned16(ps, 5)) {
        FR_DISPATCH(a->dtype, {
            k_silu_gate_bwd_vec<T><<<sg_blocks(d, n, cu_vn<T>::n), SG_THREADS, 0, d->stream>>>(
                ga ? (T *)fe__ptr(ga) : (T *)NULL, gb ? (T *)fe__ptr(gb) : (T *)NULL,
                (const T *)fe__ptr(g), (const T *)fe__ptr(a), (const T *)fe__ptr(b), n);
            return cu_launched("silu_gate backward kernel");
        })
    }
    CU_FLOAT_DISPATCH(a->dtype, "silu_gate backward", {
        k_silu_gate_bwd<T><<<cu_blocks(d, n, 256), 256, 0, d->stream>>>(
            ga ? (T *)fe__ptr(ga) : (T *)NULL, gb ? (T *)fe__ptr(gb) : (T *)NULL,
            (const T *)fe__ptr(g), (const T *)fe__ptr(a), (const T *)fe__ptr(b), n);
    })
    return cu_launched("silu_gate backward kernel");
}
