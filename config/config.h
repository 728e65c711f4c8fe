/*
 * config/config.h — quill's one configuration struct and how it is filled:
 * defaults < JSON config file (--config) < environment (QUILL_*) < command-line flags.
 *
 * Every knob lives in one table (config/config.c) that also drives --help, the JSON keys
 * (the flag name with '-' or '_'), the environment names (QUILL_ + upper-case name with
 * '_') and validation. A bad value is refused with one line naming the flag, variable or
 * key and the accepted range; the binary turns that into exit code 2.
 */
#ifndef QL_CONFIG_H
#define QL_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Subcommands, as a bit set: each option names the commands that accept it. */
typedef enum ql_cmd_e {
    QL_CMD_SERVE = 1 << 0,
    QL_CMD_RUN = 1 << 1,
    QL_CMD_BENCH = 1 << 2,
    QL_CMD_TOKENIZE = 1 << 3,
    QL_CMD_INSPECT = 1 << 4,
    QL_CMD_MKMODEL = 1 << 5,
} ql_cmd_t;

typedef enum ql_backend_kind_e {
    QL_BACKEND_KIND_AUTO = 0,
    QL_BACKEND_KIND_CPU = 1,
    QL_BACKEND_KIND_CUDA = 2,
} ql_backend_kind_t;

typedef enum ql_spec_method_e {
    QL_SPEC_METHOD_NONE = 0,
    QL_SPEC_METHOD_DRAFT = 1,
    QL_SPEC_METHOD_NGRAM = 2,
    QL_SPEC_METHOD_LAYERSKIP = 3,
} ql_spec_method_t;

/* A list of strings (API keys); owned by the config. */
typedef struct ql_strlist_s {
    char **v;
    int n;
} ql_strlist_t;

typedef struct ql_config_s {
    /* ---- common ---- */
    char *config_path;   /* --config: JSON file read before the environment */
    int log_level;       /* ql_log_level_t */
    char *model;         /* path to a GGUF file */
    int threads;         /* CPU threads; 0 = all online cores */
    int backend;         /* ql_backend_kind_t */
    char *chat_template; /* "auto" or a template name (model/chat.h) */

    /* ---- server ---- */
    char *host;
    int port;                  /* 0 = any free port */
    ql_strlist_t api_keys;     /* empty = no authentication */
    char *served_model_name;   /* NULL = the model file's base name */
    int max_connections;
    uint64_t max_request_bytes; /* largest accepted request body */
    int max_queue;             /* waiting requests before 429 */
    int max_n;                 /* largest `n` (choices) per request */
    int request_timeout_s;     /* 0 = none */
    int idle_timeout_s;        /* keep-alive connection idle limit */
    int shutdown_timeout_s;    /* drain time on SIGTERM */
    int header_timeout_s;      /* request line + headers must arrive within this */
    int body_timeout_s;        /* the body must arrive within this after the headers */
    uint64_t max_request_line_bytes; /* longest request target */
    uint64_t max_header_bytes; /* request line + header block */
    int max_headers;           /* header fields per request */
    uint64_t max_output_bytes; /* queued output per connection before a cut-off */
    ql_strlist_t cors_origins; /* empty = no CORS; "*" = any origin */

    /* ---- engine ---- */
    uint64_t kv_cache_bytes;       /* CPU KV pool size */
    double gpu_memory_utilization; /* fraction of device memory for weights + KV */
    int block_size;                /* tokens per KV block */
    int max_num_seqs;
    int max_batched_tokens;
    int max_model_len;             /* 0 = the model's context length */
    int no_prefix_cache;

    /* ---- speculative decoding ---- */
    int spec_method;          /* ql_spec_method_t */
    char *draft_model;
    int num_speculative_tokens;
    int spec_layers;          /* layerskip: draft = first L layers */
    int spec_ngram_max;       /* ngram: longest n-gram looked up */
    int spec_fixed_k;         /* 1: k is always num_speculative_tokens (no load adaptation) */

    /* ---- run / tokenize ---- */
    char *prompt;
    int n_predict;            /* -1 = until EOS or the context is full */
    int chat;
    int verbose;
    double temperature;
    int top_k;
    double top_p;
    double min_p;
    double repeat_penalty;
    int64_t seed;             /* -1 = random */
    int ignore_eos;

    /* ---- bench ---- */
    char *bench_base_url;      /* http://HOST[:PORT][/PREFIX] */
    int bench_chat;            /* --endpoint: 0 = /v1/completions, 1 = /v1/chat/completions */
    char *bench_model;         /* model id sent; NULL = the server's first */
    char *bench_api_key;       /* NULL = none */
    int bench_input_len;       /* prompt tokens */
    int bench_output_len;      /* max_tokens, with ignore_eos */
    int bench_num_prompts;
    double bench_request_rate; /* requests/s; 0 = all at once */
    double bench_burstiness;   /* gamma shape of the inter-arrival gaps */
    int bench_max_concurrency; /* 0 = no limit */
    int bench_warmup;          /* unmeasured requests first */
    double bench_slo_ttft_ms;  /* 0 = no bound */
    double bench_slo_tpot_ms;  /* 0 = no bound */
    char *bench_out;           /* JSON results file; NULL = none */

    /* ---- mkmodel ---- */
    char *shape;
    char *shape_config;       /* mkmodel --config: a JSON shape file */
    char *output;
    char *wtype;              /* weight type name: f16, q8_0, q4_0, q4_1, ... */

    /* ---- positional arguments (borrowed from argv) ---- */
    char **args;
    int n_args;
} ql_config_t;

