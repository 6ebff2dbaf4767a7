/*
 * The replica's RPC server: the REP side of the SP request/reply protocol over
 * TCP (sp/sp_epoll_server.h), which NNG REQ sockets and the router dial. One I/O
 * thread reads requests from every connection and decodes them.
 *
 * Health, metadata and stats requests are answered on the I/O thread (they
 * touch no engine state); infer requests are validated and queued by the
 * batcher (replica/batcher.h), which owns the engine while it runs and replies
 * from its own threads, writing straight to the requester's socket. Every
 * received request gets exactly one reply: a Response carrying the result or
 * an Error with a corral code. A reply whose connection has closed is dropped.
 *
 * The server opens before the model is loaded, so that health can say what the
 * replica is doing. Its state, told on every health answer:
 *   starting  (reason: loading, verifying parity, warming N buckets) until
 *             replica_server_ready(); infer, metadata and stats are refused
 *             with CORRAL_EUNAVAIL "replica is starting: <reason>";
 *   ready     live and taking requests;
 *   failed    the batcher reports the executor stalled (reason says how long);
 *             ready again once it moves;
 *   draining  after replica_server_drain(): health says ready false (live as the
 *             executor is), the batcher refuses new infer requests with
 *             CORRAL_EDRAINING and answers the ones it holds; metadata and stats
 *             are still answered.
 * `live` is the batcher's stall check, separate from the state (true while
 * starting); `ready` is true only in state ready. replica_server_health() gives
 * the same answer to other probes (the HTTP ones, replica/health_http.h).
 *
 * Usage:
 *     struct replica_server *srv;
 *     replica_server_start(&srv, url, cfg, contexts, &e);  // listening, "starting"
 *     replica_server_starting(srv, "warming %zu buckets", n);  // what health says
 *     replica_server_ready(srv, &opts);  // opts.batcher started: takes requests
 *     ... a signal ...
 *     replica_server_drain(srv, "SIGTERM");  // with batcher_drain on the batcher
 *     replica_server_stop(srv);  // stops the batcher, flushes and closes, frees
 *
 * url is tcp://HOST:PORT (HOST an address, [IPv6], a name, or * for any; port
 * 0 picks one, see replica_server_url). An address in use is CORRAL_EUNAVAIL.
 * The config and batcher (opts.batcher, started) are borrowed and must outlive
 * the server; stopping the server stops the batcher. The state calls may come
 * from any thread.
 */
#ifndef CORRAL_REPLICA_SERVER_H
#define CORRAL_REPLICA_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model_repo.h"

struct replica_server;

struct batcher;

/* What replica_server_ready() hands over once the model is loaded and warmed. */
struct replica_server_options {
    struct batcher *batcher;  /* queues and runs infer requests (required) */
    /* Plans built at warm-up, reported in metadata parameters (plan_count,
     * arena_bytes_max: the one arena the plans share, plans = "shape:bytes;...").
     * `plans` is borrowed and must outlive the server. */
    int64_t plan_count, arena_bytes_max;
    const char *plans;
    const char *device; /* "cpu" or "cuda:N", reported in metadata; borrowed like plans */
};
#define REPLICA_SERVER_OPTIONS_DEFAULT {.batcher = NULL}

/* contexts: requests accepted and not yet answered; at this many the server stops
 * reading from its connections until replies free room (they wait, none is refused). */
int replica_server_start(struct replica_server **out, const char *url,
                         const struct model_config *cfg, int contexts, struct cerr *e);
/* The URL actually bound (resolves port 0 to the chosen port). */
const char *replica_server_url(const struct replica_server *srv);
/* Sets the starting reason health reports (printf format). */
void replica_server_starting(struct replica_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Ready: infer requests go to opt->batcher (started); metadata reports opt's plans.
 * opt is copied. */
void replica_server_ready(struct replica_server *srv, const struct replica_server_options *opt);
/* For a model that takes images (cfg->image.enabled), before replica_server_ready: starts
 * the image workers (replica/image_pool.h) that decode requests carrying encoded images,
 * which then go to the batcher like any other. */
struct image_pool_options;
int replica_server_images(struct replica_server *srv, const struct image_pool_options *opt,
                          struct cerr *e);
/* Draining because of `cause` ("SIGTERM", copied): health says so with the count of
 * requests still to answer. Call batcher_drain too (the batcher refuses new work). */
void replica_server_drain(struct replica_server *srv, const char *cause);
/* What every health answer says (the SP one and the HTTP probes, replica/health_http.h). */
struct replica_health {
    const char *state; /* "starting", "ready", "failed" or "draining" (static text) */
    int live, ready;
    char reason[512];  /* "" when ready */
};
void replica_server_health(struct replica_server *srv, struct replica_health *h);
/* The batcher once the server is ready (for statistics), NULL while starting. */
struct batcher *replica_server_batcher(struct replica_server *srv);
const struct model_config *replica_server_config(const struct replica_server *srv);
void replica_server_stop(struct replica_server *srv);
/*
 * The batcher's reply function (batcher_reply_fn): sends buf (owned, freed
 * here) as the reply to the request `owner` (the handle the server passed to
 * batcher_submit), from the calling thread when the connection's socket takes
 * it at once. Pass it to batcher_create.
 */
void replica_server_reply(void *owner, uint8_t *buf, size_t len);

#endif
