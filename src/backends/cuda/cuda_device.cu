/* CUDA devices: lazy per-device state (stream, BLAS handles, error record), the
 * caching allocator, copies, synchronisation and the device-side error check. */
#include "backends/cuda/cuda_internal.cuh"

#include <inttypes.h>
#include <pthread.h>

#define CU_MAX_DEVICES 64
#define CU_SMALL_MAX ((size_t)1 << 20)   /* sizes up to 1 MiB round to powers of two */
#define CU_SMALL_MIN ((size_t)512)       /* ... of at least 512 bytes */
#define CU_LARGE_GRAIN ((size_t)2 << 20) /* larger sizes round to 2 MiB */
#define CU_WORKSPACE ((size_t)32 << 20)  /* cuBLASLt workspace */

fe_status cu_check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return FE_OK;
    return fe_set_error(FE_ERR_DEVICE, "CUDA error in %s: %s (%s)", what, cudaGetErrorString(e),
                        cudaGetErrorName(e));
}

/* ---- probing and per-device state ------------------------------------------------ */

static int g_ndev = -1;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static cu_dev *g_devs[CU_MAX_DEVICES];

extern "C" bool fe_cuda_probe(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* "no device" / "no driver" must not linger */
        n = 0;
    }
    if (n > CU_MAX_DEVICES) n = CU_MAX_DEVICES;
    __atomic_store_n(&g_ndev, n, __ATOMIC_RELEASE);
    return n > 0;
}

static fe_status dev_init(int i, cu_dev **out) {
    cu_dev *d = (cu_dev *)calloc(1, sizeof *d);
    if (!d) return fe_set_error(FE_ERR_OOM, "cuda:%d: out of host memory for device state", i);
    d->index = i;
    fe_status st = cu_check(cudaSetDevice(i), "cudaSetDevice");
    if (!st)
        st = cu_check(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking),
                      "cudaStreamCreate");
    if (!st)
        st = cu_check(cudaDeviceGetAttribute(&d->sm_count, cudaDevAttrMultiProcessorCount, i),
                      "cudaDeviceGetAttribute");
    if (!st)
        st = cu_check(cudaMalloc((void **)&d->err, 4 * sizeof(unsigned long long)),
                      "cudaMalloc (error record)");
    if (!st)
        st = cu_check(cudaMemsetAsync(d->err, 0, 4 * sizeof(unsigned long long), d->stream),
                      "cudaMemsetAsync");
    if (!st && cublasLtCreate(&d->lt) != CUBLAS_STATUS_SUCCESS)
        st = fe_set_error(FE_ERR_DEVICE, "cuda:%d: cublasLtCreate failed", i);
    if (!st && cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS)
        st = fe_set_error(FE_ERR_DEVICE, "cuda:%d: cublasCreate failed", i);
    if (!st && cublasSetStream(d->blas, d->stream) != CUBLAS_STATUS_SUCCESS)
        st = fe_set_error(FE_ERR_DEVICE, "cuda:%d: cublasSetStream failed", i);
    if (!st) st = cu_check(cudaMalloc(&d->workspace, CU_WORKSPACE), "cudaMalloc (BLAS workspace)");
    if (!st) d->workspace_size = CU_WORKSPACE;
    if (!st &&
        cublasSetWorkspace(d->blas, d->workspace, d->workspace_size) != CUBLAS_STATUS_SUCCESS)
        st = fe_set_error(FE_ERR_DEVICE, "cuda:%d: cublasSetWorkspace failed", i);
    const char *tf = getenv("FE_TF32");
    d->tf32 = tf && !strcmp(tf, "1");
    if (!st) st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
    if (st) {
        /* leave the handles to the process: a failed device is not retried cheaply */
        free(d);
        return st;
    }
    *out = d;
    return FE_OK;
}

cu_dev *cu_dev_get(fe_device dev) {
    int n = __atomic_load_n(&g_ndev, __ATOMIC_ACQUIRE);
    if (n < 0) {
        fe_cuda_probe();
        n = __atomic_load_n(&g_ndev, __ATOMIC_ACQUIRE);
    }
    if (dev.type != FE_CUDA || dev.index < 0 || dev.index >= n) {
        fe_set_error(FE_ERR_DEVICE, "cuda:%d does not exist (%d CUDA device%s)", dev.index, n,
                     n == 1 ? "" : "s");
        return NULL;
    }
    cu_dev *d = __atomic_load_n(&g_devs[dev.index], __ATOMIC_ACQUIRE);
    if (!d) {
        pthread_mutex_lock(&g_init_lock);
        d = g_devs[dev.index];
        if (!d && dev_init(dev.index, &d) == FE_OK)
            __atomic_store_n(&g_devs[dev.index], d, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&g_init_lock);
        if (!d) return NULL;
    }
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != dev.index) {
        if (cu_check(cudaSetDevice(dev.index), "cudaSetDevice")) return NULL;
    }
    return d;
}

