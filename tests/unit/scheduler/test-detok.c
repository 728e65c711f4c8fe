/*
 * tests/unit/scheduler/test-detok.c — incremental detokenization (scheduler/detok.h): deltas are
 * never a cut UTF-8 character and add up to the one-shot decode of the whole output.
 *   - mkmodel's tiny byte-level vocabulary (always): multi-byte characters fed one byte token at
 *     a time, the U+FFFD at the end of a cut output, random id streams against ql_tok_decode;
 *   - the default model's vocabulary (SmolLM2, $QL_DEFAULT_MODEL or ~/.cache/quill; skipped
 *     when absent): multilingual text, whole tokens and byte by byte;
 *   - llama.cpp's SentencePiece test vocabulary (../shared/fixtures; skipped when absent): the
 *     streamed continuation of a prompt equals what decoding prompt + output adds to the prompt,
 *     leading space included.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-model.h"

#include "core/core.h"
#include "fake-backend.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "scheduler/detok.h"

#define SKIP_BECAUSE(...)                                                                    \
    do {                                                                                     \
        printf("skipped: " __VA_ARGS__);                                                     \
        printf("\n");                                                                        \
        skip();                                                                              \
    } while (0)

static ql_tok_t *load_tok(const char *path) {
    if (access(path, R_OK) != 0) return NULL;
    char err[256];
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) fail_msg("%s: %s", path, err);
    ql_tok_t *tok = NULL;
    int rc = ql_tok_init_from_gguf(g, &tok, err, sizeof err);
    ql_gguf_free(g);
    if (rc != 0) fail_msg("%s: %s", path, err);
    return tok;
}

/* Streams ids through a detokenizer: every delta valid UTF-8 when the whole is; returns the
 * concatenation (with the flush) in out, its length in *n. */
static void stream(const ql_tok_t *tok, const int32_t *ids, size_t n_ids, uint32_t flags, char *out,
                   size_t cap, size_t *n, int check_valid) {
    ql_detok_t d;
    ql_detok_init(&d, tok, flags);
    size_t len = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const char *t;
        size_t tn;
        assert_int_equal(ql_detok_push(&d, ids[i], &t, &tn), 0);
        if (check_valid && !ql_utf8_valid(t, tn)) fail_msg("delta %zu is not valid UTF-8", i);
        assert_true(len + tn <= cap);
        memcpy(out + len, t, tn);
        len += tn;
    }
    const char *t;
    size_t tn;
    ql_detok_flush(&d, &t, &tn);
    assert_true(len + tn <= cap);
    memcpy(out + len, t, tn);
    len += tn;
    assert_int_equal(ql_detok_n_bytes(&d), len);
    ql_detok_free(&d);
    *n = len;
}

static void check_bytes_one_by_one(const ql_tok_t *tok, const char *text) {
    size_t n = strlen(text);
    int32_t ids[256];
    for (size_t i = 0; i < n; i++) {
        ids[i] = fake_byte_token(tok, (unsigned char)text[i]);
        assert_true(ids[i] >= 0);
    }
    char out[1024];
    size_t len;
    stream(tok, ids, n, 0, out, sizeof out, &len, 1);
    assert_int_equal(len, n);
    assert_memory_equal(out, text, n);
}

static const char *k_text = "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x8E\x89 na\xC3\xAFve \xE2\x9C\x93!";

static void test_tiny_bytes(void **state) {
    (void)state;
    ql_tok_t *tok = fake_tiny_tok();
    check_bytes_one_by_one(tok, k_text);

    /* an output cut inside a character ends with one U+FFFD, never the raw bytes */
    int32_t ids[3] = {fake_byte_token(tok, 'a'), fake_byte_token(tok, 0xE6), fake_byte_token(tok, 0x97)};
    ql_detok_t d;
    ql_detok_init(&d, tok, 0);
    const char *t;
    size_t tn;
    assert_int_equal(ql_detok_push(&d, ids[0], &t, &tn), 0);
    assert_int_equal(tn, 1);
    assert_int_equal(ql_detok_push(&d, ids[1], &t, &tn), 0);
    assert_int_equal(tn, 0);
    assert_int_equal(ql_detok_push(&d, ids[2], &t, &tn), 0);
    assert_int_equal(tn, 0);
    ql_detok_flush(&d, &t, &tn);
    assert_int_equal(tn, 3);
    assert_memory_equal(t, QL_DETOK_REPLACEMENT, 3);
    ql_detok_flush(&d, &t, &tn); /* nothing held any more */
    assert_int_equal(tn, 0);
    /* a stray continuation byte can never become valid: released at once, as one-shot has it */
    int32_t cont = fake_byte_token(tok, 0x80);
    assert_int_equal(ql_detok_push(&d, cont, &t, &tn), 0);
    assert_int_equal(tn, 1);
    /* an impossible second byte (E0 80) releases the lead at once */
    assert_int_equal(ql_detok_push(&d, fake_byte_token(tok, 0xE0), &t, &tn), 0);
    assert_int_equal(tn, 0);
    assert_int_equal(ql_detok_push(&d, cont, &t, &tn), 0);
    assert_int_equal(tn, 2);
    assert_int_equal(ql_detok_push(&d, -1, &t, &tn), QL_ERANGE);
    assert_int_equal(ql_detok_push(&d, ql_tok_n_vocab(tok), &t, &tn), QL_ERANGE);
    /* control tokens add nothing unless rendered */
    assert_int_equal(ql_detok_push(&d, 2, &t, &tn), 0); /* <|im_end|> */
    assert_int_equal(tn, 0);
    ql_detok_free(&d);
    ql_detok_init(&d, tok, QL_TOK_RENDER_SPECIAL);
    assert_int_equal(ql_detok_push(&d, 2, &t, &tn), 0);
    assert_int_equal(tn, strlen("<|im_end|>"));
    ql_detok_free(&d);
    ql_tok_free(tok);
}

