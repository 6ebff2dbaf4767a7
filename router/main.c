/*
 * corral-router: start-up and shutdown of the process. main reads the options
 * (options.c), builds what the threads share (metrics, the replica table seeded from
 * --replica and dns://, the RPC endpoint), starts the router threads (worker.c) one
 * after the other, and opens the control endpoint once they listen. The main thread
 * then runs a small loop of its own that only waits: for SIGINT/SIGTERM, on which it
 * drains the threads (no new connections, every request in flight answered, the last
 * on each connection with "Connection: close", idle connections closed; after
 * --drain-timeout-ms, or on a second signal, what is left is cut), for table changes
 * from the control endpoint or DNS, which it passes to every thread, and for the
 * threads' ends.
 */
#include <errno.h>
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
#include "log.h"
#include "membership.h"
#include "metrics.h"
#include "oip.h"
#include "options.h"
#include "rpc.h"
#include "worker.h"

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

int main(int argc, char **argv)
{
    struct router_options o;
    router_options_init(&o);
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
    int pa = router_options_parse(argc, argv, &o);
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
    if (o.token_file && token_read(o.token_file, &o.token, &e))
        goto fail;
    if (o.token)
        LOG_INFO("inference needs the bearer token of %s (HTTP and RPC; probes and /metrics "
                 "do not)", o.token_file);
    if (rpc && o.token)
        rpc_set_token(rpc, o.token);
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
    goto out;
fail:
    LOG_ERROR("%s", e.msg);
    dns_close(ms.dns); /* never started: nothing on the loop */
    if (ms.loop)
        uv_loop_close(ms.loop);
    rc = 1;
out:
    membership_free(table);
    free(token);
    free(o.token);
    rpc_free(rpc);
    metrics_free(metrics);
    free(workers);
    free(o.replicas);
    if (rc == 0)
        LOG_INFO("stopped");
    return rc;
}
