/*
 * What the batcher tells the outside about itself: liveness, readiness and the
 * statistics. Liveness is a judgement about time: the executor is stuck when one
 * batch has run far longer than the slowest time per input element seen so far
 * predicts for its size, or when requests wait and the batcher thread has stopped
 * going round. Those times are kept here too (batcher_note_run_time, fed by warm-up
 * and by every engine run), so the rule and its evidence read together. The health
 * check reads the atomics without the lock, so that a replica whose batcher holds mu
 * for long still answers its health probe.
 */
#include "batcher_internal.h"

#include <stdio.h>

#define FIRST_RUN_STALL_NS (10000ull * 1000000ull)

const char *batcher_reject_name(enum batcher_reject r)
{
    static const char *const names[BATCHER_REJECT_COUNT] = {
        "queue_full", "timeout", "invalid", "too_large", "unavailable", "compute", "draining"};
    return (unsigned)r < BATCHER_REJECT_COUNT ? names[r] : "unknown";
}

uint64_t batcher_input_elems(const struct tensor *in, size_t n)
{
    uint64_t elems = 0;
    for (size_t i = 0; i < n; i++) {
        size_t es = dtype_size(in[i].dtype);
        elems += es ? in[i].nbytes / es : in[i].nbytes;
    }
    return elems ? elems : 1;
}

/* Keeps the slowest time per input element, so that liveness can tell a large batch
 * that legitimately computes for a while from an executor that is stuck. */
void batcher_note_run_time(struct batcher *b, uint64_t elems, uint64_t ns)
{
    uint64_t per = ns * 1000u / elems, old = atomic_load(&b->ps_per_elem);
    while (per > old && !atomic_compare_exchange_weak(&b->ps_per_elem, &old, per))
        ;
}

void batcher_health_why(struct batcher *b, int *live, int *ready, char *why, size_t n)
{
    uint64_t now = batcher_now_ns(), lim = (uint64_t)b->stall_ms * 1000000u;
    uint64_t busy = atomic_load(&b->compute_since_ns), beat = atomic_load(&b->batch_beat_ns);
    pthread_mutex_lock(&b->mu);
    size_t depth = b->depth;
    int stopping = b->stopping, draining = b->draining, running = b->started_batch;
    pthread_mutex_unlock(&b->mu);
    if (why && n)
        why[0] = '\0';
    /* A batch may run four times longer than the slowest time per element seen says
     * it should; before any run has been timed, a generous first-run allowance applies. */
    uint64_t expect = atomic_load(&b->compute_expect_ns);
    uint64_t run_lim = atomic_load(&b->ps_per_elem) ? lim + 4 * expect
                       : (lim > FIRST_RUN_STALL_NS ? lim : FIRST_RUN_STALL_NS);
    int l = !(busy && now - busy > run_lim);
    if (!l && why && n)
        snprintf(why, n, "the executor has computed one batch for %llu ms, past its stall limit "
                 "of %llu ms", (unsigned long long)((now - busy) / 1000000u),
                 (unsigned long long)(run_lim / 1000000u));
    /* The batcher thread sleeps at most max_queue_delay_us while requests wait. */
    uint64_t slack = lim + (uint64_t)b->bc->max_queue_delay_us * 1000u;
    if (l && depth > 0 && beat && now - beat > slack && !busy) {
        l = 0;
        if (why && n)
            snprintf(why, n, "%zu requests have waited %llu ms with no batch formed, past the "
                     "stall limit of %llu ms", depth, (unsigned long long)((now - beat) / 1000000u),
                     (unsigned long long)(slack / 1000000u));
    }
    *live = l;
    *ready = l && b->warmed && running && !stopping && !draining;
}

void batcher_health(struct batcher *b, int *live, int *ready)
{
    batcher_health_why(b, live, ready, NULL, 0);
}

void batcher_get_stats(struct batcher *b, struct batcher_stats *s)
{
    pthread_mutex_lock(&b->mu);
    *s = b->st;
    s->queue_depth = b->depth;
    pthread_mutex_unlock(&b->mu);
}

int64_t batcher_stall_ms(const struct batcher *b) { return b->stall_ms; }
