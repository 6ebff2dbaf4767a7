#include "server.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batcher.h"
#include "log.h"
#include "wire.h"

struct worker {
    struct replica_server *srv;
    nng_ctx ctx;
    nng_aio *aio;
    int sending;
    /* A batcher reply waiting for the sender thread (guarded by the server's smu). */
    uint8_t *rbuf;
    size_t rlen;
    struct worker *rnext;
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
    struct batcher *batcher; /* borrowed */

    /* Replies the batcher hands over, sent by the sender thread: a TCP send runs its
     * syscalls on the calling thread, and on the batcher thread they held up the next
     * batch. The sender is woken once per burst, not once per reply. */
    pthread_t sender;
    pthread_mutex_t smu;
    pthread_cond_t scv;
    struct worker *rhead, *rtail;
    int sender_started, sender_idle, sender_stop, sync_ready;
};

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

/* Packs and sends a reply; a reply that cannot be packed is dropped like a failed send. */
static void send_response(struct worker *w, const Corral__Response *resp)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_response(resp, &buf, &len) != 0)
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
    /* What the warm-up planned: operators size memory from these. */
    const struct replica_server_options *o = &w->srv->opt;
    Corral__Parameter pc = CORRAL__PARAMETER__INIT, amax = CORRAL__PARAMETER__INIT,
                      plans = CORRAL__PARAMETER__INIT;
    pc.key = "plan_count";
    pc.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
    pc.int64_value = o->plan_count;
    amax.key = "arena_bytes_max";
    amax.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
    amax.int64_value = o->arena_bytes_max;
    plans.key = "plans";
    plans.value_case = CORRAL__PARAMETER__VALUE_STRING_VALUE;
    plans.string_value = (char *)(o->plans ? o->plans : "");
    Corral__Parameter *params[4] = {&labels, &pc, &amax, &plans};
    md.n_parameters = 4;
    md.n_labels = cfg->n_labels;
    md.labels = cfg->labels;
    md.parameters = params;
    resp.kind_case = CORRAL__RESPONSE__KIND_METADATA;
    resp.metadata = &md;
    send_response(w, &resp);
}

static void answer_health(struct worker *w)
{
    struct replica_server *srv = w->srv;
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__HealthResponse h = CORRAL__HEALTH_RESPONSE__INIT;
    int live, ready;
    /* An executor stuck on one batch is not live even though this socket answers. */
    batcher_health(srv->batcher, &live, &ready);
    h.live = live;
    h.ready = ready;
    h.model_name = (char *)srv->cfg->name;
    h.model_version = (char *)srv->cfg->version_str;
    resp.kind_case = CORRAL__RESPONSE__KIND_HEALTH;
    resp.health = &h;
    send_response(w, &resp);
}

static void answer_stats(struct worker *w)
{
    struct replica_server *srv = w->srv;
    struct batcher_stats *st = malloc(sizeof *st);
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__StatsResponse sr = CORRAL__STATS_RESPONSE__INIT;
    Corral__HistogramBin bins[64], *binp[64];
    Corral__RejectionCount rej[BATCHER_REJECT_COUNT], *rejp[BATCHER_REJECT_COUNT];
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!st) {
        worker_send_error(w, CORRAL_ENOMEM, "out of memory");
        return;
    }
    batcher_get_stats(srv->batcher, st);
    sr.model_name = (char *)srv->cfg->name;
    sr.model_version = (char *)srv->cfg->version_str;
    sr.request_count = st->requests;
    sr.success_count = st->success;
    sr.batch_count = st->batches;
    sr.batch_rows = st->rows;
    sr.queue_time_us = st->queue_us;
    sr.compute_time_us = st->compute_us;
    sr.gather_time_us = st->gather_us;
    sr.scatter_time_us = st->scatter_us;
    sr.real_elements = st->real_elements;
    sr.padded_elements = st->padded_elements;
    sr.queue_depth = st->queue_depth;
    sr.max_queue_size = st->max_queue_size;
    sr.max_batch_size = (uint64_t)srv->cfg->batching.max_batch_size;
    /* Only bins that counted something travel; at most 64 of them, the largest sizes kept
     * in the last bin so the total stays exact. */
    size_t nb = 0;
    for (size_t i = 0; i < st->n_hist; i++) {
        if (!st->hist[i])
            continue;
        if (nb == 64) {
            bins[63].count += st->hist[i];
            continue;
        }
        corral__histogram_bin__init(&bins[nb]);
        bins[nb].size = i + 1;
        bins[nb].count = st->hist[i];
        binp[nb] = &bins[nb];
        nb++;
    }
    sr.n_batch_size_histogram = nb;
    sr.batch_size_histogram = binp;
    for (int r = 0; r < BATCHER_REJECT_COUNT; r++) {
        corral__rejection_count__init(&rej[r]);
        rej[r].reason = (char *)batcher_reject_name((enum batcher_reject)r);
        rej[r].count = st->rejected[r];
        rejp[r] = &rej[r];
    }
    sr.n_rejections = BATCHER_REJECT_COUNT;
    sr.rejections = rejp;
    resp.kind_case = CORRAL__RESPONSE__KIND_STATS;
    resp.stats = &sr;
    if (wire_pack_response(&resp, &buf, &len) != 0)
        buf = NULL;
    free(st);
    worker_send(w, buf, len);
}

