#include "rpc.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corral.pb-c.h"
#include "log.h"
#include "wire.h"

enum { RC_IDLE, RC_RECV, RC_WORK, RC_SEND, RC_DONE };

struct rpc_lane;

struct rpc_ctx {
    struct rpc *rpc;
    struct rpc_lane *lane;
    nng_ctx ctx;
    int ctx_open;
    nng_aio *aio;
    int state;
    nng_msg *msg; /* the request being handled */
    struct rpc_ctx *qnext;
    uint64_t t0;
    char model[256];
    char version[64];
};

struct rpc_lane {
    struct rpc *rpc;
    unsigned idx;
    uv_loop_t *loop;
    uv_async_t async;
    int ready;
    struct upstream *up;
    struct metrics *m;
    pthread_mutex_t mu;
    struct rpc_ctx *qhead, *qtail; /* (mu) */
    int closed;                    /* (mu) */
};

struct rpc {
    nng_socket sock;
    int sock_open;
    nng_listener listener;
    char url[256];
    unsigned n_ctx;
    struct rpc_ctx *ctxs;
    unsigned n_lanes;
    struct rpc_lane *lanes;
    unsigned timeout_ms;
    atomic_int quiesced;
};

static void arm_recv(struct rpc_ctx *c)
{
    c->state = RC_RECV;
    nng_ctx_recv(c->ctx, c->aio);
}

/* NNG thread: a receive or a send finished. */
static void on_aio(void *arg)
{
    struct rpc_ctx *c = arg;
    int rv = nng_aio_result(c->aio);
    if (c->state == RC_RECV) {
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED || atomic_load(&c->rpc->quiesced)) {
            if (rv == 0) {
                nng_msg *m = nng_aio_get_msg(c->aio);
                nng_aio_set_msg(c->aio, NULL);
                nng_msg_free(m);
            }
            c->state = RC_DONE;
            return;
        }
        if (rv) {
            arm_recv(c);
            return;
        }
        c->msg = nng_aio_get_msg(c->aio);
        nng_aio_set_msg(c->aio, NULL);
        c->state = RC_WORK;
        struct rpc_lane *l = c->lane;
        pthread_mutex_lock(&l->mu);
        if (l->closed) {
            pthread_mutex_unlock(&l->mu);
            nng_msg_free(c->msg);
            c->msg = NULL;
            c->state = RC_DONE;
            return;
        }
        c->qnext = NULL;
        if (l->qtail)
            l->qtail->qnext = c;
        else
            l->qhead = c;
        l->qtail = c;
        uv_async_send(&l->async);
        pthread_mutex_unlock(&l->mu);
        return;
    }
    if (c->state == RC_SEND) {
        if (rv) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            if (m)
                nng_msg_free(m);
        }
        if (rv == NNG_ECLOSED || atomic_load(&c->rpc->quiesced)) {
            c->state = RC_DONE;
            return;
        }
        arm_recv(c);
    }
}

/* Loop thread: sends `len` bytes of `buf` back on the context (copied). */
static void reply(struct rpc_ctx *c, const void *buf, size_t len)
{
    nng_msg *m = NULL;
    if (c->msg) {
        nng_msg_free(c->msg);
        c->msg = NULL;
    }
    if (nng_msg_alloc(&m, len) != 0) {
        /* Without a message nothing can be said; the client's deadline ends its wait. */
        LOG_ERROR("out of memory answering an RPC request");
        c->state = RC_DONE;
        if (!atomic_load(&c->rpc->quiesced))
            arm_recv(c);
        return;
    }
    memcpy(nng_msg_body(m), buf, len);
    c->state = RC_SEND;
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
}

static void reply_error(struct rpc_ctx *c, int code, const char *msg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_error(code, msg, &buf, &len) != 0) {
        reply(c, "", 0);
        return;
    }
    reply(c, buf, len);
    free(buf);
}

static void reply_response(struct rpc_ctx *c, const Corral__Response *resp)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_response(resp, &buf, &len) != 0) {
        reply_error(c, CORRAL_ENOMEM, "out of memory packing the answer");
        return;
    }
    reply(c, buf, len);
    free(buf);
}

static void record(struct rpc_ctx *c, int code, uint64_t upstream_ns)
{
    struct rpc_lane *l = c->lane;
    if (!l->m)
        return;
    metrics_request(l->m, l->idx, c->model, c->version, "rpc", corral_err_http_status(code),
                    uv_hrtime() - c->t0, upstream_ns, -1, -1);
    metrics_inflight(l->m, l->idx, -1);
}

static void on_infer_done(void *arg, const struct upstream_done *d)
{
    struct rpc_ctx *c = arg;
    if (c->model[0] && d->version && d->version[0])
        snprintf(c->version, sizeof c->version, "%s", d->version);
    if (d->rc) {
        record(c, d->rc, d->upstream_ns);
        reply_error(c, d->rc, d->msg ? d->msg : corral_strerror(d->rc));
        return;
    }
    /* The replica's answer goes back as it is; its first byte tells an error (field 2). */
    int code = CORRAL_OK;
    if (d->raw_len && d->raw[0] == 0x12) {
        Corral__Response *r = corral__response__unpack(NULL, d->raw_len, d->raw);
        code = r && r->kind_case == CORRAL__RESPONSE__KIND_ERROR ? r->error->code
                                                                 : CORRAL_EINTERNAL;
        if (r)
            corral__response__free_unpacked(r, NULL);
    }
    record(c, code, d->upstream_ns);
    reply(c, d->raw, d->raw_len);
}

