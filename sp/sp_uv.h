/*
 * sp_uv: the libuv driver's parts shared by the SP client (sp_uv_client.h) and
 * server (sp_uv_server.h): sending without waiting, work at the end of a turn of
 * the loop, the read buffer and the batch of messages written in one go.
 *
 * sp_uv_send: writing to a libuv stream without waiting and without keeping the
 * caller's buffers: what the kernel takes at once is written with
 * uv_try_write, and a copy of the rest is queued with uv_write (only when
 * nothing is queued before it, so bytes never overtake each other).
 *
 *     int queued;
 *     if (sp_uv_send(stream, bufs, n, on_sent, arg, &queued) < 0) ... the stream is unusable
 *     // on_sent(arg, status) runs later for a queued copy (status < 0 on failure,
 *     // UV_ECANCELED when the handle was closed first)
 */
#ifndef CORRAL_SP_UV_H
#define CORRAL_SP_UV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* 0 when everything was written or queued (*queued, when not NULL, says whether a
 * copy was queued); a negative libuv error (UV_ENOMEM included) when nothing was. */
int sp_uv_send(uv_stream_t *st, const uv_buf_t *b, unsigned nb,
               void (*on_sent)(void *arg, int status), void *arg, int *queued);

/*
 * sp_uv_turn: runs fn(arg) once, at the end of the current turn of the loop: after
 * its I/O callbacks (a uv_check), or, when armed outside them (from a timer),
 * before the loop would sleep in poll (a uv_idle keeps it from sleeping). Work
 * gathered during a turn (writes to coalesce) is then done once per turn
 * without ever waiting for the next wake-up.
 */
struct sp_uv_turn {
    uv_check_t check;
    uv_idle_t idle;
    int armed;
    void (*fn)(void *arg);
    void *arg;
};
void sp_uv_turn_init(uv_loop_t *loop, struct sp_uv_turn *t, void (*fn)(void *arg), void *arg);
void sp_uv_turn_arm(struct sp_uv_turn *t);
/* Closes both handles; `closed` runs twice, once per handle, with h->data == arg. */
void sp_uv_turn_close(struct sp_uv_turn *t, uv_close_cb closed);

/* Bytes read at a time, and the unit the buffers below grow by. */
#define SP_UV_CHUNK (64 * 1024)

/* Bytes received and not yet taken by the stream parser (sp_proto.h). */
struct sp_uv_in {
    uint8_t *buf;
    size_t len, cap;
};

/* For a uv_alloc_cb: room for SP_UV_CHUNK more bytes after those held, or an empty
 * buffer when out of memory (the read callback then gets UV_ENOBUFS). */
void sp_uv_in_alloc(struct sp_uv_in *in, uv_buf_t *buf);

/*
 * Messages gathered during a turn of the loop, to leave in one write at its end.
 * `write(arg, bufs, n)` is the owner's: it sends the buffers (copying what the kernel
 * does not take at once) and returns -1 when the connection is gone.
 */
struct sp_uv_batch {
    uint8_t *buf;
    size_t len, cap;
};
typedef int (*sp_uv_write_fn)(void *arg, const uv_buf_t *b, unsigned nb);

/*
 * Adds one message, `head` then `body`: 0 when it waits in the batch (the owner arms
 * its end-of-turn flush), 1 when it went out at once (messages over SP_UV_CHUNK,
 * written after what the batch held, without the copy), -1 when out of memory.
 */
int sp_uv_batch_add(struct sp_uv_batch *bt, const void *head, size_t hl, const void *body,
                    size_t len, sp_uv_write_fn write, void *arg);
/* Writes what the batch holds and empties it; the write's answer, 0 when empty. */
int sp_uv_batch_flush(struct sp_uv_batch *bt, sp_uv_write_fn write, void *arg);

#endif
