/*
 * libcorral over NNG REQ: one socket per client, one REQ context per request
 * in flight. Contexts and their aios are pooled and reused, because an aio
 * cannot be freed from its own completion callback, and reuse also spares a
 * context setup per request.
 */
#include "corral/client.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corral.pb-c.h"
#include "error.h"
#include "list.h"
#include "tensor.h"
#include "wire.h"

/* The public statuses are the wire codes; keep the two tables in step. */
_Static_assert((int)CORRAL_STATUS_INVALID == (int)CORRAL_EINVAL, "status table");
_Static_assert((int)CORRAL_STATUS_UNAVAILABLE == (int)CORRAL_EUNAVAIL, "status table");
_Static_assert((int)CORRAL_STATUS_TIMEOUT == (int)CORRAL_ETIMEDOUT, "status table");
_Static_assert((int)CORRAL_STATUS_QUEUE_FULL == (int)CORRAL_EQUEUEFULL, "status table");
_Static_assert((int)CORRAL_STATUS_METHOD == (int)CORRAL_EMETHOD, "status table");
_Static_assert((int)CORRAL_STATUS_DRAINING == (int)CORRAL_EDRAINING, "status table");
_Static_assert((int)CORRAL_STATUS_MEDIA_TYPE == (int)CORRAL_EMEDIATYPE, "status table");
_Static_assert((int)CORRAL_STATUS_UNAUTHORIZED == (int)CORRAL_EUNAUTH, "status table");
_Static_assert(CORRAL_TYPE_BF16 == (int)DT_BF16 && CORRAL_TYPE_BYTES == (int)DT_BYTES,
               "datatype table");

/* Slack after a request's own deadline, so the server's timeout answer can arrive first. */
#define CLIENT_GRACE_MS 200

enum { STAGE_SEND, STAGE_RECV };

struct call {
    struct corral_client *cl;
    nng_ctx ctx;
    nng_aio *aio;
    int stage;
    nng_time deadline;
    corral_infer_cb cb;
    void *arg;
    int want_health; /* a health call: decode HealthResponse */
    struct list_node link; /* on the client's inflight list, or on its pool */
};

struct corral_client {
    nng_socket sock;
    unsigned timeout_ms;
    char *token; /* bearer token sent with infer requests (owned), or NULL */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct list_node pool;     /* idle calls, the last returned first (mu) */
    struct list_node inflight; /* (mu) */
    struct call **all;     /* every call ever made, for freeing (mu) */
    size_t n_all, cap_all;
    unsigned n_inflight;   /* (mu) */
    int closing;           /* (mu) */
};

struct corral_infer_result {
    Corral__Response *resp;
};

const char *corral_status_name(int status)
{
    switch (status) {
    case CORRAL_STATUS_OK: return "OK";
    case CORRAL_STATUS_INVALID: return "INVALID";
    case CORRAL_STATUS_NOT_FOUND: return "NOT_FOUND";
    case CORRAL_STATUS_UNAVAILABLE: return "UNAVAILABLE";
    case CORRAL_STATUS_UNSUPPORTED: return "UNSUPPORTED";
    case CORRAL_STATUS_INTERNAL: return "INTERNAL";
    case CORRAL_STATUS_NO_MEMORY: return "NO_MEMORY";
    case CORRAL_STATUS_IO: return "IO";
    case CORRAL_STATUS_PARSE: return "PARSE";
    case CORRAL_STATUS_TIMEOUT: return "TIMEOUT";
    case CORRAL_STATUS_QUEUE_FULL: return "QUEUE_FULL";
    case CORRAL_STATUS_MISMATCH: return "MISMATCH";
    case CORRAL_STATUS_TOO_LARGE: return "TOO_LARGE";
    case CORRAL_STATUS_METHOD: return "METHOD";
    case CORRAL_STATUS_DRAINING: return "DRAINING";
    case CORRAL_STATUS_MEDIA_TYPE: return "MEDIA_TYPE";
    case CORRAL_STATUS_UNAUTHORIZED: return "UNAUTHORIZED";
    }
    return "UNKNOWN";
}

const char *corral_datatype_name(int datatype)
{
    return dtype_valid(datatype) ? dtype_name((enum dtype)datatype) : NULL;
}

int corral_datatype_from_name(const char *name)
{
    enum dtype d = dtype_from_name(name);
    return d == DT_INVALID ? 0 : (int)d;
}

