/*
 * OIP endpoint handlers: routing, health, metadata, statistics, metrics and
 * the asynchronous infer path (parse, send to a replica, render the answer
 * when it comes back).
 */
#include "oip.h"

#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "oip_image.h"

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.0.0"
#endif

#define ALLOW_GET "GET, HEAD"
#define ALLOW_POST "POST"

/* ---- routing ---- */

/* Splits the path into at most `max` segments; 0 on an empty segment or too many. */
static int split_path(const char *path, char seg[][OIP_NAME_MAX], int max, int *n)
{
    *n = 0;
    if (path[0] != '/')
        return 0;
    const char *p = path + 1;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (len == 0 || len >= OIP_NAME_MAX || *n >= max)
            return 0;
        memcpy(seg[*n], p, len);
        seg[*n][len] = '\0';
        (*n)++;
        p += len;
        if (*p == '/') {
            p++;
            if (!*p)
                return 0; /* trailing slash: no endpoint has one */
        }
    }
    return 1;
}

void oip_route_parse(const char *path, struct oip_route *rt)
{
    char seg[7][OIP_NAME_MAX];
    int n = 0;
    memset(rt, 0, sizeof *rt);
    rt->kind = OIP_NOT_FOUND;
    if (!split_path(path, seg, 7, &n) || n < 1)
        return;
    rt->allow = ALLOW_GET;
    /* Every early return below that finds no endpoint clears allow again. */
    if (n == 1 && strcmp(seg[0], "metrics") == 0) {
        rt->kind = OIP_METRICS;
        return;
    }
    if (n == 1 && strcmp(seg[0], "predict") == 0) {
        rt->kind = OIP_PREDICT;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 3 && strcmp(seg[0], "v1") == 0 && strcmp(seg[1], "models") == 0) {
        /* KServe v1 puts the verb after a colon: /v1/models/NAME:predict. */
        const char *colon = strrchr(seg[2], ':');
        size_t ml = colon ? (size_t)(colon - seg[2]) : strlen(seg[2]);
        if (ml == 0 || (colon && strcmp(colon, ":predict") != 0)) {
            rt->allow = NULL;
            return;
        }
        memcpy(rt->model, seg[2], ml);
        rt->model[ml] = '\0';
        rt->kind = colon ? OIP_V1_PREDICT : OIP_V1_MODEL;
        rt->allow = colon ? ALLOW_POST : ALLOW_GET;
        return;
    }
    if (strcmp(seg[0], "v2") != 0) {
        rt->allow = NULL;
        return;
    }
    if (n == 1) {
        rt->kind = OIP_SERVER_META;
        return;
    }
    if (n == 3 && strcmp(seg[1], "corral") == 0 && strcmp(seg[2], "replicas") == 0) {
        rt->kind = OIP_REPLICAS;
        return;
    }
    if (n == 3 && strcmp(seg[1], "models") == 0 && strcmp(seg[2], "stats") == 0) {
        rt->kind = OIP_ALL_STATS;
        return;
    }
    if (n == 3 && strcmp(seg[1], "repository") == 0 && strcmp(seg[2], "index") == 0) {
        rt->kind = OIP_REPO_INDEX;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 5 && strcmp(seg[1], "repository") == 0 && strcmp(seg[2], "models") == 0 &&
        (strcmp(seg[4], "load") == 0 || strcmp(seg[4], "unload") == 0)) {
        snprintf(rt->model, sizeof rt->model, "%s", seg[3]);
        rt->kind = OIP_REPO_CONTROL;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 3 && strcmp(seg[1], "health") == 0) {
        if (strcmp(seg[2], "live") == 0)
            rt->kind = OIP_HEALTH_LIVE;
        else if (strcmp(seg[2], "ready") == 0)
            rt->kind = OIP_HEALTH_READY;
        return;
    }
    if (n < 3 || strcmp(seg[1], "models") != 0)
        return;
    snprintf(rt->model, sizeof rt->model, "%s", seg[2]);
    int rest = 3;
    if (n >= 5 && strcmp(seg[3], "versions") == 0) {
        size_t vl = strlen(seg[4]);
        if (vl >= sizeof rt->version) {
            rt->model[0] = '\0';
            rt->allow = NULL;
            return;
        }
        memcpy(rt->version, seg[4], vl + 1);
        rest = 5;
    }
    if (n == rest) {
        rt->kind = OIP_MODEL_META;
    } else if (n == rest + 1 && strcmp(seg[rest], "ready") == 0) {
        rt->kind = OIP_MODEL_READY;
    } else if (n == rest + 1 && strcmp(seg[rest], "infer") == 0) {
        rt->kind = OIP_MODEL_INFER;
        rt->allow = ALLOW_POST;
    } else if (n == rest + 1 && strcmp(seg[rest], "stats") == 0) {
        rt->kind = OIP_MODEL_STATS;
    } else if (n == rest + 1 && strcmp(seg[rest], "config") == 0) {
        rt->kind = OIP_MODEL_CONFIG;
    } else if (n == rest + 1 && strcmp(seg[rest], "classify") == 0) {
        rt->kind = OIP_CLASSIFY;
        rt->allow = ALLOW_POST;
    }
    if (rt->kind == OIP_NOT_FOUND) {
        rt->model[0] = rt->version[0] = '\0';
        rt->allow = NULL;
    }
}

