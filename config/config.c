/*
 * config/config.c — the option table and the four layers that fill ql_config_t:
 * defaults < JSON config file < QUILL_* environment < flags. See config/config.h.
 */
#define QL_LOG_MODULE "config"
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the option table ---- */

typedef enum opt_type_e {
    OPT_STR,
    OPT_INT,
    OPT_INT64,
    OPT_FLOAT,
    OPT_BOOL,
    OPT_SIZE,
    OPT_ENUM,
    OPT_STRLIST,
} opt_type_t;

/* flags */
#define OPT_F_NOENV 1u /* not read from the environment or the config file (per-invocation) */

#define CMD_ALL (QL_CMD_SERVE | QL_CMD_RUN | QL_CMD_BENCH | QL_CMD_TOKENIZE | QL_CMD_INSPECT | QL_CMD_MKMODEL)
#define CMD_ENGINE (QL_CMD_SERVE | QL_CMD_RUN)
#define CMD_MODEL (QL_CMD_SERVE | QL_CMD_RUN | QL_CMD_TOKENIZE | QL_CMD_INSPECT)
#define CMD_SAMPLE (QL_CMD_RUN)

typedef struct opt_s {
    const char *name;     /* flag without "--"; JSON key; env QUILL_<NAME> */
    char short_name;      /* 0 = none */
    opt_type_t type;
    size_t offset;        /* into ql_config_t */
    double min, max;      /* numeric range (inclusive) */
    const char *enums;    /* OPT_ENUM: "a|b|c", the index is stored */
    const char *def;      /* default, as text (parsed by the same code as user input) */
    unsigned cmds;        /* ql_cmd_t bits */
    unsigned flags;
    const char *metavar;
    const char *help;
} opt_t;

#define OFF(f) offsetof(ql_config_t, f)
#define I32 2147483647.0

