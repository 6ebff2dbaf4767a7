/*
 * Unit tests for the engine: small ONNX models are built here with the
 * protobuf-c structs generated from onnx.proto, packed to bytes and loaded
 * through engine_load_buffer, so each test states its whole model. Expected
 * values are worked out by hand in the comments.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "onnx.pb-c.h"

/* ---- a tiny arena: every builder allocation is freed at the end of a test ---- */

static void **arena;
static size_t arena_n, arena_cap;

static void *ta(size_t n)
{
    if (arena_n == arena_cap) {
        arena_cap = arena_cap ? 2 * arena_cap : 256;
        arena = realloc(arena, arena_cap * sizeof *arena);
        assert_non_null(arena);
    }
    void *p = calloc(1, n ? n : 1);
    assert_non_null(p);
    arena[arena_n++] = p;
    return p;
}

static char *ts(const char *s)
{
    char *p = ta(strlen(s) + 1);
    memcpy(p, s, strlen(s) + 1);
    return p;
}

static int arena_teardown(void **state)
{
    for (size_t i = 0; i < arena_n; i++)
        free(arena[i]);
    free(arena);
    arena = NULL;
    arena_n = arena_cap = 0;
    return 0;
}

/* ---- model builder ---- */

#define GB_MAX 32

struct gb {
    Onnx__ModelProto m;
    Onnx__GraphProto g;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
};

static void gb_init(struct gb *b, int opset)
{
    onnx__model_proto__init(&b->m);
    onnx__graph_proto__init(&b->g);
    onnx__operator_set_id_proto__init(&b->opset);
    b->opset.domain = ts("");
    b->opset.has_version = 1;
    b->opset.version = opset;
    b->opsets[0] = &b->opset;
    b->m.has_ir_version = 1;
    b->m.ir_version = 8;
    b->m.n_opset_import = 1;
    b->m.opset_import = b->opsets;
    b->m.graph = &b->g;
    b->g.name = ts("test");
    b->g.node = ta(GB_MAX * sizeof *b->g.node);
    b->g.initializer = ta(GB_MAX * sizeof *b->g.initializer);
    b->g.input = ta(GB_MAX * sizeof *b->g.input);
    b->g.output = ta(GB_MAX * sizeof *b->g.output);
}

/* Splits "a,b,,c" into names; an empty name is an omitted optional input. */
static size_t split(const char *s, char ***out)
{
    size_t n = 0;
    char **v = ta(GB_MAX * sizeof *v);
    if (s && *s) {
        const char *p = s;
        for (;;) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            v[n] = ta(l + 1);
            memcpy(v[n], p, l);
            n++;
            if (!c)
                break;
            p = c + 1;
        }
    }
    *out = v;
    return n;
}

