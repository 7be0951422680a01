/* Hugging Face folders <-> fe_llama, the KV cache and cached generation. */
#include "ferric/hf.h"
#include "test.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static fe_llama_config small_cfg(void) {
    return (fe_llama_config){.vocab_size = 61,
                             .dim = 24,
                             .n_layers = 2,
                             .n_heads = 4,
                             .n_kv_heads = 4,
                             .head_dim = 6,
                             .ffn_dim = 40,
                             .max_seq = 48,
                             .norm_eps = 1e-5,
                             .rope_theta = 10000.0,
                             .init_std = 0.3};
}

/* A fresh temporary folder (path in buf). */
static const char *tmpdir(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/fe_hf_test_XXXXXX");
    return mkdtemp(buf);
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static const int32_t k_tokens[9] = {3, 17, 42, 0, 60, 8, 8, 25, 11};

/* Logits (1, 9, V) of the fixed tokens as f64 into out (malloc'ed). */
static double *logits_of(fe_llama *m) {
    fe_scope *s = fe_scope_begin();
    fe_device dev = fe_device_of(fe_llama_inv_freq(m));
    fe_tensor *idx = fe_from_data(k_tokens, 2, (int64_t[]){1, 9}, FE_I32, dev);
    fe_tensor *lg = fe_llama_forward(m, idx);
    int64_t n = lg ? fe_numel(lg) : 0;
    double *out = n ? malloc((size_t)n * sizeof *out) : NULL;
    if (out && fe_to_host(lg, out, FE_F64)) {
        free(out);
        out = NULL;
    }
    fe_scope_end(s);
    return out;
}

static void round_trip(fe_llama_config c, fe_dtype dt) {
    char dir[64];
    if (!tmpdir(dir, sizeof dir)) {
        CHECK(!"mkdtemp");
        return;
    }
    fe_manual_seed(11);
    fe_llama *m = fe_llama_new(&c, dt, FE_DEVICE_CPU);
    CHECK(m != NULL);
    CHECK(fe_llama_save_hf(m, dir) == FE_OK);
    fe_rng_state before = fe_rng_get_state();
    fe_llama *r = fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU);
    CHECK(r != NULL);
    CHECK(fe_rng_get_state().offset == before.offset); /* loading draws no random numbers */
    if (m && r) {
        const fe_llama_config *rc = fe_llama_config_of(r);
        CHECK(rc->vocab_size == c.vocab_size && rc->dim == c.dim && rc->n_layers == c.n_layers);
        CHECK(rc->n_heads == c.n_heads && rc->n_kv_heads == c.n_kv_heads);
        CHECK(rc->head_dim == c.head_dim && rc->ffn_dim == c.ffn_dim && rc->max_seq == c.max_seq);
        CHECK(rc->norm_eps == c.norm_eps && rc->rope_theta == c.rope_theta);
        CHECK(rc->tie_embeddings == c.tie_embeddings);
        CHECK(rc->rope_scaling.llama3 == c.rope_scaling.llama3);
        CHECK(rc->rope_scaling.factor == c.rope_scaling.factor);
        CHECK(rc->rope_scaling.original_max_position_embeddings ==
              c.rope_scaling.original_max_position_embeddings);
        CHECK(fe_params_count(fe_llama_params(r)) == fe_params_count(fe_llama_params(m)));
        CHECK(fe_dtype_of(fe_params_at(fe_llama_params(r), 0)) == dt);
        double *a = logits_of(m), *b = logits_of(r);
        CHECK(a && b);
        if (a && b) {
            int bad = 0;
            for (int i = 0; i < 9 * 61; i++)
                bad += a[i] != b[i];
            CHECK(bad == 0);
        }
        free(a), free(b);
        /* the config on disk is one transformers reads */
        fe_hf_config hf;
        CHECK(fe_hf_config_load(dir, &hf) == FE_OK);
        CHECK(hf.hidden_size == c.dim && hf.num_key_value_heads == c.n_kv_heads);
        CHECK(!strcmp(hf.torch_dtype, dt == FE_F32 ? "float32" : "bfloat16"));
        CHECK(!strcmp(hf.rope_scaling_type, c.rope_scaling.llama3 ? "llama3" : ""));
        /* tied models store no lm_head */
        fe_weights *w = fe_weights_open(dir);
        CHECK(w != NULL);
        if (w) {
            fe_clear_error();
            CHECK((fe_weights_file_of(w, "lm_head.weight") != NULL) == !c.tie_embeddings);
            const fe_safetensors *f = fe_weights_file_of(w, "model.norm.weight");
            CHECK(f && fe_safetensors_metadata(f, "format") &&
                  !strcmp(fe_safetensors_metadata(f, "format"), "pt"));
            fe_weights_close(w);
        }
    }
    fe_llama_free(m);
    fe_llama_free(r);
    rm_tree(dir);
}

