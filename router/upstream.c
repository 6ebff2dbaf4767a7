/* Calls, connections and lifecycle of the upstream; see upstream_internal.h for the rest. */
#include "upstream_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static void on_stats_done(struct up_replica *r, struct up_call *c);

uint64_t up_rng_next(struct upstream *u)
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

void up_call_free(struct up_call *c)
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
    list_push_back(&r->calls, &c->link);
}

/* A call that is on no list (never launched, or already taken off) is left as it is. */
static void replica_unlink(struct up_call *c)
{
    list_remove(&c->link);
}

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
        up_on_health_done(r, c);
    else if (c->kind == CALL_METADATA)
        up_on_metadata_done(r, c);
    else if (c->kind == CALL_STATS)
        on_stats_done(r, c);
    else
        up_on_infer_done(r, c, &requeued);
    c->reply = NULL;
    c->reply_len = 0;
    if (!requeued)
        up_call_free(c);
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
int up_call_launch(struct up_call *c, struct up_replica *r)
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
    if (c->kind == CALL_INFER) {
        r->outstanding++;
        up_emit(u, UPSTREAM_EV_SENT, r);
    }
    u->inflight++;
    uint64_t now = uv_now(u->loop);
    uv_timer_start(&c->timer, on_call_timeout, c->deadline > now ? c->deadline - now : 1, 0);
    return UP_OK;
}

struct up_call *up_call_new(struct upstream *u, enum call_kind kind, unsigned timeout_ms)
{
    struct up_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->u = u;
    c->kind = kind;
    c->timeout_ms = timeout_ms;
    list_node_init(&c->link);
    c->deadline = uv_now(u->loop) + timeout_ms;
    if (kind == CALL_INFER)
        u->infer_calls++;
    uv_timer_init(u->loop, &c->timer);
    c->timer.data = c;
    return c;
}

int up_pack_request(struct up_call *c, const Corral__Request *req)
{
    return wire_pack_request(req, &c->orig, &c->orig_len);
}

/*
 * Completes every call on `calls` with rv. The list is first moved aside, so that a
 * call its handler retries on another replica (or on the same one) is not met again.
 */
static void complete_all(struct list_node *calls, int rv, int replica_failed)
{
    struct list_node ended;
    list_take(&ended, calls);
    struct up_call *c;
    while ((c = list_first_entry(&ended, struct up_call, link))) {
        list_remove(&c->link);
        if (replica_failed)
            c->replica_failed = 1;
        complete(c, rv);
    }
}

/* Ends the calls in flight on r so they are retried elsewhere (or fail). */
void up_abort_calls(struct up_replica *r)
{
    complete_all(&r->calls, UP_ELOST, 1);
}

const char *up_reason(int rv)
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

int up_connected(const struct up_replica *r)
{
    return r->conn && sp_req_connected(r->conn);
}

/* Healthy by its own word and ours, and in the table for new work. */
int up_takes_traffic(const struct up_replica *r)
{
    return r->ready && !r->ejected && !r->draining && !r->removed;
}

int up_model_has_other(const struct up_replica *r)
{
    const struct up_model *m = r->model;
    for (size_t i = 0; i < m->n; i++)
        if (m->replicas[i] != r && up_takes_traffic(m->replicas[i]))
            return 1;
    return 0;
}

/* ---- connection events (loop thread) ---- */

void up_on_conn_up(void *arg)
{
    struct up_replica *r = arg;
    LOG_DEBUG("connected to replica %s", r->url);
    if (!r->health_inflight && !r->u->closing)
        up_probe(r, CALL_HEALTH);
}

void up_on_conn_down(void *arg, const char *why)
{
    struct up_replica *r = arg;
    char w[256];
    snprintf(w, sizeof w, "connection lost (%.200s)", why);
    up_set_not_ready(r, w, 0);
    /* Calls waiting on the dead connection would only time out; end them now and let the
     * retry logic decide. */
    if (!list_empty(&r->calls))
        up_abort_calls(r);
}

