/*
 * tests/common/test-mkmodel.h — a random-weight model written to a temporary file, the set-up
 * the engine and speculative-decoding tests share (model/mkmodel.h does the work).
 */
#ifndef QL_TEST_MKMODEL_H
#define QL_TEST_MKMODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/mkmodel.h"

/** Makes a file from the mkstemp template `path` (rewritten in place) and writes the model of
 *  `mp` into it. @return 0, or non-zero with one line in err. */
static inline int ql_test_mkmodel_file(const ql_mkmodel_params_t *mp, char *path, char *err,
                                       size_t errlen) {
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(err, errlen, "mkstemp %s: cannot create the file", path);
        return -1;
    }
    close(fd);
    ql_mkmodel_t *m = NULL;
    int rc = ql_mkmodel_init(mp, &m, err, errlen);
    if (rc == 0) rc = ql_mkmodel_write(m, path, err, errlen);
    ql_mkmodel_free(m);
    return rc;
}

#endif /* QL_TEST_MKMODEL_H */
