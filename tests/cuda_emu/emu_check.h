/* What the harnesses of the CPU emulations share: a check that counts and reports failures,
 * the normwise relative error they compare with, a value as double, and the random inputs.
 * Include after backends/cuda/cuda_internal.cuh. */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>

#include <random>
#include <vector>

static int fails = 0, checks = 0;

static void expect(bool ok, const char *fmt, ...) {
    checks++;
    if (ok) return;
    fails++;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ||a - b|| / ||b||; infinite when a holds a NaN (an element never written) */
static double relerr(const std::vector<double> &a, const std::vector<double> &b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        if (a[i] != a[i]) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

template <class T> static double to_d(T v) { return (double)cu_to_f(v); }

/* One query head's attention in float64: o (D) = softmax(q . K[t] / sqrt(D)) over the n rows
 * of K (row stride D), times the rows of V. */
template <class T>
static void ref_attention(const double *q, const T *K, const T *V, int n, int D, double *o) {
    std::vector<double> sc(n);
    double mx = -INFINITY, l = 0;
    for (int t = 0; t < n; t++) {
        double d = 0;
        for (int i = 0; i < D; i++) d += q[i] * to_d(K[(size_t)t * D + i]);
        sc[t] = d / sqrt((double)D), mx = fmax(mx, sc[t]);
    }
    for (int t = 0; t < n; t++) sc[t] = exp(sc[t] - mx), l += sc[t];
    for (int i = 0; i < D; i++) {
        double s = 0;
        for (int t = 0; t < n; t++) s += sc[t] * to_d(V[(size_t)t * D + i]);
        o[i] = s / l;
    }
}

/* The harness's random numbers: seed once at the start of main (emu_seed), then uniform in
 * [-1, 1) (uni) and vectors of them times scale in dtype T (rand_t). */
inline std::mt19937_64 &emu_rng() {
    static std::mt19937_64 r;
    return r;
}
inline void emu_seed(uint64_t s) { emu_rng().seed(s); }
inline double uni() { return std::uniform_real_distribution<double>(-1, 1)(emu_rng()); }
template <class T> std::vector<T> rand_t(size_t n, double scale) {
    std::vector<T> v(n);
    for (auto &x : v) x = cu_cast<T>((float)(scale * uni()));
    return v;
}
