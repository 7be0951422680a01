/* CPU row kernels: softmax, RMSNorm, LayerNorm, RoPE, embedding, cross-entropy,
 * SiLU gate. Each row is loaded into doubles, computed, and stored back. */
#include "backends/cpu/cpu_internal.h"

#include <inttypes.h>
#include <math.h>

/* Run the body for every row with a per-thread scratch row of nbuf*cols doubles
 * (buf_); the status (out of memory) lands in st. */
#define ROWS_ST(st, nrows, cols, nbuf, ...)                                           \
    do {                                                                               \
        fe_status st_ = FE_OK;                                                         \
        _Pragma("omp parallel") {                                                      \
            double *buf_ = malloc((size_t)((cols) > 0 ? (cols) : 1) * (nbuf) * sizeof(double)); \
            if (!buf_) {                                                               \
                _Pragma("omp atomic write") st_ = FE_ERR_OOM;                          \
            } else {                                                                   \
                _Pragma("omp for schedule(static)") for (int64_t row = 0; row < (nrows); row++) { \
                    __VA_ARGS__                                                        \
                }                                                                      \
            }                                                                          \
            free(buf_);                                                                \
        }                                                                              \
        (st) = st_;                                                                    \
    } while (0)

/* ROWS_ST that returns the error from the calling function. */
#define ROWS(nrows, cols, nbuf, ...)                                                   \
    do {                                                                               \
        fe_status rows_st_;                                                            \
        ROWS_ST(rows_st_, nrows, cols, nbuf, __VA_ARGS__);                             \
        if (rows_st_) return fe_set_error(rows_st_, "out of host memory for a row buffer"); \
    } while (0)

/* exp in the precision of the data: expf for f32 tensors (exact to f32, and a few
 * times cheaper), exp otherwise (f64 keeps its gradient checks exact). */
static inline double exp_as(bool f32, double x) { return f32 ? (double)expf((float)x) : exp(x); }

#define LOADROW(dst, t, row, C) cpu_load(dst, cpu_at(fe__ptr(t), (t)->dtype, (row) * (C)), (t)->dtype, 1, C)
#define STOREROW(t, row, C, src) cpu_store(cpu_at(fe__ptr(t), (t)->dtype, (row) * (C)), (t)->dtype, 1, src, C)

fe_status cpu_softmax(fe_tensor *y, const fe_tensor *x, bool take_log) {
    int64_t R = cpu_rows(x), C = cpu_cols(x);
    bool f32 = x->dtype == FE_F32 && y->dtype == FE_F32;
    ROWS(R, C, 1, {
        double *v = buf_;
        LOADROW(v, x, row, C);
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < C; j++) m = v[j] > m ? v[j] : m;
        for (int64_t j = 0; j < C; j++) s += exp_as(f32, v[j] - m);
        if (take_log) {
            double l = m + log(s);
            for (int64_t j = 0; j < C; j++) v[j] -= l;
        } else {
            for (int64_t j = 0; j < C; j++) v[j] = exp_as(f32, v[j] - m) / s;
        }
        STOREROW(y, row, C, v);
    });
    return FE_OK;
}

fe_status cpu_softmax_backward(fe_tensor *gx, const fe_tensor *gy, const fe_tensor *y, bool take_log) {
    int64_t R = cpu_rows(y), C = cpu_cols(y);
    bool f32 = y->dtype == FE_F32 && gx->dtype == FE_F32;
    ROWS(R, C, 2, {
        double *g = buf_, *v = buf_ + C, s = 0;
        LOADROW(g, gy, row, C);
        LOADROW(v, y, row, C);
        if (take_log) {
            for (int64_t j = 0; j < C; j++) s += g[j];
            for (int64_t j = 0; j < C; j++) g[j] -= exp_as(f32, v[j]) * s;
        } else {
            for (int64_t j = 0; j < C; j++) s += g[j] * v[j];
            for (int64_t j = 0; j < C; j++) g[j] = v[j] * (g[j] - s);
        }
        STOREROW(gx, row, C, g);
    });
    return FE_OK;
}

