/* ferric train: optimizers, learning-rate schedules, gradient clipping and
 * accumulation, mixed precision (master weights and a dynamic loss scaler).
 *
 * Everything here works on a parameter registry (fe_params) and the .grad of its
 * tensors, with device ops only: nothing reads a value back to the host except
 * fe_grad_scaler_update, whose job is to decide whether a step happens.
 *
 * A step with every piece:
 *
 *   loss = fe_llama_loss(fe_llama_forward(model, x), y);
 *   fe_backward(fe_grad_scaler_scale(sc, fe_grad_accum_loss(loss, k)), NULL); // k times
 *   fe_amp_grads_to_master(amp);                     // compute grads -> f32 master .grad
 *   fe_grad_scaler_unscale(sc, fe_amp_master(amp));  // grads /= scale, inf/NaN check
 *   fe_tensor *norm = fe_clip_grad_norm(fe_amp_master(amp), 1.0);
 *   bool ok; fe_grad_scaler_update(sc, &ok);
 *   if (ok) fe_optimizer_step(opt, fe_lr_at(&sched, step));
 *   fe_params_zero_grad(fe_amp_master(amp));         // (and the model's grads)
 *   fe_amp_to_compute(amp);                          // master -> bf16/fp16 weights
 *
 * Everything after the backward passes is also one call, fe_optimizer_update, which
 * gives the same results with far fewer passes over memory (see there).
 */
#ifndef FERRIC_TRAIN_H
#define FERRIC_TRAIN_H

#include "ferric/core.h"
#include "ferric/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One named piece of state, for checkpoint writers: a tensor (owned by its holder;
 * copy into it to restore) or, when tensor is NULL, a scalar value. */
typedef struct fe_state_item {
    const char *name;
    fe_tensor *tensor;
    double value;
} fe_state_item;

/* ---- optimizers ------------------------------------------------------------------- */

typedef struct fe_optimizer fe_optimizer;

/* SGD: g = grad + wd*p (wd only on params not flagged no-decay); buf = momentum*buf + g;
 * p -= lr * buf (buf = g when momentum is 0). */
typedef struct fe_sgd_config {
    double momentum, weight_decay;
} fe_sgd_config;
/* AdamW (decoupled decay, bias-corrected): p *= 1 - lr*wd (unless no-decay);
 * m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; p -= lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps). */
typedef struct fe_adamw_config {
    double beta1, beta2, eps, weight_decay;
} fe_adamw_config;
/* The PyTorch defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01. */
fe_adamw_config fe_adamw_defaults(void);

/* An optimizer over the float tensors of p (p must outlive it). State tensors
 * (momentum buffers; AdamW's m and v) are created at once as zeros, in f32 (f64 for
 * f64 parameters), on each parameter's device. cfg NULL: momentum 0 / the defaults. */
fe_optimizer *fe_sgd_new(fe_params *p, const fe_sgd_config *cfg);
fe_optimizer *fe_adamw_new(fe_params *p, const fe_adamw_config *cfg);
void fe_optimizer_free(fe_optimizer *o);
/* One update of every parameter that has a .grad, with learning rate lr (parameters
 * without a gradient are left alone). Increments the step count. */
fe_status fe_optimizer_step(fe_optimizer *o, double lr);
/* Steps taken so far. */
int64_t fe_optimizer_steps(const fe_optimizer *o);
/* The optimizer's state: "step" (a scalar), then per parameter "<name>.exp_avg" and
 * "<name>.exp_avg_sq" (AdamW) or "<name>.momentum_buffer" (SGD with momentum). */
int fe_optimizer_state_count(const fe_optimizer *o);
fe_status fe_optimizer_state_item(const fe_optimizer *o, int i, fe_state_item *out);
/* Restore a scalar state item ("step") by name; FE_ERR_ARG for an unknown name. */
fe_status fe_optimizer_set_scalar(fe_optimizer *o, const char *name, double value);

/* ---- learning-rate schedules --------------------------------------------------------- */

typedef enum fe_lr_kind {
    FE_LR_CONSTANT,      /* lr */
    FE_LR_LINEAR_WARMUP, /* lr * min(1, (step+1)/warmup_steps) */
    FE_LR_COSINE,        /* min_lr + (lr-min_lr)/2 * (1 + cos(pi * min(step, total)/total)) */
    FE_LR_WARMUP_COSINE, /* linear warmup, then cosine from lr to min_lr over the remaining
                            total_steps - warmup_steps steps, min_lr afterwards */
} fe_lr_kind;

typedef struct fe_lr_schedule {
    fe_lr_kind kind;
    double lr, min_lr;
    int64_t warmup_steps, total_steps;
} fe_lr_schedule;

/* The learning rate at 0-based step `step` (a pure function). */
double fe_lr_at(const fe_lr_schedule *s, int64_t step);

/* ---- gradients ------------------------------------------------------------------------ */

/* Global L2 norm over every .grad of p (a 1-element tensor on the device, f32, or f64
 * when the gradients are f64); when max_norm > 0, scale the grads by
 * min(1, max_norm / (norm + 1e-6)) in place, as torch.nn.utils.clip_grad_norm_ does.
 * The caller owns the result (or its scope does). NULL on error. */
fe_tensor *fe_clip_grad_norm(fe_params *p, double max_norm);

