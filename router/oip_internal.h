/*
 * What the OIP handler files (oip.c, oip_stats.c, oip_infer.c) share: the answers every
 * handler gives (JSON, errors naming what was wrong, the request id echoed back) and the
 * checks before a model's endpoints (unknown model or version: 404; no metadata yet:
 * 503), and each file's entry points. Private to router/.
 */
#ifndef CORRAL_ROUTER_OIP_INTERNAL_H
#define CORRAL_ROUTER_OIP_INTERNAL_H

#include "buf.h"
#include "oip.h"

/* An id safe to echo in a header line (printable, at most 128 bytes). */
int oip_header_safe(const char *s);
/* "X-Request-ID: <id>\r\n" in buf when the request has an id, else NULL. */
const char *oip_rid_header(struct http_request *req, char *buf, size_t len);
/* Answers b's JSON (taken) with the status; extra header lines or the request id. */
void oip_respond_json(struct http_request *req, int status, struct buf *b, const char *extra);
/* Answers {"error": "<sentence>"} and logs it with the request id. */
void oip_respond_error(struct http_request *req, int status, const char *extra,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void oip_respond_cerr(struct http_request *req, const struct cerr *e);
/* The served models' names, comma-separated, for messages. */
void oip_models_list(const struct upstream *up, char *buf, size_t len);
/* Counts an inference request refused before it was parsed. */
void oip_record_refused(struct oip_ctx *ctx, struct http_request *req, const char *model,
                        int status);
/* Answers 404 and returns 0 when the route's model or version is unknown. */
int oip_check_model(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt);
/* The model's metadata, or a 503 answer and NULL while no replica has told it. */
const Corral__MetadataResponse *oip_need_metadata(struct oip_ctx *ctx, struct http_request *req,
                                                  const struct oip_route *rt);
/* oip_check_model, then oip_need_metadata. */
const Corral__MetadataResponse *oip_known_metadata(struct oip_ctx *ctx, struct http_request *req,
                                                   const struct oip_route *rt);

/* oip_stats.c: /v2/models[/{m}[/versions/{v}]]/stats and /metrics. */
void oip_handle_gather(struct oip_ctx *ctx, struct http_request *req,
                       const struct oip_route *rt);
/* oip_infer.c: infer, v1 predict, and image classification (/classify, /predict). */
void oip_handle_infer(struct oip_ctx *ctx, struct http_request *req, const struct oip_route *rt);
void oip_handle_predict(struct oip_ctx *ctx, struct http_request *req,
                        const struct oip_route *rt);
void oip_handle_classify(struct oip_ctx *ctx, struct http_request *req, struct oip_route *rt);

#endif
