/*
 * The HTTP/1.1 server's transport side on libuv: the listener and its limits on
 * connections, each connection's reads (fed to http-parser, whose callbacks are in
 * http_parse.c), pipelining and back-pressure, the idle and request deadlines, answers
 * written in request order, keep-alive and close, draining and shutdown. See http.h.
 */
#include "http.h"

#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "httphead.h"
#include "http_internal.h"
#include "list.h"
#include "log.h"

void http_limits_default(struct http_limits *l)
{
    l->max_header_bytes = 16 * 1024;
    l->max_body_bytes = (size_t)64 << 20;
    l->idle_timeout_ms = 60000;
    l->max_connections = 4096;
    l->max_pipelined = 64;
    l->max_headers = 100;
    l->request_timeout_ms = 30000;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

int http_split_target(const char *target, char *dst, size_t cap, const char **query)
{
    const char *p = target;
    if (cap == 0)
        return -1;
    if (strncasecmp(p, "http://", 7) == 0 || strncasecmp(p, "https://", 8) == 0) {
        /* Absolute form: the authority is the Host, which this server ignores. */
        p = strstr(p, "://") + 3;
        p += strcspn(p, "/?");
        if (*p != '/') {
            /* "http://host" and "http://host?q" both mean the root path. */
            if (cap < 2)
                return -1;
            dst[0] = '/';
            dst[1] = '\0';
            *query = *p == '?' ? p + 1 : "";
            return 0;
        }
    }
    if (*p != '/')
        return -1;
    size_t n = 0;
    for (; *p && *p != '?' && *p != '#'; p++) {
        char c = *p;
        if (c == '%') {
            int hi = httphead_hex(p[1]), lo = hi < 0 ? -1 : httphead_hex(p[2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi << 4 | lo);
            if (c == '\0')
                return -1;
            p += 2;
        }
        if (n + 1 >= cap)
            return -1;
        dst[n++] = c;
    }
    dst[n] = '\0';
    *query = *p == '?' ? p + 1 : "";
    return 0;
}

void http_request_free(struct http_request *r)
{
    if (!r)
        return;
    free(r->target);
    free(r->path);
    free(r->headers);
    free(r->body);
    free(r->hbuf);
    free(r->hoff);
    free(r->resp_head);
    free(r->resp_body);
    free(r->log_note);
    free(r);
}

const char *http_request_header(const struct http_request *r, const char *name)
{
    for (int i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

void http_request_drop_body(struct http_request *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    r->body_cap = 0;
}

int http_request_alive(const struct http_request *r) { return r->conn != NULL && !r->conn->closing; }

void http_request_on_abort(struct http_request *r, void (*fn)(void *), void *arg)
{
    r->abort_fn = fn;
    r->abort_arg = arg;
}

void http_request_note(struct http_request *r, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    char *n = strdup(tmp);
    if (!n)
        return;
    free(r->log_note);
    r->log_note = n;
}

void http_server_set_reuseport(struct http_server *s, int on) { s->reuseport = on; }

/*
 * Detaches a request from its gone connection. An answered one is freed here;
 * an unanswered one stays with its handler, which learns through its abort
 * function that nobody waits any longer (so it can cancel upstream work).
 */
static void request_detach(struct http_request *r)
{
    r->next = NULL;
    r->conn = NULL;
    if (r->responded) {
        http_request_free(r);
        return;
    }
    void (*fn)(void *) = r->abort_fn;
    r->abort_fn = NULL;
    if (fn)
        fn(r->abort_arg);
}

unsigned http_server_connections(const struct http_server *s) { return s->n_conns; }

/* A draining server reports, once, when its listener and last connection have closed. */
static void maybe_drained(struct http_server *s)
{
    if (s->draining && s->drained && s->n_conns == 0 && !s->listener_open) {
        void (*fn)(void *) = s->drained;
        s->drained = NULL;
        fn(s->drained_arg);
    }
}

static void server_handle_closed(struct http_server *s)
{
    if (--s->handles == 0 && s->closing) {
        void (*done)(void *) = s->done;
        void *arg = s->done_arg;
        free(s);
        if (done)
            done(arg);
    }
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    if (--c->handles > 0)
        return;
    struct http_server *s = c->srv;
    list_remove(&c->link);
    s->n_conns--;
    free(c->stash);
    free(c);
    if (s->n_conns == 0 && !s->closing)
        maybe_drained(s);
    server_handle_closed(s);
}

/*
 * Closing detaches every unanswered request rather than freeing it: the handler
 * may still hold it (an upstream call in flight) and will answer it later.
 */
static void conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->stop_reading = 1;
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    /* Inside the parser the message being parsed is still in use; conn_process frees it. */
    if (!c->in_feed) {
        http_request_free(c->cur);
        c->cur = NULL;
    }
    struct http_request *r = c->head;
    c->head = c->tail = NULL;
    c->inflight = 0;
    while (r) {
        struct http_request *next = r->next;
        request_detach(r);
        r = next;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    conn_close(sr->data);
}

/* Half-closes after the queued writes drain, so the last answer is not cut by a reset. */
static void conn_shutdown(struct http_conn *c)
{
    if (c->closing || c->shutting_down)
        return;
    c->shutting_down = 1;
    c->stop_reading = 1;
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

static void conn_maybe_resume(struct http_conn *c);

/*
 * Parsing more requests waits while too many are unanswered or while answers
 * pile up unread (a client that pipelines without reading would otherwise make
 * the write queue grow without bound).
 */
int http_conn_can_parse(const struct http_conn *c)
{
    return c->inflight < c->srv->lim.max_pipelined &&
           uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) < HTTP_WRITE_HIGH;
}

static void on_write(uv_write_t *w, int status)
{
    struct http_write *hw = (struct http_write *)w;
    struct http_conn *c = w->handle->data;
    free(hw->head);
    free(hw->body);
    free(hw);
    if (status < 0 && status != UV_ECANCELED) {
        LOG_DEBUG("write to client failed: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    /* A client reading its answers is active: idleness counts from its last byte. */
    c->last_read_ms = uv_now(c->srv->loop);
    if (!c->closing && c->paused)
        conn_maybe_resume(c);
}

void http_conn_write_raw(struct http_conn *c, char *head, size_t hlen, char *body, size_t blen)
{
    struct http_write *hw = calloc(1, sizeof *hw);
    if (!hw) {
        free(head);
        free(body);
        conn_close(c);
        return;
    }
    hw->head = head;
    hw->body = body;
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init(body ? body : "", (unsigned)blen)};
    int rc = uv_write(&hw->w, (uv_stream_t *)&c->tcp, bufs, blen ? 2 : 1, on_write);
    if (rc) {
        LOG_DEBUG("write to client failed: %s", uv_strerror(rc));
        free(head);
        free(body);
        free(hw);
        conn_close(c);
    }
}

static void conn_flush(struct http_conn *c)
{
    while (!c->closing && c->head && c->head->responded) {
        struct http_request *r = c->head;
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
        c->inflight--;
        int keep = r->keep_alive;
        http_conn_write_raw(c, r->resp_head, r->resp_head_len, r->resp_body, r->resp_body_len);
        r->resp_head = r->resp_body = NULL;
        http_request_free(r);
        if (!keep) {
            /* Anything pipelined after a closing request is dropped, as HTTP requires. */
            c->stop_reading = 1;
            struct http_request *q = c->head;
            c->head = c->tail = NULL;
            c->inflight = 0;
            while (q) {
                struct http_request *next = q->next;
                request_detach(q);
                q = next;
            }
        }
    }
    if (c->closing)
        return;
    if (c->stop_reading && !c->head && !c->in_feed) {
        conn_shutdown(c);
        return;
    }
    conn_maybe_resume(c);
}

void http_conn_enqueue(struct http_conn *c, struct http_request *r)
{
    r->conn = c;
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->inflight++;
}

static char *error_body(const char *msg, size_t *len)
{
    struct buf b = {0};
    buf_puts(&b, "{\"error\":");
    buf_json_string(&b, msg, strlen(msg));
    buf_putc(&b, '}');
    return buf_steal(&b, len);
}

/* Answers a message the parser rejected, then closes: the stream position is unknown. */
static void conn_parse_error(struct http_conn *c, enum http_errno err)
{
    int status = c->err_status ? c->err_status : 400;
    char msg[400];
    if (c->err_status)
        snprintf(msg, sizeof msg, "%s", c->err_msg);
    else
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_description(err));
    LOG_ERROR("client request rejected with %d: %s", status, msg);
    http_request_free(c->cur);
    c->cur = NULL;
    c->stop_reading = 1;
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    struct http_request *r = calloc(1, sizeof *r);
    if (!r) {
        conn_close(c);
        return;
    }
    r->method = -1;
    r->method_name = "-";
    r->keep_alive = 0;
    r->start_ns = uv_hrtime();
    http_conn_enqueue(c, r);
    size_t blen = 0;
    char *body = error_body(msg, &blen);
    http_respond(r, status, "application/json", NULL, body, body ? blen : 0);
}

static void conn_process(struct http_conn *c, const char *data, size_t n)
{
    c->in_feed = 1;
    while (n > 0 && !c->closing && !c->stop_reading) {
        for (size_t k = 0; c->crlf_due && k < n; k++, c->crlf_due--) {
            if (data[k] != (c->crlf_due == 2 ? '\r' : '\n')) {
                c->in_feed = 0;
                c->err_status = 400;
                snprintf(c->err_msg, sizeof c->err_msg, "malformed chunked body: a chunk's "
                         "data is not followed by CRLF");
                conn_parse_error(c, HPE_OK);
                return;
            }
        }
        c->feed_end = data + n;
        size_t used = http_parser_execute(&c->parser, &http_parse_settings, data, n);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (used > n)
            used = n;
        data += used;
        n -= used;
        if (c->closing)
            break;
        if (err == HPE_PAUSED) {
            if (c->stop_reading)
                break;
            if (http_conn_can_parse(c)) {
                http_parser_pause(&c->parser, 0);
                continue;
            }
            /* Too much outstanding: keep the rest until answers drain. */
            if (n) {
                char *s = malloc(n);
                if (!s) {
                    c->in_feed = 0;
                    conn_close(c);
                    return;
                }
                memcpy(s, data, n);
                c->stash = s;
                c->stash_len = n;
            }
            LOG_DEBUG("client connection paused: %u answers pending, %zu bytes unsent",
                      c->inflight, uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp));
            c->paused = 1;
            if (c->reading)
                uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
            break;
        }
        if (err != HPE_OK) {
            c->in_feed = 0;
            conn_parse_error(c, err);
            return;
        }
        if (c->parser.upgrade || used == 0) {
            /* Protocol upgrades are not offered; the connection ends after the answer. */
            c->stop_reading = 1;
            break;
        }
    }
    c->in_feed = 0;
    if (c->closing) {
        http_request_free(c->cur);
        c->cur = NULL;
        return;
    }
    conn_flush(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct http_conn *c = h->data;
    /* Reads are parsed synchronously, so one buffer per server is enough. */
    *b = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && !c->closing) {
            /*
             * The client finished sending; answer what it asked, then close. A client
             * that hangs up while waiting looks the same as one that only half-closed,
             * so, like most servers, treat it as gone for work that can be abandoned:
             * handlers that registered an abort function give up (their answer, an
             * error, is still written in case the client does read).
             */
            for (struct http_request *q = c->head; q; q = q->next) {
                void (*fn)(void *) = q->abort_fn;
                q->abort_fn = NULL;
                if (fn && !q->responded)
                    fn(q->abort_arg);
            }
            c->stop_reading = 1;
            if (c->reading)
                uv_read_stop(st);
            c->reading = 0;
            http_request_free(c->cur);
            c->cur = NULL;
            conn_flush(c);
        } else {
            conn_close(c);
        }
        return;
    }
    c->last_read_ms = uv_now(c->srv->loop);
    if (c->stop_reading || c->closing)
        return;
    conn_process(c, b->base, (size_t)nread);
}

static void conn_maybe_resume(struct http_conn *c)
{
    if (c->in_feed || c->in_resume)
        return;
    c->in_resume = 1;
    while (c->paused && !c->closing && !c->stop_reading && http_conn_can_parse(c)) {
        c->paused = 0;
        http_parser_pause(&c->parser, 0);
        char *s = c->stash;
        size_t n = c->stash_len;
        c->stash = NULL;
        c->stash_len = 0;
        if (s)
            conn_process(c, s, n);
        free(s);
    }
    if (!c->paused && !c->closing && !c->stop_reading && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
        else
            conn_close(c);
    }
    c->in_resume = 0;
}

static void conn_parse_error(struct http_conn *c, enum http_errno err);

/*
 * One periodic timer per connection enforces both deadlines: reads only stamp
 * a time (restarting a timer on every read would cost a syscall-free but
 * non-trivial heap update each time), and the tick compares.
 */
static void on_tick(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    struct http_server *s = c->srv;
    uint64_t now = uv_now(s->loop);
    if (c->closing || c->shutting_down)
        return;
    if (c->msg_active && s->lim.request_timeout_ms && !c->stop_reading &&
        now - c->msg_start_ms >= s->lim.request_timeout_ms) {
        c->err_status = 408;
        snprintf(c->err_msg, sizeof c->err_msg, "request not received within %u ms (a request "
                 "must arrive whole within the request timeout)", s->lim.request_timeout_ms);
        c->msg_active = 0;
        conn_parse_error(c, HPE_OK);
        return;
    }
    if (c->head || c->msg_active || c->paused || c->stash_len ||
        uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) > 0)
        return; /* answers are pending or unread, or a request is arriving: not idle */
    if (now - c->last_read_ms >= s->lim.idle_timeout_ms) {
        LOG_DEBUG("closing idle client connection");
        conn_close(c);
    }
}

/* ---- responses ---- */

void http_respond(struct http_request *req, int status, const char *content_type,
                  const char *extra_headers, char *body, size_t len)
{
    if (log_enabled(LOG_LEVEL_DEBUG)) {
        double ms = (double)(uv_hrtime() - req->start_ns) / 1e6;
        LOG_DEBUG("request seq=%llu method=%s target=%s status=%d bytes=%zu ms=%.3f%s%s%s",
                  (unsigned long long)req->seq, req->method_name ? req->method_name : "-",
                  req->target ? req->target : "-", status, len, ms,
                  req->log_note ? " " : "", req->log_note ? req->log_note : "",
                  req->conn ? "" : " client=gone");
    }
    struct http_conn *c = req->conn;
    if (!c || c->closing) {
        /* The client left: nobody is waiting, so just drop the answer. */
        free(body);
        if (!c)
            http_request_free(req);
        return;
    }
    if (req->responded) {
        LOG_ERROR("internal error: request %llu answered twice", (unsigned long long)req->seq);
        free(body);
        return;
    }
    struct buf h = {0};
    buf_printf(&h, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    if (content_type)
        buf_printf(&h, "Content-Type: %s\r\n", content_type);
    buf_printf(&h, "Content-Length: %zu\r\n", len);
    if (!req->keep_alive)
        buf_puts(&h, "Connection: close\r\n");
    else if (req->http_minor == 0)
        buf_puts(&h, "Connection: keep-alive\r\n");
    if (extra_headers)
        buf_puts(&h, extra_headers);
    buf_puts(&h, "\r\n");
    size_t hlen = 0;
    char *head = buf_steal(&h, &hlen);
    if (!head) {
        /* Without a status line nothing valid can be sent; the client sees a close. */
        free(body);
        LOG_ERROR("out of memory building an HTTP response");
        req->responded = 1;
        conn_close(c);
        return;
    }
    if (req->method == HTTP_HEAD) {
        /* HEAD gets the headers of the GET answer but never its body. */
        free(body);
        body = NULL;
        len = 0;
    }
    req->status = status;
    req->resp_head = head;
    req->resp_head_len = hlen;
    req->resp_body = body;
    req->resp_body_len = len;
    req->responded = 1;
    conn_flush(c);
}

/* ---- server ---- */

static void on_reject_closed(uv_handle_t *h)
{
    struct http_server *s = h->data;
    free(h);
    server_handle_closed(s);
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct http_server *s = ls->data;
    if (status < 0) {
        LOG_WARN("accepting a client connection failed: %s", uv_strerror(status));
        return;
    }
    if (s->n_conns >= s->lim.max_connections) {
        uv_tcp_t *t = malloc(sizeof *t);
        if (!t || uv_tcp_init(s->loop, t) != 0) {
            free(t);
            return;
        }
        t->data = s;
        s->handles++;
        (void)uv_accept(ls, (uv_stream_t *)t);
        LOG_WARN("refusing a client connection: %u connections already open (limit)", s->n_conns);
        uv_close((uv_handle_t *)t, on_reject_closed);
        return;
    }
    struct http_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    s->handles++;
    s->n_conns++;
    list_push_front(&s->conns, &c->link);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->last_read_ms = uv_now(s->loop);
    uint64_t tick = s->lim.idle_timeout_ms;
    if (s->lim.request_timeout_ms && s->lim.request_timeout_ms < tick)
        tick = s->lim.request_timeout_ms;
    /* A quarter of the shortest deadline keeps the overshoot small. */
    tick = tick / 4 ? tick / 4 : 1;
    uv_timer_start(&c->timer, on_tick, tick, tick);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
}

int http_server_new(struct http_server **out, uv_loop_t *loop, const struct http_limits *lim,
                    http_handler_fn handler, void *arg, struct cerr *e)
{
    struct http_server *s = calloc(1, sizeof *s);
    if (!s)
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the HTTP server");
    s->loop = loop;
    list_init(&s->conns);
    s->lim = *lim;
    if (s->lim.max_pipelined == 0)
        s->lim.max_pipelined = 1;
    s->handler = handler;
    s->arg = arg;
    *out = s;
    return CORRAL_OK;
}

int http_server_listen(struct http_server *s, const char *host, int port, int *bound_port,
                       struct cerr *e)
{
    int rc = http_server_bind(s, host, port, bound_port, e);
    return rc ? rc : http_server_start(s, host, *bound_port, e);
}

int http_server_start(struct http_server *s, const char *host, int port, struct cerr *e)
{
    int rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (rc)
        return cerr_set(e, CORRAL_EIO, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    return CORRAL_OK;
}

int http_server_bind(struct http_server *s, const char *host, int port, int *bound_port,
                     struct cerr *e)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int rc;
    if (strchr(host, ':'))
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc) {
        /* Not numeric: resolve the name once, at start, where blocking is harmless. */
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int g = getaddrinfo(host, NULL, &hints, &res);
        if (g != 0 || !res)
            return cerr_set(e, CORRAL_EINVAL, "cannot resolve listen host '%s': %s", host,
                            gai_strerror(g));
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
    }
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    s->handles++;
    if (s->reuseport) {
        /* libuv of this vintage cannot set SO_REUSEPORT itself, so the socket is made here. */
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int one = 1;
        socklen_t sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
            bind(fd, (const struct sockaddr *)&ss, sl) != 0) {
            rc = uv_translate_sys_error(errno);
            if (fd >= 0)
                close(fd);
        } else {
            rc = uv_tcp_open(&s->listener, fd);
            if (rc)
                close(fd);
        }
    } else {
        rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    }
    if (rc)
        return cerr_set(e, CORRAL_EIO, "cannot bind %s:%d: %s", host, port, uv_strerror(rc));
    struct sockaddr_storage got;
    int len = sizeof got;
    rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
    if (rc)
        return cerr_set(e, CORRAL_EIO, "cannot read the bound address: %s", uv_strerror(rc));
    if (got.ss_family == AF_INET6)
        *bound_port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
    else
        *bound_port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    return CORRAL_OK;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct http_server *s = h->data;
    if (!s->closing)
        maybe_drained(s);
    server_handle_closed(s);
}

