/* `ferric train`: train a Llama-architecture model on a text file or token shard. */
#include "ferric/ferric.h"
#include "ferric/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- options ------------------------------------------------------------------ */

typedef struct train_opts {
    const char *preset, *data, *run_dir, *device, *precision, *schedule, *prompt, *resume_dir;
    int64_t dim, layers, heads, kv_heads, ffn, vocab, seq, batch, accum, steps, warmup;
    int64_t eval_every, eval_batches, ckpt_every, sample_tokens, log_every, threads;
    double lr, min_lr, weight_decay, clip, val_frac, rope_theta, temperature;
    uint64_t seed;
    bool grad_ckpt, resume, synthetic, bench, tied;
} train_opts;

typedef struct preset {
    const char *name;
    int64_t dim, layers, heads, kv_heads, ffn, vocab, seq, batch, steps;
    double lr;
    const char *note;
} preset;

static const preset k_presets[] = {
    {"austen", 192, 4, 6, 6, 512, 256, 128, 16, 300, 3e-3,
     "the default job: a byte-level model on Jane Austen, ~2 min on 2 CPU cores"},
    {"small", 768, 12, 12, 12, 2048, 32000, 1024, 16, 100, 3e-4,
     "~134M parameters (the 'small' shape of shared/bench/torch_llama_baseline.py)"},
    {"tinyllama", 2048, 22, 32, 4, 5632, 32000, 2048, 4, 100, 3e-4, "TinyLlama-1.1B's shape"},
};

typedef enum { O_STR, O_INT, O_DBL, O_FLAG } opt_kind;
typedef struct opt {
    const char *flag;
    opt_kind kind;
    size_t off;
    const char *help;
} opt;

