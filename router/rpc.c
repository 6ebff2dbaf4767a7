/*
 * The router's RPC endpoint: SP REP served on each router thread's loop. See rpc.h.
 */
#include "rpc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "corral.pb-c.h"
#include "log.h"
#include "sp_uv_server.h"
#include "wire.h"
#include "token.h"

/* Connections one router thread accepts at most. */
#define RPC_MAX_CONNS 4096

/* The router's own state of one request, kept in its sp_serve request. */
struct rpc_req {
    struct rpc_lane *lane;
    uint64_t t0;
    char model[256];
    char version[64];
};

struct rpc_lane {
    struct rpc *rpc;
    unsigned idx;
    uv_loop_t *loop;
    struct upstream *up;
    struct metrics *m;
    struct sp_serve *srv;
    /* The main thread hands the lane its listening socket, and asks it to stop taking
     * requests, through this handle. */
    uv_async_t async;
    int ready;       /* (mu) the lane's handles exist */
    pthread_mutex_t mu;
    int closed;      /* (mu) */
    int pending_fd;  /* (mu) listening socket not yet taken over by the loop, or -1 */
};

struct rpc {
    char url[256];
    unsigned n_lanes;
    struct rpc_lane *lanes;
    unsigned per_lane_inflight;
    unsigned timeout_ms;
    const char *token; /* --token-file (borrowed); NULL: open */
    atomic_int quiesced;
};

/* Sends `len` bytes of `buf` back as the request's reply (copied). */
static void reply(struct sp_serve_req *c, const void *buf, size_t len)
{
    sp_serve_reply(c, buf, len);
}

static void reply_error(struct sp_serve_req *c, int code, const char *msg)
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

static void reply_response(struct sp_serve_req *c, const Corral__Response *resp)
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

static void record(struct sp_serve_req *c, int code, uint64_t upstream_ns)
{
    struct rpc_req *q = sp_serve_req_data(c);
    struct rpc_lane *l = q->lane;
    if (!l->m)
        return;
    metrics_request(l->m, l->idx, q->model, q->version, "rpc", corral_err_http_status(code),
                    uv_hrtime() - q->t0, upstream_ns, -1, -1);
    metrics_inflight(l->m, l->idx, -1);
}

