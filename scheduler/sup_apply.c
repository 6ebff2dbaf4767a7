/* Applying an edited config: replica counts and whole models; the rest refused. */
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

/* ---- apply (issue 12, item 6) ------------------------------------------------------ */

static void add_line(json_t *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_line(json_t *arr, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json_array_append_new(arr, sup_jtext(buf));
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int same_devices(const struct sched_model *a, const struct sched_model *b)
{
    if (a->n_devices != b->n_devices)
        return 0;
    for (size_t d = 0; d < a->n_devices; d++) {
        char x[64], y[64];
        sched_device_format(&a->devices[d], x, sizeof x);
        sched_device_format(&b->devices[d], y, sizeof y);
        if (strcmp(x, y) != 0)
            return 0;
    }
    return 1;
}

/* What this slice cannot change on a running cluster, each as "PATH: why". */
static void refusals(struct sup *sup, const struct sched_config *n, json_t *errs)
{
    const struct sched_config *o = sup->cfg;
#define RESTART(path, differ, was, now)                                                       \
    do {                                                                                      \
        if (differ)                                                                           \
            add_line(errs, "%s: changing it needs a restart of corral-scheduler; not applied " \
                     "(running %s, the new config says %s)", path, was, now);                 \
    } while (0)
    char a[64], b[64];
    RESTART("model_repository", strcmp(o->model_repository, n->model_repository) != 0,
            o->model_repository, n->model_repository);
    RESTART("router.listen", strcmp(o->router.listen.text, n->router.listen.text) != 0,
            o->router.listen.text, n->router.listen.text);
    RESTART("router.rpc_listen", strcmp(o->router.rpc_url, n->router.rpc_url) != 0,
            o->router.rpc_url, n->router.rpc_url);
    RESTART("router.control_listen", strcmp(o->router.control.text, n->router.control.text) != 0,
            o->router.control.text, n->router.control.text);
    snprintf(a, sizeof a, "%d", o->router.threads);
    snprintf(b, sizeof b, "%d", n->router.threads);
    RESTART("router.threads", o->router.threads != n->router.threads, a, b);
    RESTART("admin.listen", strcmp(o->admin.listen.text, n->admin.listen.text) != 0,
            o->admin.listen.text, n->admin.listen.text);
    RESTART("router.token_file", !same_str(o->router.token_file, n->router.token_file),
            o->router.token_file ? o->router.token_file : "none",
            n->router.token_file ? n->router.token_file : "none");
    RESTART("admin.token_file", !same_str(o->admin.token_file, n->admin.token_file),
            o->admin.token_file ? o->admin.token_file : "none",
            n->admin.token_file ? n->admin.token_file : "none");
#define NUM(path, field)                                                                      \
    do {                                                                                      \
        snprintf(a, sizeof a, "%ld", (long)o->field);                                         \
        snprintf(b, sizeof b, "%ld", (long)n->field);                                         \
        RESTART(path, o->field != n->field, a, b);                                            \
    } while (0)
    NUM("health.interval_ms", health.interval_ms);
    NUM("health.timeout_ms", health.timeout_ms);
    NUM("health.failure_threshold", health.failure_threshold);
    NUM("rollout.drain_timeout_ms", rollout.drain_timeout_ms);
    NUM("oversubscribe", oversubscribe);
    for (size_t i = 0; i < n->n_models; i++) {
        const struct sched_model *nm = &n->models[i];
        for (size_t k = 0; k < o->n_models; k++) {
            const struct sched_model *om = &o->models[k];
            if (strcmp(om->name, nm->name) != 0)
                continue;
            const struct rollout *ro = sup_rollout_active(sup, nm->name);
            if (ro && nm->version != ro->to && nm->version != ro->from)
                add_line(errs, "models[%zu].version: %s is rolling out from version %ld to %ld "
                         "(%s); apply %ld to roll back, or %ld again after it finished; not "
                         "applied", i, nm->name, ro->from, ro->to,
                         sup_rollout_state_name(ro->state), ro->from, ro->to);
            if (ro && om->replicas != nm->replicas)
                add_line(errs, "models[%zu].replicas: %s is rolling out from version %ld to %ld; "
                         "change its replica count after it finished; not applied", i, nm->name,
                         ro->from, ro->to);
            if (!ro && om->version != nm->version && om->replicas != nm->replicas)
                add_line(errs, "models[%zu]: %s's version and replica count both changed; apply "
                         "one change at a time (the version rolls out at the running count); "
                         "not applied", i, nm->name);
            if (om->threads != nm->threads)
                add_line(errs, "models[%zu].threads: changing %s's threads (running %d, the new "
                         "config says %d) needs its replicas replaced, which is not built yet; "
                         "not applied", i, nm->name, om->threads, nm->threads);
            if (!same_devices(om, nm))
                add_line(errs, "models[%zu].devices: changing %s's devices needs its replicas "
                         "replaced, which is not built yet; not applied", i, nm->name);
        }
    }
#undef NUM
#undef RESTART
}

/* What applying nm does to its model's version, or NULL when nothing: a rolling
 * update, or a rollback of the one in progress. */
static const char *version_change(struct sup *s, const struct sched_model *nm)
{
    static char line[512];
    const struct rollout *ro = sup_rollout_active(s, nm->name);
    long running = 0;
    for (size_t o = 0; o < s->cfg->n_models; o++)
        if (strcmp(s->cfg->models[o].name, nm->name) == 0)
            running = s->cfg->models[o].version;
    if (ro && ro->state != RO_ABORTING && nm->version == ro->from)
        snprintf(line, sizeof line, "version %ld -> %ld: rollback of the rolling update in "
                 "progress (version %ld's replicas go, %ld's at full count)", ro->to, ro->from,
                 ro->to, ro->from);
    else if (nm->version != running)
        snprintf(line, sizeof line, "version %ld -> %ld: rolling update of %d replica%s "
                 "(max_surge %d, soak %ld ms%s)", running, nm->version, nm->replicas,
                 nm->replicas == 1 ? "" : "s", s->cfg->rollout.max_surge,
                 s->cfg->rollout.soak_ms, s->cfg->rollout.canary_percent ? ", canary" : "");
    else
        return NULL;
    return line;
}

/* Orders a model's running replicas for scaling down: the last ones are stopped first,
 * so those that take no traffic yet (not in the table) sort last, and among equals the
 * highest name index. */
static int retire_order(const void *x, const void *y)
{
    const struct child *a = *(struct child *const *)x, *b = *(struct child *const *)y;
    if (a->in_table != b->in_table)
        return b->in_table - a->in_table;
    size_t la = strlen(a->name), lb = strlen(b->name);
    return la != lb ? (la < lb ? -1 : 1) : strcmp(a->name, b->name);
}

/*
 * Applies n (parsed, its validation errors in verrs) to the running cluster, or with
 * dry_run only says what it would do. Takes n (heap; freed unless it becomes the
 * config in force). Returns the answer and sets *http: 200 applied (or nothing to
 * do, or dry run), 400 invalid or does not fit, 409 a change this slice cannot make,
 * 503 stopping.
 */
static json_t *apply_cfg(struct sup *s, struct sched_config *n, struct sched_errs *verrs,
                         int dry_run, int *http)
{
    json_t *ans = json_object(), *errs = json_array(), *changes = json_array();
    struct child **list = NULL;
    struct sched_replica *keep = NULL;
    struct child **keep_child = NULL;
    size_t nk = 0, nl = 0;
    struct sched_plan plan = {0};
    struct sched_errs perrs = {0};
    int adopted = 0;
    *http = 500;
    if (!ans || !errs || !changes)
        goto oom;
    for (size_t i = 0; i < verrs->n; i++)
        json_array_append_new(errs, sup_jtext(verrs->lines[i]));
    if (verrs->dropped)
        add_line(errs, "... and %zu more errors", verrs->dropped);
    if (s->stopping) {
        add_line(errs, "the cluster is stopping; not applied");
        *http = 503;
        goto refuse;
    }
    if (json_array_size(errs)) {
        *http = 400;
        goto refuse;
    }
    refusals(s, n, errs);
    if (json_array_size(errs)) {
        *http = 409;
        goto refuse;
    }

    /* Per model of the new config: which running replicas stay (keep) and which go. */
    list = calloc(s->n ? s->n : 1, sizeof *list);
    keep = calloc(s->n ? s->n : 1, sizeof *keep);
    keep_child = calloc(s->n ? s->n : 1, sizeof *keep_child);
    if (!list || !keep || !keep_child)
        goto oom;
    for (size_t k = 0; k < n->n_models; k++) {
        const struct sched_model *nm = &n->models[k];
        nl = 0;
        for (size_t i = 0; i < s->n; i++)
            if (!s->reps[i]->retiring && strcmp(s->reps[i]->m.name, nm->name) == 0)
                list[nl++] = s->reps[i];
        qsort(list, nl, sizeof *list, retire_order);
        int found = 0;
        for (size_t o = 0; o < s->cfg->n_models; o++)
            found |= strcmp(s->cfg->models[o].name, nm->name) == 0;
        if (!found)
            add_line(changes, "models[%zu] (%s): new model, %d replica%s to start", k, nm->name,
                     nm->replicas, nm->replicas == 1 ? "" : "s");
        else if (version_change(s, nm))
            add_line(changes, "models[%zu] (%s): %s", k, nm->name, version_change(s, nm));
        else if ((int)nl != nm->replicas)
            add_line(changes, "models[%zu] (%s): replicas %zu -> %d (%s)", k, nm->name, nl,
                     nm->replicas, (int)nl < nm->replicas ? "scale up: start more"
                                                          : "scale down: drain and stop");
        for (size_t j = 0; j < nl && (int)j < nm->replicas; j++) {
            keep_child[nk] = list[j];
            keep[nk] = list[j]->rep;
            keep[nk].model = k;
            nk++;
        }
    }
    /* The rollout settings take effect for the rollouts that start from now on. */
#define ROLLOUT_KEY(key, fmt)                                                                 \
    do {                                                                                      \
        if (s->cfg->rollout.key != n->rollout.key)                                            \
            add_line(changes, "rollout." #key ": " fmt " -> " fmt, s->cfg->rollout.key,       \
                     n->rollout.key);                                                         \
    } while (0)
    ROLLOUT_KEY(max_surge, "%d");
    ROLLOUT_KEY(soak_ms, "%ld");
    ROLLOUT_KEY(canary_percent, "%d");
    ROLLOUT_KEY(ready_timeout_ms, "%ld");
#undef ROLLOUT_KEY
    for (size_t o = 0; o < s->cfg->n_models; o++) {
        const struct sched_model *om = &s->cfg->models[o];
        int found = 0;
        for (size_t k = 0; k < n->n_models; k++)
            found |= strcmp(n->models[k].name, om->name) == 0;
        if (!found)
            add_line(changes, "models (%s): removed, its replicas drained and stopped", om->name);
    }

    /* Placed around the cores and GPUs the staying replicas hold. */
    int prc = sched_place_keep(n, s->o->mach, keep, nk, &plan, &perrs);
    if (prc) {
        for (size_t i = 0; i < perrs.n; i++)
            json_array_append_new(errs, sup_jtext(perrs.lines[i]));
        if (!perrs.n)
            add_line(errs, "models: cannot place the replicas (out of memory)");
        *http = 400;
        goto refuse;
    }
    json_object_set_new(ans, "changes", json_incref(changes));
    if (json_array_size(changes) == 0) {
        json_object_set_new(ans, "applied", json_false());
        json_object_set_new(ans, "message", json_string("no changes"));
        *http = 200;
        goto done;
    }
    if (dry_run) {
        json_object_set_new(ans, "applied", json_false());
        json_object_set_new(ans, "dry_run", json_true());
        json_object_set_new(ans, "message", json_string("dry run: nothing was changed"));
        *http = 200;
        goto done;
    }

    /* Act: the replicas that no slot kept retire; kept ones take their new slot's model
     * index; the other slots are new replicas. */
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        int kept = 0;
        for (size_t q = 0; q < nk && !kept; q++)
            kept = keep_child[q] == c;
        if (!kept && !c->retiring) {
            c->retiring = 1;
            c->retry_ms = 0;
            LOG_INFO("%s: scaling down (pid %d, %s): out of the router's table first, then "
                     "stopped", c->name, (int)c->pid, c->in_table ? "in the table" : "not ready");
        }
    }
    for (size_t i = 0; i < plan.n; i++) {
        const struct sched_replica *r = &plan.replicas[i];
        if (r->from_keep) {
            /* It keeps the version it runs: a changed one rolls out (sup_rollout.c). */
            struct child *kc = keep_child[r->keep_index];
            long v = kc->m.version;
            kc->rep = *r;
            kc->m = n->models[r->model];
            kc->m.version = v;
            continue;
        }
        struct child *c = sup_add_child(s, &n->models[r->model], r);
        if (!c)
            goto oom; /* what was added stays; the answer says out of memory */
        LOG_INFO("%s: scaling up: a new replica of %s", c->name, c->m.name);
    }
    if (s->cfg_owned) {
        sched_config_free(s->cfg);
        free(s->cfg);
    }
    s->cfg = n;
    s->cfg_owned = 1;
    adopted = 1;
    for (size_t k = 0; k < n->n_models; k++) {
        struct rollout *ro = sup_rollout_active(s, n->models[k].name);
        if (ro && ro->state != RO_ABORTING && n->models[k].version == ro->from) {
            char why[256];
            snprintf(why, sizeof why, "rolled back: an applied config asks for version %ld again",
                     ro->from);
            sup_rollout_abort(s, ro, why);
        }
    }
    json_object_set_new(ans, "applied", json_true());
    *http = 200;
    goto done;

oom:
    json_decref(ans);
    ans = json_pack("{s:b, s:[s]}", "applied", 0, "errors", "out of memory applying the config");
    *http = 500;
    goto done;
refuse:
    json_object_set_new(ans, "applied", json_false());
    json_object_set_new(ans, "errors", json_incref(errs));
done:
    json_decref(errs);
    json_decref(changes);
    free(list);
    free(keep);
    free(keep_child);
    sched_plan_free(&plan);
    sched_errs_free(&perrs);
    if (!adopted) {
        sched_config_free(n);
        free(n);
    }
    return ans;
}

/* Logs an apply's answer, one line per change or error. */
static void log_apply(const char *how, const json_t *ans, int http)
{
    const json_t *v;
    size_t i;
    LOG_INFO("%s: %s (%d)", how, json_is_true(json_object_get(ans, "applied")) ? "applied"
                                : json_array_size(json_object_get(ans, "errors")) ? "refused"
                                                                                    : "no changes",
             http);
    json_array_foreach(json_object_get(ans, "changes"), i, v)
        LOG_INFO("%s: change: %s", how, json_string_value(v));
    json_array_foreach(json_object_get(ans, "errors"), i, v)
        LOG_WARN("%s: refused: %s", how, json_string_value(v));
}

/* POST /v1/apply (admin.h). */
json_t *sup_apply(void *arg, const char *body, size_t len, int dry_run, int *http)
{
    struct sup *s = arg;
    struct sched_errs errs = {0};
    struct sched_config *n = calloc(1, sizeof *n);
    if (!n) {
        *http = 500;
        return json_pack("{s:b, s:[s]}", "applied", 0, "errors", "out of memory");
    }
    sched_config_parse(body, len, s->cfg->path, n, &errs);
    json_t *ans = apply_cfg(s, n, &errs, dry_run, http);
    sched_errs_free(&errs);
    if (ans)
        log_apply(dry_run ? "POST /v1/apply?dry_run=1" : "POST /v1/apply", ans, *http);
    return ans;
}

/* SIGHUP: the same file, read again. */
void sup_reload(struct sup *s)
{
    struct sched_errs errs = {0};
    struct sched_config *n = calloc(1, sizeof *n);
    int http = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s", s->cfg->path);
    if (!n) {
        LOG_ERROR("SIGHUP: out of memory; not applied");
        return;
    }
    LOG_INFO("SIGHUP: reading %s again", path);
    sched_config_load(path, n, &errs);
    json_t *ans = apply_cfg(s, n, &errs, 0, &http);
    sched_errs_free(&errs);
    if (ans)
        log_apply("SIGHUP", ans, http);
    json_decref(ans);
}

