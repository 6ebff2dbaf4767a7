/*
 * Rolling updates (issue 12, item 5), one reconciliation step per tick and model.
 *
 * A model is rolling out whenever some of its replicas run another version than the
 * config in force asks for (an apply changed it, or a rollout was aborted and the
 * old version is wanted back). Each step, for desired count N and max_surge S:
 *
 *  1. a replica of the new version that exits, fails (its parity vectors, its load)
 *     or is not ready within rollout.ready_timeout_ms aborts the rollout (below);
 *  2. a new replica joins the router's table only once it stayed ready and healthy
 *     (every health check answered, live) for rollout.soak_ms: `hold` keeps it out;
 *  3. an old replica that serves nothing (not in the table) is stopped at once;
 *  4. while the new ones in the table and the old ones together exceed N, one old
 *     replica is drained in the router's table (acknowledged), then stopped
 *     (step_retire): capacity never drops below N (CONTROL-PLANE.md, rule 5);
 *  5. while fewer than N new replicas exist and old + new stay under N + S, one more
 *     new replica starts, on the cores (or GPU) of an old one it will replace:
 *     shared for the rollout's duration, its own once the old one is gone;
 *  6. done once no old replica is left and N new ones are in the table.
 *
 * Abort: the desired version goes back to the old one, and the same steps run the
 * other way round with no soak: the new replicas not yet serving stop at once, old
 * ones are started again for any that were drained, and only then do the new ones
 * in the table drain. The reason stays in status until the next rollout.
 *
 * Canary (rollout.canary_percent P > 0): before the first new replica joins the
 * table the router is told to send P percent of the model's unversioned traffic to
 * the new version (POST /v1/canary); at most S new replicas start and no old one
 * drains until POST /v1/promote (corralctl promote), which clears the split and
 * lets the rollout go on. Rolling back a canary is applying the old version.
 */
#include "supervisor_internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

const char *sup_rollout_state_name(enum rollout_state st)
{
    switch (st) {
    case RO_ROLLING: return "rolling";
    case RO_CANARY: return "canary";
    case RO_ABORTING: return "aborting";
    case RO_DONE: return "done";
    case RO_ABORTED: return "aborted";
    }
    return "unknown";
}

static struct rollout *find(const struct sup *s, const char *model)
{
    for (size_t i = 0; i < s->n_ro; i++)
        if (strcmp(s->ro[i].model, model) == 0)
            return &s->ro[i];
    return NULL;
}

const struct rollout *sup_rollout_last(const struct sup *s, const char *model)
{
    return find(s, model);
}

struct rollout *sup_rollout_active(struct sup *s, const char *model)
{
    struct rollout *r = find(s, model);
    return r && r->state != RO_DONE && r->state != RO_ABORTED ? r : NULL;
}

static struct sched_model *model_named(struct sup *s, const char *name)
{
    for (size_t k = 0; k < s->cfg->n_models; k++)
        if (strcmp(s->cfg->models[k].name, name) == 0)
            return &s->cfg->models[k];
    return NULL;
}

/* Serving: in the router's table and ready (not gone, not being replaced). */
static int serving(const struct child *c)
{
    return c->in_table && c->state == C_READY && !c->unhealthy;
}

static int same_place(const struct sched_replica *a, const struct sched_replica *b)
{
    if (a->dev.kind != b->dev.kind)
        return 0;
    if (a->dev.kind == SCHED_DEV_CUDA)
        return strcmp(a->cuda_visible, b->cuda_visible) == 0;
    return CPU_EQUAL(&a->cpus, &b->cpus);
}

static void retire(struct child *c, const char *why)
{
    c->retiring = 1;
    c->retry_ms = 0;
    c->hold = 0;
    LOG_INFO("%s: %s (pid %d, version %ld, %s): out of the router's table first, then stopped",
             c->name, why, (int)c->pid, c->m.version, c->in_table ? "in the table" : "not serving");
}

