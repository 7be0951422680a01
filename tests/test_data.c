/* Data layer: R serialization parser, lazy-load databases, the Austen corpus, shards,
 * datasets, the byte tokenizer and the batch loader. */
#include "ferric/data.h"
#include "test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- helpers: a byte buffer for hand-built R serializations ----------------- */

typedef struct buf {
    uint8_t b[4096];
    size_t n;
} buf;

static void put_bytes(buf *w, const void *p, size_t n) {
    if (w->n + n <= sizeof w->b) memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void put_i32(buf *w, uint32_t v) {
    uint8_t q[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put_bytes(w, q, 4);
}
static void put_header(buf *w, int version) {
    put_bytes(w, "X\n", 2);
    put_i32(w, (uint32_t)version);
    put_i32(w, 0x00040201); /* written by R 4.2.1 */
    put_i32(w, 0x00030500);
    if (version == 3) {
        put_i32(w, 5);
        put_bytes(w, "UTF-8", 5);
    }
}
/* CHARSXP (ASCII flagged) or NA_STRING when s is NULL. */
static void put_char(buf *w, const char *s) {
    put_i32(w, 0x00040009);
    if (!s) {
        put_i32(w, 0xFFFFFFFFu);
        return;
    }
    put_i32(w, (uint32_t)strlen(s));
    put_bytes(w, s, strlen(s));
}
static void put_strsxp(buf *w, int n, const char *const *s) {
    put_i32(w, 16);
    put_i32(w, (uint32_t)n);
    for (int i = 0; i < n; i++)
        put_char(w, s[i]);
}
static void put_sym(buf *w, const char *name) {
    put_i32(w, 1);
    put_char(w, name);
}
#define ATTR 0x200u
#define TAG 0x400u
#define NIL 254u

/* list(a = 1:2 with names c("p","q"), b = "z") with the "names" symbol referenced twice. */
static void build_named_list(buf *w) {
    put_header(w, 3);
    put_i32(w, 19 | ATTR); /* VECSXP with attributes */
    put_i32(w, 2);
    put_i32(w, 13 | ATTR); /* INTSXP 1:2 with names */
    put_i32(w, 2);
    put_i32(w, 1);
    put_i32(w, 2);
    put_i32(w, 2 | TAG); /* attributes: pairlist, tag = symbol "names" (ref 1) */
    put_sym(w, "names");
    put_strsxp(w, 2, (const char *[]){"p", "q"});
    put_i32(w, NIL);
    put_strsxp(w, 1, (const char *[]){"z"});
    put_i32(w, 2 | TAG); /* the list's own names: tag is a reference to symbol 1 */
    put_i32(w, (1u << 8) | 255u);
    put_strsxp(w, 2, (const char *[]){"a", "b"});
    put_i32(w, NIL);
}

static char g_tmpdir[64];
static const char *tmp_path(const char *name) {
    static char path[4][256];
    static int k;
    if (!g_tmpdir[0]) {
        strcpy(g_tmpdir, "/tmp/fe_test_data_XXXXXX");
        if (!mkdtemp(g_tmpdir)) strcpy(g_tmpdir, "/tmp");
    }
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", g_tmpdir, name);
    return path[k];
}

__attribute__((destructor)) static void remove_tmpdir(void) {
    if (g_tmpdir[0] && strcmp(g_tmpdir, "/tmp") != 0) rmdir(g_tmpdir);
}

static bool write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static int count_tmp_leftovers(void) {
    DIR *d = opendir(g_tmpdir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

/* ---- R serialization ---------------------------------------------------------- */

TEST(rser_character_vector_with_na) {
    buf w = {0};
    put_header(&w, 3);
    put_strsxp(&w, 3, (const char *[]){"It is a truth", NULL, ""});
    fe_rfile *f = fe_r_unserialize(w.b, w.n);
    CHECK(f != NULL);
    if (!f) return;
    const fe_robj *o = fe_r_root(f);
    CHECK(o->type == FE_R_STR && o->length == 3);
    CHECK(fe_r_str(o, 0) && !strcmp(fe_r_str(o, 0), "It is a truth"));
    CHECK(fe_r_str(o, 1) == NULL && o->elts[1]->length == -1); /* NA_STRING */
    CHECK(fe_r_str(o, 2) && fe_r_str(o, 2)[0] == '\0');
    CHECK(o->elts[0]->levels & FE_R_ENC_ASCII);
    CHECK(fe_r_str(o, 3) == NULL);
    fe_r_free(f);
}

TEST(rser_numbers_version2) {
    buf w = {0};
    put_header(&w, 2);
    put_i32(&w, 19); /* list(c(7L, NA), c(TRUE, FALSE), c(1.5, -2), as.raw(c(1, 255))) */
    put_i32(&w, 4);
    put_i32(&w, 13), put_i32(&w, 2), put_i32(&w, 7), put_i32(&w, 0x80000000u);
    put_i32(&w, 10), put_i32(&w, 2), put_i32(&w, 1), put_i32(&w, 0);
    put_i32(&w, 14), put_i32(&w, 2);
    put_i32(&w, 0x3FF80000), put_i32(&w, 0); /* 1.5 */
    put_i32(&w, 0xC0000000), put_i32(&w, 0); /* -2.0 */
    put_i32(&w, 24), put_i32(&w, 2), put_bytes(&w, "\x01\xff", 2);
    fe_rfile *f = fe_r_unserialize(w.b, w.n);
    CHECK(f != NULL);
    if (!f) return;
    const fe_robj *o = fe_r_root(f);
    CHECK(o->type == FE_R_VEC && o->length == 4);
    CHECK(o->elts[0]->type == FE_R_INT && o->elts[0]->ints[0] == 7 &&
          o->elts[0]->ints[1] == INT32_MIN);
    CHECK(o->elts[1]->type == FE_R_LGL && o->elts[1]->ints[0] == 1 && o->elts[1]->ints[1] == 0);
    CHECK(o->elts[2]->type == FE_R_REAL && o->elts[2]->reals[0] == 1.5 &&
          o->elts[2]->reals[1] == -2.0);
    CHECK(o->elts[3]->type == FE_R_RAW && o->elts[3]->raw[0] == 1 && o->elts[3]->raw[1] == 255);
    fe_r_free(f);
}

TEST(rser_attributes_tags_and_references) {
    buf w = {0};
    build_named_list(&w);
    fe_rfile *f = fe_r_unserialize(w.b, w.n);
    CHECK(f != NULL);
    if (!f) return;
    const fe_robj *o = fe_r_root(f);
    const fe_robj *a = fe_r_get(o, "a"), *b = fe_r_get(o, "b");
    CHECK(a && a->type == FE_R_INT && a->length == 2 && a->ints[1] == 2);
    CHECK(b && b->type == FE_R_STR && !strcmp(fe_r_str(b, 0), "z"));
    CHECK(fe_r_get(o, "c") == NULL);
    const fe_robj *an = fe_r_attr(a, "names");
    CHECK(an && !strcmp(fe_r_str(an, 1), "q"));
    /* both attribute lists' tags are the same symbol object (the reference resolved) */
    CHECK(o->attrib->tags[0] == a->attrib->tags[0]);
    CHECK(fe_r_attr(o, "class") == NULL);
    fe_r_free(f);
}

TEST(rser_pairlist_flattened) {
    buf w = {0};
    put_header(&w, 3);
    const char *names[] = {"x", "y", "z"};
    for (int i = 0; i < 3; i++) {
        put_i32(&w, 2 | TAG);
        put_sym(&w, names[i]);
        put_i32(&w, 13), put_i32(&w, 1), put_i32(&w, (uint32_t)(10 * i));
    }
    put_i32(&w, NIL);
    fe_rfile *f = fe_r_unserialize(w.b, w.n);
    CHECK(f != NULL);
    if (!f) return;
    const fe_robj *o = fe_r_root(f);
    CHECK(o->type == FE_R_LIST && o->length == 3);
    const fe_robj *z = fe_r_get(o, "z");
    CHECK(z && z->ints[0] == 20);
    CHECK(!strcmp(o->tags[1]->chars, "y"));
    fe_r_free(f);
}

TEST(rser_truncated_inputs_fail_cleanly) {
    buf w = {0};
    build_named_list(&w);
    for (size_t k = 0; k < w.n; k++) {
        fe_clear_error();
        fe_rfile *f = fe_r_unserialize(w.b, k);
        if (f) {
            fprintf(stderr, "  prefix of %zu bytes parsed\n", k);
            CHECK(f == NULL);
            fe_r_free(f);
        }
        CHECK(fe_last_status() == FE_ERR_FORMAT);
    }
    CHECK_ERROR(fe_r_unserialize(w.b, 20) == NULL, "truncated");
}

TEST(rser_corrupted_inputs_named) {
    buf w = {0};
    put_bytes(&w, "Y\n", 2);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "not an XDR");
    w.n = 0;
    put_header(&w, 4);
    put_i32(&w, NIL);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "version 4");
    w.n = 0; /* a length far beyond the data: refused before allocating */
    put_header(&w, 3);
    put_i32(&w, 16), put_i32(&w, 0x7FFFFFFF);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "exceeds");
    w.n = 0;
    put_header(&w, 3);
    put_i32(&w, 13), put_i32(&w, 0xFFFFFFF0u);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "negative");
    w.n = 0;
    put_header(&w, 3);
    put_i32(&w, (7u << 8) | 255u); /* reference to an object never seen */
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "reference 7");
    w.n = 0;
    put_header(&w, 3);
    put_i32(&w, 3); /* a closure */
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "unsupported object type 3");
    w.n = 0;
    put_header(&w, 3);
    put_i32(&w, 16), put_i32(&w, 1), put_i32(&w, 13), put_i32(&w, 0);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "not a string");
    w.n = 0;
    put_header(&w, 3);
    put_i32(&w, NIL), put_i32(&w, NIL);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "unexpected bytes");
    w.n = 0;
    put_header(&w, 3);
    for (int i = 0; i < 400; i++)
        put_i32(&w, 19), put_i32(&w, 1);
    put_i32(&w, NIL);
    CHECK_ERROR(fe_r_unserialize(w.b, w.n) == NULL, "nested too deeply");
    CHECK_ERROR(fe_r_unserialize("\x1f\x8b\x08", 3) == NULL, "gzip");
    CHECK_ERROR(fe_r_unserialize(NULL, 5) == NULL, "NULL");
}

