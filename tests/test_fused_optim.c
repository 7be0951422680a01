/* The multi-tensor optimizer kernels (fe_backend.adamw, grad_norm_sq, scale_multi):
 * hand-computed values of each entry, the fused AdamW step and clipping against the
 * composed-ops path (FE_FUSED_OPTIM=0) on the CPU over several steps with weight decay
 * on some tensors, clipping and f64/f32/bf16 parameters, and the CUDA kernels against
 * the CPU ones (skipped without a GPU). */
#include "backends/backend.h"
#include "ferric/nn.h"
#include "ferric/train.h"
#include "test.h"

#define CPU FE_DEVICE_CPU
#define GPU ((fe_device){FE_CUDA, 0})

/* Deterministic values in [-1, 1) from a 64-bit LCG. */
static double lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / (double)(1ull << 52) - 1.0;
}

/* A tensor of k values drawn from seed, as dtype dt on dev (scale multiplies them). */
static fe_tensor *values(int64_t k, uint64_t seed, double scale, fe_dtype dt, fe_device dev) {
    double *x = malloc((size_t)k * sizeof *x);
    for (int64_t i = 0; i < k; i++)
        x[i] = scale * lcg(&seed);
    fe_tensor *h = fe_from_data(x, 1, &k, FE_F64, CPU);
    free(x);
    fe_tensor *d = fe_to_device(h, dev);
    fe_tensor *c = fe_cast(d, dt);
    fe_free(h), fe_free(d);
    return c;
}

/* Sizes of the test registry: a tensor over two 32768-element chunks, odd sizes, and
 * enough small ones that a CUDA launch (40 tensors at most) has to be split. */
#define NBIG 6
static const int64_t k_big[NBIG] = {37, 645, 4099, 3, 70001, 2048};
#define NSMALL 40
static int64_t size_of(int i) { return i < NBIG ? k_big[i] : 1 + (i - NBIG) % 13; }

static fe_params *make_params(fe_dtype dt, fe_device dev, int n) {
    fe_params *p = fe_params_new();
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", i);
        fe_tensor *t = values(size_of(i), 1000 + (uint64_t)i, 1.0, dt, dev);
        fe_set_requires_grad(t, true);
        fe_params_add(p, name, t, i % 3 == 1); /* every third tensor: no decay */
    }
    return p;
}

/* Give parameter i the gradient values(seed(step, i)) * gscale. */
static void plant_grads(fe_params *p, int step, double gscale) {
    fe_scope *s = fe_scope_begin();
    for (int i = 0; i < fe_params_count(p); i++) {
        fe_tensor *t = fe_params_at(p, i);
        fe_tensor *c = values(fe_numel(t), 77 + 131 * (uint64_t)step + (uint64_t)i, gscale,
                              fe_dtype_of(t), fe_device_of(t));
        fe_backward(fe_sum(fe_mul(c, t), 0, NULL, false), NULL);
    }
    fe_scope_end(s);
}

/* Everything a run ends with, on the host in f64: each parameter, then each state
 * tensor (m, v), then the norm of every step. */
typedef struct snap {
    double *x;
    int64_t n, nparam, nstate; /* nparam values of parameters, then nstate of state */
} snap;

static void append(snap *s, const fe_tensor *t) {
    int64_t k = fe_numel(t);
    s->x = realloc(s->x, (size_t)(s->n + k) * sizeof *s->x);
    fe_to_host(t, s->x + s->n, FE_F64);
    s->n += k;
}

/* `steps` AdamW steps (with clipping to max_norm when > 0) on a fresh registry of n
 * tensors of dtype dt on dev; fused says whether the fused kernels may be used. */
