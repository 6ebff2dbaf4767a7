#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CORRAL_ENGINE_OMP
#include <omp.h>
#endif

#include "engine_internal.h"

/* A protobuf larger than 2 GiB cannot be a valid ONNX file (protobuf's own limit). */
#define ENGINE_MAX_MODEL_BYTES ((size_t)2 << 30)
/* Opset assumed when a model declares none for the default domain. */
#define ENGINE_DEFAULT_OPSET 21

static const struct {
    const char *name;
    enum eng_op op;
    int min_in, max_in, min_out, max_out;
} op_table[] = {
    {"Gemm", EOP_GEMM, 2, 3, 1, 1},         {"MatMul", EOP_MATMUL, 2, 2, 1, 1},
    {"Add", EOP_ADD, 2, 2, 1, 1},           {"Sub", EOP_SUB, 2, 2, 1, 1},
    {"Mul", EOP_MUL, 2, 2, 1, 1},           {"Div", EOP_DIV, 2, 2, 1, 1},
    {"Relu", EOP_RELU, 1, 1, 1, 1},         {"Sigmoid", EOP_SIGMOID, 1, 1, 1, 1},
    {"Tanh", EOP_TANH, 1, 1, 1, 1},         {"Softmax", EOP_SOFTMAX, 1, 1, 1, 1},
    {"Flatten", EOP_FLATTEN, 1, 1, 1, 1},   {"Reshape", EOP_RESHAPE, 2, 2, 1, 1},
    {"Identity", EOP_IDENTITY, 1, 1, 1, 1}, {"Dropout", EOP_DROPOUT, 1, 3, 1, 2},
    {"Constant", EOP_CONSTANT, 0, 0, 1, 1},
};
#define N_OPS (sizeof op_table / sizeof op_table[0])

static int is_default_domain(const char *d)
{
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

static int op_lookup(const char *domain, const char *op_type)
{
    if (!is_default_domain(domain) || !op_type)
        return -1;
    for (size_t i = 0; i < N_OPS; i++)
        if (strcmp(op_table[i].name, op_type) == 0)
            return (int)i;
    return -1;
}

int engine_op_supported(const char *domain, const char *op_type)
{
    return op_lookup(domain, op_type) >= 0;
}

const char *engine_supported_ops(void)
{
    return "Gemm, MatMul, Add, Sub, Mul, Div, Relu, Sigmoid, Tanh, Softmax, Flatten, Reshape, "
           "Identity, Dropout (inference), Constant";
}

/* ---- value table ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int value_find(const struct engine *eng, const char *name)
{
    if (!eng->map_cap)
        return -1;
    size_t mask = eng->map_cap - 1;
    for (size_t i = hash_str(name) & mask;; i = (i + 1) & mask) {
        size_t slot = eng->map[i];
        if (!slot)
            return -1;
        if (strcmp(eng->vals[slot - 1].name, name) == 0)
            return (int)(slot - 1);
    }
}

/*
 * The value array and the map are sized once from the graph's counts, so
 * adding never reallocates and indices stay valid; the caller checks the name
 * is new first.
 */
static int value_add(struct engine *eng, const char *name, enum eng_value_kind kind, enum dtype dt,
                     struct cerr *e)
{
    if (eng->n_vals >= eng->cap_vals)
        return cerr_set(e, CORRAL_EINTERNAL, "value table overflow at '%s'", name);
    struct eng_value *v = &eng->vals[eng->n_vals];
    memset(v, 0, sizeof *v);
    v->name = strdup(name);
    if (!v->name)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    v->kind = kind;
    v->dtype = dt;
    v->last_use = -1;
    size_t mask = eng->map_cap - 1;
    size_t i = hash_str(name) & mask;
    while (eng->map[i])
        i = (i + 1) & mask;
    eng->map[i] = ++eng->n_vals;
    return CORRAL_OK;
}

/* ---- attributes ---- */

static const Onnx__AttributeProto *attr_find(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

static int attr_int(const Onnx__NodeProto *n, const char *label, const char *name, int64_t def,
                    int64_t *out, struct cerr *e)
{
    const Onnx__AttributeProto *a = attr_find(n, name);
    *out = def;
    if (!a)
        return CORRAL_OK;
    if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT) ||
        (!a->has_type && !a->has_i))
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be an int", label, name);
    *out = a->i;
    return CORRAL_OK;
}

static int attr_float(const Onnx__NodeProto *n, const char *label, const char *name, float def,
                      float *out, struct cerr *e)
{
    const Onnx__AttributeProto *a = attr_find(n, name);
    *out = def;
    if (!a)
        return CORRAL_OK;
    if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT) ||
        (!a->has_type && !a->has_f))
        return cerr_set(e, CORRAL_EINVAL, "%s: attribute '%s' must be a float", label, name);
    *out = a->f;
    return CORRAL_OK;
}

/* ---- io info ---- */

