#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sp_req.h"
#include "wire.h"

enum call_kind { CALL_INFER, CALL_HEALTH, CALL_METADATA, CALL_STATS };

/* How a call ended, besides an answer. */
enum { UP_OK = 0, UP_ETIMEDOUT, UP_ELOST, UP_ECLOSED, UP_ENOTCONN, UP_ECANCELED };

struct up_model;
struct gather;

struct up_replica {
    struct upstream *u;
    struct up_model *model;
    char *url;
    struct sp_req *conn;
    int ready;    /* last health answer said live and ready */
    int ejected;  /* passive health: too many transport failures in a row */
    int answered; /* has answered a health request at least once */
    unsigned fail_streak;
    char version[64];
    int health_inflight;
    int meta_inflight;
    Corral__Response *meta; /* its metadata answer, owned */
    unsigned outstanding;   /* infer calls in flight */
    /* Every call in flight on this replica, oldest first: answers mostly come back in
     * order, so finding the call an answer belongs to takes a step or two. */
    struct up_call *calls, *calls_tail;
    char why[256]; /* why it takes no traffic, for logs and error messages */
};

struct up_model {
    char *name;
    struct up_replica **replicas;
    size_t n;
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
    struct up_call *prev, *next; /* on r's list while in flight */
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

static uint64_t rng_next(struct upstream *u)
{
    /* xorshift64*: plenty for choosing replicas, and free of locks. */
    uint64_t x = u->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    u->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void on_call_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void call_free(struct up_call *c)
{
    if (!c)
        return;
    free(c->orig);
    c->orig = NULL;
    if (c->kind == CALL_INFER)
        c->u->infer_calls--;
    uv_close((uv_handle_t *)&c->timer, on_call_timer_closed);
}

static void replica_link(struct up_replica *r, struct up_call *c)
{
    c->r = r;
    c->next = NULL;
    c->prev = r->calls_tail;
    if (r->calls_tail)
        r->calls_tail->next = c;
    else
        r->calls = c;
    r->calls_tail = c;
}

static void replica_unlink(struct up_call *c)
{
    struct up_replica *r = c->r;
    if (!r)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else if (r->calls == c)
        r->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (r->calls_tail == c)
        r->calls_tail = c->prev;
    c->prev = c->next = NULL;
}

static void on_health_done(struct up_replica *r, struct up_call *c);
static void on_metadata_done(struct up_replica *r, struct up_call *c);
static void on_stats_done(struct up_replica *r, struct up_call *c);
static void on_infer_done(struct up_replica *r, struct up_call *c, int *requeued);

/* Ends a call that is off its replica's list: accounting, its handler, then freeing. */
static void complete(struct up_call *c, int rv)
{
    struct upstream *u = c->u;
    struct up_replica *r = c->r;
    uv_timer_stop(&c->timer);
    c->rv = rv;
    u->inflight--;
    if (c->kind == CALL_INFER)
        r->outstanding--;
    int requeued = 0;
    if (c->kind == CALL_HEALTH)
        on_health_done(r, c);
    else if (c->kind == CALL_METADATA)
        on_metadata_done(r, c);
    else if (c->kind == CALL_STATS)
        on_stats_done(r, c);
    else
        on_infer_done(r, c, &requeued);
    c->reply = NULL;
    c->reply_len = 0;
    if (!requeued)
        call_free(c);
}

static void on_defer(uv_timer_t *t)
{
    struct upstream *u = t->data;
    while (u->dhead) {
        struct up_call *c = u->dhead;
        u->dhead = c->dnext;
        if (!u->dhead)
            u->dtail = NULL;
        complete(c, c->rv);
    }
}

/* Takes c off its replica now (a late answer is then dropped) and completes it from the
 * loop, so that callers of upstream_cancel never see the callback run inside it. */
static void complete_later(struct up_call *c, int rv)
{
    struct upstream *u = c->u;
    replica_unlink(c);
    uv_timer_stop(&c->timer);
    c->rv = rv;
    c->dnext = NULL;
    if (u->dtail)
        u->dtail->dnext = c;
    else
        u->dhead = c;
    u->dtail = c;
    if (!u->closing)
        uv_timer_start(&u->defer, on_defer, 0, 0);
}

static void on_call_timeout(uv_timer_t *t)
{
    struct up_call *c = t->data;
    replica_unlink(c);
    complete(c, UP_ETIMEDOUT);
}

/* Starts (or restarts, for a retry) a call on replica r with c->orig. */
static int call_launch(struct up_call *c, struct up_replica *r)
{
    struct upstream *u = c->u;
    c->id = u->next_id++ & 0x7fffffffu;
    if (sp_req_send(r->conn, c->id, c->orig, c->orig_len) != 0)
        return UP_ENOTCONN;
    c->rv = 0;
    c->replica_failed = 0;
    c->attempts++;
    c->t_launch = uv_hrtime();
    replica_link(r, c);
    if (c->kind == CALL_INFER)
        r->outstanding++;
    u->inflight++;
    uint64_t now = uv_now(u->loop);
    uv_timer_start(&c->timer, on_call_timeout, c->deadline > now ? c->deadline - now : 1, 0);
    return UP_OK;
}

static struct up_call *call_new(struct upstream *u, enum call_kind kind, unsigned timeout_ms)
{
    struct up_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->u = u;
    c->kind = kind;
    c->timeout_ms = timeout_ms;
    c->deadline = uv_now(u->loop) + timeout_ms;
    if (kind == CALL_INFER)
        u->infer_calls++;
    uv_timer_init(u->loop, &c->timer);
    c->timer.data = c;
    return c;
}

static int pack_request(struct up_call *c, const Corral__Request *req)
{
    return wire_pack_request(req, &c->orig, &c->orig_len);
}

/* Ends the calls in flight on r so they are retried elsewhere (or fail). */
static void replica_abort_calls(struct up_replica *r)
{
    struct up_call *c = r->calls;
    r->calls = r->calls_tail = NULL;
    while (c) {
        struct up_call *next = c->next;
        c->prev = c->next = NULL;
        c->replica_failed = 1;
        complete(c, UP_ELOST);
        c = next;
    }
}

static const char *up_reason(int rv)
{
    switch (rv) {
    case UP_ETIMEDOUT: return "no answer in time";
    case UP_ELOST: return "connection lost";
    case UP_ECLOSED: return "router shutting down";
    case UP_ENOTCONN: return "not connected";
    case UP_ECANCELED: return "cancelled";
    default: return "unknown failure";
    }
}

static int connected(const struct up_replica *r)
{
    return r->conn && sp_req_connected(r->conn);
}

/* `unhealthy`: the replica cannot be trusted to answer what it holds (lost, hung). */
static void replica_set_not_ready(struct up_replica *r, const char *why, int unhealthy)
{
    int was = r->ready && !r->ejected;
    if (r->ready)
        LOG_WARN("replica %s of model '%s' is not ready: %s", r->url, r->model->name, why);
    else if (strcmp(r->why, why) != 0)
        LOG_DEBUG("replica %s of model '%s' still not ready: %s", r->url, r->model->name, why);
    r->ready = 0;
    snprintf(r->why, sizeof r->why, "%s", why);
    if (unhealthy && was && r->outstanding)
        replica_abort_calls(r);
}

static void probe(struct up_replica *r, enum call_kind kind)
{
    struct upstream *u = r->u;
    if (u->closing)
        return;
    if (!connected(r)) {
        char why[256];
        snprintf(why, sizeof why, "not connected (is a replica listening at %.150s?)", r->url);
        if (kind == CALL_HEALTH)
            replica_set_not_ready(r, why, 1);
        return;
    }
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__HealthRequest hr = CORRAL__HEALTH_REQUEST__INIT;
    Corral__MetadataRequest mr = CORRAL__METADATA_REQUEST__INIT;
    if (kind == CALL_HEALTH) {
        req.kind_case = CORRAL__REQUEST__KIND_HEALTH;
        req.health = &hr;
    } else {
        req.kind_case = CORRAL__REQUEST__KIND_METADATA;
        req.metadata = &mr;
    }
    struct up_call *c = call_new(u, kind, u->cfg.health_timeout_ms);
    if (!c)
        return;
    if (pack_request(c, &req) != 0 || call_launch(c, r) != UP_OK) {
        call_free(c);
        return;
    }
    if (kind == CALL_HEALTH)
        r->health_inflight = 1;
    else
        r->meta_inflight = 1;
}

/* ---- connection events (loop thread) ---- */

static void on_conn_up(void *arg)
{
    struct up_replica *r = arg;
    LOG_DEBUG("connected to replica %s", r->url);
    if (!r->health_inflight && !r->u->closing)
        probe(r, CALL_HEALTH);
}

static void on_conn_down(void *arg, const char *why)
{
    struct up_replica *r = arg;
    char w[256];
    snprintf(w, sizeof w, "connection lost (%.200s)", why);
    replica_set_not_ready(r, w, 0);
    /* Calls waiting on the dead connection would only time out; end them now and let the
     * retry logic decide. */
    if (r->calls)
        replica_abort_calls(r);
}

static void on_conn_reply(void *arg, uint32_t id, const uint8_t *body, size_t len)
{
    struct up_replica *r = arg;
    struct up_call *c = r->calls;
    while (c && c->id != id)
        c = c->next;
    if (!c) {
        LOG_DEBUG("replica %s answered request %u after it ended; dropped", r->url, id);
        return;
    }
    replica_unlink(c);
    c->reply = body;
    c->reply_len = len;
    complete(c, UP_OK);
}

static void on_health_done(struct up_replica *r, struct up_call *c)
{
    r->health_inflight = 0;
    if (r->u->closing)
        return;
    char why[256];
    if (c->rv && !connected(r)) {
        snprintf(why, sizeof why, "not connected (is a replica listening at %.150s?)", r->url);
        replica_set_not_ready(r, why, 1);
        return;
    }
    if (c->rv) {
        snprintf(why, sizeof why, "health check failed: %s", up_reason(c->rv));
        replica_set_not_ready(r, why, 1);
        return;
    }
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (wire_decode_response(c->reply, c->reply_len, &resp, &e) != 0) {
        snprintf(why, sizeof why, "invalid health answer: %.200s", e.msg);
        replica_set_not_ready(r, why, 1);
        return;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_HEALTH) {
        snprintf(why, sizeof why, "health request answered with message kind %d",
                 (int)resp->kind_case);
        replica_set_not_ready(r, why, 1);
        goto done;
    }
    const Corral__HealthResponse *h = resp->health;
    r->answered = 1;
    snprintf(r->version, sizeof r->version, "%s", h->model_version ? h->model_version : "");
    if (h->model_name && h->model_name[0] && strcmp(h->model_name, r->model->name) != 0) {
        snprintf(why, sizeof why, "it serves model '%.80s', but was configured as '%.80s'",
                 h->model_name, r->model->name);
        replica_set_not_ready(r, why, 0);
        goto done;
    }
    if (!h->live) {
        replica_set_not_ready(r, "replica reports not live (an execution is stuck)", 1);
        goto done;
    }
    if (!h->ready) {
        /* Draining or loading: what it holds still gets answered, so nothing is cancelled. */
        replica_set_not_ready(r, "replica reports not ready (loading or draining)", 0);
        goto done;
    }
    if (!r->ready || r->ejected)
        LOG_INFO("replica %s of model '%s' is ready (version %s)%s", r->url, r->model->name,
                 r->version[0] ? r->version : "?", r->ejected ? ", re-admitted" : "");
    r->ready = 1;
    r->ejected = 0;
    r->fail_streak = 0;
    r->why[0] = '\0';
    if (!r->meta && !r->meta_inflight)
        probe(r, CALL_METADATA);
done:
    corral__response__free_unpacked(resp, NULL);
}

static void on_metadata_done(struct up_replica *r, struct up_call *c)
{
    r->meta_inflight = 0;
    if (c->rv || r->u->closing)
        return;
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (wire_decode_response(c->reply, c->reply_len, &resp, &e) != 0) {
        LOG_WARN("replica %s sent invalid metadata: %s", r->url, e.msg);
        return;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_METADATA) {
        LOG_WARN("replica %s answered a metadata request with message kind %d", r->url,
                 (int)resp->kind_case);
        corral__response__free_unpacked(resp, NULL);
        return;
    }
    if (r->meta)
        corral__response__free_unpacked(r->meta, NULL);
    r->meta = resp;
    LOG_DEBUG("metadata of model '%s' fetched from %s", r->model->name, r->url);
}

static int version_matches(const struct up_replica *r, const char *version)
{
    return !version || !version[0] || strcmp(r->version, version) == 0;
}

static struct up_model *find_model(const struct upstream *u, const char *name)
{
    for (size_t i = 0; i < u->n_models; i++)
        if (strcmp(u->models[i].name, name) == 0)
            return &u->models[i];
    return NULL;
}

/*
 * Power of two choices over the eligible replicas, drawn in one pass by
 * reservoir sampling (each pair equally likely); *capped tells whether some
 * replica was skipped only for its in-flight cap.
 */
static struct up_replica *pick(struct upstream *u, struct up_model *m, const char *version,
                               const struct up_replica *exclude, int *capped)
{
    struct up_replica *a = NULL, *b = NULL;
    size_t seen = 0;
    unsigned cap = u->cfg.max_inflight;
    *capped = 0;
    for (size_t i = 0; i < m->n; i++) {
        struct up_replica *r = m->replicas[i];
        /* A connection seen closing is skipped before its replica is marked not ready. */
        if (!r->ready || r->ejected || r == exclude || !version_matches(r, version) ||
            !connected(r))
            continue;
        if (cap && r->outstanding >= cap) {
            *capped = 1;
            continue;
        }
        seen++;
        if (seen == 1) {
            a = r;
        } else if (seen == 2) {
            b = r;
        } else {
            uint64_t j = rng_next(u) % seen;
            if (j == 0)
                a = r;
            else if (j == 1)
                b = r;
        }
    }
    if (!b)
        return a;
    if (a->outstanding == b->outstanding)
        return (rng_next(u) >> 33) & 1 ? a : b;
    return a->outstanding < b->outstanding ? a : b;
}

static void emit(struct upstream *u, enum upstream_event ev, const char *model)
{
    if (u->cfg.event)
        u->cfg.event(u->cfg.event_arg, ev, model);
}

/* Passive health: counts a transport failure and ejects after enough in a row. */
static void note_failure(struct up_replica *r, const char *what)
{
    struct upstream *u = r->u;
    r->fail_streak++;
    if (!r->ejected && r->fail_streak >= u->cfg.eject_after) {
        r->ejected = 1;
        snprintf(r->why, sizeof r->why, "ejected after %u failed requests in a row (last: %.150s); "
                 "re-admitted when a health probe succeeds", r->fail_streak, what);
        LOG_WARN("replica %s of model '%s' %s", r->url, r->model->name, r->why);
        emit(u, UPSTREAM_EV_EJECT, r->model->name);
    }
}

static void finish(struct up_call *c, struct upstream_done *d)
{
    d->replica = c->r ? c->r->url : "";
    d->version = c->r ? c->r->version : "";
    d->attempts = c->attempts;
    d->upstream_ns = uv_hrtime() - c->t_launch;
    c->cb(c->arg, d);
}

static void on_infer_done(struct up_replica *r, struct up_call *c, int *requeued)
{
    struct upstream *u = c->u;
    struct cerr e = {0};
    struct upstream_done d;
    Corral__Response *resp = NULL;
    memset(&d, 0, sizeof d);
    *requeued = 0;
    if (c->aborted) {
        cerr_set(&e, CORRAL_EUNAVAIL, "request cancelled: the client went away");
        goto fail;
    }
    if (c->rv && u->closing) {
        cerr_set(&e, CORRAL_EUNAVAIL, "the router is shutting down");
        goto fail;
    }
    if (c->rv == UP_ETIMEDOUT) {
        cerr_set(&e, CORRAL_ETIMEDOUT, "model '%s' did not answer within the %u ms deadline "
                 "(replica %s)", r->model->name, c->timeout_ms, r->url);
        goto fail;
    }
    if (c->rv) {
        /* The replica never answered, so the request may not have run: one retry is safe. */
        const char *why = c->replica_failed ? "declared unhealthy" : up_reason(c->rv);
        if (!c->replica_failed) {
            char w[200];
            snprintf(w, sizeof w, "request failed: %s", why);
            note_failure(r, w);
        }
        int capped = 0;
        struct up_replica *alt = c->attempts < 2 ? pick(u, r->model, c->version, r, &capped) : NULL;
        if (alt && uv_now(u->loop) < c->deadline) {
            LOG_WARN("retrying a request for model '%s' on %s after %s failed: %s",
                     r->model->name, alt->url, r->url, why);
            emit(u, UPSTREAM_EV_RETRY, r->model->name);
            if (call_launch(c, alt) == UP_OK) {
                *requeued = 1;
                return;
            }
        }
        cerr_set(&e, CORRAL_EUNAVAIL, "replica %s of model '%s' failed (%s) and no other ready "
                 "replica could take the request in time", r->url, r->model->name, why);
        goto fail;
    }
    r->fail_streak = 0;
    if (c->raw) {
        d.rc = CORRAL_OK;
        d.raw = c->reply;
        d.raw_len = c->reply_len;
        finish(c, &d);
        return;
    }
    if (wire_decode_response(c->reply, c->reply_len, &resp, &e) != 0) {
        cerr_prefix(&e, "replica %s sent an invalid answer", r->url);
        e.code = CORRAL_EIO;
        goto fail;
    }
    if (resp->kind_case == CORRAL__RESPONSE__KIND_ERROR) {
        int code = corral_err_known(resp->error->code) && resp->error->code != CORRAL_OK
                       ? resp->error->code
                       : CORRAL_EINTERNAL;
        cerr_set(&e, code, "%s",
                 resp->error->message && resp->error->message[0]
                     ? resp->error->message
                     : corral_strerror(code));
        goto fail;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_INFER) {
        cerr_set(&e, CORRAL_EIO, "replica %s answered an infer request with message kind %d",
                 r->url, (int)resp->kind_case);
        goto fail;
    }
    d.rc = CORRAL_OK;
    d.resp = resp->infer;
    finish(c, &d);
    corral__response__free_unpacked(resp, NULL);
    return;
fail:
    if (resp)
        corral__response__free_unpacked(resp, NULL);
    d.rc = e.code;
    d.msg = e.msg;
    finish(c, &d);
}

static void gather_finish(struct gather *g)
{
    g->cb(g->arg, g->items, g->n);
    for (size_t i = 0; i < g->n; i++)
        if (g->resps[i])
            corral__response__free_unpacked(g->resps[i], NULL);
    free(g->items);
    free(g->resps);
    free(g->errs);
    free(g);
}

static void on_stats_done(struct up_replica *r, struct up_call *c)
{
    struct gather *g = c->g;
    size_t i = c->g_idx;
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (c->rv) {
        snprintf(g->errs[i], sizeof g->errs[i], "stats request failed: %s", up_reason(c->rv));
    } else if (wire_decode_response(c->reply, c->reply_len, &resp, &e)) {
        snprintf(g->errs[i], sizeof g->errs[i], "invalid stats answer: %.150s", e.msg);
    } else if (resp->kind_case != CORRAL__RESPONSE__KIND_STATS) {
        snprintf(g->errs[i], sizeof g->errs[i], "stats request answered with %s",
                 resp->kind_case == CORRAL__RESPONSE__KIND_ERROR && resp->error->message
                     ? resp->error->message
                     : "another message kind");
        corral__response__free_unpacked(resp, NULL);
    } else {
        g->resps[i] = resp;
        g->items[i].stats = resp->stats;
    }
    if (!g->items[i].stats)
        g->items[i].error = g->errs[i];
    if (--g->pending == 0)
        gather_finish(g);
}

static void on_health_tick(uv_timer_t *t)
{
    struct upstream *u = t->data;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (!r->health_inflight)
            probe(r, CALL_HEALTH);
        else if (r->ready && !r->meta && !r->meta_inflight)
            probe(r, CALL_METADATA);
    }
}

int upstream_new(struct upstream **out, uv_loop_t *loop, const struct upstream_config *cfg,
                 struct cerr *e)
{
    struct upstream *u = calloc(1, sizeof *u);
    if (!u)
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the upstream table");
    u->loop = loop;
    u->cfg = *cfg;
    if (u->cfg.health_interval_ms == 0)
        u->cfg.health_interval_ms = 500;
    if (u->cfg.health_timeout_ms == 0) {
        /* A probe that goes unanswered for one interval marks the replica not ready, so a
         * stopped replica drops out within two intervals of stopping. Health is answered
         * off the replica's executor, so a busy replica still answers in time. */
        u->cfg.health_timeout_ms = u->cfg.health_interval_ms;
        if (u->cfg.health_timeout_ms < 250)
            u->cfg.health_timeout_ms = 250;
    }
    if (u->cfg.eject_after == 0)
        u->cfg.eject_after = 2;
    u->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)u) | 1;
    *out = u;
    return CORRAL_OK;
}