extern "C" void *fe_cuda_stream(int index) {
    cu_dev *d = cu_dev_get((fe_device){FE_CUDA, index});
    return d ? (void *)d->stream : NULL;
}

/* ---- the caching allocator -------------------------------------------------------- */

typedef struct cu_blk {
    void *p;
    struct cu_blk *next;
} cu_blk;

typedef struct cu_bin {
    size_t size;
    cu_blk *free;
    struct cu_bin *next;
} cu_bin;

typedef struct cu_pool {
    pthread_mutex_t lock;
    cu_bin *bins;
    size_t current, peak, reserved, cached;
    uint64_t n_malloc, n_reused;
} cu_pool;

static cu_pool g_pools[CU_MAX_DEVICES];
static pthread_once_t g_pools_once = PTHREAD_ONCE_INIT;

static void pools_init(void) {
    for (int i = 0; i < CU_MAX_DEVICES; i++)
        pthread_mutex_init(&g_pools[i].lock, NULL);
}

static cu_pool *pool_of(int index) {
    pthread_once(&g_pools_once, pools_init);
    return &g_pools[index];
}

/* The block size that serves a request of n bytes (0 when n is absurdly large). */
static size_t round_size(size_t n) {
    if (n > SIZE_MAX / 4) return 0;
    if (n <= CU_SMALL_MIN) return CU_SMALL_MIN;
    if (n <= CU_SMALL_MAX) {
        size_t s = CU_SMALL_MIN;
        while (s < n)
            s <<= 1;
        return s;
    }
    return (n + CU_LARGE_GRAIN - 1) / CU_LARGE_GRAIN * CU_LARGE_GRAIN;
}

static cu_bin *find_bin(cu_pool *pl, size_t size, bool create) {
    for (cu_bin *b = pl->bins; b; b = b->next)
        if (b->size == size) return b;
    if (!create) return NULL;
    cu_bin *b = (cu_bin *)calloc(1, sizeof *b);
    if (!b) return NULL;
    b->size = size;
    b->next = pl->bins;
    pl->bins = b;
    return b;
}

/* Hand every cached block back to the driver. */
static fe_status release_cached(cu_dev *d, cu_pool *pl) {
    pthread_mutex_lock(&pl->lock);
    cu_blk *all = NULL;
    for (cu_bin *b = pl->bins; b; b = b->next) {
        while (b->free) {
            cu_blk *k = b->free;
            b->free = k->next;
            k->next = all;
            all = k;
            pl->cached -= b->size;
            pl->reserved -= b->size;
        }
    }
    pthread_mutex_unlock(&pl->lock);
    /* blocks may still be read by queued kernels: let them finish first */
    fe_status st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
    while (all) {
        cu_blk *k = all;
        all = k->next;
        cudaError_t e = cudaFree(k->p);
        if (!st && e != cudaSuccess) st = cu_check(e, "cudaFree");
        free(k);
    }
    return st;
}

static int g_poison = -1; /* -1: not read from the environment yet */

extern "C" void fe_cuda_set_poison(bool on) {
    __atomic_store_n(&g_poison, on ? 1 : 0, __ATOMIC_RELAXED);
}

static bool poison_on(void) { return cu_env_flag("FE_CUDA_POISON", &g_poison); }

static int g_no_cache = -1;

/* FE_CUDA_NO_CACHE=1 (read once): exact-size cudaMalloc/cudaFree for every tensor, so that
 * compute-sanitizer sees each allocation's true bounds. Slow; for checking only. */
static bool no_cache(void) { return cu_env_flag("FE_CUDA_NO_CACHE", &g_no_cache); }

/* The block handed out: poisoned first in debug mode. */
static fe_status hand_out(cu_dev *d, void *p, size_t size, void **out) {
    *out = p;
    if (!poison_on()) return FE_OK;
    return cu_check(cudaMemsetAsync(p, 0xFF, size, d->stream), "cudaMemsetAsync (poison)");
}

/* FE_MEM_TRACE=1 (read once): keep a list of live blocks and, each time the peak grows
 * by 32 MiB or more, a histogram of the live sizes; at exit print the last one (largest
 * totals first) with whether it was taken with grad mode on (forward) or off (backward,
 * optimizer). For finding what holds memory at the peak; slow with many live blocks. */
