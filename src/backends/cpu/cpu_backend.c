/* The CPU backend: host memory (64-byte aligned, counted) and its kernel table. */
#include "backends/cpu/cpu_internal.h"

#include <pthread.h>

static size_t g_cur = 0, g_peak = 0;

/* A small cache of freed large blocks, reused by exact size: a training step allocates
 * the same activations every time, and fresh large blocks come from mmap, so each
 * would cost page faults and zeroing again. Small blocks stay with malloc. */
#define CACHE_MIN (64 << 10)      /* blocks of at least 64 KiB are cached */
#define CACHE_MAX_BYTES (512ull << 20)
#define CACHE_SLOTS 512
static struct {
    size_t n;
    void *p;
} g_cache[CACHE_SLOTS];
static int g_ncache;
static size_t g_cache_bytes;
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void *cache_take(size_t n) {
    void *p = NULL;
    pthread_mutex_lock(&g_cache_lock);
    for (int i = g_ncache - 1; i >= 0; i--)
        if (g_cache[i].n == n) {
            p = g_cache[i].p;
            g_cache[i] = g_cache[--g_ncache];
            g_cache_bytes -= n;
            break;
        }
    pthread_mutex_unlock(&g_cache_lock);
    return p;
}

static bool cache_put(void *p, size_t n) {
    bool kept = false;
    pthread_mutex_lock(&g_cache_lock);
    if (g_ncache < CACHE_SLOTS && g_cache_bytes + n <= CACHE_MAX_BYTES) {
        g_cache[g_ncache].n = n, g_cache[g_ncache].p = p;
        g_ncache++, g_cache_bytes += n, kept = true;
    }
    pthread_mutex_unlock(&g_cache_lock);
    return kept;
}

/* Give every cached block back to the system (before reporting out-of-memory). */
static void cache_flush(void) {
    pthread_mutex_lock(&g_cache_lock);
    for (int i = 0; i < g_ncache; i++) free(g_cache[i].p);
    g_ncache = 0, g_cache_bytes = 0;
    pthread_mutex_unlock(&g_cache_lock);
}

static fe_status cpu_alloc(fe_device dev, size_t nbytes, void **out) {
    (void)dev;
    size_t n = (nbytes + 63) & ~(size_t)63;
    void *p = n >= CACHE_MIN ? cache_take(n) : NULL;
    if (n && !p && posix_memalign(&p, 64, n) != 0) {
        cache_flush();
        if (posix_memalign(&p, 64, n) != 0) p = NULL;
    }
    if (n && !p)
        return fe_set_error(FE_ERR_OOM, "out of host memory: asked for %zu bytes", nbytes);
    size_t cur = __atomic_add_fetch(&g_cur, nbytes, __ATOMIC_RELAXED);
    size_t peak = __atomic_load_n(&g_peak, __ATOMIC_RELAXED);
    while (cur > peak && !__atomic_compare_exchange_n(&g_peak, &peak, cur, false, __ATOMIC_RELAXED,
                                                      __ATOMIC_RELAXED)) {
    }
    *out = p;
    return FE_OK;
}

static void cpu_free(fe_device dev, void *p, size_t nbytes) {
    (void)dev;
    __atomic_sub_fetch(&g_cur, nbytes, __ATOMIC_RELAXED);
    size_t n = (nbytes + 63) & ~(size_t)63;
    if (p && n >= CACHE_MIN && cache_put(p, n)) return;
    free(p);
}

static fe_status cpu_memcpy(fe_device dev, void *dst, const void *src, size_t n, int kind) {
    (void)dev, (void)kind;
    if (n) memmove(dst, src, n);
    return FE_OK;
}

static fe_status cpu_sync(fe_device dev) {
    (void)dev;
    return FE_OK;
}

static size_t cpu_mem_current(fe_device dev) {
    (void)dev;
    return __atomic_load_n(&g_cur, __ATOMIC_RELAXED);
}

static size_t cpu_mem_peak(fe_device dev) {
    (void)dev;
    return __atomic_load_n(&g_peak, __ATOMIC_RELAXED);
}

static void cpu_mem_reset_peak(fe_device dev) {
    (void)dev;
    __atomic_store_n(&g_peak, __atomic_load_n(&g_cur, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
}

const fe_backend fe_cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memcpy = cpu_memcpy,
    .sync = cpu_sync,
    .mem_current = cpu_mem_current,
    .mem_peak = cpu_mem_peak,
    .mem_reset_peak = cpu_mem_reset_peak,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .arange = cpu_arange,
    .rand = cpu_rand,
    .unary = cpu_unary,
    .binary = cpu_binary,
    .where = cpu_where,
    .reduce = cpu_reduce,
    .matmul = cpu_matmul,
    .softmax = cpu_softmax,
    .softmax_backward = cpu_softmax_backward,
    .rmsnorm = cpu_rmsnorm,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .layernorm = cpu_layernorm,
    .layernorm_backward = cpu_layernorm_backward,
    .rope = cpu_rope,
    .embedding = cpu_embedding,
    .embedding_backward = cpu_embedding_backward,
    .cross_entropy = cpu_cross_entropy,
    .cross_entropy_backward = cpu_cross_entropy_backward,
    .silu_gate = cpu_silu_gate,
    .silu_gate_backward = cpu_silu_gate_backward,
    .adamw = cpu_adamw,
    .grad_norm_sq = cpu_grad_norm_sq,
    .scale_multi = cpu_scale_multi,
};
