/*
 * One router thread: its own libuv loop, HTTP listener (SO_REUSEPORT spreads the
 * connections over the threads), upstream (sockets to every replica and their health
 * probes) and lane of the RPC endpoint. The threads share only the metrics, the
 * replica table and the RPC endpoint, each of which is made for it; everything on a
 * thread's loop is touched by that thread alone. The main thread talks to a running
 * worker only through its async handles.
 *
 * Usage (main thread):
 *     struct worker *w = &workers[i];   // zeroed; then idx, opt, metrics, rpc, table,
 *                                       // port, mu, cv, finished, n_finished, applied
 *     if (worker_start(w)) ...          // bound (state 1), or failed: w->err says why
 *     // wait for w->state to leave 1 under w->mu: 2 listening, -1 failed
 *     uv_async_send(&w->table_changed); // the replica table changed: apply it
 *     uv_async_send(&w->drain);         // drain, then the loop ends by itself
 *     uv_async_send(&w->stop);          // end now
 *     pthread_join(w->thread, NULL);    // after *finished was signalled
 */
#ifndef CORRAL_ROUTER_WORKER_H
#define CORRAL_ROUTER_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"
#include "oip.h"
#include "options.h"

struct http_server;
struct membership;
struct metrics;
struct rpc;
struct upstream;

struct worker {
    unsigned idx;
    const struct router_options *opt;
    struct metrics *metrics;
    struct rpc *rpc;
    struct membership *table;
    uv_loop_t loop;
    uv_async_t stop, drain, table_changed;
    uv_timer_t drain_timer, apply_timer;
    uv_timer_t gate_timer; /* start: listens once the seeded replicas answered (or later) */
    uint64_t gate_start;
    int draining, http_drained, stopped;
    uint64_t drain_start;
    struct http_server *http;
    struct upstream *up;
    struct oip_ctx octx;
    pthread_t thread;
    int port; /* in: port to bind; out: port bound */
    /* Start-up handshake with the main thread. */
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int state; /* 0 starting, 1 running (bound), 2 listening, -1 failed */
    struct cerr err;
    /* Told when the thread's loop has ended, and when it applied a replica table (both
     * set before the thread starts). */
    uv_async_t *finished;
    atomic_uint *n_finished;
    uv_async_t *applied;
};

/* Starts the thread and waits until it has bound its port (0) or failed (-1). */
int worker_start(struct worker *w);

#endif
