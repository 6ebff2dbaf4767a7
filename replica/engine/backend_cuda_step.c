#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"

/*
 * How each step of a compiled CUDA plan runs: which steps have a device path
 * (cuda_gpu_runs), the dispatch of elementwise, shape, reduction,
 * normalisation and pooling steps to the kernels of backend_cuda_kern*.cu
 * (with the host-side iteration spaces they take), Gemm, MatMul and Conv
 * handed to backend_cuda_conv.c, and the steps without a device kernel run
 * by the engine's reference kernel on pinned host copies. The plan's memory
 * and the order of steps belong to backend_cuda.c.
 */

static int64_t numel(const struct plan_value *v)
{
    return eng_numel(v->dims, v->ndim);
}

/* ---- iteration spaces ---- */

static void dense_strides(const int64_t *dims, int nd, int64_t *str)
{
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        str[i] = s;
        s *= dims[i];
    }
}

/* An iteration space over `dims` with a dense output and no inputs yet. */
static void iter_init(struct ck_iter *it, const int64_t *dims, int nd)
{
    memset(it, 0, sizeof *it);
    it->nd = nd;
    for (int i = 0; i < nd; i++)
        it->dims[i] = dims[i];
    dense_strides(it->dims, nd, it->out);
    it->total = eng_numel(dims, nd);
}

/* Input k read with numpy broadcasting (right-aligned; size-1 dims repeat). */
static void iter_bcast(struct ck_iter *it, int k, const int64_t *dims, int nd)
{
    int64_t s = 1;
    for (int i = it->nd - 1; i >= 0; i--) {
        int ti = i - (it->nd - nd);
        int64_t d = ti >= 0 ? dims[ti] : 1;
        it->in[k][i] = d == 1 ? 0 : s;
        s *= d;
    }
}

/*
 * Merges adjacent dims that every operand walks contiguously, and drops
 * size-1 dims, so kernels do as little index arithmetic as the layout allows.
 * Marks the space contiguous when it ends up one dense run for all operands.
 */
static void iter_collapse(struct ck_iter *it, int nin)
{
    struct ck_iter r = *it;
    int n = 0;
    for (int d = 0; d < it->nd; d++) {
        if (it->dims[d] == 1)
            continue;
        if (n > 0 && !it->mod[d] && !r.mod[n - 1]) {
            int p = n - 1, ok = r.out[p] == it->out[d] * it->dims[d];
            for (int k = 0; k < nin && ok; k++)
                ok = r.in[k][p] == it->in[k][d] * it->dims[d];
            if (ok) {
                r.dims[p] *= it->dims[d];
                r.out[p] = it->out[d];
                for (int k = 0; k < nin; k++)
                    r.in[k][p] = it->in[k][d];
                continue;
            }
        }
        r.dims[n] = it->dims[d];
        r.out[n] = it->out[d];
        r.mod[n] = it->mod[d];
        for (int k = 0; k < 3; k++)
            r.in[k][n] = it->in[k][d];
        n++;
    }
    r.nd = n;
    r.contiguous = n == 0 || (n == 1 && r.out[0] == 1);
    for (int k = 0; k < nin && r.contiguous && n == 1; k++)
        r.contiguous = r.in[k][0] == 1;
    *it = r;
}

/* ---- steps ---- */

static int is_unary_op(enum eng_op op)
{
    switch (op) {
    case EOP_SQRT: case EOP_EXP: case EOP_LOG: case EOP_ERF: case EOP_NEG: case EOP_ABS:
    case EOP_RECIPROCAL: case EOP_FLOOR: case EOP_CEIL: case EOP_ROUND: case EOP_SIGN:
    case EOP_SIN: case EOP_COS: case EOP_TAN: case EOP_SINH: case EOP_COSH: case EOP_ASIN:
    case EOP_ACOS: case EOP_ATAN: case EOP_RELU: case EOP_LEAKYRELU: case EOP_ELU:
    case EOP_SELU: case EOP_CELU: case EOP_SIGMOID: case EOP_HARDSIGMOID: case EOP_HARDSWISH:
    case EOP_SOFTPLUS: case EOP_SOFTSIGN: case EOP_THRESHOLDEDRELU: case EOP_MISH:
    case EOP_GELU: case EOP_TANH: case EOP_CLIP: return 1;
    default: return 0;
    }
}

