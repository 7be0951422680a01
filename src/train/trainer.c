/* The training loop of a Llama model: data, model, AdamW, schedule, clipping,
 * accumulation, mixed precision, validation, run log and checkpoints. */
#include "ferric/trainer.h"
#include "ferric/fused_loss.h"
#include "ferric/autograd.h"
#include "ferric/checkpoint.h"
#include "ferric/ops.h"
#include "ferric/runlog.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_WARMUP 3

struct fe_trainer {
    fe_trainer_options o;
    fe_dataset *all, *train, *val; /* all is NULL when the caller lent the dataset */
    fe_loader *tl, *vl;
    fe_llama *model;
    fe_amp *amp;
    fe_params *master;
    fe_optimizer *opt;
    fe_grad_scaler *scaler;
    fe_lr_schedule sched;
    fe_runlog *log;
    fe_train_state ts;
    fe_trainer_stats stats;
    double t0, t_last, bench_t0, step_s, busy_s;
    int64_t last_logged;
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

fe_trainer_options fe_trainer_defaults(void) {
    fe_trainer_options o = {
        .model = {.vocab_size = 256, .dim = 192, .n_layers = 4, .n_heads = 6, .n_kv_heads = 6,
                  .ffn_dim = 512, .norm_eps = 1e-5, .rope_theta = 10000.0},
        .val_frac = 0.05,
        .batch = 16, .seq = 128, .accum = 1, .steps = 300,
        .schedule = FE_LR_WARMUP_COSINE, .lr = 3e-3, .min_lr = 3e-4, .weight_decay = 0.1, .clip = 1.0,
        .warmup = 15,
        .precision = FE_F32,
        .eval_every = 50, .eval_batches = 8, .ckpt_every = 100, .log_every = 1,
        .device = FE_DEVICE_CPU,
        .seed = 1,
    };
    return o;
}

/* Entropy (nats) of the token frequencies of ds: the loss of the best model that
 * ignores context. */
static double unigram_entropy(const fe_dataset *ds, int64_t vocab) {
    int64_t n = fe_dataset_len(ds), total = 0;
    int64_t *count = calloc((size_t)vocab, sizeof *count);
    int32_t *buf = malloc(65536 * sizeof *buf);
    double h = NAN;
    if (count && buf) {
        for (int64_t at = 0; at < n; at += 65536) {
            int64_t k = n - at < 65536 ? n - at : 65536;
            if (fe_dataset_read(ds, at, k, buf)) break;
            for (int64_t i = 0; i < k; i++)
                if (buf[i] >= 0 && buf[i] < vocab) count[buf[i]]++, total++;
        }
        h = 0;
        for (int64_t v = 0; v < vocab; v++)
            if (count[v]) h -= (double)count[v] / (double)total * log((double)count[v] / (double)total);
    }
    free(count), free(buf);
    return h;
}

static fe_status check_options(const fe_trainer_options *o) {
#define NEED(cond, ...) \
    if (!(cond)) return fe_set_error(FE_ERR_ARG, "trainer: " __VA_ARGS__)
    NEED(o->batch > 0 && o->seq > 0 && o->accum > 0, "batch, seq and accum must be positive");
    NEED(o->steps > 0, "steps must be positive");
    NEED(o->log_every > 0, "log_every must be positive");
    NEED(o->eval_every >= 0 && o->ckpt_every >= 0 && o->warmup >= 0, "cadences and warmup must be >= 0");
    NEED(o->synthetic || o->bench || o->eval_batches > 0, "eval_batches must be positive");
    NEED(isfinite(o->lr) && o->lr >= 0 && isfinite(o->min_lr) && o->min_lr >= 0, "bad learning rate");
    NEED(isfinite(o->weight_decay) && o->weight_decay >= 0, "bad weight decay");
    NEED(isfinite(o->clip) && o->clip >= 0, "bad clip (0 = off)");
    NEED(o->val_frac >= 0 && o->val_frac < 1, "val_frac must be in [0, 1)");
    NEED(o->precision == FE_F32 || o->precision == FE_F64 || o->precision == FE_BF16 ||
             o->precision == FE_F16,
         "precision must be f32, f64, bf16 or fp16, not %s", fe_dtype_name(o->precision));
    NEED(o->schedule >= FE_LR_CONSTANT && o->schedule <= FE_LR_WARMUP_COSINE, "unknown LR schedule");
    NEED(o->synthetic || o->dataset || o->data_path, "no data: give dataset, data_path or synthetic");
    NEED(!o->resume || o->run_dir, "resume needs a run folder");
#undef NEED
    return FE_OK;
}

static fe_status open_data(fe_trainer *t) {
    const fe_trainer_options *o = &t->o;
    fe_dataset *ds = o->dataset;
    if (!ds) {
        size_t n = strlen(o->data_path);
        ds = t->all = n > 4 && !strcmp(o->data_path + n - 4, ".bin") ? fe_dataset_open_shard(o->data_path)
                                                                     : fe_dataset_open_text(o->data_path);
        if (!ds) return fe_last_status();
    }
    int64_t bound = fe_dataset_vocab_bound(ds);
    if (bound > o->model.vocab_size)
        return fe_set_error(FE_ERR_ARG, "trainer: the data holds token ids up to %lld but the vocabulary is %lld",
                            (long long)bound - 1, (long long)o->model.vocab_size);
    if (fe_dataset_split(ds, o->val_frac, &t->train, &t->val)) return fe_last_status();
    fe_loader_config lc = {.batch = o->batch, .seq_len = o->seq, .seed = o->seed, .shuffle = true,
                           .prefetch = 2, .device = o->device};
    if (!(t->tl = fe_loader_new(t->train, &lc))) return fe_last_status();
    if (!o->bench) {
        lc.shuffle = false, lc.prefetch = 0;
        if (!(t->vl = fe_loader_new(t->val, &lc))) return fe_last_status();
    }
    t->stats.train_tokens = (double)fe_dataset_len(t->train);
    t->stats.val_tokens = (double)fe_dataset_len(t->val);
    t->stats.unigram_baseline = unigram_entropy(t->train, o->model.vocab_size);
    return FE_OK;
}

static fe_status build_model(fe_trainer *t) {
    const fe_trainer_options *o = &t->o;
    fe_llama_config mc = o->model;
    mc.max_seq = o->seq;
    fe_manual_seed(o->seed);
    bool f64 = o->precision == FE_F64;
    if (!(t->model = fe_llama_new(&mc, f64 ? FE_F64 : FE_F32, o->device))) return fe_last_status();
    fe_llama_set_checkpointing(t->model, o->grad_checkpointing);
    if (o->precision == FE_BF16 || o->precision == FE_F16) {
        if (!(t->amp = fe_amp_new(fe_llama_params(t->model), o->precision))) return fe_last_status();
        t->master = fe_amp_master(t->amp);
    } else {
        t->master = fe_llama_params(t->model);
    }
    fe_adamw_config ac = fe_adamw_defaults();
    ac.beta2 = 0.95, ac.weight_decay = o->weight_decay;
    if (!(t->opt = fe_adamw_new(t->master, &ac))) return fe_last_status();
    if (o->precision == FE_F16 && !(t->scaler = fe_grad_scaler_new(NULL))) return fe_last_status();
    t->sched = (fe_lr_schedule){.kind = o->schedule, .lr = o->lr, .min_lr = o->min_lr,
                                .warmup_steps = o->warmup, .total_steps = o->steps};
    int64_t np = fe_params_numel(fe_llama_params(t->model));
    t->stats.params = np;
    t->stats.matmul_params = np - o->model.vocab_size * o->model.dim;
    return FE_OK;
}

fe_trainer *fe_trainer_new(const fe_trainer_options *o) {
    if (!o) {
        fe_set_error(FE_ERR_ARG, "trainer: no options");
        return NULL;
    }
    if (check_options(o)) return NULL;
    fe_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        fe_set_error(FE_ERR_OOM, "trainer: out of memory");
        return NULL;
    }
    t->o = *o;
    t->stats.unigram_baseline = NAN, t->stats.last_val_loss = NAN;
    fe_llama_config mc = o->model;
    mc.max_seq = o->seq;
    if (fe_llama_config_check(&mc)) goto fail;
    if (!o->synthetic && open_data(t)) goto fail;
    if (build_model(t)) goto fail;
    t->ts = (fe_train_state){.model = t->model, .master = t->master, .opt = t->opt, .scaler = t->scaler,
                             .train_loader = t->tl, .step = 0};
    if (o->resume) {
        if (fe_train_checkpoint_load(o->run_dir, &t->ts)) goto fail;
        if (t->amp && fe_amp_to_compute(t->amp)) goto fail;
        if (t->ts.step > o->steps) {
            fe_set_error(FE_ERR_ARG, "trainer: the checkpoint is at step %lld, beyond the %lld steps asked for",
                         (long long)t->ts.step, (long long)o->steps);
            goto fail;
        }
    }
    if (o->run_dir && !o->bench && !(t->log = fe_runlog_open(o->run_dir, o->resume ? t->ts.step : -1)))
        goto fail;
    t->stats.first_step = t->last_logged = t->ts.step;
    fe_device_mem_reset_peak(o->device);
    t->t0 = t->t_last = now_s();
    return t;
fail:
    fe_trainer_free(t);
    return NULL;
}

