#include <float.h>
#include <math.h>
#include <string.h>

#include "engine_internal.h"

/*
 * Ops that reduce along axes: Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax and
 * the normalisations (BatchNormalization in inference, InstanceNormalization,
 * LayerNormalization). Sums accumulate in double so long rows stay accurate.
 */

static int is_reduce(enum eng_op op)
{
    return op >= EOP_REDUCEMEAN && op <= EOP_REDUCELOGSUMEXP;
}

int eng_setup_reduce(struct eng_setup *s, struct cerr *e)
{
    struct eng_node *nd = s->nd;
    struct eng_attrs *a = &nd->a;
    int64_t iv = 0;
    int rc, n = 0, opset = s->eng->opset;
    s->out_dt[0] = s->in_dt[0];
    if (is_reduce(nd->op)) {
        unsigned m = DTM_FLOAT;
        if (nd->op == EOP_REDUCESUM || nd->op == EOP_REDUCEMAX || nd->op == EOP_REDUCEMIN ||
            nd->op == EOP_REDUCEPROD || nd->op == EOP_REDUCEMEAN)
            m |= DTM(DT_INT64) | DTM(DT_INT32);
        if ((rc = eng_need_dtype(s, 0, m, "FP32 (and INT64/INT32 for some reductions)", e)))
            return rc;
        if ((rc = eng_attr_int(s, "keepdims", 1, &iv, e)))
            return rc;
        a->keepdims = iv != 0;
        if ((rc = eng_attr_int(s, "noop_with_empty_axes", 0, &iv, e)))
            return rc;
        a->noop_with_empty_axes = iv != 0;
        if ((rc = eng_attr_ints(s, "axes", a->ints, ENG_MAX_INTS, &n, e)))
            return rc;
        a->n_ints = n;
        if (nd->n_in > 1 && (rc = eng_need_dtype(s, 1, DTM(DT_INT64), "INT64 axes", e)))
            return rc;
        (void)opset;
        return CORRAL_OK;
    }
    switch (nd->op) {
    case EOP_ARGMAX:
    case EOP_ARGMIN:
        if ((rc = eng_need_dtype(s, 0, DTM_NUM, "FP32, INT64 and INT32", e)))
            return rc;
        if ((rc = eng_attr_int(s, "axis", 0, &iv, e)))
            return rc;
        a->axis = (int)iv;
        if ((rc = eng_attr_int(s, "keepdims", 1, &iv, e)))
            return rc;
        a->keepdims = iv != 0;
        if ((rc = eng_attr_int(s, "select_last_index", 0, &iv, e)))
            return rc;
        a->select_last_index = iv != 0;
        s->out_dt[0] = DT_INT64;
        return CORRAL_OK;
    case EOP_SOFTMAX:
    case EOP_LOGSOFTMAX:
        if ((rc = eng_need_dtype(s, 0, DTM_FLOAT, "FP32", e)))
            return rc;
        a->legacy_2d = opset < 13;
        if ((rc = eng_attr_int(s, "axis", a->legacy_2d ? 1 : -1, &iv, e)))
            return rc;
        a->axis = (int)iv;
        return CORRAL_OK;
    case EOP_BATCHNORM:
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = eng_need_dtype(s, k, DTM_FLOAT, "FP32", e)))
                return rc;
        if ((rc = eng_attr_int(s, "training_mode", 0, &iv, e)))
            return rc;
        if (iv || nd->n_out > 1)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: training mode (running mean/var outputs) "
                            "is not supported; the engine runs inference", nd->label);
        return eng_attr_float(s, "epsilon", 1e-5f, &a->epsilon, e);
    case EOP_INSTANCENORM:
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = eng_need_dtype(s, k, DTM_FLOAT, "FP32", e)))
                return rc;
        return eng_attr_float(s, "epsilon", 1e-5f, &a->epsilon, e);
    case EOP_LAYERNORM:
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = eng_need_dtype(s, k, DTM_FLOAT, "FP32", e)))
                return rc;
        if ((rc = eng_attr_int(s, "axis", -1, &iv, e)))
            return rc;
        a->axis = (int)iv;
        if ((rc = eng_attr_int(s, "stash_type", 1, &iv, e)))
            return rc;
        if (iv != 1)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: stash_type %lld is not supported", nd->label,
                            (long long)iv);
        s->out_dt[1] = s->out_dt[2] = DT_FP32;
        return eng_attr_float(s, "epsilon", 1e-5f, &a->epsilon, e);
    default: return CORRAL_OK;
    }
}

