#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httphead.h"
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

int sched_admin_open(struct sched_admin *a, const struct sched_addr *where,
                     const char *token_file, sched_admin_status_fn status, void *arg,
                     struct cerr *e)
{
    memset(a, 0, sizeof *a);
    a->fd = -1;
    sched_scrape_init(&a->scrape);
    a->status = status;
    a->arg = arg;
    for (size_t i = 0; i < SCHED_ADMIN_MAX_CONNS; i++)
        a->conns[i].fd = -1;
    if (token_file && token_read(token_file, &a->token, e))
        return cerr_prefix(e, "admin.token_file: ");

    char port[16];
    snprintf(port, sizeof port, "%d", where->port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    const char *host = where->host;
    if (strcmp(host, "*") == 0)
        host = "0.0.0.0";
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0 || !res) {
        sched_admin_close(a);
        return cerr_set(e, CORRAL_EINVAL, "admin.listen %s: %s", where->text, gai_strerror(g));
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        sched_admin_close(a);
        return cerr_set(e, CORRAL_EIO, "admin.listen %s: cannot listen: %s", where->text,
                        strerror(err));
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int bound = where->port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    a->fd = fd;
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
    for (size_t i = 0; i < SCHED_ADMIN_MAX_CONNS; i++) {
        struct sched_admin_conn *c = &a->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        free(c->in);
        free(c->out);
        memset(c, 0, sizeof *c);
        c->fd = -1;
    }
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
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
    size_t n = 0, busy = 0;
    for (size_t i = 0; i < SCHED_ADMIN_MAX_CONNS && n < cap; i++) {
        const struct sched_admin_conn *c = &a->conns[i];
        if (c->fd < 0)
            continue;
        busy++;
        fds[n].fd = c->fd;
        fds[n].events = c->writing && !c->closing ? POLLOUT : POLLIN;
        fds[n].revents = 0;
        n++;
    }
    if (a->fd >= 0 && busy < SCHED_ADMIN_MAX_CONNS && n < cap) {
        fds[n].fd = a->fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    if (n < cap && sched_scrape_pollfd(&a->scrape, &fds[n]))
        n++;
    return n;
}

/* ---- answers ----------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    default: return "Error";
    }
}

static void answer(struct sched_admin_conn *c, int status, const char *ctype, const char *body,
                   const char *extra_headers)
{
    struct str s = {0};
    size_t blen = body ? strlen(body) : 0;
    str_printf(&s, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Connection: close\r\nCache-Control: no-store\r\n%s\r\n%s",
               status, reason(status), ctype, blen, extra_headers ? extra_headers : "",
               body ? body : "");
    free(c->out);
    c->out = s.oom ? NULL : s.p;
    if (s.oom) {
        free(s.p);
        static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        c->out = strdup(oom);
    }
    c->out_len = c->out ? strlen(c->out) : 0;
    c->out_off = 0;
    c->writing = 1;
}

static void answer_json(struct sched_admin_conn *c, int status, json_t *body,
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
answer_error(struct sched_admin_conn *c, int status, const char *extra_headers, const char *fmt,
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
    json_array_foreach(models, i, m)
    {
        str_printf(&s, "corral_scheduler_replica_restarts_total{model=\"");
        str_label(&s, json_string_value(json_object_get(m, "name")));
        str_printf(&s, "\"} %lld\n", int_of(m, "restarts"));
    }
    str_printf(&s, "# HELP corral_scheduler_replicas_desired Replicas the config asks for, by "
                   "model.\n# TYPE corral_scheduler_replicas_desired gauge\n");
    json_array_foreach(models, i, m)
    {
        str_printf(&s, "corral_scheduler_replicas_desired{model=\"");
        str_label(&s, json_string_value(json_object_get(m, "name")));
        str_printf(&s, "\"} %lld\n", int_of(m, "desired"));
    }
    str_printf(&s, "# HELP corral_scheduler_replicas_ready Replicas ready and in the router's "
                   "table, by model.\n# TYPE corral_scheduler_replicas_ready gauge\n");
    json_array_foreach(models, i, m)
    {
        str_printf(&s, "corral_scheduler_replicas_ready{model=\"");
        str_label(&s, json_string_value(json_object_get(m, "name")));
        str_printf(&s, "\"} %lld\n", int_of(m, "ready"));
    }
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

/* A header of the request head only, never of a body that follows it (httphead.h). */
static int head_header(struct sched_admin_conn *c, const char *name, char *out, size_t out_len)
{
    size_t len = c->head_len && c->head_len <= c->in_len ? c->head_len : c->in_len;
    return sched_http_header(c->in, len, name, out, out_len);
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
static void promote(struct sched_admin *a, struct sched_admin_conn *c, const char *method)
{
    if (strcmp(method, "POST") != 0) {
        answer_error(c, 405, "Allow: POST\r\n", "/v1/promote takes POST only, not %.15s",
                     method);
        return;
    }
    json_error_t je;
    json_t *req = json_loadb(c->in + c->head_len, c->body_len, 0, &je);
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

static void handle(struct sched_admin *a, struct sched_admin_conn *c)
{
    char method[16], target[1024];
    const char *p = c->in, *sp1 = strchr(p, ' ');
    const char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    const char *eol = strchr(p, '\n');
    if (!sp1 || !sp2 || !eol || sp2 > eol || (size_t)(sp1 - p) >= sizeof method ||
        (size_t)(sp2 - sp1 - 1) >= sizeof target || sp1 == p || sp2 == sp1 + 1 ||
        strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        answer_error(c, 400, NULL, "malformed request line: expected METHOD PATH HTTP/1.x "
                                   "(at most %zu bytes of path)", sizeof target - 1);
        return;
    }
    memcpy(method, p, (size_t)(sp1 - p));
    method[sp1 - p] = '\0';
    memcpy(target, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    target[sp2 - sp1 - 1] = '\0';
    target[strcspn(target, "?#")] = '\0';

    /* The page holds no data; it asks for the token itself when /v1/status wants one. */
    if (strcmp(target, "/") == 0 && strcmp(method, "GET") == 0) {
        answer(c, 200, "text/html; charset=utf-8", sched_admin_page, PAGE_HEADERS);
        return;
    }
    if (a->token) {
        char auth[TOKEN_MAX + 64];
        const char *why = NULL;
        if (head_header(c, "Authorization", auth, sizeof auth) != 0)
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
        const char *q = strchr(sp1 + 1, '?');
        int dry = q && q < sp2 && (strncmp(q, "?dry_run=1", 10) == 0 ||
                                   strncmp(q, "?dry_run=true", 13) == 0);
        int status = 500;
        json_t *ans = a->apply(a->arg, c->in + c->head_len, c->body_len, dry, &status);
        if (!ans) {
            answer_error(c, 500, NULL, "out of memory applying the config");
            return;
        }
        answer_json(c, status, ans, NULL);
        json_decref(ans);
        return;
    }
    if (a->promote && strcmp(target, "/v1/promote") == 0) {
        promote(a, c, method);
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

/* ---- connections ------------------------------------------------------------------- */

static void conn_close(struct sched_admin_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

static void accept_all(struct sched_admin *a, long now)
{
    for (;;) {
        struct sched_admin_conn *c = NULL;
        for (size_t i = 0; i < SCHED_ADMIN_MAX_CONNS && !c; i++)
            if (a->conns[i].fd < 0)
                c = &a->conns[i];
        if (!c)
            return; /* the rest wait in the backlog */
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                LOG_WARN("admin: accept: %s", strerror(errno));
            return;
        }
        c->in = malloc(SCHED_ADMIN_REQ_MAX + 1);
        if (!c->in) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->in_len = 0;
        c->deadline_ms = now + SCHED_ADMIN_DEADLINE_MS;
    }
}

/* Reads what there is; answers once the head is complete. */
static void conn_read(struct sched_admin *a, struct sched_admin_conn *c)
{
    for (;;) {
        size_t room = c->head_len ? c->head_len + c->body_len - c->in_len
                                  : SCHED_ADMIN_REQ_MAX - c->in_len;
        if (room == 0 && !c->head_len) {
            answer_error(c, 431, NULL, "the request line and headers exceed %d bytes",
                         SCHED_ADMIN_REQ_MAX);
            return;
        }
        ssize_t got = read(c->fd, c->in + c->in_len, room);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        if (got == 0) { /* closed before a whole request */
            conn_close(c);
            return;
        }
        size_t from = c->in_len > 3 ? c->in_len - 3 : 0;
        c->in_len += (size_t)got;
        c->in[c->in_len] = '\0';
        if (memchr(c->in + c->in_len - (size_t)got, '\0', (size_t)got)) {
            answer_error(c, 400, NULL, "a NUL byte in the request head");
            return;
        }
        if (c->head_len) {
            if (c->in_len >= c->head_len + c->body_len) {
                c->in[c->head_len + c->body_len] = '\0';
                handle(a, c);
                return;
            }
            continue;
        }
        const char *end = strstr(c->in + from, "\r\n\r\n");
        size_t blank = 4;
        if (!end) {
            end = strstr(c->in + (from ? from + 1 : 0), "\n\n");
            blank = 2;
        }
        if (end) {
            char cl[32];
            c->head_len = (size_t)(end - c->in) + blank;
            if (strncmp(c->in, "POST ", 5) != 0 ||
                head_header(c, "Content-Length", cl, sizeof cl) != 0) {
                handle(a, c);
                return;
            }
            char *e = NULL;
            errno = 0;
            unsigned long long want = strtoull(cl, &e, 10);
            if (errno || e == cl || *e || want > SCHED_CONFIG_MAX_BYTES) {
                answer_error(c, 400, NULL, "Content-Length must be a number of bytes up to %d, "
                             "got \"%.20s\"", SCHED_CONFIG_MAX_BYTES, cl);
                return;
            }
            c->body_len = (size_t)want;
            size_t size = c->head_len + c->body_len;
            char *grown = realloc(c->in, (size > c->in_len ? size : c->in_len) + 1);
            if (!grown) {
                answer_error(c, 500, NULL, "out of memory reading the request body");
                return;
            }
            c->in = grown;
            if (c->in_len >= c->head_len + c->body_len) {
                c->in[c->head_len + c->body_len] = '\0';
                handle(a, c);
                return;
            }
        }
    }
}

static void conn_write(struct sched_admin_conn *c)
{
    if (!c->out) {
        conn_close(c);
        return;
    }
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    /* Shut for writing and discard what the client still sends until it closes, so
     * that closing with unread bytes does not reset the answer away. */
    shutdown(c->fd, SHUT_WR);
    c->closing = 1;
}

static void conn_drain(struct sched_admin_conn *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = read(c->fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(c);
        return;
    }
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
    if (a->fd < 0)
        return;
    a->now_ms = now;
    accept_all(a, now);
    for (size_t i = 0; i < SCHED_ADMIN_MAX_CONNS; i++) {
        struct sched_admin_conn *c = &a->conns[i];
        if (c->fd < 0)
            continue;
        if (!c->writing)
            conn_read(a, c);
        if (c->fd >= 0 && c->writing && !c->closing)
            conn_write(c);
        if (c->fd >= 0 && c->closing)
            conn_drain(c);
        if (c->fd >= 0 && now > c->deadline_ms)
            conn_close(c); /* too slow a client: its slot goes to the next */
    }
    scrape(a, now);
}
