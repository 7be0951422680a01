/* The trainer: learns, logs and checkpoints on its cadences, accumulation is exact. */
#include "ferric/trainer.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <sys/stat.h>
#include <unistd.h>

/* A periodic text: "abcdefghij...z" over and over, learnable from context alone. */
static fe_dataset *periodic_text(int64_t n) {
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    for (int64_t i = 0; i < n; i++) tok[i] = 'a' + (int32_t)(i % 26);
    fe_dataset *ds = fe_dataset_from_tokens(tok, n);
    free(tok);
    return ds;
}

/* Pseudo-random letters and spaces (an LCG): 8000 tokens. */
static fe_dataset *make_words(void) {
    int32_t tok[8000];
    uint32_t r = 99;
    for (int i = 0; i < 8000; i++) {
        r = r * 1664525u + 1013904223u;
        tok[i] = (r >> 24) % 5 == 0 ? ' ' : 'a' + (int32_t)((r >> 16) % 26);
    }
    return fe_dataset_from_tokens(tok, 8000);
}

static fe_trainer_options small_opts(fe_dataset *ds) {
    fe_trainer_options o = fe_trainer_defaults();
    o.model = (fe_llama_config){.vocab_size = 256, .dim = 32, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                                .ffn_dim = 64, .norm_eps = 1e-5, .rope_theta = 10000};
    o.dataset = ds, o.val_frac = 0.1;
    o.batch = 4, o.seq = 16, o.steps = 40, o.warmup = 2, o.lr = 1e-2, o.min_lr = 1e-3;
    o.eval_every = 0, o.eval_batches = 2, o.ckpt_every = 0, o.run_dir = NULL;
    return o;
}

typedef struct seen {
    int steps, evals, ckpts;
    double first_loss, last_loss, last_val, lr[64];
    int64_t eval_at[16], ckpt_at[16];
} seen;

static void on_event(const fe_trainer_event *ev, void *user) {
    seen *s = user;
    if (ev->kind == FE_TRAINER_STEP) {
        if (!s->steps) s->first_loss = ev->loss;
        s->last_loss = ev->loss;
        if (ev->step < 64) s->lr[ev->step] = ev->lr;
        s->steps++;
    } else if (ev->kind == FE_TRAINER_EVAL) {
        if (s->evals < 16) s->eval_at[s->evals] = ev->step;
        s->evals++;
        s->last_val = ev->val_loss;
    } else {
        if (s->ckpts < 16) s->ckpt_at[s->ckpts] = ev->step;
        s->ckpts++;
    }
}

TEST(trainer_reduces_the_loss) {
    fe_dataset *ds = periodic_text(8000);
    fe_trainer_options o = small_opts(ds);
    seen s = {0};
    o.on_event = on_event, o.user = &s;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t != NULL);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    CHECK(s.steps == 40 && s.evals == 1);
    /* starts near ln(256) = 5.55, a periodic text is learnt well below ln(26) = 3.26 */
    CHECK_NEAR(s.first_loss, log(256.0), 0.5);
    CHECK(s.last_loss < 1.5);
    CHECK(s.last_val < 1.5);
    fe_trainer_stats st = fe_trainer_stats_of(t);
    CHECK_NEAR(st.last_val_loss, s.last_val, 0);
    CHECK_NEAR(st.unigram_baseline, log(26.0), 0.01); /* 26 letters, near-uniform */
    CHECK(st.params == fe_params_numel(fe_llama_params(fe_trainer_model(t))));
    /* the schedule: warmup 2 steps to 1e-2, then cosine down to 1e-3 at the end */
    CHECK_NEAR(s.lr[1], 5e-3, 1e-12);
    CHECK_NEAR(s.lr[2], 1e-2, 1e-12);
    CHECK(s.lr[40] < 1.1e-3);
    CHECK_ERROR(fe_trainer_step(t) != FE_OK, "all 40 steps are done");
    fe_trainer_free(t);
    fe_dataset_free(ds);
}

static int count_lines(const char *path, const char *key, int64_t *steps, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        CHECK(j != NULL);
        if (j && cJSON_GetObjectItemCaseSensitive(j, key)) {
            if (n < max) steps[n] = (int64_t)cJSON_GetObjectItemCaseSensitive(j, "step")->valuedouble;
            n++;
        }
        cJSON_Delete(j);
    }
    fclose(f);
    return n;
}

