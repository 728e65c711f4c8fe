/*
 * tests/unit/proto/test-request.c — request bodies → ql_proto_request_t: every field's type and
 * range error names the field (table-driven over many bad bodies), good bodies parse to the
 * right values, prompts in every accepted form, messages with text parts, null = absent,
 * unknown fields ignored, depth and size bounds, and OOM inside jansson fails cleanly.
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
#define T QL_PROTO_ENDPOINT_TOKENIZE
#define D QL_PROTO_ENDPOINT_DETOKENIZE

static const ql_proto_opts_t k_opts = {
    .served_model = "smollm2", .max_n = 4, .n_vocab = 1000, .max_model_len = 64};

typedef struct fixture_s {
    ql_arena_t arena;
    ql_proto_request_t r;
    ql_proto_error_t e;
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    ql_arena_init(&f->arena, 0);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    ql_arena_clear(&f->arena);
    free(f);
    return 0;
}

static int parse_n(fixture_t *f, ql_proto_endpoint_t ep, const char *body, size_t len) {
    ql_arena_clear(&f->arena);
    memset(&f->e, 0, sizeof f->e);
    return ql_proto_parse_request(ep, body, len, &k_opts, &f->arena, &f->r, &f->e);
}

static int parse(fixture_t *f, ql_proto_endpoint_t ep, const char *body) {
    return parse_n(f, ep, body, strlen(body));
}

/* Parses and fails the test with the error message when the body is refused. */
static void parse_ok(fixture_t *f, ql_proto_endpoint_t ep, const char *body) {
    int rc = parse(f, ep, body);
    if (rc != 0) fail_msg("refused %s: %d %s", body, f->e.status, f->e.message);
}

/* ---- bad bodies: each names its field ---- */

typedef struct bad_s {
    ql_proto_endpoint_t ep;
    const char *body;
    int status;
    const char *param;  /* "" = null */
    const char *needle; /* a part of the message: what is accepted, or what was wrong */
} bad_t;

