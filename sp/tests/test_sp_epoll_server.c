/*
 * Unit tests for sp_rep, the SP REP server on epoll (sp/sp_epoll_server.c): a
 * real server on 127.0.0.1 with a test handler, spoken to by real NNG REQ
 * sockets (many contexts in flight, replies out of order, messages of several
 * MB, the pending limit) and by raw sockets (exact frames, pipelining, a peer
 * that does not read, bad headers, garbage, truncated and oversized frames,
 * peers that leave with requests in flight). After every bad peer a good NNG
 * client must still be answered.
 *
 * The handler looks at the first body byte: 'E' echoes the body at once on
 * the I/O thread, 'D' hands it to a replier thread that answers in LIFO order
 * (so replies go out of order and from another thread), 'H' holds it until
 * the test answers it, 'S' sleeps on the I/O thread for 100 ms before echoing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
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

#include "sp_epoll_server.h"
#include "sp_test_util.h"

#define MAX_HELD 4096

struct item {
    struct sp_rep_req *req;
    uint8_t *body;
    size_t len;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct item deferred[MAX_HELD], held[MAX_HELD];
static int n_deferred, n_held, replier_stop;
static long n_handled;
static pthread_t replier;
static struct sp_rep *srv;
static const char *url;

static void echo(struct item *it)
{
    uint8_t *buf = malloc(it->len ? it->len : 1);
    memcpy(buf, it->body, it->len);
    free(it->body);
    sp_rep_reply(it->req, buf, it->len);
}

static void handler(void *arg, struct sp_rep_req *req, const uint8_t *body, size_t len)
{
    struct item it = {req, malloc(len ? len : 1), len};
    memcpy(it.body, body, len);
    pthread_mutex_lock(&mu);
    n_handled++;
    if (len && body[0] == 'D' && n_deferred < MAX_HELD) {
        deferred[n_deferred++] = it;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
        return;
    }
    if (len && body[0] == 'H' && n_held < MAX_HELD) {
        held[n_held++] = it;
        pthread_mutex_unlock(&mu);
        return;
    }
    pthread_mutex_unlock(&mu);
    if (len && body[0] == 'S')
        sleep_ms(100); /* keeps the I/O thread away while a peer does its worst */
    echo(&it);
}

static void *replier_main(void *arg)
{
    static struct item batch[MAX_HELD];
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!n_deferred && !replier_stop)
            pthread_cond_wait(&cv, &mu);
        if (!n_deferred)
            break;
        int n = n_deferred;
        memcpy(batch, deferred, (size_t)n * sizeof batch[0]);
        n_deferred = 0;
        pthread_mutex_unlock(&mu);
        for (int i = n - 1; i >= 0; i--)
            echo(&batch[i]);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static int held_count(void)
{
    pthread_mutex_lock(&mu);
    int n = n_held;
    pthread_mutex_unlock(&mu);
    return n;
}

