/*
 * server/cmd-inspect.c — `quill inspect --model M`: what a GGUF file holds, for people.
 * Prints the header facts, every metadata key with its type and value (long arrays and
 * strings abbreviated), the hyper-parameters when quill knows the architecture, and the
 * tensor table with totals. Reads through model/gguf.h and model/hparams.h only.
 */
#define QL_LOG_MODULE "inspect"
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "model/gguf.h"
#include "model/hparams.h"
#include "server/cmd.h"

/* How much of a value is shown: elements of an array (at every depth) and characters of a
 * string. The type line always gives the full length. */
#define SHOW_ELEMS 6
#define SHOW_CHARS 72
/* Longest key or tensor name shown in full. */
#define NAME_CHARS 64

static void print_scalar(FILE *f, const ql_gguf_value_t *v) {
    char esc[SHOW_CHARS * 4 + 8];
    const void *p = v->data;
    switch (v->type) {
    case QL_GGUF_TYPE_STRING:
        fprintf(f, "\"%s\"", ql_gguf_str_escape(v->str, SHOW_CHARS, esc, sizeof(esc)));
        return;
    case QL_GGUF_TYPE_BOOL:
        fprintf(f, "%s", *(const uint8_t *)p ? "true" : "false");
        return;
    case QL_GGUF_TYPE_UINT64: {
        uint64_t u;
        memcpy(&u, p, 8);
        fprintf(f, "%" PRIu64, u);
        return;
    }
    case QL_GGUF_TYPE_FLOAT32:
    case QL_GGUF_TYPE_FLOAT64: {
        double d = 0;
        ql_gguf_value_f64(v, &d);
        fprintf(f, "%.9g", d);
        return;
    }
    default: {
        int64_t i = 0;
        ql_gguf_value_i64(v, &i);
        fprintf(f, "%" PRId64, i);
        return;
    }
    }
}

static void print_value(FILE *f, ql_gguf_value_t *v) {
    if (v->type != QL_GGUF_TYPE_ARRAY) {
        print_scalar(f, v);
        return;
    }
    fputc('[', f);
    uint64_t n = QL_MIN(v->arr_len, (uint64_t)SHOW_ELEMS);
    for (uint64_t j = 0; j < n; j++) {
        ql_gguf_value_t e;
        if (ql_gguf_value_elem(v, j, &e) != 0) break;
        if (j) fputs(", ", f);
        print_value(f, &e);
    }
    if (v->arr_len > n) fprintf(f, ", ... %" PRIu64 " more", v->arr_len - n);
    fputc(']', f);
}

/* "u32", "string", "array[i32; 49152]", "array[array; 3]" */
static const char *type_desc(const ql_gguf_value_t *v, char *buf, size_t n) {
    const char *t = ql_gguf_type_name(v->type);
    if (v->type != QL_GGUF_TYPE_ARRAY) return t ? t : "?";
    const char *e = ql_gguf_type_name(v->arr_type);
    snprintf(buf, n, "array[%s; %" PRIu64 "]", e ? e : "?", v->arr_len);
    return buf;
}

static void print_metadata(const ql_gguf_t *g) {
    int64_t n_kv = ql_gguf_n_kv(g);
    printf("\nmetadata: %" PRId64 " keys\n", n_kv);
    for (int64_t i = 0; i < n_kv; i++) {
        char key[NAME_CHARS * 4 + 8], tbuf[64];
        ql_gguf_value_t v;
        if (ql_gguf_kv_value(g, i, &v) != 0) continue;
        ql_gguf_str_escape(ql_gguf_key(g, i), NAME_CHARS, key, sizeof(key));
        printf("  %-44s %-20s ", key, type_desc(&v, tbuf, sizeof(tbuf)));
        print_value(stdout, &v);
        putchar('\n');
    }
}

static void print_hparams(const ql_gguf_t *g) {
    char err[512], sum[QL_HPARAMS_SUMMARY_MAX];
    ql_hparams_t hp;
    printf("\nhyper-parameters:\n");
    if (ql_hparams_read(g, &hp, err, sizeof(err)) != 0) {
        printf("  not available: %s\n", err);
        return;
    }
    printf("  %s\n", ql_hparams_summary(&hp, sum, sizeof(sum)));
    ql_weights_t w;
    if (ql_weights_init(g, &hp, &w, err, sizeof(err)) != 0) {
        printf("  weights: %s\n", err);
        return;
    }
    printf("  weights: all %u layers present with the expected shapes%s\n", w.n_layer,
           w.output ? "" : " (output tied to token_embd)");
    ql_weights_free(&w);
}

static void print_tensors(const ql_gguf_t *g) {
    int64_t n = ql_gguf_n_tensors(g);
    printf("\ntensors: %" PRId64 "\n", n);
    if (n == 0) return;
    int width = 4;
    for (int64_t i = 0; i < n; i++) {
        uint64_t len = ql_gguf_tensor(g, i)->name.len;
        width = QL_MAX(width, (int)QL_MIN(len, (uint64_t)NAME_CHARS + 3));
    }
    printf("  %5s  %-*s  %-6s  %-24s  %12s  %12s\n", "#", width, "name", "type", "shape", "file offset", "bytes");
    uint64_t bytes = 0;
    int64_t params = 0;
    for (int64_t i = 0; i < n; i++) {
        const ql_gguf_tensor_t *t = ql_gguf_tensor(g, i);
        char name[NAME_CHARS * 4 + 8], shape[96];
        int k = snprintf(shape, sizeof(shape), "[%" PRId64, t->ne[0]);
        for (int d = 1; d < t->n_dims && k > 0 && (size_t)k < sizeof(shape); d++)
            k += snprintf(shape + k, sizeof(shape) - (size_t)k, ", %" PRId64, t->ne[d]);
        if (k > 0 && (size_t)k < sizeof(shape)) snprintf(shape + k, sizeof(shape) - (size_t)k, "]");
        const char *tn = ql_dtype_name(t->type);
        printf("  %5" PRId64 "  %-*s  %-6s  %-24s  %12" PRIu64 "  %12" PRIu64 "\n", i, width,
               ql_gguf_str_escape(t->name, NAME_CHARS, name, sizeof(name)), tn ? tn : "?", shape,
               ql_gguf_data_offset(g) + t->offset, t->size);
        /* NOTE(totals): each size was checked to lie inside the file, so neither sum can wrap */
        bytes += t->size;
        params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    printf("  total: %" PRId64 " tensors, %" PRIu64 " bytes (%.1f MiB), %" PRId64 " parameters (%.1f M)\n", n,
           bytes, (double)bytes / (1024.0 * 1024.0), params, (double)params / 1e6);
}

int ql_cmd_inspect(const ql_config_t *cfg) {
    if (!cfg->model || !cfg->model[0]) {
        fprintf(stderr, "quill inspect: --model PATH is required (the GGUF file to inspect)\n");
        return QL_EXIT_USAGE;
    }
    char err[512];
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(cfg->model, &g, err, sizeof(err)) != 0) {
        fprintf(stderr, "quill inspect: %s\n", err);
        return QL_EXIT_FAIL;
    }
    printf("file: %s (%" PRIu64 " bytes)\n", cfg->model, ql_gguf_file_size(g));
    printf("gguf: version %u, alignment %" PRIu64 ", data section at offset %" PRIu64 "\n", ql_gguf_version(g),
           ql_gguf_alignment(g), ql_gguf_data_offset(g));
    print_metadata(g);
    print_hparams(g);
    print_tensors(g);
    ql_gguf_free(g);
    return QL_EXIT_OK;
}