void replica_server_reply(void *owner, uint8_t *buf, size_t len)
{
    struct worker *w = owner;
    struct replica_server *srv = w->srv;
    int wake = 0;
    pthread_mutex_lock(&srv->smu);
    if (!srv->sender_started) {
        /* No sender thread (start-up failed, or it has stopped): send from here. */
        pthread_mutex_unlock(&srv->smu);
        worker_send(w, buf, len);
        return;
    }
    w->rbuf = buf;
    w->rlen = len;
    w->rnext = NULL;
    if (srv->rtail)
        srv->rtail->rnext = w;
    else
        srv->rhead = w;
    srv->rtail = w;
    if (srv->sender_idle) {
        srv->sender_idle = 0;
        wake = 1;
    }
    pthread_mutex_unlock(&srv->smu);
    if (wake)
        pthread_cond_signal(&srv->scv);
}

static void *sender_main(void *arg)
{
    struct replica_server *srv = arg;
    pthread_mutex_lock(&srv->smu);
    for (;;) {
        if (!srv->rhead) {
            if (srv->sender_stop)
                break;
            srv->sender_idle = 1;
            pthread_cond_wait(&srv->scv, &srv->smu);
            continue;
        }
        struct worker *list = srv->rhead;
        srv->rhead = srv->rtail = NULL;
        pthread_mutex_unlock(&srv->smu);
        while (list) {
            struct worker *nx = list->rnext;
            uint8_t *buf = list->rbuf;
            list->rbuf = NULL;
            list->rnext = NULL;
            worker_send(list, buf, list->rlen);
            list = nx;
        }
        pthread_mutex_lock(&srv->smu);
    }
    pthread_mutex_unlock(&srv->smu);
    return NULL;
}

/* Sends what is still queued and ends the sender thread. */
static void sender_stop(struct replica_server *srv)
{
    if (!srv->sync_ready)
        return;
    pthread_mutex_lock(&srv->smu);
    int started = srv->sender_started;
    srv->sender_stop = 1;
    pthread_mutex_unlock(&srv->smu);
    pthread_cond_signal(&srv->scv);
    if (started)
        pthread_join(srv->sender, NULL);
    pthread_mutex_lock(&srv->smu);
    srv->sender_started = 0;
    pthread_mutex_unlock(&srv->smu);
}

static void submit_infer(struct worker *w, Corral__Request *req)
{
    struct cerr e = {0};
    int rc = batcher_submit(w->srv->batcher, req, w, &e);
    if (rc) {
        if (rc != CORRAL_EQUEUEFULL)
            LOG_DEBUG("refused infer request: %s", e.msg);
        corral__request__free_unpacked(req, NULL);
        worker_send_error(w, rc, e.msg);
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
        submit_infer(w, req);
        break;
    case CORRAL__REQUEST__KIND_STATS:
        corral__request__free_unpacked(req, NULL);
        answer_stats(w);
        break;
    default:
        corral__request__free_unpacked(req, NULL);
        worker_send_error(w, CORRAL_EINVAL, "unknown request kind");
    }
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
    if (!opt->batcher) {
        free(srv);
        return cerr_set(e, CORRAL_EINVAL, "replica server started without a batcher");
    }
    srv->eng = eng;
    srv->cfg = cfg;
    srv->opt = *opt;
    srv->batcher = opt->batcher;
    pthread_mutex_init(&srv->smu, NULL);
    pthread_cond_init(&srv->scv, NULL);
    srv->sync_ready = 1;
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
    if (pthread_create(&srv->sender, NULL, sender_main, srv) != 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "cannot start the reply sender thread");
        goto fail;
    }
    srv->sender_started = 1;
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
    /* The batcher finishes the batches it is running and answers everything still queued
     * (EUNAVAIL) while the socket can still carry the replies. */
    batcher_stop(srv->batcher);
    sender_stop(srv);
    if (nng_socket_id(srv->sock) > 0)
        nng_close(srv->sock);
    for (int i = 0; srv->workers && i < srv->n_workers; i++)
        if (srv->workers[i].aio)
            nng_aio_stop(srv->workers[i].aio);
    for (int i = 0; srv->workers && i < srv->n_workers; i++) {
        if (srv->workers[i].aio)
            nng_aio_free(srv->workers[i].aio);
    }
    free(srv->workers);
    if (srv->sync_ready) {
        pthread_mutex_destroy(&srv->smu);
        pthread_cond_destroy(&srv->scv);
    }
    free(srv);
}
