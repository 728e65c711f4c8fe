/*
 * server/cmd-inspect.c — `quill inspect` (being written).
 */
#include "server/cmd.h"

int ql_cmd_inspect(const ql_config_t *cfg) {
    (void)cfg;
    return ql_cmd_not_available("inspect", "the GGUF reader");
}
