/*
 * sp_req: SP REQ over TCP on a libuv loop. See sp_req.h.
 */
#include "sp_req.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "sp_frame.h"
#include "loop_io.h"

enum { SP_IDLE, SP_CONNECTING, SP_HANDSHAKE, SP_UP };

#define SP_RETRY_MIN_MS 50
#define SP_RETRY_MAX_MS 1000
#define SP_READ_CHUNK (64 * 1024)

struct sp_req {
    uv_loop_t *loop;
    char url[256];
    struct sockaddr_storage addr;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t retry;
    int tcp_open, tcp_closing; /* the tcp handle is initialised / being closed */
    int state, was_up;
    unsigned backoff_ms;
    size_t max_frame;
    uint8_t *rbuf;
    size_t rlen, rcap;
    /* Requests routed in one turn of the loop leave in one write at its end
     * (loop_io.h's loop_turn), instead of one system call each. */
    uint8_t *obuf;
    size_t olen, ocap;
    struct loop_turn flush;
    struct sp_req_events ev;
    void *arg;
    int stopping, pending_closes;
    void (*closed)(void *arg);
    char why[256];
};

static void start_connect(struct sp_req *s);

static void release_step(struct sp_req *s)
{
    if (--s->pending_closes > 0)
        return;
    void (*closed)(void *) = s->closed;
    void *arg = s->arg;
    free(s->rbuf);
    free(s->obuf);
    free(s);
    if (closed)
        closed(arg);
}

static void on_retry(uv_timer_t *t)
{
    start_connect(t->data);
}

static void on_tcp_closed(uv_handle_t *h)
{
    struct sp_req *s = h->data;
    int was_up = s->was_up;
    s->tcp_open = s->tcp_closing = 0;
    s->state = SP_IDLE;
    s->was_up = 0;
    s->rlen = 0;
    s->olen = 0; /* requests not yet written are lost with the connection; `down` says so */
    if (s->rcap > 4 * SP_READ_CHUNK) {
        /* A large reply grew the buffer; do not keep it for the next connection. */
        free(s->rbuf);
        s->rbuf = NULL;
        s->rcap = 0;
    }
    if (s->stopping) {
        release_step(s);
        return;
    }
    if (was_up && s->ev.down)
        s->ev.down(s->arg, s->why);
    if (!s->stopping) {
        uv_timer_start(&s->retry, on_retry, s->backoff_ms, 0);
        s->backoff_ms = s->backoff_ms * 2 > SP_RETRY_MAX_MS ? SP_RETRY_MAX_MS : s->backoff_ms * 2;
    }
}

/* Ends the current connection; `down` and the next attempt follow from the close callback. */
static void drop(struct sp_req *s, const char *why)
{
    if (!s->tcp_open || s->tcp_closing)
        return;
    s->was_up = s->state == SP_UP;
    if (s->was_up || s->state == SP_HANDSHAKE)
        LOG_DEBUG("connection to %s ended: %s", s->url, why);
    snprintf(s->why, sizeof s->why, "%s", why);
    s->tcp_closing = 1;
    uv_close((uv_handle_t *)&s->tcp, on_tcp_closed);
}

static void on_sent(void *arg, int status)
{
    if (status < 0 && status != UV_ECANCELED) {
        char why[128];
        snprintf(why, sizeof why, "sending failed: %s", uv_strerror(status));
        drop(arg, why);
    }
}

/* Writes what the kernel takes now and queues the rest (copied). */
static int write_bufs(struct sp_req *s, uv_buf_t *b, unsigned nb)
{
    int r = stream_send((uv_stream_t *)&s->tcp, b, nb, on_sent, s, NULL);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof why, "sending failed: %s", uv_strerror(r));
        drop(s, why);
    }
    return 0;
}

