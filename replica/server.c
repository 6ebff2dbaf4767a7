#include "server.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "batcher.h"
#include "image_pool.h"
#include "log.h"
#include "sp_epoll_server.h"
#include "wire.h"

enum phase { PHASE_STARTING, PHASE_READY, PHASE_DRAINING };

struct replica_server {
    struct sp_rep *rep;
    const struct model_config *cfg;
    /* Written once by replica_server_ready before phase leaves PHASE_STARTING (a release
     * store); the I/O thread reads them only after seeing that (an acquire load). */
    struct replica_server_options opt;
    struct batcher *batcher; /* borrowed */
    struct image_pool *images; /* owned; NULL unless the model takes images */
    atomic_int phase;
    pthread_mutex_t mu; /* guards the texts below */
    char reason[256];   /* while starting */
    char cause[32];     /* while draining */
};

/* Takes ownership of buf. A reply that could not be built releases the request unanswered:
 * the REQ peer times out and resends it. */
static void send_reply(struct sp_rep_req *rq, uint8_t *buf, size_t len)
{
    if (!buf)
        LOG_ERROR("cannot build a reply message (out of memory)");
    sp_rep_reply(rq, buf, len);
}

static void send_error(struct sp_rep_req *rq, int code, const char *message)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_error(code, message, &buf, &len) != 0)
        buf = NULL;
    send_reply(rq, buf, len);
}

static void send_response(struct sp_rep_req *rq, const Corral__Response *resp)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_pack_response(resp, &buf, &len) != 0)
        buf = NULL;
    send_reply(rq, buf, len);
}

static void fill_meta(Corral__TensorMetadata *m, const struct model_io *io)
{
    corral__tensor_metadata__init(m);
    m->name = (char *)io->name;
    m->datatype = (Corral__DataType)io->dtype;
    m->n_shape = (size_t)io->ndim;
    m->shape = (int64_t *)io->dims;
}

static void answer_metadata(struct replica_server *srv, struct sp_rep_req *rq)
{
    const struct model_config *cfg = srv->cfg;
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
    const struct replica_server_options *o = &srv->opt;
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
    /* The batching settings in force, so the router can describe the model as Triton's
     * model configuration does without reading the repository itself. */
    const struct model_batching *mb = &cfg->batching;
    Corral__BatchingInfo bi = CORRAL__BATCHING_INFO__INIT;
    bi.max_batch_size = mb->max_batch_size;
    bi.n_batch_buckets = mb->n_batch_buckets;
    bi.batch_buckets = (int64_t *)mb->batch_buckets;
    bi.max_queue_delay_us = mb->max_queue_delay_us;
    bi.max_queue_size = mb->max_queue_size;
    bi.default_timeout_us = mb->default_timeout_us;
    bi.priority_levels = mb->priority_levels;
    bi.default_priority = mb->default_priority;
    bi.preserve_ordering = mb->preserve_ordering != 0;
    md.batching = &bi;
    md.device = (char *)(o->device ? o->device : "");
    Corral__ImageInfo ii = CORRAL__IMAGE_INFO__INIT;
    if (cfg->image.enabled) {
        ii.input = (char *)cfg->inputs[cfg->image.input].name;
        ii.output = (char *)cfg->outputs[cfg->image.output].name;
        ii.postprocess = cfg->image.softmax ? "softmax" : "none";
        ii.height = cfg->image.out_h;
        ii.width = cfg->image.out_w;
        md.image = &ii;
    }
    resp.kind_case = CORRAL__RESPONSE__KIND_METADATA;
    resp.metadata = &md;
    send_response(rq, &resp);
}

/* The state every health answer tells, SP or HTTP, from one reading of the phase. */
static void health_of(struct replica_server *srv, int phase, struct replica_health *h)
{
    char why[256] = "";
    h->live = 1;
    h->ready = 0;
    if (phase == PHASE_STARTING) {
        h->state = "starting";
        pthread_mutex_lock(&srv->mu);
        snprintf(h->reason, sizeof h->reason, "%s", srv->reason);
        pthread_mutex_unlock(&srv->mu);
        return;
    }
    /* An executor stuck on one batch is not live even though this socket answers. */
    batcher_health_why(srv->batcher, &h->live, &h->ready, why, sizeof why);
    if (phase == PHASE_DRAINING) {
        size_t left = batcher_outstanding(srv->batcher);
        pthread_mutex_lock(&srv->mu);
        snprintf(h->reason, sizeof h->reason, "%s: %zu requests left%s%s", srv->cause, left,
                 h->live ? "" : "; ", why);
        pthread_mutex_unlock(&srv->mu);
        h->state = "draining";
        h->ready = 0;
    } else if (h->live) {
        h->state = "ready";
        h->reason[0] = '\0';
    } else {
        h->state = "failed";
        snprintf(h->reason, sizeof h->reason, "%s", why);
    }
}

