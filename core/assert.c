/*
 * core/assert.c — ql_abort(): the end of every failed QL_ASSERT. Prints file:line and the
 * message through the log, calls the settable hook (tests longjmp out of it), then aborts.
 */
#include "core/core.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic(ql_abort_hook_fn) g_hook;

void ql_set_abort_hook(ql_abort_hook_fn hook) { atomic_store(&g_hook, hook); }

void ql_abort(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ql_log_write(QL_LOG_LEVEL_ERROR, "core", "ql_abort", NULL, "%s:%d: %s", file, line, msg);
    ql_abort_hook_fn hook = atomic_load(&g_hook);
    if (hook) hook(file, line, msg);
    abort();
}
