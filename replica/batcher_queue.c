/*
 * Admission and the queue policies. batcher_submit takes a validated request in or
 * refuses it (draining, stopping, queue full); admitted requests wait in one FIFO per
 * priority level. The batcher thread then asks, under the lock, what should run next:
 * expired requests come out first (their deadline passed in the queue, so running
 * them would only waste the engine), then the first group, in priority-then-arrival
 * order of its oldest request, that fills a batch or whose oldest request has waited
 * max_queue_delay_us. A group is the set of requests that can share one engine run:
 * the same padded size in every variable dimension and the same requested outputs.
 * Rows of a large request may be split over several batches; the queue keeps track
 * of the rows already taken.
 *
 * Every function here but batcher_submit expects the caller to hold mu.
 */
#include "batcher_internal.h"

#include <stdlib.h>
#include <string.h>

void batcher_q_unlink(struct batcher *b, struct breq *r)
{
    if (r->qprev)
        r->qprev->qnext = r->qnext;
    else
        b->qhead[r->prio] = r->qnext;
    if (r->qnext)
        r->qnext->qprev = r->qprev;
    else
        b->qtail[r->prio] = r->qprev;
    r->qprev = r->qnext = NULL;
    r->queued = 0;
    b->depth--;
    b->queued_rows -= r->rows - r->taken;
}

/* Unlinks every queued request and returns them as a list linked through qnext. */
struct breq *batcher_q_take_all(struct batcher *b)
{
    struct breq *left = NULL;
    for (int p = 0; p < b->bc->priority_levels; p++)
        while (b->qhead[p]) {
            struct breq *r = b->qhead[p];
            batcher_q_unlink(b, r);
            r->qnext = left;
            left = r;
        }
    return left;
}