static snap run(fe_dtype dt, fe_device dev, int n, int steps, double max_norm, bool fused) {
    if (fused)
        unsetenv("FE_FUSED_OPTIM");
    else
        setenv("FE_FUSED_OPTIM", "0", 1);
    snap s = {0};
    fe_params *p = make_params(dt, dev, n);
    fe_adamw_config cfg = {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
    fe_optimizer *o = fe_adamw_new(p, &cfg);
    double norms[16];
    for (int k = 0; k < steps; k++) {
        plant_grads(p, k, 1.0 + k);
        fe_scope *sc = fe_scope_begin();
        fe_tensor *nrm = fe_clip_grad_norm(p, max_norm);
        norms[k] = nrm ? fe_item(nrm) : NAN;
        fe_scope_end(sc);
        CHECK(fe_optimizer_step(o, 0.01 * (k + 1)) == FE_OK);
        fe_params_zero_grad(p);
    }
    for (int i = 0; i < n; i++)
        append(&s, fe_params_at(p, i));
    s.nparam = s.n;
    for (int i = 1; i < fe_optimizer_state_count(o); i++) {
        fe_state_item it;
        fe_optimizer_state_item(o, i, &it);
        append(&s, it.tensor);
    }
    s.nstate = s.n - s.nparam;
    s.x = realloc(s.x, (size_t)(s.n + steps) * sizeof *s.x);
    for (int k = 0; k < steps; k++)
        s.x[s.n++] = norms[k];
    fe_optimizer_free(o);
    fe_params_free(p);
    unsetenv("FE_FUSED_OPTIM");
    return s;
}

/* ||a - b|| / ||b|| over entries [i0, i1). */
static double relerr(const snap *a, const snap *b, int64_t i0, int64_t i1) {
    if (a->n != b->n) return INFINITY;
    double num = 0, den = 0;
    for (int64_t i = i0; i < i1; i++) {
        num += (a->x[i] - b->x[i]) * (a->x[i] - b->x[i]);
        den += b->x[i] * b->x[i];
    }
    double r = sqrt(num) / (den > 0 ? sqrt(den) : 1);
    return r == r ? r : INFINITY;
}

/* Compare two runs: parameters, state and norms each within tol_p, tol_s, tol_n. */
static void expect_runs_close(const char *what, snap a, snap b, double tol_p, double tol_s,
                              double tol_n) {
    double ep = relerr(&a, &b, 0, b.nparam), es = relerr(&a, &b, b.nparam, b.nparam + b.nstate),
           en = relerr(&a, &b, b.nparam + b.nstate, b.n);
    if (!(ep <= tol_p && es <= tol_s && en <= tol_n)) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s: relative errors params %g (tol %g), state %g (tol %g), norms %g (tol %g)\n",
                what, ep, tol_p, es, tol_s, en, tol_n);
    }
    /* the runs must have moved: the clipped norms of later steps are max_norm-bound */
    CHECK(b.nstate > 0 && b.x[b.nparam] != 0.0);
    free(a.x), free(b.x);
}

TEST(cpu_fused_matches_composed_f64) {
    expect_runs_close("f64, clipped", run(FE_F64, CPU, NBIG + NSMALL, 5, 5.0, true),
                      run(FE_F64, CPU, NBIG + NSMALL, 5, 5.0, false), 1e-12, 1e-12, 1e-12);
    expect_runs_close("f64, no clipping", run(FE_F64, CPU, NBIG, 3, 0.0, true),
                      run(FE_F64, CPU, NBIG, 3, 0.0, false), 1e-12, 1e-12, 1e-12);
}

TEST(cpu_fused_matches_composed_f32_bf16) {
    /* the composed path rounds every intermediate to f32 (bf16 for bf16 weights) */
    expect_runs_close("f32", run(FE_F32, CPU, NBIG + NSMALL, 4, 5.0, true),
                      run(FE_F32, CPU, NBIG + NSMALL, 4, 5.0, false), 1e-6, 1e-6, 1e-6);
    expect_runs_close("bf16", run(FE_BF16, CPU, NBIG + NSMALL, 4, 5.0, true),
                      run(FE_BF16, CPU, NBIG + NSMALL, 4, 5.0, false), 1e-2, 1e-2, 1e-2);
}

/* A 1-D f64 CPU tensor of n values. */
static fe_tensor *vec(int64_t n, const double *v, fe_dtype dt, fe_device dev) {
    fe_tensor *h = fe_from_data(v, 1, &n, FE_F64, CPU);
    fe_tensor *d = fe_to_device(h, dev), *c = fe_cast(d, dt);
    fe_free(h), fe_free(d);
    return c;
}

static double at(const fe_tensor *t, int i) {
    double v[8];
    fe_to_host(t, v, FE_F64);
    return v[i];
}