int oip_route_allows(const struct oip_route *rt, const char *method)
{
    if (!rt->allow || !method)
        return 0;
    size_t n = strlen(method);
    const char *p = rt->allow;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, method, n) == 0)
            return 1;
        p += len;
        while (*p == ',' || *p == ' ')
            p++;
    }
    return 0;
}

/* ---- answers ---- */

/* Request id of the X-Request-ID header when it is safe to echo in a header line. */
static int header_safe(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] >= 0x7f || n >= 128)
            return 0;
    return n > 0;
}

/* The answer's extra header lines: the request id, when there is one. */
static const char *rid_header(struct http_request *req, char *buf, size_t len)
{
    const char *rid = req->user;
    if (!rid)
        return NULL;
    snprintf(buf, len, "X-Request-ID: %s\r\n", rid);
    return buf;
}

static void respond_json(struct http_request *req, int status, struct buf *b, const char *extra)
{
    size_t len = 0;
    char hb[200];
    char *body = buf_steal(b, &len);
    if (!body) {
        static const char oom[] = "{\"error\":\"out of memory building the answer\"}";
        body = strdup(oom);
        len = body ? sizeof oom - 1 : 0;
        status = 500;
    }
    if (!extra)
        extra = rid_header(req, hb, sizeof hb);
    http_respond(req, status, "application/json", extra, body, len);
}

static void respond_error(struct http_request *req, int status, const char *extra,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void respond_error(struct http_request *req, int status, const char *extra,
                          const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *rid = req->user;
    LOG_ERROR("request %llu%s%s: %s %s -> %d: %s", (unsigned long long)req->seq,
              rid ? " id=" : "", rid ? rid : "", req->method_name, req->target, status, msg);
    struct buf b = {0};
    buf_puts(&b, "{\"error\":");
    buf_json_string(&b, msg, strlen(msg));
    buf_putc(&b, '}');
    respond_json(req, status, &b, extra);
}

static void respond_cerr(struct http_request *req, const struct cerr *e)
{
    respond_error(req, corral_err_http_status(e->code), NULL, "%s", e->msg);
}

static void models_list(const struct upstream *up, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < upstream_model_count(up) && off < len; i++) {
        int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", upstream_model_name(up, i));
        if (w > 0)
            off += (size_t)w;
    }
}

/* Counts an inference request refused before it was parsed (unknown model or version). */
static void record_refused(struct oip_ctx *ctx, struct http_request *req, const char *model,
                           int status)
{
    if (ctx->metrics)
        metrics_request(ctx->metrics, ctx->shard, model, "", "http", status,
                        uv_hrtime() - req->start_ns, 0, -1, -1);
}