static int io_info_from_value_info(const Onnx__ValueInfoProto *vi, const char *what,
                                   struct engine_io_info *io, int32_t *elem_type, struct cerr *e)
{
    memset(io, 0, sizeof *io);
    const Onnx__TypeProto *tp = vi->type;
    *elem_type = 0;
    io->ndim = -1;
    if (!tp)
        return CORRAL_OK; /* untyped: the caller decides whether that is acceptable */
    if (tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return cerr_set(e, CORRAL_EUNSUPP,
                        "%s is not a tensor (sequence, map, optional and sparse values are not "
                        "supported)", what);
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    *elem_type = tt->has_elem_type ? tt->elem_type : 0;
    if (!tt->shape)
        return CORRAL_OK;
    if (tt->shape->n_dim > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EUNSUPP, "%s has %zu dimensions, the engine supports at most %d",
                        what, tt->shape->n_dim, TENSOR_MAX_DIMS);
    io->ndim = (int)tt->shape->n_dim;
    for (size_t i = 0; i < tt->shape->n_dim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0)
                return cerr_set(e, CORRAL_EINVAL, "%s declares dimension %zu as %lld", what, i,
                                (long long)d->dim_value);
            io->dims[i] = d->dim_value;
        } else {
            io->dims[i] = -1;
        }
    }
    return CORRAL_OK;
}

/* ---- loading ---- */

static void node_label(const Onnx__NodeProto *n, size_t i, char *buf, size_t len)
{
    const char *dom = is_default_domain(n->domain) ? "" : n->domain;
    const char *sep = *dom ? ":" : "";
    const char *op = n->op_type ? n->op_type : "?";
    if (n->name && *n->name)
        snprintf(buf, len, "node '%s' (%s%s%s)", n->name, dom, sep, op);
    else
        snprintf(buf, len, "node #%zu (%s%s%s)", i, dom, sep, op);
}

/* Makes a Constant node's value into an engine-owned tensor at load time. */
static int eval_constant(const Onnx__NodeProto *n, const char *label, const char *name,
                         struct tensor *t, struct cerr *e)
{
    char what[400];
    if (n->n_attribute != 1)
        return cerr_set(e, CORRAL_EINVAL, "%s: a Constant needs exactly one value attribute, "
                        "found %zu", label, n->n_attribute);
    const Onnx__AttributeProto *a = n->attribute[0];
    const char *an = a->name ? a->name : "";
    if (strcmp(an, "value") == 0) {
        if (!a->t)
            return cerr_set(e, CORRAL_EINVAL, "%s: attribute 'value' holds no tensor", label);
        snprintf(what, sizeof what, "%s value", label);
        return engine_tensor_from_proto(a->t, what, name, t, e);
    }
    if (strcmp(an, "value_float") == 0 || strcmp(an, "value_int") == 0) {
        int isf = an[6] == 'f';
        int64_t scalar_dims[1] = {0}; /* a scalar has no dims; the pointer must still be valid */
        int rc = tensor_alloc(t, name, isf ? DT_FP32 : DT_INT64, scalar_dims, 0, e);
        if (rc)
            return cerr_prefix(e, "%s", label);
        if (isf)
            *(float *)t->data = a->f;
        else
            *(int64_t *)t->data = a->i;
        return CORRAL_OK;
    }
    if (strcmp(an, "value_floats") == 0 || strcmp(an, "value_ints") == 0) {
        int isf = an[6] == 'f';
        int64_t cnt = isf ? (int64_t)a->n_floats : (int64_t)a->n_ints;
        int rc = tensor_alloc(t, name, isf ? DT_FP32 : DT_INT64, &cnt, 1, e);
        if (rc)
            return cerr_prefix(e, "%s", label);
        if (cnt)
            memcpy(t->data, isf ? (void *)a->floats : (void *)a->ints, t->nbytes);
        return CORRAL_OK;
    }
    return cerr_set(e, CORRAL_EUNSUPP, "%s: Constant attribute '%s' is not supported (the engine "
                    "supports value, value_float(s) and value_int(s))", label, an);
}

static const char *dt_of(const struct engine *eng, int v)
{
    return dtype_name(eng->vals[v].dtype);
}

static int need_fp32(const struct engine *eng, const struct eng_node *nd, const char *op, int k,
                     struct cerr *e)
{
    int v = nd->in[k];
    if (v < 0 || eng->vals[v].dtype == DT_FP32)
        return CORRAL_OK;
    return cerr_set(e, CORRAL_EUNSUPP, "%s: input '%s' is %s; the engine implements %s for FP32 "
                    "only", nd->label, eng->vals[v].name, dt_of(eng, v), op);
}

static int need_fixed_size(const struct engine *eng, const struct eng_node *nd, int k,
                           struct cerr *e)
{
    int v = nd->in[k];
    if (dtype_size(eng->vals[v].dtype) > 0)
        return CORRAL_OK;
    return cerr_set(e, CORRAL_EUNSUPP, "%s: input '%s' has datatype %s, which the engine does not "
                    "support", nd->label, eng->vals[v].name, dt_of(eng, v));
}

