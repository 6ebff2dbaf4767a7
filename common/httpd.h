/*
 * httpd: a small HTTP/1.1 server for probe, metrics and admin endpoints (the
 * replica's --health-listen, the scheduler's admin API), non-blocking sockets on a
 * poll set, one request per connection (every answer carries "Connection: close").
 *
 * Usage, on a thread of its own:
 *     struct httpd *h;
 *     if (httpd_open(&h, "0.0.0.0", 8080, &opt, handle, arg, &e)) ... e.msg ...
 *     httpd_run(h, stop_fd);   // until stop_fd is readable (a pipe the owner writes)
 *     httpd_close(h);
 * or on a caller's own poll loop: httpd_pollfds() before each poll, httpd_serve()
 * after it (and at least every 100 ms, for the deadlines).
 *
 * For each request that arrived whole, `handle` runs once (on the thread that
 * serves) with the method, the path (the target without its query), the query, the
 * head (for httphead_get) and the body, and answers with httpd_reply(); a handler
 * that does not answer gets a 500 sent for it, a second httpd_reply() is ignored.
 * HEAD is answered as the handler answers GET, without the body.
 *
 * Bounds, for bytes from anyone: the head is at most opt.max_head bytes (431
 * beyond), a NUL byte in it or a malformed request line is 400, the request line
 * must be METHOD SP /TARGET SP HTTP/1.x. A body is read when Content-Length
 * announces one, up to opt.max_body bytes (413 beyond; with max_body 0 a body is
 * 400); Transfer-Encoding is 400. A connection must deliver its request and take
 * its answer within opt.deadline_ms of its accept, or it is closed. At most
 * opt.max_conns connections are open; when one more arrives the oldest is closed
 * to make room, so a slow client cannot hold every slot against the probes. The
 * server's own error answers are text, or {"error": "..."} with opt.json_errors.
 *
 * Not thread-safe: one thread serves. The handler must not block: it runs on the
 * serving thread, between polls.
 */
#ifndef CORRAL_COMMON_HTTPD_H
#define CORRAL_COMMON_HTTPD_H

#include <poll.h>
#include <stddef.h>

#include "error.h"

struct httpd;
struct httpd_conn;

struct httpd_options {
    unsigned max_conns;   /* connections open at once (1..1024) */
    size_t max_head;      /* request line and headers, bytes (256..1 MiB) */
    size_t max_body;      /* request body, bytes; 0: none taken */
    unsigned deadline_ms; /* from accept to the answer written */
    int json_errors;      /* the server's own errors as {"error": "..."} */
    const char *name;     /* in log lines: "health endpoint" */
};
#define HTTPD_OPTIONS_DEFAULT {.max_conns = 32, .max_head = 8192, .max_body = 0, \
                               .deadline_ms = 5000, .json_errors = 0, .name = "http"}

struct httpd_request {
    const char *method; /* "GET", "HEAD", ... (a token of at most 15 bytes) */
    const char *path;   /* starts with '/', without '?' and what follows */
    const char *query;  /* after '?', "" when none */
    const char *head;   /* the request line and headers, head_len bytes (httphead_get) */
    size_t head_len;
    const char *body;   /* body_len bytes, NUL-terminated ("" when none) */
    size_t body_len;
};

typedef void (*httpd_handler)(void *arg, const struct httpd_request *rq, struct httpd_conn *c);

/* Listens on host:port (host an address, a name, or * for any; port 0: a free one).
 * An address in use is CORRAL_EUNAVAIL, one that does not resolve CORRAL_EINVAL. */
int httpd_open(struct httpd **out, const char *host, int port, const struct httpd_options *opt,
               httpd_handler handle, void *arg, struct cerr *e);
/* The port bound (port 0 resolved). */
int httpd_port(const struct httpd *h);

/*
 * Answers the request: status, its Content-Type, extra header lines (each ending
 * "\r\n", or NULL) and len bytes of body, all copied. Call once, from the handler.
 */
void httpd_reply(struct httpd_conn *c, int status, const char *content_type,
                 const char *headers, const char *body, size_t len);

/* What httpd_serve waits for: at most max_conns + 1 entries. Returns how many. */
size_t httpd_pollfds(const struct httpd *h, struct pollfd *fds, size_t cap);
/* Accepts, reads, answers, writes and closes what it can without blocking. */
void httpd_serve(struct httpd *h);
/* Polls and serves until stop_fd (when >= 0) is readable or has hung up. */
void httpd_run(struct httpd *h, int stop_fd);
void httpd_close(struct httpd *h);

/* The reason phrase of an HTTP status ("Not Found"), "Error" for one it does not know. */
const char *httpd_reason(int status);

#endif