static const opt_t k_opts[] = {
    /* common */
    {"config", 0, OPT_STR, OFF(config_path), 0, 0, NULL, NULL, CMD_ALL & ~QL_CMD_MKMODEL, OPT_F_NOENV, "FILE",
     "JSON config file: an object whose keys are flag names (dashes or underscores)"},
    {"log-level", 0, OPT_ENUM, OFF(log_level), 0, 0, "error|warn|info|debug", "info", CMD_ALL, 0, "LEVEL",
     "log verbosity (stderr)"},
    {"model", 'm', OPT_STR, OFF(model), 0, 0, NULL, NULL, CMD_MODEL, 0, "PATH",
     "GGUF model file"},
    {"threads", 't', OPT_INT, OFF(threads), 0, 1024, NULL, "0", CMD_ENGINE, 0, "N",
     "CPU threads for the forward pass; 0 = all online cores"},
    {"backend", 0, OPT_ENUM, OFF(backend), 0, 0, "auto|cpu|cuda", "auto", CMD_ENGINE, 0, "NAME",
     "compute backend; auto = cuda when a device is present, else cpu"},
    {"chat-template", 0, OPT_STR, OFF(chat_template), 0, 0, NULL, "auto", CMD_ENGINE | QL_CMD_TOKENIZE, 0, "NAME",
     "chat template: auto (recognised from the model), chatml, llama3, llama2, mistral"},

    /* server */
    {"host", 0, OPT_STR, OFF(host), 0, 0, NULL, "127.0.0.1", QL_CMD_SERVE, 0, "ADDR",
     "address to listen on"},
    {"port", 0, OPT_INT, OFF(port), 0, 65535, NULL, "8000", QL_CMD_SERVE, 0, "PORT",
     "TCP port to listen on; 0 = a free port the system picks (logged at start-up)"},
    {"api-key", 0, OPT_STRLIST, OFF(api_keys), 0, 0, NULL, NULL, QL_CMD_SERVE, 0, "KEY",
     "accepted bearer token; repeat the flag or separate with commas; none = no auth"},
    {"served-model-name", 0, OPT_STR, OFF(served_model_name), 0, 0, NULL, NULL, QL_CMD_SERVE, 0, "NAME",
     "model id in the API; default: the model file's name"},
    {"max-connections", 0, OPT_INT, OFF(max_connections), 1, 1000000, NULL, "1024", QL_CMD_SERVE, 0, "N",
     "open client connections at most"},
    {"max-request-bytes", 0, OPT_SIZE, OFF(max_request_bytes), 1024, 1073741824.0, NULL, "4M", QL_CMD_SERVE, 0, "SIZE",
     "largest request body accepted (413 above)"},
    {"max-queue", 0, OPT_INT, OFF(max_queue), 1, 1000000, NULL, "1024", QL_CMD_SERVE, 0, "N",
     "requests waiting for the engine at most (429 above)"},
    {"max-n", 0, OPT_INT, OFF(max_n), 1, 128, NULL, "16", QL_CMD_SERVE, 0, "N",
     "largest `n` (choices per request)"},
    {"request-timeout", 0, OPT_INT, OFF(request_timeout_s), 0, 86400, NULL, "600", QL_CMD_SERVE | QL_CMD_BENCH, 0, "SECONDS",
     "longest a request may run; 0 = no limit"},
    {"idle-timeout", 0, OPT_INT, OFF(idle_timeout_s), 1, 86400, NULL, "60", QL_CMD_SERVE, 0, "SECONDS",
     "close an idle keep-alive connection after this"},
    {"shutdown-timeout", 0, OPT_INT, OFF(shutdown_timeout_s), 0, 3600, NULL, "30", QL_CMD_SERVE, 0, "SECONDS",
     "on SIGTERM, how long in-flight requests may finish"},
    {"header-timeout", 0, OPT_INT, OFF(header_timeout_s), 1, 3600, NULL, "10", QL_CMD_SERVE, 0, "SECONDS",
     "a request's line and headers must arrive within this (408 after)"},
    {"body-timeout", 0, OPT_INT, OFF(body_timeout_s), 1, 3600, NULL, "60", QL_CMD_SERVE, 0, "SECONDS",
     "a request's body must arrive within this once its headers are in (408 after)"},
    {"max-request-line-bytes", 0, OPT_SIZE, OFF(max_request_line_bytes), 256, 1048576.0, NULL, "8K", QL_CMD_SERVE, 0,
     "SIZE", "longest request target (the URL) accepted (431 above)"},
    {"max-header-bytes", 0, OPT_SIZE, OFF(max_header_bytes), 1024, 16777216.0, NULL, "16K", QL_CMD_SERVE, 0, "SIZE",
     "largest request line + headers accepted (431 above)"},
    {"max-headers", 0, OPT_INT, OFF(max_headers), 1, 10000, NULL, "64", QL_CMD_SERVE, 0, "N",
     "header fields in one request at most (431 above)"},
    {"max-output-bytes", 0, OPT_SIZE, OFF(max_output_bytes), 4096, 1073741824.0, NULL, "4M", QL_CMD_SERVE, 0, "SIZE",
     "output queued for one connection at most: a client that stops reading is cut off past it"},
    {"cors-origins", 0, OPT_STRLIST, OFF(cors_origins), 0, 0, NULL, NULL, QL_CMD_SERVE, 0, "ORIGIN",
     "browser origins allowed by CORS (e.g. https://app.example), or *; none = no CORS headers"},

    /* engine */
    {"kv-cache-mem", 0, OPT_SIZE, OFF(kv_cache_bytes), 1048576.0, 1099511627776.0, NULL, "1G", CMD_ENGINE, 0, "SIZE",
     "CPU backend: memory for the paged KV cache"},
    {"gpu-memory-utilization", 0, OPT_FLOAT, OFF(gpu_memory_utilization), 0.05, 0.99, NULL, "0.9", CMD_ENGINE, 0, "FRAC",
     "CUDA backend: fraction of device memory for weights, activations and KV cache"},
    {"block-size", 0, OPT_ENUM, OFF(block_size), 0, 0, "8|16|32|64|128", "16", CMD_ENGINE, 0, "N",
     "tokens per KV cache block"},
    {"max-num-seqs", 0, OPT_INT, OFF(max_num_seqs), 1, 4096, NULL, "64", CMD_ENGINE, 0, "N",
     "sequences in one batch at most"},
    {"max-batched-tokens", 0, OPT_INT, OFF(max_batched_tokens), 1, 1048576, NULL, "512", CMD_ENGINE, 0, "N",
     "tokens in one engine step at most (prefill chunks + decodes)"},
    {"max-model-len", 0, OPT_INT, OFF(max_model_len), 0, 1048576, NULL, "0", CMD_ENGINE, 0, "N",
     "context length (prompt + output); 0 = the model's own"},
    {"no-prefix-cache", 0, OPT_BOOL, OFF(no_prefix_cache), 0, 0, NULL, "false", CMD_ENGINE, 0, NULL,
     "disable reuse of cached prompt prefixes"},

    /* speculative decoding */
    {"spec-method", 0, OPT_ENUM, OFF(spec_method), 0, 0, "none|draft|ngram|layerskip", "none", CMD_ENGINE, 0, "NAME",
     "speculative decoding drafter (draft needs --draft-model)"},
    {"draft-model", 0, OPT_STR, OFF(draft_model), 0, 0, NULL, NULL, CMD_ENGINE, 0, "PATH",
     "GGUF draft model for --spec-method draft (same vocabulary as the target)"},
    {"num-speculative-tokens", 0, OPT_INT, OFF(num_speculative_tokens), 1, 16, NULL, "4", CMD_ENGINE, 0, "K",
     "tokens drafted per step at most"},
    {"spec-layers", 0, OPT_INT, OFF(spec_layers), 1, 1024, NULL, "4", CMD_ENGINE, 0, "L",
     "layerskip: the draft runs the target's first L layers"},
    {"spec-ngram-max", 0, OPT_INT, OFF(spec_ngram_max), 1, 16, NULL, "3", CMD_ENGINE, 0, "N",
     "ngram: longest n-gram looked up in the sequence"},
    {"spec-fixed-k", 0, OPT_BOOL, OFF(spec_fixed_k), 0, 0, NULL, "false", CMD_ENGINE, 0, NULL,
     "always draft --num-speculative-tokens (no adaptation to load and acceptance)"},

    /* run / tokenize */
    {"prompt", 'p', OPT_STR, OFF(prompt), 0, 0, NULL, NULL, QL_CMD_RUN, OPT_F_NOENV, "TEXT",
     "the prompt"},
    {"n-predict", 'n', OPT_INT, OFF(n_predict), -1, 1048576, NULL, "128", QL_CMD_RUN, OPT_F_NOENV, "N",
     "tokens to generate at most; -1 = until EOS or the context is full"},
    {"chat", 0, OPT_BOOL, OFF(chat), 0, 0, NULL, "false", QL_CMD_RUN | QL_CMD_TOKENIZE, OPT_F_NOENV, NULL,
     "wrap the prompt as one user message in the model's chat template"},
    {"verbose", 'v', OPT_BOOL, OFF(verbose), 0, 0, NULL, "false", QL_CMD_TOKENIZE, OPT_F_NOENV, NULL,
     "print each token's piece next to its id"},
    {"temperature", 0, OPT_FLOAT, OFF(temperature), 0, 100, NULL, "0", CMD_SAMPLE, OPT_F_NOENV, "T",
     "sampling temperature; 0 = greedy"},
    {"top-k", 0, OPT_INT, OFF(top_k), 0, I32, NULL, "0", CMD_SAMPLE, OPT_F_NOENV, "K",
     "keep the K most likely tokens; 0 = all"},
    {"top-p", 0, OPT_FLOAT, OFF(top_p), 0, 1, NULL, "1", CMD_SAMPLE, OPT_F_NOENV, "P",
     "nucleus sampling mass"},
    {"min-p", 0, OPT_FLOAT, OFF(min_p), 0, 1, NULL, "0", CMD_SAMPLE, OPT_F_NOENV, "P",
     "drop tokens below P times the top probability"},
    {"repeat-penalty", 0, OPT_FLOAT, OFF(repeat_penalty), 0.01, 100, NULL, "1", CMD_SAMPLE, OPT_F_NOENV, "X",
     "repetition penalty; 1 = none"},
    {"seed", 0, OPT_INT64, OFF(seed), -1, 9007199254740991.0, NULL, "-1", CMD_SAMPLE | QL_CMD_MKMODEL | QL_CMD_BENCH, OPT_F_NOENV, "S",
     "random seed; -1 = from the clock (run), 0 for mkmodel"},
    {"ignore-eos", 0, OPT_BOOL, OFF(ignore_eos), 0, 0, NULL, "false", CMD_SAMPLE, OPT_F_NOENV, NULL,
     "keep generating after the end-of-sequence token"},

    /* bench */
    {"base-url", 0, OPT_STR, OFF(bench_base_url), 0, 0, NULL, "http://127.0.0.1:8000", QL_CMD_BENCH, 0, "URL",
     "the OpenAI-compatible server to load: http://HOST[:PORT][/PREFIX]"},
    {"endpoint", 0, OPT_ENUM, OFF(bench_chat), 0, 0, "/v1/completions|/v1/chat/completions", "/v1/completions",
     QL_CMD_BENCH, 0, "PATH", "the streamed endpoint requests go to"},
    {"model", 'm', OPT_STR, OFF(bench_model), 0, 0, NULL, NULL, QL_CMD_BENCH, OPT_F_NOENV, "NAME",
     "model id sent in the requests; default: the first id of the server's /v1/models"},
    {"api-key", 0, OPT_STR, OFF(bench_api_key), 0, 0, NULL, NULL, QL_CMD_BENCH, OPT_F_NOENV, "KEY",
     "bearer token sent with every request"},
    {"input-len", 0, OPT_INT, OFF(bench_input_len), 1, 1048576, NULL, "256", QL_CMD_BENCH, 0, "N",
     "prompt tokens per request (random token ids)"},
    {"output-len", 0, OPT_INT, OFF(bench_output_len), 1, 1048576, NULL, "128", QL_CMD_BENCH, 0, "N",
     "tokens generated per request (max_tokens, with ignore_eos)"},
    {"num-prompts", 0, OPT_INT, OFF(bench_num_prompts), 1, 1000000, NULL, "100", QL_CMD_BENCH, 0, "N",
     "measured requests"},
    {"request-rate", 0, OPT_FLOAT, OFF(bench_request_rate), 0, 1e9, NULL, "0", QL_CMD_BENCH, 0, "RPS",
     "mean arrival rate (requests/s, Poisson or gamma); 0 = all at once"},
    {"burstiness", 0, OPT_FLOAT, OFF(bench_burstiness), 0.001, 1000, NULL, "1", QL_CMD_BENCH, 0, "B",
     "gamma shape of the arrival gaps: 1 = Poisson, < 1 burstier, > 1 more even"},
    {"max-concurrency", 0, OPT_INT, OFF(bench_max_concurrency), 0, 1000000, NULL, "0", QL_CMD_BENCH, 0, "N",
     "requests in flight at most; 0 = no limit"},
    {"warmup", 0, OPT_INT, OFF(bench_warmup), 0, 100000, NULL, "1", QL_CMD_BENCH, 0, "N",
     "unmeasured requests of the same shape sent first"},
    {"slo-ttft", 0, OPT_FLOAT, OFF(bench_slo_ttft_ms), 0, 1e9, NULL, "0", QL_CMD_BENCH, 0, "MS",
     "goodput: a good request's TTFT at most this; 0 = no bound"},
    {"slo-tpot", 0, OPT_FLOAT, OFF(bench_slo_tpot_ms), 0, 1e9, NULL, "0", QL_CMD_BENCH, 0, "MS",
     "goodput: a good request's TPOT at most this; 0 = no bound"},
    {"out", 0, OPT_STR, OFF(bench_out), 0, 0, NULL, NULL, QL_CMD_BENCH, OPT_F_NOENV, "FILE",
     "write the results and every request's timestamps as JSON"},

    /* mkmodel */
    {"shape", 0, OPT_STR, OFF(shape), 0, 0, NULL, NULL, QL_CMD_MKMODEL, OPT_F_NOENV, "NAME",
     "named shape: tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b"},
    {"config", 0, OPT_STR, OFF(shape_config), 0, 0, NULL, NULL, QL_CMD_MKMODEL, OPT_F_NOENV, "FILE",
     "JSON shape file instead of --shape"},
    {"output", 'o', OPT_STR, OFF(output), 0, 0, NULL, NULL, QL_CMD_MKMODEL, OPT_F_NOENV, "PATH",
     "GGUF file to write"},
    {"type", 0, OPT_STR, OFF(wtype), 0, 0, NULL, "f16", QL_CMD_MKMODEL, OPT_F_NOENV, "TYPE",
     "weight type of the linear layers: f32, f16, q8_0, q4_0, q4_1, ..."},
};

