#include "supervisor_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "ctl.h"
#include "log.h"
#include "probe.h"
#include "proc.h"

long sup_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void describe_status(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(buf, len, "status 0x%x", st);
}

/* ---- the router's control endpoint ------------------------------------------------ */

/* POSTs body to path; 0 when the router answered 200 (or one of `ok_too`). */
int sup_control(struct sup *s, const char *path, char *body, int ok_too, char *why,
                size_t why_len)
{
    int st = 0;
    char answer[512];
    struct cerr e = {0};
    if (!body) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    int rc = sched_ctl_post(s->ctl_host, s->ctl_port, path, body, SCHED_CTL_TIMEOUT_MS, &st,
                            answer, sizeof answer, &e);
    free(body);
    if (rc) {
        snprintf(why, why_len, "%s", e.msg);
        return -1;
    }
    if (st == 200 || (ok_too && st == ok_too)) {
        snprintf(why, why_len, "%s", answer);
        return 0;
    }
    snprintf(why, why_len, "HTTP %d: %s", st, answer);
    return -1;
}

/* ---- starting -------------------------------------------------------------------- */

int sup_port_or_learned(int configured, int learned)
{
    return configured == 0 && learned ? learned : configured;
}

void sup_fmt_addr(char *buf, size_t len, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(buf, len, "[%s]:%d", host, port);
    else
        snprintf(buf, len, "%s:%d", host, port);
}

/* Starts c's process with its log tail; on failure the next try waits out its backoff. */
void sup_count_restart(struct sup *s, const char *model)
{
    for (size_t i = 0; i < s->n_restarts; i++)
        if (strcmp(s->restarts[i].model, model) == 0) {
            s->restarts[i].n++;
            return;
        }
    struct sup_restarts *r = realloc(s->restarts, (s->n_restarts + 1) * sizeof *r);
    if (!r)
        return; /* a count lost to a failed allocation, not a crash */
    s->restarts = r;
    snprintf(r[s->n_restarts].model, sizeof r[s->n_restarts].model, "%s", model);
    r[s->n_restarts++].n = 1;
}

long long sup_restarts_of(const struct sup *s, const char *model)
{
    for (size_t i = 0; i < s->n_restarts; i++)
        if (strcmp(s->restarts[i].model, model) == 0)
            return s->restarts[i].n;
    return 0;
}

static int spawn_child(struct child *c, const struct sched_spawn *sp, long now)
{
    struct cerr e = {0};
    sched_logtail_start(&c->tail, c->log_path);
    c->started_ms = now;
    if (sched_spawn(sp, &c->pid, &e)) {
        LOG_ERROR("%s: cannot start %s: %s", c->name, sp->argv[0], e.msg);
        snprintf(c->last_error, sizeof c->last_error, "cannot start: %s", e.msg);
        c->pid = 0;
        c->next_start_ms = now + c->backoff_ms;
        return -1;
    }
    c->state = C_STARTING;
    c->starts++;
    c->adopted = 0;
    c->start_time = sup_proc_start_time(c->pid);
    return 0;
}

