/*
 * sp_uv_client (API prefix sp_req_): the requesting end of one SP REQ/REP
 * connection over TCP (the protocol a replica's REP socket speaks), run on a
 * libuv loop: the libuv driver of sp_proto.h's connection state.
 *
 * The router keeps one per replica. Requests go out as
 *   64-bit big-endian length | 32-bit request id (top bit set) | body
 * after the 8-byte SP header that names REQv0; replies come back with the
 * same id in front. Everything happens on the loop thread, so a request costs
 * no thread hand-off: the requests routed in one turn of the loop leave in one
 * write right after that turn's I/O callbacks (requests over 64 KiB go at
 * once), and one read may deliver many replies.
 *
 * The connection is made at sp_req_open() and made again after it drops,
 * waiting 50 ms at first and doubling up to 1 s. Events:
 *   up(arg)                 connected, headers exchanged
 *   down(arg, why)          a connection that was up is gone (requests
 *                           written on it will not be answered)
 *   reply(arg, id, body, n) one reply; `body` is valid during the call only
 * Events never run inside sp_req_send() or sp_req_open(); they run from the
 * loop.
 */
#ifndef CORRAL_SP_UV_CLIENT_H
#define CORRAL_SP_UV_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "error.h"

struct sp_req;

struct sp_req_events {
    void (*up)(void *arg);
    void (*down)(void *arg, const char *why);
    void (*reply)(void *arg, uint32_t id, const uint8_t *body, size_t len);
};

/*
 * Parses `url` (tcp://HOST:PORT; HOST a name, an IPv4 address or [IPv6]),
 * resolves it and starts connecting. Replies over `max_reply` bytes end the
 * connection as a protocol error.
 */
int sp_req_open(struct sp_req **out, uv_loop_t *loop, const char *url, size_t max_reply,
                const struct sp_req_events *ev, void *arg, struct cerr *e);
/* Whether the connection is up (headers exchanged). */
int sp_req_connected(const struct sp_req *s);
/*
 * Queues one request with id `id` (31 bits: the top bit is the protocol's
 * marker). Returns 0 when it was written or queued on a connection that is up
 * (if that connection then fails, `down` follows), -1 when there is no
 * connection or the body is over 4 GiB. The body is copied: the caller's
 * buffer is free on return.
 */
int sp_req_send(struct sp_req *s, uint32_t id, const uint8_t *body, size_t len);
/* Stops for good: no event runs afterwards; `closed(arg)` runs once all is released. */
void sp_req_close(struct sp_req *s, void (*closed)(void *arg));

#endif
