/*
 * tests/unit/proto/test-response.c — what quill writes: each response type has exactly OpenAI's
 * keys (the output, parsed, equals an object written here by hand from OpenAI's API reference),
 * SSE framing byte for byte, every error body, escaping of control characters, U+FFFD repair of
 * invalid UTF-8, logprob formatting, and writers that fail (jansson out of memory) leave the
 * buffer as it was.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "proto/proto.h"

#define C QL_PROTO_ENDPOINT_COMPLETIONS
#define H QL_PROTO_ENDPOINT_CHAT

/* ---- helpers ---- */

/* Asserts that `got` (JSON text) equals `want` (JSON text): same keys, same values. */
static void assert_json_eq(const char *got, const char *want) {
    json_error_t e;
    json_t *g = json_loads(got, 0, &e);
    if (!g) fail_msg("output is not JSON (%s): %s", e.text, got);
    json_t *w = json_loads(want, 0, &e);
    if (!w) fail_msg("expected text is not JSON (%s): %s", e.text, want);
    if (!json_equal(g, w)) fail_msg("JSON differs\n got: %s\nwant: %s", got, want);
    json_decref(g);
    json_decref(w);
}

/* Checks the SSE framing of buf and returns the number of events: each is "data: <payload>\n\n"
 * with no newline inside the payload, and each payload is JSON or [DONE]. */
static int check_sse(const char *buf, size_t len) {
    int n = 0;
    size_t i = 0;
    while (i < len) {
        assert_true(len - i > 6);
        assert_memory_equal(buf + i, "data: ", 6);
        const char *end = strstr(buf + i, "\n\n");
        assert_non_null(end);
        size_t plen = (size_t)(end - (buf + i + 6));
        assert_null(memchr(buf + i + 6, '\n', plen));
        assert_null(memchr(buf + i + 6, '\r', plen));
        if (!(plen == 6 && !memcmp(buf + i + 6, "[DONE]", 6))) {
            json_error_t e;
            json_t *j = json_loadb(buf + i + 6, plen, 0, &e);
            if (!j) fail_msg("event %d is not JSON: %s", n, e.text);
            json_decref(j);
        }
        i = (size_t)(end - buf) + 2;
        n++;
    }
    return n;
}

static const ql_proto_usage_t k_usage = {.prompt_tokens = 5, .completion_tokens = 7, .cached_tokens = 3};
static const char k_usage_json[] = "{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12,"
                                   "\"prompt_tokens_details\":{\"cached_tokens\":3}}";

/* ---- whole responses ---- */

static void test_completion_object(void **state) {
    (void)state;
    ql_proto_choice_t ch[2] = {
        {.index = 0, .text = "Hello", .text_len = 5, .finish_reason = QL_PROTO_FINISH_STOP},
        {.index = 1, .text = " world", .text_len = 6, .finish_reason = QL_PROTO_FINISH_LENGTH},
    };
    ql_proto_response_t r = {.id = "cmpl-abc", .created = 1700000000, .model = "smollm2",
                             .choices = ch, .n_choices = 2, .usage = &k_usage};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(C, &r, &b), 0);
    /* OpenAI's API reference, "The completion object" */
    char want[1024];
    snprintf(want, sizeof want,
             "{\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,"
             "\"model\":\"smollm2\",\"choices\":["
             "{\"text\":\"Hello\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"},"
             "{\"text\":\" world\",\"index\":1,\"logprobs\":null,\"finish_reason\":\"length\"}],"
             "\"usage\":%s}",
             k_usage_json);
    assert_json_eq(b.data, want);
    /* compact: no whitespace outside strings */
    assert_null(strchr(b.data, '\n'));
    assert_null(strstr(b.data, "\": "));
    assert_null(strstr(b.data, ", "));
    assert_int_equal(strlen(b.data), b.len);
    ql_proto_buf_free(&b);
}

/* speculative decoding's counts, in OpenAI's predicted-output names */
static void test_usage_spec(void **state) {
    (void)state;
    ql_proto_choice_t ch = {.index = 0, .text = "Hi", .text_len = 2,
                            .finish_reason = QL_PROTO_FINISH_STOP};
    ql_proto_usage_t u = {.prompt_tokens = 5, .completion_tokens = 7, .cached_tokens = 0,
                          .has_spec = 1, .spec_accepted_tokens = 4, .spec_rejected_tokens = 9};
    ql_proto_response_t r = {.id = "cmpl-s", .created = 1700000000, .model = "m",
                             .choices = &ch, .n_choices = 1, .usage = &u};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(C, &r, &b), 0);
    assert_json_eq(b.data,
                   "{\"id\":\"cmpl-s\",\"object\":\"text_completion\",\"created\":1700000000,"
                   "\"model\":\"m\",\"choices\":[{\"text\":\"Hi\",\"index\":0,\"logprobs\":null,"
                   "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,"
                   "\"completion_tokens\":7,\"total_tokens\":12,\"prompt_tokens_details\":"
                   "{\"cached_tokens\":0},\"completion_tokens_details\":"
                   "{\"accepted_prediction_tokens\":4,\"rejected_prediction_tokens\":9}}}");
    ql_proto_buf_free(&b);
}

