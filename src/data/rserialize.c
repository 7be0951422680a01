/* A reader of R's XDR serialization format (what saveRDS and lazy-load databases hold).
 *
 * Layout: "X\n", then big-endian int32 format version (2 or 3), the writer's R version and
 * the minimal reader version; version 3 adds the native encoding (int32 length + bytes).
 * Then one item. Every item starts with an int32 of flags: bits 0-7 the type, bit 8 the
 * object bit, bit 9 "has attributes", bit 10 "has tag", bits 12-27 the LEVELS field.
 * Symbols and environments go into a reference table; REFSXP items point back into it.
 * Every length is checked against the bytes left before anything is allocated. */
#include "data/data_internal.h"

#include <stdlib.h>
#include <string.h>

enum {
    SX_REF = 255,
    SX_NIL = 254,
    SX_GLOBALENV = 253,
    SX_UNBOUND = 252,
    SX_MISSINGARG = 251,
    SX_BASENAMESPACE = 250,
    SX_NAMESPACE = 249,
    SX_PACKAGE = 248,
    SX_PERSIST = 247,
    SX_EMPTYENV = 242,
    SX_BASEENV = 241,
    SX_ALTREP = 238,
};

#define FLAG_OBJECT (1u << 8)
#define FLAG_ATTR (1u << 9)
#define FLAG_TAG (1u << 10)
#define MAX_DEPTH 200

/* Objects and their arrays are individually malloc'd and chained for release. */
typedef struct blk {
    struct blk *next;
    max_align_t data[];
} blk;

struct fe_rfile {
    blk *blocks;
    fe_robj *root;
};

typedef struct reader {
    const uint8_t *p;
    size_t n, pos;
    fe_rfile *f;
    fe_robj **refs;
    int64_t nrefs, caprefs;
    bool failed;
} reader;

static void *r_alloc(reader *r, size_t bytes) {
    blk *b = malloc(sizeof(blk) + (bytes ? bytes : 1));
    if (!b) {
        r->failed = true;
        fe_set_error(FE_ERR_OOM, "R data: out of memory (%zu bytes)", bytes);
        return NULL;
    }
    memset(b->data, 0, bytes);
    b->next = r->f->blocks;
    r->f->blocks = b;
    return b->data;
}

static bool fail(reader *r, const char *what) {
    if (!r->failed) fe_set_error(FE_ERR_FORMAT, "R data: %s at byte %zu", what, r->pos);
    r->failed = true;
    return false;
}

static bool need(reader *r, size_t k, const char *what) {
    if (r->n - r->pos < k) {
        char msg[160];
        snprintf(msg, sizeof msg, "truncated input: %s needs %zu bytes, %zu left", what, k,
                 r->n - r->pos);
        return fail(r, msg);
    }
    return true;
}

static bool read_u32(reader *r, uint32_t *v, const char *what) {
    if (!need(r, 4, what)) return false;
    const uint8_t *q = r->p + r->pos;
    *v = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
    r->pos += 4;
    return true;
}

static bool read_i32(reader *r, int32_t *v, const char *what) {
    uint32_t u;
    if (!read_u32(r, &u, what)) return false;
    memcpy(v, &u, 4);
    return true;
}

/* A vector length: an int32, or -1 followed by two int32 halves of a long length.
 * `min_item` is the least bytes one element takes, to refuse impossible lengths early. */
static bool read_length(reader *r, size_t min_item, int64_t *len) {
    int32_t n;
    if (!read_i32(r, &n, "vector length")) return false;
    int64_t L = n;
    if (n == -1) {
        uint32_t hi, lo;
        if (!read_u32(r, &hi, "long vector length") || !read_u32(r, &lo, "long vector length"))
            return false;
        L = (int64_t)((uint64_t)hi << 32 | lo);
    } else if (n < 0) {
        char msg[64];
        snprintf(msg, sizeof msg, "negative vector length %d", n);
        return fail(r, msg);
    }
    if (L < 0 || (min_item && (uint64_t)L > (r->n - r->pos) / min_item)) {
        char msg[128];
        snprintf(msg, sizeof msg, "vector length %lld exceeds the %zu bytes left", (long long)L,
                 r->n - r->pos);
        return fail(r, msg);
    }
    *len = L;
    return true;
}

static bool add_ref(reader *r, fe_robj *o) {
    if (r->nrefs == r->caprefs) {
        int64_t cap = r->caprefs ? r->caprefs * 2 : 64;
        fe_robj **nr = realloc(r->refs, (size_t)cap * sizeof *nr);
        if (!nr) {
            r->failed = true;
            fe_set_error(FE_ERR_OOM, "R data: out of memory (reference table)");
            return false;
        }
        r->refs = nr;
        r->caprefs = cap;
    }
    r->refs[r->nrefs++] = o;
    return true;
}

