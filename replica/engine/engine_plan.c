#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "engine_mem.h"

/*
 * Per-shape plans. A plan specialises the loaded graph for one set of input
 * shapes: it infers every value's shape, folds what depends only on shapes
 * and constants (Shape -> Gather -> Concat -> Reshape chains), drops what no
 * output needs, fuses epilogues (MatMul + bias, Conv + residual Add,
 * activations into Conv/Gemm/MatMul), places intermediates in one arena by
 * liveness and hands the result to the backend to compile. Running a plan
 * then only executes what the backend built.
 */

/*
 * Largest step output (bytes, all outputs together) folded into a plan when
 * it is computed from a value_keyed input. Shapes, pads and axes are far
 * smaller; larger values (a ConstantOfShape fill) run as steps instead, so a
 * cache of plans for caller-chosen values does not hold caller-sized
 * constants.
 */
#define PLAN_MAX_KEYED_FOLD ((size_t)64 << 10)

struct eng_plan {
    struct plan_graph g;
    struct plan_value *vals;
    int n_vals, cap_vals;
    struct plan_step *steps;
    int *step_dead;
    int n_steps;
    int **idx; /* per step: its in[] and out[] arrays (owned) */
    int *inputs, *outputs;
    struct tensor *folded; /* owned data of constants folded in this plan */
    int n_folded;
    struct engine_io_info *in_info, *out_info;
    /*
     * Per model input: for a value_keyed one, the values this plan was built
     * for (owned; also the data of the constant that stands in for the input
     * inside the plan); an empty tensor for the others.
     */
    struct tensor *keys;
    int n_keys;
    void *compiled;
    size_t arena_bytes;
    uint64_t last_used;
    int pinned;
};

void engine_plan_free(struct engine *eng, struct eng_plan *p)
{
    if (!p)
        return;
    if (p->compiled)
        eng->be.ops->plan_free(&eng->be, p->compiled);
    for (int i = 0; i < p->n_folded; i++)
        tensor_release(&p->folded[i]);
    for (int i = 0; i < p->n_keys; i++)
        tensor_release(&p->keys[i]);
    free(p->keys);
    for (int i = 0; i < p->n_steps; i++)
        free(p->idx ? p->idx[i] : NULL);
    free(p->idx);
    free(p->folded);
    free(p->vals);
    free(p->steps);
    free(p->step_dead);
    free(p->inputs);
    free(p->outputs);
    free(p->in_info);
    free(p->out_info);
    free(p);
}

const struct plan_graph *engine_plan_graph(const struct eng_plan *p)
{
    return &p->g;
}

static int is_act_op(enum eng_op op)
{
    switch (op) {
    case EOP_RELU:
    case EOP_LEAKYRELU:
    case EOP_CLIP:
    case EOP_SIGMOID:
    case EOP_TANH:
    case EOP_HARDSIGMOID:
    case EOP_HARDSWISH:
    case EOP_GELU: return 1;
    default: return 0;
    }
}

/* The epilogue form of an activation step; 0 when it cannot be one (Clip bounds unknown). */
static int act_of(const struct eng_plan *p, const struct plan_step *s, struct eng_attrs *a)
{
    a->act_alpha = a->act_beta = 0;
    switch (s->op) {
    case EOP_RELU: a->act = EACT_RELU; return 1;
    case EOP_LEAKYRELU: a->act = EACT_LEAKYRELU, a->act_alpha = s->a.alpha; return 1;
    case EOP_SIGMOID: a->act = EACT_SIGMOID; return 1;
    case EOP_TANH: a->act = EACT_TANH; return 1;
    case EOP_HARDSWISH: a->act = EACT_HARDSWISH; return 1;
    case EOP_HARDSIGMOID:
        a->act = EACT_HARDSIGMOID, a->act_alpha = s->a.alpha, a->act_beta = s->a.beta;
        return 1;
    case EOP_GELU: a->act = s->a.approximate_tanh ? EACT_GELU_TANH : EACT_GELU_ERF; return 1;
    case EOP_CLIP: {
        float lo = s->a.alpha, hi = s->a.beta;
        for (int k = 1; k < s->n_in && k < 3; k++) {
            if (s->in[k] < 0)
                continue;
            const struct plan_value *v = &p->vals[s->in[k]];
            if (v->kind != PV_CONST || v->dtype != DT_FP32 || v->nbytes != sizeof(float))
                return 0;
            (k == 1 ? &lo : &hi)[0] = *(const float *)v->data;
        }
        a->act = EACT_CLIP, a->act_alpha = lo, a->act_beta = hi;
        return 1;
    }
    default: return 0;
    }
}

