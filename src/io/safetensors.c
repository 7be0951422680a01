/* safetensors: a strict reader over a memory-mapped file, and an atomic writer.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "value"}}, then the data area; offsets count from its start. */
#include "core/internal.h"
#include "ferric/io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

#define ST_MAX_HEADER 100000000ull    /* the reference implementation's limit */
#define ST_MAX_INT 9007199254740992.0 /* 2^53: larger JSON numbers are not exact doubles */

/* ---- dtypes ------------------------------------------------------------------ */

static const struct {
    const char *name;
    unsigned size;
    bool has_fe;
    fe_dtype dt;
} k_st_dtypes[] = {
    {"F64", 8, true, FE_F64},   {"F32", 4, true, FE_F32},      {"F16", 2, true, FE_F16},
    {"BF16", 2, true, FE_BF16}, {"I64", 8, true, FE_I64},      {"I32", 4, true, FE_I32},
    {"I16", 2, false, FE_F32},  {"I8", 1, true, FE_I8},        {"U8", 1, true, FE_U8},
    {"BOOL", 1, true, FE_U8},   {"U16", 2, false, FE_F32},     {"U32", 4, false, FE_F32},
    {"U64", 8, false, FE_F32},  {"F8_E4M3", 1, false, FE_F32}, {"F8_E5M2", 1, false, FE_F32},
};
#define ST_NDTYPES ((int)(sizeof k_st_dtypes / sizeof *k_st_dtypes))

static int st_dtype_find(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(s, k_st_dtypes[i].name)) return i;
    return -1;
}

static const char *st_dtype_of_fe(fe_dtype dt) {
    switch (dt) {
    case FE_F32: return "F32";
    case FE_F64: return "F64";
    case FE_F16: return "F16";
    case FE_BF16: return "BF16";
    case FE_I32: return "I32";
    case FE_I64: return "I64";
    case FE_U8: return "U8";
    case FE_I8: return "I8";
    default: return NULL;
    }
}

/* ---- the handle -------------------------------------------------------------- */

struct fe_safetensors {
    const uint8_t *base; /* the whole file */
    size_t size;
    bool mapped;         /* base is our mmap */
    const uint8_t *data; /* the data area */
    uint64_t data_size;
    int64_t n;
    fe_st_info *t;    /* header order */
    int64_t *by_name; /* indices sorted by name */
    int64_t n_meta;
    char **meta_key, **meta_val;
};

void fe_safetensors_close(fe_safetensors *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->n; i++)
        free((char *)f->t[i].name);
    for (int64_t i = 0; i < f->n_meta; i++)
        free(f->meta_key[i]), free(f->meta_val[i]);
    free(f->t);
    free(f->by_name);
    free(f->meta_key);
    free(f->meta_val);
    if (f->mapped && f->base) munmap((void *)f->base, f->size);
    free(f);
}

/* A JSON number that is a non-negative integer exactly representable as a double. */
static bool json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    if (!isfinite(v) || v < 0 || v > ST_MAX_INT || floor(v) != v) return false;
    *out = (uint64_t)v;
    return true;
}

/* qsort_r comparators (GNU): ctx is the handle */
static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const fe_safetensors *f = ctx;
    return strcmp(f->t[*(const int64_t *)a].name, f->t[*(const int64_t *)b].name);
}

