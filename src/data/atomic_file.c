/* Files written atomically: a temporary file, fsync, then rename over the target. */
#include "data/data_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

fe_status fe__atomic_open(fe_atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (!path || !*path) return fe_set_error(FE_ERR_ARG, "atomic write: empty path");
    size_t n = strlen(path) + 32;
    af->path = dup_str(path);
    af->tmp_path = malloc(n);
    if (!af->path || !af->tmp_path) {
        free(af->path), free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return fe_set_error(FE_ERR_OOM, "atomic write: out of memory");
    }
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        fe_status st =
            fe_set_error(FE_ERR_IO, "cannot create '%s': %s", af->tmp_path, strerror(errno));
        free(af->path), free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return st;
    }
    return FE_OK;
}

/* fsync the folder holding `path` so that the rename itself is durable. */
static void sync_parent(const char *path) {
    char *dir = dup_str(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

fe_status fe__atomic_commit(fe_atomic_file *af) {
    if (!af->f) return fe_set_error(FE_ERR_STATE, "atomic write: file is not open");
    bool ok = !ferror(af->f) && fflush(af->f) == 0 && fsync(fileno(af->f)) == 0;
    int err = errno;
    if (fclose(af->f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    af->f = NULL;
    if (!ok) {
        fe_status st =
            fe_set_error(FE_ERR_IO, "writing '%s' failed: %s", af->tmp_path, strerror(err));
        fe__atomic_abort(af);
        return st;
    }
    if (rename(af->tmp_path, af->path) != 0) {
        fe_status st = fe_set_error(FE_ERR_IO, "cannot rename '%s' to '%s': %s", af->tmp_path,
                                    af->path, strerror(errno));
        fe__atomic_abort(af);
        return st;
    }
    sync_parent(af->path);
    free(af->path), free(af->tmp_path);
    memset(af, 0, sizeof *af);
    return FE_OK;
}

void fe__atomic_abort(fe_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->path), free(af->tmp_path);
    memset(af, 0, sizeof *af);
}
