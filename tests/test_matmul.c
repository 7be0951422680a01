/* Matrix products on the CPU: the backend's add-to-c mode (BLAS's beta = 1) against the
 * plain product plus a separate add; a product folding its left operand's batch dims
 * into rows against the broadcast batched one; gradients that the GEMM adds into an
 * input's pending gradient against the ones the tape adds; and the product that adds a
 * residual (the Llama block's down projection). */
#include "backends/backend.h"
#include "test.h"

#define S(...) (int64_t[]){__VA_ARGS__}
#define CPU FE_DEVICE_CPU

/* ---- the backend's c argument ------------------------------------------------------- */

/* A copy of t in memory of its own (fe_contiguous would give a view of t's). */
static fe_tensor *copy_of(const fe_tensor *t) {
    fe_tensor *c = fe_empty_like(t);
    CHECK(c && fe_copy_(c, t) == FE_OK);
    return c;
}

/* A random (.., M, N) tensor shaped as the product of the views a and b. */
static fe_tensor *like_product(const fe_tensor *a, const fe_tensor *b, fe_dtype dt) {
    int nd = fe_ndim(a);
    int64_t shape[FE_MAX_DIMS];
    memcpy(shape, fe_shape(a), sizeof(int64_t) * (size_t)nd);
    shape[nd - 1] = fe_dim(b, -1);
    return fe_randn(nd, shape, 0.0, 1.0, dt, CPU);
}

/* out = alpha a @ b + c with c == out (in place) and with c apart from out, against the
 * product made alone and added after; c must come through unchanged. a and b are views
 * as the op layer hands them to the backend (broadcast, any unit-stride layout). */
static void check_add_to_c(const char *what, fe_tensor *a, fe_tensor *b, double alpha,
                           double tol) {
    const fe_backend *be = fe__be(a);
    fe_dtype dt = fe_dtype_of(a);
    fe_tensor *c = like_product(a, b, dt);
    fe_tensor *c_before = copy_of(c);
    fe_tensor *p = fe_empty_like(c), *in_place = copy_of(c), *apart = fe_empty_like(c);
    fe_fill_(apart, NAN); /* every element must be written */
    CHECK(be->matmul(p, a, b, alpha, NULL) == FE_OK);
    fe_tensor *expect = fe_add(c, p); /* the old way: product, then an add */
    CHECK(be->matmul(in_place, a, b, alpha, in_place) == FE_OK);
    CHECK(be->matmul(apart, a, b, alpha, c) == FE_OK);
    double e1 = t_relerr(in_place, expect), e2 = t_relerr(apart, expect);
    if (!(e1 <= tol && e2 <= tol)) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s (%s): relative error %g in place, %g apart (tol %g)\n", what,
                fe_dtype_name(dt), e1, e2, tol);
    }
    CHECK(t_maxdiff(c, c_before) == 0);
}

/* The operand layouts the op layer produces, for one float dtype. */
static void layouts(fe_dtype dt, double tol) {
    fe_tensor *a = fe_randn(2, S(7, 13), 0, 1, dt, CPU), *b = fe_randn(2, S(13, 5), 0, 1, dt, CPU);
    check_add_to_c("2-D", a, b, 1.0, tol);
    check_add_to_c("2-D, alpha", a, b, -0.375, tol);
    fe_tensor *at = fe_transpose(fe_randn(2, S(13, 7), 0, 1, dt, CPU), 0, 1);
    fe_tensor *bt = fe_transpose(fe_randn(2, S(5, 13), 0, 1, dt, CPU), 0, 1);
    check_add_to_c("a transposed", at, b, 1.0, tol);
    check_add_to_c("b transposed", a, bt, 1.0, tol);
    check_add_to_c("both transposed", at, bt, 1.0, tol);
    /* batched: a's batch is a strided slice, b broadcast over it (stride 0) */
    fe_tensor *a3 = fe_slice(fe_randn(3, S(7, 9, 11), 0, 1, dt, CPU), 0, 0, 7, 2); /* (4, 9, 11) */
    fe_tensor *b3 = fe_expand(fe_randn(3, S(1, 11, 6), 0, 1, dt, CPU), 3, S(4, 11, 6));
    check_add_to_c("batched, b broadcast", a3, b3, 1.0, tol);
    fe_tensor *b3t = fe_transpose(fe_randn(3, S(4, 6, 11), 0, 1, dt, CPU), 1, 2);
    check_add_to_c("batched, b transposed", a3, b3t, 1.0, tol);
    /* many small products (the CPU's one-product-per-thread path) */
    fe_tensor *a4 = fe_randn(4, S(2, 3, 5, 4), 0, 1, dt, CPU), *b4 = fe_randn(4, S(2, 3, 4, 6), 0, 1, dt, CPU);
    check_add_to_c("many small products", a4, b4, 1.0, tol);
    /* long enough in K for BLAS to add blocks of it into c one after another */
    fe_tensor *al = fe_randn(2, S(67, 300), 0, 1, dt, CPU), *bl = fe_randn(2, S(300, 45), 0, 1, dt, CPU);
    check_add_to_c("long K", al, bl, 1.0, tol);
}