typedef struct cu_trace_item { /* a live block */
    void *p;
    size_t n;
} cu_trace_item;
typedef struct cu_trace_bin { /* count blocks of n bytes */
    size_t n, count;
} cu_trace_bin;
static int g_trace = -1;
static cu_trace_item *g_live, *g_sorted;
static cu_trace_bin *g_snap;
static size_t g_nlive, g_caplive, g_nsnap, g_snap_peak;
static bool g_snap_grad;

static int trace_by_total(const void *a, const void *b) { /* largest count * n first */
    const cu_trace_bin *x = (const cu_trace_bin *)a, *y = (const cu_trace_bin *)b;
    size_t tx = x->n * x->count, ty = y->n * y->count;
    return tx < ty ? 1 : tx > ty ? -1 : 0;
}

static int trace_by_size(const void *a, const void *b) {
    size_t x = ((const cu_trace_item *)a)->n, y = ((const cu_trace_item *)b)->n;
    return x < y ? -1 : x > y ? 1 : 0;
}

static void trace_report(void) {
    qsort(g_snap, g_nsnap, sizeof *g_snap, trace_by_total);
    fprintf(stderr, "FE_MEM_TRACE: live blocks at the %.3f GiB peak (grad mode %s), "
                    "largest totals:\n",
            g_snap_peak / 1073741824.0, g_snap_grad ? "on: forward" : "off: backward/optimizer");
    for (size_t i = 0; i < g_nsnap && i < 40; i++)
        fprintf(stderr, "  %6zu x %12zu bytes = %8.3f GiB\n", g_snap[i].count, g_snap[i].n,
                (double)g_snap[i].n * g_snap[i].count / 1073741824.0);
}

static bool trace_on(void) {
    if (g_trace < 0) {
        const char *e = getenv("FE_MEM_TRACE");
        g_trace = e && !strcmp(e, "1");
        if (g_trace) atexit(trace_report);
    }
    return g_trace == 1;
}

static void trace_alloc(cu_pool *pl, void *p, size_t n) { /* under pl->lock */
    if (g_nlive == g_caplive) {
        size_t cap = g_caplive ? 2 * g_caplive : 4096;
        cu_trace_item *nl = (cu_trace_item *)realloc(g_live, cap * sizeof *nl);
        if (!nl) return;
        g_live = nl, g_caplive = cap;
    }
    g_live[g_nlive++] = (cu_trace_item){p, n};
    if (pl->current < g_snap_peak + ((size_t)32 << 20)) return;
    /* histogram by size: sort a copy by size, then count runs */
    cu_trace_item *s = (cu_trace_item *)realloc(g_sorted, g_nlive * sizeof *s);
    cu_trace_bin *h = s ? (cu_trace_bin *)realloc(g_snap, g_nlive * sizeof *h) : NULL;
    if (s) g_sorted = s;
    if (!h) return;
    g_snap = h;
    memcpy(s, g_live, g_nlive * sizeof *s);
    qsort(s, g_nlive, sizeof *s, trace_by_size);
    size_t m = 0;
    for (size_t i = 0; i < g_nlive;) {
        size_t j = i;
        while (j < g_nlive && s[j].n == s[i].n)
            j++;
        h[m++] = (cu_trace_bin){s[i].n, j - i};
        i = j;
    }
    g_nsnap = m, g_snap_peak = pl->current, g_snap_grad = fe_grad_enabled();
}

static void trace_free(void *p) { /* under the pool lock */
    for (size_t i = g_nlive; i-- > 0;)
        if (g_live[i].p == p) {
            g_live[i] = g_live[--g_nlive];
            return;
        }
}

static void note_alloc(cu_pool *pl, void *p, size_t nbytes) {
    pl->current += nbytes;
    if (pl->current > pl->peak) pl->peak = pl->current;
    if (trace_on()) trace_alloc(pl, p, nbytes);
}

