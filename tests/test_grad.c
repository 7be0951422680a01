/* Float64 finite-difference gradient checks for every differentiable op, at
 * several shapes including ones that are not powers of two. */
#include "core/internal.h"
#include "gradcheck.h"

#define S(...) (int64_t[]){__VA_ARGS__}
#define N(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
#define LEAF(...) gc_leaf(N(__VA_ARGS__), S(__VA_ARGS__))

/* positive inputs for log/sqrt/rsqrt/div denominators */
static fe_tensor *pos_leaf(int nd, const int64_t *shape) {
    fe_tensor *t = fe_rand(nd, shape, 0.5, 2.0, FE_F64, FE_DEVICE_CPU);
    fe_set_requires_grad(t, true);
    return t;
}

static fe_tensor *f_add(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_add(x[0], x[1]); }
static fe_tensor *f_sub(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_sub(x[0], x[1]); }
static fe_tensor *f_mul(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_mul(x[0], x[1]); }
static fe_tensor *f_div(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_div(x[0], x[1]); }

TEST(grad_binary_broadcast) {
    GRADCHECK(f_add, NULL, LEAF(3, 5), LEAF(3, 5));
    GRADCHECK(f_add, NULL, LEAF(2, 3, 5), LEAF(5));
    GRADCHECK(f_sub, NULL, LEAF(3, 1, 7), LEAF(4, 1));
    GRADCHECK(f_mul, NULL, LEAF(2, 3, 5), LEAF(3, 1));
    GRADCHECK(f_mul, NULL, LEAF(6), LEAF(6));
    GRADCHECK(f_div, NULL, LEAF(3, 5), pos_leaf(2, S(1, 5)));
    GRADCHECK(f_div, NULL, LEAF(7), pos_leaf(1, S(7)));
}

typedef fe_tensor *(*unary_fn)(fe_tensor *);
static fe_tensor *f_unary(fe_tensor *const *x, int n, void *c) { (void)n; return ((unary_fn)c)(x[0]); }
static fe_tensor *gelu_t(fe_tensor *a) { return fe_gelu(a, true); }
static fe_tensor *gelu_e(fe_tensor *a) { return fe_gelu(a, false); }
static fe_tensor *scale3(fe_tensor *a) { return fe_scale(a, -3.25); }
static fe_tensor *addsc(fe_tensor *a) { return fe_add_scalar(a, 1.5); }

TEST(grad_unary) {
    unary_fn any[] = {fe_neg, fe_exp, fe_tanh, fe_sigmoid, fe_silu, gelu_t, gelu_e, fe_square, scale3, addsc};
    for (size_t i = 0; i < sizeof any / sizeof *any; i++) {
        GRADCHECK(f_unary, (void *)any[i], LEAF(3, 7));
        GRADCHECK(f_unary, (void *)any[i], LEAF(2, 3, 5));
    }
    unary_fn pos[] = {fe_log, fe_sqrt, fe_rsqrt};
    for (size_t i = 0; i < sizeof pos / sizeof *pos; i++) {
        GRADCHECK(f_unary, (void *)pos[i], pos_leaf(2, S(3, 7)));
        GRADCHECK(f_unary, (void *)pos[i], pos_leaf(1, S(11)));
    }
}

TEST(grad_relu_away_from_kink) {
    /* magnitudes in [0.1, 1) with random signs: no value sits near the kink at 0 */
    fe_tensor *mag = fe_rand(2, S(5, 9), 0.1, 1.0, FE_F64, FE_DEVICE_CPU);
    fe_tensor *u = fe_rand(2, S(5, 9), 0.0, 1.0, FE_F64, FE_DEVICE_CPU);
    fe_tensor *neg = fe_full(0, NULL, 0.5, FE_F64, FE_DEVICE_CPU);
    fe_tensor *x = fe_contiguous(fe_where(fe_sub(u, neg), mag, fe_neg(mag)));
    fe_set_requires_grad(x, true);
    GRADCHECK(f_unary, (void *)fe_relu, x);
}

typedef struct rctx { int nd; int dims[4]; bool keep; int kind; } rctx;
static fe_tensor *f_reduce(fe_tensor *const *x, int n, void *c) {
    (void)n;
    rctx *r = c;
    if (r->kind == 0) return fe_sum(x[0], r->nd, r->dims, r->keep);
    if (r->kind == 1) return fe_mean(x[0], r->nd, r->dims, r->keep);
    return fe_max(x[0], r->nd, r->dims, r->keep);
}

