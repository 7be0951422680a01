/* The RMSNorm-backward and embedding-backward kernels of src/backends/cuda/cuda_nn.cu, run on the
 * CPU (cuda_runtime.h here: a fiber per thread) against float64 references, for machines without
 * a GPU. scripts/row_grads_emu.sh cuts the kernels' text out of cuda_nn.cu unchanged (but for
 * `extern __shared__`) into row_grads_kernels.inc, builds this file and runs it.
 *
 * RMSNorm backward: gx and gw for f32 and bf16 rows of one and two 16-byte vectors per thread,
 * with and without w, gx, gw and the extra gradient, on 1, 2 and 5 blocks (the kernel must be
 * right for any grid). Embedding backward: the sort's start[] and entries checked one by one,
 * then gw against float64 sums (rows no index hits exactly +0), for f32, bf16 and f64 on
 * the 16-byte path and f32 and f16 on the element path; out-of-range and negative indices; rows
 * hit thousands of times; blocks of 1 to 64 sorted entries (many pieces per row); the blocks of
 * both kernels in a random order, twice (i32 indices, sort blocks of 32 warps and as many rows
 * blocks as entry blocks; then i64 indices, sort blocks of 16 warps and more rows blocks than
 * 32-row groups, some with no work), with bit-identical results. Exit status 1 on a failure. */
#include "backends/cuda/cuda_internal.cuh"

#include "emu_check.h"

#include <algorithm>
#include <random>

#include "row_grads_kernels.inc"

static std::mt19937_64 rng(7);

template <class T> static T to_t(double v) { return cu_cast<T>((float)v); }
template <> double to_t<double>(double v) { return v; }

/* ---- RMSNorm backward -------------------------------------------------------------------- */

/* Each call takes the next of the two barrier kinds for the row sums: the block's, then the
 * group's named barriers (FE_RMS_NAMED). */
template <class T, int VPT, bool GE>
static void rms_launch(rb_args<T> a, unsigned nb, bool part, size_t smem) {
    static int turn = 0;
    const bool named = turn++ % 2 && RB_THREADS / a.tpr <= 15;
    if (part && named)
        emu::launch(nb, RB_THREADS, smem, [&] { k_rmsnorm_bwd_fast<T, VPT, true, GE, true>(a); });
    else if (part)
        emu::launch(nb, RB_THREADS, smem, [&] { k_rmsnorm_bwd_fast<T, VPT, true, GE>(a); });
    else if (named)
        emu::launch(nb, RB_THREADS, 0, [&] { k_rmsnorm_bwd_fast<T, VPT, false, GE, true>(a); });
    else
        emu::launch(nb, RB_THREADS, 0, [&] { k_rmsnorm_bwd_fast<T, VPT, false, GE>(a); });
}

template <class T>
static void rms_case(int R, int C, bool has_w, bool has_gx, bool has_gw, bool has_ge, int nb) {
    std::normal_distribution<double> nd(0, 1);
    std::uniform_real_distribution<double> ud(0.5, 2.0);
    size_t E = (size_t)R * C;
    std::vector<T> x(E), gy(E), ge(E), w(C), gx(E, to_t<T>(NAN)), gw(C, to_t<T>(NAN));
    std::vector<float> rstd(R), part((size_t)nb * C, NAN);
    for (auto &v : x) v = to_t<T>(nd(rng) * 1.5 + 0.3);
    for (auto &v : gy) v = to_t<T>(nd(rng));
    for (auto &v : ge) v = to_t<T>(nd(rng));
    for (auto &v : w) v = to_t<T>(nd(rng) * 0.3 + 1);
    for (auto &v : rstd) v = (float)ud(rng);
    /* reference: gx = rs (g w - xhat mean(g w xhat)) + ge, gw = sum over rows of g xhat */
    std::vector<double> rgx(E), rgw(C, 0.0);
    for (int r = 0; r < R; r++) {
        double rs = rstd[r], dot = 0;
        for (int j = 0; j < C; j++) {
            size_t i = (size_t)r * C + j;
            double gwj = to_d(gy[i]) * (has_w ? to_d(w[j]) : 1), xh = to_d(x[i]) * rs;
            dot += gwj * xh;
            rgw[j] += to_d(gy[i]) * xh;
        }
        for (int j = 0; j < C; j++) {
            size_t i = (size_t)r * C + j;
            double gwj = to_d(gy[i]) * (has_w ? to_d(w[j]) : 1), xh = to_d(x[i]) * rs;
            rgx[i] = rs * (gwj - xh * dot / C) + (has_ge ? to_d(ge[i]) : 0);
        }
    }
    /* the launch as rmsnorm_bwd_fast sets it up, on nb blocks */
    int nvec = C / cu_vn<T>::n, vpt = nvec > RB_THREADS ? 2 : 1, tpr = 32;
    while (tpr * vpt < nvec)
        tpr *= 2;
    rb_args<T> a;
    a.gx = has_gx ? gx.data() : NULL;
    a.part = has_gw ? part.data() : NULL;
    a.gy = gy.data(), a.x = x.data(), a.w = has_w ? w.data() : NULL;
    a.ge = has_gx && has_ge ? ge.data() : NULL;
    a.rstd = rstd.data(), a.R = R, a.C = C, a.tpr = tpr;
    size_t smem = (size_t)C * sizeof(float);
    if (a.ge)
        vpt == 1 ? rms_launch<T, 1, true>(a, nb, has_gw, smem) : rms_launch<T, 2, true>(a, nb, has_gw, smem);
    else
        vpt == 1 ? rms_launch<T, 1, false>(a, nb, has_gw, smem)
                 : rms_launch<T, 2, false>(a, nb, has_gw, smem);
    if (has_gw)
        emu::launch((C + CF_TX - 1) / CF_TX, CF_TX * CF_TY, 0,
                    [&] { k_colsum_final_f<T>(gw.data(), part.data(), (int64_t)C, nb); });
    double tol = sizeof(T) == 4 ? 1e-5 : 1e-2;
    if (has_gx) {
        std::vector<double> g(E);
        for (size_t i = 0; i < E; i++) g[i] = to_d(gx[i]);
        double e = relerr(g, rgx);
        expect(e <= tol, "rmsnorm gx, %dx%d, %zu-byte, w %d, ge %d, %d blocks: relative error %g",
               R, C, sizeof(T), has_w, has_ge, nb, e);
    }
    if (has_gw) {
        std::vector<double> g(C);
        for (int j = 0; j < C; j++) g[j] = to_d(gw[j]);
        double e = relerr(g, rgw);
        expect(e <= tol, "rmsnorm gw, %dx%d, %zu-byte, w %d, gx %d, %d blocks: relative error %g",
               R, C, sizeof(T), has_w, has_gx, nb, e);
    }
}

