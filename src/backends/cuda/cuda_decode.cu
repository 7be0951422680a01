/* Batch-1 decode engine (see cuda_decode.h): fused matrix-vector kernels with the
 * neighbouring row work in their prologue and epilogue, an attention kernel that
 * reads the KV cache in place, all captured once into a CUDA graph. (FE_DECODE_PERSIST=1
 * captures one persistent kernel per token instead: "the persistent decoder" below.)
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
 * shared memory at the end. A thread requests its first DEC_ATT_VPF value rows of a
 * chunk before the scores, which they do not depend on, and (head dim 64 in bf16/f16) its
 * first key row with them, before it reads q. */
#include "backends/cuda/cuda_decode.h"
#include "backends/cuda/cuda_internal.cuh"

#include <math.h>

enum { DEC_THREADS = 128, DEC_WARPS = 4, DEC_CHUNK = 512, ATT_THREADS = 256, DEC_ATT_VPF = 16,
       DEC_UNROLL = 8, DEC_AHEAD = 3, DEC_RING = 8 };
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

/* ask L2 for the 128-byte line at p */
__device__ __forceinline__ void dec_prefetch_l2(const void *p) {
#ifdef __CUDA_ARCH__
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#else
    (void)p;
#endif
}

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
/* Kept to 128 bytes: the same kernels with one more int in here (136 bytes) decoded 5.5% slower
 * on an H200, in graphs with programmatic dependent launch; and a __constant__ variable in this
 * file, merely set once, cost 3.5% (bench/RESULTS.md, ninth session). */
static_assert(sizeof(dec_gemv_args) <= 128, "decode matrix-vector arguments past 128 bytes");

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
/* The step's argmax to params[2]; when the host asked for device feedback (params[3], greedy
 * runs of fe_cuda_decode_greedy) it is also the next step's token at the next position, and
 * goes straight to the host's ring of tokens (mapped pinned memory) at slot params[4]. */
__device__ __forceinline__ void dec_publish_top(int *params, int *tops, int top) {
    params[2] = top;
    if (params[3]) {
        params[0] = top, params[1] += 1;
        tops[params[4] % DEC_RING] = top;
        params[4] += 1;
    }
}

__global__ void __launch_bounds__(1024) k_dec_argmax(const float *x, int n, int *params,
                                                     int *tops) {
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
        dec_publish_top(params, tops, i < n ? i : 0);
    }
}

/* The attention of one query head over cached positions 0..L-1 by the NT threads of a block:
 * qs (D floats in shared memory, scaled by scale * log2 e) against the key rows Kh, softmax
 * online across chunks of up to DEC_CHUNK positions (scores in sc) in base 2, the value rows
 * accumulated by (16-byte column chunk, position group) threads; each thread's first VPF value
 * rows of a chunk are requested before its scores (one to two fewer L2 round trips after the
 * softmax: +1.9% tokens/s on an H200 with 16), the rest four at a time after. With qsrc, qs is
 * filled here (qsrc times qscale) once the first chunk's first key row (where it fits in
 * registers) and value rows are requested, so q's round trip overlaps theirs (+0.6% on an H200,
 * tenth session). Leaves the running max m and
 * sum l in every thread and each group's unnormalised sums in part[group][D] (NT / (D / V)
 * groups), followed by a barrier. red holds 32 floats. */
