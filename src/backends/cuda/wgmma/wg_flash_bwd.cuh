/* An experimental flash attention backward on Hopper's warpgroup MMA (wgmma), head dim 128,
 * bf16 or f16, for the forward of wg_flash_fwd.cuh (or the library's: the same out and lse).
 * Not in the library yet: tests/wgmma/wg_flash_check.cu checks it against the library's
 * backward on a GPU and times the two, tests/wgmma/wg_flash_emu.cpp checks it on the CPU
 * against float64 gradients.
 *
 * Three kernels and a memset:
 *   wb_pre: per query row, Di = rowsum(dO * O) and the lse in log2 units, into f32 scratch
 *     padded to 64 rows a head (pad rows: lse +inf, so that their P is 0, and Di 0);
 *   wb_bwd_kernel: a block of two warpgroups per (query head, tile of 128 keys), 64 keys a
 *     warpgroup; it keeps its keys' dK and dV in f32 registers while it walks the query tiles
 *     of 64 rows that see them (Q, dO and the row statistics double-buffered with cp.async).
 *     Per query tile, with K, V, Q, dO in 128-byte-swizzled tiles as in the forward:
 *       S^T = K Q^T and dP^T = V dO^T (wgmma m64n64k16, both operands K-major in shared memory),
 *       as two groups, so that P^T = exp2(S^T log2(e) scale - lse2) is computed on the fragments
 *       while the second runs; then dS^T = P^T (dP^T - Di);
 *       dV += P^T dO and dK += dS^T Q, the A operand from registers (the accumulator fragment
 *       packed to 16 bits), dO and Q read MN-major (d along n) from their K-major tiles;
 *       dS stored to shared memory (rows: queries), then dQ (64 queries x this warpgroup's half
 *       of D) = dS K, K read MN-major, added to an f32 scratch dQ with float atomics;
 *     at the end dK (times the scale) and dV go to f32 scratch: stored, or with grouped KV heads
 *     added with float atomics (the group's query heads share them);
 *   wb_convert: dQ, dK, dV from f32 scratch to their 16-bit outputs.
 * Atomics make dQ (and dK, dV with grouped heads) not bitwise reproducible run to run. */
#pragma once
#include <math.h>

#include "wg_flash_fwd.cuh"

#define WB_BC 128 /* keys a block */
#define WB_BR 64  /* query rows a step */
/* the forward's products serve here with the roles of its tiles swapped */
static_assert(WB_BC == WF_BR && WB_BR == WF_BC, "wf_qk, wf_pv: tiles of 128 and 64 rows");
/* shared memory: K, V (128 x 128), Q and dO of two stages (64 x 128), dS (64 x 128), then the
 * row statistics of two stages (lse2 and Di, 64 floats each) */
#define WB_TILE_KV (WB_BC * WF_D * 2)
#define WB_TILE_Q (WB_BR * WF_D * 2)
#define WB_SMEM (2 * WB_TILE_KV + 5 * WB_TILE_Q + 2 * 2 * WB_BR * 4)

struct wb_params {
    const uint16_t *q, *k, *v, *o, *dout;
    const float *lse;
    uint16_t *dq, *dk, *dv;          /* 16-bit outputs, shaped like q, k, v */
    float *fdq, *fdk, *fdv;          /* f32 scratch (B, Hq, T, D), (B, Hkv, S, D) twice; fdq zeroed
                                        first, fdk and fdv too with grouped heads */
    float *stat;                     /* (B, Hq, 2, TP): lse2 then Di, TP = T rounded up to 64 */
    int B, Hq, Hkv, T, S, TP;
    long long sq[3], sk[3], sv[3], so[3], sdo[3]; /* element strides of batch, head and row */
    long long sdq[3], sdk[3], sdv[3];
    float sl2, scale; /* scale * log2(e), scale */
    bool causal;
};

__device__ __forceinline__ float wb_to_f(uint16_t x, bool bf) {
    return bf ? __uint_as_float((unsigned)x << 16) : __half2float(__ushort_as_half(x));
}

