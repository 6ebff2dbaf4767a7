/*
 * Tests of the router's replica table (router/membership.h).
 *
 * - Replicas: add, drain, remove, each bumping the generation; refusals (a URL
 *   given twice, an unknown URL, a malformed name or URL) leave the table and
 *   its generation as they were.
 * - Canary splits: set (also for a model or version with no replica), replaced
 *   by a second set, cleared; each bumps the generation and shows in a
 *   snapshot; clearing a split that is not set is CORRAL_ENOTFOUND and
 *   refusals (percent outside 0..100, empty or malformed names) change nothing.
 * - A snapshot is a copy: later changes do not reach it.
 * - Acknowledgement: a generation is acknowledged once every thread applied it.
 * - A discovery's own entries (membership_sync_source): added, drained for a round
 *   and then removed when they leave, active again when they come back; entries of
 *   --replica, the control endpoint or another source are never touched, and a
 *   control endpoint's drain outlives the discovery's; refusals change nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "membership.h"

#define URL_A "tcp://127.0.0.1:9101"
#define URL_B "tcp://127.0.0.1:9102"

static struct membership *table(unsigned threads)
{
    struct membership *m = NULL;
    struct cerr e = {0};
    assert_int_equal(membership_new(&m, threads, &e), CORRAL_OK);
    return m;
}

/* A snapshot of m, checked to be taken. */
static struct membership_snapshot snap(struct membership *m)
{
    struct membership_snapshot s;
    struct cerr e = {0};
    assert_int_equal(membership_snapshot(m, &s, &e), CORRAL_OK);
    assert_non_null(s.entries);
    assert_non_null(s.canaries);
    return s;
}

/* Adds a replica that must be accepted, as the table's generation `g`. */
static void add_ok(struct membership *m, const char *version, const char *url, uint64_t g)
{
    uint64_t got = 0;
    struct cerr e = {0};
    assert_int_equal(membership_add(m, "digits", version, url, &got, &e), CORRAL_OK);
    assert_int_equal(got, g);
}

/* Sets a split that must be accepted, with the generation after `before`. */
static void set_ok(struct membership *m, const char *model, const char *version, int percent,
                   uint64_t before)
{
    uint64_t g = 0;
    struct cerr e = {0};
    assert_int_equal(membership_set_canary(m, model, version, percent, &g, &e), CORRAL_OK);
    assert_int_equal(g, before + 1);
    assert_int_equal(membership_generation(m), before + 1);
}

/* A split that must be refused with `code` and a message holding `words`, changing nothing. */
static void set_refused(struct membership *m, const char *model, const char *version, int percent,
                        const char *words)
{
    uint64_t g = 777, before = membership_generation(m);
    struct membership_snapshot s0 = snap(m), s1;
    struct cerr e = {0};
    assert_int_equal(membership_set_canary(m, model, version, percent, &g, &e), CORRAL_EINVAL);
    assert_int_equal(e.code, CORRAL_EINVAL);
    if (!strstr(e.msg, words))
        fail_msg("refusal '%s' does not say '%s'", e.msg, words);
    assert_int_equal(g, 777);
    assert_int_equal(membership_generation(m), before);
    s1 = snap(m);
    assert_int_equal(s1.n_canaries, s0.n_canaries);
    if (s0.n_canaries)
        assert_memory_equal(s1.canaries, s0.canaries, s0.n_canaries * sizeof *s0.canaries);
    membership_snapshot_free(&s0);
    membership_snapshot_free(&s1);
}

