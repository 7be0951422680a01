/* An experimental flash attention forward on Hopper's warpgroup MMA (wgmma), head dim 128, bf16
 * or f16, the semantics of fe_flash_attention_forward (grouped KV heads, optional causal mask
 * j > i + S - T, strided (B, H, rows, D) operands, lse in natural-log units, rows with no
 * visible key: out 0, lse -inf). Not in the library yet: tests/wgmma/wg_flash_check.cu times it
 * against the library's mma.sync forward on a GPU, tests/wgmma/wg_flash_emu.cpp checks it on
 * the CPU against float64 attention.
 *
 * A block of two warpgroups (256 threads) takes 128 query rows of one head, 64 a warpgroup, and
 * walks the key tiles of 64 keys that those rows see. Q stays in shared memory; K and V tiles
 * are double-buffered with cp.async, tile j + 1 loading while tile j is used. All three are
 * stored in 128-byte-swizzled atoms (two 64-column halves of D, each rows x 128 bytes, 8-row
 * groups of 1024 bytes), the layout the descriptors read:
 *   S (64 x 64) = Q K^T: 8 k16 steps of wgmma m64n64k16 with both operands K-major in shared
 *     memory (step s reads half s / 4 at byte 32 (s % 4) of each row);
 *   online softmax on the accumulator fragments in f32 (log2 units, scale folded into exp2);
 *   O (64 x 128) += P V: P from registers (the accumulator fragment is the A fragment, packed
 *     to 16 bits), V as the MN-major B operand (d contiguous: V's tile is stored exactly as K's),
 *     for each k16 step one m64n64k16 per half of D (n 64 is one swizzle atom wide, the layout
 *     the probe checked on an H200).
 * Two versions:
 *   wf_fwd_kernel waits for each product before it uses it: softmax and MMA do not overlap
 *     inside a warpgroup; only the two warpgroups overlap each other. Two stages of K and V.
 *   wf_fwd_pipe_kernel overlaps them inside a warpgroup, as FlashAttention-3 does: in step j
 *     it issues S_j = Q K_j^T and then O += P_{j-1} V_{j-1}, and computes the softmax of S_j
 *     while the second product runs; O is rescaled once that product has completed. So K_j and
 *     V_{j-1} are in use while tile j + 1 loads: three stages, and P in two register sets (the
 *     hardware reads A fragments while the product runs). */
#pragma once
#include <math.h>

#include "wgmma_ops.cuh"

#define WF_BR 128 /* query rows a block */
#define WF_BC 64  /* keys a tile */
#define WF_D 128
#define WF_NT 256
/* shared memory: Q (128 x 128), then K and V of two stages (64 x 128 each), 16-bit; three
 * stages for the pipelined kernel */
#define WF_SMEM (WF_BR * WF_D * 2 + 4 * WF_BC * WF_D * 2)
#define WF_SMEM_PIPE (WF_BR * WF_D * 2 + 6 * WF_BC * WF_D * 2)

struct wf_params {
    const uint16_t *q, *k, *v;
    uint16_t *out;
    float *lse;
    int B, Hq, Hkv, T, S;
    long long sq[3], sk[3], sv[3], so[3]; /* element strides of batch, head and row */
    float sl2;                            /* scale * log2(e) */
    bool causal;
};

/* Byte offset of 16-byte chunk c (0..15) of row r in a tile of R rows (two 64-column halves,
 * each R x 128 bytes in 128-byte-swizzled atoms). */
__host__ __device__ inline int wf_off(int R, int r, int c) {
    return (c / 8) * R * 128 + (r / 8) * 1024 + (r % 8) * 128 + (((c % 8) ^ (r % 8)) * 16);
}

/* Start loading rows [r0, r0 + R) of a (rows, 128) operand with row stride rs into a tile; rows
 * at or past n become zeros (so that a masked key's V row is 0, not garbage). */
template <int R>
__device__ __forceinline__ void wf_load(unsigned char *tile, const uint16_t *base, long long rs,
                                        int r0, int n) {
    for (int i = (int)threadIdx.x; i < R * 16; i += WF_NT) {
        const int r = i / 16, c = i % 16;
        unsigned char *dst = tile + wf_off(R, r, c);
        if (r0 + r < n)
            wg_cp16(dst, base + (long long)(r0 + r) * rs + c * 8);
        else
            *(uint4 *)dst = make_uint4(0, 0, 0, 0);
    }
}

