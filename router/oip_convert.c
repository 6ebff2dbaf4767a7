/*
 * JSON <-> wire tensor conversions for the infer endpoint.
 *
 * Tensor bytes on the wire are little-endian; every corral host is, and the
 * build refuses a big-endian target rather than silently swapping nothing.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "corral's wire tensors are little-endian; this host is not"
#endif

/* ---- half precision ---- */

uint16_t oip_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 0x1f)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        /* Subnormal half: shift the full significand into place, rounding to even. */
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    /* A carry out of the significand correctly bumps the exponent (up to infinity). */
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float oip_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400u));
            mant &= 0x3ffu;
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t oip_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
        return (uint16_t)((x >> 16) | 0x40u); /* keep NaN a NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float oip_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- JSON -> tensor ---- */

struct fill {
    const char *what;
    enum dtype dt;
    uint8_t *dst;      /* fixed-size types */
    struct buf *bytes; /* BYTES */
    size_t idx;        /* next element */
    size_t n;          /* elements expected */
};

static int put_integer(struct fill *f, json_t *v, int64_t lo, uint64_t hi, int64_t *out,
                       struct cerr *e)
{
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d))
            return cerr_set(e, CORRAL_EINVAL, "%s value %g at index %zu is not an integer, "
                            "expected an integer for datatype %s", f->what, d, f->idx,
                            dtype_name(f->dt));
        if (d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return cerr_set(e, CORRAL_EINVAL, "%s value %g at index %zu is out of range for "
                            "%s (%lld to %llu)", f->what, d, f->idx, dtype_name(f->dt),
                            (long long)lo, (unsigned long long)hi);
        x = (int64_t)d;
    } else {
        return cerr_set(e, CORRAL_EINVAL, "%s element %zu is a JSON %s, expected an integer "
                        "for datatype %s", f->what, f->idx,
                        json_is_string(v) ? "string" : json_is_boolean(v) ? "boolean"
                        : json_is_null(v) ? "null" : "array or object",
                        dtype_name(f->dt));
    }
    if (x < lo || (x > 0 && (uint64_t)x > hi))
        return cerr_set(e, CORRAL_EINVAL, "%s value %lld at index %zu is out of range for %s "
                        "(%lld to %llu)", f->what, (long long)x, f->idx, dtype_name(f->dt),
                        (long long)lo, (unsigned long long)hi);
    *out = x;
    return CORRAL_OK;
}

static int put_real(struct fill *f, json_t *v, double *out, struct cerr *e)
{
    if (!json_is_number(v))
        return cerr_set(e, CORRAL_EINVAL, "%s element %zu is a JSON %s, expected a number for "
                        "datatype %s", f->what, f->idx,
                        json_is_string(v) ? "string" : json_is_boolean(v) ? "boolean"
                        : json_is_null(v) ? "null" : "array or object",
                        dtype_name(f->dt));
    *out = json_number_value(v);
    return CORRAL_OK;
}

static int put_value(struct fill *f, json_t *v, struct cerr *e)
{
    if (f->idx >= f->n)
        return CORRAL_OK; /* counted only; the caller reports the length mismatch */
    int rc = CORRAL_OK;
    int64_t i = 0;
    double d = 0;
    size_t k = f->idx;
    uint8_t *p = f->dst;
    switch (f->dt) {
    case DT_BOOL:
        if (json_is_boolean(v)) {
            p[k] = json_is_true(v) ? 1 : 0;
        } else if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
            p[k] = (uint8_t)json_integer_value(v);
        } else {
            return cerr_set(e, CORRAL_EINVAL, "%s element %zu is not a boolean, expected true or "
                            "false for datatype BOOL", f->what, k);
        }
        break;
    case DT_UINT8:
        if (!(rc = put_integer(f, v, 0, UINT8_MAX, &i, e)))
            p[k] = (uint8_t)i;
        break;
    case DT_UINT16:
        if (!(rc = put_integer(f, v, 0, UINT16_MAX, &i, e))) {
            uint16_t x = (uint16_t)i;
            memcpy(p + 2 * k, &x, 2);
        }
        break;
    case DT_UINT32:
        if (!(rc = put_integer(f, v, 0, UINT32_MAX, &i, e))) {
            uint32_t x = (uint32_t)i;
            memcpy(p + 4 * k, &x, 4);
        }
        break;
    case DT_UINT64:
        /* JSON integers above INT64_MAX are rejected by the JSON parser itself. */
        if (!(rc = put_integer(f, v, 0, INT64_MAX, &i, e))) {
            uint64_t x = (uint64_t)i;
            memcpy(p + 8 * k, &x, 8);
        }
        break;
    case DT_INT8:
        if (!(rc = put_integer(f, v, INT8_MIN, INT8_MAX, &i, e))) {
            int8_t x = (int8_t)i;
            memcpy(p + k, &x, 1);
        }
        break;
    case DT_INT16:
        if (!(rc = put_integer(f, v, INT16_MIN, INT16_MAX, &i, e))) {
            int16_t x = (int16_t)i;
            memcpy(p + 2 * k, &x, 2);
        }
        break;
    case DT_INT32:
        if (!(rc = put_integer(f, v, INT32_MIN, INT32_MAX, &i, e))) {
            int32_t x = (int32_t)i;
            memcpy(p + 4 * k, &x, 4);
        }
        break;
    case DT_INT64:
        if (!(rc = put_integer(f, v, INT64_MIN, INT64_MAX, &i, e)))
            memcpy(p + 8 * k, &i, 8);
        break;
    case DT_FP16:
    case DT_BF16:
    case DT_FP32: {
        if ((rc = put_real(f, v, &d, e)))
            break;
        double lim = f->dt == DT_FP16 ? 65504.0 : FLT_MAX;
        if (fabs(d) > lim)
            return cerr_set(e, CORRAL_EINVAL, "%s value %g at index %zu is out of range for %s "
                            "(magnitude at most %g)", f->what, d, k, dtype_name(f->dt), lim);
        float x = (float)d;
        if (f->dt == DT_FP32) {
            memcpy(p + 4 * k, &x, 4);
        } else {
            uint16_t h = f->dt == DT_FP16 ? oip_f32_to_f16(x) : oip_f32_to_bf16(x);
            memcpy(p + 2 * k, &h, 2);
        }
        break;
    }
    case DT_FP64:
        if (!(rc = put_real(f, v, &d, e)))
            memcpy(p + 8 * k, &d, 8);
        break;
    case DT_BYTES: {
        if (!json_is_string(v))
            return cerr_set(e, CORRAL_EINVAL, "%s element %zu is not a string, expected a string "
                            "for datatype BYTES", f->what, k);
        size_t n = json_string_length(v);
        if (n > UINT32_MAX)
            return cerr_set(e, CORRAL_ETOOLARGE, "%s element %zu is longer than 4 GiB", f->what, k);
        uint8_t len[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
        buf_append(f->bytes, len, 4);
        buf_append(f->bytes, json_string_value(v), n);
        if (f->bytes->oom)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", f->what);
        break;
    }
    default:
        return cerr_set(e, CORRAL_EINVAL, "%s has datatype %s, which has no JSON form", f->what,
                        dtype_name(f->dt));
    }
    return rc;
}

