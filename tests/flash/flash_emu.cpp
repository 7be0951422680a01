/* CPU emulation of the flash-attention kernels, for machines without a GPU.
 *
 * Compiles the kernels of src/backends/cuda/flash_attention.cu unchanged (with
 * FE_FLASH_EMU defined) against host versions of their primitives, and runs each
 * CTA with one fiber per CUDA thread: __syncthreads and the warp-collective
 * instructions (ldmatrix, mma.sync, shuffles) are barriers over the fibers that
 * exchange operands as the PTX ISA defines them. cp.async poisons its destination
 * (NaN) when issued and delivers the data at the wait, so a read of a tile before
 * its wait, or a load into a tile another warp still reads, shows up as NaN.
 * Results are compared with a float64 CPU reference.
 *
 * Each case runs its operands in one of three memory layouts: contiguous (B, H, N, D);
 * (B, N, H, D) viewed as (B, H, N, D), as the attention module's projections are; and
 * the same with rows padded and the data offset, as slices of a fused QKV projection
 * would be. Gaps of the written operands must keep their sentinel.
 *
 *   scripts/flash_emu.sh
 */
#define FE_FLASH_EMU 1

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#include "ferric/core.h"

/* the library's error setter, for the header's declarations */
extern "C" fe_status fe_set_error(fe_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return st;
}

/* ---- fibers -------------------------------------------------------------------------- */

namespace emu {
struct Bar {
    int count = 0;
    long gen = 0;
};
struct Fiber {
    ucontext_t ctx;
    bool done;
    const Bar *wait; /* the barrier this fiber waits at, and its generation then */
    long wait_gen;
    std::vector<char> stack;
};
struct Lane {
    uint32_t a[4], b[2];
    const uint16_t *addr;
    float f;
};
struct Pending {
    uint16_t *dst;
    const uint16_t *src;
    bool valid;
};
static int ntid, cur, bx, by, bz, gx;
static std::vector<Fiber> fib;
static ucontext_t sched;
static std::vector<unsigned char> smem;
static std::function<void()> body;
static Bar block_bar, warp_bar[32];
static Lane stage[32][32];
static std::vector<Pending> pending[1024];
static std::vector<size_t> groups[1024]; /* per thread: where each committed group ends in pending */

static void barrier(Bar &b, int n) {
    long gen = b.gen;
    if (++b.count == n) {
        b.count = 0, b.gen++;
        return;
    }
    fib[cur].wait = &b, fib[cur].wait_gen = gen;
    swapcontext(&fib[cur].ctx, &sched);
    fib[cur].wait = NULL;
}
static void warp_bar_() { barrier(warp_bar[cur / 32], 32); }
static void fiber_main() {
    body();
    fib[cur].done = true;
}
static void fail(const char *msg) {
    fprintf(stderr, "emulator: %s (block %d,%d,%d thread %d)\n", msg, bx, by, bz, cur);
    exit(2);
}
static void check_smem(const void *p, size_t n, size_t align) {
    const unsigned char *c = (const unsigned char *)p;
    if (c < smem.data() || c + n > smem.data() + smem.size()) fail("shared access out of range");
    if ((size_t)(c - smem.data()) % align) fail("misaligned shared access");
}
/* Run fn once per CTA of grid (x, y, z) with `threads` fibers and `shmem` bytes.
 * Scheduling is greedy in a per-CTA random order of the warps: the first runnable
 * warp in that order runs until it blocks, so warps drift as far apart as the
 * barriers allow and a missing barrier shows up as reads of unwritten data. */
static void launch(int x, int y, int z, int threads, size_t shmem, std::function<void()> fn) {
    ntid = threads, gx = x;
    fib.assign(threads, Fiber());
    for (auto &f : fib) f.stack.resize(256 * 1024);
    for (bz = 0; bz < z; bz++)
        for (by = 0; by < y; by++)
            for (bx = 0; bx < x; bx++) {
                smem.assign(shmem, 0xff); /* garbage: NaN in both 16-bit formats */
                block_bar = Bar();
                for (auto &w : warp_bar) w = Bar();
                body = fn;
                for (int i = 0; i < threads; i++) {
                    Fiber &f = fib[i];
                    f.done = false, f.wait = NULL;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &sched;
                    makecontext(&f.ctx, fiber_main, 0);
                    pending[i].clear();
                    groups[i].clear();
                }
                const int nw = (threads + 31) / 32;
                std::vector<int> order(nw);
                uint64_t h = 0x2545f4914f6cdd1dull * (uint64_t)(1 + bx + 977 * by + 7919 * bz);
                for (int w = 0; w < nw; w++) order[w] = w;
                for (int w = nw - 1; w > 0; w--) {
                    h ^= h >> 29, h *= 0xbf58476d1ce4e5b9ull;
                    int o = (int)(h % (uint64_t)(w + 1)), tmp = order[w];
                    order[w] = order[o], order[o] = tmp;
                }
                for (;;) {
                    int pick = -1, live = 0;
                    for (int wi = 0; wi < nw && pick < 0; wi++)
                        for (int i = order[wi] * 32; i < order[wi] * 32 + 32 && i < threads; i++) {
                            Fiber &f = fib[i];
                            if (f.done) continue;
                            live++;
                            if (!f.wait || f.wait->gen != f.wait_gen) {
                                pick = i;
                                break;
                            }
                        }
                    if (pick < 0) {
                        for (int i = 0; i < threads; i++) live += !fib[i].done;
                        if (live) fail("deadlock: threads wait at different barriers");
                        break;
                    }
                    cur = pick;
                    swapcontext(&sched, &fib[pick].ctx);
                }
                for (int i = 0; i < threads; i++)
                    if (!pending[i].empty()) fail("cp.async left pending at exit");
            }
}
} // namespace emu