int batcher_submit(struct batcher *b, Corral__Request *req, void *owner, struct cerr *e)
{
    enum batcher_reject why;
    int rc;
    struct breq *r = calloc(1, sizeof *r + (b->n_in + b->n_out) * sizeof(struct tensor));
    if (!r) {
        pthread_mutex_lock(&b->mu);
        b->st.requests++;
        b->st.rejected[BATCHER_REJECT_UNAVAILABLE]++;
        pthread_mutex_unlock(&b->mu);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    }
    r->in = (struct tensor *)(r + 1);
    r->out = r->in + b->n_in;
    r->n_out = b->n_out;
    r->msg = req;
    r->owner = owner;
    rc = batcher_validate(b, r, &why, e);
    pthread_mutex_lock(&b->mu);
    b->st.requests++;
    if (!rc && b->stopping) {
        /* Read from the socket after the drain ended: never run, so the router may send
         * it elsewhere like any request a draining replica refuses (rule 3). */
        why = BATCHER_REJECT_DRAINING;
        rc = cerr_set(e, CORRAL_EDRAINING, "replica is stopping; send the request to another "
                      "replica");
    } else if (!rc && b->draining) {
        /* Distinct from EUNAVAIL: the router sends it again elsewhere, as it would after a
         * transport failure, since this replica never ran it. */
        why = BATCHER_REJECT_DRAINING;
        rc = cerr_set(e, CORRAL_EDRAINING, "replica is draining (%s); send the request to "
                      "another replica", b->drain_cause);
    } else if (!rc && b->depth >= (size_t)b->bc->max_queue_size) {
        why = BATCHER_REJECT_QUEUE_FULL;
        rc = cerr_set(e, CORRAL_EQUEUEFULL, "replica queue is full (%lld requests waiting), retry later",
                      (long long)b->bc->max_queue_size);
    }
    if (rc) {
        b->st.rejected[why]++;
        pthread_mutex_unlock(&b->mu);
        r->msg = NULL; /* the caller keeps the request */
        batcher_breq_free(r);
        return rc;
    }
    r->seq = b->next_seq++;
    r->queued = 1;
    r->qprev = b->qtail[r->prio];
    if (r->qprev)
        r->qprev->qnext = r;
    else
        b->qhead[r->prio] = r;
    b->qtail[r->prio] = r;
    r->oprev = b->otail;
    if (b->otail)
        b->otail->onext = r;
    else
        b->ohead = r;
    b->otail = r;
    b->outstanding++;
    b->depth++;
    b->queued_rows += r->rows;
    int64_t cap = b->batching ? b->bc->max_batch_size : 1;
    int wake = b->sleeping &&
               ((b->sleep_slot_free && (b->depth == 1 || b->queued_rows >= cap)) ||
                (r->deadline_ns && (!b->sleep_until || r->deadline_ns < b->sleep_until)));
    if (wake) {
        b->sleeping = 0;
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
    return CORRAL_OK;
}

int batcher_slot_busy(const struct batcher *b)
{
    for (size_t i = 0; i < b->n_slots; i++)
        if (b->slots[i].state == SLOT_READY || b->slots[i].state == SLOT_RUNNING)
            return 1;
    return 0;
}

/*
 * Unlinks every queued request whose deadline has passed onto *out and returns
 * the earliest deadline still ahead (0: none), so the batcher thread wakes for it
 * even while both batch buffers are busy.
 */
uint64_t batcher_reap_expired(struct batcher *b, uint64_t now, struct breq **out)
{
    uint64_t next = 0;
    for (int p = 0; p < b->bc->priority_levels; p++)
        for (struct breq *r = b->qhead[p], *nx; r; r = nx) {
            nx = r->qnext;
            if (!r->deadline_ns)
                continue;
            if (now >= r->deadline_ns) {
                batcher_q_unlink(b, r);
                r->qnext = *out;
                *out = r;
            } else if (!next || r->deadline_ns < next) {
                next = r->deadline_ns;
            }
        }
    return next;
}

static int same_group(const struct batcher *b, const struct breq *r, const int64_t *key, uint64_t mask)
{
    return r->out_mask == mask &&
           memcmp(r->key, key, sizeof(int64_t) * b->bc->n_var_dims) == 0;
}

/*
 * Picks what to run next. Groups are visited in priority-then-arrival order of
 * their oldest request; the first that fills a batch, or whose oldest request
 * has waited max_queue_delay_us, is dispatched. With a delay of 0 a partial
 * batch waits only while the compute section is busy, so requests that arrive
 * meanwhile join it. Returns 1 with *g filled, or 0 and *wake_ns (the next time
 * a group's delay runs out, 0 = none).
 */
int batcher_choose_group(struct batcher *b, uint64_t now, struct group *g, uint64_t *wake_ns)
{
    enum { MAX_GROUPS = 32 };
    struct group gs[MAX_GROUPS];
    size_t ng = 0;
    int64_t cap = b->batching ? b->bc->max_batch_size : 1;
    uint64_t delay = (uint64_t)b->bc->max_queue_delay_us * 1000u;
    int busy = batcher_slot_busy(b);
    *wake_ns = 0;
    for (int p = 0; p < b->bc->priority_levels; p++)
        for (struct breq *r = b->qhead[p]; r; r = r->qnext) {
            if (!b->batching) {
                if (ng == 0) {
                    memset(&gs[0], 0, sizeof gs[0]);
                    gs[0].head = r;
                    gs[0].rows = 1;
                    ng = 1;
                }
                continue;
            }
            size_t k;
            for (k = 0; k < ng; k++)
                if (same_group(b, r, gs[k].key, gs[k].out_mask))
                    break;
            if (k == ng) {
                if (ng == MAX_GROUPS)
                    continue;
                memcpy(gs[k].key, r->key, sizeof r->key);
                gs[k].out_mask = r->out_mask;
                gs[k].head = r;
                gs[k].rows = 0;
                ng++;
            }
            gs[k].rows += r->rows - r->taken;
        }
    for (size_t k = 0; k < ng; k++) {
        uint64_t due = gs[k].head->enq_ns + delay;
        /* While draining no request can join a partial batch, so waiting for one only
         * delays the exit. */
        int full = gs[k].rows >= cap || b->draining;
        if (full || (now >= due && (delay > 0 || !busy))) {
            *g = gs[k];
            return 1;
        }
        if (delay > 0 && (!*wake_ns || due < *wake_ns))
            *wake_ns = due;
    }
    return 0;
}

/* Moves rows of group g's requests into slot s, highest priority and oldest first. */
void batcher_take_rows(struct batcher *b, const struct group *g, struct slot *s, uint64_t now)
{
    int64_t cap = b->batching ? b->bc->max_batch_size : INT64_MAX;
    s->n_parts = 0;
    s->rows = 0;
    s->stall_ms = 0;
    memcpy(s->key, g->key, sizeof s->key);
    for (int p = 0; p < b->bc->priority_levels && s->rows < cap; p++)
        for (struct breq *r = b->qhead[p], *nx; r && s->rows < cap; r = nx) {
            nx = r->qnext;
            if (b->batching && !same_group(b, r, g->key, g->out_mask))
                continue;
            if (!b->batching && r != g->head)
                continue;
            int64_t n = r->rows - r->taken;
            if (n > cap - s->rows)
                n = cap - s->rows;
            struct bpart *pt = &s->parts[s->n_parts++];
            pt->r = r;
            pt->row0 = r->taken;
            pt->rows = n;
            pt->brow = s->rows;
            s->rows += n;
            r->taken += n;
            b->queued_rows -= n;
            if (!r->started) {
                r->started = 1;
                r->queue_us = (int64_t)((now - r->enq_ns) / 1000u);
                b->st.queue_us += (now - r->enq_ns) / 1000u;
            }
            if (r->stall_ms > s->stall_ms)
                s->stall_ms = r->stall_ms;
            if (!b->batching || r->taken == r->rows)
                batcher_q_unlink(b, r);
            if (!b->batching)
                return;
        }
}
