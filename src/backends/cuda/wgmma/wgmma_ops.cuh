/* Hopper's warpgroup MMA (wgmma.mma_async) as the wgmma probe and the experimental wgmma flash
 * forward use it: 16-bit inputs (bf16 where BF, else f16), f32 accumulators, shared-memory
 * matrix descriptors, the fences and group operations around them, and cp.async. Compiled for
 * sm_90a by nvcc, or on the CPU against tests/cuda_emu/ (FE_CUDA_EMU) where each call goes to
 * the host stand-ins (wgmma_emu.h). Fragment layouts: see wgmma_emu.h. */
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#ifdef FE_CUDA_EMU
#include "wgmma_emu.h"
#endif

/* A shared-memory matrix descriptor: start address, leading- and stride-dimension byte offsets
 * (all in 16-byte units) and the swizzle mode (0 none, 1 128-byte). */
__device__ __forceinline__ uint64_t wg_desc(const void *smem, unsigned lbo, unsigned sbo,
                                            unsigned swizzle) {
#ifdef FE_CUDA_EMU
    uint64_t a = emu::shared_addr(smem);
#else
    uint64_t a = (uint64_t)__cvta_generic_to_shared(smem);
#endif
    return ((a >> 4) & 0x3fff) | (uint64_t)((lbo >> 4) & 0x3fff) << 16 |
           (uint64_t)((sbo >> 4) & 0x3fff) << 32 | (uint64_t)swizzle << 62;
}

/* the generic-proxy stores to shared memory before it (cp.async included, once landed), made
 * visible to the MMA's async proxy */
__device__ __forceinline__ void wg_fence_proxy() {
#ifndef FE_CUDA_EMU
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
/* before the first wgmma that reads registers written since the last one */
__device__ __forceinline__ void wg_fence() {
#ifndef FE_CUDA_EMU
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef FE_CUDA_EMU
    emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
/* wgmma.wait_group N: every group but the N newest complete */
template <int N> __device__ __forceinline__ void wg_wait() {
#ifdef FE_CUDA_EMU
    emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void wg_wait0() { wg_wait<0>(); }

#define WG_R8(i) "%" #i
#define WG_OUT8(d, i)                                                                              \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),   \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_OUT32(d) WG_OUT8(d, 0), WG_OUT8(d, 8), WG_OUT8(d, 16), WG_OUT8(d, 24)
#define WG_OUT64(d) WG_OUT32(d), WG_OUT8(d, 32), WG_OUT8(d, 40), WG_OUT8(d, 48), WG_OUT8(d, 56)
#define WG_REGS32                                                                                  \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "   \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_REGS64                                                                                  \
    WG_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
              "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

/* d (64 x 64, f32 fragments) = A B, or d += A B where acc, over one k16 step; A and B from
 * shared memory through their descriptors; TB: B is MN-major (the transpose flag) */
template <bool BF, int TB = 0>
__device__ __forceinline__ void wg_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int acc) {
#ifdef FE_CUDA_EMU
    emu::wgmma(d, 64, da, nullptr, db, TB, acc, BF);
#else
#define WG_SS64(T)                                                                                 \
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"                                    \
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32." T "." T " {" WG_REGS32 "},"        \
                 " %32, %33, p, 1, 1, 0, %35;\n}\n"                                                \
                 : WG_OUT32(d)                                                                     \
                 : "l"(da), "l"(db), "r"(acc), "n"(TB))
    if constexpr (BF) WG_SS64("bf16");
    else WG_SS64("f16");
#undef WG_SS64
#endif
}

/* the same with A (64 x 16) from registers: each warp's 16 rows as mma.sync A fragments */
template <bool BF, int TB = 0>
__device__ __forceinline__ void wg_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db,
                                          int acc) {
#ifdef FE_CUDA_EMU
    emu::wgmma(d, 64, 0, a, db, TB, acc, BF);
#else
#define WG_RS64(T)                                                                                 \
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"                                    \
                 " wgmma.mma_async.sync.aligned.m64n64k16.f32." T "." T " {" WG_REGS32 "},"        \
                 " {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                  \
                 : WG_OUT32(d)                                                                     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB))
    if constexpr (BF) WG_RS64("bf16");
    else WG_RS64("f16");
#undef WG_RS64
#endif
}

/* d (64 x 128, f32 fragments) = A B, or d += A B where acc, over one k16 step; A and B from
 * shared memory through their descriptors */
template <bool BF, int TB = 0>
__device__ __forceinline__ void wg_ss_n128(float (&d)[64], uint64_t da, uint64_t db, int acc) {
#ifdef FE_CUDA_EMU
    emu::wgmma(d, 128, da, nullptr, db, TB, acc, BF);
#else
#define WG_SS128(T)                                                                                \
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"                                    \
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32." T "." T " {" WG_REGS64 "},"       \
                 " %64, %65, p, 1, 1, 0, %67;\n}\n"                                                \
                 : WG_OUT64(d)                                                                     \
                 : "l"(da), "l"(db), "r"(acc), "n"(TB))
    if constexpr (BF) WG_SS128("bf16");
    else WG_SS128("f16");
#undef WG_SS128
#endif
}

/* cp.async of 16 bytes global -> shared, its group's commit, and the wait for all but the n
 * newest groups */
__device__ __forceinline__ void wg_cp16(void *dst, const void *src) {
#ifdef FE_CUDA_EMU
    emu::cp_async16(dst, src);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                     (unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src)
                 : "memory");
#endif
}
__device__ __forceinline__ void wg_cp_commit() {
#ifdef FE_CUDA_EMU
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wg_cp_wait() {
#ifdef FE_CUDA_EMU
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* 2^x on the special-function unit (about 2 ulp; results below 2^-126 flush to 0; -inf gives 0) */
__device__ __forceinline__ float wg_ex2(float x) {
#ifdef FE_CUDA_EMU
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* two floats as a pair of 16-bit values, lo in the low half */
template <bool BF> __device__ __forceinline__ uint32_t wg_pack(float lo, float hi) {
    uint32_t l, h;
    if constexpr (BF)
        l = __bfloat16_as_ushort(__float2bfloat16_rn(lo)), h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    else
        l = __half_as_ushort(__float2half_rn(lo)), h = __half_as_ushort(__float2half_rn(hi));
    return l | h << 16;
}
