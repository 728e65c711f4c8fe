/*
 * tests/unit/scheduler/test-stop.c — stop strings over streamed text (scheduler/stop.h): a table
 * of cases with the text each push releases, then random streams against a direct reference
 * (no released text is ever part of a stop string; the output is the text before the first stop
 * string to complete).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "scheduler/stop.h"

#define MAX_PIECES 8

typedef struct stop_case_s {
    const char *name;
    const char *stops[3];            /* NULL-terminated */
    const char *pieces[MAX_PIECES];  /* NULL-terminated */
    int no_match_until;              /* pushes [0, no_match_until) have matching off (min_tokens) */
    const char *released[MAX_PIECES]; /* what each push releases */
    int matched;                     /* 1: a stop string ends it (pieces after it are unread) */
    int which;                       /* the stop string's index */
    const char *flushed;             /* released by a flush when not matched */
} stop_case_t;

static const stop_case_t k_cases[] = {
    {"across three tokens", {"</s>"}, {"Hello", " wor", "ld<", "/s", ">tail"}, 0,
     {"Hello", " wor", "ld", "", ""}, 1, 0, NULL},
    {"false start released", {"STOP"}, {"ST", "AR", "T"}, 0, {"", "STAR", "T"}, 0, 0, ""},
    {"overlapping prefix", {"aab"}, {"a", "a", "a", "b"}, 0, {"", "", "a", ""}, 1, 0, NULL},
    {"inside one token", {"##"}, {"x##y"}, 0, {"x"}, 1, 0, NULL},
    {"at the very start", {"Q:"}, {"Q", ":", " more"}, 0, {"", ""}, 1, 0, NULL},
    {"multi-byte stop", {"\xC3\xA9!"}, {"caf", "\xC3\xA9", "!"}, 0, {"caf", "", ""}, 1, 0, NULL},
    {"multi-byte not a stop", {"\xC3\xA9!"}, {"caf", "\xC3\xA9", "s"}, 0, {"caf", "", "\xC3\xA9s"}, 0, 0, ""},
    {"earliest start wins", {"world", "lo w"}, {"hel", "lo world"}, 0, {"he", "l"}, 1, 1, NULL},
    {"first listed wins at one start", {"ab", "abc"}, {"x", "abc"}, 0, {"x", ""}, 1, 0, NULL},
    {"no stop strings", {NULL}, {"a", "", "bc"}, 0, {"a", "", "bc"}, 0, 0, ""},
    {"held then flushed", {"xyz"}, {"ab", "x", "y"}, 0, {"ab", "", ""}, 0, 0, "xy"},
    {"empty pieces keep state", {"<|end|>"}, {"ok <|", "", "en", "", "d|>"}, 0, {"ok ", "", "", "", ""}, 1, 0, NULL},
    {"before min_tokens: ordinary text", {"\n\n"}, {"a\n\n", "b"}, 1, {"a\n", "\nb"}, 0, 0, ""},
    {"completes at min_tokens", {"\n\n"}, {"a\n", "\nb"}, 1, {"a", ""}, 1, 0, NULL},
};

static void run_case(const stop_case_t *c) {
    ql_stop_str_t stops[3];
    int32_t n = 0;
    for (; n < 3 && c->stops[n]; n++) stops[n] = (ql_stop_str_t){c->stops[n], strlen(c->stops[n])};
    ql_stop_t st;
    assert_int_equal(ql_stop_init(&st, stops, n), 0);
    int k = 0, rc = 0;
    for (; k < MAX_PIECES && c->pieces[k]; k++) {
        const char *out;
        size_t len;
        int32_t which = -1;
        rc = ql_stop_push(&st, c->pieces[k], strlen(c->pieces[k]), k >= c->no_match_until, &out, &len, &which);
        assert_true(rc == 0 || rc == 1);
        if (len != strlen(c->released[k]) || memcmp(out, c->released[k], len) != 0)
            fail_msg("%s: push %d released '%.*s', expected '%s'", c->name, k, (int)len, out, c->released[k]);
        if (rc == 1) {
            assert_int_equal(which, c->which);
            k++;
            break;
        }
    }
    assert_int_equal(rc, c->matched);
    if (c->matched) {
        const char *out;
        size_t len;
        assert_int_equal(ql_stop_push(&st, "z", 1, 1, &out, &len, NULL), QL_ESTATE);
        ql_stop_flush(&st, &out, &len);
        assert_int_equal(len, 0);
    } else {
        const char *out;
        size_t len;
        ql_stop_flush(&st, &out, &len);
        if (len != strlen(c->flushed) || memcmp(out, c->flushed, len) != 0)
            fail_msg("%s: flush released '%.*s', expected '%s'", c->name, (int)len, out, c->flushed);
        assert_int_equal(ql_stop_n_held(&st), 0);
    }
    ql_stop_free(&st);
    ql_stop_free(&st); /* twice is fine */
}

