/* Drive ferric from scripts with a Hugging Face Llama folder (tests/parity/hf_parity.py,
 * bench/decode.py):
 *
 *   example_hf_logits --model DIR --ids 1,2,3 --out FILE [--cached]   logits (T, V) raw f32
 *   example_hf_logits --model DIR --ids 1,2,3 --greedy N              N greedy ids (KV cache)
 *   example_hf_logits --model DIR --ids 1,2,3 --bench N [--repeat R]  decode speed as JSON
 *   example_hf_logits --save-random DIR [--vocab V --dim C --layers L --heads H
 *       --kv-heads K --head-dim D --ffn F --max-seq S --theta T --tied --llama3 --seed S]
 *
 * common: --device cpu|cuda (default cpu), --dtype f32|bf16|f16|f64|stored (default stored;
 * for --save-random the dtype saved, default f32). Exit status 1 with the error on stderr. */
#include "ferric/ferric.h"
#include "ferric/hf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "hf_logits: %s: %s\n", what, fe_last_error());
    return 1;
}

static int64_t parse_ids(const char *s, int32_t **out) {
    int64_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return -1;
    char *end;
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)strtol(s, &end, 10);
        if (end == s || (*end && *end != ',')) {
            free(ids);
            return -1;
        }
        s = end + (*end == ',');
    }
    *out = ids;
    return n;
}

