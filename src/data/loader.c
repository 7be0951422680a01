/* The batch loader. The dataset is cut into windows of T+1 tokens starting at multiples
 * of T; an epoch visits every window once, in an order that is a pure function of
 * (seed, epoch): a Fisher-Yates shuffle driven by a counter-based generator (SplitMix64
 * evaluated at a counter). Batch `index` of an epoch takes windows
 * perm[index*B .. index*B+B). A background thread fills host buffers ahead of time in a
 * ring of `prefetch` slots; the caller's thread turns them into tensors. */
#include "data/data_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot {
    int32_t *x, *y; /* (B, T) inputs and targets */
    fe_loader_state pos;
} slot;

struct fe_loader {
    fe_dataset *ds; /* our own view: the caller's dataset may be freed */
    fe_loader_config cfg;
    int64_t nwin, nbatch;
    /* the window order of one epoch, owned by whichever thread fills batches */
    int64_t *perm;
    bool perm_valid;
    uint64_t perm_seed;
    int64_t perm_epoch;
    fe_loader_state pos; /* the next batch handed to the caller */
    /* synchronous mode (prefetch == 0) */
    slot direct;
    /* prefetch mode */
    int nslots;
    slot *slots;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_space;
    int head, count;
    bool stop;
    uint64_t gen;                /* bumped by set_state: batches of older generations are dropped */
    fe_loader_state produce_pos; /* the next batch the thread prepares */
};

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Number k of the stream of (seed, epoch). */
static uint64_t draw(uint64_t seed, int64_t epoch, uint64_t k) {
    uint64_t key = mix64(seed ^ mix64((uint64_t)epoch + 0x632BE59BD9B4E019ull));
    return mix64(key + (k + 1) * 0x9E3779B97F4A7C15ull);
}

static void make_perm(fe_loader *l, uint64_t seed, int64_t epoch) {
    if (l->perm_valid && l->perm_seed == seed && l->perm_epoch == epoch) return;
    for (int64_t i = 0; i < l->nwin; i++)
        l->perm[i] = i;
    if (l->cfg.shuffle) {
        for (int64_t i = l->nwin - 1; i > 0; i--) {
            uint64_t r = draw(seed, epoch, (uint64_t)i);
            int64_t j = (int64_t)(((unsigned __int128)r * (uint64_t)(i + 1)) >> 64);
            int64_t t = l->perm[i];
            l->perm[i] = l->perm[j], l->perm[j] = t;
        }
    }
    l->perm_valid = true, l->perm_seed = seed, l->perm_epoch = epoch;
}

/* Fill s with the batch at position p (reads only the dataset and the permutation). */
static void fill(fe_loader *l, slot *s, fe_loader_state p) {
    int64_t B = l->cfg.batch, T = l->cfg.seq_len;
    make_perm(l, p.seed, p.epoch);
    for (int64_t b = 0; b < B; b++) {
        int64_t start = l->perm[p.index * B + b] * T;
        /* windows lie inside the dataset by construction, so the reads cannot fail */
        fe_dataset_read(l->ds, start, T, s->x + b * T);
        fe_dataset_read(l->ds, start + 1, T, s->y + b * T);
    }
    s->pos = p;
}

static fe_loader_state advance(const fe_loader *l, fe_loader_state p) {
    if (++p.index == l->nbatch) p.index = 0, p.epoch++;
    return p;
}

static void *prefetch_main(void *arg) {
    fe_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->count == l->nslots)
            pthread_cond_wait(&l->cv_space, &l->mu);
        if (l->stop) break;
        uint64_t gen = l->gen;
        fe_loader_state p = l->produce_pos;
        slot *s = &l->slots[(l->head + l->count) % l->nslots];
        pthread_mutex_unlock(&l->mu);
        fill(l, s, p);
        pthread_mutex_lock(&l->mu);
        if (gen == l->gen) { /* else set_state moved us meanwhile: drop the batch */
            l->produce_pos = advance(l, p);
            l->count++;
            pthread_cond_signal(&l->cv_ready);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static bool slot_alloc(slot *s, int64_t n) {
    s->x = malloc((size_t)n * sizeof *s->x);
    s->y = malloc((size_t)n * sizeof *s->y);
    return s->x && s->y;
}

void fe_loader_free(fe_loader *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_broadcast(&l->cv_space);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    if (l->nslots) {
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv_ready);
        pthread_cond_destroy(&l->cv_space);
    }
    for (int i = 0; i < l->nslots; i++)
        free(l->slots[i].x), free(l->slots[i].y);
    free(l->slots);
    free(l->direct.x), free(l->direct.y);
    free(l->perm);
    fe_dataset_free(l->ds);
    free(l);
}