#define OFF(f) offsetof(train_opts, f)
static const opt k_opts[] = {
    {"--preset", O_STR, OFF(preset), "model and run preset: austen (default), small, tinyllama"},
    {"--dim", O_INT, OFF(dim), "model width (overrides the preset)"},
    {"--layers", O_INT, OFF(layers), "number of blocks"},
    {"--heads", O_INT, OFF(heads), "attention heads"},
    {"--kv-heads", O_INT, OFF(kv_heads), "key/value heads (grouped-query attention)"},
    {"--ffn", O_INT, OFF(ffn), "SwiGLU hidden size"},
    {"--vocab", O_INT, OFF(vocab), "vocabulary size (256 for the byte tokenizer)"},
    {"--tied", O_FLAG, OFF(tied), "tie the output projection to the embedding"},
    {"--rope-theta", O_DBL, OFF(rope_theta), "RoPE base (default 10000)"},
    {"--data", O_STR, OFF(data), "text file (byte tokens) or .bin token shard (default data/austen.txt)"},
    {"--synthetic", O_FLAG, OFF(synthetic), "train on random tokens (for benchmarks; no data file)"},
    {"--val-frac", O_DBL, OFF(val_frac), "fraction of the data held out for validation (default 0.05)"},
    {"--seq", O_INT, OFF(seq), "sequence length"},
    {"--batch", O_INT, OFF(batch), "sequences per micro-batch"},
    {"--accum", O_INT, OFF(accum), "micro-batches per optimizer step (gradient accumulation)"},
    {"--steps", O_INT, OFF(steps), "optimizer steps"},
    {"--lr", O_DBL, OFF(lr), "peak learning rate"},
    {"--min-lr", O_DBL, OFF(min_lr), "final learning rate of cosine schedules (default lr/10)"},
    {"--schedule", O_STR, OFF(schedule), "constant, warmup, cosine or warmup-cosine (default)"},
    {"--warmup", O_INT, OFF(warmup), "warmup steps (default 5% of steps)"},
    {"--weight-decay", O_DBL, OFF(weight_decay), "AdamW decoupled weight decay (default 0.1)"},
    {"--clip", O_DBL, OFF(clip), "global gradient-norm clip, 0 = off (default 1.0)"},
    {"--precision", O_STR, OFF(precision), "f32 (default on CPU), bf16 (default on CUDA) or fp16"},
    {"--grad-checkpointing", O_FLAG, OFF(grad_ckpt), "recompute each block in backward"},
    {"--eval-every", O_INT, OFF(eval_every), "validation loss every N steps (default 50)"},
    {"--eval-batches", O_INT, OFF(eval_batches), "batches per validation (default 8)"},
    {"--ckpt-every", O_INT, OFF(ckpt_every), "checkpoint every N steps (default 100, 0 = only at the end)"},
    {"--run-dir", O_STR, OFF(run_dir), "folder for metrics, plot and checkpoints (default runs/<preset>)"},
    {"--resume", O_FLAG, OFF(resume), "continue from the run folder's last checkpoint"},
    {"--device", O_STR, OFF(device), "auto (default: CUDA if present), cpu, cuda or cuda:N"},
    {"--seed", O_INT, OFF(seed), "random seed (default 1)"},
    {"--threads", O_INT, OFF(threads), "CPU threads (default: all cores)"},
    {"--log-every", O_INT, OFF(log_every), "read the loss back every N steps (default 1 on CPU, 10 on CUDA)"},
    {"--sample-tokens", O_INT, OFF(sample_tokens), "tokens sampled at the end (default 300, 0 = none)"},
    {"--prompt", O_STR, OFF(prompt), "prompt for the final sample"},
    {"--temperature", O_DBL, OFF(temperature), "sampling temperature (default 0.8)"},
    {"--bench", O_FLAG, OFF(bench), "print one JSON line of throughput and memory at the end"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: ferric train [options]\n\nTrain a Llama-architecture language model. With no "
               "options: the 'austen' preset on\ndata/austen.txt (made by scripts/prepare_austen.sh), on "
               "CUDA when available.\n\noptions:\n");
    for (size_t i = 0; i < sizeof k_opts / sizeof *k_opts; i++)
        fprintf(f, "  %-22s %s\n", k_opts[i].flag, k_opts[i].help);
    fprintf(f, "\npresets:\n");
    for (size_t i = 0; i < sizeof k_presets / sizeof *k_presets; i++)
        fprintf(f, "  %-10s dim %" PRId64 ", %" PRId64 " layers, seq %" PRId64 ", batch %" PRId64 ": %s\n",
                k_presets[i].name, k_presets[i].dim, k_presets[i].layers, k_presets[i].seq,
                k_presets[i].batch, k_presets[i].note);
}

