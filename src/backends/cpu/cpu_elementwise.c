/* CPU elementwise kernels: strided walks, copies with casts, fills, random
 * numbers, unary and binary maps. Values stream through double buffers, so every
 * float dtype computes in double precision. */
#include "backends/cpu/cpu_internal.h"

#include <math.h>

/* ---- walking strided operands ------------------------------------------------ */

void cpu_iter_init(cpu_iter *it, int nops, const fe_tensor *const *ts, int ndim,
                   const int64_t *shape) {
    it->nops = nops;
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        bool merge = n > 0;
        for (int k = 0; k < nops && merge; k++)
            merge = it->stride[k][n - 1] == ts[k]->stride[d] * shape[d];
        if (merge) {
            it->shape[n - 1] *= shape[d];
            for (int k = 0; k < nops; k++) it->stride[k][n - 1] = ts[k]->stride[d];
        } else {
            it->shape[n] = shape[d];
            for (int k = 0; k < nops; k++) it->stride[k][n] = ts[k]->stride[d];
            n++;
        }
    }
    if (n == 0) {
        it->shape[0] = fe__numel_of(ndim, shape) ? 1 : 0;
        for (int k = 0; k < nops; k++) it->stride[k][0] = 1;
        n = 1;
    }
    it->ndim = n;
    it->inner = it->shape[n - 1];
    it->rows = it->inner ? fe__numel_of(n, it->shape) / it->inner : 0;
}

void cpu_iter_row(const cpu_iter *it, int64_t r, int64_t *off) {
    for (int k = 0; k < it->nops; k++) off[k] = 0;
    for (int d = it->ndim - 2; d >= 0; d--) {
        int64_t i = r % it->shape[d];
        r /= it->shape[d];
        for (int k = 0; k < it->nops; k++) off[k] += i * it->stride[k][d];
    }
}

void cpu_load(double *dst, const void *p, fe_dtype dt, int64_t s, int64_t n) {
    switch (dt) {
    case FE_F32: {
        const float *q = p;
        if (s == 1)
            for (int64_t i = 0; i < n; i++) dst[i] = q[i];
        else
            for (int64_t i = 0; i < n; i++) dst[i] = q[i * s];
        break;
    }
    case FE_F64: {
        const double *q = p;
        if (s == 1) memcpy(dst, q, (size_t)n * sizeof *dst);
        else
            for (int64_t i = 0; i < n; i++) dst[i] = q[i * s];
        break;
    }
    case FE_U8: {
        const uint8_t *q = p;
        for (int64_t i = 0; i < n; i++) dst[i] = q[i * s];
        break;
    }
    case FE_I32: {
        const int32_t *q = p;
        for (int64_t i = 0; i < n; i++) dst[i] = q[i * s];
        break;
    }
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = fe__load(p, dt, i * s);
    }
}

void cpu_store(void *p, fe_dtype dt, int64_t s, const double *src, int64_t n) {
    switch (dt) {
    case FE_F32: {
        float *q = p;
        if (s == 1)
            for (int64_t i = 0; i < n; i++) q[i] = (float)src[i];
        else
            for (int64_t i = 0; i < n; i++) q[i * s] = (float)src[i];
        break;
    }
    case FE_F64: {
        double *q = p;
        if (s == 1) memcpy(q, src, (size_t)n * sizeof *q);
        else
            for (int64_t i = 0; i < n; i++) q[i * s] = src[i];
        break;
    }
    default:
        for (int64_t i = 0; i < n; i++) fe__store(p, dt, i * s, src[i]);
    }
}

/* Run body(chunk of doubles...) over the rows of an iterator: for each row and
 * chunk, `n` elements starting at element offsets off[k] + j0 * stride. */
#define FOR_CHUNKS(it, off, j0, n, ...)                                                    \
    do {                                                                                   \
        _Pragma("omp parallel for schedule(static) if ((it).rows * (it).inner > 32768)") \
        for (int64_t r_ = 0; r_ < (it).rows; r_++) {                                       \
            int64_t off[4];                                                                \
            cpu_iter_row(&(it), r_, off);                                                  \
            for (int64_t j0 = 0; j0 < (it).inner; j0 += FE_CPU_CHUNK) {                    \
                int64_t n = (it).inner - j0 < FE_CPU_CHUNK ? (it).inner - j0 : FE_CPU_CHUNK; \
                __VA_ARGS__                                                                \
            }                                                                              \
        }                                                                                  \
    } while (0)

#define LAST(it, k) ((it).stride[k][(it).ndim - 1])

/* ---- copy, fill, arange, rand ---------------------------------------------- */