static fe_robj *new_obj(reader *r, fe_rtype type, uint32_t flags) {
    fe_robj *o = r_alloc(r, sizeof *o);
    if (!o) return NULL;
    o->type = type;
    o->levels = (int)(flags >> 12);
    o->is_object = (flags & FLAG_OBJECT) != 0;
    return o;
}

static fe_robj *read_item(reader *r, int depth);
static fe_robj *read_item_flags(reader *r, uint32_t flags, int depth);

/* A CHARSXP body: length (-1 = NA_STRING) and bytes. */
static fe_robj *read_charsxp(reader *r, uint32_t flags) {
    fe_robj *o = new_obj(r, FE_R_CHAR, flags);
    int32_t len;
    if (!o || !read_i32(r, &len, "string length")) return NULL;
    if (len == -1) {
        o->length = -1;
        return o;
    }
    if (len < 0) {
        fail(r, "negative string length");
        return NULL;
    }
    if (!need(r, (size_t)len, "string bytes")) return NULL;
    o->chars = r_alloc(r, (size_t)len + 1);
    if (!o->chars) return NULL;
    memcpy(o->chars, r->p + r->pos, (size_t)len);
    r->pos += (size_t)len;
    o->length = len;
    return o;
}

/* A pairlist (LISTSXP/LANGSXP), read iteratively along the cdr and flattened. */
static fe_robj *read_pairlist(reader *r, uint32_t flags, int depth) {
    fe_rtype type = (fe_rtype)(flags & 0xff);
    fe_robj *o = new_obj(r, type, flags);
    if (!o) return NULL;
    int64_t cap = 0;
    for (;;) {
        fe_robj *attr = NULL, *tag = NULL, *car;
        if (flags & FLAG_ATTR) {
            attr = read_item(r, depth + 1);
            if (!attr) return NULL;
        }
        if (flags & FLAG_TAG) {
            tag = read_item(r, depth + 1);
            if (!tag) return NULL;
        }
        car = read_item(r, depth + 1);
        if (!car) return NULL;
        if (o->length == 0 && attr && attr->type != FE_R_NULL) o->attrib = attr;
        if (o->length == cap) {
            int64_t nc = cap ? cap * 2 : 4;
            fe_robj **ne = r_alloc(r, (size_t)nc * sizeof *ne);
            fe_robj **nt = r_alloc(r, (size_t)nc * sizeof *nt);
            if (!ne || !nt) return NULL;
            if (cap) { /* the old arrays stay in the block list until the file is freed */
                memcpy(ne, o->elts, (size_t)cap * sizeof *ne);
                memcpy(nt, o->tags, (size_t)cap * sizeof *nt);
            }
            o->elts = ne, o->tags = nt, cap = nc;
        }
        o->elts[o->length] = car;
        o->tags[o->length] = (tag && tag->type == FE_R_SYM) ? tag : NULL;
        o->length++;
        if (!read_u32(r, &flags, "pairlist cdr")) return NULL;
        uint32_t t = flags & 0xff;
        if (t == FE_R_LIST) continue; /* the cells after a call's head are LISTSXP too */
        if (t == SX_NIL) return o;
        char msg[80];
        snprintf(msg, sizeof msg, "pairlist ends in an item of type %u instead of NULL", t);
        fail(r, msg);
        return NULL;
    }
}

