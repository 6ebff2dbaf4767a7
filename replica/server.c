#include "server.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "wire.h"

struct worker {
    struct replica_server *srv;
    nng_ctx ctx;
    nng_aio *aio;
    int sending;
    Corral__Request *req; /* owned while queued for the executor */
    uint64_t enqueued_ns;
    struct worker *next;
};

struct replica_server {
    nng_socket sock;
    nng_listener listener;
    char url[256];
    struct engine *eng;
    const struct model_config *cfg;
    struct replica_server_options opt;
    struct worker *workers;
    int n_workers;

    pthread_t executor;
    int executor_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct worker *head, *tail;
    size_t depth;
    int stopping;
    /* Start time of the request the executor is running, 0 when idle. */
    _Atomic uint64_t busy_since_ns;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void worker_recv(struct worker *w)
{
    w->sending = 0;
    nng_ctx_recv(w->ctx, w->aio);
}

/* Takes ownership of buf. A failed send frees the message and goes back to receiving. */
static void worker_send(struct worker *w, uint8_t *buf, size_t len)
{
    nng_msg *msg = NULL;
    if (!buf || nng_msg_alloc(&msg, 0) != 0 || nng_msg_append(msg, buf, len) != 0) {
        LOG_ERROR("cannot build reply message (out of memory)");
        if (msg)
            nng_msg_free(msg);
        free(buf);
        /* Without a reply the REQ peer times out and retries; keep serving. */
        worker_recv(w);
        return;
    }
    free(buf);
    w->sending = 1;
    nng_aio_set_msg(w->aio, msg);
    nng_ctx_send(w->ctx, w->aio);
}

static void worker_send_error(struct worker *w, int code, const char *message)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_error(code, message, &buf, &len) != 0)
        buf = NULL;
    worker_send(w, buf, len);
}

static void fill_meta(Corral__TensorMetadata *m, const struct model_io *io)
{
    corral__tensor_metadata__init(m);
    m->name = (char *)io->name;
    m->datatype = (Corral__DataType)io->dtype;
    m->n_shape = (size_t)io->ndim;
    m->shape = (int64_t *)io->dims;
}

static void answer_metadata(struct worker *w)
{
    const struct model_config *cfg = w->srv->cfg;
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__MetadataResponse md = CORRAL__METADATA_RESPONSE__INIT;
    Corral__TensorMetadata in[MODEL_MAX_IO], out[MODEL_MAX_IO];
    Corral__TensorMetadata *inp[MODEL_MAX_IO], *outp[MODEL_MAX_IO];
    char *versions[1] = {(char *)cfg->version_str};
    Corral__Parameter labels = CORRAL__PARAMETER__INIT;
    Corral__Parameter *params[1] = {&labels};
    for (size_t i = 0; i < cfg->n_inputs; i++) {
        fill_meta(&in[i], &cfg->inputs[i]);
        inp[i] = &in[i];
    }
    for (size_t i = 0; i < cfg->n_outputs; i++) {
        fill_meta(&out[i], &cfg->outputs[i]);
        outp[i] = &out[i];
    }
    md.name = (char *)cfg->name;
    md.platform = (char *)cfg->platform;
    md.n_versions = 1;
    md.versions = versions;
    md.n_inputs = cfg->n_inputs;
    md.inputs = inp;
    md.n_outputs = cfg->n_outputs;
    md.outputs = outp;
    labels.key = "label_count";
    labels.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
    labels.int64_value = (int64_t)cfg->n_labels;
    md.n_parameters = 1;
    md.parameters = params;
    resp.kind_case = CORRAL__RESPONSE__KIND_METADATA;
    resp.metadata = &md;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_response(&resp, &buf, &len) != 0)
        buf = NULL;
    worker_send(w, buf, len);
}