static void flush_now(void *arg)
{
    struct sp_req *s = arg;
    if (!s->olen || s->state != SP_UP || s->tcp_closing) {
        s->olen = 0;
        return;
    }
    uv_buf_t b = uv_buf_init((char *)s->obuf, (unsigned)s->olen);
    s->olen = 0;
    write_bufs(s, &b, 1);
    if (s->ocap > 16 * SP_READ_CHUNK) {
        free(s->obuf);
        s->obuf = NULL;
        s->ocap = 0;
    }
}

int sp_req_send(struct sp_req *s, uint32_t id, const uint8_t *body, size_t len)
{
    if (s->state != SP_UP || s->tcp_closing || len > UINT32_MAX - 16)
        return -1;
    uint8_t hdr[12];
    sp_put_be64(hdr, (uint64_t)len + 4);
    sp_put_be32(hdr + 8, id | SP_ID_BIT);
    if (len > SP_READ_CHUNK) {
        /* Large requests go out at once, after what is already waiting, without the
         * copy into the batch buffer (write_bufs still copies what the kernel does not
         * take at once, so the caller's buffer is free on return either way). */
        if (s->olen)
            flush_now(s);
        uv_buf_t b[2] = {uv_buf_init((char *)hdr, sizeof hdr),
                         uv_buf_init((char *)body, (unsigned)len)};
        return write_bufs(s, b, 2);
    }
    if (sp_buf_room(&s->obuf, &s->ocap, s->olen, sizeof hdr + len, SP_READ_CHUNK)) {
        drop(s, "out of memory queueing a request");
        return 0;
    }
    memcpy(s->obuf + s->olen, hdr, sizeof hdr);
    memcpy(s->obuf + s->olen + sizeof hdr, body, len);
    s->olen += sizeof hdr + len;
    loop_turn_arm(&s->flush);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct sp_req *s = h->data;
    if (sp_buf_room(&s->rbuf, &s->rcap, s->rlen, SP_READ_CHUNK, SP_READ_CHUNK)) {
        *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)s->rbuf + s->rlen, (unsigned)(s->rcap - s->rlen));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct sp_req *s = st->data;
    char why[200];
    if (nread < 0) {
        if (nread == UV_EOF)
            snprintf(why, sizeof why, "closed by the replica");
        else
            snprintf(why, sizeof why, "receiving failed: %s", uv_strerror((int)nread));
        drop(s, why);
        return;
    }
    if (s->tcp_closing)
        return;
    s->rlen += (size_t)nread;
    size_t off = 0;
    if (s->state == SP_HANDSHAKE) {
        if (s->rlen < 8)
            return;
        int proto = sp_header_proto(s->rbuf);
        if (proto < 0) {
            drop(s, "the peer does not speak the SP protocol (is this a corral replica?)");
            return;
        }
        if (proto != SP_PROTO_REP) {
            snprintf(why, sizeof why, "the peer speaks SP protocol %d, expected REP (%d)", proto,
                     SP_PROTO_REP);
            drop(s, why);
            return;
        }
        off = 8;
        s->state = SP_UP;
        s->backoff_ms = SP_RETRY_MIN_MS;
        if (s->ev.up)
            s->ev.up(s->arg);
        if (s->state != SP_UP || s->tcp_closing)
            return;
    }
    while (s->rlen - off >= 8) {
        uint64_t n = sp_get_be64(s->rbuf + off);
        if (n < 4 || n > s->max_frame) {
            snprintf(why, sizeof why, "reply frame of %llu bytes (expected 4 to %zu)",
                     (unsigned long long)n, s->max_frame);
            drop(s, why);
            return;
        }
        if (s->rlen - off - 8 < n)
            break;
        const uint8_t *f = s->rbuf + off + 8;
        uint32_t id = sp_get_be32(f);
        off += 8 + (size_t)n;
        /* A reply without the request-id bit is not one of ours; NNG drops those too. */
        if ((id & SP_ID_BIT) && s->ev.reply)
            s->ev.reply(s->arg, id & ~SP_ID_BIT, f + 4, (size_t)n - 4);
        if (s->state != SP_UP || s->tcp_closing)
            return;
    }
    if (off) {
        memmove(s->rbuf, s->rbuf + off, s->rlen - off);
        s->rlen -= off;
    }
    if (s->rlen >= 8) {
        /* Make room for the whole frame now so that large replies arrive in few reads. */
        size_t need = 8 + (size_t)sp_get_be64(s->rbuf) + SP_READ_CHUNK;
        if (need > s->rcap) {
            uint8_t *p = realloc(s->rbuf, need);
            if (!p) {
                drop(s, "out of memory receiving a reply");
                return;
            }
            s->rbuf = p;
            s->rcap = need;
        }
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    struct sp_req *s = req->data;
    if (status == UV_ECANCELED || s->tcp_closing || s->stopping)
        return;
    if (status < 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot connect: %s", uv_strerror(status));
        drop(s, why);
        return;
    }
    s->state = SP_HANDSHAKE;
    uint8_t hello[8];
    sp_header(hello, SP_PROTO_REQ);
    uv_buf_t b = uv_buf_init((char *)hello, sizeof hello);
    write_bufs(s, &b, 1);
    if (!s->tcp_closing)
        uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
}

