/*
 * Upstream: the router's connections to replicas, their health, and the choice
 * of replica per request.
 *
 * Usage: upstream_new(loop, &cfg), upstream_add_replica(model, url) for every
 * --replica, upstream_start() (dials without blocking, so a replica that is
 * down does not delay start, and begins the health loop), then
 * upstream_infer() or upstream_infer_packed() per request. upstream_close()
 * cancels everything; the callbacks of calls still in flight run (with
 * CORRAL_EUNAVAIL) before it returns, and the loop must then run once more so
 * the libuv handles close.
 *
 * Transport: one SP REQ connection per replica (sp/sp_uv_client.h), the wire
 * protocol of the replica's REP socket, driven by the libuv loop itself:
 * a request is written to the socket by the thread that routes it and answers
 * are read by the same loop, so no request crosses a thread.
 *
 * Threads: every function here, and every callback it makes, runs on the libuv
 * loop thread. A router with several threads gives each its own upstream (own
 * connections, own health loop).
 *
 * Health: every health_interval_ms each replica gets a HealthRequest (and a
 * MetadataRequest until one has been answered). A replica takes traffic only
 * while its last health answer said live and ready (a draining or loading
 * replica says not ready) and it is not ejected. Passive health: a replica
 * whose calls fail at the transport level eject_after times in a row is
 * ejected until a health probe succeeds again. A replica that loses its
 * connection, stops answering health probes or reports not live has its calls
 * in flight cancelled and retried.
 *
 * Balancing: least outstanding requests with power-of-two choices: two
 * distinct eligible replicas (ready, not ejected, version matching, below
 * max_inflight) are drawn at random and the one with fewer calls in flight
 * wins. A model with a canary split (upstream_sync_canaries) first draws the
 * side of a request that names no version: the canary version with the
 * split's percent, its other versions otherwise; when that side has no
 * eligible replica, any eligible replica of the model takes it, so the split
 * never fails a request. Requests that name a version, and retries, ignore
 * the split. A call that fails before the replica answered (unreachable, connection
 * lost, declared unhealthy) is sent once more to another replica if the
 * deadline allows; a late answer from the first is dropped (each request
 * carries its own id). An error the replica answered is never retried.
 */
#ifndef CORRAL_ROUTER_UPSTREAM_H
#define CORRAL_ROUTER_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "corral.pb-c.h"
#include "error.h"

struct upstream;
struct up_call;

/* RETRY: a request sent again to another replica; EJECT: a replica taken out of rotation;
 * SENT: an inference request written to a replica (each attempt); GONE: a replica that
 * left the table is released, nothing will be sent to it again. */
enum upstream_event { UPSTREAM_EV_RETRY, UPSTREAM_EV_EJECT, UPSTREAM_EV_SENT, UPSTREAM_EV_GONE };

struct upstream_config {
    unsigned health_interval_ms;
    unsigned health_timeout_ms; /* 0: one interval, at least 250 */
    unsigned max_inflight;      /* per replica; 0: no cap */
    unsigned eject_after;       /* consecutive transport failures; 0: 2 */
    /* Optional: told about retries, ejections and requests sent (for metrics), with the
     * model and the replica's URL. */
    void (*event)(void *arg, enum upstream_event ev, const char *model, const char *replica);
    void *event_arg;
};

/*
 * Completion of an infer call. rc is CORRAL_OK with the answer, or an error
 * code with `msg` saying what failed (a replica's own Error is passed through
 * with its code and message in decoded mode). In decoded mode (upstream_infer)
 * `resp` is the replica's InferResponse; in packed mode (upstream_infer_packed)
 * `raw`/`raw_len` are the replica's packed Response, passed on unread (it may
 * carry an Error). Everything belongs to the upstream and is only valid during
 * the callback.
 */
struct upstream_done {
    int rc;
    const char *msg;
    const Corral__InferResponse *resp;
    const uint8_t *raw;
    size_t raw_len;
    const char *replica; /* URL of the replica that answered or failed last, or "" */
    const char *version; /* that replica's model version as its health reports it, or "" */
    int attempts;
    uint64_t upstream_ns; /* send to answer on the last attempt */
};
typedef void (*upstream_cb)(void *arg, const struct upstream_done *d);

int upstream_new(struct upstream **out, uv_loop_t *loop, const struct upstream_config *cfg,
                 struct cerr *e);
int upstream_add_replica(struct upstream *u, const char *model, const char *url, struct cerr *e);

/* One entry of the router's replica table (router/membership.h). */
struct upstream_member {
    const char *model;
    const char *version; /* "" for whatever the replica serves */
    const char *url;
    int draining;        /* no new requests; those in flight are answered */
};
/*
 * Makes the replicas match the table: new URLs are added (and dialled when the
 * upstream runs), entries marked draining get no new requests, and replicas
 * absent from the table get none either and are released once their requests
 * in flight are answered. Loop thread only; safe to repeat with the same table.
 */
int upstream_sync(struct upstream *u, const struct upstream_member *t, size_t n, struct cerr *e);
/* A canary split of the replica table (router/membership.h). */
struct upstream_canary {
    const char *model;
    const char *version; /* not "" */
    int percent;         /* 0..100 of the model's requests that name no version */
};
/*
 * Makes the models' canary splits match the table's: every model named gets
 * its split, every other model loses its own. A split for a model with no
 * replica here does nothing until the model has one (call it after
 * upstream_sync, with the whole table, each time). Loop thread only.
 */