extern "C" fe_status fe_cuda_alloc(fe_device dev, size_t nbytes, void **out) {
    *out = NULL;
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    if (nbytes == 0) return FE_OK;
    cu_pool *pl = pool_of(d->index);
    bool exact = no_cache();
    size_t size = exact ? nbytes : round_size(nbytes);
    if (size == 0)
        return fe_set_error(FE_ERR_OOM, "CUDA out of memory on cuda:%d: asked for %zu bytes",
                            d->index, nbytes);
    pthread_mutex_lock(&pl->lock);
    cu_bin *b = exact ? NULL : find_bin(pl, size, false);
    if (b && b->free) {
        cu_blk *k = b->free;
        b->free = k->next;
        pl->cached -= size;
        pl->n_reused++;
        note_alloc(pl, k->p, nbytes);
        pthread_mutex_unlock(&pl->lock);
        void *p = k->p;
        free(k);
        return hand_out(d, p, size, out);
    }
    pthread_mutex_unlock(&pl->lock);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        fe_status st = release_cached(d, pl);
        if (st) return st;
        e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, total = 0;
        cudaMemGetInfo(&fr, &total);
        (void)cudaGetLastError();
        if (e == cudaErrorMemoryAllocation) {
            pthread_mutex_lock(&pl->lock);
            size_t live = pl->current;
            pthread_mutex_unlock(&pl->lock);
            return fe_set_error(FE_ERR_OOM,
                                "CUDA out of memory on cuda:%d: asked for %zu bytes (%.3f GiB); "
                                "%zu bytes (%.3f GiB) free of %zu (%.3f GiB); ferric tensors hold "
                                "%zu bytes (%.3f GiB)",
                                d->index, nbytes, nbytes / 1073741824.0, fr, fr / 1073741824.0,
                                total, total / 1073741824.0, live, live / 1073741824.0);
        }
        return cu_check(e, "cudaMalloc");
    }
    pthread_mutex_lock(&pl->lock);
    pl->reserved += size;
    pl->n_malloc++;
    note_alloc(pl, p, nbytes);
    pthread_mutex_unlock(&pl->lock);
    return hand_out(d, p, size, out);
}

extern "C" void fe_cuda_free(fe_device dev, void *p, size_t nbytes) {
    if (!p || dev.type != FE_CUDA || dev.index < 0 || dev.index >= CU_MAX_DEVICES) return;
    cu_pool *pl = pool_of(dev.index);
    bool exact = no_cache();
    size_t size = exact ? nbytes : round_size(nbytes);
    cu_blk *k = exact ? NULL : (cu_blk *)malloc(sizeof *k);
    pthread_mutex_lock(&pl->lock);
    cu_bin *b = k ? find_bin(pl, size, true) : NULL;
    pl->current -= nbytes;
    if (g_trace == 1) trace_free(p);
    if (b) {
        /* later kernels on the same stream may reuse it: stream order makes that safe */
        k->p = p;
        k->next = b->free;
        b->free = k;
        pl->cached += size;
        pthread_mutex_unlock(&pl->lock);
        return;
    }
    pl->reserved -= size;
    pthread_mutex_unlock(&pl->lock);
    free(k);
    /* no-cache mode, or no host memory for bookkeeping: give the block back now, after
     * the queued kernels that may still use it */
    cu_dev *d = cu_dev_get(dev);
    if (d) cudaStreamSynchronize(d->stream);
    cudaFree(p);
    (void)cudaGetLastError();
}

extern "C" size_t fe_cuda_mem_current(fe_device dev) {
    if (dev.index < 0 || dev.index >= CU_MAX_DEVICES) return 0;
    cu_pool *pl = pool_of(dev.index);
    pthread_mutex_lock(&pl->lock);
    size_t v = pl->current;
    pthread_mutex_unlock(&pl->lock);
    return v;
}

extern "C" size_t fe_cuda_mem_peak(fe_device dev) {
    if (dev.index < 0 || dev.index >= CU_MAX_DEVICES) return 0;
    cu_pool *pl = pool_of(dev.index);
    pthread_mutex_lock(&pl->lock);
    size_t v = pl->peak;
    pthread_mutex_unlock(&pl->lock);
    return v;
}

extern "C" void fe_cuda_mem_reset_peak(fe_device dev) {
    if (dev.index < 0 || dev.index >= CU_MAX_DEVICES) return;
    cu_pool *pl = pool_of(dev.index);
    pthread_mutex_lock(&pl->lock);
    pl->peak = pl->current;
    pthread_mutex_unlock(&pl->lock);
}

extern "C" fe_status fe_cuda_mem_stats_get(int index, fe_cuda_mem_stats *out) {
    if (!out) return fe_set_error(FE_ERR_ARG, "fe_cuda_mem_stats_get: out is NULL");
    if (!cu_dev_get((fe_device){FE_CUDA, index})) return fe_last_status();
    cu_pool *pl = pool_of(index);
    pthread_mutex_lock(&pl->lock);
    out->current = pl->current;
    out->peak = pl->peak;
    out->reserved = pl->reserved;
    out->cached = pl->cached;
    out->n_cuda_malloc = pl->n_malloc;
    out->n_reused = pl->n_reused;
    pthread_mutex_unlock(&pl->lock);
    return FE_OK;
}