static int same_shape(const struct plan_value *a, const struct plan_value *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i])
            return 0;
    return 1;
}

static void count_readers(struct eng_plan *p, int *uses, int *reader)
{
    for (int v = 0; v < p->n_vals; v++) {
        uses[v] = p->vals[v].output_index >= 0;
        reader[v] = -1;
    }
    for (int s = 0; s < p->n_steps; s++) {
        if (p->step_dead[s])
            continue;
        for (int k = 0; k < p->steps[s].n_in; k++) {
            int v = p->steps[s].in[k];
            if (v >= 0) {
                uses[v]++;
                reader[v] = s;
            }
        }
    }
}

/*
 * Folds single-consumer chains into the producing Conv/Gemm/MatMul. The
 * merged step takes the consumer's place in the order, since the consumer
 * may read values produced after the producer (a residual branch).
 */
static void fuse_epilogues(struct eng_plan *p, int *uses, int *reader)
{
    count_readers(p, uses, reader);
    for (int s = 0; s < p->n_steps; s++) {
        if (p->step_dead[s])
            continue;
        struct plan_step *st = &p->steps[s];
        if (st->op != EOP_CONV && st->op != EOP_GEMM && st->op != EOP_MATMUL)
            continue;
        for (;;) {
            int v = st->out[0];
            if (uses[v] != 1 || p->vals[v].output_index >= 0 || reader[v] < 0)
                break;
            int c = reader[v];
            struct plan_step *cs = &p->steps[c];
            int *io = p->idx[s];
            if (cs->op == EOP_ADD && st->a.act == EACT_NONE) {
                int other = cs->in[0] == v ? cs->in[1] : cs->in[0];
                if (other == v)
                    break;
                const struct plan_value *ov = &p->vals[other], *vv = &p->vals[v];
                if (st->op == EOP_MATMUL && st->n_in == 2 && ov->kind == PV_CONST &&
                    ov->dtype == DT_FP32 && ov->ndim == 1 && vv->ndim >= 1 &&
                    ov->dims[0] == vv->dims[vv->ndim - 1]) {
                    io[2] = other;
                    st->n_in = 3;
                } else if (st->op == EOP_CONV && st->a.sum_input < 0 && same_shape(ov, vv)) {
                    if (st->n_in < 3)
                        io[2] = -1;
                    io[3] = other;
                    st->n_in = 4;
                    st->a.sum_input = 3;
                } else {
                    break;
                }
            } else if (is_act_op(cs->op) && st->a.act == EACT_NONE) {
                struct eng_attrs a = st->a;
                if (!act_of(p, cs, &a))
                    break;
                st->a = a;
            } else {
                break;
            }
            /* Move the merged step into the consumer's slot. */
            ((int *)st->out)[0] = cs->out[0];
            struct plan_step merged = *st;
            int *tmp = p->idx[c];
            p->idx[c] = p->idx[s];
            p->idx[s] = tmp;
            p->steps[c] = merged;
            p->step_dead[s] = 1;
            count_readers(p, uses, reader);
            s = c;
            st = &p->steps[c];
        }
    }
}

static int add_value(struct eng_plan *p, struct cerr *e)
{
    if (p->n_vals >= p->cap_vals)
        return cerr_set(e, CORRAL_EINTERNAL, "plan value table full");
    struct plan_value *v = &p->vals[p->n_vals];
    memset(v, 0, sizeof *v);
    v->input_index = v->output_index = v->producer = v->last_use = -1;
    v->weight_id = -1;
    return p->n_vals++;
}

/*
 * Steps get their index arrays with room to grow: an epilogue fusion adds a
 * bias or a residual input, so in[] has 4 slots at least and out[] follows it.
 */
