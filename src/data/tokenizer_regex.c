/* Regular expressions of pre-tokenizers and normalizers, compiled with PCRE2.
 *
 * tokenizer.json patterns are written for Oniguruma. PCRE2 reads the same syntax for what
 * tokenizers use ((?i:...), \p{L}, lookahead, possessive-free quantifiers), but its Unicode
 * tables are older and its \s is wider, so \s, \p{L}, \p{N} and their negations are replaced
 * by classes that follow the reference's tables (tokenizer_unicode.c). */
#include "data/tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool put_ranges(tk_buf *o, const tk_ranges *r) {
    char tmp[48];
    for (size_t i = 0; i < r->n; i++) {
        int k = r->r[i][0] == r->r[i][1]
                    ? snprintf(tmp, sizeof tmp, "\\x{%X}", r->r[i][0])
                    : snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", r->r[i][0], r->r[i][1]);
        if (!tk_buf_put(o, tmp, (size_t)k)) return false;
    }
    return true;
}

/* The complement of sorted ranges over all Unicode scalar values (surrogates excluded). */
static bool put_complement(tk_buf *o, const tk_ranges *r) {
    char tmp[48];
    uint32_t next = 0;
    for (size_t i = 0; i <= r->n; i++) {
        uint32_t lo = i < r->n ? r->r[i][0] : 0x110000;
        if (lo > next) {
            uint32_t a = next, b = lo - 1;
            /* split around the surrogates, which PCRE2 refuses in UTF mode */
            uint32_t seg[2][2] = {{a, b < 0xD7FF ? b : 0xD7FF}, {a > 0xE000 ? a : 0xE000, b}};
            for (int s = 0; s < 2; s++) {
                if (seg[s][0] > seg[s][1]) continue;
                int k = snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", seg[s][0], seg[s][1]);
                if (!tk_buf_put(o, tmp, (size_t)k)) return false;
            }
        }
        if (i < r->n) next = r->r[i][1] + 1;
    }
    return true;
}

/* Writes the replacement of one property escape; `cls` says whether we are inside [...]. */
static bool put_property(tk_buf *o, char prop, bool negated, bool cls) {
    const tk_ranges *full = prop == 's'   ? &tk_unicode_space
                            : prop == 'L' ? &tk_unicode_letter
                                          : &tk_unicode_number;
    const tk_ranges *extra = prop == 'L' ? &tk_unicode_letter_extra : &tk_unicode_number_extra;
    if (cls && negated) return put_complement(o, full);
    if (!cls && !tk_buf_put(o, negated ? "[^" : "[", negated ? 2 : 1)) return false;
    if (prop == 's') {
        if (!put_ranges(o, full)) return false;
    } else {
        char tmp[8];
        int k = snprintf(tmp, sizeof tmp, "\\p{%c}", prop);
        if (!tk_buf_put(o, tmp, (size_t)k) || !put_ranges(o, extra)) return false;
    }
    return cls || tk_buf_put(o, "]", 1);
}

/* Rewrites the pattern (see the file comment). */
static bool rewrite(const char *p, size_t n, tk_buf *o) {
    bool cls = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's' || d == 'S') {
                if (!put_property(o, 's', d == 'S', cls)) return false;
                i++;
                continue;
            }
            if (d == 'p' || d == 'P') {
                char prop = 0;
                size_t len = 0;
                if (i + 2 < n && (p[i + 2] == 'L' || p[i + 2] == 'N'))
                    prop = p[i + 2], len = 3;
                else if (i + 4 < n && p[i + 2] == '{' && (p[i + 3] == 'L' || p[i + 3] == 'N') &&
                         p[i + 4] == '}')
                    prop = p[i + 3], len = 5;
                if (prop) {
                    if (!put_property(o, prop, d == 'P', cls)) return false;
                    i += len - 1;
                    continue;
                }
            }
            if (!tk_buf_put(o, p + i, 2)) return false;
            i++;
            continue;
        }
        if (!cls && c == '[') {
            cls = true;
            if (!tk_buf_put(o, "[", 1)) return false;
            if (i + 1 < n && p[i + 1] == '^') {
                if (!tk_buf_put(o, "^", 1)) return false;
                i++;
            }
            if (i + 1 < n && p[i + 1] == ']') { /* a leading ] is literal */
                if (!tk_buf_put(o, "]", 1)) return false;
                i++;
            }
            continue;
        }
        if (cls && c == '[' && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] */
            const char *end = strstr(p + i, ":]"); /* patterns hold no NUL before their end */
            size_t e = end && (size_t)(end - p) < n ? (size_t)(end - p) + 2 : n;
            if (!tk_buf_put(o, p + i, e - i)) return false;
            i = e - 1;
            continue;
        }
        if (cls && c == ']') cls = false;
        if (!tk_buf_put(o, &c, 1)) return false;
    }
    return true;
}

tk_regex *tk_regex_compile(const char *pat, size_t n) {
    tk_buf o = {0};
    if (!rewrite(pat, n, &o)) {
        tk_buf_free(&o);
        return NULL;
    }
    tk_regex *re = calloc(1, sizeof *re);
    if (!re) {
        tk_buf_free(&o);
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
        return NULL;
    }
    int err;
    PCRE2_SIZE eoff;
    re->code = pcre2_compile((PCRE2_SPTR)(o.p ? o.p : ""), o.len, PCRE2_UTF | PCRE2_UCP, &err,
                             &eoff, NULL);
    tk_buf_free(&o);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fe_set_error(FE_ERR_FORMAT, "tokenizer: bad regex /%.*s/: %s", (int)(n > 200 ? 200 : n),
                     pat, (char *)msg);
        free(re);
        return NULL;
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    re->md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (!re->md) {
        tk_regex_free(re);
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory (regex match data)");
        return NULL;
    }
    return re;
}

int tk_regex_next(tk_regex *re, const char *s, size_t n, tk_regex_iter *it, size_t *ms,
                  size_t *me) {
    while (it->pos <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, it->pos, PCRE2_NO_UTF_CHECK, re->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) {
            it->pos = n + 1;
            return 0;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            fe_set_error(FE_ERR_RANGE, "tokenizer: regex match failed: %s", (char *)msg);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(re->md);
        size_t a = ov[0], b = ov[1];
        if (a == b && it->any && a == it->last_end) {
            /* an empty match right after the previous one: step one character on */
            size_t p = it->pos + 1;
            while (p < n && ((unsigned char)s[p] & 0xC0) == 0x80)
                p++;
            it->pos = p;
            continue;
        }
        it->pos = it->last_end = b;
        it->any = true;
        *ms = a, *me = b;
        return 1;
    }
    return 0;
}

void tk_regex_free(tk_regex *re) {
    if (!re) return;
    pcre2_match_data_free(re->md);
    pcre2_code_free(re->code);
    free(re);
}
