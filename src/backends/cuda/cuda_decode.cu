/* Batch-1 decode engine (see cuda_decode.h): fused matrix-vector kernels with the
 * neighbouring row work in their prologue and epilogue, an attention kernel that
 * reads the KV cache in place, all captured once into a CUDA graph.
 *
 * Matrix-vector products (k_dec_gemv): two output rows at a time, each pair streamed
 * by one to four warps of a block over parts of K (two by default) with 16-byte loads
 * of the weights (eight per row in flight per lane, the first ones issued before the
 * previous kernel has finished), reading the f32 input beside them and, where the mode
 * has an RMSNorm, folding the norm in (weight times input, and 1/rms applied to the
 * finished sums). Which two rows a warp takes depends on what the epilogue needs
 * together: the two halves of a RoPE pair (q, k; v simply rides along), the gate
 * and up rows of one SiLU-gate output, or two independent rows.
 *
 * A warp requests the first chunks of its next row pair as soon as it has read the
 * last of the current one, before reducing and writing the current sums, so its loads
 * stay in flight across pairs.
 *
 * Attention (k_dec_attn): one block per query head. Before waiting for the projection,
 * the first block of each KV head asks L2 to prefetch the cached rows. Scores of up to 512 cached
 * positions at a time go to shared memory (a thread per position, the whole key row
 * in 16-byte loads), softmax is online across those chunks in base 2, and the value
 * rows are accumulated by (16-byte column chunk, position group) threads, reduced in
 * shared memory at the end. */
#include "backends/cuda/cuda_decode.h"
#include "backends/cuda/cuda_internal.cuh"

#include <math.h>

enum { DEC_THREADS = 128, DEC_WARPS = 4, DEC_CHUNK = 512, ATT_THREADS = 256, DEC_UNROLL = 8 };
enum { DEC_QKV = 0, DEC_SILU = 1, DEC_RESID = 2, DEC_PLAIN = 3 };

/* ---- device helpers ------------------------------------------------------------------ */

/* 16 bytes of weights that are read once: skip L1 */
__device__ __forceinline__ uint4 dec_ld_stream(const void *p) {
#ifdef __CUDA_ARCH__
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
#else /* the CPU emulation (scripts/decode_emu.sh) */
    return *(const uint4 *)p;
#endif
}

/* Programmatic dependent launch: wait until the previous kernel has completed and its
 * writes are visible, then let the next kernel of the graph start launching (its
 * blocks run up to their own wait while this one works). Every kernel waits before it
 * writes anything or reads what an earlier kernel wrote, so completion stays ordered
 * along the whole chain; triggering only after the wait keeps at most one kernel
 * ahead. Both are no-ops without the launch attribute. */
#ifdef __CUDA_ARCH__
__device__ __forceinline__ void dec_launch_next() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void dec_wait_prev() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
#else /* the CPU emulation runs one kernel after another */
__device__ __forceinline__ void dec_launch_next() {}
__device__ __forceinline__ void dec_wait_prev() {}
#endif

/* ---- kernels ------------------------------------------------------------------------- */

struct dec_gemv_args {
    const void *w[3]; /* weight segments, rows of K */
    int K, npairs;
    int ks;           /* warps per row pair (1, 2 or 4), each over a part of K */
    const float *x;   /* input (K) */
    const void *g;    /* RMSNorm weight (K) or NULL: no norm */
    float eps;
    float *out;       /* QKV: q (Hq*D); SILU: h (F); RESID: out += ; PLAIN: out = */
    int n;            /* RESID / PLAIN: rows */
    void *kc, *vc;    /* QKV: caches (Hkv, cap, D) */
    const float *inv_freq;
    int D, Hq, Hkv, cap;
    const int *params; /* token, position */
};

/* The two rows warp task p computes (r1 NULL when p has one), and for QKV the segment
 * (0 q, 1 k, 2 v), the row base of its head and the pair index j < D/2; half is the
 * distance of the second row's output from the first's. */
