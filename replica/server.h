/*
 * The replica's RPC server: the REP side of the SP request/reply protocol over
 * TCP (replica/sp_rep.h), which NNG REQ sockets and the router dial. One I/O
 * thread reads requests from every connection and decodes them.
 *
 * Health, metadata and stats requests are answered on the I/O thread (they
 * touch no engine state); infer requests are validated and queued by the
 * batcher (replica/batcher.h), which owns the engine while it runs and replies
 * from its own threads, writing straight to the requester's socket. Every
 * received request gets exactly one reply: a Response carrying the result or
 * an Error with a corral code. A reply whose connection has closed is dropped.
 *
 * Usage:
 *     struct replica_server *srv;
 *     replica_server_start(&srv, url, eng, cfg, &opts, &e);  // listening on return
 *     ... wait for a signal ...
 *     replica_server_stop(srv);  // stops the batcher, flushes and closes, frees
 *
 * url is tcp://HOST:PORT (HOST an address, [IPv6], a name, or * for any; port
 * 0 picks one, see replica_server_url). An address in use is CORRAL_EUNAVAIL.
 * The engine, config and batcher (opts.batcher, started) are borrowed and must
 * outlive the server; stopping the server stops the batcher.
 */
#ifndef CORRAL_REPLICA_SERVER_H
#define CORRAL_REPLICA_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "model_repo.h"

struct replica_server;

struct batcher;

struct replica_server_options {
    /* Requests accepted and not yet answered; at this many the server stops reading from
     * its connections until replies free room (the requests wait, none is refused). */
    int contexts;
    struct batcher *batcher;  /* queues and runs infer requests (required) */
    /* Plans built at warm-up, reported in metadata parameters (plan_count,
     * arena_bytes_max: the one arena the plans share, plans = "shape:bytes;...").
     * `plans` is borrowed and must outlive the server. */
    int64_t plan_count, arena_bytes_max;
    const char *plans;
};
#define REPLICA_SERVER_OPTIONS_DEFAULT {.contexts = 64, .batcher = NULL}

int replica_server_start(struct replica_server **out, const char *url, struct engine *eng,
                         const struct model_config *cfg, const struct replica_server_options *opt,
                         struct cerr *e);
/* The URL actually bound (resolves port 0 to the chosen port). */
const char *replica_server_url(const struct replica_server *srv);
void replica_server_stop(struct replica_server *srv);
/*
 * The batcher's reply function (batcher_reply_fn): sends buf (owned, freed
 * here) as the reply to the request `owner` (the handle the server passed to
 * batcher_submit), from the calling thread when the connection's socket takes
 * it at once. Pass it to batcher_create.
 */
void replica_server_reply(void *owner, uint8_t *buf, size_t len);

#endif
