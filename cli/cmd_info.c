/* `ferric info FILE_OR_DIR`: the tensors of a safetensors file, a sharded index or a
 * model folder (names, dtypes, shapes, parameter count) and its config.json summary. */
#include "ferric/ferric.h"
#include "ferric/io.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int fe_cmd_info(int argc, char **argv);

static void info_usage(FILE *f) {
    fprintf(f, "usage: ferric info PATH [--json] [--dump NAME] [--limit N]\n"
               "\n"
               "PATH is a .safetensors file, a model.safetensors.index.json, a config.json, or a\n"
               "model folder holding config.json and model.safetensors (or an index and shards).\n"
               "\n"
               "  --json       print everything as one JSON object\n"
               "  --dump NAME  print the values of tensor NAME, one per line\n"
               "  --limit N    with --dump, print at most N values\n");
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static bool is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static const char *human_bytes(double b, char *buf, size_t n) {
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4)
        b /= 1000, i++;
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
    return buf;
}

static const char *shape_text(const fe_st_info *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %" PRId64 : "%" PRId64, t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "%s)", t->ndim == 1 ? "," : "");
    return buf;
}

static void config_line(const fe_hf_config *c) {
    printf("config: llama, %" PRId64 " layers, hidden %" PRId64 ", heads %" PRId64 " (kv %" PRId64
           ", head_dim %" PRId64 "), ffn %" PRId64 ", vocab %" PRId64 ", context %" PRId64 "\n",
           c->num_hidden_layers, c->hidden_size, c->num_attention_heads, c->num_key_value_heads,
           c->head_dim, c->intermediate_size, c->vocab_size, c->max_position_embeddings);
    printf("        rope_theta %g", c->rope_theta);
    if (c->rope_scaling_type[0]) printf(" (%s scaling x%g)", c->rope_scaling_type, c->rope_factor);
    printf(", rms_norm_eps %g, %s embeddings%s%s, dtype %s\n", c->rms_norm_eps,
           c->tie_word_embeddings ? "tied" : "untied", c->attention_bias ? ", attention bias" : "",
           c->mlp_bias ? ", mlp bias" : "", c->torch_dtype[0] ? c->torch_dtype : "unspecified");
    printf("        bos %" PRId64 ", eos", c->bos_token_id);
    for (int i = 0; i < c->n_eos_token_ids; i++)
        printf(" %" PRId64, c->eos_token_ids[i]);
    printf("; %" PRId64 " parameters by config\n", fe_hf_config_num_params(c));
}

static cJSON *config_json(const fe_hf_config *c) {
    char *s = fe_hf_config_to_json(c);
    cJSON *o = s ? cJSON_Parse(s) : NULL;
    free(s);
    if (o) cJSON_AddNumberToObject(o, "num_parameters", (double)fe_hf_config_num_params(c));
    return o;
}