static void test_table(void **state) {
    (void)state;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_cases); i++) run_case(&k_cases[i]);
}

static void test_init_errors(void **state) {
    (void)state;
    ql_stop_t st;
    ql_stop_str_t bad[2] = {{"a", 1}, {"", 0}};
    assert_int_equal(ql_stop_init(&st, bad, 2), QL_EINVAL);
    assert_int_equal(ql_stop_init(&st, NULL, 1), QL_EINVAL);
    assert_int_equal(ql_stop_init(NULL, bad, 1), QL_EINVAL);
    assert_int_equal(ql_stop_init(&st, bad, 1), 0);
    const char *out;
    size_t len;
    assert_int_equal(ql_stop_push(&st, NULL, 1, 1, &out, &len, NULL), QL_EINVAL);
    ql_stop_free(&st);
    assert_string_equal(ql_finish_reason_name(QL_FINISH_REASON_STOP), "stop");
    assert_string_equal(ql_finish_reason_name(QL_FINISH_REASON_LENGTH), "length");
    assert_null(ql_finish_reason_name(QL_FINISH_REASON_NONE));
}

/* The earliest occurrence of any stop in t[0, n), or -1. */
static int64_t earliest(const char *t, size_t n, const ql_stop_str_t *stops, int32_t n_stops) {
    for (size_t i = 0; i < n; i++)
        for (int32_t s = 0; s < n_stops; s++)
            if (stops[s].len <= n - i && memcmp(t + i, stops[s].text, stops[s].len) == 0) return (int64_t)i;
    return -1;
}

/* Random streams over a two-letter alphabet (the worst case for partial matches). */
static void test_random_streams(void **state) {
    (void)state;
    uint32_t x = 12345;
#define RND() (x = x * 1103515245u + 12345u, (x >> 16) & 0x7fff)
    for (int trial = 0; trial < 3000; trial++) {
        char stop_text[3][4];
        ql_stop_str_t stops[3];
        int32_t n_stops = 1 + (int32_t)(RND() % 3);
        for (int32_t s = 0; s < n_stops; s++) {
            size_t len = 1 + RND() % 3;
            for (size_t k = 0; k < len; k++) stop_text[s][k] = (char)('a' + RND() % 2);
            stops[s] = (ql_stop_str_t){stop_text[s], len};
        }
        ql_stop_t st;
        assert_int_equal(ql_stop_init(&st, stops, n_stops), 0);
        char all[64], emitted[64];
        size_t n_all = 0, n_emitted = 0;
        int matched = 0;
        for (int p = 0; p < 12 && !matched; p++) {
            char piece[3];
            size_t len = RND() % 4;
            for (size_t k = 0; k < len; k++) piece[k] = (char)('a' + RND() % 2);
            memcpy(all + n_all, piece, len);
            n_all += len;
            const char *out;
            size_t on;
            int rc = ql_stop_push(&st, piece, len, 1, &out, &on, NULL);
            memcpy(emitted + n_emitted, out, on);
            n_emitted += on;
            int64_t at = earliest(all, n_all, stops, n_stops);
            if (at >= 0) {
                /* the first push that completes a stop string ends the stream there */
                assert_int_equal(rc, 1);
                assert_int_equal(n_emitted, (size_t)at);
                matched = 1;
            } else {
                assert_int_equal(rc, 0);
                /* released text is final: a prefix of everything so far, and no stop string can
                 * start inside it any more */
                assert_memory_equal(emitted, all, n_emitted);
                assert_int_equal(n_emitted + ql_stop_n_held(&st), n_all);
            }
        }
        if (!matched) {
            const char *out;
            size_t on;
            ql_stop_flush(&st, &out, &on);
            memcpy(emitted + n_emitted, out, on);
            n_emitted += on;
            assert_int_equal(n_emitted, n_all);
            assert_memory_equal(emitted, all, n_all);
        }
        ql_stop_free(&st);
    }
#undef RND
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_random_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
