#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "engine_mem.h"

/* A protobuf larger than 2 GiB cannot be a valid ONNX file (protobuf's own limit). */
#define ENGINE_MAX_MODEL_BYTES ((size_t)2 << 30)
/* Opset assumed when a model declares none for the default domain. */
#define ENGINE_DEFAULT_OPSET 21
/* Plans kept per engine unless engine_set_max_plans says otherwise. */
#define ENGINE_DEFAULT_MAX_PLANS 16

static int is_default_domain(const char *d)
{
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

int engine_op_supported(const char *domain, const char *op_type)
{
    int op = eng_op_lookup(domain, op_type);
    return op >= 0 && op != EOP_COPY;
}

static char supported_buf[2048];
static pthread_once_t supported_once = PTHREAD_ONCE_INIT;

static void supported_init(void)
{
    size_t off = 0;
    for (int i = 0; i < EOP_COUNT && off < sizeof supported_buf; i++)
        if (i != EOP_COPY)
            off += (size_t)snprintf(supported_buf + off, sizeof supported_buf - off, "%s%s",
                                    off ? ", " : "", eng_op_name((enum eng_op)i));
}

const char *engine_supported_ops(void)
{
    pthread_once(&supported_once, supported_init);
    return supported_buf;
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
    size_t mask = eng->map_cap - 1;
    size_t i = hash_str(name) & mask;
    while (eng->map[i])
        i = (i + 1) & mask;
    eng->map[i] = ++eng->n_vals;
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


/* Finds which node (at or after `from`) outputs `name`, for the out-of-order message. */
static int later_producer(const Onnx__GraphProto *g, size_t from, const char *name)
{
    for (size_t i = from; i < g->n_node; i++)
        for (size_t j = 0; j < g->node[i]->n_output; j++)
            if (g->node[i]->output[j] && strcmp(g->node[i]->output[j], name) == 0)
                return (int)i;
    return -1;
}


/* Graphs up to this many nodes are scanned for a cycle when a node reads a later output. */
#define ENGINE_CYCLE_SCAN_NODES 4096

static int reads_output_of(const Onnx__NodeProto *reader, const Onnx__NodeProto *writer)
{
    for (size_t a = 0; a < reader->n_input; a++)
        for (size_t b = 0; b < writer->n_output; b++)
            if (reader->input[a] && *reader->input[a] && writer->output[b] &&
                strcmp(reader->input[a], writer->output[b]) == 0)
                return 1;
    return 0;
}

/*
 * Whether node `to` reads, through any chain of nodes, an output of node `from`.
 * Asked only when a node reads a value listed later, to tell a cycle (which no
 * order can run) from nodes merely out of order; a breadth-first walk over the
 * node list, -1 when the graph is too large to walk here.
 */
static int depends_on(const Onnx__GraphProto *g, size_t from, size_t to)
{
    if (g->n_node > ENGINE_CYCLE_SCAN_NODES)
        return -1;
    size_t *queue = malloc(g->n_node * sizeof *queue);
    unsigned char *seen = calloc(g->n_node, 1);
    size_t head = 0, tail = 0;
    int found = 0;
    if (!queue || !seen) {
        free(queue);
        free(seen);
        return -1;
    }
    queue[tail++] = from;
    while (head < tail && !found) {
        const Onnx__NodeProto *w = g->node[queue[head++]];
        for (size_t j = 0; j < g->n_node && !found; j++) {
            if (seen[j] || !reads_output_of(g->node[j], w))
                continue;
            seen[j] = 1;
            queue[tail++] = j;
            found = j == to;
        }
    }
    free(queue);
    free(seen);
    return found;
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

static int add_node(struct engine *eng, const Onnx__GraphProto *g, size_t i, struct cerr *e)
{
    const Onnx__NodeProto *n = g->node[i];
    struct eng_node *nd = &eng->nodes[eng->n_nodes];
    char label[320], what[400];
    int rc;
    memset(nd, 0, sizeof *nd);
    nd->op = (enum eng_op)eng_op_lookup(n->domain, n->op_type);
    node_label(n, i, label, sizeof label);
    if (!(nd->label = strdup(label)))
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    eng->n_nodes++; /* from here on engine_free releases the node */
    const struct eng_opdef *d = eng_opdef(nd->op);
    if ((int)n->n_input < d->min_in || (d->max_in >= 0 && (int)n->n_input > d->max_in) ||
        (int)n->n_output < d->min_out || (d->max_out >= 0 && (int)n->n_output > d->max_out)) {
        if (nd->op == EOP_RESHAPE && n->n_input == 1)
            return cerr_set(e, CORRAL_EUNSUPP, "%s: Reshape with a 'shape' attribute (opset < 5) "
                            "is not supported", label);
        return cerr_set(e, CORRAL_EINVAL, "%s has %zu inputs and %zu outputs, which %s does not "
                        "accept", label, n->n_input, n->n_output, d->name);
    }
    nd->n_in = (int)n->n_input;
    nd->n_out = (int)n->n_output;
    nd->in = calloc(n->n_input + 1, sizeof *nd->in);
    nd->out = calloc(n->n_output + 1, sizeof *nd->out);
    if (!nd->in || !nd->out)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    struct eng_setup s = {.eng = eng, .n = n, .nd = nd};
    for (size_t k = 0; k < n->n_input; k++) {
        const char *in = n->input[k] ? n->input[k] : "";
        nd->in[k] = -1;
        if (k < 64)
            s.in_dt[k] = DT_INVALID;
        if (!*in) {
            if ((int)k < d->min_in)
                return cerr_set(e, CORRAL_EINVAL, "%s: required input %zu has an empty name",
                                label, k);
            continue;
        }
        int v = value_find(eng, in);
        if (v < 0) {
            int later = later_producer(g, i, in);
            if (later >= 0 && (size_t)later == i)
                return cerr_set(e, CORRAL_EINVAL, "the graph has a cycle: %s reads its own "
                                "output '%s'", label, in);
            if (later >= 0) {
                char l2[320];
                node_label(g->node[later], (size_t)later, l2, sizeof l2);
                if (depends_on(g, i, (size_t)later) == 1)
                    return cerr_set(e, CORRAL_EINVAL, "the graph has a cycle: %s reads '%s' "
                                    "from %s, which depends on the first node's output", label,
                                    in, l2);
                return cerr_set(e, CORRAL_EINVAL, "%s uses '%s' before %s produces it (the nodes "
                                "are not in topological order)", label, in, l2);
            }
            return cerr_set(e, CORRAL_EINVAL, "%s: input '%s' is not a graph input, an "
                            "initializer or the output of an earlier node (missing "
                            "initializer?)", label, in);
        }
        nd->in[k] = v;
        if (k < 64)
            s.in_dt[k] = eng->vals[v].dtype;
    }
    for (int k = 0; k < 64; k++)
        s.out_dt[k] = DT_INVALID;
    if (nd->op != EOP_CONSTANT) {
        if ((rc = d->setup(&s, e)))
            return rc;
        if (eng->have_be &&
            !eng->be.ops->supports_op(&eng->be, nd->op, &nd->a, s.in_dt,
                                      nd->n_in < 64 ? nd->n_in : 64))
            return cerr_set(e, CORRAL_EUNSUPP, "%s: the %s backend does not support %s with these "
                            "attributes and datatypes", label, eng->be.ops->name, d->name);
    }
    for (size_t k = 0; k < n->n_output; k++) {
        const char *on = n->output[k] ? n->output[k] : "";
        nd->out[k] = -1;
        if (!*on) {
            if (k == 0)
                return cerr_set(e, CORRAL_EINVAL, "%s: output 0 has an empty name", label);
            continue;
        }
        if (value_find(eng, on) >= 0)
            return cerr_set(e, CORRAL_EINVAL, "%s: output '%s' is already defined by a graph "
                            "input, an initializer or an earlier node", label, on);
        if (nd->op == EOP_CONSTANT) {
            if ((rc = value_add(eng, on, EVK_CONST, DT_INVALID, e)))
                return rc;
            struct eng_value *v = &eng->vals[eng->n_vals - 1];
            if ((rc = eval_constant(n, label, v->name, &v->init, e)))
                return rc;
            v->dtype = v->init.dtype;
            nd->dead = 1;
        } else {
            enum dtype dt = k < 64 ? s.out_dt[k] : s.out_dt[0];
            if (dt == DT_INVALID)
                dt = s.out_dt[0];
            if ((rc = value_add(eng, on, EVK_NODE, dt, e)))
                return rc;
        }
        nd->out[k] = (int)eng->n_vals - 1;
    }
    (void)what;
    return CORRAL_OK;
}

/*
 * Frees an initializer's bytes in the unpacked message once the engine holds
 * its own copy, so the weights exist twice only one tensor at a time rather
 * than for the whole load. protobuf-c frees a bytes field or repeated field
 * only when its pointer is set, so clearing it keeps the final free valid.
 */
static void release_proto_data(Onnx__TensorProto *tp)
{
    if (tp->raw_data.data) {
        free(tp->raw_data.data);
        tp->raw_data.data = NULL;
        tp->raw_data.len = 0;
    }
    if (tp->float_data) {
        free(tp->float_data);
        tp->float_data = NULL;
        tp->n_float_data = 0;
    }
}

/*
 * glibc raises its mmap threshold each time a large mapped block is freed
 * (up to 32 MB), after which request-sized buffers (a batch of images is
 * tens of MB) come from the heap and stay resident once freed. A fixed
 * threshold keeps every block of a megabyte or more mapped, so it goes back
 * to the system when freed; mapping costs far less than the compute such a
 * buffer feeds.
 */
#define ENGINE_MMAP_THRESHOLD ((int)1 << 20)
static pthread_once_t heap_once = PTHREAD_ONCE_INIT;

static void heap_policy(void)
{
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, ENGINE_MMAP_THRESHOLD);
#endif
}

static int load_graph(struct engine *eng, Onnx__ModelProto *m, struct cerr *e)
{
    Onnx__GraphProto *g = m->graph;
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
        if (eng_op_lookup(n->domain, n->op_type) >= 0)
            continue;
        node_label(n, i, label, sizeof label);
        if (!is_default_domain(n->domain))
            return cerr_set(e, CORRAL_EUNSUPP, "unsupported op '%s' from domain '%s' in %s (the "
                            "engine supports only the default ONNX domain)",
                            n->op_type ? n->op_type : "", n->domain, label);
        return cerr_set(e, CORRAL_EUNSUPP, "unsupported op '%s' in %s (the engine supports %s)",
                        n->op_type ? n->op_type : "", label, engine_supported_ops());
    }

    /* Room for every value the file names plus those load-time rewrites add. */
    size_t bound = g->n_initializer + g->n_input + 1;
    for (size_t i = 0; i < g->n_node; i++)
        bound += g->node[i]->n_output + 2;
    eng->cap_vals = bound;
    eng->vals = calloc(bound, sizeof *eng->vals);
    eng->map_cap = 16;
    while (eng->map_cap < 2 * bound)
        eng->map_cap <<= 1;
    eng->map = calloc(eng->map_cap, sizeof *eng->map);
    eng->nodes = calloc(g->n_node + 1, sizeof *eng->nodes);
    eng->inputs = calloc(g->n_input + 1, sizeof *eng->inputs);
    eng->input_val = calloc(g->n_input + 1, sizeof *eng->input_val);
    eng->outputs = calloc(g->n_output + 1, sizeof *eng->outputs);
    eng->output_val = calloc(g->n_output + 1, sizeof *eng->output_val);
    eng->keyed_by = calloc(g->n_input + 1, sizeof *eng->keyed_by);
    if (!eng->vals || !eng->map || !eng->nodes || !eng->inputs || !eng->input_val ||
        !eng->outputs || !eng->output_val || !eng->keyed_by)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");

    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *tp = g->initializer[i];
        const char *name = tp->name ? tp->name : "";
        if (!*name)
            return cerr_set(e, CORRAL_EINVAL, "initializer #%zu has no name", i);
        if (value_find(eng, name) >= 0)
            return cerr_set(e, CORRAL_EINVAL, "initializer '%s' is defined twice", name);
        if ((rc = value_add(eng, name, EVK_CONST, DT_INVALID, e)))
            return rc;
        struct eng_value *v = &eng->vals[eng->n_vals - 1];
        snprintf(what, sizeof what, "initializer '%s'", name);
        if ((rc = engine_tensor_from_proto(tp, what, v->name, &v->init, e)))
            return rc;
        v->dtype = v->init.dtype;
        release_proto_data(tp);
    }

    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *vi = g->input[i];
        const char *name = vi->name ? vi->name : "";
        int found = value_find(eng, name);
        if (found >= 0 && eng->vals[found].kind == EVK_CONST)
            continue; /* an initializer listed as an input is a weight, not a model input */
        if (!*name || found >= 0)
            return cerr_set(e, CORRAL_EINVAL, "graph input #%zu ('%s') has %s name", i, name,
                            *name ? "a duplicate" : "an empty");
        struct engine_io_info *io = &eng->inputs[eng->n_inputs];
        int32_t et = 0;
        snprintf(what, sizeof what, "model input '%s'", name);
        if ((rc = io_info_from_value_info(vi, what, io, &et, e)))
            return rc;
        enum dtype dt = io->dtype = engine_dtype_from_onnx(et);
        if (dt == DT_INVALID)
            return cerr_set(e, et ? CORRAL_EUNSUPP : CORRAL_EINVAL,
                            "model input '%s' has data type %s, which the engine does not "
                            "support", name,
                            et ? engine_onnx_type_name(et) : "UNDEFINED (no type given)");
        if ((rc = value_add(eng, name, EVK_INPUT, dt, e)))
            return rc;
        io->name = eng->vals[eng->n_vals - 1].name;
        eng->input_val[eng->n_inputs++] = (int)eng->n_vals - 1;
    }

    for (size_t i = 0; i < g->n_node; i++)
        if ((rc = add_node(eng, g, i, e)))
            return rc;

    for (size_t i = 0; i < g->n_output; i++) {
        const Onnx__ValueInfoProto *vi = g->output[i];
        const char *name = vi->name ? vi->name : "";
        int v = value_find(eng, name);
        if (v < 0)
            return cerr_set(e, CORRAL_EINVAL, "graph output '%s' is not produced by any node, "
                            "initializer or input", name);
        struct engine_io_info *io = &eng->outputs[i];
        int32_t et = 0;
        snprintf(what, sizeof what, "model output '%s'", name);
        if ((rc = io_info_from_value_info(vi, what, io, &et, e)))
            return rc;
        io->name = eng->vals[v].name;
        io->dtype = eng->vals[v].dtype;
        if (et && engine_dtype_from_onnx(et) != io->dtype)
            return cerr_set(e, CORRAL_EINVAL, "model output '%s' is declared %s but the graph "
                            "computes %s", name, engine_onnx_type_name(et),
                            dtype_name(io->dtype));
        eng->vals[v].is_output = 1;
        eng->output_val[i] = v;
        eng->n_outputs = i + 1;
    }
    if ((rc = engine_graph_optimize(eng, e)) || (rc = engine_mark_value_inputs(eng, e)))
        return rc;
    for (size_t i = 0; i < eng->n_nodes; i++) {
        const struct eng_node *nd = &eng->nodes[i];
        if (nd->dead || nd->n_in < 2 || nd->in[1] < 0 ||
            (nd->op != EOP_CONV && nd->op != EOP_CONV_TRANSPOSE && nd->op != EOP_GEMM &&
             nd->op != EOP_MATMUL))
            continue;
        struct eng_value *w = &eng->vals[nd->in[1]];
        int other = 0;
        for (int k = 0; k < nd->n_in; k++)
            other |= k != 1 && nd->in[k] == nd->in[1];
        w->single_use_weight = w->kind == EVK_CONST && w->n_uses == 1 && !w->is_output && !other;
    }
    if (eng->have_be) {
        for (size_t i = 0; i < eng->n_vals; i++) {
            struct eng_value *v = &eng->vals[i];
            if (v->kind == EVK_CONST && v->n_uses &&
                (rc = eng->be.ops->weight_upload(&eng->be, (int)i, &v->init, e)))
                return rc;
        }
    }
    return CORRAL_OK;
}

