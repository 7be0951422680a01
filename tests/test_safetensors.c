/* safetensors: round trips for every dtype, strict refusal of bad files, atomic writes,
 * sharded models. */
#include "ferric/io.h"
#include "test.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static char g_dir[256];

/* A fresh empty temporary folder for this case. */
static const char *tmpdir(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fe_st_test_XXXXXX");
    if (!mkdtemp(g_dir)) return NULL;
    return g_dir;
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static const char *path_in(const char *dir, const char *name) {
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

/* Write 8-byte length + header text + n_data bytes (0, 1, 2, ...) to path. */
static void write_raw_len(const char *path, uint64_t hlen, const char *header, size_t n_data) {
    FILE *f = fopen(path, "wb");
    fwrite(&hlen, 8, 1, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < n_data; i++)
        fputc((int)(i & 0xff), f);
    fclose(f);
}

static void write_raw(const char *path, const char *header, size_t n_data) {
    write_raw_len(path, strlen(header), header, n_data);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* A tensor of dtype dt with distinct, exactly representable values i * 0.5 - 3 (ints: i - 3). */
static fe_tensor *pattern(int nd, const int64_t *shape, fe_dtype dt) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= shape[i];
    double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = fe_dtype_is_float(dt) ? (double)i * 0.5 - 3
                                     : (double)((i * 7) % 100) - (dt == FE_U8 ? 0 : 3);
    fe_tensor *t = fe_from_data(v, nd, shape, FE_F64, FE_DEVICE_CPU);
    fe_tensor *c = fe_cast(t, dt);
    free(v);
    return c;
}

/* ---- round trips ------------------------------------------------------------------- */

TEST(round_trip_every_dtype) {
    const char *dir = tmpdir();
    CHECK(dir != NULL);
    const char *path = path_in(dir, "all.safetensors");
    static const char *st_names[FE_DTYPE_COUNT] = {
        [FE_F32] = "F32", [FE_F64] = "F64", [FE_F16] = "F16", [FE_BF16] = "BF16",
        [FE_I32] = "I32", [FE_I64] = "I64", [FE_U8] = "U8",   [FE_I8] = "I8"};
    fe_named_tensor nt[FE_DTYPE_COUNT + 2];
    char names[FE_DTYPE_COUNT][16];
    int64_t shape[3] = {2, 3, 5};
    for (int d = 0; d < FE_DTYPE_COUNT; d++) {
        snprintf(names[d], sizeof names[d], "w.%s", fe_dtype_name((fe_dtype)d));
        shape[2] = 5 + d; /* odd sizes so that packing matters */
        nt[d] = (fe_named_tensor){names[d], pattern(3, shape, (fe_dtype)d)};
    }
    fe_tensor *scalar = fe_full(0, NULL, 42.5, FE_F32, FE_DEVICE_CPU);
    int64_t eshape[2] = {0, 3};
    fe_tensor *empty = fe_empty(2, eshape, FE_BF16, FE_DEVICE_CPU); /* not fe_zeros: see report */
    nt[FE_DTYPE_COUNT] = (fe_named_tensor){"scalar", scalar};
    nt[FE_DTYPE_COUNT + 1] = (fe_named_tensor){"empty", empty};
    fe_kv meta[2] = {{"format", "pt"}, {"note", "quote \" backslash \\ newline \n done"}};
    CHECK(fe_safetensors_save(path, nt, FE_DTYPE_COUNT + 2, meta, 2) == FE_OK);

    /* the raw layout: padded header, every tensor aligned to its element size */
    size_t n = 0;
    unsigned char *raw = read_all(path, &n);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    CHECK(hlen % 8 == 0);
    CHECK(raw[8] == '{' && raw[8 + hlen - 1] != 0);
    free(raw);

    fe_safetensors *f = fe_safetensors_open(path);
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fe_safetensors_count(f) == FE_DTYPE_COUNT + 2);
    CHECK(fe_safetensors_metadata_count(f) == 2);
    CHECK(fe_safetensors_metadata(f, "format") &&
          !strcmp(fe_safetensors_metadata(f, "format"), "pt"));
    CHECK(fe_safetensors_metadata(f, "note") &&
          !strcmp(fe_safetensors_metadata(f, "note"), meta[1].value));
    CHECK(fe_safetensors_metadata(f, "nope") == NULL);
    for (int d = 0; d < FE_DTYPE_COUNT; d++) {
        fe_st_info info;
        CHECK(fe_safetensors_info(f, names[d], &info) == FE_OK);
        CHECK(!strcmp(info.dtype_name, st_names[d]));
        CHECK(info.has_fe_dtype && info.dtype == (fe_dtype)d);
        CHECK(info.ndim == 3 && info.shape[0] == 2 && info.shape[1] == 3 && info.shape[2] == 5 + d);
        CHECK(info.nbytes == (uint64_t)(30 + 6 * d) * fe_dtype_size((fe_dtype)d));
        CHECK((8 + hlen + info.offset) % fe_dtype_size((fe_dtype)d) == 0);
        /* the bytes on disk are the tensor's bytes */
        size_t nb;
        const void *p = fe_safetensors_raw(f, names[d], &nb);
        CHECK(p && nb == info.nbytes && !memcmp(p, fe_data(nt[d].tensor), nb));
        fe_tensor *back = fe_safetensors_load(f, names[d], FE_DEVICE_CPU);
        CHECK(back && fe_dtype_of(back) == (fe_dtype)d && fe_ndim(back) == 3);
        CHECK(t_maxdiff(back, nt[d].tensor) == 0);
        fe_free(back);
    }
    fe_tensor *s = fe_safetensors_load(f, "scalar", FE_DEVICE_CPU);
    CHECK(s && fe_ndim(s) == 0 && fe_item(s) == 42.5);
    fe_tensor *e = fe_safetensors_load(f, "empty", FE_DEVICE_CPU);
    CHECK(e && fe_numel(e) == 0 && fe_dim(e, 1) == 3 && fe_dtype_of(e) == FE_BF16);
    fe_free(s);
    fe_free(e);
    fe_safetensors_close(f);
    rm_rf(dir);
}

TEST(load_as_casts_and_open_memory_matches_file) {
    const char *dir = tmpdir();
    const char *path = path_in(dir, "x.safetensors");
    int64_t shape[2] = {4, 6};
    fe_tensor *x = t_randn(2, shape, FE_F32);
    fe_named_tensor nt = {"x", x};
    CHECK(fe_safetensors_save(path, &nt, 1, NULL, 0) == FE_OK);
    fe_safetensors *f = fe_safetensors_open(path);
    CHECK(f != NULL);
    if (!f) return;
    fe_tensor *b = fe_safetensors_load_as(f, "x", FE_BF16, FE_DEVICE_CPU);
    fe_tensor *ref = fe_cast(x, FE_BF16);
    CHECK(b && fe_dtype_of(b) == FE_BF16 && t_maxdiff(b, ref) == 0);
    fe_tensor *d = fe_safetensors_load_as(f, "x", FE_F64, FE_DEVICE_CPU);
    CHECK(d && fe_dtype_of(d) == FE_F64 && t_maxdiff(d, x) == 0);
    CHECK_ERROR(fe_safetensors_load(f, "y", FE_DEVICE_CPU) == NULL, "no tensor named 'y'");
    fe_safetensors_close(f);
    size_t n = 0;
    unsigned char *raw = read_all(path, &n);
    fe_safetensors *m = fe_safetensors_open_memory(raw, n);
    CHECK(m && fe_safetensors_count(m) == 1);
    fe_tensor *xm = m ? fe_safetensors_load(m, "x", FE_DEVICE_CPU) : NULL;
    CHECK(xm && t_maxdiff(xm, x) == 0);
    fe_safetensors_close(m);
    free(raw);
    rm_rf(dir);
}

TEST(writes_views_in_row_major_order) {
    const char *dir = tmpdir();
    const char *path = path_in(dir, "t.safetensors");
    int64_t shape[2] = {3, 4};
    fe_tensor *a = pattern(2, shape, FE_F32);
    fe_tensor *at = fe_transpose(a, 0, 1); /* (4, 3), not contiguous */
    CHECK(at && !fe_is_contiguous(at));
    fe_named_tensor nt = {"at", at};
    CHECK(fe_safetensors_save(path, &nt, 1, NULL, 0) == FE_OK);
    fe_safetensors *f = fe_safetensors_open(path);
    CHECK(f != NULL);
    if (!f) return;
    const float *p = fe_safetensors_raw(f, "at", NULL);
    /* element (i, j) of the transpose is a[j][i] = (j*4 + i) * 0.5 - 3 */
    CHECK(p[0] == -3.0f && p[1] == (4 * 0.5f - 3) && p[3] == 0.5f - 3);
    fe_tensor *back = fe_safetensors_load(f, "at", FE_DEVICE_CPU);
    CHECK(back && fe_dim(back, 0) == 4 && t_maxdiff(back, at) == 0);
    fe_safetensors_close(f);
    rm_rf(dir);
}

/* A file written by Python's safetensors (numpy), checked in as bytes: {"a": F32 (2,),
 * "b": I16 (1,), "c": BOOL (2,)} with __metadata__ {"k": "v"}. Built by hand here the
 * same way the reference lays it out. */
TEST(reads_reference_layout_and_foreign_dtypes) {
    const char *dir = tmpdir();
    const char *path = path_in(dir, "ref.safetensors");
    const char *h = "{\"__metadata__\":{\"k\":\"v\"},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[8,10]},"
                    "\"c\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[10,12]}}";
    char padded[512];
    size_t hl = strlen(h);
    snprintf(padded, sizeof padded, "%s%.*s", h, (int)((8 - hl % 8) % 8), "        ");
    FILE *fp = fopen(path, "wb");
    uint64_t len = strlen(padded);
    fwrite(&len, 8, 1, fp);
    fwrite(padded, 1, len, fp);
    float a[2] = {1.5f, -2.25f};
    int16_t b = -7;
    uint8_t c[2] = {1, 0};
    fwrite(a, 4, 2, fp);
    fwrite(&b, 2, 1, fp);
    fwrite(c, 1, 2, fp);
    fclose(fp);
    fe_safetensors *f = fe_safetensors_open(path);
    CHECK(f != NULL);
    if (!f) return;
    fe_tensor *ta = fe_safetensors_load(f, "a", FE_DEVICE_CPU);
    CHECK(ta && ((float *)fe_data(ta))[0] == 1.5f && ((float *)fe_data(ta))[1] == -2.25f);
    fe_st_info info;
    CHECK(fe_safetensors_info(f, "b", &info) == FE_OK && !info.has_fe_dtype &&
          !strcmp(info.dtype_name, "I16"));
    CHECK_ERROR(fe_safetensors_load(f, "b", FE_DEVICE_CPU) == NULL, "unsupported dtype I16");
    CHECK_ERROR(fe_safetensors_load_as(f, "b", FE_F32, FE_DEVICE_CPU) == NULL, "unsupported dtype");
    fe_tensor *tc = fe_safetensors_load(f, "c", FE_DEVICE_CPU);
    CHECK(tc && fe_dtype_of(tc) == FE_U8 && ((uint8_t *)fe_data(tc))[0] == 1 &&
          ((uint8_t *)fe_data(tc))[1] == 0);
    CHECK(!strcmp(fe_safetensors_metadata(f, "k"), "v"));
    fe_safetensors_close(f);
    rm_rf(dir);
}

TEST(holes_and_empty_tensors_are_allowed) {
    const char *dir = tmpdir();
    const char *path = path_in(dir, "h.safetensors");
    /* a gap between a and b; e is empty and sits inside a's range */
    write_raw(path,
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]},"
              "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[2,2]}}",
              10);
    fe_safetensors *f = fe_safetensors_open(path);
    CHECK(f != NULL);
    fe_tensor *b = f ? fe_safetensors_load(f, "b", FE_DEVICE_CPU) : NULL;
    CHECK(b && ((uint8_t *)fe_data(b))[0] == 8 && ((uint8_t *)fe_data(b))[1] == 9);
    fe_safetensors_close(f);
    rm_rf(dir);
}

