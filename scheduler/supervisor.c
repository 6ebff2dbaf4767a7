#include "supervisor.h"

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

enum child_state {
    C_DOWN,     /* not running; starts at next_start_ms (once out of the table) */
    C_STARTING, /* spawned; waiting for its log to say it listens / is ready */
    C_READY,    /* router: listening; replica: said ready (in the table or about to be) */
    C_FAILED,   /* crashed SCHED_CRASH_LIMIT times in a row; not restarted */
};

struct child {
    int is_router;
    char name[SCHED_NAME_MAX + 16]; /* "router", "digits#0" */
    char log_path[4200];
    struct sched_replica rep;        /* replicas only: its placement (rep.model indexes cfg) */
    struct sched_model m;            /* replicas only: its model's entry, as it was started */
    int retiring;                    /* apply scaled it away: out of the table, then stopped */
    enum child_state state;
    pid_t pid;                       /* 0: none */
    unsigned long long start_time;   /* pid's start time (/proc/PID/stat field 22) */
    int adopted;                     /* a previous scheduler's child: watched by pid and
                                        start time, never waited for */
    long started_ms, ready_ms, next_start_ms, retry_ms;
    int crashes;                     /* exits in a row */
    long backoff_ms;
    struct sched_logtail tail;
    char url[256];                   /* replica: tcp://127.0.0.1:PORT it said it serves on */
    int in_table;                    /* replica: in the router's table (acknowledged) */
    int term_sent;                   /* shutdown: SIGTERM sent */
    long term_ms;
    int killed;                      /* shutdown: SIGKILL sent */
    /* Health checks (replicas in C_READY): one probe in flight at a time. */
    struct sched_probe probe;
    long next_probe_ms;
    int misses;                      /* failed probes in a row */
    int unhealthy;                   /* failure_threshold reached: SIGKILL sent */
    char last_miss[300];
    /* For the admin API. */
    int starts;                      /* successful spawns; restarts = starts - 1 */
    char last_error[1400];           /* the last exit, failure or health verdict; "" none */
};

struct sup {
    const struct sched_sup_opts *o;
    struct sched_config *cfg;  /* the config in force: o->cfg, then the last one applied */
    int cfg_owned;             /* cfg is ours to free (not o->cfg) */
    struct child router;
    struct child **reps;       /* each allocated on its own: a probe's aio points into it */
    size_t n, cap;
    int stopping, status;
    int http_port, rpc_port, ctl_port; /* learned from the router's log; 0: not yet */
    int seen_http, seen_ctl;           /* this run of the router said so */
    char ctl_host[SCHED_HOST_MAX];
    struct sched_admin admin;
    char state_path[4200];
    char *last_state;          /* what the state file holds (JSON), to write changes only */
};

static long now_ms(void)
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

/* ---- processes by pid and start time ----------------------------------------------- */

/* The start time of pid (/proc/PID/stat field 22, clock ticks since boot); 0 when the
 * process is gone or a zombie (exited, not yet reaped by its parent). */
static unsigned long long proc_start_time(pid_t pid)
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
static int same_process(pid_t pid, unsigned long long start_time)
{
    if (pid <= 0 || !start_time)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    return proc_start_time(pid) == start_time;
}

/* ---- the router's control endpoint ------------------------------------------------ */

