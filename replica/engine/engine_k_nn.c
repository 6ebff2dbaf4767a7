#include <math.h>
#include <stdio.h>
#include <string.h>

#include <dnnl.h>

#include "engine_internal.h"
#include "engine_scalar.h"

/*
 * Convolution, pooling and matrix products: attribute parsing and shape
 * rules for all of them; reference kernels for Gemm and MatMul (oneDNN's
 * sgemm). Convolution and pooling have no reference kernel here: the CPU
 * backend runs them as oneDNN primitives.
 */


static int is_pool(enum eng_op op)
{
    return op == EOP_MAXPOOL || op == EOP_AVGPOOL;
}

int eng_setup_nn(struct eng_setup *s, struct cerr *e)
{
    struct eng_node *nd = s->nd;
    struct eng_attrs *a = &nd->a;
    int64_t iv = 0;
    int rc, n = 0;
    char buf[32];
    s->out_dt[0] = DT_FP32;
    for (int k = 0; k < nd->n_in; k++)
        if ((rc = eng_need_dtype(s, k, DTM_FLOAT, "FP32", e)))
            return rc;
    a->sum_input = -1;
    a->act = EACT_NONE;
    switch (nd->op) {
    case EOP_GEMM:
        if ((rc = eng_attr_float(s, "alpha", 1.0f, &a->alpha, e)) ||
            (rc = eng_attr_float(s, "beta", 1.0f, &a->beta, e)))
            return rc;
        if ((rc = eng_attr_int(s, "transA", 0, &iv, e)))
            return rc;
        a->trans_a = iv != 0;
        if ((rc = eng_attr_int(s, "transB", 0, &iv, e)))
            return rc;
        a->trans_b = iv != 0;
        return CORRAL_OK;
    case EOP_MATMUL:
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL: return CORRAL_OK;
    default: break;
    }
    /* Conv, ConvTranspose, MaxPool, AveragePool */
    if ((rc = eng_attr_str(s, "auto_pad", buf, sizeof buf, e)))
        return rc;
    if (!*buf || strcmp(buf, "NOTSET") == 0)
        a->auto_pad = EPAD_NOTSET;
    else if (strcmp(buf, "SAME_UPPER") == 0)
        a->auto_pad = EPAD_SAME_UPPER;
    else if (strcmp(buf, "SAME_LOWER") == 0)
        a->auto_pad = EPAD_SAME_LOWER;
    else if (strcmp(buf, "VALID") == 0)
        a->auto_pad = EPAD_VALID;
    else
        return cerr_set(e, CORRAL_EINVAL, "%s: auto_pad '%s' is not valid", nd->label, buf);
    int nk = -1, ns = -1, ndl = -1, np = -1, nop = -1;
    int64_t pads[2 * ENG_MAX_SPATIAL];
    if ((rc = eng_attr_ints(s, "kernel_shape", a->kernel, ENG_MAX_SPATIAL, &nk, e)) ||
        (rc = eng_attr_ints(s, "strides", a->strides, ENG_MAX_SPATIAL, &ns, e)) ||
        (rc = eng_attr_ints(s, "dilations", a->dilations, ENG_MAX_SPATIAL, &ndl, e)) ||
        (rc = eng_attr_ints(s, "pads", pads, 2 * ENG_MAX_SPATIAL, &np, e)) ||
        (rc = eng_attr_ints(s, "output_padding", a->output_padding, ENG_MAX_SPATIAL, &nop, e)))
        return rc;
    if (eng_attr_find(s->n, "output_shape"))
        return cerr_set(e, CORRAL_EUNSUPP, "%s: attribute 'output_shape' is not supported",
                        nd->label);
    if (is_pool(nd->op) && nk < 0)
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute 'kernel_shape' is required", nd->label);
    /* Lengths are checked against the input's rank per plan; -1 here means "default". */
    a->nsp = nk;
    a->n_ints = 0;
    a->ints[0] = ns, a->ints[1] = ndl, a->ints[2] = np, a->ints[3] = nop;
    if (np > 0)
        memcpy(a->pads, pads, (size_t)np * sizeof *pads);
    if ((rc = eng_attr_int(s, "group", 1, &iv, e)))
        return rc;
    if (iv < 1)
        return cerr_set(e, CORRAL_EINVAL, "%s: group %lld must be >= 1", nd->label,
                        (long long)iv);
    a->group = iv;
    if ((rc = eng_attr_int(s, "ceil_mode", 0, &iv, e)))
        return rc;
    a->ceil_mode = iv != 0;
    if ((rc = eng_attr_int(s, "count_include_pad", 0, &iv, e)))
        return rc;
    a->count_include_pad = iv != 0;
    if ((rc = eng_attr_int(s, "storage_order", 0, &iv, e)))
        return rc;
    if (iv)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: storage_order=1 is not supported", nd->label);
    if (nd->op == EOP_MAXPOOL && nd->n_out > 1 && nd->out[1] >= 0)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: the Indices output of MaxPool is not supported",
                        nd->label);
    (void)n;
    return CORRAL_OK;
}

