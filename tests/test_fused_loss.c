/* fe_linear_cross_entropy against the unfused fe_cross_entropy(fe_linear(x, w)) path:
 * values and gradients in f64 at odd shapes and chunk sizes, ignored rows, finite
 * differences, bf16/f32 agreement, memory held, errors; and fe_llama_forward_loss. */
#include "ferric/fused_loss.h"
#include "ferric/nn.h"
#include "gradcheck.h"

#include <time.h>

#define S(...) (int64_t[]){__VA_ARGS__}
#define IGN (-100)

/* Targets (n) in [0, V) with every `every`-th row (from row `first`) ignored (every 0: none). */
static fe_tensor *targets_of(int nd, const int64_t *shape, int64_t V, int every, int first,
                             fe_dtype dt) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = every && i >= first && (i - first) % every == 0 ? IGN : (i * 7 + 3) % V;
    fe_tensor *t = fe_empty(nd, shape, dt, FE_DEVICE_CPU);
    if (t) fe_from_host(t, v, FE_I64);
    free(v);
    return t;
}

/* The unfused reference: cross-entropy of the full logits. */
static fe_tensor *unfused(fe_tensor *x, fe_tensor *w, fe_tensor *t, int64_t ignore) {
    fe_tensor *logits = fe_linear(x, w, NULL); /* (..., V) */
    int64_t V = fe_dim(w, 0), N = fe_numel(t);
    fe_tensor *l2 = fe_reshape(logits, 2, S(N, V));
    fe_tensor *t1 = fe_reshape(t, 1, &N);
    return fe_cross_entropy(l2, t1, ignore);
}

/* Loss value and copies of x's and w's gradients (either may be NULL). */
typedef struct result {
    double loss;
    fe_tensor *gx, *gw;
} result;

static result run(bool fused, fe_tensor *x, fe_tensor *w, fe_tensor *t, int64_t chunk) {
    result r = {NAN, NULL, NULL};
    fe_zero_grad(x), fe_zero_grad(w);
    fe_tensor *l = fused ? fe_linear_cross_entropy(x, w, t, IGN, chunk) : unfused(x, w, t, IGN);
    if (!l) return r;
    r.loss = fe_item(l);
    if ((fe_requires_grad(x) || fe_requires_grad(w)) && fe_backward(l, NULL) == FE_OK) {
        /* copies: the grads themselves are dropped by the next run */
        if (fe_grad(x)) r.gx = fe_add_scalar(fe_detach(fe_grad(x)), 0.0);
        if (fe_grad(w)) r.gw = fe_add_scalar(fe_detach(fe_grad(w)), 0.0);
    }
    fe_zero_grad(x), fe_zero_grad(w);
    return r;
}

static fe_tensor *leaf(int nd, const int64_t *shape, fe_dtype dt) {
    fe_tensor *t = fe_randn(nd, shape, 0, 1, dt, FE_DEVICE_CPU);
    fe_set_requires_grad(t, true);
    return t;
}

/* fused == unfused in f64 for x (xshape..., C), w (V, C) at the given chunk size */
static void check_f64(int nd, const int64_t *xshape, int64_t V, int every, int64_t chunk) {
    int64_t C = xshape[nd - 1];
    fe_tensor *x = leaf(nd, xshape, FE_F64), *w = leaf(2, S(V, C), FE_F64);
    fe_tensor *t = targets_of(nd - 1, xshape, V, every, 1, FE_I64);
    result a = run(false, x, w, t, 0), b = run(true, x, w, t, chunk);
    CHECK(a.gx && a.gw && b.gx && b.gw);
    CHECK_NEAR(b.loss, a.loss, 1e-12 * (1 + fabs(a.loss)));
    CHECK(t_maxdiff(b.gx, a.gx) < 1e-12);
    CHECK(t_maxdiff(b.gw, a.gw) < 1e-12);
    if (!(t_maxdiff(b.gw, a.gw) < 1e-12))
        fprintf(stderr, "  (V %lld, chunk %lld)\n", (long long)V, (long long)chunk);
}

