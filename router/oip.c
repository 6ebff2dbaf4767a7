/*
 * OIP endpoint handlers: routing, health, metadata and the asynchronous infer
 * path (parse, send to a replica, render the answer when it comes back).
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
    if (!split_path(path, seg, 7, &n) || n < 1 || strcmp(seg[0], "v2") != 0)
        return;
    rt->allow = ALLOW_GET;
    if (n == 1) {
        rt->kind = OIP_SERVER_META;
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

static void respond_json(struct http_request *req, int status, struct buf *b, const char *extra)
{
    size_t len = 0;
    char *body = buf_steal(b, &len);
    if (!body) {
        static const char oom[] = "{\"error\":\"out of memory building the answer\"}";
        body = strdup(oom);
        len = body ? sizeof oom - 1 : 0;
        status = 500;
    }
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
    LOG_ERROR("request %llu: %s %s -> %d: %s", (unsigned long long)req->seq, req->method_name,
              req->target, status, msg);
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

/* Answers 404 and returns 0 when the model or its version is unknown. */
static int check_model(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    char list[512];
    if (!upstream_model_known(ctx->up, rt->model)) {
        models_list(ctx->up, list, sizeof list);
        respond_error(req, 404, NULL, "unknown model '%s' (serving: %s)", rt->model, list);
        return 0;
    }
    if (rt->version[0] &&
        !upstream_model_versions(ctx->up, rt->model, rt->version, list, sizeof list) && list[0]) {
        /* Only versions some replica has reported can be judged unknown. */
        respond_error(req, 404, NULL, "unknown version '%s' of model '%s' (serving: %s)",
                      rt->version, rt->model, list);
        return 0;
    }
    return 1;
}

