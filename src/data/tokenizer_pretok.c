/* Normalizers (Prepend, Replace, Strip) and pre-tokenizers (Split, ByteLevel, Metaspace), with
 * the splitting rules of Hugging Face `tokenizers` (SplitDelimiterBehavior). */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

const char tk_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- normalizers ---- */

/* White_Space (Rust's char::is_whitespace) at s[i]; returns its byte length or 0. */
static int space_len(const char *s, size_t n, size_t i) {
    const unsigned char *p = (const unsigned char *)s + i;
    int k = tk_utf8_valid_len(p, n - i);
    if (!k) return 0;
    uint32_t cp = tk_utf8_decode(p, k);
    for (size_t r = 0; r < tk_unicode_space.n; r++)
        if (cp >= tk_unicode_space.r[r][0] && cp <= tk_unicode_space.r[r][1]) return k;
    return 0;
}

static bool norm_one(const tk_norm *nm, const char *s, size_t n, tk_buf *out) {
    out->len = 0;
    switch (nm->kind) {
    case TK_NORM_PREPEND:
        if (n && !tk_buf_put(out, nm->a, nm->alen)) return false;
        return tk_buf_put(out, s, n);
    case TK_NORM_REPLACE: {
        size_t i = 0, run = 0;
        while (nm->alen && i + nm->alen <= n) {
            if (!memcmp(s + i, nm->a, nm->alen)) {
                if (!tk_buf_put(out, s + run, i - run) || !tk_buf_put(out, nm->b, nm->blen))
                    return false;
                i += nm->alen;
                run = i;
            } else {
                i++;
            }
        }
        return tk_buf_put(out, s + run, n - run);
    }
    case TK_NORM_REPLACE_RE: {
        tk_regex_iter it = {0};
        size_t a, b, run = 0;
        int rc;
        while ((rc = tk_regex_next(nm->re, s, n, &it, &a, &b)) == 1) {
            if (!tk_buf_put(out, s + run, a - run) || !tk_buf_put(out, nm->b, nm->blen))
                return false;
            run = b;
        }
        return rc == 0 && tk_buf_put(out, s + run, n - run);
    }
    case TK_NORM_STRIP: {
        size_t a = 0, b = n;
        int k;
        if (nm->left)
            while (a < b && (k = space_len(s, n, a)))
                a += (size_t)k;
        if (nm->right)
            while (b > a) {
                size_t j = b - 1;
                while (j > a && ((unsigned char)s[j] & 0xC0) == 0x80)
                    j--;
                if (!space_len(s, n, j)) break;
                b = j;
            }
        return tk_buf_put(out, s + a, b - a);
    }
    }
    return false;
}

bool tk_normalize(const tk_norm *ns, int nn, const char *s, size_t n, tk_buf *out) {
    out->len = 0;
    if (!tk_buf_put(out, s, n)) return false;
    tk_buf tmp = {0};
    for (int i = 0; i < nn; i++) {
        if (!norm_one(&ns[i], out->p, out->len, &tmp)) {
            tk_buf_free(&tmp);
            return false;
        }
        tk_buf sw = *out;
        *out = tmp;
        tmp = sw;
    }
    tk_buf_free(&tmp);
    return true;
}

/* ---- splitting ---- */

typedef struct seg {
    size_t a, b;
    bool match;
} seg;

typedef struct segs {
    seg *p;
    size_t n, cap;
} segs;

static bool seg_push(segs *v, size_t a, size_t b, bool match) {
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        seg *q = realloc(v->p, c * sizeof *q);
        if (!q) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
        v->p = q, v->cap = c;
    }
    v->p[v->n++] = (seg){a, b, match};
    return true;
}

