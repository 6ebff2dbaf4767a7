/*
 * loop_io: two helpers for code on a libuv loop (named outside libuv's uv_ prefix).
 *
 * stream_send: writing to a libuv stream without waiting and without keeping the
 * caller's buffers: what the kernel takes at once is written with
 * uv_try_write, and a copy of the rest is queued with uv_write (only when
 * nothing is queued before it, so bytes never overtake each other).
 *
 *     int queued;
 *     if (stream_send(stream, bufs, n, on_sent, arg, &queued) < 0) ... the stream is unusable
 *     // on_sent(arg, status) runs later for a queued copy (status < 0 on failure,
 *     // UV_ECANCELED when the handle was closed first)
 */
#ifndef CORRAL_LOOP_IO_H
#define CORRAL_LOOP_IO_H

#include <uv.h>

/* 0 when everything was written or queued (*queued, when not NULL, says whether a
 * copy was queued); a negative libuv error (UV_ENOMEM included) when nothing was. */
int stream_send(uv_stream_t *st, const uv_buf_t *b, unsigned nb, void (*on_sent)(void *arg, int status),
            void *arg, int *queued);

/*
 * loop_turn: runs fn(arg) once, at the end of the current turn of the loop: after
 * its I/O callbacks (a uv_check), or, when armed outside them (from a timer),
 * before the loop would sleep in poll (a uv_idle keeps it from sleeping). Work
 * gathered during a turn (writes to coalesce) is then done once per turn
 * without ever waiting for the next wake-up.
 */
struct loop_turn {
    uv_check_t check;
    uv_idle_t idle;
    int armed;
    void (*fn)(void *arg);
    void *arg;
};
void loop_turn_init(uv_loop_t *loop, struct loop_turn *t, void (*fn)(void *arg), void *arg);
void loop_turn_arm(struct loop_turn *t);
/* Closes both handles; `closed` runs twice, once per handle, with h->data == arg. */
void loop_turn_close(struct loop_turn *t, uv_close_cb closed);

#endif
