/* Decoders: token strings -> text, as a chain where each decoder maps the list of strings to a
 * new list (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace), then concatenated. */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xNN>" -> the byte, or -1 (Rust's u8::from_str_radix also takes "+N"). */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    if (s[3] == '+') return hexval(s[4]);
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

#define PIECE(ps, i) ((ps)->text.p + (ps)->off[i])

static bool dec_one(const tk_dec *d, tk_pieces *in, tk_pieces *out) {
    tk_pieces_clear(out);
    tk_buf tmp = {0};
    bool ok = true;
    switch (d->kind) {
    case TK_DEC_BYTELEVEL: /* all tokens -> one string */
        for (size_t i = 0; ok && i < in->n; i++) {
            const char *s = PIECE(in, i);
            size_t n = in->len[i], mark = tmp.len;
            bool all = true;
            for (size_t j = 0; ok && j < n;) {
                int k = tk_utf8_valid_len((const unsigned char *)s + j, n - j);
                int b = k ? tk_char_byte(tk_utf8_decode((const unsigned char *)s + j, k)) : -1;
                if (b < 0) {
                    all = false;
                    break;
                }
                char c = (char)b;
                ok = tk_buf_put(&tmp, &c, 1);
                j += (size_t)k;
            }
            if (ok && !all) { /* not byte-level text: keep the token as it is */
                tmp.len = mark;
                ok = tk_buf_put(&tmp, s, n);
            }
        }
        if (ok) {
            tk_buf txt = {0};
            ok = tk_utf8_lossy(&txt, tmp.p ? tmp.p : "", tmp.len) &&
                 tk_pieces_add(out, txt.p ? txt.p : "", txt.len, false);
            tk_buf_free(&txt);
        }
        break;
    case TK_DEC_REPLACE:
        for (size_t i = 0; ok && i < in->n; i++) {
            const char *s = PIECE(in, i);
            size_t n = in->len[i], run = 0, j = 0;
            tmp.len = 0;
            while (ok && d->alen && j + d->alen <= n) {
                if (!memcmp(s + j, d->a, d->alen)) {
                    ok = tk_buf_put(&tmp, s + run, j - run) && tk_buf_put(&tmp, d->b, d->blen);
                    j += d->alen;
                    run = j;
                } else {
                    j++;
                }
            }
            ok = ok && tk_buf_put(&tmp, s + run, n - run) &&
                 tk_pieces_add(out, tmp.p, tmp.len, false);
        }
        break;
    case TK_DEC_BYTEFALLBACK: {
        tmp.len = 0; /* pending bytes */
        for (size_t i = 0; ok && i <= in->n; i++) {
            int b = i < in->n ? byte_token(PIECE(in, i), in->len[i]) : -1;
            if (b >= 0) {
                char c = (char)b;
                ok = tk_buf_put(&tmp, &c, 1);
                continue;
            }
            if (tmp.len) {
                if (tk_utf8_is_valid(tmp.p, tmp.len))
                    ok = tk_pieces_add(out, tmp.p, tmp.len, false);
                else
                    for (size_t j = 0; ok && j < tmp.len; j++)
                        ok = tk_pieces_add(out, "\xEF\xBF\xBD", 3, false);
                tmp.len = 0;
            }
            if (ok && i < in->n) ok = tk_pieces_add(out, PIECE(in, i), in->len[i], false);
        }
        break;
    }
    case TK_DEC_FUSE:
        for (size_t i = 0; ok && i < in->n; i++)
            ok = tk_buf_put(&tmp, PIECE(in, i), in->len[i]);
        ok = ok && tk_pieces_add(out, tmp.p ? tmp.p : "", tmp.len, false);
        break;
    case TK_DEC_STRIP:
        for (size_t i = 0; ok && i < in->n; i++) {
            const char *s = PIECE(in, i);
            size_t a = 0, b = in->len[i];
            for (int k = 0; k < d->start && a + d->alen <= b && !memcmp(s + a, d->a, d->alen); k++)
                a += d->alen;
            for (int k = 0;
                 k < d->stop && b >= a + d->alen && !memcmp(s + b - d->alen, d->a, d->alen); k++)
                b -= d->alen;
            ok = tk_pieces_add(out, s + a, b - a, false);
        }
        break;
    case TK_DEC_METASPACE: /* d->a: the replacement character */
        for (size_t i = 0; ok && i < in->n; i++) {
            const char *s = PIECE(in, i);
            size_t n = in->len[i], run = 0, j = 0;
            bool drop = i == 0 && d->scheme != TK_PREPEND_NEVER;
            tmp.len = 0;
            while (ok && j + d->alen <= n) {
                if (!memcmp(s + j, d->a, d->alen)) {
                    ok = tk_buf_put(&tmp, s + run, j - run) && (drop || tk_buf_put(&tmp, " ", 1));
                    j += d->alen;
                    run = j;
                } else {
                    j++;
                }
            }
            ok = ok && tk_buf_put(&tmp, s + run, n - run) &&
                 tk_pieces_add(out, tmp.p, tmp.len, false);
        }
        break;
    }
    tk_buf_free(&tmp);
    return ok;
}

bool tk_decode_tokens(const fe_tokenizer *t, const char **toks, const size_t *lens, size_t n,
                      tk_buf *out) {
    tk_pieces a = {0}, b = {0};
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++)
        ok = tk_pieces_add(&a, toks[i], lens[i], false);
    for (int k = 0; ok && k < t->n_decs; k++) {
        ok = dec_one(&t->decs[k], &a, &b);
        tk_pieces sw = a;
        a = b;
        b = sw;
    }
    for (size_t i = 0; ok && i < a.n; i++)
        ok = tk_buf_put(out, PIECE(&a, i), a.len[i]);
    tk_pieces_free(&a), tk_pieces_free(&b);
    return ok;
}

void tk_dec_free(tk_dec *d) { free(d->a), free(d->b); }
