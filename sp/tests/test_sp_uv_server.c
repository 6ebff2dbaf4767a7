/*
 * Unit tests for sp_serve, the SP REP server on libuv (sp/sp_uv_server.c), run
 * on a libuv loop in a thread of its own against real clients on 127.0.0.1:
 *  - a real NNG REQ socket with several contexts sending 1000 requests of 0
 *    bytes to 300 KB, some answered at once from the request callback, some
 *    later from a timer (so replies leave out of order and from outside the
 *    loop's I/O phase); every reply must equal its request;
 *  - raw TCP peers: the wrong SP protocol, garbage instead of a header, a frame
 *    over the size limit, frames without a request id or under 4 bytes (dropped,
 *    the connection goes on), a frame cut short by a hang-up, a peer that never
 *    sends its header, and one connection over the limit;
 *  - requests held by the handler while their client hangs up, answered
 *    afterwards, even after sp_serve_close (the replies are dropped; the
 *    sanitizer build checks that no freed memory is touched);
 *  - more requests than max_inflight in one write: all answered, in turn.
 * After each test the loop must close cleanly (every handle released). Each
 * wait is bounded, so a broken server fails a test instead of hanging it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <uv.h>

#include "sp_test_util.h"
#include "sp_uv_server.h"

static const uint8_t REQ_HELLO[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
static const uint8_t REP_HELLO[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};

enum { CMD_NONE, CMD_RELEASE, CMD_QUIESCE, CMD_CLOSE, CMD_CLOSE_THEN_RELEASE };

/* A request the handler keeps to answer later. */
struct held {
    struct held *next;
    struct sp_serve_req *req;
    size_t len;
    uint8_t body[];
};

/* The server, its loop thread, and what the handler saw. */
struct env {
    uv_loop_t loop;
    uv_async_t cmd;
    uv_timer_t late_timer;
    struct sp_serve *s;
    pthread_t th;
    int port;
    atomic_int command, acks; /* acks: commands the loop has finished */
    atomic_int received, replied, held_now, conns;
    struct held *late, *held;
    int loop_close_rc;
};

/*
 * How long a wait for something that must happen (a reply, a close, a command done) may
 * last. It ends as soon as that happens, so it only costs time when a check fails; it is
 * long so that a loaded machine (two cores, the sanitizers, a build beside) cannot fail it.
 */
#define MUST_COME_MS 10000

static void answer_list(struct env *v, struct held **list)
{
    struct held *h = *list;
    *list = NULL;
    while (h) {
        struct held *nx = h->next;
        sp_serve_reply(h->req, h->body, h->len);
        atomic_fetch_add(&v->replied, 1);
        atomic_fetch_sub(&v->held_now, 1);
        free(h);
        h = nx;
    }
}

static void on_late(uv_timer_t *t)
{
    struct env *v = t->data;
    answer_list(v, &v->late);
}

/* First byte of a request: 'L' answer from a timer, 'H' hold until told, else echo now. */
static void on_request(void *arg, struct sp_serve_req *req, const uint8_t *body, size_t len)
{
    struct env *v = arg;
    atomic_fetch_add(&v->received, 1);
    char mode = len ? (char)body[0] : 'E';
    if (mode != 'L' && mode != 'H') {
        sp_serve_reply(req, body, len);
        atomic_fetch_add(&v->replied, 1);
        return;
    }
    struct held *h = malloc(sizeof *h + len);
    assert_non_null(h);
    h->req = req;
    h->len = len;
    memcpy(h->body, body, len);
    atomic_fetch_add(&v->held_now, 1);
    if (mode == 'L') {
        /* Newest first: the replies leave in the reverse order of the requests. */
        h->next = v->late;
        v->late = h;
        if (!uv_is_active((uv_handle_t *)&v->late_timer))
            uv_timer_start(&v->late_timer, on_late, 1, 0);
    } else {
        h->next = v->held;
        v->held = h;
    }
}

