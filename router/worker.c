/*
 * The life of one router thread, from setup on its own loop to the end of its drain.
 * A worker binds its HTTP port at once (so the port is known and connections are
 * refused, which clients retry) but listens only once the replicas it starts with
 * have answered a health probe, so that its first requests are not answered 503 for
 * want of a replica whose state is not known yet. A change of the replica table
 * reaches each worker as an async wake-up and is applied to its own upstream; the
 * membership then counts the thread as having applied that generation, which is what
 * the control endpoint's acknowledgement waits for. On a drain the worker stops
 * accepting, lets the requests in flight finish, and tears its loop down when none is
 * left or the drain deadline passes.
 */
#include "worker.h"

#include <stdlib.h>

#include "http.h"
#include "log.h"
#include "membership.h"
#include "metrics.h"
#include "rpc.h"
#include "upstream.h"


/* How long a starting router waits for its seeded replicas' first health answers. */
#define START_GATE_MS 2000

static void on_event(void *arg, enum upstream_event ev, const char *model, const char *replica)
{
    struct worker *w = arg;
    metrics_event(w->metrics, w->idx, model, replica, ev);
}

/* Closes what a worker's loop holds. Connections go first, so answers produced while
 * upstream calls are cancelled are dropped. */
static void worker_teardown(struct worker *w)
{
    if (w->http)
        http_server_close(w->http, NULL, NULL);
    w->http = NULL;
    if (w->up)
        upstream_close(w->up);
    w->up = NULL;
    if (w->rpc)
        rpc_lane_close(w->rpc, w->idx);
}

/* Ends the thread's work: its loop then runs out of handles and the thread exits. */
static void worker_stop(struct worker *w)
{
    if (w->stopped)
        return;
    w->stopped = 1;
    worker_teardown(w);
    uv_close((uv_handle_t *)&w->stop, NULL);
    uv_close((uv_handle_t *)&w->drain, NULL);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_close((uv_handle_t *)&w->table_changed, NULL);
    uv_close((uv_handle_t *)&w->apply_timer, NULL);
    uv_close((uv_handle_t *)&w->gate_timer, NULL);
}

/* Applies the snapshot's canary splits to this thread's upstream. */
static int worker_apply_canaries(struct worker *w, const struct membership_snapshot *snap,
                                 struct cerr *e)
{
    struct upstream_canary *t = calloc(snap->n_canaries ? snap->n_canaries : 1, sizeof *t);
    if (!t)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory applying the replica table");
    for (size_t i = 0; i < snap->n_canaries; i++) {
        t[i].model = snap->canaries[i].model;
        t[i].version = snap->canaries[i].version;
        t[i].percent = snap->canaries[i].percent;
    }
    int rc = upstream_sync_canaries(w->up, t, snap->n_canaries, e);
    free(t);
    return rc;
}

/* Brings this thread's upstream in line with the replica table, then says which
 * generation it now serves. */
static int worker_apply_table(struct worker *w, struct cerr *e)
{
    struct membership_snapshot snap;
    int rc = membership_snapshot(w->table, &snap, e);
    if (rc)
        return rc;
    struct upstream_member *t = calloc(snap.n ? snap.n : 1, sizeof *t);
    if (!t) {
        membership_snapshot_free(&snap);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory applying the replica table");
    }
    for (size_t i = 0; i < snap.n; i++) {
        t[i].model = snap.entries[i].model;
        t[i].version = snap.entries[i].version;
        t[i].url = snap.entries[i].url;
        t[i].draining = snap.entries[i].draining;
    }
    rc = upstream_sync(w->up, t, snap.n, e);
    /* After the replicas, so a model that just got its first replica gets its split too. */
    if (rc == CORRAL_OK)
        rc = worker_apply_canaries(w, &snap, e);
    if (rc == CORRAL_OK)
        membership_applied(w->table, w->idx, snap.generation);
    free(t);
    membership_snapshot_free(&snap);
    return rc;
}

static void apply_now(struct worker *w)
{
    struct cerr e = {0};
    if (w->stopped || !w->up)
        return;
    if (worker_apply_table(w, &e))
        LOG_ERROR("router thread %u could not apply the replica table: %s", w->idx, e.msg);
    uv_async_send(w->applied);
}

static void on_apply_timer(uv_timer_t *t)
{
    apply_now(t->data);
}

static void on_table_changed(uv_async_t *a)
{
    struct worker *w = a->data;
    /* The test hook holds back every thread but the first, so a test can see that a
     * change is acknowledged only once the slowest thread has it. */
    if (w->opt->apply_delay_ms && w->idx != 0 && !w->stopped) {
        if (!uv_is_active((uv_handle_t *)&w->apply_timer))
            uv_timer_start(&w->apply_timer, on_apply_timer, w->opt->apply_delay_ms, 0);
        return;
    }
    apply_now(w);
}

static void on_stop(uv_async_t *a)
{
    worker_stop(a->data);
}

static void on_http_drained(void *arg)
{
    struct worker *w = arg;
    w->http_drained = 1;
}

/* The drain ends when no client connection is left and no request is in flight upstream
 * (RPC requests included), or at the drain deadline. */