static void start_router(struct sup *s, long now)
{
    const struct sched_config *cfg = s->cfg;
    struct child *c = &s->router;
    char listen[SCHED_HOST_MAX + 16], ctl[SCHED_HOST_MAX + 16], rpc[SCHED_HOST_MAX + 32];
    char threads[16], drain[32];

    /* A port 0 in the config was chosen by the first router; its successors take the
     * same one, so that clients and the scheduler find the router where it was. */
    sup_fmt_addr(listen, sizeof listen, cfg->router.listen.host,
             sup_port_or_learned(cfg->router.listen.port, s->http_port));
    sup_fmt_addr(ctl, sizeof ctl, cfg->router.control.host,
             sup_port_or_learned(cfg->router.control.port, s->ctl_port));
    if (cfg->router.rpc_off) {
        snprintf(rpc, sizeof rpc, "off");
    } else {
        char a[SCHED_HOST_MAX + 16];
        sup_fmt_addr(a, sizeof a, cfg->router.rpc.host, sup_port_or_learned(cfg->router.rpc.port, s->rpc_port));
        snprintf(rpc, sizeof rpc, "tcp://%s", a);
    }
    snprintf(threads, sizeof threads, "%d", cfg->router.threads);
    snprintf(drain, sizeof drain, "%ld", cfg->rollout.drain_timeout_ms);
    /* The router probes replicas on the cluster's health interval too, so a stopped one
     * leaves rotation on the schedule the config names. */
    char health[24];
    snprintf(health, sizeof health, "%ld", (long)cfg->health.interval_ms);
    char *fixed[] = {(char *)s->o->router_bin, "--listen", listen, "--rpc-listen", rpc,
                     "--threads", threads, "--control-listen", ctl, "--drain-timeout-ms", drain,
                     "--health-interval-ms", health};
    size_t nf = sizeof fixed / sizeof *fixed, na = nf;
    /* A restarted router starts with the replicas that serve already (--replica seeds
     * its table), so it has somewhere to send its first requests. */
    char **argv = calloc(nf + 2 * s->n + 3, sizeof *argv);
    char **seeds = calloc(s->n + 1, sizeof *seeds);
    int nseed = 0;
    if (!argv || !seeds) {
        LOG_ERROR("router: out of memory starting it; again in %ld ms", c->backoff_ms);
        c->next_start_ms = now + c->backoff_ms;
        free(argv);
        free(seeds);
        return;
    }
    memcpy(argv, fixed, sizeof fixed);
    if (cfg->router.token_file) {
        argv[na++] = "--token-file";
        argv[na++] = cfg->router.token_file;
    }
    for (size_t i = 0; i < s->n; i++) {
        struct child *r = s->reps[i];
        if (r->retiring || r->state != C_READY || r->unhealthy || r->hold || !r->url[0] ||
            !r->pid)
            continue;
        size_t len = strlen(r->m.name) + strlen(r->url) + 2;
        if (!(seeds[nseed] = malloc(len)))
            continue;
        snprintf(seeds[nseed], len, "%s=%s", r->m.name, r->url);
        argv[na++] = "--replica";
        argv[na++] = seeds[nseed++];
    }
    struct sched_spawn sp = {.argv = argv, .log_path = c->log_path};
    s->seen_http = s->seen_ctl = 0;
    if (spawn_child(c, &sp, now) == 0) {
        LOG_INFO("router: started (pid %d): %s --listen %s --rpc-listen %s --threads %s "
                 "--control-listen %s --drain-timeout-ms %s --health-interval-ms %s and %d "
                 "serving replica%s (--replica); log %s", (int)c->pid, s->o->router_bin, listen,
                 rpc, threads, ctl, drain, health, nseed, nseed == 1 ? "" : "s", c->log_path);
        /* Those are in its table from its start. */
        for (size_t i = 0; i < s->n; i++)
            for (int k = 0; k < nseed; k++) {
                const char *eq = strchr(seeds[k], '=');
                if (strcmp(eq + 1, s->reps[i]->url) == 0)
                    s->reps[i]->in_table = 1;
            }
    }
    for (int k = 0; k < nseed; k++)
        free(seeds[k]);
    free(seeds);
    free(argv);
}

static void start_replica(struct sup *s, struct child *c, long now)
{
    const struct sched_config *cfg = s->cfg;
    const struct sched_replica *r = &c->rep;
    const struct sched_model *m = &c->m;
    char version[32], threads[16], drain[32], where[300];
    int gpu = r->dev.kind == SCHED_DEV_CUDA;

    snprintf(version, sizeof version, "%ld", m->version);
    snprintf(threads, sizeof threads, "%d", m->threads);
    snprintf(drain, sizeof drain, "%ld", cfg->rollout.drain_timeout_ms);
    char *argv[] = {(char *)s->o->replica_bin, "--model-repo", cfg->model_repository,
                    "--model", (char *)m->name, "--version", version,
                    "--listen", "tcp://127.0.0.1:0", "--device", gpu ? "cuda:0" : "cpu",
                    "--threads", threads, "--drain-timeout-ms", drain, NULL};
    struct sched_spawn sp = {.argv = argv, .log_path = c->log_path,
                             .cpus = gpu ? NULL : &r->cpus,
                             .cuda_visible = gpu ? r->cuda_visible : NULL};
    if (gpu) {
        snprintf(where, sizeof where, "CUDA_VISIBLE_DEVICES=%s, --device cuda:0", r->cuda_visible);
    } else {
        char cores[256];
        sched_cpuset_format(&r->cpus, cores, sizeof cores);
        snprintf(where, sizeof where, "cores %s, --threads %d", cores, m->threads);
    }
    c->url[0] = '\0';
    if (spawn_child(c, &sp, now))
        return;
    if (c->starts > 1)
        sup_count_restart(s, m->name);
    LOG_INFO("%s: started (pid %d): %s version %s on %s%s; log %s", c->name, (int)c->pid,
             m->name, version, where, r->shared ? " (shared, oversubscribe)" : "", c->log_path);
}

