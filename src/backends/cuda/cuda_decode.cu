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
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

/* Programmatic dependent launch: wait until the previous kernel has completed and its
 * writes are visible, then let the next kernel of the graph start launching (its
 * blocks run up to their own wait while this one works). Every kernel waits before it
 * writes anything or reads what an earlier kernel wrote, so completion stays ordered
 * along the whole chain; triggering only after the wait keeps at most one kernel
 * ahead. Both are no-ops without the launch attribute. */
__device__ __forceinline__ void dec_launch_next() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void dec_wait_prev() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

/* 16 bytes through L2 only: data another block may just have written (L1 is not coherent) */
__device__ __forceinline__ uint4 dec_ld_cg(const void *p) { return __ldcg((const uint4 *)p); }

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

/* The part [kbeg, kend) of K that warp `sub` of a row pair's ks warps streams. */
template <typename T>
__device__ __forceinline__ void dec_kpart(int K, int ks, int sub, int &kbeg, int &kend) {
    constexpr int V = cu_vn<T>::n;
    const int kpart = (K / ks + V - 1) / V * V;
    kbeg = sub * kpart;
    kend = kbeg + kpart < K ? kbeg + kpart : K;
}

/* The U 16-byte chunks of rows r0, r1 (r1 may be NULL) from k on, one lane's share: the
 * loads are issued here and consumed later. */
template <typename T>
__device__ __forceinline__ void dec_load_chunks(uint4 (&u0)[DEC_UNROLL], uint4 (&u1)[DEC_UNROLL],
                                                const T *r0, const T *r1, int k, int kend) {
    constexpr int STEP = 32 * cu_vn<T>::n;
#pragma unroll
    for (int i = 0; i < DEC_UNROLL; i++) {
        int kk = k + i * STEP;
        u0[i] = kk < kend ? dec_ld_stream(r0 + kk) : make_uint4(0, 0, 0, 0);
        u1[i] = kk < kend && r1 ? dec_ld_stream(r1 + kk) : make_uint4(0, 0, 0, 0);
    }
}

/* a0 += w0 . x, a1 += w1 . x over the chunks in u0, u1 (from k on, below kend); with a
 * norm weight g the input is scaled by it and its sum of squares goes to ss. x may point
 * to global (f32) or shared memory. */