static void answer_health(struct worker *w)
{
    struct replica_server *srv = w->srv;
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__HealthResponse h = CORRAL__HEALTH_RESPONSE__INIT;
    uint64_t busy = atomic_load(&srv->busy_since_ns);
    /* An executor stuck on one request is not live even though this socket answers. */
    int live = busy == 0 || now_ns() - busy < (uint64_t)srv->opt.stall_ms * 1000000u;
    h.live = live;
    h.ready = live;
    h.model_name = (char *)srv->cfg->name;
    h.model_version = (char *)srv->cfg->version_str;
    resp.kind_case = CORRAL__RESPONSE__KIND_HEALTH;
    resp.health = &h;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_response(&resp, &buf, &len) != 0)
        buf = NULL;
    worker_send(w, buf, len);
}

static void enqueue_infer(struct worker *w)
{
    struct replica_server *srv = w->srv;
    int full = 0, stopping = 0;
    pthread_mutex_lock(&srv->mu);
    if (srv->stopping) {
        stopping = 1;
    } else if (srv->depth >= srv->opt.max_queue) {
        full = 1;
    } else {
        w->next = NULL;
        w->enqueued_ns = now_ns();
        if (srv->tail)
            srv->tail->next = w;
        else
            srv->head = w;
        srv->tail = w;
        srv->depth++;
        pthread_cond_signal(&srv->cv);
    }
    pthread_mutex_unlock(&srv->mu);
    if (full || stopping) {
        corral__request__free_unpacked(w->req, NULL);
        w->req = NULL;
        if (stopping)
            worker_send_error(w, CORRAL_EUNAVAIL, "replica is shutting down");
        else
            worker_send_error(w, CORRAL_EQUEUEFULL, "replica queue is full, retry later");
    }
}

static void worker_cb(void *arg)
{
    struct worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->sending) {
        if (rv != 0) {
            nng_msg *m = nng_aio_get_msg(w->aio);
            if (m)
                nng_msg_free(m);
            if (rv == NNG_ECLOSED)
                return;
        }
        worker_recv(w);
        return;
    }
    if (rv != 0) {
        if (rv == NNG_ECLOSED)
            return;
        worker_recv(w);
        return;
    }
    nng_msg *msg = nng_aio_get_msg(w->aio);
    struct cerr e = {0};
    Corral__Request *req = NULL;
    int rc = wire_decode_request(nng_msg_body(msg), nng_msg_len(msg), &req, &e);
    nng_msg_free(msg);
    if (rc) {
        LOG_WARN("rejected request: %s", e.msg);
        worker_send_error(w, rc, e.msg);
        return;
    }
    switch (req->kind_case) {
    case CORRAL__REQUEST__KIND_HEALTH:
        corral__request__free_unpacked(req, NULL);
        answer_health(w);
        break;
    case CORRAL__REQUEST__KIND_METADATA:
        corral__request__free_unpacked(req, NULL);
        answer_metadata(w);
        break;
    case CORRAL__REQUEST__KIND_INFER:
        w->req = req;
        enqueue_infer(w);
        break;
    default:
        corral__request__free_unpacked(req, NULL);
        worker_send_error(w, CORRAL_EINVAL, "unknown request kind");
    }
}

