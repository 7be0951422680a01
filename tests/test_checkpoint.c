/* Checkpoints: a killed and resumed run continues bit for bit; damaged, foreign or
 * half-written checkpoints are refused or skipped cleanly. */
#include "ferric/checkpoint.h"
#include "ferric/trainer.h"
#include "test.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define NSTEPS 12
#define CKPT_AT 5

/* ---- helpers ------------------------------------------------------------------------ */

/* ~24 KB of pseudo-English from a fixed word list and a fixed LCG. */
static fe_dataset *make_text(void) {
    static const char *words[] = {"the", "of", "and", "a", "to", "in", "is", "you", "that", "it",
                                  "he", "was", "for", "on", "are", "as", "with", "his", "they", "I",
                                  "Elizabeth", "Darcy", "sister", "letter", "ball", "Mr.", "said"};
    int n = 24000;
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    uint32_t r = 12345;
    int at = 0;
    while (at < n) {
        r = r * 1103515245u + 12345u;
        const char *w = words[(r >> 16) % (sizeof words / sizeof *words)];
        for (const char *c = w; *c && at < n; c++) tok[at++] = (unsigned char)*c;
        if (at < n) tok[at++] = (r >> 8) % 9 == 0 ? '.' : ' ';
    }
    fe_dataset *ds = fe_dataset_from_tokens(tok, n);
    free(tok);
    return ds;
}

static void make_tmpdir(char *out, size_t n) {
    snprintf(out, n, "/tmp/fe_ckpt_XXXXXX");
    CHECK(mkdtemp(out) != NULL);
}

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

typedef struct record {
    double loss[NSTEPS + 1];
} record;

static void on_event(const fe_trainer_event *ev, void *user) {
    record *r = user;
    if (ev->kind == FE_TRAINER_STEP && ev->step >= 1 && ev->step <= NSTEPS) r->loss[ev->step] = ev->loss;
}

static fe_trainer_options tiny(fe_dataset *ds, const char *dir, fe_dtype precision, record *rec) {
    fe_trainer_options o = fe_trainer_defaults();
    o.model = (fe_llama_config){.vocab_size = 256, .dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1,
                                .ffn_dim = 64, .norm_eps = 1e-5, .rope_theta = 10000};
    o.dataset = ds, o.val_frac = 0.1;
    o.batch = 4, o.seq = 16, o.steps = NSTEPS, o.warmup = 2, o.lr = 1e-2, o.min_lr = 1e-3;
    o.eval_every = 0, o.eval_batches = 2, o.ckpt_every = CKPT_AT, o.run_dir = dir;
    o.precision = precision, o.seed = 7;
    o.on_event = on_event, o.user = rec;
    return o;
}

/* All parameters of p as host bytes (f32 or f64 as stored: a cast would hide nothing
 * here because both sides are cast the same way). */
static size_t params_bytes(fe_params *p, unsigned char **out) {
    size_t total = 0;
    for (int i = 0; i < fe_params_count(p); i++) total += (size_t)fe_numel(fe_params_at(p, i)) * sizeof(double);
    unsigned char *b = malloc(total ? total : 1);
    size_t at = 0;
    for (int i = 0; i < fe_params_count(p) && b; i++) {
        fe_tensor *t = fe_params_at(p, i);
        CHECK(fe_to_host(t, b + at, FE_F64) == FE_OK);
        at += (size_t)fe_numel(t) * sizeof(double);
    }
    *out = b;
    return total;
}

/* Train NSTEPS uninterrupted; then CKPT_AT+2 steps (a checkpoint at CKPT_AT), kill,
 * resume with fresh objects and go on to NSTEPS: the same losses and weights, bit for bit. */
