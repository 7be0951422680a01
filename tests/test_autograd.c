/* Autograd semantics: accumulation, no-grad, detach, explicit output gradients,
 * shared subexpressions, and gradient checkpointing. */
#include "test.h"

#define S(...) (int64_t[]){__VA_ARGS__}

TEST(gradients_accumulate_until_zeroed) {
    fe_tensor *x = t_randn(1, S(5), FE_F64);
    fe_set_requires_grad(x, true);
    for (int i = 0; i < 2; i++) CHECK(fe_backward(fe_sum(fe_scale(x, 3), 0, NULL, false), NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(x), fe_full(1, S(5), 6, FE_F64, FE_DEVICE_CPU)) == 0);
    fe_zero_grad(x);
    CHECK(fe_grad(x) == NULL);
}

TEST(shared_subexpression_and_explicit_gout) {
    fe_tensor *x = t_randn(2, S(3, 4), FE_F64);
    fe_set_requires_grad(x, true);
    fe_tensor *y = fe_mul(x, x);           /* used twice below */
    fe_tensor *z = fe_add(y, fe_exp(y));   /* dz/dx = 2x (1 + e^{x^2}) */
    fe_tensor *g = t_randn(2, S(3, 4), FE_F64);
    CHECK(fe_backward(z, g) == FE_OK);
    fe_tensor *expect = fe_mul(g, fe_mul(fe_scale(x, 2), fe_add_scalar(fe_exp(fe_mul(x, x)), 1)));
    CHECK(t_maxdiff(fe_grad(x), expect) < 1e-12);
    CHECK_ERROR(fe_backward(z, t_randn(1, S(3), FE_F64)) != FE_OK, "does not match output");
}

TEST(no_grad_and_detach) {
    fe_tensor *x = t_randn(1, S(4), FE_F64);
    fe_set_requires_grad(x, true);
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *y = fe_exp(x);
    fe_set_grad_enabled(prev);
    CHECK(!fe_requires_grad(y));
    fe_tensor *d = fe_detach(x);
    CHECK(!fe_requires_grad(d) && fe_data(d) == fe_data(x));
    fe_tensor *z = fe_sum(fe_mul(x, fe_detach(fe_scale(x, 2))), 0, NULL, false); /* d/dx = 2x */
    CHECK(fe_backward(z, NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(x), fe_scale(x, 2)) < 1e-12);
}

TEST(leaf_backward_and_cast_gradient) {
    fe_tensor *x = t_randn(1, S(3), FE_F64);
    fe_set_requires_grad(x, true);
    fe_tensor *y = fe_cast(fe_scale(fe_cast(x, FE_F32), 2.0), FE_F64); /* through f32 */
    CHECK(fe_backward(fe_sum(y, 0, NULL, false), NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(x), fe_full(1, S(3), 2, FE_F64, FE_DEVICE_CPU)) == 0);
    fe_tensor *leaf = fe_ones(0, NULL, FE_F64, FE_DEVICE_CPU);
    fe_set_requires_grad(leaf, true);
    CHECK(fe_backward(leaf, NULL) == FE_OK && fe_item(fe_grad(leaf)) == 1.0);
}

/* a small MLP block with dropout, to checkpoint */
typedef struct blk { fe_tensor *w1, *w2; } blk;
static fe_tensor *block(void *ctx, fe_tensor *const *in, int n) {
    (void)n;
    blk *b = ctx;
    fe_tensor *h = fe_dropout(fe_gelu(fe_matmul(in[0], b->w1, false, false), true), 0.25, true);
    return fe_add(in[0], fe_matmul(h, b->w2, false, false));
}

TEST(checkpoint_matches_plain_run) {
    blk b = {t_randn(2, S(6, 10), FE_F64), t_randn(2, S(10, 6), FE_F64)};
    fe_set_requires_grad(b.w1, true);
    fe_set_requires_grad(b.w2, true);
    fe_tensor *x = t_randn(2, S(5, 6), FE_F64);
    fe_set_requires_grad(x, true);
    fe_tensor *grads[2][3];
    for (int pass = 0; pass < 2; pass++) {
        fe_manual_seed(99);
        fe_tensor *h = x;
        for (int layer = 0; layer < 3; layer++)
            h = pass ? fe_checkpoint(block, &b, &h, 1) : block(&b, &h, 1);
        CHECK(h != NULL);
        CHECK(fe_backward(fe_sum(fe_square(h), 0, NULL, false), NULL) == FE_OK);
        fe_tensor *ts[3] = {x, b.w1, b.w2};
        for (int k = 0; k < 3; k++) {
            grads[pass][k] = fe_contiguous(fe_grad(ts[k]));
            grads[pass][k] = fe_scale(grads[pass][k], 1.0); /* a copy that outlives zeroing */
            fe_zero_grad(ts[k]);
        }
    }
    for (int k = 0; k < 3; k++) CHECK(t_maxdiff(grads[0][k], grads[1][k]) < 1e-12);
}