static Onnx__NodeProto *gb_node(struct gb *b, const char *op, const char *name, const char *ins,
                                const char *outs)
{
    Onnx__NodeProto *n = ta(sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = ts(op);
    n->name = ts(name);
    n->n_input = split(ins, &n->input);
    n->n_output = split(outs, &n->output);
    n->attribute = ta(GB_MAX * sizeof *n->attribute);
    b->g.node[b->g.n_node++] = n;
    return n;
}

static Onnx__AttributeProto *attr(Onnx__NodeProto *n, const char *name,
                                  Onnx__AttributeProto__AttributeType t)
{
    Onnx__AttributeProto *a = ta(sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = ts(name);
    a->has_type = 1;
    a->type = t;
    n->attribute[n->n_attribute++] = a;
    return a;
}

static void attr_i(Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = v;
}

static void attr_f(Onnx__NodeProto *n, const char *name, float v)
{
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = v;
}

static void attr_ints(Onnx__NodeProto *n, const char *name, size_t cnt, const int64_t *v)
{
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = cnt;
    a->ints = ta(cnt * sizeof(int64_t));
    memcpy(a->ints, v, cnt * sizeof(int64_t));
}

static Onnx__ValueInfoProto *value_info(const char *name, int32_t elem, int ndim,
                                        const int64_t *dims)
{
    Onnx__ValueInfoProto *vi = ta(sizeof *vi);
    onnx__value_info_proto__init(vi);
    vi->name = ts(name);
    Onnx__TypeProto *tp = ta(sizeof *tp);
    onnx__type_proto__init(tp);
    Onnx__TypeProto__Tensor *tt = ta(sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = elem;
    if (ndim >= 0) {
        Onnx__TensorShapeProto *sh = ta(sizeof *sh);
        onnx__tensor_shape_proto__init(sh);
        sh->n_dim = (size_t)ndim;
        sh->dim = ta((size_t)ndim * sizeof *sh->dim);
        for (int i = 0; i < ndim; i++) {
            Onnx__TensorShapeProto__Dimension *d = ta(sizeof *d);
            onnx__tensor_shape_proto__dimension__init(d);
            if (dims[i] < 0) {
                d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
                d->dim_param = ts("N");
            } else {
                d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
                d->dim_value = dims[i];
            }
            sh->dim[i] = d;
        }
        tt->shape = sh;
    }
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    vi->type = tp;
    return vi;
}

#define FLOAT_T ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT
#define INT64_T ONNX__TENSOR_PROTO__DATA_TYPE__INT64

static void gb_input(struct gb *b, const char *name, int32_t elem, int ndim, const int64_t *dims)
{
    b->g.input[b->g.n_input++] = value_info(name, elem, ndim, dims);
}

static void gb_output(struct gb *b, const char *name, int32_t elem, int ndim, const int64_t *dims)
{
    b->g.output[b->g.n_output++] = value_info(name, elem, ndim, dims);
}

static Onnx__TensorProto *tensor_proto(const char *name, int32_t type, int ndim,
                                       const int64_t *dims, const void *data, size_t n, int raw)
{
    Onnx__TensorProto *t = ta(sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = ts(name);
    t->has_data_type = 1;
    t->data_type = type;
    t->n_dims = (size_t)ndim;
    t->dims = ta((size_t)ndim * sizeof(int64_t));
    if (ndim)
        memcpy(t->dims, dims, (size_t)ndim * sizeof(int64_t));
    size_t es = type == INT64_T ? 8 : 4;
    if (raw) {
        t->has_raw_data = 1;
        t->raw_data.len = n * es;
        t->raw_data.data = ta(n * es);
        memcpy(t->raw_data.data, data, n * es);
    } else if (type == INT64_T) {
        t->n_int64_data = n;
        t->int64_data = ta(n * 8);
        memcpy(t->int64_data, data, n * 8);
    } else {
        t->n_float_data = n;
        t->float_data = ta(n * 4);
        memcpy(t->float_data, data, n * 4);
    }
    return t;
}

static Onnx__TensorProto *gb_init_f(struct gb *b, const char *name, int ndim, const int64_t *dims,
                                    const float *data, size_t n, int raw)
{
    Onnx__TensorProto *t = tensor_proto(name, FLOAT_T, ndim, dims, data, n, raw);
    b->g.initializer[b->g.n_initializer++] = t;
    return t;
}

static void gb_init_i64(struct gb *b, const char *name, int ndim, const int64_t *dims,
                        const int64_t *data, size_t n)
{
    b->g.initializer[b->g.n_initializer++] = tensor_proto(name, INT64_T, ndim, dims, data, n, 1);
}

static uint8_t *gb_pack(struct gb *b, size_t *len)
{
    *len = onnx__model_proto__get_packed_size(&b->m);
    uint8_t *buf = ta(*len);
    onnx__model_proto__pack(&b->m, buf);
    return buf;
}

static int gb_load(struct gb *b, struct engine **eng, struct cerr *e)
{
    size_t len;
    uint8_t *buf = gb_pack(b, &len);
    struct engine_options opt = ENGINE_OPTIONS_DEFAULT;
    return engine_load_buffer(buf, len, &opt, eng, e);
}

static struct engine *must_load(struct gb *b)
{
    struct engine *eng = NULL;
    struct cerr e = {0};
    int rc = gb_load(b, &eng, &e);
    if (rc)
        fail_msg("load failed: %s", e.msg);
    return eng;
}

static struct tensor ften(const char *name, int ndim, const int64_t *dims, float *data)
{
    struct tensor t = {.name = name, .dtype = DT_FP32, .ndim = ndim, .data = data};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t.dims[i] = dims[i];
        n *= (size_t)dims[i];
    }
    t.nbytes = n * sizeof(float);
    return t;
}

static void expect_floats(const struct tensor *t, int ndim, const int64_t *dims,
                          const float *want, size_t n)
{
    assert_int_equal(t->dtype, DT_FP32);
    assert_int_equal(t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        assert_int_equal(t->dims[i], dims[i]);
    assert_int_equal(t->nbytes, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!(((const float *)t->data)[i] - want[i] < 1e-5f &&
              want[i] - ((const float *)t->data)[i] < 1e-5f))
            fail_msg("element %zu is %g, expected %g", i, (double)((const float *)t->data)[i],
                     (double)want[i]);
}

/* Runs a one-input one-output model and checks the output. */
static void run1(struct engine *eng, struct tensor in, int ndim, const int64_t *dims,
                 const float *want, size_t n)
{
    struct tensor out[4];
    struct cerr e = {0};
    assert_true(engine_num_outputs(eng) <= 4);
    if (engine_run(eng, &in, 1, out, &e))
        fail_msg("run failed: %s", e.msg);
    expect_floats(&out[0], ndim, dims, want, n);
    assert_string_equal(out[0].name, engine_output(eng, 0)->name);
    for (size_t i = 0; i < engine_num_outputs(eng); i++)
        tensor_release(&out[i]);
}

static const int64_t D1[] = {1}, D2[] = {2}, D3[] = {3}, D4[] = {4};
static const int64_t D22[] = {2, 2}, D23[] = {2, 3}, D32[] = {3, 2}, D13[] = {1, 3};
static const int64_t DN4[] = {-1, 4}, DN2[] = {-1, 2};

/* ---- ops ---- */

/*
 * An MLP as PyTorch exports it: Gemm(transB=1) -> Relu -> Gemm, weights stored
 * once as raw_data and once as float_data, run with batch 1 and batch 2.
 */
static void test_mlp(void **state)
{
    struct gb b;
    gb_init(&b, 17);
    gb_input(&b, "input", FLOAT_T, 2, DN4);
    gb_output(&b, "logits", FLOAT_T, 2, DN2);
    /* W1 [3,4] (out x in), b1 [3]; W2 [2,3], b2 [2]. */
    const float w1[] = {1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1};
    const float b1[] = {0, -10, 1};
    const float w2[] = {1, 1, 1, 0, 0, 2};
    const float b2[] = {0.5f, -1};
    const int64_t dw1[] = {3, 4}, dw2[] = {2, 3};
    gb_init_f(&b, "W1", 2, dw1, w1, 12, 1);
    gb_init_f(&b, "b1", 1, D3, b1, 3, 0);
    gb_init_f(&b, "W2", 2, dw2, w2, 6, 0);
    gb_init_f(&b, "b2", 1, D2, b2, 2, 1);
    /* Initializers listed as graph inputs (old exporters) are weights, not model inputs. */
    gb_input(&b, "W1", FLOAT_T, 2, dw1);
    Onnx__NodeProto *n = gb_node(&b, "Gemm", "fc1", "input,W1,b1", "h");
    attr_i(n, "transB", 1);
    gb_node(&b, "Relu", "relu", "h", "r");
    n = gb_node(&b, "Gemm", "fc2", "r,W2,b2", "logits");
    attr_i(n, "transB", 1);
    struct engine *eng = must_load(&b);
    assert_int_equal(engine_num_inputs(eng), 1);
    assert_string_equal(engine_input(eng, 0)->name, "input");
    assert_int_equal(engine_input(eng, 0)->dtype, DT_FP32);
    assert_int_equal(engine_input(eng, 0)->ndim, 2);
    assert_int_equal(engine_input(eng, 0)->dims[0], -1);
    assert_int_equal(engine_input(eng, 0)->dims[1], 4);
    assert_int_equal(engine_num_outputs(eng), 1);
    assert_string_equal(engine_output(eng, 0)->name, "logits");
    assert_int_equal(engine_output(eng, 0)->dims[1], 2);
    assert_int_equal(engine_opset(eng), 17);

    /*
     * x = [1,2,3,4]: h = [1, 2-10, 10+1] = [1,-8,11]; r = [1,0,11];
     * logits = [1+0+11+0.5, 0+0+22-1] = [12.5, 21].
     * x = [-1,5,0,0]: h = [-1, -5, 5]; r = [0,0,5]; logits = [5+0.5, 10-1] = [5.5, 9].
     */
    float x[] = {1, 2, 3, 4, -1, 5, 0, 0};
    const int64_t d14[] = {1, 4}, d24[] = {2, 4}, d12[] = {1, 2}, d22[] = {2, 2};
    run1(eng, ften("input", 2, d14, x), 2, d12, (float[]){12.5f, 21}, 2);
    run1(eng, ften("input", 2, d24, x), 2, d22, (float[]){12.5f, 21, 5.5f, 9}, 4);
    /* Batch 0 is a valid (empty) batch. */
    const int64_t d04[] = {0, 4}, d02[] = {0, 2};
    run1(eng, ften("input", 2, d04, x), 2, d02, NULL, 0);
    engine_free(eng);
}

/* Gemm with alpha, beta, transA and a scalar and a column C. */
static void test_gemm_attrs(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "a", FLOAT_T, 2, D32); /* stored [K=3, M=2], transA */
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    const float w[] = {1, 2, 3, 4, 5, 6}; /* B [3,2] */
    const float c[] = {10};
    gb_init_f(&b, "B", 2, D32, w, 6, 1);
    gb_init_f(&b, "C", 1, D1, c, 1, 1);
    Onnx__NodeProto *n = gb_node(&b, "Gemm", "g", "a,B,C", "y");
    attr_i(n, "transA", 1);
    attr_f(n, "alpha", 2.0f);
    attr_f(n, "beta", 0.5f);
    struct engine *eng = must_load(&b);
    /*
     * A^T = [[1,0,1],[0,1,1]] (a stored as [[1,0],[0,1],[1,1]]).
     * A^T B = [[1+5, 2+6], [3+5, 4+6]] = [[6,8],[8,10]];
     * y = 2 * that + 0.5 * 10 = [[17,21],[21,25]].
     */
    float a[] = {1, 0, 0, 1, 1, 1};
    run1(eng, ften("a", 2, D32, a), 2, D22, (float[]){17, 21, 21, 25}, 4);
    engine_free(eng);

    /* C of shape [2,1] broadcasts along columns; no C at all gives the bare product. */
    gb_init(&b, 13);
    gb_input(&b, "a", FLOAT_T, 2, D23);
    gb_output(&b, "y", FLOAT_T, 2, D22);
    gb_output(&b, "z", FLOAT_T, 2, D22);
    const int64_t d21[] = {2, 1};
    gb_init_f(&b, "B", 2, D32, w, 6, 1);
    gb_init_f(&b, "C", 2, d21, (float[]){100, 200}, 2, 1);
    gb_node(&b, "Gemm", "g1", "a,B,C", "y");
    gb_node(&b, "Gemm", "g2", "a,B", "z");
    eng = must_load(&b);
    /* a = [[1,0,1],[0,1,1]]: aB = [[6,8],[8,10]]. */
    struct tensor in = ften("a", 2, D23, (float[]){1, 0, 1, 0, 1, 1});
    struct tensor out[2];
    struct cerr e = {0};
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    expect_floats(&out[0], 2, D22, (float[]){106, 108, 208, 210}, 4);
    expect_floats(&out[1], 2, D22, (float[]){6, 8, 8, 10}, 4);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    engine_free(eng);
}

/* MatMul: 2-D, batched with a broadcast right operand, and 1-D operands. */
static void test_matmul(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    const int64_t d223[] = {2, 2, 3}, d132[] = {1, 3, 2};
    gb_input(&b, "a", FLOAT_T, 3, d223);
    gb_input(&b, "bb", FLOAT_T, 3, d132);
    gb_input(&b, "v", FLOAT_T, 1, D3);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_output(&b, "w", FLOAT_T, -1, NULL);
    gb_output(&b, "s", FLOAT_T, -1, NULL);
    gb_node(&b, "MatMul", "mm", "a,bb", "y");
    gb_node(&b, "MatMul", "mv", "a,v", "w");
    gb_node(&b, "MatMul", "vv", "v,v", "s");
    struct engine *eng = must_load(&b);
    float a[] = {1, 0, 0, 0, 1, 0, /* batch 0: first two rows of I3 */
                 1, 1, 1, 2, 0, 0};
    float bb[] = {1, 2, 3, 4, 5, 6};
    float v[] = {1, 2, 3};
    struct tensor in[3] = {ften("a", 3, d223, a), ften("bb", 3, d132, bb), ften("v", 1, D3, v)};
    struct tensor out[3];
    struct cerr e = {0};
    if (engine_run(eng, in, 3, out, &e))
        fail_msg("%s", e.msg);
    /* batch 0: rows [1,2],[3,4]; batch 1: [1+3+5, 2+4+6] = [9,12], [2,4]. */
    const int64_t d222[] = {2, 2, 2};
    expect_floats(&out[0], 3, d222, (float[]){1, 2, 3, 4, 9, 12, 2, 4}, 8);
    /* a @ v: [[1,2],[6,2]] with the vector axis dropped. */
    expect_floats(&out[1], 2, D22, (float[]){1, 2, 6, 2}, 4);
    /* v @ v = 14, a scalar. */
    expect_floats(&out[2], 0, NULL, (float[]){14}, 1);
    for (int i = 0; i < 3; i++)
        tensor_release(&out[i]);
    /* The declared shape [1,3,2] is fixed, so a wrong one is rejected before any kernel runs. */
    const int64_t d142[] = {1, 4, 2};
    in[1] = ften("bb", 3, d142, (float[]){0, 0, 0, 0, 0, 0, 0, 0});
    assert_int_equal(engine_run(eng, in, 3, out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "input 'bb' has shape [1,4,2], expected [1,3,2]"));
    engine_free(eng);
}

/* MatMul + Add of a 1-D bias (nn.Linear on 3-D input) is fused; results must not change. */
static void test_matmul_add_bias(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    const int64_t dx[] = {-1, 2, 3};
    gb_input(&b, "x", FLOAT_T, 3, dx);
    gb_output(&b, "y", FLOAT_T, 3, (const int64_t[]){-1, 2, 2});
    gb_init_f(&b, "W", 2, D32, (float[]){1, 0, 0, 1, 1, 1}, 6, 1);
    gb_init_f(&b, "bias", 1, D2, (float[]){0.5f, -0.5f}, 2, 1);
    gb_node(&b, "MatMul", "mm", "x,W", "t");
    gb_node(&b, "Add", "add", "bias,t", "y");
    struct engine *eng = must_load(&b);
    const int64_t d123[] = {1, 2, 3}, d122[] = {1, 2, 2};
    /* rows [1,2,3] -> [1+3, 2+3] = [4,5]; [0,0,1] -> [1,1]; plus bias. */
    run1(eng, ften("x", 3, d123, (float[]){1, 2, 3, 0, 0, 1}), 3, d122,
         (float[]){4.5f, 4.5f, 1.5f, 0.5f}, 4);
    engine_free(eng);
}

/* Add/Sub/Mul/Div with numpy broadcasting, and INT64 Add. */
static void test_binary_broadcast(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    const int64_t d21[] = {2, 1};
    gb_input(&b, "a", FLOAT_T, 2, D23);
    gb_input(&b, "c", FLOAT_T, 2, d21);
    gb_input(&b, "r", FLOAT_T, 2, D13);
    gb_input(&b, "i", INT64_T, 1, D2);
    gb_output(&b, "s1", FLOAT_T, -1, NULL);
    gb_output(&b, "s2", FLOAT_T, -1, NULL);
    gb_output(&b, "s3", FLOAT_T, -1, NULL);
    gb_output(&b, "s4", INT64_T, -1, NULL);
    gb_output(&b, "s5", FLOAT_T, -1, NULL);
    gb_init_f(&b, "row", 1, D3, (float[]){10, 20, 30}, 3, 1);
    gb_init_i64(&b, "k", 0, NULL, (int64_t[]){100}, 1);
    gb_node(&b, "Add", "add1", "a,row", "s1");
    gb_node(&b, "Sub", "sub", "c,r", "s2"); /* [2,1] - [1,3] -> [2,3] */
    gb_node(&b, "Mul", "mul", "a,c", "m");
    gb_node(&b, "Div", "div", "m,row", "s3");
    gb_node(&b, "Add", "addi", "i,k", "s4");
    gb_node(&b, "Mul", "mul2", "m,m", "s5"); /* m read twice by one node and by div */
    struct engine *eng = must_load(&b);
    float a[] = {1, 2, 3, 4, 5, 6}, c[] = {2, 3}, r[] = {1, 2, 3};
    int64_t iv[] = {1, -7};
    struct tensor in[4] = {ften("a", 2, D23, a), ften("c", 2, d21, c), ften("r", 2, D13, r),
                           ften("i", 1, D2, NULL)};
    in[3].dtype = DT_INT64;
    in[3].data = iv;
    in[3].nbytes = sizeof iv;
    struct tensor out[5];
    struct cerr e = {0};
    if (engine_run(eng, in, 4, out, &e))
        fail_msg("%s", e.msg);
    expect_floats(&out[0], 2, D23, (float[]){11, 22, 33, 14, 25, 36}, 6);
    expect_floats(&out[1], 2, D23, (float[]){1, 0, -1, 2, 1, 0}, 6);
    /* m = [[2,4,6],[12,15,18]]; m / row = [[.2,.2,.2],[1.2,.75,.6]]. */
    expect_floats(&out[2], 2, D23, (float[]){0.2f, 0.2f, 0.2f, 1.2f, 0.75f, 0.6f}, 6);
    assert_int_equal(out[3].dtype, DT_INT64);
    assert_int_equal(((int64_t *)out[3].data)[0], 101);
    assert_int_equal(((int64_t *)out[3].data)[1], 93);
    expect_floats(&out[4], 2, D23, (float[]){4, 16, 36, 144, 225, 324}, 6);
    for (int i = 0; i < 5; i++)
        tensor_release(&out[i]);
    /* Shapes that do not broadcast name the node and both shapes. */
    engine_free(eng);

    gb_init(&b, 14);
    gb_input(&b, "a", FLOAT_T, 2, (const int64_t[]){-1, 3});
    gb_input(&b, "z", FLOAT_T, 1, (const int64_t[]){-1});
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_node(&b, "Add", "plus", "a,z", "y");
    eng = must_load(&b);
    struct tensor bad[2] = {ften("a", 2, D23, a), ften("z", 1, D2, c)};
    assert_int_equal(engine_run(eng, bad, 2, out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "node 'plus' (Add): shapes [2,3] and [2] cannot be broadcast"));
    engine_free(eng);
}

static void test_unary(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    gb_input(&b, "x", FLOAT_T, 1, D4);
    gb_output(&b, "r", FLOAT_T, 1, D4);
    gb_output(&b, "s", FLOAT_T, 1, D4);
    gb_output(&b, "t", FLOAT_T, 1, D4);
    gb_node(&b, "Relu", "", "x", "r");
    gb_node(&b, "Sigmoid", "", "x", "s");
    gb_node(&b, "Tanh", "", "x", "t");
    struct engine *eng = must_load(&b);
    struct tensor in = ften("x", 1, D4, (float[]){-2, 0, 1.5f, -200});
    struct tensor out[3];
    struct cerr e = {0};
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    expect_floats(&out[0], 1, D4, (float[]){0, 0, 1.5f, 0}, 4);
    /* sigmoid(-2) = 0.11920292, sigmoid(1.5) = 0.81757448; huge negatives give 0, not NaN. */
    expect_floats(&out[1], 1, D4, (float[]){0.11920292f, 0.5f, 0.81757448f, 0}, 4);
    /* tanh(-2) = -0.96402758, tanh(1.5) = 0.90514825. */
    expect_floats(&out[2], 1, D4, (float[]){-0.96402758f, 0, 0.90514825f, -1}, 4);
    for (int i = 0; i < 3; i++)
        tensor_release(&out[i]);
    engine_free(eng);
}

/* Softmax over [1,2,2] at axis 1: one softmax of 4 before opset 13, per column after. */
static void test_softmax_opsets(void **state)
{
    const int64_t d122[] = {1, 2, 2};
    float x[] = {0, 1, 2, 3};
    for (int opset = 11; opset <= 13; opset += 2) {
        struct gb b;
        gb_init(&b, opset);
        gb_input(&b, "x", FLOAT_T, 3, d122);
        gb_output(&b, "y", FLOAT_T, 3, d122);
        Onnx__NodeProto *n = gb_node(&b, "Softmax", "sm", "x", "y");
        attr_i(n, "axis", 1);
        struct engine *eng = must_load(&b);
        if (opset == 11)
            /* e^k / (1+e+e^2+e^3) for k = 0..3 */
            run1(eng, ften("x", 3, d122, x), 3, d122,
                 (float[]){0.0320586f, 0.08714432f, 0.23688282f, 0.64391426f}, 4);
        else
            /* columns {0,2} and {1,3}: each 1/(1+e^2), e^2/(1+e^2) */
            run1(eng, ften("x", 3, d122, x), 3, d122,
                 (float[]){0.11920292f, 0.11920292f, 0.88079708f, 0.88079708f}, 4);
        engine_free(eng);
    }
    /* Opset 13 default axis is the last one. */
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "x", FLOAT_T, 2, D22);
    gb_output(&b, "y", FLOAT_T, 2, D22);
    gb_node(&b, "Softmax", "sm", "x", "y");
    struct engine *eng = must_load(&b);
    run1(eng, ften("x", 2, D22, (float[]){0, 0, 1000, 1000}), 2, D22,
         (float[]){0.5f, 0.5f, 0.5f, 0.5f}, 4);
    engine_free(eng);
}

/* Flatten, Reshape (0, -1) and Identity, chained so buffers get handed on. */
static void test_shape_ops(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    const int64_t d2x3[] = {-1, 2, 3};
    gb_input(&b, "x", FLOAT_T, 3, d2x3);
    gb_output(&b, "f0", FLOAT_T, -1, NULL);
    gb_output(&b, "f2", FLOAT_T, -1, NULL);
    gb_output(&b, "r", FLOAT_T, -1, NULL);
    gb_output(&b, "id", FLOAT_T, -1, NULL);
    gb_init_i64(&b, "shape", 1, D3, (int64_t[]){0, -1, 1}, 3);
    Onnx__NodeProto *n = gb_node(&b, "Flatten", "fl0", "x", "f0");
    attr_i(n, "axis", 0);
    n = gb_node(&b, "Flatten", "fl2", "x", "f2");
    attr_i(n, "axis", -1);
    gb_node(&b, "Relu", "relu", "x", "t");
    gb_node(&b, "Reshape", "rs", "t,shape", "r");
    gb_node(&b, "Relu", "relu2", "x", "u");
    gb_node(&b, "Identity", "idn", "u", "id");
    struct engine *eng = must_load(&b);
    const int64_t d123[] = {1, 2, 3};
    float x[] = {1, -2, 3, -4, 5, -6};
    struct tensor in = ften("x", 3, d123, x);
    struct tensor out[4];
    struct cerr e = {0};
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    const int64_t d16[] = {1, 6}, d23b[] = {2, 3}, d161[] = {1, 6, 1};
    expect_floats(&out[0], 2, d16, x, 6);
    expect_floats(&out[1], 2, d23b, x, 6);
    expect_floats(&out[2], 3, d161, (float[]){1, 0, 3, 0, 5, 0}, 6);
    expect_floats(&out[3], 3, d123, (float[]){1, 0, 3, 0, 5, 0}, 6);
    for (int i = 0; i < 4; i++)
        tensor_release(&out[i]);
    /* With batch 0, the -1 cannot be inferred (0 elements, known product 0). */
    const int64_t d023[] = {0, 2, 3};
    in = ften("x", 3, d023, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "node 'rs' (Reshape): cannot reshape [0,2,3] to [0,-1,1]"));
    engine_free(eng);

    /* allowzero keeps a 0 as a real zero-sized dimension instead of copying the input's. */
    for (int az = 0; az <= 1; az++) {
        gb_init(&b, 14);
        gb_input(&b, "x", FLOAT_T, 2, (const int64_t[]){-1, 3});
        gb_output(&b, "z", FLOAT_T, -1, NULL);
        gb_init_i64(&b, "zshape", 1, D2, (int64_t[]){0, 3}, 2);
        n = gb_node(&b, "Reshape", "rz", "x,zshape", "z");
        attr_i(n, "allowzero", az);
        eng = must_load(&b);
        in = ften("x", 2, D23, x);
        if (az) {
            assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
            assert_non_null(strstr(e.msg, "cannot reshape [2,3] to [0,3] (allowzero)"));
        } else {
            assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
            expect_floats(&out[0], 2, D23, x, 6);
            tensor_release(&out[0]);
        }
        in = ften("x", 2, (const int64_t[]){0, 3}, x);
        assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
        expect_floats(&out[0], 2, (const int64_t[]){0, 3}, NULL, 0);
        tensor_release(&out[0]);
        engine_free(eng);
    }
}

/* Constant in each attribute form, including one that is itself a graph output. */
static void test_constant(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "x", FLOAT_T, 1, D2);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_output(&b, "c", FLOAT_T, -1, NULL);
    gb_output(&b, "r", FLOAT_T, -1, NULL);
    Onnx__NodeProto *n = gb_node(&b, "Constant", "k", "", "k");
    Onnx__AttributeProto *a = attr(n, "value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    a->t = tensor_proto("", FLOAT_T, 1, D2, (float[]){10, 20}, 2, 0);
    n = gb_node(&b, "Constant", "s", "", "s");
    attr_f(n, "value_float", 0.5f);
    gb_node(&b, "Add", "a1", "x,k", "t");
    gb_node(&b, "Mul", "m1", "t,s", "y");
    n = gb_node(&b, "Constant", "c", "", "c");
    a = attr(n, "value_floats", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS);
    a->n_floats = 3;
    a->floats = ta(3 * sizeof(float));
    a->floats[0] = 1;
    a->floats[1] = 2;
    a->floats[2] = 3;
    n = gb_node(&b, "Constant", "shp", "", "shp");
    attr_ints(n, "value_ints", 2, (int64_t[]){2, 1});
    gb_node(&b, "Reshape", "rs", "x,shp", "r");
    struct engine *eng = must_load(&b);
    struct tensor in = ften("x", 1, D2, (float[]){1, 2});
    struct tensor out[3];
    struct cerr e = {0};
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    expect_floats(&out[0], 1, D2, (float[]){5.5f, 11}, 2);
    expect_floats(&out[1], 1, D3, (float[]){1, 2, 3}, 3);
    expect_floats(&out[2], 2, (const int64_t[]){2, 1}, (float[]){1, 2}, 2);
    for (int i = 0; i < 3; i++)
        tensor_release(&out[i]);
    engine_free(eng);
}

/* A value read by two nodes and also a graph output survives until the end. */
static void test_value_lifetimes(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    gb_input(&b, "x", FLOAT_T, 1, D2);
    gb_output(&b, "h", FLOAT_T, -1, NULL);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_output(&b, "h2", FLOAT_T, -1, NULL);
    gb_node(&b, "Relu", "r", "x", "h");
    gb_node(&b, "Identity", "i", "h", "h2"); /* h is an output: must be copied, not moved */
    gb_node(&b, "Add", "a", "h,h2", "y");
    gb_node(&b, "Sigmoid", "dead", "x", "unused"); /* read by nobody */
    struct engine *eng = must_load(&b);
    for (int rep = 0; rep < 3; rep++) {
        struct tensor in = ften("x", 1, D2, (float[]){-1, 3});
        struct tensor out[3];
        struct cerr e = {0};
        assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
        expect_floats(&out[0], 1, D2, (float[]){0, 3}, 2);
        expect_floats(&out[1], 1, D2, (float[]){0, 6}, 2);
        expect_floats(&out[2], 1, D2, (float[]){0, 3}, 2);
        assert_ptr_not_equal(out[0].data, out[2].data);
        for (int i = 0; i < 3; i++)
            tensor_release(&out[i]);
    }
    engine_free(eng);
}

/* Input bytes straight from a protobuf message need not be aligned. */
static void test_unaligned_input(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    gb_input(&b, "x", FLOAT_T, 1, D3);
    gb_output(&b, "y", FLOAT_T, 1, D3);
    gb_node(&b, "Relu", "r", "x", "y");
    struct engine *eng = must_load(&b);
    float v[] = {-1, 2, -3};
    char *raw = ta(sizeof v + 1);
    memcpy(raw + 1, v, sizeof v);
    run1(eng, ften("x", 1, D3, (float *)(void *)(raw + 1)), 1, D3, (float[]){0, 2, 0}, 3);
    engine_free(eng);
}

/* ---- errors ---- */

static void build_relu(struct gb *b)
{
    const int64_t d[] = {-1, 64};
    gb_init(b, 14);
    gb_input(b, "input", FLOAT_T, 2, d);
    gb_output(b, "y", FLOAT_T, 2, d);
    gb_node(b, "Relu", "r", "input", "y");
}

static void test_err_truncated(void **state)
{
    struct gb b;
    build_relu(&b);
    gb_init_f(&b, "w", 1, (const int64_t[]){64}, (float[64]){0}, 64, 1);
    size_t len;
    uint8_t *buf = gb_pack(&b, &len);
    struct engine *eng = NULL;
    struct cerr e = {0};
    assert_int_equal(engine_load_buffer(buf, len - 7, NULL, &eng, &e), CORRAL_EPARSE);
    assert_null(eng);
    assert_non_null(strstr(e.msg, "is not a valid ONNX model (protobuf parse failed)"));

    /* The same through a file names the file. */
    char path[] = "/tmp/corral-test-engine-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len / 2), (ssize_t)(len / 2));
    close(fd);
    assert_int_equal(engine_load_file(path, NULL, &eng, &e), CORRAL_EPARSE);
    char want[128];
    snprintf(want, sizeof want, "%s is not a valid ONNX model (protobuf parse failed)", path);
    assert_string_equal(e.msg, want);
    unlink(path);
    assert_int_equal(engine_load_file(path, NULL, &eng, &e), CORRAL_ENOTFOUND);
    assert_non_null(strstr(e.msg, path));
}

static void test_err_unsupported_op(void **state)
{
    struct gb b;
    build_relu(&b);
    gb_node(&b, "LSTM", "conv1", "y,w", "z");
    struct engine *eng = NULL;
    struct cerr e = {0};
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_null(eng);
    assert_non_null(strstr(e.msg, "unsupported op 'LSTM' in node 'conv1' (LSTM)"));

    build_relu(&b);
    Onnx__NodeProto *n = gb_node(&b, "Relu", "fancy", "y", "z");
    n->domain = ts("com.example");
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "'Relu' from domain 'com.example'"));
    assert_non_null(strstr(e.msg, "node 'fancy'"));
    assert_true(engine_op_supported("", "Gemm"));
    assert_true(engine_op_supported("ai.onnx", "MatMul"));
    assert_true(engine_op_supported(NULL, "Conv"));
    assert_false(engine_op_supported(NULL, "LSTM"));
    assert_false(engine_op_supported("com.example", "Relu"));
}

