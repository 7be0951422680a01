/* ferric checkpoints: the whole training state, saved atomically and resumed exactly. */
#ifndef FERRIC_CHECKPOINT_H
#define FERRIC_CHECKPOINT_H

#include "ferric/data.h"
#include "ferric/nn.h"
#include "ferric/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a training run consists of. Any pointer but model/master/opt may be NULL. */
typedef struct fe_train_state {
    fe_llama *model;         /* its config is recorded and checked on load */
    fe_params *master;       /* the weights the optimizer updates (f32 masters under AMP) */
    fe_optimizer *opt;
    fe_grad_scaler *scaler;
    fe_loader *train_loader; /* its position: resumed runs see the same batches */
    int64_t step;            /* optimizer steps taken */
} fe_train_state;

/* Save into run_dir/checkpoint/: model.safetensors (master weights, Hugging Face names),
 * optimizer.safetensors (optimizer moments) and state.json (step, optimizer and loss
 * scaler scalars, RNG and data-loader positions, model config). The folder is built
 * beside the old one and swapped in by renames, so a kill at any moment leaves the
 * previous checkpoint whole. */
fe_status fe_train_checkpoint_save(const char *run_dir, const fe_train_state *s);
/* Restore a state saved by fe_train_checkpoint_save into the objects of s (made with
 * the same config); sets s->step. FE_ERR_IO when there is none, FE_ERR_FORMAT when a
 * file is truncated, corrupted or does not match the model. */
fe_status fe_train_checkpoint_load(const char *run_dir, fe_train_state *s);

#ifdef __cplusplus
}
#endif
#endif