template <typename T, int D, int NT, int VPF>
__device__ __forceinline__ void dec_attn_core(float *qs, const T *Kh, const T *Vh, int L,
                                              float *sc, float *red, float *part, float &m,
                                              float &l, const float *qsrc = nullptr,
                                              float qscale = 1.f) {
    constexpr int V = cu_vn<T>::n, NC = D / V, NG = NT / NC;
    /* a thread's first key row is requested with its value rows where its registers allow
     * (key rows of up to 128 bytes; longer ones spilled) */
    constexpr bool EARLY = NC <= 8;
    const int tid = threadIdx.x, col = tid % NC, grp = tid / NC;
    float acc[V];
    m = -INFINITY, l = 0.f;
#pragma unroll
    for (int e = 0; e < V; e++)
        acc[e] = 0.f;
    for (int c0 = 0; c0 < L; c0 += DEC_CHUNK) {
        const int n = L - c0 < DEC_CHUNK ? L - c0 : DEC_CHUNK;
        uint4 vp[VPF > 0 ? VPF : 1]; /* the thread's first VPF value rows, before the scores */
#pragma unroll
        for (int i = 0; i < VPF; i++)
            vp[i] = grp + i * NG < n ? cu_ld16(Vh + (size_t)(c0 + grp + i * NG) * D + col * V)
                                     : make_uint4(0, 0, 0, 0);
        uint4 u[NC]; /* the key row of the thread's position */
        if (EARLY && tid < n)
#pragma unroll
            for (int c = 0; c < NC; c++)
                u[c] = cu_ld16(Kh + (size_t)(c0 + tid) * D + c * V);
        if (qsrc && c0 == 0) { /* q to shared memory while those loads are in flight */
            for (int i = tid; i < D; i += NT)
                qs[i] = qsrc[i] * qscale;
            __syncthreads();
        }
        float lmax = -INFINITY;
        for (int t = tid; t < n; t += NT) { /* a thread per position: q . k */
            if (!EARLY || t != tid)
#pragma unroll
                for (int c = 0; c < NC; c++)
                    u[c] = cu_ld16(Kh + (size_t)(c0 + t) * D + c * V);
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
        for (int t = tid; t < n; t += NT) {
            float pr = exp2f(sc[t] - mn);
            sc[t] = pr;
            ls += pr;
        }
        l = l * corr + cu_block_sum(ls, red); /* its barriers publish sc */
        m = mn;
#pragma unroll
        for (int e = 0; e < V; e++)
            acc[e] *= corr;
#pragma unroll
        for (int i = 0; i < VPF; i++) {
            if (grp + i * NG >= n) break;
            float f[V], pr = sc[grp + i * NG];
            cu_vunpack<T>(vp[i], f);
#pragma unroll
            for (int e = 0; e < V; e++)
                acc[e] = fmaf(pr, f[e], acc[e]);
        }
        int t = grp + VPF * NG; /* the rest of p . v: four value rows in flight per thread */
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
        part[grp * D + col * V + e] = acc[e];
    __syncthreads();
}

/* out (Hq, D) = softmax(q k^T * scale) v over cached positions 0..pos, q (Hq, D) f32 */
template <typename T, int D>
__global__ void __launch_bounds__(ATT_THREADS)
    k_dec_attn(const float *q, const T *kc, const T *vc, float *out, const int *params, int G,
               int cap, float scale_log2) {
    constexpr int NG = ATT_THREADS / (D / cu_vn<T>::n);
    __shared__ __align__(16) float qs[D];
    __shared__ float sc[DEC_CHUNK];
    __shared__ float red[32];
    __shared__ float part[NG * D];
    if (blockIdx.x % G == 0) { /* once per KV head: the cached rows before this step's to L2
                                * while the projection still runs (params is set before the
                                * graph starts; row pos is the projection's to write) */
        const char *kr = (const char *)(kc + (size_t)(blockIdx.x / G) * cap * D);
        const char *vr = (const char *)(vc + (size_t)(blockIdx.x / G) * cap * D);
        const int bytes = params[1] * D * (int)sizeof(T);
        for (int o = (int)threadIdx.x * 128; o < bytes; o += ATT_THREADS * 128)
            dec_prefetch_l2(kr + o), dec_prefetch_l2(vr + o);
    }
    dec_wait_prev();
    dec_launch_next();
    const int h = blockIdx.x, tid = threadIdx.x;
    float m, l; /* q is read inside, once the first key and value rows are requested */
    dec_attn_core<T, D, ATT_THREADS, DEC_ATT_VPF>(qs, kc + (size_t)(h / G) * cap * D,
                                     vc + (size_t)(h / G) * cap * D, params[1] + 1, sc, red, part,
                                     m, l, q + h * D, scale_log2);
    /* the groups' sums: R adjacent threads a column, each over every R-th group, then added
     * across the R lanes (a fixed order) */
    constexpr int R = ATT_THREADS / D;
    static_assert(R >= 1 && R <= 32 && (R & (R - 1)) == 0 && NG % R == 0, "attention reduction");
    float s = 0.f;
    for (int g = tid % R; g < NG; g += R)
        s += part[g * D + tid / R];
#pragma unroll
    for (int o = 1; o < R; o <<= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (tid % R == 0) out[h * D + tid / R] = s / l;
}

/* ---- the persistent decoder ------------------------------------------------------------ */

/* One cooperative kernel runs a whole token step (k_dec_mega): one block of MK_THREADS
 * threads per SM, grid barriers between the phases that depend on each other (embedding |
 * per layer QKV | attention | output | gate/up | down | then the LM head and the argmax).
 *
 * What the chained kernels could not do is keep memory busy across a dependency: each
 * kernel's loads start only when a predecessor's block leaves its SM. Here every block
 * owns a fixed slice of every matrix-vector phase (contiguous output rows, the same share
 * of each phase's weights), and within the block each warp owns rows w, w + MK_WARPS, ...
 * of the slice. A warp streams its rows of all the phases of the token, in order, through
 * its own ring of a->ns slots of shared memory (MK_SLOT bytes each: a row is cut into
 * slot-sized chunks, the last one partial) filled by cp.async. A slot is consumed only
 * when its phase's input is ready, but the copies never wait for anything but a free
 * slot: while a block waits at a barrier, or works on attention, up to ns slots of the
 * following phases' weights per warp keep arriving. Each lane reads back only the 16-byte
 * pieces it copied itself, so the stream needs no barrier of any kind.
 *
 * A lane adds its pieces of a row (times the phase's input in shared memory, itself times
 * the norm weight where the phase has a norm) in order, the warp sums its lanes, and the
 * row's sum waits in shared memory (fin) for the end of the phase, when the block writes
 * its outputs: q, k, v unrotated; the residual adds; SiLU(gate) * up; the logits and the
 * block's argmax. Every sum is made in the same order on every run. Attention (one block
 * per query head) rotates q and the new k itself, and the first head of each KV head
 * appends the new k and v to the caches. */
enum { MK_THREADS = 512, MK_WARPS = MK_THREADS / 32, MK_VPL = 4, MK_SLOT = 32 * 16 * MK_VPL,
       MK_NS_MAX = 8 };

struct mk_phase {
    const void *w[3]; /* row segments: QKV q, k, v; SILU gate, up; else w[0] */
    int seg_end[3];   /* QKV: the rows before the end of each segment */
    int mode, K, items; /* items: output rows (SILU: gate/up pairs) */
    const float *x;   /* input (K) */
    const void *g;    /* RMSNorm weight (K) or NULL */
    float *out;
};

struct mk_args {
    const mk_phase *ph;     /* per layer QKV, output, gate/up, down; then the LM head */
    void *const *kc, *const *vc; /* per layer caches (Hkv, cap, D) */
    int n_layers, Hq, Hkv, cap, C, vocab, ns;
    size_t work_bytes;      /* shared memory for a phase's input or attention */
    int fin_n;              /* finished row sums a phase's slice needs at most */
    float eps, scale_log2;
    const void *embed;
    const float *inv_freq;
    float *x, *qkv, *att, *logits, *argv;
    int *params, *argi;     /* token, position, argmax, feedback, step; per block argmax */
    int *tops;              /* the host's ring of greedy tokens (mapped) */
    unsigned *sync;         /* grid barrier arrivals, argmax tickets (zeroed before each launch) */
    unsigned long long *trace; /* NULL, or per block and barrier: arrival, departure, and in the
                                * phase before it: input staged, rows done (ns) */
};

/* The persistent kernel's shared memory for a shape on `grid` blocks: each warp's ring slots
 * (a->ns, at most MK_NS_MAX), the work area (a->work_bytes: the longest phase input or
 * attention's scratch) and the finished-row sums (a->fin_n: the most rows of any phase's
 * slice); false when fewer than 2 slots a warp fit in dev_smem bytes. */
template <typename T>
static bool mk_layout(int64_t C, int64_t F, int64_t Hq, int64_t Hkv, int64_t D, int64_t vocab,
                      unsigned grid, int dev_smem, mk_args *a, size_t *smem) {
    const int64_t V = cu_vn<T>::n, QD = Hq * D;
    int64_t kmax = C > F ? C : F;
    if (QD > kmax) kmax = QD;
    const int64_t att = 3 * D + DEC_CHUNK + (MK_THREADS / (D / V)) * D;
    const int64_t work = ((kmax > att ? kmax : att) * 4 + 15) / 16 * 16;
    const int64_t rows[5] = {(Hq + 2 * Hkv) * D, C, F, C, vocab};
    int64_t fin = 0;
    for (int i = 0; i < 5; i++) {
        int64_t r = (rows[i] + grid - 1) / grid * (i == 2 ? 2 : 1); /* gate and up rows */
        if (r > fin) fin = r;
    }
    fin = (fin + 3) / 4 * 4;
    const int64_t other = work + (fin + 32 + 1 + MK_WARPS + 3) * 4;
    int64_t ns = ((int64_t)dev_smem - other) / ((int64_t)MK_WARPS * MK_SLOT);
    if (ns > MK_NS_MAX) ns = MK_NS_MAX;
    if (ns < 2) return false;
    a->ns = (int)ns, a->work_bytes = (size_t)work, a->fin_n = (int)fin;
    *smem = (size_t)(ns * MK_WARPS * MK_SLOT + other);
    return true;
}

/* A block's slice of a phase: items [i0, i0 + n) as `rows` rows of rb bytes (SILU: gate and up
 * rows of each item), each cut into cpr slot-sized chunks; nk of them are this warp's. */
struct mk_geo {
    int i0, n, rows, rb, cpr, nk;
};
template <typename T> __device__ __forceinline__ mk_geo mk_geom(const mk_phase &p) {
    mk_geo g;
    g.i0 = (int)((long long)blockIdx.x * p.items / gridDim.x);
    g.n = (int)((long long)(blockIdx.x + 1) * p.items / gridDim.x) - g.i0;
    g.rows = p.mode == DEC_SILU ? 2 * g.n : g.n;
    g.rb = p.K * (int)sizeof(T);
    g.cpr = (g.rb + MK_SLOT - 1) / MK_SLOT;
    const int w = threadIdx.x >> 5;
    g.nk = g.rows > w ? (g.rows - w + MK_WARPS - 1) / MK_WARPS : 0;
    return g;
}

/* The weights of row r of the slice. */
template <typename T>
__device__ __forceinline__ const char *mk_row(const mk_phase &p, const mk_geo &g, int r) {
    if (p.mode == DEC_SILU)
        return (const char *)p.w[r & 1] + (size_t)(g.i0 + (r >> 1)) * g.rb;
    int gr = g.i0 + r, s = 0;
    if (p.mode == DEC_QKV) {
        s = gr < p.seg_end[0] ? 0 : gr < p.seg_end[1] ? 1 : 2;
        gr -= s ? p.seg_end[s - 1] : 0;
    }
    return (const char *)p.w[s] + (size_t)gr * g.rb;
}

/* cp.async of 16 bytes global -> shared, groups, and waiting for all but the newest n. */
__device__ __forceinline__ void mk_cp16(void *dst, const void *src) {
#ifdef __CUDA_ARCH__
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#elif defined(FE_CUDA_EMU)
    emu::cp_async16(dst, src);
#else
    (void)dst, (void)src;
#endif
}
__device__ __forceinline__ void mk_commit() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FE_CUDA_EMU)
    emu::cp_async_commit();
#endif
}
__device__ __forceinline__ void mk_wait_all_but(int n) {
#ifdef __CUDA_ARCH__
    switch (n) { /* the count is an immediate */
#define MK_WAIT_CASE(k)                                                                        \
    case k: asm volatile("cp.async.wait_group " #k ";\n" ::: "memory"); break;
        MK_WAIT_CASE(0) MK_WAIT_CASE(1) MK_WAIT_CASE(2) MK_WAIT_CASE(3) MK_WAIT_CASE(4)
        MK_WAIT_CASE(5) MK_WAIT_CASE(6)
#undef MK_WAIT_CASE
    default: asm volatile("cp.async.wait_group 7;\n" ::: "memory");
    }
#elif defined(FE_CUDA_EMU)
    emu::cp_async_wait(n);
#else
    (void)n;
#endif
}

/* nanoseconds of the GPU's global timer (FE_DECODE_TRACE) */
__device__ __forceinline__ unsigned long long mk_now() {
    unsigned long long t = 0;
#ifdef __CUDA_ARCH__
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
#endif
    return t;
}

/* FE_DECODE_TRACE: events a token step records per block: the barrier after the embedding,
 * five per layer (after QKV, attention, output, gate/up, down), and the end of the LM head;
 * each event holds 4 times (ns): arrival at and departure from its barrier, and within the
 * phase before it, when the input was staged and when the rows were done. */
__host__ __device__ __forceinline__ int mk_events(int n_layers) { return 5 * n_layers + 2; }

/* thread 0 records, with a trace buffer, time point w (0..3) of event ev */
__device__ __forceinline__ void mk_mark(const mk_args &a, int ev, int w) {
    if (a.trace && threadIdx.x == 0)
        a.trace[((size_t)blockIdx.x * mk_events(a.n_layers) + ev) * 4 + w] = mk_now();
}

/* Grid-wide barrier: every block's writes before it are visible to every block after it.
 * target counts the arrivals expected so far (the same in every block); the barrier is event
 * target / grid - 1 of the trace. */
__device__ __forceinline__ void mk_grid_sync(const mk_args &a, unsigned &target) {
    target += gridDim.x;
    const int ev = (int)(target / gridDim.x) - 1;
#ifdef __CUDA_ARCH__
    __syncthreads();
    if (threadIdx.x == 0) {
        mk_mark(a, ev, 0);
        __threadfence();
        atomicAdd(a.sync, 1u);
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(a.sync) : "memory");
        } while (v < target);
        mk_mark(a, ev, 1);
    }
    __syncthreads();
#else
    (void)a, (void)ev;
#ifdef FE_CUDA_EMU
    emu::grid_sync();
#endif
#endif
}

