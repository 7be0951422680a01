/* What the standalone GPU programs that link the flash kernels without the library
 * (tests/flash/flash_check.cu, tests/wgmma/wg_flash_check.cu) share: the library's error setter,
 * which keeps the message in g_err, and CK, which ends the program on a CUDA error. */
#pragma once
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ferric/core.h"

static char g_err[512];
extern "C" fe_status fe_set_error(fe_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));   \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)
