/*
 * core/status.c — names for quill's status codes (core/core.h).
 */
#include "core/core.h"

#include <stdio.h>

const char *ql_strerror(int status) {
    switch (status) {
    case QL_OK: return "success";
    case QL_EINVAL: return "invalid argument";
    case QL_ENOMEM: return "out of memory";
    case QL_EIO: return "I/O error";
    case QL_ENOENT: return "no such file or entry";
    case QL_EFORMAT: return "malformed data";
    case QL_EUNSUPPORTED: return "not supported";
    case QL_ERANGE: return "value out of range";
    case QL_ENOSPC: return "no space left in pool";
    case QL_ECUDA: return "CUDA error";
    case QL_ECANCELED: return "cancelled";
    case QL_ETIMEDOUT: return "timed out";
    case QL_EBUSY: return "busy";
    case QL_ENOTIMPL: return "not implemented";
    case QL_EOVERFLOW: return "size overflow";
    case QL_ESTATE: return "invalid state";
    case QL_EINTERNAL: return "internal error";
    default: return status > 0 ? "non-fatal outcome" : "unknown error";
    }
}

void ql_verrf(char *err, size_t errlen, const char *fmt, va_list ap) {
    if (!err || errlen == 0) return;
    vsnprintf(err, errlen, fmt, ap);
}

void ql_errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ql_verrf(err, errlen, fmt, ap);
    va_end(ap);
}
