#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine_internal.h"

/*
 * Data movement and shape ops: Concat, Split, Slice, Gather, Transpose,
 * Reshape and its relatives, Pad, Tile, Expand, Shape, Size, ConstantOfShape,
 * Range, Cast, Dropout/Identity. They move bytes, so most work for every
 * fixed-size datatype. Shape inputs (Reshape's shape, Slice's starts...) must
 * be constant within a plan: shape-only subgraphs are folded before these run,
 * and model inputs that feed them are constants of their plan (value_keyed,
 * see engine_mark_value_inputs). Those values come from callers, so shape
 * inference checks them like any untrusted input: no arithmetic on them may
 * overflow, and a bad value is an error naming the node, never a crash.
 */

#define LEGACY_ATTRS legacy_2d /* Slice/Pad/Split given by attributes (old opsets) */

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

/* ---- shape inference ---- */

static int need_const(struct eng_infer *c, int k, struct cerr *e)
{
    const struct plan_value *v = c->in[k];
    if (v && v->kind == PV_CONST)
        return CORRAL_OK;
    return cerr_set(e, CORRAL_EUNSUPP, "%s: input '%s' is computed at run time by ops the "
                    "planner cannot evaluate; the engine needs it to be a constant, computed "
                    "from shapes, or computed from small model inputs", c->st->label,
                    v ? v->name : "?");
}

static int infer_reshape(struct eng_infer *c, struct cerr *e)
{
    char s1[160], s2[160];
    const struct plan_value *X = c->in[0], *S = c->in[1];
    int rc = need_const(c, 1, e);
    if (rc)
        return rc;
    if (S->ndim != 1 || S->dims[0] > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "%s: shape input must be 1-D with at most %d values",
                        c->st->label, TENSOR_MAX_DIMS);
    int n = (int)S->dims[0], infer = -1;
    const int64_t *s = S->data;
    int64_t d[TENSOR_MAX_DIMS], known = 1, in_n = eng_numel(X->dims, X->ndim);
    for (int i = 0; i < n; i++) {
        d[i] = s[i];
        if (s[i] == 0 && !c->st->a.allowzero) {
            if (i >= X->ndim)
                goto bad;
            d[i] = X->dims[i];
        } else if (s[i] == -1) {
            if (infer >= 0)
                goto bad;
            infer = i;
            continue;
        } else if (s[i] < -1) {
            goto bad;
        }
        if (d[i] != 0 && known > INT64_MAX / d[i])
            goto bad;
        known *= d[i];
    }
    if (infer >= 0) {
        if (known == 0 || in_n % known != 0)
            goto bad;
        d[infer] = in_n / known;
    } else if (known != in_n) {
        goto bad;
    }
    return eng_set_shape(c->out[0], X->dtype, d, n, e);
bad:
    return cerr_set(e, CORRAL_EINVAL, "%s: cannot reshape %s to %s%s", c->st->label,
                    tensor_shape_str(X->dims, X->ndim, s1, sizeof s1),
                    tensor_shape_str(s, n, s2, sizeof s2), c->st->a.allowzero ? " (allowzero)" : "");
}

/* Reads the axes for Squeeze/Unsqueeze/Reduce from attributes or input 1. */
static int axes_of(struct eng_infer *c, int64_t *ax, int *n, struct cerr *e)
{
    struct eng_attrs *a = &c->st->a;
    if (c->st->n_in > 1 && c->in[1]) {
        int rc = need_const(c, 1, e);
        if (rc)
            return rc;
        const struct plan_value *A = c->in[1];
        int64_t cnt = eng_numel(A->dims, A->ndim);
        if (cnt > ENG_MAX_INTS)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: too many axes", c->st->label);
        for (int64_t i = 0; i < cnt; i++)
            ax[i] = eng_int_at(A->data, A->dtype, i);
        *n = (int)cnt;
        return CORRAL_OK;
    }
    *n = a->n_ints;
    for (int i = 0; i < a->n_ints; i++)
        ax[i] = a->ints[i];
    return CORRAL_OK;
}