static int fill_nested(struct fill *f, json_t *node, int depth, const int64_t *dims, int ndim,
                       struct cerr *e)
{
    char sb[128];
    if (depth == ndim) {
        if (json_is_array(node))
            return cerr_set(e, CORRAL_EINVAL, "%s data is nested deeper than its shape %s",
                            f->what, tensor_shape_str(dims, ndim, sb, sizeof sb));
        int rc = put_value(f, node, e);
        f->idx++;
        return rc;
    }
    if (!json_is_array(node))
        return cerr_set(e, CORRAL_EINVAL, "%s data has a value where shape %s expects an array "
                        "of %lld at nesting depth %d", f->what,
                        tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)dims[depth],
                        depth);
    size_t n = json_array_size(node);
    if ((int64_t)n != dims[depth])
        return cerr_set(e, CORRAL_EINVAL, "%s data has %zu values at nesting depth %d, shape %s "
                        "expects %lld there", f->what, n, depth,
                        tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)dims[depth]);
    for (size_t i = 0; i < n; i++) {
        int rc = fill_nested(f, json_array_get(node, i), depth + 1, dims, ndim, e);
        if (rc)
            return rc;
    }
    return CORRAL_OK;
}

/* Values (non-array leaves) under `node`, looking no deeper than a shape can be. */
static size_t count_values(json_t *node, int depth)
{
    if (!json_is_array(node))
        return 1;
    if (depth > TENSOR_MAX_DIMS)
        return 0;
    size_t n = 0, k = json_array_size(node);
    for (size_t i = 0; i < k; i++)
        n += count_values(json_array_get(node, i), depth + 1);
    return n;
}

int oip_json_to_tensor(const char *what, json_t *data, enum dtype dt, const int64_t *dims,
                       int ndim, uint8_t **out, size_t *out_len, struct cerr *e)
{
    char sb[128];
    int64_t numel = 0;
    size_t nbytes = 0;
    struct buf bytes = {0};
    uint8_t *dst = NULL;
    int rc;
    *out = NULL;
    *out_len = 0;
    if (!dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EINVAL, "%s has an invalid datatype", what);
    if ((rc = tensor_numel(dims, ndim, &numel, e)))
        return cerr_prefix(e, "%s", what);
    if (!json_is_array(data))
        return cerr_set(e, CORRAL_EINVAL, "%s 'data' must be an array of %lld values (flat or "
                        "nested as shape %s)", what, (long long)numel,
                        tensor_shape_str(dims, ndim, sb, sizeof sb));
    /* Counting first means a shape that promises far more values than were sent is refused
     * before its buffer is allocated. */
    size_t have = count_values(data, 0);
    if (have != (size_t)numel)
        return cerr_set(e, CORRAL_EINVAL, "%s has %zu values, shape %s expects %lld", what, have,
                        tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)numel);
    if (dt != DT_BYTES) {
        if ((rc = tensor_nbytes(dt, dims, ndim, &nbytes, e)))
            return cerr_prefix(e, "%s", what);
        dst = malloc(nbytes ? nbytes : 1);
        if (!dst)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory for %s (%zu bytes)", what, nbytes);
    } else if ((uint64_t)numel > TENSOR_MAX_BYTES / 4) {
        return cerr_set(e, CORRAL_ETOOLARGE, "%s has too many BYTES elements (%lld)", what,
                        (long long)numel);
    }
    struct fill f = {.what = what, .dt = dt, .dst = dst, .bytes = &bytes, .n = (size_t)numel};
    size_t top = json_array_size(data);
    int nested = top > 0 && json_is_array(json_array_get(data, 0));
    if (nested && ndim > 1) {
        if ((rc = fill_nested(&f, data, 0, dims, ndim, e)))
            goto fail;
    } else {
        for (size_t i = 0; i < top; i++) {
            json_t *v = json_array_get(data, i);
            if (json_is_array(v)) {
                rc = cerr_set(e, CORRAL_EINVAL, "%s data mixes arrays and values (element %zu is "
                              "an array); expected flat values or nesting that follows shape %s",
                              what, i, tensor_shape_str(dims, ndim, sb, sizeof sb));
                goto fail;
            }
            if ((rc = put_value(&f, v, e)))
                goto fail;
            f.idx++;
        }
    }
    if (f.idx != (size_t)numel) {
        rc = cerr_set(e, CORRAL_EINVAL, "%s has %zu values, shape %s expects %lld", what, f.idx,
                      tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)numel);
        goto fail;
    }
    if (dt == DT_BYTES) {
        size_t len = 0;
        dst = (uint8_t *)buf_steal(&bytes, &len);
        if (!dst) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", what);
            goto fail;
        }
        nbytes = len;
    }
    *out = dst;
    *out_len = nbytes;
    return CORRAL_OK;
fail:
    free(dst);
    buf_free(&bytes);
    return rc;
}