int upstream_add_replica(struct upstream *u, const char *model, const char *url, struct cerr *e)
{
    if (strncmp(url, "tcp://", 6) != 0 && strncmp(url, "tcp4://", 7) != 0 &&
        strncmp(url, "tcp6://", 7) != 0)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is not supported: expected "
                        "tcp://HOST:PORT, e.g. tcp://127.0.0.1:9101", url);
    for (size_t i = 0; i < u->n_replicas; i++)
        if (strcmp(u->replicas[i]->url, url) == 0)
            return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is given more than once", url);
    struct up_model *m = find_model(u, model);
    if (!m) {
        struct up_model *nm = realloc(u->models, (u->n_models + 1) * sizeof *nm);
        if (!nm)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory adding a model");
        u->models = nm;
        m = &u->models[u->n_models];
        memset(m, 0, sizeof *m);
        m->name = strdup(model);
        if (!m->name)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory adding a model");
        u->n_models++;
        /* The replicas keep pointers to their model, so refresh them after the realloc. */
        for (size_t i = 0; i < u->n_models; i++)
            for (size_t j = 0; j < u->models[i].n; j++)
                u->models[i].replicas[j]->model = &u->models[i];
    }
    struct up_replica *r = calloc(1, sizeof *r);
    struct up_replica **nr = realloc(u->replicas, (u->n_replicas + 1) * sizeof *nr);
    if (nr)
        u->replicas = nr;
    struct up_replica **mr = realloc(m->replicas, (m->n + 1) * sizeof *mr);
    if (mr)
        m->replicas = mr;
    if (!r || !nr || !mr || !(r->url = strdup(url))) {
        free(r);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory adding a replica");
    }
    r->u = u;
    r->model = m;
    snprintf(r->why, sizeof r->why, "no health answer yet");
    u->replicas[u->n_replicas++] = r;
    m->replicas[m->n++] = r;
    return CORRAL_OK;
}