TEST(cadences_write_metrics_and_checkpoints) {
    fe_dataset *ds = periodic_text(8000);
    char d[64] = "/tmp/fe_trainer_XXXXXX", p[128];
    CHECK(mkdtemp(d) != NULL);
    fe_trainer_options o = small_opts(ds);
    seen s = {0};
    o.steps = 7, o.eval_every = 3, o.ckpt_every = 4, o.log_every = 2, o.run_dir = d;
    o.on_event = on_event, o.user = &s;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_trainer_free(t);
    /* loss read back at 2, 4, 6 and the last step; validation at 3, 6 and the end;
     * checkpoints at 4 and the end */
    CHECK(s.steps == 4);
    CHECK(s.evals == 3 && s.eval_at[0] == 3 && s.eval_at[1] == 6 && s.eval_at[2] == 7);
    CHECK(s.ckpts == 2 && s.ckpt_at[0] == 4 && s.ckpt_at[1] == 7);
    int64_t at[16];
    snprintf(p, sizeof p, "%s/metrics.jsonl", d);
    CHECK(count_lines(p, "val_loss", at, 16) == 3);
    CHECK(at[0] == 3 && at[1] == 6 && at[2] == 7);
    CHECK(count_lines(p, "loss", at, 16) == 4);
    CHECK(at[0] == 2 && at[1] == 4 && at[2] == 6 && at[3] == 7);
    struct stat sb;
    const char *files[] = {"checkpoint/model.safetensors", "checkpoint/optimizer.safetensors",
                           "checkpoint/state.json", "loss.svg"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", d, files[i]);
        CHECK(stat(p, &sb) == 0 && sb.st_size > 0);
    }
    /* resuming at the end of the run is fine and does nothing more; asking for fewer
     * steps than the checkpoint holds is refused */
    o.resume = true, o.on_event = NULL;
    t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_steps_done(t) == 7);
    fe_trainer_free(t);
    o.steps = 5;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "beyond the 5 steps");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    CHECK(system(cmd) == 0);
    fe_dataset_free(ds);
}

/* Losses and final weights of a short f64 run with (batch, accum). */
typedef struct run_out {
    double loss[8];
    double *w[64]; /* the weights on the host */
    int64_t n[64];
    fe_dtype dt[64];
    int nw;
} run_out;

static void on_loss(const fe_trainer_event *ev, void *user) {
    run_out *r = user;
    if (ev->kind == FE_TRAINER_STEP && ev->step < 8) r->loss[ev->step] = ev->loss;
}

static void accum_run(fe_dataset *ds, int64_t batch, int64_t accum, run_out *r) {
    fe_trainer_options o = small_opts(ds);
    o.precision = FE_F64, o.batch = batch, o.accum = accum, o.steps = 5, o.clip = 0.5;
    o.on_event = on_loss, o.user = r;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_params *p = t ? fe_trainer_params(t) : NULL;
    r->nw = p ? fe_params_count(p) : 0;
    for (int i = 0; i < r->nw && i < 64; i++) {
        fe_tensor *w = fe_params_at(p, i);
        r->n[i] = fe_numel(w), r->dt[i] = fe_dtype_of(w);
        r->w[i] = malloc((size_t)r->n[i] * sizeof(double));
        CHECK(fe_to_host(w, r->w[i], FE_F64) == FE_OK);
    }
    fe_trainer_free(t);
}

TEST(accumulation_equals_a_bigger_batch_in_f64) {
    /* the loader's window order does not depend on the batch size, so 2 micro-batches of
     * 2 sequences see exactly the 4 sequences of one batch of 4 */
    fe_dataset *ds = make_words();
    run_out a = {0}, b = {0};
    accum_run(ds, 2, 2, &a);
    accum_run(ds, 4, 1, &b);
    for (int s = 1; s <= 5; s++) CHECK_NEAR(a.loss[s], b.loss[s], 1e-12);
    CHECK(a.nw == b.nw && a.nw > 0);
    double worst = 0;
    for (int i = 0; i < a.nw && i < b.nw && i < 64; i++) {
        CHECK(a.dt[i] == FE_F64 && a.n[i] == b.n[i]);
        for (int64_t k = 0; k < a.n[i]; k++) {
            double d = fabs(a.w[i][k] - b.w[i][k]);
            if (!(d <= worst)) worst = d;
        }
        free(a.w[i]), free(b.w[i]);
    }
    CHECK(worst < 1e-12);
    /* and the run did move the weights, so the comparison means something */
    CHECK(a.loss[5] < a.loss[1]);
    fe_dataset_free(ds);
}

