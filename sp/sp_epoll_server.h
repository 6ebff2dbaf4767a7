/*
 * sp_epoll_server (API prefix sp_rep_): the REP side of the SP request/reply
 * protocol over TCP (the wire protocol NNG's REQ sockets speak), served by one
 * epoll I/O thread: the epoll driver of sp_proto.h's connection state, serving
 * the replica.
 *
 * Each accepted connection exchanges the 8-byte SP header (this side sends
 * protocol 49, REPv0, and requires 48, REQv0, from the peer), then carries
 * frames of a 64-bit big-endian length followed by that many bytes. A request
 * frame starts with its backtrace, 32-bit words up to and including the first
 * one with the top bit set (the request ID); its reply carries the same words
 * before the reply body. A peer may send many requests before reading any
 * reply, and replies may be sent in any order.
 *
 * The I/O thread reads requests in large chunks and calls the handler once per
 * request with the body (the backtrace removed). The handler, or any thread it
 * hands the request to, later calls sp_rep_reply() exactly once. The reply is
 * written straight to the socket by the replying thread when the connection
 * has nothing queued and the kernel takes it; only what the kernel refuses is
 * queued for the I/O thread. A reply for a connection that has closed in the
 * meantime is dropped.
 *
 * At most opt.max_pending requests are handed out and not yet replied to: at
 * that limit the I/O thread stops reading (peers' requests wait in the kernel
 * and in their own queues) until replies free slots. A malformed request (no
 * request ID in its first words) is dropped; a bad header, a frame longer than
 * opt.max_message or a read error closes that connection alone.
 *
 * Usage:
 *     struct sp_rep_options o = SP_REP_OPTIONS_DEFAULT;
 *     struct sp_rep *s;
 *     sp_rep_start(&s, "tcp://127.0.0.1:0", &o, handler, arg, &e);  // listening on return
 *     // handler(arg, req, body, len) on the I/O thread; body is valid during the call.
 *     // Later, from any thread: sp_rep_reply(req, buf, len);  // takes buf (malloc'd)
 *     sp_rep_stop(s);  // flushes queued replies briefly, closes, joins the thread
 *
 * Every request should be answered before sp_rep_stop(); one answered after it
 * is dropped safely, and the last such reply frees what the server still held.
 */
#ifndef CORRAL_SP_EPOLL_SERVER_H
#define CORRAL_SP_EPOLL_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct sp_rep;
/* One received request awaiting its reply (holds the backtrace and the connection). */
struct sp_rep_req;

/* Called on the I/O thread for every well-formed request; must not block for long. */
typedef void (*sp_rep_handler)(void *arg, struct sp_rep_req *req, const uint8_t *body,
                               size_t len);

struct sp_rep_options {
    int max_pending;    /* requests handed to the handler and not yet replied to */
    int max_conns;      /* connections served at once; further ones are closed at accept */
    size_t max_message; /* largest request frame (backtrace and body) accepted */
};
#define SP_REP_OPTIONS_DEFAULT {.max_pending = 64, .max_conns = 4096, .max_message = 1u << 20}

/*
 * Listens on url, tcp://HOST:PORT (also tcp4:// and tcp6://): HOST is an
 * address literal, [IPv6], a host name, or * (or nothing) for every IPv4
 * address; port 0 picks a free port. CORRAL_EUNAVAIL when the address is in
 * use, CORRAL_EINVAL for a URL that cannot be served.
 */
int sp_rep_start(struct sp_rep **out, const char *url, const struct sp_rep_options *opt,
                 sp_rep_handler handler, void *arg, struct cerr *e);
/* The address bound, as tcp://A.B.C.D:PORT or tcp://[ADDR]:PORT (port 0 resolved). */
const char *sp_rep_url(const struct sp_rep *s);
/*
 * Sends the reply to req and frees req. buf (len bytes, from malloc) is taken
 * over and freed; a NULL buf releases the request without a reply (the peer's
 * REQ socket resends it after its timeout). Callable from any thread.
 */
void sp_rep_reply(struct sp_rep_req *req, uint8_t *buf, size_t len);
void sp_rep_stop(struct sp_rep *s);

#endif
