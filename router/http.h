/*
 * HTTP/1.1 server on libuv with http-parser.
 *
 * Usage: fill a `struct http_limits` (http_limits_default gives sane values),
 * create the server with http_server_new(loop, &limits, handler, arg), then
 * http_server_listen(). For every complete request the server calls
 * handler(arg, req) on the loop thread. The handler (now or later, from any
 * callback on the loop thread) answers it exactly once with http_respond();
 * nothing else may be done with `req` after that call.
 *
 * Ownership: a request belongs to the server until the handler responds. If the
 * client goes away first, the request is detached from its connection
 * (http_request_alive() turns false) but stays valid; the eventual
 * http_respond() then just frees it. Pipelined requests on one connection are
 * handed to the handler as soon as they are parsed (so they run concurrently)
 * and their answers are written in request order.
 *
 * Limits enforced here, with the status sent back before closing: request line
 * plus headers over max_header_bytes (431), declared or received body over
 * max_body_bytes (413, checked against Content-Length before any body is read),
 * malformed HTTP (400), a request whose bytes (request line, headers and
 * body) take longer than request_timeout_ms to arrive once its first byte came
 * (408: a slow sender holds one descriptor, never the loop). Idle keep-alive
 * connections close after idle_timeout_ms; connections beyond max_connections
 * are closed on accept. A connection stops reading while max_pipelined of its
 * requests are unanswered.
 *
 * Abort: a handler that keeps a request while it works (an upstream call) may
 * register http_request_on_abort(); if the client connection goes away first,
 * the function runs once on the loop thread (the request is already detached,
 * so the handler still answers it, and that answer is dropped).
 *
 * Several servers, each on its own loop and thread, can share one port when
 * each calls http_server_set_reuseport() before listening (SO_REUSEPORT: the
 * kernel spreads new connections over the listeners).
 *
 * The process must ignore SIGPIPE: libuv writes with write(2), and a client
 * that has gone away would otherwise end the process.
 *
 * http_server_close() stops accepting, closes every connection and calls
 * `done` once all of the server's libuv handles are closed; http_server_drain()
 * first lets the requests in flight be answered.
 */
#ifndef CORRAL_ROUTER_HTTP_H
#define CORRAL_ROUTER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"

struct http_limits {
    size_t max_header_bytes;
    size_t max_body_bytes;
    unsigned idle_timeout_ms;
    unsigned max_connections;
    unsigned max_pipelined;
    unsigned max_headers;
    unsigned request_timeout_ms; /* 0: no deadline for receiving one request */
};

void http_limits_default(struct http_limits *l);

struct http_header {
    const char *name;
    const char *value;
};

struct http_conn;
struct http_server;

struct http_request {
    /* Read-only for handlers. */
    int method;              /* enum http_method of http_parser.h */
    const char *method_name; /* "GET" */
    char *target;            /* request target as sent, NUL-terminated */
    char *path;              /* percent-decoded path without the query */
    char *query;             /* raw query string or "" */
    struct http_header *headers;
    int n_headers;
    uint8_t *body;  /* body bytes (NUL-terminated for convenience, not part of body_len) */
    size_t body_len;
    int http_major, http_minor;
    int keep_alive;
    uint64_t seq;      /* per-server request number, for logs */
    uint64_t start_ns; /* uv_hrtime() when the request was complete */
    void *user;        /* free for the handler */
    char *log_note;    /* malloc'd text the handler adds to the request's log line */

    /* Private to http.c. */
    struct http_conn *conn;
    struct http_request *next;
    int responded;
    int status;
    char *resp_head;
    size_t resp_head_len;
    char *resp_body;
    size_t resp_body_len;
    char *hbuf;
    size_t hbuf_len, hbuf_cap;
    size_t *hoff; /* name/value offsets into hbuf while parsing */
    int hstate;
    size_t url_len, url_cap;
    size_t trailer_len; /* chunked trailer bytes read (and dropped) */
    size_t body_cap;
    void (*abort_fn)(void *);
    void *abort_arg;
};

typedef void (*http_handler_fn)(void *arg, struct http_request *req);

int http_server_new(struct http_server **out, uv_loop_t *loop, const struct http_limits *lim,
                    http_handler_fn handler, void *arg, struct cerr *e);
/* Listen with SO_REUSEPORT, so that other servers may bind the same port. */
void http_server_set_reuseport(struct http_server *s, int on);
/* Binds host:port (port 0: an ephemeral one) and listens; *bound_port gets the port. */
int http_server_listen(struct http_server *s, const char *host, int port, int *bound_port,
                       struct cerr *e);
/* The same in two steps: bind (connections to the port are refused until the server
 * listens; *bound_port gets the port), then start listening. host and port only name
 * the address in errors. */
int http_server_bind(struct http_server *s, const char *host, int port, int *bound_port,
                     struct cerr *e);
int http_server_start(struct http_server *s, const char *host, int port, struct cerr *e);
/*
 * Stops accepting and lets the open connections finish: idle ones close now,
 * one with requests in flight answers them (the last with "Connection:
 * close") and then closes. drained(arg) runs once, later, on the loop thread
 * when no connection is left; the server is then closed with
 * http_server_close(), which may also be called before that to cut the rest.
 */
void http_server_drain(struct http_server *s, void (*drained)(void *), void *arg);
/* Stops and frees the server once every handle is closed; done(arg) then runs. */
void http_server_close(struct http_server *s, void (*done)(void *), void *done_arg);
/* Number of open client connections. */
unsigned http_server_connections(const struct http_server *s);

/* Case-insensitive header lookup; NULL when absent. */
const char *http_request_header(const struct http_request *r, const char *name);
/* Frees the body early (a handler that has consumed it); body becomes NULL, body_len 0. */
void http_request_drop_body(struct http_request *r);
/* False once the client connection is gone (the answer will be dropped). */
int http_request_alive(const struct http_request *r);
/* Runs fn(arg) once if the client goes away before the request is answered. */
void http_request_on_abort(struct http_request *r, void (*fn)(void *), void *arg);
/* Replaces the request's log note (printf format); shown in its debug log line. */
void http_request_note(struct http_request *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Answers `req`: status, Content-Type (NULL: none), extra header lines (each
 * ending in "\r\n", or NULL), and a malloc'd body that this call takes over
 * (NULL with len 0 for none). Always consumes `req` and `body`.
 */
void http_respond(struct http_request *req, int status, const char *content_type,
                  const char *extra_headers, char *body, size_t len);

/* Reason phrase for a status ("Not Found"). */
const char *http_status_text(int status);

/*
 * Percent-decodes the path part of a request target into dst (capacity cap,
 * NUL-terminated) and points *query at the raw query (or ""); accepts
 * origin-form ("/a?b") and absolute-form ("http://h/a?b"). Returns 0, or -1
 * for a target that is not one of those or decodes to a NUL byte.
 */
int http_split_target(const char *target, char *dst, size_t cap, const char **query);

#endif