static void test_chat_object(void **state) {
    (void)state;
    ql_proto_choice_t ch = {.index = 0, .text = "Hi there", .text_len = 8,
                            .finish_reason = QL_PROTO_FINISH_STOP};
    ql_proto_response_t r = {.id = "chatcmpl-1", .created = 1, .model = "m", .choices = &ch,
                             .n_choices = 1, .usage = &k_usage};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(H, &r, &b), 0);
    char want[1024];
    snprintf(want, sizeof want,
             "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi there\"},"
             "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":%s}",
             k_usage_json);
    assert_json_eq(b.data, want);
    /* and byte for byte: OpenAI's key order, compact */
    assert_string_equal(b.data, want);
    ql_proto_buf_free(&b);
}

static void test_chat_logprobs(void **state) {
    (void)state;
    ql_proto_top_logprob_t top0[2] = {{"Hi", 2, -0.5f}, {"Hello", 5, -1.25f}};
    ql_proto_top_logprob_t top2[1] = {{"\xe2\x82", 2, -INFINITY}};
    ql_proto_logprob_t lp[3] = {
        {.token = "Hi", .token_len = 2, .logprob = -0.5f, .top = top0, .n_top = 2},
        {.token = "!", .token_len = 1, .logprob = -0.25f},
        /* a token that is the first two bytes of "€": shown as U+FFFD, its bytes exact */
        {.token = "\xe2\x82", .token_len = 2, .logprob = -3.0f, .top = top2, .n_top = 1},
    };
    ql_proto_choice_t ch = {.index = 0, .text = "Hi!\xe2\x82", .text_len = 5,
                            .finish_reason = QL_PROTO_FINISH_LENGTH, .has_logprobs = 1,
                            .logprobs = lp, .n_logprobs = 3};
    ql_proto_response_t r = {.id = "chatcmpl-1", .created = 1, .model = "m", .choices = &ch,
                             .n_choices = 1, .usage = &k_usage};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(H, &r, &b), 0);
    char want[2048];
    snprintf(want, sizeof want,
             "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi!\\ufffd\"},"
             "\"logprobs\":{\"content\":["
             "{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105],\"top_logprobs\":["
             "{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105]},"
             "{\"token\":\"Hello\",\"logprob\":-1.25,\"bytes\":[72,101,108,108,111]}]},"
             "{\"token\":\"!\",\"logprob\":-0.25,\"bytes\":[33],\"top_logprobs\":[]},"
             "{\"token\":\"\\ufffd\",\"logprob\":-3.0,\"bytes\":[226,130],\"top_logprobs\":["
             "{\"token\":\"\\ufffd\",\"logprob\":-9999.0,\"bytes\":[226,130]}]}]},"
             "\"finish_reason\":\"length\"}],\"usage\":%s}",
             k_usage_json);
    assert_json_eq(b.data, want);
    ql_proto_buf_free(&b);

    /* logprobs asked for, no tokens: an empty list, not null */
    ql_proto_choice_t empty = {.index = 0, .has_logprobs = 1, .finish_reason = QL_PROTO_FINISH_STOP};
    r.choices = &empty;
    assert_int_equal(ql_proto_response_json(H, &r, &b), 0);
    snprintf(want, sizeof want,
             "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"\"},"
             "\"logprobs\":{\"content\":[]},\"finish_reason\":\"stop\"}],\"usage\":%s}",
             k_usage_json);
    assert_json_eq(b.data, want);
    ql_proto_buf_free(&b);
}

static void test_completion_logprobs(void **state) {
    (void)state;
    /* echo: the prompt's first token has no logprob; two alternatives with one text keep the
     * first (more likely) */
    ql_proto_top_logprob_t top1[3] = {{"!", 1, -0.25f}, {"\xe2", 1, -2.0f}, {"\xe3", 1, -3.0f}};
    ql_proto_logprob_t lp[2] = {
        {.token = "Hi", .token_len = 2, .logprob = NAN, .text_offset = 0},
        {.token = "!", .token_len = 1, .logprob = -0.25f, .text_offset = 2, .top = top1, .n_top = 3},
    };
    ql_proto_choice_t ch = {.index = 0, .text = "Hi!", .text_len = 3,
                            .finish_reason = QL_PROTO_FINISH_LENGTH, .has_logprobs = 1,
                            .logprobs = lp, .n_logprobs = 2};
    ql_proto_response_t r = {.id = "cmpl-1", .created = 1, .model = "m", .choices = &ch,
                             .n_choices = 1, .usage = &k_usage};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(C, &r, &b), 0);
    char want[1024];
    snprintf(want, sizeof want,
             "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\","
             "\"choices\":[{\"text\":\"Hi!\",\"index\":0,\"logprobs\":{"
             "\"tokens\":[\"Hi\",\"!\"],\"token_logprobs\":[null,-0.25],"
             "\"top_logprobs\":[null,{\"!\":-0.25,\"\\ufffd\":-2.0}],\"text_offset\":[0,2]},"
             "\"finish_reason\":\"length\"}],\"usage\":%s}",
             k_usage_json);
    assert_json_eq(b.data, want);
    ql_proto_buf_free(&b);
}

