/*
 * Tests of the small HTTP server in common/httpd.h, over loopback sockets, with the
 * server on a thread of its own (httpd_run) as the replica runs it:
 *
 * - a GET is answered with the handler's status, headers and body, and
 *   "Connection: close"; HEAD gets the same head without the body; the handler
 *   sees the path without its query, and the query;
 * - bytes from anyone are bounded: a malformed request line, a bad version, a
 *   method that is not a token, a control byte in the target, a NUL byte and a
 *   request with a body are 400; a head over max_head is 431; each is answered
 *   once and the handler never runs;
 * - a body announced by Content-Length is read whole (in pieces too) up to max_body
 *   (413 beyond; 400 for a malformed length or Transfer-Encoding), errors in JSON
 *   when asked;
 * - a handler that gives no answer gets a 500 sent for it, and a second answer
 *   from a handler is dropped: exactly one answer per request;
 * - a client that never finishes its head is closed at the deadline, and when
 *   every slot is taken a new connection closes the oldest, so probes still get
 *   through;
 * - the port in use is refused with CORRAL_EUNAVAIL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "httpd.h"

struct server {
    struct httpd *h;
    int wake[2];
    pthread_t th;
    int calls; /* handler runs */
    int bad_request; /* a request the handler saw broke httpd.h's promises */
    char path[256], query[256], method[16], body[64];
};

/* /ok answers 200; /twice answers two times; /silent does not answer; others 404. */
static void handle(void *arg, const struct httpd_request *rq, struct httpd_conn *c)
{
    struct server *s = arg;
    s->calls++;
    snprintf(s->path, sizeof s->path, "%s", rq->path);
    snprintf(s->query, sizeof s->query, "%s", rq->query);
    snprintf(s->method, sizeof s->method, "%s", rq->method);
    snprintf(s->body, sizeof s->body, "%s", rq->body);
    /* Checked on the test's thread (stop): cmocka's asserts belong there. */
    if (strlen(rq->body) != rq->body_len || !rq->head_len || rq->head[rq->head_len - 1] != '\n')
        s->bad_request = 1;
    if (strcmp(rq->path, "/ok") == 0) {
        httpd_reply(c, 200, "text/plain", "X-Test: 1\r\n", "hello\n", 6);
    } else if (strcmp(rq->path, "/twice") == 0) {
        httpd_reply(c, 200, "text/plain", NULL, "first\n", 6);
        httpd_reply(c, 503, "text/plain", NULL, "second\n", 7);
    } else if (strcmp(rq->path, "/silent") != 0) {
        httpd_reply(c, 404, "text/plain", NULL, "no\n", 3);
    }
}

static void *serve(void *arg)
{
    struct server *s = arg;
    httpd_run(s->h, s->wake[0]);
    return NULL;
}

static struct server *start_with(unsigned max_conns, unsigned deadline_ms, size_t max_body,
                                 int json_errors)
{
    struct server *s = calloc(1, sizeof *s);
    struct httpd_options opt = HTTPD_OPTIONS_DEFAULT;
    struct cerr e = {0};
    assert_non_null(s);
    opt.max_conns = max_conns;
    opt.max_head = 512;
    opt.deadline_ms = deadline_ms;
    opt.max_body = max_body;
    opt.json_errors = json_errors;
    opt.name = "test";
    assert_int_equal(httpd_open(&s->h, "127.0.0.1", 0, &opt, handle, s, &e), CORRAL_OK);
    assert_true(httpd_port(s->h) > 0);
    assert_int_equal(pipe(s->wake), 0);
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
    return s;
}

static struct server *start(unsigned max_conns, unsigned deadline_ms)
{
    return start_with(max_conns, deadline_ms, 0, 0);
}

static void stop(struct server *s)
{
    assert_int_equal(write(s->wake[1], "x", 1), 1);
    pthread_join(s->th, NULL);
    assert_false(s->bad_request);
    close(s->wake[0]);
    close(s->wake[1]);
    httpd_close(s->h);
    free(s);
}

static int dial(const struct server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)httpd_port(s->h))};
    struct timeval tv = {.tv_sec = 5};
    assert_true(fd >= 0);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Reads until the server closes (or 5 s pass); returns what came, NUL-terminated. */