TEST(f64_matches_unfused_at_odd_shapes_and_chunks) {
    int64_t chunks[] = {1, 2, 3, 4, 5, 13, 14, 100, 0};
    for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
        check_f64(3, S(2, 7, 5), 11, 3, chunks[i]); /* N 14, ignored rows 1, 4, 7, ... */
        check_f64(2, S(9, 6), 17, 0, chunks[i]);    /* nothing ignored */
    }
    check_f64(1, S(4), 3, 0, 0);            /* a single row: x (C), one target */
    check_f64(2, S(6, 1), 5, 2, 4);         /* C = 1 */
    check_f64(2, S(5, 3), 1, 0, 2);         /* V = 1: every loss is 0 */
}

TEST(i32_targets_and_other_ignore_index) {
    fe_tensor *x = leaf(3, S(3, 4, 5), FE_F64), *w = leaf(2, S(7, 5), FE_F64);
    int32_t tv[12] = {0, 6, -1, 2, 3, -1, -1, 5, 1, 4, 6, 0};
    fe_tensor *t = fe_from_data(tv, 2, S(3, 4), FE_I32, FE_DEVICE_CPU);
    fe_tensor *ref = fe_cross_entropy(fe_reshape(fe_linear(x, w, NULL), 2, S(12, 7)),
                                      fe_reshape(t, 1, S(12)), -1);
    fe_tensor *got = fe_linear_cross_entropy(x, w, t, -1, 5);
    CHECK(ref && got);
    CHECK_NEAR(fe_item(got), fe_item(ref), 1e-12);
    CHECK(fe_dtype_of(got) == FE_F64 && fe_ndim(got) == 0);
    /* with the default -100 the -1 targets are out of range */
    CHECK_ERROR(fe_linear_cross_entropy(x, w, t, -100, 5) == NULL, "out of range");
}

TEST(all_rows_ignored_gives_zero_like_cross_entropy) {
    fe_tensor *x = leaf(2, S(5, 4), FE_F64), *w = leaf(2, S(6, 4), FE_F64);
    fe_tensor *t = fe_full(1, S(5), IGN, FE_I64, FE_DEVICE_CPU);
    int64_t chunks[] = {1, 2, 0};
    for (int i = 0; i < 3; i++) {
        result a = run(false, x, w, t, 0), b = run(true, x, w, t, chunks[i]);
        CHECK(a.loss == 0.0 && b.loss == 0.0);
        CHECK(b.gx && b.gw && a.gx && a.gw);
        fe_tensor *zx = fe_zeros_like(x), *zw = fe_zeros_like(w);
        CHECK(t_maxdiff(b.gx, zx) == 0.0 && t_maxdiff(b.gw, zw) == 0.0);
        CHECK(t_maxdiff(a.gx, zx) == 0.0 && t_maxdiff(a.gw, zw) == 0.0);
    }
    /* a whole chunk of ignored rows among counted ones */
    int64_t tv[6] = {IGN, IGN, IGN, 2, 0, 5};
    fe_tensor *x6 = leaf(2, S(6, 4), FE_F64), *t6 = fe_from_data(tv, 1, S(6), FE_I64, FE_DEVICE_CPU);
    result a = run(false, x6, w, t6, 0), b = run(true, x6, w, t6, 3);
    CHECK_NEAR(b.loss, a.loss, 1e-12);
    CHECK(t_maxdiff(b.gx, a.gx) < 1e-12 && t_maxdiff(b.gw, a.gw) < 1e-12);
}

TEST(no_rows) {
    fe_tensor *x = leaf(2, S(0, 4), FE_F64), *w = leaf(2, S(6, 4), FE_F64);
    fe_tensor *t = fe_zeros(1, S(0), FE_I64, FE_DEVICE_CPU);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 0);
    CHECK(l && fe_item(l) == 0.0);
    CHECK(fe_backward(l, NULL) == FE_OK);
    CHECK(fe_grad(w) && t_maxdiff(fe_grad(w), fe_zeros_like(w)) == 0.0);
    CHECK(fe_grad(x) && fe_numel(fe_grad(x)) == 0);
}

typedef struct gcctx {
    fe_tensor *t;
    int64_t chunk;
} gcctx;

static fe_tensor *f_lce(fe_tensor *const *in, int n, void *c) {
    (void)n;
    gcctx *g = c;
    return fe_linear_cross_entropy(in[0], in[1], g->t, IGN, g->chunk);
}

/* the loss times a factor: the node's backward must scale by the incoming gradient */
static fe_tensor *f_lce_scaled(fe_tensor *const *in, int n, void *c) {
    fe_tensor *l = f_lce(in, n, c);
    return l ? fe_scale(fe_add(l, fe_square(l)), -1.7) : NULL;
}