static int cmp_by_offset(const void *a, const void *b, void *ctx) {
    const fe_safetensors *f = ctx;
    const fe_st_info *x = &f->t[*(const int64_t *)a], *y = &f->t[*(const int64_t *)b];
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static fe_status bad(const char *what, const char *fmt, const char *name) {
    return fe_set_error(FE_ERR_FORMAT, "safetensors: %s: tensor '%s' %s", what, name, fmt);
}

/* Fill one fe_st_info from a header entry. */
static fe_status parse_entry(const cJSON *e, fe_st_info *ti, uint64_t data_size) {
    const char *name = ti->name;
    if (!cJSON_IsObject(e)) return bad("bad entry", "is not a JSON object", name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!jd) return bad("missing dtype", "has no \"dtype\"", name);
    if (!js) return bad("missing shape", "has no \"shape\"", name);
    if (!jo) return bad("missing data_offsets", "has no \"data_offsets\"", name);
    if (!cJSON_IsString(jd)) return bad("bad dtype", "has a dtype that is not a string", name);
    int k = st_dtype_find(jd->valuestring);
    if (k < 0)
        return fe_set_error(FE_ERR_FORMAT, "safetensors: unknown dtype '%.32s' of tensor '%s'",
                            jd->valuestring, name);
    ti->dtype_name = k_st_dtypes[k].name;
    ti->has_fe_dtype = k_st_dtypes[k].has_fe;
    ti->dtype = k_st_dtypes[k].dt;
    if (!cJSON_IsArray(js)) return bad("bad shape", "has a shape that is not a list", name);
    int nd = cJSON_GetArraySize(js);
    if (nd > FE_MAX_DIMS)
        return fe_set_error(
            FE_ERR_FORMAT,
            "safetensors: bad shape: tensor '%s' has rank %d, ferric holds at most %d", name, nd,
            FE_MAX_DIMS);
    ti->ndim = nd;
    uint64_t numel = 1;
    bool overflow = false;
    int d = 0;
    for (const cJSON *x = js->child; x; x = x->next, d++) {
        uint64_t v;
        if (!json_uint(x, &v))
            return bad("bad shape", "has a shape entry that is not a non-negative integer", name);
        ti->shape[d] = (int64_t)v;
        if (v && numel > UINT64_MAX / v)
            overflow = true;
        else
            numel *= v;
    }
    unsigned esz = k_st_dtypes[k].size;
    if (overflow || numel > UINT64_MAX / esz)
        return bad("bad shape", "has a shape too large to address", name);
    ti->numel = (int64_t)numel;
    ti->nbytes = numel * esz;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return bad("bad data_offsets", "has data_offsets that are not a [begin, end] pair", name);
    uint64_t b, en;
    if (!json_uint(jo->child, &b) || !json_uint(jo->child->next, &en))
        return bad("bad data_offsets", "has data_offsets that are not non-negative integers", name);
    if (en < b)
        return fe_set_error(FE_ERR_FORMAT,
                            "safetensors: bad data_offsets: tensor '%s' ends (%" PRIu64
                            ") before it begins (%" PRIu64 ")",
                            name, en, b);
    if (en > data_size)
        return fe_set_error(FE_ERR_FORMAT,
                            "safetensors: data_offsets out of range: tensor '%s' ends at %" PRIu64
                            " but the data area holds %" PRIu64 " bytes",
                            name, en, data_size);
    if (en - b != ti->nbytes)
        return fe_set_error(
            FE_ERR_FORMAT,
            "safetensors: size mismatch: tensor '%s' of shape and dtype %s needs %" PRIu64
            " bytes but data_offsets span %" PRIu64,
            name, ti->dtype_name, ti->nbytes, en - b);
    ti->offset = b;
    return FE_OK;
}

static fe_status parse_metadata(fe_safetensors *f, const cJSON *m) {
    if (cJSON_IsNull(m)) return FE_OK;
    if (!cJSON_IsObject(m))
        return fe_set_error(FE_ERR_FORMAT, "safetensors: __metadata__ is not a JSON object");
    int n = cJSON_GetArraySize(m);
    f->meta_key = calloc((size_t)n + 1, sizeof *f->meta_key);
    f->meta_val = calloc((size_t)n + 1, sizeof *f->meta_val);
    if (!f->meta_key || !f->meta_val)
        return fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
    for (const cJSON *x = m->child; x; x = x->next) {
        if (!cJSON_IsString(x))
            return fe_set_error(FE_ERR_FORMAT,
                                "safetensors: __metadata__ value of '%s' is not a string",
                                x->string);
        f->meta_key[f->n_meta] = strdup(x->string);
        f->meta_val[f->n_meta] = strdup(x->valuestring);
        f->n_meta++;
        if (!f->meta_key[f->n_meta - 1] || !f->meta_val[f->n_meta - 1])
            return fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
    }
    return FE_OK;
}

/* True when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
static bool utf8_ok(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return false;
        }
        if (i + k >= n) return false; /* truncated sequence */
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xbf) return false;
        i += k + 1;
    }
    return true;
}

