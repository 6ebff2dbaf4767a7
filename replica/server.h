/*
 * The replica's RPC server: an NNG REP socket served by many contexts, each
 * receiving one Request at a time, feeding one executor thread through a FIFO.
 *
 * Health and metadata requests are answered on the NNG callback thread (they
 * touch no engine state); infer requests are queued and run one after another
 * by the executor, which owns the engine. Every received request gets exactly
 * one reply: a Response carrying the result or an Error with a corral code.
 *
 * Usage:
 *     struct replica_server *srv;
 *     replica_server_start(&srv, url, eng, cfg, &opts, &e);  // listening on return
 *     ... wait for a signal ...
 *     replica_server_stop(srv);  // closes the socket, joins the executor, frees
 *
 * The engine and config are borrowed and must outlive the server.
 */
#ifndef CORRAL_REPLICA_SERVER_H
#define CORRAL_REPLICA_SERVER_H

#include <stddef.h>

#include "engine.h"
#include "error.h"
#include "model_repo.h"

struct replica_server;

struct replica_server_options {
    int contexts;          /* concurrent NNG contexts (requests accepted at once) */
    size_t max_queue;      /* infer requests waiting for the executor before EQUEUEFULL */
    int stall_ms;          /* executor busy this long on one request => not live */
};
#define REPLICA_SERVER_OPTIONS_DEFAULT {.contexts = 64, .max_queue = 1024, .stall_ms = 10000}

int replica_server_start(struct replica_server **out, const char *url, struct engine *eng,
                         const struct model_config *cfg, const struct replica_server_options *opt,
                         struct cerr *e);
/* The URL actually bound (resolves port 0 to the chosen port). */
const char *replica_server_url(const struct replica_server *srv);
void replica_server_stop(struct replica_server *srv);

#endif
