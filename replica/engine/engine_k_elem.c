#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine_internal.h"
#include "engine_scalar.h"

/*
 * Elementwise ops: arithmetic and comparisons with numpy broadcasting,
 * logic, Where, and unary math and activations. FP32 is the compute type;
 * the integer paths exist for shape arithmetic (INT64, INT32).
 */

static int is_cmp(enum eng_op op)
{
    return op == EOP_EQUAL || op == EOP_LESS || op == EOP_LESS_EQUAL || op == EOP_GREATER ||
           op == EOP_GREATER_EQUAL;
}

static int is_logic(enum eng_op op)
{
    return op == EOP_AND || op == EOP_OR || op == EOP_XOR || op == EOP_NOT;
}

static int is_variadic(enum eng_op op)
{
    return op == EOP_MIN || op == EOP_MAX || op == EOP_SUM || op == EOP_MEAN;
}

static int is_arith(enum eng_op op)
{
    return op == EOP_ADD || op == EOP_SUB || op == EOP_MUL || op == EOP_DIV || op == EOP_MOD ||
           is_variadic(op);
}

int eng_setup_elem(struct eng_setup *s, struct cerr *e)
{
    struct eng_node *nd = s->nd;
    struct eng_attrs *a = &nd->a;
    enum eng_op op = nd->op;
    int64_t iv = 0;
    int rc = CORRAL_OK;
    s->out_dt[0] = s->in_dt[0];
    if (is_arith(op)) {
        for (int k = 0; k < nd->n_in; k++) {
            if ((rc = eng_need_dtype(s, k, DTM_NUM, "FP32, INT64 and INT32", e)))
                return rc;
            if (s->in_dt[k] != s->in_dt[0])
                return cerr_set(e, CORRAL_EINVAL, "%s: inputs have different datatypes (%s and "
                                "%s)", nd->label, dtype_name(s->in_dt[0]),
                                dtype_name(s->in_dt[k]));
        }
        if (op == EOP_MOD) {
            if ((rc = eng_attr_int(s, "fmod", 0, &iv, e)))
                return rc;
            a->fmod = iv != 0;
            if (s->in_dt[0] == DT_FP32 && !a->fmod)
                return cerr_set(e, CORRAL_EINVAL, "%s: Mod on floats requires fmod=1", nd->label);
        }
        return CORRAL_OK;
    }
    if (op == EOP_POW) {
        if ((rc = eng_need_dtype(s, 0, DTM_FLOAT, "FP32", e)) ||
            (rc = eng_need_dtype(s, 1, DTM_NUM, "FP32, INT64 and INT32 exponents", e)))
            return rc;
        return CORRAL_OK;
    }
    if (is_cmp(op)) {
        unsigned m = DTM_NUM | (op == EOP_EQUAL ? DTM(DT_BOOL) : 0);
        for (int k = 0; k < 2; k++)
            if ((rc = eng_need_dtype(s, k, m, "FP32, INT64, INT32 (and BOOL for Equal)", e)))
                return rc;
        if (s->in_dt[0] != s->in_dt[1])
            return cerr_set(e, CORRAL_EINVAL, "%s: inputs have different datatypes", nd->label);
        s->out_dt[0] = DT_BOOL;
        return CORRAL_OK;
    }
    if (is_logic(op)) {
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = eng_need_dtype(s, k, DTM(DT_BOOL), "BOOL", e)))
                return rc;
        s->out_dt[0] = DT_BOOL;
        return CORRAL_OK;
    }
    if (op == EOP_WHERE) {
        if ((rc = eng_need_dtype(s, 0, DTM(DT_BOOL), "a BOOL condition", e)))
            return rc;
        if (dtype_size(s->in_dt[1]) == 0 || s->in_dt[1] != s->in_dt[2])
            return cerr_set(e, CORRAL_EUNSUPP, "%s: X and Y must have the same fixed-size "
                            "datatype (got %s and %s)", nd->label, dtype_name(s->in_dt[1]),
                            dtype_name(s->in_dt[2]));
        s->out_dt[0] = s->in_dt[1];
        return CORRAL_OK;
    }
    if (op == EOP_NEG || op == EOP_ABS || op == EOP_SIGN)
        return eng_need_dtype(s, 0, DTM_NUM, "FP32, INT64 and INT32", e);
    if ((rc = eng_need_dtype(s, 0, DTM_FLOAT, "FP32", e)))
        return rc;
    if (op == EOP_PRELU)
        return eng_need_dtype(s, 1, DTM_FLOAT, "FP32", e);
    switch (op) {
    case EOP_LEAKYRELU: return eng_attr_float(s, "alpha", 0.01f, &a->alpha, e);
    case EOP_ELU:
    case EOP_CELU: return eng_attr_float(s, "alpha", 1.0f, &a->alpha, e);
    case EOP_THRESHOLDEDRELU: return eng_attr_float(s, "alpha", 1.0f, &a->alpha, e);
    case EOP_SELU:
        if ((rc = eng_attr_float(s, "alpha", 1.67326319217681884765625f, &a->alpha, e)))
            return rc;
        return eng_attr_float(s, "gamma", 1.05070102214813232421875f, &a->gamma, e);
    case EOP_HARDSIGMOID:
        if ((rc = eng_attr_float(s, "alpha", 0.2f, &a->alpha, e)))
            return rc;
        return eng_attr_float(s, "beta", 0.5f, &a->beta, e);
    case EOP_GELU: {
        char buf[16];
        if ((rc = eng_attr_str(s, "approximate", buf, sizeof buf, e)))
            return rc;
        a->approximate_tanh = strcmp(buf, "tanh") == 0;
        return CORRAL_OK;
    }
    case EOP_CLIP:
        if (nd->n_in > 1) {
            for (int k = 1; k < nd->n_in; k++)
                if ((rc = eng_need_dtype(s, k, DTM_FLOAT, "FP32", e)))
                    return rc;
        }
        if ((rc = eng_attr_float(s, "min", -INFINITY, &a->alpha, e)))
            return rc;
        return eng_attr_float(s, "max", INFINITY, &a->beta, e);
    default: return CORRAL_OK;
    }
}