fe_loader *fe_loader_new(const fe_dataset *ds, const fe_loader_config *cfg) {
    if (!ds || !cfg) {
        fe_set_error(FE_ERR_ARG, "fe_loader_new: NULL argument");
        return NULL;
    }
    int64_t B = cfg->batch, T = cfg->seq_len, n = fe_dataset_len(ds);
    if (B <= 0 || T <= 0 || B > (1 << 20) || T > (1 << 24) || cfg->prefetch < 0 ||
        cfg->prefetch > 64) {
        fe_set_error(FE_ERR_ARG, "data loader: bad config (batch %lld, seq_len %lld, prefetch %d)",
                     (long long)B, (long long)T, cfg->prefetch);
        return NULL;
    }
    if (!fe_device_available(cfg->device.type)) {
        fe_set_error(FE_ERR_DEVICE, "data loader: the requested device is not available");
        return NULL;
    }
    int64_t nwin = n > 0 ? (n - 1) / T : 0;
    if (nwin < B) {
        fe_set_error(FE_ERR_RANGE,
                     "data loader: %lld tokens make %lld windows of %lld+1 tokens, "
                     "fewer than one batch of %lld",
                     (long long)n, (long long)nwin, (long long)T, (long long)B);
        return NULL;
    }
    fe_loader *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->cfg = *cfg;
    l->nwin = nwin;
    l->nbatch = nwin / B;
    l->pos = (fe_loader_state){cfg->seed, 0, 0};
    l->ds = fe__dataset_ref(ds);
    l->perm = malloc((size_t)nwin * sizeof *l->perm);
    if (!l->ds || !l->perm) goto oom;
    if (cfg->prefetch == 0) {
        if (!slot_alloc(&l->direct, B * T)) goto oom;
        return l;
    }
    l->slots = calloc((size_t)cfg->prefetch, sizeof *l->slots);
    if (!l->slots) goto oom;
    l->nslots = cfg->prefetch;
    for (int i = 0; i < l->nslots; i++)
        if (!slot_alloc(&l->slots[i], B * T)) goto oom;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_ready, NULL);
    pthread_cond_init(&l->cv_space, NULL);
    l->produce_pos = l->pos;
    if (pthread_create(&l->thread, NULL, prefetch_main, l) != 0) {
        fe_set_error(FE_ERR_STATE, "data loader: cannot start the prefetch thread");
        fe_loader_free(l);
        return NULL;
    }
    l->thread_started = true;
    return l;
oom:
    fe_loader_free(l);
    fe_set_error(FE_ERR_OOM, "data loader: out of memory");
    return NULL;
}

static fe_status make_tensors(fe_loader *l, const slot *s, fe_tensor **inputs,
                              fe_tensor **targets) {
    int64_t shape[2] = {l->cfg.batch, l->cfg.seq_len};
    fe_tensor *x = fe_from_data(s->x, 2, shape, FE_I32, l->cfg.device);
    fe_tensor *y = x ? fe_from_data(s->y, 2, shape, FE_I32, l->cfg.device) : NULL;
    if (!x || !y) {
        fe_free(x);
        return fe_last_status() ? fe_last_status() : FE_ERR_OOM;
    }
    *inputs = x, *targets = y;
    return FE_OK;
}

fe_status fe_loader_next(fe_loader *l, fe_tensor **inputs, fe_tensor **targets) {
    if (!l || !inputs || !targets) return fe_set_error(FE_ERR_ARG, "fe_loader_next: NULL argument");
    *inputs = *targets = NULL;
    fe_status st;
    if (l->nslots == 0) {
        fill(l, &l->direct, l->pos);
        st = make_tensors(l, &l->direct, inputs, targets);
    } else {
        pthread_mutex_lock(&l->mu);
        while (l->count == 0)
            pthread_cond_wait(&l->cv_ready, &l->mu);
        slot *s = &l->slots[l->head];
        pthread_mutex_unlock(&l->mu);
        /* the slot is ours until we hand it back: the thread only writes free slots */
        st = make_tensors(l, s, inputs, targets);
        if (st) return st; /* keep the batch: the next call retries it */
        pthread_mutex_lock(&l->mu);
        l->head = (l->head + 1) % l->nslots;
        l->count--;
        pthread_cond_signal(&l->cv_space);
        pthread_mutex_unlock(&l->mu);
    }
    if (!st) l->pos = advance(l, l->pos);
    return st;
}

int64_t fe_loader_batches_per_epoch(const fe_loader *l) { return l ? l->nbatch : 0; }

fe_loader_state fe_loader_get_state(const fe_loader *l) {
    return l ? l->pos : (fe_loader_state){0, 0, 0};
}

fe_status fe_loader_set_state(fe_loader *l, fe_loader_state s) {
    if (!l) return fe_set_error(FE_ERR_ARG, "fe_loader_set_state: NULL loader");
    if (s.epoch < 0 || s.index < 0 || s.index >= l->nbatch)
        return fe_set_error(FE_ERR_RANGE,
                            "data loader: position (epoch %lld, batch %lld) is "
                            "outside an epoch of %lld batches",
                            (long long)s.epoch, (long long)s.index, (long long)l->nbatch);
    if (l->nslots) {
        pthread_mutex_lock(&l->mu);
        l->gen++;
        l->head = l->count = 0;
        l->produce_pos = s;
        l->pos = s;
        pthread_cond_signal(&l->cv_space);
        pthread_mutex_unlock(&l->mu);
    } else {
        l->pos = s;
    }
    l->cfg.seed = s.seed;
    return FE_OK;
}
