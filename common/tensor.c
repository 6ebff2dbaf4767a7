#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[DT_COUNT] = {
    [DT_INVALID] = {"INVALID", 0}, [DT_BOOL] = {"BOOL", 1},     [DT_UINT8] = {"UINT8", 1},
    [DT_UINT16] = {"UINT16", 2},   [DT_UINT32] = {"UINT32", 4}, [DT_UINT64] = {"UINT64", 8},
    [DT_INT8] = {"INT8", 1},       [DT_INT16] = {"INT16", 2},   [DT_INT32] = {"INT32", 4},
    [DT_INT64] = {"INT64", 8},     [DT_FP16] = {"FP16", 2},     [DT_FP32] = {"FP32", 4},
    [DT_FP64] = {"FP64", 8},       [DT_BYTES] = {"BYTES", 0},   [DT_BF16] = {"BF16", 2},
};

int dtype_valid(int v) { return v > DT_INVALID && v < DT_COUNT; }

size_t dtype_size(enum dtype t) { return dtype_valid((int)t) ? dtype_info[t].size : 0; }

const char *dtype_name(enum dtype t)
{
    return dtype_valid((int)t) ? dtype_info[t].name : "INVALID";
}

enum dtype dtype_from_name(const char *s)
{
    if (!s)
        return DT_INVALID;
    for (int i = 1; i < DT_COUNT; i++)
        if (strcmp(s, dtype_info[i].name) == 0)
            return (enum dtype)i;
    return DT_INVALID;
}

const char *tensor_shape_str(const int64_t *dims, int ndim, char *buf, size_t len)
{
    size_t off = 0;
    if (len == 0)
        return buf;
    buf[0] = '\0';
    off += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, i ? ",%lld" : "%lld", (long long)dims[i]);
    if (off < len)
        snprintf(buf + off, len - off, "]");
    return buf;
}

int tensor_numel(const int64_t *dims, int ndim, int64_t *out, struct cerr *e)
{
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "shape has %d dimensions, expected at most %d", ndim,
                        TENSOR_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0)
            return cerr_set(e, CORRAL_EINVAL, "dimension %d is %lld, expected a size >= 0", i,
                            (long long)dims[i]);
        if (dims[i] != 0 && n > INT64_MAX / dims[i])
            return cerr_set(e, CORRAL_ETOOLARGE, "shape is too large (element count overflows)");
        n *= dims[i];
    }
    *out = n;
    return CORRAL_OK;
}

int tensor_nbytes(enum dtype t, const int64_t *dims, int ndim, size_t *out, struct cerr *e)
{
    int64_t n = 0;
    int rc = tensor_numel(dims, ndim, &n, e);
    if (rc)
        return rc;
    size_t es = dtype_size(t);
    if (es == 0)
        return cerr_set(e, CORRAL_EINVAL, "datatype %s has no fixed element size", dtype_name(t));
    if ((uint64_t)n > TENSOR_MAX_BYTES / es)
        return cerr_set(e, CORRAL_ETOOLARGE, "tensor of %lld elements exceeds the %zu byte limit",
                        (long long)n, TENSOR_MAX_BYTES);
    *out = (size_t)n * es;
    return CORRAL_OK;
}

int tensor_check_size(const char *what, enum dtype t, const int64_t *dims, int ndim,
                      const void *data, size_t nbytes, struct cerr *e)
{
    char sb[128];
    if (!dtype_valid((int)t))
        return cerr_set(e, CORRAL_EINVAL, "%s has an invalid datatype (%d)", what, (int)t);
    int64_t n = 0;
    int rc = tensor_numel(dims, ndim, &n, e);
    if (rc)
        return cerr_prefix(e, "%s", what);
    if (t == DT_BYTES) {
        const uint8_t *p = data;
        size_t off = 0;
        int64_t count = 0;
        while (off < nbytes) {
            if (nbytes - off < 4)
                return cerr_set(e, CORRAL_EINVAL,
                                "%s: BYTES element %lld has a truncated 4-byte length prefix",
                                what, (long long)count);
            uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 |
                         (uint32_t)p[off + 2] << 16 | (uint32_t)p[off + 3] << 24;
            off += 4;
            if (l > nbytes - off)
                return cerr_set(e, CORRAL_EINVAL,
                                "%s: BYTES element %lld claims %u bytes but only %zu remain", what,
                                (long long)count, l, nbytes - off);
            off += l;
            count++;
        }
        if (count != n)
            return cerr_set(e, CORRAL_EINVAL, "%s has %lld BYTES elements, shape %s expects %lld",
                            what, (long long)count, tensor_shape_str(dims, ndim, sb, sizeof sb),
                            (long long)n);
        return CORRAL_OK;
    }
    size_t want = 0;
    rc = tensor_nbytes(t, dims, ndim, &want, e);
    if (rc)
        return cerr_prefix(e, "%s", what);
    if (want != nbytes)
        return cerr_set(e, CORRAL_EINVAL,
                        "%s has %zu bytes of data, expected %zu for %s of shape %s", what, nbytes,
                        want, dtype_name(t), tensor_shape_str(dims, ndim, sb, sizeof sb));
    return CORRAL_OK;
}

int tensor_alloc(struct tensor *t, const char *name, enum dtype dt, const int64_t *dims, int ndim,
                 struct cerr *e)
{
    size_t nb = 0;
    int rc = tensor_nbytes(dt, dims, ndim, &nb, e);
    if (rc)
        return rc;
    memset(t, 0, sizeof *t);
    t->data = calloc(1, nb ? nb : 1);
    if (!t->data)
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes", nb);
    t->name = name;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->dims, dims, sizeof(int64_t) * (size_t)ndim);
    t->nbytes = nb;
    t->owned = 1;
    return CORRAL_OK;
}

void tensor_release(struct tensor *t)
{
    if (!t)
        return;
    if (t->owned)
        free(t->data);
    memset(t, 0, sizeof *t);
}
