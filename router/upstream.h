/*
 * Upstream: the router's NNG clients to replicas, their health, and the choice
 * of replica per request.
 *
 * Usage: upstream_new(loop, &cfg), upstream_add_replica(model, url) for every
 * --replica, upstream_start() (dials without blocking, so a replica that is
 * down does not delay start, and begins the health loop), then
 * upstream_infer() per request. upstream_close() cancels everything; the
 * callbacks of calls still in flight run (with CORRAL_EUNAVAIL) before it
 * returns, and the loop must then run once more so the libuv handle closes.
 *
 * Threads: every function here, and every callback it makes, runs on the libuv
 * loop thread. NNG completes its aios on its own threads; those completions are
 * queued under a mutex and handed to the loop with a uv_async_t, so no libuv
 * or router state is ever touched from an NNG thread.
 *
 * Health: every health_interval_ms each replica gets a HealthRequest (and a
 * MetadataRequest until one has been answered). A replica is ready only while
 * its last health answer said ready; a failed or late answer, or the loss of
 * its connection, makes it not ready. Balancing: round robin over the ready
 * replicas of the model (and version, when one is named). A call that fails at
 * the transport level (the replica's connection drops while the call is in
 * flight) is retried once on another ready replica; a timeout is not retried.
 */
#ifndef CORRAL_ROUTER_UPSTREAM_H
#define CORRAL_ROUTER_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "corral.pb-c.h"
#include "error.h"

struct upstream;

struct upstream_config {
    unsigned health_interval_ms;
    unsigned health_timeout_ms; /* 0: twice the interval, at least 1000 */
};

/*
 * Completion of upstream_infer: rc is CORRAL_OK with `resp` the replica's
 * InferResponse, or an error code with `msg` saying what failed (a replica's
 * own Error is passed through with its code and message). `resp` and `msg`
 * belong to the upstream and are only valid during the callback.
 */
typedef void (*upstream_infer_cb)(void *arg, int rc, const char *msg,
                                  const Corral__InferResponse *resp);

int upstream_new(struct upstream **out, uv_loop_t *loop, const struct upstream_config *cfg,
                 struct cerr *e);
int upstream_add_replica(struct upstream *u, const char *model, const char *url, struct cerr *e);
int upstream_start(struct upstream *u, struct cerr *e);
void upstream_close(struct upstream *u);

/* Configured models, in the order first named. */
size_t upstream_model_count(const struct upstream *u);
const char *upstream_model_name(const struct upstream *u, size_t i);
int upstream_model_known(const struct upstream *u, const char *model);
/* Number of ready replicas of the model (and of `version` when not NULL). */
int upstream_model_ready(const struct upstream *u, const char *model, const char *version);
/* The model's metadata as answered by one of its replicas; NULL until one has. */
const Corral__MetadataResponse *upstream_model_metadata(const struct upstream *u,
                                                        const char *model);
/*
 * Writes the versions the model's replicas report (comma separated, "" if none
 * has answered) into buf. Returns 1 if `version` is among them.
 */
int upstream_model_versions(const struct upstream *u, const char *model, const char *version,
                            char *buf, size_t len);

/*
 * Sends `req` (an infer Request; packed here, so the caller keeps ownership of
 * it) to a ready replica of req->infer->model_name, version
 * req->infer->model_version when not empty. On CORRAL_OK the callback runs
 * exactly once, later; on an error (no ready replica: CORRAL_EUNAVAIL) it never
 * runs and `e` says why.
 */
int upstream_infer(struct upstream *u, const Corral__Request *req, unsigned timeout_ms,
                   upstream_infer_cb cb, void *arg, struct cerr *e);

/* Calls currently in flight (all kinds). */
unsigned upstream_inflight(const struct upstream *u);

#endif