/*
 * Parses a node's attributes, checks its input datatypes and works out the
 * datatype of each output, so that every unsupported feature is reported at
 * load time rather than on the first request.
 */
static int setup_node(struct engine *eng, const Onnx__NodeProto *n, struct eng_node *nd,
                      enum dtype out_dt[ENG_MAX_OUT], struct cerr *e)
{
    const char *op = op_table[0].name;
    for (size_t i = 0; i < N_OPS; i++)
        if (op_table[i].op == nd->op)
            op = op_table[i].name;
    int64_t iv = 0;
    int rc = CORRAL_OK;
    out_dt[0] = out_dt[1] = DT_INVALID;
    switch (nd->op) {
    case EOP_GEMM:
        if ((rc = attr_float(n, nd->label, "alpha", 1.0f, &nd->alpha, e)) ||
            (rc = attr_float(n, nd->label, "beta", 1.0f, &nd->beta, e)))
            return rc;
        if ((rc = attr_int(n, nd->label, "transA", 0, &iv, e)))
            return rc;
        nd->trans_a = iv != 0;
        if ((rc = attr_int(n, nd->label, "transB", 0, &iv, e)))
            return rc;
        nd->trans_b = iv != 0;
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = need_fp32(eng, nd, op, k, e)))
                return rc;
        out_dt[0] = DT_FP32;
        break;
    case EOP_MATMUL:
    case EOP_RELU:
    case EOP_SIGMOID:
    case EOP_TANH:
        for (int k = 0; k < nd->n_in; k++)
            if ((rc = need_fp32(eng, nd, op, k, e)))
                return rc;
        out_dt[0] = DT_FP32;
        break;
    case EOP_SOFTMAX:
        if ((rc = need_fp32(eng, nd, op, 0, e)))
            return rc;
        nd->softmax_2d = eng->opset < 13;
        if ((rc = attr_int(n, nd->label, "axis", nd->softmax_2d ? 1 : -1, &iv, e)))
            return rc;
        if (iv < -TENSOR_MAX_DIMS || iv > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EINVAL, "%s: axis %lld is out of range", nd->label,
                            (long long)iv);
        nd->axis = (int)iv;
        out_dt[0] = DT_FP32;
        break;
    case EOP_ADD:
    case EOP_SUB:
    case EOP_MUL:
    case EOP_DIV: {
        enum dtype a = eng->vals[nd->in[0]].dtype, b = eng->vals[nd->in[1]].dtype;
        if (a != b)
            return cerr_set(e, CORRAL_EINVAL, "%s: inputs '%s' (%s) and '%s' (%s) have different "
                            "datatypes", nd->label, eng->vals[nd->in[0]].name, dtype_name(a),
                            eng->vals[nd->in[1]].name, dtype_name(b));
        if (a != DT_FP32 && !(a == DT_INT64 && nd->op != EOP_DIV))
            return cerr_set(e, CORRAL_EUNSUPP, "%s: inputs are %s; the engine implements %s for "
                            "FP32%s only", nd->label, dtype_name(a), op,
                            nd->op != EOP_DIV ? " and INT64" : "");
        out_dt[0] = a;
        break;
    }
    case EOP_FLATTEN:
        if ((rc = need_fixed_size(eng, nd, 0, e)))
            return rc;
        if ((rc = attr_int(n, nd->label, "axis", 1, &iv, e)))
            return rc;
        if (iv < -TENSOR_MAX_DIMS || iv > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EINVAL, "%s: axis %lld is out of range", nd->label,
                            (long long)iv);
        nd->axis = (int)iv;
        out_dt[0] = eng->vals[nd->in[0]].dtype;
        break;
    case EOP_RESHAPE:
        if ((rc = need_fixed_size(eng, nd, 0, e)))
            return rc;
        if (eng->vals[nd->in[1]].dtype != DT_INT64)
            return cerr_set(e, CORRAL_EINVAL, "%s: shape input '%s' is %s, expected INT64",
                            nd->label, eng->vals[nd->in[1]].name, dt_of(eng, nd->in[1]));
        if ((rc = attr_int(n, nd->label, "allowzero", 0, &iv, e)))
            return rc;
        nd->allowzero = iv != 0;
        out_dt[0] = eng->vals[nd->in[0]].dtype;
        break;
    case EOP_IDENTITY:
        if ((rc = need_fixed_size(eng, nd, 0, e)))
            return rc;
        out_dt[0] = eng->vals[nd->in[0]].dtype;
        break;
    case EOP_DROPOUT: {
        if ((rc = need_fixed_size(eng, nd, 0, e)))
            return rc;
        /* Inference only: a training_mode input must be a constant false. */
        int tm = nd->n_in > 2 ? nd->in[2] : -1;
        if (tm >= 0) {
            const struct eng_value *v = &eng->vals[tm];
            if (v->kind != EVK_CONST || v->dtype != DT_BOOL || v->init.nbytes != 1 ||
                *(const uint8_t *)v->init.data)
                return cerr_set(e, CORRAL_EUNSUPP, "%s: training_mode '%s' is not a constant "
                                "false; the engine runs Dropout in inference mode only",
                                nd->label, v->name);
        }
        if ((rc = attr_int(n, nd->label, "is_test", 1, &iv, e)))
            return rc;
        if (!iv)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: is_test=0 (training) is not supported; the "
                            "engine runs Dropout in inference mode only", nd->label);
        out_dt[0] = eng->vals[nd->in[0]].dtype;
        out_dt[1] = DT_BOOL;
        break;
    }
    case EOP_CONSTANT:
    case EOP_COUNT:
        break;
    }
    return CORRAL_OK;
}