static void on_infer_done(void *arg, const struct upstream_done *d)
{
    struct sp_serve_req *c = arg;
    struct rpc_req *q = sp_serve_req_data(c);
    if (q->model[0] && d->version && d->version[0])
        snprintf(q->version, sizeof q->version, "%s", d->version);
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

/* Runs on the lane's loop for each request; `body` is valid during the call only. */
static void handle(void *arg, struct sp_serve_req *c, const uint8_t *body, size_t len)
{
    struct rpc_lane *l = arg;
    struct upstream *up = l->up;
    struct rpc_req *q = sp_serve_req_data(c);
    Corral__Request *req = NULL;
    struct cerr e = {0};
    q->lane = l;
    q->t0 = uv_hrtime();
    q->model[0] = q->version[0] = '\0';
    if (wire_decode_request(body, len, &req, &e) != 0) {
        LOG_ERROR("rpc: rejected a request: %s", e.msg);
        reply_error(c, e.code ? e.code : CORRAL_EINVAL, e.msg);
        return;
    }
    const char *tok = l->rpc->token;
    if (tok && req->kind_case != CORRAL__REQUEST__KIND_HEALTH &&
        !(req->auth_token && token_equal(tok, req->auth_token, strlen(req->auth_token)))) {
        corral__request__free_unpacked(req, NULL);
        record(c, CORRAL_EUNAUTH, 0);
        reply_error(c, CORRAL_EUNAUTH, "this endpoint needs the router's token: set it in the "
                    "request (libcorral: corral_client_options.token; corralctl --token-file)");
        return;
    }
    if (req->kind_case == CORRAL__REQUEST__KIND_INFER) {
        const Corral__InferRequest *ir = req->infer;
        const char *model = ir->model_name ? ir->model_name : "";
        const char *version = ir->model_version ? ir->model_version : "";
        unsigned timeout = timeout_of(ir, l->rpc->timeout_ms);
        if (upstream_model_known(up, model)) {
            snprintf(q->model, sizeof q->model, "%s", model);
            snprintf(q->version, sizeof q->version, "%s", version);
        }
        if (l->m)
            metrics_inflight(l->m, l->idx, 1);
        char mname[256], vname[64];
        snprintf(mname, sizeof mname, "%s", model);
        snprintf(vname, sizeof vname, "%s", version);
        corral__request__free_unpacked(req, NULL);
        int rc = upstream_infer_packed(up, mname, vname, body, len, timeout, on_infer_done, c,
                                       NULL, &e);
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

void rpc_set_token(struct rpc *r, const char *token)
{
    r->token = token;
}

/* Loop thread: takes over a listening socket, or stops taking requests. */
static void on_async(uv_async_t *a)
{
    struct rpc_lane *l = a->data;
    pthread_mutex_lock(&l->mu);
    int fd = l->pending_fd;
    l->pending_fd = -1;
    pthread_mutex_unlock(&l->mu);
    if (fd >= 0) {
        struct cerr e = {0};
        if (sp_serve_listen_fd(l->srv, fd, &e))
            LOG_ERROR("rpc: router thread %u takes no RPC connections: %s", l->idx, e.msg);
    }
    if (atomic_load(&l->rpc->quiesced))
        sp_serve_quiesce(l->srv);
}

int rpc_new(struct rpc **out, const char *url, unsigned contexts, unsigned n_lanes,
            unsigned timeout_ms, struct cerr *e)
{
    struct rpc *r = calloc(1, sizeof *r);
    if (r)
        r->lanes = calloc(n_lanes ? n_lanes : 1, sizeof *r->lanes);
    if (!r || !r->lanes) {
        free(r);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the RPC endpoint");
    }
    snprintf(r->url, sizeof r->url, "%s", url);
    r->n_lanes = n_lanes ? n_lanes : 1;
    contexts = contexts ? contexts : 1;
    r->per_lane_inflight = (contexts + r->n_lanes - 1) / r->n_lanes;
    r->timeout_ms = timeout_ms;
    atomic_init(&r->quiesced, 0);
    for (unsigned i = 0; i < r->n_lanes; i++) {
        r->lanes[i].rpc = r;
        r->lanes[i].idx = i;
        r->lanes[i].pending_fd = -1;
        pthread_mutex_init(&r->lanes[i].mu, NULL);
    }
    *out = r;
    return CORRAL_OK;
}

int rpc_lane_init(struct rpc *r, unsigned lane, uv_loop_t *loop, struct upstream *up,
                  struct metrics *m, struct cerr *e)
{
    struct rpc_lane *l = &r->lanes[lane];
    struct sp_serve_options opt = {.max_conns = RPC_MAX_CONNS,
                                   .max_inflight = r->per_lane_inflight,
                                   .max_frame = WIRE_MAX_MESSAGE,
                                   .req_size = sizeof(struct rpc_req)};
    l->loop = loop;
    l->up = up;
    l->m = m;
    if (sp_serve_new(&l->srv, loop, &opt, handle, l, e))
        return e->code;
    if (uv_async_init(loop, &l->async, on_async) != 0) {
        sp_serve_close(l->srv);
        l->srv = NULL;
        return cerr_set(e, CORRAL_EIO, "cannot create the RPC wake-up handle");
    }
    l->async.data = l;
    pthread_mutex_lock(&l->mu);
    l->ready = 1;
    pthread_mutex_unlock(&l->mu);
    return CORRAL_OK;
}

int rpc_start(struct rpc *r, char *bound, size_t bound_len, struct cerr *e)
{
    int rc = CORRAL_OK;
    int *fds = malloc(r->n_lanes * sizeof *fds);
    if (!fds)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory starting the RPC endpoint");
    for (unsigned i = 0; i < r->n_lanes; i++)
        fds[i] = -1;
    unsigned n_ready = 0;
    for (unsigned i = 0; i < r->n_lanes; i++) {
        pthread_mutex_lock(&r->lanes[i].mu);
        n_ready += r->lanes[i].ready && !r->lanes[i].closed;
        pthread_mutex_unlock(&r->lanes[i].mu);
    }
    int reuse = n_ready > 1;
    if (reuse) {
        /* SO_REUSEPORT would also let this router share a port that another process of
         * the same user already listens on, so first make sure the port is free. */
        int probe = -1;
        char tmp[300];
        rc = sp_serve_bind(r->url, 0, -1, &probe, tmp, sizeof tmp, e);
        if (probe >= 0)
            close(probe);
        if (rc)
            goto fail;
    }
    /* Every lane listens on its own socket; the kernel spreads connections over them.
     * The first may bind port 0, the others join the port it got. */
    int port = -1;
    for (unsigned i = 0; i < r->n_lanes; i++) {
        struct rpc_lane *l = &r->lanes[i];
        pthread_mutex_lock(&l->mu);
        int ok = l->ready && !l->closed;
        pthread_mutex_unlock(&l->mu);
        if (!ok)
            continue;
        char got[300];
        if ((rc = sp_serve_bind(r->url, reuse, port, &fds[i], got, sizeof got, e)))
            goto fail;
        if (port < 0) {
            port = sp_serve_url_port(got);
            snprintf(bound, bound_len, "%s", got);
        }
    }
    if (port < 0) {
        rc = cerr_set(e, CORRAL_EINVAL, "no router thread takes RPC connections");
        goto fail;
    }
    for (unsigned i = 0; i < r->n_lanes; i++) {
        struct rpc_lane *l = &r->lanes[i];
        if (fds[i] < 0)
            continue;
        pthread_mutex_lock(&l->mu);
        if (l->ready && !l->closed) {
            l->pending_fd = fds[i];
            uv_async_send(&l->async);
        } else {
            close(fds[i]);
        }
        fds[i] = -1;
        pthread_mutex_unlock(&l->mu);
    }
fail:
    for (unsigned i = 0; i < r->n_lanes; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    return rc;
}

void rpc_quiesce(struct rpc *r)
{
    atomic_store(&r->quiesced, 1);
    for (unsigned i = 0; i < r->n_lanes; i++) {
        struct rpc_lane *l = &r->lanes[i];
        pthread_mutex_lock(&l->mu);
        if (l->ready && !l->closed)
            uv_async_send(&l->async);
        pthread_mutex_unlock(&l->mu);
    }
}

void rpc_lane_close(struct rpc *r, unsigned lane)
{
    struct rpc_lane *l = &r->lanes[lane];
    pthread_mutex_lock(&l->mu);
    int was_ready = l->ready;
    l->closed = 1;
    l->ready = 0;
    int fd = l->pending_fd;
    l->pending_fd = -1;
    pthread_mutex_unlock(&l->mu);
    if (fd >= 0)
        close(fd);
    if (!was_ready)
        return;
    /* Requests still in flight were completed by upstream_close() before this; their
     * replies, if not yet written, go with the connections. */
    sp_serve_close(l->srv);
    l->srv = NULL;
    uv_close((uv_handle_t *)&l->async, NULL);
}

void rpc_free(struct rpc *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->n_lanes; i++) {
        if (r->lanes[i].pending_fd >= 0)
            close(r->lanes[i].pending_fd);
        pthread_mutex_destroy(&r->lanes[i].mu);
    }
    free(r->lanes);
    free(r);
}