/* ---- what the children say ------------------------------------------------------- */

/* The port at the end of "HOST:PORT" right after `marker` in `line`; 0 if absent. */
static int port_after(const char *line, const char *marker)
{
    const char *p = strstr(line, marker);
    if (!p)
        return 0;
    p += strlen(marker);
    size_t n = strcspn(p, " \t");
    const char *colon = NULL;
    for (const char *q = p; q < p + n; q++)
        if (*q == ':')
            colon = q;
    return colon ? atoi(colon + 1) : 0;
}

static void router_line(const char *line, void *arg)
{
    struct sup *s = arg;
    int p;
    if ((p = port_after(line, "corral-router listening on http://"))) {
        s->http_port = p;
        s->seen_http = 1;
    } else if ((p = port_after(line, "corral-router control listening on http://"))) {
        s->ctl_port = p;
        s->seen_ctl = 1;
    }
    else if ((p = port_after(line, "corral-router RPC listening on tcp://")))
        s->rpc_port = p;
}

struct replica_line_arg {
    struct child *c;
};

static void replica_line(const char *line, void *arg)
{
    struct child *c = ((struct replica_line_arg *)arg)->c;
    const char *p = strstr(line, "serving model ");
    const char *on = p ? strstr(p, " on tcp://") : NULL;
    if (!on || c->url[0])
        return;
    on += 4;
    size_t n = strcspn(on, " \t");
    if (n >= sizeof c->url)
        return;
    memcpy(c->url, on, n);
    c->url[n] = '\0';
}

/* ---- observing exits ------------------------------------------------------------- */

static void mark_down(struct sup *s, struct child *c, int st, long now)
{
    char how[96];
    if (c->adopted)
        snprintf(how, sizeof how, "gone; adopted, so its exit status is unknown");
    else
        describe_status(st, how, sizeof how);
    c->adopted = 0;
    c->start_time = 0;
    long up = now - c->started_ms;
    pid_t pid = c->pid;
    c->pid = 0;
    sched_probe_close(&c->probe);
    if (c->unhealthy) {
        size_t l = strlen(how);
        snprintf(how + l, sizeof how - l, " after %d failed health checks", c->misses);
        c->unhealthy = 0;
    }
    c->misses = 0;
    if (s->stopping || c->retiring) {
        LOG_INFO("%s: exited (pid %d, %s)", c->name, (int)pid, how);
        c->state = C_DOWN;
        return;
    }
    c->crashes++;
    c->state = C_DOWN;
    snprintf(c->last_error, sizeof c->last_error, "exited (pid %d, %s) after %ld ms", (int)pid,
             how, up);
    if (c->is_router) {
        /* Its table went with it; the next router starts with the replicas that
         * serve (--replica, start_router) and the others are added once ready. */
        for (size_t i = 0; i < s->n; i++)
            s->reps[i]->in_table = 0;
    }
    if (c->crashes >= SCHED_CRASH_LIMIT) {
        char last[1024];
        sched_log_last_lines(c->log_path, 3, last, sizeof last);
        c->state = C_FAILED;
        snprintf(c->last_error, sizeof c->last_error,
                 "failed: exited %d times in a row, the last with %s; last log lines: %s",
                 c->crashes, how, last[0] ? last : "(none)");
        LOG_ERROR("%s: failed: exited %d times in a row, the last (pid %d) with %s after %ld ms; "
                  "not restarted; last log lines: %s", c->name, c->crashes, (int)pid, how, up,
                  last[0] ? last : "(none)");
        return;
    }
    c->next_start_ms = now + c->backoff_ms;
    LOG_WARN("%s: exited (pid %d, %s) after %ld ms, %d in a row; restart in %ld ms%s",
             c->name, (int)pid, how, up, c->crashes, c->backoff_ms,
             c->in_table ? ", once it is out of the router's table" : "");
    c->backoff_ms = c->backoff_ms * 2 > SCHED_BACKOFF_MAX_MS ? SCHED_BACKOFF_MAX_MS
                                                             : c->backoff_ms * 2;
}

