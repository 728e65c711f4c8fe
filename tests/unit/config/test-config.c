/*
 * tests/unit/config/test-config.c — defaults < file < environment < flags, and every kind
 * of refusal: the message names the flag, variable or key and what is accepted.
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

#include "config/config.h"

typedef struct fixture_s {
    ql_config_t c;
    char err[512];
    char path[64];
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof(*f));
    ql_config_defaults(&f->c);
    snprintf(f->path, sizeof(f->path), "/tmp/ql-test-config-XXXXXX");
    int fd = mkstemp(f->path);
    if (fd < 0) return -1;
    close(fd);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    ql_config_free(&f->c);
    unlink(f->path);
    free(f);
    return 0;
}

static void write_file(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static int load(fixture_t *f, ql_cmd_t cmd, int argc, const char *const *argv, const char *const *envp) {
    return ql_config_load(&f->c, cmd, argc, (char **)argv, (char **)envp, f->err, sizeof(f->err));
}

static void test_defaults(void **state) {
    fixture_t *f = *state;
    assert_int_equal(load(f, QL_CMD_SERVE, 0, NULL, NULL), 0);
    assert_string_equal(f->c.host, "127.0.0.1");
    assert_int_equal(f->c.port, 8000);
    assert_int_equal(f->c.block_size, 16);
    assert_int_equal(f->c.max_num_seqs, 64);
    assert_int_equal(f->c.max_batched_tokens, 512);
    assert_int_equal(f->c.kv_cache_bytes, 1ull << 30);
    assert_int_equal(f->c.max_request_bytes, 4ull << 20);
    assert_true(f->c.gpu_memory_utilization > 0.89 && f->c.gpu_memory_utilization < 0.91);
    assert_int_equal(f->c.backend, QL_BACKEND_KIND_AUTO);
    assert_int_equal(f->c.spec_method, QL_SPEC_METHOD_NONE);
    assert_int_equal(f->c.api_keys.n, 0);
    assert_int_equal(f->c.cors_origins.n, 0);
    assert_int_equal(f->c.max_header_bytes, 16u << 10);
    assert_int_equal(f->c.max_request_line_bytes, 8u << 10);
    assert_int_equal(f->c.max_headers, 64);
    assert_int_equal(f->c.header_timeout_s, 10);
    assert_int_equal(f->c.body_timeout_s, 60);
    assert_int_equal(f->c.max_output_bytes, 4u << 20);
    assert_null(f->c.model);
    assert_int_equal(f->c.seed, -1);
    assert_int_equal(f->c.n_predict, 128);
}

static void test_precedence(void **state) {
    fixture_t *f = *state;
    write_file(f->path, "{\"port\": 9001, \"max_num_seqs\": 7, \"host\": \"0.0.0.0\", \"block-size\": 32,"
                        " \"api_key\": [\"a\", \"b\"], \"kv_cache_mem\": \"2G\"}");
    const char *env[] = {"QUILL_PORT=9002", "QUILL_MAX_NUM_SEQS=8", "QUILL_API_KEY=env1,env2,env3",
                         "PATH=/bin", "QUILL_UNRELATED_THING=1", NULL};
    const char *argv[] = {"--config", f->path, "--port", "9003"};
    assert_int_equal(load(f, QL_CMD_SERVE, 4, argv, env), 0);
    assert_int_equal(f->c.port, 9003);            /* flag beats env beats file */
    assert_int_equal(f->c.max_num_seqs, 8);       /* env beats file */
    assert_string_equal(f->c.host, "0.0.0.0");    /* file beats default */
    assert_int_equal(f->c.block_size, 32);
    assert_int_equal(f->c.kv_cache_bytes, 2ull << 30);
    assert_int_equal(f->c.api_keys.n, 3);         /* env list replaces the file's */
    assert_string_equal(f->c.api_keys.v[2], "env3");
    assert_string_equal(f->c.config_path, f->path);
}

static void test_config_from_env_var(void **state) {
    fixture_t *f = *state;
    write_file(f->path, "{\"port\": 1234}");
    char var[128];
    snprintf(var, sizeof(var), "QUILL_CONFIG=%s", f->path);
    const char *env[] = {var, NULL};
    assert_int_equal(load(f, QL_CMD_SERVE, 0, NULL, env), 0);
    assert_int_equal(f->c.port, 1234);
}

