#include "admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "httphead.h"
#include "httpd.h"
#include "log.h"
#include "token.h"

/* The operator page (admin_page.html), generated at build time by embed.cmake. */
extern const char sched_admin_page[];

/* Headers of the page: it runs its own inline script and style, fetches only from this
 * server, and is never framed; nothing else loads. */
#define PAGE_HEADERS                                                                          \
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "              \
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "        \
    "form-action 'none'; frame-ancestors 'none'\r\n"                                          \
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"

/* ---- a growable string --------------------------------------------------------------- */

struct str {
    char *p;
    size_t len, cap;
    int oom;
};

static void __attribute__((format(printf, 2, 3))) str_printf(struct str *s, const char *fmt, ...)
{
    if (s->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = s->cap - s->len;
        int n = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            s->oom = 1;
            return;
        }
        if (s->p && (size_t)n < room) {
            s->len += (size_t)n;
            return;
        }
        size_t want = s->len + (size_t)n + 1;
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < want)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (!np) {
            s->oom = 1;
            return;
        }
        s->p = np;
        s->cap = cap;
    }
}

/* A Prometheus label value: \ " and newline escaped. */
static void str_label(struct str *s, const char *v)
{
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            str_printf(s, "\\%c", *v);
        else if (*v == '\n')
            str_printf(s, "\\n");
        else
            str_printf(s, "%c", *v);
    }
}

/* ---- listening --------------------------------------------------------------------- */

static void handle(void *arg, const struct httpd_request *rq, struct httpd_conn *c);

int sched_admin_open(struct sched_admin *a, const struct sched_addr *where,
                     const char *token_file, sched_admin_status_fn status, void *arg,
                     struct cerr *e)
{
    memset(a, 0, sizeof *a);
    sched_scrape_init(&a->scrape);
    a->status = status;
    a->arg = arg;
    if (token_file && token_read(token_file, &a->token, e))
        return cerr_prefix(e, "admin.token_file");
    struct httpd_options opt = HTTPD_OPTIONS_DEFAULT;
    opt.max_conns = SCHED_ADMIN_MAX_CONNS;
    opt.max_head = SCHED_ADMIN_REQ_MAX;
    opt.max_body = SCHED_CONFIG_MAX_BYTES;
    opt.deadline_ms = SCHED_ADMIN_DEADLINE_MS;
    opt.json_errors = 1;
    opt.name = "admin";
    if (httpd_open(&a->httpd, where->host, where->port, &opt, handle, a, e)) {
        sched_admin_close(a);
        return cerr_prefix(e, "admin.listen %s", where->text);
    }
    int bound = httpd_port(a->httpd);
    if (strchr(where->host, ':'))
        snprintf(a->url, sizeof a->url, "http://[%s]:%d", where->host, bound);
    else
        snprintf(a->url, sizeof a->url, "http://%s:%d", where->host, bound);
    LOG_INFO("corral-scheduler admin listening on %s (%s)", a->url,
             a->token ? "every call needs its bearer token" : "no token needed");
    return CORRAL_OK;
}

void sched_admin_close(struct sched_admin *a)
{
    httpd_close(a->httpd);
    a->httpd = NULL;
    sched_scrape_free(&a->scrape);
    if (a->token) {
        /* Not left in freed memory. */
        volatile char *t = a->token;
        for (size_t i = 0; t[i]; i++)
            t[i] = 0;
        free(a->token);
        a->token = NULL;
    }
}

size_t sched_admin_pollfds(const struct sched_admin *a, struct pollfd *fds, size_t cap)
{
    size_t n = a->httpd ? httpd_pollfds(a->httpd, fds, cap) : 0;
    if (n < cap && sched_scrape_pollfd(&a->scrape, &fds[n]))
        n++;
    return n;
}

/* ---- answers ----------------------------------------------------------------------- */

static void answer(struct httpd_conn *c, int status, const char *ctype, const char *body,
                   const char *extra_headers)
{
    httpd_reply(c, status, ctype, extra_headers, body ? body : "", body ? strlen(body) : 0);
}

static void answer_json(struct httpd_conn *c, int status, json_t *body,
                        const char *extra_headers)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    if (!text) {
        answer(c, 500, "application/json", "{\"error\":\"out of memory\"}\n", NULL);
        return;
    }
    struct str s = {0};
    str_printf(&s, "%s\n", text);
    free(text);
    answer(c, status, "application/json", s.oom ? "{}\n" : s.p, extra_headers);
    free(s.p);
}

static void __attribute__((format(printf, 4, 5)))
answer_error(struct httpd_conn *c, int status, const char *extra_headers, const char *fmt,
             ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s}", "error", msg);
    answer_json(c, status, o, extra_headers);
    json_decref(o);
}

