/* Kernel benchmark: the fused memory-bound kernels, the optimizer and the GEMMs at Llama
 * sizes, timed on one device, one line per kernel:
 *
 *   KERNEL {"name": ..., "size": ..., "dtype": ..., "ms": ..., "bytes": ..., "gbps": ...,
 *           "pct_copy": ...}            (memory-bound kernels)
 *   KERNEL {..., "flops": ..., "tflops": ...}   (GEMMs)
 *
 * Timing: warm-up, then 5 runs of `iters` back-to-back calls between two
 * fe_device_sync calls on a monotonic clock; the median run's time per call. Inputs
 * rotate between 2 or more copies so that no call finds its inputs in L2. Bytes count
 * each input read once and each output written once. The copy bandwidth is measured
 * first, in the same program, with a large device-to-device fe_copy_.
 *
 * Forward kernels run through the public ops API (tape off); backward kernels, which
 * the public API only reaches through fe_backward's gradient bookkeeping, are called
 * through the backend table so that the line times the kernel alone.
 *
 *   bench/build.sh && bench/kernels [--device cpu|cuda] [--small] [--only SUBSTRING]
 *
 * --small shrinks every size (a smoke test that runs on the CPU in seconds). */
#include "backends/backend.h"
#include "ferric/ferric.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NRUNS 5
#define MAXROT 4

static fe_device g_dev;
static bool g_small;
static const char *g_only;
static double g_copy_gbps = 0;
static double g_target_ms = 25.0; /* wall time of one run */
#define SETTLE_MS 300.0           /* GEMMs: busy time before the timed runs */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void die_if(bool bad, const char *what) {
    if (bad) {
        fprintf(stderr, "kernels: %s failed: %s\n", what, fe_last_error());
        exit(1);
    }
}

/* One benchmark: fn runs the kernel once on input copy `r`. */
typedef struct bench {
    const char *name;
    char size[96];
    const char *dtype;
    double bytes, flops;
    int nrot;
    fe_tensor *t[MAXROT][8]; /* inputs (and preallocated outputs) per copy */
    double f[4];             /* scalar arguments */
    fe_status (*fn)(struct bench *b, int r);
} bench;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* n calls of b, the inputs rotating from copy *r on, then wait for the device. Each call runs
 * in its own scope, so the outputs it allocates go back to the caching allocator. */
static void run_calls(bench *b, int *r, int n) {
    for (int i = 0; i < n; i++) {
        fe_scope *s = fe_scope_begin();
        die_if(b->fn(b, *r) != FE_OK, b->name);
        fe_scope_end(s);
        *r = (*r + 1) % b->nrot;
    }
    die_if(fe_device_sync(g_dev) != FE_OK, "sync");
}

/* Median milliseconds per call. */
static double time_bench(bench *b) {
    int r = 0;
    run_calls(b, &r, 2); /* warm-up */
    double t0 = now_ms();
    run_calls(b, &r, 1);
    double one = now_ms() - t0;
    int iters = one > 0 ? (int)(g_target_ms / one) : 100;
    if (iters < 3) iters = 3;
    if (iters > 200) iters = 200;
    /* GEMMs: keep the card busy for SETTLE_MS first, so that its clocks have settled under
     * the product's power draw (as bench/kernels.py does for torch) */
    for (double t1 = now_ms(); b->flops > 0 && !g_small && now_ms() - t1 < SETTLE_MS;)
        run_calls(b, &r, iters);
    double runs[NRUNS];
    for (int k = 0; k < NRUNS; k++) {
        double a = now_ms();
        run_calls(b, &r, iters);
        runs[k] = (now_ms() - a) / iters;
    }
    qsort(runs, NRUNS, sizeof runs[0], cmp_d);
    return runs[NRUNS / 2];
}

static bool selected(const char *name) { return !g_only || strstr(name, g_only); }

static void report(bench *b) {
    double ms = time_bench(b);
    printf("KERNEL {\"name\": \"%s\", \"size\": \"%s\", \"dtype\": \"%s\", \"ms\": %.6f", b->name,
           b->size, b->dtype, ms);
    if (b->flops > 0) {
        printf(", \"flops\": %.6g, \"tflops\": %.3f", b->flops, b->flops / (ms * 1e-3) / 1e12);
    } else {
        double gbps = b->bytes / (ms * 1e-3) / 1e9;
        printf(", \"bytes\": %.6g, \"gbps\": %.2f, \"pct_copy\": %.1f", b->bytes, gbps,
               g_copy_gbps > 0 ? 100.0 * gbps / g_copy_gbps : 0.0);
    }
    printf("}\n");
    fflush(stdout);
}