static char *read_all(int fd)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    assert_non_null(buf);
    for (;;) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got <= 0)
            break;
        n += (size_t)got;
        if (n == cap)
            break;
    }
    buf[n] = '\0';
    return buf;
}

/* Sends len bytes of req on a fresh connection and returns the whole answer. */
static char *exchange(const struct server *s, const char *req, size_t len)
{
    int fd = dial(s);
    assert_int_equal(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    char *ans = read_all(fd);
    close(fd);
    return ans;
}

static char *ask(const struct server *s, const char *req)
{
    return exchange(s, req, strlen(req));
}

/* The number of status lines in an answer: exactly one per request. */
static int answers(const char *ans)
{
    int n = 0;
    for (const char *p = ans; (p = strstr(p, "HTTP/1.1 ")); p++)
        n++;
    return n;
}

static void test_get_head_and_query(void **state)
{
    struct server *s = start(8, 2000);
    char *a = ask(s, "GET /ok?x=1&y=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(a, "Content-Length: 6\r\n"));
    assert_non_null(strstr(a, "Connection: close\r\n"));
    assert_non_null(strstr(a, "X-Test: 1\r\n"));
    assert_non_null(strstr(a, "\r\n\r\nhello\n"));
    assert_int_equal(answers(a), 1);
    assert_string_equal(s->path, "/ok");
    assert_string_equal(s->query, "x=1&y=2");
    free(a);
    /* Bare LF line ends, HTTP/1.0, no headers at all. */
    a = ask(s, "GET /ok HTTP/1.0\n\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    free(a);
    a = ask(s, "HEAD /ok HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(a, "Content-Length: 6\r\n"));
    assert_null(strstr(a, "hello"));
    assert_string_equal(s->method, "HEAD");
    free(a);
    a = ask(s, "GET /elsewhere#frag HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 404 Not Found\r\n"));
    assert_string_equal(s->path, "/elsewhere");
    free(a);
    /* A head in many small pieces is read whole. */
    int fd = dial(s);
    const char *req = "GET /ok HTTP/1.1\r\nA: b\r\n\r\n";
    for (size_t i = 0; req[i]; i++) {
        assert_int_equal(send(fd, req + i, 1, MSG_NOSIGNAL), 1);
        usleep(1000);
    }
    a = read_all(fd);
    close(fd);
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    free(a);
    stop(s);
}

static void test_bad_requests(void **state)
{
    static const struct {
        const char *req;
        size_t len; /* 0: strlen */
        const char *status;
    } cases[] = {
        {"GARBAGE\r\n\r\n", 0, "400"},
        {"GET ok HTTP/1.1\r\n\r\n", 0, "400"},             /* not /PATH */
        {"GET /ok HTTP/2.0\r\n\r\n", 0, "400"},
        {"GET /ok HTTP/1.1 extra\r\n\r\n", 0, "400"},
        {"G(T /ok HTTP/1.1\r\n\r\n", 0, "400"},            /* not a token */
        {"GETGETGETGETGETGET /ok HTTP/1.1\r\n\r\n", 0, "400"}, /* method too long */
        {"GET /o\x01k HTTP/1.1\r\n\r\n", 0, "400"},
        {"GET /ok HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, "400"},
        {"POST /ok HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 0, "400"},
        {"GET /ok HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 0, "400"},
        {" /ok HTTP/1.1\r\n\r\n", 0, "400"},
    };
    struct server *s = start(8, 2000);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].req);
        char *a = exchange(s, cases[i].req, len);
        char want[32];
        snprintf(want, sizeof want, "HTTP/1.1 %s ", cases[i].status);
        if (!strstr(a, want))
            fail_msg("case %zu (%s): got '%.80s'", i, cases[i].req, a);
        assert_int_equal(answers(a), 1);
        free(a);
    }
    assert_int_equal(s->calls, 0);
    /* Content-Length: 0 announces no body: served. */
    char *a = ask(s, "GET /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 "));
    free(a);
    /* A head beyond max_head (512) is refused. */
    char big[2048];
    int n = snprintf(big, sizeof big, "GET /ok HTTP/1.1\r\nX-Pad: ");
    memset(big + n, 'a', sizeof big - (size_t)n - 5);
    memcpy(big + sizeof big - 5, "\r\n\r\n", 5);
    a = exchange(s, big, sizeof big - 1);
    assert_non_null(strstr(a, "HTTP/1.1 431 "));
    assert_int_equal(answers(a), 1);
    free(a);
    assert_int_equal(s->calls, 1);
    stop(s);
}

static void test_exactly_one_answer(void **state)
{
    struct server *s = start(8, 2000);
    char *a = ask(s, "GET /silent HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 500 "));
    assert_int_equal(answers(a), 1);
    free(a);
    a = ask(s, "GET /twice HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 "));
    assert_null(strstr(a, "second"));
    assert_int_equal(answers(a), 1);
    free(a);
    stop(s);
}