/* ---- bad files ---------------------------------------------------------------------- */

static bool refuses(const char *header, size_t n_data) {
    write_raw(path_in(g_dir, "bad.safetensors"), header, n_data);
    fe_safetensors *f = fe_safetensors_open(path_in(g_dir, "bad.safetensors"));
    fe_safetensors_close(f);
    return f == NULL;
}

#define ENTRY(dt, shape, b, e)                                                                     \
    "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" b "," e "]}"

TEST(refuses_bad_files) {
    const char *dir = tmpdir();
    const char *p = path_in(dir, "bad.safetensors");
    CHECK_ERROR(fe_safetensors_open(path_in(dir, "missing.safetensors")) == NULL, "cannot open");
    CHECK_ERROR(fe_safetensors_open(dir) == NULL, "not a regular file");
    /* truncated: fewer than 8 bytes */
    FILE *fp = fopen(p, "wb");
    fwrite("\x10\0\0", 1, 3, fp);
    fclose(fp);
    CHECK_ERROR(fe_safetensors_open(p) == NULL, "truncated file");
    fp = fopen(p, "wb");
    fclose(fp);
    CHECK_ERROR(fe_safetensors_open(p) == NULL, "truncated file");
    /* header length past the end, and over the limit */
    write_raw_len(p, 1000, "{}", 0);
    CHECK_ERROR(fe_safetensors_open(p) == NULL, "runs past the end of the file");
    write_raw_len(p, 200000000, "{}", 0);
    CHECK_ERROR(fe_safetensors_open(p) == NULL, "exceeds the 100 MB limit");
    write_raw_len(p, UINT64_MAX, "{}", 0);
    CHECK_ERROR(fe_safetensors_open(p) == NULL, "exceeds the 100 MB limit");
    /* a truncated data area: the header promises 16 bytes, 8 are there */
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[4]", "0", "16") "}", 8), "out of range");
    /* header not JSON / not an object / trailing garbage */
    CHECK_ERROR(refuses("{\"a\": [1, 2", 0), "not valid JSON");
    CHECK_ERROR(refuses("not json at all", 0), "not valid JSON");
    CHECK_ERROR(refuses("[1, 2, 3]      ", 0), "not valid JSON object");
    CHECK_ERROR(refuses("{}  xyz", 0), "trailing bytes");
    /* entries */
    CHECK_ERROR(refuses("{\"a\": 3}", 0), "is not a JSON object");
    CHECK_ERROR(refuses("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "missing dtype");
    CHECK_ERROR(refuses("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), "missing shape");
    CHECK_ERROR(refuses("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "missing data_offsets");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("Q4", "[1]", "0", "4") "}", 4), "unknown dtype 'Q4'");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("f32", "[1]", "0", "4") "}", 4), "unknown dtype 'f32'");
    CHECK_ERROR(refuses("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                "dtype that is not a string");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[-1]", "0", "4") "}", 4),
                "not a non-negative integer");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[2.5]", "0", "10") "}", 10),
                "not a non-negative integer");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[\"2\"]", "0", "8") "}", 8),
                "not a non-negative integer");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "3", "0", "12") "}", 12),
                "shape that is not a list");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[1,1,1,1,1,1,1,1,1]", "0", "4") "}", 4), "rank 9");
    CHECK_ERROR(
        refuses("{\"a\":" ENTRY("F32", "[4294967296,4294967296,4294967296]", "0", "4") "}", 4),
        "too large");
    /* offsets */
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[2]", "0", "8") "}", 4),
                "data_offsets out of range");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[2]", "8", "0") "}", 8), "before it begins");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[2]", "0", "12") "}", 12), "size mismatch");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F16", "[3]", "0", "4") "}", 4), "size mismatch");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[1]", "-4", "0") "}", 4), "non-negative integers");
    CHECK_ERROR(refuses("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
                "[begin, end] pair");
    CHECK_ERROR(refuses("{\"a\":" ENTRY("F32", "[2]", "0", "8") ",\"b\":" ENTRY("F32", "[2]", "4",
                                                                                "12") "}",
                        12),
                "overlapping data_offsets");
    CHECK_ERROR(
        refuses("{\"b\":" ENTRY("U8", "[8]", "0", "8") ",\"a\":" ENTRY("U8", "[2]", "3", "5") "}",
                8),
        "overlapping data_offsets");
    CHECK_ERROR(
        refuses("{\"a\":" ENTRY("U8", "[2]", "0", "2") ",\"a\":" ENTRY("U8", "[2]", "2", "4") "}",
                4),
        "duplicate tensor name 'a'");
    /* names must be UTF-8, like the reference requires */
    CHECK_ERROR(refuses("{\"\xff\xfe\":" ENTRY("U8", "[1]", "0", "1") "}", 1), "not valid UTF-8");
    CHECK_ERROR(refuses("{\"\xc3\":" ENTRY("U8", "[1]", "0", "1") "}", 1), "not valid UTF-8");
    CHECK_ERROR(refuses("{\"\xed\xa0\x80\":" ENTRY("U8", "[1]", "0", "1") "}", 1),
                "not valid UTF-8");
    CHECK(!refuses("{\"w\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\":" ENTRY("U8", "[1]", "0", "1") "}",
                   1));
    /* metadata */
    CHECK_ERROR(refuses("{\"__metadata__\":{\"k\":1}}", 0),
                "__metadata__ value of 'k' is not a string");
    CHECK_ERROR(refuses("{\"__metadata__\":[1]}", 0), "__metadata__ is not a JSON object");
    /* the message names the file */
    CHECK_ERROR(refuses("nope", 0), "bad.safetensors");
    /* in memory too */
    CHECK_ERROR(fe_safetensors_open_memory("\x02\0\0\0\0\0\0\0{", 9) == NULL, "runs past the end");
    CHECK(fe_live_tensors() == fe_live_tensors());
    rm_rf(dir);
}