static void on_cmd(uv_async_t *a)
{
    struct env *v = a->data;
    int c = atomic_exchange(&v->command, CMD_NONE);
    atomic_store(&v->conns, (int)sp_serve_connections(v->s));
    if (c == CMD_RELEASE)
        answer_list(v, &v->held);
    if (c == CMD_QUIESCE)
        sp_serve_quiesce(v->s);
    if (c == CMD_CLOSE || c == CMD_CLOSE_THEN_RELEASE) {
        sp_serve_close(v->s);
        if (c == CMD_CLOSE_THEN_RELEASE)
            answer_list(v, &v->held);
        answer_list(v, &v->late);
        answer_list(v, &v->held);
        uv_close((uv_handle_t *)&v->cmd, NULL);
        uv_close((uv_handle_t *)&v->late_timer, NULL);
    }
    atomic_fetch_add(&v->acks, 1);
}

static void *loop_main(void *arg)
{
    struct env *v = arg;
    uv_run(&v->loop, UV_RUN_DEFAULT);
    v->loop_close_rc = uv_loop_close(&v->loop);
    return NULL;
}

static struct env *env_start(const struct sp_serve_options *opt)
{
    struct env *v = calloc(1, sizeof *v);
    struct cerr e = {0};
    char bound[300];
    int fd = -1;
    assert_non_null(v);
    assert_int_equal(uv_loop_init(&v->loop), 0);
    if (sp_serve_bind("tcp://127.0.0.1:0", 0, -1, &fd, bound, sizeof bound, &e))
        fail_msg("bind: %s", e.msg);
    assert_int_equal(strncmp(bound, "tcp://127.0.0.1:", 16), 0);
    v->port = sp_serve_url_port(bound);
    assert_true(v->port > 0);
    assert_int_equal(sp_serve_new(&v->s, &v->loop, opt, on_request, v, &e), 0);
    assert_int_equal(sp_serve_listen_fd(v->s, fd, &e), 0);
    uv_async_init(&v->loop, &v->cmd, on_cmd);
    v->cmd.data = v;
    uv_timer_init(&v->loop, &v->late_timer);
    v->late_timer.data = v;
    assert_int_equal(pthread_create(&v->th, NULL, loop_main, v), 0);
    return v;
}

/* Runs a command on the loop and returns once the loop has finished it. */
static void env_cmd(struct env *v, int c)
{
    int before = atomic_load(&v->acks);
    atomic_store(&v->command, c);
    uv_async_send(&v->cmd);
    for (int64_t end = mono_ms() + MUST_COME_MS; atomic_load(&v->acks) == before && mono_ms() < end;)
        sleep_ms(1);
    assert_int_not_equal(atomic_load(&v->acks), before);
}

static int env_conns(struct env *v)
{
    env_cmd(v, CMD_NONE + 100); /* any other value just reads the count */
    return atomic_load(&v->conns);
}

/* The connection count once it has come down to want (the server sees hang-ups in its
 * own time), or what it still is after MUST_COME_MS. */
static int env_conns_reach(struct env *v, int want)
{
    int n = env_conns(v);
    for (int64_t end = mono_ms() + MUST_COME_MS; n != want && mono_ms() < end; n = env_conns(v))
        sleep_ms(2);
    return n;
}

/* Waits for a counter the handler keeps to reach want; returns its value. */
static int wait_count(atomic_int *c, int want)
{
    for (int64_t end = mono_ms() + MUST_COME_MS; atomic_load(c) < want && mono_ms() < end;)
        sleep_ms(1);
    return atomic_load(c);
}

static void env_stop(struct env *v, int cmd)
{
    env_cmd(v, cmd);
    pthread_join(v->th, NULL);
    assert_int_equal(v->loop_close_rc, 0);
    free(v);
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the server may have hung up; the caller checks what follows */
        b += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes within ms; returns how many came. */
static size_t recv_exact(int fd, void *p, size_t n, int ms)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, ms) <= 0)
            break;
        ssize_t r = recv(fd, (uint8_t *)p + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Whether the server closes the connection within ms (bytes before the end are skipped,
 * and counted in *skipped when it is not NULL). */
static int closed_after(int fd, int ms, size_t *skipped)
{
    uint8_t b[4096];
    if (skipped)
        *skipped = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, ms) <= 0)
            return 0;
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return 1;
        if (r < 0)
            return 0;
        if (skipped)
            *skipped += (size_t)r;
    }
}

static int closed_within(int fd, int ms) { return closed_after(fd, ms, NULL); }

/* A raw REQ peer: connects, exchanges headers. */
static int raw_peer(struct env *v)
{
    int fd = dial(v->port);
    uint8_t h[8];
    assert_int_equal(recv_exact(fd, h, 8, MUST_COME_MS), 8);
    assert_memory_equal(h, REP_HELLO, 8);
    send_all(fd, REQ_HELLO, 8);
    return fd;
}

