/* The CUDA backend against the CPU reference: every op through the public API on
 * fresh random inputs at odd shapes, forward and gradients, in f32 (and f64 where it
 * matters) and bf16/f16; outputs start as NaN (the allocator's poison mode) so that
 * unwritten elements show. Also: identical random numbers on both devices, the caching
 * allocator's reuse, a clean out-of-memory error and deferred index errors. Every case
 * skips when no CUDA device is present. */
#include "test.h"

#include "backends/backend.h"
#include "ops/ops_internal.h"

#ifdef FE_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

#include <stdint.h>

#ifdef FE_TEST_CPU_AS_GPU
/* A check of this file's own plumbing without a GPU: both sides run on the CPU (build
 * it by hand with -DFE_TEST_CPU_AS_GPU; the allocator cases then skip). */
#define GPU FE_DEVICE_CPU
#else
#define GPU ((fe_device){FE_CUDA, 0})
#endif
#define CPU FE_DEVICE_CPU

/* f32 products must be exact FP32 here, not TF32 */
__attribute__((constructor)) static void no_tf32(void) { unsetenv("FE_TF32"); }

static bool gpu_ready(void) {
#ifdef FE_TEST_CPU_AS_GPU
    return true;
#endif
    if (!fe_device_available(FE_CUDA)) return false;
#ifdef FE_HAVE_CUDA
    fe_cuda_set_poison(true);
#endif
    return true;
}

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!gpu_ready()) SKIP("no CUDA device (or ferric was built without CUDA)");               \
    } while (0)

static double tol_of(fe_dtype dt) {
    switch (dt) {
    case FE_F64: return 1e-10;
    case FE_F32: return 1e-5;
    default: return 1e-2;
    }
}

/* gpu (any device) against the CPU reference: ||gpu - cpu|| / ||cpu|| <= tol, no NaN. */
static void expect_close(const char *what, const fe_tensor *gpu, const fe_tensor *cpu, double tol) {
    double e = gpu && cpu ? t_relerr(gpu, cpu) : INFINITY;
    bool on_gpu = gpu && fe_device_of(gpu).type == GPU.type;
    if (!(e <= tol) || !on_gpu) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s: relative error %g (tol %g)%s; last error: %s\n", what, e, tol,
                on_gpu || !gpu ? "" : ", result not on the GPU", fe_last_error());
    }
}

/* Exact equality of all elements (NaN matches NaN, infinities match). */
static void expect_equal(const char *what, const fe_tensor *gpu, const fe_tensor *cpu) {
    int64_t n = fe_numel(cpu), bad = -1;
    double *x = malloc((size_t)(n ? n : 1) * sizeof *x),
           *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    bool ok = gpu && cpu && x && y && fe_numel(gpu) == n && !fe_to_host(gpu, x, FE_F64) &&
              !fe_to_host(cpu, y, FE_F64);
    for (int64_t i = 0; ok && i < n; i++)
        if (!(x[i] == y[i] || (isnan(x[i]) && isnan(y[i])))) bad = i, ok = false;
    if (!ok) {
        fe_fails_in_case++;
        if (bad >= 0)
            fprintf(stderr, "  %s: element %lld is %.10g, expected %.10g\n", what, (long long)bad,
                    x[bad], y[bad]);
        else
            fprintf(stderr, "  %s: could not compare; last error: %s\n", what, fe_last_error());
    }
    free(x), free(y);
}

static fe_tensor *randn_cpu(int nd, const int64_t *s, fe_dtype dt) {
    return fe_randn(nd, s, 0.0, 1.0, dt, CPU);
}
static fe_tensor *randpos_cpu(int nd, const int64_t *s, fe_dtype dt) {
    return fe_rand(nd, s, 0.5, 2.0, dt, CPU);
}

/* ---- a generic forward + backward comparison ------------------------------------------- */

typedef fe_tensor *(*op_fn)(fe_tensor *const *in, const void *ctx);

/* Run f on CPU inputs and on GPU copies, compare the outputs; then back-propagate the same
 * random gradient on both devices and compare the gradients of every float input whose
 * bit in grad_mask is set. */
static void check_op(const char *name, op_fn f, const void *ctx, int n, fe_tensor *const *cin,
                     unsigned grad_mask, double tol) {
    fe_tensor *gin[8];
    for (int i = 0; i < n; i++) {
        gin[i] = fe_to_device(cin[i], GPU);
        if (!gin[i]) {
            fe_fails_in_case++;
            fprintf(stderr, "  %s: moving input %d to the GPU failed: %s\n", name, i,
                    fe_last_error());
            return;
        }
        if ((grad_mask >> i) & 1) {
            fe_zero_grad(cin[i]); /* an input reused from an earlier check starts clean */
            fe_set_requires_grad(cin[i], true);
            fe_set_requires_grad(gin[i], true);
        }
    }
    fe_tensor *yc = f(cin, ctx);
    fe_tensor *yg = f(gin, ctx);
    if (!yc || !yg) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s: forward failed on the %s: %s\n", name, yc ? "GPU" : "CPU",
                fe_last_error());
        return;
    }
    char what[128];
    snprintf(what, sizeof what, "%s forward (%s)", name, fe_dtype_name(fe_dtype_of(yc)));
    expect_close(what, yg, yc, tol);
    if (!grad_mask) return;
    fe_tensor *g = fe_randn(fe_ndim(yc), fe_shape(yc), 0.0, 1.0, fe_dtype_of(yc), CPU);
    fe_tensor *gg = fe_to_device(g, GPU);
    fe_status sc = fe_backward(yc, g), sg = fe_backward(yg, gg);
    if (sc || sg) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s: backward failed on the %s: %s\n", name, sc ? "CPU" : "GPU",
                fe_last_error());
        return;
    }
    for (int i = 0; i < n; i++) {
        if (!((grad_mask >> i) & 1)) continue;
        snprintf(what, sizeof what, "%s gradient of input %d (%s)", name, i,
                 fe_dtype_name(fe_dtype_of(cin[i])));
        expect_close(what, fe_grad(gin[i]), fe_grad(cin[i]), tol);
    }
}

static const fe_dtype k_float_dtypes[] = {FE_F32, FE_BF16, FE_F16};

/* ---- elementwise ------------------------------------------------------------------------------
 */

typedef struct {
    int which;
} op_sel;

static fe_tensor *f_binary(fe_tensor *const *in, const void *ctx) {
    switch (((const op_sel *)ctx)->which) {
    case 0: return fe_add(in[0], in[1]);
    case 1: return fe_sub(in[0], in[1]);
    case 2: return fe_mul(in[0], in[1]);
    default: return fe_div(in[0], in[1]);
    }
}

TEST(cuda_binary_broadcast_and_grads) {
    NEED_GPU();
    int64_t sa[3] = {3, 37, 129}, sb[2] = {37, 1}, sc[1] = {129};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        for (int op = 0; op < 4; op++) {
            fe_tensor *a =
                op == 3 ? randpos_cpu(3, sa, dt) : randn_cpu(3, sa, dt); /* divisors too */
            fe_tensor *b = op == 3 ? randpos_cpu(2, sb, dt) : randn_cpu(2, sb, dt);
            fe_tensor *c = op == 3 ? randpos_cpu(1, sc, dt) : randn_cpu(1, sc, dt);
            const char *names[4] = {"add", "sub", "mul", "div"};
            op_sel s = {op};
            check_op(names[op], f_binary, &s, 2, (fe_tensor *[]){a, b}, 3, tol_of(dt));
            check_op(names[op], f_binary, &s, 2, (fe_tensor *[]){c, a}, 3, tol_of(dt));
        }
    }
}

static fe_tensor *f_strided(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    /* a transposed view plus a sliced view with a step: strided inputs everywhere */
    fe_tensor *t = fe_transpose(in[0], 0, 2);     /* (129, 37, 3) */
    fe_tensor *s = fe_slice(in[1], 0, 1, 259, 2); /* (129, 37, 3) of (259, 37, 3) */
    return fe_mul(fe_add(t, s), t);
}

