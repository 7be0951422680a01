/* Hugging Face Llama config.json: a strict reader and a writer transformers accepts. */
#include "io/io_internal.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES (16u << 20)

fe_hf_config fe_hf_config_default(void) {
    fe_hf_config c;
    memset(&c, 0, sizeof c);
    c.max_position_embeddings = 2048;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 10000.0;
    c.bos_token_id = 1; /* LlamaConfig's defaults */
    c.eos_token_id = 2;
    c.n_eos_token_ids = 1;
    c.eos_token_ids[0] = 2;
    return c;
}

static const char *json_type_name(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "a list";
    if (cJSON_IsObject(j)) return "an object";
    return "an unknown value";
}

static bool is_int(const cJSON *j) {
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    return isfinite(v) && floor(v) == v && fabs(v) <= 9007199254740992.0;
}

/* Read an integer field. Returns 1 when set, 0 when absent (or null with null_ok), -1 on error. */
static int get_int(const cJSON *o, const char *key, bool required, bool null_ok, int64_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || (null_ok && cJSON_IsNull(j))) {
        if (required) {
            fe_set_error(FE_ERR_FORMAT, "config: missing field \"%s\"", key);
            return -1;
        }
        return 0;
    }
    if (!is_int(j)) {
        fe_set_error(FE_ERR_FORMAT, "config: \"%s\" must be an integer, got %s", key,
                     cJSON_IsNumber(j) ? "a fractional or huge number" : json_type_name(j));
        return -1;
    }
    *out = (int64_t)j->valuedouble;
    return 1;
}

static int get_num(const cJSON *o, const char *key, bool required, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) {
        if (required) {
            fe_set_error(FE_ERR_FORMAT, "config: missing field \"%s\"", key);
            return -1;
        }
        return 0;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) {
        fe_set_error(FE_ERR_FORMAT, "config: \"%s\" must be a number, got %s", key,
                     json_type_name(j));
        return -1;
    }
    *out = j->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *key, bool *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return 0;
    if (!cJSON_IsBool(j)) {
        fe_set_error(FE_ERR_FORMAT, "config: \"%s\" must be true or false, got %s", key,
                     json_type_name(j));
        return -1;
    }
    *out = cJSON_IsTrue(j);
    return 1;
}

static int get_str(const cJSON *o, const char *key, char *out, size_t cap) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsString(j)) {
        fe_set_error(FE_ERR_FORMAT, "config: \"%s\" must be a string, got %s", key,
                     json_type_name(j));
        return -1;
    }
    if (strlen(j->valuestring) >= cap) {
        fe_set_error(FE_ERR_FORMAT, "config: \"%s\" value '%.40s' is too long", key,
                     j->valuestring);
        return -1;
    }
    snprintf(out, cap, "%s", j->valuestring);
    return 1;
}

