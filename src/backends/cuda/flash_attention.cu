/* Flash attention kernels (FlashAttention-2 scheme) on the tensor cores.
 *
 * Forward: one CTA of 4 warps per (head, batch, query tile of 128 rows); each warp owns
 * 32 query rows (two m16 tiles, so that every K, V fragment read from shared memory feeds
 * two products). At D = 64, Q is loaded once into mma A fragments; at D = 128 (where the
 * registers are taken by O) its fragments are read from shared memory again for each key
 * tile. K and V tiles of 64 keys are staged in shared memory with cp.async, V of tile j
 * loading while S = Q K^T runs and K of tile j+1 loading while O += P V runs. Softmax is online in
 * f32 registers with the scale folded into exp2 (log2 units); a warp moves its running maxima,
 * and rescales O, only when one has grown by more than FA_SLACK. Fully masked key
 * tiles of the causal mask are never visited.
 *
 * Backward: rowsum(dO * O) and the lse in log2 units first (a small kernel, so that the
 * main loop stages them with cp.async like the tiles), then one CTA per (query head,
 * batch, key tile of 128 keys), which keeps the tile's dK, dV in f32 registers while it
 * walks the query tiles of its head that see the tile. At D = 64 (fa_bwd_kernel) the CTA
 * has 4 warps, each owning 32 keys (two m16 tiles, as in the forward) over 32-row query
 * tiles; at D = 128 (fa_bwd8_kernel) 8 warps over 64-row query tiles, arranged per
 * product as FlashAttention-2 does (see there). dQ is accumulated in an f32 scratch buffer
 * with atomic adds (each CTA adds dS K for its keys) and converted at the end. With grouped
 * KV heads (G = Hq / Hkv > 1) the G CTAs of one kv head add their dK, dV into f32 scratch
 * buffers the same way (one CTA per query head gives G times the parallelism and far
 * shorter CTAs than walking the whole group in one); with G = 1 they write dK, dV
 * directly. Float atomics make dQ, and dK, dV when G > 1, not bitwise reproducible run
 * to run (the order of the adds varies).
 *
 * Scheduling: the tile index is the slowest grid dimension (z), ordered so that under
 * the causal mask the CTAs with the most work are dispatched first (forward: the last
 * query tiles, which see the most keys; backward: the first key tiles, which are seen
 * by the most queries); light CTAs then fill in behind them instead of a few heavy
 * ones running alone at the end.
 *
 * Matrix products are mma.sync.m16n8k16 (f32 accumulate) fed by ldmatrix from
 * shared tiles whose rows are padded by 16 bytes (conflict-free ldmatrix).
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit inputs), lane = 4 * g + t:
 *   A (16 x 16): reg0 (row g, cols 2t, 2t+1), reg1 (row g+8, same cols),
 *                reg2 (row g, cols 2t+8, 2t+9), reg3 (row g+8, cols 2t+8, 2t+9)
 *   B (16 x 8):  reg0 (rows 2t, 2t+1, col g), reg1 (rows 2t+8, 2t+9, col g)
 *   C (16 x 8):  c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
 * ldmatrix.x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; lane l gets in
 * reg i the pair (row l/4, cols 2(l%4), +1) of matrix i, or with .trans the pair
 * (rows 2(l%4), +1, col l/4).
 *
 * With FE_FLASH_EMU defined this file provides only the kernels, written against
 * the primitives below, for tests/flash/flash_emu.cpp to run on the CPU. */
#include "backends/cuda/flash_attention.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef FE_FLASH_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* ---- device primitives --------------------------------------------------------------- */

#define FA_DEV __device__ __forceinline__
#define FA_KERNEL(nt) __global__ void __launch_bounds__(nt)
#define FA_KERNEL_MIN(nt, mb) __global__ void __launch_bounds__(nt, mb) /* >= mb CTAs per SM */

