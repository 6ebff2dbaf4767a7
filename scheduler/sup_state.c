/* The state file, and re-adoption of the processes a previous scheduler left running. */
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

/* ---- processes by pid and start time ----------------------------------------------- */

/* The start time of pid (/proc/PID/stat field 22, clock ticks since boot); 0 when the
 * process is gone or a zombie (exited, not yet reaped by its parent). */
unsigned long long sup_proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return 0;
    buf[r] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 0;
    p += 2;
    if (*p == 'Z' || *p == 'X')
        return 0;
    /* p is field 3 (state); field 22 is 19 fields on. */
    for (int f = 3; f < 22; f++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* The process recorded as (pid, start_time) still runs: alive, and the same process
 * (a recycled pid has another start time). */
int sup_same_process(pid_t pid, unsigned long long start_time)
{
    if (pid <= 0 || !start_time)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    return sup_proc_start_time(pid) == start_time;
}

/* ---- the state file (CONTROL-PLANE.md, "State on disk"; re-adoption, item 4) ------ */

static json_t *state_child(const struct sup *s, const struct child *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "name", json_string(c->name));
    json_object_set_new(o, "pid", json_integer(c->pid));
    json_object_set_new(o, "start_time", json_integer((json_int_t)(c->pid ? c->start_time : 0)));
    json_object_set_new(o, "state", json_string(sup_state_name(s, c)));
    return o;
}

/* The scheduler's view as JSON text (malloc'd; NULL when out of memory). */
static char *state_text(const struct sup *s)
{
    char url[SCHED_HOST_MAX + 64];
    json_t *root = json_object(), *reps = json_array();
    json_t *router = state_child(s, &s->router);
    if (!root || !reps || !router) {
        json_decref(root);
        json_decref(reps);
        json_decref(router);
        return NULL;
    }
    json_object_set_new(root, "config", json_string(s->cfg->path));
    json_object_set_new(router, "http_port", json_integer(s->http_port));
    json_object_set_new(router, "control_port", json_integer(s->ctl_port));
    json_object_set_new(router, "rpc_port", json_integer(s->rpc_port));
    snprintf(url, sizeof url, "http://%s:%d", s->cfg->router.listen.host, s->http_port);
    json_object_set_new(router, "http", json_string(url));
    snprintf(url, sizeof url, "http://%s:%d", s->ctl_host, s->ctl_port);
    json_object_set_new(router, "control", json_string(url));
    if (s->cfg->router.rpc_off)
        snprintf(url, sizeof url, "off");
    else
        snprintf(url, sizeof url, "tcp://%s:%d", s->cfg->router.rpc.host,
                 sup_port_or_learned(s->cfg->router.rpc.port, s->rpc_port));
    json_object_set_new(router, "rpc", json_string(url));
    json_object_set_new(root, "router", router);
    for (size_t i = 0; i < s->n; i++) {
        const struct child *c = s->reps[i];
        char dev[64], cores[256];
        json_t *o = state_child(s, c);
        if (!o)
            continue;
        sched_device_format(&c->rep.dev, dev, sizeof dev);
        json_object_set_new(o, "model", json_string(c->m.name));
        json_object_set_new(o, "version", json_integer(c->m.version));
        json_object_set_new(o, "device", json_string(dev));
        if (c->rep.dev.kind == SCHED_DEV_CUDA) {
            json_object_set_new(o, "cuda_visible_devices", json_string(c->rep.cuda_visible));
        } else {
            sched_cpuset_format(&c->rep.cpus, cores, sizeof cores);
            json_object_set_new(o, "cores", json_string(cores));
        }
        json_object_set_new(o, "url", json_string(c->pid ? c->url : ""));
        json_object_set_new(o, "in_table", json_boolean(c->in_table));
        json_object_set_new(o, "retiring", json_boolean(c->retiring));
        json_array_append_new(reps, o);
    }
    json_object_set_new(root, "replicas", reps);
    char *t = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    return t;
}