TEST(save_load_round_trip_plain) { round_trip(small_cfg(), FE_F32); }

TEST(save_load_round_trip_gqa_tied_llama3) {
    fe_llama_config c = small_cfg();
    c.n_kv_heads = 2;
    c.tie_embeddings = true;
    c.rope_theta = 500000.0;
    c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 16};
    round_trip(c, FE_F32);
    c.n_kv_heads = 1;
    round_trip(c, FE_BF16);
}

TEST(load_casts_to_requested_dtype) {
    char dir[64];
    CHECK(tmpdir(dir, sizeof dir) != NULL);
    fe_llama_config c = small_cfg();
    fe_manual_seed(5);
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_llama_save_hf(m, dir) == FE_OK);
    fe_llama *r64 = fe_llama_load_hf(dir, FE_F64, FE_DEVICE_CPU);
    fe_llama *r16 = fe_llama_load_hf(dir, FE_BF16, FE_DEVICE_CPU);
    CHECK(r64 && r16);
    if (r64 && r16) {
        CHECK(fe_dtype_of(fe_params_at(fe_llama_params(r64), 3)) == FE_F64);
        CHECK(fe_dtype_of(fe_params_at(fe_llama_params(r16), 3)) == FE_BF16);
        double *a = logits_of(m), *b = logits_of(r64), *h = logits_of(r16);
        double num = 0, den = 0, numh = 0;
        for (int i = 0; a && b && h && i < 9 * 61; i++) {
            num += (a[i] - b[i]) * (a[i] - b[i]);
            numh += (a[i] - h[i]) * (a[i] - h[i]);
            den += a[i] * a[i];
        }
        CHECK(a && b && h && den > 0);
        CHECK(sqrt(num / den) < 1e-5);  /* f32 weights, f64 arithmetic */
        CHECK(sqrt(numh / den) < 5e-2); /* bf16 weights and arithmetic */
        CHECK(sqrt(numh / den) > 1e-5); /* ... which really did round */
        free(a), free(b), free(h);
    }
    CHECK_ERROR(fe_llama_load_hf(dir, FE_I32, FE_DEVICE_CPU) == NULL, "cannot load the model as");
    fe_llama_free(m), fe_llama_free(r64), fe_llama_free(r16);
    rm_tree(dir);
}

/* Save the small model's tensors except `skip`, with `bad` (if any) replaced by a
 * wrongly shaped tensor, and a matching config. */
static void write_folder(const char *dir, const char *skip, const char *bad) {
    fe_llama_config c = small_cfg();
    fe_manual_seed(1);
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_llama_save_hf(m, dir) == FE_OK);
    fe_params *p = fe_llama_params(m);
    int n = fe_params_count(p), k = 0;
    fe_named_tensor nt[64];
    fe_tensor *wrong = fe_zeros(2, (int64_t[]){24, 23}, FE_F32, FE_DEVICE_CPU);
    for (int i = 0; i < n && k < 64; i++) {
        const char *name = fe_params_name(p, i);
        if (skip && !strcmp(name, skip)) continue;
        nt[k++] = (fe_named_tensor){name, bad && !strcmp(name, bad) ? wrong : fe_params_at(p, i)};
    }
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fe_kv meta = {"format", "pt"};
    CHECK(fe_safetensors_save(path, nt, k, &meta, 1) == FE_OK);
    fe_free(wrong);
    fe_llama_free(m);
}

