/* The tape: each op that sees an input requiring grad attaches a node to its
 * output; fe_backward walks the nodes in reverse topological order. */
#include "backends/backend.h"

#include <inttypes.h>

static _Thread_local bool g_grad_off = false;
static int g_pass = 0;

bool fe_grad_enabled(void) { return !g_grad_off; }

bool fe_set_grad_enabled(bool on) {
    bool prev = !g_grad_off;
    g_grad_off = !on;
    return prev;
}

fe_status fe_set_requires_grad(fe_tensor *t, bool on) {
    if (fe__any_null("fe_set_requires_grad", 1, t)) return FE_ERR_ARG;
    if (on && !fe_dtype_is_float(t->dtype))
        return fe_set_error(FE_ERR_DTYPE, "fe_set_requires_grad: %s tensors cannot require grad",
                            fe_dtype_name(t->dtype));
    if (t->node && !on)
        return fe_set_error(FE_ERR_STATE, "fe_set_requires_grad: only leaves can be switched off; "
                                          "use fe_detach");
    t->requires_grad = on;
    return FE_OK;
}

bool fe_requires_grad(const fe_tensor *t) { return t && t->requires_grad; }

fe_tensor *fe_grad(const fe_tensor *t) { return t ? t->grad : NULL; }

void fe_zero_grad(fe_tensor *t) {
    if (t && t->grad) {
        fe__release(t->grad);
        t->grad = NULL;
    }
}

bool fe__needs_grad(int n, fe_tensor *const *in) {
    if (g_grad_off) return false;
    for (int i = 0; i < n; i++)
        if (in[i] && in[i]->requires_grad) return true;
    return false;
}

fe_node *fe__record(fe_tensor *out, const char *name, fe_backward_fn bw, int n,
                    fe_tensor *const *in) {
    fe_node *node = calloc(1, sizeof *node);
    if (!node) {
        fe_set_error(FE_ERR_OOM, "%s: out of host memory for a tape node", name);
        return NULL;
    }
    node->name = name;
    node->backward = bw;
    node->n_in = n;
    for (int i = 0; i < n; i++) {
        node->in[i] = in[i];
        if (in[i]) fe__retain(in[i]);
    }
    out->node = node;
    out->requires_grad = true;
    return node;
}

void fe__save(fe_node *n, int slot, fe_tensor *t) {
    if (!t) return;
    fe__retain(t);
    if (n->saved[slot]) fe__release(n->saved[slot]);
    n->saved[slot] = t;
}

fe_tensor *fe__take_pending(fe_tensor *t) {
    fe_tensor *g = t ? t->bw_grad : NULL;
    if (!g || g->dtype != t->dtype || !fe__same_shape(g, t) || !fe_is_contiguous(g)) return NULL;
    t->bw_grad = NULL;
    return g;
}

/* True when nothing but the engine can see g, a gradient it holds, or g's memory: the
 * engine's is the only reference, no scope owns it, no other header shares its storage
 * (which it owns), and it is a plain tensor (no node, no gradient of its own). A view,
 * a tensor saved on a node, one tensor handed to two inputs, the caller's gout all fail. */
static bool unshared(const fe_tensor *g) {
    const fe_storage *st = g->st;
    return g->refcnt == 1 && !g->scope && st->refcnt == 1 && !st->borrowed && !g->node &&
           !g->requires_grad && !g->grad && !g->bw_grad;
}

fe_tensor *fe__take_pending_owned(fe_tensor *t) {
    fe_tensor *g = t ? t->bw_grad : NULL;
    if (!g || !unshared(g) || !fe__same_device(g, t)) return NULL;
    return fe__take_pending(t);
}

fe_tensor *fe_detach(fe_tensor *a) {
    if (fe__any_null("fe_detach", 1, a)) return NULL;
    return fe__view(a, a->ndim, a->shape, a->stride, a->offset);
}