TEST(gradcheck_finite_differences) {
    gcctx a = {targets_of(2, S(3, 4), 7, 3, 0, FE_I64), 5};
    GRADCHECK(f_lce, &a, gc_leaf(3, S(3, 4, 5)), gc_leaf(2, S(7, 5)));
    gcctx b = {targets_of(1, S(7), 9, 4, 2, FE_I32), 1};
    GRADCHECK(f_lce_scaled, &b, gc_leaf(2, S(7, 3)), gc_leaf(2, S(9, 3)));
    gcctx c = {targets_of(1, S(5), 4, 0, 0, FE_I64), 0};
    GRADCHECK(f_lce, &c, gc_leaf(2, S(5, 2)), gc_leaf(2, S(4, 2)));
}

TEST(only_one_input_requires_grad) {
    fe_tensor *x = leaf(2, S(7, 5), FE_F64), *w = leaf(2, S(9, 5), FE_F64);
    fe_tensor *t = targets_of(1, S(7), 9, 3, 0, FE_I64);
    result full = run(true, x, w, t, 3);
    fe_set_requires_grad(w, false);
    result rx = run(true, x, w, t, 3);
    CHECK(rx.gx && !rx.gw && t_maxdiff(rx.gx, full.gx) < 1e-14);
    fe_set_requires_grad(w, true);
    fe_set_requires_grad(x, false);
    result rw = run(true, x, w, t, 3);
    CHECK(!rw.gx && rw.gw && t_maxdiff(rw.gw, full.gw) < 1e-14);
    fe_set_requires_grad(w, false);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 3);
    CHECK(l && !fe_requires_grad(l));
    CHECK_NEAR(fe_item(l), full.loss, 1e-14);
}

TEST(no_grad_mode_records_nothing) {
    fe_tensor *x = leaf(2, S(7, 5), FE_F64), *w = leaf(2, S(9, 5), FE_F64);
    fe_tensor *t = targets_of(1, S(7), 9, 3, 0, FE_I64);
    result full = run(true, x, w, t, 2);
    bool prev = fe_set_grad_enabled(false);
    size_t before = fe_device_mem_current(FE_DEVICE_CPU);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 2);
    /* only the loss itself stays allocated: no saved gradients */
    CHECK(fe_device_mem_current(FE_DEVICE_CPU) - before <= 64);
    fe_set_grad_enabled(prev);
    CHECK(l && !fe_requires_grad(l));
    CHECK_NEAR(fe_item(l), full.loss, 1e-14);
}

TEST(incoming_gradient_and_second_backward) {
    fe_tensor *x = leaf(3, S(2, 3, 4), FE_F64), *w = leaf(2, S(5, 4), FE_F64);
    fe_tensor *t = targets_of(2, S(2, 3), 5, 4, 1, FE_I64);
    result one = run(true, x, w, t, 4);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 4);
    fe_tensor *g = fe_full(0, NULL, -2.5, FE_F64, FE_DEVICE_CPU);
    CHECK(fe_backward(l, g) == FE_OK);
    CHECK(t_maxdiff(fe_grad(x), fe_scale(one.gx, -2.5)) < 1e-14);
    CHECK(t_maxdiff(fe_grad(w), fe_scale(one.gw, -2.5)) < 1e-14);
    CHECK_ERROR(fe_backward(l, g) != FE_OK, "already used by a backward");
}

