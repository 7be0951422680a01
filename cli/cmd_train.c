/* `ferric train`: train a Llama-architecture model on a text file or token shard. */
#include "ferric/ferric.h"
#include "ferric/trainer.h"

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
    {"--precision", O_STR, OFF(precision), "f32 (default on CPU), bf16 (default on CUDA), fp16, or f64 (CPU)"},
    {"--grad-checkpointing", O_FLAG, OFF(grad_ckpt), "recompute each block in backward"},
    {"--eval-every", O_INT, OFF(eval_every), "validation loss every N steps (default 50, 0 = only at the end)"},
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

/* Fill unset fields from the preset and the defaults. Fields where 0 means something
 * (--clip, --weight-decay, --ckpt-every, --eval-every, --sample-tokens) start at -1. */
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
#define UNSET(f, v) if (o->f < 0) o->f = (v)
    DEF(dim, p->dim); DEF(layers, p->layers); DEF(heads, p->heads); DEF(kv_heads, p->kv_heads);
    DEF(ffn, p->ffn); DEF(vocab, p->vocab); DEF(seq, p->seq); DEF(batch, p->batch);
    DEF(steps, p->steps); DEF(lr, p->lr); DEF(accum, 1); DEF(min_lr, o->lr / 10);
    DEF(warmup, o->steps / 20); DEF(eval_batches, 8);
    DEF(val_frac, 0.05); DEF(rope_theta, 10000.0); DEF(temperature, 0.8); DEF(seed, 1);
    DEF(data, "data/austen.txt"); DEF(schedule, "warmup-cosine");
    DEF(precision, dev.type == FE_CUDA ? "bf16" : "f32");
    DEF(log_every, dev.type == FE_CUDA ? 10 : 1);
    DEF(prompt, "It is a truth universally acknowledged");
    UNSET(eval_every, 50); UNSET(ckpt_every, 100); UNSET(weight_decay, 0.1); UNSET(clip, 1.0);
    UNSET(sample_tokens, o->bench ? 0 : 300);
#undef DEF
#undef UNSET
    return 0;
}

/* ---- printing ------------------------------------------------------------------- */

static int fail(const char *what) {
    fprintf(stderr, "\nferric train: %s: %s\n", what, fe_last_error());
    return 1;
}

static bool parse_schedule(const char *s, fe_lr_kind *k) {
    if (!strcmp(s, "constant")) *k = FE_LR_CONSTANT;
    else if (!strcmp(s, "warmup")) *k = FE_LR_LINEAR_WARMUP;
    else if (!strcmp(s, "cosine")) *k = FE_LR_COSINE;
    else if (!strcmp(s, "warmup-cosine")) *k = FE_LR_WARMUP_COSINE;
    else return false;
    return true;
}

typedef struct printer {
    bool tty;
    double baseline;
} printer;

/* The trainer's progress callback: a progress bar, validation and checkpoint lines. */
static void on_event(const fe_trainer_event *ev, void *user) {
    const printer *p = user;
    if (ev->kind == FE_TRAINER_STEP) {
        int width = 28, done = (int)((double)ev->step / (double)ev->total_steps * width);
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "%s[%s] step %5" PRId64 "/%" PRId64 "  loss %.4f  %8.0f tok/s  ETA %4.0fs%s",
                p->tty ? "\r" : "", bar, ev->step, ev->total_steps, ev->loss, ev->tokens_per_s,
                isnan(ev->eta_s) ? 0.0 : ev->eta_s, p->tty ? "  " : "\n");
    } else if (ev->kind == FE_TRAINER_EVAL) {
        fprintf(stderr, "%sstep %" PRId64 ": validation loss %.4f (unigram baseline %.3f)\n",
                p->tty ? "\n" : "", ev->step, ev->val_loss, p->baseline);
    }
    fflush(stderr);
}

/* ---- the command ------------------------------------------------------------------- */

