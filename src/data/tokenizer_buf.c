/* Growable byte, id and piece buffers used by the tokenizer pipeline. */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory (%zu bytes)", c * elem);
        return false;
    }
    *p = q;
    *cap = c;
    return true;
}

bool tk_buf_reserve(tk_buf *b, size_t extra) {
    return grow((void **)&b->p, &b->cap, b->len + extra + 1, 1);
}

bool tk_buf_put(tk_buf *b, const void *p, size_t n) {
    if (!tk_buf_reserve(b, n)) return false;
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
    return true;
}

void tk_buf_free(tk_buf *b) {
    free(b->p);
    *b = (tk_buf){0};
}

bool tk_ids_push(tk_ids *v, int32_t id) {
    if (!grow((void **)&v->p, &v->cap, v->len + 1, sizeof *v->p)) return false;
    v->p[v->len++] = id;
    return true;
}

bool tk_ids_put(tk_ids *v, const int32_t *ids, size_t n) {
    if (!grow((void **)&v->p, &v->cap, v->len + n, sizeof *v->p)) return false;
    if (n) memcpy(v->p + v->len, ids, n * sizeof *ids);
    v->len += n;
    return true;
}

void tk_ids_free(tk_ids *v) {
    free(v->p);
    *v = (tk_ids){0};
}

bool tk_pieces_add(tk_pieces *ps, const char *p, size_t n, bool first) {
    if (ps->n == ps->cap) {
        size_t c = ps->cap ? ps->cap * 2 : 64;
        size_t *o = realloc(ps->off, c * sizeof *o);
        if (o) ps->off = o;
        size_t *l = realloc(ps->len, c * sizeof *l);
        if (l) ps->len = l;
        bool *f = realloc(ps->first, c * sizeof *f);
        if (f) ps->first = f;
        if (!o || !l || !f) {
            fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
            return false;
        }
        ps->cap = c;
    }
    ps->off[ps->n] = ps->text.len;
    ps->len[ps->n] = n;
    ps->first[ps->n] = first;
    if (!tk_buf_put(&ps->text, p, n)) return false;
    ps->n++;
    return true;
}

void tk_pieces_clear(tk_pieces *ps) {
    ps->n = 0;
    ps->text.len = 0;
}

void tk_pieces_free(tk_pieces *ps) {
    tk_buf_free(&ps->text);
    free(ps->off), free(ps->len), free(ps->first);
    *ps = (tk_pieces){0};
}