/* Validate the header of f->base[0..size) and fill f. */
static fe_status parse(fe_safetensors *f) {
    if (f->size < 8)
        return fe_set_error(
            FE_ERR_FORMAT,
            "safetensors: truncated file: %zu bytes, too short for the 8-byte header length",
            f->size);
    uint64_t hlen;
    memcpy(&hlen, f->base, 8);
    if (hlen > ST_MAX_HEADER)
        return fe_set_error(
            FE_ERR_FORMAT, "safetensors: header length %" PRIu64 " exceeds the 100 MB limit", hlen);
    if (hlen > f->size - 8)
        return fe_set_error(FE_ERR_FORMAT,
                            "safetensors: header length %" PRIu64
                            " runs past the end of the file (%zu bytes)",
                            hlen, f->size);
    if (hlen < 2)
        return fe_set_error(FE_ERR_FORMAT, "safetensors: header is not JSON (%" PRIu64 " bytes)",
                            hlen);
    const char *h = (const char *)f->base + 8;
    f->data = f->base + 8 + hlen;
    f->data_size = f->size - 8 - hlen;
    if (!utf8_ok((const unsigned char *)h, (size_t)hlen))
        return fe_set_error(FE_ERR_FORMAT, "safetensors: header is not valid UTF-8");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, false);
    if (!root) {
        size_t at = end && end >= h && end <= h + hlen ? (size_t)(end - h) : 0;
        return fe_set_error(FE_ERR_FORMAT,
                            "safetensors: header is not valid JSON (error near byte %zu)", at);
    }
    fe_status st = FE_OK;
    for (const char *p = end; p < h + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = fe_set_error(
                FE_ERR_FORMAT,
                "safetensors: header is not valid JSON (trailing bytes after the object)");
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        st =
            fe_set_error(FE_ERR_FORMAT,
                         "safetensors: header is not valid JSON object (it is another JSON value)");
        goto done;
    }
    int64_t cap = cJSON_GetArraySize(root);
    f->t = calloc((size_t)cap + 1, sizeof *f->t);
    f->by_name = calloc((size_t)cap + 1, sizeof *f->by_name);
    if (!f->t || !f->by_name) {
        st = fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
        goto done;
    }
    bool seen_meta = false;
    for (const cJSON *e = root->child; e && !st; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (seen_meta)
                st = fe_set_error(FE_ERR_FORMAT, "safetensors: duplicate __metadata__");
            else
                st = parse_metadata(f, e);
            seen_meta = true;
            continue;
        }
        fe_st_info *ti = &f->t[f->n];
        ti->name = strdup(e->string);
        if (!ti->name) {
            st = fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
            break;
        }
        f->n++;
        st = parse_entry(e, ti, f->data_size);
    }
    if (st) goto done;
    /* names must be unique; ranges must not overlap (empty ranges overlap nothing) */
    for (int64_t i = 0; i < f->n; i++)
        f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_by_name, f);
    for (int64_t i = 1; i < f->n; i++)
        if (!strcmp(f->t[f->by_name[i]].name, f->t[f->by_name[i - 1]].name)) {
            st = fe_set_error(FE_ERR_FORMAT, "safetensors: duplicate tensor name '%s'",
                              f->t[f->by_name[i]].name);
            goto done;
        }
    int64_t *ord = malloc(((size_t)f->n + 1) * sizeof *ord);
    if (!ord) {
        st = fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
        goto done;
    }
    int64_t m = 0;
    for (int64_t i = 0; i < f->n; i++)
        if (f->t[i].nbytes) ord[m++] = i;
    qsort_r(ord, (size_t)m, sizeof *ord, cmp_by_offset, f);
    for (int64_t i = 1; i < m && !st; i++) {
        const fe_st_info *a = &f->t[ord[i - 1]], *b = &f->t[ord[i]];
        if (b->offset < a->offset + a->nbytes)
            st = fe_set_error(FE_ERR_FORMAT,
                              "safetensors: overlapping data_offsets: tensors '%s' [%" PRIu64
                              ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64 ")",
                              a->name, a->offset, a->offset + a->nbytes, b->name, b->offset,
                              b->offset + b->nbytes);
    }
    free(ord);
