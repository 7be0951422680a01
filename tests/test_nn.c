/* Llama modules and model: names, init, loss, training, gradients, checkpointing,
 * accumulation, RoPE frequencies, sampling, mixed precision. */
#include "ferric/nn.h"
#include "ferric/train.h"
#include "test.h"

#define B 2
#define T 7

static fe_llama_config tiny(void) {
    return (fe_llama_config){.vocab_size = 61,
                             .dim = 24,
                             .n_layers = 2,
                             .n_heads = 4,
                             .n_kv_heads = 2,
                             .ffn_dim = 40,
                             .max_seq = T,
                             .norm_eps = 1e-5,
                             .rope_theta = 10000.0};
}

/* A fixed batch of nb rows starting at row r0: tokens and next-token targets. */
static void batch(int r0, int nb, fe_tensor **x, fe_tensor **y) {
    int32_t xs[8 * T], ys[8 * T];
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < T; t++) {
            int r = r0 + b;
            xs[b * T + t] = (int32_t)((r * 29 + t * 17 + 3) % 61);
            ys[b * T + t] = (int32_t)((r * 29 + (t + 1) * 17 + 3) % 61);
        }
    *x = fe_from_data(xs, 2, (int64_t[]){nb, T}, FE_I32, FE_DEVICE_CPU);
    *y = fe_from_data(ys, 2, (int64_t[]){nb, T}, FE_I32, FE_DEVICE_CPU);
}

static double loss_of(fe_llama *m, fe_tensor *x, fe_tensor *y) {
    fe_scope *s = fe_scope_begin();
    double l = fe_item(fe_llama_loss(fe_llama_forward(m, x), y));
    fe_scope_end(s);
    return l;
}

static fe_status backward_loss(fe_llama *m, fe_tensor *x, fe_tensor *y, int k) {
    fe_scope *s = fe_scope_begin();
    fe_tensor *l = fe_llama_loss(fe_llama_forward(m, x), y);
    if (k > 1) l = fe_grad_accum_loss(l, k);
    fe_status st = l ? fe_backward(l, NULL) : fe_last_status();
    fe_scope_end(s);
    return st;
}