static long handled_count(void)
{
    pthread_mutex_lock(&mu);
    long n = n_handled;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Waits up to 5 s for at least n held requests. */
static int wait_held(int n)
{
    for (int i = 0; i < 5000 && held_count() < n; i++)
        sleep_ms(1);
    return held_count();
}

/* Answers held request i (echo) and removes it, keeping the others in order. */
static void release_held(int i)
{
    pthread_mutex_lock(&mu);
    struct item it = held[i];
    memmove(&held[i], &held[i + 1], (size_t)(n_held - i - 1) * sizeof held[0]);
    n_held--;
    pthread_mutex_unlock(&mu);
    echo(&it);
}

static void start_server(int max_pending, int max_conns, size_t max_message)
{
    struct sp_rep_options o = SP_REP_OPTIONS_DEFAULT;
    struct cerr e = {0};
    o.max_pending = max_pending;
    o.max_conns = max_conns;
    o.max_message = max_message;
    n_deferred = n_held = replier_stop = 0;
    n_handled = 0;
    assert_int_equal(pthread_create(&replier, NULL, replier_main, NULL), 0);
    int rc = sp_rep_start(&srv, "tcp://127.0.0.1:0", &o, handler, NULL, &e);
    if (rc)
        fail_msg("sp_rep_start: %s", e.msg);
    url = sp_rep_url(srv);
    assert_true(strncmp(url, "tcp://127.0.0.1:", 16) == 0);
    assert_true(atoi(url + 16) > 0);
}

static int setup(void **state)
{
    start_server(256, 64, 16u << 20);
    return 0;
}

static int teardown(void **state)
{
    while (held_count())
        release_held(0);
    pthread_mutex_lock(&mu);
    replier_stop = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(replier, NULL);
    sp_rep_stop(srv);
    srv = NULL;
    return 0;
}

/* ---- NNG REQ clients ------------------------------------------------------------------ */

static nng_socket req_open(void)
{
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    assert_int_equal(nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0), 0);
    assert_int_equal(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 10000), 0);
    int rv = nng_dial(s, url, NULL, 0);
    if (rv)
        fail_msg("nng_dial %s: %s", url, nng_strerror(rv));
    return s;
}

static void fill(uint8_t *p, size_t n, uint8_t kind, uint32_t seed)
{
    p[0] = kind;
    for (size_t i = 1; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* One request and its reply on the socket's own context. */
static void roundtrip(nng_socket s, uint8_t kind, size_t n, uint32_t seed)
{
    uint8_t *want = malloc(n), *got = NULL;
    size_t glen = 0;
    fill(want, n, kind, seed);
    assert_int_equal(nng_send(s, want, n, 0), 0);
    int rv = nng_recv(s, &got, &glen, NNG_FLAG_ALLOC);
    if (rv)
        fail_msg("nng_recv: %s", nng_strerror(rv));
    assert_int_equal(glen, n);
    assert_memory_equal(got, want, n);
    nng_free(got, glen);
    free(want);
}

/* A fresh NNG client is answered: the server still serves after whatever came before. */
static void good_client_works(void)
{
    nng_socket s = req_open();
    roundtrip(s, 'E', 100, 1);
    roundtrip(s, 'D', 5000, 2);
    nng_close(s);
}

/*
 * The same, for a server at its connection limit that must give a slot back: the dial
 * does not wait, so NNG keeps redialing (every 100 ms) while the server still turns it
 * away, and the requests wait for the connection (10 s at most, the send and receive
 * timeouts). So it passes once the slot came back, whenever the server gets to it, and
 * fails when it never does.
 */
static void good_client_gets_in(void)
{
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    assert_int_equal(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 10000), 0);
    int rv = nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK);
    if (rv)
        fail_msg("nng_dial %s: %s", url, nng_strerror(rv));
    roundtrip(s, 'E', 100, 1);
    roundtrip(s, 'D', 5000, 2);
    nng_close(s);
}

struct ctxreq {
    nng_ctx ctx;
    nng_aio *aio;
    uint8_t *want;
    size_t len;
};

static void ctx_open(nng_socket s, struct ctxreq *c)
{
    assert_int_equal(nng_ctx_open(&c->ctx, s), 0);
    assert_int_equal(nng_aio_alloc(&c->aio, NULL, NULL), 0);
    nng_aio_set_timeout(c->aio, 10000);
    c->want = NULL;
}

static void ctx_close(struct ctxreq *c)
{
    nng_aio_free(c->aio);
    nng_ctx_close(c->ctx);
    free(c->want);
}

static void ctx_send(struct ctxreq *c, uint8_t kind, size_t n, uint32_t seed)
{
    nng_msg *m;
    free(c->want);
    c->want = malloc(n);
    c->len = n;
    fill(c->want, n, kind, seed);
    assert_int_equal(nng_msg_alloc(&m, 0), 0);
    assert_int_equal(nng_msg_append(m, c->want, n), 0);
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
}