TEST(bad_folders_name_the_problem) {
    char dir[64], path[256];
    CHECK(tmpdir(dir, sizeof dir) != NULL);
    /* no config.json */
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL, "config.json");
    CHECK_ERROR(fe_llama_load_hf("/nonexistent/folder", FE_F32, FE_DEVICE_CPU) == NULL,
                "/nonexistent/folder");
    /* a config but no weights */
    fe_hf_config hf;
    fe_llama_config c = small_cfg();
    CHECK(fe_hf_config_from_llama(&c, FE_F32, &hf) == FE_OK);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fe_hf_config_save(path, &hf) == FE_OK);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL, "safetensors");
    /* a missing tensor, named with its shape */
    write_folder(dir, "model.layers.1.self_attn.k_proj.weight", NULL);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL,
                "missing tensor model.layers.1.self_attn.k_proj.weight (expected shape (24, 24))");
    write_folder(dir, "model.embed_tokens.weight", NULL);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL,
                "missing tensor model.embed_tokens.weight");
    write_folder(dir, "lm_head.weight", NULL);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_F32, FE_DEVICE_CPU) == NULL,
                "missing tensor lm_head.weight");
    /* a wrong shape */
    write_folder(dir, NULL, "model.layers.0.mlp.down_proj.weight");
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL,
                "model.layers.0.mlp.down_proj.weight has shape (24, 23), expected (24, 40)");
    /* a truncated file */
    write_folder(dir, NULL, NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    CHECK(truncate(path, sb.st_size - 100) == 0);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL, "model.safetensors");
    /* a config ferric's Llama cannot run */
    CHECK(fe_hf_config_from_llama(&c, FE_F32, &hf) == FE_OK);
    hf.attention_bias = true;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fe_hf_config_save(path, &hf) == FE_OK);
    CHECK_ERROR(fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU) == NULL, "attention_bias");
    /* saving into a path that is a file */
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_save_hf(m, path) != FE_OK, "not a folder");
    fe_llama_free(m);
    rm_tree(dir);
}

/* Greedy continuation recomputing the whole prefix each step, and the last logits row of
 * each step (f64). */
static void full_recompute(fe_llama *m, const int32_t *prompt, int n_prompt, int n_new,
                           int32_t *out, double *rows) {
    int64_t V = fe_llama_config_of(m)->vocab_size;
    memcpy(out, prompt, (size_t)n_prompt * sizeof *out);
    for (int s = 0; s < n_new; s++) {
        int len = n_prompt + s;
        fe_scope *sc = fe_scope_begin();
        fe_tensor *idx = fe_from_data(out, 2, (int64_t[]){1, len}, FE_I32, FE_DEVICE_CPU);
        fe_tensor *last = fe_slice(fe_llama_forward(m, idx), 1, len - 1, len, 1);
        CHECK(fe_to_host(last, rows + s * V, FE_F64) == FE_OK);
        fe_scope_end(sc);
        int best = 0;
        for (int i = 1; i < V; i++)
            if (rows[s * V + i] > rows[s * V + best]) best = i;
        out[len] = best;
    }
}

