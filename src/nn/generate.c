/* Short samples from a Llama model without a KV cache: every step runs the whole
 * (window of the) prefix and samples the next token from the last position. */
#include "core/internal.h"
#include "ferric/nn.h"

#include <inttypes.h>
#include <math.h>

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Pick a token from one row of logits (V). scratch has room for V doubles. */
static int32_t sample_row(const double *logits, int64_t V, const fe_sample_config *c, uint64_t step,
                          double *scratch) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (!c || !(c->temperature > 0)) return (int32_t)best;
    double cut = -INFINITY; /* keep logits >= the k-th largest */
    if (c->top_k > 0 && c->top_k < V) {
        memcpy(scratch, logits, (size_t)V * sizeof *scratch);
        qsort(scratch, (size_t)V, sizeof *scratch, cmp_desc);
        cut = scratch[c->top_k - 1];
    }
    double total = 0;
    for (int64_t i = 0; i < V; i++) {
        scratch[i] = logits[i] >= cut ? exp((logits[i] - logits[best]) / c->temperature) : 0.0;
        total += scratch[i];
    }
    uint32_t r[4];
    fe__philox(c->seed, step, r);
    double u = ((double)(r[0] >> 8) / 16777216.0) * total, acc = 0;
    for (int64_t i = 0; i < V; i++) {
        acc += scratch[i];
        if (scratch[i] > 0 && u < acc) return (int32_t)i;
    }
    return (int32_t)best; /* rounding left u at the very top */
}

fe_status fe_llama_generate(fe_llama *m, const int32_t *prompt, int64_t n_prompt, int64_t n_new,
                            const fe_sample_config *cfg, int32_t *out) {
    if (!m || !prompt || !out || n_prompt < 1 || n_new < 0)
        return fe_set_error(FE_ERR_ARG, "generate: needs a model, a prompt of at least one token, "
                                        "n_new >= 0 and an output buffer");
    const fe_llama_config *c = fe_llama_config_of(m);
    int64_t V = c->vocab_size;
    for (int64_t i = 0; i < n_prompt; i++) {
        if (prompt[i] < 0 || prompt[i] >= V)
            return fe_set_error(FE_ERR_RANGE,
                                "generate: prompt token %" PRId32 " at %" PRId64
                                " is outside the vocabulary of %" PRId64,
                                prompt[i], i, V);
        out[i] = prompt[i];
    }
    double *row = malloc((size_t)V * sizeof *row), *scratch = malloc((size_t)V * sizeof *scratch);
    if (!row || !scratch) {
        free(row), free(scratch);
        return fe_set_error(FE_ERR_OOM, "generate: out of host memory");
    }
    fe_device dev = fe_device_of(fe_llama_inv_freq(m));
    bool prev = fe_set_grad_enabled(false);
    fe_status st = FE_OK;
    for (int64_t s = 0; s < n_new && !st; s++) {
        int64_t len = n_prompt + s, T = len < c->max_seq ? len : c->max_seq;
        fe_scope *sc = fe_scope_begin();
        fe_tensor *idx = fe_from_data(out + (len - T), 2, (int64_t[]){1, T}, FE_I32, dev);
        fe_tensor *logits = fe_llama_forward(m, idx); /* (1, T, V) */
        fe_tensor *last = fe_slice(logits, 1, T - 1, T, 1);
        st = last ? fe_to_host(last, row, FE_F64) : fe_last_status();
        fe_scope_end(sc);
        if (!st) out[len] = sample_row(row, V, cfg, (uint64_t)s, scratch);
    }
    fe_set_grad_enabled(prev);
    free(row), free(scratch);
    return st;
}