static unsigned timeout_of(const Corral__InferRequest *ir, unsigned dflt)
{
    for (size_t i = 0; i < ir->n_parameters; i++) {
        const Corral__Parameter *p = ir->parameters[i];
        if (p->key && strcmp(p->key, "timeout") == 0 &&
            p->value_case == CORRAL__PARAMETER__VALUE_INT64_VALUE && p->int64_value > 0) {
            uint64_t ms = ((uint64_t)p->int64_value + 999) / 1000;
            return ms < dflt ? (unsigned)ms : dflt;
        }
    }
    return dflt;
}

static void handle(struct rpc_ctx *c)
{
    struct rpc_lane *l = c->lane;
    struct upstream *up = l->up;
    Corral__Request *req = NULL;
    struct cerr e = {0};
    c->t0 = uv_hrtime();
    c->model[0] = c->version[0] = '\0';
    if (wire_decode_request(nng_msg_body(c->msg), nng_msg_len(c->msg), &req, &e) != 0) {
        LOG_ERROR("rpc: rejected a request: %s", e.msg);
        reply_error(c, e.code ? e.code : CORRAL_EINVAL, e.msg);
        return;
    }
    if (req->kind_case == CORRAL__REQUEST__KIND_INFER) {
        const Corral__InferRequest *ir = req->infer;
        const char *model = ir->model_name ? ir->model_name : "";
        const char *version = ir->model_version ? ir->model_version : "";
        unsigned timeout = timeout_of(ir, c->rpc->timeout_ms);
        if (upstream_model_known(up, model)) {
            snprintf(c->model, sizeof c->model, "%s", model);
            snprintf(c->version, sizeof c->version, "%s", version);
        }
        if (l->m)
            metrics_inflight(l->m, l->idx, 1);
        char mname[256], vname[64];
        snprintf(mname, sizeof mname, "%s", model);
        snprintf(vname, sizeof vname, "%s", version);
        corral__request__free_unpacked(req, NULL);
        nng_msg *m = c->msg;
        c->msg = NULL;
        int rc = upstream_infer_packed(up, mname, vname, nng_msg_body(m), nng_msg_len(m), timeout,
                                       on_infer_done, c, NULL, &e);
        nng_msg_free(m);
        if (rc) {
            LOG_ERROR("rpc: infer for model '%s' failed: %s", mname, e.msg);
            record(c, e.code, 0);
            reply_error(c, e.code, e.msg);
        }
        return;
    }
    if (req->kind_case == CORRAL__REQUEST__KIND_HEALTH) {
        Corral__Response resp = CORRAL__RESPONSE__INIT;
        Corral__HealthResponse h = CORRAL__HEALTH_RESPONSE__INIT;
        h.live = 1;
        h.ready = upstream_model_count(up) > 0;
        for (size_t i = 0; i < upstream_model_count(up); i++)
            if (!upstream_model_ready(up, upstream_model_name(up, i), NULL))
                h.ready = 0;
        h.model_name = upstream_model_count(up) == 1 ? (char *)upstream_model_name(up, 0) : "";
        h.model_version = "";
        resp.kind_case = CORRAL__RESPONSE__KIND_HEALTH;
        resp.health = &h;
        corral__request__free_unpacked(req, NULL);
        reply_response(c, &resp);
        return;
    }
    if (req->kind_case == CORRAL__REQUEST__KIND_METADATA && upstream_model_count(up) == 1) {
        const Corral__MetadataResponse *md =
            upstream_model_metadata(up, upstream_model_name(up, 0), NULL);
        corral__request__free_unpacked(req, NULL);
        if (!md) {
            reply_error(c, CORRAL_EUNAVAIL, "no replica has answered a metadata request yet");
            return;
        }
        Corral__Response resp = CORRAL__RESPONSE__INIT;
        resp.kind_case = CORRAL__RESPONSE__KIND_METADATA;
        resp.metadata = (Corral__MetadataResponse *)md;
        reply_response(c, &resp);
        return;
    }
    corral__request__free_unpacked(req, NULL);
    reply_error(c, CORRAL_EUNSUPP, "the router's RPC endpoint answers infer and health requests "
                "(and metadata when it serves one model); use HTTP GET /v2/models/{name} and "
                "/v2/models/{name}/stats for the rest");
}

static void on_async(uv_async_t *a)
{
    struct rpc_lane *l = a->data;
    pthread_mutex_lock(&l->mu);
    struct rpc_ctx *c = l->qhead;
    l->qhead = l->qtail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (c) {
        struct rpc_ctx *next = c->qnext;
        handle(c);
        c = next;
    }
}

