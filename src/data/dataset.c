/* Datasets: a read-only window [begin, begin+len) over a shared, reference-counted token
 * store (malloc'd or memory-mapped; tokens of 1, 2 or 4 little-endian bytes). */
#include "data/data_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct fe_dataset {
    fe_token_store *st;
    int64_t begin, len;
    int64_t vocab_bound; /* 0 until computed */
};

fe_token_store *fe__store_new(const uint8_t *data, int64_t n, int width, void *owned, void *map,
                              size_t map_len) {
    fe_token_store *st = calloc(1, sizeof *st);
    if (!st) {
        fe_set_error(FE_ERR_OOM, "dataset: out of memory");
        return NULL;
    }
    st->refcnt = 1;
    st->data = data, st->n = n, st->width = width;
    st->owned = owned, st->map = map, st->map_len = map_len;
    return st;
}

void fe__store_release(fe_token_store *st) {
    if (!st || __atomic_sub_fetch(&st->refcnt, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(st->owned);
    if (st->map) munmap(st->map, st->map_len);
    free(st);
}

fe_dataset *fe__dataset_wrap(fe_token_store *st, int64_t begin, int64_t len) {
    fe_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        fe_set_error(FE_ERR_OOM, "dataset: out of memory");
        return NULL;
    }
    __atomic_add_fetch(&st->refcnt, 1, __ATOMIC_ACQ_REL);
    ds->st = st, ds->begin = begin, ds->len = len;
    return ds;
}

fe_dataset *fe__dataset_ref(const fe_dataset *ds) {
    return fe__dataset_wrap(ds->st, ds->begin, ds->len);
}

void fe_dataset_free(fe_dataset *ds) {
    if (!ds) return;
    fe__store_release(ds->st);
    free(ds);
}

fe_dataset *fe_dataset_from_tokens(const int32_t *tokens, int64_t n) {
    if (n < 0 || (n > 0 && !tokens)) {
        fe_set_error(FE_ERR_ARG, "fe_dataset_from_tokens: bad arguments");
        return NULL;
    }
    uint8_t *buf = malloc((size_t)n * 4 + 1);
    if (!buf) {
        fe_set_error(FE_ERR_OOM, "dataset: out of memory (%lld tokens)", (long long)n);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0) {
            free(buf);
            fe_set_error(FE_ERR_RANGE, "dataset: token %d at position %lld is negative", tokens[i],
                         (long long)i);
            return NULL;
        }
        uint32_t v = (uint32_t)tokens[i];
        buf[4 * i] = (uint8_t)v, buf[4 * i + 1] = (uint8_t)(v >> 8);
        buf[4 * i + 2] = (uint8_t)(v >> 16), buf[4 * i + 3] = (uint8_t)(v >> 24);
    }
    fe_token_store *st = fe__store_new(buf, n, 4, buf, NULL, 0);
    if (!st) {
        free(buf);
        return NULL;
    }
    fe_dataset *ds = fe__dataset_wrap(st, 0, n);
    fe__store_release(st);
    return ds;
}

fe_dataset *fe_dataset_open_text(const char *path) {
    uint8_t *buf;
    size_t n;
    if (fe__read_file(path, &buf, &n)) return NULL;
    /* byte tokens are the bytes themselves: the file buffer is the store */
    fe_token_store *st = fe__store_new(buf, (int64_t)n, 1, buf, NULL, 0);
    if (!st) {
        free(buf);
        return NULL;
    }
    fe_dataset *ds = fe__dataset_wrap(st, 0, (int64_t)n);
    fe__store_release(st);
    return ds;
}

int64_t fe_dataset_len(const fe_dataset *ds) { return ds ? ds->len : 0; }

static inline int32_t token_at(const fe_token_store *st, int64_t i) {
    const uint8_t *p = st->data + (size_t)i * (size_t)st->width;
    switch (st->width) {
    case 1: return p[0];
    case 2: return (int32_t)(p[0] | (uint32_t)p[1] << 8);
    default:
        return (int32_t)(p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    }
}

fe_status fe_dataset_read(const fe_dataset *ds, int64_t start, int64_t n, int32_t *out) {
    if (!ds || (n > 0 && !out)) return fe_set_error(FE_ERR_ARG, "fe_dataset_read: NULL argument");
    if (start < 0 || n < 0 || start > ds->len || n > ds->len - start)
        return fe_set_error(FE_ERR_RANGE, "dataset: tokens [%lld, %lld) outside the %lld tokens",
                            (long long)start, (long long)(start + n), (long long)ds->len);
    int64_t b = ds->begin + start;
    for (int64_t i = 0; i < n; i++)
        out[i] = token_at(ds->st, b + i);
    return FE_OK;
}

int64_t fe_dataset_vocab_bound(fe_dataset *ds) {
    if (!ds) return 0;
    if (ds->vocab_bound) return ds->vocab_bound;
    int64_t m = -1;
    for (int64_t i = 0; i < ds->len; i++) {
        int64_t v = (uint32_t)token_at(ds->st, ds->begin + i);
        if (v > m) m = v;
    }
    ds->vocab_bound = m + 1;
    return ds->vocab_bound;
}

fe_status fe_dataset_split(const fe_dataset *ds, double val_frac, fe_dataset **train,
                           fe_dataset **val) {
    if (!ds || !train || !val) return fe_set_error(FE_ERR_ARG, "fe_dataset_split: NULL argument");
    *train = *val = NULL;
    if (!(val_frac >= 0.0 && val_frac < 1.0))
        return fe_set_error(FE_ERR_RANGE, "dataset split: val_frac %g is not in [0, 1)", val_frac);
    int64_t nval = (int64_t)((double)ds->len * val_frac);
    int64_t ntrain = ds->len - nval;
    *train = fe__dataset_wrap(ds->st, ds->begin, ntrain);
    *val = fe__dataset_wrap(ds->st, ds->begin + ntrain, nval);
    if (!*train || !*val) {
        fe_dataset_free(*train), fe_dataset_free(*val);
        *train = *val = NULL;
        return FE_ERR_OOM;
    }
    return FE_OK;
}