/* Finds which node (at or after `from`) outputs `name`, for the out-of-order message. */
static int later_producer(const Onnx__GraphProto *g, size_t from, const char *name)
{
    for (size_t i = from; i < g->n_node; i++)
        for (size_t j = 0; j < g->node[i]->n_output; j++)
            if (g->node[i]->output[j] && strcmp(g->node[i]->output[j], name) == 0)
                return (int)i;
    return -1;
}

static char *format_input_list(const struct engine *eng, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < eng->n_inputs && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", eng->inputs[i].name);
    if (!eng->n_inputs)
        snprintf(buf, len, "none");
    return buf;
}

/*
 * MatMul followed by an Add of a 1-D constant (nn.Linear on N-D input, as
 * PyTorch exports it) becomes one MatMul that starts from the broadcast bias
 * and accumulates with beta = 1, saving a pass over the output and a buffer.
 */
static void fuse_matmul_add(struct engine *eng, struct eng_node *nodes, size_t n, int *dead)
{
    for (size_t i = 0; i < n; i++) {
        struct eng_node *mm = &nodes[i];
        if (dead[i] || mm->op != EOP_MATMUL || mm->bias >= 0)
            continue;
        int v = mm->out[0];
        if (eng->vals[v].is_output)
            continue;
        int uses = 0;
        size_t user = 0;
        for (size_t j = 0; j < n; j++) {
            if (dead[j])
                continue;
            for (int k = 0; k < nodes[j].n_in; k++)
                if (nodes[j].in[k] == v) {
                    uses++;
                    user = j;
                }
        }
        if (uses != 1 || nodes[user].op != EOP_ADD)
            continue;
        struct eng_node *add = &nodes[user];
        int b = add->in[0] == v ? add->in[1] : add->in[0];
        const struct eng_value *bv = &eng->vals[b];
        if (b == v || bv->kind != EVK_CONST || bv->dtype != DT_FP32 || bv->init.ndim != 1)
            continue;
        mm->bias = b;
        mm->out[0] = add->out[0];
        dead[user] = 1;
    }
}

