/*
 * scheduler/prefix-cache.c — the chained block hash and the key -> block index of the prefix
 * cache (see prefix-cache.h). The block manager (kv-cache.c) decides what goes in.
 */
#define QL_LOG_MODULE "kv"
#include "scheduler/prefix-cache.h"

#include <stdlib.h>
#include <string.h>

/* ---- hash ---- */

/* NOTE(hash-mix): the 64-bit finaliser below is a bijection (xorshifts and odd multipliers are
 * invertible) with full avalanche: each input bit flips each output bit with probability ~1/2.
 * Chaining h = mix(h ^ (word * K)) keeps every step a bijection of h for a fixed word and of
 * the word for a fixed h, so two inputs that differ in one word never meet at that step. */
#define QL_PREFIX_K0 0x9e3779b97f4a7c15ull /* 2^64 / golden ratio, odd */
#define QL_PREFIX_K1 0xbf58476d1ce4e5b9ull
#define QL_PREFIX_K2 0x94d049bb133111ebull

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= QL_PREFIX_K1;
    x ^= x >> 27;
    x *= QL_PREFIX_K2;
    x ^= x >> 31;
    return x;
}

uint64_t ql_prefix_root_key(uint64_t seed) {
    return mix64(seed ^ 0x5175696c6c4b5630ull /* "QuillKV0" */);
}

uint64_t ql_prefix_hash(uint64_t parent_key, const int32_t *tokens, int32_t n_tokens) {
    /* the length goes in first, so [a] and [a, 0] differ even though the last word is padded */
    uint64_t h = mix64(parent_key ^ ((uint64_t)(uint32_t)n_tokens * QL_PREFIX_K0));
    int32_t i = 0;
    for (; i + 1 < n_tokens; i += 2) {
        uint64_t w = (uint64_t)(uint32_t)tokens[i] | ((uint64_t)(uint32_t)tokens[i + 1] << 32);
        h = mix64(h ^ (w * QL_PREFIX_K0));
    }
    if (i < n_tokens) h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] * QL_PREFIX_K0));
    return h;
}

/* ---- index ---- */

static inline uint64_t home_slot(const ql_prefix_index_t *ix, uint64_t key) {
    /* the high bits of a multiply: even a test hash with poor low bits spreads out */
    return (key * QL_PREFIX_K0 >> 32) & ix->_mask;
}

int ql_prefix_index_init(ql_prefix_index_t *ix, int32_t n_entries_max) {
    if (!ix || n_entries_max < 1) return QL_EINVAL;
    memset(ix, 0, sizeof(*ix));
    uint64_t cap = 2;
    while (cap < 2 * (uint64_t)n_entries_max) cap <<= 1; /* n_entries_max < 2^31: no overflow */
    size_t bytes_keys, bytes_blocks;
    if (ql_size_mul((size_t)cap, sizeof(uint64_t), &bytes_keys) != 0 ||
        ql_size_mul((size_t)cap, sizeof(int32_t), &bytes_blocks) != 0)
        return QL_ENOMEM;
    ix->_keys = malloc(bytes_keys);
    ix->_blocks = malloc(bytes_blocks);
    if (!ix->_keys || !ix->_blocks) {
        ql_prefix_index_free(ix);
        return QL_ENOMEM;
    }
    memset(ix->_keys, 0, bytes_keys);
    memset(ix->_blocks, 0xff, bytes_blocks); /* -1 everywhere: empty */
    ix->_mask = cap - 1;
    ix->_n = 0;
    ix->_n_max = n_entries_max;
    return 0;
}

void ql_prefix_index_free(ql_prefix_index_t *ix) {
    if (!ix) return;
    free(ix->_keys);
    free(ix->_blocks);
    ix->_keys = NULL;
    ix->_blocks = NULL;
    ix->_n = 0;
}

void ql_prefix_index_insert(ql_prefix_index_t *ix, uint64_t key, int32_t block) {
    /* note: call only if fewer than n_entries_max entries are in use */
    QL_ASSERT(ix->_n < ix->_n_max);
    QL_ASSERT(block >= 0);
    uint64_t s = home_slot(ix, key);
    while (ix->_blocks[s] >= 0) s = (s + 1) & ix->_mask; /* load <= 1/2: ends */
    ix->_keys[s] = key;
    ix->_blocks[s] = block;
    ix->_n++;
}

int ql_prefix_index_remove(ql_prefix_index_t *ix, uint64_t key, int32_t block) {
    uint64_t s = home_slot(ix, key);
    for (;; s = (s + 1) & ix->_mask) {
        if (ix->_blocks[s] < 0) return QL_ENOENT;
        if (ix->_blocks[s] == block && ix->_keys[s] == key) break;
    }
    /* NOTE(backward-shift): instead of a tombstone, move later members of the probe run back
     * into the hole when their home slot does not lie cyclically in (hole, slot]; lookups then
     * stop at the first empty slot as if the entry had never been inserted. */
    uint64_t hole = s;
    for (uint64_t j = (s + 1) & ix->_mask; ix->_blocks[j] >= 0; j = (j + 1) & ix->_mask) {
        uint64_t h = home_slot(ix, ix->_keys[j]);
        int stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
        if (stays) continue;
        ix->_keys[hole] = ix->_keys[j];
        ix->_blocks[hole] = ix->_blocks[j];
        hole = j;
    }
    ix->_blocks[hole] = -1;
    ix->_keys[hole] = 0;
    ix->_n--;
    return 0;
}

int32_t ql_prefix_index_next(const ql_prefix_index_t *ix, uint64_t key, uint64_t *cursor) {
    uint64_t home = home_slot(ix, key);
    for (uint64_t i = *cursor; i <= ix->_mask; i++) {
        uint64_t s = (home + i) & ix->_mask;
        if (ix->_blocks[s] < 0) {
            *cursor = i;
            return -1;
        }
        if (ix->_keys[s] == key) {
            *cursor = i + 1;
            return ix->_blocks[s];
        }
    }
    *cursor = ix->_mask + 1; /* unreachable at load <= 1/2; stay finite anyway */
    return -1;
}

int32_t ql_prefix_index_size(const ql_prefix_index_t *ix) { return ix->_n; }