/* Runs one infer request on the executor thread and packs its reply. */
static int run_infer(struct replica_server *srv, const Corral__InferRequest *ir, uint8_t **buf,
                     size_t *len, struct cerr *e)
{
    const struct model_config *cfg = srv->cfg;
    size_t nout = engine_num_outputs(srv->eng);
    struct tensor in[MODEL_MAX_IO];
    struct tensor *out = calloc(nout, sizeof *out);
    Corral__Tensor *ot = calloc(nout, sizeof *ot);
    Corral__Tensor **otp = calloc(nout, sizeof *otp);
    int want[MODEL_MAX_IO];
    int rc = CORRAL_OK;
    if (!out || !ot || !otp) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    if (ir->model_name && ir->model_name[0] && strcmp(ir->model_name, cfg->name) != 0) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "this replica serves model '%s', not '%.128s'",
                      cfg->name, ir->model_name);
        goto out;
    }
    if (ir->model_version && ir->model_version[0] &&
        strcmp(ir->model_version, cfg->version_str) != 0) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "model '%s' version '%.32s' is not served here (serving %s)",
                      cfg->name, ir->model_version, cfg->version_str);
        goto out;
    }
    if (ir->n_inputs > MODEL_MAX_IO) {
        rc = cerr_set(e, CORRAL_EINVAL, "request has %zu inputs, model '%s' takes %zu", ir->n_inputs,
                      cfg->name, engine_num_inputs(srv->eng));
        goto out;
    }
    for (size_t i = 0; i < ir->n_inputs; i++)
        wire_tensor_view(ir->inputs[i], &in[i]);
    for (size_t j = 0; j < nout; j++)
        want[j] = ir->n_outputs == 0;
    for (size_t r = 0; r < ir->n_outputs; r++) {
        const char *nm = ir->outputs[r]->name ? ir->outputs[r]->name : "";
        size_t j;
        for (j = 0; j < nout; j++)
            if (strcmp(engine_output(srv->eng, j)->name, nm) == 0)
                break;
        if (j == nout) {
            char names[256] = "";
            size_t off = 0;
            for (size_t k = 0; k < nout && off < sizeof names; k++)
                off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", k ? ", " : "",
                                        engine_output(srv->eng, k)->name);
            rc = cerr_set(e, CORRAL_EINVAL, "unknown output '%.128s' requested (model outputs: %s)",
                          nm, names);
            goto out;
        }
        want[j] = 1;
    }
    if ((rc = engine_run(srv->eng, in, ir->n_inputs, out, e)))
        goto out;

    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__InferResponse irsp = CORRAL__INFER_RESPONSE__INIT;
    size_t k = 0;
    for (size_t j = 0; j < nout; j++) {
        if (!want[j])
            continue;
        corral__tensor__init(&ot[k]);
        ot[k].name = (char *)engine_output(srv->eng, j)->name;
        ot[k].datatype = (Corral__DataType)out[j].dtype;
        ot[k].n_shape = (size_t)out[j].ndim;
        ot[k].shape = out[j].dims;
        ot[k].data.data = out[j].data;
        ot[k].data.len = out[j].nbytes;
        otp[k] = &ot[k];
        k++;
    }
    irsp.id = ir->id;
    irsp.model_name = (char *)cfg->name;
    irsp.model_version = (char *)cfg->version_str;
    irsp.n_outputs = k;
    irsp.outputs = otp;
    resp.kind_case = CORRAL__RESPONSE__KIND_INFER;
    resp.infer = &irsp;
    if (wire_pack_response(&resp, buf, len) != 0)
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory packing the response");
out:
    for (size_t j = 0; out && j < nout; j++)
        tensor_release(&out[j]);
    free(out);
    free(ot);
    free(otp);
    return rc;
}

static void *executor_main(void *arg)
{
    struct replica_server *srv = arg;
    for (;;) {
        pthread_mutex_lock(&srv->mu);
        while (!srv->head && !srv->stopping)
            pthread_cond_wait(&srv->cv, &srv->mu);
        if (srv->stopping) {
            pthread_mutex_unlock(&srv->mu);
            break;
        }
        struct worker *w = srv->head;
        srv->head = w->next;
        if (!srv->head)
            srv->tail = NULL;
        srv->depth--;
        pthread_mutex_unlock(&srv->mu);

        uint64_t t0 = now_ns();
        atomic_store(&srv->busy_since_ns, t0);
        struct cerr e = {0};
        uint8_t *buf = NULL;
        size_t len = 0;
        int rc = run_infer(srv, w->req->infer, &buf, &len, &e);
        atomic_store(&srv->busy_since_ns, 0);
        const char *id = w->req->infer->id ? w->req->infer->id : "";
        if (rc) {
            LOG_DEBUG("infer id='%.64s' failed in %.3f ms: %s", id, (double)(now_ns() - t0) / 1e6, e.msg);
            corral__request__free_unpacked(w->req, NULL);
            w->req = NULL;
            worker_send_error(w, rc, e.msg);
        } else {
            LOG_DEBUG("infer id='%.64s' queued %.3f ms, ran %.3f ms", id,
                      (double)(t0 - w->enqueued_ns) / 1e6, (double)(now_ns() - t0) / 1e6);
            corral__request__free_unpacked(w->req, NULL);
            w->req = NULL;
            worker_send(w, buf, len);
        }
    }
    return NULL;
}