static void test_replicas(void **state)
{
    (void)state;
    struct membership *m = table(1);
    add_ok(m, "1", URL_A, 1);
    add_ok(m, "", URL_B, 2);
    struct cerr e = {0};
    uint64_t g = 2;
    assert_int_equal(membership_add(m, "digits", "1", URL_A, &g, &e), CORRAL_EINVAL);
    assert_int_equal(membership_add(m, "di/gits", "1", "tcp://127.0.0.1:9103", &g, &e),
                     CORRAL_EINVAL);
    assert_int_equal(membership_add(m, "digits", "1", "http://x:1", &g, &e), CORRAL_EINVAL);
    assert_int_equal(membership_set_draining(m, "tcp://127.0.0.1:1", 1, &g, &e),
                     CORRAL_ENOTFOUND);
    assert_int_equal(membership_remove(m, "tcp://127.0.0.1:1", &g, &e), CORRAL_ENOTFOUND);
    assert_int_equal(g, 2);
    assert_int_equal(membership_generation(m), 2);
    assert_int_equal(membership_set_draining(m, URL_A, 1, &g, &e), CORRAL_OK);
    assert_int_equal(g, 3);
    struct membership_snapshot s = snap(m);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.generation, 3);
    assert_string_equal(s.entries[0].url, URL_A);
    assert_true(s.entries[0].draining);
    assert_string_equal(s.entries[1].version, "");
    assert_int_equal(s.n_canaries, 0);
    membership_snapshot_free(&s);
    assert_int_equal(membership_remove(m, URL_A, &g, &e), CORRAL_OK);
    assert_int_equal(g, 4);
    s = snap(m);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.entries[0].url, URL_B);
    membership_snapshot_free(&s);
    membership_free(m);
}

static void test_canary_set_replace_clear(void **state)
{
    (void)state;
    struct membership *m = table(1);
    add_ok(m, "1", URL_A, 1);
    /* No replica of version 2, nor any of model "other": set all the same. */
    set_ok(m, "digits", "2", 10, 1);
    set_ok(m, "other", "7", 0, 2);
    struct membership_snapshot s = snap(m);
    assert_int_equal(s.generation, 3);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.n_canaries, 2);
    assert_string_equal(s.canaries[0].model, "digits");
    assert_string_equal(s.canaries[0].version, "2");
    assert_int_equal(s.canaries[0].percent, 10);
    assert_string_equal(s.canaries[1].model, "other");
    assert_int_equal(s.canaries[1].percent, 0);
    /* A second set replaces the model's split: still one per model. */
    set_ok(m, "digits", "3", 100, 3);
    struct membership_snapshot s2 = snap(m);
    assert_int_equal(s2.n_canaries, 2);
    assert_string_equal(s2.canaries[0].version, "3");
    assert_int_equal(s2.canaries[0].percent, 100);
    /* The first snapshot is a copy: the change did not reach it. */
    assert_string_equal(s.canaries[0].version, "2");
    assert_int_equal(s.canaries[0].percent, 10);
    membership_snapshot_free(&s);
    membership_snapshot_free(&s2);
    assert_null(s.canaries);
    assert_int_equal(s.n_canaries, 0);

    struct cerr e = {0};
    uint64_t g = 0;
    assert_int_equal(membership_clear_canary(m, "digits", &g, &e), CORRAL_OK);
    assert_int_equal(g, 5);
    s = snap(m);
    assert_int_equal(s.n_canaries, 1);
    assert_string_equal(s.canaries[0].model, "other");
    assert_int_equal(s.n, 1); /* the replicas are untouched */
    membership_snapshot_free(&s);
    /* Clearing again: not found, nothing changes. */
    g = 777;
    assert_int_equal(membership_clear_canary(m, "digits", &g, &e), CORRAL_ENOTFOUND);
    assert_non_null(strstr(e.msg, "'digits' has no canary split"));
    assert_int_equal(g, 777);
    assert_int_equal(membership_generation(m), 5);
    assert_int_equal(membership_clear_canary(m, "other", &g, &e), CORRAL_OK);
    s = snap(m);
    assert_int_equal(s.n_canaries, 0);
    assert_int_equal(s.generation, 6);
    membership_snapshot_free(&s);
    membership_free(m);
}

