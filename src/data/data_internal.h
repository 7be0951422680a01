/* Internals of the data layer (src/data). Not installed. */
#ifndef FE_DATA_INTERNAL_H
#define FE_DATA_INTERNAL_H

#include "ferric/data.h"

#include <stdio.h>
#include <string.h>

/* Prefix the thread's current error message with `prefix` (keeps the status). */
static inline void fe__error_prefix(const char *prefix) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", fe_last_error());
    fe_set_error(fe_last_status() ? fe_last_status() : FE_ERR_FORMAT, "%s: %s", prefix, msg);
}

/* ---- compressed buffers (rdb.c) -------------------------------------------- */
/* Inflate a zlib or gzip stream (auto-detected). `expect` > 0: the exact output size;
 * 0: unknown (output capped at `cap` bytes). Returns a malloc'd buffer. */
fe_status fe__inflate(const uint8_t *src, size_t n, size_t expect, size_t cap, uint8_t **out,
                      size_t *out_n);
/* Read a whole file into a malloc'd buffer. */
fe_status fe__read_file(const char *path, uint8_t **out, size_t *out_n);

/* ---- datasets (dataset.c) ---------------------------------------------------- */
/* The storage behind a dataset: `n` tokens of `width` bytes (1, 2 or 4, little-endian)
 * at `data`; either malloc'd or a mapping of `map_len` bytes at `map`. */
typedef struct fe_token_store {
    int refcnt; /* atomic */
    const uint8_t *data;
    int64_t n;
    int width;
    void *owned; /* free()d on release */
    void *map;   /* munmap()ed on release */
    size_t map_len;
} fe_token_store;
/* A dataset viewing tokens [begin, begin+len) of `st` (takes one reference to st). */
fe_dataset *fe__dataset_wrap(fe_token_store *st, int64_t begin, int64_t len);
/* A fresh store around data (refcnt 1); the store owns `owned` / `map`. */
fe_token_store *fe__store_new(const uint8_t *data, int64_t n, int width, void *owned, void *map,
                              size_t map_len);
void fe__store_release(fe_token_store *st);
/* A new view of the same tokens as `ds` (shares the store). */
fe_dataset *fe__dataset_ref(const fe_dataset *ds);

#endif
