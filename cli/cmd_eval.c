/* `ferric eval`: perplexity of a Hugging Face Llama folder on a text file. */
#include "ferric/ferric.h"
#include "ferric/hf.h"
#include "ferric/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int fe_cmd_eval(int argc, char **argv);

static void eval_usage(FILE *f) {
    fprintf(f, "usage: ferric eval --model DIR --data FILE [options]\n"
               "\n"
               "Perplexity (exp of the mean next-token NLL) of the Llama model in DIR over FILE,\n"
               "tokenized with DIR's tokenizer.json (or as bytes when there is none), in\n"
               "non-overlapping windows: every token but the first is predicted once, from the\n"
               "tokens before it in its window.\n"
               "\n"
               "  --model DIR    a Hugging Face Llama folder\n"
               "  --data FILE    UTF-8 text\n"
               "  --seq N        window length (default 512, at most the model's positions)\n"
               "  --batch B      windows per forward pass (default 1)\n"
               "  --device D     cpu or cuda[:N] (default cuda when available)\n"
               "  --dtype T      f32, bf16 or f16 (default: as stored)\n");
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *p = malloc(cap);
    while (p) {
        if (len == cap) {
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                p = NULL;
                break;
            }
            p = q, cap *= 2;
        }
        size_t k = fread(p + len, 1, cap - len, f);
        len += k;
        if (k == 0) break;
    }
    if (p && ferror(f)) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = len;
    return p;
}

/* Sum of the NLL of targets given tokens, for `rows` windows of T tokens starting at
 * ids + starts[i]; adds to *nll. */
static fe_status run_windows(fe_llama *m, const int32_t *ids, const int64_t *starts, int64_t rows,
                             int64_t T, fe_device dev, double *nll) {
    int32_t *x = malloc((size_t)(rows * T) * sizeof *x),
            *y = malloc((size_t)(rows * T) * sizeof *y);
    if (!x || !y) {
        free(x), free(y);
        return fe_set_error(FE_ERR_OOM, "eval: out of host memory");
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < T; t++) {
            x[r * T + t] = ids[starts[r] + t];
            y[r * T + t] = ids[starts[r] + t + 1];
        }
    fe_scope *sc = fe_scope_begin();
    int64_t shape[2] = {rows, T};
    fe_tensor *xt = fe_from_data(x, 2, shape, FE_I32, dev);
    fe_tensor *yt = fe_from_data(y, 2, shape, FE_I32, dev);
    fe_tensor *logits = xt && yt ? fe_llama_forward(m, xt) : NULL;
    fe_tensor *l32 = logits ? fe_cast(logits, FE_F32) : NULL;
    fe_tensor *loss = l32 ? fe_llama_loss(l32, yt) : NULL; /* mean over rows * T */
    fe_status st = loss ? FE_OK : fe_last_status();
    double v = 0;
    if (!st) st = fe_to_host(loss, &v, FE_F64);
    fe_scope_end(sc);
    free(x), free(y);
    if (!st) *nll += v * (double)(rows * T);
    return st;
}

