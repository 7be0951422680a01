/* Gradient accumulation: backward adds into .grad, so k backward passes on loss/k
 * followed by one optimizer step equal one step on the mean over all k micro-batches
 * (when each micro-batch counts the same number of tokens). */
#include "ferric/ops.h"
#include "ferric/train.h"

fe_tensor *fe_grad_accum_loss(fe_tensor *loss, int k) {
    if (k < 1) {
        fe_set_error(FE_ERR_ARG, "grad_accum_loss: k must be >= 1, got %d", k);
        return NULL;
    }
    return fe_scale(loss, 1.0 / (double)k);
}
