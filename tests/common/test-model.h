/*
 * tests/common/test-model.h — where tests and benchmarks find the default model
 * (SmolLM2-135M-Instruct Q4_1): $QL_DEFAULT_MODEL, which `make test` sets after
 * scripts/fetch-model.sh, else the fetch script's cache, ~/.cache/quill/. Callers check the
 * file exists and skip, saying so, when it does not.
 */
#ifndef QL_TEST_MODEL_H
#define QL_TEST_MODEL_H

#include <stdio.h>
#include <stdlib.h>

/** The default model's path (a static buffer when built from $HOME; never NULL). */
static inline const char *ql_test_default_model(void) {
    static char path[1024];
    const char *env = getenv("QL_DEFAULT_MODEL");
    if (env && *env) return env;
    const char *home = getenv("HOME");
    snprintf(path, sizeof(path), "%s/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : ".");
    return path;
}

#endif /* QL_TEST_MODEL_H */
