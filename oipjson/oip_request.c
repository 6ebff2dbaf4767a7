/*
 * Infer requests from HTTP bodies: the OIP JSON body (with binary tensor data
 * after it), the raw one-input body and the v1 predict form, each turned into
 * the wire InferRequest sent to a replica.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip_codec.h"

/* ---- infer request ---- */

/* Fetches a string member that must not contain NUL; *out borrows from the document. */
static int get_name(const struct jdoc *d, uint32_t obj, const char *key, const char *what,
                    const char **out, struct cerr *e)
{
    uint32_t v = jdoc_get(d, obj, key);
    if (v == JDOC_NONE)
        return cerr_set(e, CORRAL_EINVAL, "%s has no '%s' (expected a string)", what, key);
    if (jdoc_type(d, v) != JT_STRING)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' is %s, expected a string", what, key,
                        jdoc_type_name(d, v));
    const char *s = jdoc_str(d, v);
    if (strlen(s) != jdoc_strlen(d, v) || !s[0] || strlen(s) >= OIP_NAME_MAX)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' must be 1 to %d characters without NUL", what,
                        key, OIP_NAME_MAX - 1);
    *out = s;
    return CORRAL_OK;
}

/* A member that must be a non-negative integer (when present); *have says whether it was. */
static int get_count(const struct jdoc *d, uint32_t v, uint64_t *out)
{
    int64_t x;
    if (jdoc_int64(d, v, &x) == JNUM_OK && x >= 0) {
        *out = (uint64_t)x;
        return 0;
    }
    return -1;
}

static int convert_params(const struct jdoc *d, uint32_t obj, const char *what, const char *skip,
                          Corral__Parameter **arr, Corral__Parameter ***ptrs, size_t *n,
                          struct cerr *e)
{
    *n = 0;
    if (obj == JDOC_NONE)
        return CORRAL_OK;
    if (jdoc_type(d, obj) != JT_OBJECT)
        return cerr_set(e, CORRAL_EINVAL, "%s 'parameters' is %s, expected an object", what,
                        jdoc_type_name(d, obj));
    size_t cnt = jdoc_size(d, obj);
    *arr = calloc(cnt ? cnt : 1, sizeof **arr);
    *ptrs = calloc(cnt ? cnt : 1, sizeof **ptrs);
    if (!*arr || !*ptrs)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting parameters");
    for (uint32_t k = jdoc_first_key(d, obj); k != JDOC_NONE; k = jdoc_next_key(d, obj, k)) {
        const char *key = jdoc_str(d, k);
        uint32_t v = k + 1;
        if (skip && strcmp(key, skip) == 0)
            continue;
        Corral__Parameter *p = &(*arr)[*n];
        corral__parameter__init(p);
        p->key = (char *)key;
        switch (jdoc_type(d, v)) {
        case JT_STRING:
            p->value_case = CORRAL__PARAMETER__VALUE_STRING_VALUE;
            p->string_value = (char *)jdoc_str(d, v);
            break;
        case JT_TRUE:
        case JT_FALSE:
            p->value_case = CORRAL__PARAMETER__VALUE_BOOL_VALUE;
            p->bool_value = jdoc_type(d, v) == JT_TRUE;
            break;
        case JT_NUMBER:
            if (jdoc_int64(d, v, &p->int64_value) == JNUM_OK) {
                p->value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
            } else if (jdoc_double(d, v, &p->double_value) == JNUM_OK) {
                p->value_case = CORRAL__PARAMETER__VALUE_DOUBLE_VALUE;
            } else {
                return cerr_set(e, CORRAL_EINVAL, "%s parameter '%s' is a number out of range",
                                what, key);
            }
            break;
        default:
            return cerr_set(e, CORRAL_EINVAL, "%s parameter '%s' is %s, expected a string, "
                            "number or boolean", what, key, jdoc_type_name(d, v));
        }
        (*ptrs)[*n] = p;
        (*n)++;
    }
    return CORRAL_OK;
}