/* True when g, a gradient the engine holds, can become leaf's .grad as it is: nothing
 * else can see it (unshared) and it is laid out as the leaf's own gradient would be
 * (dtype, device, contiguous from offset 0, its storage exactly that big). Anything
 * shared is copied instead. */
static bool adoptable(const fe_tensor *leaf, const fe_tensor *g) {
    const fe_storage *st = g->st;
    return unshared(g) && g->dtype == leaf->dtype && fe__same_device(g, leaf) && g->offset == 0 &&
           fe_is_contiguous(g) && st->nbytes == (size_t)fe_numel(g) * fe_dtype_size(g->dtype);
}

/* Add g into a leaf's persistent .grad. The first gradient is adopted as .grad when
 * may_adopt and nothing else can see it (saves an allocation and a copy per leaf and
 * step); otherwise it is copied into a fresh tensor. */
static fe_status accumulate_leaf(fe_tensor *leaf, fe_tensor *g, bool may_adopt) {
    if (!fe__same_shape(leaf, g)) {
        char a[96], b[96];
        return fe_set_error(FE_ERR_SHAPE, "backward: gradient %s does not match its tensor %s",
                            fe_shape_str(g, a, sizeof a), fe_shape_str(leaf, b, sizeof b));
    }
    if (leaf->grad) return fe_add_(leaf->grad, g, 1.0);
    if (may_adopt && adoptable(leaf, g)) {
        fe__retain(g); /* the leaf's reference; the engine drops its own after this call */
        leaf->grad = g;
        return FE_OK;
    }
    fe_scope *s = fe__scope_suspend();
    leaf->grad = fe__alloc(leaf->ndim, leaf->shape, leaf->dtype, leaf->st->dev);
    fe_status st = leaf->grad ? fe_copy_(leaf->grad, g) : fe_last_status();
    fe__scope_resume(s);
    return st;
}

/* Add g (engine-owned reference) into a non-leaf's pending gradient. */
static fe_status accumulate_pending(fe_tensor *t, fe_tensor *g) {
    if (!t->bw_grad) {
        fe__retain(g);
        t->bw_grad = g;
        return FE_OK;
    }
    fe_scope *s = fe_scope_begin();
    fe_tensor *sum = fe_add(t->bw_grad, g);
    if (sum) fe__retain(sum);
    fe_scope_end(s);
    if (!sum) return fe_last_status();
    fe__release(t->bw_grad);
    t->bw_grad = sum;
    return FE_OK;
}

/* Let go of what a node holds for its backward; a later backward through it fails. */
static void spend(fe_node *n) {
    for (int i = 0; i < n->n_in; i++)
        if (n->in[i]) fe__release(n->in[i]), n->in[i] = NULL;
    for (int i = 0; i < FE_NODE_MAX_SAVED; i++)
        if (n->saved[i]) fe__release(n->saved[i]), n->saved[i] = NULL;
    n->spent = true;
}

typedef struct frame {
    fe_tensor *t;
    int next;
} frame;

/* Post-order of the non-leaf tensors reachable from out (children first). */
static fe_tensor **topo_order(fe_tensor *out, int64_t *count) {
    int mark = __atomic_add_fetch(&g_pass, 1, __ATOMIC_RELAXED);
    int64_t cap = 64, n = 0, depth = 0, dcap = 64;
    fe_tensor **order = malloc((size_t)cap * sizeof *order);
    frame *stack = malloc((size_t)dcap * sizeof *stack);
    if (!order || !stack) goto oom;
    out->bw_mark = mark;
    stack[depth++] = (frame){out, 0};
    while (depth) {
        frame *f = &stack[depth - 1];
        fe_node *node = f->t->node;
        if (node && f->next < node->n_in) {
            fe_tensor *c = node->in[f->next++];
            if (c && c->node && c->requires_grad && c->bw_mark != mark) {
                c->bw_mark = mark;
                if (depth == dcap) {
                    frame *ns = realloc(stack, (size_t)(dcap *= 2) * sizeof *stack);
                    if (!ns) goto oom;
                    stack = ns;
                }
                stack[depth++] = (frame){c, 0};
            }
        } else {
            if (n == cap) {
                fe_tensor **no = realloc(order, (size_t)(cap *= 2) * sizeof *order);
                if (!no) goto oom;
                order = no;
            }
            fe__retain(f->t); /* held until its node has run (inputs may be let go before) */
            order[n++] = f->t;
            depth--;
        }
    }
    free(stack);
    *count = n;
    return order;
oom:
    for (int64_t k = 0; order && k < n; k++)
        fe__release(order[k]); /* the references taken above */
    free(order);
    free(stack);
    fe_set_error(FE_ERR_OOM, "backward: out of host memory");
    return NULL;
}

