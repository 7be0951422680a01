/* Host stand-ins for the CUDA runtime as the row kernels of cuda_nn.cu use it, so that their
 * text compiles with g++ and runs on the CPU (scripts/row_grads_emu.sh). Not a CUDA emulator in
 * general: just what those kernels touch.
 *
 * A block runs as one fiber per thread (ucontext), switched only at barriers, so a thread runs
 * alone from one barrier to the next. __syncthreads and __syncwarp are barriers over the block's
 * or the warp's fibers; a warp collective (shuffle, ballot, match) is a warp barrier at which the
 * lanes leave their values and another after they have read them, as the hardware exchanges
 * them. emu::launch runs the blocks of a grid one after another, in an order the caller may
 * choose (a kernel must not depend on it). emu::launch_coop is a cooperative launch: every thread
 * of every block is a fiber at once, each block with its own shared memory and barriers, and
 * emu::grid_sync is a barrier over them all. Dynamic shared memory starts as 0xff bytes (ints -1,
 * floats NaN), so a read before a write shows. `__shared__` variables are static, one copy for
 * every block: a kernel run with launch_coop must use dynamic shared memory (emu::dsmem) only.
 * emu::cp_async16 / cp_async_commit / cp_async_wait model cp.async: a copy lands only when a
 * wait_group completes its group; a copy into shared memory that an asynchronous MMA
 * (wgmma_emu.h) still reads, or such a read of memory a copy has not landed in yet, stops the
 * run. Other races between threads cannot show here: a thread is never interrupted between
 * barriers. */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static /* one copy for all the fibers of the block */
#define __align__(n) __attribute__((aligned(n)))
#define FE_CUDA_EMU 1 /* device code takes its emulation branches (emu::cp_async16, ...) */

typedef int cudaError_t;
typedef void *cudaStream_t;
typedef void *cublasLtHandle_t;
typedef void *cublasHandle_t;
inline cudaError_t cudaGetLastError() { return 0; }

