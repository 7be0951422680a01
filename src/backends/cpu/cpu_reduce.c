/* CPU reductions (sum, max) over any set of dims, accumulated in double. */
#include "backends/cpu/cpu_internal.h"

#include <math.h>

fe_status cpu_reduce(fe_reduce_op op, fe_tensor *out, const fe_tensor *a) {
    int nd = a->ndim;
    int64_t n_out = fe_numel(out);
    double *acc = malloc((size_t)(n_out ? n_out : 1) * sizeof *acc);
    if (!acc) return fe_set_error(FE_ERR_OOM, "reduce: out of host memory");
    for (int64_t i = 0; i < n_out; i++) acc[i] = op == FE_R_SUM ? 0.0 : -INFINITY;
    /* view out with a's shape: reduced dims get stride 0 */
    fe_tensor ov = *out;
    for (int d = 0; d < nd; d++) {
        ov.shape[d] = a->shape[d];
        if (out->shape[d] == 1 && a->shape[d] != 1) ov.stride[d] = 0;
    }
    const fe_tensor *ts[2] = {&ov, a};
    cpu_iter it;
    cpu_iter_init(&it, 2, ts, nd, a->shape);
    int64_t so = it.stride[0][it.ndim - 1], sa = it.stride[1][it.ndim - 1];
    const char *pa = fe__ptr(a);
    /* which rows share an output element decides how to split the work */
    bool last_reduced = so == 0;
    bool rows_distinct = true; /* every row maps to its own output run */
    for (int d = 0; d < it.ndim - 1; d++)
        if (it.stride[0][d] == 0) rows_distinct = false;
    if (last_reduced) {
#pragma omp parallel for if (rows_distinct && it.rows > 1 && it.rows * it.inner > 32768)
        for (int64_t r = 0; r < it.rows; r++) {
            int64_t off[2];
            cpu_iter_row(&it, r, off);
            double buf[FE_CPU_CHUNK], s = op == FE_R_SUM ? 0.0 : -INFINITY;
            for (int64_t j0 = 0; j0 < it.inner; j0 += FE_CPU_CHUNK) {
                int64_t n = it.inner - j0 < FE_CPU_CHUNK ? it.inner - j0 : FE_CPU_CHUNK;
                cpu_load(buf, cpu_at(pa, a->dtype, off[1] + j0 * sa), a->dtype, sa, n);
                if (op == FE_R_SUM)
                    for (int64_t j = 0; j < n; j++) s += buf[j];
                else
                    for (int64_t j = 0; j < n; j++) s = (buf[j] > s || buf[j] != buf[j]) ? buf[j] : s;
            }
            if (rows_distinct) {
                acc[off[0]] = s;
            } else {
#pragma omp critical
                acc[off[0]] = op == FE_R_SUM ? acc[off[0]] + s : (s > acc[off[0]] || s != s ? s : acc[off[0]]);
            }
        }
    } else {
        /* split the last (kept) dim into column blocks; each thread owns its columns */
        int64_t nblk = (it.inner + 63) / 64;
#pragma omp parallel for if (nblk > 1 && it.rows * it.inner > 32768)
        for (int64_t blk = 0; blk < nblk; blk++) {
            int64_t j0 = blk * 64, n = it.inner - j0 < 64 ? it.inner - j0 : 64;
            double buf[64];
            for (int64_t r = 0; r < it.rows; r++) {
                int64_t off[2];
                cpu_iter_row(&it, r, off);
                cpu_load(buf, cpu_at(pa, a->dtype, off[1] + j0 * sa), a->dtype, sa, n);
                double *o = acc + off[0] + j0 * so;
                if (op == FE_R_SUM)
                    for (int64_t j = 0; j < n; j++) o[j * so] += buf[j];
                else
                    for (int64_t j = 0; j < n; j++)
                        if (buf[j] > o[j * so] || buf[j] != buf[j]) o[j * so] = buf[j];
            }
        }
    }
    /* out is contiguous and acc is laid out with out's strides */
    cpu_store(fe__ptr(out), out->dtype, 1, acc, n_out);
    free(acc);
    return FE_OK;
}
