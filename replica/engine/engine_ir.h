/*
 * The engine's intermediate representation: operators, their parsed
 * attributes, and the per-shape execution plan graph that backends compile.
 *
 * Usage: the loader (engine.c) turns ONNX nodes into `struct eng_node` with a
 * parsed `struct eng_attrs`; the planner (engine_plan.c) specialises the graph
 * for one set of input shapes into a `struct plan_graph`: every value has a
 * concrete dtype and shape, shape-only subgraphs are folded to constants, and
 * fusions are applied (bias, activation and a residual sum in conv/GEMM
 * epilogues). A backend (backend.h) receives a finished plan_graph and
 * compiles it; it never sees ONNX protobufs.
 *
 * Ownership: a plan_graph and everything it points at (names, constant data,
 * step input arrays) is owned by the engine's plan and lives until the plan is
 * freed, which is after the backend's plan_free for it.
 */
#ifndef CORRAL_ENGINE_IR_H
#define CORRAL_ENGINE_IR_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/*
 * Every operator the engine knows: enum tag and ONNX op_type. Ops marked as
 * "internal" never appear in ONNX files; the planner creates them.
 */
#define ENG_OP_LIST(X)                                                                        \
    X(EOP_CONV, "Conv")                                                                       \
    X(EOP_CONV_TRANSPOSE, "ConvTranspose")                                                    \
    X(EOP_BATCHNORM, "BatchNormalization")                                                    \
    X(EOP_INSTANCENORM, "InstanceNormalization")                                              \
    X(EOP_LAYERNORM, "LayerNormalization")                                                    \
    X(EOP_MAXPOOL, "MaxPool")                                                                 \
    X(EOP_AVGPOOL, "AveragePool")                                                             \
    X(EOP_GLOBALAVGPOOL, "GlobalAveragePool")                                                 \
    X(EOP_GLOBALMAXPOOL, "GlobalMaxPool")                                                     \
    X(EOP_GEMM, "Gemm")                                                                       \
    X(EOP_MATMUL, "MatMul")                                                                   \
    X(EOP_ADD, "Add")                                                                         \
    X(EOP_SUB, "Sub")                                                                         \
    X(EOP_MUL, "Mul")                                                                         \
    X(EOP_DIV, "Div")                                                                         \
    X(EOP_POW, "Pow")                                                                         \
    X(EOP_MOD, "Mod")                                                                         \
    X(EOP_MIN, "Min")                                                                         \
    X(EOP_MAX, "Max")                                                                         \
    X(EOP_SUM, "Sum")                                                                         \
    X(EOP_MEAN, "Mean")                                                                       \
    X(EOP_PRELU, "PRelu")                                                                     \
    X(EOP_EQUAL, "Equal")                                                                     \
    X(EOP_LESS, "Less")                                                                       \
    X(EOP_LESS_EQUAL, "LessOrEqual")                                                          \
    X(EOP_GREATER, "Greater")                                                                 \
    X(EOP_GREATER_EQUAL, "GreaterOrEqual")                                                    \
    X(EOP_AND, "And")                                                                         \
    X(EOP_OR, "Or")                                                                           \
    X(EOP_XOR, "Xor")                                                                         \
    X(EOP_NOT, "Not")                                                                         \
    X(EOP_WHERE, "Where")                                                                     \
    X(EOP_SQRT, "Sqrt")                                                                       \
    X(EOP_EXP, "Exp")                                                                         \
    X(EOP_LOG, "Log")                                                                         \
    X(EOP_ERF, "Erf")                                                                         \
    X(EOP_NEG, "Neg")                                                                         \
    X(EOP_ABS, "Abs")                                                                         \
    X(EOP_RECIPROCAL, "Reciprocal")                                                           \
    X(EOP_FLOOR, "Floor")                                                                     \
    X(EOP_CEIL, "Ceil")                                                                       \
    X(EOP_ROUND, "Round")                                                                     \
    X(EOP_SIGN, "Sign")                                                                       \
    X(EOP_SIN, "Sin")                                                                         \
    X(EOP_COS, "Cos")                                                                         \
    X(EOP_TAN, "Tan")                                                                         \
    X(EOP_SINH, "Sinh")                                                                       \
    X(EOP_COSH, "Cosh")                                                                       \
    X(EOP_ASIN, "Asin")                                                                       \
    X(EOP_ACOS, "Acos")                                                                       \
    X(EOP_ATAN, "Atan")                                                                       \
    X(EOP_RELU, "Relu")                                                                       \
    X(EOP_LEAKYRELU, "LeakyRelu")                                                             \
    X(EOP_ELU, "Elu")                                                                         \
    X(EOP_SELU, "Selu")                                                                       \
    X(EOP_CELU, "Celu")                                                                       \
    X(EOP_SIGMOID, "Sigmoid")                                                                 \
    X(EOP_HARDSIGMOID, "HardSigmoid")                                                         \
    X(EOP_HARDSWISH, "HardSwish")                                                             \
    X(EOP_SOFTPLUS, "Softplus")                                                               \
    X(EOP_SOFTSIGN, "Softsign")                                                               \
    X(EOP_THRESHOLDEDRELU, "ThresholdedRelu")                                                 \
    X(EOP_MISH, "Mish")                                                                       \
    X(EOP_GELU, "Gelu")                                                                       \
    X(EOP_TANH, "Tanh")                                                                       \
    X(EOP_CLIP, "Clip")                                                                       \
    X(EOP_SOFTMAX, "Softmax")                                                                 \
    X(EOP_LOGSOFTMAX, "LogSoftmax")                                                           \
    X(EOP_CONCAT, "Concat")                                                                   \
    X(EOP_SPLIT, "Split")                                                                     \
    X(EOP_SLICE, "Slice")                                                                     \
    X(EOP_GATHER, "Gather")                                                                   \
    X(EOP_TRANSPOSE, "Transpose")                                                             \
    X(EOP_RESHAPE, "Reshape")                                                                 \
    X(EOP_FLATTEN, "Flatten")                                                                 \
    X(EOP_SQUEEZE, "Squeeze")                                                                 \
    X(EOP_UNSQUEEZE, "Unsqueeze")                                                             \
    X(EOP_PAD, "Pad")                                                                         \
    X(EOP_TILE, "Tile")                                                                       \
    X(EOP_EXPAND, "Expand")                                                                   \
    X(EOP_SHAPE, "Shape")                                                                     \
    X(EOP_SIZE, "Size")                                                                       \
    X(EOP_CONSTANTOFSHAPE, "ConstantOfShape")                                                 \
    X(EOP_RANGE, "Range")                                                                     \
    X(EOP_CAST, "Cast")                                                                       \
    X(EOP_REDUCEMEAN, "ReduceMean")                                                           \
    X(EOP_REDUCESUM, "ReduceSum")                                                             \
    X(EOP_REDUCEMAX, "ReduceMax")                                                             \
    X(EOP_REDUCEMIN, "ReduceMin")                                                             \
    X(EOP_REDUCEPROD, "ReduceProd")                                                           \
    X(EOP_REDUCESUMSQUARE, "ReduceSumSquare")                                                 \
    X(EOP_REDUCEL1, "ReduceL1")                                                               \
    X(EOP_REDUCEL2, "ReduceL2")                                                               \
    X(EOP_REDUCELOGSUMEXP, "ReduceLogSumExp")                                                 \
    X(EOP_ARGMAX, "ArgMax")                                                                   \
    X(EOP_ARGMIN, "ArgMin")                                                                   \
    X(EOP_DROPOUT, "Dropout")                                                                 \
    X(EOP_IDENTITY, "Identity")                                                               \
    X(EOP_CONSTANT, "Constant")                                                               \
    /* internal: a plain copy of one value into another (outputs that alias) */               \
    X(EOP_COPY, "Copy")