int upstream_start(struct upstream *u, struct cerr *e)
{
    static const struct sp_req_events events = {
        .up = on_conn_up, .down = on_conn_down, .reply = on_conn_reply};
    int rc;
    uv_timer_init(u->loop, &u->timer);
    u->timer.data = u;
    uv_timer_init(u->loop, &u->defer);
    u->defer.data = u;
    u->handles_open = 2;
    u->started = 1;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if ((rc = sp_req_open(&r->conn, u->loop, r->url, WIRE_MAX_MESSAGE, &events, r, e)))
            return rc;
        u->handles_open++;
        LOG_DEBUG("replica %s for model '%s' configured", r->url, r->model->name);
    }
    /* The first health probe goes out as each connection comes up. */
    uv_timer_start(&u->timer, on_health_tick, u->cfg.health_interval_ms,
                   u->cfg.health_interval_ms);
    return CORRAL_OK;
}

static void upstream_free(struct upstream *u)
{
    for (size_t i = 0; i < u->n_replicas; i++) {
        if (u->replicas[i]->meta)
            corral__response__free_unpacked(u->replicas[i]->meta, NULL);
        free(u->replicas[i]->url);
        free(u->replicas[i]);
    }
    for (size_t i = 0; i < u->n_models; i++) {
        free(u->models[i].name);
        free(u->models[i].replicas);
    }
    free(u->models);
    free(u->replicas);
    free(u);
}

