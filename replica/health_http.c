#define _GNU_SOURCE /* pipe2 */
#include "health_http.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batcher.h"
#include "hostport.h"
#include "httpd.h"
#include "log.h"

struct health_http {
    struct httpd *httpd;
    struct replica_server *srv;
    int wake[2]; /* the stop pipe: written once by health_http_stop */
    pthread_t thread;
    int running;
};

/* ---- metrics -------------------------------------------------------------------------- */

/* A Prometheus label value: \, " and newline escaped. */
static void label(FILE *f, const char *v)
{
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

/* One sample: NAME{model="M",version="V"EXTRA} VALUE. */
static void sample(FILE *f, const char *name, const struct model_config *cfg, const char *extra,
                   unsigned long long v)
{
    fprintf(f, "%s{model=\"", name);
    label(f, cfg->name);
    fputs("\",version=\"", f);
    label(f, cfg->version_str);
    fprintf(f, "\"%s} %llu\n", extra ? extra : "", v);
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *health_http_metrics(struct replica_server *srv)
{
    static const char *const states[] = {"starting", "ready", "failed", "draining"};
    const struct model_config *cfg = replica_server_config(srv);
    struct replica_health h;
    struct batcher_stats *st = calloc(1, sizeof *st);
    char *text = NULL;
    size_t len = 0;
    FILE *f = st ? open_memstream(&text, &len) : NULL;
    if (!f) {
        free(st);
        return NULL;
    }
    replica_server_health(srv, &h);
    /* While starting there is no batcher yet: its counters are zero. */
    struct batcher *bat = replica_server_batcher(srv);
    size_t inflight = 0;
    if (bat) {
        batcher_get_stats(bat, st);
        inflight = batcher_outstanding(bat);
    }
    family(f, "corral_replica_state", "gauge",
           "1 for the state the replica is in (starting, ready, failed, draining).");
    for (size_t i = 0; i < sizeof states / sizeof *states; i++) {
        char extra[48];
        snprintf(extra, sizeof extra, ",state=\"%s\"", states[i]);
        sample(f, "corral_replica_state", cfg, extra, strcmp(h.state, states[i]) == 0);
    }
    family(f, "corral_replica_live", "gauge", "1 while the executor makes progress.");
    sample(f, "corral_replica_live", cfg, NULL, (unsigned long long)h.live);
    family(f, "corral_replica_ready", "gauge",
           "1 when loaded, warmed, parity verified, live and not draining.");
    sample(f, "corral_replica_ready", cfg, NULL, (unsigned long long)h.ready);
    family(f, "corral_replica_queue_depth", "gauge",
           "Infer requests waiting in the batcher's queue.");
    sample(f, "corral_replica_queue_depth", cfg, NULL, st->queue_depth);
    family(f, "corral_replica_max_queue_size", "gauge",
           "The queue's limit (max_queue_size): beyond it requests are refused at once.");
    sample(f, "corral_replica_max_queue_size", cfg, NULL, st->max_queue_size);
    family(f, "corral_replica_inflight_requests", "gauge",
           "Infer requests accepted and not yet answered (queued or computing).");
    sample(f, "corral_replica_inflight_requests", cfg, NULL, (unsigned long long)inflight);
    family(f, "corral_replica_requests_total", "counter",
           "Infer requests received, accepted or refused.");
    sample(f, "corral_replica_requests_total", cfg, NULL, st->requests);
    family(f, "corral_replica_success_total", "counter", "Infer requests answered with a result.");
    sample(f, "corral_replica_success_total", cfg, NULL, st->success);
    family(f, "corral_replica_rejections_total", "counter",
           "Infer requests answered with an error instead of a result, by reason.");
    for (int r = 0; r < BATCHER_REJECT_COUNT; r++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",reason=\"%s\"", batcher_reject_name((enum batcher_reject)r));
        sample(f, "corral_replica_rejections_total", cfg, extra, st->rejected[r]);
    }
    family(f, "corral_replica_executions_total", "counter", "Engine runs (batches).");
    sample(f, "corral_replica_executions_total", cfg, NULL, st->batches);
    family(f, "corral_replica_inferences_total", "counter", "Real batch rows run.");
    sample(f, "corral_replica_inferences_total", cfg, NULL, st->rows);
    family(f, "corral_replica_queue_seconds_total", "counter",
           "Time requests waited from arrival to their batch's compute.");
    fprintf(f, "corral_replica_queue_seconds_total{model=\"");
    label(f, cfg->name);
    fputs("\",version=\"", f);
    label(f, cfg->version_str);
    fprintf(f, "\"} %.6f\n", (double)st->queue_us / 1e6);
    family(f, "corral_replica_compute_seconds_total", "counter", "Time the engine ran batches.");
    fprintf(f, "corral_replica_compute_seconds_total{model=\"");
    label(f, cfg->name);
    fputs("\",version=\"", f);
    label(f, cfg->version_str);
    fprintf(f, "\"} %.6f\n", (double)st->compute_us / 1e6);
    family(f, "corral_replica_input_elements_total", "counter",
           "Input elements: the requests' own (real) and as run, padding included (padded).");
    sample(f, "corral_replica_input_elements_total", cfg, ",kind=\"real\"", st->real_elements);
    sample(f, "corral_replica_input_elements_total", cfg, ",kind=\"padded\"",
           st->padded_elements);
    int bad = ferror(f);
    fclose(f);
    free(st);
    if (bad) {
        free(text);
        return NULL;
    }
    return text;
}

/* ---- endpoints ------------------------------------------------------------------------ */

static void answer_state(struct health_http *hh, struct httpd_conn *c, int ready_probe)
{
    struct replica_health h;
    const struct model_config *cfg = replica_server_config(hh->srv);
    replica_server_health(hh->srv, &h);
    int ok = ready_probe ? h.ready : h.live;
    json_t *o = json_pack("{s:b, s:b, s:s, s:s, s:s, s:s}", "live", h.live, "ready", h.ready,
                          "state", h.state, "reason", h.reason, "model", cfg->name, "version",
                          cfg->version_str);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}\n";
        httpd_reply(c, 500, "application/json", NULL, oom, sizeof oom - 1);
        return;
    }
    size_t n = strlen(text);
    char *body = realloc(text, n + 2);
    if (body) {
        text = body;
        text[n++] = '\n';
        text[n] = '\0';
    }
    httpd_reply(c, ok ? 200 : 503, "application/json", NULL, text, n);
    free(text);
}

