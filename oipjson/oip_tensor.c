/*
 * JSON values into tensors (oip_codec.h's oip_json_to_tensor and
 * oip_json_array_to_tensor): every value of an input's "data", flat or nested as its
 * shape says, converted straight into the datatype's bytes as the reader hands it over,
 * with its range checked (integers exactly, reals to the nearest float) and every
 * refusal naming the input, the element and what was expected. The infer request
 * parsers (oip_request.c) and v1 predict call it for each input.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip_codec.h"

/* ---- JSON -> tensor ---- */

struct fill {
    const char *what;
    const struct jdoc *d;
    enum dtype dt;
    uint8_t *dst;      /* fixed-size types */
    struct buf *bytes; /* BYTES */
    size_t idx;        /* next element */
    size_t n;          /* elements expected */
};

/* The number's text as written, shortened for messages. */
static const char *num_text(const struct fill *f, uint32_t v, char *s, size_t cap)
{
    const struct jtok *t = &f->d->tok[v];
    size_t n = t->len < cap - 4 ? t->len : cap - 4;
    memcpy(s, f->d->text + t->off, n);
    strcpy(s + n, n < t->len ? "..." : "");
    return s;
}

static const char *value_kind(const struct fill *f, uint32_t v)
{
    switch (jdoc_type(f->d, v)) {
    case JT_STRING: return "string";
    case JT_TRUE:
    case JT_FALSE: return "boolean";
    case JT_NULL: return "null";
    default: return "array or object";
    }
}

static int range_error(struct fill *f, uint32_t v, int64_t lo, uint64_t hi, struct cerr *e)
{
    char s[48];
    return cerr_set(e, CORRAL_EINVAL, "%s value %s at index %zu is out of range for %s "
                    "(%lld to %llu)", f->what, num_text(f, v, s, sizeof s), f->idx,
                    dtype_name(f->dt), (long long)lo, (unsigned long long)hi);
}

/*
 * An integer element: written as an integer, or as a number with an integral
 * value (3.0, 1e2). *neg_out tells the sign for UINT64's full range.
 */
static int get_integer(struct fill *f, uint32_t v, int64_t lo, uint64_t hi, uint64_t *mag,
                       int *neg, struct cerr *e)
{
    char s[48];
    const struct jdoc *d = f->d;
    if (jdoc_type(d, v) != JT_NUMBER)
        return cerr_set(e, CORRAL_EINVAL, "%s element %zu is a JSON %s, expected an integer "
                        "for datatype %s", f->what, f->idx, value_kind(f, v), dtype_name(f->dt));
    int rc = jdoc_integer(d, v, neg, mag);
    if (rc == JNUM_RANGE)
        return range_error(f, v, lo, hi, e);
    if (rc == JNUM_NOT_INTEGER) {
        double r = 0;
        if (jdoc_double(d, v, &r) != JNUM_OK || r <= -18446744073709551616.0 ||
            r >= 18446744073709551616.0)
            return range_error(f, v, lo, hi, e);
        if (r != floor(r))
            return cerr_set(e, CORRAL_EINVAL, "%s value %s at index %zu is not an integer, "
                            "expected an integer for datatype %s", f->what,
                            num_text(f, v, s, sizeof s), f->idx, dtype_name(f->dt));
        *neg = r < 0;
        *mag = (uint64_t)fabs(r);
    }
    if (*mag == 0)
        *neg = 0; /* -0 is 0 */
    if (*neg ? lo >= 0 || *mag > (uint64_t)0 - (uint64_t)lo : *mag > hi)
        return range_error(f, v, lo, hi, e);
    return CORRAL_OK;
}

static int put_integer(struct fill *f, uint32_t v, int64_t lo, uint64_t hi, size_t width,
                       struct cerr *e)
{
    uint64_t mag = 0;
    int neg = 0, rc;
    if ((rc = get_integer(f, v, lo, hi, &mag, &neg, e)))
        return rc;
    uint64_t bits = neg ? (uint64_t)0 - mag : mag; /* two's complement, truncated below */
    memcpy(f->dst + width * f->idx, &bits, width); /* little-endian: the low bytes */
    return CORRAL_OK;
}

static int real_error(struct fill *f, uint32_t v, int why, double lim, struct cerr *e)
{
    char s[48];
    if (why == JNUM_NOT_NUMBER)
        return cerr_set(e, CORRAL_EINVAL, "%s element %zu is a JSON %s, expected a number for "
                        "datatype %s", f->what, f->idx, value_kind(f, v), dtype_name(f->dt));
    return cerr_set(e, CORRAL_EINVAL, "%s value %s at index %zu is out of range for %s "
                    "(magnitude at most %g)", f->what, num_text(f, v, s, sizeof s), f->idx,
                    dtype_name(f->dt), lim);
}

