/* The tokenizer pipeline: added tokens, normalizer, pre-tokenizer, BPE, post-processor on the
 * way in; token strings and the decoder chain on the way out. */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

fe_tokenizer *tk_new(void) {
    fe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
        return NULL;
    }
    t->unk_id = -1;
    for (int b = 0; b < 256; b++)
        t->byte_ids[b] = -1;
    return t;
}

static void trie_free(tk_trie *tr) {
    free(tr->nodes), free(tr->eb), free(tr->et), free(tr->enext);
    *tr = (tk_trie){0};
}

void fe_tokenizer_free(fe_tokenizer *t) {
    if (!t) return;
    tk_strmap_free(&t->vocab);
    tk_pairmap_free(&t->merges);
    free(t->cont_prefix), free(t->eow_suffix);
    for (int32_t i = 0; i < t->n_ids; i++)
        free(t->id_str[i]);
    free(t->id_str), free(t->id_len), free(t->id_special);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    tk_strmap_free(&t->added_map);
    trie_free(&t->trie_raw), trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_norms; i++)
        tk_norm_free(&t->norms[i]);
    free(t->norms);
    for (int i = 0; i < t->n_pretoks; i++)
        tk_pretok_free(&t->pretoks[i]);
    free(t->pretoks);
    tk_ids_free(&t->prefix), tk_ids_free(&t->suffix);
    for (int i = 0; i < t->n_decs; i++)
        tk_dec_free(&t->decs[i]);
    free(t->decs);
    tk_strmap_free(&t->cache);
    tk_ids_free(&t->cache_ids);
    tk_buf_free(&t->norm_buf);
    tk_pieces_free(&t->pieces_a), tk_pieces_free(&t->pieces_b);
    free(t);
}

bool tk_set_id(fe_tokenizer *t, int32_t id, const char *s, size_t n) {
    if (id < 0) return fe_set_error(FE_ERR_FORMAT, "tokenizer: negative token id %d", id), false;
    if (id >= t->n_ids) {
        int32_t cap = t->n_ids ? t->n_ids : 1024;
        while (cap <= id)
            cap = cap > INT32_MAX / 2 ? INT32_MAX : cap * 2;
        char **s2 = realloc(t->id_str, (size_t)cap * sizeof *s2);
        if (s2) t->id_str = s2;
        uint32_t *l2 = realloc(t->id_len, (size_t)cap * sizeof *l2);
        if (l2) t->id_len = l2;
        uint8_t *p2 = realloc(t->id_special, (size_t)cap);
        if (p2) t->id_special = p2;
        if (!s2 || !l2 || !p2) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
        for (int32_t i = t->n_ids; i < cap; i++)
            t->id_str[i] = NULL, t->id_len[i] = 0, t->id_special[i] = 0;
        t->n_ids = cap;
    }
    char *c = malloc(n + 1);
    if (!c) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    memcpy(c, s, n);
    c[n] = 0;
    free(t->id_str[id]);
    t->id_str[id] = c;
    t->id_len[id] = (uint32_t)n;
    return true;
}

bool tk_add_token(fe_tokenizer *t, const tk_added *a) {
    if (!a->len) return fe_set_error(FE_ERR_FORMAT, "tokenizer: an added token is empty"), false;
    tk_added *q = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *q);
    if (!q) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    t->added = q;
    tk_added c = *a;
    c.content = malloc(a->len + 1);
    if (!c.content) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    memcpy(c.content, a->content, a->len);
    c.content[a->len] = 0;
    t->added[t->n_added++] = c;
    if (!tk_strmap_put(&t->added_map, c.content, c.len, t->n_added - 1)) return false;
    if (!tk_set_id(t, c.id, c.content, c.len)) return false;
    t->id_special[c.id] = c.special;
    return true;
}

bool tk_add_merge(fe_tokenizer *t, const char *a, size_t an, const char *b, size_t bn,
                  int32_t rank) {
    int32_t ia = tk_strmap_get(&t->vocab, a, an), ib = tk_strmap_get(&t->vocab, b, bn);
    char stackbuf[256];
    char *ab = an + bn <= sizeof stackbuf ? stackbuf : malloc(an + bn);
    if (!ab) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    memcpy(ab, a, an);
    memcpy(ab + an, b, bn);
    int32_t im = tk_strmap_get(&t->vocab, ab, an + bn);
    if (ab != stackbuf) free(ab);
    if (ia < 0 || ib < 0 || im < 0) {
        fe_set_error(FE_ERR_FORMAT,
                     "tokenizer: merge %d (\"%.*s\" \"%.*s\") uses a token that "
                     "is not in the vocabulary",
                     rank, (int)(an > 64 ? 64 : an), a, (int)(bn > 64 ? 64 : bn), b);
        return false;
    }
    return tk_pairmap_put(&t->merges, ia, ib, rank, im);
}

void tk_find_byte_tokens(fe_tokenizer *t) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char s[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
        t->byte_ids[b] = tk_strmap_get(&t->vocab, s, 6);
    }
}

/* ---- added-token tries ---- */