/* A warp's weight stream: the next chunk to request (phase ph, the warp's row k of its slice,
 * chunk c of the row, whose weights start at row), and the ring slot it goes to. */
struct mk_stream {
    int ph, k, c, slot;
    mk_geo g;
    const char *row;
};

/* Request the next chunk of the warp's stream into its ring slot (nothing past the last
 * phase), and close the lane's copy group: one group per call, so that waiting for all but the
 * newest ns - 1 groups means the oldest chunk requested has landed. Lane l copies the
 * 16-byte pieces l, l + 32, ... of the chunk. */
template <typename T>
__device__ __forceinline__ void mk_request(const mk_args &a, mk_stream &s, unsigned char *ring) {
    const int nph = 4 * a.n_layers + 1, lane = threadIdx.x & 31;
    while (s.ph < nph && s.k >= s.g.nk) {
        s.ph++, s.k = 0, s.c = 0;
        if (s.ph < nph) s.g = mk_geom<T>(a.ph[s.ph]);
    }
    if (s.ph < nph) {
        if (s.c == 0) s.row = mk_row<T>(a.ph[s.ph], s.g, (threadIdx.x >> 5) + s.k * MK_WARPS);
        unsigned char *dst = ring + (size_t)s.slot * MK_SLOT;
#pragma unroll
        for (int i = 0; i < MK_VPL; i++) {
            const int o = (i * 32 + lane) * 16, byte = s.c * MK_SLOT + o;
            if (byte < s.g.rb) mk_cp16(dst + o, s.row + byte);
        }
        if (++s.c == s.g.cpr) s.c = 0, s.k++;
        s.slot = s.slot + 1 == a.ns ? 0 : s.slot + 1;
    }
    mk_commit();
}