enum eng_op {
#define ENG_OP_ENUM(tag, name) tag,
    ENG_OP_LIST(ENG_OP_ENUM)
#undef ENG_OP_ENUM
        EOP_COUNT
};

/* ONNX op_type of an op ("Conv"). */
const char *eng_op_name(enum eng_op op);

/*
 * Activation applied in an epilogue (Conv, Gemm, MatMul after the planner's
 * fusions) and by the standalone elementwise steps. alpha/beta as in
 * `struct eng_attrs`: LEAKYRELU alpha; CLIP alpha = min, beta = max;
 * HARDSIGMOID alpha * x + beta; ELU alpha.
 */
enum eng_act {
    EACT_NONE,
    EACT_RELU,
    EACT_LEAKYRELU,
    EACT_CLIP,
    EACT_SIGMOID,
    EACT_TANH,
    EACT_HARDSIGMOID,
    EACT_HARDSWISH,
    EACT_ELU,
    EACT_GELU_ERF,
    EACT_GELU_TANH,
};

/* Spatial dimensions handled by Conv/Pool (1-D, 2-D and 3-D). */
#define ENG_MAX_SPATIAL 3
/* Integer lists in attributes: perm, axes. */
#define ENG_MAX_INTS 8

enum eng_auto_pad { EPAD_NOTSET, EPAD_SAME_UPPER, EPAD_SAME_LOWER, EPAD_VALID };
enum eng_pad_mode { EPADM_CONSTANT, EPADM_REFLECT, EPADM_EDGE, EPADM_WRAP };

