/*
 * server/cmd-mkmodel.c — `quill mkmodel` (being written).
 */
#include "server/cmd.h"

int ql_cmd_mkmodel(const ql_config_t *cfg) {
    (void)cfg;
    return ql_cmd_not_available("mkmodel", "the random-weight model writer");
}
