/*
 * dns: replicas followed through DNS, for `--replica NAME=dns://HOST:PORT` (a
 * Kubernetes headless Service names one A or AAAA record per ready pod).
 *
 * Every address HOST resolves to (A and AAAA, getaddrinfo's answer) is one
 * replica of model NAME at tcp://ADDR:PORT (tcp://[ADDR]:PORT for IPv6), in the
 * router's replica table (router/membership.h) with the watch as its source, so
 * it is dialled, health-checked and takes traffic only once it says ready, like
 * every entry. HOST is resolved once at start and then every refresh_ms: an
 * address that appears is added; one that disappears is marked draining (no new
 * work, what it holds is answered) and removed at the next refresh that still
 * misses it (membership_sync_source). A failed resolution keeps the last good
 * set; it is logged when the failure starts or changes and when it ends, never
 * at every refresh, and so is each change of the set. Entries that --replica
 * or the control endpoint put in the table are never touched: an address that
 * one of them already holds is left to it.
 *
 * Resolution runs on libuv's thread pool (uv_getaddrinfo), so a slow resolver
 * never blocks an event loop; one lookup per watch is in flight at a time, and a
 * refresh that comes while it is still running is skipped.
 *
 * Usage, on the main thread:
 *     dns_new(&d, loop, table, refresh_ms, changed, arg, &e);
 *     dns_watch(d, "digits", "dns://digits.default.svc:9101", &e);   // each spec
 *     dns_resolve_now(d);      // the first round, before the router threads start
 *     ... start the threads, then:
 *     dns_start(d);            // refreshes on `loop`; `changed(arg)` after each change
 *     dns_close(d);            // on the loop thread; lookups in flight are dropped
 * Everything but dns_resolve_now runs on the loop's thread.
 */
#ifndef CORRAL_ROUTER_DNS_H
#define CORRAL_ROUTER_DNS_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "error.h"
#include "membership.h"

#define DNS_MAX_ADDRS 256 /* addresses kept per watch; more are ignored (logged) */

struct dns;

/* Splits dns://HOST:PORT (HOST a name or an address, IPv6 in brackets; PORT 1..65535). */
int dns_parse_url(const char *url, char *host, size_t hl, int *port, struct cerr *e);
/* The replica URL of one resolved address: tcp://A.B.C.D:PORT or tcp://[V6]:PORT.
 * -1 for another family or no room. */
int dns_replica_url(const struct sockaddr *sa, int port, char *out, size_t len);

int dns_new(struct dns **out, uv_loop_t *loop, struct membership *table, unsigned refresh_ms,
            void (*changed)(void *arg), void *arg, struct cerr *e);
/* Follows `url` (dns://HOST:PORT) for `model`. Before dns_resolve_now. */
int dns_watch(struct dns *d, const char *model, const char *url, struct cerr *e);
/* Resolves every watch once, blocking (no loop runs yet), and fills the table. */
void dns_resolve_now(struct dns *d);
void dns_start(struct dns *d);
void dns_close(struct dns *d);

#endif
