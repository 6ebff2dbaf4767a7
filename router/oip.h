/*
 * Open Inference Protocol (KServe v2) REST endpoints and the JSON <-> wire
 * conversions behind them.
 *
 * Usage: fill a `struct oip_ctx` (the upstream table and the per-request
 * timeout) and pass oip_handle as the HTTP server's handler with the context
 * as its argument. Every request gets exactly one answer; errors are
 * {"error": "<sentence>"} with the status of the corral error code.
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

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "corral.pb-c.h"
#include "error.h"
#include "http.h"
#include "tensor.h"
#include "upstream.h"

#define OIP_NAME_MAX 256

struct oip_ctx {
    struct upstream *up;
    unsigned timeout_ms;
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
    json_t *root;   /* kept so the strings borrowed from it stay valid */
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
 * Once the request has been packed and sent, drops everything but what the
 * answer needs (id, requested outputs and their binary flags), so a large
 * request does not stay in memory while the replica works. `req`/`ir` must not
 * be used afterwards. Returns CORRAL_ENOMEM (leaving `in` intact) on failure.
 */
int oip_infer_compact(struct oip_infer *in);

/*
 * Converts JSON `data` (flat, or nested consistently with the shape) of one
 * input into raw little-endian bytes in a malloc'd *out. `what` names the
 * input in messages ("input 'x'").
 */
int oip_json_to_tensor(const char *what, json_t *data, enum dtype dt, const int64_t *dims,
                       int ndim, uint8_t **out, size_t *out_len, struct cerr *e);

/* ---- infer response ---- */

/*
 * Renders an InferResponse as the HTTP body. Outputs are filtered and ordered
 * as `in` requested. When any output goes binary, *json_len is the length of
 * the JSON part (for Inference-Header-Content-Length); otherwise it equals *len.
 */
int oip_infer_response_render(const Corral__InferResponse *r, const struct oip_infer *in,
                              const char *model, char **body, size_t *len, size_t *json_len,
                              struct cerr *e);
/* Appends the JSON array of a tensor's elements (FP32 printed so it round-trips). */
int oip_tensor_to_json(struct buf *b, const char *what, enum dtype dt, const uint8_t *data,
                       size_t nbytes, struct cerr *e);

/* IEEE half and bfloat16 conversions (round to nearest even). */
uint16_t oip_f32_to_f16(float f);
float oip_f16_to_f32(uint16_t h);
uint16_t oip_f32_to_bf16(float f);
float oip_bf16_to_f32(uint16_t h);

#endif