/* POSTs body to path; 0 when the router answered 200 (or one of `ok_too`). */
static int control(struct sup *s, const char *path, char *body, int ok_too, char *why,
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

static int port_or_learned(int configured, int learned)
{
    return configured == 0 && learned ? learned : configured;
}

static void fmt_addr(char *buf, size_t len, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(buf, len, "[%s]:%d", host, port);
    else
        snprintf(buf, len, "%s:%d", host, port);
}

static void start_router(struct sup *s, long now)
{
    const struct sched_config *cfg = s->cfg;
    struct child *c = &s->router;
    char listen[SCHED_HOST_MAX + 16], ctl[SCHED_HOST_MAX + 16], rpc[SCHED_HOST_MAX + 32];
    char threads[16], drain[32];
    struct cerr e = {0};

    /* A port 0 in the config was chosen by the first router; its successors take the
     * same one, so that clients and the scheduler find the router where it was. */
    fmt_addr(listen, sizeof listen, cfg->router.listen.host,
             port_or_learned(cfg->router.listen.port, s->http_port));
    fmt_addr(ctl, sizeof ctl, cfg->router.control.host,
             port_or_learned(cfg->router.control.port, s->ctl_port));
    if (cfg->router.rpc_off) {
        snprintf(rpc, sizeof rpc, "off");
    } else {
        char a[SCHED_HOST_MAX + 16];
        fmt_addr(a, sizeof a, cfg->router.rpc.host, port_or_learned(cfg->router.rpc.port, s->rpc_port));
        snprintf(rpc, sizeof rpc, "tcp://%s", a);
    }
    snprintf(threads, sizeof threads, "%d", cfg->router.threads);
    snprintf(drain, sizeof drain, "%ld", cfg->rollout.drain_timeout_ms);
    /* The router probes replicas on the cluster's health interval too, so a stopped one
     * leaves rotation on the schedule the config names. */
    char health[24];
    snprintf(health, sizeof health, "%ld", (long)cfg->health.interval_ms);
    char *argv[] = {(char *)s->o->router_bin, "--listen", listen, "--rpc-listen", rpc,
                    "--threads", threads, "--control-listen", ctl, "--drain-timeout-ms", drain,
                    "--health-interval-ms", health, NULL};
    struct sched_spawn sp = {.argv = argv, .log_path = c->log_path};
    sched_logtail_start(&c->tail, c->log_path);
    c->started_ms = now;
    s->seen_http = s->seen_ctl = 0;
    if (sched_spawn(&sp, &c->pid, &e)) {
        LOG_ERROR("router: cannot start %s: %s", s->o->router_bin, e.msg);
        snprintf(c->last_error, sizeof c->last_error, "cannot start: %s", e.msg);
        c->pid = 0;
        c->next_start_ms = now + c->backoff_ms;
        return;
    }
    c->state = C_STARTING;
    c->starts++;
    c->adopted = 0;
    c->start_time = proc_start_time(c->pid);
    LOG_INFO("router: started (pid %d): %s --listen %s --rpc-listen %s --threads %s "
             "--control-listen %s --drain-timeout-ms %s --health-interval-ms %s; log %s",
             (int)c->pid, s->o->router_bin, listen, rpc, threads, ctl, drain, health,
             c->log_path);
}

static void start_replica(struct sup *s, struct child *c, long now)
{
    const struct sched_config *cfg = s->cfg;
    const struct sched_replica *r = &c->rep;
    const struct sched_model *m = &c->m;
    char version[32], threads[16], drain[32], where[300];
    struct cerr e = {0};
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
    sched_logtail_start(&c->tail, c->log_path);
    c->started_ms = now;
    c->url[0] = '\0';
    if (sched_spawn(&sp, &c->pid, &e)) {
        LOG_ERROR("%s: cannot start %s: %s", c->name, s->o->replica_bin, e.msg);
        snprintf(c->last_error, sizeof c->last_error, "cannot start: %s", e.msg);
        c->pid = 0;
        c->next_start_ms = now + c->backoff_ms;
        return;
    }
    c->state = C_STARTING;
    c->starts++;
    c->adopted = 0;
    c->start_time = proc_start_time(c->pid);
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
        /* Its table went with it; a new router starts empty and every ready replica
         * is added again. */
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
        if (!same_process(c->pid, c->start_time))
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
             c->crashes ? "; its table starts empty, so every ready replica is added again" : "");
}

