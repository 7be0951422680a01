/* Checkpoints: safetensors for tensors, JSON for everything else, swapped in
 * atomically as a folder. */
#include "ferric/checkpoint.h"
#include "ferric/io.h"
#include "ferric/runlog.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_FORMAT 1

static void path_join(char *out, size_t n, const char *dir, const char *name) {
    snprintf(out, n, "%s/%s", dir, name);
}

/* Remove a folder of plain files (no recursion needed: checkpoints are flat). */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            path_join(p, sizeof p, dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static fe_status save_params(const char *path, fe_params *p) {
    int n = fe_params_count(p);
    fe_named_tensor *nt = calloc((size_t)(n ? n : 1), sizeof *nt);
    if (!nt) return fe_set_error(FE_ERR_OOM, "checkpoint: out of memory");
    for (int i = 0; i < n; i++) nt[i] = (fe_named_tensor){fe_params_name(p, i), fe_params_at(p, i)};
    fe_status st = fe_safetensors_save(path, nt, n, NULL, 0);
    free(nt);
    return st;
}

static fe_status save_optimizer(const char *path, fe_optimizer *o, cJSON *scalars) {
    int n = fe_optimizer_state_count(o), k = 0;
    fe_named_tensor *nt = calloc((size_t)(n ? n : 1), sizeof *nt);
    if (!nt) return fe_set_error(FE_ERR_OOM, "checkpoint: out of memory");
    for (int i = 0; i < n; i++) {
        fe_state_item it;
        if (fe_optimizer_state_item(o, i, &it)) {
            free(nt);
            return fe_last_status();
        }
        if (it.tensor) nt[k++] = (fe_named_tensor){it.name, it.tensor};
        else cJSON_AddNumberToObject(scalars, it.name, it.value);
    }
    fe_status st = fe_safetensors_save(path, nt, k, NULL, 0);
    free(nt);
    return st;
}

static cJSON *config_json(const fe_llama_config *c) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "vocab_size", (double)c->vocab_size);
    cJSON_AddNumberToObject(j, "dim", (double)c->dim);
    cJSON_AddNumberToObject(j, "n_layers", (double)c->n_layers);
    cJSON_AddNumberToObject(j, "n_heads", (double)c->n_heads);
    cJSON_AddNumberToObject(j, "n_kv_heads", (double)c->n_kv_heads);
    cJSON_AddNumberToObject(j, "ffn_dim", (double)c->ffn_dim);
    cJSON_AddBoolToObject(j, "tie_embeddings", c->tie_embeddings);
    return j;
}

/* 64-bit values go to JSON as strings so that no bit is lost to doubles. */
static void add_u64(cJSON *o, const char *k, uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%" PRIu64, v);
    cJSON_AddStringToObject(o, k, b);
}

static bool get_u64(const cJSON *o, const char *k, uint64_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    char *end;
    if (!cJSON_IsString(x)) return false;
    errno = 0;
    *v = strtoull(x->valuestring, &end, 10);
    return !*end && !errno;
}

static fe_status write_state(const char *dir, const fe_train_state *s, cJSON *opt_scalars) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "format", CKPT_FORMAT);
    cJSON_AddNumberToObject(j, "step", (double)s->step);
    cJSON_AddItemToObject(j, "model", config_json(fe_llama_config_of(s->model)));
    cJSON_AddItemToObject(j, "optimizer", opt_scalars);
    fe_rng_state r = fe_rng_get_state();
    cJSON *rng = cJSON_AddObjectToObject(j, "rng");
    add_u64(rng, "seed", r.seed);
    add_u64(rng, "offset", r.offset);
    if (s->train_loader) {
        fe_loader_state ls = fe_loader_get_state(s->train_loader);
        cJSON *l = cJSON_AddObjectToObject(j, "loader");
        add_u64(l, "seed", ls.seed);
        add_u64(l, "epoch", (uint64_t)ls.epoch);
        add_u64(l, "index", (uint64_t)ls.index);
    }
    if (s->scaler) {
        cJSON *sc = cJSON_AddObjectToObject(j, "grad_scaler");
        for (int i = 0; i < fe_grad_scaler_state_count(s->scaler); i++) {
            fe_state_item it;
            if (!fe_grad_scaler_state_item(s->scaler, i, &it)) cJSON_AddNumberToObject(sc, it.name, it.value);
        }
    }
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return fe_set_error(FE_ERR_OOM, "checkpoint: out of memory");
    char p[1200];
    path_join(p, sizeof p, dir, "state.json");
    fe_status st = fe_write_file_atomic(p, text, strlen(text));
    free(text);
    return st;
}