/* ---- atomic writes ------------------------------------------------------------------ */

TEST(failed_writes_leave_the_old_file) {
    const char *dir = tmpdir();
    const char *path = path_in(dir, "m.safetensors");
    int64_t shape[1] = {1000};
    fe_tensor *small = pattern(1, shape, FE_F32);
    fe_named_tensor nt = {"w", small};
    CHECK(fe_safetensors_save(path, &nt, 1, NULL, 0) == FE_OK);
    size_t n0 = 0;
    unsigned char *before = read_all(path, &n0);

    /* a write that fails half-way: the file size limit stops it after 64 KiB */
    int64_t big_shape[1] = {1 << 20};
    fe_tensor *big = fe_zeros(1, big_shape, FE_F32, FE_DEVICE_CPU);
    fe_named_tensor bt = {"w", big};
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    fe_clear_error();
    fe_status st = fe_safetensors_save(path, &bt, 1, NULL, 0);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(st == FE_ERR_IO);
    CHECK(strstr(fe_last_error(), "writing") != NULL);
    fe_clear_error();

    /* bad arguments fail before anything is written */
    fe_named_tensor dup[2] = {{"w", small}, {"w", small}};
    CHECK_ERROR(fe_safetensors_save(path, dup, 2, NULL, 0) != FE_OK, "duplicate tensor name 'w'");
    fe_named_tensor null_t = {"w", NULL};
    CHECK_ERROR(fe_safetensors_save(path, &null_t, 1, NULL, 0) != FE_OK, "tensor 'w' is NULL");
    fe_named_tensor reserved = {"__metadata__", small};
    CHECK_ERROR(fe_safetensors_save(path, &reserved, 1, NULL, 0) != FE_OK, "reserved");
    CHECK_ERROR(fe_safetensors_save(path_in(dir, "no/such/dir/x.safetensors"), &nt, 1, NULL, 0) !=
                    FE_OK,
                "cannot create a temporary file");

    size_t n1 = 0;
    unsigned char *after = read_all(path, &n1);
    CHECK(n1 == n0 && !memcmp(before, after, n0));
    CHECK(count_files(dir) == 1); /* no temporary file left behind */
    free(before);
    free(after);

    /* a successful overwrite replaces it */
    CHECK(fe_safetensors_save(path, &bt, 1, NULL, 0) == FE_OK);
    fe_safetensors *f = fe_safetensors_open(path);
    fe_st_info info;
    CHECK(f && fe_safetensors_info(f, "w", &info) == FE_OK && info.numel == (1 << 20));
    fe_safetensors_close(f);
    CHECK(count_files(dir) == 1);
    rm_rf(dir);
}