/* ---- embedding backward ------------------------------------------------------------------ */

struct emb_spec {
    int n, V, C;
    int hot, hot_row; /* hot of every 10 positions take hot_row */
    bool bad;         /* about 1 in 7 indices out of range (negative or >= V) */
    int S, H;         /* rows per slice of the sort, sorted entries per block of the rows kernel */
};

template <class T, int VN> static void emb_case(const emb_spec &c) {
    typedef typename cu_acc<T>::type A;
    int n = c.n, V = c.V, C = c.C, S = c.S, H = c.H;
    std::normal_distribution<double> nd(0, 1);
    std::vector<int> idx(n);
    for (int i = 0; i < n; i++) {
        idx[i] = (int)(rng() % 10) < c.hot ? c.hot_row : (int)(rng() % V);
        if (c.bad && rng() % 7 == 0)
            idx[i] = rng() % 8 == 0 ? (rng() % 2 ? INT32_MIN : INT32_MAX)
                     : rng() % 2   ? -1 - (int)(rng() % 5)
                                   : V + (int)(rng() % 5);
    }
    std::vector<long long> idx64(idx.begin(), idx.end());
    std::vector<T> gout((size_t)n * C);
    for (auto &v : gout) v = to_t<T>(nd(rng));
    std::vector<double> ref((size_t)V * C, 0.0);
    std::vector<int> cnt(V, 0);
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= V) continue;
        cnt[idx[i]]++;
        for (int j = 0; j < C; j++) ref[(size_t)idx[i] * C + j] += to_d(gout[(size_t)i * C + j]);
    }
    int nslice = (V + S - 1) / S, nq = (n + H - 1) / H, groups = (V + 31) / 32;
    std::vector<T> first;
    for (int run = 0; run < 2; run++) {
        std::vector<int> start(V + 1, -7);
        std::vector<int4> ent(n + 1, make_int4(-7, -7, -7, -7));
        std::vector<unsigned> ticket(V, 12345u); /* the sort must zero them */
        std::vector<A> part((size_t)(2 * nq + 1) * C, (A)NAN);
        std::vector<T> gw((size_t)V * C, to_t<T>(NAN));
        /* rows blocks: one per entry block, at least one (the zeros need it when n = 0) */
        int G = std::max(nq, run ? groups + 2 : 1);
        std::vector<unsigned> o1(nslice), o2(G);
        for (int i = 0; i < nslice; i++) o1[i] = i;
        for (int i = 0; i < G; i++) o2[i] = i;
        std::shuffle(o1.begin(), o1.end(), rng), std::shuffle(o2.begin(), o2.end(), rng);
        const void *ip = run ? (const void *)idx64.data() : (const void *)idx.data();
        /* run 1 with the L2 prefetch switched on (a no-op here: it must not change a thing) */
        emu::launch(nslice, ES_THREADS, emb_sort_smem(S), [&] {
            emb_pf pf = {run ? (const char *)gout.data() : nullptr, (unsigned)(C * sizeof(T)), H, 4};
            k_emb_sort(ip, run == 1, n, V, S, start.data(), ticket.data(), ent.data(), pf);
        }, o1);
        /* entries (position, row, the row's first place, its end) by row, positions in order;
         * zeros past the last */
        int M = 0;
        bool ok = true;
        for (int v = 0; v < V; v++) {
            ok &= start[v] == M;
            for (int i = 0; i < n; i++)
                if (idx[i] == v)
                    ok &= ent[M].x == i && ent[M].y == v && ent[M].z == start[v] &&
                          ent[M].w == start[v] + cnt[v],
                        M++;
        }
        ok &= start[V] == M;
        for (int s = M; s < n; s++)
            ok &= !ent[s].x && !ent[s].y && !ent[s].z && !ent[s].w;
        expect(ok, "embedding sort: wrong start[] or entries (n %d, V %d, slices of %d, %s)", n, V,
               S, run ? "i64" : "i32");
        emu::launch(G, ER_THREADS, (size_t)6 * H * sizeof(int), [&] {
            k_emb_rows<T, VN>(gw.data(), gout.data(), ent.data(), start.data(), ticket.data(),
                              part.data(), n, V, (int64_t)C, H);
        }, o2);
        std::vector<double> g((size_t)V * C);
        bool zeros = true;
        for (size_t i = 0; i < g.size(); i++) {
            g[i] = to_d(gw[i]);
            if (cnt[i / C] == 0) zeros &= g[i] == 0 && !std::signbit(g[i]);
        }
        double e = relerr(g, ref), tol = sizeof(T) == 8 ? 1e-12 : sizeof(T) == 4 ? 1e-6 : 1e-2;
        expect(e <= tol && zeros,
               "embedding gw, n %d, V %d, C %d, %zu-byte, %d a vector, hot %d, slices of %d, "
               "blocks of %d, %d rows blocks: relative error %g, untouched rows zero: %d",
               n, V, C, sizeof(T), VN, c.hot, S, H, G, e, zeros);
        if (run == 0) first = gw;
        else
            expect(!memcmp(first.data(), gw.data(), gw.size() * sizeof(T)),
                   "embedding gw, n %d, V %d, blocks of %d: a second run differs", n, V, H);
    }
}