static int infer_squeeze(struct eng_infer *c, struct cerr *e)
{
    const struct plan_value *X = c->in[0];
    int64_t ax[ENG_MAX_INTS], d[TENSOR_MAX_DIMS];
    int n = 0, rc = axes_of(c, ax, &n, e), nd = 0;
    if (rc)
        return rc;
    if (c->st->op == EOP_SQUEEZE) {
        int drop[TENSOR_MAX_DIMS] = {0};
        for (int i = 0; i < n; i++) {
            int x;
            if ((rc = eng_axis(c->st, ax[i], X->ndim, 0, &x, e)))
                return rc;
            if (X->dims[x] != 1)
                return cerr_set(e, CORRAL_EINVAL, "%s: cannot squeeze axis %d of size %lld",
                                c->st->label, x, (long long)X->dims[x]);
            drop[x] = 1;
        }
        for (int i = 0; i < X->ndim; i++)
            if (!(n < 0 ? X->dims[i] == 1 : drop[i]))
                d[nd++] = X->dims[i];
    } else {
        int r = X->ndim + (n < 0 ? 0 : n), ins[TENSOR_MAX_DIMS] = {0};
        if (r > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: result has too many dimensions",
                            c->st->label);
        for (int i = 0; i < n; i++) {
            int x;
            if ((rc = eng_axis(c->st, ax[i], r, 0, &x, e)))
                return rc;
            if (ins[x])
                return cerr_set(e, CORRAL_EINVAL, "%s: axis %d given twice", c->st->label, x);
            ins[x] = 1;
        }
        for (int i = 0, j = 0; i < r; i++)
            d[nd++] = ins[i] ? 1 : X->dims[j++];
    }
    return eng_set_shape(c->out[0], X->dtype, d, nd, e);
}