TEST(cuda_elementwise_strided_views) {
    NEED_GPU();
    int64_t sa[3] = {3, 37, 129}, sb[3] = {259, 37, 3};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        fe_tensor *a = randn_cpu(3, sa, dt), *b = randn_cpu(3, sb, dt);
        check_op("strided add/mul", f_strided, NULL, 2, (fe_tensor *[]){a, b}, 3, tol_of(dt));
    }
}

static fe_tensor *f_unary(fe_tensor *const *in, const void *ctx) {
    fe_tensor *x = in[0];
    switch (((const op_sel *)ctx)->which) {
    case 0: return fe_neg(x);
    case 1: return fe_exp(x);
    case 2: return fe_log(x);
    case 3: return fe_sqrt(x);
    case 4: return fe_rsqrt(x);
    case 5: return fe_tanh(x);
    case 6: return fe_sigmoid(x);
    case 7: return fe_relu(x);
    case 8: return fe_gelu(x, true);
    case 9: return fe_gelu(x, false);
    case 10: return fe_silu(x);
    case 11: return fe_square(x);
    case 12: return fe_scale(x, -0.37);
    default: return fe_add_scalar(x, 1.25);
    }
}

TEST(cuda_unary_and_grads) {
    NEED_GPU();
    static const char *names[14] = {"neg",  "exp",     "log",   "sqrt",      "rsqrt",
                                    "tanh", "sigmoid", "relu",  "gelu_tanh", "gelu_erf",
                                    "silu", "square",  "scale", "add_scalar"};
    int64_t s[3] = {3, 37, 129};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        for (int op = 0; op < 14; op++) {
            bool pos = op >= 2 && op <= 4;
            fe_tensor *x = pos ? randpos_cpu(3, s, dt) : fe_randn(3, s, 0.0, 2.0, dt, CPU);
            op_sel sel = {op};
            check_op(names[op], f_unary, &sel, 1, (fe_tensor *[]){x}, 1, tol_of(dt));
        }
    }
}

static fe_tensor *f_where(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    fe_tensor *w = fe_where(in[2], in[0], in[1]);
    fe_tensor *m = fe_masked_fill(w, in[2], -3.5);
    return fe_add(w, m);
}

TEST(cuda_where_masked_fill_and_grads) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129}, sm[2] = {37, 129}, sb[1] = {129};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        fe_tensor *u = fe_rand(2, sm, 0.0, 1.0, FE_F32, CPU);
        fe_tensor *mask = fe_cast(fe_add_scalar(u, 0.5), FE_U8); /* 0 or 1 (truncation) */
        fe_tensor *a = randn_cpu(3, s, dt), *b = randn_cpu(1, sb, dt);
        check_op("where", f_where, NULL, 3, (fe_tensor *[]){a, b, mask}, 3, tol_of(dt));
    }
}

TEST(cuda_in_place_add_and_scale) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129}, sb[2] = {1, 129};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        fe_tensor *a = randn_cpu(3, s, dt), *b = randn_cpu(2, sb, dt);
        fe_tensor *ag = fe_to_device(a, GPU), *bg = fe_to_device(b, GPU);
        CHECK(fe_add_(a, b, -0.75) == FE_OK && fe_add_(ag, bg, -0.75) == FE_OK);
        CHECK(fe_scale_(a, 1.5) == FE_OK && fe_scale_(ag, 1.5) == FE_OK);
        expect_close("add_ and scale_", ag, a, tol_of(dt));
    }
}

/* ---- copies, casts, fills
 * ------------------------------------------------------------------------ */

TEST(cuda_cast_every_dtype_pair_exactly) {
    NEED_GPU();
    int64_t s[2] = {37, 129};
    for (int from = 0; from < FE_DTYPE_COUNT; from++) {
        /* values across int ranges (with saturation for the narrow types) */
        fe_tensor *src = fe_cast(fe_randn(2, s, 0.0, 150.0, FE_F64, CPU), (fe_dtype)from);
        fe_tensor *srcg = fe_to_device(src, GPU);
        for (int to = 0; to < FE_DTYPE_COUNT; to++) {
            fe_tensor *c = fe_cast(src, (fe_dtype)to), *g = fe_cast(srcg, (fe_dtype)to);
            char what[64];
            snprintf(what, sizeof what, "cast %s -> %s", fe_dtype_name((fe_dtype)from),
                     fe_dtype_name((fe_dtype)to));
            expect_equal(what, g, c);
            /* strided source: a transposed view */
            fe_tensor *ct = fe_cast(fe_transpose(src, 0, 1), (fe_dtype)to);
            fe_tensor *gt = fe_cast(fe_transpose(srcg, 0, 1), (fe_dtype)to);
            snprintf(what, sizeof what, "strided cast %s -> %s", fe_dtype_name((fe_dtype)from),
                     fe_dtype_name((fe_dtype)to));
            expect_equal(what, gt, ct);
        }
    }
}

TEST(cuda_strided_copies_concat_contiguous) {
    NEED_GPU();
    int64_t s[4] = {3, 5, 37, 33};
    for (int dt = 0; dt < FE_DTYPE_COUNT; dt++) {
        fe_tensor *x = fe_cast(fe_randn(4, s, 0.0, 20.0, FE_F64, CPU), (fe_dtype)dt);
        fe_tensor *xg = fe_to_device(x, GPU);
        int perm[4] = {2, 0, 3, 1};
        expect_equal("permute + contiguous", fe_contiguous(fe_permute(xg, perm)),
                     fe_contiguous(fe_permute(x, perm)));
        expect_equal("slice with step", fe_contiguous(fe_slice(xg, 2, 1, 37, 3)),
                     fe_contiguous(fe_slice(x, 2, 1, 37, 3)));
        fe_tensor *cc[3] = {x, fe_slice(x, 1, 0, 2, 1), x},
                  *cg[3] = {xg, fe_slice(xg, 1, 0, 2, 1), xg};
        expect_equal("concat", fe_concat(3, cg, 1), fe_concat(3, cc, 1));
        /* host round trip of an odd byte count */
        size_t nb = (size_t)fe_numel(x) * fe_dtype_size((fe_dtype)dt);
        unsigned char *h = malloc(nb), *back = malloc(nb);
        CHECK(h && back);
        if (h && back) {
            CHECK(fe_to_host(x, h, (fe_dtype)dt) == FE_OK);
            CHECK(fe_to_host(xg, back, (fe_dtype)dt) == FE_OK);
            CHECK(memcmp(h, back, nb) == 0);
        }
        free(h), free(back);
    }
}

TEST(cuda_fill_full_arange) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129};
    double vals[4] = {0.0, -1.7, 300.25, 1e10};
    for (int dt = 0; dt < FE_DTYPE_COUNT; dt++) {
        for (int i = 0; i < 4; i++) {
            char what[64];
            snprintf(what, sizeof what, "full %g as %s", vals[i], fe_dtype_name((fe_dtype)dt));
            expect_equal(what, fe_full(3, s, vals[i], (fe_dtype)dt, GPU),
                         fe_full(3, s, vals[i], (fe_dtype)dt, CPU));
        }
        /* fill_ of a strided view writes only the view */
        fe_tensor *a = fe_zeros(3, s, (fe_dtype)dt, CPU), *ag = fe_zeros(3, s, (fe_dtype)dt, GPU);
        CHECK(fe_fill_(fe_slice(a, 2, 3, 100, 4), 7.0) == FE_OK);
        CHECK(fe_fill_(fe_slice(ag, 2, 3, 100, 4), 7.0) == FE_OK);
        expect_equal("fill_ of a strided view", ag, a);
        expect_equal("arange", fe_arange(-3.0, 1000.0, 0.37, (fe_dtype)dt, GPU),
                     fe_arange(-3.0, 1000.0, 0.37, (fe_dtype)dt, CPU));
    }
}

/* ---- random numbers
 * ---------------------------------------------------------------------------------- */

