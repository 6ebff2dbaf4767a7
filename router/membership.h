/*
 * membership: the router's replica table, shared by its threads.
 *
 * Usage: membership_new(&m, threads). The control endpoint (any thread)
 * changes the table with membership_add(), membership_set_draining(),
 * membership_remove(), membership_set_canary() and membership_clear_canary();
 * discovery (router/dns.h) with membership_sync_source(), on its own entries;
 * each change bumps the table's generation and returns it. Every router
 * thread, told of a change, copies the table with membership_snapshot(),
 * applies the copy to its own upstream (upstream_sync, upstream_sync_canaries)
 * and reports membership_applied(m, thread, generation). membership_acked() is
 * the generation that every thread has applied: a change is in force, in the
 * whole router, once the acknowledged generation reaches it (the rule that
 * lets a scheduler stop a replica safely).
 *
 * The table holds replicas and canary splits. Replicas are unique by URL. A
 * canary split, at most one per model, sends `percent` of the model's requests
 * that name no version to replicas of `version` and the rest to its other
 * replicas; it may name a version (or a model) that no replica in the table
 * serves yet, so a canary can be set before its replica is added. A change
 * that is refused (a URL given twice, an unknown URL, a malformed name, a
 * percent outside 0..100, clearing a split that is not set) leaves the table
 * and its generation as they were. All functions are thread-safe (one mutex,
 * never held in a callback); a snapshot is the caller's copy, freed with
 * membership_snapshot_free().
 */
#ifndef CORRAL_ROUTER_MEMBERSHIP_H
#define CORRAL_ROUTER_MEMBERSHIP_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define MEMBER_MODEL_MAX 256
#define MEMBER_VERSION_MAX 64
#define MEMBER_URL_MAX 256
#define MEMBER_SOURCE_MAX 300 /* "dns://HOST:PORT" of a discovered replica */

struct membership;

struct membership_entry {
    char model[MEMBER_MODEL_MAX];
    char version[MEMBER_VERSION_MAX]; /* "" for whatever the replica serves */
    char url[MEMBER_URL_MAX];
    int draining;        /* no new work: drain_requested or vanished */
    /* Who put the entry there: "" for --replica and the control endpoint, the
     * discovery's name for one that found it ("dns://HOST:PORT"). */
    char source[MEMBER_SOURCE_MAX];
    int drain_requested; /* membership_set_draining */
    int vanished;        /* its source no longer lists it (membership_sync_source) */
};

/* A model's canary split: `percent` (0..100) of its unversioned requests go to `version`. */
struct membership_canary {
    char model[MEMBER_MODEL_MAX];
    char version[MEMBER_VERSION_MAX]; /* never "" */
    int percent;
};

struct membership_snapshot {
    struct membership_entry *entries;
    size_t n;
    struct membership_canary *canaries;
    size_t n_canaries;
    uint64_t generation;
};

int membership_new(struct membership **out, unsigned threads, struct cerr *e);
void membership_free(struct membership *m);

/* Each returns CORRAL_OK with *generation set to the table's new generation. */
int membership_add(struct membership *m, const char *model, const char *version, const char *url,
                   uint64_t *generation, struct cerr *e);
int membership_set_draining(struct membership *m, const char *url, int draining,
                            uint64_t *generation, struct cerr *e);
int membership_remove(struct membership *m, const char *url, uint64_t *generation,
                      struct cerr *e);
/*
 * Makes the entries of `source` (not "") match the n URLs, each a replica of
 * `model` (checked as membership_add checks them; a bad one refuses the whole
 * call and changes nothing). A URL of the list not in the table is added with
 * that source. An entry of the source that the list no longer names is marked
 * draining (vanished) at the first call that misses it, and removed at the next
 * call that still misses it, so a replica that leaves gets no new work for a
 * round before it goes (and what it holds is answered either way); one named
 * again before that is active again. Entries of other sources (--replica, the
 * control endpoint) are never touched: a listed URL that one of them holds is
 * left to it and counted in *skipped. The generation is bumped once when
 * anything changed (*changed 1), not at all otherwise.
 */
int membership_sync_source(struct membership *m, const char *source, const char *model,
                           const char *const *urls, size_t n, int *changed, size_t *skipped,
                           uint64_t *generation, struct cerr *e);
/* Sets (or replaces) the model's canary split. */
int membership_set_canary(struct membership *m, const char *model, const char *version,
                          int percent, uint64_t *generation, struct cerr *e);
/* CORRAL_ENOTFOUND when the model has no split. */
int membership_clear_canary(struct membership *m, const char *model, uint64_t *generation,
                            struct cerr *e);

int membership_snapshot(struct membership *m, struct membership_snapshot *out, struct cerr *e);
void membership_snapshot_free(struct membership_snapshot *s);

/* Router thread `thread` has applied the table up to `generation`. */
void membership_applied(struct membership *m, unsigned thread, uint64_t generation);
uint64_t membership_generation(struct membership *m);
/* The generation every thread has applied. */
uint64_t membership_acked(struct membership *m);

#endif
