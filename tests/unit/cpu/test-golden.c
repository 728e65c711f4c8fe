/*
 * tests/unit/cpu/test-golden.c — the CPU backend on the default model (SmolLM2-135M-Instruct
 * Q4_1) against llama.cpp's goldens in tests/fixtures/smollm2/ (tools/reference/gen-logits.py;
 * the fixture README derives every bound used here from llama.cpp's measured self-variation):
 *
 *   logits   the 16 stored rows (positions 0, 1, n/2, n-1 of four prompts), after removing each
 *            row's mean difference: rms, max abs, max abs over llama.cpp's top 32, KL, the mean
 *            rms, the same argmax wherever llama.cpp's top-2 gap is >= TIE_MARGIN; and llama.cpp's
 *            independent float64 reference (top 32) within the same top-32 bound;
 *   greedy   64 greedy tokens for every case of greedy.txt, fed back one at a time: the "exact"
 *            cases (every llama.cpp margin above EXACT_MARGIN) must be identical token for token;
 *            the others follow the margin rule (a token may differ only at a near-tie, and only
 *            by being llama.cpp's runner-up; comparison stops there);
 *   engine   batch invariance end to end: 8 exact cases through the engine thread
 *            (scheduler/engine.h) one at a time, then as one batch of 8 where the second four are
 *            submitted while the first four decode (with a 32-token step budget, so prefill chunks
 *            and decodes share steps): the same tokens, and llama.cpp's.
 *
 * An unoptimized (Debug, sanitizer) build runs the forward pass 20-30x slower: there the greedy
 * test takes the exact cases only and the engine test the first 24 tokens (NOTE(unoptimized)).
 *
 * Skipped, saying so, when the default model is absent ($QL_DEFAULT_MODEL, else
 * ~/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf; `make model` fetches it).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <cmocka.h>

#include "test-model.h"

#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu.h"
#include "model/gguf.h"
#include "model/hparams.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"

#define FIXTURES "tests/fixtures/smollm2"
#define N_GEN    64
#define TOP_N    32

/* The bounds of tests/fixtures/smollm2/README.md ("Tolerances"), each at least 1.3x the worst
 * value measured between llama.cpp and other correct forward passes with Q8 activations. */
#define TIE_MARGIN   1.0  /* top-2 gap at or above which the argmax / greedy token is fixed */
#define RMS_MAX      0.75 /* rms of the centered difference over the vocabulary */
#define MAXABS_MAX   3.5  /* max abs of it */
#define TOP32_MAX    2.25 /* max abs of it over the reference's top 32 */
#define KL_MAX       0.15 /* KL(llama.cpp || quill), nats */
#define RMS_MEAN_MAX 0.25 /* mean of the rms over the stored rows */

#define SKIP_BECAUSE(...)                                                                          \
    do {                                                                                           \
        printf("skipped: " __VA_ARGS__);                                                           \
        printf("\n");                                                                              \
        skip();                                                                                    \
    } while (0)

/* ---- the default model ---- */

typedef struct model_s {
    ql_gguf_t *g;
    ql_tok_t *tok;
    ql_hparams_t hp;
} model_t;

/* Opens the default model, or returns 0 when it is absent (the caller skips). */
static int model_open(model_t *m) {
    memset(m, 0, sizeof(*m));
    const char *path = ql_test_default_model();
    if (access(path, R_OK) != 0) return 0;
    char err[256];
    if (ql_gguf_open(path, &m->g, err, sizeof(err)) != 0) fail_msg("%s", err);
    if (ql_tok_init_from_gguf(m->g, &m->tok, err, sizeof(err)) != 0) fail_msg("tokenizer: %s", err);
    if (ql_hparams_read(m->g, &m->hp, err, sizeof(err)) != 0) fail_msg("hparams: %s", err);
    return 1;
}

static void model_close(model_t *m) {
    ql_tok_free(m->tok);
    ql_gguf_free(m->g);
}

/* A CPU backend with a pool of exactly n_blocks blocks of 16 tokens. */
static ql_backend_t *backend_open(const model_t *m, int32_t n_seqs, int32_t n_batch,
                                  int32_t n_blocks) {
    ql_kv_layout_t l = {.n_layer = (int32_t)m->hp.n_layer,
                        .n_kv_head = (int32_t)m->hp.n_head_kv,
                        .head_dim = (int32_t)m->hp.head_dim,
                        .block_size = 16,
                        .n_blocks = n_blocks};
    ql_backend_params_t p;
    memset(&p, 0, sizeof(p));
    p.n_threads = 2;
    p.block_size = 16;
    p.n_batch_tokens_max = n_batch;
    p.n_seqs_max = n_seqs;
    p.n_logits_max = QL_MAX(n_seqs, 16);
    p.n_ctx_max = 512;
    p.kv_cache_bytes = ql_kv_block_bytes(&l, 2) * (uint64_t)n_blocks;
    ql_backend_t *be = NULL;
    char err[256];
    if (ql_cpu_backend_init(m->g, &p, &be, err, sizeof(err)) != 0) fail_msg("cpu backend: %s", err);
    assert_int_equal(ql_backend_info(be)->kv.n_blocks, n_blocks);
    return be;
}