/* ---- infer request ---- */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Fetches a string member that must not contain NUL; *out borrows from the JSON tree. */
static int get_name(json_t *obj, const char *key, const char *what, const char **out,
                    struct cerr *e)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return cerr_set(e, CORRAL_EINVAL, "%s has no '%s' (expected a string)", what, key);
    if (!json_is_string(v))
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' is %s, expected a string", what, key,
                        json_type_name(v));
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v) || !s[0] || strlen(s) >= OIP_NAME_MAX)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' must be 1 to %d characters without NUL", what,
                        key, OIP_NAME_MAX - 1);
    *out = s;
    return CORRAL_OK;
}

static int convert_params(json_t *obj, const char *what, const char *skip, Corral__Parameter **arr,
                          Corral__Parameter ***ptrs, size_t *n, struct cerr *e)
{
    *n = 0;
    if (!obj)
        return CORRAL_OK;
    if (!json_is_object(obj))
        return cerr_set(e, CORRAL_EINVAL, "%s 'parameters' is %s, expected an object", what,
                        json_type_name(obj));
    size_t cnt = json_object_size(obj);
    *arr = calloc(cnt ? cnt : 1, sizeof **arr);
    *ptrs = calloc(cnt ? cnt : 1, sizeof **ptrs);
    if (!*arr || !*ptrs)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting parameters");
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (skip && strcmp(key, skip) == 0)
            continue;
        Corral__Parameter *p = &(*arr)[*n];
        corral__parameter__init(p);
        p->key = (char *)key;
        if (json_is_string(v)) {
            p->value_case = CORRAL__PARAMETER__VALUE_STRING_VALUE;
            p->string_value = (char *)json_string_value(v);
        } else if (json_is_boolean(v)) {
            p->value_case = CORRAL__PARAMETER__VALUE_BOOL_VALUE;
            p->bool_value = json_is_true(v);
        } else if (json_is_integer(v)) {
            p->value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
            p->int64_value = json_integer_value(v);
        } else if (json_is_real(v)) {
            p->value_case = CORRAL__PARAMETER__VALUE_DOUBLE_VALUE;
            p->double_value = json_real_value(v);
        } else {
            return cerr_set(e, CORRAL_EINVAL, "%s parameter '%s' is %s, expected a string, "
                            "number or boolean", what, key, json_type_name(v));
        }
        (*ptrs)[*n] = p;
        (*n)++;
    }
    return CORRAL_OK;
}

static int parse_shape(json_t *in, const char *what, int64_t *dims, int *ndim, struct cerr *e)
{
    json_t *s = json_object_get(in, "shape");
    if (!s)
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'shape' (expected an array of dimension "
                        "sizes, e.g. [1, 64])", what);
    if (!json_is_array(s))
        return cerr_set(e, CORRAL_EINVAL, "%s 'shape' is %s, expected an array of dimension "
                        "sizes", what, json_type_name(s));
    size_t n = json_array_size(s);
    if (n > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "%s shape has %zu dimensions, expected at most %d",
                        what, n, TENSOR_MAX_DIMS);
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(s, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s shape dimension %zu is %s, expected an integer "
                            ">= 0", what, i, json_is_integer(d) ? "negative" : json_type_name(d));
        dims[i] = json_integer_value(d);
    }
    *ndim = (int)n;
    return CORRAL_OK;
}

static int parse_input(json_t *in, size_t idx, const uint8_t *bin, size_t bin_len, size_t *bin_off,
                       Corral__Tensor *t, struct cerr *e)
{
    char what[OIP_NAME_MAX + 16];
    int64_t dims[TENSOR_MAX_DIMS];
    int ndim = 0, rc;
    const char *name, *dtn;
    snprintf(what, sizeof what, "input %zu", idx);
    if (!json_is_object(in))
        return cerr_set(e, CORRAL_EINVAL, "%s is %s, expected an object {\"name\", \"shape\", "
                        "\"datatype\", \"data\"}", what, json_type_name(in));
    if ((rc = get_name(in, "name", what, &name, e)))
        return rc;
    snprintf(what, sizeof what, "input '%s'", name);
    if ((rc = parse_shape(in, what, dims, &ndim, e)))
        return rc;
    json_t *dtj = json_object_get(in, "datatype");
    if (!dtj || !json_is_string(dtj))
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'datatype' string (expected one of BOOL, "
                        "UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, "
                        "FP32, FP64, BYTES)", what);
    dtn = json_string_value(dtj);
    enum dtype dt = dtype_from_name(dtn);
    if (dt == DT_INVALID)
        return cerr_set(e, CORRAL_EINVAL, "%s has unknown datatype '%.40s' (expected one of BOOL, "
                        "UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, "
                        "FP32, FP64, BYTES)", what, dtn);
    json_t *params = json_object_get(in, "parameters");
    if (params && !json_is_object(params))
        return cerr_set(e, CORRAL_EINVAL, "%s 'parameters' is %s, expected an object", what,
                        json_type_name(params));
    json_t *bsz = params ? json_object_get(params, "binary_data_size") : NULL;
    json_t *data = json_object_get(in, "data");
    t->name = (char *)name;
    t->datatype = (Corral__DataType)dt;
    t->n_shape = (size_t)ndim;
    t->shape = malloc(sizeof(int64_t) * (ndim ? (size_t)ndim : 1));
    if (!t->shape)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", what);
    memcpy(t->shape, dims, sizeof(int64_t) * (size_t)ndim);
    if (bsz) {
        if (data)
            return cerr_set(e, CORRAL_EINVAL, "%s has both 'data' and parameters.binary_data_size;"
                            " expected one of them", what);
        if (!json_is_integer(bsz) || json_integer_value(bsz) < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s binary_data_size must be an integer >= 0", what);
        uint64_t k = (uint64_t)json_integer_value(bsz);
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
    if (!data)
        return cerr_set(e, CORRAL_EINVAL, "%s has no 'data' (expected an array of values, or "
                        "parameters.binary_data_size with binary tensor data)", what);
    return oip_json_to_tensor(what, data, dt, dims, ndim, &t->data.data, &t->data.len, e);
}

static int parse_outputs(json_t *outs, struct oip_infer *in, struct cerr *e)
{
    if (!outs)
        return CORRAL_OK;
    if (!json_is_array(outs))
        return cerr_set(e, CORRAL_EINVAL, "request 'outputs' is %s, expected an array of "
                        "{\"name\"} objects", json_type_name(outs));
    size_t n = json_array_size(outs);
    in->outputs = calloc(n ? n : 1, sizeof *in->outputs);
    in->output_ptrs = calloc(n ? n : 1, sizeof *in->output_ptrs);
    in->out_names = calloc(n ? n : 1, sizeof *in->out_names);
    in->out_binary = calloc(n ? n : 1, sizeof *in->out_binary);
    in->out_class = calloc(n ? n : 1, sizeof *in->out_class);
    if (!in->outputs || !in->output_ptrs || !in->out_names || !in->out_binary || !in->out_class)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting outputs");
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(outs, i);
        char what[OIP_NAME_MAX + 16];
        const char *name;
        int rc;
        snprintf(what, sizeof what, "requested output %zu", i);
        if (!json_is_object(o))
            return cerr_set(e, CORRAL_EINVAL, "%s is %s, expected an object {\"name\"}", what,
                            json_type_name(o));
        if ((rc = get_name(o, "name", what, &name, e)))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(in->out_names[j], name) == 0)
                return cerr_set(e, CORRAL_EINVAL, "output '%s' is requested twice", name);
        json_t *p = json_object_get(o, "parameters");
        if (p && !json_is_object(p))
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' 'parameters' is %s, "
                            "expected an object", name, json_type_name(p));
        json_t *bd = p ? json_object_get(p, "binary_data") : NULL;
        if (bd && !json_is_boolean(bd))
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' binary_data must be true or "
                            "false", name);
        json_t *cls = p ? json_object_get(p, "classification") : NULL;
        if (cls && (!json_is_integer(cls) || json_integer_value(cls) < 1 ||
                    json_integer_value(cls) > 1000000))
            return cerr_set(e, CORRAL_EINVAL, "requested output '%s' classification must be an "
                            "integer from 1 to 1000000 (the number of top classes)", name);
        in->out_class[i] = cls ? (int)json_integer_value(cls) : 0;
        Corral__RequestedOutput *ro = &in->outputs[i];
        corral__requested_output__init(ro);
        ro->name = (char *)name;
        in->output_ptrs[i] = ro;
        in->out_names[i] = (char *)name;
        in->out_binary[i] = bd ? json_is_true(bd) : in->binary_all;
        in->n_out = i + 1;
    }
    in->ir.n_outputs = n;
    in->ir.outputs = in->output_ptrs;
    return CORRAL_OK;
}