static int load_graph(struct engine *eng, const Onnx__ModelProto *m, struct cerr *e)
{
    const Onnx__GraphProto *g = m->graph;
    struct eng_node *nodes = NULL;
    int *dead = NULL;
    char label[320], what[320];
    int rc = CORRAL_OK;

    if (!g)
        return cerr_set(e, CORRAL_EINVAL, "the model has no graph");
    eng->opset = 0;
    for (size_t i = 0; i < m->n_opset_import; i++)
        if (is_default_domain(m->opset_import[i]->domain) && m->opset_import[i]->has_version)
            eng->opset = (int)m->opset_import[i]->version;
    if (!eng->opset)
        eng->opset = ENGINE_DEFAULT_OPSET;

    /* Unsupported ops first, so a model the engine cannot run says so before anything else. */
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *n = g->node[i];
        if (op_lookup(n->domain, n->op_type) >= 0)
            continue;
        node_label(n, i, label, sizeof label);
        if (!is_default_domain(n->domain))
            return cerr_set(e, CORRAL_EUNSUPP, "unsupported op '%s' from domain '%s' in %s (the "
                            "engine supports only the default ONNX domain)",
                            n->op_type ? n->op_type : "", n->domain, label);
        return cerr_set(e, CORRAL_EUNSUPP, "unsupported op '%s' in %s (the engine supports %s)",
                        n->op_type ? n->op_type : "", label, engine_supported_ops());
    }

    size_t bound = g->n_initializer + g->n_input + 1;
    for (size_t i = 0; i < g->n_node; i++)
        bound += g->node[i]->n_output;
    eng->cap_vals = bound;
    eng->vals = calloc(bound, sizeof *eng->vals);
    eng->map_cap = 16;
    while (eng->map_cap < 2 * bound)
        eng->map_cap <<= 1;
    eng->map = calloc(eng->map_cap, sizeof *eng->map);
    nodes = calloc(g->n_node + 1, sizeof *nodes);
    dead = calloc(g->n_node + 1, sizeof *dead);
    eng->inputs = calloc(g->n_input + 1, sizeof *eng->inputs);
    eng->input_val = calloc(g->n_input + 1, sizeof *eng->input_val);
    eng->outputs = calloc(g->n_output + 1, sizeof *eng->outputs);
    eng->output_val = calloc(g->n_output + 1, sizeof *eng->output_val);
    if (!eng->vals || !eng->map || !nodes || !dead || !eng->inputs || !eng->input_val ||
        !eng->outputs || !eng->output_val) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }

    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        const char *name = tp->name ? tp->name : "";
        if (!*name) {
            rc = cerr_set(e, CORRAL_EINVAL, "initializer #%zu has no name", i);
            goto fail;
        }
        if (value_find(eng, name) >= 0) {
            rc = cerr_set(e, CORRAL_EINVAL, "initializer '%s' is defined twice", name);
            goto fail;
        }
        if ((rc = value_add(eng, name, EVK_CONST, DT_INVALID, e)))
            goto fail;
        struct eng_value *v = &eng->vals[eng->n_vals - 1];
        snprintf(what, sizeof what, "initializer '%s'", name);
        if ((rc = engine_tensor_from_proto(tp, what, v->name, &v->init, e)))
            goto fail;
        v->dtype = v->init.dtype;
        v->cur = v->init;
        v->cur.owned = 0;
    }

    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *vi = g->input[i];
        const char *name = vi->name ? vi->name : "";
        int found = value_find(eng, name);
        if (found >= 0 && eng->vals[found].kind == EVK_CONST)
            continue; /* an initializer listed as an input is a weight, not a model input */
        if (!*name || found >= 0) {
            rc = cerr_set(e, CORRAL_EINVAL, "graph input #%zu ('%s') has %s name", i, name,
                          *name ? "a duplicate" : "an empty");
            goto fail;
        }
        struct engine_io_info *io = &eng->inputs[eng->n_inputs];
        int32_t et = 0;
        snprintf(what, sizeof what, "model input '%s'", name);
        if ((rc = io_info_from_value_info(vi, what, io, &et, e)))
            goto fail;
        enum dtype dt = eng->inputs[eng->n_inputs].dtype = engine_dtype_from_onnx(et);
        if (dt == DT_INVALID) {
            rc = cerr_set(e, et ? CORRAL_EUNSUPP : CORRAL_EINVAL,
                          "model input '%s' has data type %s, which the engine does not support",
                          name, et ? engine_onnx_type_name(et) : "UNDEFINED (no type given)");
            goto fail;
        }
        if ((rc = value_add(eng, name, EVK_INPUT, dt, e)))
            goto fail;
        io->name = eng->vals[eng->n_vals - 1].name;
        eng->input_val[eng->n_inputs++] = (int)eng->n_vals - 1;
    }

    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *n = g->node[i];
        struct eng_node *nd = &nodes[i];
        int t = op_lookup(n->domain, n->op_type);
        nd->op = op_table[t].op;
        nd->bias = -1;
        node_label(n, i, label, sizeof label);
        if (!(nd->label = strdup(label))) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto fail;
        }
        if ((int)n->n_input < op_table[t].min_in || (int)n->n_input > op_table[t].max_in ||
            (int)n->n_output < op_table[t].min_out || (int)n->n_output > op_table[t].max_out) {
            if (nd->op == EOP_RESHAPE && n->n_input == 1)
                rc = cerr_set(e, CORRAL_EUNSUPP, "%s: Reshape with a 'shape' attribute (opset "
                              "< 5) is not supported", label);
            else
                rc = cerr_set(e, CORRAL_EINVAL, "%s has %zu inputs and %zu outputs, expected "
                              "%d..%d inputs and %d..%d outputs", label, n->n_input, n->n_output,
                              op_table[t].min_in, op_table[t].max_in, op_table[t].min_out,
                              op_table[t].max_out);
            goto fail;
        }
        nd->n_in = (int)n->n_input;
        for (size_t k = 0; k < n->n_input; k++) {
            const char *in = n->input[k] ? n->input[k] : "";
            nd->in[k] = -1;
            if (!*in) {
                /* An empty name omits an optional input; the first inputs are never optional. */
                if ((int)k < op_table[t].min_in) {
                    rc = cerr_set(e, CORRAL_EINVAL, "%s: required input %zu has an empty name",
                                  label, k);
                    goto fail;
                }
                continue;
            }
            int v = value_find(eng, in);
            if (v < 0) {
                int later = later_producer(g, i, in);
                if (later >= 0) {
                    char l2[320];
                    node_label(g->node[later], (size_t)later, l2, sizeof l2);
                    rc = cerr_set(e, CORRAL_EINVAL, "%s uses '%s' before %s produces it (the "
                                  "nodes are not in topological order)", label, in, l2);
                } else {
                    rc = cerr_set(e, CORRAL_EINVAL, "%s: input '%s' is not a graph input, an "
                                  "initializer or the output of an earlier node (missing "
                                  "initializer?)", label, in);
                }
                goto fail;
            }
            nd->in[k] = v;
        }
        enum dtype out_dt[ENG_MAX_OUT];
        if ((rc = setup_node(eng, n, nd, out_dt, e)))
            goto fail;
        nd->n_out = (int)n->n_output;
        for (size_t k = 0; k < n->n_output; k++) {
            const char *on = n->output[k] ? n->output[k] : "";
            nd->out[k] = -1;
            if (!*on) {
                if (k == 0) {
                    rc = cerr_set(e, CORRAL_EINVAL, "%s: output 0 has an empty name", label);
                    goto fail;
                }
                continue;
            }
            if (value_find(eng, on) >= 0) {
                rc = cerr_set(e, CORRAL_EINVAL, "%s: output '%s' is already defined by a graph "
                              "input, an initializer or an earlier node", label, on);
                goto fail;
            }
            if (nd->op == EOP_CONSTANT) {
                if ((rc = value_add(eng, on, EVK_CONST, DT_INVALID, e)))
                    goto fail;
                struct eng_value *v = &eng->vals[eng->n_vals - 1];
                if ((rc = eval_constant(n, label, v->name, &v->init, e)))
                    goto fail;
                v->dtype = v->init.dtype;
                v->cur = v->init;
                v->cur.owned = 0;
                dead[i] = 1;
            } else if ((rc = value_add(eng, on, EVK_NODE, out_dt[k], e))) {
                goto fail;
            }
            nd->out[k] = (int)eng->n_vals - 1;
        }
    }

    for (size_t i = 0; i < g->n_output; i++) {
        const Onnx__ValueInfoProto *vi = g->output[i];
        const char *name = vi->name ? vi->name : "";
        int v = value_find(eng, name);
        if (v < 0) {
            rc = cerr_set(e, CORRAL_EINVAL, "graph output '%s' is not produced by any node, "
                          "initializer or input", name);
            goto fail;
        }
        struct engine_io_info *io = &eng->outputs[i];
        int32_t et = 0;
        snprintf(what, sizeof what, "model output '%s'", name);
        if ((rc = io_info_from_value_info(vi, what, io, &et, e)))
            goto fail;
        io->name = eng->vals[v].name;
        io->dtype = eng->vals[v].dtype;
        if (et && engine_dtype_from_onnx(et) != io->dtype) {
            rc = cerr_set(e, CORRAL_EINVAL, "model output '%s' is declared %s but the graph "
                          "computes %s", name, engine_onnx_type_name(et), dtype_name(io->dtype));
            goto fail;
        }
        eng->vals[v].is_output = 1;
        eng->output_val[i] = v;
    }
    eng->n_outputs = g->n_output;

    fuse_matmul_add(eng, nodes, g->n_node, dead);

    eng->nodes = calloc(g->n_node + 1, sizeof *eng->nodes);
    if (!eng->nodes) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }
    for (size_t i = 0; i < g->n_node; i++) {
        if (dead[i]) {
            free(nodes[i].label);
            continue;
        }
        struct eng_node *nd = &eng->nodes[eng->n_nodes];
        *nd = nodes[i];
        for (int k = 0; k < nd->n_in; k++)
            if (nd->in[k] >= 0)
                eng->vals[nd->in[k]].last_use = (int)eng->n_nodes;
        if (nd->bias >= 0)
            eng->vals[nd->bias].last_use = (int)eng->n_nodes;
        eng->n_nodes++;
    }
    free(nodes);
    nodes = NULL; /* the labels now belong to eng->nodes */

    eng->seen = calloc(eng->n_inputs + 1, 1);
    eng->in_buf = calloc(eng->n_inputs + 1, sizeof *eng->in_buf);
    eng->in_cap = calloc(eng->n_inputs + 1, sizeof *eng->in_cap);
    if (!eng->seen || !eng->in_buf || !eng->in_cap) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }
    free(dead);
    return CORRAL_OK;