/* Print the values of one tensor exactly (integers from the raw bytes, floats via f64). */
static int dump(const fe_weights *w, const char *name, int64_t limit) {
    fe_st_info t;
    if (fe_weights_info(w, name, &t) != FE_OK) {
        fprintf(stderr, "ferric info: %s\n", fe_last_error());
        return 1;
    }
    int64_t n = limit >= 0 && limit < t.numel ? limit : t.numel;
    const char *dt = t.dtype_name;
    if (!strcmp(dt, "F32") || !strcmp(dt, "F64") || !strcmp(dt, "F16") || !strcmp(dt, "BF16")) {
        fe_scope *s = fe_scope_begin();
        fe_tensor *x = fe_weights_load_as(w, name, FE_F64, FE_DEVICE_CPU);
        const double *v = x ? fe_data(x) : NULL;
        if (!x) fprintf(stderr, "ferric info: %s\n", fe_last_error());
        for (int64_t i = 0; v && i < n; i++)
            printf("%.17g\n", v[i]);
        fe_scope_end(s);
        return x ? 0 : 1;
    }
    const fe_safetensors *f = fe_weights_file_of(w, name);
    const unsigned char *p = f ? fe_safetensors_raw(f, name, NULL) : NULL;
    if (!p) {
        fprintf(stderr, "ferric info: %s\n", fe_last_error());
        return 1;
    }
    for (int64_t i = 0; i < n; i++) {
        union {
            int8_t i8;
            uint8_t u8;
            int16_t i16;
            uint16_t u16;
            int32_t i32;
            uint32_t u32;
            int64_t i64;
            uint64_t u64;
        } v;
        if (!strcmp(dt, "I8"))
            memcpy(&v.i8, p + i, 1), printf("%d\n", v.i8);
        else if (!strcmp(dt, "U8") || !strcmp(dt, "BOOL"))
            memcpy(&v.u8, p + i, 1), printf("%u\n", v.u8);
        else if (!strcmp(dt, "I16"))
            memcpy(&v.i16, p + 2 * i, 2), printf("%d\n", v.i16);
        else if (!strcmp(dt, "U16"))
            memcpy(&v.u16, p + 2 * i, 2), printf("%u\n", v.u16);
        else if (!strcmp(dt, "I32"))
            memcpy(&v.i32, p + 4 * i, 4), printf("%" PRId32 "\n", v.i32);
        else if (!strcmp(dt, "U32"))
            memcpy(&v.u32, p + 4 * i, 4), printf("%" PRIu32 "\n", v.u32);
        else if (!strcmp(dt, "I64"))
            memcpy(&v.i64, p + 8 * i, 8), printf("%" PRId64 "\n", v.i64);
        else if (!strcmp(dt, "U64"))
            memcpy(&v.u64, p + 8 * i, 8), printf("%" PRIu64 "\n", v.u64);
        else {
            fprintf(stderr, "ferric info: cannot print values of dtype %s\n", dt);
            return 1;
        }
    }
    return 0;
}

static void print_table(const fe_weights *w) {
    int64_t n = fe_weights_count(w);
    int width = 4;
    for (int64_t i = 0; i < n; i++) {
        int l = (int)strlen(fe_weights_name(w, i));
        if (l > width) width = l;
    }
    if (width > 60) width = 60;
    printf("%-*s  %-7s  %-22s  %14s\n", width, "name", "dtype", "shape", "parameters");
    for (int64_t i = 0; i < n; i++) {
        fe_st_info t;
        char sh[160];
        if (fe_weights_info(w, fe_weights_name(w, i), &t) != FE_OK) continue;
        printf("%-*s  %-7s  %-22s  %14" PRId64 "\n", width, t.name, t.dtype_name,
               shape_text(&t, sh, sizeof sh), t.numel);
    }
}

