/*
 * The replica's inference engine: loads an ONNX model and runs it.
 *
 * Usage:
 *     struct engine_options opt = ENGINE_OPTIONS_DEFAULT;
 *     struct engine *eng;
 *     struct cerr e;
 *     if (engine_load_file("models/digits/1/model.onnx", &opt, &eng, &e))
 *         fprintf(stderr, "%s\n", e.msg);      // one line naming the problem
 *     ... engine_num_inputs / engine_input describe what the model takes ...
 *     struct tensor out[engine_num_outputs(eng)];
 *     if (engine_run(eng, inputs, n_inputs, out, &e) == 0) { use out; tensor_release each }
 *     engine_free(eng);
 *
 * Loading parses the ONNX protobuf (schema compiled from libonnx-dev's onnx.proto),
 * reads initializers (raw_data or typed fields), validates the graph (every op
 * supported, every value produced before use, every initializer present) and
 * fails with a message naming the node and op at fault.
 *
 * Supported (engine v0, FP32 compute, opsets 11-21 semantics): Gemm, MatMul,
 * Add/Sub/Mul (FP32, INT64), Div, Relu, Sigmoid, Tanh, Softmax, Flatten,
 * Reshape, Identity, Dropout (inference) and Constant. Shapes are computed per
 * run from the actual inputs, so the batch dimension may vary between runs.
 *
 * engine_run checks each input against the model's declared inputs (name,
 * datatype, rank, fixed dimensions), so callers may pass untrusted tensors. It
 * is not reentrant: one thread runs a given engine at a time. Outputs are owned
 * tensors (free with tensor_release); their `name` points into the engine.
 */
#ifndef CORRAL_ENGINE_H
#define CORRAL_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

struct engine;

struct engine_options {
    /*
     * CPU threads for compute; 0: library default. oneDNN here runs on OpenMP,
     * so engine_run sets omp_set_num_threads(threads) on its calling thread
     * (the setting is per thread) before the first kernel.
     */
    int threads;
    const char *device; /* "cpu" (only value supported by engine v0) */
};
#define ENGINE_OPTIONS_DEFAULT {.threads = 1, .device = "cpu"}

/*
 * A model input or output as declared by the graph; dims[i] == -1 is variable.
 * ndim == -1 when the model declares no shape at all (any rank is accepted).
 */
struct engine_io_info {
    const char *name;
    enum dtype dtype;
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
};

int engine_load_file(const char *path, const struct engine_options *opt, struct engine **out,
                     struct cerr *e);
int engine_load_buffer(const void *buf, size_t len, const struct engine_options *opt,
                       struct engine **out, struct cerr *e);
/* As engine_load_buffer; `what` names the model in messages ("models/x/1/model.onnx"). */
int engine_load_buffer_named(const void *buf, size_t len, const char *what,
                             const struct engine_options *opt, struct engine **out,
                             struct cerr *e);
void engine_free(struct engine *eng);

/*
 * Loading fails with CORRAL_EUNSUPP (and a message naming the op, node, datatype
 * or feature) for any model the engine cannot run; other codes mean the model
 * itself is broken. engine_op_supported answers for one op ("" or NULL domain is
 * the default ONNX domain); engine_supported_ops lists them for messages.
 */
int engine_op_supported(const char *domain, const char *op_type);
const char *engine_supported_ops(void);
/* The model's opset for the default ONNX domain. */
int engine_opset(const struct engine *eng);

size_t engine_num_inputs(const struct engine *eng);
const struct engine_io_info *engine_input(const struct engine *eng, size_t i);
size_t engine_num_outputs(const struct engine *eng);
const struct engine_io_info *engine_output(const struct engine *eng, size_t i);

/*
 * Runs the model. `inputs` holds n_in tensors matched to the model's inputs by
 * name, each exactly once. On success `outputs` (an array of
 * engine_num_outputs() tensors) is filled in model output order.
 */
int engine_run(struct engine *eng, const struct tensor *inputs, size_t n_in,
               struct tensor *outputs, struct cerr *e);

/*
 * Reads a serialized ONNX TensorProto (.pb file as in ONNX's test data and in
 * corral's parity vectors) into an owned tensor. The tensor's name is copied
 * into *name_out (malloc'd, caller frees; may be an empty string) and
 * out->name points at it.
 */
int engine_read_tensor_pb(const char *path, struct tensor *out, char **name_out, struct cerr *e);

#endif
