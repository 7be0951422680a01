/* Probe of Hopper's warpgroup MMA (wgmma.mma_async) on the GPU it runs on, before a flash
 * attention kernel is built on it: the shared-memory matrix descriptors, the operand layouts
 * (K-major without swizzle, and with the 128-byte swizzle), A from registers, and the layout of
 * the f32 accumulator fragments that this file assumes. One warpgroup (128 threads) computes
 * C (64 x N) = A (64 x K) B^T, B stored N x K (both K-major), bf16 in, f32 accumulation, from
 * small integers so that every sum is exact; each case is compared element by element with the
 * host's product and prints PASS or the first mismatches. Then B stored MN-major (n contiguous,
 * as V is in attention's P V) with the transpose flag, each layout with the descriptor's two byte
 * offsets one way and the other: one of each pair should pass, and that settles which offset runs
 * along n. Each MN-major case runs in a process of its own (`wgmma_probe mn I`, started by the
 * first): a wrong descriptor can fault, and a fault ends every later CUDA call of its process.
 * Its B region has 16 KB of zeros after it, so that a wrong offset shows as wrong values more
 * often than as a fault. The exit status counts only the first seven cases. Nothing in the
 * library uses it yet. From the PTX ISA's canonical layouts, the expectation: without swizzle
 * the step along n is SBO and along k LBO (swap 1); with the 128-byte swizzle the step along k is
 * SBO (swap 0; N 64 is one atom wide, so LBO is not used).
 *   nvcc -O2 -gencode arch=compute_90a,code=sm_90a tests/wgmma/wgmma_probe.cu -o wgmma_probe
 *   ./wgmma_probe
 * (wgmma needs the architecture-specific target sm_90a; the library builds for sm_90.)
 * Layouts and descriptor fields as the PTX ISA describes them ("Asynchronous Warpgroup Level
 * Matrix Shared Memory Layout"); the accumulator of warp w holds rows 16 w .. 16 w + 15, and for
 * each 8-column block j of N its thread (g = lane / 4, t = lane % 4) holds, in d[4 j .. 4 j + 3],
 * (g, 8 j + 2 t), (g, 8 j + 2 t + 1), (g + 8, 8 j + 2 t), (g + 8, 8 j + 2 t + 1), as mma.sync
 * does for one m16n8 tile. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

/* d (64 x 64, f32 fragments) = A B, or d += A B where acc, over one k16 step; A and B from
 * shared memory through their descriptors */
template <int TB = 0>
__device__ __forceinline__ void wg_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int acc) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {\n"
                 " %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
                 " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31\n"
                 " }, %32, %33, p, 1, 1, 0, %35;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(acc), "n"(TB));
}

/* the same with A (64 x 16) from registers: each warp's 16 rows as mma.sync A fragments */
template <int TB = 0>
__device__ __forceinline__ void wg_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db,
                                          int acc) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {\n"
                 " %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
                 " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31\n"
                 " }, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
}

/* d (64 x 128, f32 fragments) = A B, or d += A B where acc, over one k16 step; A and B from
 * shared memory through their descriptors */
__device__ __forceinline__ void wg_ss_n128(float (&d)[64], uint64_t da, uint64_t db, int acc) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {\n"
                 " %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
                 " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"
                 " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"
                 " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63\n"
                 " }, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
          "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(acc));
}

/* A shared-memory matrix descriptor: start address, leading- and stride-dimension byte offsets
 * (all in 16-byte units) and the swizzle mode (0 none, 1 128-byte). */
__device__ __forceinline__ uint64_t wg_desc(const void *smem, unsigned lbo, unsigned sbo,
                                            unsigned swizzle) {
    uint64_t a = (uint64_t)__cvta_generic_to_shared(smem);
    return ((a >> 4) & 0x3fff) | (uint64_t)((lbo >> 4) & 0x3fff) << 16 |
           (uint64_t)((sbo >> 4) & 0x3fff) << 32 | (uint64_t)swizzle << 62;
}

/* Byte offset of element (r, k) of a K-major operand of K columns in shared memory.
 * No swizzle: 8 x 8 core matrices of 128 contiguous bytes, the two of a k16 step side by side
 * (LBO 128), 8-row groups K / 8 core matrices apart (SBO 16 K). 128-byte swizzle (K = 64: a row
 * is 128 bytes): 8-row atoms of 1024 bytes, row r's 16-byte chunk c at chunk c ^ (r % 8). */