static long long int_of(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* One sample per model: NAME{model="..."} models[].FIELD. */
static void per_model(struct str *s, const json_t *models, const char *name, const char *field)
{
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        str_printf(s, "%s{model=\"", name);
        str_label(s, json_string_value(json_object_get(m, "name")));
        str_printf(s, "\"} %lld\n", int_of(m, field));
    }
}

char *sched_admin_metrics(const json_t *st)
{
    static const char *const states[] = {"starting", "soaking", "ready", "restarting", "failed",
                                         "stopping"};
    struct str s = {0};
    const json_t *models = json_object_get(st, "models");
    const json_t *reps = json_object_get(st, "replicas");
    const json_t *router = json_object_get(st, "router");
    size_t i;
    json_t *m;

    str_printf(&s, "# HELP corral_scheduler_replica_restarts_total Restarts of the model's "
                   "replicas (every start after a replica's first).\n"
                   "# TYPE corral_scheduler_replica_restarts_total counter\n");
    per_model(&s, models, "corral_scheduler_replica_restarts_total", "restarts");
    str_printf(&s, "# HELP corral_scheduler_replicas_desired Replicas the config asks for, by "
                   "model.\n# TYPE corral_scheduler_replicas_desired gauge\n");
    per_model(&s, models, "corral_scheduler_replicas_desired", "desired");
    str_printf(&s, "# HELP corral_scheduler_replicas_ready Replicas ready and in the router's "
                   "table, by model.\n# TYPE corral_scheduler_replicas_ready gauge\n");
    per_model(&s, models, "corral_scheduler_replicas_ready", "ready");
    str_printf(&s, "# HELP corral_scheduler_rollout_state A model's last rolling update: 1 on "
                   "the state it is in.\n# TYPE corral_scheduler_rollout_state gauge\n");
    static const char *const ro_states[] = {"rolling", "canary", "aborting", "done", "aborted"};
    json_array_foreach(models, i, m)
    {
        const char *now = json_string_value(json_object_get(json_object_get(m, "rollout"),
                                                            "state"));
        for (size_t k = 0; now && k < sizeof ro_states / sizeof *ro_states; k++) {
            str_printf(&s, "corral_scheduler_rollout_state{model=\"");
            str_label(&s, json_string_value(json_object_get(m, "name")));
            str_printf(&s, "\",state=\"%s\"} %d\n", ro_states[k], strcmp(now, ro_states[k]) == 0);
        }
    }
    str_printf(&s, "# HELP corral_scheduler_replicas Replicas by state.\n"
                   "# TYPE corral_scheduler_replicas gauge\n");
    for (size_t k = 0; k < sizeof states / sizeof *states; k++) {
        long long n = 0;
        json_t *r;
        json_array_foreach(reps, i, r)
        {
            const char *v = json_string_value(json_object_get(r, "state"));
            n += v && strcmp(v, states[k]) == 0;
        }
        str_printf(&s, "corral_scheduler_replicas{state=\"%s\"} %lld\n", states[k], n);
    }
    const char *rs = json_string_value(json_object_get(router, "state"));
    str_printf(&s, "# HELP corral_scheduler_router_restarts_total Restarts of the router.\n"
                   "# TYPE corral_scheduler_router_restarts_total counter\n"
                   "corral_scheduler_router_restarts_total %lld\n"
                   "# HELP corral_scheduler_router_ready Whether the router is listening (1) "
                   "or not (0).\n# TYPE corral_scheduler_router_ready gauge\n"
                   "corral_scheduler_router_ready %d\n",
               int_of(router, "restarts"), rs && strcmp(rs, "ready") == 0);
    if (s.oom) {
        free(s.p);
        return NULL;
    }
    return s.p ? s.p : strdup("");
}

/* Every model with desired > 0 has a ready replica. */
static int models_ready(const json_t *st)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(st, "models"), i, m)
    {
        if (int_of(m, "desired") > 0 && int_of(m, "ready") < 1)
            return 0;
    }
    return 1;
}

/* Each model's request rate and p99 from the router's metrics, merged into the
 * snapshot; reading the status keeps the scraper going (scrape.h). */
static void add_traffic(struct sched_admin *a, json_t *st)
{
    size_t i;
    json_t *m;
    sched_scrape_wanted(&a->scrape, a->now_ms);
    json_array_foreach(json_object_get(st, "models"), i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (name)
            json_object_set_new(m, "traffic", sched_scrape_traffic(&a->scrape, name));
    }
}

/* POST /v1/promote {"model": NAME}: finishes that model's canary. */
static void promote(struct sched_admin *a, const struct httpd_request *rq, struct httpd_conn *c)
{
    const char *method = rq->method;
    if (strcmp(method, "POST") != 0) {
        answer_error(c, 405, "Allow: POST\r\n", "/v1/promote takes POST only, not %.15s",
                     method);
        return;
    }
    json_error_t je;
    json_t *req = json_loadb(rq->body, rq->body_len, 0, &je);
    const char *model = json_string_value(json_object_get(req, "model"));
    if (!model || !model[0]) {
        answer_error(c, 400, NULL, "%s: expected a JSON object {\"model\": NAME}",
                     req ? "model: missing or not a non-empty string" : je.text);
        json_decref(req);
        return;
    }
    int status = 500;
    json_t *ans = a->promote(a->arg, model, &status);
    json_decref(req);
    if (!ans) {
        answer_error(c, 500, NULL, "out of memory promoting");
        return;
    }
    answer_json(c, status, ans, NULL);
    json_decref(ans);
}

