/* CPU reference of the multi-tensor optimizer kernels: AdamW, the sum of squares of
 * many gradients, and a scale of many tensors by a scalar held in a tensor. Every
 * value is computed in double and rounded once when stored, except the gradient
 * multipliers, rounded to f32 (f64 state) as an in-place scale of the gradient would. */
#include "backends/cpu/cpu_internal.h"

#include <math.h>

fe_status cpu_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g, fe_tensor *const *m,
                    fe_tensor *const *v, const fe_adamw_args *a);
fe_status cpu_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g, double scale);
fe_status cpu_scale_multi(int n, fe_tensor *const *t, const fe_tensor *s);

/* Tensors are split in chunks of this many elements; chunks run in parallel and the
 * norm's partial sums are added in chunk order, so results do not depend on threads. */
#define OPT_CHUNK 1024

static fe_status check_float(const char *op, const fe_tensor *t, int i) {
    if (!t) return fe_set_error(FE_ERR_ARG, "%s (cpu): tensor %d is NULL", op, i);
    if (!fe_dtype_is_float(t->dtype))
        return fe_set_error(FE_ERR_DTYPE, "%s (cpu): tensor %d is %s, expected a float dtype", op,
                            i, fe_dtype_name(t->dtype));
    if (!fe_is_contiguous(t))
        return fe_set_error(FE_ERR_ARG, "%s (cpu): tensor %d is not contiguous", op, i);
    return FE_OK;
}

static fe_status check_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g,
                             fe_tensor *const *m, fe_tensor *const *v, const fe_adamw_args *a) {
    if (n < 0 || (n > 0 && (!p || !g || !m || !v || !a || !a->weight_decay)))
        return fe_set_error(FE_ERR_ARG, "adamw (cpu): NULL arguments");
    for (int i = 0; i < n; i++) {
        if (check_float("adamw", p[i], i) || check_float("adamw", g[i], i) ||
            check_float("adamw", m[i], i) || check_float("adamw", v[i], i))
            return fe_last_status();
        fe_dtype sdt = p[i]->dtype == FE_F64 ? FE_F64 : FE_F32;
        if (m[i]->dtype != sdt || v[i]->dtype != sdt)
            return fe_set_error(FE_ERR_DTYPE, "adamw (cpu): state of tensor %d must be %s", i,
                                fe_dtype_name(sdt));
        int64_t k = fe_numel(p[i]);
        if (fe_numel(g[i]) != k || fe_numel(m[i]) != k || fe_numel(v[i]) != k)
            return fe_set_error(FE_ERR_SHAPE, "adamw (cpu): tensor %d: sizes of p, g, m, v differ",
                                i);
        const fe_tensor *c = a->copy ? a->copy[i] : NULL;
        if (c && check_float("adamw", c, i)) return fe_last_status();
        if (c && fe_numel(c) != k)
            return fe_set_error(FE_ERR_SHAPE, "adamw (cpu): tensor %d: its copy has another size",
                                i);
    }
    if (n > 0 && ((a->grad_scale &&
                   (fe_numel(a->grad_scale) != 1 || !fe_dtype_is_float(a->grad_scale->dtype))) ||
                  (a->skip && fe_numel(a->skip) != 1)))
        return fe_set_error(FE_ERR_ARG, "adamw (cpu): grad_scale and skip must hold one element "
                                        "(grad_scale a float)");
    return FE_OK;
}

/* The scalar a 1-element tensor holds, or `dflt` when it is NULL. */
static double scalar_or(const fe_tensor *t, double dflt) {
    return t ? fe__load(fe__ptr(t), t->dtype, 0) : dflt;
}

/* x rounded to f32, or left in f64 (f64 state, f64 gradients). */
static inline double round_state(double x, bool f64) { return f64 ? x : (double)(float)x; }

