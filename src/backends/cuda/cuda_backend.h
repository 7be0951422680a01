/* The CUDA backend's entry points (C linkage), shared by the backend table
 * (cuda_backend.c) and the kernel files (*.cu), plus allocator statistics for tests.
 *
 * Semantics follow the CPU backend (src/backends/cpu), the reference. Work is queued
 * on one non-default stream per device and never waits for the GPU, except where a
 * result must reach the host (device-to-host copies, sync). Index errors found by
 * kernels (embedding indices, cross-entropy targets out of range) cannot be returned
 * by the launching call without a synchronisation, so they are recorded in a
 * device-side flag and reported, as FE_ERR_RANGE, by the next sync or
 * device-to-host copy on that device. */
#ifndef FE_CUDA_BACKEND_H
#define FE_CUDA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backends/backend.h"

/* True when the CUDA runtime reports at least one device (never sets an error). */
bool fe_cuda_probe(void);

/* memory (cuda_device.cu) */
fe_status fe_cuda_alloc(fe_device dev, size_t nbytes, void **out);
void fe_cuda_free(fe_device dev, void *p, size_t nbytes);
fe_status fe_cuda_memcpy(fe_device dev, void *dst, const void *src, size_t nbytes, int kind);
fe_status fe_cuda_sync(fe_device dev);
size_t fe_cuda_mem_current(fe_device dev);
size_t fe_cuda_mem_peak(fe_device dev);
void fe_cuda_mem_reset_peak(fe_device dev);

/* Allocator figures of one device: bytes asked for by live allocations (current,
 * peak), bytes obtained from cudaMalloc and still held (reserved, of which cached
 * are free for reuse), and counts of cudaMalloc calls and of cache hits. */
typedef struct fe_cuda_mem_stats {
    size_t current, peak, reserved, cached;
    uint64_t n_cuda_malloc, n_reused;
} fe_cuda_mem_stats;
/* Fill *out for device `index`; FE_ERR_DEVICE when it does not exist. */
fe_status fe_cuda_mem_stats_get(int index, fe_cuda_mem_stats *out);
/* Give every cached (free) block of device `index` back to the driver (synchronises). */
fe_status fe_cuda_empty_cache(int index);
/* Debugging aid: while on, every block the allocator hands out is first filled with
 * 0xFF bytes (NaN in every float dtype), so a kernel that leaves part of its output
 * unwritten shows up. Also switched on by the environment variable FE_CUDA_POISON=1. */
void fe_cuda_set_poison(bool on);
/* The compute stream (a cudaStream_t) of device `index`, for other CUDA modules that
 * must queue work in order with the backend's kernels; NULL with the error set when
 * the device does not exist. */
void *fe_cuda_stream(int index);

/* elementwise (cuda_elementwise.cu) */
fe_status fe_cuda_copy(fe_tensor *dst, const fe_tensor *src);
fe_status fe_cuda_fill(fe_tensor *t, double v);
fe_status fe_cuda_arange(fe_tensor *t, double start, double step);
fe_status fe_cuda_rand(fe_tensor *t, uint64_t seed, uint64_t block0, fe_rand_kind kind, double a,
                       double b);
fe_status fe_cuda_unary(fe_unary_op op, fe_tensor *out, const fe_tensor *a, double alpha,
                        double beta);
fe_status fe_cuda_binary(fe_binary_op op, fe_tensor *out, const fe_tensor *a, const fe_tensor *b,
                         double alpha);
fe_status fe_cuda_where(fe_tensor *out, const fe_tensor *cond, const fe_tensor *a,
                        const fe_tensor *b);

/* reductions (cuda_reduce.cu) and matrix products (cuda_matmul.cu) */
fe_status fe_cuda_reduce(fe_reduce_op op, fe_tensor *out, const fe_tensor *a);
fe_status fe_cuda_matmul(fe_tensor *out, const fe_tensor *a, const fe_tensor *b, double alpha,
                         const fe_tensor *c);
fe_status fe_cuda_linear_act(fe_tensor *out, fe_tensor *pre, const fe_tensor *x, const fe_tensor *w,
                             const fe_tensor *bias, int act, bool *done);

/* row kernels (cuda_nn.cu) */
fe_status fe_cuda_softmax(fe_tensor *y, const fe_tensor *x, bool log);
fe_status fe_cuda_softmax_backward(fe_tensor *gx, const fe_tensor *gy, const fe_tensor *y,
                                   bool log);
fe_status fe_cuda_rmsnorm(fe_tensor *y, fe_tensor *h, fe_tensor *rstd, const fe_tensor *x,
                          const fe_tensor *r, const fe_tensor *w, double eps);
fe_status fe_cuda_rmsnorm_backward(fe_tensor *gx, fe_tensor *gw, const fe_tensor *gy,
                                   const fe_tensor *x, const fe_tensor *w, const fe_tensor *rstd,
                                   const fe_tensor *gextra);
fe_status fe_cuda_layernorm(fe_tensor *y, fe_tensor *mean, fe_tensor *rstd, const fe_tensor *x,
                            const fe_tensor *w, const fe_tensor *b, double eps);
fe_status fe_cuda_layernorm_backward(fe_tensor *gx, fe_tensor *gw, fe_tensor *gb,
                                     const fe_tensor *gy, const fe_tensor *x, const fe_tensor *w,
                                     const fe_tensor *mean, const fe_tensor *rstd);
fe_status fe_cuda_rope(fe_tensor *out, const fe_tensor *x, const fe_tensor *inv_freq, int seq_dim,
                       int64_t pos0, int sign);
fe_status fe_cuda_embedding(fe_tensor *out, const fe_tensor *w, const fe_tensor *idx);
fe_status fe_cuda_embedding_backward(fe_tensor *gw, const fe_tensor *gout, const fe_tensor *idx);
fe_status fe_cuda_cross_entropy(fe_tensor *loss, const fe_tensor *logits, const fe_tensor *targets,
                                int64_t ignore);
fe_status fe_cuda_cross_entropy_backward(fe_tensor *glogits, const fe_tensor *gloss,
                                         const fe_tensor *logits, const fe_tensor *targets,
                                         int64_t ignore);
fe_status fe_cuda_silu_gate(fe_tensor *out, const fe_tensor *a, const fe_tensor *b);
fe_status fe_cuda_silu_gate_backward(fe_tensor *ga, fe_tensor *gb, const fe_tensor *g,
                                     const fe_tensor *a, const fe_tensor *b);

/* multi-tensor optimizer kernels (cuda_optim.cu); see fe_backend.adamw and the others */
fe_status fe_cuda_adamw(int n, fe_tensor *const *p, const fe_tensor *const *g, fe_tensor *const *m,
                        fe_tensor *const *v, const fe_adamw_args *a);
fe_status fe_cuda_grad_norm_sq(fe_tensor *out, int n, const fe_tensor *const *g,
                               double scale);
fe_status fe_cuda_scale_multi(int n, fe_tensor *const *t, const fe_tensor *s);

#ifdef __cplusplus
}
#endif
#endif
