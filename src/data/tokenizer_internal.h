/* Internals of the tokenizer (src/data/tokenizer*.c). Not installed.
 *
 * The pipeline follows Hugging Face `tokenizers`:
 *   text -> split out added tokens -> normalize each other piece -> pre-tokenize it into
 *   words -> BPE each word -> post-process (template: bos/eos) -> ids
 * and for decoding: ids -> token strings -> decoder chain -> text. */
#ifndef FE_TOKENIZER_INTERNAL_H
#define FE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "ferric/core.h"
#include "ferric/tokenizer.h"

#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable buffers (tokenizer_buf.c) ------------------------------------------------- */

typedef struct tk_buf { /* bytes */
    char *p;
    size_t len, cap;
} tk_buf;

typedef struct tk_ids { /* token ids */
    int32_t *p;
    size_t len, cap;
} tk_ids;

/* A list of strings that live in one byte buffer: piece i is text.p[off[i] .. off[i]+len[i]). */
typedef struct tk_pieces {
    tk_buf text;
    size_t *off, *len;
    bool *first; /* the piece starts the original text (for Metaspace's "first" scheme) */
    size_t n, cap;
} tk_pieces;

bool tk_buf_reserve(tk_buf *b, size_t extra);
bool tk_buf_put(tk_buf *b, const void *p, size_t n);
void tk_buf_free(tk_buf *b);
bool tk_ids_push(tk_ids *v, int32_t id);
bool tk_ids_put(tk_ids *v, const int32_t *ids, size_t n);
void tk_ids_free(tk_ids *v);
bool tk_pieces_add(tk_pieces *ps, const char *p, size_t n, bool first);
void tk_pieces_clear(tk_pieces *ps);
void tk_pieces_free(tk_pieces *ps);

/* ---- hash maps (tokenizer_map.c) ---------------------------------------------------------- */

/* String -> int32 map that owns copies of its keys. */
typedef struct tk_strmap {
    uint32_t *slots; /* entry index + 1, 0 = empty */
    size_t cap;      /* power of two */
    size_t *key_off;
    uint32_t *key_len;
    uint64_t *hash;
    int32_t *val;
    size_t n, ncap;
    tk_buf keys;
} tk_strmap;

/* Inserts or overwrites; false on OOM (error set). */
bool tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t v);
/* The value for the key, or -1 when absent. */
int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n);
void tk_strmap_clear(tk_strmap *m);
void tk_strmap_free(tk_strmap *m);

/* (left id, right id) -> (rank, merged id). */
typedef struct tk_pairmap {
    uint64_t *key; /* (a << 32 | b) + 1, 0 = empty */
    int32_t *rank, *merged;
    size_t cap, n;
} tk_pairmap;

bool tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
/* True when the pair merges; fills rank and merged id. */
bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void tk_pairmap_free(tk_pairmap *m);

uint64_t tk_hash_bytes(const char *p, size_t n);

/* ---- UTF-8 and the byte-level alphabet (tokenizer_bytes.c) -------------------------------- */

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one. */
int tk_utf8_valid_len(const unsigned char *p, size_t n);
/* Code point of a valid sequence of `len` bytes. */
uint32_t tk_utf8_decode(const unsigned char *p, int len);
/* Writes the UTF-8 form of cp into out (4 bytes room); returns its length. */
int tk_utf8_encode(uint32_t cp, char *out);
/* Appends s to out, replacing each maximal invalid subpart with U+FFFD (as Rust's
 * String::from_utf8_lossy and Python's errors="replace" do). */
bool tk_utf8_lossy(tk_buf *out, const char *s, size_t n);
/* True when s is valid UTF-8. */
bool tk_utf8_is_valid(const char *s, size_t n);
/* GPT-2's byte -> printable character map as UTF-8 (1 or 2 bytes, NUL-terminated). */
const char *tk_byte_char(uint8_t b);
/* The byte a code point stands for under GPT-2's map, or -1. */
int tk_char_byte(uint32_t cp);