int eng_infer_elem(struct eng_infer *c, struct cerr *e)
{
    /*
     * PRelu's slope of shape [C] on an N-D input is the old (opset < 7)
     * per-channel form that PyTorch's exporter still produces for
     * multi-parameter PReLU: applied along axis 1.
     */
    if (c->st->op == EOP_PRELU) {
        const struct plan_value *X = c->in[0], *S = c->in[1];
        c->st->a.legacy_2d = S->ndim == 1 && X->ndim > 2 && S->dims[0] == X->dims[1] &&
                             S->dims[0] != X->dims[X->ndim - 1];
        if (c->st->a.legacy_2d)
            return eng_set_shape(c->out[0], X->dtype, X->dims, X->ndim, e);
    }
    int64_t d[TENSOR_MAX_DIMS];
    int nd = 0, first = 1;
    for (int k = 0; k < c->st->n_in; k++) {
        const struct plan_value *v = c->in[k];
        if (!v || (c->st->op == EOP_CLIP && k > 0))
            continue;
        if (first) {
            nd = v->ndim;
            memcpy(d, v->dims, sizeof d);
            first = 0;
            continue;
        }
        int rc = eng_broadcast(c->st, d, nd, v->dims, v->ndim, d, &nd, e);
        if (rc)
            return rc;
    }
    enum dtype dt = c->in[0]->dtype;
    if (is_cmp(c->st->op) || is_logic(c->st->op))
        dt = DT_BOOL;
    else if (c->st->op == EOP_WHERE)
        dt = c->in[1]->dtype;
    if (c->st->op == EOP_PRELU && (nd != c->in[0]->ndim))
        return cerr_set(e, CORRAL_EINVAL, "%s: slope does not broadcast to X", c->st->label);
    return eng_set_shape(c->out[0], dt, d, nd, e);
}

/* ---- broadcasting iteration ---- */

struct bcast {
    int nd;
    int64_t dims[TENSOR_MAX_DIMS];
    int64_t str[3][TENSOR_MAX_DIMS]; /* element strides of each input, 0 where broadcast */
    int64_t total;
};