static const char *const k_cmd_names[] = {"serve", "run", "bench", "tokenize", "inspect", "mkmodel"};

const char *ql_cmd_name(ql_cmd_t cmd) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_cmd_names); i++)
        if ((unsigned)cmd == (1u << i)) return k_cmd_names[i];
    return NULL;
}

int ql_cmd_parse(const char *name, ql_cmd_t *out) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_cmd_names); i++) {
        if (strcmp(name, k_cmd_names[i]) == 0) {
            *out = (ql_cmd_t)(1u << i);
            return 0;
        }
    }
    return QL_EINVAL;
}

/* ---- errors ---- */

static int fail(char *err, size_t errlen, int status, const char *fmt, ...) QL_PRINTF(4, 5);
static int fail(char *err, size_t errlen, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ql_verrf(err, errlen, fmt, ap);
    va_end(ap);
    return status;
}

/* ---- value parsing (shared by defaults, file, env and flags) ---- */

int ql_config_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s) return QL_EINVAL;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0) return QL_EINVAL;
    while (*end == ' ') end++;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'B': end++; break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return QL_EINVAL;
    }
    if (mul > 1) {
        if (strcasecmp(end, "iB") == 0 || strcasecmp(end, "B") == 0) end += strlen(end);
    }
    if (*end) return QL_EINVAL;
    v *= mul;
    if (v > 18446744073709549568.0) return QL_EINVAL;
    *out = (uint64_t)v;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
    }
    return QL_EINVAL;
}