TEST(add_to_c_matches_product_plus_add) {
    layouts(FE_F64, 1e-15);
    layouts(FE_F32, 1e-6);
}

/* K = 0: the product is empty, so out is c (or zeros when c is NULL). */
TEST(add_to_c_with_empty_inner_dim) {
    fe_dtype dts[] = {FE_F64, FE_F32, FE_BF16};
    for (int i = 0; i < 3; i++) {
        fe_tensor *a = fe_empty(2, S(3, 0), dts[i], CPU), *b = fe_empty(2, S(0, 4), dts[i], CPU);
        fe_tensor *c = fe_randn(2, S(3, 4), 0, 1, dts[i], CPU);
        fe_tensor *out = fe_full(2, S(3, 4), NAN, dts[i], CPU), *acc = copy_of(c);
        CHECK(fe__be(a)->matmul(out, a, b, 1.0, c) == FE_OK);
        CHECK(fe__be(a)->matmul(acc, a, b, 1.0, acc) == FE_OK);
        CHECK(t_maxdiff(out, c) == 0 && t_maxdiff(acc, c) == 0);
        CHECK(fe__be(a)->matmul(out, a, b, 1.0, NULL) == FE_OK);
        CHECK(t_maxdiff(out, fe_zeros(2, S(3, 4), dts[i], CPU)) == 0);
    }
}

/* 16-bit operands and out: the sum is formed in f32 and rounded once, which is at least
 * as close to the exact c + a b as rounding the product and then the sum. */
TEST(add_to_c_in_16_bits_rounds_once) {
    fe_dtype dts[] = {FE_BF16, FE_F16};
    for (int i = 0; i < 2; i++) {
        fe_tensor *a = fe_randn(3, S(3, 19, 37), 0, 1, dts[i], CPU);
        fe_tensor *b = fe_transpose(fe_randn(3, S(3, 23, 37), 0, 1, dts[i], CPU), 1, 2);
        fe_tensor *c = fe_randn(3, S(3, 19, 23), 0, 4, dts[i], CPU);
        fe_tensor *exact = fe_add(fe_cast(c, FE_F64), fe_matmul(fe_cast(a, FE_F64), fe_cast(b, FE_F64), false, false));
        fe_tensor *acc = copy_of(c), *p = fe_empty_like(c);
        CHECK(fe__be(a)->matmul(acc, a, b, 1.0, acc) == FE_OK);
        CHECK(fe__be(a)->matmul(p, a, b, 1.0, NULL) == FE_OK);
        double e_acc = t_relerr(acc, exact), e_old = t_relerr(fe_add(c, p), exact);
        printf("  %s: relative error %.3g adding in the GEMM, %.3g adding after\n",
               fe_dtype_name(dts[i]), e_acc, e_old);
        CHECK(e_acc <= e_old && e_acc < (dts[i] == FE_BF16 ? 4e-3 : 5e-4));
    }
}

/* An f32 out under bf16/f16 operands: an f32 accumulator of 16-bit products (the fused
 * loss's LM-head gradient over row chunks), accurate to f32. */
TEST(add_to_c_f32_accumulator_of_16_bit_products) {
    fe_dtype dts[] = {FE_BF16, FE_F16};
    for (int i = 0; i < 2; i++) {
        fe_tensor *at = fe_transpose(fe_randn(2, S(40, 31), 0, 1, dts[i], CPU), 0, 1); /* (31, 40) */
        fe_tensor *x = fe_randn(2, S(40, 9), 0, 1, dts[i], CPU);
        fe_tensor *acc = fe_randn(2, S(31, 9), 0, 1, FE_F32, CPU);
        fe_tensor *exact = fe_add(fe_cast(acc, FE_F64), fe_matmul(fe_cast(at, FE_F64), fe_cast(x, FE_F64), false, false));
        CHECK(fe__be(x)->matmul(acc, at, x, 1.0, acc) == FE_OK);
        CHECK(t_relerr(acc, exact) < 1e-6);
    }
}

