/*
 * tests/fuzz/fuzz-check.h — what the fuzz targets share: CHECK(x), a promise of the code under
 * test; when it breaks, one line naming it and abort(), which libFuzzer and the corpus
 * drivers report as a crash.
 */
#ifndef QL_FUZZ_CHECK_H
#define QL_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(x)                                                                           \
    do {                                                                                   \
        if (!(x)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);          \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