/* Writes the state file when the view changed: to a temporary file, fsync'd, then
 * renamed over the old one, so a crash leaves either the old or the new file. */
void sup_write_state(struct sup *s)
{
    char tmp[4300];
    char *t = state_text(s);
    if (!t || (s->last_state && strcmp(t, s->last_state) == 0)) {
        free(t);
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", s->state_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(t), off = 0;
    int ok = fd >= 0;
    while (ok && off < len) {
        ssize_t w = write(fd, t + off, len - off);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else
            ok = 0;
    }
    if (ok && fsync(fd) != 0)
        ok = 0;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, s->state_path) != 0)
        ok = 0;
    if (!ok) {
        LOG_WARN("cannot write the state file %s: %s; again on the next change", s->state_path,
                 strerror(errno));
        unlink(tmp);
        free(t);
        return;
    }
    free(s->last_state);
    s->last_state = t;
}

/* The URLs in the router's table (GET /v1/replicas), as a JSON array of objects; NULL
 * when the router did not answer. */
static json_t *router_table(struct sup *s, char *why, size_t why_len)
{
    int st = 0;
    char body[8192];
    struct cerr e = {0};
    if (sched_ctl_request(s->ctl_host, s->ctl_port, "GET", "/v1/replicas", "",
                          SCHED_CTL_TIMEOUT_MS, &st, body, sizeof body, &e)) {
        snprintf(why, why_len, "%s", e.msg);
        return NULL;
    }
    json_error_t je;
    json_t *j = st == 200 ? json_loads(body, 0, &je) : NULL;
    json_t *reps = json_object_get(j, "replicas");
    if (!json_is_array(reps)) {
        snprintf(why, why_len, "HTTP %d: %.200s", st, body);
        json_decref(j);
        return NULL;
    }
    snprintf(why, why_len, "generation %lld, %zu entr%s",
             (long long)json_integer_value(json_object_get(j, "generation")),
             json_array_size(reps), json_array_size(reps) == 1 ? "y" : "ies");
    json_incref(reps);
    json_decref(j);
    return reps;
}

static int table_has(const json_t *table, const char *url)
{
    size_t i;
    const json_t *v;
    json_array_foreach(table, i, v)
        if (strcmp(json_string_value(json_object_get(v, "url")) ?: "", url) == 0)
            return 1;
    return 0;
}

static int table_has_str(const json_t *arr, const char *url)
{
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v)
        if (strcmp(json_string_value(v) ?: "", url) == 0)
            return 1;
    return 0;
}

/* When the process that started at `start_time` (clock ticks since boot) started, on
 * sup_now_ms()'s clock; `now` when unknown. */
static long started_at(unsigned long long start_time, long now)
{
    double up;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/uptime", "re");
    int ok = f && fscanf(f, "%lf", &up) == 1 && hz > 0;
    if (f)
        fclose(f);
    long age = ok ? (long)(up * 1000.0) - (long)(start_time * 1000ULL / (unsigned long long)hz) : 0;
    return age > 0 ? now - age : now;
}

/* c now watches the running process pid (start time `start`), ready, not our child. */
static void adopt_as(struct child *c, pid_t pid, unsigned long long start, long now)
{
    c->pid = pid;
    c->start_time = start;
    c->adopted = 1;
    c->state = C_READY;
    c->started_ms = started_at(start, now);
    c->ready_ms = now;
    c->starts = 1;
}

static int rec_alive(const json_t *rec, pid_t *pid, unsigned long long *start)
{
    *pid = (pid_t)json_integer_value(json_object_get(rec, "pid"));
    *start = (unsigned long long)json_integer_value(json_object_get(rec, "start_time"));
    return sup_same_process(*pid, *start);
}

static int model_index(const struct sup *s, const char *model)
{
    for (size_t k = 0; k < s->cfg->n_models; k++)
        if (strcmp(s->cfg->models[k].name, model) == 0)
            return (int)k;
    return -1;
}