static int parse_shape(const struct jdoc *d, uint32_t in, const char *what, int64_t *dims,
                       int *ndim, struct cerr *e)
{
    uint32_t s = jdoc_get(d, in, "shape");
    if (s == JDOC_NONE)
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'shape' (expected an array of dimension "
                        "sizes, e.g. [1, 64])", what);
    if (!jdoc_is_array(d, s))
        return cerr_set(e, CORRAL_EINVAL, "%s 'shape' is %s, expected an array of dimension "
                        "sizes", what, jdoc_type_name(d, s));
    size_t n = jdoc_size(d, s);
    if (n > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "%s shape has %zu dimensions, expected at most %d",
                        what, n, TENSOR_MAX_DIMS);
    size_t i = 0;
    for (uint32_t k = s + 1; k < jdoc_end(d, s); k = jdoc_skip(d, k), i++) {
        int64_t x;
        int rc = jdoc_int64(d, k, &x);
        if (rc != JNUM_OK || x < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s shape dimension %zu is %s, expected an integer "
                            ">= 0", what, i,
                            rc == JNUM_OK ? "negative" : rc == JNUM_RANGE ? "out of range"
                            : rc == JNUM_NOT_INTEGER ? "not an integer" : jdoc_type_name(d, k));
        dims[i] = x;
    }
    *ndim = (int)n;
    return CORRAL_OK;
}

static int parse_input(const struct jdoc *d, uint32_t in, size_t idx, const uint8_t *bin,
                       size_t bin_len, size_t *bin_off, Corral__Tensor *t, struct cerr *e)
{
    char what[OIP_NAME_MAX + 16];
    int64_t dims[TENSOR_MAX_DIMS];
    int ndim = 0, rc;
    const char *name, *dtn;
    snprintf(what, sizeof what, "input %zu", idx);
    if (jdoc_type(d, in) != JT_OBJECT)
        return cerr_set(e, CORRAL_EINVAL, "%s is %s, expected an object {\"name\", \"shape\", "
                        "\"datatype\", \"data\"}", what, jdoc_type_name(d, in));
    if ((rc = get_name(d, in, "name", what, &name, e)))
        return rc;
    snprintf(what, sizeof what, "input '%s'", name);
    if ((rc = parse_shape(d, in, what, dims, &ndim, e)))
        return rc;
    uint32_t dtj = jdoc_get(d, in, "datatype");
    if (dtj == JDOC_NONE || jdoc_type(d, dtj) != JT_STRING)
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'datatype' string (expected one of BOOL, "
                        "UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, "
                        "FP32, FP64, BYTES)", what);
    dtn = jdoc_str(d, dtj);
    enum dtype dt = dtype_from_name(dtn);
    if (dt == DT_INVALID)
        return cerr_set(e, CORRAL_EINVAL, "%s has unknown datatype '%.40s' (expected one of BOOL, "
                        "UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, "
                        "FP32, FP64, BYTES)", what, dtn);
    uint32_t params = jdoc_get(d, in, "parameters");
    if (params != JDOC_NONE && jdoc_type(d, params) != JT_OBJECT)
        return cerr_set(e, CORRAL_EINVAL, "%s 'parameters' is %s, expected an object", what,
                        jdoc_type_name(d, params));
    uint32_t bsz = jdoc_get(d, params, "binary_data_size");
    uint32_t data = jdoc_get(d, in, "data");
    t->name = (char *)name;
    t->datatype = (Corral__DataType)dt;
    t->n_shape = (size_t)ndim;
    t->shape = malloc(sizeof(int64_t) * (ndim ? (size_t)ndim : 1));
    if (!t->shape)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", what);
    memcpy(t->shape, dims, sizeof(int64_t) * (size_t)ndim);
    if (bsz != JDOC_NONE) {
        uint64_t k;
        if (data != JDOC_NONE)
            return cerr_set(e, CORRAL_EINVAL, "%s has both 'data' and parameters.binary_data_size;"
                            " expected one of them", what);
        if (get_count(d, bsz, &k))
            return cerr_set(e, CORRAL_EINVAL, "%s binary_data_size must be an integer >= 0", what);
        if (k > bin_len - *bin_off)
            return cerr_set(e, CORRAL_EINVAL, "%s binary_data_size is %llu, but only %zu bytes of "
                            "binary data remain after the JSON header", what,
                            (unsigned long long)k, bin_len - *bin_off);
        if ((rc = tensor_check_size(what, dt, dims, ndim, bin + *bin_off, (size_t)k, e)))
            return rc;
        t->data.data = malloc(k ? (size_t)k : 1);
        if (!t->data.data)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory for %s", what);
        memcpy(t->data.data, bin + *bin_off, (size_t)k);
        t->data.len = (size_t)k;
        *bin_off += (size_t)k;
        return CORRAL_OK;
    }
    if (data == JDOC_NONE)
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'data' (expected an array of values, or "
                        "parameters.binary_data_size with binary tensor data)", what);
    return oip_json_array_to_tensor(what, d, data, dt, dims, ndim, &t->data.data, &t->data.len,
                                    e);
}