/* Index of `s` in "a|b|c", or -1. */
static int enum_index(const char *enums, const char *s) {
    int idx = 0;
    const char *p = enums;
    size_t n = strlen(s);
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncasecmp(p, s, n) == 0) return idx;
        if (!bar) break;
        p = bar + 1;
        idx++;
    }
    return -1;
}

static void strlist_clear(ql_strlist_t *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void strlist_push(ql_strlist_t *l, const char *s, size_t n) {
    l->v = ql_xrealloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
    l->v[l->n++] = ql_xstrndup(s, n);
}

/* Range text for messages and --help. */
static void range_text(const opt_t *o, char *buf, size_t len) {
    switch (o->type) {
    case OPT_INT:
    case OPT_INT64:
        snprintf(buf, len, "an integer in %.0f..%.0f", o->min, o->max);
        break;
    case OPT_FLOAT: snprintf(buf, len, "a number in %g..%g", o->min, o->max); break;
    case OPT_SIZE:
        snprintf(buf, len, "a size in %.0f..%.0f bytes (suffix K, M, G, T)", o->min, o->max);
        break;
    case OPT_BOOL: snprintf(buf, len, "true or false"); break;
    case OPT_ENUM: snprintf(buf, len, "one of %s", o->enums); break;
    default: snprintf(buf, len, "a string"); break;
    }
}

/* Parses `val` into the field of `o`. `who` names the source for the message
 * ("--port", "QUILL_PORT", "config.json: key \"port\""). `fresh` means the first value
 * this layer gives a list option: earlier layers' values are dropped. */
static int set_value(ql_config_t *c, const opt_t *o, const char *val, const char *who, int fresh,
                     char *err, size_t errlen) {
    void *field = (char *)c + o->offset;
    char range[160];
    range_text(o, range, sizeof(range));
    if (!val) return fail(err, errlen, QL_EINVAL, "%s: missing value (expected %s)", who, range);

    switch (o->type) {
    case OPT_STR: {
        char **p = field;
        if (!*val && o->offset != OFF(prompt))
            return fail(err, errlen, QL_EINVAL, "%s: empty value (expected %s)", who, o->metavar ? o->metavar : "a string");
        free(*p);
        *p = ql_xstrdup(val);
        return 0;
    }
    case OPT_INT:
    case OPT_INT64: {
        errno = 0;
        char *end;
        long long v = strtoll(val, &end, 10);
        if (end == val || *end || errno)
            return fail(err, errlen, QL_EINVAL, "%s: '%s' is not an integer (expected %s)", who, val, range);
        if ((double)v < o->min || (double)v > o->max)
            return fail(err, errlen, QL_EINVAL, "%s: %s is out of range (expected %s)", who, val, range);
        if (o->type == OPT_INT) *(int *)field = (int)v;
        else *(int64_t *)field = (int64_t)v;
        return 0;
    }
    case OPT_FLOAT: {
        errno = 0;
        char *end;
        double v = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(v))
            return fail(err, errlen, QL_EINVAL, "%s: '%s' is not a number (expected %s)", who, val, range);
        if (v < o->min || v > o->max)
            return fail(err, errlen, QL_EINVAL, "%s: %s is out of range (expected %s)", who, val, range);
        *(double *)field = v;
        return 0;
    }
    case OPT_BOOL: {
        int b;
        if (parse_bool(val, &b) != 0)
            return fail(err, errlen, QL_EINVAL, "%s: '%s' is not a boolean (expected %s)", who, val, range);
        *(int *)field = b;
        return 0;
    }
    case OPT_SIZE: {
        uint64_t v;
        if (ql_config_parse_size(val, &v) != 0)
            return fail(err, errlen, QL_EINVAL, "%s: '%s' is not a size (expected %s)", who, val, range);
        if ((double)v < o->min || (double)v > o->max)
            return fail(err, errlen, QL_EINVAL, "%s: %s is out of range (expected %s)", who, val, range);
        *(uint64_t *)field = v;
        return 0;
    }
    case OPT_ENUM: {
        int idx = enum_index(o->enums, val);
        if (idx < 0)
            return fail(err, errlen, QL_EINVAL, "%s: '%s' is not accepted (expected %s)", who, val, range);
        /* numeric enums (block size) store the number itself */
        if (isdigit((unsigned char)o->enums[0])) *(int *)field = atoi(val);
        else *(int *)field = idx;
        return 0;
    }
    case OPT_STRLIST: {
        ql_strlist_t *l = field;
        if (fresh) strlist_clear(l);
        const char *p = val;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            if (n == 0)
                return fail(err, errlen, QL_EINVAL, "%s: empty entry in '%s' (expected non-empty, comma-separated values)", who, val);
            strlist_push(l, p, n);
            if (!comma) break;
            p = comma + 1;
        }
        return 0;
    }
    }
    return fail(err, errlen, QL_EINTERNAL, "%s: internal error", who);
}

