/*
 * sp_epoll_server: SP REP over TCP with one epoll thread. See sp_epoll_server.h.
 *
 * Threads and ownership: the I/O thread owns the listener, every connection's
 * read side and the lists of connections. Repliers (any thread) touch a
 * connection only under its mutex: they write to its socket when nothing is
 * queued, else append to its queue, which the I/O thread drains when epoll
 * says the socket is writable. Sockets are registered edge-triggered for both
 * directions, so a reply that meets a full kernel buffer needs no wake-up: the
 * kernel reports writability once space frees.
 *
 * Lifetimes: a connection is reference counted (the I/O thread's reference
 * while it is open, plus one per request not yet replied to), and holds a
 * reference on the server, so a reply that comes after its connection closed,
 * or even after sp_rep_stop(), finds valid memory and is dropped.
 */
#define _GNU_SOURCE
#include "sp_epoll_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "list.h"
#include "log.h"
#include "sp_proto.h"

#define SP_READ_CHUNK (64 * 1024)
/* Reads on one connection before the others get their turn. */
#define SP_READS_PER_TURN 8
#define SP_STOP_FLUSH_MS 2000
#define SP_MAX_EVENTS 256
#define SP_IOV_MAX 64

/* A reply, or the part of one, that the kernel did not take yet. */
struct sp_out {
    struct sp_out *next;
    size_t hlen, blen, off; /* off counts bytes already sent, header first */
    uint8_t *body;
    uint8_t hdr[SP_HEAD_MAX];
};

struct sp_conn {
    struct sp_rep *srv;
    int fd;
    atomic_int refs;
    char peer[64];
    pthread_mutex_t mu; /* guards sending on fd, closed, broken and the queue */
    int closed, broken;
    struct sp_out *qhead, *qtail;
    /* The rest belongs to the I/O thread. */
    uint8_t *rbuf;
    size_t rcap, rpos, rlen;
    struct sp_stream st;
    size_t need; /* bytes of the unit being assembled, as the parser last said */
    int hup; /* the peer's end of stream has been reported: read until it is seen */
    struct list_node link;  /* on srv->conns: open connections */
    struct list_node rlink; /* on srv->ready while it has input left to read, else on none */
};

struct sp_rep_req {
    struct sp_conn *conn;
    struct sp_backtrace bt;
};

struct sp_rep {
    char url[300];
    struct sp_rep_options opt;
    sp_rep_handler handler;
    void *arg;
    int lfd, epfd, wakefd;
    pthread_t thread;
    int thread_started;
    atomic_int refs;     /* the owner's, plus one per connection not yet freed */
    atomic_int inflight; /* requests handed out and not replied to */
    atomic_int paused;   /* the I/O thread waits for a free slot: wake it on a reply */
    atomic_int stopping;
    /* The I/O thread's own. */
    int nconns;
    struct list_node conns; /* newest first */
    struct list_node ready; /* served first to last */
};

static void wake(struct sp_rep *s)
{
    uint64_t one = 1;
    ssize_t r = write(s->wakefd, &one, sizeof one);
    (void)r; /* a full counter already means a pending wake-up */
}

static void srv_unref(struct sp_rep *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    if (s->wakefd >= 0)
        close(s->wakefd);
    free(s);
}

static void free_queue(struct sp_conn *c)
{
    for (struct sp_out *o = c->qhead, *nx; o; o = nx) {
        nx = o->next;
        free(o->body);
        free(o);
    }
    c->qhead = c->qtail = NULL;
}

static void conn_unref(struct sp_conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    struct sp_rep *s = c->srv;
    free_queue(c);
    pthread_mutex_destroy(&c->mu);
    free(c->rbuf);
    free(c);
    srv_unref(s);
}

/*
 * Full means no request may be handed out now. The paused flag is raised
 * before the second look so that a reply freeing a slot in between either is
 * seen here or sees the flag and wakes the I/O thread.
 */
static int slots_full(struct sp_rep *s)
{
    if (atomic_load(&s->inflight) < s->opt.max_pending)
        return 0;
    atomic_store(&s->paused, 1);
    if (atomic_load(&s->inflight) < s->opt.max_pending) {
        atomic_store(&s->paused, 0);
        return 0;
    }
    return 1;
}

/* After a failed send, or with a frame that could only be half written, the byte stream
 * cannot carry further replies: the connection has to go. The I/O thread sees the
 * shutdown as end of input and closes it. Called with c->mu held. */