/* ---- reading the fixtures ---- */

/* Reads one line into *buf (grown as needed), without its newline. @return 0 at EOF. */
static int read_line(FILE *f, char **buf, size_t *cap) {
    ssize_t n = getline(buf, cap, f);
    if (n < 0) return 0;
    while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) (*buf)[--n] = '\0';
    return 1;
}

/* The fixtures' escaping undone (\\ \n \t \r); malloc'd. */
static char *unescape(const char *s) {
    char *out = malloc(strlen(s) + 1), *o = out;
    assert_non_null(out);
    for (; *s; s++) {
        if (*s != '\\' || !s[1]) {
            *o++ = *s;
            continue;
        }
        s++;
        *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s == 'r' ? '\r' : *s;
    }
    *o = '\0';
    return out;
}

/* Parses n ints from s into out; returns the end. */
static const char *parse_ints(const char *s, int32_t *out, int n) {
    char *end;
    for (int i = 0; i < n; i++) {
        long v = strtol(s, &end, 10);
        if (end == s) fail_msg("fixture: expected %d integers, got %d", n, i);
        out[i] = (int32_t)v;
        s = end;
    }
    return s;
}

/* "id:value" pairs */
static void parse_top(const char *s, int32_t *ids, double *vals, int n) {
    char *end;
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)strtol(s, &end, 10);
        if (end == s || *end != ':') fail_msg("fixture: bad top pair %d", i);
        vals[i] = strtod(end + 1, &end);
        s = end;
    }
}

/* the rest of the line after `n` space-separated words */
static const char *skip_words(const char *s, int n) {
    for (int i = 0; i < n; i++) {
        while (*s == ' ') s++;
        while (*s && *s != ' ') s++;
    }
    while (*s == ' ') s++;
    return s;
}

#define MAX_PROMPTS 8
#define MAX_ROWS    32
#define MAX_CASES   128

typedef struct lprompt_s {
    char name[64];
    int chat;
    int32_t n;
    int32_t *ids;
    char *text;
} lprompt_t;

typedef struct lrow_s {
    int p, pos;
    long off;
    double lo, step;
    int32_t argmax;
    int32_t top_id[TOP_N];
    double top_val[TOP_N];
    int32_t f64_argmax;
    double f64_mean;
    int32_t f64_top_id[TOP_N];
    double f64_top_val[TOP_N];
} lrow_t;

typedef struct logits_fx_s {
    int32_t n_vocab;
    int n_prompts, n_rows;
    lprompt_t prompts[MAX_PROMPTS];
    lrow_t rows[MAX_ROWS];
    uint16_t *bin; /* [n_rows_total][n_vocab] */
    size_t bin_len;
} logits_fx_t;

