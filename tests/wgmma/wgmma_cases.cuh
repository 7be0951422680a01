/* The wgmma probe's device code and cases (tests/wgmma/wgmma_probe.cu runs them on a GPU,
 * tests/wgmma/wgmma_emu.cpp on the CPU through tests/cuda_emu/wgmma_emu.h). One warpgroup (128
 * threads) computes C (64 x N) = A (64 x K) B^T, B stored N x K (both K-major), bf16 in, f32
 * accumulation, from small integers so that every sum is exact. Then B stored MN-major (n
 * contiguous, as V is in attention's P V) with the transpose flag, each layout with the
 * descriptor's two byte offsets one way and the other: one of each pair should pass.
 * Layouts and descriptor fields as the PTX ISA describes them ("Asynchronous Warpgroup Level
 * Matrix Shared Memory Layout"); the accumulator of warp w holds rows 16 w .. 16 w + 15, and for
 * each 8-column block j of N its thread (g = lane / 4, t = lane % 4) holds, in d[4 j .. 4 j + 3],
 * (g, 8 j + 2 t), (g, 8 j + 2 t + 1), (g + 8, 8 j + 2 t), (g + 8, 8 j + 2 t + 1), as mma.sync
 * does for one m16n8 tile. */
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/wait.h>
#include <vector>

#include "wgmma_ops.cuh"

/* Byte offset of element (r, k) of a K-major operand of K columns in shared memory.
 * No swizzle: 8 x 8 core matrices of 128 contiguous bytes, the two of a k16 step side by side
 * (LBO 128), 8-row groups K / 8 core matrices apart (SBO 16 K). 128-byte swizzle (K = 64: a row
 * is 128 bytes): 8-row atoms of 1024 bytes, row r's 16-byte chunk c at chunk c ^ (r % 8). */