TEST(rser_random_corruption_never_crashes) {
    buf w = {0};
    build_named_list(&w);
    uint64_t s = 88172645463325252ull;
    int parsed = 0;
    for (int trial = 0; trial < 3000; trial++) {
        buf c = w;
        for (int k = 0; k < 3; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            c.b[14 + s % (c.n - 14)] ^= (uint8_t)(1u << (s >> 40) % 8);
        }
        fe_rfile *f = fe_r_unserialize(c.b, c.n);
        parsed += f != NULL;
        fe_r_free(f);
    }
    CHECK(parsed < 3000); /* most flips are detected; none crashed */
    fe_clear_error();
}

/* ---- .rds and lazy-load databases ---------------------------------------------- */

TEST(rds_gzip_file) {
    buf w = {0};
    build_named_list(&w);
    const char *path = tmp_path("x.rds");
    gzFile g = gzopen(path, "wb");
    CHECK(g != NULL);
    if (!g) return;
    gzwrite(g, w.b, (unsigned)w.n);
    gzclose(g);
    fe_rfile *f = fe_r_read_rds(path);
    CHECK(f && fe_r_get(fe_r_root(f), "b") != NULL);
    fe_r_free(f);
    CHECK_ERROR(fe_r_read_rds(tmp_path("missing.rds")) == NULL, "cannot open");
    /* a gzip file cut in half */
    uint8_t *raw = malloc(4096);
    FILE *fp = fopen(path, "rb");
    size_t n = fp ? fread(raw, 1, 4096, fp) : 0;
    if (fp) fclose(fp);
    CHECK(write_bytes(path, raw, n / 2));
    CHECK_ERROR(fe_r_read_rds(path) == NULL, "truncated");
    free(raw);
    unlink(path);
}

