/* Internals shared by the training files (src/train/): what fe_optimizer_update needs
 * from the optimizer, clipping, the loss scaler and mixed precision. Not installed. */
#ifndef FE_TRAIN_INTERNAL_H
#define FE_TRAIN_INTERNAL_H

#include "backends/backend.h"
#include "ferric/train.h"

/* ---- optimizer.c ---------------------------------------------------------------------- */

/* The tensors of one fused AdamW step: every parameter with a gradient, in registry order. */
typedef struct fe__adamw_plan {
    bool ok; /* the fused kernel applies (else the rest is empty) */
    int n;   /* parameters with a gradient */
    fe_tensor **p, **g, **m, **v;
    fe_tensor **copy;     /* n entries (NULL entries without copies) */
    double *wd;           /* weight decay of each (0 for no-decay tensors) */
    const fe_backend *be; /* the backend of their device (NULL when n is 0) */
} fe__adamw_plan;

/* Plan a fused AdamW step of o: the gradient of parameter i is read from
 * fe_grad(fe_params_at(grads, i)) (grads NULL: o's registry; else a registry with o's
 * order, such as the mixed-precision model), and copies, when not NULL, is a registry in
 * the same order whose tensors receive the updated parameters (cast). pl->ok is false when
 * the fused kernel does not apply (not AdamW, FE_FUSED_OPTIM=0, no backend kernel, mixed
 * devices, strided or mis-sized tensors). Error only on host OOM; free with _plan_free. */
fe_status fe__adamw_plan_make(fe_optimizer *o, fe_params *grads, fe_params *copies,
                              fe__adamw_plan *pl);
void fe__adamw_plan_free(fe__adamw_plan *pl);
/* Take the planned step (the step count goes up by one) with the multipliers of
 * fe_adamw_args: unscale (0 = none) and grad_scale (a device scalar, or NULL). */
fe_status fe__adamw_plan_run(fe_optimizer *o, const fe__adamw_plan *pl, double lr, double unscale,
                             const fe_tensor *grad_scale);
/* The registry the optimizer updates. */
fe_params *fe__optimizer_params(fe_optimizer *o);

/* ---- clip_grad.c ----------------------------------------------------------------------- */

/* min(1, max_norm / (norm + 1e-6)) as a 1-element tensor of norm's dtype and device,
 * computed on the device (the clip coefficient); NULL on error. */
fe_tensor *fe__clip_coef(fe_tensor *norm, double max_norm);

/* ---- grad_scaler.c --------------------------------------------------------------------- */

/* Make `flag` (an owned 1-element f32 tensor, 1 when an inf/NaN was seen) the overflow
 * flag that fe_grad_scaler_update reads, as fe_grad_scaler_unscale would have. */
void fe__grad_scaler_set_found_inf(fe_grad_scaler *s, fe_tensor *flag);

/* ---- amp.c ------------------------------------------------------------------------------ */

/* The model registry (the compute tensors) of a. */
fe_params *fe__amp_model(fe_amp *a);

#endif