TEST(grad_reductions) {
    rctx cases[] = {{0, {0}, false, 0}, {1, {-1}, false, 0}, {2, {0, 2}, true, 0},
                    {1, {1}, true, 1}, {0, {0}, false, 1}, {1, {-1}, false, 2},
                    {2, {0, 1}, false, 2}, {1, {1}, true, 2}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) GRADCHECK(f_reduce, &cases[i], LEAF(3, 5, 7));
}

typedef struct mctx { bool ta, tb; } mctx;
static fe_tensor *f_matmul(fe_tensor *const *x, int n, void *c) {
    (void)n;
    mctx *m = c;
    return fe_matmul(x[0], x[1], m->ta, m->tb);
}

TEST(grad_matmul) {
    mctx nn = {false, false}, tn = {true, false}, nt = {false, true}, tt = {true, true};
    GRADCHECK(f_matmul, &nn, LEAF(3, 5), LEAF(5, 7));
    GRADCHECK(f_matmul, &tn, LEAF(5, 3), LEAF(5, 7));
    GRADCHECK(f_matmul, &nt, LEAF(3, 5), LEAF(7, 5));
    GRADCHECK(f_matmul, &tt, LEAF(5, 3), LEAF(7, 5));
    GRADCHECK(f_matmul, &nn, LEAF(2, 3, 5), LEAF(5, 6));          /* broadcast b */
    GRADCHECK(f_matmul, &nt, LEAF(2, 1, 3, 4), LEAF(3, 5, 4));    /* broadcast batch dims */
    GRADCHECK(f_matmul, &nn, LEAF(5), LEAF(5, 3));                /* vector @ matrix */
    GRADCHECK(f_matmul, &nn, LEAF(4, 5), LEAF(5));                /* matrix @ vector */
}

static fe_tensor *f_linear(fe_tensor *const *x, int n, void *c) { (void)c; return fe_linear(x[0], x[1], n > 2 ? x[2] : NULL); }

TEST(grad_linear) {
    GRADCHECK(f_linear, NULL, LEAF(2, 3, 5), LEAF(7, 5), LEAF(7));
    GRADCHECK(f_linear, NULL, LEAF(3, 6), LEAF(4, 6));
}

static fe_tensor *f_linear_gelu(fe_tensor *const *x, int n, void *c) {
    (void)c;
    return fe_linear_gelu(x[0], x[1], n > 2 ? x[2] : NULL);
}

TEST(grad_linear_gelu) {
    GRADCHECK(f_linear_gelu, NULL, LEAF(2, 3, 5), LEAF(7, 5), LEAF(7));
    GRADCHECK(f_linear_gelu, NULL, LEAF(3, 6), LEAF(4, 6));
}

/* One tensor h = 0.5 x feeding four products (three of them linears, as q/k/v do) and a
 * tanh whose gradient reaches h before the products' (*c = 1: the tape runs the later
 * input of an add first) or after them (0): the products' gradients of h are added by
 * their GEMMs into what is already gathered, the tanh's last one by the tape. */
static fe_tensor *f_shared_input(fe_tensor *const *x, int n, void *c) {
    (void)n;
    fe_tensor *h = fe_scale(x[0], 0.5);
    fe_tensor *p = fe_add(fe_linear(h, x[1], NULL), fe_matmul(h, x[2], false, false)); /* (.., 3) */
    fe_tensor *q = fe_mul(fe_linear(h, x[3], NULL), fe_linear(h, x[3], NULL));        /* (.., 6) */
    fe_tensor *t = fe_sum(fe_tanh(h), 1, (int[]){-1}, true);                         /* (.., 1) */
    fe_tensor *pq = fe_add(fe_sum(p, 1, (int[]){-1}, true), fe_sum(q, 1, (int[]){-1}, true));
    return *(int *)c ? fe_add(pq, t) : fe_add(t, pq);
}

TEST(grad_shared_input_of_products) {
    int tanh_first = 1, tanh_last = 0;
    GRADCHECK(f_shared_input, &tanh_first, LEAF(2, 3, 4), LEAF(3, 4), LEAF(4, 3), LEAF(6, 4));
    GRADCHECK(f_shared_input, &tanh_last, LEAF(2, 3, 4), LEAF(3, 4), LEAF(4, 3), LEAF(6, 4));
}

/* r + x w^T with r added by the product's GEMM (the Llama block's down projection) */
static fe_tensor *f_linear_add(fe_tensor *const *x, int n, void *c) {
    (void)n, (void)c;
    return fe__linear_add(x[0], x[1], fe_scale(x[2], 1.0));
}

TEST(grad_linear_add) { GRADCHECK(f_linear_add, NULL, LEAF(2, 3, 5), LEAF(4, 5), LEAF(2, 3, 4)); }