static int is_binary_op(enum eng_op op)
{
    switch (op) {
    case EOP_ADD: case EOP_SUB: case EOP_MUL: case EOP_DIV: case EOP_POW: case EOP_MOD:
    case EOP_PRELU: case EOP_EQUAL: case EOP_LESS: case EOP_LESS_EQUAL: case EOP_GREATER:
    case EOP_GREATER_EQUAL: case EOP_AND: case EOP_OR: case EOP_XOR: return 1;
    default: return 0;
    }
}

static int is_variadic_op(enum eng_op op)
{
    return op == EOP_SUM || op == EOP_MEAN || op == EOP_MIN || op == EOP_MAX;
}

static int is_reduce_op(enum eng_op op)
{
    return op >= EOP_REDUCEMEAN && op <= EOP_REDUCELOGSUMEXP;
}

static int is_view_op(enum eng_op op)
{
    return op == EOP_RESHAPE || op == EOP_FLATTEN || op == EOP_SQUEEZE || op == EOP_UNSQUEEZE ||
           op == EOP_IDENTITY || op == EOP_COPY || op == EOP_DROPOUT;
}

static int num_dt(enum dtype t)
{
    return t == DT_FP32 || t == DT_INT64 || t == DT_INT32;
}

static int movable(enum dtype t)
{
    size_t es = dtype_size(t);
    return es == 1 || es == 2 || es == 4 || es == 8;
}

static int cast_dt(enum dtype t)
{
    switch (t) {
    case DT_FP32: case DT_FP64: case DT_INT64: case DT_INT32: case DT_INT16: case DT_INT8:
    case DT_UINT8: case DT_UINT16: case DT_UINT32: case DT_UINT64: case DT_BOOL: return 1;
    default: return 0;
    }
}

/*
 * Whether a device kernel here runs this step with its datatypes; the
 * others fall back to the reference kernel on the host.
 */
int cuda_gpu_runs(const struct cuda_plan *P, const struct plan_step *st)
{
    const struct plan_value *x = cuda_inv(P, st, 0), *y = cuda_outv(P, st, 0);
    enum eng_op op = st->op;
    if (!y)
        return 0;
    if (is_unary_op(op)) {
        if (op == EOP_NEG || op == EOP_ABS || op == EOP_SIGN)
            return num_dt(x->dtype);
        return x->dtype == DT_FP32;
    }
    if (is_binary_op(op) || op == EOP_NOT) {
        for (int k = 0; k < st->n_in; k++) {
            const struct plan_value *v = cuda_inv(P, st, k);
            if (!v || !(num_dt(v->dtype) || v->dtype == DT_BOOL))
                return 0;
        }
        return 1;
    }
    if (is_variadic_op(op))
        return num_dt(y->dtype);
    if (is_reduce_op(op) || op == EOP_ARGMAX || op == EOP_ARGMIN)
        return num_dt(x->dtype);
    switch (op) {
    case EOP_WHERE:
    case EOP_CONCAT:
    case EOP_SPLIT:
    case EOP_SLICE:
    case EOP_GATHER:
    case EOP_TRANSPOSE:
    case EOP_EXPAND:
    case EOP_TILE:
    case EOP_PAD: return movable(y->dtype);
    case EOP_CAST: return cast_dt(x->dtype) && cast_dt(y->dtype);
    case EOP_SOFTMAX:
    case EOP_LOGSOFTMAX:
    case EOP_LAYERNORM:
    case EOP_BATCHNORM:
    case EOP_INSTANCENORM:
    case EOP_MAXPOOL:
    case EOP_AVGPOOL:
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL:
    case EOP_GEMM:
    case EOP_MATMUL:
    case EOP_CONV: return x->dtype == DT_FP32;
    default: return is_view_op(op);
    }
}