static fe_status parse_rope_scaling(const cJSON *root, fe_hf_config *c) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) {
        /* transformers 5 writes "rope_parameters": {"rope_type", "rope_theta", factor, ...} */
        rs = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
        if (!cJSON_IsObject(rs)) return FE_OK;
    }
    if (!cJSON_IsObject(rs))
        return fe_set_error(FE_ERR_FORMAT,
                            "config: \"rope_scaling\" must be an object or null, got %s",
                            json_type_name(rs));
    char type[16] = "";
    int r = get_str(rs, "rope_type", type, sizeof type);
    if (r == 0) r = get_str(rs, "type", type, sizeof type);
    if (r < 0) return fe_last_status();
    if (r == 0)
        return fe_set_error(FE_ERR_FORMAT,
                            "config: rope_scaling has no \"rope_type\" (or \"type\")");
    if (!strcmp(type, "default")) return FE_OK;
    if (strcmp(type, "llama3") && strcmp(type, "linear") && strcmp(type, "dynamic"))
        return fe_set_error(
            FE_ERR_FORMAT,
            "config: unsupported rope_scaling type '%s' (ferric knows llama3, linear, dynamic)",
            type);
    snprintf(c->rope_scaling_type, sizeof c->rope_scaling_type, "%s", type);
    if (get_num(rs, "factor", true, &c->rope_factor) < 0) return fe_last_status();
    if (!(c->rope_factor > 0))
        return fe_set_error(FE_ERR_FORMAT, "config: rope_scaling factor must be positive, got %g",
                            c->rope_factor);
    if (strcmp(type, "llama3")) return FE_OK;
    if (get_num(rs, "low_freq_factor", true, &c->rope_low_freq_factor) < 0 ||
        get_num(rs, "high_freq_factor", true, &c->rope_high_freq_factor) < 0 ||
        get_int(rs, "original_max_position_embeddings", true, false,
                &c->rope_original_max_position_embeddings) < 0)
        return fe_last_status();
    if (!(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return fe_set_error(
            FE_ERR_FORMAT,
            "config: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got %g and %g",
            c->rope_low_freq_factor, c->rope_high_freq_factor);
    if (c->rope_original_max_position_embeddings <= 0)
        return fe_set_error(
            FE_ERR_FORMAT,
            "config: rope_scaling original_max_position_embeddings must be positive");
    return FE_OK;
}

static fe_status parse_eos(const cJSON *root, fe_hf_config *c) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!j) return FE_OK; /* keep the default */
    c->n_eos_token_ids = 0;
    c->eos_token_id = -1;
    if (cJSON_IsNull(j)) return FE_OK;
    if (is_int(j)) {
        c->eos_token_ids[c->n_eos_token_ids++] = (int64_t)j->valuedouble;
    } else if (cJSON_IsArray(j)) {
        for (const cJSON *x = j->child; x; x = x->next) {
            if (!is_int(x))
                return fe_set_error(FE_ERR_FORMAT,
                                    "config: \"eos_token_id\" list holds %s, not an integer",
                                    json_type_name(x));
            if (c->n_eos_token_ids == FE_MAX_EOS_IDS)
                return fe_set_error(FE_ERR_FORMAT,
                                    "config: \"eos_token_id\" lists more than %d ids",
                                    FE_MAX_EOS_IDS);
            c->eos_token_ids[c->n_eos_token_ids++] = (int64_t)x->valuedouble;
        }
    } else {
        return fe_set_error(FE_ERR_FORMAT,
                            "config: \"eos_token_id\" must be an integer or a list, got %s",
                            json_type_name(j));
    }
    for (int i = 0; i < c->n_eos_token_ids; i++)
        if (c->eos_token_ids[i] < 0)
            return fe_set_error(FE_ERR_FORMAT, "config: \"eos_token_id\" %" PRId64 " is negative",
                                c->eos_token_ids[i]);
    if (c->n_eos_token_ids) c->eos_token_id = c->eos_token_ids[0];
    return FE_OK;
}