/*
 * Drain: a connection with nothing pending closes now; one with requests in flight
 * (or one arriving) reads nothing after them and answers the last with
 * "Connection: close", so no accepted request is cut and no client is left
 * waiting on a keep-alive connection that is about to go.
 */
void http_server_drain(struct http_server *s, void (*drained)(void *), void *arg)
{
    if (s->closing || s->draining)
        return;
    s->draining = 1;
    s->drained = drained;
    s->drained_arg = arg;
    if (s->listener_open) {
        s->listener_open = 0;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    }
    struct http_conn *c;
    list_for_each_entry(c, &s->conns, link) {
        if (c->closing || c->shutting_down)
            continue;
        if (!c->head && !c->msg_active) {
            conn_close(c);
            continue;
        }
        if (c->msg_active)
            continue; /* on_message_complete marks it the last */
        c->tail->keep_alive = 0;
        c->stop_reading = 1;
        if (c->reading)
            uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

void http_server_close(struct http_server *s, void (*done)(void *), void *done_arg)
{
    s->closing = 1;
    s->done = done;
    s->done_arg = done_arg;
    s->handles++; /* held across this function so the server outlives the loop below */
    if (s->listener_open) {
        s->listener_open = 0;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    }
    /* conn_close only starts closing: each leaves the list from its handles' callback. */
    struct http_conn *c;
    list_for_each_entry(c, &s->conns, link)
        conn_close(c);
    server_handle_closed(s);
}
