#define _GNU_SOURCE /* accept4 */
#include "httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "httphead.h"
#include "log.h"

struct httpd_conn {
    struct httpd *h;
    int fd;            /* -1: free */
    long long deadline_ms;
    char *in;          /* max_head + 1 bytes; grown for a body */
    size_t in_len;
    size_t head_len;   /* > 0: the head is complete (its bytes, blank line included) */
    size_t body_len;   /* what Content-Length announced */
    int head_only;     /* a HEAD request: the answer goes without its body */
    int replied;       /* httpd_reply ran for this request */
    int writing;       /* sending out[out_off..] */
    int closing;       /* answered and shut for writing; discarding until EOF */
    char *out;
    size_t out_len, out_off;
};

struct httpd {
    int fd;
    int port;
    struct httpd_options opt;
    httpd_handler handle;
    void *arg;
    struct httpd_conn *conns;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *httpd_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

/* ---- listening ---------------------------------------------------------------------- */

int httpd_open(struct httpd **out, const char *host, int port, const struct httpd_options *opt,
               httpd_handler handle, void *arg, struct cerr *e)
{
    *out = NULL;
    if (!opt || opt->max_conns < 1 || opt->max_conns > 1024 || opt->max_head < 256 ||
        opt->max_head > (1u << 20) || opt->deadline_ms < 1 || port < 0 || port > 65535)
        return cerr_set(e, CORRAL_EINVAL, "HTTP server options out of range");
    struct httpd *h = calloc(1, sizeof *h);
    if (h)
        h->conns = calloc(opt->max_conns, sizeof *h->conns);
    if (!h || !h->conns) {
        free(h);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory opening an HTTP server");
    }
    h->fd = -1;
    h->opt = *opt;
    if (!h->opt.name)
        h->opt.name = "http";
    h->handle = handle;
    h->arg = arg;
    for (unsigned i = 0; i < opt->max_conns; i++) {
        h->conns[i].fd = -1;
        h->conns[i].h = h;
    }
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(strcmp(host, "*") == 0 ? "0.0.0.0" : host, ps, &hints, &res);
    if (g != 0 || !res) {
        httpd_close(h);
        return cerr_set(e, CORRAL_EINVAL, "cannot resolve listen address %s: %s", host,
                        gai_strerror(g));
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        httpd_close(h);
        return cerr_set(e, err == EADDRINUSE ? CORRAL_EUNAVAIL : CORRAL_EIO,
                        "cannot listen on %s port %d: %s", host, port, strerror(err));
    }
    freeaddrinfo(res);
    h->fd = fd;
    h->port = port;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    *out = h;
    return CORRAL_OK;
}

int httpd_port(const struct httpd *h) { return h->port; }

static void conn_close(struct httpd_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c->out);
    struct httpd *h = c->h;
    memset(c, 0, sizeof *c);
    c->h = h;
    c->fd = -1;
}

void httpd_close(struct httpd *h)
{
    if (!h)
        return;
    for (unsigned i = 0; h->conns && i < h->opt.max_conns; i++)
        conn_close(&h->conns[i]);
    if (h->fd >= 0)
        close(h->fd);
    free(h->conns);
    free(h);
}

