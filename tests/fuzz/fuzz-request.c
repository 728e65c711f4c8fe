/*
 * tests/fuzz/fuzz-request.c — libFuzzer target for the OpenAI request parser
 * (ql_proto_parse_request), the code every HTTP body reaches first.
 *
 * Input: byte 0 picks the endpoint (low 2 bits) and the server options (bit 2: n_vocab and
 * max_model_len unchecked), the rest is the body. Besides the sanitizers' findings it checks
 * the parser's promises (CHECK), from proto/proto.h:
 *  - an accepted request has every field inside its documented range, every string
 *    NUL-terminated at its length and valid UTF-8, every token id below n_vocab and no token
 *    prompt longer than max_model_len;
 *  - a refused one has status 400, 404 or 500 and a non-empty one-line message;
 *  - parsing the same bytes twice gives the same answer.
 *
 * Built by QL_FUZZ=ON with clang (`make fuzz FUZZ_TARGET=request`); tests/fuzz/corpus-request.c
 * links the same code into a plain ctest driver over tests/corpus/request/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "proto/proto.h"

#include "fuzz-check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* inputs accepted and refused so far (the corpus driver checks it saw both) */
long fuzz_request_accepted, fuzz_request_refused;

enum { N_VOCAB = 1000, MAX_MODEL_LEN = 64, MAX_N = 4 };

/* Valid UTF-8, strict (no overlongs, surrogates or code points past U+10FFFF); NUL is valid
 * inside (JSON's \u0000) but then the length, not strlen, is the truth. Written here rather
 * than calling proto's own ql__proto_utf8_valid: the oracle must not share the parser's code. */
static int utf8_ok(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        const unsigned c = p[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n) return 0;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (p[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

static void check_text(const char *s, size_t n) {
    CHECK(s != NULL);
    CHECK(s[n] == '\0');
    CHECK(utf8_ok(s, n));
}

static void check_accepted(const ql_proto_request_t *r, ql_proto_endpoint_t ep,
                           const ql_proto_opts_t *o) {
    CHECK(r->endpoint == ep);
    CHECK(r->model != NULL && strcmp(r->model, o->served_model) == 0);
    switch (ep) {
    case QL_PROTO_ENDPOINT_COMPLETIONS:
        CHECK(r->n_prompts >= 1 && r->prompts != NULL);
        break;
    case QL_PROTO_ENDPOINT_CHAT: CHECK(r->n_messages >= 1 && r->messages != NULL); break;
    case QL_PROTO_ENDPOINT_TOKENIZE:
        CHECK((r->n_prompts == 1 && r->prompts && r->prompts[0].text) ||
              (r->n_messages >= 1 && r->messages));
        break;
    case QL_PROTO_ENDPOINT_DETOKENIZE: CHECK(r->n_tokens >= 0); break;
    }
    for (int32_t i = 0; i < r->n_prompts; i++) {
        const ql_proto_prompt_t *p = &r->prompts[i];
        if (p->tokens) {
            CHECK(p->text == NULL);
            CHECK(p->n_tokens >= 1);
            if (o->max_model_len) CHECK(p->n_tokens <= o->max_model_len);
            for (int32_t j = 0; j < p->n_tokens; j++)
                CHECK(p->tokens[j] >= 0 && (!o->n_vocab || p->tokens[j] < o->n_vocab));
        } else {
            check_text(p->text, p->text_len);
        }
    }
    for (int32_t i = 0; i < r->n_messages; i++) {
        const ql_proto_msg_t *m = &r->messages[i];
        static const char *const names[] = {"system", "user", "assistant"};
        CHECK((unsigned)m->role <= QL_PROTO_ROLE_ASSISTANT);
        CHECK(m->role_name && strcmp(m->role_name, names[m->role]) == 0);
        check_text(m->content, m->content_len);
    }
    for (int32_t i = 0; i < r->n_tokens; i++)
        CHECK(r->tokens[i] >= 0 && (!o->n_vocab || r->tokens[i] < o->n_vocab));
    CHECK(r->max_tokens >= 1 || r->max_tokens == -1);
    CHECK(r->min_tokens >= 0);
    if (r->max_tokens >= 1) CHECK(r->min_tokens <= r->max_tokens);
    CHECK(r->spec_tokens >= -1 && r->spec_tokens <= 16);
    CHECK(r->n_stop >= 0 && r->n_stop <= QL_PROTO_STOP_MAX);
    for (int32_t i = 0; i < r->n_stop; i++) {
        CHECK(r->stop[i].len >= 1);
        check_text(r->stop[i].ptr, r->stop[i].len);
    }
    CHECK(r->temperature >= 0.0f && r->temperature <= 2.0f);
    CHECK(r->top_p > 0.0f && r->top_p <= 1.0f);
    CHECK(r->top_k >= 0);
    CHECK(r->min_p >= 0.0f && r->min_p <= 1.0f);
    CHECK(r->presence_penalty >= -2.0f && r->presence_penalty <= 2.0f);
    CHECK(r->frequency_penalty >= -2.0f && r->frequency_penalty <= 2.0f);
    CHECK(r->repetition_penalty > 0.0f && r->repetition_penalty <= 3.4e38f);
    CHECK(r->n_logit_bias >= 0);
    for (int32_t i = 0; i < r->n_logit_bias; i++) {
        CHECK(r->logit_bias[i].token >= 0 && (!o->n_vocab || r->logit_bias[i].token < o->n_vocab));
        CHECK(r->logit_bias[i].bias >= -100.0f && r->logit_bias[i].bias <= 100.0f);
    }
    CHECK(r->n >= 1 && r->n <= o->max_n);
    CHECK(r->top_logprobs >= 0 && r->top_logprobs <= 20);
    if (r->top_logprobs > 0) CHECK(r->logprobs);
    if (r->include_usage) CHECK(r->stream);
    if (r->user) CHECK(utf8_ok(r->user, strlen(r->user)));
}

static void check_refused(const ql_proto_error_t *e) {
    CHECK(e->status == 400 || e->status == 404 || e->status == 500);
    CHECK(e->message[0] != '\0');
    CHECK(strchr(e->message, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const ql_proto_endpoint_t ep = (ql_proto_endpoint_t)(data[0] & 3);
    const ql_proto_opts_t opts = {
        .served_model = "m",
        .max_n = MAX_N,
        .n_vocab = (data[0] & 4) ? 0 : N_VOCAB,
        .max_model_len = (data[0] & 4) ? 0 : MAX_MODEL_LEN,
    };
    const char *body = (const char *)data + 1;
    const size_t len = size - 1;
    int rc[2];
    ql_proto_error_t e[2];
    for (int pass = 0; pass < 2; pass++) {
        ql_arena_t arena;
        ql_arena_init(&arena, pass ? 64 : 4096); /* small chunks on the second pass */
        ql_proto_request_t r;
        memset(&e[pass], 0, sizeof(e[pass]));
        rc[pass] = ql_proto_parse_request(ep, body, len, &opts, &arena, &r, &e[pass]);
        if (rc[pass] == 0)
            check_accepted(&r, ep, &opts);
        else
            check_refused(&e[pass]);
        ql_arena_clear(&arena);
    }
    CHECK(rc[0] == rc[1]);
    if (rc[0] == 0)
        fuzz_request_accepted++;
    else
        fuzz_request_refused++;
    if (rc[0]) {
        CHECK(e[0].status == e[1].status);
        CHECK(strcmp(e[0].message, e[1].message) == 0);
    }
    return 0;
}