/* NOTE(logprob-format): the shortest decimal that reads back as the same float32 */
static void test_logprob_format(void **state) {
    (void)state;
    static const struct {
        float v;
        const char *text;
    } k[] = {
        {-0.1f, "-0.1"},           {-0.31326169f, "-0.3132617"}, {-1e-5f, "-1e-5"},
        {0.0f, "0.0"},             {-12.345678f, "-12.345678"},  {-0.0009114635f, "-0.0009114635"},
        {-INFINITY, "-9999.0"},    {-1e30f, "-9999.0"},          {-9999.0f, "-9999.0"},
        {-2.0f, "-2.0"},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(k); i++) {
        ql_proto_logprob_t lp = {.token = "a", .token_len = 1, .logprob = k[i].v};
        ql_proto_choice_t ch = {.text = "a", .text_len = 1, .has_logprobs = 1, .logprobs = &lp,
                                .n_logprobs = 1};
        ql_proto_response_t r = {.id = "x", .model = "m", .choices = &ch, .n_choices = 1,
                                 .usage = &k_usage};
        ql_proto_buf_t b = {0};
        assert_int_equal(ql_proto_response_json(H, &r, &b), 0);
        char needle[64];
        snprintf(needle, sizeof needle, "\"logprob\":%s,", k[i].text);
        if (!strstr(b.data, needle)) fail_msg("case %zu: no %s in %s", i, needle, b.data);
        ql_proto_buf_free(&b);
    }
    /* NaN: null */
    ql_proto_logprob_t lp = {.token = "a", .token_len = 1, .logprob = NAN};
    ql_proto_choice_t ch = {.text = "a", .text_len = 1, .has_logprobs = 1, .logprobs = &lp, .n_logprobs = 1};
    ql_proto_response_t r = {.id = "x", .model = "m", .choices = &ch, .n_choices = 1, .usage = &k_usage};
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_response_json(H, &r, &b), 0);
    assert_non_null(strstr(b.data, "\"logprob\":null,"));
    ql_proto_buf_free(&b);
}

/* ---- streams: byte for byte ---- */

#define CHAT_HEAD "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":["
#define CMPL_HEAD "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":["

static void test_chat_stream(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    ql_proto_choice_t ch = {.index = 0, .first = 1, .text = "Hel", .text_len = 3};
    ql_proto_response_t r = {.id = "chatcmpl-1", .created = 1, .model = "m", .choices = &ch, .n_choices = 1};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    ch = (ql_proto_choice_t){.index = 0, .text = "lo", .text_len = 2, .finish_reason = QL_PROTO_FINISH_STOP};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    assert_int_equal(ql_proto_sse_done(&b), 0);
    static const char want[] =
        CHAT_HEAD "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        CHAT_HEAD "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"
        "data: [DONE]\n\n";
    assert_string_equal(b.data, want);
    assert_int_equal(b.len, sizeof want - 1);
    assert_int_equal(check_sse(b.data, b.len), 5);
    ql_proto_buf_free(&b);
}

static void test_chat_stream_usage_and_n(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    /* two choices (n = 2), first events, one already finishing with no text */
    ql_proto_choice_t ch[2] = {
        {.index = 0, .first = 1, .text = "A", .text_len = 1},
        {.index = 1, .first = 1, .finish_reason = QL_PROTO_FINISH_LENGTH},
    };
    ql_proto_usage_t u = {.prompt_tokens = 3, .completion_tokens = 2, .cached_tokens = 0};
    ql_proto_response_t r = {.id = "chatcmpl-1", .created = 1, .model = "m", .choices = ch,
                             .n_choices = 2, .include_usage = 1, .usage = &u};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    assert_int_equal(ql_proto_sse_usage(H, &r, &b), 0);
    assert_int_equal(ql_proto_sse_done(&b), 0);
    static const char want[] =
        CHAT_HEAD "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"A\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        CHAT_HEAD "{\"index\":1,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        CHAT_HEAD "{\"index\":1,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":null}\n\n"
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],"
        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"
        "data: [DONE]\n\n";
    assert_string_equal(b.data, want);
    assert_int_equal(check_sse(b.data, b.len), 6);
    ql_proto_buf_free(&b);
}