/* One .rdb chunk: 4-byte big-endian size + zlib stream of the serialization. */
static size_t make_chunk(const buf *ser, uint8_t *out, size_t cap) {
    uLongf zn = (uLongf)(cap - 4);
    if (compress2(out + 4, &zn, ser->b, ser->n, 6) != Z_OK) return 0;
    out[0] = (uint8_t)(ser->n >> 24), out[1] = (uint8_t)(ser->n >> 16);
    out[2] = (uint8_t)(ser->n >> 8), out[3] = (uint8_t)ser->n;
    return zn + 4;
}

/* A database with objects "one" (c("alpha","beta")) and "two" (c("gamma")). */
static bool make_rdb(const char *base, bool corrupt_second) {
    buf s1 = {0}, s2 = {0}, idx = {0};
    put_header(&s1, 3);
    put_strsxp(&s1, 2, (const char *[]){"alpha", "beta"});
    put_header(&s2, 3);
    put_strsxp(&s2, 1, (const char *[]){"gamma"});
    uint8_t data[2048];
    size_t n1 = make_chunk(&s1, data, 1024), n2 = make_chunk(&s2, data + n1, 1024);
    if (corrupt_second) data[n1 + 8] ^= 0x55;
    char path[300];
    snprintf(path, sizeof path, "%s.rdb", base);
    if (!write_bytes(path, data, n1 + n2)) return false;
    put_header(&idx, 3);
    put_i32(&idx, 19 | ATTR), put_i32(&idx, 3);
    put_i32(&idx, 19 | ATTR), put_i32(&idx, 2); /* variables */
    put_i32(&idx, 13), put_i32(&idx, 2), put_i32(&idx, 0), put_i32(&idx, (uint32_t)n1);
    put_i32(&idx, 13), put_i32(&idx, 2), put_i32(&idx, (uint32_t)n1), put_i32(&idx, (uint32_t)n2);
    put_i32(&idx, 2 | TAG), put_sym(&idx, "names");
    put_strsxp(&idx, 2, (const char *[]){"one", "two"});
    put_i32(&idx, NIL);
    put_i32(&idx, 19), put_i32(&idx, 0);                   /* references */
    put_i32(&idx, 10), put_i32(&idx, 1), put_i32(&idx, 1); /* compressed = TRUE */
    put_i32(&idx, 2 | TAG), put_i32(&idx, (1u << 8) | 255u);
    put_strsxp(&idx, 3, (const char *[]){"variables", "references", "compressed"});
    put_i32(&idx, NIL);
    snprintf(path, sizeof path, "%s.rdx", base);
    gzFile g = gzopen(path, "wb");
    if (!g) return false;
    gzwrite(g, idx.b, (unsigned)idx.n);
    return gzclose(g) == Z_OK;
}

