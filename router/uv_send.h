/*
 * uv_send: writing to a libuv stream without waiting and without keeping the
 * caller's buffers: what the kernel takes at once is written with
 * uv_try_write, and a copy of the rest is queued with uv_write (only when
 * nothing is queued before it, so bytes never overtake each other).
 *
 *     int queued;
 *     if (uv_send(stream, bufs, n, on_sent, arg, &queued) < 0) ... the stream is unusable
 *     // on_sent(arg, status) runs later for a queued copy (status < 0 on failure,
 *     // UV_ECANCELED when the handle was closed first)
 */
#ifndef CORRAL_UV_SEND_H
#define CORRAL_UV_SEND_H

#include <uv.h>

/* 0 when everything was written or queued (*queued, when not NULL, says whether a
 * copy was queued); a negative libuv error (UV_ENOMEM included) when nothing was. */
int uv_send(uv_stream_t *st, const uv_buf_t *b, unsigned nb, void (*on_sent)(void *arg, int status),
            void *arg, int *queued);

#endif