static struct rollout *begin(struct sup *s, const struct sched_model *m, long from, long now)
{
    struct rollout *r = find(s, m->name);
    if (!r) {
        struct rollout *g = realloc(s->ro, (s->n_ro + 1) * sizeof *g);
        if (!g)
            return NULL;
        s->ro = g;
        r = &s->ro[s->n_ro++];
    }
    memset(r, 0, sizeof *r);
    snprintf(r->model, sizeof r->model, "%s", m->name);
    r->from = from;
    r->to = m->version;
    r->started_ms = now;
    const struct sched_config *cfg = s->cfg;
    r->state = cfg->rollout.canary_percent ? RO_CANARY : RO_ROLLING;
    char canary[128] = "";
    if (r->state == RO_CANARY)
        snprintf(canary, sizeof canary, "; canary: %d%% of the traffic until corralctl promote",
                 cfg->rollout.canary_percent);
    LOG_INFO("%s: rolling update from version %ld to %ld, %d replica%s: surge first (max_surge "
             "%d), each new replica ready and healthy for %ld ms before it joins the router's "
             "table, then one old replica drains%s", m->name, from, r->to, m->replicas,
             m->replicas == 1 ? "" : "s", cfg->rollout.max_surge, cfg->rollout.soak_ms, canary);
    return r;
}

void sup_rollout_abort(struct sup *s, struct rollout *ro, const char *reason)
{
    struct sched_model *m = model_named(s, ro->model);
    snprintf(ro->reason, sizeof ro->reason, "%s", reason);
    ro->state = RO_ABORTING;
    if (m)
        m->version = ro->from;
    LOG_WARN("%s: rolling update from version %ld to %ld aborted: %s; version %ld's replicas "
             "keep serving at full count and version %ld's go", ro->model, ro->from, ro->to,
             reason, ro->from, ro->to);
}

/* Tells the router about the canary split the rollout wants; 0 when it is in force. */
static int sync_split(struct sup *s, struct rollout *ro, long now)
{
    int want = ro->state == RO_CANARY;
    char why[700], v[32];
    if (want == ro->split_set)
        return 0;
    if (s->router.state != C_READY || now < ro->retry_ms)
        return -1;
    snprintf(v, sizeof v, "%ld", ro->to);
    json_t *o = want ? json_pack("{s:s, s:s, s:i}", "model", ro->model, "version", v, "percent",
                                 s->cfg->rollout.canary_percent)
                     : json_pack("{s:s}", "model", ro->model);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (sup_control(s, want ? "/v1/canary" : "/v1/canary/clear", body, want ? 0 : 404, why,
                    sizeof why)) {
        ro->retry_ms = now + 1000;
        LOG_WARN("%s: %s the router's canary split failed: %s; again in 1 s", ro->model,
                 want ? "setting" : "clearing", why);
        return -1;
    }
    ro->split_set = want;
    if (want)
        LOG_INFO("%s: canary split set: %d%% of unversioned requests go to version %ld "
                 "(acknowledged: %s)", ro->model, s->cfg->rollout.canary_percent, ro->to, why);
    else
        LOG_INFO("%s: canary split cleared (acknowledged: %s)", ro->model, why);
    return 0;
}

/* A new replica of version m->version, on the cores or GPU of an old one that no new
 * replica shares yet (the one it will replace). */
static struct child *surge(struct sup *s, size_t k)
{
    const struct sched_model *m = &s->cfg->models[k];
    const struct child *pick = NULL, *any_old = NULL, *any = NULL;
    for (size_t i = 0; i < s->n && !pick; i++) {
        const struct child *o = s->reps[i];
        if (o->retiring || strcmp(o->m.name, m->name) != 0)
            continue;
        any = any ? any : o;
        if (o->m.version == m->version)
            continue;
        any_old = any_old ? any_old : o;
        int paired = 0;
        for (size_t j = 0; j < s->n && !paired; j++) {
            const struct child *c = s->reps[j];
            paired = !c->retiring && c->m.version == m->version &&
                     strcmp(c->m.name, m->name) == 0 && same_place(&c->rep, &o->rep);
        }
        if (!paired)
            pick = o;
    }
    pick = pick ? pick : any_old ? any_old : any;
    if (!pick)
        return NULL;
    struct sched_replica r = pick->rep;
    r.model = k;
    r.shared = 1;
    r.from_keep = 0;
    struct child *c = sup_add_child(s, m, &r);
    if (c)
        c->hold = 1;
    return c;
}