static void logits_fx_load(logits_fx_t *fx) {
    memset(fx, 0, sizeof(*fx));
    FILE *f = fopen(FIXTURES "/logits.txt", "r");
    if (!f) fail_msg("cannot open " FIXTURES "/logits.txt (tests run from the source root)");
    char *line = NULL;
    size_t cap = 0;
    while (read_line(f, &line, &cap)) {
        if (line[0] == '#' || !line[0]) continue;
        if (strncmp(line, "n_vocab ", 8) == 0) {
            fx->n_vocab = (int32_t)atol(line + 8);
        } else if (strncmp(line, "prompt ", 7) == 0) {
            assert_true(fx->n_prompts < MAX_PROMPTS);
            lprompt_t *p = &fx->prompts[fx->n_prompts];
            int idx, n;
            char kind[16];
            if (sscanf(line, "prompt %d %63s %15s %d", &idx, p->name, kind, &n) != 4)
                fail_msg("bad: %s", line);
            assert_int_equal(idx, fx->n_prompts);
            p->chat = strcmp(kind, "chat") == 0;
            p->n = n;
            p->ids = malloc(sizeof(int32_t) * (size_t)n);
            parse_ints(skip_words(line, 5), p->ids, n);
            fx->n_prompts++;
        } else if (strncmp(line, "text ", 5) == 0) {
            int idx = atoi(line + 5);
            assert_true(idx >= 0 && idx < fx->n_prompts);
            fx->prompts[idx].text = unescape(skip_words(line, 2));
        } else if (strncmp(line, "row ", 4) == 0) {
            assert_true(fx->n_rows < MAX_ROWS);
            lrow_t *r = &fx->rows[fx->n_rows++];
            if (sscanf(line, "row %d %d %ld %lf %lf %d", &r->p, &r->pos, &r->off, &r->lo, &r->step,
                       &r->argmax) != 6)
                fail_msg("bad: %s", line);
        } else if (strncmp(line, "top ", 4) == 0) {
            lrow_t *r = &fx->rows[fx->n_rows - 1];
            parse_top(skip_words(line, 3), r->top_id, r->top_val, TOP_N);
        } else if (strncmp(line, "f64row ", 7) == 0 || strncmp(line, "f64top ", 7) == 0) {
            /* a prompt's f64 lines follow all of its llama.cpp rows: match by (prompt, pos) */
            int p, pos;
            if (sscanf(line + 7, "%d %d", &p, &pos) != 2) fail_msg("bad: %s", line);
            lrow_t *r = NULL;
            for (int i = 0; i < fx->n_rows; i++)
                if (fx->rows[i].p == p && fx->rows[i].pos == pos) r = &fx->rows[i];
            if (!r) fail_msg("f64 line for a position with no row: %s", line);
            double mx;
            if (line[3] == 'r') {
                if (sscanf(line, "f64row %d %d %d %lf %lf", &p, &pos, &r->f64_argmax, &mx,
                           &r->f64_mean) != 5)
                    fail_msg("bad: %s", line);
            } else {
                parse_top(skip_words(line, 3), r->f64_top_id, r->f64_top_val, TOP_N);
            }
        }
    }
    free(line);
    fclose(f);

    f = fopen(FIXTURES "/logits.bin", "rb");
    if (!f) fail_msg("cannot open " FIXTURES "/logits.bin");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    fx->bin = malloc((size_t)size);
    assert_int_equal(fread(fx->bin, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    fx->bin_len = (size_t)size;
    assert_true(fx->n_vocab > 0 && fx->n_prompts > 0 && fx->n_rows > 0);
}

static void logits_fx_free(logits_fx_t *fx) {
    for (int i = 0; i < fx->n_prompts; i++) {
        free(fx->prompts[i].ids);
        free(fx->prompts[i].text);
    }
    free(fx->bin);
}

typedef struct gcase_s {
    char name[64];
    int chat;
    int32_t n_prompt, n_gen, first_eog;
    double min_margin;
    int exact;
    char *text;
    int32_t *prompt;
    int32_t gen[N_GEN], second[N_GEN];
    double margin[N_GEN];
} gcase_t;

typedef struct greedy_fx_s {
    int n_cases;
    gcase_t cases[MAX_CASES];
} greedy_fx_t;

static void greedy_fx_load(greedy_fx_t *fx) {
    memset(fx, 0, sizeof(*fx));
    FILE *f = fopen(FIXTURES "/greedy.txt", "r");
    if (!f) fail_msg("cannot open " FIXTURES "/greedy.txt (tests run from the source root)");
    char *line = NULL;
    size_t cap = 0;
    gcase_t *c = NULL;
    while (read_line(f, &line, &cap)) {
        if (strncmp(line, "case ", 5) == 0) {
            assert_true(fx->n_cases < MAX_CASES);
            c = &fx->cases[fx->n_cases++];
            char kind[16];
            if (sscanf(line, "case %63s %15s %d %d %d %lf %d", c->name, kind, &c->n_prompt,
                       &c->n_gen, &c->first_eog, &c->min_margin, &c->exact) != 7)
                fail_msg("bad: %s", line);
            assert_int_equal(c->n_gen, N_GEN);
            c->chat = strcmp(kind, "chat") == 0;
        } else if (!c) {
            continue;
        } else if (strncmp(line, "text ", 5) == 0) {
            c->text = unescape(line + 5);
        } else if (strncmp(line, "prompt ", 7) == 0) {
            c->prompt = malloc(sizeof(int32_t) * (size_t)c->n_prompt);
            parse_ints(line + 7, c->prompt, c->n_prompt);
        } else if (strncmp(line, "gen ", 4) == 0) {
            parse_ints(line + 4, c->gen, N_GEN);
        } else if (strncmp(line, "second ", 7) == 0) {
            parse_ints(line + 7, c->second, N_GEN);
        } else if (strncmp(line, "margin ", 7) == 0) {
            const char *s = line + 7;
            char *end;
            for (int i = 0; i < N_GEN; i++, s = end) {
                c->margin[i] = strtod(s, &end);
                if (end == s) fail_msg("%s: bad margin line", c->name);
            }
        }
    }
    free(line);
    fclose(f);
    assert_true(fx->n_cases > 0);
}

static void greedy_fx_free(greedy_fx_t *fx) {
    for (int i = 0; i < fx->n_cases; i++) {
        free(fx->cases[i].prompt);
        free(fx->cases[i].text);
    }
}

/* quill's tokenizer gives the fixture's ids for its text (a drifted fixture or tokenizer would
 * make every comparison below meaningless) */
static void check_tokens(const ql_tok_t *tok, const char *name, int chat, const char *text,
                         const int32_t *ids, int32_t n) {
    int32_t got[512];
    size_t n_got = 0;
    int rc = ql_tok_encode(tok, text, strlen(text),
                           chat ? QL_TOK_PARSE_SPECIAL : QL_TOK_ADD_SPECIAL, got, 512, &n_got);
    assert_int_equal(rc, 0);
    if ((int32_t)n_got != n || memcmp(got, ids, sizeof(int32_t) * (size_t)n) != 0)
        fail_msg("%s: quill's tokenizer gives other ids than llama.cpp for the prompt", name);
}

/* ---- running sequences on the backend ---- */

/* argmax (ties: the lowest id, as llama.cpp's greedy sampler) and the top-1 minus top-2 gap */
static int32_t argmax_gap(const float *row, int32_t n, double *gap) {
    int32_t a = 0, b = -1;
    for (int32_t i = 1; i < n; i++) {
        if (row[i] > row[a]) {
            b = a;
            a = i;
        } else if (b < 0 || row[i] > row[b]) {
            b = i;
        }
    }
    if (gap) *gap = (double)row[a] - (double)row[b];
    return a;
}

/* Sequences of a batched run: sequence s owns blocks [s * bps, (s + 1) * bps). */
typedef struct runner_s {
    ql_backend_t *be;
    int32_t n_vocab, n_batch, bps;
    int32_t **tables;
    /* per-step arrays, [n_batch] / [n_seqs] */
    int32_t *tokens, *pos, *seq_of, *nblk, *slen, *rows;
    const int32_t **tabs;
    float *logits;
} runner_t;

static void runner_init(runner_t *r, ql_backend_t *be, int32_t n_seqs, int32_t bps) {
    memset(r, 0, sizeof(*r));
    const ql_backend_info_t *info = ql_backend_info(be);
    r->be = be;
    r->n_vocab = info->n_vocab;
    r->n_batch = info->n_batch_tokens_max;
    r->bps = bps;
    r->tables = malloc(sizeof(int32_t *) * (size_t)n_seqs);
    for (int32_t s = 0; s < n_seqs; s++) {
        r->tables[s] = malloc(sizeof(int32_t) * (size_t)bps);
        for (int32_t b = 0; b < bps; b++) r->tables[s][b] = s * bps + b;
    }
    size_t nb = (size_t)r->n_batch;
    r->tokens = malloc(sizeof(int32_t) * nb);
    r->pos = malloc(sizeof(int32_t) * nb);
    r->seq_of = malloc(sizeof(int32_t) * nb);
    r->rows = malloc(sizeof(int32_t) * nb);
    r->nblk = malloc(sizeof(int32_t) * (size_t)n_seqs);
    r->slen = malloc(sizeof(int32_t) * (size_t)n_seqs);
    r->tabs = malloc(sizeof(int32_t *) * (size_t)n_seqs);
    r->logits = malloc(sizeof(float) * (size_t)info->n_logits_max * (size_t)r->n_vocab);
}

static void runner_free(runner_t *r, int32_t n_seqs) {
    for (int32_t s = 0; s < n_seqs; s++) free(r->tables[s]);
    free(r->tables);
    free(r->tokens);
    free(r->pos);
    free(r->seq_of);
    free(r->rows);
    free(r->nblk);
    free(r->slen);
    free(r->tabs);
    free(r->logits);
}

/* One forward over the tokens staged in r (n_tok of them, from the n_in sequences whose global
 * ids are in seqs[] and whose lengths after the step are in r->slen). */
static void runner_forward(runner_t *r, int32_t n_tok, const int32_t *seqs, int32_t n_in,
                           int32_t n_rows) {
    for (int32_t j = 0; j < n_in; j++) {
        r->tabs[j] = r->tables[seqs[j]];
        r->nblk[j] = r->bps;
    }
    ql_batch_t b = {.n_tokens = n_tok,
                    .tokens = r->tokens,
                    .pos = r->pos,
                    .seq_of_token = r->seq_of,
                    .n_seqs = n_in,
                    .block_tables = r->tabs,
                    .n_blocks = r->nblk,
                    .seq_len = r->slen,
                    .logits_rows = r->rows,
                    .n_logits = n_rows};
    int rc = ql_backend_forward(r->be, &b, r->logits);
    if (rc != 0) fail_msg("forward: %s", ql_strerror(rc));
}

/* Greedy-decodes n sequences together for N_GEN tokens each: prompts packed into prefill
 * batches, then one decode token per sequence per step (each fed its own previous token). */
static void greedy_batched(runner_t *r, int32_t n, int32_t *const *prompts, const int32_t *n_prompt,
                           int32_t (*out)[N_GEN], double (*gap)[N_GEN]) {
    const ql_backend_info_t *info = ql_backend_info(r->be);
    const int32_t per_step = QL_MIN(r->n_batch, QL_MIN(info->n_seqs_max, info->n_logits_max));
    int32_t *seqs = malloc(sizeof(int32_t) * (size_t)n);
    for (int32_t s0 = 0; s0 < n;) {
        int32_t n_tok = 0, n_in = 0, s = s0;
        while (s < n && n_tok + n_prompt[s] <= r->n_batch && n_in < per_step) {
            for (int32_t i = 0; i < n_prompt[s]; i++) {
                r->tokens[n_tok] = prompts[s][i];
                r->pos[n_tok] = i;
                r->seq_of[n_tok] = n_in;
                n_tok++;
            }
            r->rows[n_in] = n_tok - 1;
            r->slen[n_in] = n_prompt[s];
            seqs[n_in++] = s++;
        }
        assert_true(n_in > 0);
        runner_forward(r, n_tok, seqs, n_in, n_in);
        for (int32_t j = 0; j < n_in; j++)
            out[seqs[j]][0] =
                argmax_gap(r->logits + (size_t)j * r->n_vocab, r->n_vocab, &gap[seqs[j]][0]);
        s0 = s;
    }
    for (int k = 1; k < N_GEN; k++) {
        for (int32_t s0 = 0; s0 < n; s0 += per_step) {
            int32_t n_in = QL_MIN(n - s0, per_step);
            for (int32_t j = 0; j < n_in; j++) {
                int32_t s = s0 + j;
                r->tokens[j] = out[s][k - 1];
                r->pos[j] = n_prompt[s] + k - 1;
                r->seq_of[j] = j;
                r->rows[j] = j;
                r->slen[j] = n_prompt[s] + k;
                seqs[j] = s;
            }
            runner_forward(r, n_in, seqs, n_in, n_in);
            for (int32_t j = 0; j < n_in; j++)
                out[s0 + j][k] =
                    argmax_gap(r->logits + (size_t)j * r->n_vocab, r->n_vocab, &gap[s0 + j][k]);
        }
    }
    free(seqs);
}

/* ---- logits ---- */

typedef struct row_cmp_s {
    double shift, rms, maxabs, top32, kl, f64_top32;
    int32_t argmax;
    double gap; /* llama.cpp's top-2 gap */
} row_cmp_t;

static row_cmp_t compare_row(const float *q, const lrow_t *r, const uint16_t *u16, int32_t n) {
    row_cmp_t c;
    memset(&c, 0, sizeof(c));
    double *ref = malloc(sizeof(double) * (size_t)n);
    double sum_d = 0, mean_q = 0;
    for (int32_t i = 0; i < n; i++) {
        ref[i] = r->lo + r->step * (double)u16[i];
        sum_d += (double)q[i] - ref[i];
        mean_q += q[i];
    }
    mean_q /= n;
    c.shift = sum_d / n;
    double ss = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = (double)q[i] - ref[i] - c.shift;
        ss += d * d;
        c.maxabs = fmax(c.maxabs, fabs(d));
    }
    c.rms = sqrt(ss / n);
    for (int i = 0; i < TOP_N; i++) {
        c.top32 = fmax(c.top32, fabs((double)q[r->top_id[i]] - r->top_val[i] - c.shift));
        c.f64_top32 = fmax(c.f64_top32, fabs(((double)q[r->f64_top_id[i]] - mean_q) -
                                             (r->f64_top_val[i] - r->f64_mean)));
    }
    /* KL(ref || q) over log-softmax rows, in double */
    double mr = -INFINITY, mq = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        mr = fmax(mr, ref[i]);
        mq = fmax(mq, q[i]);
    }
    double zr = 0, zq = 0;
    for (int32_t i = 0; i < n; i++) {
        zr += exp(ref[i] - mr);
        zq += exp((double)q[i] - mq);
    }
    double lzr = mr + log(zr), lzq = mq + log(zq);
    for (int32_t i = 0; i < n; i++) {
        double lr = ref[i] - lzr, lq = (double)q[i] - lzq;
        c.kl += exp(lr) * (lr - lq);
    }
    c.argmax = argmax_gap(q, n, NULL);
    c.gap = r->top_val[0] - r->top_val[1];
    free(ref);
    return c;
}

