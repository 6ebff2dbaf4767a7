#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine_internal.h"
#include "engine_scalar.h"

/*
 * Data movement and shape ops: Concat, Split, Slice, Gather, Transpose,
 * Reshape and its relatives, Pad, Tile, Expand, Shape, Size, ConstantOfShape,
 * Range, Cast, Dropout/Identity. They move bytes, so most work for every
 * fixed-size datatype. Shape inputs (Reshape's shape, Slice's starts...) must
 * be constant within a plan: shape-only subgraphs are folded before these run,
 * and model inputs that feed them are constants of their plan (value_keyed,
 * see engine_mark_value_inputs). Those values come from callers, so shape
 * inference (engine_k_shape_infer.c) checks them like any untrusted input.
 * This file holds their load-time setup and their reference kernels.
 */

static unsigned fixed_mask(void)
{
    return DTM(DT_BOOL) | DTM(DT_UINT8) | DTM(DT_UINT16) | DTM(DT_UINT32) | DTM(DT_UINT64) |
           DTM(DT_INT8) | DTM(DT_INT16) | DTM(DT_INT32) | DTM(DT_INT64) | DTM(DT_FP16) |
           DTM(DT_FP32) | DTM(DT_FP64) | DTM(DT_BF16);
}

#define DTM_IDX (DTM(DT_INT64) | DTM(DT_INT32))