fe_status cpu_copy(fe_tensor *dst, const fe_tensor *src) {
    size_t es = fe_dtype_size(dst->dtype);
    if (dst->dtype == src->dtype && fe_is_contiguous(dst) && fe_is_contiguous(src)) {
        if (fe_numel(dst)) memmove(fe__ptr(dst), fe__ptr(src), (size_t)fe_numel(dst) * es);
        return FE_OK;
    }
    const fe_tensor *ts[2] = {dst, src};
    cpu_iter it;
    cpu_iter_init(&it, 2, ts, dst->ndim, dst->shape);
    char *d = fe__ptr(dst);
    const char *s = fe__ptr(src);
    if (dst->dtype == src->dtype) { /* exact, also for 64-bit integers */
        FOR_CHUNKS(it, off, j0, n, {
            for (int64_t j = j0; j < j0 + n; j++)
                memcpy(d + (off[0] + j * LAST(it, 0)) * (int64_t)es,
                       s + (off[1] + j * LAST(it, 1)) * (int64_t)es, es);
        });
        return FE_OK;
    }
    FOR_CHUNKS(it, off, j0, n, {
        double buf[FE_CPU_CHUNK];
        cpu_load(buf, cpu_at(s, src->dtype, off[1] + j0 * LAST(it, 1)), src->dtype, LAST(it, 1), n);
        cpu_store(cpu_at(d, dst->dtype, off[0] + j0 * LAST(it, 0)), dst->dtype, LAST(it, 0), buf, n);
    });
    return FE_OK;
}

fe_status cpu_fill(fe_tensor *t, double v) {
    int64_t n = fe_numel(t);
    void *p = fe__ptr(t);
    if (t->dtype == FE_F32) {
        float *q = p;
        for (int64_t i = 0; i < n; i++) q[i] = (float)v;
    } else if (v == 0.0) {
        if (n) memset(p, 0, (size_t)n * fe_dtype_size(t->dtype));
    } else {
        for (int64_t i = 0; i < n; i++) fe__store(p, t->dtype, i, v);
    }
    return FE_OK;
}

fe_status cpu_arange(fe_tensor *t, double start, double step) {
    int64_t n = fe_numel(t);
    void *p = fe__ptr(t);
    for (int64_t i = 0; i < n; i++) fe__store(p, t->dtype, i, start + (double)i * step);
    return FE_OK;
}

fe_status cpu_rand(fe_tensor *t, uint64_t seed, uint64_t block0, fe_rand_kind kind, double a,
                   double b) {
    int64_t n = fe_numel(t);
    void *p = fe__ptr(t);
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        double v = kind == FE_RAND_UNIFORM ? a + (b - a) * fe__rng_uniform(seed, block0, i)
                                           : a + b * fe__rng_normal(seed, block0, i);
        fe__store(p, t->dtype, i, v);
    }
    return FE_OK;
}

/* ---- unary and binary maps ---------------------------------------------------- */

static inline double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

#define GELU_K 0.7978845608028654 /* sqrt(2/pi) */
#define GELU_C 0.044715

static void unary_chunk(fe_unary_op op, double *y, const double *x, int64_t n, double al,
                        double be) {
    switch (op) {
    case FE_U_NEG: for (int64_t i = 0; i < n; i++) y[i] = -x[i]; break;
    case FE_U_EXP: for (int64_t i = 0; i < n; i++) y[i] = exp(x[i]); break;
    case FE_U_LOG: for (int64_t i = 0; i < n; i++) y[i] = log(x[i]); break;
    case FE_U_SQRT: for (int64_t i = 0; i < n; i++) y[i] = sqrt(x[i]); break;
    case FE_U_RSQRT: for (int64_t i = 0; i < n; i++) y[i] = 1.0 / sqrt(x[i]); break;
    case FE_U_TANH: for (int64_t i = 0; i < n; i++) y[i] = tanh(x[i]); break;
    case FE_U_SIGMOID: for (int64_t i = 0; i < n; i++) y[i] = sigmoid(x[i]); break;
    case FE_U_RELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0; break;
    case FE_U_GELU_TANH:
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5 * x[i] * (1 + tanh(GELU_K * (x[i] + GELU_C * x[i] * x[i] * x[i])));
        break;
    case FE_U_GELU_ERF:
        for (int64_t i = 0; i < n; i++) y[i] = 0.5 * x[i] * (1 + erf(x[i] * M_SQRT1_2));
        break;
    case FE_U_SILU: for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoid(x[i]); break;
    case FE_U_SQUARE: for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i]; break;
    case FE_U_AFFINE: for (int64_t i = 0; i < n; i++) y[i] = x[i] * al + be; break;
    case FE_U_COUNT: break;
    }
}