static void bcast_init(struct bcast *b, const struct tensor *out, const struct tensor *const *in,
                       int n)
{
    /* Inputs that all match the output walk it as one flat row. */
    int flat = 1;
    for (int k = 0; k < n && flat; k++)
        flat = in[k]->nbytes / (dtype_size(in[k]->dtype) ? dtype_size(in[k]->dtype) : 1) ==
                   (size_t)eng_numel(out->dims, out->ndim) &&
               in[k]->ndim == out->ndim;
    if (flat) {
        b->nd = 1;
        b->dims[0] = b->total = eng_numel(out->dims, out->ndim);
        for (int k = 0; k < n; k++)
            b->str[k][0] = 1;
        return;
    }
    b->nd = out->ndim;
    memcpy(b->dims, out->dims, sizeof b->dims);
    b->total = eng_numel(out->dims, out->ndim);
    for (int k = 0; k < n; k++) {
        const struct tensor *t = in[k];
        int64_t s = 1;
        for (int i = b->nd - 1; i >= 0; i--) {
            int ti = i - (b->nd - t->ndim);
            int64_t d = ti >= 0 ? t->dims[ti] : 1;
            b->str[k][i] = d == 1 ? 0 : s;
            s *= d;
        }
    }
}

/*
 * Walks the output in rows of its last dimension; for each row, base[k] is
 * the element offset of input k and inner[k] its stride along the row.
 */
#define BCAST_FOR(b, n, BODY)                                                                 \
    do {                                                                                      \
        int64_t idx_[TENSOR_MAX_DIMS] = {0};                                                  \
        int64_t row_ = (b)->nd ? (b)->dims[(b)->nd - 1] : 1;                                  \
        int64_t inner[3] = {0, 0, 0}, base[3];                                                \
        for (int k_ = 0; k_ < (n); k_++)                                                      \
            inner[k_] = (b)->nd ? (b)->str[k_][(b)->nd - 1] : 0;                              \
        for (int64_t o_ = 0; o_ < (b)->total; o_ += row_) {                                   \
            for (int k_ = 0; k_ < (n); k_++) {                                                \
                base[k_] = 0;                                                                 \
                for (int i_ = 0; i_ < (b)->nd - 1; i_++)                                      \
                    base[k_] += idx_[i_] * (b)->str[k_][i_];                                  \
            }                                                                                 \
            int64_t obase = o_;                                                               \
            for (int64_t j = 0; j < row_; j++) {                                              \
                BODY;                                                                         \
            }                                                                                 \
            for (int i_ = (b)->nd - 2; i_ >= 0 && ++idx_[i_] == (b)->dims[i_]; i_--)          \
                idx_[i_] = 0;                                                                 \
        }                                                                                     \
    } while (0)

#define AT(k) (base[k] + j * inner[k])

/* Signed overflow is undefined in C; integer negation wraps through uint64 as ONNX runtimes
 * do (engine_scalar.h has the binary ops). */
static int64_t isub64(int64_t x, int64_t z) { return (int64_t)((uint64_t)x - (uint64_t)z); }

static double load_num(const void *p, enum dtype dt, int64_t i)
{
    switch (dt) {
    case DT_FP32: return ((const float *)p)[i];
    case DT_INT64: return (double)((const int64_t *)p)[i];
    case DT_INT32: return ((const int32_t *)p)[i];
    case DT_BOOL: return ((const uint8_t *)p)[i];
    default: return 0;
    }
}

/* y = op(a, b) with broadcasting; y may be a itself when a already has y's shape. */
static void arith(enum eng_op op, int fm, const struct tensor *A, const struct tensor *B,
                  struct tensor *Y)
{
    const struct tensor *ins[2] = {A, B};
    struct bcast b;
    bcast_init(&b, Y, ins, 2);
    if (Y->dtype == DT_FP32) {
        const float *pa = A->data, *pb = B->data;
        float *py = Y->data;
        /* One loop per op, so the hot transformer/CNN adds and muls vectorise. */
        switch (op) {
        case EOP_ADD:
        case EOP_SUM:
        case EOP_MEAN: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] + pb[AT(1)]); break;
        case EOP_SUB: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] - pb[AT(1)]); break;
        case EOP_MUL: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] * pb[AT(1)]); break;
        case EOP_DIV: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] / pb[AT(1)]); break;
        default: BCAST_FOR(&b, 2, py[obase + j] = eng_binary_f(op, pa[AT(0)], pb[AT(1)])); break;
        }
    } else if (Y->dtype == DT_INT64) {
        const int64_t *pa = A->data, *pb = B->data;
        int64_t *py = Y->data;
        BCAST_FOR(&b, 2, py[obase + j] = eng_binary_i(op, pa[AT(0)], pb[AT(1)], fm));
    } else {
        const int32_t *pa = A->data, *pb = B->data;
        int32_t *py = Y->data;
        BCAST_FOR(&b, 2,
                  py[obase + j] = (int32_t)eng_binary_i(op, pa[AT(0)], pb[AT(1)], fm));
    }
}

