/*
 * tests/unit/scheduler/fake-backend.h — a deterministic backend for the scheduler and engine
 * tests (STYLE §8: scheduler tests run against a fake ql_backend_t).
 *
 * Its "KV cache" is real paging: every forward writes each token's id into the slot its block
 * table names, and a logits row is computed from the sequence's history READ BACK FROM THOSE
 * SLOTS (positions 0..pos through the block table). So a missed copy-on-write, a block written
 * by two sequences, a stale block, a wrong prefix-cache hit or a wrong recompute changes the
 * history and therefore the output, which the tests compare with a run that cannot have those
 * faults (one request alone in a big pool).
 *
 * Logits: the chosen next token gets +10, every other token a pseudo-random value in (-10, 0],
 * a function of (history digest, token), so greedy picks the chosen token, temperature
 * sampling is reproducible, and banning the chosen token makes a deterministic runner-up win.
 *   - rule mode: next = lo + digest % (hi - lo), and EOS when (digest >> 24) % eos_mod == 0;
 *   - script mode: a prompt starting with FAKE_SCRIPT_MARK, script index k: the output is
 *     scripts[k][0, n) then EOS (the history's length beyond the prompt says where it is).
 * Every batch is checked with ql_batch_validate (a violation is counted and fails the call).
 * Thread: used by one thread at a time (the engine thread); read counters after joining it.
 */
#ifndef QL_TEST_FAKE_BACKEND_H
#define QL_TEST_FAKE_BACKEND_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/tokenizer.h"

#define FAKE_SCRIPTS_MAX 64
#define FAKE_SCRIPT_LEN_MAX 64

typedef struct fake_script_s {
    int32_t n_prompt;                    /* the prompt's length, marker included */
    int32_t out[FAKE_SCRIPT_LEN_MAX];
    int32_t n_out;
} fake_script_t;

typedef struct fake_be_s {
    ql_backend_t base;                   /* first: ops + info */
    int32_t *slots;                      /* [n_blocks][block_size] token ids, -1 unwritten */
    /* rule mode */
    int32_t lo, hi;                      /* content tokens in [lo, hi) */
    int32_t eos;                         /* -1: never */
    uint32_t eos_mod;                    /* 0: never */
    /* script mode */
    int32_t script_mark;                 /* -1: off */
    fake_script_t scripts[FAKE_SCRIPTS_MAX];
    /* faults and pacing */
    int64_t fail_on_forward;             /* the n-th forward (1-based) returns fail_status; 0: never */
    int fail_status;
    int32_t delay_us;                    /* sleep in every forward */
    /* records */
    int64_t n_forward, n_copy_calls, n_copies, n_invalid;
    int32_t max_tokens_seen, max_seqs_seen;
} fake_be_t;

/** A fake backend with a pool of n_blocks blocks of bs tokens, n_vocab logits per row,
 *  limits n_batch_tokens_max / n_seqs_max (n_logits_max = n_seqs_max), n_ctx_max. Rule mode
 *  over [lo, hi) without EOS, no script. Free with ql_backend_free(&fb->base). */
fake_be_t *fake_be_new(int32_t n_vocab, int32_t n_blocks, int32_t bs, int32_t n_batch_tokens_max,
                       int32_t n_seqs_max, int32_t n_ctx_max);

/** The digest of a token history: what rule mode draws from (FNV-1a over the ids). */
uint64_t fake_digest(const int32_t *tokens, int32_t n);

/** The next token rule/script mode gives after history h[0, n) (what greedy picks). */
int32_t fake_next(const fake_be_t *fb, const int32_t *h, int32_t n);

/** The argmax of a logits row (lowest id on ties). */
int32_t fake_argmax(const float *row, int32_t n_vocab);

/** A tokenizer from `quill mkmodel`'s tiny vocabulary (byte-level BPE: 3 control tokens,
 *  256 byte tokens from id 3, merges): written to a temporary GGUF and loaded. */
ql_tok_t *fake_tiny_tok(void);

/** The id of the token whose piece is exactly the one byte `b` in `tok`, or -1. */
int32_t fake_byte_token(const ql_tok_t *tok, unsigned char b);

#endif /* QL_TEST_FAKE_BACKEND_H */
