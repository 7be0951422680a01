/* Host stand-in for Hopper's warpgroup MMA (wgmma.mma_async, bf16 in, f32 accumulation), on top
 * of cuda_runtime.h's fibers, so that a kernel's wgmma code runs on the CPU (scripts/wgmma_emu.sh).
 *
 * Shared-memory operands are read through their matrix descriptors as the PTX ISA's canonical
 * layouts place them: start address, leading (LBO) and stride (SBO) byte offsets, and the
 * swizzle mode (none or 128-byte; the 32- and 64-byte modes stop the run). Shared addresses are
 * offsets from the block's dynamic shared memory, which counts as 1024-byte aligned.
 *   K-major (A, or B without the transpose flag), element (r, k) of a k16 step:
 *     no swizzle  start + (r / 8) SBO + (r % 8) 16 + (k / 8) LBO + (k % 8) 2
 *     128-byte    start + (r / 8) SBO + (r % 8) 128 + (k / 8) 16 + (k % 8) 2, swizzled
 *   MN-major (B with the transpose flag), element (n, k):
 *     no swizzle  start + (n / 8) SBO + (n % 8) 2 + (k / 8) LBO + (k % 8) 16
 *     128-byte    start + (n / 64) LBO + (n % 64) 2 + (k / 8) SBO + (k % 8) 128, swizzled
 * where the 128-byte swizzle XORs address bits 4-6 with bits 7-9. An H200 confirmed every one of
 * these in tests/wgmma/wgmma_probe.cu except the MN-major 128-byte step between atoms along n
 * ((n / 64) LBO, N > 64), which the probe's last case checks.
 *
 * Accumulator fragments: thread (warp w, g = lane / 4, t = lane % 4) holds d[4 j + e] =
 * (row 16 w + g + 8 (e / 2), column 8 j + 2 t + e % 2); an A fragment from registers is the
 * mma.sync one: a[q] = (row g + 8 (q % 2), columns 2 t + 8 (q / 2) and one more, low half first).
 *
 * Like the hardware's, the operation is asynchronous: at issue the result is computed (from the
 * shared memory and registers as they are then) but the accumulator registers read NaN until a
 * wgmma_wait lands its group, so reading them before the wait shows; A fragment registers
 * changed before then stop the run (the hardware reads them asynchronously too), as do a
 * cp.async into shared memory an incomplete wgmma reads and a wgmma read of shared memory a
 * cp.async has not landed in yet (cuda_runtime.h keeps both counts per byte). A wgmma that accumulates
 * into registers still in flight starts from the in-flight value, as the hardware chains them. An
 * address outside the shared memory is a fault: the run stops with exit status 3. */
#pragma once
#include <array>
#include <vector>

#include "cuda_runtime.h"

