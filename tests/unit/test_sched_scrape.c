/*
 * Unit tests for the admin API's scraper of the router's metrics (scheduler/scrape.c):
 * the parser on hand-built metric texts (the router's own format, and hostile ones:
 * huge and non-finite numbers, missing braces, unterminated labels, bad escapes, NUL
 * bytes, lines over the limit, too many models and buckets, random bytes), the p99
 * arithmetic against values worked out by hand, the traffic between two samples
 * (rate, p99, a counter reset, a model that appears), and the non-blocking client
 * against real loopback servers (two scrapes, an answer over the size limit, one that
 * never comes, a 500, a refused connection, the idle rule).
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
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

#include "httphead.h"
#include "scrape.h"

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct sched_scrape_sample parse(const char *text)
{
    struct sched_scrape_sample s = {0};
    assert_int_equal(sched_scrape_parse(text, strlen(text), &s), 0);
    return s;
}

static const struct sched_scrape_model *find(const struct sched_scrape_sample *s, const char *n)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->m[i].name, n) == 0)
            return &s->m[i];
    return NULL;
}

/* ---- the parser ---------------------------------------------------------------------- */

/* What the router writes (router/metrics.c), two versions of one model, an unknown
 * model counted under model="", and families this parser does not read. */
static const char k_router_text[] =
    "# HELP corral_router_requests_total Requests answered by the router.\n"
    "# TYPE corral_router_requests_total counter\n"
    "corral_router_requests_total{model=\"digits\",version=\"1\",protocol=\"http\",code=\"200\"} 10\n"
    "corral_router_requests_total{model=\"digits\",version=\"1\",protocol=\"http\",code=\"400\"} 2\n"
    "corral_router_requests_total{model=\"digits\",version=\"\",protocol=\"rpc\",code=\"200\"} 3\n"
    "corral_router_requests_total{model=\"\",version=\"\",protocol=\"http\",code=\"404\"} 5\n"
    "corral_router_requests_total{model=\"iris\",version=\"2\",protocol=\"http\",code=\"200\"} 7\n"
    "# TYPE corral_router_request_duration_seconds histogram\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"1\",le=\"0.001\"} 4\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"1\",le=\"0.0025\"} 9\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"1\",le=\"+Inf\"} 12\n"
    "corral_router_request_duration_seconds_sum{model=\"digits\",version=\"1\"} 0.02\n"
    "corral_router_request_duration_seconds_count{model=\"digits\",version=\"1\"} 12\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"\",le=\"0.001\"} 1\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"\",le=\"0.0025\"} 2\n"
    "corral_router_request_duration_seconds_bucket{model=\"digits\",version=\"\",le=\"+Inf\"} 3\n"
    "corral_router_upstream_duration_seconds_bucket{model=\"digits\",version=\"1\",le=\"+Inf\"} 99\n"
    "corral_router_requests_total_extra{model=\"digits\"} 1000\n"
    "corral_router_inflight_requests 3\n";

static void test_parse_router_text(void **state)
{
    struct sched_scrape_sample s = parse(k_router_text);
    assert_int_equal(s.n, 2); /* model="" is not a model */
    assert_int_equal(s.skipped_lines, 0);
    const struct sched_scrape_model *d = find(&s, "digits"), *i = find(&s, "iris");
    assert_non_null(d);
    assert_non_null(i);
    assert_true(d->requests == 15);  /* every version, protocol and code */
    assert_true(i->requests == 7);
    assert_int_equal(i->n_le, 0);
    assert_int_equal(d->n_le, 3);
    assert_true(d->le[0] == 0.001 && d->le[1] == 0.0025 && isinf(d->le[2]));
    assert_true(d->cum[0] == 5 && d->cum[1] == 11 && d->cum[2] == 15); /* versions summed */
    sched_scrape_sample_free(&s);
}