TEST(parameter_names_count_and_flags) {
    fe_llama_config c = tiny();
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK(m != NULL);
    fe_params *p = fe_llama_params(m);
    /* 1 embedding + 2 layers * 9 + final norm + lm_head */
    CHECK(fe_params_count(p) == 21);
    int64_t C = 24, V = 61, D = 6, F = 40;
    int64_t per_layer = C * 4 * D + 2 * C * 2 * D + 4 * D * C + 3 * C * F + 2 * C;
    CHECK(fe_params_numel(p) == V * C + 2 * per_layer + C + V * C);
    const char *names[] = {"model.embed_tokens.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.1.mlp.gate_proj.weight",
                           "model.layers.1.mlp.up_proj.weight",
                           "model.layers.1.mlp.down_proj.weight",
                           "model.layers.1.input_layernorm.weight",
                           "model.layers.1.post_attention_layernorm.weight",
                           "model.norm.weight",
                           "lm_head.weight"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        CHECK(fe_params_find(p, names[i]) >= 0);
    fe_tensor *k = fe_params_get(p, "model.layers.0.self_attn.k_proj.weight");
    CHECK(fe_dim(k, 0) == 12 && fe_dim(k, 1) == 24);
    fe_tensor *g = fe_params_get(p, "model.layers.1.mlp.down_proj.weight");
    CHECK(fe_dim(g, 0) == 24 && fe_dim(g, 1) == 40);
    int nd = 0;
    for (int i = 0; i < fe_params_count(p); i++) {
        bool norm = strstr(fe_params_name(p, i), "norm") != NULL;
        CHECK(fe_params_no_decay(p, i) == norm);
        nd += fe_params_no_decay(p, i);
    }
    CHECK(nd == 5);
    /* norms start at 1, weights have std 0.02 */
    CHECK_NEAR(fe_item(fe_mean(fe_params_get(p, "model.norm.weight"), 0, NULL, false)), 1.0, 0);
    fe_tensor *e = fe_params_get(p, "model.embed_tokens.weight");
    double sd = sqrt(fe_item(fe_mean(fe_square(e), 0, NULL, false)));
    CHECK_NEAR(sd, 0.02, 0.002);
    fe_llama_free(m);

    c.tie_embeddings = true;
    m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    CHECK(fe_params_count(fe_llama_params(m)) == 20);
    CHECK(fe_params_find(fe_llama_params(m), "lm_head.weight") < 0);
    fe_llama_free(m);
}

TEST(same_seed_same_model) {
    fe_llama_config c = tiny();
    fe_manual_seed(7);
    fe_llama *a = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    fe_manual_seed(7);
    fe_llama *b = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    for (int i = 0; i < fe_params_count(fe_llama_params(a)); i++)
        CHECK(t_maxdiff(fe_params_at(fe_llama_params(a), i), fe_params_at(fe_llama_params(b), i)) ==
              0);
    fe_llama_free(a), fe_llama_free(b);
}

TEST(loss_at_init_is_log_vocab_and_adamw_lowers_it) {
    fe_llama_config c = tiny();
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    fe_tensor *x, *y;
    batch(0, B, &x, &y);
    fe_scope *s = fe_scope_begin();
    fe_tensor *logits = fe_llama_forward(m, x);
    CHECK(logits && fe_ndim(logits) == 3 && fe_dim(logits, 0) == B && fe_dim(logits, 1) == T &&
          fe_dim(logits, 2) == 61);
    fe_scope_end(s);
    double l0 = loss_of(m, x, y);
    CHECK_NEAR(l0, log(61.0), 0.02);
    fe_optimizer *o = fe_adamw_new(fe_llama_params(m), NULL);
    double l = l0;
    for (int k = 0; k < 15; k++) {
        fe_params_zero_grad(fe_llama_params(m));
        CHECK(backward_loss(m, x, y, 1) == FE_OK);
        CHECK(fe_optimizer_step(o, 1e-2) == FE_OK);
    }
    l = loss_of(m, x, y);
    printf("  loss %.4f -> %.4f after 15 AdamW steps\n", l0, l);
    CHECK(l < l0 - 1.0);
    fe_optimizer_free(o);
    fe_llama_free(m);
}

/* Central differences on a few entries of a few parameters (f64). */
static void gradcheck(fe_llama *m, const char **names, int n) {
    fe_tensor *x, *y;
    batch(0, B, &x, &y);
    fe_params *p = fe_llama_params(m);
    fe_params_zero_grad(p);
    CHECK(backward_loss(m, x, y, 1) == FE_OK);
    for (int i = 0; i < n; i++) {
        fe_tensor *t = fe_params_get(p, names[i]);
        CHECK(t && fe_grad(t));
        if (!t || !fe_grad(t)) continue;
        double *w = fe_data(t), *g = fe_data(fe_grad(t));
        int64_t N = fe_numel(t);
        for (int64_t k = 0; k < 3; k++) {
            int64_t j = (k * 7919 + 13 * (i + 1)) % N;
            double w0 = w[j], h = 1e-5;
            w[j] = w0 + h;
            double lp = loss_of(m, x, y);
            w[j] = w0 - h;
            double lm = loss_of(m, x, y);
            w[j] = w0;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(fd - g[j]) / fmax(1e-6, fabs(fd) + fabs(g[j]));
            if (!(err < 1e-5))
                printf("  %s[%lld]: analytic %.10g, numeric %.10g\n", names[i], (long long)j, g[j],
                       fd);
            CHECK(err < 1e-5);
        }
    }
}

TEST(gradcheck_f64_untied) {
    fe_llama_config c = tiny();
    c.init_std = 0.3; /* larger weights so every path carries gradient */
    c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 256};
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    const char *names[] = {"model.embed_tokens.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.1.self_attn.v_proj.weight",
                           "model.layers.1.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight",
                           "model.layers.1.mlp.down_proj.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.1.post_attention_layernorm.weight",
                           "model.norm.weight",
                           "lm_head.weight"};
    gradcheck(m, names, 12);
    fe_llama_free(m);
}

