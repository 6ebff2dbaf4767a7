/*
 * The HTTP server's private parts, shared by http.c (connections, their I/O and timers,
 * responses, the listener) and http_parse.c (the parser callbacks that turn bytes into
 * requests): the server and connection structs and the few connection operations the
 * parser calls. Nothing outside router/http*.c includes this.
 */
#ifndef CORRAL_ROUTER_HTTP_INTERNAL_H
#define CORRAL_ROUTER_HTTP_INTERNAL_H

#include <http_parser.h>

#include "http.h"
#include "list.h"

#define HTTP_READ_CHUNK 65536
/* Bytes of answers queued for a client beyond which its further requests wait. */
#define HTTP_WRITE_HIGH ((size_t)4 << 20)

enum { HS_NONE = 0, HS_FIELD, HS_VALUE, HS_DONE /* headers complete: trailers follow */ };

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int listener_open;
    struct http_limits lim;
    http_handler_fn handler;
    void *arg;
    struct list_node conns; /* open connections, newest first */
    unsigned n_conns;
    unsigned handles; /* libuv handles not yet closed (listener, connections, rejects) */
    uint64_t seq;
    int closing;
    int draining;
    int reuseport;
    void (*done)(void *);
    void *done_arg;
    void (*drained)(void *);
    void *drained_arg;
    char readbuf[HTTP_READ_CHUNK];
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    struct http_server *srv;
    struct list_node link; /* on srv->conns */
    http_parser parser;
    struct http_request *cur;         /* being parsed */
    struct http_request *head, *tail; /* complete, answered in this order */
    unsigned inflight;
    int err_status; /* status to answer when a parser callback rejected the message */
    char err_msg[256];
    int handles;
    int closing;
    int stop_reading; /* no further request will be parsed on this connection */
    int shutting_down;
    int paused;
    int reading;
    int in_feed, in_resume;
    char *stash; /* bytes read but not parsed while the parser is paused */
    size_t stash_len;
    int msg_active;         /* a request has begun arriving and is not complete */
    uint64_t msg_start_ms;  /* uv_now() when its first byte was parsed */
    uint64_t last_read_ms;  /* uv_now() of the last read or completed write: idle timeout */
    /* http_parser (as Debian builds it) takes any two bytes after a chunk's data for the
     * CRLF; these check them: the end of the bytes being parsed, and how many bytes of a
     * CRLF the next bytes must still supply (2, 1 or 0). */
    const char *feed_end;
    int crlf_due;
};

struct http_write {
    uv_write_t w;
    char *head;
    char *body;
};

/* http.c: the connection operations the parser callbacks use. */
void http_request_free(struct http_request *r);
/* Queues a complete request for its answer, in arrival order. */
void http_conn_enqueue(struct http_conn *c, struct http_request *r);
/* True while the connection may parse another request (answers pending below limits). */
int http_conn_can_parse(const struct http_conn *c);
/* Writes head and body (both malloc'd, taken) ahead of any answer (100 Continue). */
void http_conn_write_raw(struct http_conn *c, char *head, size_t hlen, char *body, size_t blen);

/* http_parse.c: the parser callbacks. */
extern const http_parser_settings http_parse_settings;

#endif