static void test_parse_formats(void **state)
{
    /* CRLF, a timestamp, a trailing comma, escapes in a name, buckets out of order, no
     * newline at the end of the text. */
    struct sched_scrape_sample s = parse(
        "corral_router_requests_total{model=\"a\",code=\"200\"} 4 1700000000000\r\n"
        "corral_router_requests_total{code=\"200\",model=\"a\",} 1.5e1\n"
        "corral_router_requests_total{model=\"q\\\"\\\\x\\n\"} 2\n"
        "corral_router_request_duration_seconds_bucket{le=\"+Inf\",model=\"a\"} 8\n"
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"0.5\"} 6\n"
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"1e-1\"} 2");
    assert_int_equal(s.skipped_lines, 0);
    assert_int_equal(s.n, 2);
    assert_true(find(&s, "a")->requests == 19);
    assert_non_null(find(&s, "q\"\\x\n"));
    const struct sched_scrape_model *a = find(&s, "a");
    assert_int_equal(a->n_le, 3);
    assert_true(a->le[0] == 0.1 && a->le[1] == 0.5 && isinf(a->le[2]));
    assert_true(a->cum[0] == 2 && a->cum[1] == 6 && a->cum[2] == 8);
    sched_scrape_sample_free(&s);
}

/* Each line alone is skipped and counted; the good line after it still counts. */
static void test_parse_hostile_lines(void **state)
{
    static const char *const bad[] = {
        /* numbers */
        "corral_router_requests_total{model=\"a\"} 1e400",
        "corral_router_requests_total{model=\"a\"} 1e300",
        "corral_router_requests_total{model=\"a\"} 10000000000000000",
        "corral_router_requests_total{model=\"a\"} -1",
        "corral_router_requests_total{model=\"a\"} NaN",
        "corral_router_requests_total{model=\"a\"} +Inf",
        "corral_router_requests_total{model=\"a\"} "
        "1234567890123456789012345678901234567890123456789012345678901234567890",
        "corral_router_requests_total{model=\"a\"} 12abc",
        "corral_router_requests_total{model=\"a\"} ",
        "corral_router_requests_total{model=\"a\"}",
        "corral_router_requests_total{model=\"a\"} 5 17000x",
        "corral_router_requests_total{model=\"a\"}5",
        /* braces and labels */
        "corral_router_requests_total{model=\"a\" 5",
        "corral_router_requests_total{model=\"a\",code=\"200\" 5",
        "corral_router_requests_total{model=\"a",
        "corral_router_requests_total{model=\"a} 5",
        "corral_router_requests_total{model=\"a\\",
        "corral_router_requests_total{model=a} 5",
        "corral_router_requests_total{model} 5",
        "corral_router_requests_total{=\"a\"} 5",
        "corral_router_requests_total{model=\"a\" code=\"1\"} 5",
        "corral_router_requests_total{model=\"a\",,code=\"1\"} 5",
        "corral_router_requests_total{model=\"a\\x\"} 5",
        "corral_router_requests_total{model=\"a\",model=\"b\"} 5",
        "corral_router_requests_total{code=\"200\"} 5",
        "corral_router_requests_total{",
        /* buckets */
        "corral_router_request_duration_seconds_bucket{model=\"a\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"abc\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"-1\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"NaN\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"1e999\"} 5",
        "corral_router_request_duration_seconds_bucket{model=\"a\",le=\"1\",le=\"2\"} 5",
        "corral_router_request_duration_seconds_bucket{le=\"1\"} 5",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[1024];
        snprintf(text, sizeof text, "%s\ncorral_router_requests_total{model=\"ok\"} 1\n", bad[i]);
        struct sched_scrape_sample s = parse(text);
        if (s.skipped_lines != 1 || s.n != 1 || strcmp(s.m[0].name, "ok") != 0 ||
            s.m[0].requests != 1)
            fail_msg("line %zu (%s): skipped %zu, %zu models", i, bad[i], s.skipped_lines, s.n);
        sched_scrape_sample_free(&s);
    }
}