static int parse_outputs(const struct jdoc *d, uint32_t outs, struct oip_infer *in,
                         struct cerr *e)
{
    if (outs == JDOC_NONE)
        return CORRAL_OK;
    if (!jdoc_is_array(d, outs))
        return cerr_set(e, CORRAL_EINVAL, "request 'outputs' is %s, expected an array of "
                        "{\"name\"} objects", jdoc_type_name(d, outs));
    size_t n = jdoc_size(d, outs);
    in->outputs = calloc(n ? n : 1, sizeof *in->outputs);
    in->output_ptrs = calloc(n ? n : 1, sizeof *in->output_ptrs);
    in->out_names = calloc(n ? n : 1, sizeof *in->out_names);
    in->out_binary = calloc(n ? n : 1, sizeof *in->out_binary);
    in->out_class = calloc(n ? n : 1, sizeof *in->out_class);
    if (!in->outputs || !in->output_ptrs || !in->out_names || !in->out_binary || !in->out_class)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting outputs");
    size_t i = 0;
    for (uint32_t o = outs + 1; o < jdoc_end(d, outs); o = jdoc_skip(d, o), i++) {
        char what[OIP_NAME_MAX + 16];
        const char *name;
        int rc;
        snprintf(what, sizeof what, "requested output %zu", i);
        if (jdoc_type(d, o) != JT_OBJECT)
            return cerr_set(e, CORRAL_EINVAL, "%s is %s, expected an object {\"name\"}", what,
                            jdoc_type_name(d, o));
        if ((rc = get_name(d, o, "name", what, &name, e)))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(in->out_names[j], name) == 0)
                return cerr_set(e, CORRAL_EINVAL, "output '%s' is requested twice", name);
        uint32_t p = jdoc_get(d, o, "parameters");
        if (p != JDOC_NONE && jdoc_type(d, p) != JT_OBJECT)
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' 'parameters' is %s, "
                            "expected an object", name, jdoc_type_name(d, p));
        uint32_t bd = jdoc_get(d, p, "binary_data");
        if (bd != JDOC_NONE && jdoc_type(d, bd) != JT_TRUE && jdoc_type(d, bd) != JT_FALSE)
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' binary_data must be true or "
                            "false", name);
        uint32_t cls = jdoc_get(d, p, "classification");
        uint64_t k = 0;
        if (cls != JDOC_NONE && (get_count(d, cls, &k) || k < 1 || k > 1000000))
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' classification must be an "
                            "integer from 1 to 1000000 (the number of top classes)", name);
        in->out_class[i] = (int)k;
        Corral__RequestedOutput *ro = &in->outputs[i];
        corral__requested_output__init(ro);
        ro->name = (char *)name;
        in->output_ptrs[i] = ro;
        in->out_names[i] = (char *)name;
        in->out_binary[i] = bd != JDOC_NONE ? jdoc_type(d, bd) == JT_TRUE : in->binary_all;
        in->n_out = i + 1;
    }
    in->ir.n_outputs = n;
    in->ir.outputs = in->output_ptrs;
    return CORRAL_OK;
}

static void infer_init(struct oip_infer *in, const char *model, const char *version)
{
    memset(in, 0, sizeof *in);
    corral__request__init(&in->req);
    corral__infer_request__init(&in->ir);
    in->req.kind_case = CORRAL__REQUEST__KIND_INFER;
    in->req.infer = &in->ir;
    in->ir.model_name = (char *)model;
    in->ir.model_version = (char *)(version ? version : "");
}

static int infer_alloc_inputs(struct oip_infer *in, size_t n, struct cerr *e)
{
    in->inputs = calloc(n, sizeof *in->inputs);
    in->input_ptrs = calloc(n, sizeof *in->input_ptrs);
    if (!in->inputs || !in->input_ptrs)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting inputs");
    for (size_t i = 0; i < n; i++) {
        corral__tensor__init(&in->inputs[i]);
        in->input_ptrs[i] = &in->inputs[i];
    }
    in->ir.inputs = in->input_ptrs;
    in->ir.n_inputs = n;
    return CORRAL_OK;
}

static int parse_body(struct oip_infer *in, const char *body, size_t len, struct cerr *e)
{
    int rc = jdoc_parse(&in->doc, body, len, e);
    if (rc == CORRAL_EINVAL)
        return cerr_prefix(e, "request body is not valid JSON");
    return rc;
}

