/*
 * tests/unit/model/test-chat.c — model/chat.h against jinja2: every rendering in
 * every tests/fixtures/chat/<family>.json (made by tools/reference/gen-chat.py from the official
 * templates) byte for byte, template detection on each template text and on the default
 * model's own, and each documented error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "model/chat.h"
#include "model/gguf.h"

#define FIXTURES "tests/fixtures/chat"

static const char *const k_families[] = {"smollm2", "chatml", "llama3", "llama2", "mistral"};

/* ---- helpers ---- */

static json_t *load_json(const char *family) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "/%s.json", family);
    json_error_t e;
    json_t *doc = json_load_file(path, 0, &e);
    if (!doc) fail_msg("%s:%d: %s (run from the source root)", path, e.line, e.text);
    return doc;
}

/* Reads a whole file; the caller frees. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    assert_true(n >= 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Prints s with control characters escaped, for a readable mismatch report. */
static void print_escaped(const char *label, const char *s, size_t n) {
    fprintf(stderr, "  %s (%zu bytes): \"", label, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stderr);
        else if (c == '\t') fputs("\\t", stderr);
        else if (c < 0x20) fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
    fputs("\"\n", stderr);
}

static ql_chat_t *chat_for(json_t *doc, const char *name, int with_template) {
    const char *tmpl = jstr(doc, "template");
    ql_chat_params_t p = {
        .name = name,
        .tmpl = with_template ? tmpl : NULL,
        .tmpl_len = with_template ? strlen(tmpl) : 0,
        .bos_token = jstr(doc, "bos_token"),
        .eos_token = jstr(doc, "eos_token"),
    };
    ql_chat_t *c = NULL;
    char err[512];
    int rc = ql_chat_init(&p, &c, err, sizeof err);
    if (rc != 0) fail_msg("ql_chat_init(%s): %s", name ? name : "auto", err);
    return c;
}

/* Renders every case of `doc` with `c` and compares with jinja2's output or error. */
static void check_cases(json_t *doc, const ql_chat_t *c, const char *what) {
    json_t *cases = json_object_get(doc, "cases");
    assert_true(json_array_size(cases) > 0);
    size_t i_case, n_bad = 0;
    json_t *cs;
    json_array_foreach(cases, i_case, cs) {
        json_t *jm = json_object_get(cs, "messages");
        size_t n = json_array_size(jm);
        ql_chat_msg_t *msgs = calloc(n ? n : 1, sizeof *msgs);
        assert_non_null(msgs);
        for (size_t k = 0; k < n; k++) {
            json_t *m = json_array_get(jm, k);
            json_t *content = json_object_get(m, "content");
            msgs[k].role = jstr(m, "role");
            msgs[k].content = json_string_value(content);
            msgs[k].content_len = json_string_length(content);
        }
        int gen = json_is_true(json_object_get(cs, "add_generation_prompt"));
        char *out = NULL, err[512];
        size_t out_len = 0;
        int rc = ql_chat_render(c, msgs, n, gen, &out, &out_len, err, sizeof err);
        json_t *expected = json_object_get(cs, "expected");
        const char *name = jstr(cs, "name");
        if (expected) {
            const char *want = json_string_value(expected);
            size_t want_len = json_string_length(expected);
            if (rc != 0 || out_len != want_len || memcmp(out, want, want_len) != 0 ||
                out[out_len] != '\0') {
                fprintf(stderr, "MISMATCH %s case '%s' (rc %d %s)\n", what, name, rc, rc ? err : "");
                print_escaped("jinja2", want, want_len);
                if (out) print_escaped("quill ", out, out_len);
                n_bad++;
            }
        } else {
            const char *want_err = jstr(cs, "error");
            assert_non_null(want_err);
            if (rc != QL_EINVAL || out != NULL || strstr(err, want_err) == NULL) {
                fprintf(stderr, "MISMATCH %s case '%s': rc %d, err '%s', expected QL_EINVAL with '%s'\n",
                        what, name, rc, err, want_err);
                n_bad++;
            }
        }
        free(out);
        free(msgs);
    }
    if (n_bad) fail_msg("%s: %zu of %zu cases differ from jinja2", what, n_bad, json_array_size(cases));
}

/* ---- tests ---- */

/* The family is recognised from each template text, the default system prompt is the one
 * jinja2 renders, and every case matches jinja2 byte for byte. */