/* ---- folding batch dims into rows -------------------------------------------------- */

typedef struct fold_case {
    bool tb;
    bool permuted; /* a is a permuted view whose batch dims cannot fold without a copy */
} fold_case;

/* (2, 3, 7, 5) @ (5, 4) (or its transpose) folded into one GEMM, against the same
 * product with b given a batch dim of 1, which takes the broadcast batched path: values
 * and both gradients. */
static void fold_vs_batched(fold_case fc) {
    fe_tensor *a0 = fc.permuted ? fe_permute(fe_randn(4, S(3, 2, 7, 5), 0, 1, FE_F64, CPU), (int[]){1, 0, 2, 3})
                                : fe_randn(4, S(2, 3, 7, 5), 0, 1, FE_F64, CPU);
    fe_tensor *b0 = fc.tb ? fe_randn(2, S(4, 5), 0, 1, FE_F64, CPU) : fe_randn(2, S(5, 4), 0, 1, FE_F64, CPU);
    fe_tensor *g = fe_randn(4, S(2, 3, 7, 4), 0, 1, FE_F64, CPU);
    fe_tensor *y[2], *ga[2], *gb[2];
    for (int k = 0; k < 2; k++) {
        fe_tensor *a = fe_detach(a0), *b = fe_detach(b0);
        fe_set_requires_grad(a, true), fe_set_requires_grad(b, true);
        fe_tensor *bb = k ? fe_unsqueeze(b, 0) : b; /* k = 1: (1, K, N), not folded */
        y[k] = fe_matmul(a, bb, false, fc.tb);
        CHECK(y[k] && fe_ndim(y[k]) == 4 && fe_dim(y[k], 3) == 4);
        CHECK(fe_backward(y[k], g) == FE_OK);
        ga[k] = fe_grad(a), gb[k] = fe_grad(b);
    }
    CHECK(t_relerr(y[0], y[1]) < 1e-14);
    CHECK(t_relerr(ga[0], ga[1]) < 1e-14);
    CHECK(t_relerr(gb[0], gb[1]) < 1e-14);
}

TEST(folded_product_matches_the_batched_one) {
    fold_vs_batched((fold_case){false, false});
    fold_vs_batched((fold_case){true, false});
    fold_vs_batched((fold_case){false, true});
    fold_vs_batched((fold_case){true, true});
}

/* ---- gradients added by the GEMM ----------------------------------------------------- */

/* The ways one tensor h (a non-leaf, as the Llama block's normed input is) feeds several
 * products and another op. FIRST: the other op's gradient of h reaches h before the
 * products' (they add into it), LAST: after them (the tape adds it). The other op is
 * tanh, or an add, which hands one gradient tensor to both h and z. */
enum { PRODUCTS_ONLY, TANH_FIRST, TANH_LAST, ADD_FIRST, ADD_LAST, N_CASES };

/* Branch `only` of the graph (-1: all of them) from x, as one output summed with weights
 * R[i] (so each branch has its own random incoming gradient). */
static fe_tensor *branches(int with, int only, fe_tensor *x, fe_tensor *z, fe_tensor *const *w,
                           fe_tensor *const *R) {
    fe_tensor *h = fe_scale(x, 1.5);
    fe_tensor *parts[4] = {NULL, NULL, NULL, NULL};
    int n = 0;
    bool other = only < 0 || only == 3;
    if (with == TANH_FIRST && other) parts[n++] = fe_mul(fe_tanh(h), R[3]);
    if (with == ADD_FIRST && other) parts[n++] = fe_mul(fe_add(h, fe_scale(z, -2.0)), R[3]);
    if (only < 0 || only == 0) parts[n++] = fe_mul(fe_linear(h, w[0], NULL), R[0]);
    if (only < 0 || only == 1) parts[n++] = fe_mul(fe_matmul(h, w[1], false, false), R[1]);
    if (only < 0 || only == 2) parts[n++] = fe_mul(fe_linear(h, w[2], NULL), R[2]);
    if (with == TANH_LAST && other) parts[n++] = fe_mul(fe_tanh(h), R[3]);
    if (with == ADD_LAST && other) parts[n++] = fe_mul(fe_add(h, fe_scale(z, -2.0)), R[3]);
    /* the backward reaches the parts in this order (the tape runs the later inputs of
     * each add first) */
    fe_tensor *sum = fe_sum(parts[n - 1], 0, NULL, false);
    for (int i = n - 2; i >= 0; i--) sum = fe_add(sum, fe_sum(parts[i], 0, NULL, false));
    return sum;
}