static void start_connect(struct sp_req *s)
{
    if (s->stopping || s->tcp_open)
        return;
    uv_tcp_init(s->loop, &s->tcp);
    s->tcp.data = s;
    s->tcp_open = 1;
    s->state = SP_CONNECTING;
    s->creq.data = s;
    int r = uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&s->addr, on_connect);
    if (r < 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot connect: %s", uv_strerror(r));
        drop(s, why);
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
}

int sp_req_open(struct sp_req **out, uv_loop_t *loop, const char *url, size_t max_reply,
                const struct sp_req_events *ev, void *arg, struct cerr *e)
{
    char host[200], port[8];
    int rc;
    *out = NULL;
    if (strlen(url) >= sizeof((struct sp_req *)0)->url)
        return cerr_set(e, CORRAL_EINVAL, "replica URL is longer than 255 bytes");
    int family;
    if ((rc = sp_url_split(url, "replica URL", &family, host, sizeof host, port, sizeof port, e)))
        return rc;
    if (!host[0])
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' names no host to connect to; "
                        "expected tcp://HOST:PORT", url);
    if (atol(port) == 0)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' has port '%s'; expected 1 to 65535",
                        url, port);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0 || !ai)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s': cannot resolve '%s': %s", url, host,
                        gai_strerror(g));
    struct sp_req *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory opening a replica connection");
    }
    memcpy(&s->addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    snprintf(s->url, sizeof s->url, "%s", url);
    s->loop = loop;
    s->ev = *ev;
    s->arg = arg;
    s->max_frame = max_reply + 4;
    s->backoff_ms = SP_RETRY_MIN_MS;
    uv_timer_init(loop, &s->retry);
    s->retry.data = s;
    loop_turn_init(loop, &s->flush, flush_now, s);
    start_connect(s);
    *out = s;
    return CORRAL_OK;
}

int sp_req_connected(const struct sp_req *s)
{
    return s->state == SP_UP && !s->tcp_closing;
}

static void on_handle_closed(uv_handle_t *h)
{
    release_step(h->data);
}

void sp_req_close(struct sp_req *s, void (*closed)(void *arg))
{
    s->stopping = 1;
    s->closed = closed;
    s->pending_closes = 3;
    uv_timer_stop(&s->retry);
    uv_close((uv_handle_t *)&s->retry, on_handle_closed);
    loop_turn_close(&s->flush, on_handle_closed);
    if (s->tcp_open) {
        s->pending_closes++;
        if (!s->tcp_closing) {
            s->tcp_closing = 1;
            uv_close((uv_handle_t *)&s->tcp, on_tcp_closed);
        }
    }
}