int fe_cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *device = NULL, *dtype = NULL;
    long seq = 512, batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            eval_usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "ferric eval: unknown option or missing value: %s\n\n", a);
            eval_usage(stderr);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--dtype"))
            dtype = v;
        else if (!strcmp(a, "--seq") || !strcmp(a, "--batch")) {
            errno = 0;
            long n = strtol(v, &end, 10);
            if (!*v || *end || errno || n < 1 || n > (1L << 24)) {
                fprintf(stderr, "ferric eval: bad value '%s' for %s\n", v, a);
                return 2;
            }
            *(!strcmp(a, "--seq") ? &seq : &batch) = n;
        } else {
            fprintf(stderr, "ferric eval: unknown option %s\n\n", a);
            eval_usage(stderr);
            return 2;
        }
        i++;
    }
    if (!model || !data) {
        fprintf(stderr, "ferric eval: --model and --data are required\n\n");
        eval_usage(stderr);
        return 2;
    }
    fe_device dev = fe_device_available(FE_CUDA) ? (fe_device){FE_CUDA, 0} : FE_DEVICE_CPU;
    if (device && !fe_device_parse(device, &dev)) {
        fprintf(stderr, "ferric eval: unknown device '%s'\n", device);
        return 2;
    }
    fe_dtype dt = FE_DTYPE_STORED;
    if (dtype && (!fe_dtype_parse(dtype, &dt) || (dt != FE_F32 && dt != FE_BF16 && dt != FE_F16))) {
        fprintf(stderr, "ferric eval: --dtype must be f32, bf16 or f16, not '%s'\n", dtype);
        return 2;
    }
    size_t n_text = 0;
    char *text = read_file(data, &n_text);
    if (!text) {
        fprintf(stderr, "ferric eval: cannot read '%s': %s\n", data, strerror(errno));
        return 1;
    }
    fe_llama *m = fe_llama_load_hf(model, dt, dev);
    if (!m) {
        fprintf(stderr, "ferric eval: %s\n", fe_last_error());
        free(text);
        return 1;
    }
    int rc = 1;
    int32_t *ids = NULL;
    size_t n = 0;
    int64_t V = fe_llama_config_of(m)->vocab_size, max_seq = fe_llama_config_of(m)->max_seq;
    fe_tokenizer *tok = fe_tokenizer_load(model);
    if (tok) {
        if (fe_tokenizer_encode(tok, text, n_text, true, &ids, &n)) {
            fprintf(stderr, "ferric eval: %s\n", fe_last_error());
            goto done;
        }
    } else {
        if (V < 256) {
            fprintf(stderr,
                    "ferric eval: no tokenizer in '%s' and the vocabulary (%lld) is too "
                    "small for bytes\n",
                    model, (long long)V);
            goto done;
        }
        fprintf(stderr, "ferric eval: no tokenizer in '%s': scoring bytes\n", model);
        ids = malloc((n_text ? n_text : 1) * sizeof *ids);
        if (!ids) goto done;
        for (size_t i = 0; i < n_text; i++)
            ids[i] = (unsigned char)text[i];
        n = n_text;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            fprintf(stderr, "ferric eval: token %d is outside the model's vocabulary (%lld)\n",
                    (int)ids[i], (long long)V);
            goto done;
        }
    if (n < 2) {
        fprintf(stderr, "ferric eval: '%s' holds fewer than two tokens\n", data);
        goto done;
    }
    if (seq > max_seq) seq = (long)max_seq;
    int64_t T = seq, full = (int64_t)(n - 1) / T, rest = (int64_t)(n - 1) - full * T;
    int64_t *starts = malloc((size_t)(batch > 0 ? batch : 1) * sizeof *starts);
    if (!starts) goto done;
    bool prev = fe_set_grad_enabled(false);
    double nll = 0;
    fe_status st = FE_OK;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t w = 0; w < full && !st; w += batch) {
        int64_t rows = full - w < batch ? full - w : batch;
        for (int64_t r = 0; r < rows; r++)
            starts[r] = (w + r) * T;
        st = run_windows(m, ids, starts, rows, T, dev, &nll);
    }
    if (!st && rest > 0) {
        starts[0] = full * T;
        st = run_windows(m, ids, starts, 1, rest, dev, &nll);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fe_set_grad_enabled(prev);
    free(starts);
    if (st) {
        fprintf(stderr, "ferric eval: %s\n", fe_last_error());
        goto done;
    }
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    double mean = nll / (double)(n - 1);
    printf("tokens %zu  windows %lld x %lld (+%lld)  mean nll %.6f  perplexity %.4f\n", n,
           (long long)full, (long long)T, (long long)rest, mean, exp(mean));
    fprintf(stderr, "%.1f tokens/s\n", secs > 0 ? (double)(n - 1) / secs : 0.0);
    rc = 0;
done:
    free(ids);
    free(text);
    fe_tokenizer_free(tok);
    fe_llama_free(m);
    return rc;
}