/* A 1-D tensor's C values as a malloc'd array of doubles (NULL with an error set). */
static double *load_vector(const fe_tensor *w, int64_t C) {
    double *v = malloc((size_t)(C ? C : 1) * sizeof *v);
    if (!v) fe_set_error(FE_ERR_OOM, "out of host memory for a weight row");
    else cpu_load(v, fe__ptr(w), w->dtype, 1, C);
    return v;
}

fe_status cpu_rmsnorm(fe_tensor *y, fe_tensor *h, fe_tensor *rstd, const fe_tensor *x,
                      const fe_tensor *r, const fe_tensor *w, double eps) {
    int64_t R = cpu_rows(x), C = cpu_cols(x);
    double *wv = NULL;
    if (w && !(wv = load_vector(w, C))) return fe_last_status();
    ROWS(R, C, 2, {
        double *v = buf_, *t = buf_ + C, ss = 0;
        LOADROW(v, x, row, C);
        if (r) {
            LOADROW(t, r, row, C);
            for (int64_t j = 0; j < C; j++) v[j] += t[j];
            STOREROW(h, row, C, v);
            LOADROW(v, h, row, C); /* normalise the rounded h that backward will see */
        }
        for (int64_t j = 0; j < C; j++) ss += v[j] * v[j];
        double rs = 1.0 / sqrt(ss / (double)C + eps);
        for (int64_t j = 0; j < C; j++) v[j] = v[j] * rs * (wv ? wv[j] : 1.0);
        STOREROW(y, row, C, v);
        fe__store(fe__ptr(rstd), rstd->dtype, row, rs);
    });
    free(wv);
    return FE_OK;
}

fe_status cpu_rmsnorm_backward(fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                               const fe_tensor *x, const fe_tensor *w, const fe_tensor *rstd,
                               const fe_tensor *gextra) {
    int64_t R = cpu_rows(x), C = cpu_cols(x);
    double *wv = NULL;
    if (w && !(wv = load_vector(w, C))) return fe_last_status();
    if (gx) {
        ROWS(R, C, 3, {
            double *g = buf_, *v = buf_ + C, *e = buf_ + 2 * C, dot = 0;
            double rs = fe__load(fe__ptr(rstd), rstd->dtype, row);
            LOADROW(g, gy, row, C);
            LOADROW(v, x, row, C);
            for (int64_t j = 0; j < C; j++) {
                g[j] *= wv ? wv[j] : 1.0; /* gradient w.r.t. the normalised value */
                v[j] *= rs;               /* normalised value */
                dot += g[j] * v[j];
            }
            dot /= (double)C;
            if (gextra) LOADROW(e, gextra, row, C);
            for (int64_t j = 0; j < C; j++) g[j] = rs * (g[j] - v[j] * dot) + (gextra ? e[j] : 0);
            STOREROW(gx, row, C, g);
        });
    }
    if (gw) {
        double *acc = calloc((size_t)(C ? C : 1), sizeof *acc);
        double *g = malloc((size_t)(C ? C : 1) * 2 * sizeof *g);
        if (!acc || !g) {
            free(acc), free(g), free(wv);
            return fe_set_error(FE_ERR_OOM, "rmsnorm: out of host memory");
        }
        for (int64_t row = 0; row < R; row++) {
            double rs = fe__load(fe__ptr(rstd), rstd->dtype, row);
            LOADROW(g, gy, row, C);
            LOADROW(g + C, x, row, C);
            for (int64_t j = 0; j < C; j++) acc[j] += g[j] * g[C + j] * rs;
        }
        cpu_store(fe__ptr(gw), gw->dtype, 1, acc, C);
        free(acc), free(g);
    }
    free(wv);
    return FE_OK;
}