static int add_step(struct eng_plan *p, const struct eng_node *nd, struct cerr *e)
{
    int s = p->n_steps;
    int nin = nd->n_in < 4 ? 4 : nd->n_in;
    int *io = calloc((size_t)nin + 2 + (size_t)nd->n_out + 1, sizeof *io);
    if (!io)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory building a plan");
    for (int k = 0; k < nin; k++)
        io[k] = k < nd->n_in ? nd->in[k] : -1;
    /* out[] begins after in[] plus two spare slots, matching fuse_epilogues' layout. */
    int *out = io + (nd->n_in < 4 ? 4 : nd->n_in);
    for (int k = 0; k < nd->n_out; k++)
        out[k] = nd->out[k];
    p->idx[s] = io;
    struct plan_step *st = &p->steps[s];
    memset(st, 0, sizeof *st);
    st->op = nd->op;
    st->label = nd->label;
    st->a = nd->a;
    st->n_in = nd->n_in;
    st->in = io;
    st->n_out = nd->n_out;
    st->out = out;
    p->step_dead[s] = 0;
    p->n_steps++;
    return CORRAL_OK;
}

static int keep_folded(struct eng_plan *p, struct tensor *t, struct plan_value *v)
{
    p->folded[p->n_folded++] = *t;
    v->kind = PV_CONST;
    v->data = t->data;
    return CORRAL_OK;
}

static int no_fold(enum eng_op op)
{
    return op == EOP_CONV || op == EOP_CONV_TRANSPOSE || op == EOP_MAXPOOL ||
           op == EOP_AVGPOOL || op == EOP_GLOBALAVGPOOL || op == EOP_GLOBALMAXPOOL;
}