static void test_err_missing_initializer(void **state)
{
    struct gb b;
    build_relu(&b);
    gb_node(&b, "Gemm", "fc1", "y,W,b", "z");
    struct engine *eng = NULL;
    struct cerr e = {0};
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "node 'fc1' (Gemm): input 'W' is not a graph input, an "
                                  "initializer or the output of an earlier node"));

    /* A value produced later means the nodes are out of order. */
    build_relu(&b);
    gb_node(&b, "Relu", "first", "late", "z");
    gb_node(&b, "Relu", "second", "y", "late");
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "node 'first' (Relu) uses 'late' before node 'second' (Relu) "
                                  "produces it"));
}

static void test_err_bad_initializers(void **state)
{
    struct gb b;
    struct engine *eng = NULL;
    struct cerr e = {0};
    /* raw_data one float short of its dims. */
    build_relu(&b);
    Onnx__TensorProto *t = gb_init_f(&b, "W", 2, D22, (float[]){1, 2, 3, 4}, 4, 1);
    t->raw_data.len -= 4;
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "initializer 'W' has 12 bytes of raw_data, expected 16 for "
                                  "FP32 of shape [2,2]"));
    /* float_data with the wrong count. */
    build_relu(&b);
    t = gb_init_f(&b, "W", 2, D22, (float[]){1, 2, 3, 4}, 4, 0);
    t->n_float_data = 3;
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "initializer 'W' has 3 values in float_data, expected 4"));
    /* External data. */
    build_relu(&b);
    t = gb_init_f(&b, "W", 2, D22, (float[]){1, 2, 3, 4}, 4, 1);
    t->has_data_location = 1;
    t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "initializer 'W' stores its data in an external file"));
    /* Unsupported data type. */
    build_relu(&b);
    t = gb_init_f(&b, "S", 1, D1, (float[]){0}, 1, 1);
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__COMPLEX64;
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "initializer 'S' has data type COMPLEX64"));
    /* An op given a datatype it does not implement. */
    gb_init(&b, 14);
    gb_input(&b, "q", ONNX__TENSOR_PROTO__DATA_TYPE__UINT8, 1, D2);
    gb_output(&b, "y", ONNX__TENSOR_PROTO__DATA_TYPE__UINT8, 1, D2);
    gb_node(&b, "Relu", "r8", "q", "y");
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "node 'r8' (Relu): input 'q' is UINT8"));
    /* A graph output nobody produces. */
    build_relu(&b);
    gb_output(&b, "ghost", FLOAT_T, -1, NULL);
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "graph output 'ghost' is not produced"));
}