void replica_server_health(struct replica_server *srv, struct replica_health *h)
{
    health_of(srv, atomic_load_explicit(&srv->phase, memory_order_acquire), h);
}

struct batcher *replica_server_batcher(struct replica_server *srv)
{
    int phase = atomic_load_explicit(&srv->phase, memory_order_acquire);
    return phase == PHASE_STARTING ? NULL : srv->batcher;
}

const struct model_config *replica_server_config(const struct replica_server *srv)
{
    return srv->cfg;
}

static void answer_health(struct replica_server *srv, struct sp_rep_req *rq, int phase)
{
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__HealthResponse h = CORRAL__HEALTH_RESPONSE__INIT;
    struct replica_health rh;
    health_of(srv, phase, &rh);
    h.state = (char *)rh.state;
    h.live = rh.live;
    h.ready = rh.ready;
    h.reason = rh.reason;
    h.model_name = (char *)srv->cfg->name;
    h.model_version = (char *)srv->cfg->version_str;
    /* The router matches a request's version against these as well as the number. */
    char *aliases[ALIASES_MAX];
    for (size_t i = 0; i < srv->cfg->n_aliases; i++)
        aliases[i] = (char *)srv->cfg->aliases[i];
    h.n_model_aliases = srv->cfg->n_aliases;
    h.model_aliases = aliases;
    resp.kind_case = CORRAL__RESPONSE__KIND_HEALTH;
    resp.health = &h;
    send_response(rq, &resp);
}

static void answer_stats(struct replica_server *srv, struct sp_rep_req *rq)
{
    struct batcher_stats *st = malloc(sizeof *st);
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    Corral__StatsResponse sr = CORRAL__STATS_RESPONSE__INIT;
    Corral__HistogramBin bins[64], *binp[64];
    Corral__RejectionCount rej[BATCHER_REJECT_COUNT], *rejp[BATCHER_REJECT_COUNT];
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!st) {
        send_error(rq, CORRAL_ENOMEM, "out of memory");
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
    send_reply(rq, buf, len);
}

void replica_server_reply(void *owner, uint8_t *buf, size_t len)
{
    send_reply(owner, buf, len);
}

static void submit_infer(struct replica_server *srv, struct sp_rep_req *rq, Corral__Request *req)
{
    struct cerr e = {0};
    int rc = batcher_submit(srv->batcher, req, rq, &e);
    if (rc) {
        if (rc != CORRAL_EQUEUEFULL)
            LOG_DEBUG("refused infer request: %s", e.msg);
        corral__request__free_unpacked(req, NULL);
        send_error(rq, rc, e.msg);
    }
}

/* An image request comes back from the image workers: decoded, or refused. */
static void image_done(void *arg, Corral__Request *req, void *owner, int rc, const char *msg)
{
    struct replica_server *srv = arg;
    if (rc == CORRAL_OK) {
        submit_infer(srv, owner, req);
        return;
    }
    corral__request__free_unpacked(req, NULL);
    send_error(owner, rc, msg);
}

static void submit_any(struct replica_server *srv, struct sp_rep_req *rq, Corral__Request *req)
{
    struct cerr e = {0};
    if (srv->images && image_request_wanted(srv->cfg, req)) {
        if (image_pool_push(srv->images, req, rq, &e)) {
            corral__request__free_unpacked(req, NULL);
            send_error(rq, e.code, e.msg);
        }
        return;
    }
    submit_infer(srv, rq, req);
}

/* Answers a request that needs the loaded model while the replica is still starting. */
static void refuse_starting(struct replica_server *srv, struct sp_rep_req *rq)
{
    char msg[300];
    pthread_mutex_lock(&srv->mu);
    snprintf(msg, sizeof msg, "replica is starting: %s", srv->reason);
    pthread_mutex_unlock(&srv->mu);
    send_error(rq, CORRAL_EUNAVAIL, msg);
}