static void handle(void *arg, const struct httpd_request *rq, struct httpd_conn *c)
{
    struct health_http *hh = arg;
    static const char *const paths[] = {"/live", "/ready", "/metrics"};
    int which = -1;
    for (int i = 0; i < 3 && which < 0; i++)
        if (strcmp(rq->path, paths[i]) == 0)
            which = i;
    if (which < 0) {
        static const char msg[] = "no such path: this endpoint serves GET /live, /ready and "
                                  "/metrics\n";
        httpd_reply(c, 404, "text/plain; charset=utf-8", NULL, msg, sizeof msg - 1);
        return;
    }
    if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "HEAD") != 0) {
        static const char msg[] = "only GET and HEAD are served here\n";
        httpd_reply(c, 405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n", msg,
                    sizeof msg - 1);
        return;
    }
    if (which < 2) {
        answer_state(hh, c, which == 1);
        return;
    }
    char *text = health_http_metrics(hh->srv);
    if (!text) {
        static const char msg[] = "out of memory building the metrics\n";
        httpd_reply(c, 500, "text/plain; charset=utf-8", NULL, msg, sizeof msg - 1);
        return;
    }
    httpd_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, strlen(text));
    free(text);
}

/* ---- the thread ----------------------------------------------------------------------- */

static void *health_main(void *arg)
{
    struct health_http *hh = arg;
    httpd_run(hh->httpd, hh->wake[0]);
    return NULL;
}

int health_http_start(struct health_http **out, const char *where, struct replica_server *srv,
                      struct cerr *e)
{
    char host[256];
    int port = 0, rc;
    *out = NULL;
    if (hostport_parse(where, host, sizeof host, &port))
        return cerr_set(e, CORRAL_EINVAL, "--health-listen '%s' is not HOST:PORT (e.g. "
                        "0.0.0.0:8080, or [::]:8080)", where);
    struct health_http *hh = calloc(1, sizeof *hh);
    if (!hh)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    hh->srv = srv;
    hh->wake[0] = hh->wake[1] = -1;
    struct httpd_options opt = HTTPD_OPTIONS_DEFAULT;
    opt.name = "health endpoint";
    /* A probe is a few hundred bytes, and kubelet gives up after a second by default. */
    opt.max_head = 8192;
    opt.deadline_ms = 2000;
    if ((rc = httpd_open(&hh->httpd, host, port, &opt, handle, hh, e))) {
        cerr_prefix(e, "--health-listen %s", where);
        goto fail;
    }
    if (pipe2(hh->wake, O_CLOEXEC) != 0) {
        rc = cerr_set(e, CORRAL_EIO, "--health-listen: cannot make a pipe: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&hh->thread, NULL, health_main, hh) != 0) {
        rc = cerr_set(e, CORRAL_EIO, "--health-listen: cannot start its thread");
        goto fail;
    }
    hh->running = 1;
    LOG_INFO("health endpoint listening on http://%s%s%s:%d (GET /live, /ready, /metrics)",
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
             httpd_port(hh->httpd));
    *out = hh;
    return CORRAL_OK;
fail:
    health_http_stop(hh);
    return rc;
}

int health_http_port(const struct health_http *hh) { return httpd_port(hh->httpd); }

void health_http_stop(struct health_http *hh)
{
    if (!hh)
        return;
    if (hh->running) {
        char one = 1;
        ssize_t w;
        do
            w = write(hh->wake[1], &one, 1);
        while (w < 0 && errno == EINTR);
        pthread_join(hh->thread, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (hh->wake[i] >= 0)
            close(hh->wake[i]);
    httpd_close(hh->httpd);
    free(hh);
}