static void test_err_run_inputs(void **state)
{
    struct gb b;
    build_relu(&b);
    struct engine *eng = must_load(&b);
    float x[2 * 64] = {0};
    const int64_t ok[] = {2, 64}, bad[] = {2, 63}, rank3[] = {1, 2, 64};
    struct tensor out[1];
    struct cerr e = {0};

    struct tensor in = ften("x", 2, ok, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "unknown input 'x' (model inputs: input)");

    in = ften("input", 2, ok, x);
    in.dtype = DT_INT64;
    in.nbytes = 2 * 64 * 8;
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "input 'input' has datatype INT64, expected FP32");

    in = ften("input", 2, bad, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "input 'input' has shape [2,63], expected [-1,64]");

    in = ften("input", 3, rank3, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "input 'input' has shape [1,2,64], expected [-1,64]");

    assert_int_equal(engine_run(eng, NULL, 0, out, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "missing input 'input' (model inputs: input)");

    struct tensor two[2] = {ften("input", 2, ok, x), ften("input", 2, ok, x)};
    assert_int_equal(engine_run(eng, two, 2, out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "'input' is given more than once"));

    in = ften("input", 2, ok, x);
    in.nbytes -= 4;
    assert_int_equal(engine_run(eng, &in, 1, out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "input 'input' has 508 bytes of data, expected 512"));

    /* The engine still runs after rejected requests. */
    in = ften("input", 2, ok, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    tensor_release(&out[0]);
    engine_free(eng);
}

/* ---- TensorProto files ---- */

static void test_read_tensor_pb(void **state)
{
    char path[] = "/tmp/corral-test-tensor-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    Onnx__TensorProto *t = tensor_proto("input", FLOAT_T, 2, D23, (float[]){1, 2, 3, 4, 5, 6}, 6, 1);
    size_t len = onnx__tensor_proto__get_packed_size(t);
    uint8_t *buf = ta(len);
    onnx__tensor_proto__pack(t, buf);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);

    struct tensor out;
    char *name = NULL;
    struct cerr e = {0};
    assert_int_equal(engine_read_tensor_pb(path, &out, &name, &e), 0);
    assert_string_equal(name, "input");
    assert_ptr_equal(out.name, name);
    expect_floats(&out, 2, D23, (float[]){1, 2, 3, 4, 5, 6}, 6);
    tensor_release(&out);
    free(name);

    /* int64_data typed field. */
    t = tensor_proto("", INT64_T, 1, D3, (int64_t[]){-1, 0, 1LL << 40}, 3, 0);
    len = onnx__tensor_proto__get_packed_size(t);
    buf = ta(len);
    onnx__tensor_proto__pack(t, buf);
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
    assert_int_equal(engine_read_tensor_pb(path, &out, &name, &e), 0);
    assert_string_equal(name, "");
    assert_int_equal(out.dtype, DT_INT64);
    assert_int_equal(((int64_t *)out.data)[2], 1LL << 40);
    tensor_release(&out);
    free(name);

    /* Truncated: dims promise more bytes than the (cut) raw_data holds. */
    t = tensor_proto("x", FLOAT_T, 2, D23, (float[]){1, 2, 3, 4, 5, 6}, 6, 1);
    t->raw_data.len = 20;
    len = onnx__tensor_proto__get_packed_size(t);
    buf = ta(len);
    onnx__tensor_proto__pack(t, buf);
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
    assert_int_equal(engine_read_tensor_pb(path, &out, &name, &e), CORRAL_EINVAL);
    assert_null(name);
    assert_non_null(strstr(e.msg, "has 20 bytes of raw_data, expected 24"));
    /* Garbage that is not a protobuf. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "\xff\xff\xff", 3), 3);
    close(fd);
    assert_int_equal(engine_read_tensor_pb(path, &out, &name, &e), CORRAL_EPARSE);
    unlink(path);
}


/* ---- plans, fusions and the CPU backend's oneDNN primitives ---- */

/* Direct 3x3 convolution, stride 1, pad 1, for checking the fused oneDNN path. */
static void ref_conv3(const float *x, int C, int H, int W, const float *w, const float *b,
                      int M, float *y)
{
    for (int m = 0; m < M; m++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                float acc = b ? b[m] : 0.0f;
                for (int c = 0; c < C; c++)
                    for (int ki = 0; ki < 3; ki++)
                        for (int kj = 0; kj < 3; kj++) {
                            int ii = i + ki - 1, jj = j + kj - 1;
                            if (ii < 0 || jj < 0 || ii >= H || jj >= W)
                                continue;
                            acc += x[(c * H + ii) * W + jj] * w[((m * C + c) * 3 + ki) * 3 + kj];
                        }
                y[(m * H + i) * W + j] = acc;
            }
}

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/*
 * A residual block as torchvision writes it: conv -> BN -> relu -> conv ->
 * BN, plus the block input, then relu. Load folds both BNs into the convs;
 * the plan fuses the first relu and the residual add + relu into conv
 * epilogues, leaving two primitives. The result must match a direct
 * computation with the BN applied by hand.
 */
static void test_residual_block(void **state)
{
    enum { C = 4, H = 5, W = 6 };
    struct gb b;
    gb_init(&b, 17);
    const int64_t dx[] = {-1, C, H, W}, dw[] = {C, C, 3, 3}, dc[] = {C};
    gb_input(&b, "x", FLOAT_T, 4, dx);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    float w1[C * C * 9], w2[C * C * 9], bn[4][C], x[2 * C * H * W];
    unsigned seed = 7;
    for (int i = 0; i < C * C * 9; i++) {
        w1[i] = frand(&seed) * 0.3f;
        w2[i] = frand(&seed) * 0.3f;
    }
    for (int c = 0; c < C; c++) {
        bn[0][c] = 1.0f + 0.1f * c;  /* scale */
        bn[1][c] = 0.05f * c;        /* bias */
        bn[2][c] = 0.02f * c - 0.03f;  /* mean */
        bn[3][c] = 0.5f + 0.25f * c; /* var */
    }
    for (int i = 0; i < 2 * C * H * W; i++)
        x[i] = frand(&seed);
    gb_init_f(&b, "w1", 4, dw, w1, C * C * 9, 1);
    gb_init_f(&b, "w2", 4, dw, w2, C * C * 9, 1);
    gb_init_f(&b, "s", 1, dc, bn[0], C, 1);
    gb_init_f(&b, "bb", 1, dc, bn[1], C, 1);
    gb_init_f(&b, "m", 1, dc, bn[2], C, 1);
    gb_init_f(&b, "v", 1, dc, bn[3], C, 1);
    Onnx__NodeProto *n = gb_node(&b, "Conv", "c1", "x,w1", "c1o");
    attr_ints(n, "pads", 4, (const int64_t[]){1, 1, 1, 1});
    attr_ints(n, "kernel_shape", 2, (const int64_t[]){3, 3});
    gb_node(&b, "BatchNormalization", "bn1", "c1o,s,bb,m,v", "b1o");
    gb_node(&b, "Relu", "r1", "b1o", "r1o");
    n = gb_node(&b, "Conv", "c2", "r1o,w2", "c2o");
    attr_ints(n, "pads", 4, (const int64_t[]){1, 1, 1, 1});
    gb_node(&b, "BatchNormalization", "bn2", "c2o,s,bb,m,v", "b2o");
    gb_node(&b, "Add", "add", "b2o,x", "sum");
    gb_node(&b, "Relu", "r2", "sum", "y");
    struct engine *eng = must_load(&b);

    /* Expected: BN(y) = (y - m) / sqrt(v + eps) * s + bb, per channel. */
    float want[2 * C * H * W], t1[C * H * W], t2[C * H * W];
    for (int nb = 0; nb < 2; nb++) {
        const float *xn = x + nb * C * H * W;
        ref_conv3(xn, C, H, W, w1, NULL, C, t1);
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) {
                float *p = &t1[c * H * W + i];
                *p = (*p - bn[2][c]) / sqrtf(bn[3][c] + 1e-5f) * bn[0][c] + bn[1][c];
                *p = *p > 0 ? *p : 0;
            }
        ref_conv3(t1, C, H, W, w2, NULL, C, t2);
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) {
                float v = (t2[c * H * W + i] - bn[2][c]) / sqrtf(bn[3][c] + 1e-5f) * bn[0][c] +
                          bn[1][c] + xn[c * H * W + i];
                want[nb * C * H * W + c * H * W + i] = v > 0 ? v : 0;
            }
    }
    struct cerr e = {0};
    struct tensor out[1];
    const int64_t d2[] = {2, C, H, W};
    struct tensor in = ften("x", 4, d2, x);
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    for (int i = 0; i < 2 * C * H * W; i++)
        assert_float_equal(((float *)out[0].data)[i], want[i], 1e-4);
    tensor_release(&out[0]);
    struct engine_plan_info pi;
    assert_int_equal(engine_plan_count(eng), 1);
    assert_int_equal(engine_plan_info(eng, 0, &pi), 0);
    assert_int_equal(pi.n_steps, 2); /* two convs, everything else folded or fused */
    assert_true(pi.arena_bytes > 0);
    assert_int_equal(pi.inputs[0].dims[0], 2);
    assert_int_equal(pi.outputs[0].dims[1], C);
    engine_free(eng);
}

/* Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write x.view(x.size(0), -1). */
static struct engine *build_view_model(struct gb *b)
{
    gb_init(b, 13);
    const int64_t dx[] = {-1, 2, 3};
    gb_input(b, "x", FLOAT_T, 3, dx);
    gb_output(b, "y", FLOAT_T, -1, NULL);
    gb_init_i64(b, "zero", 0, NULL, (int64_t[]){0}, 1);
    gb_init_i64(b, "ax0", 1, D1, (int64_t[]){0}, 1);
    gb_init_i64(b, "minus1", 1, D1, (int64_t[]){-1}, 1);
    gb_node(b, "Shape", "shape", "x", "s");
    gb_node(b, "Gather", "g", "s,zero", "n");
    gb_node(b, "Unsqueeze", "u", "n,ax0", "n1");
    Onnx__NodeProto *nd = gb_node(b, "Concat", "cat", "n1,minus1", "shp");
    attr_i(nd, "axis", 0);
    gb_node(b, "Relu", "relu", "x", "rx");
    gb_node(b, "Reshape", "rs", "rx,shp", "y");
    return must_load(b);
}

static void test_plans(void **state)
{
    struct gb b;
    struct engine *eng = build_view_model(&b);
    struct cerr e = {0};
    float x[4 * 6];
    for (int i = 0; i < 24; i++)
        x[i] = (float)(i % 5) - 2.0f;
    /* engine_prepare builds and pins a plan from shapes alone. */
    const int64_t d2[] = {2, 2, 3};
    struct tensor shp = {.name = "x", .dtype = DT_FP32, .ndim = 3};
    memcpy(shp.dims, d2, sizeof d2);
    struct engine_plan_info pi;
    assert_int_equal(engine_prepare(eng, &shp, 1, &pi, &e), 0);
    assert_true(pi.pinned);
    assert_int_equal(pi.n_steps, 2); /* the shape arithmetic is folded away */
    assert_int_equal(pi.outputs[0].ndim, 2);
    assert_int_equal(pi.outputs[0].dims[0], 2);
    assert_int_equal(pi.outputs[0].dims[1], 6);
    assert_int_equal(engine_plan_count(eng), 1);

    /* A run with the prepared shapes reuses it; run_into writes the caller's buffer. */
    float yb[12];
    struct tensor in = ften("x", 3, d2, x);
    struct tensor out = {.dtype = DT_FP32, .ndim = 2, .dims = {2, 6}, .data = yb,
                         .nbytes = sizeof yb};
    assert_int_equal(engine_run_into(eng, &in, 1, &out, &e), 0);
    for (int i = 0; i < 12; i++)
        assert_float_equal(yb[i], x[i] > 0 ? x[i] : 0, 0);
    assert_int_equal(engine_plan_count(eng), 1);
    out.dims[1] = 5;
    assert_int_equal(engine_run_into(eng, &in, 1, &out, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "the plan produces FP32 [2,6]"));

    /* Other batch sizes get their own plans, bounded by the cache; the pinned one stays. */
    engine_set_max_plans(eng, 2);
    for (int bsz = 1; bsz <= 4; bsz++) {
        const int64_t d[] = {bsz, 2, 3};
        struct tensor o[1];
        in = ften("x", 3, d, x);
        assert_int_equal(engine_run(eng, &in, 1, o, &e), 0);
        assert_int_equal(o[0].dims[0], bsz);
        assert_int_equal(o[0].dims[1], 6);
        tensor_release(&o[0]);
    }
    assert_int_equal(engine_plan_count(eng), 2);
    int pinned = 0;
    for (size_t i = 0; i < engine_plan_count(eng); i++) {
        assert_int_equal(engine_plan_info(eng, i, &pi), 0);
        if (pi.pinned) {
            pinned++;
            assert_int_equal(pi.inputs[0].dims[0], 2);
        }
    }
    assert_int_equal(pinned, 1);
    assert_int_not_equal(engine_plan_info(eng, 5, &pi), 0);
    /* Shape-only prepare still checks names and ranks. */
    shp.ndim = 2;
    assert_int_equal(engine_prepare(eng, &shp, 1, NULL, &e), CORRAL_EINVAL);
    engine_free(eng);
}

