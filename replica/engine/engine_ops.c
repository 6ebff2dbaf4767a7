#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dnnl.h>

#include "engine_internal.h"

/* Every kernel reads eng->vals[..].cur of its inputs and fills its outputs' cur. */

/* A required input (the loader guarantees it is bound). */
static struct tensor *in_t(struct engine *eng, const struct eng_node *nd, int k)
{
    return &eng->vals[nd->in[k]].cur;
}

/* An optional input: NULL when the node omits it. */
static struct tensor *opt_t(struct engine *eng, const struct eng_node *nd, int k)
{
    return k < nd->n_in && nd->in[k] >= 0 ? &eng->vals[nd->in[k]].cur : NULL;
}

static int out_alloc(struct engine *eng, const struct eng_node *nd, int k, enum dtype dt,
                     const int64_t *dims, int ndim, struct tensor **out, struct cerr *e)
{
    struct eng_value *v = &eng->vals[nd->out[k]];
    int rc = tensor_alloc(&v->cur, v->name, dt, dims, ndim, e);
    if (rc)
        return cerr_prefix(e, "%s", nd->label);
    *out = &v->cur;
    return CORRAL_OK;
}

static int64_t numel_of(const struct tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->dims[i];
    return n;
}

static int sgemm(const struct eng_node *nd, int ta, int tb, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                 float beta, float *C, int64_t ldc, struct cerr *e)
{
    if (M == 0 || N == 0)
        return CORRAL_OK;
    if (K == 0) {
        /* oneDNN wants K >= 1; with no terms the product is zero, leaving beta * C. */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return CORRAL_OK;
    }
    dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                  beta, C, ldc);
    if (st != dnnl_success)
        return cerr_set(e, CORRAL_EINTERNAL, "%s: dnnl_sgemm failed (status %d) for M=%lld "
                        "N=%lld K=%lld", nd->label, (int)st, (long long)M, (long long)N,
                        (long long)K);
    return CORRAL_OK;
}

/*
 * Fills an [M,N] buffer with `c` broadcast unidirectionally (numpy rules
 * restricted to stretching c), scaled by `scale`. Used for Gemm's C and for a
 * MatMul's fused bias, so the product can accumulate into it with beta = 1.
 */
static int fill_broadcast(const struct eng_node *nd, const struct tensor *c, float scale,
                          float *out, int64_t M, int64_t N, struct cerr *e)
{
    char sb[160];
    int64_t cm = 1, cn = 1;
    if (c->ndim > 2)
        goto bad;
    if (c->ndim == 2) {
        cm = c->dims[0];
        cn = c->dims[1];
    } else if (c->ndim == 1) {
        cn = c->dims[0];
    }
    if ((cm != 1 && cm != M) || (cn != 1 && cn != N))
        goto bad;
    const float *cd = c->data;
    for (int64_t i = 0; i < M; i++) {
        const float *row = cd + (cm == 1 ? 0 : i * cn);
        float *o = out + i * N;
        if (cn == N && scale == 1.0f && N > 0)
            memcpy(o, row, (size_t)N * sizeof(float));
        else
            for (int64_t j = 0; j < N; j++)
                o[j] = scale * row[cn == 1 ? 0 : j];
    }
    return CORRAL_OK;
bad:
    return cerr_set(e, CORRAL_EINVAL, "%s: '%s' of shape %s cannot be broadcast to the output "
                    "[%lld,%lld]", nd->label, c->name ? c->name : "C",
                    tensor_shape_str(c->dims, c->ndim, sb, sizeof sb), (long long)M, (long long)N);
}