template <typename T, int MODE>
__device__ __forceinline__ void dec_rows(const dec_gemv_args &a, int p, const T *&r0, const T *&r1,
                                         int &seg, int &base, int &j, int &half) {
    const int K = a.K;
    seg = 0, base = 0, j = 0, half = a.D / 2;
    if (MODE == DEC_QKV) {
        int head = p / half;
        j = p - head * half;
        seg = head < a.Hq ? 0 : head < a.Hq + a.Hkv ? 1 : 2;
        base = (seg == 0 ? head : seg == 1 ? head - a.Hq : head - a.Hq - a.Hkv) * a.D;
        const void *w = seg == 0 ? a.w[0] : seg == 1 ? a.w[1] : a.w[2]; /* no local copy */
        r0 = (const T *)w + (size_t)(base + j) * K;
        r1 = r0 + (size_t)half * K;
    } else if (MODE == DEC_SILU) {
        r0 = (const T *)a.w[0] + (size_t)p * K;
        r1 = (const T *)a.w[1] + (size_t)p * K;
    } else {
        half = (a.n + 1) / 2;
        r0 = (const T *)a.w[0] + (size_t)p * K;
        r1 = p + half < a.n ? r0 + (size_t)half * K : nullptr;
    }
}

/* Each row pair is computed by `ks` warps of one block (1, 2 or 4), each over its part
 * of K: the weights of the first pair are requested before waiting for the previous
 * kernel, then per 16-byte chunk the lane reads the matching input (f32, and the norm
 * weight, from L1/L2) and accumulates; with a norm the sum of squares of the input comes
 * along and the 1/rms scale is applied to the finished dot products. With ks > 1 the
 * parts meet in shared memory (small products get more warps streaming at once). */