static void test_devices(void **state)
{
    struct gb b;
    build_relu(&b);
    size_t len;
    uint8_t *buf = gb_pack(&b, &len);
    struct engine_options o = ENGINE_OPTIONS_DEFAULT;
    struct engine *eng = NULL;
    struct cerr e = {0};
    o.device = "cuda:3";
#ifndef CORRAL_HAVE_CUDA
    assert_int_equal(engine_load_buffer(buf, len, &o, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "device cuda:3 requested but this build has no CUDA backend"));
#endif
    o.device = "tpu";
    assert_int_equal(engine_load_buffer(buf, len, &o, &eng, &e), CORRAL_EINVAL);
    assert_null(eng);
    o.device = "cpu";
    o.threads = 0; /* the CPUs this process may use */
    assert_int_equal(engine_load_buffer(buf, len, &o, &eng, &e), 0);
    assert_true(engine_threads(eng) >= 1);
    assert_string_equal(engine_backend_name(eng), "cpu");
    engine_free(eng);
}

/* Pooling and a depthwise conv with Clip (ReLU6) fused, against hand values. */
static void test_pool_depthwise(void **state)
{
    struct gb b;
    gb_init(&b, 17);
    const int64_t dx[] = {1, 2, 4, 4}, dw[] = {2, 1, 1, 1};
    gb_input(&b, "x", FLOAT_T, 4, dx);
    gb_output(&b, "mp", FLOAT_T, -1, NULL);
    gb_output(&b, "ap", FLOAT_T, -1, NULL);
    gb_output(&b, "dw", FLOAT_T, -1, NULL);
    gb_output(&b, "gp", FLOAT_T, -1, NULL);
    gb_init_f(&b, "w", 4, dw, (float[]){2.0f, -1.0f}, 2, 1);
    gb_init_f(&b, "lo", 0, NULL, (float[]){0.0f}, 1, 1);
    gb_init_f(&b, "hi", 0, NULL, (float[]){6.0f}, 1, 1);
    Onnx__NodeProto *n = gb_node(&b, "MaxPool", "mp", "x", "mp");
    attr_ints(n, "kernel_shape", 2, (const int64_t[]){2, 2});
    attr_ints(n, "strides", 2, (const int64_t[]){2, 2});
    n = gb_node(&b, "AveragePool", "ap", "x", "ap");
    attr_ints(n, "kernel_shape", 2, (const int64_t[]){3, 3});
    attr_ints(n, "strides", 2, (const int64_t[]){2, 2});
    attr_i(n, "ceil_mode", 1);
    n = gb_node(&b, "Conv", "dwc", "x,w", "c");
    attr_i(n, "group", 2);
    gb_node(&b, "Clip", "relu6", "c,lo,hi", "dw");
    gb_node(&b, "GlobalAveragePool", "gap", "x", "gp");
    struct engine *eng = must_load(&b);
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)i;
    struct tensor in = ften("x", 4, dx, x), out[4];
    struct cerr e = {0};
    assert_int_equal(engine_run(eng, &in, 1, out, &e), 0);
    expect_floats(&out[0], 4, (const int64_t[]){1, 2, 2, 2},
                  (float[]){5, 7, 13, 15, 21, 23, 29, 31}, 8);
    /* ceil_mode: 2x2 outputs; windows at the edge average only what is inside. */
    expect_floats(&out[1], 4, (const int64_t[]){1, 2, 2, 2},
                  (float[]){5, 6.5f, 11, 12.5f, 21, 22.5f, 27, 28.5f}, 8);
    float dwant[32];
    for (int i = 0; i < 32; i++) {
        float v = i < 16 ? 2.0f * i : -1.0f * i;
        dwant[i] = v < 0 ? 0 : (v > 6 ? 6 : v);
    }
    expect_floats(&out[2], 4, dx, dwant, 32);
    expect_floats(&out[3], 4, (const int64_t[]){1, 2, 1, 1}, (float[]){7.5f, 23.5f}, 2);
    for (int i = 0; i < 4; i++)
        tensor_release(&out[i]);
    engine_free(eng);
}

/* ---- inputs whose values set shapes (value_keyed) ---- */

static struct tensor iten(const char *name, int ndim, const int64_t *dims, int64_t *data)
{
    struct tensor t = {.name = name, .dtype = DT_INT64, .ndim = ndim, .data = data};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t.dims[i] = dims[i];
        n *= (size_t)dims[i];
    }
    t.nbytes = n * sizeof(int64_t);
    return t;
}

/* A 1-D INT64 tensor of n values, for shape-like inputs. */
static struct tensor ivec(const char *name, int64_t *data, int64_t n)
{
    return iten(name, 1, &n, data);
}