/* Release every tensor of b. */
static void release(bench *b) {
    for (int r = 0; r < MAXROT; r++)
        for (int i = 0; i < 8; i++)
            fe_free(b->t[r][i]), b->t[r][i] = NULL;
}

static fe_tensor *rnd(int ndim, const int64_t *shape, fe_dtype dt, double std) {
    fe_tensor *t = fe_randn(ndim, shape, 0.0, std, dt, g_dev);
    die_if(!t, "randn");
    return t;
}

static fe_tensor *idx_tensor(int64_t n, int64_t vocab) {
    int32_t *h = malloc((size_t)n * sizeof *h);
    uint64_t s = 12345;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
    }
    fe_tensor *t = fe_from_data(h, 1, &n, FE_I32, g_dev);
    free(h);
    die_if(!t, "indices");
    return t;
}

/* Copies for rotation: enough that they do not fit a 50 MB L2 together. */
static int rot_for(double set_bytes) {
    int n = set_bytes >= 64e6 ? 2 : (int)ceil(128e6 / (set_bytes > 1 ? set_bytes : 1));
    return n < 1 ? 1 : n > MAXROT ? MAXROT : n;
}

static int64_t S(int64_t n) { return g_small ? (n >= 64 ? n / 64 : n) : n; }

/* ---- kernels -------------------------------------------------------------------------- */

static fe_status k_copy(bench *b, int r) { return fe_copy_(b->t[r][1], b->t[r][0]); }
static fe_status k_cast(bench *b, int r) { return fe_cast(b->t[r][0], FE_BF16) ? FE_OK : fe_last_status(); }
static fe_status k_rmsnorm(bench *b, int r) {
    return fe_rmsnorm(b->t[r][0], b->t[r][1], 1e-5) ? FE_OK : fe_last_status();
}
static fe_status k_rmsnorm_res(bench *b, int r) {
    fe_tensor *h, *y;
    return fe_rmsnorm_residual(b->t[r][0], b->t[r][2], b->t[r][1], 1e-5, &h, &y);
}
static fe_status k_rmsnorm_bwd(bench *b, int r) {
    fe_tensor **t = b->t[r]; /* x, w, gy, rstd, gx, gw */
    return fe__be(t[0])->rmsnorm_backward(t[4], t[5], t[2], t[0], t[1], t[3], NULL);
}
static fe_status k_rmsnorm_bwd_dx(bench *b, int r) { /* frozen weight (LoRA): no gw */
    fe_tensor **t = b->t[r];
    return fe__be(t[0])->rmsnorm_backward(t[4], NULL, t[2], t[0], t[1], t[3], NULL);
}
static fe_status k_silu(bench *b, int r) {
    return fe_silu_gate(b->t[r][0], b->t[r][1]) ? FE_OK : fe_last_status();
}
static fe_status k_silu_bwd(bench *b, int r) {
    fe_tensor **t = b->t[r]; /* a, b, g, ga, gb */
    return fe__be(t[0])->silu_gate_backward(t[3], t[4], t[2], t[0], t[1]);
}
static fe_status k_softmax(bench *b, int r) {
    return fe_softmax(b->t[r][0], -1) ? FE_OK : fe_last_status();
}
static fe_status k_ce(bench *b, int r) {
    return fe_cross_entropy(b->t[r][0], b->t[r][1], -100) ? FE_OK : fe_last_status();
}
static fe_status k_ce_bwd(bench *b, int r) {
    fe_tensor **t = b->t[r]; /* logits, targets, gloss, glogits */
    return fe__be(t[0])->cross_entropy_backward(t[3], t[2], t[0], t[1], -100);
}
static fe_status k_emb(bench *b, int r) {
    return fe_embedding(b->t[r][0], b->t[r][1]) ? FE_OK : fe_last_status();
}
static fe_status k_emb_bwd(bench *b, int r) {
    fe_tensor **t = b->t[r]; /* gw, gout, idx */
    return fe__be(t[1])->embedding_backward(t[0], t[1], t[2]);
}
static fe_status k_matmul(bench *b, int r) {
    return fe_matmul(b->t[r][0], b->t[r][1], b->f[0] != 0, b->f[1] != 0) ? FE_OK
                                                                           : fe_last_status();
}

