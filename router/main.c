/*
 * corral-router: command line, and the wiring of router threads. Each thread
 * runs its own libuv loop with its own HTTP listener (SO_REUSEPORT spreads the
 * connections over them), its own upstream (sockets to every replica, health
 * loop) and one lane of the RPC endpoint; the metrics are shared. The main
 * thread waits for SIGINT/SIGTERM and then drains the threads: no new
 * connections, every request in flight answered (the last on each connection
 * with "Connection: close"), idle connections closed; after --drain-timeout-ms,
 * or on a second signal, what is left is cut.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "control.h"
#include "dns.h"
#include "token.h"
#include "hostport.h"
#include "http.h"
#include "log.h"
#include "membership.h"
#include "metrics.h"
#include "oip.h"
#include "rpc.h"
#include "upstream.h"

#define DEFAULT_RPC "tcp://0.0.0.0:8001"
#define DEFAULT_CONTROL "127.0.0.1:8003"

struct options {
    const char *listen;
    char host[256];
    int port;
    const char **replicas;
    int n_replicas;
    unsigned health_ms, timeout_ms, threads, max_inflight, eject_after, rpc_contexts, drain_ms;
    size_t max_image_bytes;
    const char *rpc_url; /* NULL: off */
    int rpc_explicit;
    const char *control;   /* HOST:PORT, NULL: off */
    int control_explicit;
    char control_host[256];
    int control_port;
    const char *control_token_file;
    unsigned apply_delay_ms; /* tests only: threads but the first apply table changes late */
    unsigned dns_refresh_ms; /* how often dns:// replicas are resolved again */
    struct http_limits lim;
};

/* How long a starting router waits for its seeded replicas' first health answers. */
#define START_GATE_MS 2000

struct worker {
    unsigned idx;
    const struct options *opt;
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

static const char synopsis[] =
    "usage: corral-router --listen HOST:PORT [--replica NAME=URL ...] [--dns-refresh-ms N]\n"
    "                     [--control-listen HOST:PORT|off] [--control-token-file FILE]\n"
    "                     [--threads N] [--rpc-listen URL|off] [--timeout-ms N]\n"
    "                     [--max-inflight N] [--eject-after N] [--health-interval-ms N]\n"
    "                     [--max-body-bytes N] [--max-header-bytes N] [--max-connections N]\n"
    "                     [--max-image-bytes N]\n"
    "                     [--idle-timeout-ms N] [--request-timeout-ms N] [--drain-timeout-ms N]\n"
    "                     [--log-level debug|info|warn|error] [--help]\n";

static void usage(FILE *f)
{
    fputs(synopsis, f);
    fprintf(f,
            "\n"
            "Serves the Open Inference Protocol (KServe v2) over HTTP/1.1, an RPC endpoint for\n"
            "services (libcorral, or any NNG REQ socket) and Prometheus metrics, and forwards\n"
            "inference to corral-replica processes. RPC and replicas speak SP request/reply\n"
            "over TCP, the protocol of NNG's REQ and REP sockets.\n"
            "\n"
            "  --listen HOST:PORT       address to serve HTTP on (port 0: any free port;\n"
            "                           IPv6 as [::1]:8000)\n"
            "  --replica NAME=URL       a replica serving model NAME at tcp://HOST:PORT, e.g.\n"
            "                           digits=tcp://127.0.0.1:9101 (repeat for more); seeds\n"
            "                           the replica table, which the control endpoint changes;\n"
            "                           HTTP connections are accepted once each answered a\n"
            "                           health request (at most 2 s after start);\n"
            "                           NAME=dns://HOST:PORT follows HOST in DNS instead:\n"
            "                           each of its A and AAAA addresses is a replica at PORT,\n"
            "                           added when it appears, drained and removed when it\n"
            "                           goes (a Kubernetes headless Service)\n"
            "  --dns-refresh-ms N       how often dns:// replicas are resolved again (default\n"
            "                           5000); a failed resolution keeps the addresses it had\n"
            "  --control-listen H:P     the control endpoint, where replicas are added, marked\n"
            "                           draining and removed at run time (default " DEFAULT_CONTROL ";\n"
            "                           port 0: any free port; off: none, and then at least one\n"
            "                           --replica is required)\n"
            "  --control-token-file F   require \"Authorization: Bearer TOKEN\" on the control\n"
            "                           endpoint, TOKEN read from file F\n"
            "  --threads N              router threads, each with its own event loop and\n"
            "                           listener on the same port (default 1)\n"
            "  --rpc-listen URL         tcp://HOST:PORT of the RPC endpoint (default " DEFAULT_RPC ";\n"
            "                           port 0: any free port; off: none)\n"
            "  --rpc-contexts N         RPC requests in flight at once, split between the\n"
            "                           threads (default 1024); at the limit RPC connections\n"
            "                           are not read until answers free room\n"
            "  --timeout-ms N           deadline for one inference request (default 30000;\n"
            "                           the OIP 'timeout' parameter in us may shorten it)\n"
            "  --max-inflight N         requests in flight to one replica from one thread\n"
            "                           before it is skipped (default 1024; 0: no cap)\n"
            "  --eject-after N          consecutive transport failures that eject a replica\n"
            "                           until a health probe succeeds (default 2)\n"
            "  --health-interval-ms N   how often replicas are health-checked (default 500)\n"
            "  --max-body-bytes N       largest request body (default 67108864; 413 above)\n"
            "  --max-image-bytes N      largest image a classify request may carry (default\n"
            "                           16777216; 413 above); the decoded size is limited by\n"
            "                           the replicas' --max-image-pixels\n"
            "  --max-header-bytes N     largest request line + headers (default 16384; 431)\n"
            "  --max-connections N      open client connections per thread (default 4096)\n"
            "  --idle-timeout-ms N      close idle keep-alive connections (default 60000)\n"
            "  --request-timeout-ms N   a request must arrive whole within this (default\n"
            "                           30000; 408 otherwise)\n"
            "  --drain-timeout-ms N     on SIGTERM/SIGINT, how long requests in flight may take\n"
            "                           to be answered before they are cut (default 30000);\n"
            "                           a second signal cuts them at once\n"
            "  --log-level LEVEL        debug (one line per request), info (default), warn,\n"
            "                           error\n"
            "  --test-apply-delay-ms N  FOR TESTS ONLY: every thread but the first applies a\n"
            "                           replica table change N ms late\n"
            "  --help                   show this text\n");
}

static int bad_args(const char *fmt, const char *arg)
{
    fprintf(stderr, "corral-router: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s(corral-router --help explains every option)\n", synopsis);
    return 2;
}

static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -1;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned *out)
{
    unsigned long v;
    if (parse_ulong(s, lo, hi, &v))
        return -1;
    *out = (unsigned)v;
    return 0;
}

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
    const struct options *o = w->opt;
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