static const bad_t k_bad[] = {
    /* the body itself (param null) */
    {C, "", 400, "", "not valid JSON"},
    {C, "{\"prompt\":\"x\"", 400, "", "line 1"},
    {C, "{\"prompt\":\"x\"} x", 400, "", "not valid JSON"},
    {C, "{\"prompt\":\"\xff\"}", 400, "", "not valid JSON"},
    {C, "{'prompt':'x'}", 400, "", "not valid JSON"},
    {C, "[1,2]", 400, "", "must be a JSON object, got a list"},
    {C, "\"text\"", 400, "", "must be a JSON object, got a string"},
    {C, "null", 400, "", "must be a JSON object"},
    {C, "{\"prompt\":1e999}", 400, "", "not valid JSON"},
    {C, "{\"prompt\":\"x\",\"n\":99999999999999999999}", 400, "", "not valid JSON"},
    /* model */
    {C, "{\"model\":5,\"prompt\":\"x\"}", 400, "model", "expected a string"},
    {C, "{\"model\":\"gpt-4\",\"prompt\":\"x\"}", 404, "", "The model `gpt-4` does not exist"},
    {H, "{\"model\":\"smollm\",\"messages\":[]}", 404, "", "does not exist"},
    /* prompt */
    {C, "{}", 400, "prompt", "required"},
    {C, "{\"prompt\":null}", 400, "prompt", "required"},
    {C, "{\"prompt\":5}", 400, "prompt", "a list of lists of token ids, got an integer"},
    {C, "{\"prompt\":{}}", 400, "prompt", "got an object"},
    {C, "{\"prompt\":[]}", 400, "prompt", "got an empty list"},
    {C, "{\"prompt\":[1,\"a\"]}", 400, "prompt[1]", "expected a token id in [0, 999], got a string"},
    {C, "{\"prompt\":[\"a\",1]}", 400, "prompt[1]", "expected a string"},
    {C, "{\"prompt\":[[1,2],[]]}", 400, "prompt[1]", "non-empty list of token ids"},
    {C, "{\"prompt\":[[1,2],[3,1000]]}", 400, "prompt[1][1]", "[0, 999], got 1000"},
    {C, "{\"prompt\":[[1],\"a\"]}", 400, "prompt[1]", "a list of token ids"},
    {C, "{\"prompt\":[-1]}", 400, "prompt[0]", "got -1"},
    {C, "{\"prompt\":[1.5]}", 400, "prompt[0]", "got 1.5"},
    {C, "{\"prompt\":[true]}", 400, "prompt[0]", "got a boolean"},
    {C, "{\"prompt\":[null]}", 400, "prompt[0]", "got null"},
    {C, "{\"prompt\":[{}]}", 400, "prompt[0]", "got an object"},
    /* max_tokens, max_completion_tokens, min_tokens */
    {C, "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens", "an integer >= 1, got 0"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":-1}", 400, "max_tokens", "got -1"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", 400, "max_tokens", "got a string"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "max_tokens", "got 1.5"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":true}", 400, "max_tokens", "got a boolean"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":2147483648}", 400, "max_tokens", "got 2147483648"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":0}", 400,
     "max_completion_tokens", "an integer >= 1"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":5,\"max_completion_tokens\":6}",
     400, "max_tokens", "synonyms"},
    {C, "{\"prompt\":\"x\",\"min_tokens\":-1}", 400, "min_tokens", "an integer >= 0"},
    {C, "{\"prompt\":\"x\",\"min_tokens\":17}", 400, "min_tokens", "at most max_tokens (16)"},
    {C, "{\"prompt\":\"x\",\"min_tokens\":5,\"max_tokens\":4}", 400, "min_tokens", "got 5"},
    /* sampling */
    {C, "{\"prompt\":\"x\",\"temperature\":-0.1}", 400, "temperature", "a number in [0, 2], got -0.1"},
    {C, "{\"prompt\":\"x\",\"temperature\":2.01}", 400, "temperature", "got 2.01"},
    {C, "{\"prompt\":\"x\",\"temperature\":\"1\"}", 400, "temperature", "got a string"},
    {C, "{\"prompt\":\"x\",\"temperature\":true}", 400, "temperature", "got a boolean"},
    {C, "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p", "a number in (0, 1], got 0"},
    {C, "{\"prompt\":\"x\",\"top_p\":1.0001}", 400, "top_p", "got 1.0001"},
    {C, "{\"prompt\":\"x\",\"top_p\":[1]}", 400, "top_p", "got a list"},
    {C, "{\"prompt\":\"x\",\"top_k\":-2}", 400, "top_k", "an integer >= -1"},
    {C, "{\"prompt\":\"x\",\"top_k\":1.5}", 400, "top_k", "got 1.5"},
    {C, "{\"prompt\":\"x\",\"min_p\":-0.1}", 400, "min_p", "[0, 1]"},
    {C, "{\"prompt\":\"x\",\"min_p\":1.1}", 400, "min_p", "got 1.1"},
    {C, "{\"prompt\":\"x\",\"presence_penalty\":-2.1}", 400, "presence_penalty", "[-2, 2], got -2.1"},
    {C, "{\"prompt\":\"x\",\"presence_penalty\":2.5}", 400, "presence_penalty", "got 2.5"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"frequency_penalty\":3}", 400,
     "frequency_penalty", "[-2, 2], got 3"},
    {C, "{\"prompt\":\"x\",\"frequency_penalty\":{}}", 400, "frequency_penalty", "got an object"},
    {C, "{\"prompt\":\"x\",\"repetition_penalty\":0}", 400, "repetition_penalty", "> 0"},
    {C, "{\"prompt\":\"x\",\"repetition_penalty\":-1}", 400, "repetition_penalty", "got -1"},
    {C, "{\"prompt\":\"x\",\"repetition_penalty\":1e39}", 400, "repetition_penalty", "got 1e+39"},
    {C, "{\"prompt\":\"x\",\"seed\":\"1\"}", 400, "seed", "an integer, got a string"},
    {C, "{\"prompt\":\"x\",\"seed\":1.5}", 400, "seed", "got 1.5"},
    {C, "{\"prompt\":\"x\",\"seed\":1e19}", 400, "seed", "got 1e+19"},
    {C, "{\"prompt\":\"x\",\"n\":0}", 400, "n", "an integer in [1, 4], got 0"},
    {C, "{\"prompt\":\"x\",\"n\":5}", 400, "n", "got 5"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":\"2\"}", 400, "n", "got a string"},
    /* stop */
    {C, "{\"prompt\":\"x\",\"stop\":\"\"}", 400, "stop", "got an empty string"},
    {C, "{\"prompt\":\"x\",\"stop\":5}", 400, "stop", "at most 4 non-empty strings, got an integer"},
    {C, "{\"prompt\":\"x\",\"stop\":[\"a\",\"\"]}", 400, "stop[1]", "a non-empty string, got an empty string"},
    {C, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop", "got a list of 5"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}", 400, "stop[0]", "got an integer"},
    /* logprobs */
    {C, "{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs", "an integer in [0, 20], got 21"},
    {C, "{\"prompt\":\"x\",\"logprobs\":-1}", 400, "logprobs", "got -1"},
    {C, "{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs", "got a boolean"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":5}", 400, "logprobs",
     "a boolean (true or false), got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", 400, "top_logprobs",
     "only allowed when logprobs is true"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}",
     400, "top_logprobs", "[0, 20], got 21"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":false,\"top_logprobs\":1}",
     400, "top_logprobs", "logprobs is true"},
    /* logit_bias */
    {C, "{\"prompt\":\"x\",\"logit_bias\":[]}", 400, "logit_bias", "an object mapping token ids"},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", 400, "logit_bias", "key \"abc\": expected a token id in [0, 999]"},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", 400, "logit_bias", "key \"-1\""},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"\":1}}", 400, "logit_bias", "key \"\""},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"1000\":1}}", 400, "logit_bias", "key \"1000\""},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"99999999999\":1}}", 400, "logit_bias", "key \"99999999999\""},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", 400, "logit_bias", "value of \"5\": expected a number in [-100, 100], got 101"},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":-100.5}}", 400, "logit_bias", "got -100.5"},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"x\"}}", 400, "logit_bias", "got a string"},
    /* booleans, strings, stream */
    {C, "{\"prompt\":\"x\",\"echo\":\"yes\"}", 400, "echo", "a boolean (true or false), got a string"},
    {C, "{\"prompt\":\"x\",\"ignore_eos\":1}", 400, "ignore_eos", "got an integer"},
    {C, "{\"prompt\":\"x\",\"num_speculative_tokens\":17}", 400, "num_speculative_tokens",
     "an integer in [0, 16], got 17"},
    {C, "{\"prompt\":\"x\",\"num_speculative_tokens\":-1}", 400, "num_speculative_tokens",
     "an integer in [0, 16]"},
    {C, "{\"prompt\":\"x\",\"num_speculative_tokens\":2.5}", 400, "num_speculative_tokens",
     "an integer in [0, 16]"},
    {C, "{\"prompt\":\"x\",\"stream\":\"true\"}", 400, "stream", "got a string"},
    {C, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", 400, "stream_options",
     "only allowed when stream is true"},
    {C, "{\"prompt\":\"x\",\"stream\":false,\"stream_options\":{}}", 400, "stream_options", "stream is true"},
    {C, "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":5}", 400, "stream_options", "got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}}",
     400, "stream_options.include_usage", "a boolean"},
    {C, "{\"prompt\":\"x\",\"user\":5}", 400, "user", "a string, got an integer"},
    /* refused rather than ignored */
    {C, "{\"prompt\":\"x\",\"best_of\":2}", 400, "best_of", "the value of n (1)"},
    {C, "{\"prompt\":\"x\",\"suffix\":\"y\"}", 400, "suffix", "not supported"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", 400,
     "tools", "not supported"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"functions\":[{}]}", 400, "functions",
     "not supported"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", 400,
     "tool_choice", "\"none\" or \"auto\""},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}",
     400, "response_format", "{\"type\": \"text\"}"},
    /* messages */
    {H, "{}", 400, "messages", "required"},
    {H, "{\"messages\":\"hi\"}", 400, "messages", "a non-empty list of messages"},
    {H, "{\"messages\":[]}", 400, "messages", "got an empty list"},
    {H, "{\"messages\":[5]}", 400, "messages[0]", "an object {\"role\", \"content\"}, got an integer"},
    {H, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role", "required; expected system, developer, user or assistant"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":5,\"content\":\"x\"}]}", 400,
     "messages[1].role", "got an integer"},
    {H, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "messages[0].role",
     "role \"tool\" is not supported"},
    {H, "{\"messages\":[{\"role\":\"User\",\"content\":\"x\"}]}", 400, "messages[0].role", "\"User\""},
    {H, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content", "required for role user"},
    {H, "{\"messages\":[{\"role\":\"system\",\"content\":null}]}", 400, "messages[0].content",
     "required for role system"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content",
     "a string or a list of text parts, got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[5]}]}", 400, "messages[0].content[0]",
     "got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
     400, "messages[0].content[1].type", "\"image_url\" parts are not supported"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}", 400,
     "messages[0].content[0].type", "only \"text\" parts"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}", 400,
     "messages[0].content[0].type", "required"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":7}]}]}", 400,
     "messages[0].content[0].type", "got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", 400,
     "messages[0].content[0].text", "required"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":5}]}]}", 400,
     "messages[0].content[0].text", "a string, got an integer"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"add_generation_prompt\":\"x\"}", 400,
     "add_generation_prompt", "a boolean"},
    /* tokenize, detokenize */
    {T, "{}", 400, "prompt", "required"},
    {T, "{\"prompt\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "messages",
     "either prompt or messages"},
    {T, "{\"prompt\":[1,2]}", 400, "prompt", "expected a string, got a list"},
    {T, "{\"prompt\":\"x\",\"add_special_tokens\":1}", 400, "add_special_tokens", "a boolean"},
    {T, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", 400, "messages[0].role", "\"bot\""},
    {T, "{\"model\":\"other\",\"prompt\":\"x\"}", 404, "", "does not exist"},
    {D, "{}", 400, "tokens", "required"},
    {D, "{\"tokens\":\"1 2\"}", 400, "tokens", "a list of token ids, got a string"},
    {D, "{\"tokens\":[1,-1]}", 400, "tokens[1]", "got -1"},
    {D, "{\"tokens\":[1000]}", 400, "tokens[0]", "[0, 999], got 1000"},
};

