#include <pthread.h>

#include "engine_internal.h"

/* Family of each op: which setup/infer/kernel file handles it. */
enum fam { F_ELEM, F_SHAPE, F_REDUCE, F_NN };

static const struct {
    enum eng_op op;
    int min_in, max_in, min_out, max_out;
    enum fam fam;
} arity[] = {
    {EOP_CONV, 2, 3, 1, 1, F_NN},
    {EOP_CONV_TRANSPOSE, 2, 3, 1, 1, F_NN},
    {EOP_BATCHNORM, 5, 5, 1, 3, F_REDUCE},
    {EOP_INSTANCENORM, 3, 3, 1, 1, F_REDUCE},
    {EOP_LAYERNORM, 2, 3, 1, 3, F_REDUCE},
    {EOP_MAXPOOL, 1, 1, 1, 2, F_NN},
    {EOP_AVGPOOL, 1, 1, 1, 1, F_NN},
    {EOP_GLOBALAVGPOOL, 1, 1, 1, 1, F_NN},
    {EOP_GLOBALMAXPOOL, 1, 1, 1, 1, F_NN},
    {EOP_GEMM, 2, 3, 1, 1, F_NN},
    {EOP_MATMUL, 2, 2, 1, 1, F_NN},
    {EOP_ADD, 2, 2, 1, 1, F_ELEM},
    {EOP_SUB, 2, 2, 1, 1, F_ELEM},
    {EOP_MUL, 2, 2, 1, 1, F_ELEM},
    {EOP_DIV, 2, 2, 1, 1, F_ELEM},
    {EOP_POW, 2, 2, 1, 1, F_ELEM},
    {EOP_MOD, 2, 2, 1, 1, F_ELEM},
    {EOP_MIN, 1, -1, 1, 1, F_ELEM},
    {EOP_MAX, 1, -1, 1, 1, F_ELEM},
    {EOP_SUM, 1, -1, 1, 1, F_ELEM},
    {EOP_MEAN, 1, -1, 1, 1, F_ELEM},
    {EOP_PRELU, 2, 2, 1, 1, F_ELEM},
    {EOP_EQUAL, 2, 2, 1, 1, F_ELEM},
    {EOP_LESS, 2, 2, 1, 1, F_ELEM},
    {EOP_LESS_EQUAL, 2, 2, 1, 1, F_ELEM},
    {EOP_GREATER, 2, 2, 1, 1, F_ELEM},
    {EOP_GREATER_EQUAL, 2, 2, 1, 1, F_ELEM},
    {EOP_AND, 2, 2, 1, 1, F_ELEM},
    {EOP_OR, 2, 2, 1, 1, F_ELEM},
    {EOP_XOR, 2, 2, 1, 1, F_ELEM},
    {EOP_NOT, 1, 1, 1, 1, F_ELEM},
    {EOP_WHERE, 3, 3, 1, 1, F_ELEM},
    {EOP_CLIP, 1, 3, 1, 1, F_ELEM},
    {EOP_SOFTMAX, 1, 1, 1, 1, F_REDUCE},
    {EOP_LOGSOFTMAX, 1, 1, 1, 1, F_REDUCE},
    {EOP_CONCAT, 1, -1, 1, 1, F_SHAPE},
    {EOP_SPLIT, 1, 2, 1, -1, F_SHAPE},
    {EOP_SLICE, 1, 5, 1, 1, F_SHAPE},
    {EOP_GATHER, 2, 2, 1, 1, F_SHAPE},
    {EOP_TRANSPOSE, 1, 1, 1, 1, F_SHAPE},
    {EOP_RESHAPE, 2, 2, 1, 1, F_SHAPE},
    {EOP_FLATTEN, 1, 1, 1, 1, F_SHAPE},
    {EOP_SQUEEZE, 1, 2, 1, 1, F_SHAPE},
    {EOP_UNSQUEEZE, 1, 2, 1, 1, F_SHAPE},
    {EOP_PAD, 1, 4, 1, 1, F_SHAPE},
    {EOP_TILE, 2, 2, 1, 1, F_SHAPE},
    {EOP_EXPAND, 2, 2, 1, 1, F_SHAPE},
    {EOP_SHAPE, 1, 1, 1, 1, F_SHAPE},
    {EOP_SIZE, 1, 1, 1, 1, F_SHAPE},
    {EOP_CONSTANTOFSHAPE, 1, 1, 1, 1, F_SHAPE},
    {EOP_RANGE, 3, 3, 1, 1, F_SHAPE},
    {EOP_CAST, 1, 1, 1, 1, F_SHAPE},
    {EOP_REDUCEMEAN, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCESUM, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCEMAX, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCEMIN, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCEPROD, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCESUMSQUARE, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCEL1, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCEL2, 1, 2, 1, 1, F_REDUCE},
    {EOP_REDUCELOGSUMEXP, 1, 2, 1, 1, F_REDUCE},
    {EOP_ARGMAX, 1, 1, 1, 1, F_REDUCE},
    {EOP_ARGMIN, 1, 1, 1, 1, F_REDUCE},
    {EOP_DROPOUT, 1, 3, 1, 2, F_SHAPE},
    {EOP_IDENTITY, 1, 1, 1, 1, F_SHAPE},
    {EOP_CONSTANT, 0, 0, 1, 1, F_SHAPE},
    {EOP_COPY, 1, 1, 1, 1, F_SHAPE},
};