static int save_random(const char *dir, fe_dtype dt, int argc, char **argv) {
    fe_llama_config c = {.vocab_size = 1000,
                         .dim = 96,
                         .n_layers = 2,
                         .n_heads = 6,
                         .n_kv_heads = 2,
                         .head_dim = 16,
                         .ffn_dim = 200,
                         .max_seq = 256,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000.0,
                         .init_std = 0.05};
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(a, "--tied"))
            c.tie_embeddings = true;
        else if (!strcmp(a, "--llama3"))
            c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 64};
        else if (!strcmp(a, "--vocab"))
            c.vocab_size = atoll(v);
        else if (!strcmp(a, "--dim"))
            c.dim = atoll(v);
        else if (!strcmp(a, "--layers"))
            c.n_layers = atoll(v);
        else if (!strcmp(a, "--heads"))
            c.n_heads = atoll(v);
        else if (!strcmp(a, "--kv-heads"))
            c.n_kv_heads = atoll(v);
        else if (!strcmp(a, "--head-dim"))
            c.head_dim = atoll(v);
        else if (!strcmp(a, "--ffn"))
            c.ffn_dim = atoll(v);
        else if (!strcmp(a, "--max-seq"))
            c.max_seq = atoll(v);
        else if (!strcmp(a, "--theta"))
            c.rope_theta = atof(v);
        else if (!strcmp(a, "--std"))
            c.init_std = atof(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
    }
    fe_manual_seed(seed);
    fe_llama *m = fe_llama_new(&c, dt == FE_DTYPE_STORED ? FE_F32 : dt, FE_DEVICE_CPU);
    if (!m) return fail("building the model");
    /* norms at 1 would hide a swapped norm weight: give them random values too */
    fe_params *p = fe_llama_params(m);
    for (int i = 0; i < fe_params_count(p); i++) {
        fe_tensor *t = fe_params_at(p, i);
        if (fe_ndim(t) == 1) {
            fe_tensor *r = fe_rand(1, fe_shape(t), 0.5, 1.5, fe_dtype_of(t), FE_DEVICE_CPU);
            fe_copy_(t, r);
            fe_free(r);
        }
    }
    fe_status st = fe_llama_save_hf(m, dir);
    fe_llama_free(m);
    return st ? fail("saving") : 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *ids_s = NULL, *out = NULL, *save = NULL;
    fe_device dev = FE_DEVICE_CPU;
    fe_dtype dt = FE_DTYPE_STORED;
    long greedy = -1, bench = -1, repeat = 3;
    bool cached = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--cached"))
            cached = true;
        else if (!v)
            continue;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--ids"))
            ids_s = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--save-random"))
            save = v;
        else if (!strcmp(a, "--greedy"))
            greedy = atol(v);
        else if (!strcmp(a, "--bench"))
            bench = atol(v);
        else if (!strcmp(a, "--repeat"))
            repeat = atol(v);
        else if (!strcmp(a, "--device")) {
            if (!fe_device_parse(v, &dev)) return fprintf(stderr, "hf_logits: bad device\n"), 2;
        } else if (!strcmp(a, "--dtype")) {
            if (strcmp(v, "stored") && !fe_dtype_parse(v, &dt))
                return fprintf(stderr, "hf_logits: bad dtype\n"), 2;
        }
    }
    if (save) return save_random(save, dt, argc, argv);
    int32_t *ids = NULL;
    int64_t n = ids_s ? parse_ids(ids_s, &ids) : -1;
    if (!model || n < 1 || (!out && greedy < 0 && bench < 0)) {
        fprintf(stderr, "usage: see the comment at the top of examples/hf_logits.c\n");
        return 2;
    }
    fe_llama *m = fe_llama_load_hf(model, dt, dev);
    if (!m) return free(ids), fail("loading");
    int rc = 0;
    int64_t V = fe_llama_config_of(m)->vocab_size;
    if (out) {
        fe_scope *sc = fe_scope_begin();
        fe_tensor *idx = fe_from_data(ids, 2, (int64_t[]){1, n}, FE_I32, dev);
        fe_tensor *lg = NULL;
        if (cached) {
            fe_kv_cache *kv = fe_kv_cache_new(m, n);
            lg = kv ? fe_llama_forward_cached(m, idx, kv, false) : NULL;
            fe_kv_cache_free(kv);
        } else {
            lg = fe_llama_forward(m, idx);
        }
        float *buf = lg ? malloc((size_t)(n * V) * sizeof *buf) : NULL;
        if (!buf || fe_to_host(lg, buf, FE_F32)) {
            rc = fail("forward");
        } else {
            FILE *f = fopen(out, "wb");
            if (!f || fwrite(buf, sizeof *buf, (size_t)(n * V), f) != (size_t)(n * V)) rc = 1;
            if (f && fclose(f)) rc = 1;
            if (rc) fprintf(stderr, "hf_logits: cannot write %s\n", out);
        }
        free(buf);
        fe_scope_end(sc);
    }
    if (!rc && greedy >= 0) {
        int32_t *o = malloc((size_t)(n + greedy) * sizeof *o);
        if (!o || fe_llama_generate_cached(m, ids, n, greedy, NULL, o, NULL, NULL, NULL)) {
            rc = fail("generate");
        } else {
            for (int64_t i = n; i < n + greedy; i++)
                printf("%s%d", i > n ? " " : "", (int)o[i]);
            printf("\n");
        }
        free(o);
    }
    if (!rc && bench > 0) {
        int32_t *o = malloc((size_t)(n + bench) * sizeof *o);
        double best_decode = 0, best_prefill = 0;
        bool graph = false;
        for (long r = 0; r < repeat && o && !rc; r++) { /* the first run warms up */
            fe_generate_stats st;
            if (fe_llama_generate_cached(m, ids, n, bench, NULL, o, NULL, NULL, &st)) {
                rc = fail("generate");
                break;
            }
            graph = st.graph_decode;
            double d = st.decode_s > 0 ? (double)(st.n_generated - 1) / st.decode_s : 0;
            double p = st.prefill_s > 0 ? (double)st.n_prompt / st.prefill_s : 0;
            if (r > 0 || repeat == 1) {
                if (d > best_decode) best_decode = d;
                if (p > best_prefill) best_prefill = p;
            }
        }
        if (!rc)
            printf("{\"prompt\": %lld, \"new\": %ld, \"prefill_tok_s\": %.2f, "
                   "\"decode_tok_s\": %.2f, \"graph_decode\": %s}\n",
                   (long long)n, bench, best_prefill, best_decode, graph ? "true" : "false");
        free(o);
    }
    fe_llama_free(m);
    free(ids);
    return rc;
}