static int run_gemm(struct engine *eng, const struct eng_node *nd, struct cerr *e)
{
    char sa[160], sb[160];
    const struct tensor *A = in_t(eng, nd, 0), *B = in_t(eng, nd, 1), *C = opt_t(eng, nd, 2);
    if (A->ndim != 2 || B->ndim != 2)
        return cerr_set(e, CORRAL_EINVAL, "%s: A %s and B %s must both be 2-D", nd->label,
                        tensor_shape_str(A->dims, A->ndim, sa, sizeof sa),
                        tensor_shape_str(B->dims, B->ndim, sb, sizeof sb));
    int64_t M = nd->trans_a ? A->dims[1] : A->dims[0];
    int64_t K = nd->trans_a ? A->dims[0] : A->dims[1];
    int64_t K2 = nd->trans_b ? B->dims[1] : B->dims[0];
    int64_t N = nd->trans_b ? B->dims[0] : B->dims[1];
    if (K != K2)
        return cerr_set(e, CORRAL_EINVAL, "%s: A %s (transA=%d) and B %s (transB=%d) have inner "
                        "dimensions %lld and %lld", nd->label,
                        tensor_shape_str(A->dims, 2, sa, sizeof sa), nd->trans_a,
                        tensor_shape_str(B->dims, 2, sb, sizeof sb), nd->trans_b, (long long)K,
                        (long long)K2);
    int64_t od[2] = {M, N};
    struct tensor *Y = NULL;
    int rc = out_alloc(eng, nd, 0, DT_FP32, od, 2, &Y, e);
    if (rc || Y->nbytes == 0)
        return rc;
    float beta = 0.0f;
    if (C && nd->beta != 0.0f) {
        /* The bias goes into the output first; sgemm then adds alpha*A*B onto it. */
        if ((rc = fill_broadcast(nd, C, nd->beta, Y->data, M, N, e)))
            return rc;
        beta = 1.0f;
    }
    return sgemm(nd, nd->trans_a, nd->trans_b, M, N, K, nd->alpha, A->data, A->dims[1], B->data,
                 B->dims[1], beta, Y->data, N, e);
}

/* numpy matmul: 1-D operands are promoted and the added axis dropped; batch axes broadcast. */
static int run_matmul(struct engine *eng, const struct eng_node *nd, struct cerr *e)
{
    char sa[160], sb[160];
    const struct tensor *A = in_t(eng, nd, 0), *B = in_t(eng, nd, 1);
    if (A->ndim < 1 || B->ndim < 1)
        return cerr_set(e, CORRAL_EINVAL, "%s: MatMul inputs must have at least 1 dimension",
                        nd->label);
    int64_t M = A->ndim == 1 ? 1 : A->dims[A->ndim - 2];
    int64_t K = A->dims[A->ndim - 1];
    int64_t K2 = B->ndim == 1 ? B->dims[0] : B->dims[B->ndim - 2];
    int64_t N = B->ndim == 1 ? 1 : B->dims[B->ndim - 1];
    int abat = A->ndim > 2 ? A->ndim - 2 : 0, bbat = B->ndim > 2 ? B->ndim - 2 : 0;
    int obat = abat > bbat ? abat : bbat;
    int64_t ob[TENSOR_MAX_DIMS], as[TENSOR_MAX_DIMS], bs[TENSOR_MAX_DIMS];
    int bad = K != K2;
    /* Batch strides in matrices, zero where an operand is broadcast along that axis. */
    int64_t astr = 1, bstr = 1;
    for (int i = obat - 1; i >= 0; i--) {
        int ai = i - (obat - abat), bi = i - (obat - bbat);
        int64_t ad = ai >= 0 ? A->dims[ai] : 1, bd = bi >= 0 ? B->dims[bi] : 1;
        if (ad != bd && ad != 1 && bd != 1)
            bad = 1;
        ob[i] = ad == 1 ? bd : ad;
        as[i] = ad == 1 ? 0 : astr;
        bs[i] = bd == 1 ? 0 : bstr;
        astr *= ad;
        bstr *= bd;
    }
    if (bad)
        return cerr_set(e, CORRAL_EINVAL, "%s: shapes %s and %s are not compatible for MatMul",
                        nd->label, tensor_shape_str(A->dims, A->ndim, sa, sizeof sa),
                        tensor_shape_str(B->dims, B->ndim, sb, sizeof sb));
    int64_t od[TENSOR_MAX_DIMS];
    int ond = 0;
    for (int i = 0; i < obat; i++)
        od[ond++] = ob[i];
    if (A->ndim > 1)
        od[ond++] = M;
    if (B->ndim > 1)
        od[ond++] = N;
    struct tensor *Y = NULL;
    int rc = out_alloc(eng, nd, 0, DT_FP32, od, ond, &Y, e);
    /* An empty output also guards the loops below against huge dims beside a zero. */
    if (rc || Y->nbytes == 0)
        return rc;
    int64_t nbatch = 1;
    for (int i = 0; i < obat; i++)
        nbatch *= ob[i];
    float beta = 0.0f;
    if (nd->bias >= 0) {
        if ((rc = fill_broadcast(nd, &eng->vals[nd->bias].cur, 1.0f, Y->data, nbatch * M, N, e)))
            return rc;
        beta = 1.0f;
    }
    const float *a = A->data, *b = B->data;
    float *y = Y->data;
    if (bbat == 0)
        /* A shared right operand (x @ W): the batch folds into one tall product. */
        return sgemm(nd, 0, 0, nbatch * M, N, K, 1.0f, a, K, b, N, beta, y, N, e);
    int64_t idx[TENSOR_MAX_DIMS] = {0};
    for (int64_t t = 0; t < nbatch; t++) {
        int64_t ao = 0, bo = 0;
        for (int i = 0; i < obat; i++) {
            ao += idx[i] * as[i];
            bo += idx[i] * bs[i];
        }
        if ((rc = sgemm(nd, 0, 0, M, N, K, 1.0f, a + ao * M * K, K, b + bo * K * N, N, beta,
                        y + t * M * N, N, e)))
            return rc;
        for (int i = obat - 1; i >= 0 && ++idx[i] == ob[i]; i--)
            idx[i] = 0;
    }
    return CORRAL_OK;
}