static void expect_ints(const struct tensor *t, int ndim, const int64_t *dims,
                        const int64_t *want, size_t n)
{
    assert_int_equal(t->dtype, DT_INT64);
    assert_int_equal(t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        assert_int_equal(t->dims[i], dims[i]);
    assert_int_equal(t->nbytes, n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(((const int64_t *)t->data)[i], want[i]);
}

/* Runs, expecting failure with `code` and `msg` in the message; no plan may be kept. */
static void expect_run_error(struct engine *eng, struct tensor *in, size_t n, int code,
                             const char *msg)
{
    struct tensor out[4];
    struct cerr e = {0};
    size_t plans = engine_plan_count(eng);
    int rc = engine_run(eng, in, n, out, &e);
    if (rc != code || !strstr(e.msg, msg))
        fail_msg("expected %d with '%s', got %d: %s", code, msg, rc, e.msg);
    assert_int_equal(engine_plan_count(eng), plans);
}

static const int64_t DV[] = {-1}; /* a 1-D input of any length */

/*
 * Reshape whose shape is a model input: each shape value gets its own plan,
 * built on first use and reused after; bad values are errors that keep no
 * plan; the size of such an input is bounded; engine_prepare needs its data.
 */
static void test_keyed_reshape(void **state)
{
    struct gb b;
    gb_init(&b, 14);
    gb_input(&b, "x", FLOAT_T, 2, D23);
    gb_input(&b, "shape", INT64_T, 1, DV);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_node(&b, "Reshape", "rs", "x,shape", "y");
    struct engine *eng = must_load(&b);
    assert_false(engine_input(eng, 0)->value_keyed);
    assert_true(engine_input(eng, 1)->value_keyed);
    float x[] = {1, 2, 3, 4, 5, 6};
    struct tensor in[2], out[1];
    struct cerr e = {0};
    int64_t s32[] = {3, 2}, s6[] = {6}, s_1_3[] = {-1, 3};
    in[0] = ften("x", 2, D23, x);
    in[1] = ivec("shape", s32, 2);
    assert_int_equal(engine_run(eng, in, 2, out, &e), 0);
    expect_floats(&out[0], 2, D32, x, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 1);
    in[1] = ivec("shape", s6, 1);
    assert_int_equal(engine_run(eng, in, 2, out, &e), 0);
    expect_floats(&out[0], 1, (const int64_t[]){6}, x, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 2);
    /* Same length as the first value, other values: a third plan, not the first one reused. */
    in[1] = ivec("shape", s_1_3, 2);
    assert_int_equal(engine_run(eng, in, 2, out, &e), 0);
    expect_floats(&out[0], 2, D23, x, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 3);
    /* The first value again: its plan is found, nothing is built. */
    in[1] = ivec("shape", s32, 2);
    assert_int_equal(engine_run(eng, in, 2, out, &e), 0);
    expect_floats(&out[0], 2, D32, x, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 3);

    /* Bad values: a negative dimension, a size that does not match, two -1s. */
    int64_t neg[] = {-2, -3}, wrong[] = {4, 2}, two[] = {-1, -1};
    in[1] = ivec("shape", neg, 2);
    expect_run_error(eng, in, 2, CORRAL_EINVAL, "node 'rs' (Reshape): cannot reshape [2,3] to "
                     "[-2,-3]");
    in[1] = ivec("shape", wrong, 2);
    expect_run_error(eng, in, 2, CORRAL_EINVAL, "cannot reshape [2,3] to [4,2]");
    in[1] = ivec("shape", two, 2);
    expect_run_error(eng, in, 2, CORRAL_EINVAL, "shape [2] = (-1,-1)");
    /* More values than a plan is keyed on: unsupported, and said so. */
    int64_t big[ENGINE_MAX_VALUE_KEY + 1];
    for (int i = 0; i <= ENGINE_MAX_VALUE_KEY; i++)
        big[i] = 1;
    in[1] = ivec("shape", big, ENGINE_MAX_VALUE_KEY + 1);
    expect_run_error(eng, in, 2, CORRAL_EUNSUPP, "node 'rs' (Reshape) reads its values to set "
                     "shapes, and the engine plans for such values only up to 64 elements");

    /* engine_prepare: shapes alone cannot pick the plan; with the data it pins one. */
    struct tensor shp[2];
    shp[0] = (struct tensor){.name = "x", .dtype = DT_FP32, .ndim = 2, .dims = {2, 3}};
    shp[1] = (struct tensor){.name = "shape", .dtype = DT_INT64, .ndim = 1, .dims = {2}};
    assert_int_equal(engine_prepare(eng, shp, 2, NULL, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "input 'shape' sets shapes inside the model"));
    shp[1] = ivec("shape", (int64_t[]){1, 6}, 2);
    struct engine_plan_info pi;
    assert_int_equal(engine_prepare(eng, shp, 2, &pi, &e), 0);
    assert_true(pi.pinned);
    assert_int_equal(pi.outputs[0].ndim, 2);
    assert_int_equal(pi.outputs[0].dims[0], 1);
    assert_int_equal(pi.outputs[0].dims[1], 6);
    assert_int_equal(engine_plan_count(eng), 4);
    engine_free(eng);

    /* An input declared too large to key on is refused at load. */
    gb_init(&b, 14);
    gb_input(&b, "x", FLOAT_T, 2, D23);
    gb_input(&b, "shape", INT64_T, 1, (const int64_t[]){100});
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_node(&b, "Reshape", "rs", "x,shape", "y");
    eng = NULL;
    assert_int_equal(gb_load(&b, &eng, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "model input 'shape' (INT64) sets shapes"));
    assert_null(eng);
}

/*
 * Slice with starts/ends/axes/steps as model inputs, including values that
 * come out of arithmetic on an input (Add), negative steps, out-of-range
 * starts (clamped, as ONNX says) and steps too large to multiply.
 */
static void test_keyed_slice(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    const int64_t d24[] = {2, 4};
    gb_input(&b, "x", FLOAT_T, 2, d24);
    gb_input(&b, "starts", INT64_T, 1, DV);
    gb_input(&b, "ends", INT64_T, 1, DV);
    gb_input(&b, "axes", INT64_T, 1, DV);
    gb_input(&b, "steps", INT64_T, 1, DV);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_init_i64(&b, "zero", 0, NULL, (int64_t[]){0}, 1);
    gb_node(&b, "Add", "add", "ends,zero", "ends2"); /* computed from an input, still keyed */
    gb_node(&b, "Slice", "sl", "x,starts,ends2,axes,steps", "y");
    struct engine *eng = must_load(&b);
    for (size_t k = 1; k < 5; k++)
        assert_true(engine_input(eng, k)->value_keyed);
    float x[] = {0, 1, 2, 3, 4, 5, 6, 7};
    struct tensor in[5], out[1];
    struct cerr e = {0};
    int64_t st1[] = {0, 1}, en1[] = {2, 3}, ax[] = {0, 1}, sp1[] = {1, 1};
    in[0] = ften("x", 2, d24, x);
    in[1] = ivec("starts", st1, 2);
    in[2] = ivec("ends", en1, 2);
    in[3] = ivec("axes", ax, 2);
    in[4] = ivec("steps", sp1, 2);
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_floats(&out[0], 2, D22, (float[]){1, 2, 5, 6}, 4);
    tensor_release(&out[0]);
    /* Row 1, columns 3, 2, 1: a negative step. */
    int64_t st2[] = {1, 3}, en2[] = {2, 0}, sp2[] = {1, -1};
    in[1] = ivec("starts", st2, 2);
    in[2] = ivec("ends", en2, 2);
    in[4] = ivec("steps", sp2, 2);
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){1, 3}, (float[]){7, 6, 5}, 3);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 2);
    /* A start past the end is clamped: an empty result, not an error. */
    int64_t st3[] = {10, 0}, en3[] = {20, 4};
    in[1] = ivec("starts", st3, 2);
    in[2] = ivec("ends", en3, 2);
    in[4] = ivec("steps", sp1, 2);
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){0, 4}, NULL, 0);
    tensor_release(&out[0]);
    /* The most negative step selects the start alone (and must not overflow). */
    int64_t st4[] = {0, 3}, en4[] = {2, INT64_MIN}, sp4[] = {1, INT64_MIN};
    in[1] = ivec("starts", st4, 2);
    in[2] = ivec("ends", en4, 2);
    in[4] = ivec("steps", sp4, 2);
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){2, 1}, (float[]){3, 7}, 2);
    tensor_release(&out[0]);
    int64_t sp5[] = {INT64_MAX, 1};
    in[1] = ivec("starts", st1, 2);
    in[2] = ivec("ends", en1, 2);
    in[4] = ivec("steps", sp5, 2);
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){1, 2}, (float[]){1, 2}, 2);
    tensor_release(&out[0]);
    /* Errors: a zero step, an axis out of range, lengths that disagree. */
    int64_t sp0[] = {1, 0}, axbad[] = {0, 2};
    in[4] = ivec("steps", sp0, 2);
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "node 'sl' (Slice): step 0");
    in[4] = ivec("steps", sp1, 2);
    in[3] = ivec("axes", axbad, 2);
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "axis 2 is out of range for a 2-D input");
    in[3] = ivec("axes", ax, 2);
    in[2] = ivec("ends", en1, 1);
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "starts and ends must have the same length");
    engine_free(eng);
}

/* Expand and Tile with the target shape / repeats as model inputs. */
static void test_keyed_expand_tile(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "x", FLOAT_T, 2, (const int64_t[]){3, 1});
    gb_input(&b, "v", FLOAT_T, 1, D2);
    gb_input(&b, "shape", INT64_T, 1, DV);
    gb_input(&b, "reps", INT64_T, 1, D1);
    gb_output(&b, "ex", FLOAT_T, -1, NULL);
    gb_output(&b, "ti", FLOAT_T, -1, NULL);
    gb_node(&b, "Expand", "ex", "x,shape", "ex");
    gb_node(&b, "Tile", "ti", "v,reps", "ti");
    struct engine *eng = must_load(&b);
    float x[] = {1, 2, 3}, v[] = {7, 8};
    struct tensor in[4], out[2];
    struct cerr e = {0};
    int64_t sh1[] = {3, 4}, sh2[] = {2, 1, 1}, r3[] = {3}, r0[] = {0};
    in[0] = ften("x", 2, (const int64_t[]){3, 1}, x);
    in[1] = ften("v", 1, D2, v);
    in[2] = ivec("shape", sh1, 2);
    in[3] = ivec("reps", r3, 1);
    assert_int_equal(engine_run(eng, in, 4, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){3, 4}, (float[]){1, 1, 1, 1, 2, 2, 2, 2, 3, 3,
                                                                  3, 3}, 12);
    expect_floats(&out[1], 1, (const int64_t[]){6}, (float[]){7, 8, 7, 8, 7, 8}, 6);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    in[2] = ivec("shape", sh2, 3);
    in[3] = ivec("reps", r0, 1);
    assert_int_equal(engine_run(eng, in, 4, out, &e), 0);
    expect_floats(&out[0], 3, (const int64_t[]){2, 3, 1}, (float[]){1, 2, 3, 1, 2, 3}, 6);
    expect_floats(&out[1], 1, (const int64_t[]){0}, NULL, 0);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    assert_int_equal(engine_plan_count(eng), 2);
    /* A negative target dimension, shapes that cannot broadcast, a negative repeat, and
     * repeats whose product no tensor could hold. */
    int64_t shneg[] = {1, -4}, shbad[] = {2, 4, 2}, rneg[] = {-1}, rbig[] = {(int64_t)1 << 40};
    in[2] = ivec("shape", shneg, 2);
    in[3] = ivec("reps", r3, 1);
    expect_run_error(eng, in, 4, CORRAL_EINVAL, "negative dimension");
    in[2] = ivec("shape", shbad, 3);
    expect_run_error(eng, in, 4, CORRAL_EINVAL, "node 'ex' (Expand): shapes [3,1] and [2,4,2] "
                     "cannot be broadcast together");
    in[2] = ivec("shape", sh1, 2);
    in[3] = ivec("reps", rneg, 1);
    expect_run_error(eng, in, 4, CORRAL_EINVAL, "node 'ti' (Tile): bad repeat -1");
    in[3] = ivec("reps", rbig, 1);
    expect_run_error(eng, in, 4, CORRAL_ETOOLARGE, "multiply past the engine's limit");
    engine_free(eng);
}

