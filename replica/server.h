/*
 * The replica's RPC server: an NNG REP socket served by many contexts, each
 * receiving one Request at a time and handing infer requests to the batcher.
 *
 * Health, metadata and stats requests are answered on the NNG callback thread
 * (they touch no engine state); infer requests are validated and queued by the
 * batcher (replica/batcher.h), which owns the engine while it runs. Every
 * received request gets exactly one reply: a Response carrying the result or
 * an Error with a corral code.
 *
 * Usage:
 *     struct replica_server *srv;
 *     replica_server_start(&srv, url, eng, cfg, &opts, &e);  // listening on return
 *     ... wait for a signal ...
 *     replica_server_stop(srv);  // closes the socket, joins the executor, frees
 *
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
    int contexts;             /* concurrent NNG contexts (requests accepted at once) */
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
 * The batcher's reply function (batcher_reply_fn): queues buf (owned) for the
 * server's sender thread, which sends it on the NNG context `owner` that
 * received the request; before the server has started (or after it stopped)
 * it sends at once. Pass it to batcher_create.
 */
void replica_server_reply(void *owner, uint8_t *buf, size_t len);

#endif