static void release_one(struct upstream *u)
{
    if (--u->handles_open == 0)
        upstream_free(u);
}

static void on_handle_closed(uv_handle_t *h)
{
    release_one(h->data);
}

static void on_conn_closed(void *arg)
{
    struct up_replica *r = arg;
    release_one(r->u);
}

void upstream_close(struct upstream *u)
{
    u->closing = 1;
    if (!u->started) {
        upstream_free(u);
        return;
    }
    uv_timer_stop(&u->timer);
    uv_timer_stop(&u->defer);
    /* Every call still in flight is answered now, before the connections go. */
    on_defer(&u->defer);
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        struct up_call *c = r->calls;
        r->calls = r->calls_tail = NULL;
        while (c) {
            struct up_call *next = c->next;
            c->prev = c->next = NULL;
            complete(c, UP_ECLOSED);
            c = next;
        }
    }
    /* handles_open counts the two timers and every connection upstream_start opened. */
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (r->conn) {
            sp_req_close(r->conn, on_conn_closed);
            r->conn = NULL;
        }
    }
    uv_close((uv_handle_t *)&u->timer, on_handle_closed);
    uv_close((uv_handle_t *)&u->defer, on_handle_closed);
}

size_t upstream_model_count(const struct upstream *u) { return u->n_models; }