/* One warp a query row: lse2 and Di into stat (pad rows too). Grid: ceil(B Hq TP / 8) blocks of
 * 256 threads. */
template <bool BF> __global__ void __launch_bounds__(256) wb_pre(const wb_params p) {
    const long long row = (long long)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = (int)threadIdx.x % 32;
    if (row >= (long long)p.B * p.Hq * p.TP) return;
    const int i = (int)(row % p.TP);
    const long long bh = row / p.TP;
    const int b = (int)(bh / p.Hq), h = (int)(bh % p.Hq);
    float *st = p.stat + bh * 2 * p.TP;
    if (i >= p.T) {
        if (lane == 0) st[i] = INFINITY, st[p.TP + i] = 0.f;
        return;
    }
    const uint16_t *o = p.o + b * p.so[0] + h * p.so[1] + (long long)i * p.so[2];
    const uint16_t *d = p.dout + b * p.sdo[0] + h * p.sdo[1] + (long long)i * p.sdo[2];
    float s = 0.f;
    for (int c = lane; c < WF_D; c += 32)
        s += wb_to_f(o[c], BF) * wb_to_f(d[c], BF);
    for (int w = 16; w > 0; w /= 2)
        s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) {
        st[i] = p.lse[bh * p.T + i] * 1.4426950408889634f;
        st[p.TP + i] = s;
    }
}

/* Byte offset of element (row r, column c) in a 128-byte-swizzled tile of R rows, D 128 */
__device__ __forceinline__ int wb_el(int R, int r, int c) {
    return wf_off(R, r, c / 8) + (c % 8) * 2;
}

