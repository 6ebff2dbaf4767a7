/*
 * The upstream's insides, shared by its files (not for other modules):
 *   upstream.c    calls (start, deadline, completion), connections, lifecycle,
 *                 statistics gathers, the read-only accessors;
 *   up_health.c   health and metadata probes, readiness, passive ejection;
 *   up_balance.c  the choice of replica per request, and retries;
 *   up_members.c  the replica table: replicas added, marked draining, removed
 *                 and released at run time.
 *
 * Everything runs on the upstream's loop thread. Ownership: an up_replica is
 * owned by the upstream's arrays until it is reaped (removed from the table,
 * no call in flight, no gather holding it); then its connection's close
 * callback frees it. A call is owned by its replica's list while in flight.
 */
#ifndef CORRAL_ROUTER_UPSTREAM_INTERNAL_H
#define CORRAL_ROUTER_UPSTREAM_INTERNAL_H

#include "upstream.h"

#include "list.h"
#include "sp_uv_client.h"
#include "wire.h"

enum call_kind { CALL_INFER, CALL_HEALTH, CALL_METADATA, CALL_STATS };

/* How a call ended, besides an answer. */
enum { UP_OK = 0, UP_ETIMEDOUT, UP_ELOST, UP_ECLOSED, UP_ENOTCONN, UP_ECANCELED };

struct up_model;
struct gather;

#define UP_MAX_ALIASES 64

struct up_replica {
    struct upstream *u;
    struct up_model *model;
    char *url;
    struct sp_req *conn;
    int ready;    /* last health answer said live and ready */
    /* Ready until a health answer came late or said the executor stalls, while its
     * connection stays up: what a pause of a loaded machine looks like. Such a replica
     * still takes a model's requests when no replica of the model is ready (up_balance.c),
     * rather than the model answering 503. */
    int suspect;
    int ejected;  /* passive health: too many transport failures in a row */
    int draining; /* the replica table says draining: no new work, in-flight answered */
    int removed;  /* gone from the replica table: freed once nothing refers to it */
    unsigned refs; /* statistics gathers that point at its strings */
    int reaped;    /* out of the arrays; its connection's close callback frees it */
    char want_version[64]; /* the version the table names, "" for any */
    int answered; /* has answered a health request at least once */
    unsigned fail_streak;
    char version[64];
    /* The aliases of that version its health reports (aliases.json as the replica read it
     * at start); a request naming one of them matches as if it named the number. */
    char aliases[UP_MAX_ALIASES][64];
    unsigned n_aliases;
    int health_inflight;
    int meta_inflight;
    Corral__Response *meta; /* its metadata answer, owned */
    unsigned outstanding;   /* infer calls in flight */
    /* Every call in flight on this replica (struct up_call's link), oldest first: answers
     * mostly come back in order, so finding the call an answer belongs to takes a step or
     * two. */
    struct list_node calls;
    char why[256]; /* why it takes no traffic, for logs and error messages */
};

struct up_model {
    char *name;
    struct up_replica **replicas;
    size_t n;
    /* The table's canary split: canary_percent of the requests that name no version go to
     * replicas reporting canary_version, the others to the rest; "" for no split. */
    char canary_version[64];
    int canary_percent;
};

struct up_call {
    struct upstream *u;
    struct up_replica *r;
    enum call_kind kind;
    uint32_t id;
    uv_timer_t timer; /* the deadline */
    uint64_t deadline; /* loop time, ms */
    unsigned timeout_ms;
    int rv;
    const uint8_t *reply; /* the answer, valid while the call is being completed */
    size_t reply_len;
    struct list_node link;       /* on r->calls while in flight, else on no list */
    struct up_call *dnext;       /* on the upstream's deferred list */
    uint8_t *orig; /* the packed request, kept so a retry can resend it */
    size_t orig_len;
    int attempts;
    int aborted;        /* the caller gave up: no retry, answer "cancelled" */
    int replica_failed; /* cancelled because its replica was declared unhealthy */
    int raw;
    uint64_t t_launch;
    char version[64];
    upstream_cb cb;
    void *arg;
    struct gather *g; /* CALL_STATS */
    size_t g_idx;
};

struct gather {
    struct upstream_stats *items;
    struct up_replica **reps; /* each item's replica, held (refs) until the gather ends */
    Corral__Response **resps;
    char (*errs)[200];
    size_t n;
    unsigned pending;
    upstream_stats_cb cb;
    void *arg;
};

struct upstream {
    uv_loop_t *loop;
    struct upstream_config cfg;
    struct up_model *models;
    size_t n_models;
    struct up_replica **replicas;
    size_t n_replicas;
    uv_timer_t timer; /* health */
    uv_timer_t defer; /* completes the deferred calls on the next loop turn */
    struct up_call *dhead, *dtail;
    int handles_open;
    int started;
    int closing;
    unsigned inflight;
    unsigned infer_calls; /* accepted infer calls not yet finished, retries included once */
    uint32_t next_id;
    uint64_t rng;
};

/* ---- upstream.c ---- */
uint64_t up_rng_next(struct upstream *u);
struct up_call *up_call_new(struct upstream *u, enum call_kind kind, unsigned timeout_ms);
void up_call_free(struct up_call *c);
int up_pack_request(struct up_call *c, const Corral__Request *req);
/* Starts (or restarts, for a retry) a call on r; UP_OK or UP_ENOTCONN. */
int up_call_launch(struct up_call *c, struct up_replica *r);
void up_abort_calls(struct up_replica *r);
/* True when another replica of r's model takes traffic. */
int up_model_has_other(const struct up_replica *r);
const char *up_reason(int rv);
int up_connected(const struct up_replica *r);
int up_takes_traffic(const struct up_replica *r);
int up_version_matches(const struct up_replica *r, const char *version);
struct up_model *up_find_model(const struct upstream *u, const char *name);
void up_emit(struct upstream *u, enum upstream_event ev, const struct up_replica *r);
void up_replica_info(const struct up_replica *r, struct upstream_replica_info *out);
void up_on_conn_up(void *arg);
void up_on_conn_down(void *arg, const char *why);
void up_on_conn_reply(void *arg, uint32_t id, const uint8_t *body, size_t len);
void up_on_conn_closed(void *arg);

/* ---- up_health.c ---- */
/* `unhealthy`: the replica cannot be trusted to answer what it holds (lost, hung). */
void up_set_not_ready(struct up_replica *r, const char *why, int unhealthy);
void up_probe(struct up_replica *r, enum call_kind kind);
void up_on_health_done(struct up_replica *r, struct up_call *c);
void up_on_metadata_done(struct up_replica *r, struct up_call *c);
void up_note_failure(struct up_replica *r, const char *what);
void up_on_health_tick(uv_timer_t *t);

/* ---- up_balance.c ---- */
void up_on_infer_done(struct up_replica *r, struct up_call *c, int *requeued);

/* ---- up_members.c ---- */
extern const struct sp_req_events up_conn_events;
void up_reap_removed(struct upstream *u);

#endif
