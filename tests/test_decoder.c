/* fe_llama_decoder (the CUDA-graph batch-1 decode path) against the op-by-op cached
 * forward on the same model and the same tokens, and its errors. The GPU cases skip
 * without a CUDA device; the error cases for a CPU model run everywhere. */
#include "test.h"

#include <math.h>
#include <stdlib.h>

#define GPU ((fe_device){FE_CUDA, 0})

static fe_llama_config cfg64(void) { /* GQA, head_dim 64, odd vocabulary, tied */
    return (fe_llama_config){.vocab_size = 1001, .dim = 256, .n_layers = 2, .n_heads = 4,
                             .n_kv_heads = 2, .head_dim = 64, .ffn_dim = 328, .max_seq = 640,
                             .norm_eps = 1e-5, .rope_theta = 10000.0, .tie_embeddings = true,
                             .init_std = 0.05};
}
static fe_llama_config cfg128(void) { /* multi-query, head_dim 128, llama3 RoPE, untied */
    return (fe_llama_config){.vocab_size = 517, .dim = 256, .n_layers = 3, .n_heads = 2,
                             .n_kv_heads = 1, .head_dim = 128, .ffn_dim = 712, .max_seq = 640,
                             .norm_eps = 1e-6, .rope_theta = 500000.0,
                             .rope_scaling = {.llama3 = true, .factor = 8, .low_freq_factor = 1,
                                              .high_freq_factor = 4,
                                              .original_max_position_embeddings = 64},
                             .init_std = 0.05};
}