void fe_trainer_free(fe_trainer *t) {
    if (!t) return;
    fe_runlog_close(t->log);
    fe_grad_scaler_free(t->scaler);
    fe_optimizer_free(t->opt);
    fe_amp_free(t->amp);
    fe_llama_free(t->model);
    fe_loader_free(t->tl), fe_loader_free(t->vl);
    fe_dataset_free(t->train), fe_dataset_free(t->val), fe_dataset_free(t->all);
    free(t);
}

/* A random-token batch for synthetic runs (global generator). */
static fe_status synthetic_batch(const fe_trainer_options *o, fe_tensor **x, fe_tensor **y) {
    fe_tensor *u = fe_rand(2, (int64_t[]){o->batch, o->seq + 1}, 0, (double)o->model.vocab_size, FE_F32,
                           o->device);
    fe_tensor *ids = u ? fe_cast(u, FE_I32) : NULL;
    *x = ids ? fe_slice(ids, 1, 0, o->seq, 1) : NULL;
    *y = ids ? fe_slice(ids, 1, 1, o->seq + 1, 1) : NULL;
    return *x && *y ? FE_OK : fe_last_status();
}

static void emit(fe_trainer *t, fe_trainer_event ev) {
    if (!t->o.on_event) return;
    ev.step = t->ts.step, ev.total_steps = t->o.steps;
    ev.elapsed_s = now_s() - t->t0;
    int64_t done = t->ts.step - t->stats.first_step;
    ev.eta_s = done > 0 ? ev.elapsed_s / (double)done * (double)(t->o.steps - t->ts.step) : NAN;
    t->o.on_event(&ev, t->o.user);
}