TEST(kv_cache_matches_full_recompute) {
    fe_llama_config c = small_cfg();
    c.n_kv_heads = 2;
    c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 16};
    fe_manual_seed(3);
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    const int np = 5, nn = 20;
    int32_t prompt[5] = {7, 1, 33, 59, 2}, ref[25], got[25], got2[25];
    double *rows = malloc(sizeof(double) * nn * 61);
    full_recompute(m, prompt, np, nn, ref, rows);
    fe_generate_stats st;
    CHECK(fe_llama_generate_cached(m, prompt, np, nn, NULL, got, NULL, NULL, &st) == FE_OK);
    CHECK(!memcmp(ref, got, sizeof ref));
    CHECK(st.n_prompt == np && st.n_generated == nn && st.prefill_s >= 0 && st.decode_s >= 0);
    CHECK(fe_llama_generate(m, prompt, np, nn, NULL, got2) == FE_OK); /* uses the cache */
    CHECK(!memcmp(ref, got2, sizeof ref));
    /* step by step through the cache: the same logits */
    fe_kv_cache *kv = fe_kv_cache_new(m, 30);
    CHECK(kv && fe_kv_cache_capacity(kv) == 30 && fe_kv_cache_len(kv) == 0);
    double row[61], worst = 0;
    for (int s = 0; s < nn && kv; s++) {
        fe_scope *sc = fe_scope_begin();
        int T = s == 0 ? np : 1, at = np + s - T;
        fe_tensor *idx = fe_from_data(ref + at, 2, (int64_t[]){1, T}, FE_I32, FE_DEVICE_CPU);
        fe_tensor *lg = fe_llama_forward_cached(m, idx, kv, true);
        CHECK(lg && fe_dim(lg, 1) == 1 && fe_dim(lg, 2) == 61);
        CHECK(fe_to_host(lg, row, FE_F64) == FE_OK);
        for (int i = 0; i < 61; i++) {
            double d = fabs(row[i] - rows[s * 61 + i]);
            if (d > worst) worst = d;
        }
        fe_scope_end(sc);
        CHECK(fe_kv_cache_len(kv) == np + s);
    }
    CHECK(worst < 1e-10);
    /* a prompt of several tokens after a rewind gives all rows */
    CHECK(fe_kv_cache_truncate(kv, 3) == FE_OK && fe_kv_cache_len(kv) == 3);
    CHECK_ERROR(fe_kv_cache_truncate(kv, 4) != FE_OK, "cannot truncate");
    fe_tensor *idx = fe_from_data(ref + 3, 2, (int64_t[]){1, 4}, FE_I32, FE_DEVICE_CPU);
    fe_tensor *lg = fe_llama_forward_cached(m, idx, kv, false); /* positions 3..6 */
    CHECK(lg && fe_dim(lg, 1) == 4);
    double all[4 * 61];
    CHECK(fe_to_host(lg, all, FE_F64) == FE_OK);
    worst = 0;
    for (int i = 0; i < 61; i++) /* position 6 predicted ref[7]: row of step 2 */
        worst = fmax(worst, fabs(all[3 * 61 + i] - rows[2 * 61 + i]));
    CHECK(worst < 1e-10);
    fe_free(idx), fe_free(lg);
    /* overflow and misuse */
    idx = fe_from_data(ref, 2, (int64_t[]){1, 21}, FE_I32, FE_DEVICE_CPU);
    fe_free(fe_llama_forward_cached(m, idx, kv, true)); /* fills it to 28 of 30 */
    fe_free(idx);
    idx = fe_from_data(ref, 2, (int64_t[]){1, 3}, FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_forward_cached(m, idx, kv, true) == NULL, "overflow the cache");
    CHECK(fe_kv_cache_len(kv) == 28);
    fe_free(idx);
    CHECK_ERROR(fe_kv_cache_new(m, 49) == NULL, "max_len");
    CHECK_ERROR(fe_llama_generate_cached(m, prompt, np, 44, NULL, got, NULL, NULL, NULL) != FE_OK,
                "exceed max_seq");
    fe_kv_cache_free(kv);
    free(rows);
    fe_llama_free(m);
}

static bool stop_at_third(void *ctx, int32_t tok) {
    int *n = ctx;
    (void)tok;
    return ++*n < 3;
}