static int build_plan(struct engine *eng, const struct tensor *in, struct eng_plan *p,
                      struct cerr *e)
{
    int rc = CORRAL_OK;
    int maxio = 1;
    for (size_t i = 0; i < eng->n_nodes; i++) {
        if (eng->nodes[i].n_in > maxio)
            maxio = eng->nodes[i].n_in;
        if (eng->nodes[i].n_out > maxio)
            maxio = eng->nodes[i].n_out;
    }
    const struct plan_value **inp = calloc((size_t)maxio + 1, sizeof *inp);
    struct plan_value **outp = calloc((size_t)maxio + 1, sizeof *outp);
    struct tensor *res = calloc((size_t)maxio + 1, sizeof *res);
    int *uses = NULL, *reader = NULL, *alias = NULL;
    unsigned char *from_key = NULL; /* per value: a constant computed from a value_keyed input */
    /* Room for a copy step per output and a constant per value_keyed input. */
    p->cap_vals = (int)(eng->n_vals + eng->n_outputs + eng->n_inputs + 1);
    p->vals = calloc((size_t)p->cap_vals, sizeof *p->vals);
    p->steps = calloc(eng->n_nodes + eng->n_outputs + 1, sizeof *p->steps);
    p->step_dead = calloc(eng->n_nodes + eng->n_outputs + 1, sizeof *p->step_dead);
    p->idx = calloc(eng->n_nodes + eng->n_outputs + 1, sizeof *p->idx);
    p->folded = calloc(eng->n_vals + 1, sizeof *p->folded);
    p->inputs = calloc(eng->n_inputs + 1, sizeof *p->inputs);
    p->outputs = calloc(eng->n_outputs + 1, sizeof *p->outputs);
    p->in_info = calloc(eng->n_inputs + 1, sizeof *p->in_info);
    p->out_info = calloc(eng->n_outputs + 1, sizeof *p->out_info);
    p->keys = calloc(eng->n_inputs + 1, sizeof *p->keys);
    p->n_keys = p->keys ? (int)eng->n_inputs : 0;
    uses = calloc((size_t)p->cap_vals, sizeof *uses);
    reader = calloc((size_t)p->cap_vals, sizeof *reader);
    alias = calloc((size_t)p->cap_vals, sizeof *alias);
    from_key = calloc((size_t)p->cap_vals, sizeof *from_key);
    if (!inp || !outp || !res || !p->vals || !p->steps || !p->step_dead || !p->idx ||
        !p->folded || !p->inputs || !p->outputs || !p->in_info || !p->out_info || !p->keys ||
        !uses || !reader || !alias || !from_key) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory building a plan");
        goto done;
    }
    for (size_t i = 0; i < eng->n_vals; i++) {
        int v = add_value(p, e);
        const struct eng_value *ev = &eng->vals[i];
        struct plan_value *pv = &p->vals[v];
        pv->name = ev->name;
        pv->dtype = ev->dtype;
        if (ev->kind == EVK_CONST) {
            pv->kind = PV_CONST;
            pv->ndim = ev->init.ndim;
            memcpy(pv->dims, ev->init.dims, sizeof pv->dims);
            pv->nbytes = ev->init.nbytes;
            pv->data = ev->init.data;
            pv->weight_id = (int)i;
        } else {
            pv->kind = ev->kind == EVK_INPUT ? PV_INPUT : PV_TEMP;
        }
    }
    for (size_t k = 0; k < eng->n_inputs; k++) {
        struct plan_value *pv = &p->vals[eng->input_val[k]];
        if ((rc = eng_set_shape(pv, in[k].dtype, in[k].dims, in[k].ndim, e)))
            goto done;
        pv->input_index = (int)k;
        p->inputs[k] = eng->input_val[k];
        p->in_info[k] = eng->inputs[k];
        p->in_info[k].ndim = in[k].ndim;
        memcpy(p->in_info[k].dims, in[k].dims, sizeof p->in_info[k].dims);
    }
    /*
     * A value_keyed input is a constant within its plan: the plan keeps a copy
     * of the values and every step reads that copy, so shape inference sees
     * the values and shape-only chains fold as they do for initializers. The
     * input itself stays a PV_INPUT that no step reads, so backends bind
     * inputs by position as always.
     */
    for (size_t k = 0; k < eng->n_inputs; k++) {
        if (!eng->inputs[k].value_keyed)
            continue;
        struct tensor *key = &p->keys[k];
        if ((rc = tensor_alloc(key, eng->inputs[k].name, in[k].dtype, in[k].dims, in[k].ndim,
                               e)))
            goto done;
        if (key->nbytes)
            memcpy(key->data, in[k].data, key->nbytes);
        int cv = add_value(p, e);
        if (cv < 0) {
            rc = CORRAL_EINTERNAL;
            goto done;
        }
        struct plan_value *kv = &p->vals[cv];
        *kv = p->vals[eng->input_val[k]];
        kv->kind = PV_CONST;
        kv->data = key->data;
        kv->input_index = -1;
        alias[eng->input_val[k]] = cv + 1;
        from_key[cv] = 1;
    }

    for (size_t i = 0; i < eng->n_nodes; i++) {
        const struct eng_node *nd = &eng->nodes[i];
        if (nd->dead)
            continue;
        int s = p->n_steps;
        if ((rc = add_step(p, nd, e)))
            goto done;
        struct plan_step *st = &p->steps[s];
        int all_const = nd->n_in > 0;
        for (int k = 0; k < nd->n_in; k++) {
            if (st->in[k] >= 0 && alias[st->in[k]])
                p->idx[s][k] = alias[st->in[k]] - 1;
            inp[k] = st->in[k] >= 0 ? &p->vals[st->in[k]] : NULL;
            if (inp[k] && inp[k]->kind != PV_CONST)
                all_const = 0;
        }
        for (int k = 0; k < nd->n_out; k++)
            outp[k] = nd->out[k] >= 0 ? &p->vals[nd->out[k]] : NULL;
        int fold = (st->op == EOP_SHAPE || st->op == EOP_SIZE || all_const) && !no_fold(st->op);
        struct eng_infer c = {.st = st, .in = inp, .out = outp, .opset = eng->opset};
        int keyed = 0;
        for (int k = 0; k < nd->n_in; k++)
            keyed |= st->in[k] >= 0 && from_key[st->in[k]];
        if (fold && keyed) {
            /*
             * Values computed from caller-chosen keys may be large
             * (ConstantOfShape, Expand), and a folded constant lives as long as
             * its cached plan: fold only small ones, run the rest as steps.
             * Inference runs on a copy of the attributes, since folding infers
             * again from the originals.
             */
            struct eng_attrs saved = st->a;
            size_t bytes = 0;
            if ((rc = eng_opdef(st->op)->infer(&c, e)))
                goto done;
            for (int k = 0; k < nd->n_out; k++)
                bytes += outp[k] ? outp[k]->nbytes : 0;
            if (bytes > PLAN_MAX_KEYED_FOLD)
                continue;
            st->a = saved;
        }
        if (fold) {
            if ((rc = eng_eval_step(st, inp, outp, eng->opset, res, e)))
                goto done;
            for (int k = 0; k < nd->n_out; k++)
                if (outp[k]) {
                    keep_folded(p, &res[k], outp[k]);
                    from_key[nd->out[k]] = (unsigned char)keyed;
                }
            p->step_dead[s] = 1;
            continue;
        }
        if ((rc = eng_opdef(st->op)->infer(&c, e)))
            goto done;
    }

    for (size_t k = 0; k < eng->n_outputs; k++) {
        int v = eng->output_val[k];
        if (alias[v])
            v = alias[v] - 1;
        if (p->vals[v].kind == PV_TEMP && p->vals[v].output_index < 0) {
            p->vals[v].output_index = (int)k;
            p->outputs[k] = v;
            continue;
        }
        /* A constant, an input or a value already given as another output: copy it. */
        int nv = add_value(p, e);
        if (nv < 0) {
            rc = CORRAL_EINTERNAL;
            goto done;
        }
        struct plan_value *o = &p->vals[nv];
        *o = p->vals[v];
        o->kind = PV_TEMP;
        o->data = NULL;
        o->weight_id = o->input_index = -1;
        o->output_index = (int)k;
        p->outputs[k] = nv;
        struct eng_node cp = {.op = EOP_COPY, .label = (char *)eng->outputs[k].name, .n_in = 1,
                              .n_out = 1};
        int ci = v, co = nv;
        cp.in = &ci;
        cp.out = &co;
        if ((rc = add_step(p, &cp, e)))
            goto done;
    }

    /* Drop steps no output needs, and optional outputs nobody reads. */
    count_readers(p, uses, reader);
    for (int s = p->n_steps - 1; s >= 0; s--) {
        if (p->step_dead[s])
            continue;
        struct plan_step *st = &p->steps[s];
        int needed = 0;
        for (int k = 0; k < st->n_out; k++)
            if (st->out[k] >= 0 && uses[st->out[k]])
                needed = 1;
        if (!needed) {
            p->step_dead[s] = 1;
            for (int k = 0; k < st->n_in; k++)
                if (st->in[k] >= 0)
                    uses[st->in[k]]--;
            continue;
        }
        int *out = (int *)st->out;
        for (int k = 1; k < st->n_out; k++)
            if (out[k] >= 0 && !uses[out[k]] && st->op != EOP_SPLIT)
                out[k] = -1;
    }
    fuse_epilogues(p, uses, reader);

    /* Compact and record liveness. */
    int n = 0;
    for (int s = 0; s < p->n_steps; s++) {
        if (p->step_dead[s]) {
            free(p->idx[s]);
            p->idx[s] = NULL;
            continue;
        }
        p->steps[n] = p->steps[s];
        p->idx[n] = p->idx[s];
        p->step_dead[n] = 0;
        n++;
    }
    for (int s = n; s < p->n_steps; s++)
        p->idx[s] = NULL;
    p->n_steps = n;
    for (int s = 0; s < n; s++) {
        const struct plan_step *st = &p->steps[s];
        for (int k = 0; k < st->n_in; k++)
            if (st->in[k] >= 0)
                p->vals[st->in[k]].last_use = s;
        for (int k = 0; k < st->n_out; k++)
            if (st->out[k] >= 0)
                p->vals[st->out[k]].producer = s;
    }
    struct mem_req *req = calloc((size_t)p->n_vals + 1, sizeof *req);
    int *which = calloc((size_t)p->n_vals + 1, sizeof *which);
    size_t nr = 0;
    if (!req || !which) {
        free(req);
        free(which);
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory planning memory");
        goto done;
    }
    for (int v = 0; v < p->n_vals; v++) {
        struct plan_value *pv = &p->vals[v];
        if (pv->kind != PV_TEMP || pv->producer < 0)
            continue;
        req[nr].bytes = pv->nbytes;
        req[nr].first = pv->producer;
        req[nr].last = pv->output_index >= 0 ? INT_MAX : pv->last_use;
        which[nr++] = v;
    }
    rc = plan_mem_assign(req, nr, 64, &p->g.arena_bytes, e);
    for (size_t i = 0; !rc && i < nr; i++)
        p->vals[which[i]].offset = req[i].offset;
    free(req);
    free(which);
    if (rc)
        goto done;

    p->g.vals = p->vals;
    p->g.n_vals = p->n_vals;
    p->g.steps = p->steps;
    p->g.n_steps = p->n_steps;
    p->g.n_inputs = (int)eng->n_inputs;
    p->g.inputs = p->inputs;
    p->g.n_outputs = (int)eng->n_outputs;
    p->g.outputs = p->outputs;
    for (size_t k = 0; k < eng->n_outputs; k++) {
        const struct plan_value *v = &p->vals[p->outputs[k]];
        p->out_info[k] = eng->outputs[k];
        p->out_info[k].dtype = v->dtype;
        p->out_info[k].ndim = v->ndim;
        memcpy(p->out_info[k].dims, v->dims, sizeof v->dims);
    }
    rc = eng->be.ops->plan_compile(&eng->be, &p->g, &p->compiled, &p->arena_bytes, e);
