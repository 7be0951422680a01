/* Host stand-ins for the CUDA runtime as the row kernels of cuda_nn.cu use it, so that their
 * text compiles with g++ and runs on the CPU (scripts/row_grads_emu.sh). Not a CUDA emulator in
 * general: just what those kernels touch.
 *
 * A block runs as one fiber per thread (ucontext), switched only at barriers, so a thread runs
 * alone from one barrier to the next. __syncthreads and __syncwarp are barriers over the block's
 * or the warp's fibers; a warp collective (shuffle, ballot, match) is a warp barrier at which the
 * lanes leave their values and another after they have read them, as the hardware exchanges
 * them. The blocks of a grid run one after another, in an order the caller may choose (a kernel
 * must not depend on it). Dynamic shared memory starts as 0xff bytes (ints -1, floats NaN), so a
 * read before a write shows. Races between threads cannot show here: a thread is never
 * interrupted between barriers. */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static /* one copy for all the fibers of the block */

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
struct fiber {
    ucontext_t ctx;
    bool done;
    int wait; /* 0: runnable, 1: at the block barrier, 2: at its warp's barrier */
    long gen; /* the barrier's generation it waits to see pass */
};
inline std::vector<fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline ucontext_t scheduler;
inline int cur, nthreads;
inline emu_dim3 block_idx, block_dim, grid_dim;
inline std::vector<unsigned char> dyn_smem;
inline long block_gen, warp_gen[32];
inline int block_count, warp_count[32];
inline uint64_t lane_value[1024]; /* what each thread leaves at a warp collective */
inline std::function<void()> kernel;

inline void start_fiber() {
    kernel();
    fibers[cur].done = true;
    swapcontext(&fibers[cur].ctx, &scheduler);
}
inline void block_barrier() {
    long g = block_gen;
    if (++block_count == nthreads) {
        block_count = 0, block_gen++;
        return;
    }
    fibers[cur].wait = 1, fibers[cur].gen = g;
    swapcontext(&fibers[cur].ctx, &scheduler);
}
inline void warp_barrier() {
    int w = cur >> 5;
    long g = warp_gen[w];
    if (++warp_count[w] == 32) {
        warp_count[w] = 0, warp_gen[w]++;
        return;
    }
    fibers[cur].wait = 2, fibers[cur].gen = g;
    swapcontext(&fibers[cur].ctx, &scheduler);
}
inline emu_dim3 thread_idx() { return {(unsigned)cur, 0, 0}; }
inline void *dsmem() { return dyn_smem.data(); }

/* Run kernel k (a call with its arguments bound) over `grid` blocks of `block` threads with
 * `smem` bytes of dynamic shared memory, the blocks in `order` (default 0, 1, ...). */
inline void launch(unsigned grid, unsigned block, size_t smem, std::function<void()> k,
                   const std::vector<unsigned> &order = {}) {
    nthreads = (int)block;
    grid_dim = {grid, 1, 1}, block_dim = {block, 1, 1};
    if (stacks.size() < block) stacks.resize(block, std::vector<char>(64 * 1024));
    fibers.assign(block, fiber{});
    kernel = k;
    for (unsigned q = 0; q < grid; q++) {
        unsigned b = order.empty() ? q : order[q];
        block_idx = {b, 0, 0};
        dyn_smem.assign(smem + 16, 0xff);
        block_gen = 0, block_count = 0;
        for (int w = 0; w < 32; w++)
            warp_gen[w] = 0, warp_count[w] = 0;
        for (unsigned t = 0; t < block; t++) {
            fiber &f = fibers[t];
            f.done = false, f.wait = 0, f.gen = 0;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks[t].data();
            f.ctx.uc_stack.ss_size = stacks[t].size();
            f.ctx.uc_link = NULL;
            makecontext(&f.ctx, start_fiber, 0);
        }
        for (;;) { /* run every fiber that can run until all are done */
            bool ran = false, alive = false;
            for (unsigned t = 0; t < block; t++) {
                fiber &f = fibers[t];
                if (f.done) continue;
                alive = true;
                if ((f.wait == 1 && block_gen == f.gen) || (f.wait == 2 && warp_gen[t >> 5] == f.gen))
                    continue;
                f.wait = 0, cur = (int)t, ran = true;
                swapcontext(&scheduler, &f.ctx);
            }
            if (!alive) break;
            if (!ran) {
                fprintf(stderr, "emu: block %u: threads wait at a barrier that others never reach\n",
                        b);
                exit(2);
            }
        }
    }
}

/* A warp collective: leave v, wait for the warp, compute from all the lanes' values, wait again
 * (so that no lane leaves a new value before every lane has read). */
template <class T, class F> inline T collective(T v, F from_lanes) {
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    lane_value[cur] = bits;
    warp_barrier();
    T r = from_lanes(cur & ~31, cur & 31);
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
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
inline void __threadfence() {} /* blocks run one after another: all writes are visible */
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
    return emu::collective(v, [&](int base, int lane) { return emu::lane_as<T>(base + (lane ^ o)); });
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
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long c,
                                    unsigned long long v) {
    unsigned long long o = *p;
    if (o == c) *p = v;
    return o;
}
template <class T> T __ldcg(const T *p) { return *p; }