fe_status fe_hf_config_validate(const fe_hf_config *c) {
    if (!c) return fe_set_error(FE_ERR_ARG, "fe_hf_config_validate: config is NULL");
    const struct {
        const char *name;
        int64_t v;
    } pos[] = {{"vocab_size", c->vocab_size},
               {"hidden_size", c->hidden_size},
               {"intermediate_size", c->intermediate_size},
               {"num_hidden_layers", c->num_hidden_layers},
               {"num_attention_heads", c->num_attention_heads},
               {"num_key_value_heads", c->num_key_value_heads},
               {"head_dim", c->head_dim},
               {"max_position_embeddings", c->max_position_embeddings}};
    for (size_t i = 0; i < sizeof pos / sizeof *pos; i++)
        if (pos[i].v <= 0 || pos[i].v > ((int64_t)1 << 40))
            return fe_set_error(FE_ERR_FORMAT,
                                "config: \"%s\" must be a positive integer, got %" PRId64,
                                pos[i].name, pos[i].v);
    if (c->num_attention_heads % c->num_key_value_heads)
        return fe_set_error(FE_ERR_FORMAT,
                            "config: num_key_value_heads (%" PRId64
                            ") does not divide num_attention_heads (%" PRId64 ")",
                            c->num_key_value_heads, c->num_attention_heads);
    if (c->num_key_value_heads > c->num_attention_heads)
        return fe_set_error(FE_ERR_FORMAT,
                            "config: num_key_value_heads exceeds num_attention_heads");
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        return fe_set_error(FE_ERR_FORMAT, "config: \"rms_norm_eps\" must be positive, got %g",
                            c->rms_norm_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return fe_set_error(FE_ERR_FORMAT, "config: \"rope_theta\" must be positive, got %g",
                            c->rope_theta);
    if (c->bos_token_id >= c->vocab_size)
        return fe_set_error(FE_ERR_FORMAT,
                            "config: bos_token_id %" PRId64 " is outside the vocabulary (%" PRId64
                            ")",
                            c->bos_token_id, c->vocab_size);
    if (c->n_eos_token_ids < 0 || c->n_eos_token_ids > FE_MAX_EOS_IDS)
        return fe_set_error(FE_ERR_FORMAT, "config: bad number of eos_token_ids %d",
                            c->n_eos_token_ids);
    for (int i = 0; i < c->n_eos_token_ids; i++)
        if (c->eos_token_ids[i] < 0 || c->eos_token_ids[i] >= c->vocab_size)
            return fe_set_error(FE_ERR_FORMAT,
                                "config: eos_token_id %" PRId64
                                " is outside the vocabulary (%" PRId64 ")",
                                c->eos_token_ids[i], c->vocab_size);
    return FE_OK;
}

fe_status fe_hf_config_parse(const char *json, size_t len, fe_hf_config *out) {
    if (!json || !out) return fe_set_error(FE_ERR_ARG, "fe_hf_config_parse: NULL argument");
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return fe_set_error(FE_ERR_FORMAT, "config: not valid JSON");
    fe_hf_config c = fe_hf_config_default();
    fe_status st = FE_OK;
    char model_type[32] = "", act[32] = "";
    if (!cJSON_IsObject(root)) {
        st = fe_set_error(FE_ERR_FORMAT, "config: not a JSON object");
        goto done;
    }
    if (get_str(root, "model_type", model_type, sizeof model_type) < 0) goto fail;
    if (*model_type && strcmp(model_type, "llama")) {
        st =
            fe_set_error(FE_ERR_FORMAT, "config: model_type '%s' is not a Llama model", model_type);
        goto done;
    }
    if (get_str(root, "hidden_act", act, sizeof act) < 0) goto fail;
    if (*act && strcmp(act, "silu")) {
        st = fe_set_error(FE_ERR_FORMAT,
                          "config: hidden_act '%s' is not supported (Llama uses silu)", act);
        goto done;
    }
    if (get_int(root, "vocab_size", true, false, &c.vocab_size) < 0 ||
        get_int(root, "hidden_size", true, false, &c.hidden_size) < 0 ||
        get_int(root, "intermediate_size", true, false, &c.intermediate_size) < 0 ||
        get_int(root, "num_hidden_layers", true, false, &c.num_hidden_layers) < 0 ||
        get_int(root, "num_attention_heads", true, false, &c.num_attention_heads) < 0)
        goto fail;
    if (c.num_attention_heads <= 0) {
        st =
            fe_set_error(FE_ERR_FORMAT,
                         "config: \"num_attention_heads\" must be a positive integer, got %" PRId64,
                         c.num_attention_heads);
        goto done;
    }
    c.num_key_value_heads = c.num_attention_heads;
    if (get_int(root, "num_key_value_heads", false, true, &c.num_key_value_heads) < 0) goto fail;
    int r = get_int(root, "head_dim", false, true, &c.head_dim);
    if (r < 0) goto fail;
    if (r == 0) {
        if (c.hidden_size % c.num_attention_heads) {
            st = fe_set_error(FE_ERR_FORMAT,
                              "config: num_attention_heads (%" PRId64
                              ") does not divide hidden_size (%" PRId64 ")",
                              c.num_attention_heads, c.hidden_size);
            goto done;
        }
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (get_int(root, "max_position_embeddings", false, false, &c.max_position_embeddings) < 0 ||
        get_num(root, "rms_norm_eps", false, &c.rms_norm_eps) < 0 ||
        get_num(root, "rope_theta", false, &c.rope_theta) < 0 ||
        (!cJSON_GetObjectItemCaseSensitive(root, "rope_theta") &&
         cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "rope_parameters")) &&
         get_num(cJSON_GetObjectItemCaseSensitive(root, "rope_parameters"), "rope_theta", false,
                 &c.rope_theta) < 0) ||
        get_bool(root, "tie_word_embeddings", &c.tie_word_embeddings) < 0 ||
        get_bool(root, "attention_bias", &c.attention_bias) < 0 ||
        get_bool(root, "mlp_bias", &c.mlp_bias) < 0)
        goto fail;
    r = get_str(root, "torch_dtype", c.torch_dtype, sizeof c.torch_dtype);
    if (r == 0) r = get_str(root, "dtype", c.torch_dtype, sizeof c.torch_dtype);
    if (r < 0) goto fail;
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (bos && cJSON_IsNull(bos))
        c.bos_token_id = -1;
    else if (get_int(root, "bos_token_id", false, false, &c.bos_token_id) < 0)
        goto fail;
    if (c.bos_token_id < -1) {
        st = fe_set_error(FE_ERR_FORMAT, "config: \"bos_token_id\" is negative");
        goto done;
    }
    if (parse_eos(root, &c) || parse_rope_scaling(root, &c)) goto fail;
    st = fe_hf_config_validate(&c);
    if (!st) *out = c;
    goto done;
fail:
    st = fe_last_status();
done:
    cJSON_Delete(root);
    return st;
}