static void test_bad_bodies(void **state) {
    fixture_t *f = *state;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_bad); i++) {
        const bad_t *b = &k_bad[i];
        int rc = parse(f, b->ep, b->body);
        if (rc != QL_EINVAL || f->e.status != b->status || strcmp(f->e.param, b->param) != 0 ||
            !strstr(f->e.message, b->needle))
            fail_msg("case %zu %s: rc %d status %d param \"%s\" message \"%s\"; want %d \"%s\" ~\"%s\"",
                     i, b->body, rc, f->e.status, f->e.param, f->e.message, b->status, b->param,
                     b->needle);
        /* every field error names its field at the start of the message */
        if (b->param[0] && strncmp(f->e.message, b->param, strlen(b->param)) != 0 &&
            strcmp(b->param, "prompt") != 0)
            fail_msg("case %zu: message \"%s\" does not start with \"%s\"", i, f->e.message, b->param);
        assert_string_equal(f->e.type, "invalid_request_error");
        if (b->status == 404) assert_string_equal(f->e.code, "model_not_found");
    }
}

static void test_context_length_token_prompt(void **state) {
    fixture_t *f = *state;
    char body[1024] = "{\"prompt\":[";
    for (int i = 0; i < 65; i++) strcat(body, i ? ",1" : "1");
    strcat(body, "]}");
    assert_int_equal(parse(f, C, body), QL_EINVAL);
    assert_int_equal(f->e.status, 400);
    assert_string_equal(f->e.param, "prompt");
    assert_string_equal(f->e.code, "context_length_exceeded");
    assert_non_null(strstr(f->e.message, "maximum context length is 64 tokens"));
    assert_non_null(strstr(f->e.message, "resulted in 65 tokens"));
    /* 64 tokens fit */
    strcpy(body, "{\"prompt\":[");
    for (int i = 0; i < 64; i++) strcat(body, i ? ",1" : "1");
    strcat(body, "]}");
    parse_ok(f, C, body);
    assert_int_equal(f->r.prompts[0].n_tokens, 64);
}

