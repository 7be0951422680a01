/* ferric core: errors, dtypes, devices, tensors, scopes, random numbers. */
#ifndef FERRIC_CORE_H
#define FERRIC_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FE_VERSION_MAJOR 0
#define FE_VERSION_MINOR 1
#define FE_VERSION_PATCH 0
#define FE_VERSION_STRING "0.1.0"
#define FE_MAX_DIMS 8

/* ---- errors ------------------------------------------------------------ */

typedef enum fe_status {
    FE_OK = 0,
    FE_ERR_ARG,    /* a NULL or otherwise invalid argument */
    FE_ERR_SHAPE,  /* shapes do not fit the operation */
    FE_ERR_DTYPE,  /* the dtype is not supported by the operation */
    FE_ERR_RANGE,  /* an index or value out of range */
    FE_ERR_OOM,    /* out of memory (host or device) */
    FE_ERR_IO,     /* a file could not be read or written */
    FE_ERR_FORMAT, /* a file or string is malformed */
    FE_ERR_DEVICE, /* the device is missing or failed */
    FE_ERR_STATE,  /* the call is not valid in the current state */
} fe_status;

/* The message of the last error on this thread ("" when none). */
const char *fe_last_error(void);
/* The status code of the last error on this thread (FE_OK when none). */
fe_status fe_last_status(void);
/* Forget the last error on this thread. */
void fe_clear_error(void);
/* Set the thread's error; returns `st` so it can end a `return` statement. */
fe_status fe_set_error(fe_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* A short name for a status code ("shape error"). */
const char *fe_status_name(fe_status st);

/* ---- dtypes and devices ------------------------------------------------ */

typedef enum fe_dtype {
    FE_F32 = 0,
    FE_F64,
    FE_F16,
    FE_BF16,
    FE_I32,
    FE_I64,
    FE_U8,
    FE_I8,
    FE_DTYPE_COUNT
} fe_dtype;

/* Bytes of one element of `dt`. */
size_t fe_dtype_size(fe_dtype dt);
/* The lower-case name of `dt` ("f32", "bf16"). */
const char *fe_dtype_name(fe_dtype dt);
/* Parse a dtype name ("f32", "float32", "bf16", ...); returns false when unknown. */
bool fe_dtype_parse(const char *name, fe_dtype *out);
/* True for f32, f64, f16 and bf16. */
bool fe_dtype_is_float(fe_dtype dt);

typedef enum fe_device_type { FE_CPU = 0, FE_CUDA = 1, FE_DEVICE_TYPE_COUNT } fe_device_type;

typedef struct fe_device {
    fe_device_type type;
    int index;
} fe_device;

#define FE_DEVICE_CPU ((fe_device){FE_CPU, 0})

/* True when a backend for `type` is compiled in and has at least one device. */
bool fe_device_available(fe_device_type type);
/* Parse "cpu", "cuda", "cuda:1" or "auto" (CUDA when available, else CPU). */
bool fe_device_parse(const char *name, fe_device *out);
/* Write "cpu" or "cuda:N" into buf; returns buf. */
const char *fe_device_str(fe_device dev, char *buf, size_t n);
/* Wait for all queued work on the device to finish. */
fe_status fe_device_sync(fe_device dev);
/* Bytes currently allocated / peak allocated on the device by ferric. */
size_t fe_device_mem_current(fe_device dev);
size_t fe_device_mem_peak(fe_device dev);
/* Reset the device's peak-memory figure to the current one. */
void fe_device_mem_reset_peak(fe_device dev);

/* ---- tensors ----------------------------------------------------------- */

typedef struct fe_tensor fe_tensor;

/* Creation. `shape` has `ndim` entries (0 <= ndim <= 8). Returns NULL on error.
 * A tensor created while a scope is open belongs to that scope; otherwise the
 * caller owns it and releases it with fe_free. */
fe_tensor *fe_empty(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev);
fe_tensor *fe_zeros(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev);
fe_tensor *fe_ones(int ndim, const int64_t *shape, fe_dtype dt, fe_device dev);
fe_tensor *fe_full(int ndim, const int64_t *shape, double value, fe_dtype dt, fe_device dev);
/* 1-D tensor start, start+step, ... below end. */
fe_tensor *fe_arange(double start, double end, double step, fe_dtype dt, fe_device dev);
/* Uniform in [lo, hi) / normal(mean, std) from the global counter-based generator. */
fe_tensor *fe_rand(int ndim, const int64_t *shape, double lo, double hi, fe_dtype dt, fe_device dev);
fe_tensor *fe_randn(int ndim, const int64_t *shape, double mean, double std, fe_dtype dt,
                    fe_device dev);
/* A tensor holding a copy of host memory `data` of dtype `dt`. */
fe_tensor *fe_from_data(const void *data, int ndim, const int64_t *shape, fe_dtype dt,
                        fe_device dev);
/* Like fe_empty/fe_zeros but shaped like `t`. */
fe_tensor *fe_empty_like(const fe_tensor *t);
fe_tensor *fe_zeros_like(const fe_tensor *t);

/* Release the caller's reference. A tensor that belongs to a scope is released by
 * the scope; fe_free on it does nothing. NULL is fine. */
void fe_free(fe_tensor *t);
/* Take a tensor out of its scope so that it outlives it; the caller then owns it. */
fe_tensor *fe_keep(fe_tensor *t);

/* Shape queries. */
int fe_ndim(const fe_tensor *t);
int64_t fe_dim(const fe_tensor *t, int d); /* negative d counts from the end */
const int64_t *fe_shape(const fe_tensor *t);
const int64_t *fe_strides(const fe_tensor *t); /* in elements */
int64_t fe_numel(const fe_tensor *t);
fe_dtype fe_dtype_of(const fe_tensor *t);
fe_device fe_device_of(const fe_tensor *t);
bool fe_is_contiguous(const fe_tensor *t);
/* Format "(2, 3, 4) f32 cpu" into buf; returns buf. */
const char *fe_shape_str(const fe_tensor *t, char *buf, size_t n);

/* Copy the tensor's elements, in row-major order, into host memory as dtype `dt`. */
fe_status fe_to_host(const fe_tensor *t, void *dst, fe_dtype dt);
/* Copy host memory of dtype `dt` into the tensor's elements (row-major order). */
fe_status fe_from_host(fe_tensor *t, const void *src, fe_dtype dt);
/* The single element of a 1-element tensor as a double (synchronises the device). */
double fe_item(const fe_tensor *t);
/* Pointer to the first element of a CPU tensor (NULL for device tensors). */
void *fe_data(const fe_tensor *t);
/* A copy on another device (same dtype). */
fe_tensor *fe_to_device(const fe_tensor *t, fe_device dev);
/* Overwrite dst's elements with src's (same shape; dtype cast, device copy as needed). */
fe_status fe_copy_(fe_tensor *dst, const fe_tensor *src);
/* Set every element to `value`. */
fe_status fe_fill_(fe_tensor *t, double value);

/* ---- scopes ------------------------------------------------------------ */

typedef struct fe_scope fe_scope;
/* Open a scope: tensors created until it ends belong to it. Scopes nest. */
fe_scope *fe_scope_begin(void);
/* Release every tensor of the scope (and the scopes opened inside it). */
void fe_scope_end(fe_scope *s);
/* Number of tensors alive in the whole process (for leak checks in tests). */
int64_t fe_live_tensors(void);

/* ---- random numbers ---------------------------------------------------- */

/* Seed the global generator (Philox4x32-10, counter-based: the CPU and CUDA
 * backends draw the same numbers for the same seed and offset). */
void fe_manual_seed(uint64_t seed);
typedef struct fe_rng_state {
    uint64_t seed;
    uint64_t offset; /* counter position, in 4-number blocks */
} fe_rng_state;
fe_rng_state fe_rng_get_state(void);
void fe_rng_set_state(fe_rng_state s);

/* ---- threads ----------------------------------------------------------- */

/* Threads used by the CPU backend (default: all cores or OMP_NUM_THREADS). */
void fe_set_num_threads(int n);
int fe_get_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif
