/* The experimental wgmma flash kernels (wg_flash_fwd.cuh: plain and pipelined forward;
 * wg_flash_bwd.cuh) on the CPU, through the host stand-ins of tests/cuda_emu/ (fibers, cp.async, wgmma), against float64 attention
 * and its gradients: bf16 and f16, causal and not, grouped KV heads, query and key counts that
 * are not multiples of the tiles, more queries than keys (rows with no visible key), and
 * (B, N, H, D) memory viewed as (B, H, N, D). Outputs and gradients must match within 1e-2
 * (normwise, as tests/flash/flash_check.cu asks of the mma.sync kernels; every output starts as
 * a sentinel), lse within 1e-3 and -inf for a row with no key.
 *   scripts/wgmma_emu.sh */
#include <cstdlib>
#include <random>

#include "wg_flash_bwd.cuh"

static int fails = 0;

static float to_f(uint16_t x, bool bf) {
    return bf ? __uint_as_float((unsigned)x << 16) : __half2float(__ushort_as_half(x));
}
static uint16_t from_f(float f, bool bf) {
    return bf ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
}

struct wf_case {
    bool bf;
    int B, Hq, Hkv, T, S;
    bool causal, bnhd; /* bnhd: (B, N, H, D) memory */
};

/* One problem: inputs, their layouts, and the float64 forward (P, O, lse) and backward. */
struct problem {
    wf_case c;
    long long sq[3], sk[3];
    std::vector<uint16_t> q, k, v, dout;
    std::vector<double> o, lse, gq, gk, gv; /* references, contiguous (B, H, N, D) / (B, H, N) */
    double scale;
    size_t at_q(int b, int h, int i, int d) const { return b * sq[0] + h * sq[1] + i * sq[2] + d; }
    size_t at_k(int b, int h, int j, int d) const { return b * sk[0] + h * sk[1] + j * sk[2] + d; }
};

static problem make(const wf_case &c) {
    const int D = WF_D;
    problem P;
    P.c = c;
    std::mt19937 rng(1234 + c.T * 7 + c.S);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto strides = [&](int H, int N, long long (&s)[3]) {
        if (c.bnhd) s[0] = (long long)N * H * D, s[1] = D, s[2] = (long long)H * D;
        else s[0] = (long long)H * N * D, s[1] = (long long)N * D, s[2] = D;
    };
    strides(c.Hq, c.T, P.sq), strides(c.Hkv, c.S, P.sk);
    const size_t nq = (size_t)c.B * c.Hq * c.T * D, nk = (size_t)c.B * c.Hkv * c.S * D;
    P.q.resize(nq), P.k.resize(nk), P.v.resize(nk), P.dout.resize(nq);
    for (auto *x : {&P.q, &P.k, &P.v, &P.dout})
        for (auto &e : *x) e = from_f(nd(rng), c.bf);
    P.scale = 1.0 / sqrt((double)D);
    P.o.assign(nq, 0), P.lse.assign((size_t)c.B * c.Hq * c.T, 0), P.gq.assign(nq, 0);
    P.gk.assign(nk, 0), P.gv.assign(nk, 0);
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.Hq; h++) {
            const int hk = h / (c.Hq / c.Hkv);
            const size_t hq = ((size_t)b * c.Hq + h) * c.T, hkv = ((size_t)b * c.Hkv + hk) * c.S;
            for (int i = 0; i < c.T; i++) {
                std::vector<double> w(c.S, 0.0), dp(c.S, 0.0);
                double mx = -INFINITY, sum = 0;
                auto vis = [&](int j) { return !(c.causal && j > i + c.S - c.T); };
                for (int j = 0; j < c.S; j++) {
                    if (!vis(j)) continue;
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)to_f(P.q[P.at_q(b, h, i, d)], c.bf) * to_f(P.k[P.at_k(b, hk, j, d)], c.bf);
                    w[j] = dot * P.scale, mx = std::max(mx, w[j]);
                }
                for (int j = 0; j < c.S; j++) w[j] = vis(j) ? exp(w[j] - mx) : 0.0, sum += w[j];
                P.lse[hq + i] = sum > 0 ? mx + log(sum) : -INFINITY;
                if (sum == 0) continue; /* no visible key: out 0, no gradient */
                for (int j = 0; j < c.S; j++) w[j] /= sum;
                double di = 0;
                for (int d = 0; d < D; d++) {
                    double od = 0;
                    for (int j = 0; j < c.S; j++) od += w[j] * to_f(P.v[P.at_k(b, hk, j, d)], c.bf);
                    P.o[(hq + i) * D + d] = od;
                    di += od * to_f(P.dout[P.at_q(b, h, i, d)], c.bf);
                }
                for (int j = 0; j < c.S; j++) {
                    if (w[j] == 0.0) continue;
                    double s = 0;
                    for (int d = 0; d < D; d++)
                        s += (double)to_f(P.dout[P.at_q(b, h, i, d)], c.bf) * to_f(P.v[P.at_k(b, hk, j, d)], c.bf);
                    const double ds = w[j] * (s - di) * P.scale;
                    for (int d = 0; d < D; d++) {
                        P.gq[(hq + i) * D + d] += ds * to_f(P.k[P.at_k(b, hk, j, d)], c.bf);
                        P.gk[(hkv + j) * D + d] += ds * to_f(P.q[P.at_q(b, h, i, d)], c.bf);
                        P.gv[(hkv + j) * D + d] += w[j] * to_f(P.dout[P.at_q(b, h, i, d)], c.bf);
                    }
                }
            }
        }
    return P;
}