__host__ __device__ inline unsigned wg_off(int r, int k, int K, bool sw128) {
    if (sw128)
        return (unsigned)((r / 8) * 1024 + (r % 8) * 128 + (((k / 8) ^ (r % 8)) * 16) + (k % 8) * 2);
    return (unsigned)((r / 8) * (K / 8) * 128 + (k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2);
}

/* Byte offset of element (k, n) of an MN-major operand of N columns and K rows (n contiguous):
 * core matrices of 8 k-rows by 16 bytes of n, 128 bytes apart along n, 8-row groups N / 8 core
 * matrices apart; with the 128-byte swizzle, atoms 64 columns wide (a k-row of an atom is 128
 * bytes), each K rows of 128 bytes, side by side along n; in an atom, 8-row groups of 1024 bytes,
 * k-row r's 16-byte chunk c at chunk c ^ (r % 8). */
__host__ __device__ inline unsigned wg_off_mn(int k, int n, int N, int K, bool sw128) {
    if (sw128)
        return (unsigned)((n / 64) * K * 128 + (k / 8) * 1024 + (k % 8) * 128 +
                          ((((n % 64) / 8) ^ (k % 8)) * 16) + (n % 8) * 2);
    return (unsigned)((k / 8) * (N / 8) * 128 + (n / 8) * 128 + (k % 8) * 16 + (n % 8) * 2);
}

/* One case: C = A B^T with A 64 x K, B N x K (row-major in global memory, K contiguous). RS: A
 * from registers instead of shared memory. MN: B stored MN-major in shared memory (n contiguous,
 * the layout of V in attention's P V) and read with the transpose flag; which of the two byte
 * offsets of its descriptor runs along n and which along k is what the case finds out: swap 0
 * puts the step between n-neighbouring core matrices (or atoms) in LBO, swap 1 in SBO. */
template <int N, int K, bool SW, bool RS, bool MN>
__global__ void __launch_bounds__(128) wg_case(const __nv_bfloat16 *A, const __nv_bfloat16 *B,
                                               float *C, int swap) {
#ifdef FE_CUDA_EMU
    unsigned char *sm = (unsigned char *)emu::dsmem();
    auto __cvta_generic_to_shared = [](const void *q) { return emu::shared_addr(q); };
#else
    extern __shared__ __align__(1024) unsigned char sm[];
#endif
    unsigned char *sA = sm, *sB = sm + 64 * K * 2;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    if (tid == 0 && __cvta_generic_to_shared(sm) % 1024) /* the swizzle works on address bits */
        printf("  shared memory at %u: not 1024-byte aligned\n",
               (unsigned)__cvta_generic_to_shared(sm));
    for (int i = tid; i < 64 * K; i += 128)
        memcpy(sA + wg_off(i / K, i % K, K, SW), A + i, 2);
    if (MN)
        for (int i = tid; i < 16384 / 16; i += 128)
            ((uint4 *)(sB + N * K * 2))[i] = make_uint4(0, 0, 0, 0);
    for (int i = tid; i < N * K; i += 128)
        memcpy(sB + (MN ? wg_off_mn(i % K, i / K, N, K, SW) : wg_off(i / K, i % K, K, SW)), B + i, 2);
    /* the generic-proxy stores above, made visible to the MMA's async proxy */
    wg_fence_proxy();
    __syncthreads();

    float d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; i++)
        d[i] = -1.f; /* overwritten by the first step (acc = 0) */
    uint32_t a[K / 16][4];
    if (RS) /* this warp's rows 16 warp.., columns 16 s.. of A, as mma.sync A fragments */
#pragma unroll
        for (int s = 0; s < K / 16; s++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int r = 16 * warp + g + 8 * (q & 1), c = 16 * s + 2 * t + 8 * (q >> 1);
                uint32_t lo, hi;
                memcpy(&lo, A + r * K + c, 2), memcpy(&hi, A + r * K + c + 1, 2);
                a[s][q] = (lo & 0xffff) | hi << 16;
            }
    wg_fence();
    const unsigned lbo = SW ? 16 : 128, sbo = SW ? 1024 : 16 * K, step = SW ? 32 : 256;
    /* MN-major B: along n 128 bytes between core matrices without swizzle, with it K 128 between
     * atoms (16 where N 64 is one atom: not used); along k 16 N bytes between 8-row groups (1024
     * with the swizzle); a k16 step is two groups */
    const unsigned mn_n = SW ? (N > 64 ? K * 128 : 16) : 128, mn_k = SW ? 1024 : 16 * N, mn_step = 2 * mn_k;
    const unsigned blbo = MN ? (swap ? mn_k : mn_n) : lbo, bsbo = MN ? (swap ? mn_n : mn_k) : sbo;
#pragma unroll
    for (int s = 0; s < K / 16; s++) {
        const uint64_t db = wg_desc(sB + s * (MN ? mn_step : step), blbo, bsbo, SW ? 1 : 0);
        if constexpr (RS) {
            static_assert(N == 64, "A from registers: n64 only here");
            wg_rs_n64<true, MN>(d, a[s], db, s > 0);
        } else {
            const uint64_t da = wg_desc(sA + s * step, lbo, sbo, SW ? 1 : 0);
            if constexpr (N == 64)
                wg_ss_n64<true, MN>(d, da, db, s > 0);
            else
                wg_ss_n128<true, MN>(d, da, db, s > 0);
        }
    }
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int j = 0; j < N / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = 16 * warp + g + 8 * (e >> 1), c = 8 * j + 2 * t + (e & 1);
            C[r * N + c] = d[4 * j + e];
        }
}


/* A case's inputs (integers -3..3: every product and sum exact in f32) and C = A B^T. */
inline void wg_inputs(int N, int K, std::vector<__nv_bfloat16> &A, std::vector<__nv_bfloat16> &B,
                      std::vector<float> &ref) {
    A.resize((size_t)64 * K), B.resize((size_t)N * K), ref.assign((size_t)64 * N, 0.f);
    unsigned x = 12345u;
    auto small = [&] {
        x = x * 1664525u + 1013904223u;
        return (float)((int)(x >> 28) % 7 - 3);
    };
    for (auto &v : A) v = __float2bfloat16_rn(small());
    for (auto &v : B) v = __float2bfloat16_rn(small());
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                ref[m * N + n] += __bfloat162float(A[m * K + k]) * __bfloat162float(B[n * K + k]);
}
/* Prints the case's verdict (and its first wrong elements); returns the count of wrong elements
 * (-1: the launch failed). */