/* Writes one request frame: backtrace words then body. */
static void raw_send(int fd, const uint32_t *bt, size_t nbt, const void *body, size_t len)
{
    uint8_t hdr[8 + 4 * 16];
    put_be64(hdr, 4 * nbt + len);
    for (size_t i = 0; i < nbt; i++)
        put_be32(hdr + 8 + 4 * i, bt[i]);
    send_all(fd, hdr, 8 + 4 * nbt);
    send_all(fd, body, len);
}

/* Reads one reply frame and checks its backtrace and body. */
static void raw_expect(int fd, const uint32_t *bt, size_t nbt, const void *body, size_t len)
{
    uint8_t hdr[8 + 4 * 16];
    assert_int_equal(recv_exact(fd, hdr, 8 + 4 * nbt, MUST_COME_MS), 8 + 4 * nbt);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n = n << 8 | hdr[i];
    assert_int_equal(n, 4 * nbt + len);
    for (size_t i = 0; i < nbt; i++) {
        uint8_t w[4];
        put_be32(w, bt[i]);
        assert_memory_equal(hdr + 8 + 4 * i, w, 4);
    }
    uint8_t *b = malloc(len + 1);
    assert_int_equal(recv_exact(fd, b, len, MUST_COME_MS), len);
    assert_memory_equal(b, body, len);
    free(b);
}

/* ---- NNG REQ interop ---- */

/* Each worker sends 125 requests; every one ends as a good reply or a failure. */
struct nng_worker {
    nng_socket sock;
    int idx, sent, good, failures;
    pthread_t th;
};

static void *nng_worker_main(void *arg)
{
    struct nng_worker *w = arg;
    nng_ctx ctx;
    nng_aio *aio;
    if (nng_ctx_open(&ctx, w->sock) || nng_aio_alloc(&aio, NULL, NULL)) {
        w->failures = 1000;
        return NULL;
    }
    nng_aio_set_timeout(aio, 10000);
    for (int i = 0; i < 125; i++) {
        int k = w->idx * 125 + i;
        size_t len = k % 50 == 0 ? 300000 : k % 7 == 0 ? 0 : (size_t)(k % 1000) + 1;
        nng_msg *m;
        nng_msg_alloc(&m, len);
        uint8_t *b = nng_msg_body(m);
        for (size_t j = 0; j < len; j++)
            b[j] = (uint8_t)(j * 31 + (size_t)k);
        if (len)
            b[0] = k % 2 ? 'L' : 'E';
        uint8_t *want = malloc(len + 1);
        memcpy(want, b, len);
        w->sent++;
        nng_aio_set_msg(aio, m);
        nng_ctx_send(ctx, aio);
        nng_aio_wait(aio);
        if (nng_aio_result(aio)) {
            nng_msg_free(nng_aio_get_msg(aio));
            w->failures++;
            free(want);
            continue;
        }
        nng_ctx_recv(ctx, aio);
        nng_aio_wait(aio);
        if (nng_aio_result(aio)) {
            w->failures++;
        } else {
            nng_msg *r = nng_aio_get_msg(aio);
            if (nng_msg_len(r) != len || memcmp(nng_msg_body(r), want, len) != 0)
                w->failures++;
            else
                w->good++;
            nng_msg_free(r);
        }
        free(want);
    }
    nng_aio_free(aio);
    nng_ctx_close(ctx);
    return NULL;
}

static void test_nng_req_interop(void **state)
{
    struct sp_serve_options opt = {.max_frame = 1 << 20};
    struct env *v = env_start(&opt);
    nng_socket sock;
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", v->port);
    assert_int_equal(nng_req0_open(&sock), 0);
    assert_int_equal(nng_dial(sock, url, NULL, 0), 0);
    struct nng_worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct nng_worker){.sock = sock, .idx = i};
        assert_int_equal(pthread_create(&w[i].th, NULL, nng_worker_main, &w[i]), 0);
    }
    int failures = 0, sent = 0, good = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(w[i].th, NULL);
        /* Every request a worker started ended one way or the other. */
        assert_int_equal(w[i].sent, 125);
        assert_int_equal(w[i].good + w[i].failures, w[i].sent);
        failures += w[i].failures;
        sent += w[i].sent;
        good += w[i].good;
    }
    nng_close(sock);
    assert_int_equal(sent, 1000);
    assert_int_equal(good, 1000);
    assert_int_equal(failures, 0);
    assert_int_equal(atomic_load(&v->received), 1000);
    assert_int_equal(atomic_load(&v->replied), 1000);
    env_stop(v, CMD_CLOSE);
}