int oip_infer_parse(const char *body, size_t json_len, const uint8_t *bin, size_t bin_len,
                    const char *model, const char *version, struct oip_infer *in, struct cerr *e)
{
    json_error_t jerr;
    int rc;
    memset(in, 0, sizeof *in);
    corral__request__init(&in->req);
    corral__infer_request__init(&in->ir);
    in->req.kind_case = CORRAL__REQUEST__KIND_INFER;
    in->req.infer = &in->ir;
    in->ir.model_name = (char *)model;
    in->ir.model_version = (char *)(version ? version : "");
    in->root = json_loadb(body, json_len, JSON_ALLOW_NUL, &jerr);
    if (!in->root)
        return cerr_set(e, CORRAL_EINVAL, "request body is not valid JSON: %s at line %d column %d",
                        jerr.text, jerr.line, jerr.column);
    json_t *root = in->root;
    if (!json_is_object(root))
        return cerr_set(e, CORRAL_EINVAL, "request body is %s, expected an object "
                        "{\"inputs\": [...]}", json_type_name(root));
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_string(id))
            return cerr_set(e, CORRAL_EINVAL, "request 'id' is %s, expected a string",
                            json_type_name(id));
        in->id = (char *)json_string_value(id);
        in->ir.id = in->id;
    }
    json_t *params = json_object_get(root, "parameters");
    if (params && json_is_object(params)) {
        json_t *bo = json_object_get(params, "binary_data_output");
        if (bo && !json_is_boolean(bo))
            return cerr_set(e, CORRAL_EINVAL, "request parameter binary_data_output must be true "
                            "or false");
        in->binary_all = bo && json_is_true(bo);
        json_t *to = json_object_get(params, "timeout");
        if (to && (!json_is_integer(to) || json_integer_value(to) < 0))
            return cerr_set(e, CORRAL_EINVAL, "request parameter timeout must be an integer number "
                            "of microseconds >= 0");
        in->timeout_us = to ? (uint64_t)json_integer_value(to) : 0;
    }
    if ((rc = convert_params(params, "request", "binary_data_output", &in->params, &in->param_ptrs,
                             &in->ir.n_parameters, e)))
        return rc;
    in->ir.parameters = in->param_ptrs;
    json_t *inputs = json_object_get(root, "inputs");
    if (!inputs || !json_is_array(inputs) || json_array_size(inputs) == 0)
        return cerr_set(e, CORRAL_EINVAL, "request has no 'inputs' array (expected {\"inputs\": "
                        "[{\"name\", \"shape\", \"datatype\", \"data\"}]})");
    size_t n = json_array_size(inputs);
    in->inputs = calloc(n, sizeof *in->inputs);
    in->input_ptrs = calloc(n, sizeof *in->input_ptrs);
    if (!in->inputs || !in->input_ptrs)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting inputs");
    size_t bin_off = 0;
    for (size_t i = 0; i < n; i++) {
        corral__tensor__init(&in->inputs[i]);
        in->input_ptrs[i] = &in->inputs[i];
        in->ir.n_inputs = i + 1;
        in->ir.inputs = in->input_ptrs;
        if ((rc = parse_input(json_array_get(inputs, i), i, bin, bin_len, &bin_off,
                              &in->inputs[i], e)))
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(in->inputs[j].name, in->inputs[i].name) == 0)
                return cerr_set(e, CORRAL_EINVAL, "input '%s' appears twice", in->inputs[i].name);
    }
    if (bin_off != bin_len)
        return cerr_set(e, CORRAL_EINVAL, "binary data after the JSON header has %zu bytes, the "
                        "inputs' binary_data_size values add up to %zu", bin_len, bin_off);
    return parse_outputs(json_object_get(root, "outputs"), in, e);
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
    if (in->root)
        json_decref(in->root);
    in->root = NULL;
    return CORRAL_OK;
}