extern "C" fe_status fe_cuda_empty_cache(int index) {
    cu_dev *d = cu_dev_get((fe_device){FE_CUDA, index});
    if (!d) return fe_last_status();
    return release_cached(d, pool_of(index));
}

/* ---- copies, synchronisation and the deferred error check --------------------------- */

/* After the stream has been synchronised: report (once) an index error a kernel recorded. */
static fe_status check_record(cu_dev *d) {
    if (!d->check_pending) return FE_OK;
    unsigned long long rec[4] = {0, 0, 0, 0};
    fe_status st =
        cu_check(cudaMemcpyAsync(rec, d->err, sizeof rec, cudaMemcpyDeviceToHost, d->stream),
                 "cudaMemcpyAsync (error record)");
    if (!st) st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
    if (st) return st;
    d->check_pending = false;
    if (rec[0] == CU_ERR_NONE) return FE_OK;
    st = cu_check(cudaMemsetAsync(d->err, 0, sizeof rec, d->stream), "cudaMemsetAsync");
    if (st) return st;
    long long v = (long long)rec[1], pos = (long long)rec[2], lim = (long long)rec[3];
    if (rec[0] == CU_ERR_EMBEDDING_INDEX)
        return fe_set_error(FE_ERR_RANGE,
                            "embedding: index %lld at position %lld is out of range for %lld rows "
                            "(found on cuda:%d by an earlier kernel; its output rows were zeroed)",
                            v, pos, lim, d->index);
    return fe_set_error(FE_ERR_RANGE,
                        "cross_entropy: target %lld at row %lld is out of range for %lld classes "
                        "(found on cuda:%d by an earlier kernel; that row's loss is NaN)",
                        v, pos, lim, d->index);
}

extern "C" fe_status fe_cuda_memcpy(fe_device dev, void *dst, const void *src, size_t nbytes,
                                    int kind) {
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    if (nbytes == 0) return FE_OK;
    fe_status st;
    switch (kind) {
    case 0: {
        st = cu_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, d->stream),
                      "cudaMemcpyAsync (host to device)");
        /* pageable sources are staged before the call returns; a pinned source is read
         * later by the DMA engine, so wait for it: the caller may reuse its buffer */
        cudaPointerAttributes at;
        if (!st && cudaPointerGetAttributes(&at, src) == cudaSuccess &&
            at.type == cudaMemoryTypeHost)
            st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
        (void)cudaGetLastError();
        return st;
    }
    case 1:
        st = cu_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, d->stream),
                      "cudaMemcpyAsync (device to host)");
        if (!st) st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
        if (!st) st = check_record(d);
        return st;
    case 2:
        return cu_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, d->stream),
                        "cudaMemcpyAsync (device to device)");
    default: return fe_set_error(FE_ERR_ARG, "cuda memcpy: unknown direction %d", kind);
    }
}

extern "C" fe_status fe_cuda_sync(fe_device dev) {
    cu_dev *d = cu_dev_get(dev);
    if (!d) return fe_last_status();
    fe_status st = cu_check(cudaStreamSynchronize(d->stream), "cudaStreamSynchronize");
    return st ? st : check_record(d);
}

/* ---- strided walks ------------------------------------------------------------------ */

void cu_iter_init(cu_iter *it, int nops, const fe_tensor *const *ts, int ndim,
                  const int64_t *shape) {
    memset(it, 0, sizeof *it);
    it->nops = nops;
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        bool merge = n > 0;
        for (int k = 0; k < nops && merge; k++)
            merge = it->stride[k][n - 1] == ts[k]->stride[d] * shape[d];
        if (merge) {
            it->shape[n - 1] *= shape[d];
            for (int k = 0; k < nops; k++)
                it->stride[k][n - 1] = ts[k]->stride[d];
        } else {
            it->shape[n] = shape[d];
            for (int k = 0; k < nops; k++)
                it->stride[k][n] = ts[k]->stride[d];
            n++;
        }
    }
    if (n == 0) {
        it->shape[0] = fe__numel_of(ndim, shape) ? 1 : 0;
        for (int k = 0; k < nops; k++)
            it->stride[k][0] = 1;
        n = 1;
    }
    it->ndim = n;
    it->n = fe__numel_of(n, it->shape);
}

bool cu_iter_contiguous(const cu_iter *it) {
    if (it->ndim != 1) return false;
    for (int k = 0; k < it->nops; k++)
        if (it->stride[k][0] != 1) return false;
    return true;
}