static void run_bench(bench *b) {
    if (selected(b->name)) report(b);
    release(b);
}

static void bench_copy(void) {
    int64_t n = S(512ll << 20); /* 1 GiB of bf16 */
    bench b = {.name = "copy_d2d", .dtype = "bf16", .nrot = 1, .fn = k_copy};
    snprintf(b.size, sizeof b.size, "%lld", (long long)n);
    b.t[0][0] = rnd(1, &n, FE_BF16, 1.0);
    b.t[0][1] = fe_empty(1, &n, FE_BF16, g_dev);
    b.bytes = 2.0 * n * 2;
    double ms = time_bench(&b);
    g_copy_gbps = b.bytes / (ms * 1e-3) / 1e9;
    printf("KERNEL {\"name\": \"copy_d2d\", \"size\": \"%lld\", \"dtype\": \"bf16\", \"ms\": %.6f, "
           "\"bytes\": %.6g, \"gbps\": %.2f, \"pct_copy\": 100.0}\n",
           (long long)n, ms, b.bytes, g_copy_gbps);
    release(&b);
}

static void bench_rows(int64_t R0, int64_t C) {
    int64_t R = S(R0), sh[2] = {R, C}, e = R * C;
    fe_dtype dt = FE_BF16;
    double E = (double)e * 2, W = (double)C * 2, st = (double)R * 4;
    int nrot = rot_for(3 * E);
    char size[96];
    snprintf(size, sizeof size, "%lldx%lld", (long long)R, (long long)C);
    {
        bench b = {.name = "rmsnorm_fwd", .dtype = "bf16", .nrot = nrot, .fn = k_rmsnorm};
        for (int r = 0; r < nrot; r++)
            b.t[r][0] = rnd(2, sh, dt, 1.0), b.t[r][1] = rnd(1, &C, dt, 1.0);
        b.bytes = E + W + E + st;
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "rmsnorm_residual_fwd", .dtype = "bf16", .nrot = nrot, .fn = k_rmsnorm_res};
        for (int r = 0; r < nrot; r++)
            b.t[r][0] = rnd(2, sh, dt, 1.0), b.t[r][1] = rnd(1, &C, dt, 1.0),
            b.t[r][2] = rnd(2, sh, dt, 1.0);
        b.bytes = 2 * E + W + 2 * E + st; /* x, r, w in; h, y, rstd out */
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "rmsnorm_bwd", .dtype = "bf16", .nrot = nrot, .fn = k_rmsnorm_bwd};
        for (int r = 0; r < nrot; r++) {
            fe_tensor **t = b.t[r];
            t[0] = rnd(2, sh, dt, 1.0), t[1] = rnd(1, &C, dt, 1.0), t[2] = rnd(2, sh, dt, 1.0);
            t[3] = fe_rand(1, &R, 0.5, 2.0, FE_F32, g_dev);
            t[4] = fe_empty(2, sh, dt, g_dev), t[5] = fe_empty(1, &C, dt, g_dev);
        }
        b.bytes = E + E + W + st + E + W; /* gy, x, w, rstd in; gx, gw out */
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "rmsnorm_bwd_dx", .dtype = "bf16", .nrot = nrot, .fn = k_rmsnorm_bwd_dx};
        for (int r = 0; r < nrot; r++) {
            fe_tensor **t = b.t[r];
            t[0] = rnd(2, sh, dt, 1.0), t[1] = rnd(1, &C, dt, 1.0), t[2] = rnd(2, sh, dt, 1.0);
            t[3] = fe_rand(1, &R, 0.5, 2.0, FE_F32, g_dev);
            t[4] = fe_empty(2, sh, dt, g_dev);
        }
        b.bytes = E + E + W + st + E; /* gy, x, w, rstd in; gx out */
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "silu_gate_fwd", .dtype = "bf16", .nrot = nrot, .fn = k_silu};
        for (int r = 0; r < nrot; r++)
            b.t[r][0] = rnd(2, sh, dt, 1.0), b.t[r][1] = rnd(2, sh, dt, 1.0);
        b.bytes = 3 * E;
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "silu_gate_bwd", .dtype = "bf16", .nrot = nrot, .fn = k_silu_bwd};
        for (int r = 0; r < nrot; r++) {
            fe_tensor **t = b.t[r];
            t[0] = rnd(2, sh, dt, 1.0), t[1] = rnd(2, sh, dt, 1.0), t[2] = rnd(2, sh, dt, 1.0);
            t[3] = fe_empty(2, sh, dt, g_dev), t[4] = fe_empty(2, sh, dt, g_dev);
        }
        b.bytes = 5 * E;
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "softmax_fwd", .dtype = "bf16", .nrot = nrot, .fn = k_softmax};
        for (int r = 0; r < nrot; r++)
            b.t[r][0] = rnd(2, sh, dt, 1.0);
        b.bytes = 2 * E;
        strcpy(b.size, size), run_bench(&b);
    }
}