TEST(rdb_fetch_objects) {
    char base[256];
    snprintf(base, sizeof base, "%s", tmp_path("db"));
    CHECK(make_rdb(base, false));
    fe_rdb *db = fe_rdb_open(base);
    CHECK(db != NULL);
    if (!db) return;
    CHECK(fe_rdb_count(db) == 2 && !strcmp(fe_rdb_name(db, 1), "two"));
    CHECK(fe_rdb_name(db, 2) == NULL);
    fe_rfile *f = fe_rdb_fetch(db, "one");
    CHECK(f && fe_r_root(f)->length == 2 && !strcmp(fe_r_str(fe_r_root(f), 1), "beta"));
    fe_r_free(f);
    f = fe_rdb_fetch(db, "two");
    CHECK(f && !strcmp(fe_r_str(fe_r_root(f), 0), "gamma"));
    fe_r_free(f);
    CHECK_ERROR(fe_rdb_fetch(db, "three") == NULL, "no object named 'three'");
    fe_rdb_close(db);

    CHECK(make_rdb(base, true));
    db = fe_rdb_open(base);
    CHECK(db != NULL);
    CHECK_ERROR(fe_rdb_fetch(db, "two") == NULL, "object 'two'");
    fe_rdb_close(db);
    CHECK_ERROR(fe_rdb_open(tmp_path("nodb")) == NULL, "cannot open");
    char p[300];
    snprintf(p, sizeof p, "%s.rdb", base), unlink(p);
    snprintf(p, sizeof p, "%s.rdx", base), unlink(p);
}