fail:
    if (nodes)
        for (size_t i = 0; i < g->n_node; i++)
            free(nodes[i].label);
    free(nodes);
    free(dead);
    return rc;
}

int engine_load_buffer(const void *buf, size_t len, const struct engine_options *opt,
                       struct engine **out, struct cerr *e)
{
    return engine_load_buffer_named(buf, len, "the model buffer", opt, out, e);
}

int engine_load_buffer_named(const void *buf, size_t len, const char *what,
                             const struct engine_options *opt, struct engine **out,
                             struct cerr *e)
{
    struct engine_options def = ENGINE_OPTIONS_DEFAULT;
    Onnx__ModelProto *m = NULL;
    struct engine *eng = NULL;
    int rc = CORRAL_OK;
    *out = NULL;
    if (!opt)
        opt = &def;
    if (opt->device && strcmp(opt->device, "cpu") != 0)
        return cerr_set(e, CORRAL_EUNSUPP, "device '%s' is not supported by the engine (only "
                        "'cpu')", opt->device);
    if (opt->threads < 0)
        return cerr_set(e, CORRAL_EINVAL, "threads is %d, expected >= 0", opt->threads);
    m = onnx__model_proto__unpack(NULL, len, buf);
    if (!m)
        return cerr_set(e, CORRAL_EPARSE, "%s is not a valid ONNX model (protobuf parse failed)",
                        what);
    eng = calloc(1, sizeof *eng);
    if (!eng) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }
    eng->threads = opt->threads;
    if ((rc = load_graph(eng, m, e))) {
        cerr_prefix(e, "cannot load %s", what);
        goto fail;
    }
    onnx__model_proto__free_unpacked(m, NULL);
    *out = eng;
    return CORRAL_OK;
