/* A model's weights over one or more safetensors files: model.safetensors, or the
 * shards named by model.safetensors.index.json ({"metadata": {...}, "weight_map":
 * {"tensor name": "model-00001-of-00002.safetensors", ...}}). */
#include "io/io_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INDEX_MAX_BYTES (256u << 20)

struct fe_weights {
    int64_t nfiles;
    char **paths;
    fe_safetensors **files;
    int64_t n;
    char **names;  /* sorted by name (index) or header order (one file) */
    int64_t *file; /* the file of each name */
    bool sorted;
};

void fe_weights_free_map(char **names, char **files, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (names) free(names[i]);
        if (files) free(files[i]);
    }
    free(names);
    free(files);
}

void fe_weights_close(fe_weights *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->nfiles; i++) {
        fe_safetensors_close(w->files[i]);
        free(w->paths[i]);
    }
    free(w->files);
    free(w->paths);
    fe_weights_free_map(w->names, NULL, w->n);
    free(w->file);
    free(w);
}

/* A shard name must stay inside the model's folder. */
static bool shard_name_ok(const char *s) {
    if (!*s || s[0] == '/') return false;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return false;
        if (!q) break;
        p = q + 1;
    }
    return true;
}

static int cmp_pair(const void *a, const void *b, void *ctx) {
    char **names = ctx;
    return strcmp(names[*(const int64_t *)a], names[*(const int64_t *)b]);
}

fe_status fe_weights_parse_index(const char *json, size_t len, char ***names_out, char ***files_out,
                                 int64_t *n_out) {
    if (!json || !names_out || !files_out || !n_out)
        return fe_set_error(FE_ERR_ARG, "fe_weights_parse_index: NULL argument");
    *names_out = *files_out = NULL;
    *n_out = 0;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return fe_set_error(FE_ERR_FORMAT, "safetensors index: not valid JSON");
    fe_status st = FE_OK;
    char **names = NULL, **files = NULL;
    int64_t n = 0;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root)) {
        st = fe_set_error(FE_ERR_FORMAT, "safetensors index: not a JSON object");
    } else if (!wm) {
        st = fe_set_error(FE_ERR_FORMAT, "safetensors index: missing \"weight_map\"");
    } else if (!cJSON_IsObject(wm)) {
        st = fe_set_error(FE_ERR_FORMAT, "safetensors index: \"weight_map\" is not a JSON object");
    }
    int cnt = st ? 0 : cJSON_GetArraySize(wm);
    if (!st) {
        names = calloc((size_t)cnt + 1, sizeof *names);
        files = calloc((size_t)cnt + 1, sizeof *files);
        if (!names || !files)
            st = fe_set_error(FE_ERR_OOM, "safetensors index: out of host memory");
    }
    for (const cJSON *e = st ? NULL : wm->child; e && !st; e = e->next) {
        if (!cJSON_IsString(e)) {
            st = fe_set_error(FE_ERR_FORMAT,
                              "safetensors index: weight_map entry '%s' is not a file name",
                              e->string);
        } else if (!shard_name_ok(e->valuestring)) {
            st = fe_set_error(FE_ERR_FORMAT,
                              "safetensors index: shard file '%s' of '%s' leaves the model folder",
                              e->valuestring, e->string);
        } else {
            names[n] = strdup(e->string);
            files[n] = strdup(e->valuestring);
            n++;
            if (!names[n - 1] || !files[n - 1])
                st = fe_set_error(FE_ERR_OOM, "safetensors index: out of host memory");
        }
    }
    cJSON_Delete(root);
    if (!st && n > 0) {
        /* sort by name (keeping files paired) and refuse duplicates */
        int64_t *ord = malloc((size_t)n * sizeof *ord);
        char **sn = calloc((size_t)n + 1, sizeof *sn), **sf = calloc((size_t)n + 1, sizeof *sf);
        if (!ord || !sn || !sf) {
            st = fe_set_error(FE_ERR_OOM, "safetensors index: out of host memory");
            free(sn);
            free(sf);
        } else {
            for (int64_t i = 0; i < n; i++)
                ord[i] = i;
            qsort_r(ord, (size_t)n, sizeof *ord, cmp_pair, names);
            for (int64_t i = 0; i < n; i++)
                sn[i] = names[ord[i]], sf[i] = files[ord[i]];
            free(names);
            free(files);
            names = sn;
            files = sf;
            for (int64_t i = 1; i < n && !st; i++)
                if (!strcmp(names[i], names[i - 1]))
                    st = fe_set_error(FE_ERR_FORMAT,
                                      "safetensors index: duplicate tensor name '%s'", names[i]);
        }
        free(ord);
    }
    if (st) {
        fe_weights_free_map(names, files, n);
        return st;
    }
    *names_out = names;
    *files_out = files;
    *n_out = n;
    return FE_OK;
}