int engine_load_buffer(const void *buf, size_t len, const struct engine_options *opt,
                       struct engine **out, struct cerr *e)
{
    return engine_load_buffer_named(buf, len, "the model buffer", opt, out, e);
}

/*
 * Loads from `buf`; when `owned` is not NULL it is the caller's heap copy of
 * the file, freed here as soon as the message is unpacked (protobuf-c copies
 * every byte it keeps), so the file and the engine's weights never coexist.
 */
static int load_impl(const void *buf, size_t len, const char *what,
                     const struct engine_options *opt, struct engine **out, void *owned,
                     struct cerr *e)
{
    struct engine_options def = ENGINE_OPTIONS_DEFAULT;
    Onnx__ModelProto *m = NULL;
    struct engine *eng = NULL;
    int rc = CORRAL_OK;
    *out = NULL;
    if (!opt)
        opt = &def;
    if (opt->threads < 0) {
        rc = cerr_set(e, CORRAL_EINVAL, "threads is %d, expected >= 0", opt->threads);
        goto fail;
    }
    pthread_once(&heap_once, heap_policy);
    eng = calloc(1, sizeof *eng);
    if (!eng) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }
    eng->threads = opt->threads ? opt->threads : backend_cpu_count();
    eng->max_plans = ENGINE_DEFAULT_MAX_PLANS;
    struct backend_options bo = {.threads = eng->threads};
    if ((rc = backend_create(opt->device ? opt->device : "cpu", &bo, &eng->be, e)))
        goto fail;
    eng->have_be = 1;
    m = onnx__model_proto__unpack(NULL, len, buf);
    free(owned);
    owned = NULL;
    if (!m) {
        rc = cerr_set(e, CORRAL_EPARSE, "%s is not a valid ONNX model (protobuf parse failed)",
                      what);
        goto fail;
    }
    if ((rc = load_graph(eng, m, e))) {
        cerr_prefix(e, "cannot load %s", what);
        goto fail;
    }
    eng->run_in = calloc(eng->n_inputs + 1, sizeof *eng->run_in);
    eng->in_buf = calloc(eng->n_inputs + 1, sizeof *eng->in_buf);
    eng->in_cap = calloc(eng->n_inputs + 1, sizeof *eng->in_cap);
    if (!eng->run_in || !eng->in_buf || !eng->in_cap) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto fail;
    }
    onnx__model_proto__free_unpacked(m, NULL);
    engine_trim_heap();
    *out = eng;
    return CORRAL_OK;