static void test_canary_refusals(void **state)
{
    (void)state;
    struct membership *m = table(1);
    char long_version[MEMBER_VERSION_MAX + 1];
    memset(long_version, '9', MEMBER_VERSION_MAX);
    long_version[MEMBER_VERSION_MAX] = 0;
    set_refused(m, "digits", "2", 101, "percent: expected an integer from 0 to 100, got 101");
    set_refused(m, "digits", "2", -1, "got -1");
    set_refused(m, "digits", "", 10, "version is empty");
    set_refused(m, "digits", NULL, 10, "version is empty");
    set_refused(m, "", "2", 10, "model is empty");
    set_refused(m, "di/gits", "2", 10, "not allowed");
    set_refused(m, "digits", "2 b", 10, "not allowed");
    set_refused(m, "digits", long_version, 10, "bytes long");
    set_ok(m, "digits", "2", 50, 0);
    /* Refusals leave a split that is set as it was. */
    set_refused(m, "digits", "3", 150, "got 150");
    struct membership_snapshot s = snap(m);
    assert_int_equal(s.n_canaries, 1);
    assert_string_equal(s.canaries[0].version, "2");
    assert_int_equal(s.canaries[0].percent, 50);
    membership_snapshot_free(&s);
    struct cerr e = {0};
    uint64_t g = 0;
    assert_int_equal(membership_clear_canary(m, "nothing", &g, &e), CORRAL_ENOTFOUND);
    assert_int_equal(membership_clear_canary(m, NULL, &g, &e), CORRAL_ENOTFOUND);
    assert_int_equal(membership_generation(m), 1);
    membership_free(m);
}

static void test_canary_many_models(void **state)
{
    (void)state;
    struct membership *m = table(1);
    char name[32];
    for (int i = 0; i < 40; i++) { /* past the first growth of the array */
        snprintf(name, sizeof name, "model%d", i);
        set_ok(m, name, "2", i % 101, (uint64_t)i);
    }
    struct cerr e = {0};
    uint64_t g = 0;
    assert_int_equal(membership_clear_canary(m, "model0", &g, &e), CORRAL_OK);
    struct membership_snapshot s = snap(m);
    assert_int_equal(s.n_canaries, 39);
    for (size_t i = 0; i < s.n_canaries; i++) {
        snprintf(name, sizeof name, "model%zu", i + 1);
        assert_string_equal(s.canaries[i].model, name);
        assert_int_equal(s.canaries[i].percent, (int)(i + 1));
    }
    membership_snapshot_free(&s);
    membership_free(m);
}

static void test_canary_acknowledged_by_every_thread(void **state)
{
    (void)state;
    struct membership *m = table(2);
    set_ok(m, "digits", "2", 10, 0);
    assert_int_equal(membership_acked(m), 0);
    membership_applied(m, 0, 1);
    assert_int_equal(membership_acked(m), 0);
    membership_applied(m, 1, 1);
    assert_int_equal(membership_acked(m), 1);
    struct cerr e = {0};
    uint64_t g = 0;
    assert_int_equal(membership_clear_canary(m, "digits", &g, &e), CORRAL_OK);
    membership_applied(m, 1, g);
    assert_int_equal(membership_acked(m), 1);
    membership_applied(m, 0, g);
    assert_int_equal(membership_acked(m), 2);
    membership_free(m);
}

/* Syncs SRC's entries of model digits to the given URLs; checks *changed. */
static void sync_ok(struct membership *m, const char *src, const char *const *urls, size_t n,
                    int want_changed, size_t want_skipped)
{
    int changed = -1;
    size_t skipped = 99;
    uint64_t g = 0, before = membership_generation(m);
    struct cerr e = {0};
    assert_int_equal(membership_sync_source(m, src, "digits", urls, n, &changed, &skipped, &g, &e),
                     CORRAL_OK);
    assert_int_equal(changed, want_changed);
    assert_int_equal(skipped, want_skipped);
    assert_int_equal(g, before + (want_changed ? 1 : 0));
}

/* The entry of `url` in a snapshot, NULL if none. */
static const struct membership_entry *entry(const struct membership_snapshot *s, const char *url)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->entries[i].url, url) == 0)
            return &s->entries[i];
    return NULL;
}

#define URL_C "tcp://[::1]:9101"
#define SRC "digits=dns://svc:9101"

