/*
 * Engine internals shared by the files of replica/engine: the loaded graph,
 * the op table (attribute parsing, shape inference, reference kernels) and
 * the per-shape plans. Not a public header.
 *
 * The graph is a flat array of values (model inputs, constants, node outputs)
 * addressed by index, and the nodes in execution order. Plans (engine_plan.c)
 * specialise it for one set of input shapes; plan value i is graph value i,
 * followed by any value a plan adds.
 */
#ifndef CORRAL_ENGINE_INTERNAL_H
#define CORRAL_ENGINE_INTERNAL_H

#include "backend.h"
#include "engine.h"
#include "engine_ir.h"
#include "onnx.pb-c.h"

enum eng_value_kind {
    EVK_INPUT, /* a model input, supplied to engine_run */
    EVK_CONST, /* an initializer, a Constant's output or a value folded at load */
    EVK_NODE,  /* produced by a node */
};

struct eng_value {
    char *name; /* owned */
    enum eng_value_kind kind;
    enum dtype dtype;
    int is_output;
    int n_uses;         /* readers among the nodes */
    int single_use_weight; /* EVK_CONST read only as input 1 (the weights) of one Conv,
                            * ConvTranspose, Gemm or MatMul */
    struct tensor init; /* EVK_CONST: the owned data; NULL data once the backend holds the
                         * weight itself (single_use_weight only, see
                         * backend_ops.weight_resident) */
};

struct eng_node {
    enum eng_op op;
    char *label; /* "node 'fc1' (Gemm)", owned */
    struct eng_attrs a;
    int n_in, *in;   /* value indices; -1 for an omitted optional input (owned array) */
    int n_out, *out; /* value indices; -1 for an omitted optional output (owned array) */
    int dead;        /* removed by a load-time rewrite */
};

struct eng_plan;

struct engine {
    int threads;
    int opset;
    struct backend be;
    int have_be;
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
    /* Plan cache: prepared plans are pinned, others evicted least recently used. */
    struct eng_plan **plans;
    size_t n_plans, max_plans;
    uint64_t clock;
    /* Per model input: the node whose shape operand reads its values (inputs[k].value_keyed),
     * for messages; NULL for ordinary inputs. Points at a node label. */
    const char **keyed_by;
    size_t n_keyed;         /* how many inputs are value_keyed */
    struct tensor *run_in;  /* engine_run scratch: inputs in model order */
    void **in_buf;          /* per model input: aligned copy for a misaligned caller buffer */
    size_t *in_cap;
};

/* ---- op table (engine_optab.c) ---- */

/*
 * Load-time context for one node: parses attributes into nd->a, checks input
 * datatypes and sets each output's datatype, so unsupported features are
 * reported at load. Inputs of kind EVK_CONST may be read (eng->vals[..].init).
 */
struct eng_setup {
    const struct engine *eng;
    const Onnx__NodeProto *n;
    struct eng_node *nd;
    enum dtype in_dt[64]; /* DT_INVALID for omitted inputs; only the first 64 are checked */
    enum dtype out_dt[64];
};

/*
 * Plan-time view of one step's values: dtype, shape and, for constants, data.
 * Shape inference fills the outputs' dtype/ndim/dims; it may resolve
 * attributes (pads, axes) into st->a.
 */
struct eng_infer {
    struct plan_step *st;
    const struct plan_value *const *in; /* NULL for an omitted input */
    struct plan_value *const *out;      /* NULL for an omitted output */
    int opset;
};

typedef int (*eng_setup_fn)(struct eng_setup *s, struct cerr *e);
typedef int (*eng_infer_fn)(struct eng_infer *c, struct cerr *e);
/*
 * Reference kernel: in[k]/out[k] are dense row-major tensors with the planned
 * shapes; an omitted input or output has dtype DT_INVALID and no data.
 */
typedef int (*eng_kernel_fn)(const struct plan_step *st, const struct tensor *in,
                             struct tensor *out, struct cerr *e);

struct eng_opdef {
    const char *name;
    int min_in, max_in, min_out, max_out; /* max -1: unbounded (variadic) */
    eng_setup_fn setup;
    eng_infer_fn infer;
    eng_kernel_fn kernel; /* NULL: no reference kernel (the backend must run it) */
    /*
     * Bit k set: shape inference reads input k's values, not just its shape
     * (Reshape's shape, Slice's starts...), so within a plan it must be a
     * constant; a model input that reaches it is keyed on (value_keyed).
     */
    unsigned value_in;
};

const struct eng_opdef *eng_opdef(enum eng_op op);
/* Looks up an ONNX op; -1 when the engine does not know it. */
int eng_op_lookup(const char *domain, const char *op_type);

/* Attribute helpers (engine_attr.c) for setup functions. */
const Onnx__AttributeProto *eng_attr_find(const Onnx__NodeProto *n, const char *name);
int eng_attr_int(const struct eng_setup *s, const char *name, int64_t def, int64_t *out,
                 struct cerr *e);