/* ---- lookup ---- */

static const opt_t *find_long(const char *name, size_t len, ql_cmd_t cmd) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++) {
        const opt_t *o = &k_opts[i];
        if ((o->cmds & cmd) && strlen(o->name) == len && strncmp(o->name, name, len) == 0) return o;
    }
    return NULL;
}

static const opt_t *find_short(char c, ql_cmd_t cmd) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++)
        if ((k_opts[i].cmds & cmd) && k_opts[i].short_name == c) return &k_opts[i];
    return NULL;
}

/* JSON/env keys: the flag name with '_' for '-', compared case-insensitively for env. */
static const opt_t *find_key(const char *key, ql_cmd_t cmd) {
    char norm[64];
    size_t n = strlen(key);
    if (n >= sizeof(norm)) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = key[i] == '_' ? '-' : (char)tolower((unsigned char)key[i]);
    const opt_t *o = find_long(norm, n, cmd);
    if (o && (o->flags & OPT_F_NOENV)) return NULL;
    return o;
}

/* ---- layers ---- */

void ql_config_defaults(ql_config_t *c) {
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++) {
        const opt_t *o = &k_opts[i];
        if (!o->def) continue;
        char err[256];
        /* NOTE(defaults): defaults go through the same parser as user input, so a default
         * outside its own range is caught by the unit tests, not shipped. */
        int rc = set_value(c, o, o->def, o->name, 1, err, sizeof(err));
        QL_ASSERT(rc == 0);
    }
}

