/* The choice of replica for each request (canary split, power of two choices) and the one
 * retry. */
#include "upstream_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Which replicas a request may go to, besides being eligible at all. */
struct want {
    const char *version;               /* the version the request names, NULL or "" for any */
    const char *side;                  /* a canary version, NULL for no split */
    int on_side;                       /* 1: replicas of `side` only; 0: all but those */
    const struct up_replica *exclude;  /* the replica a retry leaves */
};

static int wanted(const struct up_replica *r, const struct want *w)
{
    return r != w->exclude && up_version_matches(r, w->version) &&
           (!w->side || (strcmp(r->version, w->side) == 0) == w->on_side);
}

/*
 * Power of two choices over the eligible replicas, drawn in one pass by
 * reservoir sampling (each pair equally likely); *capped tells whether some
 * replica was skipped only for its in-flight cap.
 */
static struct up_replica *pick(struct upstream *u, struct up_model *m, const struct want *w,
                               int *capped)
{
    struct up_replica *a = NULL, *b = NULL;
    size_t seen = 0;
    unsigned cap = u->cfg.max_inflight;
    *capped = 0;
    for (size_t i = 0; i < m->n; i++) {
        struct up_replica *r = m->replicas[i];
        /* A connection seen closing is skipped before its replica is marked not ready. */
        if (!up_takes_traffic(r) || !wanted(r, w) || !up_connected(r))
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
            uint64_t j = up_rng_next(u) % seen;
            if (j == 0)
                a = r;
            else if (j == 1)
                b = r;
        }
    }
    if (!b)
        return a;
    if (a->outstanding == b->outstanding)
        return (up_rng_next(u) >> 33) & 1 ? a : b;
    return a->outstanding < b->outstanding ? a : b;
}

/*
 * When no replica of the model is eligible (none ready, or none at the cap): a replica
 * that only answered a health probe late, or said its executor stalls, while its
 * connection stays up (up_replica.suspect) is tried rather than answering 503. A pause of
 * a loaded machine looks like that, and the request then waits for it instead of failing.
 */
static struct up_replica *pick_suspect(struct up_model *m, const struct want *w, int capped)
{
    struct up_replica *a = NULL;
    for (size_t i = 0; i < m->n && !capped; i++) {
        struct up_replica *r = m->replicas[i];
        if (r->suspect && !r->ready && !r->ejected && !r->draining && !r->removed &&
            wanted(r, w) && up_connected(r) && (!a || r->outstanding < a->outstanding))
            a = r;
    }
    if (a)
        LOG_DEBUG("model '%s' has no ready replica: trying %s, which answered late", m->name,
                  a->url);
    return a;
}

/*
 * The first choice for a request: a request that names no version first draws its side of
 * the model's canary split, then falls back to any eligible replica when that side has none,
 * so the split never fails a request.
 */
static struct up_replica *pick_first(struct upstream *u, struct up_model *m, const char *version,
                                     int *capped)
{
    struct want w = {.version = version};
    if ((!version || !version[0]) && m->canary_version[0]) {
        w.side = m->canary_version;
        /* The high bits of xorshift64* are its best. */
        w.on_side = (int)((up_rng_next(u) >> 32) % 100) < m->canary_percent;
        struct up_replica *r = pick(u, m, &w, capped);
        if (r)
            return r;
        w.side = NULL;
    }
    struct up_replica *r = pick(u, m, &w, capped);
    return r ? r : pick_suspect(m, &w, *capped);
}

static void finish(struct up_call *c, struct upstream_done *d)
{
    d->replica = c->r ? c->r->url : "";
    d->version = c->r ? c->r->version : "";
    d->attempts = c->attempts;
    d->upstream_ns = uv_hrtime() - c->t_launch;
    c->cb(c->arg, d);
}

/*
 * Sends c once more, to another replica than r, when it has not been retried yet and its
 * deadline allows. Only for requests that never ran: lost before an answer came, or
 * refused by a draining replica. Returns 1 when the call is on its way again.
 */