/* What a block works on: its head, its 128 query rows and the key tiles they see. */
struct wf_block {
    int b, h, i0, ntiles;
    const uint16_t *q, *k, *v;
};
__device__ __forceinline__ wf_block wf_block_of(const wf_params &p) {
    wf_block w;
    /* blocks: heads fastest, query tiles from the last (the most keys under the mask) */
    const int nh = p.B * p.Hq, nqb = (p.T + WF_BR - 1) / WF_BR;
    const int bh = (int)blockIdx.x % nh, qb = nqb - 1 - (int)blockIdx.x / nh;
    w.b = bh / p.Hq, w.h = bh % p.Hq, w.i0 = qb * WF_BR;
    const int hk = w.h / (p.Hq / p.Hkv);
    w.q = p.q + w.b * p.sq[0] + w.h * p.sq[1];
    w.k = p.k + w.b * p.sk[0] + hk * p.sk[1], w.v = p.v + w.b * p.sv[0] + hk * p.sv[1];
    /* key tiles: every one, or with the mask those up to the last key row i0 + 127 sees */
    w.ntiles = (p.S + WF_BC - 1) / WF_BC;
    if (p.causal) {
        const int last = w.i0 + WF_BR - 1 + p.S - p.T; /* may be negative: no key at all */
        w.ntiles = last < 0 ? 0 : (last / WF_BC + 1 < w.ntiles ? last / WF_BC + 1 : w.ntiles);
    }
    return w;
}

/* This thread's warpgroup, its t = lane % 4 and its first row (the second is 8 rows on):
 * i0 + 64 wg + 16 warp + g */
struct wf_thread {
    int wg, t, row0;
};
__device__ __forceinline__ wf_thread wf_thread_of(const wf_block &w) {
    const int tid = (int)threadIdx.x, lane = tid % 32;
    return {tid / 128, lane % 4, w.i0 + 64 * (tid / 128) + 16 * ((tid / 32) % 4) + lane / 4};
}
__device__ __forceinline__ void wf_zero(float (&o)[2][32]) {
    for (int hh = 0; hh < 2; hh++)
        for (int i = 0; i < 32; i++)
            o[hh][i] = 0.f;
}

/* Issue S = Q K^T for warpgroup wg's 64 rows (8 k16 steps; the caller fences and commits): sQ
 * a tile of 128 rows, of which wg's 64, sK one of 64 rows. The backward takes it for K Q^T
 * and V dO^T (128 keys a block, 64 queries a step). */
template <bool BF>
__device__ __forceinline__ void wf_qk(float (&s)[32], const unsigned char *sQ,
                                      const unsigned char *sK, int wg) {
    for (int kk = 0; kk < 8; kk++) {
        const int half = kk / 4, off = (kk % 4) * 32;
        const uint64_t da = wg_desc(sQ + half * WF_BR * 128 + wg * 8192 + off, 16, 1024, 1);
        const uint64_t db = wg_desc(sK + half * WF_BC * 128 + off, 16, 1024, 1);
        wg_ss_n64<BF>(s, da, db, kk > 0);
    }
}
/* Issue O += P V, a half of D at a time (V, 64 rows, MN-major: keys along k, d along n). The
 * backward takes it for dV += P^T dO and dK += dS^T Q. */
template <bool BF>
__device__ __forceinline__ void wf_pv(float (&o)[2][32], const uint32_t (&a)[4][4],
                                      const unsigned char *sV) {
    for (int u = 0; u < 4; u++)
        for (int hh = 0; hh < 2; hh++) {
            const uint64_t db = wg_desc(sV + hh * WF_BC * 128 + u * 2048, 16, 1024, 1);
            wg_rs_n64<BF, 1>(o[hh], a[u], db, 1);
        }
}
/* The online softmax of one tile: s[4 jj + 2 r + e] is (row row0 + 8 r, key kv0 + 8 jj + 2 t + e).
 * s becomes P, m and l move on, alpha[r] is what row r's O must be multiplied by (done here
 * where RESCALE: fewer registers live than a separate pass). mask: the tile has keys past S or
 * past the causal diagonal of a row. */