const char *upstream_model_name(const struct upstream *u, size_t i)
{
    return i < u->n_models ? u->models[i].name : NULL;
}

int upstream_model_known(const struct upstream *u, const char *model)
{
    return find_model(u, model) != NULL;
}

int upstream_model_ready(const struct upstream *u, const char *model, const char *version)
{
    const struct up_model *m = find_model(u, model);
    int n = 0;
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (r->ready && !r->ejected && version_matches(r, version))
            n++;
    }
    return n;
}

const Corral__MetadataResponse *upstream_model_metadata(const struct upstream *u,
                                                        const char *model, const char *version)
{
    const struct up_model *m = find_model(u, model);
    const Corral__MetadataResponse *any = NULL;
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (!r->meta || !version_matches(r, version))
            continue;
        if (r->ready)
            return r->meta->metadata;
        if (!any)
            any = r->meta->metadata;
    }
    return any;
}

int upstream_model_versions(const struct upstream *u, const char *model, const char *version,
                            char *buf, size_t len)
{
    const struct up_model *m = find_model(u, model);
    int found = 0;
    size_t off = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (!r->answered || !r->version[0])
            continue;
        if (version && strcmp(r->version, version) == 0)
            found = 1;
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            if (m->replicas[j]->answered && strcmp(m->replicas[j]->version, r->version) == 0)
                dup = 1;
        if (dup || off >= len)
            continue;
        int w = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", r->version);
        if (w > 0)
            off += (size_t)w;
    }
    return found;
}

