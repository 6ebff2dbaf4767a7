/* Health and metadata probes, readiness as the replicas report it, passive ejection. */
#include "upstream_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* `unhealthy`: the replica cannot be trusted to answer what it holds (lost, hung). */
void up_set_not_ready(struct up_replica *r, const char *why, int unhealthy)
{
    int was = r->ready && !r->ejected;
    if (r->ready)
        LOG_WARN("replica %s of model '%s' is not ready: %s", r->url, r->model->name, why);
    else if (strcmp(r->why, why) != 0)
        LOG_DEBUG("replica %s of model '%s' still not ready: %s", r->url, r->model->name, why);
    r->ready = 0;
    /* Unhealthy but still connected after being ready: late or stalled, perhaps only
     * paused. Starting, draining or another version is no suspicion: it is an answer. */
    r->suspect = unhealthy && up_connected(r) && (was || r->suspect);
    snprintf(r->why, sizeof r->why, "%s", why);
    /* What it holds is cancelled (and retried elsewhere) only where there is an
     * elsewhere; the last replica of a model keeps its requests to their deadlines. */
    if (unhealthy && was && r->outstanding && up_model_has_other(r))
        up_abort_calls(r);
}

void up_probe(struct up_replica *r, enum call_kind kind)
{
    struct upstream *u = r->u;
    if (u->closing)
        return;
    if (!up_connected(r)) {
        char why[256];
        snprintf(why, sizeof why, "not connected (is a replica listening at %.150s?)", r->url);
        if (kind == CALL_HEALTH)
            up_set_not_ready(r, why, 1);
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
    struct up_call *c = up_call_new(u, kind, u->cfg.health_timeout_ms);
    if (!c)
        return;
    if (up_pack_request(c, &req) != 0 || up_call_launch(c, r) != UP_OK) {
        up_call_free(c);
        return;
    }
    if (kind == CALL_HEALTH)
        r->health_inflight = 1;
    else
        r->meta_inflight = 1;
}

void up_on_health_done(struct up_replica *r, struct up_call *c)
{
    r->health_inflight = 0;
    if (r->u->closing)
        return;
    char why[256];
    if (c->rv && !up_connected(r)) {
        snprintf(why, sizeof why, "not connected (is a replica listening at %.150s?)", r->url);
        up_set_not_ready(r, why, 1);
        return;
    }
    if (c->rv) {
        snprintf(why, sizeof why, "health check failed: %s", up_reason(c->rv));
        up_set_not_ready(r, why, 1);
        return;
    }
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (wire_decode_response(c->reply, c->reply_len, &resp, &e) != 0) {
        snprintf(why, sizeof why, "invalid health answer: %.200s", e.msg);
        up_set_not_ready(r, why, 1);
        return;
    }
    if (resp->kind_case != CORRAL__RESPONSE__KIND_HEALTH) {
        snprintf(why, sizeof why, "health request answered with message kind %d",
                 (int)resp->kind_case);
        up_set_not_ready(r, why, 1);
        goto done;
    }
    const Corral__HealthResponse *h = resp->health;
    r->answered = 1;
    snprintf(r->version, sizeof r->version, "%s", h->model_version ? h->model_version : "");
    /* A name that would not fit is dropped, never cut: a cut name could match another. */
    r->n_aliases = 0;
    for (size_t i = 0; i < h->n_model_aliases && r->n_aliases < UP_MAX_ALIASES; i++) {
        const char *a = h->model_aliases[i];
        if (a && a[0] && strlen(a) < sizeof r->aliases[0])
            memcpy(r->aliases[r->n_aliases++], a, strlen(a) + 1);
    }
    if (h->model_name && h->model_name[0] && strcmp(h->model_name, r->model->name) != 0) {
        snprintf(why, sizeof why, "it serves model '%.80s', but was configured as '%.80s'",
                 h->model_name, r->model->name);
        up_set_not_ready(r, why, 0);
        goto done;
    }
    if (r->want_version[0] && strcmp(r->version, r->want_version) != 0) {
        snprintf(why, sizeof why, "it serves version '%.60s', but the replica table names "
                 "version '%.60s'", r->version, r->want_version);
        up_set_not_ready(r, why, 0);
        goto done;
    }
    const char *st = h->state && h->state[0] ? h->state : NULL;
    const char *reason = h->reason && h->reason[0] ? h->reason : NULL;
    if (!h->live) {
        snprintf(why, sizeof why, "replica reports not live (%.200s)",
                 reason ? reason : "an execution is stuck");
        up_set_not_ready(r, why, 1);
        goto done;
    }
    if (!h->ready) {
        /* Starting or draining: what it holds still gets answered, so nothing is cancelled. */
        snprintf(why, sizeof why, "replica reports %.20s%s%.200s", st ? st : "not ready",
                 reason ? ": " : "", reason ? reason : "");
        up_set_not_ready(r, why, 0);
        goto done;
    }
    if (!r->ready || r->ejected)
        LOG_INFO("replica %s of model '%s' is ready (version %s)%s", r->url, r->model->name,
                 r->version[0] ? r->version : "?", r->ejected ? ", re-admitted" : "");
    r->ready = 1;
    r->suspect = 0;
    r->ejected = 0;
    r->fail_streak = 0;
    r->why[0] = '\0';
    if (!r->meta && !r->meta_inflight)
        up_probe(r, CALL_METADATA);
done:
    corral__response__free_unpacked(resp, NULL);
}

void up_on_metadata_done(struct up_replica *r, struct up_call *c)
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

/* Passive health: counts a transport failure and ejects after enough in a row. */
void up_note_failure(struct up_replica *r, const char *what)
{
    struct upstream *u = r->u;
    r->fail_streak++;
    if (!r->ejected && r->fail_streak >= u->cfg.eject_after) {
        r->ejected = 1;
        snprintf(r->why, sizeof r->why, "ejected after %u failed requests in a row (last: %.150s); "
                 "re-admitted when a health probe succeeds", r->fail_streak, what);
        LOG_WARN("replica %s of model '%s' %s", r->url, r->model->name, r->why);
        up_emit(u, UPSTREAM_EV_EJECT, r);
    }
}

void up_on_health_tick(uv_timer_t *t)
{
    struct upstream *u = t->data;
    up_reap_removed(u);
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (r->removed)
            continue;
        if (!r->health_inflight)
            up_probe(r, CALL_HEALTH);
        else if (r->ready && !r->meta && !r->meta_inflight)
            up_probe(r, CALL_METADATA);
    }
}