static fe_robj *read_vector(reader *r, uint32_t flags, int depth) {
    uint32_t t = flags & 0xff;
    fe_robj *o = new_obj(r, (fe_rtype)t, flags);
    if (!o) return NULL;
    int64_t n;
    switch (t) {
    case FE_R_LGL:
    case FE_R_INT:
        if (!read_length(r, 4, &n)) return NULL;
        o->ints = r_alloc(r, (size_t)n * 4);
        if (!o->ints) return NULL;
        for (int64_t i = 0; i < n; i++)
            read_i32(r, &o->ints[i], "integer");
        break;
    case FE_R_REAL:
        if (!read_length(r, 8, &n)) return NULL;
        o->reals = r_alloc(r, (size_t)n * 8);
        if (!o->reals) return NULL;
        for (int64_t i = 0; i < n; i++) {
            uint32_t hi, lo;
            read_u32(r, &hi, "double");
            read_u32(r, &lo, "double");
            uint64_t bits = (uint64_t)hi << 32 | lo;
            memcpy(&o->reals[i], &bits, 8);
        }
        break;
    case FE_R_RAW:
        if (!read_length(r, 1, &n)) return NULL;
        o->raw = r_alloc(r, (size_t)n);
        if (!o->raw) return NULL;
        memcpy(o->raw, r->p + r->pos, (size_t)n);
        r->pos += (size_t)n;
        break;
    case FE_R_STR:
    case FE_R_VEC:
    case FE_R_EXPR:
        if (!read_length(r, 4, &n)) return NULL;
        o->elts = r_alloc(r, (size_t)n * sizeof *o->elts);
        if (!o->elts) return NULL;
        for (int64_t i = 0; i < n; i++) {
            o->elts[i] = read_item(r, depth + 1);
            if (!o->elts[i]) return NULL;
            if (t == FE_R_STR && o->elts[i]->type != FE_R_CHAR) {
                fail(r, "character vector element is not a string");
                return NULL;
            }
        }
        break;
    default: return NULL;
    }
    o->length = n;
    return o;
}

static fe_robj *read_item(reader *r, int depth) {
    uint32_t flags;
    if (!read_u32(r, &flags, "item flags")) return NULL;
    return read_item_flags(r, flags, depth);
}

static fe_robj *read_item_flags(reader *r, uint32_t flags, int depth) {
    if (depth > MAX_DEPTH) {
        fail(r, "objects nested too deeply");
        return NULL;
    }
    uint32_t t = flags & 0xff;
    fe_robj *o = NULL;
    switch (t) {
    case SX_NIL: return new_obj(r, FE_R_NULL, 0);
    case SX_GLOBALENV:
    case SX_UNBOUND:
    case SX_MISSINGARG:
    case SX_BASENAMESPACE:
    case SX_EMPTYENV:
    case SX_BASEENV:
        o = new_obj(r, FE_R_SPECIAL, 0);
        if (o) o->levels = (int)t;
        return o;
    case SX_REF: {
        int64_t idx = flags >> 8;
        if (idx == 0) {
            int32_t v;
            if (!read_i32(r, &v, "reference index")) return NULL;
            idx = v;
        }
        if (idx < 1 || idx > r->nrefs) {
            char msg[96];
            snprintf(msg, sizeof msg, "reference %lld points outside the %lld objects seen",
                     (long long)idx, (long long)r->nrefs);
            fail(r, msg);
            return NULL;
        }
        return r->refs[idx - 1];
    }
    case FE_R_SYM: {
        fe_robj *name = read_item(r, depth + 1);
        if (!name) return NULL;
        if (name->type != FE_R_CHAR || !name->chars) {
            fail(r, "symbol name is not a string");
            return NULL;
        }
        o = new_obj(r, FE_R_SYM, flags);
        if (!o) return NULL;
        o->chars = name->chars;
        o->length = name->length;
        return add_ref(r, o) ? o : NULL;
    }
    case FE_R_ENV: {
        int32_t locked;
        o = new_obj(r, FE_R_ENV, flags);
        if (!o || !add_ref(r, o) || !read_i32(r, &locked, "environment lock")) return NULL;
        for (int k = 0; k < 3; k++) /* enclosure, frame, hash table: parsed, not kept */
            if (!read_item(r, depth + 1)) return NULL;
        fe_robj *attr = read_item(r, depth + 1);
        if (!attr) return NULL;
        if (attr->type != FE_R_NULL) o->attrib = attr;
        return o;
    }
    case FE_R_LIST:
    case FE_R_LANG: return read_pairlist(r, flags, depth);
    case FE_R_CHAR: return read_charsxp(r, flags);
    case FE_R_LGL:
    case FE_R_INT:
    case FE_R_REAL:
    case FE_R_RAW:
    case FE_R_STR:
    case FE_R_VEC:
    case FE_R_EXPR: o = read_vector(r, flags, depth); break;
    case FE_R_S4: o = new_obj(r, FE_R_S4, flags); break;
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "unsupported object type %u%s", t,
                 t == SX_ALTREP ? " (ALTREP)" : "");
        fail(r, msg);
        return NULL;
    }
    }
    if (!o) return NULL;
    if (flags & FLAG_ATTR) {
        fe_robj *attr = read_item(r, depth + 1);
        if (!attr) return NULL;
        if (attr->type != FE_R_LIST && attr->type != FE_R_NULL) {
            fail(r, "attributes are not a pairlist");
            return NULL;
        }
        if (attr->type == FE_R_LIST) o->attrib = attr;
    }
    return o;
}

