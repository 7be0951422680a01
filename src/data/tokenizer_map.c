/* Hash maps of the tokenizer: token string -> id, and (left id, right id) -> merge. */
#include "data/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

uint64_t tk_hash_bytes(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* ---- string map ---- */

static bool strmap_rehash(tk_strmap *m, size_t cap) {
    uint32_t *s = calloc(cap, sizeof *s);
    if (!s) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory (hash map of %zu slots)", cap);
        return false;
    }
    for (size_t e = 0; e < m->n; e++) {
        size_t i = m->hash[e] & (cap - 1);
        while (s[i])
            i = (i + 1) & (cap - 1);
        s[i] = (uint32_t)e + 1;
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return true;
}

static size_t strmap_find(const tk_strmap *m, const char *k, size_t n, uint64_t h) {
    size_t i = h & (m->cap - 1);
    for (;;) {
        uint32_t e = m->slots[i];
        if (!e) return i;
        e--;
        if (m->hash[e] == h && m->key_len[e] == n && !memcmp(m->keys.p + m->key_off[e], k, n))
            return i;
        i = (i + 1) & (m->cap - 1);
    }
}

bool tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t v) {
    if (n > UINT32_MAX) return fe_set_error(FE_ERR_RANGE, "tokenizer: token too long"), false;
    if ((m->n + 1) * 2 > m->cap && !strmap_rehash(m, m->cap ? m->cap * 2 : 1024)) return false;
    uint64_t h = tk_hash_bytes(k, n);
    size_t i = strmap_find(m, k, n, h);
    if (m->slots[i]) {
        m->val[m->slots[i] - 1] = v;
        return true;
    }
    if (m->n == m->ncap) {
        size_t c = m->ncap ? m->ncap * 2 : 256;
        size_t *ko = realloc(m->key_off, c * sizeof *ko);
        if (ko) m->key_off = ko;
        uint32_t *kl = realloc(m->key_len, c * sizeof *kl);
        if (kl) m->key_len = kl;
        uint64_t *hs = realloc(m->hash, c * sizeof *hs);
        if (hs) m->hash = hs;
        int32_t *vs = realloc(m->val, c * sizeof *vs);
        if (vs) m->val = vs;
        if (!ko || !kl || !hs || !vs)
            return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
        m->ncap = c;
    }
    m->key_off[m->n] = m->keys.len;
    if (!tk_buf_put(&m->keys, k, n)) return false;
    m->key_len[m->n] = (uint32_t)n;
    m->hash[m->n] = h;
    m->val[m->n] = v;
    m->slots[i] = (uint32_t)++m->n;
    return true;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n) {
    if (!m->cap) return -1;
    size_t i = strmap_find(m, k, n, tk_hash_bytes(k, n));
    return m->slots[i] ? m->val[m->slots[i] - 1] : -1;
}

void tk_strmap_clear(tk_strmap *m) {
    if (m->slots) memset(m->slots, 0, m->cap * sizeof *m->slots);
    m->n = 0;
    m->keys.len = 0;
}

void tk_strmap_free(tk_strmap *m) {
    free(m->slots), free(m->key_off), free(m->key_len), free(m->hash), free(m->val);
    tk_buf_free(&m->keys);
    *m = (tk_strmap){0};
}

/* ---- pair map ---- */

static uint64_t pair_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static bool pairmap_rehash(tk_pairmap *m, size_t cap) {
    uint64_t *k = calloc(cap, sizeof *k);
    int32_t *r = malloc(cap * sizeof *r), *g = malloc(cap * sizeof *g);
    if (!k || !r || !g) {
        free(k), free(r), free(g);
        return fe_set_error(FE_ERR_OOM, "tokenizer: out of memory (merge table)"), false;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->key[j]) continue;
        size_t i = mix64(m->key[j]) & (cap - 1);
        while (k[i])
            i = (i + 1) & (cap - 1);
        k[i] = m->key[j], r[i] = m->rank[j], g[i] = m->merged[j];
    }
    free(m->key), free(m->rank), free(m->merged);
    m->key = k, m->rank = r, m->merged = g, m->cap = cap;
    return true;
}

bool tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    if ((m->n + 1) * 2 > m->cap && !pairmap_rehash(m, m->cap ? m->cap * 2 : 1024)) return false;
    uint64_t key = pair_key(a, b);
    size_t i = mix64(key) & (m->cap - 1);
    while (m->key[i] && m->key[i] != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->key[i]) m->n++;
    m->key[i] = key, m->rank[i] = rank, m->merged[i] = merged;
    return true;
}

bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->cap) return false;
    uint64_t key = pair_key(a, b);
    size_t i = mix64(key) & (m->cap - 1);
    while (m->key[i]) {
        if (m->key[i] == key) {
            *rank = m->rank[i], *merged = m->merged[i];
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return false;
}

void tk_pairmap_free(tk_pairmap *m) {
    free(m->key), free(m->rank), free(m->merged);
    *m = (tk_pairmap){0};
}
