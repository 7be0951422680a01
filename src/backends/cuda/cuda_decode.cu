/* Batch-1 decode engine (see cuda_decode.h): matrix-vector kernels that stream their
 * weights through shared memory with the bulk-copy engine, an attention kernel that
 * reads the KV cache in place, all captured once into a CUDA graph.
 *
 * Matrix-vector products (k_dec_mv): one block per SM, each owning a contiguous range
 * of output rows, so its weights are one contiguous stretch of memory (two for the
 * gate/up pair, up to three across the q/k/v segments). A single thread keeps a ring
 * of stages (about 16 KB of rows each) filled with cp.async.bulk copies that complete
 * on an mbarrier per stage; the eight warps take (row, part of K) tasks from each
 * landed stage, reading the input from shared memory (f32, times the RMSNorm weight
 * when the product has a norm), and leave one partial sum per task in shared memory,
 * summed in a fixed order at the end (results do not depend on timing). The first
 * stages are requested before the kernel waits for its predecessor (programmatic
 * dependent launch), so a product's weights stream in while the previous kernel -
 * attention, say - is still running; a block needs under half an SM's shared memory
 * so that the next kernel's block fits beside it.
 *
 * Attention (k_dec_attn): one block per query head. It applies RoPE to its q and to the
 * new key (both from the f32 q/k/v vector of the projection), writes the new key and
 * value into the cache (the first head of each group does), and takes the new
 * position's key and value from those values rather than from the cache. Before it
 * waits for the projection it asks L2 to prefetch the cached keys and values. Scores
 * of up to 512 positions at a time go to shared memory (a thread per position, the
 * whole key row in 16-byte loads), softmax is online across those chunks in base 2,
 * and the value rows are accumulated by (16-byte column chunk, position group)
 * threads, reduced in shared memory at the end. */
#include "backends/cuda/cuda_decode.h"
#include "backends/cuda/cuda_internal.cuh"

#include <math.h>

enum { MV_THREADS = 256, MV_WARPS = 8, MV_P = 2, DEC_CHUNK = 512, ATT_THREADS = 256 };
enum { MV_PLAIN = 0, MV_RESID = 1, MV_SILU = 2 };
/* shared memory a matrix-vector block may use: under half of an SM's 228 KiB, so that
 * the next kernel's block fits beside it */
enum { DEC_SMEM_MAX = 110 * 1024 };

/* ---- device helpers ------------------------------------------------------------------ */

/* Programmatic dependent launch: wait until the previous kernel has completed and its
 * writes are visible, then let the next kernel of the graph start launching (its
 * blocks run up to their own wait while this one works). Every kernel waits before it
 * writes global memory or reads what an earlier kernel of the step wrote, so
 * completion stays ordered along the whole chain; triggering only after the wait
 * keeps at most one kernel ahead. Both are no-ops without the launch attribute. */
__device__ __forceinline__ void dec_launch_next() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void dec_wait_prev() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

__device__ __forceinline__ uint32_t dec_saddr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* mbarrier with one arrival (the thread that issues a stage's copies) plus the bytes
 * those copies deliver */
__device__ __forceinline__ void dec_bar_init(uint64_t *b) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(dec_saddr(b)) : "memory");
}
__device__ __forceinline__ void dec_bar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void dec_bar_expect(uint64_t *b, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(dec_saddr(b)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void dec_bar_wait(uint64_t *b, uint32_t parity) {
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n"
                 "}\n" ::"r"(dec_saddr(b)),
                 "r"(parity)
                 : "memory");
}
/* bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared memory,
 * completing on barrier b */
__device__ __forceinline__ void dec_bulk_load(void *dst, const void *src, uint32_t bytes,
                                              uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];\n" ::"r"(dec_saddr(dst)),
                 "l"(src), "r"(bytes), "r"(dec_saddr(b))
                 : "memory");
}
__device__ __forceinline__ void dec_prefetch_l2(const void *src, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}

/* ---- kernels ------------------------------------------------------------------------- */

