#define _GNU_SOURCE /* asprintf */
#include "batching_models.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "onnx.pb-c.h"

#define ONNX_FLOAT 1

/* Everything a model message points at lives in these fixed pools, freed at once. */
struct mb {
    Onnx__NodeProto nodes[8], *nodep[8];
    size_t n_nodes;
    char *node_io[8][6];
    Onnx__TensorProto inits[8], *initp[8];
    size_t n_inits;
    int64_t init_dims[8][2];
    float *init_data[8];
    Onnx__ValueInfoProto vi[8], *vip[8];
    Onnx__TypeProto tp[8];
    Onnx__TypeProto__Tensor tt[8];
    Onnx__TensorShapeProto sh[8];
    Onnx__TensorShapeProto__Dimension dim[8][4], *dimp[8][4];
    size_t n_vi;
};

static uint32_t rng_state = 12345u;

static float frand(float scale)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return ((float)(rng_state >> 8) / (float)(1u << 24) - 0.5f) * 2.0f * scale;
}

static void add_node(struct mb *m, const char *op, const char *a, const char *b, const char *out)
{
    Onnx__NodeProto *n = &m->nodes[m->n_nodes];
    onnx__node_proto__init(n);
    n->op_type = (char *)op;
    char **io = m->node_io[m->n_nodes];
    io[0] = (char *)a;
    io[1] = (char *)b;
    io[2] = (char *)out;
    n->n_input = b ? 2 : 1;
    n->input = io;
    n->n_output = 1;
    n->output = &io[2];
    m->nodep[m->n_nodes] = n;
    m->n_nodes++;
}

static int add_init(struct mb *m, const char *name, int64_t rows, int64_t cols, float scale)
{
    size_t k = m->n_inits, n = (size_t)(rows * (cols ? cols : 1));
    Onnx__TensorProto *t = &m->inits[k];
    onnx__tensor_proto__init(t);
    m->init_data[k] = malloc(n * sizeof(float));
    if (!m->init_data[k])
        return -1;
    for (size_t i = 0; i < n; i++)
        m->init_data[k][i] = frand(scale);
    m->init_dims[k][0] = rows;
    m->init_dims[k][1] = cols;
    t->name = (char *)name;
    t->n_dims = cols ? 2 : 1;
    t->dims = m->init_dims[k];
    t->has_data_type = 1;
    t->data_type = ONNX_FLOAT;
    t->has_raw_data = 1;
    t->raw_data.data = (uint8_t *)m->init_data[k];
    t->raw_data.len = n * sizeof(float);
    m->initp[k] = t;
    m->n_inits++;
    return 0;
}

/* dims: >= 0 fixed, -1 symbolic (named after its position). */
static Onnx__ValueInfoProto *add_vi(struct mb *m, const char *name, const int64_t *dims, int nd)
{
    static char *const params[] = {"d0", "d1", "d2", "d3"};
    size_t k = m->n_vi++;
    onnx__value_info_proto__init(&m->vi[k]);
    onnx__type_proto__init(&m->tp[k]);
    onnx__type_proto__tensor__init(&m->tt[k]);
    onnx__tensor_shape_proto__init(&m->sh[k]);
    for (int d = 0; d < nd; d++) {
        Onnx__TensorShapeProto__Dimension *x = &m->dim[k][d];
        onnx__tensor_shape_proto__dimension__init(x);
        if (dims[d] >= 0) {
            x->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            x->dim_value = dims[d];
        } else {
            x->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            x->dim_param = params[d];
        }
        m->dimp[k][d] = x;
    }
    m->sh[k].n_dim = (size_t)nd;
    m->sh[k].dim = m->dimp[k];
    m->tt[k].has_elem_type = 1;
    m->tt[k].elem_type = ONNX_FLOAT;
    m->tt[k].shape = &m->sh[k];
    m->tp[k].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    m->tp[k].tensor_type = &m->tt[k];
    m->vi[k].name = (char *)name;
    m->vi[k].type = &m->tp[k];
    m->vip[k] = &m->vi[k];
    return &m->vi[k];
}

