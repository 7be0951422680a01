/* Helpers shared by the CPU backend's kernel files. */
#ifndef FE_CPU_INTERNAL_H
#define FE_CPU_INTERNAL_H

#include "backends/backend.h"

/* Elements handled per chunk when streaming through double buffers. */
#define FE_CPU_CHUNK 512

/* A walk over the elements of `shape` for up to 4 operands with their own strides.
 * Dims of size 1 are dropped and dims that are contiguous for every operand merged,
 * so that `inner` is as long as possible. */
typedef struct cpu_iter {
    int nops, ndim; /* ndim >= 1 after collapsing */
    int64_t shape[FE_MAX_DIMS];
    int64_t stride[4][FE_MAX_DIMS];
    int64_t rows, inner; /* rows = product of all but the last dim */
} cpu_iter;

void cpu_iter_init(cpu_iter *it, int nops, const fe_tensor *const *ts, int ndim,
                   const int64_t *shape);
/* Element offsets of each operand at the start of row r. */
void cpu_iter_row(const cpu_iter *it, int64_t r, int64_t *off);

/* Convert n elements at element pointer p (dtype dt, element stride s) to/from doubles. */
void cpu_load(double *dst, const void *p, fe_dtype dt, int64_t s, int64_t n);
void cpu_store(void *p, fe_dtype dt, int64_t s, const double *src, int64_t n);
/* Element pointer: base + off elements of dtype dt. */
static inline void *cpu_at(const void *base, fe_dtype dt, int64_t off) {
    return (char *)base + off * (int64_t)fe_dtype_size(dt);
}
/* Rows and row length of a contiguous tensor viewed as (rows, last dim). */
static inline int64_t cpu_rows(const fe_tensor *t) {
    int64_t c = t->ndim ? t->shape[t->ndim - 1] : 1;
    return c ? fe_numel(t) / c : 0;
}
static inline int64_t cpu_cols(const fe_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

/* kernels by file */
fe_status cpu_copy(fe_tensor *dst, const fe_tensor *src);
fe_status cpu_fill(fe_tensor *t, double v);
fe_status cpu_arange(fe_tensor *t, double start, double step);
fe_status cpu_rand(fe_tensor *t, uint64_t seed, uint64_t block0, fe_rand_kind kind, double a,
                   double b);
fe_status cpu_unary(fe_unary_op op, fe_tensor *out, const fe_tensor *a, double alpha, double beta);
fe_status cpu_binary(fe_binary_op op, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                     double alpha);
fe_status cpu_where(fe_tensor *out, const fe_tensor *cond, const fe_tensor *a, const fe_tensor *b);
fe_status cpu_reduce(fe_reduce_op op, fe_tensor *out, const fe_tensor *a);
fe_status cpu_matmul(fe_tensor *out, const fe_tensor *a, const fe_tensor *b, double alpha,
                     const fe_tensor *c);
fe_status cpu_softmax(fe_tensor *y, const fe_tensor *x, bool log);
fe_status cpu_softmax_backward(fe_tensor *gx, const fe_tensor *gy, const fe_tensor *y, bool log);
fe_status cpu_rmsnorm(fe_tensor *y, fe_tensor *h, fe_tensor *rstd, const fe_tensor *x,
                      const fe_tensor *r, const fe_tensor *w, double eps);
fe_status cpu_rmsnorm_backward(fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                               const fe_tensor *x, const fe_tensor *w, const fe_tensor *rstd,
                               const fe_tensor *gextra);
fe_status cpu_layernorm(fe_tensor *y, fe_tensor *mean, fe_tensor *rstd, const fe_tensor *x,
                        const fe_tensor *w, const fe_tensor *b, double eps);
fe_status cpu_layernorm_backward(fe_tensor *gx, fe_tensor *gw, fe_tensor *gb, const fe_tensor *gy,
                                 const fe_tensor *x, const fe_tensor *w, const fe_tensor *mean,
                                 const fe_tensor *rstd);
fe_status cpu_rope(fe_tensor *out, const fe_tensor *x, const fe_tensor *inv_freq, int seq_dim,
                   int64_t pos0, int sign);
fe_status cpu_embedding(fe_tensor *out, const fe_tensor *w, const fe_tensor *idx);
fe_status cpu_embedding_backward(fe_tensor *gw, const fe_tensor *gout, const fe_tensor *idx);
fe_status cpu_cross_entropy(fe_tensor *loss, const fe_tensor *logits, const fe_tensor *targets,
                            int64_t ignore);
fe_status cpu_cross_entropy_backward(fe_tensor *glogits, const fe_tensor *gloss,
                                     const fe_tensor *logits, const fe_tensor *targets,
                                     int64_t ignore);
fe_status cpu_silu_gate(fe_tensor *out, const fe_tensor *a, const fe_tensor *b);
fe_status cpu_silu_gate_backward(fe_tensor *ga, fe_tensor *gb, const fe_tensor *g,
                                 const fe_tensor *a, const fe_tensor *b);

/* cpu_optim.c: the fused optimizer entries */
fe_status cpu_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g, fe_tensor *const *m,
                    fe_tensor *const *v, const fe_adamw_args *a);
fe_status cpu_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g, double scale);
fe_status cpu_scale_multi(int n, fe_tensor *const *t, const fe_tensor *s);

#endif