/* The entries called directly on `dev` (f64 params on the CPU, f32 on the GPU). */
static void entries_by_hand(fe_device dev, fe_dtype pdt, double tol) {
    const fe_backend *be = fe_backend_get(dev.type);
    CHECK(be && be->adamw && be->grad_norm_sq && be->scale_multi);
    if (!be || !be->adamw) return;
    fe_dtype sdt = pdt == FE_F64 ? FE_F64 : FE_F32;
    fe_tensor *p = vec(2, (double[]){1, -2}, pdt, dev), *g = vec(2, (double[]){0.5, 1}, FE_F32, dev);
    fe_tensor *m = vec(2, (double[]){0, 0}, sdt, dev), *v = vec(2, (double[]){0, 0}, sdt, dev);
    fe_tensor *two = vec(1, (double[]){2}, FE_F32, dev), *one = vec(1, (double[]){1}, FE_U8, dev);
    fe_tensor *zero = vec(1, (double[]){0}, FE_F32, dev);
    double wd = 0.1;
    fe_adamw_args a = {.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .bc1 = 0.1,
                       .bc2 = 1 - 0.999, .weight_decay = &wd, .grad_scale = two, .skip = one};
    /* skip set: nothing moves */
    CHECK(be->adamw(1, &p, (const fe_tensor *const *)&g, &m, &v, &a) == FE_OK);
    CHECK_NEAR(at(p, 0), 1.0, 0);
    CHECK_NEAR(at(m, 1), 0.0, 0);
    /* skip clear, grads doubled: g = (1, 2), m = (0.1, 0.2), v = (0.001, 0.004),
     * p = p (1 - 0.01) - (0.1 / 0.1) m / (sqrt(v / 0.001) + 1e-8) */
    a.skip = zero;
    CHECK(be->adamw(1, &p, (const fe_tensor *const *)&g, &m, &v, &a) == FE_OK);
    CHECK_NEAR(at(p, 0), 0.99 - 0.1 / (1 + 1e-8), tol);
    CHECK_NEAR(at(p, 1), -1.98 - 0.2 / (2 + 1e-8), tol);
    CHECK_NEAR(at(m, 1), 0.2, tol);
    /* f32 state holds 1 - beta2 = 0.001 only to ~1e-5 relative; f64 state exactly */
    CHECK_NEAR(at(v, 1), 0.004, 0.004 * (pdt == FE_F64 ? 1e-12 : 3e-5));
    /* no scale, no skip, no decay: plain Adam from the state above */
    a.grad_scale = NULL, a.skip = NULL, wd = 0.0, a.bc1 = 1 - 0.81, a.bc2 = 1 - 0.999 * 0.999;
    double p0 = at(p, 0), m0 = 0.9 * 0.1 + 0.1 * 0.5, v0 = 0.999 * 0.001 + 0.001 * 0.25;
    CHECK(be->adamw(1, &p, (const fe_tensor *const *)&g, &m, &v, &a) == FE_OK);
    CHECK_NEAR(at(m, 0), m0, tol);
    CHECK_NEAR(at(p, 0), p0 - 0.1 / a.bc1 * m0 / (sqrt(v0 / a.bc2) + 1e-8), tol);

    /* sum of squares over mixed dtypes: 3^2 + 4^2 + 12^2 = 169 */
    fe_tensor *ga = vec(2, (double[]){3, 4}, FE_F32, dev), *gb = vec(1, (double[]){12}, FE_BF16, dev);
    fe_tensor *gc = vec(3, (double[]){0, 0, 0}, FE_F16, dev);
    fe_tensor *gl[3] = {ga, gb, gc}, *out = vec(1, (double[]){-1}, FE_F32, dev);
    CHECK(be->grad_norm_sq(out, 3, (const fe_tensor *const *)gl) == FE_OK);
    CHECK_NEAR(at(out, 0), 169.0, 0);
    CHECK(be->grad_norm_sq(out, 0, NULL) == FE_OK);
    CHECK_NEAR(at(out, 0), 0.0, 0);
    /* scale by a device scalar */
    fe_tensor *half = vec(1, (double[]){0.5}, FE_F32, dev);
    CHECK(be->scale_multi(2, gl, half) == FE_OK);
    CHECK_NEAR(at(ga, 1), 2.0, 0);
    CHECK_NEAR(at(gb, 0), 6.0, 0);
    /* errors */
    fe_tensor *p3 = vec(3, (double[]){1, 2, 3}, pdt, dev);
    CHECK_ERROR(be->adamw(1, &p3, (const fe_tensor *const *)&g, &m, &v, &a) == FE_ERR_SHAPE,
                "sizes");
    fe_tensor *m16 = vec(2, (double[]){0, 0}, FE_BF16, dev);
    CHECK_ERROR(be->adamw(1, &p, (const fe_tensor *const *)&g, &m16, &v, &a) == FE_ERR_DTYPE,
                "state");
    fe_tensor *i32 = vec(2, (double[]){0, 0}, FE_I32, dev);
    CHECK_ERROR(be->grad_norm_sq(out, 1, (const fe_tensor *const *)&i32) == FE_ERR_DTYPE, "float");
    CHECK_ERROR(be->grad_norm_sq(ga, 1, (const fe_tensor *const *)&gb) != FE_OK, "one");
    fe_free(p), fe_free(g), fe_free(m), fe_free(v), fe_free(two), fe_free(one), fe_free(zero);
    fe_free(ga), fe_free(gb), fe_free(gc), fe_free(out), fe_free(half), fe_free(p3), fe_free(m16);
    fe_free(i32);
}

