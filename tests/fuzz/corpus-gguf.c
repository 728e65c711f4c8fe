/*
 * tests/fuzz/corpus-gguf.c — the GGUF regression corpus as a plain ctest (no libFuzzer), so
 * it runs in `make test` and under ASan/UBSan.
 *
 * usage: test-gguf-corpus DIR   (DIR holds the files and MANIFEST; see
 * tools/gen-gguf-corpus.py). For each MANIFEST line `<file> <expect> <message substring>`:
 * opens the file with ql_gguf_open (mmap) and, from an exact-size heap copy, with
 * ql_gguf_open_mem; both must give the same status and error; then ql_hparams_read and
 * ql_weights_init; the stage that fails and its QL_E* code must match <expect>
 * (`ok` = nothing fails), and its one-line error must contain the substring. Every input
 * then goes through the fuzz target's walk (fuzz-gguf.c). A file in DIR without a MANIFEST
 * line, or a line without its file, fails the test.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/hparams.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct {
    const char *name;
    int code;
} k_codes[] = {
    {"EINVAL", QL_EINVAL},       {"ENOMEM", QL_ENOMEM}, {"EIO", QL_EIO},
    {"ENOENT", QL_ENOENT},       {"EFORMAT", QL_EFORMAT}, {"EUNSUPPORTED", QL_EUNSUPPORTED},
    {"EOVERFLOW", QL_EOVERFLOW},
};

static const char *code_name(int rc) {
    if (rc == 0) return "ok";
    for (size_t i = 0; i < sizeof(k_codes) / sizeof(k_codes[0]); i++)
        if (k_codes[i].code == rc) return k_codes[i].name;
    return "?";
}

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *p = NULL;
    long sz;
    if (fseek(f, 0, SEEK_END) == 0 && (sz = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        /* NOTE(exact-size): exactly the file's bytes, so ASan sees any read past its end */
        p = malloc(sz ? (size_t)sz : 1);
        if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
            free(p);
            p = NULL;
        }
        *n = (size_t)sz;
    }
    fclose(f);
    return p;
}

/* Runs the three stages; returns the failing stage ("open", "hparams", "weights") or NULL. */
static const char *run_stages(const char *path, int *rc, char *err, size_t errlen) {
    ql_gguf_t *g = NULL;
    if ((*rc = ql_gguf_open(path, &g, err, errlen)) != 0) return "open";
    ql_hparams_t hp;
    ql_weights_t w;
    const char *stage = NULL;
    if ((*rc = ql_hparams_read(g, &hp, err, errlen)) != 0) stage = "hparams";
    else if ((*rc = ql_weights_init(g, &hp, &w, err, errlen)) != 0) stage = "weights";
    else ql_weights_free(&w);
    ql_gguf_free(g);
    return stage;
}

static int check_line(const char *dir, char *line, int lineno) {
    char *file = strtok(line, " \t\n");
    char *expect = strtok(NULL, " \t\n");
    char *msg = strtok(NULL, "\n");
    if (!file || !expect) {
        fprintf(stderr, "MANIFEST:%d: expected '<file> <expect> [message]'\n", lineno);
        return 1;
    }
    while (msg && (*msg == ' ' || *msg == '\t')) msg++;
    char path[1024], err[512], err_mem[512];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    size_t n = 0;
    uint8_t *bytes = read_file(path, &n);
    if (!bytes) {
        fprintf(stderr, "FAIL %s: cannot read %s\n", file, path);
        return 1;
    }
    int rc = 0, failed = 0;
    err[0] = '\0';
    const char *stage = run_stages(path, &rc, err, sizeof(err));
    char got[64];
    if (stage) snprintf(got, sizeof(got), "%s:%s", stage, code_name(rc));
    else snprintf(got, sizeof(got), "ok");
    if (strcmp(got, expect) != 0) {
        fprintf(stderr, "FAIL %s: got %s, expected %s (error: %s)\n", file, got, expect, err);
        failed = 1;
    } else if (stage && msg && *msg && !strstr(err, msg)) {
        fprintf(stderr, "FAIL %s: error '%s' lacks '%s'\n", file, err, msg);
        failed = 1;
    } else if (strchr(err, '\n')) {
        fprintf(stderr, "FAIL %s: error has several lines: %s\n", file, err);
        failed = 1;
    }
    /* the same bytes from memory: same status; same message once the path prefix is off */
    ql_gguf_t *g = NULL;
    int rc_mem = ql_gguf_open_mem(bytes, n, &g, err_mem, sizeof(err_mem));
    ql_gguf_free(g);
    int open_rc = stage && strcmp(stage, "open") == 0 ? rc : 0;
    size_t plen = strlen(path);
    if (rc_mem != open_rc ||
        (open_rc && !(strncmp(err, path, plen) == 0 && strcmp(err + plen + 2, err_mem) == 0))) {
        fprintf(stderr, "FAIL %s: open_mem gave %d '%s', open gave %d '%s'\n", file, rc_mem, err_mem, open_rc, err);
        failed = 1;
    }
    LLVMFuzzerTestOneInput(bytes, n);
    free(bytes);
    if (!failed) printf("ok   %-36s %s%s%s\n", file, got, stage ? ": " : "", stage ? err : "");
    return failed;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char mpath[1024], line[2048];
    snprintf(mpath, sizeof(mpath), "%s/MANIFEST", dir);
    FILE *m = fopen(mpath, "r");
    if (!m) {
        fprintf(stderr, "cannot open %s\n", mpath);
        return 1;
    }
    /* the listed names, to find files nobody expects anything of */
    char **listed = NULL;
    size_t n_listed = 0;
    int failures = 0, n = 0, lineno = 0;
    while (fgets(line, sizeof(line), m)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n') continue;
        char name[512];
        if (sscanf(line, "%511s", name) == 1) {
            listed = realloc(listed, (n_listed + 1) * sizeof(*listed));
            listed[n_listed++] = strdup(name);
        }
        failures += check_line(dir, line, lineno);
        n++;
    }
    fclose(m);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, "MANIFEST", 8) == 0) continue;
        int found = 0;
        for (size_t i = 0; i < n_listed && !found; i++) found = strcmp(listed[i], e->d_name) == 0;
        if (!found) {
            fprintf(stderr, "FAIL %s: in %s but not in MANIFEST\n", e->d_name, dir);
            failures++;
        }
    }
    if (d) closedir(d);
    for (size_t i = 0; i < n_listed; i++) free(listed[i]);
    free(listed);
    printf("%d files, %d failed\n", n, failures);
    return failures ? 1 : 0;
}