static void test_logits(void **state) {
    (void)state;
    model_t m;
    if (!model_open(&m))
        SKIP_BECAUSE("the default model %s is absent (make model fetches it)", ql_test_default_model());
    logits_fx_t fx;
    logits_fx_load(&fx);
    assert_int_equal(fx.n_vocab, (int32_t)m.hp.n_vocab);

    /* every prompt as one sequence, all in one prefill batch, logits at the stored rows */
    int32_t n_tok = 0, max_n = 0;
    for (int p = 0; p < fx.n_prompts; p++) {
        const lprompt_t *pr = &fx.prompts[p];
        check_tokens(m.tok, pr->name, pr->chat, pr->text, pr->ids, pr->n);
        n_tok += pr->n;
        max_n = QL_MAX(max_n, pr->n);
    }
    const int32_t bps = (max_n + 15) / 16;
    ql_backend_t *be = backend_open(&m, MAX_PROMPTS, 512, MAX_PROMPTS * bps);
    runner_t r;
    runner_init(&r, be, fx.n_prompts, bps);
    assert_true(n_tok <= r.n_batch);
    int32_t seqs[MAX_PROMPTS], row_of[MAX_ROWS];
    int32_t t = 0, n_rows = 0;
    for (int p = 0; p < fx.n_prompts; p++) {
        const lprompt_t *pr = &fx.prompts[p];
        for (int32_t i = 0; i < pr->n; i++) {
            r.tokens[t] = pr->ids[i];
            r.pos[t] = i;
            r.seq_of[t] = p;
            for (int k = 0; k < fx.n_rows; k++)
                if (fx.rows[k].p == p && fx.rows[k].pos == i) {
                    row_of[k] = n_rows;
                    r.rows[n_rows++] = t;
                }
            t++;
        }
        r.slen[p] = pr->n;
        seqs[p] = p;
    }
    assert_int_equal(n_rows, fx.n_rows);
    runner_forward(&r, t, seqs, fx.n_prompts, n_rows);

    printf("    %-11s %4s %7s %6s %6s %6s %8s %6s %6s  argmax (llama.cpp gap)\n", "prompt", "pos",
           "shift", "rms", "maxabs", "top32", "KL", "f64t32", "");
    double rms_sum = 0, w_rms = 0, w_max = 0, w_top = 0, w_kl = 0, w_f64 = 0;
    int n_fail = 0, n_argmax_checked = 0;
    for (int k = 0; k < fx.n_rows; k++) {
        const lrow_t *lr = &fx.rows[k];
        assert_true((size_t)(lr->off / 2) + (size_t)fx.n_vocab <= fx.bin_len / 2);
        row_cmp_t c = compare_row(r.logits + (size_t)row_of[k] * (size_t)r.n_vocab, lr,
                                  fx.bin + lr->off / 2, fx.n_vocab);
        int fixed = c.gap >= TIE_MARGIN;
        int ok = c.rms <= RMS_MAX && c.maxabs <= MAXABS_MAX && c.top32 <= TOP32_MAX &&
                 c.kl <= KL_MAX && c.f64_top32 <= TOP32_MAX && (!fixed || c.argmax == lr->argmax);
        n_argmax_checked += fixed;
        printf("    %-11s %4d %7.3f %6.3f %6.3f %6.3f %8.1e %6.3f %6s  %d %s %d (%.2f)%s\n",
               fx.prompts[lr->p].name, lr->pos, c.shift, c.rms, c.maxabs, c.top32, c.kl,
               c.f64_top32, "", (int)c.argmax, c.argmax == lr->argmax ? "=" : "!=", (int)lr->argmax,
               c.gap, ok ? "" : "  <-- FAIL");
        n_fail += !ok;
        rms_sum += c.rms;
        w_rms = fmax(w_rms, c.rms);
        w_max = fmax(w_max, c.maxabs);
        w_top = fmax(w_top, c.top32);
        w_kl = fmax(w_kl, c.kl);
        w_f64 = fmax(w_f64, c.f64_top32);
    }
    double rms_mean = rms_sum / fx.n_rows;
    printf("    %d rows: worst rms %.3f (<= %.2f), max abs %.3f (<= %.2f), top-32 %.3f (<= %.2f), "
           "KL %.1e (<= %.2f), "
           "f64 top-32 %.3f (<= %.2f); mean rms %.3f (<= %.2f); argmax checked at %d rows\n",
           fx.n_rows, w_rms, RMS_MAX, w_max, MAXABS_MAX, w_top, TOP32_MAX, w_kl, KL_MAX, w_f64,
           TOP32_MAX, rms_mean, RMS_MEAN_MAX, n_argmax_checked);
    runner_free(&r, fx.n_prompts);
    ql_backend_free(be);
    logits_fx_free(&fx);
    model_close(&m);
    assert_int_equal(n_fail, 0);
    assert_true(rms_mean <= RMS_MEAN_MAX);
}