size_t httpd_pollfds(const struct httpd *h, struct pollfd *fds, size_t cap)
{
    size_t n = 0;
    for (unsigned i = 0; i < h->opt.max_conns && n < cap; i++) {
        const struct httpd_conn *c = &h->conns[i];
        if (c->fd < 0)
            continue;
        fds[n].fd = c->fd;
        fds[n].events = c->writing && !c->closing ? POLLOUT : POLLIN;
        fds[n].revents = 0;
        n++;
    }
    /* Always: a new connection makes room for itself (accept_all). */
    if (h->fd >= 0 && n < cap) {
        fds[n].fd = h->fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    return n;
}

/* ---- answers ------------------------------------------------------------------------ */

void httpd_reply(struct httpd_conn *c, int status, const char *content_type,
                 const char *headers, const char *body, size_t len)
{
    if (c->replied) {
        LOG_WARN("%s: a second answer to one request was dropped", c->h->opt.name);
        return;
    }
    c->replied = 1;
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\nCache-Control: no-store\r\n%s\r\n",
                     status, httpd_reason(status), content_type, len, headers ? headers : "");
    size_t body_len = c->head_only ? 0 : len;
    free(c->out);
    c->out = NULL;
    if (n > 0 && (size_t)n < sizeof head)
        c->out = malloc((size_t)n + body_len);
    if (c->out) {
        memcpy(c->out, head, (size_t)n);
        if (body_len)
            memcpy(c->out + n, body, body_len);
        c->out_len = (size_t)n + body_len;
    } else {
        /* Out of memory, or headers too long for the head: still exactly one answer. */
        static const char fail[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";
        c->out = strdup(fail);
        c->out_len = c->out ? strlen(fail) : 0;
    }
    c->out_off = 0;
    c->writing = 1;
}

/* The server's own error answers; msg holds no quote or backslash. */
static void reply_error(struct httpd_conn *c, int status, const char *msg)
{
    char body[300];
    int json = c->h->opt.json_errors;
    int n = snprintf(body, sizeof body, json ? "{\"error\":\"%s\"}\n" : "%s\n", msg);
    httpd_reply(c, status, json ? "application/json" : "text/plain; charset=utf-8", NULL, body,
                n > 0 && (size_t)n < sizeof body ? (size_t)n : 0);
}

/* A token character of RFC 9110 (method names). */
static int is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The request is complete (head and body): parse the request line and answer. */
static void handle(struct httpd_conn *c)
{
    char *p = c->in, *eol = memchr(p, '\n', c->head_len);
    char *sp1 = eol ? memchr(p, ' ', (size_t)(eol - p)) : NULL;
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp2 || sp1 == p || sp1 - p > 15 || sp1[1] != '/') {
        reply_error(c, 400, "malformed request line: expected METHOD /PATH HTTP/1.x");
        return;
    }
    char *ver = sp2 + 1, *vend = eol > ver && eol[-1] == '\r' ? eol - 1 : eol;
    if (vend - ver != 8 || strncmp(ver, "HTTP/1.", 7) != 0 || ver[7] < '0' || ver[7] > '9') {
        reply_error(c, 400, "malformed request line: expected HTTP/1.0 or HTTP/1.1");
        return;
    }
    for (char *q = p; q < sp1; q++)
        if (!is_tchar(*q)) {
            reply_error(c, 400, "malformed request line: the method is not a token");
            return;
        }
    for (char *q = sp1 + 1; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f) {
            reply_error(c, 400, "malformed request line: the target has a byte outside "
                                "printable ASCII");
            return;
        }
    /* Cut inside the request line only: the head's length and the body stay as they are. */
    *sp1 = '\0';
    *sp2 = '\0';
    char *path = sp1 + 1;
    char *frag = strchr(path, '#');
    if (frag)
        *frag = '\0';
    char *query = strchr(path, '?');
    if (query)
        *query++ = '\0';
    struct httpd_request rq = {.method = p, .path = path, .query = query ? query : "",
                               .head = c->in, .head_len = c->head_len,
                               .body = c->in + c->head_len, .body_len = c->body_len};
    c->head_only = strcmp(p, "HEAD") == 0;
    c->h->handle(c->h->arg, &rq, c);
    if (!c->replied)
        reply_error(c, 500, "the endpoint gave no answer");
}

/*
 * The head is complete: what its headers say of a body. 0 and c->body_len set, or -1
 * with the answer given.
 */
static int body_of(struct httpd_conn *c)
{
    char v[1024];
    size_t max = c->h->opt.max_body;
    if (httphead_get(c->in, c->head_len, "Transfer-Encoding", v, sizeof v) == 0) {
        reply_error(c, 400, "Transfer-Encoding is not taken: send a body with Content-Length");
        return -1;
    }
    if (httphead_count(c->in, c->head_len, "Content-Length") > 1) {
        reply_error(c, 400, "more than one Content-Length");
        return -1;
    }
    if (httphead_get(c->in, c->head_len, "Content-Length", v, sizeof v) != 0)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || v[0] == '+') {
        reply_error(c, 400, "Content-Length is not a number of bytes");
        return -1;
    }
    if (n > max) {
        char msg[96];
        if (max)
            snprintf(msg, sizeof msg, "the body exceeds %zu bytes", max);
        else
            snprintf(msg, sizeof msg, "this server takes no request body");
        reply_error(c, max ? 413 : 400, msg);
        return -1;
    }
    c->body_len = (size_t)n;
    char *grown = realloc(c->in, (c->head_len + c->body_len > c->in_len
                                      ? c->head_len + c->body_len : c->in_len) + 1);
    if (!grown) {
        reply_error(c, 500, "out of memory reading the request body");
        return -1;
    }
    c->in = grown;
    return 0;
}

/* ---- connections -------------------------------------------------------------------- */