/* Answers 404 and returns 0 when the model or its version is unknown. */
static int check_model(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    char list[512];
    int infer = rt->kind == OIP_MODEL_INFER || rt->kind == OIP_V1_PREDICT ||
                rt->kind == OIP_CLASSIFY || rt->kind == OIP_PREDICT;
    if (!upstream_model_known(ctx->up, rt->model)) {
        models_list(ctx->up, list, sizeof list);
        /* The name is the client's, so it never becomes a label value. */
        if (infer)
            record_refused(ctx, req, "", 404);
        respond_error(req, 404, NULL, "unknown model '%s' (serving: %s)", rt->model, list);
        return 0;
    }
    if (rt->version[0] &&
        !upstream_model_versions(ctx->up, rt->model, rt->version, list, sizeof list) && list[0]) {
        /* Only versions some replica has reported can be judged unknown. */
        char aliases[512];
        upstream_model_aliases(ctx->up, rt->model, aliases, sizeof aliases);
        if (infer)
            record_refused(ctx, req, rt->model, 404);
        respond_error(req, 404, NULL, "unknown version '%s' of model '%s' (serving: %s; "
                      "aliases: %s)", rt->version, rt->model, list,
                      aliases[0] ? aliases : "none");
        return 0;
    }
    return 1;
}

/*
 * Ready when every model in the replica table has a replica taking traffic. A model
 * whose replicas all left the table no longer counts, and an empty table is not ready:
 * such a router has nothing to serve.
 */
static void handle_ready(struct oip_ctx *ctx, struct http_request *req)
{
    struct buf b = {0};
    int models = 0;
    for (size_t i = 0; i < upstream_model_count(ctx->up); i++) {
        const char *m = upstream_model_name(ctx->up, i);
        if (!upstream_model_in_table(ctx->up, m))
            continue;
        models++;
        if (!upstream_model_ready(ctx->up, m, NULL)) {
            char msg[400];
            snprintf(msg, sizeof msg, "model '%s' has no ready replica", m);
            LOG_DEBUG("readiness check: %s", msg);
            buf_puts(&b, "{\"ready\":false,\"error\":");
            buf_json_string(&b, msg, strlen(msg));
            buf_putc(&b, '}');
            respond_json(req, 503, &b, NULL);
            return;
        }
    }
    if (!models) {
        static const char msg[] = "the replica table is empty: no model to serve yet";
        buf_puts(&b, "{\"ready\":false,\"error\":");
        buf_json_string(&b, msg, strlen(msg));
        buf_putc(&b, '}');
        respond_json(req, 503, &b, NULL);
        return;
    }
    buf_puts(&b, "{\"ready\":true}");
    respond_json(req, 200, &b, NULL);
}

static void handle_model_ready(struct oip_ctx *ctx, struct http_request *req,
                               const struct oip_route *rt)
{
    if (!check_model(ctx, req, rt))
        return;
    int ready = upstream_model_ready(ctx->up, rt->model, rt->version) > 0;
    /* An alias is answered with the version number it stands for. */
    const char *v = upstream_version_resolve(ctx->up, rt->model, rt->version);
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    if (v[0]) {
        buf_puts(&b, ",\"version\":");
        buf_json_string(&b, v, strlen(v));
    }
    buf_printf(&b, ",\"ready\":%s}", ready ? "true" : "false");
    respond_json(req, ready ? 200 : 503, &b, NULL);
}

static void put_tensor_meta(struct buf *b, Corral__TensorMetadata **ts, size_t n)
{
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const Corral__TensorMetadata *t = ts[i];
        buf_json_named(b, i == 0, t->name);
        buf_printf(b, ",\"datatype\":\"%s\",\"shape\":[", dtype_name((enum dtype)t->datatype));
        for (size_t d = 0; d < t->n_shape; d++)
            buf_printf(b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        buf_puts(b, "]}");
    }
    buf_putc(b, ']');
}

/* The model's metadata for the route, or a 503 answer (and NULL) while none is known. */
static const Corral__MetadataResponse *need_metadata(struct oip_ctx *ctx,
                                                     struct http_request *req,
                                                     const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = upstream_model_metadata(ctx->up, rt->model, rt->version);
    if (!md)
        respond_error(req, 503, NULL, "metadata of model '%s'%s%s is not available yet: none of "
                      "its replicas has answered (see /v2/models/%s/ready)", rt->model,
                      rt->version[0] ? " version " : "", rt->version, rt->model);
    return md;
}

