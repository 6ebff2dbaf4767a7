/*
 * loop_io: write now, queue a copy of the rest. See loop_io.h.
 */
#include "loop_io.h"

#include <stdlib.h>
#include <string.h>

struct send_req {
    uv_write_t req;
    void (*on_sent)(void *arg, int status);
    void *arg;
    uint8_t data[];
};

static void on_write(uv_write_t *req, int status)
{
    struct send_req *w = (struct send_req *)req;
    void (*on_sent)(void *, int) = w->on_sent;
    void *arg = w->arg;
    free(w);
    if (on_sent)
        on_sent(arg, status);
}

int stream_send(uv_stream_t *st, const uv_buf_t *b, unsigned nb, void (*on_sent)(void *arg, int status),
            void *arg, int *queued)
{
    size_t total = 0, done = 0;
    if (queued)
        *queued = 0;
    for (unsigned i = 0; i < nb; i++)
        total += b[i].len;
    if (uv_stream_get_write_queue_size(st) == 0) {
        int r = uv_try_write(st, b, nb);
        if (r >= 0 && (size_t)r == total)
            return 0;
        if (r < 0 && r != UV_EAGAIN)
            return r;
        done = r > 0 ? (size_t)r : 0;
    }
    struct send_req *w = malloc(sizeof *w + (total - done));
    if (!w)
        return UV_ENOMEM;
    w->on_sent = on_sent;
    w->arg = arg;
    size_t at = 0, skip = done;
    for (unsigned i = 0; i < nb; i++) {
        size_t l = b[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(w->data + at, b[i].base + skip, l - skip);
        at += l - skip;
        skip = 0;
    }
    uv_buf_t rest = uv_buf_init((char *)w->data, (unsigned)at);
    int r = uv_write(&w->req, st, &rest, 1, on_write);
    if (r < 0) {
        free(w);
        return r;
    }
    if (queued)
        *queued = 1;
    return 0;
}

static void turn_run(struct loop_turn *t)
{
    uv_check_stop(&t->check);
    uv_idle_stop(&t->idle);
    t->armed = 0;
    t->fn(t->arg);
}

static void on_turn_check(uv_check_t *h)
{
    turn_run(h->data);
}

static void on_turn_idle(uv_idle_t *h)
{
    turn_run(h->data);
}

void loop_turn_init(uv_loop_t *loop, struct loop_turn *t, void (*fn)(void *arg), void *arg)
{
    uv_check_init(loop, &t->check);
    uv_idle_init(loop, &t->idle);
    t->check.data = t;
    t->idle.data = t;
    t->armed = 0;
    t->fn = fn;
    t->arg = arg;
}

void loop_turn_arm(struct loop_turn *t)
{
    if (t->armed)
        return;
    t->armed = 1;
    uv_check_start(&t->check, on_turn_check);
    uv_idle_start(&t->idle, on_turn_idle);
}

void loop_turn_close(struct loop_turn *t, uv_close_cb closed)
{
    uv_check_stop(&t->check);
    uv_idle_stop(&t->idle);
    t->armed = 0;
    /* The close callbacks see the owner's argument, not the turn. */
    t->check.data = t->arg;
    t->idle.data = t->arg;
    uv_close((uv_handle_t *)&t->check, closed);
    uv_close((uv_handle_t *)&t->idle, closed);
}
