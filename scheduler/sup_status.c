/* The admin API's status document: the supervisor's view of every process. */
#include "supervisor_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* ---- the admin API's status -------------------------------------------------------- */

const char *sup_state_name(const struct sup *s, const struct child *c)
{
    if (c->state == C_FAILED)
        return "failed";
    if (s->stopping || c->unhealthy || c->term_sent || c->retiring)
        return "stopping";
    switch (c->state) {
    case C_READY:
        /* A replica is ready once it takes traffic: in the router's table. */
        return c->is_router || c->in_table ? "ready" : c->hold ? "soaking" : "starting";
    case C_STARTING: return c->starts > 1 ? "restarting" : "starting";
    case C_DOWN: return c->starts ? "restarting" : "starting";
    default: return "failed";
    }
}

/* A JSON string of text that may come from a log (any bytes): as is when it is valid
 * UTF-8, else with every byte outside ASCII replaced by '?'. */
json_t *sup_jtext(const char *t)
{
    json_t *j = json_string(t);
    if (j)
        return j;
    char buf[1400];
    size_t i = 0;
    for (; t[i] && i < sizeof buf - 1; i++)
        buf[i] = (unsigned char)t[i] < 0x80 ? t[i] : '?';
    buf[i] = '\0';
    return json_string(buf);
}

static void put_common(json_t *o, const struct sup *s, const struct child *c, long now)
{
    json_object_set_new(o, "state", json_string(sup_state_name(s, c)));
    json_object_set_new(o, "pid", c->pid ? json_integer(c->pid) : json_null());
    json_object_set_new(o, "uptime_s", c->pid ? json_real((double)(now - c->started_ms) / 1000.0)
                                              : json_null());
    json_object_set_new(o, "restarts", json_integer(c->starts > 1 ? c->starts - 1 : 0));
    json_object_set_new(o, "crashes_in_a_row", json_integer(c->crashes));
    json_object_set_new(o, "last_error", c->last_error[0] ? sup_jtext(c->last_error)
                                                          : json_null());
}

/* The snapshot GET /v1/status answers (admin.h; its fields: docs/operations.md,
 * "Running a cluster"); a new reference, NULL when out of memory. */
json_t *sup_status(void *arg)
{
    struct sup *s = arg;
    const struct sched_config *cfg = s->cfg;
    long now = sup_now_ms();
    char url[SCHED_HOST_MAX + 64];
    json_t *root = json_object(), *router = json_object(), *reps = json_array(),
           *models = json_array();
    if (!root || !router || !reps || !models) {
        json_decref(root);
        json_decref(router);
        json_decref(reps);
        json_decref(models);
        return NULL;
    }
    json_object_set_new(root, "config", json_string(cfg->path));
    json_object_set_new(root, "state_dir", json_string(s->o->state_dir));
    json_object_set_new(root, "stopping", json_boolean(s->stopping));

    put_common(router, s, &s->router, now);
    if (s->http_port) {
        char a[SCHED_HOST_MAX + 16];
        sup_fmt_addr(a, sizeof a, cfg->router.listen.host, s->http_port);
        snprintf(url, sizeof url, "http://%s", a);
        json_object_set_new(router, "http", json_string(url));
    } else {
        json_object_set_new(router, "http", json_null());
    }
    if (s->ctl_port) {
        char a[SCHED_HOST_MAX + 16];
        sup_fmt_addr(a, sizeof a, s->ctl_host, s->ctl_port);
        snprintf(url, sizeof url, "http://%s", a);
        json_object_set_new(router, "control", json_string(url));
    } else {
        json_object_set_new(router, "control", json_null());
    }
    if (cfg->router.rpc_off) {
        json_object_set_new(router, "rpc", json_string("off"));
    } else {
        char a[SCHED_HOST_MAX + 16];
        sup_fmt_addr(a, sizeof a, cfg->router.rpc.host,
                     sup_port_or_learned(cfg->router.rpc.port, s->rpc_port));
        snprintf(url, sizeof url, "tcp://%s", a);
        json_object_set_new(router, "rpc", json_string(url));
    }
    json_object_set_new(root, "router", router);

    for (size_t i = 0; i < s->n; i++) {
        const struct child *c = s->reps[i];
        const struct sched_replica *r = &c->rep;
        const struct sched_model *m = &c->m;
        char dev[64], cores[256];
        json_t *o = json_object();
        if (!o)
            continue;
        sched_device_format(&r->dev, dev, sizeof dev);
        json_object_set_new(o, "name", json_string(c->name));
        json_object_set_new(o, "model", json_string(m->name));
        json_object_set_new(o, "version", json_integer(m->version));
        json_object_set_new(o, "device", json_string(dev));
        if (r->dev.kind == SCHED_DEV_CUDA) {
            json_object_set_new(o, "cuda_visible_devices", json_string(r->cuda_visible));
            json_object_set_new(o, "cores", json_null());
        } else {
            sched_cpuset_format(&r->cpus, cores, sizeof cores);
            json_object_set_new(o, "cores", json_string(cores));
        }
        json_object_set_new(o, "threads", json_integer(m->threads));
        put_common(o, s, c, now);
        json_object_set_new(o, "url", c->url[0] && c->pid ? json_string(c->url) : json_null());
        json_object_set_new(o, "in_table", json_boolean(c->in_table));
        json_object_set_new(o, "health_misses", json_integer(c->misses));
        json_array_append_new(reps, o);
    }
    json_object_set_new(root, "replicas", reps);

    for (size_t k = 0; k < cfg->n_models; k++) {
        const struct sched_model *m = &cfg->models[k];
        long long ready = 0, restarts = sup_restarts_of(s, m->name), failed = 0;
        for (size_t i = 0; i < s->n; i++) {
            const struct child *c = s->reps[i];
            if (c->retiring || strcmp(c->m.name, m->name) != 0)
                continue;
            ready += strcmp(sup_state_name(s, c), "ready") == 0;
            failed += c->state == C_FAILED;
        }
        json_t *o = json_pack("{s:s, s:I, s:i, s:I, s:I, s:I}", "name", m->name, "version",
                              (json_int_t)m->version, "desired", m->replicas, "ready",
                              (json_int_t)ready, "failed", (json_int_t)failed, "restarts",
                              (json_int_t)restarts);
        if (o) {
            json_object_set_new(o, "rollout", sup_rollout_json(s, m->name, now));
            json_array_append_new(models, o);
        }
    }
    json_object_set_new(root, "models", models);
    return root;
}