static void resume_is_bit_identical(fe_dtype precision) {
    fe_dataset *ds = make_text();
    char d1[64], d2[64];
    make_tmpdir(d1, sizeof d1), make_tmpdir(d2, sizeof d2);
    record ra = {{0}}, rb = {{0}}, rc = {{0}};

    fe_trainer_options o = tiny(ds, d1, precision, &ra);
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    unsigned char *wa = NULL, *wb = NULL;
    size_t na = t ? params_bytes(fe_trainer_params(t), &wa) : 0;
    fe_trainer_free(t);

    o = tiny(ds, d2, precision, &rb);
    t = fe_trainer_new(&o);
    for (int i = 0; t && i < CKPT_AT + 2; i++) CHECK(fe_trainer_step(t) == FE_OK);
    fe_trainer_free(t); /* the kill: steps 6 and 7 are lost */
    fe_manual_seed(999); /* whatever the global generator holds now must not matter */

    o = tiny(ds, d2, precision, &rc);
    o.resume = true;
    t = fe_trainer_new(&o);
    CHECK(t != NULL);
    CHECK(fe_trainer_steps_done(t) == CKPT_AT);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    size_t nb = t ? params_bytes(fe_trainer_params(t), &wb) : 0;
    fe_trainer_free(t);

    for (int s = 1; s <= CKPT_AT; s++) CHECK(memcmp(&ra.loss[s], &rb.loss[s], sizeof(double)) == 0);
    for (int s = CKPT_AT + 1; s <= NSTEPS; s++) {
        if (memcmp(&ra.loss[s], &rc.loss[s], sizeof(double)))
            fprintf(stderr, "  step %d: uninterrupted %.17g, resumed %.17g\n", s, ra.loss[s], rc.loss[s]);
        CHECK(memcmp(&ra.loss[s], &rc.loss[s], sizeof(double)) == 0);
    }
    CHECK(ra.loss[NSTEPS] < ra.loss[1]); /* and it did learn something */
    CHECK(na > 0 && na == nb && wa && wb && memcmp(wa, wb, na) == 0);
    free(wa), free(wb);
    rm_rf(d1), rm_rf(d2);
    fe_dataset_free(ds);
}

TEST(resume_f32_is_bit_identical) { resume_is_bit_identical(FE_F32); }
TEST(resume_bf16_is_bit_identical) { resume_is_bit_identical(FE_BF16); }
TEST(resume_fp16_with_loss_scaler_is_bit_identical) { resume_is_bit_identical(FE_F16); }

/* ---- damaged checkpoints ------------------------------------------------------------- */

/* A run folder with a checkpoint at step 3 of the tiny model. */
static void saved_run(fe_dataset *ds, const char *dir, record *rec) {
    fe_trainer_options o = tiny(ds, dir, FE_F32, rec);
    o.steps = 3;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_trainer_free(t);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) fputs(text, f), fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    s[fread(s, 1, (size_t)n, f)] = 0;
    fclose(f);
    return s;
}

/* Loading dir's checkpoint into a fresh trainer of the tiny model fails with `needle`
 * and leaves its weights and step as they were. */
static void refused(const char *dir, fe_dataset *ds, const char *needle) {
    record rec;
    fe_trainer_options o = tiny(ds, dir, FE_F32, &rec);
    o.steps = 3, o.seed = 8; /* other initial weights than the saved ones */
    /* fe_trainer_new with resume goes through fe_train_checkpoint_load */
    o.resume = true;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, needle);
    /* and the direct call on live objects leaves them alone */
    o.resume = false;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t != NULL);
    if (!t) return;
    unsigned char *before = NULL, *after = NULL;
    size_t n0 = params_bytes(fe_trainer_params(t), &before);
    fe_optimizer *opt = fe_adamw_new(fe_trainer_params(t), NULL);
    fe_train_state s = {.model = fe_trainer_model(t), .master = fe_trainer_params(t), .opt = opt, .step = 42};
    CHECK_ERROR(fe_train_checkpoint_load(dir, &s) != FE_OK, needle);
    size_t n1 = params_bytes(fe_trainer_params(t), &after);
    CHECK(s.step == 42);
    CHECK(n0 == n1 && memcmp(before, after, n0) == 0);
    free(before), free(after);
    fe_optimizer_free(opt);
    fe_trainer_free(t);
}

TEST(truncated_model_file_is_refused) {
    fe_dataset *ds = make_text();
    char d[64], p[128];
    make_tmpdir(d, sizeof d);
    record rec;
    saved_run(ds, d, &rec);
    snprintf(p, sizeof p, "%s/checkpoint/model.safetensors", d);
    struct stat sb;
    CHECK(stat(p, &sb) == 0);
    CHECK(truncate(p, sb.st_size - 100) == 0);
    refused(d, ds, "model.safetensors is unreadable, truncated or corrupted");
    rm_rf(d);
    fe_dataset_free(ds);
}