TEST(gradcheck_f64_tied_embeddings) {
    fe_llama_config c = tiny();
    c.init_std = 0.3;
    c.tie_embeddings = true;
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    const char *names[] = {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight"};
    gradcheck(m, names, 2);
    fe_llama_free(m);
}

/* Copy every .grad of p into fresh tensors (owned by the current scope). */
static fe_tensor **grads_of(fe_params *p) {
    int n = fe_params_count(p);
    fe_tensor **g = calloc((size_t)n, sizeof *g);
    for (int i = 0; i < n; i++) {
        fe_tensor *gi = fe_grad(fe_params_at(p, i));
        g[i] = gi ? fe_contiguous(fe_cast(gi, FE_F64)) : NULL;
    }
    return g;
}

static double max_grad_diff(fe_params *p, fe_tensor **g) {
    double worst = 0;
    for (int i = 0; i < fe_params_count(p); i++) {
        fe_tensor *gi = fe_grad(fe_params_at(p, i));
        double d = gi && g[i] ? t_maxdiff(gi, g[i]) : INFINITY;
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

TEST(accumulation_equals_big_batch) {
    fe_llama_config c = tiny();
    c.init_std = 0.2;
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    fe_params *p = fe_llama_params(m);
    fe_tensor *x, *y;
    batch(0, 4, &x, &y);
    CHECK(backward_loss(m, x, y, 1) == FE_OK);
    fe_tensor **big = grads_of(p);
    fe_params_zero_grad(p);
    for (int k = 0; k < 2; k++) { /* two micro-batches of 2 rows */
        fe_tensor *xk, *yk;
        batch(2 * k, 2, &xk, &yk);
        CHECK(backward_loss(m, xk, yk, 2) == FE_OK);
    }
    double d = max_grad_diff(p, big);
    CHECK(d < 1e-10);
    /* and 4 micro-batches of one row */
    fe_params_zero_grad(p);
    for (int k = 0; k < 4; k++) {
        fe_tensor *xk, *yk;
        batch(k, 1, &xk, &yk);
        CHECK(backward_loss(m, xk, yk, 4) == FE_OK);
    }
    CHECK(max_grad_diff(p, big) < 1e-10);
    free(big);
    fe_llama_free(m);
}

TEST(checkpointing_gives_the_same_gradients) {
    fe_llama_config c = tiny();
    c.init_std = 0.2;
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    fe_params *p = fe_llama_params(m);
    fe_tensor *x, *y;
    batch(0, B, &x, &y);
    double l0 = loss_of(m, x, y);
    CHECK(backward_loss(m, x, y, 1) == FE_OK);
    fe_tensor **plain = grads_of(p);
    fe_params_zero_grad(p);
    fe_llama_set_checkpointing(m, true);
    CHECK_NEAR(loss_of(m, x, y), l0, 1e-14);
    CHECK(backward_loss(m, x, y, 1) == FE_OK);
    CHECK(max_grad_diff(p, plain) < 1e-12);
    free(plain);
    fe_llama_free(m);
}

TEST(attention_is_causal) {
    fe_llama_config c = tiny();
    fe_llama *m = fe_llama_new(&c, FE_F64, FE_DEVICE_CPU);
    int32_t a[T] = {1, 2, 3, 4, 5, 6, 7}, b[T] = {1, 2, 3, 40, 50, 60, 0};
    fe_tensor *xa = fe_from_data(a, 2, (int64_t[]){1, T}, FE_I32, FE_DEVICE_CPU);
    fe_tensor *xb = fe_from_data(b, 2, (int64_t[]){1, T}, FE_I32, FE_DEVICE_CPU);
    fe_tensor *la = fe_llama_forward(m, xa), *lb = fe_llama_forward(m, xb);
    /* positions 0..2 see the same prefix: same logits; position 3 differs */
    CHECK(t_maxdiff(fe_slice(la, 1, 0, 3, 1), fe_slice(lb, 1, 0, 3, 1)) < 1e-14);
    CHECK(t_maxdiff(fe_slice(la, 1, 3, 4, 1), fe_slice(lb, 1, 3, 4, 1)) > 1e-6);
    fe_llama_free(m);
}

TEST(rope_inv_freq_plain_and_llama3) {
    fe_tensor *plain = fe_nn_rope_inv_freq(6, 10000.0, NULL, FE_DEVICE_CPU);
    /* theta^(-2i/6): 1, 10000^(-1/3) = 0.0464158883, 10000^(-2/3) = 0.00215443469 */
    double v[3];
    fe_to_host(plain, v, FE_F64);
    CHECK(fe_dtype_of(plain) == FE_F32);
    CHECK_NEAR(v[0], 1.0, 0);
    CHECK_NEAR(v[1], 0.0464158883, 1e-8);
    CHECK_NEAR(v[2], 0.00215443469, 1e-9); /* f32: the exponent 2/3 rounds */
    /* original 256, low 1, high 4, factor 8: wavelens 2 pi / f = 6.28 (high band, kept),
     * 135.4 (medium: smooth = (256 / 135.4 - 1) / 3 = 0.2969..., f * ((1 - s) / 8 + s)),
     * 2916 (low band: f / 8) */
    fe_rope_scaling sc = {true, 8.0, 1.0, 4.0, 256};
    fe_tensor *l3 = fe_nn_rope_inv_freq(6, 10000.0, &sc, FE_DEVICE_CPU);
    fe_to_host(l3, v, FE_F64);
    double f1 = 0.0464158883, w1 = 2 * M_PI / f1, s1 = (256.0 / w1 - 1.0) / 3.0;
    CHECK(s1 > 0 && s1 < 1);
    CHECK_NEAR(v[0], 1.0, 0);
    CHECK_NEAR(v[1], f1 * ((1 - s1) / 8 + s1), 1e-8);
    CHECK_NEAR(v[2], 0.00215443469 / 8, 1e-10);
    CHECK_ERROR(fe_nn_rope_inv_freq(5, 10000.0, NULL, FE_DEVICE_CPU) == NULL, "even");
    sc.high_freq_factor = 0.5;
    CHECK_ERROR(fe_nn_rope_inv_freq(6, 10000.0, &sc, FE_DEVICE_CPU) == NULL, "llama3");
}

TEST(generate_greedy_and_sampled) {
    fe_llama_config c = tiny();
    c.init_std = 0.5; /* peaked logits */
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    int32_t prompt[3] = {5, 9, 11}, out[13], out2[13], out3[13];
    CHECK(fe_llama_generate(m, prompt, 3, 10, NULL, out) == FE_OK); /* longer than max_seq */
    CHECK(out[0] == 5 && out[1] == 9 && out[2] == 11);
    /* the first new token is the argmax of the last logits */
    fe_tensor *x = fe_from_data(prompt, 2, (int64_t[]){1, 3}, FE_I32, FE_DEVICE_CPU);
    double row[61];
    fe_to_host(fe_slice(fe_llama_forward(m, x), 1, 2, 3, 1), row, FE_F64);
    int best = 0;
    for (int i = 1; i < 61; i++)
        if (row[i] > row[best]) best = i;
    CHECK(out[3] == best);
    for (int i = 0; i < 13; i++)
        CHECK(out[i] >= 0 && out[i] < 61);
    fe_sample_config sc = {.temperature = 1.0, .top_k = 1, .seed = 3};
    CHECK(fe_llama_generate(m, prompt, 3, 10, &sc, out2) == FE_OK);
    CHECK(!memcmp(out, out2, sizeof out)); /* top-1 sampling is greedy */
    sc = (fe_sample_config){.temperature = 2.0, .top_k = 20, .seed = 3};
    fe_rng_state before = fe_rng_get_state();
    CHECK(fe_llama_generate(m, prompt, 3, 10, &sc, out2) == FE_OK);
    CHECK(fe_llama_generate(m, prompt, 3, 10, &sc, out3) == FE_OK);
    CHECK(!memcmp(out2, out3, sizeof out2)); /* same seed, same sample */
    CHECK(fe_rng_get_state().offset == before.offset);
    prompt[1] = 61;
    CHECK_ERROR(fe_llama_generate(m, prompt, 3, 2, NULL, out) != FE_OK, "outside the vocabulary");
    fe_llama_free(m);
}

TEST(bad_configs_and_inputs) {
    fe_llama_config c = tiny();
    c.n_kv_heads = 3;
    CHECK_ERROR(fe_llama_new(&c, FE_F32, FE_DEVICE_CPU) == NULL, "n_kv_heads");
    c = tiny();
    c.vocab_size = 0;
    CHECK_ERROR(fe_llama_new(&c, FE_F32, FE_DEVICE_CPU) == NULL, "vocab_size");
    c = tiny();
    c.dim = 20; /* 20 / 4 = 5, odd head_dim */
    CHECK_ERROR(fe_llama_new(&c, FE_F32, FE_DEVICE_CPU) == NULL, "head_dim");
    c = tiny();
    CHECK_ERROR(fe_llama_new(&c, FE_I32, FE_DEVICE_CPU) == NULL, "float");
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    int32_t toks[16] = {0};
    fe_tensor *longx = fe_from_data(toks, 2, (int64_t[]){1, 8}, FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_forward(m, longx) == NULL, "T <= 7");
    fe_tensor *flat = fe_from_data(toks, 1, (int64_t[]){4}, FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_forward(m, flat) == NULL, "(B, T)");
    toks[2] = 99;
    fe_tensor *bad = fe_from_data(toks, 2, (int64_t[]){1, 4}, FE_I32, FE_DEVICE_CPU);
    CHECK_ERROR(fe_llama_forward(m, bad) == NULL, "out of range");
    fe_tensor *x, *y;
    batch(0, 1, &x, &y);
    CHECK_ERROR(fe_llama_loss(fe_llama_forward(m, x), flat) == NULL, "targets (B, T)");
    fe_llama_free(m);
}

TEST(mixed_precision_bf16_master_weights) {
    fe_llama_config c = tiny();
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    fe_params *p = fe_llama_params(m);
    fe_tensor *w0 = fe_params_at(p, 1);
    fe_amp *amp = fe_amp_new(p, FE_BF16);
    CHECK(amp != NULL);
    fe_params *master = fe_amp_master(amp);
    CHECK(fe_params_count(master) == fe_params_count(p));
    CHECK(fe_params_at(master, 1) == w0); /* the f32 tensor moved to the master registry */
    CHECK(fe_dtype_of(fe_params_at(p, 1)) == FE_BF16 && fe_requires_grad(fe_params_at(p, 1)));
    CHECK(fe_params_no_decay(master, fe_params_find(master, "model.norm.weight")));
    fe_optimizer *o = fe_adamw_new(master, NULL);
    fe_tensor *x, *y;
    batch(0, B, &x, &y);
    double l0 = loss_of(m, x, y);
    CHECK_NEAR(l0, log(61.0), 0.05);
    for (int k = 0; k < 10; k++) {
        CHECK(backward_loss(m, x, y, 1) == FE_OK);
        CHECK(fe_dtype_of(fe_grad(fe_params_at(p, 0))) == FE_BF16);
        CHECK(fe_amp_grads_to_master(amp) == FE_OK);
        CHECK(fe_grad(fe_params_at(p, 0)) == NULL &&
              fe_dtype_of(fe_grad(fe_params_at(master, 0))) == FE_F32);
        CHECK(fe_optimizer_step(o, 1e-2) == FE_OK);
        fe_params_zero_grad(master);
        CHECK(fe_amp_to_compute(amp) == FE_OK);
    }
    double l = loss_of(m, x, y);
    printf("  bf16 loss %.4f -> %.4f\n", l0, l);
    CHECK(l < l0 - 0.5);
    /* compute weights are the bf16 rounding of the master weights */
    fe_tensor *mw = fe_params_at(master, 3), *cw = fe_params_at(p, 3);
    CHECK(t_maxdiff(fe_cast(mw, FE_BF16), cw) == 0);
    CHECK(t_maxdiff(mw, fe_cast(cw, FE_F32)) > 0);
    fe_optimizer_free(o);
    fe_amp_free(amp); /* f32 weights back in the model */
    CHECK(fe_params_at(p, 1) == w0 && fe_dtype_of(fe_params_at(p, 3)) == FE_F32);
    CHECK(fe_amp_new(p, FE_I32) == NULL);
    fe_llama_free(m);
}

TEST(fp16_training_with_loss_scaler) {
    fe_llama_config c = tiny();
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    fe_params *p = fe_llama_params(m);
    fe_amp *amp = fe_amp_new(p, FE_F16);
    fe_optimizer *o = fe_adamw_new(fe_amp_master(amp), NULL);
    /* 2^24 makes the f16 logit gradients, 2^24 * (softmax - onehot) / 14, overflow */
    fe_grad_scaler_config gc = fe_grad_scaler_defaults();
    gc.init_scale = 16777216.0;
    fe_grad_scaler *sc = fe_grad_scaler_new(&gc);
    fe_tensor *x, *y;
    batch(0, B, &x, &y);
    double l0 = loss_of(m, x, y);
    int skipped = 0, taken = 0;
    for (int k = 0; k < 20; k++) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *loss = fe_llama_loss(fe_llama_forward(m, x), y);
        CHECK(fe_backward(fe_grad_scaler_scale(sc, loss), NULL) == FE_OK);
        CHECK(fe_amp_grads_to_master(amp) == FE_OK);
        CHECK(fe_grad_scaler_unscale(sc, fe_amp_master(amp)) == FE_OK);
        fe_tensor *norm = fe_clip_grad_norm(fe_amp_master(amp), 1.0);
        CHECK(norm != NULL);
        bool ok = false;
        CHECK(fe_grad_scaler_update(sc, &ok) == FE_OK);
        if (ok) {
            CHECK(isfinite(fe_item(norm)));
            CHECK(fe_optimizer_step(o, 1e-2) == FE_OK);
            taken++;
        } else {
            skipped++;
        }
        fe_params_zero_grad(fe_amp_master(amp));
        CHECK(fe_amp_to_compute(amp) == FE_OK);
        fe_scope_end(s);
    }
    double l = loss_of(m, x, y);
    printf("  fp16: %d steps skipped, %d taken, scale %g, loss %.4f -> %.4f\n", skipped, taken,
           fe_grad_scaler_get_scale(sc), l0, l);
    CHECK(skipped >= 1 && fe_grad_scaler_get_scale(sc) == 16777216.0 / (1 << skipped));
    CHECK(fe_optimizer_steps(o) == taken);
    CHECK(l < l0 - 0.5);
    fe_grad_scaler_free(sc);
    fe_optimizer_free(o);
    fe_amp_free(amp);
    fe_llama_free(m);
}
