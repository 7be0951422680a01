/* Float64 finite-difference gradient checks.
 *
 * gradcheck(f, ctx, in, n) evaluates out = f(in), takes L = sum(out * R) for a fixed
 * random R, back-propagates, and compares every input's analytic gradient with the
 * central difference (L(x + h) - L(x - h)) / 2h, element by element. */
#ifndef FE_GRADCHECK_H
#define FE_GRADCHECK_H

#include "test.h"

typedef fe_tensor *(*gc_fn)(fe_tensor *const *in, int n, void *ctx);

/* L = sum(f(in) * R) as a double, with the tape off. */
static double gc_loss(gc_fn f, void *ctx, fe_tensor *const *in, int n, fe_tensor *R) {
    fe_scope *s = fe_scope_begin();
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *out = f(in, n, ctx);
    double v = out ? fe_item(fe_sum(fe_mul(out, R), 0, NULL, false)) : NAN;
    fe_set_grad_enabled(prev);
    fe_scope_end(s);
    return v;
}

/* Returns the number of mismatching elements (0 = pass); prints the first few. */
static int gradcheck(const char *name, gc_fn f, void *ctx, fe_tensor *const *in, int n) {
    const double h = 1e-6, atol = 1e-7, rtol = 1e-5;
    fe_scope *s = fe_scope_begin();
    int bad = 0;
    for (int i = 0; i < n; i++) fe_zero_grad(in[i]);
    fe_tensor *out = f(in, n, ctx);
    if (!out) {
        printf("  %s: forward failed: %s\n", name, fe_last_error());
        fe_scope_end(s);
        return 1;
    }
    fe_tensor *R = fe_randn(fe_ndim(out), fe_shape(out), 0, 1, FE_F64, FE_DEVICE_CPU);
    fe_tensor *L = fe_sum(fe_mul(out, R), 0, NULL, false);
    if (fe_backward(L, NULL) != FE_OK) {
        printf("  %s: backward failed: %s\n", name, fe_last_error());
        fe_scope_end(s);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (!fe_requires_grad(in[i])) continue;
        fe_tensor *g = fe_grad(in[i]);
        if (!g) {
            printf("  %s: input %d got no gradient\n", name, i);
            bad++;
            continue;
        }
        double *x = fe_data(in[i]);
        const double *ga = fe_data(g);
        int64_t m = fe_numel(in[i]);
        for (int64_t j = 0; j < m; j++) {
            double keep = x[j];
            x[j] = keep + h;
            double lp = gc_loss(f, ctx, in, n, R);
            x[j] = keep - h;
            double lm = gc_loss(f, ctx, in, n, R);
            x[j] = keep;
            double num = (lp - lm) / (2 * h);
            if (!(fabs(ga[j] - num) <= atol + rtol * fabs(num) + 1e-6 * fabs(ga[j]))) {
                if (bad < 5)
                    printf("  %s: input %d element %lld: analytic %.10g numeric %.10g\n", name, i,
                           (long long)j, ga[j], num);
                bad++;
            }
        }
        fe_zero_grad(in[i]);
    }
    fe_scope_end(s);
    return bad;
}

/* A contiguous f64 CPU leaf requiring grad, normal(0, 1) values. */
static inline fe_tensor *gc_leaf(int nd, const int64_t *shape) {
    fe_tensor *t = fe_randn(nd, shape, 0, 1, FE_F64, FE_DEVICE_CPU);
    fe_set_requires_grad(t, true);
    return t;
}

#define GRADCHECK(f, ctx, ...)                                                   \
    do {                                                                         \
        fe_tensor *in_[] = {__VA_ARGS__};                                        \
        int bad_ = gradcheck(#f, f, ctx, in_, (int)(sizeof in_ / sizeof *in_)); \
        if (bad_) {                                                              \
            fe_fails_in_case++;                                                  \
            fprintf(stderr, "  %s:%d: gradcheck of %s: %d elements differ\n",    \
                    __FILE__, __LINE__, #f, bad_);                               \
        }                                                                        \
    } while (0)

#endif