/* Bit pattern of Pad's constant for a datatype (the reference kernel's store rules). */
static uint64_t pad_fill(const struct eng_attrs *a, enum dtype t)
{
    uint64_t bits = 0;
    if (a->pad_mode != EPADM_CONSTANT)
        return 0;
    if (t == DT_FP32) {
        float f = (float)a->value;
        memcpy(&bits, &f, sizeof f);
    } else if (t == DT_FP64) {
        double d = a->value;
        memcpy(&bits, &d, sizeof d);
    } else if (t == DT_BOOL) {
        bits = a->ivalue != 0;
    } else {
        bits = (uint64_t)a->ivalue; /* the low bytes are the narrower integer's pattern */
    }
    return bits;
}

static int run_unary(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct plan_value *x = cuda_inv(P, st, 0);
    const float *lo = NULL, *hi = NULL;
    float alpha = a->alpha, beta = a->beta;
    if (st->op == EOP_CLIP) {
        const struct plan_value *l = cuda_inv(P, st, 1), *h = cuda_inv(P, st, 2);
        if (l && l->nbytes)
            lo = cuda_in(P, st, 1);
        if (h && h->nbytes)
            hi = cuda_in(P, st, 2);
    }
    if (st->op == EOP_GELU)
        alpha = a->approximate_tanh ? 1.0f : 0.0f;
    return cuda_launch_check(ck_unary((int)st->op, alpha, beta, a->gamma, lo, hi, (int)x->dtype,
                                      cuda_in(P, st, 0), cuda_out(P, st, 0), numel(x),
                                      P->c->stream),
                             st, e);
}

/* y = op(a, b) over y's shape; a or b may be y itself (the variadic fold). */
static int binary(struct cuda_plan *P, const struct plan_step *st, int op,
                  const struct plan_value *va, const void *a, const struct plan_value *vb,
                  const void *b, const struct plan_value *vy, void *y, struct cerr *e)
{
    struct ck_iter it;
    iter_init(&it, vy->dims, vy->ndim);
    iter_bcast(&it, 0, va->dims, va->ndim);
    iter_bcast(&it, 1, vb->dims, vb->ndim);
    iter_collapse(&it, 2);
    return cuda_launch_check(ck_binary(op, st->a.fmod, (int)va->dtype, (int)vb->dtype,
                                       (int)vy->dtype, a, b, y, &it, P->c->stream),
                             st, e);
}

/* Broadcast copy of x into y's shape (Expand, and the start of the variadic fold). */
static int expand_copy(struct cuda_plan *P, const struct plan_step *st,
                       const struct plan_value *vx, const void *x, const struct plan_value *vy,
                       void *y, struct cerr *e)
{
    struct ck_iter it;
    iter_init(&it, vy->dims, vy->ndim);
    iter_bcast(&it, 0, vx->dims, vx->ndim);
    iter_collapse(&it, 1);
    return cuda_launch_check(ck_copy(x, 0, y, 0, (int)dtype_size(vy->dtype), &it, P->c->stream),
                             st, e);
}

static int run_variadic(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vy = cuda_outv(P, st, 0);
    void *y = cuda_out(P, st, 0);
    int rc;
    if (st->n_in == 1)
        rc = expand_copy(P, st, cuda_inv(P, st, 0), cuda_in(P, st, 0), vy, y, e);
    else
        rc = binary(P, st, (int)st->op, cuda_inv(P, st, 0), cuda_in(P, st, 0),
                    cuda_inv(P, st, 1), cuda_in(P, st, 1), vy, y, e);
    for (int k = 2; k < st->n_in && !rc; k++)
        rc = binary(P, st, (int)st->op, vy, y, cuda_inv(P, st, k), cuda_in(P, st, k), vy, y, e);
    /* Mean divides only for floats, as the reference kernel does. */
    if (!rc && st->op == EOP_MEAN && vy->dtype == DT_FP32)
        rc = cuda_launch_check(ck_unary(CK_UNARY_SCALE, 1.0f / (float)st->n_in, 0, 0, NULL, NULL,
                                        DT_FP32, y, y, numel(vy), P->c->stream),
                               st, e);
    return rc;
}

