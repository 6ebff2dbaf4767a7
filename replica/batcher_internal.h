/*
 * The batcher's private parts, shared by the files that implement replica/batcher.h
 * and by nothing else. The public header promises a queue, a batcher thread and a
 * compute section; this one shows what they are made of, so that each file can own
 * one responsibility and still reach the state it works on:
 *
 *     batcher.c           life cycle, the batcher and compute threads, drain and cut
 *     batcher_validate.c  an infer request checked against the model (wire to breq)
 *     batcher_queue.c     admission and the priority queues: submit, deadlines, which
 *                         group runs next (size, delay, priority, arrival order)
 *     batcher_pad.c       padding requests into a bucket (gather) and cutting the
 *                         outputs back per request (scatter)
 *     batcher_reply.c     replies: packing, preserve_ordering, delivery, failures
 *     batcher_warmup.c    every bucket planned and run once; the stall limit
 *     batcher_health.c    liveness, readiness and statistics
 *
 * Locking: `mu` guards the queues, the outstanding list, the slot states and the
 * statistics; a function whose comment says "mu held" expects its caller to hold it.
 * The atomics in struct batcher are read without mu by the health check. Fields of a
 * queued request below `rows` belong to the batcher thread.
 */
#ifndef CORRAL_REPLICA_BATCHER_INTERNAL_H
#define CORRAL_REPLICA_BATCHER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "batcher.h"

/* The stall limit never goes below this, however fast the slowest bucket ran. */
#define STALL_FLOOR_MS 300

/* One queued infer request. Only the batcher thread touches the fields below
 * `rows` once the request is queued; the queue links are guarded by mu. */
struct breq {
    Corral__Request *msg; /* owned */
    void *owner;
    /* Views into msg, in model input order, and the request's own outputs: n_in and
     * n_out entries placed after the struct, so that a request costs what the model
     * needs rather than MODEL_MAX_IO tensors to clear and release. */
    struct tensor *in, *out;
    size_t n_out;
    int64_t rows;                   /* batch axis size (0 when not batching) */
    int64_t key[MODEL_MAX_VAR_DIMS];/* padded size per variable dimension */
    uint64_t out_mask;
    int prio;                       /* 0 = highest */
    uint64_t seq, enq_ns, deadline_ns, stall_ms;
    /* Reported to the router in the reply's parameters (corral_queue_us, corral_compute_us). */
    int64_t queue_us, compute_us;
    int64_t taken;                  /* rows handed to batches (guarded by mu) */
    int64_t done_rows;              /* rows whose outputs are in */
    int queued;                     /* linked in a priority queue (guarded by mu) */
    int started;                    /* queue time already counted */
    int failed;
    struct cerr err;
    enum batcher_reject why;
    uint8_t *reply;
    size_t reply_len;
    int finished;
    struct breq *qprev, *qnext;     /* priority queue */
    struct breq *fdone;             /* list of requests finish_list completes */
    struct breq *oprev, *onext;     /* outstanding list in arrival order */
};

/* One request's share of a batch: rows [row0, row0 + rows) of the request placed at
 * batch row brow. A request larger than a batch has a part in each of several. */
struct bpart {
    struct breq *r;
    int64_t row0, rows, brow; /* request rows [row0, row0+rows) at batch row brow */
};

/* A slot is one batch in the making. FREE: unused; READY: formed and padded, waiting
 * for compute; RUNNING: taken by the batcher thread or by compute; DONE: outputs in,
 * waiting for scatter. The input buffers stay with the slot from batch to batch. */
enum slot_state { SLOT_FREE, SLOT_READY, SLOT_RUNNING, SLOT_DONE };

struct slot {
    enum slot_state state;
    uint64_t order;              /* formation order, so compute takes slots in turn */
    size_t n_parts;
    struct bpart *parts;         /* max(max_batch_size, 1) entries */
    int64_t rows, bucket_rows;
    int64_t key[MODEL_MAX_VAR_DIMS];
    struct tensor in[MODEL_MAX_IO];
    void *buf[MODEL_MAX_IO];
    size_t cap[MODEL_MAX_IO];
    struct tensor out[MODEL_MAX_IO];
    int rc;
    int skipped;                 /* every request expired: the engine did not run */
    int cut;                     /* the drain was cut before the engine ran: EDRAINING */
    struct cerr err;
    uint64_t stall_ms;
    uint64_t t_compute0, t_compute1;
    uint64_t real_el, padded_el;
};

/* Queued requests that may share one engine run (same key, same outputs), found while
 * choosing what runs next: head is the oldest of the highest priority. */