static void reap(struct sup *s, struct child *c, long now)
{
    int st;
    if (c->pid <= 0)
        return;
    if (c->adopted) {
        /* Not our child: no waitpid; gone when its pid is free or names another process. */
        if (!sup_same_process(c->pid, c->start_time))
            mark_down(s, c, 0, now);
        return;
    }
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == c->pid)
        mark_down(s, c, st, now);
}

/* ---- the steps -------------------------------------------------------------------- */

static int router_ready(const struct sup *s)
{
    return s->router.state == C_READY;
}

static void step_router(struct sup *s, long now)
{
    struct child *c = &s->router;
    if (c->state == C_DOWN && !c->pid && now >= c->next_start_ms)
        start_router(s, now);
    if (c->state != C_STARTING)
        return;
    sched_logtail_poll(&c->tail, router_line, s);
    if (!s->seen_http || !s->seen_ctl)
        return;
    c->state = C_READY;
    c->ready_ms = now;
    LOG_INFO("router: ready (pid %d): http://%s:%d, control http://%s:%d%s", (int)c->pid,
             s->cfg->router.listen.host, s->http_port, s->ctl_host, s->ctl_port,
             c->crashes ? "; its table starts with the replicas that served (--replica), the others are added once ready" : "");
}

/* Takes c out of the router's table (acknowledged); 0 when it is out, else why. */
static int remove_from_table(struct sup *s, struct child *c, char *why, size_t why_len)
{
    if (sup_control(s, "/v1/replicas/remove", sched_ctl_url_body(c->url), 404, why, why_len))
        return -1;
    c->in_table = 0;
    LOG_INFO("%s: removed %s from the router's table (acknowledged: %s)", c->name, c->url, why);
    return 0;
}

static void step_replica(struct sup *s, struct child *c, long now)
{
    const struct sched_model *m = &c->m;
    char why[700];

    /* Out of the table before anything else: a replica that is gone must not be
     * picked, and its successor (on a new URL) must not start while it is listed. */
    if ((c->state == C_DOWN || c->state == C_FAILED) && c->in_table && router_ready(s) &&
        now >= c->retry_ms) {
        if (remove_from_table(s, c, why, sizeof why) != 0) {
            c->retry_ms = now + 1000;
            LOG_WARN("%s: removing %s from the router's table failed: %s; again in 1 s", c->name,
                     c->url, why);
            return;
        }
    }
    if (c->state == C_DOWN && !c->pid && !c->in_table && router_ready(s) &&
        now >= c->next_start_ms)
        start_replica(s, c, now);
    if (c->state == C_STARTING) {
        struct replica_line_arg a = {c};
        sched_logtail_poll(&c->tail, replica_line, &a);
        if (c->url[0]) {
            c->state = C_READY;
            c->ready_ms = now;
            LOG_INFO("%s: ready (pid %d) at %s, %s version %ld, after %ld ms", c->name,
                     (int)c->pid, c->url, m->name, m->version, now - c->started_ms);
        }
    }
    if (c->state == C_READY && !c->in_table && !c->hold && router_ready(s) &&
        now >= c->retry_ms) {
        if (sup_control(s, "/v1/replicas", sched_ctl_add_body(m->name, m->version, c->url), 0, why,
                    sizeof why) == 0) {
            c->in_table = 1;
            LOG_INFO("%s: added %s to the router's table (acknowledged: %s)", c->name, c->url,
                     why);
        } else {
            c->retry_ms = now + 1000;
            LOG_WARN("%s: adding %s to the router's table failed: %s; again in 1 s", c->name,
                     c->url, why);
        }
    }
}

/* Health (issue 12, item 3): every health.interval_ms, the replica's own answer within
 * health.timeout_ms. No answer, or one that says not live (its executor makes no
 * progress), is a miss; health.failure_threshold misses in a row and the replica is
 * taken out of the router's table (acknowledged), SIGKILLed (a stopped process too)
 * and, once reaped, restarted like any exit (backoff, crash count). */