void ql_config_free(ql_config_t *c) {
    if (!c) return;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++) {
        const opt_t *o = &k_opts[i];
        void *field = (char *)c + o->offset;
        if (o->type == OPT_STR) {
            free(*(char **)field);
            *(char **)field = NULL;
        } else if (o->type == OPT_STRLIST) {
            strlist_clear(field);
        }
    }
}

static int load_file(ql_config_t *c, ql_cmd_t cmd, const char *path, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line <= 0)
            return fail(err, errlen, QL_EIO, "--config: cannot read %s: %s", path, jerr.text);
        return fail(err, errlen, QL_EINVAL, "--config: %s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = fail(err, errlen, QL_EINVAL, "--config: %s: the top level must be a JSON object", path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        char who[256];
        snprintf(who, sizeof(who), "%s: key \"%s\"", path, key);
        const opt_t *o = find_key(key, cmd);
        if (!o) {
            /* a key of another subcommand is fine; an unknown key is a typo worth refusing */
            int known = 0;
            for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++) {
                char norm[64];
                size_t n = strlen(key);
                if (n >= sizeof(norm)) break;
                for (size_t j = 0; j <= n; j++) norm[j] = key[j] == '_' ? '-' : key[j];
                if (strcmp(k_opts[i].name, norm) == 0 && !(k_opts[i].flags & OPT_F_NOENV)) known = 1;
            }
            if (known) continue;
            rc = fail(err, errlen, QL_EINVAL, "%s: unknown key (see quill %s --help)", who, ql_cmd_name(cmd));
            goto done;
        }
        char buf[64];
        const char *text = NULL;
        if (json_is_string(val)) {
            text = json_string_value(val);
        } else if (json_is_integer(val)) {
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(val));
            text = buf;
        } else if (json_is_real(val)) {
            snprintf(buf, sizeof(buf), "%.17g", json_real_value(val));
            text = buf;
        } else if (json_is_boolean(val)) {
            text = json_is_true(val) ? "true" : "false";
        } else if (json_is_array(val) && o->type == OPT_STRLIST) {
            size_t i;
            json_t *item;
            strlist_clear((ql_strlist_t *)((char *)c + o->offset));
            json_array_foreach(val, i, item) {
                if (!json_is_string(item) || !*json_string_value(item)) {
                    rc = fail(err, errlen, QL_EINVAL, "%s: entry %zu must be a non-empty string", who, i);
                    goto done;
                }
                if ((rc = set_value(c, o, json_string_value(item), who, 0, err, errlen)) != 0) goto done;
            }
            continue;
        } else {
            char range[160];
            range_text(o, range, sizeof(range));
            rc = fail(err, errlen, QL_EINVAL, "%s: wrong JSON type (expected %s)", who, range);
            goto done;
        }
        if ((o->type == OPT_STR || o->type == OPT_STRLIST) && !json_is_string(val)) {
            rc = fail(err, errlen, QL_EINVAL, "%s: wrong JSON type (expected a string)", who);
            goto done;
        }
        if ((rc = set_value(c, o, text, who, 1, err, errlen)) != 0) goto done;
    }