/* ---- elementwise binary ops with numpy broadcasting ---- */

#define BIN_LOOP(T, EXPR)                                                                     \
    do {                                                                                      \
        const T *pa = A->data, *pb = B->data;                                                 \
        T *py = Y->data;                                                                      \
        if (same) {                                                                           \
            for (int64_t i = 0; i < total; i++) {                                             \
                T x = pa[i], z = pb[i];                                                       \
                py[i] = (EXPR);                                                               \
            }                                                                                 \
            break;                                                                            \
        }                                                                                     \
        int64_t idx[TENSOR_MAX_DIMS] = {0};                                                   \
        int64_t inner = ond ? od[ond - 1] : 1, sa_in = ond ? sa[ond - 1] : 0,                 \
                sb_in = ond ? sb[ond - 1] : 0;                                                \
        for (int64_t o = 0; o < total; o += inner) {                                          \
            int64_t ao = 0, bo = 0;                                                           \
            for (int i = 0; i < ond - 1; i++) {                                               \
                ao += idx[i] * sa[i];                                                         \
                bo += idx[i] * sb[i];                                                         \
            }                                                                                 \
            for (int64_t j = 0; j < inner; j++) {                                             \
                T x = pa[ao + j * sa_in], z = pb[bo + j * sb_in];                             \
                py[o + j] = (EXPR);                                                           \
            }                                                                                 \
            for (int i = ond - 2; i >= 0 && ++idx[i] == od[i]; i--)                           \
                idx[i] = 0;                                                                   \
        }                                                                                     \
    } while (0)

/* Signed overflow is undefined in C; integer ops wrap through uint64 as ONNX runtimes do. */
#define IADD(x, z) ((int64_t)((uint64_t)(x) + (uint64_t)(z)))
#define ISUB(x, z) ((int64_t)((uint64_t)(x) - (uint64_t)(z)))
#define IMUL(x, z) ((int64_t)((uint64_t)(x) * (uint64_t)(z)))

static int run_binary(struct engine *eng, const struct eng_node *nd, struct cerr *e)
{
    char s1[160], s2[160];
    const struct tensor *A = in_t(eng, nd, 0), *B = in_t(eng, nd, 1);
    int ond = A->ndim > B->ndim ? A->ndim : B->ndim;
    int64_t od[TENSOR_MAX_DIMS], sa[TENSOR_MAX_DIMS], sb[TENSOR_MAX_DIMS];
    int64_t stra = 1, strb = 1;
    int same = A->ndim == B->ndim;
    for (int i = ond - 1; i >= 0; i--) {
        int ai = i - (ond - A->ndim), bi = i - (ond - B->ndim);
        int64_t ad = ai >= 0 ? A->dims[ai] : 1, bd = bi >= 0 ? B->dims[bi] : 1;
        if (ad != bd && ad != 1 && bd != 1)
            return cerr_set(e, CORRAL_EINVAL, "%s: shapes %s and %s cannot be broadcast together",
                            nd->label, tensor_shape_str(A->dims, A->ndim, s1, sizeof s1),
                            tensor_shape_str(B->dims, B->ndim, s2, sizeof s2));
        if (ad != bd)
            same = 0;
        od[i] = ad == 1 ? bd : ad;
        sa[i] = ad == 1 ? 0 : stra;
        sb[i] = bd == 1 ? 0 : strb;
        stra *= ad;
        strb *= bd;
    }
    struct tensor *Y = NULL;
    int rc = out_alloc(eng, nd, 0, A->dtype, od, ond, &Y, e);
    if (rc)
        return rc;
    int64_t total = numel_of(Y);
    if (total == 0)
        return CORRAL_OK;
    if (A->dtype == DT_FP32) {
        switch (nd->op) {
        case EOP_ADD: BIN_LOOP(float, x + z); break;
        case EOP_SUB: BIN_LOOP(float, x - z); break;
        case EOP_MUL: BIN_LOOP(float, x * z); break;
        default: BIN_LOOP(float, x / z); break;
        }
    } else {
        switch (nd->op) {
        case EOP_ADD: BIN_LOOP(int64_t, IADD(x, z)); break;
        case EOP_SUB: BIN_LOOP(int64_t, ISUB(x, z)); break;
        default: BIN_LOOP(int64_t, IMUL(x, z)); break;
        }
    }
    return CORRAL_OK;
}