void oip_infer_free(struct oip_infer *in)
{
    free_request_parts(in);
    free(in->out_names);
    free(in->out_binary);
    free(in->out_class);
    free(in->keep);
    if (in->root)
        json_decref(in->root);
    memset(in, 0, sizeof *in);
}

/* ---- tensor -> JSON ---- */

static void put_float(struct buf *b, double v, int single)
{
    if (!isfinite(v)) {
        /* JSON has no NaN or infinity; null keeps the document valid. */
        buf_puts(b, "null");
        return;
    }
    char s[40];
    /* The shortest precision that reads back to the same value keeps answers compact. */
    for (int prec = single ? 6 : 15; prec <= (single ? 9 : 17); prec++) {
        snprintf(s, sizeof s, "%.*g", prec, v);
        if (single ? strtof(s, NULL) == (float)v : strtod(s, NULL) == v)
            break;
    }
    buf_puts(b, s);
}

static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* Appends one fixed-size element as JSON. */
static void put_elem(struct buf *b, enum dtype dt, const uint8_t *q)
{
    switch (dt) {
    case DT_BOOL: buf_puts(b, q[0] ? "true" : "false"); break;
    case DT_UINT8: buf_printf(b, "%u", (unsigned)q[0]); break;
    case DT_INT8: buf_printf(b, "%d", (int)(int8_t)q[0]); break;
    case DT_UINT16: { uint16_t v; memcpy(&v, q, 2); buf_printf(b, "%u", (unsigned)v); break; }
    case DT_INT16: { int16_t v; memcpy(&v, q, 2); buf_printf(b, "%d", (int)v); break; }
    case DT_UINT32: { uint32_t v; memcpy(&v, q, 4); buf_printf(b, "%u", v); break; }
    case DT_INT32: { int32_t v; memcpy(&v, q, 4); buf_printf(b, "%d", v); break; }
    case DT_UINT64: { uint64_t v; memcpy(&v, q, 8); buf_printf(b, "%llu", (unsigned long long)v); break; }
    case DT_INT64: { int64_t v; memcpy(&v, q, 8); buf_printf(b, "%lld", (long long)v); break; }
    case DT_FP16: { uint16_t v; memcpy(&v, q, 2); put_float(b, oip_f16_to_f32(v), 1); break; }
    case DT_BF16: { uint16_t v; memcpy(&v, q, 2); put_float(b, oip_bf16_to_f32(v), 1); break; }
    case DT_FP32: { float v; memcpy(&v, q, 4); put_float(b, v, 1); break; }
    case DT_FP64: { double v; memcpy(&v, q, 8); put_float(b, v, 0); break; }
    default: buf_puts(b, "null");
    }
}

/* Start offsets of every BYTES element (n + 1 entries: the last is the end). */
static int bytes_offsets(const char *what, const uint8_t *p, size_t nbytes, size_t **offs,
                         size_t *count, struct cerr *e)
{
    size_t cap = 16, k = 0, off = 0;
    size_t *o = malloc(cap * sizeof *o);
    if (!o)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what);
    while (off < nbytes) {
        if (nbytes - off < 4)
            goto trunc;
        uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                     (uint32_t)p[off + 3] << 24;
        if (l > nbytes - off - 4)
            goto trunc;
        if (k + 2 > cap) {
            size_t *no = realloc(o, 2 * cap * sizeof *o);
            if (!no) {
                free(o);
                return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what);
            }
            o = no;
            cap *= 2;
        }
        o[k++] = off;
        off += 4 + (size_t)l;
    }
    o[k] = off;
    *offs = o;
    *count = k;
    return CORRAL_OK;
trunc:
    free(o);
    return cerr_set(e, CORRAL_EIO, "%s BYTES element %zu is truncated", what, k);
}

static int put_bytes_elem(struct buf *b, const char *what, const uint8_t *p, size_t off, size_t k,
                          struct cerr *e)
{
    uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                 (uint32_t)p[off + 3] << 24;
    if (!utf8_valid(p + off + 4, l))
        return cerr_set(e, CORRAL_EUNSUPP, "%s BYTES element %zu is not valid UTF-8 and cannot be "
                        "sent as JSON; request it with binary_data", what, k);
    buf_json_string(b, (const char *)p + off + 4, l);
    return CORRAL_OK;
}

int oip_tensor_to_json(struct buf *b, const char *what, enum dtype dt, const uint8_t *p,
                       size_t nbytes, struct cerr *e)
{
    size_t es = dtype_size(dt);
    int rc;
    buf_putc(b, '[');
    if (dt == DT_BYTES) {
        size_t *offs = NULL, n = 0;
        if ((rc = bytes_offsets(what, p, nbytes, &offs, &n, e)))
            return rc;
        for (size_t k = 0; k < n; k++) {
            if (k)
                buf_putc(b, ',');
            if ((rc = put_bytes_elem(b, what, p, offs[k], k, e))) {
                free(offs);
                return rc;
            }
        }
        free(offs);
        buf_putc(b, ']');
        return b->oom ? cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what) : 0;
    }
    if (es == 0 || nbytes % es)
        return cerr_set(e, CORRAL_EIO, "%s has %zu bytes, not a whole number of %s elements", what,
                        nbytes, dtype_name(dt));
    if (!dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EIO, "%s has datatype %s, which has no JSON form", what,
                        dtype_name(dt));
    size_t n = nbytes / es;
    /* About 12 characters per element; reserving up front avoids repeated growth. */
    buf_reserve(b, n * 12 + 2);
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(b, ',');
        put_elem(b, dt, p + i * es);
    }
    buf_putc(b, ']');
    return b->oom ? cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what) : 0;
}

