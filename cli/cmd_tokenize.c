/* `ferric tokenize`: text on stdin -> token ids (one per line) on stdout, or ids -> text. */
#include "ferric/ferric.h"
#include "ferric/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fe_cmd_tokenize(int argc, char **argv);

static void tokenize_usage(FILE *f) {
    fprintf(f, "usage: ferric tokenize --tokenizer PATH [--decode] [options] < in > out\n"
               "\n"
               "Encodes UTF-8 text from stdin into token ids, one per line, or with --decode\n"
               "reads ids (separated by white space) and writes the text.\n"
               "\n"
               "  --tokenizer PATH  a tokenizer.json, a folder holding one, or a folder with\n"
               "                    GPT-2's encoder.json + vocab.bpe\n"
               "  --decode          ids -> text\n"
               "  --no-special      encode without the post-processor's tokens (bos, ...)\n"
               "  --keep-special    decode special tokens too (they are skipped by default)\n"
               "  -0, --null        many documents: encode NUL-separated texts, printing an empty\n"
               "                    line after the ids of each; decode groups of ids separated by\n"
               "                    empty lines, printing a NUL after each text\n");
}

static char *read_all(FILE *f, size_t *n) {
    size_t cap = 1 << 16, len = 0;
    char *p = malloc(cap);
    if (!p) return NULL;
    for (;;) {
        if (len == cap) {
            char *q = realloc(p, cap * 2);
            if (!q) return free(p), NULL;
            p = q, cap *= 2;
        }
        size_t k = fread(p + len, 1, cap - len, f);
        len += k;
        if (k == 0) break;
    }
    if (ferror(f)) return free(p), NULL;
    *n = len;
    return p;
}

static int encode_text(fe_tokenizer *t, const char *s, size_t n, bool special, FILE *out) {
    int32_t *ids;
    size_t m;
    if (fe_tokenizer_encode(t, s, n, special, &ids, &m)) {
        fprintf(stderr, "ferric tokenize: %s\n", fe_last_error());
        return 1;
    }
    for (size_t i = 0; i < m; i++)
        fprintf(out, "%d\n", (int)ids[i]);
    free(ids);
    return 0;
}

/* Decodes the ids written in s[0..n). */
static int decode_text(fe_tokenizer *t, const char *s, size_t n, bool skip, FILE *out) {
    size_t cap = 1024, m = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return fprintf(stderr, "ferric tokenize: out of memory\n"), 1;
    for (size_t i = 0; i < n;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            i++;
        if (i == n) break;
        char num[24];
        size_t k = 0;
        while (i < n && k < sizeof num - 1 &&
               !(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            num[k++] = s[i++];
        num[k] = 0;
        char *end;
        errno = 0;
        long v = strtol(num, &end, 10);
        if (*end || errno || v < 0 || v > INT32_MAX ||
            (i < n && !(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))) {
            fprintf(stderr, "ferric tokenize: '%s' is not a token id\n", num);
            free(ids);
            return 1;
        }
        if (m == cap) {
            int32_t *q = realloc(ids, cap * 2 * sizeof *ids);
            if (!q) return free(ids), fprintf(stderr, "ferric tokenize: out of memory\n"), 1;
            ids = q, cap *= 2;
        }
        ids[m++] = (int32_t)v;
    }
    char *text;
    size_t len;
    fe_status st = fe_tokenizer_decode(t, ids, m, skip, &text, &len);
    free(ids);
    if (st) {
        fprintf(stderr, "ferric tokenize: %s\n", fe_last_error());
        return 1;
    }
    fwrite(text, 1, len, out);
    free(text);
    return 0;
}

int fe_cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    bool decode = false, special = true, keep_special = false, docs = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--tokenizer") && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(a, "--tokenizer=", 12))
            path = a + 12;
        else if (!strcmp(a, "--decode"))
            decode = true;
        else if (!strcmp(a, "--no-special"))
            special = false;
        else if (!strcmp(a, "--keep-special"))
            keep_special = true;
        else if (!strcmp(a, "-0") || !strcmp(a, "--null"))
            docs = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ferric tokenize: unknown option '%s'\n\n", a);
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "ferric tokenize: --tokenizer PATH is required\n\n");
        tokenize_usage(stderr);
        return 2;
    }
    fe_tokenizer *t = fe_tokenizer_load(path);
    if (!t) {
        fprintf(stderr, "ferric tokenize: %s\n", fe_last_error());
        return 1;
    }
    size_t n;
    char *in = read_all(stdin, &n);
    if (!in) {
        fprintf(stderr, "ferric tokenize: cannot read stdin\n");
        fe_tokenizer_free(t);
        return 1;
    }
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    int rc = 0;
    if (!docs) {
        rc = decode ? decode_text(t, in, n, !keep_special, stdout)
                    : encode_text(t, in, n, special, stdout);
    } else if (!decode) {
        for (size_t i = 0; !rc && i < n;) {
            const char *z = memchr(in + i, 0, n - i);
            size_t e = z ? (size_t)(z - in) : n;
            rc = encode_text(t, in + i, e - i, special, stdout);
            putchar('\n');
            i = e + 1;
        }
    } else {
        /* groups of ids separated by empty lines */
        for (size_t i = 0; !rc && i < n;) {
            size_t e = i;
            while (e < n && !(in[e] == '\n' && (e == i || in[e - 1] == '\n')))
                e++;
            rc = decode_text(t, in + i, e - i, !keep_special, stdout);
            putchar(0);
            i = e + 1;
        }
    }
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "ferric tokenize: cannot write the output\n");
        rc = 1;
    }
    free(in);
    fe_tokenizer_free(t);
    return rc;
}