/* ---- good bodies ---- */

static void test_completions_defaults(void **state) {
    fixture_t *f = *state;
    parse_ok(f, C, "{\"prompt\":\"Hello\"}");
    const ql_proto_request_t *r = &f->r;
    assert_int_equal(r->endpoint, C);
    assert_string_equal(r->model, "smollm2");
    assert_int_equal(r->n_prompts, 1);
    assert_string_equal(r->prompts[0].text, "Hello");
    assert_int_equal(r->prompts[0].text_len, 5);
    assert_null(r->prompts[0].tokens);
    assert_int_equal(r->max_tokens, 16);
    assert_int_equal(r->min_tokens, 0);
    assert_true(r->temperature == 1.0f && r->top_p == 1.0f && r->min_p == 0.0f);
    assert_true(r->presence_penalty == 0.0f && r->frequency_penalty == 0.0f);
    assert_true(r->repetition_penalty == 1.0f);
    assert_int_equal(r->top_k, 0);
    assert_int_equal(r->has_seed, 0);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->n_stop, 0);
    assert_int_equal(r->n_logit_bias, 0);
    assert_int_equal(r->logprobs, 0);
    assert_int_equal(r->top_logprobs, 0);
    assert_int_equal(r->stream, 0);
    assert_int_equal(r->include_usage, 0);
    assert_int_equal(r->echo, 0);
    assert_int_equal(r->ignore_eos, 0);
    assert_int_equal(r->spec_tokens, -1); /* absent: the server's setting */
    assert_null(r->user);
    assert_int_equal(r->n_messages, 0);
}

static void test_completions_all_fields(void **state) {
    fixture_t *f = *state;
    parse_ok(f, C,
             "{\"model\":\"smollm2\",\"prompt\":\"Once\",\"max_tokens\":32,\"min_tokens\":2,"
             "\"temperature\":0.7,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
             "\"presence_penalty\":-1.5,\"frequency_penalty\":2,\"repetition_penalty\":1.1,"
             "\"seed\":-42,\"stop\":[\"\\n\\n\",\"END\"],\"n\":4,\"best_of\":4,\"logprobs\":5,"
             "\"logit_bias\":{\"50\":-100,\"7\":2.5,\"0\":100},\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true},\"user\":\"u-1\",\"echo\":true,"
             "\"ignore_eos\":true,\"suffix\":\"\",\"num_speculative_tokens\":3}");
    const ql_proto_request_t *r = &f->r;
    assert_int_equal(r->max_tokens, 32);
    assert_int_equal(r->min_tokens, 2);
    assert_int_equal(r->spec_tokens, 3);
    assert_true(r->temperature == 0.7f);
    assert_true(r->top_p == 0.9f);
    assert_int_equal(r->top_k, 40);
    assert_true(r->min_p == 0.05f);
    assert_true(r->presence_penalty == -1.5f);
    assert_true(r->frequency_penalty == 2.0f);
    assert_true(r->repetition_penalty == 1.1f);
    assert_int_equal(r->has_seed, 1);
    assert_true(r->seed == -42);
    assert_int_equal(r->n_stop, 2);
    assert_string_equal(r->stop[0].ptr, "\n\n");
    assert_int_equal(r->stop[0].len, 2);
    assert_string_equal(r->stop[1].ptr, "END");
    assert_int_equal(r->n, 4);
    assert_int_equal(r->logprobs, 1);
    assert_int_equal(r->top_logprobs, 5);
    assert_int_equal(r->n_logit_bias, 3);
    assert_int_equal(r->logit_bias[0].token, 50); /* the body's key order */
    assert_true(r->logit_bias[0].bias == -100.0f);
    assert_int_equal(r->logit_bias[1].token, 7);
    assert_true(r->logit_bias[1].bias == 2.5f);
    assert_int_equal(r->logit_bias[2].token, 0);
    assert_true(r->logit_bias[2].bias == 100.0f);
    assert_int_equal(r->stream, 1);
    assert_int_equal(r->include_usage, 1);
    assert_string_equal(r->user, "u-1");
    assert_int_equal(r->echo, 1);
    assert_int_equal(r->ignore_eos, 1);
}