static void finish(struct sup *s, struct rollout *ro, long now)
{
    ro->ended_ms = now;
    ro->state = ro->state == RO_ABORTING ? RO_ABORTED : RO_DONE;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->reps[i]->m.name, ro->model) == 0)
            s->reps[i]->hold = 0;
    if (ro->state == RO_DONE)
        LOG_INFO("%s: rolling update from version %ld to %ld done in %ld ms (%d started, %d "
                 "drained)", ro->model, ro->from, ro->to, now - ro->started_ms, ro->started,
                 ro->retired);
    else
        LOG_INFO("%s: rolling update from version %ld to %ld aborted and undone in %ld ms: "
                 "version %ld serves at full count; the reason: %s", ro->model, ro->from, ro->to,
                 now - ro->started_ms, ro->from, ro->reason);
}

/* Step 1: a replica of the version being rolled out that exited or is not ready in
 * time stops the rollout. 1 when it was aborted. */
static int new_version_failed(struct sup *s, struct rollout *ro, const struct sched_model *m,
                              long now)
{
    char why[1400], last[700];
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        if (c->retiring || strcmp(c->m.name, m->name) != 0 || c->m.version != m->version)
            continue;
        if (c->state == C_FAILED || (c->state == C_DOWN && c->starts)) {
            sched_log_last_lines(c->log_path, 3, last, sizeof last);
            snprintf(why, sizeof why, "%s of version %ld %.400s; its last log lines: %.600s", c->name,
                     m->version, c->last_error[0] ? c->last_error : "exited",
                     last[0] ? last : "(none)");
        } else if (c->state == C_STARTING && now - c->started_ms > s->cfg->rollout.ready_timeout_ms) {
            snprintf(why, sizeof why, "%s of version %ld was not ready after %ld ms "
                     "(rollout.ready_timeout_ms)", c->name, m->version, now - c->started_ms);
        } else {
            continue;
        }
        sup_rollout_abort(s, ro, why);
        return 1;
    }
    return 0;
}

static void step_model(struct sup *s, size_t k, long now)
{
    const struct sched_config *cfg = s->cfg;
    const struct sched_model *m = &cfg->models[k];
    struct rollout *ro = sup_rollout_active(s, m->name);
    int n_cur = 0, n_cur_in = 0, n_old = 0, n_old_in = 0;
    long from = 0;

    for (size_t i = 0; i < s->n; i++) {
        const struct child *c = s->reps[i];
        if (c->retiring || strcmp(c->m.name, m->name) != 0)
            continue;
        if (c->m.version != m->version && !from)
            from = c->m.version;
        n_old += c->m.version != m->version;
    }
    if (!ro && !n_old)
        return;
    if (!ro && !(ro = begin(s, m, from, now)))
        return;
    /* After an abort m->version is the old version again: the steps below undo. */
    if (ro->state != RO_ABORTING)
        new_version_failed(s, ro, m, now);
    /* New replicas wait for the split (hold); the rollout finishes once it is cleared. */
    sync_split(s, ro, now);

    int aborting = ro->state == RO_ABORTING, canary = ro->state == RO_CANARY;
    int N = m->replicas, S = cfg->rollout.max_surge;
    n_old = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        if (c->retiring || strcmp(c->m.name, m->name) != 0)
            continue;
        if (c->m.version == m->version) {
            /* Step 2: the soak, restarted by a missed health check. */
            if (c->state == C_READY && !c->in_table) {
                if (c->misses)
                    c->soak_from_ms = now;
                long since = c->soak_from_ms > c->ready_ms ? c->soak_from_ms : c->ready_ms;
                c->hold = (!aborting && now - since < cfg->rollout.soak_ms) ||
                          (canary && !ro->split_set);
            }
            n_cur++;
            n_cur_in += serving(c);
        } else if (!c->in_table && !canary) {
            retire(c, aborting ? "rollout aborted: the new version's replica stops"
                               : "rolling update: an old replica that serves nothing stops");
            ro->retired += !aborting;
        } else {
            n_old++;
            n_old_in += serving(c);
        }
    }
    /* Step 4: one old replica drains once the new ones cover for it, preferably the one
     * whose cores a serving new replica shares. */
    int unsafe = s->o->break_surge_first && !aborting; /* a test breaking rule 5 */
    if (!canary && n_old_in && (n_cur_in + n_old_in > N || unsafe)) {
        struct child *victim = NULL;
        for (size_t i = 0; i < s->n; i++) {
            struct child *o = s->reps[i];
            if (o->retiring || strcmp(o->m.name, m->name) != 0 || o->m.version == m->version ||
                !serving(o))
                continue;
            int shared = 0;
            for (size_t j = 0; j < s->n && !shared; j++) {
                const struct child *c = s->reps[j];
                shared = !c->retiring && c->m.version == m->version &&
                         strcmp(c->m.name, m->name) == 0 && serving(c) &&
                         same_place(&c->rep, &o->rep);
            }
            if (!victim || shared)
                victim = o;
            if (shared)
                break;
        }
        if (victim) {
            retire(victim, aborting ? "rollout aborted: the old version is back, so a new "
                                      "replica drains" : "rolling update: a new replica serves, "
                                      "so an old one drains");
            ro->retired += !aborting;
            n_old--;
        }
    }
    /* Step 5: surge. */
    int limit = canary ? (S < N ? S : N) : N;
    if (n_cur < limit && n_cur + n_old < N + S) {
        struct child *c = surge(s, k);
        if (c) {
            ro->started++;
            LOG_INFO("%s: rolling update: %s starts version %ld (%d of %d)", m->name, c->name,
                     m->version, n_cur + 1, N);
        }
    }
    if (!n_old && n_cur_in >= N && !ro->split_set)
        finish(s, ro, now);
}

