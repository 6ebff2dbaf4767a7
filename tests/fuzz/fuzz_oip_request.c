/*
 * The OIP infer request decode, as router/oip.c's handle_infer and
 * handle_predict drive it after the HTTP server has read a request: the JSON
 * body, the binary tensor data extension (Inference-Header-Content-Length
 * splitting the body into JSON and binary parts), the raw one-input body
 * (Inference-Header-Content-Length: 0) and the v1 predict form. router/http.c
 * itself is bound to libuv and is not driven here.
 *
 * Input: byte 0 picks the form (low 2 bits) and the model metadata (the rest);
 * for the binary extension the next line is the header's value. A request that
 * parses is packed to the wire, decoded as a replica would (wire.c), and
 * compacted as after sending: all must succeed.
 */

#include "fuzz.h"
#include "oip_codec.h"
#include "wire.h"

/* Model metadata the raw and predict forms read inputs from. */
static int64_t shape_img[] = {-1, 2, 2};
static int64_t shape_vec[] = {-1, -1};
static int64_t shape_one[] = {-1};
static int64_t shape_fix[] = {3};
static Corral__TensorMetadata tm_img = {PROTOBUF_C_MESSAGE_INIT(&corral__tensor_metadata__descriptor),
                                        "img", CORRAL__DATA_TYPE__TYPE_FP32, 3, shape_img};
static Corral__TensorMetadata tm_vec = {PROTOBUF_C_MESSAGE_INIT(&corral__tensor_metadata__descriptor),
                                        "vec", CORRAL__DATA_TYPE__TYPE_INT64, 2, shape_vec};
static Corral__TensorMetadata tm_txt = {PROTOBUF_C_MESSAGE_INIT(&corral__tensor_metadata__descriptor),
                                        "txt", CORRAL__DATA_TYPE__TYPE_BYTES, 1, shape_one};
static Corral__TensorMetadata tm_half = {PROTOBUF_C_MESSAGE_INIT(&corral__tensor_metadata__descriptor),
                                         "half", CORRAL__DATA_TYPE__TYPE_FP16, 1, shape_fix};
static Corral__TensorMetadata tm_bool = {PROTOBUF_C_MESSAGE_INIT(&corral__tensor_metadata__descriptor),
                                         "flag", CORRAL__DATA_TYPE__TYPE_BOOL, 1, shape_one};
static Corral__TensorMetadata *in_img[] = {&tm_img};
static Corral__TensorMetadata *in_txt[] = {&tm_txt};
static Corral__TensorMetadata *in_half[] = {&tm_half};
static Corral__TensorMetadata *in_many[] = {&tm_vec, &tm_bool, &tm_half};

static Corral__MetadataResponse md_of(Corral__TensorMetadata **in, size_t n)
{
    Corral__MetadataResponse md;
    corral__metadata_response__init(&md);
    md.name = "m";
    md.inputs = in;
    md.n_inputs = n;
    return md;
}

/* The header check of router/oip.c's handle_infer; -1 when it answers 400. */
static int header_len(const char *hcl, size_t body_len, size_t *json_len)
{
    char *end = NULL;
    unsigned long long v = strtoull(hcl, &end, 10);
    if (!*hcl || *end || hcl[0] == '-' || v > body_len)
        return -1;
    *json_len = (size_t)v;
    return 0;
}

static void sent(struct oip_infer *in)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(wire_pack_request(&in->req, &buf, &len) == CORRAL_OK, "packing failed");
    Corral__Request *r = NULL;
    struct cerr e = {0};
    int rc = wire_decode_request(buf, len, &r, &e);
    CHECK(rc == CORRAL_OK, "the router sends what a replica refuses: %s", e.msg);
    corral__request__free_unpacked(r, NULL);
    free(buf);
    CHECK(oip_infer_compact(in) == CORRAL_OK, "compact failed");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned form = data[0] & 3, which = (data[0] >> 2) % 4;
    data++, size--;
    Corral__MetadataResponse md = which == 0   ? md_of(in_img, 1)
                                  : which == 1 ? md_of(in_txt, 1)
                                  : which == 2 ? md_of(in_half, 1)
                                               : md_of(in_many, 3);
    /* The body is copied so that ASan sees reads past its end. */
    uint8_t *body = NULL;
    size_t body_len = size, json_len = size;
    char hcl[48] = "";
    if (form == 1) {
        const uint8_t *nl = memchr(data, '\n', size < sizeof hcl ? size : sizeof hcl);
        if (!nl)
            return 0;
        memcpy(hcl, data, (size_t)(nl - data));
        hcl[nl - data] = 0;
        if (strlen(hcl) != (size_t)(nl - data))
            return 0; /* a NUL in a header value: http-parser would not deliver it */
        body_len = size - (size_t)(nl - data) - 1;
        data = nl + 1;
        if (header_len(hcl, body_len, &json_len))
            return 0;
    }
    body = (uint8_t *)fuzz_copy(data, body_len);
    if (!body)
        return 0;
    struct oip_infer in;
    struct cerr e = {0};
    int rc;
    if (form == 2)
        rc = oip_predict_parse(&md, (const char *)body, body_len, "m", "", &in, &e);
    else if (form == 3 || (form == 1 && json_len == 0))
        rc = oip_infer_raw(&md, body, body_len, "m", "1", &in, &e);
    else
        rc = oip_infer_parse((const char *)body, json_len, body + json_len, body_len - json_len, "m",
                             "", &in, &e);
    if (rc == CORRAL_OK)
        sent(&in);
    else
        CHECK(e.msg[0], "rejected (%d) without a message", rc);
    oip_infer_free(&in);
    free(body);
    return 0;
}