TEST(cuda_rand_matches_cpu_stream) {
    NEED_GPU();
    int64_t s[2] = {37, 129}; /* 4773: not a multiple of 2 or 4 */
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        fe_manual_seed(777);
        fe_tensor *skip = fe_rand(1, (int64_t[]){5}, 0, 1, dt, CPU); /* start mid-stream */
        fe_tensor *uc = fe_rand(2, s, -2.0, 3.0, dt, CPU);
        fe_tensor *nc = fe_randn(2, s, 0.5, 2.0, dt, CPU);
        fe_manual_seed(777);
        fe_tensor *skipg = fe_rand(1, (int64_t[]){5}, 0, 1, dt, GPU);
        fe_tensor *ug = fe_rand(2, s, -2.0, 3.0, dt, GPU);
        fe_tensor *ng = fe_randn(2, s, 0.5, 2.0, dt, GPU);
        expect_equal("rand (first draw)", skipg, skip);
        expect_equal("rand uniform", ug, uc);
        /* normals go through log and cos, whose last bit may differ between libms */
        double e = t_maxdiff(ng, nc);
        if (!(e <= (dt == FE_F64 ? 1e-12 : dt == FE_F32 ? 1e-6 : 0.0))) {
            fe_fails_in_case++;
            fprintf(stderr, "  randn %s: max difference %g\n", fe_dtype_name(dt), e);
        }
    }
    /* dropout draws its mask from the same stream on both devices */
    int64_t sd[3] = {3, 37, 129};
    fe_tensor *x = randn_cpu(3, sd, FE_F32), *xg = fe_to_device(x, GPU);
    fe_manual_seed(99);
    fe_tensor *dc = fe_dropout(x, 0.3, true);
    fe_manual_seed(99);
    fe_tensor *dg = fe_dropout(xg, 0.3, true);
    expect_equal("dropout mask", dg, dc);
}

/* ---- reductions
 * ---------------------------------------------------------------------------------------- */

typedef struct {
    int kind; /* 0 sum, 1 mean, 2 max */
    int nd;
    int dims[4];
    bool keep;
} red_ctx;

static fe_tensor *f_reduce(fe_tensor *const *in, const void *ctx) {
    const red_ctx *r = ctx;
    switch (r->kind) {
    case 0: return fe_sum(in[0], r->nd, r->dims, r->keep);
    case 1: return fe_mean(in[0], r->nd, r->dims, r->keep);
    default: return fe_max(in[0], r->nd, r->dims, r->keep);
    }
}

TEST(cuda_reductions_and_grads) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129};
    red_ctx cases[] = {
        {0, 0, {0}, false},    {0, 1, {0}, true},    {0, 1, {1}, false},    {0, 1, {2}, true},
        {0, 2, {0, 2}, false}, {0, 2, {0, 1}, true}, {1, 1, {-1}, false},   {1, 2, {1, 2}, true},
        {2, 1, {2}, false},    {2, 1, {0}, true},    {2, 2, {0, 2}, false}, {2, 0, {0}, false},
    };
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            fe_tensor *x = randn_cpu(3, s, dt);
            char name[64];
            snprintf(name, sizeof name, "reduce case %zu", c);
            check_op(name, f_reduce, &cases[c], 1, (fe_tensor *[]){x}, 1, tol_of(dt));
        }
    }
}

TEST(cuda_reductions_large_and_chunked) {
    NEED_GPU();
    /* shapes that take the warp, block, column and chunked paths of the kernel */
    int64_t shapes[5][2] = {{50003, 3}, {3, 70001}, {1000, 37}, {1, 1 << 20}, {2000, 1025}};
    for (int i = 0; i < 5; i++) {
        fe_tensor *x = randn_cpu(2, shapes[i], FE_F32), *xg = fe_to_device(x, GPU);
        for (int d = -1; d < 2; d++) {
            int nd = d < 0 ? 0 : 1;
            red_ctx rs = {0, nd, {d}, false}, rm = {2, nd, {d}, false};
            char what[96];
            snprintf(what, sizeof what, "sum over %d of (%lld, %lld)", d, (long long)shapes[i][0],
                     (long long)shapes[i][1]);
            expect_close(what, f_reduce(&xg, &rs), f_reduce(&x, &rs), 1e-5);
            snprintf(what, sizeof what, "max over %d of (%lld, %lld)", d, (long long)shapes[i][0],
                     (long long)shapes[i][1]);
            expect_equal(what, f_reduce(&xg, &rm), f_reduce(&x, &rm));
        }
    }
}

/* ---- matrix products
 * -------------------------------------------------------------------------------------- */

typedef struct {
    bool ta, tb;
    int variant; /* 0 matmul, 1 linear with bias, 2 strided operand (packed) */
} mm_ctx;

static fe_tensor *f_matmul(fe_tensor *const *in, const void *ctx) {
    const mm_ctx *m = ctx;
    if (m->variant == 1) return fe_linear(in[0], in[1], in[2]);
    if (m->variant == 2)
        return fe_matmul(fe_slice(in[0], -1, 0, fe_dim(in[0], -1), 2), in[1], false, false);
    return fe_matmul(in[0], in[1], m->ta, m->tb);
}

TEST(cuda_matmul_layouts_batches_and_grads) {
    NEED_GPU();
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        double tol = tol_of(dt);
        /* plain and transposed operands, M=37 K=129 N=65 */
        for (int t = 0; t < 4; t++) {
            mm_ctx c = {t & 1, (t >> 1) & 1, 0};
            int64_t sa[2] = {c.ta ? 129 : 37, c.ta ? 37 : 129},
                    sb[2] = {c.tb ? 65 : 129, c.tb ? 129 : 65};
            fe_tensor *a = randn_cpu(2, sa, dt), *b = randn_cpu(2, sb, dt);
            check_op("matmul 2-D", f_matmul, &c, 2, (fe_tensor *[]){a, b}, 3, tol);
        }
        mm_ctx plain = {false, false, 0};
        /* batched, one stride per operand */
        int64_t ba[3] = {3, 37, 129}, bb[3] = {3, 129, 65};
        check_op("matmul batched", f_matmul, &plain, 2,
                 (fe_tensor *[]){randn_cpu(3, ba, dt), randn_cpu(3, bb, dt)}, 3, tol);
        /* broadcast right operand (batch stride 0) */
        int64_t b2[2] = {129, 65};
        check_op("matmul broadcast", f_matmul, &plain, 2,
                 (fe_tensor *[]){randn_cpu(3, ba, dt), randn_cpu(2, b2, dt)}, 3, tol);
        /* batch dims that do not collapse: (2, 3) with the right operand broadcast on dim 1 */
        int64_t ca[4] = {2, 3, 37, 129}, cb[4] = {2, 1, 129, 65};
        check_op("matmul looped batch", f_matmul, &plain, 2,
                 (fe_tensor *[]){randn_cpu(4, ca, dt), randn_cpu(4, cb, dt)}, 3, tol);
        /* transposed batched operands */
        mm_ctx tt = {true, true, 0};
        int64_t ta[3] = {3, 129, 37}, tb[3] = {3, 65, 129};
        check_op("matmul batched transposed", f_matmul, &tt, 2,
                 (fe_tensor *[]){randn_cpu(3, ta, dt), randn_cpu(3, tb, dt)}, 3, tol);
        /* an operand with no unit stride (packed first) */
        mm_ctx st = {false, false, 2};
        int64_t pa[2] = {37, 258};
        check_op("matmul strided operand", f_matmul, &st, 2,
                 (fe_tensor *[]){randn_cpu(2, pa, dt), randn_cpu(2, b2, dt)}, 3, tol);
        /* linear with bias over (3, 37, 129) */
        mm_ctx lin = {false, false, 1};
        int64_t w[2] = {65, 129}, bias[1] = {65};
        check_op("linear", f_matmul, &lin, 3,
                 (fe_tensor *[]){randn_cpu(3, ba, dt), randn_cpu(2, w, dt), randn_cpu(1, bias, dt)},
                 7, tol);
        /* vector cases */
        int64_t v[1] = {129};
        check_op("matmul vector", f_matmul, &plain, 2,
                 (fe_tensor *[]){randn_cpu(1, v, dt), randn_cpu(2, b2, dt)}, 3, tol);
    }
}

