/* Loading tokenizers: Hugging Face tokenizer.json (BPE model, added tokens, normalizer,
 * pre-tokenizer, post-processor, decoder) and GPT-2's encoder.json + vocab.bpe pair. */
#include "data/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FMT(...) (fe_set_error(FE_ERR_FORMAT, "tokenizer.json: " __VA_ARGS__), false)

/* ---- small JSON accessors ---- */

static const cJSON *field(const cJSON *o, const char *k) {
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

static bool is_null(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* A string field: required or optional (*out NULL when absent/null). */
static bool get_str(const cJSON *o, const char *k, bool required, const char *where,
                    const char **out) {
    const cJSON *v = field(o, k);
    *out = NULL;
    if (is_null(v)) return required ? FMT("%s: missing \"%s\"", where, k) : true;
    if (!cJSON_IsString(v)) return FMT("%s: \"%s\" is not a string", where, k);
    *out = v->valuestring;
    return true;
}

static bool get_bool(const cJSON *o, const char *k, bool dflt, const char *where, bool *out) {
    const cJSON *v = field(o, k);
    *out = dflt;
    if (is_null(v)) return true;
    if (!cJSON_IsBool(v)) return FMT("%s: \"%s\" is not true/false", where, k);
    *out = cJSON_IsTrue(v);
    return true;
}

static bool get_int(const cJSON *v, const char *what, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble ||
        v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return FMT("%s is not an integer in [%lld, %lld]", what, (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return true;
}

static char *dup_str(const char *s, size_t *len) {
    size_t n = strlen(s);
    char *c = malloc(n + 1);
    if (!c) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
        return NULL;
    }
    memcpy(c, s, n + 1);
    if (len) *len = n;
    return c;
}

/* A {"String": s} or {"Regex": r} pattern. */
static bool get_pattern(const cJSON *o, const char *where, const char **str, const char **regex) {
    const cJSON *p = field(o, "pattern");
    *str = *regex = NULL;
    if (!cJSON_IsObject(p)) return FMT("%s: missing \"pattern\" object", where);
    const cJSON *s = field(p, "String"), *r = field(p, "Regex");
    if (cJSON_IsString(s))
        *str = s->valuestring;
    else if (cJSON_IsString(r))
        *regex = r->valuestring;
    else
        return FMT("%s: \"pattern\" needs a \"String\" or a \"Regex\"", where);
    return true;
}

static bool get_scheme(const cJSON *o, const char *where, tk_prepend_scheme *out) {
    const char *s;
    bool aps;
    if (!get_str(o, "prepend_scheme", false, where, &s)) return false;
    if (s) {
        if (!strcmp(s, "always"))
            *out = TK_PREPEND_ALWAYS;
        else if (!strcmp(s, "first"))
            *out = TK_PREPEND_FIRST;
        else if (!strcmp(s, "never"))
            *out = TK_PREPEND_NEVER;
        else
            return FMT("%s: unknown prepend_scheme \"%s\"", where, s);
        return true;
    }
    if (!get_bool(o, "add_prefix_space", true, where, &aps)) return false; /* older files */
    *out = aps ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
    return true;
}

static bool get_type(const cJSON *o, const char *where, const char **type) {
    if (!cJSON_IsObject(o)) return FMT("%s is not an object", where);
    return get_str(o, "type", true, where, type);
}

/* ---- normalizers ---- */

static bool add_norm(fe_tokenizer *t, const cJSON *o) {
    const char *type;
    if (!get_type(o, "normalizer", &type)) return false;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = field(o, "normalizers"), *e;
        if (!cJSON_IsArray(arr)) return FMT("normalizer Sequence: \"normalizers\" is not a list");
        cJSON_ArrayForEach(e, arr) if (!add_norm(t, e)) return false;
        return true;
    }
    tk_norm nm = {0};
    if (!strcmp(type, "Prepend")) {
        const char *s;
        if (!get_str(o, "prepend", true, "normalizer Prepend", &s)) return false;
        nm.kind = TK_NORM_PREPEND;
        if (!(nm.a = dup_str(s, &nm.alen))) return false;
    } else if (!strcmp(type, "Replace")) {
        const char *str, *re, *content;
        if (!get_pattern(o, "normalizer Replace", &str, &re) ||
            !get_str(o, "content", true, "normalizer Replace", &content))
            return false;
        if (str && !*str) return FMT("normalizer Replace: empty pattern");
        nm.kind = str ? TK_NORM_REPLACE : TK_NORM_REPLACE_RE;
        if (!(nm.b = dup_str(content, &nm.blen))) return false;
        if (str && !(nm.a = dup_str(str, &nm.alen))) return tk_norm_free(&nm), false;
        if (re && !(nm.re = tk_regex_compile(re, strlen(re)))) return tk_norm_free(&nm), false;
    } else if (!strcmp(type, "Strip")) {
        nm.kind = TK_NORM_STRIP;
        if (!get_bool(o, "strip_left", true, "normalizer Strip", &nm.left) ||
            !get_bool(o, "strip_right", true, "normalizer Strip", &nm.right))
            return false;
    } else {
        return FMT("unsupported normalizer type \"%s\"", type);
    }
    tk_norm *q = realloc(t->norms, (size_t)(t->n_norms + 1) * sizeof *q);
    if (!q) return tk_norm_free(&nm), fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    t->norms = q;
    t->norms[t->n_norms++] = nm;
    return true;
}

/* ---- pre-tokenizers ---- */

static bool add_pretok(fe_tokenizer *t, const cJSON *o) {
    const char *type;
    if (!get_type(o, "pre_tokenizer", &type)) return false;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = field(o, "pretokenizers"), *e;
        if (!cJSON_IsArray(arr))
            return FMT("pre_tokenizer Sequence: \"pretokenizers\" is not a list");
        cJSON_ArrayForEach(e, arr) if (!add_pretok(t, e)) return false;
        return true;
    }
    tk_pretok pt = {0};
    if (!strcmp(type, "Split")) {
        const char *str, *re, *bh;
        if (!get_pattern(o, "pre_tokenizer Split", &str, &re) ||
            !get_str(o, "behavior", true, "pre_tokenizer Split", &bh) ||
            !get_bool(o, "invert", false, "pre_tokenizer Split", &pt.invert))
            return false;
        static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
        int b = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(bh, names[i])) b = i;
        if (b < 0) return FMT("pre_tokenizer Split: unknown behavior \"%s\"", bh);
        pt.kind = TK_PRE_SPLIT;
        pt.behavior = (tk_split_behavior)b;
        if (str && !(pt.literal = dup_str(str, &pt.literal_len))) return false;
        if (re && !(pt.re = tk_regex_compile(re, strlen(re)))) return false;
    } else if (!strcmp(type, "ByteLevel")) {
        bool use_regex;
        pt.kind = TK_PRE_BYTELEVEL;
        if (!get_bool(o, "add_prefix_space", true, "pre_tokenizer ByteLevel",
                      &pt.add_prefix_space) ||
            !get_bool(o, "use_regex", true, "pre_tokenizer ByteLevel", &use_regex))
            return false;
        if (use_regex && !(pt.re = tk_regex_compile(tk_gpt2_pattern, strlen(tk_gpt2_pattern))))
            return false;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r;
        pt.kind = TK_PRE_METASPACE;
        if (!get_str(o, "replacement", true, "pre_tokenizer Metaspace", &r) ||
            !get_scheme(o, "pre_tokenizer Metaspace", &pt.scheme) ||
            !get_bool(o, "split", true, "pre_tokenizer Metaspace", &pt.split))
            return false;
        pt.repl_len = strlen(r);
        if (!pt.repl_len || pt.repl_len > 4 ||
            !tk_utf8_valid_len((const unsigned char *)r, pt.repl_len) ||
            (size_t)tk_utf8_valid_len((const unsigned char *)r, pt.repl_len) != pt.repl_len)
            return FMT("pre_tokenizer Metaspace: \"replacement\" must be one character");
        memcpy(pt.repl, r, pt.repl_len);
    } else {
        return FMT("unsupported pre_tokenizer type \"%s\"", type);
    }
    tk_pretok *q = realloc(t->pretoks, (size_t)(t->n_pretoks + 1) * sizeof *q);
    if (!q) return tk_pretok_free(&pt), fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    t->pretoks = q;
    t->pretoks[t->n_pretoks++] = pt;
    return true;
}

