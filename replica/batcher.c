/*
 * The batcher's core: its life cycle and the two threads that move batches along.
 * A batch lives in one of two slots; the batcher thread takes a free slot, fills it
 * from the queue (batcher_queue.c) and pads it (batcher_pad.c), the compute section
 * runs the engine on it, and the batcher thread scatters the outputs and answers the
 * requests (batcher_reply.c). With `overlap` the compute section has a thread of its
 * own, so the engine runs one slot while the batcher thread fills or empties the
 * other; without it the batcher thread does the three steps in turn. Slots are taken
 * by compute in the order they were formed, so requests of one priority leave in the
 * order they came.
 *
 * Draining and cutting live here as well, since both are decisions of the batcher
 * thread: a drain only stops new work from entering (batcher_submit refuses it) and
 * lets partial batches go at once; a cut also answers what has not reached the
 * engine. Health, statistics and warm-up, which only read or prepare this state, have
 * their own files (see batcher_internal.h for the map).
 */
#include "batcher_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sleep_ms_interruptible(struct batcher *b, uint64_t ms)
{
    uint64_t end = batcher_now_ns() + ms * 1000000u;
    while (batcher_now_ns() < end) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&b->mu);
        int stop = b->stopping;
        pthread_mutex_unlock(&b->mu);
        if (stop || atomic_load(&b->cut))
            return;
    }
}

/* The compute section: the engine run (and the test stall), nothing else. */
static void compute(struct batcher *b, struct slot *s)
{
    uint64_t now = batcher_now_ns();
    uint64_t elems = batcher_input_elems(s->in, b->n_in);
    atomic_store(&b->compute_expect_ns, elems * atomic_load(&b->ps_per_elem) / 1000u);
    atomic_store(&b->compute_since_ns, now);
    memset(s->out, 0, sizeof s->out);
    s->t_compute0 = now;
    /* The test stall stands for an engine run that does not come back; the deadline check
     * below uses the time this section was entered, so the stall does not expire the very
     * batch it holds up. */
    if (s->stall_ms)
        sleep_ms_interruptible(b, s->stall_ms);
    /* Requests whose deadline passed while the batch waited are not run late (scatter
     * answers them with a timeout); when all of them expired the engine is not run. A
     * cut drain does not start the engine either: the replica is leaving. */
    int live = 0;
    s->cut = atomic_load(&b->cut);
    for (size_t k = 0; !s->cut && k < s->n_parts; k++)
        live |= !s->parts[k].r->deadline_ns || now < s->parts[k].r->deadline_ns;
    s->skipped = !live;
    uint64_t t_run = batcher_now_ns();
    s->rc = live ? engine_run(b->eng, s->in, b->n_in, s->out, &s->err) : CORRAL_OK;
    s->t_compute1 = batcher_now_ns();
    atomic_store(&b->compute_since_ns, 0);
    if (live && s->rc == CORRAL_OK)
        batcher_note_run_time(b, elems, s->t_compute1 - t_run);
}

/* After compute: hands every part its rows (or the batch's error) and finishes requests. */
static void scatter(struct batcher *b, struct slot *s)
{
    uint64_t t0 = batcher_now_ns();
    /* Counted before any reply leaves, so that a client reading the statistics after its
     * answer sees the batch that produced it. */
    pthread_mutex_lock(&b->mu);
    if (!s->skipped) {
        b->st.batches++;
        b->st.rows += (uint64_t)s->rows;
        b->st.compute_us += (s->t_compute1 - s->t_compute0) / 1000u;
        b->st.real_elements += s->real_el;
        b->st.padded_elements += s->padded_el;
        int64_t bin = s->rows - 1;
        if (bin >= (int64_t)b->st.n_hist)
            bin = (int64_t)b->st.n_hist - 1;
        b->st.hist[bin]++;
    }
    pthread_mutex_unlock(&b->mu);
    struct breq *done = NULL, **dtail = &done;
    for (size_t k = 0; k < s->n_parts; k++) {
        const struct bpart *pt = &s->parts[k];
        struct breq *r = pt->r;
        struct cerr e = {0};
        if (s->cut)
            batcher_fail_req(b, r, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING, b->cut_why);
        else if (r->deadline_ns && s->t_compute0 >= r->deadline_ns)
            batcher_fail_req(b, r, BATCHER_REJECT_TIMEOUT, CORRAL_ETIMEDOUT,
                             "deadline passed while the request waited in the queue; it was not run");
        else if (s->rc)
            batcher_fail_req(b, r, BATCHER_REJECT_COMPUTE, s->rc, s->err.msg);
        else if (!r->failed && batcher_scatter_part(b, s, pt, &e))
            batcher_fail_req(b, r, BATCHER_REJECT_COMPUTE, e.code, e.msg);
        r->done_rows += pt->rows;
        if (!s->skipped)
            r->compute_us += (int64_t)((s->t_compute1 - s->t_compute0) / 1000u);
        /* A request appears once per batch, so it is complete at most once here. */
        if (r->done_rows == r->rows)
            batcher_done_push(&dtail, r);
    }
    *dtail = NULL;
    batcher_finish_list(b, done);
    for (size_t j = 0; j < b->n_out; j++)
        tensor_release(&s->out[j]);
    uint64_t t1 = batcher_now_ns();
    pthread_mutex_lock(&b->mu);
    b->st.scatter_us += (t1 - t0) / 1000u;
    pthread_mutex_unlock(&b->mu);
}