__host__ __device__ inline unsigned wg_off(int r, int k, int K, bool sw128) {
    if (sw128)
        return (unsigned)((r / 8) * 1024 + (r % 8) * 128 + (((k / 8) ^ (r % 8)) * 16) + (k % 8) * 2);
    return (unsigned)((r / 8) * (K / 8) * 128 + (k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2);
}

/* Byte offset of element (k, n) of an MN-major operand of N columns (n contiguous): core matrices
 * of 8 k-rows by 16 bytes of n, 128 bytes apart along n, 8-row groups N / 8 core matrices apart;
 * with the 128-byte swizzle (N = 64: a k-row is 128 bytes), 8-row atoms of 1024 bytes, k-row r's
 * 16-byte chunk c at chunk c ^ (r % 8). */
__host__ __device__ inline unsigned wg_off_mn(int k, int n, int N, bool sw128) {
    if (sw128)
        return (unsigned)((k / 8) * 1024 + (k % 8) * 128 + (((n / 8) ^ (k % 8)) * 16) + (n % 8) * 2);
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
    extern __shared__ __align__(1024) unsigned char sm[];
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
        memcpy(sB + (MN ? wg_off_mn(i % K, i / K, N, SW) : wg_off(i / K, i % K, K, SW)), B + i, 2);
    /* the generic-proxy stores above, made visible to the MMA's async proxy */
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
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
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    const unsigned lbo = SW ? 16 : 128, sbo = SW ? 1024 : 16 * K, step = SW ? 32 : 256;
    /* MN-major B: along n 128 bytes between core matrices (no swizzle; one atom wide with it),
     * along k 16 N bytes between 8-row groups (1024 with the swizzle); a k16 step is two groups */
    const unsigned mn_n = SW ? 16 : 128, mn_k = SW ? 1024 : 16 * N, mn_step = 2 * mn_k;
    const unsigned blbo = MN ? (swap ? mn_k : mn_n) : lbo, bsbo = MN ? (swap ? mn_n : mn_k) : sbo;
#pragma unroll
    for (int s = 0; s < K / 16; s++) {
        const uint64_t db = wg_desc(sB + s * (MN ? mn_step : step), blbo, bsbo, SW ? 1 : 0);
        if constexpr (RS) {
            static_assert(N == 64, "A from registers: n64 only here");
            wg_rs_n64<MN>(d, a[s], db, s > 0);
        } else {
            const uint64_t da = wg_desc(sA + s * step, lbo, sbo, SW ? 1 : 0);
            if constexpr (N == 64)
                wg_ss_n64<MN>(d, da, db, s > 0);
            else
                wg_ss_n128(d, da, db, s > 0);
        }
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < N / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = 16 * warp + g + 8 * (e >> 1), c = 8 * j + 2 * t + (e & 1);
            C[r * N + c] = d[4 * j + e];
        }
}

static int fails = 0;

template <int N, int K, bool SW, bool RS, bool MN = false>
static void run(const char *name, int swap = 0) {
    std::vector<__nv_bfloat16> A(64 * K), B(N * K);
    std::vector<float> ref(64 * N, 0.f), got(64 * N, -7.f);
    unsigned x = 12345u;
    auto small = [&] { /* integers -3..3: every product and sum exact in f32 */
        x = x * 1664525u + 1013904223u;
        return (float)((int)(x >> 28) % 7 - 3);
    };
    for (auto &v : A) v = __float2bfloat16(small());
    for (auto &v : B) v = __float2bfloat16(small());
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                ref[m * N + n] += __bfloat162float(A[m * K + k]) * __bfloat162float(B[n * K + k]);
    __nv_bfloat16 *dA, *dB;
    float *dC;
    cudaMalloc(&dA, A.size() * 2), cudaMalloc(&dB, B.size() * 2), cudaMalloc(&dC, got.size() * 4);
    cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dC, got.data(), got.size() * 4, cudaMemcpyHostToDevice);
    const int smem = (64 + N) * K * 2 + (MN ? 16384 : 0); /* zeros past B: see the top */
    cudaFuncSetAttribute(wg_case<N, K, SW, RS, MN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         smem);
    wg_case<N, K, SW, RS, MN><<<1, 128, smem>>>(dA, dB, dC, swap);
    cudaError_t e = cudaDeviceSynchronize();
    cudaMemcpy(got.data(), dC, got.size() * 4, cudaMemcpyDeviceToHost);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    int bad = 0;
    for (int i = 0; i < 64 * N; i++)
        if (got[i] != ref[i]) {
            if (bad < 4)
                printf("  %s: C[%d][%d] = %g, want %g\n", name, i / N, i % N, got[i], ref[i]);
            bad++;
        }
    printf("%-44s %s (%d of %d wrong)%s%s\n", name, bad || e ? "FAIL" : "PASS", bad, 64 * N,
           e ? ", " : "", e ? cudaGetErrorString(e) : "");
    fails += bad || e;
}

/* the MN-major cases (V in P V): one of each pair should pass; the other says which field is
 * which */
static void run_mn(int i) {
    switch (i) {
    case 0: run<64, 64, false, false, true>("m64n64, K 64, B MN-major, no swizzle, swap 0", 0); break;
    case 1: run<64, 64, false, false, true>("m64n64, K 64, B MN-major, no swizzle, swap 1", 1); break;
    case 2: run<64, 64, true, false, true>("m64n64, K 64, B MN-major, 128B swizzle, swap 0", 0); break;
    case 3: run<64, 64, true, false, true>("m64n64, K 64, B MN-major, 128B swizzle, swap 1", 1); break;
    case 4: run<64, 64, true, true, true>("m64n64, K 64, A regs, B MN-major, 128B, swap 0", 0); break;
    default: run<64, 64, true, true, true>("m64n64, K 64, A regs, B MN-major, 128B, swap 1", 1);
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "mn")) { /* one MN-major case; status 1 if it failed */
        run_mn(atoi(argv[2]));
        return fails != 0;
    }
    run<64, 16, false, false>("m64n64, K 16, A and B in smem, no swizzle");
    run<64, 64, false, false>("m64n64, K 64 (4 steps), no swizzle");
    run<128, 64, false, false>("m64n128, K 64, no swizzle");
    run<64, 64, true, false>("m64n64, K 64, 128-byte swizzle");
    run<128, 64, true, false>("m64n128, K 64, 128-byte swizzle");
    run<64, 64, false, true>("m64n64, K 64, A from registers, no swizzle");
    run<64, 64, true, true>("m64n64, K 64, A from registers, 128B swizzle");
    fflush(stdout);
    int mn_failed = 0;
    for (int i = 0; i < 6; i++) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "'%s' mn %d", argv[0], i);
        mn_failed += system(cmd) != 0;
    }
    printf("%s (the MN-major pairs: %d of 6 failed, 3 expected)\n", fails ? "FAIL" : "PASS",
           mn_failed);
    return fails != 0;
}