done:
    json_decref(root);
    return rc;
}

static int load_env(ql_config_t *c, ql_cmd_t cmd, char **envp, char *err, size_t errlen) {
    if (!envp) return 0;
    for (char **e = envp; *e; e++) {
        if (strncmp(*e, "QUILL_", 6) != 0) continue;
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        char key[64];
        size_t n = (size_t)(eq - *e);
        if (n >= sizeof(key)) continue;
        memcpy(key, *e, n);
        key[n] = '\0';
        if (strcmp(key, "QUILL_CONFIG") == 0) continue; /* handled before the file layer */
        /* NOTE(env-unknown): unknown QUILL_* variables are ignored: deployment tooling sets
         * its own (QUILL_HOME, ...), and another subcommand's knobs are no error here. */
        const opt_t *o = find_key(key + 6, cmd);
        if (!o) continue;
        int rc = set_value(c, o, eq + 1, key, 1, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static int is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

/* Pass 1: find --help and --config among the flags without applying anything else. */
static int scan_flags(ql_cmd_t cmd, int argc, char **argv, const char **config_path, char *err,
                      size_t errlen) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) break;
        if (is_help(a)) return QL_CONFIG_HELP;
        if (cmd == QL_CMD_MKMODEL) continue; /* mkmodel's --config is a shape file */
        if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) return fail(err, errlen, QL_EINVAL, "--config: missing value (expected FILE)");
            *config_path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            *config_path = a + 9;
        }
    }
    return 0;
}

static int load_flags(ql_config_t *c, ql_cmd_t cmd, int argc, char **argv, char *err, size_t errlen) {
    unsigned char seen[QL_ARRAY_LEN(k_opts)] = {0};
    int only_positional = 0;
    c->args = NULL;
    c->n_args = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (!(cmd & (QL_CMD_TOKENIZE | QL_CMD_RUN)))
                return fail(err, errlen, QL_EINVAL, "unexpected argument '%s' (see quill %s --help)", a, ql_cmd_name(cmd));
            if (!c->args) c->args = &argv[i];
            /* positionals are kept contiguous: they must follow the flags */
            if (&argv[i] != c->args + c->n_args)
                return fail(err, errlen, QL_EINVAL, "'%s': put flags before the text arguments (or after --)", a);
            c->n_args++;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = 1;
            if (i + 1 < argc) c->args = &argv[i + 1];
            continue;
        }
        const opt_t *o = NULL;
        const char *val = NULL;
        char who[80];
        int negated = 0;
        if (a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(name, len, cmd);
            if (!o && len > 3 && strncmp(name, "no-", 3) == 0) {
                const opt_t *pos = find_long(name + 3, len - 3, cmd);
                if (pos && pos->type == OPT_BOOL) o = pos, negated = 1;
            }
            if (!o)
                return fail(err, errlen, QL_EINVAL, "unknown flag '--%.*s' for quill %s (see quill %s --help)",
                            (int)len, name, ql_cmd_name(cmd), ql_cmd_name(cmd));
            snprintf(who, sizeof(who), "--%.*s", (int)len, name);
            if (eq) val = eq + 1;
        } else {
            o = find_short(a[1], cmd);
            if (!o || a[2] != '\0')
                return fail(err, errlen, QL_EINVAL, "unknown flag '%s' for quill %s (see quill %s --help)",
                            a, ql_cmd_name(cmd), ql_cmd_name(cmd));
            snprintf(who, sizeof(who), "-%c", a[1]);
        }
        if (o->type == OPT_BOOL && !val) {
            val = negated ? "false" : "true";
        } else if (negated) {
            return fail(err, errlen, QL_EINVAL, "%s takes no value", who);
        } else if (!val) {
            if (i + 1 >= argc) return set_value(c, o, NULL, who, 1, err, errlen);
            val = argv[++i];
        }
        size_t idx = (size_t)(o - k_opts);
        int rc = set_value(c, o, val, who, !seen[idx], err, errlen);
        seen[idx] = 1;
        if (rc) return rc;
    }
    return 0;
}

