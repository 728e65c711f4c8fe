/* tests/layering/core-includes-model.c — compiled with exactly ql_core's include path, this
 * must fail: core/ may not see model/. The `layering-control` test compiles it with
 * ql_model's include path, where it must succeed (so the failure is the layering's). */
#include "core/core.h"
#include "model/gguf.h"

int ql_layering_probe(void);
int ql_layering_probe(void) { return QL_GGUF_DEFAULT_ALIGNMENT; }