static int cmp(enum eng_op op, double x, double z)
{
    switch (op) {
    case EOP_EQUAL: return x == z;
    case EOP_LESS: return x < z;
    case EOP_LESS_EQUAL: return x <= z;
    case EOP_GREATER: return x > z;
    default: return x >= z;
    }
}

static int64_t cmp_i(enum eng_op op, int64_t x, int64_t z)
{
    switch (op) {
    case EOP_EQUAL: return x == z;
    case EOP_LESS: return x < z;
    case EOP_LESS_EQUAL: return x <= z;
    case EOP_GREATER: return x > z;
    default: return x >= z;
    }
}

static float unary(const struct plan_step *st, float x)
{
    const struct eng_attrs *a = &st->a;
    return eng_unary_apply(st->op, x, a->alpha, a->beta, a->gamma, a->approximate_tanh);
}

static int run_unary(const struct plan_step *st, const struct tensor *X, struct tensor *Y,
                     struct cerr *e)
{
    int64_t n = eng_numel(X->dims, X->ndim);
    if (X->dtype == DT_INT64 || X->dtype == DT_INT32) {
        for (int64_t i = 0; i < n; i++) {
            int64_t x = eng_int_at(X->data, X->dtype, i), y;
            if (st->op == EOP_NEG)
                y = isub64(0, x);
            else if (st->op == EOP_ABS)
                y = x < 0 ? isub64(0, x) : x;
            else
                y = x > 0 ? 1 : (x < 0 ? -1 : 0);
            if (X->dtype == DT_INT64)
                ((int64_t *)Y->data)[i] = y;
            else
                ((int32_t *)Y->data)[i] = (int32_t)y;
        }
        return CORRAL_OK;
    }
    const float *x = X->data;
    float *y = Y->data;
    switch (st->op) {
    case EOP_RELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] = unary(st, x[i]);
        break;
    }
    return CORRAL_OK;
}

