/* Atomic file writing: a temporary file in the destination's folder, fsync, rename. */
#include "ferric/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fe_atomic_file {
    int fd;
    char *path; /* destination */
    char *tmp;  /* temporary file in the same folder */
};

/* The folder part of path ("." when there is none); malloc'ed. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

fe_atomic_file *fe_atomic_open(const char *path) {
    if (!path || !*path) {
        fe_set_error(FE_ERR_ARG, "fe_atomic_open: empty path");
        return NULL;
    }
    fe_atomic_file *f = calloc(1, sizeof *f);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dirlen = slash ? (size_t)(slash - path + 1) : 0;
    size_t n = strlen(path) + 32;
    if (f) {
        f->fd = -1;
        f->path = strdup(path);
        f->tmp = malloc(n);
    }
    if (!f || !f->path || !f->tmp) {
        fe_atomic_abort(f);
        fe_set_error(FE_ERR_OOM, "fe_atomic_open: out of host memory");
        return NULL;
    }
    if (!*base) {
        fe_atomic_abort(f);
        fe_set_error(FE_ERR_ARG, "fe_atomic_open: '%s' names a folder, not a file", path);
        return NULL;
    }
    snprintf(f->tmp, n, "%.*s.%s.tmp.XXXXXX", (int)dirlen, path, base);
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL; /* nothing was created */
        fe_atomic_abort(f);
        fe_set_error(FE_ERR_IO, "cannot create a temporary file for '%s': %s", path, strerror(e));
        return NULL;
    }
    /* mkstemp makes the file 0600; give it the usual permissions for a new file */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(f->fd, 0666 & ~mask);
    return f;
}

fe_status fe_atomic_write(fe_atomic_file *f, const void *data, size_t n) {
    if (!f || f->fd < 0) return fe_set_error(FE_ERR_ARG, "fe_atomic_write: file is not open");
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return fe_set_error(FE_ERR_IO, "writing '%s' failed: %s", f->path,
                                w < 0 ? strerror(errno) : "no space written");
        p += w;
        n -= (size_t)w;
    }
    return FE_OK;
}

fe_status fe_atomic_commit(fe_atomic_file *f) {
    if (!f || f->fd < 0) {
        fe_atomic_abort(f);
        return fe_set_error(FE_ERR_ARG, "fe_atomic_commit: file is not open");
    }
    if (fsync(f->fd) != 0) {
        int e = errno;
        fe_status st = fe_set_error(FE_ERR_IO, "fsync of '%s' failed: %s", f->path, strerror(e));
        fe_atomic_abort(f);
        return st;
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0) {
        fe_status st = fe_set_error(FE_ERR_IO, "closing '%s' failed: %s", f->path, strerror(errno));
        fe_atomic_abort(f);
        return st;
    }
    if (rename(f->tmp, f->path) != 0) {
        fe_status st = fe_set_error(FE_ERR_IO, "renaming the temporary file to '%s' failed: %s",
                                    f->path, strerror(errno));
        fe_atomic_abort(f);
        return st;
    }
    /* make the rename itself durable */
    char *dir = dir_of(f->path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    free(f->tmp);
    free(f->path);
    free(f);
    return FE_OK;
}

void fe_atomic_abort(fe_atomic_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    free(f);
}

fe_status fe_write_file_atomic(const char *path, const void *data, size_t n) {
    fe_atomic_file *af = fe_atomic_open(path);
    if (!af) return fe_last_status();
    fe_status st = fe_atomic_write(af, data, n);
    if (st) {
        fe_atomic_abort(af);
        return st;
    }
    return fe_atomic_commit(af); /* frees af, also on failure */
}