int eng_setup_shape(struct eng_setup *s, struct cerr *e)
{
    struct eng_node *nd = s->nd;
    struct eng_attrs *a = &nd->a;
    int64_t iv = 0;
    int rc = CORRAL_OK, n = 0, opset = s->eng->opset;
    if (nd->op != EOP_CONSTANTOFSHAPE && nd->op != EOP_RANGE && nd->n_in > 0 &&
        (rc = eng_need_dtype(s, 0, fixed_mask(), "fixed-size datatypes", e)))
        return rc;
    s->out_dt[0] = s->in_dt[0];
    switch (nd->op) {
    case EOP_CONCAT:
        if (!eng_attr_find(s->n, "axis"))
            return cerr_set(e, CORRAL_EINVAL, "%s: attribute 'axis' is required", nd->label);
        if ((rc = eng_attr_int(s, "axis", 0, &iv, e)))
            return rc;
        a->axis = (int)iv;
        for (int k = 1; k < nd->n_in; k++)
            if (s->in_dt[k] != s->in_dt[0])
                return cerr_set(e, CORRAL_EINVAL, "%s: inputs have different datatypes",
                                nd->label);
        break;
    case EOP_SPLIT:
        if ((rc = eng_attr_int(s, "axis", 0, &iv, e)))
            return rc;
        a->axis = (int)iv;
        if ((rc = eng_attr_ints(s, "split", a->ints, ENG_MAX_INTS, &n, e)))
            return rc;
        a->n_ints = n;
        if (n >= 0 && n != nd->n_out)
            return cerr_set(e, CORRAL_EINVAL, "%s: 'split' has %d values for %d outputs",
                            nd->label, n, nd->n_out);
        if (nd->n_in > 1 && (rc = eng_need_dtype(s, 1, DTM(DT_INT64), "INT64 split sizes", e)))
            return rc;
        for (int k = 1; k < nd->n_out && k < 64; k++)
            s->out_dt[k] = s->in_dt[0];
        break;
    case EOP_SLICE:
        if (opset < 10) {
            a->LEGACY_ATTRS = 1;
            int ns = 0, ne = 0;
            if ((rc = eng_attr_ints(s, "starts", a->starts, TENSOR_MAX_DIMS, &ns, e)) ||
                (rc = eng_attr_ints(s, "ends", a->steps, TENSOR_MAX_DIMS, &ne, e)) ||
                (rc = eng_attr_ints(s, "axes", a->ints, ENG_MAX_INTS, &n, e)))
                return rc;
            if (ns < 0 || ns != ne || (n >= 0 && n != ns))
                return cerr_set(e, CORRAL_EINVAL, "%s: starts, ends and axes must have the same "
                                "length", nd->label);
            a->n_ints = n < 0 ? -ns - 2 : n; /* -2 - count: no axes given */
        }
        for (int k = 1; k < nd->n_in; k++)
            if ((rc = eng_need_dtype(s, k, DTM_IDX, "INT64 and INT32 starts/ends/axes/steps",
                                     e)))
                return rc;
        break;
    case EOP_GATHER:
        if ((rc = eng_attr_int(s, "axis", 0, &iv, e)))
            return rc;
        a->axis = (int)iv;
        if ((rc = eng_need_dtype(s, 1, DTM_IDX, "INT64 and INT32 indices", e)))
            return rc;
        break;
    case EOP_TRANSPOSE:
        if ((rc = eng_attr_ints(s, "perm", a->ints, ENG_MAX_INTS, &n, e)))
            return rc;
        a->n_ints = n;
        break;
    case EOP_RESHAPE:
        if ((rc = eng_need_dtype(s, 1, DTM(DT_INT64), "an INT64 shape", e)))
            return rc;
        if ((rc = eng_attr_int(s, "allowzero", 0, &iv, e)))
            return rc;
        a->allowzero = iv != 0;
        break;
    case EOP_FLATTEN:
        if ((rc = eng_attr_int(s, "axis", 1, &iv, e)))
            return rc;
        a->axis = (int)iv;
        break;
    case EOP_SQUEEZE:
    case EOP_UNSQUEEZE:
        if ((rc = eng_attr_ints(s, "axes", a->ints, ENG_MAX_INTS, &n, e)))
            return rc;
        a->n_ints = n;
        if (nd->n_in > 1 && (rc = eng_need_dtype(s, 1, DTM(DT_INT64), "INT64 axes", e)))
            return rc;
        if (nd->op == EOP_UNSQUEEZE && n < 0 && nd->n_in < 2)
            return cerr_set(e, CORRAL_EINVAL, "%s: axes are required", nd->label);
        break;
    case EOP_PAD: {
        char mode[32];
        if ((rc = eng_attr_str(s, "mode", mode, sizeof mode, e)))
            return rc;
        if (!*mode || strcmp(mode, "constant") == 0)
            a->pad_mode = EPADM_CONSTANT;
        else if (strcmp(mode, "reflect") == 0)
            a->pad_mode = EPADM_REFLECT;
        else if (strcmp(mode, "edge") == 0)
            a->pad_mode = EPADM_EDGE;
        else if (strcmp(mode, "wrap") == 0)
            a->pad_mode = EPADM_WRAP;
        else
            return cerr_set(e, CORRAL_EUNSUPP, "%s: pad mode '%s' is not supported", nd->label,
                            mode);
        if (opset < 11) {
            int64_t p[2 * TENSOR_MAX_DIMS];
            const Onnx__AttributeProto *pa = eng_attr_find(s->n, "pads");
            if (!pa || pa->n_ints % 2 || pa->n_ints > 2 * TENSOR_MAX_DIMS)
                return cerr_set(e, CORRAL_EINVAL, "%s: attribute 'pads' must hold 2 values per "
                                "axis", nd->label);
            for (size_t i = 0; i < pa->n_ints; i++)
                p[i] = pa->ints[i];
            int r = (int)pa->n_ints / 2;
            for (int i = 0; i < r; i++) {
                a->starts[i] = p[i];
                a->steps[i] = p[r + i];
            }
            a->n_ints = r;
            a->LEGACY_ATTRS = 1;
            float v = 0;
            if ((rc = eng_attr_float(s, "value", 0.0f, &v, e)))
                return rc;
            a->value = v;
        } else {
            if ((rc = eng_need_dtype(s, 1, DTM(DT_INT64), "INT64 pads", e)))
                return rc;
            if (nd->n_in > 2 && nd->in[2] >= 0 && s->in_dt[2] != s->in_dt[0])
                return cerr_set(e, CORRAL_EINVAL, "%s: constant_value has another datatype",
                                nd->label);
            if (nd->n_in > 3 && (rc = eng_need_dtype(s, 3, DTM_IDX, "INT64 axes", e)))
                return rc;
        }
        break;
    }
    case EOP_TILE:
    case EOP_EXPAND:
        if ((rc = eng_need_dtype(s, 1, DTM(DT_INT64), "an INT64 shape/repeats", e)))
            return rc;
        break;
    case EOP_SHAPE:
        if ((rc = eng_attr_int(s, "start", 0, &iv, e)))
            return rc;
        a->starts[0] = iv;
        if ((rc = eng_attr_int(s, "end", INT64_MAX, &iv, e)))
            return rc;
        a->steps[0] = iv;
        s->out_dt[0] = DT_INT64;
        break;
    case EOP_SIZE: s->out_dt[0] = DT_INT64; break;
    case EOP_CONSTANTOFSHAPE: {
        if ((rc = eng_need_dtype(s, 0, DTM(DT_INT64), "an INT64 shape", e)))
            return rc;
        const Onnx__AttributeProto *va = eng_attr_find(s->n, "value");
        a->to = DT_FP32;
        a->value = 0;
        a->ivalue = 0;
        if (va) {
            struct tensor t;
            if (!va->t)
                return cerr_set(e, CORRAL_EINVAL, "%s: attribute 'value' holds no tensor",
                                nd->label);
            char what[400];
            snprintf(what, sizeof what, "%s value", nd->label);
            if ((rc = engine_tensor_from_proto(va->t, what, "value", &t, e)))
                return rc;
            if (eng_numel(t.dims, t.ndim) != 1 || !dtype_size(t.dtype)) {
                tensor_release(&t);
                return cerr_set(e, CORRAL_EINVAL, "%s: 'value' must hold one element",
                                nd->label);
            }
            a->to = t.dtype;
            switch (t.dtype) {
            case DT_FP32: a->value = *(float *)t.data; break;
            case DT_FP64: a->value = *(double *)t.data; break;
            case DT_INT64:
            case DT_INT32:
            case DT_BOOL:
            case DT_UINT8: a->ivalue = eng_int_at(t.data, t.dtype, 0); break;
            default:
                tensor_release(&t);
                return cerr_set(e, CORRAL_EUNSUPP, "%s: value of datatype %s is not supported",
                                nd->label, dtype_name(a->to));
            }
            tensor_release(&t);
        }
        s->out_dt[0] = a->to;
        break;
    }
    case EOP_RANGE:
        for (int k = 0; k < 3; k++) {
            if ((rc = eng_need_dtype(s, k, DTM_NUM, "FP32, INT64 and INT32", e)))
                return rc;
            if (s->in_dt[k] != s->in_dt[0])
                return cerr_set(e, CORRAL_EINVAL, "%s: inputs have different datatypes",
                                nd->label);
        }
        break;
    case EOP_CAST: {
        if ((rc = eng_attr_int(s, "to", 0, &iv, e)))
            return rc;
        enum dtype to = engine_dtype_from_onnx((int32_t)iv);
        unsigned ok = DTM(DT_FP32) | DTM(DT_FP64) | DTM(DT_INT64) | DTM(DT_INT32) |
                      DTM(DT_INT16) | DTM(DT_INT8) | DTM(DT_UINT8) | DTM(DT_UINT16) |
                      DTM(DT_UINT32) | DTM(DT_UINT64) | DTM(DT_BOOL);
        if (to == DT_INVALID || !(ok & DTM(to)))
            return cerr_set(e, CORRAL_EUNSUPP, "%s: Cast to %s is not supported", nd->label,
                            engine_onnx_type_name((int32_t)iv));
        if ((rc = eng_need_dtype(s, 0, ok, "numeric and BOOL datatypes", e)))
            return rc;
        a->to = to;
        s->out_dt[0] = to;
        break;
    }
    case EOP_DROPOUT: {
        int tm = nd->n_in > 2 ? nd->in[2] : -1;
        if (tm >= 0) {
            const struct eng_value *v = &s->eng->vals[tm];
            if (v->kind != EVK_CONST || v->dtype != DT_BOOL || v->init.nbytes != 1 ||
                *(const uint8_t *)v->init.data)
                return cerr_set(e, CORRAL_EUNSUPP, "%s: training_mode '%s' is not a constant "
                                "false; the engine runs Dropout in inference mode only",
                                nd->label, v->name);
        }
        if ((rc = eng_attr_int(s, "is_test", 1, &iv, e)))
            return rc;
        if (!iv)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: is_test=0 (training) is not supported; the "
                            "engine runs Dropout in inference mode only", nd->label);
        s->out_dt[1] = DT_BOOL;
        break;
    }
    default: break;
    }
    return CORRAL_OK;
}