int eng_infer_reduce(struct eng_infer *c, struct cerr *e)
{
    struct plan_step *st = c->st;
    struct eng_attrs *a = &st->a;
    const struct plan_value *X = c->in[0];
    int64_t d[TENSOR_MAX_DIMS];
    int r = X->ndim, rc, x, n = 0;
    if (is_reduce(st->op)) {
        int64_t ax[ENG_MAX_INTS];
        int na = a->n_ints;
        if (st->n_in > 1 && c->in[1]) {
            const struct plan_value *A = c->in[1];
            if (A->kind != PV_CONST)
                return cerr_set(e, CORRAL_EUNSUPP, "%s: axes are computed at run time by ops "
                                "the planner cannot evaluate; the engine needs them constant, "
                                "computed from shapes, or computed from small model inputs",
                                st->label);
            int64_t cnt = eng_numel(A->dims, A->ndim);
            if (cnt > ENG_MAX_INTS)
                return cerr_set(e, CORRAL_EUNSUPP, "%s: too many axes", st->label);
            na = (int)cnt;
            for (int i = 0; i < na; i++)
                ax[i] = ((const int64_t *)A->data)[i];
        } else {
            for (int i = 0; i < na; i++)
                ax[i] = a->ints[i];
        }
        int red[TENSOR_MAX_DIMS] = {0};
        if (na <= 0) {
            if (!(na == 0 && a->noop_with_empty_axes))
                for (int i = 0; i < r; i++)
                    red[i] = 1;
        } else {
            for (int i = 0; i < na; i++) {
                if ((rc = eng_axis(st, ax[i], r, 0, &x, e)))
                    return rc;
                red[x] = 1;
            }
        }
        a->n_ints = 0;
        for (int i = 0; i < r; i++) {
            if (red[i])
                a->ints[a->n_ints++] = i;
            if (!red[i])
                d[n++] = X->dims[i];
            else if (a->keepdims)
                d[n++] = 1;
        }
        return eng_set_shape(c->out[0], X->dtype, d, n, e);
    }
    switch (st->op) {
    case EOP_ARGMAX:
    case EOP_ARGMIN:
        if ((rc = eng_axis(st, a->axis, r, 0, &x, e)))
            return rc;
        a->axis = x;
        for (int i = 0; i < r; i++)
            if (i != x || a->keepdims)
                d[n++] = i == x ? 1 : X->dims[i];
        return eng_set_shape(c->out[0], DT_INT64, d, n, e);
    case EOP_SOFTMAX:
    case EOP_LOGSOFTMAX:
        if ((rc = eng_axis(st, a->axis, r ? r : 1, 0, &x, e)))
            return rc;
        a->axis = x;
        return eng_set_shape(c->out[0], DT_FP32, X->dims, r, e);
    case EOP_LAYERNORM:
        if ((rc = eng_axis(st, a->axis, r, 0, &x, e)))
            return rc;
        a->axis = x;
        for (int k = 1; k < 3; k++) {
            if (k < st->n_out && c->out[k]) {
                for (int i = 0; i < r; i++)
                    d[i] = i < x ? X->dims[i] : 1;
                if ((rc = eng_set_shape(c->out[k], DT_FP32, d, r, e)))
                    return rc;
            }
        }
        {
            int64_t len = 1;
            for (int i = x; i < r; i++)
                len *= X->dims[i];
            for (int k = 1; k < st->n_in; k++) {
                const struct plan_value *v = c->in[k];
                int64_t m = v ? eng_numel(v->dims, v->ndim) : len;
                if (m != len && m != 1)
                    return cerr_set(e, CORRAL_EUNSUPP, "%s: scale/bias must cover the "
                                    "normalised axes exactly", st->label);
            }
        }
        return eng_set_shape(c->out[0], DT_FP32, X->dims, r, e);
    case EOP_BATCHNORM:
    case EOP_INSTANCENORM: {
        if (r < 2)
            return cerr_set(e, CORRAL_EINVAL, "%s: input must have at least 2 dimensions",
                            st->label);
        for (int k = 1; k < st->n_in; k++)
            if (eng_numel(c->in[k]->dims, c->in[k]->ndim) != X->dims[1])
                return cerr_set(e, CORRAL_EINVAL, "%s: input %d must have %lld values (one per "
                                "channel)", st->label, k, (long long)X->dims[1]);
        return eng_set_shape(c->out[0], DT_FP32, X->dims, r, e);
    }
    default: return cerr_set(e, CORRAL_EINTERNAL, "%s: no shape rule", st->label);
    }
}