static void test_chat_stream_logprobs(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    ql_proto_logprob_t lp = {.token = "Hi", .token_len = 2, .logprob = -0.5f};
    ql_proto_choice_t ch = {.index = 0, .text = "Hi", .text_len = 2, .has_logprobs = 1,
                            .logprobs = &lp, .n_logprobs = 1, .finish_reason = QL_PROTO_FINISH_STOP};
    ql_proto_response_t r = {.id = "chatcmpl-1", .created = 1, .model = "m", .choices = &ch, .n_choices = 1};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    static const char want[] =
        CHAT_HEAD "{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105],\"top_logprobs\":[]}]},\"finish_reason\":null}]}\n\n"
        CHAT_HEAD "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n";
    assert_string_equal(b.data, want);
    ql_proto_buf_free(&b);

    /* a token with no text yet (half a character held back) still carries its logprob */
    ch = (ql_proto_choice_t){.index = 0, .has_logprobs = 1, .logprobs = &lp, .n_logprobs = 1};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    assert_int_equal(check_sse(b.data, b.len), 1);
    assert_non_null(strstr(b.data, "\"delta\":{\"content\":\"\"},\"logprobs\":{\"content\":[{"));
    ql_proto_buf_free(&b);

    /* nothing to say: nothing written */
    ch = (ql_proto_choice_t){.index = 0};
    assert_int_equal(ql_proto_sse_chunks(H, &r, &b), 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(ql_proto_sse_chunks(C, &r, &b), 0);
    assert_int_equal(b.len, 0);
    ql_proto_buf_free(&b);
}

static void test_completion_stream(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    ql_proto_choice_t ch = {.index = 0, .first = 1, .text = "Hel", .text_len = 3};
    ql_proto_response_t r = {.id = "cmpl-1", .created = 1, .model = "m", .choices = &ch, .n_choices = 1};
    assert_int_equal(ql_proto_sse_chunks(C, &r, &b), 0);
    ch = (ql_proto_choice_t){.index = 0, .text = "lo", .text_len = 2, .finish_reason = QL_PROTO_FINISH_LENGTH};
    assert_int_equal(ql_proto_sse_chunks(C, &r, &b), 0);
    ql_proto_usage_t u = {.prompt_tokens = 1, .completion_tokens = 2, .cached_tokens = 1};
    r.usage = &u;
    assert_int_equal(ql_proto_sse_usage(C, &r, &b), 0);
    assert_int_equal(ql_proto_sse_done(&b), 0);
    static const char want[] =
        CMPL_HEAD "{\"text\":\"Hel\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        CMPL_HEAD "{\"text\":\"lo\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        CMPL_HEAD "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[],"
        "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n"
        "data: [DONE]\n\n";
    assert_string_equal(b.data, want);
    assert_int_equal(check_sse(b.data, b.len), 5);
    ql_proto_buf_free(&b);

    /* completions logprobs in a chunk: OpenAI's four lists, for this chunk's tokens */
    ql_proto_top_logprob_t top = {"lo", 2, -0.125f};
    ql_proto_logprob_t lp = {.token = "lo", .token_len = 2, .logprob = -0.125f, .text_offset = 3,
                             .top = &top, .n_top = 1};
    ch = (ql_proto_choice_t){.index = 0, .text = "lo", .text_len = 2, .has_logprobs = 1,
                             .logprobs = &lp, .n_logprobs = 1};
    r.usage = NULL;
    assert_int_equal(ql_proto_sse_chunks(C, &r, &b), 0);
    assert_string_equal(b.data, CMPL_HEAD "{\"text\":\"lo\",\"index\":0,\"logprobs\":{\"tokens\":[\"lo\"],"
                                          "\"token_logprobs\":[-0.125],\"top_logprobs\":[{\"lo\":-0.125}],"
                                          "\"text_offset\":[3]},\"finish_reason\":null}]}\n\n");
    ql_proto_buf_free(&b);
}

static void test_sse_error_and_done(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    ql_proto_error_t e;
    ql_proto_error_unavailable(&e, "the server is shutting down");
    assert_int_equal(ql_proto_sse_error(&e, &b), 0);
    assert_int_equal(ql_proto_sse_done(&b), 0);
    assert_string_equal(b.data,
                        "data: {\"error\":{\"message\":\"The server cannot take requests now: the server is "
                        "shutting down. Please retry later.\",\"type\":\"server_error\",\"param\":null,"
                        "\"code\":\"service_unavailable\"}}\n\n"
                        "data: [DONE]\n\n");
    assert_int_equal(check_sse(b.data, b.len), 2);
    ql_proto_buf_free(&b);
}

/* ---- errors ---- */

static void check_error(const ql_proto_error_t *e, int status, const char *want_json) {
    assert_int_equal(e->status, status);
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_error_json(e, &b), 0);
    assert_json_eq(b.data, want_json);
    ql_proto_buf_free(&b);
}

static void test_error_bodies(void **state) {
    (void)state;
    ql_proto_error_t e;
    ql_proto_error_invalid(&e, "n", "n: expected an integer in [1, 4], got %d", 5);
    check_error(&e, 400, "{\"error\":{\"message\":\"n: expected an integer in [1, 4], got 5\","
                         "\"type\":\"invalid_request_error\",\"param\":\"n\",\"code\":null}}");
    ql_proto_error_invalid(&e, NULL, "The request body is not valid JSON.");
    check_error(&e, 400, "{\"error\":{\"message\":\"The request body is not valid JSON.\","
                         "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");
    ql_proto_error_context_length(&e, 1, 4097, 162, 4000);
    check_error(&e, 400, "{\"error\":{\"message\":\"This model's maximum context length is 4097 tokens. "
                         "However, you requested 4162 tokens (162 in the messages, 4000 in the completion). "
                         "Please reduce the length of the messages or completion.\","
                         "\"type\":\"invalid_request_error\",\"param\":\"messages\","
                         "\"code\":\"context_length_exceeded\"}}");
    ql_proto_error_context_length(&e, 0, 2048, 3000, -1);
    check_error(&e, 400, "{\"error\":{\"message\":\"This model's maximum context length is 2048 tokens. "
                         "However, your prompt resulted in 3000 tokens. Please reduce the length of the prompt.\","
                         "\"type\":\"invalid_request_error\",\"param\":\"prompt\","
                         "\"code\":\"context_length_exceeded\"}}");
    ql_proto_error_auth(&e, 1);
    check_error(&e, 401, "{\"error\":{\"message\":\"Incorrect API key provided.\","
                         "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}");
    ql_proto_error_auth(&e, 0);
    assert_int_equal(e.status, 401);
    assert_non_null(strstr(e.message, "You didn't provide an API key."));
    assert_null(e.code);
    ql_proto_error_model_not_found(&e, "gpt-4o");
    check_error(&e, 404, "{\"error\":{\"message\":\"The model `gpt-4o` does not exist or you do not have "
                         "access to it.\",\"type\":\"invalid_request_error\",\"param\":null,"
                         "\"code\":\"model_not_found\"}}");
    ql_proto_error_route_not_found(&e, "POST", "/v1/foo");
    check_error(&e, 404, "{\"error\":{\"message\":\"Invalid URL (POST /v1/foo)\","
                         "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");
    ql_proto_error_method_not_allowed(&e, "GET", "/v1/completions");
    assert_int_equal(e.status, 405);
    assert_string_equal(e.code, "method_not_allowed");
    ql_proto_error_too_large(&e, 1048576);
    check_error(&e, 413, "{\"error\":{\"message\":\"The request body is larger than this server accepts "
                         "(1048576 bytes).\",\"type\":\"invalid_request_error\",\"param\":null,"
                         "\"code\":\"request_too_large\"}}");
    ql_proto_error_queue_full(&e, 256, 1);
    check_error(&e, 429, "{\"error\":{\"message\":\"The server is at capacity (256 requests waiting). "
                         "Please retry after 1 seconds.\",\"type\":\"requests\",\"param\":null,"
                         "\"code\":\"rate_limit_exceeded\"}}");
    ql_proto_error_internal(&e, NULL);
    check_error(&e, 500, "{\"error\":{\"message\":\"The server had an error while processing your request.\","
                         "\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    ql_proto_error_internal(&e, "request r-9");
    assert_string_equal(e.message, "The server had an error while processing your request (request r-9).");
    ql_proto_error_unavailable(&e, "the model is still loading");
    check_error(&e, 503, "{\"error\":{\"message\":\"The server cannot take requests now: the model is still "
                         "loading. Please retry later.\",\"type\":\"server_error\",\"param\":null,"
                         "\"code\":\"service_unavailable\"}}");
    ql_proto_error_set(&e, 431, "invalid_request_error", "headers_too_large", NULL, "Too many headers.");
    check_error(&e, 431, "{\"error\":{\"message\":\"Too many headers.\",\"type\":\"invalid_request_error\","
                         "\"param\":null,\"code\":\"headers_too_large\"}}");
}

/* A message cut inside a multi-byte character, and a client's invalid bytes, still make valid JSON. */
static void test_error_repairs_utf8(void **state) {
    (void)state;
    ql_proto_error_t e;
    char model[600];
    memset(model, 0, sizeof model);
    for (int i = 0; i < 199; i++) model[i] = 'a';
    strcat(model, "\xc3\xa9\xc3\xa9"); /* byte 200 is the middle of an é: %.200s cuts it */
    ql_proto_error_model_not_found(&e, model);
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_error_json(&e, &b), 0);
    json_error_t je;
    json_t *j = json_loads(b.data, 0, &je);
    assert_non_null(j);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(strstr(msg, "a\xef\xbf\xbd` does not exist"));
    json_decref(j);
    ql_proto_buf_free(&b);

    /* a message longer than the buffer is cut, not overflowed */
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ql_proto_error_invalid(&e, big, "%s", big);
    assert_int_equal(strlen(e.message), QL_PROTO_ERROR_MESSAGE_MAX - 1);
    assert_int_equal(strlen(e.param), QL_PROTO_ERROR_PARAM_MAX - 1);
    assert_int_equal(ql_proto_error_json(&e, &b), 0);
    ql_proto_buf_free(&b);
}

/* ---- escaping and UTF-8 ---- */

static void test_escaping(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    static const char text[] = "a\x01\n\t\r\"\\\0/\x7f\xe2\x80\xa8z";
    assert_int_equal(ql_proto_detokenize_json(text, sizeof text - 1, &b), 0);
    assert_string_equal(b.data, "{\"prompt\":\"a\\u0001\\n\\t\\r\\\"\\\\\\u0000/\x7f\xe2\x80\xa8z\"}");
    json_error_t je;
    json_t *j = json_loads(b.data, JSON_ALLOW_NUL, &je);
    assert_non_null(j);
    const json_t *p = json_object_get(j, "prompt");
    assert_int_equal(json_string_length(p), sizeof text - 1);
    assert_memory_equal(json_string_value(p), text, sizeof text - 1);
    json_decref(j);
    ql_proto_buf_free(&b);
}

/* Python's bytes.decode("utf-8", "replace") on the same bytes gives these. */
static void test_utf8_repair(void **state) {
    (void)state;
    static const struct {
        const char *in;
        const char *out;
        size_t chars;
    } k[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b", 3},
        {"\xe2\x82", "\xef\xbf\xbd", 1},                                   /* truncated €: one */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3},       /* surrogate: three */
        {"\xf0\x9f\x98", "\xef\xbf\xbd", 1},                               /* truncated emoji */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd", 2},                       /* overlong */
        {"\xe2\x82" "A", "\xef\xbf\xbd" "A", 2},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 4}, /* > U+10FFFF */
        {"\xf0\x9f\x98\x80x", "\xf0\x9f\x98\x80x", 2},                     /* valid emoji */
        {"caf\xc3\xa9", "caf\xc3\xa9", 4},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(k); i++) {
        ql_proto_buf_t b = {0};
        assert_int_equal(ql_proto_detokenize_json(k[i].in, strlen(k[i].in), &b), 0);
        json_error_t je;
        json_t *j = json_loads(b.data, 0, &je); /* jansson refuses invalid UTF-8 */
        if (!j) fail_msg("case %zu: %s", i, je.text);
        assert_string_equal(json_string_value(json_object_get(j, "prompt")), k[i].out);
        assert_int_equal(ql_proto_utf8_chars(k[i].in, strlen(k[i].in)), k[i].chars);
        json_decref(j);
        ql_proto_buf_free(&b);
    }
    /* random bytes: always valid JSON, and utf8_chars counts what comes out */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int t = 0; t < 2000; t++) {
        unsigned char s[24];
        size_t n = (size_t)(t % 24);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            s[i] = (unsigned char)(t & 1 ? (x & 0xff) : (0x80 | (x & 0x7f)));
        }
        ql_proto_buf_t b = {0};
        assert_int_equal(ql_proto_detokenize_json((const char *)s, n, &b), 0);
        json_error_t je;
        json_t *j = json_loadb(b.data, b.len, JSON_ALLOW_NUL, &je);
        if (!j) fail_msg("random case %d: %s", t, je.text);
        const json_t *p = json_object_get(j, "prompt");
        size_t cps = 0;
        for (size_t i = 0; i < json_string_length(p); i++)
            cps += (((unsigned char)json_string_value(p)[i]) & 0xC0) != 0x80;
        assert_int_equal(cps, ql_proto_utf8_chars((const char *)s, n));
        json_decref(j);
        ql_proto_buf_free(&b);
    }
}