static int write_file(const char *path, const void *buf, size_t len, struct cerr *e)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len) {
        if (f)
            fclose(f);
        return cerr_set(e, CORRAL_EIO, "cannot write %s: %s", path, strerror(errno));
    }
    if (fclose(f) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot write %s: %s", path, strerror(errno));
    return CORRAL_OK;
}

static int write_tensor_pb(const char *path, const struct tensor *t, const char *name, struct cerr *e)
{
    Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
    tp.name = (char *)name;
    tp.n_dims = (size_t)t->ndim;
    tp.dims = (int64_t *)t->dims;
    tp.has_data_type = 1;
    tp.data_type = ONNX_FLOAT;
    tp.has_raw_data = 1;
    tp.raw_data.data = t->data;
    tp.raw_data.len = t->nbytes;
    size_t n = onnx__tensor_proto__get_packed_size(&tp);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    onnx__tensor_proto__pack(&tp, buf);
    int rc = write_file(path, buf, n, e);
    free(buf);
    return rc;
}

static int mkdirs(const char *path, struct cerr *e)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return cerr_set(e, CORRAL_EIO, "cannot create %s: %s", p, strerror(errno));
    return CORRAL_OK;
}

static int write_config(const char *dir, const char *name, const char *ios, const char *batching,
                        struct cerr *e)
{
    char path[1400];
    char *text = NULL;
    snprintf(path, sizeof path, "%s/config.json", dir);
    int n = asprintf(&text, "{\"name\": \"%s\", \"platform\": \"onnx\", %s,\n"
                            " \"parity\": {\"atol\": 1e-4, \"rtol\": 0}%s%s}\n",
                     name, ios, batching ? ",\n \"batching\": " : "", batching ? batching : "");
    if (n < 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    int rc = write_file(path, text, (size_t)n, e);
    free(text);
    return rc;
}

int bmodel_write(const char *repo, const char *name, enum bmodel_kind kind,
                 const char *batching_json, struct cerr *e)
{
    struct mb *m = calloc(1, sizeof *m);
    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
    Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT, *opsetp = &opset;
    Onnx__ValueInfoProto *outs[2];
    struct engine *eng = NULL;
    struct tensor in = {0}, out[2];
    uint8_t *buf = NULL;
    char dir[1024], path[1200];
    const char *ios;
    int rc = CORRAL_OK;
    memset(out, 0, sizeof out);
    if (!m)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    rng_state = 12345u;
    if (kind == BMODEL_SEQ) {
        static const int64_t xd[] = {-1, -1, 8}, hd[] = {-1, -1, 16}, yd[] = {-1, -1, 4};
        if (add_init(m, "w1", 8, 16, 0.5f) || add_init(m, "b1", 16, 0, 0.2f) ||
            add_init(m, "w2", 16, 4, 0.5f)) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto out;
        }
        add_node(m, "MatMul", "x", "w1", "t1");
        add_node(m, "Add", "t1", "b1", "t2");
        add_node(m, "Relu", "t2", NULL, "h");
        add_node(m, "MatMul", "h", "w2", "t3");
        add_node(m, "Tanh", "t3", NULL, "y");
        add_vi(m, "x", xd, 3);
        outs[0] = add_vi(m, "h", hd, 3);
        outs[1] = add_vi(m, "y", yd, 3);
        graph.n_output = 2;
        ios = "\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP32\", \"shape\": [-1, -1, 8]}],\n"
              " \"outputs\": [{\"name\": \"h\", \"datatype\": \"FP32\", \"shape\": [-1, -1, 16]},\n"
              "             {\"name\": \"y\", \"datatype\": \"FP32\", \"shape\": [-1, -1, 4]}]";
    } else {
        static const int64_t xd[] = {-1, 784}, yd[] = {-1, 10};
        if (add_init(m, "w1", 784, 512, 0.05f) || add_init(m, "b1", 512, 0, 0.1f) ||
            add_init(m, "w2", 512, 10, 0.1f) || add_init(m, "b2", 10, 0, 0.1f)) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto out;
        }
        add_node(m, "MatMul", "input", "w1", "t1");
        add_node(m, "Add", "t1", "b1", "t2");
        add_node(m, "Relu", "t2", NULL, "t3");
        add_node(m, "MatMul", "t3", "w2", "t4");
        add_node(m, "Add", "t4", "b2", "logits");
        add_vi(m, "input", xd, 2);
        outs[0] = add_vi(m, "logits", yd, 2);
        graph.n_output = 1;
        ios = "\"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [-1, 784]}],\n"
              " \"outputs\": [{\"name\": \"logits\", \"datatype\": \"FP32\", \"shape\": [-1, 10]}]";
    }
    graph.name = (char *)name;
    graph.n_node = m->n_nodes;
    graph.node = m->nodep;
    graph.n_initializer = m->n_inits;
    graph.initializer = m->initp;
    graph.n_input = 1;
    graph.input = &m->vip[0];
    graph.output = outs;
    opset.version = 13;
    opset.has_version = 1;
    model.has_ir_version = 1;
    model.ir_version = 8;
    model.n_opset_import = 1;
    model.opset_import = &opsetp;
    model.graph = &graph;

    size_t n = onnx__model_proto__get_packed_size(&model);
    buf = malloc(n);
    if (!buf) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    onnx__model_proto__pack(&model, buf);
    snprintf(dir, sizeof dir, "%s/%s/1/vectors/0", repo, name);
    if ((rc = mkdirs(dir, e)))
        goto out;
    snprintf(path, sizeof path, "%s/%s/1/model.onnx", repo, name);
    if ((rc = write_file(path, buf, n, e)))
        goto out;
    snprintf(path, sizeof path, "%s/%s", repo, name);
    if ((rc = write_config(path, name, ios, batching_json, e)))
        goto out;

    /* One parity vector: a two-row input and what the engine makes of it. */
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    if ((rc = engine_load_buffer(buf, n, &eo, &eng, e)))
        goto out;
    int64_t dims[3] = {2, 5, 8};
    int nd = 3;
    if (kind == BMODEL_MLP) {
        dims[1] = 784;
        nd = 2;
    }
    if ((rc = tensor_alloc(&in, kind == BMODEL_SEQ ? "x" : "input", DT_FP32, dims, nd, e)))
        goto out;
    for (size_t i = 0; i < in.nbytes / 4; i++)
        ((float *)in.data)[i] = frand(1.0f);
    if ((rc = engine_run(eng, &in, 1, out, e)))
        goto out;
    snprintf(path, sizeof path, "%s/input_0.pb", dir);
    if ((rc = write_tensor_pb(path, &in, in.name, e)))
        goto out;
    for (size_t j = 0; j < engine_num_outputs(eng); j++) {
        snprintf(path, sizeof path, "%s/output_%zu.pb", dir, j);
        if ((rc = write_tensor_pb(path, &out[j], engine_output(eng, j)->name, e)))
            goto out;
    }