static int32_t trie_node(tk_trie *tr) {
    if (tr->nn == tr->ncap) {
        size_t c = tr->ncap ? tr->ncap * 2 : 64;
        tk_trie_node *q = realloc(tr->nodes, c * sizeof *q);
        if (!q) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), -1;
        tr->nodes = q, tr->ncap = c;
    }
    tr->nodes[tr->nn] = (tk_trie_node){-1, -1};
    return (int32_t)tr->nn++;
}

static int32_t trie_child(const tk_trie *tr, int32_t node, uint8_t b) {
    for (int32_t e = tr->nodes[node].child_first; e >= 0; e = tr->enext[e])
        if (tr->eb[e] == b) return tr->et[e];
    return -1;
}

static bool trie_insert(tk_trie *tr, const char *s, size_t n, int32_t token) {
    if (!tr->nn && trie_node(tr) < 0) return false;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = trie_child(tr, node, b);
        if (c < 0) {
            if ((c = trie_node(tr)) < 0) return false;
            if (tr->ne == tr->ecap) {
                size_t cp = tr->ecap ? tr->ecap * 2 : 64;
                uint8_t *eb = realloc(tr->eb, cp);
                if (eb) tr->eb = eb;
                int32_t *et = realloc(tr->et, cp * sizeof *et);
                if (et) tr->et = et;
                int32_t *en = realloc(tr->enext, cp * sizeof *en);
                if (en) tr->enext = en;
                if (!eb || !et || !en)
                    return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
                tr->ecap = cp;
            }
            size_t e = tr->ne++;
            tr->eb[e] = b, tr->et[e] = c, tr->enext[e] = tr->nodes[node].child_first;
            tr->nodes[node].child_first = (int32_t)e;
        }
        node = c;
    }
    tr->nodes[node].token = token;
    tr->first[(uint8_t)s[0]] = true;
    tr->any = true;
    return true;
}

bool tk_build_tries(fe_tokenizer *t) {
    trie_free(&t->trie_raw), trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        /* a later token with the same content replaces the earlier one */
        if (!trie_insert(a->normalized ? &t->trie_norm : &t->trie_raw, a->content, a->len, i))
            return false;
    }
    return true;
}

/* ---- encoding ---- */

/* Rust's char::is_whitespace for the character ending right before s[i] / starting at s[i]. */
static bool is_space_cp(uint32_t cp) {
    for (size_t r = 0; r < tk_unicode_space.n; r++)
        if (cp >= tk_unicode_space.r[r][0] && cp <= tk_unicode_space.r[r][1]) return true;
    return false;
}

static bool in_ranges(const tk_ranges *r, uint32_t cp) {
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (cp < r->r[m][0])
            hi = m;
        else if (cp > r->r[m][1])
            lo = m + 1;
        else
            return true;
    }
    return false;
}

static bool is_word_cp(uint32_t cp) {
    return in_ranges(&tk_unicode_letter, cp) || in_ranges(&tk_unicode_number, cp);
}

/* The character starting at i (s valid UTF-8), its length in *k. */
static uint32_t cp_at(const char *s, size_t n, size_t i, int *k) {
    *k = tk_utf8_valid_len((const unsigned char *)s + i, n - i);
    if (!*k) return *k = 1, 0xFFFD;
    return tk_utf8_decode((const unsigned char *)s + i, *k);
}

static size_t char_before(const char *s, size_t i) {
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
        j--;
    return j;
}

typedef bool (*tk_piece_fn)(fe_tokenizer *t, const char *s, size_t n, bool first, tk_ids *out);

/* Splits s on the added tokens of trie (leftmost-longest, as the reference's Aho-Corasick
 * automaton does), pushing their ids and handing the text between them to fn. */
static bool split_added(fe_tokenizer *t, const tk_trie *tr, const char *s, size_t n, bool first,
                        tk_piece_fn fn, tk_ids *out) {
    size_t start_offset = 0, pos = 0;
    int k;
    while (tr->any && pos < n) {
        /* find the leftmost position with a match, then the longest match there */
        size_t i = pos;
        int32_t tok = -1;
        size_t end = 0;
        for (; i < n; i++) {
            if (!tr->first[(uint8_t)s[i]]) continue;
            int32_t node = 0;
            for (size_t j = i; j < n; j++) {
                node = trie_child(tr, node, (uint8_t)s[j]);
                if (node < 0) break;
                if (tr->nodes[node].token >= 0) tok = tr->nodes[node].token, end = j + 1;
            }
            if (tok >= 0) break;
        }
        if (tok < 0) break;
        size_t mstart = i, mstop = end;
        pos = end;
        const tk_added *a = &t->added[tok];
        if (a->single_word) {
            bool start_space = mstart == 0 || !is_word_cp(cp_at(s, n, char_before(s, mstart), &k));
            bool stop_space = mstop == n || !is_word_cp(cp_at(s, n, mstop, &k));
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = mstart;
            while (ns > 0) {
                size_t j = char_before(s, ns);
                if (!is_space_cp(cp_at(s, n, j, &k))) break;
                ns = j;
            }
            mstart = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip)
            while (mstop < n && is_space_cp(cp_at(s, n, mstop, &k)))
                mstop += (size_t)k;
        if (mstart > start_offset &&
            !fn(t, s + start_offset, mstart - start_offset, first && start_offset == 0, out))
            return false;
        if (!tk_ids_push(out, a->id)) return false;
        start_offset = mstop;
        if (pos < mstop) pos = mstop;
    }
    if (start_offset < n)
        return fn(t, s + start_offset, n - start_offset, first && start_offset == 0, out);
    return true;
}