done:
    free(inp);
    free(outp);
    free(res);
    free(uses);
    free(reader);
    free(alias);
    free(from_key);
    return rc;
}

static int plan_matches(const struct engine *eng, const struct eng_plan *p,
                        const struct tensor *in)
{
    for (size_t k = 0; k < eng->n_inputs; k++) {
        const struct engine_io_info *pi = &p->in_info[k];
        if (pi->ndim != in[k].ndim)
            return 0;
        for (int i = 0; i < pi->ndim; i++)
            if (pi->dims[i] != in[k].dims[i])
                return 0;
        /* Same shape, so the same byte count: the values decide (check_value_keys ran). */
        if (pi->value_keyed && p->keys[k].nbytes &&
            memcmp(p->keys[k].data, in[k].data, p->keys[k].nbytes) != 0)
            return 0;
    }
    return 1;
}

/*
 * A value_keyed input picks the plan by its values, so they must be present
 * and small; this runs before the cache lookup compares them.
 */
static int check_value_keys(const struct engine *eng, const struct tensor *in, struct cerr *e)
{
    char s1[160];
    for (size_t k = 0; eng->n_keyed && k < eng->n_inputs; k++) {
        if (!eng->inputs[k].value_keyed)
            continue;
        /* bind_input bounded the dimensions, so the product cannot overflow. */
        int64_t n = eng_numel(in[k].dims, in[k].ndim);
        if (n > ENGINE_MAX_VALUE_KEY)
            return cerr_set(e, CORRAL_EUNSUPP, "input '%s' has shape %s, but %s reads its "
                            "values to set shapes, and the engine plans for such values only "
                            "up to %d elements", eng->inputs[k].name,
                            tensor_shape_str(in[k].dims, in[k].ndim, s1, sizeof s1),
                            eng->keyed_by[k], ENGINE_MAX_VALUE_KEY);
        /* Unsupported rather than invalid: a shape-only plan (a batch bucket) cannot exist. */
        if (n > 0 && !in[k].data)
            return cerr_set(e, CORRAL_EUNSUPP, "input '%s' sets shapes inside the model (%s "
                            "reads its values), so a plan needs its data, not only its shape",
                            eng->inputs[k].name, eng->keyed_by[k]);
    }
    return CORRAL_OK;
}