/* ---- 16-bit floats ------------------------------------------------------------------- */

static float bf16_to_f(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
static float f16_to_f(uint16_t x) {
    _Float16 h;
    memcpy(&h, &x, 2);
    return (float)h;
}
static uint16_t f_to_f16(float f) {
    _Float16 h = (_Float16)f;
    uint16_t x;
    memcpy(&x, &h, 2);
    return x;
}

/* ---- the kernels' primitives --------------------------------------------------------- */

#define FA_DEV inline
#define FA_KERNEL(nt) void
#define FA_KERNEL_MIN(nt, mb) void

FA_DEV int fa_tid() { return emu::cur; }
FA_DEV int fa_ntid() { return emu::ntid; }
FA_DEV int fa_bx() { return emu::bx; }
FA_DEV int fa_by() { return emu::by; }
FA_DEV int fa_bz() { return emu::bz; }
FA_DEV int fa_gx() { return emu::gx; }
FA_DEV void fa_sync() { emu::barrier(emu::block_bar, emu::ntid); }
FA_DEV void fa_syncwarp() { emu::warp_bar_(); }
FA_DEV unsigned char *fa_smem() { return emu::smem.data(); }

template <bool BF> FA_DEV float fa_to_f(uint16_t x) { return BF ? bf16_to_f(x) : f16_to_f(x); }
template <bool BF> FA_DEV uint16_t fa_from_f(float f) { return BF ? f_to_bf16(f) : f_to_f16(f); }
template <bool BF> FA_DEV uint32_t fa_pack(float lo, float hi) {
    return (uint32_t)fa_from_f<BF>(lo) | (uint32_t)fa_from_f<BF>(hi) << 16;
}

static inline uint32_t pair(const uint16_t *a, const uint16_t *b) {
    return (uint32_t)*a | (uint32_t)*b << 16;
}
FA_DEV void fa_ldsm4(uint32_t (&r)[4], const uint16_t *p) {
    const int w = emu::cur / 32, l = emu::cur % 32;
    emu::check_smem(p, 16, 16);
    emu::stage[w][l].addr = p;
    emu::warp_bar_();
    for (int i = 0; i < 4; i++) {
        const uint16_t *row = emu::stage[w][8 * i + l / 4].addr;
        r[i] = pair(row + 2 * (l % 4), row + 2 * (l % 4) + 1);
    }
    emu::warp_bar_();
}
FA_DEV void fa_ldsm4t(uint32_t (&r)[4], const uint16_t *p) {
    const int w = emu::cur / 32, l = emu::cur % 32;
    emu::check_smem(p, 16, 16);
    emu::stage[w][l].addr = p;
    emu::warp_bar_();
    for (int i = 0; i < 4; i++) {
        const uint16_t *r0 = emu::stage[w][8 * i + 2 * (l % 4)].addr;
        const uint16_t *r1 = emu::stage[w][8 * i + 2 * (l % 4) + 1].addr;
        r[i] = pair(r0 + l / 4, r1 + l / 4);
    }
    emu::warp_bar_();
}
template <bool BF> static float frag_half(uint32_t reg, int half) {
    return fa_to_f<BF>((uint16_t)(reg >> (16 * half)));
}
template <bool BF>
FA_DEV void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const int w = emu::cur / 32, l = emu::cur % 32, g = l / 4, t = l % 4;
    emu::Lane &me = emu::stage[w][l];
    memcpy(me.a, a, sizeof me.a);
    me.b[0] = b0, me.b[1] = b1;
    emu::warp_bar_();
    float d[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < 16; k++) {
            /* A(row, k): reg (row >= 8) + 2 (k >= 8) of lane 4 (row % 8) + (k % 8) / 2 */
            const emu::Lane &la = emu::stage[w][4 * (row % 8) + (k % 8) / 2];
            const float av = frag_half<BF>(la.a[(row >= 8) + 2 * (k >= 8)], k % 2);
            /* B(k, col): reg (k >= 8) of lane 4 col + (k % 8) / 2 */
            const emu::Lane &lb = emu::stage[w][4 * col + (k % 8) / 2];
            const float bv = frag_half<BF>(lb.b[k >= 8], k % 2);
            acc += av * bv;
        }
        d[e] = acc;
    }
    emu::warp_bar_();
    memcpy(c, d, sizeof d);
}
FA_DEV void fa_cp16(uint16_t *dst, const uint16_t *src, bool valid) {
    emu::check_smem(dst, 16, 16);
    for (int i = 0; i < 8; i++) dst[i] = 0x7fff; /* NaN until the wait */
    emu::pending[emu::cur].push_back({dst, src, valid});
}
FA_DEV void fa_cp_commit() { emu::groups[emu::cur].push_back(emu::pending[emu::cur].size()); }
/* cp.async.wait_group n: every committed group but the newest n has landed (copies not yet
 * committed stay pending, as on the device) */