/* Pad (opset 18) with pads, constant_value and axes as model inputs. */
static void test_keyed_pad(void **state)
{
    struct gb b;
    gb_init(&b, 18);
    gb_input(&b, "x", FLOAT_T, 2, D22);
    gb_input(&b, "pads", INT64_T, 1, DV);
    gb_input(&b, "cv", FLOAT_T, 0, NULL);
    gb_output(&b, "y", FLOAT_T, -1, NULL);
    gb_node(&b, "Pad", "pad", "x,pads,cv", "y");
    struct engine *eng = must_load(&b);
    assert_true(engine_input(eng, 1)->value_keyed);
    assert_true(engine_input(eng, 2)->value_keyed);
    float x[] = {1, 2, 3, 4}, zero = 0, nine = 9;
    struct tensor in[3], out[1];
    struct cerr e = {0};
    int64_t p1[] = {0, 1, 0, 1}, p2[] = {1, 0, 0, 0};
    in[0] = ften("x", 2, D22, x);
    in[1] = ivec("pads", p1, 4);
    in[2] = ften("cv", 0, NULL, &zero);
    assert_int_equal(engine_run(eng, in, 3, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){2, 4}, (float[]){0, 1, 2, 0, 0, 3, 4, 0}, 8);
    tensor_release(&out[0]);
    in[1] = ivec("pads", p2, 4);
    in[2] = ften("cv", 0, NULL, &nine);
    assert_int_equal(engine_run(eng, in, 3, out, &e), 0);
    expect_floats(&out[0], 2, D32, (float[]){9, 9, 1, 2, 3, 4}, 6);
    tensor_release(&out[0]);
    /* Only the fill value changes: still a new plan, since the value is resolved into it. */
    in[2] = ften("cv", 0, NULL, &zero);
    assert_int_equal(engine_run(eng, in, 3, out, &e), 0);
    expect_floats(&out[0], 2, D32, (float[]){0, 0, 1, 2, 3, 4}, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_count(eng), 3);
    /* Negative pads crop; past the axis they are an error, and so are absurd ones. */
    int64_t crop[] = {0, -1, 0, 0}, over[] = {-3, 0, 0, 0}, huge[] = {INT64_MAX, 0, 0, 0};
    in[1] = ivec("pads", crop, 4);
    assert_int_equal(engine_run(eng, in, 3, out, &e), 0);
    expect_floats(&out[0], 2, (const int64_t[]){2, 1}, (float[]){2, 4}, 2);
    tensor_release(&out[0]);
    in[1] = ivec("pads", over, 4);
    expect_run_error(eng, in, 3, CORRAL_EINVAL, "node 'pad' (Pad): pads make axis 0 negative");
    in[1] = ivec("pads", huge, 4);
    expect_run_error(eng, in, 3, CORRAL_EINVAL, "pad 9223372036854775807 is out of range");
    in[1] = ivec("pads", p1, 3);
    expect_run_error(eng, in, 3, CORRAL_EINVAL, "pads has 3 values, expected 4");
    engine_free(eng);
}

/*
 * Range (all inputs keyed, so the whole graph folds into the plan) gives
 * INT64 outputs that must match exactly; Unsqueeze's axes come through a
 * Cast from an INT32 input.
 */
static void test_keyed_range_unsqueeze(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "start", INT64_T, 0, NULL);
    gb_input(&b, "limit", INT64_T, 0, NULL);
    gb_input(&b, "delta", INT64_T, 0, NULL);
    gb_input(&b, "x", FLOAT_T, 1, D2);
    gb_input(&b, "ax", ONNX__TENSOR_PROTO__DATA_TYPE__INT32, 1, D1);
    gb_output(&b, "r", INT64_T, -1, NULL);
    gb_output(&b, "u", FLOAT_T, -1, NULL);
    gb_node(&b, "Range", "range", "start,limit,delta", "r");
    Onnx__NodeProto *n = gb_node(&b, "Cast", "cast", "ax", "ax64");
    attr_i(n, "to", INT64_T);
    gb_node(&b, "Unsqueeze", "unsq", "x,ax64", "u");
    struct engine *eng = must_load(&b);
    assert_false(engine_input(eng, 3)->value_keyed);
    assert_true(engine_input(eng, 4)->value_keyed);
    float x[] = {5, 6};
    int32_t ax = 1;
    int64_t s = 10, l = 2, d = -3;
    struct tensor in[5], out[2];
    struct cerr e = {0};
    in[0] = iten("start", 0, NULL, &s);
    in[1] = iten("limit", 0, NULL, &l);
    in[2] = iten("delta", 0, NULL, &d);
    in[3] = ften("x", 1, D2, x);
    in[4] = (struct tensor){.name = "ax", .dtype = DT_INT32, .ndim = 1, .dims = {1},
                            .data = &ax, .nbytes = sizeof ax};
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_ints(&out[0], 1, D3, (const int64_t[]){10, 7, 4}, 3);
    expect_floats(&out[1], 2, (const int64_t[]){2, 1}, x, 2);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    s = 0, l = 4, d = 1, ax = 0;
    assert_int_equal(engine_run(eng, in, 5, out, &e), 0);
    expect_ints(&out[0], 1, D4, (const int64_t[]){0, 1, 2, 3}, 4);
    expect_floats(&out[1], 2, (const int64_t[]){1, 2}, x, 2);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    assert_int_equal(engine_plan_count(eng), 2);
    d = 0;
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "node 'range' (Range): delta is 0");
    /* A length no tensor could hold is an error, not an allocation attempt. */
    s = INT64_MIN, l = INT64_MAX, d = 1;
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "give no valid length");
    d = 1, s = 0, l = 1, ax = 5;
    expect_run_error(eng, in, 5, CORRAL_EINVAL, "node 'unsq' (Unsqueeze): axis 5 is out of range");
    engine_free(eng);
}

/*
 * ConstantOfShape from a model input, INT64 fill, exact: a small result folds
 * into its plan (one copy step), a large one runs as steps rather than being
 * kept as a caller-sized constant in the plan cache.
 */
static void test_keyed_constantofshape(void **state)
{
    struct gb b;
    gb_init(&b, 13);
    gb_input(&b, "shape", INT64_T, 1, DV);
    gb_output(&b, "y", INT64_T, -1, NULL);
    Onnx__NodeProto *n = gb_node(&b, "ConstantOfShape", "cos", "shape", "c");
    Onnx__AttributeProto *a = attr(n, "value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    a->t = tensor_proto("value", INT64_T, 1, D1, (int64_t[]){7}, 1, 1);
    gb_node(&b, "Add", "add", "c,c", "y");
    struct engine *eng = must_load(&b);
    struct tensor in[1], out[1];
    struct cerr e = {0};
    struct engine_plan_info pi;
    int64_t small[] = {2, 3}, large[] = {300, 300}, neg[] = {2, -3};
    in[0] = ivec("shape", small, 2);
    assert_int_equal(engine_run(eng, in, 1, out, &e), 0);
    expect_ints(&out[0], 2, D23, (const int64_t[]){14, 14, 14, 14, 14, 14}, 6);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_info(eng, 0, &pi), 0);
    assert_int_equal(pi.n_steps, 1);
    in[0] = ivec("shape", large, 2);
    assert_int_equal(engine_run(eng, in, 1, out, &e), 0);
    assert_int_equal(out[0].ndim, 2);
    assert_int_equal(out[0].dims[0], 300);
    assert_int_equal(out[0].dims[1], 300);
    for (int i = 0; i < 300 * 300; i++)
        assert_int_equal(((const int64_t *)out[0].data)[i], 14);
    tensor_release(&out[0]);
    assert_int_equal(engine_plan_info(eng, 1, &pi), 0);
    assert_int_equal(pi.n_steps, 2);
    in[0] = ivec("shape", neg, 2);
    expect_run_error(eng, in, 1, CORRAL_EINVAL, "would have a negative dimension");
    engine_free(eng);
}

#define T(f) cmocka_unit_test_teardown(f, arena_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_mlp),
        T(test_gemm_attrs),
        T(test_matmul),
        T(test_matmul_add_bias),
        T(test_binary_broadcast),
        T(test_unary),
        T(test_softmax_opsets),
        T(test_shape_ops),
        T(test_constant),
        T(test_value_lifetimes),
        T(test_unaligned_input),
        T(test_err_truncated),
        T(test_err_unsupported_op),
        T(test_err_missing_initializer),
        T(test_err_bad_initializers),
        T(test_err_run_inputs),
        T(test_read_tensor_pb),
        T(test_residual_block),
        T(test_plans),
        T(test_devices),
        T(test_pool_depthwise),
        T(test_keyed_reshape),
        T(test_keyed_slice),
        T(test_keyed_expand_tile),
        T(test_keyed_pad),
        T(test_keyed_range_unsqueeze),
        T(test_keyed_constantofshape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