fe_status fe_hf_config_load(const char *path, fe_hf_config *out) {
    if (!path || !out) return fe_set_error(FE_ERR_ARG, "fe_hf_config_load: NULL argument");
    char *file = fe__is_dir(path) ? fe__path_join(path, "config.json") : strdup(path);
    if (!file) return fe_set_error(FE_ERR_OOM, "out of host memory");
    size_t len;
    char *text = fe__read_text_file(file, CONFIG_MAX_BYTES, &len);
    fe_status st = text ? fe_hf_config_parse(text, len, out) : fe_last_status();
    if (st && text) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", fe_last_error());
        fe_set_error(st, "%s (in '%s')", msg, file);
    }
    free(text);
    free(file);
    return st;
}

/* Add a number that reads back as exactly the same double: cJSON's own printer settles
 * for 15 significant digits when they come within an epsilon, which loses bits. */
static void add_exact_number(cJSON *o, const char *key, double v) {
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    cJSON_AddRawToObject(o, key, buf);
}

char *fe_hf_config_to_json(const fe_hf_config *c) {
    if (fe_hf_config_validate(c) != FE_OK) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddBoolToObject(o, "attention_bias", c->attention_bias);
    add_exact_number(o, "attention_dropout", 0.0);
    if (c->bos_token_id >= 0)
        add_exact_number(o, "bos_token_id", (double)c->bos_token_id);
    else
        cJSON_AddNullToObject(o, "bos_token_id");
    if (c->n_eos_token_ids == 0) {
        cJSON_AddNullToObject(o, "eos_token_id");
    } else if (c->n_eos_token_ids == 1) {
        add_exact_number(o, "eos_token_id", (double)c->eos_token_ids[0]);
    } else {
        cJSON *l = cJSON_AddArrayToObject(o, "eos_token_id");
        for (int i = 0; i < c->n_eos_token_ids; i++)
            cJSON_AddItemToArray(l, cJSON_CreateNumber((double)c->eos_token_ids[i]));
    }
    add_exact_number(o, "head_dim", (double)c->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    add_exact_number(o, "hidden_size", (double)c->hidden_size);
    add_exact_number(o, "initializer_range", 0.02);
    add_exact_number(o, "intermediate_size", (double)c->intermediate_size);
    add_exact_number(o, "max_position_embeddings", (double)c->max_position_embeddings);
    cJSON_AddBoolToObject(o, "mlp_bias", c->mlp_bias);
    cJSON_AddStringToObject(o, "model_type", "llama");
    add_exact_number(o, "num_attention_heads", (double)c->num_attention_heads);
    add_exact_number(o, "num_hidden_layers", (double)c->num_hidden_layers);
    add_exact_number(o, "num_key_value_heads", (double)c->num_key_value_heads);
    add_exact_number(o, "pretraining_tp", 1);
    add_exact_number(o, "rms_norm_eps", c->rms_norm_eps);
    if (!c->rope_scaling_type[0]) {
        cJSON_AddNullToObject(o, "rope_scaling");
    } else {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        add_exact_number(rs, "factor", c->rope_factor);
        if (!strcmp(c->rope_scaling_type, "llama3")) {
            add_exact_number(rs, "high_freq_factor", c->rope_high_freq_factor);
            add_exact_number(rs, "low_freq_factor", c->rope_low_freq_factor);
            add_exact_number(rs, "original_max_position_embeddings",
                                    (double)c->rope_original_max_position_embeddings);
        }
        cJSON_AddStringToObject(rs, "rope_type", c->rope_scaling_type);
    }
    add_exact_number(o, "rope_theta", c->rope_theta);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(o, "torch_dtype", c->torch_dtype[0] ? c->torch_dtype : "float32");
    cJSON_AddBoolToObject(o, "use_cache", true);
    add_exact_number(o, "vocab_size", (double)c->vocab_size);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) {
        fe_set_error(FE_ERR_OOM, "fe_hf_config_to_json: out of host memory");
        return NULL;
    }
    /* hand back memory the caller frees with free() */
    char *r = strdup(s);
    cJSON_free(s);
    if (!r) fe_set_error(FE_ERR_OOM, "fe_hf_config_to_json: out of host memory");
    return r;
}