static int set_err(struct corral_error *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(struct corral_error *err, int status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->status = status;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int map_nng(int rv)
{
    switch (rv) {
    case NNG_ETIMEDOUT: return CORRAL_STATUS_TIMEOUT;
    case NNG_ENOMEM: return CORRAL_STATUS_NO_MEMORY;
    case NNG_EMSGSIZE: return CORRAL_STATUS_TOO_LARGE;
    default: return CORRAL_STATUS_UNAVAILABLE;
    }
}

static void call_cb(void *arg);

int corral_connect(struct corral_client **out, const char *url,
                   const struct corral_client_options *opt, struct corral_error *err)
{
    struct corral_client *cl = calloc(1, sizeof *cl);
    int rv;
    if (!cl)
        return set_err(err, CORRAL_STATUS_NO_MEMORY, "out of memory creating a client");
    cl->timeout_ms = opt && opt->timeout_ms ? opt->timeout_ms : 30000;
    if (opt && opt->token && !(cl->token = strdup(opt->token))) {
        free(cl);
        return set_err(err, CORRAL_STATUS_NO_MEMORY, "out of memory creating a client");
    }
    pthread_mutex_init(&cl->mu, NULL);
    pthread_cond_init(&cl->cv, NULL);
    list_init(&cl->pool);
    list_init(&cl->inflight);
    if ((rv = nng_req0_open(&cl->sock)) != 0) {
        set_err(err, CORRAL_STATUS_IO, "cannot open an NNG socket: %s", nng_strerror(rv));
        goto fail;
    }
    nng_socket_set_size(cl->sock, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    /* NNG would resend an unanswered request after a minute; an inference must not run twice. */
    nng_socket_set_ms(cl->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_ms(cl->sock, NNG_OPT_RECONNMINT, 50);
    nng_socket_set_ms(cl->sock, NNG_OPT_RECONNMAXT, 1000);
    if ((rv = nng_dial(cl->sock, url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        set_err(err, rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP ? CORRAL_STATUS_INVALID
                                                                : CORRAL_STATUS_UNAVAILABLE,
                "cannot connect to '%s': %s (expected an NNG URL such as tcp://host:8001)", url,
                nng_strerror(rv));
        nng_close(cl->sock);
        goto fail;
    }
    *out = cl;
    return CORRAL_STATUS_OK;
fail:
    pthread_mutex_destroy(&cl->mu);
    pthread_cond_destroy(&cl->cv);
    free(cl->token);
    free(cl);
    return err ? err->status : CORRAL_STATUS_IO;
}

/* Takes an idle call from the pool (or makes one) and links it in flight. */
static struct call *call_get(struct corral_client *cl, struct corral_error *err)
{
    pthread_mutex_lock(&cl->mu);
    if (cl->closing) {
        pthread_mutex_unlock(&cl->mu);
        set_err(err, CORRAL_STATUS_UNAVAILABLE, "the client is closing");
        return NULL;
    }
    struct call *c = list_first_entry(&cl->pool, struct call, link);
    if (c) {
        list_remove(&c->link);
    } else {
        if (cl->n_all == cl->cap_all) {
            size_t nc = cl->cap_all ? cl->cap_all * 2 : 64;
            struct call **na = realloc(cl->all, nc * sizeof *na);
            if (!na)
                goto oom;
            cl->all = na;
            cl->cap_all = nc;
        }
        c = calloc(1, sizeof *c);
        if (!c)
            goto oom;
        c->cl = cl;
        if (nng_aio_alloc(&c->aio, call_cb, c) != 0 || nng_ctx_open(&c->ctx, cl->sock) != 0) {
            if (c->aio)
                nng_aio_free(c->aio);
            free(c);
            goto oom;
        }
        cl->all[cl->n_all++] = c;
    }
    list_push_front(&cl->inflight, &c->link);
    cl->n_inflight++;
    pthread_mutex_unlock(&cl->mu);
    return c;
oom:
    pthread_mutex_unlock(&cl->mu);
    set_err(err, CORRAL_STATUS_NO_MEMORY, "out of memory starting a request");
    return NULL;
}

/* Unlinks a finished call and returns it to the pool. */
static void call_put(struct call *c)
{
    struct corral_client *cl = c->cl;
    pthread_mutex_lock(&cl->mu);
    list_remove(&c->link);
    list_push_front(&cl->pool, &c->link);
    if (--cl->n_inflight == 0)
        pthread_cond_broadcast(&cl->cv);
    pthread_mutex_unlock(&cl->mu);
}

static void finish(struct call *c, int status, const char *msg, Corral__Response *resp)
{
    corral_infer_cb cb = c->cb;
    void *arg = c->arg;
    struct corral_infer_result *res = NULL;
    if (status == CORRAL_STATUS_OK) {
        res = malloc(sizeof *res);
        if (!res) {
            status = CORRAL_STATUS_NO_MEMORY;
            msg = "out of memory receiving the answer";
            corral__response__free_unpacked(resp, NULL);
        } else {
            res->resp = resp;
        }
    } else if (resp) {
        corral__response__free_unpacked(resp, NULL);
    }
    /* The callback comes last but one: afterwards the call may be reused at once. */
    cb(arg, status, msg, res);
    call_put(c);
}

static void call_cb(void *arg)
{
    struct call *c = arg;
    int rv = nng_aio_result(c->aio);
    char msg[600];
    if (c->stage == STAGE_SEND) {
        if (rv) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            if (m)
                nng_msg_free(m);
            snprintf(msg, sizeof msg, "could not send the request: %s",
                     rv == NNG_ETIMEDOUT ? "deadline passed before the server took it"
                                         : nng_strerror(rv));
            finish(c, map_nng(rv), msg, NULL);
            return;
        }
        nng_time now = nng_clock();
        c->stage = STAGE_RECV;
        nng_aio_set_timeout(c->aio, c->deadline > now ? (nng_duration)(c->deadline - now) : 1);
        nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    if (rv) {
        snprintf(msg, sizeof msg, "no answer: %s",
                 rv == NNG_ETIMEDOUT ? "deadline passed" : rv == NNG_ECANCELED ? "cancelled"
                                                                              : nng_strerror(rv));
        finish(c, map_nng(rv), msg, NULL);
        return;
    }
    nng_msg *m = nng_aio_get_msg(c->aio);
    nng_aio_set_msg(c->aio, NULL);
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    int drc = wire_decode_response(nng_msg_body(m), nng_msg_len(m), &resp, &e);
    nng_msg_free(m);
    if (drc) {
        snprintf(msg, sizeof msg, "invalid answer from the server: %.500s", e.msg);
        finish(c, CORRAL_STATUS_PARSE, msg, NULL);
        return;
    }
    if (resp->kind_case == CORRAL__RESPONSE__KIND_ERROR) {
        /* Every code of the table is a public status (the asserts above keep them equal). */
        int code = resp->error->code < 0 && corral_err_known(resp->error->code)
                       ? resp->error->code
                       : CORRAL_STATUS_INTERNAL;
        snprintf(msg, sizeof msg, "%.580s",
                 resp->error->message && resp->error->message[0] ? resp->error->message
                                                                  : corral_status_name(code));
        finish(c, code, msg, resp);
        return;
    }
    int want = c->want_health ? CORRAL__RESPONSE__KIND_HEALTH : CORRAL__RESPONSE__KIND_INFER;
    if ((int)resp->kind_case != want) {
        snprintf(msg, sizeof msg, "the server answered with message kind %d, expected %d",
                 (int)resp->kind_case, want);
        finish(c, CORRAL_STATUS_PARSE, msg, resp);
        return;
    }
    finish(c, CORRAL_STATUS_OK, NULL, resp);
}

static int start(struct corral_client *cl, const Corral__Request *req, unsigned timeout_ms,
                 int health, corral_infer_cb cb, void *arg, struct corral_error *err)
{
    size_t n = corral__request__get_packed_size(req);
    nng_msg *m = NULL;
    if (n > WIRE_MAX_MESSAGE)
        return set_err(err, CORRAL_STATUS_TOO_LARGE, "request of %zu bytes exceeds the %zu byte "
                       "message limit", n, (size_t)WIRE_MAX_MESSAGE);
    if (nng_msg_alloc(&m, n) != 0)
        return set_err(err, CORRAL_STATUS_NO_MEMORY, "out of memory packing a request of %zu "
                       "bytes", n);
    corral__request__pack(req, nng_msg_body(m));
    struct call *c = call_get(cl, err);
    if (!c) {
        nng_msg_free(m);
        return err ? err->status : CORRAL_STATUS_UNAVAILABLE;
    }
    c->cb = cb;
    c->arg = arg;
    c->want_health = health;
    c->stage = STAGE_SEND;
    c->deadline = nng_clock() + timeout_ms + CLIENT_GRACE_MS;
    nng_aio_set_msg(c->aio, m);
    nng_aio_set_timeout(c->aio, (nng_duration)(timeout_ms + CLIENT_GRACE_MS));
    nng_ctx_send(c->ctx, c->aio);
    return CORRAL_STATUS_OK;
}

static int check_request(const struct corral_infer_request *rq, struct corral_error *err)
{
    if (!rq || !rq->model || !rq->model[0])
        return set_err(err, CORRAL_STATUS_INVALID, "a request needs a model name");
    if (rq->n_inputs == 0 || !rq->inputs)
        return set_err(err, CORRAL_STATUS_INVALID, "a request needs at least one input");
    for (size_t i = 0; i < rq->n_inputs; i++) {
        const struct corral_tensor *t = &rq->inputs[i];
        if (!t->name || !t->name[0])
            return set_err(err, CORRAL_STATUS_INVALID, "input %zu has no name", i);
        if (!dtype_valid(t->datatype))
            return set_err(err, CORRAL_STATUS_INVALID, "input '%s' has datatype %d, expected one "
                           "of enum corral_datatype", t->name, t->datatype);
        if (t->ndim > TENSOR_MAX_DIMS || (t->ndim && !t->shape))
            return set_err(err, CORRAL_STATUS_INVALID, "input '%s' has %zu dimensions, expected "
                           "at most %d", t->name, t->ndim, TENSOR_MAX_DIMS);
        if (t->nbytes && !t->data)
            return set_err(err, CORRAL_STATUS_INVALID, "input '%s' has %zu bytes but no data",
                           t->name, t->nbytes);
        struct cerr e = {0};
        if (tensor_check_size(t->name, (enum dtype)t->datatype, t->shape, (int)t->ndim,
                              t->data, t->nbytes, &e))
            return set_err(err, CORRAL_STATUS_INVALID, "%s", e.msg);
    }
    return CORRAL_STATUS_OK;
}

int corral_infer_async(struct corral_client *cl, const struct corral_infer_request *rq,
                       corral_infer_cb cb, void *arg, struct corral_error *err)
{
    int rc = check_request(rq, err);
    if (rc)
        return rc;
    if (!cb)
        return set_err(err, CORRAL_STATUS_INVALID, "corral_infer_async needs a callback");
    unsigned timeout = rq->timeout_ms ? rq->timeout_ms : cl->timeout_ms;
    Corral__Tensor *ts = calloc(rq->n_inputs, sizeof *ts);
    Corral__Tensor **tp = calloc(rq->n_inputs, sizeof *tp);
    Corral__RequestedOutput *os = calloc(rq->n_outputs ? rq->n_outputs : 1, sizeof *os);
    Corral__RequestedOutput **op = calloc(rq->n_outputs ? rq->n_outputs : 1, sizeof *op);
    if (!ts || !tp || !os || !op) {
        rc = set_err(err, CORRAL_STATUS_NO_MEMORY, "out of memory building a request");
        goto out;
    }
    for (size_t i = 0; i < rq->n_inputs; i++) {
        const struct corral_tensor *t = &rq->inputs[i];
        corral__tensor__init(&ts[i]);
        /* Packing only reads these, so the caller's buffers are borrowed, not copied twice. */
        ts[i].name = (char *)t->name;
        ts[i].datatype = (Corral__DataType)t->datatype;
        ts[i].shape = (int64_t *)t->shape;
        ts[i].n_shape = t->ndim;
        ts[i].data.data = (uint8_t *)t->data;
        ts[i].data.len = t->nbytes;
        tp[i] = &ts[i];
    }
    for (size_t i = 0; i < rq->n_outputs; i++) {
        corral__requested_output__init(&os[i]);
        os[i].name = (char *)rq->outputs[i];
        op[i] = &os[i];
    }
    Corral__Parameter pt = CORRAL__PARAMETER__INIT, pp = CORRAL__PARAMETER__INIT;
    Corral__Parameter *params[2];
    size_t np = 0;
    pt.key = "timeout";
    pt.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
    pt.int64_value = (int64_t)timeout * 1000;
    params[np++] = &pt;
    if (rq->priority > 0) {
        pp.key = "priority";
        pp.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
        pp.int64_value = rq->priority;
        params[np++] = &pp;
    }
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    ir.id = (char *)(rq->id ? rq->id : "");
    ir.model_name = (char *)rq->model;
    ir.model_version = (char *)(rq->version ? rq->version : "");
    ir.inputs = tp;
    ir.n_inputs = rq->n_inputs;
    ir.outputs = op;
    ir.n_outputs = rq->n_outputs;
    ir.parameters = params;
    ir.n_parameters = np;
    Corral__Request req = CORRAL__REQUEST__INIT;
    req.kind_case = CORRAL__REQUEST__KIND_INFER;
    req.infer = &ir;
    if (cl->token)
        req.auth_token = cl->token;
    rc = start(cl, &req, timeout, 0, cb, arg, err);
out:
    free(ts);
    free(tp);
    free(os);
    free(op);
    return rc;
}

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int status;
    char message[512];
    struct corral_infer_result *res;
};

static void wake(void *arg, int status, const char *message, struct corral_infer_result *res)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    snprintf(w->message, sizeof w->message, "%s", message ? message : "");
    w->res = res;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int wait_for(struct waiter *w, struct corral_error *err)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    if (w->status)
        set_err(err, w->status, "%s", w->message);
    return w->status;
}

int corral_infer(struct corral_client *cl, const struct corral_infer_request *req,
                 struct corral_infer_result **out, struct corral_error *err)
{
    struct waiter w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    *out = NULL;
    int rc = corral_infer_async(cl, req, wake, &w, err);
    if (rc) {
        pthread_mutex_destroy(&w.mu);
        pthread_cond_destroy(&w.cv);
        return rc;
    }
    rc = wait_for(&w, err);
    *out = w.res;
    return rc;
}

int corral_health(struct corral_client *cl, unsigned timeout_ms, int *live, int *ready,
                  struct corral_error *err)
{
    struct waiter w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__HealthRequest hr = CORRAL__HEALTH_REQUEST__INIT;
    req.kind_case = CORRAL__REQUEST__KIND_HEALTH;
    req.health = &hr;
    int rc = start(cl, &req, timeout_ms ? timeout_ms : cl->timeout_ms, 1, wake, &w, err);
    if (rc) {
        pthread_mutex_destroy(&w.mu);
        pthread_cond_destroy(&w.cv);
        return rc;
    }
    rc = wait_for(&w, err);
    if (rc == CORRAL_STATUS_OK) {
        *live = w.res->resp->health->live;
        *ready = w.res->resp->health->ready;
        corral_result_free(w.res);
    }
    return rc;
}

unsigned corral_inflight(const struct corral_client *cl)
{
    struct corral_client *m = (struct corral_client *)cl;
    pthread_mutex_lock(&m->mu);
    unsigned n = m->n_inflight;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void corral_close(struct corral_client *cl)
{
    if (!cl)
        return;
    pthread_mutex_lock(&cl->mu);
    cl->closing = 1;
    pthread_mutex_unlock(&cl->mu);
    /* Closing the socket aborts every operation; their callbacks finish the calls. */
    nng_close(cl->sock);
    pthread_mutex_lock(&cl->mu);
    while (cl->n_inflight > 0)
        pthread_cond_wait(&cl->cv, &cl->mu);
    pthread_mutex_unlock(&cl->mu);
    for (size_t i = 0; i < cl->n_all; i++) {
        nng_aio_free(cl->all[i]->aio);
        free(cl->all[i]);
    }
    free(cl->all);
    pthread_mutex_destroy(&cl->mu);
    pthread_cond_destroy(&cl->cv);
    free(cl->token);
    free(cl);
}

size_t corral_result_output_count(const struct corral_infer_result *r)
{
    return r && r->resp->infer ? r->resp->infer->n_outputs : 0;
}

static void view(const Corral__Tensor *t, struct corral_tensor *out)
{
    out->name = t->name;
    out->datatype = (int)t->datatype;
    out->shape = t->shape;
    out->ndim = t->n_shape;
    out->data = t->data.data;
    out->nbytes = t->data.len;
}

int corral_result_output(const struct corral_infer_result *r, size_t i, struct corral_tensor *out)
{
    if (i >= corral_result_output_count(r))
        return CORRAL_STATUS_NOT_FOUND;
    view(r->resp->infer->outputs[i], out);
    return CORRAL_STATUS_OK;
}

int corral_result_output_by_name(const struct corral_infer_result *r, const char *name,
                                 struct corral_tensor *out)
{
    for (size_t i = 0; i < corral_result_output_count(r); i++) {
        const Corral__Tensor *t = r->resp->infer->outputs[i];
        if (t->name && strcmp(t->name, name) == 0) {
            view(t, out);
            return CORRAL_STATUS_OK;
        }
    }
    return CORRAL_STATUS_NOT_FOUND;
}

const char *corral_result_id(const struct corral_infer_result *r)
{
    return r && r->resp->infer && r->resp->infer->id ? r->resp->infer->id : "";
}

const char *corral_result_model_version(const struct corral_infer_result *r)
{
    return r && r->resp->infer && r->resp->infer->model_version ? r->resp->infer->model_version
                                                                : "";
}

void corral_result_free(struct corral_infer_result *r)
{
    if (!r)
        return;
    corral__response__free_unpacked(r->resp, NULL);
    free(r);
}