/* Cuts s into matched and unmatched segments of the pattern (regex or literal). */
static bool find_segments(const tk_pretok *pt, tk_regex *re, const char *lit, size_t litlen,
                          const char *s, size_t n, segs *out) {
    out->n = 0;
    size_t prev = 0;
    if (re) {
        tk_regex_iter it = {0};
        size_t a, b;
        int rc;
        while ((rc = tk_regex_next(re, s, n, &it, &a, &b)) == 1) {
            if (prev != a && !seg_push(out, prev, a, false)) return false;
            if (!seg_push(out, a, b, true)) return false;
            prev = b;
        }
        if (rc < 0) return false;
    } else if (litlen) {
        for (size_t i = 0; i + litlen <= n;) {
            if (!memcmp(s + i, lit, litlen)) {
                if (prev != i && !seg_push(out, prev, i, false)) return false;
                if (!seg_push(out, i, i + litlen, true)) return false;
                i += litlen;
                prev = i;
            } else {
                i++;
            }
        }
    }
    if (prev != n && !seg_push(out, prev, n, false)) return false;
    if (pt && pt->invert)
        for (size_t i = 0; i < out->n; i++)
            out->p[i].match = !out->p[i].match;
    return true;
}

/* Applies a split behaviour to the segments and appends the non-empty pieces. */
static bool emit_split(tk_split_behavior bh, segs *sg, const char *s, bool first, tk_pieces *out) {
    segs r = {0};
    bool ok = true, prev = false;
    switch (bh) {
    case TK_SPLIT_ISOLATED:
        for (size_t i = 0; i < sg->n; i++)
            ok = ok && seg_push(&r, sg->p[i].a, sg->p[i].b, false);
        break;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < sg->n; i++)
            if (!sg->p[i].match) ok = ok && seg_push(&r, sg->p[i].a, sg->p[i].b, false);
        break;
    case TK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < sg->n && ok; i++) {
            if (sg->p[i].match && !prev && r.n)
                r.p[r.n - 1].b = sg->p[i].b;
            else
                ok = seg_push(&r, sg->p[i].a, sg->p[i].b, false);
            prev = sg->p[i].match;
        }
        break;
    case TK_SPLIT_MERGED_NEXT:
        for (size_t k = sg->n; k-- > 0 && ok;) {
            if (sg->p[k].match && !prev && r.n)
                r.p[r.n - 1].a = sg->p[k].a;
            else
                ok = seg_push(&r, sg->p[k].a, sg->p[k].b, false);
            prev = sg->p[k].match;
        }
        for (size_t i = 0; ok && i < r.n / 2; i++) { /* back to text order */
            seg t = r.p[i];
            r.p[i] = r.p[r.n - 1 - i];
            r.p[r.n - 1 - i] = t;
        }
        break;
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < sg->n && ok; i++) {
            if (sg->p[i].match == prev && r.n)
                r.p[r.n - 1].b = sg->p[i].b;
            else
                ok = seg_push(&r, sg->p[i].a, sg->p[i].b, false);
            prev = sg->p[i].match;
        }
        break;
    }
    for (size_t i = 0; ok && i < r.n; i++)
        if (r.p[i].b > r.p[i].a)
            ok = tk_pieces_add(out, s + r.p[i].a, r.p[i].b - r.p[i].a, first && r.p[i].a == 0);
    free(r.p);
    return ok;
}

/* ---- pre-tokenizers ---- */

static bool byte_level(const tk_pretok *pt, const char *s, size_t n, bool first, segs *sg,
                       tk_buf *tmp, tk_pieces *out) {
    tmp->len = 0;
    if (pt->add_prefix_space && (n == 0 || s[0] != ' ') && !tk_buf_put(tmp, " ", 1)) return false;
    if (!tk_buf_put(tmp, s, n)) return false;
    size_t start = out->n;
    if (pt->re) {
        if (!find_segments(NULL, pt->re, NULL, 0, tmp->p, tmp->len, sg)) return false;
        if (!emit_split(TK_SPLIT_ISOLATED, sg, tmp->p, first, out)) return false;
    } else if (tmp->len && !tk_pieces_add(out, tmp->p, tmp->len, first)) {
        return false;
    }
    /* map the bytes of the new pieces to the byte-level alphabet, rebuilding them in place */
    size_t base = out->n > start ? out->off[start] : out->text.len;
    size_t nbytes = out->text.len - base;
    char *raw = malloc(nbytes ? nbytes : 1);
    if (!raw) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    memcpy(raw, out->text.p + base, nbytes);
    out->text.len = base;
    bool ok = true;
    for (size_t i = start; ok && i < out->n; i++) {
        size_t o = out->off[i] - base, l = out->len[i];
        out->off[i] = out->text.len;
        for (size_t j = 0; ok && j < l; j++) {
            const char *c = tk_byte_char((uint8_t)raw[o + j]);
            ok = tk_buf_put(&out->text, c, c[1] ? 2 : 1);
        }
        out->len[i] = out->text.len - out->off[i];
    }
    free(raw);
    return ok;
}

