#include <stdio.h>
#include <string.h>

#include "engine_internal.h"

/* Attribute parsing and shape helpers shared by the op families. */

const Onnx__AttributeProto *eng_attr_find(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

int eng_attr_int(const struct eng_setup *s, const char *name, int64_t def, int64_t *out,
                 struct cerr *e)
{
    const Onnx__AttributeProto *a = eng_attr_find(s->n, name);
    *out = def;
    if (!a)
        return CORRAL_OK;
    if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT) ||
        (!a->has_type && !a->has_i))
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be an int", s->nd->label, name);
    *out = a->i;
    return CORRAL_OK;
}

int eng_attr_float(const struct eng_setup *s, const char *name, float def, float *out,
                   struct cerr *e)
{
    const Onnx__AttributeProto *a = eng_attr_find(s->n, name);
    *out = def;
    if (!a)
        return CORRAL_OK;
    if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT) ||
        (!a->has_type && !a->has_f))
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be a float", s->nd->label,
                        name);
    *out = a->f;
    return CORRAL_OK;
}

int eng_attr_ints(const struct eng_setup *s, const char *name, int64_t *out, int max, int *n,
                  struct cerr *e)
{
    const Onnx__AttributeProto *a = eng_attr_find(s->n, name);
    *n = -1;
    if (!a)
        return CORRAL_OK;
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be a list of ints",
                        s->nd->label, name);
    if (a->n_ints > (size_t)max)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: attribute '%s' has %zu values, the engine "
                        "supports at most %d", s->nd->label, name, a->n_ints, max);
    for (size_t i = 0; i < a->n_ints; i++)
        out[i] = a->ints[i];
    *n = (int)a->n_ints;
    return CORRAL_OK;
}

int eng_attr_str(const struct eng_setup *s, const char *name, char *buf, size_t len,
                 struct cerr *e)
{
    const Onnx__AttributeProto *a = eng_attr_find(s->n, name);
    buf[0] = '\0';
    if (!a)
        return CORRAL_OK;
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING)
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be a string", s->nd->label,
                        name);
    size_t l = a->s.len < len - 1 ? a->s.len : len - 1;
    if (l)
        memcpy(buf, a->s.data, l);
    buf[l] = '\0';
    return CORRAL_OK;
}

int eng_need_dtype(const struct eng_setup *s, int k, unsigned mask, const char *what,
                   struct cerr *e)
{
    if (k >= s->nd->n_in || s->nd->in[k] < 0)
        return CORRAL_OK;
    enum dtype dt = s->in_dt[k < 64 ? k : 63];
    if (dt < 32 && (mask & DTM(dt)))
        return CORRAL_OK;
    return cerr_set(e, CORRAL_EUNSUPP, "%s: input '%s' is %s; the engine implements this op "
                    "for %s only", s->nd->label, s->eng->vals[s->nd->in[k]].name,
                    dtype_name(dt), what);
}

int eng_broadcast(const struct plan_step *st, const int64_t *a, int na, const int64_t *b, int nb,
                  int64_t *out, int *nout, struct cerr *e)
{
    char s1[160], s2[160];
    int n = na > nb ? na : nb;
    for (int i = n - 1; i >= 0; i--) {
        int ai = i - (n - na), bi = i - (n - nb);
        int64_t ad = ai >= 0 ? a[ai] : 1, bd = bi >= 0 ? b[bi] : 1;
        if (ad != bd && ad != 1 && bd != 1)
            return cerr_set(e, CORRAL_EINVAL, "%s: shapes %s and %s cannot be broadcast together",
                            st->label, tensor_shape_str(a, na, s1, sizeof s1),
                            tensor_shape_str(b, nb, s2, sizeof s2));
        out[i] = ad == 1 ? bd : ad;
    }
    *nout = n;
    return CORRAL_OK;
}

int eng_axis(const struct plan_step *st, int64_t axis, int r, int inclusive, int *out,
             struct cerr *e)
{
    int64_t lim = inclusive ? r + 1 : r;
    if (axis < -(int64_t)r || axis >= lim)
        return cerr_set(e, CORRAL_EINVAL, "%s: axis %lld is out of range for a %d-D input",
                        st->label, (long long)axis, r);
    *out = (int)(axis < 0 ? axis + r : axis);
    return CORRAL_OK;
}

int64_t eng_numel(const int64_t *dims, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    return n;
}

int eng_set_shape(struct plan_value *v, enum dtype dt, const int64_t *dims, int ndim,
                  struct cerr *e)
{
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EUNSUPP, "value '%s' would have %d dimensions, the engine "
                        "supports at most %d", v->name, ndim, TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (dims[i] < 0)
            return cerr_set(e, CORRAL_EINVAL, "value '%s' would have a negative dimension",
                            v->name);
    /*
     * A zero-sized dimension makes any other legal for the byte count, but
     * kernels multiply dimensions together (strides, row counts), and shapes
     * may come from caller values: bound the non-zero dimensions' product too,
     * as bind_input does for model inputs.
     */
    uint64_t span = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = dims[i] ? (uint64_t)dims[i] : 1;
        if (d > TENSOR_MAX_BYTES / span)
            return cerr_set(e, CORRAL_ETOOLARGE, "value '%s' would have dimensions that "
                            "multiply past the engine's limit", v->name);
        span *= d;
    }
    size_t nb = 0;
    int rc = tensor_nbytes(dt, dims, ndim, &nb, e);
    if (rc)
        return cerr_prefix(e, "value '%s'", v->name);
    if (nb > TENSOR_MAX_BYTES)
        return cerr_set(e, CORRAL_ETOOLARGE, "value '%s' would need %zu bytes, more than the "
                        "engine's limit", v->name, nb);
    v->dtype = dt;
    v->ndim = ndim;
    memset(v->dims, 0, sizeof v->dims);
    if (ndim)
        memcpy(v->dims, dims, (size_t)ndim * sizeof *dims);
    v->nbytes = nb;
    return CORRAL_OK;
}

int64_t eng_int_at(const void *data, enum dtype dt, int64_t i)
{
    switch (dt) {
    case DT_INT32: return ((const int32_t *)data)[i];
    case DT_INT64: return ((const int64_t *)data)[i];
    case DT_UINT8:
    case DT_BOOL: return ((const uint8_t *)data)[i];
    default: return 0;
    }
}
