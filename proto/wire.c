#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wire_check_tensor(const Corral__Tensor *t, const char *role, struct cerr *e)
{
    const char *nm = t->name ? t->name : "";
    char what[160];
    snprintf(what, sizeof what, "%s '%.100s'", role, nm);
    if (!dtype_valid((int)t->datatype))
        return cerr_set(e, CORRAL_EINVAL, "%s has datatype %d, expected a valid datatype", what,
                        (int)t->datatype);
    if (t->n_shape > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "%s has %zu dimensions, expected at most %d", what,
                        t->n_shape, TENSOR_MAX_DIMS);
    return tensor_check_size(what, (enum dtype)t->datatype, t->shape, (int)t->n_shape,
                             t->data.data, t->data.len, e);
}

int wire_decode_request(const void *buf, size_t len, Corral__Request **out, struct cerr *e)
{
    *out = NULL;
    if (len > WIRE_MAX_MESSAGE)
        return cerr_set(e, CORRAL_ETOOLARGE, "request of %zu bytes exceeds the %zu byte limit",
                        len, WIRE_MAX_MESSAGE);
    Corral__Request *r = corral__request__unpack(NULL, len, buf);
    if (!r)
        return cerr_set(e, CORRAL_EPARSE, "request is not a valid corral.Request message");
    if (r->kind_case == CORRAL__REQUEST__KIND_INFER) {
        const Corral__InferRequest *ir = r->infer;
        for (size_t i = 0; i < ir->n_inputs; i++) {
            int rc = wire_check_tensor(ir->inputs[i], "input", e);
            if (rc) {
                corral__request__free_unpacked(r, NULL);
                return rc;
            }
        }
    } else if (r->kind_case == CORRAL__REQUEST__KIND__NOT_SET) {
        corral__request__free_unpacked(r, NULL);
        return cerr_set(e, CORRAL_EINVAL, "request carries no kind (expected infer, health or metadata)");
    }
    *out = r;
    return CORRAL_OK;
}

int wire_decode_response(const void *buf, size_t len, Corral__Response **out, struct cerr *e)
{
    *out = NULL;
    if (len > WIRE_MAX_MESSAGE)
        return cerr_set(e, CORRAL_ETOOLARGE, "response of %zu bytes exceeds the %zu byte limit",
                        len, WIRE_MAX_MESSAGE);
    Corral__Response *r = corral__response__unpack(NULL, len, buf);
    if (!r)
        return cerr_set(e, CORRAL_EPARSE, "response is not a valid corral.Response message");
    int rc = CORRAL_OK;
    switch (r->kind_case) {
    case CORRAL__RESPONSE__KIND_INFER:
        for (size_t i = 0; i < r->infer->n_outputs && !rc; i++)
            rc = wire_check_tensor(r->infer->outputs[i], "output", e);
        break;
    case CORRAL__RESPONSE__KIND_ERROR:
        if (!corral_err_known(r->error->code) || r->error->code == CORRAL_OK)
            rc = cerr_set(e, CORRAL_EPARSE, "response carries unknown error code %d",
                          (int)r->error->code);
        break;
    case CORRAL__RESPONSE__KIND_HEALTH:
    case CORRAL__RESPONSE__KIND_METADATA:
    case CORRAL__RESPONSE__KIND_STATS:
        break;
    default:
        rc = cerr_set(e, CORRAL_EPARSE, "response carries no kind");
    }
    if (rc) {
        corral__response__free_unpacked(r, NULL);
        return rc;
    }
    *out = r;
    return CORRAL_OK;
}

int wire_pack_request(const Corral__Request *req, uint8_t **buf, size_t *len)
{
    size_t n = corral__request__get_packed_size(req);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return CORRAL_ENOMEM;
    *len = corral__request__pack(req, b);
    *buf = b;
    return CORRAL_OK;
}

int wire_pack_response(const Corral__Response *resp, uint8_t **buf, size_t *len)
{
    size_t n = corral__response__get_packed_size(resp);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return CORRAL_ENOMEM;
    *len = corral__response__pack(resp, b);
    *buf = b;
    return CORRAL_OK;
}

int wire_pack_error(int code, const char *message, uint8_t **buf, size_t *len)
{
    Corral__Error err = CORRAL__ERROR__INIT;
    Corral__Response resp = CORRAL__RESPONSE__INIT;
    err.code = code;
    err.message = (char *)(message ? message : corral_strerror(code));
    resp.kind_case = CORRAL__RESPONSE__KIND_ERROR;
    resp.error = &err;
    return wire_pack_response(&resp, buf, len);
}

void wire_tensor_view(const Corral__Tensor *src, struct tensor *dst)
{
    memset(dst, 0, sizeof *dst);
    dst->name = src->name;
    dst->dtype = (enum dtype)src->datatype;
    dst->ndim = (int)src->n_shape;
    for (size_t i = 0; i < src->n_shape && i < TENSOR_MAX_DIMS; i++)
        dst->dims[i] = src->shape[i];
    dst->data = src->data.data;
    dst->nbytes = src->data.len;
    dst->owned = 0;
}