int main() {
    static const int shapes[][2] = {{67, 256}, {5, 2048}, {3, 4096}, {9, 8192},
                                    {33, 64},  {1, 8},    {130, 768}, {7, 4104}};
    for (auto &s : shapes) {
        int R = s[0], C = s[1];
        for (int f = 0; f < 16; f++) {
            bool w = f & 1, gx = f & 2, gw = f & 4, ge = f & 8;
            if (!gx && !gw) continue;
            for (int nb : {1, 2, 5}) {
                if (C % 8 == 0 && C / 8 <= RB_MAX_VEC) rms_case<__nv_bfloat16>(R, C, w, gx, gw, ge, nb);
                if (C % 4 == 0 && C / 4 <= RB_MAX_VEC) rms_case<float>(R, C, w, gx, gw, ge, nb);
            }
        }
        printf("rmsnorm backward %dx%d: %d failures so far\n", R, C, fails);
    }
    static const emb_spec cases[] = {
        {0, 7, 16, 0, 0, false, 32, 64},       {1, 9, 16, 0, 0, false, 32, 64},
        {111, 50, 32, 0, 0, false, 32, 64},    {111, 50, 32, 0, 0, true, 32, 4},
        {3000, 50, 16, 7, 25, false, 32, 64},  {3000, 50, 16, 7, 25, true, 32, 8},
        {2000, 37, 8, 0, 0, false, 32, 3},     {700, 300, 24, 2, 150, true, 32, 3},
        {4099, 4, 8, 10, 2, false, 32, 64},    {4099, 4, 8, 10, 2, false, 32, 5},
        {2000, 1000, 8, 3, 999, true, 64, 16}, {2000, 1000, 8, 3, 0, true, 1280, 16},
        {777, 100, 40, 5, 31, true, 32, 1},    {64, 3, 8, 0, 0, true, 32, 64},
        {33, 5000, 8, 0, 0, true, 256, 64},
    };
    for (auto &c : cases) {
        emb_case<float, 4>(c);
        emb_case<float, 1>(c);
        emb_case<__nv_bfloat16, 8>(c);
        emb_case<double, 2>(c);
        emb_spec odd = c;
        odd.C = c.C + 1; /* rows that are not a multiple of 16 bytes take the element path */
        emb_case<__half, 1>(odd);
        printf("embedding backward n %d, V %d: %d failures so far\n", c.n, c.V, fails);
    }
    /* rows wider than a block's threads (two passes of the column loop) */
    emb_case<__nv_bfloat16, 8>({300, 20, 4096, 5, 3, true, 32, 16});
    emb_case<float, 4>({300, 20, 2052, 5, 3, true, 32, 16});
    printf("%s: %d failures\n", fails ? "FAIL" : "PASS", fails);
    return fails != 0;
}