TEST(f32_bf16_agree_with_unfused) {
    int64_t N = 37, C = 16, V = 53;
    fe_tensor *x32 = fe_randn(2, S(N, C), 0, 1, FE_F32, FE_DEVICE_CPU);
    fe_tensor *w32 = fe_randn(2, S(V, C), 0, 0.5, FE_F32, FE_DEVICE_CPU);
    fe_set_requires_grad(x32, true), fe_set_requires_grad(w32, true);
    fe_tensor *xb = fe_detach(fe_cast(x32, FE_BF16)), *wb = fe_detach(fe_cast(w32, FE_BF16));
    fe_set_requires_grad(xb, true), fe_set_requires_grad(wb, true);
    fe_tensor *t = targets_of(1, S(N), V, 5, 2, FE_I64);
    result ref = run(false, x32, w32, t, 0);
    double gxs = sqrt(fe_item(fe_sum(fe_square(ref.gx), 0, NULL, false)) / (double)(N * C));
    double gws = sqrt(fe_item(fe_sum(fe_square(ref.gw), 0, NULL, false)) / (double)(V * C));
    int64_t chunks[] = {1, 3, 0};
    for (int i = 0; i < 3; i++) {
        result f = run(true, x32, w32, t, chunks[i]);
        CHECK(fe_item(fe_linear_cross_entropy(x32, w32, t, IGN, chunks[i])) == f.loss); /* repeatable */
        CHECK_NEAR(f.loss, ref.loss, 1e-5 * ref.loss);
        CHECK(t_maxdiff(f.gx, ref.gx) < 1e-5 * gxs * 10);
        CHECK(t_maxdiff(f.gw, ref.gw) < 1e-5 * gws * 10);
        result b = run(true, xb, wb, t, chunks[i]);
        CHECK(b.gx && fe_dtype_of(b.gx) == FE_BF16 && fe_dtype_of(b.gw) == FE_BF16);
        CHECK_NEAR(b.loss, ref.loss, 2e-2 * ref.loss);
        /* bf16 keeps ~3 significant digits: compare against the RMS of the gradient */
        CHECK(t_maxdiff(b.gx, ref.gx) < 5e-2 * gxs);
        CHECK(t_maxdiff(b.gw, ref.gw) < 5e-2 * gws);
        /* and against the unfused bf16 path */
        result bu = run(false, xb, wb, t, 0);
        CHECK_NEAR(b.loss, bu.loss, 1e-3 * bu.loss);
        CHECK(t_maxdiff(b.gx, bu.gx) < 3e-2 * gxs);
        CHECK(t_maxdiff(b.gw, bu.gw) < 3e-2 * gws);
    }
}

TEST(chunk_sizes_give_the_same_result) {
    fe_dtype dts[] = {FE_F64, FE_F32};
    for (int d = 0; d < 2; d++) {
        fe_tensor *x = leaf(3, S(3, 7, 6), dts[d]), *w = leaf(2, S(13, 6), dts[d]);
        fe_tensor *t = targets_of(2, S(3, 7), 13, 4, 3, FE_I64);
        result r1 = run(true, x, w, t, 1), r3 = run(true, x, w, t, 3), ra = run(true, x, w, t, 0);
        double tol = dts[d] == FE_F64 ? 1e-13 : 1e-5;
        CHECK_NEAR(r3.loss, r1.loss, tol);
        CHECK_NEAR(ra.loss, r1.loss, tol);
        CHECK(t_maxdiff(r3.gx, r1.gx) < tol && t_maxdiff(ra.gx, r1.gx) < tol);
        CHECK(t_maxdiff(r3.gw, r1.gw) < tol && t_maxdiff(ra.gw, r1.gw) < tol);
    }
}

/* The point of the op: the memory held at its peak is one chunk of logits, not all. */
TEST(holds_one_chunk_of_logits) {
    int64_t N = 1024, C = 8, V = 4000;
    fe_tensor *x = leaf(2, S(N, C), FE_F32), *w = leaf(2, S(V, C), FE_F32);
    fe_tensor *t = targets_of(1, S(N), V, 0, 0, FE_I64);
    size_t full_logits = (size_t)(N * V) * 4, chunk = (size_t)(64 * V) * 4;
    size_t grads = (size_t)(N * C + 2 * V * C) * 4; /* gx, gw and one chunk's gw */
    size_t counts = (size_t)N * 8;                  /* the f64 mask of counted rows */
    fe_device_mem_reset_peak(FE_DEVICE_CPU);
    size_t base = fe_device_mem_current(FE_DEVICE_CPU);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 64);
    size_t peak = fe_device_mem_peak(FE_DEVICE_CPU) - base;
    CHECK(l != NULL);
    CHECK(peak < chunk + grads + counts + 4096);
    if (!(peak < chunk + grads + counts + 4096)) fprintf(stderr, "  peak %zu\n", peak);
    CHECK(peak < full_logits / 4);
    /* after the forward only the saved gx and gw remain */
    CHECK(fe_device_mem_current(FE_DEVICE_CPU) - base <= (size_t)(N * C + V * C) * 4 + 64);
    CHECK(fe_backward(l, NULL) == FE_OK);
}

