/* The decoder's persistent kernel (k_dec_mega of src/backends/cuda/cuda_decode.cu) run on the
 * CPU as a cooperative grid (cuda_runtime.h here: a fiber per thread, every block at once, grid
 * barriers, cp.async copies that land only when waited for) against a float64 token step of
 * the same model. scripts/decode_emu.sh cuts the kernels' text out of cuda_decode.cu unchanged
 * into decode_kernels.inc, builds this file and runs it.
 *
 * Each case makes a small random Llama (f32 or bf16 weights, head dim 64 or 128, grouped KV
 * heads), fills the caches with random rows before the first position, then runs a few token
 * steps and checks each one: the logits, the argmax, the new cache rows (and that no other
 * cache row or anything past the logits changed). Row lengths are chosen so that rows take a
 * part of one slot and parts of several; grids of 1 to 5 blocks (warps with many rows, or
 * none) and rings of 2 to 5 slots make the stream cross phases in every way; one case starts at position 0
 * (no history), one passes 512 positions (two attention chunks). Exit status 1 on a failure. */
#include "backends/cuda/cuda_decode.h"
#include "backends/cuda/cuda_internal.cuh"

#include "emu_check.h"

#include <algorithm>
#include <random>

using std::max;
#include "decode_kernels.inc"


struct shape {
    int C, F, Hq, Hkv, D, vocab, L, cap;
};

template <class T> struct model {
    shape s;
    std::vector<T> emb, lm, gf;
    struct layer {
        std::vector<T> wq, wk, wv, wo, wg, wu, wd, ga, gm, kc, vc;
    };
    std::vector<layer> ly;
    std::vector<float> inv_freq;
};

template <class T> static model<T> make(shape s, int hist) {
    model<T> m;
    m.s = s;
    const int QD = s.Hq * s.D, KD = s.Hkv * s.D;
    const double wc = 1.0 / sqrt((double)s.C), wf = 1.0 / sqrt((double)s.F);
    m.emb = rand_t<T>((size_t)s.vocab * s.C, 1.0);
    m.lm = rand_t<T>((size_t)s.vocab * s.C, wc);
    m.gf = rand_t<T>(s.C, 1.0);
    for (int l = 0; l < s.L; l++) {
        typename model<T>::layer y;
        y.wq = rand_t<T>((size_t)QD * s.C, wc), y.wk = rand_t<T>((size_t)KD * s.C, wc);
        y.wv = rand_t<T>((size_t)KD * s.C, wc), y.wo = rand_t<T>((size_t)s.C * QD, wc);
        y.wg = rand_t<T>((size_t)s.F * s.C, wc), y.wu = rand_t<T>((size_t)s.F * s.C, wc);
        y.wd = rand_t<T>((size_t)s.C * s.F, wf);
        y.ga = rand_t<T>(s.C, 1.0), y.gm = rand_t<T>(s.C, 1.0);
        /* rows before hist random (earlier tokens), the rest a sentinel */
        y.kc.assign((size_t)KD * s.cap, cu_cast<T>(-7.f)), y.vc = y.kc;
        for (int h = 0; h < s.Hkv; h++)
            for (int p = 0; p < hist; p++)
                for (int i = 0; i < s.D; i++) {
                    size_t o = ((size_t)h * s.cap + p) * s.D + i;
                    y.kc[o] = cu_cast<T>((float)(2 * uni())), y.vc[o] = cu_cast<T>((float)uni());
                }
        m.ly.push_back(y);
    }
    for (int j = 0; j < s.D / 2; j++)
        m.inv_freq.push_back((float)pow(10000.0, -2.0 * j / s.D));
    return m;
}

template <class T> static double dotw(const T *w, const std::vector<double> &x) {
    double s = 0;
    for (size_t k = 0; k < x.size(); k++) s += to_d(w[k]) * x[k];
    return s;
}
template <class T> static std::vector<double> rmsn(const std::vector<double> &x, const std::vector<T> &g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    double r = 1.0 / sqrt(ss / (double)x.size() + 1e-5);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = x[i] * r * to_d(g[i]);
    return y;
}