static void step_replica(struct sup *s, struct child *c, long now)
{
    const struct sched_model *m = &c->m;
    char why[700];

    /* Out of the table before anything else: a replica that is gone must not be
     * picked, and its successor (on a new URL) must not start while it is listed. */
    if ((c->state == C_DOWN || c->state == C_FAILED) && c->in_table && router_ready(s) &&
        now >= c->retry_ms) {
        if (control(s, "/v1/replicas/remove", sched_ctl_url_body(c->url), 404, why,
                    sizeof why) == 0) {
            c->in_table = 0;
            LOG_INFO("%s: removed %s from the router's table (acknowledged: %s)", c->name, c->url,
                     why);
        } else {
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
    if (c->state == C_READY && !c->in_table && router_ready(s) && now >= c->retry_ms) {
        if (control(s, "/v1/replicas", sched_ctl_add_body(m->name, m->version, c->url), 0, why,
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
        if (control(s, "/v1/replicas/remove", sched_ctl_url_body(c->url), 404, why,
                    sizeof why) == 0) {
            c->in_table = 0;
            LOG_INFO("%s: removed %s from the router's table (acknowledged: %s)", c->name, c->url,
                     why);
        } else {
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
        if (control(s, "/v1/replicas/remove", sched_ctl_url_body(c->url), 404, why,
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
            if (control(s, "/v1/replicas/drain", sched_ctl_url_body(c->url), 404, why,
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

/* ---- the admin API's status -------------------------------------------------------- */

static const char *state_name(const struct sup *s, const struct child *c)
{
    if (c->state == C_FAILED)
        return "failed";
    if (s->stopping || c->unhealthy || c->term_sent || c->retiring)
        return "stopping";
    switch (c->state) {
    case C_READY:
        /* A replica is ready once it takes traffic: in the router's table. */
        return c->is_router || c->in_table ? "ready" : "starting";
    case C_STARTING: return c->starts > 1 ? "restarting" : "starting";
    case C_DOWN: return c->starts ? "restarting" : "starting";
    default: return "failed";
    }
}

/* A JSON string of text that may come from a log (any bytes): as is when it is valid
 * UTF-8, else with every byte outside ASCII replaced by '?'. */
static json_t *jtext(const char *t)
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
    json_object_set_new(o, "state", json_string(state_name(s, c)));
    json_object_set_new(o, "pid", c->pid ? json_integer(c->pid) : json_null());
    json_object_set_new(o, "uptime_s", c->pid ? json_real((double)(now - c->started_ms) / 1000.0)
                                              : json_null());
    json_object_set_new(o, "restarts", json_integer(c->starts > 1 ? c->starts - 1 : 0));
    json_object_set_new(o, "crashes_in_a_row", json_integer(c->crashes));
    json_object_set_new(o, "last_error", c->last_error[0] ? jtext(c->last_error)
                                                          : json_null());
}

/* The snapshot GET /v1/status answers (admin.h; its fields: docs/operations.md,
 * "Running a cluster"); a new reference, NULL when out of memory. */
static json_t *sup_status(void *arg)
{
    struct sup *s = arg;
    const struct sched_config *cfg = s->cfg;
    long now = now_ms();
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
        snprintf(url, sizeof url, "http://%s:%d", cfg->router.listen.host, s->http_port);
        json_object_set_new(router, "http", json_string(url));
    } else {
        json_object_set_new(router, "http", json_null());
    }
    if (s->ctl_port) {
        snprintf(url, sizeof url, "http://%s:%d", s->ctl_host, s->ctl_port);
        json_object_set_new(router, "control", json_string(url));
    } else {
        json_object_set_new(router, "control", json_null());
    }
    if (cfg->router.rpc_off) {
        json_object_set_new(router, "rpc", json_string("off"));
    } else {
        snprintf(url, sizeof url, "tcp://%s:%d", cfg->router.rpc.host,
                 port_or_learned(cfg->router.rpc.port, s->rpc_port));
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
        long long ready = 0, restarts = 0, failed = 0;
        for (size_t i = 0; i < s->n; i++) {
            const struct child *c = s->reps[i];
            if (c->retiring || strcmp(c->m.name, m->name) != 0)
                continue;
            ready += strcmp(state_name(s, c), "ready") == 0;
            failed += c->state == C_FAILED;
            restarts += c->starts > 1 ? c->starts - 1 : 0;
        }
        json_t *o = json_pack("{s:s, s:I, s:i, s:I, s:I, s:I}", "name", m->name, "version",
                              (json_int_t)m->version, "desired", m->replicas, "ready",
                              (json_int_t)ready, "failed", (json_int_t)failed, "restarts",
                              (json_int_t)restarts);
        if (o)
            json_array_append_new(models, o);
    }
    json_object_set_new(root, "models", models);
    return root;
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
    json_object_set_new(o, "state", json_string(state_name(s, c)));
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
                 port_or_learned(s->cfg->router.rpc.port, s->rpc_port));
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
static void write_state(struct sup *s)
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
 * now_ms()'s clock; `now` when unknown. */
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

static int rec_alive(const json_t *rec, pid_t *pid, unsigned long long *start)
{
    *pid = (pid_t)json_integer_value(json_object_get(rec, "pid"));
    *start = (unsigned long long)json_integer_value(json_object_get(rec, "start_time"));
    return same_process(*pid, *start);
}

/*
 * Observes before acting (item 4): reads the state file a previous scheduler left,
 * and adopts the router and the replicas that still run (same pid and start time),
 * so that no second set is started. The router's table (GET /v1/replicas) says which
 * adopted replicas it lists: one missing is added by the next step; one recorded but
 * gone and still listed is removed, then replaced; a listed URL nobody owns is
 * removed. Each adopted replica's health is checked by the loop from its first tick.
 */
static void adopt(struct sup *s, long now)
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
            c->pid = pid;
            c->start_time = start;
            c->adopted = 1;
            c->state = C_READY;
            c->started_ms = started_at(start, now);
            c->ready_ms = now;
            c->starts = 1;
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
    json_array_foreach(json_object_get(st, "replicas"), i, rec) {
        const char *name = json_string_value(json_object_get(rec, "name")) ?: "";
        const char *model = json_string_value(json_object_get(rec, "model")) ?: "";
        const char *url = json_string_value(json_object_get(rec, "url")) ?: "";
        long version = (long)json_integer_value(json_object_get(rec, "version"));
        int live = rec_alive(rec, &pid, &start);
        struct child *c = NULL;
        for (size_t k = 0; k < s->n && !c; k++)
            if (strcmp(s->reps[k]->name, name) == 0 && strcmp(s->reps[k]->m.name, model) == 0 &&
                s->reps[k]->m.version == version && !s->reps[k]->pid)
                c = s->reps[k];
        int listed = url[0] && (table ? table_has(table, url)
                                      : router_adopted &&
                                            json_is_true(json_object_get(rec, "in_table")));
        if (live && c && url[0] && !json_is_true(json_object_get(rec, "retiring"))) {
            c->pid = pid;
            c->start_time = start;
            c->adopted = 1;
            c->state = C_READY;
            c->started_ms = started_at(start, now);
            c->ready_ms = now;
            c->starts = 1;
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
            if (listed && control(s, "/v1/replicas/remove", sched_ctl_url_body(url), 404, why,
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
        if (control(s, "/v1/replicas/remove", sched_ctl_url_body(url), 404, why, sizeof why) == 0)
            LOG_INFO("router: removed %s from its table: no replica of this cluster serves there "
                     "(acknowledged: %s)", url, why);
        else
            LOG_WARN("router: removing the unknown %s from its table failed: %s", url, why);
    }
    json_decref(claimed);
    json_decref(table);
    json_decref(st);
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
static struct child *add_child(struct sup *s, const struct sched_model *m,
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

/* ---- apply (issue 12, item 6) ------------------------------------------------------ */

static void add_line(json_t *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_line(json_t *arr, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json_array_append_new(arr, jtext(buf));
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
static void refusals(const struct sched_config *o, const struct sched_config *n, json_t *errs)
{
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
    NUM("rollout.max_surge", rollout.max_surge);
    NUM("rollout.drain_timeout_ms", rollout.drain_timeout_ms);
    NUM("rollout.soak_ms", rollout.soak_ms);
    NUM("oversubscribe", oversubscribe);
    for (size_t i = 0; i < n->n_models; i++) {
        const struct sched_model *nm = &n->models[i];
        for (size_t k = 0; k < o->n_models; k++) {
            const struct sched_model *om = &o->models[k];
            if (strcmp(om->name, nm->name) != 0)
                continue;
            if (om->version != nm->version)
                add_line(errs, "models[%zu].version: changing %s's version (running %ld, the new "
                         "config says %ld) needs a rolling update, which is not built yet; not "
                         "applied", i, nm->name, om->version, nm->version);
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
        json_array_append_new(errs, jtext(verrs->lines[i]));
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
    refusals(s->cfg, n, errs);
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
            json_array_append_new(errs, jtext(perrs.lines[i]));
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
            keep_child[r->keep_index]->rep = *r;
            keep_child[r->keep_index]->m = n->models[r->model];
            continue;
        }
        struct child *c = add_child(s, &n->models[r->model], r);
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
static json_t *sup_apply(void *arg, const char *body, size_t len, int dry_run, int *http)
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
static void sup_reload(struct sup *s)
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

int sched_sup_run(const struct sched_sup_opts *o)
{
    struct sup s = {.o = o, .cfg = (struct sched_config *)o->cfg};
    sigset_t mask, old;
    int sfd = -1;

    init_child(&s.router, o->state_dir, "router", "router.log");
    s.router.is_router = 1;
    for (size_t i = 0; i < o->plan->n; i++) {
        const struct sched_replica *r = &o->plan->replicas[i];
        if (!add_child(&s, &o->cfg->models[r->model], r)) {
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
    adopt(&s, now_ms());
    write_state(&s);
    LOG_INFO("running %s: %zu replica%s; state and logs in %s; SIGTERM or SIGINT stops the "
             "cluster (drained first)", o->cfg->path, s.n, s.n == 1 ? "" : "s", o->state_dir);

    s.admin.apply = sup_apply;
    int hup = 0;
    for (;;) {
        /* The signals and the admin API's sockets; the admin server never blocks. */
        struct pollfd p[1 + SCHED_ADMIN_MAX_CONNS + 1];
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
        long now = now_ms();
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
        write_state(&s);
    }
    write_state(&s);
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
    if (s.cfg_owned) {
        sched_config_free(s.cfg);
        free(s.cfg);
    }
    return s.status;
}
