/*
 * server/cmd-tokenize.c — `quill tokenize` (being written).
 */
#include "server/cmd.h"

int ql_cmd_tokenize(const ql_config_t *cfg) {
    (void)cfg;
    return ql_cmd_not_available("tokenize", "the tokenizer");
}