fe_status cpu_layernorm(fe_tensor *y, fe_tensor *mean, fe_tensor *rstd, const fe_tensor *x,
                        const fe_tensor *w, const fe_tensor *b, double eps) {
    int64_t R = cpu_rows(x), C = cpu_cols(x);
    ROWS(R, C, 3, {
        double *v = buf_, *wv = buf_ + C, *bv = buf_ + 2 * C, m = 0, var = 0;
        LOADROW(v, x, row, C);
        if (w) cpu_load(wv, fe__ptr(w), w->dtype, 1, C);
        if (b) cpu_load(bv, fe__ptr(b), b->dtype, 1, C);
        for (int64_t j = 0; j < C; j++) m += v[j];
        m /= (double)C;
        for (int64_t j = 0; j < C; j++) var += (v[j] - m) * (v[j] - m);
        double rs = 1.0 / sqrt(var / (double)C + eps);
        for (int64_t j = 0; j < C; j++) v[j] = (v[j] - m) * rs * (w ? wv[j] : 1.0) + (b ? bv[j] : 0.0);
        STOREROW(y, row, C, v);
        fe__store(fe__ptr(mean), mean->dtype, row, m);
        fe__store(fe__ptr(rstd), rstd->dtype, row, rs);
    });
    return FE_OK;
}

fe_status cpu_layernorm_backward(fe_tensor *gx, fe_tensor *gw, fe_tensor *gb, const fe_tensor *gy,
                                 const fe_tensor *x, const fe_tensor *w, const fe_tensor *mean,
                                 const fe_tensor *rstd) {
    int64_t R = cpu_rows(x), C = cpu_cols(x);
    if (gx) {
        ROWS(R, C, 3, {
            double *g = buf_, *v = buf_ + C, *wv = buf_ + 2 * C, mg = 0, mgx = 0;
            double m = fe__load(fe__ptr(mean), mean->dtype, row);
            double rs = fe__load(fe__ptr(rstd), rstd->dtype, row);
            LOADROW(g, gy, row, C);
            LOADROW(v, x, row, C);
            if (w) cpu_load(wv, fe__ptr(w), w->dtype, 1, C);
            for (int64_t j = 0; j < C; j++) {
                v[j] = (v[j] - m) * rs;
                g[j] *= w ? wv[j] : 1.0;
                mg += g[j];
                mgx += g[j] * v[j];
            }
            mg /= (double)C;
            mgx /= (double)C;
            for (int64_t j = 0; j < C; j++) g[j] = rs * (g[j] - mg - v[j] * mgx);
            STOREROW(gx, row, C, g);
        });
    }
    if (gw || gb) {
        double *aw = calloc((size_t)(C ? C : 1) * 4, sizeof *aw);
        if (!aw) return fe_set_error(FE_ERR_OOM, "layernorm: out of host memory");
        double *ab = aw + C, *g = aw + 2 * C, *v = aw + 3 * C;
        for (int64_t row = 0; row < R; row++) {
            double m = fe__load(fe__ptr(mean), mean->dtype, row);
            double rs = fe__load(fe__ptr(rstd), rstd->dtype, row);
            LOADROW(g, gy, row, C);
            LOADROW(v, x, row, C);
            for (int64_t j = 0; j < C; j++) {
                aw[j] += g[j] * (v[j] - m) * rs;
                ab[j] += g[j];
            }
        }
        if (gw) cpu_store(fe__ptr(gw), gw->dtype, 1, aw, C);
        if (gb) cpu_store(fe__ptr(gb), gb->dtype, 1, ab, C);
        free(aw);
    }
    return FE_OK;
}

