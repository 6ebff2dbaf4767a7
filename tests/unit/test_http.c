/*
 * The router's HTTP server over real loopback sockets: keep-alive, pipelining
 * order, limits (431, 413, 408), malformed input, HTTP/1.0, connection cap,
 * idle timeout, clients that leave while their answer is pending (and the abort
 * function that tells the handler), and listeners sharing a port.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"

struct server {
    pthread_t th;
    uv_loop_t loop;
    uv_async_t stop;
    struct http_server *srv;
    struct http_limits lim;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int up;
};

struct delayed {
    uv_timer_t t;
    struct http_request *req;
    char tag[64];
};

static void delayed_closed(uv_handle_t *h) { free(h->data); }

/*
 * What the loop thread saw, for the test thread to wait on (atomics): abort functions
 * run, requests that registered one, and delayed answers by what their tag said when
 * their timer fired ("aborted" when the abort function ran first).
 */
static int g_aborts, g_abortable, g_fired_aborted, g_fired_abortable, g_fired_plain;

static int counter(const int *c) { return __atomic_load_n(c, __ATOMIC_SEQ_CST); }
static void bump(int *c) { __atomic_add_fetch(c, 1, __ATOMIC_SEQ_CST); }

static void on_abort(void *arg)
{
    struct delayed *d = arg;
    bump(&g_aborts);
    snprintf(d->tag, sizeof d->tag, "aborted");
}

static void delayed_fire(uv_timer_t *t)
{
    struct delayed *d = t->data;
    if (strcmp(d->tag, "aborted") == 0)
        bump(&g_fired_aborted);
    else if (strcmp(d->tag, "abortable") == 0)
        bump(&g_fired_abortable);
    else if (strcmp(d->tag, "plain") == 0)
        bump(&g_fired_plain);
    http_respond(d->req, 200, "text/plain", NULL, strdup(d->tag), strlen(d->tag));
    uv_close((uv_handle_t *)t, delayed_closed);
}

/* "/echo/TAG" answers TAG at once; "/slow/MS/TAG" answers TAG after MS milliseconds. */
static void handler(void *arg, struct http_request *req)
{
    struct server *s = arg;
    unsigned ms;
    char tag[64];
    if (sscanf(req->path, "/slow/%u/%63s", &ms, tag) == 2) {
        struct delayed *d = calloc(1, sizeof *d);
        d->req = req;
        snprintf(d->tag, sizeof d->tag, "%s", tag);
        uv_timer_init(&s->loop, &d->t);
        d->t.data = d;
        uv_timer_start(&d->t, delayed_fire, ms, 0);
        if (strcmp(tag, "abortable") == 0) {
            http_request_on_abort(req, on_abort, d);
            bump(&g_abortable);
        }
        return;
    }
    if (sscanf(req->path, "/big/%u", &ms) == 1) {
        /* "/big/N": N bytes of answer, to fill the client's socket. */
        char *big = malloc(ms);
        memset(big, 'b', ms);
        http_respond(req, 200, "text/plain", NULL, big, ms);
        return;
    }
    char body[128];
    int n = snprintf(body, sizeof body, "%s %s %zu", req->method_name, req->path, req->body_len);
    http_respond(req, 200, "text/plain", NULL, strdup(body), (size_t)n);
}

