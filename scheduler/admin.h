/*
 * admin: the scheduler's admin API (issue 12, item 7), a small non-blocking HTTP/1.1
 * server that lives on the supervisor's poll set, so it never blocks the loop.
 *
 * Usage:
 *     struct sched_admin a;
 *     if (sched_admin_open(&a, &cfg->admin.listen, cfg->admin.token_file, status_fn, arg, &e))
 *         ... e.msg: cannot listen, or the token file cannot be read ...
 *     for (;;) {
 *         struct pollfd p[SCHED_ADMIN_POLLFDS];
 *         size_t n = sched_admin_pollfds(&a, p, SCHED_ADMIN_POLLFDS);
 *         poll(p, n, SCHED_TICK_MS);
 *         sched_admin_serve(&a, now_ms());   // accepts, reads, answers, closes; scrapes
 *     }
 *     sched_admin_close(&a);
 *
 * The connections are common/httpd.h's: each carries one request (Connection:
 * close), its head read up to SCHED_ADMIN_REQ_MAX bytes (431 beyond) and its body
 * (Content-Length, at most SCHED_CONFIG_MAX_BYTES; 413 beyond) within
 * SCHED_ADMIN_DEADLINE_MS (closed after), answered, and closed; at most
 * SCHED_ADMIN_MAX_CONNS at once (one more closes the oldest). Endpoints, the
 * GETs but / computed from one status snapshot (`status_fn`, a jansson object as
 * sched_sup_status documents):
 *     GET /            the operator page: one self-contained HTML page (admin_page.html,
 *                      embedded at build time; inline CSS and JS, and a
 *                      Content-Security-Policy that lets it load nothing else) that
 *                      fetches GET /v1/status every 2 s and shows it. It holds no data,
 *                      so it is served without the token (the page asks for it when
 *                      /v1/status answers 401)
 *     GET /v1/status   the snapshot, each models[] entry with "traffic" added: its
 *                      request rate and p99 latency as the router measures them
 *                      ({"rate_rps", "p99_ms", "window_s"}, or null before two scrapes;
 *                      scrape.h). Reading it keeps the scraper going for 30 s: GET
 *                      /metrics on the snapshot's router.http every 2 s, driven from
 *                      this server's poll set and never blocking
 *     GET /v1/health   {"live": true, "models_ready": bool} (every model with
 *                      desired > 0 has a ready replica)
 *     GET /metrics     Prometheus text (version 0.0.4) for the scheduler itself
 *     POST /v1/apply   a cluster config to apply (`apply_fn`; ?dry_run=1 only diffs)
 *     POST /v1/promote {"model": NAME}: finishes that model's canary (`promote_fn`)
 * When a token file is set, every request but GET / needs `Authorization: Bearer TOKEN`
 * (token_equal, constant time; 401 otherwise, checked before the path). Unknown
 * path 404, another method 405 (Allow: GET), a malformed request 400; every error
 * body is JSON {"error": "..."} naming what was wrong. The token is never logged.
 */
#ifndef CORRAL_SCHEDULER_ADMIN_H
#define CORRAL_SCHEDULER_ADMIN_H

#include <jansson.h>
#include <poll.h>
#include <stddef.h>

#include "config.h"
#include "error.h"
#include "scrape.h"

#define SCHED_ADMIN_MAX_CONNS 16
#define SCHED_ADMIN_REQ_MAX 16384       /* request line and headers */
#define SCHED_ADMIN_DEADLINE_MS 5000    /* from accept to the answer written */
/* What sched_admin_pollfds may fill: the connections, the listener and the scrape in
 * flight. */
#define SCHED_ADMIN_POLLFDS (SCHED_ADMIN_MAX_CONNS + 2)

struct httpd;

/* A new reference to the status snapshot (NULL when out of memory). */
typedef json_t *(*sched_admin_status_fn)(void *arg);

/* POST /v1/apply: `body` (len bytes, NUL-terminated) is a cluster config; returns the
 * answer (a new reference) and sets *http_status. dry_run: ?dry_run=1. */
typedef json_t *(*sched_admin_apply_fn)(void *arg, const char *body, size_t len, int dry_run,
                                        int *http_status);

/* POST /v1/promote: finishes `model`'s canary; returns the answer (a new reference)
 * and sets *http_status (200 promoted, 404 no such model, 409 no canary waits). */
typedef json_t *(*sched_admin_promote_fn)(void *arg, const char *model, int *http_status);

struct sched_admin {
    struct httpd *httpd;         /* the connections; NULL: closed */
    char url[SCHED_HOST_MAX + 32]; /* http://HOST:PORT, the port as bound */
    char *token;                 /* NULL: no token needed */
    sched_admin_status_fn status;
    sched_admin_apply_fn apply;  /* NULL: POST /v1/apply answers 404; set after open */
    sched_admin_promote_fn promote; /* NULL: POST /v1/promote answers 404; set after open */
    void *arg;
    struct sched_scrape scrape;  /* the router's metrics, for "traffic" in the status */
    long now_ms;                 /* of the current sched_admin_serve */
};

/* Listens on `where` (port 0: any free port) and reads the token file when given;
 * logs "corral-scheduler admin listening on http://HOST:PORT". */
int sched_admin_open(struct sched_admin *a, const struct sched_addr *where,
                     const char *token_file, sched_admin_status_fn status, void *arg,
                     struct cerr *e);

/* Fills `fds` (at most `cap`; SCHED_ADMIN_POLLFDS is always enough) with what the server
 * waits for; returns how many. */
size_t sched_admin_pollfds(const struct sched_admin *a, struct pollfd *fds, size_t cap);

/* Makes progress on every connection and on the scrape without blocking (call after
 * each poll, and at least every SCHED_TICK_MS: a scrape's deadline is checked here). */
void sched_admin_serve(struct sched_admin *a, long now_ms);

void sched_admin_close(struct sched_admin *a);

/* The metrics text of a status snapshot (malloc'd; NULL when out of memory). */
char *sched_admin_metrics(const json_t *status);

#endif
