/*
 * control: the router's control endpoint, where the replica table changes at
 * run time (for the scheduler, corralctl and tests). Plain HTTP with JSON on
 * its own listener (--control-listen, default 127.0.0.1:8003), served on the
 * main thread's loop:
 *
 *   GET  /v1/replicas          {"generation": G, "acked": A, "replicas":
 *                               [{"model", "version", "url", "state"}],
 *                               "canaries": [{"model", "version", "percent"}]}
 *                               state: "active" or "draining"; an entry found
 *                               through DNS adds "source": "NAME=dns://HOST:PORT"
 *                               (router/dns.h)
 *   POST /v1/replicas          {"model": M, "version": V (optional), "url": U}
 *   POST /v1/replicas/drain    {"url": U}   no new requests; in flight answered
 *   POST /v1/replicas/remove   {"url": U}   gone once its requests are answered
 *   POST /v1/canary            {"model": M, "version": V, "percent": P}  P (0..100)
 *                               percent of M's requests that name no version go
 *                               to replicas of V, the rest to M's other replicas
 *                               (either side falls back to the other when it has
 *                               no replica to take a request); V may have no
 *                               replica yet. Replaces M's split if it has one.
 *   POST /v1/canary/clear      {"model": M}  404 when M has no split
 *
 * A change is answered ({"generation": G, "acked": A}) only once every router
 * thread has applied it (A >= G), so a caller that got the answer knows no
 * thread will send new work against it; a thread that does not apply it within
 * 10 s makes the answer a 504 naming the generation. With a token
 * (--control-token-file), every request must carry "Authorization: Bearer
 * TOKEN" (compared in constant time, never logged), or gets 401.
 *
 * Usage: control_new(loop, table, token or NULL, changed, arg) -- `changed`
 * runs on the loop after each accepted change (the caller tells its threads);
 * control_listen(); control_acked() whenever a thread reports a generation;
 * control_close() answers what still waits with 503 and closes.
 */
#ifndef CORRAL_ROUTER_CONTROL_H
#define CORRAL_ROUTER_CONTROL_H

#include <uv.h>

#include "error.h"
#include "membership.h"

struct control;

int control_new(struct control **out, uv_loop_t *loop, struct membership *table,
                const char *token, void (*changed)(void *arg), void *arg, struct cerr *e);
/* Binds host:port (port 0: any free one); *bound_port gets the port. */
int control_listen(struct control *c, const char *host, int port, int *bound_port,
                   struct cerr *e);
void control_acked(struct control *c);
void control_close(struct control *c);

#endif
