/* Probe of Hopper's warpgroup MMA (wgmma.mma_async) on the GPU it runs on, before a flash
 * attention kernel is built on it: the shared-memory matrix descriptors, the operand layouts
 * (K-major without swizzle and with the 128-byte swizzle, and B MN-major as V is in P V), A from
 * registers, and the layout of the f32 accumulator fragments. The cases and their device code are
 * in wgmma_cases.cuh; each case is compared element by element with the host's exact product and
 * prints PASS or the first mismatches. Each MN-major case runs in a process of its own
 * (`wgmma_probe mn I`, started by the first): a wrong descriptor can fault, and a fault ends every
 * later CUDA call of its process. Its B region has 16 KB of zeros after it, so that a wrong offset
 * shows as wrong values more often than as a fault. The exit status is 1 when a known case fails
 * or an MN-major case does not come out as WG_MN_EXPECTED says. Nothing in the library uses it
 * yet; tests/wgmma/wgmma_emu.cpp runs the same cases on the CPU.
 *   nvcc -O2 -gencode arch=compute_90a,code=sm_90a tests/wgmma/wgmma_probe.cu -o wgmma_probe
 *   ./wgmma_probe
 * (wgmma needs the architecture-specific target sm_90a; the library builds for sm_90.) */
#include <cstdlib>

#include "wgmma_cases.cuh"

template <int N, int K, bool SW, bool RS, bool MN>
static bool run(const char *name, int swap) { /* whether it passed */
    std::vector<__nv_bfloat16> A, B;
    std::vector<float> ref, got((size_t)64 * N, -7.f);
    wg_inputs(N, K, A, B, ref);
    __nv_bfloat16 *dA, *dB;
    float *dC;
    cudaMalloc(&dA, A.size() * 2), cudaMalloc(&dB, B.size() * 2), cudaMalloc(&dC, got.size() * 4);
    cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dC, got.data(), got.size() * 4, cudaMemcpyHostToDevice);
    const int smem = wg_smem_bytes(N, K, MN);
    cudaFuncSetAttribute(wg_case<N, K, SW, RS, MN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         smem);
    wg_case<N, K, SW, RS, MN><<<1, 128, smem>>>(dA, dB, dC, swap);
    cudaError_t e = cudaDeviceSynchronize();
    cudaMemcpy(got.data(), dC, got.size() * 4, cudaMemcpyDeviceToHost);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    return wg_report(name, got, ref, N, e ? cudaGetErrorString(e) : nullptr) == 0;
}

int main(int argc, char **argv) {
    int i = 0;
    if (argc == 3 && !strcmp(argv[1], "mn")) { /* one MN-major case; status 1 if it failed */
        const int want = atoi(argv[2]);
        bool ok = false;
#define WG_RUN_MN(N, K, SW, RS, MN, SWAP, NAME) \
    if (i++ == want) ok = run<N, K, SW, RS, MN>(NAME, SWAP);
        WG_MN_CASES(WG_RUN_MN)
        return !ok;
    }
    int fails = 0;
#define WG_RUN(N, K, SW, RS, MN, SWAP, NAME) fails += !run<N, K, SW, RS, MN>(NAME, SWAP);
    WG_KNOWN_CASES(WG_RUN)
    fflush(stdout);
    int unexpected = 0;
    for (i = 0; i < WG_N_MN; i++)
        unexpected += (wg_run_mn_child(argv[0], i) == 0) != WG_MN_EXPECTED[i];
    printf("%s (known cases: %d failed; MN-major cases: %d not as expected)\n",
           fails || unexpected ? "FAIL" : "PASS", fails, unexpected);
    return fails || unexpected;
}
