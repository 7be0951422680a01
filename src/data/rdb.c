/* R lazy-load databases: an index (.rdx, a compressed serialization of
 * list(variables = list(name = c(offset, length)), references, compressed)) and a data
 * file (.rdb) of chunks, each a 4-byte big-endian uncompressed size and a compressed
 * serialization. Also: whole-file reading and zlib/gzip inflation. */
#include "data/data_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

struct fe_rdb {
    char *rdb_path;
    int count;
    char **names;
    int64_t *offset, *length;
    int compressed; /* 0 none, 1 zlib, 2 or 3: a type byte follows the size */
    int64_t file_size;
};

fe_status fe__read_file(const char *path, uint8_t **out, size_t *out_n) {
    *out = NULL, *out_n = 0;
    if (!path) return fe_set_error(FE_ERR_ARG, "read file: NULL path");
    FILE *f = fopen(path, "rb");
    if (!f) return fe_set_error(FE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fe_set_error(FE_ERR_IO, "cannot size '%s'", path);
    }
    uint8_t *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return fe_set_error(FE_ERR_OOM, "out of memory reading '%s' (%ld bytes)", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    bool err = ferror(f);
    fclose(f);
    if (err || got != (size_t)size) {
        free(buf);
        return fe_set_error(FE_ERR_IO, "short read on '%s'", path);
    }
    buf[size] = 0;
    *out = buf, *out_n = (size_t)size;
    return FE_OK;
}

fe_status fe__inflate(const uint8_t *src, size_t n, size_t expect, size_t cap, uint8_t **out,
                      size_t *out_n) {
    *out = NULL, *out_n = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 32) != Z_OK) /* +32: detect zlib or gzip headers */
        return fe_set_error(FE_ERR_OOM, "inflate: cannot initialise zlib");
    size_t capacity = expect ? expect : (n * 4 + 1024 < cap ? n * 4 + 1024 : cap);
    uint8_t *buf = malloc(capacity ? capacity : 1);
    if (!buf) {
        inflateEnd(&zs);
        return fe_set_error(FE_ERR_OOM, "inflate: out of memory (%zu bytes)", capacity);
    }
    size_t done = 0, in_done = 0;
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        if (done == capacity) {
            if (expect || capacity >= cap) {
                rc = Z_BUF_ERROR;
                break;
            }
            size_t nc = capacity * 2 < cap ? capacity * 2 : cap;
            uint8_t *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                inflateEnd(&zs);
                return fe_set_error(FE_ERR_OOM, "inflate: out of memory (%zu bytes)", nc);
            }
            buf = nb, capacity = nc;
        }
        /* zlib counts in uInt: feed at most 1 GiB per call */
        size_t in_left = n - in_done, out_left = capacity - done;
        zs.next_in = (Bytef *)(src + in_done);
        zs.avail_in = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
        zs.next_out = buf + done;
        zs.avail_out = (uInt)(out_left < (1u << 30) ? out_left : (1u << 30));
        uInt ai = zs.avail_in, ao = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        in_done += ai - zs.avail_in;
        done += ao - zs.avail_out;
        if (rc == Z_BUF_ERROR && in_done == n) break; /* input ended early */
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) break;
    }
    inflateEnd(&zs);
    if (rc != Z_STREAM_END) {
        free(buf);
        if (rc == Z_DATA_ERROR)
            return fe_set_error(FE_ERR_FORMAT, "inflate: corrupt compressed data (%s)",
                                zs.msg ? zs.msg : "data error");
        if (done == capacity && (expect || capacity >= cap))
            return fe_set_error(FE_ERR_FORMAT, "inflate: data expands past the expected %zu bytes",
                                capacity);
        return fe_set_error(FE_ERR_FORMAT, "inflate: compressed data is truncated");
    }
    if (expect && done != expect) {
        free(buf);
        return fe_set_error(FE_ERR_FORMAT, "inflate: got %zu bytes, the header said %zu", done,
                            expect);
    }
    *out = buf, *out_n = done;
    return FE_OK;
}

static char *join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (s) memcpy(s, a, na), memcpy(s + na, b, nb + 1);
    return s;
}

void fe_rdb_close(fe_rdb *db) {
    if (!db) return;
    for (int i = 0; i < db->count; i++)
        free(db->names[i]);
    free(db->names), free(db->offset), free(db->length), free(db->rdb_path);
    free(db);
}