template <bool RESCALE>
__device__ __forceinline__ void wf_softmax(float (&s)[32], float (&m)[2], float (&l)[2],
                                           float (&alpha)[2], float (&o)[2][32],
                                           const wf_params &p, int row0, int kv0, bool mask,
                                           int t) {
    for (int r = 0; r < 2; r++) {
        const int i = row0 + 8 * r;
        float mx = -INFINITY;
        for (int jj = 0; jj < 8; jj++)
            for (int e = 0; e < 2; e++) {
                const int key = kv0 + 8 * jj + 2 * t + e;
                float &x = s[4 * jj + 2 * r + e];
                x *= p.sl2;
                if (mask && (key >= p.S || (p.causal && key > i + p.S - p.T))) x = -INFINITY;
                mx = fmaxf(mx, x);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m[r], mx);
        /* no visible key so far: nothing to scale, every p 0 */
        alpha[r] = mn == -INFINITY ? 1.f : wg_ex2(m[r] - mn);
        float sum = 0.f;
        for (int jj = 0; jj < 8; jj++)
            for (int e = 0; e < 2; e++) {
                float &x = s[4 * jj + 2 * r + e];
                x = mn == -INFINITY ? 0.f : wg_ex2(x - mn);
                sum += x;
            }
        l[r] = l[r] * alpha[r] + sum;
        m[r] = mn;
        if (RESCALE)
            for (int hh = 0; hh < 2; hh++)
                for (int jj = 0; jj < 8; jj++)
                    for (int e = 0; e < 2; e++)
                        o[hh][4 * jj + 2 * r + e] *= alpha[r];
    }
}
/* P as A fragments: k16 step u covers keys 16 u .. 16 u + 15, column blocks 2 u, 2 u + 1 */
template <bool BF> __device__ __forceinline__ void wf_to_a(uint32_t (&a)[4][4], const float (&s)[32]) {
    for (int u = 0; u < 4; u++)
        for (int c = 0; c < 4; c++)
            a[u][c] = wg_pack<BF>(s[8 * u + 2 * c], s[8 * u + 2 * c + 1]);
}
__device__ __forceinline__ void wf_rescale(float (&o)[2][32], const float (&alpha)[2]) {
    for (int hh = 0; hh < 2; hh++)
        for (int jj = 0; jj < 8; jj++)
            for (int i = 0; i < 4; i++)
                o[hh][4 * jj + i] *= alpha[i / 2];
}
/* out = O / l, lse = (m + log2 l) ln 2; rows with no visible key: 0 and -inf */
template <bool BF>
__device__ __forceinline__ void wf_store(const float (&o)[2][32], const float (&m)[2],
                                         const float (&l)[2], const wf_params &p,
                                         const wf_block &w, int row0, int t) {
    for (int r = 0; r < 2; r++) {
        const int i = row0 + 8 * r;
        float lt = l[r];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        if (i >= p.T) continue;
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        uint16_t *orow = p.out + w.b * p.so[0] + w.h * p.so[1] + (long long)i * p.so[2];
        for (int hh = 0; hh < 2; hh++)
            for (int jj = 0; jj < 8; jj++) {
                const int d = 64 * hh + 8 * jj + 2 * t;
                *(uint32_t *)(orow + d) =
                    wg_pack<BF>(o[hh][4 * jj + 2 * r] * inv, o[hh][4 * jj + 2 * r + 1] * inv);
            }
        if (t == 0)
            p.lse[((long long)w.b * p.Hq + w.h) * p.T + i] =
                lt > 0.f ? (m[r] + log2f(lt)) * 0.69314718055994531f : -INFINITY;
    }
}
__device__ __forceinline__ unsigned char *wf_smem() {
#ifdef FE_CUDA_EMU
    return (unsigned char *)emu::dsmem();
#else
    extern __shared__ __align__(1024) unsigned char wf_smem_buf[];
    return wf_smem_buf;
#endif
}
/* whether key tile kv0 has keys past S or past the causal diagonal of one of the rows from i0 */
__device__ __forceinline__ bool wf_tile_masked(const wf_params &p, int kv0, int i0) {
    return kv0 + WF_BC > p.S || (p.causal && kv0 + WF_BC - 1 > i0 + p.S - p.T);
}

/* (Bounded to 128 registers for two blocks an SM, it spilled 36 to 128 bytes, depending on
 * small changes: one block an SM.) */
