/* `ferric prepare`: build training data files.
 *   ferric prepare austen --pkg DIR --out FILE   the Jane Austen novels as UTF-8 text
 *   ferric prepare shard --text FILE --out FILE  a text file as a byte-token shard */
#include "ferric/core.h"
#include "ferric/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fe_cmd_prepare(int argc, char **argv);

static void prepare_usage(FILE *f) {
    fprintf(f, "usage: ferric prepare austen --pkg DIR [--out FILE]\n"
               "       ferric prepare shard --text FILE --out FILE\n"
               "\n"
               "  austen   extract Jane Austen's six novels from the unpacked Debian package\n"
               "           r-cran-janeaustenr (DIR: the dpkg -x root or the R package folder)\n"
               "           into a UTF-8 text file (default data/austen.txt)\n"
               "  shard    tokenize a text file with the byte tokenizer and write an llm.c-style\n"
               "           token shard (uint16 tokens)\n");
}

/* argv[i] is `name`: take its value from argv[i+1]. */
static bool take_opt(int argc, char **argv, int *i, const char *name, const char **out) {
    if (strcmp(argv[*i], name) != 0) return false;
    if (*i + 1 >= argc) {
        fprintf(stderr, "ferric prepare: %s needs a value\n", name);
        *out = NULL;
        return true;
    }
    *out = argv[++*i];
    return true;
}

static int prepare_shard(const char *text, const char *out) {
    fe_dataset *ds = fe_dataset_open_text(text);
    if (!ds) {
        fprintf(stderr, "ferric prepare: %s\n", fe_last_error());
        return 1;
    }
    int64_t n = fe_dataset_len(ds);
    int32_t *tok = malloc((size_t)(n ? n : 1) * sizeof *tok);
    fe_status st = tok ? fe_dataset_read(ds, 0, n, tok) : FE_ERR_OOM;
    if (!st) st = fe_shard_write(out, tok, n, 2);
    free(tok);
    fe_dataset_free(ds);
    if (st) {
        fprintf(stderr, "ferric prepare: %s\n", tok ? fe_last_error() : "out of memory");
        return 1;
    }
    printf("wrote %s: %lld byte tokens\n", out, (long long)n);
    return 0;
}

int fe_cmd_prepare(int argc, char **argv) {
    /* argv[0] is "prepare" */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        prepare_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *what = argv[1], *pkg = NULL, *out = NULL, *text = NULL;
    for (int i = 2; i < argc; i++) {
        const char *v = "";
        if (take_opt(argc, argv, &i, "--pkg", &v))
            pkg = v;
        else if (take_opt(argc, argv, &i, "--out", &v))
            out = v;
        else if (take_opt(argc, argv, &i, "--text", &v))
            text = v;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            prepare_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ferric prepare: unknown option '%s'\n", argv[i]);
            prepare_usage(stderr);
            return 2;
        }
        if (!v) return 2;
    }
    if (!strcmp(what, "austen")) {
        if (!pkg) {
            fprintf(stderr, "ferric prepare austen: --pkg DIR is required\n");
            return 2;
        }
        if (!out) out = "data/austen.txt";
        int64_t bytes = 0;
        if (fe_austen_extract(pkg, out, &bytes)) {
            fprintf(stderr, "ferric prepare austen: %s\n", fe_last_error());
            return 1;
        }
        printf("wrote %s: %lld bytes\n", out, (long long)bytes);
        return 0;
    }
    if (!strcmp(what, "shard")) {
        if (!text || !out) {
            fprintf(stderr, "ferric prepare shard: --text FILE and --out FILE are required\n");
            return 2;
        }
        return prepare_shard(text, out);
    }
    fprintf(stderr, "ferric prepare: unknown dataset '%s'\n", what);
    prepare_usage(stderr);
    return 2;
}