done:
    cJSON_Delete(root);
    return st;
}

fe_safetensors *fe_safetensors_open_memory(const void *data, size_t size) {
    if (!data && size) {
        fe_set_error(FE_ERR_ARG, "fe_safetensors_open_memory: data is NULL");
        return NULL;
    }
    fe_safetensors *f = calloc(1, sizeof *f);
    if (!f) {
        fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
        return NULL;
    }
    static const uint8_t empty[1];
    f->base = data ? data : empty;
    f->size = size;
    if (parse(f) != FE_OK) {
        fe_safetensors_close(f);
        return NULL;
    }
    return f;
}

fe_safetensors *fe_safetensors_open(const char *path) {
    if (!path) {
        fe_set_error(FE_ERR_ARG, "fe_safetensors_open: path is NULL");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fe_set_error(FE_ERR_IO, "safetensors: cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fe_set_error(FE_ERR_IO, "safetensors: '%s' is not a regular file", path);
        close(fd);
        return NULL;
    }
    fe_safetensors *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        fe_set_error(FE_ERR_OOM, "safetensors: out of host memory");
        return NULL;
    }
    f->size = (size_t)sb.st_size;
    static const uint8_t empty[1];
    f->base = empty;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            fe_set_error(FE_ERR_IO, "safetensors: cannot map '%s': %s", path, strerror(errno));
            close(fd);
            free(f);
            return NULL;
        }
        f->base = p;
        f->mapped = true;
    }
    close(fd);
    if (parse(f) != FE_OK) {
        /* prefix the file name to the message */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", fe_last_error());
        fe_set_error(fe_last_status(), "%s (in '%s')", msg, path);
        fe_safetensors_close(f);
        return NULL;
    }
    return f;
}

/* ---- queries ------------------------------------------------------------------ */

int64_t fe_safetensors_count(const fe_safetensors *f) { return f ? f->n : 0; }

const char *fe_safetensors_name(const fe_safetensors *f, int64_t i) {
    return f && i >= 0 && i < f->n ? f->t[i].name : NULL;
}

int64_t fe_safetensors_find(const fe_safetensors *f, const char *name) {
    if (!f || !name) return -1;
    int64_t lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t[f->by_name[mid]].name);
        if (!c) return f->by_name[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

static const fe_st_info *lookup(const fe_safetensors *f, const char *name, const char *op) {
    if (fe__any_null(op, 2, f, name)) return NULL;
    int64_t i = fe_safetensors_find(f, name);
    if (i < 0) {
        fe_set_error(FE_ERR_ARG, "%s: no tensor named '%s'", op, name);
        return NULL;
    }
    return &f->t[i];
}

fe_status fe_safetensors_info(const fe_safetensors *f, const char *name, fe_st_info *out) {
    const fe_st_info *ti = lookup(f, name, "fe_safetensors_info");
    if (!ti) return fe_last_status();
    if (out) *out = *ti;
    return FE_OK;
}

const void *fe_safetensors_raw(const fe_safetensors *f, const char *name, size_t *nbytes) {
    const fe_st_info *ti = lookup(f, name, "fe_safetensors_raw");
    if (!ti) return NULL;
    if (nbytes) *nbytes = (size_t)ti->nbytes;
    return f->data + ti->offset;
}

int64_t fe_safetensors_metadata_count(const fe_safetensors *f) { return f ? f->n_meta : 0; }

const char *fe_safetensors_metadata_key(const fe_safetensors *f, int64_t i) {
    return f && i >= 0 && i < f->n_meta ? f->meta_key[i] : NULL;
}

const char *fe_safetensors_metadata(const fe_safetensors *f, const char *key) {
    if (!f || !key) return NULL;
    for (int64_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_key[i], key)) return f->meta_val[i];
    return NULL;
}