/* A child for a running replica of `model` that no child of the config matched (a
 * rollout's old version or surge replica): a slot of that model nothing claimed, else
 * a new child; it takes the record's version, and its name when free. */
static struct child *take_slot(struct sup *s, const char *model, long version,
                               const char *name)
{
    int k = model_index(s, model);
    struct child *c = NULL;
    for (size_t i = 0; i < s->n && !c; i++)
        if (strcmp(s->reps[i]->m.name, model) == 0 && !s->reps[i]->pid && !s->reps[i]->in_table)
            c = s->reps[i];
    if (!c) {
        struct sched_replica r = {0};
        for (size_t i = 0; i < s->n; i++)
            if (strcmp(s->reps[i]->m.name, model) == 0)
                r = s->reps[i]->rep;
        r.model = (size_t)k;
        r.shared = 1;
        if (!(c = sup_add_child(s, &s->cfg->models[k], &r)))
            return NULL;
    }
    c->m.version = version;
    int taken = 0;
    for (size_t i = 0; i < s->n && !taken; i++)
        taken = s->reps[i] != c && strcmp(s->reps[i]->name, name) == 0;
    const char *hash = strrchr(name, '#');
    if (!taken && hash && strlen(name) < sizeof c->name) {
        snprintf(c->name, sizeof c->name, "%s", name);
        snprintf(c->log_path, sizeof c->log_path, "%s/%.*s-%s.log", s->o->state_dir,
                 (int)(hash - name), name, hash + 1);
    }
    return c;
}

/*
 * Observes before acting (item 4): reads the state file a previous scheduler left,
 * and adopts the router and the replicas that still run (same pid and start time),
 * so that no second set is started. The router's table (GET /v1/replicas) says which
 * adopted replicas it lists: one missing is added by the next step; one recorded but
 * gone and still listed is removed, then replaced; a listed URL nobody owns is
 * removed. Each adopted replica's health is checked by the loop from its first tick.
 */