/* x's (and z's) gradient through the whole graph against the sum of the gradients of
 * each branch on its own (where no two gradients of h ever meet). */
static void several_products(fe_dtype dt, int with, double tol) {
    fe_tensor *x = fe_randn(3, S(2, 9, 6), 0, 1, dt, CPU), *z = fe_randn(3, S(2, 9, 6), 0, 1, dt, CPU);
    fe_set_requires_grad(x, true), fe_set_requires_grad(z, true);
    fe_tensor *w[3] = {fe_randn(2, S(5, 6), 0, 1, dt, CPU), fe_randn(2, S(6, 3), 0, 1, dt, CPU),
                       fe_randn(2, S(11, 6), 0, 1, dt, CPU)};
    fe_tensor *R[4] = {fe_randn(3, S(2, 9, 5), 0, 1, dt, CPU), fe_randn(3, S(2, 9, 3), 0, 1, dt, CPU),
                       fe_randn(3, S(2, 9, 11), 0, 1, dt, CPU), fe_randn(3, S(2, 9, 6), 0, 1, dt, CPU)};
    int nb = with == PRODUCTS_ONLY ? 3 : 4;
    fe_tensor *gx = fe_zeros_like(x), *gz = fe_zeros_like(z);
    for (int i = 0; i < nb; i++) {
        CHECK(fe_backward(branches(with, i, x, z, w, R), NULL) == FE_OK);
        fe_add_(gx, fe_grad(x), 1.0);
        if (fe_grad(z)) fe_add_(gz, fe_grad(z), 1.0);
        fe_zero_grad(x), fe_zero_grad(z);
    }
    CHECK(fe_backward(branches(with, -1, x, z, w, R), NULL) == FE_OK);
    double ex = t_relerr(fe_grad(x), gx);
    if (!(ex <= tol)) {
        fe_fails_in_case++;
        fprintf(stderr, "  %s, case %d: x's gradient off by %g (tol %g)\n", fe_dtype_name(dt), with, ex, tol);
    }
    if (with == ADD_FIRST || with == ADD_LAST) CHECK(fe_grad(z) && t_relerr(fe_grad(z), gz) <= tol);
    else CHECK(fe_grad(z) == NULL);
}

TEST(one_input_feeding_several_products) {
    for (int with = PRODUCTS_ONLY; with < N_CASES; with++) {
        several_products(FE_F64, with, 1e-15);
        several_products(FE_F32, with, 1e-6);
    }
}

/* h and q both feed an add, which hands them one gradient tensor, and the product h q,
 * whose backward runs while that tensor is pending for both: neither product gradient
 * may be added into it (each would corrupt the other's), so both go through the tape's
 * add. Values against the closed form: dh = R1 + R2 q^T, dq = R1 + h^T R2. */
TEST(a_shared_pending_gradient_is_not_written_over) {
    fe_dtype dts[] = {FE_F64, FE_F32};
    for (int i = 0; i < 2; i++) {
        fe_tensor *x = fe_randn(2, S(6, 6), 0, 1, dts[i], CPU), *y = fe_randn(2, S(6, 6), 0, 1, dts[i], CPU);
        fe_tensor *R1 = fe_randn(2, S(6, 6), 0, 1, dts[i], CPU), *R2 = fe_randn(2, S(6, 6), 0, 1, dts[i], CPU);
        fe_set_requires_grad(x, true), fe_set_requires_grad(y, true);
        fe_tensor *h = fe_scale(x, 1.0), *q = fe_scale(y, 1.0);
        fe_tensor *prod = fe_sum(fe_mul(fe_matmul(h, q, false, false), R2), 0, NULL, false);
        fe_tensor *sum = fe_sum(fe_mul(fe_add(h, q), R1), 0, NULL, false);
        CHECK(fe_backward(fe_add(prod, sum), NULL) == FE_OK); /* the add's backward runs first */
        fe_tensor *dh = fe_add(R1, fe_matmul(R2, y, false, true));
        fe_tensor *dq = fe_add(R1, fe_matmul(x, R2, true, false));
        double tol = dts[i] == FE_F64 ? 1e-15 : 1e-6;
        CHECK(t_relerr(fe_grad(x), dh) <= tol && t_relerr(fe_grad(y), dq) <= tol);
    }
}

