/* Gradient checkpointing: forget a function's intermediates in forward and
 * recompute them, with the same random numbers, during backward. */
#include "backends/backend.h"

typedef struct ckpt_ctx {
    fe_checkpoint_fn fn;
    void *ctx;
    fe_rng_state rng;
} ckpt_ctx;

static fe_status ckpt_backward(fe_node *n, fe_tensor *out, fe_tensor *gout, fe_tensor **gin) {
    (void)out;
    ckpt_ctx *c = n->ctx;
    fe_tensor *d[FE_NODE_MAX_IN] = {0};
    for (int i = 0; i < n->n_in; i++) {
        d[i] = fe_detach(n->in[i]);
        if (!d[i]) return fe_last_status();
        if (n->in[i]->requires_grad) fe_set_requires_grad(d[i], true);
    }
    fe_rng_state now = fe_rng_get_state();
    fe_rng_set_state(c->rng);
    bool prev = fe_set_grad_enabled(true);
    fe_tensor *o = c->fn(c->ctx, d, n->n_in);
    fe_status st = o ? FE_OK : fe_last_status();
    if (!st && !o->requires_grad)
        st = fe_set_error(FE_ERR_STATE, "checkpoint: the recomputed output does not require grad");
    if (!st) st = fe_backward(o, gout);
    fe_set_grad_enabled(prev);
    fe_rng_set_state(now);
    /* the detached inputs are leaves of the recomputation: their .grad is the answer */
    for (int i = 0; i < n->n_in && !st; i++) gin[i] = d[i]->grad;
    return st;
}

fe_tensor *fe_checkpoint(fe_checkpoint_fn fn, void *ctx, fe_tensor *const *inputs, int n) {
    if (!fn || n < 0 || n > FE_NODE_MAX_IN || (n > 0 && !inputs)) {
        fe_set_error(FE_ERR_ARG, "fe_checkpoint: needs a function and 0..%d inputs", FE_NODE_MAX_IN);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (fe__any_null("fe_checkpoint", 1, inputs[i])) return NULL;
    fe_rng_state rng = fe_rng_get_state();
    if (!fe_grad_enabled()) return fn(ctx, inputs, n);
    bool prev = fe_set_grad_enabled(false);
    fe_tensor *out = fn(ctx, inputs, n);
    fe_set_grad_enabled(prev);
    if (!out) return NULL;
    ckpt_ctx *c = malloc(sizeof *c);
    fe_node *node = c ? fe__record(out, "checkpoint", ckpt_backward, n, inputs) : NULL;
    if (!node) {
        free(c);
        if (!c) fe_set_error(FE_ERR_OOM, "fe_checkpoint: out of host memory");
        fe_free(out);
        return NULL;
    }
    *c = (ckpt_ctx){fn, ctx, rng};
    node->ctx = c;
    node->ctx_free = free;
    return out;
}