/* Shared memory of the kernel beyond the rings. */
struct mk_smem {
    unsigned char *ring; /* this warp's */
    float *work;         /* a phase's input; attention's scratch */
    float *fin;          /* finished row sums of the phase's slice */
    float *red;
    int *flag;
};

/* One matrix-vector phase (block-uniform): stage the input, consume the warp's chunks from its
 * ring (requesting one more for each), then write the outputs. Returns the block's 1/rms. */
template <typename T>
__device__ float mk_gemv(const mk_args &a, const mk_phase &p, mk_stream &s, int &slot,
                         const mk_smem &sm, int ev) {
    constexpr int V = cu_vn<T>::n;
    const mk_geo g = mk_geom<T>(p);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const T *gw = (const T *)p.g;
    float ss = 0.f;
    for (int i = tid * 4; i < p.K; i += MK_THREADS * 4) {
        float4 v = __ldcg(reinterpret_cast<const float4 *>(p.x + i));
        if (gw) {
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            v.x *= cu_to_f(gw[i]), v.y *= cu_to_f(gw[i + 1]);
            v.z *= cu_to_f(gw[i + 2]), v.w *= cu_to_f(gw[i + 3]);
        }
        *reinterpret_cast<float4 *>(sm.work + i) = v;
    }
    /* one barrier publishes the input and the warps' sums of squares; each warp adds those
     * in the same order */
    ss = cu_warp_sum(ss);
    if (lane == 0) sm.red[warp] = ss;
    __syncthreads();
    float rstd = 1.f;
    if (gw) {
        ss = cu_warp_sum(lane < MK_WARPS ? sm.red[lane] : 0.f);
        rstd = rsqrtf(ss / (float)p.K + a.eps);
    }
    mk_mark(a, ev, 2);
    for (int k = 0; k < g.nk; k++) {
        float acc[MK_VPL]; /* one chain of sums per piece of a chunk */
#pragma unroll
        for (int i = 0; i < MK_VPL; i++)
            acc[i] = 0.f;
        for (int c = 0; c < g.cpr; c++) {
            mk_wait_all_but(a.ns - 1); /* this lane's pieces of the chunk have landed */
            const unsigned char *sb = sm.ring + (size_t)slot * MK_SLOT;
#pragma unroll
            for (int i = 0; i < MK_VPL; i++) {
                const int o = (i * 32 + lane) * 16, byte = c * MK_SLOT + o;
                if (byte < g.rb) {
                    float w[V];
                    cu_vunpack<T>(*(const uint4 *)(sb + o), w);
                    const float *xv = sm.work + byte / (int)sizeof(T);
#pragma unroll
                    for (int e = 0; e < V; e++)
                        acc[i] = fmaf(w[e], xv[e], acc[i]);
                }
            }
            mk_request<T>(a, s, sm.ring); /* the slot is read: refill it */
            slot = slot + 1 == a.ns ? 0 : slot + 1;
        }
        float t = 0.f;
#pragma unroll
        for (int i = 0; i < MK_VPL; i++)
            t += acc[i];
        t = cu_warp_sum(t);
        if (lane == 0) sm.fin[warp + k * MK_WARPS] = t;
    }
    __syncthreads(); /* fin is complete */
    mk_mark(a, ev, 3);
    if (p.mode == DEC_SILU) {
        for (int j = tid; j < g.n; j += MK_THREADS) {
            float gv = sm.fin[2 * j] * rstd, uv = sm.fin[2 * j + 1] * rstd;
            p.out[g.i0 + j] = gv / (1.f + __expf(-gv)) * uv;
        }
    } else {
        for (int r = tid; r < g.n; r += MK_THREADS) {
            if (p.mode == DEC_RESID)
                p.out[g.i0 + r] += sm.fin[r];
            else
                p.out[g.i0 + r] = sm.fin[r] * rstd;
        }
    }
    return rstd;
}

/* Attention of query head h at position pos (the block's threads): q and the new k rotated
 * here, the new k and v appended to the caches by the first head of each KV head, positions
 * before pos read from the caches and the new one merged in at the end. */
template <typename T, int D>
__device__ void mk_attn(const mk_args &a, int l, int h, int pos, const mk_smem &sm, int ev) {
    constexpr int NG = MK_THREADS / (D / cu_vn<T>::n), H2 = D / 2;
    const int tid = threadIdx.x, G = a.Hq / a.Hkv, kvh = h / G;
    float *qs = sm.work, *kn = qs + D, *vn = kn + D, *sc = vn + D, *part = sc + DEC_CHUNK;
    const float *q = a.qkv + (size_t)h * D, *k = a.qkv + (size_t)(a.Hq + kvh) * D;
    const float *v = a.qkv + (size_t)(a.Hq + a.Hkv + kvh) * D;
    T *Kh = (T *)a.kc[l] + (size_t)kvh * a.cap * D, *Vh = (T *)a.vc[l] + (size_t)kvh * a.cap * D;
    for (int j = tid; j < H2; j += MK_THREADS) { /* rotate-half RoPE, the f32 angle of the rope op */
        float ang = __fmul_rn(__int2float_rn(pos), a.inv_freq[j]), sn, cs;
        sincosf(ang, &sn, &cs);
        float q0 = __ldcg(q + j), q1 = __ldcg(q + j + H2), k0 = __ldcg(k + j), k1 = __ldcg(k + j + H2);
        qs[j] = (q0 * cs - q1 * sn) * a.scale_log2;
        qs[j + H2] = (q1 * cs + q0 * sn) * a.scale_log2;
        T kr0 = cu_cast<T>(k0 * cs - k1 * sn), kr1 = cu_cast<T>(k1 * cs + k0 * sn);
        T v0 = cu_cast<T>(__ldcg(v + j)), v1 = cu_cast<T>(__ldcg(v + j + H2));
        kn[j] = cu_to_f(kr0), kn[j + H2] = cu_to_f(kr1);
        vn[j] = cu_to_f(v0), vn[j + H2] = cu_to_f(v1);
        if (h % G == 0) {
            T *kd = Kh + (size_t)pos * D, *vd = Vh + (size_t)pos * D;
            kd[j] = kr0, kd[j + H2] = kr1, vd[j] = v0, vd[j + H2] = v1;
        }
    }
    __syncthreads();
    mk_mark(a, ev, 2);
    float s = 0.f;
    for (int i = tid; i < D; i += MK_THREADS)
        s = fmaf(qs[i], kn[i], s);
    const float snew = cu_block_sum(s, sm.red);
    float m, lsum;
    dec_attn_core<T, D, MK_THREADS, 0>(qs, Kh, Vh, pos, sc, sm.red, part, m, lsum);
    const float mf = fmaxf(m, snew), co = exp2f(m - mf), pn = exp2f(snew - mf);
    for (int i = tid; i < D; i += MK_THREADS) {
        float t = 0.f;
        for (int gi = 0; gi < NG; gi++)
            t += part[gi * D + i];
        a.att[(size_t)h * D + i] = (t * co + pn * vn[i]) / (lsum * co + pn);
    }
    __syncthreads(); /* work is reused */
    mk_mark(a, ev, 3);
}

