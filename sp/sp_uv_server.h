/*
 * sp_uv_server (API prefix sp_serve_): the replying end of SP REQ/REP over TCP
 * (what NNG's REP socket speaks, and what libcorral's REQ socket expects) on one
 * libuv loop: the libuv driver of sp_proto.h's connection state, serving the
 * router's RPC endpoint.
 *
 * A server owns the connections accepted on its listening socket. Each
 * connection sends the 8-byte SP header naming REPv0 at once and expects the
 * peer's to name REQv0; then every frame (64-bit big-endian length, body) is
 * a request: its leading 32-bit "backtrace" words, up to and including the
 * first with the top bit set (at most 8 words), are kept and put in front of
 * the reply. Frames without such a word are dropped, frames over max_frame
 * end the connection. Replies may be given in any order; the replies given in
 * one turn of the loop leave in one write per connection.
 *
 * Usage (everything on the loop's thread except sp_serve_bind):
 *     sp_serve_bind("tcp://0.0.0.0:8001", 1, -1, &fd, bound, sizeof bound, &e);
 *     sp_serve_new(&s, loop, &opt, on_request, arg, &e);
 *     sp_serve_listen_fd(s, fd, &e);      // s owns fd from here on
 *     // on_request(arg, req, body, len): body is valid during the call only;
 *     // later, exactly once:
 *     sp_serve_reply(req, answer, answer_len);   // copied; req is gone after
 *     ...
 *     sp_serve_quiesce(s);   // no new connections or requests; replies still go out
 *     sp_serve_close(s);     // closes everything; memory is released once the
 *                            // loop has run its close callbacks and every
 *                            // request handed out has been replied to
 *
 * A request whose connection has gone is still replied to (the reply is
 * dropped), so the caller's per-request state has one simple lifetime. Each
 * request may carry `req_size` bytes of the caller's own (sp_serve_req_data).
 *
 * Limits: at most max_conns connections (further ones are closed at once), at
 * most max_inflight requests handed out and not replied to (connections are
 * not read meanwhile), a connection that has not sent its SP header within
 * handshake_ms is closed, and one whose peer does not read its replies stops
 * being read.
 */
#ifndef CORRAL_SP_UV_SERVER_H
#define CORRAL_SP_UV_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"

struct sp_serve;
struct sp_serve_req;

struct sp_serve_options {
    unsigned max_conns;    /* 0: 4096 */
    unsigned max_inflight; /* 0: 1024 */
    size_t max_frame;      /* largest frame taken (backtrace included); 0: 256 MiB */
    unsigned handshake_ms; /* 0: 10000 */
    size_t req_size;       /* caller's bytes per request */
};

typedef void (*sp_serve_handler)(void *arg, struct sp_serve_req *req, const uint8_t *body,
                                 size_t len);

/*
 * Creates a TCP socket bound to `url` (tcp://HOST:PORT, HOST an address, a
 * name, [IPv6] or * for any), listening. `port` >= 0 replaces the URL's port;
 * `reuseport` sets SO_REUSEPORT so that other sockets may bind the same
 * address. *fd gets the socket, `bound` the URL actually bound (port 0
 * resolved). Callable from any thread.
 */
int sp_serve_bind(const char *url, int reuseport, int port, int *fd, char *bound,
                  size_t bound_len, struct cerr *e);
/* The port of a bound URL as sp_serve_bind writes it, or -1. */
int sp_serve_url_port(const char *bound);

int sp_serve_new(struct sp_serve **out, uv_loop_t *loop, const struct sp_serve_options *opt,
                 sp_serve_handler handler, void *arg, struct cerr *e);
/* Accepts connections on the listening socket `fd`, which the server owns from now on
 * (also when this fails). */
int sp_serve_listen_fd(struct sp_serve *s, int fd, struct cerr *e);
void *sp_serve_req_data(struct sp_serve_req *req);
/* Answers `req` with `len` bytes (copied) and releases it. */
void sp_serve_reply(struct sp_serve_req *req, const void *body, size_t len);
/* Connections open now. */
unsigned sp_serve_connections(const struct sp_serve *s);
void sp_serve_quiesce(struct sp_serve *s);
void sp_serve_close(struct sp_serve *s);

#endif