static fe_weights *open_single(const char *path) {
    fe_weights *w = calloc(1, sizeof *w);
    if (w) {
        w->paths = calloc(1, sizeof *w->paths);
        w->files = calloc(1, sizeof *w->files);
    }
    if (!w || !w->paths || !w->files) {
        fe_weights_close(w);
        fe_set_error(FE_ERR_OOM, "out of host memory");
        return NULL;
    }
    w->files[0] = fe_safetensors_open(path);
    w->paths[0] = strdup(path);
    w->nfiles = 1;
    if (!w->files[0]) {
        fe_weights_close(w);
        return NULL;
    }
    int64_t n = fe_safetensors_count(w->files[0]);
    w->names = calloc((size_t)n + 1, sizeof *w->names);
    w->file = calloc((size_t)n + 1, sizeof *w->file);
    if (!w->names || !w->file || !w->paths[0]) {
        fe_weights_close(w);
        fe_set_error(FE_ERR_OOM, "out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        w->names[i] = strdup(fe_safetensors_name(w->files[0], i));
        w->n++;
        if (!w->names[i]) {
            fe_weights_close(w);
            fe_set_error(FE_ERR_OOM, "out of host memory");
            return NULL;
        }
    }
    return w;
}

static fe_weights *open_index(const char *path) {
    size_t len;
    char *text = fe__read_text_file(path, INDEX_MAX_BYTES, &len);
    if (!text) return NULL;
    char **names, **files;
    int64_t n;
    fe_status st = fe_weights_parse_index(text, len, &names, &files, &n);
    free(text);
    if (st) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", fe_last_error());
        fe_set_error(st, "%s (in '%s')", msg, path);
        return NULL;
    }
    fe_weights *w = calloc(1, sizeof *w);
    if (w) {
        w->names = names;
        w->n = n;
        w->sorted = true;
        w->file = calloc((size_t)n + 1, sizeof *w->file);
        w->paths = calloc((size_t)n + 1, sizeof *w->paths);
        w->files = calloc((size_t)n + 1, sizeof *w->files);
    }
    if (!w || !w->file || !w->paths || !w->files) {
        if (!w) fe_weights_free_map(names, NULL, n);
        fe_weights_close(w);
        fe_weights_free_map(NULL, files, n);
        fe_set_error(FE_ERR_OOM, "out of host memory");
        return NULL;
    }
    /* the folder of the index */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path + 1)) : strdup("");
    for (int64_t i = 0; i < n && !st; i++) {
        int64_t k = 0;
        while (k < w->nfiles && strcmp(w->paths[k] + (dir ? strlen(dir) : 0), files[i]))
            k++;
        if (k == w->nfiles) {
            w->paths[k] = dir ? fe__path_join(dir, files[i]) : NULL;
            if (!w->paths[k]) {
                st = fe_set_error(FE_ERR_OOM, "out of host memory");
                break;
            }
            w->nfiles++;
            w->files[k] = fe_safetensors_open(w->paths[k]);
            if (!w->files[k]) {
                st = fe_last_status();
                break;
            }
        }
        w->file[i] = k;
        if (fe_safetensors_find(w->files[k], names[i]) < 0)
            st = fe_set_error(FE_ERR_FORMAT,
                              "safetensors index: tensor '%s' is not in its shard '%s'", names[i],
                              w->paths[k]);
    }
    free(dir);
    fe_weights_free_map(NULL, files, n);
    if (st) {
        fe_weights_close(w);
        return NULL;
    }
    return w;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

fe_weights *fe_weights_open(const char *path) {
    if (!path) {
        fe_set_error(FE_ERR_ARG, "fe_weights_open: path is NULL");
        return NULL;
    }
    if (fe__is_dir(path)) {
        char *idx = fe__path_join(path, "model.safetensors.index.json");
        char *one = fe__path_join(path, "model.safetensors");
        fe_weights *w = NULL;
        if (idx && fe__is_file(idx))
            w = open_index(idx);
        else if (one && fe__is_file(one))
            w = open_single(one);
        else if (idx && one)
            fe_set_error(FE_ERR_IO, "no model.safetensors or model.safetensors.index.json in '%s'",
                         path);
        free(idx);
        free(one);
        return w;
    }
    return ends_with(path, ".json") ? open_index(path) : open_single(path);
}

int64_t fe_weights_count(const fe_weights *w) { return w ? w->n : 0; }

const char *fe_weights_name(const fe_weights *w, int64_t i) {
    return w && i >= 0 && i < w->n ? w->names[i] : NULL;
}

int64_t fe_weights_file_count(const fe_weights *w) { return w ? w->nfiles : 0; }

const char *fe_weights_file_path(const fe_weights *w, int64_t i) {
    return w && i >= 0 && i < w->nfiles ? w->paths[i] : NULL;
}

const fe_safetensors *fe_weights_file_of(const fe_weights *w, const char *name) {
    if (!w || !name) {
        fe_set_error(FE_ERR_ARG, "fe_weights: NULL argument");
        return NULL;
    }
    if (!w->sorted) {
        if (fe_safetensors_find(w->files[0], name) >= 0) return w->files[0];
    } else {
        int64_t lo = 0, hi = w->n - 1;
        while (lo <= hi) {
            int64_t mid = lo + (hi - lo) / 2;
            int c = strcmp(name, w->names[mid]);
            if (!c) return w->files[w->file[mid]];
            if (c < 0)
                hi = mid - 1;
            else
                lo = mid + 1;
        }
    }
    fe_set_error(FE_ERR_ARG, "fe_weights: no tensor named '%s'", name);
    return NULL;
}

fe_status fe_weights_info(const fe_weights *w, const char *name, fe_st_info *out) {
    const fe_safetensors *f = fe_weights_file_of(w, name);
    return f ? fe_safetensors_info(f, name, out) : fe_last_status();
}

fe_tensor *fe_weights_load(const fe_weights *w, const char *name, fe_device dev) {
    const fe_safetensors *f = fe_weights_file_of(w, name);
    return f ? fe_safetensors_load(f, name, dev) : NULL;
}

fe_tensor *fe_weights_load_as(const fe_weights *w, const char *name, fe_dtype dt, fe_device dev) {
    const fe_safetensors *f = fe_weights_file_of(w, name);
    return f ? fe_safetensors_load_as(f, name, dt, dev) : NULL;
}