/* ---- the Austen corpus --------------------------------------------------------- */

TEST(austen_corpus_extracts) {
    const char *pkg = getenv("FE_AUSTEN_PKG");
    if (!pkg) pkg = "/tmp/austen";
    struct stat sb;
    if (stat(pkg, &sb) != 0)
        SKIP("no janeaustenr package: run 'cd /tmp && apt-get download r-cran-janeaustenr && "
             "dpkg -x r-cran-janeaustenr_*.deb /tmp/austen' or set FE_AUSTEN_PKG");
    const char *out = tmp_path("austen.txt");
    int64_t bytes = 0;
    CHECK(fe_austen_extract(pkg, out, &bytes) == FE_OK);
    CHECK(bytes > 3500000 && bytes < 5000000);
    uint8_t *text = NULL;
    FILE *f = fopen(out, "rb");
    CHECK(f != NULL);
    if (!f) return;
    text = malloc((size_t)bytes + 1);
    size_t n = fread(text, 1, (size_t)bytes + 1, f);
    fclose(f);
    CHECK((int64_t)n == bytes);
    text[n < (size_t)bytes ? n : (size_t)bytes] = 0;
    CHECK(strstr((char *)text, "It is a truth universally acknowledged, that a single man in "
                               "possession") != NULL);
    CHECK(!strncmp((char *)text, "SENSE AND SENSIBILITY\n", 22));
    CHECK(strstr((char *)text, "\nPRIDE AND PREJUDICE\n") != NULL);
    CHECK(strstr((char *)text, "\n\nPersuasion\n") != NULL);
    free(text);
    CHECK(count_tmp_leftovers() == 0);
    unlink(out);
    CHECK_ERROR(fe_austen_extract(g_tmpdir, out, NULL) != FE_OK, "no janeaustenr");
}

/* ---- byte tokenizer ------------------------------------------------------------ */

TEST(bytes_round_trip) {
    const char text[] = "Emma Woodhouse\n\xc3\xa9\xff";
    int32_t tok[sizeof text];
    int64_t n = fe_bytes_encode(text, sizeof text - 1, tok);
    CHECK(n == (int64_t)sizeof text - 1);
    CHECK(tok[0] == 'E' && tok[14] == 10 && tok[15] == 0xc3 && tok[17] == 255);
    char back[sizeof text] = {0};
    CHECK(fe_bytes_decode(tok, n, back) == FE_OK);
    CHECK(!memcmp(back, text, (size_t)n));
    tok[3] = 256;
    CHECK_ERROR(fe_bytes_decode(tok, n, back) != FE_OK, "position 3");
}

/* ---- shards and datasets ------------------------------------------------------- */

TEST(shard_round_trip_u16_and_u32) {
    int32_t tok[1000];
    for (int i = 0; i < 1000; i++)
        tok[i] = (i * 7919) % 65536;
    const char *p16 = tmp_path("a16.bin"), *p32 = tmp_path("a32.bin");
    CHECK(fe_shard_write(p16, tok, 1000, 2) == FE_OK);
    struct stat sb;
    CHECK(stat(p16, &sb) == 0 && sb.st_size == 1024 + 2000);
    fe_dataset *ds = fe_dataset_open_shard(p16);
    CHECK(ds && fe_dataset_len(ds) == 1000);
    int32_t back[1000];
    CHECK(fe_dataset_read(ds, 0, 1000, back) == FE_OK && !memcmp(back, tok, sizeof tok));
    CHECK(fe_dataset_read(ds, 990, 5, back) == FE_OK && back[0] == tok[990]);
    CHECK_ERROR(fe_dataset_read(ds, 998, 5, back) != FE_OK, "outside");
    fe_dataset_free(ds);

    tok[5] = 100000;
    CHECK_ERROR(fe_shard_write(p16, tok, 1000, 2) != FE_OK, "position 5");
    ds = fe_dataset_open_shard(p16); /* the failed write left the old file intact */
    CHECK(ds && fe_dataset_len(ds) == 1000);
    fe_dataset_free(ds);
    CHECK(fe_shard_write(p32, tok, 1000, 4) == FE_OK);
    ds = fe_dataset_open_shard(p32);
    CHECK(ds && fe_dataset_read(ds, 0, 1000, back) == FE_OK && back[5] == 100000);
    CHECK(fe_dataset_vocab_bound(ds) == 100001);
    fe_dataset_free(ds);
    CHECK(count_tmp_leftovers() == 0);
    CHECK_ERROR(fe_shard_write("/nonexistent_dir/x.bin", tok, 10, 4) != FE_OK, "cannot create");
    unlink(p16), unlink(p32);
}