TEST(cpu_entries_by_hand) { entries_by_hand(CPU, FE_F64, 1e-15); }

TEST(cpu_clip_then_fused_step_uses_clipped_grads) {
    /* norm of (3, 4) is 5; clipping to 1 scales the grads by 1 / (5 + 1e-6) */
    fe_params *p = fe_params_new();
    fe_tensor *t = vec(2, (double[]){0, 0}, FE_F64, CPU);
    fe_set_requires_grad(t, true);
    fe_params_add(p, "w", t, false);
    fe_scope *s = fe_scope_begin();
    fe_backward(fe_sum(fe_mul(vec(2, (double[]){3, 4}, FE_F64, CPU), t), 0, NULL, false), NULL);
    fe_tensor *n = fe_clip_grad_norm(p, 1.0);
    CHECK_NEAR(fe_item(n), 5.0, 1e-15);
    CHECK_NEAR(at(fe_grad(t), 1), 4.0 / (5.0 + 1e-6), 1e-15);
    fe_scope_end(s);
    fe_params_free(p);
}

static bool gpu_ready(void) { return fe_device_available(FE_CUDA); }

TEST(cuda_entries_by_hand) {
    if (!gpu_ready()) SKIP("no CUDA device (or ferric was built without CUDA)");
    entries_by_hand(GPU, FE_F32, 1e-6);
    entries_by_hand(GPU, FE_F64, 1e-15);
}

TEST(cuda_fused_matches_cpu) {
    if (!gpu_ready()) SKIP("no CUDA device (or ferric was built without CUDA)");
    int n = NBIG + NSMALL;
    expect_runs_close("cuda f32 vs cpu", run(FE_F32, GPU, n, 4, 5.0, true),
                      run(FE_F32, CPU, n, 4, 5.0, true), 1e-6, 1e-6, 1e-6);
    expect_runs_close("cuda f64 vs cpu", run(FE_F64, GPU, n, 3, 5.0, true),
                      run(FE_F64, CPU, n, 3, 5.0, true), 1e-12, 1e-12, 1e-12);
    expect_runs_close("cuda bf16 vs cpu", run(FE_BF16, GPU, n, 4, 5.0, true),
                      run(FE_BF16, CPU, n, 4, 5.0, true), 1e-2, 1e-5, 1e-5);
    expect_runs_close("cuda f16 vs cpu", run(FE_F16, GPU, n, 3, 0.0, true),
                      run(FE_F16, CPU, n, 3, 0.0, true), 1e-2, 1e-5, 1e-5);
    /* and the CUDA fused path against the CUDA composed one */
    expect_runs_close("cuda fused vs composed", run(FE_F32, GPU, n, 4, 5.0, true),
                      run(FE_F32, GPU, n, 4, 5.0, false), 1e-6, 1e-6, 1e-6);
}
