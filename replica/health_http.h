/*
 * health_http: the replica's HTTP endpoint for probes and scrapes (--health-listen
 * HOST:PORT), for Kubernetes' startup, readiness and liveness probes and for
 * Prometheus. A small HTTP/1.1 server (common/httpd.h) on a thread of its own, so
 * a busy I/O thread or batcher never delays a probe, and a stuck executor is
 * reported rather than hidden:
 *
 *   GET /live     200 while the executor makes progress (the batcher's stall check,
 *                 the `live` of the SP health answer); 503 once one batch has
 *                 computed past the stall limit. Live while starting and draining.
 *   GET /ready    200 only in state ready: loaded, every bucket warmed, parity
 *                 vectors reproduced, live, not draining; 503 otherwise.
 *   GET /metrics  Prometheus text (0.0.4): state, live, ready, queue depth,
 *                 requests in flight, and the batcher's counters (replica_metrics).
 * /live and /ready answer JSON: {"live", "ready", "state", "reason", "model",
 * "version"}, the SP health answer's fields (replica/server.h, States). HEAD is
 * answered like GET; another method is 405, another path 404.
 *
 * Usage:
 *     struct health_http *hh;
 *     health_http_start(&hh, "0.0.0.0:8080", srv, &e);   // after replica_server_start
 *     ... health_http_port(hh) ...
 *     health_http_stop(hh);                              // before replica_server_stop
 * The server is borrowed and must outlive the endpoint.
 */
#ifndef CORRAL_REPLICA_HEALTH_HTTP_H
#define CORRAL_REPLICA_HEALTH_HTTP_H

#include "error.h"
#include "server.h"

struct health_http;

/* where: HOST:PORT (common/hostport.h; port 0 picks one, * or 0.0.0.0 for any). */
int health_http_start(struct health_http **out, const char *where, struct replica_server *srv,
                      struct cerr *e);
int health_http_port(const struct health_http *hh);
void health_http_stop(struct health_http *hh);

/*
 * The metrics text of the replica's state (malloc'd, NUL-terminated; NULL when out of
 * memory). Separate so it can be tested without a socket.
 */
char *health_http_metrics(struct replica_server *srv);

#endif