/* Replica parameters named corral_* are timings for the router's metrics, not for clients. */
static int param_hidden(const Corral__Parameter *p)
{
    return p->key && strncmp(p->key, "corral_", 7) == 0;
}

static void put_params(struct buf *b, Corral__Parameter **ps, size_t n)
{
    buf_putc(b, '{');
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        const Corral__Parameter *p = ps[i];
        if (param_hidden(p))
            continue;
        if (!first)
            buf_putc(b, ',');
        first = 0;
        buf_json_string(b, p->key ? p->key : "", p->key ? strlen(p->key) : 0);
        buf_putc(b, ':');
        switch (p->value_case) {
        case CORRAL__PARAMETER__VALUE_BOOL_VALUE: buf_puts(b, p->bool_value ? "true" : "false"); break;
        case CORRAL__PARAMETER__VALUE_INT64_VALUE: buf_printf(b, "%lld", (long long)p->int64_value); break;
        case CORRAL__PARAMETER__VALUE_DOUBLE_VALUE: put_float(b, p->double_value, 0); break;
        case CORRAL__PARAMETER__VALUE_STRING_VALUE:
            if (p->string_value && utf8_valid((const uint8_t *)p->string_value, strlen(p->string_value)))
                buf_json_string(b, p->string_value, strlen(p->string_value));
            else
                buf_puts(b, "null");
            break;
        default: buf_puts(b, "null");
        }
    }
    buf_putc(b, '}');
}

static void put_str(struct buf *b, const char *s)
{
    s = s ? s : "";
    size_t n = strlen(s);
    /* Names come from replicas; anything that is not UTF-8 is replaced rather than sent. */
    if (utf8_valid((const uint8_t *)s, n))
        buf_json_string(b, s, n);
    else
        buf_puts(b, "\"?\"");
}

/* ---- classification ---- */

static double elem_as_double(enum dtype dt, const uint8_t *q)
{
    switch (dt) {
    case DT_BOOL: return q[0] ? 1 : 0;
    case DT_UINT8: return q[0];
    case DT_INT8: return (int8_t)q[0];
    case DT_UINT16: { uint16_t v; memcpy(&v, q, 2); return v; }
    case DT_INT16: { int16_t v; memcpy(&v, q, 2); return v; }
    case DT_UINT32: { uint32_t v; memcpy(&v, q, 4); return v; }
    case DT_INT32: { int32_t v; memcpy(&v, q, 4); return v; }
    case DT_UINT64: { uint64_t v; memcpy(&v, q, 8); return (double)v; }
    case DT_INT64: { int64_t v; memcpy(&v, q, 8); return (double)v; }
    case DT_FP16: { uint16_t v; memcpy(&v, q, 2); return oip_f16_to_f32(v); }
    case DT_BF16: { uint16_t v; memcpy(&v, q, 2); return oip_bf16_to_f32(v); }
    case DT_FP32: { float v; memcpy(&v, q, 4); return v; }
    case DT_FP64: { double v; memcpy(&v, q, 8); return v; }
    default: return 0;
    }
}

struct scored {
    double v;
    size_t i;
};

/* Highest first; NaN below everything; equal scores keep the lower index first. */
static int scored_cmp(const void *a, const void *b)
{
    const struct scored *x = a, *y = b;
    int xn = isnan(x->v), yn = isnan(y->v);
    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int oip_classify(const Corral__Tensor *t, int k, char *const *labels, size_t n_labels,
                 int64_t *shape, int *ndim, uint8_t **data, size_t *len, struct cerr *e)
{
    enum dtype dt = (enum dtype)t->datatype;
    size_t es = dtype_size(dt);
    const char *name = t->name ? t->name : "";
    struct buf b = {0};
    struct scored *sc = NULL;
    int rc = CORRAL_OK;
    *data = NULL;
    *len = 0;
    if (dt == DT_BYTES || es == 0 || !dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EINVAL, "output '%.200s' has datatype %s; classification needs "
                        "a numeric output", name, dtype_name(dt));
    if (t->data.len % es)
        return cerr_set(e, CORRAL_EIO, "output '%.200s' has %zu bytes, not a whole number of %s "
                        "elements", name, t->data.len, dtype_name(dt));
    size_t numel = t->data.len / es, rows = 1, cols = numel;
    if (t->n_shape >= 2) {
        rows = t->shape[0] > 0 ? (size_t)t->shape[0] : 0;
        cols = rows ? numel / rows : 0;
    }
    size_t kk = (size_t)k < cols ? (size_t)k : cols;
    if (t->n_shape >= 2) {
        shape[0] = (int64_t)rows;
        shape[1] = (int64_t)kk;
        *ndim = 2;
    } else {
        shape[0] = (int64_t)kk;
        *ndim = 1;
    }
    sc = malloc((cols ? cols : 1) * sizeof *sc);
    if (!sc)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = t->data.data + r * cols * es;
        for (size_t c = 0; c < cols; c++) {
            sc[c].v = elem_as_double(dt, row + c * es);
            sc[c].i = c;
        }
        qsort(sc, cols, sizeof *sc, scored_cmp);
        for (size_t j = 0; j < kk; j++) {
            char s[64 + 1024];
            /* "%f" is what Triton prints for a score, so existing parsers read ours. */
            int n = snprintf(s, sizeof s, "%f:%zu", sc[j].v, sc[j].i);
            if (sc[j].i < n_labels && labels[sc[j].i])
                n = snprintf(s, sizeof s, "%f:%zu:%.1000s", sc[j].v, sc[j].i, labels[sc[j].i]);
            if (n < 0)
                n = 0;
            if ((size_t)n >= sizeof s)
                n = (int)sizeof s - 1;
            uint8_t l4[4] = {(uint8_t)n, (uint8_t)(n >> 8), 0, 0};
            buf_append(&b, l4, 4);
            buf_append(&b, s, (size_t)n);
        }
    }
    if (b.oom) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
        goto fail;
    }
    free(sc);
    if (b.len == 0) {
        *data = malloc(1);
        if (!*data)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
        return CORRAL_OK;
    }
    *data = (uint8_t *)buf_steal(&b, len);
    return *data ? CORRAL_OK : cerr_set(e, CORRAL_ENOMEM, "out of memory classifying");