FA_DEV void fa_cp_wait_n(int n) {
    auto &pd = emu::pending[emu::cur];
    auto &gr = emu::groups[emu::cur];
    if ((int)gr.size() <= n) return;
    const size_t end = gr[gr.size() - n - 1];
    for (size_t i = 0; i < end; i++) {
        if (pd[i].valid) memcpy(pd[i].dst, pd[i].src, 16);
        else memset(pd[i].dst, 0, 16);
    }
    pd.erase(pd.begin(), pd.begin() + (long)end);
    gr.erase(gr.begin(), gr.end() - n);
    for (auto &g : gr) g -= end;
}
FA_DEV void fa_cp_wait() { fa_cp_wait_n(0); }
FA_DEV float fa_ex2(float x) { return exp2f(x); }
FA_DEV float fa_shfl_xor(float x, int m) {
    const int w = emu::cur / 32, l = emu::cur % 32;
    emu::stage[w][l].f = x;
    emu::warp_bar_();
    float y = emu::stage[w][l ^ m].f;
    emu::warp_bar_();
    return y;
}
FA_DEV bool fa_any(bool x) {
    const int w = emu::cur / 32;
    emu::stage[w][emu::cur % 32].f = x ? 1.f : 0.f;
    emu::warp_bar_();
    bool any = false;
    for (int l = 0; l < 32; l++) any |= emu::stage[w][l].f != 0.f;
    emu::warp_bar_();
    return any;
}
FA_DEV void fa_red2(float *p, float a, float b) { p[0] += a, p[1] += b; }
FA_DEV void fa_copy16(void *dst, const void *src) {
    if ((uintptr_t)dst % 16 || (uintptr_t)src % 16) emu::fail("misaligned 16-byte copy");
    memcpy(dst, src, 16);
}
FA_DEV void fa_ldf8(float (&f)[8], const float *p) {
    if ((uintptr_t)p % 16) emu::fail("misaligned 16-byte load");
    memcpy(f, p, sizeof f);
}
FA_DEV void fa_st32(uint16_t *p, uint32_t v) {
    emu::check_smem(p, 4, 4);
    memcpy(p, &v, 4);
}