/* ---- post-processors ---- */

static bool special_ids(fe_tokenizer *t, const cJSON *specials, const char *name, tk_ids *out) {
    const cJSON *sp = field(specials, name), *ids = field(sp, "ids"), *e;
    if (!cJSON_IsArray(ids))
        return FMT("post_processor TemplateProcessing: special token \"%s\" has no \"ids\"", name);
    cJSON_ArrayForEach(e, ids) {
        int64_t id;
        if (!get_int(e, "a special token id", 0, INT32_MAX, &id) || !tk_ids_push(out, (int32_t)id))
            return false;
    }
    return true;
}

static bool pair_id(const cJSON *o, const char *k, int32_t *id) {
    const cJSON *p = field(o, k);
    int64_t v;
    if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2)
        return FMT("post_processor: \"%s\" is not a [token, id] pair", k);
    if (!get_int(cJSON_GetArrayItem(p, 1), k, 0, INT32_MAX, &v)) return false;
    *id = (int32_t)v;
    return true;
}

static bool add_post(fe_tokenizer *t, const cJSON *o) {
    const char *type;
    if (!get_type(o, "post_processor", &type)) return false;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = field(o, "processors"), *e;
        if (!cJSON_IsArray(arr))
            return FMT("post_processor Sequence: \"processors\" is not a list");
        cJSON_ArrayForEach(e, arr) if (!add_post(t, e)) return false;
        return true;
    }
    if (!strcmp(type, "ByteLevel")) return true; /* only moves offsets */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = field(o, "single"), *specials = field(o, "special_tokens"), *e;
        if (!cJSON_IsArray(single))
            return FMT("post_processor TemplateProcessing: no \"single\" list");
        bool seen_a = false;
        t->prefix.len = t->suffix.len = 0;
        cJSON_ArrayForEach(e, single) {
            const cJSON *st = field(e, "SpecialToken"), *sq = field(e, "Sequence");
            if (st) {
                const char *id;
                if (!get_str(st, "id", true, "post_processor TemplateProcessing", &id) ||
                    !special_ids(t, specials, id, seen_a ? &t->suffix : &t->prefix))
                    return false;
            } else if (sq) {
                if (seen_a)
                    return FMT("post_processor TemplateProcessing: two sequences in \"single\"");
                seen_a = true;
            } else {
                return FMT("post_processor TemplateProcessing: an item is neither SpecialToken nor "
                           "Sequence");
            }
        }
        if (!seen_a) return FMT("post_processor TemplateProcessing: \"single\" has no sequence");
        return true;
    }
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        int32_t cls, sep;
        if (!pair_id(o, "cls", &cls) || !pair_id(o, "sep", &sep)) return false;
        t->prefix.len = t->suffix.len = 0;
        return tk_ids_push(&t->prefix, cls) && tk_ids_push(&t->suffix, sep);
    }
    return FMT("unsupported post_processor type \"%s\"", type);
}

