/* The replica table at run time: replicas added, marked draining, removed, released. */
#include "upstream_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

const struct sp_req_events up_conn_events = {
    .up = up_on_conn_up, .down = up_on_conn_down, .reply = up_on_conn_reply};

static int check_url(const char *url, struct cerr *e)
{
    if (strncmp(url, "tcp://", 6) != 0 && strncmp(url, "tcp4://", 7) != 0 &&
        strncmp(url, "tcp6://", 7) != 0)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is not supported: expected "
                        "tcp://HOST:PORT, e.g. tcp://127.0.0.1:9101", url);
    return CORRAL_OK;
}

/* The replica at `url` that is still in the table (not removed); NULL if none. */
static struct up_replica *find_replica(const struct upstream *u, const char *url)
{
    for (size_t i = 0; i < u->n_replicas; i++)
        if (!u->replicas[i]->removed && strcmp(u->replicas[i]->url, url) == 0)
            return u->replicas[i];
    return NULL;
}

/* Adds a replica of `model` (created when new); dials it when the upstream runs. */
static int replica_add(struct upstream *u, const char *model, const char *version,
                       const char *url, struct cerr *e)
{
    int rc = check_url(url, e);
    if (rc)
        return rc;
    if (find_replica(u, url))
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' is given more than once", url);
    struct up_model *m = up_find_model(u, model);
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
    list_init(&r->calls);
    snprintf(r->want_version, sizeof r->want_version, "%s", version ? version : "");
    snprintf(r->why, sizeof r->why, "no health answer yet");
    if (u->started && !u->closing) {
        if ((rc = sp_req_open(&r->conn, u->loop, r->url, WIRE_MAX_MESSAGE, &up_conn_events, r, e))) {
            free(r->url);
            free(r);
            return rc;
        }
        u->handles_open++;
        LOG_INFO("replica %s of model '%s' added to the table", r->url, m->name);
    }
    u->replicas[u->n_replicas++] = r;
    m->replicas[m->n++] = r;
    return CORRAL_OK;
}

int upstream_add_replica(struct upstream *u, const char *model, const char *url, struct cerr *e)
{
    return replica_add(u, model, NULL, url, e);
}

/* Frees the removed replicas nothing refers to any more: no call in flight, no gather. */
void up_reap_removed(struct upstream *u)
{
    for (size_t i = 0; i < u->n_replicas;) {
        struct up_replica *r = u->replicas[i];
        if (!r->removed || !list_empty(&r->calls) || r->refs) {
            i++;
            continue;
        }
        struct up_model *m = r->model;
        for (size_t j = 0; j < m->n; j++)
            if (m->replicas[j] == r) {
                memmove(&m->replicas[j], &m->replicas[j + 1], (m->n - j - 1) * sizeof *m->replicas);
                m->n--;
                break;
            }
        memmove(&u->replicas[i], &u->replicas[i + 1], (u->n_replicas - i - 1) * sizeof *u->replicas);
        u->n_replicas--;
        LOG_DEBUG("replica %s of model '%s' released", r->url, m->name);
        up_emit(u, UPSTREAM_EV_GONE, r);
        if (r->meta)
            corral__response__free_unpacked(r->meta, NULL);
        /* The connection's close callback frees the replica itself. */
        r->reaped = 1;
        if (r->conn) {
            sp_req_close(r->conn, up_on_conn_closed);
            r->conn = NULL;
        } else {
            free(r->url);
            free(r);
        }
    }
}

int upstream_sync(struct upstream *u, const struct upstream_member *t, size_t n, struct cerr *e)
{
    /* Added ones first, so a failure leaves the table's removals undone rather than half. */
    for (size_t i = 0; i < n; i++) {
        struct up_replica *r = find_replica(u, t[i].url);
        if (r && strcmp(r->model->name, t[i].model) != 0) {
            /* The same address now serves another model: a replica of its own. */
            r->removed = 1;
            r = NULL;
        }
        if (!r) {
            int rc = replica_add(u, t[i].model, t[i].version, t[i].url, e);
            if (rc)
                return rc;
            r = find_replica(u, t[i].url);
        }
        if (r->draining != t[i].draining)
            LOG_INFO("replica %s of model '%s' %s", r->url, r->model->name,
                     t[i].draining ? "marked draining: no new requests" : "no longer draining");
        r->draining = t[i].draining;
        if (strcmp(r->want_version, t[i].version) != 0) {
            snprintf(r->want_version, sizeof r->want_version, "%s", t[i].version);
            /* Readiness is decided again by the next health answer, against the new name. */
            if (r->ready)
                up_set_not_ready(r, "the replica table names another version", 0);
        }
    }
    for (size_t i = 0; i < u->n_replicas; i++) {
        struct up_replica *r = u->replicas[i];
        int keep = 0;
        for (size_t j = 0; j < n && !keep; j++)
            keep = strcmp(r->url, t[j].url) == 0 && strcmp(r->model->name, t[j].model) == 0;
        if (!keep && !r->removed) {
            r->removed = 1;
            LOG_INFO("replica %s of model '%s' removed from the table (%u request%s in flight "
                     "finish first)", r->url, r->model->name, r->outstanding,
                     r->outstanding == 1 ? "" : "s");
        }
    }
    up_reap_removed(u);
    return CORRAL_OK;
}

/* *out: the split the table names for `m`, NULL for none; an error when it does not fit. */
static int canary_of(const struct up_model *m, const struct upstream_canary *t, size_t n,
                     const struct upstream_canary **out, struct cerr *e)
{
    *out = NULL;
    for (size_t i = 0; i < n && !*out; i++)
        if (strcmp(t[i].model, m->name) == 0)
            *out = &t[i];
    const struct upstream_canary *c = *out;
    if (c && (!c->version[0] || strlen(c->version) >= sizeof m->canary_version ||
              c->percent < 0 || c->percent > 100))
        return cerr_set(e, CORRAL_EINVAL, "canary split of model '%s' (version '%s', %d%%) is "
                        "not valid: expected a version of at most %zu bytes and 0 to 100 percent",
                        m->name, c->version, c->percent, sizeof m->canary_version - 1);
    return CORRAL_OK;
}

int upstream_sync_canaries(struct upstream *u, const struct upstream_canary *t, size_t n,
                           struct cerr *e)
{
    const struct upstream_canary *c;
    int rc;
    /* Checked first, so a refusal changes no model's split. */
    for (size_t i = 0; i < u->n_models; i++)
        if ((rc = canary_of(&u->models[i], t, n, &c, e)))
            return rc;
    for (size_t i = 0; i < u->n_models; i++) {
        struct up_model *m = &u->models[i];
        canary_of(m, t, n, &c, NULL);
        const char *v = c ? c->version : "";
        int pct = c ? c->percent : 0;
        if (strcmp(m->canary_version, v) == 0 && m->canary_percent == pct)
            continue;
        if (c)
            LOG_INFO("model '%s': %d%% of the requests that name no version go to version %s",
                     m->name, pct, v);
        else
            LOG_INFO("model '%s': canary split cleared", m->name);
        snprintf(m->canary_version, sizeof m->canary_version, "%s", v);
        m->canary_percent = pct;
    }
    return CORRAL_OK;
}

int upstream_model_canary(const struct upstream *u, const char *model, const char **version)
{
    const struct up_model *m = up_find_model(u, model);
    if (!m || !m->canary_version[0])
        return -1;
    *version = m->canary_version;
    return m->canary_percent;
}