static void test_number_forms(void **state) {
    fixture_t *f = *state;
    /* integers written as reals with no fraction; -1 and 0 both turn top_k off */
    parse_ok(f, C, "{\"prompt\":\"x\",\"max_tokens\":5.0,\"n\":2e0,\"top_k\":-1,\"seed\":9223372036854775807}");
    assert_int_equal(f->r.max_tokens, 5);
    assert_int_equal(f->r.n, 2);
    assert_int_equal(f->r.top_k, 0);
    assert_true(f->r.seed == INT64_MAX);
    parse_ok(f, C, "{\"prompt\":\"x\",\"top_k\":0,\"seed\":-9223372036854775808}");
    assert_int_equal(f->r.top_k, 0);
    assert_true(f->r.seed == INT64_MIN);
    /* integers where numbers are expected; the bounds themselves */
    parse_ok(f, C, "{\"prompt\":\"x\",\"temperature\":0,\"top_p\":1,\"min_p\":1,\"presence_penalty\":-2,"
                   "\"frequency_penalty\":2,\"max_tokens\":2147483647,\"logprobs\":0}");
    assert_true(f->r.temperature == 0.0f);
    assert_int_equal(f->r.max_tokens, INT32_MAX);
    assert_int_equal(f->r.logprobs, 1);
    assert_int_equal(f->r.top_logprobs, 0);
    parse_ok(f, C, "{\"prompt\":\"x\",\"temperature\":2,\"logprobs\":20}");
    assert_true(f->r.temperature == 2.0f);
    assert_int_equal(f->r.top_logprobs, 20);
    /* NOTE(float-cast): in range as a double, 0 as a float: nudged above the open bound */
    parse_ok(f, C, "{\"prompt\":\"x\",\"top_p\":1e-300,\"repetition_penalty\":1e-300}");
    assert_true(f->r.top_p > 0.0f);
    assert_true(f->r.repetition_penalty > 0.0f);
}

static void test_null_is_absent_and_unknown_ignored(void **state) {
    fixture_t *f = *state;
    parse_ok(f, C,
             "{\"model\":null,\"prompt\":\"x\",\"temperature\":null,\"stop\":null,\"n\":null,"
             "\"stream\":null,\"stream_options\":null,\"logprobs\":null,\"logit_bias\":null,"
             "\"seed\":null,\"user\":null,\"best_of\":null,\"suffix\":null,\"max_tokens\":null,"
             "\"foo\":{\"bar\":[1,2,{\"x\":null}]},\"temperature_x\":\"hot\",\"top_logprobs\":\"x\"}");
    assert_string_equal(f->r.model, "smollm2");
    assert_true(f->r.temperature == 1.0f);
    assert_int_equal(f->r.n_stop, 0);
    assert_int_equal(f->r.n, 1);
    assert_int_equal(f->r.has_seed, 0);
    assert_int_equal(f->r.max_tokens, 16);
    /* an empty model is the served one (vLLM) */
    parse_ok(f, C, "{\"model\":\"\",\"prompt\":\"x\"}");
    assert_string_equal(f->r.model, "smollm2");
    /* the chat fields that completions do not have are unknown there, and the reverse */
    parse_ok(f, C, "{\"prompt\":\"x\",\"tools\":[{}],\"response_format\":{\"type\":\"json_object\"}}");
    parse_ok(f, H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":\"x\",\"suffix\":5,\"best_of\":9}");
}

static void test_duplicate_keys_last_wins(void **state) {
    fixture_t *f = *state;
    parse_ok(f, C, "{\"prompt\":\"a\",\"prompt\":\"b\",\"n\":3,\"n\":2}");
    assert_string_equal(f->r.prompts[0].text, "b");
    assert_int_equal(f->r.n, 2);
}