static void bench_ce(int64_t N0, int64_t V) {
    int64_t N = S(N0), sh[2] = {N, V};
    double E = (double)N * V * 2;
    int nrot = rot_for(E);
    char size[96];
    snprintf(size, sizeof size, "%lldx%lld", (long long)N, (long long)V);
    {
        bench b = {.name = "cross_entropy_fwd", .dtype = "bf16", .nrot = nrot, .fn = k_ce};
        for (int r = 0; r < nrot; r++)
            b.t[r][0] = rnd(2, sh, FE_BF16, 2.0), b.t[r][1] = idx_tensor(N, V);
        b.bytes = E + N * 4.0 + 4;
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "cross_entropy_bwd", .dtype = "bf16", .nrot = nrot, .fn = k_ce_bwd};
        int64_t one = 1;
        for (int r = 0; r < nrot; r++) {
            fe_tensor **t = b.t[r];
            t[0] = rnd(2, sh, FE_BF16, 2.0), t[1] = idx_tensor(N, V);
            t[2] = fe_full(1, &one, 1.0, FE_F32, g_dev), t[3] = fe_empty(2, sh, FE_BF16, g_dev);
        }
        b.bytes = E + N * 4.0 + E;
        strcpy(b.size, size), run_bench(&b);
    }
}

static void bench_embedding(int64_t N0, int64_t V0, int64_t C) {
    int64_t N = S(N0), V = S(V0), wsh[2] = {V, C}, osh[2] = {N, C};
    double rows = (double)N * C * 2;
    char size[96];
    snprintf(size, sizeof size, "%lld of %lldx%lld", (long long)N, (long long)V, (long long)C);
    {
        bench b = {.name = "embedding_fwd", .dtype = "bf16", .nrot = 2, .fn = k_emb};
        for (int r = 0; r < 2; r++)
            b.t[r][0] = rnd(2, wsh, FE_BF16, 1.0), b.t[r][1] = idx_tensor(N, V);
        b.bytes = rows + N * 4.0 + rows; /* rows read, indices, rows written */
        strcpy(b.size, size), run_bench(&b);
    }
    {
        bench b = {.name = "embedding_bwd", .dtype = "bf16", .nrot = 2, .fn = k_emb_bwd};
        for (int r = 0; r < 2; r++) {
            b.t[r][0] = fe_empty(2, wsh, FE_BF16, g_dev);
            b.t[r][1] = rnd(2, osh, FE_BF16, 1.0), b.t[r][2] = idx_tensor(N, V);
        }
        b.bytes = rows + N * 4.0 + (double)V * C * 2; /* gout, indices in; gw written */
        strcpy(b.size, size), run_bench(&b);
    }
}

static void bench_cast(int64_t R0, int64_t C) {
    int64_t R = S(R0), sh[2] = {R, C};
    bench b = {.name = "cast_f32_bf16", .dtype = "f32->bf16", .nrot = 2, .fn = k_cast};
    for (int r = 0; r < 2; r++)
        b.t[r][0] = rnd(2, sh, FE_F32, 1.0);
    b.bytes = (double)R * C * 6;
    snprintf(b.size, sizeof b.size, "%lldx%lld", (long long)R, (long long)C);
    run_bench(&b);
}