static void binary_chunk(fe_binary_op op, double *y, const double *a, const double *b, int64_t n,
                         double al) {
    switch (op) {
    case FE_B_ADD: for (int64_t i = 0; i < n; i++) y[i] = a[i] + al * b[i]; break;
    case FE_B_SUB: for (int64_t i = 0; i < n; i++) y[i] = a[i] - b[i]; break;
    case FE_B_MUL: for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i]; break;
    case FE_B_DIV: for (int64_t i = 0; i < n; i++) y[i] = a[i] / b[i]; break;
    case FE_B_EQ: for (int64_t i = 0; i < n; i++) y[i] = a[i] == b[i]; break;
    case FE_B_GE: for (int64_t i = 0; i < n; i++) y[i] = a[i] >= b[i]; break;
    case FE_B_GELU_TANH_GRAD:
        for (int64_t i = 0; i < n; i++) {
            double x = a[i], t = tanh(GELU_K * (x + GELU_C * x * x * x));
            y[i] = b[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * x * x));
        }
        break;
    case FE_B_GELU_ERF_GRAD:
        for (int64_t i = 0; i < n; i++) {
            double x = a[i];
            y[i] = b[i] * (0.5 * (1 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * 0.3989422804014327);
        }
        break;
    case FE_B_SILU_GRAD:
        for (int64_t i = 0; i < n; i++) {
            double s = sigmoid(a[i]);
            y[i] = b[i] * s * (1 + a[i] * (1 - s));
        }
        break;
    case FE_B_RELU_GRAD: for (int64_t i = 0; i < n; i++) y[i] = a[i] > 0 ? b[i] : 0; break;
    case FE_B_SIGMOID_GRAD_Y: for (int64_t i = 0; i < n; i++) y[i] = b[i] * a[i] * (1 - a[i]); break;
    case FE_B_TANH_GRAD_Y: for (int64_t i = 0; i < n; i++) y[i] = b[i] * (1 - a[i] * a[i]); break;
    case FE_B_COUNT: break;
    }
}

fe_status cpu_unary(fe_unary_op op, fe_tensor *out, const fe_tensor *a, double alpha, double beta) {
    const fe_tensor *ts[2] = {out, a};
    cpu_iter it;
    cpu_iter_init(&it, 2, ts, out->ndim, out->shape);
    char *o = fe__ptr(out);
    const char *pa = fe__ptr(a);
    FOR_CHUNKS(it, off, j0, n, {
        double x[FE_CPU_CHUNK], y[FE_CPU_CHUNK];
        cpu_load(x, cpu_at(pa, a->dtype, off[1] + j0 * LAST(it, 1)), a->dtype, LAST(it, 1), n);
        unary_chunk(op, y, x, n, alpha, beta);
        cpu_store(cpu_at(o, out->dtype, off[0] + j0 * LAST(it, 0)), out->dtype, LAST(it, 0), y, n);
    });
    return FE_OK;
}

fe_status cpu_binary(fe_binary_op op, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                     double alpha) {
    const fe_tensor *ts[3] = {out, a, b};
    cpu_iter it;
    cpu_iter_init(&it, 3, ts, out->ndim, out->shape);
    char *o = fe__ptr(out);
    const char *pa = fe__ptr(a), *pb = fe__ptr(b);
    FOR_CHUNKS(it, off, j0, n, {
        double x[FE_CPU_CHUNK], z[FE_CPU_CHUNK], y[FE_CPU_CHUNK];
        cpu_load(x, cpu_at(pa, a->dtype, off[1] + j0 * LAST(it, 1)), a->dtype, LAST(it, 1), n);
        cpu_load(z, cpu_at(pb, b->dtype, off[2] + j0 * LAST(it, 2)), b->dtype, LAST(it, 2), n);
        binary_chunk(op, y, x, z, n, alpha);
        cpu_store(cpu_at(o, out->dtype, off[0] + j0 * LAST(it, 0)), out->dtype, LAST(it, 0), y, n);
    });
    return FE_OK;
}

fe_status cpu_where(fe_tensor *out, const fe_tensor *cond, const fe_tensor *a, const fe_tensor *b) {
    const fe_tensor *ts[4] = {out, cond, a, b};
    cpu_iter it;
    cpu_iter_init(&it, 4, ts, out->ndim, out->shape);
    char *o = fe__ptr(out);
    const char *pc = fe__ptr(cond), *pa = fe__ptr(a), *pb = fe__ptr(b);
    FOR_CHUNKS(it, off, j0, n, {
        double c[FE_CPU_CHUNK], x[FE_CPU_CHUNK], z[FE_CPU_CHUNK];
        cpu_load(c, cpu_at(pc, cond->dtype, off[1] + j0 * LAST(it, 1)), cond->dtype, LAST(it, 1), n);
        cpu_load(x, cpu_at(pa, a->dtype, off[2] + j0 * LAST(it, 2)), a->dtype, LAST(it, 2), n);
        cpu_load(z, cpu_at(pb, b->dtype, off[3] + j0 * LAST(it, 3)), b->dtype, LAST(it, 3), n);
        for (int64_t i = 0; i < n; i++) x[i] = c[i] != 0 ? x[i] : z[i];
        cpu_store(cpu_at(o, out->dtype, off[0] + j0 * LAST(it, 0)), out->dtype, LAST(it, 0), x, n);
    });
    return FE_OK;
}
