/*
 * server/outbox.h — the handoff from the engine thread to the loop: producers append to a
 * node's data and link the node, both under the outbox lock; the loop takes every linked node,
 * oldest first, under the same lock.
 *
 * NOTE(outbox-links): a node's link belongs to the lock. Once the lock is released a producer
 * may link the node again, so nothing may follow or write `next` outside it: ql_outbox_take
 * hands each node to its callback with the lock held and the node already unlinked, and the
 * callback moves what it needs onto lists of the loop's own (their own link fields). Reading
 * the taken chain after unlocking lost nodes and, worse, put finished requests' nodes back on
 * the outbox after they were freed (a use after free in `quill serve` under load).
 * tests/unit/server/test-outbox.c checks the contract with a producer thread; the churn test
 * in tests/integration/test_load.py failed on every run against the old loop.
 */
#ifndef QL_SERVER_OUTBOX_H
#define QL_SERVER_OUTBOX_H

#include <uv.h>

typedef struct ql_outbox_node_s {
    struct ql_outbox_node_s *next; /* guarded by the outbox lock */
    int linked;                    /* guarded by the outbox lock */
} ql_outbox_node_t;

typedef struct ql_outbox_s {
    uv_mutex_t mu;
    ql_outbox_node_t *head; /* newest first */
} ql_outbox_t;

/** Returns 0 or QL_EINTERNAL (the mutex could not be made). */
int ql_outbox_init(ql_outbox_t *o);
void ql_outbox_destroy(ql_outbox_t *o);

void ql_outbox_lock(ql_outbox_t *o);
void ql_outbox_unlock(ql_outbox_t *o);

/** Links `n` unless it is linked already. note: call with the lock held. Returns 1 when it was
 * linked now, 0 when it already was. */
int ql_outbox_link_locked(ql_outbox_t *o, ql_outbox_node_t *n);

/** Calls fn(node, ud) for every linked node, oldest link first, and unlinks them; the lock is
 * held throughout, so fn may read what producers wrote under it and must not take it (nor link
 * nodes of this outbox). Returns how many nodes were taken. */
int ql_outbox_take(ql_outbox_t *o, void (*fn)(ql_outbox_node_t *n, void *ud), void *ud);

#endif