/* Resolves kernel/strides/dilations/pads against an input with nsp spatial dims. */
static int resolve_window(struct plan_step *st, const int64_t *in_sp, const int64_t *w_k,
                          int nsp, int64_t *out_sp, struct cerr *e)
{
    struct eng_attrs *a = &st->a;
    int transpose = st->op == EOP_CONV_TRANSPOSE;
    int nk = a->nsp, ns = (int)a->ints[0], ndl = (int)a->ints[1], np = (int)a->ints[2],
        nop = (int)a->ints[3];
    if ((nk >= 0 && nk != nsp) || (ns >= 0 && ns != nsp) || (ndl >= 0 && ndl != nsp) ||
        (np >= 0 && np != 2 * nsp) || (nop >= 0 && nop != nsp))
        return cerr_set(e, CORRAL_EINVAL, "%s: kernel_shape/strides/dilations/pads do not match "
                        "the input's %d spatial dimensions", st->label, nsp);
    for (int i = 0; i < nsp; i++) {
        if (nk < 0)
            a->kernel[i] = w_k ? w_k[i] : 1;
        else if (w_k && a->kernel[i] != w_k[i])
            return cerr_set(e, CORRAL_EINVAL, "%s: kernel_shape does not match the weights",
                            st->label);
        if (ns < 0)
            a->strides[i] = 1;
        if (ndl < 0)
            a->dilations[i] = 1;
        if (nop < 0)
            a->output_padding[i] = 0;
        if (np < 0)
            a->pads[i] = a->pads[nsp + i] = 0;
        if (a->kernel[i] < 1 || a->strides[i] < 1 || a->dilations[i] < 1)
            return cerr_set(e, CORRAL_EINVAL, "%s: kernel, strides and dilations must be >= 1",
                            st->label);
    }
    if (np >= 0 && nsp < ENG_MAX_SPATIAL) {
        /* pads were read as begin[nsp], end[nsp]: already in the right layout. */
    }
    a->nsp = nsp;
    a->ints[0] = a->ints[1] = a->ints[2] = a->ints[3] = nsp;
    for (int i = 0; i < nsp; i++) {
        int64_t k = (a->kernel[i] - 1) * a->dilations[i] + 1, s = a->strides[i], in = in_sp[i];
        if (a->auto_pad == EPAD_VALID) {
            a->pads[i] = a->pads[nsp + i] = 0;
        } else if (a->auto_pad != EPAD_NOTSET) {
            int64_t total;
            if (transpose) {
                total = s * (in - 1) + a->output_padding[i] + k - in * s;
            } else {
                int64_t out = (in + s - 1) / s;
                total = (out - 1) * s + k - in;
            }
            if (total < 0)
                total = 0;
            int64_t small = total / 2, big = total - small;
            a->pads[i] = a->auto_pad == EPAD_SAME_UPPER ? small : big;
            a->pads[nsp + i] = a->auto_pad == EPAD_SAME_UPPER ? big : small;
        }
        int64_t pb = a->pads[i], pe = a->pads[nsp + i];
        if (pb < 0 || pe < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: negative pads", st->label);
        if (transpose) {
            out_sp[i] = s * (in - 1) + a->output_padding[i] + k - pb - pe;
        } else {
            int64_t span = in + pb + pe - k;
            if (span < 0)
                return cerr_set(e, CORRAL_EINVAL, "%s: the window (%lld) is larger than the "
                                "padded input (%lld)", st->label, (long long)k,
                                (long long)(in + pb + pe));
            int64_t o = span / s + 1;
            if (a->ceil_mode) {
                o = (span + s - 1) / s + 1;
                if ((o - 1) * s >= in + pb)
                    o--;
            }
            out_sp[i] = o;
        }
        if (out_sp[i] < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: negative output size", st->label);
    }
    a->auto_pad = EPAD_NOTSET;
    return CORRAL_OK;
}

int eng_infer_nn(struct eng_infer *c, struct cerr *e)
{
    char s1[160], s2[160];
    struct plan_step *st = c->st;
    struct eng_attrs *a = &st->a;
    const struct plan_value *X = c->in[0], *W = st->n_in > 1 ? c->in[1] : NULL;
    int64_t d[TENSOR_MAX_DIMS];
    int rc;
    switch (st->op) {
    case EOP_GEMM: {
        if (X->ndim != 2 || W->ndim != 2)
            return cerr_set(e, CORRAL_EINVAL, "%s: A %s and B %s must both be 2-D", st->label,
                            tensor_shape_str(X->dims, X->ndim, s1, sizeof s1),
                            tensor_shape_str(W->dims, W->ndim, s2, sizeof s2));
        int64_t M = a->trans_a ? X->dims[1] : X->dims[0], K = a->trans_a ? X->dims[0] : X->dims[1];
        int64_t K2 = a->trans_b ? W->dims[1] : W->dims[0], N = a->trans_b ? W->dims[0] : W->dims[1];
        if (K != K2)
            return cerr_set(e, CORRAL_EINVAL, "%s: A %s (transA=%d) and B %s (transB=%d) have "
                            "inner dimensions %lld and %lld", st->label,
                            tensor_shape_str(X->dims, 2, s1, sizeof s1), a->trans_a,
                            tensor_shape_str(W->dims, 2, s2, sizeof s2), a->trans_b,
                            (long long)K, (long long)K2);
        d[0] = M, d[1] = N;
        if (st->n_in > 2 && c->in[2]) {
            const struct plan_value *C = c->in[2];
            int ok = C->ndim <= 2;
            int64_t cm = C->ndim == 2 ? C->dims[0] : 1, cn = C->ndim >= 1 ? C->dims[C->ndim - 1] : 1;
            ok = ok && (cm == 1 || cm == M) && (cn == 1 || cn == N);
            if (!ok)
                return cerr_set(e, CORRAL_EINVAL, "%s: C %s cannot be broadcast to [%lld,%lld]",
                                st->label, tensor_shape_str(C->dims, C->ndim, s1, sizeof s1),
                                (long long)M, (long long)N);
        }
        return eng_set_shape(c->out[0], DT_FP32, d, 2, e);
    }
    case EOP_MATMUL: {
        const struct plan_value *A = X, *B = W;
        if (A->ndim < 1 || B->ndim < 1)
            return cerr_set(e, CORRAL_EINVAL, "%s: MatMul inputs must have at least 1 dimension",
                            st->label);
        int64_t M = A->ndim == 1 ? 1 : A->dims[A->ndim - 2], K = A->dims[A->ndim - 1];
        int64_t K2 = B->ndim == 1 ? B->dims[0] : B->dims[B->ndim - 2];
        int64_t N = B->ndim == 1 ? 1 : B->dims[B->ndim - 1];
        int64_t ab[TENSOR_MAX_DIMS], bb[TENSOR_MAX_DIMS];
        int na = A->ndim > 2 ? A->ndim - 2 : 0, nb = B->ndim > 2 ? B->ndim - 2 : 0, no = 0;
        memcpy(ab, A->dims, sizeof ab);
        memcpy(bb, B->dims, sizeof bb);
        if (K != K2 || eng_broadcast(st, ab, na, bb, nb, d, &no, e))
            return cerr_set(e, CORRAL_EINVAL, "%s: shapes %s and %s are not compatible for "
                            "MatMul", st->label,
                            tensor_shape_str(A->dims, A->ndim, s1, sizeof s1),
                            tensor_shape_str(B->dims, B->ndim, s2, sizeof s2));
        if (A->ndim > 1)
            d[no++] = M;
        if (B->ndim > 1)
            d[no++] = N;
        if ((rc = eng_set_shape(c->out[0], DT_FP32, d, no, e)))
            return rc;
        if (st->n_in > 2 && c->in[2]) {
            const struct plan_value *C = c->in[2];
            if (C->ndim != 1 || C->dims[0] != N)
                return cerr_set(e, CORRAL_EINTERNAL, "%s: fused bias must be [N]", st->label);
        }
        return CORRAL_OK;
    }
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL:
        if (X->ndim < 3)
            return cerr_set(e, CORRAL_EINVAL, "%s: input must be at least 3-D", st->label);
        for (int i = 0; i < X->ndim; i++)
            d[i] = i < 2 ? X->dims[i] : 1;
        return eng_set_shape(c->out[0], DT_FP32, d, X->ndim, e);
    default: break;
    }
    int nsp = X->ndim - 2;
    if (nsp < 1 || nsp > ENG_MAX_SPATIAL)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: input %s must have 1 to %d spatial dimensions",
                        st->label, tensor_shape_str(X->dims, X->ndim, s1, sizeof s1),
                        ENG_MAX_SPATIAL);
    int64_t osp[ENG_MAX_SPATIAL];
    d[0] = X->dims[0];
    d[1] = X->dims[1];
    if (st->op == EOP_CONV || st->op == EOP_CONV_TRANSPOSE) {
        int tr = st->op == EOP_CONV_TRANSPOSE;
        if (W->ndim != X->ndim)
            return cerr_set(e, CORRAL_EINVAL, "%s: weights %s do not match input %s", st->label,
                            tensor_shape_str(W->dims, W->ndim, s1, sizeof s1),
                            tensor_shape_str(X->dims, X->ndim, s2, sizeof s2));
        int64_t g = a->group, C = X->dims[1];
        int ok = C % g == 0 && (tr ? W->dims[0] == C : W->dims[1] * g == C && W->dims[0] % g == 0);
        if (!ok)
            return cerr_set(e, CORRAL_EINVAL, "%s: weights %s, input %s and group %lld do not "
                            "agree", st->label, tensor_shape_str(W->dims, W->ndim, s1, sizeof s1),
                            tensor_shape_str(X->dims, X->ndim, s2, sizeof s2), (long long)g);
        d[1] = tr ? W->dims[1] * g : W->dims[0];
        if (st->n_in > 2 && c->in[2] && eng_numel(c->in[2]->dims, c->in[2]->ndim) != d[1])
            return cerr_set(e, CORRAL_EINVAL, "%s: bias must have %lld values", st->label,
                            (long long)d[1]);
        if ((rc = resolve_window(st, X->dims + 2, W->dims + 2, nsp, osp, e)))
            return rc;
    } else if ((rc = resolve_window(st, X->dims + 2, NULL, nsp, osp, e))) {
        return rc;
    }
    for (int i = 0; i < nsp; i++)
        d[2 + i] = osp[i];
    return eng_set_shape(c->out[0], DT_FP32, d, X->ndim, e);
}

static int sgemm(const struct plan_step *st, int ta, int tb, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                 float beta, float *C, int64_t ldc, struct cerr *e)
{
    if (M == 0 || N == 0)
        return CORRAL_OK;
    if (K == 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return CORRAL_OK;
    }
    dnnl_status_t s = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                 beta, C, ldc);
    if (s != dnnl_success)
        return cerr_set(e, CORRAL_EINTERNAL, "%s: dnnl_sgemm failed (status %d) for M=%lld "
                        "N=%lld K=%lld", st->label, (int)s, (long long)M, (long long)N,
                        (long long)K);
    return CORRAL_OK;
}