static void test_utf8_complete_prefix(void **state) {
    (void)state;
    static const struct {
        const char *s;
        size_t want;
    } k[] = {
        {"abc", 3},         {"ab\xe2\x82", 2},  {"ab\xe2\x82\xac", 5}, {"ab\xff", 3},
        {"ab\xe2" "A", 4},  {"\xf0\x9f\x98", 0}, {"a\xc3", 1},         {"\xed\xa0", 2},
        {"", 0},            {"\xc0", 1},         {"x\xf4\x8f\xbf", 1},  {"x\xf4\x90", 3},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(k); i++)
        if (ql_proto_utf8_complete_prefix(k[i].s, strlen(k[i].s)) != k[i].want)
            fail_msg("case %zu: got %zu want %zu", i, ql_proto_utf8_complete_prefix(k[i].s, strlen(k[i].s)),
                     k[i].want);
}

/* ---- models, tokenize, detokenize ---- */

static void test_models_tokenize_detokenize(void **state) {
    (void)state;
    ql_proto_buf_t b = {0};
    ql_proto_model_t m = {.id = "smollm2", .created = 1700000000, .max_model_len = 8192};
    assert_int_equal(ql_proto_models_json(&m, 1, &b), 0);
    assert_json_eq(b.data, "{\"object\":\"list\",\"data\":[{\"id\":\"smollm2\",\"object\":\"model\","
                           "\"created\":1700000000,\"owned_by\":\"quill\",\"max_model_len\":8192}]}");
    ql_proto_buf_free(&b);
    m.max_model_len = 0;
    assert_int_equal(ql_proto_models_json(&m, 1, &b), 0);
    assert_json_eq(b.data, "{\"object\":\"list\",\"data\":[{\"id\":\"smollm2\",\"object\":\"model\","
                           "\"created\":1700000000,\"owned_by\":\"quill\"}]}");
    ql_proto_buf_free(&b);
    assert_int_equal(ql_proto_models_json(NULL, 0, &b), 0);
    assert_string_equal(b.data, "{\"object\":\"list\",\"data\":[]}");
    ql_proto_buf_free(&b);

    int32_t toks[3] = {1, 9906, 2};
    assert_int_equal(ql_proto_tokenize_json(toks, 3, 2048, &b), 0);
    assert_string_equal(b.data, "{\"count\":3,\"max_model_len\":2048,\"tokens\":[1,9906,2]}");
    ql_proto_buf_free(&b);
    assert_int_equal(ql_proto_tokenize_json(NULL, 0, 2048, &b), 0);
    assert_string_equal(b.data, "{\"count\":0,\"max_model_len\":2048,\"tokens\":[]}");
    ql_proto_buf_free(&b);

    assert_int_equal(ql_proto_detokenize_json("Hello", 5, &b), 0);
    assert_string_equal(b.data, "{\"prompt\":\"Hello\"}");
    ql_proto_buf_free(&b);
    assert_int_equal(ql_proto_detokenize_json(NULL, 0, &b), 0);
    assert_string_equal(b.data, "{\"prompt\":\"\"}");
    ql_proto_buf_free(&b);
}