static void ctx_wait_sent(struct ctxreq *c)
{
    nng_aio_wait(c->aio);
    int rv = nng_aio_result(c->aio);
    if (rv)
        fail_msg("context send: %s", nng_strerror(rv));
}

static void ctx_recv(struct ctxreq *c) { nng_ctx_recv(c->ctx, c->aio); }

static void ctx_check_reply(struct ctxreq *c)
{
    nng_aio_wait(c->aio);
    int rv = nng_aio_result(c->aio);
    if (rv)
        fail_msg("context receive: %s", nng_strerror(rv));
    nng_msg *m = nng_aio_get_msg(c->aio);
    assert_int_equal(nng_msg_len(m), c->len);
    assert_memory_equal(nng_msg_body(m), c->want, c->len);
    nng_msg_free(m);
}

static void test_nng_echo(void **state)
{
    nng_socket s = req_open();
    for (uint32_t i = 0; i < 50; i++)
        roundtrip(s, i % 2 ? 'E' : 'D', 1 + i * 37, i);
    nng_close(s);
    assert_int_equal(handled_count(), 50);
}

/* Three contexts' requests are held, then answered last to first. */
static void test_nng_replies_out_of_order(void **state)
{
    nng_socket s = req_open();
    struct ctxreq c[3];
    for (int i = 0; i < 3; i++) {
        ctx_open(s, &c[i]);
        ctx_send(&c[i], 'H', 64 + (size_t)i, (uint32_t)i + 10);
        ctx_wait_sent(&c[i]);
    }
    assert_int_equal(wait_held(3), 3);
    for (int i = 0; i < 3; i++)
        ctx_recv(&c[i]);
    /* Held in arrival order; each context must get its own reply. */
    for (int i = 2; i >= 0; i--) {
        for (int k = 0; k < 3; k++) {
            pthread_mutex_lock(&mu);
            int match = held[k].len == c[i].len;
            pthread_mutex_unlock(&mu);
            if (match) {
                release_held(k);
                break;
            }
        }
        ctx_check_reply(&c[i]);
    }
    for (int i = 0; i < 3; i++)
        ctx_close(&c[i]);
    nng_close(s);
}

/* 64 contexts on two sockets, many rounds, answered out of order from another thread. */
static void test_nng_many_in_flight(void **state)
{
    enum { NCTX = 32, ROUNDS = 30 };
    nng_socket s[2] = {req_open(), req_open()};
    struct ctxreq c[2 * NCTX];
    for (int i = 0; i < 2 * NCTX; i++)
        ctx_open(s[i % 2], &c[i]);
    uint32_t seed = 7;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < 2 * NCTX; i++) {
            seed = seed * 2654435761u + 1;
            ctx_send(&c[i], i % 3 ? 'D' : 'E', 1 + seed % 40000, seed);
        }
        for (int i = 0; i < 2 * NCTX; i++) {
            ctx_wait_sent(&c[i]);
            ctx_recv(&c[i]);
        }
        for (int i = 0; i < 2 * NCTX; i++)
            ctx_check_reply(&c[i]);
    }
    for (int i = 0; i < 2 * NCTX; i++)
        ctx_close(&c[i]);
    nng_close(s[0]);
    nng_close(s[1]);
    assert_int_equal(handled_count(), 2 * NCTX * ROUNDS);
}

/* Messages of several MB both ways, from the I/O thread and from the replier. */
static void test_nng_large_messages(void **state)
{
    nng_socket s = req_open();
    roundtrip(s, 'E', 3u << 20, 1);
    roundtrip(s, 'D', (9u << 20) + 13, 2);
    struct ctxreq c[4];
    for (int i = 0; i < 4; i++) {
        ctx_open(s, &c[i]);
        ctx_send(&c[i], i % 2 ? 'D' : 'E', (2u << 20) + (size_t)i * 4099, (uint32_t)i);
    }
    for (int i = 0; i < 4; i++) {
        ctx_wait_sent(&c[i]);
        ctx_recv(&c[i]);
    }
    for (int i = 0; i < 4; i++) {
        ctx_check_reply(&c[i]);
        ctx_close(&c[i]);
    }
    nng_close(s);
}

