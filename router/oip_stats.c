/*
 * Statistics (OIP's statistics extension, per model or all) and /metrics: both gather
 * what every replica reports, asynchronously, with a short deadline so that a stuck
 * replica cannot hang a scrape, and render it when the last answer (or the deadline)
 * comes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "oip_internal.h"

/* ---- statistics and metrics ---- */

struct gathering {
    struct oip_ctx *ctx;
    struct http_request *req;
    enum oip_route_kind kind;
    char model[OIP_NAME_MAX];
    char version[64];
};

static void put_duration(struct buf *b, const char *name, uint64_t count, uint64_t ns)
{
    buf_printf(b, "\"%s\":{\"count\":%llu,\"ns\":%llu}", name, (unsigned long long)count,
               (unsigned long long)ns);
}

/* One Triton model_stats entry summing the replicas of one model version. */
static void put_model_stats(struct buf *b, struct oip_ctx *ctx, const struct upstream_stats *st,
                            size_t n, const char *model, const char *version)
{
    uint64_t req = 0, ok = 0, batches = 0, rows = 0, q = 0, comp = 0, gat = 0, sca = 0;
    uint64_t real = 0, padded = 0, depth = 0, fail = 0;
    unsigned answered = 0;
    for (size_t i = 0; i < n; i++) {
        const Corral__StatsResponse *s = st[i].stats;
        if (!s || strcmp(st[i].model, model) != 0 || strcmp(st[i].version, version) != 0)
            continue;
        answered++;
        req += s->request_count;
        ok += s->success_count;
        batches += s->batch_count;
        rows += s->batch_rows;
        q += s->queue_time_us;
        comp += s->compute_time_us;
        gat += s->gather_time_us;
        sca += s->scatter_time_us;
        real += s->real_elements;
        padded += s->padded_elements;
        depth += s->queue_depth;
        for (size_t r = 0; r < s->n_rejections; r++)
            fail += s->rejections[r]->count;
    }
    uint64_t last = ctx->metrics ? metrics_last_inference_ms(ctx->metrics, model, version) : 0;
    buf_puts(b, "{\"name\":");
    buf_json_string(b, model, strlen(model));
    buf_puts(b, ",\"version\":");
    buf_json_string(b, version, strlen(version));
    buf_printf(b, ",\"last_inference\":%llu,\"inference_count\":%llu,\"execution_count\":%llu,"
               "\"inference_stats\":{", (unsigned long long)last, (unsigned long long)rows,
               (unsigned long long)batches);
    /* Request-level sums where the batcher keeps them; batch-level ones (compute) otherwise. */
    put_duration(b, "success", ok, (q + comp + gat + sca) * 1000);
    buf_putc(b, ',');
    put_duration(b, "fail", fail, 0);
    buf_putc(b, ',');
    put_duration(b, "queue", ok, q * 1000);
    buf_putc(b, ',');
    put_duration(b, "compute_input", batches, gat * 1000);
    buf_putc(b, ',');
    put_duration(b, "compute_infer", batches, comp * 1000);
    buf_putc(b, ',');
    put_duration(b, "compute_output", batches, sca * 1000);
    buf_putc(b, ',');
    put_duration(b, "cache_hit", 0, 0);
    buf_putc(b, ',');
    put_duration(b, "cache_miss", 0, 0);
    buf_puts(b, "},\"batch_stats\":[");
    /* Batch sizes over all replicas: merge their histograms bin by bin. */
    uint64_t sizes[64];
    uint64_t counts[64];
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        const Corral__StatsResponse *s = st[i].stats;
        if (!s || strcmp(st[i].model, model) != 0 || strcmp(st[i].version, version) != 0)
            continue;
        for (size_t h = 0; h < s->n_batch_size_histogram; h++) {
            const Corral__HistogramBin *bin = s->batch_size_histogram[h];
            size_t k;
            for (k = 0; k < ns; k++)
                if (sizes[k] == bin->size)
                    break;
            if (k == ns) {
                if (ns == 64)
                    continue;
                sizes[ns] = bin->size;
                counts[ns++] = 0;
            }
            counts[k] += bin->count;
        }
    }
    for (size_t k = 0; k < ns; k++) {
        /* Ascending batch size, as Triton lists them. */
        size_t best = k;
        for (size_t j = k + 1; j < ns; j++)
            if (sizes[j] < sizes[best])
                best = j;
        uint64_t ts = sizes[k], tc = counts[k];
        sizes[k] = sizes[best];
        counts[k] = counts[best];
        sizes[best] = ts;
        counts[best] = tc;
        buf_printf(b, "%s{\"batch_size\":%llu,", k ? "," : "", (unsigned long long)sizes[k]);
        put_duration(b, "compute_input", counts[k], 0);
        buf_putc(b, ',');
        put_duration(b, "compute_infer", counts[k], 0);
        buf_putc(b, ',');
        put_duration(b, "compute_output", counts[k], 0);
        buf_putc(b, '}');
    }
    buf_printf(b, "],\"memory_usage\":[],\"corral\":{\"replicas_answered\":%u,"
               "\"requests\":%llu,\"queue_depth\":%llu,\"real_elements\":%llu,"
               "\"padded_elements\":%llu,\"rejections\":{", answered, (unsigned long long)req,
               (unsigned long long)depth, (unsigned long long)real, (unsigned long long)padded);
    /* Rejections by reason, summed; the reasons are the replica's fixed list. */
    char seen[16][32];
    uint64_t cnt[16];
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        const Corral__StatsResponse *s = st[i].stats;
        if (!s || strcmp(st[i].model, model) != 0 || strcmp(st[i].version, version) != 0)
            continue;
        for (size_t r = 0; r < s->n_rejections; r++) {
            const char *reason = s->rejections[r]->reason ? s->rejections[r]->reason : "";
            size_t k;
            for (k = 0; k < nr; k++)
                if (strncmp(seen[k], reason, sizeof seen[k] - 1) == 0)
                    break;
            if (k == nr) {
                if (nr == 16)
                    continue;
                snprintf(seen[nr], sizeof seen[nr], "%s", reason);
                cnt[nr++] = 0;
            }
            cnt[k] += s->rejections[r]->count;
        }
    }
    for (size_t k = 0; k < nr; k++) {
        if (k)
            buf_putc(b, ',');
        buf_json_string(b, seen[k], strlen(seen[k]));
        buf_printf(b, ":%llu", (unsigned long long)cnt[k]);
    }
    buf_puts(b, "}}}");
}