int oip_infer_parse(const char *body, size_t json_len, const uint8_t *bin, size_t bin_len,
                    const char *model, const char *version, struct oip_infer *in, struct cerr *e)
{
    int rc;
    infer_init(in, model, version);
    if ((rc = parse_body(in, body, json_len, e)))
        return rc;
    const struct jdoc *d = &in->doc;
    const uint32_t root = 0;
    if (jdoc_type(d, root) != JT_OBJECT)
        return cerr_set(e, CORRAL_EINVAL, "request body is %s, expected an object "
                        "{\"inputs\": [...]}", jdoc_type_name(d, root));
    uint32_t id = jdoc_get(d, root, "id");
    if (id != JDOC_NONE) {
        if (jdoc_type(d, id) != JT_STRING)
            return cerr_set(e, CORRAL_EINVAL, "request 'id' is %s, expected a string",
                            jdoc_type_name(d, id));
        in->id = (char *)jdoc_str(d, id);
        in->ir.id = in->id;
    }
    uint32_t params = jdoc_get(d, root, "parameters");
    if (params != JDOC_NONE && jdoc_type(d, params) == JT_OBJECT) {
        uint32_t bo = jdoc_get(d, params, "binary_data_output");
        if (bo != JDOC_NONE && jdoc_type(d, bo) != JT_TRUE && jdoc_type(d, bo) != JT_FALSE)
            return cerr_set(e, CORRAL_EINVAL, "request parameter binary_data_output must be true "
                            "or false");
        in->binary_all = bo != JDOC_NONE && jdoc_type(d, bo) == JT_TRUE;
        uint32_t to = jdoc_get(d, params, "timeout");
        if (to != JDOC_NONE && get_count(d, to, &in->timeout_us))
            return cerr_set(e, CORRAL_EINVAL, "request parameter timeout must be an integer number "
                            "of microseconds >= 0");
    }
    if ((rc = convert_params(d, params, "request", "binary_data_output", &in->params,
                             &in->param_ptrs, &in->ir.n_parameters, e)))
        return rc;
    in->ir.parameters = in->param_ptrs;
    uint32_t inputs = jdoc_get(d, root, "inputs");
    if (inputs == JDOC_NONE || !jdoc_is_array(d, inputs) || jdoc_size(d, inputs) == 0)
        return cerr_set(e, CORRAL_EINVAL, "request has no 'inputs' array (expected {\"inputs\": "
                        "[{\"name\", \"shape\", \"datatype\", \"data\"}]})");
    size_t n = jdoc_size(d, inputs);
    in->inputs = calloc(n, sizeof *in->inputs);
    in->input_ptrs = calloc(n, sizeof *in->input_ptrs);
    if (!in->inputs || !in->input_ptrs)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting inputs");
    size_t bin_off = 0, i = 0;
    for (uint32_t t = inputs + 1; t < jdoc_end(d, inputs); t = jdoc_skip(d, t), i++) {
        corral__tensor__init(&in->inputs[i]);
        in->input_ptrs[i] = &in->inputs[i];
        in->ir.n_inputs = i + 1;
        in->ir.inputs = in->input_ptrs;
        if ((rc = parse_input(d, t, i, bin, bin_len, &bin_off, &in->inputs[i], e)))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(in->inputs[j].name, in->inputs[i].name) == 0)
                return cerr_set(e, CORRAL_EINVAL, "input '%s' appears twice", in->inputs[i].name);
    }
    if (bin_off != bin_len)
        return cerr_set(e, CORRAL_EINVAL, "binary data after the JSON header has %zu bytes, the "
                        "inputs' binary_data_size values add up to %zu", bin_len, bin_off);
    return parse_outputs(d, jdoc_get(d, root, "outputs"), in, e);
}

static void free_request_parts(struct oip_infer *in)
{
    for (size_t i = 0; in->inputs && i < in->ir.n_inputs; i++) {
        free(in->inputs[i].shape);
        free(in->inputs[i].data.data);
    }
    free(in->inputs);
    free(in->input_ptrs);
    free(in->outputs);
    free(in->output_ptrs);
    free(in->params);
    free(in->param_ptrs);
    in->inputs = NULL;
    in->input_ptrs = NULL;
    in->outputs = NULL;
    in->output_ptrs = NULL;
    in->params = NULL;
    in->param_ptrs = NULL;
    in->ir.n_inputs = in->ir.n_outputs = in->ir.n_parameters = 0;
    in->ir.inputs = NULL;
    in->ir.outputs = NULL;
    in->ir.parameters = NULL;
}