struct dec_mv_args {
    const void *w[3];    /* PLAIN/RESID: the row segments of one (n, K) matrix, in order
                            (q, k, v for the attention projection); SILU: gate, up */
    int seg_rows[3];     /* rows of each segment (PLAIN/RESID; unused ones 0) */
    int n, K;            /* output rows; input length */
    int rows_per_stage, stages, rows_per_block; /* ring geometry; rows_per_block >= n / grid */
    const float *x;      /* input (K), f32 */
    const void *g;       /* RMSNorm weight (K) or NULL: no norm */
    float eps;
    float *out;          /* PLAIN: out = W x; RESID: out += W x; SILU: silu(gate x) * (up x) */
    int *top;            /* PLAIN: when not NULL, the first index of the largest output */
    float *part_v;       /* ... found through one (value, index) per block */
    int *part_i;
    unsigned *ticket;    /* counts finished blocks; the last one resets it to 0 */
};

/* (v, i) = the better of (v, i) and (v2, i2): larger value, then smaller index; i == none
 * is no candidate */
__device__ __forceinline__ void dec_arg_take(float &v, int &i, float v2, int i2, int none) {
    if (i2 == none) return;
    if (i == none || v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}
__device__ __forceinline__ void dec_arg_block(float &v, int &i, int none, float *sv, int *si) {
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        dec_arg_take(v, i, v2, i2, none);
    }
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v, si[threadIdx.x >> 5] = i;
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            dec_arg_take(v, i, sv[w], si[w], none);
}