/* ---- regular expressions (tokenizer_regex.c) ---------------------------------------------- */

typedef struct tk_ranges {
    const uint32_t (*r)[2];
    size_t n;
} tk_ranges;
extern const tk_ranges tk_unicode_space, tk_unicode_letter, tk_unicode_number;
extern const tk_ranges tk_unicode_letter_extra, tk_unicode_number_extra;

typedef struct tk_regex {
    pcre2_code *code;
    pcre2_match_data *md;
    bool jit;
} tk_regex;

/* Compiles an Oniguruma-flavoured pattern (as tokenizer.json holds it) with PCRE2, UTF and UCP
 * on, \s \p{L} \p{N} (and negations) replaced by the reference's Unicode tables. NULL + error. */
tk_regex *tk_regex_compile(const char *pat, size_t n);
/* Iteration over the matches of a regex the way Oniguruma's find_iter does it: empty matches
 * are reported, except one right at the end of the previous match. */
typedef struct tk_regex_iter {
    size_t pos;      /* where the next search starts */
    size_t last_end; /* end of the previous match */
    bool any;        /* a match was reported */
} tk_regex_iter;

/* Next match in s (n bytes, valid UTF-8): 1 with [*ms, *me), 0 at the end, -1 + error when
 * the matcher fails (resource limits). Start with a zeroed iterator. */
int tk_regex_next(tk_regex *re, const char *s, size_t n, tk_regex_iter *it, size_t *ms, size_t *me);
void tk_regex_free(tk_regex *re);

/* ---- normalizers and pre-tokenizers (tokenizer_pretok.c) ---------------------------------- */

typedef enum {
    TK_NORM_PREPEND,
    TK_NORM_REPLACE,    /* literal string pattern */
    TK_NORM_REPLACE_RE, /* regex pattern */
    TK_NORM_STRIP,      /* strip whitespace left/right */
} tk_norm_kind;

typedef struct tk_norm {
    tk_norm_kind kind;
    char *a, *b; /* prepend: a; replace: pattern a -> content b */
    size_t alen, blen;
    tk_regex *re;
    bool left, right;
} tk_norm;

typedef enum {
    TK_SPLIT_ISOLATED,
    TK_SPLIT_REMOVED,
    TK_SPLIT_MERGED_PREV,
    TK_SPLIT_MERGED_NEXT,
    TK_SPLIT_CONTIGUOUS,
} tk_split_behavior;

typedef enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE } tk_pretok_kind;
typedef enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER } tk_prepend_scheme;

typedef struct tk_pretok {
    tk_pretok_kind kind;
    tk_regex *re;  /* Split (pattern), ByteLevel with use_regex (GPT-2's pattern) */
    char *literal; /* Split with a String pattern */
    size_t literal_len;
    tk_split_behavior behavior;
    bool invert;
    bool add_prefix_space; /* ByteLevel */
    char repl[8];          /* Metaspace replacement, UTF-8 */
    size_t repl_len;
    tk_prepend_scheme scheme;
    bool split; /* Metaspace */
} tk_pretok;

/* Applies the normalizers in order to s, result in out (cleared first). */
bool tk_normalize(const tk_norm *ns, int nn, const char *s, size_t n, tk_buf *out);
/* Splits `in` into words with the pre-tokenizers in order; result in out (cleared first). */
bool tk_pretokenize(const tk_pretok *ps, int np, tk_pieces *in, tk_pieces *out);
void tk_norm_free(tk_norm *n);
void tk_pretok_free(tk_pretok *p);
/* GPT-2's pre-tokenizer pattern (ByteLevel's use_regex). */
extern const char tk_gpt2_pattern[];

/* ---- decoders (tokenizer_decode.c) ------------------------------------------------------- */

typedef enum {
    TK_DEC_BYTELEVEL,
    TK_DEC_REPLACE,
    TK_DEC_BYTEFALLBACK,
    TK_DEC_FUSE,
    TK_DEC_STRIP,
    TK_DEC_METASPACE,
} tk_dec_kind;

