/* Sampling and text generation from a Llama model: with a KV cache (one prefill, then
 * one position per step), or by recomputing a window of the prefix each step when the
 * sequence outgrows max_seq. Either way only the last logits row is read back. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <inttypes.h>
#include <math.h>
#include <time.h>

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

int32_t fe_sample_logits(const double *logits, int64_t V, const fe_sample_config *c, uint64_t step,
                         double *scratch) {
    if (!logits || V < 1) return 0;
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (!c || !(c->temperature > 0) || !scratch) return (int32_t)best;
    double *w = scratch, *sorted = scratch + V;
    double cut = -INFINITY; /* keep logits >= the k-th largest */
    if (c->top_k > 0 && c->top_k < V) {
        memcpy(sorted, logits, (size_t)V * sizeof *sorted);
        qsort(sorted, (size_t)V, sizeof *sorted, cmp_desc);
        cut = sorted[c->top_k - 1];
    }
    double total = 0;
    for (int64_t i = 0; i < V; i++) {
        w[i] = logits[i] >= cut ? exp((logits[i] - logits[best]) / c->temperature) : 0.0;
        total += w[i];
    }
    if (c->top_p > 0 && c->top_p < 1) {
        /* the smallest weight still inside the nucleus: walk the weights in descending
         * order until their share reaches top_p */
        memcpy(sorted, w, (size_t)V * sizeof *sorted);
        qsort(sorted, (size_t)V, sizeof *sorted, cmp_desc);
        double acc = 0, floor_w = sorted[0];
        for (int64_t i = 0; i < V && sorted[i] > 0; i++) {
            acc += sorted[i];
            floor_w = sorted[i];
            if (acc >= c->top_p * total) break;
        }
        total = 0;
        for (int64_t i = 0; i < V; i++) {
            if (w[i] < floor_w) w[i] = 0;
            total += w[i];
        }
    }
    uint32_t r[4];
    fe__philox(c->seed, step, r);
    double u = ((double)(r[0] >> 8) / 16777216.0) * total, acc = 0;
    for (int64_t i = 0; i < V; i++) {
        acc += w[i];
        if (w[i] > 0 && u < acc) return (int32_t)i;
    }
    return (int32_t)best; /* rounding left u at the very top */
}