/* ---- greedy continuations ---- */

static void test_greedy(void **state) {
    (void)state;
    model_t m;
    if (!model_open(&m))
        SKIP_BECAUSE("the default model %s is absent (make model fetches it)", ql_test_default_model());
    greedy_fx_t *fx = malloc(sizeof(*fx));
    greedy_fx_load(fx);
    int32_t n_exact = 0, n_exact_chat = 0;
    for (int32_t i = 0; i < fx->n_cases; i++) {
        n_exact += fx->cases[i].exact;
        n_exact_chat += fx->cases[i].exact && fx->cases[i].chat;
    }
    /* the fixture promises what the issue asks for (gen-logits.py refuses to write less) */
    assert_true(n_exact >= 8);
    assert_true(n_exact_chat >= 3);
#if !defined(__OPTIMIZE__)
    /* NOTE(unoptimized): a Debug/sanitizer build runs the forward pass 20-30x slower; there the
     * exact cases alone (all of what must be identical) keep the test within minutes. */
    int n_all = fx->n_cases, n_kept = 0;
    for (int i = 0; i < fx->n_cases; i++) {
        if (!fx->cases[i].exact) {
            free(fx->cases[i].prompt);
            free(fx->cases[i].text);
            continue;
        }
        if (n_kept != i) fx->cases[n_kept] = fx->cases[i];
        n_kept++;
    }
    fx->n_cases = n_kept;
    printf("    unoptimized build: the %d exact cases only, of %d\n", n_kept, n_all);
#endif
    const int32_t n = fx->n_cases;
    int32_t *n_prompt = malloc(sizeof(int32_t) * (size_t)n);
    int32_t **prompts = malloc(sizeof(int32_t *) * (size_t)n);
    int32_t max_n = 0;
    for (int32_t i = 0; i < n; i++) {
        gcase_t *c = &fx->cases[i];
        check_tokens(m.tok, c->name, c->chat, c->text, c->prompt, c->n_prompt);
        prompts[i] = c->prompt;
        n_prompt[i] = c->n_prompt;
        max_n = QL_MAX(max_n, c->n_prompt);
    }

    const int32_t bps = (max_n + N_GEN + 15) / 16;
    ql_backend_t *be = backend_open(&m, n, 512, n * bps);
    runner_t r;
    runner_init(&r, be, n, bps);
    int32_t(*out)[N_GEN] = malloc(sizeof(*out) * (size_t)n);
    double(*gap)[N_GEN] = malloc(sizeof(*gap) * (size_t)n);
    greedy_batched(&r, n, prompts, n_prompt, out, gap);

    int n_fail = 0, exact_same = 0, full_same = 0, flipped = 0, tokens_compared = 0;
    for (int32_t i = 0; i < n; i++) {
        const gcase_t *c = &fx->cases[i];
        int k = 0, status = 0; /* 0 all equal, 1 flipped at a near-tie, -1 failure */
        for (; k < N_GEN; k++) {
            if (out[i][k] == c->gen[k]) continue;
            if (!c->exact && c->margin[k] < TIE_MARGIN && out[i][k] == c->second[k])
                status = 1;
            else
                status = -1;
            break;
        }
        tokens_compared += k + (status == 0 ? 0 : 1);
        if (status == 0) {
            full_same++;
            exact_same += c->exact;
        }
        if (status == 1) {
            flipped++;
            printf("    %-22s flipped at step %2d, a near-tie: llama.cpp margin %.4f, quill's %.4f "
                   "(runner-up %d "
                   "taken)\n",
                   c->name, k, c->margin[k], gap[i][k], (int)out[i][k]);
        }
        if (status < 0) {
            n_fail++;
            printf("    %-22s FAIL at step %d: quill %d, llama.cpp %d (runner-up %d, margin %.4f; "
                   "exact case: %s); "
                   "quill's margin there %.4f\n",
                   c->name, k, (int)out[i][k], (int)c->gen[k], (int)c->second[k], c->margin[k],
                   c->exact ? "yes" : "no", gap[i][k]);
        }
    }
    printf("    %d cases of %d greedy tokens: %d exact (%d chat), %d of them identical; %d of all "
           "cases identical "
           "for all %d tokens, %d flipped at a near-tie; %d tokens compared; %d failed\n",
           (int)n, N_GEN, (int)n_exact, (int)n_exact_chat, exact_same, full_same, N_GEN, flipped,
           tokens_compared, n_fail);
    free(out);
    free(gap);
    runner_free(&r, n);
    ql_backend_free(be);
    free(prompts);
    free(n_prompt);
    greedy_fx_free(fx);
    free(fx);
    model_close(&m);
    assert_int_equal(n_fail, 0);
    assert_int_equal(exact_same, n_exact);
}