typedef struct tk_dec {
    tk_dec_kind kind;
    char *a, *b; /* replace: pattern a -> content b; strip: content a (one char) */
    size_t alen, blen;
    int start, stop;          /* strip */
    tk_prepend_scheme scheme; /* metaspace */
} tk_dec;

void tk_dec_free(tk_dec *d);

/* ---- the tokenizer ----------------------------------------------------------------------- */

typedef struct tk_added {
    char *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, normalized, single_word;
} tk_added;

/* Trie over added-token contents, for leftmost-longest matching. */
typedef struct tk_trie_node {
    int32_t child_first; /* index of first edge in edges, -1 none */
    int32_t token;       /* index into added[], -1 when no token ends here */
} tk_trie_node;

typedef struct tk_trie {
    tk_trie_node *nodes;
    size_t nn, ncap;
    /* edges as a linked list per node: byte, target, next sibling */
    uint8_t *eb;
    int32_t *et, *enext;
    size_t ne, ecap;
    bool first[256]; /* bytes that start some token */
    bool any;
} tk_trie;

struct fe_tokenizer {
    /* BPE model */
    tk_strmap vocab;
    tk_pairmap merges;
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    char *cont_prefix, *eow_suffix; /* continuing_subword_prefix, end_of_word_suffix */
    size_t cont_prefix_len, eow_suffix_len;
    int32_t byte_ids[256]; /* <0xNN> tokens, -1 when absent */

    /* id -> token string (model vocabulary, then added tokens on top) */
    char **id_str;
    uint32_t *id_len;
    uint8_t *id_special;
    int32_t n_ids;

    /* added tokens */
    tk_added *added;
    int n_added;
    tk_strmap added_map;         /* content -> index into added[] */
    tk_trie trie_raw, trie_norm; /* non-normalized / normalized contents */

    tk_norm *norms;
    int n_norms;
    tk_pretok *pretoks;
    int n_pretoks;

    /* post-processor (template "single"): ids before and after the sequence */
    tk_ids prefix, suffix;

    tk_dec *decs;
    int n_decs;
    bool has_decoder;

    /* word cache: word -> offset into cache_ids (ids stored as count, ids...) */
    tk_strmap cache;
    tk_ids cache_ids;

    /* scratch */
    tk_buf norm_buf;
    tk_pieces pieces_a, pieces_b;
};

/* An empty tokenizer (all ids -1, no components); NULL + error on OOM. */
fe_tokenizer *tk_new(void);
/* Records token string `s` for id (growing the table); false on OOM. */
bool tk_set_id(fe_tokenizer *t, int32_t id, const char *s, size_t n);
/* Registers an added token (after the vocabulary is loaded); false on error. */
bool tk_add_token(fe_tokenizer *t, const tk_added *a);
/* Adds a merge "a"+"b" with the given rank; false with an error naming the merge when a, b
 * or their concatenation are not in the vocabulary. */
bool tk_add_merge(fe_tokenizer *t, const char *a, size_t an, const char *b, size_t bn,
                  int32_t rank);
/* Fills byte_ids from the vocabulary (call once the vocabulary is complete). */
void tk_find_byte_tokens(fe_tokenizer *t);
/* Builds the added-token tries. */
bool tk_build_tries(fe_tokenizer *t);

/* BPE-encodes one word, appending its ids (tokenizer_bpe.c). */
bool tk_bpe_word(fe_tokenizer *t, const char *w, size_t n, tk_ids *out);

/* Runs the decoder chain over the token strings (tokenizer_decode.c). */
bool tk_decode_tokens(const fe_tokenizer *t, const char **toks, const size_t *lens, size_t n,
                      tk_buf *out);

/* The pieces of a tokenizer.json (tokenizer_json.c). */
fe_tokenizer *tk_load_json_text(const char *json, size_t n);

#endif
