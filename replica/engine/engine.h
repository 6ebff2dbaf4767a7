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
 * Supported: the ops engine_supported_ops lists (CNN and transformer ops as
 * PyTorch's exporters emit them, opsets 11-21), FP32 compute with INT64/INT32/
 * BOOL for shape arithmetic, masks and indices.
 *
 * Plans: the first run with a new set of input shapes builds a plan for them
 * (shape inference, constant folding of shape-only subgraphs, fusions such as
 * BatchNorm into Conv and bias/activation/residual into conv and GEMM
 * epilogues, a liveness memory plan in one arena, backend primitives). Later
 * runs with the same shapes reuse it and allocate nothing but the returned
 * outputs (engine_run_into: nothing at all). engine_prepare builds a plan
 * ahead of time (the batcher's buckets) and pins it; other plans live in a
 * bounded cache (engine_set_max_plans) and are evicted least recently used.
 *
 * Inputs that set shapes: when a model input's values (not just its shape)
 * decide shapes (Reshape's shape, Slice's starts/ends/axes/steps, Expand's
 * shape, Tile's repeats, Pad's pads, Squeeze/Unsqueeze/Reduce axes, Split's
 * sizes, ConstantOfShape's shape, Range's bounds, directly or through
 * arithmetic), the loader marks it value_keyed. A plan is then built for one
 * set of input shapes and those inputs' values: a new value is planned on
 * first use and cached like a new shape. Such an input may hold at most
 * ENGINE_MAX_VALUE_KEY elements (more fails with CORRAL_EUNSUPP); bad values
 * (a negative dimension, a shape whose size does not match) fail that run
 * with CORRAL_EINVAL and a message naming the node.
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
     * CPU threads for compute; 0: the CPUs this process may run on
     * (sched_getaffinity). oneDNN here runs on OpenMP, so each run sets
     * omp_set_num_threads(threads) on its calling thread (the setting is per
     * thread) before the first kernel.
     */
    int threads;
    /*
     * "cpu", or "cuda:N" ("cuda" = "cuda:0") for the CUDA backend; a build
     * without it fails the load with CORRAL_EUNSUPP and a message saying so.
     */
    const char *device;
};
#define ENGINE_OPTIONS_DEFAULT {.threads = 0, .device = "cpu"}

/*
 * A model input or output as declared by the graph; dims[i] == -1 is variable.
 * ndim == -1 when the model declares no shape at all (any rank is accepted).
 */
struct engine_io_info {
    const char *name;
    enum dtype dtype;
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
    int value_keyed; /* inputs only: its values set shapes, so plans are keyed on them */
};

/* Elements a value_keyed input may hold: enough for any shape, pads or axes list. */
#define ENGINE_MAX_VALUE_KEY 64

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
 * As engine_run, but the caller supplies each output's buffer: outputs[i]
 * must have the dtype, shape, nbytes and data the plan produces (known from
 * engine_prepare's info). Runs without allocating once the plan exists.
 */
int engine_run_into(struct engine *eng, const struct tensor *inputs, size_t n_in,
                    struct tensor *outputs, struct cerr *e);

/* One plan: the input shapes it was built for, its outputs, its arena. */
struct engine_plan_info {
    size_t arena_bytes;   /* the backend's working memory for one run of this plan */
    size_t n_steps;       /* kernels/primitives per run after folding and fusion */
    int pinned;           /* built by engine_prepare: never evicted */
    size_t n_inputs;
    const struct engine_io_info *inputs;  /* concrete shapes, model input order */
    size_t n_outputs;
    const struct engine_io_info *outputs; /* concrete shapes, model output order */
};

/*
 * Builds (or finds) the plan for these input shapes and pins it. Only each
 * tensor's name, dtype, ndim and dims are read; data may be NULL, except for
 * value_keyed inputs, whose values the plan is built for (their data and
 * nbytes are required). `info` (may be NULL) points into the engine and stays
 * valid until engine_free.
 */
int engine_prepare(struct engine *eng, const struct tensor *shape_only_inputs, size_t n,
                   struct engine_plan_info *info, struct cerr *e);
size_t engine_plan_count(const struct engine *eng);
/* Fills *info for plan i (0 <= i < engine_plan_count); non-zero when out of range. */
int engine_plan_info(const struct engine *eng, size_t i, struct engine_plan_info *info);
/* Bounds the number of plans kept (pinned ones included in the count; default 16). */
void engine_set_max_plans(struct engine *eng, size_t n);
/* Threads a run uses (after resolving 0) and the backend's name ("cpu", "cuda"). */
int engine_threads(const struct engine *eng);
const char *engine_backend_name(const struct engine *eng);

/*
 * Reads a serialized ONNX TensorProto (.pb file as in ONNX's test data and in
 * corral's parity vectors) into an owned tensor. The tensor's name is copied
 * into *name_out (malloc'd, caller frees; may be an empty string) and
 * out->name points at it.
 */
int engine_read_tensor_pb(const char *path, struct tensor *out, char **name_out, struct cerr *e);

#endif
