/* Devices: which backends exist, parsing device names, memory figures, threads. */
#include "backends/backend.h"

#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

const fe_backend *fe_backend_get(fe_device_type type) {
    switch (type) {
    case FE_CPU: return &fe_cpu_backend;
#ifdef FE_HAVE_CUDA
    case FE_CUDA: return fe_cuda_backend_get();
#endif
    default: return NULL;
    }
}

bool fe_device_available(fe_device_type type) { return fe_backend_get(type) != NULL; }

bool fe_device_parse(const char *name, fe_device *out) {
    if (!name || !out) return false;
    if (!strcmp(name, "cpu")) return *out = FE_DEVICE_CPU, true;
    if (!strcmp(name, "auto")) {
        *out = fe_device_available(FE_CUDA) ? (fe_device){FE_CUDA, 0} : FE_DEVICE_CPU;
        return true;
    }
    if (!strncmp(name, "cuda", 4)) {
        int idx = 0;
        if (name[4] == ':') {
            char *end;
            long v = strtol(name + 5, &end, 10);
            if (*end || v < 0 || v > 1024 || end == name + 5) return false;
            idx = (int)v;
        } else if (name[4]) {
            return false;
        }
        *out = (fe_device){FE_CUDA, idx};
        return true;
    }
    return false;
}

const char *fe_device_str(fe_device dev, char *buf, size_t n) {
    if (dev.type == FE_CPU)
        snprintf(buf, n, "cpu");
    else
        snprintf(buf, n, "cuda:%d", dev.index);
    return buf;
}

fe_status fe_device_sync(fe_device dev) {
    const fe_backend *be = fe_backend_get(dev.type);
    if (!be) return fe_set_error(FE_ERR_DEVICE, "device type %d is not available", (int)dev.type);
    return be->sync(dev);
}

size_t fe_device_mem_current(fe_device dev) {
    const fe_backend *be = fe_backend_get(dev.type);
    return be ? be->mem_current(dev) : 0;
}

size_t fe_device_mem_peak(fe_device dev) {
    const fe_backend *be = fe_backend_get(dev.type);
    return be ? be->mem_peak(dev) : 0;
}

void fe_device_mem_reset_peak(fe_device dev) {
    const fe_backend *be = fe_backend_get(dev.type);
    if (be) be->mem_reset_peak(dev);
}

void fe_set_num_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int fe_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