/* out (M, N) = x (M, K) @ W^T, W (N, K); dX (M, K) = dY @ W; dW (N, K) = dY^T @ X */
static void bench_gemm(int64_t M0, int64_t K0, int64_t N0) {
    int64_t M = S(M0), K = S(K0), N = S(N0);
    struct {
        const char *name;
        int64_t a[2], b[2];
        bool ta, tb;
    } v[3] = {{"matmul_fwd_xWt", {M, K}, {N, K}, false, true},
              {"matmul_bwd_dYW", {M, N}, {N, K}, false, false},
              {"matmul_bwd_dYtX", {M, N}, {M, K}, true, false}};
    for (int i = 0; i < 3; i++) {
        bench b = {.name = v[i].name, .dtype = "bf16", .nrot = 2, .fn = k_matmul};
        if (!selected(b.name)) continue;
        for (int r = 0; r < 2; r++)
            b.t[r][0] = rnd(2, v[i].a, FE_BF16, 1.0), b.t[r][1] = rnd(2, v[i].b, FE_BF16, 0.02);
        b.f[0] = v[i].ta, b.f[1] = v[i].tb;
        b.flops = 2.0 * M * N * K;
        snprintf(b.size, sizeof b.size, "M=%lld K=%lld N=%lld", (long long)M, (long long)K,
                 (long long)N);
        run_bench(&b);
    }
}

/* gelu(x W^T + bias) (tanh form), x (M, K), W (N, K): with the bias and GELU as the GEMM's
 * epilogue, and composed (FE_LINEAR_EPILOGUE=0: product, bias add, GELU, one pass each) */
static fe_status k_linear_gelu(bench *b, int r) {
    return fe_linear_gelu(b->t[r][0], b->t[r][1], b->t[r][2]) ? FE_OK : fe_last_status();
}

static void bench_linear_gelu(int64_t M0, int64_t K0, int64_t N0) {
    int64_t M = S(M0), K = S(K0), N = S(N0), sx[2] = {M, K}, sw[2] = {N, K};
    for (int fused = 1; fused >= 0; fused--) {
        bench b = {.name = fused ? "linear_gelu_epilogue" : "linear_gelu_composed", .dtype = "bf16",
                   .nrot = 2, .fn = k_linear_gelu};
        if (!selected(b.name)) continue;
        if (fused)
            unsetenv("FE_LINEAR_EPILOGUE");
        else
            setenv("FE_LINEAR_EPILOGUE", "0", 1);
        for (int r = 0; r < 2; r++)
            b.t[r][0] = rnd(2, sx, FE_BF16, 1.0), b.t[r][1] = rnd(2, sw, FE_BF16, 0.02),
            b.t[r][2] = rnd(1, &N, FE_BF16, 0.1);
        b.flops = 2.0 * M * N * K;
        snprintf(b.size, sizeof b.size, "M=%lld K=%lld N=%lld", (long long)M, (long long)K,
                 (long long)N);
        run_bench(&b);
    }
    unsetenv("FE_LINEAR_EPILOGUE");
}

/* The parameter shapes of a Llama with dim 768, 12 layers, MLP 2048, vocab 32000 and an
 * untied head: 134M parameters. */
static fe_params *llama_134m(fe_dtype dt) {
    fe_params *p = fe_params_new();
    int64_t d = S(768), h = S(2048), V = S(32000);
    char nm[64];
    int64_t emb[2] = {V, d}, sq[2] = {d, d}, up[2] = {h, d}, down[2] = {d, h};
    die_if(fe_params_add_normal(p, "embed", 2, emb, 0.02, dt, g_dev, false) < 0, "param");
    for (int l = 0; l < 12; l++) {
        const char *names[9] = {"q", "k", "v", "o", "gate", "up", "down", "norm1", "norm2"};
        for (int k = 0; k < 9; k++) {
            snprintf(nm, sizeof nm, "l%d.%s", l, names[k]);
            int rc = k < 4   ? fe_params_add_normal(p, nm, 2, sq, 0.02, dt, g_dev, false)
                     : k < 6 ? fe_params_add_normal(p, nm, 2, up, 0.02, dt, g_dev, false)
                     : k < 7 ? fe_params_add_normal(p, nm, 2, down, 0.02, dt, g_dev, false)
                             : fe_params_add_full(p, nm, 1, &d, 1.0, dt, g_dev, true);
            die_if(rc < 0, "param");
        }
    }
    die_if(fe_params_add_full(p, "norm", 1, &d, 1.0, dt, g_dev, true) < 0, "param");
    die_if(fe_params_add_normal(p, "head", 2, emb, 0.02, dt, g_dev, false) < 0, "param");
    /* contiguous random gradients: d sum(c * p) / dp = c */
    for (int i = 0; i < fe_params_count(p); i++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *t = fe_params_at(p, i);
        fe_tensor *c = fe_randn(fe_ndim(t), fe_shape(t), 0.0, 1e-3, dt, g_dev);
        die_if(fe_backward(fe_sum(fe_mul(c, t), 0, NULL, false), NULL) != FE_OK, "grads");
        fe_scope_end(s);
    }
    return p;
}

