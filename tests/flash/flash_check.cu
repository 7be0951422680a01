/* Standalone GPU check and benchmark of the flash-attention kernels.
 *
 *   nvcc -O3 -std=c++17 -arch=sm_90 -Iinclude -Isrc tests/flash/flash_check.cu \
 *        src/backends/cuda/flash_attention.cu -o flash_check
 *   ./flash_check            correctness: every case against an f32 reference computed
 *                            on the GPU by plain kernels; exit status 1 on any FAIL
 *   ./flash_check --cases=A:B cases A..B-1 of the list alone (for compute-sanitizer runs)
 *   ./flash_check --bench    TFLOP/s, B=4 H=16 D=128 causal, T=S=1024..8192, then
 *                            B=4 Hq=32 Hkv=4 D=64 causal on (B, T, H, D) memory (TinyLlama)
 *        [--all]             also non-causal and D=64
 * With FE_FLASH_WGMMA=1 (and the wgmma kernels linked in, as scripts/flash_check.sh builds it)
 * the D=128 cases and rows run the experimental wgmma kernels instead of the mma.sync ones.
 *
 * Errors are relative Frobenius norms ||x - ref|| / ||ref|| of out, lse, gq, gk, gv,
 * plus the largest element error relative to max |ref|; PASS below 1e-2. Cases run
 * their operands contiguous (BHND), as (B, N, H, D) memory viewed as (B, H, N, D) (BNHD,
 * the attention module's projections) or the same with padded rows and an offset
 * (BNHD+pad, slices of a fused QKV projection); the gaps between rows of the written
 * operands must keep their sentinel.
 * FLOP conventions: forward 4 B H T S D (halved when causal), backward 2.5x forward. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "backends/cuda/flash_attention.h"
#include "flash_standalone.h" /* g_err, fe_set_error, CK: this program links only the kernels */
#define CKF(x)                                                                                    \
    do {                                                                                          \
        fe_status s_ = (x);                                                                       \
        if (s_ != FE_OK) {                                                                        \
            fprintf(stderr, "%s:%d: %s failed (%d): %s\n", __FILE__, __LINE__, #x, (int)s_, g_err); \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)

/* ---- 16-bit floats on the host and device -------------------------------------------- */

static float h_bf16_to_f(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t h_f_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
static float h_f16_to_f(uint16_t x) { /* exact: subnormals, normals, inf */
    int e = (x >> 10) & 31, m = x & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? INFINITY : ldexpf((float)(m | 1024), e - 25);
    return (x & 0x8000) ? -v : v;
}
static uint16_t h_f_to_f16(float f) { /* round to nearest even, finite inputs of modest size */
    uint16_t best = 0;
    float a = fabsf(f);
    int lo = 0, hi = 0x7bff; /* binary search over the positive finite codes */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (h_f16_to_f((uint16_t)mid) <= a) lo = mid;
        else hi = mid - 1;
    }
    best = (uint16_t)lo;
    if (lo < 0x7bff) {
        float d0 = a - h_f16_to_f((uint16_t)lo), d1 = h_f16_to_f((uint16_t)(lo + 1)) - a;
        if (d1 < d0 || (d1 == d0 && (lo & 1))) best = (uint16_t)(lo + 1);
    }
    return (uint16_t)(best | (f < 0 ? 0x8000 : 0));
}

__device__ __forceinline__ float d_to_f(uint16_t x, bool bf) {
    if (bf) return __uint_as_float((uint32_t)x << 16);
    return __half2float(__ushort_as_half(x));
}

/* ---- f32 reference kernels ----------------------------------------------------------- */

struct RefArgs {
    const uint16_t *q, *k, *v, *go;
    bool bf;
    int B, Hq, Hkv, T, S, D;
    bool causal;
    float scale;
    float *out, *lse, *gq, *gk, *gv; /* f32 results */
    float *P, *dS;                   /* (B, Hq, T, S) scratch */
};

__device__ float block_reduce(float x, bool is_max, float *red) {
    for (int o = 16; o > 0; o >>= 1) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
    __syncthreads();
    x = red[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) x = is_max ? fmaxf(x, red[w]) : x + red[w];
    return x;
}

/* One block per query row (i, h, b): out, lse, P, dS, gq of that row. */
__global__ void ref_rows(RefArgs a) {
    extern __shared__ float sh[]; /* p[S], dp[S] */
    __shared__ float red[32];
    float *p = sh, *dp = sh + a.S;
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, G = a.Hq / a.Hkv, D = a.D;
    const size_t row = ((size_t)b * a.Hq + h) * a.T + i;
    const uint16_t *q = a.q + row * D, *go = a.go + row * D;
    const uint16_t *k = a.k + ((size_t)b * a.Hkv + h / G) * a.S * D;
    const uint16_t *v = a.v + ((size_t)b * a.Hkv + h / G) * a.S * D;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < a.S; j += blockDim.x) {
        float s = 0;
        for (int d = 0; d < D; d++) s += d_to_f(q[d], a.bf) * d_to_f(k[(size_t)j * D + d], a.bf);
        s = (a.causal && j > i + a.S - a.T) ? -INFINITY : s * a.scale;
        p[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_reduce(mx, true, red);
    float l = 0;
    for (int j = threadIdx.x; j < a.S; j += blockDim.x) {
        p[j] = mx == -INFINITY ? 0.f : expf(p[j] - mx);
        l += p[j];
    }
    l = block_reduce(l, false, red);
    if (threadIdx.x == 0) a.lse[row] = l > 0 ? mx + logf(l) : -INFINITY;
    float di = 0;
    for (int j = threadIdx.x; j < a.S; j += blockDim.x) {
        p[j] = l > 0 ? p[j] / l : 0.f;
        float s = 0;
        for (int d = 0; d < D; d++) s += d_to_f(go[d], a.bf) * d_to_f(v[(size_t)j * D + d], a.bf);
        dp[j] = s;
        di += p[j] * s;
    }
    di = block_reduce(di, false, red);
    for (int j = threadIdx.x; j < a.S; j += blockDim.x) {
        const float ds = p[j] * (dp[j] - di);
        a.P[row * a.S + j] = p[j];
        a.dS[row * a.S + j] = ds;
        dp[j] = ds;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0, g = 0;
        for (int j = 0; j < a.S; j++) {
            o += p[j] * d_to_f(v[(size_t)j * D + d], a.bf);
            g += dp[j] * d_to_f(k[(size_t)j * D + d], a.bf);
        }
        a.out[row * D + d] = o;
        a.gq[row * D + d] = a.scale * g;
    }
}

/* One block per key (j, kv head, b): gk, gv of that key, summed over the group. */
__global__ void ref_cols(RefArgs a) {
    const int j = blockIdx.x, hk = blockIdx.y, b = blockIdx.z, G = a.Hq / a.Hkv, D = a.D;
    const size_t krow = ((size_t)b * a.Hkv + hk) * a.S + j;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float gk = 0, gv = 0;
        for (int h = hk * G; h < hk * G + G; h++)
            for (int i = 0; i < a.T; i++) {
                const size_t row = ((size_t)b * a.Hq + h) * a.T + i;
                gk += a.dS[row * a.S + j] * d_to_f(a.q[row * D + d], a.bf);
                gv += a.P[row * a.S + j] * d_to_f(a.go[row * D + d], a.bf);
            }
        a.gk[krow * D + d] = a.scale * gk;
        a.gv[krow * D + d] = gv;
    }
}

/* ---- the check ----------------------------------------------------------------------- */

struct Case {
    fe_dtype dt;
    int D, B, Hq, Hkv, T, S;
    bool causal;
    int layout; /* 0 BHND (contiguous), 1 BNHD, 2 BNHD with padded rows and an offset */
};

/* Where a (B, H, N, D) operand lives in a buffer of n elements: (b, h, i, d) at
 * off + b sb + h sh + i sr + d. Elements outside the view hold kSentinel. */
struct Layout {
    int B, H, N, D;
    long long off, sb, sh, sr;
    size_t n;
    Layout(int kind, int B_, int H_, int N_, int D_) : B(B_), H(H_), N(N_), D(D_) {
        const long long rs = kind == 0 ? D : (long long)H * D + (kind == 2 ? 24 : 0);
        off = kind == 2 ? 8 : 0;
        if (kind == 0) sb = (long long)H * N * D, sh = (long long)N * D, sr = D;
        else sb = (long long)N * rs, sh = D, sr = rs;
        n = (size_t)(off + B * sb) + 8;
    }
    size_t at(int b, int h, int i) const { return (size_t)(off + b * sb + h * sh + i * sr); }
    fe_flash_strides strides() const { return {sb, sh, sr}; }
};
static const uint16_t kSentinel = 0x7bfe;

/* A device buffer in layout l holding the contiguous (B, H, N, D) host values x (or,
 * with x NULL, 0xffff = NaN in the view: every element must be written). */
static uint16_t *upload_layout(const Layout &l, const std::vector<uint16_t> *x) {
    std::vector<uint16_t> h(l.n, kSentinel);
    for (int b = 0; b < l.B; b++)
        for (int hh = 0; hh < l.H; hh++)
            for (int i = 0; i < l.N; i++)
                for (int d = 0; d < l.D; d++)
                    h[l.at(b, hh, i) + d] =
                        x ? (*x)[(((size_t)b * l.H + hh) * l.N + i) * l.D + d] : 0xffff;
    uint16_t *dp;
    CK(cudaMalloc(&dp, l.n * 2));
    CK(cudaMemcpy(dp, h.data(), l.n * 2, cudaMemcpyHostToDevice));
    return dp;
}

/* The view of a device buffer in layout l as contiguous floats; *clobbered counts the
 * elements outside the view that lost the sentinel. */
static std::vector<float> download_layout(const Layout &l, const uint16_t *dp, bool bf,
                                          long long *clobbered) {
    std::vector<uint16_t> h(l.n);
    CK(cudaMemcpy(h.data(), dp, l.n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> f((size_t)l.B * l.H * l.N * l.D);
    std::vector<char> in(l.n, 0);
    for (int b = 0; b < l.B; b++)
        for (int hh = 0; hh < l.H; hh++)
            for (int i = 0; i < l.N; i++)
                for (int d = 0; d < l.D; d++) {
                    const size_t at = l.at(b, hh, i) + d;
                    const uint16_t x = h[at];
                    in[at] = 1;
                    f[(((size_t)b * l.H + hh) * l.N + i) * l.D + d] = bf ? h_bf16_to_f(x)
                                                                          : h_f16_to_f(x);
                }
    for (size_t i = 0; i < l.n; i++) *clobbered += !in[i] && h[i] != kSentinel;
    return f;
}

static uint64_t g_seed = 0x243f6a8885a308d3ull;
static float rnd() { /* uniform in [-1, 1) */
    g_seed ^= g_seed << 13, g_seed ^= g_seed >> 7, g_seed ^= g_seed << 17;
    return (float)((double)(g_seed >> 11) / (double)(1ull << 52) - 1.0);
}

static uint16_t *upload_random(size_t n, bool bf, float amp,
                               std::vector<uint16_t> *keep = NULL) {
    std::vector<uint16_t> h(n);
    for (auto &x : h) x = bf ? h_f_to_bf16(amp * rnd()) : h_f_to_f16(amp * rnd());
    if (keep) *keep = h;
    uint16_t *d;
    CK(cudaMalloc(&d, n * 2 + 16));
    CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
    return d;
}

static std::vector<float> download32(const float *d, size_t n) {
    std::vector<float> f(n);
    CK(cudaMemcpy(f.data(), d, n * 4, cudaMemcpyDeviceToHost));
    return f;
}

/* relative Frobenius error; *maxrel = max |x - ref| / max |ref|; -inf matching -inf counts 0 */
static double compare(const std::vector<float> &x, const std::vector<float> &ref, double *maxrel) {
    double num = 0, den = 0, mx = 0, mref = 0;
    for (size_t i = 0; i < x.size(); i++) {
        if (isinf(ref[i]) && x[i] == ref[i]) continue;
        double d = (double)x[i] - ref[i];
        if (isnan(d) || isinf(d)) d = INFINITY;
        num += d * d, den += (double)ref[i] * ref[i];
        mx = fmax(mx, fabs(d)), mref = fmax(mref, fabs((double)ref[i]));
    }
    *maxrel = mref > 0 ? mx / mref : mx;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static bool run_case(const Case &c, cudaStream_t stream) {
    const bool bf = c.dt == FE_BF16;
    const size_t nq = (size_t)c.B * c.Hq * c.T * c.D, nk = (size_t)c.B * c.Hkv * c.S * c.D;
    const size_t rows = (size_t)c.B * c.Hq * c.T;
    std::vector<uint16_t> hq, hk, hv, hgo; /* contiguous host values of the inputs */
    uint16_t *q = upload_random(nq, bf, 2.f, &hq), *k = upload_random(nk, bf, 2.f, &hk);
    uint16_t *v = upload_random(nk, bf, 1.f, &hv), *go = upload_random(nq, bf, 1.f, &hgo);
    /* the kernels' operands in the case's layout (the reference reads q, k, v, go) */
    const Layout lq(c.layout, c.B, c.Hq, c.T, c.D), lk(c.layout, c.B, c.Hkv, c.S, c.D);
    uint16_t *sq = upload_layout(lq, &hq), *sk = upload_layout(lk, &hk);
    uint16_t *sv = upload_layout(lk, &hv), *sgo = upload_layout(lq, &hgo);
    uint16_t *out = upload_layout(lq, NULL), *gq = upload_layout(lq, NULL);
    uint16_t *gk = upload_layout(lk, NULL), *gv = upload_layout(lk, NULL);
    float *lse;
    CK(cudaMalloc(&lse, rows * 4 + 16));
    CK(cudaMemset(lse, 0xff, rows * 4)); /* garbage: every element must be written */

    fe_flash_args a;
    memset(&a, 0, sizeof a);
    a.dtype = c.dt, a.device = 0;
    a.B = c.B, a.Hq = c.Hq, a.Hkv = c.Hkv, a.T = c.T, a.S = c.S, a.D = c.D;
    a.causal = c.causal, a.scale = 1.0 / sqrt((double)c.D);
    a.q = sq + lq.off, a.k = sk + lk.off, a.v = sv + lk.off, a.out = out + lq.off, a.lse = lse;
    a.gout = sgo + lq.off, a.gq = gq + lq.off, a.gk = gk + lk.off, a.gv = gv + lk.off;
    a.sq = a.sout = a.sgout = a.sgq = lq.strides();
    a.sk = a.sv = a.sgk = a.sgv = lk.strides();
    CKF(fe_flash_attention_forward(&a, stream));
    CKF(fe_flash_attention_backward(&a, NULL, stream));
    CK(cudaStreamSynchronize(stream));

    RefArgs r;
    r.q = q, r.k = k, r.v = v, r.go = go, r.bf = bf;
    r.B = c.B, r.Hq = c.Hq, r.Hkv = c.Hkv, r.T = c.T, r.S = c.S, r.D = c.D;
    r.causal = c.causal, r.scale = (float)a.scale;
    CK(cudaMalloc(&r.out, nq * 4));
    CK(cudaMalloc(&r.gq, nq * 4));
    CK(cudaMalloc(&r.gk, nk * 4));
    CK(cudaMalloc(&r.gv, nk * 4));
    CK(cudaMalloc(&r.lse, rows * 4));
    CK(cudaMalloc(&r.P, rows * c.S * 4 + 4));
    CK(cudaMalloc(&r.dS, rows * c.S * 4 + 4));
    ref_rows<<<dim3(c.T, c.Hq, c.B), 128, 2 * c.S * sizeof(float)>>>(r);
    CK(cudaGetLastError());
    ref_cols<<<dim3(c.S, c.Hkv, c.B), 128>>>(r);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());

    const char *names[5] = {"out", "lse", "gq", "gk", "gv"};
    long long clobbered = 0;
    std::vector<float> got[5] = {download_layout(lq, out, bf, &clobbered), download32(lse, rows),
                                 download_layout(lq, gq, bf, &clobbered),
                                 download_layout(lk, gk, bf, &clobbered),
                                 download_layout(lk, gv, bf, &clobbered)};
    for (const uint16_t *in : {sq, sgo}) download_layout(lq, in, bf, &clobbered);
    for (const uint16_t *in : {sk, sv}) download_layout(lk, in, bf, &clobbered);
    std::vector<float> ref[5] = {download32(r.out, nq), download32(r.lse, rows),
                                 download32(r.gq, nq), download32(r.gk, nk), download32(r.gv, nk)};
    bool ok = clobbered == 0;
    static const char *lay[3] = {"BHND", "BNHD", "BNHD+pad"};
    printf("%-4s D=%-3d B=%d Hq=%d Hkv=%d T=%-4d S=%-4d %-10s %-8s", bf ? "bf16" : "f16", c.D,
           c.B, c.Hq, c.Hkv, c.T, c.S, c.causal ? "causal" : "non-causal", lay[c.layout]);
    for (int t = 0; t < 5; t++) {
        double mr, e = compare(got[t], ref[t], &mr);
        ok = ok && e < 1e-2;
        printf(" %s %.1e/%.1e", names[t], e, mr);
    }
    if (clobbered) printf(" gaps clobbered %lld", clobbered);
    printf("  %s\n", ok ? "PASS" : "FAIL");
    for (void *p : {(void *)q, (void *)k, (void *)v, (void *)go, (void *)sq, (void *)sk,
                    (void *)sv, (void *)sgo, (void *)out, (void *)gq, (void *)gk, (void *)gv,
                    (void *)lse, (void *)r.out, (void *)r.gq, (void *)r.gk, (void *)r.gv,
                    (void *)r.lse, (void *)r.P, (void *)r.dS})
        CK(cudaFree(p));
    return ok;
}

/* The launchers refuse what they cannot do, with the error set and nothing launched. */
static bool check_errors() {
    fe_flash_args a;
    memset(&a, 0, sizeof a);
    a.dtype = FE_BF16, a.B = 1, a.Hq = 2, a.Hkv = 1, a.T = 8, a.S = 8, a.D = 96, a.scale = 0.1;
    fe_flash_args_contiguous(&a);
    static float dummy[8] __attribute__((aligned(16)));
    a.q = a.k = a.v = a.out = dummy, a.lse = dummy;
    bool ok = fe_flash_attention_forward(&a, NULL) == FE_ERR_SHAPE;
    a.D = 64, a.dtype = FE_F32;
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_DTYPE;
    a.dtype = FE_F16, a.Hkv = 3;
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_SHAPE;
    a.Hkv = 1, a.scale = -1;
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_ARG;
    a.scale = 0.1;
    ok = ok && fe_flash_attention_backward(&a, NULL, NULL) == FE_ERR_ARG; /* gout etc. NULL */
    a.k = dummy + 1; /* misaligned */
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_ARG;
    a.k = dummy;
    a.sk.r = 68; /* rows not 16-byte aligned */
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_ARG;
    fe_flash_args_contiguous(&a);
    a.sout.r = 32; /* out rows overlap */
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_ARG;
    a.sout = a.sq, a.sout.h = a.sout.r; /* heads overlap */
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_ARG;
    fe_flash_args_contiguous(&a);
    a.sk.b = a.sk.h = 0; /* reading broadcast rows is fine: this one is refused for Hkv */
    a.Hkv = 3;
    ok = ok && fe_flash_attention_forward(&a, NULL) == FE_ERR_SHAPE;
    printf("argument errors: %s\n", ok ? "PASS" : "FAIL");
    return ok;
}

/* No query rows (T = 0): the backward still writes gk = gv = 0 (grouped and not). */
static bool check_no_queries(cudaStream_t stream) {
    bool ok = true;
    for (int Hq : {2, 8}) {
        fe_flash_args a;
        memset(&a, 0, sizeof a);
        a.dtype = FE_BF16, a.B = 2, a.Hq = Hq, a.Hkv = 2, a.T = 0, a.S = 100, a.D = 64;
        a.causal = true, a.scale = 0.125;
        fe_flash_args_contiguous(&a);
        const size_t nk = (size_t)a.B * a.Hkv * a.S * a.D;
        uint16_t *kv, *g;
        CK(cudaMalloc(&kv, nk * 2));
        CK(cudaMalloc(&g, 2 * nk * 2));
        CK(cudaMemset(kv, 0, nk * 2));
        CK(cudaMemset(g, 0xff, 2 * nk * 2)); /* NaN: must be overwritten */
        a.q = a.k = a.v = a.gout = kv, a.out = a.gq = kv, a.lse = (float *)kv;
        a.gk = g, a.gv = g + nk;
        CKF(fe_flash_attention_backward(&a, NULL, stream));
        std::vector<uint16_t> h(2 * nk);
        CK(cudaMemcpyAsync(h.data(), g, 2 * nk * 2, cudaMemcpyDeviceToHost, stream));
        CK(cudaStreamSynchronize(stream));
        for (uint16_t x : h) ok = ok && x == 0;
        CK(cudaFree(kv));
        CK(cudaFree(g));
    }
    printf("no query rows: %s\n", ok ? "PASS" : "FAIL");
    return ok;
}

/* ---- benchmark ----------------------------------------------------------------------- */

static void bench(int B, int H, int D, bool causal, fe_dtype dt, int layout = 0, int Hkv = 0) {
    if (!Hkv) Hkv = H;
    const int Ts[4] = {1024, 2048, 4096, 8192};
    for (int T : Ts) {
        const size_t n = (size_t)B * H * T * D, nk = (size_t)B * Hkv * T * D;
        const bool bf = dt == FE_BF16;
        uint16_t *q = upload_random(n, bf, 1.f), *k = upload_random(nk, bf, 1.f);
        uint16_t *v = upload_random(nk, bf, 1.f), *go = upload_random(n, bf, 1.f);
        uint16_t *out, *gq, *gk, *gv;
        float *lse;
        void *ws;
        CK(cudaMalloc(&out, n * 2));
        CK(cudaMalloc(&gq, n * 2));
        CK(cudaMalloc(&gk, nk * 2));
        CK(cudaMalloc(&gv, nk * 2));
        CK(cudaMalloc(&lse, (size_t)B * H * T * 4));
        fe_flash_args a;
        memset(&a, 0, sizeof a);
        a.dtype = dt, a.device = 0, a.B = B, a.Hq = H, a.Hkv = Hkv, a.T = T, a.S = T, a.D = D;
        a.causal = causal, a.scale = 1.0 / sqrt((double)D);
        a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse, a.gout = go;
        a.gq = gq, a.gk = gk, a.gv = gv;
        if (layout == 1) { /* (B, T, H, D) memory: the attention module's projections */
            a.sq = a.sout = a.sgout = a.sgq =
                fe_flash_strides{(int64_t)T * H * D, D, (int64_t)H * D};
            a.sk = a.sv = a.sgk = a.sgv =
                fe_flash_strides{(int64_t)T * Hkv * D, D, (int64_t)Hkv * D};
        } else {
            fe_flash_args_contiguous(&a);
        }
        CK(cudaMalloc(&ws, fe_flash_attention_workspace_size(&a)));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        const int iters = T >= 4096 ? 10 : 30;
        float ms_f, ms_b;
        for (int w = 0; w < 3; w++) {
            CKF(fe_flash_attention_forward(&a, NULL));
            CKF(fe_flash_attention_backward(&a, ws, NULL));
        }
        CK(cudaEventRecord(e0));
        for (int it = 0; it < iters; it++) CKF(fe_flash_attention_forward(&a, NULL));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms_f, e0, e1));
        CK(cudaEventRecord(e0));
        for (int it = 0; it < iters; it++) CKF(fe_flash_attention_backward(&a, ws, NULL));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms_b, e0, e1));
        ms_f /= iters, ms_b /= iters;
        const double fwd = 4.0 * B * H * (double)T * T * D * (causal ? 0.5 : 1.0), bwd = 2.5 * fwd;
        /* only the plain "ours" rows (Hkv = H, BHND) are read by bench/attention.py */
        char name[32];
        snprintf(name, sizeof name, "ours%s%s", Hkv != H ? "-gqa" : "", layout ? "-bthd" : "");
        printf("BENCH %s %s D=%d B=%d H=%d T=%d causal=%d fwd_ms=%.3f fwd_tflops=%.1f "
               "bwd_ms=%.3f bwd_tflops=%.1f%s\n",
               name, dt == FE_BF16 ? "bf16" : "f16", D, B, H, T, (int)causal, ms_f,
               fwd / (ms_f * 1e-3) / 1e12, ms_b, bwd / (ms_b * 1e-3) / 1e12,
               Hkv != H ? (" Hkv=" + std::to_string(Hkv)).c_str() : "");
        fflush(stdout);
        for (void *p : {(void *)q, (void *)k, (void *)v, (void *)go, (void *)out, (void *)gq,
                        (void *)gk, (void *)gv, (void *)lse, ws})
            CK(cudaFree(p));
        CK(cudaEventDestroy(e0));
        CK(cudaEventDestroy(e1));
    }
}

int main(int argc, char **argv) {
    bool do_bench = false, all = false;
    int first = 0, last = 1 << 30; /* --cases A:B runs cases A..B-1 of the list alone */
    for (int i = 1; i < argc; i++) {
        char tail;
        if (!strcmp(argv[i], "--bench")) do_bench = true;
        else if (!strcmp(argv[i], "--all")) all = true;
        else if (!strncmp(argv[i], "--cases=", 8) &&
                 sscanf(argv[i] + 8, "%d:%d%c", &first, &last, &tail) == 2 && 0 <= first &&
                 first < last) {
        } else {
            fprintf(stderr, "usage: %s [--bench [--all] | --cases=A:B]\n", argv[0]);
            return 2;
        }
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    if (do_bench) {
        bench(4, 16, 128, true, FE_BF16);
        bench(4, 16, 128, true, FE_BF16, 1); /* the same on (B, T, H, D) memory */
        /* grouped KV heads as TinyLlama trains them: 32 query heads over 4 kv heads */
        bench(4, 32, 64, true, FE_BF16, 1, 4);
        if (all) {
            bench(4, 16, 128, false, FE_BF16);
            bench(4, 16, 64, true, FE_BF16);
            bench(4, 16, 64, false, FE_BF16);
        }
        return 0;
    }
    /* a non-blocking stream: the launchers must honour the stream they are given */
    cudaStream_t stream;
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<Case> cases;
    for (fe_dtype dt : {FE_BF16, FE_F16})
        for (int D : {64, 128}) {
            cases.push_back({dt, D, 1, 8, 2, 1000, 1000, true, 0});
            cases.push_back({dt, D, 1, 8, 2, 1000, 1000, false, 0});
            cases.push_back({dt, D, 2, 8, 2, 77, 77, true, 0});
            cases.push_back({dt, D, 2, 8, 2, 77, 77, false, 0});
            cases.push_back({dt, D, 1, 8, 2, 64, 200, false, 0});
            cases.push_back({dt, D, 1, 8, 2, 64, 200, true, 0});
            cases.push_back({dt, D, 1, 4, 4, 200, 64, true, 0}); /* rows with no visible key */
            cases.push_back({dt, D, 2, 4, 1, 256, 256, true, 0});
            /* strided: (B, T, H, D) memory as the attention module makes it, GQA */
            cases.push_back({dt, D, 2, 8, 2, 1000, 1000, true, 1});
            cases.push_back({dt, D, 2, 8, 2, 77, 77, false, 1});
            cases.push_back({dt, D, 1, 8, 2, 33, 150, true, 1});
            cases.push_back({dt, D, 2, 6, 2, 129, 65, false, 2});
            cases.push_back({dt, D, 1, 4, 1, 257, 257, true, 2});
            /* 8 query heads per kv head (TinyLlama's grouping), several key tiles */
            cases.push_back({dt, D, 2, 8, 1, 515, 515, true, 1});
            cases.push_back({dt, D, 1, 8, 1, 300, 433, false, 0});
        }
    /* the two checks of errors and empty inputs come first, then the list; --cases picks a range
     * of the list (and leaves the two checks to the range that starts at 0) */
    int fails = 0, ran = 0;
    if (first == 0) fails += !check_errors() + !check_no_queries(stream), ran += 2;
    for (int i = first; i < last && i < (int)cases.size(); i++)
        fails += !run_case(cases[i], stream), ran++;
    CK(cudaStreamDestroy(stream));
    printf("%d cases, %d failed: %s\n", ran, fails, fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
