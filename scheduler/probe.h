/*
 * probe: asks one replica for its own health over its SP request/reply protocol
 * (HealthRequest -> HealthResponse: live, ready, state, reason), without blocking the
 * supervisor's loop.
 *
 * Usage (all calls from the loop's thread):
 *     struct sched_probe p;
 *     sched_probe_init(&p);
 *     if (sched_probe_open(&p, "tcp://127.0.0.1:40123", &e)) ... e.msg ...
 *     sched_probe_start(&p, 500);          // one probe in flight at a time
 *     ... each tick:
 *     struct sched_health h;
 *     if (sched_probe_poll(&p, &h)) ... h.ok, h.live, h.state, h.why ...
 *     sched_probe_close(&p);               // waits for a callback in progress
 *
 * One NNG req0 socket per replica (dialled without blocking; NNG reconnects), and one
 * nng_aio that sends the request and then receives the answer within `timeout_ms` in
 * all. The aio's callback runs on an NNG thread: it only chains the receive after the
 * send and then publishes the outcome with one atomic store (no lock of ours is taken
 * there); the loop picks it up with sched_probe_poll and decodes the answer itself.
 * While a probe is in flight the loop touches nothing but the `done` flag.
 */
#ifndef CORRAL_SCHEDULER_PROBE_H
#define CORRAL_SCHEDULER_PROBE_H

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>
#include <stdatomic.h>

#include "error.h"

struct sched_health {
    int ok;         /* an answer came within the timeout */
    int live, ready;
    char state[32]; /* "starting", "ready", "draining", "failed" */
    char why[256];  /* the transport error, or the replica's reason */
};

struct sched_probe {
    int open;
    nng_socket sock;
    nng_aio *aio;
    int busy;           /* a probe is in flight (the callback owns the fields below) */
    atomic_int done;    /* set by the callback when the probe finished */
    int phase;          /* callback: 0 sending, 1 receiving */
    nng_time deadline;  /* callback: when the whole probe times out */
    int rv;             /* callback: the outcome (0, or an NNG error) */
    nng_msg *reply;     /* callback: the answer when rv == 0 (the loop frees it) */
};

void sched_probe_init(struct sched_probe *p);
/* Opens the socket and dials `url` in the background. */
int sched_probe_open(struct sched_probe *p, const char *url, struct cerr *e);
/* Starts one probe; 0, or -1 when one is in flight already or the probe is not open. */
int sched_probe_start(struct sched_probe *p, long timeout_ms);
/* 1 with the outcome in *h when the probe in flight finished; 0 while it runs (or
 * none was started). */
int sched_probe_poll(struct sched_probe *p, struct sched_health *h);
/* Stops a probe in flight (waiting for its callback), closes the socket; safe to
 * call on a probe that is not open. */
void sched_probe_close(struct sched_probe *p);

#endif