/*
 * Shape-only ops reuse their input's buffer when the input is an intermediate
 * that nothing reads afterwards; otherwise they copy it.
 */
static int run_view(struct engine *eng, int idx, const struct eng_node *nd, const int64_t *dims,
                    int ndim, struct cerr *e)
{
    struct eng_value *src = &eng->vals[nd->in[0]];
    struct eng_value *dst = &eng->vals[nd->out[0]];
    if (src->kind == EVK_NODE && src->cur.owned && !src->is_output && src->last_use == idx) {
        dst->cur = src->cur;
        src->cur.owned = 0;
        src->cur.data = NULL;
    } else {
        struct tensor *Y = NULL;
        int rc = out_alloc(eng, nd, 0, src->cur.dtype, dims, ndim, &Y, e);
        if (rc)
            return rc;
        if (src->cur.nbytes)
            memcpy(Y->data, src->cur.data, src->cur.nbytes);
    }
    dst->cur.name = dst->name;
    dst->cur.ndim = ndim;
    if (ndim)
        memcpy(dst->cur.dims, dims, (size_t)ndim * sizeof(int64_t));
    return CORRAL_OK;
}

static int run_flatten(struct engine *eng, int idx, const struct eng_node *nd, struct cerr *e)
{
    const struct tensor *X = in_t(eng, nd, 0);
    int axis = nd->axis < 0 ? nd->axis + X->ndim : nd->axis;
    if (axis < 0 || axis > X->ndim)
        return cerr_set(e, CORRAL_EINVAL, "%s: axis %d is out of range for a %d-D input",
                        nd->label, nd->axis, X->ndim);
    int64_t d[2] = {1, 1};
    for (int i = 0; i < X->ndim; i++)
        d[i < axis ? 0 : 1] *= X->dims[i];
    return run_view(eng, idx, nd, d, 2, e);
}

