/* Whole-file reads and path helpers for the io layer. */
#include "io/io_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

bool fe__is_dir(const char *path) {
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

bool fe__is_file(const char *path) {
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

char *fe__path_join(const char *dir, const char *name) {
    size_t a = dir ? strlen(dir) : 0, b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) {
        fe_set_error(FE_ERR_OOM, "out of host memory");
        return NULL;
    }
    if (a) {
        memcpy(p, dir, a);
        if (dir[a - 1] != '/') p[a++] = '/';
    }
    memcpy(p + a, name, b + 1);
    return p;
}

char *fe__read_text_file(const char *path, size_t max_bytes, size_t *len) {
    if (!path) {
        fe_set_error(FE_ERR_ARG, "path is NULL");
        return NULL;
    }
    if (fe__is_dir(path)) {
        fe_set_error(FE_ERR_IO, "'%s' is a folder, not a file", path);
        return NULL;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fe_set_error(FE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap > max_bytes) {
                fe_set_error(FE_ERR_FORMAT, "'%s' is larger than %zu bytes", path, max_bytes);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                fe_set_error(FE_ERR_OOM, "out of host memory reading '%s'", path);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, fp);
        n += r;
        if (r == 0) {
            if (ferror(fp)) {
                fe_set_error(FE_ERR_IO, "reading '%s' failed", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (!buf && fe_last_status() == FE_OK)
        fe_set_error(FE_ERR_OOM, "out of host memory reading '%s'", path);
    fclose(fp);
    if (!buf) return NULL;
    if (n > max_bytes) {
        fe_set_error(FE_ERR_FORMAT, "'%s' is larger than %zu bytes", path, max_bytes);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