static int retry_elsewhere(struct up_replica *r, struct up_call *c, const char *why)
{
    struct upstream *u = c->u;
    int capped = 0;
    struct want w = {.version = c->version, .exclude = r};
    struct up_replica *alt = NULL;
    if (c->attempts < 2 && !(alt = pick(u, r->model, &w, &capped)))
        alt = pick_suspect(r->model, &w, capped);
    if (!alt || uv_now(u->loop) >= c->deadline)
        return 0;
    LOG_WARN("retrying a request for model '%s' on %s after %s failed: %s", r->model->name,
             alt->url, r->url, why);
    up_emit(u, UPSTREAM_EV_RETRY, r);
    return up_call_launch(c, alt) == UP_OK;
}

/*
 * Whether a replica's answer is its refusal while draining. An Error is field 2 of the
 * Response, so its packed form starts with that field's tag (0x12); answers with results
 * start otherwise and are passed on without being decoded here.
 */
static int is_draining_refusal(const uint8_t *reply, size_t len)
{
    if (len == 0 || reply[0] != 0x12)
        return 0;
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (wire_decode_response(reply, len, &resp, &e) != 0)
        return 0;
    int yes = resp->kind_case == CORRAL__RESPONSE__KIND_ERROR &&
              resp->error->code == CORRAL_EDRAINING;
    corral__response__free_unpacked(resp, NULL);
    return yes;
}

void up_on_infer_done(struct up_replica *r, struct up_call *c, int *requeued)
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
            up_note_failure(r, w);
        }
        if (retry_elsewhere(r, c, why)) {
            *requeued = 1;
            return;
        }
        cerr_set(&e, CORRAL_EUNAVAIL, "replica %s of model '%s' failed (%s) and no other ready "
                 "replica could take the request in time", r->url, r->model->name, why);
        goto fail;
    }
    r->fail_streak = 0;
    if (is_draining_refusal(c->reply, c->reply_len)) {
        /* Refused before it ran, so it may go to another replica, like a lost request. The
         * replica keeps answering what it holds: nothing of it is cancelled. */
        up_set_not_ready(r, "replica reports draining (it refused a request)", 0);
        if (retry_elsewhere(r, c, "draining")) {
            *requeued = 1;
            return;
        }
        cerr_set(&e, CORRAL_EDRAINING, "replica %s of model '%s' is draining and no other ready "
                 "replica could take the request in time", r->url, r->model->name);
        goto fail;
    }
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
    const struct up_replica *first = NULL;
    for (size_t i = 0; i < m->n && !first; i++)
        if (!m->replicas[i]->removed)
            first = m->replicas[i];
    if (!first)
        return cerr_set(e, CORRAL_EUNAVAIL, "model '%s' has no replica in the replica table",
                        m->name);
    struct upstream_replica_info ri;
    up_replica_info(first, &ri);
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++)
        n += !m->replicas[i]->removed;
    return cerr_set(e, CORRAL_EUNAVAIL, "model '%s' has no ready replica (%zu in the table; "
                    "%s: %s)", m->name, n, first->url, ri.why);
}

/* Takes ownership of `msg` (a packed Request of `len` bytes, malloc'd), also on error. */
static int start_infer(struct upstream *u, const char *model, const char *version, uint8_t *msg,
                       size_t len, int raw, unsigned timeout_ms, upstream_cb cb, void *arg,
                       struct up_call **handle, struct cerr *e)
{
    struct up_model *m = up_find_model(u, model);
    struct up_call *c = NULL;
    int capped = 0, rc;
    if (!m) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "unknown model '%s'", model);
        goto fail;
    }
    struct up_replica *r = pick_first(u, m, version, &capped);
    if (!r) {
        rc = no_replica(u, m, version, capped, e);
        goto fail;
    }
    c = up_call_new(u, CALL_INFER, timeout_ms);
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
    int rv = up_call_launch(c, r);
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
    up_call_free(c);
    return rc;
}

int upstream_infer(struct upstream *u, const Corral__Request *req, unsigned timeout_ms,
                   upstream_cb cb, void *arg, struct up_call **handle, struct cerr *e)
{
    const Corral__InferRequest *ir = req->infer;
    if (!up_find_model(u, ir->model_name))
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