/* One request, whole (common/httpd.h has checked its request line and read its body). */
static void handle(void *arg, const struct httpd_request *rq, struct httpd_conn *c)
{
    struct sched_admin *a = arg;
    const char *method = rq->method, *target = rq->path;

    /* The page holds no data; it asks for the token itself when /v1/status wants one. */
    if (strcmp(target, "/") == 0 && strcmp(method, "GET") == 0) {
        answer(c, 200, "text/html; charset=utf-8", sched_admin_page, PAGE_HEADERS);
        return;
    }
    if (a->token) {
        char auth[TOKEN_MAX + 64];
        const char *why = NULL;
        if (httphead_get(rq->head, rq->head_len, "Authorization", auth, sizeof auth) != 0)
            why = "missing";
        else if (strncasecmp(auth, "Bearer ", 7) != 0)
            why = "not a bearer token";
        else if (!token_equal(a->token, auth + 7, strlen(auth + 7)))
            why = "wrong";
        memset(auth, 0, sizeof auth);
        if (why) {
            LOG_WARN("admin: refused %s (401): the bearer token is %s", method, why);
            answer_error(c, 401, "WWW-Authenticate: Bearer\r\n",
                         "this admin API needs Authorization: Bearer TOKEN (admin.token_file); "
                         "the token sent is %s", why);
            return;
        }
    }

    if (a->apply && strcmp(target, "/v1/apply") == 0) {
        if (strcmp(method, "POST") != 0) {
            answer_error(c, 405, "Allow: POST\r\n", "%s takes POST only, not %.15s", target,
                         method);
            return;
        }
        int dry = strncmp(rq->query, "dry_run=1", 9) == 0 ||
                  strncmp(rq->query, "dry_run=true", 12) == 0;
        int status = 500;
        json_t *ans = a->apply(a->arg, rq->body, rq->body_len, dry, &status);
        if (!ans) {
            answer_error(c, 500, NULL, "out of memory applying the config");
            return;
        }
        answer_json(c, status, ans, NULL);
        json_decref(ans);
        return;
    }
    if (a->promote && strcmp(target, "/v1/promote") == 0) {
        promote(a, rq, c);
        return;
    }
    int known = strcmp(target, "/v1/status") == 0 || strcmp(target, "/v1/health") == 0 ||
                strcmp(target, "/metrics") == 0 || strcmp(target, "/") == 0;
    if (!known) {
        answer_error(c, 404, NULL, "no such path; the admin API serves GET / (the operator "
                                   "page), GET /v1/status, GET /v1/health, GET /metrics, "
                                   "POST /v1/apply and POST /v1/promote");
        return;
    }
    if (strcmp(method, "GET") != 0) {
        answer_error(c, 405, "Allow: GET\r\n", "%s takes GET only, not %.15s", target, method);
        return;
    }
    json_t *st = a->status(a->arg);
    if (!st) {
        answer_error(c, 500, NULL, "out of memory building the status");
        return;
    }
    if (strcmp(target, "/v1/status") == 0) {
        add_traffic(a, st);
        answer_json(c, 200, st, NULL);
    } else if (strcmp(target, "/v1/health") == 0) {
        json_t *h = json_pack("{s:b, s:b}", "live", 1, "models_ready", models_ready(st));
        if (h)
            answer_json(c, 200, h, NULL);
        else
            answer_error(c, 500, NULL, "out of memory");
        json_decref(h);
    } else {
        char *text = sched_admin_metrics(st);
        if (text)
            answer(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, NULL);
        else
            answer_error(c, 500, NULL, "out of memory building the metrics");
        free(text);
    }
    json_decref(st);
}

/* A scrape is due: the router's HTTP address from a fresh snapshot (null while the
 * router is not up, which only schedules the next try). */
static void scrape(struct sched_admin *a, long now)
{
    if (sched_scrape_due(&a->scrape, now)) {
        json_t *st = a->status(a->arg);
        const char *url = json_string_value(json_object_get(json_object_get(st, "router"),
                                                            "http"));
        sched_scrape_start(&a->scrape, url, now);
        json_decref(st);
    }
    sched_scrape_step(&a->scrape, now);
}

void sched_admin_serve(struct sched_admin *a, long now)
{
    if (!a->httpd)
        return;
    a->now_ms = now;
    httpd_serve(a->httpd);
    scrape(a, now);
}