/* ---- kernels ---- */

/* Copies out elements in order from in_base + sum(idx[d] * str[d]) (element strides). */
static void strided_copy(char *out, const char *in, size_t es, int nd, const int64_t *dims,
                         const int64_t *str)
{
    int64_t total = eng_numel(dims, nd);
    if (total == 0)
        return;
    if (nd == 0) {
        memcpy(out, in, es);
        return;
    }
    int64_t idx[TENSOR_MAX_DIMS] = {0}, row = dims[nd - 1], rs = str[nd - 1];
    for (int64_t o = 0; o < total; o += row) {
        int64_t off = 0;
        for (int i = 0; i < nd - 1; i++)
            off += idx[i] * str[i];
        const char *src = in + off * (int64_t)es;
        char *dst = out + o * (int64_t)es;
        if (rs == 1)
            memcpy(dst, src, (size_t)row * es);
        else if (es == 4)
            for (int64_t j = 0; j < row; j++)
                memcpy(dst + j * 4, src + j * rs * 4, 4);
        else
            for (int64_t j = 0; j < row; j++)
                memcpy(dst + j * (int64_t)es, src + j * rs * (int64_t)es, es);
        for (int i = nd - 2; i >= 0 && ++idx[i] == dims[i]; i--)
            idx[i] = 0;
    }
}