static void mark_broken(struct sp_conn *c)
{
    c->broken = 1;
    free_queue(c);
    shutdown(c->fd, SHUT_RDWR);
}

/* Writes queued replies until none is left or the kernel buffer is full; -1 on a
 * socket error. Called with c->mu held. */
static int flush_queue(struct sp_conn *c)
{
    while (c->qhead) {
        struct iovec iov[SP_IOV_MAX];
        int n = 0;
        for (struct sp_out *o = c->qhead; o && n + 2 <= SP_IOV_MAX; o = o->next) {
            if (o->off < o->hlen) {
                iov[n++] = (struct iovec){o->hdr + o->off, o->hlen - o->off};
                if (o->blen)
                    iov[n++] = (struct iovec){o->body, o->blen};
            } else {
                iov[n++] = (struct iovec){o->body + (o->off - o->hlen), o->hlen + o->blen - o->off};
            }
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        size_t left = (size_t)w;
        while (left && c->qhead) {
            struct sp_out *o = c->qhead;
            size_t rest = o->hlen + o->blen - o->off;
            if (left < rest) {
                o->off += left;
                break;
            }
            left -= rest;
            c->qhead = o->next;
            free(o->body);
            free(o);
        }
        if (!c->qhead)
            c->qtail = NULL;
    }
    return 0;
}

void sp_rep_reply(struct sp_rep_req *r, uint8_t *buf, size_t len)
{
    struct sp_conn *c = r->conn;
    struct sp_rep *s = c->srv;
    if (buf) {
        uint8_t hdr[SP_HEAD_MAX];
        size_t hlen = sp_reply_head(hdr, &r->bt, len);
        pthread_mutex_lock(&c->mu);
        if (!c->closed && !c->broken) {
            size_t sent = 0;
            int failed = 0;
            /* Straight to the socket when nothing is ahead of this reply: the common case
             * costs one system call on this thread and wakes no other. */
            if (!c->qhead) {
                struct iovec iov[2] = {{hdr, hlen}, {buf, len}};
                struct msghdr m = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
                ssize_t w;
                do
                    w = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
                while (w < 0 && errno == EINTR);
                if (w >= 0)
                    sent = (size_t)w;
                else if (errno != EAGAIN && errno != EWOULDBLOCK)
                    failed = 1;
            }
            if (failed) {
                mark_broken(c);
            } else if (sent < hlen + len) {
                struct sp_out *o = malloc(sizeof *o);
                if (!o) {
                    LOG_ERROR("out of memory queueing a reply to %s; closing the connection",
                              c->peer);
                    mark_broken(c);
                } else {
                    o->next = NULL;
                    o->hlen = hlen;
                    o->blen = len;
                    o->off = sent;
                    o->body = buf;
                    memcpy(o->hdr, hdr, hlen);
                    buf = NULL;
                    if (c->qtail)
                        c->qtail->next = o;
                    else
                        c->qhead = o;
                    c->qtail = o;
                }
            }
        }
        pthread_mutex_unlock(&c->mu);
        free(buf);
    }
    free(r);
    /* Only a paused I/O thread is woken; the plain load keeps the common case free of a
     * second write to shared memory (see slots_full for why no wake-up is missed). */
    atomic_fetch_sub(&s->inflight, 1);
    if (atomic_load(&s->paused) && atomic_exchange(&s->paused, 0))
        wake(s);
    conn_unref(c);
}

static void ready_add(struct sp_rep *s, struct sp_conn *c)
{
    if (!list_linked(&c->rlink))
        list_push_back(&s->ready, &c->rlink);
}

static void conn_close(struct sp_rep *s, struct sp_conn *c)
{
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    free_queue(c);
    pthread_mutex_unlock(&c->mu);
    /* No replier uses fd once closed is set, so it may go outside the lock. */
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    list_remove(&c->link);
    s->nconns--;
    list_remove(&c->rlink);
    free(c->rbuf);
    c->rbuf = NULL;
    conn_unref(c);
}

static void conn_open(struct sp_rep *s, int fd, const char *peer)
{
    uint8_t hello[8];
    int one = 1;
    sp_header(hello, SP_PROTO_REP);
    struct sp_conn *c = NULL;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Ours goes first without waiting for the peer's: both sides may send at once. */
    if (send(fd, hello, sizeof hello, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof hello) {
        LOG_DEBUG("closing connection from %s: cannot send the SP header", peer);
        goto fail;
    }
    c = calloc(1, sizeof *c);
    if (!c || !(c->rbuf = malloc(SP_READ_CHUNK))) {
        LOG_ERROR("out of memory accepting a connection from %s; closing it", peer);
        goto fail;
    }
    c->rcap = SP_READ_CHUNK;
    sp_stream_init(&c->st, SP_PROTO_REQ, 0, s->opt.max_message);
    c->fd = fd;
    c->srv = s;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->refs, 1);
    list_node_init(&c->rlink);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        LOG_ERROR("cannot watch the connection from %s: %s", peer, strerror(errno));
        pthread_mutex_destroy(&c->mu);
        goto fail;
    }
    atomic_fetch_add(&s->refs, 1);
    list_push_front(&s->conns, &c->link);
    s->nconns++;
    return;
fail:
    if (c)
        free(c->rbuf);
    free(c);
    close(fd);
}