fe_status fe_backward(fe_tensor *out, fe_tensor *gout) {
    if (fe__any_null("fe_backward", 1, out)) return FE_ERR_ARG;
    if (!out->requires_grad)
        return fe_set_error(FE_ERR_STATE,
                            "fe_backward: the tensor does not require grad (no input of its "
                            "ops required grad, or grad mode was off)");
    if (!gout && fe_numel(out) != 1)
        return fe_set_error(FE_ERR_SHAPE,
                            "fe_backward: a gradient is needed for a tensor of %" PRId64
                            " elements (only 1-element outputs get an implicit 1)",
                            fe_numel(out));
    if (gout && !fe__same_shape(gout, out)) {
        char a[96], b[96];
        return fe_set_error(FE_ERR_SHAPE, "fe_backward: gradient %s does not match output %s",
                            fe_shape_str(gout, a, sizeof a), fe_shape_str(out, b, sizeof b));
    }
    bool prev = fe_set_grad_enabled(false);
    fe_scope *scope = fe_scope_begin();
    fe_status st = FE_OK;
    fe_tensor *g0 = gout ? gout : fe_full(out->ndim, out->shape, 1.0, out->dtype, out->st->dev);
    if (!g0) st = fe_last_status();
    if (!st && !out->node) { /* a leaf: its gradient is gout itself (the caller's: copied) */
        st = accumulate_leaf(out, g0, false);
        fe_scope_end(scope);
        fe_set_grad_enabled(prev);
        return st;
    }
    int64_t n = 0;
    fe_tensor **order = st ? NULL : topo_order(out, &n);
    if (!st && !order) st = fe_last_status();
    if (!st) st = accumulate_pending(out, g0);
    for (int64_t k = n - 1; k >= 0; k--) {
        fe_tensor *t = order[k];
        fe_tensor *g = t->bw_grad;
        t->bw_grad = NULL;
        if (!g || st) {
            if (g) fe__release(g);
            fe__release(t);
            continue;
        }
        fe_node *node = t->node;
        if (node->spent) {
            fe__release(g);
            fe__release(t);
            st = fe_set_error(FE_ERR_STATE,
                              "backward: the graph through %s was already used by a backward "
                              "pass, which let go of its saved tensors; run the forward again",
                              node->name);
            continue;
        }
        fe_tensor *gin[FE_NODE_MAX_IN] = {0};
        fe_scope *ns = fe_scope_begin();
        st = node->backward(node, t, g, gin);
        for (int i = 0; i < node->n_in; i++)
            if (gin[i]) fe__retain(gin[i]);
        fe_scope_end(ns);
        for (int i = 0; i < node->n_in; i++) {
            fe_tensor *in = node->in[i];
            if (!st && gin[i] && in && in->requires_grad)
                st = in->node ? accumulate_pending(in, gin[i]) : accumulate_leaf(in, gin[i], true);
            if (gin[i]) fe__release(gin[i]);
        }
        fe__release(g);
        if (st && fe_last_status() == FE_OK) fe_set_error(st, "backward of %s failed", node->name);
        /* every consumer of t has run: what t's node kept for the backward (inputs,
         * saved tensors) is no longer needed, so activations go as the pass moves on */
        spend(node);
        fe__release(t);
    }
    free(order);
    fe_scope_end(scope);
    fe_set_grad_enabled(prev);
    return st;
}