typedef struct optctx {
    fe_optimizer *o;
    fe_params *p;
} optctx;
static optctx g_opt;
static fe_status k_adamw(bench *b, int r) { return fe_optimizer_step(g_opt.o, 1e-4); }
static fe_status k_clip(bench *b, int r) {
    return fe_clip_grad_norm(g_opt.p, 1e9) ? FE_OK : fe_last_status(); /* never clips */
}

static void bench_optimizer(void) {
    if (!selected("adamw") && !selected("clip_grad_norm")) return;
    fe_params *p = llama_134m(FE_F32);
    g_opt.p = p;
    g_opt.o = fe_adamw_new(p, NULL);
    die_if(!g_opt.o, "adamw_new");
    double n = (double)fe_params_numel(p);
    char size[96];
    snprintf(size, sizeof size, "%.1fM params, %d tensors", n / 1e6, fe_params_count(p));
    for (int fused = 1; fused >= 0; fused--) {
        if (fused)
            unsetenv("FE_FUSED_OPTIM");
        else
            setenv("FE_FUSED_OPTIM", "0", 1);
        bench b = {.name = fused ? "adamw_fused" : "adamw_unfused", .dtype = "f32", .nrot = 1,
                   .fn = k_adamw};
        b.bytes = n * 28; /* p, g, m, v read; p, m, v written */
        strcpy(b.size, size);
        if (selected(b.name)) report(&b);
        bench c = {.name = fused ? "clip_grad_norm_fused" : "clip_grad_norm_unfused",
                   .dtype = "f32", .nrot = 1, .fn = k_clip};
        c.bytes = n * 12; /* grads read for the norm, read and written by the scale */
        strcpy(c.size, size);
        if (selected(c.name)) report(&c);
    }
    unsetenv("FE_FUSED_OPTIM");
    fe_optimizer_free(g_opt.o);
    fe_params_free(p);
}

/* The update of a TinyLlama step under bf16 mixed precision, as fe_optimizer_update's fused
 * path makes it: the sum of squares of the bf16 model gradients (the clipping norm), then
 * AdamW on the f32 masters reading those gradients times a device clip coefficient and
 * writing the bf16 compute copies. Both through the backend table, on every parameter of
 * TinyLlama 1.1B (dim 2048, 22 layers, MLP 5632, 4 KV heads, vocab 32000, untied head:
 * 201 tensors). */
#define AMP_MAXT 256
typedef struct ampctx {
    int n;
    fe_tensor *p[AMP_MAXT], *g[AMP_MAXT], *m[AMP_MAXT], *v[AMP_MAXT], *c[AMP_MAXT];
    double wd[AMP_MAXT];
    fe_tensor *coef, *sq;
} ampctx;
static ampctx g_amp;

static void amp_add(const int64_t *shape, int ndim, bool decay) {
    ampctx *a = &g_amp;
    int i = a->n++;
    a->p[i] = rnd(ndim, shape, FE_F32, 0.02);
    a->g[i] = rnd(ndim, shape, FE_BF16, 1e-3);
    a->m[i] = rnd(ndim, shape, FE_F32, 1e-4);
    fe_scope *s = fe_scope_begin();
    fe_tensor *r = rnd(ndim, shape, FE_F32, 1e-3);
    a->v[i] = fe_keep(fe_mul(r, r)); /* positive, ~1e-6, as a trained second moment */
    fe_scope_end(s);
    die_if(!a->v[i], "square");
    a->c[i] = fe_empty(ndim, shape, FE_BF16, g_dev);
    die_if(!a->c[i], "empty");
    a->wd[i] = decay ? 0.1 : 0.0;
}

static fe_status k_amp_adamw(bench *b, int r) {
    ampctx *a = &g_amp;
    fe_adamw_args args = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                          .bc1 = 1 - pow(0.9, 100), .bc2 = 1 - pow(0.95, 100),
                          .weight_decay = a->wd, .grad_scale = a->coef, .copy = a->c};
    return fe__be(a->p[0])->adamw(a->n, a->p, (const fe_tensor *const *)a->g, a->m, a->v, &args);
}
static fe_status k_amp_sumsq(bench *b, int r) {
    ampctx *a = &g_amp;
    return fe__be(a->g[0])->grad_norm_sq(a->sq, a->n, (const fe_tensor *const *)a->g, 1.0);
}