static int run_reshape(struct engine *eng, int idx, const struct eng_node *nd, struct cerr *e)
{
    char s1[160], s2[300];
    const struct tensor *X = in_t(eng, nd, 0), *S = in_t(eng, nd, 1);
    if (S->ndim != 1 || S->dims[0] > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EINVAL, "%s: shape input must be 1-D with at most %d values",
                        nd->label, TENSOR_MAX_DIMS);
    int n = (int)S->dims[0];
    const int64_t *s = S->data;
    int64_t d[TENSOR_MAX_DIMS];
    int infer = -1;
    int64_t known = 1, in_n = numel_of(X);
    for (int i = 0; i < n; i++) {
        d[i] = s[i];
        if (s[i] == 0 && !nd->allowzero) {
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
    return run_view(eng, idx, nd, d, n, e);
bad:
    {
        size_t off = 0;
        s2[0] = '\0';
        off += (size_t)snprintf(s2, sizeof s2, "[");
        for (int i = 0; i < n && off < sizeof s2; i++)
            off += (size_t)snprintf(s2 + off, sizeof s2 - off, i ? ",%lld" : "%lld",
                                    (long long)s[i]);
        if (off < sizeof s2)
            snprintf(s2 + off, sizeof s2 - off, "]");
    }
    return cerr_set(e, CORRAL_EINVAL, "%s: cannot reshape %s to %s%s", nd->label,
                    tensor_shape_str(X->dims, X->ndim, s1, sizeof s1), s2,
                    nd->allowzero ? " (allowzero)" : "");
}

static int run_unary(struct engine *eng, const struct eng_node *nd, struct cerr *e)
{
    const struct tensor *X = in_t(eng, nd, 0);
    struct tensor *Y = NULL;
    int rc = out_alloc(eng, nd, 0, DT_FP32, X->dims, X->ndim, &Y, e);
    if (rc)
        return rc;
    const float *x = X->data;
    float *y = Y->data;
    int64_t n = numel_of(X);
    switch (nd->op) {
    case EOP_RELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case EOP_SIGMOID:
        /* Split by sign so expf never overflows into inf/inf. */
        for (int64_t i = 0; i < n; i++) {
            if (x[i] >= 0.0f) {
                y[i] = 1.0f / (1.0f + expf(-x[i]));
            } else {
                float t = expf(x[i]);
                y[i] = t / (1.0f + t);
            }
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] = tanhf(x[i]);
        break;
    }
    return CORRAL_OK;
}

static int run_softmax(struct engine *eng, const struct eng_node *nd, struct cerr *e)
{
    const struct tensor *X = in_t(eng, nd, 0);
    int r = X->ndim;
    int axis = nd->axis < 0 ? nd->axis + r : nd->axis;
    if (axis < 0 || axis >= (r ? r : 1))
        return cerr_set(e, CORRAL_EINVAL, "%s: axis %d is out of range for a %d-D input",
                        nd->label, nd->axis, r);
    struct tensor *Y = NULL;
    int rc = out_alloc(eng, nd, 0, DT_FP32, X->dims, X->ndim, &Y, e);
    if (rc || Y->nbytes == 0)
        return rc;
    /* outer x len x inner: before 13 the whole tail from axis is one row (inner = 1). */
    int64_t outer = 1, len = 1, inner = 1;
    for (int i = 0; i < r; i++) {
        if (i < axis)
            outer *= X->dims[i];
        else if (i == axis || nd->softmax_2d)
            len *= X->dims[i];
        else
            inner *= X->dims[i];
    }
    const float *x = X->data;
    float *y = Y->data;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t in = 0; in < inner; in++) {
            const float *xr = x + o * len * inner + in;
            float *yr = y + o * len * inner + in;
            float mx = -INFINITY;
            for (int64_t j = 0; j < len; j++)
                mx = xr[j * inner] > mx ? xr[j * inner] : mx;
            float sum = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                yr[j * inner] = expf(xr[j * inner] - mx);
                sum += yr[j * inner];
            }
            for (int64_t j = 0; j < len; j++)
                yr[j * inner] /= sum;
        }
    return CORRAL_OK;
}

static int run_dropout(struct engine *eng, int idx, const struct eng_node *nd, struct cerr *e)
{
    const struct tensor *X = in_t(eng, nd, 0);
    int64_t dims[TENSOR_MAX_DIMS];
    int ndim = X->ndim;
    memcpy(dims, X->dims, sizeof dims);
    if (nd->n_out > 1 && nd->out[1] >= 0) {
        /* In inference every element is kept, so the mask is all true. */
        struct tensor *M = NULL;
        int rc = out_alloc(eng, nd, 1, DT_BOOL, dims, ndim, &M, e);
        if (rc)
            return rc;
        memset(M->data, 1, M->nbytes);
    }
    return run_view(eng, idx, nd, dims, ndim, e);
}

int engine_node_run(struct engine *eng, int idx, struct cerr *e)
{
    const struct eng_node *nd = &eng->nodes[idx];
    switch (nd->op) {
    case EOP_GEMM: return run_gemm(eng, nd, e);
    case EOP_MATMUL: return run_matmul(eng, nd, e);
    case EOP_ADD:
    case EOP_SUB:
    case EOP_MUL:
    case EOP_DIV: return run_binary(eng, nd, e);
    case EOP_RELU:
    case EOP_SIGMOID:
    case EOP_TANH: return run_unary(eng, nd, e);
    case EOP_SOFTMAX: return run_softmax(eng, nd, e);
    case EOP_FLATTEN: return run_flatten(eng, idx, nd, e);
    case EOP_RESHAPE: return run_reshape(eng, idx, nd, e);
    case EOP_IDENTITY: {
        const struct tensor *X = in_t(eng, nd, 0);
        int64_t dims[TENSOR_MAX_DIMS];
        memcpy(dims, X->dims, sizeof dims);
        return run_view(eng, idx, nd, dims, X->ndim, e);
    }
    case EOP_DROPOUT: return run_dropout(eng, idx, nd, e);
    default:
        return cerr_set(e, CORRAL_EINTERNAL, "%s: no kernel", nd->label);
    }
}