/* ---- batch invariance through the engine ---- */

#define N_ENGINE 8
#if defined(__OPTIMIZE__)
#define N_ENGINE_GEN N_GEN
#else
#define N_ENGINE_GEN 24 /* NOTE(unoptimized): the first 24 of the 64 tokens */
#endif

typedef struct req_out_s {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int32_t tokens[N_GEN];
    int32_t n_tokens;
    int final_kind, status;
    ql_engine_stats_t stats;
} req_out_t;

static void on_event(const ql_engine_event_t *ev, void *ud) {
    req_out_t *o = ud;
    pthread_mutex_lock(o->mu);
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        for (int32_t i = 0; i < ev->n_tokens && o->n_tokens < N_ENGINE_GEN; i++)
            o->tokens[o->n_tokens++] = ev->tokens[i];
    } else {
        o->final_kind = ev->kind;
        o->status = ev->status;
        o->stats = ev->stats;
    }
    pthread_cond_broadcast(o->cv);
    pthread_mutex_unlock(o->mu);
}

static void submit(ql_engine_t *e, const gcase_t *c, req_out_t *o) {
    ql_engine_request_t rq = ql_engine_request_default();
    rq.prompt = c->prompt;
    rq.n_prompt = c->n_prompt;
    rq.sampling.temperature = 0.0f;
    rq.max_tokens = N_ENGINE_GEN;
    rq.ignore_eos = 1; /* llama.cpp's tokens, whatever they are */
    rq.on_event = on_event;
    rq.user_data = o;
    char err[256];
    if (ql_engine_submit(e, &rq, NULL, err, sizeof(err)) != 0)
        fail_msg("submit %s: %s", c->name, err);
}

