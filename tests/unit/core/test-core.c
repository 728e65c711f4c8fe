/*
 * tests/unit/core/test-core.c — status strings, logging (levels, sink, request ids),
 * the abort hook, allocation helpers and the arena.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define QL_LOG_MODULE "testmod"
#include "core/core.h"

static void test_strerror(void **state) {
    (void)state;
    assert_string_equal(ql_strerror(QL_OK), "success");
    assert_string_equal(ql_strerror(QL_EINVAL), "invalid argument");
    assert_string_equal(ql_strerror(QL_EFORMAT), "malformed data");
    assert_string_equal(ql_strerror(QL_EINTERNAL), "internal error");
    assert_string_equal(ql_strerror(-9999), "unknown error");
    assert_string_equal(ql_strerror(3), "non-fatal outcome");
    /* every code from QL_EINVAL down to QL_EINTERNAL has its own distinct name */
    for (int a = QL_EINTERNAL; a <= QL_EINVAL; a++) {
        assert_string_not_equal(ql_strerror(a), "unknown error");
        for (int b = a + 1; b <= QL_EINVAL; b++) assert_string_not_equal(ql_strerror(a), ql_strerror(b));
    }
}

static void test_errf(void **state) {
    (void)state;
    char buf[8];
    ql_errf(buf, sizeof(buf), "key %s at %d", "abc", 12);
    assert_string_equal(buf, "key abc"); /* truncated to fit, NUL-terminated */
    ql_errf(NULL, 10, "ignored %d", 1);   /* no buffer: no-op */
    buf[0] = 'x';
    ql_errf(buf, 0, "ignored");           /* zero length: untouched */
    assert_int_equal(buf[0], 'x');
}

/* ---- logging ---- */

typedef struct captured_s {
    int n;
    char last[2048];
    ql_log_level_t level;
} captured_t;

static void sink(ql_log_level_t level, const char *line, void *ud) {
    captured_t *c = ud;
    c->n++;
    c->level = level;
    snprintf(c->last, sizeof(c->last), "%s", line);
}

static void test_log_levels_and_format(void **state) {
    (void)state;
    captured_t cap = {0};
    ql_log_set_sink(sink, &cap);
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    QL_LOG_INFO("dropped %d", 1);
    QL_LOG_DEBUG("dropped too");
    assert_int_equal(cap.n, 0);
    QL_LOG_WARN("kept %d\n", 42);
    assert_int_equal(cap.n, 1);
    assert_int_equal(cap.level, QL_LOG_LEVEL_WARN);
    assert_non_null(strstr(cap.last, "WARN"));
    assert_non_null(strstr(cap.last, "[testmod]"));
    assert_non_null(strstr(cap.last, "test_log_levels_and_format:"));
    assert_non_null(strstr(cap.last, "kept 42"));
    assert_null(strchr(cap.last, '\n')); /* one line: trailing newline stripped */
    QL_RLOG_ERROR("cmpl-7", "request failed: %s", "boom");
    assert_int_equal(cap.n, 2);
    assert_non_null(strstr(cap.last, "[req cmpl-7] request failed: boom"));
    ql_log_set_level(QL_LOG_LEVEL_DEBUG);
    QL_LOG_DEBUG("now visible");
    assert_int_equal(cap.n, 3);
    ql_log_set_sink(NULL, NULL);
    ql_log_set_level(QL_LOG_LEVEL_INFO);
}

static void test_log_long_line_truncated(void **state) {
    (void)state;
    captured_t cap = {0};
    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ql_log_set_sink(sink, &cap);
    QL_LOG_ERROR("%s", big);
    ql_log_set_sink(NULL, NULL);
    assert_int_equal(cap.n, 1);
    assert_true(strlen(cap.last) < 2048);
    assert_true(strlen(cap.last) > 1000);
}

static void test_log_level_parse(void **state) {
    (void)state;
    ql_log_level_t l;
    assert_int_equal(ql_log_level_parse("debug", &l), 0);
    assert_int_equal(l, QL_LOG_LEVEL_DEBUG);
    assert_int_equal(ql_log_level_parse("WARNING", &l), 0);
    assert_int_equal(l, QL_LOG_LEVEL_WARN);
    assert_int_equal(ql_log_level_parse("loud", &l), QL_EINVAL);
    assert_int_equal(ql_log_level_parse(NULL, &l), QL_EINVAL);
    assert_string_equal(ql_log_level_name(QL_LOG_LEVEL_ERROR), "error");
}