static const fe_trainer_event k_blank = {.loss = NAN, .lr = NAN, .grad_norm = NAN, .tokens_per_s = NAN,
                                         .val_loss = NAN};

double fe_trainer_evaluate(fe_trainer *t, int64_t n) {
    if (!t || !t->vl) {
        fe_set_error(FE_ERR_STATE, "trainer: no validation data (synthetic or bench run)");
        return NAN;
    }
    fe_loader_state st = fe_loader_get_state(t->vl);
    st.epoch = 0, st.index = 0;
    if (fe_loader_set_state(t->vl, st)) return NAN;
    double sum = 0;
    bool prev = fe_set_grad_enabled(false);
    for (int64_t i = 0; i < n; i++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x, *y;
        if (fe_loader_next(t->vl, &x, &y)) {
            fe_scope_end(s);
            sum = NAN;
            break;
        }
        sum += fe_item(fe_llama_forward_loss(t->model, x, y));
        fe_scope_end(s);
    }
    fe_set_grad_enabled(prev);
    return sum / (double)n;
}

fe_status fe_trainer_save(fe_trainer *t) {
    if (!t || !t->o.run_dir) return fe_set_error(FE_ERR_STATE, "trainer: no run folder to save into");
    fe_status st = fe_train_checkpoint_save(t->o.run_dir, &t->ts);
    if (!st) {
        fe_trainer_event ev = k_blank;
        ev.kind = FE_TRAINER_CKPT;
        emit(t, ev);
    }
    return st;
}

