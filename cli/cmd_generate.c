/* `ferric generate`: continue a prompt with a Hugging Face Llama folder, streaming the
 * text as tokens are made (KV cache; one read-back per token). */
#include "ferric/ferric.h"
#include "ferric/hf.h"
#include "ferric/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fe_cmd_generate(int argc, char **argv);

static void generate_usage(FILE *f) {
    fprintf(f, "usage: ferric generate --model DIR --prompt TEXT [options]\n"
               "\n"
               "Continues TEXT with the Llama model in DIR (config.json, safetensors weights and\n"
               "tokenizer.json), printing the text as it is made and the speed on stderr.\n"
               "\n"
               "  --model DIR        a Hugging Face Llama folder\n"
               "  --prompt TEXT      the text to continue\n"
               "  --max-tokens N     new tokens at most (default 128)\n"
               "  --temperature T    0 is greedy (default 0.8)\n"
               "  --top-k K          sample among the K likeliest tokens (default 0: all)\n"
               "  --top-p P          sample from the nucleus of probability P (default 0.95)\n"
               "  --seed S           sampling seed (default 0)\n"
               "  --device D         cpu or cuda[:N] (default cuda when available)\n"
               "  --dtype T          f32, bf16 or f16 (default: as stored)\n"
               "  --ignore-eos       keep going past the end-of-sequence token\n");
}

typedef struct stream {
    fe_tokenizer *tok;
    int32_t *ids; /* prompt then generated */
    size_t n, n_prompt;
    size_t prompt_len; /* bytes of the decoded prompt */
    size_t printed;    /* bytes of the decoded text already written */
    const int64_t *eos;
    int n_eos;
    bool ignore_eos, failed;
} stream;

/* Bytes of s[0..n) that form complete characters whose text can no longer change: a
 * trailing unfinished UTF-8 sequence or U+FFFD (a byte that may still be completed) is
 * held back. */
static size_t stable_prefix(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--, back++;
    if (i > 0) {
        unsigned char lead = (unsigned char)s[i - 1];
        size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (need > back + 1) n = i - 1; /* incomplete sequence */
    }
    if (n >= 3 && !memcmp(s + n - 3, "\xEF\xBF\xBD", 3)) n -= 3;
    return n;
}

/* Write the newly stable text; with final, everything left. */
static void flush_text(stream *s, bool final) {
    char *text = NULL;
    size_t len = 0;
    if (fe_tokenizer_decode(s->tok, s->ids, s->n, true, &text, &len)) {
        s->failed = true;
        return;
    }
    size_t start = s->prompt_len;
    if (start > len) start = len;
    size_t end = final ? len : stable_prefix(text, len);
    if (end > start + s->printed) {
        fwrite(text + start + s->printed, 1, end - start - s->printed, stdout);
        fflush(stdout);
        s->printed = end - start;
    }
    free(text);
}

static bool on_token(void *ctx, int32_t token) {
    stream *s = ctx;
    if (!s->ignore_eos)
        for (int i = 0; i < s->n_eos; i++)
            if (token == s->eos[i]) return false;
    s->ids[s->n++] = token;
    flush_text(s, false);
    return !s->failed;
}