/* The float64 token step: logits; the model's caches get the new rows (rounded to T). */
template <class T> static std::vector<double> reference(model<T> &m, int token, int pos) {
    const shape &s = m.s;
    const int D = s.D, H2 = D / 2, G = s.Hq / s.Hkv;
    std::vector<double> x(s.C);
    for (int i = 0; i < s.C; i++) x[i] = to_d(m.emb[(size_t)token * s.C + i]);
    for (auto &y : m.ly) {
        std::vector<double> xn = rmsn(x, y.ga), q(s.Hq * D), att(s.Hq * D);
        for (int r = 0; r < s.Hq * D; r++) q[r] = dotw(y.wq.data() + (size_t)r * s.C, xn);
        for (int h = 0; h < s.Hkv; h++) {
            std::vector<double> k(D), v(D);
            for (int i = 0; i < D; i++) {
                k[i] = dotw(y.wk.data() + (size_t)(h * D + i) * s.C, xn);
                v[i] = dotw(y.wv.data() + (size_t)(h * D + i) * s.C, xn);
            }
            T *kr = y.kc.data() + ((size_t)h * s.cap + pos) * D, *vr = y.vc.data() + ((size_t)h * s.cap + pos) * D;
            for (int j = 0; j < H2; j++) {
                double a = (double)((float)pos * m.inv_freq[j]), c = cos(a), sn = sin(a);
                kr[j] = cu_cast<T>((float)(k[j] * c - k[j + H2] * sn));
                kr[j + H2] = cu_cast<T>((float)(k[j + H2] * c + k[j] * sn));
                vr[j] = cu_cast<T>((float)v[j]), vr[j + H2] = cu_cast<T>((float)v[j + H2]);
            }
        }
        for (int h = 0; h < s.Hq; h++) {
            double *qh = q.data() + h * D;
            double a = 0;
            for (int j = 0; j < H2; j++) {
                a = (double)((float)pos * m.inv_freq[j]);
                double q0 = qh[j], q1 = qh[j + H2];
                qh[j] = q0 * cos(a) - q1 * sin(a), qh[j + H2] = q1 * cos(a) + q0 * sin(a);
            }
            const T *Kh = y.kc.data() + (size_t)(h / G) * s.cap * D, *Vh = y.vc.data() + (size_t)(h / G) * s.cap * D;
            ref_attention(qh, Kh, Vh, pos + 1, D, att.data() + h * D);
        }
        for (int r = 0; r < s.C; r++) x[r] += dotw(y.wo.data() + (size_t)r * s.Hq * D, att);
        xn = rmsn(x, y.gm);
        std::vector<double> hh(s.F);
        for (int j = 0; j < s.F; j++) {
            double g = dotw(y.wg.data() + (size_t)j * s.C, xn), u = dotw(y.wu.data() + (size_t)j * s.C, xn);
            hh[j] = g / (1 + exp(-g)) * u;
        }
        for (int r = 0; r < s.C; r++) x[r] += dotw(y.wd.data() + (size_t)r * s.F, hh);
    }
    std::vector<double> xn = rmsn(x, m.gf), lg(s.vocab);
    for (int r = 0; r < s.vocab; r++) lg[r] = dotw(m.lm.data() + (size_t)r * s.C, xn);
    return lg;
}

static const float SENT = -12345.f;

/* Run `steps` tokens from position pos0 through k_dec_mega on `grid` blocks with a ring of
 * `ns` slots a warp, each against the reference. */
