#include "control.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "http.h"
#include "log.h"
#include "token.h"

#define ACK_TIMEOUT_MS 10000

/* A change that is answered once every thread has applied its generation. */
struct waiter {
    struct http_request *req;
    uint64_t generation;
    uint64_t since; /* loop time, ms */
    struct waiter *next;
};

struct control {
    uv_loop_t *loop;
    struct membership *table;
    char *token;
    void (*changed)(void *arg);
    void *arg;
    struct http_server *http;
    uv_timer_t timer; /* gives up on waiters whose threads did not answer */
    struct waiter *waiters;
    int closing;
};

static void respond(struct http_request *req, int status, struct buf *b)
{
    size_t len = 0;
    char *body = buf_steal(b, &len);
    if (!body) {
        http_respond(req, 500, NULL, NULL, NULL, 0);
        return;
    }
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer realm=\"corral control\"\r\n"
                                      : NULL;
    http_respond(req, status, "application/json", extra, body, len);
}

static void respond_error(struct http_request *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void respond_error(struct http_request *req, int status, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct buf b = {0};
    buf_puts(&b, "{\"error\":");
    buf_json_string(&b, msg, strlen(msg));
    buf_puts(&b, "}");
    LOG_WARN("control: %s %s -> %d: %s", req->method_name, req->path, status, msg);
    respond(req, status, &b);
}

static int authorized(const struct control *c, const struct http_request *req)
{
    return !c->token || token_bearer_ok(http_request_header(req, "Authorization"), c->token);
}

static void answer_generation(struct control *c, struct http_request *req, uint64_t g)
{
    struct buf b = {0};
    buf_printf(&b, "{\"generation\":%llu,\"acked\":%llu}", (unsigned long long)g,
               (unsigned long long)membership_acked(c->table));
    respond(req, 200, &b);
}

/* Opens the i-th item of a list with its "model" and "version". */
static void put_model_version(struct buf *b, size_t i, const char *model, const char *version)
{
    buf_puts(b, i ? ",{\"model\":" : "{\"model\":");
    buf_json_string(b, model, strlen(model));
    buf_puts(b, ",\"version\":");
    buf_json_string(b, version, strlen(version));
}

static void list_table(struct control *c, struct http_request *req)
{
    struct membership_snapshot s;
    struct cerr e = {0};
    if (membership_snapshot(c->table, &s, &e)) {
        respond_error(req, 500, "%s", e.msg);
        return;
    }
    struct buf b = {0};
    buf_printf(&b, "{\"generation\":%llu,\"acked\":%llu,\"replicas\":[",
               (unsigned long long)s.generation, (unsigned long long)membership_acked(c->table));
    for (size_t i = 0; i < s.n; i++) {
        const struct membership_entry *x = &s.entries[i];
        put_model_version(&b, i, x->model, x->version);
        buf_puts(&b, ",\"url\":");
        buf_json_string(&b, x->url, strlen(x->url));
        buf_printf(&b, ",\"state\":\"%s\"", x->draining ? "draining" : "active");
        /* Discovered entries say by what (their discovery keeps them; router/dns.h). */
        if (x->source[0]) {
            buf_puts(&b, ",\"source\":");
            buf_json_string(&b, x->source, strlen(x->source));
        }
        buf_putc(&b, '}');
    }
    buf_puts(&b, "],\"canaries\":[");
    for (size_t i = 0; i < s.n_canaries; i++) {
        const struct membership_canary *x = &s.canaries[i];
        put_model_version(&b, i, x->model, x->version);
        buf_printf(&b, ",\"percent\":%d}", x->percent);
    }
    buf_puts(&b, "]}");
    membership_snapshot_free(&s);
    respond(req, 200, &b);
}

/* A string member of the body: NULL (and an answer sent) when it is missing or not a string. */
static const char *member(struct http_request *req, json_t *body, const char *key, int optional,
                          int *answered)
{
    json_t *v = json_object_get(body, key);
    if (!v && optional)
        return "";
    if (!v || !json_is_string(v)) {
        respond_error(req, 400, "field '%s' %s: expected a string", key,
                      v ? "is not a string" : "is missing");
        *answered = 1;
        return NULL;
    }
    return json_string_value(v);
}

static void wait_for_ack(struct control *c, struct http_request *req, uint64_t g)
{
    if (membership_acked(c->table) >= g) {
        answer_generation(c, req, g);
        return;
    }
    struct waiter *w = calloc(1, sizeof *w);
    if (!w) {
        respond_error(req, 500, "out of memory");
        return;
    }
    w->req = req;
    w->generation = g;
    w->since = uv_now(c->loop);
    w->next = c->waiters;
    c->waiters = w;
}

/* The body as a JSON object: NULL (and a 400 sent, with `example`) when it is not one. */
static json_t *body_object(struct http_request *req, const char *example)
{
    json_error_t je;
    json_t *body = json_loadb((const char *)req->body, req->body_len, 0, &je);
    if (body && json_is_object(body))
        return body;
    respond_error(req, 400, "the body is not a JSON object (%s): expected e.g. %s",
                  body ? "another JSON value" : je.text, example);
    json_decref(body);
    return NULL;
}

/* Answers a change to the table: its refusal, or its generation once every thread has it. */
static void submit(struct control *c, struct http_request *req, int rc, uint64_t g,
                   const struct cerr *e, const char *op, const char *what)
{
    if (rc) {
        respond_error(req, corral_err_http_status(rc), "%s", e->msg);
        return;
    }
    LOG_INFO("control: %s %s: replica table generation %llu", op, what, (unsigned long long)g);
    c->changed(c->arg);
    wait_for_ack(c, req, g);
}

static void change(struct control *c, struct http_request *req, const char *op)
{
    json_t *body = body_object(req, "{\"model\": \"digits\", \"url\": \"tcp://127.0.0.1:9101\"}");
    if (!body)
        return;
    int answered = 0;
    uint64_t g = 0;
    struct cerr e = {0};
    int rc;
    const char *url = member(req, body, "url", 0, &answered);
    if (!url)
        goto out;
    if (strcmp(op, "add") == 0) {
        const char *model = member(req, body, "model", 0, &answered);
        const char *version = model ? member(req, body, "version", 1, &answered) : NULL;
        if (!model || !version)
            goto out;
        rc = membership_add(c->table, model, version, url, &g, &e);
    } else if (strcmp(op, "drain") == 0) {
        rc = membership_set_draining(c->table, url, 1, &g, &e);
    } else {
        rc = membership_remove(c->table, url, &g, &e);
    }
    submit(c, req, rc, g, &e, op, url);
out:
    json_decref(body);
}

/* The body's "percent": an integer from 0 to 100, else -1 (and a 400 sent). */
static int percent_member(struct http_request *req, json_t *body)
{
    json_t *v = json_object_get(body, "percent");
    if (v && json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 100)
        return (int)json_integer_value(v);
    char *got = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    respond_error(req, 400, "percent: expected an integer from 0 to 100, got %.80s",
                  got ? got : "nothing (the field is missing)");
    free(got);
    return -1;
}

/* POST /v1/canary (set) and /v1/canary/clear. */
static void change_canary(struct control *c, struct http_request *req, int clear)
{
    json_t *body = body_object(req, "{\"model\": \"digits\", \"version\": \"2\", "
                               "\"percent\": 10}");
    if (!body)
        return;
    int answered = 0, rc, percent = 0;
    uint64_t g = 0;
    struct cerr e = {0};
    const char *model = member(req, body, "model", 0, &answered);
    const char *version = model && !clear ? member(req, body, "version", 0, &answered) : NULL;
    if (!model || (!clear && (!version || (percent = percent_member(req, body)) < 0)))
        goto out;
    if (clear)
        rc = membership_clear_canary(c->table, model, &g, &e);
    else
        rc = membership_set_canary(c->table, model, version, percent, &g, &e);
    submit(c, req, rc, g, &e, clear ? "canary clear" : "canary", model);
out:
    json_decref(body);
}

/* The changes that take POST only. */
static void post_change(struct control *c, struct http_request *req)
{
    const char *p = req->path;
    if (strncmp(p, "/v1/canary", 10) == 0)
        change_canary(c, req, p[10] == '/');
    else
        change(c, req, strrchr(p, '/') + 1);
}

static void handle(void *arg, struct http_request *req)
{
    struct control *c = arg;
    if (!authorized(c, req)) {
        respond_error(req, 401, "missing or wrong bearer token (send \"Authorization: Bearer "
                      "TOKEN\" with the token of --control-token-file)");
        return;
    }
    int get = strcmp(req->method_name, "GET") == 0 || strcmp(req->method_name, "HEAD") == 0;
    int post = strcmp(req->method_name, "POST") == 0;
    const char *p = req->path;
    if (strcmp(p, "/v1/replicas") == 0) {
        if (get)
            list_table(c, req);
        else if (post)
            change(c, req, "add");
        else
            respond_error(req, 405, "method %s not allowed on %s (allowed: GET, POST)",
                          req->method_name, p);
        return;
    }
    if (strcmp(p, "/v1/replicas/drain") == 0 || strcmp(p, "/v1/replicas/remove") == 0 ||
        strcmp(p, "/v1/canary") == 0 || strcmp(p, "/v1/canary/clear") == 0) {
        if (post)
            post_change(c, req);
        else
            respond_error(req, 405, "method %s not allowed on %s (allowed: POST)",
                          req->method_name, p);
        return;
    }
    respond_error(req, 404, "no such endpoint: %s %s (the control endpoint serves "
                  "/v1/replicas, /v1/replicas/drain, /v1/replicas/remove, /v1/canary and "
                  "/v1/canary/clear)", req->method_name, p);
}

void control_acked(struct control *c)
{
    uint64_t acked = membership_acked(c->table);
    struct waiter **pp = &c->waiters;
    while (*pp) {
        struct waiter *w = *pp;
        if (w->generation <= acked) {
            *pp = w->next;
            answer_generation(c, w->req, w->generation);
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct control *c = t->data;
    uint64_t now = uv_now(c->loop);
    control_acked(c);
    struct waiter **pp = &c->waiters;
    while (*pp) {
        struct waiter *w = *pp;
        if (now - w->since >= ACK_TIMEOUT_MS) {
            *pp = w->next;
            respond_error(w->req, 504, "generation %llu was not applied by every router thread "
                          "within %d ms (acknowledged: %llu)", (unsigned long long)w->generation,
                          ACK_TIMEOUT_MS, (unsigned long long)membership_acked(c->table));
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

int control_new(struct control **out, uv_loop_t *loop, struct membership *table,
                const char *token, void (*changed)(void *arg), void *arg, struct cerr *e)
{
    struct control *c = calloc(1, sizeof *c);
    if (!c)
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the control endpoint");
    c->loop = loop;
    c->table = table;
    c->changed = changed;
    c->arg = arg;
    if (token && !(c->token = strdup(token))) {
        free(c);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the control endpoint");
    }
    struct http_limits lim;
    http_limits_default(&lim);
    lim.max_body_bytes = 64 * 1024;
    lim.max_connections = 64;
    int rc = http_server_new(&c->http, loop, &lim, handle, c, e);
    if (rc) {
        free(c->token);
        free(c);
        return rc;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_tick, 100, 100);
    *out = c;
    return CORRAL_OK;
}

int control_listen(struct control *c, const char *host, int port, int *bound_port, struct cerr *e)
{
    int rc = http_server_listen(c->http, host, port, bound_port, e);
    if (rc)
        cerr_prefix(e, "cannot listen for control requests on %s:%d", host, port);
    return rc;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct control *c = h->data;
    free(c->token);
    free(c);
}

void control_close(struct control *c)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    while (c->waiters) {
        struct waiter *w = c->waiters;
        c->waiters = w->next;
        respond_error(w->req, 503, "the router is shutting down");
        free(w);
    }
    http_server_close(c->http, NULL, NULL);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