fe_status cpu_rope(fe_tensor *out, const fe_tensor *x, const fe_tensor *inv_freq, int seq_dim,
                   int64_t pos0, int sign) {
    int64_t R = cpu_rows(x), D = cpu_cols(x), half = D / 2;
    int64_t T = x->shape[seq_dim], inner = 1; /* rows per position step */
    for (int d = seq_dim + 1; d < x->ndim - 1; d++) inner *= x->shape[d];
    bool f32 = inv_freq->dtype == FE_F32;
    /* cos and sin of every (position, frequency) once: rows share them */
    double *cs = malloc((size_t)(T * half > 0 ? T * half : 1) * 2 * sizeof *cs);
    if (!cs) return fe_set_error(FE_ERR_OOM, "out of host memory for a RoPE table");
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            /* angle in the precision of inv_freq, as Hugging Face computes it */
            double ang = f32 ? (double)((float)(pos0 + t) * ((const float *)fe__ptr(inv_freq))[i])
                             : (double)(pos0 + t) * fe__load(fe__ptr(inv_freq), inv_freq->dtype, i);
            cs[2 * (t * half + i)] = cos(ang);
            cs[2 * (t * half + i) + 1] = sign * sin(ang);
        }
    fe_status st = FE_OK;
    ROWS_ST(st, R, D, 1, {
        double *v = buf_;
        int64_t t = (row / inner) % T;
        const double *ct = cs + 2 * t * half;
        LOADROW(v, x, row, D);
        for (int64_t i = 0; i < half; i++) {
            double c = ct[2 * i], s = ct[2 * i + 1], a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
        STOREROW(out, row, D, v);
    });
    free(cs);
    return st ? fe_set_error(st, "out of host memory for a row buffer") : FE_OK;
}

static int64_t index_at(const fe_tensor *idx, int64_t i) {
    const void *p = fe__ptr(idx);
    return idx->dtype == FE_I64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

fe_status cpu_embedding(fe_tensor *out, const fe_tensor *w, const fe_tensor *idx) {
    int64_t n = fe_numel(idx), V = w->shape[0], C = w->shape[1];
    size_t rb = (size_t)C * fe_dtype_size(w->dtype);
    for (int64_t i = 0; i < n; i++) {
        int64_t k = index_at(idx, i);
        if (k < 0 || k >= V)
            return fe_set_error(FE_ERR_RANGE,
                                "embedding: index %" PRId64 " at position %" PRId64
                                " is out of range for %" PRId64 " rows",
                                k, i, V);
        memcpy((char *)fe__ptr(out) + (size_t)i * rb, (const char *)fe__ptr(w) + (size_t)k * rb, rb);
    }
    return FE_OK;
}

fe_status cpu_embedding_backward(fe_tensor *gw, const fe_tensor *gout, const fe_tensor *idx) {
    int64_t n = fe_numel(idx), V = gw->shape[0], C = gw->shape[1];
    double *acc = calloc((size_t)(V * C > 0 ? V * C : 1), sizeof *acc);
    double *g = malloc((size_t)(C ? C : 1) * sizeof *g);
    if (!acc || !g) {
        free(acc), free(g);
        return fe_set_error(FE_ERR_OOM, "embedding backward: out of host memory");
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t k = index_at(idx, i);
        if (k < 0 || k >= V) continue; /* forward already refused it */
        LOADROW(g, gout, i, C);
        for (int64_t j = 0; j < C; j++) acc[k * C + j] += g[j];
    }
    cpu_store(fe__ptr(gw), gw->dtype, 1, acc, V * C);
    free(acc), free(g);
    return FE_OK;
}

/* log-sum-exp of a row of doubles */
static double lse(const double *v, int64_t C, bool f32) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < C; j++) m = v[j] > m ? v[j] : m;
    for (int64_t j = 0; j < C; j++) s += exp_as(f32, v[j] - m);
    return m + log(s);
}

static fe_status check_targets(const fe_tensor *targets, int64_t V, int64_t ignore, int64_t *count) {
    int64_t n = fe_numel(targets), c = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t t = index_at(targets, i);
        if (t == ignore) continue;
        if (t < 0 || t >= V)
            return fe_set_error(FE_ERR_RANGE,
                                "cross_entropy: target %" PRId64 " at row %" PRId64
                                " is out of range for %" PRId64 " classes",
                                t, i, V);
        c++;
    }
    *count = c;
    return FE_OK;
}