/* The same for a model (version) not yet checked: unknown ones are answered 404. */
static const Corral__MetadataResponse *known_metadata(struct oip_ctx *ctx,
                                                      struct http_request *req,
                                                      const struct oip_route *rt)
{
    return check_model(ctx, req, rt) ? need_metadata(ctx, req, rt) : NULL;
}

static void handle_model_meta(struct oip_ctx *ctx, struct http_request *req,
                              const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = known_metadata(ctx, req, rt);
    if (!md)
        return;
    char vs[256];
    upstream_model_versions(ctx->up, rt->model, NULL, vs, sizeof vs);
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    buf_puts(&b, ",\"versions\":[");
    if (rt->version[0]) {
        const char *v = upstream_version_resolve(ctx->up, rt->model, rt->version);
        buf_json_string(&b, v, strlen(v));
    } else if (vs[0]) {
        /* Every version some replica serves, not only the one that sent this metadata. */
        const char *p = vs;
        int first = 1;
        while (*p) {
            size_t l = strcspn(p, ",");
            if (!first)
                buf_putc(&b, ',');
            buf_json_string(&b, p, l);
            first = 0;
            p += l;
            while (*p == ',' || *p == ' ')
                p++;
        }
    } else {
        for (size_t i = 0; i < md->n_versions; i++) {
            if (i)
                buf_putc(&b, ',');
            buf_json_string(&b, md->versions[i], strlen(md->versions[i]));
        }
    }
    buf_puts(&b, "],\"platform\":");
    const char *pf = md->platform && md->platform[0] ? md->platform : "onnx";
    buf_json_string(&b, pf, strlen(pf));
    buf_puts(&b, ",\"inputs\":");
    put_tensor_meta(&b, md->inputs, md->n_inputs);
    buf_puts(&b, ",\"outputs\":");
    put_tensor_meta(&b, md->outputs, md->n_outputs);
    buf_putc(&b, '}');
    respond_json(req, 200, &b, NULL);
}

static void handle_model_config(struct oip_ctx *ctx, struct http_request *req,
                                const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = known_metadata(ctx, req, rt);
    if (!md)
        return;
    struct oip_serving s;
    oip_serving_collect(ctx->up, rt->model, md, &s);
    struct buf b = {0};
    oip_model_config_render(&b, rt->model, md, &s);
    respond_json(req, 200, &b, NULL);
}

static void handle_repo_index(struct oip_ctx *ctx, struct http_request *req)
{
    struct cerr e = {0};
    int ready_only = 0;
    if (oip_repo_index_parse((const char *)req->body, req->body_len, &ready_only, &e)) {
        respond_cerr(req, &e);
        return;
    }
    struct buf b = {0};
    oip_repo_index_render(&b, ctx->up, ready_only);
    respond_json(req, 200, &b, NULL);
}

static void handle_server_meta(struct http_request *req)
{
    struct buf b = {0};
    buf_puts(&b, "{\"name\":\"corral\",\"version\":\"" CORRAL_VERSION "\","
                 "\"extensions\":[\"binary_tensor_data\",\"classification\",\"statistics\","
                 "\"schedule_policy\",\"parameters\",\"model_configuration\","
                 "\"model_repository\"]}");
    respond_json(req, 200, &b, NULL);
}

/* The canary splits in force on this thread, as {"model", "version", "percent"} items. */
static void put_canaries(struct buf *b, const struct upstream *up)
{
    int first = 1;
    for (size_t i = 0; i < upstream_model_count(up); i++) {
        const char *m = upstream_model_name(up, i), *v = NULL;
        int pct = upstream_model_canary(up, m, &v);
        if (pct < 0)
            continue;
        buf_puts(b, first ? "{\"model\":" : ",{\"model\":");
        buf_json_string(b, m, strlen(m));
        buf_puts(b, ",\"version\":");
        buf_json_string(b, v, strlen(v));
        buf_printf(b, ",\"percent\":%d}", pct);
        first = 0;
    }
}