template <typename T, int MODE>
__global__ void __launch_bounds__(DEC_THREADS) k_dec_gemv(dec_gemv_args a) {
    constexpr int V = cu_vn<T>::n, STEP = 32 * V, U = DEC_UNROLL;
    __shared__ float red[DEC_WARPS][3];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, K = a.K, ks = a.ks;
    const int ppb = DEC_WARPS / ks, sub = warp % ks;
    const int kpart = (K / ks + V - 1) / V * V, kbeg = sub * kpart;
    const int kend = kbeg + kpart < K ? kbeg + kpart : K;
    const T *g = (const T *)a.g;
    bool waited = false, loaded = false; /* loaded: u0, u1 hold this pair's first chunks */
    uint4 u0[U], u1[U];
    /* the U chunks from k on of rows r0, r1 */
    auto load_first = [&](const T *r0, const T *r1, int k) {
#pragma unroll
        for (int i = 0; i < U; i++) {
            int kk = k + i * STEP;
            u0[i] = kk < kend ? dec_ld_stream(r0 + kk) : make_uint4(0, 0, 0, 0);
            u1[i] = kk < kend && r1 ? dec_ld_stream(r1 + kk) : make_uint4(0, 0, 0, 0);
        }
    };
    for (int pb = blockIdx.x; pb * ppb < a.npairs; pb += gridDim.x) { /* block-uniform */
        const int p = pb * ppb + warp / ks;
        const bool valid = p < a.npairs;
        const T *r0 = nullptr, *r1 = nullptr;
        int seg = 0, base = 0, j = 0, half = 0;
        float a0 = 0.f, a1 = 0.f, ss = 0.f;
        if (valid) {
            dec_rows<T, MODE>(a, p, r0, r1, seg, base, j, half);
            int k = kbeg + lane * V;
            if (!loaded) load_first(r0, r1, k);
            loaded = false;
            if (!waited) { /* the input comes from the previous kernel */
                dec_wait_prev();
                dec_launch_next();
                waited = true;
            }
            for (;;) {
#pragma unroll
                for (int i = 0; i < U; i++) {
                    int kk = k + i * STEP;
                    if (kk >= kend) break;
                    float xv[V], w0[V], w1[V];
#pragma unroll
                    for (int e = 0; e < V; e += 4) {
                        float4 t = *reinterpret_cast<const float4 *>(a.x + kk + e);
                        xv[e] = t.x, xv[e + 1] = t.y, xv[e + 2] = t.z, xv[e + 3] = t.w;
                    }
                    if (g) {
                        float gv[V];
                        cu_vunpack<T>(cu_ld16(g + kk), gv);
#pragma unroll
                        for (int e = 0; e < V; e++) {
                            ss = fmaf(xv[e], xv[e], ss);
                            xv[e] *= gv[e];
                        }
                    }
                    cu_vunpack<T>(u0[i], w0);
                    cu_vunpack<T>(u1[i], w1);
#pragma unroll
                    for (int e = 0; e < V; e++) {
                        a0 = fmaf(w0[e], xv[e], a0);
                        a1 = fmaf(w1[e], xv[e], a1);
                    }
                }
                k += U * STEP;
                if (k >= kend) {
                    /* this warp's next pair: request its first chunks now, so that they
                     * are in flight while this pair's sums are reduced and written */
                    const int pn = (pb + (int)gridDim.x) * ppb + warp / ks;
                    if (pn < a.npairs) {
                        const T *n0, *n1;
                        int sg, bs, jn, hf;
                        dec_rows<T, MODE>(a, pn, n0, n1, sg, bs, jn, hf);
                        load_first(n0, n1, kbeg + lane * V);
                        loaded = true;
                    }
                    break;
                }
                load_first(r0, r1, k);
            }
        } else if (!waited) {
            dec_wait_prev();
            dec_launch_next();
            waited = true;
        }
        float s0 = cu_warp_sum(a0), s1 = cu_warp_sum(a1);
        if (g) ss = cu_warp_sum(ss);
        if (ks > 1) { /* the first warp of each pair adds the other parts */
            if (lane == 0) red[warp][0] = s0, red[warp][1] = s1, red[warp][2] = ss;
            __syncthreads();
            if (sub == 0)
                for (int q = 1; q < ks; q++)
                    s0 += red[warp + q][0], s1 += red[warp + q][1], ss += red[warp + q][2];
            __syncthreads(); /* red is rewritten next round */
        }
        if (!valid || sub != 0 || lane != 0) continue;
        if (g) {
            float rstd = rsqrtf(ss / (float)K + a.eps);
            s0 *= rstd, s1 *= rstd;
        }
        if (MODE == DEC_QKV) {
            int pos = a.params[1];
            float y0 = s0, y1 = s1;
            if (seg < 2) { /* rotate-half RoPE with the f32 angle the rope op uses */
                float ang = __fmul_rn(__int2float_rn(pos), a.inv_freq[j]), sn, cs;
                sincosf(ang, &sn, &cs);
                y0 = s0 * cs - s1 * sn;
                y1 = s1 * cs + s0 * sn;
            }
            if (seg == 0) {
                a.out[base + j] = y0;
                a.out[base + j + half] = y1;
            } else {
                T *c = (T *)(seg == 1 ? a.kc : a.vc) +
                       ((size_t)(base / a.D) * a.cap + pos) * a.D;
                c[j] = cu_cast<T>(y0);
                c[j + half] = cu_cast<T>(y1);
            }
        } else if (MODE == DEC_SILU) {
            a.out[p] = s0 / (1.f + __expf(-s0)) * s1;
        } else if (MODE == DEC_RESID) {
            a.out[p] += s0;
            if (r1) a.out[p + half] += s1;
        } else {
            a.out[p] = s0;
            if (r1) a.out[p + half] = s1;
        }
    }
    if (!waited) {
        dec_wait_prev();
        dec_launch_next();
    }
}

/* x = embedding row of the token */
template <typename T>
__global__ void k_dec_embed(float *x, const T *emb, const int *params, int C) {
    dec_wait_prev();
    dec_launch_next();
    const T *row = emb + (size_t)params[0] * C;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < C; i += gridDim.x * blockDim.x)
        x[i] = cu_to_f(row[i]);
}

/* *top = the first index of the largest of x[0..n) (one block of 1024 threads; each
 * thread's loads are issued together, ARG_PER at a time) */