static int put_value(struct fill *f, uint32_t v, struct cerr *e)
{
    if (f->idx >= f->n)
        return CORRAL_OK; /* counted only; the caller reports the length mismatch */
    const struct jdoc *d = f->d;
    size_t k = f->idx;
    uint8_t *p = f->dst;
    int rc;
    switch (f->dt) {
    case DT_FP32: {
        float x;
        if ((rc = jdoc_float(d, v, &x)))
            return real_error(f, v, rc, FLT_MAX, e);
        memcpy(p + 4 * k, &x, 4);
        return CORRAL_OK;
    }
    case DT_FP16:
    case DT_BF16: {
        float x;
        double lim = f->dt == DT_FP16 ? 65504.0 : FLT_MAX;
        if ((rc = jdoc_float(d, v, &x)) || fabsf(x) > lim)
            return real_error(f, v, rc ? rc : JNUM_RANGE, lim, e);
        uint16_t h = f->dt == DT_FP16 ? oip_f32_to_f16(x) : oip_f32_to_bf16(x);
        memcpy(p + 2 * k, &h, 2);
        return CORRAL_OK;
    }
    case DT_FP64: {
        double x;
        if ((rc = jdoc_double(d, v, &x)))
            return real_error(f, v, rc, DBL_MAX, e);
        memcpy(p + 8 * k, &x, 8);
        return CORRAL_OK;
    }
    case DT_BOOL: {
        enum jtype t = jdoc_type(d, v);
        int64_t i = -1;
        if (t == JT_TRUE || t == JT_FALSE)
            p[k] = t == JT_TRUE;
        else if (t == JT_NUMBER && jdoc_int64(d, v, &i) == JNUM_OK && (i == 0 || i == 1))
            p[k] = (uint8_t)i;
        else
            return cerr_set(e, CORRAL_EINVAL, "%s element %zu is not a boolean, expected true or "
                            "false for datatype BOOL", f->what, k);
        return CORRAL_OK;
    }
    case DT_UINT8: return put_integer(f, v, 0, UINT8_MAX, 1, e);
    case DT_UINT16: return put_integer(f, v, 0, UINT16_MAX, 2, e);
    case DT_UINT32: return put_integer(f, v, 0, UINT32_MAX, 4, e);
    case DT_UINT64: return put_integer(f, v, 0, UINT64_MAX, 8, e);
    case DT_INT8: return put_integer(f, v, INT8_MIN, INT8_MAX, 1, e);
    case DT_INT16: return put_integer(f, v, INT16_MIN, INT16_MAX, 2, e);
    case DT_INT32: return put_integer(f, v, INT32_MIN, INT32_MAX, 4, e);
    case DT_INT64: return put_integer(f, v, INT64_MIN, INT64_MAX, 8, e);
    case DT_BYTES: {
        if (jdoc_type(d, v) != JT_STRING)
            return cerr_set(e, CORRAL_EINVAL, "%s element %zu is not a string, expected a string "
                            "for datatype BYTES", f->what, k);
        size_t n = jdoc_strlen(d, v);
        uint8_t len[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
        buf_append(f->bytes, len, 4);
        buf_append(f->bytes, jdoc_str(d, v), n);
        if (f->bytes->oom)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", f->what);
        return CORRAL_OK;
    }
    default:
        return cerr_set(e, CORRAL_EINVAL, "%s has datatype %s, which has no JSON form", f->what,
                        dtype_name(f->dt));
    }
}

/* The values of a flat array, in order: FP32 (most tensors) without the per-value switch. */
static int fill_flat(struct fill *f, uint32_t arr, struct cerr *e)
{
    const struct jdoc *d = f->d;
    for (uint32_t i = arr + 1; i < jdoc_end(d, arr); i = jdoc_skip(d, i), f->idx++) {
        int rc;
        if (f->dt == DT_FP32 && f->idx < f->n) {
            float x;
            if ((rc = jdoc_float(d, i, &x)))
                return real_error(f, i, rc, FLT_MAX, e);
            memcpy(f->dst + 4 * f->idx, &x, 4);
        } else if ((rc = put_value(f, i, e))) {
            return rc;
        }
    }
    return CORRAL_OK;
}

static int fill_nested(struct fill *f, uint32_t node, int depth, const int64_t *dims, int ndim,
                       struct cerr *e)
{
    char sb[128];
    const struct jdoc *d = f->d;
    if (depth == ndim) {
        if (jdoc_is_array(d, node))
            return cerr_set(e, CORRAL_EINVAL, "%s data is nested deeper than its shape %s",
                            f->what, tensor_shape_str(dims, ndim, sb, sizeof sb));
        int rc = put_value(f, node, e);
        f->idx++;
        return rc;
    }
    if (!jdoc_is_array(d, node))
        return cerr_set(e, CORRAL_EINVAL, "%s data has a value where shape %s expects an array "
                        "of %lld at nesting depth %d", f->what,
                        tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)dims[depth],
                        depth);
    size_t n = jdoc_size(d, node);
    if ((int64_t)n != dims[depth])
        return cerr_set(e, CORRAL_EINVAL, "%s data has %zu values at nesting depth %d, shape %s "
                        "expects %lld there", f->what, n, depth,
                        tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)dims[depth]);
    if (depth == ndim - 1 && jdoc_is_flat_array(d, node))
        return fill_flat(f, node, e);
    for (uint32_t i = node + 1; i < jdoc_end(d, node); i = jdoc_skip(d, i)) {
        int rc = fill_nested(f, i, depth + 1, dims, ndim, e);
        if (rc)
            return rc;
    }
    return CORRAL_OK;
}