static void format_addr(const struct sockaddr *sa, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, n, "%s:%u", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%u", host, port);
    } else {
        snprintf(out, n, "an unknown address");
    }
}

static void accept_all(struct sp_rep *s)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                LOG_WARN("cannot accept a connection on %s: %s", s->url, strerror(errno));
            return;
        }
        char peer[64];
        format_addr((struct sockaddr *)&ss, peer, sizeof peer);
        if (s->nconns >= s->opt.max_conns) {
            LOG_WARN("closing connection from %s: %d connections are open, the most served",
                     peer, s->nconns);
            close(fd);
            continue;
        }
        conn_open(s, fd, peer);
    }
}

/* Hands one request frame (backtrace and body) to the handler. */
static void dispatch(struct sp_rep *s, struct sp_conn *c, const struct sp_unit *u)
{
    if (!u->head) {
        /* NNG drops such a message too; the peer's own REQ socket retries or times out. */
        LOG_DEBUG("dropped a %zu-byte request from %s: no request ID in its first %d words",
                  u->len, c->peer, SP_MAX_HOPS);
        return;
    }
    struct sp_rep_req *r = malloc(sizeof *r);
    if (!r) {
        LOG_ERROR("out of memory receiving a request from %s; it is dropped", c->peer);
        return;
    }
    r->conn = c;
    r->bt.len = u->head;
    memcpy(r->bt.w, u->msg, u->head);
    atomic_fetch_add(&c->refs, 1);
    atomic_fetch_add(&s->inflight, 1);
    s->handler(s->arg, r, u->msg + u->head, u->len - u->head);
}

/* Handles every complete header and frame buffered: 0 when more input is needed, 1 when
 * the pending limit stops it, -1 when the connection must close. */
static int conn_process(struct sp_rep *s, struct sp_conn *c)
{
    for (;;) {
        struct sp_unit u;
        switch (sp_stream_next(&c->st, c->rbuf + c->rpos, c->rlen - c->rpos, &u)) {
        case SP_UNIT_MORE:
            c->need = u.need;
            return 0;
        case SP_UNIT_NOT_SP:
            LOG_WARN("closing connection from %s: it did not open with an SP header", c->peer);
            return -1;
        case SP_UNIT_WRONG_PROTO:
            LOG_WARN("closing connection from %s: its SP protocol is %u, expected %u (REQ)",
                     c->peer, u.proto, SP_PROTO_REQ);
            return -1;
        case SP_UNIT_BAD_SIZE:
            LOG_WARN("closing connection from %s: a request frame of %llu bytes exceeds the "
                     "limit of %zu bytes", c->peer, (unsigned long long)u.size,
                     s->opt.max_message);
            return -1;
        case SP_UNIT_GREETING:
            c->rpos += u.used;
            break;
        case SP_UNIT_MESSAGE:
            if (slots_full(s))
                return 1;
            c->rpos += u.used;
            dispatch(s, c, &u);
            break;
        }
    }
}