/* ---- bad peers ---- */

static void test_bad_peers(void **state)
{
    struct sp_serve_options opt = {.max_frame = 1 << 20, .handshake_ms = 200, .max_conns = 8};
    struct env *v = env_start(&opt);
    uint32_t id = 0x80000001u;

    /* A REP peer (wrong protocol) and garbage instead of a header. */
    int fd = dial(v->port);
    send_all(fd, REP_HELLO, 8);
    assert_true(closed_within(fd, MUST_COME_MS));
    close(fd);
    fd = dial(v->port);
    send_all(fd, "GET / HTTP/1.1\r\n\r\n", 18);
    assert_true(closed_within(fd, MUST_COME_MS));
    close(fd);

    /* A frame over the limit ends the connection before its body is read. */
    fd = raw_peer(v);
    uint8_t big[8];
    put_be64(big, (1 << 20) + 1);
    send_all(fd, big, 8);
    assert_true(closed_within(fd, MUST_COME_MS));
    close(fd);

    /* Frames without a request id (9 plain words), or under 4 bytes, are dropped; the
     * connection goes on and answers the next good request. */
    fd = raw_peer(v);
    uint32_t hops[9] = {1, 2, 3, 4, 5, 6, 7, 8, 0x80000009u};
    raw_send(fd, hops, 9, "x", 1);
    uint8_t tiny[8 + 3];
    put_be64(tiny, 3);
    memcpy(tiny + 8, "abc", 3);
    send_all(fd, tiny, sizeof tiny);
    uint32_t two[2] = {7, 0x80000002u};
    raw_send(fd, two, 2, "hello", 5);
    raw_expect(fd, two, 2, "hello", 5);
    raw_send(fd, &id, 1, "", 0);
    raw_expect(fd, &id, 1, "", 0);
    close(fd);

    /* A frame cut short by a hang-up. */
    fd = raw_peer(v);
    uint8_t part[8 + 10];
    put_be64(part, 100);
    memset(part + 8, 'E', 10);
    send_all(fd, part, sizeof part);
    close(fd);

    /*
     * A peer that never sends its header is closed after handshake_ms (200): not before
     * (the server's clock starts at the accept, after t0: exact, but for clock steps),
     * and within ten times that on a loaded machine.
     */
    int64_t t0 = mono_ms();
    fd = dial(v->port);
    assert_true(closed_within(fd, MUST_COME_MS));
    int64_t waited = mono_ms() - t0;
    print_message("  closed %lld ms after connecting without a header (handshake_ms 200)\n",
                  (long long)waited);
    assert_true(waited >= 200 - 10);
    assert_true(waited < 10 * 200);
    close(fd);
    assert_int_equal(env_conns_reach(v, 0), 0);

    /*
     * Over max_conns: the ninth connection is closed at once; the others still work. The
     * eight have their SP header, so they are in; the ninth sends its own and must get
     * nothing at all before the close (one let in would get the server's header first).
     */
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = raw_peer(v);
    fd = dial(v->port);
    send_all(fd, REQ_HELLO, 8);
    size_t got = 1;
    assert_true(closed_after(fd, MUST_COME_MS, &got));
    assert_int_equal(got, 0);
    close(fd);
    for (int i = 0; i < 8; i++) {
        raw_send(fds[i], &id, 1, "ok", 2);
        raw_expect(fds[i], &id, 1, "ok", 2);
        close(fds[i]);
    }
    assert_int_equal(env_conns_reach(v, 0), 0);
    env_stop(v, CMD_CLOSE);
}

/* ---- lifetimes ---- */