void up_on_conn_reply(void *arg, uint32_t id, const uint8_t *body, size_t len)
{
    struct up_replica *r = arg;
    struct up_call *c, *call = NULL;
    list_for_each_entry(c, &r->calls, link) {
        if (c->id == id) {
            call = c;
            break;
        }
    }
    if (!call) {
        LOG_DEBUG("replica %s answered request %u after it ended; dropped", r->url, id);
        return;
    }
    replica_unlink(call);
    call->reply = body;
    call->reply_len = len;
    complete(call, UP_OK);
}

int up_version_matches(const struct up_replica *r, const char *version)
{
    if (!version || !version[0] || strcmp(r->version, version) == 0)
        return 1;
    for (unsigned i = 0; i < r->n_aliases; i++)
        if (strcmp(r->aliases[i], version) == 0)
            return 1;
    return 0;
}

struct up_model *up_find_model(const struct upstream *u, const char *name)
{
    for (size_t i = 0; i < u->n_models; i++)
        if (strcmp(u->models[i].name, name) == 0)
            return &u->models[i];
    return NULL;
}

void up_emit(struct upstream *u, enum upstream_event ev, const struct up_replica *r)
{
    if (u->cfg.event)
        u->cfg.event(u->cfg.event_arg, ev, r->model->name, r->url);
}