/* A normalized piece without added tokens: pre-tokenize and BPE each word. */
static bool encode_words(fe_tokenizer *t, const char *s, size_t n, bool first, tk_ids *out) {
    tk_pieces_clear(&t->pieces_a);
    if (!tk_pieces_add(&t->pieces_a, s, n, first)) return false;
    if (!tk_pretokenize(t->pretoks, t->n_pretoks, &t->pieces_a, &t->pieces_b)) return false;
    const tk_pieces *w = &t->pieces_b;
    for (size_t i = 0; i < w->n; i++)
        if (!tk_bpe_word(t, w->text.p + w->off[i], w->len[i], out)) return false;
    return true;
}

/* A raw piece between non-normalized added tokens: normalize, then split on the normalized
 * added tokens. */
static bool encode_raw_piece(fe_tokenizer *t, const char *s, size_t n, bool first, tk_ids *out) {
    tk_buf norm = {0};
    bool ok =
        tk_normalize(t->norms, t->n_norms, s, n, &norm) &&
        split_added(t, &t->trie_norm, norm.p ? norm.p : "", norm.len, first, encode_words, out);
    tk_buf_free(&norm);
    return ok;
}

fe_status fe_tokenizer_encode(fe_tokenizer *t, const char *text, size_t n, bool add_special,
                              int32_t **ids, size_t *n_ids) {
    if (!t || (!text && n) || !ids || !n_ids)
        return fe_set_error(FE_ERR_ARG, "fe_tokenizer_encode: NULL argument");
    *ids = NULL, *n_ids = 0;
    tk_buf clean = {0};
    if (!tk_utf8_is_valid(text, n)) {
        if (!tk_utf8_lossy(&clean, text, n)) return fe_last_status();
        text = clean.p, n = clean.len;
    }
    tk_ids out = {0};
    bool ok = (!add_special || tk_ids_put(&out, t->prefix.p, t->prefix.len)) &&
              split_added(t, &t->trie_raw, text ? text : "", n, true, encode_raw_piece, &out) &&
              (!add_special || tk_ids_put(&out, t->suffix.p, t->suffix.len));
    tk_buf_free(&clean);
    if (!ok) {
        tk_ids_free(&out);
        return fe_last_status() ? fe_last_status()
                                : fe_set_error(FE_ERR_STATE, "tokenizer: encode failed");
    }
    *ids = out.p, *n_ids = out.len;
    return FE_OK;
}

/* ---- decoding ---- */

fe_status fe_tokenizer_decode(const fe_tokenizer *t, const int32_t *ids, size_t n_ids,
                              bool skip_special, char **text, size_t *len) {
    if (!t || (!ids && n_ids) || !text)
        return fe_set_error(FE_ERR_ARG, "fe_tokenizer_decode: NULL argument");
    *text = NULL;
    if (len) *len = 0;
    const char **toks = malloc((n_ids ? n_ids : 1) * sizeof *toks);
    size_t *lens = malloc((n_ids ? n_ids : 1) * sizeof *lens);
    tk_buf out = {0};
    bool ok = toks && lens;
    if (!ok) fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
    size_t m = 0;
    for (size_t i = 0; ok && i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id]) continue; /* unknown ids are dropped */
        if (skip_special && t->id_special[id]) continue;
        toks[m] = t->id_str[id], lens[m] = t->id_len[id], m++;
    }
    if (ok && t->has_decoder) {
        ok = tk_decode_tokens(t, toks, lens, m, &out);
    } else {
        for (size_t i = 0; ok && i < m; i++)
            ok = (!i || tk_buf_put(&out, " ", 1)) && tk_buf_put(&out, toks[i], lens[i]);
    }
    free(toks), free(lens);
    if (ok && !out.p) ok = tk_buf_put(&out, "", 0);
    if (!ok) {
        tk_buf_free(&out);
        return fe_last_status() ? fe_last_status()
                                : fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
    }
    *text = out.p;
    if (len) *len = out.len;
    return FE_OK;
}

/* ---- queries ---- */

int32_t fe_tokenizer_vocab_size(const fe_tokenizer *t) {
    if (!t) return 0;
    int32_t n = t->n_ids;
    while (n > 0 && !t->id_str[n - 1])
        n--;
    return n;
}

int32_t fe_tokenizer_token_to_id(const fe_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    int32_t a = tk_strmap_get(&t->added_map, token, n);
    if (a >= 0) return t->added[a].id;
    return tk_strmap_get(&t->vocab, token, n);
}

const char *fe_tokenizer_id_to_token(const fe_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return NULL;
    return t->id_str[id];
}

bool fe_tokenizer_is_special(const fe_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->id_special[id];
}
