/*
 * tests/fuzz/corpus-request.c — the request parser's regression corpus as a plain ctest (no
 * libFuzzer), so it runs in `make test` and under ASan/UBSan.
 *
 * usage: test-request-corpus DIR. Every file of DIR (byte 0: endpoint and options, then the
 * body; see fuzz-request.c) goes through the fuzz target, whose CHECKs abort on a broken
 * promise. The seed files are requests of every endpoint and form (and a few broken ones);
 * crashes found by `make fuzz FUZZ_TARGET=request` are added here as they are fixed.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern long fuzz_request_accepted, fuzz_request_refused;

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test-request-corpus DIR\n");
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        fprintf(stderr, "test-request-corpus: cannot open %s\n", argv[1]);
        return 1;
    }
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", argv[1], de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) {
            fprintf(stderr, "test-request-corpus: cannot read %s\n", path);
            closedir(d);
            return 1;
        }
        uint8_t *buf = malloc(1 << 20);
        const size_t len = buf ? fread(buf, 1, 1 << 20, f) : 0;
        fclose(f);
        if (!buf) {
            closedir(d);
            return 1;
        }
        /* an exact-size copy, so ASan sees any read past the body */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        free(buf);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        n++;
    }
    closedir(d);
    /* the seeds hold both kinds, so both sides of the target's checks run */
    if (n < 10 || fuzz_request_accepted < 5 || fuzz_request_refused < 5) {
        fprintf(stderr, "test-request-corpus: %d inputs in %s, %ld accepted, %ld refused\n", n,
                argv[1], fuzz_request_accepted, fuzz_request_refused);
        return 1;
    }
    printf("test-request-corpus: %d inputs (%ld accepted, %ld refused), every promise held\n", n,
           fuzz_request_accepted, fuzz_request_refused);
    return 0;
}