static void test_parse_nul_and_long_names(void **state)
{
    /* A NUL inside a label value: the line is skipped, the text goes on. */
    static const char nul[] = "corral_router_requests_total{model=\"a\0b\"} 5\n"
                              "corral_router_requests_total{model=\"ok\"} 1\n";
    struct sched_scrape_sample s = {0};
    assert_int_equal(sched_scrape_parse(nul, sizeof nul - 1, &s), 0);
    assert_int_equal(s.skipped_lines, 1);
    assert_int_equal(s.n, 1);
    /* A model name no config can hold (SCHED_NAME_MAX bytes and more). */
    char text[1024], name[SCHED_NAME_MAX + 1];
    memset(name, 'm', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(text, sizeof text, "corral_router_requests_total{model=\"%s\"} 5\n", name);
    assert_int_equal(sched_scrape_parse(text, strlen(text), &s), 0);
    assert_int_equal(s.skipped_lines, 1);
    assert_int_equal(s.n, 0);
    /* One byte shorter fits. */
    name[sizeof name - 2] = '\0';
    snprintf(text, sizeof text, "corral_router_requests_total{model=\"%s\"} 5\n", name);
    assert_int_equal(sched_scrape_parse(text, strlen(text), &s), 0);
    assert_int_equal(s.skipped_lines, 0);
    assert_int_equal(s.n, 1);
    sched_scrape_sample_free(&s);
}

/* A line of exactly SCHED_SCRAPE_LINE_MAX bytes is read; one byte more is skipped,
 * without the rest of the text going astray. */
static void test_parse_line_limit(void **state)
{
    const char *head = "corral_router_requests_total{model=\"a\",pad=\"";
    const char *tail = "\"} 1";
    size_t fixed = strlen(head) + strlen(tail);
    for (int over = 0; over <= 1; over++) {
        size_t len = SCHED_SCRAPE_LINE_MAX + (size_t)over;
        char *text = malloc(len + 64);
        assert_non_null(text);
        strcpy(text, head);
        memset(text + strlen(head), 'x', len - fixed);
        strcpy(text + strlen(head) + (len - fixed), tail);
        assert_int_equal(strlen(text), len);
        strcat(text, "\ncorral_router_requests_total{model=\"b\"} 2\n");
        struct sched_scrape_sample s = parse(text);
        assert_int_equal(s.skipped_lines, (size_t)over);
        assert_int_equal(s.n, over ? 1 : 2);
        assert_non_null(find(&s, "b"));
        sched_scrape_sample_free(&s);
        free(text);
    }
    /* A megabyte-long line with no newline at all. */
    size_t big = 1 << 20;
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, '{', big);
    memcpy(text, "corral_router_requests_total{model=\"", 36);
    text[big] = '\0';
    struct sched_scrape_sample s = parse(text);
    assert_int_equal(s.skipped_lines, 1);
    assert_int_equal(s.n, 0);
    sched_scrape_sample_free(&s);
    free(text);
}