TEST(cuda_matmul_empty_inner_dim) {
    NEED_GPU();
    int64_t sa[2] = {5, 0}, sb[2] = {0, 7};
    fe_tensor *a = fe_zeros(2, sa, FE_F32, GPU), *b = fe_zeros(2, sb, FE_F32, GPU);
    fe_tensor *c = fe_matmul(a, b, false, false);
    CHECK(c && fe_dim(c, 0) == 5 && fe_dim(c, 1) == 7);
    if (c) expect_equal("matmul with K = 0", c, fe_zeros(2, (int64_t[]){5, 7}, FE_F32, CPU));
}

/* ---- matrix products adding to c (cuBLAS's beta = 1) ------------------------------------------ */

typedef fe_tensor *(*view_fn)(fe_tensor *t);
static fe_tensor *as_is(fe_tensor *t) { return t; }
static fe_tensor *transposed(fe_tensor *t) { return fe_transpose(t, -2, -1); }
/* (1, K, N) seen as (3, K, N) with batch stride 0; (2, 1, K, N) as (2, 3, K, N) */
static fe_tensor *batch3(fe_tensor *t) {
    int64_t s[4];
    memcpy(s, fe_shape(t), sizeof(int64_t) * (size_t)fe_ndim(t));
    s[fe_ndim(t) - 3] = 3;
    return fe_expand(t, fe_ndim(t), s);
}

/* out = alpha a @ b + c through the backend on both devices, from the same random bases
 * seen through the same views: the GPU adding in place (c == out) and from a c apart
 * (into NaN-filled memory) against the CPU adding in place; c must come through
 * unchanged. a, b of dtype adt, c and out of odt. */
static void check_add_to_c(const char *what, fe_dtype adt, fe_dtype odt, int nda, const int64_t *sa,
                           view_fn va, int ndb, const int64_t *sb, view_fn vb, double alpha,
                           double tol) {
    fe_tensor *a0 = randn_cpu(nda, sa, adt), *b0 = randn_cpu(ndb, sb, adt);
    fe_tensor *ac = va(a0), *bc = vb(b0);
    fe_tensor *ag = va(fe_to_device(a0, GPU)), *bg = vb(fe_to_device(b0, GPU));
    int nd = fe_ndim(ac);
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, fe_shape(ac), sizeof(int64_t) * (size_t)nd);
    shape[nd - 1] = fe_dim(bc, -1);
    fe_tensor *cc = fe_randn(nd, shape, 0.0, 1.0, odt, CPU), *cg = fe_to_device(cc, GPU);
    fe_tensor *want = fe_empty_like(cc), *in_place = fe_to_device(cc, GPU);
    fe_tensor *apart = fe_full(nd, shape, NAN, odt, GPU);
    bool ok = want && in_place && apart && ag && bg && !fe_copy_(want, cc) &&
              !fe__be(ac)->matmul(want, ac, bc, alpha, want) &&
              !fe__be(ag)->matmul(in_place, ag, bg, alpha, in_place) &&
              !fe__be(ag)->matmul(apart, ag, bg, alpha, cg);
    char w[160];
    if (!ok) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s (%s): a product failed: %s\n", what, fe_dtype_name(adt), fe_last_error());
        return;
    }
    snprintf(w, sizeof w, "%s (%s -> %s), c == out", what, fe_dtype_name(adt), fe_dtype_name(odt));
    expect_close(w, in_place, want, tol);
    snprintf(w, sizeof w, "%s (%s -> %s), c apart", what, fe_dtype_name(adt), fe_dtype_name(odt));
    expect_close(w, apart, want, tol);
    snprintf(w, sizeof w, "%s (%s), c unchanged", what, fe_dtype_name(odt));
    expect_equal(w, cg, cc);
}

TEST(cuda_matmul_adds_to_c) {
    NEED_GPU();
    fe_dtype dts[4] = {FE_F32, FE_BF16, FE_F16, FE_F64};
    for (int k = 0; k < 4; k++) {
        fe_dtype dt = dts[k];
        double tol = tol_of(dt);
        int64_t a2[2] = {37, 129}, a2t[2] = {129, 37}, b2[2] = {129, 65}, b2t[2] = {65, 129};
        check_add_to_c("2-D", dt, dt, 2, a2, as_is, 2, b2, as_is, 1.0, tol);
        check_add_to_c("a transposed, alpha", dt, dt, 2, a2t, transposed, 2, b2, as_is, -0.5, tol);
        check_add_to_c("b transposed", dt, dt, 2, a2, as_is, 2, b2t, transposed, 1.0, tol);
        check_add_to_c("both transposed", dt, dt, 2, a2t, transposed, 2, b2t, transposed, 1.0, tol);
        int64_t a3[3] = {3, 37, 129}, b3[3] = {1, 129, 65};
        check_add_to_c("batched, b broadcast", dt, dt, 3, a3, as_is, 3, b3, batch3, 1.0, tol);
        /* (2, 3) batch dims that do not collapse: b's stride is 0 on one only */
        int64_t a4[4] = {2, 3, 37, 129}, b4[4] = {2, 1, 129, 65};
        check_add_to_c("looped batch", dt, dt, 4, a4, as_is, 4, b4, batch3, 1.0, tol);
        int64_t k1a[2] = {5, 1}, k1b[2] = {1, 3};
        check_add_to_c("K = 1", dt, dt, 2, k1a, as_is, 2, k1b, as_is, 1.0, tol);
        int64_t k0a[2] = {5, 0}, k0b[2] = {0, 3};
        check_add_to_c("K = 0", dt, dt, 2, k0a, as_is, 2, k0b, as_is, 1.0, 0.0);
        if (dt == FE_BF16 || dt == FE_F16) /* an f32 accumulator of 16-bit products */
            check_add_to_c("f32 out", dt, FE_F32, 2, a2t, transposed, 2, b2, as_is, 1.0,
                           tol_of(FE_F32));
    }
}

/* One input feeding two products (their gradients of it added by the second GEMM) and a
 * residual product (its gradient the caller's own, which no GEMM may write into), in
 * every float dtype against the CPU. */
static fe_tensor *f_shared_products(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    fe_tensor *h = fe_scale(in[0], 0.5);                                     /* (3, 37, 129) */
    fe_tensor *q = fe_linear(h, in[1], NULL), *k = fe_linear(h, in[2], NULL); /* (3, 37, 65) */
    return fe__linear_add(fe_silu_gate(q, k), in[3], h); /* h + silu(q) k w3^T */
}

TEST(cuda_gradients_added_by_the_products) {
    NEED_GPU();
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        int64_t x[3] = {3, 37, 129}, w[2] = {65, 129}, w3[2] = {129, 65};
        check_op("shared input", f_shared_products, NULL, 4,
                 (fe_tensor *[]){randn_cpu(3, x, dt), randn_cpu(2, w, dt), randn_cpu(2, w, dt),
                                 randn_cpu(2, w3, dt)},
                 15, tol_of(dt));
    }
}

/* ---- softmax and norms
 * ----------------------------------------------------------------------------------------- */

typedef struct {
    int dim;
    bool log;
} sm_ctx;

static fe_tensor *f_softmax(fe_tensor *const *in, const void *ctx) {
    const sm_ctx *s = ctx;
    return s->log ? fe_log_softmax(in[0], s->dim) : fe_softmax(in[0], s->dim);
}

TEST(cuda_softmax_and_grads) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129}, wide[2] = {5, 3001}, huge[2] = {3, 17000};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (int lg = 0; lg < 2; lg++) {
            sm_ctx last = {-1, lg}, mid = {1, lg};
            check_op(lg ? "log_softmax" : "softmax", f_softmax, &last, 1,
                     (fe_tensor *[]){fe_randn(3, s, 0.0, 3.0, dt, CPU)}, 1, tol_of(dt));
            check_op(lg ? "log_softmax dim 1" : "softmax dim 1", f_softmax, &mid, 1,
                     (fe_tensor *[]){fe_randn(3, s, 0.0, 3.0, dt, CPU)}, 1, tol_of(dt));
            check_op(lg ? "log_softmax long rows" : "softmax long rows", f_softmax, &last, 1,
                     (fe_tensor *[]){fe_randn(2, wide, 0.0, 3.0, dt, CPU)}, 1, tol_of(dt));
            check_op(lg ? "log_softmax very long rows" : "softmax very long rows", f_softmax, &last,
                     1, (fe_tensor *[]){fe_randn(2, huge, 0.0, 3.0, dt, CPU)}, 1, tol_of(dt));
        }
    }
}