static fe_tensor *f_softmax(fe_tensor *const *x, int n, void *c) { (void)n; return fe_softmax(x[0], *(int *)c); }
static fe_tensor *f_logsoftmax(fe_tensor *const *x, int n, void *c) { (void)n; return fe_log_softmax(x[0], *(int *)c); }

TEST(grad_softmax) {
    int last = -1, first = 0;
    GRADCHECK(f_softmax, &last, LEAF(3, 7));
    GRADCHECK(f_softmax, &first, LEAF(4, 3, 5));
    GRADCHECK(f_logsoftmax, &last, LEAF(2, 3, 9));
    GRADCHECK(f_logsoftmax, &first, LEAF(5, 3));
}

static fe_tensor *f_rmsnorm(fe_tensor *const *x, int n, void *c) { (void)c; return fe_rmsnorm(x[0], n > 1 ? x[1] : NULL, 1e-5); }
static fe_tensor *f_layernorm(fe_tensor *const *x, int n, void *c) {
    (void)c;
    return fe_layernorm(x[0], n > 1 ? x[1] : NULL, n > 2 ? x[2] : NULL, 1e-5);
}

TEST(grad_norms) {
    GRADCHECK(f_rmsnorm, NULL, LEAF(3, 7), LEAF(7));
    GRADCHECK(f_rmsnorm, NULL, LEAF(2, 3, 10));
    GRADCHECK(f_layernorm, NULL, LEAF(3, 7), LEAF(7), LEAF(7));
    GRADCHECK(f_layernorm, NULL, LEAF(2, 2, 5));
}

/* both outputs of the fused residual norm, weighted differently */
static fe_tensor *f_rmsres(fe_tensor *const *x, int n, void *c) {
    (void)n, (void)c;
    fe_tensor *h = NULL, *y = NULL;
    if (fe_rmsnorm_residual(x[0], x[1], x[2], 1e-5, &h, &y)) return NULL;
    return fe_add(fe_scale(h, 0.7), y);
}

TEST(grad_rmsnorm_residual) {
    GRADCHECK(f_rmsres, NULL, LEAF(3, 7), LEAF(3, 7), LEAF(7));
    GRADCHECK(f_rmsres, NULL, LEAF(2, 3, 6), LEAF(2, 3, 6), LEAF(6));
}

static fe_tensor *f_silu_gate(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_silu_gate(x[0], x[1]); }

TEST(grad_silu_gate) {
    GRADCHECK(f_silu_gate, NULL, LEAF(3, 7), LEAF(3, 7));
    GRADCHECK(f_silu_gate, NULL, LEAF(2, 5, 3), LEAF(2, 5, 3));
}

typedef struct ropectx { fe_tensor *inv; int seq_dim; int64_t pos0; } ropectx;
static fe_tensor *f_rope(fe_tensor *const *x, int n, void *c) {
    (void)n;
    ropectx *r = c;
    return fe_rope(x[0], r->inv, r->seq_dim, r->pos0);
}

TEST(grad_rope) {
    ropectx a = {fe_rope_inv_freq(6, 10000.0, FE_DEVICE_CPU), 2, 0};
    GRADCHECK(f_rope, &a, LEAF(2, 3, 5, 6)); /* (B, H, T, D) */
    ropectx b = {fe_cast(fe_rope_inv_freq(8, 500000.0, FE_DEVICE_CPU), FE_F64), 1, 3};
    GRADCHECK(f_rope, &b, LEAF(2, 7, 3, 8)); /* (B, T, H, D), offset positions */
}

typedef struct sdctx { bool causal; } sdctx;
static fe_tensor *f_sdpa(fe_tensor *const *x, int n, void *c) {
    (void)n;
    return fe_sdpa(x[0], x[1], x[2], ((sdctx *)c)->causal, 0);
}

TEST(grad_sdpa) {
    sdctx causal = {true}, full = {false};
    GRADCHECK(f_sdpa, &causal, LEAF(1, 2, 5, 3), LEAF(1, 2, 5, 3), LEAF(1, 2, 5, 3));
    GRADCHECK(f_sdpa, &full, LEAF(2, 4, 3, 4), LEAF(2, 2, 6, 4), LEAF(2, 2, 6, 4)); /* GQA, S != T */
    GRADCHECK(f_sdpa, &causal, LEAF(1, 6, 3, 2), LEAF(1, 2, 7, 2), LEAF(1, 2, 7, 2)); /* GQA, causal, S > T */
}