/* Accepts what waits; each new connection takes a free slot, or the oldest one's. */
static void accept_all(struct httpd *h)
{
    for (unsigned k = 0; k < h->opt.max_conns; k++) {
        int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                LOG_WARN("%s: accept: %s", h->opt.name, strerror(errno));
            return;
        }
        struct httpd_conn *c = NULL, *oldest = NULL;
        for (unsigned i = 0; i < h->opt.max_conns && !c; i++) {
            struct httpd_conn *x = &h->conns[i];
            if (x->fd < 0)
                c = x;
            else if (!oldest || (x->closing && !oldest->closing) ||
                     (x->closing == oldest->closing && x->deadline_ms < oldest->deadline_ms))
                oldest = x;
        }
        if (!c) {
            LOG_DEBUG("%s: %u connections open: closing the oldest for a new one", h->opt.name,
                      h->opt.max_conns);
            conn_close(oldest);
            c = oldest;
        }
        c->in = malloc(h->opt.max_head + 1);
        if (!c->in) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->deadline_ms = now_ms() + h->opt.deadline_ms;
    }
}

/* Reads what there is; answers once the head and its body are complete. */
static void conn_read(struct httpd_conn *c)
{
    size_t max = c->h->opt.max_head;
    for (;;) {
        if (c->head_len && c->in_len >= c->head_len + c->body_len) {
            /* Whole; bytes past the body (a pipelined request) are not read as one. */
            c->in[c->head_len + c->body_len] = '\0';
            handle(c);
            return;
        }
        size_t room = c->head_len ? c->head_len + c->body_len - c->in_len : max - c->in_len;
        if (room == 0) {
            char msg[96];
            snprintf(msg, sizeof msg, "the request line and headers exceed %zu bytes", max);
            reply_error(c, 431, msg);
            return;
        }
        ssize_t got = read(c->fd, c->in + c->in_len, room);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        if (got == 0) { /* closed before a whole request: nothing was accepted */
            conn_close(c);
            return;
        }
        size_t from = c->in_len > 3 ? c->in_len - 3 : 0;
        c->in_len += (size_t)got;
        if (c->head_len)
            continue; /* body bytes */
        c->in[c->in_len] = '\0';
        if (memchr(c->in + c->in_len - (size_t)got, '\0', (size_t)got)) {
            reply_error(c, 400, "a NUL byte in the request head");
            return;
        }
        char *end = strstr(c->in + from, "\r\n\r\n");
        size_t blank = 4;
        if (!end) {
            end = strstr(c->in + from, "\n\n");
            blank = 2;
        }
        if (!end)
            continue;
        c->head_len = (size_t)(end - c->in) + blank;
        if (body_of(c))
            return;
    }
}

static void conn_write(struct httpd_conn *c)
{
    if (!c->out) {
        conn_close(c);
        return;
    }
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    /* Shut for writing and read until the client closes, so that closing with unread
     * bytes does not reset the answer away. */
    shutdown(c->fd, SHUT_WR);
    c->closing = 1;
}

static void conn_discard(struct httpd_conn *c)
{
    char sink[1024];
    for (;;) {
        ssize_t n = read(c->fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(c);
        return;
    }
}

void httpd_serve(struct httpd *h)
{
    if (h->fd < 0)
        return;
    accept_all(h);
    long long now = now_ms();
    for (unsigned i = 0; i < h->opt.max_conns; i++) {
        struct httpd_conn *c = &h->conns[i];
        if (c->fd < 0)
            continue;
        if (!c->writing)
            conn_read(c);
        if (c->fd >= 0 && c->writing && !c->closing)
            conn_write(c);
        if (c->fd >= 0 && c->closing)
            conn_discard(c);
        if (c->fd >= 0 && now > c->deadline_ms)
            conn_close(c); /* too slow a client: its slot goes to the next */
    }
}

void httpd_run(struct httpd *h, int stop_fd)
{
    size_t cap = h->opt.max_conns + 2;
    struct pollfd *fds = calloc(cap, sizeof *fds);
    if (!fds) {
        LOG_ERROR("%s: out of memory: the HTTP server stops", h->opt.name);
        return;
    }
    for (;;) {
        size_t n = 0;
        if (stop_fd >= 0) {
            fds[0].fd = stop_fd;
            fds[0].events = POLLIN;
            fds[0].revents = 0;
            n = 1;
        }
        n += httpd_pollfds(h, fds + n, cap - n);
        /* A short timeout, so deadlines are kept when nothing else wakes the loop. */
        int r = poll(fds, (nfds_t)n, 100);
        if (r < 0 && errno != EINTR) {
            LOG_ERROR("%s: poll: %s: the HTTP server stops", h->opt.name, strerror(errno));
            break;
        }
        if (stop_fd >= 0 && r > 0 && fds[0].revents)
            break;
        httpd_serve(h);
    }
    free(fds);
}