static int no_replica(struct upstream *u, struct up_model *m, const char *version, int capped,
                      struct cerr *e)
{
    if (capped)
        return cerr_set(e, CORRAL_EQUEUEFULL, "every ready replica of model '%s' already has %u "
                        "requests in flight (the router's per-replica cap); retry later",
                        m->name, u->cfg.max_inflight);
    if (version && version[0] && upstream_model_ready(u, m->name, NULL)) {
        char vs[256];
        upstream_model_versions(u, m->name, NULL, vs, sizeof vs);
        return cerr_set(e, CORRAL_ENOTFOUND,
                        "model '%s' has no ready replica serving version '%s' (ready versions: %s)",
                        m->name, version, vs);
    }
    return cerr_set(e, CORRAL_EUNAVAIL, "model '%s' has no ready replica (%zu configured; %s: %s)",
                    m->name, m->n, m->replicas[0]->url, m->replicas[0]->why);
}

/* Takes ownership of `msg` (a packed Request of `len` bytes, malloc'd), also on error. */
static int start_infer(struct upstream *u, const char *model, const char *version, uint8_t *msg,
                       size_t len, int raw, unsigned timeout_ms, upstream_cb cb, void *arg,
                       struct up_call **handle, struct cerr *e)
{
    struct up_model *m = find_model(u, model);
    struct up_call *c = NULL;
    int capped = 0, rc;
    if (!m) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "unknown model '%s'", model);
        goto fail;
    }
    struct up_replica *r = pick(u, m, version, NULL, &capped);
    if (!r) {
        rc = no_replica(u, m, version, capped, e);
        goto fail;
    }
    c = call_new(u, CALL_INFER, timeout_ms);
    if (!c) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory starting the request");
        goto fail;
    }
    c->orig = msg;
    c->orig_len = len;
    msg = NULL;
    c->raw = raw;
    snprintf(c->version, sizeof c->version, "%s", version ? version : "");
    c->cb = cb;
    c->arg = arg;
    int rv = call_launch(c, r);
    if (rv) {
        rc = cerr_set(e, CORRAL_EUNAVAIL, "cannot send the request to replica %s: %s", r->url,
                      up_reason(rv));
        goto fail;
    }
    if (handle)
        *handle = c;
    return CORRAL_OK;