template <class T> static void run_case(shape s, int pos0, int steps, unsigned grid, int ns) {
    model<T> m = make<T>(s, pos0), ref = m;
    const int QKV = (s.Hq + 2 * s.Hkv) * s.D, L = s.L;
    mk_args a = {};
    size_t smem = 0;
    bool fits = mk_layout<T>(s.C, s.F, s.Hq, s.Hkv, s.D, s.vocab, grid, 1 << 30, &a, &smem);
    a.ns = ns; /* the layout gives the most stages that fit; test fewer */
    smem = (size_t)ns * MK_WARPS * MK_SLOT + (smem - (size_t)MK_NS_MAX * MK_WARPS * MK_SLOT);
    std::vector<float> x(s.C + 16, SENT), qkv(QKV + 16, SENT), att(s.Hq * s.D + 16, SENT),
        h(s.F + 16, SENT), logits(s.vocab + 16, SENT), argv(grid);
    std::vector<int> argi(grid), params(8, 0), tops(DEC_RING, -1);
    unsigned sync[2];
    /* the tables as the engine makes them (mk_fill), over this model's host buffers */
    std::vector<fe_cuda_decode_layer> layers(L);
    for (int l = 0; l < L; l++) {
        auto &y = m.ly[l];
        layers[l] = {y.wq.data(), y.wk.data(), y.wv.data(), y.wo.data(), y.wg.data(), y.wu.data(),
                     y.wd.data(), y.ga.data(), y.gm.data(), y.kc.data(), y.vc.data()};
    }
    fe_cuda_decode_desc d = {};
    d.dim = s.C, d.n_layers = L, d.n_heads = s.Hq, d.n_kv_heads = s.Hkv, d.head_dim = s.D;
    d.ffn_dim = s.F, d.vocab = s.vocab, d.capacity = s.cap, d.eps = 1e-5;
    d.inv_freq = m.inv_freq.data(), d.embed = m.emb.data(), d.final_norm = m.gf.data();
    d.lm_head = m.lm.data(), d.layers = layers.data();
    std::vector<mk_phase> ph(4 * L + 1);
    std::vector<void *> caches(2 * L);
    mk_fill(&d, x.data(), qkv.data(), att.data(), h.data(), logits.data(), &a, ph.data(),
            caches.data());
    a.ph = ph.data(), a.kc = caches.data(), a.vc = caches.data() + L;
    a.argv = argv.data(), a.argi = argi.data(), a.params = params.data(), a.sync = sync;
    a.tops = tops.data();

    const char *tn = sizeof(T) == 4 ? "f32" : "bf16";
    expect(fits, "%s: layout does not fit", tn);
    const double tol = sizeof(T) == 4 ? 1e-5 : 2e-3;
    for (int st = 0; st < steps; st++) {
        const int pos = pos0 + st, token = (int)(emu_rng()() % s.vocab);
        const int feed = st & 1; /* odd steps as a greedy run would: the argmax fed back */
        params[0] = token, params[1] = pos, params[2] = -1, params[3] = feed, params[4] = st;
        sync[0] = sync[1] = 0;
        if (s.D == 64)
            emu::launch_coop(grid, MK_THREADS, smem, [&] { k_dec_mega<T, 64>(a); });
        else
            emu::launch_coop(grid, MK_THREADS, smem, [&] { k_dec_mega<T, 128>(a); });
        std::vector<double> r = reference(ref, token, pos), got(s.vocab);
        for (int i = 0; i < s.vocab; i++) got[i] = logits[i];
        double e = relerr(got, r);
        int top = (int)(std::max_element(got.begin(), got.end()) - got.begin());
        bool ok = e <= tol && params[2] == top;
        if (feed)
            ok &= params[0] == top && params[1] == pos + 1 && params[4] == st + 1 &&
                  tops[st % DEC_RING] == top;
        else
            ok &= params[0] == token && params[1] == pos && params[4] == st;
        for (int i = s.vocab; i < s.vocab + 16; i++) ok &= logits[i] == SENT;
        /* every cache row as the reference's: the new ones within rounding, the rest exact */
        std::vector<double> gk, rk;
        for (int l = 0; l < L; l++)
            for (size_t i = 0; i < m.ly[l].kc.size(); i++) {
                bool fresh = (int)((i / s.D) % s.cap) == pos;
                double g0 = to_d(m.ly[l].kc[i]), r0 = to_d(ref.ly[l].kc[i]);
                double g1 = to_d(m.ly[l].vc[i]), r1 = to_d(ref.ly[l].vc[i]);
                if (fresh)
                    gk.push_back(g0), rk.push_back(r0), gk.push_back(g1), rk.push_back(r1);
                else
                    ok &= g0 == r0 && g1 == r1;
            }
        double ec = relerr(gk, rk);
        ok &= ec <= (sizeof(T) == 4 ? 1e-5 : 1e-2);
        expect(ok, "%s mega: C %d F %d Hq %d Hkv %d D %d vocab %d, grid %u, %d slots, pos %d: "
                   "logits error %.3g, argmax %d (want %d), cache error %.3g",
               tn, s.C, s.F, s.Hq, s.Hkv, s.D, s.vocab, grid, ns, pos, e, params[2], top, ec);
        for (int l = 0; l < L; l++) /* the next step's history is the kernel's */
            ref.ly[l].kc = m.ly[l].kc, ref.ly[l].vc = m.ly[l].vc;
    }
}

int main() {
    emu_seed(23);
    /* bf16 rows: C 192 (384 bytes), F 1096 (2192 bytes: a 2 KiB slot and part of another),
     * Hq*D 256; f32 doubles them */
    const shape s64 = {192, 1096, 4, 2, 64, 301, 2, 640};
    const shape s128 = {160, 520, 2, 1, 128, 97, 2, 16};
    for (unsigned grid : {1u, 3u, 5u}) {
        int ns = grid == 3 ? 5 : 2;
        run_case<float>(s64, 5, 2, grid, ns);
        run_case<__nv_bfloat16>(s64, 5, 2, grid, 9 - ns);
        run_case<__nv_bfloat16>(s128, 3, 2, grid, ns);
    }
    run_case<float>(s128, 0, 3, 2, 4);          /* the first position: nothing cached */
    run_case<__nv_bfloat16>(s64, 515, 2, 3, 4); /* two chunks of cached positions */
    printf("decoder persistent kernel, %d checks: %s (%d failed)\n", checks,
           fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}