static int run_where(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vy = cuda_outv(P, st, 0);
    struct ck_iter it;
    iter_init(&it, vy->dims, vy->ndim);
    for (int k = 0; k < 3; k++) {
        const struct plan_value *v = cuda_inv(P, st, k);
        iter_bcast(&it, k, v->dims, v->ndim);
    }
    iter_collapse(&it, 3);
    return cuda_launch_check(ck_where(cuda_in(P, st, 0), cuda_in(P, st, 1), cuda_in(P, st, 2),
                                      cuda_out(P, st, 0), (int)dtype_size(vy->dtype), &it,
                                      P->c->stream),
                             st, e);
}

/* Concat (scatter = 0: input k into y) and Split (scatter = 1: x into output k). */
static int run_concat_split(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    int split = st->op == EOP_SPLIT, ax = st->a.axis;
    const struct plan_value *whole = split ? cuda_inv(P, st, 0) : cuda_outv(P, st, 0);
    int n = split ? st->n_out : st->n_in;
    int64_t outer = eng_numel(whole->dims, ax), inner = 1, at = 0;
    int es = (int)dtype_size(whole->dtype);
    for (int i = ax + 1; i < whole->ndim; i++)
        inner *= whole->dims[i];
    int64_t wrow = whole->dims[ax] * inner;
    for (int k = 0; k < n; k++) {
        const struct plan_value *part = split ? cuda_outv(P, st, k) : cuda_inv(P, st, k);
        if (!part)
            continue; /* an omitted Split output: its slice is skipped */
        int64_t prow = part->dims[ax] * inner;
        struct ck_iter it;
        int64_t d[2] = {outer, prow};
        iter_init(&it, d, 2);
        int rc;
        if (split) {
            it.in[0][0] = wrow, it.in[0][1] = 1;
            iter_collapse(&it, 1);
            rc = ck_copy(cuda_in(P, st, 0), at, cuda_out(P, st, k), 0, es, &it, P->c->stream);
        } else {
            it.in[0][0] = prow, it.in[0][1] = 1;
            it.out[0] = wrow, it.out[1] = 1;
            iter_collapse(&it, 1);
            rc = ck_copy(cuda_in(P, st, k), 0, cuda_out(P, st, 0), at, es, &it, P->c->stream);
        }
        if ((rc = cuda_launch_check(rc, st, e)))
            return rc;
        at += prow;
    }
    return CORRAL_OK;
}

/* Slice, Transpose, Tile: gathers of x through per-axis strides. */
static int run_strided(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct plan_value *vx = cuda_inv(P, st, 0), *vy = cuda_outv(P, st, 0);
    int64_t istr[TENSOR_MAX_DIMS], base = 0;
    struct ck_iter it;
    dense_strides(vx->dims, vx->ndim, istr);
    iter_init(&it, vy->dims, vy->ndim);
    for (int i = 0; i < vy->ndim; i++) {
        switch (st->op) {
        case EOP_SLICE:
            base += a->starts[i] * istr[i];
            it.in[0][i] = a->steps[i] * istr[i];
            break;
        case EOP_TRANSPOSE: it.in[0][i] = istr[a->ints[i]]; break;
        default: /* Tile */
            it.in[0][i] = istr[i];
            it.mod[i] = vx->dims[i];
            break;
        }
    }
    iter_collapse(&it, 1);
    return cuda_launch_check(ck_copy(cuda_in(P, st, 0), base, cuda_out(P, st, 0), 0,
                                     (int)dtype_size(vy->dtype), &it, P->c->stream),
                             st, e);
}

