/* The decoder's matrix-vector and attention kernels (k_dec_gemv, k_dec_attn of
 * src/backends/cuda/cuda_decode.cu) run on the
 * CPU (cuda_runtime.h here: a fiber per thread) against float64 references, for machines without
 * a GPU. scripts/decode_emu.sh cuts the kernel's text out of cuda_decode.cu unchanged into
 * decode_kernels.inc, builds this file and runs it.
 *
 * Attention: f32 and bf16 caches, head dims 64 and 128, one to eight query heads per KV head,
 * 1 to 601 cached positions (past the value rows requested early, and past one chunk); cache
 * rows past the position hold huge values that must not be read.
 *
 * Every mode: QKV (RMSNorm folded in, rotate-half RoPE on q and k, k and v written to the caches
 * at the step's position), SiLU gate (norm folded in), residual add and plain rows (with and
 * without a norm, odd row counts). f32 and bf16 weights; one, two and four warps per row pair;
 * K from a part of one 32-lane step to several steps a warp; grids from one block (every warp
 * takes many pairs) to one pair a warp; blocks run in a random order. Outputs past the rows are
 * sentinels that must survive. Exit status 1 on a failure. */
#include "backends/cuda/cuda_decode.h" /* the persistent kernel's tables (compiled, not run here) */
#include "backends/cuda/cuda_internal.cuh"

#include "emu_check.h"

#include <algorithm>

#include "decode_kernels.inc"

/* The grid dec_grid gives for `tasks` warp tasks under a cap of `cap` blocks. */
static unsigned grid_for(int tasks, int cap) {
    int per = (tasks + DEC_WARPS * cap - 1) / (DEC_WARPS * cap);
    if (per < 1) per = 1;
    int g = (tasks + DEC_WARPS * per - 1) / (DEC_WARPS * per);
    return (unsigned)(g > 0 ? g : 1);
}

template <class T, int MODE> static void run(dec_gemv_args a, int cap) {
    unsigned g = grid_for(a.npairs * a.ks, cap);
    std::vector<unsigned> order(g);
    for (unsigned i = 0; i < g; i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), emu_rng());
    emu::launch(g, DEC_THREADS, 0, [&] { k_dec_gemv<T, MODE>(a); }, order);
}

/* x normalised as the kernel folds it in (g: RMSNorm weight, or none) */
template <class T> static std::vector<double> norm_in(const std::vector<float> &x, const T *g) {
    size_t K = x.size();
    double ss = 0;
    for (float v : x) ss += (double)v * v;
    double rs = g ? 1.0 / sqrt(ss / (double)K + 1e-5) : 1.0;
    std::vector<double> xn(K);
    for (size_t k = 0; k < K; k++) xn[k] = x[k] * (g ? to_d(g[k]) * rs : 1.0);
    return xn;
}
template <class T> static double dot(const T *w, const std::vector<double> &xn) {
    double s = 0;
    for (size_t k = 0; k < xn.size(); k++) s += to_d(w[k]) * xn[k];
    return s;
}

static const float SENT = -12345.f;

/* PLAIN or RESID over n rows; with_norm only for PLAIN (the LM head) */
template <class T, int MODE> static void check_rows(int K, int n, bool with_norm, int ks, int cap) {
    auto w = rand_t<T>((size_t)n * K, 1.0), gw = rand_t<T>(K, 1.0);
    std::vector<float> x(K), out(n + 8, SENT), start(n);
    for (auto &v : x) v = (float)uni();
    for (int r = 0; r < n; r++) out[r] = start[r] = MODE == DEC_RESID ? (float)uni() : SENT;
    dec_gemv_args a = {};
    a.w[0] = w.data(), a.K = K, a.n = n, a.npairs = (n + 1) / 2, a.ks = ks, a.x = x.data();
    a.g = with_norm ? gw.data() : nullptr, a.eps = 1e-5f, a.out = out.data();
    run<T, MODE>(a, cap);
    auto xn = norm_in<T>(x, with_norm ? gw.data() : nullptr);
    std::vector<double> got(out.begin(), out.begin() + n), ref(n);
    for (int r = 0; r < n; r++)
        ref[r] = dot(w.data() + (size_t)r * K, xn) + (MODE == DEC_RESID ? start[r] : 0.0);
    bool ok = relerr(got, ref) <= 1e-5;
    for (int r = n; r < n + 8; r++) ok &= out[r] == SENT;
    expect(ok, "%s %s: K %d, %d rows, norm %d, %d warps a pair, cap %d blocks",
           sizeof(T) == 4 ? "f32" : "bf16", MODE == DEC_RESID ? "residual" : "plain", K, n,
           (int)with_norm, ks, cap);
}