static int worker_start(struct worker *w)
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

struct main_state {
    uv_loop_t *loop;
    uv_signal_t sigint, sigterm;
    uv_async_t finished; /* a worker thread's loop ended */
    atomic_uint n_finished;
    uv_async_t applied;  /* a worker thread applied a replica table */
    struct control *control;
    struct dns *dns;     /* dns:// replicas, NULL when none */
    struct worker *workers;
    unsigned n;
    struct rpc *rpc;
    int stopping;
};

/* Lets the main loop end. `finished` stays open (unreferenced) until the threads are
 * joined, since a thread may still signal it after the loop has stopped. */
static void main_close(struct main_state *ms)
{
    if (!uv_is_closing((uv_handle_t *)&ms->sigint)) {
        uv_close((uv_handle_t *)&ms->sigint, NULL);
        uv_close((uv_handle_t *)&ms->sigterm, NULL);
    }
    uv_unref((uv_handle_t *)&ms->finished);
    uv_unref((uv_handle_t *)&ms->applied);
    control_close(ms->control);
    ms->control = NULL;
    dns_close(ms->dns);
    ms->dns = NULL;
}

static void on_applied(uv_async_t *a)
{
    struct main_state *ms = a->data;
    if (ms->control)
        control_acked(ms->control);
}

/* The control endpoint changed the table: every thread applies it. */
static void on_table_change(void *arg)
{
    struct main_state *ms = arg;
    for (unsigned i = 0; i < ms->n; i++)
        uv_async_send(&ms->workers[i].table_changed);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct main_state *ms = sig->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (ms->stopping) {
        LOG_INFO("received %s again: stopping without waiting", name);
        for (unsigned i = 0; i < ms->n; i++)
            uv_async_send(&ms->workers[i].stop);
        return;
    }
    ms->stopping = 1;
    LOG_INFO("received %s: draining (no new connections; answering what is in flight)", name);
    control_close(ms->control);
    ms->control = NULL;
    /* The table stays as it is while the threads drain. */
    dns_close(ms->dns);
    ms->dns = NULL;
    if (ms->rpc)
        rpc_quiesce(ms->rpc);
    for (unsigned i = 0; i < ms->n; i++)
        uv_async_send(&ms->workers[i].drain);
}