/* Values (non-array leaves) under `node`, looking no deeper than a shape can be. */
static size_t count_values(const struct jdoc *d, uint32_t node, int depth)
{
    if (!jdoc_is_array(d, node))
        return 1;
    if (jdoc_is_flat_array(d, node))
        return jdoc_size(d, node);
    if (depth > TENSOR_MAX_DIMS)
        return 0;
    size_t n = 0;
    for (uint32_t i = node + 1; i < jdoc_end(d, node); i = jdoc_skip(d, i))
        n += jdoc_is_array(d, i) ? count_values(d, i, depth + 1) : 1;
    return n;
}

/*
 * The conversion, given the top-level elements either as a list (items) or, for
 * a flat array, as the array itself (flat != JDOC_NONE, items unused).
 */
static int to_tensor(const char *what, const struct jdoc *d, uint32_t flat, const uint32_t *items,
                     size_t n_items, enum dtype dt, const int64_t *dims, int ndim, uint8_t **out,
                     size_t *out_len, struct cerr *e)
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
    /* Counting first means a shape that promises far more values than were sent is refused
     * before its buffer is allocated. */
    size_t have = flat != JDOC_NONE ? jdoc_size(d, flat) : 0;
    for (size_t i = 0; flat == JDOC_NONE && i < n_items; i++)
        have += count_values(d, items[i], 1);
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
    struct fill f = {.what = what, .d = d, .dt = dt, .dst = dst, .bytes = &bytes,
                     .n = (size_t)numel};
    int nested = flat == JDOC_NONE && n_items > 0 && jdoc_is_array(d, items[0]);
    if (flat != JDOC_NONE) {
        if ((rc = fill_flat(&f, flat, e)))
            goto fail;
    } else if (nested && ndim > 1) {
        if ((int64_t)n_items != dims[0]) {
            rc = cerr_set(e, CORRAL_EINVAL, "%s data has %zu values at nesting depth 0, shape %s "
                          "expects %lld there", what, n_items,
                          tensor_shape_str(dims, ndim, sb, sizeof sb), (long long)dims[0]);
            goto fail;
        }
        for (size_t i = 0; i < n_items; i++)
            if ((rc = fill_nested(&f, items[i], 1, dims, ndim, e)))
                goto fail;
    } else {
        for (size_t i = 0; i < n_items; i++) {
            if (jdoc_is_array(d, items[i])) {
                rc = cerr_set(e, CORRAL_EINVAL, "%s data mixes arrays and values (element %zu is "
                              "an array); expected flat values or nesting that follows shape %s",
                              what, i, tensor_shape_str(dims, ndim, sb, sizeof sb));
                goto fail;
            }
            if ((rc = put_value(&f, items[i], e)))
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

int oip_json_to_tensor(const char *what, const struct jdoc *d, const uint32_t *items,
                       size_t n_items, enum dtype dt, const int64_t *dims, int ndim,
                       uint8_t **out, size_t *out_len, struct cerr *e)
{
    return to_tensor(what, d, JDOC_NONE, items, n_items, dt, dims, ndim, out, out_len, e);
}

/* The elements of array `a` as a malloc'd index list (*n of them). */
static uint32_t *array_items(const struct jdoc *d, uint32_t a, size_t *n)
{
    *n = jdoc_size(d, a);
    uint32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    if (!v)
        return NULL;
    size_t k = 0;
    for (uint32_t i = a + 1; i < jdoc_end(d, a); i = jdoc_skip(d, i))
        v[k++] = i;
    return v;
}

int oip_json_array_to_tensor(const char *what, const struct jdoc *d, uint32_t data, enum dtype dt,
                             const int64_t *dims, int ndim, uint8_t **out, size_t *out_len,
                             struct cerr *e)
{
    char sb[128];
    int64_t numel = 0;
    *out = NULL;
    *out_len = 0;
    if (data == JDOC_NONE || !jdoc_is_array(d, data)) {
        if (tensor_numel(dims, ndim, &numel, e))
            return cerr_prefix(e, "%s", what);
        return cerr_set(e, CORRAL_EINVAL, "%s 'data' must be an array of %lld values (flat or "
                        "nested as shape %s)", what, (long long)numel,
                        tensor_shape_str(dims, ndim, sb, sizeof sb));
    }
    if (jdoc_is_flat_array(d, data))
        return to_tensor(what, d, data, NULL, 0, dt, dims, ndim, out, out_len, e);
    size_t n;
    uint32_t *items = array_items(d, data, &n);
    if (!items)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory converting %s", what);
    int rc = oip_json_to_tensor(what, d, items, n, dt, dims, ndim, out, out_len, e);
    free(items);
    return rc;
}