fe_status cpu_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g, fe_tensor *const *m,
                    fe_tensor *const *v, const fe_adamw_args *a) {
    if (check_adamw(n, p, g, m, v, a)) return fe_last_status();
    if (n == 0 || scalar_or(a->skip, 0.0) != 0.0) return FE_OK;
    /* a multiplier is applied (and rounded) only when present, so a plain step reads the
     * gradient exactly as it is */
    bool has_us = a->unscale != 0.0 && a->unscale != 1.0, has_gs = a->grad_scale != NULL;
    double us = a->unscale, gs = scalar_or(a->grad_scale, 1.0);
    double b1 = a->beta1, b2 = a->beta2, inv_sqrt_bc2 = 1.0 / sqrt(a->bc2);
    double step = a->lr / a->bc1;
    for (int i = 0; i < n; i++) {
        int64_t k = fe_numel(p[i]), nchunks = (k + OPT_CHUNK - 1) / OPT_CHUNK;
        double decay = 1.0 - a->lr * a->weight_decay[i];
        void *pp = fe__ptr(p[i]), *pm = fe__ptr(m[i]), *pv = fe__ptr(v[i]);
        const void *pg = fe__ptr(g[i]);
        fe_tensor *cp = a->copy ? a->copy[i] : NULL;
        void *pc = cp ? fe__ptr(cp) : NULL;
        fe_dtype dp = p[i]->dtype, dg = g[i]->dtype, ds = m[i]->dtype, dc = cp ? cp->dtype : dp;
        bool f64 = ds == FE_F64;
#pragma omp parallel for schedule(static) if (nchunks > 4)
        for (int64_t c = 0; c < nchunks; c++) {
            double w[OPT_CHUNK], gr[OPT_CHUNK], mm[OPT_CHUNK], vv[OPT_CHUNK];
            int64_t j0 = c * OPT_CHUNK, len = k - j0 < OPT_CHUNK ? k - j0 : OPT_CHUNK;
            cpu_load(w, cpu_at(pp, dp, j0), dp, 1, len);
            cpu_load(gr, cpu_at(pg, dg, j0), dg, 1, len);
            cpu_load(mm, cpu_at(pm, ds, j0), ds, 1, len);
            cpu_load(vv, cpu_at(pv, ds, j0), ds, 1, len);
            for (int64_t j = 0; j < len; j++) {
                double gj = gr[j];
                if (has_us) gj = round_state(gj * us, f64);
                if (has_gs) gj = round_state(gj * gs, f64);
                mm[j] = b1 * mm[j] + (1.0 - b1) * gj;
                vv[j] = b2 * vv[j] + (1.0 - b2) * gj * gj;
                double denom = sqrt(vv[j]) * inv_sqrt_bc2 + a->eps;
                w[j] = w[j] * decay - step * (mm[j] / denom);
            }
            cpu_store(cpu_at(pp, dp, j0), dp, 1, w, len);
            cpu_store(cpu_at(pm, ds, j0), ds, 1, mm, len);
            cpu_store(cpu_at(pv, ds, j0), ds, 1, vv, len);
            if (pc) { /* a cast of p as stored: read the chunk back and store it, as a copy does */
                cpu_load(w, cpu_at(pp, dp, j0), dp, 1, len);
                cpu_store(cpu_at(pc, dc, j0), dc, 1, w, len);
            }
        }
    }
    return FE_OK;
}

fe_status cpu_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g, double scale) {
    if (!out || n < 0 || (n > 0 && !g))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cpu): NULL arguments");
    if (fe_numel(out) != 1 || (out->dtype != FE_F32 && out->dtype != FE_F64))
        return fe_set_error(FE_ERR_ARG, "grad_norm_sq (cpu): out must be one f32 or f64 element");
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        if (check_float("grad_norm_sq", g[i], i)) return fe_last_status();
        int64_t k = fe_numel(g[i]), nchunks = (k + OPT_CHUNK - 1) / OPT_CHUNK;
        double *part = malloc((size_t)(nchunks ? nchunks : 1) * sizeof *part);
        if (!part) return fe_set_error(FE_ERR_OOM, "grad_norm_sq (cpu): out of host memory");
        const void *pg = fe__ptr(g[i]);
        fe_dtype dg = g[i]->dtype;
        bool scaled = scale != 1.0, f64 = dg == FE_F64;
#pragma omp parallel for schedule(static) if (nchunks > 4)
        for (int64_t c = 0; c < nchunks; c++) {
            double x[OPT_CHUNK];
            int64_t j0 = c * OPT_CHUNK, len = k - j0 < OPT_CHUNK ? k - j0 : OPT_CHUNK;
            cpu_load(x, cpu_at(pg, dg, j0), dg, 1, len);
            if (scaled)
                for (int64_t j = 0; j < len; j++)
                    x[j] = round_state(x[j] * scale, f64);
            double s = 0.0;
            for (int64_t j = 0; j < len; j++)
                s += x[j] * x[j];
            part[c] = s;
        }
        for (int64_t c = 0; c < nchunks; c++)
            total += part[c];
        free(part);
    }
    fe__store(fe__ptr(out), out->dtype, 0, total);
    return FE_OK;
}

fe_status cpu_scale_multi(int n, fe_tensor *const *t, const fe_tensor *s) {
    if (!s || n < 0 || (n > 0 && !t))
        return fe_set_error(FE_ERR_ARG, "scale_multi (cpu): NULL arguments");
    if (fe_numel(s) != 1 || !fe_dtype_is_float(s->dtype))
        return fe_set_error(FE_ERR_ARG, "scale_multi (cpu): the scale must be one float element");
    for (int i = 0; i < n; i++)
        if (check_float("scale_multi", t[i], i)) return fe_last_status();
    double f = scalar_or(s, 1.0);
    for (int i = 0; i < n; i++) {
        int64_t k = fe_numel(t[i]), nchunks = (k + OPT_CHUNK - 1) / OPT_CHUNK;
        void *pt = fe__ptr(t[i]);
        fe_dtype dt = t[i]->dtype;
#pragma omp parallel for schedule(static) if (nchunks > 4)
        for (int64_t c = 0; c < nchunks; c++) {
            double x[OPT_CHUNK];
            int64_t j0 = c * OPT_CHUNK, len = k - j0 < OPT_CHUNK ? k - j0 : OPT_CHUNK;
            cpu_load(x, cpu_at(pt, dt, j0), dt, 1, len);
            for (int64_t j = 0; j < len; j++)
                x[j] *= f;
            cpu_store(cpu_at(pt, dt, j0), dt, 1, x, len);
        }
    }
    return FE_OK;
}