/* Automatic chunks stay under 256 MiB of logits (here 2 chunks instead of 288 MiB). */
TEST(automatic_chunks_bound_the_logits) {
    int64_t N = 1100, C = 2, V = 65536;
    fe_tensor *x = fe_randn(2, S(N, C), 0, 1, FE_F32, FE_DEVICE_CPU);
    fe_tensor *w = fe_randn(2, S(V, C), 0, 1, FE_F32, FE_DEVICE_CPU);
    fe_tensor *t = targets_of(1, S(N), V, 0, 0, FE_I64);
    bool prev = fe_set_grad_enabled(false);
    fe_device_mem_reset_peak(FE_DEVICE_CPU);
    size_t base = fe_device_mem_current(FE_DEVICE_CPU);
    fe_tensor *l = fe_linear_cross_entropy(x, w, t, IGN, 0);
    size_t peak = fe_device_mem_peak(FE_DEVICE_CPU) - base;
    fe_set_grad_enabled(prev);
    CHECK(l != NULL);
    CHECK(peak <= ((size_t)256 << 20) + ((size_t)1 << 20));
    CHECK(peak >= (size_t)(550 * V) * 4); /* two chunks of 550 rows, not 1100 of 1 */
    /* the same value as one chunk of 550 rows */
    fe_tensor *l2 = fe_linear_cross_entropy(x, w, t, IGN, 550);
    CHECK(l && l2 && fe_item(l) == fe_item(l2));
}

TEST(errors_name_the_problem) {
    fe_tensor *x = leaf(2, S(4, 5), FE_F64), *w = leaf(2, S(7, 5), FE_F64);
    fe_tensor *t = targets_of(1, S(4), 7, 0, 0, FE_I64);
    CHECK_ERROR(fe_linear_cross_entropy(x, fe_zeros(2, S(7, 6), FE_F64, FE_DEVICE_CPU), t, IGN, 0) == NULL,
                "last dim must be C = 6");
    CHECK_ERROR(fe_linear_cross_entropy(x, fe_zeros(1, S(5), FE_F64, FE_DEVICE_CPU), t, IGN, 0) == NULL,
                "must be (V, C)");
    CHECK_ERROR(fe_linear_cross_entropy(x, w, targets_of(1, S(5), 7, 0, 0, FE_I64), IGN, 0) == NULL,
                "has 4 rows but targets (5,) i64 cpu hold 5");
    CHECK_ERROR(fe_linear_cross_entropy(x, w, fe_zeros(1, S(4), FE_F32, FE_DEVICE_CPU), IGN, 0) == NULL,
                "targets must be i32 or i64");
    CHECK_ERROR(fe_linear_cross_entropy(x, fe_cast(w, FE_F32), t, IGN, 0) == NULL, "dtypes differ");
    CHECK_ERROR(fe_linear_cross_entropy(fe_zeros(2, S(4, 5), FE_I32, FE_DEVICE_CPU),
                                        fe_zeros(2, S(7, 5), FE_I32, FE_DEVICE_CPU), t, IGN, 0) == NULL,
                "float");
    CHECK_ERROR(fe_linear_cross_entropy(x, w, t, IGN, -1) == NULL, "chunk_rows must be >= 0");
    CHECK_ERROR(fe_linear_cross_entropy(NULL, w, t, IGN, 0) == NULL, "linear_cross_entropy");
    int64_t bad[4] = {0, 1, 2, 7};
    CHECK_ERROR(fe_linear_cross_entropy(x, w, fe_from_data(bad, 1, S(4), FE_I64, FE_DEVICE_CPU), IGN, 2) == NULL,
                "in the chunk of rows 2..3 (numbered from 0): cross_entropy: target 7 at row 1 is out of range");
    /* a NULL from an earlier op passes through without a new message */
    fe_clear_error();
    fe_set_error(FE_ERR_SHAPE, "first");
    CHECK(fe_linear_cross_entropy(x, NULL, t, IGN, 0) == NULL);
    CHECK(strcmp(fe_last_error(), "first") == 0);
}

/* ---- memory and time of a whole loss step, on any device ------------------------------ */

