/*
 * Tests of the router's DNS discovery (router/dns.h) without a resolver: numeric
 * hosts resolve locally, so nothing here leaves the machine.
 *
 * - dns://HOST:PORT is parsed (names, addresses, [IPv6]) and malformed ones are
 *   refused with what was expected;
 * - a resolved address becomes tcp://A.B.C.D:PORT, an IPv6 one tcp://[V6]:PORT;
 * - the first round (dns_resolve_now) fills the replica table with entries whose
 *   source is the watch, and the refreshes on the loop (dns_start) keep it without
 *   bumping the generation while the answer stays the same; dns_close ends it
 *   with the loop left empty.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "dns.h"

static void test_parse(void **state)
{
    (void)state;
    char host[256];
    int port = 0;
    struct cerr e = {0};
    assert_int_equal(dns_parse_url("dns://digits.default.svc:9101", host, sizeof host, &port, &e),
                     CORRAL_OK);
    assert_string_equal(host, "digits.default.svc");
    assert_int_equal(port, 9101);
    assert_int_equal(dns_parse_url("dns://[::1]:80", host, sizeof host, &port, &e), CORRAL_OK);
    assert_string_equal(host, "::1");
    static const char *const bad[] = {"tcp://a:1", "dns://a", "dns://a:0", "dns://a:65536",
                                      "dns://:80", "dns://a b:80", "dns://::1:80", "dns://a:8x",
                                      "dns:///x:80", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (dns_parse_url(bad[i], host, sizeof host, &port, &e) != CORRAL_EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_non_null(strstr(e.msg, "dns://"));
    }
}

static void test_replica_url(void **state)
{
    (void)state;
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    struct sockaddr other = {.sa_family = AF_UNIX};
    char url[64];
    inet_pton(AF_INET, "198.18.0.11", &a4.sin_addr);
    inet_pton(AF_INET6, "fd00::1:2", &a6.sin6_addr);
    assert_int_equal(dns_replica_url((struct sockaddr *)&a4, 9101, url, sizeof url), 0);
    assert_string_equal(url, "tcp://198.18.0.11:9101");
    assert_int_equal(dns_replica_url((struct sockaddr *)&a6, 9101, url, sizeof url), 0);
    assert_string_equal(url, "tcp://[fd00::1:2]:9101");
    assert_int_equal(dns_replica_url(&other, 9101, url, sizeof url), -1);
    assert_int_equal(dns_replica_url((struct sockaddr *)&a4, 9101, url, 10), -1);
}

static int changes;
static void on_changed(void *arg)
{
    (void)arg;
    changes++;
}

static void on_stop(uv_timer_t *t)
{
    dns_close(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_rounds_fill_the_table(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct membership *m = NULL;
    struct dns *d = NULL;
    struct cerr e = {0};
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(membership_new(&m, 1, &e), CORRAL_OK);
    assert_int_equal(dns_new(&d, &loop, m, 100, on_changed, NULL, &e), CORRAL_OK);
    assert_int_equal(dns_watch(d, "digits", "dns://127.0.0.1:9101", &e), CORRAL_OK);
    assert_int_equal(dns_watch(d, "digits", "dns://[::1]:9101", &e), CORRAL_OK);
    assert_int_equal(dns_watch(d, "digits", "dns://[::1]:9101", &e), CORRAL_EINVAL);
    assert_int_equal(dns_watch(d, "digits", "tcp://[::1]:9101", &e), CORRAL_EINVAL);
    dns_resolve_now(d);
    struct membership_snapshot s;
    assert_int_equal(membership_snapshot(m, &s, &e), CORRAL_OK);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.entries[0].url, "tcp://127.0.0.1:9101");
    assert_string_equal(s.entries[0].source, "digits=dns://127.0.0.1:9101");
    assert_string_equal(s.entries[1].url, "tcp://[::1]:9101");
    uint64_t g = s.generation;
    membership_snapshot_free(&s);
    assert_int_equal(changes, 2);
    /* Refreshes of the same answers change nothing. */
    dns_start(d);
    uv_timer_t stop;
    uv_timer_init(&loop, &stop);
    stop.data = d;
    uv_timer_start(&stop, on_stop, 450, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(membership_generation(m), g);
    assert_int_equal(changes, 2);
    assert_int_equal(uv_loop_close(&loop), 0);
    membership_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_replica_url),
        cmocka_unit_test(test_rounds_fill_the_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