static void step_health(struct sup *s, struct child *c, long now)
{
    const struct sched_config *cfg = s->cfg;
    struct sched_health h;
    char why[700];

    if (c->state != C_READY || !c->pid || c->unhealthy)
        return;
    if (!c->probe.open) {
        struct cerr e = {0};
        if (now < c->next_probe_ms)
            return;
        if (sched_probe_open(&c->probe, c->url, &e)) {
            c->next_probe_ms = now + cfg->health.interval_ms;
            LOG_WARN("%s: cannot health-check %s: %s; again in %ld ms", c->name, c->url, e.msg,
                     cfg->health.interval_ms);
            return;
        }
        c->misses = 0;
        c->next_probe_ms = now;
    }
    if (sched_probe_poll(&c->probe, &h)) {
        if (h.ok && h.live) {
            if (c->misses)
                LOG_INFO("%s: health check answered again (live, %s) after %d miss%s", c->name,
                         h.state, c->misses, c->misses == 1 ? "" : "es");
            c->misses = 0;
        } else {
            c->misses++;
            if (h.ok)
                snprintf(c->last_miss, sizeof c->last_miss, "not live (%s: %s)", h.state, h.why);
            else
                snprintf(c->last_miss, sizeof c->last_miss, "%s", h.why);
            LOG_WARN("%s: health check of %s failed (%d of %d in a row): %s", c->name, c->url,
                     c->misses, cfg->health.failure_threshold, c->last_miss);
        }
    }
    if (c->misses < cfg->health.failure_threshold) {
        if (!c->probe.busy && now >= c->next_probe_ms) {
            if (sched_probe_start(&c->probe, cfg->health.timeout_ms) == 0)
                c->next_probe_ms = now + cfg->health.interval_ms;
            else
                c->next_probe_ms = now + SCHED_TICK_MS;
        }
        return;
    }
    LOG_WARN("%s: unhealthy (pid %d at %s): %d health checks in a row failed, the last: %s; "
             "out of the router's table, then SIGKILL and a replacement", c->name, (int)c->pid,
             c->url, c->misses, c->last_miss);
    sched_probe_close(&c->probe);
    if (c->in_table && router_ready(s)) {
        if (remove_from_table(s, c, why, sizeof why) != 0) {
            /* It answers nothing anyway; removed again before its successor starts. */
            LOG_WARN("%s: removing %s from the router's table failed: %s; killing it anyway",
                     c->name, c->url, why);
        }
    }
    /* SIGKILL needs no SIGCONT: it ends a stopped process too. */
    kill(c->pid, SIGKILL);
    c->unhealthy = 1;
    snprintf(c->last_error, sizeof c->last_error, "unhealthy: %d health checks in a row failed, "
             "the last: %s", c->misses, c->last_miss);
    LOG_WARN("%s: SIGKILL sent (pid %d) after %d failed health checks", c->name, (int)c->pid,
             c->misses);
}

static void reset_when_stable(struct child *c, long now)
{
    if (c->state == C_READY && c->crashes && now - c->ready_ms >= SCHED_STABLE_MS) {
        c->crashes = 0;
        c->backoff_ms = SCHED_BACKOFF_MIN_MS;
    }
}

static void stop_child(struct sup *s, struct child *c, long now);

/* A replica that apply scaled away (rule 2): out of the router's table (acknowledged)
 * before it is told to stop, so no new request is sent to it; then SIGTERM (its own
 * drain answers what it holds) and waited for. One not ready yet is not in the table
 * and is only stopped. */
static void step_retire(struct sup *s, struct child *c, long now)
{
    char why[700];
    if (c->in_table) {
        if (!router_ready(s) || now < c->retry_ms)
            return;
        if (sup_control(s, "/v1/replicas/remove", sched_ctl_url_body(c->url), 404, why,
                    sizeof why) != 0) {
            c->retry_ms = now + 1000;
            LOG_WARN("%s: removing %s from the router's table failed: %s; again in 1 s",
                     c->name, c->url, why);
            return;
        }
        c->in_table = 0;
        LOG_INFO("%s: scaled down: removed %s from the router's table (acknowledged: %s)",
                 c->name, c->url, why);
    }
    if (c->pid) {
        sched_probe_close(&c->probe);
        stop_child(s, c, now);
    }
}

