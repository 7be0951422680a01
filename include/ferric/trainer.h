/* ferric trainer: the whole Llama training loop (data, model, AdamW, LR schedule,
 * clipping, accumulation, mixed precision, validation, run log, checkpoints) behind
 * one object, so that `ferric train` and library users run the same code.
 *
 *   fe_trainer_options o = fe_trainer_defaults();
 *   o.data_path = "data/austen.txt", o.run_dir = "runs/mine", o.steps = 300;
 *   o.on_event = my_progress, o.user = &my_state;
 *   fe_trainer *t = fe_trainer_new(&o);
 *   if (!t || fe_trainer_run(t)) fprintf(stderr, "%s\n", fe_last_error());
 *   fe_trainer_free(t);
 */
#ifndef FERRIC_TRAINER_H
#define FERRIC_TRAINER_H

#include "ferric/core.h"
#include "ferric/data.h"
#include "ferric/nn.h"
#include "ferric/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fe_trainer_event_kind {
    FE_TRAINER_STEP, /* a logged training step: loss, lr, grad_norm, tokens_per_s are set */
    FE_TRAINER_EVAL, /* a validation pass ended: val_loss is set */
    FE_TRAINER_CKPT, /* a checkpoint was saved at `step` */
} fe_trainer_event_kind;

/* What the progress callback receives. Values that do not apply to the kind are NaN. */
typedef struct fe_trainer_event {
    fe_trainer_event_kind kind;
    int64_t step, total_steps; /* optimizer steps done / to do in all */
    double loss;               /* mean training loss of the step (over its micro-batches) */
    double lr, grad_norm;      /* learning rate used, global grad norm before clipping */
    double tokens_per_s;       /* training tokens per second since the previous logged step */
    double elapsed_s, eta_s;   /* since fe_trainer_new / estimated to the end */
    double val_loss;           /* FE_TRAINER_EVAL: mean validation loss */
} fe_trainer_event;

typedef void (*fe_trainer_callback)(const fe_trainer_event *ev, void *user);

typedef struct fe_trainer_options {
    /* the model: vocab_size, dim, n_layers, n_heads, n_kv_heads, ffn_dim, rope_theta,
     * tie_embeddings...; max_seq is set to seq */
    fe_llama_config model;
    /* data: `dataset` (borrowed; it must outlive the trainer) or else `data_path` (a text
     * file of byte tokens or a .bin token shard), or `synthetic` random tokens (no
     * validation then). The last val_frac of the tokens are held out. */
    fe_dataset *dataset;
    const char *data_path;
    bool synthetic;
    double val_frac;
    /* batch shape: `accum` micro-batches of (batch, seq) tokens per optimizer step */
    int64_t batch, seq, accum, steps;
    /* optimizer: AdamW (beta1 0.9, beta2 0.95, eps 1e-8), LR schedule, clip (0 = off) */
    fe_lr_kind schedule;
    double lr, min_lr, weight_decay, clip;
    int64_t warmup;
    /* f32 (default), f64 (CPU: everything in f64), bf16 or fp16 (f32 master weights,
     * fp16 with a dynamic loss scaler) */
    fe_dtype precision;
    bool grad_checkpointing;
    /* cadences in optimizer steps: validation (eval_batches batches; 0 = only at the
     * end), checkpoint (0 = only at the end), loss read back (1 = every step) */
    int64_t eval_every, eval_batches, ckpt_every, log_every;
    /* run folder: metrics.jsonl, loss.svg, checkpoint/ (NULL: no log, no checkpoints) */
    const char *run_dir;
    bool resume; /* continue from run_dir's last checkpoint */
    fe_device device;
    uint64_t seed;
    /* benchmark mode: no validation, log or checkpoint; time the steps after 3 warm-up steps */
    bool bench;
    fe_trainer_callback on_event; /* may be NULL */
    void *user;
} fe_trainer_options;

/* What a run measured (fe_trainer_stats). */
typedef struct fe_trainer_stats {
    int64_t params;          /* parameters of the model */
    int64_t matmul_params;   /* parameters of the weight matrices, embedding table excluded */
    int64_t first_step;      /* step the run started at (> 0 when resumed) */
    double train_tokens, val_tokens; /* tokens of the training / validation data (0 if synthetic) */
    double unigram_baseline; /* entropy (nats) of the training tokens' frequencies; NaN if synthetic */
    double last_val_loss;    /* NaN before the first validation */
    double elapsed_s;        /* seconds spent in fe_trainer_step so far (validation included) */
    double step_ms, tokens_per_s; /* bench mode: per timed step; else over the training part of all steps */
    int64_t peak_bytes;      /* the device's peak memory */
} fe_trainer_stats;

/* Defaults: the 'austen' job (dim 192, 4 layers, 6 heads, ffn 512, vocab 256, seq 128,
 * batch 16, 300 steps, lr 3e-3 warmup-cosine to lr/10, 5% warmup, wd 0.1, clip 1,
 * f32 on CPU, eval every 50 steps over 8 batches, checkpoint every 100, seed 1). */
fe_trainer_options fe_trainer_defaults(void);

typedef struct fe_trainer fe_trainer;
/* Build data, model, optimizer and run folder from o (copied; strings must outlive the
 * trainer) and, with o->resume, restore the checkpoint. NULL with FE_ERR_ARG (a bad
 * option, named), FE_ERR_IO/FE_ERR_FORMAT (data or checkpoint) or FE_ERR_OOM. */
fe_trainer *fe_trainer_new(const fe_trainer_options *o);
/* One optimizer step (accum micro-batches), then the validation / checkpoint / log that
 * fall due. FE_ERR_STATE when all steps are done. */
fe_status fe_trainer_step(fe_trainer *t);
/* Steps until o.steps are done. */
fe_status fe_trainer_run(fe_trainer *t);
/* Mean validation loss over n batches from the start of the validation data (no tape).
 * NaN with an error set when there is no validation data. */
double fe_trainer_evaluate(fe_trainer *t, int64_t n);
/* Save a checkpoint into run_dir now. */
fe_status fe_trainer_save(fe_trainer *t);
/* Optimizer steps done so far. */
int64_t fe_trainer_steps_done(const fe_trainer *t);
/* The model (its weights are the trained ones; in bf16/fp16 runs the compute copies). */
fe_llama *fe_trainer_model(fe_trainer *t);
/* The weights the optimizer updates (the model's own, or the f32 masters under bf16/fp16). */
fe_params *fe_trainer_params(fe_trainer *t);
/* The effective options (defaults filled in). */
const fe_trainer_options *fe_trainer_options_of(const fe_trainer *t);
fe_trainer_stats fe_trainer_stats_of(const fe_trainer *t);
/* Release everything (the borrowed dataset stays). NULL is fine. */
void fe_trainer_free(fe_trainer *t);

#ifdef __cplusplus
}
#endif
#endif