/* Structure: the gradient of an input that feeds three products is gathered in one
 * buffer that the GEMMs add into; adding each product's gradient apart would hold
 * three of them at once (the gathered sum, the new product, their sum). */
TEST(several_products_hold_one_gradient_of_their_input) {
    int64_t R = 1024, C = 64;
    size_t hbytes = (size_t)(R * C) * sizeof(double);
    fe_tensor *x = fe_randn(3, S(2, R / 2, C), 0, 1, FE_F64, CPU);
    fe_set_requires_grad(x, true);
    fe_tensor *h = fe_scale(x, 1.0);
    fe_tensor *loss = NULL;
    for (int i = 0; i < 3; i++) { /* (…, 2) outputs: everything else is small beside h */
        fe_tensor *y = fe_linear(h, fe_randn(2, S(2, C), 0, 1, FE_F64, CPU), NULL);
        fe_tensor *s = fe_sum(fe_square(y), 0, NULL, false);
        loss = loss ? fe_add(loss, s) : s;
    }
    size_t base = fe_device_mem_current(CPU);
    fe_device_mem_reset_peak(CPU);
    CHECK(fe_backward(loss, NULL) == FE_OK);
    size_t held = fe_device_mem_peak(CPU) - base;
    printf("  the backward held %.2f gradients of h at most\n", (double)held / (double)hbytes);
    /* one for h, one more for x's own gradient made from it (and small change) */
    CHECK(held < hbytes * 5 / 2);
}

/* ---- the product that adds a residual ------------------------------------------------ */

/* r + x w^T through fe__linear_add: its values and all three gradients against linear
 * plus add, with r laid out as the result (one GEMM) and as a view it cannot use. */
TEST(linear_add_matches_linear_plus_add) {
    fe_tensor *x0 = fe_randn(3, S(2, 7, 5), 0, 1, FE_F64, CPU), *w0 = fe_randn(2, S(4, 5), 0, 1, FE_F64, CPU);
    fe_tensor *g = fe_randn(3, S(2, 7, 4), 0, 1, FE_F64, CPU);
    for (int strided = 0; strided < 2; strided++) {
        fe_tensor *r0 = strided ? fe_transpose(fe_randn(3, S(2, 4, 7), 0, 1, FE_F64, CPU), 1, 2)
                                : fe_randn(3, S(2, 7, 4), 0, 1, FE_F64, CPU);
        fe_tensor *y[2], *gx[2], *gw[2], *gr[2];
        for (int k = 0; k < 2; k++) {
            fe_tensor *x = fe_detach(x0), *w = fe_detach(w0), *r = fe_detach(r0);
            fe_set_requires_grad(x, true), fe_set_requires_grad(w, true), fe_set_requires_grad(r, true);
            y[k] = k ? fe_add(fe_linear(x, w, NULL), r) : fe__linear_add(x, w, r);
            CHECK(y[k] && fe_backward(y[k], g) == FE_OK);
            gx[k] = fe_grad(x), gw[k] = fe_grad(w), gr[k] = fe_grad(r);
        }
        CHECK(t_relerr(y[0], y[1]) < 1e-15);
        CHECK(t_relerr(gx[0], gx[1]) < 1e-15 && t_relerr(gw[0], gw[1]) < 1e-15);
        CHECK(t_maxdiff(gr[0], g) == 0 && t_maxdiff(gr[1], g) == 0);
    }
    /* without grad: no node, the same values */
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *r = fe_randn(3, S(2, 7, 4), 0, 1, FE_F64, CPU);
    fe_tensor *y = fe__linear_add(x0, w0, r);
    CHECK(y && !fe_requires_grad(y) && t_relerr(y, fe_add(fe_linear(x0, w0, NULL), r)) < 1e-15);
    fe_set_grad_enabled(prev);
    CHECK_ERROR(fe__linear_add(x0, fe_randn(2, S(4, 6), 0, 1, FE_F64, CPU), r) == NULL, "linear");
}
