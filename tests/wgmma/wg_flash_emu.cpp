/* The experimental wgmma flash forward (wg_flash_fwd.cuh) on the CPU, through the host stand-ins
 * of tests/cuda_emu/ (fibers, cp.async, wgmma), against float64 attention: bf16 and f16, causal
 * and not, grouped KV heads, query and key counts that are not multiples of the tiles, more
 * queries than keys (rows with no visible key), and (B, N, H, D) memory viewed as (B, H, N, D).
 * Outputs must match within 1e-2 (normwise, as tests/flash/flash_check.cu asks of the mma.sync
 * kernels; every output starts as a sentinel), lse within 1e-3, -inf for a row with no key.
 *   scripts/wgmma_emu.sh */
#include <cstdlib>
#include <random>

#include "wg_flash_fwd.cuh"

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

static void run(const wf_case &c) {
    const int D = WF_D;
    std::mt19937 rng(1234 + c.T * 7 + c.S);
    std::normal_distribution<float> nd(0.f, 1.f);
    /* element strides (batch, head, row) of a (B, H, N, D) operand */
    auto strides = [&](int H, int N, long long (&s)[3]) {
        if (c.bnhd) s[0] = (long long)N * H * D, s[1] = D, s[2] = (long long)H * D;
        else s[0] = (long long)H * N * D, s[1] = (long long)N * D, s[2] = D;
    };
    wf_params p;
    p.B = c.B, p.Hq = c.Hq, p.Hkv = c.Hkv, p.T = c.T, p.S = c.S, p.causal = c.causal;
    const double scale = 1.0 / sqrt((double)D);
    p.sl2 = (float)(scale * 1.4426950408889634);
    strides(c.Hq, c.T, p.sq), strides(c.Hkv, c.S, p.sk), strides(c.Hkv, c.S, p.sv);
    strides(c.Hq, c.T, p.so);
    const size_t nq = (size_t)c.B * c.Hq * c.T * D, nk = (size_t)c.B * c.Hkv * c.S * D;
    std::vector<uint16_t> q(nq), k(nk), v(nk), out(nq, 0xabcd);
    std::vector<float> lse((size_t)c.B * c.Hq * c.T, -7.f);
    for (auto &x : q) x = from_f(nd(rng), c.bf);
    for (auto &x : k) x = from_f(nd(rng), c.bf);
    for (auto &x : v) x = from_f(nd(rng), c.bf);
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
    const int nqb = (c.T + WF_BR - 1) / WF_BR;
    emu::launch((unsigned)(c.B * c.Hq * nqb), WF_NT, WF_SMEM,
                [&] { c.bf ? wf_fwd_kernel<true, 2>(p) : wf_fwd_kernel<false, 2>(p); });
    bool landed = emu::wgmma_all_landed();

    /* float64 reference */
    double num = 0, den = 0, lse_err = 0;
    bool lse_inf_ok = true;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.Hq; h++) {
            const int hk = h / (c.Hq / c.Hkv);
            for (int i = 0; i < c.T; i++) {
                const uint16_t *qi = &q[b * p.sq[0] + h * p.sq[1] + i * p.sq[2]];
                std::vector<double> w(c.S, 0.0);
                double mx = -INFINITY;
                for (int j = 0; j < c.S; j++) {
                    if (c.causal && j > i + c.S - c.T) continue;
                    const uint16_t *kj = &k[b * p.sk[0] + hk * p.sk[1] + j * p.sk[2]];
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += (double)to_f(qi[d], c.bf) * to_f(kj[d], c.bf);
                    w[j] = dot * scale, mx = std::max(mx, w[j]);
                }
                double sum = 0;
                for (int j = 0; j < c.S; j++) {
                    const bool vis = !(c.causal && j > i + c.S - c.T);
                    w[j] = vis ? exp(w[j] - mx) : 0.0, sum += w[j];
                }
                const uint16_t *oi = &out[b * p.so[0] + h * p.so[1] + i * p.so[2]];
                for (int d = 0; d < D; d++) {
                    double ref = 0;
                    for (int j = 0; j < c.S; j++)
                        if (w[j] != 0.0) ref += w[j] * to_f(v[b * p.sv[0] + hk * p.sv[1] + j * p.sv[2] + d], c.bf);
                    ref = sum > 0 ? ref / sum : 0.0;
                    const double got = to_f(oi[d], c.bf);
                    num += (got - ref) * (got - ref), den += ref * ref;
                    if (got != got) num = INFINITY;
                }
                const float L = lse[((size_t)b * c.Hq + h) * c.T + i];
                if (sum > 0) lse_err = std::max(lse_err, fabs((double)L - (mx + log(sum))));
                else lse_inf_ok &= L == -INFINITY;
            }
        }
    const double err = den > 0 ? sqrt(num / den) : sqrt(num);
    const bool ok = landed && err < 1e-2 && lse_err < 1e-3 && lse_inf_ok;
    printf("%s B=%d Hq=%d Hkv=%d T=%-4d S=%-4d %-10s %s  out %.1e  lse %.1e%s  %s\n",
           c.bf ? "bf16" : "f16 ", c.B, c.Hq, c.Hkv, c.T, c.S, c.causal ? "causal" : "non-causal",
           c.bnhd ? "BNHD" : "BHND", err, lse_err, lse_inf_ok ? "" : " (lse of an empty row)",
           ok ? "PASS" : "FAIL");
    fails += !ok;
}

int main() {
    const wf_case cases[] = {
        {true, 1, 2, 1, 64, 64, false, false},  {true, 1, 2, 2, 128, 128, true, false},
        {true, 1, 4, 2, 200, 200, true, false}, {true, 2, 2, 1, 77, 150, false, false},
        {true, 1, 2, 1, 200, 64, true, false},  /* rows with no visible key */
        {false, 1, 2, 2, 150, 150, true, true}, {false, 1, 4, 1, 33, 250, true, true},
        {true, 1, 2, 1, 257, 129, false, true},
    };
    for (const wf_case &c : cases) run(c);
    printf("%s (wgmma flash forward, %d of %zu cases failed)\n", fails ? "FAIL" : "PASS", fails,
           sizeof cases / sizeof cases[0]);
    return fails != 0;
}