/* Write a shard and then damage its file with `edit`. */
static const char *damaged_shard(void (*edit)(uint8_t *, size_t *)) {
    int32_t tok[100];
    for (int i = 0; i < 100; i++)
        tok[i] = i;
    const char *p = tmp_path("bad.bin");
    fe_shard_write(p, tok, 100, 2);
    uint8_t raw[1024 + 400];
    FILE *f = fopen(p, "rb");
    size_t n = f ? fread(raw, 1, sizeof raw, f) : 0;
    if (f) fclose(f);
    edit(raw, &n);
    write_bytes(p, raw, n);
    return p;
}
static void cut_header(uint8_t *b, size_t *n) { (void)b, *n = 100; }
static void bad_magic(uint8_t *b, size_t *n) { (void)n, b[0] ^= 1; }
static void bad_version(uint8_t *b, size_t *n) { (void)n, b[4] = 7; }
static void count_past_end(uint8_t *b, size_t *n) { (void)n, b[8] = 200; }
static void cut_tokens(uint8_t *b, size_t *n) { (void)b, *n -= 10; }
static void extra_bytes(uint8_t *b, size_t *n) { (void)b, *n += 6; }

TEST(shard_corruption_refused) {
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(cut_header)) == NULL, "truncated header");
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(bad_magic)) == NULL, "bad magic");
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(bad_version)) == NULL, "unsupported version 7");
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(count_past_end)) == NULL,
                "token count 200 runs past the end");
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(cut_tokens)) == NULL, "runs past the end");
    CHECK_ERROR(fe_dataset_open_shard(damaged_shard(extra_bytes)) == NULL, "trailing bytes");
    CHECK_ERROR(fe_dataset_open_shard(tmp_path("nothing.bin")) == NULL, "cannot open shard");
    unlink(tmp_path("bad.bin"));
}

TEST(text_dataset_and_split) {
    const char *p = tmp_path("t.txt");
    const char text[] = "It is a truth universally acknowledged.\n";
    CHECK(write_bytes(p, text, sizeof text - 1));
    fe_dataset *ds = fe_dataset_open_text(p);
    CHECK(ds && fe_dataset_len(ds) == (int64_t)sizeof text - 1);
    if (!ds) return;
    int32_t tok[64];
    CHECK(fe_dataset_read(ds, 0, 4, tok) == FE_OK && tok[0] == 'I' && tok[2] == ' ');
    CHECK(fe_dataset_vocab_bound(ds) == 'y' + 1);
    fe_dataset *tr, *va;
    CHECK(fe_dataset_split(ds, 0.25, &tr, &va) == FE_OK);
    int64_t n = fe_dataset_len(ds), nv = (int64_t)(n * 0.25);
    CHECK(fe_dataset_len(va) == nv && fe_dataset_len(tr) == n - nv);
    fe_dataset_free(ds); /* the views keep the data alive */
    CHECK(fe_dataset_read(va, nv - 1, 1, tok) == FE_OK && tok[0] == '\n');
    CHECK(fe_dataset_read(tr, 0, 1, tok) == FE_OK && tok[0] == 'I');
    CHECK_ERROR(fe_dataset_read(tr, n - nv, 1, tok) != FE_OK, "outside");
    fe_dataset_free(tr), fe_dataset_free(va);
    ds = fe_dataset_from_tokens((const int32_t[]){1, 2, 3}, 3);
    CHECK_ERROR(fe_dataset_split(ds, 1.0, &tr, &va) != FE_OK, "val_frac");
    fe_dataset_free(ds);
    CHECK_ERROR(fe_dataset_from_tokens((const int32_t[]){1, -2}, 2) == NULL, "negative");
    unlink(p);
}