typedef struct {
    int variant; /* 0 rmsnorm with w, 1 without, 2 residual (h + y), 3 layernorm w+b, 4 layernorm
                    bare */
} norm_ctx;

static fe_tensor *f_norm(fe_tensor *const *in, const void *ctx) {
    switch (((const norm_ctx *)ctx)->variant) {
    case 0: return fe_rmsnorm(in[0], in[1], 1e-5);
    case 1: return fe_rmsnorm(in[0], NULL, 1e-5);
    case 2: {
        fe_tensor *h = NULL, *y = NULL;
        if (fe_rmsnorm_residual(in[0], in[2], in[1], 1e-5, &h, &y)) return NULL;
        return fe_add(fe_scale(h, 0.5), y); /* both outputs reach the gradient */
    }
    case 3: return fe_layernorm(in[0], in[1], in[2], 1e-5);
    default: return fe_layernorm(in[0], NULL, NULL, 1e-5);
    }
}

TEST(cuda_rmsnorm_layernorm_and_grads) {
    NEED_GPU();
    int64_t shapes[2][3] = {{3, 37, 129}, {2, 3, 2049}};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (int sh = 0; sh < 2; sh++) {
            int64_t C = shapes[sh][2];
            for (int v = 0; v < 5; v++) {
                fe_tensor *x = fe_randn(3, shapes[sh], 0.3, 1.5, dt, CPU);
                fe_tensor *w = fe_randn(1, &C, 1.0, 0.3, dt, CPU);
                fe_tensor *third = v == 2 ? randn_cpu(3, shapes[sh], dt) : randn_cpu(1, &C, dt);
                static const char *names[5] = {"rmsnorm", "rmsnorm no weight", "rmsnorm residual",
                                               "layernorm", "layernorm bare"};
                norm_ctx c = {v};
                static const unsigned masks[5] = {3, 1, 7, 7, 1}; /* inputs each variant uses */
                unsigned mask = masks[v];
                check_op(names[v], f_norm, &c, 3, (fe_tensor *[]){x, w, third}, mask, tol_of(dt));
            }
        }
    }
}

/* Rows a multiple of 16 bytes long take the register-resident fast kernels: groups of 32 to
 * 512 threads per row, odd row counts (partial groups), and rows past the backward's limit. */
TEST(cuda_fast_rows_softmax_rmsnorm) {
    NEED_GPU();
    int64_t shapes[6][2] = {{67, 256}, {5, 2048}, {3, 4096}, {9, 8192}, {2, 16384}, {33, 64}};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        for (int sh = 0; sh < 6; sh++) {
            int64_t C = shapes[sh][1];
            for (int lg = 0; lg < 2; lg++) {
                sm_ctx last = {-1, lg};
                check_op(lg ? "fast log_softmax" : "fast softmax", f_softmax, &last, 1,
                         (fe_tensor *[]){fe_randn(2, shapes[sh], 0.0, 3.0, dt, CPU)}, 1, tol_of(dt));
            }
            for (int v = 0; v < 3; v++) {
                fe_tensor *x = fe_randn(2, shapes[sh], 0.3, 1.5, dt, CPU);
                fe_tensor *w = fe_randn(1, &C, 1.0, 0.3, dt, CPU);
                fe_tensor *third = v == 2 ? randn_cpu(2, shapes[sh], dt) : randn_cpu(1, &C, dt);
                static const char *names[3] = {"fast rmsnorm", "fast rmsnorm no weight",
                                               "fast rmsnorm residual"};
                static const unsigned masks[3] = {3, 1, 7};
                norm_ctx c = {v};
                check_op(names[v], f_norm, &c, 3, (fe_tensor *[]){x, w, third}, masks[v],
                         tol_of(dt));
            }
        }
    }
}

/* The fast RMSNorm backward is a persistent grid: with thousands of rows every group goes round
 * its ring of three row slots several times (on an H200: 6 to 11 rounds; one vector per thread,
 * and two at 4096 f32 and 8192 bf16), and the weight-only gradient (x not requiring one) runs
 * the same kernel without gx. */
TEST(cuda_rmsnorm_backward_many_rows_and_weight_only) {
    NEED_GPU();
    static const struct {
        int64_t shape[2];
        fe_dtype dt;
    } cases[] = {{{2700, 2048}, FE_BF16},
                 {{2700, 2048}, FE_F32},
                 {{1400, 4096}, FE_F32},
                 {{1400, 4096}, FE_F16},
                 {{777, 8192}, FE_BF16}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fe_dtype dt = cases[k].dt;
        const int64_t *shape = cases[k].shape;
        int64_t C = shape[1];
        for (int v = 0; v < 4; v++) {
            fe_tensor *x = fe_randn(2, shape, 0.3, 1.5, dt, CPU);
            fe_tensor *w = fe_randn(1, &C, 1.0, 0.3, dt, CPU);
            fe_tensor *third = v == 2 ? randn_cpu(2, shape, dt) : randn_cpu(1, &C, dt);
            static const char *names[4] = {"rmsnorm, many rows", "rmsnorm no weight, many rows",
                                           "rmsnorm residual, many rows",
                                           "rmsnorm weight gradient only"};
            static const unsigned masks[4] = {3, 1, 7, 2};
            norm_ctx c = {v == 3 ? 0 : v};
            check_op(names[v], f_norm, &c, 3, (fe_tensor *[]){x, w, third}, masks[v], tol_of(dt));
        }
    }
}

/* ---- rope, embedding, cross-entropy, silu gate
 * ------------------------------------------------------------- */

typedef struct {
    int64_t pos0;
    int seq_dim;
    fe_dtype freq_dt;
} rope_ctx;

static fe_tensor *f_rope(fe_tensor *const *in, const void *ctx) {
    const rope_ctx *r = ctx;
    fe_device dev = fe_device_of(in[0]);
    fe_tensor *f = fe_rope_inv_freq(fe_dim(in[0], -1), 10000.0, dev);
    if (r->freq_dt != FE_F32) f = fe_cast(f, r->freq_dt);
    return fe_rope(in[0], f, r->seq_dim, r->pos0);
}

TEST(cuda_rope_and_grads) {
    NEED_GPU();
    int64_t s[4] = {2, 37, 3, 64}, s2[4] = {2, 3, 37, 130};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        rope_ctx a = {5, 1, FE_F32}, b = {1000, 2, FE_F32}, c = {77, 1, FE_F64};
        check_op("rope (B, T, H, D)", f_rope, &a, 1, (fe_tensor *[]){randn_cpu(4, s, dt)}, 1,
                 tol_of(dt));
        check_op("rope (B, H, T, D)", f_rope, &b, 1, (fe_tensor *[]){randn_cpu(4, s2, dt)}, 1,
                 tol_of(dt));
        check_op("rope f64 frequencies", f_rope, &c, 1, (fe_tensor *[]){randn_cpu(4, s, dt)}, 1,
                 tol_of(dt));
    }
}

static fe_tensor *f_embedding(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    return fe_embedding(in[0], in[1]);
}

/* Random indices in [0, V) as dtype dt (i32 or i64), with repeats. */
static fe_tensor *rand_index(int nd, const int64_t *s, int64_t V, fe_dtype dt) {
    fe_tensor *u = fe_rand(nd, s, 0.0, (double)V, FE_F64, CPU);
    return fe_cast(u, dt); /* truncation toward zero keeps [0, V) */
}