/*
 * Parsed attributes of one node; only the fields its op uses are meaningful.
 * Conv/pool fields are resolved per plan: `pads` always holds explicit
 * begin/end pads (auto_pad already applied) once a step reaches a backend.
 */
struct eng_attrs {
    float alpha, beta;      /* Gemm; LeakyRelu/Elu/Selu/HardSigmoid/Celu; Clip min/max */
    float gamma;            /* Selu */
    float epsilon;          /* BatchNormalization, LayerNormalization, InstanceNormalization */
    int trans_a, trans_b;   /* Gemm */
    int axis;               /* Softmax, Concat, Split, Gather, Flatten, LayerNorm, ArgMax */
    int legacy_2d;          /* Softmax/LogSoftmax/Hardmax before opset 13: coerce to 2-D */
    int keepdims;           /* Reduce*, ArgMax */
    int select_last_index;  /* ArgMax/ArgMin */
    int noop_with_empty_axes;
    int allowzero;          /* Reshape */
    int n_ints;             /* Transpose perm or Squeeze/Unsqueeze/Reduce axes; -1 when absent */
    int64_t ints[ENG_MAX_INTS];
    enum dtype to;          /* Cast */
    int fmod;               /* Mod */
    int approximate_tanh;   /* Gelu */
    enum eng_pad_mode pad_mode;
    /* Resolved per plan for every axis: Slice start/step; Pad begin pads in `starts`. */
    int64_t starts[TENSOR_MAX_DIMS];
    int64_t steps[TENSOR_MAX_DIMS];
    double value;           /* ConstantOfShape fill, Pad constant (as double) */
    int64_t ivalue;         /* the same for integer tensors */
    /* Conv / ConvTranspose / pooling */
    int nsp;                                   /* number of spatial dims */
    int64_t kernel[ENG_MAX_SPATIAL];
    int64_t strides[ENG_MAX_SPATIAL];
    int64_t dilations[ENG_MAX_SPATIAL];
    int64_t pads[2 * ENG_MAX_SPATIAL];         /* begin[nsp], then end[nsp] */
    int64_t output_padding[ENG_MAX_SPATIAL];   /* ConvTranspose */
    enum eng_auto_pad auto_pad;
    int64_t group;
    int ceil_mode;
    int count_include_pad;
    int storage_order;
    /* Epilogue (fusions): y = act(conv_or_gemm(x) + bias + sum_input) */
    enum eng_act act;
    float act_alpha, act_beta;
    int sum_input; /* index into the step's inputs of a residual added before act, -1 none */
};

/* ---- the per-shape plan graph that a backend compiles ---- */

enum plan_value_kind {
    PV_INPUT, /* a model input, supplied at execution (host memory) */
    PV_CONST, /* known at plan time: weights and folded values (host memory, `data`) */
    PV_TEMP,  /* produced by a step */
};

struct plan_value {
    const char *name;
    enum plan_value_kind kind;
    enum dtype dtype;
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
    size_t nbytes;        /* dense row-major size */
    const void *data;     /* PV_CONST: host bytes, nbytes long */
    int weight_id;        /* PV_CONST from the model file: stable id for backend_ops.weight_upload;
                           * -1 for a constant folded in this plan */
    int input_index;      /* PV_INPUT: position among the plan's inputs, else -1 */
    int output_index;     /* a model output: position among the plan's outputs, else -1 */
    int producer;         /* step that writes it, -1 for inputs and constants */
    int last_use;         /* last step that reads it, -1 when none */
    size_t offset;        /* PV_TEMP: byte offset in the default (dense layout) arena plan */
};

struct plan_step {
    enum eng_op op;
    const char *label;    /* "node 'conv1' (Conv)" for messages */
    struct eng_attrs a;
    int n_in;
    const int *in;        /* value indices; -1 for an omitted optional input */
    int n_out;
    const int *out;       /* value indices; -1 for an omitted optional output */
};

struct plan_graph {
    struct plan_value *vals;
    int n_vals;
    struct plan_step *steps;
    int n_steps;
    int n_inputs;
    const int *inputs;    /* value index of each model input, in model order */
    int n_outputs;
    const int *outputs;   /* value index of each model output (always a PV_TEMP written by a step;
                           * distinct values for distinct outputs) */
    size_t arena_bytes;   /* default dense-layout arena: every PV_TEMP at `offset`, placed by
                           * liveness; model outputs are live to the end, so never overwritten
                           * (inputs are not in it: they stay in the caller's memory) */
};

#endif