struct group {
    int64_t key[MODEL_MAX_VAR_DIMS];
    uint64_t out_mask;
    struct breq *head;
    int64_t rows;
};

struct batcher {
    struct engine *eng;
    const struct model_config *cfg;
    const struct model_batching *bc;
    struct batcher_options opt;
    batcher_reply_fn reply;
    int batching;      /* max_batch_size > 0 */
    size_t n_in, n_out;
    size_t n_slots;
    struct slot slots[2];

    pthread_mutex_t mu;
    pthread_cond_t cv_batch, cv_compute;
    pthread_cond_t cv_idle; /* on the monotonic clock: the last outstanding request left */
    pthread_t th_batch, th_compute;
    int started_batch, started_compute;
    int stopping, warmed;
    /* Draining refuses new requests; cut (read without mu by the test stall) also ends
     * the work still accepted. The texts go into the answers. */
    int draining;
    atomic_int cut;
    char drain_cause[32], cut_why[160];
    size_t outstanding;   /* accepted and not yet answered (linked on ohead..otail) */
    struct breq *qhead[MODEL_MAX_PRIORITY], *qtail[MODEL_MAX_PRIORITY];
    size_t depth;
    int64_t queued_rows;  /* rows waiting in the queue (not yet taken into a batch) */
    /* The batcher thread is waiting on cv_batch: until sleep_until (0: no timer), and
     * with a free batch buffer or not. A submit wakes it only when the new request can
     * change what it does: the first request, a full batch's worth of rows, or an
     * earlier deadline. One futex wake per request would cost more than the request. */
    int sleeping, sleep_slot_free;
    uint64_t sleep_until;
    struct breq *ohead, *otail;
    uint64_t next_seq, next_order, compute_order;
    struct batcher_stats st;

    int64_t stall_ms;
    _Atomic uint64_t compute_since_ns; /* start of the running batch, 0 when idle */
    /* The slowest engine time per input element seen so far (warm-up and real runs), in
     * picoseconds, and what the running batch may therefore take, in nanoseconds. */
    _Atomic uint64_t ps_per_elem;
    _Atomic uint64_t compute_expect_ns;
    _Atomic uint64_t batch_beat_ns;    /* last time the batcher thread went round */
};

static inline uint64_t batcher_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The smallest of the n increasing buckets b that holds v, or -1 when none does. */
static inline int64_t batcher_pick_bucket(const int64_t *b, size_t n, int64_t v)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] >= v)
            return b[i];
    return -1;
}

/* Adds a complete request to the list batcher_finish_list takes. */
static inline void batcher_done_push(struct breq ***tail, struct breq *r)
{
    **tail = r;
    *tail = &r->fdone;
}

/* batcher_validate.c: checks one request against the model and fills r's views, key
 * and policy fields; *why says how a refusal is counted. */
int batcher_validate(struct batcher *b, struct breq *r, enum batcher_reject *why, struct cerr *e);

/* batcher_queue.c (mu held). */
void batcher_q_unlink(struct batcher *b, struct breq *r);
struct breq *batcher_q_take_all(struct batcher *b);
int batcher_slot_busy(const struct batcher *b);
uint64_t batcher_reap_expired(struct batcher *b, uint64_t now, struct breq **out);
int batcher_choose_group(struct batcher *b, uint64_t now, struct group *g, uint64_t *wake_ns);
void batcher_take_rows(struct batcher *b, const struct group *g, struct slot *s, uint64_t now);

/* batcher_pad.c (batcher or compute thread, mu not held). */
/* Sets slot input i up in the shape of the bucket the slot runs (s->bucket_rows and
 * s->key), over the slot's own buffer, grown when it is too small; contents undefined. */
int batcher_bucket_input(const struct batcher *b, struct slot *s, size_t i, struct cerr *e);
int batcher_gather(struct batcher *b, struct slot *s, struct cerr *e);
int batcher_scatter_part(struct batcher *b, struct slot *s, const struct bpart *pt, struct cerr *e);

/* batcher_reply.c (batcher thread, mu not held). */
void batcher_breq_free(struct breq *r);
void batcher_fail_req(struct batcher *b, struct breq *r, enum batcher_reject why, int code,
                      const char *msg);
void batcher_finish_list(struct batcher *b, struct breq *done);
void batcher_abandon(struct batcher *b, struct breq *list, enum batcher_reject why, int code,
                     const char *msg);

/* batcher_health.c: run times that set the liveness limits. */
uint64_t batcher_input_elems(const struct tensor *in, size_t n);
void batcher_note_run_time(struct batcher *b, uint64_t elems, uint64_t ns);

#endif