static fe_status check_prompt(const fe_llama *m, const int32_t *prompt, int64_t n_prompt,
                              int64_t n_new, int32_t *out) {
    if (!m || !prompt || !out || n_prompt < 1 || n_new < 0)
        return fe_set_error(FE_ERR_ARG, "generate: needs a model, a prompt of at least one token, "
                                        "n_new >= 0 and an output buffer");
    int64_t V = fe_llama_config_of(m)->vocab_size;
    for (int64_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return fe_set_error(FE_ERR_RANGE,
                                "generate: prompt token %" PRId32 " at %" PRId64
                                " is outside the vocabulary of %" PRId64,
                                prompt[i], i, V);
    return FE_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* FE_DECODE=generic keeps decoding on the op-by-op path (for comparisons). */
static bool generic_decode_forced(void) {
    const char *v = getenv("FE_DECODE");
    return v && strcmp(v, "generic") == 0;
}

/* The tokens of a greedy run on the decoder: appended to out, then passed on to the caller's
 * callback (which may stop the run). */
typedef struct greedy_sink {
    int32_t *out;
    int64_t len;
    fe_token_fn on_token;
    void *ctx;
} greedy_sink;
static bool greedy_take(void *ctx, int32_t t) {
    greedy_sink *g = ctx;
    g->out[g->len++] = t;
    return !g->on_token || g->on_token(g->ctx, t);
}

fe_status fe_llama_generate_cached(fe_llama *m, const int32_t *prompt, int64_t n_prompt,
                                   int64_t n_new, const fe_sample_config *cfg, int32_t *out,
                                   fe_token_fn on_token, void *ctx, fe_generate_stats *stats) {
    fe_status st = check_prompt(m, prompt, n_prompt, n_new, out);
    if (st) return st;
    const fe_llama_config *c = fe_llama_config_of(m);
    if (n_prompt + n_new > c->max_seq)
        return fe_set_error(FE_ERR_RANGE,
                            "generate: %" PRId64 " prompt + %" PRId64
                            " new tokens exceed max_seq %" PRId64,
                            n_prompt, n_new, c->max_seq);
    if (stats) *stats = (fe_generate_stats){.n_prompt = n_prompt};
    memmove(out, prompt, (size_t)n_prompt * sizeof *out);
    if (n_new == 0) return FE_OK;
    int64_t V = c->vocab_size;
    double *row = malloc((size_t)V * sizeof *row),
           *scratch = malloc(2 * (size_t)V * sizeof *scratch);
    fe_kv_cache *cache = row && scratch ? fe_kv_cache_new(m, n_prompt + n_new) : NULL;
    if (!cache) {
        free(row), free(scratch);
        return row && scratch ? fe_last_status()
                              : fe_set_error(FE_ERR_OOM, "generate: out of host memory");
    }
    fe_device dev = fe_device_of(fe_llama_inv_freq(m));
    bool prev = fe_set_grad_enabled(false);
    double t0 = now_s(), t1 = t0;
    int64_t made = 0;
    fe_llama_decoder *dec = NULL;
    const bool greedy = !cfg || !(cfg->temperature > 0);
    for (int64_t s = 0; s < n_new && !st; s++) {
        int64_t len = n_prompt + s;
        if (s == 1 && dev.type == FE_CUDA && !generic_decode_forced()) {
            /* the prompt went through the flash kernel; single tokens through the graph */
            dec = fe_llama_decoder_new(m, cache);
            if (!dec) fe_clear_error(); /* not available for this model: the generic path */
        }
        if (dec && greedy) { /* every remaining token in one pipelined run */
            greedy_sink g = {out, len, on_token, ctx};
            int64_t got = 0;
            st = fe_llama_decoder_greedy(dec, out[len - 1], n_new - s, greedy_take, &g, &got);
            made = s + got;
            break;
        }
        if (dec) {
            st = fe_llama_decoder_step(dec, out[len - 1], row, NULL);
        } else {
            fe_scope *sc = fe_scope_begin();
            /* the first step feeds the whole prompt, later ones the last token */
            int64_t T = s == 0 ? n_prompt : 1;
            fe_tensor *idx = fe_from_data(out + (len - T), 2, (int64_t[]){1, T}, FE_I32, dev);
            fe_tensor *logits = idx ? fe_llama_forward_cached(m, idx, cache, true) : NULL;
            st = logits ? fe_to_host(logits, row, FE_F64) : fe_last_status(); /* (1, 1, V) */
            fe_scope_end(sc);
        }
        if (st) break;
        out[len] = fe_sample_logits(row, V, cfg, (uint64_t)s, scratch);
        made = s + 1;
        if (s == 0) t1 = now_s();
        if (on_token && !on_token(ctx, out[len])) break;
    }
    double t2 = now_s();
    fe_set_grad_enabled(prev);
    if (stats) stats->graph_decode = dec != NULL;
    fe_llama_decoder_free(dec);
    fe_kv_cache_free(cache);
    free(row), free(scratch);
    if (stats) {
        stats->n_generated = made;
        stats->prefill_s = t1 - t0;
        stats->decode_s = made > 1 ? t2 - t1 : 0.0;
    }
    return st;
}

fe_status fe_llama_generate(fe_llama *m, const int32_t *prompt, int64_t n_prompt, int64_t n_new,
                            const fe_sample_config *cfg, int32_t *out) {
    fe_status st = check_prompt(m, prompt, n_prompt, n_new, out);
    if (st) return st;
    const fe_llama_config *c = fe_llama_config_of(m);
    if (n_prompt + n_new <= c->max_seq)
        return fe_llama_generate_cached(m, prompt, n_prompt, n_new, cfg, out, NULL, NULL, NULL);
    int64_t V = c->vocab_size;
    memmove(out, prompt, (size_t)n_prompt * sizeof *out);
    double *row = malloc((size_t)V * sizeof *row),
           *scratch = malloc(2 * (size_t)V * sizeof *scratch);
    if (!row || !scratch) {
        free(row), free(scratch);
        return fe_set_error(FE_ERR_OOM, "generate: out of host memory");
    }
    fe_device dev = fe_device_of(fe_llama_inv_freq(m));
    bool prev = fe_set_grad_enabled(false);
    for (int64_t s = 0; s < n_new && !st; s++) {
        int64_t len = n_prompt + s, T = len < c->max_seq ? len : c->max_seq;
        fe_scope *sc = fe_scope_begin();
        fe_tensor *idx = fe_from_data(out + (len - T), 2, (int64_t[]){1, T}, FE_I32, dev);
        fe_tensor *logits = fe_llama_forward(m, idx); /* (1, T, V) */
        fe_tensor *last = fe_slice(logits, 1, T - 1, T, 1);
        st = last ? fe_to_host(last, row, FE_F64) : fe_last_status();
        fe_scope_end(sc);
        if (!st) out[len] = fe_sample_logits(row, V, cfg, (uint64_t)s, scratch);
    }
    fe_set_grad_enabled(prev);
    free(row), free(scratch);
    return st;
}
