#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine_internal.h"

/*
 * Shape inference of the data movement and shape ops (engine_k_shape.c has
 * their setup and kernels): output shapes from input shapes and, for
 * Reshape, Slice, Squeeze, Pad, Tile, Expand, ConstantOfShape, Range and
 * Split, from the values of their shape operands, which must be constant
 * within a plan. Those values may come from callers (value_keyed model
 * inputs), so every one is checked like any untrusted input: no arithmetic
 * on them may overflow, and a bad value is an error naming the node, never a
 * crash. Attributes resolved here (explicit pads, positive axes) are written
 * into the step for the kernels and backends.
 */

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