/* Makes room at the end of the read buffer for at least part of what comes next. */
static int conn_make_room(struct sp_conn *c)
{
    size_t have = c->rlen - c->rpos;
    if (have == 0) {
        c->rpos = c->rlen = 0;
        /* A buffer grown for one large frame is not kept by an idle connection. */
        if (c->rcap > 4 * SP_READ_CHUNK) {
            uint8_t *nb = realloc(c->rbuf, SP_READ_CHUNK);
            if (nb) {
                c->rbuf = nb;
                c->rcap = SP_READ_CHUNK;
            }
        }
        return 0;
    }
    /* The unit being assembled: the 8-byte header or length, then the whole frame. */
    size_t need = c->need;
    if (c->rpos > 0 && (c->rcap - c->rlen < SP_READ_CHUNK / 4 || c->rpos + need > c->rcap)) {
        memmove(c->rbuf, c->rbuf + c->rpos, have);
        c->rpos = 0;
        c->rlen = have;
    }
    if (c->rlen == c->rcap) {
        /* Doubling (up to the frame's size) keeps a slowly announced huge frame from
         * reserving its whole length before its bytes arrive. */
        size_t cap = c->rcap * 2 < need ? c->rcap * 2 : need;
        uint8_t *nb = realloc(c->rbuf, cap);
        if (!nb)
            return -1;
        c->rbuf = nb;
        c->rcap = cap;
    }
    return 0;
}

/* Reads and handles what the connection sent, until the kernel has no more, the
 * pending limit is reached, or the connection has had its turn. */
static void conn_input(struct sp_rep *s, struct sp_conn *c)
{
    int drained = 0;
    for (int reads = 0;;) {
        int r = conn_process(s, c);
        if (r < 0) {
            conn_close(s, c);
            return;
        }
        if (r > 0 || (!drained && reads == SP_READS_PER_TURN)) {
            ready_add(s, c);
            return;
        }
        /* A read that left room in the buffer emptied the socket; data arriving after it
         * raises a fresh edge, so the extra read that would only say EAGAIN is skipped.
         * An end of stream reported with the data raises no further edge: read on to it. */
        if (drained)
            return;
        if (conn_make_room(c)) {
            LOG_ERROR("out of memory reading a request from %s; closing the connection", c->peer);
            conn_close(s, c);
            return;
        }
        size_t room = c->rcap - c->rlen;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, room, 0);
        reads++;
        if (n > 0) {
            c->rlen += (size_t)n;
            drained = (size_t)n < room && !c->hup;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0)
            LOG_DEBUG("connection from %s failed: %s", c->peer, strerror(errno));
        else if (c->rlen > c->rpos)
            LOG_DEBUG("connection from %s closed in the middle of a frame", c->peer);
        conn_close(s, c);
        return;
    }
}

/* Gives each connection waiting on the ready list one turn, while slots are free. */
static void run_ready(struct sp_rep *s)
{
    struct sp_conn *last = list_last_entry(&s->ready, struct sp_conn, rlink);
    struct sp_conn *c;
    while ((c = list_first_entry(&s->ready, struct sp_conn, rlink)) && !slots_full(s)) {
        int was_last = c == last;
        list_remove(&c->rlink);
        conn_input(s, c);
        if (was_last)
            break;
    }
}

static void conn_output(struct sp_conn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->qhead && !c->closed && !c->broken && flush_queue(c))
        mark_broken(c);
    pthread_mutex_unlock(&c->mu);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Stops accepting, lets queued replies drain for a short while, then closes everything. */
static void io_shutdown(struct sp_rep *s)
{
    struct epoll_event ev[SP_MAX_EVENTS];
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
    close(s->lfd);
    s->lfd = -1;
    int64_t deadline = now_ms() + SP_STOP_FLUSH_MS;
    for (;;) {
        int queued = 0;
        struct sp_conn *c;
        list_for_each_entry(c, &s->conns, link) {
            conn_output(c);
            pthread_mutex_lock(&c->mu);
            queued |= c->qhead != NULL;
            pthread_mutex_unlock(&c->mu);
        }
        int64_t left = deadline - now_ms();
        if (!queued || left <= 0)
            break;
        epoll_wait(s->epfd, ev, SP_MAX_EVENTS, left < 50 ? (int)left : 50);
    }
    while (!list_empty(&s->conns))
        conn_close(s, list_first_entry(&s->conns, struct sp_conn, link));
}