namespace emu {
struct wg_result { /* a wgmma's result, waiting for its group to land */
    float *d;
    std::vector<float> v;
    const uint32_t *a;   /* its A fragment registers (or null), which must not change before */
    std::array<uint32_t, 4> a_then; /* it lands: the hardware reads them asynchronously */
    std::vector<unsigned> read; /* the shared-memory bytes it reads (block_state::reading) */
};
struct wg_thread {
    std::vector<wg_result> open;                /* issued, not yet committed */
    std::vector<std::vector<wg_result>> groups; /* committed, oldest first */
    std::array<uint32_t, 4> a;                  /* A fragment left for the warp's other lanes */
};
inline std::vector<wg_thread> wg_threads;

inline wg_thread &wg_me() {
    if (wg_threads.size() < fibers.size()) wg_threads.resize(fibers.size());
    return wg_threads[cur];
}
inline float wg_to_f(uint16_t h, bool bf) {
    return bf ? __uint_as_float((unsigned)h << 16) : __half2float(__ushort_as_half(h));
}
/* The shared-memory byte offset of element (row, k) of a descriptor's operand (row: m or n). */
inline size_t wg_addr(uint64_t desc, bool mn_major, int row, int k) {
    const size_t start = (size_t)(desc & 0x3fff) << 4, lbo = (size_t)((desc >> 16) & 0x3fff) << 4,
                 sbo = (size_t)((desc >> 32) & 0x3fff) << 4;
    const int mode = (int)(desc >> 62);
    if (mode != 0 && mode != 1) {
        fprintf(stderr, "emu: wgmma descriptor with a 32- or 64-byte swizzle (not emulated)\n");
        exit(2);
    }
    size_t a;
    if (!mn_major)
        a = mode ? start + (row / 8) * sbo + (row % 8) * 128 + (k / 8) * 16 + (k % 8) * 2
                 : start + (row / 8) * sbo + (row % 8) * 16 + (k / 8) * lbo + (k % 8) * 2;
    else
        a = mode ? start + (row / 64) * lbo + (row % 64) * 2 + (k / 8) * sbo + (k % 8) * 128
                 : start + (row / 8) * sbo + (row % 8) * 2 + (k / 8) * lbo + (k % 8) * 16;
    if (mode) a ^= ((a >> 7) & 7) << 4;
    return a;
}
/* An operand element; its two bytes are counted as read until the wgmma completes (read). */
inline float wg_load(uint64_t desc, bool mn_major, int row, int k, bool bf,
                     std::vector<unsigned> &read) {
    const size_t a = wg_addr(desc, mn_major, row, k);
    block_state &b = my_block();
    if (a + 2 > b.smem.size() - 16) { /* run_batch adds 16 bytes of slack past the request */
        fprintf(stderr, "emu: wgmma operand at shared offset %zu, past the %zu bytes (a fault)\n", a,
                b.smem.size() - 16);
        exit(3);
    }
    if (b.copying[a] || b.copying[a + 1]) {
        fprintf(stderr, "emu: wgmma reads shared offset %zu before the cp.async into it landed\n", a);
        exit(2);
    }
    b.reading[a]++, b.reading[a + 1]++;
    read.push_back((unsigned)a);
    uint16_t h;
    memcpy(&h, b.smem.data() + a, 2);
    return wg_to_f(h, bf);
}

/* D (64 x N) = A B^T (+ D where acc) for one k16 step of the thread's warpgroup. A from shared
 * memory through da, or, where a_regs is given, from the warp's registers (K-major); B (N x 16)
 * through db, MN-major where tb. d: this thread's N / 2 accumulators. */
inline void wgmma(float *d, int N, uint64_t da, const uint32_t *a_regs, uint64_t db, bool tb,
                  bool acc, bool bf) {
    const int tid = (int)(cur % nthreads), lane = tid & 31, warp = (tid >> 5) & 3;
    const int g = lane / 4, t = lane % 4;
    if (a_regs) { /* every lane leaves its fragment; the warp reads them all */
        for (int q = 0; q < 4; q++) wg_me().a[q] = a_regs[q];
        warp_barrier();
    }
    wg_thread &me = wg_me(); /* (taken after the barrier: another fiber may have grown the list) */
    wg_result r{d, std::vector<float>((size_t)N / 2), a_regs, {}, {}};
    /* this thread's two rows of A and N / 4 columns of B */
    float A[2][16], Bc[64][16];
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 16; k++) {
            const int row = 16 * warp + g + 8 * h;
            if (!a_regs) {
                A[h][k] = wg_load(da, false, row, k, bf, r.read);
                continue;
            }
            const int rr = row % 16, src = cur - lane + (rr % 8) * 4 + (k % 8) / 2;
            const uint32_t w = wg_threads[src].a[(rr / 8) + 2 * ((k % 16) / 8)];
            A[h][k] = wg_to_f((uint16_t)(k % 2 ? w >> 16 : w & 0xffff), bf);
        }
    for (int j = 0; j < N / 8; j++)
        for (int e = 0; e < 2; e++)
            for (int k = 0; k < 16; k++)
                Bc[2 * j + e][k] = wg_load(db, tb, 8 * j + 2 * t + e, k, bf, r.read);
    /* the accumulator's value at issue: the newest in-flight result for d, else the registers */
    const float *in = d;
    auto newest = [&](const std::vector<wg_result> &list) {
        for (auto it = list.rbegin(); it != list.rend() && in == d; ++it)
            if (it->d == d) in = it->v.data();
    };
    newest(me.open);
    for (auto it = me.groups.rbegin(); it != me.groups.rend() && in == d; ++it)
        newest(*it);
    if (a_regs)
        for (int q = 0; q < 4; q++) r.a_then[q] = a_regs[q];
    for (int j = 0; j < N / 8; j++)
        for (int e = 0; e < 4; e++) {
            float s = acc ? in[4 * j + e] : 0.f;
            for (int k = 0; k < 16; k++)
                s += A[e >> 1][k] * Bc[2 * j + (e & 1)][k];
            r.v[4 * j + e] = s;
        }
    if (a_regs) warp_barrier(); /* every lane has read the fragments */
    me.open.push_back(std::move(r));
    for (int i = 0; i < N / 2; i++)
        d[i] = NAN;
}
/* wgmma.commit_group */
inline void wgmma_commit() {
    wg_thread &me = wg_me();
    me.groups.push_back(std::move(me.open));
    me.open.clear();
}
/* wgmma.wait_group n: land every committed group but the n newest, oldest first */
inline void wgmma_wait(int n) {
    wg_thread &me = wg_me();
    size_t keep = (size_t)(n > 0 ? n : 0), land = me.groups.size() > keep ? me.groups.size() - keep : 0;
    for (size_t i = 0; i < land; i++)
        for (const wg_result &r : me.groups[i]) {
            memcpy(r.d, r.v.data(), r.v.size() * sizeof(float));
            for (unsigned a : r.read) my_block().reading[a]--, my_block().reading[a + 1]--;
            for (int q = 0; r.a && q < 4; q++)
                if (r.a[q] != r.a_then[q]) {
                    fprintf(stderr, "emu: thread %d changed the A fragment registers of a wgmma "
                                    "before it completed\n", cur % nthreads);
                    exit(2);
                }
        }
    me.groups.erase(me.groups.begin(), me.groups.begin() + (long)land);
}
/* Whether every thread has landed all its wgmma groups (a kernel must wait for them before it
 * returns); clears what is left for the next launch. */
inline bool wgmma_all_landed() {
    bool ok = true;
    for (wg_thread &w : wg_threads) {
        ok &= w.open.empty() && w.groups.empty();
        w.open.clear(), w.groups.clear();
    }
    return ok;
}
/* the shared-memory address of p, an offset from the block's dynamic shared memory */
inline unsigned shared_addr(const void *p) {
    return (unsigned)((const unsigned char *)p - my_block().smem.data());
}
} // namespace emu