/* ||got - ref|| / ||ref|| over a (B, H, N, D) operand in layout s, ref contiguous */
static double err(const problem &P, const std::vector<uint16_t> &got, const std::vector<double> &ref,
                  int H, int N, const long long (&s)[3]) {
    double num = 0, den = 0;
    for (int b = 0; b < P.c.B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < N; i++)
                for (int d = 0; d < WF_D; d++) {
                    const double r = ref[(((size_t)b * H + h) * N + i) * WF_D + d];
                    const double g = to_f(got[b * s[0] + h * s[1] + i * s[2] + d], P.c.bf);
                    if (g != g) return INFINITY;
                    num += (g - r) * (g - r), den += r * r;
                }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void run(const wf_case &c) {
    problem P = make(c);
    const int D = WF_D;
    const size_t nq = P.q.size(), nk = P.k.size(), nl = P.lse.size();

    /* forward */
    wf_params p;
    p.B = c.B, p.Hq = c.Hq, p.Hkv = c.Hkv, p.T = c.T, p.S = c.S, p.causal = c.causal;
    p.sl2 = (float)(P.scale * 1.4426950408889634);
    for (int x = 0; x < 3; x++) p.sq[x] = p.so[x] = P.sq[x], p.sk[x] = p.sv[x] = P.sk[x];
    std::vector<uint16_t> out(nq, 0xabcd), out2(nq, 0xabcd);
    std::vector<float> lse(nl, -7.f), lse2(nl, -7.f);
    p.q = P.q.data(), p.k = P.k.data(), p.v = P.v.data();
    const unsigned nqb = (unsigned)(c.B * c.Hq * ((c.T + WF_BR - 1) / WF_BR));
    double lse_err = 0, eo = 0;
    bool inf_ok = true, landed_f = true;
    /* the plain kernel, whose out and lse the backward takes, then the pipelined one */
    for (int pipe = 0; pipe < 2; pipe++) {
        std::vector<uint16_t> &o = pipe ? out2 : out;
        std::vector<float> &L = pipe ? lse2 : lse;
        p.out = o.data(), p.lse = L.data();
        if (pipe)
            emu::launch(nqb, WF_NT, WF_SMEM_PIPE,
                        [&] { c.bf ? wf_fwd_pipe_kernel<true>(p) : wf_fwd_pipe_kernel<false>(p); });
        else
            emu::launch(nqb, WF_NT, WF_SMEM,
                        [&] { c.bf ? wf_fwd_kernel<true>(p) : wf_fwd_kernel<false>(p); });
        landed_f &= emu::wgmma_all_landed();
        for (size_t i = 0; i < nl; i++) {
            if (isinf(P.lse[i])) inf_ok &= L[i] == -INFINITY;
            else lse_err = std::max(lse_err, fabs((double)L[i] - P.lse[i]));
        }
        eo = std::max(eo, err(P, o, P.o, c.Hq, c.T, P.sq));
    }

    /* backward, from this forward's out and lse */
    wb_params w;
    w.B = c.B, w.Hq = c.Hq, w.Hkv = c.Hkv, w.T = c.T, w.S = c.S, w.causal = c.causal;
    w.TP = (c.T + WB_BR - 1) / WB_BR * WB_BR;
    w.sl2 = p.sl2, w.scale = (float)P.scale;
    for (int x = 0; x < 3; x++) {
        w.sq[x] = w.so[x] = w.sdo[x] = w.sdq[x] = P.sq[x];
        w.sk[x] = w.sv[x] = w.sdk[x] = w.sdv[x] = P.sk[x];
    }
    std::vector<uint16_t> gq(nq, 0xabcd), gk(nk, 0xabcd), gv(nk, 0xabcd);
    std::vector<float> fdq(nq, 0.f), fdk(nk, NAN), fdv(nk, NAN);
    std::vector<float> stat((size_t)c.B * c.Hq * 2 * w.TP, NAN);
    if (c.Hq != c.Hkv) fdk.assign(nk, 0.f), fdv.assign(nk, 0.f); /* added to with atomics */
    w.q = P.q.data(), w.k = P.k.data(), w.v = P.v.data(), w.o = out.data(), w.dout = P.dout.data();
    w.lse = lse.data(), w.dq = gq.data(), w.dk = gk.data(), w.dv = gv.data();
    w.fdq = fdq.data(), w.fdk = fdk.data(), w.fdv = fdv.data(), w.stat = stat.data();
    const unsigned pre_blocks = (unsigned)(((long long)c.B * c.Hq * w.TP + 7) / 8);
    emu::launch(pre_blocks, 256, 0, [&] { c.bf ? wb_pre<true>(w) : wb_pre<false>(w); });
    const int nkb = (c.S + WB_BC - 1) / WB_BC;
    emu::launch((unsigned)(c.B * c.Hq * nkb), WF_NT, WB_SMEM,
                [&] { c.bf ? wb_bwd_kernel<true>(w) : wb_bwd_kernel<false>(w); });
    const bool landed_b = emu::wgmma_all_landed();
    const unsigned cv_blocks = (unsigned)((nq / 2 + nk + 255) / 256);
    emu::launch(cv_blocks, 256, 0, [&] { c.bf ? wb_convert<true>(w) : wb_convert<false>(w); });
    const double eq = err(P, gq, P.gq, c.Hq, c.T, P.sq), ek = err(P, gk, P.gk, c.Hkv, c.S, P.sk);
    const double ev = err(P, gv, P.gv, c.Hkv, c.S, P.sk);

    const bool ok = landed_f && landed_b && eo < 1e-2 && lse_err < 1e-3 && inf_ok && eq < 1e-2 &&
                    ek < 1e-2 && ev < 1e-2;
    printf("%s B=%d Hq=%d Hkv=%d T=%-4d S=%-4d %-10s %s  out %.1e lse %.1e%s  gq %.1e gk %.1e "
           "gv %.1e  %s\n",
           c.bf ? "bf16" : "f16 ", c.B, c.Hq, c.Hkv, c.T, c.S, c.causal ? "causal" : "non-causal",
           c.bnhd ? "BNHD" : "BHND", eo, lse_err, inf_ok ? "" : " (lse of an empty row)", eq, ek, ev,
           ok ? "PASS" : "FAIL");
    fails += !ok;
    (void)D;
}

int main() {
    const wf_case cases[] = {
        {true, 1, 2, 1, 64, 64, false, false},  {true, 1, 2, 2, 128, 128, true, false},
        {true, 1, 4, 2, 200, 200, true, false}, {true, 2, 2, 1, 77, 150, false, false},
        {true, 1, 2, 1, 200, 64, true, false},  /* rows with no visible key */
        {false, 1, 2, 2, 150, 150, true, true}, {false, 1, 4, 1, 33, 250, true, true},
        {true, 1, 2, 1, 257, 129, false, true},
        {true, 1, 8, 1, 1, 300, true, false},   /* one query (decoding), eight heads a kv head */
        {false, 1, 2, 2, 300, 1, false, false}, /* one key */
        {true, 1, 2, 1, 256, 256, true, false}, /* whole tiles only */
        {true, 1, 2, 2, 129, 257, false, true},
    };
    for (const wf_case &c : cases) run(c);
    printf("%s (wgmma flash forward and backward, %d of %zu cases failed)\n", fails ? "FAIL" : "PASS",
           fails, sizeof cases / sizeof cases[0]);
    return fails != 0;
}