/* ---- the loader ------------------------------------------------------------------ */

enum { NTOK = 2000, B = 4, T = 16 };
static int32_t g_tok[NTOK];

static fe_dataset *loader_dataset(void) {
    for (int i = 0; i < NTOK; i++)
        g_tok[i] = (int32_t)((i * 2654435761u) % 50000);
    return fe_dataset_from_tokens(g_tok, NTOK);
}

static fe_loader *make_loader(const fe_dataset *ds, uint64_t seed, int prefetch, bool shuffle) {
    fe_loader_config c = {.batch = B,
                          .seq_len = T,
                          .seed = seed,
                          .shuffle = shuffle,
                          .prefetch = prefetch,
                          .device = FE_DEVICE_CPU};
    return fe_loader_new(ds, &c);
}

/* The next batch copied to the host; its tensors are released right away. */
static bool next_batch(fe_loader *l, int32_t *x, int32_t *y) {
    fe_scope *s = fe_scope_begin();
    fe_tensor *tx = NULL, *ty = NULL;
    bool ok = fe_loader_next(l, &tx, &ty) == FE_OK && fe_ndim(tx) == 2 && fe_dim(tx, 0) == B &&
              fe_dim(tx, 1) == T && fe_dtype_of(tx) == FE_I32 &&
              fe_to_host(tx, x, FE_I32) == FE_OK && fe_to_host(ty, y, FE_I32) == FE_OK;
    fe_scope_end(s);
    return ok;
}

/* Which window (start / T) a row comes from, checking row and targets against the data. */
static int64_t row_window(const int32_t *x, const int32_t *y) {
    for (int64_t w = 0; w < (NTOK - 1) / T; w++)
        if (!memcmp(x, g_tok + w * T, T * sizeof *x))
            return memcmp(y, g_tok + w * T + 1, T * sizeof *y) ? -2 : w;
    return -1;
}

TEST(loader_targets_are_inputs_shifted) {
    fe_dataset *ds = loader_dataset();
    fe_loader *l = make_loader(ds, 7, 2, true);
    CHECK(l != NULL);
    if (!l) {
        fe_dataset_free(ds);
        return;
    }
    CHECK(fe_loader_batches_per_epoch(l) == ((NTOK - 1) / T) / B);
    int32_t x[B * T], y[B * T];
    for (int k = 0; k < 5; k++) {
        CHECK(next_batch(l, x, y));
        for (int b = 0; b < B; b++) {
            for (int t = 0; t + 1 < T; t++)
                CHECK(y[b * T + t] == x[b * T + t + 1]);
            CHECK(row_window(x + b * T, y + b * T) >= 0);
        }
    }
    fe_loader_free(l);
    fe_dataset_free(ds);
}

TEST(loader_epoch_visits_every_window_once_and_wraps) {
    fe_dataset *ds = loader_dataset();
    fe_loader *l = make_loader(ds, 99, 3, true);
    CHECK(l != NULL);
    if (!l) {
        fe_dataset_free(ds);
        return;
    }
    int64_t nb = fe_loader_batches_per_epoch(l), nwin = (NTOK - 1) / T;
    int seen[(NTOK - 1) / T] = {0};
    int64_t first_epoch[64 * B], second_epoch[64 * B];
    int32_t x[B * T], y[B * T];
    for (int e = 0; e < 2; e++)
        for (int64_t k = 0; k < nb; k++) {
            fe_loader_state st = fe_loader_get_state(l);
            CHECK(st.epoch == e && st.index == k);
            CHECK(next_batch(l, x, y));
            for (int b = 0; b < B; b++) {
                int64_t w = row_window(x + b * T, y + b * T);
                CHECK(w >= 0);
                if (w < 0) continue;
                if (e == 0)
                    seen[w]++, first_epoch[k * B + b] = w;
                else
                    second_epoch[k * B + b] = w;
            }
        }
    int dup = 0, visited = 0;
    for (int64_t w = 0; w < nwin; w++)
        dup += seen[w] > 1, visited += seen[w] == 1;
    CHECK(dup == 0 && visited == nb * B); /* nwin = 124 = 31 batches of 4: nothing dropped */
    CHECK(memcmp(first_epoch, second_epoch, (size_t)(nb * B) * sizeof(int64_t)) != 0);
    CHECK(fe_loader_get_state(l).epoch == 2 && fe_loader_get_state(l).index == 0);
    fe_loader_free(l);
    /* without shuffling batch k holds windows kB .. kB+B-1 */
    l = make_loader(ds, 99, 0, false);
    CHECK(next_batch(l, x, y) && next_batch(l, x, y));
    CHECK(row_window(x, y) == B && row_window(x + 3 * T, y + 3 * T) == B + 3);
    fe_loader_free(l);
    fe_dataset_free(ds);
}