static void test_fixtures_auto(void **state) {
    (void)state;
    for (size_t f = 0; f < QL_ARRAY_LEN(k_families); f++) {
        json_t *doc = load_json(k_families[f]);
        const char *tmpl = jstr(doc, "template");
        const char *want_fmt = jstr(doc, "format");
        assert_string_equal(ql_chat_format_name(ql_chat_detect(tmpl, strlen(tmpl))), want_fmt);

        ql_chat_t *c = chat_for(doc, NULL, 1);
        assert_string_equal(ql_chat_format_name(ql_chat_format(c)), want_fmt);
        const char *want_sys = jstr(doc, "default_system");
        const char *sys = ql_chat_default_system(c);
        if (want_sys) {
            assert_non_null(sys);
            assert_string_equal(sys, want_sys);
        } else {
            assert_null(sys);
        }
        check_cases(doc, c, k_families[f]);
        ql_chat_free(c);

        /* "auto" is the same as no name */
        c = chat_for(doc, "auto", 1);
        assert_string_equal(ql_chat_format_name(ql_chat_format(c)), want_fmt);
        ql_chat_free(c);
        json_decref(doc);
    }
}

/* --chat-template NAME with the model's template text gives the same renderings; without
 * any text, so do the families that have no default system prompt. */
static void test_fixtures_by_name(void **state) {
    (void)state;
    for (size_t f = 0; f < QL_ARRAY_LEN(k_families); f++) {
        json_t *doc = load_json(k_families[f]);
        const char *fmt = jstr(doc, "format");
        char what[64];
        snprintf(what, sizeof what, "%s by name", k_families[f]);
        ql_chat_t *c = chat_for(doc, fmt, 1);
        check_cases(doc, c, what);
        ql_chat_free(c);
        if (!jstr(doc, "default_system")) {
            snprintf(what, sizeof what, "%s by name, no template text", k_families[f]);
            c = chat_for(doc, fmt, 0);
            check_cases(doc, c, what);
            ql_chat_free(c);
        }
        json_decref(doc);
    }
}

/* Each hand-written template file is recognised as its family. */
static void test_detect_template_files(void **state) {
    (void)state;
    static const char *const names[] = {"chatml", "llama3", "llama2", "mistral"};
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        char path[256];
        snprintf(path, sizeof path, FIXTURES "/templates/%s.jinja", names[i]);
        size_t len;
        char *t = read_file(path, &len);
        assert_string_equal(ql_chat_format_name(ql_chat_detect(t, len)), names[i]);
        free(t);
    }
}

static ql_chat_format_t detect_s(const char *t) { return ql_chat_detect(t, strlen(t)); }