fail:
    onnx__model_proto__free_unpacked(m, NULL);
    engine_free(eng);
    return rc;
}

int engine_load_file(const char *path, const struct engine_options *opt, struct engine **out,
                     struct cerr *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = engine_read_file(path, ENGINE_MAX_MODEL_BYTES, &buf, &len, e);
    if (rc)
        return rc;
    rc = engine_load_buffer_named(buf, len, path, opt, out, e);
    free(buf);
    return rc;
}

void engine_free(struct engine *eng)
{
    if (!eng)
        return;
    for (size_t i = 0; i < eng->n_vals; i++) {
        struct eng_value *v = &eng->vals[i];
        if (v->kind == EVK_NODE)
            tensor_release(&v->cur);
        tensor_release(&v->init);
        free(v->name);
    }
    for (size_t i = 0; i < eng->n_nodes; i++)
        free(eng->nodes[i].label);
    for (size_t i = 0; i < eng->n_inputs && eng->in_buf; i++)
        free(eng->in_buf[i]);
    free(eng->vals);
    free(eng->map);
    free(eng->nodes);
    free(eng->inputs);
    free(eng->input_val);
    free(eng->outputs);
    free(eng->output_val);
    free(eng->seen);
    free(eng->in_buf);
    free(eng->in_cap);
    free(eng);
}

size_t engine_num_inputs(const struct engine *eng) { return eng->n_inputs; }
size_t engine_num_outputs(const struct engine *eng) { return eng->n_outputs; }

const struct engine_io_info *engine_input(const struct engine *eng, size_t i)
{
    return i < eng->n_inputs ? &eng->inputs[i] : NULL;
}

const struct engine_io_info *engine_output(const struct engine *eng, size_t i)
{
    return i < eng->n_outputs ? &eng->outputs[i] : NULL;
}

int engine_opset(const struct engine *eng) { return eng->opset; }

/* ---- running ---- */

static int bind_input(struct engine *eng, const struct tensor *t, struct cerr *e)
{
    char list[256], got[160], want[160], what[300];
    if (!t->name)
        return cerr_set(e, CORRAL_EINVAL, "an input tensor has no name (model inputs: %s)",
                        format_input_list(eng, list, sizeof list));
    size_t k = 0;
    while (k < eng->n_inputs && strcmp(eng->inputs[k].name, t->name) != 0)
        k++;
    if (k == eng->n_inputs)
        return cerr_set(e, CORRAL_EINVAL, "unknown input '%s' (model inputs: %s)", t->name,
                        format_input_list(eng, list, sizeof list));
    const struct engine_io_info *io = &eng->inputs[k];
    if (eng->seen[k])
        return cerr_set(e, CORRAL_EINVAL, "input '%s' is given more than once", t->name);
    eng->seen[k] = 1;
    if (t->dtype != io->dtype)
        return cerr_set(e, CORRAL_EINVAL, "input '%s' has datatype %s, expected %s", t->name,
                        dtype_name(t->dtype), dtype_name(io->dtype));
    int bad = t->ndim < 0 || t->ndim > TENSOR_MAX_DIMS || (io->ndim >= 0 && t->ndim != io->ndim);
    for (int i = 0; !bad && io->ndim >= 0 && i < t->ndim; i++)
        bad = io->dims[i] >= 0 && io->dims[i] != t->dims[i];
    if (bad)
        return cerr_set(e, CORRAL_EINVAL, "input '%s' has shape %s, expected %s", t->name,
                        tensor_shape_str(t->dims, t->ndim < 0 ? 0 : t->ndim > TENSOR_MAX_DIMS
                                         ? TENSOR_MAX_DIMS : t->ndim, got, sizeof got),
                        io->ndim < 0 ? "any shape" : tensor_shape_str(io->dims, io->ndim, want,
                                                                      sizeof want));
    snprintf(what, sizeof what, "input '%s'", t->name);
    int rc = tensor_check_size(what, t->dtype, t->dims, t->ndim, t->data, t->nbytes, e);
    if (rc)
        return rc;
    if (t->nbytes && !t->data)
        return cerr_set(e, CORRAL_EINVAL, "input '%s' has no data", t->name);
    /*
     * A zero-sized dimension makes any other dimension legal for the element
     * count, so bound the product of the non-zero dimensions too: kernels
     * multiply dimensions together and must not overflow.
     */
    uint64_t span = 1;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d = t->dims[i] ? (uint64_t)t->dims[i] : 1;
        if (d > TENSOR_MAX_BYTES / span)
            return cerr_set(e, CORRAL_ETOOLARGE, "input '%s' has shape %s, whose dimensions "
                            "multiply past the engine's limit", t->name,
                            tensor_shape_str(t->dims, t->ndim, got, sizeof got));
        span *= d;
    }
    struct eng_value *v = &eng->vals[eng->input_val[k]];
    v->cur = *t;
    v->cur.owned = 0;
    v->cur.name = v->name;
    /*
     * Kernels read elements through typed pointers, so a buffer that is not
     * aligned to its element size (bytes straight out of a protobuf message)
     * is copied to an aligned scratch buffer kept for the next run.
     */
    size_t es = dtype_size(t->dtype);
    if (t->nbytes && ((uintptr_t)t->data % es) != 0) {
        if (eng->in_cap[k] < t->nbytes) {
            void *nb = realloc(eng->in_buf[k], t->nbytes);
            if (!nb)
                return cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes for input '%s'",
                                t->nbytes, t->name);
            eng->in_buf[k] = nb;
            eng->in_cap[k] = t->nbytes;
        }
        memcpy(eng->in_buf[k], t->data, t->nbytes);
        v->cur.data = eng->in_buf[k];
    }
    return CORRAL_OK;
}