inline int wg_report(const char *name, const std::vector<float> &got, const std::vector<float> &ref,
                      int N, const char *err) {
    int bad = 0;
    for (int i = 0; i < 64 * N; i++)
        if (got[i] != ref[i]) {
            if (bad < 4)
                printf("  %s: C[%d][%d] = %g, want %g\n", name, i / N, i % N, got[i], ref[i]);
            bad++;
        }
    printf("%-52s %s (%d of %d wrong)%s%s\n", name, bad || err ? "FAIL" : "PASS", bad, 64 * N,
           err ? ", " : "", err ? err : "");
    return err ? -1 : bad;
}
inline int wg_smem_bytes(int N, int K, bool mn) { return (64 + N) * K * 2 + (mn ? 16384 : 0); }

/* The cases: X(N, K, swizzle, A from registers, B MN-major, swap, name). The known ones first,
 * then the MN-major ones, which run one a process (a wrong descriptor can fault). In each MN-major
 * pair one should pass; the one expected from the PTX ISA's canonical layouts is marked in
 * WG_MN_EXPECTED (without swizzle the step along n is SBO, along k LBO: swap 1; with the 128-byte
 * swizzle the step along k is SBO, and between atoms along n LBO: swap 0). */
#define WG_KNOWN_CASES(X)                                                                        \
    X(64, 16, false, false, false, 0, "m64n64, K 16, A and B in smem, no swizzle")               \
    X(64, 64, false, false, false, 0, "m64n64, K 64 (4 steps), no swizzle")                      \
    X(128, 64, false, false, false, 0, "m64n128, K 64, no swizzle")                              \
    X(64, 64, true, false, false, 0, "m64n64, K 64, 128-byte swizzle")                           \
    X(128, 64, true, false, false, 0, "m64n128, K 64, 128-byte swizzle")                         \
    X(64, 64, false, true, false, 0, "m64n64, K 64, A from registers, no swizzle")               \
    X(64, 64, true, true, false, 0, "m64n64, K 64, A from registers, 128B swizzle")
#define WG_MN_CASES(X)                                                                           \
    X(64, 64, false, false, true, 0, "m64n64, K 64, B MN-major, no swizzle, swap 0")             \
    X(64, 64, false, false, true, 1, "m64n64, K 64, B MN-major, no swizzle, swap 1")             \
    X(64, 64, true, false, true, 0, "m64n64, K 64, B MN-major, 128B swizzle, swap 0")            \
    X(64, 64, true, false, true, 1, "m64n64, K 64, B MN-major, 128B swizzle, swap 1")            \
    X(64, 64, true, true, true, 0, "m64n64, K 64, A regs, B MN-major, 128B, swap 0")             \
    X(64, 64, true, true, true, 1, "m64n64, K 64, A regs, B MN-major, 128B, swap 1")             \
    X(128, 64, true, false, true, 0, "m64n128, K 64, B MN-major, 128B, two atoms, swap 0")       \
    X(128, 64, true, false, true, 1, "m64n128, K 64, B MN-major, 128B, two atoms, swap 1")
#define WG_N_MN 8
/* Run MN-major case i in a process of its own (`argv0 mn i`): its exit status, 2 when it did not
 * exit (a crash). */
static int wg_run_mn_child(const char *argv0, int i) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' mn %d 2>&1", argv0, i);
    const int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
}
static const bool WG_MN_EXPECTED[WG_N_MN] = {false, true, true, false, true, false, true, false};
/* the wrong elements of the failing ones on an H200 (-1: not yet run there) */
static const int WG_MN_WRONG_H200[WG_N_MN] = {4051, 0, 0, 4044, 0, 4044, -1, -1};
