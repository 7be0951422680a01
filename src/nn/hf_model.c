/* Hugging Face Llama folders <-> fe_llama: the config mapping, loading every tensor by
 * its Hugging Face name with shape checks, and saving config.json + model.safetensors. */
#include "core/internal.h"
#include "ferric/hf.h"
#include "ferric/io.h"
#include "ferric/nn.h"
#include "io/io_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Re-raise the current error with a prefix (copied first: the message buffer is reused). */
static fe_status prefix_error(fe_status st, const char *prefix) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", fe_last_error());
    return fe_set_error(st, "%s: %s", prefix, msg);
}

fe_status fe_llama_config_from_hf(const fe_hf_config *hf, fe_llama_config *out) {
    if (!hf || !out) return fe_set_error(FE_ERR_ARG, "fe_llama_config_from_hf: NULL argument");
    fe_status st = fe_hf_config_validate(hf);
    if (st) return st;
    if (hf->attention_bias || hf->mlp_bias)
        return fe_set_error(FE_ERR_FORMAT, "config: %s is not supported by ferric's Llama",
                            hf->attention_bias ? "attention_bias" : "mlp_bias");
    fe_rope_scaling rs = {0};
    if (hf->rope_scaling_type[0]) {
        if (strcmp(hf->rope_scaling_type, "llama3"))
            return fe_set_error(FE_ERR_FORMAT,
                                "config: rope_scaling type '%s' is not supported (only llama3)",
                                hf->rope_scaling_type);
        rs =
            (fe_rope_scaling){true, hf->rope_factor, hf->rope_low_freq_factor,
                              hf->rope_high_freq_factor, hf->rope_original_max_position_embeddings};
    }
    fe_llama_config c = {
        .vocab_size = hf->vocab_size,
        .dim = hf->hidden_size,
        .n_layers = hf->num_hidden_layers,
        .n_heads = hf->num_attention_heads,
        .n_kv_heads = hf->num_key_value_heads,
        .head_dim = hf->head_dim,
        .ffn_dim = hf->intermediate_size,
        .max_seq = hf->max_position_embeddings,
        .norm_eps = hf->rms_norm_eps,
        .rope_theta = hf->rope_theta,
        .rope_scaling = rs,
        .tie_embeddings = hf->tie_word_embeddings,
    };
    st = fe_llama_config_check(&c);
    if (st) return prefix_error(FE_ERR_FORMAT, "config");
    *out = c;
    return FE_OK;
}

fe_status fe_hf_folder_config(const char *path, fe_hf_config *out) {
    if (!path || !out) return fe_set_error(FE_ERR_ARG, "fe_hf_folder_config: NULL argument");
    return fe_hf_config_load(path, out);
}

static const char *torch_dtype_name(fe_dtype dt) {
    switch (dt) {
    case FE_F32: return "float32";
    case FE_BF16: return "bfloat16";
    case FE_F16: return "float16";
    case FE_F64: return "float64";
    default: return NULL;
    }
}

fe_status fe_hf_config_from_llama(const fe_llama_config *c, fe_dtype dt, fe_hf_config *out) {
    if (!c || !out) return fe_set_error(FE_ERR_ARG, "fe_hf_config_from_llama: NULL argument");
    fe_status st = fe_llama_config_check(c);
    if (st) return st;
    const char *tn = torch_dtype_name(dt);
    if (!tn)
        return fe_set_error(FE_ERR_DTYPE, "hf config: no torch dtype for %s", fe_dtype_name(dt));
    fe_hf_config h = fe_hf_config_default();
    h.vocab_size = c->vocab_size;
    h.hidden_size = c->dim;
    h.intermediate_size = c->ffn_dim;
    h.num_hidden_layers = c->n_layers;
    h.num_attention_heads = c->n_heads;
    h.num_key_value_heads = c->n_kv_heads;
    h.head_dim = c->head_dim ? c->head_dim : c->dim / c->n_heads;
    h.max_position_embeddings = c->max_seq;
    h.rms_norm_eps = c->norm_eps;
    h.rope_theta = c->rope_theta;
    if (c->rope_scaling.llama3) {
        snprintf(h.rope_scaling_type, sizeof h.rope_scaling_type, "llama3");
        h.rope_factor = c->rope_scaling.factor;
        h.rope_low_freq_factor = c->rope_scaling.low_freq_factor;
        h.rope_high_freq_factor = c->rope_scaling.high_freq_factor;
        h.rope_original_max_position_embeddings = c->rope_scaling.original_max_position_embeddings;
    }
    h.tie_word_embeddings = c->tie_embeddings;
    snprintf(h.torch_dtype, sizeof h.torch_dtype, "%s", tn);
    if (h.vocab_size <= 2) { /* no room for the default special ids */
        h.bos_token_id = -1;
        h.eos_token_id = -1;
        h.n_eos_token_ids = 0;
    }
    st = fe_hf_config_validate(&h);
    if (st) return st;
    *out = h;
    return FE_OK;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t at = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && at < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (at < n) snprintf(buf + at, n - at, ")");
}