TEST(corrupted_state_json_is_refused) {
    fe_dataset *ds = make_text();
    char d[64], p[128];
    make_tmpdir(d, sizeof d);
    record rec;
    saved_run(ds, d, &rec);
    snprintf(p, sizeof p, "%s/checkpoint/state.json", d);
    char *good = read_text(p);
    CHECK(good != NULL);
    if (!good) return;
    write_text(p, "{\"format\": 1, \"step\": 3, \"model\": {");
    refused(d, ds, "is not valid JSON");
    /* a missing field */
    char *bad = strdup(good);
    char *at = strstr(bad, "\"step\"");
    CHECK(at != NULL);
    if (at) memcpy(at, "\"stop\"", 6);
    write_text(p, bad);
    refused(d, ds, "the field 'step' is missing");
    /* another format number */
    strcpy(bad, good);
    at = strstr(bad, "\"format\":");
    CHECK(at != NULL);
    if (at) {
        char *digit = at + strlen("\"format\":");
        while (*digit == ' ' || *digit == '\t') digit++;
        *digit = '7';
    }
    write_text(p, bad);
    refused(d, ds, "has format 7; this build reads format 1");
    /* the optimizer's step count missing */
    strcpy(bad, good);
    at = strstr(bad, "\"optimizer\"");
    at = at ? strstr(at, "\"step\"") : NULL;
    CHECK(at != NULL);
    if (at) memcpy(at, "\"stap\"", 6);
    write_text(p, bad);
    refused(d, ds, "the optimizer value 'step' is missing");
    free(bad), free(good);
    rm_rf(d);
    fe_dataset_free(ds);
}

TEST(checkpoint_of_another_shape_is_refused) {
    fe_dataset *ds = make_text();
    char d[64];
    make_tmpdir(d, sizeof d);
    record rec;
    saved_run(ds, d, &rec);
    fe_trainer_options o = tiny(ds, d, FE_F32, &rec);
    o.model.dim = 48, o.model.n_heads = 3, o.model.n_kv_heads = 3, o.resume = true;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "another shape: dim 32, this model has 48");
    o = tiny(ds, d, FE_F32, &rec);
    o.model.n_layers = 3, o.resume = true;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "n_layers 2, this model has 3");
    rm_rf(d);
    fe_dataset_free(ds);
}

TEST(no_checkpoint_is_an_io_error) {
    fe_dataset *ds = make_text();
    char d[64];
    make_tmpdir(d, sizeof d);
    record rec;
    fe_trainer_options o = tiny(ds, d, FE_F32, &rec);
    o.resume = true;
    CHECK_ERROR(fe_trainer_new(&o) == NULL, "no checkpoint to resume");
    CHECK(fe_last_status() == FE_OK); /* CHECK_ERROR cleared it */
    rm_rf(d);
    fe_dataset_free(ds);
}

/* ---- killed during a save ----------------------------------------------------------------- */

/* Step count and first weight loaded from dir into a fresh tiny trainer. */
static int64_t resumed_step(fe_dataset *ds, const char *dir) {
    record rec;
    fe_trainer_options o = tiny(ds, dir, FE_F32, &rec);
    o.resume = true;
    fe_trainer *t = fe_trainer_new(&o);
    int64_t s = t ? fe_trainer_steps_done(t) : -1;
    fe_trainer_free(t);
    return s;
}

TEST(killed_while_writing_keeps_the_last_checkpoint) {
    fe_dataset *ds = make_text();
    char d[64], p[160];
    make_tmpdir(d, sizeof d);
    record rec;
    saved_run(ds, d, &rec); /* checkpoint at step 3 */
    /* a stray, half-written checkpoint.new */
    snprintf(p, sizeof p, "%s/checkpoint.new", d);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/checkpoint.new/model.safetensors", d);
    write_text(p, "\x40\x00\x00\x00\x00\x00\x00\x00{\"model.embed");
    CHECK(resumed_step(ds, d) == 3);
    rm_rf(d);
    fe_dataset_free(ds);
}