TEST(checkpoint_keeps_fewer_tensors) {
    blk b = {t_randn(2, S(6, 10), FE_F64), t_randn(2, S(10, 6), FE_F64)};
    fe_set_requires_grad(b.w1, true);
    fe_tensor *x = t_randn(2, S(5, 6), FE_F64);
    int64_t counts[2];
    for (int pass = 0; pass < 2; pass++) {
        fe_scope *s = fe_scope_begin();
        int64_t before = fe_live_tensors();
        fe_tensor *h = x;
        for (int layer = 0; layer < 4; layer++) h = pass ? fe_checkpoint(block, &b, &h, 1) : block(&b, &h, 1);
        counts[pass] = fe_live_tensors() - before;
        fe_scope_end(s);
    }
    CHECK(counts[1] < counts[0]);
}

/* a backward pass lets go of the activations each node kept (as soon as the node has
 * run), so a second backward through the same graph is refused with a clear error */
TEST(backward_frees_the_graph) {
    fe_tensor *x = t_randn(1, S(5), FE_F64);
    fe_set_requires_grad(x, true);
    fe_tensor *y = fe_exp(x);
    fe_tensor *z = fe_sum(fe_mul(y, y), 0, NULL, false);
    CHECK(fe_backward(z, NULL) == FE_OK);
    fe_tensor *expect = fe_scale(fe_exp(fe_scale(x, 2)), 2); /* d/dx e^{2x} */
    CHECK(t_maxdiff(fe_grad(x), expect) < 1e-12);
    CHECK_ERROR(fe_backward(z, NULL) != FE_OK, "already used by a backward");
    CHECK(t_maxdiff(fe_grad(x), expect) < 1e-12); /* the failed pass added nothing */
}

/* ---- the first gradient of a leaf: adopted when nobody else sees it, else copied ---- */

#include "core/internal.h"

/* A one-element op over two leaves whose backward hands out gradients shared in the way
 * node->i[0] says; the tensors it handed out are remembered (raw pointers, compared only). */
enum { GIVE_FRESH, GIVE_ONE_TO_BOTH, GIVE_SAVED_AND_VIEW };
static fe_tensor *g_given[2];

static fe_status sharing_backward(fe_node *n, fe_tensor *out, fe_tensor *g, fe_tensor **gin) {
    (void)out, (void)g;
    fe_tensor *a = n->in[0];
    if (n->i[0] == GIVE_FRESH) {
        gin[0] = fe_full(a->ndim, a->shape, 2.0, a->dtype, FE_DEVICE_CPU);
        gin[1] = fe_full(a->ndim, a->shape, 3.0, a->dtype, FE_DEVICE_CPU);
    } else if (n->i[0] == GIVE_ONE_TO_BOTH) {
        gin[0] = gin[1] = fe_full(a->ndim, a->shape, 5.0, a->dtype, FE_DEVICE_CPU);
    } else { /* the tensor saved on the node itself, and a view of it */
        gin[0] = n->saved[0];
        gin[1] = fe_detach(n->saved[0]);
    }
    g_given[0] = gin[0], g_given[1] = gin[1];
    return gin[0] && gin[1] ? FE_OK : fe_last_status();
}

/* saved: for GIVE_SAVED_AND_VIEW, a tensor of 7s saved on the node (and kept by the
 * caller's scope, as an activation kept elsewhere would be). */
static fe_tensor *sharing_op(fe_tensor *a, fe_tensor *b, int mode, fe_tensor **saved) {
    fe_tensor *out = fe_zeros(1, S(1), FE_F64, FE_DEVICE_CPU);
    fe_node *n = fe__record(out, "sharing", sharing_backward, 2, (fe_tensor *[]){a, b});
    n->i[0] = mode;
    if (mode == GIVE_SAVED_AND_VIEW) {
        *saved = fe_full(a->ndim, a->shape, 7.0, a->dtype, FE_DEVICE_CPU);
        fe__save(n, 0, *saved);
    }
    return out;
}

static fe_tensor *leaf3(void) {
    fe_tensor *t = t_randn(1, S(3), FE_F64);
    fe_set_requires_grad(t, true);
    return t;
}