template <typename T, int MODE>
__global__ void __launch_bounds__(MV_THREADS, 2) k_dec_mv(const dec_mv_args a) {
    constexpr int V = cu_vn<T>::n, M = MODE == MV_SILU ? 2 : 1;
    extern __shared__ __align__(16) unsigned char dec_smem[];
    __shared__ float red[32];
    __shared__ int redi[32];
    __shared__ bool last;
    const int K = a.K, KV = K / V, RS = a.rows_per_stage, NS = a.stages, RPB = a.rows_per_block;
    const int KS = (KV + 32 * MV_P - 1) / (32 * MV_P); /* parts of K, one task each */
    const size_t slot = (size_t)RS * M * K;            /* elements of one stage */
    T *ring = reinterpret_cast<T *>(dec_smem);
    float *xs = reinterpret_cast<float *>(ring + (size_t)NS * slot);
    float *part = xs + K;                               /* (M, RPB, KS) partial sums */
    uint64_t *bar = reinterpret_cast<uint64_t *>(part + ((M * RPB * KS + 1) & ~1));
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rb = (int)((long long)blockIdx.x * a.n / gridDim.x);
    const int re = (int)((long long)(blockIdx.x + 1) * a.n / gridDim.x);
    const int nloc = re - rb, nst = (nloc + RS - 1) / RS;
    const uint32_t row_bytes = (uint32_t)K * sizeof(T);

    auto issue = [&](int s) { /* stage s: local rows [s RS, s RS + RS) */
        uint64_t *b = &bar[s % NS];
        T *dst = ring + (size_t)(s % NS) * slot;
        const int r0 = rb + s * RS, r1 = min(r0 + RS, re);
        dec_bar_expect(b, (uint32_t)M * (uint32_t)(r1 - r0) * row_bytes);
        if (MODE == MV_SILU) {
            dec_bulk_load(dst, (const T *)a.w[0] + (size_t)r0 * K, (r1 - r0) * row_bytes, b);
            dec_bulk_load(dst + (size_t)RS * K, (const T *)a.w[1] + (size_t)r0 * K,
                          (r1 - r0) * row_bytes, b);
        } else {
            for (int sg = 0, lo = 0; sg < 3; lo += a.seg_rows[sg], sg++) {
                const int x0 = max(r0, lo), x1 = min(r1, lo + a.seg_rows[sg]);
                if (x0 < x1)
                    dec_bulk_load(dst + (size_t)(x0 - r0) * K,
                                  (const T *)a.w[sg] + (size_t)(x0 - lo) * K,
                                  (uint32_t)(x1 - x0) * row_bytes, b);
            }
        }
    };
    if (tid == 0) { /* the weights do not depend on the previous kernel: request them now */
        for (int i = 0; i < NS; i++)
            dec_bar_init(&bar[i]);
        dec_bar_init_fence();
        for (int s = 0; s < NS && s < nst; s++)
            issue(s);
    }
    dec_wait_prev();
    dec_launch_next();

    /* the input, times the norm weight, to shared memory; its sum of squares */
    const T *g = (const T *)a.g;
    float ss = 0.f;
    for (int c = tid; c < KV; c += MV_THREADS) {
        float xv[V];
#pragma unroll
        for (int e = 0; e < V; e += 4) {
            float4 t = *reinterpret_cast<const float4 *>(a.x + c * V + e);
            xv[e] = t.x, xv[e + 1] = t.y, xv[e + 2] = t.z, xv[e + 3] = t.w;
        }
        if (g) {
            float gv[V];
            cu_vunpack<T>(cu_ld16(g + c * V), gv);
#pragma unroll
            for (int e = 0; e < V; e++) {
                ss = fmaf(xv[e], xv[e], ss);
                xv[e] *= gv[e];
            }
        }
#pragma unroll
        for (int e = 0; e < V; e += 4)
            *reinterpret_cast<float4 *>(xs + c * V + e) =
                make_float4(xv[e], xv[e + 1], xv[e + 2], xv[e + 3]);
    }
    const float rstd = g ? rsqrtf(cu_block_sum(ss, red) / (float)K + a.eps) : 1.f;
    if (!g) __syncthreads(); /* xs complete (cu_block_sum's barriers did it otherwise) */

    for (int s = 0; s < nst; s++) {
        const int r0 = s * RS, rows = min(RS, nloc - r0);
        dec_bar_wait(&bar[s % NS], (uint32_t)(s / NS) & 1u);
        const T *w = ring + (size_t)(s % NS) * slot;
        for (int t = warp; t < M * rows * KS; t += MV_WARPS) {
            const int mr = t / KS, kp = t - mr * KS;
            const int m = M == 2 && mr >= rows ? 1 : 0, r = mr - m * rows;
            const T *wr = w + ((size_t)m * RS + r) * K;
            float sum = 0.f;
#pragma unroll
            for (int i = 0; i < MV_P; i++) {
                const int c = (kp * MV_P + i) * 32 + lane;
                if (c < KV) {
                    float wv[V];
                    cu_vunpack<T>(cu_ld16(wr + c * V), wv);
#pragma unroll
                    for (int e = 0; e < V; e += 4) {
                        float4 xv = *reinterpret_cast<const float4 *>(xs + c * V + e);
                        sum = fmaf(wv[e], xv.x, sum);
                        sum = fmaf(wv[e + 1], xv.y, sum);
                        sum = fmaf(wv[e + 2], xv.z, sum);
                        sum = fmaf(wv[e + 3], xv.w, sum);
                    }
                }
            }
            sum = cu_warp_sum(sum);
            if (lane == 0) part[((size_t)m * RPB + r0 + r) * KS + kp] = sum;
        }
        __syncthreads(); /* every warp is done with this stage: refill it */
        if (tid == 0 && s + NS < nst) issue(s + NS);
    }

    float best = -INFINITY;
    int bi = a.n; /* none */
    for (int r = tid; r < nloc; r += MV_THREADS) {
        float s0 = 0.f;
        for (int kp = 0; kp < KS; kp++)
            s0 += part[(size_t)r * KS + kp];
        s0 *= rstd;
        const int row = rb + r;
        if (MODE == MV_SILU) {
            float s1 = 0.f;
            for (int kp = 0; kp < KS; kp++)
                s1 += part[((size_t)RPB + r) * KS + kp];
            s1 *= rstd;
            a.out[row] = s0 / (1.f + __expf(-s0)) * s1;
        } else if (MODE == MV_RESID) {
            a.out[row] += s0;
        } else {
            a.out[row] = s0;
            if (a.top) dec_arg_take(best, bi, s0, row, a.n);
        }
    }
    if (MODE != MV_PLAIN || !a.top) return;
    /* argmax: this block's best, then the last block to finish takes the best of all */
    dec_arg_block(best, bi, a.n, red, redi);
    if (tid == 0) {
        a.part_v[blockIdx.x] = best;
        a.part_i[blockIdx.x] = bi;
        __threadfence();
        last = atomicAdd(a.ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    best = -INFINITY, bi = a.n;
    for (int b = tid; b < (int)gridDim.x; b += MV_THREADS)
        dec_arg_take(best, bi, __ldcg(a.part_v + b), __ldcg(a.part_i + b), a.n);
    dec_arg_block(best, bi, a.n, red, redi);
    if (tid == 0) {
        *a.top = bi < a.n ? bi : 0;
        *a.ticket = 0u;
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

/* Rotate-half RoPE of pairs (j, j + D/2) of r (f32) at position pos, with the f32 angle
 * the rope op uses; threads 0..D/2-1 of the block each take a pair. */
template <int D>
__device__ __forceinline__ void dec_rope_pair(const float *r, float *out, int j, int pos,
                                              const float *inv_freq) {
    float ang = __fmul_rn(__int2float_rn(pos), inv_freq[j]), sn, cs;
    sincosf(ang, &sn, &cs);
    const float s0 = r[j], s1 = r[j + D / 2];
    out[j] = s0 * cs - s1 * sn;
    out[j + D / 2] = s1 * cs + s0 * sn;
}

/* out (Hq, D) = softmax(q k^T * scale) v over cached positions 0..pos; qkv is the f32
 * projection (q: Hq*D, then k and v: Hkv*D each), before RoPE. */
template <typename T, int D>
__global__ void __launch_bounds__(ATT_THREADS)
    k_dec_attn(const float *qkv, T *kc, T *vc, float *out, const int *params, int Hq, int G,
               int cap, float scale_log2, const float *inv_freq) {
    constexpr int V = cu_vn<T>::n, NC = D / V, NG = ATT_THREADS / NC;
    __shared__ __align__(16) float qs[D];
    __shared__ float kn[D], vn[D]; /* the new position's key and value, rounded to T */
    __shared__ float sc[DEC_CHUNK];
    __shared__ float red[32];
    __shared__ float part[NG][D];
    const int h = blockIdx.x, tid = threadIdx.x, pos = params[1], L = pos + 1, hk = h / G;
    const int Hkv = Hq / G;
    T *Kh = kc + (size_t)hk * cap * D, *Vh = vc + (size_t)hk * cap * D;
    /* the cache up to pos was written by earlier steps: fetch it to L2 while the
     * projection finishes (params is set before the graph starts) */
    if (tid == 0 && pos > 0) {
        dec_prefetch_l2(Kh, (uint32_t)pos * D * sizeof(T));
        dec_prefetch_l2(Vh, (uint32_t)pos * D * sizeof(T));
    }
    dec_wait_prev();
    dec_launch_next();
    if (tid < D / 2) {
        dec_rope_pair<D>(qkv + h * D, qs, tid, pos, inv_freq);
    } else if (tid < D) {
        dec_rope_pair<D>(qkv + (size_t)Hq * D + hk * D, kn, tid - D / 2, pos, inv_freq);
    } else if (tid < 2 * D) {
        vn[tid - D] = qkv[(size_t)(Hq + Hkv) * D + hk * D + tid - D];
    }
    __syncthreads();
    if (tid < D) {
        qs[tid] *= scale_log2;
        const T k = cu_cast<T>(kn[tid]), v = cu_cast<T>(vn[tid]);
        kn[tid] = cu_to_f(k), vn[tid] = cu_to_f(v);
        if (h % G == 0) Kh[(size_t)pos * D + tid] = k, Vh[(size_t)pos * D + tid] = v;
    }
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
            float s = 0.f;
            if (c0 + t == pos) {
#pragma unroll 8
                for (int i = 0; i < D; i++)
                    s = fmaf(kn[i], qs[i], s);
            } else {
                const T *kr = Kh + (size_t)(c0 + t) * D;
                uint4 u[NC];
#pragma unroll
                for (int c = 0; c < NC; c++)
                    u[c] = cu_ld16(kr + c * V);
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    float f[V];
                    cu_vunpack<T>(u[c], f);
#pragma unroll
                    for (int e = 0; e < V; e++)
                        s = fmaf(f[e], qs[c * V + e], s);
                }
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
        const int nc = min(n, pos - c0); /* cached positions of this chunk */
        int t = grp; /* p . v: four value rows in flight per thread */
        for (; t + 3 * NG < nc; t += 4 * NG) {
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
        for (; t < nc; t += NG) {
            float f[V], pr = sc[t];
            cu_vunpack<T>(cu_ld16(Vh + (size_t)(c0 + t) * D + col * V), f);
#pragma unroll
            for (int e = 0; e < V; e++)
                acc[e] = fmaf(pr, f[e], acc[e]);
        }
        if (pos - c0 < n && grp == 0) { /* the new position, once */
            const float pr = sc[pos - c0];
#pragma unroll
            for (int e = 0; e < V; e++)
                acc[e] = fmaf(pr, vn[col * V + e], acc[e]);
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
    void *block; /* one device allocation: x, qkv, att, h, logits, argmax parts, params */
    size_t block_bytes;
    float *x, *qkv, *att, *h, *logits, *part_v;
    int *part_i, *params;   /* params: token, position, the argmax */
    unsigned *ticket;
    int *params_host;   /* pinned: token, position, then the argmax read back */
    float *logits_host; /* pinned */
    bool pdl;           /* FE_DECODE_PDL=0 switches programmatic dependent launch off */
    int ring_kib;       /* weight ring per block (FE_DECODE_RING_KIB, default 80) */
    int grid;           /* blocks of the matrix-vector kernels: one per SM (FE_DECODE_GRID) */
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
    /* a stage of the weight ring holds at least one row (two for gate/up) beside the
     * f32 input: K up to 16384 keeps a block within half an SM's shared memory */
    int64_t kmax = d->dim > d->ffn_dim ? d->dim : d->ffn_dim;
    if (d->n_heads * d->head_dim > kmax) kmax = d->n_heads * d->head_dim;
    if (kmax * (int64_t)fe_dtype_size(d->dtype) > 32768 || d->vocab > INT32_MAX / 2 ||
        d->capacity > INT32_MAX / 2 || d->n_heads % d->n_kv_heads || d->n_layers < 1 ||
        d->n_heads > 65535)
        return fe_set_error(FE_ERR_SHAPE,
                            "decode engine: sizes out of range (rows of at most 32 KiB, heads a "
                            "multiple of KV heads)");
    return FE_OK;
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

/* Ring geometry of a product (rows of K elements, M matrices read together) and the
 * shared bytes it needs; launches k_dec_mv over one block per SM. */
template <typename T, int MODE>
static fe_status dec_mv(fe_cuda_decode *e, dec_mv_args a) {
    const int M = MODE == MV_SILU ? 2 : 1;
    const size_t row = (size_t)a.K * sizeof(T) * M;
    const int grid = a.n < e->grid ? a.n : e->grid;
    a.rows_per_block = (a.n + grid - 1) / grid;
    a.rows_per_stage = row >= 16384 ? 1 : (int)(16384 / row);
    if (a.rows_per_stage > a.rows_per_block) a.rows_per_stage = a.rows_per_block;
    const size_t stage = (size_t)a.rows_per_stage * row;
    const int KS = (a.K / (int)(16 / sizeof(T)) + 32 * MV_P - 1) / (32 * MV_P);
    /* the input, the partial sums and up to 16 barriers beside the ring */
    const size_t fixed = (size_t)a.K * sizeof(float) +
                         (size_t)((M * a.rows_per_block * KS + 1) & ~1) * sizeof(float) +
                         16 * sizeof(uint64_t);
    size_t ring = (size_t)e->ring_kib << 10;
    if (fixed < DEC_SMEM_MAX && ring > DEC_SMEM_MAX - fixed) ring = DEC_SMEM_MAX - fixed;
    const size_t ns = ring / stage;
    a.stages = ns < 2 ? 2 : ns > 16 ? 16 : (int)ns;
    const size_t smem = (size_t)a.stages * stage + fixed;
    if (smem > DEC_SMEM_MAX)
        return fe_set_error(FE_ERR_SHAPE, "decode engine: a product needs %zu bytes of shared memory",
                            smem);
    return dec_kernel(e, false, "decode matrix-vector kernel", k_dec_mv<T, MODE>, (unsigned)grid,
                      MV_THREADS, smem, a);
}

/* Allow the matrix-vector kernels DEC_SMEM_MAX bytes of shared memory (before capture). */
template <typename T> static fe_status dec_smem_optin() {
    fe_status st = FE_OK;
    void (*k[3])(dec_mv_args) = {k_dec_mv<T, MV_PLAIN>, k_dec_mv<T, MV_RESID>, k_dec_mv<T, MV_SILU>};
    for (int i = 0; i < 3 && !st; i++)
        st = cu_check(cudaFuncSetAttribute(k[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           DEC_SMEM_MAX),
                      "cudaFuncSetAttribute");
    return st;
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
        dec_mv_args a = {};
        a.w[0] = L->wq, a.w[1] = L->wk, a.w[2] = L->wv;
        a.seg_rows[0] = QD, a.seg_rows[1] = a.seg_rows[2] = Hkv * D;
        a.n = QD + 2 * Hkv * D, a.K = C, a.x = e->x, a.g = L->ln_attn, a.eps = eps, a.out = e->qkv;
        if ((st = dec_mv<T, MV_PLAIN>(e, a))) break;
        st = dec_kernel(e, false, "decode attention kernel",
                        D == 64 ? k_dec_attn<T, 64> : k_dec_attn<T, 128>, (unsigned)Hq,
                        ATT_THREADS, 0, (const float *)e->qkv, (T *)L->k_cache, (T *)L->v_cache,
                        e->att, (const int *)e->params, Hq, Hq / Hkv, (int)d->capacity, sl2,
                        d->inv_freq);
        if (st) break;
        a = dec_mv_args{};
        a.w[0] = L->wo, a.seg_rows[0] = C, a.n = C, a.K = QD, a.x = e->att, a.out = e->x;
        if ((st = dec_mv<T, MV_RESID>(e, a))) break;
        a = dec_mv_args{};
        a.w[0] = L->w_gate, a.w[1] = L->w_up, a.n = F, a.K = C, a.x = e->x;
        a.g = L->ln_mlp, a.eps = eps, a.out = e->h;
        if ((st = dec_mv<T, MV_SILU>(e, a))) break;
        a = dec_mv_args{};
        a.w[0] = L->w_down, a.seg_rows[0] = C, a.n = C, a.K = F, a.x = e->h, a.out = e->x;
        st = dec_mv<T, MV_RESID>(e, a);
    }
    if (!st) {
        dec_mv_args a = {};
        a.w[0] = d->lm_head, a.seg_rows[0] = (int)d->vocab, a.n = (int)d->vocab, a.K = C;
        a.x = e->x, a.g = d->final_norm, a.eps = eps, a.out = e->logits;
        a.top = e->params + 2, a.part_v = e->part_v, a.part_i = e->part_i, a.ticket = e->ticket;
        st = dec_mv<T, MV_PLAIN>(e, a);
    }
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

static bool dec_aligned(const void *p) { return p && (uintptr_t)p % 16 == 0; }

extern "C" fe_cuda_decode *fe_cuda_decode_new(const fe_cuda_decode_desc *d) {
    if (fe_cuda_decode_supported(d)) return NULL;
    if (!d->layers || !d->embed || !d->final_norm || !d->lm_head || !d->inv_freq) {
        fe_set_error(FE_ERR_ARG, "decode engine: missing weights");
        return NULL;
    }
    /* rows are moved in 16-byte pieces */
    bool ok = dec_aligned(d->embed) && dec_aligned(d->final_norm) && dec_aligned(d->lm_head);
    for (int64_t l = 0; l < d->n_layers && ok; l++) {
        const fe_cuda_decode_layer *L = &d->layers[l];
        ok = dec_aligned(L->wq) && dec_aligned(L->wk) && dec_aligned(L->wv) &&
             dec_aligned(L->wo) && dec_aligned(L->w_gate) && dec_aligned(L->w_up) &&
             dec_aligned(L->w_down) && dec_aligned(L->ln_attn) && dec_aligned(L->ln_mlp) &&
             L->k_cache && L->v_cache;
    }
    if (!ok) {
        fe_set_error(FE_ERR_ARG, "decode engine: weights must start on 16-byte boundaries");
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
    const char *pdl = getenv("FE_DECODE_PDL"), *ring = getenv("FE_DECODE_RING_KIB");
    e->pdl = !(pdl && !strcmp(pdl, "0"));
    e->ring_kib = ring && atoi(ring) >= 1 && atoi(ring) <= 108 ? atoi(ring) : 80;
    /* FE_DECODE_GRID=N: blocks per product (default one per SM); tests use a few blocks
     * and a small ring so that every block wraps around its ring many times */
    const char *gr = getenv("FE_DECODE_GRID");
    e->grid = gr && atoi(gr) > 0 && atoi(gr) <= 4096 ? atoi(gr)
              : dv->sm_count > 0                     ? dv->sm_count
                                                     : 1;
    /* f32 activations, each start rounded up to 16 floats */
    size_t QD = (size_t)(d->n_heads * d->head_dim), KVD = (size_t)(d->n_kv_heads * d->head_dim);
    size_t r16 = 16, nx = (d->dim + r16 - 1) / r16 * r16;
    size_t nqkv = (QD + 2 * KVD + r16 - 1) / r16 * r16, nq = (QD + r16 - 1) / r16 * r16;
    size_t nh = (d->ffn_dim + r16 - 1) / r16 * r16, nl = (d->vocab + r16 - 1) / r16 * r16;
    size_t ng = ((size_t)e->grid + r16 - 1) / r16 * r16;
    e->block_bytes = (nx + nqkv + nq + nh + nl + ng) * sizeof(float) + (ng + 16) * sizeof(int);
    fe_status st = fe_cuda_alloc((fe_device){FE_CUDA, d->device}, e->block_bytes, &e->block);
    if (st) {
        e->block = NULL;
        fe_cuda_decode_free(e);
        return NULL;
    }
    e->x = (float *)e->block;
    e->qkv = e->x + nx, e->att = e->qkv + nqkv, e->h = e->att + nq, e->logits = e->h + nh;
    e->part_v = e->logits + nl;
    e->part_i = (int *)(e->part_v + ng);
    e->params = e->part_i + ng;
    e->ticket = (unsigned *)(e->params + 8);
    st = cu_check(cudaMallocHost((void **)&e->params_host, 16 * sizeof(int)), "cudaMallocHost");
    if (!st)
        st = cu_check(cudaMallocHost((void **)&e->logits_host, (size_t)d->vocab * sizeof(float)),
                      "cudaMallocHost");
    if (!st) st = cu_check(cudaMemsetAsync(e->block, 0, e->block_bytes, dv->stream), "cudaMemset");
    if (!st) st = cu_check(cudaStreamSynchronize(dv->stream), "cudaStreamSynchronize");
    if (!st)
        st = d->dtype == FE_BF16  ? dec_smem_optin<__nv_bfloat16>()
             : d->dtype == FE_F16 ? dec_smem_optin<__half>()
                                  : dec_smem_optin<float>();
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
