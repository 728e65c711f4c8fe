/*
 * server/main.c — the quill binary: `quill <command> [flags]`. Parses the configuration
 * (config/) for the command and hands it to the command's implementation (server/cmd-*.c).
 */
#define QL_LOG_MODULE "main"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "cuda/cuda.h"
#include "server/cmd.h"

extern char **environ;

typedef struct command_s {
    ql_cmd_t cmd;
    int (*fn)(const ql_config_t *cfg);
    const char *usage;
    const char *summary;
} command_t;

static const command_t k_commands[] = {
    {QL_CMD_SERVE, ql_cmd_serve, "serve --model PATH [flags]",
     "start the OpenAI-compatible HTTP server"},
    {QL_CMD_RUN, ql_cmd_run, "run --model PATH -p PROMPT [-n N] [--chat] [flags]",
     "generate from one prompt and print the text"},
    {QL_CMD_BENCH, ql_cmd_bench, "bench [flags]", "serving benchmark against an OpenAI-compatible server"},
    {QL_CMD_TOKENIZE, ql_cmd_tokenize, "tokenize --model PATH [--chat] [--verbose] [--] TEXT",
     "print the token ids of TEXT"},
    {QL_CMD_INSPECT, ql_cmd_inspect, "inspect --model PATH", "print a GGUF file's metadata and tensors"},
    {QL_CMD_MKMODEL, ql_cmd_mkmodel, "mkmodel (--shape NAME | --config FILE) [--seed S] [--type T] -o OUT.gguf",
     "write a random-weight model of a given shape"},
};

int ql_cmd_not_available(const char *cmd, const char *what) {
    fprintf(stderr, "quill %s: %s is not available yet in this version\n", cmd, what);
    return QL_EXIT_FAIL;
}

int ql_cmd_fail(int code, const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "quill %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static void print_usage(FILE *f) {
    fprintf(f, "quill %s: an LLM decoding server (OpenAI API, paged KV cache, CPU and CUDA)\n\n", ql_version());
    fprintf(f, "usage: quill <command> [flags]\n\ncommands:\n");
    for (size_t i = 0; i < QL_ARRAY_LEN(k_commands); i++)
        fprintf(f, "  %-10s %s\n", ql_cmd_name(k_commands[i].cmd), k_commands[i].summary);
    fprintf(f, "\nglobal flags:\n  -h, --help     this help (quill <command> --help: the command's flags)\n"
               "  --version      version, git commit and compiled-in backends\n");
    fprintf(f, "\nPrecedence of settings: defaults < --config FILE (JSON) < QUILL_* environment < flags.\n");
    for (size_t i = 0; i < QL_ARRAY_LEN(k_commands); i++) {
        fprintf(f, "\nquill %s\n", k_commands[i].usage);
        ql_config_print_help(f, k_commands[i].cmd);
    }
}

static void print_version(void) {
    char feats[64];
    ql_cpu_features_str(ql_cpu_features(), feats, sizeof(feats));
    printf("quill %s (commit %s)\n", ql_version(), ql_git_commit());
    printf("cuda: %s", ql_cuda_compiled() ? "compiled in" : "not compiled in");
    if (ql_cuda_compiled()) printf(", %d device(s)", ql_cuda_device_count());
    printf("\ncpu: %s, %d cores\n", feats, ql_cpu_count());
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return QL_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
        print_usage(stdout);
        return QL_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0 || strcmp(name, "version") == 0) {
        print_version();
        return QL_EXIT_OK;
    }
    ql_cmd_t cmd;
    if (ql_cmd_parse(name, &cmd) != 0) {
        fprintf(stderr, "quill: unknown command '%s' (see quill --help)\n", name);
        return QL_EXIT_USAGE;
    }
    const command_t *c = NULL;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_commands); i++)
        if (k_commands[i].cmd == cmd) c = &k_commands[i];

    ql_config_t cfg;
    ql_config_defaults(&cfg);
    char err[512];
    int rc = ql_config_load(&cfg, cmd, argc - 2, argv + 2, environ, err, sizeof(err));
    if (rc == QL_CONFIG_HELP) {
        printf("usage: quill %s\n%s\n\nflags:\n", c->usage, c->summary);
        ql_config_print_help(stdout, cmd);
        ql_config_free(&cfg);
        return QL_EXIT_OK;
    }
    if (rc != 0) {
        fprintf(stderr, "quill %s: %s\n", name, err);
        ql_config_free(&cfg);
        return QL_EXIT_USAGE;
    }
    rc = c->fn(&cfg);
    ql_config_free(&cfg);
    return rc;
}