/* ---- decoders ---- */

static bool add_dec(fe_tokenizer *t, const cJSON *o) {
    const char *type;
    if (!get_type(o, "decoder", &type)) return false;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = field(o, "decoders"), *e;
        if (!cJSON_IsArray(arr)) return FMT("decoder Sequence: \"decoders\" is not a list");
        cJSON_ArrayForEach(e, arr) if (!add_dec(t, e)) return false;
        return true;
    }
    tk_dec d = {0};
    if (!strcmp(type, "ByteLevel")) {
        d.kind = TK_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d.kind = TK_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d.kind = TK_DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const char *str, *re, *content;
        if (!get_pattern(o, "decoder Replace", &str, &re) ||
            !get_str(o, "content", true, "decoder Replace", &content))
            return false;
        if (!str || !*str)
            return FMT("decoder Replace: only non-empty String patterns are supported");
        d.kind = TK_DEC_REPLACE;
        if (!(d.a = dup_str(str, &d.alen))) return false;
        if (!(d.b = dup_str(content, &d.blen))) return tk_dec_free(&d), false;
    } else if (!strcmp(type, "Strip")) {
        const char *c;
        int64_t start, stop;
        if (!get_str(o, "content", true, "decoder Strip", &c)) return false;
        const cJSON *sv = field(o, "start"), *ev = field(o, "stop");
        if (!get_int(sv, "decoder Strip \"start\"", 0, 1 << 20, &start) ||
            !get_int(ev, "decoder Strip \"stop\"", 0, 1 << 20, &stop))
            return false;
        d.kind = TK_DEC_STRIP;
        d.start = (int)start, d.stop = (int)stop;
        if (!(d.a = dup_str(c, &d.alen))) return false;
        if (!d.alen) return tk_dec_free(&d), FMT("decoder Strip: empty \"content\"");
    } else if (!strcmp(type, "Metaspace")) {
        const char *r;
        d.kind = TK_DEC_METASPACE;
        if (!get_str(o, "replacement", true, "decoder Metaspace", &r) ||
            !get_scheme(o, "decoder Metaspace", &d.scheme))
            return false;
        if (!*r) return FMT("decoder Metaspace: empty \"replacement\"");
        if (!(d.a = dup_str(r, &d.alen))) return false;
    } else {
        return FMT("unsupported decoder type \"%s\"", type);
    }
    tk_dec *q = realloc(t->decs, (size_t)(t->n_decs + 1) * sizeof *q);
    if (!q) return tk_dec_free(&d), fe_set_error(FE_ERR_OOM, "tokenizer: out of memory"), false;
    t->decs = q;
    t->decs[t->n_decs++] = d;
    return true;
}

