/*
 * server/cmd-stub.c — subcommands whose work a later part of quill delivers. Each parses
 * its flags (so bad values are refused today) and then says plainly it is not available.
 */
#include "server/cmd.h"

int ql_cmd_bench(const ql_config_t *cfg) {
    (void)cfg;
    return ql_cmd_not_available("bench", "the serving benchmark");
}