static bool parse_num(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

int fe_cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *device = NULL, *dtype = NULL;
    double max_tokens = 128, temperature = 0.8, top_k = 0, top_p = 0.95, seed = 0;
    bool ignore_eos = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
            continue;
        } else if (!v) {
            fprintf(stderr, "ferric generate: unknown option or missing value: %s\n\n", a);
            generate_usage(stderr);
            return 2;
        } else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--dtype"))
            dtype = v;
        else if (!strcmp(a, "--max-tokens"))
            ok = parse_num(v, 1, 1e9, &max_tokens);
        else if (!strcmp(a, "--temperature"))
            ok = parse_num(v, 0, 1e6, &temperature);
        else if (!strcmp(a, "--top-k"))
            ok = parse_num(v, 0, 1e9, &top_k);
        else if (!strcmp(a, "--top-p"))
            ok = parse_num(v, 0, 1, &top_p);
        else if (!strcmp(a, "--seed"))
            ok = parse_num(v, 0, 1.8e19, &seed);
        else {
            fprintf(stderr, "ferric generate: unknown option %s\n\n", a);
            generate_usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "ferric generate: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i++;
    }
    if (!model || !prompt) {
        fprintf(stderr, "ferric generate: --model and --prompt are required\n\n");
        generate_usage(stderr);
        return 2;
    }
    fe_device dev = fe_device_available(FE_CUDA) ? (fe_device){FE_CUDA, 0} : FE_DEVICE_CPU;
    if (device && !fe_device_parse(device, &dev)) {
        fprintf(stderr, "ferric generate: unknown device '%s'\n", device);
        return 2;
    }
    fe_dtype dt = FE_DTYPE_STORED;
    if (dtype && (!fe_dtype_parse(dtype, &dt) || (dt != FE_F32 && dt != FE_BF16 && dt != FE_F16))) {
        fprintf(stderr, "ferric generate: --dtype must be f32, bf16 or f16, not '%s'\n", dtype);
        return 2;
    }
    fe_hf_config hf;
    if (fe_hf_folder_config(model, &hf)) {
        fprintf(stderr, "ferric generate: %s\n", fe_last_error());
        return 1;
    }
    fe_tokenizer *tok = fe_tokenizer_load(model);
    if (!tok) {
        fprintf(stderr, "ferric generate: tokenizer: %s\n", fe_last_error());
        return 1;
    }
    fe_llama *m = fe_llama_load_hf(model, dt, dev);
    if (!m) {
        fprintf(stderr, "ferric generate: %s\n", fe_last_error());
        fe_tokenizer_free(tok);
        return 1;
    }
    int rc = 1;
    int32_t *pids = NULL, *out = NULL;
    size_t np = 0;
    stream s = {
        .tok = tok, .eos = hf.eos_token_ids, .n_eos = hf.n_eos_token_ids, .ignore_eos = ignore_eos};
    if (fe_tokenizer_encode(tok, prompt, strlen(prompt), true, &pids, &np)) {
        fprintf(stderr, "ferric generate: %s\n", fe_last_error());
        goto done;
    }
    if (np == 0) {
        fprintf(stderr, "ferric generate: the prompt encodes to no tokens\n");
        goto done;
    }
    int64_t max_seq = fe_llama_config_of(m)->max_seq, n_new = (int64_t)max_tokens;
    if ((int64_t)np >= max_seq) {
        fprintf(stderr, "ferric generate: the prompt has %zu tokens; the model takes %lld\n", np,
                (long long)max_seq);
        goto done;
    }
    if ((int64_t)np + n_new > max_seq) {
        n_new = max_seq - (int64_t)np;
        fprintf(stderr,
                "ferric generate: stopping at the model's %lld positions (%lld new tokens)\n",
                (long long)max_seq, (long long)n_new);
    }
    out = malloc((np + (size_t)n_new) * sizeof *out);
    s.ids = malloc((np + (size_t)n_new) * sizeof *s.ids);
    if (!out || !s.ids) {
        fprintf(stderr, "ferric generate: out of memory\n");
        goto done;
    }
    memcpy(s.ids, pids, np * sizeof *pids);
    s.n = s.n_prompt = np;
    char *ptext = NULL;
    if (fe_tokenizer_decode(tok, pids, np, true, &ptext, &s.prompt_len)) {
        fprintf(stderr, "ferric generate: %s\n", fe_last_error());
        goto done;
    }
    fwrite(ptext, 1, s.prompt_len, stdout);
    fflush(stdout);
    free(ptext);
    fe_sample_config sc = {
        .temperature = temperature, .top_k = (int)top_k, .seed = (uint64_t)seed, .top_p = top_p};
    fe_generate_stats st;
    if (fe_llama_generate_cached(m, pids, (int64_t)np, n_new, &sc, out, on_token, &s, &st)) {
        fprintf(stderr, "\nferric generate: %s\n", fe_last_error());
        goto done;
    }
    flush_text(&s, true);
    printf("\n");
    if (s.failed) {
        fprintf(stderr, "ferric generate: decoding failed: %s\n", fe_last_error());
        goto done;
    }
    fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)st.n_prompt,
            st.prefill_s, st.prefill_s > 0 ? (double)st.n_prompt / st.prefill_s : 0.0);
    if (st.n_generated > 1)
        fprintf(stderr, "decode:  %lld tokens in %.3f s (%.1f tokens/s%s)\n",
                (long long)(st.n_generated - 1), st.decode_s,
                st.decode_s > 0 ? (double)(st.n_generated - 1) / st.decode_s : 0.0,
                st.graph_decode ? ", CUDA-graph decoder" : "");
    rc = 0;
done:
    free(pids), free(out), free(s.ids);
    fe_llama_free(m);
    fe_tokenizer_free(tok);
    return rc;
}
