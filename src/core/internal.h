/* Internals shared by the core, the ops, autograd and the backends. Not installed. */
#ifndef FE_CORE_INTERNAL_H
#define FE_CORE_INTERNAL_H

#include "ferric/autograd.h"
#include "ferric/core.h"
#include "ferric/ops.h"

#include <stdlib.h>
#include <string.h>

typedef struct fe_storage {
    void *data;
    size_t nbytes;
    fe_device dev;
    int refcnt;
    bool borrowed; /* data is not ours to free (a memory-mapped file, say) */
} fe_storage;

typedef struct fe_node fe_node;

struct fe_tensor {
    int refcnt;
    fe_dtype dtype;
    int ndim;
    int64_t shape[FE_MAX_DIMS];
    int64_t stride[FE_MAX_DIMS]; /* elements */
    int64_t offset;              /* elements from storage start */
    fe_storage *st;
    bool requires_grad;
    fe_tensor *grad;    /* accumulated gradient of a leaf, owned */
    fe_node *node;      /* the op that produced this tensor, owned; NULL for leaves */
    fe_tensor *bw_grad; /* gradient being gathered during a backward pass */
    int bw_mark;        /* visit mark of the backward pass */
    fe_scope *scope;    /* the scope that owns this tensor's first reference, or NULL */
    int64_t scope_idx;  /* its slot in the scope's list */
};

/* Backward rule: given the output and its gradient, write the gradient of each
 * input that needs one into gin[i] (leave NULL for the others). Runs with the
 * tape off, in the caller's scope. */
typedef fe_status (*fe_backward_fn)(fe_node *n, fe_tensor *out, fe_tensor *gout, fe_tensor **gin);

#define FE_NODE_MAX_IN 4
#define FE_NODE_MAX_SAVED 4

struct fe_node {
    const char *name;
    fe_backward_fn backward;
    int n_in;
    fe_tensor *in[FE_NODE_MAX_IN];       /* references held */
    fe_tensor *saved[FE_NODE_MAX_SAVED]; /* references held */
    double f[4];
    int64_t i[FE_MAX_DIMS + 2];
    void *ctx; /* op-specific; freed with ctx_free */
    void (*ctx_free)(void *ctx);
    bool spent; /* a backward pass ran through it and let go of in[] and saved[] */
};

/* ---- tensors (tensor.c) ------------------------------------------------- */
/* A new contiguous tensor with fresh storage, registered in the current scope. */
fe_tensor *fe__alloc(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev);
/* A new tensor header viewing `base`'s storage with the given layout. */
fe_tensor *fe__view(const fe_tensor *base, int ndim, const int64_t *shape, const int64_t *stride,
                    int64_t offset);
/* A tensor header around storage that already exists (takes one storage reference). */
fe_tensor *fe__wrap(fe_storage *st, fe_dtype dt, int ndim, const int64_t *shape);
void fe__retain(fe_tensor *t);
void fe__release(fe_tensor *t);
/* Pointer to element 0 of t (storage data + offset). */
void *fe__ptr(const fe_tensor *t);
void fe__contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);
int64_t fe__numel_of(int ndim, const int64_t *shape);
/* Validate a shape: 0 <= ndim <= 8 and no negative sizes. */
fe_status fe__check_shape(int ndim, const int64_t *shape);
/* Normalise a dim index into [0, ndim); sets an error and returns -1 when out of range. */
int fe__norm_dim(int d, int ndim, const char *op);
bool fe__same_shape(const fe_tensor *a, const fe_tensor *b);
/* True when a and b live on the same device (type and index). */
bool fe__same_device(const fe_tensor *a, const fe_tensor *b);
/* Suspend / resume the current scope (allocations go unowned while suspended). */
fe_scope *fe__scope_suspend(void);
void fe__scope_resume(fe_scope *s);

/* ---- errors -------------------------------------------------------------- */
/* Returns true (and sets an argument error the first time) when any input is NULL. */
bool fe__any_null(const char *op, int n, ...);