TEST(bad_options_are_refused) {
    fe_trainer_options o = fe_trainer_defaults();
    o.synthetic = true, o.batch = 0;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "batch, seq and accum must be positive");
    o = fe_trainer_defaults();
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "no data");
    o.synthetic = true, o.precision = FE_I32;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "precision must be f32, f64, bf16 or fp16");
    o = fe_trainer_defaults();
    o.synthetic = true, o.model.n_heads = 5;
    CHECK(fe_trainer_new(&o) == NULL);
    o = fe_trainer_defaults();
    o.data_path = "/nonexistent/austen.txt";
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "/nonexistent/austen.txt");
    o = fe_trainer_defaults();
    o.synthetic = true, o.resume = true;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "resume needs a run folder");
    int32_t big[40];
    for (int i = 0; i < 40; i++) big[i] = 300 + i;
    fe_dataset *ds = fe_dataset_from_tokens(big, 40);
    o = fe_trainer_defaults();
    o.dataset = ds;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "token ids up to 339 but the vocabulary is 256");
    fe_dataset_free(ds);
}

TEST(synthetic_run_in_bench_mode_measures) {
    fe_trainer_options o = small_opts(NULL);
    o.dataset = NULL, o.synthetic = true, o.bench = true, o.steps = 5;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_trainer_stats st = fe_trainer_stats_of(t);
    CHECK(st.step_ms > 0 && st.tokens_per_s > 0 && isfinite(st.tokens_per_s));
    CHECK(isnan(st.unigram_baseline) && isnan(st.last_val_loss));
    CHECK(st.matmul_params == st.params - 256 * 32);
    fe_trainer_free(t);
}

/* Per-step losses and gradient norms of a run. */
typedef struct curve {
    double loss[8], norm[8];
} curve;

static void on_curve(const fe_trainer_event *ev, void *user) {
    curve *c = user;
    if (ev->kind == FE_TRAINER_STEP && ev->step < 8) c->loss[ev->step] = ev->loss, c->norm[ev->step] = ev->grad_norm;
}

static void curve_run(fe_dataset *ds, fe_dtype precision, fe_device dev, curve *c) {
    fe_trainer_options o = small_opts(ds);
    o.precision = precision, o.device = dev, o.steps = 6, o.accum = 2, o.clip = 0.5;
    o.on_event = on_curve, o.user = c;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_trainer_free(t);
}

TEST(cuda_mixed_precision_training_matches_cpu) {
    /* the whole step on the GPU (adopted leaf gradients, the fused update reading the
     * bf16/fp16 gradients and writing the compute weights) against the CPU reference */
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device (or ferric was built without CUDA)");
    fe_dataset *ds = make_words();
    fe_dtype precs[] = {FE_BF16, FE_F16, FE_F32};
    for (int k = 0; k < 3; k++) {
        curve g = {{0}}, h = {{0}};
        curve_run(ds, precs[k], (fe_device){FE_CUDA, 0}, &g);
        curve_run(ds, precs[k], FE_DEVICE_CPU, &h);
        for (int s = 1; s <= 6; s++) {
            printf("  %s step %d: loss cuda %.5f cpu %.5f, norm cuda %.5f cpu %.5f\n",
                   fe_dtype_name(precs[k]), s, g.loss[s], h.loss[s], g.norm[s], h.norm[s]);
            CHECK(fabs(g.loss[s] - h.loss[s]) < 0.03);
            CHECK(fabs(g.norm[s] - h.norm[s]) < (s == 1 ? 0.03 : 0.1) * h.norm[s]);
        }
        CHECK(g.loss[6] < g.loss[1] && h.norm[1] > 0.5); /* it learns, and clipping binds */
    }
    fe_dataset_free(ds);
}
