/* The BPE model: one word (a pre-token) -> ids. Each character starts as its own symbol
 * (or its <0xNN> bytes, or unk); then the adjacent pair of lowest merge rank is merged, the
 * leftmost first among equals, until no pair merges -- with a heap of candidate pairs, exactly
 * as Hugging Face `tokenizers` (models/bpe/word.rs) orders them. */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define TK_CACHE_MAX_WORD 256 /* longer words are not cached */
#define TK_CACHE_MAX_ENTRIES 100000

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    size_t len;         /* bytes of the word it covers; 0 once merged into its left neighbour */
} sym;

typedef struct cand {
    int32_t rank, pos, merged;
} cand;

typedef struct word {
    sym *s;
    size_t n, cap;
    cand *h;
    size_t hn, hcap;
} word;

static bool sym_add(word *w, int32_t id, size_t len) {
    if (w->n == w->cap) {
        size_t c = w->cap ? w->cap * 2 : 32;
        sym *q = realloc(w->s, c * sizeof *q);
        if (!q) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
        w->s = q, w->cap = c;
    }
    int32_t i = (int32_t)w->n;
    w->s[i] = (sym){id, i - 1, -1, len};
    if (i > 0) w->s[i - 1].next = i;
    w->n++;
    return true;
}

static bool cand_less(cand a, cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static bool heap_push(word *w, cand c) {
    if (w->hn == w->hcap) {
        size_t cp = w->hcap ? w->hcap * 2 : 32;
        cand *q = realloc(w->h, cp * sizeof *q);
        if (!q) return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
        w->h = q, w->hcap = cp;
    }
    size_t i = w->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, w->h[p])) break;
        w->h[i] = w->h[p];
        i = p;
    }
    w->h[i] = c;
    return true;
}

static cand heap_pop(word *w) {
    cand top = w->h[0], last = w->h[--w->hn];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        cand best = last;
        if (l < w->hn && cand_less(w->h[l], best)) m = l, best = w->h[l];
        if (r < w->hn && cand_less(w->h[r], best)) m = r;
        if (m == i) break;
        w->h[i] = w->h[m];
        i = m;
    }
    if (w->hn) w->h[i] = last;
    return top;
}

static bool merge_all(const fe_tokenizer *t, word *w) {
    int32_t rank, merged;
    for (size_t i = 0; i + 1 < w->n; i++)
        if (tk_pairmap_get(&t->merges, w->s[i].id, w->s[i + 1].id, &rank, &merged) &&
            !heap_push(w, (cand){rank, (int32_t)i, merged}))
            return false;
    while (w->hn) {
        cand top = heap_pop(w);
        sym *cur = &w->s[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int32_t nx = cur->next;
        sym right = w->s[nx];
        /* skip stale candidates: the pair must still merge into the same token */
        if (!tk_pairmap_get(&t->merges, cur->id, right.id, &rank, &merged) || merged != top.merged)
            continue;
        cur->id = top.merged;
        cur->len += right.len;
        cur->next = right.next;
        w->s[nx].len = 0;
        if (right.next >= 0) w->s[right.next].prev = top.pos;
        if (cur->prev >= 0 &&
            tk_pairmap_get(&t->merges, w->s[cur->prev].id, cur->id, &rank, &merged) &&
            !heap_push(w, (cand){rank, cur->prev, merged}))
            return false;
        cur = &w->s[top.pos];
        if (cur->next >= 0 &&
            tk_pairmap_get(&t->merges, cur->id, w->s[cur->next].id, &rank, &merged) &&
            !heap_push(w, (cand){rank, top.pos, merged}))
            return false;
    }
    return true;
}

/* The initial symbols: one per character, with byte fallback and (fused) unk as HF does. */
static bool initial_symbols(const fe_tokenizer *t, const char *s, size_t n, word *w, tk_buf *tmp) {
    int32_t unk = -1;
    size_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        int k = tk_utf8_valid_len((const unsigned char *)s + i, n - i);
        if (!k) k = 1; /* cannot happen for valid input; keep going byte by byte */
        bool is_first = i == 0, is_last = i + (size_t)k == n;
        const char *piece = s + i;
        size_t plen = (size_t)k;
        if ((!is_first && t->cont_prefix) || (is_last && t->eow_suffix)) {
            tmp->len = 0;
            if (!is_first && t->cont_prefix && !tk_buf_put(tmp, t->cont_prefix, t->cont_prefix_len))
                return false;
            if (!tk_buf_put(tmp, s + i, (size_t)k)) return false;
            if (is_last && t->eow_suffix && !tk_buf_put(tmp, t->eow_suffix, t->eow_suffix_len))
                return false;
            piece = tmp->p, plen = tmp->len;
        }
        int32_t id = tk_strmap_get(&t->vocab, piece, plen);
        if (id >= 0) {
            if (unk >= 0 && !sym_add(w, unk, unk_len)) return false;
            unk = -1;
            if (!sym_add(w, id, (size_t)k)) return false;
        } else {
            bool done = false;
            if (t->byte_fallback) {
                bool all = true;
                for (size_t j = 0; j < plen; j++)
                    all = all && t->byte_ids[(uint8_t)piece[j]] >= 0;
                if (all) {
                    for (size_t j = 0; j < plen; j++)
                        if (!sym_add(w, t->byte_ids[(uint8_t)piece[j]], 1)) return false;
                    done = true;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && t->fuse_unk) {
                    unk_len += (size_t)k;
                } else {
                    if (unk >= 0 && !sym_add(w, unk, unk_len)) return false;
                    unk = t->unk_id, unk_len = (size_t)k;
                }
            }
        }
        i += (size_t)k;
    }
    return unk < 0 || sym_add(w, unk, unk_len);
}

bool tk_bpe_word(fe_tokenizer *t, const char *s, size_t n, tk_ids *out) {
    if (!n) return true;
    if (t->ignore_merges) {
        int32_t id = tk_strmap_get(&t->vocab, s, n);
        if (id >= 0) return tk_ids_push(out, id);
    }
    bool cacheable = n <= TK_CACHE_MAX_WORD;
    if (cacheable) {
        int32_t at = tk_strmap_get(&t->cache, s, n);
        if (at >= 0) return tk_ids_put(out, t->cache_ids.p + at + 1, (size_t)t->cache_ids.p[at]);
    }
    word w = {0};
    tk_buf tmp = {0};
    size_t start = out->len;
    bool ok = initial_symbols(t, s, n, &w, &tmp) && merge_all(t, &w);
    for (size_t i = 0; ok && i < w.n; i++)
        if (w.s[i].len) ok = tk_ids_push(out, w.s[i].id);
    free(w.s), free(w.h);
    tk_buf_free(&tmp);
    if (!ok) return false;
    if (cacheable) {
        if (t->cache.n >= TK_CACHE_MAX_ENTRIES) {
            tk_strmap_clear(&t->cache);
            t->cache_ids.len = 0;
        }
        size_t cnt = out->len - start;
        if (t->cache_ids.len + cnt + 1 < INT32_MAX) {
            int32_t at = (int32_t)t->cache_ids.len;
            /* a failed cache insert only costs speed: forget its error */
            if (!tk_ids_push(&t->cache_ids, (int32_t)cnt) ||
                !tk_ids_put(&t->cache_ids, out->p + start, cnt) ||
                !tk_strmap_put(&t->cache, s, n, at))
                fe_clear_error();
        }
    }
    return true;
}
