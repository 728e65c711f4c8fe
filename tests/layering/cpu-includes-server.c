/* tests/layering/cpu-includes-server.c — compiled with ql_cpu's include path, this must fail:
 * nothing below server/ may include it. */
#include "cpu/cpu.h"
#include "server/cmd.h"

int ql_layering_probe(void);
int ql_layering_probe(void) { return QL_EXIT_USAGE; }