static void on_drain_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    unsigned calls = w->up ? upstream_infer_calls(w->up) : 0;
    if (w->http_drained && calls == 0) {
        LOG_DEBUG("router thread %u drained", w->idx);
        worker_stop(w);
        return;
    }
    if (uv_now(&w->loop) - w->drain_start < w->opt->drain_ms)
        return;
    LOG_WARN("router thread %u: drain timeout (%u ms): cutting %u client connection%s and %u "
             "request%s in flight", w->idx, w->opt->drain_ms,
             w->http ? http_server_connections(w->http) : 0,
             w->http && http_server_connections(w->http) == 1 ? "" : "s", calls,
             calls == 1 ? "" : "s");
    worker_stop(w);
}

static void on_drain(uv_async_t *a)
{
    struct worker *w = a->data;
    if (w->draining || w->stopped)
        return;
    w->draining = 1;
    w->drain_start = uv_now(&w->loop);
    if (w->http)
        http_server_drain(w->http, on_http_drained, w);
    else
        w->http_drained = 1;
    uv_timer_start(&w->drain_timer, on_drain_tick, 5, 5);
}

static void worker_report(struct worker *w, int state)
{
    pthread_mutex_lock(w->mu);
    w->state = state;
    pthread_cond_broadcast(w->cv);
    pthread_mutex_unlock(w->mu);
}

/*
 * A router started with replicas in its table (--replica) accepts connections only
 * once each has answered a health request (ready or not), or after START_GATE_MS:
 * until then a client's connection is refused (which clients retry) rather than
 * answered 503 for want of a replica whose state is not known yet.
 */
static void on_gate(uv_timer_t *t)
{
    struct worker *w = t->data;
    size_t waiting = upstream_unanswered(w->up);
    uint64_t waited = uv_now(&w->loop) - w->gate_start;
    if (waiting && waited < START_GATE_MS)
        return;
    uv_timer_stop(t);
    if (waiting)
        LOG_WARN("router thread %u: %zu replica%s of the table gave no health answer within "
                 "%d ms; accepting connections anyway", w->idx, waiting,
                 waiting == 1 ? "" : "s", START_GATE_MS);
    if (http_server_start(w->http, w->opt->host, w->port, &w->err)) {
        worker_report(w, -1);
        return;
    }
    worker_report(w, 2);
}

/* Sets the thread's pieces up on its own loop; the same order every thread. */
static int worker_setup(struct worker *w)
{
    const struct router_options *o = w->opt;
    struct cerr *e = &w->err;
    struct upstream_config ucfg = {.health_interval_ms = o->health_ms,
                                   .max_inflight = o->max_inflight,
                                   .eject_after = o->eject_after,
                                   .event = on_event,
                                   .event_arg = w};
    if (uv_loop_init(&w->loop) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot create an event loop");
    uv_async_init(&w->loop, &w->stop, on_stop);
    uv_async_init(&w->loop, &w->drain, on_drain);
    uv_async_init(&w->loop, &w->table_changed, on_table_changed);
    uv_timer_init(&w->loop, &w->drain_timer);
    uv_timer_init(&w->loop, &w->apply_timer);
    uv_timer_init(&w->loop, &w->gate_timer);
    w->stop.data = w->drain.data = w->drain_timer.data = w->table_changed.data = w;
    w->apply_timer.data = w->gate_timer.data = w;
    if (upstream_new(&w->up, &w->loop, &ucfg, e))
        return e->code;
    if (worker_apply_table(w, e))
        return e->code;
    w->octx.up = w->up;
    w->octx.metrics = w->metrics;
    w->octx.shard = w->idx;
    w->octx.timeout_ms = o->timeout_ms;
    w->octx.max_image_bytes = o->max_image_bytes;
    w->octx.token = o->token;
    if (http_server_new(&w->http, &w->loop, &o->lim, oip_handle, &w->octx, e))
        return e->code;
    if (o->threads > 1)
        http_server_set_reuseport(w->http, 1);
    /* Bound now (the port is known, connections are refused); listening once the
     * replicas the table starts with answered their first health request (on_gate). */
    int bound = 0;
    if (http_server_bind(w->http, o->host, w->port, &bound, e))
        return e->code;
    w->port = bound;
    if (upstream_start(w->up, e))
        return e->code;
    if (w->rpc && rpc_lane_init(w->rpc, w->idx, &w->loop, w->up, w->metrics, e))
        return e->code;
    w->gate_start = uv_now(&w->loop);
    uv_timer_start(&w->gate_timer, on_gate, 0, 5);
    return CORRAL_OK;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int ok = worker_setup(w) == CORRAL_OK;
    if (!ok) {
        /* Undo what exists on this loop so it can close cleanly. */
        worker_teardown(w);
    }
    worker_report(w, ok ? 1 : -1);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        LOG_WARN("router thread %u: event loop closed with handles still open", w->idx);
    atomic_fetch_add(w->n_finished, 1);
    uv_async_send(w->finished);
    return NULL;
}

int worker_start(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        cerr_set(&w->err, CORRAL_EIO, "cannot start a router thread");
        return -1;
    }
    pthread_mutex_lock(w->mu);
    while (w->state == 0)
        pthread_cond_wait(w->cv, w->mu);
    /* Read under the lock: once bound, the thread moves on to listening (on_gate). */
    int state = w->state;
    pthread_mutex_unlock(w->mu);
    return state >= 1 ? 0 : -1;
}