/* ||a - b|| / ||b|| */
static double rel_err(const double *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int64_t argmax(const double *x, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Prefill n_prompt random tokens into two caches, then run n_steps random tokens through
 * the decoder and through fe_llama_forward_cached, comparing every step's logits. */
static void compare(fe_llama_config c, fe_dtype dt, int64_t n_prompt, int n_steps, double tol) {
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device (or ferric was built without CUDA)");
    fe_manual_seed(11);
    fe_llama *m = fe_llama_new(&c, dt, GPU);
    CHECK(m != NULL);
    if (!m) return;
    int64_t V = c.vocab_size, cap = n_prompt + n_steps;
    fe_kv_cache *ca = fe_kv_cache_new(m, cap), *cb = fe_kv_cache_new(m, cap);
    int32_t *tok = malloc((size_t)cap * sizeof *tok);
    double *la = malloc((size_t)V * sizeof *la), *lb = malloc((size_t)V * sizeof *lb);
    srand(5);
    for (int64_t i = 0; i < cap; i++)
        tok[i] = rand() % (int)V;
    fe_tensor *p = fe_from_data(tok, 2, (int64_t[]){1, n_prompt}, FE_I32, GPU);
    CHECK(fe_llama_forward_cached(m, p, ca, true) && fe_llama_forward_cached(m, p, cb, true));
    fe_llama_decoder *dec = fe_llama_decoder_new(m, ca);
    CHECK(dec != NULL);
    double worst = 0;
    int same_top = 0;
    for (int s = 0; dec && s < n_steps; s++) {
        int32_t t = tok[n_prompt + s];
        int32_t top = -1;
        CHECK(fe_llama_decoder_step(dec, t, la, &top) == FE_OK);
        CHECK(top == argmax(la, V)); /* the device argmax agrees with the logits */
        fe_tensor *idx = fe_from_data(&t, 2, (int64_t[]){1, 1}, FE_I32, GPU);
        fe_tensor *lg = fe_llama_forward_cached(m, idx, cb, true);
        CHECK(lg && fe_to_host(lg, lb, FE_F64) == FE_OK);
        double e = rel_err(la, lb, V);
        if (!(e <= worst)) worst = e;
        same_top += argmax(la, V) == argmax(lb, V);
        fe_free(idx), fe_free(lg);
    }
    printf("    %s, %lld prompt tokens: worst relative error %.3g over %d steps, same argmax %d/%d\n",
           fe_dtype_name(dt), (long long)n_prompt, worst, n_steps, same_top, n_steps);
    CHECK(worst <= tol);
    if (dt == FE_F32) CHECK(same_top == n_steps);
    CHECK(fe_kv_cache_len(ca) == cap && fe_kv_cache_len(cb) == cap);
    fe_llama_decoder_free(dec);
    fe_kv_cache_free(ca), fe_kv_cache_free(cb);
    fe_free(p);
    free(tok), free(la), free(lb);
    fe_llama_free(m);
}

TEST(decoder_matches_cached_forward_f32) {
    compare(cfg64(), FE_F32, 7, 12, 2e-5);
    compare(cfg128(), FE_F32, 5, 12, 2e-5);
}
/* bf16/f16: the reference rounds every op's output to the dtype, the decoder keeps f32
 * activations, so they differ by the dtype's rounding */
TEST(decoder_matches_cached_forward_bf16) {
    compare(cfg64(), FE_BF16, 9, 10, 3e-2);
    compare(cfg128(), FE_BF16, 3, 10, 3e-2);
}
TEST(decoder_matches_cached_forward_f16) { compare(cfg64(), FE_F16, 6, 10, 5e-3); }
/* more than one 512-position chunk of the cache in the attention kernel */
TEST(decoder_long_context) {
    compare(cfg64(), FE_F32, 600, 6, 2e-5);
    compare(cfg128(), FE_BF16, 530, 4, 3e-2);
}

/* Both test models over a few steps: cfg64 in dt64, cfg128 in dt128, each at its
 * dtype's tolerance. */
static void compare_both(fe_dtype dt64, fe_dtype dt128) {
    fe_dtype dts[2] = {dt64, dt128};
    for (int i = 0; i < 2; i++) {
        double tol = dts[i] == FE_F32 ? 2e-5 : dts[i] == FE_BF16 ? 3e-2 : 5e-3;
        compare(i == 0 ? cfg64() : cfg128(), dts[i], 5, 6, tol);
    }
}

/* The persistent kernel (FE_DECODE_PERSIST=1; an error, not a fallback, where it does not
 * fit): one block per SM, then grids of 3 and 1 blocks, every block taking many rows of every
 * phase; and long contexts (two attention chunks). */
TEST(decoder_persistent_kernel) {
    setenv("FE_DECODE_PERSIST", "1", 1);
    compare_both(FE_F32, FE_BF16);
    compare(cfg64(), FE_F32, 600, 4, 2e-5);
    compare(cfg128(), FE_BF16, 530, 3, 3e-2);
    setenv("FE_DECODE_MAX_BLOCKS", "3", 1);
    compare_both(FE_BF16, FE_F32);
    setenv("FE_DECODE_MAX_BLOCKS", "1", 1);
    compare_both(FE_F32, FE_F16);
    unsetenv("FE_DECODE_MAX_BLOCKS");
    unsetenv("FE_DECODE_PERSIST");
}
/* each row pair split over 2 and 4 warps (uneven K parts: ffn 328 and 712) */
TEST(decoder_split_k) {
    setenv("FE_DECODE_KSPLIT", "2", 1);
    compare_both(FE_BF16, FE_F32);
    setenv("FE_DECODE_KSPLIT", "4", 1);
    compare_both(FE_F32, FE_BF16);
    unsetenv("FE_DECODE_KSPLIT");
}

/* two blocks in all: every warp takes many row pairs in turn, each pair's first loads
 * issued while the previous pair's sums are reduced */
TEST(decoder_many_pairs_per_warp) {
    setenv("FE_DECODE_MAX_BLOCKS", "2", 1);
    compare_both(FE_BF16, FE_F32);
    setenv("FE_DECODE_KSPLIT", "4", 1);
    compare_both(FE_F32, FE_BF16);
    unsetenv("FE_DECODE_KSPLIT");
    unsetenv("FE_DECODE_MAX_BLOCKS");
}

TEST(decoder_errors) {
    fe_llama_config c = cfg64();
    fe_manual_seed(3);
    fe_llama *cpu = fe_llama_new(&c, FE_F32, (fe_device){FE_CPU, 0});
    fe_kv_cache *cc = fe_kv_cache_new(cpu, 8);
    CHECK_ERROR(fe_llama_decoder_new(cpu, cc) == NULL, "CUDA");
    CHECK_ERROR(fe_llama_decoder_new(cpu, NULL) == NULL, "NULL");
    /* a cache made for another shape: more layers, or other KV heads */
    fe_llama_config c3 = c, ckv = c;
    c3.n_layers = 3, ckv.n_kv_heads = 4;
    fe_llama *deeper = fe_llama_new(&c3, FE_F32, (fe_device){FE_CPU, 0});
    fe_llama *wider = fe_llama_new(&ckv, FE_F32, (fe_device){FE_CPU, 0});
    int32_t tok = 1;
    fe_tensor *idx = fe_from_data(&tok, 2, (int64_t[]){1, 1}, FE_I32, (fe_device){FE_CPU, 0});
    CHECK_ERROR(fe_llama_forward_cached(deeper, idx, cc, true) == NULL, "another model");
    CHECK_ERROR(fe_llama_forward_cached(wider, idx, cc, true) == NULL, "another model");
    CHECK_ERROR(fe_llama_decoder_new(deeper, cc) == NULL, "another model");
    CHECK_ERROR(fe_llama_decoder_new(wider, cc) == NULL, "another model");
    CHECK(fe_kv_cache_len(cc) == 0);
    fe_free(idx);
    fe_llama_free(deeper), fe_llama_free(wider);
    fe_kv_cache_free(cc);
    fe_llama_free(cpu);
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device for the rest");
    c.head_dim = 32, c.n_heads = 8, c.n_kv_heads = 4; /* 8 * 32 = dim 256 */
    fe_llama *m = fe_llama_new(&c, FE_BF16, GPU);
    fe_kv_cache *k = fe_kv_cache_new(m, 4);
    CHECK_ERROR(fe_llama_decoder_new(m, k) == NULL, "head_dim 32");
    fe_kv_cache_free(k);
    fe_llama_free(m);
    c = cfg64();
    m = fe_llama_new(&c, FE_BF16, GPU);
    k = fe_kv_cache_new(m, 2);
    fe_llama_decoder *d = fe_llama_decoder_new(m, k);
    double *l = malloc((size_t)c.vocab_size * sizeof *l);
    CHECK(d != NULL);
    CHECK_ERROR(fe_llama_decoder_step(d, (int32_t)c.vocab_size, l, NULL) != FE_OK, "vocabulary");
    CHECK(fe_kv_cache_len(k) == 0);
    int32_t top;
    CHECK_ERROR(fe_llama_decoder_step(d, 1, NULL, NULL) != FE_OK, "no output");
    CHECK(fe_llama_decoder_step(d, 1, l, NULL) == FE_OK && fe_llama_decoder_step(d, 2, NULL, &top) == FE_OK);
    CHECK(top >= 0 && top < c.vocab_size);
    CHECK_ERROR(fe_llama_decoder_step(d, 3, l, &top) != FE_OK, "full");
    CHECK(fe_kv_cache_len(k) == 2);
    free(l);
    fe_llama_decoder_free(d);
    fe_kv_cache_free(k);
    fe_llama_free(m);
}

typedef struct collect {
    int32_t *t;
    int n, stop_after; /* stop_after 0: never */
} collect;
static bool collect_token(void *ctx, int32_t t) {
    collect *c = ctx;
    c->t[c->n++] = t;
    return !c->stop_after || c->n < c->stop_after;
}

/* fe_llama_decoder_greedy (argmax fed back on the device, steps queued ahead) gives the tokens
 * that fe_llama_decoder_step gives one at a time; stopped early, the cache keeps only the
 * accepted steps and decoding goes on from there as if the run had not been queued further. */
static void greedy_case(fe_llama_config c, fe_dtype dt) {
    fe_manual_seed(13);
    fe_llama *m = fe_llama_new(&c, dt, GPU);
    CHECK(m != NULL);
    if (!m) return;
    enum { P = 6, N = 20 };
    int32_t prompt[P] = {3, 14, 15, 92, 65, 35}, a[N], b[N], e[N];
    fe_tensor *p = fe_from_data(prompt, 2, (int64_t[]){1, P}, FE_I32, GPU);
    fe_kv_cache *ca = fe_kv_cache_new(m, P + N), *cb = fe_kv_cache_new(m, P + N),
                *ce = fe_kv_cache_new(m, P + N);
    CHECK(fe_llama_forward_cached(m, p, ca, true) && fe_llama_forward_cached(m, p, cb, true) &&
          fe_llama_forward_cached(m, p, ce, true));
    fe_llama_decoder *da = fe_llama_decoder_new(m, ca), *db = fe_llama_decoder_new(m, cb),
                     *de = fe_llama_decoder_new(m, ce);
    CHECK(da && db && de);
    if (da && db && de) {
        collect ka = {a, 0, 0}, ke = {e, 0, 5};
        int64_t done = -1;
        CHECK(fe_llama_decoder_greedy(da, 7, N, collect_token, &ka, &done) == FE_OK);
        CHECK(done == N && ka.n == N && fe_kv_cache_len(ca) == P + N);
        int32_t t = 7;
        for (int i = 0; i < N; i++) {
            CHECK(fe_llama_decoder_step(db, t, NULL, &b[i]) == FE_OK);
            t = b[i];
        }
        int same = 0;
        for (int i = 0; i < N; i++)
            same += a[i] == b[i];
        CHECK(same == N);
        /* stopped after 5 tokens: the cache holds 5 steps, and stepping on gives a[5..] */
        CHECK(fe_llama_decoder_greedy(de, 7, N, collect_token, &ke, &done) == FE_OK);
        CHECK(done == 5 && ke.n == 5 && fe_kv_cache_len(ce) == P + 5);
        t = e[4];
        int after = 0;
        for (int i = 5; i < 9; i++) {
            int32_t top = -1;
            CHECK(fe_llama_decoder_step(de, t, NULL, &top) == FE_OK);
            after += top == a[i];
            t = top;
        }
        CHECK(after == 4);
        printf("    %s: %d/%d greedy tokens as step by step, early stop after 5 resumed %d/4\n",
               fe_dtype_name(dt), same, N, after);
        /* too many steps for the cache, a token outside the vocabulary: nothing runs */
        CHECK_ERROR(fe_llama_decoder_greedy(da, 7, 1, collect_token, &ka, &done) != FE_OK,
                    "overflow");
        CHECK_ERROR(fe_llama_decoder_greedy(de, (int32_t)c.vocab_size, 2, collect_token, &ke,
                                            &done) != FE_OK,
                    "vocabulary");
        CHECK(done == 0 && fe_kv_cache_len(ca) == P + N && fe_kv_cache_len(ce) == P + 9);
    }
    fe_llama_decoder_free(da), fe_llama_decoder_free(db), fe_llama_decoder_free(de);
    fe_kv_cache_free(ca), fe_kv_cache_free(cb), fe_kv_cache_free(ce);
    fe_free(p);
    fe_llama_free(m);
}

TEST(decoder_greedy_pipelined) {
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device (or ferric was built without CUDA)");
    greedy_case(cfg64(), FE_BF16);
    greedy_case(cfg128(), FE_F32);
    setenv("FE_DECODE_PERSIST", "1", 1);
    greedy_case(cfg64(), FE_F32);
    greedy_case(cfg128(), FE_BF16);
    unsetenv("FE_DECODE_PERSIST");
}

static bool count_token(void *ctx, int32_t t) {
    (void)t;
    ++*(int *)ctx;
    return true;
}

/* generation through the decoder equals generation op by op (f32, greedy) */
TEST(generate_uses_decoder) {
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device (or ferric was built without CUDA)");
    fe_llama_config c = cfg128();
    fe_manual_seed(21);
    fe_llama *m = fe_llama_new(&c, FE_F32, GPU);
    int32_t prompt[4] = {5, 17, 300, 2}, a[4 + 24], b[4 + 24];
    fe_generate_stats sa, sb;
    int n = 0;
    CHECK(fe_llama_generate_cached(m, prompt, 4, 24, NULL, a, count_token, &n, &sa) == FE_OK);
    setenv("FE_DECODE", "generic", 1);
    CHECK(fe_llama_generate_cached(m, prompt, 4, 24, NULL, b, NULL, NULL, &sb) == FE_OK);
    unsetenv("FE_DECODE");
    CHECK(sa.graph_decode && !sb.graph_decode);
    CHECK(n == 24 && sa.n_generated == 24);
    int same = 0;
    for (int i = 0; i < 28; i++)
        same += a[i] == b[i];
    CHECK(same == 28);
    fe_llama_free(m);
}