static void bench_amp_update(void) {
    if (!selected("adamw_amp_bf16") && !selected("grad_norm_sq_bf16")) return;
    int64_t d = S(2048), h = S(5632), kv = S(256), V = S(32000);
    int64_t emb[2] = {V, d}, sq[2] = {d, d}, kvs[2] = {kv, d}, up[2] = {h, d}, down[2] = {d, h};
    g_amp.n = 0;
    amp_add(emb, 2, true);
    for (int l = 0; l < 22; l++) {
        amp_add(sq, 2, true), amp_add(kvs, 2, true), amp_add(kvs, 2, true), amp_add(sq, 2, true);
        amp_add(up, 2, true), amp_add(up, 2, true), amp_add(down, 2, true);
        amp_add(&d, 1, false), amp_add(&d, 1, false);
    }
    amp_add(&d, 1, false);
    amp_add(emb, 2, true);
    g_amp.coef = fe_full(1, (int64_t[]){1}, 0.8, FE_F32, g_dev);
    g_amp.sq = fe_zeros(1, (int64_t[]){1}, FE_F64, g_dev);
    die_if(!g_amp.coef || !g_amp.sq, "scalars");
    double n = 0;
    for (int i = 0; i < g_amp.n; i++)
        n += (double)fe_numel(g_amp.p[i]);
    char size[96];
    snprintf(size, sizeof size, "%.1fM params, %d tensors", n / 1e6, g_amp.n);
    bench b = {.name = "adamw_amp_bf16", .dtype = "f32+bf16", .nrot = 1, .fn = k_amp_adamw};
    b.bytes = n * 28; /* p, m, v (f32) and the bf16 gradient read; p, m, v and the bf16 copy written */
    strcpy(b.size, size);
    if (selected(b.name)) report(&b);
    bench c = {.name = "grad_norm_sq_bf16", .dtype = "bf16", .nrot = 1, .fn = k_amp_sumsq};
    c.bytes = n * 2; /* the bf16 gradients read once */
    strcpy(c.size, size);
    if (selected(c.name)) report(&c);
    for (int i = 0; i < g_amp.n; i++) {
        fe_free(g_amp.p[i]), fe_free(g_amp.g[i]), fe_free(g_amp.m[i]);
        fe_free(g_amp.v[i]), fe_free(g_amp.c[i]);
    }
    fe_free(g_amp.coef), fe_free(g_amp.sq);
    g_amp.n = 0;
}

int main(int argc, char **argv) {
    const char *devname = "cuda";
    long long gemm_k = 0, gemm_n = 0; /* --gemm: that product's three GEMMs alone */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            devname = argv[++i];
        else if (!strcmp(argv[i], "--small"))
            g_small = true, g_target_ms = 2.0;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            g_only = argv[++i];
        else if (!strcmp(argv[i], "--gemm") && i + 1 < argc &&
                 sscanf(argv[i + 1], "%lld,%lld", &gemm_k, &gemm_n) == 2)
            i++;
        else {
            fprintf(stderr, "usage: kernels [--device cpu|cuda] [--small] [--only SUBSTRING] "
                            "[--gemm K,N]\n");
            return 2;
        }
    }
    if (!fe_device_parse(devname, &g_dev) || !fe_device_available(g_dev.type)) {
        fprintf(stderr, "kernels: device '%s' is not available\n", devname);
        return 1;
    }
    fe_set_grad_enabled(false);
    fe_manual_seed(1);
    if (gemm_k > 0) {
        bench_gemm(16384, gemm_k, gemm_n);
        return 0;
    }
    bench_copy();
    fe_set_grad_enabled(false);
    bench_rows(16384, 2048);
    bench_rows(8192, 4096);
    bench_ce(16384, 32000);
    bench_embedding(16384, 32000, 2048);
    bench_cast(8192, 4096);
    fe_set_grad_enabled(true); /* the optimizer bench plants grads with backward */
    bench_optimizer();
    fe_set_grad_enabled(false);
    bench_amp_update();
    static const int64_t shapes[][2] = {{768, 768},   {768, 2048},   {2048, 768},
                                        {768, 32000}, {2048, 2048},  {2048, 5632},
                                        {5632, 2048}, {2048, 32000}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        bench_gemm(16384, shapes[i][0], shapes[i][1]);
    bench_linear_gelu(16384, 768, 3072); /* a GPT-2-small MLP's first product */
    return 0;
}
