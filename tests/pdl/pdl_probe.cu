/* Probe of programmatic dependent launch (PDL) ordering on the GPU it runs on: does an early
 * trigger (griddepcontrol.launch_dependents) ever let later work in the stream see a slow kernel's
 * writes unfinished? A writer W fills a buffer after spinning ~200k cycles; a reader R (or a copy
 * to the host) then counts the elements that do not hold the writer's value. Each pattern runs 50
 * times; every count should be 0. Written to rule PDL ordering in or out when the embedding
 * backward failed with its sort as a dependent launch (it was ruled out: the cause was a
 * non-coherent load that ptxas moved above the wait; see nn_wait_prev in cuda_nn.cu).
 * bench/logs/pdl_probe_h200_2026-11-29_session12.log is the run on an H200 (all 0) of an earlier
 * form of this file with the same twelve patterns; this form has not run on a GPU yet.
 *   nvcc -O2 -arch=sm_90 tests/pdl/pdl_probe.cu -o pdl_probe && ./pdl_probe */
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

__device__ void trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ void wait_prev() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

/* what the writer does first: 0 trigger then wait, 1 trigger only, 2 wait then trigger */
__device__ int g_mode;

__global__ void writer(int *buf, int n, int val, long long spin) {
    if (g_mode == 0) trigger(), wait_prev();
    if (g_mode == 1) trigger();
    if (g_mode == 2) wait_prev(), trigger();
    long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        buf[i] = val;
}
__global__ void reader(const int *buf, int n, int val, int *bad) {
    wait_prev();
    int b = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        b += buf[i] != val;
    if (b) atomicAdd(bad, b);
}
__global__ void other(int *x) { /* an unrelated small kernel */
    trigger();
    wait_prev();
    if (threadIdx.x == 0 && blockIdx.x == 0) x[0]++;
}

/* launch k on s with grid x block, as a programmatic dependent when pdl */
template <typename... P, typename... A>
static void launch(bool pdl, void (*k)(P...), unsigned grid, unsigned block, cudaStream_t s,
                   A... args) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t c = {};
    c.gridDim = grid, c.blockDim = block, c.stream = s, c.attrs = at, c.numAttrs = pdl ? 1 : 0;
    cudaLaunchKernelEx(&c, k, args...);
}

struct pattern {
    const char *name;
    int mode;         /* the writer's g_mode */
    bool w_pdl;       /* the writer as a dependent launch */
    int between;      /* small kernels between writer and reader: 0, 1 (ordinary), 2 (then a dependent) */
    bool r_pdl;       /* the reader as a dependent launch */
    bool copy;        /* a copy to the host instead of the reader */
};

int main() {
    const pattern pats[] = {
        {"W normal -> R normal", 0, false, 0, false, false},
        {"W pdl -> R normal", 0, true, 0, false, false},
        {"W pdl -> R pdl", 0, true, 0, true, false},
        {"W pdl -> Z normal -> R pdl", 0, true, 1, true, false},
        {"W pdl -> Z normal -> Z pdl -> R pdl", 0, true, 2, true, false},
        {"W pdl -> copy to host", 0, true, 0, false, true},
        {"W normal -> copy to host", 0, false, 0, false, true},
        {"W(trigger, wait) normal -> R pdl", 0, false, 0, true, false},
        {"W(trigger) normal -> R pdl", 1, false, 0, true, false},
        {"W(wait, trigger) normal -> R pdl", 2, false, 0, true, false},
        {"W(trigger) pdl -> R pdl", 1, true, 0, true, false},
        {"W(wait, trigger) pdl -> R pdl", 2, true, 0, true, false},
    };
    cudaStream_t s;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    const int n = 1 << 22, runs = 50;
    int *buf, *bad, *dummy;
    std::vector<int> host(n);
    cudaMalloc(&buf, n * sizeof(int));
    cudaMalloc(&bad, sizeof(int));
    cudaMalloc(&dummy, sizeof(int));
    int failed = 0;
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++) {
        const pattern &q = pats[p];
        cudaMemcpyToSymbol(g_mode, &q.mode, sizeof(int));
        long total = 0;
        for (int r = 1; r <= runs; r++) {
            const int val = (int)p * 1000 + r;
            cudaMemsetAsync(bad, 0, sizeof(int), s);
            launch(false, other, 1, 32, s, dummy);
            launch(q.w_pdl, writer, 264, 256, s, buf, n, val, 200000LL);
            if (q.copy) {
                cudaMemcpyAsync(host.data(), buf, n * sizeof(int), cudaMemcpyDeviceToHost, s);
                cudaStreamSynchronize(s);
                for (int i = 0; i < n; i++) total += host[i] != val;
                continue;
            }
            if (q.between >= 1) launch(false, other, 1, 32, s, dummy);
            if (q.between >= 2) launch(true, other, 1, 32, s, dummy);
            launch(q.r_pdl, reader, 264, 256, s, (const int *)buf, n, val, bad);
            int b = 0;
            cudaMemcpyAsync(&b, bad, sizeof(int), cudaMemcpyDeviceToHost, s);
            cudaStreamSynchronize(s);
            total += b;
        }
        cudaError_t e = cudaGetLastError();
        printf("%-40s stale elements over %d runs: %ld (%s)\n", q.name, runs, total,
               cudaGetErrorString(e));
        failed += total != 0 || e != cudaSuccess;
    }
    printf("%s\n", failed ? "FAIL" : "PASS");
    return failed ? 1 : 0;
}