#include "../../src/backends/cuda/flash_attention.cu"

/* ---- reference and driver ------------------------------------------------------------ */

struct Case {
    bool bf;
    int D, B, Hq, Hkv, T, S;
    bool causal;
    int layout; /* 0 contiguous, 1 (B, N, H, D) memory, 2 the same padded and offset */
    bool ramp = false; /* keys scaled by 1 + 4 n / S: row maxima keep growing over the key tiles */
};

/* A (B, H, N, D) operand in a strided buffer: element (b, h, n, d) at
 * off + b sb + h sh + n sr + d. Gaps hold the sentinel 0x7bfe. */
struct Strided {
    int B, H, N, D;
    long long off, sb, sh, sr;
    std::vector<uint16_t> buf; /* sized with 8 elements of slack for 16-byte alignment */
    uint16_t *base;            /* 16-byte aligned start of the buffer */
    Strided(int B_, int H_, int N_, int D_, int layout) : B(B_), H(H_), N(N_), D(D_) {
        long long rs = layout == 0 ? D : (long long)H * D + (layout == 2 ? 24 : 0);
        off = layout == 2 ? 8 : 0;
        if (layout == 0) sb = (long long)H * N * D, sh = (long long)N * D, sr = D;
        else sb = (long long)N * rs, sh = D, sr = rs;
        buf.assign((size_t)(off + B * sb + 8 + 8), 0x7bfe);
        base = buf.data();
        while ((uintptr_t)base % 16) base++;
    }
    uint16_t *at(int b, int h, int n) { return base + off + b * sb + h * sh + n * sr; }
    uint16_t *data() { return base + off; }
    void put(const std::vector<uint16_t> &x) { /* from contiguous (B, H, N, D) */
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int n = 0; n < N; n++)
                    memcpy(at(b, h, n), &x[(((size_t)b * H + h) * N + n) * D], (size_t)D * 2);
    }
    std::vector<uint16_t> get() {
        std::vector<uint16_t> x((size_t)B * H * N * D);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int n = 0; n < N; n++)
                    memcpy(&x[(((size_t)b * H + h) * N + n) * D], at(b, h, n), (size_t)D * 2);
        return x;
    }
    /* elements outside the view that lost the sentinel */
    long long clobbered() {
        std::vector<char> in(buf.size(), 0);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int n = 0; n < N; n++)
                    memset(&in[(size_t)(at(b, h, n) - buf.data())], 1, (size_t)D);
        long long bad = 0;
        for (size_t i = 0; i < buf.size(); i++) bad += !in[i] && buf[i] != 0x7bfe;
        return bad;
    }
};

static double rnd(uint64_t *s) { /* uniform in [-1, 1) */
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return (double)(*s >> 11) / (double)(1ull << 52) - 1.0;
}