/* ql_config_load() returns this (positive) when -h/--help was given: print help, exit 0. */
#define QL_CONFIG_HELP 1

/** Fills `c` with the defaults. Release with ql_config_free(). */
QL_API void ql_config_defaults(ql_config_t *c);

/** Fills `c` for subcommand `cmd` from, in rising precedence: defaults, the JSON file named
 *  by --config (or QUILL_CONFIG), the environment `envp` (NULL-terminated "K=V" strings;
 *  may be NULL) and the flags argv[0..argc) (argv[0] is the first flag, not the program).
 *  On error writes one line (no newline) into err[errlen] naming the flag, variable or key
 *  and what is accepted. `c` keeps pointers into argv for positional arguments.
 *  @return 0, QL_CONFIG_HELP, QL_EINVAL (bad input), QL_EIO (config file unreadable). */
QL_API int ql_config_load(ql_config_t *c, ql_cmd_t cmd, int argc, char **argv, char **envp,
                          char *err, size_t errlen);

/** Frees the strings `c` owns; `c` may then be reused with ql_config_defaults(). */
QL_API void ql_config_free(ql_config_t *c);

/** Writes the flags `cmd` accepts, each with its default, range and environment name. */
QL_API void ql_config_print_help(FILE *f, ql_cmd_t cmd);

/** The command's name ("serve", ...), or NULL for an unknown bit. */
QL_API const char *ql_cmd_name(ql_cmd_t cmd);
/** Parses a command name. @return 0 or QL_EINVAL. */
QL_API int ql_cmd_parse(const char *name, ql_cmd_t *out);

/** Parses a byte size: a number with an optional suffix K, M, G, T (powers of 1024; "KiB",
 *  "MB" etc. accepted). @return 0 or QL_EINVAL. */
QL_API int ql_config_parse_size(const char *s, uint64_t *out);

/* ---- flat JSON objects (quill mkmodel's shape files) ---- */

typedef enum ql_config_value_kind_e {
    QL_CONFIG_VALUE_STRING = 0,
    QL_CONFIG_VALUE_NUMBER = 1, /* integer or real */
    QL_CONFIG_VALUE_BOOL = 2,
    QL_CONFIG_VALUE_NULL = 3,
    QL_CONFIG_VALUE_OTHER = 4,  /* an array or an object */
} ql_config_value_kind_t;

/* One member's value. `str` is valid during the callback only. For a NUMBER, `num` holds it
 * and `is_integer` says whether the JSON text was an integer (then `integer` is exact). */
typedef struct ql_config_value_s {
    ql_config_value_kind_t kind;
    const char *str;     /* STRING */
    double num;          /* NUMBER */
    int is_integer;      /* NUMBER written without fraction or exponent */
    int64_t integer;     /* NUMBER when is_integer */
    int boolean;         /* BOOL: 0 or 1 */
} ql_config_value_t;

/** Called once per member; returns 0 to go on, or a negative QL_E* after writing one line
 *  into err[errlen] (the caller adds the file name). */
typedef int (*ql_config_member_fn)(void *ud, const char *key, const ql_config_value_t *v, char *err,
                                   size_t errlen);

/** Reads the JSON file `path`, whose top level must be an object, and calls `fn` for each
 *  member in file order. The whole file is parsed first: when it cannot be read or parsed,
 *  `fn` is never called. On error err[errlen] holds one line starting with the path.
 *  @return 0; QL_EIO (unreadable: the errno text); QL_EINVAL (not JSON: path:line:column,
 *  a duplicate key, or a top level that is not an object); or the first error `fn` returned
 *  (its line, prefixed with "path: "). Thread: any. */
QL_API int ql_config_read_object(const char *path, ql_config_member_fn fn, void *ud, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* QL_CONFIG_H */