/* Runs on the I/O thread for every request; body is only valid during the call. */
static void on_request(void *arg, struct sp_rep_req *rq, const uint8_t *body, size_t len)
{
    struct replica_server *srv = arg;
    struct cerr e = {0};
    Corral__Request *req = NULL;
    int rc = wire_decode_request(body, len, &req, &e);
    if (rc) {
        LOG_WARN("rejected request: %s", e.msg);
        send_error(rq, rc, e.msg);
        return;
    }
    int phase = atomic_load_explicit(&srv->phase, memory_order_acquire);
    Corral__Request__KindCase kind = req->kind_case;
    if (kind != CORRAL__REQUEST__KIND_INFER)
        corral__request__free_unpacked(req, NULL);
    switch (kind) {
    case CORRAL__REQUEST__KIND_HEALTH:
        answer_health(srv, rq, phase);
        break;
    case CORRAL__REQUEST__KIND_METADATA:
        /* The config is not vouched for until the graph has been checked against it. */
        if (phase == PHASE_STARTING)
            refuse_starting(srv, rq);
        else
            answer_metadata(srv, rq);
        break;
    case CORRAL__REQUEST__KIND_INFER:
        if (phase == PHASE_STARTING) {
            corral__request__free_unpacked(req, NULL);
            refuse_starting(srv, rq);
        } else {
            submit_any(srv, rq, req);
        }
        break;
    case CORRAL__REQUEST__KIND_STATS:
        if (phase == PHASE_STARTING)
            refuse_starting(srv, rq);
        else
            answer_stats(srv, rq);
        break;
    default:
        send_error(rq, CORRAL_EINVAL, "unknown request kind");
    }
}

int replica_server_start(struct replica_server **out, const char *url,
                         const struct model_config *cfg, int contexts, struct cerr *e)
{
    int rc;
    *out = NULL;
    struct replica_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    srv->cfg = cfg;
    atomic_init(&srv->phase, PHASE_STARTING);
    pthread_mutex_init(&srv->mu, NULL);
    snprintf(srv->reason, sizeof srv->reason, "loading");
    struct sp_rep_options so = SP_REP_OPTIONS_DEFAULT;
    so.max_pending = contexts > 0 ? contexts : 1;
    so.max_message = WIRE_MAX_MESSAGE;
    if ((rc = sp_rep_start(&srv->rep, url, &so, on_request, srv, e))) {
        replica_server_stop(srv);
        return rc;
    }
    *out = srv;
    return CORRAL_OK;
}

const char *replica_server_url(const struct replica_server *srv) { return sp_rep_url(srv->rep); }

void replica_server_starting(struct replica_server *srv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&srv->mu);
    vsnprintf(srv->reason, sizeof srv->reason, fmt, ap);
    pthread_mutex_unlock(&srv->mu);
    va_end(ap);
}

void replica_server_ready(struct replica_server *srv, const struct replica_server_options *opt)
{
    srv->opt = *opt;
    srv->batcher = opt->batcher;
    atomic_store_explicit(&srv->phase, PHASE_READY, memory_order_release);
}

int replica_server_images(struct replica_server *srv, const struct image_pool_options *opt,
                          struct cerr *e)
{
    return image_pool_start(&srv->images, srv->cfg, opt, image_done, srv, e);
}

void replica_server_drain(struct replica_server *srv, const char *cause)
{
    pthread_mutex_lock(&srv->mu);
    snprintf(srv->cause, sizeof srv->cause, "%s", cause);
    pthread_mutex_unlock(&srv->mu);
    /* Draining is only ever entered from ready: the batcher is there. */
    if (srv->batcher)
        atomic_store_explicit(&srv->phase, PHASE_DRAINING, memory_order_release);
}

void replica_server_stop(struct replica_server *srv)
{
    if (!srv)
        return;
    /* The batcher finishes the batches it is running and answers everything still queued
     * (EUNAVAIL) while the connections can still carry the replies; requests that arrive
     * meanwhile are refused by it and answered on the I/O thread. */
    image_pool_stop(srv->images);
    if (srv->batcher)
        batcher_stop(srv->batcher);
    sp_rep_stop(srv->rep);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}