static void test_detect_markers(void **state) {
    (void)state;
    assert_int_equal(detect_s(""), QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(ql_chat_detect(NULL, 0), QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(detect_s("{% for m in messages %}{{ m.content }}{% endfor %}"), QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(detect_s("{{'<|im_start|>' + m['role'] }}"), QL_CHAT_FORMAT_CHATML);
    assert_int_equal(detect_s("'<|start_header_id|>' + r + '<|end_header_id|>'"), QL_CHAT_FORMAT_LLAMA3);
    /* one header marker alone is not enough */
    assert_int_equal(detect_s("'<|start_header_id|>'"), QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(detect_s("'[INST] <<SYS>>\\n'"), QL_CHAT_FORMAT_LLAMA2);
    assert_int_equal(detect_s("{{ bos_token }}'[INST] ' + c + ' [/INST]'"), QL_CHAT_FORMAT_MISTRAL);
    /* variants that render differently are not guessed */
    assert_int_equal(detect_s("<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: "
                              "December 2023"),
                     QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(detect_s("[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT][INST]"), QL_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(detect_s("[AVAILABLE_TOOLS]{{ t }}[/AVAILABLE_TOOLS][INST]"), QL_CHAT_FORMAT_UNKNOWN);
    /* the length bounds the search: the marker past it does not count */
    const char *t = "xxxx<|im_start|>";
    assert_int_equal(ql_chat_detect(t, 8), QL_CHAT_FORMAT_UNKNOWN);

    ql_chat_format_t f;
    for (int i = QL_CHAT_FORMAT_CHATML; i <= QL_CHAT_FORMAT_MISTRAL; i++) {
        assert_int_equal(ql_chat_format_parse(ql_chat_format_name((ql_chat_format_t)i), &f), 0);
        assert_int_equal(f, i);
    }
    assert_int_equal(ql_chat_format_parse("auto", &f), QL_EINVAL);
    assert_int_equal(ql_chat_format_parse("ChatML", &f), QL_EINVAL);
    assert_string_equal(ql_chat_format_name((ql_chat_format_t)99), "unknown");
}

static char *default_system_of(const char *tmpl) {
    ql_chat_params_t p = {.tmpl = tmpl, .tmpl_len = strlen(tmpl)};
    ql_chat_t *c = NULL;
    assert_int_equal(ql_chat_init(&p, &c, NULL, 0), 0);
    const char *s = ql_chat_default_system(c);
    char *copy = s ? strdup(s) : NULL;
    ql_chat_free(c);
    return copy;
}

/* The default system prompt is a literal in the template, found however it is written. */
static void test_default_system_forms(void **state) {
    (void)state;
    char *s;
    /* escaped newline, escaped quote inside a single-quoted literal */
    s = default_system_of("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou\\'re "
                          "\"kind\".\\tOK<|im_end|>\\n' }}{% endif %}");
    assert_non_null(s);
    assert_string_equal(s, "You're \"kind\".\tOK");
    free(s);
    /* double quotes */
    s = default_system_of("{{ \"<|im_start|>system\nBe brief.<|im_end|>\n\" }}");
    assert_non_null(s);
    assert_string_equal(s, "Be brief.");
    free(s);
    /* Qwen2.5 style: the first literal is followed by the user's system content, the default
     * is in the else branch */
    s = default_system_of("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
                          "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- "
                          "'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
                          "helpful assistant.<|im_end|>\\n' }}{%- endif %}");
    assert_non_null(s);
    assert_string_equal(s, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
    free(s);
    /* plain ChatML: no default */
    s = default_system_of("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
    assert_null(s);
    /* a literal that never reaches <|im_end|> */
    s = default_system_of("{{ '<|im_start|>system\\nunterminated");
    assert_null(s);
    /* an empty default is still a default */
    s = default_system_of("{{ '<|im_start|>system\n<|im_end|>\n' }}");
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
}

static void test_init_errors(void **state) {
    (void)state;
    char err[512];
    ql_chat_t *c = (ql_chat_t *)(uintptr_t)1;
    const char *unknown = "{% for m in messages %}\n{{ m['role'] }}: {{ m['content'] }}{% endfor %}";
    ql_chat_params_t p = {.tmpl = unknown, .tmpl_len = strlen(unknown)};
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), QL_EUNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(err, "unknown chat template"));
    assert_non_null(strstr(err, "{% for m in messages %}\\n{{ m['role'] }}")); /* what it saw */
    assert_non_null(strstr(err, "--chat-template"));
    assert_null(strchr(err, '\n'));

    const char *l31 = "{{- bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date";
    p.tmpl = l31;
    p.tmpl_len = strlen(l31);
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), QL_EUNSUPPORTED);
    assert_non_null(strstr(err, "Llama 3.1"));
    assert_non_null(strstr(err, "--chat-template"));
    /* ...which a name overrides */
    p.name = "llama3";
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), 0);
    assert_int_equal(ql_chat_format(c), QL_CHAT_FORMAT_LLAMA3);
    ql_chat_free(c);

    p = (ql_chat_params_t){.name = "auto"};
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), QL_ENOENT);
    assert_non_null(strstr(err, "no chat template"));
    assert_non_null(strstr(err, "--chat-template"));

    p = (ql_chat_params_t){.name = "vicuna"};
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "'vicuna'"));

    assert_int_equal(ql_chat_init(NULL, &c, err, sizeof err), QL_EINVAL);
    p = (ql_chat_params_t){.name = "chatml", .tmpl = NULL, .tmpl_len = 3};
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), QL_EINVAL);
    ql_chat_free(NULL);
}

static ql_chat_t *chat_named(const char *name) {
    ql_chat_params_t p = {.name = name};
    ql_chat_t *c = NULL;
    assert_int_equal(ql_chat_init(&p, &c, NULL, 0), 0);
    return c;
}

#define MSG(r, s) {(r), (s), sizeof(s) - 1}