FA_DEV int fa_tid() { return (int)threadIdx.x; }
FA_DEV int fa_ntid() { return (int)blockDim.x; }
FA_DEV int fa_bx() { return (int)blockIdx.x; }
FA_DEV int fa_by() { return (int)blockIdx.y; }
FA_DEV int fa_bz() { return (int)blockIdx.z; }
FA_DEV int fa_gx() { return (int)gridDim.x; }
FA_DEV void fa_sync() { __syncthreads(); }
FA_DEV void fa_syncwarp() { __syncwarp(); }
FA_DEV unsigned char *fa_smem() {
    extern __shared__ __align__(16) unsigned char fa_smem_buf[];
    return fa_smem_buf;
}
FA_DEV uint32_t fa_saddr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* ldmatrix.x4 / .x4.trans: `p` is this lane's row address */
FA_DEV void fa_ldsm4(uint32_t (&r)[4], const uint16_t *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_saddr(p)));
}
FA_DEV void fa_ldsm4t(uint32_t (&r)[4], const uint16_t *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_saddr(p)));
}
/* c += a b for one 16x8x16 tile; BF selects bf16, else f16 */
template <bool BF>
FA_DEV void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if (BF)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* 16-byte global -> shared copy, zero-filled when !valid (src is then not read) */
FA_DEV void fa_cp16(uint16_t *dst, const uint16_t *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(fa_saddr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
FA_DEV void fa_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
FA_DEV void fa_cp_wait() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
FA_DEV float fa_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
FA_DEV float fa_shfl_xor(float x, int m) { return __shfl_xor_sync(0xffffffffu, x, m); }
FA_DEV bool fa_any(bool x) { return __any_sync(0xffffffffu, x); }
FA_DEV void fa_red2(float *p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2 *>(p), make_float2(a, b));
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}
FA_DEV void fa_red1(float *p, float a) { atomicAdd(p, a); }
FA_DEV void fa_copy16(void *dst, const void *src) {
    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
}
/* 8 floats from a 16-byte aligned address */
FA_DEV void fa_ldf8(float (&f)[8], const float *p) {
    const float4 a = reinterpret_cast<const float4 *>(p)[0];
    const float4 b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
FA_DEV void fa_st32(uint16_t *p, uint32_t v) { *reinterpret_cast<uint32_t *>(p) = v; }
/* two floats -> packed pair (lo in the low half) */
template <bool BF> FA_DEV uint32_t fa_pack(float lo, float hi) {
    uint32_t u;
    if (BF) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        u = *reinterpret_cast<uint32_t *>(&h);
    } else {
        __half2 h = __floats2half2_rn(lo, hi);
        u = *reinterpret_cast<uint32_t *>(&h);
    }
    return u;
}
template <bool BF> FA_DEV float fa_to_f(uint16_t x) {
    return BF ? __uint_as_float((uint32_t)x << 16) : __half2float(__ushort_as_half(x));
}
template <bool BF> FA_DEV uint16_t fa_from_f(float f) {
    return BF ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
}
#endif /* !FE_FLASH_EMU */

/* The C fragments of n tiles 2 kk and 2 kk + 1 of a product (a 16 x 16 block) as the A
 * fragment of the next product, rounded to 16 bits: the two layouts match pair for pair. */
template <bool BF, int N> FA_DEV void fa_c_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
    a[0] = fa_pack<BF>(c[2 * kk][0], c[2 * kk][1]);
    a[1] = fa_pack<BF>(c[2 * kk][2], c[2 * kk][3]);
    a[2] = fa_pack<BF>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = fa_pack<BF>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

/* One 16-deep step of acc += A B over a warp's two m16 tiles by N n8 tiles: la(a, m) loads
 * the A fragment of m tile m, lb(b, np) the B fragments of n tiles 2 np and 2 np + 1, so that
 * each A fragment feeds N products and each B fragment two. */
template <bool BF, int N, typename LA, typename LB>
FA_DEV void fa_mma_2xn(float (&acc)[2][N][4], LA la, LB lb) {
    uint32_t a[2][4];
#pragma unroll
    for (int m = 0; m < 2; m++) la(a[m], m);
#pragma unroll
    for (int np = 0; np < N / 2; np++) {
        uint32_t b[4];
        lb(b, np);
#pragma unroll
        for (int m = 0; m < 2; m++) {
            fa_mma<BF>(acc[m][2 * np], a[m], b[0], b[1]);
            fa_mma<BF>(acc[m][2 * np + 1], a[m], b[2], b[3]);
        }
    }
}

/* ---- kernels ------------------------------------------------------------------------- */

#define FA_LOG2E 1.4426950408889634f
#define FA_SLACK 8.f /* forward: how far (log2 units) a row's maximum may outgrow the one in use */
#define FA_LN2 0.6931471805599453f

template <typename X> FA_DEV X fa_min(X a, X b) { return a < b ? a : b; }
template <typename X> FA_DEV X fa_max(X a, X b) { return a > b ? a : b; }

/* Element strides of a (B, H, rows, D) operand whose D is contiguous: batch, head, row. */
struct fa_strides {
    long long b, h, r;
};

struct fa_params {
    const uint16_t *q, *k, *v, *o, *go;
    uint16_t *out, *gq, *gk, *gv;
    float *lse;  /* (B, Hq, T), contiguous */
    float *dq;   /* f32 dQ accumulator (B, Hq, T, D), contiguous */
    float *dk, *dv; /* f32 dK, dV accumulators (B, Hkv, S, D), contiguous; only when G > 1 */
    /* per query row, (B, Hq, 2, FA_TPAD(T)) contiguous: [0] the lse in log2 units (+inf
     * for rows without keys and in the padding), [1] rowsum(dO * O) (0 in the padding) */
    float *stat;
    fa_strides sq, sk, sv, so, sgo, sgq, sgk, sgv; /* so: out (= o) */
    int Hq, Hkv, G, T, S, causal;
    float scale, sl2; /* scale and scale * log2(e) */
};

enum { FA_BC = 64, FA_NT = 128, FA_BBR = 32 };

/* Forward query tile: each of the 4 warps owns two m16 tiles of query rows (QW = 2), so
 * that every K, V fragment read from shared memory feeds two products. At D = 64 the warp
 * holds its Q fragments in registers for the whole loop (QREG); at D = 128 they would not
 * fit beside the O accumulators, and are read again from shared memory at each K tile. */
constexpr int fa_fwd_br(int /* D: 64 or 128 */) { return 128; }
template <int D> struct fa_fwd_tile {
    static constexpr int br = fa_fwd_br(D), qw = br / 64;
    static constexpr bool qreg = D == 64;
};

/* Backward key tile: 128 keys at both head dims, in two kernels.
 * D = 64 (fa_bwd_kernel): 4 warps, each owning KW = 2 m16 tiles of keys, so that every Q,
 * dO fragment read from shared memory feeds two products (shared-memory traffic, not the
 * tensor cores, bounds a one-tile kernel), over 32-row query tiles.
 * D = 128 (fa_bwd8_kernel): 8 warps over 64-row query tiles; the dK, dV accumulators of a
 * warp cover 32 keys x 64 columns, and P, dS go through shared memory (see there). */
constexpr int fa_bwd_bc(int /* D: 64 or 128 */) { return 128; }
constexpr int fa_bwd_nt(int D) { return D == 128 ? 256 : FA_NT; }
template <int D> struct fa_bwd_tile {
    static constexpr int bc = fa_bwd_bc(D), kw = bc / 64;
};
enum { FA8_BR = 64 }; /* query rows per step of fa_bwd8_kernel */

/* T rounded up to whole backward query tiles (64 rows: both kernels' tiles): the row
 * length of stat, so that a tile of it is aligned, in-bounds runs of 16-byte chunks (host
 * and device). */
#define FA_TPAD(T) (((T) + FA8_BR - 1) / FA8_BR * FA8_BR)

/* Shared bytes of the forward (Q, K, V tiles) and backward kernels for head dim D; rows
 * padded by 8 elements. Backward, D = 64: K, V, 2x Q, 2x dO, dS^T, 2x lse, 2x rowsum;
 * D = 128: K, V, 2x Q, 2x dO, P, dS, 2x lse, 2x rowsum. */
constexpr int fa_fwd_smem(int D) { return (fa_fwd_br(D) + 2 * FA_BC) * (D + 8) * 2; }
constexpr int fa_bwd_smem(int D) {
    return D == 128 ? (2 * fa_bwd_bc(D) + 6 * FA8_BR) * (D + 8) * 2 + 4 * FA8_BR * 4
                    : (2 * fa_bwd_bc(D) + 4 * FA_BBR) * (D + 8) * 2 +
                          fa_bwd_bc(D) * (FA_BBR + 8) * 2 + 4 * FA_BBR * 4;
}

/* Stage rows [r0, r0 + R) of an (nrows, D) matrix with row stride ld (elements) into a
 * shared tile with row stride D + 8; rows at or past nrows are zero-filled.
 * Asynchronous (cp.async). A thread moves the same 16-byte column of rows tid / CPR,
 * + NT / CPR, ... (one 64-bit multiply-add per row; precomputing a stepped pointer
 * instead costs the forward kernel registers and, at D = 64, a spill). */
template <int R, int D, int NT = FA_NT>
FA_DEV void fa_load_tile(uint16_t *s, const uint16_t *g, long long ld, int r0, int nrows) {
    constexpr int CPR = D / 8, RPS = NT / CPR; /* 16-byte chunks per row, rows per step */
    static_assert(NT % CPR == 0 && R % RPS == 0, "tile rows split evenly over the threads");
    const int r = fa_tid() / CPR, cc = fa_tid() % CPR;
    uint16_t *dst = s + r * (D + 8) + cc * 8;
#pragma unroll
    for (int k = 0; k < R / RPS; k++) {
        const int row = r0 + r + k * RPS;
        const bool ok = row < nrows;
        fa_cp16(dst + k * RPS * (D + 8), ok ? g + row * ld + cc * 8 : g, ok);
    }
}

/* out, lse for one (head, batch, query tile). Grid (Hq, B, ceil(T / BR)), 128 threads;
 * each warp owns QW m16 tiles of query rows (BR = 64 QW), so that every K and V fragment
 * read from shared memory feeds QW products. */
template <bool BF, int D> FA_KERNEL(FA_NT) fa_fwd_kernel(const fa_params p) {
    constexpr int QW = fa_fwd_tile<D>::qw, BR = fa_fwd_tile<D>::br, BC = FA_BC, LD = D + 8;
    uint16_t *sQ = reinterpret_cast<uint16_t *>(fa_smem());
    uint16_t *sK = sQ + BR * LD, *sV = sK + BC * LD;
    const int tid = fa_tid(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int T = p.T, S = p.S;
    /* heavy (late) query tiles first under the causal mask */
    const int qt = p.causal ? (T + BR - 1) / BR - 1 - fa_bz() : fa_bz();
    const int h = fa_bx(), b = fa_by(), hk = h / p.G;
    const int i0 = qt * BR, w0 = warp * 16 * QW; /* this warp's first row in the tile */
    const size_t qrow = ((size_t)b * p.Hq + h) * T; /* lse rows */
    const uint16_t *Q = p.q + b * p.sq.b + h * p.sq.h;
    const uint16_t *K = p.k + b * p.sk.b + hk * p.sk.h, *V = p.v + b * p.sv.b + hk * p.sv.h;
    const int n_end = p.causal ? fa_min(S, i0 + BR + S - T) : S; /* keys [0, n_end) matter */
    const int n_tiles = n_end > 0 ? (n_end + BC - 1) / BC : 0;

    fa_load_tile<BR, D>(sQ, Q, p.sq.r, i0, T);
    if (n_tiles > 0) fa_load_tile<BC, D>(sK, K, p.sk.r, 0, S);
    fa_cp_commit();
    fa_cp_wait();
    fa_sync();

    /* this warp's query rows as A fragments, one per m tile and 16 columns of D (only
     * with QREG; else read where they are used) */
    constexpr bool QREG = fa_fwd_tile<D>::qreg;
    auto q_frag = [&](uint32_t(&a)[4], int mt, int kk) {
        fa_ldsm4(a, sQ + (w0 + 16 * mt + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 +
                        (lane >> 4) * 8);
    };
    uint32_t qf[QW][QREG ? D / 16 : 1][4];
    if constexpr (QREG) {
#pragma unroll
        for (int mt = 0; mt < QW; mt++)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) q_frag(qf[mt][kk], mt, kk);
    }

    float o[QW][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < QW; mt++)
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    float m[QW][2], l[QW][2]; /* m in log2 units */
#pragma unroll
    for (int mt = 0; mt < QW; mt++) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;

    for (int jt = 0; jt < n_tiles; jt++) {
        const int kv0 = jt * BC;
        if (jt > 0) { /* K tile jt has landed; every warp is done with V tile jt - 1 */
            fa_cp_wait();
            fa_sync();
        }
        fa_load_tile<BC, D>(sV, V, p.sv.r, kv0, S);
        fa_cp_commit();

        /* S = Q K^T for 16 QW rows x 64 keys */
        float s[QW][BC / 8][4];
#pragma unroll
        for (int mt = 0; mt < QW; mt++)
#pragma unroll
            for (int n = 0; n < BC / 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[QW][4];
#pragma unroll
            for (int mt = 0; mt < QW; mt++) {
                if constexpr (QREG) {
#pragma unroll
                    for (int e = 0; e < 4; e++) qa[mt][e] = qf[mt][kk][e];
                } else {
                    q_frag(qa[mt], mt, kk);
                }
            }
#pragma unroll
            for (int np = 0; np < BC / 16; np++) {
                uint32_t kb[4];
                fa_ldsm4(kb, sK + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 +
                                 ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < QW; mt++) {
                    fa_mma<BF>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
                    fa_mma<BF>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
                }
            }
        }

        if (kv0 + BC > S || (p.causal && kv0 + BC - 1 > i0 + S - T)) {
#pragma unroll
            for (int mt = 0; mt < QW; mt++)
#pragma unroll
                for (int n = 0; n < BC / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int j = kv0 + 8 * n + 2 * t + (e & 1), i = i0 + w0 + 16 * mt + g + 8 * (e >> 1);
                        if (j >= S || (p.causal && j > i + S - T)) s[mt][n][e] = -INFINITY;
                    }
        }

        /* online softmax, rows g (r = 0) and g + 8 (r = 1) of each m tile; a row lives in
         * 4 lanes. The running maxima move only when some row of the warp has grown by more
         * than FA_SLACK (log2 units) or had none: otherwise the tile's probabilities are taken
         * against the old maxima (at most 2^FA_SLACK, harmless in f32 sums and 16-bit P),
         * and the warp skips rescaling its O accumulators. Past the first key tiles the
         * maxima rarely move that far, so most tiles save QW * D / 2 multiplies a thread. */
        float m_new[QW][2];
        bool grow = false;
#pragma unroll
        for (int mt = 0; mt < QW; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < BC / 8; n++) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                mx = fmaxf(mx, fa_shfl_xor(mx, 1));
                mx = fmaxf(mx, fa_shfl_xor(mx, 2));
                m_new[mt][r] = fmaxf(m[mt][r], mx * p.sl2);
                grow |= m_new[mt][r] > m[mt][r] + FA_SLACK; /* true from -inf to finite */
            }
        const bool rescale = fa_any(grow); /* warp-uniform */
#pragma unroll
        for (int mt = 0; mt < QW; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const float m_keep = rescale ? m_new[mt][r] : m[mt][r];
                const float m_use = m_keep == -INFINITY ? 0.f : m_keep;
                float sum = 0.f;
#pragma unroll
                for (int n = 0; n < BC / 8; n++) {
                    float p0 = fa_ex2(fmaf(s[mt][n][2 * r], p.sl2, -m_use));
                    float p1 = fa_ex2(fmaf(s[mt][n][2 * r + 1], p.sl2, -m_use));
                    s[mt][n][2 * r] = p0, s[mt][n][2 * r + 1] = p1;
                    sum += p0 + p1;
                }
                if (rescale) {
                    const float alpha = fa_ex2(m[mt][r] - m_use);
                    l[mt][r] *= alpha;
#pragma unroll
                    for (int n = 0; n < D / 8; n++) o[mt][n][2 * r] *= alpha, o[mt][n][2 * r + 1] *= alpha;
                }
                l[mt][r] += sum;
                m[mt][r] = m_keep;
            }

        /* V tile jt has landed; every warp is done with K tile jt */
        fa_cp_wait();
        fa_sync();
        if (jt + 1 < n_tiles) {
            fa_load_tile<BC, D>(sK, K, p.sk.r, kv0 + BC, S);
            fa_cp_commit();
        }

        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            uint32_t pa[QW][4];
#pragma unroll
            for (int mt = 0; mt < QW; mt++) fa_c_to_a<BF>(pa[mt], s[mt], kk);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t vb[4];
                fa_ldsm4t(vb, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 +
                                  (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < QW; mt++) {
                    fa_mma<BF>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    fa_mma<BF>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
        }
    }

    /* normalise, write lse, stage O in this warp's own rows of sQ, copy out. The lanes wait for
     * each other first: the rows were read by the warp's ldmatrix, whose lanes fetch rows for
     * one another, so a lane's store could otherwise race another lane's read (compute-sanitizer
     * racecheck reported these intra-warp hazards over flash_check on an H200) */
    fa_syncwarp();
#pragma unroll
    for (int mt = 0; mt < QW; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lt = l[mt][r];
            lt += fa_shfl_xor(lt, 1);
            lt += fa_shfl_xor(lt, 2);
            const float inv = lt > 0.f ? 1.f / lt : 0.f;
            const int rr = w0 + 16 * mt + g + 8 * r, i = i0 + rr;
            if (t == 0 && i < T) p.lse[qrow + i] = lt > 0.f ? (m[mt][r] + log2f(lt)) * FA_LN2 : -INFINITY;
#pragma unroll
            for (int n = 0; n < D / 8; n++)
                fa_st32(sQ + rr * LD + 8 * n + 2 * t,
                        fa_pack<BF>(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv));
        }
    fa_syncwarp();
    uint16_t *O = p.out + b * p.so.b + h * p.so.h;
#pragma unroll
    for (int c = lane; c < 16 * QW * (D / 8); c += 32) {
        const int r = c / (D / 8), cc = c % (D / 8), i = i0 + w0 + r;
        if (i < T) fa_copy16(O + i * p.so.r + cc * 8, sQ + (w0 + r) * LD + cc * 8);
    }
}

/* Rows of the rowsum kernel per 256-thread block: D / 8 threads per row. */
template <int D> struct fa_pre {
    static constexpr int rows = 256 / (D / 8);
};

/* stat[b, h, 1, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] (f32) and stat[b, h, 0, i] =
 * the lse in log2 units, +inf where the row sees no key (so that its probabilities are
 * 0), for the rows i < FA_TPAD(T) (the padding: +inf and 0). D / 8 neighbouring lanes
 * share a row, each loading 16 bytes of O and of dO (rows are 16-byte aligned). Grid
 * (ceil(FA_TPAD(T) / fa_pre<D>::rows), Hq, B), 256 threads. */
template <bool BF, int D> FA_KERNEL(256) fa_bwd_pre_kernel(const fa_params p) {
    constexpr int CPR = D / 8;
    const int i = fa_bx() * fa_pre<D>::rows + fa_tid() / CPR, cc = fa_tid() % CPR;
    const int h = fa_by(), b = fa_bz(), Tp = FA_TPAD(p.T);
    float acc = 0.f;
    if (i < p.T) {
        alignas(16) uint16_t o[8], go[8];
        fa_copy16(o, p.o + b * p.so.b + h * p.so.h + i * p.so.r + cc * 8);
        fa_copy16(go, p.go + b * p.sgo.b + h * p.sgo.h + i * p.sgo.r + cc * 8);
#pragma unroll
        for (int e = 0; e < 8; e++) acc += fa_to_f<BF>(o[e]) * fa_to_f<BF>(go[e]);
    }
    /* every lane shuffles (full-warp masks); the xor stays inside a row's lanes */
#pragma unroll
    for (int off = CPR / 2; off > 0; off >>= 1) acc += fa_shfl_xor(acc, off);
    if (i < Tp && cc == 0) {
        const float L = i < p.T ? p.lse[((size_t)b * p.Hq + h) * p.T + i] : -INFINITY;
        float *st = p.stat + ((size_t)b * p.Hq + h) * 2 * Tp + i;
        st[0] = L == -INFINITY ? INFINITY : L * FA_LOG2E;
        st[Tp] = acc;
    }
}

/* An f32 accumulator (contiguous) rounded to the element type, 8 elements (16 bytes
 * of the output) per thread and step: with kv == 0 dQ into gq, grid (x, Hq, B); else
 * dK into gk and dV into gv, grid (x, 2 Hkv, B) (y below Hkv: gk). 256 threads,
 * grid-stride over the N * D / 8 pieces of one (head, batch). */
template <bool BF, int D> FA_KERNEL(256) fa_convert_kernel(const fa_params p, int kv) {
    constexpr int CPR = D / 8;
    const int b = fa_bz();
    int h = fa_by(), N = p.T;
    const float *acc;
    uint16_t *out;
    long long ld;
    if (!kv) {
        acc = p.dq + ((size_t)b * p.Hq + h) * p.T * D;
        out = p.gq + b * p.sgq.b + h * p.sgq.h, ld = p.sgq.r;
    } else {
        const bool isv = h >= p.Hkv;
        const fa_strides &st = isv ? p.sgv : p.sgk;
        if (isv) h -= p.Hkv;
        N = p.S;
        acc = (isv ? p.dv : p.dk) + ((size_t)b * p.Hkv + h) * p.S * D;
        out = (isv ? p.gv : p.gk) + b * st.b + h * st.h, ld = st.r;
    }
    const long long n = (long long)N * CPR;
    for (long long c = (long long)fa_bx() * fa_ntid() + fa_tid(); c < n;
         c += (long long)fa_gx() * fa_ntid()) {
        const long long i = c / CPR;
        const int cc = (int)(c % CPR);
        float f[8];
        fa_ldf8(f, acc + c * 8);
        alignas(16) uint32_t w[4];
#pragma unroll
        for (int e = 0; e < 4; e++) w[e] = fa_pack<BF>(f[2 * e], f[2 * e + 1]);
        fa_copy16(out + i * ld + cc * 8, w);
    }
}

/* The end of a backward CTA: this warp's dK (times the scale) and dV, MT m16 tiles of keys
 * from key j0 (row r0 of the CTA's sK, sV tiles) by N n8 tiles of columns from c0, in C-fragment
 * layout. With grouped KV heads (G > 1) they are added into the group's f32 accumulators, when
 * the CTA saw any query (`any`); else staged in the warp's own block of sK, sV (after a barrier:
 * every warp is done with K, V) and copied out as 16-byte rows. Every thread calls it. */
template <bool BF, int D, int MT, int N>
FA_DEV void fa_write_dkdv(const fa_params &p, const float (&dk)[MT][N][4], const float (&dv)[MT][N][4],
                          uint16_t *sK, uint16_t *sV, int j0, int r0, int c0, bool any) {
    constexpr int LD = D + 8;
    const int lane = fa_tid() & 31, g = lane >> 2, t = lane & 3, b = fa_by(), hk = fa_bx() / p.G;
    if (p.G > 1) {
        const size_t krow = ((size_t)b * p.Hkv + hk) * p.S;
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int j = j0 + 16 * m + g + 8 * r;
                if (any && j < p.S) {
                    const size_t o = (krow + j) * D + c0 + 2 * t;
#pragma unroll
                    for (int n = 0; n < N; n++) {
                        fa_red2(p.dk + o + 8 * n, dk[m][n][2 * r] * p.scale, dk[m][n][2 * r + 1] * p.scale);
                        fa_red2(p.dv + o + 8 * n, dv[m][n][2 * r], dv[m][n][2 * r + 1]);
                    }
                }
            }
        return;
    }
    fa_sync();
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int n = 0; n < N; n++) {
                const int off = (r0 + 16 * m + g + 8 * r) * LD + c0 + 8 * n + 2 * t;
                fa_st32(sK + off, fa_pack<BF>(dk[m][n][2 * r] * p.scale, dk[m][n][2 * r + 1] * p.scale));
                fa_st32(sV + off, fa_pack<BF>(dv[m][n][2 * r], dv[m][n][2 * r + 1]));
            }
    fa_syncwarp();
    uint16_t *gK = p.gk + b * p.sgk.b + hk * p.sgk.h, *gV = p.gv + b * p.sgv.b + hk * p.sgv.h;
#pragma unroll
    for (int c = lane; c < 16 * MT * N; c += 32) {
        const int r = c / N, col = c0 + 8 * (c % N), j = j0 + r;
        if (j < p.S) {
            fa_copy16(gK + j * p.sgk.r + col, sK + (r0 + r) * LD + col);
            fa_copy16(gV + j * p.sgv.r + col, sV + (r0 + r) * LD + col);
        }
    }
}