static void handle_replicas(struct oip_ctx *ctx, struct http_request *req)
{
    struct buf b = {0};
    buf_puts(&b, "{\"models\":[");
    for (size_t i = 0; i < upstream_model_count(ctx->up); i++) {
        const char *m = upstream_model_name(ctx->up, i);
        buf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        buf_json_string(&b, m, strlen(m));
        buf_printf(&b, ",\"ready_replicas\":%d}", upstream_model_ready(ctx->up, m, NULL));
    }
    buf_puts(&b, "],\"replicas\":[");
    for (size_t i = 0; i < upstream_replica_count(ctx->up); i++) {
        struct upstream_replica_info ri;
        upstream_replica_info(ctx->up, i, &ri);
        buf_puts(&b, i ? ",{\"model\":" : "{\"model\":");
        buf_json_string(&b, ri.model, strlen(ri.model));
        buf_puts(&b, ",\"url\":");
        buf_json_string(&b, ri.url, strlen(ri.url));
        buf_puts(&b, ",\"version\":");
        buf_json_string(&b, ri.version, strlen(ri.version));
        buf_printf(&b, ",\"state\":\"%s\",\"why\":", ri.state);
        buf_json_string(&b, ri.why, strlen(ri.why));
        buf_printf(&b, ",\"outstanding\":%u,\"fail_streak\":%u}", ri.outstanding, ri.fail_streak);
    }
    buf_puts(&b, "],\"canaries\":[");
    put_canaries(&b, ctx->up);
    buf_puts(&b, "]}");
    respond_json(req, 200, &b, NULL);
}

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
            respond_error(req, 500, NULL, "out of memory rendering the metrics");
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
        respond_error(req, 503, NULL, "no replica of model '%s'%s%s answered the statistics "
                      "request (%s)", g->model, g->version[0] ? " version " : "", g->version,
                      why ? why : "none is configured");
    } else {
        respond_json(req, 200, &b, NULL);
    }
    free(g);
}

static void handle_gather(struct oip_ctx *ctx, struct http_request *req,
                          const struct oip_route *rt)
{
    struct cerr e = {0};
    if (rt->kind == OIP_MODEL_STATS && !check_model(ctx, req, rt))
        return;
    struct gathering *g = calloc(1, sizeof *g);
    if (!g) {
        respond_error(req, 500, NULL, "out of memory gathering statistics");
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
        respond_cerr(req, &e);
    }
}

/* ---- infer ---- */

struct pending {
    struct oip_ctx *ctx;
    struct http_request *req;
    struct oip_infer in;
    struct up_call *call;
    int aborted; /* the client went away before the answer */
    int top_k;   /* an image classification: answer its top_k classes */
    char model[OIP_NAME_MAX];
    char version[64];
};

static void record(struct pending *p, int status, const char *version,
                   const struct upstream_done *d, int64_t queue_us, int64_t compute_us)
{
    struct oip_ctx *ctx = p->ctx;
    if (!ctx->metrics)
        return;
    metrics_request(ctx->metrics, ctx->shard, p->model, version, "http", status,
                    uv_hrtime() - p->req->start_ns, d ? d->upstream_ns : 0, queue_us, compute_us);
}

static void pending_free(struct pending *p)
{
    if (p->ctx->metrics)
        metrics_inflight(p->ctx->metrics, p->ctx->shard, -1);
    oip_infer_free(&p->in);
    free(p);
}

static void on_client_gone(void *arg)
{
    struct pending *p = arg;
    p->aborted = 1;
    if (p->call)
        upstream_cancel(p->ctx->up, p->call);
}

static int64_t param_int(const Corral__InferResponse *r, const char *key)
{
    for (size_t i = 0; r && i < r->n_parameters; i++) {
        const Corral__Parameter *q = r->parameters[i];
        if (q->key && strcmp(q->key, key) == 0 &&
            q->value_case == CORRAL__PARAMETER__VALUE_INT64_VALUE)
            return q->int64_value;
    }
    return -1;
}