static void stats_done(void *arg, const struct upstream_stats *st, size_t n)
{
    struct gathering *g = arg;
    struct http_request *req = g->req;
    struct oip_ctx *ctx = g->ctx;
    struct buf b = {0};
    if (g->kind == OIP_METRICS) {
        if (ctx->metrics)
            metrics_render(ctx->metrics, &b);
        metrics_render_replicas(ctx->up, st, n, &b);
        size_t len = 0;
        char *body = buf_steal(&b, &len);
        if (!body)
            oip_respond_error(req, 500, NULL, "out of memory rendering the metrics");
        else
            http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, body, len);
        free(g);
        return;
    }
    /* One entry per model version at least one replica answered for. */
    buf_puts(&b, "{\"model_stats\":[");
    size_t entries = 0;
    const char *why = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!st[i].stats) {
            why = st[i].error;
            continue;
        }
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            if (st[j].stats && strcmp(st[j].model, st[i].model) == 0 &&
                strcmp(st[j].version, st[i].version) == 0)
                dup = 1;
        if (dup)
            continue;
        if (entries++)
            buf_putc(&b, ',');
        put_model_stats(&b, ctx, st, n, st[i].model, st[i].version);
    }
    buf_puts(&b, "]}");
    if (entries == 0 && g->kind == OIP_MODEL_STATS) {
        buf_free(&b);
        oip_respond_error(req, 503, NULL, "no replica of model '%s'%s%s answered the statistics "
                      "request (%s)", g->model, g->version[0] ? " version " : "", g->version,
                      why ? why : "none is configured");
    } else {
        oip_respond_json(req, 200, &b, NULL);
    }
    free(g);
}

void oip_handle_gather(struct oip_ctx *ctx, struct http_request *req,
                          const struct oip_route *rt)
{
    struct cerr e = {0};
    if (rt->kind == OIP_MODEL_STATS && !oip_check_model(ctx, req, rt))
        return;
    struct gathering *g = calloc(1, sizeof *g);
    if (!g) {
        oip_respond_error(req, 500, NULL, "out of memory gathering statistics");
        return;
    }
    g->ctx = ctx;
    g->req = req;
    g->kind = rt->kind;
    snprintf(g->model, sizeof g->model, "%s", rt->model);
    snprintf(g->version, sizeof g->version, "%s", rt->version);
    const char *model = rt->kind == OIP_MODEL_STATS ? g->model : NULL;
    /* A scrape must not hang on a stuck replica: statistics get a short deadline. */
    if (upstream_stats(ctx->up, model, g->version, 1000, stats_done, g, &e)) {
        free(g);
        oip_respond_cerr(req, &e);
    }
}
