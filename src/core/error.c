/* Thread-local error state: every failing call leaves a message naming the problem. */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local fe_status g_status = FE_OK;
static _Thread_local char g_msg[1024];

const char *fe_last_error(void) { return g_status == FE_OK ? "" : g_msg; }

fe_status fe_last_status(void) { return g_status; }

void fe_clear_error(void) {
    g_status = FE_OK;
    g_msg[0] = 0;
}

fe_status fe_set_error(fe_status st, const char *fmt, ...) {
    g_status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return st;
}

const char *fe_status_name(fe_status st) {
    switch (st) {
    case FE_OK: return "ok";
    case FE_ERR_ARG: return "invalid argument";
    case FE_ERR_SHAPE: return "shape error";
    case FE_ERR_DTYPE: return "dtype error";
    case FE_ERR_RANGE: return "out of range";
    case FE_ERR_OOM: return "out of memory";
    case FE_ERR_IO: return "I/O error";
    case FE_ERR_FORMAT: return "format error";
    case FE_ERR_DEVICE: return "device error";
    case FE_ERR_STATE: return "invalid state";
    }
    return "unknown error";
}

bool fe__any_null(const char *op, int n, ...) {
    va_list ap;
    va_start(ap, n);
    bool null = false;
    int which = -1;
    for (int i = 0; i < n; i++) {
        if (va_arg(ap, const void *) == NULL && !null) {
            null = true;
            which = i;
        }
    }
    va_end(ap);
    /* keep the first error of a chain: only set one when none is pending */
    if (null && g_status == FE_OK)
        fe_set_error(FE_ERR_ARG, "%s: input %d is NULL", op, which);
    return null;
}