/* At the pending limit the server stops reading; requests wait, none is lost. */
static void test_pending_limit(void **state)
{
    teardown(state);
    start_server(4, 64, 1u << 20);
    enum { N = 10 };
    nng_socket s = req_open();
    struct ctxreq c[N];
    for (int i = 0; i < N; i++) {
        ctx_open(s, &c[i]);
        ctx_send(&c[i], 'H', 100 + (size_t)i, (uint32_t)i);
    }
    for (int i = 0; i < N; i++) {
        ctx_wait_sent(&c[i]);
        ctx_recv(&c[i]);
    }
    assert_int_equal(wait_held(4), 4);
    sleep_ms(100);
    assert_int_equal(held_count(), 4);
    int answered = 0;
    while (answered < N) {
        release_held(0);
        answered++;
        int expect = N - answered < 4 ? N - answered : 4;
        assert_int_equal(wait_held(expect), expect);
        sleep_ms(5);
        assert_true(held_count() <= 4);
    }
    for (int i = 0; i < N; i++) {
        ctx_check_reply(&c[i]);
        ctx_close(&c[i]);
    }
    nng_close(s);
    assert_int_equal(handled_count(), N);
}

/* ---- raw sockets ---------------------------------------------------------------------- */

/* Connects to the server; rcvbuf > 0 shrinks the receive window first. */
static int raw_connect_buf(int rcvbuf)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(url + 16))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static int raw_connect(void) { return raw_connect_buf(0); }