static int run_view(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vy = cuda_outv(P, st, 0);
    void *x = cuda_in(P, st, 0), *y = cuda_out(P, st, 0);
    int rc = CORRAL_OK;
    if (vy->nbytes && x != y)
        rc = cuda_check(cudaMemcpyAsync(y, x, vy->nbytes, cudaMemcpyDeviceToDevice, P->c->stream),
                        "device copy", st, e);
    const struct plan_value *mask = st->op == EOP_DROPOUT ? cuda_outv(P, st, 1) : NULL;
    if (!rc && mask && mask->nbytes)
        rc = cuda_check(cudaMemsetAsync(cuda_out(P, st, 1), 1, mask->nbytes, P->c->stream),
                        "mask fill", st, e);
    return rc;
}

static int run_gather(struct cuda_plan *P, int s, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vx = cuda_inv(P, st, 0), *vi = cuda_inv(P, st, 1);
    int ax = st->a.axis;
    int64_t outer = eng_numel(vx->dims, ax), inner = 1;
    for (int i = ax + 1; i < vx->ndim; i++)
        inner *= vx->dims[i];
    return cuda_launch_check(ck_gather(cuda_in(P, st, 0), cuda_in(P, st, 1), (int)vi->dtype,
                                       cuda_out(P, st, 0), (int)dtype_size(vx->dtype), outer,
                                       vx->dims[ax], inner, numel(vi), P->derr, s + 1,
                                       P->c->stream),
                             st, e);
}

static int run_reduce(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vx = cuda_inv(P, st, 0);
    int64_t str[TENSOR_MAX_DIMS];
    int red[TENSOR_MAX_DIMS] = {0};
    struct ck_rdesc r;
    memset(&r, 0, sizeof r);
    dense_strides(vx->dims, vx->ndim, str);
    for (int i = 0; i < st->a.n_ints; i++)
        if (st->a.ints[i] >= 0 && st->a.ints[i] < vx->ndim)
            red[st->a.ints[i]] = 1;
    r.nout = r.rcount = 1;
    for (int i = 0; i < vx->ndim; i++) {
        if (red[i]) {
            r.rdims[r.nr] = vx->dims[i], r.rstr[r.nr++] = str[i];
            r.rcount *= vx->dims[i];
        } else {
            r.kdims[r.nk] = vx->dims[i], r.kstr[r.nk++] = str[i];
            r.nout *= vx->dims[i];
        }
    }
    return cuda_launch_check(ck_reduce((int)st->op, (int)vx->dtype, cuda_in(P, st, 0),
                                       cuda_out(P, st, 0), &r, P->c->stream),
                             st, e);
}

/* [outer, len, inner] around an axis. */
static void split_axis(const struct plan_value *v, int ax, int64_t *outer, int64_t *len,
                       int64_t *inner)
{
    *outer = eng_numel(v->dims, ax);
    *len = v->dims[ax];
    *inner = 1;
    for (int i = ax + 1; i < v->ndim; i++)
        *inner *= v->dims[i];
}

static int run_norm(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *vx = cuda_inv(P, st, 0);
    void *stream = P->c->stream;
    int rc;
    if (st->op == EOP_SOFTMAX || st->op == EOP_LOGSOFTMAX) {
        int64_t outer = 1, len = 1, inner = 1;
        for (int i = 0; i < vx->ndim; i++) {
            if (i < st->a.axis)
                outer *= vx->dims[i];
            else if (i == st->a.axis || st->a.legacy_2d)
                len *= vx->dims[i];
            else
                inner *= vx->dims[i];
        }
        rc = ck_softmax(cuda_in(P, st, 0), cuda_out(P, st, 0), outer, len, inner,
                        st->op == EOP_LOGSOFTMAX, stream);
    } else if (st->op == EOP_LAYERNORM) {
        int64_t outer = eng_numel(vx->dims, st->a.axis), len = 1;
        for (int i = st->a.axis; i < vx->ndim; i++)
            len *= vx->dims[i];
        const struct plan_value *vs = cuda_inv(P, st, 1), *vb = cuda_inv(P, st, 2);
        rc = ck_rownorm(cuda_in(P, st, 0), cuda_out(P, st, 0), outer, len, st->a.epsilon,
                        cuda_in(P, st, 1), numel(vs), cuda_in(P, st, 2), vb ? numel(vb) : 0, 0,
                        cuda_out(P, st, 1), cuda_out(P, st, 2), stream);
    } else {
        int64_t n = vx->dims[0], c = vx->dims[1], sp = 1;
        for (int i = 2; i < vx->ndim; i++)
            sp *= vx->dims[i];
        if (st->op == EOP_BATCHNORM)
            rc = ck_batchnorm(cuda_in(P, st, 0), cuda_out(P, st, 0), cuda_in(P, st, 1),
                              cuda_in(P, st, 2), cuda_in(P, st, 3), cuda_in(P, st, 4),
                              st->a.epsilon, n, c, sp, stream);
        else
            rc = ck_rownorm(cuda_in(P, st, 0), cuda_out(P, st, 0), n * c, sp, st->a.epsilon,
                            cuda_in(P, st, 1), c, cuda_in(P, st, 2), c, c, NULL, NULL, stream);
    }
    return cuda_launch_check(rc, st, e);
}

