#include "probe.h"

#include <nng/protocol/reqrep0/req.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define PROBE_MAX_REPLY (64 << 10) /* a HealthResponse is a few dozen bytes */

/* On an NNG thread. Owns phase/deadline/rv/reply while p->busy; publishes with `done`. */
static void probe_cb(void *arg)
{
    struct sched_probe *p = arg;
    int rv = nng_aio_result(p->aio);
    if (rv == 0 && p->phase == 0) {
        nng_time now = nng_clock();
        if (now < p->deadline) {
            p->phase = 1;
            nng_aio_set_timeout(p->aio, (nng_duration)(p->deadline - now));
            nng_recv_aio(p->sock, p->aio);
            return;
        }
        rv = NNG_ETIMEDOUT;
    } else if (rv != 0 && p->phase == 0) {
        /* The send did not complete: its message is still ours. */
        nng_msg *m = nng_aio_get_msg(p->aio);
        nng_aio_set_msg(p->aio, NULL);
        if (m)
            nng_msg_free(m);
    }
    p->rv = rv;
    p->reply = rv == 0 ? nng_aio_get_msg(p->aio) : NULL;
    nng_aio_set_msg(p->aio, NULL);
    atomic_store_explicit(&p->done, 1, memory_order_release);
}

void sched_probe_init(struct sched_probe *p)
{
    memset(p, 0, sizeof *p);
    atomic_init(&p->done, 0);
}

int sched_probe_open(struct sched_probe *p, const char *url, struct cerr *e)
{
    int rv;
    sched_probe_close(p);
    if ((rv = nng_req0_open(&p->sock)) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot open an NNG socket: %s", nng_strerror(rv));
    nng_socket_set_size(p->sock, NNG_OPT_RECVMAXSZ, PROBE_MAX_REPLY);
    /* A probe that is not answered is a miss, not something to send again. */
    nng_socket_set_ms(p->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_ms(p->sock, NNG_OPT_RECONNMINT, 50);
    nng_socket_set_ms(p->sock, NNG_OPT_RECONNMAXT, 500);
    if ((rv = nng_aio_alloc(&p->aio, probe_cb, p)) != 0) {
        nng_close(p->sock);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate an NNG aio: %s", nng_strerror(rv));
    }
    if ((rv = nng_dial(p->sock, url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        nng_aio_free(p->aio);
        p->aio = NULL;
        nng_close(p->sock);
        return cerr_set(e, CORRAL_EIO, "cannot dial %s: %s", url, nng_strerror(rv));
    }
    p->open = 1;
    p->busy = 0;
    atomic_store(&p->done, 0);
    return CORRAL_OK;
}

int sched_probe_start(struct sched_probe *p, long timeout_ms)
{
    if (!p->open || p->busy)
        return -1;
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__HealthRequest hr = CORRAL__HEALTH_REQUEST__INIT;
    req.kind_case = CORRAL__REQUEST__KIND_HEALTH;
    req.health = &hr;
    uint8_t *buf = NULL;
    size_t len = 0;
    nng_msg *m = NULL;
    if (wire_pack_request(&req, &buf, &len) != 0)
        return -1;
    if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, buf, len) != 0) {
        free(buf);
        if (m)
            nng_msg_free(m);
        return -1;
    }
    free(buf);
    p->phase = 0;
    p->rv = 0;
    p->reply = NULL;
    p->deadline = nng_clock() + (nng_time)timeout_ms;
    atomic_store(&p->done, 0);
    p->busy = 1;
    nng_aio_set_timeout(p->aio, (nng_duration)timeout_ms);
    nng_aio_set_msg(p->aio, m);
    nng_send_aio(p->sock, p->aio);
    return 0;
}

static void decode(nng_msg *m, struct sched_health *h)
{
    Corral__Response *r = NULL;
    struct cerr e = {0};
    if (wire_decode_response(nng_msg_body(m), nng_msg_len(m), &r, &e) != CORRAL_OK) {
        snprintf(h->why, sizeof h->why, "undecodable answer: %.200s", e.msg);
        return;
    }
    if (r->kind_case != CORRAL__RESPONSE__KIND_HEALTH || !r->health) {
        snprintf(h->why, sizeof h->why, "answered with kind %d, not health", (int)r->kind_case);
    } else {
        h->ok = 1;
        h->live = r->health->live;
        h->ready = r->health->ready;
        snprintf(h->state, sizeof h->state, "%s", r->health->state ? r->health->state : "");
        snprintf(h->why, sizeof h->why, "%s", r->health->reason ? r->health->reason : "");
    }
    corral__response__free_unpacked(r, NULL);
}

int sched_probe_poll(struct sched_probe *p, struct sched_health *h)
{
    if (!p->busy || !atomic_load_explicit(&p->done, memory_order_acquire))
        return 0;
    p->busy = 0;
    memset(h, 0, sizeof *h);
    if (p->rv != 0) {
        snprintf(h->why, sizeof h->why, "%s",
                 p->rv == NNG_ETIMEDOUT ? "no answer within the timeout" : nng_strerror(p->rv));
    } else if (p->reply) {
        decode(p->reply, h);
        nng_msg_free(p->reply);
        p->reply = NULL;
    }
    return 1;
}

void sched_probe_close(struct sched_probe *p)
{
    if (!p->open)
        return;
    /* Cancels what is in flight and waits for the callback; a receive it would chain
     * afterwards is refused by the stopped aio. */
    nng_aio_free(p->aio);
    p->aio = NULL;
    if (p->busy && atomic_load(&p->done) && p->reply)
        nng_msg_free(p->reply);
    p->reply = NULL;
    p->busy = 0;
    nng_close(p->sock);
    p->open = 0;
}