/* The LM head's block argmax (first index of the largest), then the last block to finish
 * reduces the blocks' answers (dec_publish_top). */
__device__ void mk_argmax(const mk_args &a, const mk_phase &p, float rstd, const mk_smem &sm,
                          int i0, int n) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, none = a.vocab;
    float v = -INFINITY;
    int i = none;
    for (int r = tid; r < n; r += MK_THREADS)
        dec_arg_take(v, i, sm.fin[r] * rstd, i0 + r, none);
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        dec_arg_take(v, i, v2, i2, none);
    }
    float *bv = sm.red;
    int *bi = sm.flag + 1;
    if (lane == 0) bv[warp] = v, bi[warp] = i;
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < MK_WARPS; w++)
            dec_arg_take(v, i, bv[w], bi[w], none);
        a.argv[blockIdx.x] = v, a.argi[blockIdx.x] = i;
        __threadfence();
        sm.flag[0] = atomicAdd(a.sync + 1, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    (void)p;
    if (!sm.flag[0] || warp != 0) return;
    __threadfence(); /* every block's answer, published before its ticket */
    v = -INFINITY, i = none;
    for (int b = lane; b < (int)gridDim.x; b += 32)
        dec_arg_take(v, i, __ldcg(a.argv + b), __ldcg(a.argi + b), none);
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        dec_arg_take(v, i, v2, i2, none);
    }
    if (lane == 0) dec_publish_top(a.params, a.tops, i < none ? i : 0);
}

template <typename T, int D>
__global__ void __launch_bounds__(MK_THREADS, 1) k_dec_mega(mk_args a) {
#ifdef __CUDA_ARCH__
    extern __shared__ __align__(16) unsigned char mk_buf[];
#elif defined(FE_CUDA_EMU)
    unsigned char *mk_buf = (unsigned char *)emu::dsmem();
#else
    unsigned char *mk_buf = nullptr;
#endif
    mk_smem sm;
    sm.ring = mk_buf + (size_t)(threadIdx.x >> 5) * a.ns * MK_SLOT;
    sm.work = (float *)(mk_buf + (size_t)a.ns * MK_WARPS * MK_SLOT);
    sm.fin = sm.work + a.work_bytes / sizeof(float);
    sm.red = sm.fin + a.fin_n;
    sm.flag = (int *)(sm.red + 32);
    mk_stream s;
    s.ph = 0, s.k = 0, s.c = 0, s.slot = 0, s.row = nullptr;
    s.g = mk_geom<T>(a.ph[0]);
    for (int i = 0; i < a.ns; i++) /* the first ns chunks, before anything else */
        mk_request<T>(a, s, sm.ring);
    int slot = 0;
    unsigned target = 0;
    const int pos = a.params[1];
    const T *row = (const T *)a.embed + (size_t)a.params[0] * a.C;
    for (int i = blockIdx.x * MK_THREADS + threadIdx.x; i < a.C; i += gridDim.x * MK_THREADS)
        a.x[i] = cu_to_f(row[i]);
    mk_grid_sync(a, target);
    for (int l = 0; l < a.n_layers; l++) {
        const mk_phase *P = a.ph + 4 * l;
        mk_gemv<T>(a, P[0], s, slot, sm, 1 + 5 * l);
        mk_grid_sync(a, target);
        for (int h = blockIdx.x; h < a.Hq; h += gridDim.x)
            mk_attn<T, D>(a, l, h, pos, sm, 2 + 5 * l);
        mk_grid_sync(a, target);
        for (int k = 1; k < 4; k++) {
            mk_gemv<T>(a, P[k], s, slot, sm, 2 + 5 * l + k);
            mk_grid_sync(a, target);
        }
    }
    const mk_phase &lm = a.ph[4 * a.n_layers];
    const int ev_end = mk_events(a.n_layers) - 1;
    const float rstd = mk_gemv<T>(a, lm, s, slot, sm, ev_end);
    const mk_geo g = mk_geom<T>(lm);
    mk_argmax(a, lm, rstd, sm, g.i0, g.n);
    mk_mark(a, ev_end, 0); /* the last event has no barrier: the block's end */
    mk_mark(a, ev_end, 1);
}

/* The persistent kernel's tables for the model d (host side, before they are uploaded): the
 * phases (4 per layer, then the LM head) over the activations x, qkv, att, h and logits, the
 * caches (keys of every layer, then values), and the arguments that follow from d. The
 * caller sets the table, params, tops, argmax and sync pointers. */
static inline void mk_fill(const fe_cuda_decode_desc *d, float *x, float *qkv, float *att,
                           float *h, float *logits, mk_args *a, mk_phase *ph, void **caches) {
    const int L = (int)d->n_layers, C = (int)d->dim, F = (int)d->ffn_dim, D = (int)d->head_dim;
    const int Hq = (int)d->n_heads, Hkv = (int)d->n_kv_heads;
    for (int l = 0; l < L; l++) {
        const fe_cuda_decode_layer *y = &d->layers[l];
        mk_phase *P = ph + 4 * l;
        P[0] = P[1] = P[2] = P[3] = mk_phase{};
        P[0].w[0] = y->wq, P[0].w[1] = y->wk, P[0].w[2] = y->wv;
        P[0].seg_end[0] = Hq * D, P[0].seg_end[1] = (Hq + Hkv) * D;
        P[0].seg_end[2] = (Hq + 2 * Hkv) * D;
        P[0].mode = DEC_QKV, P[0].K = C, P[0].items = (Hq + 2 * Hkv) * D;
        P[0].x = x, P[0].g = y->ln_attn, P[0].out = qkv;
        P[1].w[0] = y->wo, P[1].mode = DEC_RESID, P[1].K = Hq * D, P[1].items = C;
        P[1].x = att, P[1].out = x;
        P[2].w[0] = y->w_gate, P[2].w[1] = y->w_up, P[2].mode = DEC_SILU, P[2].K = C;
        P[2].items = F, P[2].x = x, P[2].g = y->ln_mlp, P[2].out = h;
        P[3].w[0] = y->w_down, P[3].mode = DEC_RESID, P[3].K = F, P[3].items = C;
        P[3].x = h, P[3].out = x;
        caches[l] = y->k_cache, caches[L + l] = y->v_cache;
    }
    mk_phase *lm = ph + 4 * L;
    *lm = mk_phase{};
    lm->w[0] = d->lm_head, lm->mode = DEC_PLAIN, lm->K = C, lm->items = (int)d->vocab;
    lm->x = x, lm->g = d->final_norm, lm->out = logits;
    a->n_layers = L, a->Hq = Hq, a->Hkv = Hkv, a->cap = (int)d->capacity, a->C = C;
    a->vocab = (int)d->vocab, a->eps = (float)d->eps;
    a->scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    a->embed = d->embed, a->inv_freq = d->inv_freq;
    a->x = x, a->qkv = qkv, a->att = att, a->logits = logits;
}