fail:
    free(owned);
    if (m)
        onnx__model_proto__free_unpacked(m, NULL);
    engine_free(eng);
    return rc;
}

int engine_load_buffer_named(const void *buf, size_t len, const char *what,
                             const struct engine_options *opt, struct engine **out,
                             struct cerr *e)
{
    return load_impl(buf, len, what, opt, out, NULL, e);
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
    return load_impl(buf, len, path, opt, out, buf, e);
}

void engine_free(struct engine *eng)
{
    if (!eng)
        return;
    for (size_t i = 0; i < eng->n_plans; i++)
        engine_plan_free(eng, eng->plans[i]);
    free(eng->plans);
    if (eng->have_be)
        eng->be.ops->destroy(&eng->be);
    for (size_t i = 0; i < eng->n_vals; i++) {
        tensor_release(&eng->vals[i].init);
        free(eng->vals[i].name);
    }
    for (size_t i = 0; i < eng->n_nodes; i++) {
        free(eng->nodes[i].label);
        free(eng->nodes[i].in);
        free(eng->nodes[i].out);
    }
    for (size_t i = 0; i < eng->n_inputs && eng->in_buf; i++)
        free(eng->in_buf[i]);
    free(eng->vals);
    free(eng->map);
    free(eng->nodes);
    free(eng->inputs);
    free(eng->input_val);
    free(eng->outputs);
    free(eng->output_val);
    free(eng->keyed_by);
    free(eng->run_in);
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
int engine_threads(const struct engine *eng) { return eng->threads; }
const char *engine_backend_name(const struct engine *eng) { return eng->be.ops->name; }

void engine_set_max_plans(struct engine *eng, size_t n)
{
    eng->max_plans = n ? n : 1;
}

/* ---- running ---- */

/*
 * Checks one caller tensor against the model's inputs and stores it in
 * run_in at its model position. With `shape_only`, data is not looked at
 * (engine_prepare passes shapes alone), except for a value_keyed input: its
 * values pick the plan, so when given they are checked and kept like a run's
 * (engine_plan_get reports one that is missing).
 */
static int bind_input(struct engine *eng, const struct tensor *t, int shape_only, struct cerr *e)
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
    if (eng->run_in[k].name)
        return cerr_set(e, CORRAL_EINVAL, "input '%s' is given more than once", t->name);
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
    if (shape_only && io->value_keyed && t->data)
        shape_only = 0;
    if (!shape_only) {
        int rc = tensor_check_size(what, t->dtype, t->dims, t->ndim, t->data, t->nbytes, e);
        if (rc)
            return rc;
        if (t->nbytes && !t->data)
            return cerr_set(e, CORRAL_EINVAL, "input '%s' has no data", t->name);
    }
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
    struct tensor *v = &eng->run_in[k];
    *v = *t;
    v->owned = 0;
    v->name = io->name;
    if (shape_only) {
        v->data = NULL;
        return CORRAL_OK;
    }
    /*
     * Kernels read elements through typed pointers, so a buffer that is not
     * aligned to its element size (bytes straight out of a protobuf message)
     * is copied to an aligned scratch buffer kept for the next run.
     */
    size_t es = dtype_size(t->dtype);
    if (t->nbytes && ((uintptr_t)t->data % (es < 16 ? es : 16)) != 0) {
        if (eng->in_cap[k] < t->nbytes) {
            void *nb = realloc(eng->in_buf[k], t->nbytes);
            if (!nb)
                return cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes for input '%s'",
                                t->nbytes, t->name);
            eng->in_buf[k] = nb;
            eng->in_cap[k] = t->nbytes;
        }
        memcpy(eng->in_buf[k], t->data, t->nbytes);
        v->data = eng->in_buf[k];
    }
    return CORRAL_OK;
}