static double rel_err(const std::vector<double> &x, const std::vector<double> &ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); i++) {
        if (isinf(ref[i]) && x[i] == ref[i]) continue;
        double d = x[i] - ref[i];
        num += d * d, den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static bool run_case(const Case &c) {
    const int D = c.D, B = c.B, Hq = c.Hq, Hkv = c.Hkv, T = c.T, S = c.S, G = Hq / Hkv;
    const double scale = 1.0 / sqrt((double)D);
    const size_t nq = (size_t)B * Hq * T * D, nk = (size_t)B * Hkv * S * D;
    std::vector<uint16_t> q(nq), k(nk), v(nk), go(nq), o(nq), gq(nq), gk(nk), gv(nk);
    std::vector<float> lse((size_t)B * Hq * T), dq(nq);
    std::vector<float> stat((size_t)B * Hq * 2 * FA_TPAD(T));
    std::vector<float> dk(G > 1 ? nk : 0), dv(G > 1 ? nk : 0); /* zeroed, as the launcher does */
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)(D * 131 + T * 7 + S);
    auto cv = [&](double x) { return c.bf ? f_to_bf16((float)x) : f_to_f16((float)x); };
    auto fv = [&](uint16_t x) { return (double)(c.bf ? bf16_to_f(x) : f16_to_f(x)); };
    for (auto &x : q) x = cv(2.0 * rnd(&seed));
    for (size_t i = 0; i < nk; i++) /* key row n = (i / D) % S */
        k[i] = cv(2.0 * rnd(&seed) * (c.ramp ? 1.0 + 4.0 * (double)((i / D) % S) / S : 1.0));
    for (auto &x : v) x = cv(rnd(&seed));
    for (auto &x : go) x = cv(rnd(&seed));

    /* the kernels' operands in the case's layout */
    Strided sq(B, Hq, T, D, c.layout), sk(B, Hkv, S, D, c.layout), sv(B, Hkv, S, D, c.layout);
    Strided so(B, Hq, T, D, c.layout), sgo(B, Hq, T, D, c.layout), sgq(B, Hq, T, D, c.layout);
    Strided sgk(B, Hkv, S, D, c.layout), sgv(B, Hkv, S, D, c.layout);
    sq.put(q), sk.put(k), sv.put(v), sgo.put(go);
    auto str = [](const Strided &x) { return fa_strides{x.sb, x.sh, x.sr}; };
    fa_params p;
    memset(&p, 0, sizeof p);
    p.q = sq.data(), p.k = sk.data(), p.v = sv.data(), p.o = so.data(), p.go = sgo.data();
    p.out = so.data(), p.gq = sgq.data(), p.gk = sgk.data(), p.gv = sgv.data();
    p.sq = str(sq), p.sk = str(sk), p.sv = str(sv), p.so = str(so), p.sgo = str(sgo);
    p.sgq = str(sgq), p.sgk = str(sgk), p.sgv = str(sgv);
    p.lse = lse.data(), p.dq = dq.data(), p.stat = stat.data();
    p.dk = G > 1 ? dk.data() : NULL, p.dv = G > 1 ? dv.data() : NULL;
    p.Hq = Hq, p.Hkv = Hkv, p.G = G, p.T = T, p.S = S, p.causal = c.causal;
    p.scale = (float)scale, p.sl2 = (float)(scale * 1.4426950408889634);

    /* the launch geometry of the host launchers (the conversions with few blocks, so
     * that their grid-stride loops turn) */
    const int conv_blocks = (T * (D / 8) + 255) / 256 > 1 ? 2 : 1;
    const int conv_kv_blocks = (S * (D / 8) + 255) / 256 > 1 ? 2 : 1;
    const int pre_rows = D == 64 ? fa_pre<64>::rows : fa_pre<128>::rows;
    auto run = [&](auto fwd, auto pre, auto bwd, auto conv) {
        emu::launch(Hq, B, (T + fa_fwd_br(D) - 1) / fa_fwd_br(D), FA_NT, fa_fwd_smem(D), [&] { fwd(p); });
        emu::launch((FA_TPAD(T) + pre_rows - 1) / pre_rows, Hq, B, 256, 0, [&] { pre(p); });
        emu::launch(Hq, B, (S + fa_bwd_bc(D) - 1) / fa_bwd_bc(D), fa_bwd_nt(D), fa_bwd_smem(D), [&] { bwd(p); });
        emu::launch(conv_blocks, Hq, B, 256, 0, [&] { conv(p, 0); });
        if (G > 1) emu::launch(conv_kv_blocks, 2 * Hkv, B, 256, 0, [&] { conv(p, 1); });
    };
    if (c.bf) {
        if (D == 64)
            run(fa_fwd_kernel<true, 64>, fa_bwd_pre_kernel<true, 64>, fa_bwd_kernel<true, 64>,
                fa_convert_kernel<true, 64>);
        else
            run(fa_fwd_kernel<true, 128>, fa_bwd_pre_kernel<true, 128>, fa_bwd8_kernel<true>,
                fa_convert_kernel<true, 128>);
    } else {
        if (D == 64)
            run(fa_fwd_kernel<false, 64>, fa_bwd_pre_kernel<false, 64>, fa_bwd_kernel<false, 64>,
                fa_convert_kernel<false, 64>);
        else
            run(fa_fwd_kernel<false, 128>, fa_bwd_pre_kernel<false, 128>,
                fa_bwd8_kernel<false>, fa_convert_kernel<false, 128>);
    }
    o = so.get(), gq = sgq.get(), gk = sgk.get(), gv = sgv.get();
    const long long clobbered = so.clobbered() + sgq.clobbered() + sgk.clobbered() +
                                sgv.clobbered() + sq.clobbered() + sk.clobbered() +
                                sv.clobbered() + sgo.clobbered();

    /* float64 reference from the same rounded inputs */
    std::vector<double> ro(nq, 0), rl((size_t)B * Hq * T), rgq(nq, 0), rgk(nk, 0), rgv(nk, 0);
    std::vector<double> sc(S), pr(S), dp(S);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int i = 0; i < T; i++) {
                const size_t qr = ((size_t)(b * Hq + h) * T + i) * D;
                const size_t kr = (size_t)(b * Hkv + h / G) * S * D;
                double mx = -INFINITY;
                for (int j = 0; j < S; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++) s += fv(q[qr + d]) * fv(k[kr + (size_t)j * D + d]);
                    sc[j] = c.causal && j > i + S - T ? -INFINITY : s * scale;
                    mx = fmax(mx, sc[j]);
                }
                const size_t li = (size_t)(b * Hq + h) * T + i;
                if (mx == -INFINITY) {
                    rl[li] = -INFINITY;
                    continue;
                }
                double l = 0;
                for (int j = 0; j < S; j++) l += (pr[j] = exp(sc[j] - mx));
                rl[li] = mx + log(l);
                for (int j = 0; j < S; j++) pr[j] /= l;
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j < S; j++) acc += pr[j] * fv(v[kr + (size_t)j * D + d]);
                    ro[qr + d] = acc;
                }
                double Di = 0;
                for (int j = 0; j < S; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++) s += fv(go[qr + d]) * fv(v[kr + (size_t)j * D + d]);
                    dp[j] = s;
                    Di += pr[j] * s;
                }
                for (int j = 0; j < S; j++) {
                    const double ds = pr[j] * (dp[j] - Di);
                    for (int d = 0; d < D; d++) {
                        rgq[qr + d] += scale * ds * fv(k[kr + (size_t)j * D + d]);
                        rgk[kr + (size_t)j * D + d] += scale * ds * fv(q[qr + d]);
                        rgv[kr + (size_t)j * D + d] += pr[j] * fv(go[qr + d]);
                    }
                }
            }
    auto conv = [&](const std::vector<uint16_t> &x) {
        std::vector<double> r(x.size());
        for (size_t i = 0; i < x.size(); i++) r[i] = fv(x[i]);
        return r;
    };
    std::vector<double> lsed(lse.begin(), lse.end());
    const double e[5] = {rel_err(conv(o), ro), rel_err(lsed, rl), rel_err(conv(gq), rgq),
                         rel_err(conv(gk), rgk), rel_err(conv(gv), rgv)};
    bool ok = clobbered == 0;
    for (double x : e) ok = ok && x < 1e-2; /* NaN fails too */
    static const char *lay[3] = {"BHND", "BNHD", "BNHD+pad"};
    printf("%-4s D=%-3d B=%d Hq=%d Hkv=%d T=%-4d S=%-4d %-10s %-8s%s out %.2e lse %.2e gq %.2e "
           "gk %.2e gv %.2e gaps clobbered %lld  %s\n",
           c.bf ? "bf16" : "f16", D, B, Hq, Hkv, T, S, c.causal ? "causal" : "non-causal",
           lay[c.layout], c.ramp ? " ramp" : "", e[0], e[1], e[2], e[3], e[4], clobbered,
           ok ? "PASS" : "FAIL");
    return ok;
}

