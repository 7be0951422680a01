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
    /* swap: checkpoint -> checkpoint.old, checkpoint.new -> checkpoint, drop old. An
     * earlier save killed between the renames left only checkpoint.old: that is the
     * last complete checkpoint until the new one is in place, so keep it. */
    struct stat sb;
    if (stat(fin, &sb) == 0) remove_dir(old);
    if (stat(fin, &sb) == 0 && rename(fin, old)) st = fe_set_error(FE_ERR_IO, "checkpoint: %s", strerror(errno));
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

typedef struct tensor_list {
    int n;
    const char *(*name)(void *, int);
    fe_tensor *(*tensor)(void *, int);
    void *ctx;
} tensor_list;

/* Every tensor of the list is in file f with the same shape (nothing is read yet). */
static fe_status check_tensors(fe_safetensors *f, const char *path, const tensor_list *l) {
    for (int i = 0; i < l->n; i++) {
        fe_tensor *t = l->tensor(l->ctx, i);
        if (!t) continue;
        const char *nm = l->name(l->ctx, i);
        fe_st_info info;
        if (fe_safetensors_info(f, nm, &info))
            return fe_set_error(FE_ERR_FORMAT, "checkpoint %s has no tensor '%s'", path, nm);
        bool same = info.ndim == fe_ndim(t);
        for (int d = 0; same && d < info.ndim; d++) same = info.shape[d] == fe_shape(t)[d];
        if (!same)
            return fe_set_error(FE_ERR_FORMAT, "checkpoint %s: tensor '%s' has another shape than the model's",
                                path, nm);
    }
    return FE_OK;
}

/* Copy every tensor of the list from file f (checked by check_tensors). */
static fe_status copy_tensors(fe_safetensors *f, const tensor_list *l) {
    fe_status st = FE_OK;
    for (int i = 0; i < l->n && !st; i++) {
        fe_tensor *t = l->tensor(l->ctx, i);
        if (!t) continue;
        fe_scope *sc = fe_scope_begin();
        fe_tensor *src = fe_safetensors_load(f, l->name(l->ctx, i), fe_device_of(t));
        st = src ? fe_copy_(t, src) : fe_last_status();
        fe_scope_end(sc);
    }
    return st;
}

/* Open a checkpoint file, naming it in the error. */
static fe_safetensors *open_file(const char *path) {
    fe_safetensors *f = fe_safetensors_open(path);
    if (!f) {
        char why[512];
        snprintf(why, sizeof why, "%s", fe_last_error());
        fe_set_error(fe_last_status() == FE_ERR_OOM ? FE_ERR_OOM : FE_ERR_FORMAT,
                     "checkpoint %s is unreadable, truncated or corrupted (%s)", path, why);
    }
    return f;
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

/* The saved model config equals the model's; else an error naming the first difference. */
static fe_status check_config(const cJSON *saved, const fe_llama_config *c, const char *path) {
    if (!cJSON_IsObject(saved))
        return fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the model config is missing", path);
    struct {
        const char *k;
        int64_t v;
    } f[] = {{"vocab_size", c->vocab_size}, {"dim", c->dim},           {"n_layers", c->n_layers},
             {"n_heads", c->n_heads},       {"n_kv_heads", c->n_kv_heads}, {"ffn_dim", c->ffn_dim}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(saved, f[i].k);
        if (!cJSON_IsNumber(x))
            return fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the model config has no '%s'", path, f[i].k);
        if (x->valuedouble != (double)f[i].v)
            return fe_set_error(FE_ERR_FORMAT,
                                "checkpoint %s was saved for a model of another shape: %s %.0f, this model has %" PRId64,
                                path, f[i].k, x->valuedouble, f[i].v);
    }
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(saved, "tie_embeddings");
    if (!cJSON_IsBool(tie) || cJSON_IsTrue(tie) != c->tie_embeddings)
        return fe_set_error(FE_ERR_FORMAT, "checkpoint %s was saved for a model of another shape: tie_embeddings differs",
                            path);
    return FE_OK;
}

/* Every scalar item of the holder is a number in obj (the checkpoint's copy of them). */
static fe_status check_scalars(const cJSON *obj, int n, fe_status (*item)(const void *, int, fe_state_item *),
                               const void *holder, const char *what, const char *path) {
    for (int i = 0; i < n; i++) {
        fe_state_item it;
        if (item(holder, i, &it)) return fe_last_status();
        if (it.tensor) continue;
        if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(obj, it.name)))
            return fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the %s value '%s' is missing", path, what, it.name);
    }
    return FE_OK;
}
static fe_status opt_item(const void *o, int i, fe_state_item *it) { return fe_optimizer_state_item(o, i, it); }
static fe_status scaler_item(const void *o, int i, fe_state_item *it) { return fe_grad_scaler_state_item(o, i, it); }

/* Load the checkpoint in folder dir: every file is read and checked before any object
 * is touched, so a refused checkpoint leaves s as it was. */