static void test_flag_forms(void **state) {
    fixture_t *f = *state;
    const char *argv[] = {"--api-key", "k1", "--api-key=k2", "-m", "model.gguf", "--no-prefix-cache",
                          "--max-model-len=4096", "--log-level", "debug", "--backend", "cpu"};
    assert_int_equal(load(f, QL_CMD_SERVE, (int)(sizeof(argv) / sizeof(*argv)), argv, NULL), 0);
    assert_int_equal(f->c.api_keys.n, 2);
    assert_string_equal(f->c.api_keys.v[0], "k1");
    assert_string_equal(f->c.api_keys.v[1], "k2");
    assert_string_equal(f->c.model, "model.gguf");
    assert_int_equal(f->c.no_prefix_cache, 1);
    assert_int_equal(f->c.max_model_len, 4096);
    assert_int_equal(f->c.log_level, QL_LOG_LEVEL_DEBUG);
    assert_int_equal(f->c.backend, QL_BACKEND_KIND_CPU);
    ql_log_set_level(QL_LOG_LEVEL_INFO);
}

static void test_run_flags_and_positionals(void **state) {
    fixture_t *f = *state;
    const char *argv[] = {"-p", "hello", "-n", "-1", "--temperature", "0.7", "--seed", "42", "--chat", "--ignore-eos"};
    assert_int_equal(load(f, QL_CMD_RUN, 10, argv, NULL), 0);
    assert_string_equal(f->c.prompt, "hello");
    assert_int_equal(f->c.n_predict, -1);
    assert_true(f->c.temperature > 0.69 && f->c.temperature < 0.71);
    assert_int_equal(f->c.seed, 42);
    assert_int_equal(f->c.chat, 1);
    assert_int_equal(f->c.ignore_eos, 1);

    const char *targv[] = {"-m", "x.gguf", "--verbose", "--", "--not-a-flag", "text"};
    assert_int_equal(load(f, QL_CMD_TOKENIZE, 6, targv, NULL), 0);
    assert_int_equal(f->c.verbose, 1);
    assert_int_equal(f->c.n_args, 2);
    assert_string_equal(f->c.args[0], "--not-a-flag");
    assert_string_equal(f->c.args[1], "text");
}

static void test_mkmodel_config_is_shape_file(void **state) {
    fixture_t *f = *state;
    const char *argv[] = {"--config", "shape.json", "-o", "out.gguf", "--seed", "3", "--type", "q4_0"};
    assert_int_equal(load(f, QL_CMD_MKMODEL, 8, argv, NULL), 0);
    assert_string_equal(f->c.shape_config, "shape.json");
    assert_null(f->c.config_path);
    assert_string_equal(f->c.output, "out.gguf");
    assert_string_equal(f->c.wtype, "q4_0");
}

static void test_help(void **state) {
    fixture_t *f = *state;
    const char *argv[] = {"--port", "1", "--help"};
    assert_int_equal(load(f, QL_CMD_SERVE, 3, argv, NULL), QL_CONFIG_HELP);
    const char *bad_then_help[] = {"--port", "99999", "-h"};
    assert_int_equal(load(f, QL_CMD_SERVE, 3, bad_then_help, NULL), QL_CONFIG_HELP);
}

/* Each refusal: the status and the words the one-line message must contain. */
typedef struct bad_case_s {
    ql_cmd_t cmd;
    const char *argv[4];
    const char *env[3];
    const char *must[3];
} bad_case_t;