/* ---- asserts ---- */

static jmp_buf g_jmp;
static char g_abort_msg[256];
static int g_abort_line;

static void hook(const char *file, int line, const char *msg) {
    (void)file;
    g_abort_line = line;
    snprintf(g_abort_msg, sizeof(g_abort_msg), "%s", msg);
    longjmp(g_jmp, 1);
}

static void test_assert_hook(void **state) {
    (void)state;
    captured_t cap = {0};
    ql_log_set_sink(sink, &cap);
    ql_set_abort_hook(hook);
    volatile int reached = 0;
    volatile int expect_line = 0;
    if (setjmp(g_jmp) == 0) {
        int x = 2;
        expect_line = __LINE__ + 1;
        QL_ASSERT(x == 3);
        reached = 1;
    }
    ql_set_abort_hook(NULL);
    ql_log_set_sink(NULL, NULL);
    assert_int_equal(reached, 0);
    assert_int_equal(g_abort_line, expect_line);
    assert_string_equal(g_abort_msg, "assertion failed: x == 3");
    assert_non_null(strstr(cap.last, "test-core.c"));
    /* a true assert does nothing */
    QL_ASSERT(1 + 1 == 2);
}

/* ---- allocation ---- */

static void test_alloc_helpers(void **state) {
    (void)state;
    char *s = ql_xstrdup("quill");
    assert_string_equal(s, "quill");
    free(s);
    s = ql_xstrndup("abcdef", 3);
    assert_string_equal(s, "abc");
    free(s);
    int *z = ql_xcalloc(16, sizeof(int));
    for (int i = 0; i < 16; i++) assert_int_equal(z[i], 0);
    z = ql_xrealloc(z, 1024 * sizeof(int));
    z[1023] = 7;
    free(z);
    free(ql_xmalloc(0));

    size_t out;
    assert_int_equal(ql_size_mul(SIZE_MAX / 2 + 1, 2, &out), QL_EOVERFLOW);
    assert_int_equal(ql_size_mul(1000, 1000, &out), 0);
    assert_int_equal(out, 1000000);
    assert_int_equal(ql_size_add(SIZE_MAX, 1, &out), QL_EOVERFLOW);
    assert_int_equal(ql_size_add(1, 2, &out), 0);
    assert_int_equal(out, 3);
}

static void test_xcalloc_overflow_aborts(void **state) {
    (void)state;
    captured_t cap = {0};
    ql_log_set_sink(sink, &cap);
    ql_set_abort_hook(hook);
    volatile int reached = 0;
    if (setjmp(g_jmp) == 0) {
        (void)ql_xcalloc(SIZE_MAX / 4, 8);
        reached = 1;
    }
    ql_set_abort_hook(NULL);
    ql_log_set_sink(NULL, NULL);
    assert_int_equal(reached, 0);
    assert_non_null(strstr(g_abort_msg, "overflow"));
}

static void test_arena(void **state) {
    (void)state;
    ql_arena_t a;
    ql_arena_init(&a, 64);
    char *prev = NULL;
    for (int i = 0; i < 1000; i++) {
        char *p = ql_arena_alloc(&a, (size_t)(i % 37) + 1);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, i & 0xff, (size_t)(i % 37) + 1);
        if (prev) assert_ptr_not_equal(p, prev);
        prev = p;
    }
    char *big = ql_arena_alloc(&a, 1 << 20); /* larger than any chunk so far */
    assert_non_null(big);
    memset(big, 1, 1 << 20);
    char *s = ql_arena_strndup(&a, "hello world", 5);
    assert_string_equal(s, "hello");
    assert_null(ql_arena_alloc(&a, SIZE_MAX - 3));
    ql_arena_clear(&a);
    assert_non_null(ql_arena_alloc(&a, 10));
    ql_arena_clear(&a);
}

static void test_time_monotonic(void **state) {
    (void)state;
    uint64_t a = ql_time_ns(), b = ql_time_ns();
    assert_true(b >= a);
    assert_true(strlen(ql_version()) > 0);
    assert_true(strlen(ql_git_commit()) > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_errf),
        cmocka_unit_test(test_log_levels_and_format),
        cmocka_unit_test(test_log_long_line_truncated),
        cmocka_unit_test(test_log_level_parse),
        cmocka_unit_test(test_assert_hook),
        cmocka_unit_test(test_alloc_helpers),
        cmocka_unit_test(test_xcalloc_overflow_aborts),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_time_monotonic),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