static double ld(const struct tensor *t, int64_t i)
{
    switch (t->dtype) {
    case DT_FP32: return ((const float *)t->data)[i];
    case DT_INT64: return (double)((const int64_t *)t->data)[i];
    case DT_INT32: return ((const int32_t *)t->data)[i];
    default: return 0;
    }
}

static void st_(struct tensor *t, int64_t i, double v)
{
    switch (t->dtype) {
    case DT_FP32: ((float *)t->data)[i] = (float)v; break;
    case DT_INT64: ((int64_t *)t->data)[i] = (int64_t)v; break;
    case DT_INT32: ((int32_t *)t->data)[i] = (int32_t)v; break;
    default: break;
    }
}

static int run_reduce(const struct plan_step *st, const struct tensor *X, struct tensor *Y)
{
    const struct eng_attrs *a = &st->a;
    int r = X->ndim, red[TENSOR_MAX_DIMS] = {0};
    int64_t str[TENSOR_MAX_DIMS], s = 1;
    for (int i = r - 1; i >= 0; i--) {
        str[i] = s;
        s *= X->dims[i];
    }
    for (int i = 0; i < a->n_ints; i++)
        red[a->ints[i]] = 1;
    int kd[TENSOR_MAX_DIMS], rd[TENSOR_MAX_DIMS], nk = 0, nr = 0;
    for (int i = 0; i < r; i++) {
        if (red[i])
            rd[nr++] = i;
        else
            kd[nk++] = i;
    }
    int64_t rcount = 1;
    for (int i = 0; i < nr; i++)
        rcount *= X->dims[rd[i]];
    int64_t nout = eng_numel(Y->dims, Y->ndim);
    int64_t kidx[TENSOR_MAX_DIMS] = {0};
    for (int64_t o = 0; o < nout; o++) {
        int64_t base = 0;
        for (int i = 0; i < nk; i++)
            base += kidx[i] * str[kd[i]];
        double acc;
        switch (st->op) {
        case EOP_REDUCEMAX: acc = -INFINITY; break;
        case EOP_REDUCEMIN: acc = INFINITY; break;
        case EOP_REDUCEPROD: acc = 1; break;
        default: acc = 0; break;
        }
        double mx = -INFINITY;
        if (st->op == EOP_REDUCELOGSUMEXP) {
            int64_t ridx[TENSOR_MAX_DIMS] = {0};
            for (int64_t t = 0; t < rcount; t++) {
                int64_t off = base;
                for (int i = 0; i < nr; i++)
                    off += ridx[i] * str[rd[i]];
                double v = ld(X, off);
                mx = v > mx ? v : mx;
                for (int i = nr - 1; i >= 0 && ++ridx[i] == X->dims[rd[i]]; i--)
                    ridx[i] = 0;
            }
            if (!isfinite(mx))
                mx = 0;
        }
        int64_t ridx[TENSOR_MAX_DIMS] = {0};
        for (int64_t t = 0; t < rcount; t++) {
            int64_t off = base;
            for (int i = 0; i < nr; i++)
                off += ridx[i] * str[rd[i]];
            double v = ld(X, off);
            switch (st->op) {
            case EOP_REDUCEMAX: acc = v > acc || isnan(v) ? v : acc; break;
            case EOP_REDUCEMIN: acc = v < acc || isnan(v) ? v : acc; break;
            case EOP_REDUCEPROD: acc *= v; break;
            case EOP_REDUCESUMSQUARE:
            case EOP_REDUCEL2: acc += v * v; break;
            case EOP_REDUCEL1: acc += fabs(v); break;
            case EOP_REDUCELOGSUMEXP: acc += exp(v - mx); break;
            default: acc += v; break;
            }
            for (int i = nr - 1; i >= 0 && ++ridx[i] == X->dims[rd[i]]; i--)
                ridx[i] = 0;
        }
        if (st->op == EOP_REDUCEMEAN)
            acc = rcount ? acc / (double)rcount : NAN;
        else if (st->op == EOP_REDUCEL2)
            acc = sqrt(acc);
        else if (st->op == EOP_REDUCELOGSUMEXP)
            acc = log(acc) + mx;
        if (X->dtype != DT_FP32 && st->op == EOP_REDUCEMEAN)
            acc = trunc(acc);
        st_(Y, o, acc);
        for (int i = nk - 1; i >= 0 && ++kidx[i] == X->dims[kd[i]]; i--)
            kidx[i] = 0;
    }
    return CORRAL_OK;
}

