/* fe_sdpa on strided views. The attention module hands it (B, T, H, D) memory seen as
 * (B, H, T, D) (a transpose, no copy); the result and every gradient must equal those
 * of contiguous inputs holding the same values, for GQA, causal and not, S != T, in
 * every float dtype the CPU runs (bf16 and f16 at the fused kernels' head dims), and
 * the gradients must pass a float64 finite-difference check through the views. */
#include "gradcheck.h"
#include "test.h"

#define CPU FE_DEVICE_CPU

typedef struct attn_case {
    int64_t B, Hq, Hkv, T, S, D;
    bool causal;
    fe_dtype dt;
} attn_case;

static double tol_of(fe_dtype dt) {
    return dt == FE_F64 ? 1e-12 : dt == FE_F32 ? 1e-5 : 1e-2;
}

/* ||a - b|| / ||b|| within tol, with a message naming what differs */
static void expect_close(const char *what, const attn_case *c, const fe_tensor *a,
                         const fe_tensor *b) {
    double e = a && b ? t_relerr(a, b) : INFINITY;
    if (!(e <= tol_of(c->dt))) {
        fe_fails_in_case++;
        fprintf(stderr,
                "  %s: relative error %g (%s B=%lld Hq=%lld Hkv=%lld T=%lld S=%lld D=%lld %s); "
                "last error: %s\n",
                what, e, fe_dtype_name(c->dt), (long long)c->B, (long long)c->Hq,
                (long long)c->Hkv, (long long)c->T, (long long)c->S, (long long)c->D,
                c->causal ? "causal" : "full", fe_last_error());
    }
}

/* A contiguous leaf with t's values seen through transpose(1, 2). */
static fe_tensor *contig_leaf_of_transpose(fe_tensor *t) {
    fe_tensor *c = fe_contiguous(fe_transpose(t, 1, 2));
    fe_set_requires_grad(c, true);
    return c;
}

static void check_case(attn_case c) {
    fe_scope *s = fe_scope_begin();
    /* leaves in (B, T, H, D) memory, like the module's projections */
    fe_tensor *xq = fe_randn(4, (int64_t[]){c.B, c.T, c.Hq, c.D}, 0, 1, c.dt, CPU);
    fe_tensor *xk = fe_randn(4, (int64_t[]){c.B, c.S, c.Hkv, c.D}, 0, 1, c.dt, CPU);
    fe_tensor *xv = fe_randn(4, (int64_t[]){c.B, c.S, c.Hkv, c.D}, 0, 1, c.dt, CPU);
    fe_tensor *gy = fe_randn(3, (int64_t[]){c.B, c.T, c.Hq * c.D}, 0, 1, c.dt, CPU);
    /* the same values as contiguous (B, H, N, D) leaves */
    fe_tensor *cq = contig_leaf_of_transpose(xq), *ck = contig_leaf_of_transpose(xk);
    fe_tensor *cv = contig_leaf_of_transpose(xv);
    fe_set_requires_grad(xq, true), fe_set_requires_grad(xk, true), fe_set_requires_grad(xv, true);

    /* strided: the module's dataflow, transpose in and transpose + reshape out */
    fe_tensor *qs = fe_transpose(xq, 1, 2), *ks = fe_transpose(xk, 1, 2);
    fe_tensor *vs = fe_transpose(xv, 1, 2);
    CHECK(qs && !fe_is_contiguous(qs) && (c.Hkv == 1 || !fe_is_contiguous(ks)));
    fe_tensor *os = fe_sdpa(qs, ks, vs, c.causal, 0.0);
    fe_tensor *ys = fe_reshape(fe_transpose(os, 1, 2), 3, (int64_t[]){c.B, c.T, c.Hq * c.D});
    /* contiguous reference */
    fe_tensor *oc = fe_sdpa(cq, ck, cv, c.causal, 0.0);
    fe_tensor *yc = fe_reshape(fe_transpose(oc, 1, 2), 3, (int64_t[]){c.B, c.T, c.Hq * c.D});
    CHECK(ys && yc);
    expect_close("output", &c, ys, yc);

    CHECK(ys && fe_backward(ys, gy) == FE_OK);
    CHECK(yc && fe_backward(yc, gy) == FE_OK);
    fe_tensor *pairs[3][2] = {{xq, cq}, {xk, ck}, {xv, cv}};
    static const char *names[3] = {"gradient of q", "gradient of k", "gradient of v"};
    for (int i = 0; i < 3; i++) {
        fe_tensor *gs = fe_grad(pairs[i][0]), *gc = fe_grad(pairs[i][1]);
        CHECK(gs && gc);
        if (gs && gc) expect_close(names[i], &c, gs, fe_transpose(gc, 1, 2));
    }
    fe_scope_end(s);
}

