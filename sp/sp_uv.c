/*
 * sp_uv: the libuv driver's shared parts. See sp_uv.h.
 */
#include "sp_uv.h"

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

int sp_uv_send(uv_stream_t *st, const uv_buf_t *b, unsigned nb,
               void (*on_sent)(void *arg, int status), void *arg, int *queued)
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

static void turn_run(struct sp_uv_turn *t)
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

void sp_uv_turn_init(uv_loop_t *loop, struct sp_uv_turn *t, void (*fn)(void *arg), void *arg)
{
    uv_check_init(loop, &t->check);
    uv_idle_init(loop, &t->idle);
    t->check.data = t;
    t->idle.data = t;
    t->armed = 0;
    t->fn = fn;
    t->arg = arg;
}

void sp_uv_turn_arm(struct sp_uv_turn *t)
{
    if (t->armed)
        return;
    t->armed = 1;
    uv_check_start(&t->check, on_turn_check);
    uv_idle_start(&t->idle, on_turn_idle);
}

void sp_uv_turn_close(struct sp_uv_turn *t, uv_close_cb closed)
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

/*
 * Makes room for `room` more bytes after the `used` ones of a buffer that grows
 * by doubling from `chunk` bytes; 0, or -1 (buffer unchanged) when out of memory.
 */
static int buf_room(uint8_t **buf, size_t *cap, size_t used, size_t room, size_t chunk)
{
    if (*cap - used >= room)
        return 0;
    size_t c = *cap ? *cap : chunk;
    while (c - used < room)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (!p)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}

void sp_uv_in_alloc(struct sp_uv_in *in, uv_buf_t *buf)
{
    if (buf_room(&in->buf, &in->cap, in->len, SP_UV_CHUNK, SP_UV_CHUNK)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)in->buf + in->len, (unsigned)(in->cap - in->len));
}

int sp_uv_batch_flush(struct sp_uv_batch *bt, sp_uv_write_fn write, void *arg)
{
    if (!bt->len)
        return 0;
    uv_buf_t b = uv_buf_init((char *)bt->buf, (unsigned)bt->len);
    bt->len = 0;
    int r = write(arg, &b, 1);
    if (bt->cap > 16 * SP_UV_CHUNK) {
        /* A burst grew the buffer; do not keep it for the quiet times. */
        free(bt->buf);
        bt->buf = NULL;
        bt->cap = 0;
    }
    return r;
}

int sp_uv_batch_add(struct sp_uv_batch *bt, const void *head, size_t hl, const void *body,
                    size_t len, sp_uv_write_fn write, void *arg)
{
    if (len > SP_UV_CHUNK) {
        /* Large messages go at once, after what is already waiting, without the copy
         * into the batch (the writer still copies what the kernel does not take at
         * once, so the caller's buffer is free on return either way). */
        if (sp_uv_batch_flush(bt, write, arg) < 0)
            return 1; /* the flush ended the connection: nothing more goes on it */
        uv_buf_t b[2] = {uv_buf_init((char *)(uintptr_t)head, (unsigned)hl),
                         uv_buf_init((char *)(uintptr_t)body, (unsigned)len)};
        write(arg, b, 2);
        return 1;
    }
    if (buf_room(&bt->buf, &bt->cap, bt->len, hl + len, SP_UV_CHUNK))
        return -1;
    memcpy(bt->buf + bt->len, head, hl);
    if (len)
        memcpy(bt->buf + bt->len + hl, body, len);
    bt->len += hl + len;
    return 0;
}