typedef struct step_cost {
    size_t peak; /* bytes above what was allocated before the step */
    double ms, loss;
} step_cost;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* forward + backward of the fused or the unfused loss */
static step_cost loss_step(bool fused, fe_tensor *x, fe_tensor *w, fe_tensor *t, int64_t chunk) {
    fe_device dev = fe_device_of(x);
    step_cost c = {0, 0, NAN};
    fe_zero_grad(x), fe_zero_grad(w);
    fe_scope *s = fe_scope_begin();
    fe_device_sync(dev);
    fe_device_mem_reset_peak(dev);
    size_t base = fe_device_mem_current(dev);
    double t0 = now_ms();
    fe_tensor *l = fused ? fe_linear_cross_entropy(x, w, t, IGN, chunk) : unfused(x, w, t, IGN);
    if (l && fe_backward(l, NULL) == FE_OK && fe_device_sync(dev) == FE_OK) {
        c.ms = now_ms() - t0;
        c.peak = fe_device_mem_peak(dev) - base;
        c.loss = fe_item(l);
    }
    fe_scope_end(s);
    fe_zero_grad(x), fe_zero_grad(w);
    return c;
}

TEST(a_step_holds_less_than_the_unfused_one) {
    int64_t N = 512, C = 16, V = 2000;
    fe_tensor *x = leaf(2, S(N, C), FE_F32), *w = leaf(2, S(V, C), FE_F32);
    fe_tensor *t = targets_of(1, S(N), V, 9, 4, FE_I64);
    step_cost f = loss_step(true, x, w, t, 64), u = loss_step(false, x, w, t, 0);
    size_t logits = (size_t)(N * V) * 4;
    CHECK_NEAR(f.loss, u.loss, 1e-5 * u.loss);
    CHECK(u.peak >= 2 * logits);               /* the logits and their gradient */
    CHECK(f.peak + 2 * logits - logits / 4 <= u.peak); /* fused: an eighth of them */
}

/* ---- CUDA (skipped without a device) -------------------------------------------------- */