static void infer_done(void *arg, const struct upstream_done *d)
{
    struct pending *p = arg;
    struct http_request *req = p->req;
    struct cerr e = {0};
    char hb[200];
    p->call = NULL;
    const Corral__InferResponse *resp = d->resp;
    const char *version = resp && resp->model_version && resp->model_version[0]
                              ? resp->model_version
                          : p->version[0] ? p->version
                                          : d->version;
    http_request_note(req, "id=%s model=%s version=%s replica=%s attempts=%d upstream_ms=%.3f",
                      req->user ? (const char *)req->user : "-", p->model,
                      version[0] ? version : "-", d->replica[0] ? d->replica : "-", d->attempts,
                      (double)d->upstream_ns / 1e6);
    if (d->rc) {
        int status = corral_err_http_status(d->rc);
        /* 499 (client closed request, as nginx counts it) keeps cancellations apart. */
        record(p, p->aborted ? 499 : status, version, d, -1, -1);
        respond_error(req, status, NULL, "%s", d->msg ? d->msg : corral_strerror(d->rc));
        goto done;
    }
    if (!http_request_alive(req)) {
        /* Nobody to answer; skip rendering and let http_respond drop the request. */
        record(p, 499, version, d, -1, -1);
        http_respond(req, 200, NULL, NULL, NULL, 0);
        goto done;
    }
    const Corral__MetadataResponse *md = upstream_model_metadata(p->ctx->up, p->model, version);
    if (md && md->n_labels) {
        p->in.labels = md->labels;
        p->in.n_labels = md->n_labels;
    }
    char *body = NULL;
    size_t len = 0, jlen = 0;
    int rc = p->top_k ? (md && md->image ? oip_classify_render(resp, md, p->top_k, p->model,
                                                               &body, &len, &e)
                                         : cerr_set(&e, CORRAL_EUNAVAIL, "metadata of model "
                                                    "'%s' version %s is no longer known",
                                                    p->model, version))
                      : oip_infer_response_render(resp, &p->in, p->model, &body, &len, &jlen, &e);
    if (p->top_k)
        jlen = len;
    if (rc) {
        record(p, corral_err_http_status(e.code), version, d, -1, -1);
        respond_cerr(req, &e);
        goto done;
    }
    record(p, 200, version, d, param_int(resp, "corral_queue_us"),
           param_int(resp, "corral_compute_us"));
    const char *rid = rid_header(req, hb, sizeof hb);
    if (jlen != len) {
        char hdr[300];
        snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n%s", jlen,
                 rid ? rid : "");
        http_respond(req, 200, "application/octet-stream", hdr, body, len);
    } else {
        http_respond(req, 200, "application/json", rid, body, len);
    }
done:
    pending_free(p);
}

/* Sends a parsed request on its way; answers and frees p itself on failure. */
static void dispatch(struct pending *p)
{
    struct oip_ctx *ctx = p->ctx;
    struct http_request *req = p->req;
    struct cerr e = {0};
    unsigned timeout_ms = ctx->timeout_ms;
    if (p->in.timeout_us) {
        /* The OIP timeout may only shorten the router's own deadline. */
        uint64_t ms = (p->in.timeout_us + 999) / 1000;
        if (ms < timeout_ms)
            timeout_ms = (unsigned)ms;
    }
    if (!p->in.id && req->user) {
        /* The replica logs the id too, so an X-Request-ID travels with the request. */
        p->in.ir.id = req->user;
    }
    if (upstream_infer(ctx->up, &p->in.req, timeout_ms, infer_done, p, &p->call, &e)) {
        http_request_note(req, "id=%s model=%s", req->user ? (const char *)req->user : "-",
                          p->model);
        record(p, corral_err_http_status(e.code), p->version, NULL, -1, -1);
        respond_cerr(req, &e);
        pending_free(p);
        return;
    }
    http_request_on_abort(req, on_client_gone, p);
    /* The request is packed and on its way; only what the answer needs is kept. Compacting
     * moves the id, so the request's log id follows it. */
    int user_is_id = p->in.id && req->user == p->in.id;
    if (oip_infer_compact(&p->in) == CORRAL_OK && user_is_id)
        req->user = p->in.id;
    p->in.ir.id = NULL;
    http_request_drop_body(req);
}

static struct pending *pending_new(struct oip_ctx *ctx, struct http_request *req,
                                   const struct oip_route *rt)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        respond_error(req, 500, NULL, "out of memory accepting the request");
        return NULL;
    }
    p->ctx = ctx;
    p->req = req;
    /* The request keeps pointers to these names until it is answered. */
    snprintf(p->model, sizeof p->model, "%s", rt->model);
    snprintf(p->version, sizeof p->version, "%s", rt->version);
    if (ctx->metrics)
        metrics_inflight(ctx->metrics, ctx->shard, 1);
    return p;
}