template <class T> static void check_silu(int K, int F, int ks, int cap) {
    auto wg = rand_t<T>((size_t)F * K, 1.0), wu = rand_t<T>((size_t)F * K, 1.0);
    auto gw = rand_t<T>(K, 1.0);
    std::vector<float> x(K), out(F + 8, SENT);
    for (auto &v : x) v = (float)uni();
    dec_gemv_args a = {};
    a.w[0] = wg.data(), a.w[1] = wu.data(), a.K = K, a.npairs = F, a.ks = ks, a.x = x.data();
    a.g = gw.data(), a.eps = 1e-5f, a.out = out.data();
    run<T, DEC_SILU>(a, cap);
    auto xn = norm_in<T>(x, gw.data());
    std::vector<double> got(out.begin(), out.begin() + F), ref(F);
    for (int p = 0; p < F; p++) {
        double s0 = dot(wg.data() + (size_t)p * K, xn), s1 = dot(wu.data() + (size_t)p * K, xn);
        ref[p] = s0 / (1 + exp(-s0)) * s1;
    }
    bool ok = relerr(got, ref) <= 1e-5;
    for (int p = F; p < F + 8; p++) ok &= out[p] == SENT;
    expect(ok, "%s silu: K %d, F %d, %d warps a pair, cap %d blocks",
           sizeof(T) == 4 ? "f32" : "bf16", K, F, ks, cap);
}

template <class T> static void check_qkv(int K, int Hq, int Hkv, int D, int ks, int cap) {
    const int cap_pos = 5, pos = 3;
    auto wq = rand_t<T>((size_t)Hq * D * K, 1.0), wk = rand_t<T>((size_t)Hkv * D * K, 1.0);
    auto wv = rand_t<T>((size_t)Hkv * D * K, 1.0), gw = rand_t<T>(K, 1.0);
    std::vector<float> x(K), q(Hq * D + 8, SENT), inv(D / 2);
    for (auto &v : x) v = (float)uni();
    for (int j = 0; j < D / 2; j++) inv[j] = (float)pow(10000.0, -2.0 * j / D);
    T sent = cu_cast<T>(SENT);
    std::vector<T> kc((size_t)Hkv * cap_pos * D, sent), vc((size_t)Hkv * cap_pos * D, sent);
    int params[2] = {0, pos};
    dec_gemv_args a = {};
    a.w[0] = wq.data(), a.w[1] = wk.data(), a.w[2] = wv.data(), a.K = K, a.ks = ks;
    a.npairs = (Hq + 2 * Hkv) * (D / 2), a.x = x.data(), a.g = gw.data(), a.eps = 1e-5f;
    a.out = q.data(), a.kc = kc.data(), a.vc = vc.data(), a.inv_freq = inv.data();
    a.D = D, a.Hq = Hq, a.Hkv = Hkv, a.cap = cap_pos, a.params = params;
    run<T, DEC_QKV>(a, cap);
    auto xn = norm_in<T>(x, gw.data());
    const double tc = sizeof(T) == 4 ? 1e-5 : 4e-3; /* the caches hold T */
    auto rope = [&](const T *w, int h, int j, double &y0, double &y1) {
        double s0 = dot(w + ((size_t)h * D + j) * K, xn), s1 = dot(w + ((size_t)h * D + j + D / 2) * K, xn);
        double ang = (double)((float)pos * inv[j]);
        y0 = s0 * cos(ang) - s1 * sin(ang), y1 = s1 * cos(ang) + s0 * sin(ang);
    };
    std::vector<double> gq, rq, gkv, rkv;
    for (int h = 0; h < Hq; h++)
        for (int j = 0; j < D / 2; j++) {
            double y0, y1;
            rope(wq.data(), h, j, y0, y1);
            gq.push_back(q[h * D + j]), gq.push_back(q[h * D + j + D / 2]);
            rq.push_back(y0), rq.push_back(y1);
        }
    for (int h = 0; h < Hkv; h++)
        for (int j = 0; j < D / 2; j++) {
            double y0, y1;
            rope(wk.data(), h, j, y0, y1);
            const T *kr = kc.data() + ((size_t)h * cap_pos + pos) * D;
            const T *vr = vc.data() + ((size_t)h * cap_pos + pos) * D;
            gkv.push_back(to_d(kr[j])), gkv.push_back(to_d(kr[j + D / 2]));
            rkv.push_back(y0), rkv.push_back(y1);
            gkv.push_back(to_d(vr[j])), gkv.push_back(to_d(vr[j + D / 2]));
            rkv.push_back(dot(wv.data() + ((size_t)h * D + j) * K, xn));
            rkv.push_back(dot(wv.data() + ((size_t)h * D + j + D / 2) * K, xn));
        }
    bool ok = relerr(gq, rq) <= 1e-5 && relerr(gkv, rkv) <= tc;
    for (size_t i = 0; i < kc.size(); i++) /* other positions untouched */
        if ((i / D) % cap_pos != (size_t)pos) ok &= to_d(kc[i]) == to_d(sent) && to_d(vc[i]) == to_d(sent);
    for (int i = Hq * D; i < Hq * D + 8; i++) ok &= q[i] == SENT;
    expect(ok, "%s qkv: K %d, Hq %d, Hkv %d, D %d, %d warps a pair, cap %d blocks",
           sizeof(T) == 4 ? "f32" : "bf16", K, Hq, Hkv, D, ks, cap);
}