/* Random id streams: the deltas add up to the one-shot decode, except that a cut character at
 * the very end becomes U+FFFD. */
static void random_streams(const ql_tok_t *tok, int trials) {
    int32_t n_vocab = ql_tok_n_vocab(tok);
    uint32_t x = 777;
    for (int trial = 0; trial < trials; trial++) {
        int32_t ids[40];
        size_t n = 1 + (x >> 16) % 40;
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            ids[i] = (int32_t)((x >> 8) % (uint32_t)n_vocab);
        }
        x = x * 1103515245u + 12345u;
        static char one[1 << 16], inc[1 << 16];
        size_t n_one, n_inc;
        assert_int_equal(ql_tok_decode(tok, ids, n, QL_TOK_CONTINUATION, one, sizeof one, &n_one), 0);
        stream(tok, ids, n, 0, inc, sizeof inc, &n_inc, 0);
        size_t tail = ql_utf8_incomplete_tail(one, n_one);
        assert_int_equal(n_inc, n_one - tail + (tail ? 3 : 0));
        assert_memory_equal(inc, one, n_one - tail);
        if (tail) assert_memory_equal(inc + n_one - tail, QL_DETOK_REPLACEMENT, 3);
    }
}

static void test_tiny_random(void **state) {
    (void)state;
    ql_tok_t *tok = fake_tiny_tok();
    random_streams(tok, 2000);
    ql_tok_free(tok);
}

static void test_default_model(void **state) {
    (void)state;
    ql_tok_t *tok = load_tok(ql_test_default_model());
    if (!tok) SKIP_BECAUSE("%s is absent (the default model)", ql_test_default_model());
    const char *texts[] = {
        k_text,
        "Gr\xC3\xBC\xC3\x9F" "e aus K\xC3\xB6ln! \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, "
        "\xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
        "  leading spaces, tabs\tand\nnewlines \xE2\x80\x94 em dash",
    };
    for (size_t k = 0; k < QL_ARRAY_LEN(texts); k++) {
        const char *s = texts[k];
        int32_t ids[512];
        size_t n_ids;
        assert_int_equal(ql_tok_encode(tok, s, strlen(s), 0, ids, 512, &n_ids), 0);
        char out[2048];
        size_t len;
        stream(tok, ids, n_ids, 0, out, sizeof out, &len, 1);
        assert_int_equal(len, strlen(s)); /* byte-level BPE round-trips */
        assert_memory_equal(out, s, len);
        check_bytes_one_by_one(tok, s);
    }
    random_streams(tok, 500);
    ql_tok_free(tok);
}

static void test_spm_continuation(void **state) {
    (void)state;
    const char *path = "../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf";
    ql_tok_t *tok = load_tok(path);
    if (!tok) SKIP_BECAUSE("%s is absent (the shared fixtures)", path);
    const char *s = "Hello world, \xC3\xBCn\xC3\xAF" "c\xC3\xB6" "d\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
                    "\xF0\x9F\xA6\x99 done";
    int32_t ids[256];
    size_t n;
    assert_int_equal(ql_tok_encode(tok, s, strlen(s), QL_TOK_ADD_SPECIAL, ids, 256, &n), 0);
    char whole[1024];
    size_t n_whole;
    assert_int_equal(ql_tok_decode(tok, ids, n, 0, whole, sizeof whole, &n_whole), 0);
    assert_int_equal(n_whole, strlen(s));
    assert_memory_equal(whole, s, n_whole);
    /* every split into prompt + output: the stream is what the output adds to the prompt */
    /* (from k = 2: a prompt of BOS alone would leave the text's first word to the output, whose
     * encoder-added space one-shot decoding strips) */
    for (size_t k = 2; k < n; k++) {
        char pre[1024], out[1024];
        size_t n_pre, n_out;
        assert_int_equal(ql_tok_decode(tok, ids, k, 0, pre, sizeof pre, &n_pre), 0);
        /* a prompt cut inside a character (byte fallback) leaves continuation bytes to the
         * output: they are released as they are, not valid on their own */
        int whole_chars = ql_utf8_incomplete_tail(pre, n_pre) == 0;
        stream(tok, ids + k, n - k, 0, out, sizeof out, &n_out, whole_chars);
        assert_true(n_pre <= n_whole);
        assert_memory_equal(pre, whole, n_pre);
        if (n_pre + n_out != n_whole || memcmp(out, whole + n_pre, n_out) != 0)
            fail_msg("split at %zu: streamed '%.*s', expected '%.*s'", k, (int)n_out, out,
                     (int)(n_whole - n_pre), whole + n_pre);
    }
    ql_tok_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_bytes),
        cmocka_unit_test(test_tiny_random),
        cmocka_unit_test(test_default_model),
        cmocka_unit_test(test_spm_continuation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
