/*
 * sp_uv_server: SP REP over TCP on a libuv loop. See sp_uv_server.h.
 *
 * Lifetimes: a connection is counted by references: one while its handle is
 * open, one per request handed out and not replied to, and one while it sits
 * on the server's list of connections to flush or to resume. The server is
 * counted the same way: the owner's reference, one per connection not yet
 * freed and one per embedded handle being closed, so that late replies after
 * sp_serve_close() still find valid memory.
 */
#include "sp_uv_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "list.h"
#include "log.h"
#include "sp_proto.h"
#include "sp_uv.h"

/* A peer with this much of its replies unread is not read from until it catches up. */
#define SS_WRITE_HIGH ((size_t)16 << 20)
#define SS_FREE_REQS 256

struct ss_conn {
    uv_tcp_t tcp;
    struct sp_serve *s;
    unsigned refs;
    int closing, reading, dirty, waiting;
    uint64_t born_ms;
    struct sp_stream st;
    struct sp_uv_in in;
    struct sp_uv_batch out;
    struct list_node link;       /* on s->conns while open */
    struct ss_conn *dnext;       /* replies to flush */
    struct ss_conn *wnext;       /* waiting for a free request slot */
};

struct sp_serve_req {
    struct ss_conn *conn;
    struct sp_serve_req *next_free;
    struct sp_backtrace bt;
    _Alignas(16) uint8_t data[];
};

struct sp_serve {
    uv_loop_t *loop;
    struct sp_serve_options opt;
    sp_serve_handler handler;
    void *arg;
    uv_tcp_t listener;
    int listener_open;
    struct sp_uv_turn turn; /* service() once at the end of a turn with work for it */
    uv_timer_t timer;
    int quiesced, closing;
    unsigned refs, nconns, inflight;
    struct list_node conns; /* open connections, newest first */
    struct ss_conn *dirty;
    struct ss_conn *wait_head, *wait_tail;
    struct sp_serve_req *free_reqs;
    unsigned n_free;
};

static void conn_process(struct ss_conn *c);

static void srv_unref(struct sp_serve *s)
{
    if (--s->refs)
        return;
    for (struct sp_serve_req *r = s->free_reqs, *nx; r; r = nx) {
        nx = r->next_free;
        free(r);
    }
    free(s);
}

