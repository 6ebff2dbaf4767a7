#include "ctl.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until `fd` is ready for `events` or the deadline passes. */
static int wait_fd(int fd, short events, long deadline)
{
    for (;;) {
        long left = deadline - now_ms();
        struct pollfd p = {.fd = fd, .events = events};
        if (left <= 0)
            return -1;
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* A non-blocking connect bounded by the deadline, over every address of host. */
static int dial(const char *host, int port, long deadline, struct cerr *e)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char ports[16];
    int fd = -1, err = 0;
    snprintf(ports, sizeof ports, "%d", port);
    int g = getaddrinfo(host, ports, &hints, &res);
    if (g) {
        cerr_set(e, CORRAL_EIO, "cannot resolve %s: %s", host, gai_strerror(g));
        return -1;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
            socklen_t len = sizeof err;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                break;
        } else {
            err = errno == EINPROGRESS ? ETIMEDOUT : errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        cerr_set(e, CORRAL_EIO, "cannot connect to %s:%d: %s", host, port, strerror(err));
    return fd;
}

int sched_ctl_post(const char *host, int port, const char *path, const char *json,
                   long timeout_ms, int *status, char *body, size_t body_len, struct cerr *e)
{
    return sched_ctl_request(host, port, "POST", path, json, timeout_ms, status, body, body_len,
                             e);
}

int sched_ctl_request(const char *host, int port, const char *method, const char *path,
                      const char *json, long timeout_ms, int *status, char *body,
                      size_t body_len, struct cerr *e)
{
    long deadline = now_ms() + timeout_ms;
    char head[512], resp[8192];
    size_t got = 0, len = strlen(json);
    int rc = CORRAL_EIO;
    int fd = dial(host, port, deadline, e);
    if (fd < 0)
        return CORRAL_EIO;
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n", method, path, host,
                      port, len);
    /* Header and body as one buffer written in pieces, each bounded by the deadline. */
    const char *parts[2] = {head, json};
    size_t sizes[2] = {(size_t)hl, len};
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < sizes[i]) {
            ssize_t w = send(fd, parts[i] + off, sizes[i] - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
            } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (wait_fd(fd, POLLOUT, deadline)) {
                    cerr_set(e, CORRAL_ETIMEDOUT, "sending to %s:%d%s timed out", host, port, path);
                    goto fail;
                }
            } else {
                cerr_set(e, CORRAL_EIO, "sending to %s:%d%s: %s", host, port, path,
                         strerror(errno));
                goto fail;
            }
        }
    }
    /* The router closes after its answer (we asked for it), so read to the end. */
    for (;;) {
        if (got + 1 >= sizeof resp)
            break;
        ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
        if (r > 0) {
            got += (size_t)r;
            resp[got] = '\0';
            /* Stop once the whole body named by Content-Length is in. */
            char *end = strstr(resp, "\r\n\r\n"), *cl = strcasestr(resp, "\r\ncontent-length:");
            if (end && cl && cl < end && got - (size_t)(end + 4 - resp) >= strtoul(cl + 17, NULL, 10))
                break;
        } else if (r == 0) {
            break;
        } else if (errno == EAGAIN || errno == EINTR) {
            if (wait_fd(fd, POLLIN, deadline)) {
                cerr_set(e, CORRAL_ETIMEDOUT, "no answer from %s:%d%s within %ld ms", host, port,
                         path, timeout_ms);
                goto fail;
            }
        } else {
            cerr_set(e, CORRAL_EIO, "reading from %s:%d%s: %s", host, port, path, strerror(errno));
            goto fail;
        }
    }
    resp[got] = '\0';
    int st = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &st) != 1 || st < 100 || st > 599) {
        cerr_set(e, CORRAL_EPARSE, "%s:%d%s answered something that is not HTTP", host, port, path);
        goto fail;
    }
    *status = st;
    if (body && body_len) {
        const char *b = strstr(resp, "\r\n\r\n");
        snprintf(body, body_len, "%s", b ? b + 4 : "");
        for (char *p = body; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    rc = CORRAL_OK;
fail:
    close(fd);
    return rc;
}

char *sched_ctl_add_body(const char *model, long version, const char *url)
{
    char v[32];
    snprintf(v, sizeof v, "%ld", version); /* the control endpoint takes it as a string */
    json_t *o = json_pack("{s:s, s:s, s:s}", "model", model, "version", v, "url", url);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *sched_ctl_url_body(const char *url)
{
    json_t *o = json_pack("{s:s}", "url", url);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}