/* Frees the retired replicas that are gone and out of the table. */
static void drop_retired(struct sup *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        if (c->retiring && !c->pid && !c->in_table) {
            LOG_INFO("%s: scaled down: stopped and gone", c->name);
            sched_probe_close(&c->probe);
            free(c);
            continue;
        }
        s->reps[k++] = c;
    }
    s->n = k;
}

static void reconcile(struct sup *s, long now)
{
    if (s->router.state == C_FAILED) {
        LOG_ERROR("the router failed; stopping the cluster");
        s->stopping = 1;
        s->status = 1;
        return;
    }
    step_router(s, now);
    reset_when_stable(&s->router, now);
    sup_rollout_step(s, now);
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        if (c->retiring) {
            step_retire(s, c, now);
            continue;
        }
        step_replica(s, c, now);
        step_health(s, c, now);
        reset_when_stable(c, now);
    }
    drop_retired(s);
}

/* SIGTERM once; SIGKILL when it outlives the drain timeout and a grace period. */
static void stop_child(struct sup *s, struct child *c, long now)
{
    if (!c->term_sent) {
        kill(c->pid, SIGTERM);
        c->term_sent = 1;
        c->term_ms = now;
        LOG_INFO("%s: SIGTERM sent (pid %d); waiting for it to exit", c->name, (int)c->pid);
    } else if (!c->killed && now - c->term_ms > s->cfg->rollout.drain_timeout_ms +
                                                    SCHED_STOP_GRACE_MS) {
        kill(c->pid, SIGKILL);
        c->killed = 1;
        LOG_WARN("%s: still running %ld ms after SIGTERM; SIGKILL sent (pid %d)", c->name,
                 now - c->term_ms, (int)c->pid);
    }
}

/* One step of the shutdown; 1 when every child is gone. */
static int shut_down(struct sup *s, long now)
{
    char why[700];
    int left = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->reps[i];
        if (!c->pid)
            continue;
        left++;
        /* Drained in the table (acknowledged by every router thread) before it is told
         * to stop (rule 2); its own drain then answers what it holds. */
        if (!c->term_sent && c->in_table && router_ready(s)) {
            if (sup_control(s, "/v1/replicas/drain", sched_ctl_url_body(c->url), 404, why,
                        sizeof why) == 0)
                LOG_INFO("%s: drained %s in the router's table (acknowledged: %s)", c->name,
                         c->url, why);
            else
                LOG_WARN("%s: draining %s in the router's table failed: %s; stopping it anyway",
                         c->name, c->url, why);
        }
        stop_child(s, c, now);
    }
    if (left)
        return 0;
    if (s->router.pid) {
        stop_child(s, &s->router, now);
        return 0;
    }
    return 1;
}

static void init_child(struct child *c, const char *state_dir, const char *name,
                       const char *file)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->log_path, sizeof c->log_path, "%s/%s", state_dir, file);
    c->backoff_ms = SCHED_BACKOFF_MIN_MS;
    sched_probe_init(&c->probe);
}

/* A new replica child of model m placed as r, named "MODEL#N" with the lowest N no
 * running child of that model has; started by the next reconciliation step. */
struct child *sup_add_child(struct sup *s, const struct sched_model *m,
                            const struct sched_replica *r)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct child **g = realloc(s->reps, cap * sizeof *g);
        if (!g)
            return NULL;
        s->reps = g;
        s->cap = cap;
    }
    struct child *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    int idx = 0;
    for (int taken = 1; taken; idx += taken) {
        char want[SCHED_NAME_MAX + 16];
        snprintf(want, sizeof want, "%s#%d", m->name, idx);
        taken = 0;
        for (size_t i = 0; i < s->n && !taken; i++)
            taken = strcmp(s->reps[i]->name, want) == 0;
    }
    char name[SCHED_NAME_MAX + 16], file[SCHED_NAME_MAX + 24];
    snprintf(name, sizeof name, "%s#%d", m->name, idx);
    snprintf(file, sizeof file, "%s-%d.log", m->name, idx);
    init_child(c, s->o->state_dir, name, file);
    c->rep = *r;
    c->m = *m;
    s->reps[s->n++] = c;
    return c;
}