TEST(first_leaf_gradient_is_adopted_when_unshared) {
    fe_tensor *a = leaf3(), *b = leaf3();
    fe_tensor *y = sharing_op(a, b, GIVE_FRESH, NULL);
    CHECK(fe_backward(y, NULL) == FE_OK);
    /* fresh tensors seen only by the engine become the grads themselves, with no copy */
    CHECK(fe_grad(a) == g_given[0] && fe_grad(b) == g_given[1]);
    CHECK(fe_grad(a)->refcnt == 1 && fe_grad(a)->scope == NULL && fe_grad(a)->st->refcnt == 1);
    CHECK(t_maxdiff(fe_grad(a), fe_full(1, S(3), 2, FE_F64, FE_DEVICE_CPU)) == 0);
    CHECK(t_maxdiff(fe_grad(b), fe_full(1, S(3), 3, FE_F64, FE_DEVICE_CPU)) == 0);
    /* they go on accumulating in place */
    CHECK(fe_backward(sharing_op(a, b, GIVE_FRESH, NULL), NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(a), fe_full(1, S(3), 4, FE_F64, FE_DEVICE_CPU)) == 0);
    /* a real op: mul's gradients are fresh products */
    fe_tensor *x = leaf3(), *w = leaf3();
    CHECK(fe_backward(fe_sum(fe_mul(x, w), 0, NULL, false), NULL) == FE_OK);
    CHECK(t_maxdiff(fe_grad(x), w) == 0 && t_maxdiff(fe_grad(w), x) == 0);
    CHECK(fe_grad(x)->st->refcnt == 1 && fe_grad(x)->st != fe_grad(w)->st);
}

TEST(shared_gradients_are_copied) {
    /* one tensor handed to two leaves: the first leaf gets a copy (the second reference is
     * still out there), the second may then keep the tensor; they never share memory */
    fe_tensor *a = leaf3(), *b = leaf3();
    CHECK(fe_backward(sharing_op(a, b, GIVE_ONE_TO_BOTH, NULL), NULL) == FE_OK);
    CHECK(fe_grad(a) != g_given[0] && fe_grad(a)->st != fe_grad(b)->st);
    fe_tensor *five = fe_full(1, S(3), 5, FE_F64, FE_DEVICE_CPU);
    CHECK(t_maxdiff(fe_grad(a), five) == 0 && t_maxdiff(fe_grad(b), five) == 0);
    fe_tensor *c = leaf3();
    CHECK(fe_backward(sharing_op(a, c, GIVE_FRESH, NULL), NULL) == FE_OK); /* a += 2 */
    CHECK(t_maxdiff(fe_grad(a), fe_full(1, S(3), 7, FE_F64, FE_DEVICE_CPU)) == 0);
    CHECK(t_maxdiff(fe_grad(b), five) == 0);

    /* a tensor saved on a node, and a view of it: both copied, the saved one untouched */
    fe_tensor *p = leaf3(), *q = leaf3();
    fe_tensor *saved = NULL;
    CHECK(fe_backward(sharing_op(p, q, GIVE_SAVED_AND_VIEW, &saved), NULL) == FE_OK);
    CHECK(fe_grad(p) != saved && fe_grad(q) != g_given[1]);
    CHECK(fe_grad(p)->st != saved->st && fe_grad(q)->st != saved->st);
    CHECK(fe_backward(sharing_op(p, q, GIVE_FRESH, NULL), NULL) == FE_OK); /* p += 2, q += 3 */
    fe_tensor *seven = fe_full(1, S(3), 7, FE_F64, FE_DEVICE_CPU);
    CHECK(t_maxdiff(saved, seven) == 0);
    CHECK(t_maxdiff(fe_grad(p), fe_full(1, S(3), 9, FE_F64, FE_DEVICE_CPU)) == 0);
    CHECK(t_maxdiff(fe_grad(q), fe_full(1, S(3), 10, FE_F64, FE_DEVICE_CPU)) == 0);

    /* the caller's own gradient of a leaf output, owned by nobody's scope: copied */
    fe_tensor *leaf = leaf3();
    fe_scope *sus = fe__scope_suspend();
    fe_tensor *gout = fe_full(1, S(3), 1.5, FE_F64, FE_DEVICE_CPU); /* owned by the test */
    fe__scope_resume(sus);
    CHECK(fe_backward(leaf, gout) == FE_OK);
    CHECK(fe_grad(leaf) != gout);
    fe_free(gout);
    CHECK(t_maxdiff(fe_grad(leaf), fe_full(1, S(3), 1.5, FE_F64, FE_DEVICE_CPU)) == 0);

    /* a gradient of another dtype is cast, as before */
    fe_tensor *h = fe_cast(t_randn(1, S(3), FE_F64), FE_F32);
    fe_set_requires_grad(h, true);
    fe_tensor *x = leaf3();
    CHECK(fe_backward(fe_sum(fe_mul(fe_cast(x, FE_F32), h), 0, NULL, false), NULL) == FE_OK);
    CHECK(fe_dtype_of(fe_grad(x)) == FE_F64);
}