void sup_adopt(struct sup *s, long now)
{
    json_error_t je;
    char why[700];
    json_t *st = json_load_file(s->state_path, 0, &je);
    if (!st) {
        LOG_INFO("no state file %s (%s): starting the cluster", s->state_path, je.text);
        return;
    }
    LOG_INFO("state file %s found: observing what a previous scheduler left running",
             s->state_path);
    json_t *r = json_object_get(st, "router"), *table = NULL;
    int router_adopted = 0;
    pid_t pid;
    unsigned long long start;
    /* Its ports, adopted or not, when it ran as the last scheduler went (not after a
     * clean stop): a router started now listens where clients found it. */
    int hp = (int)json_integer_value(json_object_get(r, "http_port"));
    int cp = (int)json_integer_value(json_object_get(r, "control_port"));
    int rp = (int)json_integer_value(json_object_get(r, "rpc_port"));
    if (hp && cp && json_integer_value(json_object_get(r, "pid"))) {
        s->http_port = hp;
        s->ctl_port = cp;
        s->rpc_port = rp;
    }
    if (rec_alive(r, &pid, &start) && hp && cp) {
        table = router_table(s, why, sizeof why);
        if (!table)
            LOG_WARN("router: pid %d runs (start time %llu) but its table could not be read: "
                     "%s; adopted, trusting the state file for what it lists", (int)pid, start,
                     why);
        router_adopted = 1;
        {
            struct child *c = &s->router;
            adopt_as(c, pid, start, now);
            s->seen_http = s->seen_ctl = 1;
            LOG_INFO("router: adopted (pid %d, start time %llu): http://%s:%d, control "
                     "http://%s:%d; its table: %s", (int)pid, start, s->cfg->router.listen.host,
                     hp, s->ctl_host, cp, why);
        }
    } else {
        LOG_INFO("router: the recorded one (pid %d) is gone; a new one starts", (int)pid);
    }
    json_t *claimed = json_array();
    size_t i;
    json_t *rec;
    /* Two passes: first each record that matches its child of the config (name, model,
     * version); then the other live ones of a model in the config, which a rollout left
     * (another version, or a surge replica): they take a child slot of their model
     * that nothing claimed, or a new one, and keep their version, so the rollout goes
     * on from where it was instead of stopping what serves. */
    json_t *recs = json_object_get(st, "replicas");
    char *deferred = calloc(json_array_size(recs) + 1, 1);
    for (int pass = 0; pass < 2; pass++)
    json_array_foreach(recs, i, rec) {
        const char *name = json_string_value(json_object_get(rec, "name")) ?: "";
        const char *model = json_string_value(json_object_get(rec, "model")) ?: "";
        const char *url = json_string_value(json_object_get(rec, "url")) ?: "";
        long version = (long)json_integer_value(json_object_get(rec, "version"));
        int live = rec_alive(rec, &pid, &start);
        struct child *c = NULL;
        if (pass == 1 && !(deferred && deferred[i]))
            continue;
        for (size_t k = 0; k < s->n && !c && pass == 0; k++)
            if (strcmp(s->reps[k]->name, name) == 0 && strcmp(s->reps[k]->m.name, model) == 0 &&
                s->reps[k]->m.version == version && !s->reps[k]->pid)
                c = s->reps[k];
        if (pass == 0 && !c && live && url[0] && deferred &&
            !json_is_true(json_object_get(rec, "retiring")) && model_index(s, model) >= 0) {
            deferred[i] = 1;
            continue;
        }
        if (pass == 1)
            c = take_slot(s, model, version, name);
        int listed = url[0] && (table ? table_has(table, url)
                                      : router_adopted &&
                                            json_is_true(json_object_get(rec, "in_table")));
        if (live && c && url[0] && !json_is_true(json_object_get(rec, "retiring"))) {
            adopt_as(c, pid, start, now);
            snprintf(c->url, sizeof c->url, "%s", url);
            c->in_table = listed;
            json_array_append_new(claimed, json_string(url));
            LOG_INFO("%s: adopted (pid %d, start time %llu) at %s, %s version %ld; %s", c->name,
                     (int)pid, start, url, model, version,
                     listed ? "in the router's table" : "not in the router's table: added next");
            continue;
        }
        if (live) {
            /* Ours (same start time) but not to keep: not ready yet (its URL unknown),
             * retiring, or not in this config. Out of the table, then stopped. */
            if (listed && sup_control(s, "/v1/replicas/remove", sched_ctl_url_body(url), 404, why,
                                  sizeof why) != 0)
                LOG_WARN("%s: removing %s from the router's table failed: %s", name, url, why);
            LOG_INFO("%s: the recorded process (pid %d) runs but is not adopted (%s); SIGKILL",
                     name, (int)pid, !url[0] ? "it was not ready" : "not in this config");
            kill(pid, SIGKILL);
            continue;
        }
        if (listed && c) {
            /* Gone but still listed: the next step removes it before its successor starts. */
            snprintf(c->url, sizeof c->url, "%s", url);
            c->in_table = 1;
            json_array_append_new(claimed, json_string(url));
            LOG_INFO("%s: the recorded process (pid %d) is gone and %s is still in the router's "
                     "table: removed, then replaced", name, (int)pid, url);
        } else {
            LOG_INFO("%s: the recorded process (pid %d) is gone; a new one starts", name,
                     (int)pid);
        }
    }
    /* A URL in the table that no replica of ours owns is removed (nothing to route to). */
    json_array_foreach(table, i, rec) {
        const char *url = json_string_value(json_object_get(rec, "url")) ?: "";
        if (table_has_str(claimed, url))
            continue;
        if (sup_control(s, "/v1/replicas/remove", sched_ctl_url_body(url), 404, why, sizeof why) == 0)
            LOG_INFO("router: removed %s from its table: no replica of this cluster serves there "
                     "(acknowledged: %s)", url, why);
        else
            LOG_WARN("router: removing the unknown %s from its table failed: %s", url, why);
    }
    free(deferred);
    json_decref(claimed);
    json_decref(table);
    json_decref(st);
}