int ql_config_load(ql_config_t *c, ql_cmd_t cmd, int argc, char **argv, char **envp, char *err,
                   size_t errlen) {
    if (!c || (argc > 0 && !argv) || !ql_cmd_name(cmd)) return QL_EINVAL;
    if (err && errlen) err[0] = '\0';
    const char *config_path = NULL;
    int rc = scan_flags(cmd, argc, argv, &config_path, err, errlen);
    if (rc) return rc;
    if (!config_path && envp && cmd != QL_CMD_MKMODEL) {
        for (char **e = envp; *e; e++)
            if (strncmp(*e, "QUILL_CONFIG=", 13) == 0) config_path = *e + 13;
    }
    if (config_path) {
        if (!*config_path) return fail(err, errlen, QL_EINVAL, "--config: empty path");
        free(c->config_path);
        c->config_path = ql_xstrdup(config_path);
        if ((rc = load_file(c, cmd, config_path, err, errlen)) != 0) return rc;
    }
    if ((rc = load_env(c, cmd, envp, err, errlen)) != 0) return rc;
    if ((rc = load_flags(c, cmd, argc, argv, err, errlen)) != 0) return rc;
    ql_log_set_level((ql_log_level_t)c->log_level);
    return 0;
}

/* ---- help ---- */

void ql_config_print_help(FILE *f, ql_cmd_t cmd) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_opts); i++) {
        const opt_t *o = &k_opts[i];
        if (!(o->cmds & cmd)) continue;
        char flag[96];
        if (o->short_name)
            snprintf(flag, sizeof(flag), "-%c, --%s%s%s", o->short_name, o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            snprintf(flag, sizeof(flag), "    --%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(f, "  %-36s %s\n", flag, o->help);
        char range[160];
        range_text(o, range, sizeof(range));
        fprintf(f, "  %-36s   [%s", "", range);
        if (o->def) fprintf(f, "; default %s", o->def);
        if (!(o->flags & OPT_F_NOENV)) {
            char env[64];
            size_t n = 0;
            for (const char *p = o->name; *p && n + 1 < sizeof(env); p++) env[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
            env[n] = '\0';
            fprintf(f, "; env QUILL_%s", env);
        }
        fprintf(f, "]\n");
    }
    fprintf(f, "  %-36s %s\n", "-h, --help", "show this help");
}

/* ---- flat JSON objects ---- */

int ql_config_read_object(const char *path, ql_config_member_fn fn, void *ud, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!path || !fn) return fail(err, errlen, QL_EINVAL, "ql_config_read_object: NULL path or callback");
    /* NOTE(read-object-errno): the file is opened here rather than by json_load_file so an
     * unreadable file reports errno's text, not jansson's paraphrase of it. */
    FILE *fp = fopen(path, "rb");
    if (!fp) return fail(err, errlen, QL_EIO, "%s: %s", path, strerror(errno));
    json_error_t jerr;
    json_t *root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
    fclose(fp);
    if (!root) return fail(err, errlen, QL_EINVAL, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = fail(err, errlen, QL_EINVAL, "%s: the top level must be a JSON object", path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        ql_config_value_t v = {.kind = QL_CONFIG_VALUE_OTHER};
        if (json_is_string(val)) {
            v.kind = QL_CONFIG_VALUE_STRING;
            v.str = json_string_value(val);
        } else if (json_is_integer(val)) {
            v.kind = QL_CONFIG_VALUE_NUMBER;
            v.is_integer = 1;
            v.integer = (int64_t)json_integer_value(val);
            v.num = (double)v.integer;
        } else if (json_is_real(val)) {
            v.kind = QL_CONFIG_VALUE_NUMBER;
            v.num = json_real_value(val);
        } else if (json_is_boolean(val)) {
            v.kind = QL_CONFIG_VALUE_BOOL;
            v.boolean = json_is_true(val);
        } else if (json_is_null(val)) {
            v.kind = QL_CONFIG_VALUE_NULL;
        }
        char line[400];
        line[0] = '\0';
        rc = fn(ud, key, &v, line, sizeof(line));
        if (rc) {
            if (rc > 0) rc = QL_EINVAL;
            fail(err, errlen, rc, "%s: %s", path, line[0] ? line : ql_strerror(rc));
            goto done;
        }
    }
done:
    json_decref(root);
    return rc;
}
