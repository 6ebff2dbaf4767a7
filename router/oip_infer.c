/*
 * The asynchronous infer path: a parsed request (OIP infer, raw body, v1 predict, or an
 * image to classify) is sent to a replica through the upstream, and its answer rendered
 * when it comes back; a client that goes away cancels the call. Every request accepted
 * here gets exactly one answer, counted in the metrics with its status.
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
#include "oip_image.h"

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
        oip_respond_error(req, status, NULL, "%s", d->msg ? d->msg : corral_strerror(d->rc));
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
    int rc;
    if (!p->top_k) {
        rc = oip_infer_response_render(resp, &p->in, p->model, &body, &len, &jlen, &e);
    } else if (md && md->image) {
        rc = oip_classify_render(resp, md, p->top_k, p->model, &body, &len, &e);
        jlen = len;
    } else {
        rc = cerr_set(&e, CORRAL_EUNAVAIL, "metadata of model '%s' version %s is no longer "
                      "known, so its answer cannot be ranked; try again", p->model, version);
    }
    if (rc) {
        record(p, corral_err_http_status(e.code), version, d, -1, -1);
        oip_respond_cerr(req, &e);
        goto done;
    }
    record(p, 200, version, d, param_int(resp, "corral_queue_us"),
           param_int(resp, "corral_compute_us"));
    const char *rid = oip_rid_header(req, hb, sizeof hb);
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
        oip_respond_cerr(req, &e);
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
        oip_respond_error(req, 500, NULL, "out of memory accepting the request");
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
    oip_respond_cerr(p->req, e);
    pending_free(p);
}

void oip_handle_infer(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt)
{
    struct cerr e = {0};
    if (!oip_check_model(ctx, req, rt))
        return;
    size_t json_len = req->body_len;
    int raw = 0;
    const char *hcl = http_request_header(req, "Inference-Header-Content-Length");
    if (hcl) {
        char *end = NULL;
        unsigned long long v = strtoull(hcl, &end, 10);
        if (!*hcl || *end || hcl[0] == '-' || v > req->body_len) {
            oip_respond_error(req, 400, NULL, "Inference-Header-Content-Length '%.40s' is not a byte "
                          "count within the %zu byte body", hcl, req->body_len);
            return;
        }
        json_len = (size_t)v;
        raw = v == 0;
    }
    const Corral__MetadataResponse *md = NULL;
    if (raw && !(md = oip_need_metadata(ctx, req, rt)))
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
    if (p->in.id && oip_header_safe(p->in.id))
        req->user = p->in.id; /* the OIP id wins over X-Request-ID */
    dispatch(p);
}

void oip_handle_predict(struct oip_ctx *ctx, struct http_request *req,
                           const struct oip_route *rt)
{
    struct cerr e = {0};
    const Corral__MetadataResponse *md = oip_known_metadata(ctx, req, rt);
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
void oip_handle_classify(struct oip_ctx *ctx, struct http_request *req, struct oip_route *rt)
{
    struct cerr e = {0};
    int top_k = 0, rc;
    if (rt->kind == OIP_PREDICT) {
        rc = oip_query_get(req->query, "model", rt->model, sizeof rt->model, &e);
        if (rc == 0 && upstream_model_count(ctx->up) == 1)
            snprintf(rt->model, sizeof rt->model, "%s", upstream_model_name(ctx->up, 0));
        else if (rc == 0) {
            char list[512];
            oip_models_list(ctx->up, list, sizeof list);
            oip_respond_error(req, 400, NULL, "/predict needs ?model=NAME when the router serves "
                          "several models (serving: %s)", list);
            return;
        }
        if (rc >= 0 && oip_query_get(req->query, "version", rt->version, sizeof rt->version,
                                     &e) < 0)
            rc = -1;
        if (rc < 0) {
            oip_respond_cerr(req, &e);
            return;
        }
    }
    if (oip_query_top_k(req->query, &top_k, &e)) {
        oip_respond_cerr(req, &e);
        return;
    }
    const Corral__MetadataResponse *md = oip_known_metadata(ctx, req, rt);
    if (!md)
        return;
    if (!md->image) {
        oip_respond_error(req, 400, NULL, "model '%s' does not take images: its config.json has no "
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
