/*
 * ONNX model loading (replica/engine: protobuf parse, initializers, graph validation,
 * optimisation) and planning (shape inference, constant folding, fusion, the memory
 * plan) on the CPU backend: the whole input is a model.onnx. A model that loads is
 * planned once for small shapes: every variable dimension at 2, value-keyed inputs
 * all zeros. Models whose inputs would exceed FUZZ_MAX_ELEMS elements at those shapes
 * are loaded but not planned, so one input cannot ask for gigabytes. A refusal must
 * name its reason; a plan must report the shapes it was built for.
 */

#include "fuzz.h"
#include "engine.h"

#define FUZZ_MAX_ELEMS 4096

static int plan_shapes(const struct engine *eng, struct tensor *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct engine_io_info *io = engine_input(eng, i);
        struct tensor *t = &in[i];
        int64_t elems = 1;
        memset(t, 0, sizeof *t);
        t->name = io->name;
        t->dtype = io->dtype;
        t->ndim = io->ndim < 0 ? 1 : io->ndim;
        for (int d = 0; d < t->ndim; d++) {
            t->dims[d] = io->ndim < 0 || io->dims[d] < 0 ? 2 : io->dims[d];
            if (t->dims[d] > FUZZ_MAX_ELEMS || (elems *= t->dims[d]) > FUZZ_MAX_ELEMS)
                return -1;
        }
        size_t es = dtype_size(t->dtype);
        if (es == 0)
            return -1;
        t->nbytes = (size_t)elems * es;
        t->data = calloc(1, t->nbytes ? t->nbytes : 1);
        if (!t->data)
            return -1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = fuzz_copy(data, size);
    if (!copy)
        return 0;
    struct engine_options opt = ENGINE_OPTIONS_DEFAULT;
    opt.threads = 1;
    struct engine *eng = NULL;
    struct cerr e = {0};
    int rc = engine_load_buffer_named(copy, size, "model.onnx", &opt, &eng, &e);
    free(copy);
    if (rc) {
        CHECK(eng == NULL, "a refused load returned an engine");
        CHECK(e.msg[0] != '\0', "load refused (%d) without a reason", rc);
        return 0;
    }
    size_t n = engine_num_inputs(eng);
    struct tensor *in = calloc(n + 1, sizeof *in);
    if (in && plan_shapes(eng, in, n) == 0) {
        struct engine_plan_info info;
        struct cerr pe = {0};
        rc = engine_prepare(eng, in, n, &info, &pe);
        if (rc) {
            CHECK(pe.msg[0] != '\0', "plan refused (%d) without a reason", rc);
        } else {
            CHECK(info.n_inputs == n && info.n_outputs == engine_num_outputs(eng),
                  "plan reports %zu inputs and %zu outputs for a model of %zu and %zu",
                  info.n_inputs, info.n_outputs, n, engine_num_outputs(eng));
            for (size_t i = 0; i < n; i++)
                CHECK(info.inputs[i].ndim == in[i].ndim, "plan input %zu has rank %d, given %d",
                      i, info.inputs[i].ndim, in[i].ndim);
        }
    }
    for (size_t i = 0; in && i < n; i++)
        free(in[i].data);
    free(in);
    engine_free(eng);
    return 0;
}
