/*
 * server/outbox.c — the engine → loop handoff (outbox.h, NOTE(outbox-links)).
 */
#include "server/outbox.h"

#include <stddef.h>

#include "core/core.h"

int ql_outbox_init(ql_outbox_t *o) {
    o->head = NULL;
    return uv_mutex_init(&o->mu) == 0 ? 0 : QL_EINTERNAL;
}

void ql_outbox_destroy(ql_outbox_t *o) { uv_mutex_destroy(&o->mu); }

void ql_outbox_lock(ql_outbox_t *o) { uv_mutex_lock(&o->mu); }
void ql_outbox_unlock(ql_outbox_t *o) { uv_mutex_unlock(&o->mu); }

int ql_outbox_link_locked(ql_outbox_t *o, ql_outbox_node_t *n) {
    if (n->linked) return 0;
    n->linked = 1;
    n->next = o->head;
    o->head = n;
    return 1;
}

int ql_outbox_take(ql_outbox_t *o, void (*fn)(ql_outbox_node_t *n, void *ud), void *ud) {
    uv_mutex_lock(&o->mu);
    /* the stack is newest first: reverse it, then hand the nodes out oldest first */
    ql_outbox_node_t *fifo = NULL;
    while (o->head) {
        ql_outbox_node_t *n = o->head;
        o->head = n->next;
        n->next = fifo;
        fifo = n;
    }
    int count = 0;
    while (fifo) {
        ql_outbox_node_t *n = fifo;
        fifo = n->next;
        n->next = NULL;
        n->linked = 0;
        fn(n, ud);
        count++;
    }
    uv_mutex_unlock(&o->mu);
    return count;
}