static void test_parse_limits(void **state)
{
    size_t cap = 400 * 80 + 80 * 100;
    char *text = malloc(cap), *p = text;
    assert_non_null(text);
    for (int i = 0; i < SCHED_SCRAPE_MODELS_MAX + 44; i++)
        p += sprintf(p, "corral_router_requests_total{model=\"m%d\"} %d\n", i, i);
    for (int i = 0; i < SCHED_SCRAPE_BUCKETS_MAX + 6; i++)
        p += sprintf(p, "corral_router_request_duration_seconds_bucket{model=\"m0\",le=\"%d\"} %d\n",
                     i, i);
    assert_true((size_t)(p - text) < cap);
    struct sched_scrape_sample s = parse(text);
    assert_int_equal(s.n, SCHED_SCRAPE_MODELS_MAX);
    assert_int_equal(s.skipped_models, 44);
    assert_int_equal(s.skipped_buckets, 6);
    assert_int_equal(s.m[0].n_le, SCHED_SCRAPE_BUCKETS_MAX);
    assert_true(s.m[SCHED_SCRAPE_MODELS_MAX - 1].requests == SCHED_SCRAPE_MODELS_MAX - 1);
    /* Parsing again into the same sample starts it over. */
    assert_int_equal(sched_scrape_parse("", 0, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.skipped_models, 0);
    sched_scrape_sample_free(&s);
    free(text);
}

/* Random bytes, and random cuts of the router's text: nothing read out of bounds (the
 * sanitizer build checks), nothing kept that is not a model with a finite count. */
static void test_parse_random(void **state)
{
    unsigned seed = 12345;
    size_t rlen = strlen(k_router_text);
    for (int round = 0; round < 2000; round++) {
        char buf[512];
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        if (round % 2) {
            for (size_t i = 0; i < n; i++)
                buf[i] = (char)(rand_r(&seed) % 256);
        } else {
            /* A window of the real text, some bytes flipped. */
            size_t from = (size_t)rand_r(&seed) % rlen;
            n = n > rlen - from ? rlen - from : n;
            memcpy(buf, k_router_text + from, n);
            for (int f = 0; f < 3 && n; f++)
                buf[(size_t)rand_r(&seed) % n] = (char)(rand_r(&seed) % 256);
        }
        char *exact = malloc(n ? n : 1); /* no byte after the text to lean on */
        assert_non_null(exact);
        memcpy(exact, buf, n);
        struct sched_scrape_sample s = {0};
        assert_int_equal(sched_scrape_parse(exact, n, &s), 0);
        for (size_t i = 0; i < s.n; i++) {
            assert_true(s.m[i].name[0] != '\0');
            assert_true(isfinite(s.m[i].requests) && s.m[i].requests >= 0);
            for (size_t k = 1; k < s.m[i].n_le; k++)
                assert_true(s.m[i].le[k - 1] < s.m[i].le[k]);
        }
        sched_scrape_sample_free(&s);
        free(exact);
    }
}

/* ---- the p99 arithmetic -------------------------------------------------------------- */

static void test_quantile(void **state)
{
    double q;
    /* 100 observations in (1 ms, 2.5 ms]: rank 99 is 99 % into that bucket. */
    const double le1[] = {0.001, 0.0025, 0.005, INFINITY}, d1[] = {0, 100, 100, 100};
    assert_int_equal(sched_scrape_quantile(le1, d1, 4, 0.99, &q), 0);
    assert_float_equal(q, 0.001 + 0.0015 * 0.99, 1e-12);
    /* The lowest bucket starts at 0. */
    const double le2[] = {0.01, INFINITY}, d2[] = {50, 50};
    assert_int_equal(sched_scrape_quantile(le2, d2, 2, 0.99, &q), 0);
    assert_float_equal(q, 0.01 * 49.5 / 50, 1e-12);
    /* 990 fast, 10 slow: rank 990 is the top of the fast bucket. */
    const double le3[] = {0.001, 0.1, INFINITY}, d3[] = {990, 1000, 1000};
    assert_int_equal(sched_scrape_quantile(le3, d3, 3, 0.99, &q), 0);
    assert_float_equal(q, 0.001, 1e-12);
    /* 980 fast, 20 in (1 ms, 100 ms]: rank 990 is half way into it. */
    const double d4[] = {980, 1000, 1000};
    assert_int_equal(sched_scrape_quantile(le3, d4, 3, 0.99, &q), 0);
    assert_float_equal(q, 0.001 + 0.099 * 0.5, 1e-12);
    /* Beyond the highest finite bound: that bound. */
    const double le5[] = {0.1, INFINITY}, d5[] = {90, 100};
    assert_int_equal(sched_scrape_quantile(le5, d5, 2, 0.99, &q), 0);
    assert_float_equal(q, 0.1, 1e-12);
    /* Only +Inf, nothing observed, nothing at all, a q out of range: no answer. */
    const double le6[] = {INFINITY}, d6[] = {10};
    assert_int_equal(sched_scrape_quantile(le6, d6, 1, 0.99, &q), -1);
    const double d7[] = {0, 0, 0, 0};
    assert_int_equal(sched_scrape_quantile(le1, d7, 4, 0.99, &q), -1);
    assert_int_equal(sched_scrape_quantile(le1, d1, 0, 0.99, &q), -1);
    assert_int_equal(sched_scrape_quantile(le1, d1, 4, 1.0, &q), -1);
    assert_int_equal(sched_scrape_quantile(le1, d1, 4, 0.0, &q), -1);
    /* Cumulative counts that go down (a torn or hostile text): the running maximum. */
    const double le8[] = {1, 2, INFINITY}, d8[] = {10, 5, 10};
    assert_int_equal(sched_scrape_quantile(le8, d8, 3, 0.99, &q), 0);
    assert_float_equal(q, 0.99, 1e-12);
    /* Counts near 2^53 stay finite and in the bucket. */
    const double d9[] = {0, SCHED_SCRAPE_VALUE_MAX, SCHED_SCRAPE_VALUE_MAX, SCHED_SCRAPE_VALUE_MAX};
    assert_int_equal(sched_scrape_quantile(le1, d9, 4, 0.99, &q), 0);
    assert_true(q > 0.001 && q <= 0.0025);
}

/* ---- traffic between two samples ----------------------------------------------------- */

static json_t *traffic(const char *prev, long t0, const char *cur, long t1, const char *model)
{
    struct sched_scrape sc;
    sched_scrape_init(&sc);
    assert_int_equal(sched_scrape_parse(prev, strlen(prev), &sc.s[0]), 0);
    assert_int_equal(sched_scrape_parse(cur, strlen(cur), &sc.s[1]), 0);
    sc.s[0].t_ms = t0;
    sc.s[1].t_ms = t1;
    sc.n_samples = 2;
    json_t *t = sched_scrape_traffic(&sc, model);
    sched_scrape_free(&sc);
    assert_non_null(t);
    return t;
}

#define REQ(m, v) "corral_router_requests_total{model=\"" m "\",code=\"200\"} " v "\n"
#define BKT(m, le, v) \
    "corral_router_request_duration_seconds_bucket{model=\"" m "\",le=\"" le "\"} " v "\n"

static double num(const json_t *t, const char *k)
{
    const json_t *v = json_object_get(t, k);
    assert_true(json_is_number(v));
    return json_number_value(v);
}

static void test_traffic(void **state)
{
    /* 200 requests in 2 s: 100/s; of them 150 under 1 ms, 50 in (1, 2.5] ms: rank 198
     * is 48/50 into the second bucket. */
    json_t *t = traffic(REQ("d", "1000") BKT("d", "0.001", "700") BKT("d", "0.0025", "900")
                            BKT("d", "+Inf", "1000"),
                        10000,
                        REQ("d", "1200") BKT("d", "0.001", "850") BKT("d", "0.0025", "1100")
                            BKT("d", "+Inf", "1200"),
                        12000, "d");
    assert_float_equal(num(t, "rate_rps"), 100.0, 1e-9);
    assert_float_equal(num(t, "window_s"), 2.0, 1e-9);
    assert_float_equal(num(t, "p99_ms"), 1.0 + 1.5 * 48.0 / 50.0, 1e-9);
    json_decref(t);

    /* No request in the window: rate 0, p99 null. */
    t = traffic(REQ("d", "5") BKT("d", "+Inf", "5"), 0, REQ("d", "5") BKT("d", "+Inf", "5"),
                2500, "d");
    assert_float_equal(num(t, "rate_rps"), 0.0, 0);
    assert_float_equal(num(t, "window_s"), 2.5, 1e-9);
    assert_true(json_is_null(json_object_get(t, "p99_ms")));
    json_decref(t);

    /* A model unknown to the router: the same. */
    t = traffic(REQ("d", "5"), 0, REQ("d", "9"), 2000, "other");
    assert_float_equal(num(t, "rate_rps"), 0.0, 0);
    assert_true(json_is_null(json_object_get(t, "p99_ms")));
    json_decref(t);

    /* A model that appeared between the samples counts from zero. */
    t = traffic("", 0, REQ("d", "8") BKT("d", "0.01", "8") BKT("d", "+Inf", "8"), 2000, "d");
    assert_float_equal(num(t, "rate_rps"), 4.0, 1e-9);
    assert_float_equal(num(t, "p99_ms"), 10.0 * 0.99 * 8 / 8, 1e-9);
    json_decref(t);

    /* A restarted router: its counters went down, so they count from zero. */
    t = traffic(REQ("d", "1000") BKT("d", "0.01", "1000") BKT("d", "+Inf", "1000"), 0,
                REQ("d", "30") BKT("d", "0.01", "10") BKT("d", "+Inf", "30"), 3000, "d");
    assert_float_equal(num(t, "rate_rps"), 10.0, 1e-9);
    assert_float_equal(num(t, "p99_ms"), 10.0, 1e-9); /* 20 of 30 beyond 10 ms */
    json_decref(t);

    /* No window (the same instant): null. */
    t = traffic(REQ("d", "1"), 5000, REQ("d", "2"), 5000, "d");
    assert_true(json_is_null(t));
    json_decref(t);

    /* Fewer than two samples: null. */
    struct sched_scrape sc;
    sched_scrape_init(&sc);
    t = sched_scrape_traffic(&sc, "d");
    assert_true(json_is_null(t));
    json_decref(t);
    sched_scrape_free(&sc);
}

/* ---- the client against loopback servers --------------------------------------------- */

enum mode { ANSWER, SILENT, STREAM_BIG };

struct server {
    int fd, port;
    enum mode mode;
    const char *answer; /* ANSWER: written whole, then closed */
    int accepted;
    char request[1024];
    pthread_t t;
};

static void *serve(void *arg)
{
    struct server *sv = arg;
    int c = accept(sv->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    sv->accepted = 1;
    size_t n = 0;
    while (n < sizeof sv->request - 1 && !strstr(sv->request, "\r\n\r\n")) {
        ssize_t got = read(c, sv->request + n, sizeof sv->request - 1 - n);
        if (got <= 0)
            break;
        n += (size_t)got;
        sv->request[n] = '\0';
    }
    if (sv->mode == ANSWER) {
        size_t len = strlen(sv->answer), off = 0;
        while (off < len) {
            ssize_t w = send(c, sv->answer + off, len - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
    } else if (sv->mode == STREAM_BIG) {
        /* No Content-Length: a body that ends at EOF, and does not end. */
        static char chunk[65536];
        memset(chunk, '#', sizeof chunk);
        const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
        if (send(c, head, strlen(head), MSG_NOSIGNAL) > 0)
            while (send(c, chunk, sizeof chunk, MSG_NOSIGNAL) > 0)
                ;
    } else {
        /* Silent until the scraper gives up and closes. */
        char b[64];
        while (read(c, b, sizeof b) > 0)
            ;
    }
    close(c);
    return NULL;
}

static void server_start(struct server *sv, enum mode mode, const char *answer)
{
    memset(sv, 0, sizeof *sv);
    sv->mode = mode;
    sv->answer = answer;
    sv->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(sv->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(sv->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(sv->fd, 4), 0);
    assert_int_equal(getsockname(sv->fd, (struct sockaddr *)&a, &l), 0);
    sv->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&sv->t, NULL, serve, sv), 0);
}

static void server_stop(struct server *sv)
{
    shutdown(sv->fd, SHUT_RDWR); /* an accept still waiting returns */
    pthread_join(sv->t, NULL);
    close(sv->fd);
}

/* Runs one scrape to its end as the admin server would: poll, step. Returns the ms it
 * took. */
static long run_scrape(struct sched_scrape *sc, const char *url)
{
    long t0 = now_ms();
    sched_scrape_wanted(sc, t0);
    assert_true(sched_scrape_due(sc, t0));
    sched_scrape_start(sc, url, t0);
    while (sc->fd >= 0) {
        struct pollfd p;
        assert_true(sched_scrape_pollfd(sc, &p));
        poll(&p, 1, 50);
        sched_scrape_step(sc, now_ms());
        assert_true(now_ms() - t0 < 10000);
    }
    return now_ms() - t0;
}

/* A server of `mode` on loopback, one scrape of it at http://HOST:PORT, the server
stopped; returns the ms the scrape took. */
static long scrape_against(struct sched_scrape *sc, struct server *sv, const char *host,
                           enum mode mode, const char *answer)
{
    char url[64];
    server_start(sv, mode, answer);
    snprintf(url, sizeof url, "http://%s:%d", host, sv->port);
    sc->next_ms = 0;
    long took = run_scrape(sc, url);
    server_stop(sv);
    return took;
}

static void test_client_two_scrapes(void **state)
{
    static const char body1[] = REQ("d", "10") BKT("d", "0.001", "10") BKT("d", "+Inf", "10");
    char a1[512];
    snprintf(a1, sizeof a1, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(body1), body1);
    /* No Content-Length: the body ends at EOF. */
    static const char a2[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                             REQ("d", "30") BKT("d", "0.001", "30") BKT("d", "+Inf", "30");
    struct sched_scrape sc;
    sched_scrape_init(&sc);
    struct server sv;

    scrape_against(&sc, &sv, "127.0.0.1", ANSWER, a1);
    assert_true(strncmp(sv.request, "GET /metrics HTTP/1.1\r\n", 23) == 0);
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", sv.port);
    assert_non_null(strstr(sv.request, host));
    assert_int_equal(sc.n_samples, 1);
    json_t *t = sched_scrape_traffic(&sc, "d");
    assert_true(json_is_null(t)); /* one sample is no window */
    json_decref(t);
    /* Not due again before SCHED_SCRAPE_EVERY_MS. */
    assert_false(sched_scrape_due(&sc, sc.next_ms - 1));
    assert_true(sched_scrape_due(&sc, sc.next_ms));

    usleep(20000);
    scrape_against(&sc, &sv, "localhost", ANSWER, a2); /* dialled as 127.0.0.1 */
    assert_int_equal(sc.n_samples, 2);
    t = sched_scrape_traffic(&sc, "d");
    double w = num(t, "window_s");
    assert_true(w >= 0.02);
    assert_float_equal(num(t, "rate_rps"), 20.0 / w, 1e-6);
    assert_float_equal(num(t, "p99_ms"), 0.99, 1e-9);
    json_decref(t);

    /* Nobody read the status for SCHED_SCRAPE_IDLE_MS: not due, the samples dropped. */
    long later = sc.wanted_ms + SCHED_SCRAPE_IDLE_MS + 1;
    assert_false(sched_scrape_due(&sc, later));
    sched_scrape_step(&sc, later);
    assert_int_equal(sc.n_samples, 0);
    t = sched_scrape_traffic(&sc, "d");
    assert_true(json_is_null(t));
    json_decref(t);
    sched_scrape_free(&sc);
}

static void test_client_failures(void **state)
{
    struct sched_scrape sc;
    sched_scrape_init(&sc);
    struct server sv;
    char url[64];

    /* Never wanted: never due. */
    assert_false(sched_scrape_due(&sc, now_ms()));

    /* An answer announced over the limit, then one streamed past it: both dropped. */
    char big[256];
    snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n" REQ("d", "1"),
             SCHED_SCRAPE_MAX_BYTES + 1);
    scrape_against(&sc, &sv, "127.0.0.1", ANSWER, big);
    assert_int_equal(sc.n_samples, 0);
    long took = scrape_against(&sc, &sv, "127.0.0.1", STREAM_BIG, NULL);
    assert_int_equal(sc.n_samples, 0);
    assert_true(took < SCHED_SCRAPE_DEADLINE_MS); /* cut at the limit, not at the deadline */
    assert_null(sc.in);                           /* its buffer freed */

    /* Not 200, a body cut short of its Content-Length: dropped. */
    scrape_against(&sc, &sv, "127.0.0.1", ANSWER,
                   "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(sc.n_samples, 0);
    scrape_against(&sc, &sv, "127.0.0.1", ANSWER,
                   "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" REQ("d", "1"));
    assert_int_equal(sc.n_samples, 0);

    /* No answer: given up at the deadline (nominally 1 s; the bound is generous). */
    took = scrape_against(&sc, &sv, "127.0.0.1", SILENT, NULL);
    assert_true(sv.accepted);
    assert_int_equal(sc.n_samples, 0);
    assert_true(took >= SCHED_SCRAPE_DEADLINE_MS);
    assert_true(took < 5 * SCHED_SCRAPE_DEADLINE_MS);

    /* A port nobody listens on: refused, no scrape in flight, nothing kept. */
    server_start(&sv, SILENT, NULL);
    int closed = sv.port;
    server_stop(&sv);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", closed);
    sc.next_ms = 0;
    run_scrape(&sc, url);
    assert_int_equal(sc.n_samples, 0);

    /* Addresses that are not dialled: none started, and the next try is scheduled. */
    static const char *const urls[] = {"http://router.example.invalid:8000", "ftp://1.2.3.4:5",
                                       "http://127.0.0.1", "http://127.0.0.1:0",
                                       "http://127.0.0.1:99999", "http://:80", NULL};
    for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
        long t0 = now_ms();
        sc.next_ms = 0;
        sched_scrape_wanted(&sc, t0);
        sched_scrape_start(&sc, urls[i], t0);
        assert_int_equal(sc.fd, -1);
        assert_int_equal(sc.next_ms, t0 + SCHED_SCRAPE_EVERY_MS);
        struct pollfd p;
        assert_false(sched_scrape_pollfd(&sc, &p));
    }
    sched_scrape_free(&sc);
}

/* ---- the header lookup the scraper and the admin server share (httphead.h) --------- */

static void test_http_header(void **state)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "content-length:   42 \t\r\nX-Empty:\r\nX-Long: 0123456789\r\n\r\n"
                               "Body-Header: no\r\n";
    size_t head_len = strstr(head, "\r\n\r\n") + 4 - head;
    char v[8];
    assert_int_equal(httphead_get(head, head_len, "Content-Length", v, sizeof v), 0);
    assert_string_equal(v, "42");
    assert_int_equal(httphead_get(head, head_len, "x-empty", v, sizeof v), 0);
    assert_string_equal(v, "");
    assert_int_equal(httphead_get(head, head_len, "X-Long", v, sizeof v), -1); /* no room */
    assert_int_equal(httphead_get(head, head_len, "Content", v, sizeof v), -1);
    assert_int_equal(httphead_get(head, head_len, "HTTP/1.1 200 OK", v, sizeof v), -1);
    assert_int_equal(httphead_get(head, head_len, "Body-Header", v, sizeof v), -1);
    assert_int_equal(httphead_get(head, sizeof head - 1, "Body-Header", v, sizeof v), 0);
    /* A head cut inside a line, in a buffer with nothing after it. */
    static const char cut[] = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 12";
    char *exact = malloc(sizeof cut - 1);
    assert_non_null(exact);
    memcpy(exact, cut, sizeof cut - 1);
    assert_int_equal(httphead_get(exact, sizeof cut - 1, "Content-Length", v, sizeof v), 0);
    assert_string_equal(v, "12");
    assert_int_equal(httphead_get(exact, sizeof cut - 9, "Content-Length", v, sizeof v), -1);
    assert_int_equal(httphead_get(exact, 0, "Host", v, sizeof v), -1);
    free(exact);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_router_text),
        cmocka_unit_test(test_parse_formats),
        cmocka_unit_test(test_parse_hostile_lines),
        cmocka_unit_test(test_parse_nul_and_long_names),
        cmocka_unit_test(test_parse_line_limit),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test(test_parse_random),
        cmocka_unit_test(test_quantile),
        cmocka_unit_test(test_traffic),
        cmocka_unit_test(test_client_two_scrapes),
        cmocka_unit_test(test_client_failures),
        cmocka_unit_test(test_http_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