static void release_intermediates(struct engine *eng)
{
    for (size_t i = 0; i < eng->n_vals; i++) {
        struct eng_value *v = &eng->vals[i];
        if (v->kind == EVK_NODE)
            tensor_release(&v->cur);
        else if (v->kind == EVK_INPUT)
            memset(&v->cur, 0, sizeof v->cur);
    }
}

int engine_run(struct engine *eng, const struct tensor *inputs, size_t n_in,
               struct tensor *outputs, struct cerr *e)
{
    char list[256];
    int rc = CORRAL_OK;
    memset(outputs, 0, eng->n_outputs * sizeof *outputs);
    memset(eng->seen, 0, eng->n_inputs);
    for (size_t i = 0; i < n_in; i++)
        if ((rc = bind_input(eng, &inputs[i], e)))
            goto fail;
    for (size_t k = 0; k < eng->n_inputs; k++)
        if (!eng->seen[k]) {
            rc = cerr_set(e, CORRAL_EINVAL, "missing input '%s' (model inputs: %s)",
                          eng->inputs[k].name, format_input_list(eng, list, sizeof list));
            goto fail;
        }
#ifdef CORRAL_ENGINE_OMP
    /* The OpenMP thread count is per calling thread, so it is set on every run. */
    if (eng->threads > 0)
        omp_set_num_threads(eng->threads);
#endif

    for (size_t k = 0; k < eng->n_nodes; k++) {
        const struct eng_node *nd = &eng->nodes[k];
        if ((rc = engine_node_run(eng, (int)k, e)))
            goto fail;
        /* Free what no later node reads, including outputs nobody reads at all. */
        for (int j = 0; j < nd->n_in; j++) {
            int v = nd->in[j];
            if (v >= 0 && eng->vals[v].kind == EVK_NODE && !eng->vals[v].is_output &&
                eng->vals[v].last_use == (int)k)
                tensor_release(&eng->vals[v].cur);
        }
        for (int j = 0; j < nd->n_out; j++) {
            int v = nd->out[j];
            if (v >= 0 && !eng->vals[v].is_output && eng->vals[v].last_use < 0)
                tensor_release(&eng->vals[v].cur);
        }
    }

    for (size_t i = 0; i < eng->n_outputs; i++) {
        struct eng_value *v = &eng->vals[eng->output_val[i]];
        if (v->kind == EVK_NODE && v->cur.owned) {
            outputs[i] = v->cur;
            v->cur.owned = 0; /* handed to the caller; later duplicates copy from it */
        } else {
            if ((rc = tensor_alloc(&outputs[i], NULL, v->cur.dtype, v->cur.dims, v->cur.ndim, e)))
                goto fail;
            if (v->cur.nbytes)
                memcpy(outputs[i].data, v->cur.data, v->cur.nbytes);
        }
        outputs[i].name = eng->outputs[i].name;
    }
    release_intermediates(eng);
    return CORRAL_OK;
fail:
    for (size_t i = 0; i < eng->n_outputs; i++)
        tensor_release(&outputs[i]);
    release_intermediates(eng);
    return rc;
}