#define GPU ((fe_device){FE_CUDA, 0})
#define NEED_GPU()                                                                        \
    do {                                                                                  \
        if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device (or built without CUDA)"); \
    } while (0)

static fe_tensor *gpu_leaf(fe_tensor *cpu) {
    fe_tensor *t = fe_to_device(cpu, GPU);
    fe_set_requires_grad(t, true);
    return t;
}

static double rms(fe_tensor *t) {
    return sqrt(fe_item(fe_sum(fe_square(fe_cast(t, FE_F64)), 0, NULL, false)) / (double)fe_numel(t));
}

TEST(cuda_matches_cpu_and_the_unfused_path) {
    NEED_GPU();
    int64_t N = 300, C = 64, V = 1001;
    fe_dtype dts[] = {FE_F32, FE_BF16};
    for (int d = 0; d < 2; d++) {
        fe_tensor *xc = fe_cast(fe_randn(2, S(N, C), 0, 1, FE_F32, FE_DEVICE_CPU), dts[d]);
        fe_tensor *wc = fe_cast(fe_randn(2, S(V, C), 0, 0.3, FE_F32, FE_DEVICE_CPU), dts[d]);
        fe_set_requires_grad(xc, true), fe_set_requires_grad(wc, true);
        fe_tensor *xg = gpu_leaf(xc), *wg = gpu_leaf(wc);
        fe_tensor *tc = targets_of(1, S(N), V, 7, 2, FE_I64), *tg = fe_to_device(tc, GPU);
        double tol = dts[d] == FE_BF16 ? 3e-2 : 2e-3;
        int64_t chunks[] = {0, 7, 128};
        for (int i = 0; i < 3; i++) {
            result rc = run(true, xc, wc, tc, chunks[i]), rg = run(true, xg, wg, tg, chunks[i]);
            CHECK(rg.gx && rg.gw && fe_device_of(rg.gx).type == FE_CUDA);
            CHECK_NEAR(rg.loss, rc.loss, tol * rc.loss);
            CHECK(t_maxdiff(rg.gx, rc.gx) < tol * rms(rc.gx) * 4);
            CHECK(t_maxdiff(rg.gw, rc.gw) < tol * rms(rc.gw) * 4);
        }
        result ru = run(false, xg, wg, tg, 0), rf = run(true, xg, wg, tg, 0);
        CHECK_NEAR(rf.loss, ru.loss, tol * ru.loss);
        CHECK(t_maxdiff(rf.gx, ru.gx) < tol * rms(ru.gx) * 4);
        CHECK(t_maxdiff(rf.gw, ru.gw) < tol * rms(ru.gw) * 4);
    }
}

/* The "small" training shape's head: 16384 tokens, C 768, V 32000, bf16. Prints the
 * peak memory and time of one loss forward + backward, fused and unfused. */
TEST(cuda_small_shape_memory_and_time) {
    NEED_GPU();
    int64_t N = 16384, C = 768, V = 32000;
    fe_tensor *x = fe_cast(fe_randn(2, S(N, C), 0, 1, FE_F32, GPU), FE_BF16);
    fe_tensor *w = fe_cast(fe_randn(2, S(V, C), 0, 0.02, FE_F32, GPU), FE_BF16);
    fe_set_requires_grad(x, true), fe_set_requires_grad(w, true);
    fe_tensor *t = fe_to_device(targets_of(1, S(N), V, 0, 0, FE_I64), GPU);
    loss_step(true, x, w, t, 0), loss_step(false, x, w, t, 0); /* warm-up */
    step_cost f = loss_step(true, x, w, t, 0), u = loss_step(false, x, w, t, 0);
    printf("  small head (N %lld, C %lld, V %lld, bf16) forward+backward: fused %.1f MiB %.2f ms, "
           "unfused %.1f MiB %.2f ms, saved %.1f MiB\n",
           (long long)N, (long long)C, (long long)V, f.peak / 1048576.0, f.ms, u.peak / 1048576.0,
           u.ms, ((double)u.peak - (double)f.peak) / 1048576.0);
    CHECK_NEAR(f.loss, u.loss, 1e-2 * u.loss);
    CHECK(f.peak + ((size_t)5 << 28) < u.peak); /* at least 1.25 GiB less (expected ~1.7) */
}

/* ---- the model path ------------------------------------------------------------------ */

static fe_llama_config tiny(bool tied) {
    return (fe_llama_config){.vocab_size = 29,
                             .dim = 12,
                             .n_layers = 2,
                             .n_heads = 2,
                             .n_kv_heads = 1,
                             .ffn_dim = 20,
                             .max_seq = 5,
                             .norm_eps = 1e-5,
                             .rope_theta = 10000.0,
                             .tie_embeddings = tied};
}

TEST(llama_forward_loss_checks_shapes) {
    fe_llama_config c = tiny(false);
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    fe_tensor *x = fe_zeros(2, S(2, 5), FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_forward_loss(m, x, fe_zeros(2, S(2, 4), FE_I32, FE_DEVICE_CPU)) == NULL,
                "expected tokens (B, T) and targets (B, T)");
    CHECK_ERROR(fe_llama_forward_loss(NULL, x, x) == NULL, "NULL model");
    fe_llama_free(m);
}

TEST(llama_forward_loss_matches_the_unfused_loss) {
    for (int variant = 0; variant < 3; variant++) { /* untied, tied, checkpointed */
        fe_llama_config c = tiny(variant == 1);
        fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
        CHECK(m != NULL);
        if (!m) return;
        fe_llama_set_checkpointing(m, variant == 2);
        int32_t xs[10], ys[10];
        for (int i = 0; i < 10; i++) xs[i] = (i * 11 + 2) % 29, ys[i] = i == 3 ? IGN : (i * 5 + 1) % 29;
        fe_tensor *x = fe_from_data(xs, 2, S(2, 5), FE_I32, FE_DEVICE_CPU);
        fe_tensor *y = fe_from_data(ys, 2, S(2, 5), FE_I32, FE_DEVICE_CPU);
        fe_tensor *lf = fe_llama_forward_loss(m, x, y);
        CHECK(lf != NULL);
        fe_params *p = fe_llama_params(m);
        int np = fe_params_count(p);
        CHECK(fe_backward(lf, NULL) == FE_OK);
        fe_tensor *gf[32] = {0};
        for (int i = 0; i < np && i < 32; i++) {
            fe_tensor *g = fe_grad(fe_params_at(p, i));
            gf[i] = g ? fe_add_scalar(g, 0.0) : NULL;
        }
        fe_params_zero_grad(p);
        fe_tensor *lu = fe_llama_loss(fe_llama_forward(m, x), y);
        CHECK(lu && fe_backward(lu, NULL) == FE_OK);
        CHECK_NEAR(fe_item(lf), fe_item(lu), 1e-12);
        for (int i = 0; i < np && i < 32; i++) {
            fe_tensor *g = fe_grad(fe_params_at(p, i));
            CHECK(g && gf[i] && t_maxdiff(gf[i], g) < 1e-12);
        }
        fe_llama_free(m);
    }
}