static fe_status load_dir(const char *dir, fe_train_state *s) {
    char p[1200], mp[1200], op[1200];
    path_join(p, sizeof p, dir, "state.json");
    size_t n = 0;
    char *text = slurp(p, &n);
    if (!text) return fe_set_error(FE_ERR_IO, "checkpoint: cannot read %s (%s)", p, strerror(errno));
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return fe_set_error(FE_ERR_FORMAT, "checkpoint %s is not valid JSON (corrupted)", p);
    }
    fe_status st = FE_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(j, "rng");
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(j, "optimizer");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(j, "grad_scaler");
    const cJSON *ld = cJSON_GetObjectItemCaseSensitive(j, "loader");
    uint64_t rseed = 0, roff = 0, lseed = 0, epoch = 0, index = 0;
    fe_safetensors *mf = NULL, *of = NULL;
    tensor_list ml = {fe_params_count(s->master), param_name, param_tensor, s->master};
    tensor_list ol = {fe_optimizer_state_count(s->opt), opt_name, opt_tensor, s->opt};
    if (!cJSON_IsNumber(fmt))
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the field 'format' is missing", p);
    else if (fmt->valuedouble != CKPT_FORMAT)
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s has format %g; this build reads format %d", p,
                          fmt->valuedouble, CKPT_FORMAT);
    else if (!cJSON_IsNumber(step) || step->valuedouble < 0 || step->valuedouble != (double)(int64_t)step->valuedouble)
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the field 'step' is missing or not a step count", p);
    else if (!get_u64(rng, "seed", &rseed) || !get_u64(rng, "offset", &roff))
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the field 'rng' is missing or malformed", p);
    else if (!cJSON_IsObject(opt))
        st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the field 'optimizer' is missing", p);
    if (!st) st = check_config(cJSON_GetObjectItemCaseSensitive(j, "model"), fe_llama_config_of(s->model), p);
    if (!st) st = check_scalars(opt, fe_optimizer_state_count(s->opt), opt_item, s->opt, "optimizer", p);
    if (!st && s->scaler) {
        if (!cJSON_IsObject(sc))
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the loss-scaler state is missing (saved without fp16?)", p);
        else
            st = check_scalars(sc, fe_grad_scaler_state_count(s->scaler), scaler_item, s->scaler, "loss-scaler", p);
    }
    if (!st && s->train_loader) {
        if (!get_u64(ld, "seed", &lseed) || !get_u64(ld, "epoch", &epoch) || !get_u64(ld, "index", &index))
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: the data-loader position is missing", p);
        else if (epoch > INT64_MAX || index >= (uint64_t)fe_loader_batches_per_epoch(s->train_loader))
            st = fe_set_error(FE_ERR_FORMAT, "checkpoint %s: data-loader batch %" PRIu64
                              " is outside an epoch of %" PRId64 " batches (other data or batch size?)",
                              p, index, fe_loader_batches_per_epoch(s->train_loader));
    }
    path_join(mp, sizeof mp, dir, "model.safetensors");
    path_join(op, sizeof op, dir, "optimizer.safetensors");
    if (!st && !(mf = open_file(mp))) st = fe_last_status();
    if (!st && !(of = open_file(op))) st = fe_last_status();
    if (!st) st = check_tensors(mf, mp, &ml);
    if (!st) st = check_tensors(of, op, &ol);
    /* everything checked: now restore */
    if (!st) st = copy_tensors(mf, &ml);
    if (!st) st = copy_tensors(of, &ol);
    for (const cJSON *it = opt->child; it && !st; it = it->next)
        if (cJSON_IsNumber(it)) st = fe_optimizer_set_scalar(s->opt, it->string, it->valuedouble);
    for (const cJSON *it = s->scaler && !st ? sc->child : NULL; it && !st; it = it->next)
        if (cJSON_IsNumber(it)) st = fe_grad_scaler_set_scalar(s->scaler, it->string, it->valuedouble);
    if (!st && s->train_loader)
        st = fe_loader_set_state(s->train_loader, (fe_loader_state){lseed, (int64_t)epoch, (int64_t)index});
    if (!st) {
        fe_rng_set_state((fe_rng_state){rseed, roff});
        s->step = (int64_t)step->valuedouble;
    }
    fe_safetensors_close(mf);
    fe_safetensors_close(of);
    cJSON_Delete(j);
    return st;
}

static bool is_dir(const char *p) {
    struct stat sb;
    return !stat(p, &sb) && S_ISDIR(sb.st_mode);
}

fe_status fe_train_checkpoint_load(const char *run_dir, fe_train_state *s) {
    if (!run_dir || !s || !s->model || !s->master || !s->opt)
        return fe_set_error(FE_ERR_ARG, "checkpoint: the run folder, model, weights and optimizer are needed");
    char fin[1100], tmp[1100], old[1100];
    path_join(fin, sizeof fin, run_dir, "checkpoint");
    path_join(tmp, sizeof tmp, run_dir, "checkpoint.new");
    path_join(old, sizeof old, run_dir, "checkpoint.old");
    if (is_dir(fin)) return load_dir(fin, s);
    if (!is_dir(old)) return fe_set_error(FE_ERR_IO, "no checkpoint to resume in %s", run_dir);
    /* killed between the two renames of a save: checkpoint.new was complete (it is
     * renamed only once written), checkpoint.old is the one before it */
    if (is_dir(tmp) && load_dir(tmp, s) == FE_OK) return FE_OK;
    return load_dir(old, s);
}