TEST(cuda_embedding_and_grads) {
    NEED_GPU();
    int64_t idx_shape[2] = {3, 37};
    int64_t widths[2] = {129, 128}; /* 4-byte and 16-byte row moves */
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (int wi = 0; wi < 2; wi++) {
            for (int it = 0; it < 2; it++) {
                int64_t ws[2] = {50, widths[wi]}; /* 111 lookups into 50 rows: many repeats */
                fe_tensor *w = randn_cpu(2, ws, dt);
                fe_tensor *idx = rand_index(2, idx_shape, 50, it ? FE_I64 : FE_I32);
                check_op("embedding", f_embedding, NULL, 2, (fe_tensor *[]){w, idx}, 1, tol_of(dt));
            }
        }
    }
}

TEST(cuda_embedding_bad_index_is_reported_at_sync) {
    NEED_GPU();
    if (GPU.type == FE_CPU) SKIP("needs a real GPU");
    int64_t ws[2] = {10, 33}, n = 4;
    int64_t bad[4] = {1, 2, 12, 3};
    fe_tensor *w = fe_to_device(randn_cpu(2, ws, FE_F32), GPU);
    fe_tensor *idx = fe_from_data(bad, 1, &n, FE_I64, GPU);
    fe_tensor *y = fe_embedding(w, idx); /* the launch cannot know yet */
    CHECK(y != NULL);
    CHECK_ERROR(fe_device_sync(GPU) != FE_OK, "index 12 at position 2 is out of range for 10 rows");
    CHECK(fe_device_sync(GPU) == FE_OK); /* reported once */
    /* the CPU refuses at once */
    fe_tensor *idxc = fe_from_data(bad, 1, &n, FE_I64, CPU);
    CHECK_ERROR(fe_embedding(randn_cpu(2, ws, FE_F32), idxc) == NULL, "out of range");
}

/* Indices i64 on the CPU: `hot` of every 10 positions take row `hot_row`, the others are
 * spread over [0, V) by a fixed generator. */
static fe_tensor *hot_index(int64_t n, int64_t V, int hot, int64_t hot_row) {
    int64_t *h = malloc((size_t)n * sizeof *h);
    uint64_t s = 99;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (int64_t)(i % 10) < hot ? hot_row : (int64_t)((s >> 33) % (uint64_t)V);
    }
    fe_tensor *t = fe_from_data(h, 1, &n, FE_I64, CPU);
    free(h);
    return t;
}

/* The gradient kernel sorts the indices and writes each row once: rows hit thousands of times
 * (their sums split over many chunks), index lists longer than the vocabulary, rows no index
 * hits, 16-byte and element paths; the result is bit-for-bit the same on a second run. */
TEST(cuda_embedding_backward_hot_rows_and_long_lists) {
    NEED_GPU();
    static const struct {
        int64_t n, V, C;
        int hot;
    } cases[] = {{3000, 50, 128, 7}, {3000, 50, 129, 7}, {5000, 37, 64, 0},
                 {700, 300, 24, 2},  {1, 9, 16, 0},       {4099, 4, 8, 10}};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            int64_t ws[2] = {cases[c].V, cases[c].C};
            fe_tensor *w = randn_cpu(2, ws, dt);
            fe_tensor *idx = hot_index(cases[c].n, cases[c].V, cases[c].hot, cases[c].V / 2);
            for (int it = 0; it < 2; it++)
                check_op("embedding (hot rows, long lists)", f_embedding, NULL, 2,
                         (fe_tensor *[]){w, fe_cast(idx, it ? FE_I64 : FE_I32)}, 1, tol_of(dt));
        }
    }
    /* determinism: the same bits twice */
    int64_t n = 6000, os[2] = {n, 256}, ws[2] = {40, 256};
    fe_tensor *gout = fe_to_device(randn_cpu(2, os, FE_BF16), GPU);
    fe_tensor *idx = fe_to_device(hot_index(n, 40, 8, 3), GPU);
    fe_tensor *g1 = fe_empty(2, ws, FE_BF16, GPU), *g2 = fe_empty(2, ws, FE_BF16, GPU);
    CHECK(gout && idx && g1 && g2);
    if (!gout || !idx || !g1 || !g2) return;
    CHECK(fe__be(g1)->embedding_backward(g1, gout, idx) == FE_OK);
    CHECK(fe__be(g2)->embedding_backward(g2, gout, idx) == FE_OK);
    expect_equal("embedding backward run twice", g2, fe_to_device(g1, CPU));
}

/* The sort splits the vocabulary into one slice per SM (at most 1280 rows each: larger
 * vocabularies take more slices and the widest slices ask for more shared memory), and the
 * row kernel takes the sorted entries in blocks of 32 (more for very long lists): many slices
 * with a row holding 30% of 20000 entries (about 188 pieces added by whichever block ends last),
 * a list long enough to widen the blocks, vocabularies of 100000 and 200000 rows, rows of 4096
 * bf16 (two passes of the block's threads) and of 2052 f32. */
TEST(cuda_embedding_backward_slices_blocks_and_wide_rows) {
    NEED_GPU();
    static const struct {
        int64_t n, V, C;
        int hot;
        bool all_dtypes;
    } cases[] = {{20000, 5000, 16, 3, true},  {140000, 300, 8, 1, false},
                 {3000, 100000, 8, 2, false}, {3000, 200000, 8, 2, false},
                 {300, 20, 4096, 5, false},   {300, 20, 2052, 5, false},
                 {2049, 7, 24, 0, true}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (size_t k = 0; k < 4; k++) {
            fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
            if (!cases[c].all_dtypes && dt != FE_BF16 && dt != FE_F32) continue;
            if (cases[c].C == 4096 && dt != FE_BF16) continue;
            int64_t ws[2] = {cases[c].V, cases[c].C};
            fe_tensor *w = randn_cpu(2, ws, dt);
            fe_tensor *idx = hot_index(cases[c].n, cases[c].V, cases[c].hot, cases[c].V / 2);
            check_op("embedding (slices, blocks, wide rows)", f_embedding, NULL, 2,
                     (fe_tensor *[]){w, fe_cast(idx, c % 2 ? FE_I64 : FE_I32)}, 1, tol_of(dt));
        }
    }
}

/* No indices at all: every row of the gradient is written, as zeros. */
TEST(cuda_embedding_backward_no_indices_gives_zeros) {
    NEED_GPU();
    int64_t n = 0, os[2] = {0, 24}, ws[2] = {300, 24};
    fe_tensor *gout = fe_empty(2, os, FE_BF16, GPU), *idx = fe_empty(1, &n, FE_I32, GPU);
    fe_tensor *gw = fe_empty(2, ws, FE_BF16, GPU); /* poisoned: NaN where nothing is written */
    CHECK(gout && idx && gw);
    if (!gout || !idx || !gw) return;
    CHECK(fe__be(gw)->embedding_backward(gw, gout, idx) == FE_OK);
    expect_equal("embedding backward of no indices", gw, fe_zeros(2, ws, FE_BF16, CPU));
}

/* An index out of range adds nothing to the gradient (the forward is the one that reports
 * it), as on the CPU; the other rows are summed as usual. */
TEST(cuda_embedding_backward_out_of_range_index_is_skipped) {
    NEED_GPU();
    int64_t n = 6, os[2] = {6, 32}, ws[2] = {5, 32};
    int64_t bad[6] = {1, 7, 1, -1, 4, 5};
    for (size_t k = 0; k < 3; k++) {
        fe_dtype dt = k_float_dtypes[k];
        fe_tensor *goc = randn_cpu(2, os, dt);
        fe_tensor *idc = fe_from_data(bad, 1, &n, FE_I64, CPU);
        fe_tensor *gwc = fe_empty(2, ws, dt, CPU);
        fe_tensor *gog = fe_to_device(goc, GPU), *idg = fe_to_device(idc, GPU);
        fe_tensor *gwg = fe_empty(2, ws, dt, GPU);
        CHECK(gwc && gog && idg && gwg);
        if (!gwc || !gog || !idg || !gwg) return;
        CHECK(fe__be(gwc)->embedding_backward(gwc, goc, idc) == FE_OK);
        CHECK(fe__be(gwg)->embedding_backward(gwg, gog, idg) == FE_OK);
        CHECK(fe_device_sync(GPU) == FE_OK);
        expect_close("embedding backward with bad indices", gwg, gwc, tol_of(dt));
    }
}