int replica_server_start(struct replica_server **out, const char *url, struct engine *eng,
                         const struct model_config *cfg, const struct replica_server_options *opt,
                         struct cerr *e)
{
    int rv, rc = CORRAL_OK;
    struct replica_server *srv = calloc(1, sizeof *srv);
    *out = NULL;
    if (!srv)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    srv->eng = eng;
    srv->cfg = cfg;
    srv->opt = *opt;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    if ((rv = nng_rep0_open(&srv->sock)) != 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "cannot open NNG REP socket: %s", nng_strerror(rv));
        goto fail;
    }
    nng_socket_set_size(srv->sock, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    if ((rv = nng_listener_create(&srv->listener, srv->sock, url)) != 0 ||
        (rv = nng_listener_start(srv->listener, 0)) != 0) {
        rc = cerr_set(e, rv == NNG_EADDRINUSE ? CORRAL_EUNAVAIL : CORRAL_EINVAL,
                      "cannot listen on '%s': %s", url, nng_strerror(rv));
        goto fail;
    }
    snprintf(srv->url, sizeof srv->url, "%s", url);
    if (strncmp(url, "tcp://", 6) == 0) {
        /* Report the port actually bound so that callers may ask for port 0. */
        nng_sockaddr sa;
        if (nng_listener_get_addr(srv->listener, NNG_OPT_LOCADDR, &sa) == 0 &&
            sa.s_family == NNG_AF_INET) {
            const uint8_t *a = (const uint8_t *)&sa.s_in.sa_addr;
            snprintf(srv->url, sizeof srv->url, "tcp://%u.%u.%u.%u:%u", a[0], a[1], a[2], a[3],
                     (unsigned)ntohs(sa.s_in.sa_port));
        }
    }
    if (pthread_create(&srv->executor, NULL, executor_main, srv) != 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "cannot start the executor thread");
        goto fail;
    }
    srv->executor_started = 1;
    srv->n_workers = opt->contexts > 0 ? opt->contexts : 1;
    srv->workers = calloc((size_t)srv->n_workers, sizeof *srv->workers);
    if (!srv->workers) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < srv->n_workers; i++) {
        struct worker *w = &srv->workers[i];
        w->srv = srv;
        if ((rv = nng_aio_alloc(&w->aio, worker_cb, w)) != 0 ||
            (rv = nng_ctx_open(&w->ctx, srv->sock)) != 0) {
            rc = cerr_set(e, CORRAL_EINTERNAL, "cannot open NNG context: %s", nng_strerror(rv));
            goto fail;
        }
    }
    for (int i = 0; i < srv->n_workers; i++)
        worker_recv(&srv->workers[i]);
    *out = srv;
    return CORRAL_OK;
fail:
    replica_server_stop(srv);
    return rc;
}

const char *replica_server_url(const struct replica_server *srv) { return srv->url; }

void replica_server_stop(struct replica_server *srv)
{
    if (!srv)
        return;
    /* The executor finishes the request it is running and answers it before the socket closes. */
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    if (srv->executor_started)
        pthread_join(srv->executor, NULL);
    nng_close(srv->sock);
    for (int i = 0; srv->workers && i < srv->n_workers; i++)
        if (srv->workers[i].aio)
            nng_aio_stop(srv->workers[i].aio);
    /* The socket is closed: requests still queued can no longer be answered, only freed. */
    for (struct worker *w = srv->head; w; w = w->next)
        if (w->req)
            corral__request__free_unpacked(w->req, NULL);
    for (int i = 0; srv->workers && i < srv->n_workers; i++) {
        if (srv->workers[i].aio)
            nng_aio_free(srv->workers[i].aio);
    }
    free(srv->workers);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv);
}