int oip_infer_compact(struct oip_infer *in)
{
    size_t need = in->id ? strlen(in->id) + 1 : 0;
    for (size_t i = 0; i < in->n_out; i++)
        need += strlen(in->out_names[i]) + 1;
    char *keep = malloc(need ? need : 1);
    if (!keep)
        return CORRAL_ENOMEM;
    char *p = keep;
    if (in->id) {
        size_t n = strlen(in->id) + 1;
        memcpy(p, in->id, n);
        in->id = p;
        p += n;
    }
    for (size_t i = 0; i < in->n_out; i++) {
        size_t n = strlen(in->out_names[i]) + 1;
        memcpy(p, in->out_names[i], n);
        in->out_names[i] = p;
        p += n;
    }
    free(in->keep);
    in->keep = keep;
    free_request_parts(in);
    in->ir.id = NULL;
    jdoc_free(&in->doc);
    return CORRAL_OK;
}

void oip_infer_free(struct oip_infer *in)
{
    free_request_parts(in);
    free(in->out_names);
    free(in->out_binary);
    free(in->out_class);
    free(in->keep);
    jdoc_free(&in->doc);
    memset(in, 0, sizeof *in);
}

/* ---- requests built from model metadata ---- */

int oip_infer_raw(const Corral__MetadataResponse *md, const uint8_t *body, size_t len,
                  const char *model, const char *version, struct oip_infer *in, struct cerr *e)
{
    int rc;
    infer_init(in, model, version);
    if (md->n_inputs != 1)
        return cerr_set(e, CORRAL_EINVAL, "a raw binary request (Inference-Header-Content-Length: "
                        "0) needs a model with exactly one input; model '%s' has %zu", model,
                        md->n_inputs);
    const Corral__TensorMetadata *tm = md->inputs[0];
    enum dtype dt = (enum dtype)tm->datatype;
    int ndim = (int)tm->n_shape;
    int64_t dims[TENSOR_MAX_DIMS];
    if (ndim > TENSOR_MAX_DIMS || !dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EIO, "model '%s' input metadata is not usable", model);
    int var = -1, n_var = 0;
    int64_t known = 1;
    for (int d = 0; d < ndim; d++) {
        dims[d] = tm->shape[d];
        if (dims[d] < 0 && d == 0) {
            dims[d] = 1; /* a raw request is one batch row */
        } else if (dims[d] < 0) {
            var = d;
            n_var++;
            continue;
        }
        known *= dims[d];
    }
    if ((rc = infer_alloc_inputs(in, 1, e)))
        return rc;
    Corral__Tensor *t = &in->inputs[0];
    t->name = tm->name;
    t->datatype = (Corral__DataType)dt;
    if (dt == DT_BYTES) {
        for (int d = 0; d < ndim; d++)
            if (dims[d] < 0)
                dims[d] = 1;
        if (known != 1 && n_var == 0)
            return cerr_set(e, CORRAL_EINVAL, "a raw binary request carries one BYTES element, "
                            "but input '%s' of model '%s' has %lld", tm->name, model,
                            (long long)known);
        if (len > UINT32_MAX)
            return cerr_set(e, CORRAL_ETOOLARGE, "a raw BYTES element is limited to 4 GiB");
        t->data.data = malloc(len + 4);
        if (!t->data.data)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory for the raw input");
        uint8_t l4[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16),
                         (uint8_t)(len >> 24)};
        memcpy(t->data.data, l4, 4);
        if (len)
            memcpy(t->data.data + 4, body, len);
        t->data.len = len + 4;
    } else {
        size_t es = dtype_size(dt);
        if (n_var > 1)
            return cerr_set(e, CORRAL_EINVAL, "input '%s' of model '%s' has %d variable "
                            "dimensions besides the batch; a raw binary request can only fill one "
                            "from its size (send a JSON header instead)", tm->name, model, n_var);
        uint64_t unit = (uint64_t)known * es;
        if (n_var == 1) {
            if (unit == 0 || len % unit)
                return cerr_set(e, CORRAL_EINVAL, "raw body of %zu bytes is not a whole number of "
                                "%llu-byte rows of input '%s' (%s)", len, (unsigned long long)unit,
                                tm->name, dtype_name(dt));
            dims[var] = (int64_t)(len / unit);
        } else if (len != unit) {
            return cerr_set(e, CORRAL_EINVAL, "raw body has %zu bytes; input '%s' of model '%s' "
                            "takes %llu (%lld %s values)", len, tm->name, model,
                            (unsigned long long)unit, (long long)known, dtype_name(dt));
        }
        t->data.data = malloc(len ? len : 1);
        if (!t->data.data)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory for the raw input");
        if (len)
            memcpy(t->data.data, body, len);
        t->data.len = len;
    }
    t->shape = malloc(sizeof(int64_t) * (ndim ? (size_t)ndim : 1));
    if (!t->shape)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for the raw input");
    memcpy(t->shape, dims, sizeof(int64_t) * (size_t)ndim);
    t->n_shape = (size_t)ndim;
    return CORRAL_OK;
}