static void dense_strides(const int64_t *dims, int nd, int64_t *str)
{
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        str[i] = s;
        s *= dims[i];
    }
}

static int run_cast(const struct tensor *X, struct tensor *Y)
{
    int64_t n = eng_numel(X->dims, X->ndim);
    for (int64_t i = 0; i < n; i++) {
        double v;
        int64_t iv;
        int isint = eng_cast_load(X->data, X->dtype, i, Y->dtype, &v, &iv);
        eng_cast_store(Y->data, Y->dtype, i, v, iv, isint);
    }
    return CORRAL_OK;
}

static int run_pad(const struct plan_step *st, const struct tensor *X, struct tensor *Y)
{
    size_t es = dtype_size(X->dtype);
    int r = X->ndim;
    int64_t total = eng_numel(Y->dims, r), istr[TENSOR_MAX_DIMS], idx[TENSOR_MAX_DIMS] = {0};
    dense_strides(X->dims, r, istr);
    char fill[16] = {0};
    if (st->a.pad_mode == EPADM_CONSTANT)
        eng_cast_store(fill, X->dtype, 0, st->a.value, st->a.ivalue,
                       X->dtype != DT_FP32 && X->dtype != DT_FP64);
    char *out = Y->data;
    const char *in = X->data;
    for (int64_t o = 0; o < total; o++) {
        int64_t off = 0;
        int inside = 1;
        for (int i = 0; i < r; i++) {
            int64_t s = eng_pad_src(idx[i] - st->a.starts[i], X->dims[i], st->a.pad_mode);
            if (s < 0) {
                inside = 0;
                break;
            }
            off += s * istr[i];
        }
        memcpy(out + o * (int64_t)es, inside ? in + off * (int64_t)es : fill, es);
        for (int i = r - 1; i >= 0 && ++idx[i] == Y->dims[i]; i--)
            idx[i] = 0;
    }
    return CORRAL_OK;
}