int main(int argc, char **argv) {
    std::vector<Case> cases = {
        {true, 64, 1, 4, 2, 77, 77, true, 0},     {true, 128, 1, 2, 1, 77, 77, false, 0},
        {false, 64, 1, 2, 1, 64, 200, false, 0},  {true, 128, 1, 4, 2, 64, 200, true, 0},
        {true, 64, 1, 2, 2, 100, 40, true, 0},    {false, 128, 1, 2, 1, 130, 130, true, 0},
        {true, 64, 2, 2, 1, 129, 65, false, 0},   {false, 64, 1, 1, 1, 1, 1, true, 0},
        /* strided: the attention module's (B, T, H, D) projections, GQA */
        {true, 64, 2, 4, 2, 77, 77, true, 1},     {true, 128, 1, 4, 2, 77, 77, false, 1},
        {false, 64, 1, 4, 1, 33, 150, false, 1},  {false, 128, 2, 2, 1, 130, 130, true, 1},
        {true, 64, 1, 6, 2, 100, 40, true, 2},    {true, 128, 2, 4, 2, 65, 129, true, 2},
        {false, 64, 2, 2, 2, 129, 65, false, 2},  {true, 64, 1, 2, 1, 1, 1, true, 1},
        /* grouped heads over several key tiles: the dK, dV accumulators and their
         * conversion (G = 8 as TinyLlama; S > T; S < T with rows that see no key) */
        {true, 64, 1, 8, 1, 200, 200, true, 0},   {false, 64, 1, 8, 1, 130, 130, false, 1},
        {true, 128, 2, 4, 1, 150, 150, false, 2}, {false, 128, 1, 4, 2, 97, 161, true, 0},
        {false, 64, 1, 6, 3, 97, 161, true, 2},   {true, 128, 1, 6, 3, 161, 97, true, 1},
        {true, 64, 2, 4, 2, 131, 131, true, 1},   {false, 128, 1, 2, 1, 199, 199, true, 0},
        /* one head per kv head over several key tiles (direct dK, dV writes) */
        {false, 128, 1, 2, 2, 200, 200, true, 1}, {true, 64, 1, 1, 1, 161, 97, true, 0},
        /* scores growing along the keys: the forward's running maxima move on late tiles */
        {true, 128, 1, 2, 1, 70, 300, false, 0, true}, {false, 64, 1, 2, 2, 260, 260, true, 1, true},
        {false, 128, 1, 1, 1, 200, 200, true, 0, true},
    };
    if (argc > 1 && !strcmp(argv[1], "--ramp")) /* the growing-score cases alone */
        cases = {cases[cases.size() - 3], cases[cases.size() - 2], cases[cases.size() - 1]};
    else if (argc > 1) cases = {cases[0], cases[8], cases[16]}; /* quick */
    int fails = 0;
    for (const Case &c : cases) fails += !run_case(c);
    printf("%zu cases, %d failed\n", cases.size(), fails);
    return fails ? 1 : 0;
}
