/*
 * server/cmd.h — the quill binary's subcommands. main.c parses the configuration and calls
 * one of these; each returns the process exit status (0 ok, 1 failure, 2 bad usage).
 */
#ifndef QL_SERVER_CMD_H
#define QL_SERVER_CMD_H

#include "config/config.h"

#define QL_EXIT_OK 0
#define QL_EXIT_FAIL 1
#define QL_EXIT_USAGE 2

int ql_cmd_serve(const ql_config_t *cfg);
int ql_cmd_run(const ql_config_t *cfg);
int ql_cmd_bench(const ql_config_t *cfg);
int ql_cmd_tokenize(const ql_config_t *cfg);
int ql_cmd_inspect(const ql_config_t *cfg);
int ql_cmd_mkmodel(const ql_config_t *cfg);

/** Prints "quill <cmd>: <what> is not available yet (<which issue delivers it>)" and
 *  returns QL_EXIT_FAIL: a subcommand that cannot do its work says so, never pretends. */
int ql_cmd_not_available(const char *cmd, const char *what);

/** Prints "quill <cmd>: <message>" as one line on stderr and returns code: how a subcommand
 *  reports the error it stops on. */
int ql_cmd_fail(int code, const char *cmd, const char *fmt, ...) QL_PRINTF(3, 4);

#endif /* QL_SERVER_CMD_H */