static int infer_slice(struct eng_infer *c, struct cerr *e)
{
    struct eng_attrs *a = &c->st->a;
    const struct plan_value *X = c->in[0];
    int r = X->ndim, rc, n;
    int64_t st[TENSOR_MAX_DIMS], en[TENSOR_MAX_DIMS], ax[TENSOR_MAX_DIMS], sp[TENSOR_MAX_DIMS];
    if (a->LEGACY_ATTRS) {
        n = a->n_ints >= 0 ? a->n_ints : -a->n_ints - 2;
        for (int i = 0; i < n; i++) {
            st[i] = a->starts[i];
            en[i] = a->steps[i];
            ax[i] = a->n_ints >= 0 ? a->ints[i] : i;
            sp[i] = 1;
        }
    } else {
        for (int k = 1; k < c->st->n_in; k++)
            if (c->in[k] && (rc = need_const(c, k, e)))
                return rc;
        n = (int)eng_numel(c->in[1]->dims, c->in[1]->ndim);
        if (n > TENSOR_MAX_DIMS || eng_numel(c->in[2]->dims, c->in[2]->ndim) != n)
            return cerr_set(e, CORRAL_EINVAL, "%s: starts and ends must have the same length",
                            c->st->label);
        for (int i = 0; i < n; i++) {
            st[i] = eng_int_at(c->in[1]->data, c->in[1]->dtype, i);
            en[i] = eng_int_at(c->in[2]->data, c->in[2]->dtype, i);
            ax[i] = i;
            sp[i] = 1;
        }
        for (int k = 3; k < 5; k++) {
            const struct plan_value *v = k < c->st->n_in ? c->in[k] : NULL;
            if (!v)
                continue;
            if (eng_numel(v->dims, v->ndim) != n)
                return cerr_set(e, CORRAL_EINVAL, "%s: %s must have %d values", c->st->label,
                                k == 3 ? "axes" : "steps", n);
            for (int i = 0; i < n; i++)
                (k == 3 ? ax : sp)[i] = eng_int_at(v->data, v->dtype, i);
        }
    }
    int64_t d[TENSOR_MAX_DIMS];
    for (int i = 0; i < r; i++) {
        a->starts[i] = 0;
        a->steps[i] = 1;
        d[i] = X->dims[i];
    }
    int seen[TENSOR_MAX_DIMS] = {0};
    for (int i = 0; i < n; i++) {
        int x;
        if ((rc = eng_axis(c->st, ax[i], r, 0, &x, e)))
            return rc;
        if (seen[x]++)
            return cerr_set(e, CORRAL_EINVAL, "%s: axis %d given twice", c->st->label, x);
        int64_t dim = X->dims[x], s = st[i], t = en[i], step = sp[i];
        if (step == 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: step 0", c->st->label);
        /*
         * A step longer than the axis selects one element at most; clamping it
         * to the axis keeps the kernel's step * stride from overflowing on a
         * huge caller-supplied step (INT64_MIN cannot even be negated).
         */
        if (step > dim || step < -dim)
            step = step > 0 ? (dim > 0 ? dim : 1) : (dim > 0 ? -dim : -1);
        if (s < 0)
            s += dim;
        if (t < 0 && t > INT64_MIN)
            t += dim;
        if (step > 0) {
            s = s < 0 ? 0 : (s > dim ? dim : s);
            t = t < 0 ? 0 : (t > dim ? dim : t);
            d[x] = t > s ? 1 + (t - s - 1) / step : 0;
        } else {
            s = s < 0 ? -1 : (s > dim - 1 ? dim - 1 : s);
            t = t < -1 ? -1 : (t > dim - 1 ? dim - 1 : t);
            if (en[i] == INT64_MIN || (en[i] < 0 && en[i] + dim < 0))
                t = -1;
            d[x] = s > t ? 1 + (s - t - 1) / -step : 0;
        }
        a->starts[x] = s;
        a->steps[x] = step;
    }
    return eng_set_shape(c->out[0], X->dtype, d, r, e);
}

static int infer_pad(struct eng_infer *c, struct cerr *e)
{
    struct eng_attrs *a = &c->st->a;
    const struct plan_value *X = c->in[0];
    int r = X->ndim, rc;
    int64_t b[TENSOR_MAX_DIMS] = {0}, en[TENSOR_MAX_DIMS] = {0}, d[TENSOR_MAX_DIMS];
    if (a->LEGACY_ATTRS) {
        if (a->n_ints != r)
            return cerr_set(e, CORRAL_EINVAL, "%s: pads are for %d axes, input has %d",
                            c->st->label, a->n_ints, r);
        for (int i = 0; i < r; i++) {
            b[i] = a->starts[i];
            en[i] = a->steps[i];
        }
    } else {
        if ((rc = need_const(c, 1, e)))
            return rc;
        int64_t np = eng_numel(c->in[1]->dims, c->in[1]->ndim);
        int64_t ax[TENSOR_MAX_DIMS];
        int nax = r;
        for (int i = 0; i < r; i++)
            ax[i] = i;
        if (c->st->n_in > 3 && c->in[3]) {
            if ((rc = need_const(c, 3, e)))
                return rc;
            nax = (int)eng_numel(c->in[3]->dims, c->in[3]->ndim);
            if (nax > r)
                return cerr_set(e, CORRAL_EINVAL, "%s: too many axes", c->st->label);
            for (int i = 0; i < nax; i++) {
                int x;
                if ((rc = eng_axis(c->st, eng_int_at(c->in[3]->data, c->in[3]->dtype, i), r, 0,
                                   &x, e)))
                    return rc;
                ax[i] = x;
            }
        }
        if (np != 2 * nax)
            return cerr_set(e, CORRAL_EINVAL, "%s: pads has %lld values, expected %d",
                            c->st->label, (long long)np, 2 * nax);
        const int64_t *p = c->in[1]->data;
        for (int i = 0; i < 2 * nax; i++)
            if (p[i] > (int64_t)TENSOR_MAX_BYTES || p[i] < -(int64_t)TENSOR_MAX_BYTES)
                return cerr_set(e, CORRAL_EINVAL, "%s: pad %lld is out of range", c->st->label,
                                (long long)p[i]);
        for (int i = 0; i < nax; i++) {
            b[ax[i]] = p[i];
            en[ax[i]] = p[nax + i];
        }
        a->value = 0;
        a->ivalue = 0;
        if (c->st->n_in > 2 && c->in[2]) {
            if ((rc = need_const(c, 2, e)))
                return rc;
            if (c->in[2]->nbytes) {
                if (X->dtype == DT_FP32)
                    a->value = *(const float *)c->in[2]->data;
                else
                    a->ivalue = eng_int_at(c->in[2]->data, X->dtype, 0);
            }
        } else if (X->dtype == DT_FP32) {
            a->value = 0;
        }
    }
    for (int i = 0; i < r; i++) {
        d[i] = X->dims[i] + b[i] + en[i];
        if (d[i] < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: pads make axis %d negative", c->st->label, i);
        if (a->pad_mode != EPADM_CONSTANT && X->dims[i] == 0 && d[i] > 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: cannot pad an empty axis", c->st->label);
        a->starts[i] = b[i];
    }
    if (a->pad_mode != EPADM_CONSTANT && X->dtype != DT_FP32 && dtype_size(X->dtype) != 8 &&
        dtype_size(X->dtype) != 4)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: padding %s", c->st->label, dtype_name(X->dtype));
    return eng_set_shape(c->out[0], X->dtype, d, r, e);
}

int eng_infer_shape(struct eng_infer *c, struct cerr *e)
{
    struct plan_step *st = c->st;
    struct eng_attrs *a = &st->a;
    const struct plan_value *X = st->n_in > 0 ? c->in[0] : NULL;
    int64_t d[TENSOR_MAX_DIMS] = {0};
    int rc, x;
    char s1[160], s2[160];
    switch (st->op) {
    case EOP_CONCAT: {
        if ((rc = eng_axis(st, a->axis, X->ndim, 0, &x, e)))
            return rc;
        a->axis = x;
        memcpy(d, X->dims, sizeof d);
        d[x] = 0;
        for (int k = 0; k < st->n_in; k++) {
            const struct plan_value *v = c->in[k];
            int ok = v->ndim == X->ndim;
            for (int i = 0; ok && i < X->ndim; i++)
                ok = i == x || v->dims[i] == X->dims[i];
            if (!ok)
                return cerr_set(e, CORRAL_EINVAL, "%s: input shapes %s and %s do not match "
                                "outside axis %d", st->label,
                                tensor_shape_str(X->dims, X->ndim, s1, sizeof s1),
                                tensor_shape_str(v->dims, v->ndim, s2, sizeof s2), x);
            d[x] += v->dims[x];
        }
        return eng_set_shape(c->out[0], X->dtype, d, X->ndim, e);
    }
    case EOP_SPLIT: {
        if ((rc = eng_axis(st, a->axis, X->ndim, 0, &x, e)))
            return rc;
        a->axis = x;
        int64_t dim = X->dims[x], sz[64], tot = 0;
        int no = st->n_out;
        if (no > 64)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: more than 64 outputs", st->label);
        if (st->n_in > 1 && c->in[1]) {
            if ((rc = need_const(c, 1, e)))
                return rc;
            if (eng_numel(c->in[1]->dims, c->in[1]->ndim) != no)
                return cerr_set(e, CORRAL_EINVAL, "%s: split has the wrong length", st->label);
            for (int k = 0; k < no; k++)
                sz[k] = ((const int64_t *)c->in[1]->data)[k];
        } else if (a->n_ints >= 0) {
            for (int k = 0; k < no; k++)
                sz[k] = a->ints[k];
        } else {
            int64_t chunk = (dim + no - 1) / no;
            for (int k = 0; k < no; k++) {
                sz[k] = dim - tot < chunk ? dim - tot : chunk;
                tot += sz[k];
            }
            tot = 0;
        }
        for (int k = 0; k < no; k++) {
            if (sz[k] < 0)
                return cerr_set(e, CORRAL_EINVAL, "%s: negative split", st->label);
            if (sz[k] > dim) /* also keeps the sum from overflowing */
                return cerr_set(e, CORRAL_EINVAL, "%s: split of %lld on an axis of %lld",
                                st->label, (long long)sz[k], (long long)dim);
            tot += sz[k];
        }
        if (tot != dim)
            return cerr_set(e, CORRAL_EINVAL, "%s: split sizes sum to %lld, axis has %lld",
                            st->label, (long long)tot, (long long)dim);
        for (int k = 0; k < no; k++) {
            if (!c->out[k])
                continue;
            memcpy(d, X->dims, sizeof d);
            d[x] = sz[k];
            if ((rc = eng_set_shape(c->out[k], X->dtype, d, X->ndim, e)))
                return rc;
        }
        return CORRAL_OK;
    }
    case EOP_SLICE: return infer_slice(c, e);
    case EOP_GATHER: {
        const struct plan_value *I = c->in[1];
        if ((rc = eng_axis(st, a->axis, X->ndim, 0, &x, e)))
            return rc;
        a->axis = x;
        int n = 0;
        if (X->ndim - 1 + I->ndim > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: result has too many dimensions", st->label);
        for (int i = 0; i < x; i++)
            d[n++] = X->dims[i];
        for (int i = 0; i < I->ndim; i++)
            d[n++] = I->dims[i];
        for (int i = x + 1; i < X->ndim; i++)
            d[n++] = X->dims[i];
        return eng_set_shape(c->out[0], X->dtype, d, n, e);
    }
    case EOP_TRANSPOSE: {
        int r = X->ndim, used[TENSOR_MAX_DIMS] = {0};
        if (a->n_ints < 0) {
            a->n_ints = r;
            for (int i = 0; i < r; i++)
                a->ints[i] = r - 1 - i;
        }
        if (a->n_ints != r)
            return cerr_set(e, CORRAL_EINVAL, "%s: perm has %d values for a %d-D input",
                            st->label, a->n_ints, r);
        for (int i = 0; i < r; i++) {
            if ((rc = eng_axis(st, a->ints[i], r, 0, &x, e)))
                return rc;
            if (used[x]++)
                return cerr_set(e, CORRAL_EINVAL, "%s: perm repeats axis %d", st->label, x);
            a->ints[i] = x;
            d[i] = X->dims[x];
        }
        return eng_set_shape(c->out[0], X->dtype, d, r, e);
    }
    case EOP_RESHAPE: return infer_reshape(c, e);
    case EOP_FLATTEN: {
        if ((rc = eng_axis(st, a->axis, X->ndim, 1, &x, e)))
            return rc;
        int64_t f[2] = {1, 1};
        for (int i = 0; i < X->ndim; i++)
            f[i < x ? 0 : 1] *= X->dims[i];
        return eng_set_shape(c->out[0], X->dtype, f, 2, e);
    }
    case EOP_SQUEEZE:
    case EOP_UNSQUEEZE: return infer_squeeze(c, e);
    case EOP_PAD: return infer_pad(c, e);
    case EOP_TILE: {
        if ((rc = need_const(c, 1, e)))
            return rc;
        if (eng_numel(c->in[1]->dims, c->in[1]->ndim) != X->ndim)
            return cerr_set(e, CORRAL_EINVAL, "%s: repeats must have one value per axis",
                            st->label);
        for (int i = 0; i < X->ndim; i++) {
            int64_t rep = ((const int64_t *)c->in[1]->data)[i];
            if (rep < 0 || (rep && X->dims[i] > INT64_MAX / rep))
                return cerr_set(e, CORRAL_EINVAL, "%s: bad repeat %lld", st->label,
                                (long long)rep);
            d[i] = X->dims[i] * rep;
        }
        return eng_set_shape(c->out[0], X->dtype, d, X->ndim, e);
    }
    case EOP_EXPAND: {
        if ((rc = need_const(c, 1, e)))
            return rc;
        int64_t n = eng_numel(c->in[1]->dims, c->in[1]->ndim), s[TENSOR_MAX_DIMS];
        if (n > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: shape has too many values", st->label);
        for (int64_t i = 0; i < n; i++)
            s[i] = ((const int64_t *)c->in[1]->data)[i];
        int nd = 0;
        if ((rc = eng_broadcast(st, X->dims, X->ndim, s, (int)n, d, &nd, e)))
            return rc;
        return eng_set_shape(c->out[0], X->dtype, d, nd, e);
    }
    case EOP_SHAPE: {
        int64_t s = a->starts[0], t = a->steps[0], r = X->ndim;
        s = s < 0 ? s + r : s;
        t = t < 0 ? t + r : t;
        s = s < 0 ? 0 : (s > r ? r : s);
        t = t < 0 ? 0 : (t > r ? r : t);
        a->starts[0] = s;
        a->steps[0] = t;
        d[0] = t > s ? t - s : 0;
        return eng_set_shape(c->out[0], DT_INT64, d, 1, e);
    }
    case EOP_SIZE: return eng_set_shape(c->out[0], DT_INT64, d, 0, e);
    case EOP_CONSTANTOFSHAPE: {
        if ((rc = need_const(c, 0, e)))
            return rc;
        int64_t n = eng_numel(X->dims, X->ndim);
        if (n > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: too many dimensions", st->label);
        for (int64_t i = 0; i < n; i++)
            d[i] = ((const int64_t *)X->data)[i];
        return eng_set_shape(c->out[0], a->to, d, (int)n, e);
    }
    case EOP_RANGE: {
        for (int k = 0; k < 3; k++)
            if ((rc = need_const(c, k, e)))
                return rc;
        double v[3];
        for (int k = 0; k < 3; k++)
            v[k] = X->dtype == DT_FP32 ? *(const float *)c->in[k]->data
                                       : (double)eng_int_at(c->in[k]->data, X->dtype, 0);
        if (v[2] == 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: delta is 0", st->label);
        double n = ceil((v[1] - v[0]) / v[2]);
        /* NaN or infinite bounds, or a length no tensor could hold, cannot be cast to int64. */
        if (!(n <= (double)TENSOR_MAX_BYTES))
            return cerr_set(e, CORRAL_EINVAL, "%s: start %g, limit %g and delta %g give no "
                            "valid length", st->label, v[0], v[1], v[2]);
        d[0] = n > 0 ? (int64_t)n : 0;
        return eng_set_shape(c->out[0], X->dtype, d, 1, e);
    }
    case EOP_CAST: return eng_set_shape(c->out[0], a->to, X->dims, X->ndim, e);
    case EOP_DROPOUT:
        if (st->n_out > 1 && c->out[1] &&
            (rc = eng_set_shape(c->out[1], DT_BOOL, X->dims, X->ndim, e)))
            return rc;
        return eng_set_shape(c->out[0], X->dtype, X->dims, X->ndim, e);
    default: return eng_set_shape(c->out[0], X->dtype, X->dims, X->ndim, e);
    }
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

static void store_num(void *p, enum dtype dt, int64_t i, double v, int64_t iv, int isint)
{
    switch (dt) {
    case DT_FP32: ((float *)p)[i] = isint ? (float)iv : (float)v; break;
    case DT_FP64: ((double *)p)[i] = isint ? (double)iv : v; break;
    case DT_BOOL: ((uint8_t *)p)[i] = isint ? iv != 0 : v != 0; break;
    default: {
        int64_t x = iv;
        if (!isint) {
            /* Float to integer truncates toward zero; out-of-range values saturate. */
            if (isnan(v))
                x = 0;
            else if (v >= 9.2233720368547758e18)
                x = INT64_MAX;
            else if (v <= -9.2233720368547758e18)
                x = INT64_MIN;
            else
                x = (int64_t)v;
        }
        switch (dt) {
        case DT_INT64: ((int64_t *)p)[i] = x; break;
        case DT_UINT64: ((uint64_t *)p)[i] = (uint64_t)x; break;
        case DT_INT32: ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)x; break;
        case DT_UINT32: ((uint32_t *)p)[i] = (uint32_t)(uint64_t)x; break;
        case DT_INT16: ((int16_t *)p)[i] = (int16_t)(uint16_t)(uint64_t)x; break;
        case DT_UINT16: ((uint16_t *)p)[i] = (uint16_t)(uint64_t)x; break;
        case DT_INT8: ((int8_t *)p)[i] = (int8_t)(uint8_t)(uint64_t)x; break;
        case DT_UINT8: ((uint8_t *)p)[i] = (uint8_t)(uint64_t)x; break;
        default: break;
        }
    }
    }
}

static int run_cast(const struct tensor *X, struct tensor *Y)
{
    int64_t n = eng_numel(X->dims, X->ndim);
    for (int64_t i = 0; i < n; i++) {
        double v = 0;
        int64_t iv = 0;
        int isint = 1;
        switch (X->dtype) {
        case DT_FP32: v = ((const float *)X->data)[i], isint = 0; break;
        case DT_FP64: v = ((const double *)X->data)[i], isint = 0; break;
        case DT_INT64: iv = ((const int64_t *)X->data)[i]; break;
        case DT_UINT64: iv = (int64_t)((const uint64_t *)X->data)[i]; break;
        case DT_INT32: iv = ((const int32_t *)X->data)[i]; break;
        case DT_UINT32: iv = ((const uint32_t *)X->data)[i]; break;
        case DT_INT16: iv = ((const int16_t *)X->data)[i]; break;
        case DT_UINT16: iv = ((const uint16_t *)X->data)[i]; break;
        case DT_INT8: iv = ((const int8_t *)X->data)[i]; break;
        case DT_UINT8:
        case DT_BOOL: iv = ((const uint8_t *)X->data)[i]; break;
        default: break;
        }
        if (X->dtype == DT_UINT64 && (Y->dtype == DT_FP32 || Y->dtype == DT_FP64)) {
            v = (double)((const uint64_t *)X->data)[i];
            isint = 0;
        }
        store_num(Y->data, Y->dtype, i, v, iv, isint);
    }
    return CORRAL_OK;
}

static int64_t pad_src(int64_t o, int64_t n, enum eng_pad_mode m)
{
    if (o >= 0 && o < n)
        return o;
    switch (m) {
    case EPADM_EDGE: return o < 0 ? 0 : n - 1;
    case EPADM_WRAP: return ((o % n) + n) % n;
    case EPADM_REFLECT: {
        if (n == 1)
            return 0;
        int64_t p = 2 * (n - 1);
        o = ((o % p) + p) % p;
        return o < n ? o : p - o;
    }
    default: return -1;
    }
}

static int run_pad(const struct plan_step *st, const struct tensor *X, struct tensor *Y)
{
    size_t es = dtype_size(X->dtype);
    int r = X->ndim;
    int64_t total = eng_numel(Y->dims, r), istr[TENSOR_MAX_DIMS], idx[TENSOR_MAX_DIMS] = {0};
    dense_strides(X->dims, r, istr);
    char fill[16] = {0};
    if (st->a.pad_mode == EPADM_CONSTANT)
        store_num(fill, X->dtype, 0, st->a.value, st->a.ivalue, X->dtype != DT_FP32 &&
                  X->dtype != DT_FP64);
    char *out = Y->data;
    const char *in = X->data;
    for (int64_t o = 0; o < total; o++) {
        int64_t off = 0;
        int inside = 1;
        for (int i = 0; i < r; i++) {
            int64_t s = pad_src(idx[i] - st->a.starts[i], X->dims[i], st->a.pad_mode);
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
            store_num(Y->data, Y->dtype, i, a->value, a->ivalue, isint);
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
                store_num(Y->data, Y->dtype, i, 0,
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