static void test_finish_names_and_bad_args(void **state) {
    (void)state;
    assert_null(ql_proto_finish_name(QL_PROTO_FINISH_NONE));
    assert_string_equal(ql_proto_finish_name(QL_PROTO_FINISH_STOP), "stop");
    assert_string_equal(ql_proto_finish_name(QL_PROTO_FINISH_LENGTH), "length");
    assert_string_equal(ql_proto_finish_name(QL_PROTO_FINISH_CONTENT_FILTER), "content_filter");
    assert_string_equal(ql_proto_finish_name(QL_PROTO_FINISH_TOOL_CALLS), "tool_calls");
    assert_null(ql_proto_finish_name((ql_proto_finish_t)17));

    ql_proto_buf_t b = {0};
    ql_proto_choice_t ch = {.text = "a", .text_len = 1};
    ql_proto_response_t r = {.id = "x", .model = "m", .choices = &ch, .n_choices = 1, .usage = &k_usage};
    assert_int_equal(ql_proto_response_json(QL_PROTO_ENDPOINT_TOKENIZE, &r, &b), QL_EINVAL);
    assert_int_equal(ql_proto_sse_chunks(QL_PROTO_ENDPOINT_DETOKENIZE, &r, &b), QL_EINVAL);
    r.usage = NULL;
    assert_int_equal(ql_proto_response_json(C, &r, &b), QL_EINVAL);
    assert_int_equal(ql_proto_sse_usage(C, &r, &b), QL_EINVAL);
    r.usage = &k_usage;
    r.id = NULL;
    assert_int_equal(ql_proto_response_json(C, &r, &b), QL_EINVAL);
    r.id = "x";
    ch.finish_reason = (ql_proto_finish_t)9;
    assert_int_equal(ql_proto_response_json(C, &r, &b), QL_EINVAL);
    ch.finish_reason = QL_PROTO_FINISH_NONE;
    ch.n_logprobs = 1; /* and no logprobs array */
    assert_int_equal(ql_proto_sse_chunks(C, &r, &b), QL_EINVAL);
    r.n_choices = -1;
    assert_int_equal(ql_proto_response_json(H, &r, &b), QL_EINVAL);
    assert_int_equal(ql_proto_tokenize_json(NULL, 2, 0, &b), QL_EINVAL);
    assert_int_equal(ql_proto_detokenize_json(NULL, 2, &b), QL_EINVAL);
    assert_int_equal(ql_proto_models_json(NULL, 1, &b), QL_EINVAL);
    assert_int_equal(b.len, 0);
    ql_proto_buf_free(&b);
    ql_proto_buf_free(NULL);
}