TEST(sdpa_on_transposed_views_equals_contiguous) {
    const attn_case cases[] = {
        {2, 4, 2, 7, 7, 8, true, FE_F64},      {1, 6, 2, 5, 9, 4, false, FE_F64},
        {2, 3, 3, 6, 11, 6, true, FE_F64},     /* causal, S > T */
        {2, 4, 2, 33, 33, 16, true, FE_F32},   {1, 4, 1, 9, 20, 16, false, FE_F32},
        {1, 4, 2, 17, 17, 64, true, FE_BF16},  {2, 2, 1, 5, 12, 128, false, FE_BF16},
        {1, 4, 2, 13, 13, 64, false, FE_F16},  {1, 2, 2, 9, 9, 128, true, FE_F16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case(cases[i]);
}

typedef struct ctx_t {
    bool causal;
} ctx_t;

/* (B, T, H, D) leaves -> transposed views -> sdpa -> (B, T, Hq * D) */
static fe_tensor *f_sdpa_bthd(fe_tensor *const *x, int n, void *c) {
    (void)n;
    fe_tensor *o = fe_sdpa(fe_transpose(x[0], 1, 2), fe_transpose(x[1], 1, 2),
                           fe_transpose(x[2], 1, 2), ((ctx_t *)c)->causal, 0.0);
    return fe_reshape(fe_transpose(o, 1, 2), 3,
                      (int64_t[]){fe_dim(x[0], 0), fe_dim(x[0], 1), fe_dim(x[0], 2) * fe_dim(x[0], 3)});
}

TEST(sdpa_gradcheck_through_transposed_views) {
    ctx_t causal = {true}, full = {false};
    GRADCHECK(f_sdpa_bthd, &causal, gc_leaf(4, (int64_t[]){2, 5, 4, 3}),
              gc_leaf(4, (int64_t[]){2, 5, 2, 3}), gc_leaf(4, (int64_t[]){2, 5, 2, 3}));
    GRADCHECK(f_sdpa_bthd, &full, gc_leaf(4, (int64_t[]){1, 3, 2, 4}),
              gc_leaf(4, (int64_t[]){1, 6, 1, 4}), gc_leaf(4, (int64_t[]){1, 6, 1, 4}));
}

/* Views with a row stride larger than the rows (slices of a fused QKV projection)
 * and a non-zero offset give the same results too. */
TEST(sdpa_on_slices_of_a_fused_projection) {
    const int64_t B = 2, T = 6, H = 2, D = 8, W = 3 * H * D;
    fe_tensor *qkv = fe_randn(3, (int64_t[]){B, T, W}, 0, 1, FE_F64, CPU);
    fe_tensor *r = fe_reshape(qkv, 4, (int64_t[]){B, T, 3 * H, D});
    fe_tensor *q = fe_transpose(fe_slice(r, 2, 0, H, 1), 1, 2);
    fe_tensor *k = fe_transpose(fe_slice(r, 2, H, 2 * H, 1), 1, 2);
    fe_tensor *v = fe_transpose(fe_slice(r, 2, 2 * H, 3 * H, 1), 1, 2);
    fe_tensor *o = fe_sdpa(q, k, v, true, 0.0);
    fe_tensor *oc = fe_sdpa(fe_contiguous(q), fe_contiguous(k), fe_contiguous(v), true, 0.0);
    CHECK(o && oc && t_maxdiff(o, oc) <= 1e-12);
}
