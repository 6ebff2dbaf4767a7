#include "upstream.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "wire.h"

enum call_kind { CALL_INFER, CALL_HEALTH, CALL_METADATA };
enum call_stage { ST_SEND, ST_RECV };

enum { PIPE_LOST = 1, PIPE_ADDED = 2 };

struct up_model;
struct up_call;

struct up_replica {
    struct upstream *u;
    struct up_model *model;
    char *url;
    nng_socket sock;
    int sock_open;
    int ready;
    int answered; /* has answered a health request at least once */
    char version[64];
    int health_inflight;
    int meta_inflight;
    int have_meta;
    unsigned outstanding; /* infer calls in flight */
    struct up_call *calls; /* every call in flight on this replica (loop thread) */
    atomic_int pipe_events;
    atomic_uint pipes_added, pipes_removed; /* connected while added > removed */
    char why[256]; /* why it is not ready, for logs and error messages */
};

struct up_model {
    char *name;
    struct up_replica **replicas;
    size_t n;
    size_t rr;
    Corral__Response *meta; /* first metadata answer, owned */
};

struct up_call {
    struct upstream *u;
    struct up_replica *r;
    enum call_kind kind;
    nng_ctx ctx;
    int ctx_open;
    nng_aio *aio;
    int stage;
    nng_time deadline;
    unsigned timeout_ms;
    /* Written by the NNG callback before the call is queued; read by the loop after. */
    int rv;
    nng_msg *reply;
    /* Guarded by u->mu. */
    int cancel;
    int pipe_lost;
    struct up_call *qnext;
    /* Loop thread only. */
    struct up_call *prev, *next;
    nng_msg *orig; /* the packed request, kept so a retry can resend it */
    int attempts;
    char version[64];
    upstream_infer_cb cb;
    void *arg;
};

struct upstream {
    uv_loop_t *loop;
    struct upstream_config cfg;
    struct up_model *models;
    size_t n_models;
    struct up_replica **replicas;
    size_t n_replicas;
    uv_async_t async;
    uv_timer_t timer;
    int handles_open;
    int started;
    int closing;
    unsigned inflight;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct up_call *qhead, *qtail; /* completed calls waiting for the loop (mu) */
    unsigned pending;              /* calls whose NNG side has not finished (mu) */
    int async_closed;              /* (mu) */
};

static void call_free(struct up_call *c)
{
    if (!c)
        return;
    if (c->aio)
        nng_aio_free(c->aio);
    if (c->ctx_open)
        nng_ctx_close(c->ctx);
    if (c->orig)
        nng_msg_free(c->orig);
    if (c->reply)
        nng_msg_free(c->reply);
    free(c);
}

/* Wakes the loop thread; callers hold u->mu so the handle cannot be closing meanwhile. */
static void wake_locked(struct upstream *u)
{
    if (!u->async_closed)
        uv_async_send(&u->async);
}

/*
 * Runs on an NNG thread. It moves a call from its send stage to its receive
 * stage, or queues it for the loop thread. The lock is held while the receive
 * is started so that a cancellation requested by the loop thread either is seen
 * here or finds the receive already started (and aborts it).
 */
static void call_aio_done(void *arg)
{
    struct up_call *c = arg;
    struct upstream *u = c->u;
    int rv = nng_aio_result(c->aio);
    pthread_mutex_lock(&u->mu);
    if (c->stage == ST_SEND) {
        if (rv != 0) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            if (m)
                nng_msg_free(m);
            nng_aio_set_msg(c->aio, NULL);
        } else if (c->cancel) {
            rv = NNG_ECANCELED;
        } else {
            nng_time now = nng_clock();
            if (now < c->deadline) {
                c->stage = ST_RECV;
                nng_aio_set_timeout(c->aio, (nng_duration)(c->deadline - now));
                nng_ctx_recv(c->ctx, c->aio);
                pthread_mutex_unlock(&u->mu);
                return;
            }
            rv = NNG_ETIMEDOUT;
        }
    } else if (rv == 0) {
        c->reply = nng_aio_get_msg(c->aio);
        nng_aio_set_msg(c->aio, NULL);
    }
    c->rv = rv;
    c->qnext = NULL;
    if (u->qtail)
        u->qtail->qnext = c;
    else
        u->qhead = c;
    u->qtail = c;
    if (--u->pending == 0)
        pthread_cond_broadcast(&u->cv);
    wake_locked(u);
    pthread_mutex_unlock(&u->mu);
}

