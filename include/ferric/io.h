/* ferric io: safetensors files (single and sharded), Hugging Face Llama config.json,
 * and atomic file writing. */
#ifndef FERRIC_IO_H
#define FERRIC_IO_H

#include "ferric/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- atomic files ----------------------------------------------------------- */

/* A file written to a temporary name next to its destination and renamed over it on
 * commit, so that readers see either the old file or the complete new one. */
typedef struct fe_atomic_file fe_atomic_file;
/* Start writing `path` (creates "<dir>/.<name>.tmp.XXXXXX"); NULL with FE_ERR_IO on failure. */
fe_atomic_file *fe_atomic_open(const char *path);
/* Append n bytes; FE_ERR_IO on a short write (the file is then only fit for abort). */
fe_status fe_atomic_write(fe_atomic_file *f, const void *data, size_t n);
/* fsync, close, rename over the destination, fsync the folder; frees f. On failure
 * the temporary file is removed, the destination is untouched, and f is freed. */
fe_status fe_atomic_commit(fe_atomic_file *f);
/* Close and remove the temporary file, leaving the destination untouched; frees f. NULL ok. */
void fe_atomic_abort(fe_atomic_file *f);
/* Write n bytes to path atomically (open, write, commit, or abort on failure). */
fe_status fe_write_file_atomic(const char *path, const void *data, size_t n);

/* ---- safetensors: one file -------------------------------------------------- */

typedef struct fe_safetensors fe_safetensors;

/* What the header says about one tensor. */
typedef struct fe_st_info {
    const char *name;       /* owned by the handle */
    const char *dtype_name; /* the file's dtype string: "F32", "BF16", "BOOL", "I16", ... */
    bool has_fe_dtype;      /* false for dtypes ferric cannot hold (I16, U16, U32, U64, F8_*) */
    fe_dtype dtype; /* the ferric dtype it loads as (BOOL loads as u8); valid when has_fe_dtype */
    int ndim;
    int64_t shape[FE_MAX_DIMS];
    int64_t numel;
    uint64_t offset; /* byte offset of the data from the start of the data area */
    uint64_t nbytes;
} fe_st_info;

/* Open and validate a .safetensors file (memory-mapped; stays mapped until close).
 * NULL with FE_ERR_IO (missing/unreadable file) or FE_ERR_FORMAT (bad header, naming
 * the problem: header length, JSON, dtype, shape, offsets, overlap). */
fe_safetensors *fe_safetensors_open(const char *path);
/* The same from a buffer in memory, which must outlive the handle (not copied). */
fe_safetensors *fe_safetensors_open_memory(const void *data, size_t size);
/* Unmap and free. NULL ok. */
void fe_safetensors_close(fe_safetensors *f);
/* Number of tensors, and the i-th name in header order (NULL when i is out of range). */
int64_t fe_safetensors_count(const fe_safetensors *f);
const char *fe_safetensors_name(const fe_safetensors *f, int64_t i);
/* Index of the tensor called name, or -1 (no error set). */
int64_t fe_safetensors_find(const fe_safetensors *f, const char *name);
/* Header facts about `name`; FE_ERR_ARG when there is no such tensor. */
fe_status fe_safetensors_info(const fe_safetensors *f, const char *name, fe_st_info *out);
/* The raw little-endian bytes of `name` inside the mapping (valid until close); NULL if absent. */
const void *fe_safetensors_raw(const fe_safetensors *f, const char *name, size_t *nbytes);
/* The `__metadata__` map: count, i-th key, and the value of a key (NULL when absent). */
int64_t fe_safetensors_metadata_count(const fe_safetensors *f);
const char *fe_safetensors_metadata_key(const fe_safetensors *f, int64_t i);
const char *fe_safetensors_metadata(const fe_safetensors *f, const char *key);
/* A new tensor on `dev` holding a copy of `name` in its file dtype. FE_ERR_ARG when absent,
 * FE_ERR_DTYPE ("unsupported dtype") when ferric has no such dtype. (Always a copy: ferric
 * storage cannot yet keep a mapping alive, so there is no zero-copy view.) */
fe_tensor *fe_safetensors_load(const fe_safetensors *f, const char *name, fe_device dev);
/* Like fe_safetensors_load, then cast to dt (round-to-nearest-even for narrowing floats). */
fe_tensor *fe_safetensors_load_as(const fe_safetensors *f, const char *name, fe_dtype dt,
                                  fe_device dev);

/* A name and a tensor, for writing. */
typedef struct fe_named_tensor {
    const char *name;
    const fe_tensor *tensor;
} fe_named_tensor;

/* A string key and value (safetensors `__metadata__`). */
typedef struct fe_kv {
    const char *key;
    const char *value;
} fe_kv;