/* forward + backward of `accum` micro-batches; the detached loss sum into *loss_sum */
static fe_status forward_backward(fe_trainer *t, fe_tensor **loss_sum) {
    const fe_trainer_options *o = &t->o;
    *loss_sum = NULL;
    for (int64_t k = 0; k < o->accum; k++) {
        fe_tensor *x, *y;
        if (o->synthetic ? synthetic_batch(o, &x, &y) : fe_loader_next(t->tl, &x, &y)) return fe_last_status();
        fe_tensor *loss = fe_llama_forward_loss(t->model, x, y); /* no whole logits */
        fe_tensor *scaled = fe_grad_accum_loss(loss, (int)o->accum);
        if (t->scaler) scaled = fe_grad_scaler_scale(t->scaler, scaled);
        if (!scaled || fe_backward(scaled, NULL)) return fe_last_status();
        *loss_sum = *loss_sum ? fe_add(*loss_sum, fe_detach(loss)) : fe_detach(loss);
        if (!*loss_sum) return fe_last_status();
    }
    return FE_OK;
}

fe_status fe_trainer_step(fe_trainer *t) {
    if (!t) return fe_set_error(FE_ERR_ARG, "trainer: NULL");
    const fe_trainer_options *o = &t->o;
    if (t->ts.step >= o->steps)
        return fe_set_error(FE_ERR_STATE, "trainer: all %lld steps are done", (long long)o->steps);
    int64_t step = t->ts.step;
    if (o->bench && step == t->stats.first_step + BENCH_WARMUP) {
        fe_device_sync(o->device);
        t->bench_t0 = now_s();
    }
    /* FE_BENCH_SYNC=1 (bench runs): wait for the device before and after each step and print
     * how long the host took to queue the step beside how long the step took in all; when the
     * two are close, the GPU waits on the host. */
    bool sync_diag = o->bench && getenv("FE_BENCH_SYNC");
    if (sync_diag) fe_device_sync(o->device);
    double ts0 = now_s();
    fe_scope *s = fe_scope_begin();
    fe_tensor *loss_sum = NULL, *norm = NULL;
    fe_status st = forward_backward(t, &loss_sum);
    double lr = fe_lr_at(&t->sched, step);
    /* unscale, clip, AdamW, zero the grads, refresh the bf16/fp16 weights */
    fe_update_config uc = {.lr = lr, .max_norm = o->clip, .amp = t->amp, .scaler = t->scaler};
    if (!st) {
        st = fe_optimizer_update(t->opt, &uc, &norm, NULL);
    } else {
        fe_params_zero_grad(t->master);
        if (t->amp) fe_params_zero_grad(fe_llama_params(t->model));
    }
    if (st) {
        fe_scope_end(s);
        return st;
    }
    t->ts.step = step + 1;
    bool show = t->ts.step % o->log_every == 0 || t->ts.step == o->steps;
    if (show && !o->bench) {
        fe_trainer_event ev = k_blank;
        ev.kind = FE_TRAINER_STEP;
        ev.loss = fe_item(loss_sum) / (double)o->accum;
        ev.lr = lr;
        ev.grad_norm = norm ? fe_item(norm) : NAN;
        double now = now_s();
        int64_t n = t->ts.step - t->last_logged;
        ev.tokens_per_s = (double)(o->batch * o->seq * o->accum * n) / (now - t->t_last);
        t->t_last = now, t->last_logged = t->ts.step;
        if (t->log) st = fe_runlog_train(t->log, t->ts.step, ev.loss, lr, norm ? ev.grad_norm : 0, ev.tokens_per_s);
        emit(t, ev);
    }
    fe_scope_end(s);
    if (sync_diag) {
        double queued = now_s();
        fe_device_sync(o->device);
        fprintf(stderr, "bench step %lld: host queued it in %.2f ms, the step took %.2f ms\n", (long long)step,
                (queued - ts0) * 1e3, (now_s() - ts0) * 1e3);
    }
    t->step_s += now_s() - ts0;
    if (st || o->bench) {
        t->busy_s += now_s() - ts0;
        return st;
    }
    bool last = t->ts.step == o->steps;
    if (t->vl && (last || (o->eval_every && t->ts.step % o->eval_every == 0))) {
        double v = fe_trainer_evaluate(t, o->eval_batches);
        if (isnan(v)) return fe_last_status() ? fe_last_status() : fe_set_error(FE_ERR_STATE, "trainer: the validation loss is NaN");
        t->stats.last_val_loss = v;
        if (t->log) {
            if ((st = fe_runlog_val(t->log, t->ts.step, v))) return st;
            if ((st = fe_runlog_plot(t->log, "ferric train: loss", t->stats.unigram_baseline))) return st;
        }
        fe_trainer_event ev = k_blank;
        ev.kind = FE_TRAINER_EVAL;
        ev.val_loss = v;
        emit(t, ev);
    }
    if (o->run_dir && (last || (o->ckpt_every && t->ts.step % o->ckpt_every == 0))) st = fe_trainer_save(t);
    t->busy_s += now_s() - ts0;
    return st;
}