static int parse(train_opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 1;
        }
        const opt *hit = NULL;
        for (size_t k = 0; k < sizeof k_opts / sizeof *k_opts && !hit; k++)
            if (!strcmp(argv[i], k_opts[k].flag)) hit = &k_opts[k];
        if (!hit) {
            fprintf(stderr, "ferric train: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        }
        char *field = (char *)o + hit->off;
        if (hit->kind == O_FLAG) {
            *(bool *)field = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ferric train: %s needs a value\n", argv[i]);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        errno = 0;
        if (hit->kind == O_STR) {
            *(const char **)field = v;
        } else if (hit->kind == O_INT) {
            long long x = strtoll(v, &end, 10);
            if (*end || errno || x < 0) goto bad;
            *(int64_t *)field = x;
        } else {
            double x = strtod(v, &end);
            if (*end || errno || !isfinite(x) || x < 0) goto bad;
            *(double *)field = x;
        }
        continue;
    bad:
        fprintf(stderr, "ferric train: %s expects a non-negative number, got '%s'\n", hit->flag, v);
        return 2;
    }
    return 0;
}

/* Fill unset fields from the preset and the defaults. */
static int finish_opts(train_opts *o, fe_device dev) {
    const preset *p = NULL;
    if (!o->preset) o->preset = "austen";
    for (size_t i = 0; i < sizeof k_presets / sizeof *k_presets; i++)
        if (!strcmp(o->preset, k_presets[i].name)) p = &k_presets[i];
    if (!p) {
        fprintf(stderr, "ferric train: unknown preset '%s' (austen, small, tinyllama)\n", o->preset);
        return 2;
    }
#define DEF(f, v) if (!o->f) o->f = (v)
    DEF(dim, p->dim); DEF(layers, p->layers); DEF(heads, p->heads); DEF(kv_heads, p->kv_heads);
    DEF(ffn, p->ffn); DEF(vocab, p->vocab); DEF(seq, p->seq); DEF(batch, p->batch);
    DEF(steps, p->steps); DEF(lr, p->lr); DEF(accum, 1); DEF(min_lr, o->lr / 10);
    DEF(warmup, o->steps / 20); DEF(eval_every, 50); DEF(eval_batches, 8); DEF(ckpt_every, 100);
    DEF(val_frac, 0.05); DEF(rope_theta, 10000.0); DEF(temperature, 0.8); DEF(seed, 1);
    DEF(data, "data/austen.txt"); DEF(schedule, "warmup-cosine");
    DEF(precision, dev.type == FE_CUDA ? "bf16" : "f32");
    DEF(log_every, dev.type == FE_CUDA ? 10 : 1);
    DEF(prompt, "It is a truth universally acknowledged");
#undef DEF
    if (o->weight_decay == 0) o->weight_decay = 0.1;
    if (o->clip == 0) o->clip = 1.0;
    if (o->sample_tokens == 0 && !o->bench) o->sample_tokens = 300;
    return 0;
}

/* ---- helpers --------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int fail(const char *what) {
    fprintf(stderr, "\nferric train: %s: %s\n", what, fe_last_error());
    return 1;
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

static fe_lr_schedule make_schedule(const train_opts *o, bool *ok) {
    fe_lr_schedule s = {.lr = o->lr, .min_lr = o->min_lr, .warmup_steps = o->warmup,
                        .total_steps = o->steps};
    *ok = true;
    if (!strcmp(o->schedule, "constant")) s.kind = FE_LR_CONSTANT;
    else if (!strcmp(o->schedule, "warmup")) s.kind = FE_LR_LINEAR_WARMUP;
    else if (!strcmp(o->schedule, "cosine")) s.kind = FE_LR_COSINE;
    else if (!strcmp(o->schedule, "warmup-cosine")) s.kind = FE_LR_WARMUP_COSINE;
    else *ok = false;
    return s;
}

/* Mean loss over n validation batches, with the tape off. */
static double evaluate(fe_llama *m, fe_loader *val, int64_t n) {
    double sum = 0;
    bool prev = fe_set_grad_enabled(false);
    for (int64_t i = 0; i < n; i++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x, *y;
        if (fe_loader_next(val, &x, &y)) {
            fe_scope_end(s);
            sum = NAN;
            break;
        }
        sum += fe_item(fe_llama_loss(fe_llama_forward(m, x), y));
        fe_scope_end(s);
    }
    fe_set_grad_enabled(prev);
    return sum / (double)n;
}

static void progress(int64_t step, int64_t total, double loss, double tok_s, double eta, bool tty) {
    int width = 28, done = (int)((double)step / (double)total * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "%s[%s] step %5" PRId64 "/%" PRId64 "  loss %.4f  %8.0f tok/s  ETA %4.0fs%s",
            tty ? "\r" : "", bar, step, total, loss, tok_s, eta, tty ? "  " : "\n");
    fflush(stderr);
}

/* A random-token batch for --synthetic runs. */
static fe_status synthetic_batch(const train_opts *o, fe_device dev, fe_tensor **x, fe_tensor **y) {
    fe_tensor *u = fe_rand(2, (int64_t[]){o->batch, o->seq + 1}, 0, (double)o->vocab, FE_F32, dev);
    fe_tensor *ids = u ? fe_cast(u, FE_I32) : NULL;
    *x = ids ? fe_slice(ids, 1, 0, o->seq, 1) : NULL;
    *y = ids ? fe_slice(ids, 1, 1, o->seq + 1, 1) : NULL;
    return *x && *y ? FE_OK : fe_last_status();
}

/* ---- the command ------------------------------------------------------------------- */

int fe_cmd_train(int argc, char **argv) {
    train_opts o = {0};
    int rc = parse(&o, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    fe_device dev;
    if (!fe_device_parse(o.device ? o.device : "auto", &dev)) {
        fprintf(stderr, "ferric train: unknown device '%s'\n", o.device);
        return 2;
    }
    if ((rc = finish_opts(&o, dev))) return rc;
    if (o.threads) fe_set_num_threads((int)o.threads);
    bool sched_ok;
    fe_lr_schedule sched = make_schedule(&o, &sched_ok);
    fe_dtype compute;
    if (!sched_ok || !fe_dtype_parse(o.precision, &compute) ||
        (compute != FE_F32 && compute != FE_BF16 && compute != FE_F16)) {
        fprintf(stderr, "ferric train: bad --schedule '%s' or --precision '%s'\n", o.schedule, o.precision);
        return 2;
    }
    char run_dir[512];
    snprintf(run_dir, sizeof run_dir, "%s", o.run_dir ? o.run_dir : "");
    if (!o.run_dir) {
        mkdir("runs", 0755);
        snprintf(run_dir, sizeof run_dir, "runs/%s", o.preset);
    }

    /* data */
    fe_dataset *all = NULL, *train = NULL, *val = NULL;
    fe_loader *tl = NULL, *vl = NULL;
    double baseline = NAN;
    if (!o.synthetic) {
        size_t n = strlen(o.data);
        all = n > 4 && !strcmp(o.data + n - 4, ".bin") ? fe_dataset_open_shard(o.data)
                                                       : fe_dataset_open_text(o.data);
        if (!all) {
            fprintf(stderr, "ferric train: %s\n", fe_last_error());
            if (!strcmp(o.data, "data/austen.txt"))
                fprintf(stderr, "  (make it with: scripts/prepare_austen.sh)\n");
            return 1;
        }
        if (fe_dataset_vocab_bound(all) > o.vocab) {
            fprintf(stderr, "ferric train: the data holds token ids up to %" PRId64
                            " but --vocab is %" PRId64 "\n", fe_dataset_vocab_bound(all) - 1, o.vocab);
            fe_dataset_free(all);
            return 2;
        }
        if (fe_dataset_split(all, o.val_frac, &train, &val)) return fail("splitting the data");
        fe_loader_config lc = {.batch = o.batch, .seq_len = o.seq, .seed = o.seed, .shuffle = true,
                               .prefetch = 2, .device = dev};
        tl = fe_loader_new(train, &lc);
        lc.shuffle = false, lc.prefetch = 0;
        vl = tl ? fe_loader_new(val, &lc) : NULL;
        if (!tl || !vl) return fail("the data loader");
        baseline = unigram_entropy(train, o.vocab);
    }

    /* model, optimizer, mixed precision */
    fe_llama_config mc = {.vocab_size = o.vocab, .dim = o.dim, .n_layers = o.layers, .n_heads = o.heads,
                          .n_kv_heads = o.kv_heads, .ffn_dim = o.ffn, .max_seq = o.seq,
                          .norm_eps = 1e-5, .rope_theta = o.rope_theta, .tie_embeddings = o.tied};
    fe_manual_seed(o.seed);
    fe_llama *model = fe_llama_new(&mc, FE_F32, dev);
    if (!model) return fail("creating the model");
    fe_llama_set_checkpointing(model, o.grad_ckpt);
    fe_amp *amp = compute == FE_F32 ? NULL : fe_amp_new(fe_llama_params(model), compute);
    if (compute != FE_F32 && !amp) return fail("mixed precision");
    fe_params *master = amp ? fe_amp_master(amp) : fe_llama_params(model);
    fe_adamw_config ac = fe_adamw_defaults();
    ac.beta2 = 0.95, ac.weight_decay = o.weight_decay;
    fe_optimizer *opt = fe_adamw_new(master, &ac);
    fe_grad_scaler *scaler = compute == FE_F16 ? fe_grad_scaler_new(NULL) : NULL;
    if (!opt || (compute == FE_F16 && !scaler)) return fail("the optimizer");

    fe_train_state ts = {.model = model, .master = master, .opt = opt, .scaler = scaler,
                         .train_loader = tl, .step = 0};
    if (o.resume) {
        if (fe_train_checkpoint_load(run_dir, &ts) != FE_OK) return fail("resuming");
        if (amp && fe_amp_to_compute(amp)) return fail("mixed precision");
        fprintf(stderr, "resumed %s at step %" PRId64 "\n", run_dir, ts.step);
    }
    fe_runlog *log = o.bench ? NULL : fe_runlog_open(run_dir, o.resume ? ts.step : -1);
    if (!o.bench && !log) return fail("the run folder");

    int64_t nparams = fe_params_numel(fe_llama_params(model));
    char devs[16];
    fprintf(stderr, "ferric train: %s, %.2fM parameters, %s %s, batch %" PRId64 "x%" PRId64
                    " x%" PRId64 ", %" PRId64 " steps\n",
            o.preset, (double)nparams / 1e6, fe_device_str(dev, devs, sizeof devs), o.precision, o.batch,
            o.seq, o.accum, o.steps);
    if (!o.synthetic)
        fprintf(stderr, "data: %s, %" PRId64 " train / %" PRId64 " validation tokens; unigram baseline %.3f nats\n",
                o.data, fe_dataset_len(train), fe_dataset_len(val), baseline);

    /* the loop */
    bool tty = isatty(2);
    double t0 = now_s(), t_last = t0, loss_v = NAN, last_val = NAN;
    int64_t tok_per_step = o.batch * o.seq * o.accum, first = ts.step, bench_warm = 3;
    double bench_t0 = 0;
    fe_device_mem_reset_peak(dev);
    for (int64_t step = ts.step; step < o.steps; step++) {
        if (o.bench && step == first + bench_warm) {
            fe_device_sync(dev);
            bench_t0 = now_s();
        }
        fe_scope *s = fe_scope_begin();
        fe_tensor *loss_sum = NULL;
        for (int64_t k = 0; k < o.accum; k++) {
            fe_tensor *x, *y;
            if ((o.synthetic ? synthetic_batch(&o, dev, &x, &y) : fe_loader_next(tl, &x, &y)))
                return fail("reading a batch");
            fe_tensor *loss = fe_llama_loss(fe_llama_forward(model, x), y);
            fe_tensor *scaled = fe_grad_accum_loss(loss, (int)o.accum);
            if (scaler) scaled = fe_grad_scaler_scale(scaler, scaled);
            if (!scaled || fe_backward(scaled, NULL)) return fail("forward/backward");
            loss_sum = loss_sum ? fe_add(loss_sum, fe_detach(loss)) : fe_detach(loss);
        }
        if (amp && fe_amp_grads_to_master(amp)) return fail("mixed precision");
        if (scaler && fe_grad_scaler_unscale(scaler, master)) return fail("loss scaling");
        fe_tensor *norm = o.clip > 0 ? fe_clip_grad_norm(master, o.clip) : NULL;
        bool ok = true;
        if (scaler && fe_grad_scaler_update(scaler, &ok)) return fail("loss scaling");
        double lr = fe_lr_at(&sched, step);
        if (ok && fe_optimizer_step(opt, lr)) return fail("the optimizer step");
        fe_params_zero_grad(master);
        if (amp) {
            fe_params_zero_grad(fe_llama_params(model));
            if (fe_amp_to_compute(amp)) return fail("mixed precision");
        }
        ts.step = step + 1;
        bool show = ts.step % o.log_every == 0 || ts.step == o.steps;
        if (show && !o.bench) {
            loss_v = fe_item(loss_sum) / (double)o.accum;
            double t = now_s(), tok_s = (double)tok_per_step * (double)o.log_every / (t - t_last);
            if (ts.step - first < o.log_every) tok_s = (double)tok_per_step * (double)(ts.step - first) / (t - t0);
            t_last = t;
            double eta = (t - t0) / (double)(ts.step - first) * (double)(o.steps - ts.step);
            progress(ts.step, o.steps, loss_v, tok_s, eta, tty);
            fe_runlog_train(log, ts.step, loss_v, lr, norm ? fe_item(norm) : 0, tok_s);
        }
        fe_scope_end(s);
        if (!o.synthetic && (ts.step % o.eval_every == 0 || ts.step == o.steps) && !o.bench) {
            last_val = evaluate(model, vl, o.eval_batches);
            fe_runlog_val(log, ts.step, last_val);
            fe_runlog_plot(log, "ferric train: loss", baseline);
            fprintf(stderr, "%sstep %" PRId64 ": validation loss %.4f (unigram baseline %.3f)\n",
                    tty ? "\n" : "", ts.step, last_val, baseline);
        }
        if (!o.bench && (ts.step == o.steps || (o.ckpt_every && ts.step % o.ckpt_every == 0)))
            if (fe_train_checkpoint_save(run_dir, &ts)) return fail("saving a checkpoint");
    }
    fe_device_sync(dev);
    double t_end = now_s();
    if (o.bench) {
        /* the FLOP convention of shared/bench/torch_llama_baseline.py */
        int64_t n_mm = nparams - o.vocab * o.dim;
        double steps_timed = (double)(o.steps - first - bench_warm);
        double dt = (t_end - bench_t0) / steps_timed, tok_s = (double)tok_per_step / dt;
        double flops = (6.0 * (double)n_mm + 12.0 * (double)(o.layers * o.dim * o.seq)) * tok_s;
        printf("TRAIN {\"framework\": \"ferric\", \"config\": \"%s\", \"precision\": \"%s\", \"params_M\": %.1f, "
               "\"step_ms\": %.2f, \"tok_s\": %.0f, \"tflops\": %.1f, \"mfu_989\": %.1f, \"peak_GiB\": %.2f}\n",
               o.preset, o.precision, (double)nparams / 1e6, dt * 1e3, tok_s, flops / 1e12,
               flops / 989e12 * 100, (double)fe_device_mem_peak(dev) / (1 << 30));
    } else {
        fprintf(stderr, "done: %" PRId64 " steps in %.1fs; final validation loss %.4f vs unigram baseline %.3f\n",
                o.steps - first, t_end - t0, last_val, baseline);
        fprintf(stderr, "metrics: %s/metrics.jsonl, plot: %s/loss.svg, checkpoint: %s/checkpoint\n",
                run_dir, run_dir, run_dir);
    }

    /* a sample from the trained model (byte tokenizer) */
    if (o.sample_tokens > 0 && o.vocab == 256) {
        int64_t np = (int64_t)strlen(o.prompt), total = np + o.sample_tokens;
        int32_t *ids = malloc((size_t)total * sizeof *ids);
        char *text = malloc((size_t)total + 1);
        fe_sample_config sc = {.temperature = o.temperature, .top_k = 40, .seed = o.seed};
        if (ids && text && np > 0 && fe_bytes_encode(o.prompt, (size_t)np, ids) == np &&
            fe_llama_generate(model, ids, np, o.sample_tokens, &sc, ids) == FE_OK &&
            fe_bytes_decode(ids, total, text) == FE_OK) {
            text[total] = 0;
            printf("\n--- sample (temperature %.2f) ---\n%s\n", o.temperature, text);
        } else {
            fprintf(stderr, "sampling failed: %s\n", fe_last_error());
        }
        free(ids), free(text);
    }
    fe_runlog_close(log);
    fe_grad_scaler_free(scaler);
    fe_optimizer_free(opt);
    fe_amp_free(amp);
    fe_llama_free(model);
    fe_loader_free(tl), fe_loader_free(vl);
    fe_dataset_free(train), fe_dataset_free(val), fe_dataset_free(all);
    return 0;
}
