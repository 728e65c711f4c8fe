/*
 * tests/unit/cuda/test-device.c — device discovery. Without CUDA compiled in, or without a
 * device, the device checks skip and say why; the CPU suite always runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cuda/cuda.h"

static void test_stub_or_count(void **state) {
    (void)state;
    int n = ql_cuda_device_count();
    assert_true(n >= 0);
    char buf[128];
    if (!ql_cuda_compiled()) {
        assert_int_equal(n, 0);
        assert_int_equal(ql_cuda_device_describe(0, buf, sizeof(buf)), QL_EUNSUPPORTED);
        return;
    }
    assert_int_equal(ql_cuda_device_describe(n, buf, sizeof(buf)), QL_EINVAL);
    assert_int_equal(ql_cuda_device_describe(-1, buf, sizeof(buf)), QL_EINVAL);
}

static void test_describe_device(void **state) {
    (void)state;
    if (!ql_cuda_compiled()) {
        printf("SKIP: CUDA is not compiled into this build\n");
        skip();
    }
    if (ql_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device present\n");
        skip();
    }
    char buf[256];
    assert_int_equal(ql_cuda_device_describe(0, buf, sizeof(buf)), 0);
    assert_non_null(strstr(buf, "sm_"));
    assert_non_null(strstr(buf, "GiB"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stub_or_count),
        cmocka_unit_test(test_describe_device),
    };
    return cmocka_run_group_tests_name("cuda-device", tests, NULL, NULL);
}