static int bind_all(struct engine *eng, const struct tensor *inputs, size_t n_in, int shape_only,
                    struct cerr *e)
{
    char list[256];
    int rc;
    memset(eng->run_in, 0, eng->n_inputs * sizeof *eng->run_in);
    for (size_t i = 0; i < n_in; i++)
        if ((rc = bind_input(eng, &inputs[i], shape_only, e)))
            return rc;
    for (size_t k = 0; k < eng->n_inputs; k++)
        if (!eng->run_in[k].name)
            return cerr_set(e, CORRAL_EINVAL, "missing input '%s' (model inputs: %s)",
                            eng->inputs[k].name, format_input_list(eng, list, sizeof list));
    return CORRAL_OK;
}

int engine_run_into(struct engine *eng, const struct tensor *inputs, size_t n_in,
                    struct tensor *outputs, struct cerr *e)
{
    struct eng_plan *p = NULL;
    char s1[160], s2[160];
    int rc = bind_all(eng, inputs, n_in, 0, e);
    if (rc || (rc = engine_plan_get(eng, eng->run_in, 0, &p, e)))
        return rc;
    const struct plan_graph *g = engine_plan_graph(p);
    for (size_t i = 0; i < eng->n_outputs; i++) {
        const struct plan_value *v = &g->vals[g->outputs[i]];
        struct tensor *o = &outputs[i];
        int same = o->dtype == v->dtype && o->ndim == v->ndim && o->nbytes == v->nbytes;
        for (int k = 0; same && k < v->ndim; k++)
            same = o->dims[k] == v->dims[k];
        if (!same)
            return cerr_set(e, CORRAL_EINVAL, "output buffer %zu ('%s') is %s %s, the plan "
                            "produces %s %s", i, eng->outputs[i].name, dtype_name(o->dtype),
                            tensor_shape_str(o->dims, o->ndim < 0 ? 0 : o->ndim > TENSOR_MAX_DIMS
                                             ? TENSOR_MAX_DIMS : o->ndim, s1, sizeof s1),
                            dtype_name(v->dtype), tensor_shape_str(v->dims, v->ndim, s2,
                                                                   sizeof s2));
        if (o->nbytes && !o->data)
            return cerr_set(e, CORRAL_EINVAL, "output buffer %zu has no memory", i);
        o->name = eng->outputs[i].name;
    }
    return engine_plan_execute(eng, p, eng->run_in, outputs, e);
}