/* ---- host side ----------------------------------------------------------------------- */

struct fe_cuda_decode {
    fe_cuda_decode_desc d;
    fe_cuda_decode_layer *layers;
    cu_dev *dev;
    void *block; /* one device allocation: activations, params, the persistent kernel's tables */
    size_t block_bytes;
    float *x, *q, *att, *h, *logits, *qkv;
    int *params;
    /* the persistent kernel (FE_DECODE_PERSIST=1; by default the chained kernels) */
    bool persist;
    mk_args mk;       /* its arguments (device pointers into block) */
    unsigned mk_grid; /* blocks: one per SM (or FE_DECODE_MAX_BLOCKS) */
    size_t mk_smem;   /* dynamic shared memory per block */
    unsigned long long *trace; /* FE_DECODE_TRACE=1: the last step's barrier times (device) */
    int *params_host;   /* pinned: token, position, then the argmax read back */
    float *logits_host; /* pinned */
    bool pdl;          /* FE_DECODE_PDL=0 switches programmatic dependent launch off */
    int blocks_per_sm; /* matrix-vector grid cap (FE_DECODE_BLOCKS_PER_SM, default 4) */
    int max_blocks;    /* and in all (FE_DECODE_MAX_BLOCKS; tests make warps take many pairs) */
    int ksplit;        /* warps per row pair, 0 = 2 where K allows (FE_DECODE_KSPLIT) */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    int *tops_host, *tops_dev; /* pinned, mapped: greedy step i's argmax at i % DEC_RING */
    cudaEvent_t ev[DEC_RING];  /* greedy runs: step i has finished */
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

/* The most matrix-vector blocks a grid may have: blocks_per_sm a multiprocessor, at most
 * max_blocks. */
static int dec_block_cap(const fe_cuda_decode *e) {
    int cap = e->dev->sm_count * e->blocks_per_sm;
    return e->max_blocks > 0 && cap > e->max_blocks ? e->max_blocks : cap;
}

/* Blocks for npairs warp tasks: at most dec_block_cap, every warp the same count. */
static unsigned dec_grid(const fe_cuda_decode *e, int npairs) {
    const int cap = dec_block_cap(e);
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
    /* Two warps per row pair, each over half of K, wherever a half keeps a full 32-lane step
     * (on an H200, TinyLlama shape: 1142 tokens/s against 1106 with one warp everywhere, 973
     * with four); but one warp a pair where two would take two rounds of the grid's warps and
     * one takes one (the QKV product there: +0.9%, tenth session). */
    const int vec = 16 / (int)sizeof(T);
    a.ks = e->ksplit ? e->ksplit : a.K / 2 >= 32 * vec ? 2 : 1;
    const int warps = dec_block_cap(e) * DEC_WARPS;
    if (!e->ksplit && a.ks == 2 && a.npairs * 2 > warps && a.npairs <= warps) a.ks = 1;
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
                        (const float *)e->logits, (int)d->vocab, e->params, e->tops_dev);
    return st;
}

/* The persistent kernel's layout for this engine (ns, work_bytes, fin_n, the shared memory
 * and the grid), or false when one block per SM cannot hold it. */
template <typename T> static bool mk_plan(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    int dev_smem = 0;
    if (cudaDeviceGetAttribute(&dev_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, e->dev->index))
        return false;
    unsigned grid = (unsigned)e->dev->sm_count;
    if (e->max_blocks > 0 && grid > (unsigned)e->max_blocks) grid = (unsigned)e->max_blocks;
    if (!mk_layout<T>(d->dim, d->ffn_dim, d->n_heads, d->n_kv_heads, d->head_dim, d->vocab, grid,
                      dev_smem, &e->mk, &e->mk_smem))
        return false;
    const char *sl = getenv("FE_DECODE_SLOTS"); /* fewer ring slots a warp (experiments) */
    if (sl && atoi(sl) >= 2 && atoi(sl) < e->mk.ns) {
        e->mk_smem -= (size_t)(e->mk.ns - atoi(sl)) * MK_WARPS * MK_SLOT;
        e->mk.ns = atoi(sl);
    }
    e->mk_grid = grid;
    void (*k)(mk_args) = d->head_dim == 64 ? k_dec_mega<T, 64> : k_dec_mega<T, 128>;
    int occ = 0;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)e->mk_smem) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, MK_THREADS, e->mk_smem) || occ < 1) {
        cudaGetLastError();
        return false;
    }
    return true;
}

/* The phase table and the persistent kernel's arguments (the tables live in the engine's
 * device block at tab); false with the error set when the upload fails. */
template <typename T> static fe_status mk_tables(fe_cuda_decode *e, char *tab) {
    const fe_cuda_decode_desc *d = &e->d;
    const int L = (int)d->n_layers;
    const size_t nph = 4 * (size_t)L + 1;
    mk_phase *ph = (mk_phase *)calloc(nph, sizeof *ph);
    void **caches = (void **)malloc(2 * (size_t)L * sizeof(void *));
    if (!ph || !caches) {
        free(ph), free(caches);
        return fe_set_error(FE_ERR_OOM, "decode engine: out of host memory");
    }
    mk_args *a = &e->mk;
    mk_fill(d, e->x, e->qkv, e->att, e->h, e->logits, a, ph, caches);
    a->ph = (const mk_phase *)tab;
    a->kc = (void *const *)(tab + nph * sizeof(mk_phase));
    a->vc = a->kc + L;
    a->params = e->params, a->tops = e->tops_dev;
    char *rest = tab + nph * sizeof(mk_phase) + 2 * (size_t)L * sizeof(void *);
    rest = (char *)(((uintptr_t)rest + 15) / 16 * 16);
    a->argv = (float *)rest, a->argi = (int *)(a->argv + e->mk_grid);
    a->sync = (unsigned *)(a->argi + e->mk_grid);
    fe_status st = cu_check(cudaMemcpy(tab, ph, nph * sizeof(mk_phase), cudaMemcpyHostToDevice),
                            "decode: phase table upload");
    if (!st)
        st = cu_check(cudaMemcpy((void *)a->kc, caches, 2 * (size_t)L * sizeof(void *),
                                 cudaMemcpyHostToDevice),
                      "decode: cache table upload");
    free(ph), free(caches);
    return st;
}