int fe_cmd_train(int argc, char **argv) {
    train_opts o = {.weight_decay = -1, .clip = -1, .ckpt_every = -1, .eval_every = -1, .sample_tokens = -1};
    int rc = parse(&o, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    fe_device dev;
    if (!fe_device_parse(o.device ? o.device : "auto", &dev)) {
        fprintf(stderr, "ferric train: unknown device '%s'\n", o.device);
        return 2;
    }
    if ((rc = finish_opts(&o, dev))) return rc;
    if (o.threads) fe_set_num_threads((int)o.threads);
    fe_trainer_options to = fe_trainer_defaults();
    if (!parse_schedule(o.schedule, &to.schedule) || !fe_dtype_parse(o.precision, &to.precision) ||
        (to.precision != FE_F32 && to.precision != FE_BF16 && to.precision != FE_F16 && to.precision != FE_F64)) {
        fprintf(stderr, "ferric train: bad --schedule '%s' or --precision '%s'\n", o.schedule, o.precision);
        return 2;
    }
    char run_dir[512];
    snprintf(run_dir, sizeof run_dir, "%s", o.run_dir ? o.run_dir : "");
    if (!o.run_dir) {
        mkdir("runs", 0755);
        snprintf(run_dir, sizeof run_dir, "runs/%s", o.preset);
    }
    to.model = (fe_llama_config){.vocab_size = o.vocab, .dim = o.dim, .n_layers = o.layers, .n_heads = o.heads,
                                 .n_kv_heads = o.kv_heads, .ffn_dim = o.ffn, .norm_eps = 1e-5,
                                 .rope_theta = o.rope_theta, .tie_embeddings = o.tied};
    to.data_path = o.data, to.synthetic = o.synthetic, to.val_frac = o.val_frac;
    to.batch = o.batch, to.seq = o.seq, to.accum = o.accum, to.steps = o.steps;
    to.lr = o.lr, to.min_lr = o.min_lr, to.warmup = o.warmup, to.weight_decay = o.weight_decay, to.clip = o.clip;
    to.grad_checkpointing = o.grad_ckpt;
    to.eval_every = o.eval_every, to.eval_batches = o.eval_batches, to.ckpt_every = o.ckpt_every;
    to.log_every = o.log_every, to.run_dir = run_dir, to.resume = o.resume, to.device = dev, to.seed = o.seed;
    to.bench = o.bench;
    printer pr = {.tty = isatty(2), .baseline = NAN};
    to.on_event = on_event, to.user = &pr;

    fe_trainer *t = fe_trainer_new(&to);
    if (!t) {
        fprintf(stderr, "ferric train: %s\n", fe_last_error());
        if (!o.synthetic && !strcmp(o.data, "data/austen.txt") && access(o.data, R_OK))
            fprintf(stderr, "  (make it with: scripts/prepare_austen.sh)\n");
        return 1;
    }
    fe_trainer_stats ss = fe_trainer_stats_of(t);
    pr.baseline = ss.unigram_baseline;
    if (o.resume) fprintf(stderr, "resumed %s at step %" PRId64 "\n", run_dir, ss.first_step);
    char devs[16];
    fprintf(stderr, "ferric train: %s, %.2fM parameters, %s %s, batch %" PRId64 "x%" PRId64
                    " x%" PRId64 ", %" PRId64 " steps\n",
            o.preset, (double)ss.params / 1e6, fe_device_str(dev, devs, sizeof devs), o.precision, o.batch,
            o.seq, o.accum, o.steps);
    if (!o.synthetic)
        fprintf(stderr, "data: %s, %.0f train / %.0f validation tokens; unigram baseline %.3f nats\n",
                o.data, ss.train_tokens, ss.val_tokens, ss.unigram_baseline);

    if (fe_trainer_run(t)) {
        fail("training");
        fe_trainer_free(t);
        return 1;
    }
    ss = fe_trainer_stats_of(t);
    if (o.bench) {
        /* the FLOP convention of shared/bench/torch_llama_baseline.py */
        double flops = (6.0 * (double)ss.matmul_params + 12.0 * (double)(o.layers * o.dim * o.seq)) * ss.tokens_per_s;
        printf("TRAIN {\"framework\": \"ferric\", \"config\": \"%s\", \"precision\": \"%s\", \"params_M\": %.1f, "
               "\"grad_checkpointing\": %s, \"step_ms\": %.2f, \"tok_s\": %.0f, \"tflops\": %.1f, "
               "\"mfu_989\": %.1f, \"peak_GiB\": %.2f}\n",
               o.preset, o.precision, (double)ss.params / 1e6, o.grad_ckpt ? "true" : "false", ss.step_ms,
               ss.tokens_per_s, flops / 1e12, flops / 989e12 * 100, (double)ss.peak_bytes / (1 << 30));
    } else {
        fprintf(stderr, "done: %" PRId64 " steps in %.1fs; final validation loss %.4f vs unigram baseline %.3f\n",
                o.steps - ss.first_step, ss.elapsed_s, ss.last_val_loss, ss.unigram_baseline);
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
            fe_llama_generate(fe_trainer_model(t), ids, np, o.sample_tokens, &sc, ids) == FE_OK &&
            fe_bytes_decode(ids, total, text) == FE_OK) {
            text[total] = 0;
            printf("\n--- sample (temperature %.2f) ---\n%s\n", o.temperature, text);
        } else {
            fprintf(stderr, "sampling failed: %s\n", fe_last_error());
        }
        free(ids), free(text);
    }
    fe_trainer_free(t);
    return 0;
}