/* Replace every parameter of m with the tensor of the same name in w (cast to dt). */
static fe_status load_params(fe_llama *m, const fe_weights *w, const char *dir, fe_dtype dt,
                             fe_device dev) {
    fe_params *p = fe_llama_params(m);
    for (int i = 0; i < fe_params_count(p); i++) {
        const char *name = fe_params_name(p, i);
        fe_tensor *want = fe_params_at(p, i);
        char es[128], fs[128];
        shape_text(fe_ndim(want), fe_shape(want), es, sizeof es);
        fe_st_info info;
        if (fe_weights_file_of(w, name) == NULL || fe_weights_info(w, name, &info))
            return fe_set_error(FE_ERR_FORMAT, "%s: missing tensor %s (expected shape %s)", dir,
                                name, es);
        bool same = info.ndim == fe_ndim(want);
        for (int d = 0; same && d < info.ndim; d++)
            same = info.shape[d] == fe_dim(want, d);
        if (!same) {
            shape_text(info.ndim, info.shape, fs, sizeof fs);
            return fe_set_error(FE_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s", dir, name,
                                fs, es);
        }
        if (!info.has_fe_dtype || !fe_dtype_is_float(info.dtype))
            return fe_set_error(FE_ERR_FORMAT, "%s: tensor %s has dtype %s, expected a float", dir,
                                name, info.dtype_name);
        fe_tensor *t = fe_weights_load_as(w, name, dt, dev);
        if (!t) {
            char where[1200];
            snprintf(where, sizeof where, "%s: loading %s", dir, name);
            return prefix_error(fe_last_status(), where);
        }
        fe_status st = fe_params_replace(p, i, t);
        if (st) return st;
    }
    return fe_params_set_requires_grad(p, true);
}

fe_llama *fe_llama_load_hf(const char *dir, fe_dtype dt, fe_device dev) {
    if (!dir) {
        fe_set_error(FE_ERR_ARG, "fe_llama_load_hf: NULL folder");
        return NULL;
    }
    fe_hf_config hf;
    fe_llama_config cfg;
    if (fe_hf_folder_config(dir, &hf)) return NULL;
    if (fe_llama_config_from_hf(&hf, &cfg)) {
        prefix_error(FE_ERR_FORMAT, dir);
        return NULL;
    }
    fe_weights *w = fe_weights_open(dir);
    if (!w) return NULL;
    if (dt == FE_DTYPE_STORED) {
        fe_st_info info;
        if (fe_weights_file_of(w, "model.embed_tokens.weight") == NULL ||
            fe_weights_info(w, "model.embed_tokens.weight", &info)) {
            fe_set_error(FE_ERR_FORMAT,
                         "%s: missing tensor model.embed_tokens.weight (expected shape (%" PRId64
                         ", %" PRId64 "))",
                         dir, cfg.vocab_size, cfg.dim);
            fe_weights_close(w);
            return NULL;
        }
        dt = info.has_fe_dtype ? info.dtype : FE_U8;
    }
    if (!fe_dtype_is_float(dt) || !torch_dtype_name(dt)) {
        fe_set_error(FE_ERR_DTYPE, "%s: cannot load the model as %s (want f32, bf16, f16 or f64)",
                     dir, (int)dt >= 0 ? fe_dtype_name(dt) : "?");
        fe_weights_close(w);
        return NULL;
    }
    /* the model is built with placeholder weights, then every one is replaced from the file;
     * the placeholders must not move the caller's random stream */
    fe_rng_state rng = fe_rng_get_state();
    fe_llama *m = fe_llama_new(&cfg, dt, dev);
    fe_rng_set_state(rng);
    fe_scope *s = fe__scope_suspend();
    fe_status st = m ? load_params(m, w, dir, dt, dev) : fe_last_status();
    fe__scope_resume(s);
    fe_weights_close(w);
    if (st) {
        fe_llama_free(m);
        return NULL;
    }
    return m;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

fe_status fe_llama_save_hf(const fe_llama *m, const char *dir) {
    if (!m || !dir) return fe_set_error(FE_ERR_ARG, "fe_llama_save_hf: NULL model or folder");
    fe_llama *mm = (fe_llama *)m; /* read only: fe_llama_params has no const form */
    fe_params *p = fe_llama_params(mm);
    int n = fe_params_count(p);
    fe_hf_config hf;
    fe_status st =
        fe_hf_config_from_llama(fe_llama_config_of(m), fe_dtype_of(fe_params_at(p, 0)), &hf);
    if (st) return st;
    if (mkdir(dir, 0755) && errno != EEXIST)
        return fe_set_error(FE_ERR_IO, "cannot create folder '%s': %s", dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
        return fe_set_error(FE_ERR_IO, "'%s' is not a folder", dir);
    fe_named_tensor *nt = malloc((size_t)n * sizeof *nt);
    char *wpath = join(dir, "model.safetensors"), *cpath = join(dir, "config.json");
    char *ipath = join(dir, "model.safetensors.index.json");
    if (!nt || !wpath || !cpath || !ipath) {
        st = fe_set_error(FE_ERR_OOM, "fe_llama_save_hf: out of host memory");
        goto done;
    }
    for (int i = 0; i < n; i++)
        nt[i] = (fe_named_tensor){fe_params_name(p, i), fe_params_at(p, i)};
    fe_kv meta[1] = {{"format", "pt"}}; /* transformers refuses files without it */
    st = fe_safetensors_save(wpath, nt, n, meta, 1);
    if (!st && unlink(ipath) && errno != ENOENT)
        st = fe_set_error(FE_ERR_IO, "cannot remove the stale '%s': %s", ipath, strerror(errno));
    if (!st) st = fe_hf_config_save(cpath, &hf);
done:
    free(nt), free(wpath), free(cpath), free(ipath);
    return st;
}
