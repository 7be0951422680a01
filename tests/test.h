/* A tiny test harness: each tests/test_*.c is one program of TEST() cases.
 *
 *   TEST(adds_two_numbers) { CHECK(1 + 1 == 2); CHECK_NEAR(x, 0.5, 1e-9); }
 *
 * Every case runs inside its own scope; a case that leaves tensors alive fails.
 * The program prints one line per case and ends with "N passed, N failed". */
#ifndef FE_TEST_H
#define FE_TEST_H

#include "ferric/ferric.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*fe_test_fn)(void);
static struct {
    const char *name;
    fe_test_fn fn;
} fe_tests[512];
static int fe_ntests, fe_fails_in_case;

#define TEST(name)                                                                   \
    static void name(void);                                                          \
    __attribute__((constructor)) static void fe_register_##name(void) {              \
        if (fe_ntests < 512) fe_tests[fe_ntests++] = (typeof(fe_tests[0])){#name, name}; \
    }                                                                                \
    static void name(void)

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fe_fails_in_case++;                                                       \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, fe_last_error());                                \
        }                                                                             \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                               \
    do {                                                                                    \
        double a_ = (double)(a), b_ = (double)(b);                                          \
        if (!(fabs(a_ - b_) <= (tol))) {                                                    \
            fe_fails_in_case++;                                                             \
            fprintf(stderr, "  %s:%d: %s = %.10g, expected %s = %.10g (tol %g)\n", __FILE__, \
                    __LINE__, #a, a_, #b, b_, (double)(tol));                               \
        }                                                                                   \
    } while (0)

/* The call failed and the error message contains `needle`. */
#define CHECK_ERROR(expr_is_failure, needle)                                                   \
    do {                                                                                       \
        fe_clear_error();                                                                      \
        bool failed_ = (expr_is_failure);                                                      \
        if (!failed_ || !strstr(fe_last_error(), (needle))) {                                  \
            fe_fails_in_case++;                                                                \
            fprintf(stderr, "  %s:%d: expected failure mentioning '%s', got %s: '%s'\n",     \
                    __FILE__, __LINE__, (needle), failed_ ? "failure" : "success",            \
                    fe_last_error());                                                          \
        }                                                                                      \
        fe_clear_error();                                                                      \
    } while (0)

/* Skip the rest of a case with a message (e.g. no GPU). */
#define SKIP(msg)                                                       \
    do {                                                                \
        printf("  skipped: %s\n", (msg));                               \
        return;                                                         \
    } while (0)

int main(int argc, char **argv) {
    int passed = 0, failed = 0;
    const char *only = argc > 1 ? argv[1] : NULL;
    fe_set_num_threads(2);
    for (int i = 0; i < fe_ntests; i++) {
        if (only && !strstr(fe_tests[i].name, only)) continue;
        fe_fails_in_case = 0;
        fe_clear_error();
        int64_t live0 = fe_live_tensors();
        fe_scope *s = fe_scope_begin();
        fe_manual_seed(1234 + (uint64_t)i);
        fe_tests[i].fn();
        fe_scope_end(s);
        int64_t leaked = fe_live_tensors() - live0;
        if (leaked) {
            fe_fails_in_case++;
            fprintf(stderr, "  %lld tensors left alive after the case\n", (long long)leaked);
        }
        printf("%s %s\n", fe_fails_in_case ? "FAIL" : "ok  ", fe_tests[i].name);
        fflush(stdout);
        if (fe_fails_in_case) failed++;
        else passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* Helpers for tests. */
static inline fe_tensor *t_randn(int nd, const int64_t *shape, fe_dtype dt) {
    return fe_randn(nd, shape, 0.0, 1.0, dt, FE_DEVICE_CPU);
}

/* Max |a - b| over all elements (as f64 on the host). */
static inline double t_maxdiff(const fe_tensor *a, const fe_tensor *b) {
    int64_t n = fe_numel(a);
    if (n != fe_numel(b)) return INFINITY;
    double *x = malloc((size_t)(n ? n : 1) * sizeof *x), *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    double m = 0;
    if (x && y && !fe_to_host(a, x, FE_F64) && !fe_to_host(b, y, FE_F64))
        for (int64_t i = 0; i < n; i++) {
            double d = fabs(x[i] - y[i]);
            if (!(d <= m)) m = d; /* NaN propagates as a large difference */
        }
    else
        m = INFINITY;
    free(x), free(y);
    return m;
}

/* ||a - b|| / ||b|| (as f64 on the host). */
static inline double t_relerr(const fe_tensor *a, const fe_tensor *b) {
    int64_t n = fe_numel(a);
    if (n != fe_numel(b)) return INFINITY;
    double *x = malloc((size_t)(n ? n : 1) * sizeof *x), *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    double num = 0, den = 0;
    if (x && y && !fe_to_host(a, x, FE_F64) && !fe_to_host(b, y, FE_F64)) {
        for (int64_t i = 0; i < n; i++) {
            num += (x[i] - y[i]) * (x[i] - y[i]);
            den += y[i] * y[i];
        }
    } else {
        num = INFINITY;
    }
    free(x), free(y);
    double r = sqrt(num) / (den > 0 ? sqrt(den) : 1.0);
    return r == r ? r : INFINITY;
}

#endif
