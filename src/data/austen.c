/* The Jane Austen corpus from R package janeaustenr (Debian: r-cran-janeaustenr): its
 * lazy-load database data/Rdata.{rdx,rdb} holds one character vector per novel. */
#include "data/data_internal.h"
#include "ferric/io.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Publication order. */
static const char *const k_novels[] = {
    "sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"};

/* The database base path ("<dir>/.../data/Rdata") for the layouts we accept. */
static char *find_db(const char *root) {
    static const char *const k_sub[] = {
        "/data/Rdata",
        "/janeaustenr/data/Rdata",
        "/usr/lib/R/site-library/janeaustenr/data/Rdata",
        "/usr/lib/R/library/janeaustenr/data/Rdata",
        "/usr/local/lib/R/site-library/janeaustenr/data/Rdata",
    };
    for (size_t i = 0; i < sizeof k_sub / sizeof *k_sub; i++) {
        size_t n = strlen(root) + strlen(k_sub[i]) + 8;
        char *p = malloc(n);
        if (!p) return NULL;
        snprintf(p, n, "%s%s.rdx", root, k_sub[i]);
        if (access(p, R_OK) == 0) {
            p[strlen(p) - 4] = '\0'; /* drop ".rdx" */
            return p;
        }
        free(p);
    }
    return NULL;
}

/* Write one string, converting Latin-1 to UTF-8 when it is flagged so. */
/* The text being built: a growing memory buffer (the six novels are about 4.5 MB),
 * written out in one piece. */
typedef struct text_buf {
    char *p;
    size_t n, cap;
    bool oom;
} text_buf;

static void put(text_buf *t, const void *data, size_t n) {
    if (t->oom) return;
    if (t->n + n > t->cap) {
        size_t cap = t->cap ? t->cap : 1 << 20;
        while (cap < t->n + n)
            cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = true;
            return;
        }
        t->p = q, t->cap = cap;
    }
    memcpy(t->p + t->n, data, n);
    t->n += n;
}

/* One R string as a UTF-8 line (latin-1 strings converted). */
static void write_line(text_buf *t, const fe_robj *s) {
    if (s->chars) {
        if (s->levels & FE_R_ENC_LATIN1) {
            for (int64_t i = 0; i < s->length; i++) {
                unsigned char c = (unsigned char)s->chars[i];
                unsigned char u[2] = {(unsigned char)(0xC0 | (c >> 6)),
                                      (unsigned char)(0x80 | (c & 0x3F))};
                if (c < 0x80)
                    put(t, &c, 1);
                else
                    put(t, u, 2);
            }
        } else {
            put(t, s->chars, (size_t)s->length);
        }
    }
    put(t, "\n", 1);
}

fe_status fe_austen_extract(const char *pkg_root_dir, const char *out_txt_path,
                            int64_t *bytes_out) {
    if (bytes_out) *bytes_out = 0;
    if (!pkg_root_dir || !out_txt_path)
        return fe_set_error(FE_ERR_ARG, "fe_austen_extract: NULL path");
    char *base = find_db(pkg_root_dir);
    if (!base)
        return fe_set_error(FE_ERR_IO,
                            "no janeaustenr data/Rdata.rdx under '%s' (unpack r-cran-janeaustenr "
                            "with dpkg -x and pass its root)",
                            pkg_root_dir);
    fe_rdb *db = fe_rdb_open(base);
    free(base);
    if (!db) return fe_last_status();
    text_buf t = {0};
    fe_status st = FE_OK;
    for (size_t k = 0; k < sizeof k_novels / sizeof *k_novels && !st; k++) {
        fe_rfile *rf = fe_rdb_fetch(db, k_novels[k]);
        if (!rf) {
            st = fe_last_status();
            break;
        }
        const fe_robj *v = fe_r_root(rf);
        if (v->type == FE_R_VEC) v = fe_r_get(v, "text"); /* a data frame with a text column */
        if (!v || v->type != FE_R_STR || v->length == 0) {
            st = fe_set_error(FE_ERR_FORMAT, "janeaustenr: object '%s' is not a character vector",
                              k_novels[k]);
        } else {
            if (k > 0) put(&t, "\n", 1);
            for (int64_t i = 0; i < v->length; i++)
                write_line(&t, v->elts[i]);
        }
        fe_r_free(rf);
    }
    fe_rdb_close(db);
    if (!st && t.oom) st = fe_set_error(FE_ERR_OOM, "janeaustenr: out of host memory for the text");
    if (!st) st = fe_write_file_atomic(out_txt_path, t.p, t.n);
    int64_t bytes = (int64_t)t.n;
    free(t.p);
    if (!st && bytes_out) *bytes_out = bytes;
    return st;
}