/* ---- the model ---- */

static bool load_vocab(fe_tokenizer *t, const cJSON *vocab, const char *where) {
    if (!cJSON_IsObject(vocab)) return FMT("%s: \"vocab\" is not an object", where);
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int64_t id;
        if (!get_int(e, "a vocabulary id", 0, INT32_MAX - 1, &id)) {
            fe_set_error(FE_ERR_FORMAT,
                         "%s: the id of token \"%.64s\" is not an integer in [0, 2^31)", where,
                         e->string ? e->string : "");
            return false;
        }
        size_t n = strlen(e->string);
        if (!tk_strmap_put(&t->vocab, e->string, n, (int32_t)id) ||
            !tk_set_id(t, (int32_t)id, e->string, n))
            return false;
    }
    return true;
}

static bool load_merges(fe_tokenizer *t, const cJSON *merges) {
    if (!cJSON_IsArray(merges)) return FMT("model: \"merges\" is not a list");
    const cJSON *e;
    int32_t rank = 0;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return FMT("merge %d \"%.64s\" is not \"a b\"", rank, s);
            if (!tk_add_merge(t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank)) return false;
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring,
                       *b = cJSON_GetArrayItem(e, 1)->valuestring;
            if (!tk_add_merge(t, a, strlen(a), b, strlen(b), rank)) return false;
        } else {
            return FMT("merge %d is neither \"a b\" nor [\"a\", \"b\"]", rank);
        }
        rank++;
    }
    return true;
}

static bool load_model(fe_tokenizer *t, const cJSON *m) {
    if (!cJSON_IsObject(m)) return FMT("missing \"model\" object");
    const char *type, *unk, *cp, *ew;
    if (!get_str(m, "type", false, "model", &type)) return false;
    if (type && strcmp(type, "BPE")) return FMT("unsupported model type \"%s\" (only BPE)", type);
    if (!type && !field(m, "merges")) return FMT("model has no \"type\" and no \"merges\"");
    const cJSON *dropout = field(m, "dropout");
    if (!is_null(dropout) && (!cJSON_IsNumber(dropout) || dropout->valuedouble != 0.0))
        return FMT("model: BPE dropout is not supported");
    if (!load_vocab(t, field(m, "vocab"), "model") || !load_merges(t, field(m, "merges")) ||
        !get_str(m, "unk_token", false, "model", &unk) ||
        !get_str(m, "continuing_subword_prefix", false, "model", &cp) ||
        !get_str(m, "end_of_word_suffix", false, "model", &ew) ||
        !get_bool(m, "fuse_unk", false, "model", &t->fuse_unk) ||
        !get_bool(m, "byte_fallback", false, "model", &t->byte_fallback) ||
        !get_bool(m, "ignore_merges", false, "model", &t->ignore_merges))
        return false;
    if (unk) t->unk_id = tk_strmap_get(&t->vocab, unk, strlen(unk));
    if (cp && *cp && !(t->cont_prefix = dup_str(cp, &t->cont_prefix_len))) return false;
    if (ew && *ew && !(t->eow_suffix = dup_str(ew, &t->eow_suffix_len))) return false;
    tk_find_byte_tokens(t);
    return true;
}