/* Fills [M,N] with c broadcast (c is [M,N], [1,N], [N], [M,1] or a scalar), scaled. */
static void fill_bias(const struct tensor *c, float scale, float *out, int64_t M, int64_t N)
{
    int64_t cm = c->ndim == 2 ? c->dims[0] : 1, cn = c->ndim >= 1 ? c->dims[c->ndim - 1] : 1;
    const float *cd = c->data;
    for (int64_t i = 0; i < M; i++) {
        const float *row = cd + (cm == 1 ? 0 : i * cn);
        float *o = out + i * N;
        if (cn == N && scale == 1.0f)
            memcpy(o, row, (size_t)N * sizeof(float));
        else
            for (int64_t j = 0; j < N; j++)
                o[j] = scale * row[cn == 1 ? 0 : j];
    }
}

static void epilogue(const struct eng_attrs *a, float *y, int64_t n)
{
    if (a->act == EACT_NONE)
        return;
    if (a->act == EACT_RELU) {
        for (int64_t i = 0; i < n; i++)
            y[i] = y[i] > 0.0f ? y[i] : 0.0f;
        return;
    }
    for (int64_t i = 0; i < n; i++)
        y[i] = eng_act_apply(a->act, y[i], a->act_alpha, a->act_beta);
}

int eng_kernel_nn(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                  struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct tensor *A = &in[0], *B = st->n_in > 1 ? &in[1] : NULL;
    const struct tensor *C = st->n_in > 2 && in[2].dtype != DT_INVALID ? &in[2] : NULL;
    struct tensor *Y = &out[0];
    int rc;
    if (Y->nbytes == 0)
        return CORRAL_OK;
    if (st->op == EOP_GEMM) {
        int64_t M = Y->dims[0], N = Y->dims[1], K = a->trans_a ? A->dims[0] : A->dims[1];
        float beta = 0.0f;
        if (C && a->beta != 0.0f) {
            fill_bias(C, a->beta, Y->data, M, N);
            beta = 1.0f;
        }
        if ((rc = sgemm(st, a->trans_a, a->trans_b, M, N, K, a->alpha, A->data, A->dims[1],
                        B->data, B->dims[1], beta, Y->data, N, e)))
            return rc;
        epilogue(a, Y->data, M * N);
        return CORRAL_OK;
    }
    if (st->op == EOP_MATMUL) {
        int64_t M = A->ndim == 1 ? 1 : A->dims[A->ndim - 2], K = A->dims[A->ndim - 1];
        int64_t N = B->ndim == 1 ? 1 : B->dims[B->ndim - 1];
        int abat = A->ndim > 2 ? A->ndim - 2 : 0, bbat = B->ndim > 2 ? B->ndim - 2 : 0;
        int obat = abat > bbat ? abat : bbat;
        int64_t ob[TENSOR_MAX_DIMS], as[TENSOR_MAX_DIMS], bs[TENSOR_MAX_DIMS], astr = 1,
                bstr = 1, nbatch = 1;
        for (int i = obat - 1; i >= 0; i--) {
            int ai = i - (obat - abat), bi = i - (obat - bbat);
            int64_t ad = ai >= 0 ? A->dims[ai] : 1, bd = bi >= 0 ? B->dims[bi] : 1;
            ob[i] = ad == 1 ? bd : ad;
            as[i] = ad == 1 ? 0 : astr;
            bs[i] = bd == 1 ? 0 : bstr;
            astr *= ad;
            bstr *= bd;
            nbatch *= ob[i];
        }
        float beta = 0.0f;
        if (C) {
            fill_bias(C, 1.0f, Y->data, nbatch * M, N);
            beta = 1.0f;
        }
        const float *pa = A->data, *pb = B->data;
        float *py = Y->data;
        if (bbat == 0) {
            rc = sgemm(st, 0, 0, nbatch * M, N, K, 1.0f, pa, K, pb, N, beta, py, N, e);
        } else {
            int64_t idx[TENSOR_MAX_DIMS] = {0};
            rc = CORRAL_OK;
            for (int64_t t = 0; t < nbatch && !rc; t++) {
                int64_t ao = 0, bo = 0;
                for (int i = 0; i < obat; i++) {
                    ao += idx[i] * as[i];
                    bo += idx[i] * bs[i];
                }
                rc = sgemm(st, 0, 0, M, N, K, 1.0f, pa + ao * M * K, K, pb + bo * K * N, N, beta,
                           py + t * M * N, N, e);
                for (int i = obat - 1; i >= 0 && ++idx[i] == ob[i]; i--)
                    idx[i] = 0;
            }
        }
        if (rc)
            return rc;
        epilogue(a, Y->data, nbatch * M * N);
        return CORRAL_OK;
    }
    return cerr_set(e, CORRAL_EUNSUPP, "%s: %s has no reference kernel (the backend runs it)",
                    st->label, eng_op_name(st->op));
}