/* Bytes of the persistent kernel's tables in the device block. */
static size_t mk_table_bytes(const fe_cuda_decode_desc *d, unsigned grid) {
    size_t L = (size_t)d->n_layers;
    return (4 * L + 1) * sizeof(mk_phase) + 2 * L * sizeof(void *) + 16 +
           (size_t)grid * (sizeof(float) + sizeof(int)) + 2 * sizeof(unsigned);
}

/* Queue one token step of the persistent kernel: clear its barrier and ticket counters, then
 * the cooperative launch. */
template <typename T> static fe_status mk_enqueue(fe_cuda_decode *e) {
    fe_status st = cu_check(cudaMemsetAsync(e->mk.sync, 0, 2 * sizeof(unsigned), e->dev->stream),
                            "decode: barrier reset");
    if (st) return st;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeCooperative;
    at[0].val.cooperative = 1;
    cfg.gridDim = dim3(e->mk_grid), cfg.blockDim = dim3(MK_THREADS);
    cfg.dynamicSmemBytes = e->mk_smem, cfg.stream = e->dev->stream;
    cfg.attrs = at, cfg.numAttrs = 1;
    void (*k)(mk_args) = e->d.head_dim == 64 ? k_dec_mega<T, 64> : k_dec_mega<T, 128>;
    return cu_check(cudaLaunchKernelEx(&cfg, k, e->mk), "decode persistent kernel");
}

/* The engine's device block (activations, params, the persistent kernel's tables), then the
 * token step captured into the graph: the persistent kernel where it fits (e->persist), else
 * the chained kernels. */
template <typename T> static fe_status dec_build(fe_cuda_decode *e) {
    const fe_cuda_decode_desc *d = &e->d;
    cudaStream_t s = e->dev->stream;
    if (e->persist && !mk_plan<T>(e))
        return fe_set_error(FE_ERR_SHAPE, "decode engine: FE_DECODE_PERSIST=1, but the persistent "
                                          "kernel does not fit this model on this device");
    /* f32 activations, each start rounded up to 16 floats */
    size_t QD = (size_t)(d->n_heads * d->head_dim), r16 = 16;
    size_t QKV = (size_t)((d->n_heads + 2 * d->n_kv_heads) * d->head_dim);
    size_t nx = (d->dim + r16 - 1) / r16 * r16, nq = (QD + r16 - 1) / r16 * r16,
           nh = (d->ffn_dim + r16 - 1) / r16 * r16, nl = (d->vocab + r16 - 1) / r16 * r16,
           nqkv = (QKV + r16 - 1) / r16 * r16;
    size_t act = (nx + 2 * nq + nh + nl + nqkv) * sizeof(float) + 16 * sizeof(int);
    e->block_bytes = act + (e->persist ? mk_table_bytes(d, e->mk_grid) : 0);
    fe_status st = fe_cuda_alloc((fe_device){FE_CUDA, d->device}, e->block_bytes, &e->block);
    if (st) {
        e->block = NULL;
        return st;
    }
    e->x = (float *)e->block;
    e->q = e->x + nx, e->att = e->q + nq, e->h = e->att + nq, e->logits = e->h + nh;
    e->qkv = e->logits + nl;
    e->params = (int *)(e->qkv + nqkv);
    st = cu_check(cudaMallocHost((void **)&e->params_host, 16 * sizeof(int)), "cudaMallocHost");
    if (!st)
        st = cu_check(cudaMallocHost((void **)&e->logits_host, (size_t)d->vocab * sizeof(float)),
                      "cudaMallocHost");
    if (!st)
        st = cu_check(cudaHostAlloc((void **)&e->tops_host, DEC_RING * sizeof(int),
                                    cudaHostAllocMapped),
                      "cudaHostAlloc");
    if (!st)
        st = cu_check(cudaHostGetDevicePointer((void **)&e->tops_dev, e->tops_host, 0),
                      "cudaHostGetDevicePointer");
    if (!st) st = cu_check(cudaMemsetAsync(e->block, 0, e->block_bytes, s), "cudaMemset");
    if (!st) st = cu_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    if (!st && e->persist) st = mk_tables<T>(e, (char *)e->block + act);
    const char *tr = getenv("FE_DECODE_TRACE");
    if (!st && e->persist && tr && !strcmp(tr, "1")) {
        size_t n = (size_t)e->mk_grid * mk_events((int)d->n_layers) * 4 * sizeof(unsigned long long);
        st = cu_check(cudaMalloc((void **)&e->trace, n), "decode: trace buffer");
        if (!st) st = cu_check(cudaMemset(e->trace, 0, n), "decode: trace buffer");
        e->mk.trace = e->trace;
    }
    if (!st)
        st = cu_check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal),
                      "cudaStreamBeginCapture");
    if (!st) {
        fe_status qs = e->persist ? mk_enqueue<T>(e) : dec_enqueue<T>(e);
        cudaError_t r = cudaStreamEndCapture(s, &e->graph);
        st = qs ? qs : cu_check(r, "cudaStreamEndCapture");
    }
    return st;
}

/* FE_DECODE_TRACE=1: where the last token step of the persistent kernel spent its time, per
 * kind of phase (mean over the layers), printed to stderr when the engine is freed: the
 * phase's wall time (last block leaving the barrier before it to the last leaving the one
 * after it), the blocks' mean and slowest work, and the barrier's latency (last arrival to
 * first departure). A diagnostic; the timer reads cost nothing when it is off. */
