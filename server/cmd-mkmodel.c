/*
 * server/cmd-mkmodel.c — `quill mkmodel (--shape NAME | --config FILE) [--seed S] [--type T]
 * -o OUT.gguf`: writes a random-weight model (model/mkmodel.h). The shape file is a flat JSON
 * object read by config/ (ql_config_read_object), field by field into the model's shape.
 * Exit 2 for bad usage (unknown shape or type, a bad shape file, no -o), 1 when writing fails.
 */
#define QL_LOG_MODULE "mkmodel"
#include <stdio.h>
#include <string.h>

#include "model/mkmodel.h"
#include "server/cmd.h"

static int shape_member(void *ud, const char *key, const ql_config_value_t *v, char *err, size_t errlen) {
    ql_mkmodel_shape_t *s = ud;
    switch (v->kind) {
    case QL_CONFIG_VALUE_NUMBER: return ql_mkmodel_shape_set_num(s, key, v->num, err, errlen);
    case QL_CONFIG_VALUE_STRING: return ql_mkmodel_shape_set_str(s, key, v->str, err, errlen);
    case QL_CONFIG_VALUE_BOOL: return ql_mkmodel_shape_set_bool(s, key, v->boolean, err, errlen);
    default:
        snprintf(err, errlen, "field '%s' has an unsupported JSON type (numbers, strings and bools only)", key);
        return QL_EINVAL;
    }
}

int ql_cmd_mkmodel(const ql_config_t *cfg) {
    char err[1024];
    ql_mkmodel_params_t p;
    memset(&p, 0, sizeof(p));
    if (!!cfg->shape == !!cfg->shape_config) {
        fprintf(stderr, "quill mkmodel: give exactly one of --shape NAME (%s) or --config FILE\n",
                ql_mkmodel_shape_names());
        return QL_EXIT_USAGE;
    }
    if (!cfg->output || !cfg->output[0]) {
        fprintf(stderr, "quill mkmodel: missing -o/--output OUT.gguf\n");
        return QL_EXIT_USAGE;
    }
    if (ql_mkmodel_type_parse(cfg->wtype, &p.wtype) != 0) {
        fprintf(stderr, "quill mkmodel: unknown --type '%s' (accepted: %s)\n", cfg->wtype ? cfg->wtype : "",
                ql_mkmodel_type_names());
        return QL_EXIT_USAGE;
    }
    if (cfg->shape) {
        if (ql_mkmodel_shape_get(cfg->shape, &p.shape) != 0) {
            fprintf(stderr, "quill mkmodel: unknown shape '%s' (accepted: %s)\n", cfg->shape, ql_mkmodel_shape_names());
            return QL_EXIT_USAGE;
        }
    } else {
        ql_mkmodel_shape_blank(&p.shape);
        if (ql_config_read_object(cfg->shape_config, shape_member, &p.shape, err, sizeof(err)) != 0) {
            fprintf(stderr, "quill mkmodel: --config %s\n", err);
            return QL_EXIT_USAGE;
        }
    }
    /* NOTE(mkmodel-seed): --seed defaults to -1 ("from the clock") for run; a model file
     * should be reproducible, so mkmodel reads -1 as 0. */
    p.seed = cfg->seed < 0 ? 0 : (uint64_t)cfg->seed;

    ql_mkmodel_t *m = NULL;
    if (ql_mkmodel_init(&p, &m, err, sizeof(err)) != 0) {
        if (cfg->shape_config)
            fprintf(stderr, "quill mkmodel: --config %s: %s\n", cfg->shape_config, err);
        else
            fprintf(stderr, "quill mkmodel: shape %s with --type %s: %s\n", cfg->shape, cfg->wtype, err);
        return QL_EXIT_USAGE;
    }
    uint64_t t0 = ql_time_ns();
    int rc = ql_mkmodel_write(m, cfg->output, err, sizeof(err));
    double secs = (double)(ql_time_ns() - t0) * 1e-9;
    if (rc != 0) {
        fprintf(stderr, "quill mkmodel: %s\n", err);
        ql_mkmodel_free(m);
        return QL_EXIT_FAIL;
    }
    double mib = (double)ql_mkmodel_data_bytes(m) / (1024.0 * 1024.0);
    printf("wrote %s: shape %s, %s weights, seed %llu, %lld tensors, %.1f MiB of weights, %lld merges, in %.2f s\n",
           cfg->output, p.shape.name, ql_dtype_name(p.wtype), (unsigned long long)p.seed,
           (long long)ql_mkmodel_n_tensors(m), mib, (long long)ql_mkmodel_n_merges(m), secs);
    ql_mkmodel_free(m);
    return QL_EXIT_OK;
}