fe_status fe_train_checkpoint_save(const char *run_dir, const fe_train_state *s) {
    if (!run_dir || !s || !s->model || !s->master || !s->opt)
        return fe_set_error(FE_ERR_ARG, "checkpoint: the run folder, model, weights and optimizer are needed");
    char fin[1100], tmp[1100], old[1100], p[1200];
    path_join(fin, sizeof fin, run_dir, "checkpoint");
    path_join(tmp, sizeof tmp, run_dir, "checkpoint.new");
    path_join(old, sizeof old, run_dir, "checkpoint.old");
    if (mkdir(run_dir, 0755) && errno != EEXIST)
        return fe_set_error(FE_ERR_IO, "checkpoint: cannot create %s: %s", run_dir, strerror(errno));
    remove_dir(tmp);
    if (mkdir(tmp, 0755))
        return fe_set_error(FE_ERR_IO, "checkpoint: cannot create %s: %s", tmp, strerror(errno));
    cJSON *opt_scalars = cJSON_CreateObject();
    path_join(p, sizeof p, tmp, "model.safetensors");
    fe_status st = save_params(p, s->master);
    path_join(p, sizeof p, tmp, "optimizer.safetensors");
    if (!st) st = save_optimizer(p, s->opt, opt_scalars);
    if (!st) st = write_state(tmp, s, opt_scalars); /* takes opt_scalars */
    else cJSON_Delete(opt_scalars);
    if (st) {
        remove_dir(tmp);
        return st;
    }
    /* swap: checkpoint -> checkpoint.old, checkpoint.new -> checkpoint, drop old */
    remove_dir(old);
    if (rename(fin, old) && errno != ENOENT) st = fe_set_error(FE_ERR_IO, "checkpoint: %s", strerror(errno));
    if (!st && rename(tmp, fin)) st = fe_set_error(FE_ERR_IO, "checkpoint: cannot rename %s: %s", tmp, strerror(errno));
    if (!st) remove_dir(old);
    return st;
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = NULL;
    if (!fseek(f, 0, SEEK_END)) {
        long len = ftell(f);
        if (len >= 0 && !fseek(f, 0, SEEK_SET) && (s = malloc((size_t)len + 1))) {
            *n = fread(s, 1, (size_t)len, f);
            s[*n] = 0;
        }
    }
    fclose(f);
    return s;
}

/* Copy every tensor of file into the same-named tensor of the target list. */
static fe_status load_tensors(const char *path, int n, const char *(*name)(void *, int),
                              fe_tensor *(*tensor)(void *, int), void *ctx) {
    fe_safetensors *f = fe_safetensors_open(path);
    if (!f) return fe_last_status();
    fe_status st = FE_OK;
    for (int i = 0; i < n && !st; i++) {
        fe_tensor *t = tensor(ctx, i);
        if (!t) continue;
        fe_st_info info;
        if (fe_safetensors_info(f, name(ctx, i), &info)) {
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s has no tensor '%s'", path, name(ctx, i));
            break;
        }
        bool same = info.ndim == fe_ndim(t);
        for (int d = 0; same && d < info.ndim; d++) same = info.shape[d] == fe_shape(t)[d];
        if (!same) {
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: tensor '%s' has another shape than the model's",
                              path, name(ctx, i));
            break;
        }
        fe_scope *sc = fe_scope_begin();
        fe_tensor *src = fe_safetensors_load(f, name(ctx, i), fe_device_of(t));
        st = src ? fe_copy_(t, src) : fe_last_status();
        fe_scope_end(sc);
    }
    fe_safetensors_close(f);
    return st;
}

