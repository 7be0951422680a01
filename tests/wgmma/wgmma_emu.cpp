/* The wgmma probe's cases (wgmma_cases.cuh) on the CPU, through the host stand-in for wgmma
 * (tests/cuda_emu/wgmma_emu.h): every known case must pass and every MN-major case must come out
 * as an H200 gave it (WG_MN_EXPECTED), the failing ones with the H200's count of wrong elements
 * (WG_MN_WRONG_H200; the last pair, two atoms along n, is the emulator's reading of the PTX ISA
 * until the probe has run it). So the emulator reads descriptors and fragments as
 * the hardware does, and a wgmma kernel can be checked here before it runs on a GPU. A case whose
 * operand falls outside the shared memory ends the process (exit status 3), as a fault would on
 * the GPU, so each MN-major case runs in a process of its own.
 *   scripts/wgmma_emu.sh */
#include <cstdlib>

#include "wgmma_cases.cuh"

template <int N, int K, bool SW, bool RS, bool MN>
static int run(const char *name, int swap) { /* wrong elements, -1 for a group never waited for */
    std::vector<__nv_bfloat16> A, B;
    std::vector<float> ref, got((size_t)64 * N, -7.f);
    wg_inputs(N, K, A, B, ref);
    emu::launch(1, 128, (size_t)wg_smem_bytes(N, K, MN),
                [&] { wg_case<N, K, SW, RS, MN>(A.data(), B.data(), got.data(), swap); });
    const bool landed = emu::wgmma_all_landed();
    return wg_report(name, got, ref, N, landed ? nullptr : "a wgmma group never waited for");
}

/* The emulator itself: the accumulators read NaN between issue and wait, and a chained wgmma
 * starts from the value in flight. One warpgroup, m64n64, K 32 (two chained steps), no swizzle;
 * shared memory holds A (64 x 32) then B (64 x 32), K-major. */
static bool self_check() {
    std::vector<__nv_bfloat16> A, B;
    std::vector<float> ref;
    wg_inputs(64, 32, A, B, ref);
    bool nan_before = true, right_after = true;
    emu::launch(1, 128, (size_t)(64 + 64) * 32 * 2, [&] {
        unsigned char *sm = (unsigned char *)emu::dsmem();
        const int tid = threadIdx.x;
        for (int i = tid; i < 64 * 32; i += 128) {
            memcpy(sm + wg_off(i / 32, i % 32, 32, false), &A[i], 2);
            memcpy(sm + 64 * 32 * 2 + wg_off(i / 32, i % 32, 32, false), &B[i], 2);
        }
        __syncthreads();
        float d[32];
        for (int s = 0; s < 2; s++)
            wg_ss_n64<true>(d, wg_desc(sm + s * 256, 128, 16 * 32, 0),
                      wg_desc(sm + 64 * 32 * 2 + s * 256, 128, 16 * 32, 0), s > 0);
        wg_commit();
        nan_before &= d[0] != d[0];
        wg_wait0();
        const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
        for (int j = 0; j < 8; j++)
            for (int e = 0; e < 4; e++)
                right_after &= d[4 * j + e] == ref[(16 * w + g + 8 * (e >> 1)) * 64 + 8 * j + 2 * t + (e & 1)];
    });
    printf("%-52s %s\n", "emulator: NaN before the wait, chained steps after it",
           nan_before && right_after ? "PASS" : "FAIL");
    return nan_before && right_after;
}

int main(int argc, char **argv) {
    int i = 0;
    /* one MN-major case: status 0 if it passed, 1 if it failed as on the H200 (the same count of
     * wrong elements, where known), 2 if it failed otherwise */
    if (argc == 3 && !strcmp(argv[1], "mn")) {
        const int want = atoi(argv[2]);
        int bad = -1;
#define WG_RUN_MN(N, K, SW, RS, MN, SWAP, NAME) \
    if (i++ == want) bad = run<N, K, SW, RS, MN>(NAME, SWAP);
        WG_MN_CASES(WG_RUN_MN)
        const int h200 = want >= 0 && want < WG_N_MN ? WG_MN_WRONG_H200[want] : -1;
        return bad == 0 ? 0 : bad > 0 && (h200 < 0 || bad == h200) ? 1 : 2;
    }
    int fails = !self_check();
#define WG_RUN(N, K, SW, RS, MN, SWAP, NAME) fails += run<N, K, SW, RS, MN>(NAME, SWAP) != 0;
    WG_KNOWN_CASES(WG_RUN)
    fflush(stdout);
    int unexpected = 0;
    for (i = 0; i < WG_N_MN; i++) {
        const int rc = wg_run_mn_child(argv[0], i);
        unexpected += rc == 2 || (rc == 0) != WG_MN_EXPECTED[i];
    }
    printf("%s (known cases and the emulator's own check: %d failed; MN-major cases: %d not as the "
           "H200 gave them)\n",
           fails || unexpected ? "FAIL" : "PASS", fails, unexpected);
    return fails || unexpected;
}