TEST(loader_same_seed_same_batches) {
    fe_dataset *ds = loader_dataset();
    fe_loader *a = make_loader(ds, 5, 2, true), *b = make_loader(ds, 5, 0, true);
    fe_loader *c = make_loader(ds, 6, 2, true);
    fe_dataset_free(ds); /* the loaders hold their own references */
    int32_t xa[B * T], ya[B * T], xb[B * T], yb[B * T], xc[B * T], yc[B * T];
    int differ = 0;
    for (int k = 0; k < 70; k++) { /* crosses two epoch boundaries */
        CHECK(next_batch(a, xa, ya) && next_batch(b, xb, yb) && next_batch(c, xc, yc));
        CHECK(!memcmp(xa, xb, sizeof xa) && !memcmp(ya, yb, sizeof ya));
        differ += memcmp(xa, xc, sizeof xa) != 0;
    }
    CHECK(differ > 60);
    fe_loader_free(a), fe_loader_free(b), fe_loader_free(c);
}

TEST(loader_resume_from_saved_state) {
    fe_dataset *ds = loader_dataset();
    fe_loader *a = make_loader(ds, 42, 3, true);
    int32_t x[B * T], y[B * T], x2[B * T], y2[B * T];
    for (int k = 0; k < 40; k++)
        CHECK(next_batch(a, x, y)); /* into the second epoch */
    fe_loader_state saved = fe_loader_get_state(a);
    CHECK(saved.seed == 42 && saved.epoch == 1 && saved.index == 40 - 31);
    fe_loader *b = make_loader(ds, 1, 3, true); /* another seed: the state carries it */
    CHECK(next_batch(b, x2, y2));               /* it has already prefetched its own batches */
    CHECK(fe_loader_set_state(b, saved) == FE_OK);
    fe_loader *c = make_loader(ds, 42, 0, true);
    CHECK(fe_loader_set_state(c, saved) == FE_OK);
    for (int k = 0; k < 30; k++) {
        int32_t x3[B * T], y3[B * T];
        CHECK(next_batch(a, x, y) && next_batch(b, x2, y2) && next_batch(c, x3, y3));
        CHECK(!memcmp(x, x2, sizeof x) && !memcmp(y, y2, sizeof y));
        CHECK(!memcmp(x, x3, sizeof x) && !memcmp(y, y3, sizeof y));
    }
    CHECK_ERROR(fe_loader_set_state(b, (fe_loader_state){1, 0, 31}) != FE_OK, "outside an epoch");
    CHECK_ERROR(fe_loader_set_state(b, (fe_loader_state){1, -1, 0}) != FE_OK, "outside an epoch");
    fe_loader_free(a), fe_loader_free(b), fe_loader_free(c);
    fe_dataset_free(ds);
}

TEST(loader_refuses_small_data_and_bad_config) {
    fe_dataset *ds = fe_dataset_from_tokens(g_tok, 3 * T); /* 2 windows < B */
    CHECK_ERROR(make_loader(ds, 1, 2, true) == NULL, "fewer than one batch");
    fe_loader_config c = {.batch = 0, .seq_len = T, .device = FE_DEVICE_CPU};
    CHECK_ERROR(fe_loader_new(ds, &c) == NULL, "bad config");
    CHECK_ERROR(fe_loader_new(NULL, &c) == NULL, "NULL");
    fe_dataset_free(ds);
}