fe_status fe_trainer_run(fe_trainer *t) {
    if (!t) return fe_set_error(FE_ERR_ARG, "trainer: NULL");
    while (t->ts.step < t->o.steps) {
        fe_status st = fe_trainer_step(t);
        if (st) return st;
    }
    return fe_device_sync(t->o.device);
}

int64_t fe_trainer_steps_done(const fe_trainer *t) { return t ? t->ts.step : 0; }
fe_llama *fe_trainer_model(fe_trainer *t) { return t ? t->model : NULL; }
fe_params *fe_trainer_params(fe_trainer *t) { return t ? t->master : NULL; }
const fe_trainer_options *fe_trainer_options_of(const fe_trainer *t) { return t ? &t->o : NULL; }

fe_trainer_stats fe_trainer_stats_of(const fe_trainer *t) {
    fe_trainer_stats s = {0};
    if (!t) return s;
    s = t->stats;
    const fe_trainer_options *o = &t->o;
    double tok_step = (double)(o->batch * o->seq * o->accum);
    s.elapsed_s = t->busy_s;
    int64_t done = t->ts.step - t->stats.first_step;
    if (o->bench) {
        int64_t timed = done - BENCH_WARMUP;
        fe_device_sync(o->device);
        double dt = timed > 0 ? (now_s() - t->bench_t0) / (double)timed : NAN;
        s.step_ms = dt * 1e3, s.tokens_per_s = tok_step / dt;
    } else {
        s.step_ms = done > 0 ? t->step_s / (double)done * 1e3 : NAN;
        s.tokens_per_s = tok_step / (s.step_ms * 1e-3);
    }
    s.peak_bytes = (int64_t)fe_device_mem_peak(o->device);
    return s;
}