static void test_disconnect_with_requests_in_flight(void **state)
{
    struct sp_serve_options opt = {0};
    struct env *v = env_start(&opt);
    int fd = raw_peer(v);
    for (uint32_t i = 0; i < 50; i++) {
        uint32_t id = 0x80000000u | i;
        raw_send(fd, &id, 1, "Hold", 4);
    }
    assert_int_equal(wait_count(&v->held_now, 50), 50);
    close(fd);
    assert_int_equal(env_conns_reach(v, 0), 0);
    /* Answered after the client went: the replies are dropped. */
    env_cmd(v, CMD_RELEASE);
    assert_int_equal(atomic_load(&v->held_now), 0);
    /* The server still serves. */
    fd = raw_peer(v);
    uint32_t id = 0x80000042u;
    raw_send(fd, &id, 1, "again", 5);
    raw_expect(fd, &id, 1, "again", 5);
    /* Requests held across quiesce and close, answered after sp_serve_close. */
    raw_send(fd, &id, 1, "Hold", 4);
    assert_int_equal(wait_count(&v->held_now, 1), 1);
    env_cmd(v, CMD_QUIESCE);
    /* Quiesced: the listener is gone and nothing more is read. */
    raw_send(fd, &id, 1, "ignored", 7);
    uint8_t b[16];
    assert_int_equal(recv_exact(fd, b, sizeof b, 200), 0);
    env_stop(v, CMD_CLOSE_THEN_RELEASE);
    close(fd);
}

static void test_more_requests_than_inflight_slots(void **state)
{
    struct sp_serve_options opt = {.max_inflight = 2};
    struct env *v = env_start(&opt);
    int fd = raw_peer(v);
    /* 20 late-answered requests in one write: at most two are handed out at a time. */
    uint8_t buf[20 * 16];
    size_t at = 0;
    for (uint32_t i = 0; i < 20; i++) {
        put_be64(buf + at, 8);
        put_be32(buf + at + 8, 0x80000000u | i);
        memcpy(buf + at + 12, "Late", 4);
        at += 16;
    }
    send_all(fd, buf, at);
    /* Each batch is answered newest first, so the ids come back in some order. */
    int seen[20] = {0};
    for (uint32_t i = 0; i < 20; i++) {
        uint8_t r[16];
        assert_int_equal(recv_exact(fd, r, sizeof r, MUST_COME_MS), sizeof r);
        assert_int_equal(r[7], 8);
        assert_int_equal(r[8], 0x80);
        assert_true(r[11] < 20);
        assert_memory_equal(r + 12, "Late", 4);
        seen[r[11]]++;
    }
    for (int i = 0; i < 20; i++)
        assert_int_equal(seen[i], 1);
    assert_int_equal(atomic_load(&v->received), 20);
    close(fd);
    env_stop(v, CMD_CLOSE);
}

static void test_bind_urls(void **state)
{
    struct cerr e = {0};
    char bound[300];
    int fd = -1;
    assert_int_not_equal(sp_serve_bind("ipc:///tmp/x", 0, -1, &fd, bound, sizeof bound, &e), 0);
    assert_non_null(strstr(e.msg, "expected tcp://HOST:PORT"));
    assert_int_not_equal(sp_serve_bind("tcp://127.0.0.1", 0, -1, &fd, bound, sizeof bound, &e),
                         0);
    assert_non_null(strstr(e.msg, "no port"));
    assert_int_not_equal(
        sp_serve_bind("tcp://127.0.0.1:70000", 0, -1, &fd, bound, sizeof bound, &e), 0);
    /* Two sockets with SO_REUSEPORT share a port; a third without it is refused. */
    int a = -1, b = -1, c = -1;
    assert_int_equal(sp_serve_bind("tcp://127.0.0.1:0", 1, -1, &a, bound, sizeof bound, &e), 0);
    int port = sp_serve_url_port(bound);
    assert_int_equal(sp_serve_bind("tcp://127.0.0.1:0", 1, port, &b, bound, sizeof bound, &e), 0);
    assert_int_equal(sp_serve_url_port(bound), port);
    assert_int_not_equal(sp_serve_bind("tcp://127.0.0.1:0", 0, port, &c, bound, sizeof bound, &e),
                         0);
    assert_non_null(strstr(e.msg, "cannot listen for RPC"));
    close(a);
    close(b);
    assert_int_equal(sp_serve_bind("tcp://*:0", 0, -1, &a, bound, sizeof bound, &e), 0);
    close(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bind_urls),
        cmocka_unit_test(test_nng_req_interop),
        cmocka_unit_test(test_bad_peers),
        cmocka_unit_test(test_disconnect_with_requests_in_flight),
        cmocka_unit_test(test_more_requests_than_inflight_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