TEST(killed_between_the_renames_finds_a_complete_checkpoint) {
    fe_dataset *ds = make_text();
    char d[64], a[160], b[160];
    make_tmpdir(d, sizeof d);
    record rec;
    saved_run(ds, d, &rec);
    /* only checkpoint.old: the first rename happened, the second did not, and the new
     * folder was lost too (the worst case) */
    snprintf(a, sizeof a, "%s/checkpoint", d);
    snprintf(b, sizeof b, "%s/checkpoint.old", d);
    CHECK(rename(a, b) == 0);
    CHECK(resumed_step(ds, d) == 3);
    /* with a half-written checkpoint.new beside it, checkpoint.old still wins */
    snprintf(a, sizeof a, "%s/checkpoint.new", d);
    CHECK(mkdir(a, 0755) == 0);
    snprintf(a, sizeof a, "%s/checkpoint.new/state.json", d);
    write_text(a, "{\"format\": 1, \"st");
    CHECK(resumed_step(ds, d) == 3);
    /* the next save must not drop checkpoint.old before its successor is in place, and
     * leaves a single clean checkpoint */
    fe_trainer_options o = tiny(ds, d, FE_F32, &rec);
    o.resume = true, o.steps = 4;
    fe_trainer *t = fe_trainer_new(&o);
    CHECK(t && fe_trainer_run(t) == FE_OK);
    fe_trainer_free(t);
    struct stat sb;
    snprintf(a, sizeof a, "%s/checkpoint.old", d);
    CHECK(stat(a, &sb) != 0);
    snprintf(a, sizeof a, "%s/checkpoint.new", d);
    CHECK(stat(a, &sb) != 0);
    CHECK(resumed_step(ds, d) == 4);
    rm_rf(d);
    fe_dataset_free(ds);
}

/* ---- the data loader's position ------------------------------------------------------------ */

TEST(loader_position_is_restored) {
    fe_dataset *ds = make_text();
    char d[64];
    make_tmpdir(d, sizeof d);
    fe_llama_config mc = {.vocab_size = 256, .dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                          .ffn_dim = 32, .max_seq = 16, .norm_eps = 1e-5, .rope_theta = 10000};
    fe_loader_config lc = {.batch = 4, .seq_len = 16, .seed = 3, .shuffle = true, .prefetch = 2,
                           .device = FE_DEVICE_CPU};
    fe_llama *m = fe_llama_new(&mc, FE_F32, FE_DEVICE_CPU);
    fe_optimizer *opt = fe_adamw_new(fe_llama_params(m), NULL);
    fe_loader *l = fe_loader_new(ds, &lc);
    int64_t per_epoch = fe_loader_batches_per_epoch(l);
    /* run past an epoch boundary so that the epoch matters too */
    int64_t skip = per_epoch + 3;
    for (int64_t i = 0; i < skip; i++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x, *y;
        CHECK(fe_loader_next(l, &x, &y) == FE_OK);
        fe_scope_end(s);
    }
    fe_train_state st = {.model = m, .master = fe_llama_params(m), .opt = opt, .train_loader = l, .step = 9};
    CHECK(fe_train_checkpoint_save(d, &st) == FE_OK);
    int32_t want[2][64], got[2][64];
    for (int k = 0; k < 2; k++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x, *y;
        CHECK(fe_loader_next(l, &x, &y) == FE_OK);
        CHECK(fe_to_host(x, want[k], FE_I32) == FE_OK);
        fe_scope_end(s);
    }
    fe_loader_free(l);
    /* a fresh loader (at batch 0) resumed from the checkpoint */
    l = fe_loader_new(ds, &lc);
    st.train_loader = l, st.step = 0;
    CHECK(fe_train_checkpoint_load(d, &st) == FE_OK);
    CHECK(st.step == 9);
    fe_loader_state ls = fe_loader_get_state(l);
    CHECK(ls.epoch == 1 && ls.index == 3);
    for (int k = 0; k < 2; k++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x, *y;
        CHECK(fe_loader_next(l, &x, &y) == FE_OK);
        CHECK(fe_to_host(x, got[k], FE_I32) == FE_OK);
        fe_scope_end(s);
    }
    CHECK(memcmp(want, got, sizeof want) == 0);
    /* a loader over other data, whose epoch is shorter, refuses the position */
    fe_dataset *small = NULL, *rest = NULL;
    CHECK(fe_dataset_split(ds, 0.995, &small, &rest) == FE_OK);
    fe_loader *l2 = fe_loader_new(small, &lc);
    st.train_loader = l2;
    CHECK_ERROR(fe_train_checkpoint_load(d, &st) != FE_OK, "outside an epoch");
    fe_loader_free(l2), fe_loader_free(l);
    fe_dataset_free(small), fe_dataset_free(rest);
    fe_optimizer_free(opt);
    fe_llama_free(m);
    rm_rf(d);
    fe_dataset_free(ds);
}