template <typename T>
__device__ __forceinline__ void dec_fma_chunks(const uint4 (&u0)[DEC_UNROLL],
                                               const uint4 (&u1)[DEC_UNROLL], int k, int kend,
                                               const float *x, const T *g, float &a0, float &a1,
                                               float &ss) {
    constexpr int V = cu_vn<T>::n, STEP = 32 * V;
#pragma unroll
    for (int i = 0; i < DEC_UNROLL; i++) {
        int kk = k + i * STEP;
        if (kk >= kend) break;
        float xv[V], w0[V], w1[V];
#pragma unroll
        for (int e = 0; e < V; e += 4) {
            float4 t = *reinterpret_cast<const float4 *>(x + kk + e);
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
}

/* The warp sums of a row pair's ks warps (sub = this warp's part), added up in the first
 * of them through red (block-uniform: every warp of the block calls it). */
__device__ __forceinline__ void dec_reduce_pair(float &s0, float &s1, float &ss, int ks, int sub,
                                                float (*red)[3]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    s0 = cu_warp_sum(s0), s1 = cu_warp_sum(s1), ss = cu_warp_sum(ss);
    if (ks > 1) {
        if (lane == 0) red[warp][0] = s0, red[warp][1] = s1, red[warp][2] = ss;
        __syncthreads();
        if (sub == 0)
            for (int q = 1; q < ks; q++)
                s0 += red[warp + q][0], s1 += red[warp + q][1], ss += red[warp + q][2];
        __syncthreads(); /* red is rewritten next round */
    }
}

/* Write the finished (normalised) sums y0, y1 of row pair p: RoPE and the caches for
 * QKV, the SiLU gate, the residual add or the plain store. The residual is read from L2
 * (.cg): other blocks of the persistent kernel write it. */
template <typename T, int MODE>
__device__ __forceinline__ void dec_epilogue(const dec_gemv_args &a, int p, bool two, int seg,
                                             int base, int j, int half, float s0, float s1) {
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
            T *c = (T *)(seg == 1 ? a.kc : a.vc) + ((size_t)(base / a.D) * a.cap + pos) * a.D;
            c[j] = cu_cast<T>(y0);
            c[j + half] = cu_cast<T>(y1);
        }
    } else if (MODE == DEC_SILU) {
        a.out[p] = s0 / (1.f + __expf(-s0)) * s1;
    } else if (MODE == DEC_RESID) {
        a.out[p] = __ldcg(a.out + p) + s0;
        if (two) a.out[p + half] = __ldcg(a.out + p + half) + s1;
    } else {
        a.out[p] = s0;
        if (two) a.out[p + half] = s1;
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
    constexpr int STEP = 32 * cu_vn<T>::n, U = DEC_UNROLL;
    __shared__ float red[DEC_WARPS][3];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, K = a.K, ks = a.ks;
    const int ppb = DEC_WARPS / ks, sub = warp % ks;
    int kbeg, kend;
    dec_kpart<T>(K, ks, sub, kbeg, kend);
    const T *g = (const T *)a.g;
    bool waited = false, loaded = false; /* loaded: u0, u1 hold this pair's first chunks */
    uint4 u0[U], u1[U];
    for (int pb = blockIdx.x; pb * ppb < a.npairs; pb += gridDim.x) { /* block-uniform */
        const int p = pb * ppb + warp / ks;
        const bool valid = p < a.npairs;
        const T *r0 = nullptr, *r1 = nullptr;
        int seg = 0, base = 0, j = 0, half = 0;
        float a0 = 0.f, a1 = 0.f, ss = 0.f;
        if (valid) {
            dec_rows<T, MODE>(a, p, r0, r1, seg, base, j, half);
            int k = kbeg + lane * cu_vn<T>::n;
            if (!loaded) dec_load_chunks<T>(u0, u1, r0, r1, k, kend);
            loaded = false;
            if (!waited) { /* the input comes from the previous kernel */
                dec_wait_prev();
                dec_launch_next();
                waited = true;
            }
            for (;;) {
                dec_fma_chunks<T>(u0, u1, k, kend, a.x, g, a0, a1, ss);
                k += U * STEP;
                if (k >= kend) {
                    /* this warp's next pair: request its first chunks now, so that they
                     * are in flight while this pair's sums are reduced and written */
                    const int pn = (pb + (int)gridDim.x) * ppb + warp / ks;
                    if (pn < a.npairs) {
                        const T *n0, *n1;
                        int sg, bs, jn, hf;
                        dec_rows<T, MODE>(a, pn, n0, n1, sg, bs, jn, hf);
                        dec_load_chunks<T>(u0, u1, n0, n1, kbeg + lane * cu_vn<T>::n, kend);
                        loaded = true;
                    }
                    break;
                }
                dec_load_chunks<T>(u0, u1, r0, r1, k, kend);
            }
        } else if (!waited) {
            dec_wait_prev();
            dec_launch_next();
            waited = true;
        }
        dec_reduce_pair(a0, a1, ss, ks, sub, red);
        if (!valid || sub != 0 || lane != 0) continue;
        if (g) {
            float rstd = rsqrtf(ss / (float)K + a.eps);
            a0 *= rstd, a1 *= rstd;
        }
        dec_epilogue<T, MODE>(a, p, r1 != nullptr, seg, base, j, half, a0, a1);
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

/* Ask L2 for KV head kvh's cached rows before this step's (row pos is the projection's
 * to write), while the projection still runs. */
template <typename T, int D>
__device__ __forceinline__ void dec_attn_prefetch(const T *kc, const T *vc, int kvh, int cap,
                                                  int pos) {
    const char *kr = (const char *)(kc + (size_t)kvh * cap * D);
    const char *vr = (const char *)(vc + (size_t)kvh * cap * D);
    const int bytes = pos * D * (int)sizeof(T);
    for (int o = (int)threadIdx.x * 128; o < bytes; o += ATT_THREADS * 128) {
        asm volatile("prefetch.global.L2 [%0];\n" ::"l"(kr + o));
        asm volatile("prefetch.global.L2 [%0];\n" ::"l"(vr + o));
    }
}

/* out[h] (D) = softmax(q[h] k^T * scale) v over cached positions 0..L-1 of KV head h / G,
 * by the whole block (ATT_THREADS threads; block-uniform). q and the cache are read
 * through L2 (.cg): in the persistent kernel other blocks have just written them. */
template <typename T, int D>
__device__ __forceinline__ void dec_attn_head(const float *q, const T *kc, const T *vc, float *out,
                                              int h, int L, int G, int cap, float scale_log2) {
    constexpr int V = cu_vn<T>::n, NC = D / V, NG = ATT_THREADS / NC;
    __shared__ __align__(16) float qs[D];
    __shared__ float sc[DEC_CHUNK];
    __shared__ float red[32];
    __shared__ float part[NG][D];
    const int tid = threadIdx.x;
    const T *Kh = kc + (size_t)(h / G) * cap * D, *Vh = vc + (size_t)(h / G) * cap * D;
    __syncthreads(); /* the previous head's readers of qs and part are done */
    for (int i = tid; i < D; i += ATT_THREADS)
        qs[i] = __ldcg(q + h * D + i) * scale_log2;
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
                u[c] = dec_ld_cg(kr + c * V);
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
                u[i] = dec_ld_cg(Vh + (size_t)(c0 + t + i * NG) * D + col * V);
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
            cu_vunpack<T>(dec_ld_cg(Vh + (size_t)(c0 + t) * D + col * V), f);
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

/* out (Hq, D) = softmax(q k^T * scale) v over cached positions 0..pos, q (Hq, D) f32: one
 * block per query head */
template <typename T, int D>
__global__ void __launch_bounds__(ATT_THREADS)
    k_dec_attn(const float *q, const T *kc, const T *vc, float *out, const int *params, int G,
               int cap, float scale_log2) {
    if (blockIdx.x % G == 0) /* once per KV head */
        dec_attn_prefetch<T, D>(kc, vc, blockIdx.x / G, cap, params[1]);
    dec_wait_prev();
    dec_launch_next();
    dec_attn_head<T, D>(q, kc, vc, out, blockIdx.x, params[1] + 1, G, cap, scale_log2);
}

/* ---- the persistent kernel ------------------------------------------------------------ */

/* Everything of a token step in one cooperative kernel: PK_BLOCKS_PER_SM blocks of
 * ATT_THREADS threads per SM stay resident and meet at a grid barrier between the
 * phases that depend on each other (QKV | attention | output | gate/up | down per
 * layer, then the LM head). Before a warp waits at a barrier it requests the weights of
 * its first row pair of the next matrix-vector phase (they depend on nothing), so the
 * memory keeps streaming across the barriers that separate kernels in the chained
 * design. A phase stages its input (times the norm weight) in shared memory once per
 * block, with the block's 1/rms; row pairs go round-robin to (block, warp group) slots,
 * blocks first, so that every SM streams. */
enum { PK_WARPS = ATT_THREADS / 32, PK_BLOCKS_PER_SM = 2 };

struct dec_step_args {
    const dec_gemv_args *ph; /* per layer QKV, output, gate/up, down; then the LM head */
    int n_layers, Hq, G, cap, C;
    float scale_log2;
    const void *embed;
    float *x, *q, *att;
    const int *params;
    unsigned *bar; /* arrivals at grid barriers, zeroed before the launch */
};

/* Grid-wide barrier: every block's writes before it are visible to every block after
 * it. target counts the arrivals expected so far (the same sequence in every block). */
__device__ __forceinline__ void dec_grid_sync(unsigned *bar, unsigned &target) {
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(bar) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

/* This warp's first row pair of phase a and its part of K. */
template <typename T>
__device__ __forceinline__ void dec_slot(const dec_gemv_args &a, int &p0, int &nslots, int &sub,
                                         int &kbeg, int &kend) {
    const int warp = threadIdx.x >> 5, ppb = PK_WARPS / a.ks;
    sub = warp % a.ks;
    p0 = (warp / a.ks) * (int)gridDim.x + (int)blockIdx.x;
    nslots = ppb * (int)gridDim.x;
    dec_kpart<T>(a.K, a.ks, sub, kbeg, kend);
}

/* Request the first chunks of this warp's first row pair of phase a (before a barrier). */
template <typename T, int MODE>
__device__ __forceinline__ void dec_phase_first(const dec_gemv_args &a, uint4 (&u0)[DEC_UNROLL],
                                                uint4 (&u1)[DEC_UNROLL], bool &loaded) {
    int p0, nslots, sub, kbeg, kend;
    dec_slot<T>(a, p0, nslots, sub, kbeg, kend);
    loaded = p0 < a.npairs;
    if (!loaded) return;
    const T *r0, *r1;
    int seg, base, j, half;
    dec_rows<T, MODE>(a, p0, r0, r1, seg, base, j, half);
    dec_load_chunks<T>(u0, u1, r0, r1, kbeg + (threadIdx.x & 31) * cu_vn<T>::n, kend);
}

/* One matrix-vector phase of the persistent kernel (block-uniform). */
template <typename T, int MODE>
__device__ __forceinline__ void dec_phase(const dec_gemv_args &a, float *xs,
                                          uint4 (&u0)[DEC_UNROLL], uint4 (&u1)[DEC_UNROLL],
                                          bool &loaded, float (*red)[3], float *red32) {
    constexpr int STEP = 32 * cu_vn<T>::n, U = DEC_UNROLL;
    const int lane = threadIdx.x & 31, K = a.K;
    /* the input, times the norm weight, to shared memory; 1/rms of the input */
    const T *g = (const T *)a.g;
    float ss = 0.f;
    for (int i = (int)threadIdx.x * 4; i < K; i += ATT_THREADS * 4) {
        float4 v = __ldcg(reinterpret_cast<const float4 *>(a.x + i));
        if (g) {
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            v.x *= cu_to_f(g[i]), v.y *= cu_to_f(g[i + 1]);
            v.z *= cu_to_f(g[i + 2]), v.w *= cu_to_f(g[i + 3]);
        }
        *reinterpret_cast<float4 *>(xs + i) = v;
    }
    const float rstd = g ? rsqrtf(cu_block_sum(ss, red32) / (float)K + a.eps) : 1.f;
    if (!g) __syncthreads(); /* (cu_block_sum has its own barriers) */
    int p0, nslots, sub, kbeg, kend;
    dec_slot<T>(a, p0, nslots, sub, kbeg, kend);
    for (int r = 0; r < a.npairs; r += nslots) { /* block-uniform */
        const int p = r + p0;
        const bool valid = p < a.npairs;
        const T *r0 = nullptr, *r1 = nullptr;
        int seg = 0, base = 0, j = 0, half = 0;
        float a0 = 0.f, a1 = 0.f, unused = 0.f;
        if (valid) {
            dec_rows<T, MODE>(a, p, r0, r1, seg, base, j, half);
            int k = kbeg + lane * cu_vn<T>::n;
            if (!loaded) dec_load_chunks<T>(u0, u1, r0, r1, k, kend);
            loaded = false;
            for (;;) {
                dec_fma_chunks<T>(u0, u1, k, kend, xs, (const T *)nullptr, a0, a1, unused);
                k += U * STEP;
                if (k >= kend) {
                    if (p + nslots < a.npairs) { /* the next pair's first chunks, now */
                        const T *n0, *n1;
                        int sg, bs, jn, hf;
                        dec_rows<T, MODE>(a, p + nslots, n0, n1, sg, bs, jn, hf);
                        dec_load_chunks<T>(u0, u1, n0, n1, kbeg + lane * cu_vn<T>::n, kend);
                        loaded = true;
                    }
                    break;
                }
                dec_load_chunks<T>(u0, u1, r0, r1, k, kend);
            }
        }
        dec_reduce_pair(a0, a1, unused, a.ks, sub, red);
        if (valid && sub == 0 && lane == 0)
            dec_epilogue<T, MODE>(a, p, r1 != nullptr, seg, base, j, half, a0 * rstd, a1 * rstd);
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(ATT_THREADS, PK_BLOCKS_PER_SM) k_dec_step(dec_step_args s) {
    extern __shared__ __align__(16) float xs[]; /* a phase's input */
    __shared__ float red[PK_WARPS][3];
    __shared__ float red32[32];
    uint4 u0[DEC_UNROLL], u1[DEC_UNROLL];
    bool loaded = false;
    unsigned target = 0;
    const int pos = s.params[1];
    const T *row = (const T *)s.embed + (size_t)s.params[0] * s.C;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < s.C; i += gridDim.x * blockDim.x)
        s.x[i] = cu_to_f(row[i]);
    dec_phase_first<T, DEC_QKV>(s.ph[0], u0, u1, loaded);
    dec_grid_sync(s.bar, target);
    for (int l = 0; l < s.n_layers; l++) {
        const dec_gemv_args *P = s.ph + 4 * l;
        const T *kc = (const T *)P[0].kc, *vc = (const T *)P[0].vc;
        if ((int)blockIdx.x < s.Hq && blockIdx.x % s.G == 0)
            dec_attn_prefetch<T, D>(kc, vc, blockIdx.x / s.G, s.cap, pos);
        dec_phase<T, DEC_QKV>(P[0], xs, u0, u1, loaded, red, red32);
        dec_grid_sync(s.bar, target);
        for (int h = blockIdx.x; h < s.Hq; h += gridDim.x)
            dec_attn_head<T, D>(s.q, kc, vc, s.att, h, pos + 1, s.G, s.cap, s.scale_log2);
        dec_phase_first<T, DEC_RESID>(P[1], u0, u1, loaded);
        dec_grid_sync(s.bar, target);
        dec_phase<T, DEC_RESID>(P[1], xs, u0, u1, loaded, red, red32);
        dec_phase_first<T, DEC_SILU>(P[2], u0, u1, loaded);
        dec_grid_sync(s.bar, target);
        dec_phase<T, DEC_SILU>(P[2], xs, u0, u1, loaded, red, red32);
        dec_phase_first<T, DEC_RESID>(P[3], u0, u1, loaded);
        dec_grid_sync(s.bar, target);
        dec_phase<T, DEC_RESID>(P[3], xs, u0, u1, loaded, red, red32);
        if (l + 1 < s.n_layers)
            dec_phase_first<T, DEC_QKV>(P[4], u0, u1, loaded);
        else
            dec_phase_first<T, DEC_PLAIN>(P[4], u0, u1, loaded);
        dec_grid_sync(s.bar, target);
    }
    dec_phase<T, DEC_PLAIN>(s.ph[4 * s.n_layers], xs, u0, u1, loaded, red, red32);
}

/* ---- host side ----------------------------------------------------------------------- */

struct fe_cuda_decode {
    fe_cuda_decode_desc d;
    fe_cuda_decode_layer *layers;
    cu_dev *dev;
    void *block; /* one device allocation: x, q, att, h, logits, params, barrier, phases */
    size_t block_bytes;
    float *x, *q, *att, *h, *logits;
    int *params;
    unsigned *bar;          /* the persistent kernel's barrier counter */
    dec_gemv_args *phases;  /* its phases (4 per layer, then the LM head), on the device */
    int *params_host;   /* pinned: token, position, then the argmax read back */
    float *logits_host; /* pinned */
    bool pdl;          /* FE_DECODE_PDL=0 switches programmatic dependent launch off */
    int blocks_per_sm; /* matrix-vector grid cap (FE_DECODE_BLOCKS_PER_SM, default 4) */
    int max_blocks;    /* and in all (FE_DECODE_MAX_BLOCKS; tests make warps take many pairs) */
    int ksplit;        /* warps per row pair, 0 = chosen per product (FE_DECODE_KSPLIT) */
    bool persist;      /* one persistent kernel per token (FE_DECODE_PERSIST=0: chained) */
    unsigned pk_grid;  /* its blocks (all resident) */
    size_t pk_smem;    /* and its dynamic shared memory: the largest phase input */
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
    /* two warps per row pair, each over half of K, wherever a half keeps a full 32-lane
     * step: on an H200 (TinyLlama shape) that gave 1142 tokens/s against 1106 with one
     * warp, 973 with four, and 1109 choosing 2 or 4 by the number of pairs */
    const int vec = 16 / (int)sizeof(T);
    a.ks = e->ksplit ? e->ksplit : a.K / 2 >= 32 * vec ? 2 : 1;
    return dec_kernel(e, false, "decode matrix-vector kernel", k_dec_gemv<T, MODE>,
                      dec_grid(e, a.npairs * a.ks), DEC_THREADS, 0, a);
}

/* The matrix-vector products of layer l (QKV, output, gate/up, down: ph[0..3]) or, for
 * l = n_layers, the LM head (ph[0]); ks is the caller's to choose. */
static int dec_phases(const fe_cuda_decode *e, int64_t l, dec_gemv_args ph[4]) {
    const fe_cuda_decode_desc *d = &e->d;
    const int C = (int)d->dim, F = (int)d->ffn_dim, D = (int)d->head_dim, Hq = (int)d->n_heads,
              Hkv = (int)d->n_kv_heads;
    const float eps = (float)d->eps;
    for (int i = 0; i < 4; i++) {
        ph[i] = dec_gemv_args{};
        ph[i].params = e->params;
    }
    if (l == d->n_layers) {
        int V = (int)d->vocab;
        ph[0].w[0] = d->lm_head, ph[0].K = C, ph[0].n = V, ph[0].npairs = (V + 1) / 2;
        ph[0].x = e->x, ph[0].g = d->final_norm, ph[0].eps = eps, ph[0].out = e->logits;
        return 1;
    }
    const fe_cuda_decode_layer *L = &e->layers[l];
    dec_gemv_args *a = &ph[0];
    a->w[0] = L->wq, a->w[1] = L->wk, a->w[2] = L->wv;
    a->K = C, a->npairs = (Hq + 2 * Hkv) * (D / 2), a->x = e->x, a->g = L->ln_attn, a->eps = eps;
    a->out = e->q, a->kc = L->k_cache, a->vc = L->v_cache, a->inv_freq = d->inv_freq;
    a->D = D, a->Hq = Hq, a->Hkv = Hkv, a->cap = (int)d->capacity;
    a = &ph[1];
    a->w[0] = L->wo, a->K = Hq * D, a->n = C, a->npairs = (C + 1) / 2, a->x = e->att, a->out = e->x;
    a = &ph[2];
    a->w[0] = L->w_gate, a->w[1] = L->w_up, a->K = C, a->npairs = F, a->x = e->x;
    a->g = L->ln_mlp, a->eps = eps, a->out = e->h;
    a = &ph[3];
    a->w[0] = L->w_down, a->K = F, a->n = C, a->npairs = (C + 1) / 2, a->x = e->h, a->out = e->x;
    return 4;
}

/* Queue one token step on the engine's stream (captured into the graph): a chain of
 * kernels per layer. */
template <typename T> static fe_status dec_enqueue_chained(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    const int C = (int)d->dim, D = (int)d->head_dim, Hq = (int)d->n_heads,
              Hkv = (int)d->n_kv_heads;
    const float sl2 = (float)(1.4426950408889634 / sqrt((double)D));
    fe_status st = dec_kernel(e, true, "decode embedding kernel", k_dec_embed<T>,
                              (unsigned)(C + 255) / 256, 256, 0, e->x, (const T *)d->embed,
                              (const int *)e->params, C);
    for (int64_t l = 0; l < d->n_layers && !st; l++) {
        const fe_cuda_decode_layer *L = &e->layers[l];
        dec_gemv_args ph[4];
        dec_phases(e, l, ph);
        st = dec_launch<T, DEC_QKV>(e, ph[0]);
        if (!st)
            st = dec_kernel(e, false, "decode attention kernel",
                            D == 64 ? k_dec_attn<T, 64> : k_dec_attn<T, 128>, (unsigned)Hq,
                            ATT_THREADS, 0, (const float *)e->q, (const T *)L->k_cache,
                            (const T *)L->v_cache, e->att, (const int *)e->params, Hq / Hkv,
                            (int)d->capacity, sl2);
        if (!st) st = dec_launch<T, DEC_RESID>(e, ph[1]);
        if (!st) st = dec_launch<T, DEC_SILU>(e, ph[2]);
        if (!st) st = dec_launch<T, DEC_RESID>(e, ph[3]);
    }
    if (!st) {
        dec_gemv_args ph[4];
        dec_phases(e, d->n_layers, ph);
        st = dec_launch<T, DEC_PLAIN>(e, ph[0]);
    }
    return st;
}

template <typename T> static void (*dec_step_kernel(int D))(dec_step_args) {
    return D == 64 ? k_dec_step<T, 64> : k_dec_step<T, 128>;
}

/* Size the persistent kernel's grid (every block resident, at most PK_BLOCKS_PER_SM per
 * SM); false when it cannot run here (then the chain is used). */
template <typename T> static bool dec_persist_plan(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    int64_t kmax = d->dim > d->ffn_dim ? d->dim : d->ffn_dim;
    if (d->n_heads * d->head_dim > kmax) kmax = d->n_heads * d->head_dim;
    e->pk_smem = (size_t)kmax * sizeof(float);
    void (*k)(dec_step_args) = dec_step_kernel<T>((int)d->head_dim);
    int occ = 0, coop = 0;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, e->dev->index) != cudaSuccess ||
        !coop || cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)e->pk_smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, ATT_THREADS, e->pk_smem) !=
            cudaSuccess ||
        occ < 1) {
        cudaGetLastError(); /* not an error of the engine: it falls back */
        return false;
    }
    int g = e->dev->sm_count * (occ < PK_BLOCKS_PER_SM ? occ : PK_BLOCKS_PER_SM);
    if (e->max_blocks > 0 && g > e->max_blocks) g = e->max_blocks;
    e->pk_grid = (unsigned)g;
    return true;
}

/* The persistent kernel's phases, with ks chosen for its grid, copied to the device. */
template <typename T> static fe_status dec_persist_setup(fe_cuda_decode *e) {
    const int64_t n = 4 * e->d.n_layers + 1;
    dec_gemv_args *ph = (dec_gemv_args *)malloc((size_t)(n + 3) * sizeof *ph);
    if (!ph) return fe_set_error(FE_ERR_OOM, "decode engine: out of host memory");
    const int vec = 16 / (int)sizeof(T), warps = (int)e->pk_grid * PK_WARPS;
    for (int64_t l = 0; l <= e->d.n_layers; l++) {
        int np = dec_phases(e, l, ph + 4 * l);
        for (int i = 0; i < np; i++) { /* the most warps per pair (1, 2, 4) that keeps
                                        * every pair in one round of the grid's warps */
            dec_gemv_args *a = &ph[4 * l + i];
            a->ks = 1;
            while (!e->ksplit && a->ks < 4 && a->npairs * a->ks * 2 <= warps &&
                   a->K / (a->ks * 2) >= 32 * vec)
                a->ks *= 2;
            if (e->ksplit) a->ks = e->ksplit;
        }
    }
    fe_status st = cu_check(cudaMemcpy(e->phases, ph, (size_t)n * sizeof *ph,
                                       cudaMemcpyHostToDevice),
                            "decode: phase upload");
    free(ph);
    return st;
}

template <typename T> static fe_status dec_enqueue_persistent(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    dec_step_args s = {};
    s.ph = e->phases, s.n_layers = (int)d->n_layers, s.Hq = (int)d->n_heads;
    s.G = (int)(d->n_heads / d->n_kv_heads), s.cap = (int)d->capacity, s.C = (int)d->dim;
    s.scale_log2 = (float)(1.4426950408889634 / sqrt((double)d->head_dim));
    s.embed = d->embed, s.x = e->x, s.q = e->q, s.att = e->att, s.params = e->params;
    s.bar = e->bar;
    fe_status st = cu_check(cudaMemsetAsync(e->bar, 0, sizeof(unsigned), e->dev->stream),
                            "decode: barrier reset");
    if (st) return st;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeCooperative;
    at[0].val.cooperative = 1;
    cfg.gridDim = dim3(e->pk_grid), cfg.blockDim = dim3(ATT_THREADS);
    cfg.dynamicSmemBytes = e->pk_smem, cfg.stream = e->dev->stream;
    cfg.attrs = at, cfg.numAttrs = 1;
    return cu_check(cudaLaunchKernelEx(&cfg, dec_step_kernel<T>((int)d->head_dim), s),
                    "decode persistent kernel");
}

template <typename T> static fe_status dec_enqueue(fe_cuda_decode *e) {
    fe_status st = e->persist ? dec_enqueue_persistent<T>(e) : dec_enqueue_chained<T>(e);
    if (!st)
        st = dec_kernel(e, e->persist, "decode argmax kernel", k_dec_argmax, 1, 1024, 0,
                        (const float *)e->logits, (int)e->d.vocab, e->params + 2);
    return st;
}

/* Choose the design and, for the persistent kernel, its grid and phases. */
template <typename T> static fe_status dec_prepare(fe_cuda_decode *e) {
    if (e->persist) e->persist = dec_persist_plan<T>(e);
    return e->persist ? dec_persist_setup<T>(e) : FE_OK;
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
    const char *per = getenv("FE_DECODE_PERSIST");
    e->persist = !(per && !strcmp(per, "0"));
    /* f32 activations, each start rounded up to 16 floats; 16 ints (params, the barrier
     * counter at 8); the persistent kernel's phases */
    size_t QD = (size_t)(d->n_heads * d->head_dim), r16 = 16;
    size_t nx = (d->dim + r16 - 1) / r16 * r16, nq = (QD + r16 - 1) / r16 * r16,
           nh = (d->ffn_dim + r16 - 1) / r16 * r16, nl = (d->vocab + r16 - 1) / r16 * r16;
    e->block_bytes = (nx + 2 * nq + nh + nl) * sizeof(float) + 16 * sizeof(int) +
                     (size_t)(4 * d->n_layers + 1) * sizeof(dec_gemv_args);
    fe_status st = fe_cuda_alloc((fe_device){FE_CUDA, d->device}, e->block_bytes, &e->block);
    if (st) {
        e->block = NULL;
        fe_cuda_decode_free(e);
        return NULL;
    }
    e->x = (float *)e->block;
    e->q = e->x + nx, e->att = e->q + nq, e->h = e->att + nq, e->logits = e->h + nh;
    e->params = (int *)(e->logits + nl);
    e->bar = (unsigned *)(e->params + 8);
    e->phases = (dec_gemv_args *)(e->params + 16);
    st = cu_check(cudaMallocHost((void **)&e->params_host, 16 * sizeof(int)), "cudaMallocHost");
    if (!st)
        st = cu_check(cudaMallocHost((void **)&e->logits_host, (size_t)d->vocab * sizeof(float)),
                      "cudaMallocHost");
    if (!st) st = cu_check(cudaMemsetAsync(e->block, 0, e->block_bytes, dv->stream), "cudaMemset");
    if (!st) st = cu_check(cudaStreamSynchronize(dv->stream), "cudaStreamSynchronize");
    if (!st)
        st = d->dtype == FE_BF16  ? dec_prepare<__nv_bfloat16>(e)
             : d->dtype == FE_F16 ? dec_prepare<__half>(e)
                                  : dec_prepare<float>(e);
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