static void *io_main(void *arg)
{
    struct sp_rep *s = arg;
    struct epoll_event ev[SP_MAX_EVENTS];
    while (!atomic_load(&s->stopping)) {
        int timeout = !list_empty(&s->ready) && !slots_full(s) ? 0 : -1;
        int n = epoll_wait(s->epfd, ev, SP_MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            LOG_ERROR("the SP server on %s cannot wait for events: %s", s->url, strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            void *p = ev[i].data.ptr;
            if (p == &s->lfd) {
                accept_all(s);
            } else if (p == &s->wakefd) {
                uint64_t v;
                ssize_t r = read(s->wakefd, &v, sizeof v);
                (void)r;
            } else {
                struct sp_conn *c = p;
                uint32_t m = ev[i].events;
                if (m & EPOLLERR) {
                    LOG_DEBUG("connection from %s failed", c->peer);
                    conn_close(s, c);
                    continue;
                }
                if (m & EPOLLOUT)
                    conn_output(c);
                if (m & (EPOLLHUP | EPOLLRDHUP))
                    c->hup = 1;
                /* One on the ready list reads when its turn comes, not ahead of the others. */
                if ((m & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) && !list_linked(&c->rlink)) {
                    if (slots_full(s))
                        ready_add(s, c);
                    else
                        conn_input(s, c);
                }
            }
        }
        run_ready(s);
    }
    io_shutdown(s);
    return NULL;
}

static int open_listener(struct sp_rep *s, const char *url, struct cerr *e)
{
    char host[256], port[8];
    int family = AF_UNSPEC, rc, err = 0;
    if ((rc = sp_url_split(url, "replica listen URL", &family, host, sizeof host, port,
                           sizeof port, e)))
        return rc;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    /* A wildcard host means IPv4's, as NNG's listeners do, unless tcp6:// asks otherwise. */
    hints.ai_family = !host[0] && family == AF_UNSPEC ? AF_INET : family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (g != 0 || !ai)
        return cerr_set(e, CORRAL_EINVAL, "cannot listen on '%s': cannot resolve '%s': %s", url,
                        host, gai_strerror(g));
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        /* Lets a restarted replica bind its port while old connections sit in TIME_WAIT. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
            s->lfd = fd;
            break;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(ai);
    if (s->lfd < 0)
        return cerr_set(e, err == EADDRINUSE ? CORRAL_EUNAVAIL : CORRAL_EINVAL,
                        "cannot listen on '%s': %s", url,
                        err == EADDRINUSE ? "the address is already in use" : strerror(err));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char addr[96];
    if (getsockname(s->lfd, (struct sockaddr *)&ss, &sl) != 0)
        return cerr_set(e, CORRAL_EINTERNAL, "cannot read the address bound for '%s': %s", url,
                        strerror(errno));
    format_addr((struct sockaddr *)&ss, addr, sizeof addr);
    snprintf(s->url, sizeof s->url, "tcp://%s", addr);
    return CORRAL_OK;
}

int sp_rep_start(struct sp_rep **out, const char *url, const struct sp_rep_options *opt,
                 sp_rep_handler handler, void *arg, struct cerr *e)
{
    int rc;
    *out = NULL;
    struct sp_rep *s = calloc(1, sizeof *s);
    if (!s)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory starting the SP server");
    s->opt = *opt;
    if (s->opt.max_pending < 1)
        s->opt.max_pending = 1;
    if (s->opt.max_conns < 1)
        s->opt.max_conns = 1;
    s->handler = handler;
    s->arg = arg;
    s->lfd = s->epfd = s->wakefd = -1;
    list_init(&s->conns);
    list_init(&s->ready);
    atomic_init(&s->refs, 1);
    atomic_init(&s->inflight, 0);
    atomic_init(&s->paused, 0);
    atomic_init(&s->stopping, 0);
    if ((rc = open_listener(s, url, e)))
        goto fail;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = &s->lfd};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &s->wakefd};
    if (s->epfd < 0 || s->wakefd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &lev) != 0 ||
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &wev) != 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "cannot set up event polling for '%s': %s", url,
                      strerror(errno));
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, io_main, s) != 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "cannot start the I/O thread for '%s'", url);
        goto fail;
    }
    s->thread_started = 1;
    pthread_setname_np(s->thread, "sp-rep-io");
    *out = s;
    return CORRAL_OK;
fail:
    sp_rep_stop(s);
    return rc;
}

const char *sp_rep_url(const struct sp_rep *s) { return s->url; }

void sp_rep_stop(struct sp_rep *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        atomic_store(&s->stopping, 1);
        wake(s);
        pthread_join(s->thread, NULL);
    }
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->epfd >= 0)
        close(s->epfd);
    int left = atomic_load(&s->inflight);
    if (left > 0)
        LOG_WARN("%d requests were still unanswered when the server on %s stopped; their "
                 "replies will be dropped", left, s->url);
    srv_unref(s);
}