enum { ARG_PER = 8 };
__device__ __forceinline__ void dec_arg_take(float &v, int &i, float v2, int i2, int none) {
    if (i2 == none) return;
    if (i == none || v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}
__global__ void __launch_bounds__(1024) k_dec_argmax(const float *x, int n, int *top) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    dec_wait_prev();
    dec_launch_next();
    float v = -INFINITY;
    int i = n; /* none yet */
    for (int k0 = 0; k0 < n; k0 += ARG_PER * 1024) {
        float r[ARG_PER];
#pragma unroll
        for (int u = 0; u < ARG_PER; u++) {
            int k = k0 + u * 1024 + (int)threadIdx.x;
            r[u] = k < n ? x[k] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < ARG_PER; u++) {
            int k = k0 + u * 1024 + (int)threadIdx.x;
            if (k < n) dec_arg_take(v, i, r[u], k, n);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        dec_arg_take(v, i, v2, i2, n);
    }
    if ((threadIdx.x & 31) == 0) bv[threadIdx.x >> 5] = v, bi[threadIdx.x >> 5] = i;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            dec_arg_take(v, i, bv[w], bi[w], n);
        *top = i < n ? i : 0;
    }
}

/* out (Hq, D) = softmax(q k^T * scale) v over cached positions 0..pos, q (Hq, D) f32 */
template <typename T, int D>
__global__ void __launch_bounds__(ATT_THREADS)
    k_dec_attn(const float *q, const T *kc, const T *vc, float *out, const int *params, int G,
               int cap, float scale_log2) {
    constexpr int V = cu_vn<T>::n, NC = D / V, NG = ATT_THREADS / NC;
    __shared__ __align__(16) float qs[D];
    __shared__ float sc[DEC_CHUNK];
    __shared__ float red[32];
    __shared__ float part[NG][D];
    if (blockIdx.x % G == 0) { /* once per KV head: the cached rows before this step's to L2
                                * while the projection still runs (params is set before the
                                * graph starts; row pos is the projection's to write) */
        const char *kr = (const char *)(kc + (size_t)(blockIdx.x / G) * cap * D);
        const char *vr = (const char *)(vc + (size_t)(blockIdx.x / G) * cap * D);
        const int bytes = params[1] * D * (int)sizeof(T);
        for (int o = (int)threadIdx.x * 128; o < bytes; o += ATT_THREADS * 128) {
            asm volatile("prefetch.global.L2 [%0];\n" ::"l"(kr + o));
            asm volatile("prefetch.global.L2 [%0];\n" ::"l"(vr + o));
        }
    }
    dec_wait_prev();
    dec_launch_next();
    const int h = blockIdx.x, tid = threadIdx.x, L = params[1] + 1;
    const T *Kh = kc + (size_t)(h / G) * cap * D, *Vh = vc + (size_t)(h / G) * cap * D;
    for (int i = tid; i < D; i += ATT_THREADS)
        qs[i] = q[h * D + i] * scale_log2;
    __syncthreads();
    const int col = tid % NC, grp = tid / NC;
    float acc[V], m = -INFINITY, l = 0.f;
#pragma unroll
    for (int e = 0; e < V; e++)
        acc[e] = 0.f;
    for (int c0 = 0; c0 < L; c0 += DEC_CHUNK) {
        const int n = min(DEC_CHUNK, L - c0);
        float lmax = -INFINITY;
        for (int t = tid; t < n; t += ATT_THREADS) { /* a thread per position: q . k */
            const T *kr = Kh + (size_t)(c0 + t) * D;
            uint4 u[NC];
#pragma unroll
            for (int c = 0; c < NC; c++)
                u[c] = cu_ld16(kr + c * V);
            float s = 0.f;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                float f[V];
                cu_vunpack<T>(u[c], f);
#pragma unroll
                for (int e = 0; e < V; e++)
                    s = fmaf(f[e], qs[c * V + e], s);
            }
            sc[t] = s;
            lmax = fmaxf(lmax, s);
        }
        const float mn = fmaxf(m, cu_block_max(lmax, red)), corr = exp2f(m - mn);
        float ls = 0.f;
        for (int t = tid; t < n; t += ATT_THREADS) {
            float pr = exp2f(sc[t] - mn);
            sc[t] = pr;
            ls += pr;
        }
        l = l * corr + cu_block_sum(ls, red); /* its barriers publish sc */
        m = mn;
#pragma unroll
        for (int e = 0; e < V; e++)
            acc[e] *= corr;
        int t = grp; /* p . v: four value rows in flight per thread */
        for (; t + 3 * NG < n; t += 4 * NG) {
            uint4 u[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                u[i] = cu_ld16(Vh + (size_t)(c0 + t + i * NG) * D + col * V);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float f[V], pr = sc[t + i * NG];
                cu_vunpack<T>(u[i], f);
#pragma unroll
                for (int e = 0; e < V; e++)
                    acc[e] = fmaf(pr, f[e], acc[e]);
            }
        }
        for (; t < n; t += NG) {
            float f[V], pr = sc[t];
            cu_vunpack<T>(cu_ld16(Vh + (size_t)(c0 + t) * D + col * V), f);
#pragma unroll
            for (int e = 0; e < V; e++)
                acc[e] = fmaf(pr, f[e], acc[e]);
        }
        __syncthreads(); /* sc is rewritten by the next chunk */
    }