template <class T> static void all_modes() {
    const int V = cu_vn<T>::n;
    /* K: under one 32-lane step; two steps; 256 vectors (TinyLlama: four steps a half); more */
    const int Ks[] = {8 * V, 64 * V, 256 * V, 256 * V + 3 * V, 520 * V};
    for (int K : Ks)
        for (int ks : {1, 2, 4})
            for (int cap : {1, 3, 1000}) {
                check_rows<T, DEC_PLAIN>(K, 37, true, ks, cap);
                check_rows<T, DEC_RESID>(K, 40, false, ks, cap);
                check_silu<T>(K, 29, ks, cap);
            }
    for (int ks : {1, 2, 4})
        for (int cap : {1, 2, 1000}) {
            check_qkv<T>(64 * V, 4, 2, 64, ks, cap);
            check_qkv<T>(256 * V, 2, 1, 128, ks, cap);
        }
}

/* k_dec_attn<T, D> over cached positions 0..pos of Hkv KV heads (Hq / Hkv query heads
 * each) against float64 attention. Cache rows past pos hold huge values that must not be read. */
template <class T, int D> static void check_attn(int Hq, int Hkv, int pos) {
    const int cap = pos + 3;
    auto kc = rand_t<T>((size_t)Hkv * cap * D, 1.0), vc = rand_t<T>((size_t)Hkv * cap * D, 1.0);
    for (int h = 0; h < Hkv; h++)
        for (int t = pos + 1; t < cap; t++)
            for (int i = 0; i < D; i++)
                kc[((size_t)h * cap + t) * D + i] = vc[((size_t)h * cap + t) * D + i] =
                    cu_cast<T>(1e30f);
    std::vector<float> q((size_t)Hq * D), out((size_t)Hq * D + 8, SENT);
    for (auto &v : q) v = (float)(2 * uni());
    int params[2] = {0, pos};
    const double scale = 1.0 / sqrt((double)D);
    emu::launch(Hq, ATT_THREADS, 0, [&] {
        k_dec_attn<T, D>(q.data(), kc.data(), vc.data(), out.data(), params, Hq / Hkv, cap,
                         (float)(1.4426950408889634 * scale));
    });
    std::vector<double> got(out.begin(), out.begin() + (size_t)Hq * D), ref((size_t)Hq * D);
    std::vector<double> qd(q.begin(), q.end());
    for (int h = 0; h < Hq; h++)
        ref_attention(qd.data() + (size_t)h * D, kc.data() + (size_t)(h / (Hq / Hkv)) * cap * D,
                      vc.data() + (size_t)(h / (Hq / Hkv)) * cap * D, pos + 1, D,
                      ref.data() + (size_t)h * D);
    bool ok = relerr(got, ref) <= 1e-5;
    for (int i = Hq * D; i < Hq * D + 8; i++) ok &= out[i] == SENT;
    expect(ok, "%s attention: D %d, Hq %d, Hkv %d, pos %d", sizeof(T) == 4 ? "f32" : "bf16", D,
           Hq, Hkv, pos);
}

template <class T, int D> static void all_attn() {
    for (int pos : {0, 1, 17, 300, 600}) {
        check_attn<T, D>(4, 2, pos);
        check_attn<T, D>(pos % 2 ? 8 : 2, pos % 2 ? 1 : 2, pos);
    }
}

int main() {
    emu_seed(11);
    all_modes<float>();
    all_modes<__nv_bfloat16>();
    all_attn<float, 64>();
    all_attn<float, 128>();
    all_attn<__nv_bfloat16, 64>();
    all_attn<__nv_bfloat16, 128>();
    printf("decoder matrix-vector and attention kernels, %d checks: %s (%d failed)\n", checks,
           fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}