static void raw_write(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        b += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes; returns fewer only at end of stream or on an error. */
static size_t raw_read(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (uint8_t *)p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static const uint8_t req_header[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
static const uint8_t rep_header[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};

static void expect_rep_header(int fd)
{
    uint8_t got[8];
    assert_int_equal(raw_read(fd, got, 8), 8);
    assert_memory_equal(got, rep_header, 8);
}

/*
 * A raw connection the server admitted (its SP header came): one turned away because
 * the server has not yet seen an earlier peer leave is closed at once, and is tried
 * again, for 10 s at most. For tests that need a slot, not tests of the limit itself.
 */
static int raw_connect_admitted(void)
{
    for (int i = 0; i < 1000; i++) {
        uint8_t got[8];
        int fd = raw_connect();
        if (raw_read(fd, got, 8) == 8) {
            assert_memory_equal(got, rep_header, 8);
            return fd;
        }
        close(fd);
        sleep_ms(10);
    }
    fail_msg("the server admitted no connection for 10 s");
    return -1;
}

/* True when the server closes the connection (end of stream or reset) within 10 s. */
static int closed_by_server(int fd)
{
    uint8_t b[256];
    for (;;) {
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return 1;
        if (r < 0 && errno != EINTR)
            return 0; /* timed out */
    }
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Writes a frame: length, the backtrace words, the body. Returns its size. */
static size_t frame(uint8_t *out, const uint32_t *bt, int nbt, const uint8_t *body, size_t n)
{
    put64(out, (uint64_t)nbt * 4 + n);
    for (int i = 0; i < nbt; i++)
        put32(out + 8 + 4 * i, bt[i]);
    memcpy(out + 8 + 4 * nbt, body, n);
    return 8 + 4 * (size_t)nbt + n;
}

/* Reads one reply frame and checks it carries backtrace bt and body. */
static void expect_reply(int fd, const uint32_t *bt, int nbt, const uint8_t *body, size_t n)
{
    uint8_t hdr[8], *got = malloc(4 * (size_t)nbt + n + 1), *want = malloc(4 * (size_t)nbt + n + 1);
    assert_int_equal(raw_read(fd, hdr, 8), 8);
    assert_int_equal(get64(hdr), 4 * (uint64_t)nbt + n);
    assert_int_equal(raw_read(fd, got, 4 * (size_t)nbt + n), 4 * (size_t)nbt + n);
    for (int i = 0; i < nbt; i++)
        put32(want + 4 * i, bt[i]);
    memcpy(want + 4 * nbt, body, n);
    assert_memory_equal(got, want, 4 * (size_t)nbt + n);
    free(got);
    free(want);
}

/* Exact bytes: 200 requests in one write, with a hop word before the ID and malformed
 * frames in between, which are dropped without closing the connection. */
static void test_raw_pipelined_frames(void **state)
{
    enum { N = 200 };
    uint8_t *out = malloc(N * 600 + 1000), body[512];
    size_t len = 0;
    int fd = raw_connect();
    memcpy(out, req_header, 8);
    len = 8;
    for (uint32_t i = 0; i < N; i++) {
        uint32_t bt[2] = {7, 0x80000000u | i};
        fill(body, 1 + i % 500, 'E', i);
        len += frame(out + len, bt, 2, body, 1 + i % 500);
        if (i == 50) {
            /* Shorter than one word. */
            put64(out + len, 3);
            memcpy(out + len + 8, "abc", 3);
            len += 11;
        }
        if (i == 100) {
            /* Nine words, none with the top bit set. */
            uint32_t bad[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
            len += frame(out + len, bad, 9, body, 10);
        }
    }
    raw_write(fd, out, len);
    expect_rep_header(fd);
    for (uint32_t i = 0; i < N; i++) {
        uint32_t bt[2] = {7, 0x80000000u | i};
        fill(body, 1 + i % 500, 'E', i);
        expect_reply(fd, bt, 2, body, 1 + i % 500);
    }
    close(fd);
    free(out);
    assert_int_equal(handled_count(), N);
    good_client_works();
}

/* What the slow-reader test sends under each request ID. */
static void slow_body(uint32_t id, uint8_t *kind, size_t *n, uint32_t *seed)
{
    if (id < 100) {
        *kind = 'E', *n = (1u << 20) - id, *seed = id;
    } else if (id < 1000) {
        *kind = 'H', *n = 1000 + (id - 100), *seed = id - 100;
    } else {
        *kind = 'D', *n = 1 + ((id - 1000) * 37) % 3000, *seed = id - 1000;
    }
}

struct reader {
    int fd, frames, ok, in_order;
};

/* Reads reply frames and checks each body against its ID; the E and H replies must come
 * first, in the order they were made. */
static void *reader_main(void *arg)
{
    struct reader *r = arg;
    uint8_t hdr[12], *got = malloc(1u << 20), *want = malloc(1u << 20);
    uint32_t order[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 103, 102, 101, 100};
    r->in_order = 1;
    for (int i = 0; i < r->frames; i++) {
        uint8_t kind;
        size_t n;
        uint32_t seed;
        if (raw_read(r->fd, hdr, 12) != 12)
            break;
        uint32_t id = ((uint32_t)hdr[8] << 24 | (uint32_t)hdr[9] << 16 | (uint32_t)hdr[10] << 8 |
                       hdr[11]) & 0x7fffffffu;
        slow_body(id, &kind, &n, &seed);
        if (get64(hdr) != n + 4 || raw_read(r->fd, got, n) != n)
            break;
        fill(want, n, kind, seed);
        if (memcmp(got, want, n) != 0)
            break;
        if (i < (int)(sizeof order / sizeof order[0]) && id != order[i])
            r->in_order = 0;
        r->ok++;
    }
    free(got);
    free(want);
    return NULL;
}

/* A peer that sends much and reads nothing: replies queue and reach it once it reads,
 * intact and in the order they were made. While it drains them, more replies come from
 * the replier thread and must not cut into a frame already half sent. */
static void test_raw_slow_reader(void **state)
{
    enum { NE = 16, NH = 4, ND = 300 };
    uint8_t *body = malloc(1u << 20), *f = malloc((1u << 20) + 16), kind;
    size_t n;
    uint32_t seed;
    int fd = raw_connect();
    raw_write(fd, req_header, 8);
    expect_rep_header(fd);
    for (uint32_t id = 0; id < NE + NH; id++) {
        uint32_t w = id < NE ? id : 100 + id - NE, bt = 0x80000000u | w;
        slow_body(w, &kind, &n, &seed);
        fill(body, n, kind, seed);
        raw_write(fd, f, frame(f, &bt, 1, body, n));
    }
    /* Held ones answered now, while the echoed replies are still queued ahead of them. */
    assert_int_equal(wait_held(NH), NH);
    for (int i = NH - 1; i >= 0; i--)
        release_held(i);
    struct reader rd = {.fd = fd, .frames = NE + NH + ND};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader_main, &rd), 0);
    for (uint32_t j = 0; j < ND; j++) {
        uint32_t bt = 0x80000000u | (1000 + j);
        slow_body(1000 + j, &kind, &n, &seed);
        fill(body, n, kind, seed);
        raw_write(fd, f, frame(f, &bt, 1, body, n));
        if (j % 20 == 0)
            sleep_ms(1);
    }
    pthread_join(th, NULL);
    assert_int_equal(rd.ok, NE + NH + ND);
    assert_true(rd.in_order);
    close(fd);
    free(body);
    free(f);
    good_client_works();
}

static void bad_peer(const void *bytes, size_t n, int expect_close)
{
    long before = handled_count();
    int fd = raw_connect();
    raw_write(fd, bytes, n);
    if (expect_close) {
        assert_true(closed_by_server(fd));
    }
    close(fd);
    sleep_ms(20);
    assert_int_equal(handled_count(), before);
    good_client_works();
}

static void test_bad_peers(void **state)
{
    uint8_t b[64];
    /* A REP peer (protocol 49) instead of REQ. */
    const uint8_t rep[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};
    bad_peer(rep, 8, 1);
    /* Some other protocol (PAIR, 16). */
    const uint8_t pair[8] = {0, 'S', 'P', 0, 0, 0x10, 0, 0};
    bad_peer(pair, 8, 1);
    /* Reserved header bytes set. */
    const uint8_t resv[8] = {0, 'S', 'P', 0, 0, 0x30, 1, 0};
    bad_peer(resv, 8, 1);
    /* Not SP at all. */
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    bad_peer(http, strlen(http), 1);
    /* A frame announced above the limit, and the largest length there is. */
    memcpy(b, req_header, 8);
    put64(b + 8, (16u << 20) + 1);
    bad_peer(b, 16, 1);
    put64(b + 8, UINT64_MAX);
    bad_peer(b, 16, 1);
    /* A truncated frame, then the peer goes away. */
    put64(b + 8, 100);
    put32(b + 16, 0x80000001u);
    memcpy(b + 20, "Etrunc", 6);
    bad_peer(b, 26, 0);
    /* A header cut short. */
    bad_peer(req_header, 5, 0);
    /* Random bytes. */
    uint32_t seed = 99;
    for (size_t i = 0; i < sizeof b; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (uint8_t)(seed >> 16);
    }
    bad_peer(b, sizeof b, 1);
}

/* A peer leaves with requests in flight; the replies that come later are dropped. */
static void test_disconnect_in_flight(void **state)
{
    teardown(state);
    start_server(4, 64, 1u << 20);
    uint8_t f[64];
    int fd = raw_connect();
    raw_write(fd, req_header, 8);
    for (uint32_t i = 0; i < 3; i++) {
        uint32_t id = 0x80000000u | i;
        raw_write(fd, f, frame(f, &id, 1, (const uint8_t *)"Hheld", 5));
    }
    assert_int_equal(wait_held(3), 3);
    /* One answered while the connection is still open, the rest after it closed. */
    release_held(0);
    close(fd);
    sleep_ms(50);
    release_held(0);
    release_held(0);
    /* The slots came back: four more can be held at once. */
    nng_socket s = req_open();
    struct ctxreq c[4];
    for (int i = 0; i < 4; i++) {
        ctx_open(s, &c[i]);
        ctx_send(&c[i], 'H', 10, (uint32_t)i);
        ctx_wait_sent(&c[i]);
        ctx_recv(&c[i]);
    }
    assert_int_equal(wait_held(4), 4);
    while (held_count()) {
        /* Any order: each context checks its own. */
        release_held(held_count() - 1);
    }
    for (int i = 0; i < 4; i++) {
        ctx_check_reply(&c[i]);
        ctx_close(&c[i]);
    }
    nng_close(s);
    good_client_works();
}

/* Requests still held when the server stops are answered afterwards without harm. */
static void test_reply_after_stop(void **state)
{
    uint8_t f[64];
    int fd = raw_connect();
    raw_write(fd, req_header, 8);
    for (uint32_t i = 0; i < 2; i++) {
        uint32_t id = 0x80000000u | i;
        raw_write(fd, f, frame(f, &id, 1, (const uint8_t *)"Hlate", 5));
    }
    assert_int_equal(wait_held(2), 2);
    sp_rep_stop(srv);
    assert_true(closed_by_server(fd));
    close(fd);
    release_held(1);
    release_held(0);
    /* The teardown stops a fresh server. */
    struct sp_rep_options o = SP_REP_OPTIONS_DEFAULT;
    struct cerr e = {0};
    assert_int_equal(sp_rep_start(&srv, "tcp://127.0.0.1:0", &o, handler, NULL, &e), CORRAL_OK);
}

struct stopper {
    struct sp_rep *s;
};

static void *stop_main(void *arg)
{
    sp_rep_stop(((struct stopper *)arg)->s);
    return NULL;
}

/* A large reply still queued when the server stops reaches a peer that reads slowly. */
static void test_stop_flushes_queued_replies(void **state)
{
    enum { SZ = 8 << 20 };
    uint8_t *body = malloc(SZ), *f = malloc(SZ + 16);
    uint32_t id = 0x80000005u;
    int fd = raw_connect_buf(4096);
    raw_write(fd, req_header, 8);
    fill(body, SZ, 'E', 5);
    raw_write(fd, f, frame(f, &id, 1, body, SZ));
    for (int i = 0; i < 5000 && handled_count() < 1; i++)
        sleep_ms(1);
    assert_int_equal(handled_count(), 1);
    struct stopper st = {srv};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stop_main, &st), 0);
    expect_rep_header(fd);
    expect_reply(fd, &id, 1, body, SZ);
    assert_true(closed_by_server(fd));
    pthread_join(th, NULL);
    close(fd);
    free(body);
    free(f);
    struct sp_rep_options o = SP_REP_OPTIONS_DEFAULT;
    struct cerr e = {0};
    assert_int_equal(sp_rep_start(&srv, "tcp://127.0.0.1:0", &o, handler, NULL, &e), CORRAL_OK);
}

static void test_connection_limit(void **state)
{
    teardown(state);
    start_server(16, 2, 1u << 20);
    int a = raw_connect(), b = raw_connect();
    expect_rep_header(a);
    expect_rep_header(b);
    int c = raw_connect();
    assert_true(closed_by_server(c));
    close(c);
    close(a);
    /* One slot is free again (once the server has seen a leave). */
    good_client_gets_in();
    close(b);
    /* Peers that send part of a frame (or a whole one) and close at once give their slot
     * back too, even when the end of stream comes with their last bytes. */
    teardown(state);
    start_server(16, 2, 1u << 20);
    for (int i = 0; i < 4; i++) {
        uint8_t f[64], sf[64];
        uint32_t id = 0x80000000u;
        size_t n = frame(f + 8, &id, 1, (const uint8_t *)"Equit", 5);
        memcpy(f, req_header, 8);
        memcpy(sf, req_header, 8);
        size_t sn = 8 + frame(sf + 8, &id, 1, (const uint8_t *)"Ssleep", 6);
        /* The slots of the previous round come back once the server has seen them go. */
        a = raw_connect_admitted();
        raw_write(a, f, 8);
        /* While b's request keeps the I/O thread asleep, a's bytes (a whole frame or part
         * of one) and its end of stream arrive together. */
        b = raw_connect_admitted();
        raw_write(b, sf, sn);
        sleep_ms(20);
        raw_write(a, f + 8, i % 2 ? n : n - 2);
        close(a);
        expect_reply(b, &id, 1, (const uint8_t *)"Ssleep", 6);
        /* With b still open, a good client only gets in if a's slot came back. */
        good_client_gets_in();
        close(b);
    }
}

static void test_urls(void **state)
{
    struct sp_rep_options o = SP_REP_OPTIONS_DEFAULT;
    struct cerr e = {0};
    struct sp_rep *s = NULL;
    assert_int_equal(sp_rep_start(&s, "inproc://replica", &o, handler, NULL, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "'inproc://replica' is not supported: expected tcp://HOST:PORT"));
    assert_null(s);
    assert_int_equal(sp_rep_start(&s, "tcp://127.0.0.1", &o, handler, NULL, &e), CORRAL_EINVAL);
    assert_int_equal(sp_rep_start(&s, "tcp://127.0.0.1:65536", &o, handler, NULL, &e),
                     CORRAL_EINVAL);
    assert_int_equal(sp_rep_start(&s, "tcp://127.0.0.1:-1", &o, handler, NULL, &e), CORRAL_EINVAL);
    assert_int_equal(sp_rep_start(&s, "tcp://[::1:0", &o, handler, NULL, &e), CORRAL_EINVAL);
    /* The address of the running server is taken. */
    assert_int_equal(sp_rep_start(&s, url, &o, handler, NULL, &e), CORRAL_EUNAVAIL);
    assert_non_null(strstr(e.msg, "in use"));
    /* Wildcards and names. */
    assert_int_equal(sp_rep_start(&s, "tcp://*:0", &o, handler, NULL, &e), CORRAL_OK);
    assert_true(strncmp(sp_rep_url(s), "tcp://0.0.0.0:", 14) == 0);
    sp_rep_stop(s);
    assert_int_equal(sp_rep_start(&s, "tcp://localhost:0", &o, handler, NULL, &e), CORRAL_OK);
    sp_rep_stop(s);
    if (sp_rep_start(&s, "tcp://[::1]:0", &o, handler, NULL, &e) == CORRAL_OK) {
        assert_true(strncmp(sp_rep_url(s), "tcp://[::1]:", 12) == 0);
        nng_socket c;
        uint8_t *got = NULL;
        size_t glen = 0;
        assert_int_equal(nng_req0_open(&c), 0);
        assert_int_equal(nng_dial(c, sp_rep_url(s), NULL, 0), 0);
        assert_int_equal(nng_send(c, "Ev6", 3, 0), 0);
        assert_int_equal(nng_recv(c, &got, &glen, NNG_FLAG_ALLOC), 0);
        assert_int_equal(glen, 3);
        nng_free(got, glen);
        nng_close(c);
        sp_rep_stop(s);
    } else {
        printf("IPv6 loopback unavailable (%s): that case is skipped\n", e.msg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nng_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nng_replies_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nng_many_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nng_large_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_pipelined_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_slow_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_peers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_after_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_flushes_queued_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_urls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