fail:
    free(msg);
    call_free(c);
    return rc;
}

int upstream_infer(struct upstream *u, const Corral__Request *req, unsigned timeout_ms,
                   upstream_cb cb, void *arg, struct up_call **handle, struct cerr *e)
{
    const Corral__InferRequest *ir = req->infer;
    if (!find_model(u, ir->model_name))
        return cerr_set(e, CORRAL_ENOTFOUND, "unknown model '%s'", ir->model_name);
    uint8_t *m = NULL;
    size_t n = 0;
    if (wire_pack_request(req, &m, &n) != 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory packing the request");
    return start_infer(u, ir->model_name, ir->model_version, m, n, 0, timeout_ms, cb, arg,
                       handle, e);
}

int upstream_infer_packed(struct upstream *u, const char *model, const char *version,
                          const void *msg, size_t len, unsigned timeout_ms, upstream_cb cb,
                          void *arg, struct up_call **handle, struct cerr *e)
{
    uint8_t *m = malloc(len ? len : 1);
    if (!m)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory starting the request");
    memcpy(m, msg, len);
    return start_infer(u, model, version, m, len, 1, timeout_ms, cb, arg, handle, e);
}

void upstream_cancel(struct upstream *u, struct up_call *c)
{
    (void)u;
    if (c->aborted)
        return;
    c->aborted = 1;
    complete_later(c, UP_ECANCELED);
}

unsigned upstream_inflight(const struct upstream *u) { return u->inflight; }

unsigned upstream_infer_calls(const struct upstream *u) { return u->infer_calls; }

int upstream_stats(struct upstream *u, const char *model, const char *version,
                   unsigned timeout_ms, upstream_stats_cb cb, void *arg, struct cerr *e)
{
    struct gather *g = calloc(1, sizeof *g);
    size_t n = 0;
    for (size_t i = 0; i < u->n_replicas; i++) {
        const struct up_replica *r = u->replicas[i];
        if ((!model || strcmp(r->model->name, model) == 0) && version_matches(r, version))
            n++;
    }
    if (g) {
        g->items = calloc(n ? n : 1, sizeof *g->items);
        g->resps = calloc(n ? n : 1, sizeof *g->resps);
        g->errs = calloc(n ? n : 1, sizeof *g->errs);
    }
    if (!g || !g->items || !g->resps || !g->errs) {
        if (g) {
            free(g->items);
            free(g->resps);
            free(g->errs);
        }
        free(g);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory gathering statistics");
    }
    g->cb = cb;
    g->arg = arg;
    g->n = n;
    g->pending = 1; /* held until every call is started, so none can finish the gather early */
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__StatsRequest sr = CORRAL__STATS_REQUEST__INIT;
    req.kind_case = CORRAL__REQUEST__KIND_STATS;
    req.stats = &sr;
    size_t k = 0;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (!((!model || strcmp(r->model->name, model) == 0) && version_matches(r, version)))
            continue;
        struct upstream_stats *it = &g->items[k];
        it->model = r->model->name;
        it->url = r->url;
        it->version = r->version;
        if (!r->answered || !connected(r) || u->closing) {
            snprintf(g->errs[k], sizeof g->errs[k], "not asked: %.180s",
                     r->why[0] ? r->why : "not connected");
            it->error = g->errs[k];
            k++;
            continue;
        }
        struct up_call *c = call_new(u, CALL_STATS, timeout_ms);
        if (!c || pack_request(c, &req) != 0) {
            call_free(c);
            snprintf(g->errs[k], sizeof g->errs[k], "out of memory asking for statistics");
            it->error = g->errs[k];
            k++;
            continue;
        }
        c->g = g;
        c->g_idx = k;
        g->pending++;
        if (call_launch(c, r) != UP_OK) {
            g->pending--;
            call_free(c);
            snprintf(g->errs[k], sizeof g->errs[k], "could not start a stats request");
            it->error = g->errs[k];
        }
        k++;
    }
    if (--g->pending == 0)
        gather_finish(g);
    return CORRAL_OK;
}

size_t upstream_replica_count(const struct upstream *u) { return u->n_replicas; }

void upstream_replica_info(const struct upstream *u, size_t i, struct upstream_replica_info *out)
{
    const struct up_replica *r = u->replicas[i];
    out->model = r->model->name;
    out->url = r->url;
    out->version = r->version;
    out->state = r->ejected ? "ejected" : r->ready ? "ready" : r->answered ? "not_ready"
                                                                          : "connecting";
    out->why = r->ready && !r->ejected ? "" : r->why;
    out->outstanding = r->outstanding;
    out->fail_streak = r->fail_streak;
}