static void run_softmax(const struct plan_step *st, const float *x, float *y, int64_t outer,
                        int64_t len, int64_t inner)
{
    int logsm = st->op == EOP_LOGSOFTMAX;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t in = 0; in < inner; in++) {
            const float *xr = x + o * len * inner + in;
            float *yr = y + o * len * inner + in;
            float mx = -INFINITY;
            for (int64_t j = 0; j < len; j++)
                mx = xr[j * inner] > mx ? xr[j * inner] : mx;
            double sum = 0;
            for (int64_t j = 0; j < len; j++) {
                float t = expf(xr[j * inner] - mx);
                if (!logsm)
                    yr[j * inner] = t;
                sum += t;
            }
            if (logsm) {
                float ls = (float)log(sum);
                for (int64_t j = 0; j < len; j++)
                    yr[j * inner] = xr[j * inner] - mx - ls;
            } else {
                float inv = (float)(1.0 / sum);
                for (int64_t j = 0; j < len; j++)
                    yr[j * inner] *= inv;
            }
        }
}

int eng_kernel_reduce(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                      struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct tensor *X = &in[0];
    struct tensor *Y = &out[0];
    int r = X->ndim;
    if (is_reduce(st->op))
        return run_reduce(st, X, Y);
    if (eng_numel(X->dims, r) == 0)
        return CORRAL_OK;
    switch (st->op) {
    case EOP_ARGMAX:
    case EOP_ARGMIN: {
        int64_t outer = eng_numel(X->dims, a->axis), len = X->dims[a->axis], inner = 1;
        for (int i = a->axis + 1; i < r; i++)
            inner *= X->dims[i];
        int64_t *y = Y->data;
        for (int64_t o = 0; o < outer; o++)
            for (int64_t k = 0; k < inner; k++) {
                int64_t best = 0;
                double bv = ld(X, o * len * inner + k);
                for (int64_t j = 1; j < len; j++) {
                    double v = ld(X, (o * len + j) * inner + k);
                    int better = st->op == EOP_ARGMAX ? v > bv : v < bv;
                    if (better || (a->select_last_index && v == bv)) {
                        bv = v;
                        best = j;
                    }
                }
                y[o * inner + k] = best;
            }
        return CORRAL_OK;
    }
    case EOP_SOFTMAX:
    case EOP_LOGSOFTMAX: {
        int64_t outer = 1, len = 1, inner = 1;
        for (int i = 0; i < r; i++) {
            if (i < a->axis)
                outer *= X->dims[i];
            else if (i == a->axis || a->legacy_2d)
                len *= X->dims[i];
            else
                inner *= X->dims[i];
        }
        run_softmax(st, X->data, Y->data, outer, len, inner);
        return CORRAL_OK;
    }
    case EOP_LAYERNORM: {
        int64_t outer = eng_numel(X->dims, a->axis), len = 1;
        for (int i = a->axis; i < r; i++)
            len *= X->dims[i];
        const float *x = X->data, *sc = in[1].data;
        const float *b = st->n_in > 2 && in[2].dtype != DT_INVALID ? in[2].data : NULL;
        int64_t sn = eng_numel(in[1].dims, in[1].ndim);
        int64_t bn = b ? eng_numel(in[2].dims, in[2].ndim) : 0;
        float *y = Y->data;
        float *mo = st->n_out > 1 && out[1].dtype != DT_INVALID ? out[1].data : NULL;
        float *io = st->n_out > 2 && out[2].dtype != DT_INVALID ? out[2].data : NULL;
        for (int64_t o = 0; o < outer; o++) {
            const float *xr = x + o * len;
            float *yr = y + o * len;
            /* Eight float lanes that the compiler vectorises, combined in double. */
            float l8[8] = {0}, q8[8] = {0};
            int64_t j = 0;
            for (; j + 8 <= len; j += 8)
                for (int t = 0; t < 8; t++)
                    l8[t] += xr[j + t];
            double s = 0;
            for (; j < len; j++)
                s += xr[j];
            for (int t = 0; t < 8; t++)
                s += l8[t];
            double mean = s / (double)len;
            float mf = (float)mean;
            double s2 = 0;
            for (j = 0; j + 8 <= len; j += 8)
                for (int t = 0; t < 8; t++) {
                    float d = xr[j + t] - mf;
                    q8[t] += d * d;
                }
            for (; j < len; j++)
                s2 += (double)(xr[j] - mf) * (xr[j] - mf);
            for (int t = 0; t < 8; t++)
                s2 += q8[t];
            double inv = 1.0 / sqrt(s2 / (double)len + a->epsilon);
            float fi = (float)inv;
            if (sn == len && b && bn == len) {
                for (j = 0; j < len; j++)
                    yr[j] = (xr[j] - mf) * fi * sc[j] + b[j];
            } else {
                for (j = 0; j < len; j++) {
                    float v = (xr[j] - mf) * fi * sc[sn == 1 ? 0 : j];
                    yr[j] = b ? v + b[bn == 1 ? 0 : j] : v;
                }
            }
            if (mo)
                mo[o] = (float)mean;
            if (io)
                io[o] = (float)inv;
        }
        return CORRAL_OK;
    }
    case EOP_BATCHNORM:
    case EOP_INSTANCENORM: {
        int64_t n = X->dims[0], c = X->dims[1], sp = 1;
        for (int i = 2; i < r; i++)
            sp *= X->dims[i];
        const float *x = X->data, *sc = in[1].data, *bi = in[2].data;
        float *y = Y->data;
        for (int64_t ci = 0; ci < c; ci++) {
            if (st->op == EOP_BATCHNORM) {
                const float *mean = in[3].data, *var = in[4].data;
                float k = sc[ci] / sqrtf(var[ci] + a->epsilon);
                float off = bi[ci] - mean[ci] * k;
                for (int64_t ni = 0; ni < n; ni++) {
                    const float *xr = x + (ni * c + ci) * sp;
                    float *yr = y + (ni * c + ci) * sp;
                    for (int64_t j = 0; j < sp; j++)
                        yr[j] = xr[j] * k + off;
                }
            } else {
                for (int64_t ni = 0; ni < n; ni++) {
                    const float *xr = x + (ni * c + ci) * sp;
                    float *yr = y + (ni * c + ci) * sp;
                    double s = 0, s2 = 0;
                    for (int64_t j = 0; j < sp; j++)
                        s += xr[j];
                    double mean = sp ? s / (double)sp : 0;
                    for (int64_t j = 0; j < sp; j++)
                        s2 += (xr[j] - mean) * (xr[j] - mean);
                    double inv = 1.0 / sqrt((sp ? s2 / (double)sp : 0) + a->epsilon);
                    for (int64_t j = 0; j < sp; j++)
                        yr[j] = (float)((xr[j] - mean) * inv) * sc[ci] + bi[ci];
                }
            }
        }
        return CORRAL_OK;
    }
    default: return cerr_set(e, CORRAL_EINTERNAL, "%s: no reduction kernel", st->label);
    }
}