int fe_cmd_info(int argc, char **argv) {
    const char *path = NULL, *dump_name = NULL;
    bool as_json = false;
    int64_t limit = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            info_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = true;
        } else if (!strcmp(argv[i], "--dump") && i + 1 < argc) {
            dump_name = argv[++i];
        } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            char *end;
            limit = strtoll(argv[++i], &end, 10);
            if (*end || limit < 0) {
                fprintf(stderr, "ferric info: --limit needs a non-negative integer\n");
                return 2;
            }
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "ferric info: unknown option '%s'\n\n", argv[i]);
            info_usage(stderr);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "ferric info: more than one path given\n");
            return 2;
        }
    }
    if (!path) {
        info_usage(stderr);
        return 2;
    }

    /* what the path holds: config, weights, or both */
    fe_hf_config cfg;
    bool have_cfg = false, cfg_tried = false;
    char cfg_err[1024] = "";
    fe_weights *w = NULL;
    bool dir = is_dir(path);
    if (dir) {
        char p[4096];
        snprintf(p, sizeof p, "%s/config.json", path);
        struct stat sb;
        if (stat(p, &sb) == 0) {
            cfg_tried = true;
            have_cfg = fe_hf_config_load(p, &cfg) == FE_OK;
            if (!have_cfg) snprintf(cfg_err, sizeof cfg_err, "%s", fe_last_error());
        }
        w = fe_weights_open(path);
        if (!w && !have_cfg) {
            fprintf(stderr, "ferric info: %s\n", cfg_tried ? cfg_err : fe_last_error());
            return 1;
        }
    } else if (ends_with(path, ".json") && !ends_with(path, "index.json")) {
        cfg_tried = true;
        if (fe_hf_config_load(path, &cfg) != FE_OK) {
            fprintf(stderr, "ferric info: %s\n", fe_last_error());
            return 1;
        }
        have_cfg = true;
    } else {
        w = fe_weights_open(path);
        if (!w) {
            fprintf(stderr, "ferric info: %s\n", fe_last_error());
            return 1;
        }
    }

    if (dump_name) {
        int rc = w ? dump(w, dump_name, limit) : 1;
        if (!w) fprintf(stderr, "ferric info: no tensors in '%s'\n", path);
        fe_weights_close(w);
        return rc;
    }

    int64_t n = fe_weights_count(w), params = 0;
    uint64_t bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        fe_st_info t;
        if (fe_weights_info(w, fe_weights_name(w, i), &t) == FE_OK) {
            params += t.numel;
            bytes += t.nbytes;
        }
    }

    if (as_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", path);
        if (w) {
            cJSON *files = cJSON_AddArrayToObject(o, "files");
            for (int64_t i = 0; i < fe_weights_file_count(w); i++)
                cJSON_AddItemToArray(files, cJSON_CreateString(fe_weights_file_path(w, i)));
            cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
            const fe_safetensors *f0 = n ? fe_weights_file_of(w, fe_weights_name(w, 0)) : NULL;
            for (int64_t i = 0; f0 && i < fe_safetensors_metadata_count(f0); i++) {
                const char *k = fe_safetensors_metadata_key(f0, i);
                cJSON_AddStringToObject(meta, k, fe_safetensors_metadata(f0, k));
            }
            cJSON *ts = cJSON_AddArrayToObject(o, "tensors");
            for (int64_t i = 0; i < n; i++) {
                fe_st_info t;
                if (fe_weights_info(w, fe_weights_name(w, i), &t) != FE_OK) continue;
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "name", t.name);
                cJSON_AddStringToObject(e, "dtype", t.dtype_name);
                cJSON *sh = cJSON_AddArrayToObject(e, "shape");
                for (int d = 0; d < t.ndim; d++)
                    cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t.shape[d]));
                cJSON_AddNumberToObject(e, "offset", (double)t.offset);
                cJSON_AddNumberToObject(e, "nbytes", (double)t.nbytes);
                cJSON_AddItemToArray(ts, e);
            }
            cJSON_AddNumberToObject(o, "num_tensors", (double)n);
            cJSON_AddNumberToObject(o, "num_parameters", (double)params);
            cJSON_AddNumberToObject(o, "nbytes", (double)bytes);
        }
        if (have_cfg)
            cJSON_AddItemToObject(o, "config", config_json(&cfg));
        else if (cfg_tried)
            cJSON_AddStringToObject(o, "config_error", cfg_err);
        char *s = cJSON_Print(o);
        if (s) puts(s);
        cJSON_free(s);
        cJSON_Delete(o);
        fe_weights_close(w);
        return s ? 0 : 1;
    }

    char hb[32];
    if (w) {
        int64_t nf = fe_weights_file_count(w);
        if (nf == 1)
            printf("file: %s\n", fe_weights_file_path(w, 0));
        else
            printf("files: %" PRId64 " shards (%s ... %s)\n", nf, fe_weights_file_path(w, 0),
                   fe_weights_file_path(w, nf - 1));
        const fe_safetensors *f0 = n ? fe_weights_file_of(w, fe_weights_name(w, 0)) : NULL;
        for (int64_t i = 0; f0 && i < fe_safetensors_metadata_count(f0); i++) {
            const char *k = fe_safetensors_metadata_key(f0, i);
            printf("metadata: %s = %s\n", k, fe_safetensors_metadata(f0, k));
        }
        print_table(w);
        printf("%" PRId64 " tensors, %" PRId64 " parameters, %s of data\n", n, params,
               human_bytes((double)bytes, hb, sizeof hb));
    }
    if (have_cfg) {
        config_line(&cfg);
        if (w && fe_hf_config_num_params(&cfg) != params)
            printf("note: the config describes %" PRId64 " parameters, the weights hold %" PRId64
                   "\n",
                   fe_hf_config_num_params(&cfg), params);
    } else if (cfg_tried) {
        printf("config: %s\n", cfg_err);
    }
    fe_weights_close(w);
    return 0;
}
