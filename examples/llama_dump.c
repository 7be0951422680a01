/* Build the tiny test Llama with a seed, run forward and backward on a fixed batch,
 * and write everything a reference implementation needs into a folder:
 *
 *   manifest.json        config, loss, batch shape and the list of files below
 *   tokens.bin           (B, T) int32 input tokens
 *   targets.bin          (B, T) int32 targets
 *   logits.bin           (B, T, V) float32
 *   inv_freq.bin         (head_dim/2) float32 RoPE frequencies
 *   <param>.bin          each parameter, float32, row-major
 *   <param>.grad.bin     its gradient, float32
 *
 * All raw files are little-endian. Used by tests/parity/llama_parity.py.
 *
 *   example_llama_dump OUT_DIR [--seed N] [--tied] [--llama3-scaling]
 */
#include "ferric/ferric.h"
#include "ferric/nn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define B 2
#define T 7

static bool little_endian(void) {
    uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Write n bytes to dir/name through a temporary file, fsync and rename. */
static int write_atomic(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "llama_dump: cannot create %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            fprintf(stderr, "llama_dump: writing %s failed: %s\n", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "llama_dump: finishing %s failed: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* A tensor as little-endian raw values of dtype dt (f32 or i32). */
static int write_tensor(const char *dir, const char *name, const fe_tensor *t, fe_dtype dt) {
    size_t n = (size_t)fe_numel(t), es = fe_dtype_size(dt);
    unsigned char *buf = malloc(n * es + 1);
    if (!buf || fe_to_host(t, buf, dt) != FE_OK) {
        fprintf(stderr, "llama_dump: reading %s: %s\n", name,
                buf ? fe_last_error() : "out of memory");
        free(buf);
        return -1;
    }
    if (!little_endian())
        for (size_t i = 0; i < n; i++)
            for (size_t a = 0, b = es - 1; a < b; a++, b--) {
                unsigned char c = buf[i * es + a];
                buf[i * es + a] = buf[i * es + b];
                buf[i * es + b] = c;
            }
    int rc = write_atomic(dir, name, buf, n * es);
    free(buf);
    return rc;
}

static cJSON *shape_json(const fe_tensor *t) {
    cJSON *a = cJSON_CreateArray();
    for (int d = 0; d < fe_ndim(t); d++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)fe_dim(t, d)));
    return a;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    uint64_t seed = 1;
    bool tied = false, scaling = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--tied"))
            tied = true;
        else if (!strcmp(argv[i], "--llama3-scaling"))
            scaling = true;
        else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else {
            fprintf(stderr, "usage: %s OUT_DIR [--seed N] [--tied] [--llama3-scaling]\n", argv[0]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: %s OUT_DIR [--seed N] [--tied] [--llama3-scaling]\n", argv[0]);
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "llama_dump: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    fe_llama_config c = {.vocab_size = 61,
                         .dim = 24,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .head_dim = 6,
                         .ffn_dim = 40,
                         .max_seq = T,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000.0,
                         .tie_embeddings = tied,
                         .init_std = 0.2};
    if (scaling) c.rope_scaling = (fe_rope_scaling){true, 8.0, 1.0, 4.0, 256};
    fe_manual_seed(seed);
    fe_llama *m = fe_llama_new(&c, FE_F32, FE_DEVICE_CPU);
    if (!m) {
        fprintf(stderr, "llama_dump: %s\n", fe_last_error());
        return 1;
    }
    int32_t xs[B * T], ys[B * T];
    for (int i = 0; i < B * T; i++) {
        xs[i] = (int32_t)((i * 37 + 11) % 61);
        ys[i] = (int32_t)((i * 23 + 5) % 61);
    }
    ys[3] = -100; /* one ignored position */
    int rc = 1;
    fe_scope *s = fe_scope_begin();
    fe_tensor *x = fe_from_data(xs, 2, (int64_t[]){B, T}, FE_I32, FE_DEVICE_CPU);
    fe_tensor *y = fe_from_data(ys, 2, (int64_t[]){B, T}, FE_I32, FE_DEVICE_CPU);
    fe_tensor *logits = fe_llama_forward(m, x);
    fe_tensor *loss = fe_llama_loss(logits, y);
    if (!loss || fe_backward(loss, NULL) != FE_OK) {
        fprintf(stderr, "llama_dump: %s\n", fe_last_error());
        goto done;
    }
    cJSON *man = cJSON_CreateObject(), *cfg = cJSON_AddObjectToObject(man, "config");
    cJSON_AddNumberToObject(cfg, "vocab_size", (double)c.vocab_size);
    cJSON_AddNumberToObject(cfg, "hidden_size", (double)c.dim);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", (double)c.n_layers);
    cJSON_AddNumberToObject(cfg, "num_attention_heads", (double)c.n_heads);
    cJSON_AddNumberToObject(cfg, "num_key_value_heads", (double)c.n_kv_heads);
    cJSON_AddNumberToObject(cfg, "head_dim", (double)c.head_dim);
    cJSON_AddNumberToObject(cfg, "intermediate_size", (double)c.ffn_dim);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", (double)c.max_seq);
    cJSON_AddNumberToObject(cfg, "rms_norm_eps", c.norm_eps);
    cJSON_AddNumberToObject(cfg, "rope_theta", c.rope_theta);
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", tied);
    if (scaling) {
        cJSON *rs = cJSON_AddObjectToObject(cfg, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", c.rope_scaling.factor);
        cJSON_AddNumberToObject(rs, "low_freq_factor", c.rope_scaling.low_freq_factor);
        cJSON_AddNumberToObject(rs, "high_freq_factor", c.rope_scaling.high_freq_factor);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                (double)c.rope_scaling.original_max_position_embeddings);
    } else {
        cJSON_AddNullToObject(cfg, "rope_scaling");
    }
    cJSON_AddNumberToObject(man, "seed", (double)seed);
    cJSON_AddNumberToObject(man, "loss", fe_item(loss));
    cJSON_AddNumberToObject(man, "ignore_index", -100);
    cJSON_AddItemToObject(man, "batch_shape", shape_json(x));
    cJSON_AddStringToObject(man, "tokens", "tokens.bin");
    cJSON_AddStringToObject(man, "targets", "targets.bin");
    cJSON_AddStringToObject(man, "logits", "logits.bin");
    cJSON_AddStringToObject(man, "inv_freq", "inv_freq.bin");
    int bad = write_tensor(dir, "tokens.bin", x, FE_I32) |
              write_tensor(dir, "targets.bin", y, FE_I32) |
              write_tensor(dir, "logits.bin", logits, FE_F32) |
              write_tensor(dir, "inv_freq.bin", fe_llama_inv_freq(m), FE_F32);
    cJSON *plist = cJSON_AddArrayToObject(man, "params");
    fe_params *p = fe_llama_params(m);
    for (int i = 0; i < fe_params_count(p) && !bad; i++) {
        const char *name = fe_params_name(p, i);
        fe_tensor *t = fe_params_at(p, i), *g = fe_grad(t);
        char f[300], gf[320];
        snprintf(f, sizeof f, "%s.bin", name);
        snprintf(gf, sizeof gf, "%s.grad.bin", name);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", name);
        cJSON_AddItemToObject(e, "shape", shape_json(t));
        cJSON_AddStringToObject(e, "file", f);
        cJSON_AddStringToObject(e, "grad_file", g ? gf : "");
        cJSON_AddItemToArray(plist, e);
        bad |= write_tensor(dir, f, t, FE_F32);
        if (g) bad |= write_tensor(dir, gf, g, FE_F32);
    }
    char *json = cJSON_Print(man);
    if (!bad && json) bad = write_atomic(dir, "manifest.json", json, strlen(json));
    if (!bad) {
        printf("wrote %d parameters, loss %.6f, to %s\n", fe_params_count(p), fe_item(loss), dir);
        rc = 0;
    }
    free(json);
    cJSON_Delete(man);
done:
    fe_scope_end(s);
    fe_llama_free(m);
    return rc;
}
