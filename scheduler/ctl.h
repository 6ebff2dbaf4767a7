/*
 * ctl: a small blocking HTTP/1.1 client for the router's control endpoint
 * (router/control.h): POST /v1/replicas, /v1/replicas/drain, /v1/replicas/remove.
 *
 * Usage:
 *     int status;
 *     char body[512];
 *     if (sched_ctl_post("127.0.0.1", 8003, "/v1/replicas", "{\"url\":...}", 15000,
 *                        &status, body, sizeof body, &e))
 *         ... e.msg: could not connect, send or read within the timeout ...
 *     else if (status == 200) ... every router thread applied the change ...
 *
 * One connection per call ("Connection: close"), so nothing is kept between calls
 * and a restarted router is simply dialled again. The router answers a change only
 * once every one of its threads applied it (or 504 after 10 s), so `timeout_ms`
 * should be above that. Blocking is deliberate in this slice: the supervisor's loop
 * takes one step at a time and waits for each acknowledgement.
 */
#ifndef CORRAL_SCHEDULER_CTL_H
#define CORRAL_SCHEDULER_CTL_H

#include <stddef.h>

#include "error.h"

/* Sends `json` to http://host:port`path` and reads the answer. Returns CORRAL_OK with
 * the HTTP status in *status and the body (cut to fit, NUL-terminated) in `body`, or
 * an error in `e` when no answer came within `timeout_ms`. */
int sched_ctl_post(const char *host, int port, const char *path, const char *json,
                   long timeout_ms, int *status, char *body, size_t body_len, struct cerr *e);

/* The same with another method: GET /v1/replicas (json "") reads the router's table. */
int sched_ctl_request(const char *host, int port, const char *method, const char *path,
                      const char *json, long timeout_ms, int *status, char *body,
                      size_t body_len, struct cerr *e);

/* The JSON bodies the control endpoint takes; malloc'd, NULL when out of memory. */
char *sched_ctl_add_body(const char *model, long version, const char *url);
char *sched_ctl_url_body(const char *url);

#endif
