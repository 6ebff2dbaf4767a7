/*
 * Router metrics: counters and latency histograms every router thread feeds,
 * rendered as Prometheus text (exposition format 0.0.4) for GET /metrics.
 *
 * Usage: metrics_new(&m, n_threads) once; each router thread records into its
 * own shard (metrics_request, metrics_event, metrics_inflight with its thread
 * index), so threads never contend on one lock. metrics_render merges every
 * shard (locking each in turn) and appends the router's families;
 * metrics_render_replicas appends the replica table of one thread's upstream
 * and the replicas' own statistics (batch sizes, padding, queue, rejections)
 * gathered with upstream_stats. Both may be called from any router thread.
 *
 * Cardinality: label values come from configured model names and the versions
 * replicas report; callers pass "" for a model the router does not know, so a
 * client cannot grow the series set by naming random models.
 */
#ifndef CORRAL_ROUTER_METRICS_H
#define CORRAL_ROUTER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"
#include "upstream.h"

struct metrics;

int metrics_new(struct metrics **out, unsigned shards, struct cerr *e);
void metrics_free(struct metrics *m);

/*
 * One finished request. protocol is "http" or "rpc"; status the HTTP status
 * answered (for RPC the HTTP status of its corral code). upstream_ns is 0 when
 * the request never reached a replica; queue_us/compute_us are the replica's
 * timings for it, or -1 when the replica did not report them.
 */
void metrics_request(struct metrics *m, unsigned shard, const char *model, const char *version,
                     const char *protocol, int status, uint64_t total_ns, uint64_t upstream_ns,
                     int64_t queue_us, int64_t compute_us);
void metrics_inflight(struct metrics *m, unsigned shard, int delta);
void metrics_event(struct metrics *m, unsigned shard, const char *model, const char *replica,
                   enum upstream_event ev);
/* Milliseconds since the epoch of the last successful inference of model/version (0: none). */
uint64_t metrics_last_inference_ms(struct metrics *m, const char *model, const char *version);

void metrics_render(struct metrics *m, struct buf *b);
void metrics_render_replicas(const struct upstream *u, const struct upstream_stats *st, size_t n,
                             struct buf *b);

/* Appends `s` escaped as a Prometheus label value (backslash, quote, newline). */
void metrics_label(struct buf *b, const char *s);

#endif