/* A pending gradient is handed out for writing (the GEMM adding into it) only while
 * nothing but the engine can see it or its memory. */
TEST(pending_gradient_taken_for_writing_only_when_unshared) {
    fe_tensor *t = t_randn(2, S(2, 3), FE_F64);
    fe_scope *sus = fe__scope_suspend();
    fe_tensor *g = fe_full(2, S(2, 3), 1.0, FE_F64, FE_DEVICE_CPU); /* as the engine holds one */
    fe_tensor *other = fe_full(2, S(2, 3), 1.0, FE_F32, FE_DEVICE_CPU);
    fe__scope_resume(sus);
    t->bw_grad = g;
    fe__retain(g); /* a second holder (one gradient handed to two inputs) */
    CHECK(fe__take_pending_owned(t) == NULL && t->bw_grad == g);
    fe__release(g);
    fe_tensor *v = fe_detach(g); /* a view of its memory */
    CHECK(fe__take_pending_owned(t) == NULL && t->bw_grad == g);
    fe_free(v);
    CHECK(fe__take_pending_owned(t) == g && t->bw_grad == NULL); /* now it is the engine's alone */
    t->bw_grad = other; /* of another dtype: not t's to add into */
    CHECK(fe__take_pending_owned(t) == NULL && t->bw_grad == other);
    t->bw_grad = fe_full(2, S(2, 3), 1.0, FE_F64, FE_DEVICE_CPU); /* owned by this case's scope */
    CHECK(fe__take_pending_owned(t) == NULL);
    t->bw_grad = NULL;
    fe__release(g), fe__release(other);
}

/* The ops that write over an input's memory (the Llama block's RoPE and residual +
 * norm): same values and gradients as the ordinary ops, and the result really lives in
 * the input's memory. */
static void over_case(int which) {
    fe_tensor *a = t_randn(3, S(2, 3, 8), FE_F64), *b = t_randn(3, S(2, 3, 8), FE_F64);
    fe_tensor *w = t_randn(1, S(8), FE_F64), *g = t_randn(3, S(2, 3, 8), FE_F64);
    fe_tensor *inv = fe_rope_inv_freq(8, 10000.0, FE_DEVICE_CPU);
    fe_tensor *ga[2] = {NULL, NULL}, *gb[2] = {NULL, NULL}, *val[2] = {NULL, NULL};
    for (int over = 0; over < 2; over++) {
        fe_tensor *x = fe_detach(a), *y = fe_detach(b);
        fe_set_requires_grad(x, true), fe_set_requires_grad(y, true);
        /* inputs made by an op, as in the block (their producers never read them back) */
        fe_tensor *xs = fe_scale(x, 1.0), *ys = fe_scale(y, 1.0);
        void *mem = fe_data(ys);
        fe_tensor *out = NULL, *h = NULL;
        if (which == 1) {
            out = over ? fe__rope_over(ys, inv, 1, 3) : fe_rope(ys, inv, 1, 3);
        } else {
            fe_tensor *yy = NULL;
            CHECK((over ? fe__rmsnorm_residual_over(xs, ys, w, 1e-6, &h, &yy)
                        : fe_rmsnorm_residual(xs, ys, w, 1e-6, &h, &yy)) == FE_OK);
            out = fe_add(h, yy); /* both outputs reach the loss */
            if (over) CHECK(fe_data(h) == mem);
        }
        if (over && which == 1) CHECK(fe_data(out) == mem);
        val[over] = fe_keep(fe_detach(which == 2 ? h : out));
        CHECK(fe_backward(out, g) == FE_OK);
        ga[over] = which == 1 ? NULL : fe_keep(fe_detach(fe_grad(x)));
        gb[over] = fe_keep(fe_detach(fe_grad(y)));
    }
    CHECK(t_maxdiff(val[0], val[1]) == 0);
    CHECK(t_maxdiff(gb[0], gb[1]) == 0);
    if (which != 1) CHECK(t_maxdiff(ga[0], ga[1]) == 0);
    for (int i = 0; i < 2; i++) {
        fe_free(val[i]), fe_free(gb[i]);
        if (ga[i]) fe_free(ga[i]);
    }
}
TEST(ops_over_their_input) {
    over_case(1);
    over_case(2);
}