/* Appends " = (v0,v1,...)" for a value_keyed input's values to a message buffer. */
static size_t format_key(const struct tensor *t, char *buf, size_t len)
{
    size_t off = 0;
    int64_t n = eng_numel(t->dims, t->ndim);
    off += (size_t)snprintf(buf, len, " = (");
    for (int64_t i = 0; i < n && i < 8 && off < len; i++) {
        const char *sep = i ? "," : "";
        if (t->dtype == DT_FP32)
            off += (size_t)snprintf(buf + off, len - off, "%s%g", sep,
                                    (double)((const float *)t->data)[i]);
        else if (t->dtype == DT_INT64 || t->dtype == DT_INT32 || t->dtype == DT_UINT8 ||
                 t->dtype == DT_BOOL)
            off += (size_t)snprintf(buf + off, len - off, "%s%lld", sep,
                                    (long long)eng_int_at(t->data, t->dtype, i));
        else
            off += (size_t)snprintf(buf + off, len - off, "%s?", sep);
    }
    if (off < len)
        off += (size_t)snprintf(buf + off, len - off, "%s)", n > 8 ? ",..." : "");
    return off < len ? off : len;
}

/* Describes the inputs a plan was asked for: "x [2,3], shape [2] = (3,2)". */
static void format_plan_inputs(const struct engine *eng, const struct tensor *in, char *sh,
                               size_t len)
{
    size_t off = 0;
    sh[0] = '\0';
    for (size_t k = 0; k < eng->n_inputs && off < len; k++) {
        char one[120];
        off += (size_t)snprintf(sh + off, len - off, "%s%s %s", k ? ", " : "",
                                eng->inputs[k].name,
                                tensor_shape_str(in[k].dims, in[k].ndim, one, sizeof one));
        if (off < len && eng->inputs[k].value_keyed && in[k].data)
            off += format_key(&in[k], sh + off, len - off);
    }
}