static void test_sync_source(void **state)
{
    (void)state;
    struct membership *m = table(1);
    const char *ab[] = {URL_A, URL_B}, *b[] = {URL_B}, *bc[] = {URL_B, URL_C, URL_C};
    sync_ok(m, SRC, ab, 2, 1, 0);
    sync_ok(m, SRC, ab, 2, 0, 0); /* the same answer again: nothing to do */
    struct membership_snapshot s = snap(m);
    assert_int_equal(s.n, 2);
    assert_string_equal(entry(&s, URL_A)->source, SRC);
    assert_false(entry(&s, URL_A)->draining);
    membership_snapshot_free(&s);
    /* A leaves: draining for one round, then removed. */
    sync_ok(m, SRC, b, 1, 1, 0);
    s = snap(m);
    assert_true(entry(&s, URL_A)->draining);
    assert_true(entry(&s, URL_A)->vanished);
    assert_false(entry(&s, URL_B)->draining);
    membership_snapshot_free(&s);
    sync_ok(m, SRC, b, 1, 1, 0);
    s = snap(m);
    assert_null(entry(&s, URL_A));
    assert_int_equal(s.n, 1);
    membership_snapshot_free(&s);
    sync_ok(m, SRC, b, 1, 0, 0);
    /* Back before the second round: active again. A duplicate is one entry. */
    sync_ok(m, SRC, bc, 3, 1, 0);
    sync_ok(m, SRC, b, 1, 1, 0);
    sync_ok(m, SRC, bc, 3, 1, 0);
    s = snap(m);
    assert_int_equal(s.n, 2);
    assert_false(entry(&s, URL_C)->draining);
    membership_snapshot_free(&s);
    membership_free(m);
}

static void test_sync_source_leaves_others_alone(void **state)
{
    (void)state;
    struct membership *m = table(1);
    uint64_t g = 0;
    struct cerr e = {0};
    add_ok(m, "", URL_A, 1); /* --replica, or the control endpoint */
    const char *ab[] = {URL_A, URL_B}, *x[] = {"tcp://127.0.0.1:1"}, *ax[] = {URL_A, x[0]};
    sync_ok(m, SRC, ab, 2, 1, 1);
    struct membership_snapshot s = snap(m);
    assert_string_equal(entry(&s, URL_A)->source, "");
    assert_string_equal(entry(&s, URL_B)->source, SRC);
    membership_snapshot_free(&s);
    /* Neither A nor B listed any more: only the source's own entry drains and goes. */
    sync_ok(m, SRC, x, 1, 1, 0);
    sync_ok(m, SRC, x, 1, 1, 0);
    sync_ok(m, SRC, x, 1, 0, 0);
    s = snap(m);
    assert_non_null(entry(&s, URL_A));
    assert_false(entry(&s, URL_A)->draining);
    assert_null(entry(&s, URL_B));
    membership_snapshot_free(&s);
    /* Another source's entries are its own. */
    sync_ok(m, "other=dns://x:1", ax, 2, 0, 2);
    /* A drain asked on the control endpoint outlives the source's coming and going. */
    assert_int_equal(membership_set_draining(m, x[0], 1, &g, &e), CORRAL_OK);
    sync_ok(m, SRC, ab, 2, 1, 1);
    sync_ok(m, SRC, x, 1, 1, 0);
    s = snap(m);
    assert_true(entry(&s, x[0])->draining);
    assert_false(entry(&s, x[0])->vanished);
    assert_true(entry(&s, URL_B)->draining);
    membership_snapshot_free(&s);
    /* Refusals change nothing. */
    const char *bad[] = {URL_B, "http://x:1"};
    int changed = 7;
    size_t skipped = 7;
    uint64_t before = membership_generation(m);
    s = snap(m);
    assert_int_equal(membership_sync_source(m, SRC, "digits", bad, 2, &changed, &skipped, &g, &e),
                     CORRAL_EINVAL);
    assert_int_equal(membership_sync_source(m, "", "digits", ab, 2, &changed, &skipped, &g, &e),
                     CORRAL_EINVAL);
    assert_int_equal(membership_sync_source(m, SRC, "di/gits", ab, 2, &changed, &skipped, &g, &e),
                     CORRAL_EINVAL);
    assert_int_equal(membership_generation(m), before);
    struct membership_snapshot s2 = snap(m);
    assert_int_equal(s2.n, s.n);
    assert_memory_equal(s2.entries, s.entries, s.n * sizeof *s.entries);
    membership_snapshot_free(&s);
    membership_snapshot_free(&s2);
    membership_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replicas),
        cmocka_unit_test(test_canary_set_replace_clear),
        cmocka_unit_test(test_canary_refusals),
        cmocka_unit_test(test_canary_many_models),
        cmocka_unit_test(test_canary_acknowledged_by_every_thread),
        cmocka_unit_test(test_sync_source),
        cmocka_unit_test(test_sync_source_leaves_others_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