static void gather_finish(struct gather *g)
{
    g->cb(g->arg, g->items, g->n);
    for (size_t i = 0; i < g->n; i++) {
        if (g->resps[i])
            corral__response__free_unpacked(g->resps[i], NULL);
        if (g->reps[i])
            g->reps[i]->refs--;
    }
    free(g->reps);
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

int upstream_start(struct upstream *u, struct cerr *e)
{
    int rc;
    uv_timer_init(u->loop, &u->timer);
    u->timer.data = u;
    uv_timer_init(u->loop, &u->defer);
    u->defer.data = u;
    u->handles_open = 2;
    u->started = 1;
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if ((rc = sp_req_open(&r->conn, u->loop, r->url, WIRE_MAX_MESSAGE, &up_conn_events, r, e)))
            return rc;
        u->handles_open++;
        LOG_DEBUG("replica %s for model '%s' configured", r->url, r->model->name);
    }
    /* The first health probe goes out as each connection comes up. */
    uv_timer_start(&u->timer, up_on_health_tick, u->cfg.health_interval_ms,
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

void up_on_conn_closed(void *arg)
{
    struct up_replica *r = arg;
    struct upstream *u = r->u;
    if (r->reaped) {
        /* A reaped replica is in no array any more: upstream_free will not see it. */
        free(r->url);
        free(r);
    }
    release_one(u);
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
    for (size_t i = 0; i < u->n_replicas; i++)
        complete_all(&u->replicas[i]->calls, UP_ECLOSED, 0);
    /* handles_open counts the two timers and every connection upstream_start opened. */
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        if (r->conn) {
            sp_req_close(r->conn, up_on_conn_closed);
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
    return up_find_model(u, model) != NULL;
}

int upstream_model_in_table(const struct upstream *u, const char *model)
{
    const struct up_model *m = up_find_model(u, model);
    int n = 0;
    for (size_t i = 0; m && i < m->n; i++)
        n += !m->replicas[i]->removed;
    return n;
}

int upstream_model_ready(const struct upstream *u, const char *model, const char *version)
{
    const struct up_model *m = up_find_model(u, model);
    int n = 0;
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (up_takes_traffic(r) && up_version_matches(r, version))
            n++;
    }
    return n;
}

const Corral__MetadataResponse *upstream_model_metadata(const struct upstream *u,
                                                        const char *model, const char *version)
{
    const struct up_model *m = up_find_model(u, model);
    const Corral__MetadataResponse *any = NULL;
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (!r->meta || !up_version_matches(r, version))
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
    const struct up_model *m = up_find_model(u, model);
    int found = 0;
    size_t off = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (!r->answered || !r->version[0])
            continue;
        if (version && version[0] && up_version_matches(r, version))
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

const char *upstream_version_resolve(const struct upstream *u, const char *model,
                                     const char *version)
{
    const struct up_model *m = up_find_model(u, model);
    const char *any = version;
    for (size_t i = 0; m && version && version[0] && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        if (!r->answered || !r->version[0] || !up_version_matches(r, version))
            continue;
        if (up_takes_traffic(r))
            return r->version;
        if (any == version)
            any = r->version;
    }
    return any;
}

void upstream_model_aliases(const struct upstream *u, const char *model, char *buf, size_t len)
{
    const struct up_model *m = up_find_model(u, model);
    size_t off = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; m && i < m->n; i++) {
        const struct up_replica *r = m->replicas[i];
        for (unsigned k = 0; r->answered && k < r->n_aliases && off < len; k++) {
            /* Listed once, as the first replica that reports it says. */
            int dup = 0;
            for (size_t j = 0; j < i && !dup; j++)
                for (unsigned q = 0; q < m->replicas[j]->n_aliases; q++)
                    dup |= m->replicas[j]->answered &&
                           strcmp(m->replicas[j]->aliases[q], r->aliases[k]) == 0;
            if (dup)
                continue;
            int w = snprintf(buf + off, len - off, "%s%s=%s", off ? ", " : "", r->aliases[k],
                             r->version);
            if (w > 0)
                off += (size_t)w;
        }
    }
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
        if ((!model || strcmp(r->model->name, model) == 0) && up_version_matches(r, version))
            n++;
    }
    if (g) {
        g->items = calloc(n ? n : 1, sizeof *g->items);
        g->resps = calloc(n ? n : 1, sizeof *g->resps);
        g->errs = calloc(n ? n : 1, sizeof *g->errs);
        g->reps = calloc(n ? n : 1, sizeof *g->reps);
    }
    if (!g || !g->items || !g->resps || !g->errs || !g->reps) {
        if (g) {
            free(g->reps);
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
        if (!((!model || strcmp(r->model->name, model) == 0) && up_version_matches(r, version)))
            continue;
        struct upstream_stats *it = &g->items[k];
        g->reps[k] = r;
        r->refs++;
        it->model = r->model->name;
        it->url = r->url;
        it->version = r->version;
        if (!r->answered || !up_connected(r) || u->closing) {
            snprintf(g->errs[k], sizeof g->errs[k], "not asked: %.180s",
                     r->why[0] ? r->why : "not connected");
            it->error = g->errs[k];
            k++;
            continue;
        }
        struct up_call *c = up_call_new(u, CALL_STATS, timeout_ms);
        if (!c || up_pack_request(c, &req) != 0) {
            up_call_free(c);
            snprintf(g->errs[k], sizeof g->errs[k], "out of memory asking for statistics");
            it->error = g->errs[k];
            k++;
            continue;
        }
        c->g = g;
        c->g_idx = k;
        g->pending++;
        if (up_call_launch(c, r) != UP_OK) {
            g->pending--;
            up_call_free(c);
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

size_t upstream_unanswered(const struct upstream *u)
{
    size_t n = 0;
    for (size_t i = 0; i < u->n_replicas; i++)
        n += !u->replicas[i]->answered && !u->replicas[i]->removed;
    return n;
}

void upstream_replica_info(const struct upstream *u, size_t i, struct upstream_replica_info *out)
{
    up_replica_info(u->replicas[i], out);
}

const Corral__MetadataResponse *upstream_replica_metadata(const struct upstream *u, size_t i)
{
    const struct up_replica *r = u->replicas[i];
    return r->meta ? r->meta->metadata : NULL;
}

void up_replica_info(const struct up_replica *r, struct upstream_replica_info *out)
{
    out->model = r->model->name;
    out->url = r->url;
    out->version = r->version;
    out->state = r->removed    ? "removed"
                 : r->draining ? "draining"
                 : r->ejected  ? "ejected"
                 : r->ready    ? "ready"
                 : r->answered ? "not_ready"
                               : "connecting";
    out->why = up_takes_traffic(r) ? ""
               : r->removed     ? "removed from the replica table; finishing its requests"
               : r->draining    ? "marked draining in the replica table"
                                : r->why;
    out->table_version = r->want_version;
    out->outstanding = r->outstanding;
    out->fail_streak = r->fail_streak;
}