template <bool BF> __global__ void __launch_bounds__(WF_NT, 1) wb_bwd_kernel(const wb_params p) {
#ifdef FE_CUDA_EMU
    unsigned char *sm = (unsigned char *)emu::dsmem();
#else
    extern __shared__ __align__(1024) unsigned char sm[];
#endif
    unsigned char *sK = sm, *sV = sm + WB_TILE_KV, *sdS = sm + 2 * WB_TILE_KV;
    auto sQ = [&](int st) { return sm + 2 * WB_TILE_KV + (1 + 2 * st) * WB_TILE_Q; };
    auto sdO = [&](int st) { return sQ(st) + WB_TILE_Q; };
    auto sSt = [&](int st) { return (float *)(sm + 2 * WB_TILE_KV + 5 * WB_TILE_Q) + st * 2 * WB_BR; };
    const int tid = (int)threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    /* blocks: heads fastest, key tiles from the first (the most queries under the mask) */
    const int nh = p.B * p.Hq;
    const int bh = (int)blockIdx.x % nh, kb = (int)blockIdx.x / nh;
    const int b = bh / p.Hq, h = bh % p.Hq, G = p.Hq / p.Hkv, hk = h / G, kv0 = kb * WB_BC;
    const uint16_t *q = p.q + b * p.sq[0] + h * p.sq[1], *dout = p.dout + b * p.sdo[0] + h * p.sdo[1];
    const uint16_t *k = p.k + b * p.sk[0] + hk * p.sk[1], *v = p.v + b * p.sv[0] + hk * p.sv[1];
    const float *stat = p.stat + (long long)bh * 2 * p.TP;
    /* query tiles that see a key of this tile: with the mask, rows i >= kv0 - (S - T) */
    const int nqt = (p.T + WB_BR - 1) / WB_BR;
    int qt0 = 0;
    if (p.causal) {
        const int first = kv0 - (p.S - p.T);
        qt0 = first <= 0 ? 0 : first / WB_BR;
    }
    auto load_q = [&](int st, int qt) {
        wf_load<WB_BR>(sQ(st), q, p.sq[2], qt * WB_BR, p.T);
        wf_load<WB_BR>(sdO(st), dout, p.sdo[2], qt * WB_BR, p.T);
        if (tid < 32) /* lse2 and Di of the tile's 64 rows (stat is padded to 64 rows) */
            wg_cp16(sSt(st) + (tid / 16) * WB_BR + (tid % 16) * 4,
                    stat + (tid / 16) * p.TP + qt * WB_BR + (tid % 16) * 4);
    };
    wf_load<WB_BC>(sK, k, p.sk[2], kv0, p.S);
    wf_load<WB_BC>(sV, v, p.sv[2], kv0, p.S);
    if (qt0 < nqt) load_q(0, qt0);
    wg_cp_commit();

    /* this thread's keys (r = 0, 1): kv0 + 64 wg + 16 warp + g + 8 r */
    const int key0 = kv0 + 64 * wg + 16 * warp + g;
    float dk[2][32], dv[2][32];
    wf_zero(dk), wf_zero(dv);
    for (int qt = qt0; qt < nqt; qt++) {
        const int st = (qt - qt0) & 1, q0 = qt * WB_BR;
        wg_cp_wait<0>(); /* tile qt, issued a step ago */
        wg_fence_proxy();
        __syncthreads();
        /* the next tile into the other stage, which every warpgroup is done with now (its dK
         * product of step qt - 1, reading Q, completed before the barrier) */
        if (qt + 1 < nqt) load_q(st ^ 1, qt + 1);
        wg_cp_commit();

        /* S^T = K Q^T, then dP^T = V dO^T, for this warpgroup's 64 keys, in two groups: P is
         * computed from S while the dP product runs */
        float s[32], dp[32];
        wg_fence();
        wf_qk<BF>(s, sK, sQ(st), wg);
        wg_commit();
        wf_qk<BF>(dp, sV, sdO(st), wg);
        wg_commit();
        wg_wait<1>();

        /* P^T (in s), then dS^T (in dp): s[4 jj + 2 r + e] is (key key0 + 8 r, query
         * q0 + 8 jj + 2 t + e) */
        const float *L2 = sSt(st), *Di = L2 + WB_BR;
        const bool mask = kv0 + WB_BC > p.S || (p.causal && kv0 + WB_BC - 1 > q0 + p.S - p.T);
        for (int r = 0; r < 2; r++) {
            const int key = key0 + 8 * r;
            for (int jj = 0; jj < 8; jj++)
                for (int e = 0; e < 2; e++) {
                    const int qi = 8 * jj + 2 * t + e, idx = 4 * jj + 2 * r + e;
                    const bool masked =
                        mask && (key >= p.S || (p.causal && key > q0 + qi + p.S - p.T));
                    s[idx] = masked ? 0.f : wg_ex2(s[idx] * p.sl2 - L2[qi]);
                }
        }
        wg_wait<0>();
        for (int jj = 0; jj < 8; jj++)
            for (int i = 0; i < 4; i++)
                dp[4 * jj + i] = s[4 * jj + i] * (dp[4 * jj + i] - Di[8 * jj + 2 * t + (i & 1)]);
        /* as A fragments (k: the queries, 16 a step), and dS into shared memory (rows: queries) */
        uint32_t pa[4][4], da[4][4];
        for (int u = 0; u < 4; u++)
            for (int c = 0; c < 4; c++) {
                pa[u][c] = wg_pack<BF>(s[8 * u + 2 * c], s[8 * u + 2 * c + 1]);
                da[u][c] = wg_pack<BF>(dp[8 * u + 2 * c], dp[8 * u + 2 * c + 1]);
            }
        for (int u = 0; u < 4; u++)
            for (int c = 0; c < 4; c++) { /* fragment element pair (row g + 8 (c % 2), columns 8 (c / 2) ..) */
                const int kl = 64 * wg + 16 * warp + g + 8 * (c % 2), ql = 16 * u + 8 * (c / 2) + 2 * t;
                const uint32_t w = da[u][c];
                *(uint16_t *)(sdS + wb_el(WB_BR, ql, kl)) = (uint16_t)(w & 0xffff);
                *(uint16_t *)(sdS + wb_el(WB_BR, ql + 1, kl)) = (uint16_t)(w >> 16);
            }

        /* dV += P^T dO, dK += dS^T Q (dO, Q MN-major: d along n, the queries along k) */
        wg_fence();
        wf_pv<BF>(dv, pa, sdO(st));
        wf_pv<BF>(dk, da, sQ(st));
        wg_commit();
        wg_fence_proxy(); /* the dS stores, for the next product */
        __syncthreads();  /* dS complete from both warpgroups */

        /* dQ (64 queries x this warpgroup's half of D) = dS K (K MN-major: d along n) */
        float dqa[32];
        wg_fence();
        for (int kk = 0; kk < 8; kk++) {
            const uint64_t dsd = wg_desc(sdS + (kk / 4) * WB_TILE_Q / 2 + (kk % 4) * 32, 16, 1024, 1);
            const uint64_t dkk = wg_desc(sK + wg * WB_TILE_KV / 2 + kk * 2048, 16, 1024, 1);
            wg_ss_n64<BF, 1>(dqa, dsd, dkk, kk > 0);
        }
        wg_commit();
        wg_wait0();
        float *fdq = p.fdq + (((long long)b * p.Hq + h) * p.T) * WF_D;
        for (int jj = 0; jj < 8; jj++)
            for (int e = 0; e < 4; e++) {
                const int i = q0 + 16 * warp + g + 8 * (e >> 1), d = 64 * wg + 8 * jj + 2 * t + (e & 1);
                if (i < p.T) atomicAdd(fdq + (long long)i * WF_D + d, dqa[4 * jj + e] * p.scale);
            }
    }
    wg_cp_wait<0>();

    /* dK (times the scale) and dV of this thread's keys, to the f32 scratch */
    for (int r = 0; r < 2; r++) {
        const int key = key0 + 8 * r;
        if (key >= p.S) continue;
        const long long base = (((long long)b * p.Hkv + hk) * p.S + key) * WF_D;
        for (int hh = 0; hh < 2; hh++)
            for (int jj = 0; jj < 8; jj++)
                for (int e = 0; e < 2; e++) {
                    const int d = 64 * hh + 8 * jj + 2 * t + e, idx = 4 * jj + 2 * r + e;
                    if (G == 1) {
                        p.fdk[base + d] = dk[hh][idx] * p.scale;
                        p.fdv[base + d] = dv[hh][idx];
                    } else {
                        atomicAdd(p.fdk + base + d, dk[hh][idx] * p.scale);
                        atomicAdd(p.fdv + base + d, dv[hh][idx]);
                    }
                }
    }
}

/* dQ, dK, dV from the f32 scratch to their 16-bit outputs, a thread per element pair */
template <bool BF> __global__ void __launch_bounds__(256) wb_convert(const wb_params p) {
    const long long nq = (long long)p.B * p.Hq * p.T * WF_D / 2, nk = (long long)p.B * p.Hkv * p.S * WF_D / 2;
    long long x = (long long)blockIdx.x * 256 + threadIdx.x;
    const float *src;
    uint16_t *dst;
    const long long *s;
    int H, N;
    if (x < nq) src = p.fdq, dst = p.dq, s = p.sdq, H = p.Hq, N = p.T;
    else if ((x -= nq) < nk) src = p.fdk, dst = p.dk, s = p.sdk, H = p.Hkv, N = p.S;
    else if ((x -= nk) < nk) src = p.fdv, dst = p.dv, s = p.sdv, H = p.Hkv, N = p.S;
    else return;
    const long long e = 2 * x, row = e / WF_D;
    const int d = (int)(e % WF_D), i = (int)(row % N), bh = (int)(row / N);
    *(uint32_t *)(dst + (bh / H) * s[0] + (bh % H) * s[1] + (long long)i * s[2] + d) =
        wg_pack<BF>(src[e], src[e + 1]);
}
