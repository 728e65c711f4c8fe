/*
 * tests/unit/server/test-route.c — the canonical request target (what routing and the API-key
 * check both read), the route table's open set, bearer-key checks and CORS (server/route.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/server-internal.h"

static void canon(const char *target, const char *want) {
    ql_target_t t;
    int rc = ql__route_target(target, strlen(target), &t);
    if (!want) {
        if (rc != QL_EINVAL) fail_msg("%s: expected QL_EINVAL, got %d (%s)", target, rc, t.path);
        return;
    }
    if (rc != 0) fail_msg("%s: expected %s, got %d", target, want, rc);
    if (strcmp(t.path, want) != 0) fail_msg("%s: expected %s, got %s", target, want, t.path);
}

static void test_canonical_paths(void **state) {
    (void)state;
    canon("/v1/models", "/v1/models");
    canon("/v1/models?x=1&y=/..", "/v1/models");
    canon("//v1//models/", "/v1/models");
    canon("/v1/./models/.", "/v1/models");
    canon("/v1/x/../models", "/v1/models");
    canon("/health/../v1/models", "/v1/models");
    canon("/../../v1/models", "/v1/models");
    canon("/%76%31/models", "/v1/models");
    canon("/v1%2Fmodels", "/v1/models");
    canon("/health%2f..%2fv1%2fmodels", "/v1/models");
    canon("/%2e%2e/%2E/v1/models", "/v1/models");
    canon("/", "/");
    canon("/..", "/");
    canon("/?q", "/");
    canon("http://localhost/v1/models", "/v1/models");
    canon("HTTPS://h:443//v1/../health", "/health");
    canon("http://h", "/");
    canon("http://h?x", "/");
    canon("/a;b/..", "/");
    canon("/HEALTH", "/HEALTH"); /* case is kept: no route */
    /* not a path */
    canon("", NULL);
    canon("*", NULL);
    canon("localhost:80", NULL);
    canon("ftp://h/x", NULL);
    canon("http:///x", NULL);
    canon("/a#b", NULL);
    canon("/a%", NULL);
    canon("/a%2", NULL);
    canon("/a%zz", NULL);
    canon("/a%00", NULL);
    canon("/a%0a", NULL);
    canon("/a%7f", NULL);
}

static void test_long_path(void **state) {
    (void)state;
    char buf[1200] = "/v1";
    for (int i = 0; i < 100; i++) strcat(buf, "/abcdefghi");
    ql_target_t t;
    assert_int_equal(ql__route_target(buf, strlen(buf), &t), 0);
    assert_true(t.too_long);
    /* dot segments bring it back */
    strcpy(buf, "/");
    for (int i = 0; i < 80; i++) strcat(buf, "aaaaaaaaa/../"); /* 1047 bytes */
    strcat(buf, "health");
    assert_int_equal(ql__route_target(buf, strlen(buf), &t), 0);
    assert_string_equal(t.path, "/health");
}

static void test_routes(void **state) {
    (void)state;
    assert_int_equal(ql__route_find("/health"), QL_ROUTE_HEALTH);
    assert_int_equal(ql__route_find("/v1/chat/completions"), QL_ROUTE_CHAT);
    assert_int_equal(ql__route_find("/v1/chat"), QL_ROUTE_NONE);
    assert_true(ql__route_open(QL_ROUTE_HEALTH));
    assert_true(ql__route_open(QL_ROUTE_READY));
    for (int r = QL_ROUTE_METRICS; r < QL_ROUTE_COUNT; r++)
        assert_false(ql__route_open((ql_route_t)r));
    assert_false(ql__route_open(QL_ROUTE_NONE)); /* deny by default */
    assert_string_equal(ql__route_method(QL_ROUTE_COMPLETIONS), "POST");
    assert_string_equal(ql__route_method(QL_ROUTE_MODELS), "GET");
}

static int auth(const ql_config_t *c, const char *h, int *sent) {
    return ql__route_auth(c, h, h ? strlen(h) : 0, sent);
}

static void test_auth(void **state) {
    (void)state;
    ql_config_t c;
    memset(&c, 0, sizeof c);
    int sent = -1;
    assert_int_equal(auth(&c, NULL, &sent), 1); /* no keys: open */
    char k1[] = "secret-1", k2[] = "other";
    char *keys[] = {k1, k2};
    c.api_keys.v = keys;
    c.api_keys.n = 2;
    assert_int_equal(auth(&c, NULL, &sent), 0);
    assert_int_equal(sent, 0);
    assert_int_equal(auth(&c, "Bearer secret-1", &sent), 1);
    assert_int_equal(sent, 1);
    assert_int_equal(auth(&c, "bearer other", &sent), 1);
    assert_int_equal(auth(&c, "BEARER \t secret-1", &sent), 1);
    assert_int_equal(auth(&c, "Bearer secret-12", &sent), 0);
    assert_int_equal(sent, 1);
    assert_int_equal(auth(&c, "Bearer secret-", &sent), 0);
    assert_int_equal(auth(&c, "Bearer ", &sent), 0);
    assert_int_equal(sent, 0);
    assert_int_equal(auth(&c, "Basic secret-1", &sent), 0);
    assert_int_equal(auth(&c, "secret-1", &sent), 0);
    assert_int_equal(auth(&c, "Bearersecret-1", &sent), 0);
    assert_int_equal(ql__route_auth(&c, "Bearer secret-1\0x", 17, &sent), 0); /* a NUL is no end */
}

static void test_cors(void **state) {
    (void)state;
    ql_config_t c;
    memset(&c, 0, sizeof c);
    char out[256];
    assert_int_equal(ql__route_cors(&c, "https://a", 9, out, sizeof out), 0);
    assert_string_equal(out, "");
    char o1[] = "https://a";
    char *list[] = {o1};
    c.cors_origins.v = list;
    c.cors_origins.n = 1;
    assert_int_equal(ql__route_cors(&c, "https://a", 9, out, sizeof out), 1);
    assert_string_equal(out, "Access-Control-Allow-Origin: https://a\r\nVary: Origin\r\n");
    assert_int_equal(ql__route_cors(&c, "https://a.evil", 14, out, sizeof out), 0);
    assert_int_equal(ql__route_cors(&c, "https://", 8, out, sizeof out), 0);
    char star[] = "*";
    list[0] = star;
    assert_int_equal(ql__route_cors(&c, "https://b", 9, out, sizeof out), 1);
    assert_string_equal(out, "Access-Control-Allow-Origin: *\r\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_paths),
        cmocka_unit_test(test_long_path),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_cors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