fe_status cpu_cross_entropy(fe_tensor *loss, const fe_tensor *logits, const fe_tensor *targets,
                            int64_t ignore) {
    int64_t R = cpu_rows(logits), C = cpu_cols(logits), count = 0;
    fe_status s = check_targets(targets, C, ignore, &count);
    if (s) return s;
    bool f32 = logits->dtype == FE_F32;
    double total = 0;
    _Pragma("omp parallel reduction(+ : total)") {
        double *v = malloc((size_t)(C ? C : 1) * sizeof *v);
#pragma omp for
        for (int64_t row = 0; row < R; row++) {
            int64_t t = index_at(targets, row);
            if (t == ignore || !v) continue;
            LOADROW(v, logits, row, C);
            total += lse(v, C, f32) - v[t];
        }
        free(v);
    }
    fe__store(fe__ptr(loss), loss->dtype, 0, count ? total / (double)count : 0.0);
    return FE_OK;
}

fe_status cpu_cross_entropy_backward(fe_tensor *glogits, const fe_tensor *gloss,
                                     const fe_tensor *logits, const fe_tensor *targets,
                                     int64_t ignore) {
    int64_t R = cpu_rows(logits), C = cpu_cols(logits), count = 0;
    fe_status s = check_targets(targets, C, ignore, &count);
    if (s) return s;
    double scale = count ? fe__load(fe__ptr(gloss), gloss->dtype, 0) / (double)count : 0.0;
    bool f32 = logits->dtype == FE_F32 && glogits->dtype == FE_F32;
    ROWS(R, C, 1, {
        double *v = buf_;
        int64_t t = index_at(targets, row);
        if (t == ignore) {
            for (int64_t j = 0; j < C; j++) v[j] = 0;
        } else {
            LOADROW(v, logits, row, C);
            double l = lse(v, C, f32);
            for (int64_t j = 0; j < C; j++) v[j] = exp_as(f32, v[j] - l) * scale;
            v[t] -= scale;
        }
        STOREROW(glogits, row, C, v);
    });
    return FE_OK;
}

static inline double sigm(double x, bool f32) {
    if (x >= 0) return 1 / (1 + exp_as(f32, -x));
    double e = exp_as(f32, x);
    return e / (1 + e);
}

fe_status cpu_silu_gate(fe_tensor *out, const fe_tensor *a, const fe_tensor *b) {
    int64_t R = cpu_rows(a), C = cpu_cols(a);
    bool f32 = a->dtype == FE_F32 && out->dtype == FE_F32;
    ROWS(R, C, 2, {
        double *x = buf_, *y = buf_ + C;
        LOADROW(x, a, row, C);
        LOADROW(y, b, row, C);
        for (int64_t j = 0; j < C; j++) x[j] = x[j] * sigm(x[j], f32) * y[j];
        STOREROW(out, row, C, x);
    });
    return FE_OK;
}

fe_status cpu_silu_gate_backward(fe_tensor *ga, fe_tensor *gb, const fe_tensor *g,
                                 const fe_tensor *a, const fe_tensor *b) {
    int64_t R = cpu_rows(a), C = cpu_cols(a);
    bool f32 = a->dtype == FE_F32 && g->dtype == FE_F32;
    ROWS(R, C, 3, {
        double *x = buf_, *y = buf_ + C, *gg = buf_ + 2 * C;
        LOADROW(x, a, row, C);
        LOADROW(y, b, row, C);
        LOADROW(gg, g, row, C);
        for (int64_t j = 0; j < C; j++) {
            double s = sigm(x[j], f32), silu = x[j] * s;
            double da = gg[j] * y[j] * s * (1 + x[j] * (1 - s));
            y[j] = gg[j] * silu; /* gradient of b */
            x[j] = da;
        }
        if (ga) STOREROW(ga, row, C, x);
        if (gb) STOREROW(gb, row, C, y);
    });
    return FE_OK;
}