TEST(sampling_top_k_top_p_and_stop) {
    fe_llama_config c = small_cfg();
    fe_manual_seed(9);
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    int32_t prompt[2] = {4, 5}, g[12], a[12], b[12];
    CHECK(fe_llama_generate_cached(m, prompt, 2, 10, NULL, g, NULL, NULL, NULL) == FE_OK);
    fe_sample_config tiny_p = {.temperature = 1.0, .seed = 1, .top_p = 1e-9};
    CHECK(fe_llama_generate_cached(m, prompt, 2, 10, &tiny_p, a, NULL, NULL, NULL) == FE_OK);
    CHECK(!memcmp(g, a, sizeof g)); /* a nucleus of one token is greedy */
    fe_sample_config sc = {.temperature = 1.5, .top_k = 30, .seed = 4, .top_p = 0.9};
    CHECK(fe_llama_generate_cached(m, prompt, 2, 10, &sc, a, NULL, NULL, NULL) == FE_OK);
    CHECK(fe_llama_generate_cached(m, prompt, 2, 10, &sc, b, NULL, NULL, NULL) == FE_OK);
    CHECK(!memcmp(a, b, sizeof a));
    int n = 0;
    fe_generate_stats st;
    CHECK(fe_llama_generate_cached(m, prompt, 2, 10, &sc, b, stop_at_third, &n, &st) == FE_OK);
    CHECK(n == 3 && st.n_generated == 3 && !memcmp(a, b, 5 * sizeof *a));
    /* hand-made rows: top-p 0.5 over probabilities .4 .3 .2 .1 keeps the first two */
    double lg[4] = {log(0.4), log(0.3), log(0.2), log(0.1)}, scratch[8];
    int seen[4] = {0};
    for (uint64_t s = 0; s < 400; s++) {
        fe_sample_config p = {.temperature = 1.0, .seed = 77, .top_p = 0.5};
        seen[fe_sample_logits(lg, 4, &p, s, scratch)]++;
    }
    CHECK(seen[0] > 150 && seen[1] > 100 && seen[2] == 0 && seen[3] == 0);
    memset(seen, 0, sizeof seen);
    for (uint64_t s = 0; s < 400; s++) {
        fe_sample_config p = {.temperature = 1.0, .seed = 77, .top_k = 3};
        seen[fe_sample_logits(lg, 4, &p, s, scratch)]++;
    }
    CHECK(seen[0] > 100 && seen[1] > 60 && seen[2] > 30 && seen[3] == 0);
    CHECK(fe_sample_logits(lg, 4, NULL, 0, scratch) == 0);
    fe_llama_free(m);
}

TEST(reads_transformers5_rope_parameters) {
    char dir[64], path[256];
    CHECK(tmpdir(dir, sizeof dir) != NULL);
    fe_llama_config c = small_cfg();
    c.rope_theta = 500000.0;
    c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 16};
    fe_manual_seed(2);
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_llama_save_hf(m, dir) == FE_OK);
    /* the config as transformers 5 writes it: theta and scaling inside rope_parameters */
    const char *v5 =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"dtype\": "
        "\"float32\", \"hidden_size\": 24, \"intermediate_size\": 40, \"head_dim\": 6, "
        "\"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"num_hidden_layers\": 2, "
        "\"max_position_embeddings\": 48, \"rms_norm_eps\": 1e-05, \"vocab_size\": 61, "
        "\"rope_parameters\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": "
        "1.0, \"original_max_position_embeddings\": 16, \"rope_theta\": 500000.0, "
        "\"rope_type\": \"llama3\"}, \"tie_word_embeddings\": false}";
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(v5, f) >= 0 && fclose(f) == 0);
    fe_hf_config hf;
    CHECK(fe_hf_folder_config(dir, &hf) == FE_OK);
    CHECK(hf.rope_theta == 500000.0 && !strcmp(hf.rope_scaling_type, "llama3"));
    CHECK(hf.rope_factor == 8.0 && hf.rope_original_max_position_embeddings == 16);
    fe_llama *r = fe_llama_load_hf(dir, FE_DTYPE_STORED, FE_DEVICE_CPU);
    CHECK(r != NULL);
    if (r) {
        CHECK(fe_llama_config_of(r)->rope_theta == 500000.0);
        CHECK(fe_llama_config_of(r)->rope_scaling.llama3);
        double *a = logits_of(m), *b = logits_of(r);
        CHECK(a && b && !memcmp(a, b, sizeof(double) * 9 * 61));
        free(a), free(b);
    }
    /* plain RoPE in the new form */
    f = fopen(path, "w");
    const char *plain =
        "{\"model_type\": \"llama\", \"hidden_size\": 24, \"intermediate_size\": 40,"
        " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 61,"
        " \"rope_parameters\": {\"rope_theta\": 1234.5, \"rope_type\": \"default\"}}";
    CHECK(f && fputs(plain, f) >= 0 && fclose(f) == 0);
    CHECK(fe_hf_folder_config(dir, &hf) == FE_OK);
    CHECK(hf.rope_theta == 1234.5 && hf.rope_scaling_type[0] == 0 && hf.num_key_value_heads == 4);
    fe_llama_free(m), fe_llama_free(r);
    rm_tree(dir);
}