/* a compile-time bool, for code compiled in masked and unmasked versions */
template <bool B> struct fa_bool { static constexpr bool value = B; };

/* The share of query head h in dK, dV of one key tile, and the tile's share of dQ, at
 * D = 64. Grid (Hq, B, ceil(S / 128)), 128 threads; each warp owns 32 keys. At least 2 CTAs
 * per SM. */
template <bool BF, int D> FA_KERNEL_MIN(FA_NT, 2) fa_bwd_kernel(const fa_params p) {
    static_assert(D == 64, "head dim 128 has its own backward kernel (fa_bwd8_kernel)");
    constexpr int KW = fa_bwd_tile<D>::kw, BC = fa_bwd_tile<D>::bc, BR = FA_BBR, LD = D + 8, LDS = BR + 8;
    constexpr int WR = BR / 16;        /* warps along the query rows of dQ */
    constexpr int DW = D / (4 / WR);   /* dQ columns per warp */
    uint16_t *sK = reinterpret_cast<uint16_t *>(fa_smem());
    uint16_t *sV = sK + BC * LD, *sQ = sV + BC * LD, *sdO = sQ + 2 * BR * LD;
    uint16_t *sdS = sdO + 2 * BR * LD; /* dS^T: (keys, queries) */
    float *sSt = reinterpret_cast<float *>(sdS + BC * LDS); /* 2 x (lse2, rowsum) of a tile */
    const int tid = fa_tid(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int T = p.T, S = p.S;
    /* z = 0 first: under the causal mask the first key tiles have the most queries */
    const int h = fa_bx(), b = fa_by(), kv0 = fa_bz() * BC, hk = h / p.G;
    const uint16_t *K = p.k + b * p.sk.b + hk * p.sk.h, *V = p.v + b * p.sv.b + hk * p.sv.h;
    /* the first row of this head in dQ (row length T) and stat (row length 2 FA_TPAD(T));
     * recomputed from the block index where needed, which keeps it out of the registers
     * over the loop (else D = 64 spills) */
    auto qrow = [&](int len) { return ((size_t)fa_by() * p.Hq + fa_bx()) * len; };

    fa_load_tile<BC, D>(sK, K, p.sk.r, kv0, S);
    fa_load_tile<BC, D>(sV, V, p.sv.r, kv0, S);
    fa_cp_commit();

    /* query tiles qt0.. see some key of this tile */
    const int qt0 = p.causal ? fa_max(0, kv0 - (S - T)) / BR : 0;
    const int total = fa_max(0, (T + BR - 1) / BR - qt0);

    /* stage Q, dO (zero past T) and the row statistics of step `it` */
    auto prefetch = [&](int it, int buf) {
        const int i0 = (qt0 + it) * BR;
        const uint16_t *Q = p.q + fa_by() * p.sq.b + fa_bx() * p.sq.h;
        const uint16_t *dO = p.go + fa_by() * p.sgo.b + fa_bx() * p.sgo.h;
        fa_load_tile<BR, D>(sQ + buf * BR * LD, Q, p.sq.r, i0, T);
        fa_load_tile<BR, D>(sdO + buf * BR * LD, dO, p.sgo.r, i0, T);
        /* lse2 and rowsum of the tile: 2 x 8 chunks of 4 floats, in bounds (padded) */
        if (tid < BR / 2) {
            const int k = tid / (BR / 4), c = 4 * (tid % (BR / 4)), Tp = FA_TPAD(T);
            const float *src = p.stat + qrow(2 * Tp) + k * Tp + i0 + c;
            fa_cp16(reinterpret_cast<uint16_t *>(sSt + (2 * buf + k) * BR + c),
                    reinterpret_cast<const uint16_t *>(src), true);
        }
        fa_cp_commit();
    };
    if (total > 0) prefetch(0, 0);

    /* this warp's keys: KW m16 tiles from row w0 of the CTA's tile; lane holds keys
     * w0 + 16 m + g and + 8 of tile m */
    const int w0 = warp * 16 * KW;
    float dk[KW][D / 8][4], dv[KW][D / 8][4];
#pragma unroll
    for (int m = 0; m < KW; m++)
#pragma unroll
        for (int n = 0; n < D / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[m][n][e] = dv[m][n][e] = 0.f;

    for (int it = 0; it < total; it++) {
        const int buf = it & 1;
        fa_cp_wait(); /* step it staged; every warp is done with step it - 1 */
        fa_sync();
        if (it + 1 < total) prefetch(it + 1, buf ^ 1);
        const int i0 = (qt0 + it) * BR;
        const uint16_t *cQ = sQ + buf * BR * LD, *cdO = sdO + buf * BR * LD;
        const float *cL = sSt + 2 * buf * BR, *cDi = cL + BR;

        /* S^T = K Q^T: 16 KW keys x 32 queries per warp, each Q fragment used KW times */
        float s[KW][BR / 8][4];
#pragma unroll
        for (int m = 0; m < KW; m++)
#pragma unroll
            for (int n = 0; n < BR / 8; n++) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t ka[KW][4];
#pragma unroll
            for (int m = 0; m < KW; m++)
                fa_ldsm4(ka[m], sK + (w0 + 16 * m + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                    kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < BR / 16; np++) {
                uint32_t qb[4];
                fa_ldsm4(qb, cQ + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 +
                                 ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int m = 0; m < KW; m++) {
                    fa_mma<BF>(s[m][2 * np], ka[m], qb[0], qb[1]);
                    fa_mma<BF>(s[m][2 * np + 1], ka[m], qb[2], qb[3]);
                }
            }
        }

        /* P^T = exp(scale s - lse), zero where masked; the mask tests only in tiles with masked
         * keys (as in fa_bwd8_kernel) */
        const bool need_mask = kv0 + BC > S || (p.causal && kv0 + BC - 1 > i0 + S - T);
        auto p_exp = [&](auto mask) {
            constexpr bool MASK = decltype(mask)::value;
#pragma unroll
            for (int m = 0; m < KW; m++)
#pragma unroll
                for (int n = 0; n < BR / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int qi = 8 * n + 2 * t + (e & 1), i = i0 + qi;
                        const int j = kv0 + w0 + 16 * m + g + 8 * (e >> 1);
                        const bool masked = MASK && (j >= S || (p.causal && j > i + S - T));
                        s[m][n][e] = masked ? 0.f : fa_ex2(fmaf(s[m][n][e], p.sl2, -cL[qi]));
                    }
        };
        if (need_mask)
            p_exp(fa_bool<true>{});
        else
            p_exp(fa_bool<false>{});

        /* dV += P^T dO */
#pragma unroll
        for (int kk = 0; kk < BR / 16; kk++) {
            uint32_t pa[KW][4];
#pragma unroll
            for (int m = 0; m < KW; m++) fa_c_to_a<BF>(pa[m], s[m], kk);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t ob[4];
                fa_ldsm4t(ob, cdO + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                  dp * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int m = 0; m < KW; m++) {
                    fa_mma<BF>(dv[m][2 * dp], pa[m], ob[0], ob[1]);
                    fa_mma<BF>(dv[m][2 * dp + 1], pa[m], ob[2], ob[3]);
                }
            }
        }

        /* dP^T = V dO^T */
        float dp_[KW][BR / 8][4];
#pragma unroll
        for (int m = 0; m < KW; m++)
#pragma unroll
            for (int n = 0; n < BR / 8; n++)
                dp_[m][n][0] = dp_[m][n][1] = dp_[m][n][2] = dp_[m][n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t va[KW][4];
#pragma unroll
            for (int m = 0; m < KW; m++)
                fa_ldsm4(va[m], sV + (w0 + 16 * m + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                    kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < BR / 16; np++) {
                uint32_t ob[4];
                fa_ldsm4(ob, cdO + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 +
                                 ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int m = 0; m < KW; m++) {
                    fa_mma<BF>(dp_[m][2 * np], va[m], ob[0], ob[1]);
                    fa_mma<BF>(dp_[m][2 * np + 1], va[m], ob[2], ob[3]);
                }
            }
        }

        /* dS^T = P^T * (dP^T - rowsum(dO * O)) (gradient of the scaled scores) */
#pragma unroll
        for (int m = 0; m < KW; m++)
#pragma unroll
            for (int n = 0; n < BR / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[m][n][e] *= dp_[m][n][e] - cDi[8 * n + 2 * t + (e & 1)];

        /* dK += dS^T Q (scaled at the end); dS^T to shared for dQ */
#pragma unroll
        for (int kk = 0; kk < BR / 16; kk++) {
            uint32_t da[KW][4];
#pragma unroll
            for (int m = 0; m < KW; m++) {
                fa_c_to_a<BF>(da[m], s[m], kk);
                uint16_t *row = sdS + (w0 + 16 * m + g) * LDS + 16 * kk + 2 * t;
                fa_st32(row, da[m][0]);
                fa_st32(row + 8 * LDS, da[m][1]);
                fa_st32(row + 8, da[m][2]);
                fa_st32(row + 8 * LDS + 8, da[m][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t qb[4];
                fa_ldsm4t(qb, cQ + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 +
                                  (lane >> 4) * 8);
#pragma unroll
                for (int m = 0; m < KW; m++) {
                    fa_mma<BF>(dk[m][2 * dp], da[m], qb[0], qb[1]);
                    fa_mma<BF>(dk[m][2 * dp + 1], da[m], qb[2], qb[3]);
                }
            }
        }
        fa_sync(); /* all of dS^T written */

        /* dQ[rows rw*16.., cols cw*DW..] += scale * dS K over this tile's BC keys */
        {
            const int rw = warp % WR, cw = warp / WR;
            float dq[DW / 8][4];
#pragma unroll
            for (int n = 0; n < DW / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t da[4];
                fa_ldsm4t(da, sdS + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + rw * 16 +
                                  ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int dp = 0; dp < DW / 16; dp++) {
                    uint32_t kb[4];
                    fa_ldsm4t(kb, sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                      cw * DW + dp * 16 + (lane >> 4) * 8);
                    fa_mma<BF>(dq[2 * dp], da, kb[0], kb[1]);
                    fa_mma<BF>(dq[2 * dp + 1], da, kb[2], kb[3]);
                }
            }
            /* one base address, the rows at constant offsets from it (see fa_bwd8_kernel), and
             * a version without the row tests for tiles with no rows past T */
            float *dq0 = p.dq + (qrow(T) + i0 + rw * 16 + g) * D + cw * DW + 2 * t;
            auto red_dq = [&](auto tail) {
#pragma unroll
                for (int r = 0; r < 2; r++)
                    if (!decltype(tail)::value || i0 + rw * 16 + g + 8 * r < T) {
#pragma unroll
                        for (int n = 0; n < DW / 8; n++)
                            fa_red2(dq0 + 8 * r * D + 8 * n, dq[n][2 * r] * p.scale,
                                    dq[n][2 * r + 1] * p.scale);
                    }
            };
            if (i0 + BR <= T)
                red_dq(fa_bool<false>{});
            else
                red_dq(fa_bool<true>{});
        }
    }

    fa_cp_wait(); /* K, V of a CTA without query tiles */
    fa_write_dkdv<BF, D>(p, dk, dv, sK, sV, kv0 + w0, w0, 0, total > 0);
}

/* The share of query head h in dK, dV of one 128-key tile, and the tile's share of dQ, at
 * D = 128 (FlashAttention-2's arrangement of the backward). Grid (Hq, B, ceil(S / 128)),
 * 256 threads (8 warps), one CTA per SM (171 KB of shared memory). Per 64-row query tile:
 *   1. S = Q K^T and dP = dO V^T, 64 x 128 each: warp (wm = w % 2, wn = w / 2) takes query
 *      rows 32 wm.. and keys 32 wn.. (two m16 tiles by four n8 tiles);
 *   2. P = exp2(S scale log2e - lse2) and dS = P (dP - rowsum(dO O)), written to shared
 *      memory as (query, key) tiles;
 *   3. dV += P^T dO and dK += dS^T Q: warp (wk = w % 4, wd = w / 4) owns keys 32 wk.. and
 *      columns 64 wd.. of both (64 + 64 accumulator registers), its A fragments read
 *      transposed from the P, dS tiles;
 *   4. dQ += dS K: warp (wm, wn) takes query rows 32 wm.. and columns 32 wn.., added into
 *      the f32 scratch with atomics.
 * Every fragment read from shared memory feeds two to four products (the 4-warp kernel's
 * 16 keys a warp fed one or two, and at D = 128 two key tiles a warp do not fit in the
 * registers): ~0.45 ldmatrix per mma against ~0.63. The rest is as in fa_bwd_kernel:
 * heavy key tiles first, Q, dO and the row statistics of the next step staged with
 * cp.async while this one runs, dK, dV added into f32 scratch when G > 1. */
template <bool BF> FA_KERNEL(256) fa_bwd8_kernel(const fa_params p) {
    constexpr int D = 128, NT = 256, BC = 128, BR = FA8_BR, LD = D + 8, LP = BC + 8;
    uint16_t *sK = reinterpret_cast<uint16_t *>(fa_smem());
    uint16_t *sV = sK + BC * LD, *sQ = sV + BC * LD, *sdO = sQ + 2 * BR * LD;
    uint16_t *sP = sdO + 2 * BR * LD, *sdS = sP + BR * LP; /* (query, key) */
    float *sSt = reinterpret_cast<float *>(sdS + BR * LP); /* 2 x (lse2, rowsum) of a tile */
    const int tid = fa_tid(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int T = p.T, S = p.S;
    const int h = fa_bx(), b = fa_by(), kv0 = fa_bz() * BC, hk = h / p.G;
    const uint16_t *K = p.k + b * p.sk.b + hk * p.sk.h, *V = p.v + b * p.sv.b + hk * p.sv.h;
    auto qrow = [&](int len) { return ((size_t)fa_by() * p.Hq + fa_bx()) * len; };

    fa_load_tile<BC, D, NT>(sK, K, p.sk.r, kv0, S);
    fa_load_tile<BC, D, NT>(sV, V, p.sv.r, kv0, S);
    fa_cp_commit();

    const int qt0 = p.causal ? fa_max(0, kv0 - (S - T)) / BR : 0;
    const int total = fa_max(0, (T + BR - 1) / BR - qt0);
    auto prefetch = [&](int it, int buf) {
        const int i0 = (qt0 + it) * BR;
        const uint16_t *Q = p.q + fa_by() * p.sq.b + fa_bx() * p.sq.h;
        const uint16_t *dO = p.go + fa_by() * p.sgo.b + fa_bx() * p.sgo.h;
        fa_load_tile<BR, D, NT>(sQ + buf * BR * LD, Q, p.sq.r, i0, T);
        fa_load_tile<BR, D, NT>(sdO + buf * BR * LD, dO, p.sgo.r, i0, T);
        if (tid < BR / 2) { /* lse2 and rowsum: 2 x 16 chunks of 4 floats, in bounds (padded) */
            const int k = tid / (BR / 4), c = 4 * (tid % (BR / 4)), Tp = FA_TPAD(T);
            const float *src = p.stat + qrow(2 * Tp) + k * Tp + i0 + c;
            fa_cp16(reinterpret_cast<uint16_t *>(sSt + (2 * buf + k) * BR + c),
                    reinterpret_cast<const uint16_t *>(src), true);
        }
        fa_cp_commit();
    };
    if (total > 0) prefetch(0, 0);

    const int wm = warp & 1, wn = warp >> 1; /* steps 1, 2 and 4 */
    const int wk = warp & 3, wd = warp >> 2; /* step 3 */
    float dk[2][8][4], dv[2][8][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[m][n][e] = dv[m][n][e] = 0.f;

    /* the A fragment of rows m0.. (16) and columns k0.. (16) of a row-major tile, and of the
     * transpose of a tile stored with rows k0.. and columns m0.. */
    auto a_frag = [&](uint32_t(&a)[4], const uint16_t *tile, int ld, int m0, int k0) {
        fa_ldsm4(a, tile + (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8);
    };
    auto a_frag_t = [&](uint32_t(&a)[4], const uint16_t *tile, int ld, int m0, int k0) {
        fa_ldsm4t(a, tile + (k0 + (lane & 7) + (lane >> 4) * 8) * ld + m0 + ((lane >> 3) & 1) * 8);
    };
    /* B fragments of two n8 tiles (n0.., n0 + 8..) and rows k0.. (16) of X^T, for X stored
     * row-major with rows n and columns k; and of X itself, stored with rows k, columns n */
    auto b_frag = [&](uint32_t(&r)[4], const uint16_t *tile, int ld, int n0, int k0) {
        fa_ldsm4(r, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
    };
    auto b_frag_t = [&](uint32_t(&r)[4], const uint16_t *tile, int ld, int n0, int k0) {
        fa_ldsm4t(r, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
    };

    for (int it = 0; it < total; it++) {
        const int buf = it & 1;
        fa_cp_wait(); /* step it staged; every warp is done with step it - 1 */
        fa_sync();
        if (it + 1 < total) prefetch(it + 1, buf ^ 1);
        const int i0 = (qt0 + it) * BR;
        const uint16_t *cQ = sQ + buf * BR * LD, *cdO = sdO + buf * BR * LD;
        const float *cL = sSt + 2 * buf * BR, *cDi = cL + BR;

        /* 1. S = Q K^T, dP = dO V^T: rows 32 wm.., keys 32 wn.. (one loop over both, letting
         * 16 accumulators interleave, measured the same as these two) */
        float s[2][4][4], dp[2][4][4];
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[m][n][e] = dp[m][n][e] = 0.f;
        auto sdp_step = [&](float(&acc)[2][4][4], const uint16_t *A, const uint16_t *Bt, int kk) {
            fa_mma_2xn<BF>(
                acc, [&](uint32_t(&a)[4], int m) { a_frag(a, A, LD, 32 * wm + 16 * m, 16 * kk); },
                [&](uint32_t(&b)[4], int np) { b_frag(b, Bt, LD, 32 * wn + 16 * np, 16 * kk); });
        };
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) sdp_step(s, cQ, sK, kk);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) sdp_step(dp, cdO, sV, kk);

        /* 2. P and dS (zero where masked; rows past T have lse2 = +inf, so P = 0 there), in two
         * versions: tiles without masked keys take the one without the tests (with the tests
         * compiled in everywhere, the warps stalled on branch resolution 0.38 cycles an
         * instruction, and the backward ran 6-9% slower at T 4096-8192 on an H200) */
        const bool need_mask = kv0 + BC > S || (p.causal && kv0 + BC - 1 > i0 + S - T);
        auto p_ds = [&](auto mask) {
            constexpr bool MASK = decltype(mask)::value;
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int qi = 32 * wm + 16 * m + g + 8 * r, i = i0 + qi;
                    const float L = cL[qi], Di = cDi[qi];
#pragma unroll
                    for (int n = 0; n < 4; n++) {
                        const int kj = 32 * wn + 8 * n + 2 * t;
                        float pr[2], ds[2];
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const int j = kv0 + kj + e;
                            const bool masked = MASK && (j >= S || (p.causal && j > i + S - T));
                            pr[e] = masked ? 0.f : fa_ex2(fmaf(s[m][n][2 * r + e], p.sl2, -L));
                            ds[e] = pr[e] * (dp[m][n][2 * r + e] - Di);
                        }
                        fa_st32(sP + qi * LP + kj, fa_pack<BF>(pr[0], pr[1]));
                        fa_st32(sdS + qi * LP + kj, fa_pack<BF>(ds[0], ds[1]));
                    }
                }
        };
        if (need_mask)
            p_ds(fa_bool<true>{});
        else
            p_ds(fa_bool<false>{});
        fa_sync(); /* P, dS written */

        /* 3. dV += P^T dO, dK += dS^T Q: keys 32 wk.., columns 64 wd.. */
        auto kv_step = [&](float(&acc)[2][8][4], const uint16_t *At, const uint16_t *B, int kk) {
            fa_mma_2xn<BF>(
                acc, [&](uint32_t(&a)[4], int m) { a_frag_t(a, At, LP, 32 * wk + 16 * m, 16 * kk); },
                [&](uint32_t(&b)[4], int np) { b_frag_t(b, B, LD, 64 * wd + 16 * np, 16 * kk); });
        };
#pragma unroll
        for (int kk = 0; kk < BR / 16; kk++) kv_step(dv, sP, cdO, kk);
#pragma unroll
        for (int kk = 0; kk < BR / 16; kk++) kv_step(dk, sdS, cQ, kk);

        /* 4. dQ rows 32 wm.., columns 32 wn.. += scale * dS K over the tile's 128 keys */
        {
            float dq[2][4][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int n = 0; n < 4; n++) dq[m][n][0] = dq[m][n][1] = dq[m][n][2] = dq[m][n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++)
                fa_mma_2xn<BF>(
                    dq, [&](uint32_t(&a)[4], int m) { a_frag(a, sdS, LP, 32 * wm + 16 * m, 16 * kk); },
                    [&](uint32_t(&b)[4], int np) { b_frag_t(b, sK, LD, 32 * wn + 16 * np, 16 * kk); });
            /* The atomics take their rows at constant offsets from one base address. With an
             * address computed afresh for each row, the new address went into the registers of
             * the atomics just issued, and the warp waited for those (queued behind the other
             * memory instructions) to read them: on an H200 at T 8192 that long-scoreboard stall
             * was 9% of the kernel's warp samples. (A version without the row tests for tiles
             * with no rows past T, as fa_bwd_kernel has, spilled here and ran slower.) */
            float *dq0 = p.dq + (qrow(T) + i0 + 32 * wm + g) * D + 32 * wn + 2 * t;
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int r = 0; r < 2; r++)
                    if (i0 + 32 * wm + 16 * m + 8 * r + g < T) {
#pragma unroll
                        for (int n = 0; n < 4; n++)
                            fa_red2(dq0 + (16 * m + 8 * r) * D + 8 * n, dq[m][n][2 * r] * p.scale,
                                    dq[m][n][2 * r + 1] * p.scale);
                    }
        }
    }

    fa_cp_wait(); /* K, V of a CTA without query tiles */
    fa_write_dkdv<BF, D>(p, dk, dv, sK, sV, kv0 + 32 * wk, 32 * wk, 64 * wd, total > 0);
}

#ifndef FE_FLASH_EMU
/* ---- host launchers ------------------------------------------------------------------ */

static fe_status fa_cuda_err(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return FE_OK;
    return fe_set_error(e == cudaErrorMemoryAllocation ? FE_ERR_OOM : FE_ERR_DEVICE,
                        "flash attention: %s: %s", what, cudaGetErrorString(e));
}

/* Validate the sizes and pointers common to both passes. */
static fe_status fa_check(const fe_flash_args *a, const char *what, bool bwd) {
    if (!a) return fe_set_error(FE_ERR_ARG, "%s: NULL arguments", what);
    if (a->dtype != FE_BF16 && a->dtype != FE_F16)
        return fe_set_error(FE_ERR_DTYPE, "%s: expected bf16 or f16, got dtype %d", what,
                            (int)a->dtype);
    if (a->D != 64 && a->D != 128)
        return fe_set_error(FE_ERR_SHAPE, "%s: head dim %lld is not 64 or 128", what,
                            (long long)a->D);
    if (a->B < 0 || a->Hq < 0 || a->Hkv <= 0 || a->T < 0 || a->S < 0 || a->Hq % a->Hkv)
        return fe_set_error(FE_ERR_SHAPE,
                            "%s: bad sizes B %lld Hq %lld Hkv %lld T %lld S %lld (Hq must be a "
                            "multiple of Hkv)",
                            what, (long long)a->B, (long long)a->Hq, (long long)a->Hkv,
                            (long long)a->T, (long long)a->S);
    /* grids: (Hq, B, tiles of 64 rows), every dimension at most 65535 */
    if (a->B > 65535 || a->Hq > 65535 || a->T > 65535LL * 64 || a->S > 65535LL * 64)
        return fe_set_error(FE_ERR_SHAPE,
                            "%s: sizes beyond the kernel's grid (B and heads <= 65535, sequence "
                            "lengths <= 65535 * 64)",
                            what);
    if (!(a->scale > 0) || !isfinite(a->scale))
        return fe_set_error(FE_ERR_ARG, "%s: scale %g must be positive", what, a->scale);
    if (!a->q || !a->k || !a->v || !a->out || !a->lse ||
        (bwd && (!a->gout || !a->gq || !a->gk || !a->gv)))
        return fe_set_error(FE_ERR_ARG, "%s: NULL data pointer", what);
    /* tiles move in 16-byte pieces: rows start 16-byte aligned */
    const void *ptrs[8] = {a->q, a->k, a->v, a->out, a->gout, a->gq, a->gk, a->gv};
    const fe_flash_strides *strides[8] = {&a->sq,   &a->sk,  &a->sv,  &a->sout,
                                          &a->sgout, &a->sgq, &a->sgk, &a->sgv};
    static const char *names[8] = {"q", "k", "v", "out", "gout", "gq", "gk", "gv"};
    for (int i = 0; i < (bwd ? 8 : 4); i++) {
        const bool kv = i == 1 || i == 2 || i == 6 || i == 7;
        const int64_t sz[3] = {a->B, kv ? a->Hkv : a->Hq, kv ? a->S : a->T};
        const int64_t st[3] = {strides[i]->b, strides[i]->h, strides[i]->r};
        if ((uintptr_t)ptrs[i] % 16)
            return fe_set_error(FE_ERR_ARG, "%s: data pointer of %s must be 16-byte aligned", what,
                                names[i]);
        for (int d = 0; d < 3; d++)
            if (sz[d] > 1 && (st[d] < 0 || st[d] % 8))
                return fe_set_error(FE_ERR_ARG,
                                    "%s: strides of %s must be non-negative multiples of 8 "
                                    "elements (16 bytes), got (%lld, %lld, %lld)",
                                    what, names[i], (long long)st[0], (long long)st[1],
                                    (long long)st[2]);
        /* written operands: no two elements at one address (sizes > 1 sorted by stride,
         * each stride at least the extent of the smaller ones, D innermost) */
        const bool written = i == 3 ? !bwd : i >= 5;
        if (written && sz[0] && sz[1] && sz[2]) { /* an empty operand has no rows to overlap */
            int64_t ext = a->D, s2[3], n2[3];
            int m = 0;
            for (int d = 0; d < 3; d++)
                if (sz[d] > 1) s2[m] = st[d], n2[m++] = sz[d];
            for (int x = 1; x < m; x++) /* insertion sort by stride */
                for (int y = x; y > 0 && s2[y] < s2[y - 1]; y--) {
                    int64_t ts = s2[y], tn = n2[y];
                    s2[y] = s2[y - 1], n2[y] = n2[y - 1], s2[y - 1] = ts, n2[y - 1] = tn;
                }
            for (int x = 0; x < m; x++) {
                if (s2[x] < ext)
                    return fe_set_error(FE_ERR_ARG,
                                        "%s: strides (%lld, %lld, %lld) of %s overlap its rows",
                                        what, (long long)st[0], (long long)st[1],
                                        (long long)st[2], names[i]);
                ext = s2[x] * n2[x];
            }
        }
    }
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != a->device) {
        fe_status st = fa_cuda_err(cudaSetDevice(a->device), "cudaSetDevice");
        if (st) return st;
    }
    return FE_OK;
}

static fa_strides fa_str(const fe_flash_strides &s) { return {s.b, s.h, s.r}; }

static fa_params fa_make_params(const fe_flash_args *a) {
    fa_params p;
    memset(&p, 0, sizeof p);
    p.q = (const uint16_t *)a->q, p.k = (const uint16_t *)a->k, p.v = (const uint16_t *)a->v;
    p.o = (const uint16_t *)a->out, p.go = (const uint16_t *)a->gout;
    p.out = (uint16_t *)a->out, p.gq = (uint16_t *)a->gq;
    p.gk = (uint16_t *)a->gk, p.gv = (uint16_t *)a->gv;
    p.sq = fa_str(a->sq), p.sk = fa_str(a->sk), p.sv = fa_str(a->sv), p.so = fa_str(a->sout);
    p.sgo = fa_str(a->sgout), p.sgq = fa_str(a->sgq), p.sgk = fa_str(a->sgk);
    p.sgv = fa_str(a->sgv);
    p.lse = a->lse;
    p.Hq = (int)a->Hq, p.Hkv = (int)a->Hkv, p.G = (int)(a->Hq / a->Hkv);
    p.T = (int)a->T, p.S = (int)a->S, p.causal = a->causal;
    p.scale = (float)a->scale, p.sl2 = (float)(a->scale * 1.4426950408889634);
    return p;
}

/* Opt a kernel in to more than 48 KiB of dynamic shared memory (once). */
template <typename F> static fe_status fa_smem_optin(F *kernel, int bytes, bool *done) {
    if (*done || bytes <= 48 * 1024) return FE_OK;
    fe_status st = fa_cuda_err(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "cudaFuncSetAttribute");
    if (!st) *done = true;
    return st;
}

template <bool BF, int D> static fe_status fa_forward(const fa_params &p, int B, cudaStream_t s) {
    static bool optin = false;
    fe_status st = fa_smem_optin(fa_fwd_kernel<BF, D>, fa_fwd_smem(D), &optin);
    if (st) return st;
    dim3 grid((unsigned)p.Hq, (unsigned)B, (unsigned)((p.T + fa_fwd_br(D) - 1) / fa_fwd_br(D)));
    fa_fwd_kernel<BF, D><<<grid, FA_NT, fa_fwd_smem(D), s>>>(p);
    return fa_cuda_err(cudaGetLastError(), "forward kernel launch");
}

/* The main backward kernel of head dim D over grid (x, B, ceil(S / 128)). */
template <bool BF, int D>
static fe_status fa_backward_main(const fa_params &p, unsigned x, int B, unsigned ktiles,
                                  cudaStream_t s) {
    static bool optin = false;
    auto *kernel = D == 128 ? fa_bwd8_kernel<BF> : fa_bwd_kernel<BF, 64>;
    fe_status st = fa_smem_optin(kernel, fa_bwd_smem(D), &optin);
    if (st) return st;
    kernel<<<dim3(x, (unsigned)B, ktiles), fa_bwd_nt(D), fa_bwd_smem(D), s>>>(p);
    return fa_cuda_err(cudaGetLastError(), "backward kernel launch");
}

template <bool BF, int D> static fe_status fa_backward(const fa_params &p, int B, cudaStream_t s) {
    fe_status st = FE_OK;
    const unsigned ktiles = (unsigned)((p.S + fa_bwd_bc(D) - 1) / fa_bwd_bc(D));
    if (p.T == 0 || p.Hq == 0) {
        /* no queries: dK = dV = 0, written by the direct (G = 1) path of CTAs that see no
         * query tile; no scratch is used */
        fa_params z = p;
        z.T = 0, z.G = 1, z.Hq = p.Hkv;
        if (ktiles > 0) st = fa_backward_main<BF, D>(z, (unsigned)p.Hkv, B, ktiles, s);
        return st;
    }
    const long long rows = (long long)B * p.Hq * p.T, n = rows * D;
    const long long nkv = p.G > 1 ? (long long)B * p.Hkv * p.S * D : 0; /* dK, dV scratch */
    /* the dQ, dK, dV accumulators are adjacent: one memset */
    if (n + 2 * nkv > 0) {
        st = fa_cuda_err(cudaMemsetAsync(p.dq, 0, (size_t)(n + 2 * nkv) * sizeof(float), s),
                         "cudaMemsetAsync");
        if (st) return st;
    }
    if (rows > 0) {
        dim3 grid((unsigned)((FA_TPAD(p.T) + fa_pre<D>::rows - 1) / fa_pre<D>::rows),
                  (unsigned)p.Hq, (unsigned)B);
        fa_bwd_pre_kernel<BF, D><<<grid, 256, 0, s>>>(p);
        if ((st = fa_cuda_err(cudaGetLastError(), "backward preprocess launch"))) return st;
    }
    if (ktiles > 0 && (st = fa_backward_main<BF, D>(p, (unsigned)p.Hq, B, ktiles, s))) return st;
    if (n > 0) {
        const long long blocks = ((long long)p.T * (D / 8) + 255) / 256;
        dim3 grid((unsigned)(blocks < 65536 ? blocks : 65536), (unsigned)p.Hq, (unsigned)B);
        fa_convert_kernel<BF, D><<<grid, 256, 0, s>>>(p, 0);
        if ((st = fa_cuda_err(cudaGetLastError(), "dq conversion launch"))) return st;
    }
    if (nkv > 0) {
        const long long blocks = ((long long)p.S * (D / 8) + 255) / 256;
        dim3 grid((unsigned)(blocks < 65536 ? blocks : 65536), (unsigned)(2 * p.Hkv),
                  (unsigned)B);
        fa_convert_kernel<BF, D><<<grid, 256, 0, s>>>(p, 1);
        if ((st = fa_cuda_err(cudaGetLastError(), "dk, dv conversion launch"))) return st;
    }
    return FE_OK;
}

/* Whether the experimental wgmma kernels (src/backends/cuda/wgmma/) take this call:
 * FE_FLASH_WGMMA=1 (read once), D 128, queries and keys, and a compute capability 9.0 device.
 * Off by default until they have been measured against these kernels. */
static bool fa_use_wgmma(const fe_flash_args *a) {
#ifdef FE_HAVE_WGMMA
    static int on = -1;
    if (__atomic_load_n(&on, __ATOMIC_RELAXED) < 0) {
        const char *e = getenv("FE_FLASH_WGMMA");
        __atomic_store_n(&on, e && !strcmp(e, "1") ? 1 : 0, __ATOMIC_RELAXED);
    }
    if (!on || a->D != 128 || a->T <= 0 || a->S <= 0) return false;
    int major = 0, minor = 0;
    return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a->device) == cudaSuccess &&
           cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, a->device) == cudaSuccess &&
           major == 9 && minor == 0;
#else
    (void)a;
    return false;
#endif
}

extern "C" fe_status fe_flash_attention_forward(const fe_flash_args *a, void *stream) {
    fe_status st = fa_check(a, "flash attention forward", false);
    if (st) return st;
    if (a->B == 0 || a->Hq == 0 || a->T == 0) return FE_OK;
    if (fa_use_wgmma(a)) return fe_flash_wgmma_forward(a, 0, stream);
    fa_params p = fa_make_params(a);
    cudaStream_t s = (cudaStream_t)stream;
    const int B = (int)a->B;
    if (a->dtype == FE_BF16)
        return a->D == 64 ? fa_forward<true, 64>(p, B, s) : fa_forward<true, 128>(p, B, s);
    return a->D == 64 ? fa_forward<false, 64>(p, B, s) : fa_forward<false, 128>(p, B, s);
}

extern "C" void fe_flash_args_contiguous(fe_flash_args *a) {
    const int64_t D = a->D;
    const fe_flash_strides q = {a->Hq * a->T * D, a->T * D, D}, k = {a->Hkv * a->S * D, a->S * D, D};
    a->sq = a->sout = a->sgout = a->sgq = q;
    a->sk = a->sv = a->sgk = a->sgv = k;
}

/* f32 scratch, in this order: dQ (B, Hq, T, D); with G > 1 dK and dV (B, Hkv, S, D)
 * each; the row statistics (B, Hq, 2, FA_TPAD(T)). Every part is a multiple of 256
 * bytes. */
static size_t fa_kv_scratch(const fe_flash_args *a) {
    if (a->Hkv <= 0 || a->Hq / a->Hkv <= 1 || a->S <= 0) return 0;
    return (size_t)a->B * (size_t)a->Hkv * (size_t)a->S * (size_t)a->D;
}

extern "C" size_t fe_flash_attention_workspace_size(const fe_flash_args *a) {
    if (!a || a->B <= 0 || a->Hq <= 0 || a->T <= 0 || a->D <= 0) return 0;
    if (fa_use_wgmma(a)) return fe_flash_wgmma_scratch_size(a);
    const size_t rows = (size_t)a->B * (size_t)a->Hq * (size_t)a->T;
    const size_t prow = (size_t)a->B * (size_t)a->Hq * (size_t)FA_TPAD(a->T);
    return (rows * (size_t)a->D + 2 * fa_kv_scratch(a) + 2 * prow) * sizeof(float);
}

extern "C" fe_status fe_flash_attention_backward(const fe_flash_args *a, void *workspace,
                                                 void *stream) {
    fe_status st = fa_check(a, "flash attention backward", true);
    if (st) return st;
    if ((uintptr_t)workspace % 16)
        return fe_set_error(FE_ERR_ARG, "flash attention backward: workspace must be 16-byte aligned");
    if (a->B == 0 || a->Hkv == 0) return FE_OK;
    cudaStream_t s = (cudaStream_t)stream;
    const size_t ws = fe_flash_attention_workspace_size(a);
    void *w = workspace;
    if (!w && ws > 0) {
        st = fa_cuda_err(cudaMallocAsync(&w, ws, s), "cudaMallocAsync of the scratch");
        if (st) return st;
    }
    if (fa_use_wgmma(a)) {
        st = fe_flash_wgmma_backward(a, w, s);
    } else {
        fa_params p = fa_make_params(a);
        p.dq = (float *)w;
        if (p.dq) {
            const size_t nq = (size_t)a->B * a->Hq * a->T * a->D, nkv = fa_kv_scratch(a);
            p.dk = nkv ? p.dq + nq : NULL;
            p.dv = nkv ? p.dk + nkv : NULL;
            p.stat = p.dq + nq + 2 * nkv;
        }
        const int B = (int)a->B;
        if (a->dtype == FE_BF16)
            st = a->D == 64 ? fa_backward<true, 64>(p, B, s) : fa_backward<true, 128>(p, B, s);
        else
            st = a->D == 64 ? fa_backward<false, 64>(p, B, s) : fa_backward<false, 128>(p, B, s);
    }
    if (w && !workspace) {
        fe_status st2 = fa_cuda_err(cudaFreeAsync(w, s), "cudaFreeAsync of the scratch");
        if (!st) st = st2;
    }
    return st;
}
#endif /* !FE_FLASH_EMU */