static void reject_parse(struct pending *p, const struct cerr *e)
{
    http_request_note(p->req, "id=%s model=%s", p->req->user ? (const char *)p->req->user : "-",
                      p->model);
    record(p, corral_err_http_status(e->code), p->version, NULL, -1, -1);
    respond_cerr(p->req, e);
    pending_free(p);
}

static void handle_infer(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    struct cerr e = {0};
    if (!check_model(ctx, req, rt))
        return;
    size_t json_len = req->body_len;
    int raw = 0;
    const char *hcl = http_request_header(req, "Inference-Header-Content-Length");
    if (hcl) {
        char *end = NULL;
        unsigned long long v = strtoull(hcl, &end, 10);
        if (!*hcl || *end || hcl[0] == '-' || v > req->body_len) {
            respond_error(req, 400, NULL, "Inference-Header-Content-Length '%.40s' is not a byte "
                          "count within the %zu byte body", hcl, req->body_len);
            return;
        }
        json_len = (size_t)v;
        raw = v == 0;
    }
    const Corral__MetadataResponse *md = NULL;
    if (raw && !(md = need_metadata(ctx, req, rt)))
        return;
    struct pending *p = pending_new(ctx, req, rt);
    if (!p)
        return;
    int rc = raw ? oip_infer_raw(md, req->body, req->body_len, p->model, p->version, &p->in, &e)
                 : oip_infer_parse((const char *)req->body, json_len, req->body + json_len,
                                   req->body_len - json_len, p->model, p->version, &p->in, &e);
    if (rc) {
        reject_parse(p, &e);
        return;
    }
    if (p->in.id && header_safe(p->in.id))
        req->user = p->in.id; /* the OIP id wins over X-Request-ID */
    dispatch(p);
}

static void handle_predict(struct oip_ctx *ctx, struct http_request *req,
                           const struct oip_route *rt)
{
    struct cerr e = {0};
    const Corral__MetadataResponse *md = known_metadata(ctx, req, rt);
    if (!md)
        return;
    struct pending *p = pending_new(ctx, req, rt);
    if (!p)
        return;
    if (oip_predict_parse(md, (const char *)req->body, req->body_len, p->model, p->version,
                          &p->in, &e)) {
        reject_parse(p, &e);
        return;
    }
    dispatch(p);
}

/*
 * An image in, the top classes out: /v2/models/{m}[/versions/{v}]/classify?top_k=K, and
 * /predict?model=M&version=V&top_k=K (the model may be left out when the router serves
 * one). The replica decodes the image; only its type and size are checked here.
 */
static void handle_classify(struct oip_ctx *ctx, struct http_request *req, struct oip_route *rt)
{
    struct cerr e = {0};
    int top_k = 0, rc;
    if (rt->kind == OIP_PREDICT) {
        rc = oip_query_get(req->query, "model", rt->model, sizeof rt->model, &e);
        if (rc == 0 && upstream_model_count(ctx->up) == 1)
            snprintf(rt->model, sizeof rt->model, "%s", upstream_model_name(ctx->up, 0));
        else if (rc == 0) {
            char list[512];
            models_list(ctx->up, list, sizeof list);
            respond_error(req, 400, NULL, "/predict needs ?model=NAME when the router serves "
                          "several models (serving: %s)", list);
            return;
        }
        if (rc >= 0 && oip_query_get(req->query, "version", rt->version, sizeof rt->version,
                                     &e) < 0)
            rc = -1;
        if (rc < 0) {
            respond_cerr(req, &e);
            return;
        }
    }
    if (oip_query_top_k(req->query, &top_k, &e)) {
        respond_cerr(req, &e);
        return;
    }
    const Corral__MetadataResponse *md = known_metadata(ctx, req, rt);
    if (!md)
        return;
    if (!md->image) {
        respond_error(req, 400, NULL, "model '%s' does not take images: its config.json has no "
                      "preprocess section (export it with --preprocess, see docs/images.md)",
                      rt->model);
        return;
    }
    struct oip_image img;
    size_t max = ctx->max_image_bytes ? ctx->max_image_bytes : (size_t)16 << 20;
    struct pending *p = pending_new(ctx, req, rt);
    if (!p)
        return;
    if (oip_image_extract(http_request_header(req, "Content-Type"), req->body, req->body_len,
                          max, &img, &e) ||
        oip_image_request(md, &img, p->model, p->version, &p->in, &e)) {
        reject_parse(p, &e);
        return;
    }
    p->top_k = top_k;
    dispatch(p);
}