/* Gradient accumulation over k micro-batches: backward on loss/k each time (grads add
 * up in .grad), then one optimizer step. Returns loss * (1/k) on the tape. */
fe_tensor *fe_grad_accum_loss(fe_tensor *loss, int k);

/* ---- mixed precision: f32 master weights, bf16/fp16 compute weights ----------------------- */

typedef struct fe_amp fe_amp;
/* Move the f32 tensors of `model` (its registry, created in f32) into a new master
 * registry and put compute-dtype copies in their place in `model`. Forward and
 * backward then run in compute_dt; the optimizer runs on fe_amp_master. */
fe_amp *fe_amp_new(fe_params *model, fe_dtype compute_dt);
/* Give the master tensors back to the model registry (compute copies freed), free amp. */
void fe_amp_free(fe_amp *a);
/* The f32 master registry (owned by amp). */
fe_params *fe_amp_master(fe_amp *a);
/* Copy (cast) every master tensor into its compute tensor. */
fe_status fe_amp_to_compute(fe_amp *a);
/* Set each master .grad to the f32 cast of its compute .grad (overwriting), then drop
 * the compute grads. A compute tensor without a grad leaves the master grad absent. */
fe_status fe_amp_grads_to_master(fe_amp *a);

/* ---- dynamic loss scaling (fp16) --------------------------------------------------------- */

typedef struct fe_grad_scaler_config {
    double init_scale;       /* 65536 */
    double growth_factor;    /* 2 */
    double backoff_factor;   /* 0.5 */
    int64_t growth_interval; /* 2000 clean steps before growing */
} fe_grad_scaler_config;
fe_grad_scaler_config fe_grad_scaler_defaults(void);

typedef struct fe_grad_scaler fe_grad_scaler;
/* cfg NULL: the defaults. */
fe_grad_scaler *fe_grad_scaler_new(const fe_grad_scaler_config *cfg);
void fe_grad_scaler_free(fe_grad_scaler *s);
/* loss * scale, recorded on the tape (backward from it). */
fe_tensor *fe_grad_scaler_scale(fe_grad_scaler *s, fe_tensor *loss);
/* Divide every .grad of p by the scale in place and record, on the device, whether
 * any of them holds an inf or NaN. Call once per step, before clipping. */
fe_status fe_grad_scaler_unscale(fe_grad_scaler *s, fe_params *p);
/* The overflow flag of the last unscale: a 1-element f32 tensor, 1 when an inf/NaN was
 * seen (NULL before the first unscale). Reading it is the caller's choice. */
fe_tensor *fe_grad_scaler_found_inf(const fe_grad_scaler *s);
/* End the step: read the flag (this synchronises); on overflow set *step_ok false and
 * multiply the scale by backoff_factor; else *step_ok true and, after growth_interval
 * clean steps in a row, multiply it by growth_factor. FE_ERR_STATE without an unscale. */
fe_status fe_grad_scaler_update(fe_grad_scaler *s, bool *step_ok);
double fe_grad_scaler_get_scale(const fe_grad_scaler *s);
/* State: "scale" and "growth_tracker" (clean steps since the last change), both scalars. */
int fe_grad_scaler_state_count(const fe_grad_scaler *s);
fe_status fe_grad_scaler_state_item(const fe_grad_scaler *s, int i, fe_state_item *out);
fe_status fe_grad_scaler_set_scalar(fe_grad_scaler *s, const char *name, double value);

/* ---- the whole update after backward ------------------------------------------------------ */

typedef struct fe_update_config {
    double lr;
    double max_norm;        /* clip the global gradient norm to this; 0: no clipping */
    fe_amp *amp;            /* mixed precision (the optimizer is over fe_amp_master), or NULL */
    fe_grad_scaler *scaler; /* fp16 loss scaling, or NULL */
} fe_update_config;

/* The rest of a training step once backward has left the gradients (P is the
 * optimizer's registry), with exactly the results of
 *   if (amp) fe_amp_grads_to_master(amp);
 *   if (scaler) fe_grad_scaler_unscale(scaler, P);
 *   if (max_norm > 0) *norm = fe_clip_grad_norm(P, max_norm);
 *   ok = true; if (scaler) fe_grad_scaler_update(scaler, &ok);   (reads the flag back)
 *   if (ok) fe_optimizer_step(o, lr);
 *   zero the grads of P (and of the model's compute tensors); if (amp) fe_amp_to_compute(amp);
 * For AdamW on a backend with the multi-tensor kernels it makes two passes over the
 * gradients instead: one for the norm and the overflow check, and the AdamW pass, which
 * reads the bf16/fp16 model gradients as they are (no f32 master gradients), applies
 * the unscale and clip factors on the fly and writes the compute weights. *norm (may be
 * NULL) receives the norm (caller's scope) when max_norm > 0, else NULL; *info (may be
 * NULL) whether the step was taken and which way. The gradients are zeroed also on error. */
typedef struct fe_update_info {
    bool stepped; /* false when the loss scaler skipped the step (inf/NaN gradients) */
    bool fused;   /* the fused kernels did it (else the sequence above, call by call) */
} fe_update_info;
fe_status fe_optimizer_update(fe_optimizer *o, const fe_update_config *u, fe_tensor **norm,
                              fe_update_info *info);

#ifdef __cplusplus
}
#endif
#endif