out:
    tensor_release(&in);
    tensor_release(&out[0]);
    tensor_release(&out[1]);
    engine_free(eng);
    free(buf);
    for (size_t k = 0; k < m->n_inits; k++)
        free(m->init_data[k]);
    free(m);
    return rc;
}

int bmodel_link_version(const char *repo, const char *name, const char *version_dir,
                        const char *io_json, const char *batching_json, struct cerr *e)
{
    char dir[1024], link[1200];
    snprintf(dir, sizeof dir, "%s/%s", repo, name);
    int rc = mkdirs(dir, e);
    if (rc)
        return rc;
    snprintf(link, sizeof link, "%s/1", dir);
    unlink(link);
    if (symlink(version_dir, link) != 0)
        return cerr_set(e, CORRAL_EIO, "cannot link %s: %s", link, strerror(errno));
    return write_config(dir, name, io_json, batching_json, e);
}

int bmodel_link_digits(const char *repo, const char *name, const char *digits_version_dir,
                       const char *batching_json, struct cerr *e)
{
    return bmodel_link_version(
        repo, name, digits_version_dir,
        "\"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [-1, 64]}],\n"
        " \"outputs\": [{\"name\": \"logits\", \"datatype\": \"FP32\", \"shape\": [-1, 10]}]",
        batching_json, e);
}