static bool load_added(fe_tokenizer *t, const cJSON *arr) {
    if (is_null(arr)) return true;
    if (!cJSON_IsArray(arr)) return FMT("\"added_tokens\" is not a list");
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        tk_added a = {0};
        const char *content;
        int64_t id;
        if (!get_str(e, "content", true, "added token", &content)) return false;
        if (!get_int(field(e, "id"), "added token \"id\"", 0, INT32_MAX - 1, &id)) return false;
        if (!get_bool(e, "special", false, "added token", &a.special) ||
            !get_bool(e, "lstrip", false, "added token", &a.lstrip) ||
            !get_bool(e, "rstrip", false, "added token", &a.rstrip) ||
            !get_bool(e, "single_word", false, "added token", &a.single_word) ||
            !get_bool(e, "normalized", !a.special, "added token", &a.normalized))
            return false;
        a.content = (char *)content;
        a.len = strlen(content);
        a.id = (int32_t)id;
        if (!tk_add_token(t, &a)) return false;
    }
    return tk_build_tries(t);
}

fe_tokenizer *tk_load_json_text(const char *json, size_t n) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, n, &end, false);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        fe_set_error(FE_ERR_FORMAT, "tokenizer.json: not valid JSON (error near byte %zu of %zu)",
                     at, n);
        return NULL;
    }
    fe_tokenizer *t = tk_new();
    bool ok = t != NULL;
    if (ok && !cJSON_IsObject(root)) ok = FMT("the top level is not an object");
    ok = ok && load_model(t, field(root, "model")) && load_added(t, field(root, "added_tokens"));
    const cJSON *nz = field(root, "normalizer"), *pt = field(root, "pre_tokenizer"),
                *pp = field(root, "post_processor"), *dc = field(root, "decoder");
    ok = ok && (is_null(nz) || add_norm(t, nz)) && (is_null(pt) || add_pretok(t, pt)) &&
         (is_null(pp) || add_post(t, pp)) && (is_null(dc) || add_dec(t, dc));
    if (ok) t->has_decoder = !is_null(dc);
    cJSON_Delete(root);
    if (!ok) {
        fe_tokenizer_free(t);
        return NULL;
    }
    return t;
}

fe_tokenizer *fe_tokenizer_from_json(const char *json, size_t n) {
    if (!json) {
        fe_set_error(FE_ERR_ARG, "fe_tokenizer_from_json: NULL text");
        return NULL;
    }
    return tk_load_json_text(json, n);
}

/* ---- files ---- */

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fe_set_error(FE_ERR_IO, "tokenizer: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    tk_buf b = {0};
    char chunk[1 << 16];
    size_t k;
    bool ok = true;
    while (ok && (k = fread(chunk, 1, sizeof chunk, f)) > 0)
        ok = tk_buf_put(&b, chunk, k);
    if (ok && ferror(f)) {
        fe_set_error(FE_ERR_IO, "tokenizer: cannot read %s: %s", path, strerror(errno));
        ok = false;
    }
    fclose(f);
    if (ok && !b.p) ok = tk_buf_put(&b, "", 0);
    if (!ok) {
        tk_buf_free(&b);
        return NULL;
    }
    *n = b.len;
    return b.p;
}

static fe_tokenizer *load_json_file(const char *path) {
    size_t n;
    char *s = read_file(path, &n);
    if (!s) return NULL;
    fe_tokenizer *t = tk_load_json_text(s, n);
    free(s);
    if (!t && fe_last_status() == FE_ERR_FORMAT) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", fe_last_error());
        fe_set_error(FE_ERR_FORMAT, "%s (in %s)", msg, path);
    }
    return t;
}