typedef struct {
    int64_t ignore;
} ce_ctx;

static fe_tensor *f_ce(fe_tensor *const *in, const void *ctx) {
    return fe_cross_entropy(in[0], in[1], ((const ce_ctx *)ctx)->ignore);
}

TEST(cuda_cross_entropy_and_grads) {
    NEED_GPU();
    int64_t ls[3] = {3, 37, 1000}, ts[2] = {3, 37}, lw[2] = {4, 20000};
    ce_ctx c = {-100};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (int it = 0; it < 2; it++) {
            fe_dtype idt = it ? FE_I64 : FE_I32;
            fe_tensor *logits = fe_randn(3, ls, 0.0, 2.0, dt, CPU);
            /* targets with every fourth row ignored */
            fe_tensor *t = rand_index(2, ts, 1000, FE_I64);
            int64_t *tp = fe_data(t);
            for (int64_t i = 0; i < 3 * 37; i += 4)
                tp[i] = -100;
            check_op("cross_entropy", f_ce, &c, 2, (fe_tensor *[]){logits, fe_cast(t, idt)}, 1,
                     tol_of(dt));
            fe_tensor *wide = fe_randn(2, lw, 0.0, 2.0, dt, CPU);
            check_op("cross_entropy long rows", f_ce, &c, 2,
                     (fe_tensor *[]){wide, rand_index(1, lw, 20000, idt)}, 1, tol_of(dt));
        }
    }
    /* every row ignored: loss 0, gradient 0 */
    int64_t n = 3;
    int64_t all_ignored[3] = {-100, -100, -100};
    int64_t l2[2] = {3, 7};
    fe_tensor *lg = fe_to_device(randn_cpu(2, l2, FE_F32), GPU);
    fe_set_requires_grad(lg, true);
    fe_tensor *loss = fe_cross_entropy(lg, fe_from_data(all_ignored, 1, &n, FE_I64, GPU), -100);
    CHECK(loss && fe_item(loss) == 0.0);
    CHECK(loss && fe_backward(loss, NULL) == FE_OK);
    if (fe_grad(lg))
        expect_equal("all-ignored gradient", fe_grad(lg), fe_zeros(2, l2, FE_F32, CPU));
    /* a target out of range: reported when the loss is read */
    if (GPU.type == FE_CPU) return;
    int64_t bad[3] = {1, 9, 2};
    fe_tensor *l3 = fe_cross_entropy(lg, fe_from_data(bad, 1, &n, FE_I64, GPU), -100);
    CHECK(l3 != NULL);
    CHECK_ERROR(l3 && fe_to_host(l3, &(float){0}, FE_F32) != FE_OK,
                "target 9 at row 1 is out of range");
}

/* Rows a multiple of 16 bytes long (the vector kernels): all rows ignored, and a target out
 * of range reported at the next read, as on the generic path. */
TEST(cuda_cross_entropy_vector_rows_edge_cases) {
    NEED_GPU();
    int64_t n = 3, l2[2] = {3, 1024};
    int64_t all_ignored[3] = {-100, -100, -100};
    for (size_t k = 0; k < 3; k++) {
        fe_tensor *lg = fe_to_device(randn_cpu(2, l2, k_float_dtypes[k]), GPU);
        fe_set_requires_grad(lg, true);
        fe_tensor *loss =
            fe_cross_entropy(lg, fe_from_data(all_ignored, 1, &n, FE_I64, GPU), -100);
        CHECK(loss && fe_item(loss) == 0.0);
        CHECK(loss && fe_backward(loss, NULL) == FE_OK);
        if (fe_grad(lg))
            expect_equal("all-ignored gradient (vector rows)", fe_grad(lg),
                         fe_zeros(2, l2, k_float_dtypes[k], CPU));
        if (GPU.type == FE_CPU) continue;
        int64_t bad[3] = {1, 1024, 2};
        fe_tensor *l3 = fe_cross_entropy(lg, fe_from_data(bad, 1, &n, FE_I64, GPU), -100);
        CHECK(l3 != NULL);
        CHECK_ERROR(l3 && fe_to_host(l3, &(float){0}, FE_F32) != FE_OK,
                    "target 1024 at row 1 is out of range");
    }
}

/* Ignored rows mixed with counted ones, vocabularies that are not a multiple of 8 (the
 * element path for 16-bit dtypes) or are (the vector paths: rows in registers up to 4096
 * vectors, two passes beyond), targets at the first and last column. */
TEST(cuda_cross_entropy_ignored_rows_odd_vocab) {
    NEED_GPU();
    static const int64_t vocab[] = {7, 1001, 4100, 4096, 32000, 33000};
    ce_ctx c = {-100};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        for (size_t v = 0; v < sizeof vocab / sizeof vocab[0]; v++) {
            int64_t V = vocab[v], R = 7, ls[2] = {R, V};
            if (dt == FE_F64 && V > 5000) continue;
            int64_t tg[7] = {0, -100, V - 1, 3 % V, -100, V / 2, 1};
            fe_tensor *logits = fe_randn(2, ls, 0.0, 3.0, dt, CPU);
            fe_tensor *t = fe_from_data(tg, 1, &R, FE_I64, CPU);
            check_op("cross_entropy ignored rows", f_ce, &c, 2, (fe_tensor *[]){logits, t}, 1,
                     tol_of(dt));
            check_op("cross_entropy ignored rows (i32)", f_ce, &c, 2,
                     (fe_tensor *[]){logits, fe_cast(t, FE_I32)}, 1, tol_of(dt));
        }
    }
}

/* ---- linear with its bias (and GELU) in the GEMM's epilogue ------------------------------ */

static fe_tensor *f_linear_act(fe_tensor *const *in, const void *ctx) {
    int which = ((const op_sel *)ctx)->which; /* 0 linear + bias, 1 GELU + bias, 2 GELU */
    return which == 0 ? fe_linear(in[0], in[1], in[2])
                      : fe_linear_gelu(in[0], in[1], which == 1 ? in[2] : NULL);
}

TEST(cuda_linear_bias_and_gelu_epilogues) {
    NEED_GPU();
    /* in and out sizes of whole 16-byte rows take the epilogue; 33 -> 19 is composed */
    const int64_t shapes[2][3] = {{37, 64, 72}, {5, 33, 19}}; /* rows (x 3 batches), in, out */
    for (int sh = 0; sh < 2; sh++)
        for (size_t k = 0; k < 3; k++)
            for (int which = 0; which < 3; which++) {
                fe_dtype dt = k_float_dtypes[k];
                const int64_t *d = shapes[sh];
                int64_t before = fe__linear_epilogue_runs();
                op_sel sel = {which};
                char name[64];
                snprintf(name, sizeof name, "linear_act %d (%lldx%lld -> %lld)", which,
                         (long long)d[0], (long long)d[1], (long long)d[2]);
                check_op(name, f_linear_act, &sel, 3,
                         (fe_tensor *[]){randn_cpu(3, (int64_t[]){3, d[0], d[1]}, dt),
                                         fe_randn(2, (int64_t[]){d[2], d[1]}, 0.0, 0.2, dt, CPU),
                                         randn_cpu(1, (int64_t[]){d[2]}, dt)},
                         which == 2 ? 3 : 7, tol_of(dt));
#ifndef FE_TEST_CPU_AS_GPU
                /* the GPU side took the epilogue exactly when the shape allows it */
                int64_t ran = fe__linear_epilogue_runs() - before;
                if (ran != (sh == 0 ? 1 : 0)) {
                    fe_fails_in_case++;
                    fprintf(stderr, "  %s (%s): the epilogue ran %lld times, expected %d\n", name,
                            fe_dtype_name(dt), (long long)ran, sh == 0 ? 1 : 0);
                }
#endif
            }
}

static fe_tensor *f_silu_gate(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    return fe_silu_gate(in[0], in[1]);
}

TEST(cuda_silu_gate_and_grads) {
    NEED_GPU();
    int64_t s[3] = {3, 37, 129};
    for (size_t k = 0; k < 4; k++) {
        fe_dtype dt = k < 3 ? k_float_dtypes[k] : FE_F64;
        check_op("silu_gate", f_silu_gate, NULL, 2,
                 (fe_tensor *[]){fe_randn(3, s, 0.0, 2.0, dt, CPU), randn_cpu(3, s, dt)}, 3,
                 tol_of(dt));
    }
}

