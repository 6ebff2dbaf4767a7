/*
 * OIP endpoint handlers: the dispatch of a routed request (auth, method, encoding), the
 * answers every handler shares (JSON bodies, errors, the request id, unknown models),
 * health, readiness, metadata, model configuration, the repository index and the
 * replica table. Routing is in oip_route.c, statistics and metrics in oip_stats.c, the
 * asynchronous infer path (infer, v1 predict, image classification) in oip_infer.c.
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
#include "oip_internal.h"
#include "token.h"

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.0.0"
#endif

/* ---- answers ---- */

/* Request id of the X-Request-ID header when it is safe to echo in a header line. */
int oip_header_safe(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] >= 0x7f || n >= 128)
            return 0;
    return n > 0;
}

/* The answer's extra header lines: the request id, when there is one. */
const char *oip_rid_header(struct http_request *req, char *buf, size_t len)
{
    const char *rid = req->user;
    if (!rid)
        return NULL;
    snprintf(buf, len, "X-Request-ID: %s\r\n", rid);
    return buf;
}

void oip_respond_json(struct http_request *req, int status, struct buf *b, const char *extra)
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
        extra = oip_rid_header(req, hb, sizeof hb);
    http_respond(req, status, "application/json", extra, body, len);
}

void oip_respond_error(struct http_request *req, int status, const char *extra,
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
    oip_respond_json(req, status, &b, extra);
}

void oip_respond_cerr(struct http_request *req, const struct cerr *e)
{
    oip_respond_error(req, corral_err_http_status(e->code), NULL, "%s", e->msg);
}

void oip_models_list(const struct upstream *up, char *buf, size_t len)
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
void oip_record_refused(struct oip_ctx *ctx, struct http_request *req, const char *model,
                           int status)
{
    if (ctx->metrics)
        metrics_request(ctx->metrics, ctx->shard, model, "", "http", status,
                        uv_hrtime() - req->start_ns, 0, -1, -1);
}

/* Answers 404 and returns 0 when the model or its version is unknown. */
int oip_check_model(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    char list[512];
    int infer = rt->kind == OIP_MODEL_INFER || rt->kind == OIP_V1_PREDICT ||
                rt->kind == OIP_CLASSIFY || rt->kind == OIP_PREDICT;
    if (!upstream_model_known(ctx->up, rt->model)) {
        oip_models_list(ctx->up, list, sizeof list);
        /* The name is the client's, so it never becomes a label value. */
        if (infer)
            oip_record_refused(ctx, req, "", 404);
        oip_respond_error(req, 404, NULL, "unknown model '%s' (serving: %s)", rt->model, list);
        return 0;
    }
    if (rt->version[0] &&
        !upstream_model_versions(ctx->up, rt->model, rt->version, list, sizeof list) && list[0]) {
        /* Only versions some replica has reported can be judged unknown. */
        char aliases[512];
        upstream_model_aliases(ctx->up, rt->model, aliases, sizeof aliases);
        if (infer)
            oip_record_refused(ctx, req, rt->model, 404);
        oip_respond_error(req, 404, NULL, "unknown version '%s' of model '%s' (serving: %s; "
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
            oip_respond_json(req, 503, &b, NULL);
            return;
        }
    }
    if (!models) {
        static const char msg[] = "the replica table is empty: no model to serve yet";
        buf_puts(&b, "{\"ready\":false,\"error\":");
        buf_json_string(&b, msg, strlen(msg));
        buf_putc(&b, '}');
        oip_respond_json(req, 503, &b, NULL);
        return;
    }
    buf_puts(&b, "{\"ready\":true}");
    oip_respond_json(req, 200, &b, NULL);
}