/* ---- loading -------------------------------------------------------------------- */

static fe_tensor *load(const fe_safetensors *f, const char *name, bool cast, fe_dtype dt,
                       fe_device dev, const char *op) {
    const fe_st_info *ti = lookup(f, name, op);
    if (!ti) return NULL;
    if (!ti->has_fe_dtype) {
        fe_set_error(FE_ERR_DTYPE,
                     "%s: unsupported dtype %s of tensor '%s' (ferric has no such dtype)", op,
                     ti->dtype_name, name);
        return NULL;
    }
    if (!cast) dt = ti->dtype;
    if ((unsigned)dt >= FE_DTYPE_COUNT) {
        fe_set_error(FE_ERR_DTYPE, "%s: unknown target dtype %d", op, (int)dt);
        return NULL;
    }
    /* copy the bytes into an aligned host tensor of the file's dtype (the mapping may
     * not be aligned for the element type), then cast / move as asked */
    if (ti->numel == 0) /* nothing to copy (and the core's kernels dislike NULL data) */
        return fe_empty(ti->ndim, ti->shape, dt, dev);
    fe_tensor *h = fe_empty(ti->ndim, ti->shape, ti->dtype, FE_DEVICE_CPU);
    if (!h) return NULL;
    memcpy(fe_data(h), f->data + ti->offset, (size_t)ti->nbytes);
    if (dev.type == FE_CPU && dt == ti->dtype) return h;
    fe_tensor *o = fe_empty(ti->ndim, ti->shape, dt, dev);
    if (o && fe_copy_(o, h) != FE_OK) {
        fe_free(o);
        o = NULL;
    }
    fe_free(h);
    return o;
}

fe_tensor *fe_safetensors_load(const fe_safetensors *f, const char *name, fe_device dev) {
    return load(f, name, false, FE_F32, dev, "fe_safetensors_load");
}

fe_tensor *fe_safetensors_load_as(const fe_safetensors *f, const char *name, fe_dtype dt,
                                  fe_device dev) {
    return load(f, name, true, dt, dev, "fe_safetensors_load_as");
}

/* ---- writing ---------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0) sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* A JSON string literal. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_str(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            sb_str(b, "\\\"");
        else if (*p == '\\')
            sb_str(b, "\\\\");
        else if (*p < 0x20)
            sb_fmt(b, "\\u%04x", *p);
        else
            sb_put(b, (const char *)p, 1);
    }
    sb_str(b, "\"");
}

static int cmp_write_order(const void *a, const void *b, void *ctx) {
    const fe_named_tensor *ts = ctx;
    const fe_named_tensor *x = &ts[*(const int64_t *)a], *y = &ts[*(const int64_t *)b];
    size_t sx = fe_dtype_size(fe_dtype_of(x->tensor)), sy = fe_dtype_size(fe_dtype_of(y->tensor));
    if (sx != sy) return sx > sy ? -1 : 1; /* widest first keeps every tensor aligned */
    return strcmp(x->name, y->name);
}

static int cmp_name_only(const void *a, const void *b, void *ctx) {
    const fe_named_tensor *ts = ctx;
    return strcmp(ts[*(const int64_t *)a].name, ts[*(const int64_t *)b].name);
}