/* ---- sharded models ------------------------------------------------------------------- */

TEST(sharded_index) {
    const char *dir = tmpdir();
    int64_t s1[2] = {2, 2}, s2[1] = {3};
    fe_tensor *a = pattern(2, s1, FE_F32), *b = pattern(1, s2, FE_BF16),
              *c = pattern(1, s2, FE_I64);
    fe_named_tensor sh1[2] = {{"model.a", a}, {"model.c", c}}, sh2[1] = {{"lm_head.b", b}};
    CHECK(fe_safetensors_save(path_in(dir, "model-00001-of-00002.safetensors"), sh1, 2, NULL, 0) ==
          FE_OK);
    CHECK(fe_safetensors_save(path_in(dir, "model-00002-of-00002.safetensors"), sh2, 1, NULL, 0) ==
          FE_OK);
    FILE *fp = fopen(path_in(dir, "model.safetensors.index.json"), "w");
    fprintf(fp, "{\"metadata\": {\"total_size\": 46}, \"weight_map\": {"
                "\"model.a\": \"model-00001-of-00002.safetensors\","
                "\"lm_head.b\": \"model-00002-of-00002.safetensors\","
                "\"model.c\": \"model-00001-of-00002.safetensors\"}}");
    fclose(fp);
    fe_weights *w = fe_weights_open(dir);
    CHECK(w != NULL);
    if (!w) return;
    CHECK(fe_weights_count(w) == 3 && fe_weights_file_count(w) == 2);
    CHECK(!strcmp(fe_weights_name(w, 0), "lm_head.b")); /* sorted */
    fe_tensor *lb = fe_weights_load(w, "lm_head.b", FE_DEVICE_CPU);
    fe_tensor *la = fe_weights_load_as(w, "model.a", FE_F64, FE_DEVICE_CPU);
    fe_tensor *lc = fe_weights_load(w, "model.c", FE_DEVICE_CPU);
    CHECK(lb && t_maxdiff(lb, b) == 0 && fe_dtype_of(lb) == FE_BF16);
    CHECK(la && t_maxdiff(la, a) == 0 && fe_dtype_of(la) == FE_F64);
    CHECK(lc && t_maxdiff(lc, c) == 0);
    fe_st_info info;
    CHECK(fe_weights_info(w, "model.c", &info) == FE_OK && !strcmp(info.dtype_name, "I64"));
    CHECK_ERROR(fe_weights_load(w, "nope", FE_DEVICE_CPU) == NULL, "no tensor named 'nope'");
    fe_weights_close(w);

    /* the index file itself opens the same way */
    w = fe_weights_open(path_in(dir, "model.safetensors.index.json"));
    CHECK(w && fe_weights_count(w) == 3);
    fe_weights_close(w);

    /* broken indexes */
    const char *idx = path_in(dir, "bad.index.json");
    const char *bad[][2] = {
        {"{\"weight_map\": {\"model.zzz\": \"model-00001-of-00002.safetensors\"}}",
         "is not in its shard"},
        {"{\"weight_map\": {\"x\": \"missing.safetensors\"}}", "cannot open"},
        {"{\"weight_map\": {\"x\": \"../etc/passwd\"}}", "leaves the model folder"},
        {"{\"weight_map\": {\"x\": \"/etc/passwd\"}}", "leaves the model folder"},
        {"{\"weight_map\": {\"x\": 3}}", "is not a file name"},
        {"{\"weight_map\": [1]}", "\"weight_map\" is not a JSON object"},
        {"{\"metadata\": {}}", "missing \"weight_map\""},
        {"{\"weight_map\": {", "not valid JSON"},
        {"{\"weight_map\": {\"x\": \"a.safetensors\", \"x\": \"b.safetensors\"}}",
         "duplicate tensor name 'x'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fp = fopen(idx, "w");
        fputs(bad[i][0], fp);
        fclose(fp);
        CHECK_ERROR(fe_weights_open(idx) == NULL, bad[i][1]);
    }
    rm_rf(dir);
}

TEST(single_file_folder) {
    const char *dir = tmpdir();
    int64_t s[1] = {5};
    fe_tensor *a = pattern(1, s, FE_F16);
    fe_named_tensor nt = {"a", a};
    CHECK_ERROR(fe_weights_open(dir) == NULL, "no model.safetensors");
    CHECK(fe_safetensors_save(path_in(dir, "model.safetensors"), &nt, 1, NULL, 0) == FE_OK);
    fe_weights *w = fe_weights_open(dir);
    CHECK(w && fe_weights_count(w) == 1 && fe_weights_file_count(w) == 1);
    fe_tensor *b = w ? fe_weights_load(w, "a", FE_DEVICE_CPU) : NULL;
    CHECK(b && t_maxdiff(a, b) == 0);
    fe_weights_close(w);
    rm_rf(dir);
}

TEST(loads_onto_cuda_when_present) {
    if (!fe_device_available(FE_CUDA)) SKIP("no CUDA device");
    const char *dir = tmpdir();
    int64_t s[2] = {3, 7};
    fe_tensor *a = t_randn(2, s, FE_F32);
    fe_tensor *ga = fe_to_device(a, (fe_device){FE_CUDA, 0});
    fe_named_tensor nt = {"a", ga};
    CHECK(fe_safetensors_save(path_in(dir, "g.safetensors"), &nt, 1, NULL, 0) == FE_OK);
    fe_safetensors *f = fe_safetensors_open(path_in(dir, "g.safetensors"));
    fe_tensor *g = f ? fe_safetensors_load_as(f, "a", FE_BF16, (fe_device){FE_CUDA, 0}) : NULL;
    CHECK(g && fe_device_of(g).type == FE_CUDA && fe_dtype_of(g) == FE_BF16);
    CHECK(g && t_maxdiff(g, fe_cast(a, FE_BF16)) == 0);
    fe_safetensors_close(f);
    rm_rf(dir);
}