static const char *param_name(void *c, int i) { return fe_params_name(c, i); }
static fe_tensor *param_tensor(void *c, int i) { return fe_params_at(c, i); }
static const char *opt_name(void *c, int i) {
    fe_state_item it;
    return fe_optimizer_state_item(c, i, &it) ? "" : it.name;
}
static fe_tensor *opt_tensor(void *c, int i) {
    fe_state_item it;
    return fe_optimizer_state_item(c, i, &it) ? NULL : it.tensor;
}

fe_status fe_train_checkpoint_load(const char *run_dir, fe_train_state *s) {
    if (!run_dir || !s || !s->model || !s->master || !s->opt)
        return fe_set_error(FE_ERR_ARG, "checkpoint: the run folder, model, weights and optimizer are needed");
    char dir[1100], p[1200];
    struct stat sb;
    path_join(dir, sizeof dir, run_dir, "checkpoint");
    if (stat(dir, &sb)) path_join(dir, sizeof dir, run_dir, "checkpoint.old"); /* killed mid-swap */
    path_join(p, sizeof p, dir, "state.json");
    size_t n = 0;
    char *text = slurp(p, &n);
    if (!text) return fe_set_error(FE_ERR_IO, "no checkpoint to resume in %s (%s)", run_dir, strerror(errno));
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    fe_status st = FE_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(j, "rng");
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(j, "optimizer");
    uint64_t rseed, roff;
    if (!j || !cJSON_IsNumber(fmt) || fmt->valueint != CKPT_FORMAT || !cJSON_IsNumber(step) ||
        step->valuedouble < 0 || !cJSON_IsObject(opt) || !get_u64(rng, "seed", &rseed) ||
        !get_u64(rng, "offset", &roff)) {
        cJSON_Delete(j);
        return fe_set_error(FE_ERR_FORMAT, "checkpoint %s is corrupted or of another format", p);
    }
    /* the model must be the one that was saved */
    cJSON *want = config_json(fe_llama_config_of(s->model));
    if (!cJSON_Compare(want, cJSON_GetObjectItemCaseSensitive(j, "model"), true))
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s was saved for a model of another shape", p);
    cJSON_Delete(want);
    path_join(p, sizeof p, dir, "model.safetensors");
    if (!st) st = load_tensors(p, fe_params_count(s->master), param_name, param_tensor, s->master);
    path_join(p, sizeof p, dir, "optimizer.safetensors");
    if (!st) st = load_tensors(p, fe_optimizer_state_count(s->opt), opt_name, opt_tensor, s->opt);
    for (const cJSON *it = opt ? opt->child : NULL; it && !st; it = it->next)
        st = cJSON_IsNumber(it) ? fe_optimizer_set_scalar(s->opt, it->string, it->valuedouble)
                                : fe_set_error(FE_ERR_FORMAT, "checkpoint: optimizer value '%s' is not a number", it->string);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(j, "grad_scaler");
    for (const cJSON *it = sc && s->scaler ? sc->child : NULL; it && !st; it = it->next)
        st = fe_grad_scaler_set_scalar(s->scaler, it->string, it->valuedouble);
    const cJSON *ld = cJSON_GetObjectItemCaseSensitive(j, "loader");
    if (!st && s->train_loader) {
        uint64_t seed, epoch, index;
        if (!get_u64(ld, "seed", &seed) || !get_u64(ld, "epoch", &epoch) || !get_u64(ld, "index", &index))
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint: the data-loader position is missing");
        else
            st = fe_loader_set_state(s->train_loader, (fe_loader_state){seed, (int64_t)epoch, (int64_t)index});
    }
    if (!st) {
        fe_rng_set_state((fe_rng_state){rseed, roff});
        s->step = (int64_t)step->valuedouble;
    }
    cJSON_Delete(j);
    return st;
}