/* ---- threads ---------------------------------------------------------------------------- */

static void *compute_main(void *arg)
{
    struct batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        struct slot *s = NULL;
        for (size_t i = 0; i < b->n_slots; i++)
            if (b->slots[i].state == SLOT_READY && b->slots[i].order == b->compute_order)
                s = &b->slots[i];
        if (!s) {
            if (b->stopping)
                break;
            pthread_cond_wait(&b->cv_compute, &b->mu);
            continue;
        }
        s->state = SLOT_RUNNING;
        b->compute_order++;
        pthread_mutex_unlock(&b->mu);
        compute(b, s);
        pthread_mutex_lock(&b->mu);
        s->state = SLOT_DONE;
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static void *batch_main(void *arg)
{
    struct batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        uint64_t now = batcher_now_ns();
        atomic_store(&b->batch_beat_ns, now);
        if (atomic_load(&b->cut) && b->depth) {
            /* The drain was cut: nothing queued will run. cut_why is written before cut
             * is raised and never again. */
            struct breq *left = batcher_q_take_all(b);
            pthread_mutex_unlock(&b->mu);
            batcher_abandon(b, left, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING, b->cut_why);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        struct breq *expired = NULL;
        uint64_t next_deadline = batcher_reap_expired(b, now, &expired);
        struct slot *done = NULL, *freeslot = NULL;
        for (size_t i = 0; i < b->n_slots; i++) {
            if (b->slots[i].state == SLOT_DONE && !done)
                done = &b->slots[i];
            if (b->slots[i].state == SLOT_FREE && !freeslot)
                freeslot = &b->slots[i];
        }
        if (expired || done) {
            pthread_mutex_unlock(&b->mu);
            batcher_abandon(b, expired, BATCHER_REJECT_TIMEOUT, CORRAL_ETIMEDOUT,
                            "deadline passed while the request waited in the queue; it was not run");
            if (done) {
                scatter(b, done);
                pthread_mutex_lock(&b->mu);
                done->state = SLOT_FREE;
            } else {
                pthread_mutex_lock(&b->mu);
            }
            continue;
        }
        if (b->stopping && !batcher_slot_busy(b))
            break;
        struct group g;
        uint64_t wake = 0;
        if (!b->stopping && !atomic_load(&b->cut) && freeslot &&
            batcher_choose_group(b, now, &g, &wake)) {
            batcher_take_rows(b, &g, freeslot, now);
            freeslot->state = SLOT_RUNNING; /* neither free nor visible to compute yet */
            pthread_mutex_unlock(&b->mu);
            uint64_t t0 = batcher_now_ns();
            int rc = batcher_gather(b, freeslot, &freeslot->err);
            uint64_t t1 = batcher_now_ns();
            if (rc) {
                freeslot->rc = rc;
                freeslot->skipped = 1;
                freeslot->t_compute0 = freeslot->t_compute1 = t1;
            } else if (!b->opt.overlap) {
                compute(b, freeslot);
            }
            pthread_mutex_lock(&b->mu);
            b->st.gather_us += (t1 - t0) / 1000u;
            if (rc || !b->opt.overlap) {
                freeslot->state = SLOT_DONE;
            } else {
                freeslot->state = SLOT_READY;
                freeslot->order = b->next_order++;
                pthread_cond_signal(&b->cv_compute);
            }
            continue;
        }
        if (next_deadline && (!wake || next_deadline < wake))
            wake = next_deadline;
        b->sleeping = 1;
        b->sleep_until = wake;
        b->sleep_slot_free = freeslot != NULL && !b->stopping;
        if (wake) {
            struct timespec ts;
            /* Condition variables wait on the realtime clock; convert the monotonic target. */
            uint64_t dt = wake > now ? wake - now : 0;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + dt;
            ts.tv_sec = (time_t)(t / 1000000000u);
            ts.tv_nsec = (long)(t % 1000000000u);
            pthread_cond_timedwait(&b->cv_batch, &b->mu, &ts);
        } else {
            pthread_cond_wait(&b->cv_batch, &b->mu);
        }
        b->sleeping = 0;
    }
    /* Stopping: whatever is still queued will not run. */
    struct breq *left = batcher_q_take_all(b);
    pthread_mutex_unlock(&b->mu);
    /* Never run, so safe to send elsewhere (CONTROL-PLANE.md, rule 4). */
    batcher_abandon(b, left, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING,
                    "replica stopped before this request ran; send it to another replica");
    return NULL;
}

/* ---- life cycle ------------------------------------------------------------------------- */

int batcher_create(struct batcher **out, struct engine *eng, const struct model_config *cfg,
                   const struct batcher_options *opt, batcher_reply_fn reply, struct cerr *e)
{
    int rc = CORRAL_OK;
    struct batcher *b = calloc(1, sizeof *b);
    *out = NULL;
    if (!b)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    b->eng = eng;
    b->cfg = cfg;
    b->bc = &cfg->batching;
    b->opt = *opt;
    b->reply = reply;
    b->batching = cfg->batching.max_batch_size > 0;
    b->n_in = cfg->n_inputs;
    b->n_out = cfg->n_outputs;
    b->n_slots = opt->overlap ? 2 : 1;
    b->stall_ms = opt->stall_ms > 0 ? opt->stall_ms : STALL_FLOOR_MS;
    b->st.max_queue_size = (uint64_t)cfg->batching.max_queue_size;
    b->st.n_hist = b->batching ? (size_t)cfg->batching.max_batch_size : 64;
    if (b->st.n_hist > BATCHER_HIST_MAX)
        b->st.n_hist = BATCHER_HIST_MAX;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv_batch, NULL);
    pthread_cond_init(&b->cv_compute, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv_idle, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&b->cut, 0);
    size_t np = b->batching ? (size_t)cfg->batching.max_batch_size : 1;
    for (size_t i = 0; i < b->n_slots; i++) {
        b->slots[i].parts = calloc(np, sizeof(struct bpart));
        if (!b->slots[i].parts) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = b;
    return CORRAL_OK;
fail:
    batcher_free(b);
    return rc;
}

int batcher_start(struct batcher *b, struct cerr *e)
{
    if (!b->warmed && batcher_warmup(b, e))
        return e ? e->code : CORRAL_EINTERNAL;
    if (pthread_create(&b->th_batch, NULL, batch_main, b) != 0)
        return cerr_set(e, CORRAL_EINTERNAL, "cannot start the batcher thread");
    b->started_batch = 1;
    if (b->opt.overlap) {
        if (pthread_create(&b->th_compute, NULL, compute_main, b) != 0)
            return cerr_set(e, CORRAL_EINTERNAL, "cannot start the compute thread");
        b->started_compute = 1;
    }
    return CORRAL_OK;
}

void batcher_drain(struct batcher *b, const char *cause)
{
    pthread_mutex_lock(&b->mu);
    if (!b->draining) {
        b->draining = 1;
        snprintf(b->drain_cause, sizeof b->drain_cause, "%s", cause ? cause : "stopping");
        /* A partial batch waiting out its max_queue_delay_us goes now (batcher_choose_group). */
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
}

void batcher_cut(struct batcher *b, const char *why)
{
    pthread_mutex_lock(&b->mu);
    if (!b->draining) {
        b->draining = 1;
        snprintf(b->drain_cause, sizeof b->drain_cause, "stopping");
    }
    if (!atomic_load(&b->cut)) {
        snprintf(b->cut_why, sizeof b->cut_why, "replica drain ended (%s) before this request "
                 "ran; send it to another replica", why ? why : "cut");
        atomic_store(&b->cut, 1);
        pthread_cond_broadcast(&b->cv_batch);
        pthread_cond_broadcast(&b->cv_compute);
    }
    pthread_mutex_unlock(&b->mu);
}

size_t batcher_outstanding(struct batcher *b)
{
    pthread_mutex_lock(&b->mu);
    size_t n = b->outstanding;
    pthread_mutex_unlock(&b->mu);
    return n;
}

int batcher_wait_idle(struct batcher *b, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    while (b->outstanding && pthread_cond_timedwait(&b->cv_idle, &b->mu, &until) == 0) {
    }
    int idle = b->outstanding == 0;
    pthread_mutex_unlock(&b->mu);
    return idle;
}

void batcher_stop(struct batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stopping = 1;
    pthread_cond_broadcast(&b->cv_batch);
    pthread_cond_broadcast(&b->cv_compute);
    pthread_mutex_unlock(&b->mu);
    /* The batcher thread drains running batches before it leaves; compute then exits. */
    if (b->started_batch)
        pthread_join(b->th_batch, NULL);
    /* Under the lock: the I/O thread reads it for health answers until it stops. */
    pthread_mutex_lock(&b->mu);
    b->started_batch = 0;
    pthread_cond_broadcast(&b->cv_compute);
    pthread_mutex_unlock(&b->mu);
    if (b->started_compute)
        pthread_join(b->th_compute, NULL);
    b->started_compute = 0;
}

void batcher_free(struct batcher *b)
{
    if (!b)
        return;
    batcher_stop(b);
    for (size_t i = 0; i < b->n_slots; i++) {
        for (size_t k = 0; k < MODEL_MAX_IO; k++)
            free(b->slots[i].buf[k]);
        free(b->slots[i].parts);
    }
    /* Requests still outstanding were answered by the stopping batcher thread; any left
     * here (never started) are freed without a reply. */
    for (struct breq *o = b->ohead, *nx; o; o = nx) {
        nx = o->onext;
        batcher_breq_free(o);
    }
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv_batch);
    pthread_cond_destroy(&b->cv_compute);
    pthread_cond_destroy(&b->cv_idle);
    free(b);
}