void sup_rollout_step(struct sup *s, long now)
{
    if (s->router.state != C_READY)
        return;
    for (size_t k = 0; k < s->cfg->n_models; k++)
        step_model(s, k, now);
}

json_t *sup_promote(void *arg, const char *model, int *http)
{
    struct sup *s = arg;
    struct rollout *ro = sup_rollout_active(s, model);
    char msg[512];
    if (!model_named(s, model)) {
        *http = 404;
        snprintf(msg, sizeof msg, "model: no model named '%s' in the cluster", model);
        return json_pack("{s:s}", "error", msg);
    }
    if (!ro || ro->state != RO_CANARY) {
        *http = 409;
        snprintf(msg, sizeof msg, "model %s: no canary waits for promotion (%s)", model,
                 ro ? sup_rollout_state_name(ro->state) : "no rollout in progress");
        return json_pack("{s:s}", "error", msg);
    }
    ro->state = RO_ROLLING;
    LOG_INFO("%s: canary of version %ld promoted: the split is cleared and the rolling update "
             "goes on", model, ro->to);
    *http = 200;
    return json_pack("{s:b, s:s, s:I, s:I}", "promoted", 1, "model", model, "from",
                     (json_int_t)ro->from, "to", (json_int_t)ro->to);
}

json_t *sup_rollout_json(const struct sup *s, const char *model, long now)
{
    const struct rollout *ro = find(s, model);
    if (!ro)
        return json_null();
    long long at_to = 0, at_from = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct child *c = s->reps[i];
        if (strcmp(c->m.name, model) != 0 || !serving(c))
            continue;
        at_to += c->m.version == ro->to;
        at_from += c->m.version == ro->from;
    }
    long end = ro->ended_ms ? ro->ended_ms : now;
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:i, s:i}", "state",
                          sup_rollout_state_name(ro->state), "from", (json_int_t)ro->from, "to",
                          (json_int_t)ro->to, "duration_ms", (json_int_t)(end - ro->started_ms),
                          "serving_from", (json_int_t)at_from, "serving_to", (json_int_t)at_to,
                          "started", ro->started, "drained", ro->retired);
    if (!o)
        return json_null();
    if (ro->state == RO_CANARY)
        json_object_set_new(o, "canary_percent", json_integer(s->cfg->rollout.canary_percent));
    json_object_set_new(o, "reason", ro->reason[0] ? sup_jtext(ro->reason) : json_null());
    return o;
}