/*
 * Inputs whose values shape inference reads (bit k = input k), by op. Slice
 * before opset 10 and Pad before opset 11 take these as attributes and have
 * no such inputs, so the bits name inputs they do not have.
 */
static const struct {
    enum eng_op op;
    unsigned mask;
} value_ins[] = {
    {EOP_SPLIT, 1u << 1},         /* split sizes */
    {EOP_SLICE, 0xfu << 1},       /* starts, ends, axes, steps */
    {EOP_RESHAPE, 1u << 1},       /* shape */
    {EOP_SQUEEZE, 1u << 1},       /* axes */
    {EOP_UNSQUEEZE, 1u << 1},     /* axes */
    {EOP_PAD, 0x7u << 1},         /* pads, constant_value (resolved into the step), axes */
    {EOP_TILE, 1u << 1},          /* repeats */
    {EOP_EXPAND, 1u << 1},        /* shape */
    {EOP_CONSTANTOFSHAPE, 1u},    /* shape */
    {EOP_RANGE, 0x7u},            /* start, limit, delta: the length */
    {EOP_REDUCEMEAN, 1u << 1},    /* axes */
    {EOP_REDUCESUM, 1u << 1},
    {EOP_REDUCEMAX, 1u << 1},
    {EOP_REDUCEMIN, 1u << 1},
    {EOP_REDUCEPROD, 1u << 1},
    {EOP_REDUCESUMSQUARE, 1u << 1},
    {EOP_REDUCEL1, 1u << 1},
    {EOP_REDUCEL2, 1u << 1},
    {EOP_REDUCELOGSUMEXP, 1u << 1},
};

static struct eng_opdef defs[EOP_COUNT];
static pthread_once_t defs_once = PTHREAD_ONCE_INIT;

/*
 * The table is filled once, on first use (engines may load on several
 * threads). Ops not listed in `arity` are the plain unary elementwise ones.
 */
static void defs_init(void)
{
    for (int i = 0; i < EOP_COUNT; i++) {
        defs[i] = (struct eng_opdef){eng_op_name((enum eng_op)i), 1, 1, 1, 1, eng_setup_elem,
                                     eng_infer_elem, eng_kernel_elem, 0};
    }
    for (size_t k = 0; k < sizeof arity / sizeof arity[0]; k++) {
        struct eng_opdef *d = &defs[arity[k].op];
        d->min_in = arity[k].min_in;
        d->max_in = arity[k].max_in;
        d->min_out = arity[k].min_out;
        d->max_out = arity[k].max_out;
        switch (arity[k].fam) {
        case F_ELEM: break;
        case F_SHAPE:
            d->setup = eng_setup_shape, d->infer = eng_infer_shape, d->kernel = eng_kernel_shape;
            break;
        case F_REDUCE:
            d->setup = eng_setup_reduce, d->infer = eng_infer_reduce,
            d->kernel = eng_kernel_reduce;
            break;
        case F_NN:
            d->setup = eng_setup_nn, d->infer = eng_infer_nn, d->kernel = eng_kernel_nn;
            break;
        }
    }
    for (size_t k = 0; k < sizeof value_ins / sizeof value_ins[0]; k++)
        defs[value_ins[k].op].value_in = value_ins[k].mask;
}

const struct eng_opdef *eng_opdef(enum eng_op op)
{
    pthread_once(&defs_once, defs_init);
    return op < EOP_COUNT ? &defs[op] : NULL;
}

int eng_kernel_run(const struct plan_step *st, const struct tensor *in, struct tensor *out,
                   struct cerr *e)
{
    const struct eng_opdef *d = eng_opdef(st->op);
    if (!d || !d->kernel)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: the engine has no reference kernel for %s",
                        st->label, eng_op_name(st->op));
    return d->kernel(st, in, out, e);
}