static void conn_unref(struct ss_conn *c)
{
    if (--c->refs)
        return;
    struct sp_serve *s = c->s;
    free(c->in.buf);
    free(c->out.buf);
    free(c);
    srv_unref(s);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void on_handle_closed(uv_handle_t *h)
{
    srv_unref(h->data);
}

static void conn_close(struct ss_conn *c, int level, const char *why)
{
    if (c->closing)
        return;
    struct sp_serve *s = c->s;
    if (level == LOG_LEVEL_WARN)
        LOG_WARN("RPC connection closed: %s", why);
    else
        LOG_DEBUG("RPC connection closed: %s", why);
    c->closing = 1;
    list_remove(&c->link);
    s->nconns--;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ss_conn *c = h->data;
    sp_uv_in_alloc(&c->in, buf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Reads while requests may be taken and the peer keeps up with its replies. */
static void conn_update_reading(struct ss_conn *c)
{
    if (c->closing)
        return;
    int want = !c->s->quiesced && !c->waiting &&
               uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < SS_WRITE_HIGH;
    if (want && !c->reading) {
        int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (r) {
            char why[128];
            snprintf(why, sizeof why, "cannot read: %s", uv_strerror(r));
            conn_close(c, LOG_LEVEL_DEBUG, why);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void on_sent(void *arg, int status)
{
    struct ss_conn *c = arg;
    if (c->closing)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof why, "sending failed: %s", uv_strerror(status));
        conn_close(c, LOG_LEVEL_DEBUG, why);
        return;
    }
    if (!c->reading)
        conn_update_reading(c);
}

/* Writes what the kernel takes now and queues a copy of the rest; -1 when the
 * connection is gone. */
static int write_bufs(void *arg, const uv_buf_t *b, unsigned nb)
{
    struct ss_conn *c = arg;
    int queued = 0;
    int r = sp_uv_send((uv_stream_t *)&c->tcp, b, nb, on_sent, c, &queued);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof why, "sending failed: %s", uv_strerror(r));
        conn_close(c, r == UV_ENOMEM ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, why);
        return -1;
    }
    if (queued)
        conn_update_reading(c);
    return c->closing ? -1 : 0;
}

static void flush_conn(struct ss_conn *c)
{
    if (c->closing) {
        c->out.len = 0;
        return;
    }
    sp_uv_batch_flush(&c->out, write_bufs, c);
}

/*
 * At the end of a turn of the loop (sp_uv_turn): connections that waited for a
 * request slot go on, then every connection with replies queued writes them in
 * one go.
 */
static void service(void *arg)
{
    struct sp_serve *s = arg;
    while (s->wait_head && s->inflight < s->opt.max_inflight && !s->quiesced) {
        struct ss_conn *c = s->wait_head;
        s->wait_head = c->wnext;
        if (!s->wait_head)
            s->wait_tail = NULL;
        c->wnext = NULL;
        c->waiting = 0;
        if (!c->closing) {
            conn_process(c);
            conn_update_reading(c);
        }
        conn_unref(c);
    }
    struct ss_conn *d = s->dirty;
    s->dirty = NULL;
    while (d) {
        struct ss_conn *next = d->dnext;
        d->dnext = NULL;
        d->dirty = 0;
        flush_conn(d);
        conn_unref(d);
        d = next;
    }
}

static void service_start(struct sp_serve *s)
{
    if (!s->closing)
        sp_uv_turn_arm(&s->turn);
}

void *sp_serve_req_data(struct sp_serve_req *req) { return req->data; }

unsigned sp_serve_connections(const struct sp_serve *s) { return s->nconns; }

static void queue_reply(struct ss_conn *c, const struct sp_backtrace *bt, const void *body,
                        size_t len)
{
    uint8_t hdr[SP_HEAD_MAX];
    size_t hl = sp_reply_head(hdr, bt, len);
    int r = sp_uv_batch_add(&c->out, hdr, hl, body, len, write_bufs, c);
    if (r > 0)
        return;
    if (r < 0) {
        conn_close(c, LOG_LEVEL_WARN, "out of memory queueing a reply");
        return;
    }
    if (!c->dirty) {
        c->dirty = 1;
        c->refs++;
        c->dnext = c->s->dirty;
        c->s->dirty = c;
    }
    service_start(c->s);
}

void sp_serve_reply(struct sp_serve_req *req, const void *body, size_t len)
{
    struct ss_conn *c = req->conn;
    struct sp_serve *s = c->s;
    s->inflight--;
    if (!c->closing && (uint64_t)len + req->bt.len <= s->opt.max_frame)
        queue_reply(c, &req->bt, body, len);
    else if (!c->closing)
        LOG_WARN("RPC reply of %zu bytes dropped: over the %zu-byte frame limit", len,
                 s->opt.max_frame);
    if (s->n_free < SS_FREE_REQS && !s->closing) {
        req->next_free = s->free_reqs;
        s->free_reqs = req;
        s->n_free++;
    } else {
        free(req);
    }
    if (s->wait_head)
        service_start(s);
    conn_unref(c);
}

/* Hands one message (backtrace and body) to the handler. */
static void dispatch(struct ss_conn *c, const struct sp_unit *u)
{
    struct sp_serve *s = c->s;
    if (!u->head) {
        LOG_DEBUG("RPC request of %zu bytes dropped: no request id within its first %d words",
                  u->len, SP_MAX_HOPS);
        return;
    }
    struct sp_serve_req *r = s->free_reqs;
    if (r) {
        s->free_reqs = r->next_free;
        s->n_free--;
    } else if (!(r = malloc(sizeof *r + s->opt.req_size))) {
        LOG_WARN("RPC request dropped: out of memory");
        return;
    }
    r->conn = c;
    r->next_free = NULL;
    r->bt.len = u->head;
    memcpy(r->bt.w, u->msg, u->head);
    c->refs++;
    s->inflight++;
    s->handler(s->arg, r, u->msg + u->head, u->len - u->head);
}

/* Takes what the read buffer holds: the peer's header, then whole frames. */
static void conn_process(struct ss_conn *c)
{
    struct sp_serve *s = c->s;
    size_t off = 0;
    char why[160];
    struct sp_unit u;
    while (!(c->st.greeted && s->quiesced)) {
        enum sp_unit_kind k = sp_stream_next(&c->st, c->in.buf + off, c->in.len - off, &u);
        if (k == SP_UNIT_MORE)
            break;
        if (k == SP_UNIT_NOT_SP || k == SP_UNIT_WRONG_PROTO) {
            if (k == SP_UNIT_NOT_SP)
                snprintf(why, sizeof why, "the peer does not speak the SP protocol (expected "
                         "an NNG REQ socket such as libcorral's)");
            else
                snprintf(why, sizeof why, "the peer speaks SP protocol %d, expected REQ (%d)",
                         u.proto, SP_PROTO_REQ);
            conn_close(c, LOG_LEVEL_WARN, why);
            return;
        }
        if (k == SP_UNIT_BAD_SIZE) {
            snprintf(why, sizeof why, "request frame of %llu bytes (the limit is %zu)",
                     (unsigned long long)u.size, s->opt.max_frame);
            conn_close(c, LOG_LEVEL_WARN, why);
            return;
        }
        if (k == SP_UNIT_GREETING) {
            off += u.used;
            continue;
        }
        if (s->inflight >= s->opt.max_inflight) {
            /* Wait for a slot with the frame in the buffer; reading stops meanwhile. */
            if (!c->waiting) {
                c->waiting = 1;
                c->refs++;
                if (s->wait_tail)
                    s->wait_tail->wnext = c;
                else
                    s->wait_head = c;
                s->wait_tail = c;
            }
            break;
        }
        off += u.used;
        dispatch(c, &u);
        if (c->closing)
            return;
    }
    if (off) {
        memmove(c->in.buf, c->in.buf + off, c->in.len - off);
        c->in.len -= off;
    }
    if (!c->in.len && c->in.cap > 4 * SP_UV_CHUNK) {
        /* A large request grew the buffer; do not keep it for the small ones. */
        free(c->in.buf);
        c->in.buf = NULL;
        c->in.cap = 0;
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct ss_conn *c = st->data;
    if (nread < 0) {
        char why[128];
        if (nread == UV_EOF)
            snprintf(why, sizeof why, "closed by the peer");
        else
            snprintf(why, sizeof why, "receiving failed: %s", uv_strerror((int)nread));
        conn_close(c, LOG_LEVEL_DEBUG, why);
        return;
    }
    if (c->closing || nread == 0)
        return;
    c->in.len += (size_t)nread;
    conn_process(c);
    conn_update_reading(c);
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct sp_serve *s = ls->data;
    if (status < 0) {
        LOG_WARN("RPC: accepting a connection failed: %s", uv_strerror(status));
        return;
    }
    struct ss_conn *c = calloc(1, sizeof *c);
    if (!c) {
        LOG_WARN("RPC: out of memory accepting a connection");
        return;
    }
    c->s = s;
    c->refs = 1;
    sp_stream_init(&c->st, SP_PROTO_REQ, 0, s->opt.max_frame);
    s->refs++;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    /* Counted and listed before anything may close it, so that closing undoes both. */
    s->nconns++;
    list_push_front(&s->conns, &c->link);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, LOG_LEVEL_DEBUG, "accept failed");
        return;
    }
    if (s->nconns > s->opt.max_conns || s->quiesced) {
        char why[96];
        snprintf(why, sizeof why, "%s", s->quiesced ? "the endpoint is shutting down"
                                                    : "too many connections");
        if (!s->quiesced)
            snprintf(why, sizeof why, "already %u connections (the limit)", s->opt.max_conns);
        conn_close(c, LOG_LEVEL_WARN, why);
        return;
    }
    c->born_ms = uv_now(s->loop);
    uv_tcp_nodelay(&c->tcp, 1);
    uint8_t hello[8];
    sp_header(hello, SP_PROTO_REP);
    uv_buf_t b = uv_buf_init((char *)hello, sizeof hello);
    write_bufs(c, &b, 1);
    conn_update_reading(c);
}

/* Ends connections that never said which protocol they speak. */
static void on_timer(uv_timer_t *t)
{
    struct sp_serve *s = t->data;
    uint64_t now = uv_now(s->loop);
    struct ss_conn *c, *nx;
    list_for_each_entry_safe(c, nx, &s->conns, link) {
        if (!c->st.greeted && now - c->born_ms >= s->opt.handshake_ms)
            conn_close(c, LOG_LEVEL_WARN, "no SP header from the peer in time");
    }
}

int sp_serve_new(struct sp_serve **out, uv_loop_t *loop, const struct sp_serve_options *opt,
                 sp_serve_handler handler, void *arg, struct cerr *e)
{
    struct sp_serve *s = calloc(1, sizeof *s);
    if (!s)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory creating the RPC server");
    s->loop = loop;
    list_init(&s->conns);
    s->opt = *opt;
    if (!s->opt.max_conns)
        s->opt.max_conns = 4096;
    if (!s->opt.max_inflight)
        s->opt.max_inflight = 1024;
    if (!s->opt.max_frame)
        s->opt.max_frame = (size_t)256 << 20;
    if (!s->opt.handshake_ms)
        s->opt.handshake_ms = 10000;
    s->handler = handler;
    s->arg = arg;
    s->refs = 1;
    sp_uv_turn_init(loop, &s->turn, service, s);
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    unsigned tick = s->opt.handshake_ms < 1000 ? s->opt.handshake_ms : 1000;
    uv_timer_start(&s->timer, on_timer, tick, tick);
    uv_unref((uv_handle_t *)&s->timer);
    *out = s;
    return CORRAL_OK;
}

int sp_serve_listen_fd(struct sp_serve *s, int fd, struct cerr *e)
{
    if (s->listener_open || s->closing) {
        close(fd);
        return cerr_set(e, CORRAL_EINVAL, "the RPC server already listens or is closing");
    }
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    int r = uv_tcp_open(&s->listener, fd);
    if (r) {
        close(fd);
    } else {
        r = uv_listen((uv_stream_t *)&s->listener, SOMAXCONN, on_connection);
    }
    if (r) {
        s->refs++;
        s->listener_open = 0;
        uv_close((uv_handle_t *)&s->listener, on_handle_closed);
        return cerr_set(e, CORRAL_EIO, "cannot listen for RPC: %s", uv_strerror(r));
    }
    return CORRAL_OK;
}

void sp_serve_quiesce(struct sp_serve *s)
{
    if (s->quiesced)
        return;
    s->quiesced = 1;
    if (s->listener_open) {
        s->listener_open = 0;
        s->refs++;
        uv_close((uv_handle_t *)&s->listener, on_handle_closed);
    }
    /* Safe iteration: a connection that cannot change its reading closes. */
    struct ss_conn *c, *nx;
    list_for_each_entry_safe(c, nx, &s->conns, link)
        conn_update_reading(c);
}

void sp_serve_close(struct sp_serve *s)
{
    sp_serve_quiesce(s);
    /* Replies queued but not flushed are dropped with their connections. */
    s->closing = 1;
    while (!list_empty(&s->conns))
        conn_close(list_first_entry(&s->conns, struct ss_conn, link), LOG_LEVEL_DEBUG,
                   "the RPC endpoint is closing");
    while (s->wait_head) {
        struct ss_conn *c = s->wait_head;
        s->wait_head = c->wnext;
        c->wnext = NULL;
        c->waiting = 0;
        conn_unref(c);
    }
    s->wait_tail = NULL;
    while (s->dirty) {
        struct ss_conn *c = s->dirty;
        s->dirty = c->dnext;
        c->dnext = NULL;
        c->dirty = 0;
        conn_unref(c);
    }
    uv_timer_stop(&s->timer);
    s->refs += 3;
    sp_uv_turn_close(&s->turn, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    srv_unref(s);
}

int sp_serve_bind(const char *url, int reuseport, int port, int *fd, char *bound,
                  size_t bound_len, struct cerr *e)
{
    char host[256], ps[24], given[8];
    int rc, s = -1, family;
    struct addrinfo hints, *ai = NULL;
    *fd = -1;
    if ((rc = sp_url_split(url, "RPC URL", &family, host, sizeof host, given, sizeof given, e)))
        return rc;
    snprintf(ps, sizeof ps, "%ld", port >= 0 ? (long)port : atol(given));
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int g = getaddrinfo(host[0] ? host : NULL, ps, &hints, &ai);
    if (g != 0 || !ai) {
        rc = cerr_set(e, CORRAL_EINVAL, "RPC URL '%s': cannot resolve '%s': %s", url, host,
                      gai_strerror(g));
        goto fail;
    }
    int one = 1;
    s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (reuseport && setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(s, ai->ai_addr, ai->ai_addrlen) != 0 || listen(s, SOMAXCONN) != 0) {
        rc = cerr_set(e, CORRAL_EIO, "cannot listen for RPC on '%s': %s (expected e.g. "
                      "tcp://0.0.0.0:8001)", url, strerror(errno));
        goto fail;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    char addr[INET6_ADDRSTRLEN];
    if (getsockname(s, (struct sockaddr *)&got, &gl) != 0) {
        rc = cerr_set(e, CORRAL_EIO, "cannot read the RPC socket's address: %s", strerror(errno));
        goto fail;
    }
    if (got.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&got;
        inet_ntop(AF_INET6, &a6->sin6_addr, addr, sizeof addr);
        snprintf(bound, bound_len, "tcp://[%s]:%u", addr, (unsigned)ntohs(a6->sin6_port));
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)&got;
        inet_ntop(AF_INET, &a4->sin_addr, addr, sizeof addr);
        snprintf(bound, bound_len, "tcp://%s:%u", addr, (unsigned)ntohs(a4->sin_port));
    }
    freeaddrinfo(ai);
    *fd = s;
    return CORRAL_OK;
fail:
    if (s >= 0)
        close(s);
    if (ai)
        freeaddrinfo(ai);
    return rc;
}

int sp_serve_url_port(const char *bound)
{
    const char *colon = strrchr(bound, ':');
    if (!colon || !colon[1])
        return -1;
    char *end = NULL;
    long v = strtol(colon + 1, &end, 10);
    return *end || v < 0 || v > 65535 ? -1 : (int)v;
}