static void test_refusals(void **state) {
    fixture_t *f = *state;
    static const bad_case_t cases[] = {
        {QL_CMD_SERVE, {"--port", "99999"}, {NULL}, {"--port", "99999", "0..65535"}},
        {QL_CMD_SERVE, {"--port", "-1"}, {NULL}, {"--port", "out of range", "0..65535"}},
        {QL_CMD_SERVE, {"--max-queue", "0"}, {NULL}, {"--max-queue", "1..1000000"}},
        {QL_CMD_SERVE, {"--max-header-bytes", "10"}, {NULL}, {"--max-header-bytes", "out of range"}},
        {QL_CMD_SERVE, {"--max-headers", "0"}, {NULL}, {"--max-headers", "1..10000"}},
        {QL_CMD_SERVE, {"--header-timeout", "0"}, {NULL}, {"--header-timeout", "1..3600"}},
        {QL_CMD_SERVE, {"--cors-origins", "a,,b"}, {NULL}, {"--cors-origins", "empty entry"}},
        {QL_CMD_SERVE, {"--port", "80x"}, {NULL}, {"--port", "not an integer"}},
        {QL_CMD_SERVE, {"--port"}, {NULL}, {"--port", "missing value"}},
        {QL_CMD_SERVE, {"--max-num-seqs", "0"}, {NULL}, {"--max-num-seqs", "1..4096"}},
        {QL_CMD_SERVE, {"--max-batched-tokens", "-5"}, {NULL}, {"--max-batched-tokens", "out of range"}},
        {QL_CMD_SERVE, {"--block-size", "24"}, {NULL}, {"--block-size", "8|16|32|64|128"}},
        {QL_CMD_SERVE, {"--kv-cache-mem", "12Q"}, {NULL}, {"--kv-cache-mem", "not a size"}},
        {QL_CMD_SERVE, {"--kv-cache-mem", "10"}, {NULL}, {"--kv-cache-mem", "out of range"}},
        {QL_CMD_SERVE, {"--gpu-memory-utilization", "1.5"}, {NULL}, {"--gpu-memory-utilization", "0.05..0.99"}},
        {QL_CMD_SERVE, {"--gpu-memory-utilization", "nan"}, {NULL}, {"--gpu-memory-utilization", "not a number"}},
        {QL_CMD_SERVE, {"--backend", "tpu"}, {NULL}, {"--backend", "auto|cpu|cuda"}},
        {QL_CMD_SERVE, {"--log-level", "loud"}, {NULL}, {"--log-level", "error|warn|info|debug"}},
        {QL_CMD_SERVE, {"--spec-method", "magic"}, {NULL}, {"--spec-method", "none|draft|ngram|layerskip"}},
        {QL_CMD_SERVE, {"--num-speculative-tokens", "99"}, {NULL}, {"--num-speculative-tokens", "1..16"}},
        {QL_CMD_SERVE, {"--api-key", "a,,b"}, {NULL}, {"--api-key", "empty entry"}},
        {QL_CMD_SERVE, {"--host", ""}, {NULL}, {"--host", "empty value"}},
        {QL_CMD_SERVE, {"--no-prefix-cache=maybe"}, {NULL}, {"--no-prefix-cache", "not a boolean"}},
        {QL_CMD_SERVE, {"--bogus"}, {NULL}, {"unknown flag", "--bogus", "quill serve --help"}},
        {QL_CMD_SERVE, {"-z"}, {NULL}, {"unknown flag", "-z"}},
        {QL_CMD_SERVE, {"--prompt", "x"}, {NULL}, {"unknown flag", "--prompt"}},  /* run-only flag */
        {QL_CMD_SERVE, {"stray"}, {NULL}, {"unexpected argument", "stray"}},
        {QL_CMD_SERVE, {NULL}, {"QUILL_PORT=70000", NULL}, {"QUILL_PORT", "0..65535"}},
        {QL_CMD_SERVE, {NULL}, {"QUILL_MAX_QUEUE=lots", NULL}, {"QUILL_MAX_QUEUE", "not an integer"}},
        {QL_CMD_SERVE, {"--port", "1"}, {"QUILL_BLOCK_SIZE=3", NULL}, {"QUILL_BLOCK_SIZE", "8|16|32|64|128"}},
        {QL_CMD_RUN, {"--temperature", "-1"}, {NULL}, {"--temperature", "0..100"}},
        {QL_CMD_RUN, {"--top-p", "2"}, {NULL}, {"--top-p", "0..1"}},
        {QL_CMD_RUN, {"-n", "-2"}, {NULL}, {"-n", "out of range"}},
        {QL_CMD_RUN, {"--chat=perhaps"}, {NULL}, {"--chat", "not a boolean"}},
        {QL_CMD_RUN, {"--no-chat=1"}, {NULL}, {"--no-chat", "takes no value"}},
        {QL_CMD_RUN, {"--config"}, {NULL}, {"--config", "missing value"}},
        {QL_CMD_RUN, {"--config", "/nonexistent/quill.json"}, {NULL}, {"--config", "cannot read"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        const bad_case_t *bc = &cases[i];
        int argc = 0;
        while (argc < 4 && bc->argv[argc]) argc++;
        ql_config_free(&f->c);
        ql_config_defaults(&f->c);
        int rc = load(f, bc->cmd, argc, bc->argv, bc->env[0] ? bc->env : NULL);
        if (rc == 0) fail_msg("case %zu (%s) was accepted", i, bc->argv[0] ? bc->argv[0] : bc->env[0]);
        assert_true(rc == QL_EINVAL || rc == QL_EIO);
        assert_null(strchr(f->err, '\n'));
        for (int k = 0; k < 3 && bc->must[k]; k++) {
            if (!strstr(f->err, bc->must[k]))
                fail_msg("case %zu: message '%s' lacks '%s'", i, f->err, bc->must[k]);
        }
    }
}

static void test_file_refusals(void **state) {
    fixture_t *f = *state;
    static const struct {
        const char *json;
        const char *must[2];
    } cases[] = {
        {"{\"port\": 99999}", {"key \"port\"", "0..65535"}},
        {"{\"port\": \"eighty\"}", {"key \"port\"", "not an integer"}},
        {"{\"port\": [1]}", {"key \"port\"", "wrong JSON type"}},
        {"{\"host\": 5}", {"key \"host\"", "expected a string"}},
        {"{\"prot\": 80}", {"key \"prot\"", "unknown key"}},
        {"{\"api_key\": [\"ok\", 3]}", {"key \"api_key\"", "entry 1"}},
        {"[1, 2]", {"top level must be a JSON object", NULL}},
        {"{\"port\": 80,", {"--config", NULL}},
        {"{\"port\": 1, \"port\": 2}", {"--config", "duplicate"}},
        {"{\"prompt\": \"x\"}", {"key \"prompt\"", "unknown key"}},  /* per-invocation only */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        write_file(f->path, cases[i].json);
        const char *argv[] = {"--config", f->path};
        ql_config_free(&f->c);
        ql_config_defaults(&f->c);
        int rc = load(f, QL_CMD_SERVE, 2, argv, NULL);
        if (rc != QL_EINVAL) fail_msg("file case %zu: rc %d (%s)", i, rc, f->err);
        for (int k = 0; k < 2 && cases[i].must[k]; k++)
            if (!strstr(f->err, cases[i].must[k])) fail_msg("file case %zu: '%s' lacks '%s'", i, f->err, cases[i].must[k]);
    }
    /* a key that belongs to another subcommand is accepted silently (one file, many commands) */
    write_file(f->path, "{\"port\": 8080, \"max_num_seqs\": 3}");
    const char *argv[] = {"--config", f->path};
    ql_config_free(&f->c);
    ql_config_defaults(&f->c);
    assert_int_equal(load(f, QL_CMD_TOKENIZE, 2, argv, NULL), 0);
}

/* ---- ql_config_read_object (mkmodel shape files) ---- */

typedef struct members_s {
    int n;
    char keys[8][16];
    ql_config_value_t v[8];
    const char *fail_on; /* key whose callback fails */
} members_t;

static int collect_member(void *ud, const char *key, const ql_config_value_t *v, char *err, size_t errlen) {
    members_t *m = ud;
    if (m->fail_on && strcmp(key, m->fail_on) == 0) {
        snprintf(err, errlen, "field '%s' is bad", key);
        return QL_ERANGE;
    }
    if (m->n < 8) {
        snprintf(m->keys[m->n], sizeof(m->keys[0]), "%s", key);
        m->v[m->n] = *v;
        m->v[m->n].str = NULL; /* valid during the callback only */
    }
    m->n++;
    return 0;
}

static void test_read_object(void **state) {
    fixture_t *f = *state;
    write_file(f->path, "{\"z\": 3, \"a\": 2.5, \"s\": \"x\", \"t\": true, \"n\": null, \"arr\": [1], \"big\": 1e3}");
    members_t m = {0};
    assert_int_equal(ql_config_read_object(f->path, collect_member, &m, f->err, sizeof(f->err)), 0);
    assert_int_equal(m.n, 7);
    /* file order, not sorted */
    assert_string_equal(m.keys[0], "z");
    assert_int_equal(m.v[0].kind, QL_CONFIG_VALUE_NUMBER);
    assert_true(m.v[0].is_integer && m.v[0].integer == 3 && m.v[0].num == 3.0);
    assert_string_equal(m.keys[1], "a");
    assert_true(m.v[1].kind == QL_CONFIG_VALUE_NUMBER && !m.v[1].is_integer && m.v[1].num == 2.5);
    assert_int_equal(m.v[2].kind, QL_CONFIG_VALUE_STRING);
    assert_true(m.v[3].kind == QL_CONFIG_VALUE_BOOL && m.v[3].boolean == 1);
    assert_int_equal(m.v[4].kind, QL_CONFIG_VALUE_NULL);
    assert_int_equal(m.v[5].kind, QL_CONFIG_VALUE_OTHER);
    assert_true(m.v[6].kind == QL_CONFIG_VALUE_NUMBER && !m.v[6].is_integer && m.v[6].num == 1000.0);

    /* the callback's error stops the walk and comes back prefixed with the path */
    memset(&m, 0, sizeof(m));
    m.fail_on = "s";
    assert_int_equal(ql_config_read_object(f->path, collect_member, &m, f->err, sizeof(f->err)), QL_ERANGE);
    assert_int_equal(m.n, 2);
    assert_non_null(strstr(f->err, f->path));
    assert_non_null(strstr(f->err, "field 's' is bad"));

    /* refusals before any callback */
    static const struct {
        const char *json;
        const char *must;
    } cases[] = {
        {"{\"a\": 1,", ":1:"},  /* path:line:column */
        {"[1, 2]", "top level must be a JSON object"},
        {"{\"a\": 1, \"a\": 2}", "duplicate"},
        {"", ":"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        write_file(f->path, cases[i].json);
        memset(&m, 0, sizeof(m));
        assert_int_equal(ql_config_read_object(f->path, collect_member, &m, f->err, sizeof(f->err)), QL_EINVAL);
        assert_int_equal(m.n, 0);
        if (!strstr(f->err, f->path) || !strstr(f->err, cases[i].must))
            fail_msg("case %zu: '%s' lacks the path or '%s'", i, f->err, cases[i].must);
    }
    assert_int_equal(ql_config_read_object("/nonexistent/shape.json", collect_member, &m, f->err, sizeof(f->err)),
                     QL_EIO);
    assert_non_null(strstr(f->err, "/nonexistent/shape.json"));
    assert_non_null(strstr(f->err, "No such file or directory"));
    assert_int_equal(m.n, 0);
    assert_int_equal(ql_config_read_object(NULL, collect_member, &m, f->err, sizeof(f->err)), QL_EINVAL);
}

static void test_parse_size(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(ql_config_parse_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(ql_config_parse_size("4K", &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(ql_config_parse_size("1.5GiB", &v), 0);
    assert_int_equal(v, 3ull << 29);
    assert_int_equal(ql_config_parse_size("2 MB", &v), 0);
    assert_int_equal(v, 2ull << 20);
    assert_int_equal(ql_config_parse_size("-1", &v), QL_EINVAL);
    assert_int_equal(ql_config_parse_size("1X", &v), QL_EINVAL);
    assert_int_equal(ql_config_parse_size("", &v), QL_EINVAL);
    assert_int_equal(ql_config_parse_size("1Gx", &v), QL_EINVAL);
}

static void test_cmd_names(void **state) {
    (void)state;
    ql_cmd_t c;
    const char *names[] = {"serve", "run", "bench", "tokenize", "inspect", "mkmodel"};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(ql_cmd_parse(names[i], &c), 0);
        assert_string_equal(ql_cmd_name(c), names[i]);
    }
    assert_int_equal(ql_cmd_parse("train", &c), QL_EINVAL);
}

static void test_help_lists_every_flag(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    ql_config_print_help(mem, QL_CMD_SERVE);
    fclose(mem);
    const char *want[] = {"--host", "--port", "--model", "--api-key", "--kv-cache-mem", "--block-size",
                          "--max-num-seqs", "--max-batched-tokens", "--max-model-len", "--max-queue",
                          "--max-connections", "--request-timeout", "--shutdown-timeout", "--spec-method",
                          "--draft-model", "--num-speculative-tokens", "--log-level", "QUILL_PORT",
                          "default 8000", "0..65535"};
    for (size_t i = 0; i < sizeof(want) / sizeof(*want); i++)
        if (!strstr(buf, want[i])) fail_msg("serve --help lacks %s", want[i]);
    assert_null(strstr(buf, "--prompt"));
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_from_env_var, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_flags_and_positionals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkmodel_config_is_shape_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_object, setup, teardown),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_cmd_names),
        cmocka_unit_test(test_help_lists_every_flag),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