fe_rfile *fe_r_unserialize(const void *buf, size_t n) {
    if (!buf && n) {
        fe_set_error(FE_ERR_ARG, "fe_r_unserialize: NULL buffer");
        return NULL;
    }
    fe_rfile *f = calloc(1, sizeof *f);
    if (!f) {
        fe_set_error(FE_ERR_OOM, "R data: out of memory");
        return NULL;
    }
    reader r = {.p = buf, .n = n, .f = f};
    uint32_t version, writer, minimal;
    if (n < 2 || r.p[0] != 'X' || r.p[1] != '\n') {
        if (n >= 2 && (r.p[0] == 'A' || r.p[0] == 'B') && r.p[1] == '\n')
            fail(&r, "ASCII and native-binary serializations are not supported, only XDR");
        else if (n >= 2 && r.p[0] == 0x1f && r.p[1] == 0x8b)
            fail(&r, "input is gzip-compressed; decompress it first (fe_r_read_rds does)");
        else
            fail(&r, "not an XDR serialization (no 'X\\n' header)");
        goto error;
    }
    r.pos = 2;
    if (!read_u32(&r, &version, "format version") || !read_u32(&r, &writer, "writer version") ||
        !read_u32(&r, &minimal, "reader version"))
        goto error;
    if (version != 2 && version != 3) {
        char msg[64];
        snprintf(msg, sizeof msg, "unsupported serialization version %u", version);
        fail(&r, msg);
        goto error;
    }
    if (version == 3) {
        int32_t elen;
        if (!read_i32(&r, &elen, "encoding length")) goto error;
        if (elen < 0 || elen > 255) {
            fail(&r, "bad native-encoding length");
            goto error;
        }
        if (!need(&r, (size_t)elen, "native encoding")) goto error;
        r.pos += (size_t)elen;
    }
    f->root = read_item(&r, 0);
    if (!f->root) goto error;
    if (r.pos != r.n) {
        char msg[80];
        snprintf(msg, sizeof msg, "%zu unexpected bytes after the object", r.n - r.pos);
        fail(&r, msg);
        goto error;
    }
    free(r.refs);
    return f;
error:
    if (!r.failed) fail(&r, "malformed input");
    free(r.refs);
    fe_r_free(f);
    return NULL;
}

const fe_robj *fe_r_root(const fe_rfile *f) { return f ? f->root : NULL; }

void fe_r_free(fe_rfile *f) {
    if (!f) return;
    for (blk *b = f->blocks; b;) {
        blk *next = b->next;
        free(b);
        b = next;
    }
    free(f);
}

fe_rfile *fe_r_read_rds(const char *path) {
    uint8_t *raw = NULL, *plain = NULL;
    size_t n = 0, pn = 0;
    if (fe__read_file(path, &raw, &n)) return NULL;
    fe_rfile *f = NULL;
    if (n >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        if (!fe__inflate(raw, n, 0, (size_t)1 << 32, &plain, &pn)) f = fe_r_unserialize(plain, pn);
    } else {
        f = fe_r_unserialize(raw, n);
    }
    if (!f) fe__error_prefix(path);
    free(raw);
    free(plain);
    return f;
}

const fe_robj *fe_r_attr(const fe_robj *o, const char *name) {
    if (!o || !name || !o->attrib) return NULL;
    const fe_robj *a = o->attrib;
    for (int64_t i = 0; i < a->length; i++)
        if (a->tags[i] && !strcmp(a->tags[i]->chars, name)) return a->elts[i];
    return NULL;
}

const char *fe_r_str(const fe_robj *o, int64_t i) {
    if (!o || o->type != FE_R_STR || i < 0 || i >= o->length) return NULL;
    return o->elts[i]->chars;
}

const fe_robj *fe_r_get(const fe_robj *o, const char *name) {
    if (!o || !name) return NULL;
    if (o->type == FE_R_LIST || o->type == FE_R_LANG) {
        for (int64_t i = 0; i < o->length; i++)
            if (o->tags[i] && !strcmp(o->tags[i]->chars, name)) return o->elts[i];
        return NULL;
    }
    if (o->type != FE_R_VEC && o->type != FE_R_EXPR && o->type != FE_R_STR) return NULL;
    const fe_robj *names = fe_r_attr(o, "names");
    if (!names || names->type != FE_R_STR) return NULL;
    for (int64_t i = 0; i < names->length && i < o->length; i++) {
        const char *s = fe_r_str(names, i);
        if (s && !strcmp(s, name)) return o->elts[i];
    }
    return NULL;
}
