/*
 * The replica's dynamic batcher: infer requests from the server's connections enter
 * one queue per priority level; a batcher thread groups compatible requests
 * (same padded sizes in every variable dimension, same requested outputs),
 * pads them into the smallest bucket that holds the batch, hands the batch to
 * the compute section, then cuts each request's outputs back to its own shape
 * and replies. A model whose config has max_batch_size 0 goes through the same
 * queue policies, but each request runs alone and unpadded.
 *
 * Usage:
 *     struct batcher *b;
 *     batcher_create(&b, eng, cfg, &opt, reply_fn, &e);
 *     batcher_warmup(b, &e);          // every bucket runs once; sets the stall limit
 *     batcher_start(b, &e);           // threads
 *     // on the server's I/O thread, for each decoded infer Request:
 *     if (batcher_submit(b, req, owner, &e))  // refused: caller answers e, frees req
 *     // otherwise reply_fn(owner, buf, len) is called exactly once, later, from a
 *     // batcher thread with no lock held, and the batcher frees req.
 *     batcher_stop(b);                // answers what is still queued with EUNAVAIL
 *     batcher_free(b);
 *
 * Draining (a replica told to stop): batcher_drain(b, "SIGTERM") refuses every
 * later submit with CORRAL_EDRAINING while everything accepted runs as usual;
 * batcher_wait_idle(b, ms) waits for the last of those answers. batcher_cut(b,
 * why) ends a drain early: what is still queued, and batches whose compute has
 * not begun (or is in the test stall), are answered CORRAL_EDRAINING; an engine
 * run already under way finishes and its requests get their results.
 *
 * Threads: submit, health and stats may be called from any thread. With
 * `overlap`, a separate compute thread runs the engine while the batcher
 * thread gathers the next batch and scatters the previous one; without it the
 * batcher thread does all three in turn. The engine and config are borrowed.
 *
 * Request parameters read from InferRequest.parameters: "timeout" (µs, may only
 * shorten the model's default_timeout_us), "priority" (1 = highest), and with
 * the test hooks enabled "corral_test_stall_ms" (the compute section sleeps
 * that long while running the request's batch: for tests of liveness and
 * queue policy only).
 */
#ifndef CORRAL_REPLICA_BATCHER_H
#define CORRAL_REPLICA_BATCHER_H

#include <stddef.h>
#include <stdint.h>

#include "corral.pb-c.h"
#include "engine.h"
#include "error.h"
#include "model_repo.h"

struct batcher;

/* Receives the packed Response for one submitted request; owns buf afterwards. */
typedef void (*batcher_reply_fn)(void *owner, uint8_t *buf, size_t len);

struct batcher_options {
    int overlap;       /* compute on its own thread, overlapping gather and scatter */
    int test_hooks;    /* honour the corral_test_stall_ms request parameter */
    int64_t stall_ms;  /* compute busy this long => not live; 0: derived from warm-up */
};
#define BATCHER_OPTIONS_DEFAULT {.overlap = 1, .test_hooks = 0, .stall_ms = 0}

/* Reasons a request is answered with an error instead of its result. */
enum batcher_reject {
    BATCHER_REJECT_QUEUE_FULL,
    BATCHER_REJECT_TIMEOUT,
    BATCHER_REJECT_INVALID,
    BATCHER_REJECT_TOO_LARGE,
    BATCHER_REJECT_UNAVAILABLE,
    BATCHER_REJECT_COMPUTE,
    BATCHER_REJECT_DRAINING, /* refused while draining, or cut when the drain ended */
    BATCHER_REJECT_COUNT
};
const char *batcher_reject_name(enum batcher_reject r);

#define BATCHER_HIST_MAX 1024 /* histogram bins; larger batches count in the last bin */