static void mk_trace_report(fe_cuda_decode *e) {
    const int nev = mk_events((int)e->d.n_layers), nb = (int)e->mk_grid;
    size_t n = (size_t)nb * nev * 4;
    unsigned long long *t = (unsigned long long *)malloc(n * sizeof *t);
    if (!t || cudaMemcpy(t, e->trace, n * sizeof *t, cudaMemcpyDeviceToHost)) {
        free(t);
        return;
    }
    static const char *names[6] = {"QKV", "attention", "output", "gate/up", "down", "LM head"};
    double wall[6] = {0}, work[6] = {0}, slow[6] = {0}, lat[6] = {0}, stg[6] = {0}, rows[6] = {0};
    int cnt[6] = {0}, cin[6] = {0};
    auto at = [&](int b, int k, int w) { return (double)t[((size_t)b * nev + k) * 4 + w]; };
    for (int k = 1; k < nev; k++) {
        int kind = k == nev - 1 ? 5 : (k - 1) % 5;
        double prev_last = 0, last = 0, first_leave = 1e300, last_arrive = 0, sum = 0, mx = 0;
        for (int b = 0; b < nb; b++) {
            prev_last = fmax(prev_last, at(b, k - 1, 1));
            last = fmax(last, at(b, k, 1));
            first_leave = fmin(first_leave, at(b, k, 1));
            last_arrive = fmax(last_arrive, at(b, k, 0));
            double w = at(b, k, 0) - at(b, k - 1, 1);
            sum += w, mx = fmax(mx, w);
            if (at(b, k, 2) > 0 && at(b, k, 3) > 0) { /* blocks with work in the phase */
                stg[kind] += at(b, k, 2) - at(b, k - 1, 1), rows[kind] += at(b, k, 3) - at(b, k, 2);
                cin[kind]++;
            }
        }
        wall[kind] += last - prev_last, work[kind] += sum / nb, slow[kind] += mx;
        lat[kind] += first_leave - last_arrive, cnt[kind]++;
    }
    double total = 0;
    for (int b = 0; b < nb; b++)
        total = fmax(total, at(b, nev - 1, 1) - at(b, 0, 1));
    fprintf(stderr, "decode trace (persistent kernel, %d blocks, %d slots a warp; us per phase, mean over layers):\n",
            nb, e->mk.ns);
    fprintf(stderr, "  %-10s %8s %10s %10s %13s %9s %9s\n", "phase", "wall", "work mean", "work max",
            "barrier lat.", "staging", "rows");
    for (int i = 0; i < 6; i++)
        if (cnt[i])
            fprintf(stderr, "  %-10s %8.2f %10.2f %10.2f %13.2f %9.2f %9.2f\n", names[i],
                    wall[i] / cnt[i] / 1e3, work[i] / cnt[i] / 1e3, slow[i] / cnt[i] / 1e3,
                    lat[i] / cnt[i] / 1e3, cin[i] ? stg[i] / cin[i] / 1e3 : 0.0,
                    cin[i] ? rows[i] / cin[i] / 1e3 : 0.0);
    fprintf(stderr, "  token step after the embedding: %.1f us\n", total / 1e3);
    free(t);
}

extern "C" void fe_cuda_decode_free(fe_cuda_decode *e) {
    if (!e) return;
    if (e->trace) {
        mk_trace_report(e);
        cudaFree(e->trace);
    }
    for (int i = 0; i < DEC_RING; i++)
        if (e->ev[i]) cudaEventDestroy(e->ev[i]);
    if (e->exec) cudaGraphExecDestroy(e->exec);
    if (e->graph) cudaGraphDestroy(e->graph);
    if (e->params_host) cudaFreeHost(e->params_host);
    if (e->tops_host) cudaFreeHost(e->tops_host);
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
    e->persist = per && !strcmp(per, "1"); /* measured slower than the chained kernels */
    fe_status st = d->dtype == FE_BF16  ? dec_build<__nv_bfloat16>(e)
                   : d->dtype == FE_F16 ? dec_build<__half>(e)
                                        : dec_build<float>(e);
    if (!st) st = cu_check(cudaGraphInstantiate(&e->exec, e->graph, 0), "cudaGraphInstantiate");
    if (st) {
        fe_cuda_decode_free(e);
        return NULL;
    }
    return e;
}

/* The step's parameters to the device (on the engine's stream): token, position, no argmax
 * yet, whether each argmax feeds the next step (greedy runs), and the greedy step counter
 * (tops_host[step % DEC_RING]). */
static fe_status dec_upload(fe_cuda_decode *e, int32_t token, int64_t pos, bool feedback) {
    e->params_host[0] = token, e->params_host[1] = (int)pos;
    e->params_host[2] = -1, e->params_host[3] = feedback, e->params_host[4] = 0;
    fe_status st = cu_check(cudaSetDevice(e->dev->index), "cudaSetDevice");
    if (!st)
        st = cu_check(cudaMemcpyAsync(e->params, e->params_host, 5 * sizeof(int),
                                      cudaMemcpyHostToDevice, e->dev->stream),
                      "decode: token upload");
    return st;
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
    fe_status st = dec_upload(e, token, pos, false);
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

extern "C" fe_status fe_cuda_decode_greedy(fe_cuda_decode *e, int32_t token, int64_t pos, int64_t n,
                                           bool (*on_top)(void *ctx, int32_t top), void *ctx,
                                           int64_t *done) {
    if (done) *done = 0;
    if (!e || !on_top || n < 0)
        return fe_set_error(FE_ERR_ARG, "decode greedy: NULL engine or callback, or n < 0");
    if (n == 0) return FE_OK;
    if (token < 0 || token >= e->d.vocab || pos < 0 || pos + n > e->d.capacity)
        return fe_set_error(FE_ERR_RANGE,
                            "decode greedy: token %d, or positions %lld..%lld, out of range "
                            "(vocab %lld, cache %lld)",
                            (int)token, (long long)pos, (long long)(pos + n - 1),
                            (long long)e->d.vocab, (long long)e->d.capacity);
    cudaStream_t s = e->dev->stream;
    fe_status st = dec_upload(e, token, pos, true); /* each argmax feeds the next step */
    for (int i = 0; i < DEC_RING && !st; i++)
        if (!e->ev[i])
            st = cu_check(cudaEventCreateWithFlags(&e->ev[i], cudaEventDisableTiming),
                          "cudaEventCreate");
    /* keep DEC_AHEAD steps queued: the device never waits for the host to read a token */
    int64_t queued = 0, taken = 0;
    while (!st) {
        while (!st && queued < n && queued - taken < DEC_AHEAD) {
            const int k = (int)(queued % DEC_RING);
            st = cu_check(cudaGraphLaunch(e->exec, s), "cudaGraphLaunch");
            if (!st) st = cu_check(cudaEventRecord(e->ev[k], s), "cudaEventRecord");
            queued++;
        }
        if (st || taken == queued) break;
        st = cu_check(cudaEventSynchronize(e->ev[taken % DEC_RING]), "cudaEventSynchronize");
        if (st) break;
        const int32_t top = ((volatile int *)e->tops_host)[taken % DEC_RING];
        taken++;
        if (!on_top(ctx, top)) break; /* the steps still queued run, unread */
    }
    /* steps queued past a stop still run (their cache rows lie past the accepted ones) */
    fe_status sy = cu_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    if (done) *done = taken;
    return st ? st : sy;
}