fail:
    free(sc);
    buf_free(&b);
    return rc;
}

/* ---- v1 predict answer ---- */

/* Renders elements [*idx, ...) of t nested along shape[depth..]. */
static int put_nested(struct buf *b, const char *what, const Corral__Tensor *t, const size_t *offs,
                      size_t *idx, size_t depth, struct cerr *e)
{
    enum dtype dt = (enum dtype)t->datatype;
    if (depth == t->n_shape) {
        int rc = CORRAL_OK;
        if (dt == DT_BYTES)
            rc = put_bytes_elem(b, what, t->data.data, offs[*idx], *idx, e);
        else
            put_elem(b, dt, t->data.data + *idx * dtype_size(dt));
        (*idx)++;
        return rc;
    }
    buf_putc(b, '[');
    for (int64_t i = 0; i < t->shape[depth]; i++) {
        if (i)
            buf_putc(b, ',');
        int rc = put_nested(b, what, t, offs, idx, depth + 1, e);
        if (rc)
            return rc;
    }
    buf_putc(b, ']');
    return CORRAL_OK;
}

static int render_predict(const Corral__InferResponse *r, struct buf *b, struct cerr *e)
{
    size_t **offs = calloc(r->n_outputs ? r->n_outputs : 1, sizeof *offs);
    size_t *idx = calloc(r->n_outputs ? r->n_outputs : 1, sizeof *idx);
    int rc = CORRAL_OK;
    int64_t rows = -1;
    if (!offs || !idx) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the predictions");
        goto out;
    }
    if (r->n_outputs == 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "the replica returned no outputs");
        goto out;
    }
    for (size_t j = 0; j < r->n_outputs; j++) {
        const Corral__Tensor *t = r->outputs[j];
        enum dtype dt = (enum dtype)t->datatype;
        size_t numel = 0;
        if (t->n_shape < 1 || (rows >= 0 && t->shape[0] != rows)) {
            rc = cerr_set(e, CORRAL_EINTERNAL, "output '%.200s' has no batch dimension matching "
                          "the instances, so it cannot be split into predictions",
                          t->name ? t->name : "");
            goto out;
        }
        rows = t->shape[0];
        if (dt == DT_BYTES) {
            if ((rc = bytes_offsets("output", t->data.data, t->data.len, &offs[j], &numel, e)))
                goto out;
        } else {
            numel = dtype_size(dt) ? t->data.len / dtype_size(dt) : 0;
        }
        int64_t want = 1;
        for (size_t d = 0; d < t->n_shape; d++)
            want *= t->shape[d];
        if ((int64_t)numel != want || !dtype_valid((int)dt)) {
            rc = cerr_set(e, CORRAL_EIO, "output '%.200s' holds %zu elements, its shape %lld",
                          t->name ? t->name : "", numel, (long long)want);
            goto out;
        }
    }
    buf_puts(b, "{\"predictions\":[");
    for (int64_t row = 0; row < rows; row++) {
        if (row)
            buf_putc(b, ',');
        if (r->n_outputs > 1)
            buf_putc(b, '{');
        for (size_t j = 0; j < r->n_outputs; j++) {
            const Corral__Tensor *t = r->outputs[j];
            if (r->n_outputs > 1) {
                if (j)
                    buf_putc(b, ',');
                put_str(b, t->name);
                buf_putc(b, ':');
            }
            if ((rc = put_nested(b, "output", t, offs[j], &idx[j], 1, e)))
                goto out;
        }
        if (r->n_outputs > 1)
            buf_putc(b, '}');
    }
    buf_puts(b, "]}");
out:
    for (size_t j = 0; offs && j < r->n_outputs; j++)
        free(offs[j]);
    free(offs);
    free(idx);
    return rc;
}