typedef struct cectx { fe_tensor *targets; int64_t ignore; } cectx;
static fe_tensor *f_ce(fe_tensor *const *x, int n, void *c) {
    (void)n;
    cectx *e = c;
    return fe_cross_entropy(x[0], e->targets, e->ignore);
}

TEST(grad_cross_entropy) {
    int64_t t1[5] = {0, 6, 3, -100, 2};
    cectx a = {fe_from_data(t1, 1, S(5), FE_I64, FE_DEVICE_CPU), -100};
    GRADCHECK(f_ce, &a, LEAF(5, 7));
    int32_t t2[6] = {1, 1, 0, 4, 2, 3};
    cectx b = {fe_from_data(t2, 2, S(2, 3), FE_I32, FE_DEVICE_CPU), -1};
    GRADCHECK(f_ce, &b, LEAF(2, 3, 5));
}

static fe_tensor *f_mse(fe_tensor *const *x, int n, void *c) { (void)n, (void)c; return fe_mse(x[0], x[1]); }

TEST(grad_mse) { GRADCHECK(f_mse, NULL, LEAF(3, 7), LEAF(3, 7)); }

static fe_tensor *f_embedding(fe_tensor *const *x, int n, void *c) { (void)n; return fe_embedding(x[0], c); }

TEST(grad_embedding) {
    int32_t idx[7] = {3, 0, 3, 9, 4, 4, 3}; /* repeats exercise the scatter-add */
    fe_tensor *i = fe_from_data(idx, 2, S(7, 1), FE_I32, FE_DEVICE_CPU);
    GRADCHECK(f_embedding, i, LEAF(10, 5));
}

static fe_tensor *f_concat(fe_tensor *const *x, int n, void *c) { return fe_concat(n, x, *(int *)c); }

TEST(grad_concat) {
    int d0 = 0, d1 = -1;
    GRADCHECK(f_concat, &d0, LEAF(2, 3), LEAF(4, 3), LEAF(1, 3));
    GRADCHECK(f_concat, &d1, LEAF(2, 3), LEAF(2, 5));
}

static fe_tensor *f_where(fe_tensor *const *x, int n, void *c) { (void)n; return fe_where(c, x[0], x[1]); }
static fe_tensor *f_masked_fill(fe_tensor *const *x, int n, void *c) { (void)n; return fe_masked_fill(x[0], c, -2.5); }

TEST(grad_where_masked_fill) {
    uint8_t m[15] = {1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1};
    fe_tensor *mask = fe_from_data(m, 2, S(3, 5), FE_U8, FE_DEVICE_CPU);
    GRADCHECK(f_where, mask, LEAF(3, 5), LEAF(5));
    GRADCHECK(f_masked_fill, mask, LEAF(2, 3, 5));
}

static fe_tensor *f_dropout(fe_tensor *const *x, int n, void *c) {
    (void)n, (void)c;
    fe_manual_seed(77); /* the same mask on every evaluation */
    return fe_dropout(x[0], 0.3, true);
}

TEST(grad_dropout) { GRADCHECK(f_dropout, NULL, LEAF(4, 9)); }

static fe_tensor *f_views(fe_tensor *const *x, int n, void *c) {
    (void)n, (void)c;
    /* reshape -> permute -> slice -> expand -> contiguous -> squeeze/unsqueeze -> cast round trip */
    fe_tensor *a = fe_reshape(x[0], 3, S(2, 3, 4));
    fe_tensor *b = fe_permute(a, (int[]){2, 0, 1});            /* (4, 2, 3) */
    fe_tensor *s = fe_slice(b, 0, 1, 4, 2);                    /* (2, 2, 3) */
    fe_tensor *u = fe_unsqueeze(s, 1);                         /* (2, 1, 2, 3) */
    fe_tensor *e = fe_expand(u, 4, S(2, 3, 2, 3));             /* (2, 3, 2, 3) */
    fe_tensor *t = fe_transpose(fe_contiguous(e), 0, 3);
    return fe_cast(fe_mul(t, t), FE_F64);
}

TEST(grad_views) { GRADCHECK(f_views, NULL, LEAF(6, 4)); }

static fe_tensor *f_cast(fe_tensor *const *x, int n, void *c) {
    (void)n, (void)c;
    /* f64 -> f32 -> f64 is not exact, so check only that gradients flow through casts
     * of a function whose f32 error stays below the tolerance: a scale by 1 */
    return fe_cast(fe_cast(fe_scale(x[0], 1.0), FE_F64), FE_F64);
}

TEST(grad_cast) { GRADCHECK(f_cast, NULL, LEAF(3, 5)); }