static bool metaspace(const tk_pretok *pt, const char *s, size_t n, bool first, segs *sg,
                      tk_buf *tmp, tk_pieces *out) {
    tmp->len = 0;
    bool starts = n >= pt->repl_len && !memcmp(s, pt->repl, pt->repl_len);
    /* the replacement of spaces can create a leading replacement character too */
    if (!starts && n && s[0] == ' ') starts = true;
    bool prepend =
        !starts && (pt->scheme == TK_PREPEND_ALWAYS || (pt->scheme == TK_PREPEND_FIRST && first));
    if (prepend && !tk_buf_put(tmp, pt->repl, pt->repl_len)) return false;
    for (size_t i = 0; i < n; i++) {
        bool ok = s[i] == ' ' ? tk_buf_put(tmp, pt->repl, pt->repl_len) : tk_buf_put(tmp, s + i, 1);
        if (!ok) return false;
    }
    if (!pt->split) return tmp->len ? tk_pieces_add(out, tmp->p, tmp->len, first) : true;
    if (!find_segments(NULL, NULL, pt->repl, pt->repl_len, tmp->p, tmp->len, sg)) return false;
    return emit_split(TK_SPLIT_MERGED_NEXT, sg, tmp->p, first, out);
}

static bool pretok_one(const tk_pretok *pt, tk_pieces *in, tk_pieces *out) {
    tk_pieces_clear(out);
    segs sg = {0};
    tk_buf tmp = {0};
    bool ok = true;
    for (size_t i = 0; ok && i < in->n; i++) {
        const char *s = in->text.p + in->off[i];
        size_t n = in->len[i];
        bool first = in->first[i];
        switch (pt->kind) {
        case TK_PRE_SPLIT:
            ok = find_segments(pt, pt->re, pt->literal, pt->literal_len, s, n, &sg) &&
                 emit_split(pt->behavior, &sg, s, first, out);
            break;
        case TK_PRE_BYTELEVEL: ok = byte_level(pt, s, n, first, &sg, &tmp, out); break;
        case TK_PRE_METASPACE: ok = metaspace(pt, s, n, first, &sg, &tmp, out); break;
        }
    }
    free(sg.p);
    tk_buf_free(&tmp);
    return ok;
}

bool tk_pretokenize(const tk_pretok *ps, int np, tk_pieces *in, tk_pieces *out) {
    if (np == 0) {
        tk_pieces_clear(out);
        for (size_t i = 0; i < in->n; i++)
            if (!tk_pieces_add(out, in->text.p + in->off[i], in->len[i], in->first[i]))
                return false;
        return true;
    }
    /* ping-pong between the two lists so that the result ends up in `out` */
    tk_pieces *a = in, *b = out;
    for (int k = 0; k < np; k++) {
        if (!pretok_one(&ps[k], a, b)) return false;
        tk_pieces *t = a;
        a = b;
        b = t;
    }
    if (a != out) { /* the result sits in `in`: swap the contents */
        tk_pieces t = *in;
        *in = *out;
        *out = t;
    }
    return true;
}

void tk_norm_free(tk_norm *n) {
    free(n->a), free(n->b);
    tk_regex_free(n->re);
}

void tk_pretok_free(tk_pretok *p) {
    tk_regex_free(p->re);
    free(p->literal);
}