static void on_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct up_replica *r = arg;
    struct upstream *u = r->u;
    if (ev == NNG_PIPE_EV_REM_POST)
        atomic_fetch_add(&r->pipes_removed, 1);
    else
        atomic_fetch_add(&r->pipes_added, 1);
    atomic_fetch_or(&r->pipe_events, ev == NNG_PIPE_EV_REM_POST ? PIPE_LOST : PIPE_ADDED);
    pthread_mutex_lock(&u->mu);
    wake_locked(u);
    pthread_mutex_unlock(&u->mu);
}

static void replica_link(struct up_replica *r, struct up_call *c)
{
    c->r = r;
    c->prev = NULL;
    c->next = r->calls;
    if (r->calls)
        r->calls->prev = c;
    r->calls = c;
}

static void replica_unlink(struct up_call *c)
{
    struct up_replica *r = c->r;
    if (!r)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        r->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Starts (or restarts, for a retry) a call on replica r; takes ownership of msg. */
static int call_launch(struct up_call *c, struct up_replica *r, nng_msg *msg)
{
    struct upstream *u = c->u;
    if (c->ctx_open) {
        nng_ctx_close(c->ctx);
        c->ctx_open = 0;
    }
    int rv = nng_ctx_open(&c->ctx, r->sock);
    if (rv) {
        nng_msg_free(msg);
        return rv;
    }
    c->ctx_open = 1;
    c->stage = ST_SEND;
    c->rv = 0;
    if (c->reply) {
        nng_msg_free(c->reply);
        c->reply = NULL;
    }
    c->attempts++;
    replica_link(r, c);
    if (c->kind == CALL_INFER)
        r->outstanding++;
    u->inflight++;
    pthread_mutex_lock(&u->mu);
    u->pending++;
    c->cancel = 0;
    c->pipe_lost = 0;
    pthread_mutex_unlock(&u->mu);
    nng_time now = nng_clock();
    nng_aio_set_msg(c->aio, msg);
    nng_aio_set_timeout(c->aio, c->deadline > now ? (nng_duration)(c->deadline - now) : 1);
    nng_ctx_send(c->ctx, c->aio);
    return 0;
}

static struct up_call *call_new(struct upstream *u, enum call_kind kind, unsigned timeout_ms)
{
    struct up_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->u = u;
    c->kind = kind;
    c->timeout_ms = timeout_ms;
    c->deadline = nng_clock() + timeout_ms;
    if (nng_aio_alloc(&c->aio, call_aio_done, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

static nng_msg *pack_request(const Corral__Request *req)
{
    size_t n = corral__request__get_packed_size(req);
    nng_msg *m = NULL;
    if (nng_msg_alloc(&m, n) != 0)
        return NULL;
    corral__request__pack(req, nng_msg_body(m));
    return m;
}

static void replica_set_not_ready(struct up_replica *r, const char *why)
{
    if (r->ready)
        LOG_WARN("replica %s of model '%s' is not ready: %s", r->url, r->model->name, why);
    else if (strcmp(r->why, why) != 0)
        LOG_DEBUG("replica %s of model '%s' still not ready: %s", r->url, r->model->name, why);
    r->ready = 0;
    snprintf(r->why, sizeof r->why, "%s", why);
}

static void probe(struct up_replica *r, enum call_kind kind)
{
    struct upstream *u = r->u;
    if (u->closing)
        return;
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
    nng_msg *m = pack_request(&req);
    if (!c || !m) {
        call_free(c);
        if (m)
            nng_msg_free(m);
        return;
    }
    if (call_launch(c, r, m) != 0) {
        call_free(c);
        return;
    }
    if (kind == CALL_HEALTH)
        r->health_inflight = 1;
    else
        r->meta_inflight = 1;
}

static const char *nng_reason(int rv)
{
    switch (rv) {
    case NNG_ETIMEDOUT: return "no answer in time";
    case NNG_ECANCELED: return "connection lost";
    case NNG_ECLOSED: return "connection closed";
    default: return nng_strerror(rv);
    }
}

static void on_health_done(struct up_replica *r, struct up_call *c)
{
    r->health_inflight = 0;
    if (r->u->closing)
        return;
    char why[256];
    if (c->rv && atomic_load(&r->pipes_added) == atomic_load(&r->pipes_removed)) {
        snprintf(why, sizeof why, "not connected (is a replica listening at %.150s?)", r->url);
        replica_set_not_ready(r, why);
        return;
    }
    if (c->rv) {
        snprintf(why, sizeof why, "health check failed: %s", nng_reason(c->rv));
        replica_set_not_ready(r, why);
        return;
    }
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    size_t len = nng_msg_len(c->reply);
    if (wire_decode_response(nng_msg_body(c->reply), len, &resp, &e) != 0) {
        snprintf(why, sizeof why, "invalid health answer: %.200s", e.msg);
        replica_set_not_ready(r, why);
        return;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_HEALTH) {
        snprintf(why, sizeof why, "health request answered with message kind %d",
                 (int)resp->kind_case);
        replica_set_not_ready(r, why);
        goto done;
    }
    const Corral__HealthResponse *h = resp->health;
    r->answered = 1;
    snprintf(r->version, sizeof r->version, "%s", h->model_version ? h->model_version : "");
    if (h->model_name && h->model_name[0] && strcmp(h->model_name, r->model->name) != 0) {
        snprintf(why, sizeof why, "it serves model '%.80s', but was configured as '%.80s'",
                 h->model_name, r->model->name);
        replica_set_not_ready(r, why);
        goto done;
    }
    if (!h->live || !h->ready) {
        replica_set_not_ready(r, h->live ? "replica reports not ready (loading or draining)"
                                         : "replica reports not live");
        goto done;
    }
    if (!r->ready)
        LOG_INFO("replica %s of model '%s' is ready (version %s)", r->url, r->model->name,
                 r->version[0] ? r->version : "?");
    r->ready = 1;
    r->why[0] = '\0';
    if (!r->have_meta && !r->meta_inflight)
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
    if (wire_decode_response(nng_msg_body(c->reply), nng_msg_len(c->reply), &resp, &e) != 0) {
        LOG_WARN("replica %s sent invalid metadata: %s", r->url, e.msg);
        return;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_METADATA) {
        LOG_WARN("replica %s answered a metadata request with message kind %d", r->url,
                 (int)resp->kind_case);
        corral__response__free_unpacked(resp, NULL);
        return;
    }
    r->have_meta = 1;
    struct up_model *m = r->model;
    if (!m->meta) {
        m->meta = resp;
        LOG_DEBUG("metadata of model '%s' fetched from %s", m->name, r->url);
    } else {
        corral__response__free_unpacked(resp, NULL);
    }
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

static struct up_replica *pick(struct up_model *m, const char *version,
                               const struct up_replica *exclude)
{
    for (size_t i = 0; i < m->n; i++) {
        size_t idx = (m->rr + i) % m->n;
        struct up_replica *r = m->replicas[idx];
        if (r->ready && r != exclude && version_matches(r, version)) {
            m->rr = idx + 1;
            return r;
        }
    }
    return NULL;
}

static void on_infer_done(struct up_replica *r, struct up_call *c, int *requeued)
{
    struct upstream *u = c->u;
    struct cerr e = {0};
    Corral__Response *resp = NULL;
    *requeued = 0;
    if (c->rv == NNG_ETIMEDOUT) {
        cerr_set(&e, CORRAL_ETIMEDOUT, "replica %s of model '%s' did not answer within %u ms",
                 r->url, r->model->name, c->timeout_ms);
        goto fail;
    }
    if (c->rv && u->closing) {
        cerr_set(&e, CORRAL_EUNAVAIL, "the router is shutting down");
        goto fail;
    }
    if (c->rv) {
        /* Transport failure: the request may never have run, so one retry elsewhere is safe. */
        char why[200];
        snprintf(why, sizeof why, "request failed: %s", nng_reason(c->rv));
        replica_set_not_ready(r, why);
        struct up_replica *alt = c->attempts < 2 ? pick(r->model, c->version, r) : NULL;
        if (alt && nng_clock() < c->deadline) {
            nng_msg *m = NULL;
            if (nng_msg_dup(&m, c->orig) == 0) {
                LOG_WARN("retrying a request for model '%s' on %s after %s failed: %s",
                         r->model->name, alt->url, r->url, nng_reason(c->rv));
                if (call_launch(c, alt, m) == 0) {
                    *requeued = 1;
                    return;
                }
            }
        }
        cerr_set(&e, CORRAL_EUNAVAIL, "replica %s of model '%s' failed (%s) and no other ready "
                 "replica could take the request", r->url, r->model->name, nng_reason(c->rv));
        goto fail;
    }
    if (wire_decode_response(nng_msg_body(c->reply), nng_msg_len(c->reply), &resp, &e) != 0) {
        cerr_prefix(&e, "replica %s sent an invalid answer", r->url);
        e.code = CORRAL_EIO;
        goto fail;
    }
    if (resp->kind_case == CORRAL__RESPONSE__KIND_ERROR) {
        cerr_set(&e, resp->error->code, "%s",
                 resp->error->message && resp->error->message[0]
                     ? resp->error->message
                     : corral_strerror(resp->error->code));
        goto fail;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_INFER) {
        cerr_set(&e, CORRAL_EIO, "replica %s answered an infer request with message kind %d",
                 r->url, (int)resp->kind_case);
        goto fail;
    }
    c->cb(c->arg, CORRAL_OK, NULL, resp->infer);
    corral__response__free_unpacked(resp, NULL);
    return;
fail:
    if (resp)
        corral__response__free_unpacked(resp, NULL);
    c->cb(c->arg, e.code, e.msg, NULL);
}

static void handle_pipe_events(struct upstream *u)
{
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        int ev = atomic_exchange(&r->pipe_events, 0);
        if (!ev)
            continue;
        if (ev & PIPE_LOST) {
            replica_set_not_ready(r, "connection lost");
            /* Calls waiting on the dead connection would only time out; end them now. */
            pthread_mutex_lock(&u->mu);
            for (struct up_call *c = r->calls; c; c = c->next) {
                c->cancel = 1;
                c->pipe_lost = 1;
            }
            pthread_mutex_unlock(&u->mu);
            for (struct up_call *c = r->calls; c; c = c->next)
                nng_aio_cancel(c->aio);
        }
        if ((ev & PIPE_ADDED) && !r->health_inflight && !u->closing) {
            LOG_DEBUG("connected to replica %s", r->url);
            probe(r, CALL_HEALTH);
        }
    }
}

static void drain_completions(struct upstream *u)
{
    for (;;) {
        pthread_mutex_lock(&u->mu);
        struct up_call *c = u->qhead;
        u->qhead = u->qtail = NULL;
        pthread_mutex_unlock(&u->mu);
        if (!c)
            return;
        while (c) {
            struct up_call *next = c->qnext;
            struct up_replica *r = c->r;
            replica_unlink(c);
            u->inflight--;
            if (c->kind == CALL_INFER)
                r->outstanding--;
            int requeued = 0;
            if (c->kind == CALL_HEALTH)
                on_health_done(r, c);
            else if (c->kind == CALL_METADATA)
                on_metadata_done(r, c);
            else
                on_infer_done(r, c, &requeued);
            /* A requeued call belongs to NNG again and may already be completing: hands off. */
            if (!requeued)
                call_free(c);
            c = next;
        }
    }
}

static void on_async(uv_async_t *a)
{
    struct upstream *u = a->data;
    handle_pipe_events(u);
    drain_completions(u);
}

static void on_health_tick(uv_timer_t *t)
{
    struct upstream *u = t->data;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (!r->health_inflight)
            probe(r, CALL_HEALTH);
        else if (r->ready && !r->have_meta && !r->meta_inflight)
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
        u->cfg.health_timeout_ms = 2 * u->cfg.health_interval_ms;
        if (u->cfg.health_timeout_ms < 1000)
            u->cfg.health_timeout_ms = 1000;
    }
    pthread_mutex_init(&u->mu, NULL);
    pthread_cond_init(&u->cv, NULL);
    *out = u;
    return CORRAL_OK;
}

int upstream_add_replica(struct upstream *u, const char *model, const char *url, struct cerr *e)
{
    nng_url *parsed = NULL;
    int rv = nng_url_parse(&parsed, url);
    if (rv)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is not a valid NNG URL (%s); expected "
                        "e.g. tcp://127.0.0.1:9101", url, nng_strerror(rv));
    static const char *schemes[] = {"tcp", "tcp4", "tcp6", "ipc", "inproc", "abstract", "ws",
                                    "wss", "tls+tcp"};
    int known = 0;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        known |= strcmp(parsed->u_scheme, schemes[i]) == 0;
    nng_url_free(parsed);
    if (!known)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' has an unknown transport (expected "
                        "tcp://HOST:PORT, ipc://PATH or inproc://NAME)", url);
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
    for (size_t i = 0; i < u->n_replicas; i++)
        if (strcmp(u->replicas[i]->url, url) == 0)
            return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is given more than once", url);
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
    atomic_init(&r->pipe_events, 0);
    atomic_init(&r->pipes_added, 0);
    atomic_init(&r->pipes_removed, 0);
    snprintf(r->why, sizeof r->why, "no health answer yet");
    u->replicas[u->n_replicas++] = r;
    m->replicas[m->n++] = r;
    return CORRAL_OK;
}

int upstream_start(struct upstream *u, struct cerr *e)
{
    int rv;
    uv_async_init(u->loop, &u->async, on_async);
    u->async.data = u;
    uv_timer_init(u->loop, &u->timer);
    u->timer.data = u;
    u->handles_open = 2;
    u->started = 1;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if ((rv = nng_req0_open(&r->sock)) != 0)
            return cerr_set(e, CORRAL_EIO, "cannot open an NNG socket: %s", nng_strerror(rv));
        r->sock_open = 1;
        /* Inference answers can be large; the NNG default would drop anything over 1 MiB. */
        nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
        /* Never resend on our own: a resent inference would run twice. */
        nng_socket_set_ms(r->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
        nng_socket_set_ms(r->sock, NNG_OPT_RECONNMINT, 50);
        nng_socket_set_ms(r->sock, NNG_OPT_RECONNMAXT, 1000);
        nng_pipe_notify(r->sock, NNG_PIPE_EV_ADD_POST, on_pipe_event, r);
        nng_pipe_notify(r->sock, NNG_PIPE_EV_REM_POST, on_pipe_event, r);
        rv = nng_dial(r->sock, r->url, NULL, NNG_FLAG_NONBLOCK);
        if (rv)
            return cerr_set(e, CORRAL_EINVAL, "cannot dial replica '%s': %s", r->url,
                            nng_strerror(rv));
        LOG_INFO("replica %s for model '%s' configured", r->url, r->model->name);
    }
    for (size_t i = 0; i < u->n_replicas; i++)
        probe(u->replicas[i], CALL_HEALTH);
    uv_timer_start(&u->timer, on_health_tick, u->cfg.health_interval_ms,
                   u->cfg.health_interval_ms);
    return CORRAL_OK;
}

static void upstream_free(struct upstream *u)
{
    for (size_t i = 0; i < u->n_replicas; i++) {
        free(u->replicas[i]->url);
        free(u->replicas[i]);
    }
    for (size_t i = 0; i < u->n_models; i++) {
        free(u->models[i].name);
        free(u->models[i].replicas);
        if (u->models[i].meta)
            corral__response__free_unpacked(u->models[i].meta, NULL);
    }
    free(u->models);
    free(u->replicas);
    pthread_mutex_destroy(&u->mu);
    pthread_cond_destroy(&u->cv);
    free(u);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct upstream *u = h->data;
    if (--u->handles_open == 0)
        upstream_free(u);
}

void upstream_close(struct upstream *u)
{
    u->closing = 1;
    if (!u->started) {
        upstream_free(u);
        return;
    }
    uv_timer_stop(&u->timer);
    pthread_mutex_lock(&u->mu);
    for (size_t i = 0; i < u->n_replicas; i++)
        for (struct up_call *c = u->replicas[i]->calls; c; c = c->next)
            c->cancel = 1;
    pthread_mutex_unlock(&u->mu);
    for (size_t i = 0; i < u->n_replicas; i++)
        for (struct up_call *c = u->replicas[i]->calls; c; c = c->next)
            nng_aio_cancel(c->aio);
    /* Every call reaches the queue exactly once; wait for the stragglers, then answer them. */
    pthread_mutex_lock(&u->mu);
    while (u->pending > 0)
        pthread_cond_wait(&u->cv, &u->mu);
    pthread_mutex_unlock(&u->mu);
    drain_completions(u);
    for (size_t i = 0; i < u->n_replicas; i++)
        if (u->replicas[i]->sock_open) {
            nng_close(u->replicas[i]->sock);
            u->replicas[i]->sock_open = 0;
        }
    pthread_mutex_lock(&u->mu);
    u->async_closed = 1;
    pthread_mutex_unlock(&u->mu);
    uv_close((uv_handle_t *)&u->async, on_handle_closed);
    uv_close((uv_handle_t *)&u->timer, on_handle_closed);
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
    for (size_t i = 0; m && i < m->n; i++)
        if (m->replicas[i]->ready && version_matches(m->replicas[i], version))
            n++;
    return n;
}

const Corral__MetadataResponse *upstream_model_metadata(const struct upstream *u,
                                                        const char *model)
{
    const struct up_model *m = find_model(u, model);
    return m && m->meta ? m->meta->metadata : NULL;
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

int upstream_infer(struct upstream *u, const Corral__Request *req, unsigned timeout_ms,
                   upstream_infer_cb cb, void *arg, struct cerr *e)
{
    const Corral__InferRequest *ir = req->infer;
    struct up_model *m = find_model(u, ir->model_name);
    if (!m)
        return cerr_set(e, CORRAL_ENOTFOUND, "unknown model '%s'", ir->model_name);
    const char *version = ir->model_version;
    struct up_replica *r = pick(m, version, NULL);
    if (!r) {
        if (version && version[0] && upstream_model_ready(u, m->name, NULL)) {
            char vs[256];
            upstream_model_versions(u, m->name, NULL, vs, sizeof vs);
            return cerr_set(e, CORRAL_ENOTFOUND,
                            "model '%s' has no ready replica serving version '%s' (ready "
                            "versions: %s)",
                            m->name, version, vs);
        }
        return cerr_set(e, CORRAL_EUNAVAIL,
                        "model '%s' has no ready replica (%zu configured; %s: %s)", m->name, m->n,
                        m->replicas[0]->url, m->replicas[0]->why);
    }
    struct up_call *c = call_new(u, CALL_INFER, timeout_ms);
    nng_msg *msg = NULL, *dup = NULL;
    if (!c || !(c->orig = pack_request(req)) || nng_msg_dup(&dup, c->orig) != 0) {
        call_free(c);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory packing the request");
    }
    msg = dup;
    snprintf(c->version, sizeof c->version, "%s", version ? version : "");
    c->cb = cb;
    c->arg = arg;
    int rv = call_launch(c, r, msg);
    if (rv) {
        call_free(c);
        return cerr_set(e, CORRAL_EIO, "cannot start a request to %s: %s", r->url,
                        nng_strerror(rv));
    }
    return CORRAL_OK;
}

unsigned upstream_inflight(const struct upstream *u) { return u->inflight; }
