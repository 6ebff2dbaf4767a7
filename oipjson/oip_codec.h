/*
 * The Open Inference Protocol (KServe v2) JSON codec: infer request bodies in,
 * wire messages out, and replica answers back to JSON. The router's infer
 * endpoints and corralctl both use it; it depends on the wire schema, the
 * tensor type and the JSON reader (jdoc.h), never on an event loop or a
 * socket.
 *
 * Usage: oip_infer_parse (or oip_infer_raw, oip_predict_parse) turns a body
 * into a `struct oip_infer` whose `req` is ready to pack and send; after
 * sending, oip_infer_compact keeps only what the answer needs; when the
 * replica answers, oip_infer_response_render turns its InferResponse into the
 * body that goes back; oip_infer_free releases everything. The tensor
 * conversions (oip_json_array_to_tensor, oip_tensor_to_json, oip_classify)
 * and the half-precision helpers are usable alone.
 *
 * Untrusted input is bounds-checked throughout and every rejection names what
 * was wrong and what was expected.
 */
#ifndef CORRAL_OIPJSON_OIP_CODEC_H
#define CORRAL_OIPJSON_OIP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "corral.pb-c.h"
#include "error.h"
#include "jdoc.h"
#include "tensor.h"

/* Longest model, input or output name accepted, with its terminating NUL. */
#define OIP_NAME_MAX 256

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

/* IEEE half and bfloat16 conversions (round to nearest even). */
uint16_t oip_f32_to_f16(float f);
float oip_f16_to_f32(uint16_t h);
uint16_t oip_f32_to_bf16(float f);
float oip_bf16_to_f32(uint16_t h);

#endif
