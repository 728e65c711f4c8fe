/*
 * tests/unit/bench/test-client.c — what quill bench reads and writes on the wire: the target URL
 * (bench/client.c) and proto/client.c's request bodies and stream chunks, in vLLM's and
 * llama.cpp's shapes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bench/bench-internal.h"

static void test_url(void **state) {
    (void)state;
    ql__bench_target_t t;
    char err[256];
    assert_int_equal(ql__bench_parse_url("http://127.0.0.1:8000", &t, err, sizeof(err)), 0);
    assert_string_equal(t.host, "127.0.0.1");
    assert_int_equal(t.port, 8000);
    assert_string_equal(t.prefix, "");
    assert_string_equal(t.host_header, "127.0.0.1:8000");
    assert_int_equal(ql__bench_parse_url("HTTP://example.com/api/", &t, err, sizeof(err)), 0);
    assert_string_equal(t.host, "example.com");
    assert_int_equal(t.port, 80);
    assert_string_equal(t.prefix, "/api");
    assert_int_equal(ql__bench_parse_url("http://[::1]:9/x", &t, err, sizeof(err)), 0);
    assert_string_equal(t.host, "::1");
    assert_string_equal(t.host_header, "[::1]:9");
    assert_string_equal(t.prefix, "/x");
    const char *bad[] = {"https://h", "ftp://h", "127.0.0.1:8000", "http://", "http://:80", "http://h:0",
                         "http://h:65536", "http://h:8x", "http://[::1", "http://h/a b", "http://h/a?b=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(ql__bench_parse_url(bad[i], &t, err, sizeof(err)), QL_EINVAL);
        assert_non_null(strstr(err, "--base-url"));
        assert_null(strchr(err, '\n'));
    }
}

static void test_request_body(void **state) {
    (void)state;
    const int32_t ids[] = {5, 17, 0};
    ql_proto_client_req_t r = {.model = "m\"x", .prompt_ids = ids, .n_prompt_ids = 3, .max_tokens = 7, .ignore_eos = 1};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_client_request(&r, &b), 0);
    assert_non_null(strstr(b.data, "\"prompt\":[5,17,0]"));
    assert_non_null(strstr(b.data, "\"model\":\"m\\\"x\""));
    assert_non_null(strstr(b.data, "\"max_tokens\":7"));
    assert_non_null(strstr(b.data, "\"ignore_eos\":true"));
    assert_non_null(strstr(b.data, "\"stream\":true"));
    assert_non_null(strstr(b.data, "\"stream_options\":{\"include_usage\":true}"));
    ql_proto_buf_free(&b);
    ql_proto_client_req_t c = {.chat = 1, .prompt_text = "hi\n", .max_tokens = 1};
    assert_int_equal(ql_proto_client_request(&c, &b), 0);
    assert_non_null(strstr(b.data, "\"messages\":[{\"role\":\"user\",\"content\":\"hi\\n\"}]"));
    assert_null(strstr(b.data, "\"model\""));
    assert_null(strstr(b.data, "ignore_eos"));
    ql_proto_buf_free(&b);
    ql_proto_client_req_t bad = {.chat = 1, .prompt_ids = ids, .n_prompt_ids = 3, .max_tokens = 1};
    assert_int_equal(ql_proto_client_request(&bad, &b), QL_EINVAL); /* chat needs text */
    ql_proto_client_req_t bad2 = {.prompt_ids = ids, .n_prompt_ids = 3, .max_tokens = 0};
    assert_int_equal(ql_proto_client_request(&bad2, &b), QL_EINVAL);
    assert_int_equal(ql_proto_client_tokenize_body("a", 1, &b), 0);
    assert_string_equal(b.data, "{\"content\":\"a\",\"add_special\":false}");
    ql_proto_buf_free(&b);
}

static void test_chunks(void **state) {
    (void)state;
    ql_proto_client_chunk_t c;
#define CHUNK(s) ql_proto_client_chunk(s, strlen(s), &c)
    assert_int_equal(CHUNK("{\"choices\":[{\"text\":\"ab\",\"finish_reason\":null}],\"usage\":null}"), 0);
    assert_true(c.has_choice && c.text_len == 2 && !c.finished && !c.is_error);
    assert_true(c.prompt_tokens == -1 && c.completion_tokens == -1);
    assert_int_equal(CHUNK("{\"choices\":[{\"delta\":{\"content\":\"xyz\"},\"finish_reason\":\"length\"}]}"), 0);
    assert_true(c.has_choice && c.text_len == 3 && c.finished);
    assert_int_equal(CHUNK("{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}"), 0);
    assert_true(c.has_choice && c.text_len == 0);
    assert_int_equal(CHUNK("{\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}"), 0);
    assert_true(!c.has_choice && c.prompt_tokens == 12 && c.completion_tokens == 5);
    assert_int_equal(CHUNK("{\"error\":{\"message\":\"boom\\nnow\",\"type\":\"server_error\"}}"), 0);
    assert_true(c.is_error);
    assert_string_equal(c.error, "boom now");
    assert_int_equal(CHUNK("[1,2]"), QL_EINVAL);
    assert_int_equal(CHUNK("{\"choices\":"), QL_EINVAL);
#undef CHUNK
}

static void test_answers(void **state) {
    (void)state;
    int32_t *ids;
    size_t n;
    const char *v = "{\"count\":3,\"max_model_len\":8192,\"tokens\":[1,22,333]}";
    assert_int_equal(ql_proto_client_tokens(v, strlen(v), &ids, &n), 0);
    assert_int_equal(n, 3);
    assert_true(ids[0] == 1 && ids[1] == 22 && ids[2] == 333);
    free(ids);
    const char *l = "{\"tokens\":[{\"id\":9,\"piece\":\"a\"}]}";
    assert_int_equal(ql_proto_client_tokens(l, strlen(l), &ids, &n), 0);
    assert_true(n == 1 && ids[0] == 9);
    free(ids);
    const char *neg = "{\"tokens\":[1,-2]}";
    assert_int_equal(ql_proto_client_tokens(neg, strlen(neg), &ids, &n), QL_EINVAL);
    assert_null(ids);
    char *text;
    const char *d1 = "{\"prompt\":\"hello\"}", *d2 = "{\"content\":\"hi\"}";
    assert_int_equal(ql_proto_client_text(d1, strlen(d1), &text), 0);
    assert_string_equal(text, "hello");
    free(text);
    assert_int_equal(ql_proto_client_text(d2, strlen(d2), &text), 0);
    assert_string_equal(text, "hi");
    free(text);
    const char *m = "{\"object\":\"list\",\"data\":[{\"id\":\"smol\"},{\"id\":\"other\"}]}";
    assert_int_equal(ql_proto_client_first_model(m, strlen(m), &text), 0);
    assert_string_equal(text, "smol");
    free(text);
    const char *empty = "{\"data\":[]}";
    assert_int_equal(ql_proto_client_first_model(empty, strlen(empty), &text), QL_EINVAL);
    char msg[8];
    const char *e = "{\"error\":{\"message\":\"a long message\"}}";
    assert_int_equal(ql_proto_client_error_message(e, strlen(e), msg, sizeof(msg)), 0);
    assert_string_equal(msg, "a long "); /* cut to the buffer */
    assert_int_equal(ql_proto_client_error_message("{}", 2, msg, sizeof(msg)), QL_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_request_body),
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