template <bool BF> __global__ void __launch_bounds__(WF_NT, 1) wf_fwd_kernel(const wf_params p) {
    unsigned char *sm = wf_smem(), *sQ = sm;
    auto sK = [&](int st) { return sm + WF_BR * WF_D * 2 + st * 2 * WF_BC * WF_D * 2; };
    auto sV = [&](int st) { return sK(st) + WF_BC * WF_D * 2; };
    const wf_block w = wf_block_of(p);
    const wf_thread th = wf_thread_of(w);
    const int wg = th.wg, t = th.t, row0 = th.row0;
    wf_load<WF_BR>(sQ, w.q, p.sq[2], w.i0, p.T);
    if (w.ntiles > 0) {
        wf_load<WF_BC>(sK(0), w.k, p.sk[2], 0, p.S);
        wf_load<WF_BC>(sV(0), w.v, p.sv[2], 0, p.S);
    }
    wg_cp_commit();

    float o[2][32], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    wf_zero(o);
    for (int j = 0; j < w.ntiles; j++) {
        const int st = j & 1, kv0 = j * WF_BC;
        if (j + 1 < w.ntiles) { /* the next tile into the other stage, freed at the end of j - 1 */
            wf_load<WF_BC>(sK(st ^ 1), w.k, p.sk[2], kv0 + WF_BC, p.S);
            wf_load<WF_BC>(sV(st ^ 1), w.v, p.sv[2], kv0 + WF_BC, p.S);
            wg_cp_commit();
            wg_cp_wait<1>();
        } else {
            wg_cp_wait<0>();
        }
        wg_fence_proxy(); /* this thread's landed copies (and zero rows), for the MMAs */
        __syncthreads();

        float s[32];
        wg_fence();
        wf_qk<BF>(s, sQ, sK(st), wg);
        wg_commit();
        wg_wait0();
        wf_softmax<true>(s, m, l, alpha, o, p, row0, kv0, wf_tile_masked(p, kv0, w.i0), t);
        uint32_t a[4][4];
        wf_to_a<BF>(a, s);
        wg_fence();
        wf_pv<BF>(o, a, sV(st));
        wg_commit();
        wg_wait0();
        __syncthreads(); /* every warp is done with stage st before tile j + 2 loads into it */
    }
    wg_cp_wait<0>(); /* (nothing left in flight when there was no key tile) */
    wf_store<BF>(o, m, l, p, w, row0, t);
}

/* The pipelined version (see the top). */
template <bool BF> __global__ void __launch_bounds__(WF_NT, 1) wf_fwd_pipe_kernel(const wf_params p) {
    unsigned char *sm = wf_smem(), *sQ = sm;
    auto sK = [&](int j) { return sm + WF_BR * WF_D * 2 + (j % 3) * 2 * WF_BC * WF_D * 2; };
    auto sV = [&](int j) { return sK(j) + WF_BC * WF_D * 2; };
    const wf_block w = wf_block_of(p);
    const wf_thread th = wf_thread_of(w);
    const int wg = th.wg, t = th.t, row0 = th.row0;
    auto load = [&](int j) { /* tile j into stage j % 3 */
        wf_load<WF_BC>(sK(j), w.k, p.sk[2], j * WF_BC, p.S);
        wf_load<WF_BC>(sV(j), w.v, p.sv[2], j * WF_BC, p.S);
    };
    wf_load<WF_BR>(sQ, w.q, p.sq[2], w.i0, p.T);
    if (w.ntiles > 0) load(0);
    wg_cp_commit();

    float o[2][32], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    wf_zero(o);
    /* P of tiles j - 1 and j, in two register sets taken in turn (an array indexed by j % 2
     * would live in local memory) */
    uint32_t a0[4][4], a1[4][4];
    /* step j: prev holds P_{j-1}, cur gets P_j */
    auto step = [&](int j, uint32_t(&prev)[4][4], uint32_t(&cur)[4][4]) {
        const int kv0 = j * WF_BC;
        wg_cp_wait<0>(); /* tile j, issued a step ago */
        wg_fence_proxy();
        __syncthreads(); /* and every warp is done with tile j - 2's stage */
        if (j + 1 < w.ntiles) load(j + 1);
        wg_cp_commit();

        float s[32];
        wg_fence();
        wf_qk<BF>(s, sQ, sK(j), wg);
        wg_commit();
        if (j > 0) { /* O += P_{j-1} V_{j-1} while the softmax of S_j runs */
            wf_pv<BF>(o, prev, sV(j - 1));
            wg_commit();
            wg_wait<1>();
        } else {
            wg_wait<0>();
        }
        wf_softmax<false>(s, m, l, alpha, o, p, row0, kv0, wf_tile_masked(p, kv0, w.i0), t);
        wf_to_a<BF>(cur, s);
        wg_wait<0>();
        wf_rescale(o, alpha); /* O holds the tiles before j: to S_j's maxima */
    };
    for (int j = 0; j < w.ntiles; j++) {
        if (j & 1) step(j, a0, a1);
        else step(j, a1, a0);
    }
    auto last = [&](const uint32_t(&pl)[4][4]) { /* O += P V of the last tile */
        wg_fence();
        wf_pv<BF>(o, pl, sV(w.ntiles - 1));
        wg_commit();
        wg_wait<0>();
    };
    if (w.ntiles > 0) {
        if ((w.ntiles - 1) & 1) last(a1);
        else last(a0);
    }
    wg_cp_wait<0>();
    wf_store<BF>(o, m, l, p, w, row0, t);
}