static fe_tensor *f_sdpa(fe_tensor *const *in, const void *ctx) {
    (void)ctx;
    return fe_sdpa(in[0], in[1], in[2], true, 0.0);
}

TEST(cuda_attention_composed_and_grads) {
    NEED_GPU();
    int64_t qs[4] = {2, 4, 37, 16}, ks[4] = {2, 2, 37, 16};
    for (size_t k = 0; k < 2; k++) {
        fe_dtype dt = k == 0 ? FE_F32 : FE_BF16;
        check_op("sdpa causal", f_sdpa, NULL, 3,
                 (fe_tensor *[]){randn_cpu(4, qs, dt), randn_cpu(4, ks, dt), randn_cpu(4, ks, dt)},
                 7, tol_of(dt));
    }
}

/* (B, T, H, D) inputs seen as (B, H, T, D) through transposes, the output back to
 * (B, T, Hq * D): the attention module's dataflow, which the fused kernels take as
 * strided views with no copies */
typedef struct sdpa_bthd_ctx {
    bool causal;
} sdpa_bthd_ctx;

static fe_tensor *f_sdpa_bthd(fe_tensor *const *in, const void *ctx) {
    fe_tensor *o = fe_sdpa(fe_transpose(in[0], 1, 2), fe_transpose(in[1], 1, 2),
                           fe_transpose(in[2], 1, 2), ((const sdpa_bthd_ctx *)ctx)->causal, 0.0);
    const int64_t *s = fe_shape(in[0]);
    return fe_reshape(fe_transpose(o, 1, 2), 3, (int64_t[]){s[0], s[1], s[2] * s[3]});
}

TEST(cuda_attention_fused_on_strided_views) {
    NEED_GPU();
    const struct {
        int64_t B, T, S, Hq, Hkv, D;
        bool causal;
        fe_dtype dt;
    } cases[] = {
        {2, 77, 77, 4, 2, 64, true, FE_BF16},    {1, 33, 150, 4, 1, 64, false, FE_F16},
        {2, 130, 130, 2, 1, 128, true, FE_F16},  {1, 65, 129, 6, 2, 128, true, FE_BF16},
        {2, 129, 65, 2, 2, 64, false, FE_BF16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const sdpa_bthd_ctx ctx = {cases[i].causal};
        int64_t qs[4] = {cases[i].B, cases[i].T, cases[i].Hq, cases[i].D};
        int64_t ks[4] = {cases[i].B, cases[i].S, cases[i].Hkv, cases[i].D};
        fe_dtype dt = cases[i].dt;
        check_op("sdpa on (B, T, H, D) views", f_sdpa_bthd, &ctx, 3,
                 (fe_tensor *[]){randn_cpu(4, qs, dt), randn_cpu(4, ks, dt), randn_cpu(4, ks, dt)},
                 7, tol_of(dt));
    }
    if (GPU.type == FE_CPU) return;
    /* the fused output is (B, T, Hq, D) memory: its transpose back is contiguous, so the
     * reshape to (B, T, Hq * D) is a view */
    int64_t qs[4] = {1, 40, 4, 64}, ks[4] = {1, 40, 2, 64};
    fe_tensor *q = fe_to_device(randn_cpu(4, qs, FE_BF16), GPU);
    fe_tensor *k = fe_to_device(randn_cpu(4, ks, FE_BF16), GPU);
    fe_tensor *o = fe_sdpa(fe_transpose(q, 1, 2), fe_transpose(k, 1, 2), fe_transpose(k, 1, 2),
                           true, 0.0);
    CHECK(o && !fe_is_contiguous(o) && fe_is_contiguous(fe_transpose(o, 1, 2)));
}

/* ---- memory
 * ------------------------------------------------------------------------------------------------------
 */

TEST(cuda_allocator_reuses_blocks) {
    NEED_GPU();
    if (GPU.type == FE_CPU) SKIP("needs a real GPU");
    const char *nc = getenv("FE_CUDA_NO_CACHE");
    if (nc && !strcmp(nc, "1")) SKIP("the cache is off (FE_CUDA_NO_CACHE=1)");
#ifdef FE_HAVE_CUDA
    int64_t n = 3 * 37 * 129 * 61; /* ~3.5 MB of f32: a large (2 MiB-grain) block */
    fe_cuda_mem_stats s0, s1, s2, s3;
    CHECK(fe_cuda_mem_stats_get(0, &s0) == FE_OK);
    fe_tensor *a = fe_empty(1, &n, FE_F32, GPU);
    CHECK(a != NULL);
    CHECK(fe_cuda_mem_stats_get(0, &s1) == FE_OK);
    CHECK(s1.current == s0.current + (size_t)n * 4);
    CHECK(fe_device_mem_current(GPU) == s1.current);
    CHECK(fe_device_mem_peak(GPU) >= s1.current);
    fe_free(fe_keep(a)); /* back to the cache */
    CHECK(fe_cuda_mem_stats_get(0, &s2) == FE_OK);
    CHECK(s2.current == s0.current);
    CHECK(s2.cached >= (size_t)n * 4);
    CHECK(s2.reserved == s1.reserved);
    fe_tensor *b = fe_empty(1, &n, FE_F32, GPU); /* same size: served from the cache */
    CHECK(fe_cuda_mem_stats_get(0, &s3) == FE_OK);
    CHECK(b != NULL);
    CHECK(s3.n_cuda_malloc == s2.n_cuda_malloc);
    CHECK(s3.n_reused == s2.n_reused + 1);
    CHECK(s3.reserved == s2.reserved);
    /* small sizes share a power-of-two class */
    int64_t m1 = 700, m2 = 1000; /* 2800 and 4000 bytes: both the 4 KiB class */
    fe_tensor *c = fe_empty(1, &m1, FE_F32, GPU);
    CHECK(c != NULL);
    fe_free(fe_keep(c));
    CHECK(fe_cuda_mem_stats_get(0, &s2) == FE_OK);
    fe_tensor *e = fe_empty(1, &m2, FE_F32, GPU);
    CHECK(fe_cuda_mem_stats_get(0, &s3) == FE_OK);
    CHECK(e != NULL && s3.n_cuda_malloc == s2.n_cuda_malloc);
    /* peak figures */
    fe_device_mem_reset_peak(GPU);
    CHECK(fe_device_mem_peak(GPU) == fe_device_mem_current(GPU));
    CHECK(fe_cuda_empty_cache(0) == FE_OK);
    CHECK(fe_cuda_mem_stats_get(0, &s3) == FE_OK);
    CHECK(s3.cached == 0);
#endif
}

TEST(cuda_out_of_memory_is_an_error) {
    NEED_GPU();
    if (GPU.type == FE_CPU) SKIP("needs a real GPU");
    int64_t n = (int64_t)1 << 48; /* 1 PiB of f32 */
    fe_clear_error();
    fe_tensor *t = fe_empty(1, &n, FE_F32, GPU);
    CHECK(t == NULL);
    CHECK(fe_last_status() == FE_ERR_OOM);
    CHECK(strstr(fe_last_error(), "out of memory") != NULL);
    CHECK(strstr(fe_last_error(), "asked for 1125899906842624 bytes") != NULL);
    CHECK(strstr(fe_last_error(), "free") != NULL);
    fe_clear_error();
    /* the device still works afterwards */
    int64_t s[1] = {1000};
    fe_tensor *a = fe_full(1, s, 2.0, FE_F32, GPU);
    CHECK(a && fe_item(fe_sum(a, 0, NULL, false)) == 2000.0);
}

TEST(cuda_missing_device_index_is_an_error) {
    NEED_GPU();
    if (GPU.type == FE_CPU) SKIP("needs a real GPU");
    int64_t s[1] = {4};
    CHECK_ERROR(fe_empty(1, s, FE_F32, (fe_device){FE_CUDA, 63}) == NULL, "does not exist");
}