int rpc_new(struct rpc **out, const char *url, unsigned contexts, unsigned n_lanes,
            unsigned timeout_ms, struct cerr *e)
{
    struct rpc *r = calloc(1, sizeof *r);
    if (r) {
        r->ctxs = calloc(contexts ? contexts : 1, sizeof *r->ctxs);
        r->lanes = calloc(n_lanes ? n_lanes : 1, sizeof *r->lanes);
    }
    if (!r || !r->ctxs || !r->lanes) {
        if (r) {
            free(r->ctxs);
            free(r->lanes);
        }
        free(r);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the RPC endpoint");
    }
    snprintf(r->url, sizeof r->url, "%s", url);
    r->n_ctx = contexts ? contexts : 1;
    r->n_lanes = n_lanes ? n_lanes : 1;
    r->timeout_ms = timeout_ms;
    atomic_init(&r->quiesced, 0);
    for (unsigned i = 0; i < r->n_lanes; i++) {
        r->lanes[i].rpc = r;
        r->lanes[i].idx = i;
        pthread_mutex_init(&r->lanes[i].mu, NULL);
    }
    *out = r;
    return CORRAL_OK;
}

int rpc_lane_init(struct rpc *r, unsigned lane, uv_loop_t *loop, struct upstream *up,
                  struct metrics *m, struct cerr *e)
{
    struct rpc_lane *l = &r->lanes[lane];
    l->loop = loop;
    l->up = up;
    l->m = m;
    if (uv_async_init(loop, &l->async, on_async) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot create the RPC wake-up handle");
    l->async.data = l;
    l->ready = 1;
    return CORRAL_OK;
}

int rpc_start(struct rpc *r, char *bound, size_t bound_len, struct cerr *e)
{
    int rv;
    if ((rv = nng_rep0_open(&r->sock)) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot open the RPC socket: %s", nng_strerror(rv));
    r->sock_open = 1;
    nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    if ((rv = nng_listener_create(&r->listener, r->sock, r->url)) != 0 ||
        (rv = nng_listener_start(r->listener, 0)) != 0)
        return cerr_set(e, CORRAL_EINVAL, "cannot listen for RPC on '%s': %s (expected e.g. "
                        "tcp://0.0.0.0:8001)", r->url, nng_strerror(rv));
    snprintf(bound, bound_len, "%s", r->url);
    if (strncmp(r->url, "tcp://", 6) == 0) {
        /* Report the port actually bound so that callers may ask for port 0. */
        nng_sockaddr sa;
        if (nng_listener_get_addr(r->listener, NNG_OPT_LOCADDR, &sa) == 0 &&
            sa.s_family == NNG_AF_INET) {
            const uint8_t *a = (const uint8_t *)&sa.s_in.sa_addr;
            snprintf(bound, bound_len, "tcp://%u.%u.%u.%u:%u", a[0], a[1], a[2], a[3],
                     (unsigned)ntohs(sa.s_in.sa_port));
        }
    }
    for (unsigned i = 0; i < r->n_ctx; i++) {
        struct rpc_ctx *c = &r->ctxs[i];
        c->rpc = r;
        c->lane = &r->lanes[i % r->n_lanes];
        if ((rv = nng_aio_alloc(&c->aio, on_aio, c)) != 0 ||
            (rv = nng_ctx_open(&c->ctx, r->sock)) != 0)
            return cerr_set(e, CORRAL_EIO, "cannot open RPC context: %s", nng_strerror(rv));
        c->ctx_open = 1;
    }
    for (unsigned i = 0; i < r->n_ctx; i++)
        arm_recv(&r->ctxs[i]);
    return CORRAL_OK;
}

void rpc_quiesce(struct rpc *r) { atomic_store(&r->quiesced, 1); }

void rpc_lane_close(struct rpc *r, unsigned lane)
{
    struct rpc_lane *l = &r->lanes[lane];
    if (!l->ready)
        return;
    pthread_mutex_lock(&l->mu);
    l->closed = 1;
    struct rpc_ctx *c = l->qhead;
    l->qhead = l->qtail = NULL;
    pthread_mutex_unlock(&l->mu);
    /* Requests queued but not yet handled get no answer; their clients' deadlines end them. */
    for (; c; c = c->qnext) {
        if (c->msg)
            nng_msg_free(c->msg);
        c->msg = NULL;
        c->state = RC_DONE;
    }
    l->ready = 0;
    uv_close((uv_handle_t *)&l->async, NULL);
}

void rpc_free(struct rpc *r)
{
    if (!r)
        return;
    atomic_store(&r->quiesced, 1);
    if (r->sock_open)
        nng_close(r->sock);
    for (unsigned i = 0; i < r->n_ctx; i++) {
        struct rpc_ctx *c = &r->ctxs[i];
        if (c->aio) {
            /* Waits for a callback in progress; a failed send's message is freed there. */
            nng_aio_stop(c->aio);
            nng_aio_free(c->aio);
        }
        if (c->msg)
            nng_msg_free(c->msg);
    }
    for (unsigned i = 0; i < r->n_lanes; i++)
        pthread_mutex_destroy(&r->lanes[i].mu);
    free(r->ctxs);
    free(r->lanes);
    free(r);
}