struct batcher_stats {
    uint64_t requests;         /* infer requests submitted (accepted or not) */
    uint64_t success;          /* answered with a result */
    uint64_t rejected[BATCHER_REJECT_COUNT];
    uint64_t cut;              /* accepted, then answered EDRAINING by batcher_cut */
    uint64_t batches;          /* engine runs */
    uint64_t rows;             /* real batch rows run */
    uint64_t queue_us;         /* sum over requests of submit -> compute start */
    uint64_t compute_us;       /* sum over batches of the engine run */
    uint64_t gather_us, scatter_us;
    uint64_t real_elements, padded_elements; /* input elements: requests' own vs as run */
    uint64_t queue_depth;      /* requests waiting now */
    uint64_t max_queue_size;
    size_t n_hist;             /* bins in hist: hist[i] = batches of i + 1 real rows */
    uint64_t hist[BATCHER_HIST_MAX];
};

int batcher_create(struct batcher **out, struct engine *eng, const struct model_config *cfg,
                   const struct batcher_options *opt, batcher_reply_fn reply, struct cerr *e);
/*
 * Runs every bucket (each batch bucket with every combination of variable
 * dimension buckets) once with pad-filled inputs, checks that every output
 * keeps the batch axis and the dimensions it is declared to follow, and
 * derives the stall limit from the slowest bucket. Call before batcher_start.
 */
int batcher_warmup(struct batcher *b, struct cerr *e);
int batcher_start(struct batcher *b, struct cerr *e);
/*
 * Validates an infer Request (model, names, datatypes, shapes, parameters) and
 * queues it. On an error nothing is kept: the caller answers with e and frees
 * req; CORRAL_EQUEUEFULL, CORRAL_ETOOLARGE and CORRAL_EINVAL are the usual ones.
 */
int batcher_submit(struct batcher *b, Corral__Request *req, void *owner, struct cerr *e);
/* live: no stuck executor. ready: live, warmed up, not draining and not stopping. */
void batcher_health(struct batcher *b, int *live, int *ready);
/* As batcher_health, and when not live, why (one sentence) in why[n]; "" when live. */
void batcher_health_why(struct batcher *b, int *live, int *ready, char *why, size_t n);
/* Bucket plans batcher_warmup builds and runs (0 without batching). */
size_t batcher_bucket_count(const struct batcher *b);
/*
 * Starts draining: later submits are refused with CORRAL_EDRAINING, naming
 * `cause` (e.g. "SIGTERM", copied), and queued requests no longer wait for
 * their batch to fill. Idempotent; the first cause stays.
 */
void batcher_drain(struct batcher *b, const char *cause);
/* Ends a drain early (draining first if not yet): see above. `why` (copied) goes in
 * the answers. Idempotent. Callable from any thread. */
void batcher_cut(struct batcher *b, const char *why);
/* Requests accepted and not yet answered. */
size_t batcher_outstanding(struct batcher *b);
/* Waits up to timeout_ms for batcher_outstanding to reach 0: 1 when it did, else 0. */
int batcher_wait_idle(struct batcher *b, int64_t timeout_ms);
void batcher_get_stats(struct batcher *b, struct batcher_stats *s);
/* The stall limit in use (after warm-up), in milliseconds. */
int64_t batcher_stall_ms(const struct batcher *b);
void batcher_stop(struct batcher *b);
void batcher_free(struct batcher *b);

/*
 * Copies a block of `extent` elements per dimension (extent[0] rows) from src
 * (shape sdims) starting at row srow into dst (shape ddims) starting at row
 * drow. Every extent[k] must fit both shapes; elements are `es` bytes. This is
 * both the padding gather (small into large) and the cut-back scatter.
 */
void batcher_copy_block(void *dst, const int64_t *ddims, int64_t drow, const void *src,
                        const int64_t *sdims, int64_t srow, const int64_t *extent, int ndim,
                        size_t es);
/* Fills n elements of type dt with v (converted; FP16/BF16 only for 0). */
void batcher_fill(void *dst, enum dtype dt, size_t n, double v);

#endif