fe_status fe_safetensors_save(const char *path, const fe_named_tensor *tensors, int64_t n,
                              const fe_kv *meta, int64_t n_meta) {
    if (!path) return fe_set_error(FE_ERR_ARG, "fe_safetensors_save: path is NULL");
    if (n < 0 || (n > 0 && !tensors) || n_meta < 0 || (n_meta > 0 && !meta))
        return fe_set_error(FE_ERR_ARG, "fe_safetensors_save: bad tensor or metadata list");
    for (int64_t i = 0; i < n; i++) {
        const char *nm = tensors[i].name;
        if (!nm || !*nm)
            return fe_set_error(FE_ERR_ARG,
                                "fe_safetensors_save: tensor %" PRId64 " has an empty name", i);
        if (!strcmp(nm, "__metadata__"))
            return fe_set_error(FE_ERR_ARG, "fe_safetensors_save: '__metadata__' is reserved");
        if (!tensors[i].tensor)
            return fe_set_error(FE_ERR_ARG, "fe_safetensors_save: tensor '%s' is NULL", nm);
        if (!st_dtype_of_fe(fe_dtype_of(tensors[i].tensor)))
            return fe_set_error(FE_ERR_DTYPE,
                                "fe_safetensors_save: tensor '%s' has an unknown dtype", nm);
    }
    for (int64_t i = 0; i < n_meta; i++)
        if (!meta[i].key || !meta[i].value)
            return fe_set_error(FE_ERR_ARG,
                                "fe_safetensors_save: metadata entry %" PRId64 " is NULL", i);
    int64_t *ord = malloc(((size_t)n + 1) * sizeof *ord);
    if (!ord) return fe_set_error(FE_ERR_OOM, "fe_safetensors_save: out of host memory");
    for (int64_t i = 0; i < n; i++)
        ord[i] = i;
    qsort_r(ord, (size_t)n, sizeof *ord, cmp_name_only, (void *)tensors);
    for (int64_t i = 1; i < n; i++)
        if (!strcmp(tensors[ord[i]].name, tensors[ord[i - 1]].name)) {
            const char *dup = tensors[ord[i]].name;
            free(ord);
            return fe_set_error(FE_ERR_ARG, "fe_safetensors_save: duplicate tensor name '%s'", dup);
        }
    qsort_r(ord, (size_t)n, sizeof *ord, cmp_write_order, (void *)tensors);

    /* the header */
    sbuf h = {0};
    sb_str(&h, "{");
    bool first = true;
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int64_t i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_string(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_string(&h, meta[i].value);
        }
        sb_str(&h, "}");
        first = false;
    }
    uint64_t off = 0;
    for (int64_t k = 0; k < n; k++) {
        const fe_tensor *t = tensors[ord[k]].tensor;
        uint64_t nb = (uint64_t)fe_numel(t) * fe_dtype_size(fe_dtype_of(t));
        if (!first) sb_str(&h, ",");
        first = false;
        sb_json_string(&h, tensors[ord[k]].name);
        sb_fmt(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_of_fe(fe_dtype_of(t)));
        for (int d = 0; d < fe_ndim(t); d++)
            sb_fmt(&h, d ? ",%" PRId64 : "%" PRId64, fe_shape(t)[d]);
        sb_fmt(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + nb);
        off += nb;
    }
    sb_str(&h, "}");
    while (!h.oom && h.n % 8)
        sb_str(&h, " ");
    if (h.oom) {
        free(h.p);
        free(ord);
        return fe_set_error(FE_ERR_OOM, "fe_safetensors_save: out of host memory");
    }

    fe_atomic_file *af = fe_atomic_open(path);
    fe_status st = af ? FE_OK : fe_last_status();
    uint64_t hlen = h.n;
    if (!st) st = fe_atomic_write(af, &hlen, 8);
    if (!st) st = fe_atomic_write(af, h.p, h.n);
    free(h.p);
    for (int64_t k = 0; k < n && !st; k++) {
        const fe_tensor *t = tensors[ord[k]].tensor;
        size_t nb = (size_t)fe_numel(t) * fe_dtype_size(fe_dtype_of(t));
        if (!nb) continue;
        if (fe_device_of(t).type == FE_CPU && fe_is_contiguous(t)) {
            st = fe_atomic_write(af, fe_data(t), nb);
        } else {
            void *buf = malloc(nb);
            if (!buf) st = fe_set_error(FE_ERR_OOM, "fe_safetensors_save: out of host memory");
            if (!st) st = fe_to_host(t, buf, fe_dtype_of(t));
            if (!st) st = fe_atomic_write(af, buf, nb);
            free(buf);
        }
    }
    free(ord);
    if (st) {
        fe_atomic_abort(af);
        return st;
    }
    return fe_atomic_commit(af);
}