static int run_pool(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct plan_value *vx = cuda_inv(P, st, 0), *vy = cuda_outv(P, st, 0);
    int64_t nc = vx->dims[0] * vx->dims[1], sp = 1;
    for (int i = 2; i < vx->ndim; i++)
        sp *= vx->dims[i];
    if (st->op == EOP_GLOBALAVGPOOL || st->op == EOP_GLOBALMAXPOOL) {
        struct ck_rdesc r;
        memset(&r, 0, sizeof r);
        r.nk = r.nr = 1;
        r.kdims[0] = nc, r.kstr[0] = sp, r.nout = nc;
        r.rdims[0] = sp, r.rstr[0] = 1, r.rcount = sp;
        int op = st->op == EOP_GLOBALAVGPOOL ? EOP_REDUCEMEAN : EOP_REDUCEMAX;
        return cuda_launch_check(ck_reduce(op, DT_FP32, cuda_in(P, st, 0), cuda_out(P, st, 0),
                                           &r, P->c->stream),
                                 st, e);
    }
    struct ck_window w;
    int nsp = vx->ndim - 2;
    for (int i = 0; i < 3; i++) {
        int on = i < nsp;
        w.in[i] = on ? vx->dims[2 + i] : 1;
        w.out[i] = on ? vy->dims[2 + i] : 1;
        w.k[i] = on ? a->kernel[i] : 1;
        w.s[i] = on ? a->strides[i] : 1;
        w.d[i] = on ? a->dilations[i] : 1;
        w.pb[i] = on ? a->pads[i] : 0;
        w.pe[i] = on ? a->pads[nsp + i] : 0;
    }
    return cuda_launch_check(ck_pool(cuda_in(P, st, 0), cuda_out(P, st, 0), nc, &w,
                                     st->op == EOP_MAXPOOL, a->count_include_pad, P->c->stream),
                             st, e);
}