int sched_sup_run(const struct sched_sup_opts *o)
{
    struct sup s = {.o = o, .cfg = (struct sched_config *)o->cfg};
    sigset_t mask, old;
    int sfd = -1;

    init_child(&s.router, o->state_dir, "router", "router.log");
    s.router.is_router = 1;
    for (size_t i = 0; i < o->plan->n; i++) {
        const struct sched_replica *r = &o->plan->replicas[i];
        if (!sup_add_child(&s, &o->cfg->models[r->model], r)) {
            LOG_ERROR("out of memory");
            for (size_t k = 0; k < s.n; k++)
                free(s.reps[k]);
            free(s.reps);
            return 1;
        }
    }
    /* The control endpoint is dialled on loopback when the router listens on every
     * address. */
    const char *h = o->cfg->router.control.host;
    snprintf(s.ctl_host, sizeof s.ctl_host, "%s",
             strcmp(h, "0.0.0.0") == 0 || strcmp(h, "*") == 0 ? "127.0.0.1"
             : strcmp(h, "::") == 0                          ? "::1"
                                                             : h);

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &mask, &old) != 0 ||
        (sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        LOG_ERROR("signalfd: %s", strerror(errno));
        for (size_t i = 0; i < s.n; i++)
            free(s.reps[i]);
        free(s.reps);
        return 1;
    }
    struct cerr ae = {0};
    if (sched_admin_open(&s.admin, &o->cfg->admin.listen, o->cfg->admin.token_file, sup_status,
                         &s, &ae)) {
        LOG_ERROR("%s; nothing was started", ae.msg);
        close(sfd);
        sigprocmask(SIG_SETMASK, &old, NULL);
        for (size_t i = 0; i < s.n; i++)
            free(s.reps[i]);
        free(s.reps);
        return 1;
    }
    snprintf(s.state_path, sizeof s.state_path, "%s/scheduler-state.json", o->state_dir);
    sup_adopt(&s, sup_now_ms());
    sup_write_state(&s);
    LOG_INFO("running %s: %zu replica%s; state and logs in %s; SIGTERM or SIGINT stops the "
             "cluster (drained first)", o->cfg->path, s.n, s.n == 1 ? "" : "s", o->state_dir);

    s.admin.apply = sup_apply;
    s.admin.promote = sup_promote;
    int hup = 0;
    for (;;) {
        /* The signals and the admin API's sockets; the admin server never blocks. */
        struct pollfd p[1 + SCHED_ADMIN_POLLFDS];
        p[0].fd = sfd;
        p[0].events = POLLIN;
        p[0].revents = 0;
        size_t np = 1 + sched_admin_pollfds(&s.admin, p + 1, sizeof p / sizeof *p - 1);
        if (poll(p, (nfds_t)np, SCHED_TICK_MS) > 0 && p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if ((si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) && !s.stopping) {
                    LOG_INFO("%s: stopping the cluster: each replica drained in the router's "
                             "table, then stopped; then the router", strsignal((int)si.ssi_signo));
                    s.stopping = 1;
                }
                if (si.ssi_signo == SIGHUP)
                    hup = 1;
            }
        }
        long now = sup_now_ms();
        if (hup && !s.stopping)
            sup_reload(&s);
        hup = 0;
        sched_admin_serve(&s.admin, now);
        reap(&s, &s.router, now);
        for (size_t i = 0; i < s.n; i++)
            reap(&s, s.reps[i], now);
        if (!s.stopping)
            reconcile(&s, now);
        if (s.stopping && shut_down(&s, now))
            break;
        sup_write_state(&s);
    }
    sup_write_state(&s);
    free(s.last_state);
    LOG_INFO("stopped: every replica and the router exited; exit status %d", s.status);
    sched_admin_close(&s.admin);
    close(sfd);
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (size_t i = 0; i < s.n; i++)
        sched_probe_close(&s.reps[i]->probe);
    for (size_t i = 0; i < s.n; i++)
        free(s.reps[i]);
    free(s.reps);
    free(s.ro);
    free(s.restarts);
    if (s.cfg_owned) {
        sched_config_free(s.cfg);
        free(s.cfg);
    }
    return s.status;
}