int upstream_sync_canaries(struct upstream *u, const struct upstream_canary *t, size_t n,
                           struct cerr *e);
/* The model's canary split in force here: its percent with *version set, or -1 for none. */
int upstream_model_canary(const struct upstream *u, const char *model, const char **version);
int upstream_start(struct upstream *u, struct cerr *e);
void upstream_close(struct upstream *u);

/* Configured models, in the order first named. */
size_t upstream_model_count(const struct upstream *u);
const char *upstream_model_name(const struct upstream *u, size_t i);
int upstream_model_known(const struct upstream *u, const char *model);
/* Number of the model's replicas in the replica table (draining ones included). */
int upstream_model_in_table(const struct upstream *u, const char *model);
/* Number of replicas taking traffic for the model (and `version` when not NULL or ""). */
int upstream_model_ready(const struct upstream *u, const char *model, const char *version);
/*
 * The model's metadata as answered by one of its replicas serving `version`
 * (any when NULL or ""), a ready one preferred; NULL until one has answered.
 */
const Corral__MetadataResponse *upstream_model_metadata(const struct upstream *u,
                                                        const char *model, const char *version);
/*
 * The version number a request's `version` (a number or an alias some replica of the
 * model reports) stands for: the version of a replica taking traffic that matches,
 * else of any that answered, else `version` itself. Valid until the next health answer.
 */
const char *upstream_version_resolve(const struct upstream *u, const char *model,
                                     const char *version);
/* Writes the aliases the model's replicas report, "production=2, staging=3" ("" if
 * none), into buf. */
void upstream_model_aliases(const struct upstream *u, const char *model, char *buf, size_t len);
/*
 * Writes the versions the model's replicas report (comma separated, "" if none
 * has answered) into buf. Returns 1 if `version` is among them, or an alias of one.
 */
int upstream_model_versions(const struct upstream *u, const char *model, const char *version,
                            char *buf, size_t len);

/*
 * Sends `req` (an infer Request; packed here, so the caller keeps ownership of
 * it) to a replica of req->infer->model_name, version req->infer->model_version
 * when not empty. On CORRAL_OK the callback runs exactly once, later, and
 * *handle (when not NULL) identifies the call for upstream_cancel until then.
 * On an error it never runs and `e` says why: CORRAL_ENOTFOUND (unknown model
 * or version), CORRAL_EUNAVAIL (no replica takes traffic), CORRAL_EQUEUEFULL
 * (every eligible replica is at max_inflight).
 */
int upstream_infer(struct upstream *u, const Corral__Request *req, unsigned timeout_ms,
                   upstream_cb cb, void *arg, struct up_call **handle, struct cerr *e);
/* Same, for a Request already packed in the `len` bytes at `msg` (copied). */
int upstream_infer_packed(struct upstream *u, const char *model, const char *version,
                          const void *msg, size_t len, unsigned timeout_ms, upstream_cb cb,
                          void *arg, struct up_call **handle, struct cerr *e);
/*
 * Gives up on a call (its client went away): a late answer from the replica
 * is dropped, no retry follows, and the callback runs later (on the next loop
 * turn, never inside this function) with CORRAL_EUNAVAIL.
 */
void upstream_cancel(struct upstream *u, struct up_call *c);

/* Calls currently in flight (all kinds). */
unsigned upstream_inflight(const struct upstream *u);
/* Inference requests accepted and not yet answered (a drain waits for 0). */
unsigned upstream_infer_calls(const struct upstream *u);

/* ---- statistics ---- */

struct upstream_stats {
    const char *model;
    const char *url;
    const char *version; /* as the replica's health reports it, "" if unknown */
    const Corral__StatsResponse *stats; /* NULL when the replica did not answer */
    const char *error;                  /* why not, when stats is NULL */
};
typedef void (*upstream_stats_cb)(void *arg, const struct upstream_stats *s, size_t n);

/*
 * Asks every replica of `model` (all models when NULL) serving `version` (any
 * when NULL or "") for its StatsResponse and calls cb once with all answers.
 * The callback runs later, or before this returns when no replica had to be
 * asked. Returns CORRAL_ENOMEM (callback never runs) when nothing could start.
 */
int upstream_stats(struct upstream *u, const char *model, const char *version,
                   unsigned timeout_ms, upstream_stats_cb cb, void *arg, struct cerr *e);

/* ---- replica table, for status and metrics ---- */

struct upstream_replica_info {
    const char *model;
    const char *url;
    const char *version; /* "" until it answered */
    const char *state;   /* "ready", "not_ready", "ejected", "connecting", "draining"
                            (the table says so) or "removed" (finishing its requests) */
    const char *why;     /* why it takes no traffic, "" when it does */
    const char *table_version; /* the version the replica table names, "" for any */
    unsigned outstanding;
    unsigned fail_streak;
};
/* Replicas in the table that have not answered a health request yet. */
size_t upstream_unanswered(const struct upstream *u);
size_t upstream_replica_count(const struct upstream *u);
void upstream_replica_info(const struct upstream *u, size_t i, struct upstream_replica_info *out);
/* Replica i's metadata answer (owned by the upstream), NULL until it has answered one. */
const Corral__MetadataResponse *upstream_replica_metadata(const struct upstream *u, size_t i);

#endif