int oip_predict_parse(const Corral__MetadataResponse *md, const char *body, size_t len,
                      const char *model, const char *version, struct oip_infer *in,
                      struct cerr *e)
{
    int rc;
    uint32_t *col = NULL;
    infer_init(in, model, version);
    in->predict = 1;
    if ((rc = parse_body(in, body, len, e)))
        return rc;
    const struct jdoc *d = &in->doc;
    uint32_t inst = jdoc_get(d, 0, "instances");
    if (inst == JDOC_NONE || !jdoc_is_array(d, inst) || jdoc_size(d, inst) == 0)
        return cerr_set(e, CORRAL_EINVAL, "predict body must be {\"instances\": [row, ...]} with "
                        "at least one instance");
    size_t n = jdoc_size(d, inst);
    if (md->n_inputs == 0)
        return cerr_set(e, CORRAL_EIO, "model '%s' reports no inputs", model);
    if ((rc = infer_alloc_inputs(in, md->n_inputs, e)))
        return rc;
    col = malloc(n * sizeof *col);
    if (!col)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting instances");
    for (size_t j = 0; j < md->n_inputs; j++) {
        const Corral__TensorMetadata *tm = md->inputs[j];
        Corral__Tensor *t = &in->inputs[j];
        char what[OIP_NAME_MAX + 16];
        int64_t dims[TENSOR_MAX_DIMS];
        int ndim = (int)tm->n_shape;
        snprintf(what, sizeof what, "input '%.*s'", OIP_NAME_MAX - 1, tm->name ? tm->name : "");
        if (ndim < 1 || ndim > TENSOR_MAX_DIMS || tm->shape[0] != -1) {
            rc = cerr_set(e, CORRAL_EINVAL, "%s of model '%s' has no variable batch dimension; "
                          "predict needs one (use the v2 infer endpoint)", what, model);
            goto out;
        }
        size_t i = 0;
        for (uint32_t row = inst + 1; row < jdoc_end(d, inst); row = jdoc_skip(d, row), i++) {
            uint32_t v = row;
            if (jdoc_type(d, row) == JT_OBJECT) {
                v = jdoc_get(d, row, tm->name ? tm->name : "");
                if (v == JDOC_NONE) {
                    rc = cerr_set(e, CORRAL_EINVAL, "instance %zu has no value for %s", i, what);
                    goto out;
                }
            } else if (md->n_inputs > 1) {
                rc = cerr_set(e, CORRAL_EINVAL, "model '%s' has %zu inputs, so each instance must "
                              "be an object naming them (instance %zu is not)", model,
                              md->n_inputs, i);
                goto out;
            }
            col[i] = v;
        }
        /* Variable non-batch dimensions take the sizes the first instance is nested with. */
        dims[0] = (int64_t)n;
        uint32_t probe = col[0];
        for (int k = 1; k < ndim; k++) {
            int arr = probe != JDOC_NONE && jdoc_is_array(d, probe);
            dims[k] = tm->shape[k];
            if (dims[k] < 0)
                dims[k] = arr ? (int64_t)jdoc_size(d, probe) : 1;
            probe = arr ? jdoc_at(d, probe, 0) : JDOC_NONE;
        }
        t->name = tm->name;
        t->datatype = tm->datatype;
        t->shape = malloc(sizeof(int64_t) * (size_t)ndim);
        if (!t->shape) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory converting instances");
            goto out;
        }
        memcpy(t->shape, dims, sizeof(int64_t) * (size_t)ndim);
        t->n_shape = (size_t)ndim;
        /* Nested rows follow the shape; flat values are accepted as well (the converter
         * checks the count either way). */
        rc = oip_json_to_tensor(what, d, col, n, (enum dtype)tm->datatype, dims, ndim,
                                &t->data.data, &t->data.len, e);
        if (rc)
            goto out;
    }
out:
    free(col);
    return rc;
}