static void handle_model_ready(struct oip_ctx *ctx, struct http_request *req,
                               const struct oip_route *rt)
{
    if (!oip_check_model(ctx, req, rt))
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
    oip_respond_json(req, ready ? 200 : 503, &b, NULL);
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
const Corral__MetadataResponse *oip_need_metadata(struct oip_ctx *ctx,
                                                     struct http_request *req,
                                                     const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = upstream_model_metadata(ctx->up, rt->model, rt->version);
    if (!md)
        oip_respond_error(req, 503, NULL, "metadata of model '%s'%s%s is not available yet: none of "
                      "its replicas has answered (see /v2/models/%s/ready)", rt->model,
                      rt->version[0] ? " version " : "", rt->version, rt->model);
    return md;
}

/* The same for a model (version) not yet checked: unknown ones are answered 404. */
const Corral__MetadataResponse *oip_known_metadata(struct oip_ctx *ctx,
                                                      struct http_request *req,
                                                      const struct oip_route *rt)
{
    return oip_check_model(ctx, req, rt) ? oip_need_metadata(ctx, req, rt) : NULL;
}

static void handle_model_meta(struct oip_ctx *ctx, struct http_request *req,
                              const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = oip_known_metadata(ctx, req, rt);
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
    oip_respond_json(req, 200, &b, NULL);
}

static void handle_model_config(struct oip_ctx *ctx, struct http_request *req,
                                const struct oip_route *rt)
{
    const Corral__MetadataResponse *md = oip_known_metadata(ctx, req, rt);
    if (!md)
        return;
    struct oip_serving s;
    oip_serving_collect(ctx->up, rt->model, md, &s);
    struct buf b = {0};
    oip_model_config_render(&b, rt->model, md, &s);
    oip_respond_json(req, 200, &b, NULL);
}

static void handle_repo_index(struct oip_ctx *ctx, struct http_request *req)
{
    struct cerr e = {0};
    int ready_only = 0;
    if (oip_repo_index_parse((const char *)req->body, req->body_len, &ready_only, &e)) {
        oip_respond_cerr(req, &e);
        return;
    }
    struct buf b = {0};
    oip_repo_index_render(&b, ctx->up, ready_only);
    oip_respond_json(req, 200, &b, NULL);
}

static void handle_server_meta(struct http_request *req)
{
    struct buf b = {0};
    buf_puts(&b, "{\"name\":\"corral\",\"version\":\"" CORRAL_VERSION "\","
                 "\"extensions\":[\"binary_tensor_data\",\"classification\",\"statistics\","
                 "\"schedule_policy\",\"parameters\",\"model_configuration\","
                 "\"model_repository\"]}");
    oip_respond_json(req, 200, &b, NULL);
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
    oip_respond_json(req, 200, &b, NULL);
}

static void handle_v1_model(struct oip_ctx *ctx, struct http_request *req,
                            const struct oip_route *rt)
{
    if (!oip_check_model(ctx, req, rt))
        return;
    int ready = upstream_model_ready(ctx->up, rt->model, NULL) > 0;
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    buf_printf(&b, ",\"ready\":%s}", ready ? "true" : "false");
    oip_respond_json(req, ready ? 200 : 503, &b, NULL);
}

/* Endpoints open without a token: what probes and scrapers read. */
static int open_route(enum oip_route_kind k)
{
    return k == OIP_HEALTH_LIVE || k == OIP_HEALTH_READY || k == OIP_MODEL_READY ||
           k == OIP_V1_MODEL || k == OIP_METRICS;
}

void oip_handle(void *arg, struct http_request *req)
{
    struct oip_ctx *ctx = arg;
    struct oip_route rt;
    const char *xrid = http_request_header(req, "X-Request-ID");
    /* req->user holds the request id (borrowed) for headers and logs. */
    req->user = xrid && oip_header_safe(xrid) ? (void *)xrid : NULL;
    oip_route_parse(req->path, &rt);
    if (rt.kind == OIP_NOT_FOUND) {
        oip_respond_error(req, 404, NULL, "no such endpoint: %s %s (expected /v2, /v2/health/live, "
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
        oip_respond_error(req, 405, allow, "method %s is not allowed on %s (allowed: %s)",
                      req->method_name, req->path, rt.allow);
        return;
    }
    if (ctx->token && !open_route(rt.kind) &&
        !token_bearer_ok(http_request_header(req, "Authorization"), ctx->token)) {
        /* The model named in the path is the client's: it never becomes a label here. */
        if (rt.kind == OIP_MODEL_INFER || rt.kind == OIP_V1_PREDICT || rt.kind == OIP_CLASSIFY ||
            rt.kind == OIP_PREDICT)
            oip_record_refused(ctx, req, "", 401);
        oip_respond_error(req, 401, "WWW-Authenticate: Bearer realm=\"corral\"\r\n",
                      "this endpoint needs the router's bearer token: send the header "
                      "'Authorization: Bearer <token>' (health, readiness and /metrics need none)");
        return;
    }
    const char *ce = req->body_len ? http_request_header(req, "Content-Encoding") : NULL;
    if (ce && strcasecmp(ce, "identity") != 0) {
        /* Read as it came, a compressed body would only fail as bad JSON; say why instead
         * (tritonclient's request_compression_algorithm sends gzip or deflate). */
        oip_respond_error(req, 415, NULL, "Content-Encoding '%.40s' is not supported: send the "
                      "body uncompressed", ce);
        return;
    }
    switch (rt.kind) {
    case OIP_HEALTH_LIVE: {
        struct buf b = {0};
        buf_puts(&b, "{\"live\":true}");
        oip_respond_json(req, 200, &b, NULL);
        break;
    }
    case OIP_HEALTH_READY: handle_ready(ctx, req); break;
    case OIP_SERVER_META: handle_server_meta(req); break;
    case OIP_MODEL_META: handle_model_meta(ctx, req, &rt); break;
    case OIP_MODEL_READY: handle_model_ready(ctx, req, &rt); break;
    case OIP_MODEL_INFER: oip_handle_infer(ctx, req, &rt); break;
    case OIP_MODEL_STATS:
    case OIP_ALL_STATS:
    case OIP_METRICS: oip_handle_gather(ctx, req, &rt); break;
    case OIP_V1_MODEL: handle_v1_model(ctx, req, &rt); break;
    case OIP_V1_PREDICT: oip_handle_predict(ctx, req, &rt); break;
    case OIP_CLASSIFY:
    case OIP_PREDICT: oip_handle_classify(ctx, req, &rt); break;
    case OIP_REPLICAS: handle_replicas(ctx, req); break;
    case OIP_MODEL_CONFIG: handle_model_config(ctx, req, &rt); break;
    case OIP_REPO_INDEX: handle_repo_index(ctx, req); break;
    case OIP_REPO_CONTROL:
        /* Triton's explicit model control; here the replica table is the scheduler's. */
        oip_respond_error(req, 501, NULL, "model control is not served by the router: the models "
                      "it serves follow the replica table, which corral-scheduler keeps "
                      "(change the cluster config and run corralctl apply)");
        break;
    default: oip_respond_error(req, 404, NULL, "no such endpoint: %s", req->path);
    }
}
