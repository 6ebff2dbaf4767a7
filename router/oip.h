/*
 * Open Inference Protocol (KServe v2) REST endpoints and the JSON <-> wire
 * conversions behind them.
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
 * The conversion functions are separate so they can be tested alone:
 * oip_route_parse maps a path to an endpoint, oip_infer_parse turns an infer
 * body (JSON, optionally followed by binary tensor data) into a wire Request,
 * oip_infer_response_render turns a replica's InferResponse into the body that
 * goes back. Untrusted input is bounds-checked throughout and every rejection
 * names what was wrong and what was expected.
 */
#ifndef CORRAL_ROUTER_OIP_H
#define CORRAL_ROUTER_OIP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "corral.pb-c.h"
#include "error.h"
#include "http.h"
#include "jdoc.h"
#include "tensor.h"
#include "upstream.h"

#define OIP_NAME_MAX 256

struct metrics;

struct oip_ctx {
    struct upstream *up;
    struct metrics *metrics; /* may be NULL: nothing is recorded, /metrics answers 503 */
    unsigned shard;          /* this thread's index into the metrics */
    unsigned timeout_ms;     /* default deadline of one inference */
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

/* ---- infer request ---- */

/*
 * A parsed infer request, ready to send: `req` is the wire Request whose
 * pointers all lead into memory owned by this struct (free with
 * oip_infer_free). Requested outputs are kept for the answer: `out_names`
 * (NULL when every output is wanted) and whether each is wanted as binary.
 */
struct oip_infer {
    Corral__Request req;
    Corral__InferRequest ir;
    Corral__Tensor *inputs;
    Corral__Tensor **input_ptrs;
    Corral__RequestedOutput *outputs;
    Corral__RequestedOutput **output_ptrs;
    Corral__Parameter *params;
    Corral__Parameter **param_ptrs;
    char *id; /* NULL when the request had none */
    size_t n_out;
    char **out_names;
    int *out_binary;
    int binary_all; /* parameters.binary_data_output */
    int *out_class; /* per requested output: classification k, 0 when not asked */
    uint64_t timeout_us; /* parameters.timeout, 0 when absent */
    int predict;         /* v1 predict form: answer {"predictions"} */
    /* Class names for classification, borrowed by the caller just for rendering. */
    char **labels;
    size_t n_labels;
    struct jdoc doc; /* the parsed body; names and the id borrow from it */
    char *keep;     /* owned copies of id and out_names after oip_infer_compact */
};

/*
 * Parses an infer body. `json_len` bytes of `body` are JSON; the following
 * `bin_len` bytes are binary tensor data (binary_tensor_data extension), in
 * the order of the inputs that carry parameters.binary_data_size.
 */
int oip_infer_parse(const char *body, size_t json_len, const uint8_t *bin, size_t bin_len,
                    const char *model, const char *version, struct oip_infer *out,
                    struct cerr *e);
void oip_infer_free(struct oip_infer *in);
/*
 * Builds the request of an infer whose whole body is the raw bytes of the one
 * input (Inference-Header-Content-Length: 0): the input's name, datatype and
 * shape come from the model metadata, a variable batch dimension becomes 1 and
 * one other variable dimension is derived from the byte count. A BYTES input
 * takes the body as one element. Every output is answered as JSON.
 */
int oip_infer_raw(const Corral__MetadataResponse *md, const uint8_t *body, size_t len,
                  const char *model, const char *version, struct oip_infer *out, struct cerr *e);
/*
 * Parses a v1 predict body {"instances": [...]}: each instance is one row of
 * the single input (a value or nested array following its non-batch
 * dimensions), or an object {input name: row} for models with several inputs.
 * Datatypes and shapes come from the model metadata.
 */
int oip_predict_parse(const Corral__MetadataResponse *md, const char *body, size_t len,
                      const char *model, const char *version, struct oip_infer *out,
                      struct cerr *e);
/*
 * Once the request has been packed and sent, drops everything but what the
 * answer needs (id, requested outputs and their binary flags), so a large
 * request does not stay in memory while the replica works. `req`/`ir` must not
 * be used afterwards. Returns CORRAL_ENOMEM (leaving `in` intact) on failure.
 */
int oip_infer_compact(struct oip_infer *in);

/*
 * Converts JSON `data` (the array token `data` of document `d`: flat values,
 * or nested consistently with the shape) of one input into raw little-endian
 * bytes in a malloc'd *out. `what` names the input in messages ("input 'x'").
 */
int oip_json_array_to_tensor(const char *what, const struct jdoc *d, uint32_t data, enum dtype dt,
                             const int64_t *dims, int ndim, uint8_t **out, size_t *out_len,
                             struct cerr *e);
/* The same with the array's elements given as token indices (predict's instances). */
int oip_json_to_tensor(const char *what, const struct jdoc *d, const uint32_t *items,
                       size_t n_items, enum dtype dt, const int64_t *dims, int ndim,
                       uint8_t **out, size_t *out_len, struct cerr *e);

/* ---- infer response ---- */

/*
 * Renders an InferResponse as the HTTP body. Outputs are filtered and ordered
 * as `in` requested. When any output goes binary, *json_len is the length of
 * the JSON part (for Inference-Header-Content-Length); otherwise it equals *len.
 * Outputs asked with classification k become BYTES "score:index[:label]", the
 * top k per batch row, using in->labels when set. With in->predict the body is
 * {"predictions": [...]} instead: one entry per batch row (the row itself for
 * a single output, an object by output name otherwise). Response parameters
 * named corral_* are the replica's own timings and are not passed on.
 */
int oip_infer_response_render(const Corral__InferResponse *r, const struct oip_infer *in,
                              const char *model, char **body, size_t *len, size_t *json_len,
                              struct cerr *e);
/*
 * Classification: the top k of every row of a numeric tensor t (rows are the
 * first dimension when it has two or more), as a BYTES tensor whose shape and
 * data (malloc'd) are written to shape (2 entries), ndim, data and len.
 */
int oip_classify(const Corral__Tensor *t, int k, char *const *labels, size_t n_labels,
                 int64_t *shape, int *ndim, uint8_t **data, size_t *len, struct cerr *e);
/* Appends the JSON array of a tensor's elements (FP32 printed so it round-trips). */
int oip_tensor_to_json(struct buf *b, const char *what, enum dtype dt, const uint8_t *data,
                       size_t nbytes, struct cerr *e);

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

/* IEEE half and bfloat16 conversions (round to nearest even). */
uint16_t oip_f32_to_f16(float f);
float oip_f16_to_f32(uint16_t h);
uint16_t oip_f32_to_bf16(float f);
float oip_bf16_to_f32(uint16_t h);

#endif