static void handle_ready(struct oip_ctx *ctx, struct http_request *req)
{
    struct buf b = {0};
    for (size_t i = 0; i < upstream_model_count(ctx->up); i++) {
        const char *m = upstream_model_name(ctx->up, i);
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
    buf_puts(&b, "{\"ready\":true}");
    respond_json(req, 200, &b, NULL);
}

static void handle_model_ready(struct oip_ctx *ctx, struct http_request *req,
                               const struct oip_route *rt)
{
    if (!check_model(ctx, req, rt))
        return;
    int ready = upstream_model_ready(ctx->up, rt->model, rt->version[0] ? rt->version : NULL) > 0;
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    if (rt->version[0]) {
        buf_puts(&b, ",\"version\":");
        buf_json_string(&b, rt->version, strlen(rt->version));
    }
    buf_printf(&b, ",\"ready\":%s}", ready ? "true" : "false");
    respond_json(req, ready ? 200 : 503, &b, NULL);
}

static void put_tensor_meta(struct buf *b, Corral__TensorMetadata **ts, size_t n)
{
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const Corral__TensorMetadata *t = ts[i];
        const char *name = t->name ? t->name : "";
        buf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        buf_json_string(b, name, strlen(name));
        buf_printf(b, ",\"datatype\":\"%s\",\"shape\":[", dtype_name((enum dtype)t->datatype));
        for (size_t d = 0; d < t->n_shape; d++)
            buf_printf(b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        buf_puts(b, "]}");
    }
    buf_putc(b, ']');
}

static void handle_model_meta(struct oip_ctx *ctx, struct http_request *req,
                              const struct oip_route *rt)
{
    if (!check_model(ctx, req, rt))
        return;
    const Corral__MetadataResponse *md = upstream_model_metadata(ctx->up, rt->model);
    if (!md) {
        respond_error(req, 503, NULL, "metadata of model '%s' is not available yet: none of its "
                      "replicas has answered (see /v2/models/%s/ready)", rt->model, rt->model);
        return;
    }
    struct buf b = {0};
    buf_puts(&b, "{\"name\":");
    buf_json_string(&b, rt->model, strlen(rt->model));
    buf_puts(&b, ",\"versions\":[");
    for (size_t i = 0; i < md->n_versions; i++) {
        if (i)
            buf_putc(&b, ',');
        buf_json_string(&b, md->versions[i], strlen(md->versions[i]));
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

static void handle_server_meta(struct http_request *req)
{
    struct buf b = {0};
    buf_puts(&b, "{\"name\":\"corral\",\"version\":\"" CORRAL_VERSION "\","
                 "\"extensions\":[\"binary_tensor_data\"]}");
    respond_json(req, 200, &b, NULL);
}

/* ---- infer ---- */

struct pending {
    struct oip_ctx *ctx;
    struct http_request *req;
    struct oip_infer in;
    char model[OIP_NAME_MAX];
    char version[64];
};

static void infer_done(void *arg, int rc, const char *msg, const Corral__InferResponse *resp)
{
    struct pending *p = arg;
    struct http_request *req = p->req;
    struct cerr e = {0};
    if (rc) {
        respond_error(req, corral_err_http_status(rc), NULL, "%s", msg ? msg : corral_strerror(rc));
        goto done;
    }
    if (!http_request_alive(req)) {
        /* Nobody to answer; skip rendering and let http_respond drop the request. */
        http_respond(req, 200, NULL, NULL, NULL, 0);
        goto done;
    }
    char *body = NULL;
    size_t len = 0, jlen = 0;
    if (oip_infer_response_render(resp, &p->in, p->model, &body, &len, &jlen, &e)) {
        respond_cerr(req, &e);
        goto done;
    }
    if (jlen != len) {
        char hdr[80];
        snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n", jlen);
        http_respond(req, 200, "application/octet-stream", hdr, body, len);
    } else {
        http_respond(req, 200, "application/json", NULL, body, len);
    }
done:
    oip_infer_free(&p->in);
    free(p);
}

static void handle_infer(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    struct cerr e = {0};
    if (!check_model(ctx, req, rt))
        return;
    size_t json_len = req->body_len;
    const char *hcl = http_request_header(req, "Inference-Header-Content-Length");
    if (hcl) {
        char *end = NULL;
        unsigned long long v = strtoull(hcl, &end, 10);
        if (!*hcl || *end || hcl[0] == '-' || v > req->body_len) {
            respond_error(req, 400, NULL, "Inference-Header-Content-Length '%.40s' is not a byte "
                          "count within the %zu byte body", hcl, req->body_len);
            return;
        }
        if (v == 0) {
            respond_error(req, 400, NULL, "Inference-Header-Content-Length 0 (a raw binary "
                          "body without JSON) is not supported; send a JSON header");
            return;
        }
        json_len = (size_t)v;
    }
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        respond_error(req, 500, NULL, "out of memory accepting the request");
        return;
    }
    p->ctx = ctx;
    p->req = req;
    /* The request keeps pointers to these names until it is answered. */
    snprintf(p->model, sizeof p->model, "%s", rt->model);
    snprintf(p->version, sizeof p->version, "%s", rt->version);
    if (oip_infer_parse((const char *)req->body, json_len, req->body + json_len,
                        req->body_len - json_len, p->model, p->version, &p->in, &e)) {
        respond_cerr(req, &e);
        goto fail;
    }
    if (upstream_infer(ctx->up, &p->in.req, ctx->timeout_ms, infer_done, p, &e)) {
        respond_cerr(req, &e);
        goto fail;
    }
    /* The request is packed and on its way; only what the answer needs is kept. */
    (void)oip_infer_compact(&p->in);
    http_request_drop_body(req);
    return;
fail:
    oip_infer_free(&p->in);
    free(p);
}

void oip_handle(void *arg, struct http_request *req)
{
    struct oip_ctx *ctx = arg;
    struct oip_route rt;
    oip_route_parse(req->path, &rt);
    if (rt.kind == OIP_NOT_FOUND) {
        respond_error(req, 404, NULL, "no such endpoint: %s %s (expected /v2, /v2/health/live, "
                      "/v2/health/ready, /v2/models/{name}[/versions/{v}][/ready|/infer])",
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
    default: respond_error(req, 404, NULL, "no such endpoint: %s", req->path);
    }
}