static void on_stop(uv_async_t *a)
{
    struct server *s = a->data;
    http_server_close(s->srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    struct cerr e = {0};
    uv_loop_init(&s->loop);
    uv_async_init(&s->loop, &s->stop, on_stop);
    s->stop.data = s;
    assert_int_equal(http_server_new(&s->srv, &s->loop, &s->lim, handler, s, &e), 0);
    assert_int_equal(http_server_listen(s->srv, "127.0.0.1", 0, &s->port, &e), 0);
    pthread_mutex_lock(&s->mu);
    s->up = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    return NULL;
}

static int start_server(void **state, unsigned idle_timeout_ms)
{
    struct server *s = calloc(1, sizeof *s);
    http_limits_default(&s->lim);
    s->lim.max_header_bytes = 1024;
    s->lim.max_body_bytes = 4096;
    s->lim.idle_timeout_ms = idle_timeout_ms;
    s->lim.max_connections = 8;
    s->lim.max_pipelined = 4;
    s->lim.request_timeout_ms = 300;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_create(&s->th, NULL, server_main, s);
    pthread_mutex_lock(&s->mu);
    while (!s->up)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    *state = s;
    return 0;
}

static int setup(void **state) { return start_server(state, 400); }

static int teardown(void **state)
{
    struct server *s = *state;
    uv_async_send(&s->stop);
    pthread_join(s->th, NULL);
    free(s);
    return 0;
}

static int dial(struct server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

/*
 * How long a read waits for something that must come (an answer, the server closing).
 * It ends as soon as that arrives, so it only costs time when a check fails; it is long
 * so that a loaded machine (two cores, the sanitizers, a build beside) cannot fail it.
 */
#define MUST_COME_MS 10000

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits up to MUST_COME_MS for a counter the loop thread bumps to reach want. */
static int wait_counter(const int *c, int want)
{
    for (int64_t end = now_ms() + MUST_COME_MS; counter(c) < want && now_ms() < end;)
        usleep(1000);
    return counter(c);
}

/*
 * Reads until EOF, until nothing arrives for wait_ms, or, when `until` is given, until
 * that text has arrived (then at most MUST_COME_MS in all); *eof tells whether it closed.
 */
static char *read_some(int fd, int wait_ms, const char *until, int *eof)
{
    size_t cap = 1 << 16, len = 0, scanned = 0;
    char *b = malloc(cap + 1);
    int64_t end = now_ms() + MUST_COME_MS;
    *eof = 0;
    b[0] = '\0';
    for (;;) {
        /* Only the new bytes (and the text's length before them) are searched: answers
         * of many MB arrive in many reads. */
        if (until && strstr(b + scanned, until))
            break;
        if (until && len >= strlen(until))
            scanned = len - strlen(until) + 1;
        int ms = wait_ms;
        if (until) {
            int64_t left = end - now_ms();
            if (left <= 0)
                break;
            ms = (int)left;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ms) <= 0)
            break;
        if (len == cap) {
            cap *= 2;
            b = realloc(b, cap + 1);
        }
        ssize_t r = recv(fd, b + len, cap - len, 0);
        if (r <= 0) {
            *eof = 1;
            break;
        }
        len += (size_t)r;
        b[len] = '\0';
    }
    b[len] = '\0';
    return b;
}

/* Everything until the server closes (or nothing arrives for wait_ms). */
static char *read_all(int fd, int wait_ms, int *eof) { return read_some(fd, wait_ms, NULL, eof); }

/* Until `text` (the end of the last answer expected) has arrived. */
static char *read_until(int fd, const char *text, int *eof)
{
    return read_some(fd, 0, text, eof);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_keep_alive(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    for (int i = 0; i < 3; i++) {
        const char *req = "POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        send_all(fd, req, strlen(req));
        char *out = read_until(fd, "\r\n\r\nPOST /echo/a 5", &eof);
        assert_false(eof);
        assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
        assert_non_null(strstr(out, "Content-Length: 14\r\n"));
        assert_non_null(strstr(out, "\r\n\r\nPOST /echo/a 5"));
        assert_null(strstr(out, "Connection: close"));
        free(out);
    }
    /* Still open after the third (a closing server would have sent its end by now). */
    char *rest = read_all(fd, 100, &eof);
    assert_false(eof);
    assert_string_equal(rest, "");
    free(rest);
    close(fd);
}

static void test_pipelining_order(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    /* Later requests finish first; answers must still come back in request order. */
    const char *req = "GET /slow/150/first HTTP/1.1\r\n\r\n"
                      "GET /slow/20/second HTTP/1.1\r\n\r\n"
                      "GET /echo/third HTTP/1.1\r\n\r\n"
                      "GET /slow/1/last HTTP/1.1\r\nConnection: close\r\n\r\n"
                      "GET /echo/ignored HTTP/1.1\r\n\r\n";
    send_all(fd, req, strlen(req));
    char *out = read_all(fd, MUST_COME_MS, &eof);
    assert_true(eof);
    char *a = strstr(out, "first"), *b = strstr(out, "second"), *c = strstr(out, "third"),
         *d = strstr(out, "last");
    assert_true(a && b && c && d && a < b && b < c && c < d);
    assert_null(strstr(out, "ignored"));
    assert_int_equal(count(out, "HTTP/1.1 200"), 4);
    assert_non_null(strstr(out, "Connection: close"));
    free(out);
    close(fd);
}

static void test_many_pipelined(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    /* Far more than max_pipelined: the server must pause and resume without losing any. */
    char req[64 * 60] = "";
    for (int i = 0; i < 60; i++) {
        char one[64];
        snprintf(one, sizeof one, "GET /slow/%d/t%02d HTTP/1.1\r\n\r\n", i % 3, i);
        strcat(req, one);
    }
    strcat(req, "GET /echo/end HTTP/1.1\r\nConnection: close\r\n\r\n");
    send_all(fd, req, strlen(req));
    char *out = read_all(fd, MUST_COME_MS, &eof);
    assert_true(eof);
    assert_int_equal(count(out, "HTTP/1.1 200"), 61);
    const char *p = out;
    for (int i = 0; i < 60; i++) {
        char tag[8];
        snprintf(tag, sizeof tag, "t%02d", i);
        const char *q = strstr(p, tag);
        if (!q)
            fail_msg("answer %s missing or out of order", tag);
        p = q;
    }
    free(out);
    close(fd);
}

static void test_unread_answers(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    /* 24 MB of answers that the client does not read for a while: none may be lost. */
    char req[40 * 241] = "";
    for (int i = 0; i < 240; i++)
        strcat(req, "GET /big/100000 HTTP/1.1\r\n\r\n");
    strcat(req, "GET /echo/end HTTP/1.1\r\n\r\n");
    send_all(fd, req, strlen(req));
    /* Not reading for longer than the server's idle timeout (400 ms) is the point: answers
     * waiting to be read are not idleness, so none may be lost. */
    usleep(700 * 1000);
    char *all = read_until(fd, "GET /echo/end 0", &eof);
    size_t total = strlen(all);
    int answers = count(all, "HTTP/1.1 200");
    assert_int_equal(answers, 241);
    assert_true(total > 240 * 100000);
    assert_non_null(strstr(all, "GET /echo/end 0"));
    free(all);
    close(fd);
}

static void expect_reject(struct server *s, const char *req, size_t len, const char *status,
                          const char *msg)
{
    int fd = dial(s), eof;
    send_all(fd, req, len);
    char *out = read_all(fd, MUST_COME_MS, &eof);
    if (strncmp(out, status, strlen(status)) != 0 || !strstr(out, msg))
        fail_msg("got '%s', expected '%s' with '%s'", out, status, msg);
    assert_true(eof);
    assert_non_null(strstr(out, "Connection: close"));
    free(out);
    close(fd);
}

static void test_limits(void **state)
{
    struct server *s = *state;
    char big[3000];
    snprintf(big, sizeof big, "GET /echo/x HTTP/1.1\r\nX-Pad: %02000d\r\n\r\n", 0);
    expect_reject(s, big, strlen(big), "HTTP/1.1 431 ", "exceed the 1024 byte limit");
    char longurl[2000] = "GET /";
    memset(longurl + 5, 'a', 1500);
    strcpy(longurl + 1505, " HTTP/1.1\r\n\r\n");
    expect_reject(s, longurl, strlen(longurl), "HTTP/1.1 431 ", "byte limit");
    /* The declared length alone is refused: no body byte is sent here. */
    const char *cl = "POST /echo/x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    expect_reject(s, cl, strlen(cl), "HTTP/1.1 413 ", "request body of 5000 bytes exceeds the 4096 byte limit");
    char chunked[6000];
    int n = snprintf(chunked, sizeof chunked,
                     "POST /echo/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n");
    memset(chunked + n, 'z', 0x1000);
    n += 0x1000;
    n += snprintf(chunked + n, sizeof chunked - (size_t)n, "\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
    expect_reject(s, chunked, (size_t)n, "HTTP/1.1 413 ", "exceeds the 4096 byte limit");
    const char *junk = "HELLO there\r\n\r\n";
    expect_reject(s, junk, strlen(junk), "HTTP/1.1 400 ", "malformed HTTP request");
    const char *badcl = "POST /echo/x HTTP/1.1\r\nContent-Length: abc\r\n\r\n";
    expect_reject(s, badcl, strlen(badcl), "HTTP/1.1 400 ", "malformed HTTP request");
    const char *badpath = "GET /a%zz HTTP/1.1\r\n\r\n";
    expect_reject(s, badpath, strlen(badpath), "HTTP/1.1 400 ", "is not a valid path");
    /* The server keeps serving after all of that. */
    int fd = dial(s), eof;
    send_all(fd, "GET /echo/ok HTTP/1.1\r\n\r\n", 26);
    char *out = read_until(fd, "GET /echo/ok 0", &eof);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    free(out);
    close(fd);
}

static void test_chunked_and_continue(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    const char *req = "POST /echo/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    send_all(fd, req, strlen(req));
    char *out = read_until(fd, "POST /echo/c 7", &eof);
    assert_non_null(strstr(out, "POST /echo/c 7"));
    free(out);
    const char *head = "POST /echo/e HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    send_all(fd, head, strlen(head));
    out = read_until(fd, "\r\n\r\n", &eof);
    assert_string_equal(out, "HTTP/1.1 100 Continue\r\n\r\n");
    free(out);
    send_all(fd, "xyz", 3);
    out = read_until(fd, "POST /echo/e 3", &eof);
    assert_non_null(strstr(out, "POST /echo/e 3"));
    free(out);
    close(fd);
}

static void test_http10(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    send_all(fd, "GET /echo/a HTTP/1.0\r\n\r\n", 24);
    char *out = read_all(fd, MUST_COME_MS, &eof);
    assert_true(eof);
    assert_non_null(strstr(out, "Connection: close"));
    free(out);
    close(fd);
    fd = dial(s);
    const char *ka = "GET /echo/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    send_all(fd, ka, strlen(ka));
    out = read_until(fd, "GET /echo/a 0", &eof);
    assert_false(eof);
    assert_non_null(strstr(out, "Connection: keep-alive"));
    free(out);
    close(fd);
}

static void test_head(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    const char *req = "HEAD /echo/a HTTP/1.1\r\n\r\nGET /echo/b HTTP/1.1\r\n\r\n";
    send_all(fd, req, strlen(req));
    char *out = read_until(fd, "GET /echo/b 0", &eof);
    /* The HEAD answer carries the length but no body, so the next answer follows directly. */
    assert_non_null(strstr(out, "Content-Length: 14\r\n\r\nHTTP/1.1 200"));
    free(out);
    close(fd);
}

static void test_idle_and_connection_cap(void **state)
{
    struct server *s = *state;
    int fds[8], eof;
    /*
     * Eight connections, each answered once (so it is surely accepted) and each with a
     * second answer pending for a second: a connection with an answer pending is never
     * idle, so all eight are still open when the ninth comes, however slow the machine.
     */
    for (int i = 0; i < 8; i++) {
        fds[i] = dial(s);
        const char *two = "GET /echo/a HTTP/1.1\r\n\r\nGET /slow/1000/held HTTP/1.1\r\n\r\n";
        send_all(fds[i], two, strlen(two));
        char *out = read_until(fds[i], "GET /echo/a 0", &eof);
        assert_non_null(strstr(out, "200 OK"));
        free(out);
    }
    /* The ninth is over the cap: accepted and closed at once. It asks for something, so
     * a server that let it in would answer (and an idle close would come only later). */
    int extra = dial(s);
    const char *x = "GET /echo/x HTTP/1.1\r\n\r\n";
    (void)send(extra, x, strlen(x), MSG_NOSIGNAL); /* may meet the close: not checked */
    char *out = read_all(extra, MUST_COME_MS, &eof);
    assert_true(eof);
    assert_string_equal(out, "");
    free(out);
    close(extra);
    /* Each of the eight gets its pending answer, then, idle, is closed by the server. */
    for (int i = 0; i < 8; i++) {
        out = read_all(fds[i], MUST_COME_MS, &eof);
        assert_true(eof);
        assert_non_null(strstr(out, "\r\n\r\nheld"));
        free(out);
        close(fds[i]);
    }
    /*
     * The idle timeout (400 ms) itself: the server's clock for a connection starts no
     * earlier than its last request was sent, so the close cannot come sooner than that
     * (the lower bound holds exactly, but for a few ms of clock steps); the upper bound
     * gives a loaded machine ten times the timeout.
     */
    int fd = -1;
    int64_t t0 = 0;
    for (int i = 0; i < 1000 && fd < 0; i++) {
        /* The server counts a connection out only after it has closed it (in the same
         * loop turn, but that turn can accept first): right after the eight went, a try
         * may still be turned away; it is made again. */
        fd = dial(s);
        t0 = now_ms();
        const char *a = "GET /echo/a HTTP/1.1\r\n\r\n";
        (void)send(fd, a, strlen(a), MSG_NOSIGNAL);
        out = read_until(fd, "GET /echo/a 0", &eof);
        if (!strstr(out, "GET /echo/a 0")) {
            close(fd);
            fd = -1;
            usleep(10000);
        }
        free(out);
    }
    assert_true(fd >= 0);
    out = read_all(fd, MUST_COME_MS, &eof);
    int64_t idle = now_ms() - t0;
    print_message("  idle connection closed after %lld ms (idle timeout 400 ms)\n", (long long)idle);
    assert_true(eof);
    assert_string_equal(out, "");
    assert_true(idle >= 400 - 10);
    assert_true(idle < 10 * 400);
    free(out);
    close(fd);
}

static void test_client_leaves_early(void **state)
{
    struct server *s = *state;
    for (int i = 0; i < 5; i++) {
        int fd = dial(s);
        const char *req = "GET /slow/50/a HTTP/1.1\r\n\r\nGET /slow/10/b HTTP/1.1\r\n\r\n";
        send_all(fd, req, strlen(req));
        close(fd);
    }
    usleep(200 * 1000);
    /* Answered after a longer delay than theirs, started later on the same loop: by the
     * time it comes, the answers for the clients that left have all been attempted. */
    int fd = dial(s), eof;
    const char *ok = "GET /slow/100/ok HTTP/1.1\r\n\r\n";
    send_all(fd, ok, strlen(ok));
    char *out = read_until(fd, "\r\n\r\nok", &eof);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    assert_non_null(strstr(out, "\r\n\r\nok"));
    free(out);
    close(fd);
}

static void test_abort_on_hangup(void **state)
{
    struct server *s = *state;
    int aborts = counter(&g_aborts), abortable = counter(&g_abortable);
    int fired_aborted = counter(&g_fired_aborted), fired_abortable = counter(&g_fired_abortable);
    int fired_plain = counter(&g_fired_plain);
    int fd = dial(s);
    const char *req = "GET /slow/1500/abortable HTTP/1.1\r\n\r\n";
    send_all(fd, req, strlen(req));
    /* The handler holds it; then the client hangs up. */
    assert_int_equal(wait_counter(&g_abortable, abortable + 1), abortable + 1);
    close(fd);
    assert_int_equal(wait_counter(&g_aborts, aborts + 1), aborts + 1);
    /* Told before its answer was due: when that timer fired, the abort function had
     * already run (an order of two events on the server's loop, not a duration). */
    assert_int_equal(wait_counter(&g_fired_aborted, fired_aborted + 1), fired_aborted + 1);
    assert_int_equal(counter(&g_fired_abortable), fired_abortable);
    /* A plain request is never told, not even once its answer's time has come. */
    fd = dial(s);
    req = "GET /slow/20/plain HTTP/1.1\r\n\r\n";
    send_all(fd, req, strlen(req));
    close(fd);
    assert_int_equal(wait_counter(&g_fired_plain, fired_plain + 1), fired_plain + 1);
    assert_int_equal(counter(&g_aborts), aborts + 1);
}

static void test_request_timeout(void **state)
{
    struct server *s = *state;
    int fd = dial(s), eof;
    /*
     * A slow sender keeps the connection busy but never finishes its request: a header
     * line every 120 ms, until the server answers (10 s at most). That activity must not
     * extend the request timeout (300 ms), which runs from the request's first byte:
     * the 408 cannot come before it (exact, but for clock steps), and must come within
     * ten times it (a deadline restarted by every line would never fire here).
     */
    const char *line = "GET /echo/a HTTP/1.1\r\n";
    int64_t t0 = now_ms(), t1;
    send_all(fd, line, strlen(line));
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        t1 = now_ms();
        if (t1 - t0 >= MUST_COME_MS || poll(&p, 1, 120) > 0)
            break;
        send(fd, "X: y\r\n", 6, MSG_NOSIGNAL);
    }
    t1 = now_ms();
    char *out = read_all(fd, MUST_COME_MS, &eof);
    print_message("  408 after %lld ms (request timeout 300 ms)\n", (long long)(t1 - t0));
    assert_non_null(strstr(out, "HTTP/1.1 408"));
    assert_non_null(strstr(out, "within 300 ms"));
    assert_true(eof);
    assert_true(t1 - t0 >= 300 - 10);
    assert_true(t1 - t0 < 10 * 300);
    free(out);
    close(fd);
    /* A request that arrives in time on another connection is unaffected. */
    fd = dial(s);
    send_all(fd, "GET /echo/ok HTTP/1.1\r\n\r\n", 26);
    out = read_until(fd, "GET /echo/ok 0", &eof);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    free(out);
    close(fd);
}

struct rp_server {
    uv_loop_t loop;
    struct http_server *srv;
};

static void test_reuseport(void **state)
{
    /* Two servers on one port, as router threads run them. */
    struct rp_server a, b;
    struct http_limits lim;
    struct cerr e = {0};
    int pa = 0, pb = 0;
    http_limits_default(&lim);
    uv_loop_init(&a.loop);
    uv_loop_init(&b.loop);
    assert_int_equal(http_server_new(&a.srv, &a.loop, &lim, handler, NULL, &e), 0);
    assert_int_equal(http_server_new(&b.srv, &b.loop, &lim, handler, NULL, &e), 0);
    http_server_set_reuseport(a.srv, 1);
    http_server_set_reuseport(b.srv, 1);
    assert_int_equal(http_server_listen(a.srv, "127.0.0.1", 0, &pa, &e), 0);
    assert_int_equal(http_server_listen(b.srv, "127.0.0.1", pa, &pb, &e), 0);
    assert_int_equal(pa, pb);
    http_server_close(a.srv, NULL, NULL);
    http_server_close(b.srv, NULL, NULL);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&a.loop), 0);
    assert_int_equal(uv_loop_close(&b.loop), 0);
}

int main(void)
{
    /* libuv writes with write(2): a client that left must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    log_init("http-test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unread_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_and_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_connection_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_leaves_early, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_on_hangup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_timeout, setup, teardown),
        cmocka_unit_test(test_reuseport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