/* Fill db from the parsed index. */
static fe_status parse_index(fe_rdb *db, const fe_robj *root, const char *path) {
    const fe_robj *vars = fe_r_get(root, "variables");
    const fe_robj *comp = fe_r_get(root, "compressed");
    if (!vars || vars->type != FE_R_VEC)
        return fe_set_error(FE_ERR_FORMAT, "%s: index has no 'variables' list", path);
    const fe_robj *names = fe_r_attr(vars, "names");
    if (vars->length > 0 && (!names || names->type != FE_R_STR || names->length != vars->length))
        return fe_set_error(FE_ERR_FORMAT, "%s: 'variables' has no names", path);
    db->compressed = 1;
    if (comp && (comp->type == FE_R_LGL || comp->type == FE_R_INT) && comp->length == 1)
        db->compressed = comp->ints[0];
    else if (comp && comp->type == FE_R_REAL && comp->length == 1)
        db->compressed = (int)comp->reals[0];
    if (db->compressed < 0 || db->compressed > 3)
        return fe_set_error(FE_ERR_FORMAT, "%s: unknown compression %d", path, db->compressed);
    if (vars->length > 1000000) return fe_set_error(FE_ERR_FORMAT, "%s: too many objects", path);
    int n = (int)vars->length;
    db->names = calloc((size_t)n + 1, sizeof *db->names);
    db->offset = calloc((size_t)n + 1, sizeof *db->offset);
    db->length = calloc((size_t)n + 1, sizeof *db->length);
    if (!db->names || !db->offset || !db->length)
        return fe_set_error(FE_ERR_OOM, "rdb: out of memory");
    for (int i = 0; i < n; i++) {
        const fe_robj *e = vars->elts[i];
        const char *name = fe_r_str(names, i);
        double off, len;
        if (e->type == FE_R_INT && e->length == 2)
            off = e->ints[0], len = e->ints[1];
        else if (e->type == FE_R_REAL && e->length == 2)
            off = e->reals[0], len = e->reals[1];
        else
            return fe_set_error(FE_ERR_FORMAT, "%s: entry %d is not an (offset, length) pair", path,
                                i);
        if (!name || !(off >= 0) || !(len >= 4) || off + len > (double)db->file_size)
            return fe_set_error(FE_ERR_FORMAT,
                                "%s: entry %d (%s) lies outside the %lld-byte data file", path, i,
                                name ? name : "NA", (long long)db->file_size);
        db->names[i] = join(name, "");
        if (!db->names[i]) return fe_set_error(FE_ERR_OOM, "rdb: out of memory");
        db->offset[i] = (int64_t)off, db->length[i] = (int64_t)len;
        db->count = i + 1;
    }
    return FE_OK;
}

fe_rdb *fe_rdb_open(const char *base) {
    if (!base) {
        fe_set_error(FE_ERR_ARG, "fe_rdb_open: NULL path");
        return NULL;
    }
    fe_rdb *db = calloc(1, sizeof *db);
    char *rdx = join(base, ".rdx");
    if (db) db->rdb_path = join(base, ".rdb");
    if (!db || !rdx || !db->rdb_path) {
        free(rdx);
        fe_rdb_close(db);
        fe_set_error(FE_ERR_OOM, "rdb: out of memory");
        return NULL;
    }
    FILE *f = fopen(db->rdb_path, "rb");
    if (!f) {
        fe_set_error(FE_ERR_IO, "cannot open '%s': %s", db->rdb_path, strerror(errno));
        goto error;
    }
    if (fseek(f, 0, SEEK_END) == 0) db->file_size = ftell(f);
    fclose(f);
    fe_rfile *index = fe_r_read_rds(rdx);
    if (!index) goto error;
    fe_status st = parse_index(db, fe_r_root(index), rdx);
    fe_r_free(index);
    if (st) goto error;
    free(rdx);
    return db;
error:
    free(rdx);
    fe_rdb_close(db);
    return NULL;
}

int fe_rdb_count(const fe_rdb *db) { return db ? db->count : 0; }

const char *fe_rdb_name(const fe_rdb *db, int i) {
    return db && i >= 0 && i < db->count ? db->names[i] : NULL;
}

fe_rfile *fe_rdb_fetch(fe_rdb *db, const char *name) {
    if (!db || !name) {
        fe_set_error(FE_ERR_ARG, "fe_rdb_fetch: NULL argument");
        return NULL;
    }
    int k = -1;
    for (int i = 0; i < db->count && k < 0; i++)
        if (!strcmp(db->names[i], name)) k = i;
    if (k < 0) {
        fe_set_error(FE_ERR_ARG, "%s: no object named '%s'", db->rdb_path, name);
        return NULL;
    }
    size_t n = (size_t)db->length[k];
    uint8_t *chunk = malloc(n), *plain = NULL;
    if (!chunk) {
        fe_set_error(FE_ERR_OOM, "rdb: out of memory (%zu bytes)", n);
        return NULL;
    }
    FILE *f = fopen(db->rdb_path, "rb");
    bool ok = f && fseek(f, (long)db->offset[k], SEEK_SET) == 0 && fread(chunk, 1, n, f) == n;
    if (f) fclose(f);
    if (!ok) {
        free(chunk);
        fe_set_error(FE_ERR_IO, "%s: cannot read object '%s'", db->rdb_path, name);
        return NULL;
    }
    fe_rfile *out = NULL;
    size_t expect =
        (size_t)chunk[0] << 24 | (size_t)chunk[1] << 16 | (size_t)chunk[2] << 8 | chunk[3];
    size_t skip = 4;
    char method = db->compressed == 1 ? '1' : '0';
    if (db->compressed >= 2) {
        if (n < 5) {
            fe_set_error(FE_ERR_FORMAT, "%s: object '%s' is truncated", db->rdb_path, name);
            goto done;
        }
        method = (char)chunk[4];
        skip = 5;
    }
    if (db->compressed == 0) {
        out = fe_r_unserialize(chunk, n);
    } else if (method == '0') {
        if (expect != n - skip) {
            fe_set_error(FE_ERR_FORMAT, "%s: object '%s' is truncated", db->rdb_path, name);
            goto done;
        }
        out = fe_r_unserialize(chunk + skip, n - skip);
    } else if (method == '1') {
        size_t pn;
        if (!fe__inflate(chunk + skip, n - skip, expect, expect, &plain, &pn))
            out = fe_r_unserialize(plain, pn);
    } else {
        fe_set_error(FE_ERR_FORMAT, "%s: object '%s' uses %s compression, which is not supported",
                     db->rdb_path, name,
                     method == '2'   ? "bzip2"
                     : method == 'Z' ? "xz"
                                     : "unknown");
        goto done;
    }
    if (!out) {
        char prefix[512];
        snprintf(prefix, sizeof prefix, "%s: object '%s'", db->rdb_path, name);
        fe__error_prefix(prefix);
    }
done:
    free(chunk);
    free(plain);
    return out;
}
