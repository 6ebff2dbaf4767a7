/*
 * The router's RPC endpoint for services: SP REP over TCP (the protocol of
 * NNG's REP socket) taking the wire Request (proto/corral.proto) and answering
 * one Response per request, the same messages replicas speak. libcorral
 * (include/corral/client.h, an NNG REQ socket) is its client.
 *
 * Infer requests are forwarded as they came (no re-encoding) to a replica of
 * InferRequest.model_name chosen by the thread's upstream, with the same
 * balancing, retry and deadline rules as HTTP (parameter "timeout" in µs may
 * shorten the default). The replica's Response goes back unchanged; failures
 * in the router become an Error with a corral code. A HealthRequest is
 * answered by the router (ready when every model has a ready replica). A
 * MetadataRequest or StatsRequest names no model, so it is forwarded only when
 * the router serves exactly one model.
 *
 * Usage:
 *     rpc_new(&rpc, url, contexts, n_lanes, timeout_ms, &e);   // url: tcp://HOST:PORT
 *     // on each router thread i, before its loop runs:
 *     rpc_lane_init(rpc, i, loop, upstream, metrics, &e);
 *     rpc_start(rpc, &bound_url, &e);     // any thread: listening
 *     ...
 *     rpc_quiesce(rpc);                   // no new requests are taken
 *     // on each router thread, while closing its loop: rpc_lane_close(rpc, i)
 *     rpc_free(rpc);                      // after every thread has stopped
 *
 * Threads: every lane (router thread) listens on its own socket bound to the
 * same address with SO_REUSEPORT, so the kernel spreads connections over the
 * lanes, and serves its connections on its own loop (sp/sp_uv_server.h),
 * where its upstream lives: a request crosses no thread. rpc_start() binds
 * the sockets on the calling thread (so that a taken port is reported at
 * once) and hands them to the loops; rpc_quiesce() closes the listeners and
 * stops reading requests while those in flight are answered. At most
 * `contexts` requests (split evenly over the lanes) are in flight at once;
 * further ones wait in their connections.
 */
#ifndef CORRAL_ROUTER_RPC_H
#define CORRAL_ROUTER_RPC_H

#include <stddef.h>
#include <uv.h>

#include "error.h"
#include "metrics.h"
#include "upstream.h"

struct rpc;

int rpc_new(struct rpc **out, const char *url, unsigned contexts, unsigned n_lanes,
            unsigned timeout_ms, struct cerr *e);
int rpc_lane_init(struct rpc *r, unsigned lane, uv_loop_t *loop, struct upstream *up,
                  struct metrics *m, struct cerr *e);
/* Listens and starts receiving; *bound gets the URL actually bound (port 0 resolved). */
/* Requires the bearer token `token` (borrowed, must outlive r) in every request but
 * health (Request.auth_token); refused with CORRAL_EUNAUTH otherwise. Before rpc_start. */
void rpc_set_token(struct rpc *r, const char *token);
int rpc_start(struct rpc *r, char *bound, size_t bound_len, struct cerr *e);
void rpc_quiesce(struct rpc *r);
/* On the lane's loop thread: closes its handle (the loop must run once more). */
void rpc_lane_close(struct rpc *r, unsigned lane);
void rpc_free(struct rpc *r);

#endif