/*
 * Walks back from every shape operand of a live node through the producers
 * of its value. Reaching a model input means a plan cannot know that operand
 * from shapes and constants alone, so the input is keyed on. Shape and Size
 * end a walk: their outputs depend on shapes only, which plans already know.
 * Each value is expanded once, so the walk is linear in the graph's edges.
 */
int engine_mark_value_inputs(struct engine *eng, struct cerr *e)
{
    int rc = CORRAL_OK;
    size_t edges = 1;
    for (size_t i = 0; i < eng->n_nodes; i++)
        edges += (size_t)eng->nodes[i].n_in;
    int *prod = malloc((eng->n_vals + 1) * sizeof *prod);
    unsigned char *seen = calloc(eng->n_vals + 1, 1);
    /* A pending value and the node whose shape operand led to it (for messages). */
    struct { int v, by; } *stack = malloc(2 * edges * sizeof *stack);
    size_t top = 0;
    if (!prod || !seen || !stack) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory loading the model");
        goto done;
    }
    for (size_t v = 0; v < eng->n_vals; v++)
        prod[v] = -1;
    for (size_t i = 0; i < eng->n_nodes; i++)
        for (int k = 0; !eng->nodes[i].dead && k < eng->nodes[i].n_out; k++)
            if (eng->nodes[i].out[k] >= 0)
                prod[eng->nodes[i].out[k]] = (int)i;
    for (size_t i = 0; i < eng->n_nodes; i++) {
        const struct eng_node *nd = &eng->nodes[i];
        unsigned mask = nd->dead ? 0 : eng_opdef(nd->op)->value_in;
        for (int k = 0; k < nd->n_in && k < 32; k++)
            if ((mask >> k & 1u) && nd->in[k] >= 0)
                stack[top].v = nd->in[k], stack[top++].by = (int)i;
        while (top) {
            top--;
            int v = stack[top].v, by = stack[top].by;
            if (seen[v])
                continue;
            seen[v] = 1;
            const struct eng_value *ev = &eng->vals[v];
            if (ev->kind == EVK_INPUT) {
                for (size_t kk = 0; kk < eng->n_inputs; kk++)
                    if (eng->input_val[kk] == v && !eng->inputs[kk].value_keyed) {
                        eng->inputs[kk].value_keyed = 1;
                        eng->keyed_by[kk] = eng->nodes[by].label;
                        eng->n_keyed++;
                    }
                continue;
            }
            int pn = ev->kind == EVK_NODE ? prod[v] : -1;
            if (pn < 0 || eng->nodes[pn].op == EOP_SHAPE || eng->nodes[pn].op == EOP_SIZE)
                continue;
            for (int k = 0; k < eng->nodes[pn].n_in; k++)
                if (eng->nodes[pn].in[k] >= 0 && !seen[eng->nodes[pn].in[k]])
                    stack[top].v = eng->nodes[pn].in[k], stack[top++].by = by;
        }
    }
    /* Refuse at load what can never be keyed on: no fixed element size, or declared too big. */
    for (size_t k = 0; k < eng->n_inputs; k++) {
        const struct engine_io_info *io = &eng->inputs[k];
        if (!io->value_keyed)
            continue;
        /* Saturating element count of the declared shape; a variable or zero dim ends it. */
        int64_t n = io->ndim < 0 ? 0 : 1;
        for (int i = 0; i < io->ndim && n; i++)
            n = io->dims[i] <= 0 ? 0
                : (n > ENGINE_MAX_VALUE_KEY || io->dims[i] > ENGINE_MAX_VALUE_KEY)
                    ? ENGINE_MAX_VALUE_KEY + 1 : n * io->dims[i];
        if (!dtype_size(io->dtype) || n > ENGINE_MAX_VALUE_KEY) {
            rc = cerr_set(e, CORRAL_EUNSUPP, "model input '%s' (%s) sets shapes (%s reads its "
                          "values), and the engine plans for such values only in fixed-size "
                          "datatypes up to %d elements", io->name, dtype_name(io->dtype),
                          eng->keyed_by[k], ENGINE_MAX_VALUE_KEY);
            goto done;
        }
    }
