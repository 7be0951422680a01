/* ferric data: R serialization reader (for the Jane Austen corpus), token datasets,
 * llm.c token shards, the byte tokenizer, and the batch loader. */
#ifndef FERRIC_DATA_H
#define FERRIC_DATA_H

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- R serialization (XDR format, versions 2 and 3) ------------------------ */

/* Object types; the numbers are R's SEXPTYPE codes. */
typedef enum fe_rtype {
    FE_R_NULL = 0,
    FE_R_SYM = 1,       /* a symbol; `chars` holds its name */
    FE_R_LIST = 2,      /* a pairlist, flattened: `elts` values, `tags` symbols (or NULL) */
    FE_R_ENV = 4,       /* an environment (contents not kept) */
    FE_R_LANG = 6,      /* a call, flattened like FE_R_LIST */
    FE_R_CHAR = 9,      /* one string; `chars` is NULL for NA_STRING */
    FE_R_LGL = 10,      /* logicals in `ints` (NA = INT32_MIN) */
    FE_R_INT = 13,      /* integers in `ints` (NA = INT32_MIN) */
    FE_R_REAL = 14,     /* doubles in `reals` */
    FE_R_STR = 16,      /* a character vector: `elts` are FE_R_CHAR objects */
    FE_R_VEC = 19,      /* a generic vector (list): `elts` */
    FE_R_EXPR = 20,     /* an expression vector: `elts` */
    FE_R_RAW = 24,      /* bytes in `raw` */
    FE_R_S4 = 25,       /* an S4 object: attributes only */
    FE_R_SPECIAL = 1000 /* global/base/empty env, base namespace, missing arg, unbound value */
} fe_rtype;

/* Encoding flags of an FE_R_CHAR (R's LEVELS bits). */
#define FE_R_ENC_LATIN1 (1 << 2)
#define FE_R_ENC_UTF8 (1 << 3)
#define FE_R_ENC_BYTES (1 << 1)
#define FE_R_ENC_ASCII (1 << 6)

typedef struct fe_robj fe_robj;
struct fe_robj {
    fe_rtype type;
    int64_t length;  /* vectors/lists: elements; CHAR and SYM: bytes of text (-1 for NA) */
    int levels;      /* R's LEVELS bits (CHAR: FE_R_ENC_*); special code for FE_R_SPECIAL */
    bool is_object;  /* R's OBJECT bit (has a class) */
    char *chars;     /* CHAR / SYM: text, NUL-terminated (may hold inner NULs) */
    int32_t *ints;   /* LGL / INT */
    double *reals;   /* REAL */
    uint8_t *raw;    /* RAW */
    fe_robj **elts;  /* STR, VEC, EXPR, LIST, LANG */
    fe_robj **tags;  /* LIST, LANG: the tag symbol of each element, or NULL */
    fe_robj *attrib; /* the attributes as a FE_R_LIST, or NULL */
};

/* A parsed serialization; owns every object reachable from its root. */
typedef struct fe_rfile fe_rfile;

/* Parse R's XDR serialization ("X\n" header) from memory. NULL + FE_ERR_FORMAT on
 * malformed, truncated or unsupported input (the message names the problem and offset). */
fe_rfile *fe_r_unserialize(const void *buf, size_t n);
/* Read a .rds file (gzip-compressed or plain serialization). NULL + FE_ERR_IO/FORMAT. */
fe_rfile *fe_r_read_rds(const char *path);
/* The top-level object. */
const fe_robj *fe_r_root(const fe_rfile *f);
/* Release the parsed file and all its objects. NULL is fine. */
void fe_r_free(fe_rfile *f);
/* The attribute `name` of `o` (e.g. "names", "class"), or NULL when absent. */
const fe_robj *fe_r_attr(const fe_robj *o, const char *name);
/* Element `name` of a named VEC/STR (via its "names") or a tagged LIST, or NULL. */
const fe_robj *fe_r_get(const fe_robj *o, const char *name);
/* String i of a STR (NULL for NA_STRING, out of range, or another type). */
const char *fe_r_str(const fe_robj *o, int64_t i);

/* ---- R lazy-load databases (.rdx index + .rdb data) ------------------------- */

typedef struct fe_rdb fe_rdb;
/* Open the database `base`.rdx / `base`.rdb (e.g. ".../data/Rdata"). NULL + FE_ERR_IO/FORMAT. */
fe_rdb *fe_rdb_open(const char *base);
/* Number of objects and the name of object i (NULL when i is out of range). */
int fe_rdb_count(const fe_rdb *db);
const char *fe_rdb_name(const fe_rdb *db, int i);
/* Read, decompress and parse object `name`. NULL + FE_ERR_ARG (no such object)/IO/FORMAT. */
fe_rfile *fe_rdb_fetch(fe_rdb *db, const char *name);
void fe_rdb_close(fe_rdb *db);

/* ---- the Jane Austen corpus --------------------------------------------------- */