/* Write n named tensors (any device, any layout; copied to the host) and optional
 * metadata to `path` as safetensors, atomically: on any error the old file is left
 * as it was. FE_ERR_ARG for NULL/empty/duplicate names or NULL tensors, FE_ERR_IO on
 * write failures. */
fe_status fe_safetensors_save(const char *path, const fe_named_tensor *tensors, int64_t n,
                              const fe_kv *meta, int64_t n_meta);

/* ---- safetensors: a model's weights over one or more files ------------------- */

/* The tensors of a model: a single .safetensors file, a sharded set described by
 * model.safetensors.index.json (its "weight_map" of name -> shard file), or a folder
 * holding either (the index is preferred). */
typedef struct fe_weights fe_weights;

/* Open a .safetensors file, an index .json, or a folder with model.safetensors.index.json
 * or model.safetensors. Every shard is opened and validated, and every name in the
 * weight map must exist in its shard. NULL with FE_ERR_IO / FE_ERR_FORMAT. */
fe_weights *fe_weights_open(const char *path);
/* Parse an index's JSON text from memory (no shard is opened); for tools and fuzzing.
 * On success *names and *files are parallel arrays of n malloc'ed strings, freed with
 * fe_weights_free_map. */
fe_status fe_weights_parse_index(const char *json, size_t len, char ***names, char ***files,
                                 int64_t *n);
void fe_weights_free_map(char **names, char **files, int64_t n);
void fe_weights_close(fe_weights *w);
/* Number of tensors and the i-th name (sorted by name for an index; header order for one file). */
int64_t fe_weights_count(const fe_weights *w);
const char *fe_weights_name(const fe_weights *w, int64_t i);
/* Number of files and the i-th file's path. */
int64_t fe_weights_file_count(const fe_weights *w);
const char *fe_weights_file_path(const fe_weights *w, int64_t i);
/* The open file that holds `name` (NULL with FE_ERR_ARG when absent). */
const fe_safetensors *fe_weights_file_of(const fe_weights *w, const char *name);
/* As fe_safetensors_info / _load / _load_as, looking the tensor up across files. */
fe_status fe_weights_info(const fe_weights *w, const char *name, fe_st_info *out);
fe_tensor *fe_weights_load(const fe_weights *w, const char *name, fe_device dev);
fe_tensor *fe_weights_load_as(const fe_weights *w, const char *name, fe_dtype dt, fe_device dev);

/* ---- Hugging Face Llama config.json ------------------------------------------- */

#define FE_MAX_EOS_IDS 8

typedef struct fe_hf_config {
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t num_key_value_heads; /* default num_attention_heads */
    int64_t head_dim;            /* default hidden_size / num_attention_heads */
    int64_t max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    /* rope scaling: type "" when none; "llama3" fills the four fields below */
    char rope_scaling_type[16];
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int64_t rope_original_max_position_embeddings;
    bool tie_word_embeddings;
    bool attention_bias;
    bool mlp_bias;
    char torch_dtype[16]; /* "bfloat16", "float32", ... or "" */
    int64_t bos_token_id; /* LlamaConfig's default 1 when absent; -1 when null */
    int64_t eos_token_id; /* the first id (default 2); -1 when null or [] */
    int n_eos_token_ids;  /* all ids (a list in the file, or just one) */
    int64_t eos_token_ids[FE_MAX_EOS_IDS];
} fe_hf_config;

/* A config with Hugging Face's LlamaConfig defaults for the optional fields
 * (eps 1e-6, theta 10000, 2048 positions, bos 1, eos 2, no scaling, untied, no biases);
 * sizes are 0, so it does not validate until they are filled in. */
fe_hf_config fe_hf_config_default(void);
/* Parse config.json text. FE_ERR_FORMAT naming the field: missing, wrong type, out of
 * range, heads not dividing hidden_size, kv heads not dividing heads, bad rope_scaling. */
fe_status fe_hf_config_parse(const char *json, size_t len, fe_hf_config *out);
/* Read a config.json file, or the config.json inside a folder. */
fe_status fe_hf_config_load(const char *path, fe_hf_config *out);
/* Check the sizes fit together (the checks parse runs); FE_ERR_FORMAT naming the field. */
fe_status fe_hf_config_validate(const fe_hf_config *c);
/* The config as JSON text that transformers' LlamaForCausalLM accepts; malloc'ed, NULL on error. */
char *fe_hf_config_to_json(const fe_hf_config *c);
/* Write that text to path atomically. */
fe_status fe_hf_config_save(const char *path, const fe_hf_config *c);
/* Parameters of the model the config describes (embeddings, layers, norm, head unless
 * tied); -1 when the count does not fit in int64. */
int64_t fe_hf_config_num_params(const fe_hf_config *c);

#ifdef __cplusplus
}
#endif
#endif