done:
    free(prod);
    free(seen);
    free(stack);
    return rc;
}

void engine_release_resident_weights(struct engine *eng)
{
    if (!eng->be.ops->weight_resident)
        return;
    for (size_t i = 0; i < eng->n_vals; i++) {
        struct eng_value *v = &eng->vals[i];
        if (v->single_use_weight && v->init.data && v->init.owned &&
            eng->be.ops->weight_resident(&eng->be, (int)i)) {
            free(v->init.data);
            v->init.data = NULL;
        }
    }
}

int engine_plan_get(struct engine *eng, const struct tensor *in, int pin, struct eng_plan **out,
                    struct cerr *e)
{
    int rc = check_value_keys(eng, in, e);
    if (rc)
        return rc;
    for (size_t i = 0; i < eng->n_plans; i++) {
        struct eng_plan *p = eng->plans[i];
        if (plan_matches(eng, p, in)) {
            p->last_used = ++eng->clock;
            p->pinned |= pin;
            *out = p;
            return CORRAL_OK;
        }
    }
    struct eng_plan *p = calloc(1, sizeof *p);
    if (!p)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory building a plan");
    rc = build_plan(eng, in, p, e);
    if (rc) {
        char sh[400];
        format_plan_inputs(eng, in, sh, sizeof sh);
        cerr_prefix(e, "cannot plan for inputs %s", sh);
        engine_plan_free(eng, p);
        return rc;
    }
    p->pinned = pin;
    p->last_used = ++eng->clock;
    if (eng->n_plans >= eng->max_plans) {
        size_t victim = eng->n_plans;
        for (size_t i = 0; i < eng->n_plans; i++)
            if (!eng->plans[i]->pinned &&
                (victim == eng->n_plans || eng->plans[i]->last_used < eng->plans[victim]->last_used))
                victim = i;
        if (victim < eng->n_plans) {
            engine_plan_free(eng, eng->plans[victim]);
            eng->plans[victim] = eng->plans[--eng->n_plans];
        }
    }
    struct eng_plan **np = realloc(eng->plans, (eng->n_plans + 1) * sizeof *np);
    if (!np) {
        engine_plan_free(eng, p);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory caching a plan");
    }
    eng->plans = np;
    eng->plans[eng->n_plans++] = p;
    /* The compile's temporaries and any weights now held only by the backend go back. */
    engine_release_resident_weights(eng);
    engine_trim_heap();
    *out = p;
    return CORRAL_OK;
}

int engine_plan_execute(struct engine *eng, struct eng_plan *p, const struct tensor *in,
                        struct tensor *out, struct cerr *e)
{
    int rc = eng->be.ops->plan_execute(&eng->be, p->compiled, in, out, e);
    if (!rc)
        rc = eng->be.ops->synchronize(&eng->be, e);
    return rc;
}

size_t engine_plan_count(const struct engine *eng)
{
    return eng->n_plans;
}

int engine_plan_info(const struct engine *eng, size_t i, struct engine_plan_info *info)
{
    if (i >= eng->n_plans)
        return CORRAL_EINVAL;
    const struct eng_plan *p = eng->plans[i];
    info->arena_bytes = p->arena_bytes;
    info->n_steps = (size_t)p->n_steps;
    info->pinned = p->pinned;
    info->n_inputs = eng->n_inputs;
    info->inputs = p->in_info;
    info->n_outputs = eng->n_outputs;
    info->outputs = p->out_info;
    return CORRAL_OK;
}
