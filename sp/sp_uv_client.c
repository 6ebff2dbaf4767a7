/*
 * sp_uv_client: SP REQ over TCP on a libuv loop. See sp_uv_client.h.
 */
#include "sp_uv_client.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "sp_proto.h"
#include "sp_uv.h"

enum { SP_IDLE, SP_CONNECTING, SP_HANDSHAKE, SP_UP };

#define SP_RETRY_MIN_MS 50
#define SP_RETRY_MAX_MS 1000

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
    size_t max_reply;
    struct sp_stream st;
    struct sp_uv_in in;
    /* Requests routed in one turn of the loop leave in one write at its end
     * (sp_uv.h's sp_uv_turn), instead of one system call each. */
    struct sp_uv_batch out;
    struct sp_uv_turn flush;
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
    free(s->in.buf);
    free(s->out.buf);
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
    s->in.len = 0;
    s->out.len = 0; /* requests not yet written are lost with the connection; `down` says so */
    if (s->in.cap > 4 * SP_UV_CHUNK) {
        /* A large reply grew the buffer; do not keep it for the next connection. */
        free(s->in.buf);
        s->in.buf = NULL;
        s->in.cap = 0;
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

/* Writes what the kernel takes now and queues the rest (copied); -1 when the
 * connection is gone. */
static int write_bufs(void *arg, const uv_buf_t *b, unsigned nb)
{
    struct sp_req *s = arg;
    int r = sp_uv_send((uv_stream_t *)&s->tcp, b, nb, on_sent, s, NULL);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof why, "sending failed: %s", uv_strerror(r));
        drop(s, why);
    }
    return s->tcp_closing ? -1 : 0;
}

static void flush_now(void *arg)
{
    struct sp_req *s = arg;
    if (s->state != SP_UP || s->tcp_closing) {
        s->out.len = 0;
        return;
    }
    sp_uv_batch_flush(&s->out, write_bufs, s);
}

int sp_req_send(struct sp_req *s, uint32_t id, const uint8_t *body, size_t len)
{
    if (s->state != SP_UP || s->tcp_closing || len > UINT32_MAX - 16)
        return -1;
    uint8_t hdr[12];
    sp_request_head(hdr, id, len);
    int r = sp_uv_batch_add(&s->out, hdr, sizeof hdr, body, len, write_bufs, s);
    if (r < 0)
        drop(s, "out of memory queueing a request");
    else if (r == 0)
        sp_uv_turn_arm(&s->flush);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct sp_req *s = h->data;
    sp_uv_in_alloc(&s->in, buf);
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
    s->in.len += (size_t)nread;
    size_t off = 0;
    struct sp_unit u;
    for (;;) {
        enum sp_unit_kind k = sp_stream_next(&s->st, s->in.buf + off, s->in.len - off, &u);
        if (k == SP_UNIT_MORE)
            break;
        switch (k) {
        case SP_UNIT_NOT_SP:
            drop(s, "the peer does not speak the SP protocol (is this a corral replica?)");
            return;
        case SP_UNIT_WRONG_PROTO:
            snprintf(why, sizeof why, "the peer speaks SP protocol %d, expected REP (%d)",
                     u.proto, SP_PROTO_REP);
            drop(s, why);
            return;
        case SP_UNIT_BAD_SIZE:
            snprintf(why, sizeof why, "reply frame of %llu bytes (expected 4 to %zu)",
                     (unsigned long long)u.size, s->st.max_len);
            drop(s, why);
            return;
        case SP_UNIT_GREETING:
            off += u.used;
            s->state = SP_UP;
            s->backoff_ms = SP_RETRY_MIN_MS;
            if (s->ev.up)
                s->ev.up(s->arg);
            break;
        default:
            off += u.used;
            if (u.head && s->ev.reply)
                s->ev.reply(s->arg, u.id, u.msg + u.head, u.len - u.head);
            break;
        }
        if (s->state != SP_UP || s->tcp_closing)
            return;
    }
    if (off) {
        memmove(s->in.buf, s->in.buf + off, s->in.len - off);
        s->in.len -= off;
    }
    if (s->in.len >= 8) {
        /* Make room for the whole frame now so that large replies arrive in few reads. */
        size_t need = u.need + SP_UV_CHUNK;
        if (need > s->in.cap) {
            uint8_t *p = realloc(s->in.buf, need);
            if (!p) {
                drop(s, "out of memory receiving a reply");
                return;
            }
            s->in.buf = p;
            s->in.cap = need;
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
    sp_stream_init(&s->st, SP_PROTO_REP, 4, s->max_reply + 4);
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
    s->max_reply = max_reply;
    s->backoff_ms = SP_RETRY_MIN_MS;
    uv_timer_init(loop, &s->retry);
    s->retry.data = s;
    sp_uv_turn_init(loop, &s->flush, flush_now, s);
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
    sp_uv_turn_close(&s->flush, on_handle_closed);
    if (s->tcp_open) {
        s->pending_closes++;
        if (!s->tcp_closing) {
            s->tcp_closing = 1;
            uv_close((uv_handle_t *)&s->tcp, on_tcp_closed);
        }
    }
}