static void test_prompt_forms(void **state) {
    fixture_t *f = *state;
    parse_ok(f, C, "{\"prompt\":\"\"}");
    assert_int_equal(f->r.n_prompts, 1);
    assert_int_equal(f->r.prompts[0].text_len, 0);
    assert_string_equal(f->r.prompts[0].text, "");

    parse_ok(f, C, "{\"prompt\":[\"a\",\"\",\"caf\\u00e9\"]}");
    assert_int_equal(f->r.n_prompts, 3);
    assert_string_equal(f->r.prompts[0].text, "a");
    assert_int_equal(f->r.prompts[1].text_len, 0);
    assert_string_equal(f->r.prompts[2].text, "caf\xc3\xa9");
    assert_int_equal(f->r.prompts[2].text_len, 5);

    parse_ok(f, C, "{\"prompt\":[1,2,999]}");
    assert_int_equal(f->r.n_prompts, 1);
    assert_null(f->r.prompts[0].text);
    assert_int_equal(f->r.prompts[0].n_tokens, 3);
    assert_int_equal(f->r.prompts[0].tokens[0], 1);
    assert_int_equal(f->r.prompts[0].tokens[2], 999);

    parse_ok(f, C, "{\"prompt\":[[5],[6,7.0]]}");
    assert_int_equal(f->r.n_prompts, 2);
    assert_int_equal(f->r.prompts[0].n_tokens, 1);
    assert_int_equal(f->r.prompts[0].tokens[0], 5);
    assert_int_equal(f->r.prompts[1].n_tokens, 2);
    assert_int_equal(f->r.prompts[1].tokens[1], 7);

    /* a NUL inside a string is kept: text_len counts it */
    parse_ok(f, C, "{\"prompt\":\"a\\u0000b\"}");
    assert_int_equal(f->r.prompts[0].text_len, 3);
    assert_memory_equal(f->r.prompts[0].text, "a\0b", 4);
}

static void test_chat_messages(void **state) {
    fixture_t *f = *state;
    parse_ok(f, H,
             "{\"model\":\"smollm2\",\"messages\":["
             "{\"role\":\"developer\",\"content\":\"Be brief.\"},"
             "{\"role\":\"system\",\"content\":[]},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},{\"type\":\"text\",\"text\":\"there\"}],\"name\":\"bob\"},"
             "{\"role\":\"assistant\",\"content\":null,\"refusal\":null},"
             "{\"role\":\"assistant\"},"
             "{\"role\":\"user\",\"content\":\"\"}]}");
    const ql_proto_request_t *r = &f->r;
    assert_int_equal(r->n_messages, 6);
    assert_int_equal(r->messages[0].role, QL_PROTO_ROLE_SYSTEM);
    assert_string_equal(r->messages[0].role_name, "system");
    assert_string_equal(r->messages[0].content, "Be brief.");
    assert_int_equal(r->messages[0].content_len, 9);
    assert_int_equal(r->messages[1].role, QL_PROTO_ROLE_SYSTEM);
    assert_int_equal(r->messages[1].content_len, 0);
    assert_int_equal(r->messages[2].role, QL_PROTO_ROLE_USER);
    assert_string_equal(r->messages[2].role_name, "user");
    assert_string_equal(r->messages[2].content, "Hi\nthere");
    assert_int_equal(r->messages[2].content_len, 8);
    assert_int_equal(r->messages[3].role, QL_PROTO_ROLE_ASSISTANT);
    assert_string_equal(r->messages[3].role_name, "assistant");
    assert_string_equal(r->messages[3].content, "");
    assert_string_equal(r->messages[4].content, "");
    assert_int_equal(r->messages[5].content_len, 0);
    /* chat defaults differ from completions' */
    assert_int_equal(r->max_tokens, -1);
    assert_int_equal(r->add_special_tokens, 0);
    assert_int_equal(r->add_generation_prompt, 1);
    assert_int_equal(r->n_prompts, 0);
}

static void test_chat_fields(void **state) {
    fixture_t *f = *state;
    parse_ok(f, H,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":7,"
             "\"logprobs\":true,\"top_logprobs\":5,\"stop\":\"\\n\",\"tool_choice\":\"none\","
             "\"tools\":[],\"response_format\":{\"type\":\"text\"},\"add_generation_prompt\":false,"
             "\"add_special_tokens\":true,\"stream\":true,\"stream_options\":{\"include_usage\":false}}");
    assert_int_equal(f->r.max_tokens, 7);
    assert_int_equal(f->r.logprobs, 1);
    assert_int_equal(f->r.top_logprobs, 5);
    assert_int_equal(f->r.n_stop, 1);
    assert_string_equal(f->r.stop[0].ptr, "\n");
    assert_int_equal(f->r.add_generation_prompt, 0);
    assert_int_equal(f->r.add_special_tokens, 1);
    assert_int_equal(f->r.stream, 1);
    assert_int_equal(f->r.include_usage, 0);
    /* both max fields, equal: fine */
    parse_ok(f, H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":9,\"max_completion_tokens\":9}");
    assert_int_equal(f->r.max_tokens, 9);
    parse_ok(f, H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3}");
    assert_int_equal(f->r.max_tokens, 3);
    /* logprobs true with no top_logprobs; top_logprobs 0 without logprobs */
    parse_ok(f, H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}");
    assert_int_equal(f->r.logprobs, 1);
    assert_int_equal(f->r.top_logprobs, 0);
    parse_ok(f, H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":0}");
    assert_int_equal(f->r.logprobs, 0);
    /* completions take max_completion_tokens too */
    parse_ok(f, C, "{\"prompt\":\"x\",\"max_completion_tokens\":100}");
    assert_int_equal(f->r.max_tokens, 100);
}

