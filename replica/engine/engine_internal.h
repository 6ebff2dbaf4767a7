/*
 * Engine internals shared by the loader (engine.c), the kernels
 * (engine_ops.c) and the TensorProto reader (engine_tensor.c). Not a public
 * header: only files of replica/engine include it.
 *
 * The graph is a flat array of values (graph inputs, constants, node outputs)
 * addressed by index, and an array of the nodes that execute, in order. Each
 * value records which executed node uses it last, so engine_run can free an
 * intermediate as soon as nothing needs it any more.
 */
#ifndef CORRAL_ENGINE_INTERNAL_H
#define CORRAL_ENGINE_INTERNAL_H

#include "engine.h"
#include "onnx.pb-c.h"

enum eng_op {
    EOP_GEMM,
    EOP_MATMUL,
    EOP_ADD,
    EOP_SUB,
    EOP_MUL,
    EOP_DIV,
    EOP_RELU,
    EOP_SIGMOID,
    EOP_TANH,
    EOP_SOFTMAX,
    EOP_FLATTEN,
    EOP_RESHAPE,
    EOP_IDENTITY,
    EOP_DROPOUT,
    EOP_CONSTANT,
    EOP_COUNT
};

enum eng_value_kind {
    EVK_INPUT, /* a model input, supplied to engine_run */
    EVK_CONST, /* an initializer or a Constant node's output, owned by the engine */
    EVK_NODE,  /* produced by a node during engine_run */
};

struct eng_value {
    char *name; /* owned */
    enum eng_value_kind kind;
    enum dtype dtype;
    int last_use;  /* index into eng->nodes of the last reader; -1 when none */
    int is_output; /* a graph output: never freed during a run */
    struct tensor init; /* EVK_CONST: the owned data */
    struct tensor cur;  /* during a run: the live tensor (owned for EVK_NODE) */
};

#define ENG_MAX_IN 3
#define ENG_MAX_OUT 2

struct eng_node {
    enum eng_op op;
    char *label; /* "node 'fc1' (Gemm)", owned, for messages */
    int n_in, in[ENG_MAX_IN];    /* value indices; -1 for an omitted optional input */
    int n_out, out[ENG_MAX_OUT]; /* value indices; -1 for an omitted optional output */
    float alpha, beta;
    int trans_a, trans_b;
    int axis;
    int allowzero;
    int softmax_2d; /* Softmax before opset 13: coerce the input to 2-D at axis */
    int bias;       /* MatMul with a fused Add: the bias value index, else -1 */
};

struct engine {
    int threads;
    int opset;
    struct eng_value *vals;
    size_t n_vals, cap_vals;
    size_t *map; /* open-addressing table of value index + 1 (0 = empty) */
    size_t map_cap;
    struct eng_node *nodes;
    size_t n_nodes;
    struct engine_io_info *inputs;
    int *input_val;
    size_t n_inputs;
    struct engine_io_info *outputs;
    int *output_val;
    size_t n_outputs;
    unsigned char *seen; /* engine_run scratch, one flag per model input */
    void **in_buf;       /* per model input: aligned copy for a misaligned caller buffer */
    size_t *in_cap;
};

/* Maps an ONNX TensorProto.DataType to a corral dtype; DT_INVALID when unsupported. */
enum dtype engine_dtype_from_onnx(int32_t t);
/* Name of an ONNX data type for messages ("FLOAT", "STRING", "COMPLEX64"). */
const char *engine_onnx_type_name(int32_t t);
/*
 * Converts a TensorProto into an owned tensor (named `name`, not copied),
 * checking the dims and the byte/element count against the data type. `what`
 * names the tensor in messages ("initializer 'w'").
 */
int engine_tensor_from_proto(const Onnx__TensorProto *tp, const char *what, const char *name,
                          struct tensor *out, struct cerr *e);

/* Reads a whole regular file of at most `max` bytes into a malloc'd buffer. */
int engine_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, struct cerr *e);

/* Runs one node: reads its inputs' `cur`, fills its outputs' `cur`. */
int engine_node_run(struct engine *eng, int idx, struct cerr *e);

#endif