#pragma unroll
    for (int e = 0; e < V; e++)
        part[grp][col * V + e] = acc[e];
    __syncthreads();
    for (int i = tid; i < D; i += ATT_THREADS) {
        float s = 0.f;
        for (int g = 0; g < NG; g++)
            s += part[g][i];
        out[h * D + i] = s / l;
    }
}

/* ---- host side ----------------------------------------------------------------------- */

struct fe_cuda_decode {
    fe_cuda_decode_desc d;
    fe_cuda_decode_layer *layers;
    cu_dev *dev;
    void *block; /* one device allocation: x, q, att, h, logits, params */
    size_t block_bytes;
    float *x, *q, *att, *h, *logits;
    int *params;
    int *params_host;   /* pinned: token, position, then the argmax read back */
    float *logits_host; /* pinned */
    bool pdl;          /* FE_DECODE_PDL=0 switches programmatic dependent launch off */
    int blocks_per_sm; /* matrix-vector grid cap (FE_DECODE_BLOCKS_PER_SM, default 4) */
    int max_blocks;    /* and in all (FE_DECODE_MAX_BLOCKS; tests make warps take many pairs) */
    int ksplit;        /* warps per row pair, 0 = 2 where K allows (FE_DECODE_KSPLIT) */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

extern "C" fe_status fe_cuda_decode_supported(const fe_cuda_decode_desc *d) {
    if (!d) return fe_set_error(FE_ERR_ARG, "decode engine: NULL description");
    if (d->dtype != FE_F32 && d->dtype != FE_F16 && d->dtype != FE_BF16)
        return fe_set_error(FE_ERR_DTYPE, "decode engine: weights must be f32, f16 or bf16, not %s",
                            fe_dtype_name(d->dtype));
    if (d->head_dim != 64 && d->head_dim != 128)
        return fe_set_error(FE_ERR_SHAPE, "decode engine: head_dim %lld is not 64 or 128",
                            (long long)d->head_dim);
    int64_t vec = 16 / (int64_t)fe_dtype_size(d->dtype);
    if (d->dim % vec || d->ffn_dim % vec || (d->n_heads * d->head_dim) % vec)
        return fe_set_error(FE_ERR_SHAPE,
                            "decode engine: dim %lld and ffn_dim %lld must be multiples of %lld",
                            (long long)d->dim, (long long)d->ffn_dim, (long long)vec);
    int64_t kmax = d->dim > d->ffn_dim ? d->dim : d->ffn_dim;
    if (d->n_heads * d->head_dim > kmax) kmax = d->n_heads * d->head_dim;
    if (kmax > (1 << 24) || d->vocab > INT32_MAX / 2 || d->capacity > INT32_MAX ||
        d->n_heads % d->n_kv_heads || d->n_layers < 1)
        return fe_set_error(FE_ERR_SHAPE, "decode engine: sizes out of range");
    return FE_OK;
}

/* Blocks for npairs warp tasks: at most `per_sm` blocks per SM, every warp the same count. */
static unsigned dec_grid(const fe_cuda_decode *e, int npairs) {
    int cap = e->dev->sm_count * e->blocks_per_sm;
    if (e->max_blocks > 0 && cap > e->max_blocks) cap = e->max_blocks;
    int per = (npairs + DEC_WARPS * cap - 1) / (DEC_WARPS * cap);
    if (per < 1) per = 1;
    int g = (npairs + DEC_WARPS * per - 1) / (DEC_WARPS * per);
    return (unsigned)(g > 0 ? g : 1);
}

/* Launch kernel k on the engine's stream, as a programmatic dependent launch unless
 * switched off (or first: it follows the token upload, not a kernel). */
template <typename... P, typename... A>
static fe_status dec_kernel(fe_cuda_decode *e, bool first, const char *what, void (*k)(P...),
                            unsigned grid, unsigned block, size_t smem, A &&...args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = dim3(grid), cfg.blockDim = dim3(block), cfg.dynamicSmemBytes = smem;
    cfg.stream = e->dev->stream;
    cfg.attrs = at, cfg.numAttrs = e->pdl && !first ? 1 : 0;
    return cu_check(cudaLaunchKernelEx(&cfg, k, static_cast<A &&>(args)...), what);
}

template <typename T, int MODE>
static fe_status dec_launch(fe_cuda_decode *e, dec_gemv_args a) {
    a.params = e->params;
    /* two warps per row pair, each over half of K, wherever a half keeps a full 32-lane
     * step: on an H200 (TinyLlama shape) that gave 1142 tokens/s against 1106 with one
     * warp, 973 with four, and 1109 choosing 2 or 4 by the number of pairs */
    const int vec = 16 / (int)sizeof(T);
    a.ks = e->ksplit ? e->ksplit : a.K / 2 >= 32 * vec ? 2 : 1;
    return dec_kernel(e, false, "decode matrix-vector kernel", k_dec_gemv<T, MODE>,
                      dec_grid(e, a.npairs * a.ks), DEC_THREADS, 0, a);
}

/* Queue one token step on the engine's stream (captured into the graph). */
template <typename T> static fe_status dec_enqueue(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    const int C = (int)d->dim, F = (int)d->ffn_dim, D = (int)d->head_dim, Hq = (int)d->n_heads,
              Hkv = (int)d->n_kv_heads, QD = Hq * D;
    const float eps = (float)d->eps, sl2 = (float)(1.4426950408889634 / sqrt((double)D));
    fe_status st = dec_kernel(e, true, "decode embedding kernel", k_dec_embed<T>,
                              (unsigned)(C + 255) / 256, 256, 0, e->x, (const T *)d->embed,
                              (const int *)e->params, C);
    for (int64_t l = 0; l < d->n_layers && !st; l++) {
        const fe_cuda_decode_layer *L = &e->layers[l];
        dec_gemv_args a = {};
        a.w[0] = L->wq, a.w[1] = L->wk, a.w[2] = L->wv;
        a.K = C, a.npairs = (Hq + 2 * Hkv) * (D / 2), a.x = e->x, a.g = L->ln_attn, a.eps = eps;
        a.out = e->q, a.kc = L->k_cache, a.vc = L->v_cache, a.inv_freq = d->inv_freq;
        a.D = D, a.Hq = Hq, a.Hkv = Hkv, a.cap = (int)d->capacity;
        st = dec_launch<T, DEC_QKV>(e, a);
        if (st) break;
        st = dec_kernel(e, false, "decode attention kernel",
                        D == 64 ? k_dec_attn<T, 64> : k_dec_attn<T, 128>, (unsigned)Hq,
                        ATT_THREADS, 0, (const float *)e->q, (const T *)L->k_cache,
                        (const T *)L->v_cache, e->att, (const int *)e->params, Hq / Hkv,
                        (int)d->capacity, sl2);
        if (st) break;
        a = dec_gemv_args{};
        a.w[0] = L->wo, a.K = QD, a.n = C, a.npairs = (C + 1) / 2, a.x = e->att, a.out = e->x;
        if ((st = dec_launch<T, DEC_RESID>(e, a))) break;
        a = dec_gemv_args{};
        a.w[0] = L->w_gate, a.w[1] = L->w_up, a.K = C, a.npairs = F, a.x = e->x;
        a.g = L->ln_mlp, a.eps = eps, a.out = e->h;
        if ((st = dec_launch<T, DEC_SILU>(e, a))) break;
        a = dec_gemv_args{};
        a.w[0] = L->w_down, a.K = F, a.n = C, a.npairs = (C + 1) / 2, a.x = e->h, a.out = e->x;
        st = dec_launch<T, DEC_RESID>(e, a);
    }
    if (!st) {
        dec_gemv_args a = {};
        int V = (int)d->vocab;
        a.w[0] = d->lm_head, a.K = C, a.n = V, a.npairs = (V + 1) / 2, a.x = e->x;
        a.g = d->final_norm, a.eps = eps, a.out = e->logits;
        st = dec_launch<T, DEC_PLAIN>(e, a);
    }
    if (!st)
        st = dec_kernel(e, false, "decode argmax kernel", k_dec_argmax, 1, 1024, 0,
                        (const float *)e->logits, (int)d->vocab, e->params + 2);
    return st;
}

extern "C" void fe_cuda_decode_free(fe_cuda_decode *e) {
    if (!e) return;
    if (e->exec) cudaGraphExecDestroy(e->exec);
    if (e->graph) cudaGraphDestroy(e->graph);
    if (e->params_host) cudaFreeHost(e->params_host);
    if (e->logits_host) cudaFreeHost(e->logits_host);
    if (e->block) fe_cuda_free((fe_device){FE_CUDA, e->dev->index}, e->block, e->block_bytes);
    free(e->layers);
    free(e);
}

extern "C" fe_cuda_decode *fe_cuda_decode_new(const fe_cuda_decode_desc *d) {
    if (fe_cuda_decode_supported(d)) return NULL;
    if (!d->layers || !d->embed || !d->final_norm || !d->lm_head || !d->inv_freq) {
        fe_set_error(FE_ERR_ARG, "decode engine: missing weights");
        return NULL;
    }
    cu_dev *dv = cu_dev_get((fe_device){FE_CUDA, d->device});
    if (!dv) return NULL;
    fe_cuda_decode *e = (fe_cuda_decode *)calloc(1, sizeof *e);
    if (e) e->layers = (fe_cuda_decode_layer *)malloc((size_t)d->n_layers * sizeof *e->layers);
    if (!e || !e->layers) {
        free(e);
        fe_set_error(FE_ERR_OOM, "decode engine: out of host memory");
        return NULL;
    }
    e->d = *d;
    memcpy(e->layers, d->layers, (size_t)d->n_layers * sizeof *e->layers);
    e->d.layers = e->layers;
    e->dev = dv;
    const char *pdl = getenv("FE_DECODE_PDL"), *bps = getenv("FE_DECODE_BLOCKS_PER_SM");
    e->pdl = !(pdl && !strcmp(pdl, "0"));
    e->blocks_per_sm = bps && atoi(bps) > 0 && atoi(bps) <= 64 ? atoi(bps) : 4;
    const char *mb = getenv("FE_DECODE_MAX_BLOCKS");
    e->max_blocks = mb && atoi(mb) > 0 ? atoi(mb) : 0;
    const char *ksp = getenv("FE_DECODE_KSPLIT");
    int kv = ksp ? atoi(ksp) : 0;
    e->ksplit = kv == 1 || kv == 2 || kv == 4 ? kv : 0;
    /* f32 activations, each start rounded up to 16 floats */
    size_t QD = (size_t)(d->n_heads * d->head_dim), r16 = 16;
    size_t nx = (d->dim + r16 - 1) / r16 * r16, nq = (QD + r16 - 1) / r16 * r16,
           nh = (d->ffn_dim + r16 - 1) / r16 * r16, nl = (d->vocab + r16 - 1) / r16 * r16;
    e->block_bytes = (nx + 2 * nq + nh + nl) * sizeof(float) + 16 * sizeof(int);
    fe_status st = fe_cuda_alloc((fe_device){FE_CUDA, d->device}, e->block_bytes, &e->block);
    if (st) {
        e->block = NULL;
        fe_cuda_decode_free(e);
        return NULL;
    }
    e->x = (float *)e->block;
    e->q = e->x + nx, e->att = e->q + nq, e->h = e->att + nq, e->logits = e->h + nh;
    e->params = (int *)(e->logits + nl);
    st = cu_check(cudaMallocHost((void **)&e->params_host, 16 * sizeof(int)), "cudaMallocHost");
    if (!st)
        st = cu_check(cudaMallocHost((void **)&e->logits_host, (size_t)d->vocab * sizeof(float)),
                      "cudaMallocHost");
    if (!st) st = cu_check(cudaMemsetAsync(e->block, 0, e->block_bytes, dv->stream), "cudaMemset");
    if (!st) st = cu_check(cudaStreamSynchronize(dv->stream), "cudaStreamSynchronize");
    if (!st)
        st = cu_check(cudaStreamBeginCapture(dv->stream, cudaStreamCaptureModeThreadLocal),
                      "cudaStreamBeginCapture");
    if (!st) {
        fe_status qs = d->dtype == FE_BF16  ? dec_enqueue<__nv_bfloat16>(e)
                       : d->dtype == FE_F16 ? dec_enqueue<__half>(e)
                                            : dec_enqueue<float>(e);
        cudaError_t r = cudaStreamEndCapture(dv->stream, &e->graph);
        st = qs ? qs : cu_check(r, "cudaStreamEndCapture");
    }
    if (!st) st = cu_check(cudaGraphInstantiate(&e->exec, e->graph, 0), "cudaGraphInstantiate");
    if (st) {
        fe_cuda_decode_free(e);
        return NULL;
    }
    return e;
}

extern "C" fe_status fe_cuda_decode_step(fe_cuda_decode *e, int32_t token, int64_t pos,
                                         const float **logits, int32_t *top) {
    if (!e || (!logits && !top))
        return fe_set_error(FE_ERR_ARG, "decode step: NULL engine or no output");
    if (token < 0 || token >= e->d.vocab || pos < 0 || pos >= e->d.capacity)
        return fe_set_error(FE_ERR_RANGE,
                            "decode step: token %d or position %lld out of range (vocab %lld, "
                            "cache %lld)",
                            (int)token, (long long)pos, (long long)e->d.vocab,
                            (long long)e->d.capacity);
    cudaStream_t s = e->dev->stream;
    e->params_host[0] = token;
    e->params_host[1] = (int)pos;
    fe_status st = cu_check(cudaSetDevice(e->dev->index), "cudaSetDevice");
    if (!st)
        st = cu_check(cudaMemcpyAsync(e->params, e->params_host, 2 * sizeof(int),
                                      cudaMemcpyHostToDevice, s),
                      "decode: token upload");
    if (!st) st = cu_check(cudaGraphLaunch(e->exec, s), "cudaGraphLaunch");
    if (!st && logits)
        st = cu_check(cudaMemcpyAsync(e->logits_host, e->logits, (size_t)e->d.vocab * sizeof(float),
                                      cudaMemcpyDeviceToHost, s),
                      "decode: logits download");
    if (!st && top)
        st = cu_check(cudaMemcpyAsync(e->params_host + 2, e->params + 2, sizeof(int),
                                      cudaMemcpyDeviceToHost, s),
                      "decode: argmax download");
    if (!st) st = cu_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    if (logits) *logits = st ? NULL : e->logits_host;
    if (top) *top = st ? -1 : e->params_host[2];
    return st;
}