static void test_tokenize_detokenize(void **state) {
    fixture_t *f = *state;
    parse_ok(f, T, "{\"model\":\"smollm2\",\"prompt\":\"Hello world\"}");
    assert_int_equal(f->r.n_prompts, 1);
    assert_string_equal(f->r.prompts[0].text, "Hello world");
    assert_int_equal(f->r.add_special_tokens, 1);
    parse_ok(f, T, "{\"prompt\":\"x\",\"add_special_tokens\":false}");
    assert_int_equal(f->r.add_special_tokens, 0);
    parse_ok(f, T, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
    assert_int_equal(f->r.n_messages, 1);
    assert_int_equal(f->r.add_special_tokens, 0);
    assert_int_equal(f->r.add_generation_prompt, 1);
    parse_ok(f, T, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"add_generation_prompt\":false,\"add_special_tokens\":true}");
    assert_int_equal(f->r.add_generation_prompt, 0);
    assert_int_equal(f->r.add_special_tokens, 1);
    /* generation fields are not tokenize's: ignored */
    parse_ok(f, T, "{\"prompt\":\"x\",\"temperature\":99}");

    parse_ok(f, D, "{\"tokens\":[0,5,999]}");
    assert_int_equal(f->r.n_tokens, 3);
    assert_int_equal(f->r.tokens[1], 5);
    assert_int_equal(f->r.tokens[2], 999);
    parse_ok(f, D, "{\"tokens\":[]}");
    assert_int_equal(f->r.n_tokens, 0);
}

/* ---- bounds ---- */

static void test_depth_bound(void **state) {
    fixture_t *f = *state;
    char body[256];
    /* 32 levels in all (the body's own object is the first): accepted, in an unknown field */
    int n = 0;
    n += sprintf(body + n, "{\"prompt\":\"x\",\"deep\":");
    for (int i = 0; i < QL_PROTO_JSON_DEPTH_MAX - 1; i++) body[n++] = '[';
    for (int i = 0; i < QL_PROTO_JSON_DEPTH_MAX - 1; i++) body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    parse_ok(f, C, body);
    /* 33: refused before jansson parses */
    n = sprintf(body, "{\"prompt\":\"x\",\"deep\":");
    for (int i = 0; i < QL_PROTO_JSON_DEPTH_MAX; i++) body[n++] = '[';
    for (int i = 0; i < QL_PROTO_JSON_DEPTH_MAX; i++) body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    assert_int_equal(parse(f, C, body), QL_EINVAL);
    assert_non_null(strstr(f->e.message, "nested deeper than 32 levels"));
    assert_string_equal(f->e.param, "");
    /* brackets inside strings (and escaped quotes) do not count */
    parse_ok(f, C, "{\"prompt\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\"}");
    /* a million '[' never reaches jansson's recursion */
    size_t big = 1000000;
    char *deep = malloc(big);
    memset(deep, '[', big);
    assert_int_equal(parse_n(f, C, deep, big), QL_EINVAL);
    assert_non_null(strstr(f->e.message, "nested deeper"));
    free(deep);
}

static void test_large_bodies(void **state) {
    fixture_t *f = *state;
    /* 200000 token ids in one list (max_model_len unchecked) and a 1 MiB string */
    static const ql_proto_opts_t opts = {.served_model = "m", .max_n = 1};
    size_t n = 200000;
    size_t cap = 32 + n * 4;
    char *body = malloc(cap);
    size_t o = (size_t)sprintf(body, "{\"prompt\":[");
    for (size_t i = 0; i < n; i++) o += (size_t)sprintf(body + o, i ? ",%zu" : "%zu", i % 100);
    o += (size_t)sprintf(body + o, "]}");
    ql_arena_clear(&f->arena);
    assert_int_equal(ql_proto_parse_request(C, body, o, &opts, &f->arena, &f->r, &f->e), 0);
    assert_int_equal(f->r.prompts[0].n_tokens, (int)n);
    assert_int_equal(f->r.prompts[0].tokens[n - 1], (int)((n - 1) % 100));
    free(body);

    size_t sl = 1 << 20;
    body = malloc(sl + 32);
    o = (size_t)sprintf(body, "{\"prompt\":\"");
    memset(body + o, 'a', sl);
    o += sl;
    o += (size_t)sprintf(body + o, "\"}");
    assert_int_equal(parse_n(f, C, body, o), 0);
    assert_int_equal(f->r.prompts[0].text_len, sl);
    free(body);
}

/* The body need not be NUL-terminated: only [0, len) is read. */
static void test_body_length(void **state) {
    fixture_t *f = *state;
    const char *body = "{\"prompt\":\"x\"}GARBAGE";
    assert_int_equal(parse_n(f, C, body, 14), 0);
    assert_int_equal(parse_n(f, C, body, 15), QL_EINVAL);
}

static void test_error_json_of_a_refusal(void **state) {
    fixture_t *f = *state;
    assert_int_equal(parse(f, C, "{\"prompt\":\"x\",\"temperature\":3}"), QL_EINVAL);
    ql_proto_buf_t b = {0};
    assert_int_equal(ql_proto_error_json(&f->e, &b), 0);
    json_error_t je;
    json_t *got = json_loads(b.data, 0, &je);
    json_t *want = json_pack("{s:{s:s,s:s,s:s,s:n}}", "error", "message",
                             "temperature: expected a number in [0, 2], got 3", "type",
                             "invalid_request_error", "param", "temperature", "code");
    assert_non_null(got);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    ql_proto_buf_free(&b);
}

static void test_bad_arguments(void **state) {
    fixture_t *f = *state;
    ql_proto_opts_t bad = k_opts;
    bad.max_n = 0;
    assert_int_equal(ql_proto_parse_request(C, "{}", 2, &bad, &f->arena, &f->r, &f->e), QL_EINVAL);
    assert_int_equal(f->e.status, 500);
    bad = k_opts;
    bad.served_model = NULL;
    assert_int_equal(ql_proto_parse_request(C, "{}", 2, &bad, &f->arena, &f->r, &f->e), QL_EINVAL);
    assert_int_equal(ql_proto_parse_request((ql_proto_endpoint_t)9, "{}", 2, &k_opts, &f->arena,
                                            &f->r, &f->e),
                     QL_EINVAL);
    assert_int_equal(ql_proto_parse_request(C, NULL, 2, &k_opts, &f->arena, &f->r, &f->e), QL_EINVAL);
    assert_int_equal(ql_proto_parse_request(C, "{}", 2, &k_opts, &f->arena, &f->r, NULL), QL_EINVAL);
    /* n_vocab 0: token ids are only checked for >= 0 */
    ql_proto_opts_t open = {.served_model = "m", .max_n = 1};
    ql_arena_clear(&f->arena);
    const char *body = "{\"prompt\":[2147483647]}";
    assert_int_equal(ql_proto_parse_request(C, body, strlen(body), &open, &f->arena, &f->r, &f->e), 0);
    body = "{\"prompt\":[2147483648]}";
    assert_int_equal(ql_proto_parse_request(C, body, strlen(body), &open, &f->arena, &f->r, &f->e),
                     QL_EINVAL);
    assert_string_equal(f->e.param, "prompt[0]");
}

/* ---- jansson out of memory: every allocation in turn fails; nothing leaks (ASan), and the
 * failure is an error, never a half-filled success ---- */

static long g_allocs_left = -1; /* < 0: no limit */

static void *limited_malloc(size_t n) {
    if (g_allocs_left == 0) return NULL;
    if (g_allocs_left > 0) g_allocs_left--;
    return malloc(n);
}

static void test_parse_oom(void **state) {
    fixture_t *f = *state;
    const char *body =
        "{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}],"
        "\"stop\":[\"x\"],\"logit_bias\":{\"1\":2},\"temperature\":0.5}";
    json_set_alloc_funcs(limited_malloc, free);
    int saw_oom = 0;
    for (long k = 0;; k++) {
        g_allocs_left = k;
        int rc = parse(f, H, body);
        if (rc == 0) break;
        /* NOTE(jansson-oom) in request.c: some of jansson's failures read as syntax errors */
        assert_true(rc == QL_ENOMEM || rc == QL_EINVAL);
        assert_int_equal(f->e.status, rc == QL_ENOMEM ? 500 : 400);
        saw_oom |= rc == QL_ENOMEM;
        assert_true(k < 10000);
    }
    g_allocs_left = -1;
    json_set_alloc_funcs(malloc, free);
    assert_true(saw_oom);
    assert_string_equal(f->r.messages[0].content, "a");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_context_length_token_prompt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completions_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completions_all_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_number_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_is_absent_and_unknown_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_keys_last_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chat_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chat_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokenize_detokenize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_json_of_a_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_oom, setup, teardown),
    };
    return cmocka_run_group_tests_name("proto-request", tests, NULL, NULL);
}