/* Write the six novels of R package janeaustenr (publication order, one line per
 * element, a blank line between novels) to `out_txt_path` atomically. `pkg_root_dir`
 * is the unpacked .deb root, the R library folder or the package folder itself.
 * Returns the number of bytes written in *bytes_out (may be NULL). Errors: IO, FORMAT. */
fe_status fe_austen_extract(const char *pkg_root_dir, const char *out_txt_path, int64_t *bytes_out);

/* ---- the byte-level tokenizer ------------------------------------------------- */

#define FE_BYTES_VOCAB 256
/* Tokens of `n` bytes of text into out[n] (token = byte value); returns n. */
int64_t fe_bytes_encode(const void *text, size_t n, int32_t *out);
/* Bytes of `n` tokens into out[n]; FE_ERR_RANGE when a token is outside [0, 256). */
fe_status fe_bytes_decode(const int32_t *tokens, int64_t n, char *out);

/* ---- token shards (llm.c layout) ---------------------------------------------- */

/* Header: 256 little-endian int32 words: magic, version, token count; then the tokens,
 * uint16 for version 1 and uint32 for version 2. */
#define FE_SHARD_MAGIC 20240520
#define FE_SHARD_HEADER_WORDS 256

/* Write `n` tokens as a shard of `token_bytes` 2 (version 1) or 4 (version 2),
 * atomically. FE_ERR_RANGE when a token does not fit, FE_ERR_IO on write failure. */
fe_status fe_shard_write(const char *path, const int32_t *tokens, int64_t n, int token_bytes);

/* ---- datasets: a read-only stream of tokens ----------------------------------- */

typedef struct fe_dataset fe_dataset;
/* Memory-map a shard file; validates size, magic, version and count (FE_ERR_IO/FORMAT). */
fe_dataset *fe_dataset_open_shard(const char *path);
/* Read a text file and tokenize it with the byte tokenizer (vocab 256). */
fe_dataset *fe_dataset_open_text(const char *path);
/* A dataset holding a copy of `n` tokens (each must be >= 0). */
fe_dataset *fe_dataset_from_tokens(const int32_t *tokens, int64_t n);
/* Number of tokens. */
int64_t fe_dataset_len(const fe_dataset *ds);
/* One plus the largest token value (scans the data once, then cached). */
int64_t fe_dataset_vocab_bound(fe_dataset *ds);
/* Copy tokens [start, start+n) into out. FE_ERR_RANGE when outside the dataset. */
fe_status fe_dataset_read(const fe_dataset *ds, int64_t start, int64_t n, int32_t *out);
/* Split into train (first part) and val (last `val_frac` of the tokens, 0 <= val_frac < 1);
 * both share the underlying data. Caller frees both. */
fe_status fe_dataset_split(const fe_dataset *ds, double val_frac, fe_dataset **train,
                           fe_dataset **val);
/* Release (the data stays alive while other views of it exist). NULL is fine. */
void fe_dataset_free(fe_dataset *ds);

/* ---- the data loader ------------------------------------------------------------ */

typedef struct fe_loader_config {
    int64_t batch;    /* B: sequences per batch */
    int64_t seq_len;  /* T: tokens per sequence */
    uint64_t seed;    /* shuffle seed */
    bool shuffle;     /* shuffle the window order each epoch (else sequential) */
    int prefetch;     /* batches prepared ahead by a background thread; 0 = none */
    fe_device device; /* where the batch tensors are created */
} fe_loader_config;

/* The loader's position: the next batch is batch `index` of epoch `epoch`. */
typedef struct fe_loader_state {
    uint64_t seed;
    int64_t epoch;
    int64_t index;
} fe_loader_state;

typedef struct fe_loader fe_loader;
/* A loader over windows of T+1 tokens starting at multiples of T (so every token
 * but the first is a target once per epoch); the last partial batch of an epoch is
 * dropped. The loader keeps its own reference to the data (the caller may free
 * `ds`). FE_ERR_ARG on a bad config, FE_ERR_RANGE when the data holds fewer than B
 * windows. */
fe_loader *fe_loader_new(const fe_dataset *ds, const fe_loader_config *cfg);
/* The next batch: *inputs and *targets are (B, T) i32 on cfg.device, targets being
 * inputs shifted by one token. Wraps to the next epoch (reshuffled) at the end. */
fe_status fe_loader_next(fe_loader *l, fe_tensor **inputs, fe_tensor **targets);
/* Batches in one epoch. */
int64_t fe_loader_batches_per_epoch(const fe_loader *l);
/* The position of the next batch (save it with a checkpoint). */
fe_loader_state fe_loader_get_state(const fe_loader *l);
/* Move to a saved position. FE_ERR_RANGE when index >= batches per epoch or epoch < 0. */
fe_status fe_loader_set_state(fe_loader *l, fe_loader_state s);
/* Stop the prefetch thread and release the loader. NULL is fine. */
void fe_loader_free(fe_loader *l);

#ifdef __cplusplus
}
#endif
#endif