int cuda_run_gpu_step(struct cuda_plan *P, int s, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    const struct plan_value *vx = cuda_inv(P, st, 0), *vy = cuda_outv(P, st, 0);
    void *stream = P->c->stream;
    enum eng_op op = st->op;
    if (is_unary_op(op))
        return run_unary(P, st, e);
    if (op == EOP_NOT) /* Not(x) = (x == 0) */
        return binary(P, st, EOP_EQUAL, vx, cuda_in(P, st, 0),
                      &(struct plan_value){.dtype = DT_BOOL, .ndim = 0}, P->dzero, vy,
                      cuda_out(P, st, 0), e);
    if (is_binary_op(op))
        return binary(P, st, (int)op, vx, cuda_in(P, st, 0), cuda_inv(P, st, 1),
                      cuda_in(P, st, 1), vy, cuda_out(P, st, 0), e);
    if (is_variadic_op(op))
        return run_variadic(P, st, e);
    if (is_reduce_op(op))
        return run_reduce(P, st, e);
    if (is_view_op(op))
        return run_view(P, st, e);
    switch (op) {
    case EOP_WHERE: return run_where(P, st, e);
    case EOP_CONCAT:
    case EOP_SPLIT: return run_concat_split(P, st, e);
    case EOP_SLICE:
    case EOP_TRANSPOSE:
    case EOP_TILE: return run_strided(P, st, e);
    case EOP_EXPAND: return expand_copy(P, st, vx, cuda_in(P, st, 0), vy, cuda_out(P, st, 0), e);
    case EOP_PAD:
        return cuda_launch_check(ck_pad(cuda_in(P, st, 0), cuda_out(P, st, 0),
                                        (int)dtype_size(vx->dtype), vx->ndim, vx->dims, vy->dims,
                                        st->a.starts, (int)st->a.pad_mode,
                                        pad_fill(&st->a, vx->dtype), stream),
                                 st, e);
    case EOP_GATHER: return run_gather(P, s, st, e);
    case EOP_CAST:
        return cuda_launch_check(ck_cast(cuda_in(P, st, 0), (int)vx->dtype, cuda_out(P, st, 0),
                                         (int)vy->dtype, numel(vx), stream),
                                 st, e);
    case EOP_ARGMAX:
    case EOP_ARGMIN: {
        int64_t outer, len, inner;
        split_axis(vx, st->a.axis, &outer, &len, &inner);
        return cuda_launch_check(ck_argext(cuda_in(P, st, 0), (int)vx->dtype,
                                           cuda_out(P, st, 0), outer, len, inner,
                                           op == EOP_ARGMIN, st->a.select_last_index, stream),
                                 st, e);
    }
    case EOP_SOFTMAX:
    case EOP_LOGSOFTMAX:
    case EOP_LAYERNORM:
    case EOP_BATCHNORM:
    case EOP_INSTANCENORM: return run_norm(P, st, e);
    case EOP_MAXPOOL:
    case EOP_AVGPOOL:
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL: return run_pool(P, st, e);
    case EOP_GEMM: return cuda_run_gemm(P, st, e);
    case EOP_MATMUL: return cuda_run_matmul(P, st, e);
    case EOP_CONV: return cuda_run_conv(P, s, e);
    default:
        return cerr_set(e, CORRAL_EINTERNAL, "%s: the CUDA backend has no kernel for %s",
                        st->label, eng_op_name(op));
    }
}

/*
 * A step without a device kernel: its device inputs are copied to pinned
 * staging, the reference kernel runs once they have arrived, and its outputs
 * go back to the device. Constants and model inputs are read in place.
 */
int cuda_run_host_step(struct cuda_plan *P, int s, const struct tensor *in, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    struct cuda_step *cs = &P->steps[s];
    cudaStream_t stream = P->c->stream;
    int rc;
    for (int k = 0; k < st->n_in; k++) {
        const struct plan_value *v = cuda_inv(P, st, k);
        if (!v)
            continue;
        if (v->kind == PV_CONST)
            cs->tin[k].data = (void *)v->data;
        else if (v->kind == PV_INPUT)
            cs->tin[k].data = in[v->input_index].data;
        else {
            cs->tin[k].data = P->hmem + cs->hin[k];
            if (v->nbytes &&
                (rc = cuda_check(cudaMemcpyAsync(cs->tin[k].data, P->vptr[st->in[k]], v->nbytes,
                                                 cudaMemcpyDeviceToHost, stream),
                                 "copy to host", st, e)))
                return rc;
        }
    }
    if ((rc = cuda_check(cudaStreamSynchronize(stream), "stream synchronize", st, e)))
        return rc;
    for (int k = 0; k < st->n_out; k++)
        if (cuda_outv(P, st, k))
            cs->tout[k].data = P->hmem + cs->hout[k];
    if ((rc = eng_kernel_run(st, cs->tin, cs->tout, e)))
        return rc;
    for (int k = 0; k < st->n_out; k++) {
        const struct plan_value *v = cuda_outv(P, st, k);
        if (v && v->nbytes &&
            (rc = cuda_check(cudaMemcpyAsync(P->vptr[st->out[k]], cs->tout[k].data, v->nbytes,
                                             cudaMemcpyHostToDevice, stream),
                             "copy to device", st, e)))
            return rc;
    }
    return CORRAL_OK;
}