fe_status fe_hf_config_save(const char *path, const fe_hf_config *c) {
    char *s = fe_hf_config_to_json(c);
    if (!s) return fe_last_status();
    fe_atomic_file *f = fe_atomic_open(path);
    fe_status st = f ? fe_atomic_write(f, s, strlen(s)) : fe_last_status();
    if (!st) st = fe_atomic_write(f, "\n", 1);
    free(s);
    if (st) {
        fe_atomic_abort(f);
        return st;
    }
    return fe_atomic_commit(f);
}

/* a*b and a+b that latch *ovf instead of overflowing */
static int64_t mul(int64_t a, int64_t b, bool *ovf) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) *ovf = true;
    return *ovf ? 0 : r;
}

static int64_t add(int64_t a, int64_t b, bool *ovf) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) *ovf = true;
    return *ovf ? 0 : r;
}

int64_t fe_hf_config_num_params(const fe_hf_config *c) {
    if (!c) return 0;
    bool o = false;
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, D = c->head_dim;
    int64_t q = mul(c->num_attention_heads, D, &o), kv = mul(c->num_key_value_heads, D, &o);
    /* q, k, v, o projections (+ biases) */
    int64_t attn = add(add(mul(2, mul(H, q, &o), &o), mul(2, mul(H, kv, &o), &o), &o),
                       c->attention_bias ? add(add(q, mul(2, kv, &o), &o), H, &o) : 0, &o);
    /* gate, up, down (+ biases) */
    int64_t mlp = add(mul(3, mul(H, I, &o), &o), c->mlp_bias ? add(mul(2, I, &o), H, &o) : 0, &o);
    int64_t layer = add(add(attn, mlp, &o), mul(2, H, &o), &o);
    int64_t embed = mul(V, H, &o);
    int64_t total = add(add(embed, mul(c->num_hidden_layers, layer, &o), &o), H, &o);
    if (!c->tie_word_embeddings) total = add(total, embed, &o);
    return o ? -1 : total;
}
