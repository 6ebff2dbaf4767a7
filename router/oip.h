/*
 * Open Inference Protocol (KServe v2) REST endpoints.
 *
 * Usage: fill a `struct oip_ctx` (the thread's upstream table, the shared
 * metrics, the thread's index and the default per-request timeout) and pass
 * oip_handle as the HTTP server's handler with the context as its argument.
 * Every request gets exactly one answer; errors are {"error": "<sentence>"}
 * with the status of the corral error code.
 *
 * Endpoints: the OIP v2 REST API (health, server and model metadata and
 * readiness with or without /versions/{v}, infer, statistics) with the
 * binary_tensor_data, classification, statistics and schedule_policy
 * extensions, and Triton's model configuration (GET .../config) and model
 * repository index (POST /v2/repository/index); POST /v1/models/{m}:predict ({"instances"} -> {"predictions"});
 * GET /metrics (Prometheus text); GET /v2/corral/replicas (the replica table
 * as this thread applies it, with the canary splits of the models it has
 * replicas of, for corralctl status). The request id is the OIP `id`, else the X-Request-ID
 * header; it is echoed in the X-Request-ID answer header and in the log line.
 *
 * oip_route_parse maps a path to an endpoint and is separate so it can be
 * tested alone. The JSON <-> wire conversions behind the infer endpoints
 * (oip_infer_parse, oip_infer_response_render, ...) are the OIP JSON codec,
 * oipjson/oip_codec.h, which corralctl shares.
 */
#ifndef CORRAL_ROUTER_OIP_H
#define CORRAL_ROUTER_OIP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "corral.pb-c.h"
#include "error.h"
#include "http.h"
#include "oip_codec.h"
#include "upstream.h"

struct metrics;

struct oip_ctx {
    struct upstream *up;
    struct metrics *metrics; /* may be NULL: nothing is recorded, /metrics answers 503 */
    unsigned shard;          /* this thread's index into the metrics */
    unsigned timeout_ms;     /* default deadline of one inference */
    size_t max_image_bytes;  /* largest image a classify request may carry (0: 16 MiB) */
    /* --token-file: every endpoint but health, model readiness and /metrics needs
     * "Authorization: Bearer <token>"; NULL: open. Borrowed. */
    const char *token;
};

/* The HTTP handler; `arg` is a struct oip_ctx. */
void oip_handle(void *arg, struct http_request *req);

/* ---- routing ---- */

enum oip_route_kind {
    OIP_NOT_FOUND = 0,
    OIP_HEALTH_LIVE,
    OIP_HEALTH_READY,
    OIP_SERVER_META,
    OIP_MODEL_META,
    OIP_MODEL_READY,
    OIP_MODEL_INFER,
    OIP_MODEL_STATS,  /* /v2/models/{m}[/versions/{v}]/stats */
    OIP_ALL_STATS,    /* /v2/models/stats */
    OIP_METRICS,      /* /metrics */
    OIP_V1_MODEL,     /* /v1/models/{m} */
    OIP_V1_PREDICT,   /* /v1/models/{m}:predict */
    OIP_REPLICAS,     /* /v2/corral/replicas */
    OIP_MODEL_CONFIG, /* /v2/models/{m}[/versions/{v}]/config */
    OIP_REPO_INDEX,   /* /v2/repository/index */
    OIP_REPO_CONTROL, /* /v2/repository/models/{m}/load|unload: not served here (501) */
    OIP_CLASSIFY,     /* /v2/models/{m}[/versions/{v}]/classify: an image in, labels out */
    OIP_PREDICT,      /* /predict?model=M: the same, in the form FastAPI servers use */
};

struct oip_route {
    enum oip_route_kind kind;
    char model[OIP_NAME_MAX];
    char version[64]; /* "" when the path names no version */
    const char *allow; /* methods the endpoint accepts, for 405 and Allow */
};

/* Maps a decoded path to an endpoint; kind OIP_NOT_FOUND when none matches. */
void oip_route_parse(const char *path, struct oip_route *rt);
/* True when `method_name` is one of rt->allow. */
int oip_route_allows(const struct oip_route *rt, const char *method_name);

/* ---- model configuration and repository extensions (oip_config.c) ---- */

/*
 * How a model version is served, for its configuration: the versions the
 * replicas report (comma separated, as upstream_model_versions writes them)
 * and the replicas of the version described, by kind. GPU ordinals are as the
 * replicas see them (cuda:N), distinct, at most OIP_MAX_GPUS.
 */
#define OIP_MAX_GPUS 16
struct oip_serving {
    char versions[256];
    unsigned cpu, gpu, other;
    int gpus[OIP_MAX_GPUS];
    size_t n_gpus;
};
/* Fills `s` from the replica table: replicas of `model` serving md's version. */
void oip_serving_collect(const struct upstream *up, const char *model,
                         const Corral__MetadataResponse *md, struct oip_serving *s);
/*
 * Appends the model configuration as Triton's GET .../config answers it: the
 * field names of Triton's ModelConfig, 64-bit numbers as JSON numbers, data
 * types as TYPE_FP32 etc. (BYTES is TYPE_STRING), dims without the batch
 * dimension when max_batch_size > 0, dynamic_batching only then. `md` is one
 * replica's metadata answer; its batching section may be absent (an older
 * replica), which reads as max_batch_size 0.
 */
void oip_model_config_render(struct buf *b, const char *model, const Corral__MetadataResponse *md,
                             const struct oip_serving *s);
/*
 * Reads a repository index body: empty (or only whitespace), or a JSON object
 * whose optional "ready" member is a boolean (other members are ignored, as
 * Triton does). *ready_only is set from it.
 */
int oip_repo_index_parse(const char *body, size_t len, int *ready_only, struct cerr *e);
/*
 * Appends the repository index: [{"name", "version", "state", "reason"}] per
 * model version in the replica table, sorted by name and version; state READY
 * when a replica of it takes traffic, UNAVAILABLE otherwise (reason: why not).
 * A model none of whose replicas has reported its version yet has no
 * "version". With ready_only, READY entries only.
 */
void oip_repo_index_render(struct buf *b, const struct upstream *up, int ready_only);

#endif