/* Every worker thread has finished: the main loop ends too. */
static void on_finished(uv_async_t *a)
{
    struct main_state *ms = a->data;
    if (atomic_load(&ms->n_finished) == ms->n)
        main_close(ms);
}

static int parse_args(int argc, char **argv, struct options *o)
{
    enum {
        O_LISTEN = 1, O_REPLICA, O_LOG, O_HEALTH, O_TIMEOUT, O_THREADS, O_RPC, O_RPC_CTX,
        O_INFLIGHT, O_EJECT, O_BODY, O_IMAGE, O_HEADER, O_CONNS, O_IDLE, O_REQTIME, O_DRAIN, O_CONTROL,
        O_CONTROL_TOKEN, O_APPLY_DELAY, O_DNS_REFRESH, O_HELP
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"replica", required_argument, NULL, O_REPLICA},
        {"log-level", required_argument, NULL, O_LOG},
        {"health-interval-ms", required_argument, NULL, O_HEALTH},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"threads", required_argument, NULL, O_THREADS},
        {"rpc-listen", required_argument, NULL, O_RPC},
        {"rpc-contexts", required_argument, NULL, O_RPC_CTX},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"eject-after", required_argument, NULL, O_EJECT},
        {"max-body-bytes", required_argument, NULL, O_BODY},
        {"max-image-bytes", required_argument, NULL, O_IMAGE},
        {"max-header-bytes", required_argument, NULL, O_HEADER},
        {"max-connections", required_argument, NULL, O_CONNS},
        {"idle-timeout-ms", required_argument, NULL, O_IDLE},
        {"request-timeout-ms", required_argument, NULL, O_REQTIME},
        {"drain-timeout-ms", required_argument, NULL, O_DRAIN},
        {"control-listen", required_argument, NULL, O_CONTROL},
        {"control-token-file", required_argument, NULL, O_CONTROL_TOKEN},
        {"test-apply-delay-ms", required_argument, NULL, O_APPLY_DELAY},
        {"dns-refresh-ms", required_argument, NULL, O_DNS_REFRESH},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    unsigned long ul;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: o->listen = optarg; break;
        case O_REPLICA: o->replicas[o->n_replicas++] = optarg; break;
        case O_LOG: {
            int l = log_parse_level(optarg);
            if (l < 0)
                return bad_args("--log-level '%s' is not one of debug, info, warn, error", optarg);
            log_set_level((enum log_level)l);
            break;
        }
        case O_HEALTH:
            if (parse_uint(optarg, 10, 3600000, &o->health_ms))
                return bad_args("--health-interval-ms '%s' is not a number of milliseconds from "
                                "10 to 3600000", optarg);
            break;
        case O_TIMEOUT:
            if (parse_uint(optarg, 1, 86400000, &o->timeout_ms))
                return bad_args("--timeout-ms '%s' is not a number of milliseconds from 1 to "
                                "86400000", optarg);
            break;
        case O_THREADS:
            if (parse_uint(optarg, 1, 256, &o->threads))
                return bad_args("--threads '%s' is not a number from 1 to 256", optarg);
            break;
        case O_RPC:
            o->rpc_url = strcmp(optarg, "off") == 0 ? NULL : optarg;
            o->rpc_explicit = 1;
            if (o->rpc_url && !strstr(o->rpc_url, "://"))
                return bad_args("--rpc-listen '%s' is not a URL (expected tcp://HOST:PORT, e.g. "
                                "tcp://0.0.0.0:8001, or off)", optarg);
            break;
        case O_CONTROL:
            o->control = strcmp(optarg, "off") == 0 ? NULL : optarg;
            o->control_explicit = 1;
            break;
        case O_CONTROL_TOKEN:
            o->control_token_file = optarg;
            break;
        case O_APPLY_DELAY:
            if (parse_uint(optarg, 0, 60000, &o->apply_delay_ms))
                return bad_args("--test-apply-delay-ms '%s' is not a number of milliseconds "
                                "from 0 to 60000", optarg);
            break;
        case O_DNS_REFRESH:
            if (parse_uint(optarg, 100, 3600000, &o->dns_refresh_ms))
                return bad_args("--dns-refresh-ms '%s' is not a number of milliseconds from "
                                "100 to 3600000", optarg);
            break;
        case O_RPC_CTX:
            if (parse_uint(optarg, 1, 65536, &o->rpc_contexts))
                return bad_args("--rpc-contexts '%s' is not a number from 1 to 65536", optarg);
            break;
        case O_INFLIGHT:
            if (parse_uint(optarg, 0, 1000000, &o->max_inflight))
                return bad_args("--max-inflight '%s' is not a number from 0 to 1000000", optarg);
            break;
        case O_EJECT:
            if (parse_uint(optarg, 1, 1000, &o->eject_after))
                return bad_args("--eject-after '%s' is not a number from 1 to 1000", optarg);
            break;
        case O_BODY:
            if (parse_ulong(optarg, 1024, (unsigned long)1 << 31, &ul))
                return bad_args("--max-body-bytes '%s' is not a byte count from 1024 to 2 GiB",
                                optarg);
            o->lim.max_body_bytes = ul;
            break;
        case O_IMAGE:
            if (parse_ulong(optarg, 1024, (unsigned long)1 << 31, &ul))
                return bad_args("--max-image-bytes '%s' is not a byte count from 1024 to 2 GiB",
                                optarg);
            o->max_image_bytes = ul;
            break;
        case O_HEADER:
            if (parse_ulong(optarg, 256, 1 << 20, &ul))
                return bad_args("--max-header-bytes '%s' is not a byte count from 256 to 1 MiB",
                                optarg);
            o->lim.max_header_bytes = ul;
            break;
        case O_CONNS:
            if (parse_uint(optarg, 1, 1000000, &o->lim.max_connections))
                return bad_args("--max-connections '%s' is not a number from 1 to 1000000",
                                optarg);
            break;
        case O_IDLE:
            if (parse_uint(optarg, 10, 86400000, &o->lim.idle_timeout_ms))
                return bad_args("--idle-timeout-ms '%s' is not a number of milliseconds from 10 "
                                "to 86400000", optarg);
            break;
        case O_REQTIME:
            if (parse_uint(optarg, 10, 86400000, &o->lim.request_timeout_ms))
                return bad_args("--request-timeout-ms '%s' is not a number of milliseconds from "
                                "10 to 86400000", optarg);
            break;
        case O_DRAIN:
            if (parse_uint(optarg, 0, 3600000, &o->drain_ms))
                return bad_args("--drain-timeout-ms '%s' is not a number of milliseconds from "
                                "0 to 3600000", optarg);
            break;
        case O_HELP:
            usage(stdout);
            return -1;
        default:
            return bad_args("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_args("unexpected argument '%s'", argv[optind]);
    if (!o->listen)
        return bad_args("%s", "--listen HOST:PORT is required");
    if (hostport_parse(o->listen, o->host, sizeof o->host, &o->port))
        return bad_args("--listen '%s' is not HOST:PORT (e.g. 127.0.0.1:8000, or [::1]:8000)",
                        o->listen);
    if (o->control && hostport_parse(o->control, o->control_host, sizeof o->control_host,
                                   &o->control_port))
        return bad_args("--control-listen '%s' is not HOST:PORT or off (e.g. 127.0.0.1:8003)",
                        o->control);
    if (o->n_replicas == 0 && !o->control)
        return bad_args("%s", "at least one --replica NAME=URL is required when the control "
                        "endpoint is off (replicas can otherwise be added there)");
    for (int i = 0; i < o->n_replicas; i++) {
        const char *spec = o->replicas[i];
        const char *eq = strchr(spec, '=');
        size_t nl = eq ? (size_t)(eq - spec) : 0;
        if (!eq || nl == 0 || nl >= OIP_NAME_MAX || memchr(spec, '/', nl) ||
            !strstr(eq + 1, "://"))
            return bad_args("--replica '%s' is not NAME=URL (e.g. digits=tcp://127.0.0.1:9101)",
                            spec);
    }
    /* URLs are checked here too, so a typo is a usage error rather than a failed start. */
    struct upstream *probe = NULL;
    struct upstream_config pc = {0};
    struct cerr e = {0};
    int bad = 0;
    if (upstream_new(&probe, NULL, &pc, &e) == CORRAL_OK) {
        for (int i = 0; i < o->n_replicas && !bad; i++) {
            const char *spec = o->replicas[i];
            const char *eq = strchr(spec, '=');
            char name[OIP_NAME_MAX], host[256];
            int port;
            memcpy(name, spec, (size_t)(eq - spec));
            name[eq - spec] = '\0';
            if (strncmp(eq + 1, "dns://", 6) == 0)
                bad = dns_parse_url(eq + 1, host, sizeof host, &port, &e) != CORRAL_OK;
            else
                bad = upstream_add_replica(probe, name, eq + 1, &e) != CORRAL_OK;
        }
        upstream_close(probe);
    }
    if (bad)
        return bad_args("%s", e.msg);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    memset(&o, 0, sizeof o);
    o.health_ms = 500;
    o.timeout_ms = 30000;
    o.max_image_bytes = (size_t)16 << 20;
    o.threads = 1;
    o.max_inflight = 1024;
    o.eject_after = 2;
    o.rpc_contexts = 1024;
    o.drain_ms = 30000;
    o.rpc_url = DEFAULT_RPC;
    o.control = DEFAULT_CONTROL;
    o.dns_refresh_ms = 5000;
    http_limits_default(&o.lim);
    struct metrics *metrics = NULL;
    struct membership *table = NULL;
    char *token = NULL;
    struct rpc *rpc = NULL;
    struct worker *workers = NULL;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct main_state ms;
    struct cerr e = {0};
    unsigned started = 0;
    int rc = 1;
    memset(&ms, 0, sizeof ms);

    log_init("router");
    o.replicas = calloc((size_t)argc + 1, sizeof *o.replicas);
    if (!o.replicas)
        return 1;
    int pa = parse_args(argc, argv, &o);
    if (pa) {
        free(o.replicas);
        return pa < 0 ? 0 : pa;
    }

    signal(SIGPIPE, SIG_IGN);
    /* Every client connection is a descriptor; allow as many as the hard limit permits. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            LOG_WARN("cannot raise the open file limit: %s", strerror(errno));
    }
    if (metrics_new(&metrics, o.threads, &e))
        goto fail;
    if (o.rpc_url && rpc_new(&rpc, o.rpc_url, o.rpc_contexts, o.threads, o.timeout_ms, &e))
        goto fail;
    if (o.control_token_file && token_read(o.control_token_file, &token, &e))
        goto fail;
    if (membership_new(&table, o.threads, &e))
        goto fail;
    /* The table's changes are told to the threads from the main loop (control, dns). */
    ms.loop = uv_default_loop();
    for (int i = 0; i < o.n_replicas; i++) {
        const char *spec = o.replicas[i];
        const char *eq = strchr(spec, '=');
        char name[OIP_NAME_MAX];
        uint64_t g;
        memcpy(name, spec, (size_t)(eq - spec));
        name[eq - spec] = '\0';
        if (strncmp(eq + 1, "dns://", 6) == 0) {
            if (!ms.dns && dns_new(&ms.dns, ms.loop, table, o.dns_refresh_ms, on_table_change,
                                   &ms, &e))
                goto fail;
            if (dns_watch(ms.dns, name, eq + 1, &e)) {
                cerr_prefix(&e, "--replica '%s'", spec);
                goto fail;
            }
        } else if (membership_add(table, name, "", eq + 1, &g, &e)) {
            cerr_prefix(&e, "--replica '%s'", spec);
            goto fail;
        }
    }
    /* Before the threads start, so they begin with the addresses (and wait for their first
     * health answers as for every replica the table starts with). */
    if (ms.dns)
        dns_resolve_now(ms.dns);
    workers = calloc(o.threads, sizeof *workers);
    if (!workers) {
        cerr_set(&e, CORRAL_ENOMEM, "out of memory");
        goto fail;
    }
    /* The workers tell the main loop when they end, so it exists before they start. */
    uv_signal_init(ms.loop, &ms.sigint);
    uv_signal_init(ms.loop, &ms.sigterm);
    uv_async_init(ms.loop, &ms.finished, on_finished);
    uv_async_init(ms.loop, &ms.applied, on_applied);
    atomic_init(&ms.n_finished, 0);
    ms.sigint.data = ms.sigterm.data = ms.finished.data = ms.applied.data = &ms;
    for (unsigned i = 0; i < o.threads; i++) {
        struct worker *w = &workers[i];
        w->finished = &ms.finished;
        w->n_finished = &ms.n_finished;
        w->applied = &ms.applied;
        w->table = table;
        w->idx = i;
        w->opt = &o;
        w->metrics = metrics;
        w->rpc = rpc;
        w->mu = &mu;
        w->cv = &cv;
        /* The first thread may bind port 0; the others join the port it got. */
        w->port = i == 0 ? o.port : workers[0].port;
        if (worker_start(w)) {
            e = w->err;
            if (w->state == -1)
                started = i + 1; /* the thread runs (to close its loop); join it below */
            goto stop;
        }
        started = i + 1;
    }
    if (rpc) {
        char bound[300];
        if (rpc_start(rpc, bound, sizeof bound, &e)) {
            if (o.rpc_explicit)
                goto stop;
            /* The default port may be taken (another router on this host); go on without. */
            LOG_WARN("RPC endpoint off: %s (pass --rpc-listen URL to choose another)", e.msg);
            rpc_quiesce(rpc);
        } else {
            LOG_INFO("corral-router RPC listening on %s", bound);
        }
    }
    /* Each thread listens once its seeded replicas answered (on_gate). */
    for (unsigned i = 0; i < started; i++) {
        struct worker *w = &workers[i];
        pthread_mutex_lock(w->mu);
        while (w->state == 1)
            pthread_cond_wait(w->cv, w->mu);
        pthread_mutex_unlock(w->mu);
        if (w->state != 2) {
            e = w->err;
            goto stop;
        }
    }
    ms.workers = workers;
    ms.n = started;
    ms.rpc = rpc;
    uv_signal_start(&ms.sigint, on_signal, SIGINT);
    uv_signal_start(&ms.sigterm, on_signal, SIGTERM);
    dns_start(ms.dns);
    LOG_INFO("corral-router listening on http://%s%s%s:%d (%u thread%s)",
             strchr(o.host, ':') ? "[" : "", o.host, strchr(o.host, ':') ? "]" : "",
             workers[0].port, o.threads, o.threads == 1 ? "" : "s");
    /* After the line above, which tools read for the HTTP port. */
    if (o.control) {
        int cport = 0;
        if (control_new(&ms.control, ms.loop, table, token, on_table_change, &ms, &e))
            goto stop;
        if (control_listen(ms.control, o.control_host, o.control_port, &cport, &e)) {
            control_close(ms.control);
            ms.control = NULL;
            if (o.control_explicit)
                goto stop;
            /* The default port may be taken (another router on this host); go on without. */
            LOG_WARN("control endpoint off: %s (pass --control-listen HOST:PORT to choose "
                     "another)", e.msg);
        } else {
            LOG_INFO("corral-router control listening on http://%s%s%s:%d%s",
                     strchr(o.control_host, ':') ? "[" : "", o.control_host,
                     strchr(o.control_host, ':') ? "]" : "", cport,
                     token ? " (bearer token required)" : "");
        }
    }
    uv_run(ms.loop, UV_RUN_DEFAULT);
    rc = 0;
    goto join;

stop:
    LOG_ERROR("%s", e.msg);
    if (rpc)
        rpc_quiesce(rpc);
    for (unsigned i = 0; i < started; i++)
        uv_async_send(&workers[i].stop);
    main_close(&ms);
join:
    for (unsigned i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    uv_close((uv_handle_t *)&ms.finished, NULL);
    uv_close((uv_handle_t *)&ms.applied, NULL);
    uv_run(ms.loop, UV_RUN_DEFAULT);
    uv_loop_close(ms.loop);
    membership_free(table);
    free(token);
    rpc_free(rpc);
    metrics_free(metrics);
    free(workers);
    free(o.replicas);
    if (rc == 0)
        LOG_INFO("stopped");
    return rc;
fail:
    LOG_ERROR("%s", e.msg);
    dns_close(ms.dns); /* never started: nothing on the loop */
    if (ms.loop)
        uv_loop_close(ms.loop);
    membership_free(table);
    free(token);
    rpc_free(rpc);
    metrics_free(metrics);
    free(o.replicas);
    return 1;
}