int engine_run(struct engine *eng, const struct tensor *inputs, size_t n_in,
               struct tensor *outputs, struct cerr *e)
{
    struct eng_plan *p = NULL;
    memset(outputs, 0, eng->n_outputs * sizeof *outputs);
    int rc = bind_all(eng, inputs, n_in, 0, e);
    if (rc || (rc = engine_plan_get(eng, eng->run_in, 0, &p, e)))
        return rc;
    const struct plan_graph *g = engine_plan_graph(p);
    for (size_t i = 0; i < eng->n_outputs; i++) {
        const struct plan_value *v = &g->vals[g->outputs[i]];
        if ((rc = tensor_alloc(&outputs[i], eng->outputs[i].name, v->dtype, v->dims, v->ndim, e)))
            goto fail;
    }
    if ((rc = engine_plan_execute(eng, p, eng->run_in, outputs, e)))
        goto fail;
    return CORRAL_OK;
fail:
    for (size_t i = 0; i < eng->n_outputs; i++)
        tensor_release(&outputs[i]);
    return rc;
}

int engine_prepare(struct engine *eng, const struct tensor *shape_only_inputs, size_t n,
                   struct engine_plan_info *info, struct cerr *e)
{
    struct eng_plan *p = NULL;
    int rc = bind_all(eng, shape_only_inputs, n, 1, e);
    if (rc || (rc = engine_plan_get(eng, eng->run_in, 1, &p, e)))
        return rc;
    if (info) {
        for (size_t i = 0; i < eng->n_plans; i++)
            if (eng->plans[i] == p)
                return engine_plan_info(eng, i, info);
    }
    return CORRAL_OK;
}