static void handle_v1_model(struct oip_ctx *ctx, struct http_request *req,
                            const struct oip_route *rt)
{
    if (!check_model(ctx, req, rt))
        return;
    int ready = upstream_model_ready(ctx->up, rt->model, NULL) > 0;
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    buf_printf(&b, ",\"ready\":%s}", ready ? "true" : "false");
    respond_json(req, ready ? 200 : 503, &b, NULL);
}

void oip_handle(void *arg, struct http_request *req)
{
    struct oip_ctx *ctx = arg;
    struct oip_route rt;
    const char *xrid = http_request_header(req, "X-Request-ID");
    /* req->user holds the request id (borrowed) for headers and logs. */
    req->user = xrid && header_safe(xrid) ? (void *)xrid : NULL;
    oip_route_parse(req->path, &rt);
    if (rt.kind == OIP_NOT_FOUND) {
        respond_error(req, 404, NULL, "no such endpoint: %s %s (expected /v2, /v2/health/live, "
                      "/v2/health/ready, "
                      "/v2/models/{name}[/versions/{v}][/ready|/infer|/classify|/stats|"
                      "/config], /v2/repository/index, /v1/models/{name}:predict, /predict or "
                      "/metrics)",
                      req->method_name, req->path);
        return;
    }
    if (!oip_route_allows(&rt, req->method_name)) {
        char allow[64];
        snprintf(allow, sizeof allow, "Allow: %s\r\n", rt.allow);
        respond_error(req, 405, allow, "method %s is not allowed on %s (allowed: %s)",
                      req->method_name, req->path, rt.allow);
        return;
    }
    const char *ce = req->body_len ? http_request_header(req, "Content-Encoding") : NULL;
    if (ce && strcasecmp(ce, "identity") != 0) {
        /* Read as it came, a compressed body would only fail as bad JSON; say why instead
         * (tritonclient's request_compression_algorithm sends gzip or deflate). */
        respond_error(req, 415, NULL, "Content-Encoding '%.40s' is not supported: send the "
                      "body uncompressed", ce);
        return;
    }
    switch (rt.kind) {
    case OIP_HEALTH_LIVE: {
        struct buf b = {0};
        buf_puts(&b, "{\"live\":true}");
        respond_json(req, 200, &b, NULL);
        break;
    }
    case OIP_HEALTH_READY: handle_ready(ctx, req); break;
    case OIP_SERVER_META: handle_server_meta(req); break;
    case OIP_MODEL_META: handle_model_meta(ctx, req, &rt); break;
    case OIP_MODEL_READY: handle_model_ready(ctx, req, &rt); break;
    case OIP_MODEL_INFER: handle_infer(ctx, req, &rt); break;
    case OIP_MODEL_STATS:
    case OIP_ALL_STATS:
    case OIP_METRICS: handle_gather(ctx, req, &rt); break;
    case OIP_V1_MODEL: handle_v1_model(ctx, req, &rt); break;
    case OIP_V1_PREDICT: handle_predict(ctx, req, &rt); break;
    case OIP_CLASSIFY:
    case OIP_PREDICT: handle_classify(ctx, req, &rt); break;
    case OIP_REPLICAS: handle_replicas(ctx, req); break;
    case OIP_MODEL_CONFIG: handle_model_config(ctx, req, &rt); break;
    case OIP_REPO_INDEX: handle_repo_index(ctx, req); break;
    case OIP_REPO_CONTROL:
        /* Triton's explicit model control; here the replica table is the scheduler's. */
        respond_error(req, 501, NULL, "model control is not served by the router: the models "
                      "it serves follow the replica table, which corral-scheduler keeps "
                      "(change the cluster config and run corralctl apply)");
        break;
    default: respond_error(req, 404, NULL, "no such endpoint: %s", req->path);
    }
}