fe_tokenizer *fe_tokenizer_load_gpt2(const char *encoder_json, const char *vocab_bpe) {
    if (!encoder_json || !vocab_bpe) {
        fe_set_error(FE_ERR_ARG, "fe_tokenizer_load_gpt2: NULL path");
        return NULL;
    }
    size_t en, vn;
    char *es = read_file(encoder_json, &en);
    if (!es) return NULL;
    char *vs = read_file(vocab_bpe, &vn);
    if (!vs) return free(es), NULL;
    fe_tokenizer *t = tk_new();
    bool ok = t != NULL;
    const char *end = NULL;
    cJSON *enc = ok ? cJSON_ParseWithLengthOpts(es, en, &end, false) : NULL;
    if (ok && !enc) {
        fe_set_error(FE_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", encoder_json,
                     end && end >= es ? (size_t)(end - es) : 0);
        ok = false;
    }
    ok = ok && load_vocab(t, enc, encoder_json);
    cJSON_Delete(enc);
    /* vocab.bpe: "#version" line, then one "a b" merge per line */
    int32_t rank = 0;
    for (size_t i = 0; ok && i < vn;) {
        size_t j = i;
        while (j < vn && vs[j] != '\n')
            j++;
        size_t e = j > i && vs[j - 1] == '\r' ? j - 1 : j;
        if (e > i && !(e - i >= 8 && !memcmp(vs + i, "#version", 8))) {
            const char *sp = memchr(vs + i, ' ', e - i);
            if (!sp || memchr(sp + 1, ' ', (size_t)(vs + e - sp - 1))) {
                fe_set_error(FE_ERR_FORMAT, "%s: merge line %d is not \"a b\"", vocab_bpe,
                             rank + 1);
                ok = false;
            } else {
                ok = tk_add_merge(t, vs + i, (size_t)(sp - vs - i), sp + 1,
                                  (size_t)(vs + e - sp - 1), rank++);
            }
        }
        i = j + 1;
    }
    free(es), free(vs);
    tk_pretok pt = {.kind = TK_PRE_BYTELEVEL, .add_prefix_space = false};
    if (ok && !(pt.re = tk_regex_compile(tk_gpt2_pattern, strlen(tk_gpt2_pattern)))) ok = false;
    if (ok && !(t->pretoks = malloc(sizeof *t->pretoks))) {
        tk_pretok_free(&pt);
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
        ok = false;
    }
    if (ok) t->pretoks[t->n_pretoks++] = pt;
    if (ok && !(t->decs = calloc(1, sizeof *t->decs))) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
        ok = false;
    }
    if (ok) t->decs[t->n_decs++] = (tk_dec){.kind = TK_DEC_BYTELEVEL}, t->has_decoder = true;
    int32_t eot = ok ? tk_strmap_get(&t->vocab, "<|endoftext|>", 13) : -1;
    if (eot >= 0) {
        tk_added a = {.content = "<|endoftext|>", .len = 13, .id = eot, .special = true};
        ok = tk_add_token(t, &a) && tk_build_tries(t);
    }
    if (!ok) {
        fe_tokenizer_free(t);
        return NULL;
    }
    return t;
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

fe_tokenizer *fe_tokenizer_load(const char *path) {
    if (!path) {
        fe_set_error(FE_ERR_ARG, "fe_tokenizer_load: NULL path");
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        fe_set_error(FE_ERR_IO, "tokenizer: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) return load_json_file(path);
    size_t n = strlen(path) + 32;
    char *a = malloc(n), *b = malloc(n);
    fe_tokenizer *t = NULL;
    if (!a || !b) {
        fe_set_error(FE_ERR_OOM, "tokenizer: out of memory");
    } else {
        snprintf(a, n, "%s/tokenizer.json", path);
        if (is_file(a)) {
            t = load_json_file(a);
        } else {
            snprintf(a, n, "%s/encoder.json", path);
            snprintf(b, n, "%s/vocab.bpe", path);
            if (is_file(a) && is_file(b))
                t = fe_tokenizer_load_gpt2(a, b);
            else
                fe_set_error(FE_ERR_IO,
                             "tokenizer: %s holds neither tokenizer.json nor "
                             "encoder.json + vocab.bpe",
                             path);
        }
    }
    free(a), free(b);
    return t;
}