static void wait_final(req_out_t *o) {
    pthread_mutex_lock(o->mu);
    while (!o->final_kind) pthread_cond_wait(o->cv, o->mu);
    pthread_mutex_unlock(o->mu);
    if (o->final_kind != QL_ENGINE_EVENT_FINISHED)
        fail_msg("request ended with %s", ql_strerror(o->status));
    assert_int_equal(o->n_tokens, N_ENGINE_GEN);
}

static ql_engine_t *engine_open(ql_backend_t *be, const ql_tok_t *tok, int32_t budget,
                                int prefix_cache) {
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = N_ENGINE;
    p.max_batched_tokens = budget;
    p.disable_prefix_cache = !prefix_cache;
    ql_engine_t *e = NULL;
    char err[256];
    if (ql_engine_init(&p, be, tok, &e, err, sizeof(err)) != 0) fail_msg("engine: %s", err);
    return e;
}

static void test_engine_batch(void **state) {
    (void)state;
    model_t m;
    if (!model_open(&m))
        SKIP_BECAUSE("the default model %s is absent (make model fetches it)", ql_test_default_model());
    greedy_fx_t *fx = malloc(sizeof(*fx));
    greedy_fx_load(fx);
    /* 8 exact cases, chat and plain alternating while both last */
    const gcase_t *pick[N_ENGINE];
    int n_pick = 0, ci = 0, ti = 0;
    while (n_pick < N_ENGINE) {
        int want_chat = n_pick % 2 == 0;
        int *idx = want_chat ? &ci : &ti;
        while (*idx < fx->n_cases && !(fx->cases[*idx].exact && fx->cases[*idx].chat == want_chat))
            (*idx)++;
        if (*idx < fx->n_cases) {
            pick[n_pick++] = &fx->cases[(*idx)++];
            continue;
        }
        /* this kind ran out: take any exact case not taken yet */
        int found = 0;
        for (int i = 0; i < fx->n_cases && !found; i++) {
            int taken = 0;
            for (int j = 0; j < n_pick; j++) taken |= pick[j] == &fx->cases[i];
            if (fx->cases[i].exact && !taken) {
                pick[n_pick++] = &fx->cases[i];
                found = 1;
            }
        }
        assert_true(found);
    }
    int32_t max_n = 0;
    for (int i = 0; i < N_ENGINE; i++) max_n = QL_MAX(max_n, pick[i]->n_prompt);
    const int32_t bps = (max_n + N_ENGINE_GEN + 15) / 16;
    ql_backend_t *be = backend_open(&m, N_ENGINE, 64, N_ENGINE * bps);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    req_out_t alone[N_ENGINE], batch[N_ENGINE];
    for (int i = 0; i < N_ENGINE; i++) {
        memset(&alone[i], 0, sizeof(alone[i]));
        memset(&batch[i], 0, sizeof(batch[i]));
        alone[i].mu = batch[i].mu = &mu;
        alone[i].cv = batch[i].cv = &cv;
    }

    /* alone: one request at a time, nothing shared */
    ql_engine_t *e = engine_open(be, m.tok, 64, 0);
    for (int i = 0; i < N_ENGINE; i++) {
        submit(e, pick[i], &alone[i]);
        wait_final(&alone[i]);
    }
    ql_engine_free(e);

    /* batched: four, then four more once the first four are decoding; a 32-token budget splits
     * the late prompts into chunks that share steps with the early decodes */
    e = engine_open(be, m.tok, 32, 1);
    for (int i = 0; i < N_ENGINE / 2; i++) submit(e, pick[i], &batch[i]);
    int32_t first_wave_tokens[N_ENGINE / 2];
    pthread_mutex_lock(&mu);
    for (int i = 0; i < N_ENGINE / 2; i++)
        while (batch[i].n_tokens < 1 && !batch[i].final_kind) pthread_cond_wait(&cv, &mu);
    for (int i = 0; i < N_ENGINE / 2; i++) first_wave_tokens[i] = batch[i].n_tokens;
    pthread_mutex_unlock(&mu);
    for (int i = N_ENGINE / 2; i < N_ENGINE; i++) submit(e, pick[i], &batch[i]);
    for (int i = 0; i < N_ENGINE; i++) wait_final(&batch[i]);
    ql_engine_counters_t cnt;
    ql_engine_get_counters(e, &cnt);
    ql_engine_free(e);

    /* the late prompts were computed while the early sequences were still decoding */
    int mixed = 1;
    for (int i = 0; i < N_ENGINE / 2; i++) {
        mixed &= first_wave_tokens[i] < N_ENGINE_GEN;
        for (int j = N_ENGINE / 2; j < N_ENGINE; j++)
            mixed &= batch[j].stats.t_first_token_ns < batch[i].stats.t_finish_ns;
    }
    int n_fail = 0;
    for (int i = 0; i < N_ENGINE; i++) {
        int k_ab = 0, k_ref = 0;
        while (k_ab < N_ENGINE_GEN && alone[i].tokens[k_ab] == batch[i].tokens[k_ab]) k_ab++;
        while (k_ref < N_ENGINE_GEN && batch[i].tokens[k_ref] == pick[i]->gen[k_ref]) k_ref++;
        if (k_ab < N_ENGINE_GEN)
            printf("    %s: batched differs from alone at token %d\n", pick[i]->name, k_ab);
        if (k_ref < N_ENGINE_GEN)
            printf("    %s: differs from llama.cpp at token %d\n", pick[i]->name, k_ref);
        n_fail += k_ab < N_ENGINE_GEN || k_ref < N_ENGINE_GEN;
    }
    int n_chat = 0;
    for (int i = 0; i < N_ENGINE; i++) n_chat += pick[i]->chat;
    printf("    %d requests (%d chat) of %d greedy tokens: alone = batched = llama.cpp for %d; "
           "%llu engine steps "
           "batched, prefills and decodes mixed: %s\n",
           N_ENGINE, n_chat, N_ENGINE_GEN, N_ENGINE - n_fail, (unsigned long long)cnt.n_steps,
           mixed ? "yes" : "NO");
    ql_backend_free(be);
    greedy_fx_free(fx);
    free(fx);
    model_close(&m);
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
    assert_true(mixed);
    assert_int_equal(n_fail, 0);
}

int main(void) {
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_engine_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