/* ---- out of memory: each jansson allocation in turn fails; the buffer is left as it was ---- */

static long g_allocs_left = -1;

static void *limited_malloc(size_t n) {
    if (g_allocs_left == 0) return NULL;
    if (g_allocs_left > 0) g_allocs_left--;
    return malloc(n);
}

typedef int (*writer_fn)(ql_proto_buf_t *b, const void *arg);

static int w_chat_chunks(ql_proto_buf_t *b, const void *arg) { return ql_proto_sse_chunks(H, arg, b); }
static int w_cmpl_json(ql_proto_buf_t *b, const void *arg) { return ql_proto_response_json(C, arg, b); }
static int w_chat_json(ql_proto_buf_t *b, const void *arg) { return ql_proto_response_json(H, arg, b); }
static int w_usage(ql_proto_buf_t *b, const void *arg) { return ql_proto_sse_usage(H, arg, b); }
static int w_error(ql_proto_buf_t *b, const void *arg) {
    (void)arg;
    ql_proto_error_t e;
    ql_proto_error_model_not_found(&e, "x");
    return ql_proto_sse_error(&e, b);
}
static int w_models(ql_proto_buf_t *b, const void *arg) {
    (void)arg;
    ql_proto_model_t m[2] = {{.id = "a", .max_model_len = 5}, {.id = "b"}};
    return ql_proto_models_json(m, 2, b);
}
static int w_tokenize(ql_proto_buf_t *b, const void *arg) {
    (void)arg;
    int32_t t[3] = {1, 2, 3};
    return ql_proto_tokenize_json(t, 3, 9, b);
}