int oip_infer_response_render(const Corral__InferResponse *r, const struct oip_infer *in,
                              const char *model, char **body, size_t *len, size_t *json_len,
                              struct cerr *e)
{
    struct buf b = {0};
    struct buf bin = {0};
    int rc = CORRAL_OK;
    int any_binary = 0;
    uint8_t *cdata = NULL;
    size_t n = in && in->out_names ? in->n_out : r->n_outputs;
    *body = NULL;
    if (in && in->predict) {
        if ((rc = render_predict(r, &b, e)))
            goto fail;
        goto done;
    }
    buf_puts(&b, "{\"model_name\":");
    put_str(&b, r->model_name && r->model_name[0] ? r->model_name : model);
    buf_puts(&b, ",\"model_version\":");
    put_str(&b, r->model_version && r->model_version[0] ? r->model_version
                : in && in->ir.model_version ? in->ir.model_version : "");
    const char *id = in && in->id ? in->id : (r->id && r->id[0] ? r->id : NULL);
    if (id) {
        buf_puts(&b, ",\"id\":");
        /* The id may carry NUL bytes from JSON escapes; its length is not strlen then, but
         * it was valid JSON text, so echoing the C string part is the safe subset. */
        put_str(&b, id);
    }
    size_t visible = 0;
    for (size_t i = 0; i < r->n_parameters; i++)
        visible += !param_hidden(r->parameters[i]);
    if (visible) {
        buf_puts(&b, ",\"parameters\":");
        put_params(&b, r->parameters, r->n_parameters);
    }
    buf_puts(&b, ",\"outputs\":[");
    for (size_t i = 0; i < n; i++) {
        const Corral__Tensor *t = NULL;
        Corral__Tensor ct;
        int64_t cshape[2];
        int binary = in ? in->binary_all : 0;
        int cls = 0;
        if (in && in->out_names) {
            for (size_t j = 0; j < r->n_outputs; j++)
                if (r->outputs[j]->name && strcmp(r->outputs[j]->name, in->out_names[i]) == 0)
                    t = r->outputs[j];
            if (!t) {
                rc = cerr_set(e, CORRAL_EINTERNAL, "the replica returned no output '%s', which "
                              "the request asked for", in->out_names[i]);
                goto fail;
            }
            binary = in->out_binary[i];
            cls = in->out_class ? in->out_class[i] : 0;
        } else {
            t = r->outputs[i];
        }
        if (cls) {
            int cnd = 0;
            size_t clen = 0;
            free(cdata);
            cdata = NULL;
            if ((rc = oip_classify(t, cls, in->labels, in->n_labels, cshape, &cnd, &cdata, &clen,
                                   e)))
                goto fail;
            ct = *t;
            ct.datatype = CORRAL__DATA_TYPE__TYPE_BYTES;
            ct.shape = cshape;
            ct.n_shape = (size_t)cnd;
            ct.data.data = cdata;
            ct.data.len = clen;
            t = &ct;
        }
        char what[OIP_NAME_MAX + 16];
        snprintf(what, sizeof what, "output '%.*s'", OIP_NAME_MAX - 1, t->name ? t->name : "");
        if (i)
            buf_putc(&b, ',');
        buf_puts(&b, "{\"name\":");
        put_str(&b, t->name);
        buf_printf(&b, ",\"datatype\":\"%s\",\"shape\":[", dtype_name((enum dtype)t->datatype));
        for (size_t d = 0; d < t->n_shape; d++)
            buf_printf(&b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        buf_putc(&b, ']');
        if (binary) {
            any_binary = 1;
            buf_printf(&b, ",\"parameters\":{\"binary_data_size\":%zu}}", t->data.len);
            buf_append(&bin, t->data.data, t->data.len);
            continue;
        }
        buf_puts(&b, ",\"data\":");
        if ((rc = oip_tensor_to_json(&b, what, (enum dtype)t->datatype, t->data.data, t->data.len,
                                     e)))
            goto fail;
        buf_putc(&b, '}');
    }
    buf_puts(&b, "]}");
done:
    *json_len = b.len;
    if (any_binary)
        buf_append(&b, bin.data, bin.len);
    if (b.oom || bin.oom) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the answer");
        goto fail;
    }
    buf_free(&bin);
    free(cdata);
    *body = buf_steal(&b, len);
    if (!*body)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the answer");
    return CORRAL_OK;
fail:
    free(cdata);
    buf_free(&b);
    buf_free(&bin);
    return rc;
}

/* ---- requests built from model metadata ---- */

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
    json_error_t jerr;
    int rc;
    json_t *col = NULL;
    infer_init(in, model, version);
    in->predict = 1;
    in->root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!in->root)
        return cerr_set(e, CORRAL_EINVAL, "request body is not valid JSON: %s at line %d column %d",
                        jerr.text, jerr.line, jerr.column);
    json_t *inst = json_is_object(in->root) ? json_object_get(in->root, "instances") : NULL;
    if (!inst || !json_is_array(inst) || json_array_size(inst) == 0)
        return cerr_set(e, CORRAL_EINVAL, "predict body must be {\"instances\": [row, ...]} with "
                        "at least one instance");
    size_t n = json_array_size(inst);
    if (md->n_inputs == 0)
        return cerr_set(e, CORRAL_EIO, "model '%s' reports no inputs", model);
    if ((rc = infer_alloc_inputs(in, md->n_inputs, e)))
        return rc;
    for (size_t j = 0; j < md->n_inputs; j++) {
        const Corral__TensorMetadata *tm = md->inputs[j];
        Corral__Tensor *t = &in->inputs[j];
        char what[OIP_NAME_MAX + 16];
        int64_t dims[TENSOR_MAX_DIMS];
        int ndim = (int)tm->n_shape;
        snprintf(what, sizeof what, "input '%.*s'", OIP_NAME_MAX - 1, tm->name ? tm->name : "");
        if (ndim < 1 || ndim > TENSOR_MAX_DIMS || tm->shape[0] != -1)
            return cerr_set(e, CORRAL_EINVAL, "%s of model '%s' has no variable batch dimension; "
                            "predict needs one (use the v2 infer endpoint)", what, model);
        col = json_array();
        if (!col)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory converting instances");
        for (size_t i = 0; i < n; i++) {
            json_t *row = json_array_get(inst, i), *v = row;
            if (json_is_object(row)) {
                v = json_object_get(row, tm->name);
                if (!v) {
                    rc = cerr_set(e, CORRAL_EINVAL, "instance %zu has no value for %s", i, what);
                    goto fail;
                }
            } else if (md->n_inputs > 1) {
                rc = cerr_set(e, CORRAL_EINVAL, "model '%s' has %zu inputs, so each instance must "
                              "be an object naming them (instance %zu is not)", model,
                              md->n_inputs, i);
                goto fail;
            }
            if (json_array_append(col, v)) {
                rc = cerr_set(e, CORRAL_ENOMEM, "out of memory converting instances");
                goto fail;
            }
        }
        /* Variable non-batch dimensions take the sizes the first instance is nested with. */
        dims[0] = (int64_t)n;
        json_t *probe = json_array_get(col, 0);
        for (int d = 1; d < ndim; d++) {
            dims[d] = tm->shape[d];
            if (dims[d] < 0)
                dims[d] = json_is_array(probe) ? (int64_t)json_array_size(probe) : 1;
            probe = json_is_array(probe) ? json_array_get(probe, 0) : NULL;
        }
        t->name = tm->name;
        t->datatype = tm->datatype;
        t->shape = malloc(sizeof(int64_t) * (size_t)ndim);
        if (!t->shape) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory converting instances");
            goto fail;
        }
        memcpy(t->shape, dims, sizeof(int64_t) * (size_t)ndim);
        t->n_shape = (size_t)ndim;
        /* Nested rows follow the shape; flat values are accepted as well (the converter
         * checks the count either way). */
        rc = oip_json_to_tensor(what, col, (enum dtype)tm->datatype, dims, ndim, &t->data.data,
                                &t->data.len, e);
        if (rc)
            goto fail;
        json_decref(col);
        col = NULL;
    }
    return CORRAL_OK;
fail:
    if (col)
        json_decref(col);
    return rc;
}