int eng_kernel_shape(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                     struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct tensor *X = st->n_in ? &in[0] : NULL;
    struct tensor *Y = &out[0];
    size_t es = dtype_size(Y->dtype);
    int64_t str[TENSOR_MAX_DIMS], istr[TENSOR_MAX_DIMS];
    switch (st->op) {
    case EOP_CONCAT: {
        int64_t outer = eng_numel(Y->dims, a->axis), inner = 1;
        for (int i = a->axis + 1; i < Y->ndim; i++)
            inner *= Y->dims[i];
        int64_t ostride = Y->dims[a->axis] * inner * (int64_t)es, at = 0;
        for (int k = 0; k < st->n_in; k++) {
            int64_t chunk = in[k].dims[a->axis] * inner * (int64_t)es;
            for (int64_t o = 0; o < outer && chunk; o++)
                memcpy((char *)Y->data + o * ostride + at, (const char *)in[k].data + o * chunk,
                       (size_t)chunk);
            at += chunk;
        }
        return CORRAL_OK;
    }
    case EOP_SPLIT: {
        int64_t outer = eng_numel(X->dims, a->axis), inner = 1;
        for (int i = a->axis + 1; i < X->ndim; i++)
            inner *= X->dims[i];
        int64_t istride = X->dims[a->axis] * inner * (int64_t)es, at = 0;
        for (int k = 0; k < st->n_out; k++) {
            if (out[k].dtype == DT_INVALID)
                continue;
            int64_t chunk = out[k].dims[a->axis] * inner * (int64_t)es;
            for (int64_t o = 0; o < outer && chunk; o++)
                memcpy((char *)out[k].data + o * chunk,
                       (const char *)X->data + o * istride + at, (size_t)chunk);
            at += chunk;
        }
        return CORRAL_OK;
    }
    case EOP_SLICE: {
        dense_strides(X->dims, X->ndim, istr);
        int64_t base = 0;
        for (int i = 0; i < X->ndim; i++) {
            base += a->starts[i] * istr[i];
            str[i] = a->steps[i] * istr[i];
        }
        if (eng_numel(Y->dims, Y->ndim))
            strided_copy(Y->data, (const char *)X->data + base * (int64_t)es, es, Y->ndim,
                         Y->dims, str);
        return CORRAL_OK;
    }
    case EOP_GATHER: {
        const struct tensor *I = &in[1];
        int64_t outer = eng_numel(X->dims, a->axis), inner = 1, n = eng_numel(I->dims, I->ndim);
        int64_t dim = X->dims[a->axis];
        for (int i = a->axis + 1; i < X->ndim; i++)
            inner *= X->dims[i];
        size_t row = (size_t)inner * es;
        for (int64_t k = 0; k < n; k++) {
            int64_t ix = eng_int_at(I->data, I->dtype, k);
            if (ix < -dim || ix >= dim)
                return cerr_set(e, CORRAL_EINVAL, "%s: index %lld is out of range for an axis "
                                "of %lld", st->label, (long long)ix, (long long)dim);
        }
        for (int64_t o = 0; o < outer; o++)
            for (int64_t k = 0; k < n; k++) {
                int64_t ix = eng_int_at(I->data, I->dtype, k);
                if (ix < 0)
                    ix += dim;
                memcpy((char *)Y->data + (o * n + k) * (int64_t)row,
                       (const char *)X->data + (o * dim + ix) * (int64_t)row, row);
            }
        return CORRAL_OK;
    }
    case EOP_TRANSPOSE: {
        dense_strides(X->dims, X->ndim, istr);
        for (int i = 0; i < X->ndim; i++)
            str[i] = istr[a->ints[i]];
        strided_copy(Y->data, X->data, es, Y->ndim, Y->dims, str);
        return CORRAL_OK;
    }
    case EOP_EXPAND: {
        int64_t xs[TENSOR_MAX_DIMS];
        dense_strides(X->dims, X->ndim, xs);
        for (int i = 0; i < Y->ndim; i++) {
            int xi = i - (Y->ndim - X->ndim);
            str[i] = xi >= 0 && X->dims[xi] != 1 ? xs[xi] : 0;
        }
        strided_copy(Y->data, X->data, es, Y->ndim, Y->dims, str);
        return CORRAL_OK;
    }
    case EOP_TILE: {
        int64_t total = eng_numel(Y->dims, Y->ndim), idx[TENSOR_MAX_DIMS] = {0};
        dense_strides(X->dims, X->ndim, istr);
        for (int64_t o = 0; o < total; o++) {
            int64_t off = 0;
            for (int i = 0; i < X->ndim; i++)
                off += (idx[i] % X->dims[i]) * istr[i];
            memcpy((char *)Y->data + o * (int64_t)es, (const char *)X->data + off * (int64_t)es,
                   es);
            for (int i = Y->ndim - 1; i >= 0 && ++idx[i] == Y->dims[i]; i--)
                idx[i] = 0;
        }
        return CORRAL_OK;
    }
    case EOP_PAD: return run_pad(st, X, Y);
    case EOP_SHAPE:
        for (int64_t i = a->starts[0]; i < a->steps[0]; i++)
            ((int64_t *)Y->data)[i - a->starts[0]] = X->dims[i];
        return CORRAL_OK;
    case EOP_SIZE: *(int64_t *)Y->data = eng_numel(X->dims, X->ndim); return CORRAL_OK;
    case EOP_CONSTANTOFSHAPE: {
        int64_t n = eng_numel(Y->dims, Y->ndim);
        int isint = Y->dtype != DT_FP32 && Y->dtype != DT_FP64;
        for (int64_t i = 0; i < n; i++)
            eng_cast_store(Y->data, Y->dtype, i, a->value, a->ivalue, isint);
        return CORRAL_OK;
    }
    case EOP_RANGE: {
        int64_t n = Y->dims[0];
        if (Y->dtype == DT_FP32) {
            float s = *(const float *)in[0].data, d = *(const float *)in[2].data;
            for (int64_t i = 0; i < n; i++)
                ((float *)Y->data)[i] = s + (float)i * d;
        } else {
            int64_t s = eng_int_at(in[0].data, Y->dtype, 0), d = eng_int_at(in[2].data,
                                                                             Y->dtype, 0);
            /* Wrapping arithmetic: caller-supplied bounds may overflow, which must not trap. */
            for (int64_t i = 0; i < n; i++)
                eng_cast_store(Y->data, Y->dtype, i, 0,
                               (int64_t)((uint64_t)s + (uint64_t)i * (uint64_t)d), 1);
        }
        return CORRAL_OK;
    }
    case EOP_CAST: return run_cast(X, Y);
    case EOP_DROPOUT:
        if (st->n_out > 1 && out[1].dtype != DT_INVALID)
            memset(out[1].data, 1, out[1].nbytes);
        /* fall through */
    default:
        /* Reshape, Flatten, Squeeze, Unsqueeze, Identity, Copy: the bytes are unchanged. */
        if (Y->nbytes && Y->data != X->data)
            memcpy(Y->data, X->data, Y->nbytes);
        return CORRAL_OK;
    }
}
