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