static void test_bodies(void **state)
{
    struct server *s = start_with(8, 2000, 16, 1);
    char *a = ask(s, "POST /ok HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world");
    assert_non_null(strstr(a, "HTTP/1.1 200 "));
    assert_string_equal(s->body, "hello world");
    assert_string_equal(s->method, "POST");
    free(a);
    /* The body in pieces, after the head, and bytes past it (not read as a request). */
    int fd = dial(s);
    const char *p1 = "POST /ok HTTP/1.1\r\nContent-length: 4\r\n\r\nab";
    const char *p2 = "cdGET /ok HTTP/1.1\r\n\r\n";
    assert_int_equal(send(fd, p1, strlen(p1), MSG_NOSIGNAL), (ssize_t)strlen(p1));
    usleep(20 * 1000);
    assert_int_equal(send(fd, p2, strlen(p2), MSG_NOSIGNAL), (ssize_t)strlen(p2));
    a = read_all(fd);
    close(fd);
    assert_int_equal(answers(a), 1);
    assert_string_equal(s->body, "abcd");
    free(a);
    static const struct {
        const char *req, *status;
    } bad[] = {
        {"POST /ok HTTP/1.1\r\nContent-Length: 17\r\n\r\n", "413"},
        {"POST /ok HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"},
        {"POST /ok HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", "400"},
        {"POST /ok HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "400"},
        {"POST /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "400"},
    };
    int calls = s->calls;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        a = ask(s, bad[i].req);
        char want[32];
        snprintf(want, sizeof want, "HTTP/1.1 %s ", bad[i].status);
        if (!strstr(a, want) || !strstr(a, "{\"error\":\""))
            fail_msg("case %zu: got '%.120s'", i, a);
        free(a);
    }
    assert_int_equal(s->calls, calls);
    stop(s);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_deadline_and_full(void **state)
{
    struct server *s = start(2, 300);
    /* A client that never finishes its head is closed at the deadline, unanswered. */
    int slow = dial(s);
    assert_int_equal(send(slow, "GET /ok HT", 10, MSG_NOSIGNAL), 10);
    double t0 = now_s();
    char *a = read_all(slow);
    double took = now_s() - t0;
    close(slow);
    assert_string_equal(a, "");
    assert_true(took >= 0.2 && took < 3.0);
    free(a);
    /* Both slots held by silent clients: a probe still gets through, closing the oldest. */
    int h1 = dial(s), h2 = dial(s);
    usleep(50 * 1000);
    a = ask(s, "GET /ok HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 "));
    free(a);
    char *gone = read_all(h1); /* the oldest was closed for it */
    assert_string_equal(gone, "");
    free(gone);
    close(h1);
    close(h2);
    stop(s);
}

static void test_port_in_use(void **state)
{
    struct server *s = start(2, 300);
    struct httpd *h2 = NULL;
    struct httpd_options opt = HTTPD_OPTIONS_DEFAULT;
    struct cerr e = {0};
    assert_int_equal(httpd_open(&h2, "127.0.0.1", httpd_port(s->h), &opt, handle, s, &e),
                     CORRAL_EUNAVAIL);
    assert_non_null(strstr(e.msg, "cannot listen"));
    assert_null(h2);
    assert_int_equal(httpd_open(&h2, "no-such-host.invalid", 0, &opt, handle, s, &e),
                     CORRAL_EINVAL);
    opt.max_head = 10;
    assert_int_equal(httpd_open(&h2, "127.0.0.1", 0, &opt, handle, s, &e), CORRAL_EINVAL);
    stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_head_and_query),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_exactly_one_answer),
        cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_deadline_and_full),
        cmocka_unit_test(test_port_in_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