int eng_attr_float(const struct eng_setup *s, const char *name, float def, float *out,
                   struct cerr *e);
/* Reads an INTS attribute into out[max]; *n = -1 when absent. */
int eng_attr_ints(const struct eng_setup *s, const char *name, int64_t *out, int max, int *n,
                  struct cerr *e);
/* Reads a STRING attribute into buf; "" when absent. */
int eng_attr_str(const struct eng_setup *s, const char *name, char *buf, size_t len,
                 struct cerr *e);

/* Setup/infer/kernel families, one file each. */
int eng_setup_elem(struct eng_setup *s, struct cerr *e);
int eng_infer_elem(struct eng_infer *c, struct cerr *e);
int eng_kernel_elem(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                    struct cerr *e);
/* Slice, Pad and Split of old opsets take their operands as attributes; setup marks them
 * in this field, which those ops do not otherwise use. */
#define LEGACY_ATTRS legacy_2d
int eng_setup_shape(struct eng_setup *s, struct cerr *e);
int eng_infer_shape(struct eng_infer *c, struct cerr *e);
int eng_kernel_shape(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                     struct cerr *e);
int eng_setup_reduce(struct eng_setup *s, struct cerr *e);
int eng_infer_reduce(struct eng_infer *c, struct cerr *e);
int eng_kernel_reduce(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                      struct cerr *e);
int eng_setup_nn(struct eng_setup *s, struct cerr *e);
int eng_infer_nn(struct eng_infer *c, struct cerr *e);
int eng_kernel_nn(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                  struct cerr *e);

/* Shared checks for setup functions. */
int eng_need_dtype(const struct eng_setup *s, int k, unsigned mask, const char *what,
                   struct cerr *e);
#define DTM(t) (1u << (t))
#define DTM_FLOAT DTM(DT_FP32)
#define DTM_NUM (DTM(DT_FP32) | DTM(DT_INT64) | DTM(DT_INT32))
#define DTM_ANY 0xffffffffu

/* Numpy broadcast of two shapes; non-zero (with a message) when incompatible. */
int eng_broadcast(const struct plan_step *st, const int64_t *a, int na, const int64_t *b, int nb,
                  int64_t *out, int *nout, struct cerr *e);
/* Normalises an axis in [-r, r) (or [-r, r] when `inclusive`); non-zero with a message. */
int eng_axis(const struct plan_step *st, int64_t axis, int r, int inclusive, int *out,
             struct cerr *e);
/* Runs one step on the CPU at plan time (constant folding, shape-keyed values), into
 * `res` (engine_plan.c). */
int eng_eval_step(struct plan_step *st, const struct plan_value *const *in,
                  struct plan_value *const *out, int opset, struct tensor *res, struct cerr *e);
/* Sets a plan value's shape and dense byte size (checked). */
int eng_set_shape(struct plan_value *v, enum dtype dt, const int64_t *dims, int ndim,
                  struct cerr *e);
int64_t eng_numel(const int64_t *dims, int ndim);
/* Reads element i of an integer tensor (INT64 or INT32) as int64. */
int64_t eng_int_at(const void *data, enum dtype dt, int64_t i);

/* ---- loading and tensors (engine.c, engine_tensor.c) ---- */

enum dtype engine_dtype_from_onnx(int32_t t);
const char *engine_onnx_type_name(int32_t t);
int engine_tensor_from_proto(const Onnx__TensorProto *tp, const char *what, const char *name,
                             struct tensor *out, struct cerr *e);
int engine_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, struct cerr *e);

/* Load-time graph rewrites (engine_fuse.c): folds constants and BatchNorm into Conv. */
int engine_graph_optimize(struct engine *eng, struct cerr *e);

/* ---- plans (engine_plan.c) ---- */

/*
 * Marks the model inputs whose values reach a shape operand (eng_opdef's
 * value_in) of a live node, through any ops other than Shape and Size (whose
 * outputs depend on shapes alone): plans are then keyed on their values. Fails
 * with CORRAL_EUNSUPP when such an input can never be small enough to key on.
 */
int engine_mark_value_inputs(struct engine *eng, struct cerr *e);
/*
 * Finds or builds the plan for these input shapes (in model input order) and,
 * for value_keyed inputs, these values.
 */
int engine_plan_get(struct engine *eng, const struct tensor *in, int pin, struct eng_plan **out,
                    struct cerr *e);
void engine_plan_free(struct engine *eng, struct eng_plan *p);
/* Frees host copies of convolution weights the backend now keeps in its own form. */
void engine_release_resident_weights(struct engine *eng);
int engine_plan_execute(struct engine *eng, struct eng_plan *p, const struct tensor *in,
                        struct tensor *out, struct cerr *e);
const struct plan_graph *engine_plan_graph(const struct eng_plan *p);

/* Runs a node's reference kernel at plan time (constant folding). */
int eng_kernel_run(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                   struct cerr *e);

#endif