struct emu_dim3 {
    unsigned x, y, z;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct double2 {
    double x, y;
};
struct int4 {
    int x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }

inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline double __hiloint2double(int hi, int lo) {
    uint64_t b = (uint64_t)(uint32_t)hi << 32 | (uint32_t)lo;
    double d;
    memcpy(&d, &b, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long b;
    memcpy(&b, &d, 8);
    return b;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }

/* bf16 and f16 as bits; conversions round to nearest even */
struct __nv_bfloat16 {
    unsigned short x;
};
struct __half {
    unsigned short x;
};
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)(u >> 16 | 0x40)}; /* quiet NaN */
    u += 0x7fffu + (u >> 16 & 1);
    return {(unsigned short)(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline float __half2float(__half h) {
    _Float16 f;
    memcpy(&f, &h.x, 2);
    return (float)f;
}
inline __half __float2half_rn(float f) {
    _Float16 g = (_Float16)f;
    __half h;
    memcpy(&h.x, &g, 2);
    return h;
}
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }

namespace emu {
struct copy16 { /* a cp.async in flight: its 16 source bytes, read when it was issued */
    unsigned char *dst, bytes[16];
};
struct fiber {
    ucontext_t ctx;
    bool done;
    int wait;       /* 0: runnable, 1: at its block's barrier, 2: its warp's, 3: the grid's */
    const long *on; /* the generation counter of the barrier it waits at */
    long gen;       /* the generation it waits to see pass */
    std::vector<copy16> open;                /* cp.async copies of the group not yet committed */
    std::vector<std::vector<copy16>> groups; /* committed groups not yet landed, oldest first */
};
struct block_state { /* a block of the running batch */
    unsigned idx;    /* its blockIdx.x */
    std::vector<unsigned char> smem;
    /* per byte of smem: cp.async copies issued into it and not yet landed, and asynchronous
     * readers (wgmma_emu.h) issued and not yet complete; a copy into a byte being read, or an
     * asynchronous read of a byte still being copied, stops the run */
    std::vector<unsigned short> copying, reading;
    long gen, warp_gen[32], named_gen[16];
    int count, warp_count[32], named_count[16];
};
const size_t stack_bytes = 64 * 1024;
const uint64_t stack_canary = 0x5ca1ab1e0ddba11ull; /* at the bottom of each stack */
inline void uncount_copy(const copy16 &c); /* below */
inline std::vector<fiber> fibers;                   /* thread t of batch slot s: s * block + t */
inline std::vector<std::unique_ptr<char[]>> stacks; /* allocated when first needed, kept */
inline std::vector<block_state> blocks;
inline ucontext_t scheduler;
inline int cur, nthreads, nfibers; /* running fiber, threads a block, fibers in the batch */
inline bool coop;                  /* the batch is a cooperative grid */
inline long grid_gen;
inline int grid_count;
inline emu_dim3 block_dim, grid_dim;
inline std::vector<uint64_t> lane_value; /* what each thread leaves at a warp collective */
inline std::function<void()> kernel;

inline void start_fiber() {
    kernel();
    for (auto &g : fibers[cur].groups) /* copies never waited for: dropped */
        for (const copy16 &c : g) uncount_copy(c);
    for (const copy16 &c : fibers[cur].open) uncount_copy(c);
    fibers[cur].open.clear(), fibers[cur].groups.clear();
    fibers[cur].done = true;
    swapcontext(&fibers[cur].ctx, &scheduler);
}
/* Arrive at a barrier of n threads (gen, count: its state); wait there unless it is the last. */
inline void arrive(long &gen, int &count, int n, int kind) {
    long g = gen;
    if (++count == n) {
        count = 0, gen++;
        return;
    }
    fibers[cur].wait = kind, fibers[cur].on = &gen, fibers[cur].gen = g;
    swapcontext(&fibers[cur].ctx, &scheduler);
}
inline block_state &my_block() { return blocks[cur / nthreads]; }
inline void block_barrier() {
    block_state &b = my_block();
    arrive(b.gen, b.count, nthreads, 1);
}
inline void warp_barrier() {
    block_state &b = my_block();
    int w = (cur % nthreads) >> 5;
    arrive(b.warp_gen[w], b.warp_count[w], 32, 2);
}
/* bar.sync id, n: a barrier of the n threads of the block that name it (named barrier id) */
inline void named_barrier(int id, int n) {
    block_state &b = my_block();
    arrive(b.named_gen[id], b.named_count[id], n, 4);
}
/* A barrier over every thread of a cooperative grid (device code's grid barrier on the host). */
inline void grid_sync() {
    if (!coop) {
        fprintf(stderr, "emu: grid_sync outside a cooperative launch (emu::launch_coop)\n");
        exit(2);
    }
    arrive(grid_gen, grid_count, nfibers, 3);
}
inline emu_dim3 thread_idx() { return {(unsigned)(cur % nthreads), 0, 0}; }
inline emu_dim3 block_idx() { return {my_block().idx, 0, 0}; }
inline void *dsmem() { return my_block().smem.data(); }
/* the byte offset of p in the block's dynamic shared memory, or -1 */
inline long smem_offset(const void *p) {
    const std::vector<unsigned char> &s = my_block().smem;
    const unsigned char *c = (const unsigned char *)p;
    return c >= s.data() && c < s.data() + s.size() ? (long)(c - s.data()) : -1;
}
inline void uncount_copy(const copy16 &c) {
    const long o = smem_offset(c.dst);
    for (int i = 0; o >= 0 && i < 16; i++) my_block().copying[o + i]--;
}

/* cp.async.cg.shared.global of 16 bytes: the source is read now, dst written when a
 * cp_async_wait lands the group (so a read of dst before the wait sees the old bytes). */
inline void cp_async16(void *dst, const void *src) {
    if ((uintptr_t)dst % 16 || (uintptr_t)src % 16) {
        fprintf(stderr, "emu: cp_async16 of a misaligned address\n");
        exit(2);
    }
    copy16 c;
    c.dst = (unsigned char *)dst;
    memcpy(c.bytes, src, 16);
    const long o = smem_offset(dst);
    for (int i = 0; o >= 0 && i < 16; i++) {
        if (my_block().reading[o + i]) {
            fprintf(stderr, "emu: cp.async into shared offset %ld, which an asynchronous MMA "
                            "still reads\n", o + i);
            exit(2);
        }
        my_block().copying[o + i]++;
    }
    fibers[cur].open.push_back(c);
}
/* cp.async.commit_group: close the open group (an empty one counts too) */
inline void cp_async_commit() {
    fiber &f = fibers[cur];
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}
/* cp.async.wait_group n: land every committed group but the n newest, oldest first */
inline void cp_async_wait(int n) {
    std::vector<std::vector<copy16>> &g = fibers[cur].groups;
    size_t keep = (size_t)(n > 0 ? n : 0), land = g.size() > keep ? g.size() - keep : 0;
    for (size_t i = 0; i < land; i++)
        for (const copy16 &c : g[i])
            memcpy(c.dst, c.bytes, 16), uncount_copy(c);
    g.erase(g.begin(), g.begin() + (long)land);
}

/* Run the blocks ids[0 .. nb) of a launch together, a fiber per thread, until every thread has
 * returned; smem: bytes of dynamic shared memory a block. */
inline void run_batch(const unsigned *ids, unsigned nb, size_t smem) {
    nfibers = (int)nb * nthreads;
    blocks.resize(nb);
    for (unsigned s = 0; s < nb; s++) {
        block_state &b = blocks[s];
        b.idx = ids[s], b.smem.assign(smem + 16, 0xff), b.gen = 0, b.count = 0;
        b.copying.assign(smem + 16, 0), b.reading.assign(smem + 16, 0);
        for (int w = 0; w < 32; w++)
            b.warp_gen[w] = 0, b.warp_count[w] = 0;
        for (int n = 0; n < 16; n++)
            b.named_gen[n] = 0, b.named_count[n] = 0;
    }
    grid_gen = 0, grid_count = 0;
    if (fibers.size() < (size_t)nfibers) fibers.resize(nfibers);
    if (lane_value.size() < (size_t)nfibers) lane_value.resize(nfibers);
    while (stacks.size() < (size_t)nfibers) /* untouched pages cost no memory */
        stacks.emplace_back(new char[stack_bytes]);
    for (int i = 0; i < nfibers; i++) {
        fiber &f = fibers[i];
        f.done = false, f.wait = 0, f.on = NULL, f.gen = 0, f.open.clear(), f.groups.clear();
        memcpy(stacks[i].get(), &stack_canary, 8);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[i].get();
        f.ctx.uc_stack.ss_size = stack_bytes;
        f.ctx.uc_link = NULL;
        makecontext(&f.ctx, start_fiber, 0);
    }
    static const char *const kinds[] = {"", "block", "warp", "grid", "named"};
    for (;;) { /* run every fiber that can run until all are done */
        bool ran = false;
        int stuck = -1;
        for (int i = 0; i < nfibers; i++) {
            fiber &f = fibers[i];
            if (f.done) continue;
            if (f.wait && *f.on == f.gen) { /* its barrier has not passed yet */
                if (stuck < 0) stuck = i;
                continue;
            }
            f.wait = 0, cur = i, ran = true;
            swapcontext(&scheduler, &f.ctx);
            if (memcmp(stacks[i].get(), &stack_canary, 8)) {
                fprintf(stderr, "emu: block %u thread %d overflowed its %zu-byte stack\n",
                        blocks[i / nthreads].idx, i % nthreads, stack_bytes);
                exit(2);
            }
        }
        if (ran) continue;
        if (stuck < 0) break; /* all done */
        fprintf(stderr, "emu: block %u: threads wait at a %s barrier that others never reach\n",
                blocks[stuck / nthreads].idx, kinds[fibers[stuck].wait]);
        exit(2);
    }
}

/* Run kernel k (a call with its arguments bound) over `grid` blocks of `block` threads with
 * `smem` bytes of dynamic shared memory each, the blocks one after another in `order` (default
 * 0, 1, ...). grid_sync is an error here. */
inline void launch(unsigned grid, unsigned block, size_t smem, std::function<void()> k,
                   const std::vector<unsigned> &order = {}) {
    nthreads = (int)block, coop = false, kernel = k;
    grid_dim = {grid, 1, 1}, block_dim = {block, 1, 1};
    for (unsigned q = 0; q < grid; q++) {
        unsigned b = order.empty() ? q : order[q];
        run_batch(&b, 1, smem);
    }
}
/* The cooperative launch of k: every thread of the `grid` blocks runs at once (as fibers), each
 * block with its own `smem` bytes of dynamic shared memory and its own barriers, so grid_sync
 * can wait for all of them. `order` (default 0, 1, ...) is the order in which the blocks' threads
 * get to run between barriers. Static __shared__ variables would be shared by every block: use
 * emu::dsmem() only. */
inline void launch_coop(unsigned grid, unsigned block, size_t smem, std::function<void()> k,
                        const std::vector<unsigned> &order = {}) {
    nthreads = (int)block, coop = true, kernel = k;
    grid_dim = {grid, 1, 1}, block_dim = {block, 1, 1};
    std::vector<unsigned> ids(grid);
    for (unsigned q = 0; q < grid; q++)
        ids[q] = order.empty() ? q : order[q];
    run_batch(ids.data(), grid, smem);
    coop = false;
}

/* A warp collective: leave v, wait for the warp, compute from all the lanes' values, wait again
 * (so that no lane leaves a new value before every lane has read). */
template <class T, class F> inline T collective(T v, F from_lanes) {
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    lane_value[cur] = bits;
    warp_barrier();
    int lane = (cur % nthreads) & 31;
    T r = from_lanes(cur - lane, lane);
    warp_barrier();
    return r;
}
template <class T> inline T lane_as(int t) {
    T v;
    memcpy(&v, &lane_value[t], sizeof v);
    return v;
}
} // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
inline void __threadfence() {} /* fibers never run at once: every write is visible at once */
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
    return emu::collective(v,
                           [&](int base, int lane) { return emu::lane_as<T>(base + (lane ^ o)); });
}
template <class T> T __shfl_down_sync(unsigned, T v, int o) {
    return emu::collective(
        v, [&](int base, int lane) { return lane + o < 32 ? emu::lane_as<T>(base + lane + o) : v; });
}
template <class T> T __shfl_sync(unsigned, T v, int src) {
    return emu::collective(v, [&](int base, int) { return emu::lane_as<T>(base + (src & 31)); });
}
template <class T> T __shfl_up_sync(unsigned, T v, int o) {
    return emu::collective(
        v, [&](int base, int lane) { return lane >= o ? emu::lane_as<T>(base + lane - o) : v; });
}
inline unsigned __ballot_sync(unsigned, bool p) {
    return emu::collective((unsigned)p, [](int base, int) {
        unsigned m = 0;
        for (int l = 0; l < 32; l++)
            m |= emu::lane_as<unsigned>(base + l) << l;
        return m;
    });
}
inline unsigned __match_any_sync(unsigned, int v) {
    return emu::collective(v, [&](int base, int) {
        unsigned m = 0;
        for (int l = 0; l < 32; l++)
            m |= (unsigned)(emu::lane_as<int>(base + l) == v) << l;
        return m;
    });
}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    unsigned o = *p;
    *p += v;
    return o;
}
inline float atomicAdd(float *p, float v) {
    float o = *p;
    *p += v;
    return o;
}
inline unsigned atomicExch(unsigned *p, unsigned v) {
    unsigned o = *p;
    *p = v;
    return o;
}
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long c,
                                    unsigned long long v) {
    unsigned long long o = *p;
    if (o == c) *p = v;
    return o;
}
template <class T> T __ldcg(const T *p) { return *p; }

/* Device math intrinsics, in host precision. */
inline void sincosf_emu(float a, float *s, float *c) { *s = sinf(a), *c = cosf(a); }
#define sincosf sincosf_emu
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int2float_rn(int i) { return (float)i; }