static void test_writers_oom(void **state) {
    (void)state;
    ql_proto_top_logprob_t top[2] = {{"a", 1, -0.5f}, {"b", 1, -1.5f}};
    ql_proto_logprob_t lp[2] = {{.token = "a", .token_len = 1, .logprob = -0.5f, .top = top, .n_top = 2},
                                {.token = "\xff", .token_len = 1, .logprob = NAN}};
    ql_proto_choice_t ch[2] = {
        {.index = 0, .first = 1, .text = "a\xff", .text_len = 2, .has_logprobs = 1, .logprobs = lp,
         .n_logprobs = 2, .finish_reason = QL_PROTO_FINISH_STOP},
        {.index = 1, .first = 1, .text = "b", .text_len = 1, .finish_reason = QL_PROTO_FINISH_LENGTH},
    };
    ql_proto_response_t r = {.id = "x", .model = "m", .choices = ch, .n_choices = 2,
                             .usage = &k_usage, .include_usage = 1};
    writer_fn writers[] = {w_chat_chunks, w_cmpl_json, w_chat_json, w_usage, w_error, w_models, w_tokenize};
    json_set_alloc_funcs(limited_malloc, free);
    for (size_t w = 0; w < QL_ARRAY_LEN(writers); w++) {
        int saw_oom = 0;
        for (long k = 0;; k++) {
            ql_proto_buf_t b = {0};
            assert_int_equal(ql_proto_buf_append(&b, "PRE", 3), 0);
            g_allocs_left = k;
            int rc = writers[w](&b, &r);
            g_allocs_left = -1;
            if (rc == 0) {
                assert_true(b.len > 3);
                ql_proto_buf_free(&b);
                break;
            }
            assert_int_equal(rc, QL_ENOMEM);
            assert_int_equal(b.len, 3);
            assert_string_equal(b.data, "PRE");
            ql_proto_buf_free(&b);
            saw_oom = 1;
            assert_true(k < 100000);
        }
        assert_true(saw_oom);
    }
    json_set_alloc_funcs(malloc, free);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_object),
        cmocka_unit_test(test_chat_object),
        cmocka_unit_test(test_usage_spec),
        cmocka_unit_test(test_chat_logprobs),
        cmocka_unit_test(test_completion_logprobs),
        cmocka_unit_test(test_logprob_format),
        cmocka_unit_test(test_chat_stream),
        cmocka_unit_test(test_chat_stream_usage_and_n),
        cmocka_unit_test(test_chat_stream_logprobs),
        cmocka_unit_test(test_completion_stream),
        cmocka_unit_test(test_sse_error_and_done),
        cmocka_unit_test(test_error_bodies),
        cmocka_unit_test(test_error_repairs_utf8),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_utf8_repair),
        cmocka_unit_test(test_utf8_complete_prefix),
        cmocka_unit_test(test_models_tokenize_detokenize),
        cmocka_unit_test(test_finish_names_and_bad_args),
        cmocka_unit_test(test_writers_oom),
    };
    return cmocka_run_group_tests_name("proto-response", tests, NULL, NULL);
}