static void test_render_errors(void **state) {
    (void)state;
    char err[512], *out = (char *)(uintptr_t)1;
    size_t len = 7;
    ql_chat_t *c = chat_named("chatml");
    ql_chat_msg_t tool[] = {MSG("user", "hi"), MSG("tool", "{}")};
    assert_int_equal(ql_chat_render(c, tool, 2, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_null(out);
    assert_int_equal(len, 0);
    assert_non_null(strstr(err, "messages[1]"));
    assert_non_null(strstr(err, "'tool'"));

    ql_chat_msg_t norole[] = {{NULL, "x", 1}};
    assert_int_equal(ql_chat_render(c, norole, 1, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "no role"));
    ql_chat_msg_t nocontent[] = {{"user", NULL, 4}};
    assert_int_equal(ql_chat_render(c, nocontent, 1, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_int_equal(ql_chat_render(c, tool, 0, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "no messages"));
    assert_int_equal(ql_chat_render(c, tool, 1, 1, NULL, &len, err, sizeof err), QL_EINVAL);
    /* NULL content with length 0 is an empty message */
    ql_chat_msg_t empty[] = {{"user", NULL, 0}};
    assert_int_equal(ql_chat_render(c, empty, 1, 0, &out, &len, err, sizeof err), 0);
    assert_string_equal(out, "<|im_start|>user\n<|im_end|>\n");
    free(out);
    ql_chat_free(c);

    /* llama2 / mistral: the official message, and which message broke the order */
    ql_chat_msg_t two_users[] = {MSG("user", "a"), MSG("assistant", "b"), MSG("assistant", "c")};
    c = chat_named("llama2");
    assert_int_equal(ql_chat_render(c, two_users, 3, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "llama2"));
    assert_non_null(strstr(err, "Conversation roles must alternate"));
    assert_non_null(strstr(err, "messages[2]"));
    ql_chat_free(c);
    c = chat_named("mistral");
    ql_chat_msg_t sys_late[] = {MSG("user", "a"), MSG("system", "b")};
    assert_int_equal(ql_chat_render(c, sys_late, 2, 1, &out, &len, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "Only user and assistant roles are supported!"));
    assert_non_null(strstr(err, "messages[1]"));
    ql_chat_free(c);
}

/* Python's strip() never splits or eats malformed UTF-8: such bytes count as non-space. */
static void test_strip_malformed_utf8(void **state) {
    (void)state;
    ql_chat_t *c = chat_named("llama3");
    char *out;
    size_t len;
    ql_chat_msg_t m[] = {MSG("user", " \xff x \xe3\x80"), MSG("assistant", "\xe3\x80\x80\xc2\xa0")};
    assert_int_equal(ql_chat_render(c, m, 2, 0, &out, &len, NULL, 0), 0);
    const char want[] = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\xff x \xe3\x80<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>";
    assert_int_equal(len, sizeof want - 1);
    assert_memory_equal(out, want, len);
    free(out);
    ql_chat_free(c);
}

/* The default model's own tokenizer.chat_template: recognised as ChatML with SmolLM2's
 * default system prompt, and the same text gen-chat.py rendered. */
static void test_default_model(void **state) {
    (void)state;
    const char *path = getenv("QL_DEFAULT_MODEL");
    FILE *f = path && *path ? fopen(path, "rb") : NULL;
    if (!f) {
        print_message("QL_DEFAULT_MODEL unset or missing: skipping (make test sets it)\n");
        skip();
    }
    fclose(f);
    ql_gguf_t *g = NULL;
    char err[512];
    int rc = ql_gguf_open(path, &g, err, sizeof err);
    if (rc != 0) fail_msg("%s: %s", path, err);
    ql_gguf_str_t t;
    assert_int_equal(ql_gguf_get_str(g, "tokenizer.chat_template", &t), 0);
    assert_int_equal(ql_chat_detect(t.ptr, (size_t)t.len), QL_CHAT_FORMAT_CHATML);
    ql_chat_params_t p = {.tmpl = t.ptr, .tmpl_len = (size_t)t.len};
    ql_chat_t *c = NULL;
    assert_int_equal(ql_chat_init(&p, &c, err, sizeof err), 0);
    assert_string_equal(ql_chat_default_system(c),
                        "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    json_t *doc = load_json("smollm2");
    const char *want = jstr(doc, "template");
    assert_int_equal((size_t)t.len, strlen(want));
    assert_memory_equal(t.ptr, want, strlen(want));
    check_cases(doc, c, "default model");
    json_decref(doc);
    ql_chat_free(c);
    ql_gguf_free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_auto),
        cmocka_unit_test(test_fixtures_by_name),
        cmocka_unit_test(test_detect_template_files),
        cmocka_unit_test(test_detect_markers),
        cmocka_unit_test(test_default_system_forms),
        cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_render_errors),
        cmocka_unit_test(test_strip_malformed_utf8),
        cmocka_unit_test(test_default_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