int eng_kernel_elem(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                    struct cerr *e)
{
    enum eng_op op = st->op;
    struct tensor *Y = &out[0];
    if (Y->nbytes == 0)
        return CORRAL_OK;
    if (op == EOP_CLIP) {
        float lo = st->a.alpha, hi = st->a.beta;
        if (st->n_in > 1 && in[1].dtype == DT_FP32 && in[1].nbytes)
            lo = *(const float *)in[1].data;
        if (st->n_in > 2 && in[2].dtype == DT_FP32 && in[2].nbytes)
            hi = *(const float *)in[2].data;
        int64_t n = eng_numel(in[0].dims, in[0].ndim);
        const float *x = in[0].data;
        float *y = Y->data;
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
        return CORRAL_OK;
    }
    if (st->n_in == 1 && !is_variadic(op) && op != EOP_NOT)
        return run_unary(st, &in[0], Y, e);
    if (is_arith(op) && !is_variadic(op)) {
        arith(op, st->a.fmod, &in[0], &in[1], Y);
        return CORRAL_OK;
    }
    if (is_variadic(op)) {
        /* Y starts as input 0 broadcast (Y + 0), then folds in the others. */
        struct tensor zero = {.dtype = Y->dtype, .ndim = 0};
        int64_t zbuf = 0;
        zero.data = &zbuf;
        zero.nbytes = dtype_size(Y->dtype);
        arith(EOP_ADD, 0, &in[0], &zero, Y);
        for (int k = 1; k < st->n_in; k++)
            arith(op, 0, Y, &in[k], Y);
        if (op == EOP_MEAN) {
            int64_t n = eng_numel(Y->dims, Y->ndim);
            if (Y->dtype == DT_FP32)
                for (int64_t i = 0; i < n; i++)
                    ((float *)Y->data)[i] /= (float)st->n_in;
        }
        return CORRAL_OK;
    }
    const struct tensor *ins[3] = {&in[0], st->n_in > 1 ? &in[1] : &in[0],
                                   st->n_in > 2 ? &in[2] : &in[0]};
    struct bcast b;
    bcast_init(&b, Y, ins, st->n_in);
    if (op == EOP_POW) {
        const float *pa = in[0].data;
        float *py = Y->data;
        if (in[1].dtype == DT_FP32) {
            const float *pb = in[1].data;
            BCAST_FOR(&b, 2, {
                float z = pb[AT(1)];
                float x = pa[AT(0)];
                py[obase + j] = z == 2.0f ? x * x : powf(x, z);
            });
        } else {
            BCAST_FOR(&b, 2, py[obase + j] = powf(pa[AT(0)], (float)load_num(in[1].data,
                                                                               in[1].dtype,
                                                                               AT(1))));
        }
        return CORRAL_OK;
    }
    if (op == EOP_PRELU && st->a.legacy_2d) {
        const float *pa = in[0].data, *pb = in[1].data;
        float *py = Y->data;
        int64_t n = in[0].dims[0], ch = in[0].dims[1], sp = eng_numel(in[0].dims + 2,
                                                                     in[0].ndim - 2);
        for (int64_t i = 0; i < n * ch; i++)
            for (int64_t j = 0; j < sp; j++) {
                float x = pa[i * sp + j];
                py[i * sp + j] = x >= 0.0f ? x : x * pb[i % ch];
            }
        return CORRAL_OK;
    }
    if (op == EOP_PRELU) {
        const float *pa = in[0].data, *pb = in[1].data;
        float *py = Y->data;
        BCAST_FOR(&b, 2, {
            float x = pa[AT(0)];
            py[obase + j] = x >= 0.0f ? x : x * pb[AT(1)];
        });
        return CORRAL_OK;
    }
    if (is_cmp(op)) {
        uint8_t *py = Y->data;
        if (in[0].dtype == DT_INT64) {
            const int64_t *pa = in[0].data, *pb = in[1].data;
            BCAST_FOR(&b, 2, py[obase + j] = (uint8_t)cmp_i(op, pa[AT(0)], pb[AT(1)]));
        } else {
            BCAST_FOR(&b, 2, py[obase + j] = (uint8_t)cmp(op, load_num(in[0].data, in[0].dtype,
                                                                       AT(0)),
                                                          load_num(in[1].data, in[1].dtype,
                                                                   AT(1))));
        }
        return CORRAL_OK;
    }
    if (is_logic(op)) {
        const uint8_t *pa = in[0].data, *pb = st->n_in > 1 ? in[1].data : in[0].data;
        uint8_t *py = Y->data;
        switch (op) {
        case EOP_NOT: BCAST_FOR(&b, 1, py[obase + j] = !pa[AT(0)]); break;
        case EOP_AND: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] && pb[AT(1)]); break;
        case EOP_OR: BCAST_FOR(&b, 2, py[obase + j] = pa[AT(0)] || pb[AT(1)]); break;
        default: BCAST_FOR(&b, 2, py[obase + j] = !pa[AT(0)] != !pb[AT(1)]); break;
        }
        return CORRAL_OK;
    }
    if (op == EOP_WHERE) {
        const uint8_t *pc = in[0].data;
        const char *px = in[1].data, *pz = in[2].data;
        char *py = Y->data;
        size_t es = dtype_size(Y->dtype);
        if (es == 4) {
            BCAST_FOR(&b, 3, memcpy(py + (obase + j) * 4,
                                    pc[AT(0)] ? px + AT(1) * 4 : pz + AT(2) * 4, 4));
        } else {
            BCAST_FOR(&b, 3, memcpy(py + (obase + j) * es,
                                    pc[AT(0)] ? px + AT(1) * es : pz + AT(2) * es, es));
        }
        return CORRAL_OK;
    }
    return cerr_set(e, CORRAL_EINTERNAL, "%s: no elementwise kernel", st->label);
}