/* ---- float conversions (dtype.c) ---------------------------------------- */
uint16_t fe__f32_to_bf16(float f);
float fe__bf16_to_f32(uint16_t h);
uint16_t fe__f32_to_f16(float f);
float fe__f16_to_f32(uint16_t h);
/* Read / write element i of a buffer of dtype dt as a double. */
double fe__load(const void *p, fe_dtype dt, int64_t i);
void fe__store(void *p, fe_dtype dt, int64_t i, double v);

/* ---- rng (rng.c) --------------------------------------------------------- */
/* Philox4x32-10 applied to counter (ctr, 0) with key from seed: 4 uint32 outputs. */
void fe__philox(uint64_t seed, uint64_t ctr, uint32_t out[4]);
/* Reserve `n` numbers from the global generator; returns the starting block offset. */
uint64_t fe__rng_reserve(int64_t n, uint64_t *seed);
/* The k-th number of the stream as uniform in [0,1) (24-bit) and a standard normal. */
double fe__rng_uniform(uint64_t seed, uint64_t block0, int64_t k);
double fe__rng_normal(uint64_t seed, uint64_t block0, int64_t k);

/* ---- autograd (tape.c) --------------------------------------------------- */
/* True when an op with these inputs must record a node. */
bool fe__needs_grad(int n, fe_tensor *const *in);
/* Attach a new node to `out` with inputs `in` (references taken) and mark out as
 * requiring grad. Returns the node for the caller to fill (saved tensors, params). */
fe_node *fe__record(fe_tensor *out, const char *name, fe_backward_fn bw, int n,
                    fe_tensor *const *in);
/* Save a tensor on a node (takes a reference). */
void fe__save(fe_node *n, int slot, fe_tensor *t);
/* In a backward rule: the gradient gathered so far for input t (contiguous, of t's
 * dtype and shape), handed to the caller (who must release it) so that it can be added
 * in the same kernel that makes t's new gradient; NULL when there is none or it does
 * not fit. */
fe_tensor *fe__take_pending(fe_tensor *t);
/* Likewise, but only a gradient that nothing else can see (no other reference, scope or
 * view of its memory), so that the caller may add into it in place -- a GEMM with
 * beta = 1 (ops/matmul.c) -- and hand it back as t's gradient; NULL otherwise. */
fe_tensor *fe__take_pending_owned(fe_tensor *t);

/* ---- ops that write over an input's storage ------------------------------------ */
/* RoPE(x) written over x's memory (when contiguous; else as fe_rope), for callers that
 * never read x again: the tape keeps it only to route gradients (neither RoPE's backward
 * reads its values, nor do matmul's and reshape's, which produce it in the Llama block).
 * Saves one activation per use in training. */
fe_tensor *fe__rope_over(fe_tensor *x, fe_tensor *inv_freq, int seq_dim, int64_t pos0);
/* fe_rmsnorm_residual with h = x + r written over r's memory, likewise */
fe_status fe__rmsnorm_residual_over(fe_tensor *x, fe_tensor *r, fe_tensor *w, double eps,
                                    fe_tensor **h_out, fe_tensor **y_out);

/* ---- fused ops (ops/matmul.c) ---------------------------------------------------- */
/* x (..., in) @ w (out, in)^T + r with r (..., out) added by the GEMM itself (beta = 1)
 * when r is contiguous and of the result's shape and dtype (else added after): the
 * Llama block's down projection and last residual add in one kernel. */
fe_tensor *fe__linear_add(fe_tensor *x, fe_tensor *w, fe_tensor *r);

/* ---- broadcasting helpers (ops/broadcast.c) ------------------------------ */
/* The broadcast shape of a and b; false (with error set) when incompatible. */
bool fe__broadcast_shape(const fe_tensor *a, const fe_tensor *b, int *ndim, int64_t *shape,
                         const char *op);
/* A stride-0 view of t expanded to (ndim, shape) with no autograd (for kernels). */
fe_tensor *fe__expand_raw(const fe_tensor *t, int ndim, const int64_t *shape);
/* Sum g down to (ndim, shape), the inverse of broadcasting (tape off). */
fe_tensor *fe__sum_to(fe_tensor *g, int ndim, const int64_t *shape);

#endif
